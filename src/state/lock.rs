//! Per-object locks: OFD locks (`F_OFD_SETLKW`) on a lock file, released when the fd closes.
//! OFD locks belong to the open file description, so two threads or processes never share one.

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
        let file = open_lock_file(path)?;
        ofd_lock(&file, libc::F_WRLCK, true)?;
        Ok(ObjectLock { _file: file })
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
}
