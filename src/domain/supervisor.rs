//! The per-VM supervisor: a detached process (`kvmctl __supervise --dir D --ready-fd N`) that
//! owns qemu, holds QMP and the serial console, applies on_poweroff/on_reboot/on_crash, keeps
//! `state.json` current, holds the VM's lock for its whole life, and answers `control.sock`.
//!
//! qemu outlives its supervisor: with `--adopt`, a new supervisor takes over the qemu a dead
//! one left running (verified by pidfd, start time and command line), reconnects its QMP and
//! serial sockets, and carries on; a qemu that died meanwhile is recorded as such.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use super::adopt;
use super::confine::{self, Creds};
use super::console_hub::Hub;
use super::definition::{Action, DomainDef};
use super::qemu::{self, Qemu, QemuId};
use super::qmp::{self, QmpEvents, QmpHandle};
use super::runtime::{now_secs, NextBoot, RunDir, RunState, VmState};
use crate::state::ObjectLock;

/// A request on the control socket: one JSON line in, one JSON line out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Shutdown,
    Destroy,
    Reboot,
    Reset,
    Suspend,
    Resume,
    /// `destroy --graceful`: QMP quit, and no SIGKILL if qemu does not go.
    DestroyGraceful,
    /// The addresses qemu's user-mode network (slirp) leases to the guest, one per user NIC
    /// (`data`: a list of [`UsernetAddr`]).
    UsernetAddrs,
    /// Per-disk I/O counters (`data`: qemu's `query-blockstats` reply).
    BlockStats,
    /// The balloon's current size in bytes (`data`: `{"actual": N}`, null without a balloon).
    Balloon,
    /// Turn this connection into a console session (raw bytes after the reply line).
    Console {
        #[serde(default)]
        force: bool,
        #[serde(default)]
        readonly: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// A user-mode NIC's guest address, as slirp leases it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernetAddr {
    /// Index of the NIC in the definition.
    pub nic: usize,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl Reply {
    fn ok(state: &RunState) -> Reply {
        Reply { ok: true, error: None, state: Some(state.clone()), data: Value::Null }
    }
    fn err(msg: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(msg.into()), state: None, data: Value::Null }
    }
}

/// `kvmctl __supervise --dir DIR --ready-fd N --qemu-fds A,B,.. [--qemu-creds UID:GID:GROUPS] [--lock-fd N]`
/// (started by `start`; not for direct use). The qemu fds (taps, qemu's listening sockets,
/// its images and boot files) are inherited at the numbers the qemu argv names, and are the
/// only fds qemu gets; qemu runs with the credentials given (see `confine`).
///
/// `kvmctl __supervise --dir DIR --ready-fd N --adopt`: take over the running qemu of a VM
/// whose supervisor died (started by any command that finds one, and by `recover`).
pub fn main_from_args(args: &[std::ffi::OsString]) -> ! {
    let mut it = args.iter();
    let (mut dir, mut fd, mut qemu_fds, mut creds, mut adopt, mut lock_fd) = (None, None, None, None, false, None);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--dir") => dir = it.next().map(PathBuf::from),
            Some("--ready-fd") => fd = it.next().and_then(|v| v.to_str()?.parse::<RawFd>().ok()),
            Some("--qemu-fds") => qemu_fds = it.next().and_then(|v| parse_fds(v.to_str()?)),
            Some("--qemu-creds") => creds = it.next().and_then(|v| Creds::from_arg(v.to_str()?)),
            Some("--adopt") => adopt = true,
            Some("--lock-fd") => lock_fd = it.next().and_then(|v| v.to_str()?.parse::<RawFd>().ok()),
            _ => {}
        }
    }
    let mode = match (&qemu_fds, adopt) {
        (Some(fds), false) => Some(Mode::Boot(Launch { fds: fds.clone().into(), creds })),
        (None, true) => Some(Mode::Adopt),
        _ => None,
    };
    let (Some(dir), Some(fd), Some(mode)) = (dir, fd, mode) else {
        eprintln!(
            "usage: kvmctl __supervise --dir DIR --ready-fd N (--qemu-fds A,B,.. [--qemu-creds UID:GID:GROUPS] | --adopt) \
             (started by kvmctl start, and to re-adopt a running VM)"
        );
        std::process::exit(2);
    };
    for fd in qemu_fds.iter().flatten() {
        // Inherited without close-on-exec: only qemu's spawn hands them on.
        let _ = nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    }
    // stderr is supervisor.log (stdout is /dev/null).
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    // Whatever the caller's umask, what the supervisor creates is private (modes are also set
    // explicitly where files are created).
    // SAFETY: umask(2) only sets this process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    // The VM's lock, taken by `start` before it spawned us: held without a gap, so that a
    // `start` killed right after the spawn leaves a VM that counts as running.
    let lock = lock_fd.map(|n| {
        let _ = nix::fcntl::fcntl(n, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        // SAFETY: the fd number was passed by our parent, which opened it for us.
        ObjectLock::from_inherited(unsafe { File::from_raw_fd(n) })
    });
    main(dir, fd, mode, lock)
}

