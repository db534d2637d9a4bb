//! Disk image files: format detection, inspection, qemu's locks, and reading a whole
//! backing chain as one guest-visible disk.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::codec::Inflater;
pub use super::foreign::Foreign;
use super::qcow2::{self, Mapping, Qcow2Error, Qcow2Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Qcow2,
    Raw,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        })
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qcow2" => Ok(Format::Qcow2),
            "raw" | "iso" | "img" => Ok(Format::Raw),
            other => Err(format!("unknown volume format '{other}' (use qcow2 or raw)")),
        }
    }
}

/// Detect a file's format from its content: qcow2, raw, or an error naming the other image
/// format it is (a vmdk is never recorded as raw: a guest would see the vmdk's bytes as its
/// disk).
pub fn detect(path: &Path) -> io::Result<Format> {
    if let Some(f) = foreign_format(path)? {
        let how = match f.driver {
            Some(_) => "kvmctl runs qcow2 and raw images: vol-import converts it (kvmctl vol-import FILE --pool POOL)",
            None => "kvmctl does not import it (convert it first: qemu-img convert -p -O qcow2 FILE FILE.qcow2)",
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("is a {} image; {how}", f.what)));
    }
    Ok(if qcow2::is_qcow2(path)? { Format::Qcow2 } else { Format::Raw })
}

/// The image formats qemu knows besides qcow2 and raw, by the signatures qemu's own probes
/// look for (block/*.c `*_probe`), checked at the start of the file and, for dmg, its end.
pub fn foreign_format(path: &Path) -> io::Result<Option<Foreign>> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut head = vec![0u8; 512.min(len) as usize];
    f.read_exact_at(&mut head, 0)?;
    let at = |off: usize, sig: &[u8]| head.get(off..off + sig.len()) == Some(sig);
    let some = |what, driver| Ok(Some(Foreign { what, driver }));
    let known: [(&[u8], usize, &'static str, Option<&'static str>); 11] = [
        (b"KDMV", 0, "vmdk (VMware sparse)", Some("vmdk")),
        (b"COWD", 0, "vmdk (VMware ESX)", Some("vmdk")),
        (b"# Disk DescriptorFile", 0, "vmdk (VMware descriptor)", Some("vmdk")),
        (&[0x7f, 0x10, 0xda, 0xbe], 64, "vdi (VirtualBox)", Some("vdi")),
        (b"vhdxfile", 0, "vhdx (Hyper-V)", Some("vhdx")),
        (b"conectix", 0, "vpc (Virtual PC / Hyper-V VHD)", Some("vpc")),
        (b"QED\0", 0, "qed", None),
        (b"WithoutFreeSpace", 0, "parallels", None),
        (b"WithouFreSpacExt", 0, "parallels", None),
        (b"Bochs Virtual HD Image", 0, "bochs", None),
        (b"LUKS\xba\xbe", 0, "LUKS-encrypted", None),
    ];
    if let Some((_, _, what, driver)) = known.iter().find(|(sig, off, _, _)| at(*off, sig)) {
        return some(what, *driver);
    }
    if at(0, &qcow2::MAGIC.to_be_bytes()) && at(4, &1u32.to_be_bytes()) {
        return some("qcow (version 1)", Some("qcow"));
    }
    if at(0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop") {
        return some("cloop", None);
    }
    if len >= 512 {
        let mut tail = [0u8; 4];
        f.read_exact_at(&mut tail, len - 512)?;
        if &tail == b"koly" {
            return some("dmg (Apple disk image)", None);
        }
    }
    Ok(None)
}

/// What `vol-info`/`vol-list --details` show; `problem` marks a damaged image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub format: Format,
    pub capacity: u64,
    pub allocation: u64,
    pub physical: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Not closed cleanly (qemu's dirty bit, with lazy refcounts): its refcounts may be stale,
    /// its mapping is not, so it reads and copies as `qemu-img check -r` would leave it.
    pub dirty: bool,
    /// Persistent dirty bitmaps the image carries (a full copy would lose them).
    pub bitmaps: Vec<String>,
    pub problem: Option<String>,
}

