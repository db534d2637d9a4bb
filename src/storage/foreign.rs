//! Images from other hypervisors: VMware's vmdk, VirtualBox's vdi, Hyper-V's vhdx and vhd
//! (qemu's `vpc`), and qemu's old qcow. kvmctl runs qcow2 and raw only; these are converted
//! with `qemu-img convert`, the real component for them (qcow2-rs and kvmctl's own reader know
//! qcow2 alone, and each of these formats is a parser of its own).
//!
//! qemu-img is handed the whole source as a `json:` blockdev tree: the format named, the file
//! named by its canonical path, and `"backing": null`, so it never probes a format or follows a
//! file name written in an image. What qemu would open besides the file itself (a vmdk's
//! extents, a parent named by a differencing image) is checked first: extents must be plain
//! files beside the descriptor, and differencing images are refused by name.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::error::{io_at, StorageError};
use super::image::Format;

/// A format qemu knows besides qcow2 and raw: what to call it, and the qemu driver that
/// converts it when kvmctl imports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Foreign {
    pub what: &'static str,
    /// `Some(driver)`: `vol-import` converts it; `None`: named and refused.
    pub driver: Option<&'static str>,
}

/// The formats `vol-download --format` exports to, besides qcow2 and raw.
pub const EXPORT_DRIVERS: [&str; 4] = ["vmdk", "vdi", "vhdx", "vpc"];

fn refuse(path: &Path, why: String) -> StorageError {
    StorageError::Invalid(format!("{}: {why}", path.display()))
}

/// Refuse what qemu would open besides `path` itself when reading it as `driver`: a vmdk's
/// extents that are not plain files beside it, and images that read through a parent
/// (differencing vmdk and vhd, qcow with a backing file) or need a key (encrypted qcow).
pub fn check_standalone(path: &Path, driver: &str) -> Result<(), StorageError> {
    let f = File::open(path).map_err(io_at(path))?;
    let mut head = [0u8; 512];
    let n = read_at_most(&f, &mut head, 0).map_err(io_at(path))?;
    let head = &head[..n];
    let be32 = |o: usize| head.get(o..o + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap())).unwrap_or(0);
    let le64 = |o: usize| head.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).unwrap_or(0);
    match driver {
        "qcow" => {
            let backing_len = be32(16);
            if head.get(8..16).is_some_and(|b| b.iter().any(|&x| x != 0)) && backing_len != 0 {
                return Err(refuse(
                    path,
                    "is a qcow (version 1) overlay on a backing file; kvmctl imports whole images \
                     (flatten it where its backing file lives: qemu-img convert -O qcow2 FILE OUT.qcow2)"
                        .into(),
                ));
            }
            if be32(36) != 0 {
                return Err(refuse(path, "is an encrypted qcow (version 1) image; kvmctl holds no keys".into()));
            }
        }
        "vpc" if be32(60) == 4 => {
            return Err(refuse(
                path,
                "is a differencing VHD (it reads through a parent image); kvmctl imports whole \
                 images (merge it into its parent first)"
                    .into(),
            ));
        }
        "vmdk" => {
            let (text, sparse_self) = if head.starts_with(b"KDMV") {
                let (capacity, desc_off, desc_len) = (le64(12), le64(28), le64(36));
                if desc_off == 0 || desc_len == 0 {
                    return Ok(());
                }
                let len = (desc_len.min(2048) * 512) as usize;
                let mut buf = vec![0u8; len];
                let n = read_at_most(&f, &mut buf, desc_off.saturating_mul(512)).map_err(io_at(path))?;
                buf.truncate(n);
                // A sparse file with a capacity is its own only extent (qemu ignores the
                // descriptor's extent lines); one with capacity 0 is a descriptor like any other.
                (buf, capacity != 0)
            } else if head.starts_with(b"# Disk DescriptorFile") {
                let mut buf = Vec::new();
                f.take(1 << 20).read_to_end(&mut buf).map_err(io_at(path))?;
                (buf, false)
            } else {
                return Ok(()); // COWD (ESX) sparse: one file, no descriptor.
            };
            let text = String::from_utf8_lossy(&text).into_owned();
            check_vmdk_descriptor(path, &text, sparse_self)?;
        }
        _ => {}
    }
    Ok(())
}

