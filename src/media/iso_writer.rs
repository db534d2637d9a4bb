//! The ISO 9660 writer: ISO level 2 names plus Rock Ridge and Joliet, as `genisoimage -J -r`
//! makes them. The reader is in `iso9660`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use super::iso9660::{tmp_beside, SECTOR};
use super::MediaError;

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
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::media::iso9660::{le16, le32, Iso, Naming};

    fn image(w: &IsoWriter) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.iso");
        w.write_to(&p).unwrap();
        (dir, p)
    }

    pub(crate) fn sample() -> IsoWriter {
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
}
