//! Host interfaces onto bridges, as `virsh iface-bridge` does (and the seeds' manual
//! `brctl addbr` + `brctl addif` + moving the ifcfg addressing): `iface-bridge IF BRIDGE`
//! creates BRIDGE, moves IF's addresses and routes onto it and enslaves IF; `iface-unbridge
//! BRIDGE` puts everything back exactly as it was and deletes the bridge.
//!
//! What was moved is recorded in `<root>/ifaces/<bridge>.toml` (written atomically) before any
//! host effect: the link's MTU, up/down state and MAC, and every address and route as the
//! kernel's own netlink message (hex), so that they go back as they were, flags, lifetimes,
//! metrics and tables included. The record is also the journal: `phase = "bridging"` or
//! `"unbridging"` means a command was interrupted, and the next iface command (under the same
//! host-wide lock) puts the interface back from it: an interrupted iface-bridge is undone, an
//! interrupted iface-unbridge is finished. Every step is idempotent, so a kill at any point is
//! repaired the same way.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rtnetlink::packet_core::{Emitable, Parseable};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteProtocol};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::netlink::{
    address_ip, route_oif, AddressMessage, BridgeSpec, LinkDetail, Netlink, NetlinkError, RouteMessage,
};
use crate::paths::{Kind, Paths};
use crate::state::{atomic_write, ObjectLock, Revert, Store};

/// The kernel's limit on interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

#[derive(Debug, Error)]
pub enum IfaceError {
    #[error("interface name '{name}' {why}")]
    BadName { name: String, why: String },
    #[error("interface {0} does not exist")]
    NoSuchIface(String),
    #[error("cannot bridge {iface}: it is {what}, not a host interface")]
    NotAnInterface { iface: String, what: String },
    #[error("cannot bridge {iface}: it is already a port of {master}")]
    Enslaved { iface: String, master: String },
    #[error("cannot bridge {iface}: it has no IP address to move onto {bridge} (iface-bridge moves a configured interface's addresses and routes onto the new bridge; link-local IPv6 addresses stay)")]
    NoAddress { iface: String, bridge: String },
    #[error("cannot bridge {iface}: multipath route {route} goes through it (only single-path routes can be moved)")]
    Multipath { iface: String, route: String },
    #[error("cannot create bridge {bridge}: a {kind} link of that name exists already")]
    BridgeExists { bridge: String, kind: String },
    #[error("cannot create bridge {bridge}: {path} records an earlier iface-bridge of {iface} onto it (the bridge is gone, e.g. after a reboot); run iface-unbridge {bridge} first")]
    StaleRecord { bridge: String, iface: String, path: PathBuf },
    #[error("bridge {0} does not exist")]
    NoBridge(String),
    #[error("cannot unbridge {bridge}: it was not created by kvmctl iface-bridge (no record {path}); kvmctl leaves it alone")]
    NotOurs { bridge: String, path: PathBuf },
    #[error("cannot unbridge {bridge}: besides {iface} it has the ports {ports}; detach them first")]
    OtherPorts { bridge: String, iface: String, ports: String },
    #[error("cannot unbridge {bridge}: network '{net}' is active on it; net-destroy {net} first")]
    NetworkActive { bridge: String, net: String },
    #[error("cannot put {iface} back from bridge {bridge}: {what}; the record {path} is kept")]
    Restore { iface: String, bridge: String, what: String, path: PathBuf },
    #[error("{path}: {what}")]
    Record { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> IfaceError + '_ {
    move |source| IfaceError::Io { path: path.to_path_buf(), source }
}

/// How far an iface command got: anything but `bridged` belongs to an interrupted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Bridging,
    Bridged,
    Unbridging,
}

/// An address or route that was moved: readable, and the kernel's message that restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub text: String,
    /// The netlink message as the kernel listed it on the interface (hex).
    pub netlink: String,
}

/// `<root>/ifaces/<bridge>.toml`: what iface-bridge moved, for iface-unbridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceRecord {
    pub bridge: String,
    pub interface: String,
    pub phase: Phase,
    pub stp: bool,
    /// Forward delay in seconds, as asked (the kernel raises it to 2 with STP on).
    pub delay: u32,
    /// The interface's MTU and up/down state before iface-bridge.
    pub mtu: u32,
    pub up: bool,
    pub mac: String,
    pub addresses: Vec<Moved>,
    pub routes: Vec<Moved>,
}

