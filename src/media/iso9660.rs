//! ISO 9660 images: a bounded reader (Rock Ridge, Joliet or plain names) and a small writer
//! (ISO level 2 names plus Rock Ridge and Joliet, as `genisoimage -J -r` makes them).
//!
//! The reader never trusts a number it reads: every offset is checked against the file's length,
//! directory sizes and continuation chains are capped, and a damaged image gives an error.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::MediaError;

/// The logical sector: directory records never cross one; volume descriptors fill one each.
pub const SECTOR: u64 = 2048;
/// A directory larger than this is refused (real ones are a few KiB).
const MAX_DIR_BYTES: u64 = 16 << 20;
/// Rock Ridge continuation areas followed per record, at most.
const MAX_CE_HOPS: usize = 16;
/// Rock Ridge continuation areas read per directory listing, at most (a crafted directory of
/// many records, each with a long chain, would otherwise cost minutes).
const MAX_CE_PER_DIR: usize = 4096;
/// Volume descriptors read before giving up on finding the terminator.
const MAX_DESCRIPTORS: u64 = 64;
const COPY_CHUNK: usize = 1 << 20;

/// A file or directory in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as the image's best naming shows it (Rock Ridge, Joliet, or ISO without `;1`).
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// First logical block of the data.
    pub extent: u32,
}

/// Which names the reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    RockRidge,
    Joliet,
    Plain,
}

/// An open ISO 9660 image.
#[derive(Debug)]
pub struct Iso {
    path: PathBuf,
    file: File,
    len: u64,
    block: u64,
    volume_id: String,
    naming: Naming,
    root: Entry,
    susp_skip: usize,
}

/// A directory record, decoded.
#[derive(Debug, Clone)]
struct Rec {
    entry: Entry,
    /// The ISO-level (or Joliet) name, version stripped: a second name to match.
    alt_name: String,
    /// `.` or `..`, or a Rock Ridge relocated directory (`RE`): not listed.
    hidden: bool,
    multi_extent: bool,
}

/// What a record's System Use area says (Rock Ridge).
#[derive(Default)]
struct Susp {
    name: Option<String>,
    relocated: bool,
    child: Option<u32>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Trim the padding of a descriptor's text field.
fn text_field(b: &[u8], joliet: bool) -> String {
    let s = if joliet { ucs2(b) } else { b.iter().map(|&c| c as char).collect() };
    s.trim_end_matches([' ', '\0']).to_string()
}

fn ucs2(b: &[u8]) -> String {
    let units = b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
    char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
}

/// `NAME.EXT;1` -> `NAME.EXT`, `VMLINUZ.;1` -> `VMLINUZ`.
fn strip_version(name: &str) -> &str {
    let base = match name.rfind(';') {
        Some(i) if name[i + 1..].bytes().all(|c| c.is_ascii_digit()) => &name[..i],
        _ => name,
    };
    match base.strip_suffix('.') {
        Some(b) if !b.is_empty() => b,
        _ => base,
    }
}

fn is_joliet_escape(d: &[u8]) -> bool {
    d[88] == b'%' && d[89] == b'/' && matches!(d[90], b'@' | b'C' | b'E')
}

impl Iso {
    /// Open an image and read its volume descriptors.
    pub fn open(path: &Path) -> Result<Iso, MediaError> {
        // Look before opening: opening a FIFO would block.
        let meta = std::fs::metadata(path).map_err(|e| MediaError::io(path, e))?;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(MediaError::NotIso { path: path.into() });
        }
        let file = File::open(path).map_err(|e| MediaError::io(path, e))?;
        let len = if meta.is_file() { meta.len() } else { device_len(&file).map_err(|e| MediaError::io(path, e))? };
        let mut iso = Iso {
            path: path.into(),
            file,
            len,
            block: SECTOR,
            volume_id: String::new(),
            naming: Naming::Plain,
            root: Entry { name: String::new(), is_dir: true, size: 0, extent: 0 },
            susp_skip: 0,
        };
        if len < 17 * SECTOR || &iso.read_at(16 * SECTOR, 6, "volume descriptor")?[1..6] != b"CD001" {
            return Err(MediaError::NotIso { path: path.into() });
        }
        let (pvd, svd) = iso.descriptors()?;
        let block = le16(&pvd, 128) as u64;
        if !matches!(block, 512 | 1024 | 2048) {
            return Err(iso.corrupt(format!("logical block size {block}")));
        }
        iso.block = block;
        let need = le32(&pvd, 80) as u64 * block;
        if need > len {
            return Err(MediaError::Truncated { path: path.into(), what: "the volume".into(), need, len });
        }
        iso.volume_id = text_field(&pvd[40..72], false);
        let root = iso.root_record(&pvd[156..190])?;
        iso.root = root.clone();
        if let Some(skip) = iso.susp_sp(&root)? {
            iso.naming = Naming::RockRidge;
            iso.susp_skip = skip;
        } else if let Some(svd) = svd {
            iso.naming = Naming::Joliet;
            iso.root = iso.root_record(&svd[156..190])?;
            if iso.volume_id.is_empty() {
                iso.volume_id = text_field(&svd[40..72], true);
            }
        }
        Ok(iso)
    }

    /// The primary and (Joliet) supplementary volume descriptors.
    fn descriptors(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), MediaError> {
        let (mut pvd, mut svd) = (None, None);
        for n in 16..16 + MAX_DESCRIPTORS {
            if (n + 1) * SECTOR > self.len {
                break;
            }
            let d = self.read_at(n * SECTOR, SECTOR, "volume descriptor")?;
            if &d[1..6] != b"CD001" || d[0] == 255 {
                break;
            }
            match d[0] {
                1 if pvd.is_none() => pvd = Some(d),
                2 if svd.is_none() && is_joliet_escape(&d) => svd = Some(d),
                _ => {}
            }
        }
        let pvd = pvd.ok_or_else(|| self.corrupt("no primary volume descriptor"))?;
        Ok((pvd, svd))
    }

