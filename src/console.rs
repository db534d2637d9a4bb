//! `kvmctl console`: the terminal (raw mode, restored on every exit path) attached to a VM's
//! serial console through its supervisor. `Ctrl+]` (or `--escape`) detaches.

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::termios::{self, SetArg, Termios};

use crate::domain::runtime::RunDir;
use crate::domain::supervisor::Request;

/// Parse `^]`, `^A`… (caret notation) or a single character into the escape byte.
pub fn parse_escape(s: &str) -> Result<u8, String> {
    let b = s.as_bytes();
    match b {
        [b'^', c] if (b'@'..=b'_').contains(&c.to_ascii_uppercase()) => Ok(c.to_ascii_uppercase() - b'@'),
        [c] if c.is_ascii() => Ok(*c),
        _ => Err(format!("--escape '{s}': use caret notation like ^] or ^A, or a single character")),
    }
}

/// The terminal settings to restore, as the plain C struct (readable from a signal handler).
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Raw mode on stdin for as long as it lives.
struct RawMode;

impl RawMode {
    fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let _ = SAVED.set(libc::termios::from(saved.clone()));
        let mut raw: Termios = saved;
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &raw)?;
        // A signal that would kill us must not leave the terminal raw.
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            // SAFETY: the handler only calls async-signal-safe functions (tcsetattr, _exit).
            unsafe { libc::signal(sig, restore_and_exit as *const () as libc::sighandler_t) };
        }
        Ok(RawMode)
    }
}

fn restore() {
    if let Some(t) = SAVED.get() {
        // SAFETY: tcsetattr on fd 0 with a termios read from this terminal; async-signal-safe.
        unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, t) };
    }
}

extern "C" fn restore_and_exit(_sig: libc::c_int) {
    restore();
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(1) };
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

pub struct AttachOpts {
    pub force: bool,
    pub readonly: bool,
    pub escape: u8,
    /// With a pipe as stdin: keep printing this long after stdin ends.
    pub linger: Duration,
}

/// Attach to a running VM's console until detach, takeover, or the VM stops. A supervisor
/// that goes away while the VM runs (killed, crashed) is an error: the VM keeps running, and
/// the next command gives it a new supervisor.
pub fn attach(rd: &RunDir, name: &str, o: &AttachOpts) -> anyhow::Result<()> {
    let mut sock = UnixStream::connect(rd.control())
        .map_err(|e| anyhow::anyhow!("domain '{name}': console not reachable: {e}"))?;
    // The supervisor, as a pidfd: whether it is gone when the console ends says why it ended.
    let supervisor = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .and_then(|c| Some((c.pid(), crate::domain::qemu::pidfd_open(c.pid()).ok()?)));
    let mut req = serde_json::to_vec(&Request::Console { force: o.force, readonly: o.readonly })?;
    req.push(b'\n');
    sock.write_all(&req)?;
    let mut reader = BufReader::new(sock.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let reply: serde_json::Value =
        serde_json::from_str(&line).map_err(|_| anyhow::anyhow!("domain '{name}': bad console reply"))?;
    if reply["ok"] != true {
        anyhow::bail!("domain '{name}': {}", reply["error"].as_str().unwrap_or("console refused"));
    }
    let tty = io::stdin().is_terminal();
    if tty {
        let esc =
            if o.escape < 32 { format!("^{}", (o.escape + b'@') as char) } else { (o.escape as char).to_string() };
        eprint!(
            "Connected to domain '{name}'{}\r\nEscape character is {esc}\r\n",
            if o.readonly { " (read-only)" } else { "" }
        );
    }
    let _raw = if tty { Some(RawMode::enter()?) } else { None };
    let printer = std::thread::spawn(move || {
        let mut out = io::stdout();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
            }
        }
    });
    forward_input(&mut sock, o, tty, &printer);
    // The console ended from the supervisor's side (not a detach, not the end of our input).
    let ended_there = printer.is_finished();
    let _ = sock.shutdown(std::net::Shutdown::Both);
    let _ = printer.join();
    drop(_raw);
    if tty {
        eprintln!();
    }
    match supervisor {
        Some((pid, pidfd)) if ended_there && supervisor_went_away(rd, pid, &pidfd) => {
            anyhow::bail!(
                "console: supervisor of VM '{name}' went away (pid {pid}: killed or crashed); the VM may still \
                 run: the next kvmctl command gives it a new supervisor (kvmctl console {name} attaches again)"
            )
        }
        _ => Ok(()),
    }
}

/// After the supervisor closed a console session: did it die without recording that the VM
/// stopped? (A supervisor that is still there took the session away on purpose: `--force`;
/// one that exited after recording shut off or crashed ended with its VM.)
fn supervisor_went_away(rd: &RunDir, pid: i32, pidfd: &std::os::fd::OwnedFd) -> bool {
    use crate::domain::runtime::VmState;
    if !crate::domain::qemu::pidfd_wait(pidfd, Duration::from_secs(2)) {
        return false;
    }
    let ended = rd.read_state().is_some_and(|s| {
        s.supervisor_pid == pid && matches!(s.state, VmState::Shutoff | VmState::Crashed) && s.qemu_pid.is_none()
    });
    !ended
}

/// stdin -> console until the escape byte, stdin's end (+ linger) or the console's end.
fn forward_input(sock: &mut UnixStream, o: &AttachOpts, tty: bool, printer: &std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
    std::thread::spawn(move || {
        let mut stdin = io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    loop {
        if printer.is_finished() {
            return;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Some(data)) => {
                let (chunk, detach) = match data.iter().position(|b| *b == o.escape) {
                    Some(i) if tty || o.escape == 0x1d => (&data[..i], true),
                    _ => (&data[..], false),
                };
                if !o.readonly && !chunk.is_empty() && sock.write_all(chunk).is_err() {
                    return;
                }
                if detach {
                    return;
                }
            }
            Ok(None) => {
                // stdin ended (a script): show the answers for a while, then leave.
                let t0 = std::time::Instant::now();
                while t0.elapsed() < o.linger && !printer.is_finished() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_in_caret_notation() {
        assert_eq!(parse_escape("^]").unwrap(), 0x1d);
        assert_eq!(parse_escape("^a").unwrap(), 0x01);
        assert_eq!(parse_escape("~").unwrap(), b'~');
        assert!(parse_escape("^^^").is_err());
    }
}
