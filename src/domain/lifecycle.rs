//! Starting and stopping VMs: taps into networks, the supervisor spawned detached, the stop
//! ladder (ACPI -> quit -> SIGKILL), and reading what is real.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::accel::{self, Accel};
use super::argv::{render, RenderEnv};
use super::definition::{DomainDef, Graphics, NicSource};
use super::runtime::{now_secs, NextBoot, QemuSockets, RunDir, RunState, VmState};
use super::supervisor::{self, Reply, Request};
use super::{adopt, confine, tap};
use crate::network::lifecycle as netlife;
use crate::network::netlink::Netlink;
use crate::network::NetworkDef;
use crate::paths::Kind;
use crate::state::{open_private, runtime_write, Revert, Store, StoreError, Undo};

#[derive(Debug, Error)]
pub enum DomainError {
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("domain '{0}' is already running")]
    Running(String),
    #[error("domain '{0}' is not running")]
    NotRunning(String),
    #[error("domain '{name}': {what}")]
    Invalid { name: String, what: String },
    #[error("domain '{name}': {source}")]
    Definition { name: String, source: super::validate::ValidateError },
    #[error("domain '{name}': network '{net}': {source}")]
    Network { name: String, net: String, source: Box<netlife::LifecycleError> },
    #[error("domain '{name}': {source}")]
    Accel { name: String, source: accel::AccelError },
    #[error("domain '{name}': {source}")]
    Confine { name: String, source: super::confine::ConfineError },
    #[error("domain '{name}': tap for NIC {index}: {source}")]
    Tap { name: String, index: usize, source: tap::TapError },
    #[error("domain '{name}' failed to start: {reason}")]
    StartFailed { name: String, reason: String },
    #[error("domain '{name}': {what}: {reason}")]
    Control { name: String, what: &'static str, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        DomainError::Store(Box::new(e))
    }
}

fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DomainError {
    let path = path.into();
    move |source| DomainError::Io { path, source }
}

fn invalid(name: &str, what: impl Into<String>) -> DomainError {
    DomainError::Invalid { name: name.into(), what: what.into() }
}

/// The definition to use for `name`: the running one if any, else the persistent one. A VM
/// whose supervisor died is adopted by a new one first (every command that reads a VM
/// passes here).
pub fn current_def(store: &Store, name: &str) -> Result<DomainDef, DomainError> {
    adopt::ensure_supervised(store, name);
    let rd = RunDir::of(store, name);
    if rd.alive() {
        if let Ok(t) = fs::read_to_string(rd.live_def()) {
            if let Ok(d) = toml::from_str(&t) {
                return Ok(d);
            }
        }
    }
    Ok(store.load(Kind::Domain, name)?)
}

/// A tap opened for one NIC and attached to its bridge.
struct NicTap {
    fd: OwnedFd,
    name: String,
}

/// Open and attach the taps of every tap-backed NIC, starting inactive networks first.
async fn open_taps(store: &Store, def: &DomainDef, notify: &dyn Fn(&str)) -> Result<Vec<Option<NicTap>>, DomainError> {
    let nl = Netlink::connect().map_err(|e| invalid(&def.name, e.to_string()))?;
    let mut taps = Vec::new();
    for (i, nic) in def.nics.iter().enumerate() {
        let (bridge, isolated, vlans) = match &nic.source {
            NicSource::User => {
                taps.push(None);
                continue;
            }
            NicSource::Network { network } => {
                let st = network_state(store, &nl, &def.name, network, notify).await?;
                let vlans = crate::network::vlan::guest_of(&st.def);
                (st.bridge, st.def.port_isolated, vlans)
            }
            NicSource::Bridge { bridge } => (bridge.clone(), false, vec![]),
        };
        let link = nl.link(&bridge).await.map_err(|e| invalid(&def.name, e.to_string()))?;
        let br = match link {
            Some(l) if l.kind.as_deref() == Some("bridge") => l.index,
            Some(_) => return Err(invalid(&def.name, format!("{bridge} is not a bridge"))),
            None => return Err(invalid(&def.name, format!("bridge {bridge} does not exist"))),
        };
        let t = tap::open_tap(Some("vnet%d")).map_err(|source| DomainError::Tap {
            name: def.name.clone(),
            index: i,
            source,
        })?;
        let idx = nl
            .link(t.name())
            .await
            .ok()
            .flatten()
            .map(|l| l.index)
            .ok_or_else(|| invalid(&def.name, format!("tap {} vanished", t.name())))?;
        nl.attach_port(idx, br, isolated, &vlans).await.map_err(|e| invalid(&def.name, e.to_string()))?;
        let name = t.name().to_string();
        taps.push(Some(NicTap { fd: t.into_fd(), name }));
    }
    Ok(taps)
}

