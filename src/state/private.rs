//! Private runtime state: a VM's runtime dir is 0700 and everything in it (state, logs,
//! sockets) 0600, whatever the umask of the process that creates it. The mode is given at
//! creation (the umask can only take bits away) and then set exactly with fchmod/chmod, which
//! also repairs a file or dir left with another mode by an older version or a killed command.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Mode of a private runtime dir.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a private runtime file or socket.
pub const FILE_MODE: u32 = 0o600;

/// Create `dir` (and its parents, 0755) or repair its mode: 0700, owned by us, not a symlink.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        DirBuilder::new().recursive(true).mode(0o755).create(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a directory"));
    }
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Open `path` for appending (created 0600, or emptied first with `truncate`), never through a
/// symlink; an existing file's mode is set back to 0600.
pub fn open_private(path: &Path, truncate: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    if truncate {
        o.write(true).truncate(true);
    } else {
        o.append(true);
    }
    let f = o.open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Bind a listening unix socket at `path` (a stale one is replaced) and make it 0600. The
/// socket file is created with the umask's mode; it lives in a 0700 dir, so nobody else can
/// reach it before the chmod.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    fs::set_permissions(path, Permissions::from_mode(FILE_MODE))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_dir_repairs_an_open_mode() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        fs::set_permissions(&d, Permissions::from_mode(0o777)).unwrap();
        private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn private_files_and_sockets_are_0600_even_if_created_open() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("log");
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, Permissions::from_mode(0o666)).unwrap();
        open_private(&f, false).unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"x", "append keeps the content");
        open_private(&f, true).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"", "truncate empties it");
        let s = t.path().join("s.sock");
        let _l = bind_private(&s).unwrap();
        assert_eq!(mode(&s), 0o600);
    }

    #[test]
    fn open_private_refuses_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        fs::write(&target, b"").unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_private(&link, false).is_err());
    }
}