/// `3,4,5` (or empty) -> the fd numbers; None if any is not a number.
fn parse_fds(list: &str) -> Option<Vec<RawFd>> {
    list.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect()
}

/// How qemu is started: the fds it inherits (taps, its listening sockets, the files `start`
/// opened for it), at the numbers its argv names, and the user it runs as.
struct Launch {
    fds: Arc<[RawFd]>,
    creds: Option<Creds>,
}

enum Mode {
    /// Start qemu (`start`).
    Boot(Launch),
    /// Take over the qemu a dead supervisor left running.
    Adopt,
}

/// The supervisor's life. Never returns. The word on the ready pipe: `OK` (running),
/// `GONE <state>` (adopt: qemu had exited; recorded and cleaned up) or `ERR <why>`. `lock`:
/// the VM's lock when the spawner took it for us.
fn main(dir: PathBuf, ready_fd: RawFd, mode: Mode, lock: Option<ObjectLock>) -> ! {
    // SAFETY: the fd number was passed by our parent, which opened it for us.
    let mut ready = unsafe { File::from_raw_fd(ready_fd) };
    let _ = nix::fcntl::fcntl(ready_fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    let rd = RunDir { dir };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        let started = match mode {
            Mode::Boot(launch) => Supervisor::boot(&rd, launch, lock).await.inspect_err(|e| {
                let _ = rd.write_state(&failed_state(&rd, e));
            }),
            // A failed adoption leaves the record alone: qemu may well be running.
            Mode::Adopt => match Supervisor::adopt(&rd).await {
                Ok(Adoption::Running(mut sup, missed_poweroff)) => {
                    if missed_poweroff {
                        // The guest powered off while nobody watched: what its SHUTDOWN
                        // event would have done.
                        let ev = serde_json::json!({"event": "SHUTDOWN", "data": {"reason": "guest-shutdown"}});
                        sup.on_event(ev).await;
                    }
                    Ok(*sup)
                }
                Ok(Adoption::Gone(st)) => {
                    tracing::warn!(state = st.state.as_str(), reason = %st.reason, "qemu had exited unsupervised");
                    let _ = writeln!(ready, "GONE {}", st.state.as_str());
                    return 0;
                }
                Err(e) => Err(e),
            },
        };
        match started {
            Ok(mut sup) => {
                let _ = ready.write_all(b"OK\n");
                drop(ready);
                trim_resident_code();
                sup.run().await;
                0
            }
            Err(e) => {
                let _ = writeln!(ready, "ERR {}", e.replace('\n', "\n    "));
                1
            }
        }
    });
    std::process::exit(code)
}

/// A supervisor lives as long as its VM, but little of the code that started it runs again,
/// and the kernel maps 64 KiB around every page fault: after start-up most of the binary's
/// 6 MB of code is resident in this process, and while it is the only kvmctl process that
/// counts fully to its memory. Unmap the executable's clean read-only pages and turn
/// fault-around off for them: from here on only the pages the event loop touches come back.
/// Mappings holding copied-on-write pages (relocated data) are left alone: unmapping those
/// would lose the relocations.
fn trim_resident_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    let exe = exe.to_string_lossy().into_owned();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-').filter(|_| line.ends_with(exe.as_str())) {
            let perms = f.next().unwrap_or("");
            let range = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16));
            current = match range {
                (Ok(lo), Ok(hi)) if perms.starts_with('r') && !perms.contains('w') => Some((lo, hi - lo)),
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let (Some((addr, len)), Some("0")) = (current.take(), f.next()) {
                // SAFETY: a read-only private mapping of our own executable with no
                // copied-on-write page: every page can be read back from the file, which
                // cannot change while it is being executed (ETXTBSY).
                unsafe {
                    libc::madvise(addr as *mut libc::c_void, len, libc::MADV_RANDOM);
                    libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED);
                }
            }
        }
    }
}

fn failed_state(rd: &RunDir, why: &str) -> RunState {
    let mut st = rd.read_state().unwrap_or_else(|| blank_state(false));
    st.state = VmState::Shutoff;
    st.reason = format!("failed: {}", why.lines().next().unwrap_or(""));
    st.set_qemu(None);
    st
}

fn blank_state(transient: bool) -> RunState {
    RunState {
        state: VmState::Shutoff,
        reason: "starting".into(),
        supervisor_pid: std::process::id() as i32,
        qemu_pid: None,
        qemu_start_time: None,
        accel: String::new(),
        started_at: now_secs(),
        taps: vec![],
        transient,
        restarts: 0,
        stopping: None,
        adoptions: 0,
        domain_id: None,
    }
}