    fn root_record(&self, raw: &[u8]) -> Result<Entry, MediaError> {
        let rec = self.decode(raw, false, false, &mut 0)?.ok_or_else(|| self.corrupt("bad root directory record"))?;
        if !rec.entry.is_dir {
            return Err(self.corrupt("the root directory record is not a directory"));
        }
        Ok(Entry { name: String::new(), ..rec.entry })
    }

    /// SUSP: an `SP` entry at the start of the root's "." record means Rock Ridge may follow.
    fn susp_sp(&self, root: &Entry) -> Result<Option<usize>, MediaError> {
        let data = self.read_at(self.data_offset(root.extent), SECTOR.min(root.size), "root directory")?;
        let len = data.first().copied().unwrap_or(0) as usize;
        if len < 34 || len > data.len() {
            return Ok(None);
        }
        let su = &data[34..len];
        if su.len() >= 7 && &su[0..2] == b"SP" && su[2] >= 7 && su[4] == 0xBE && su[5] == 0xEF {
            return Ok(Some(su[6] as usize));
        }
        Ok(None)
    }

    /// The volume identifier, padding trimmed (a NoCloud seed's is `cidata`).
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }

    pub fn naming(&self) -> Naming {
        self.naming
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, reason: impl Into<String>) -> MediaError {
        MediaError::Corrupt { path: self.path.clone(), reason: reason.into() }
    }

    fn data_offset(&self, extent: u32) -> u64 {
        extent as u64 * self.block
    }

    /// Read exactly `len` bytes at `off`, or say the image is too short.
    fn read_at(&self, off: u64, len: u64, what: &str) -> Result<Vec<u8>, MediaError> {
        let need = off.checked_add(len).ok_or_else(|| self.corrupt(format!("{what}: offset out of range")))?;
        if need > self.len {
            return Err(MediaError::Truncated { path: self.path.clone(), what: what.into(), need, len: self.len });
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, off).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                MediaError::Truncated { path: self.path.clone(), what: what.into(), need, len: self.len }
            }
            _ => MediaError::io(&self.path, e),
        })?;
        Ok(buf)
    }

    /// Decode one directory record (`raw` is exactly the record). `None` for a record too short
    /// to be one.
    fn decode(&self, raw: &[u8], rock: bool, joliet: bool, ce_left: &mut usize) -> Result<Option<Rec>, MediaError> {
        if raw.len() < 34 {
            return Ok(None);
        }
        let id_len = raw[32] as usize;
        if id_len == 0 || 33 + id_len > raw.len() {
            return Err(self.corrupt(format!("directory record with a name of {id_len} bytes in {} bytes", raw.len())));
        }
        let id = &raw[33..33 + id_len];
        let flags = raw[25];
        if raw[26] != 0 || raw[27] != 0 {
            return Err(MediaError::Unsupported { path: self.path.clone(), what: "an interleaved file".into() });
        }
        let extent = le32(raw, 2).checked_add(raw[1] as u32).ok_or_else(|| self.corrupt("extent out of range"))?;
        let dot = id == [0] || id == [1];
        let iso_name = match id {
            [0] => ".".to_string(),
            [1] => "..".to_string(),
            _ if joliet => strip_version(&ucs2(id)).to_string(),
            _ => strip_version(&String::from_utf8_lossy(id)).to_string(),
        };
        let mut rec = Rec {
            entry: Entry { name: iso_name.clone(), is_dir: flags & 2 != 0, size: le32(raw, 10) as u64, extent },
            alt_name: iso_name,
            hidden: dot,
            multi_extent: flags & 0x80 != 0,
        };
        if rock && !dot {
            let su_start = 33 + id_len + (id_len + 1) % 2 + self.susp_skip;
            let su = raw.get(su_start..).unwrap_or(&[]);
            let s = self.parse_susp(su, ce_left)?;
            if let Some(name) = s.name.filter(|n| !n.is_empty() && n != "." && n != "..") {
                rec.entry.name = name;
            }
            rec.hidden |= s.relocated;
            if let Some(child) = s.child {
                rec.entry.is_dir = true;
                rec.entry.extent = child;
                rec.entry.size = self.dir_size_at(child)?;
            }
        }
        Ok(Some(rec))
    }

    /// The size of a directory from its own "." record (for Rock Ridge `CL` links).
    fn dir_size_at(&self, extent: u32) -> Result<u64, MediaError> {
        let head = self.read_at(self.data_offset(extent), 34, "relocated directory")?;
        if head[0] < 34 || head[25] & 2 == 0 {
            return Err(self.corrupt(format!("Rock Ridge child link to block {extent}, which is no directory")));
        }
        Ok(le32(&head, 10) as u64)
    }

    /// Walk a System Use area and its continuation areas.
    fn parse_susp(&self, first: &[u8], ce_left: &mut usize) -> Result<Susp, MediaError> {
        let mut out = Susp::default();
        let mut name: Option<String> = None;
        let mut area = first.to_vec();
        for _ in 0..MAX_CE_HOPS {
            let mut next = None;
            let mut p = 0;
            while p + 4 <= area.len() {
                let (sig, len) = (&area[p..p + 2], area[p + 2] as usize);
                if len < 4 || p + len > area.len() {
                    break;
                }
                let e = &area[p..p + len];
                match sig {
                    b"NM" if len >= 5 => {
                        let part = String::from_utf8_lossy(&e[5..]);
                        if e[4] & 0b110 == 0 {
                            name.get_or_insert_with(String::new).push_str(&part);
                        }
                    }
                    b"RE" => out.relocated = true,
                    b"CL" if len >= 12 => out.child = Some(le32(e, 4)),
                    b"CE" if len >= 28 => next = Some((le32(e, 4), le32(e, 12) as u64, le32(e, 20) as u64)),
                    b"ST" => break,
                    _ => {}
                }
                p += len;
            }
            let Some((block, off, len)) = next else {
                out.name = name;
                return Ok(out);
            };
            if *ce_left == 0 {
                return Err(self.corrupt("too many Rock Ridge continuation areas in one directory"));
            }
            *ce_left -= 1;
            if len > 64 * 1024 {
                return Err(self.corrupt(format!("Rock Ridge continuation area of {len} bytes")));
            }
            let start = self.data_offset(block).checked_add(off).ok_or_else(|| self.corrupt("CE out of range"))?;
            area = self.read_at(start, len, "Rock Ridge continuation area")?;
        }
        Err(self.corrupt("Rock Ridge continuation areas form a chain too long (a loop?)"))
    }

    /// All records of a directory, "." and ".." included, multi-extent files merged.
    fn records(&self, dir: &Entry) -> Result<Vec<Rec>, MediaError> {
        if dir.size > MAX_DIR_BYTES {
            return Err(self.corrupt(format!("directory '{}' claims {} bytes", dir.name, dir.size)));
        }
        let data = self.read_at(self.data_offset(dir.extent), dir.size, "directory")?;
        let (rock, joliet) = (self.naming == Naming::RockRidge, self.naming == Naming::Joliet);
        let mut out: Vec<Rec> = Vec::new();
        let mut pending_multi = false;
        let mut ce_left = MAX_CE_PER_DIR;
        let mut p = 0usize;
        while p < data.len() {
            let len = data[p] as usize;
            if len == 0 {
                p = (p / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            if p + len > data.len() {
                return Err(self.corrupt(format!("directory record at byte {p} of '{}' overruns it", dir.name)));
            }
            let Some(rec) = self.decode(&data[p..p + len], rock, joliet, &mut ce_left)? else {
                return Err(self.corrupt(format!("directory record of {len} bytes in '{}'", dir.name)));
            };
            p += len;
            match out.last_mut() {
                Some(prev) if pending_multi => {
                    let end = prev.entry.extent as u64 * self.block + prev.entry.size;
                    if rec.entry.extent as u64 * self.block != end {
                        return Err(MediaError::Unsupported {
                            path: self.path.clone(),
                            what: format!("'{}': a file in non-contiguous extents", prev.entry.name),
                        });
                    }
                    prev.entry.size += rec.entry.size;
                }
                _ => out.push(rec.clone()),
            }
            pending_multi = rec.multi_extent;
        }
        Ok(out)
    }

    /// Resolve `path` ("/" or "" is the root).
    fn lookup(&self, path: &str) -> Result<Option<Entry>, MediaError> {
        let mut cur = self.root.clone();
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if !cur.is_dir || comp == ".." {
                return Ok(None);
            }
            let recs = self.records(&cur)?;
            let visible = || recs.iter().filter(|r| !r.hidden);
            let bare = strip_version(comp);
            let hit = visible()
                .find(|r| r.entry.name == comp)
                .or_else(|| visible().find(|r| r.entry.name.eq_ignore_ascii_case(comp)))
                .or_else(|| visible().find(|r| r.alt_name.eq_ignore_ascii_case(bare)))
                .or_else(|| visible().find(|r| self.naming == Naming::Plain && dchar_eq(&r.alt_name, bare)));
            match hit {
                Some(r) => cur = r.entry.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Find a file or directory by path; names match exactly first, then ignoring ASCII case,
    /// then by their ISO-level name (in a plain tree also as d-characters: `install.amd` finds
    /// `INSTALL_AMD`).
    pub fn find(&self, path: &str) -> Result<Option<Entry>, MediaError> {
        self.lookup(path)
    }

    /// The entries of a directory, without "." and "..".
    pub fn read_dir(&self, path: &str) -> Result<Vec<Entry>, MediaError> {
        let dir =
            self.lookup(path)?.ok_or_else(|| MediaError::NotInIso { iso: self.path.clone(), path: path.into() })?;
        if !dir.is_dir {
            return Err(MediaError::NotADirectory { iso: self.path.clone(), path: path.into() });
        }
        Ok(self.records(&dir)?.into_iter().filter(|r| !r.hidden).map(|r| r.entry).collect())
    }

    /// Check that a file entry lies within the image; its data offset.
    pub(crate) fn check_file(&self, entry: &Entry) -> Result<u64, MediaError> {
        if entry.is_dir {
            return Err(MediaError::IsADirectory { iso: self.path.clone(), path: entry.name.clone() });
        }
        let off = self.data_offset(entry.extent);
        let need = off.checked_add(entry.size).ok_or_else(|| self.corrupt("file extent out of range"))?;
        if need > self.len {
            let what = format!("file '{}'", entry.name);
            return Err(MediaError::Truncated { path: self.path.clone(), what, need, len: self.len });
        }
        Ok(off)
    }

    /// A file's whole content, in memory (for small files; see `copy_file`).
    pub fn read_file(&self, entry: &Entry) -> Result<Vec<u8>, MediaError> {
        let off = self.check_file(entry)?;
        self.read_at(off, entry.size, &format!("file '{}'", entry.name))
    }

    /// Stream a file out of the image into `dest` (written beside it, then renamed into place).
    pub fn copy_file(&self, entry: &Entry, dest: &Path) -> Result<u64, MediaError> {
        let off = self.check_file(entry)?;
        let tmp = tmp_beside(dest);
        let result = self.copy_range(off, entry.size, &tmp, dest).and_then(|_| {
            std::fs::rename(&tmp, dest).map_err(|e| MediaError::io(dest, e))?;
            Ok(entry.size)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Copy `size` bytes at `off` into the new file `tmp`; errors name `dest`, the final path.
    fn copy_range(&self, off: u64, size: u64, tmp: &Path, dest: &Path) -> Result<(), MediaError> {
        let mut out = File::create(tmp).map_err(|e| MediaError::io(dest, e))?;
        let mut buf = vec![0u8; COPY_CHUNK.min(size as usize)];
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(COPY_CHUNK as u64) as usize;
            let chunk = self.read_at_into(off + done, &mut buf[..n])?;
            out.write_all(chunk).map_err(|e| MediaError::io(dest, e))?;
            done += n as u64;
        }
        Ok(())
    }

    fn read_at_into<'b>(&self, off: u64, buf: &'b mut [u8]) -> Result<&'b [u8], MediaError> {
        let need = off + buf.len() as u64;
        self.file.read_exact_at(buf, off).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                MediaError::Truncated { path: self.path.clone(), what: "file data".into(), need, len: self.len }
            }
            _ => MediaError::io(&self.path, e),
        })?;
        Ok(buf)
    }
}

