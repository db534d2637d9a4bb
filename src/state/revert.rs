//! One rollback guard for every multi-step operation, in the spirit of Incus's `revert`: each
//! step registers how to undo it *before* it runs; [`Revert::commit`] keeps everything, while
//! an error return or a panic (the guard drops uncommitted) undoes the steps in reverse order.
//! A failed undo step is reported on stderr, never hidden.
//!
//! A journaled guard ([`Revert::journaled`]) also writes the steps that are data (files and
//! directories it is about to create) to a journal beside the object's lock, before each
//! effect. A kill -9 leaves the journal; the next command that takes that object's lock (or
//! lists its kind) finds it and undoes what it lists — or keeps it all when the operation had
//! passed its point of no return (a VM whose supervisor holds its lock runs: it was started).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::atomic_write;
use super::lock::try_lock_exclusive;
use crate::paths::{Kind, Paths};

/// An undo step that survives the process: remove what the operation was about to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "remove", content = "path")]
pub enum Undo {
    File(PathBuf),
    Dir(PathBuf),
}

impl Undo {
    fn path(&self) -> &Path {
        match self {
            Undo::File(p) | Undo::Dir(p) => p,
        }
    }

    /// Remove it; already gone is fine (the effect may never have happened).
    fn run(&self) -> io::Result<()> {
        let r = match self {
            Undo::File(p) => fs::remove_file(p),
            Undo::Dir(p) => fs::remove_dir_all(p),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// The journal of an operation in progress: `<locks>/<kind>.<name>.<op>.journal` (one per
/// operation: an install journals its start too).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Doc {
    /// What was running, for the report: "install", "clone".
    op: String,
    undo: Vec<Undo>,
    /// The operation is complete once this lock file is held by someone (a VM's supervisor).
    #[serde(default)]
    done_if_locked: Option<PathBuf>,
}

type AsyncStep<'a> =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + 'a>> + 'a>;

enum Step<'a> {
    Data(Undo),
    Fn(String, Box<dyn FnOnce() -> Result<(), String> + 'a>),
    /// Only [`Revert::undo_async`] runs these (a guard dropped with one left says so).
    Async(String, AsyncStep<'a>),
}

/// The guard. Steps run in reverse order unless committed.
pub struct Revert<'a> {
    steps: Vec<Step<'a>>,
    journal: Option<(PathBuf, Doc)>,
    done_if_locked: Option<PathBuf>,
    armed: bool,
}

impl Default for Revert<'_> {
    fn default() -> Self {
        Revert::new()
    }
}

fn journal_path(paths: &Paths, kind: Kind, name: &str, op: &str) -> PathBuf {
    paths.locks_dir().join(format!("{}.{name}.{op}.journal", kind.noun()))
}

/// `(name, op)` of every journal of `kind`.
fn journals(paths: &Paths, kind: Kind) -> Vec<(String, String)> {
    let prefix = format!("{}.", kind.noun());
    let Ok(rd) = fs::read_dir(paths.locks_dir()) else { return vec![] };
    rd.flatten()
        .filter_map(|e| {
            let f = e.file_name();
            let rest = f.to_str()?.strip_prefix(&prefix)?.strip_suffix(".journal")?;
            let (name, op) = rest.rsplit_once('.')?;
            Some((name.to_string(), op.to_string()))
        })
        .collect()
}

impl<'a> Revert<'a> {
    /// A guard kept in memory only.
    pub fn new() -> Revert<'a> {
        Revert { steps: vec![], journal: None, done_if_locked: None, armed: true }
    }

