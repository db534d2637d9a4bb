//! Fault injection for tests: built only with the `fault-injection` feature (`make test`
//! enables it; release builds do not have it). `KVMCTL_FAULT=POINT[:SIGNAL]` makes the process
//! send itself `SIGNAL` (`KILL` by default; `INT`, `TERM`, `HUP`, `KILL`) when it reaches the
//! named point, as a user's Ctrl+C or a `kill` at that instant would.

/// Mark a named point: a no-op unless built for tests and named by `KVMCTL_FAULT`.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use nix::sys::signal::{kill, Signal};
    let Ok(v) = std::env::var("KVMCTL_FAULT") else { return };
    let (p, sig) = v.split_once(':').unwrap_or((&v, "KILL"));
    if p != name {
        return;
    }
    let sig = match sig {
        "INT" => Signal::SIGINT,
        "TERM" => Signal::SIGTERM,
        "HUP" => Signal::SIGHUP,
        _ => Signal::SIGKILL,
    };
    eprintln!("kvmctl: fault point {name}: {sig}");
    let _ = kill(nix::unistd::getpid(), sig);
    // A caught signal ends the process from the signal thread; wait for it here.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}
