//! The network definition model: libvirt's network XML as Rust types.
//!
//! This is also the persistent form, stored as TOML in `<root>/networks/<name>.toml`, and
//! `net-define` accepts the same TOML. Field names follow the XML where they can (`[[ip]]`,
//! `[[ip.dhcp.range]]`, `[[dns.host]]`), and unknown TOML keys are refused like unknown XML.
//!
//! Parsing (XML or TOML) checks syntax only; [`NetworkDef::validate`] (in `validate.rs`) checks
//! the meaning. `net-define` is: parse -> [`NetworkDef::complete`] -> validate -> store.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::NetworkError;

/// The libvirt default network, as libvirt installs it (no uuid: generated at define time).
pub const DEFAULT_TEMPLATE: &str = include_str!("../../templates/networks/default.xml");

/// A complete network definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    pub name: String,
    /// Nil when the XML or TOML has none: [`NetworkDef::complete`] generates one (v4), and a
    /// redefinition keeps the defined network's.
    #[serde(default = "Uuid::nil")]
    pub uuid: Uuid,
    /// Not part of the XML (virsh keeps it apart too): `net-autostart`.
    #[serde(default)]
    pub autostart: bool,
    /// `<network ipv6='yes'>`: allow guest-to-guest IPv6 on the bridge even without an IPv6 `<ip>`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ipv6: bool,
    #[serde(default)]
    pub forward: Forward,
    #[serde(default)]
    pub bridge: BridgeDef,
    /// `<port isolated='yes'/>`: every VM port on the bridge is an isolated bridge port (the
    /// kernel's `isolated` flag): guests reach the host and the uplink, never each other.
    #[serde(default, skip_serializing_if = "is_false")]
    pub port_isolated: bool,
    /// MAC address of the bridge; filled by [`NetworkDef::complete`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainDef>,
    #[serde(default, skip_serializing_if = "DnsDef::is_default")]
    pub dns: DnsDef,
    #[serde(default, rename = "ip", skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpDef>,
    #[serde(default, rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteDef>,
    /// `<metadata>`: the applications' own elements, kept verbatim (the XML between the tags)
    /// and written back as they came; kvmctl does not read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// `<kvmctl:interface dev='..'/>` (kvmctl's XML namespace): host interfaces that
    /// `net-start` enslaves to the bridge (`net-attach-interface`), as `brctl addif` would.
    #[serde(default, rename = "interface", skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<HostInterface>,
    /// libvirt's `<dnsmasq:options><dnsmasq:option value='..'/>`: extra dnsmasq config lines,
    /// written at the end of its config (checked by `super::dnsmasq_options`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dnsmasq_options: Vec<String>,
    /// `<bandwidth>`: limits on the network's bridge as a whole (`super::netlink::tc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    /// `<vlan>`: the VLAN(s) the network's guests are on, with the bridge's VLAN filtering
    /// (`super::vlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<Vlan>,
}

/// libvirt's `<vlan trunk='yes'><tag id='42' nativeMode='untagged'/></vlan>`: one tag is an
/// access port (the guest sends and receives untagged frames on that VLAN), several are a
/// trunk (tagged frames, the native tag's untagged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vlan {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trunk: bool,
    #[serde(rename = "tag")]
    pub tags: Vec<VlanTag>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlanTag {
    pub id: u16,
    /// libvirt's `nativeMode`: the trunk's VLAN for the guest's untagged frames, sent back to
    /// it untagged (`untagged`) or tagged (`tagged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeMode {
    Tagged,
    Untagged,
}

impl NativeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NativeMode::Tagged => "tagged",
            NativeMode::Untagged => "untagged",
        }
    }
}

/// libvirt's network-wide `<bandwidth>`: `inbound` is the traffic into the network (toward
/// its guests: the bridge's egress, shaped by HTB), `outbound` the traffic out of it (from
/// the guests: the bridge's ingress, policed), as libvirt sets them on the bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Rate>,
}

