//! Tap devices for qemu, opened by us and handed over as `-netdev tap,id=n0,fd=N`.
//!
//! [`open_tap`] opens `/dev/net/tun` and creates the tap with `TUNSETIFF`
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`). The tap is not persistent: it disappears when the
//! last fd on it is closed (ours and qemu's), so a crash leaks no link, and qemu needs no
//! CAP_NET_ADMIN. The tap is created in the calling thread's network namespace.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use thiserror::Error;
use tracing::debug;

/// The name pattern used when none is given; the kernel replaces `%d` with a free number.
pub const DEFAULT_NAME: &str = "kvtap%d";

#[derive(Debug, Error)]
pub enum TapError {
    #[error("invalid tap name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("cannot open /dev/net/tun")]
    OpenTun { source: io::Error },
    #[error("cannot create tap {name:?} (TUNSETIFF)")]
    Create { name: String, source: io::Error },
    #[error("cannot clear close-on-exec on the fd of tap {name}")]
    Cloexec { name: String, source: io::Error },
}

/// An open tap: the fd and the name the kernel gave it. Dropping the last fd removes the link.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// The interface name, e.g. `kvtap0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Let a child process inherit the fd (for `-netdev tap,fd=N`).
    ///
    /// Any child forked while the flag is clear inherits the tap and keeps the link alive:
    /// spawn qemu right after, or clear it only in the child with [`clear_cloexec_fd`] in
    /// `CommandExt::pre_exec`.
    pub fn clear_cloexec(&self) -> Result<(), TapError> {
        clear_cloexec_fd(self.fd.as_raw_fd()).map_err(|source| TapError::Cloexec { name: self.name.clone(), source })
    }

    /// qemu's `-netdev` value for this tap: `tap,id=<id>,fd=<N>,vhost=on|off`.
    pub fn netdev_arg(&self, id: &str, vhost: bool) -> String {
        format!("tap,id={id},fd={},vhost={}", self.fd.as_raw_fd(), if vhost { "on" } else { "off" })
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Clear FD_CLOEXEC on `fd`. Async-signal-safe (two fcntl calls), so usable in `pre_exec`.
pub fn clear_cloexec_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFD/F_SETFD) only reads and writes the descriptor flags; an invalid fd
    // is reported as EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True if `/dev/vhost-net` can be opened, so `vhost=on` may be used.
pub fn vhost_available() -> bool {
    OpenOptions::new().read(true).write(true).open("/dev/vhost-net").is_ok()
}

/// A Linux interface name or pattern: 1-15 bytes, no `/`, `:` or whitespace, `%d` at most once.
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let bad = |why| Err(TapError::InvalidName { name: name.to_string(), why });
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return bad("must be 1 to 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        return bad("no '/', ':' or whitespace allowed");
    }
    if name.matches('%').count() > name.matches("%d").count() || name.matches("%d").count() > 1 {
        return bad("'%' is only allowed once, as '%d'");
    }
    Ok(())
}

/// Create a tap named `name` (a `%d` pattern lets the kernel pick a free number; default
/// [`DEFAULT_NAME`]). The fd is close-on-exec until [`Tap::clear_cloexec`].
pub fn open_tap(name: Option<&str>) -> Result<Tap, TapError> {
    let requested = name.unwrap_or(DEFAULT_NAME);
    validate_name(requested)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|source| TapError::OpenTun { source })?;
    let fd = OwnedFd::from(file);
    let actual = set_iff(&fd, requested).map_err(|source| TapError::Create { name: requested.to_string(), source })?;
    debug!(requested, name = %actual, fd = fd.as_raw_fd(), "tap created");
    Ok(Tap { fd, name: actual })
}

fn set_iff(fd: &OwnedFd, name: &str) -> io::Result<String> {
    // SAFETY: ifreq is a plain C struct/union; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // validate_name guarantees < IFNAMSIZ bytes, so the name stays NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` is, on a /dev/net/tun fd.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote back a NUL-terminated name of at most IFNAMSIZ bytes.
    let actual = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) };
    Ok(actual.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_checked_before_any_syscall() {
        for good in ["kvtap%d", "t0", "vnet-web.1", "abcdefghijklmno"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "a:1", "%s", "a%d%d", "..", "tap%"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn clear_cloexec_reports_a_bad_fd() {
        assert!(clear_cloexec_fd(-1).is_err());
    }
}
