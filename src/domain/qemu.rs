//! qemu as a supervisor holds it: [`Qemu::Spawned`] (our child, waited for with waitpid) or
//! [`Qemu::Adopted`] (left running by a supervisor that died, held by a pidfd: it is not our
//! child, so its exit is seen through the pidfd and its status is unknown).
//!
//! A qemu is named by its pid and its start time ([`QemuId`], /proc/PID/stat field 22, clock
//! ticks since boot): a recycled pid has another start time. [`verify`] opens a pidfd first
//! and only then checks the start time and the command line, so the pidfd it returns is the
//! process it checked.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::process::Child;

/// Which process a qemu is: its pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuId {
    pub pid: i32,
    /// /proc/PID/stat field 22 (clock ticks after boot).
    pub start_time: u64,
}

impl QemuId {
    /// The identity of the live process `pid`.
    pub fn of(pid: i32) -> Option<QemuId> {
        Some(QemuId { pid, start_time: proc_stat(pid)?.1 })
    }
}

/// The state letter (field 3) and start time (field 22) of `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((state, fields.get(19)?.parse().ok()?))
}

/// What the kernel counts for a running qemu (`domstats`, `dommemstat`): CPU time (user +
/// system, ns) and resident memory (KiB); None when `id` is no longer that process.
pub fn usage(id: QemuId) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{}/stat", id.pid)).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    if fields.get(19)?.parse::<u64>().ok()? != id.start_time {
        return None;
    }
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", id.pid)).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some((ticks * 1_000_000_000 / hz, rss))
}

/// Why a recorded qemu cannot be adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gone {
    /// No such process, a zombie, or another process now has the pid.
    Exited,
    /// The pid's process is not this VM's qemu (its command line says otherwise).
    NotOurs(String),
}

/// Open a pidfd on the recorded qemu and check that it is still that process, still running,
/// and runs this VM (`-uuid UUID` on a qemu-system-* command line).
pub fn verify(id: QemuId, uuid: &str) -> Result<OwnedFd, Gone> {
    let pidfd = pidfd_open(id.pid).map_err(|_| Gone::Exited)?;
    match proc_stat(id.pid) {
        Some((state, start)) if start == id.start_time && !matches!(state, 'Z' | 'X') => {}
        _ => return Err(Gone::Exited),
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", id.pid)).map_err(|_| Gone::Exited)?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let exe = args.first().map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default();
    let is_qemu = exe.rsplit('/').next().is_some_and(|b| b.starts_with("qemu-system-"));
    let has_uuid = args.windows(2).any(|w| w[0] == b"-uuid" && w[1] == uuid.as_bytes());
    if !is_qemu || !has_uuid {
        return Err(Gone::NotOurs(format!("pid {} runs {exe}, not qemu with -uuid {uuid}", id.pid)));
    }
    Ok(pidfd)
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Send `sig` to the process behind `pidfd` (never to a recycled pid).
pub fn pidfd_kill(pidfd: &OwnedFd, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(2) with a pidfd we own, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Has the process behind `pidfd` exited? Waits up to `timeout` (a pidfd polls readable when
/// its process has exited).
pub fn pidfd_wait(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: poll(2) on one pollfd that lives for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return r > 0;
        }
    }
}

/// A running qemu, started by this supervisor or adopted by it.
pub enum Qemu {
    Spawned(Child),
    Adopted { pid: i32, pidfd: AsyncFd<OwnedFd> },
}

impl Qemu {
    /// Take over a verified qemu (see [`verify`]).
    pub fn adopt(pid: i32, pidfd: OwnedFd) -> io::Result<Qemu> {
        // SAFETY: the AsyncFd owns the pidfd: it stays open, as the same fd, for its lifetime.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Qemu::Adopted { pid, pidfd })
    }

    pub fn pid(&self) -> Option<i32> {
        match self {
            Qemu::Spawned(c) => c.id().map(|p| p as i32),
            Qemu::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Wait until qemu has exited; returns how (an adopted qemu's status is not ours to read).
    /// Cancel-safe, and returns at once when called again after the exit.
    pub async fn wait(&mut self) -> String {
        match self {
            Qemu::Spawned(c) => c.wait().await.map(|s| s.to_string()).unwrap_or_default(),
            Qemu::Adopted { pidfd, .. } => {
                // Readable stays set: the process does not come back.
                let _ = pidfd.readable().await;
                "exited (adopted: exit status unknown)".into()
            }
        }
    }

    /// SIGKILL, without waiting.
    pub fn start_kill(&mut self) {
        match self {
            Qemu::Spawned(c) => {
                let _ = c.start_kill();
            }
            Qemu::Adopted { pidfd, .. } => {
                let _ = pidfd_kill(pidfd.get_ref(), libc::SIGKILL);
            }
        }
    }

    /// SIGKILL and wait for the exit.
    pub async fn kill(&mut self) {
        self.start_kill();
        self.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_the_pid_and_its_start_time() {
        let me = std::process::id() as i32;
        let id = QemuId::of(me).unwrap();
        assert_eq!(QemuId::of(me), Some(id));
        // Not qemu, so not adoptable, whatever the uuid.
        assert!(matches!(verify(id, "x"), Err(Gone::NotOurs(_))));
        // Another start time: another process that got the pid.
        let recycled = QemuId { start_time: id.start_time + 1, ..id };
        assert_eq!(verify(recycled, "x").unwrap_err(), Gone::Exited);
    }

    #[test]
    fn an_exited_process_is_gone_and_its_pidfd_polls_readable() {
        let mut c = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = c.id() as i32;
        let id = QemuId::of(pid).unwrap();
        let fd = pidfd_open(pid).unwrap();
        assert!(!pidfd_wait(&fd, Duration::from_millis(10)));
        pidfd_kill(&fd, libc::SIGKILL).unwrap();
        assert!(pidfd_wait(&fd, Duration::from_secs(10)));
        // A zombie (not yet reaped) is as gone as a reaped process.
        assert_eq!(verify(id, "x").unwrap_err(), Gone::Exited);
        c.wait().unwrap();
        assert_eq!(verify(id, "x").unwrap_err(), Gone::Exited);
    }
}
