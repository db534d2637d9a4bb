//! Re-adoption. qemu outlives its supervisor (no parent-death signal, its own session): when
//! a supervisor dies (a bug, an OOM kill, `kill -9`), the next command that touches the VM
//! finds its lock free while `state.json` says it runs, and starts a new supervisor with
//! `--adopt`. That one takes the lock, verifies the recorded qemu (pidfd, start time,
//! `-uuid` on its command line: never a bare pid), reconnects QMP and the serial console
//! (console.log goes on) and answers `control.sock` again; the qemu pid does not change. A
//! qemu that died meanwhile is recorded as crashed (shut off if it was being stopped), and
//! the VM's sockets and lock file are removed; its taps went with it.

use std::time::{Duration, Instant};

use super::definition::DomainDef;
use super::lifecycle::{self, DomainError};
use super::qemu;
use super::runtime::{RunDir, RunState, VmState};
use crate::paths::Kind;
use crate::state::{ObjectLock, Store};

/// What [`reconcile`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// A supervisor holds the VM: nothing to do.
    Supervised,
    /// Not running, and nothing recorded that needs repair.
    NotRunning,
    /// A new supervisor took over the running qemu.
    Adopted { qemu_pid: i32 },
    /// qemu had exited while no supervisor watched it: recorded and cleaned up.
    Ended { state: VmState, reason: String },
}

/// With no supervisor holding the lock, does this record need one to look at it? A running
/// state, or a qemu still recorded (a supervisor that died while starting or stopping it).
fn orphaned(st: &RunState) -> bool {
    matches!(st.state, VmState::Running | VmState::Paused | VmState::Shutdown) || st.qemu_pid.is_some()
}

/// Give the VM of `rd` a supervisor again if its supervisor died.
pub fn reconcile(rd: &RunDir, name: &str) -> Result<Reconciled, DomainError> {
    if rd.alive() {
        return Ok(Reconciled::Supervised);
    }
    match rd.read_state() {
        Some(st) if orphaned(&st) => {}
        _ => return Ok(Reconciled::NotRunning),
    }
    let word = lifecycle::spawn_detached(rd, &["--adopt".to_string()], &[])?;
    let word = word.trim_end();
    if word == "OK" {
        let qemu_pid = rd.read_state().and_then(|s| s.qemu_pid).unwrap_or_default();
        return Ok(Reconciled::Adopted { qemu_pid });
    }
    if word.starts_with("GONE") {
        let st = rd.read_state();
        return Ok(Reconciled::Ended {
            state: st.as_ref().map(|s| s.state).unwrap_or(VmState::Crashed),
            reason: st.map(|s| s.reason).unwrap_or_default(),
        });
    }
    // Another command's new supervisor got the lock first: it is the VM's supervisor now.
    if answering(rd, Duration::from_secs(30)) {
        return Ok(Reconciled::Supervised);
    }
    let reason = match word.strip_prefix("ERR ") {
        Some(why) => why.to_string(),
        None => format!("the new supervisor died: {}", RunDir::tail(&rd.supervisor_log(), 3)),
    };
    Err(DomainError::Control { name: name.into(), what: "re-adopting its qemu", reason })
}

/// Wait while a supervisor holds the lock but has not bound control.sock yet; true once one
/// holds the lock and answers.
fn answering(rd: &RunDir, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while rd.alive() && !rd.control().exists() && t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(20));
    }
    rd.alive() && rd.control().exists()
}

/// [`reconcile`] `name`; a transient VM whose qemu had exited stops existing.
pub fn reconcile_vm(store: &Store, name: &str) -> Result<Reconciled, DomainError> {
    if crate::names::validate("domain", name).is_err() {
        return Ok(Reconciled::NotRunning); // no such VM: the caller says so in its own words
    }
    let r = reconcile(&RunDir::of(store, name), name)?;
    if matches!(r, Reconciled::Ended { .. }) {
        lifecycle::finish_transient(store, name)?;
    }
    Ok(r)
}

/// For commands that go on whatever happened: [`reconcile_vm`], a failure logged (the state
/// then reads "crashed (supervisor gone)" and the next command tries again).
pub fn ensure_supervised(store: &Store, name: &str) {
    if let Err(e) = reconcile_vm(store, name) {
        tracing::warn!("{e}");
    }
}

/// One VM's outcome in [`recover`].
pub type Recovered = (String, Result<Reconciled, DomainError>);

/// `recover`: reconcile every VM that has a runtime dir (defined or transient).
pub fn recover(store: &Store) -> Result<Vec<Recovered>, DomainError> {
    let mut names = store.list(Kind::Domain)?;
    if let Ok(entries) = std::fs::read_dir(store.paths.run_dir(Kind::Domain)) {
        names.extend(entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)));
    }
    names.sort();
    names.dedup();
    let names = names.into_iter().filter(|n| crate::names::validate("domain", n).is_ok());
    Ok(names.map(|n| (n.clone(), reconcile_vm(store, &n))).collect())
}

/// SIGKILL the qemu recorded for `rd`, if it is still that process, and wait for it to go
/// (for a `destroy` whose supervisor had to be killed: qemu does not die with it).
pub(super) fn kill_recorded_qemu(rd: &RunDir) -> bool {
    let Some(id) = rd.read_state().and_then(|s| s.qemu_id()) else { return true };
    let def: Option<DomainDef> = std::fs::read_to_string(rd.live_def()).ok().and_then(|t| toml::from_str(&t).ok());
    let Some(def) = def else { return true };
    match qemu::verify(id, &def.uuid.to_string()) {
        Ok(fd) => qemu::pidfd_kill(&fd, libc::SIGKILL).is_ok() && qemu::pidfd_wait(&fd, Duration::from_secs(10)),
        Err(_) => true,
    }
}

/// The runtime sockets of a VM whose qemu is gone.
pub(super) fn remove_sockets(rd: &RunDir) {
    for p in [rd.control(), rd.qmp(), rd.console_sock()] {
        let _ = std::fs::remove_file(p);
    }
}

/// Record the end of a qemu that exited while no supervisor watched it: shut off if it was
/// being stopped (or had powered off), crashed otherwise; sockets and lock file removed.
pub(super) fn unsupervised_end(rd: &RunDir, mut st: RunState, lock: ObjectLock) -> RunState {
    let prev = st.state;
    match st.state {
        VmState::Shutoff | VmState::Crashed if st.reason == "starting" => {
            st.state = VmState::Shutoff;
            st.reason = "failed: the supervisor died while starting qemu".into();
        }
        VmState::Shutoff | VmState::Crashed => {}
        VmState::Shutdown => (st.state, st.reason) = (VmState::Shutoff, "shutdown".into()),
        _ => match st.stopping.take() {
            Some(why) => (st.state, st.reason) = (VmState::Shutoff, why),
            None => {
                (st.state, st.reason) = (VmState::Crashed, "crashed: qemu exited while its supervisor was gone".into())
            }
        },
    }
    st.set_qemu(None);
    st.stopping = None;
    remove_sockets(rd);
    if let Err(e) = rd.write_state(&st) {
        tracing::error!(error = %e, "cannot write state.json");
    }
    let _ = lock.remove_file(&rd.lock());
    super::journal::transition(rd, prev, st.state, &st.reason, false);
    st
}
