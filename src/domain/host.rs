//! Host shutdown and the next boot, as libvirt-guests does them: `down` powers every
//! running VM off (ACPI, all in parallel), forces off the ones still running after a
//! timeout, and records which ran; the next `up` starts those again, autostart or not.
//!
//! The record (`<root>/resume-on-boot.toml`, written atomically under its own lock) is
//! written before any VM is touched, so that a host that goes down half-way still has it;
//! a second `down` adds to it rather than replacing it, and `up` takes off each VM it has
//! started (or that is running, or no longer defined), keeping the ones that failed.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lifecycle::{self, DomainError};
use super::runtime::{RunDir, VmState};
use crate::paths::Kind;
use crate::state::{ObjectLock, Store};

/// What `down` found and did to one VM.
#[derive(Debug)]
pub enum Outcome {
    /// The guest powered off within the timeout.
    PoweredOff,
    /// Still running after the timeout: stopped at once (quit, then SIGKILL).
    Forced,
    /// It had stopped by the time it was asked.
    AlreadyStopped,
    Failed(DomainError),
}

/// One VM's line in `down`'s report.
#[derive(Debug)]
pub struct Stopped {
    pub name: String,
    pub outcome: Outcome,
    /// Recorded to be started again by `up` (persistent VMs; a transient one is gone).
    pub recorded: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// The VMs `up` starts again.
    domains: BTreeSet<String>,
}

fn record_lock(store: &Store) -> Result<ObjectLock, DomainError> {
    let path = store.paths.locks_dir().join("resume-on-boot");
    ObjectLock::acquire(&path).map_err(|source| DomainError::Io { path, source })
}

fn read_record(store: &Store) -> Result<Record, DomainError> {
    let path = store.paths.resume_record();
    match std::fs::read_to_string(&path) {
        Ok(t) => toml::from_str(&t).map_err(|e| DomainError::Io { path, source: std::io::Error::other(e) }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(source) => Err(DomainError::Io { path, source }),
    }
}

fn write_record(store: &Store, r: &Record) -> Result<(), DomainError> {
    let path = store.paths.resume_record();
    if r.domains.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DomainError::Io { path, source: e }),
            _ => Ok(()),
        };
    }
    let text = format!(
        "# Written by `kvmctl down` (host shutdown): the VMs that ran, started again by `kvmctl up`.\n{}",
        toml::to_string(r).expect("record serializes")
    );
    crate::state::atomic_write(&path, text.as_bytes()).map_err(|source| DomainError::Io { path, source })
}

/// The VMs `down` recorded and `up` has not started yet.
pub fn to_resume(store: &Store) -> Result<BTreeSet<String>, DomainError> {
    let _l = record_lock(store)?;
    Ok(read_record(store)?.domains)
}

/// After `up`: keep on the record only the VMs that are defined and still not running.
pub fn settle(store: &Store) -> Result<(), DomainError> {
    let _l = record_lock(store)?;
    let mut r = read_record(store)?;
    r.domains.retain(|n| store.exists(Kind::Domain, n) && !RunDir::of(store, n).alive());
    write_record(store, &r)
}

/// The VMs running now (a dead supervisor's VM is adopted first, so that it counts), each
/// with the error that kept its qemu from being adopted, if one did (it may still run).
fn running(store: &Store) -> Result<Vec<(String, Option<DomainError>)>, DomainError> {
    let mut found = Vec::new();
    for (name, reconciled) in super::adopt::recover(store)? {
        let rd = RunDir::of(store, &name);
        let live =
            rd.read_state().is_some_and(|s| matches!(s.state, VmState::Running | VmState::Paused | VmState::Shutdown));
        match reconciled {
            Err(e) => found.push((name, Some(e))),
            Ok(_) if rd.alive() && live => found.push((name, None)),
            Ok(_) => {}
        }
    }
    Ok(found)
}

/// `down`: record the running VMs, power them all off at once, force off what still runs
/// after `timeout`. Every VM is tried, whatever happens to the others.
pub fn down(store: &Store, timeout: Duration) -> Result<Vec<Stopped>, DomainError> {
    let _l = record_lock(store)?;
    let found = running(store)?;
    let names: Vec<String> = found.iter().map(|(n, _)| n.clone()).collect();
    let mut record = read_record(store)?;
    let persistent: Vec<bool> = names.iter().map(|n| store.exists(Kind::Domain, n)).collect();
    record.domains.extend(names.iter().zip(&persistent).filter(|(_, p)| **p).map(|(n, _)| n.clone()));
    write_record(store, &record)?;
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let stopping: Vec<_> = found
            .into_iter()
            .map(|(n, failed)| match failed {
                Some(e) => Err(Outcome::Failed(e)),
                None => {
                    let name = n.clone();
                    Ok((s.spawn(move || stop_one(store, &name, timeout)), n))
                }
            })
            .collect();
        stopping
            .into_iter()
            .map(|h| match h {
                Err(failed) => failed,
                Ok((h, n)) => h.join().unwrap_or_else(|_| {
                    Outcome::Failed(DomainError::Invalid { name: n, what: "stopping it panicked".into() })
                }),
            })
            .collect()
    });
    Ok(names
        .into_iter()
        .zip(outcomes)
        .zip(persistent)
        .map(|((name, outcome), recorded)| Stopped { name, outcome, recorded })
        .collect())
}

fn stop_one(store: &Store, name: &str, timeout: Duration) -> Outcome {
    match lifecycle::shutdown(store, name, timeout) {
        Ok(true) => Outcome::PoweredOff,
        Ok(false) => Outcome::Forced,
        Err(DomainError::NotRunning(_)) => Outcome::AlreadyStopped,
        Err(e) => Outcome::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_what_up_has_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(crate::paths::Paths::resolve(Some(dir.path().to_path_buf()))).unwrap();
        assert!(to_resume(&store).unwrap().is_empty());
        let mut r = Record::default();
        r.domains.extend(["gone".to_string(), "web".to_string()]);
        write_record(&store, &r).unwrap();
        let text = std::fs::read_to_string(store.paths.resume_record()).unwrap();
        assert!(text.contains("domains = [\"gone\", \"web\"]"), "{text}");
        std::fs::write(store.paths.def_file(Kind::Domain, "web"), "name = \"web\"\n").unwrap();
        settle(&store).unwrap();
        assert_eq!(to_resume(&store).unwrap().into_iter().collect::<Vec<_>>(), ["web"], "undefined VMs go");
        std::fs::remove_file(store.paths.def_file(Kind::Domain, "web")).unwrap();
        settle(&store).unwrap();
        assert!(!store.paths.resume_record().exists(), "an empty record is no file");
    }
}
