//! Storage: directory pools and the volumes (image files) in them.

pub mod codec;
pub mod copy;
mod error;
pub mod foreign;
pub mod image;
pub mod libvirt_xml;
pub mod pool;
pub mod qcow2;
pub mod volume;

pub use error::StorageError;
pub use image::Format;
pub use pool::{PoolDef, PoolState};

/// The users of one image, as the storage layer's guards take them from their caller (see
/// `crate::inventory`, which reads them from VM definitions and pools).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    /// Defined VMs with the image as a disk: `domain 'web1'`.
    pub domains: Vec<String>,
    /// Overlays on the image: `overlay volume default/web2.qcow2`, `overlay ... (disk of domain 'x')`.
    pub overlays: Vec<String>,
}

impl Users {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.overlays.is_empty()
    }

    /// Refuse `what` when overlays read through the image: nothing under an overlay is ever
    /// written, shrunk, replaced or deleted.
    pub fn refuse_overlays(&self, path: &std::path::Path, what: &'static str) -> Result<(), StorageError> {
        if self.overlays.is_empty() {
            return Ok(());
        }
        Err(StorageError::UnderOverlays { path: path.into(), overlays: self.overlays.join(", "), what })
    }
}

impl std::fmt::Display for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.domains.iter().chain(&self.overlays).cloned().collect::<Vec<_>>().join(", "))
    }
}
