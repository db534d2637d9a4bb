//! Deleting a link without waiting out the kernel's teardown of it.
//!
//! The kernel answers an RTM_DELLINK only after its RCU clean-up of the device (an
//! `rcu_barrier` and the wait for the last references: 20-30 ms on a 2-core VM), well after
//! the link has left the namespace, its name has become free and its removal has been
//! announced to RTNLGRP_LINK listeners. `delete_link_detached` sends the request from a
//! forked helper and returns at that announcement; the helper exits on its own once the
//! kernel lets it go. A refusal (or any error) still comes back to the caller.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const RTM_DELLINK: u16 = 17;
const NLMSG_ERROR: u16 = 2;
const RTMGRP_LINK: u32 = 1;
/// nlmsghdr (16) + ifinfomsg (16).
const REQ_LEN: usize = 32;

fn netlink_socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if groups != 0 {
        // SAFETY: sockaddr_nl is plain data; zeroed is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: the address is valid for the call's duration.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(sock)
}

fn dellink_request(index: u32) -> [u8; REQ_LEN] {
    let mut m = [0u8; REQ_LEN];
    m[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_DELLINK.to_ne_bytes());
    m[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, type 0, then the index; flags and change 0.
    m[20..24].copy_from_slice(&(index as i32).to_ne_bytes());
    m
}

/// Does this batch of netlink messages announce that link `index` is gone?
fn announces_removal(buf: &[u8], index: u32) -> bool {
    let mut off = 0;
    while off + 24 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        let family = buf[off + 16];
        let idx = i32::from_ne_bytes(buf[off + 20..off + 24].try_into().unwrap());
        // AF_BRIDGE messages of the same type are about bridge ports, not the link itself.
        if ty == RTM_DELLINK && family == libc::AF_UNSPEC as u8 && idx == index as i32 {
            return true;
        }
        if len < 16 {
            break;
        }
        off += len.div_ceil(4) * 4;
    }
    false
}

/// The helper's whole life: only raw system calls on memory prepared before the fork (the
/// parent has other threads, whose locks may be held at the fork).
fn helper(req: RawFd, result: RawFd, msg: &[u8; REQ_LEN]) -> ! {
    // Keep nothing else open: not the caller's stdout (a pipe would not see EOF until this
    // helper exits), not its lock files.
    let (lo, hi) = (req.min(result) as libc::c_uint, req.max(result) as libc::c_uint);
    // SAFETY: close_range and the calls below are async-signal-safe system calls on fds
    // and buffers this process owns; _exit never returns.
    unsafe {
        if lo > 0 {
            libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, lo - 1, 0 as libc::c_uint);
        }
        if hi > lo + 1 {
            libc::syscall(libc::SYS_close_range, lo + 1, hi - 1, 0 as libc::c_uint);
        }
        libc::syscall(libc::SYS_close_range, hi + 1, libc::c_uint::MAX, 0 as libc::c_uint);
        // Named for whoever looks at `ps` in the few ms it lives.
        libc::prctl(libc::PR_SET_NAME, c"kvmctl-unlink".as_ptr());
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let errno: i32;
        let sent = libc::sendto(
            req,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        );
        if sent < 0 {
            errno = *libc::__errno_location();
        } else {
            let mut reply = [0u8; 1024];
            'ack: loop {
                let n = libc::recv(req, reply.as_mut_ptr().cast(), reply.len(), 0);
                if n < 0 {
                    errno = *libc::__errno_location();
                    break;
                }
                let n = n as usize;
                let mut off = 0;
                while off + 20 <= n {
                    let len = u32::from_ne_bytes([reply[off], reply[off + 1], reply[off + 2], reply[off + 3]]) as usize;
                    let ty = u16::from_ne_bytes([reply[off + 4], reply[off + 5]]);
                    if ty == NLMSG_ERROR {
                        let e = [reply[off + 16], reply[off + 17], reply[off + 18], reply[off + 19]];
                        errno = -i32::from_ne_bytes(e);
                        break 'ack;
                    }
                    if len < 16 {
                        break;
                    }
                    off += len.div_ceil(4) * 4;
                }
            }
        }
        libc::write(result, (&errno as *const i32).cast(), 4);
        libc::_exit(0)
    }
}

/// Delete link `index`; return once it is gone from the namespace (or was already), with
/// the kernel's final teardown left to a helper process (`kvmctl-unlink`, gone
/// a few tens of ms later). Waits at most `timeout`.
pub fn delete_link_detached(index: u32, timeout: Duration) -> io::Result<()> {
    let monitor = netlink_socket(RTMGRP_LINK)?;
    let req = netlink_socket(0)?;
    let msg = dellink_request(index);
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by pipe2 and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Fork twice, so that the helper is not this process's child (no zombie to reap here,
    // and it outlives us without being waited for).
    // SAFETY: fork; both children run only `helper`'s system calls or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            if libc::fork() == 0 {
                helper(req.as_raw_fd(), wr.as_raw_fd(), &msg);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: pid is our child, which exits right after its fork.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    drop(wr);
    drop(req);
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 << 10];
    let mut watch_monitor = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("link {index} was not deleted within {timeout:?}"),
            ));
        }
        let mut pfd = [
            libc::pollfd { fd: rd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: if watch_monitor { monitor.as_raw_fd() } else { -1 }, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: pfd is a valid array of two pollfds.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfd[0].revents != 0 {
            let mut errno = [0u8; 4];
            // SAFETY: errno is a valid 4-byte buffer.
            let got = unsafe { libc::read(rd.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
            if got != 4 {
                return Err(io::Error::other(format!("the helper deleting link {index} died")));
            }
            return match i32::from_ne_bytes(errno) {
                0 | libc::ENODEV => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        if pfd[1].revents != 0 {
            // SAFETY: buf is a valid writable buffer of its length.
            let got = unsafe { libc::recv(monitor.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                // ENOBUFS (missed messages) or worse: the helper's own answer settles it.
                watch_monitor = false;
                continue;
            }
            if announces_removal(&buf[..got as usize], index) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_link_by_index() {
        let m = dellink_request(0x0102_0304);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_DELLINK);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 0x0102_0304);
        assert_eq!(m[16], 0, "AF_UNSPEC");
    }

    fn note(ty: u16, family: u8, index: i32) -> Vec<u8> {
        let mut m = vec![0u8; 32];
        m[0..4].copy_from_slice(&32u32.to_ne_bytes());
        m[4..6].copy_from_slice(&ty.to_ne_bytes());
        m[16] = family;
        m[20..24].copy_from_slice(&index.to_ne_bytes());
        m
    }

    #[test]
    fn only_the_links_own_removal_counts() {
        let mut batch = note(16, 0, 7); // RTM_NEWLINK of the same link
        batch.extend(note(RTM_DELLINK, libc::AF_BRIDGE as u8, 7)); // a bridge-port message
        batch.extend(note(RTM_DELLINK, 0, 8)); // another link
        assert!(!announces_removal(&batch, 7));
        batch.extend(note(RTM_DELLINK, 0, 7));
        assert!(announces_removal(&batch, 7));
        assert!(!announces_removal(&batch[..10], 7), "a truncated message is not read");
    }
}