/// Is `name` a name the kernel and kvmctl's paths accept for an interface or bridge?
pub fn check_name(name: &str) -> Result<(), IfaceError> {
    let bad = |why: String| Err(IfaceError::BadName { name: name.escape_debug().to_string(), why });
    if name.is_empty() {
        return bad("is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return bad(format!("is {} bytes long; the kernel allows at most {IFNAME_MAX}", name.len()));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.+-".contains(*c))) {
        return bad(format!("contains {c:?} (allowed: letters, digits, '_', '.', '+', '-')"));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn emit<T: Emitable>(m: &T) -> String {
    let mut buf = vec![0; m.buffer_len()];
    m.emit(&mut buf);
    hex(&buf)
}

fn mac_text(mac: Option<&[u8]>) -> String {
    mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")).unwrap_or_default()
}

fn mac_bytes(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>().ok()?;
    v.try_into().ok()
}

impl IfaceRecord {
    fn path(&self, paths: &Paths) -> PathBuf {
        paths.iface_record(&self.bridge)
    }

    fn save(&self, paths: &Paths) -> Result<(), IfaceError> {
        let dir = paths.ifaces_dir();
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let p = self.path(paths);
        let text = toml::to_string(self).expect("record serializes");
        atomic_write(&p, text.as_bytes()).map_err(io_at(&p))
    }

    fn bad(&self, paths: &Paths, what: String) -> IfaceError {
        IfaceError::Record { path: self.path(paths), what }
    }

    fn addresses(&self, paths: &Paths) -> Result<Vec<AddressMessage>, IfaceError> {
        self.addresses
            .iter()
            .map(|m| {
                let b = unhex(&m.netlink).ok_or_else(|| self.bad(paths, format!("address {}: not hex", m.text)))?;
                AddressMessage::parse(&b[..]).map_err(|e| self.bad(paths, format!("address {}: {e}", m.text)))
            })
            .collect()
    }

    fn routes(&self, paths: &Paths) -> Result<Vec<RouteMessage>, IfaceError> {
        self.routes
            .iter()
            .map(|m| {
                let b = unhex(&m.netlink).ok_or_else(|| self.bad(paths, format!("route {}: not hex", m.text)))?;
                RouteMessage::parse(&b[..]).map_err(|e| self.bad(paths, format!("route {}: {e}", m.text)))
            })
            .collect()
    }
}

/// The record of `bridge`, if there is one.
pub fn load(paths: &Paths, bridge: &str) -> Result<Option<IfaceRecord>, IfaceError> {
    let p = paths.iface_record(bridge);
    match fs::read_to_string(&p) {
        Ok(t) => toml::from_str(&t).map(Some).map_err(|e| IfaceError::Record { path: p, what: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IfaceError::Io { path: p, source: e }),
    }
}

/// Every record, by bridge name.
pub fn records(paths: &Paths) -> Result<Vec<IfaceRecord>, IfaceError> {
    let dir = paths.ifaces_dir();
    let Ok(rd) = fs::read_dir(&dir) else { return Ok(vec![]) };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
        .filter(|n| check_name(n).is_ok())
        .collect();
    names.sort();
    let mut out = vec![];
    for n in names {
        out.extend(load(paths, &n)?);
    }
    Ok(out)
}

/// The host-wide lock every iface command holds (they change the host's addressing).
pub fn lock(paths: &Paths) -> Result<ObjectLock, IfaceError> {
    let dir = paths.locks_dir();
    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let p = paths.ifaces_lock();
    ObjectLock::acquire(&p).map_err(io_at(&p))
}

fn address_text(m: &AddressMessage) -> String {
    match address_ip(m) {
        Some(ip) => format!("{ip}/{}", m.header.prefix_len),
        None => format!("(no address)/{}", m.header.prefix_len),
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(m.header.table.into())
}

fn route_gateway(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_ip(g),
        _ => None,
    })
}

/// A route as `ip route` would show it (without the device).
fn route_text(m: &RouteMessage) -> String {
    let mut s = String::new();
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_ip(d),
        _ => None,
    });
    match dst {
        Some(d) => s.push_str(&format!("{d}/{}", m.header.destination_prefix_length)),
        None if m.header.destination_prefix_length == 0 => s.push_str("default"),
        None => s.push_str(&format!("?/{}", m.header.destination_prefix_length)),
    }
    if let Some(g) = route_gateway(m) {
        s.push_str(&format!(" via {g}"));
    }
    for a in &m.attributes {
        match a {
            RouteAttribute::PrefSource(p) => s.extend(route_ip(p).map(|p| format!(" src {p}"))),
            RouteAttribute::Priority(p) => s.push_str(&format!(" metric {p}")),
            _ => {}
        }
    }
    match route_table(m) {
        254 => {}
        t => s.push_str(&format!(" table {t}")),
    }
    s.push_str(&format!(" proto {}", format!("{:?}", m.header.protocol).to_lowercase()));
    s
}

