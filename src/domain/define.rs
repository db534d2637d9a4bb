//! `define` and `edit`: a definition written by hand (kvmctl TOML, or libvirt domain XML as
//! `virsh define` takes it) is read, checked like one `install` builds (`validate`), and only
//! then saved.

use thiserror::Error;

use super::definition::DomainDef;
use super::libvirt_xml_read::{self, DomainXmlError};
use super::lifecycle::DomainError;
use super::validate::{self, Purpose};
use crate::paths::Kind;
use crate::state::Store;

#[derive(Debug, Error)]
pub enum ParseError {
    #[error("not a valid kvmctl domain definition")]
    Toml(#[source] toml::de::Error),
    #[error("not a valid libvirt domain definition")]
    Xml(#[source] DomainXmlError),
}

/// Read a definition's text: libvirt XML when it starts with '<' (after whitespace), else
/// kvmctl TOML. A definition without a UUID keeps the UUID of the VM it replaces, or gets a
/// new one (as `virsh define` does). XML does not carry what only kvmctl records (autostart,
/// the OS variant, which disks `install` created): a redefine from XML keeps them.
pub fn parse(text: &str, previous: Option<&DomainDef>) -> Result<DomainDef, ParseError> {
    if text.trim_start().starts_with('<') {
        let (mut def, has_uuid) = libvirt_xml_read::read(text).map_err(ParseError::Xml)?;
        if let Some(p) = previous {
            if !has_uuid {
                def.uuid = p.uuid;
            }
            def.autostart = p.autostart;
            def.os_variant.clone_from(&p.os_variant);
            def.checks_off.clone_from(&p.checks_off);
            for d in &mut def.disks {
                d.created = p.disks.iter().any(|o| o.path == d.path && o.created);
            }
        }
        return Ok(def);
    }
    let mut def: DomainDef = toml::from_str(text).map_err(ParseError::Toml)?;
    let has_uuid = text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("uuid"));
    if let (false, Some(p)) = (has_uuid, previous) {
        def.uuid = p.uuid;
    }
    Ok(def)
}

/// The saved definition of `name`, if there is one that can be read.
pub fn previous(store: &Store, name: &str) -> Option<DomainDef> {
    store.exists(Kind::Domain, name).then(|| store.load(Kind::Domain, name).ok()).flatten()
}

/// Check `def` and save it, replacing `previous` (call under the domain's lock).
pub fn save(store: &Store, def: &DomainDef, previous: Option<&DomainDef>) -> Result<(), DomainError> {
    let purpose = match previous {
        Some(previous) => Purpose::Update { previous },
        None => Purpose::New,
    };
    validate::check(store, def, purpose)?;
    store.save(Kind::Domain, &def.name, def)?;
    let detail = if previous.is_some() { "updated" } else { "added" };
    crate::events::domain(&store.paths.run, &def.name, crate::events::What::Defined, detail);
    Ok(())
}

/// The saved definition of `name`, refused if the file names another domain (its runtime
/// directory would be the other's).
pub fn load(store: &Store, name: &str) -> Result<DomainDef, DomainError> {
    let def: DomainDef = store.load(Kind::Domain, name)?;
    if def.name != name {
        return Err(DomainError::Invalid {
            name: name.into(),
            what: format!("its definition file names domain '{}'", def.name.escape_debug()),
        });
    }
    Ok(def)
}

/// `domrename`: a shut-off VM gets a new name (and keeps its UUID, disks and NVRAM). The
/// new definition is written under a journal first, so a kill before the old one is gone
/// leaves only the old name; the VM's VNC password follows it.
pub fn rename(store: &Store, old: &str, new: &str) -> Result<(), DomainError> {
    crate::names::validate("domain", new)
        .map_err(|e| DomainError::Invalid { name: old.into(), what: format!("the new name: {e}") })?;
    if old == new {
        return Err(DomainError::Invalid { name: old.into(), what: "the new name is its current name".into() });
    }
    // Both locks, in name order (two renames across each other cannot deadlock).
    let (first, second) = if old < new { (old, new) } else { (new, old) };
    let _a = store.lock(Kind::Domain, first)?;
    let _b = store.lock(Kind::Domain, second)?;
    let mut def = load(store, old)?;
    super::adopt::reconcile_vm(store, old)?;
    if super::runtime::RunDir::of(store, old).alive() {
        return Err(DomainError::Invalid { name: old.into(), what: "it is running: shut it down to rename it".into() });
    }
    let new_rd = super::runtime::RunDir::of(store, new);
    if store.exists(Kind::Domain, new) || new_rd.alive() {
        return Err(DomainError::Invalid { name: old.into(), what: format!("a domain named '{new}' exists") });
    }
    def.name = new.into();
    let io = |path: std::path::PathBuf| move |source| DomainError::Io { path, source };
    let new_file = store.paths.def_file(Kind::Domain, new);
    let mut revert =
        crate::state::Revert::journaled(&store.paths, Kind::Domain, new, "rename").map_err(io(new_file.clone()))?;
    revert.add(crate::state::Undo::File(new_file.clone())).map_err(io(new_file.clone()))?;
    store.create(Kind::Domain, new, &def)?;
    crate::fault::point("domrename.created");
    revert.commit();
    let (old_pw, new_pw) = (store.paths.vnc_password(old), store.paths.vnc_password(new));
    if old_pw.exists() {
        std::fs::rename(&old_pw, &new_pw).map_err(io(old_pw.clone()))?;
    }
    store.remove(Kind::Domain, old)?;
    let _ = std::fs::remove_dir_all(super::runtime::RunDir::of(store, old).dir);
    let run = &store.paths.run;
    crate::events::domain(run, old, crate::events::What::Undefined, format!("renamed to {new}"));
    crate::events::domain(run, new, crate::events::What::Defined, format!("renamed from {old}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name = \"v\"\nmemory_mib = 64\nvcpus = 1\n";

    #[test]
    fn a_definition_without_uuid_gets_one_or_keeps_the_previous_one() {
        let a = parse(TEXT, None).unwrap();
        let b = parse(TEXT, None).unwrap();
        assert!(!a.uuid.is_nil() && a.uuid != b.uuid, "a new UUID each time");
        assert_eq!(parse(TEXT, Some(&a)).unwrap().uuid, a.uuid, "redefining keeps the VM's UUID");
        let given = format!("{TEXT}uuid = \"3e3fce45-4f53-4fa7-bb32-11f34168b82b\"\n");
        assert_eq!(parse(&given, Some(&a)).unwrap().uuid.to_string(), "3e3fce45-4f53-4fa7-bb32-11f34168b82b");
    }

    #[test]
    fn xml_gets_a_uuid_and_a_redefine_keeps_what_only_kvmctl_records() {
        let xml = "<domain type='kvm'><name>v</name><memory unit='MiB'>64</memory>\
            <devices><disk><driver type='qcow2'/><source file='/v.qcow2'/></disk></devices></domain>";
        let a = parse(xml, None).unwrap();
        assert!(!a.uuid.is_nil() && a.uuid != parse(xml, None).unwrap().uuid);
        let mut old = a.clone();
        (old.autostart, old.os_variant, old.disks[0].created) = (true, Some("debian12".into()), true);
        let b = parse(xml, Some(&old)).unwrap();
        assert_eq!(b, old, "dumpxml | define changes nothing");
        let given = xml.replace("<name>v</name>", "<name>v</name><uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>");
        assert_eq!(parse(&given, Some(&old)).unwrap().uuid.to_string(), "3e3fce45-4f53-4fa7-bb32-11f34168b82b");
        let e = parse("<domain/>", None).unwrap_err();
        assert_eq!(
            format!("{e}: {}", std::error::Error::source(&e).unwrap()),
            "not a valid libvirt domain definition: <domain>: missing <name> (line 1)"
        );
    }
}