/// Inspect an image of unknown format (probed: for files no definition records); never fails
/// on a damaged image (the damage goes into `problem`).
pub fn inspect(path: &Path) -> io::Result<ImageInfo> {
    inspect_as(path, detect(path)?)
}

/// Inspect an image as `format`, the format recorded for it: a raw disk whose content looks
/// like qcow2 (a guest can write any header onto it) is still raw.
pub fn inspect_as(path: &Path, format: Format) -> io::Result<ImageInfo> {
    let meta = std::fs::metadata(path)?;
    let mut info = ImageInfo {
        format: Format::Raw,
        capacity: meta.len(),
        allocation: meta.blocks() * 512,
        physical: meta.len(),
        backing_file: None,
        backing_format: None,
        dirty: false,
        bitmaps: Vec::new(),
        problem: None,
    };
    if !meta.is_file() {
        info.problem = Some("not a regular file".into());
        return Ok(info);
    }
    if format == Format::Qcow2 {
        info.format = Format::Qcow2;
        if !qcow2::is_qcow2(path)? {
            info.capacity = 0;
            info.problem = Some("recorded as qcow2, but it has no qcow2 header".into());
            return Ok(info);
        }
        match qcow2::read_header(path) {
            Ok(h) => {
                info.capacity = h.size;
                info.backing_file = h.backing_file.clone();
                info.backing_format = h.backing_format.clone();
                info.dirty = h.is_dirty();
                info.bitmaps = h.bitmaps;
            }
            Err(Qcow2Error::Io { source, .. }) => return Err(source),
            Err(e) => {
                info.capacity = 0;
                info.problem = Some(strip_path(&e.to_string(), path));
            }
        }
    }
    Ok(info)
}

fn strip_path(msg: &str, path: &Path) -> String {
    msg.strip_prefix(&format!("{}: ", path.display())).unwrap_or(msg).to_string()
}

/// How a running qemu holds an image, read from the locks qemu places on it
/// (byte 100 + permission bit: 100 = consistent read, 101 = write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InUse {
    Reading,
    Writing,
}

pub fn qemu_lock_holder(path: &Path) -> io::Result<Option<InUse>> {
    let f = File::open(path)?;
    if crate::state::conflicting_lock(&f, libc::F_WRLCK, 101, 1)? {
        return Ok(Some(InUse::Writing));
    }
    if crate::state::conflicting_lock(&f, libc::F_WRLCK, 100, 1)? {
        return Ok(Some(InUse::Reading));
    }
    Ok(None)
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: backing chain is deeper than {max} images (loop?)")]
    TooDeep { path: PathBuf, max: usize },
    #[error("{path}: backing file '{backing}' not found")]
    MissingBacking { path: PathBuf, backing: String },
    #[error(
        "{path}: backing file '{backing}' is outside every storage pool (kvmctl follows backing \
         files only inside pools: import or move it into one)"
    )]
    BackingOutsidePools { path: PathBuf, backing: String },
    #[error(
        "{path}: backing file '{backing}' has no recorded format, and kvmctl never probes one \
         (record it: qemu-img rebase -u -F raw|qcow2 -b '{backing}' {path})"
    )]
    BackingFormatUnrecorded { path: PathBuf, backing: String },
    #[error("{path}: backing file '{backing}' has format '{format}', which kvmctl does not read")]
    BackingFormatUnsupported { path: PathBuf, backing: String, format: String },
}

/// Where backing files may be followed: the storage pools' directories. A backing file
/// elsewhere (a host file a header names) or whose format its overlay does not record is
/// refused, never opened or probed.
#[derive(Debug, Clone, Default)]
pub struct BackingPolicy {
    dirs: Vec<PathBuf>,
}

impl BackingPolicy {
    /// Backing files may live in `dirs` (canonicalized; missing ones are left out).
    pub fn within(dirs: impl IntoIterator<Item = PathBuf>) -> BackingPolicy {
        BackingPolicy { dirs: dirs.into_iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect() }
    }

