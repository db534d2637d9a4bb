//! Install media: ISO 9660 images read and written in Rust (no loop mounts), the kernel and
//! initrd of an installer tree or ISO (`--location`), and NoCloud seeds (`--cloud-init`).

pub mod initrd_inject;
pub mod iso9660;
mod iso_writer;
pub mod location;
pub mod nocloud;
pub mod remote;

use std::path::PathBuf;

use thiserror::Error;

pub use iso9660::{Entry, Iso, IsoWriter, Naming};
pub use location::{find_boot_files, BootFile, BootFiles, BootPaths};
pub use nocloud::{build_seed, CloudInitOpts, NoCloudSeed};

#[derive(Debug, Error)]
pub enum MediaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an ISO 9660 image (no CD001 volume descriptor at sector 16)")]
    NotIso { path: PathBuf },
    #[error("{path}: truncated ISO image: {what} needs bytes up to {need}, the file has {len}")]
    Truncated { path: PathBuf, what: String, need: u64, len: u64 },
    #[error("{path}: damaged ISO image: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("{iso}: no '{path}' in the image")]
    NotInIso { iso: PathBuf, path: String },
    #[error("{iso}: '{path}' is not a directory")]
    NotADirectory { iso: PathBuf, path: String },
    #[error("{iso}: '{path}' is a directory, not a file")]
    IsADirectory { iso: PathBuf, path: String },
    #[error("ISO image: {what} '{name}': {reason}")]
    IsoName { what: &'static str, name: String, reason: String },
    #[error("ISO image: {0}")]
    IsoTooLarge(String),
    #[error("{location}: no kernel and initrd found; tried: {}; name them with kernel=PATH,initrd=PATH", tried.join(", "))]
    NoBootFiles { location: PathBuf, tried: Vec<String> },
    #[error("{location}: {key}={path}: no such file in the location")]
    BootFileMissing { location: PathBuf, key: &'static str, path: String },
    #[error("{url}: not found (the server answered 404)")]
    RemoteMissing { url: String },
    #[error(transparent)]
    Fetch(#[from] crate::images::fetch::FetchError),
    #[error("--initrd-inject {path}: {reason}")]
    Inject { path: PathBuf, reason: String },
    #[error("--cloud-init: unknown option '{key}' (known: {known})")]
    CloudInitKey { key: String, known: &'static str },
    #[error("--cloud-init: {key}={value}: {reason}")]
    CloudInitValue { key: String, value: String, reason: String },
    #[error("--cloud-init: {key}={path}: {reason}")]
    CloudInitFile { key: &'static str, path: PathBuf, reason: String },
    #[error("--cloud-init: {0}")]
    CloudInitConflict(String),
}

impl MediaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> MediaError {
        MediaError::Io { path: path.into(), source }
    }
}