/// The size of a block device (a CD-ROM drive), by seeking to its end.
fn device_len(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// Names compared as d-characters: case folded, anything but letters and digits as `_`
/// (`install.amd` is `INSTALL_AMD` in a plain ISO 9660 tree).
fn dchar_eq(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
    };
    norm(a) == norm(b)
}

/// `dir/.name.tmp-PID-N`, for a write-then-rename.
pub(crate) fn tmp_beside(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = N.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

// ---------------------------------------------------------------------------------------------
// Writer

/// Builds a small ISO 9660 image from in-memory files: ISO level 2 names (upper case, `;1`),
/// Rock Ridge (`NM`, `PX`) and Joliet, both on by default, so that Linux, xorriso and Windows
/// all see the exact names (`meta-data`, `user-data`).
#[derive(Debug, Clone)]
pub struct IsoWriter {
    volume_id: String,
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    time: Option<i64>,
    rock_ridge: bool,
    joliet: bool,
}

/// One directory of one tree (ISO or Joliet), in path-table order.
struct TDir {
    path: String,
    id: Vec<u8>,
    parent: usize,
    entries: Vec<TEnt>,
    subdirs: u32,
    size: u32,
    lba: u32,
}

/// Where everything goes: both trees with their blocks, path tables (L, M), the Rock Ridge
/// continuation block, each file's (block, size), and the image's size in blocks.
struct Plan {
    iso: Vec<TDir>,
    jol: Vec<TDir>,
    iso_pt: (u32, u32),
    jol_pt: (u32, u32),
    ce_lba: u32,
    files: Vec<(u32, u32)>,
    total: u32,
}

struct TEnt {
    id: Vec<u8>,
    name: String,
    target: Target,
}

#[derive(Clone, Copy)]
enum Target {
    Dir(usize),
    File(usize),
}

const ER_ID: &[u8] = b"RRIP_1991A";
const ER_DESC: &[u8] = b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const ER_SRC: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";
const PX_LEN: usize = 36;

fn check_component(what: &'static str, c: &str) -> Result<(), MediaError> {
    let bad = |reason: &str| MediaError::IsoName { what, name: c.into(), reason: reason.into() };
    if c.is_empty() || c == "." || c == ".." {
        return Err(bad("empty, '.' or '..' path component"));
    }
    if c.encode_utf16().count() > 64 {
        return Err(bad("longer than 64 characters (the Joliet limit)"));
    }
    if let Some(ch) = c.chars().find(|&ch| ch < ' ' || "*/:;?\\".contains(ch) || ch as u32 > 0xFFFF) {
        return Err(bad(&format!("character {ch:?} is not allowed")));
    }
    Ok(())
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day, hour, minute, second) in UTC, clamped to what ISO 9660 can say.
fn utc(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = secs.clamp(0, 253_402_300_799); // 1970 .. 9999-12-31T23:59:59
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400) as u32;
    (y, mo, d, t / 3600, t / 60 % 60, t % 60)
}

