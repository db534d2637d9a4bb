//! Per-object locks: OFD locks (`F_OFD_SETLKW`) on a lock file, released when the fd closes.
//! OFD locks belong to the open file description, so two threads or processes never share one.
//!
//! A lock file may be removed, but only by its holder ([`ObjectLock::remove_file`]): whoever
//! then gets the lock on the removed file sees that the path no longer names it and locks the
//! path afresh, so two holders never coexist.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A held exclusive lock; dropping it releases the lock.
#[derive(Debug)]
pub struct ObjectLock {
    _file: File,
}

impl ObjectLock {
    /// Block until the exclusive lock on `path` is ours (the file is created if needed).
    pub fn acquire(path: &Path) -> io::Result<ObjectLock> {
        loop {
            let file = open_lock_file(path)?;
            ofd_lock(&file, libc::F_WRLCK, true)?;
            if names_file(path, &file)? {
                return Ok(ObjectLock { _file: file });
            }
        }
    }

    /// A lock taken by the process that started this one and handed down as an open fd:
    /// OFD locks belong to the open file, so it is held here without a gap.
    pub fn from_inherited(file: File) -> ObjectLock {
        ObjectLock { _file: file }
    }

    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self._file.as_raw_fd()
    }

    /// Remove the lock file at `path` (the one this lock holds), then release the lock.
    pub fn remove_file(self, path: &Path) -> io::Result<()> {
        if names_file(path, &self._file)? {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

/// Does `path` still name the open `file` (not removed, not replaced)?
fn names_file(path: &Path, file: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.dev() == held.dev() && m.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Try to take the exclusive lock without waiting: `Ok(None)` if someone else holds it.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<ObjectLock>> {
    let file = open_lock_file(path)?;
    match ofd_lock(&file, libc::F_WRLCK, false) {
        Ok(()) => Ok(Some(ObjectLock { _file: file })),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

fn ofd_lock(file: &File, kind: libc::c_int, wait: bool) -> io::Result<()> {
    // SAFETY: flock is plain data; zeroed is a valid initial value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    let cmd = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    loop {
        // SAFETY: fd is open for the call's duration and fl is a valid flock struct.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Is any byte in `start..start+len` of `file` locked by someone else in a way that
/// conflicts with a lock of `kind`? Used to see qemu's image locks.
pub fn conflicting_lock(file: &File, kind: libc::c_int, start: i64, len: i64) -> io::Result<bool> {
    // SAFETY: as above.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fd is valid; F_OFD_GETLK only fills fl.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let held = ObjectLock::acquire(&p).unwrap();
        assert!(try_lock_exclusive(&p).unwrap().is_none());
        drop(held);
        assert!(try_lock_exclusive(&p).unwrap().is_some());
    }

    /// A waiter blocked on a lock file that its holder removes gets a lock on the path's new
    /// file, never on the removed one: a third locker must wait for it.
    #[test]
    fn a_removed_lock_file_is_never_held_twice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let held = ObjectLock::acquire(&p).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || {
                let l = ObjectLock::acquire(&p).unwrap();
                tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(200));
                drop(l);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        held.remove_file(&p).unwrap();
        rx.recv().unwrap();
        assert!(p.exists(), "the waiter locked a new file at the path");
        assert!(try_lock_exclusive(&p).unwrap().is_none(), "and holds it: nobody else gets it");
        waiter.join().unwrap();
        assert!(try_lock_exclusive(&p).unwrap().is_some());
    }
}
