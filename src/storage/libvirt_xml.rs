//! `pool-dumpxml`, `vol-dumpxml` and `vol-create-as --print-xml`: libvirt's pool and volume
//! XML for what kvmctl has (directory pools, file volumes).

use std::path::Path;

use super::pool::{FsUsage, PoolDef, PoolState};
use super::Format;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;")
}

fn path_text(p: &Path) -> String {
    esc(&p.display().to_string())
}

/// A directory pool; sizes are those of its filesystem while it is active (zero otherwise, as
/// libvirt shows an inactive pool).
pub fn pool_xml(def: &PoolDef, state: PoolState, usage: Option<FsUsage>) -> String {
    let u = usage.filter(|_| state == PoolState::Active).unwrap_or_default();
    format!(
        "<pool type='{}'>\n  <name>{}</name>\n  <uuid>{}</uuid>\n  <capacity unit='bytes'>{}</capacity>\n  \
         <allocation unit='bytes'>{}</allocation>\n  <available unit='bytes'>{}</available>\n  <source>\n  </source>\n  \
         <target>\n    <path>{}</path>\n  </target>\n</pool>\n",
        esc(&def.kind),
        esc(&def.name),
        def.uuid,
        u.capacity,
        u.allocation,
        u.available,
        path_text(&def.target)
    )
}

/// One volume as `vol-dumpxml` prints it.
#[derive(Debug, Clone)]
pub struct VolXml<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    pub format: Format,
    pub capacity: u64,
    pub allocation: u64,
    pub physical: u64,
    /// The backing file and its format.
    pub backing: Option<(&'a str, &'a str)>,
}

pub fn volume_xml(v: &VolXml) -> String {
    let mut x = format!(
        "<volume type='file'>\n  <name>{}</name>\n  <key>{}</key>\n  <capacity unit='bytes'>{}</capacity>\n  \
         <allocation unit='bytes'>{}</allocation>\n  <physical unit='bytes'>{}</physical>\n  <target>\n    \
         <path>{}</path>\n    <format type='{}'/>\n  </target>\n",
        esc(v.name),
        path_text(v.path),
        v.capacity,
        v.allocation,
        v.physical,
        path_text(v.path),
        v.format
    );
    if let Some((file, format)) = v.backing {
        x += &format!(
            "  <backingStore>\n    <path>{}</path>\n    <format type='{}'/>\n  </backingStore>\n",
            esc(file),
            esc(format)
        );
    }
    x + "</volume>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_escaped() {
        let v = VolXml {
            name: "a&b.qcow2",
            path: Path::new("/p/a&b'<.qcow2"),
            format: Format::Qcow2,
            capacity: 10,
            allocation: 2,
            physical: 3,
            backing: Some(("/p/base<.qcow2", "qcow2")),
        };
        let x = volume_xml(&v);
        assert!(x.contains("<name>a&amp;b.qcow2</name>"), "{x}");
        assert!(x.contains("<path>/p/a&amp;b&apos;&lt;.qcow2</path>"), "{x}");
        assert!(x.contains("<backingStore>\n    <path>/p/base&lt;.qcow2</path>\n    <format type='qcow2'/>"), "{x}");
        assert!(crate::xml::parse_document(&x).is_ok());
        let p = PoolDef {
            name: "p".into(),
            uuid: uuid::Uuid::nil(),
            kind: "dir".into(),
            target: "/x&y".into(),
            autostart: false,
            transient: false,
        };
        let usage = FsUsage { capacity: 9, allocation: 4, available: 5 };
        let x = pool_xml(&p, PoolState::Active, Some(usage));
        assert!(x.contains("<capacity unit='bytes'>9</capacity>") && x.contains("<path>/x&amp;y</path>"), "{x}");
        assert!(pool_xml(&p, PoolState::Inactive, Some(usage)).contains("<capacity unit='bytes'>0</capacity>"));
    }
}
