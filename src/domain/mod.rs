//! Domains (VMs). Lifecycle arrives with issue 4; what storage needs today is which defined
//! VM uses which disk file, read from `<root>/domains/<name>.toml` (`[[disks]] path = ...`).

pub mod accel;
pub mod argv;
pub mod clone;
pub mod console_hub;
pub mod define;
pub mod definition;
pub mod install;
pub mod libvirt_xml;
pub mod lifecycle;
pub mod options;
pub mod qemu_caps;
pub mod qmp;
pub mod runtime;
pub mod supervisor;
pub mod tap;
pub mod validate;

use std::path::{Path, PathBuf};

use crate::paths::Kind;
use crate::state::Store;

/// `(domain name, disk path)` for every disk of every defined domain.
pub fn disk_users(store: &Store) -> Vec<(String, PathBuf)> {
    let mut users = Vec::new();
    let Ok(names) = store.list(Kind::Domain) else {
        return users;
    };
    for name in names {
        let Ok(def) = store.load::<toml::Table>(Kind::Domain, &name) else {
            continue;
        };
        let disks = def.get("disks").and_then(|d| d.as_array()).cloned().unwrap_or_default();
        for d in disks {
            if let Some(p) = d.get("path").and_then(|p| p.as_str()) {
                users.push((name.clone(), PathBuf::from(p)));
            }
        }
    }
    users
}

/// Names of the domains whose disks include `path`.
pub fn domains_using(store: &Store, path: &Path) -> Vec<String> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let want = canon(path);
    let mut names: Vec<String> =
        disk_users(store).into_iter().filter(|(_, p)| canon(p) == want).map(|(n, _)| n).collect();
    names.dedup();
    names
}