/// The running state (bridge, definition) of a kvmctl network, starting the network if it is
/// inactive and repairing it if it is degraded.
async fn network_state(
    store: &Store,
    nl: &Netlink,
    vm: &str,
    net: &str,
    notify: &dyn Fn(&str),
) -> Result<netlife::NetState, DomainError> {
    let wrap = |source| DomainError::Network { name: vm.into(), net: net.into(), source: Box::new(source) };
    let healthy = || async { matches!(netlife::status(store, nl, net).await, Ok(netlife::Status::Active)) };
    if let Some(st) = netlife::load_state(store, net) {
        if healthy().await {
            return Ok(st);
        }
    }
    let _l = store.lock(Kind::Network, net)?;
    if let Some(st) = netlife::load_state(store, net) {
        if healthy().await {
            return Ok(st);
        }
        // Degraded (a kill during its start, a piece removed by hand): repair it first.
        let (st, report) = netlife::start_or_repair(store, nl, &st.def, st.transient).await.map_err(wrap)?;
        notify(&format!("Network '{net}' was degraded ({}): repaired", report.repaired.join("; ")));
        return Ok(st);
    }
    let def: NetworkDef = store.load(Kind::Network, net).map_err(|e| wrap(e.into()))?;
    notify(&format!("Network '{net}' is not active: starting it"));
    let st = netlife::start(store, nl, &def, false).await.map_err(wrap)?;
    Ok(st)
}

/// Start a VM: resolve the accelerator, wire taps, spawn the supervisor, wait until running.
pub fn start(store: &Store, def: &DomainDef, transient: bool, notify: &dyn Fn(&str)) -> Result<RunState, DomainError> {
    start_inner(store, def, None, transient, false, notify)
}

/// `start --paused`: as [`start`], with the vCPUs left stopped (`resume` runs them).
pub fn start_paused(store: &Store, def: &DomainDef, notify: &dyn Fn(&str)) -> Result<RunState, DomainError> {
    start_inner(store, def, None, false, true, notify)
}

/// How an install's first boot hands over to the installed system.
#[derive(Debug, Clone, Copy)]
pub struct Phase<'a> {
    pub next: &'a DomainDef,
    pub noreboot: bool,
    pub poweroff_stops: bool,
}

/// Start an install's first boot (`def`); when it ends, the supervisor boots `phase.next`
/// (or stops, with --noreboot).
pub fn start_phased(
    store: &Store,
    def: &DomainDef,
    phase: Option<Phase>,
    transient: bool,
    notify: &dyn Fn(&str),
) -> Result<RunState, DomainError> {
    start_inner(store, def, phase, transient, false, notify)
}

