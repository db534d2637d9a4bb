//! Atomic file replacement: unique temp in the same dir, fsync, rename, fsync the dir.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Write `data` to `path` atomically: readers see the old or the new content, never a mix.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = TempFile::new_beside(path, 0o644)?;
    tmp.file().write_all(data)?;
    tmp.commit(path)
}

/// Replace a file in the runtime dir (`/run`: gone at reboot anyway): still atomic for readers
/// (temp file + rename), but without the fsyncs that only buy durability across a crash.
/// The file is private (0600, whatever the umask); a file another program must read is made
/// readable by its caller.
pub fn runtime_write(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = TempFile::new_beside(path, super::private::FILE_MODE)?;
    tmp.file().set_permissions(fs::Permissions::from_mode(super::private::FILE_MODE))?;
    tmp.file().write_all(data)?;
    tmp.rename_into(path)
}

/// The directory a file is in: `.` for a bare name like `out.img` (whose parent is "").
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A temp file next to its final destination, removed on drop unless committed.
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Create `.<name>.tmp-<pid>.<start time>-<n>` in `dest`'s directory with `O_EXCL`
    /// (removed on SIGINT/SIGTERM/SIGHUP, and by `interrupt::sweep_stale` once its writer died).
    pub fn new_beside(dest: &Path, mode: u32) -> io::Result<TempFile> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = dir_of(dest);
        let base = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{base}.tmp-{}-{n}", super::interrupt::writer_tag()));
            match OpenOptions::new().write(true).read(true).create_new(true).mode(mode).open(&path) {
                Ok(file) => {
                    super::interrupt::register(&path);
                    return Ok(TempFile { path, file: Some(file) });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("temp file used after commit")
    }

    /// fsync, rename over `dest`, fsync the directory.
    pub fn commit(mut self, dest: &Path) -> io::Result<()> {
        let file = self.file.take().expect("temp file committed twice");
        file.sync_all()?;
        drop(file);
        fs::rename(&self.path, dest)?;
        super::interrupt::unregister(&self.path);
        self.path = PathBuf::new();
        fsync_dir(dir_of(dest))
    }

    /// rename over `dest` without fsync (runtime files).
    pub fn rename_into(mut self, dest: &Path) -> io::Result<()> {
        drop(self.file.take());
        fs::rename(&self.path, dest)?;
        super::interrupt::unregister(&self.path);
        self.path = PathBuf::new();
        Ok(())
    }

    /// Move into place only if `dest` does not exist yet (link + unlink), for race-free creates;
    /// fsync before and the directory after.
    pub fn commit_new(mut self, dest: &Path) -> io::Result<()> {
        self.file().sync_all()?;
        self.link_new(dest)?;
        fsync_dir(dir_of(dest))
    }

    /// `commit_new` without waiting for the disk: the file appears complete or not at all,
    /// but its data reaches stable storage with the kernel's writeback. For bulk image data,
    /// as `qemu-img convert` writes it; callers that must outlive a crash use `commit_new`.
    pub fn link_new(mut self, dest: &Path) -> io::Result<()> {
        drop(self.file.take().expect("temp file committed twice"));
        fs::hard_link(&self.path, dest)?;
        let _ = fs::remove_file(&self.path);
        super::interrupt::unregister(&self.path);
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
            super::interrupt::unregister(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_temp_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::new_beside(&dir.path().join("x"), 0o600).unwrap();
        assert!(t.path().exists());
        drop(t);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_new_refuses_existing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        fs::write(&p, b"old").unwrap();
        let mut t = TempFile::new_beside(&p, 0o600).unwrap();
        t.file().write_all(b"new").unwrap();
        assert_eq!(t.commit_new(&p).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
