//! What an interrupted command leaves behind. Every [`TempFile`](super::TempFile) alive in
//! this process is registered here: on SIGINT, SIGTERM or SIGHUP they are removed before the
//! process dies of the signal, as it would have without us. A SIGKILL cannot be caught, so a
//! temp file's name carries its writer's pid and start time, and [`sweep_stale`] removes the
//! ones whose writer is gone (run by the next command on that pool).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(super) fn register(p: &Path) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(p.to_path_buf());
}

pub(super) fn unregister(p: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = live.iter().position(|q| q == p) {
        live.swap_remove(i);
    }
}

/// The write end of the pipe the signal handler reports to (-1: not installed).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; a full pipe only loses a repeated signal.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// Catch SIGINT, SIGTERM and SIGHUP (call first thing in `main`): a handler reports the
/// signal over a pipe to a thread of its own, which removes the registered temp files and
/// raises the signal again with its default action, so the exit status is what the caller
/// expects. No signal mask changes: children (dnsmasq, the supervisor, qemu) start with
/// default dispositions, as exec resets caught signals.
pub fn remove_temps_on_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let Ok((rd, wr)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else { return };
    let mut rd = std::fs::File::from(rd);
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut byte = [0u8; 1];
        if std::io::Read::read_exact(&mut rd, &mut byte).is_err() {
            return;
        }
        let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
        for p in live {
            let _ = std::fs::remove_file(p);
        }
        let sig = libc::c_int::from(byte[0]);
        // SAFETY: restoring the default action and raising the signal ends the process as
        // the signal would have.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    });
    if spawned.is_err() {
        return;
    }
    SIGNAL_PIPE.store(std::os::fd::IntoRawFd::into_raw_fd(wr), std::sync::atomic::Ordering::Relaxed);
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2).
        let _ = unsafe { sigaction(s, &action) };
    }
}

/// For a command that waits until it is stopped (`events`): from now on SIGINT, SIGTERM and
/// SIGHUP no longer end the process but make the returned pipe readable, so that the command
/// ends on its own terms (exit 0, its output whole). It must hold no temp file.
pub fn signals_to_pipe() -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::OFlag;
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    SIGNAL_PIPE.store(std::os::fd::IntoRawFd::into_raw_fd(wr), std::sync::atomic::Ordering::Relaxed);
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2). The pipe it wrote to before (the temp-file
        // thread's) is no longer written: that thread waits on it forever.
        unsafe { sigaction(s, &action) }?;
    }
    Ok(rd)
}

/// This process's start time (field 22 of /proc/PID/stat, clock ticks since boot).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens: count from the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// `<pid>.<start time>`: who is writing, in a temp file's name.
pub(super) fn writer_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}.{}", start_time(pid).unwrap_or(0))
    })
}

/// Is the writer of a temp file named `.<name>.tmp-<pid>.<start>-<n>` gone?
fn writer_gone(file_name: &str) -> bool {
    let Some((_, rest)) = file_name.rsplit_once(".tmp-") else { return false };
    let Some((tag, n)) = rest.rsplit_once('-') else { return false };
    let Some((pid, start)) = tag.split_once('.') else { return false };
    let (Ok(pid), Ok(start), true) = (pid.parse::<u32>(), start.parse::<u64>(), n.parse::<u64>().is_ok()) else {
        return false;
    };
    start_time(pid) != Some(start)
}

/// Remove the temp files in `dir` whose writer has died (killed mid-copy); returns them.
pub fn sweep_stale(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && writer_gone(&name) && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_name_tells_a_live_writer_from_a_dead_one() {
        let me = writer_tag();
        assert!(!writer_gone(&format!(".v.qcow2.tmp-{me}-0")), "this process is alive");
        let (pid, start) = me.split_once('.').unwrap();
        let reused = format!(".v.qcow2.tmp-{pid}.{}-3", start.parse::<u64>().unwrap() + 1);
        assert!(writer_gone(&reused), "same pid, other start time: a reused pid");
        assert!(writer_gone(".v.tmp-4194304.1-0"), "no such pid");
        for not_ours in [".hidden", ".v.tmp-12", ".v.tmp-x.1-0", ".v.tmp-1.2-z"] {
            assert!(!writer_gone(not_ours), "{not_ours}");
        }
    }

    #[test]
    fn sweep_removes_only_dead_writers_files() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join(format!(".a.tmp-{}-0", writer_tag()));
        let dead = d.path().join(".b.tmp-4194304.7-1");
        let other = d.path().join(".keep");
        for p in [&live, &dead, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(sweep_stale(d.path()), std::slice::from_ref(&dead));
        assert!(live.exists() && other.exists() && !dead.exists());
    }
}