fn start_inner(
    store: &Store,
    def: &DomainDef,
    phase: Option<Phase>,
    transient: bool,
    paused: bool,
    notify: &dyn Fn(&str),
) -> Result<RunState, DomainError> {
    let name = &def.name;
    let rd = RunDir::of(store, name);
    adopt::reconcile_vm(store, name)?;
    wait_exiting(&rd);
    if rd.alive() {
        return Err(DomainError::Running(name.clone()));
    }
    // A definition file may be hand-written: what define and install refuse, start refuses too.
    super::validate::check(store, def, super::validate::Purpose::Start)?;
    if let Some(p) = &phase {
        super::validate::check(store, p.next, super::validate::Purpose::Start)?;
    }
    let verdict = accel::probe(&store.paths.run);
    let res =
        accel::resolve(def.accel, &verdict).map_err(|source| DomainError::Accel { name: name.clone(), source })?;
    if let Some(n) = &res.notice {
        notify(n);
    }
    let taps = if def.nics.iter().all(|n| n.source == NicSource::User) {
        def.nics.iter().map(|_| None).collect()
    } else {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io_at("tokio"))?;
        rt.block_on(open_taps(store, def, notify))?
    };
    crate::fault::point("start.taps");
    // qemu opens nothing by name and runs as its own user: open what it needs here.
    let confine_err = |source| DomainError::Confine { name: name.clone(), source };
    let creds = confine::qemu_creds().map_err(confine_err)?;
    let boots: Vec<&DomainDef> = std::iter::once(def).chain(phase.map(|p| p.next)).collect();
    let files = confine::open(&boots, &crate::storage::pool::backing_policy(store), true).map_err(confine_err)?;
    crate::fault::point("start.files");
    rd.create().map_err(io_at(&rd.dir))?;
    // Until the supervisor holds the VM's lock, a failure or a kill leaves no socket behind
    // (the caller holds the domain's lock: the journal is replayed by the next command).
    let mut revert = Revert::journaled(&store.paths, Kind::Domain, name, "start").map_err(io_at(&rd.dir))?;
    revert.done_if_locked(rd.lock()).map_err(io_at(&rd.dir))?;
    for p in [rd.qmp(), rd.console_sock()] {
        revert.add(Undo::File(p)).map_err(io_at(&rd.dir))?;
    }
    let socks = rd.bind_qemu_sockets().map_err(io_at(&rd.dir))?;
    let fds: Vec<Option<i32>> = taps.iter().map(|t| t.as_ref().map(|t| t.fd.as_raw_fd())).collect();
    let env = |files| RenderEnv {
        accel: res.accel,
        qmp_fd: socks.qmp.as_raw_fd(),
        serial_fd: socks.console.as_raw_fd(),
        tap_fds: &fds,
        files,
        vnc_display: vnc_display(store, name),
    };
    let unsafe_value =
        |source| DomainError::Definition { name: name.clone(), source: super::validate::ValidateError::Argv(source) };
    let argv = render(def, &env(&files.handed[0])).map_err(unsafe_value)?;
    let domain_id = super::runtime::next_domain_id(store).ok();
    write_run_files(&rd, def, &argv, &taps, res.accel, transient, domain_id)?;
    hand_vnc_password(store, &rd, def)?;
    crate::fault::point("start.run-files");
    let _ = fs::remove_file(rd.next_boot());
    let marker = rd.dir.join(super::runtime::START_PAUSED);
    if paused {
        runtime_write(&marker, b"").map_err(io_at(&marker))?;
    } else {
        let _ = fs::remove_file(&marker);
    }
    if let Some(p) = phase {
        let nb = NextBoot {
            argv: render(p.next, &env(&files.handed[1])).map_err(unsafe_value)?,
            def: p.next.clone(),
            noreboot: p.noreboot,
            poweroff_stops: p.poweroff_stops,
        };
        let text = serde_json::to_string(&nb).expect("next boot serializes");
        runtime_write(&rd.next_boot(), text.as_bytes()).map_err(io_at(rd.next_boot()))?;
    }
    let reply = spawn_supervisor(&rd, name, &taps, &socks, &files, creds.as_ref())?;
    revert.commit();
    drop((taps, socks, files));
    Ok(reply)
}

