//! Host links through rtnetlink: bridges, addresses, routes, enslaving; lookups for the
//! overlap checks. Never the `ip` command.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::InfoBridgePort;
use rtnetlink::packet_route::link::{
    BridgeStpState, BridgeVlanInfoFlags, InfoBridge, InfoData, InfoKind, LinkAttribute, LinkInfo,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkUnspec, RouteMessageBuilder};

use super::vlan::PortVlan;
use thiserror::Error;

mod port;
pub mod tc;
pub use port::{LinkAddr, PortLink};

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("{what}: {source}")]
    Op { what: String, source: rtnetlink::Error },
    #[error("{what}: this kernel has no {feature}")]
    Unsupported { what: String, feature: &'static str },
}

fn op(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Op { what, source }
}

/// Is this the kernel's "no such device" answer?
fn is_enodev(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV)
}

/// Is this the kernel's "already exists" answer?
fn is_eexist(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// A link as kvmctl sees it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub controller: Option<u32>,
}

/// A bridge's VLAN settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeVlans {
    pub filtering: bool,
    pub default_pvid: Option<u16>,
}

/// An address or route found on the host, for overlap checks.
#[derive(Debug, Clone)]
pub struct HostNet {
    pub ifname: String,
    pub addr: IpAddr,
    pub prefix: u8,
    pub what: &'static str,
}

/// Bridge settings as they go to the kernel.
#[derive(Debug, Clone, Default)]
pub struct BridgeSpec<'a> {
    pub name: &'a str,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub stp: bool,
    /// Forward delay in seconds.
    pub delay: u32,
    /// VLAN filtering on, with no default PVID (`<vlan>`: `super::vlan`).
    pub vlan_filtering: bool,
}

