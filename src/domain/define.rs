//! `define` and `edit`: a definition written by hand is read, checked like one `install`
//! builds (`validate`), and only then saved.

use super::definition::DomainDef;
use super::lifecycle::DomainError;
use super::validate::{self, Purpose};
use crate::paths::Kind;
use crate::state::Store;

/// Read a definition's text. A definition without `uuid` keeps the UUID of the VM it
/// replaces, or gets a new one (as `virsh define` does).
pub fn parse(text: &str, previous: Option<&DomainDef>) -> Result<DomainDef, toml::de::Error> {
    let mut def: DomainDef = toml::from_str(text)?;
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
}
