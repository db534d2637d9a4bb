//! ISO 9660 images: a bounded reader (Rock Ridge, Joliet or plain names). The writer
//! ([`IsoWriter`]) is in `iso_writer` and re-exported here.
//!
//! The reader never trusts a number it reads: every offset is checked against the file's length,
//! directory sizes and continuation chains are capped, and a damaged image gives an error.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::MediaError;

pub use super::iso_writer::IsoWriter;

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

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::iso_writer::tests::sample;

    #[test]
    fn strip_version_handles_iso_forms() {
        assert_eq!(strip_version("VMLINUZ.;1"), "VMLINUZ");
        assert_eq!(strip_version("INITRD.GZ;1"), "INITRD.GZ");
        assert_eq!(strip_version("DIR"), "DIR");
        assert_eq!(strip_version("A;B"), "A;B");
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