/// What `--adopt` found.
enum Adoption {
    /// With `true` if the guest powered off while unsupervised (its event was missed).
    Running(Box<Supervisor>, bool),
    /// qemu had exited (or was being stopped): the state recorded, sockets and lock removed.
    Gone(RunState),
}

fn take_lock(rd: &RunDir) -> Result<ObjectLock, String> {
    match crate::state::try_lock_exclusive(&rd.lock()) {
        Ok(Some(l)) => Ok(l),
        Ok(None) => Err("another supervisor holds this VM (already running)".into()),
        Err(e) => Err(format!("cannot lock {}: {e}", rd.lock().display())),
    }
}

type Pending = (Request, oneshot::Sender<Reply>);

struct Supervisor {
    rd: RunDir,
    def: DomainDef,
    argv: Vec<String>,
    qemu: Qemu,
    qmp: QmpHandle,
    events: QmpEvents,
    requests: mpsc::Receiver<Pending>,
    state: RunState,
    /// A `reboot` request: power the guest down, then reset it instead of stopping.
    fake_reboot: bool,
    /// We asked qemu to go away (destroy/shutdown/policy): its exit is not a crash.
    quitting: Option<&'static str>,
    /// The host asked the guest to power off (`shutdown`): its poweroff event says so.
    powerdown_asked: bool,
    /// The event of the VM's stop, recorded once its end is (`finish`).
    stop_event: Option<(crate::events::What, String)>,
    /// qemu is gone for good: what `set` records is the VM's end.
    ending: bool,
    /// Set during an install's first boot.
    next: Option<NextBoot>,
    hub: Arc<Hub>,
    /// How to start qemu again (a restart, an install's second boot); None when adopted: the
    /// taps and files a dead supervisor held for that went with it.
    launch: Option<Launch>,
    _lock: ObjectLock,
}

impl Supervisor {
    async fn boot(rd: &RunDir, how: Launch, lock: Option<ObjectLock>) -> Result<Supervisor, String> {
        let lock = match lock {
            Some(l) => l,
            None => take_lock(rd)?,
        };
        let (def, argv) = read_run_files(rd)?;
        let mut state = rd.read_state().unwrap_or_else(|| blank_state(false));
        state.supervisor_pid = std::process::id() as i32;
        let hub = Hub::with_copy(rd.console_log(), def.console_file.as_deref(), false);
        // `start --paused`: the first boot stays paused (the marker goes with that boot).
        let paused = rd.dir.join(super::runtime::START_PAUSED).exists();
        let (qemu, qmp, events) = launch(rd, &argv, &how, &hub).await?;
        state.set_qemu(qemu.pid().and_then(QemuId::of));
        (state.state, state.reason) =
            if paused { (VmState::Paused, "start paused".into()) } else { (VmState::Running, "booted".into()) };
        state.started_at = now_secs();
        rd.write_state(&state).map_err(|e| e.to_string())?;
        super::journal::emit(rd, crate::events::What::Started, "booted");
        if paused {
            super::journal::emit(rd, crate::events::What::Paused, "start paused");
        }
        let requests = serve_control(rd, hub.clone())?;
        Ok(Supervisor {
            rd: rd.clone(),
            def,
            argv,
            qemu,
            qmp,
            events,
            requests,
            state,
            fake_reboot: false,
            quitting: None,
            powerdown_asked: false,
            stop_event: None,
            ending: false,
            next: std::fs::read_to_string(rd.next_boot()).ok().and_then(|t| serde_json::from_str(&t).ok()),
            hub,
            launch: Some(how),
            _lock: lock,
        })
    }