/// A supervisor that has recorded its VM's end (stopped, no qemu) is about to exit: give it a
/// moment to let go of the VM (a `start` right after the VM's stop event, or its state).
fn wait_exiting(rd: &RunDir) {
    let ending = || {
        rd.read_state().is_some_and(|s| {
            matches!(s.state, VmState::Shutoff | VmState::Crashed) && s.qemu_pid.is_none() && s.reason != "starting"
        })
    };
    let t0 = Instant::now();
    while rd.alive() && ending() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_run_files(
    rd: &RunDir,
    def: &DomainDef,
    argv: &[String],
    taps: &[Option<NicTap>],
    accel: Accel,
    transient: bool,
    domain_id: Option<u32>,
) -> Result<(), DomainError> {
    let def_text = toml::to_string_pretty(def).map_err(|e| invalid(&def.name, e.to_string()))?;
    runtime_write(&rd.live_def(), def_text.as_bytes()).map_err(io_at(rd.live_def()))?;
    let argv_text = serde_json::to_string(argv).expect("argv serializes");
    runtime_write(&rd.argv(), argv_text.as_bytes()).map_err(io_at(rd.argv()))?;
    // A new boot, a new console log (the previous one is kept as console.log.1).
    let previous = rd.dir.join("console.log.1");
    if fs::rename(rd.console_log(), &previous).is_ok() {
        open_private(&previous, false).map_err(io_at(&previous))?;
    }
    for p in [rd.qemu_log(), rd.console_log()] {
        open_private(&p, true).map_err(io_at(&p))?;
    }
    let st = RunState {
        state: VmState::Shutoff,
        reason: "starting".into(),
        supervisor_pid: 0,
        qemu_pid: None,
        qemu_start_time: None,
        accel: accel.as_str().into(),
        started_at: now_secs(),
        taps: taps.iter().flatten().map(|t| t.name.clone()).collect(),
        transient,
        restarts: 0,
        stopping: None,
        adoptions: 0,
        domain_id,
    };
    rd.write_state(&st).map_err(io_at(rd.state()))
}

/// A VNC password goes to the supervisor in the private run dir; it sets it over QMP before
/// the guest runs.
fn hand_vnc_password(store: &Store, rd: &RunDir, def: &DomainDef) -> Result<(), DomainError> {
    let dest = rd.dir.join(super::runtime::VNC_PASSWORD);
    if !matches!(def.graphics, Graphics::Vnc { password: true, .. }) {
        let _ = std::fs::remove_file(&dest);
        return Ok(());
    }
    let src = store.paths.vnc_password(&def.name);
    let pw = std::fs::read(&src).map_err(|e| {
        invalid(
            &def.name,
            format!(
                "its VNC password cannot be read from {} ({e}); install the VM again with --graphics vnc,password=...",
                src.display()
            ),
        )
    })?;
    runtime_write(&dest, &pw).map_err(io_at(&dest))
}

/// VNC display numbers: one per running VM, from the VM's position among defined names.
fn vnc_display(store: &Store, name: &str) -> u16 {
    store.list(Kind::Domain).ok().and_then(|l| l.iter().position(|n| n == name)).unwrap_or(0) as u16
}

/// Spawn `kvmctl __supervise` detached (own session), passing the taps, and wait for its word.
fn spawn_supervisor(
    rd: &RunDir,
    name: &str,
    taps: &[Option<NicTap>],
    socks: &QemuSockets,
    files: &confine::Opened,
    creds: Option<&confine::Creds>,
) -> Result<RunState, DomainError> {
    // The VM's lock is taken here and handed to the supervisor: from this instant until the
    // supervisor exits, someone holds it, whenever this command dies.
    let lock = crate::state::try_lock_exclusive(&rd.lock())
        .map_err(io_at(rd.lock()))?
        .ok_or_else(|| DomainError::Running(name.into()))?;
    let for_qemu: Vec<i32> = taps
        .iter()
        .flatten()
        .map(|t| t.fd.as_raw_fd())
        .chain([socks.qmp.as_raw_fd(), socks.console.as_raw_fd()])
        .chain(files.raw_fds())
        .collect();
    let qemu_fds = for_qemu.iter().map(|fd| fd.to_string()).collect::<Vec<_>>().join(",");
    let mut args = vec!["--qemu-fds".to_string(), qemu_fds];
    args.extend(creds.map(|c| ["--qemu-creds".to_string(), c.to_arg()]).into_iter().flatten());
    args.extend(["--lock-fd".to_string(), lock.as_raw_fd().to_string()]);
    let keep: Vec<i32> = for_qemu.iter().copied().chain([lock.as_raw_fd()]).collect();
    let word = spawn_detached(rd, &args, &keep)?;
    // The supervisor holds the lock now (or has died and released it).
    drop(lock);
    match word.trim_end().strip_prefix("ERR ") {
        None if word.starts_with("OK") => Ok(rd.read_state().unwrap_or_else(|| panic!("state.json of a running VM"))),
        Some(reason) => Err(DomainError::StartFailed { name: name.into(), reason: reason.into() }),
        None => {
            // It may have left a qemu behind (never resumed): the next reconcile removes it.
            let _ = super::adopt::reconcile(rd, name);
            Err(DomainError::StartFailed {
                name: name.into(),
                reason: format!("the supervisor died: {}", RunDir::tail(&rd.supervisor_log(), 5)),
            })
        }
    }
}

/// Spawn `kvmctl __supervise --dir DIR --ready-fd N ARGS..` detached (own session), handing it
/// the fds `keep`, and return its word on the ready pipe (empty if it died first).
pub(super) fn spawn_detached(rd: &RunDir, extra: &[String], keep: &[i32]) -> Result<String, DomainError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_at("pipe")(e.into()))?;
    let keep: Vec<i32> = keep.iter().copied().chain([write_end.as_raw_fd()]).collect();
    let log = open_private(&rd.supervisor_log(), false).map_err(io_at(rd.supervisor_log()))?;
    let exe = std::env::current_exe().map_err(io_at("/proc/self/exe"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["__supervise", "--dir"])
        .arg(&rd.dir)
        .args(["--ready-fd", &write_end.as_raw_fd().to_string()])
        .args(extra)
        .env("KVMCTL_LOG", std::env::var("KVMCTL_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let limit = crate::process::fd_limit();
    // SAFETY: only async-signal-safe calls (setsid, close_range, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // The supervisor gets the taps, qemu's sockets and the ready pipe; nothing this
            // command inherited (a caller's lock, a pipe) outlives it in the VM's processes.
            crate::process::inherit_only(&keep, limit)
        });
    }
    let mut child = cmd.spawn().map_err(io_at("kvmctl __supervise"))?;
    drop(write_end);
    crate::fault::point("start.spawned");
    let mut word = String::new();
    let _ = fs::File::from(read_end).read_to_string(&mut word);
    // The supervisor outlives this command (own session); init reaps it when it exits.
    let _ = child.try_wait();
    Ok(word)
}