fn read_at_most(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A vmdk descriptor: no parent, and (unless the file is its own extent) every extent a plain
/// file in the descriptor's directory, named without a path.
fn check_vmdk_descriptor(path: &Path, text: &str, sparse_self: bool) -> Result<(), StorageError> {
    let value_of = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
    };
    let hint = value_of("parentFileNameHint").filter(|h| !h.is_empty());
    let parent_cid = value_of("parentCID").is_some_and(|c| !c.eq_ignore_ascii_case("ffffffff"));
    if hint.is_some() || parent_cid {
        let hint = hint.map(|h| format!(" '{h}'")).unwrap_or_default();
        return Err(refuse(
            path,
            format!(
                "is a differencing vmdk (a snapshot reading through its parent{hint}); kvmctl \
                 imports whole images (consolidate the snapshots in VMware first, or flatten it \
                 where its parent lives: qemu-img convert -O qcow2 FILE OUT.qcow2)"
            ),
        ));
    }
    if sparse_self {
        return Ok(());
    }
    for line in text.lines().map(str::trim) {
        if !matches!(line.split_whitespace().next(), Some("RW" | "RDONLY" | "NOACCESS")) {
            continue;
        }
        let Some(open) = line.find('"') else { continue }; // a ZERO extent names no file
        let name = line[open + 1..].split('"').next().unwrap_or("");
        check_extent(path, name)?;
    }
    Ok(())
}

fn check_extent(descriptor: &Path, name: &str) -> Result<(), StorageError> {
    let bad = |why: &str| refuse(descriptor, format!("vmdk extent \"{name}\" {why}"));
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(bad(
            "is not a file name beside the descriptor (kvmctl reads extents only from the descriptor's own directory)",
        ));
    }
    let at = descriptor.parent().unwrap_or(Path::new(".")).join(name);
    match std::fs::symlink_metadata(&at) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => {
            Err(bad("is a symbolic link (kvmctl reads only plain files as extents)"))
        }
        Ok(_) => Err(bad("is not a regular file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(bad(&format!("is missing (looked for {})", at.display()))),
        Err(e) => Err(bad(&e.to_string())),
    }
}

/// The blockdev tree qemu-img opens: each layer (top first) with its format named, its file
/// by path, and no backing file beyond the last.
fn blockdev(layers: &[(PathBuf, &str)]) -> Value {
    let mut tree = Value::Null;
    for (path, driver) in layers.iter().rev() {
        let file = json!({ "driver": "file", "filename": path.to_string_lossy() });
        tree = json!({ "driver": driver, "file": file, "backing": tree });
    }
    tree
}

/// qemu-img's `-O` name for a kvmctl format.
pub fn driver_of(format: Format) -> &'static str {
    match format {
        Format::Qcow2 => "qcow2",
        Format::Raw => "raw",
    }
}

/// Convert `layers` (a disk as its guest sees it, top first, each with its qemu driver) into
/// a new image at `out` (an existing empty file, replaced) as `out_driver` (compressed with
/// `compress`, qcow2 only), reporting
/// `-p`'s progress as `progress(done, total)` over `total` bytes. qemu-img dies with kvmctl.
pub fn convert(
    layers: &[(PathBuf, &str)],
    out: &Path,
    out_driver: &str,
    compress: bool,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), StorageError> {
    let src = format!("json:{}", blockdev(layers));
    let mut args: Vec<String> = vec!["convert".into(), "-p".into(), "-O".into(), out_driver.into()];
    if compress {
        args.push("-c".into());
    }
    args.extend([src, out.to_string_lossy().into_owned()]);
    tracing::debug!(?args, "qemu-img");
    let mut cmd = Command::new("qemu-img");
    cmd.args(&args).env("LC_ALL", "C").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe: a killed kvmctl leaves no qemu-img
    // writing into a temp file the next command sweeps.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let spawn_err = |source| crate::process::ProcessError::Spawn { program: "qemu-img".into(), source };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // `-p` prints "    (12.34/100%)\r" as it goes.
    let mut stdout = child.stdout.take().expect("piped");
    let mut line = Vec::new();
    let mut byte = [0u8; 64];
    loop {
        let n = match stdout.read(&mut byte) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &byte[..n] {
            if b != b'\r' && b != b'\n' {
                line.push(b);
                continue;
            }
            if let Some(pct) = percent(&String::from_utf8_lossy(&line)) {
                progress(((total as f64) * pct / 100.0) as u64, total);
            }
            line.clear();
        }
    }
    let status = child.wait().map_err(spawn_err)?;
    let stderr = errs.join().unwrap_or_default();
    if !status.success() {
        return Err(crate::process::ProcessError::Failed {
            argv: format!("qemu-img {}", args.join(" ")),
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        }
        .into());
    }
    progress(total, total);
    Ok(())
}

fn percent(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    inner.parse().ok()
}

/// `qemu-img check` of a qcow2 kvmctl just wrote through qemu-img: errors or leaks refuse it.
pub fn check_qcow2(path: &Path) -> Result<(), StorageError> {
    let p = path.to_string_lossy().into_owned();
    match crate::process::run("qemu-img", ["check", "-f", "qcow2", "--output=json", p.as_str()], None) {
        Ok(_) => Ok(()),
        Err(e) => Err(refuse(path, format!("the converted image fails qemu-img check: {e}"))),
    }
}

