//! Host interfaces enslaved to a network's bridge: what libvirt users do by hand with
//! `brctl addif virbr0 ens2`, kept in the definition as kvmctl's own XML element
//! `<kvmctl:interface dev='ens2'/>` (namespace [`XML_NS`], declared on `<network>`) and as
//! `[[interface]] dev = 'ens2'` in the TOML form; set with `net-attach-interface NET IF [--detach]`.
//!
//! Enslaving is a step of `net-start`, after the bridge's addresses and routes (fault point
//! `net-start.interfaces`). Before an interface is enslaved, its MTU, up/down state and
//! addresses are recorded in the network's runtime state ([`Enslaved`]); `net-destroy` and
//! `--detach` release it and put those back. A listed interface that is not on the bridge is a
//! problem of the network (degraded), repaired by the next `net-start`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::lifecycle::{self, LifecycleError, NetState};
use super::netlink::{Netlink, NetlinkError, PortLink};
use super::xml_dom::Element;
use super::{ForwardMode, HostInterface, NetworkDef, NetworkError};
use crate::paths::Kind;
use crate::state::{Revert, Store, StoreError};

/// kvmctl's XML namespace for network definitions: `xmlns:kvmctl='https://kvmctl.dev/xml/network/1'`.
pub const XML_NS: &str = "https://kvmctl.dev/xml/network/1";

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("network '{net}': interface {dev} does not exist")]
    NoSuchInterface { net: String, dev: String },
    #[error("network '{net}': interface {dev} is already enslaved to bridge {bridge}{owner}")]
    EnslavedElsewhere { net: String, dev: String, bridge: String, owner: String },
    #[error("network '{net}': interface {dev} is already attached to network '{other}'")]
    OtherNetwork { net: String, dev: String, other: String },
    #[error("network '{net}': interface {dev} is a bridge (a bridge cannot be a port of another bridge)")]
    IsBridge { net: String, dev: String },
    #[error("network '{net}': interface {dev} is a VM tap{vm} (VM NICs join a network with --network network=NAME)")]
    IsTap { net: String, dev: String, vm: String },
    #[error("network '{net}': interface {dev} is already attached")]
    AlreadyAttached { net: String, dev: String },
    #[error("network '{net}': interface {dev} is not attached")]
    NotAttached { net: String, dev: String },
    #[error("network '{net}' is in bridge mode: its bridge {bridge} is the administrator's, there is nothing to attach (enslave {dev} to {bridge} on the host)")]
    BridgeMode { net: String, dev: String, bridge: String },
    #[error("network '{net}' is degraded (bridge {bridge} is gone): run net-start to repair it first")]
    BridgeGone { net: String, bridge: String },
}

/// How an interface was before `net-start` (or `net-attach-interface`) enslaved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enslaved {
    pub dev: String,
    pub mtu: u32,
    pub up: bool,
    /// Its addresses, IPv6 link-local ones aside (the kernel makes those itself).
    #[serde(default)]
    pub addresses: Vec<(IpAddr, u8)>,
}

// ---------------------------------------------------------------------------------------------
// XML and validation

/// Take kvmctl's own elements out of a `<network>` document: the `xmlns:P` declaration of
/// [`XML_NS`] and its `<P:interface dev=..>` children. What is left is libvirt's XML.
pub(super) fn split_kvmctl_xml(mut root: Element) -> Result<(Element, Vec<HostInterface>), NetworkError> {
    let mut interfaces = vec![];
    for c in super::xml_dom::take_namespace(&mut root, XML_NS, "kvmctl")? {
        if c.name != "kvmctl:interface" {
            let (parent, element, line) = (root.name.clone(), c.name.clone(), c.line);
            return Err(NetworkError::UnknownElement { parent, element, line });
        }
        c.check(&["dev"], &[])?;
        interfaces.push(HostInterface { dev: c.req_attr("dev")?.to_string() });
    }
    Ok((root, interfaces))
}