    /// Take over the qemu recorded in state.json, if it is still that process and runs this
    /// VM; else record how it ended.
    async fn adopt(rd: &RunDir) -> Result<Adoption, String> {
        let lock = take_lock(rd)?;
        let mut state = rd.read_state().ok_or("no state.json: nothing to adopt")?;
        let (def, argv) = read_run_files(rd)?;
        let verified = match state.qemu_id() {
            Some(id) => qemu::verify(id, &def.uuid.to_string()),
            None => Err(qemu::Gone::Exited),
        };
        let pidfd = match verified {
            Ok(fd) if matches!(state.state, VmState::Running | VmState::Paused | VmState::Shutdown) => fd,
            Ok(fd) => {
                // Recorded as stopped or never started, yet still there: finish the stop.
                tracing::warn!(pid = ?state.qemu_pid, state = state.state.as_str(), "killing a qemu left behind");
                let _ = qemu::pidfd_kill(&fd, libc::SIGKILL);
                qemu::pidfd_wait(&fd, Duration::from_secs(10));
                return Ok(Adoption::Gone(adopt::unsupervised_end(rd, state, lock)));
            }
            Err(why) => {
                tracing::warn!(pid = ?state.qemu_pid, ?why, "the recorded qemu is gone");
                return Ok(Adoption::Gone(adopt::unsupervised_end(rd, state, lock)));
            }
        };
        let pid = state.qemu_pid.expect("verified qemu has a pid");
        tracing::info!(pid, "adopting qemu");
        // A dead supervisor's control socket may still be on disk: nobody answers it.
        let _ = std::fs::remove_file(rd.control());
        let hub = Hub::resume(rd.console_log(), def.console_file.as_deref());
        let (qmp, events) = tokio::time::timeout(STARTUP, connect_qemu(rd, &hub)).await.unwrap_or_else(|_| {
            Err(format!("qemu (pid {pid}) did not answer on QMP within {} s", STARTUP.as_secs()))
        })?;
        crate::fault::point("adopt.connected");
        let status = qmp.execute(qapi::qmp::query_status {}).await.map_err(|e| format!("query-status: {e}"))?;
        let now = match status.status {
            qapi::qmp::RunState::paused => VmState::Paused,
            qapi::qmp::RunState::shutdown => VmState::Shutdown,
            _ => VmState::Running,
        };
        let missed_poweroff = now == VmState::Shutdown && state.state != VmState::Shutdown;
        if now != state.state {
            state.reason = if now == VmState::Paused { "user".into() } else { "adopted".into() };
        }
        state.state = if missed_poweroff { VmState::Running } else { now };
        state.supervisor_pid = std::process::id() as i32;
        state.adoptions += 1;
        rd.write_state(&state).map_err(|e| e.to_string())?;
        let requests = serve_control(rd, hub.clone())?;
        Ok(Adoption::Running(
            Box::new(Supervisor {
                rd: rd.clone(),
                def,
                argv,
                qemu: Qemu::adopt(pid, pidfd).map_err(|e| format!("pidfd: {e}"))?,
                qmp,
                events,
                requests,
                state,
                fake_reboot: false,
                quitting: None,
                powerdown_asked: false,
                stop_event: None,
                ending: false,
                next: std::fs::read_to_string(rd.next_boot()).ok().and_then(|t| serde_json::from_str(&t).ok()),
                hub,
                launch: None,
                _lock: lock,
            }),
            missed_poweroff,
        ))
    }

    fn save(&self) {
        if let Err(e) = self.rd.write_state(&self.state) {
            tracing::error!(error = %e, "cannot write state.json");
        }
    }

    fn set(&mut self, state: VmState, reason: &str) {
        let prev = self.state.state;
        let event = super::journal::event_of(prev, state, reason, self.powerdown_asked);
        match event {
            // A stop is told once it is recorded and the sockets are gone (`finish`).
            Some(e) if state == VmState::Shutoff || self.ending => {
                self.stop_event.get_or_insert(e);
            }
            Some((what, detail)) => super::journal::emit(&self.rd, what, &detail),
            None => {}
        }
        self.state.state = state;
        self.state.reason = reason.to_string();
        self.save();
    }

