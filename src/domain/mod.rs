//! Domains (VMs). Lifecycle arrives with issue 4; what storage needs today is which defined
//! VM uses which disk file, read from `<root>/domains/<name>.toml` (`[[disks]] path = ...`).

pub mod accel;
pub mod adopt;
pub mod argv;
pub mod clone;
pub mod confine;
pub mod console_hub;
pub mod define;
pub mod definition;
pub mod host;
pub mod install;
pub mod install_spec;
pub mod journal;
pub mod libvirt_xml;
pub mod libvirt_xml_read;
pub mod lifecycle;
pub mod options;
pub mod qemu;
pub mod qemu_caps;
pub mod qmp;
pub mod runtime;
pub mod supervisor;
pub mod tap;
pub mod validate;

use std::path::PathBuf;

use crate::paths::Kind;
use crate::state::Store;

/// `(domain name, disk path)` for every disk of every defined domain.
pub fn disk_users(store: &Store) -> Vec<(String, PathBuf)> {
    disk_records(store).into_iter().map(|r| (r.domain, r.path)).collect()
}

/// One disk of a defined domain, as its definition records it.
pub struct DiskRecord {
    pub domain: String,
    pub path: PathBuf,
    pub format: Option<String>,
    pub readonly: bool,
}

/// Every disk of every defined domain, read from the TOML itself so that a definition this
/// version cannot load still counts.
pub fn disk_records(store: &Store) -> Vec<DiskRecord> {
    let mut out = Vec::new();
    for name in store.list(Kind::Domain).unwrap_or_default() {
        let Ok(def) = store.load::<toml::Table>(Kind::Domain, &name) else { continue };
        for d in def.get("disks").and_then(|d| d.as_array()).into_iter().flatten() {
            if let Some(p) = d.get("path").and_then(|p| p.as_str()) {
                out.push(DiskRecord {
                    domain: name.clone(),
                    path: PathBuf::from(p),
                    format: d.get("format").and_then(|f| f.as_str()).map(str::to_string),
                    readonly: d.get("readonly").and_then(|r| r.as_bool()).unwrap_or(false),
                });
            }
        }
    }
    out
}

/// `(domain name, canonical disk path, recorded format)` for every defined domain disk that
/// records a format.
pub fn recorded_formats(store: &Store) -> Vec<(String, PathBuf, String)> {
    disk_records(store)
        .into_iter()
        .filter_map(|r| {
            let canon = std::fs::canonicalize(&r.path).unwrap_or(r.path);
            Some((r.domain, canon, r.format?))
        })
        .collect()
}