    /// A guard whose file and directory steps are journaled for the object `kind`/`name`,
    /// whose lock the caller holds.
    pub fn journaled(paths: &Paths, kind: Kind, name: &str, op: &str) -> io::Result<Revert<'a>> {
        assert!(!op.contains('.'), "journal op names have no dot");
        let doc = Doc { op: op.into(), ..Doc::default() };
        let path = journal_path(paths, kind, name, op);
        let mut r = Revert::new();
        r.journal = Some((path, doc));
        r.write_journal()?;
        Ok(r)
    }

    fn write_journal(&self) -> io::Result<()> {
        match &self.journal {
            Some((path, doc)) => atomic_write(path, &serde_json::to_vec(doc).expect("journal serializes")),
            None => Ok(()),
        }
    }

    /// Register the removal of `undo`'s path, before the step that creates it runs.
    pub fn add(&mut self, undo: Undo) -> io::Result<()> {
        if let Some((_, doc)) = &mut self.journal {
            doc.undo.push(undo.clone());
        }
        self.steps.push(Step::Data(undo));
        self.write_journal()
    }

    /// The step registered for `path` did not create it (it was there already): keep it.
    pub fn forget(&mut self, path: &Path) -> io::Result<()> {
        self.steps.retain(|s| !matches!(s, Step::Data(u) if u.path() == path));
        if let Some((_, doc)) = &mut self.journal {
            doc.undo.retain(|u| u.path() != path);
        }
        self.write_journal()
    }

    /// Register an undo step that only this process can run (a process to stop, a link).
    pub fn on_fail(&mut self, what: impl Into<String>, f: impl FnOnce() -> Result<(), String> + 'a) {
        self.steps.push(Step::Fn(what.into(), Box::new(f)));
    }

    /// Register an async undo step (netlink, waiting for a process): undone by
    /// [`Revert::undo_async`], which async code calls on its error path.
    pub fn on_fail_async<F>(&mut self, what: impl Into<String>, f: impl FnOnce() -> F + 'a)
    where
        F: std::future::Future<Output = Result<(), String>> + 'a,
    {
        self.steps.push(Step::Async(what.into(), Box::new(move || Box::pin(f()))));
    }

    /// Undo now, awaiting the async steps; returns the steps that failed (also reported).
    pub async fn undo_async(mut self) -> Vec<String> {
        if !self.armed || self.done_if_locked.as_deref().is_some_and(is_held) {
            return self.run();
        }
        let mut failed = vec![];
        // Every step in reverse order; the sync ones run in place, in the same order.
        for step in std::mem::take(&mut self.steps).into_iter().rev() {
            let (what, r) = match step {
                Step::Async(what, f) => (what, f().await),
                other => {
                    self.steps.push(other);
                    failed.extend(self.run_steps());
                    continue;
                }
            };
            if let Err(e) = r {
                eprintln!("kvmctl: warning: rollback: {what}: {e}");
                failed.push(format!("{what}: {e}"));
            }
        }
        failed.extend(self.run());
        failed
    }

    /// From now on the operation counts as done (nothing is undone) whenever `lock` is held
    /// by someone: a started VM keeps what its start needed.
    pub fn done_if_locked(&mut self, lock: PathBuf) -> io::Result<()> {
        if let Some((_, doc)) = &mut self.journal {
            doc.done_if_locked = Some(lock.clone());
        }
        self.done_if_locked = Some(lock);
        self.write_journal()
    }

    /// Keep everything; the journal goes.
    pub fn commit(mut self) {
        self.armed = false;
        if let Some((path, _)) = self.journal.take() {
            let _ = fs::remove_file(path);
        }
    }

    /// Undo now; returns the steps that failed, each with its reason (also reported).
    pub fn undo(mut self) -> Vec<String> {
        self.run()
    }

    /// Run the pending steps, in reverse order.
    fn run_steps(&mut self) -> Vec<String> {
        let mut failed = vec![];
        for step in std::mem::take(&mut self.steps).into_iter().rev() {
            let (what, r) = match step {
                Step::Data(u) => (format!("remove {}", u.path().display()), u.run().map_err(|e| e.to_string())),
                Step::Fn(what, f) => (what, f()),
                Step::Async(what, _) => (what, Err("not undone (an async step needs undo_async)".into())),
            };
            if let Err(e) = r {
                eprintln!("kvmctl: warning: rollback: {what}: {e}");
                failed.push(format!("{what}: {e}"));
            }
        }
        failed
    }

    fn run(&mut self) -> Vec<String> {
        if !self.armed {
            return vec![];
        }
        self.armed = false;
        if self.done_if_locked.as_deref().is_some_and(is_held) {
            if let Some((path, _)) = self.journal.take() {
                let _ = fs::remove_file(path);
            }
            return vec![];
        }
        let failed = self.run_steps();
        if let Some((path, doc)) = self.journal.take() {
            if failed.is_empty() {
                let _ = fs::remove_file(path);
            } else {
                // Keep only what is still there for the next command to retry.
                let doc = Doc { undo: doc.undo.into_iter().filter(|u| u.path().exists()).collect(), ..doc };
                let _ = atomic_write(&path, &serde_json::to_vec(&doc).expect("journal serializes"));
            }
        }
        failed
    }
}