    async fn run(&mut self) {
        loop {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    // QMP closed: qemu is exiting; its exit status arrives below.
                    None => {
                        let status = self.qemu.wait().await;
                        if self.on_exit(status).await { break; }
                    }
                },
                status = self.qemu.wait() => {
                    if self.on_exit(status).await { break; }
                }
                Some((req, tx)) = self.requests.recv() => {
                    let reply = self.on_request(req).await;
                    let _ = tx.send(reply);
                }
            }
        }
        self.finish();
    }

    async fn on_event(&mut self, ev: Value) {
        let name = qmp::event_name(&ev).unwrap_or("").to_string();
        let data = ev.get("data").map(|d| d.to_string()).unwrap_or_default();
        tracing::info!(event = %name, %data, "qmp event");
        match name.as_str() {
            // qemu also stops the vCPUs after a guest power-off (-no-shutdown): only a stop that
            // leaves qemu in the "paused" status is a pause.
            "STOP" if self.state.state == VmState::Running => {
                let paused = matches!(
                    self.qmp.execute(qapi::qmp::query_status {}).await,
                    Ok(s) if s.status == qapi::qmp::RunState::paused
                );
                if paused {
                    self.set(VmState::Paused, "user");
                }
            }
            "RESUME" if self.state.state == VmState::Paused => self.set(VmState::Running, "unpaused"),
            "SHUTDOWN" => {
                let reason = ev.pointer("/data/reason").and_then(Value::as_str).unwrap_or("").to_string();
                if self.quitting.is_some() || reason == "host-qmp-quit" {
                    return;
                }
                let requested_reboot = std::mem::take(&mut self.fake_reboot);
                if self.next.is_some() {
                    self.end_install_phase(requested_reboot || reason == "guest-reset").await;
                    return;
                }
                if requested_reboot {
                    self.restart_guest("rebooted").await;
                } else if reason == "guest-reset" {
                    self.apply(self.def.on_reboot, "rebooted").await;
                } else {
                    self.apply(self.def.on_poweroff, "shutdown").await;
                }
            }
            "GUEST_PANICKED" => self.apply(self.def.on_crash, "crashed").await,
            _ => {}
        }
    }

    async fn apply(&mut self, action: Action, why: &'static str) {
        match action {
            Action::Destroy => self.stop_qemu(why).await,
            Action::Restart => self.restart_guest(why).await,
            Action::Preserve => {
                let st = if why == "crashed" { VmState::Crashed } else { VmState::Shutdown };
                self.set(st, why);
            }
        }
    }

    async fn restart_guest(&mut self, why: &str) {
        let _ = self.qmp.execute(qapi::qmp::system_reset {}).await;
        let _ = self.qmp.execute(qapi::qmp::cont {}).await;
        self.state.restarts += 1;
        self.state.stopping = None;
        self.set(VmState::Running, why);
    }

    /// The installer's boot ended: boot the installed system (or stop, with --noreboot).
    async fn end_install_phase(&mut self, rebooting: bool) {
        let next = self.next.take().expect("in an install phase");
        let stop = next.noreboot || (next.poweroff_stops && !rebooting);
        self.stop_qemu("installed").await;
        self.qemu.wait().await;
        let _ = std::fs::remove_file(self.rd.next_boot());
        if let Ok(t) = toml::to_string_pretty(&next.def) {
            let _ = crate::state::runtime_write(&self.rd.live_def(), t.as_bytes());
        }
        let _ = crate::state::runtime_write(
            &self.rd.argv(),
            serde_json::to_string(&next.argv).unwrap_or_default().as_bytes(),
        );
        (self.def, self.argv) = (next.def, next.argv);
        if stop {
            return; // quitting is set: the exit is a clean stop
        }
        let Some(how) = &self.launch else {
            tracing::warn!("adopted: the installed system boots at the next start");
            self.quitting = Some("installed; adopted by a new supervisor: start it to boot the installed system");
            return;
        };
        match launch(&self.rd, &self.argv, how, &self.hub).await {
            Ok((qemu, qmp, events)) => {
                (self.qemu, self.qmp, self.events) = (qemu, qmp, events);
                self.quitting = None;
                self.state.stopping = None;
                self.state.set_qemu(self.qemu.pid().and_then(QemuId::of));
                self.set(VmState::Running, "installed, booted from disk");
            }
            Err(e) => tracing::error!(error = %e, "booting the installed system failed"),
        }
    }

    /// quit over QMP, then SIGKILL after 3 s; the exit itself is handled by `on_exit`.
    async fn stop_qemu(&mut self, why: &'static str) {
        self.quitting = Some(why);
        // Recorded first: if this supervisor dies now, the next one knows the exit was asked for.
        self.state.stopping = Some(why.into());
        self.save();
        let quit = self.qmp.clone().with_timeout(Duration::from_secs(2));
        let _ = quit.execute(qapi::qmp::quit {}).await;
        if tokio::time::timeout(Duration::from_secs(3), self.qemu.wait()).await.is_err() {
            self.qemu.start_kill();
        }
    }

    /// qemu is gone. Returns true when the supervisor should exit.
    async fn on_exit(&mut self, detail: String) -> bool {
        self.qemu.wait().await;
        self.state.stopping = None;
        if let Some(why) = self.quitting {
            self.set(VmState::Shutoff, why);
            return true;
        }
        tracing::warn!(%detail, "qemu exited unexpectedly");
        let restart = self.def.on_crash == Action::Restart && self.state.restarts < 10;
        match (&self.launch, restart) {
            (Some(how), true) => match launch(&self.rd, &self.argv, how, &self.hub).await {
                Ok((qemu, qmp, events)) => {
                    (self.qemu, self.qmp, self.events) = (qemu, qmp, events);
                    self.state.set_qemu(self.qemu.pid().and_then(QemuId::of));
                    self.state.restarts += 1;
                    self.set(VmState::Running, "crashed, restarted");
                    return false;
                }
                Err(e) => tracing::error!(error = %e, "restart after crash failed"),
            },
            (None, true) => tracing::warn!("not restarted: an adopted qemu's taps and files went with its supervisor"),
            _ => {}
        }
        self.state.set_qemu(None);
        let not_restarted =
            if restart && self.launch.is_none() { "; adopted, not restarted: start it again" } else { "" };
        self.ending = true;
        self.set(VmState::Crashed, &format!("crashed: qemu {detail}{not_restarted}"));
        true
    }

    async fn on_request(&mut self, req: Request) -> Reply {
        let r = match req {
            Request::Status => Ok(()),
            Request::Shutdown => {
                self.powerdown_asked = true;
                self.state.stopping = Some("shutdown".into());
                self.save();
                self.qmp.execute(qapi::qmp::system_powerdown {}).await.map(|_| ())
            }
            Request::Reboot => {
                self.fake_reboot = true;
                self.qmp.execute(qapi::qmp::system_powerdown {}).await.map(|_| ())
            }
            Request::Reset => {
                let r = self.qmp.execute(qapi::qmp::system_reset {}).await.map(|_| ());
                if r.is_ok() {
                    super::journal::emit(&self.rd, crate::events::What::Rebooted, "reset");
                }
                r
            }
            Request::Suspend => self.qmp.execute(qapi::qmp::stop {}).await.map(|_| ()),
            Request::Resume => self.qmp.execute(qapi::qmp::cont {}).await.map(|_| ()),
            Request::Destroy => {
                self.stop_qemu("destroyed").await;
                self.set(VmState::Shutoff, "destroyed");
                return Reply::ok(&self.state);
            }
            Request::DestroyGraceful => {
                self.quitting = Some("destroyed");
                self.state.stopping = Some("destroyed".into());
                self.save();
                let quit = self.qmp.clone().with_timeout(Duration::from_secs(2));
                let asked = quit.execute(qapi::qmp::quit {}).await;
                if tokio::time::timeout(Duration::from_secs(10), self.qemu.wait()).await.is_ok() {
                    self.set(VmState::Shutoff, "destroyed");
                    return Reply::ok(&self.state);
                }
                self.quitting = None;
                self.state.stopping = None;
                self.save();
                let why = asked.err().map(|e| format!(" ({e})")).unwrap_or_default();
                return Reply::err(format!("qemu did not exit within 10 s of quit{why}; not killed (--graceful)"));
            }
            Request::BlockStats => {
                return match self.qmp.execute_raw("query-blockstats", serde_json::json!({})).await {
                    Ok(v) => Reply { data: v, ..Reply::ok(&self.state) },
                    Err(e) => Reply::err(e.to_string()),
                }
            }
            Request::Balloon => {
                // No balloon device is an answer (null), not an error.
                let data = match self.qmp.execute(qapi::qmp::query_balloon {}).await {
                    Ok(b) => serde_json::json!({ "actual": b.actual }),
                    Err(_) => Value::Null,
                };
                return Reply { data, ..Reply::ok(&self.state) };
            }
            Request::Console { .. } => return Reply::err("console requests are served by the control task"),
            Request::UsernetAddrs => {
                return match self.usernet_addrs().await {
                    Ok(v) => Reply { data: serde_json::to_value(v).unwrap_or_default(), ..Reply::ok(&self.state) },
                    Err(e) => Reply::err(e.to_string()),
                }
            }
        };
        match r {
            Ok(()) => Reply::ok(&self.state),
            Err(e) => Reply::err(e.to_string()),
        }
    }

    /// slirp's guest address of every user-mode NIC, from HMP `info network` (QMP has no
    /// typed query for it in qemu 7.2).
    async fn usernet_addrs(&self) -> Result<Vec<UsernetAddr>, qmp::QmpError> {
        use super::definition::NicSource;
        let cmd = qapi::qmp::human_monitor_command { command_line: "info network".into(), cpu_index: None };
        let text = self.qmp.execute(cmd).await?;
        let user = self.def.nics.iter().enumerate().filter(|(_, n)| n.source == NicSource::User);
        Ok(user
            .filter_map(|(nic, _)| {
                let address = usernet_guest_addr(&text, &format!("net{nic}"))?;
                Some(UsernetAddr { nic, address, prefix: 24 })
            })
            .collect())
    }

    fn finish(&mut self) {
        // qemu's image locks live on in the files this process holds until it closes them,
        // and exit closes fds in number order, the run dir's lock maybe first: drop them now,
        // so that whoever sees the VM stopped can start it (or another VM on its disks) at once.
        if let Some(l) = &self.launch {
            confine::release_image_locks(&l.fds);
        }
        adopt::remove_sockets(&self.rd);
        self.state.set_qemu(None);
        self.state.stopping = None;
        self.save();
        // Before the lock goes: a command that waited for the VM to stop finds it told.
        if let Some((what, detail)) = self.stop_event.take() {
            super::journal::emit(&self.rd, what, &detail);
        }
    }
}