/// Refuse an image whose block map points past the end of its file (cut short by a failed
/// download or copy): qemu reads the missing part as zeros and converts it without a word.
/// Only for images that are one file (a vmdk descriptor's offsets are in its extents).
pub fn check_within_file(path: &Path, driver: &str) -> Result<(), StorageError> {
    let f = File::open(path).map_err(io_at(path))?;
    let len = f.metadata().map_err(io_at(path))?.len();
    let mut head = [0u8; 20];
    let n = read_at_most(&f, &mut head, 0).map_err(io_at(path))?;
    let capacity = u64::from_le_bytes(head[12..20].try_into().unwrap());
    if driver == "vmdk" && !(n == 20 && (head.starts_with(b"COWD") || (head.starts_with(b"KDMV") && capacity != 0))) {
        return Ok(());
    }
    let src = format!("json:{}", blockdev(&[(path.to_path_buf(), driver)]));
    let out = crate::process::run("qemu-img", ["map", "--output=json", src.as_str()], None)
        .map_err(|e| refuse(path, format!("cannot be read: {e}")))?;
    let map: Vec<Value> =
        serde_json::from_str(&out.stdout).map_err(|e| refuse(path, format!("qemu-img map printed no JSON ({e})")))?;
    for m in &map {
        let (Some(off), Some(n)) = (m["offset"].as_u64(), m["length"].as_u64()) else { continue };
        if m["data"] == true && m["zero"] == false && off.saturating_add(n) > len {
            return Err(refuse(
                path,
                format!(
                    "is cut short: its block map places data at bytes {off}..{} of a {len}-byte file \
                     (download or copy it again)",
                    off.saturating_add(n)
                ),
            ));
        }
    }
    Ok(())
}

/// The virtual size qemu-img reports for `path` read as `driver` (nothing probed, no backing).
pub fn virtual_size(path: &Path, driver: &str) -> Result<u64, StorageError> {
    let src = format!("json:{}", blockdev(&[(path.to_path_buf(), driver)]));
    let out = crate::process::run("qemu-img", ["info", "--output=json", src.as_str()], None)?;
    let v: Value =
        serde_json::from_str(&out.stdout).map_err(|e| refuse(path, format!("qemu-img info printed no JSON ({e})")))?;
    v["virtual-size"].as_u64().ok_or_else(|| refuse(path, "qemu-img info reports no virtual size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse_and_others_do_not() {
        assert_eq!(percent("    (12.50/100%)"), Some(12.5));
        assert_eq!(percent("(100.00/100%)"), Some(100.0));
        assert_eq!(percent("qemu-img: warning"), None);
        assert_eq!(percent(""), None);
    }

    #[test]
    fn the_blockdev_tree_names_every_format_and_ends_without_backing() {
        let t = blockdev(&[(PathBuf::from("/p/top \"x\".qcow2"), "qcow2"), (PathBuf::from("/p/base"), "raw")]);
        assert_eq!(t["driver"], "qcow2");
        assert_eq!(t["file"]["filename"], "/p/top \"x\".qcow2");
        assert_eq!(t["backing"]["driver"], "raw");
        assert_eq!(t["backing"]["backing"], Value::Null);
        // Quotes in a path stay inside the JSON string.
        assert!(t.to_string().contains(r#"top \"x\".qcow2"#));
    }

    #[test]
    fn vmdk_descriptors_with_parents_or_far_extents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d.vmdk");
        std::fs::write(dir.path().join("d-flat.vmdk"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.vmdk")).unwrap();
        let ok = "# Disk DescriptorFile\nparentCID=ffffffff\nRW 16 FLAT \"d-flat.vmdk\" 0\nRW 16 ZERO\n";
        check_vmdk_descriptor(&d, ok, false).unwrap();
        for (text, why) in [
            ("RW 16 FLAT \"/etc/shadow\" 0", "not a file name beside"),
            ("RW 16 FLAT \"../d-flat.vmdk\" 0", "not a file name beside"),
            ("RW 16 FLAT \"link.vmdk\" 0", "symbolic link"),
            ("RW 16 FLAT \"gone.vmdk\" 0", "is missing"),
            ("parentFileNameHint=\"/etc/shadow\"", "differencing vmdk"),
            ("parentCID=1234abcd", "differencing vmdk"),
        ] {
            let e = check_vmdk_descriptor(&d, text, false).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        // A sparse vmdk is its own extent: its descriptor's extent lines are not opened.
        check_vmdk_descriptor(&d, "RW 16 SPARSE \"renamed.vmdk\"", true).unwrap();
        assert!(check_vmdk_descriptor(&d, "parentFileNameHint=\"p.vmdk\"", true).is_err());
    }
}
