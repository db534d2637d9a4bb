//! qcow2 images in Rust: a header/mapping reader and a streaming writer.
//!
//! Why our own instead of qcow2-rs (see DESIGN.md): qcow2-rs has no create API, no backing-file
//! setter, panics on file-open errors and its futures are not Send. What kvmctl needs is small:
//! create (empty, with backing, with metadata preallocation), map which clusters hold data, read
//! them through a backing chain, and write a new image front to back. The writer appends data
//! clusters in guest order and lays out L2 tables and refcounts at the end, so a copy is one
//! sequential pass and the result holds only what the source had allocated.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub const MAGIC: u32 = 0x5146_49fb;
pub const DEFAULT_CLUSTER_BITS: u32 = 16;
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_BITMAPS: u32 = 0x2385_2875;
/// autoclear bit 0: the bitmaps extension is consistent (qemu clears it when it is not).
const AUTOCLEAR_BITMAPS: u64 = 1;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
const COPIED: u64 = 1 << 63;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// The header's `compression_type` (byte 104, v3 headers of 105 bytes or more).
pub const COMPRESSION_ZLIB: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;
/// qemu's `QCOW_MAX_L1_SIZE`: the active L1 table is at most 32 MiB of 8-byte entries; qemu
/// refuses to open (or grow) an image whose virtual size needs more ("Active L1 table too
/// large").
pub const QEMU_MAX_L1_BYTES: u64 = 32 << 20;

/// The largest virtual size qemu opens for a qcow2 image with `2^cluster_bits`-byte clusters
/// (and 8-byte L2 entries): each of the 4 Mi L1 entries maps an L2 table of cluster_size/8
/// entries, each a cluster. 2 PiB at 64 KiB clusters, 128 GiB at 512 bytes, 2 EiB at 2 MiB.
pub fn max_size(cluster_bits: u32) -> u64 {
    let cs = 1u128 << cluster_bits;
    u64::try_from(u128::from(QEMU_MAX_L1_BYTES / 8) * cs * (cs / 8)).unwrap_or(u64::MAX)
}

#[derive(Debug, Error)]
pub enum Qcow2Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a qcow2 image (bad magic)")]
    NotQcow2 { path: PathBuf },
    #[error("{path}: corrupt qcow2 image: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: unsupported qcow2 feature: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("capacity {size} bytes is larger than qemu opens as qcow2 with {cluster_size}-byte clusters (at most {max} bytes)")]
    TooLarge { size: u64, max: u64, cluster_size: u64 },
}

/// The parts of a qcow2 header kvmctl uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub incompatible_features: u64,
    pub crypt_method: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// How compressed clusters are compressed: [`COMPRESSION_ZLIB`] or [`COMPRESSION_ZSTD`].
    pub compression_type: u8,
    /// Extended L2 entries: each cluster split into 32 subclusters with their own
    /// allocation and zero bits.
    pub extended_l2: bool,
    /// The names of the persistent dirty bitmaps the image carries (when they are valid).
    pub bitmaps: Vec<String>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & 1 != 0
    }
    /// Bytes of an L2 entry: 16 with extended L2 entries, else 8.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }
    /// The unit a guest address maps in: a subcluster with extended L2 entries, else a cluster.
    pub fn granule(&self) -> u64 {
        if self.extended_l2 {
            self.cluster_size() / SUBCLUSTERS
        } else {
            self.cluster_size()
        }
    }
}

