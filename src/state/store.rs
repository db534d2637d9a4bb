//! TOML definitions under `<root>/<kind>s/<name>.toml`, one lock per object.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use super::atomic::{atomic_write, TempFile};
use super::lock::ObjectLock;
use crate::names::{self, NameError};
use crate::paths::{Kind, Paths};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{kind} '{name}' already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    #[error("cannot access {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("definition {path} is not valid")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{kind} '{name}': {what}")]
    Interrupted { kind: &'static str, name: String, what: String },
    #[error("cannot serialize {kind} '{name}'")]
    Serialize { kind: &'static str, name: String, source: toml::ser::Error },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// An object's lock, held by one command. Released on drop; if the object does not exist then
/// (a command refused before creating it, or one that removed it), the lock file is removed
/// first, under the lock, so that a refused command leaves no file behind. The lock file of an
/// existing object stays.
#[derive(Debug)]
pub struct StoreLock {
    lock: Option<ObjectLock>,
    path: PathBuf,
    kind: Kind,
    name: String,
    paths: Paths,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else { return };
        if !Store::object_exists(&self.paths, self.kind, &self.name) {
            if let Err(e) = lock.remove_file(&self.path) {
                tracing::debug!(path = %self.path.display(), error = %e, "lock file not removed");
            }
        }
    }
}

/// The state store of one root.
#[derive(Debug, Clone)]
pub struct Store {
    pub paths: Paths,
}

impl Store {
    /// Open (and create if needed) the directory layout under the roots.
    pub fn open(paths: Paths) -> Result<Store, StoreError> {
        for dir in [
            paths.root.clone(),
            paths.defs_dir(Kind::Pool),
            paths.defs_dir(Kind::Network),
            paths.defs_dir(Kind::Domain),
            paths.defs_dir(Kind::Image),
            paths.locks_dir(),
            paths.run.clone(),
            paths.run_dir(Kind::Pool),
        ] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Store { paths })
    }

    /// Take the object's lock (blocking); the name is validated first. Released on drop, when
    /// the lock file of an object that does not exist is removed as well (see [`StoreLock`]).
    pub fn lock(&self, kind: Kind, name: &str) -> Result<StoreLock, StoreError> {
        names::validate(kind.noun(), name)?;
        let path = self.paths.lock_file(kind, name);
        let lock = ObjectLock::acquire(&path).map_err(io_err(&path))?;
        let held = StoreLock { lock: Some(lock), path, kind, name: name.to_string(), paths: self.paths.clone() };
        self.replay_interrupted(kind, name)?;
        Ok(held)
    }

    /// Finish or undo what a killed command left half-done on this object (see
    /// [`super::revert`]); the caller holds its lock.
    fn replay_interrupted(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        let done = super::revert::replay(&self.paths, kind, name).map_err(|what| StoreError::Interrupted {
            kind: kind.noun(),
            name: name.into(),
            what,
        })?;
        for r in done {
            match r {
                super::revert::Replayed::Completed { op } => {
                    tracing::info!("{} '{name}': the interrupted {op} had completed", kind.noun());
                }
                super::revert::Replayed::Undone { op, removed } => {
                    let list: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
                    let what = if list.is_empty() { String::new() } else { format!(": removed {}", list.join(", ")) };
                    eprintln!("kvmctl: {} '{name}': undid an interrupted {op}{what}", kind.noun());
                }
            }
        }
        Ok(())
    }

    /// Replay the journals of dead writers of `kind` (a listing must not show a half-made object).
    fn replay_stale(&self, kind: Kind) {
        for name in super::revert::stale_journals(&self.paths, kind) {
            if names::validate(kind.noun(), &name).is_err() {
                continue;
            }
            let path = self.paths.lock_file(kind, &name);
            // A live writer holds the lock: its journal is not stale.
            if let Ok(Some(lock)) = super::lock::try_lock_exclusive(&path) {
                let held = StoreLock { lock: Some(lock), path, kind, name: name.clone(), paths: self.paths.clone() };
                if let Err(e) = self.replay_interrupted(kind, &name) {
                    eprintln!("kvmctl: warning: {e}");
                }
                drop(held);
            }
        }
    }

    /// Is `name` an object: defined, or with runtime state (a running transient network, a
    /// VM's runtime dir, an active pool)?
    fn object_exists(paths: &Paths, kind: Kind, name: &str) -> bool {
        paths.def_file(kind, name).exists()
            || paths.run_dir(kind).join(name).exists()
            || (kind == Kind::Pool && paths.pool_active_marker(name).exists())
    }

    pub fn exists(&self, kind: Kind, name: &str) -> bool {
        names::validate(kind.noun(), name).is_ok() && self.paths.def_file(kind, name).exists()
    }

    /// Load a definition, `NotFound` if it is not defined.
    pub fn load<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> Result<T, StoreError> {
        names::validate(kind.noun(), name)?;
        let path = self.paths.def_file(kind, name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { kind: kind.noun(), name: name.to_string() })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        toml::from_str(&text).map_err(|source| StoreError::Parse { path, source })
    }

    /// Names of every defined object of `kind`, sorted.
    pub fn list(&self, kind: Kind) -> Result<Vec<String>, StoreError> {
        self.replay_stale(kind);
        let dir = self.paths.defs_dir(kind);
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".toml")) else {
                continue;
            };
            if names::validate(kind.noun(), name).is_ok() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Replace a definition atomically. The caller holds the object's lock.
    pub fn save<T: Serialize>(&self, kind: Kind, name: &str, def: &T) -> Result<(), StoreError> {
        names::validate(kind.noun(), name)?;
        let text = self.render(kind, name, def)?;
        let path = self.paths.def_file(kind, name);
        atomic_write(&path, text.as_bytes()).map_err(io_err(&path))
    }

    /// Create a new definition; exactly one of many concurrent creators of a name wins.
    pub fn create<T: Serialize>(&self, kind: Kind, name: &str, def: &T) -> Result<(), StoreError> {
        names::validate(kind.noun(), name)?;
        let text = self.render(kind, name, def)?;
        let path = self.paths.def_file(kind, name);
        let mut tmp = TempFile::new_beside(&path, 0o644).map_err(io_err(&path))?;
        tmp.file().write_all(text.as_bytes()).map_err(io_err(&path))?;
        match tmp.commit_new(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StoreError::AlreadyExists { kind: kind.noun(), name: name.to_string() })
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Remove a definition. The caller holds the object's lock.
    pub fn remove(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        names::validate(kind.noun(), name)?;
        let path = self.paths.def_file(kind, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound { kind: kind.noun(), name: name.to_string() })
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn render<T: Serialize>(&self, kind: Kind, name: &str, def: &T) -> Result<String, StoreError> {
        toml::to_string_pretty(def).map_err(|source| StoreError::Serialize {
            kind: kind.noun(),
            name: name.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::sync::{Arc, Barrier};

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Def {
        name: String,
        n: u32,
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths { root: dir.path().join("root"), run: dir.path().join("run") };
        (dir, Store::open(paths).unwrap())
    }

    #[test]
    fn create_load_save_remove_round_trip() {
        let (_d, s) = store();
        let def = Def { name: "a".into(), n: 1 };
        s.create(Kind::Pool, "a", &def).unwrap();
        assert_eq!(s.load::<Def>(Kind::Pool, "a").unwrap(), def);
        s.save(Kind::Pool, "a", &Def { name: "a".into(), n: 2 }).unwrap();
        assert_eq!(s.load::<Def>(Kind::Pool, "a").unwrap().n, 2);
        assert_eq!(s.list(Kind::Pool).unwrap(), vec!["a"]);
        s.remove(Kind::Pool, "a").unwrap();
        assert!(matches!(s.load::<Def>(Kind::Pool, "a"), Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn concurrent_creates_of_one_name_have_exactly_one_winner() {
        let (_d, s) = store();
        let barrier = Arc::new(Barrier::new(20));
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (s, b) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    s.create(Kind::Domain, "x", &Def { name: "x".into(), n: i })
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(matches!(r, Err(StoreError::AlreadyExists { .. })), "{r:?}");
        }
        let dir = s.paths.defs_dir(Kind::Domain);
        assert_eq!(fs::read_dir(dir).unwrap().count(), 1, "no temp files left behind");
    }

    #[test]
    fn the_lock_file_of_an_object_that_does_not_exist_is_removed_on_release() {
        let (_d, s) = store();
        let lock_file = s.paths.lock_file(Kind::Domain, "x");
        drop(s.lock(Kind::Domain, "x").unwrap());
        assert!(!lock_file.exists(), "a refused command leaves no lock file");
        let l = s.lock(Kind::Domain, "x").unwrap();
        s.create(Kind::Domain, "x", &Def { name: "x".into(), n: 0 }).unwrap();
        drop(l);
        assert!(lock_file.exists(), "an existing object keeps its lock file");
        let l = s.lock(Kind::Domain, "x").unwrap();
        s.remove(Kind::Domain, "x").unwrap();
        drop(l);
        assert!(!lock_file.exists(), "nor does an undefined one keep it");
        fs::create_dir_all(s.paths.run_dir(Kind::Network).join("t")).unwrap();
        drop(s.lock(Kind::Network, "t").unwrap());
        assert!(s.paths.lock_file(Kind::Network, "t").exists(), "a running transient network keeps it");
    }

    /// Lock files removed by one holder while others wait: never two holders at once.
    #[test]
    fn locks_exclude_each_other_while_their_files_come_and_go() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_d, s) = store();
        let inside = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (s, inside) = (s.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let l = s.lock(Kind::Domain, "x").unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders of one lock");
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(l);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(!s.paths.lock_file(Kind::Domain, "x").exists());
    }

    #[test]
    fn bad_names_never_reach_a_path() {
        let (_d, s) = store();
        let def = Def { name: "x".into(), n: 0 };
        for bad in ["../escape", "a/b", "", ".x", "a\nb"] {
            assert!(matches!(s.create(Kind::Pool, bad, &def), Err(StoreError::Name(_))), "{bad:?}");
            assert!(matches!(s.lock(Kind::Pool, bad), Err(StoreError::Name(_))));
        }
        assert!(!s.paths.root.join("escape.toml").exists());
    }

    #[test]
    fn corrupt_definition_is_reported_with_its_path() {
        let (_d, s) = store();
        fs::write(s.paths.def_file(Kind::Pool, "bad"), "name = [").unwrap();
        let e = s.load::<Def>(Kind::Pool, "bad").unwrap_err();
        assert!(matches!(e, StoreError::Parse { .. }));
        assert!(e.to_string().contains("bad.toml"));
    }
}
