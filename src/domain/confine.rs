//! qemu runs confined: as the unprivileged user `kvmctl-qemu` (when kvmctl runs as root),
//! with no capabilities, `PR_SET_NO_NEW_PRIVS`, and qemu's own seccomp sandbox (`-sandbox`,
//! rendered by `argv`). Like libvirt's `qemu` user and Firecracker's jailer, the process a
//! guest could take over holds nothing it was not handed.
//!
//! qemu opens no host file by name: `start` (root) opens every file the VM needs and hands the
//! fds over. Images (disks, their backing chains, OVMF code and NVRAM) go into qemu fd sets
//! (`-add-fd`, `file=/dev/fdset/N`; qemu dups the fd with the access mode it needs, so a
//! writable image is in its set twice, read-write and read-only); a backing chain is spelled
//! out in the `-drive` options with each file's recorded format, so qemu never follows a
//! header by name. The kernel and initrd are read by qemu as `/proc/self/fd/N`; one that the
//! qemu user may not read is copied into a sealed memfd first. `/dev/vhost-net` arrives as
//! `vhostfd=N`. The taps and qemu's sockets were fds already.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::argv::{FdSource, Handed};
use super::definition::DomainDef;
use crate::storage::image::{self, BackingPolicy, ChainError, Format};

/// The user qemu runs as when kvmctl runs as root.
pub const QEMU_USER: &str = "kvmctl-qemu";

#[derive(Debug, Error)]
pub enum ConfineError {
    #[error("cannot open {what} {path}")]
    Open { what: &'static str, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Backing(#[from] ChainError),
    #[error("cannot look up the user {QEMU_USER}: {0}")]
    Lookup(String),
    #[error("cannot create the user {QEMU_USER} that qemu runs as: {0}")]
    CreateUser(String),
    #[error("cannot copy {path} for qemu")]
    Copy { path: PathBuf, source: io::Error },
}

/// Who qemu runs as: uid, gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Creds {
    /// `UID:GID:G1,G2` (for the supervisor's command line).
    pub fn to_arg(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        format!("{}:{}:{}", self.uid, self.gid, groups.join(","))
    }

    pub fn from_arg(s: &str) -> Option<Creds> {
        let mut it = s.splitn(3, ':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let groups = it.next()?.split(',').filter(|g| !g.is_empty()).map(|g| g.parse().ok()).collect::<Option<_>>()?;
        Some(Creds { uid, gid, groups })
    }
}

/// The credentials qemu gets: `None` when kvmctl does not run as root (qemu then runs as the
/// caller, still with no new privileges and sandboxed). As root, the `kvmctl-qemu` system user
/// is created on first use (`useradd --system`: the distribution's own tool for
/// /etc/passwd, /etc/shadow and /etc/group, with their locking), plus the group of
/// `/dev/kvm` so that KVM works where the host has it.
pub fn qemu_creds() -> Result<Option<Creds>, ConfineError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = match lookup()? {
        Some(u) => u,
        None => {
            create_user()?;
            lookup()?.ok_or_else(|| ConfineError::CreateUser("useradd succeeded, but the user is not there".into()))?
        }
    };
    let mut groups = Vec::new();
    if let Ok(m) = std::fs::metadata("/dev/kvm") {
        if m.mode() & 0o060 == 0o060 && m.gid() != 0 {
            groups.push(m.gid());
        }
    }
    Ok(Some(Creds { uid: user.uid.as_raw(), gid: user.gid.as_raw(), groups }))
}

fn lookup() -> Result<Option<nix::unistd::User>, ConfineError> {
    nix::unistd::User::from_name(QEMU_USER).map_err(|e| ConfineError::Lookup(e.to_string()))
}

fn create_user() -> Result<(), ConfineError> {
    let argv = [
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "kvmctl qemu processes",
        QEMU_USER,
    ];
    crate::process::run("useradd", argv, None).map(drop).map_err(|e| ConfineError::CreateUser(e.to_string()))
}

/// In qemu's forked child, before exec (`CommandExt::pre_exec`): become `creds` (all three
/// uids and gids, so no capability survives), then set `PR_SET_NO_NEW_PRIVS`. No parent-death
/// signal: qemu outlives its supervisor, and the next one adopts it. Async-signal-safe:
/// system calls only.
pub fn enter(creds: Option<&Creds>) -> io::Result<()> {
    let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    // SAFETY: plain system calls on this (forked) process's own credentials and flags.
    unsafe {
        if let Some(c) = creds {
            let groups: &[libc::gid_t] = &c.groups;
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setresgid(c.gid, c.gid, c.gid))?;
            check(libc::setresuid(c.uid, c.uid, c.uid))?;
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// The files of one or more boots of a VM, opened for qemu, and what to render for each.
pub struct Opened {
    /// Every fd qemu inherits (at their own numbers).
    pub fds: Vec<OwnedFd>,
    /// Per definition passed to [`open`], in order.
    pub handed: Vec<Handed>,
}

impl Opened {
    pub fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds.iter().map(|f| f.as_raw_fd())
    }
}

/// Open what `defs` (the boots of one VM: an install's two phases share their disks) need.
/// An image opened for several boots is opened once: qemu's image locks live on the open
/// file, so the second boot must use the same one. Backing files are followed as
/// `backing` allows, with their recorded formats. `vhost`: hand each tap NIC a
/// `/dev/vhost-net` fd where it opens.
pub fn open(defs: &[&DomainDef], backing: &BackingPolicy, vhost: bool) -> Result<Opened, ConfineError> {
    let mut o = Opener::default();
    let mut handed = Vec::new();
    for def in defs {
        handed.push(Handed::walk(def, &mut Walk { o: &mut o, policy: backing }, vhost)?);
    }
    Ok(Opened { fds: o.fds, handed })
}

/// The opener with the backing policy of this start, as the walk's fd source.
struct Walk<'a> {
    o: &'a mut Opener,
    policy: &'a BackingPolicy,
}

