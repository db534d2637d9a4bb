//! The one error type of the network module.
//!
//! Parse errors name the XML element (and line) they come from; validation errors name the
//! network and show the offending element the way it is written in libvirt XML, e.g.
//! `network 'x': <range start='10.0.0.9' end='10.0.0.2'> is reversed`.

use thiserror::Error;

use crate::names::NameError;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetworkError {
    #[error(transparent)]
    Name(#[from] NameError),

    // ---- syntax: XML / TOML ----
    #[error(transparent)]
    Xml(#[from] crate::xml::XmlError),
    #[error("malformed network TOML: {0}")]
    Toml(String),
    #[error("the document element is <{0}>; expected <network>")]
    NotANetwork(String),
    #[error("<{parent}>: unknown element <{element}> (line {line})")]
    UnknownElement { parent: String, element: String, line: usize },
    #[error("<{element}>: unknown attribute '{attribute}' (line {line})")]
    UnknownAttribute { element: String, attribute: String, line: usize },
    #[error("<{element}>: {what} is not supported by kvmctl (line {line})")]
    Unsupported { element: String, what: String, line: usize },
    #[error("<{parent}>: missing <{element}>")]
    MissingElement { parent: String, element: &'static str },
    #[error("<{parent}>: <{element}> may appear only once (line {line})")]
    DuplicateElement { parent: String, element: String, line: usize },
    #[error("<{element}>: missing attribute '{attribute}'")]
    MissingAttribute { element: String, attribute: &'static str },
    #[error("<{element} {attribute}='{value}'>: {reason}")]
    BadValue { element: String, attribute: String, value: String, reason: String },
    #[error("'{value}' is not a MAC address ({reason})")]
    BadMac { value: String, reason: &'static str },

    // ---- semantics: NetworkDef::validate ----
    #[error("network '{net}': <bridge name='{name}'> is {len} bytes long; interface names have at most 15")]
    BridgeNameTooLong { net: String, name: String, len: usize },
    #[error("network '{net}': {tag} is not a valid interface name ({reason})")]
    BadIfName { net: String, tag: String, reason: String },
    #[error("network '{net}': {tag} is a multicast MAC address")]
    MacMulticast { net: String, tag: String },
    #[error("network '{net}': {tag} is the all-zero MAC address")]
    MacZero { net: String, tag: String },
    #[error("network '{net}': <mtu size='{mtu}'> is out of range (68..=65535)")]
    MtuOutOfRange { net: String, mtu: u32 },
    #[error("network '{net}': <forward mode='bridge'> needs <bridge name='...'> naming an existing bridge")]
    BridgeModeNeedsBridge { net: String },
    #[error("network '{net}': {element} is not allowed with <forward mode='{mode}'>")]
    NotWithMode { net: String, mode: String, element: String },
    #[error("network '{net}': <forward mode='{mode}'> needs {what}")]
    ModeNeedsIp { net: String, mode: String, what: &'static str },
    #[error("network '{net}': <ip address='{address}' prefix='{prefix}'>: {reason}")]
    BadPrefix { net: String, address: String, prefix: u8, reason: &'static str },
    #[error("network '{net}': <ip address='{address}' prefix='{prefix}'> is not a host address of its subnet")]
    IpNotHost { net: String, address: String, prefix: u8 },
    #[error("network '{net}': subnets {a} and {b} overlap")]
    SubnetOverlap { net: String, a: String, b: String },
    #[error("network '{net}': only one {family} <ip> may have <dhcp>")]
    MultipleDhcp { net: String, family: &'static str },
    #[error("network '{net}': <range start='{start}' end='{end}'> is reversed")]
    RangeReversed { net: String, start: String, end: String },
    #[error("network '{net}': <range start='{start}' end='{end}'> is outside the subnet {subnet}")]
    RangeOutsideSubnet { net: String, start: String, end: String, subnet: String },
    #[error("network '{net}': <range start='{start}' end='{end}'> includes the {what} {addr}")]
    RangeIncludesReserved { net: String, start: String, end: String, what: &'static str, addr: String },
    #[error("network '{net}': <host ip='{ip}'> is outside the subnet {subnet}")]
    HostOutsideSubnet { net: String, ip: String, subnet: String },
    #[error("network '{net}': <host ip='{ip}'> is the {what}")]
    HostIpReserved { net: String, ip: String, what: &'static str },
    #[error("network '{net}': <host ip='{ip}'> is used by two static hosts")]
    DuplicateHostIp { net: String, ip: String },
    #[error("network '{net}': <host mac='{mac}'> is used by two static hosts")]
    DuplicateHostMac { net: String, mac: String },
    #[error("network '{net}': <host name='{name}'> is used by two static hosts")]
    DuplicateHostName { net: String, name: String },
    #[error("network '{net}': static host {tag}: {reason}")]
    BadDhcpHost { net: String, tag: String, reason: &'static str },
    #[error("network '{net}': {tag}: lease time {seconds}s is shorter than dnsmasq's minimum of 120s")]
    LeaseTooShort { net: String, tag: String, seconds: u64 },
    #[error("network '{net}': {tag}: {reason}")]
    BadText { net: String, tag: String, reason: String },
    #[error("network '{net}': <dns enable='no'> cannot have {what}")]
    DnsDisabledWithContent { net: String, what: &'static str },
    #[error("network '{net}': <route address='{address}' gateway='{gateway}'>: {reason}")]
    BadRoute { net: String, address: String, gateway: String, reason: &'static str },
    #[error("network '{net}': <ip address='{address}' localPtr='yes'>: prefix {prefix} is not a multiple of {step}")]
    LocalPtrPrefix { net: String, address: String, prefix: u8, step: u8 },
    #[error("network '{net}': <nat><address start='{start}' end='{end}'/> is reversed")]
    NatRangeReversed { net: String, start: String, end: String },
    #[error("network '{net}': <nat><port start='{start}' end='{end}'/> is not a valid port range")]
    NatPortRange { net: String, start: u16, end: u16 },
    #[error("network '{name}': net-update: {what}")]
    Update { name: String, what: String },
}