/// One direction of `<bandwidth>`, in libvirt's units: `average` and `peak` in kilobytes
/// per second (1000 bytes, tc's `kbps`, as libvirt hands them to tc), `burst` in KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub average: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A host interface enslaved to the network's bridge while the network runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInterface {
    pub dev: String,
}

impl NetworkDef {
    /// Does the definition list host interface `dev`?
    pub fn has_interface(&self, dev: &str) -> bool {
        self.interfaces.iter().any(|i| i.dev == dev)
    }
}

/// `<forward mode=...>`; no `<forward>` element at all is `Isolated`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    Nat,
    Route,
    Open,
    Bridge,
    #[default]
    Isolated,
}

impl ForwardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMode::Nat => "nat",
            ForwardMode::Route => "route",
            ForwardMode::Open => "open",
            ForwardMode::Bridge => "bridge",
            ForwardMode::Isolated => "isolated",
        }
    }
}

impl fmt::Display for ForwardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    #[serde(default)]
    pub mode: ForwardMode,
    /// `<forward dev=...>`: the only host interface traffic may be forwarded through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// `<nat>`; meaningful for mode nat only.
    #[serde(default, skip_serializing_if = "NatDef::is_default")]
    pub nat: NatDef,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatDef {
    /// `<address start end>`: SNAT to this range instead of masquerading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Range>,
    /// `<port start end>`; libvirt's default 1024-65535.
    #[serde(default)]
    pub port: PortRange,
    /// `<nat ipv6='yes'>` (libvirt >= 6.5): masquerade the IPv6 subnets too; without it the
    /// IPv6 of a NAT network is routed (guest addresses kept), as in libvirt.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ipv6: bool,
}

