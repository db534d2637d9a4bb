//! `--initrd-inject FILE`: files added to the root of the `--location` initrd, as virt-install
//! does for preseed and kickstart files. The kernel unpacks concatenated initramfs archives in
//! order (compressed or not), so the original initrd is copied as it is, padded with zeros to a
//! 4-byte boundary, and followed by one uncompressed `newc` cpio archive of the files.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::MediaError;

/// An injected file may hold at most this many bytes (the whole initrd sits in guest RAM).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// One file for the archive: its name at the initramfs root and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

fn bad(path: &Path, reason: impl Into<String>) -> MediaError {
    MediaError::Inject { path: path.into(), reason: reason.into() }
}

/// Read the files to inject: regular files, at most `MAX_FILE_BYTES` each, with distinct
/// names (their file names: they land at the initramfs root).
pub fn read_members(files: &[PathBuf]) -> Result<Vec<Member>, MediaError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out: Vec<Member> = Vec::new();
    for p in files {
        let name = p.file_name().and_then(|n| n.to_str()).ok_or_else(|| bad(p, "names no file (or not UTF-8)"))?;
        if name == "TRAILER!!!" {
            return Err(bad(p, "that name ends a cpio archive"));
        }
        if out.iter().any(|m| m.name == name) {
            return Err(bad(p, format!("another injected file is also named '{name}'")));
        }
        let meta = std::fs::metadata(p).map_err(|e| bad(p, e.to_string()))?;
        if !meta.is_file() {
            return Err(bad(p, "is not a regular file"));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(bad(p, format!("is {} bytes, more than the limit of 64 MiB", meta.len())));
        }
        let mut data = Vec::new();
        std::fs::File::open(p)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut data))
            .map_err(|e| bad(p, e.to_string()))?;
        out.push(Member { name: name.into(), mode: meta.permissions().mode() & 0o777, data });
    }
    Ok(out)
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn header(buf: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, size: u32, name: &str) {
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize (with its NUL), check
    let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    buf.extend_from_slice(b"070701");
    for f in fields {
        buf.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    pad4(buf);
}

/// A `newc` cpio archive of `members` (regular files, owned by root, dated 0), with its trailer.
pub fn newc(members: &[Member]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (i, m) in members.iter().enumerate() {
        header(&mut buf, i as u32 + 1, 0o100000 | m.mode, 1, m.data.len() as u32, &m.name);
        buf.extend_from_slice(&m.data);
        pad4(&mut buf);
    }
    header(&mut buf, 0, 0, 1, 0, "TRAILER!!!");
    buf
}

/// Write `initrd` followed by the archive of `members` to `dest` (0600).
pub fn write_injected(initrd: &Path, members: &[Member], dest: &Path) -> Result<(), MediaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |p: &Path, e: std::io::Error| MediaError::io(p, e);
    let mut src = std::fs::File::open(initrd).map_err(|e| io(initrd, e))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| io(dest, e))?;
    let r = (|| {
        let n = std::io::copy(&mut src, &mut out)?;
        out.write_all(&vec![0u8; ((4 - n % 4) % 4) as usize])?;
        out.write_all(&newc(members))?;
        out.sync_all()
    })();
    if let Err(e) = r {
        drop(out);
        let _ = std::fs::remove_file(dest);
        return Err(io(dest, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_archive_has_aligned_headers_names_data_and_a_trailer() {
        let m = Member { name: "preseed.cfg".into(), mode: 0o644, data: b"d-i x\n".to_vec() };
        let a = newc(&[m]);
        assert_eq!(&a[..6], b"070701");
        // mode field: the 3rd (after magic and ino), regular file 0644.
        assert_eq!(&a[14..22], b"000081A4");
        // name size 12 (with NUL), file size 6.
        assert_eq!(&a[6 + 11 * 8..6 + 12 * 8], b"0000000C");
        assert_eq!(&a[6 + 6 * 8..6 + 7 * 8], b"00000006");
        assert_eq!(&a[110..121], b"preseed.cfg");
        // 110 + 12 = 122 -> padded to 124; data 6 -> padded to 8.
        assert_eq!(&a[124..130], b"d-i x\n");
        assert_eq!(&a[132..138], b"070701");
        assert_eq!(&a[132 + 110..132 + 120], b"TRAILER!!!");
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn members_are_regular_distinct_files() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("ks.cfg"), d.path().join("sub"));
        std::fs::write(&a, "x").unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::create_dir(b.join("x")).unwrap();
        std::fs::write(b.join("ks.cfg"), "y").unwrap();
        assert_eq!(read_members(std::slice::from_ref(&a)).unwrap()[0].name, "ks.cfg");
        let e = read_members(&[a.clone(), b.join("ks.cfg")]).unwrap_err().to_string();
        assert!(e.contains("another injected file is also named 'ks.cfg'"), "{e}");
        let e = read_members(&[b.join("x")]).unwrap_err().to_string();
        assert!(e.ends_with("is not a regular file"), "{e}");
        let e = read_members(&[d.path().join("none")]).unwrap_err().to_string();
        assert!(e.contains("--initrd-inject") && e.contains("none"), "{e}");
    }

    #[test]
    fn injected_initrd_is_the_original_padded_then_the_archive() {
        let d = tempfile::tempdir().unwrap();
        let (orig, dest) = (d.path().join("initrd"), d.path().join("out"));
        std::fs::write(&orig, b"\x1f\x8b12345").unwrap();
        let m = Member { name: "f".into(), mode: 0o600, data: b"hi".to_vec() };
        write_injected(&orig, std::slice::from_ref(&m), &dest).unwrap();
        let out = std::fs::read(&dest).unwrap();
        assert_eq!(&out[..7], b"\x1f\x8b12345");
        assert_eq!(&out[7..8], b"\0");
        assert_eq!(&out[8..], &newc(&[m])[..]);
    }
}