/// The definition and qemu argv the VM runs with (written by `start`).
fn read_run_files(rd: &RunDir) -> Result<(DomainDef, Vec<String>), String> {
    let def: DomainDef = toml::from_str(&std::fs::read_to_string(rd.live_def()).map_err(|e| e.to_string())?)
        .map_err(|e| format!("live definition: {e}"))?;
    let argv: Vec<String> = serde_json::from_str(&std::fs::read_to_string(rd.argv()).map_err(|e| e.to_string())?)
        .map_err(|e| format!("qemu argv: {e}"))?;
    Ok((def, argv))
}

/// qemu removes the paths of its listening sockets when it exits; before it starts again
/// (the installed system's boot, a restart after a crash) the paths are bound anew and the
/// new listeners put at the fd numbers its argv names.
fn restore_socket_paths(rd: &RunDir, fds: &[RawFd]) -> Result<(), String> {
    use nix::sys::socket::{getsockname, UnixAddr};
    let ours = [rd.qmp(), rd.console_sock()];
    for &fd in fds {
        let Ok(addr) = getsockname::<UnixAddr>(fd) else { continue };
        let Some(path) = addr.path().map(PathBuf::from) else { continue };
        if !ours.contains(&path) || path.exists() {
            continue;
        }
        let l = crate::state::bind_private(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: dup2 onto an fd this process owns (the old listener, closed by it).
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&l), fd) } < 0 {
            return Err(format!("{}: {}", path.display(), std::io::Error::last_os_error()));
        }
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    }
    Ok(())
}