/// Is this route the kernel's own (made from an address, a router advertisement, the local
/// table), which follows the addresses by itself?
fn kernel_route(m: &RouteMessage) -> bool {
    matches!(m.header.protocol, RouteProtocol::Kernel | RouteProtocol::Ra) || route_table(m) == 255
}

/// An IPv6 link-local address belongs to the link: it is not moved.
fn link_local(m: &AddressMessage) -> bool {
    matches!(address_ip(m), Some(IpAddr::V6(v6)) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The address message to add on link `index` (named `to`) for one listed on link `from`.
fn address_for(m: &AddressMessage, index: u32, from: &str, to: &str) -> AddressMessage {
    let mut m = m.clone();
    m.header.index = index;
    m.header.flags.remove(
        AddressHeaderFlags::Secondary
            | AddressHeaderFlags::Tentative
            | AddressHeaderFlags::Dadfailed
            | AddressHeaderFlags::Deprecated,
    );
    m.attributes = std::mem::take(&mut m.attributes)
        .into_iter()
        .filter_map(|a| match a {
            AddressAttribute::Label(l) => {
                // An alias label (eth0:1) follows the device name; one too long is dropped.
                let rest = l.strip_prefix(from).unwrap_or("");
                let label = format!("{to}{rest}");
                (label.len() <= IFNAME_MAX).then_some(AddressAttribute::Label(label))
            }
            AddressAttribute::Flags(f) => Some(AddressAttribute::Flags(
                f - (AddressFlags::Secondary
                    | AddressFlags::Tentative
                    | AddressFlags::Dadfailed
                    | AddressFlags::Deprecated),
            )),
            a @ (AddressAttribute::Address(_)
            | AddressAttribute::Local(_)
            | AddressAttribute::Broadcast(_)
            | AddressAttribute::Anycast(_)
            | AddressAttribute::CacheInfo(_)
            | AddressAttribute::RoutePriority(_)
            | AddressAttribute::Protocol(_)) => Some(a),
            _ => None,
        })
        .collect();
    m
}

/// The route message to add through link `index` for one listed through another link.
fn route_for(m: &RouteMessage, index: u32) -> RouteMessage {
    let mut m = m.clone();
    m.header.flags &= RouteFlags::Onlink;
    m.attributes = std::mem::take(&mut m.attributes)
        .into_iter()
        .filter_map(|a| match a {
            RouteAttribute::Oif(_) => Some(RouteAttribute::Oif(index)),
            a @ (RouteAttribute::Destination(_)
            | RouteAttribute::Source(_)
            | RouteAttribute::Gateway(_)
            | RouteAttribute::PrefSource(_)
            | RouteAttribute::Priority(_)
            | RouteAttribute::Table(_)
            | RouteAttribute::Metrics(_)
            | RouteAttribute::Preference(_)
            | RouteAttribute::Realm(_)
            | RouteAttribute::Via(_)) => Some(a),
            _ => None,
        })
        .collect();
    m
}

/// The order to add addresses in so that the kernel lists them as before: IPv4 in list order
/// (primaries first), IPv6 in reverse (the kernel puts a new one first).
fn add_order(addrs: &[AddressMessage]) -> Vec<&AddressMessage> {
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.iter().partition(|a| matches!(address_ip(a), Some(IpAddr::V6(_))));
    v4.into_iter().chain(v6.into_iter().rev()).collect()
}

/// Routes without a gateway first: a gateway must be reachable when its route is added.
fn route_order(routes: &[RouteMessage]) -> Vec<&RouteMessage> {
    let mut v: Vec<&RouteMessage> = routes.iter().collect();
    v.sort_by_key(|r| route_gateway(r).is_some());
    v
}

/// What a command did about a record left by an interrupted one.
#[derive(Debug, Clone)]
pub struct Repaired {
    pub bridge: String,
    pub message: String,
}

/// Put back every interface whose iface command was interrupted (under the iface lock).
pub async fn repair_all(store: &Store, nl: &Netlink) -> Result<Vec<Repaired>, IfaceError> {
    let paths = &store.paths;
    crate::state::interrupt::sweep_stale(&paths.ifaces_dir());
    let mut done = vec![];
    for rec in records(paths)? {
        let what = match rec.phase {
            Phase::Bridged => continue,
            Phase::Bridging => "Undid an interrupted iface-bridge",
            Phase::Unbridging => "Finished an interrupted iface-unbridge",
        };
        restore(store, nl, &rec).await?;
        let message = format!(
            "{what} of {} onto {}: {} has its addresses and routes back, {} is gone",
            rec.interface, rec.bridge, rec.interface, rec.bridge
        );
        done.push(Repaired { bridge: rec.bridge.clone(), message });
    }
    Ok(done)
}

/// `iface-bridge IFACE BRIDGE`: the checks, the record, then the moves; any failure puts the
/// interface back. The caller holds the iface lock and has run [`repair_all`].
pub async fn bridge(
    store: &Store,
    nl: &Netlink,
    iface: &str,
    bridge: &str,
    stp: bool,
    delay: u32,
) -> Result<IfaceRecord, IfaceError> {
    check_name(iface)?;
    check_name(bridge)?;
    let paths = &store.paths;
    let dev = nl.link_detail(iface).await?.ok_or_else(|| IfaceError::NoSuchIface(iface.into()))?;
    let not_iface = |what: &str| IfaceError::NotAnInterface { iface: iface.into(), what: what.into() };
    if dev.loopback {
        return Err(not_iface("the loopback device"));
    }
    if let Some(k @ ("bridge" | "bond" | "team")) = dev.link.kind.as_deref() {
        return Err(not_iface(&format!("a {k}")));
    }
    if let Some(m) = dev.link.controller {
        let links = nl.links().await?;
        let master = links.iter().find(|l| l.index == m).map(|l| l.name.clone()).unwrap_or(format!("link {m}"));
        return Err(IfaceError::Enslaved { iface: iface.into(), master });
    }
    if let Some(l) = nl.link(bridge).await? {
        let kind = l.kind.unwrap_or_else(|| "network".into());
        return Err(IfaceError::BridgeExists { bridge: bridge.into(), kind });
    }
    if let Some(r) = load(paths, bridge)? {
        let path = r.path(paths);
        return Err(IfaceError::StaleRecord { bridge: bridge.into(), iface: r.interface, path });
    }
    let rec = snapshot(nl, &dev, bridge, stp, delay).await?;
    // The intent, before any host effect: everything needed to put the interface back.
    rec.save(paths)?;
    crate::fault::point("iface-bridge.recorded");
    let mut undo = Revert::new();
    let (r, s) = (&rec, store);
    undo.on_fail_async(format!("putting {iface} back"), move || async move {
        restore(s, nl, r).await.map_err(|e| e.to_string())
    });
    match bridge_steps(store, nl, &rec, &dev).await {
        Ok(()) => {
            undo.commit();
            let done = IfaceRecord { phase: Phase::Bridged, ..rec.clone() };
            done.save(paths)?;
            Ok(done)
        }
        Err(e) => {
            undo.undo_async().await;
            Err(e)
        }
    }
}

/// The interface as it is: its addresses and the routes through it.
async fn snapshot(
    nl: &Netlink,
    dev: &LinkDetail,
    bridge: &str,
    stp: bool,
    delay: u32,
) -> Result<IfaceRecord, IfaceError> {
    let iface = &dev.link.name;
    let addrs: Vec<AddressMessage> = nl
        .address_messages()
        .await?
        .into_iter()
        .filter(|a| a.header.index == dev.link.index && !link_local(a))
        .collect();
    if addrs.is_empty() {
        return Err(IfaceError::NoAddress { iface: iface.clone(), bridge: bridge.into() });
    }
    let mut routes = vec![];
    for r in nl.route_messages().await? {
        let (oif, multipath) = route_oif(&r);
        if multipath && !kernel_route(&r) {
            let through = r.attributes.iter().any(|a| match a {
                RouteAttribute::MultiPath(hops) => hops.iter().any(|h| h.interface_index == dev.link.index),
                _ => false,
            });
            if through {
                return Err(IfaceError::Multipath { iface: iface.clone(), route: route_text(&r) });
            }
        }
        if oif == Some(dev.link.index) && !kernel_route(&r) {
            routes.push(r);
        }
    }
    Ok(IfaceRecord {
        bridge: bridge.into(),
        interface: iface.clone(),
        phase: Phase::Bridging,
        stp,
        delay,
        mtu: dev.mtu,
        up: dev.up,
        mac: mac_text(dev.mac.as_deref()),
        addresses: addrs.iter().map(|a| Moved { text: address_text(a), netlink: emit(a) }).collect(),
        routes: routes.iter().map(|r| Moved { text: route_text(r), netlink: emit(r) }).collect(),
    })
}

async fn bridge_steps(store: &Store, nl: &Netlink, rec: &IfaceRecord, dev: &LinkDetail) -> Result<(), IfaceError> {
    let paths = &store.paths;
    let (addrs, routes) = (rec.addresses(paths)?, rec.routes(paths)?);
    let spec = BridgeSpec {
        name: &rec.bridge,
        mac: mac_bytes(&rec.mac),
        mtu: Some(rec.mtu),
        stp: rec.stp,
        delay: rec.delay,
        vlan_filtering: false,
    };
    let br = nl.create_bridge(&spec).await?;
    crate::fault::point("iface-bridge.bridge-created");
    for (r, m) in routes.iter().zip(&rec.routes) {
        nl.del_route_message(r.clone(), &m.text).await?;
    }
    for (a, m) in addrs.iter().zip(&rec.addresses).rev() {
        nl.del_address_message(a.clone(), &m.text).await?;
    }
    crate::fault::point("iface-bridge.addresses-removed");
    nl.enslave(dev.link.index, br).await?;
    nl.set_up(br).await?;
    crate::fault::point("iface-bridge.enslaved");
    for a in add_order(&addrs) {
        nl.add_address_message(address_for(a, br, &rec.interface, &rec.bridge), &address_text(a)).await?;
    }
    crate::fault::point("iface-bridge.addresses-moved");
    for r in route_order(&routes) {
        nl.add_route_message(route_for(r, br), &route_text(r)).await?;
    }
    crate::fault::point("iface-bridge.routes-moved");
    Ok(())
}

/// The ports of `bridge` other than `iface`, each with the VM whose tap it is, if one is.
async fn other_ports(store: &Store, nl: &Netlink, bridge: u32, iface: &str) -> Result<Vec<String>, IfaceError> {
    let mut taps = std::collections::HashMap::new();
    for net in networks_on(store, None) {
        for (vm, tap) in crate::domain::runtime::taps_on_network(store, &net.0) {
            taps.insert(tap, format!("VM '{vm}' on network '{}'", net.0));
        }
    }
    Ok(nl
        .links()
        .await?
        .into_iter()
        .filter(|l| l.controller == Some(bridge) && l.name != iface)
        .map(|l| match taps.get(&l.name) {
            Some(owner) => format!("{} (tap of {owner})", l.name),
            None => l.name,
        })
        .collect())
}

/// Active (or degraded) kvmctl networks, with their bridges; only those on `bridge` if given.
fn networks_on(store: &Store, bridge: Option<&str>) -> Vec<(String, String)> {
    let Ok(rd) = fs::read_dir(store.paths.run_dir(Kind::Network)) else { return vec![] };
    let mut out: Vec<(String, String)> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| super::lifecycle::load_state(store, &n).map(|st| (n, st.bridge)))
        .filter(|(_, b)| match bridge {
            Some(want) => want == b,
            None => true,
        })
        .collect();
    out.sort();
    out
}

/// `iface-unbridge BRIDGE`: refuses a bridge kvmctl did not make, one with other ports, one a
/// network is active on; otherwise puts the interface back. The caller holds the iface lock
/// and has run [`repair_all`].
pub async fn unbridge(store: &Store, nl: &Netlink, bridge: &str) -> Result<IfaceRecord, IfaceError> {
    check_name(bridge)?;
    let paths = &store.paths;
    let Some(rec) = load(paths, bridge)? else {
        return Err(match nl.link(bridge).await? {
            Some(_) => IfaceError::NotOurs { bridge: bridge.into(), path: paths.iface_record(bridge) },
            None => IfaceError::NoBridge(bridge.into()),
        });
    };
    if let Some(br) = nl.link(bridge).await? {
        let ports = other_ports(store, nl, br.index, &rec.interface).await?;
        if !ports.is_empty() {
            let (bridge, iface, ports) = (bridge.into(), rec.interface.clone(), ports.join(", "));
            return Err(IfaceError::OtherPorts { bridge, iface, ports });
        }
    }
    if let Some((net, _)) = networks_on(store, Some(bridge)).into_iter().next() {
        return Err(IfaceError::NetworkActive { bridge: bridge.into(), net });
    }
    let rec = IfaceRecord { phase: Phase::Unbridging, ..rec };
    rec.save(paths)?;
    crate::fault::point("iface-unbridge.recorded");
    restore(store, nl, &rec).await?;
    Ok(rec)
}

/// Put the interface back as recorded and delete the bridge; idempotent, so that it finishes
/// from wherever a killed command stopped. The record goes last.
async fn restore(store: &Store, nl: &Netlink, rec: &IfaceRecord) -> Result<(), IfaceError> {
    let paths = &store.paths;
    let fail = |what: String| IfaceError::Restore {
        iface: rec.interface.clone(),
        bridge: rec.bridge.clone(),
        what,
        path: rec.path(paths),
    };
    let (addrs, routes) = (rec.addresses(paths)?, rec.routes(paths)?);
    let dev = nl.link_detail(&rec.interface).await?.ok_or_else(|| fail(format!("{} is gone", rec.interface)))?;
    if let Some(br) = nl.link(&rec.bridge).await? {
        if br.kind.as_deref() != Some("bridge") {
            return Err(fail(format!(
                "{} is now a {} link, not the bridge kvmctl made",
                rec.bridge,
                br.kind.unwrap_or_default()
            )));
        }
        let ports = other_ports(store, nl, br.index, &rec.interface).await?;
        if !ports.is_empty() {
            return Err(fail(format!("{} has other ports: {}; detach them and retry", rec.bridge, ports.join(", "))));
        }
        if dev.link.controller == Some(br.index) {
            nl.set_nomaster(dev.link.index).await?;
        }
        crate::fault::point("iface-unbridge.released");
        nl.delete_link(br.index).await?;
    }
    crate::fault::point("iface-unbridge.bridge-deleted");
    if dev.mtu != rec.mtu {
        nl.set_mtu(dev.link.index, rec.mtu).await?;
    }
    for a in add_order(&addrs) {
        nl.add_address_message(address_for(a, dev.link.index, &rec.interface, &rec.interface), &address_text(a))
            .await?;
    }
    crate::fault::point("iface-unbridge.addresses-restored");
    if rec.up {
        nl.set_up(dev.link.index).await?;
        for r in route_order(&routes) {
            nl.add_route_message(route_for(r, dev.link.index), &route_text(r)).await?;
        }
    } else {
        nl.set_down(dev.link.index).await?;
    }
    let p = rec.path(paths);
    match fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_at(&p)(e)),
        _ => {}
    }
    let _ = crate::state::fsync_dir(&paths.ifaces_dir());
    Ok(())
}