    /// The backing file `backing` named by the qcow2 `overlay` with recorded format `format`:
    /// its path and format, if it may be followed.
    fn follow(&self, overlay: &Path, backing: &str, format: Option<&str>) -> Result<(PathBuf, Format), ChainError> {
        let err_path = || (overlay.to_path_buf(), backing.to_string());
        let resolved = qcow2::resolve_backing(overlay, backing);
        let Ok(canon) = std::fs::canonicalize(&resolved) else {
            let (path, backing) = err_path();
            return Err(ChainError::MissingBacking { path, backing });
        };
        if !canon.parent().is_some_and(|dir| self.dirs.iter().any(|d| d == dir)) {
            let (path, backing) = err_path();
            return Err(ChainError::BackingOutsidePools { path, backing });
        }
        let format = match format {
            None => {
                let (path, backing) = err_path();
                return Err(ChainError::BackingFormatUnrecorded { path, backing });
            }
            Some(f) => f.parse::<Format>().map_err(|_| {
                let (path, backing) = err_path();
                ChainError::BackingFormatUnsupported { path, backing, format: f.to_string() }
            })?,
        };
        Ok((canon, format))
    }
}

/// An image to read: its path, the format recorded for it, and where its backing files may be.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub path: &'a Path,
    pub format: Format,
    pub backing: &'a BackingPolicy,
}

enum Layer {
    Qcow2(Box<Qcow2Reader>),
    Raw { file: File, len: u64 },
}

/// The backing files of `src`, nearest first, each with the format its overlay records, by
/// the rules of [`Chain::open`] (inside `src.backing`'s pools only, formats recorded, at most
/// `MAX_CHAIN` deep). Only headers are read.
pub fn backing_files(src: Source) -> Result<Vec<(PathBuf, Format)>, ChainError> {
    let mut out = Vec::new();
    let (mut p, mut fmt) = (src.path.to_path_buf(), src.format);
    while fmt == Format::Qcow2 {
        let h = qcow2::read_header(&p)?;
        let Some(b) = &h.backing_file else { break };
        if out.len() + 1 == MAX_CHAIN {
            return Err(ChainError::TooDeep { path: src.path.into(), max: MAX_CHAIN });
        }
        (p, fmt) = src.backing.follow(&p, b, h.backing_format.as_deref())?;
        out.push((p.clone(), fmt));
    }
    Ok(out)
}

/// A disk as the guest sees it: an image and its backing chain, top first.
pub struct Chain {
    layers: Vec<Layer>,
    pub size: u64,
    /// Decoder state for compressed clusters, one per inflating thread, kept across reads.
    inflaters: [Inflater; 2],
    pending: Inflations,
}

const MAX_CHAIN: usize = 16;

impl Chain {
    /// Open `src` with its recorded format; each backing file is followed only as its
    /// overlay records it and only where `src.backing` allows.
    pub fn open(src: Source) -> Result<Chain, ChainError> {
        let path = src.path;
        let mut layers = Vec::new();
        let mut next = Some((path.to_path_buf(), src.format));
        while let Some((p, fmt)) = next.take() {
            if layers.len() == MAX_CHAIN {
                return Err(ChainError::TooDeep { path: path.into(), max: MAX_CHAIN });
            }
            let ioe = |source| ChainError::Io { path: p.clone(), source };
            match fmt {
                Format::Qcow2 => {
                    let r = Qcow2Reader::open(&p)?;
                    if let Some(b) = &r.header.backing_file {
                        next = Some(src.backing.follow(&p, b, r.header.backing_format.as_deref())?);
                    }
                    layers.push(Layer::Qcow2(Box::new(r)));
                }
                Format::Raw => {
                    let file = File::open(&p).map_err(ioe)?;
                    let len = file.metadata().map_err(ioe)?.len();
                    layers.push(Layer::Raw { file, len });
                }
            }
        }
        let size = match &layers[0] {
            Layer::Qcow2(r) => r.header.size,
            Layer::Raw { len, .. } => *len,
        };
        Ok(Chain { layers, size, inflaters: Default::default(), pending: Inflations::default() })
    }

