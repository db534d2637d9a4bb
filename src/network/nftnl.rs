//! Deleting one nftables table straight over netlink (NETLINK_NETFILTER), without starting
//! `nft`: `net-destroy` is on the hot path and nft's start-up costs ~30 ms. Rulesets are still
//! applied with `nft -f -` (the text is the real interface there).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFTA_TABLE_NAME: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NLMSG_ERROR: u16 = 2;

fn message(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
    let len = 16 + 4 + attrs.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(attrs);
}

fn string_attr(ty: u16, s: &str) -> Vec<u8> {
    let mut a = Vec::new();
    let len = 4 + s.len() + 1;
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(s.as_bytes());
    a.push(0);
    a.resize(len.div_ceil(4) * 4, 0);
    a
}

/// Delete table `inet <table>`; a table that is already gone is not an error.
pub fn delete_inet_table(table: &str) -> io::Result<()> {
    delete_inet_table_keep_socket(table).map(drop)
}

/// Does table `inet <table>` exist (one NFT_MSG_GETTABLE, as `nft list table` asks)?
pub fn inet_table_exists(table: &str) -> io::Result<bool> {
    let sock = nfnetlink_socket()?;
    let mut msg = Vec::new();
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
    message(&mut msg, ty, flags, 1, NFPROTO_INET, 0, &string_attr(NFTA_TABLE_NAME, table));
    send(&sock, &msg)?;
    let newtable = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE;
    let mut found = false;
    // The table comes first, then the acknowledgement; a missing table is an ENOENT error.
    let r = answers(&sock, |ty, seq, err| match (ty, seq) {
        (t, 1) if t == newtable => {
            found = true;
            None
        }
        (NLMSG_ERROR, 1) => Some(match err {
            0 => Ok(()),
            e => Err(e),
        }),
        _ => None,
    })?;
    match r {
        Ok(()) => Ok(found),
        Err(libc::ENOENT) => Ok(false),
        Err(e) => Err(io::Error::from_raw_os_error(e)),
    }
}

fn nfnetlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(sock: &OwnedFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_nl is plain data; zeroed is valid (pid 0 = the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: buffer and address are valid for the call's duration.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Read replies until `each(type, seq, errno)` (errno: the positive error of an NLMSG_ERROR,
/// 0 for an acknowledgement) gives an answer.
fn answers<T>(sock: &OwnedFd, mut each: impl FnMut(u16, u32, i32) -> Option<T>) -> io::Result<T> {
    let mut reply = [0u8; 8192];
    loop {
        // SAFETY: reply is a valid writable buffer of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(reply[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(reply[off + 4..off + 6].try_into().unwrap());
            let seq = u32::from_ne_bytes(reply[off + 8..off + 12].try_into().unwrap());
            let err = if ty == NLMSG_ERROR && off + 20 <= n {
                -i32::from_ne_bytes(reply[off + 16..off + 20].try_into().unwrap())
            } else {
                0
            };
            if let Some(r) = each(ty, seq, err) {
                return Ok(r);
            }
            if len < 16 {
                break;
            }
            off += len.div_ceil(4) * 4;
        }
    }
}

/// `delete_inet_table`, returning once the deletion is committed, with the socket still open.
/// Closing it makes the kernel flush its clean-up of the deleted table while holding the
/// nftables commit lock (~15 ms), and every link removal in the namespace waits for that lock
/// meanwhile: callers that remove a link too close the socket after it.
pub fn delete_inet_table_keep_socket(table: &str) -> io::Result<OwnedFd> {
    let sock = nfnetlink_socket()?;
    let mut batch = Vec::new();
    message(&mut batch, NFNL_MSG_BATCH_BEGIN, libc::NLM_F_REQUEST as u16, 1, 0, NFNL_SUBSYS_NFTABLES, &[]);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE;
    message(&mut batch, ty, flags, 2, NFPROTO_INET, 0, &string_attr(NFTA_TABLE_NAME, table));
    message(&mut batch, NFNL_MSG_BATCH_END, libc::NLM_F_REQUEST as u16, 3, 0, NFNL_SUBSYS_NFTABLES, &[]);
    send(&sock, &batch)?;
    let r = answers(&sock, |ty, seq, err| (ty == NLMSG_ERROR && seq == 2).then_some(err))?;
    match r {
        0 | libc::ENOENT => Ok(sock),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}
