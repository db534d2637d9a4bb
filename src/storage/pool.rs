//! Directory pools: a definition naming a target directory, active while started.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{io_at, StorageError};
use crate::paths::Kind;
use crate::state::{atomic_write, runtime_write, Store};

pub const DEFAULT_POOL: &str = "default";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolDef {
    pub name: String,
    pub uuid: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: PathBuf,
    #[serde(default)]
    pub autostart: bool,
    /// Made by `pool-create-as`: it goes away when stopped (or when the host reboots).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    Active,
    Inactive,
    /// Started, but its target directory is gone or unusable.
    Inaccessible,
}

impl PoolState {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::Active => "active",
            PoolState::Inactive => "inactive",
            PoolState::Inaccessible => "inaccessible",
        }
    }
}

/// Capacity of the filesystem holding a pool (statvfs).
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct FsUsage {
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

pub fn fs_usage(path: &Path) -> Option<FsUsage> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frs = st.fragment_size() as u64;
    let capacity = st.blocks() as u64 * frs;
    let free = st.blocks_free() as u64 * frs;
    Some(FsUsage { capacity, allocation: capacity - free, available: st.blocks_available() as u64 * frs })
}

/// First use of a root: define the `default` pool; first command after boot: start the
/// autostart pools (a directory pool has no runtime resources, so this costs a stat each).
pub fn ensure_defaults(store: &Store) -> Result<(), StorageError> {
    let paths = &store.paths;
    if !paths.init_marker().exists() {
        let _l = store.lock(Kind::Pool, DEFAULT_POOL)?;
        if !store.exists(Kind::Pool, DEFAULT_POOL) {
            let def = PoolDef {
                name: DEFAULT_POOL.into(),
                uuid: Uuid::new_v4(),
                kind: "dir".into(),
                target: paths.default_pool_dir(),
                autostart: true,
                transient: false,
            };
            fs::create_dir_all(&def.target).map_err(io_at(&def.target))?;
            match store.create(Kind::Pool, DEFAULT_POOL, &def) {
                Ok(()) | Err(crate::state::StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        atomic_write(&paths.init_marker(), b"").map_err(io_at(paths.init_marker()))?;
    }
    if !paths.boot_marker().exists() {
        for name in store.list(Kind::Pool)? {
            let def: PoolDef = match store.load(Kind::Pool, &name) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(pool = %name, error = %e, "skipping pool with a broken definition");
                    continue;
                }
            };
            if def.transient {
                // A transient pool does not outlive the boot it was created in.
                let _l = store.lock(Kind::Pool, &name)?;
                store.remove(Kind::Pool, &name)?;
                continue;
            }
            if def.autostart && check_target(&def).is_ok() {
                mark_active(store, &name, true)?;
            }
        }
        runtime_write(&paths.boot_marker(), b"").map_err(io_at(paths.boot_marker()))?;
    }
    Ok(())
}

fn mark_active(store: &Store, name: &str, active: bool) -> Result<(), StorageError> {
    let m = store.paths.pool_active_marker(name);
    if active {
        runtime_write(&m, b"").map_err(io_at(&m))
    } else {
        match fs::remove_file(&m) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_at(&m)(e)),
            _ => Ok(()),
        }
    }
}

/// The target must be an existing, writable directory.
fn check_target(def: &PoolDef) -> Result<(), StorageError> {
    let bad = |reason: &str| StorageError::PoolTarget {
        pool: def.name.clone(),
        path: def.target.clone(),
        reason: reason.into(),
    };
    match fs::metadata(&def.target) {
        Err(_) => Err(bad(&format!("does not exist (create it with: kvmctl pool-build {})", def.name))),
        Ok(m) if !m.is_dir() => Err(bad("is not a directory")),
        Ok(_)
            if nix::unistd::access(&def.target, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK)
                .is_err() =>
        {
            Err(bad("is not writable"))
        }
        Ok(_) => Ok(()),
    }
}

pub fn load(store: &Store, name: &str) -> Result<PoolDef, StorageError> {
    Ok(store.load(Kind::Pool, name)?)
}

pub fn state(store: &Store, def: &PoolDef) -> PoolState {
    if !store.paths.pool_active_marker(&def.name).exists() {
        PoolState::Inactive
    } else if check_target(def).is_ok() {
        PoolState::Active
    } else {
        PoolState::Inaccessible
    }
}

/// Load a pool and require it to be active; returns its definition.
pub fn active(store: &Store, name: &str) -> Result<PoolDef, StorageError> {
    let def = load(store, name)?;
    match state(store, &def) {
        PoolState::Active => {
            // Temp files of copies killed mid-way (their writer is gone) go with the next
            // command on the pool; `pool-refresh` names them.
            for p in crate::state::interrupt::sweep_stale(&def.target) {
                tracing::info!(file = %p.display(), "removed a stale temp file of a dead writer");
            }
            Ok(def)
        }
        PoolState::Inactive => Err(StorageError::PoolInactive(name.into())),
        PoolState::Inaccessible => Err(check_target(&def).unwrap_err()),
    }
}

pub fn define_as(store: &Store, name: &str, kind: &str, target: &Path) -> Result<PoolDef, StorageError> {
    new_pool(store, name, kind, target, false)
}