    /// The persistent dirty bitmaps in the chain's qcow2 images, by image.
    pub fn bitmaps(&self) -> Vec<(&Path, &[String])> {
        self.layers
            .iter()
            .filter_map(|l| match l {
                Layer::Qcow2(r) if !r.header.bitmaps.is_empty() => Some((r.path.as_path(), &r.header.bitmaps[..])),
                _ => None,
            })
            .collect()
    }

    /// Read guest bytes at `off` into `buf`; returns whether any of it came from allocated
    /// data (false: the whole range is a hole and reads as zeros). A range with no data at
    /// all is answered from the mappings alone and `buf` is left untouched.
    ///
    /// Compressed clusters are inflated once the mappings are walked, on two threads.
    pub fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<bool, ChainError> {
        if !has_data(&mut self.layers, off, buf.len() as u64)? {
            return Ok(false);
        }
        self.pending.clear();
        let any = read_layer(&mut self.layers, 0, off, buf, 0, &mut self.pending)?;
        if !self.pending.jobs.is_empty() {
            self.pending.read_streams(&self.layers)?;
            self.pending.inflate_into(buf, &mut self.inflaters).map_err(|(job, why)| {
                let j = &self.pending.jobs[job];
                let path = match &self.layers[j.layer] {
                    Layer::Qcow2(r) => r.path.clone(),
                    Layer::Raw { .. } => PathBuf::new(),
                };
                ChainError::Qcow2(Qcow2Error::Corrupt {
                    path,
                    reason: format!("compressed cluster at offset {} {why}", j.off),
                })
            })?;
        }
        Ok(any)
    }
}

/// Does any image of the chain hold data for guest bytes `off..off+len`?
fn has_data(layers: &mut [Layer], off: u64, len: u64) -> Result<bool, ChainError> {
    let Some((layer, rest)) = layers.split_first_mut() else { return Ok(false) };
    match layer {
        Layer::Raw { file, len: flen } => {
            let avail = flen.saturating_sub(off).min(len);
            Ok(avail > 0 && !is_hole(file, off, avail))
        }
        Layer::Qcow2(r) => {
            let gs = r.header.granule();
            let end = (off + len).min(r.header.size);
            let mut g = off;
            while g < end {
                let piece = (gs - g % gs).min(end - g);
                match r.map(g / gs)? {
                    Mapping::Data(_) | Mapping::Compressed { .. } => return Ok(true),
                    Mapping::Zero => {}
                    Mapping::Unallocated => {
                        if has_data(rest, g, piece)? {
                            return Ok(true);
                        }
                    }
                }
                g += piece;
            }
            Ok(false)
        }
    }
}

/// Fill `buf` (at position `at` of the caller's buffer) with guest bytes at `off` from
/// `layers` (the chain from `depth` down); compressed clusters are left to `pending`.
fn read_layer(
    layers: &mut [Layer],
    depth: usize,
    off: u64,
    buf: &mut [u8],
    at: usize,
    pending: &mut Inflations,
) -> Result<bool, ChainError> {
    let Some((layer, rest)) = layers.split_first_mut() else {
        buf.fill(0);
        return Ok(false);
    };
    match layer {
        Layer::Raw { file, len } => {
            let avail = len.saturating_sub(off).min(buf.len() as u64) as usize;
            buf[avail..].fill(0);
            if avail == 0 || is_hole(file, off, avail as u64) {
                buf[..avail].fill(0);
                return Ok(false);
            }
            file.read_exact_at(&mut buf[..avail], off)
                .map_err(|source| ChainError::Io { path: "raw".into(), source })?;
            Ok(true)
        }
        Layer::Qcow2(r) => {
            let (cs, gs) = (r.header.cluster_size(), r.header.granule());
            let size = r.header.size;
            let mut any = false;
            let mut pos = 0usize;
            while pos < buf.len() {
                let g = off + pos as u64;
                let piece = ((gs - g % gs) as usize).min(buf.len() - pos);
                if g >= size {
                    buf[pos..].fill(0);
                    break;
                }
                match r.map(g / gs)? {
                    Mapping::Data(h) => {
                        // Coalesce granules that are contiguous on the host into one read.
                        let mut run = piece;
                        let mut expect = h + g % gs + piece as u64;
                        while pos + run < buf.len() {
                            let g2 = off + (pos + run) as u64;
                            if g2 >= size || r.map(g2 / gs)? != Mapping::Data(expect) {
                                break;
                            }
                            let p2 = (gs as usize).min(buf.len() - pos - run);
                            run += p2;
                            expect += p2 as u64;
                        }
                        r.read_host(&mut buf[pos..pos + run], h + g % gs)?;
                        any = true;
                        pos += run;
                        continue;
                    }
                    Mapping::Compressed { off: h, len } => {
                        let stream = Stream { layer: depth, off: h, len, ty: r.header.compression_type, cs };
                        pending.add(stream, (at + pos, (g % cs) as usize, piece));
                        any = true;
                    }
                    Mapping::Zero => buf[pos..pos + piece].fill(0),
                    Mapping::Unallocated => {
                        any |= read_layer(rest, depth + 1, g, &mut buf[pos..pos + piece], at + pos, pending)?
                    }
                }
                pos += piece;
            }
            Ok(any)
        }
    }
}