/// A netlink connection (its I/O task runs on the current tokio runtime).
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(to_link(&m))),
            Ok(None) => Ok(None),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(op(format!("looking up link {name}"))(e)),
        }
    }

    /// The kernel's IPv4 and IPv6 neighbours (ARP/NDP) on link `index`: (address, MAC).
    pub async fn neighbours(&self, index: u32) -> Result<Vec<(IpAddr, [u8; 6])>, NetlinkError> {
        use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
        let msgs: Vec<_> =
            self.handle.neighbours().get().execute().try_collect().await.map_err(op("list neighbours"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .filter(|m| !matches!(m.header.state, NeighbourState::Failed | NeighbourState::Incomplete))
            .filter_map(|m| {
                let (mut ip, mut mac) = (None, None);
                for a in m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(v4)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(v6)),
                        NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
                        _ => {}
                    }
                }
                Some((ip?, mac?))
            })
            .collect())
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let msgs: Vec<_> = self.handle.link().get().execute().try_collect().await.map_err(op("listing links"))?;
        Ok(msgs.iter().map(to_link).collect())
    }

    /// Create a bridge (down), with its MAC, MTU, STP and forward delay; returns its index.
    pub async fn create_bridge(&self, spec: &BridgeSpec<'_>) -> Result<u32, NetlinkError> {
        let stp = if spec.stp { BridgeStpState::KernelStp } else { BridgeStpState::Disabled };
        let mut b = LinkBridge::new(spec.name)
            .down()
            .append_info_data(InfoBridge::StpState(stp))
            .append_info_data(InfoBridge::ForwardDelay(spec.delay * 100));
        if spec.vlan_filtering {
            b = b.append_info_data(InfoBridge::VlanDefaultPvid(0)).append_info_data(InfoBridge::VlanFiltering(true));
        }
        if let Some(mac) = spec.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        let what = format!("creating bridge {}", spec.name);
        match self.handle.link().add(b.build()).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if spec.vlan_filtering && m.raw_code() == -libc::EOPNOTSUPP => {
                let what = format!("{what} with VLAN filtering (<vlan>)");
                return Err(NetlinkError::Unsupported {
                    what,
                    feature: "bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)",
                });
            }
            r => r.map_err(op(&what))?,
        }
        self.link(spec.name)
            .await?
            .map(|l| l.index)
            .ok_or(NetlinkError::Op { what, source: rtnetlink::Error::RequestFailed })
    }

    pub async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, addr, prefix)
            .execute()
            .await
            .map_err(op(format!("adding address {addr}/{prefix}")))
    }

    /// `add_address`, where an address already there (from a start killed half-way) is fine.
    pub async fn add_address_again(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        match self.add_address(index, addr, prefix).await {
            Err(NetlinkError::Op { source, .. }) if is_eexist(&source) => Ok(()),
            r => r,
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle.link().set(msg).execute().await.map_err(op(format!("bringing link {index} up")))
    }

    /// Attach a link to a bridge and bring it up.
    pub async fn enslave(&self, index: u32, bridge: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).controller(bridge).up().build();
        self.handle.link().set(msg).execute().await.map_err(op(format!("attaching link {index} to bridge {bridge}")))
    }

    /// Attach a VM's port to a bridge, as its network wants it: up, an isolated bridge port
    /// when `isolated` (`<port isolated='yes'/>`), and on the VLANs `vlans` only (`<vlan>`).
    pub async fn attach_port(
        &self,
        index: u32,
        bridge: u32,
        isolated: bool,
        vlans: &[PortVlan],
    ) -> Result<(), NetlinkError> {
        self.enslave(index, bridge).await?;
        if isolated {
            let msg = LinkBridgePort::new(index).append_info_data(InfoBridgePort::Isolated(true)).build();
            let what = format!("making link {index} an isolated bridge port");
            self.handle.link().set_port(msg).execute().await.map_err(op(what))?;
        }
        if !vlans.is_empty() {
            // A bridge with a default PVID (the admin's) put the new port on that VLAN.
            if let Some(pvid) = self.bridge_vlans(bridge).await?.default_pvid.filter(|p| *p != 0) {
                if !vlans.iter().any(|v| v.vid == pvid) {
                    let msg = LinkBridgeVlan::new(index).vlan(pvid, BridgeVlanInfoFlags::empty()).build();
                    let what = format!("removing link {index} from the bridge's default VLAN {pvid}");
                    self.handle.link().del_with_message(msg).execute().await.map_err(op(what))?;
                }
            }
            self.set_port_vlans(index, vlans, false).await?;
        }
        Ok(())
    }

    /// Put bridge port `index` (or the bridge itself, `bridge_self`) on `vlans`.
    pub async fn set_port_vlans(&self, index: u32, vlans: &[PortVlan], bridge_self: bool) -> Result<(), NetlinkError> {
        let mut b = LinkBridgeVlan::new(index);
        if bridge_self {
            b = b.bridge_self();
        }
        for v in vlans {
            let mut flags = BridgeVlanInfoFlags::empty();
            flags.set(BridgeVlanInfoFlags::Pvid, v.pvid);
            flags.set(BridgeVlanInfoFlags::Untagged, v.untagged);
            b = b.vlan(v.vid, flags);
        }
        let ids: Vec<String> = vlans.iter().map(|v| v.vid.to_string()).collect();
        let what = format!("putting link {index} on VLAN {}", ids.join(", "));
        self.handle.link().set(b.build()).execute().await.map_err(op(what))
    }

    /// Turn VLAN filtering on for bridge `index`, with no default PVID (see `super::vlan`).
    pub async fn set_vlan_filtering(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanDefaultPvid(0), InfoBridge::VlanFiltering(true)])),
        ]));
        let what = format!("turning VLAN filtering on for bridge {index}");
        self.handle.link().set_port(msg).execute().await.map_err(op(what))
    }

    /// Bridge `index`'s VLAN filtering and default PVID.
    pub async fn bridge_vlans(&self, index: u32) -> Result<BridgeVlans, NetlinkError> {
        let mut s = self.handle.link().get().match_index(index).execute();
        let m = s.try_next().await.map_err(op(format!("looking up bridge {index}")))?;
        let mut out = BridgeVlans::default();
        for a in m.iter().flat_map(|m| &m.attributes) {
            let LinkAttribute::LinkInfo(infos) = a else { continue };
            for i in infos {
                let LinkInfo::Data(InfoData::Bridge(data)) = i else { continue };
                for d in data {
                    match d {
                        InfoBridge::VlanFiltering(f) => out.filtering = *f,
                        InfoBridge::VlanDefaultPvid(p) => out.default_pvid = Some(*p),
                        _ => {}
                    }
                }
            }
        }
        Ok(out)
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Err(e) if is_enodev(&e) => Ok(()),
            r => r.map_err(op(format!("deleting link {index}"))),
        }
    }

    pub async fn add_route(&self, dst: IpAddr, prefix: u8, gateway: IpAddr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, prefix)
            .and_then(|b| b.gateway(gateway))
            .map_err(|e| NetlinkError::Op {
                what: format!("route {dst}/{prefix} via {gateway}: {e}"),
                source: rtnetlink::Error::RequestFailed,
            })?
            .build();
        self.handle.route().add(msg).execute().await.map_err(op(format!("adding route {dst}/{prefix} via {gateway}")))
    }

    /// `add_route`, where the same route already there (from a start killed half-way) is fine.
    pub async fn add_route_again(&self, dst: IpAddr, prefix: u8, gateway: IpAddr) -> Result<(), NetlinkError> {
        match self.add_route(dst, prefix, gateway).await {
            Err(NetlinkError::Op { source, .. }) if is_eexist(&source) => Ok(()),
            r => r,
        }
    }

    /// Every address and every non-default route on the host, with the interface it is on.
    pub async fn host_nets(&self) -> Result<Vec<HostNet>, NetlinkError> {
        let names: std::collections::HashMap<u32, String> =
            self.links().await?.into_iter().map(|l| (l.index, l.name)).collect();
        let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
        let mut out = Vec::new();
        let addrs: Vec<_> =
            self.handle.address().get().execute().try_collect().await.map_err(op("listing addresses"))?;
        for a in addrs {
            let ip = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(addr) = ip {
                out.push(HostNet { ifname: name(a.header.index), addr, prefix: a.header.prefix_len, what: "address" });
            }
        }
        for family in [RouteMessageBuilder::<IpAddr>::new().build(), {
            let mut m = RouteMessageBuilder::<IpAddr>::new().build();
            m.header.address_family = rtnetlink::packet_route::AddressFamily::Inet6;
            m
        }] {
            let routes: Vec<_> =
                self.handle.route().get(family).execute().try_collect().await.map_err(op("listing routes"))?;
            for r in routes {
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                    RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                    _ => None,
                });
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if let (Some(addr), prefix) = (dst, r.header.destination_prefix_length) {
                    if prefix > 0 {
                        out.push(HostNet { ifname: oif.map(name).unwrap_or_default(), addr, prefix, what: "route" });
                    }
                }
            }
        }
        Ok(out)
    }
}