/// Start qemu (paused), connect its console and QMP, then let it run. qemu's sockets were
/// bound by `start` and are inherited: connections queue until qemu accepts them.
async fn launch(
    rd: &RunDir,
    argv: &[String],
    how: &Launch,
    hub: &Arc<Hub>,
) -> Result<(Qemu, QmpHandle, QmpEvents), String> {
    let log = crate::state::open_private(&rd.qemu_log(), false).map_err(|e| e.to_string())?;
    let qemu = crate::process::find_program("qemu-system-x86_64")
        .ok_or("cannot run qemu-system-x86_64: not found in PATH (is qemu-system-x86 installed?)")?;
    let mut cmd = Command::new(qemu);
    cmd.args(argv).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
    restore_socket_paths(rd, &how.fds)?;
    confine::release_image_locks(&how.fds);
    let (keep, creds, limit) = (how.fds.clone(), how.creds.clone(), crate::process::fd_limit());
    // SAFETY: setsid, set*id, prctl, close_range and fcntl are async-signal-safe. qemu runs
    // as its own user with no new privileges, in its own session (it outlives its supervisor:
    // nothing sent to the supervisor's process group reaches it), and gets only its own fds
    // (not the lock, not control.sock).
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            confine::enter(creds.as_ref())?;
            crate::process::inherit_only(&keep, limit)
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run qemu-system-x86_64: {e}"))?;
    // Recorded at once: a supervisor that dies from here on leaves a qemu the next command
    // can find (and, if it never ran, remove).
    if let Some(mut st) = rd.read_state() {
        st.set_qemu(child.id().and_then(|p| QemuId::of(p as i32)));
        let _ = rd.write_state(&st);
    }
    crate::fault::point("supervise.qemu-spawned");
    let connected = tokio::select! {
        r = tokio::time::timeout(STARTUP, connect_and_run(rd, hub)) => {
            r.unwrap_or_else(|_| Err(format!("qemu did not answer on QMP within {} s", STARTUP.as_secs())))
        }
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_default();
            return Err(format!("qemu exited ({status}):\n{}", RunDir::tail(&rd.qemu_log(), 6)));
        }
    };
    match connected {
        Ok((qmp, events)) => Ok((Qemu::Spawned(child), qmp, events)),
        Err(e) => {
            // qemu may have refused something after opening its sockets: its own words first.
            let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(s) => s.map(|s| s.to_string()).unwrap_or_default(),
                Err(_) => {
                    let _ = child.kill().await;
                    String::new()
                }
            };
            let said = RunDir::tail(&rd.qemu_log(), 6);
            Err(if said.is_empty() { e } else { format!("qemu exited ({status}):\n{said}") })
        }
    }
}

/// How long qemu may take from exec to its QMP greeting (a loaded host, TCG).
const STARTUP: Duration = Duration::from_secs(30);

async fn connect_and_run(rd: &RunDir, hub: &Arc<Hub>) -> Result<(QmpHandle, QmpEvents), String> {
    let (qmp, events) = connect_qemu(rd, hub).await?;
    // A VNC password: set before the guest runs (qemu refuses clients until then).
    if let Ok(pw) = std::fs::read_to_string(rd.dir.join(super::runtime::VNC_PASSWORD)) {
        use qapi::qmp::{SetPasswordOptions, SetPasswordOptionsBase, SetPasswordOptionsVnc};
        let base = SetPasswordOptionsBase { connected: None, password: pw.trim_end_matches('\n').to_string() };
        let opts = SetPasswordOptions::vnc { base, vnc: SetPasswordOptionsVnc { display: None } };
        qmp.execute(qapi::qmp::set_password(opts)).await.map_err(|e| format!("set_password: {e}"))?;
    }
    if std::fs::remove_file(rd.dir.join(super::runtime::START_PAUSED)).is_err() {
        qmp.execute(qapi::qmp::cont {}).await.map_err(|e| format!("cont: {e}"))?;
    }
    Ok((qmp, events))
}