/// A compressed cluster's stream in one image of a chain: `layer` (0 = top), its host
/// offset and length (to its last sector's end), compression type, and cluster size.
#[derive(Debug, Clone, Copy)]
struct Stream {
    layer: usize,
    off: u64,
    len: u64,
    ty: u8,
    cs: u64,
}

/// One compressed cluster a read needs: its stream, where the stream's bytes are in
/// `Inflations::raw`, and where its bytes go: (buffer position, offset in the cluster, length).
struct Inflation {
    stream: Stream,
    raw: std::ops::Range<usize>,
    dests: Vec<(usize, usize, usize)>,
}

impl std::ops::Deref for Inflation {
    type Target = Stream;
    fn deref(&self) -> &Stream {
        &self.stream
    }
}

/// Streams closer than this on the host are read with one pread (qemu packs them back to
/// back, so a chunk's streams are usually one run).
const STREAM_GAP: u64 = 64 << 10;
/// The longest run of streams read at once.
const STREAM_RUN: u64 = 16 << 20;

/// The compressed clusters of one [`Chain::read`], each inflated once however many pieces
/// of the buffer it fills. Memory stays bounded by the chunk: the streams of its clusters
/// and, for clusters only partly in it, one cluster each.
#[derive(Default)]
struct Inflations {
    jobs: Vec<Inflation>,
    index: HashMap<(usize, u64), usize>,
    raw: Vec<u8>,
    spare: Vec<Vec<u8>>,
}

/// Where one inflation goes: straight into the buffer (a whole cluster in it), or into a
/// cluster of its own whose pieces are copied out afterwards.
enum Target<'a> {
    Direct(&'a mut [u8]),
    Scratch(Vec<u8>),
}

impl Inflations {
    fn clear(&mut self) {
        self.jobs.clear();
        self.index.clear();
        self.raw.clear();
    }

    fn add(&mut self, stream: Stream, dest: (usize, usize, usize)) {
        let n = self.jobs.len();
        let i = *self.index.entry((stream.layer, stream.off)).or_insert(n);
        if i == n {
            self.jobs.push(Inflation { stream, raw: 0..0, dests: Vec::new() });
        }
        self.jobs[i].dests.push(dest);
    }

    /// Read every job's stream into `raw`, neighbours on the host in one pread.
    fn read_streams(&mut self, layers: &[Layer]) -> Result<(), ChainError> {
        let mut order: Vec<usize> = (0..self.jobs.len()).collect();
        order.sort_unstable_by_key(|&i| (self.jobs[i].layer, self.jobs[i].off));
        let mut k = 0;
        while k < order.len() {
            let first = &self.jobs[order[k]];
            let (layer, start) = (first.layer, first.off);
            let mut end = start + first.len;
            let mut last = k + 1;
            while let Some(next) = order.get(last).map(|&i| &self.jobs[i]) {
                let next_end = end.max(next.off + next.len);
                if next.layer != layer || next.off > end + STREAM_GAP || next_end - start > STREAM_RUN {
                    break;
                }
                end = next_end;
                last += 1;
            }
            let base = self.raw.len();
            self.raw.resize(base + (end - start) as usize, 0);
            let Layer::Qcow2(r) = &layers[layer] else { unreachable!("compressed clusters are in qcow2 layers") };
            r.read_host(&mut self.raw[base..], start)?;
            for &i in &order[k..last] {
                let j = &mut self.jobs[i];
                let at = base + (j.off - start) as usize;
                j.raw = at..at + j.len as usize;
            }
            k = last;
        }
        Ok(())
    }