/// Send a request to a running VM's supervisor.
pub fn control(store: &Store, name: &str, req: Request, what: &'static str) -> Result<Reply, DomainError> {
    let rd = RunDir::of(store, name);
    adopt::reconcile_vm(store, name)?;
    if !rd.alive() {
        return Err(DomainError::NotRunning(name.into()));
    }
    let reply = supervisor::request(&rd, &req, Duration::from_secs(15)).map_err(|reason| DomainError::Control {
        name: name.into(),
        what,
        reason,
    })?;
    if !reply.ok {
        return Err(DomainError::Control { name: name.into(), what, reason: reply.error.unwrap_or_default() });
    }
    Ok(reply)
}

/// Wait until the VM has stopped (its supervisor gone after recording so); false on timeout.
/// A supervisor that dies meanwhile is replaced, and the wait goes on with the new one.
pub fn wait_stopped(store: &Store, name: &str, timeout: Duration) -> bool {
    let rd = RunDir::of(store, name);
    let t0 = Instant::now();
    loop {
        if !rd.alive() {
            let stopped = rd
                .read_state()
                .is_none_or(|s| matches!(s.state, VmState::Shutoff | VmState::Crashed) && s.qemu_pid.is_none());
            if stopped {
                return true;
            }
            match adopt::reconcile_vm(store, name) {
                Ok(adopt::Reconciled::Adopted { .. } | adopt::Reconciled::Supervised) => {}
                Ok(_) => return true,
                Err(e) => {
                    tracing::warn!("{e}");
                    return false;
                }
            }
        }
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `destroy`: quit -> SIGKILL in the supervisor; if the supervisor itself is stuck, kill it,
/// then its qemu (which outlives it).
pub fn destroy(store: &Store, name: &str) -> Result<(), DomainError> {
    let rd = RunDir::of(store, name);
    adopt::reconcile_vm(store, name)?;
    if !rd.alive() {
        return Err(DomainError::NotRunning(name.into()));
    }
    let asked = supervisor::request(&rd, &Request::Destroy, Duration::from_secs(10)).is_ok();
    crate::fault::point("destroy.requested");
    if asked && wait_stopped(store, name, Duration::from_secs(10)) {
        return finish_transient(store, name);
    }
    if let Some(pid) = rd.read_state().map(|s| s.supervisor_pid).filter(|p| is_our_supervisor(*p, &rd)) {
        // SAFETY: kill(2) on a pid verified through /proc to be this VM's supervisor.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let t0 = Instant::now();
    while rd.alive() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if rd.alive() {
        return Err(DomainError::Control {
            name: name.into(),
            what: "destroy",
            reason: "the supervisor does not stop".into(),
        });
    }
    if !adopt::kill_recorded_qemu(&rd) {
        return Err(DomainError::Control { name: name.into(), what: "destroy", reason: "qemu does not stop".into() });
    }
    let mut st = rd.read_state().unwrap_or_else(|| panic!("state.json"));
    let prev = st.state;
    st.state = VmState::Shutoff;
    st.reason = "destroyed".into();
    st.set_qemu(None);
    st.stopping = None;
    rd.write_state(&st).map_err(io_at(rd.state()))?;
    super::journal::transition(&rd, prev, VmState::Shutoff, "destroyed", false);
    adopt::remove_sockets(&rd);
    finish_transient(store, name)
}

/// `destroy --graceful`: QMP quit only; a qemu that does not go is left running, with the
/// reason.
pub fn destroy_graceful(store: &Store, name: &str) -> Result<(), DomainError> {
    let rd = RunDir::of(store, name);
    adopt::reconcile_vm(store, name)?;
    if !rd.alive() {
        return Err(DomainError::NotRunning(name.into()));
    }
    // The supervisor exits with qemu, often before its reply is read: only a refusal counts.
    if let Ok(reply) = supervisor::request(&rd, &Request::DestroyGraceful, Duration::from_secs(20)) {
        if !reply.ok {
            let reason = reply.error.unwrap_or_default();
            return Err(DomainError::Control { name: name.into(), what: "destroy --graceful", reason });
        }
    }
    if !wait_stopped(store, name, Duration::from_secs(10)) {
        return Err(DomainError::Control {
            name: name.into(),
            what: "destroy --graceful",
            reason: "the supervisor did not record the stop".into(),
        });
    }
    finish_transient(store, name)
}

fn is_our_supervisor(pid: i32, rd: &RunDir) -> bool {
    let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    args.contains(&b"__supervise".as_slice()) && args.contains(&rd.dir.as_os_str().as_encoded_bytes())
}

/// `shutdown`: ACPI power button, wait, then escalate (quit -> SIGKILL).
pub fn shutdown(store: &Store, name: &str, timeout: Duration) -> Result<bool, DomainError> {
    control(store, name, Request::Shutdown, "shutdown")?;
    crate::fault::point("shutdown.requested");
    if wait_stopped(store, name, timeout) {
        finish_transient(store, name)?;
        return Ok(true);
    }
    destroy(store, name)?;
    Ok(false)
}

/// A transient VM stops existing when it stops.
pub(super) fn finish_transient(store: &Store, name: &str) -> Result<(), DomainError> {
    let rd = RunDir::of(store, name);
    if rd.read_state().is_some_and(|s| s.transient) && !store.exists(Kind::Domain, name) {
        fs::remove_dir_all(&rd.dir).map_err(io_at(&rd.dir))?;
    }
    Ok(())
}