/// One interface for `iface-list`.
#[derive(Debug, Clone, Serialize)]
pub struct IfaceView {
    pub name: String,
    pub state: &'static str,
    pub mac: String,
    pub mtu: u32,
    pub kind: Option<String>,
    pub master: Option<String>,
    pub addresses: Vec<String>,
    /// For a bridge made by iface-bridge: the interface it carries, and the record's phase.
    pub bridged_interface: Option<String>,
    pub phase: Option<Phase>,
}

/// Every link with its state, addresses and master, and what iface-bridge recorded.
pub async fn list(paths: &Paths, nl: &Netlink) -> Result<Vec<IfaceView>, IfaceError> {
    let links = nl.link_details().await?;
    let addrs = nl.address_messages().await?;
    let recs = records(paths)?;
    let name_of = |i: u32| links.iter().find(|l| l.link.index == i).map(|l| l.link.name.clone());
    Ok(links
        .iter()
        .map(|l| {
            let rec = recs.iter().find(|r| r.bridge == l.link.name);
            IfaceView {
                name: l.link.name.clone(),
                state: if l.up { "up" } else { "down" },
                mac: mac_text(l.mac.as_deref()),
                mtu: l.mtu,
                kind: l.link.kind.clone(),
                master: l.link.controller.and_then(name_of),
                addresses: addrs.iter().filter(|a| a.header.index == l.link.index).map(address_text).collect(),
                bridged_interface: rec.map(|r| r.interface.clone()),
                phase: rec.map(|r| r.phase),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_over_fifteen_bytes_or_with_odd_characters_are_refused() {
        check_name("mybridge0").unwrap();
        check_name("eth0.100").unwrap();
        let e = check_name("abcdefghijklmnop").unwrap_err().to_string();
        assert_eq!(e, "interface name 'abcdefghijklmnop' is 16 bytes long; the kernel allows at most 15");
        assert!(check_name("").unwrap_err().to_string().contains("is empty"));
        assert!(check_name("a/b").unwrap_err().to_string().contains("contains '/'"));
        assert!(check_name("-x").unwrap_err().to_string().contains("must start"));
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(mac_bytes("52:54:00:0a:0b:0c"), Some([0x52, 0x54, 0, 10, 11, 12]));
        assert_eq!(mac_bytes("52:54"), None);
    }

    #[test]
    fn an_address_moves_with_its_label_and_flags_but_not_its_kernel_state() {
        use rtnetlink::packet_route::address::AddressHeader;
        let mut m = AddressMessage::default();
        m.header = AddressHeader { prefix_len: 24, index: 2, ..Default::default() };
        m.header.flags = AddressHeaderFlags::Secondary | AddressHeaderFlags::Permanent;
        m.attributes = vec![
            AddressAttribute::Local("10.77.0.5".parse().unwrap()),
            AddressAttribute::Label("eth0:1".into()),
            AddressAttribute::Flags(AddressFlags::Secondary | AddressFlags::Noprefixroute),
        ];
        let b = AddressMessage::parse(&unhex(&emit(&m)).unwrap()[..]).unwrap();
        assert_eq!(b, m, "the record keeps the message as it was");
        let moved = address_for(&m, 9, "eth0", "mybridge0");
        assert_eq!(moved.header.index, 9);
        assert_eq!(moved.header.flags, AddressHeaderFlags::Permanent);
        assert!(moved.attributes.contains(&AddressAttribute::Label("mybridge0:1".into())));
        assert!(moved.attributes.contains(&AddressAttribute::Flags(AddressFlags::Noprefixroute)));
        assert_eq!(address_text(&moved), "10.77.0.5/24");
        let long = address_for(&m, 9, "eth0", "abcdefghijklmn");
        assert!(!long.attributes.iter().any(|a| matches!(a, AddressAttribute::Label(_))), "too long a label goes");
    }

    #[test]
    fn a_route_moves_to_the_new_link_and_reads_like_ip_route() {
        let mut m = RouteMessage::default();
        m.header.protocol = RouteProtocol::Static;
        m.header.table = 254;
        m.header.flags = RouteFlags::Linkdown | RouteFlags::Onlink;
        m.attributes = vec![
            RouteAttribute::Table(254),
            RouteAttribute::Gateway(RouteAddress::Inet("10.77.0.1".parse().unwrap())),
            RouteAttribute::Oif(2),
            RouteAttribute::Priority(50),
            RouteAttribute::Expires(30),
        ];
        assert_eq!(route_text(&m), "default via 10.77.0.1 metric 50 proto static");
        let r = route_for(&m, 7);
        assert_eq!(r.header.flags, RouteFlags::Onlink);
        assert_eq!(route_oif(&r), (Some(7), false));
        assert_eq!(r.attributes.len(), 4, "{:?}", r.attributes);
        assert!(!kernel_route(&m));
        m.header.protocol = RouteProtocol::Kernel;
        assert!(kernel_route(&m));
    }
}
