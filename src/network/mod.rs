//! Virtual networks (libvirt network XML model, bridge, firewall, dnsmasq).
//!
//! The pure core lives here: the definition model ([`NetworkDef`], persisted as TOML), the
//! libvirt XML converter ([`libvirt_xml`]), validation ([`NetworkDef::validate`]), and the
//! renderers of the dnsmasq config ([`dnsmasq`]) and of the nftables ruleset ([`firewall`]).
//! None of them touches the host; the code that creates bridges, applies the ruleset and spawns
//! dnsmasq builds on them.

pub mod attach;
pub mod bandwidth;
pub mod definition;
pub mod dnsmasq;
pub mod dnsmasq_options;
mod error;
pub mod firewall;
pub mod iface;
pub mod leases;
pub mod libvirt_xml;
pub mod lifecycle;
pub mod netlink;
mod nftnl;
pub mod unlink;
pub mod update;
mod validate;
pub mod vlan;
mod xml_dom;
mod xml_write;

pub use definition::{
    default_network, next_free_bridge, overlaps, Bootp, BridgeDef, DhcpDef, DhcpHost, DhcpRange, DnsDef, DnsHost,
    DomainDef, Forward, ForwardMode, Forwarder, HostInterface, IpDef, Ipv4Range, Lease, LeaseUnit, MacAddr, NatDef,
    NetworkDef, PortRange, RouteDef, SrvRecord, Subnet, TxtRecord,
};
pub use dnsmasq::{DnsmasqFiles, RunFiles};
pub use error::NetworkError;
pub use libvirt_xml::{parse_any, to_xml};
