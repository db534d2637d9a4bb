use std::path::PathBuf;

use thiserror::Error;

use super::copy::CopyError;
use super::image::ChainError;
use super::qcow2::Qcow2Error;
use crate::names::NameError;
use crate::process::ProcessError;
use crate::size::SizeError;
use crate::state::StoreError;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("pool type '{0}' is not supported (kvmctl has directory pools: 'dir')")]
    PoolType(String),
    #[error("pool '{pool}': target {path} is already the target of pool '{other}'")]
    TargetTaken { pool: String, path: PathBuf, other: String },
    #[error("pool '{0}' is already active")]
    PoolActive(String),
    #[error("pool '{0}' is not active (start it with: kvmctl pool-start {0})")]
    PoolInactive(String),
    #[error("pool '{pool}': target {path} {reason}")]
    PoolTarget { pool: String, path: PathBuf, reason: String },
    #[error("pool '{0}' is active; run pool-destroy first")]
    UndefineActive(String),
    #[error("volume '{name}' not found in pool '{pool}'")]
    VolumeNotFound { pool: String, name: String },
    #[error("volume '{0}' not found in any active pool (name a pool with --pool)")]
    VolumeNowhere(String),
    #[error("volume '{name}' exists in several pools ({pools}); name one with --pool")]
    VolumeAmbiguous { name: String, pools: String },
    #[error("volume '{name}' already exists in pool '{pool}'")]
    VolumeExists { pool: String, name: String },
    #[error("volume {path} is in use by a running qemu ({how}); {hint}")]
    InUse { path: PathBuf, how: &'static str, hint: &'static str },
    #[error("volume {path} is used by {users}; pass --force to delete it anyway")]
    UsedBy { path: PathBuf, users: String },
    #[error("volume {path} is the backing file of {overlays}: refusing to {what} it (they read through it); remove them first")]
    UnderOverlays { path: PathBuf, overlays: String, what: &'static str },
    #[error("volume {path}: new capacity {new} is smaller than the current {old}; pass --shrink to shrink it (data beyond the new end is lost)")]
    ShrinkRefused { path: PathBuf, new: String, old: String },
    #[error("{volume}: capacity {size} is too large: {limit}")]
    TooLarge { volume: String, size: String, limit: String },
    #[error("volume {path}: capacity must be greater than zero")]
    ZeroCapacity { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { path, source }
}
