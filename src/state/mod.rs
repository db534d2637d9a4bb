//! The state store: atomic writes, per-object locks, TOML definitions.

mod atomic;
mod lock;
mod private;
mod store;

pub mod interrupt;
pub mod revert;
pub use atomic::{atomic_write, fsync_dir, runtime_write, TempFile};
pub use lock::{conflicting_lock, try_lock_exclusive, ObjectLock};
pub use private::{bind_private, open_private, private_dir};
pub use revert::{Revert, Undo};
pub use store::{Store, StoreError, StoreLock};