fn to_link(m: &rtnetlink::packet_route::link::LinkMessage) -> Link {
    let mut l = Link { index: m.header.index, name: String::new(), kind: None, controller: None };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(match k {
                            InfoKind::Bridge => "bridge".to_string(),
                            InfoKind::Veth => "veth".to_string(),
                            InfoKind::Tun => "tun".to_string(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    l
}

// ---- Host interfaces (iface-bridge, iface-unbridge, iface-list): one link's settings,
// addresses and routes as the kernel reports them, so that they can be moved as they are.

pub use rtnetlink::packet_route::address::AddressMessage;
pub use rtnetlink::packet_route::route::RouteMessage;

/// A link with the settings iface-bridge changes and iface-unbridge puts back.
#[derive(Debug, Clone)]
pub struct LinkDetail {
    pub link: Link,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    pub mac: Option<Vec<u8>>,
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn to_detail(m: &rtnetlink::packet_route::link::LinkMessage) -> LinkDetail {
    use rtnetlink::packet_route::link::LinkFlags;
    let mut d = LinkDetail {
        link: to_link(m),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        mac: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Mtu(v) => d.mtu = *v,
            LinkAttribute::Address(mac) => d.mac = Some(mac.clone()),
            _ => {}
        }
    }
    d
}

/// The address an address message carries (IPv4's local address, IPv6's address).
pub fn address_ip(m: &AddressMessage) -> Option<IpAddr> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// The output link of a route, and whether it has several next hops.
pub fn route_oif(m: &RouteMessage) -> (Option<u32>, bool) {
    let oif = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    (oif, m.attributes.iter().any(|a| matches!(a, RouteAttribute::MultiPath(_))))
}

impl Netlink {
    pub async fn link_details(&self) -> Result<Vec<LinkDetail>, NetlinkError> {
        let msgs: Vec<_> = self.handle.link().get().execute().try_collect().await.map_err(op("listing links"))?;
        Ok(msgs.iter().map(to_detail).collect())
    }

    pub async fn link_detail(&self, name: &str) -> Result<Option<LinkDetail>, NetlinkError> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(to_detail(&m))),
            Ok(None) => Ok(None),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(op(format!("looking up link {name}"))(e)),
        }
    }

    /// Every address on the host, as the kernel lists them.
    pub async fn address_messages(&self) -> Result<Vec<AddressMessage>, NetlinkError> {
        self.handle.address().get().execute().try_collect().await.map_err(op("listing addresses"))
    }

    /// Every IPv4 and IPv6 route of every table, as the kernel lists them.
    pub async fn route_messages(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let mut out = Vec::new();
        for msg in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut got: Vec<_> =
                self.handle.route().get(msg).execute().try_collect().await.map_err(op("listing routes"))?;
            out.append(&mut got);
        }
        Ok(out)
    }

    /// Add an address as described by a whole message; one already there is fine.
    pub async fn add_address_message(&self, m: AddressMessage, what: &str) -> Result<(), NetlinkError> {
        let ip = address_ip(&m);
        let mut req = self.handle.address().add(m.header.index, ip.unwrap_or(IpAddr::from([0, 0, 0, 0])), 0);
        *req.message_mut() = m;
        match req.execute().await {
            Err(e) if is_eexist(&e) => Ok(()),
            r => r.map_err(op(format!("adding address {what}"))),
        }
    }

    /// Delete an address; one already gone is fine.
    pub async fn del_address_message(&self, m: AddressMessage, what: &str) -> Result<(), NetlinkError> {
        match self.handle.address().del(m).execute().await {
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) || is_enodev(&e) => Ok(()),
            r => r.map_err(op(format!("removing address {what}"))),
        }
    }

    /// Add a route as described by a whole message; the same route already there is fine.
    pub async fn add_route_message(&self, m: RouteMessage, what: &str) -> Result<(), NetlinkError> {
        match self.handle.route().add(m).execute().await {
            Err(e) if is_eexist(&e) => Ok(()),
            r => r.map_err(op(format!("adding route {what}"))),
        }
    }

    /// Delete a route; one already gone is fine.
    pub async fn del_route_message(&self, m: RouteMessage, what: &str) -> Result<(), NetlinkError> {
        match self.handle.route().del(m).execute().await {
            Err(e) if is_errno(&e, libc::ESRCH) || is_enodev(&e) => Ok(()),
            r => r.map_err(op(format!("removing route {what}"))),
        }
    }

    /// Take a link off its bridge.
    pub async fn set_nomaster(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).nocontroller().build();
        self.handle.link().set(msg).execute().await.map_err(op(format!("detaching link {index} from its bridge")))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle.link().set(msg).execute().await.map_err(op(format!("setting the MTU of link {index} to {mtu}")))
    }

    pub async fn set_down(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.handle.link().set(msg).execute().await.map_err(op(format!("bringing link {index} down")))
    }
}