/// Subclusters per cluster with extended L2 entries.
const SUBCLUSTERS: u64 = 32;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Does the file start with the qcow2 magic?
pub fn is_qcow2(path: &Path) -> io::Result<bool> {
    let f = File::open(path)?;
    let mut m = [0u8; 4];
    match f.read_exact_at(&mut m, 0) {
        Ok(()) => Ok(u32::from_be_bytes(m) == MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Parse and sanity-check the header against the file's length (catches truncation).
pub fn read_header(path: &Path) -> Result<Header, Qcow2Error> {
    let ioe = |source| Qcow2Error::Io { path: path.to_path_buf(), source };
    let corrupt = |reason: String| Qcow2Error::Corrupt { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(ioe)?;
    let file_len = file.metadata().map_err(ioe)?.len();
    let mut buf = vec![0u8; 4096.min(file_len as usize)];
    file.read_exact_at(&mut buf, 0).map_err(ioe)?;
    if buf.len() < 72 {
        return Err(if buf.len() >= 4 && be32(&buf, 0) == MAGIC {
            corrupt(format!("file is {file_len} bytes, shorter than a qcow2 header"))
        } else {
            Qcow2Error::NotQcow2 { path: path.to_path_buf() }
        });
    }
    if be32(&buf, 0) != MAGIC {
        return Err(Qcow2Error::NotQcow2 { path: path.to_path_buf() });
    }
    let version = be32(&buf, 4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::Unsupported { path: path.to_path_buf(), what: format!("version {version}") });
    }
    let mut h = Header {
        version,
        cluster_bits: be32(&buf, 20),
        size: be64(&buf, 24),
        crypt_method: be32(&buf, 32),
        l1_size: be32(&buf, 36),
        l1_table_offset: be64(&buf, 40),
        refcount_table_offset: be64(&buf, 48),
        refcount_table_clusters: be32(&buf, 56),
        nb_snapshots: be32(&buf, 60),
        incompatible_features: 0,
        backing_file: None,
        backing_format: None,
        compression_type: COMPRESSION_ZLIB,
        extended_l2: false,
        bitmaps: Vec::new(),
    };
    match h.crypt_method {
        0 => {}
        1 => return Err(unsupported_encryption(path, "AES")),
        2 => return Err(unsupported_encryption(path, "LUKS")),
        m => return Err(Qcow2Error::Unsupported { path: path.to_path_buf(), what: format!("encryption method {m}") }),
    }
    if !(9..=21).contains(&h.cluster_bits) {
        return Err(corrupt(format!("cluster_bits {} out of range", h.cluster_bits)));
    }
    let cs = h.cluster_size();
    let mut header_len = 72usize;
    let mut autoclear = 0u64;
    if version == 3 {
        if buf.len() < 104 {
            return Err(corrupt("v3 header truncated".into()));
        }
        h.incompatible_features = be64(&buf, 72);
        autoclear = be64(&buf, 88);
        header_len = be32(&buf, 100) as usize;
        if !(104..=buf.len()).contains(&header_len) {
            return Err(corrupt(format!("header length {header_len} invalid")));
        }
        if header_len > 104 {
            h.compression_type = buf[104];
        }
        let flagged = h.incompatible_features & INCOMPAT_COMPRESSION_TYPE != 0;
        match h.compression_type {
            COMPRESSION_ZLIB if flagged => {
                return Err(corrupt("compression type bit set for zlib (qemu sets it only for other types)".into()))
            }
            COMPRESSION_ZSTD if !flagged => {
                return Err(corrupt("zstd compression without its incompatible-feature bit".into()))
            }
            COMPRESSION_ZLIB | COMPRESSION_ZSTD => {}
            t => {
                return Err(Qcow2Error::Unsupported { path: path.to_path_buf(), what: format!("compression type {t}") })
            }
        }
    }
    if h.incompatible_features & INCOMPAT_CORRUPT != 0 {
        return Err(corrupt("image is marked corrupt by qemu".into()));
    }
    if h.incompatible_features & INCOMPAT_EXTERNAL_DATA != 0 {
        return Err(Qcow2Error::Unsupported {
            path: path.to_path_buf(),
            what: "external data file (the guest's data lives in another file the header names; \
                   kvmctl does not follow it)"
                .into(),
        });
    }
    h.extended_l2 = h.incompatible_features & INCOMPAT_EXTENDED_L2 != 0;
    if h.extended_l2 && h.cluster_bits < 14 {
        return Err(corrupt(format!(
            "extended L2 entries with {}-byte clusters (qemu needs at least 16384)",
            h.cluster_size()
        )));
    }
    let unknown = h.incompatible_features
        & !(1 | INCOMPAT_CORRUPT | INCOMPAT_EXTERNAL_DATA | INCOMPAT_COMPRESSION_TYPE | INCOMPAT_EXTENDED_L2);
    if unknown != 0 {
        return Err(Qcow2Error::Unsupported {
            path: path.to_path_buf(),
            what: format!("incompatible feature bits {unknown:#x}"),
        });
    }
    let mut bitmap_dir = None;
    // Header extensions (v3 only; v2 images may carry them too right after 72 bytes).
    let mut at = header_len;
    while at + 8 <= buf.len() {
        let (ty, len) = (be32(&buf, at), be32(&buf, at + 4) as usize);
        if ty == EXT_END {
            break;
        }
        let data =
            buf.get(at + 8..at + 8 + len).ok_or_else(|| corrupt("header extension overruns the first 4 KiB".into()))?;
        match ty {
            EXT_BACKING_FORMAT => h.backing_format = Some(String::from_utf8_lossy(data).into_owned()),
            EXT_BITMAPS if autoclear & AUTOCLEAR_BITMAPS != 0 => {
                if data.len() < 24 {
                    return Err(corrupt("bitmaps extension shorter than 24 bytes".into()));
                }
                bitmap_dir = Some((be32(data, 0), be64(data, 8), be64(data, 16)));
            }
            _ => {}
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    let bf_off = be64(&buf, 8);
    let bf_len = be32(&buf, 16) as usize;
    if bf_off != 0 && bf_len != 0 {
        let mut name = vec![0u8; bf_len];
        file.read_exact_at(&mut name, bf_off)
            .map_err(|_| corrupt("backing file name lies beyond the end of the file".into()))?;
        h.backing_file = Some(String::from_utf8_lossy(&name).into_owned());
    }
    if let Some((count, dir_size, dir_off)) = bitmap_dir {
        h.bitmaps = bitmap_names(&file, file_len, count, dir_size, dir_off).map_err(corrupt)?;
    }
    let l1_end = h.l1_table_offset + h.l1_size as u64 * 8;
    let needed_l1 = h.size.div_ceil(cs * (cs / h.l2_entry_size()));
    if (h.l1_size as u64) < needed_l1 {
        return Err(corrupt(format!("L1 table has {} entries, {} needed for the virtual size", h.l1_size, needed_l1)));
    }
    if h.l1_size > 0 && l1_end > file_len {
        return Err(corrupt(format!("truncated: L1 table ends at {l1_end}, file is {file_len} bytes")));
    }
    let rt_end = h.refcount_table_offset + h.refcount_table_clusters as u64 * cs;
    if rt_end > file_len {
        return Err(corrupt(format!("truncated: refcount table ends at {rt_end}, file is {file_len} bytes")));
    }
    Ok(h)
}

fn unsupported_encryption(path: &Path, how: &str) -> Qcow2Error {
    Qcow2Error::Unsupported {
        path: path.to_path_buf(),
        what: format!(
            "{how} encryption (kvmctl holds no keys: decrypt it with qemu-img convert --object \
             secret,... --image-opts first)"
        ),
    }
}

/// The names in a bitmap directory of `count` entries, `size` bytes at `off` (qcow2 spec,
/// "Bitmap directory": 24 fixed bytes, extra data, the name, padded to 8 bytes).
fn bitmap_names(file: &File, file_len: u64, count: u32, size: u64, off: u64) -> Result<Vec<String>, String> {
    if size > 64 << 20 || off.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(format!("bitmap directory ({size} bytes at offset {off}) lies beyond the end of the file"));
    }
    let mut dir = vec![0u8; size as usize];
    file.read_exact_at(&mut dir, off).map_err(|e| format!("bitmap directory: {e}"))?;
    let mut names = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        let entry = dir.get(at..at + 24).ok_or("bitmap directory is shorter than its entries")?;
        let name_len = u16::from_be_bytes([entry[18], entry[19]]) as usize;
        let extra = be32(entry, 20) as usize;
        let name = dir.get(at + 24 + extra..at + 24 + extra + name_len).ok_or("bitmap name overruns the directory")?;
        names.push(String::from_utf8_lossy(name).into_owned());
        at += (24 + extra + name_len).div_ceil(8) * 8;
    }
    Ok(names)
}

/// Where a guest cluster's data lives in one image of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Data at this host offset.
    Data(u64),
    /// Reads as zeros (v3 zero flag).
    Zero,
    /// Not in this image: look in the backing file.
    Unallocated,
    /// A compressed cluster: at most `len` bytes at host offset `off` inflate to the cluster.
    Compressed { off: u64, len: u64 },
}

/// An open qcow2 image: header, L1 table, and a cache of the L2 tables read so far.
#[derive(Debug)]
pub struct Qcow2Reader {
    pub path: PathBuf,
    pub header: Header,
    file: File,
    l1: Vec<u64>,
    l2_cache: BTreeMap<u32, Vec<u64>>,
    file_len: u64,
}

impl Qcow2Reader {
    pub fn open(path: &Path) -> Result<Qcow2Reader, Qcow2Error> {
        let header = read_header(path)?;
        let ioe = |source| Qcow2Error::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(ioe)?;
        let mut raw = vec![0u8; header.l1_size as usize * 8];
        file.read_exact_at(&mut raw, header.l1_table_offset).map_err(ioe)?;
        let l1 = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect();
        let file_len = file.metadata().map_err(ioe)?.len();
        Ok(Qcow2Reader { path: path.to_path_buf(), header, file, l1, l2_cache: BTreeMap::new(), file_len })
    }

    fn corrupt(&self, reason: String) -> Qcow2Error {
        Qcow2Error::Corrupt { path: self.path.clone(), reason }
    }

    /// Map one granule of the guest disk (see [`Header::granule`]: a subcluster with
    /// extended L2 entries, else a cluster): `unit` is the guest offset over the granule.
    pub fn map(&mut self, unit: u64) -> Result<Mapping, Qcow2Error> {
        let h = &self.header;
        let (cs, gs) = (h.cluster_size(), h.granule());
        let per_cluster = cs / gs;
        let (cluster, sub) = (unit / per_cluster, unit % per_cluster);
        let per_l2 = cs / h.l2_entry_size();
        let words = (h.l2_entry_size() / 8) as usize;
        let l1_idx = (cluster / per_l2) as u32;
        let l1e = *self.l1.get(l1_idx as usize).unwrap_or(&0);
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 {
            return Ok(Mapping::Unallocated);
        }
        if !self.l2_cache.contains_key(&l1_idx) {
            let mut raw = vec![0u8; cs as usize];
            self.file
                .read_exact_at(&mut raw, l2_off)
                .map_err(|_| self.corrupt(format!("L2 table at offset {l2_off} lies beyond the end of the file")))?;
            let t = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect();
            if self.l2_cache.len() > 256 {
                self.l2_cache.clear();
            }
            self.l2_cache.insert(l1_idx, t);
        }
        let at = (cluster % per_l2) as usize * words;
        let e = self.l2_cache[&l1_idx][at];
        let bitmap = if words == 2 { self.l2_cache[&l1_idx][at + 1] } else { 0 };
        if e & L2_COMPRESSED != 0 {
            // qcow2's compressed cluster descriptor: the low `shift` bits are the host offset,
            // the next `cluster_bits - 8` the number of 512-byte sectors it spans, minus one.
            let shift = 62 - (self.header.cluster_bits - 8);
            let off = e & ((1u64 << shift) - 1);
            let sectors = ((e >> shift) & ((1u64 << (self.header.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (off & 511);
            if off == 0 || off >= self.file_len {
                return Err(self
                    .corrupt(format!("compressed cluster {cluster} at offset {off} lies beyond the end of the file")));
            }
            return Ok(Mapping::Compressed { off, len: len.min(self.file_len - off) });
        }
        let host = e & OFFSET_MASK;
        if host != 0 && (!host.is_multiple_of(cs) || host >= self.file_len) {
            return Err(self.corrupt(format!("cluster {cluster} maps to host offset {host}, outside the file")));
        }
        if words == 2 {
            // Extended L2: the low 32 bits of the bitmap say which subclusters are allocated
            // here, the high 32 which read as zeros; the descriptor's own zero bit is unused.
            let (alloc, zero) = (bitmap & 0xffff_ffff, bitmap >> 32);
            if alloc & zero != 0 || (host == 0 && alloc != 0) {
                return Err(self.corrupt(format!("cluster {cluster} has an invalid subcluster bitmap {bitmap:#x}")));
            }
            return Ok(if zero >> sub & 1 != 0 {
                Mapping::Zero
            } else if alloc >> sub & 1 != 0 {
                Mapping::Data(host + sub * gs)
            } else {
                Mapping::Unallocated
            });
        }
        if e & L2_ZERO != 0 && self.header.version == 3 {
            return Ok(Mapping::Zero);
        }
        match host {
            0 => Ok(Mapping::Unallocated),
            off => Ok(Mapping::Data(off)),
        }
    }

    pub fn read_host(&self, buf: &mut [u8], host_off: u64) -> Result<(), Qcow2Error> {
        self.file.read_exact_at(buf, host_off).map_err(|source| Qcow2Error::Io { path: self.path.clone(), source })
    }
}

/// Resolve a backing file name as qemu does: relative to the directory of the image naming it.
pub fn resolve_backing(image: &Path, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() {
        b.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(b)
    }
}

/// What a new image refers to as its backing file.
#[derive(Debug, Clone)]
pub struct Backing {
    pub file: String,
    pub format: String,
}

/// A qcow2 image written front to back: data clusters are appended in the order given,
/// metadata (L2 tables, refcounts, L1, header) is written by `finish`.
///
/// Compressed clusters (qemu's zlib type) are packed back to back at byte granularity, as
/// qemu packs them: several share a host cluster and one may straddle two. A host cluster's
/// refcount is then the number of compressed clusters touching it (qemu's rule, which
/// `qemu-img check` verifies); any other cluster's is 1.
pub struct Qcow2Writer<'f> {
    file: &'f File,
    cluster_bits: u32,
    size: u64,
    backing: Option<Backing>,
    l1_offset: u64,
    l1_entries: u64,
    l2: BTreeMap<u64, Vec<u64>>,
    /// The first free byte (not cluster-aligned after compressed clusters).
    next_free: u64,
    /// Host clusters holding compressed streams: how many streams touch each.
    shared: BTreeMap<u64, u16>,
    /// Compressed streams not yet written, to go at host offset `packed_at`.
    packed: Vec<u8>,
    packed_at: u64,
}

/// Compressed streams are written once this many bytes of them are packed.
const PACKED_WRITE: usize = 1 << 20;

/// qcow2's compressed cluster descriptor for a `len`-byte stream at host offset `off`:
/// the offset in the low `62 - (cluster_bits - 8)` bits, then the number of 512-byte
/// sectors it touches beyond the first.
fn compressed_descriptor(off: u64, len: u64, cluster_bits: u32) -> u64 {
    let shift = 62 - (cluster_bits - 8);
    let extra = ((off + len - 1) >> 9) - (off >> 9);
    L2_COMPRESSED | (extra << shift) | off
}

/// The host clusters a `len`-byte stream at `off` touches.
fn touched(off: u64, len: u64, cs: u64) -> std::ops::RangeInclusive<u64> {
    off / cs..=(off + len - 1) / cs
}

impl<'f> Qcow2Writer<'f> {
    pub fn new(file: &'f File, size: u64, backing: Option<Backing>) -> Result<Self, Qcow2Error> {
        let cluster_bits = DEFAULT_CLUSTER_BITS;
        let cs = 1u64 << cluster_bits;
        let max = max_size(cluster_bits);
        if size > max {
            return Err(Qcow2Error::TooLarge { size, max, cluster_size: cs });
        }
        let l1_entries = size.div_ceil(cs * (cs / 8));
        let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
        Ok(Qcow2Writer {
            file,
            cluster_bits,
            size,
            backing,
            l1_offset: cs,
            l1_entries,
            l2: BTreeMap::new(),
            next_free: cs + l1_clusters * cs,
            shared: BTreeMap::new(),
            packed: Vec::new(),
            packed_at: 0,
        })
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_entry(&mut self, guest_cluster: u64) -> &mut u64 {
        let per_l2 = self.cluster_size() / 8;
        let table = self.l2.entry(guest_cluster / per_l2).or_insert_with(|| vec![0; per_l2 as usize]);
        &mut table[(guest_cluster % per_l2) as usize]
    }

    /// Append `data` (a whole number of clusters, except possibly at the image end) as the
    /// contents of guest clusters starting at `first_cluster`.
    pub fn write_clusters(&mut self, first_cluster: u64, data: &[u8]) -> io::Result<()> {
        let cs = self.cluster_size();
        self.flush_packed()?;
        let host = self.next_free.next_multiple_of(cs);
        self.next_free = host;
        self.file.write_all_at(data, host)?;
        let n = (data.len() as u64).div_ceil(cs);
        for i in 0..n {
            *self.l2_entry(first_cluster + i) = (host + i * cs) | COPIED;
        }
        self.next_free += n * cs;
        Ok(())
    }

    /// Store guest cluster `guest_cluster` as `stream`, a raw deflate stream (window bits
    /// -12) shorter than a cluster that inflates to it, packed right after the compressed
    /// stream before it.
    pub fn write_compressed(&mut self, guest_cluster: u64, stream: &[u8]) -> io::Result<()> {
        let cs = self.cluster_size();
        let len = stream.len() as u64;
        if len == 0 || len >= cs {
            return Err(io::Error::other(format!("a compressed cluster of {len} bytes (clusters are {cs})")));
        }
        let mut off = self.next_free;
        // A host cluster whose refcount would overflow (16 bits) takes no more streams.
        if touched(off, len, cs).any(|c| self.shared.get(&c) == Some(&u16::MAX)) {
            off = off.next_multiple_of(cs);
        }
        if self.packed.is_empty() {
            self.packed_at = off;
        }
        self.packed.resize((off - self.packed_at) as usize, 0);
        self.packed.extend_from_slice(stream);
        for c in touched(off, len, cs) {
            *self.shared.entry(c).or_insert(0) += 1;
        }
        *self.l2_entry(guest_cluster) = compressed_descriptor(off, len, self.cluster_bits);
        self.next_free = off + len;
        if self.packed.len() >= PACKED_WRITE {
            self.flush_packed()?;
        }
        Ok(())
    }

    fn flush_packed(&mut self) -> io::Result<()> {
        if !self.packed.is_empty() {
            self.file.write_all_at(&self.packed, self.packed_at)?;
            self.packed.clear();
        }
        Ok(())
    }

    /// Mark guest clusters as reading zeros (only meaningful over a backing file).
    pub fn zero_clusters(&mut self, first_cluster: u64, count: u64) {
        for c in first_cluster..first_cluster + count {
            *self.l2_entry(c) = L2_ZERO;
        }
    }

    /// Allocate every cluster (qemu's `preallocation=metadata`): L2 tables and data clusters
    /// are all mapped; the data stays a hole in the file and reads as zeros.
    pub fn preallocate_metadata(&mut self) {
        let cs = self.cluster_size();
        self.next_free = self.next_free.next_multiple_of(cs);
        for c in 0..self.size.div_ceil(cs) {
            let host = self.next_free;
            *self.l2_entry(c) = host | COPIED;
            self.next_free += cs;
        }
    }

    /// Write L2 tables, refcounts, L1 and header; returns the file length.
    pub fn finish(mut self) -> io::Result<u64> {
        let cs = self.cluster_size();
        self.flush_packed()?;
        let data_end = self.next_free.next_multiple_of(cs);
        // L2 tables, appended in one write.
        let mut l1 = vec![0u64; self.l1_entries as usize];
        let mut l2_bytes = Vec::with_capacity(self.l2.len() * cs as usize);
        for (i, (idx, table)) in self.l2.iter().enumerate() {
            l1[*idx as usize] = (data_end + i as u64 * cs) | COPIED;
            l2_bytes.extend(table.iter().flat_map(|e| e.to_be_bytes()));
        }
        self.file.write_all_at(&l2_bytes, data_end)?;
        self.next_free = data_end + l2_bytes.len() as u64;
        // Refcounts (16-bit): every cluster up to the end, including the refcount clusters.
        let per_block = cs * 8 / 16;
        let used = self.next_free / cs;
        let (mut blocks, mut table_clusters) = (1u64, 1u64);
        loop {
            let total = used + blocks + table_clusters;
            let b = total.div_ceil(per_block);
            let t = (b * 8).div_ceil(cs);
            if b == blocks && t == table_clusters {
                break;
            }
            (blocks, table_clusters) = (b, t);
        }
        let rt_offset = self.next_free;
        let rb_offset = rt_offset + table_clusters * cs;
        let total = used + blocks + table_clusters;
        let mut table = vec![0u8; (table_clusters * cs) as usize];
        for b in 0..blocks {
            table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&(rb_offset + b * cs).to_be_bytes());
        }
        let mut rblocks = vec![0u8; (blocks * cs) as usize];
        for c in 0..total {
            let refs = self.shared.get(&c).copied().unwrap_or(1);
            rblocks[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&refs.to_be_bytes());
        }
        table.extend_from_slice(&rblocks);
        self.file.write_all_at(&table, rt_offset)?;
        let end = rt_offset + table.len() as u64;
        let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.file.write_all_at(&l1_bytes, self.l1_offset)?;
        let header = self.header_cluster(rt_offset, table_clusters);
        self.file.write_all_at(&header, 0)?;
        // Preallocated data beyond the metadata? Never: data clusters precede L2 tables. But a
        // preallocated image must still cover every mapped cluster, which it does by `end`.
        self.file.set_len(end)?;
        Ok(end)
    }

    fn header_cluster(&self, rt_offset: u64, rt_clusters: u64) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        let put32 = |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 = |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut h, 0, MAGIC);
        put32(&mut h, 4, 3);
        put32(&mut h, 20, self.cluster_bits);
        put64(&mut h, 24, self.size);
        put32(&mut h, 36, self.l1_entries as u32);
        put64(&mut h, 40, self.l1_offset);
        put64(&mut h, 48, rt_offset);
        put32(&mut h, 56, rt_clusters as u32);
        put32(&mut h, 96, 4); // refcount_order: 16-bit refcounts
        put32(&mut h, 100, 112); // header_length, with the compression type byte (zlib)
        if let Some(b) = &self.backing {
            let fmt = b.format.as_bytes();
            h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            h.extend_from_slice(&(fmt.len() as u32).to_be_bytes());
            h.extend_from_slice(fmt);
            h.resize(h.len().div_ceil(8) * 8, 0);
        }
        h.extend_from_slice(&[0u8; 8]); // end of extensions
        if let Some(b) = &self.backing {
            let off = h.len() as u64;
            h.extend_from_slice(b.file.as_bytes());
            put64(&mut h, 8, off);
            put32(&mut h, 16, b.file.len() as u32);
        }
        h
    }
}

/// Is the backing-file name short enough to fit in the header cluster?
pub fn backing_name_fits(name: &str) -> bool {
    name.len() <= 1023
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_image_is_the_one_qemus_l1_table_limit_allows() {
        assert_eq!(max_size(16), 2 << 50, "2 PiB at 64 KiB clusters");
        assert_eq!(max_size(9), 128 << 30, "128 GiB at 512-byte clusters");
        assert_eq!(max_size(21), 2 << 60, "2 EiB at 2 MiB clusters");
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("max.qcow2")).unwrap();
        let w = Qcow2Writer::new(&f, max_size(16), None).unwrap();
        assert_eq!(w.l1_entries * 8, QEMU_MAX_L1_BYTES, "the L1 table qemu allows, exactly");
        let e = Qcow2Writer::new(&f, max_size(16) + 1, None).err().unwrap();
        assert_eq!(
            e.to_string(),
            "capacity 2251799813685249 bytes is larger than qemu opens as qcow2 with 65536-byte clusters (at most 2251799813685248 bytes)"
        );
        assert!(Qcow2Writer::new(&f, u64::MAX, None).is_err());
    }

    #[test]
    fn empty_image_header_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.qcow2");
        let f = File::create(&p).unwrap();
        Qcow2Writer::new(&f, 10 << 30, None).unwrap().finish().unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!((h.version, h.size, h.cluster_bits, h.l1_size), (3, 10 << 30, 16, 20));
        assert_eq!(h.backing_file, None);
    }

    #[test]
    fn data_written_is_mapped_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.qcow2");
        let f = File::create(&p).unwrap();
        let mut w = Qcow2Writer::new(&f, 1 << 30, None).unwrap();
        let cs = w.cluster_size();
        let data = vec![0xabu8; 2 * cs as usize];
        w.write_clusters(9000, &data).unwrap();
        w.finish().unwrap();
        let mut r = Qcow2Reader::open(&p).unwrap();
        assert_eq!(r.map(0).unwrap(), Mapping::Unallocated);
        let Mapping::Data(off) = r.map(9001).unwrap() else { panic!("not mapped") };
        let mut buf = vec![0u8; cs as usize];
        r.read_host(&mut buf, off).unwrap();
        assert!(buf.iter().all(|b| *b == 0xab));
    }

    #[test]
    fn backing_file_and_format_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.qcow2");
        let f = File::create(&p).unwrap();
        let b = Backing { file: "/pool/base.qcow2".into(), format: "qcow2".into() };
        Qcow2Writer::new(&f, 1 << 40, Some(b)).unwrap().finish().unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.backing_file.as_deref(), Some("/pool/base.qcow2"));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(h.l1_size, 2048);
    }

    /// The 16-bit refcount of every host cluster of a file this writer finished.
    fn refcounts(p: &Path) -> Vec<u16> {
        let b = std::fs::read(p).unwrap();
        let cs = 1usize << be32(&b, 20);
        let block = be64(&b, be64(&b, 48) as usize) as usize;
        (0..b.len() / cs).map(|c| u16::from_be_bytes([b[block + 2 * c], b[block + 2 * c + 1]])).collect()
    }

    #[test]
    fn compressed_descriptor_counts_the_sectors_past_the_first() {
        let shift = 62 - 8;
        assert_eq!(compressed_descriptor(65536, 512, 16), L2_COMPRESSED | 65536, "one whole sector");
        assert_eq!(compressed_descriptor(65536 + 510, 4, 16), L2_COMPRESSED | (1 << shift) | (65536 + 510));
        assert_eq!(compressed_descriptor(65536 + 1, 65535, 16), L2_COMPRESSED | (127 << shift) | 65537);
        assert_eq!(compressed_descriptor(65536 + 511, 65535, 16), L2_COMPRESSED | (128 << shift) | (65536 + 511));
        assert_eq!(touched(65536 * 3 - 10, 20, 65536), 2..=3);
        assert_eq!(touched(65536 * 3, 65535, 65536), 3..=3);
    }

    /// Streams are packed back to back across host cluster boundaries, each host cluster
    /// counted once per stream touching it, uncompressed clusters aligned after them; every
    /// cluster reads back through the reader.
    #[test]
    fn compressed_clusters_are_packed_and_refcounted_once_per_stream_touching_them() {
        use crate::storage::codec::{Deflater, Inflater};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.qcow2");
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        let mut w = Qcow2Writer::new(&f, 1 << 30, None).unwrap();
        let cs = w.cluster_size() as usize;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        // ~30000 random bytes then zeros: streams of about 30 KB, so the third straddles.
        let clusters: Vec<Vec<u8>> = (0..3)
            .map(|_| {
                let mut c = vec![0u8; cs];
                for b in &mut c[..30000] {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                c
            })
            .collect();
        let first_data = w.next_free;
        let (mut d, mut stream) = (Deflater::new(), Vec::new());
        let mut lens = Vec::new();
        for (i, c) in clusters.iter().enumerate() {
            assert!(d.deflate(c, &mut stream).unwrap());
            w.write_compressed(10 + i as u64, &stream).unwrap();
            lens.push(stream.len() as u64);
        }
        assert!(lens.iter().sum::<u64>() > cs as u64, "the streams spill into a second host cluster");
        let plain = vec![0x5au8; cs];
        w.write_clusters(20, &plain).unwrap();
        w.finish().unwrap();
        let mut r = Qcow2Reader::open(&p).unwrap();
        let mut at = first_data;
        let mut inf = Inflater::new();
        for (i, c) in clusters.iter().enumerate() {
            let Mapping::Compressed { off, len } = r.map(10 + i as u64).unwrap() else { panic!("not compressed") };
            assert_eq!(off, at, "stream {i} right after the one before");
            assert!(len >= lens[i], "the descriptor covers the stream");
            let mut raw = vec![0u8; len as usize];
            r.read_host(&mut raw, off).unwrap();
            let mut out = vec![0u8; cs];
            inf.inflate(COMPRESSION_ZLIB, &raw, &mut out).unwrap();
            assert!(out == *c, "cluster {i} reads back");
            at += lens[i];
        }
        let Mapping::Data(plain_at) = r.map(20).unwrap() else { panic!("not mapped") };
        assert_eq!(plain_at, first_data + 2 * cs as u64, "aligned past the shared cluster");
        let refs = refcounts(&p);
        let first = (first_data / cs as u64) as usize;
        assert_eq!(refs[first], 3, "three streams touch the first data cluster");
        assert_eq!(refs[first + 1], 1, "only the third reaches the second");
        assert!(refs.iter().enumerate().all(|(c, n)| *n == 1 || c == first), "{refs:?}");
    }

    #[test]
    fn a_host_cluster_takes_no_more_streams_than_its_refcount_holds() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("o.qcow2")).unwrap();
        let mut w = Qcow2Writer::new(&f, 8 << 30, None).unwrap();
        let cs = w.cluster_size();
        let start = w.next_free;
        for g in 0..u16::MAX as u64 {
            w.write_compressed(g, &[0x03]).unwrap();
        }
        assert_eq!(w.shared[&(start / cs)], u16::MAX);
        w.write_compressed(u16::MAX as u64, &[0x03]).unwrap();
        assert_eq!(w.shared[&(start / cs + 1)], 1, "the next stream starts a new host cluster");
        let (g, per_l2) = (u16::MAX as u64, cs / 8);
        let e = w.l2[&(g / per_l2)][(g % per_l2) as usize];
        assert_eq!(e & ((1 << 54) - 1), start + cs);
        assert!(
            w.write_compressed(1 << 17, &vec![1u8; cs as usize]).is_err(),
            "a stream must be shorter than a cluster"
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.qcow2");
        let f = File::create(&p).unwrap();
        Qcow2Writer::new(&f, 1 << 30, None).unwrap().finish().unwrap();
        f.set_len(100_000).unwrap();
        assert!(matches!(read_header(&p), Err(Qcow2Error::Corrupt { .. })));
        f.set_len(50).unwrap();
        assert!(matches!(read_header(&p), Err(Qcow2Error::Corrupt { .. })));
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        assert!(matches!(read_header(&p), Err(Qcow2Error::NotQcow2 { .. })));
    }
}
