//! A network's `<vlan>` as bridge VLAN filtering entries (pure; no I/O).
//!
//! libvirt applies `<vlan>` only to Open vSwitch and SR-IOV ports; kvmctl gives it to Linux
//! bridges with the kernel's VLAN filtering (`bridge vlan`), set over netlink
//! (`netlink::Netlink::set_port_vlans`):
//! - a **guest's tap** gets the tags as libvirt's OVS ports would: one tag is an access port
//!   (the VLAN is the port's PVID, egress untagged); a trunk carries every tag tagged, its
//!   native tag (if any) as PVID, egress untagged for `nativeMode='untagged'`;
//! - the **bridge itself** (the host's address on the network, its dnsmasq) is on one VLAN,
//!   untagged: the native tag, else the first;
//! - each **host interface enslaved** by the network (`net-attach-interface`) is an uplink:
//!   every tag, tagged, so another host's bridge or switch sees the VLANs.
//!
//! A bridge kvmctl creates gets `vlan_filtering 1` and `vlan_default_pvid 0` (no port is on a
//! VLAN it was not given). On a bridge-mode network (the admin's bridge) only the taps are
//! set, and the bridge must already filter VLANs.

use super::definition::{NativeMode, NetworkDef, Vlan};

/// One VLAN entry on a bridge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortVlan {
    pub vid: u16,
    /// The port's PVID: untagged frames it receives go to this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the port untagged.
    pub untagged: bool,
}

impl PortVlan {
    fn tagged(vid: u16) -> PortVlan {
        PortVlan { vid, pvid: false, untagged: false }
    }

    fn access(vid: u16) -> PortVlan {
        PortVlan { vid, pvid: true, untagged: true }
    }
}

/// The entries of a guest's tap.
pub fn guest(v: &Vlan) -> Vec<PortVlan> {
    if !v.trunk {
        return v.tags.first().map(|t| PortVlan::access(t.id)).into_iter().collect();
    }
    v.tags
        .iter()
        .map(|t| match t.native {
            None => PortVlan::tagged(t.id),
            Some(mode) => PortVlan { vid: t.id, pvid: true, untagged: mode == NativeMode::Untagged },
        })
        .collect()
}

/// The VLAN of the bridge itself (the host's side of the network).
pub fn host(v: &Vlan) -> Option<u16> {
    v.tags.iter().find(|t| t.native.is_some()).or(v.tags.first()).map(|t| t.id)
}

/// The entries of a host interface the network enslaves.
pub fn uplink(v: &Vlan) -> Vec<PortVlan> {
    v.tags.iter().map(|t| PortVlan::tagged(t.id)).collect()
}

/// What a guest's tap on network `def` is given when it joins the bridge.
pub fn guest_of(def: &NetworkDef) -> Vec<PortVlan> {
    def.vlan.as_ref().map(guest).unwrap_or_default()
}

/// Why `v` cannot be set on a bridge, if it cannot.
pub fn check(v: &Vlan) -> Result<(), String> {
    if v.tags.is_empty() {
        return Err("needs a <tag id='...'/> (a VLAN id from 1 to 4094)".into());
    }
    let mut seen = Vec::new();
    for t in &v.tags {
        if !(1..=4094).contains(&t.id) {
            return Err(format!(
                "<tag id='{}'> is not a VLAN a bridge can carry: ids are 1 to 4094 (0 and 4095 are reserved)",
                t.id
            ));
        }
        if seen.contains(&t.id) {
            return Err(format!("<tag id='{}'> is listed twice", t.id));
        }
        seen.push(t.id);
    }
    if v.tags.iter().filter(|t| t.native.is_some()).count() > 1 {
        // libvirt: "duplicate native vlan setting".
        return Err("more than one <tag> has a nativeMode: a trunk has one native VLAN".into());
    }
    if !v.trunk && v.tags.iter().any(|t| t.native.is_some()) {
        return Err("nativeMode needs trunk='yes' (a single tag is already untagged on the guest's port)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::definition::VlanTag;

    fn tag(id: u16, native: Option<NativeMode>) -> VlanTag {
        VlanTag { id, native }
    }

    #[test]
    fn one_tag_is_an_access_port_and_the_uplink_carries_it_tagged() {
        let v = Vlan { trunk: false, tags: vec![tag(42, None)] };
        assert_eq!(guest(&v), vec![PortVlan { vid: 42, pvid: true, untagged: true }]);
        assert_eq!(host(&v), Some(42));
        assert_eq!(uplink(&v), vec![PortVlan { vid: 42, pvid: false, untagged: false }]);
    }

    #[test]
    fn a_trunk_is_tagged_but_for_its_native_vlan() {
        let v = Vlan { trunk: true, tags: vec![tag(10, None), tag(20, Some(NativeMode::Untagged)), tag(30, None)] };
        let g = guest(&v);
        assert_eq!(g[0], PortVlan { vid: 10, pvid: false, untagged: false });
        assert_eq!(g[1], PortVlan { vid: 20, pvid: true, untagged: true });
        assert_eq!(host(&v), Some(20));
        let t = Vlan { trunk: true, tags: vec![tag(10, None), tag(20, Some(NativeMode::Tagged))] };
        assert_eq!(guest(&t)[1], PortVlan { vid: 20, pvid: true, untagged: false });
        // No native tag: the host is on the first.
        assert_eq!(host(&Vlan { trunk: true, tags: vec![tag(7, None), tag(8, None)] }), Some(7));
    }

    #[test]
    fn what_a_bridge_cannot_carry_is_refused_with_the_reason() {
        for (v, why) in [
            (Vlan { trunk: false, tags: vec![] }, "needs a <tag"),
            (Vlan { trunk: false, tags: vec![tag(0, None)] }, "1 to 4094"),
            (Vlan { trunk: false, tags: vec![tag(4095, None)] }, "1 to 4094"),
            (Vlan { trunk: true, tags: vec![tag(5, None), tag(5, None)] }, "listed twice"),
            (
                Vlan { trunk: true, tags: vec![tag(5, Some(NativeMode::Tagged)), tag(6, Some(NativeMode::Untagged))] },
                "one native VLAN",
            ),
            (Vlan { trunk: false, tags: vec![tag(5, Some(NativeMode::Untagged))] }, "needs trunk='yes'"),
        ] {
            let e = check(&v).unwrap_err();
            assert!(e.contains(why), "{v:?}: {e}");
        }
        assert!(check(&Vlan { trunk: true, tags: vec![tag(1, None), tag(4094, Some(NativeMode::Untagged))] }).is_ok());
    }
}