    /// Inflate every job into `buf` on two threads. The error is the first failing job's
    /// (its index and why).
    fn inflate_into(&mut self, buf: &mut [u8], inflaters: &mut [Inflater; 2]) -> Result<(), (usize, String)> {
        let mut direct: Vec<(usize, usize)> = Vec::new();
        let mut work: Vec<(usize, Target)> = Vec::new();
        for (i, j) in self.jobs.iter().enumerate() {
            match j.dests[..] {
                [(pos, 0, n)] if n as u64 == j.cs => direct.push((pos, i)),
                _ => {
                    let mut v = self.spare.pop().unwrap_or_default();
                    v.resize(j.cs as usize, 0);
                    work.push((i, Target::Scratch(v)));
                }
            }
        }
        direct.sort_unstable();
        let (mut rest, mut done) = (&mut buf[..], 0usize);
        for (pos, i) in direct {
            let tail = std::mem::take(&mut rest).split_at_mut(pos - done).1;
            let (mine, tail) = tail.split_at_mut(self.jobs[i].cs as usize);
            (rest, done) = (tail, pos + mine.len());
            work.push((i, Target::Direct(mine)));
        }
        // Two threads, each taking the next cluster (in job order) as it is free.
        work.sort_unstable_by_key(|(i, _)| *i);
        let work: Vec<Mutex<(usize, Target)>> = work.into_iter().map(Mutex::new).collect();
        let (jobs, raw, next) = (&self.jobs, &self.raw, AtomicUsize::new(0));
        let run = |inf: &mut Inflater| -> Result<(), (usize, String)> {
            while let Some(w) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                let mut w = w.lock().expect("inflation lock");
                let (i, t) = &mut *w;
                let j = &jobs[*i];
                let out = match t {
                    Target::Direct(d) => &mut **d,
                    Target::Scratch(v) => &mut v[..],
                };
                inf.inflate(j.ty, &raw[j.raw.clone()], out).map_err(|why| (*i, why))?;
            }
            Ok(())
        };
        let [inf_a, inf_b] = inflaters;
        let (ra, rb) = std::thread::scope(|s| {
            let other = (work.len() > 1).then(|| s.spawn(|| run(inf_b)));
            let mine = run(inf_a);
            (mine, other.map_or(Ok(()), |t| t.join().expect("inflating thread panicked")))
        });
        // Clusters are handed out in order and each thread stops at its first failure: the
        // smaller of the two is the first failing cluster.
        match (ra, rb) {
            (Err(x), Err(y)) => return Err(if x.0 <= y.0 { x } else { y }),
            (Err(e), _) | (_, Err(e)) => return Err(e),
            _ => {}
        }
        let scratch: Vec<(usize, Vec<u8>)> = work
            .into_iter()
            .map(|m| m.into_inner().expect("inflation lock"))
            .filter_map(|(i, t)| match t {
                Target::Scratch(v) => Some((i, v)),
                Target::Direct(_) => None,
            })
            .collect();
        for (i, v) in scratch {
            for &(pos, within, n) in &self.jobs[i].dests {
                buf[pos..pos + n].copy_from_slice(&v[within..within + n]);
            }
            self.spare.push(v);
        }
        Ok(())
    }
}

/// Is `off..off+len` of a file entirely a hole? (SEEK_DATA; false when unsure.)
fn is_hole(file: &File, off: u64, len: u64) -> bool {
    // SAFETY: lseek on a valid fd has no memory effects.
    let next = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    if next < 0 {
        return io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    next as u64 >= off + len
}

/// True if every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to splits off unaligned ends.
    let (head, body, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|b| *b == 0) && body.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}
