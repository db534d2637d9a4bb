//! Storage: directory pools and the volumes (image files) in them.

pub mod copy;
mod error;
pub mod image;
pub mod pool;
pub mod qcow2;
pub mod volume;

pub use error::StorageError;
pub use image::Format;
pub use pool::{PoolDef, PoolState};
