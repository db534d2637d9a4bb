//! kvmctl: virsh, virt-install and virt-clone in one daemonless binary.
//!
//! The library behind the `kvmctl` binary; integration tests drive both.

pub mod cli;
pub mod console;
pub mod domain;
pub mod events;
pub mod fault;
pub mod images;
pub mod inventory;
pub mod limits;
pub mod media;
pub mod names;
pub mod network;
pub mod paths;
pub mod process;
pub mod size;
pub mod state;
pub mod storage;
pub mod xml;
pub mod xpath;