impl FdSource for Walk<'_> {
    type Error = ConfineError;
    fn file(&mut self, path: &Path, writable: bool) -> Result<RawFd, ConfineError> {
        self.o.file(path, writable)
    }
    fn readable(&mut self, path: &Path) -> Result<RawFd, ConfineError> {
        self.o.readable(path)
    }
    fn vhost(&mut self) -> Option<RawFd> {
        self.o.vhost()
    }
    fn backing(&mut self, disk: &Path, format: Format) -> Result<Vec<(PathBuf, Format)>, ConfineError> {
        Ok(image::backing_files(image::Source { path: disk, format, backing: self.policy })?)
    }
}

#[derive(Default)]
struct Opener {
    fds: Vec<OwnedFd>,
    /// (path, writable) -> fd, shared between boots.
    cache: HashMap<(PathBuf, bool), RawFd>,
}

impl Opener {
    fn keep(&mut self, f: impl Into<OwnedFd>) -> RawFd {
        let f: OwnedFd = f.into();
        let raw = f.as_raw_fd();
        self.fds.push(f);
        raw
    }

    fn file(&mut self, path: &Path, writable: bool) -> Result<RawFd, ConfineError> {
        if let Some(fd) = self.cache.get(&(path.to_path_buf(), writable)) {
            return Ok(*fd);
        }
        let what = if writable { "image (read-write)" } else { "image" };
        // O_NOCTTY, no O_CREAT: an image that is missing is an error, never created here.
        let f = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .map_err(|source| ConfineError::Open { what, path: path.into(), source })?;
        let fd = self.keep(f);
        self.cache.insert((path.to_path_buf(), writable), fd);
        Ok(fd)
    }

    /// An fd qemu can reopen as `/proc/self/fd/N` as its own user: the file itself when anyone
    /// may read it, else a sealed memfd copy (reopening through /proc checks the file's mode).
    fn readable(&mut self, path: &Path) -> Result<RawFd, ConfineError> {
        let f = File::open(path).map_err(|source| ConfineError::Open { what: "file", path: path.into(), source })?;
        let m = f.metadata().map_err(|source| ConfineError::Open { what: "file", path: path.into(), source })?;
        if m.mode() & 0o004 != 0 || !nix::unistd::geteuid().is_root() {
            return Ok(self.keep(f));
        }
        let copy = sealed_copy(f).map_err(|source| ConfineError::Copy { path: path.into(), source })?;
        Ok(self.keep(copy))
    }

    fn vhost(&mut self) -> Option<RawFd> {
        let f = OpenOptions::new().read(true).write(true).open("/dev/vhost-net").ok()?;
        Some(self.keep(f))
    }
}

/// Drop the image locks a qemu that has exited left on the handed files. qemu's locks
/// (`F_OFD_SETLK` on bytes 100+) belong to the open file, which the supervisor keeps for the
/// next boot, so they outlive the qemu that took them; the next qemu would take them for
/// another process's. Call only while no qemu runs.
pub fn release_image_locks(fds: &[RawFd]) {
    for &fd in fds {
        let is_file = nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        if !is_file {
            continue;
        }
        // SAFETY: an all-zero flock is valid; F_OFD_SETLK with F_UNLCK only drops locks.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_UNLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: fd is one of ours; l_start = l_len = 0 is the whole file.
        unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) };
    }
}

/// A memfd holding `src`'s bytes, readable by anyone who has it and sealed against change.
fn sealed_copy(mut src: File) -> io::Result<File> {
    let name = CString::new("kvmctl-boot-file").expect("no NUL");
    // SAFETY: memfd_create with a valid C string; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let mut dst = unsafe { File::from_raw_fd(fd) };
    io::copy(&mut src, &mut dst)?;
    // SAFETY: fchmod on our own fd.
    if unsafe { libc::fchmod(fd, 0o444) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own fd.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_round_trip_through_the_supervisor_argument() {
        for c in [Creds { uid: 998, gid: 997, groups: vec![] }, Creds { uid: 1, gid: 2, groups: vec![104, 105] }] {
            assert_eq!(Creds::from_arg(&c.to_arg()), Some(c));
        }
        assert_eq!(Creds::from_arg("1:2"), None);
        assert_eq!(Creds::from_arg("x:2:"), None);
        assert_eq!(Creds::from_arg("1:2:3,y"), None);
    }

    #[test]
    fn a_private_boot_file_is_handed_as_a_sealed_world_readable_copy() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kernel");
        std::fs::write(&p, b"kernel bytes").unwrap();
        let copy = sealed_copy(File::open(&p).unwrap()).unwrap();
        assert_eq!(copy.metadata().unwrap().mode() & 0o777, 0o444);
        assert_eq!(std::fs::read(format!("/proc/self/fd/{}", copy.as_raw_fd())).unwrap(), b"kernel bytes");
        // SAFETY: fcntl on an fd we own.
        let seals = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_WRITE, libc::F_SEAL_WRITE);
        let mut w = OpenOptions::new().write(true).open(format!("/proc/self/fd/{}", copy.as_raw_fd())).unwrap();
        assert!(io::Write::write_all(&mut w, b"changed").is_err(), "the sealed copy took a write");
    }
}