impl Drop for Revert<'_> {
    fn drop(&mut self) {
        self.run();
    }
}

/// Is `lock` held by a live process?
fn is_held(lock: &Path) -> bool {
    lock.exists() && matches!(try_lock_exclusive(lock), Ok(None))
}

/// What [`replay`] did with an interrupted operation's journal.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// It had passed its point of no return: everything kept.
    Completed { op: String },
    /// Undone: these paths were removed (those that existed).
    Undone { op: String, removed: Vec<PathBuf> },
}

/// Finish or undo the interrupted operations on `kind`/`name`, if journals are left; the
/// caller holds the object's lock, so their writers are gone. Err names what could not be
/// removed (the journal stays for the next try).
pub fn replay(paths: &Paths, kind: Kind, name: &str) -> Result<Vec<Replayed>, String> {
    let mut done = vec![];
    for (_, op) in journals(paths, kind).into_iter().filter(|(n, _)| n == name) {
        if let Some(r) = replay_one(&journal_path(paths, kind, name, &op))? {
            done.push(r);
        }
    }
    Ok(done)
}

fn replay_one(path: &Path) -> Result<Option<Replayed>, String> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let Ok(doc) = serde_json::from_slice::<Doc>(&text) else {
        // Torn or foreign: nothing to act on safely.
        let _ = fs::remove_file(path);
        return Ok(None);
    };
    if doc.done_if_locked.as_deref().is_some_and(is_held) {
        fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(Some(Replayed::Completed { op: doc.op }));
    }
    let mut removed = vec![];
    let mut failed = vec![];
    for u in doc.undo.iter().rev() {
        let existed = u.path().exists();
        match u.run() {
            Ok(()) if existed => removed.push(u.path().to_path_buf()),
            Ok(()) => {}
            Err(e) => failed.push(format!("{}: {e}", u.path().display())),
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "an interrupted {} left what could not be removed ({}); remove it by hand and retry",
            doc.op,
            failed.join("; ")
        ));
    }
    fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(Replayed::Undone { op: doc.op, removed }))
}