impl NatDef {
    pub fn is_default(&self) -> bool {
        *self == NatDef::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4Range {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange { start: 1024, end: 65535 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeDef {
    /// Generated (`virbrN`, lowest free) by [`NetworkDef::complete`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "yes")]
    pub stp: bool,
    #[serde(default)]
    pub delay: u32,
    /// `zone='..'`: the firewalld zone libvirt puts the bridge in. Kept and written back;
    /// kvmctl's firewall is its own nft table, so the zone has no effect (net-start says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Default for BridgeDef {
    fn default() -> Self {
        BridgeDef { name: None, stp: true, delay: 0, zone: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainDef {
    pub name: String,
    /// `localOnly='yes'`: names in this domain are never forwarded upstream.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDef {
    /// `enable='no'`: dnsmasq serves no DNS (`port=0`).
    #[serde(default = "yes")]
    pub enable: bool,
    /// `forwardPlainNames`; `Some(false)` keeps single-label names local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_plain_names: Option<bool>,
    #[serde(default, rename = "forwarder", skip_serializing_if = "Vec::is_empty")]
    pub forwarders: Vec<Forwarder>,
    #[serde(default, rename = "txt", skip_serializing_if = "Vec::is_empty")]
    pub txts: Vec<TxtRecord>,
    #[serde(default, rename = "srv", skip_serializing_if = "Vec::is_empty")]
    pub srvs: Vec<SrvRecord>,
    #[serde(default, rename = "host", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<DnsHost>,
}

impl Default for DnsDef {
    fn default() -> Self {
        DnsDef {
            enable: true,
            forward_plain_names: None,
            forwarders: Vec::new(),
            txts: Vec::new(),
            srvs: Vec::new(),
            hosts: Vec::new(),
        }
    }
}

impl DnsDef {
    pub fn is_default(&self) -> bool {
        *self == DnsDef::default()
    }
}

/// `<forwarder addr='8.8.8.8'/>`, `<forwarder domain='x' addr='..'/>`, `<forwarder domain='x'/>`
/// (the last one: resolve that domain with the host's usual servers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forwarder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxtRecord {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrvRecord {
    pub service: String,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
}

/// `<host ip='..'><hostname>a</hostname>...</host>` inside `<dns>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsHost {
    pub ip: IpAddr,
    #[serde(rename = "hostname")]
    pub hostnames: Vec<String>,
}

/// One `<ip>`: an address of the bridge and its subnet, with optional DHCP and TFTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpDef {
    pub address: IpAddr,
    pub prefix: u8,
    /// `family='ipv4'` was written (IPv6 addresses always carry `family='ipv6'`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub explicit_family: bool,
    /// How the prefix is written back: as the user wrote it.
    #[serde(default, skip_serializing_if = "MaskForm::is_usual")]
    pub mask: MaskForm,
    /// `localPtr='yes'`: reverse lookups for this subnet are answered locally only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local_ptr: bool,
    /// `<tftp root='..'/>`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpDef>,
}

impl IpDef {
    /// The subnet this address lives in (network address + prefix).
    pub fn subnet(&self) -> Subnet {
        Subnet::new(self.address, self.prefix)
    }
    pub fn is_ipv4(&self) -> bool {
        self.address.is_ipv4()
    }
    /// True when this `<ip>` asks for a DHCP server (ranges or static hosts).
    pub fn has_dhcp(&self) -> bool {
        self.dhcp.as_ref().is_some_and(|d| !d.ranges.is_empty() || !d.hosts.is_empty())
    }
}

/// The form of an `<ip>`'s prefix in the XML, kept so that dumpxml writes what was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskForm {
    /// `netmask=` for IPv4, `prefix=` for IPv6.
    #[default]
    Usual,
    /// `prefix=` on an IPv4 address.
    Prefix,
    /// Neither: libvirt's implied prefix (the address class for IPv4, 64 for IPv6).
    Implied,
}

impl MaskForm {
    pub fn is_usual(&self) -> bool {
        *self == MaskForm::Usual
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpDef {
    #[serde(default, rename = "range", skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<DhcpRange>,
    #[serde(default, rename = "host", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<DhcpHost>,
    /// `<bootp file='pxelinux.0' server='..'/>`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootp: Option<Bootp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpRange {
    pub start: IpAddr,
    pub end: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// `<host mac='..' id='..' name='..' ip='..'/>` inside `<dhcp>`: a static lease.
/// IPv4 hosts are keyed by `mac` (or `name`), IPv6 hosts by `id` (DUID) or `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpHost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// `<lease expiry='N' unit='seconds|minutes|hours'/>`; expiry 0 means infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub expiry: u64,
    #[serde(default)]
    pub unit: LeaseUnit,
}

impl Lease {
    /// Lease length in seconds; `None` for an infinite lease.
    pub fn seconds(&self) -> Option<u64> {
        let mult = match self.unit {
            LeaseUnit::Seconds => 1,
            LeaseUnit::Minutes => 60,
            LeaseUnit::Hours => 3600,
        };
        (self.expiry != 0).then(|| self.expiry.saturating_mul(mult))
    }
}

/// libvirt's default unit is minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseUnit {
    Seconds,
    #[default]
    Minutes,
    Hours,
}

impl LeaseUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseUnit::Seconds => "seconds",
            LeaseUnit::Minutes => "minutes",
            LeaseUnit::Hours => "hours",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootp {
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Ipv4Addr>,
}

/// `<route address='..' prefix='..' gateway='..' metric='..'/>`: a static route on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

impl RouteDef {
    pub fn subnet(&self) -> Subnet {
        Subnet::new(self.address, self.prefix)
    }
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------------------------
// MAC addresses

/// An Ethernet MAC address; text form `52:54:00:ab:cd:ef` (parsing accepts upper case and
/// single-digit groups like libvirt; display is always lower case, two digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NetworkError::BadMac { value: s.escape_debug().to_string(), reason };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(|| bad("expected six ':'-separated bytes"))?;
            if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("each byte is one or two hex digits"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad("each byte is one or two hex digits"))?;
        }
        if parts.next().is_some() {
            return Err(bad("expected six ':'-separated bytes"));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Subnets

/// A subnet: network address (host bits cleared) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub network: IpAddr,
    pub prefix: u8,
}

/// The width in bits of an address family.
fn width(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

pub(crate) fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn ip_from_bits(bits: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    } else {
        IpAddr::V6(bits.into())
    }
}

/// Host-part mask of a prefix within `width` bits.
fn host_mask(prefix: u8, width: u8) -> u128 {
    let host_bits = width.saturating_sub(prefix) as u32;
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

impl Subnet {
    /// The subnet of `addr/prefix`; a prefix beyond the family's width is clamped.
    pub fn new(addr: IpAddr, prefix: u8) -> Subnet {
        let prefix = prefix.min(width(addr));
        let bits = ip_bits(addr) & !host_mask(prefix, width(addr));
        Subnet { network: ip_from_bits(bits, addr.is_ipv4()), prefix }
    }
    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && Subnet::new(ip, self.prefix).network == self.network
    }
    /// The last address of the subnet (the IPv4 broadcast address).
    pub fn last(&self) -> IpAddr {
        let w = width(self.network);
        ip_from_bits(ip_bits(self.network) | host_mask(self.prefix, w), self.is_ipv4())
    }
    /// The IPv4 broadcast address, when the subnet has one (prefix below 31).
    pub fn broadcast(&self) -> Option<IpAddr> {
        (self.is_ipv4() && self.prefix < 31).then(|| self.last())
    }
    /// The IPv4 netmask (e.g. 255.255.255.0); `None` for IPv6.
    pub fn netmask(&self) -> Option<Ipv4Addr> {
        self.is_ipv4().then(|| prefix_to_netmask(self.prefix))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// True when the two subnets share at least one address.
pub fn overlaps(a: &Subnet, b: &Subnet) -> bool {
    a.contains(b.network) || b.contains(a.network)
}

pub fn prefix_to_netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(!(host_mask(prefix.min(32), 32) as u32))
}

/// The prefix of a contiguous netmask (255.255.255.0 -> 24); `None` for e.g. 255.0.255.0.
pub fn netmask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let prefix = m.leading_ones();
    (m.checked_shl(prefix).unwrap_or(0) == 0).then_some(prefix as u8)
}

/// Number of addresses from `start` to `end` inclusive (0 when reversed or mixed families).
pub fn range_len(start: IpAddr, end: IpAddr) -> u128 {
    if start.is_ipv4() != end.is_ipv4() || ip_bits(end) < ip_bits(start) {
        return 0;
    }
    (ip_bits(end) - ip_bits(start)).saturating_add(1)
}

// ---------------------------------------------------------------------------------------------
// Defaults and generated values

/// A small stable hash (MACs from uuids, nft table name suffixes): 64-bit FNV-1a followed by
/// the murmur3 finalizer, so that inputs differing in one byte differ in every output byte.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The lowest `virbrN` not in `used`.
pub fn next_free_bridge(used: &HashSet<String>) -> String {
    (0u32..).map(|n| format!("virbr{n}")).find(|name| !used.contains(name)).expect("u32 range is not exhausted")
}

/// libvirt's `default` network from `templates/networks/default.xml`, with a fresh uuid, its
/// bridge MAC derived from that uuid, and autostart on.
pub fn default_network() -> NetworkDef {
    let mut def = super::libvirt_xml::parse(DEFAULT_TEMPLATE).expect("templates/networks/default.xml parses");
    def.autostart = true;
    def.uuid = Uuid::new_v4();
    def.mac = Some(def.generate_mac());
    def
}

impl NetworkDef {
    /// A locally administered-looking libvirt MAC (52:54:00:xx:xx:xx), stable for this uuid.
    pub fn generate_mac(&self) -> MacAddr {
        let h = stable_hash(self.uuid.as_bytes()).to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, h[0], h[1], h[2]])
    }

    /// The bridge name, or the lowest free `virbrN` given the names in use.
    pub fn bridge_name_or(&self, used: &HashSet<String>) -> String {
        self.bridge.name.clone().unwrap_or_else(|| next_free_bridge(used))
    }

    /// Fill in what libvirt fills in at define time: a bridge name and a bridge MAC for the
    /// modes where kvmctl creates the bridge (everything but `bridge`).
    pub fn complete(&mut self, used_bridges: &HashSet<String>) {
        if self.uuid.is_nil() {
            self.uuid = Uuid::new_v4();
        }
        if self.forward.mode == ForwardMode::Bridge {
            return;
        }
        if self.bridge.name.is_none() {
            self.bridge.name = Some(next_free_bridge(used_bridges));
        }
        if self.mac.is_none() {
            self.mac = Some(self.generate_mac());
        }
    }

    /// kvmctl creates (and deletes) the bridge itself: every mode but `bridge`.
    pub fn creates_bridge(&self) -> bool {
        self.forward.mode != ForwardMode::Bridge
    }

    pub fn bridge_name(&self) -> Option<&str> {
        self.bridge.name.as_deref()
    }

    /// The subnets of all `<ip>` elements, in order.
    pub fn subnets(&self) -> Vec<Subnet> {
        self.ips.iter().map(IpDef::subnet).collect()
    }

    /// The `<ip>` of the given family that carries DHCP, if any.
    pub fn dhcp_ip(&self, ipv4: bool) -> Option<&IpDef> {
        self.ips.iter().find(|ip| ip.is_ipv4() == ipv4 && ip.has_dhcp())
    }

    /// Parse the persistent TOML form (syntax only; call [`NetworkDef::validate`] after).
    pub fn from_toml(text: &str) -> Result<NetworkDef, NetworkError> {
        toml::from_str(text).map_err(|e| NetworkError::Toml(e.to_string().trim_end().to_string()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a NetworkDef always serializes to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_libvirt_forms_and_prints_lower_case() {
        let m: MacAddr = "00:16:3E:5D:C7:9E".parse().unwrap();
        assert_eq!(m.to_string(), "00:16:3e:5d:c7:9e");
        assert_eq!("52:54:0:a:b:c".parse::<MacAddr>().unwrap().to_string(), "52:54:00:0a:0b:0c");
    }

    #[test]
    fn malformed_mac_is_refused() {
        for bad in
            ["", "52:54:00:12:34", "52:54:00:12:34:56:78", "52-54-00-12-34-56", "52:54:00:12:34:5g", "123:4:5:6:7:8"]
        {
            assert!(matches!(bad.parse::<MacAddr>(), Err(NetworkError::BadMac { .. })), "{bad}");
        }
    }

    #[test]
    fn mac_flags() {
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_multicast());
        assert!(!"52:54:00:00:00:01".parse::<MacAddr>().unwrap().is_multicast());
        assert!("00:00:00:00:00:00".parse::<MacAddr>().unwrap().is_zero());
    }

    #[test]
    fn subnet_math() {
        let s = Subnet::new("192.168.122.1".parse().unwrap(), 24);
        assert_eq!(s.to_string(), "192.168.122.0/24");
        assert_eq!(s.broadcast().unwrap().to_string(), "192.168.122.255");
        assert_eq!(s.netmask().unwrap().to_string(), "255.255.255.0");
        assert!(s.contains("192.168.122.254".parse().unwrap()));
        assert!(!s.contains("192.168.123.1".parse().unwrap()));
        assert!(!s.contains("::1".parse().unwrap()));
        let v6 = Subnet::new("2001:db8:ca2:2::1".parse().unwrap(), 64);
        assert_eq!(v6.to_string(), "2001:db8:ca2:2::/64");
        assert_eq!(v6.broadcast(), None);
        assert_eq!(Subnet::new("10.1.2.3".parse().unwrap(), 0).to_string(), "0.0.0.0/0");
    }

    #[test]
    fn overlapping_subnets_are_detected() {
        let a = Subnet::new("10.0.0.0".parse().unwrap(), 8);
        let b = Subnet::new("10.20.0.1".parse().unwrap(), 16);
        let c = Subnet::new("192.168.1.1".parse().unwrap(), 24);
        let v6 = Subnet::new("::".parse().unwrap(), 0);
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c));
        assert!(!overlaps(&a, &v6), "families never overlap");
    }

    #[test]
    fn netmask_prefix_conversions() {
        assert_eq!(netmask_to_prefix("255.255.255.0".parse().unwrap()), Some(24));
        assert_eq!(netmask_to_prefix("255.255.255.255".parse().unwrap()), Some(32));
        assert_eq!(netmask_to_prefix("0.0.0.0".parse().unwrap()), Some(0));
        assert_eq!(netmask_to_prefix("255.0.255.0".parse().unwrap()), None);
        assert_eq!(prefix_to_netmask(20).to_string(), "255.255.240.0");
        assert_eq!(prefix_to_netmask(0).to_string(), "0.0.0.0");
    }

    #[test]
    fn next_free_bridge_takes_the_lowest_gap() {
        let used: HashSet<String> = ["virbr0", "virbr1", "virbr3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(next_free_bridge(&used), "virbr2");
        assert_eq!(next_free_bridge(&HashSet::new()), "virbr0");
    }

    #[test]
    fn generated_mac_is_stable_per_uuid_and_libvirt_prefixed() {
        let mut def = default_network();
        def.uuid = Uuid::parse_str("588369df-02d6-45d8-9aec-1e869a1a8737").unwrap();
        let m = def.generate_mac();
        assert_eq!(m, def.generate_mac());
        assert_eq!(&m.0[..3], &[0x52, 0x54, 0x00]);
        assert!(!m.is_multicast());
        let macs: HashSet<MacAddr> = (0..=255u8)
            .map(|last| {
                let mut bytes = *def.uuid.as_bytes();
                bytes[15] = last;
                def.uuid = Uuid::from_bytes(bytes);
                def.generate_mac()
            })
            .collect();
        assert_eq!(macs.len(), 256, "uuids differing in one byte get different MACs");
    }

    #[test]
    fn default_network_is_libvirts() {
        let d = default_network();
        assert_eq!(d.name, "default");
        assert_eq!(d.forward.mode, ForwardMode::Nat);
        // STP off on purpose (templates/networks/README.md): no 4 s wait on every new VM port.
        assert_eq!(d.bridge, BridgeDef { name: Some("virbr0".into()), stp: false, delay: 0, zone: None });
        assert!(d.autostart && d.mac.is_some());
        assert_eq!(d.ips.len(), 1);
        assert_eq!(d.ips[0].subnet().to_string(), "192.168.122.0/24");
        assert_eq!(d.ips[0].address.to_string(), "192.168.122.1");
        let range = &d.ips[0].dhcp.as_ref().unwrap().ranges[0];
        assert_eq!(
            (range.start.to_string(), range.end.to_string()),
            ("192.168.122.2".into(), "192.168.122.254".into())
        );
        d.validate().unwrap();
    }

    #[test]
    fn complete_fills_bridge_and_mac_but_not_in_bridge_mode() {
        let mut d: NetworkDef = NetworkDef::from_toml("name = 'n'\n").unwrap();
        let used: HashSet<String> = ["virbr0".to_string()].into();
        d.complete(&used);
        assert_eq!(d.bridge.name.as_deref(), Some("virbr1"));
        assert_eq!(d.mac, Some(d.generate_mac()));
        let mut b = NetworkDef::from_toml("name = 'b'\n[forward]\nmode = 'bridge'\n").unwrap();
        b.complete(&used);
        assert_eq!((b.bridge.name, b.mac), (None, None));
    }

    #[test]
    fn toml_round_trips_and_refuses_unknown_keys() {
        let d = default_network();
        let text = d.to_toml();
        assert_eq!(NetworkDef::from_toml(&text).unwrap(), d, "{text}");
        let err = NetworkDef::from_toml("name = 'x'\nbandwith = 1\n").unwrap_err();
        assert!(err.to_string().contains("bandwith"), "{err}");
    }
}
