//! Who uses an image: the disks of defined VMs, and overlays (qcow2 images whose backing file
//! it is) among the volumes of every active pool and the disks of every VM. Every path that
//! writes, shrinks, replaces or deletes an image asks this first, and a refusal names the user.
//!
//! It sits above `storage` and `domain`: storage takes the answer as a [`Users`] value from
//! its caller instead of reading VM definitions itself.

use std::path::{Path, PathBuf};

use crate::state::Store;
use crate::storage::image::Format;
use crate::storage::{pool, qcow2, volume, Users};

struct Disk {
    domain: String,
    path: PathBuf,
    readonly: bool,
}

struct Overlay {
    path: PathBuf,
    /// What a refusal calls it.
    label: String,
    /// Its backing file, canonical.
    backing: PathBuf,
}

/// A snapshot of who uses which image, read once per command.
pub struct Inventory {
    disks: Vec<Disk>,
    overlays: Vec<Overlay>,
}

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The canonical backing file of a qcow2 image at `path`, if it has one.
fn backing_of(path: &Path) -> Option<PathBuf> {
    let b = qcow2::read_header(path).ok()?.backing_file?;
    Some(canon(&qcow2::resolve_backing(path, &b)))
}

impl Inventory {
    pub fn read(store: &Store) -> Inventory {
        let mut disks = Vec::new();
        let mut overlays = Vec::new();
        for r in crate::domain::disk_records(store) {
            let path = canon(&r.path);
            // Only a disk recorded as qcow2 has a header of its own: a raw disk's first bytes
            // are the guest's, whatever they claim.
            if r.format.as_deref() == Some("qcow2") {
                if let Some(backing) = backing_of(&path) {
                    let label = format!("overlay {} (disk of domain '{}')", path.display(), r.domain);
                    overlays.push(Overlay { path: path.clone(), label, backing });
                }
            }
            disks.push(Disk { domain: r.domain, path, readonly: r.readonly });
        }
        for p in pool::list(store).unwrap_or_default().into_iter().flatten() {
            for v in volume::list(store, &p.name).unwrap_or_default() {
                let path = canon(&v.path);
                // volume::list reads each file with its recorded format.
                let qcow2 = v.info.as_ref().is_some_and(|i| i.format == Format::Qcow2 && i.backing_file.is_some());
                if !qcow2 || overlays.iter().any(|o| o.path == path) {
                    continue;
                }
                if let Some(backing) = backing_of(&path) {
                    let label = format!("overlay volume {}/{}", p.name, v.name);
                    overlays.push(Overlay { path, label, backing });
                }
            }
        }
        Inventory { disks, overlays }
    }

    /// Everyone who uses the image at `path` (VMs other than `except`, and every overlay).
    pub fn users_of(&self, path: &Path, except: Option<&str>) -> Users {
        let want = canon(path);
        let mut domains: Vec<String> = self
            .disks
            .iter()
            .filter(|d| d.path == want && Some(d.domain.as_str()) != except)
            .map(|d| format!("domain '{}'", d.domain))
            .collect();
        domains.dedup();
        let overlays = self.overlays.iter().filter(|o| o.backing == want).map(|o| o.label.clone()).collect();
        Users { domains, overlays }
    }

    /// Overlays on any writable disk of domain `name`: it must not start (its disks would
    /// change under them) or lose those disks.
    pub fn overlays_on_disks_of(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in self.disks.iter().filter(|d| d.domain == name && !d.readonly) {
            for o in self.overlays.iter().filter(|o| o.backing == d.path) {
                if !out.contains(&o.label) {
                    out.push(o.label.clone());
                }
            }
        }
        out
    }
}