/// Names of `kind` with journals left (their writers may be alive: check the lock).
pub fn stale_journals(paths: &Paths, kind: Kind) -> Vec<String> {
    let mut names: Vec<String> = journals(paths, kind).into_iter().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> (tempfile::TempDir, Paths) {
        let d = tempfile::tempdir().unwrap();
        let p = Paths { root: d.path().join("root"), run: d.path().join("run") };
        fs::create_dir_all(p.locks_dir()).unwrap();
        (d, p)
    }

    #[test]
    fn an_uncommitted_guard_undoes_in_reverse_and_a_committed_one_keeps_all() {
        let (d, _) = paths();
        let order = std::rc::Rc::new(std::cell::RefCell::new(vec![]));
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        {
            let mut r = Revert::new();
            r.add(Undo::File(a.clone())).unwrap();
            fs::write(&a, b"").unwrap();
            let o = order.clone();
            r.on_fail("second", move || {
                o.borrow_mut().push("second");
                Ok(())
            });
            r.add(Undo::Dir(b.clone())).unwrap();
            fs::create_dir(&b).unwrap();
        }
        assert!(!a.exists() && !b.exists());
        assert_eq!(*order.borrow(), ["second"]);
        let mut r = Revert::new();
        r.add(Undo::File(a.clone())).unwrap();
        fs::write(&a, b"").unwrap();
        r.commit();
        assert!(a.exists());
    }

    #[test]
    fn a_failed_undo_step_is_returned_not_hidden() {
        let mut r = Revert::new();
        r.on_fail("stop the thing", || Err("it would not stop".into()));
        assert_eq!(r.undo(), ["stop the thing: it would not stop"]);
    }

    #[test]
    fn a_journal_left_by_a_dead_writer_is_replayed_once() {
        let (d, p) = paths();
        let f = d.path().join("disk.qcow2");
        let mut r = Revert::journaled(&p, Kind::Domain, "vm", "install").unwrap();
        r.add(Undo::File(f.clone())).unwrap();
        fs::write(&f, b"x").unwrap();
        r.add(Undo::File(d.path().join("never-made"))).unwrap();
        std::mem::forget(r); // as a kill -9 would
        assert_eq!(stale_journals(&p, Kind::Domain), ["vm"]);
        let got = replay(&p, Kind::Domain, "vm").unwrap();
        assert_eq!(got, [Replayed::Undone { op: "install".into(), removed: vec![f.clone()] }]);
        assert!(!f.exists());
        assert_eq!(replay(&p, Kind::Domain, "vm").unwrap(), []);
        assert!(stale_journals(&p, Kind::Domain).is_empty());
    }

    #[test]
    fn a_journal_past_its_point_of_no_return_keeps_everything() {
        let (d, p) = paths();
        let f = d.path().join("disk");
        let lock = d.path().join("supervisor.lock");
        let mut r = Revert::journaled(&p, Kind::Domain, "vm", "install").unwrap();
        r.add(Undo::File(f.clone())).unwrap();
        fs::write(&f, b"x").unwrap();
        r.done_if_locked(lock.clone()).unwrap();
        let held = crate::state::ObjectLock::acquire(&lock).unwrap();
        std::mem::forget(r);
        assert_eq!(replay(&p, Kind::Domain, "vm").unwrap(), [Replayed::Completed { op: "install".into() }]);
        assert!(f.exists());
        drop(held);
        // In process too: an error after the start leaves a running VM as it is.
        let mut r = Revert::new();
        r.add(Undo::File(f.clone())).unwrap();
        r.done_if_locked(lock.clone()).unwrap();
        let held = crate::state::ObjectLock::acquire(&lock).unwrap();
        drop(r);
        assert!(f.exists());
        drop(held);
    }

    #[test]
    fn each_operation_on_an_object_has_its_own_journal() {
        let (d, p) = paths();
        let (a, b) = (d.path().join("a"), d.path().join("b.c"));
        let mut outer = Revert::journaled(&p, Kind::Domain, "v.1", "install").unwrap();
        outer.add(Undo::File(a.clone())).unwrap();
        let mut inner = Revert::journaled(&p, Kind::Domain, "v.1", "start").unwrap();
        inner.add(Undo::File(b.clone())).unwrap();
        fs::write(&a, b"").unwrap();
        fs::write(&b, b"").unwrap();
        std::mem::forget(inner);
        std::mem::forget(outer);
        assert_eq!(stale_journals(&p, Kind::Domain), ["v.1"]);
        let mut got = replay(&p, Kind::Domain, "v.1").unwrap();
        got.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(!a.exists() && !b.exists());
    }

    #[test]
    fn async_steps_run_in_order_with_the_others() {
        let order = std::cell::RefCell::new(vec![]);
        let mut r = Revert::new();
        r.on_fail("one", || {
            order.borrow_mut().push(1);
            Ok(())
        });
        r.on_fail_async("two", || async {
            order.borrow_mut().push(2);
            Err("refused".to_string())
        });
        r.on_fail("three", || {
            order.borrow_mut().push(3);
            Ok(())
        });
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let failed = rt.block_on(r.undo_async());
        assert_eq!(failed, ["two: refused"]);
        assert_eq!(*order.borrow(), [3, 2, 1]);
        // Dropped without undo_async: the async step is reported as not undone.
        let mut r = Revert::new();
        r.on_fail_async("link", || async { Ok(()) });
        assert_eq!(r.undo(), ["link: not undone (an async step needs undo_async)"]);
    }

    #[test]
    fn forget_keeps_a_file_the_step_did_not_create() {
        let (d, _) = paths();
        let f = d.path().join("theirs");
        fs::write(&f, b"x").unwrap();
        let mut r = Revert::new();
        r.add(Undo::File(f.clone())).unwrap();
        r.forget(&f).unwrap();
        drop(r);
        assert!(f.exists());
    }
}