/// Connect qemu's serial console (first: output from its first byte) and QMP. qemu serves
/// both sockets again after a supervisor that held them died.
async fn connect_qemu(rd: &RunDir, hub: &Arc<Hub>) -> Result<(QmpHandle, QmpEvents), String> {
    let console = UnixStream::connect(rd.console_sock()).await.map_err(|e| format!("console socket: {e}"))?;
    hub.attach_serial(console).await;
    let qmp_sock = UnixStream::connect(rd.qmp()).await.map_err(|e| format!("QMP socket: {e}"))?;
    let (qmp, events) = qmp::handshake(qmp_sock, STARTUP).await.map_err(|e| e.to_string())?;
    Ok((qmp.with_timeout(qmp::DEFAULT_TIMEOUT), events))
}

/// The guest address slirp leases on netdev `id`, from HMP `info network`'s `net=` (the
/// network address; slirp's DHCP starts at its 15th host address).
fn usernet_guest_addr(text: &str, id: &str) -> Option<std::net::Ipv4Addr> {
    let line = text.lines().find(|l| l.contains(&format!("{id}:")) && l.contains("type=user"))?;
    let net: std::net::Ipv4Addr = line.split(',').find_map(|kv| kv.trim().strip_prefix("net="))?.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(net) + 15))
}

/// Who may use the control socket: root and the supervisor's own user. The socket is 0600 in
/// a 0700 dir; this also refuses a peer that got past the file modes (CAP_DAC_OVERRIDE, an
/// fd handed over).
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream.peer_cred().map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == 0 || cred.uid() == me {
        return Ok(());
    }
    tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "control connection refused: not root nor uid {me}");
    Err(format!("permission denied: uid {} may not control this VM", cred.uid()))
}

/// Answer a refused peer's first line (read, bounded, so that it sees the answer rather than
/// a broken pipe) with the refusal, and hang up.
async fn refuse(stream: UnixStream, why: String) {
    use tokio::io::AsyncReadExt;
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(4096));
    let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let mut out = serde_json::to_vec(&Reply::err(why)).unwrap_or_default();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}

/// Accept control connections; each request goes to the main loop with a reply channel.
fn serve_control(rd: &RunDir, hub: Arc<Hub>) -> Result<mpsc::Receiver<Pending>, String> {
    let listener = crate::state::bind_private(&rd.control())
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(UnixListener::from_std)
        .map_err(|e| format!("control socket: {e}"))?;
    let (tx, rx) = mpsc::channel::<Pending>(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, hub) = (tx.clone(), hub.clone());
            tokio::spawn(async move {
                if let Err(e) = peer_allowed(&stream) {
                    return refuse(stream, e).await;
                }
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(Request::Console { force, readonly }) = serde_json::from_str::<Request>(&line) {
                        // The client sends nothing more until it has our reply: nothing is
                        // left in the line reader's buffer.
                        let Ok(stream) = lines.into_inner().into_inner().reunite(w) else { return };
                        hub.session(stream, force, readonly).await;
                        return;
                    }
                    let reply = match serde_json::from_str::<Request>(&line) {
                        Ok(req) => {
                            let (otx, orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                break;
                            }
                            orx.await.unwrap_or_else(|_| Reply::err("supervisor is exiting"))
                        }
                        Err(e) => Reply::err(format!("bad request: {e}")),
                    };
                    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                    out.push(b'\n');
                    if w.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(rx)
}

/// Client side: send one request to a VM's supervisor.
pub fn request(rd: &RunDir, req: &Request, timeout: Duration) -> Result<Reply, String> {
    use std::io::{BufRead, BufReader as StdBufReader};
    let mut s =
        std::os::unix::net::UnixStream::connect(rd.control()).map_err(|e| format!("supervisor not reachable: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    let mut line = serde_json::to_vec(req).expect("request serializes");
    line.push(b'\n');
    s.write_all(&line).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    StdBufReader::new(s).read_line(&mut reply).map_err(|e| format!("no reply from the supervisor: {e}"))?;
    serde_json::from_str(&reply).map_err(|e| format!("bad reply from the supervisor: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernet_address_is_the_15th_host_of_the_netdevs_network() {
        let text = "nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:00:00:02\r\n \\ net0: index=0,type=user,net=10.0.2.0,restrict=off\r\nnic1: index=0,type=nic,model=e1000,macaddr=52:54:00:00:00:03\r\n \\ net1: index=0,type=user,net=10.0.5.0,restrict=off\r\n";
        assert_eq!(usernet_guest_addr(text, "net0"), Some("10.0.2.15".parse().unwrap()));
        assert_eq!(usernet_guest_addr(text, "net1"), Some("10.0.5.15".parse().unwrap()));
        assert_eq!(usernet_guest_addr(text, "net2"), None);
    }

    #[test]
    fn control_protocol_has_no_raw_qmp_request() {
        let raw = r#"{"op":"qmp","command":"human-monitor-command","arguments":{"command-line":"info network"}}"#;
        assert!(serde_json::from_str::<Request>(raw).is_err());
        let typed = serde_json::to_string(&Request::UsernetAddrs).unwrap();
        assert!(matches!(serde_json::from_str(&typed).unwrap(), Request::UsernetAddrs));
    }
}