fn date7(secs: i64) -> [u8; 7] {
    let (y, mo, d, h, mi, s) = utc(secs);
    [(y - 1900).clamp(0, 255) as u8, mo as u8, d as u8, h as u8, mi as u8, s as u8, 0]
}

fn date17(secs: i64) -> [u8; 17] {
    let (y, mo, d, h, mi, s) = utc(secs);
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}00").as_bytes());
    out
}

/// A d-character version of a name, for the ISO-level tree (level 2: 30 characters).
fn iso_base(name: &str, is_dir: bool) -> (String, String) {
    let map = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
    };
    match name.rfind('.') {
        Some(i) if !is_dir && i > 0 => (map(&name[..i]), map(&name[i + 1..])),
        _ => (map(name), String::new()),
    }
}

fn iso_id(base: &str, ext: &str, is_dir: bool, suffix: Option<usize>) -> Vec<u8> {
    let tag = suffix.map(|n| format!("~{n}")).unwrap_or_default();
    let (max_total, mut ext) = (if is_dir { 31 } else { 30 }, ext.to_string());
    ext.truncate(8);
    let room = max_total - ext.len() - usize::from(!is_dir) - tag.len();
    let mut b: String = base.chars().take(room).collect();
    b.push_str(&tag);
    if is_dir {
        b.into_bytes()
    } else {
        format!("{b}.{ext};1").into_bytes()
    }
}