/// `pool-create-as [--build]`: a transient pool, started at once (built first with `build`);
/// `pool-destroy` removes it. A failed start leaves no definition behind.
pub fn create_as(
    store: &Store,
    name: &str,
    kind: &str,
    target: &Path,
    build_it: bool,
) -> Result<PoolDef, StorageError> {
    let def = new_pool(store, name, kind, target, true)?;
    let started = (if build_it { build(store, name).map(|_| ()) } else { Ok(()) }).and_then(|_| start(store, name));
    if let Err(e) = started {
        let _l = store.lock(Kind::Pool, name)?;
        store.remove(Kind::Pool, name)?;
        return Err(e);
    }
    Ok(def)
}

fn new_pool(store: &Store, name: &str, kind: &str, target: &Path, transient: bool) -> Result<PoolDef, StorageError> {
    crate::names::validate("pool", name)?;
    if kind != "dir" {
        return Err(StorageError::PoolType(kind.into()));
    }
    let target = if target.is_absolute() {
        target.to_path_buf()
    } else {
        std::env::current_dir().map_err(io_at("."))?.join(target)
    };
    let _l = store.lock(Kind::Pool, name)?;
    for other in store.list(Kind::Pool)? {
        if let Ok(o) = load(store, &other) {
            if o.target == target && other != name {
                return Err(StorageError::TargetTaken { pool: name.into(), path: target, other });
            }
        }
    }
    let def =
        PoolDef { name: name.into(), uuid: Uuid::new_v4(), kind: kind.into(), target, autostart: false, transient };
    store.create(Kind::Pool, name, &def)?;
    Ok(def)
}

pub fn build(store: &Store, name: &str) -> Result<PoolDef, StorageError> {
    let def = load(store, name)?;
    fs::create_dir_all(&def.target).map_err(|e| StorageError::PoolTarget {
        pool: name.into(),
        path: def.target.clone(),
        reason: format!("cannot be created: {e}"),
    })?;
    check_target(&def)?;
    Ok(def)
}

pub fn start(store: &Store, name: &str) -> Result<(), StorageError> {
    let _l = store.lock(Kind::Pool, name)?;
    let def = load(store, name)?;
    if state(store, &def) == PoolState::Active {
        return Err(StorageError::PoolActive(name.into()));
    }
    check_target(&def)?;
    mark_active(store, name, true)
}

pub fn destroy(store: &Store, name: &str) -> Result<(), StorageError> {
    let _l = store.lock(Kind::Pool, name)?;
    let def = load(store, name)?;
    if state(store, &def) == PoolState::Inactive {
        return Err(StorageError::PoolInactive(name.into()));
    }
    mark_active(store, name, false)?;
    if def.transient {
        store.remove(Kind::Pool, name)?;
    }
    Ok(())
}

/// `pool-edit`: replace a pool's definition with an edited one. The name, UUID and type stay;
/// the target may change only while the pool is inactive.
pub fn redefine(store: &Store, old: &PoolDef, new: &PoolDef) -> Result<(), StorageError> {
    let refuse = |what: &str| Err(StorageError::Invalid(format!("pool '{}': {what}; pool unchanged", old.name)));
    if new.name != old.name {
        return refuse("edit cannot rename a pool");
    }
    if new.uuid != old.uuid {
        return refuse("edit cannot change the UUID");
    }
    if new.kind != "dir" {
        return Err(StorageError::PoolType(new.kind.clone()));
    }
    if new.transient != old.transient {
        return refuse("edit cannot make a pool transient or persistent");
    }
    if new.target != old.target {
        if !new.target.is_absolute() {
            return refuse("the target must be an absolute path");
        }
        if state(store, old) != PoolState::Inactive {
            return refuse("its target can change only while it is inactive (pool-destroy it first)");
        }
        for other in store.list(Kind::Pool)?.into_iter().filter(|o| *o != old.name) {
            if load(store, &other).is_ok_and(|o| o.target == new.target) {
                return Err(StorageError::TargetTaken { pool: old.name.clone(), path: new.target.clone(), other });
            }
        }
    }
    store.save(Kind::Pool, &old.name, new)?;
    Ok(())
}

pub fn undefine(store: &Store, name: &str) -> Result<(), StorageError> {
    let _l = store.lock(Kind::Pool, name)?;
    let def = load(store, name)?;
    if state(store, &def) != PoolState::Inactive {
        return Err(StorageError::UndefineActive(name.into()));
    }
    if def.transient {
        return Err(StorageError::Invalid(format!("pool '{name}' is transient: pool-destroy removes it")));
    }
    store.remove(Kind::Pool, name)?;
    Ok(())
}

pub fn set_autostart(store: &Store, name: &str, enable: bool) -> Result<(), StorageError> {
    let _l = store.lock(Kind::Pool, name)?;
    let mut def = load(store, name)?;
    def.autostart = enable;
    store.save(Kind::Pool, name, &def)?;
    Ok(())
}

/// A pool definition that could not be read: listed with the reason rather than hidden.
#[derive(Debug)]
pub struct BrokenDef {
    pub name: String,
    pub error: String,
}

/// Backing files may be followed inside any defined pool's directory, and nowhere else.
pub fn backing_policy(store: &Store) -> super::image::BackingPolicy {
    let pools = list(store).unwrap_or_default();
    super::image::BackingPolicy::within(pools.into_iter().flatten().map(|p| p.target))
}

/// Every defined pool, with unreadable definitions reported rather than hidden.
pub fn list(store: &Store) -> Result<Vec<Result<PoolDef, BrokenDef>>, StorageError> {
    Ok(store
        .list(Kind::Pool)?
        .into_iter()
        .map(|name| load(store, &name).map_err(|e| BrokenDef { name, error: e.to_string() }))
        .collect())
}
