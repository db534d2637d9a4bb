//! A VM's lifecycle events in the root's event journal ([`crate::events`]): which state
//! change is which event (pure, below), and the helpers the supervisor and the commands
//! call.

use super::definition::{DomainDef, NicSource};
use super::runtime::{RunDir, VmState};
use crate::events::{self, What};
use crate::state::Store;

/// The runtime dir (`<run>`) a VM's run dir (`<run>/domains/<name>`) belongs to, and its name.
fn run_of(rd: &RunDir) -> Option<(&std::path::Path, &str)> {
    Some((rd.dir.parent()?.parent()?, rd.dir.file_name()?.to_str()?))
}

/// Record `what` for the VM of `rd`.
pub fn emit(rd: &RunDir, what: What, detail: &str) {
    if let Some((run, name)) = run_of(rd) {
        events::domain(run, name, what, detail);
    }
}

/// Record the event of a state change from `prev` to `next` (with `next`'s reason), if it
/// is one. `asked`: the host asked the guest to power off (`shutdown`).
pub fn transition(rd: &RunDir, prev: VmState, next: VmState, reason: &str, asked: bool) {
    if let Some((what, detail)) = event_of(prev, next, reason, asked) {
        emit(rd, what, &detail);
    }
}

/// Which event a state change is: `(event, detail)`, or None when it is none (a stop
/// recorded twice, a reason that is no lifecycle change).
pub fn event_of(prev: VmState, next: VmState, reason: &str, asked: bool) -> Option<(What, String)> {
    use VmState::*;
    let stopped = |s| matches!(s, Shutoff | Crashed);
    if stopped(prev) && stopped(next) {
        return None; // already recorded as stopped (destroy: the request, then qemu's exit)
    }
    let poweroff = if asked { "poweroff (ACPI shutdown)" } else { "guest poweroff" };
    let (what, detail) = match (next, reason) {
        (Paused, r) if prev != Paused => (What::Paused, r.to_string()),
        (Paused, _) => return None,
        (Running, "unpaused") => (What::Resumed, "unpaused".into()),
        (Running, "booted") => (What::Started, "booted".into()),
        (Running, "installed, booted from disk") => (What::Started, "installed system booted from disk".into()),
        (Running, "rebooted") => (What::Rebooted, String::new()),
        (Running, "shutdown") => (What::Rebooted, format!("{poweroff}; restarted (on_poweroff=restart)")),
        (Running, "crashed") => (What::Crashed, "guest panicked; restarted (on_crash=restart)".into()),
        (Running, "crashed, restarted") => {
            (What::Crashed, "qemu exited unexpectedly; restarted (on_crash=restart)".into())
        }
        (Running, _) => return None,
        (Shutdown, "rebooted") => (What::Shutdown, "guest reboot; qemu kept (on_reboot=preserve)".into()),
        (Shutdown, _) => (What::Shutdown, format!("{poweroff}; qemu kept (on_poweroff=preserve)")),
        (Crashed, "crashed") => (What::Crashed, "guest panicked; qemu kept (on_crash=preserve)".into()),
        (Crashed, r) => (What::Crashed, r.strip_prefix("crashed: ").unwrap_or(r).to_string()),
        (Shutoff, "destroyed") => (What::Shutdown, "destroyed".into()),
        (Shutoff, "shutdown") => (What::Shutdown, poweroff.into()),
        (Shutoff, "rebooted") => (What::Shutdown, "guest reboot (on_reboot=destroy)".into()),
        (Shutoff, "crashed") => (What::Crashed, "guest panicked (on_crash=destroy)".into()),
        (Shutoff, r) => (What::Shutdown, r.to_string()),
    };
    Some((what, detail))
}

/// The running VM whose NIC on network `net` has MAC `mac` (for lease events).
pub fn owner_of_mac(store: &Store, net: &str, mac: &str) -> Option<String> {
    let dir = store.paths.run_dir(crate::paths::Kind::Domain);
    let mut names: Vec<String> =
        std::fs::read_dir(dir).ok()?.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    names.into_iter().find(|vm| {
        let rd = RunDir::of(store, vm);
        let def = std::fs::read_to_string(rd.live_def()).ok().and_then(|t| toml::from_str::<DomainDef>(&t).ok());
        def.is_some_and(|d| {
            d.nics.iter().any(|n| {
                matches!(&n.source, NicSource::Network { network } if network == net)
                    && n.mac.to_string().eq_ignore_ascii_case(mac)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmState::*;

    #[test]
    fn state_changes_are_virsh_events() {
        let e = |p, n, r| event_of(p, n, r, false);
        assert_eq!(e(Shutoff, Running, "booted"), Some((What::Started, "booted".into())));
        assert_eq!(e(Running, Paused, "user"), Some((What::Paused, "user".into())));
        assert_eq!(e(Paused, Running, "unpaused"), Some((What::Resumed, "unpaused".into())));
        assert_eq!(e(Running, Running, "rebooted"), Some((What::Rebooted, String::new())));
        assert_eq!(e(Running, Shutoff, "shutdown"), Some((What::Shutdown, "guest poweroff".into())));
        assert_eq!(
            event_of(Running, Shutoff, "shutdown", true),
            Some((What::Shutdown, "poweroff (ACPI shutdown)".into()))
        );
        assert_eq!(e(Paused, Shutoff, "destroyed"), Some((What::Shutdown, "destroyed".into())));
        assert_eq!(e(Shutoff, Shutoff, "destroyed"), None, "destroy's second record is no event");
        assert_eq!(
            e(Running, Crashed, "crashed: qemu signal: 9 (SIGKILL)"),
            Some((What::Crashed, "qemu signal: 9 (SIGKILL)".into()))
        );
        assert_eq!(e(Running, Shutoff, "crashed"), Some((What::Crashed, "guest panicked (on_crash=destroy)".into())));
        assert_eq!(e(Running, Crashed, "crashed").unwrap().0, What::Crashed);
        assert_eq!(e(Running, Running, "crashed, restarted").unwrap().0, What::Crashed);
        assert_eq!(e(Running, Shutdown, "shutdown").unwrap().0, What::Shutdown);
        assert_eq!(e(Running, Running, "adopted"), None);
    }
}
