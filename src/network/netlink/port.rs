//! Host interfaces enslaved to a network's bridge (`net-attach-interface`): how a link is set
//! up (MTU, up/down, addresses), releasing it from its bridge, and putting it back as it was.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

use super::{op, to_link, Link, Netlink, NetlinkError};

/// A link with the settings a bridge port may change.
#[derive(Debug, Clone)]
pub struct PortLink {
    pub link: Link,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
}

/// An address on a link; `link_local`: IPv6 scope link, which the kernel makes by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddr {
    pub addr: IpAddr,
    pub prefix: u8,
    pub link_local: bool,
}

impl Netlink {
    /// The link `name` with its MTU and up flag; `None` when there is no such link.
    pub async fn port_link(&self, name: &str) -> Result<Option<PortLink>, NetlinkError> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        let m = match s.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) if super::is_enodev(&e) => return Ok(None),
            Err(e) => return Err(op(format!("looking up link {name}"))(e)),
        };
        let mtu = m.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(v) = a { Some(*v) } else { None });
        Ok(Some(PortLink { link: to_link(&m), mtu: mtu.unwrap_or(0), up: m.header.flags.contains(LinkFlags::Up) }))
    }

    /// The addresses on link `index`, in the kernel's order.
    pub async fn link_addresses(&self, index: u32) -> Result<Vec<LinkAddr>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(op(format!("listing the addresses of link {index}")))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                let link_local = addr.is_ipv6() && m.header.scope == AddressScope::Link;
                Some(LinkAddr { addr, prefix: m.header.prefix_len, link_local })
            })
            .collect())
    }
}