impl NetworkDef {
    /// The listed host interfaces: valid names, each once, none of them the network's own
    /// bridge, its `<forward dev>` or `lo`; none at all in bridge mode.
    pub(super) fn validate_interfaces(&self) -> Result<(), NetworkError> {
        let net = self.name.as_str();
        for (i, h) in self.interfaces.iter().enumerate() {
            let dev = h.dev.as_str();
            let tag = format!("<kvmctl:interface dev='{dev}'>");
            super::validate::check_ifname(net, &tag, dev, false)?;
            let reason = if self.forward.mode == ForwardMode::Bridge {
                "is not allowed with <forward mode='bridge'>: the bridge is the administrator's, there is nothing to attach"
            } else if Some(dev) == self.bridge_name() {
                "is the network's own bridge"
            } else if self.forward.dev.as_deref() == Some(dev) {
                "is the network's <forward dev> (traffic is forwarded through it, not bridged onto it)"
            } else if dev == "lo" {
                "is the loopback interface"
            } else if self.interfaces[..i].iter().any(|o| o.dev == dev) {
                "is listed twice"
            } else {
                continue;
            };
            return Err(NetworkError::BadText { net: net.into(), tag, reason: reason.into() });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Host effects

/// Refuse a link that cannot become a port of the bridge `ours` (a bridge, a tap, a port of
/// another bridge). `vm_taps`: `(vm, tap)` of the running VMs.
async fn check_port(
    store: &Store,
    nl: &Netlink,
    net: &str,
    p: &PortLink,
    ours: Option<u32>,
    vm_taps: &[(String, String)],
) -> Result<(), LifecycleError> {
    let (net_s, dev) = (net.to_string(), p.link.name.clone());
    match p.link.kind.as_deref() {
        Some("bridge") => return Err(AttachError::IsBridge { net: net_s, dev }.into()),
        Some("tun") => {
            let vm = vm_taps.iter().find(|(_, t)| *t == dev).map(|(vm, _)| format!(" of domain '{vm}'"));
            return Err(AttachError::IsTap { net: net_s, dev, vm: vm.unwrap_or_default() }.into());
        }
        _ => {}
    }
    match p.link.controller {
        Some(c) if Some(c) != ours => {
            let links = nl.links().await?;
            let bridge = links.iter().find(|l| l.index == c).map(|l| l.name.clone()).unwrap_or(format!("if{c}"));
            let owner = lifecycle::all(store)?
                .into_iter()
                .find(|(_, _, st)| st.as_ref().is_some_and(|s| s.bridge == bridge))
                .map(|(n, _, _)| format!(" (network '{n}')"))
                .unwrap_or_default();
            Err(AttachError::EnslavedElsewhere { net: net_s, dev, bridge, owner }.into())
        }
        _ => Ok(()),
    }
}

/// Enslave `dev` to the bridge (index `bridge`): its settings are recorded in the state
/// (saved) before the effect, and `undo` puts it back.
async fn enslave_one<'a>(
    store: &Store,
    nl: &'a Netlink,
    st: &mut NetState,
    dev: &str,
    bridge: u32,
    undo: &mut Revert<'a>,
) -> Result<(), LifecycleError> {
    let net = st.def.name.clone();
    let Some(p) = nl.port_link(dev).await? else {
        return Err(AttachError::NoSuchInterface { net, dev: dev.into() }.into());
    };
    check_port(store, nl, &net, &p, Some(bridge), &[]).await?;
    if p.link.controller == Some(bridge) {
        return Ok(());
    }
    if !st.enslaved.iter().any(|r| r.dev == dev) {
        let addrs = nl.link_addresses(p.link.index).await?;
        let addresses = addrs.into_iter().filter(|a| !a.link_local).map(|a| (a.addr, a.prefix)).collect();
        st.enslaved.push(Enslaved { dev: dev.into(), mtu: p.mtu, up: p.up, addresses });
        lifecycle::save_state(store, &net, st)?;
    }
    let rec = st.enslaved.iter().find(|r| r.dev == dev).cloned().expect("recorded above");
    undo.on_fail_async(format!("release interface {dev} from its bridge"), move || async move {
        restore(nl, &rec, Some(bridge)).await.map_err(|e| e.to_string())
    });
    if let Some(mtu) = st.def.mtu.filter(|m| *m != p.mtu) {
        nl.set_mtu(p.link.index, mtu).await?;
    }
    nl.enslave(p.link.index, bridge).await?;
    if let Some(v) = &st.def.vlan {
        nl.set_port_vlans(p.link.index, &super::vlan::uplink(v), false).await?;
    }
    Ok(())
}

/// Release a recorded interface from `bridge` (when it is still there, or on no bridge) and
/// put its MTU, up/down state and addresses back. An interface that is gone or now on
/// another bridge is left alone.
async fn restore(nl: &Netlink, rec: &Enslaved, bridge: Option<u32>) -> Result<(), NetlinkError> {
    let Some(p) = nl.port_link(&rec.dev).await? else { return Ok(()) };
    let idx = p.link.index;
    match p.link.controller {
        Some(c) if Some(c) != bridge => return Ok(()),
        Some(_) => nl.set_nomaster(idx).await?,
        None => {}
    }
    if p.mtu != rec.mtu {
        nl.set_mtu(idx, rec.mtu).await?;
    }
    match (p.up, rec.up) {
        (true, false) => nl.set_down(idx).await?,
        (false, true) => nl.set_up(idx).await?,
        _ => {}
    }
    for (addr, prefix) in &rec.addresses {
        nl.add_address_again(idx, *addr, *prefix).await?;
    }
    Ok(())
}

/// The `net-start` step (part of `converge`): finish interrupted detaches, then enslave every
/// listed interface that is not on the bridge yet. A listed interface that is missing or on
/// another bridge fails the start.
pub(super) async fn enslave_step<'a>(
    store: &Store,
    nl: &'a Netlink,
    st: &mut NetState,
    bridge: u32,
    undo: &mut Revert<'a>,
) -> Result<(), LifecycleError> {
    let stale: Vec<Enslaved> = st.enslaved.iter().filter(|r| !st.def.has_interface(&r.dev)).cloned().collect();
    for r in stale {
        restore(nl, &r, Some(bridge)).await?;
        st.enslaved.retain(|x| x.dev != r.dev);
        lifecycle::save_state(store, &st.def.name, st)?;
    }
    let devs: Vec<String> = st.def.interfaces.iter().map(|h| h.dev.clone()).collect();
    for dev in &devs {
        enslave_one(store, nl, st, dev, bridge, undo).await?;
    }
    if !devs.is_empty() {
        crate::fault::point("net-start.interfaces");
    }
    Ok(())
}

/// What is wrong with the interfaces of a started network whose bridge (index `bridge`) is there.
pub(super) async fn problems(nl: &Netlink, st: &NetState, bridge: u32) -> Result<Vec<String>, NetlinkError> {
    let mut out = vec![];
    for h in &st.def.interfaces {
        match nl.link(&h.dev).await? {
            None => out.push(format!("interface {} is gone", h.dev)),
            Some(l) if l.controller != Some(bridge) => {
                out.push(format!("interface {} is not attached to bridge {}", h.dev, st.bridge))
            }
            Some(_) => {}
        }
    }
    for r in st.enslaved.iter().filter(|r| !st.def.has_interface(&r.dev)) {
        out.push(format!("interface {}: its detach was interrupted", r.dev));
    }
    Ok(out)
}

/// `net-destroy`: release every recorded interface, as it was before it was enslaved.
pub(super) async fn release_all(nl: &Netlink, st: &NetState) -> Result<(), LifecycleError> {
    let bridge = nl.link(&st.bridge).await?.map(|l| l.index);
    for r in &st.enslaved {
        restore(nl, r, bridge).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// net-attach-interface

/// What `net-attach-interface` changed.
#[derive(Debug, Clone, Default)]
pub struct AttachReport {
    /// The running network's bridge, when the interface was enslaved to it or released from it.
    pub live_bridge: Option<String>,
    /// The persistent definition was changed.
    pub config: bool,
    /// The interface does not exist now (an attach to an inactive network only).
    pub missing: bool,
}

fn persistent(store: &Store, net: &str) -> Result<Option<NetworkDef>, LifecycleError> {
    match store.load::<NetworkDef>(Kind::Network, net) {
        Ok(d) => Ok(Some(d)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn refuse_bridge_mode(def: &NetworkDef, dev: &str) -> Result<(), LifecycleError> {
    if def.forward.mode != ForwardMode::Bridge {
        return Ok(());
    }
    let bridge = def.bridge_name().unwrap_or_default().to_string();
    Err(AttachError::BridgeMode { net: def.name.clone(), dev: dev.into(), bridge }.into())
}

/// The network `net` as defined (persistent) and as running; "not found" when neither.
fn both(store: &Store, net: &str) -> Result<(Option<NetworkDef>, Option<NetState>), LifecycleError> {
    let (def, st) = (persistent(store, net)?, lifecycle::load_state(store, net));
    if def.is_none() && st.is_none() {
        return Err(StoreError::NotFound { kind: "network", name: net.into() }.into());
    }
    Ok((def, st))
}

/// `net-attach-interface NET IF`: list `dev` in the definition and, when the network runs,
/// enslave it now. Call under the network's lock. Run again after a kill, it finishes what
/// is left (the running side first, then the definition).
pub async fn attach(
    store: &Store,
    nl: &Netlink,
    net: &str,
    dev: &str,
    vm_taps: &[(String, String)],
) -> Result<AttachReport, LifecycleError> {
    let (def, st) = both(store, net)?;
    for d in def.iter().chain(st.as_ref().map(|s| &s.def)) {
        refuse_bridge_mode(d, dev)?;
    }
    let need_config = def.as_ref().is_some_and(|d| !d.has_interface(dev));
    let need_live = st.as_ref().is_some_and(|s| !s.def.has_interface(dev));
    if !need_config && !need_live {
        return Err(AttachError::AlreadyAttached { net: net.into(), dev: dev.into() }.into());
    }
    let with_dev = |d: &NetworkDef| -> Result<NetworkDef, NetworkError> {
        let mut d = d.clone();
        d.interfaces.push(HostInterface { dev: dev.into() });
        d.validate_interfaces().map(|_| d)
    };
    let new_def = def.as_ref().filter(|_| need_config).map(with_dev).transpose()?;
    let new_live = st.as_ref().filter(|_| need_live).map(|s| with_dev(&s.def)).transpose()?;
    for (n, d, s) in lifecycle::all(store)? {
        if n != net && (d.is_some_and(|d| d.has_interface(dev)) || s.is_some_and(|s| s.def.has_interface(dev))) {
            return Err(AttachError::OtherNetwork { net: net.into(), dev: dev.into(), other: n }.into());
        }
    }
    let port = nl.port_link(dev).await?;
    match &port {
        None if need_live => return Err(AttachError::NoSuchInterface { net: net.into(), dev: dev.into() }.into()),
        None => {}
        Some(p) => check_port(store, nl, net, p, None, vm_taps).await?,
    }
    let mut report = AttachReport { missing: port.is_none(), ..AttachReport::default() };
    if let (Some(mut st), Some(live_def)) = (st, new_live) {
        let bridge = match nl.link(&st.bridge).await? {
            Some(l) => l.index,
            None => return Err(AttachError::BridgeGone { net: net.into(), bridge: st.bridge }.into()),
        };
        st.def = live_def;
        // The intent first: a kill from here on leaves a degraded network that net-start repairs.
        lifecycle::save_state(store, net, &st)?;
        let mut undo = Revert::new();
        if let Err(e) = enslave_one(store, nl, &mut st, dev, bridge, &mut undo).await {
            undo.undo_async().await;
            st.def.interfaces.retain(|h| h.dev != dev);
            st.enslaved.retain(|r| r.dev != dev);
            lifecycle::save_state(store, net, &st)?;
            return Err(e);
        }
        undo.commit();
        report.live_bridge = Some(st.bridge.clone());
    }
    if let Some(d) = new_def {
        store.save(Kind::Network, net, &d)?;
        report.config = true;
    }
    Ok(report)
}

/// `net-attach-interface NET IF --detach`: release `dev` (as it was before it was enslaved)
/// when the network runs, and drop it from the definition. Call under the network's lock.
pub async fn detach(store: &Store, nl: &Netlink, net: &str, dev: &str) -> Result<AttachReport, LifecycleError> {
    let (def, st) = both(store, net)?;
    for d in def.iter().chain(st.as_ref().map(|s| &s.def)) {
        refuse_bridge_mode(d, dev)?;
    }
    let in_config = def.as_ref().is_some_and(|d| d.has_interface(dev));
    let in_live = st.as_ref().is_some_and(|s| s.def.has_interface(dev) || s.enslaved.iter().any(|r| r.dev == dev));
    if !in_config && !in_live {
        return Err(AttachError::NotAttached { net: net.into(), dev: dev.into() }.into());
    }
    let mut report = AttachReport::default();
    if let (Some(mut st), true) = (st, in_live) {
        // The intent: no longer listed, still recorded (net-start finishes a killed detach).
        st.def.interfaces.retain(|h| h.dev != dev);
        lifecycle::save_state(store, net, &st)?;
        let bridge = nl.link(&st.bridge).await?.map(|l| l.index);
        if let Some(rec) = st.enslaved.iter().find(|r| r.dev == dev) {
            restore(nl, rec, bridge).await?;
        }
        st.enslaved.retain(|r| r.dev != dev);
        lifecycle::save_state(store, net, &st)?;
        report.live_bridge = Some(st.bridge.clone());
    }
    if let (Some(mut d), true) = (def, in_config) {
        d.interfaces.retain(|h| h.dev != dev);
        store.save(Kind::Network, net, &d)?;
        report.config = true;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(extra: &str) -> NetworkDef {
        let xml = format!(
            "<network xmlns:kvmctl='{XML_NS}'><name>n</name><bridge name='br-n'/>{extra}<kvmctl:interface dev='ens2'/></network>"
        );
        super::super::libvirt_xml::parse(&xml).unwrap()
    }

    #[test]
    fn interfaces_are_checked_against_the_network() {
        assert_eq!(def("").validate(), Ok(()));
        let twice = def("<kvmctl:interface dev='ens2'/>");
        assert!(twice.validate().unwrap_err().to_string().contains("<kvmctl:interface dev='ens2'>: is listed twice"));
        let mut own = def("");
        own.interfaces[0].dev = "br-n".into();
        assert_eq!(
            own.validate().unwrap_err().to_string(),
            "network 'n': <kvmctl:interface dev='br-n'>: is the network's own bridge"
        );
        let mut lo = def("");
        lo.interfaces[0].dev = "lo".into();
        assert!(lo.validate().unwrap_err().to_string().contains("loopback"));
        let mut long = def("");
        long.interfaces[0].dev = "a-very-long-ifname".into();
        assert!(long.validate().unwrap_err().to_string().contains("longer than 15 bytes"));
        let mut bridged = def("<forward mode='bridge'/>");
        bridged.mac = None;
        bridged.bridge.stp = true;
        let e = bridged.validate().unwrap_err().to_string();
        assert!(e.contains("not allowed with <forward mode='bridge'>"), "{e}");
    }
}