/// Joliet names carry no `;1` (as genisoimage and xorriso write them).
fn joliet_id(name: &str) -> Vec<u8> {
    name.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

fn record_len(id_len: usize, su_len: usize) -> usize {
    let n = 33 + id_len + (id_len + 1) % 2 + su_len;
    n + n % 2
}

fn px(mode: u32, nlink: u32) -> Vec<u8> {
    let mut e = vec![b'P', b'X', PX_LEN as u8, 1];
    for v in [mode, nlink, 0, 0] {
        e.extend_from_slice(&both32(v));
    }
    e
}

fn nm(name: &str) -> Vec<u8> {
    let mut e = vec![b'N', b'M', (5 + name.len()) as u8, 1, 0];
    e.extend_from_slice(name.as_bytes());
    e
}

impl IsoWriter {
    /// A writer for a volume labelled `volume_id` (at most 32 ASCII characters).
    pub fn new(volume_id: &str) -> Result<IsoWriter, MediaError> {
        if volume_id.len() > 32 || !volume_id.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            let reason = "at most 32 printable ASCII characters".into();
            return Err(MediaError::IsoName { what: "volume id", name: volume_id.into(), reason });
        }
        Ok(IsoWriter {
            volume_id: volume_id.into(),
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            time: None,
            rock_ridge: true,
            joliet: true,
        })
    }

    /// Stamp every date with `unix_secs` instead of the current time: same inputs, same bytes.
    pub fn fixed_time(&mut self, unix_secs: i64) -> &mut Self {
        self.time = Some(unix_secs);
        self
    }

    pub fn rock_ridge(&mut self, on: bool) -> &mut Self {
        self.rock_ridge = on;
        self
    }

    pub fn joliet(&mut self, on: bool) -> &mut Self {
        self.joliet = on;
        self
    }

    fn normalize(&self, what: &'static str, path: &str) -> Result<String, MediaError> {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if comps.is_empty() {
            return Err(MediaError::IsoName { what, name: path.into(), reason: "empty path".into() });
        }
        comps.iter().try_for_each(|c| check_component(what, c))?;
        let norm = comps.join("/");
        let mut parent = String::new();
        for c in &comps[..comps.len() - 1] {
            parent = if parent.is_empty() { c.to_string() } else { format!("{parent}/{c}") };
            if self.files.contains_key(&parent) {
                let reason = format!("'{parent}' is a file");
                return Err(MediaError::IsoName { what, name: path.into(), reason });
            }
        }
        if self.files.contains_key(&norm) || self.dirs.contains(&norm) {
            return Err(MediaError::IsoName { what, name: path.into(), reason: "added twice".into() });
        }
        Ok(norm)
    }

    /// Add a file; `path` may name subdirectories (`a/b/c`), which are created.
    pub fn add_file(&mut self, path: &str, data: impl Into<Vec<u8>>) -> Result<&mut Self, MediaError> {
        let norm = self.normalize("file", path)?;
        let mut p = norm.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            self.dirs.insert(p.to_string());
        }
        self.files.insert(norm, data.into());
        Ok(self)
    }

    /// Add an (empty) directory.
    pub fn add_dir(&mut self, path: &str) -> Result<&mut Self, MediaError> {
        let norm = self.normalize("directory", path)?;
        let mut p = norm.as_str();
        self.dirs.insert(p.to_string());
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            self.dirs.insert(p.to_string());
        }
        Ok(self)
    }

    /// Children of every directory: dir path -> [(name, child path, is_dir)].
    fn children(&self) -> HashMap<String, Vec<(String, String, bool)>> {
        let mut kids: HashMap<String, Vec<(String, String, bool)>> = HashMap::new();
        kids.insert(String::new(), Vec::new());
        let all = self.dirs.iter().map(|d| (d, true)).chain(self.files.keys().map(|f| (f, false)));
        for (path, is_dir) in all {
            let (parent, name) = match path.rfind('/') {
                Some(i) => (&path[..i], &path[i + 1..]),
                None => ("", path.as_str()),
            };
            kids.entry(parent.to_string()).or_default().push((name.to_string(), path.clone(), is_dir));
            if is_dir {
                kids.entry(path.clone()).or_default();
            }
        }
        kids
    }

    /// One tree in path-table order (breadth first, children sorted by identifier).
    fn tree(&self, joliet: bool, file_index: &HashMap<&str, usize>) -> Vec<TDir> {
        let kids = self.children();
        let mut dirs =
            vec![TDir { path: String::new(), id: vec![0], parent: 0, entries: vec![], subdirs: 0, size: 0, lba: 0 }];
        let mut i = 0;
        while i < dirs.len() {
            let mut used = HashSet::new();
            let mut ents: Vec<(Vec<u8>, String, String, bool)> = Vec::new();
            for (name, path, is_dir) in &kids[&dirs[i].path] {
                let id = if joliet {
                    joliet_id(name)
                } else {
                    let (base, ext) = iso_base(name, *is_dir);
                    let mut n = 0;
                    let mut id = iso_id(&base, &ext, *is_dir, None);
                    while !used.insert(id.to_ascii_uppercase()) {
                        n += 1;
                        id = iso_id(&base, &ext, *is_dir, Some(n));
                    }
                    id
                };
                ents.push((id, name.clone(), path.clone(), *is_dir));
            }
            ents.sort_by(|a, b| a.0.cmp(&b.0));
            for (id, name, path, is_dir) in ents {
                let target = if is_dir {
                    dirs.push(TDir { path, id: id.clone(), parent: i, entries: vec![], subdirs: 0, size: 0, lba: 0 });
                    dirs[i].subdirs += 1;
                    Target::Dir(dirs.len() - 1)
                } else {
                    Target::File(file_index[path.as_str()])
                };
                dirs[i].entries.push(TEnt { id, name, target });
            }
            i += 1;
        }
        dirs
    }

    /// Rock Ridge System Use bytes of one record (`None` = "." or "..").
    fn su(&self, rock: bool, ent: Option<&TEnt>, dirs: &[TDir], dir_nlink: u32) -> Vec<u8> {
        if !rock {
            return vec![];
        }
        match ent {
            None => px(0o040555, dir_nlink),
            Some(e) => {
                let mut su = match e.target {
                    Target::Dir(d) => px(0o040555, 2 + dirs[d].subdirs),
                    Target::File(_) => px(0o100444, 1),
                };
                su.extend(nm(&e.name));
                su
            }
        }
    }

    fn dir_sizes(&self, dirs: &mut [TDir], rock: bool) {
        for i in 0..dirs.len() {
            let nlink = 2 + dirs[i].subdirs;
            let dot_su = self.su(rock, None, dirs, nlink).len() + if rock && i == 0 { 7 + 28 } else { 0 };
            let mut lens = vec![record_len(1, dot_su), record_len(1, self.su(rock, None, dirs, nlink).len())];
            lens.extend(dirs[i].entries.iter().map(|e| record_len(e.id.len(), self.su(rock, Some(e), dirs, 0).len())));
            let mut pos = 0usize;
            for l in lens {
                if pos % SECTOR as usize + l > SECTOR as usize {
                    pos = pos.div_ceil(SECTOR as usize) * SECTOR as usize;
                }
                pos += l;
            }
            dirs[i].size = (pos.div_ceil(SECTOR as usize) * SECTOR as usize) as u32;
        }
    }

    /// Trees, sizes and block addresses of everything in the image.
    fn plan(&self) -> Result<Plan, MediaError> {
        if let Some((n, d)) = self.files.iter().find(|(_, d)| d.len() as u64 > u32::MAX as u64) {
            return Err(MediaError::IsoTooLarge(format!("file '{n}' has {} bytes (4 GiB at most)", d.len())));
        }
        let index: HashMap<&str, usize> = self.files.keys().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut iso = self.tree(false, &index);
        let mut jol = if self.joliet { self.tree(true, &index) } else { vec![] };
        self.dir_sizes(&mut iso, self.rock_ridge);
        self.dir_sizes(&mut jol, false);
        let pt_sectors = |t: &[TDir]| path_table_size(t).div_ceil(SECTOR).max(1);
        // System area, PVD, SVD (Joliet), terminator; then path tables (L and M per tree).
        let mut lba: u64 = 16 + 1 + u64::from(self.joliet) + 1;
        let iso_pt = (lba as u32, (lba + pt_sectors(&iso)) as u32);
        lba += 2 * pt_sectors(&iso);
        let jol_pt = (lba as u32, (lba + pt_sectors(&jol)) as u32);
        if self.joliet {
            lba += 2 * pt_sectors(&jol);
        }
        let ce_lba = lba as u32;
        lba += u64::from(self.rock_ridge);
        for d in iso.iter_mut().chain(jol.iter_mut()) {
            d.lba = lba as u32;
            lba += d.size as u64 / SECTOR;
        }
        let mut files = Vec::with_capacity(self.files.len());
        for data in self.files.values() {
            files.push((lba as u32, data.len() as u32));
            lba += (data.len() as u64).div_ceil(SECTOR);
        }
        if lba >= u32::MAX as u64 / 2 {
            return Err(MediaError::IsoTooLarge(format!("{lba} sectors is more than this writer makes")));
        }
        Ok(Plan { iso, jol, iso_pt, jol_pt, ce_lba, files, total: lba as u32 })
    }

    /// The whole image.
    pub fn build(&self) -> Result<Vec<u8>, MediaError> {
        let now = self.time.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
        });
        let p = self.plan()?;
        let at = |s: u32| s as usize * SECTOR as usize;
        let mut img = vec![0u8; at(p.total)];
        for ((lba, _), data) in p.files.iter().zip(self.files.values()) {
            img[at(*lba)..at(*lba) + data.len()].copy_from_slice(data);
        }
        self.write_dirs(&mut img, &p.iso, &p.files, self.rock_ridge, p.ce_lba, now);
        self.write_dirs(&mut img, &p.jol, &p.files, false, 0, now);
        if self.rock_ridge {
            let er = er_entry();
            img[at(p.ce_lba)..at(p.ce_lba) + er.len()].copy_from_slice(&er);
        }
        for (t, (l, m)) in [(&p.iso, p.iso_pt), (&p.jol, p.jol_pt)] {
            if !t.is_empty() {
                let n = path_table_size(t) as usize;
                img[at(l)..at(l) + n].copy_from_slice(&path_table(t, false));
                img[at(m)..at(m) + n].copy_from_slice(&path_table(t, true));
            }
        }
        let pvd = self.descriptor(1, &p.iso, p.iso_pt, p.total, now);
        img[at(16)..at(17)].copy_from_slice(&pvd);
        let mut next = 17;
        if self.joliet {
            let svd = self.descriptor(2, &p.jol, p.jol_pt, p.total, now);
            img[at(17)..at(18)].copy_from_slice(&svd);
            next = 18;
        }
        img[at(next)..at(next) + 7].copy_from_slice(&[255, b'C', b'D', b'0', b'0', b'1', 1]);
        Ok(img)
    }

    /// Write the image to `path` (beside it first, then renamed into place).
    pub fn write_to(&self, path: &Path) -> Result<(), MediaError> {
        let img = self.build()?;
        let tmp = tmp_beside(path);
        let res = std::fs::write(&tmp, &img).and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(MediaError::io(path, e));
        }
        Ok(())
    }

    fn write_dirs(&self, img: &mut [u8], dirs: &[TDir], files: &[(u32, u32)], rock: bool, ce: u32, now: i64) {
        let date = date7(now);
        for (i, d) in dirs.iter().enumerate() {
            let nlink = 2 + d.subdirs;
            let parent = &dirs[d.parent];
            let mut dot_su = Vec::new();
            if rock && i == 0 {
                dot_su.extend_from_slice(&[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
                dot_su.extend(self.su(rock, None, dirs, nlink));
                let er_len = er_entry().len() as u32;
                dot_su.extend_from_slice(&[b'C', b'E', 28, 1]);
                for v in [ce, 0, er_len] {
                    dot_su.extend_from_slice(&both32(v));
                }
            } else {
                dot_su = self.su(rock, None, dirs, nlink);
            }
            let pn = 2 + parent.subdirs;
            let mut recs = vec![
                dir_record(d.lba, d.size, 2, &[0], &dot_su, date),
                dir_record(parent.lba, parent.size, 2, &[1], &self.su(rock, None, dirs, pn), date),
            ];
            for e in &d.entries {
                let su = self.su(rock, Some(e), dirs, 0);
                recs.push(match e.target {
                    Target::Dir(c) => dir_record(dirs[c].lba, dirs[c].size, 2, &e.id, &su, date),
                    Target::File(f) => dir_record(files[f].0, files[f].1, 0, &e.id, &su, date),
                });
            }
            let base = d.lba as usize * SECTOR as usize;
            let mut pos = 0usize;
            for r in recs {
                if pos % SECTOR as usize + r.len() > SECTOR as usize {
                    pos = pos.div_ceil(SECTOR as usize) * SECTOR as usize;
                }
                img[base + pos..base + pos + r.len()].copy_from_slice(&r);
                pos += r.len();
            }
        }
    }

    fn descriptor(&self, kind: u8, t: &[TDir], pt: (u32, u32), total: u32, now: i64) -> Vec<u8> {
        let joliet = kind == 2;
        let text = |s: &str, n: usize| -> Vec<u8> {
            if joliet {
                let mut v: Vec<u8> = s.encode_utf16().take(n / 2).flat_map(|u| u.to_be_bytes()).collect();
                while v.len() < n {
                    v.extend_from_slice(&[0, b' ']);
                }
                v.truncate(n);
                v
            } else {
                let mut v = s.as_bytes()[..s.len().min(n)].to_vec();
                v.resize(n, b' ');
                v
            }
        };
        let mut d = vec![0u8; SECTOR as usize];
        d[..7].copy_from_slice(&[kind, b'C', b'D', b'0', b'0', b'1', 1]);
        d[8..40].copy_from_slice(&text("LINUX", 32));
        d[40..72].copy_from_slice(&text(&self.volume_id, 32));
        d[80..88].copy_from_slice(&both32(total));
        if joliet {
            d[88..91].copy_from_slice(b"%/E");
        }
        d[120..124].copy_from_slice(&both16(1));
        d[124..128].copy_from_slice(&both16(1));
        d[128..132].copy_from_slice(&both16(SECTOR as u16));
        d[132..140].copy_from_slice(&both32(path_table_size(t) as u32));
        d[140..144].copy_from_slice(&pt.0.to_le_bytes());
        d[148..152].copy_from_slice(&pt.1.to_be_bytes());
        d[156..190].copy_from_slice(&dir_record(t[0].lba, t[0].size, 2, &[0], &[], date7(now)));
        d[190..318].copy_from_slice(&text("", 128));
        d[318..446].copy_from_slice(&text("", 128));
        d[446..574].copy_from_slice(&text("", 128));
        d[574..702].copy_from_slice(&text("KVMCTL", 128));
        d[702..813].copy_from_slice(&text("", 111));
        let stamp = date17(now);
        d[813..830].copy_from_slice(&stamp);
        d[830..847].copy_from_slice(&stamp);
        for f in [847, 864] {
            d[f..f + 16].copy_from_slice(b"0000000000000000");
        }
        d[881] = 1;
        d
    }
}

fn dir_record(lba: u32, size: u32, flags: u8, id: &[u8], su: &[u8], date: [u8; 7]) -> Vec<u8> {
    let len = record_len(id.len(), su.len());
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(&date);
    r[25] = flags;
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r[33..33 + id.len()].copy_from_slice(id);
    let su_at = 33 + id.len() + (id.len() + 1) % 2;
    r[su_at..su_at + su.len()].copy_from_slice(su);
    r
}

/// The Rock Ridge `ER` entry (RRIP 1.10), kept in the root's continuation area.
fn er_entry() -> Vec<u8> {
    let len = 8 + ER_ID.len() + ER_DESC.len() + ER_SRC.len();
    let mut e = vec![b'E', b'R', len as u8, 1, ER_ID.len() as u8, ER_DESC.len() as u8, ER_SRC.len() as u8, 1];
    e.extend_from_slice(&[ER_ID, ER_DESC, ER_SRC].concat());
    e
}

fn path_table_size(t: &[TDir]) -> u64 {
    t.iter().map(|d| 8 + d.id.len() as u64 + d.id.len() as u64 % 2).sum()
}

fn path_table(t: &[TDir], big_endian: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for d in t {
        out.push(d.id.len() as u8);
        out.push(0);
        let parent = d.parent as u16 + 1;
        if big_endian {
            out.extend_from_slice(&d.lba.to_be_bytes());
            out.extend_from_slice(&parent.to_be_bytes());
        } else {
            out.extend_from_slice(&d.lba.to_le_bytes());
            out.extend_from_slice(&parent.to_le_bytes());
        }
        out.extend_from_slice(&d.id);
        if d.id.len() % 2 == 1 {
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: &IsoWriter) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.iso");
        w.write_to(&p).unwrap();
        (dir, p)
    }

    fn sample() -> IsoWriter {
        let mut w = IsoWriter::new("cidata").unwrap();
        w.fixed_time(1_700_000_000);
        w.add_file("meta-data", "instance-id: a\n").unwrap();
        w.add_file("user-data", "#cloud-config\n").unwrap();
        w.add_file("sub/dir/Some.Long-File.name.txt", vec![7u8; 5000]).unwrap();
        w
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(&date17(1_700_000_000)[..14], b"20231114221320");
    }

    #[test]
    fn strip_version_handles_iso_forms() {
        assert_eq!(strip_version("VMLINUZ.;1"), "VMLINUZ");
        assert_eq!(strip_version("INITRD.GZ;1"), "INITRD.GZ");
        assert_eq!(strip_version("DIR"), "DIR");
        assert_eq!(strip_version("A;B"), "A;B");
    }

    #[test]
    fn iso_names_are_mangled_and_unique() {
        let mut w = IsoWriter::new("v").unwrap();
        w.add_file("a-b", "1").unwrap().add_file("a_b", "2").unwrap().add_file("A-B", "3").unwrap();
        let t = w.tree(false, &[("a-b", 0), ("a_b", 1), ("A-B", 2)].into_iter().collect());
        let mut ids: Vec<String> = t[0].entries.iter().map(|e| String::from_utf8(e.id.clone()).unwrap()).collect();
        ids.sort();
        assert_eq!(ids, ["A_B.;1", "A_B~1.;1", "A_B~2.;1"]);
    }

    #[test]
    fn writer_output_reads_back_with_rock_ridge_names() {
        let (_d, p) = image(&sample());
        let iso = Iso::open(&p).unwrap();
        assert_eq!(iso.volume_id(), "cidata");
        assert_eq!(iso.naming(), Naming::RockRidge);
        let names: Vec<String> = iso.read_dir("/").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["meta-data", "sub", "user-data"]);
        let e = iso.find("sub/dir/Some.Long-File.name.txt").unwrap().unwrap();
        assert_eq!(iso.read_file(&e).unwrap(), vec![7u8; 5000]);
        let md = iso.find("META-DATA").unwrap().unwrap();
        assert_eq!(iso.read_file(&md).unwrap(), b"instance-id: a\n");
        assert!(iso.find("nope").unwrap().is_none());
        assert!(iso.find("meta-data/x").unwrap().is_none());
    }

    #[test]
    fn writer_output_reads_back_with_joliet_and_plain_names() {
        let mut w = sample();
        w.rock_ridge(false);
        let (_d, p) = image(&w);
        let iso = Iso::open(&p).unwrap();
        assert_eq!(iso.naming(), Naming::Joliet);
        assert!(iso.find("sub/dir/Some.Long-File.name.txt").unwrap().is_some());
        w.joliet(false);
        let (_d2, p2) = image(&w);
        let iso = Iso::open(&p2).unwrap();
        assert_eq!(iso.naming(), Naming::Plain);
        let names: Vec<String> = iso.read_dir("").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["META_DATA", "SUB", "USER_DATA"]);
        assert!(iso.find("sub/dir/SOME_LONG_FILE_NAME.TXT").unwrap().is_some());
    }

    /// Walk the L and M path tables of the descriptor at `sector`: each names a directory whose
    /// "." record points at itself, parents come first, and both tables agree.
    fn check_path_tables(img: &[u8], sector: usize) -> usize {
        let d = &img[sector * 2048..(sector + 1) * 2048];
        let size = le32(d, 132) as usize;
        let l = le32(d, 140) as usize * 2048;
        let m = u32::from_be_bytes([d[148], d[149], d[150], d[151]]) as usize * 2048;
        let (mut p, mut n) = (0, 0);
        while p < size {
            let id_len = img[l + p] as usize;
            let extent = le32(img, l + p + 2);
            let parent = le16(img, l + p + 6) as usize;
            assert_eq!(&img[m + p + 2..m + p + 6], &extent.to_be_bytes());
            assert_eq!(&img[m + p + 6..m + p + 8], &(parent as u16).to_be_bytes());
            n += 1;
            assert!(parent >= 1 && parent <= n, "parent {parent} of entry {n}");
            let dot = extent as usize * 2048;
            assert_eq!((img[dot + 32], img[dot + 33], le32(img, dot + 2)), (1, 0, extent), "'.' of entry {n}");
            p += 8 + id_len + id_len % 2;
        }
        assert_eq!(p, size);
        n
    }

    #[test]
    fn path_tables_list_every_directory_in_both_byte_orders() {
        let img = sample().build().unwrap();
        assert_eq!(check_path_tables(&img, 16), 3, "root, sub, sub/dir");
        assert_eq!(check_path_tables(&img, 17), 3, "the Joliet tree too");
    }

    #[test]
    fn writer_is_deterministic_with_fixed_time() {
        assert_eq!(sample().build().unwrap(), sample().build().unwrap());
    }

    #[test]
    fn writer_refuses_bad_names() {
        let mut w = IsoWriter::new("v").unwrap();
        assert!(w.add_file("a:b", "").is_err());
        assert!(w.add_file("", "").is_err());
        assert!(w.add_file(&"x".repeat(65), "").is_err());
        w.add_file("f", "").unwrap();
        assert!(w.add_file("f", "").is_err());
        assert!(w.add_file("f/g", "").is_err());
        assert!(IsoWriter::new(&"v".repeat(33)).is_err());
    }

    #[test]
    fn every_truncation_of_an_image_errors_without_panicking() {
        let img = sample().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.iso");
        for cut in (0..img.len()).step_by(512) {
            std::fs::write(&p, &img[..cut]).unwrap();
            assert!(Iso::open(&p).is_err(), "cut at {cut} opened");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let img = sample().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.iso");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..400 {
            let mut bad = img.clone();
            for _ in 0..1 + round % 8 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Hit the descriptors and directories (sectors 16..40) far more than file data.
                let off = 16 * 2048 + (seed as usize % (24 * 2048)).min(bad.len() - 16 * 2048 - 1);
                bad[off] = (seed >> 32) as u8;
            }
            std::fs::write(&p, &bad).unwrap();
            if let Ok(iso) = Iso::open(&p) {
                for path in ["", "sub", "sub/dir", "meta-data", "sub/dir/Some.Long-File.name.txt"] {
                    if let Ok(Some(e)) = iso.find(path) {
                        let _ = if e.is_dir { iso.read_dir(path).map(|_| ()) } else { iso.read_file(&e).map(|_| ()) };
                    }
                }
            }
        }
    }
}
