//! libvirt network XML <-> [`NetworkDef`].
//!
//! [`parse`] accepts what `virsh net-define` accepts for the features kvmctl implements and
//! refuses everything else with an error naming the element or attribute: nothing is silently
//! dropped. The exceptions, which have no effect for kvmctl and are accepted but not kept:
//!
//! - attributes that `virsh net-dumpxml` itself adds: `connections` and `trustGuestRxFilters`
//!   on `<network>`, `macTableManager='kernel'` on `<bridge>` (the kernel's learning bridge,
//!   which is what kvmctl runs; `ipv6='yes'` on `<network>` is kept).
//!
//! `<metadata>` is kept verbatim and written back; `family='ipv4'`, a prefix written as
//! `prefix=` or left out, and lease units are written back as they were read.
//!
//! `localPtr='yes'` on `<ip>` is kept and honoured by the dnsmasq config.
//!
//! [`to_xml`] writes what `virsh net-dumpxml` prints (two-space indent, single quotes, uuid,
//! `<nat><port start='1024' end='65535'/></nat>` for NAT, netmask for IPv4 and prefix for IPv6),
//! so that `parse(&to_xml(d)) == d` for every definition `d` (autostart aside, which the XML
//! does not carry).

use std::net::{IpAddr, Ipv4Addr};

use uuid::Uuid;

use super::definition::*;
use super::xml_dom::{parse_document, Element};
use super::NetworkError;

pub use super::xml_write::{dhcp_host_xml, dhcp_range_xml, dns_host_xml, to_xml};

/// Parse a libvirt `<network>` document (syntax only; call [`NetworkDef::validate`] after).
/// A missing `<uuid>` is generated.
pub fn parse(xml: &str) -> Result<NetworkDef, NetworkError> {
    let mut root = parse_document(xml)?;
    if root.name != "network" {
        return Err(NetworkError::NotANetwork(root.name));
    }
    // The namespaced elements first (libvirt's dnsmasq options, kvmctl's own); the rest is
    // libvirt's plain network XML.
    let dnsmasq_options = super::dnsmasq_options::take(&mut root)?;
    let (root, interfaces) = super::attach::split_kvmctl_xml(root)?;
    let mut def = network(&root)?;
    def.interfaces = interfaces;
    def.dnsmasq_options = dnsmasq_options;
    def.metadata = root.child("metadata")?.map(|m| m.raw_content(xml).to_string());
    Ok(def)
}

/// `net-define` input: libvirt XML when the text starts with '<' (after whitespace), else the
/// kvmctl TOML form.
pub fn parse_any(text: &str) -> Result<NetworkDef, NetworkError> {
    if text.trim_start().starts_with('<') {
        parse(text)
    } else {
        NetworkDef::from_toml(text)
    }
}

/// Parse a single document whose element must be `name` (the `net-update` snippets).
fn single(xml: &str, name: &'static str) -> Result<Element, NetworkError> {
    let el = parse_document(xml)?;
    if el.name != name {
        return Err(NetworkError::Xml(crate::xml::XmlError::Malformed {
            line: el.line,
            column: 1,
            message: format!("expected <{name}>, found <{}>", el.name),
        }));
    }
    Ok(el)
}

/// `net-update ... ip-dhcp-host "<host mac='..' name='..' ip='..'/>"`.
pub fn parse_dhcp_host(xml: &str) -> Result<DhcpHost, NetworkError> {
    dhcp_host(&single(xml, "host")?)
}

/// `net-update ... ip-dhcp-range "<range start='..' end='..'/>"`.
pub fn parse_dhcp_range(xml: &str) -> Result<DhcpRange, NetworkError> {
    dhcp_range(&single(xml, "range")?)
}

/// `net-update ... dns-host "<host ip='..'><hostname>a</hostname></host>"`.
pub fn parse_dns_host(xml: &str) -> Result<DnsHost, NetworkError> {
    dns_host(&single(xml, "host")?)
}

const NETWORK_CHILDREN: &[&str] = &[
    "name",
    "uuid",
    "metadata",
    "forward",
    "bridge",
    "port",
    "mac",
    "mtu",
    "domain",
    "dns",
    "ip",
    "route",
    "bandwidth",
    "vlan",
];

fn network(el: &Element) -> Result<NetworkDef, NetworkError> {
    el.check(&["ipv6", "trustGuestRxFilters", "connections"], NETWORK_CHILDREN)?;
    el.flag("trustGuestRxFilters", "yes", "no")?;
    el.parse_attr::<u32>("connections", "a number")?;
    let parent = el.name.clone();
    let name = el.child("name")?.ok_or(NetworkError::MissingElement { parent, element: "name" })?.text_only()?;
    let uuid = match el.child("uuid")? {
        None => Uuid::nil(),
        Some(u) => {
            let text = u.text_only()?;
            Uuid::parse_str(&text).map_err(|_| u.bad_value("text", &text, "expected a UUID"))?
        }
    };
    if let Some(m) = el.child("metadata")? {
        m.check_attrs(&[])?;
    }
    Ok(NetworkDef {
        name,
        uuid,
        autostart: false,
        ipv6: el.flag("ipv6", "yes", "no")?.unwrap_or(false),
        forward: el.child("forward")?.map(forward).transpose()?.unwrap_or_default(),
        bridge: el.child("bridge")?.map(bridge).transpose()?.unwrap_or_default(),
        port_isolated: match el.child("port")? {
            None => false,
            Some(p) => p.check(&["isolated"], &[]).and_then(|_| p.flag("isolated", "yes", "no"))?.unwrap_or(false),
        },
        mac: el.child("mac")?.map(|m| m.check(&["address"], &[]).and_then(|_| mac_attr(m, "address"))).transpose()?,
        mtu: el
            .child("mtu")?
            .map(|m| m.check(&["size"], &[]).and_then(|_| m.req_parse("size", "a number")))
            .transpose()?,
        domain: el.child("domain")?.map(domain).transpose()?,
        dns: el.child("dns")?.map(dns).transpose()?.unwrap_or_default(),
        ips: el.children_named("ip").map(ip).collect::<Result<_, _>>()?,
        routes: el.children_named("route").map(route).collect::<Result<_, _>>()?,
        metadata: None,
        interfaces: Vec::new(),
        dnsmasq_options: Vec::new(),
        bandwidth: el.child("bandwidth")?.map(bandwidth).transpose()?,
        vlan: el.child("vlan")?.map(vlan).transpose()?,
    })
}

/// `<vlan trunk='yes'><tag id='42' nativeMode='untagged'/>...</vlan>`; a second tag makes a
/// trunk, as in libvirt (the checks are `validate`'s).
fn vlan(el: &Element) -> Result<Vlan, NetworkError> {
    el.check(&["trunk"], &["tag"])?;
    let trunk = el.flag("trunk", "yes", "no")?;
    let tags = el
        .children_named("tag")
        .map(|t| {
            t.check(&["id", "nativeMode"], &[])?;
            let native = match t.attr("nativeMode") {
                None => None,
                Some("tagged") => Some(NativeMode::Tagged),
                Some("untagged") => Some(NativeMode::Untagged),
                Some(v) => return Err(t.bad_value("nativeMode", v, "expected 'tagged' or 'untagged'")),
            };
            Ok(VlanTag { id: t.req_parse("id", "a VLAN id (1-4094)")?, native })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if trunk == Some(false) && tags.len() > 1 {
        // libvirt: "invalid "trunk='no'" setting in <vlan> element with multiple tags".
        return Err(el.bad_value("trunk", "no", "several <tag>s are a trunk"));
    }
    Ok(Vlan { trunk: trunk.unwrap_or(tags.len() > 1), tags })
}

/// `<bandwidth><inbound average=.. peak=.. burst=../><outbound .../></bandwidth>`.
fn bandwidth(el: &Element) -> Result<Bandwidth, NetworkError> {
    el.check(&[], &["inbound", "outbound"])?;
    let rate = |r: &Element| -> Result<Rate, NetworkError> {
        r.check(&["average", "peak", "burst", "floor"], &[])?;
        if let Some(f) = r.attr("floor") {
            // libvirt: "floor attribute is supported only for interfaces of network type".
            let why = "a floor is a guarantee for one guest interface on a network (libvirt's QoS), not a limit on the network's bridge";
            return Err(r.bad_value("floor", f, why));
        }
        Ok(Rate {
            average: r.req_parse("average", "a number (kilobytes per second)")?,
            peak: r.parse_attr("peak", "a number (kilobytes per second)")?,
            burst: r.parse_attr("burst", "a number (kilobytes)")?,
        })
    };
    Ok(Bandwidth {
        inbound: el.child("inbound")?.map(rate).transpose()?,
        outbound: el.child("outbound")?.map(rate).transpose()?,
    })
}

fn forward_mode(el: &Element) -> Result<ForwardMode, NetworkError> {
    Ok(match el.attr("mode").unwrap_or("nat") {
        "nat" => ForwardMode::Nat,
        "route" => ForwardMode::Route,
        "open" => ForwardMode::Open,
        "bridge" => ForwardMode::Bridge,
        m @ ("passthrough" | "private" | "vepa") => {
            return Err(el.unsupported(format!(
                "mode '{m}': macvtap (direct) device pools; kvmctl attaches guests with taps on a \
                 bridge (use mode 'bridge' with a host bridge)"
            )))
        }
        "hostdev" => {
            return Err(el.unsupported(
                "mode 'hostdev': SR-IOV/PCI device assignment pools; kvmctl does not pass host \
                 PCI devices to guests"
                    .into(),
            ))
        }
        m => {
            let reason = "unknown forward mode; kvmctl has nat, route, open, bridge (no <forward> = isolated)";
            return Err(el.bad_value("mode", m, reason));
        }
    })
}

fn forward(el: &Element) -> Result<Forward, NetworkError> {
    // The mode first: a hostdev pool's `managed=` is refused as a hostdev pool, not as an
    // unknown attribute.
    let mode = forward_mode(el)?;
    el.check_attrs(&["mode", "dev"])?;
    el.check(&["mode", "dev"], &["nat", "interface"])?;
    let mut dev = el.attr("dev").map(str::to_string);
    let mut ifaces = el.children_named("interface");
    if let Some(iface) = ifaces.next() {
        if let Some(extra) = ifaces.next() {
            return Err(extra.unsupported("more than one <interface> (interface pools)".into()));
        }
        if mode == ForwardMode::Bridge {
            return Err(iface.unsupported("<interface> with mode 'bridge' (macvtap)".into()));
        }
        iface.check(&["dev"], &[])?;
        let idev = iface.req_attr("dev")?;
        match &dev {
            None => dev = Some(idev.to_string()),
            Some(d) if d == idev => {}
            Some(d) => return Err(iface.bad_value("dev", idev, format!("differs from <forward dev='{d}'>"))),
        }
    }
    let nat = match el.child("nat")? {
        None => NatDef::default(),
        Some(n) if mode != ForwardMode::Nat => return Err(n.unsupported(format!("<nat> with mode '{mode}'"))),
        Some(n) => nat(n)?,
    };
    Ok(Forward { mode, dev, nat })
}

fn nat(el: &Element) -> Result<NatDef, NetworkError> {
    el.check(&["ipv6"], &["address", "port"])?;
    let address = match el.child("address")? {
        None => None,
        Some(a) => {
            a.check(&["start", "end"], &[])?;
            let start = a.req_parse("start", "an IPv4 address")?;
            Some(Ipv4Range { start, end: a.req_parse("end", "an IPv4 address")? })
        }
    };
    let port = match el.child("port")? {
        None => PortRange::default(),
        Some(p) => {
            p.check(&["start", "end"], &[])?;
            PortRange { start: p.req_parse("start", "a port number")?, end: p.req_parse("end", "a port number")? }
        }
    };
    Ok(NatDef { address, port, ipv6: el.flag("ipv6", "yes", "no")?.unwrap_or(false) })
}

fn bridge(el: &Element) -> Result<BridgeDef, NetworkError> {
    el.check(&["name", "stp", "delay", "macTableManager", "zone"], &[])?;
    match el.attr("macTableManager") {
        None | Some("kernel") => {}
        Some("libvirt") => {
            return Err(el.unsupported(
                "macTableManager='libvirt' (learning and flooding off, guests' MACs installed by \
                 hand): kvmctl's bridges learn MAC addresses in the kernel ('kernel')"
                    .into(),
            ))
        }
        Some(v) => return Err(el.bad_value("macTableManager", v, "expected 'kernel' or 'libvirt'")),
    }
    Ok(BridgeDef {
        name: el.attr("name").map(str::to_string),
        stp: el.flag("stp", "on", "off")?.unwrap_or(true),
        delay: el.parse_attr("delay", "a number of seconds")?.unwrap_or(0),
        zone: el.attr("zone").map(str::to_string),
    })
}

fn mac_attr(el: &Element, attr: &'static str) -> Result<MacAddr, NetworkError> {
    let v = el.req_attr(attr)?;
    v.parse().map_err(|e| match e {
        NetworkError::BadMac { reason, .. } => el.bad_value(attr, v, format!("malformed MAC address: {reason}")),
        other => other,
    })
}

fn domain(el: &Element) -> Result<DomainDef, NetworkError> {
    el.check(&["name", "localOnly"], &[])?;
    let name = el.req_attr("name")?.to_string();
    Ok(DomainDef { name, local_only: el.flag("localOnly", "yes", "no")?.unwrap_or(false) })
}

fn dns(el: &Element) -> Result<DnsDef, NetworkError> {
    el.check(&["enable", "forwardPlainNames"], &["forwarder", "txt", "srv", "host"])?;
    Ok(DnsDef {
        enable: el.flag("enable", "yes", "no")?.unwrap_or(true),
        forward_plain_names: el.flag("forwardPlainNames", "yes", "no")?,
        forwarders: el.children_named("forwarder").map(forwarder).collect::<Result<_, _>>()?,
        txts: el.children_named("txt").map(txt).collect::<Result<_, _>>()?,
        srvs: el.children_named("srv").map(srv).collect::<Result<_, _>>()?,
        hosts: el.children_named("host").map(dns_host).collect::<Result<_, _>>()?,
    })
}

fn forwarder(el: &Element) -> Result<Forwarder, NetworkError> {
    el.check(&["addr", "domain"], &[])?;
    let f = Forwarder { domain: el.attr("domain").map(str::to_string), addr: el.parse_attr("addr", "an IP address")? };
    if f.domain.is_none() && f.addr.is_none() {
        return Err(NetworkError::MissingAttribute { element: el.name.clone(), attribute: "addr" });
    }
    Ok(f)
}

fn txt(el: &Element) -> Result<TxtRecord, NetworkError> {
    el.check(&["name", "value"], &[])?;
    Ok(TxtRecord { name: el.req_attr("name")?.to_string(), value: el.req_attr("value")?.to_string() })
}

fn srv(el: &Element) -> Result<SrvRecord, NetworkError> {
    el.check(&["service", "protocol", "domain", "target", "port", "priority", "weight"], &[])?;
    Ok(SrvRecord {
        service: el.req_attr("service")?.to_string(),
        protocol: el.req_attr("protocol")?.to_string(),
        domain: el.attr("domain").map(str::to_string),
        target: el.attr("target").map(str::to_string),
        port: el.parse_attr("port", "a port number")?,
        priority: el.parse_attr("priority", "a number 0-65535")?,
        weight: el.parse_attr("weight", "a number 0-65535")?,
    })
}

fn dns_host(el: &Element) -> Result<DnsHost, NetworkError> {
    el.check(&["ip"], &["hostname"])?;
    let ip = el.req_parse("ip", "an IP address")?;
    let hostnames = el.children_named("hostname").map(Element::text_only).collect::<Result<Vec<_>, _>>()?;
    if hostnames.is_empty() {
        return Err(NetworkError::MissingElement { parent: el.name.clone(), element: "hostname" });
    }
    Ok(DnsHost { ip, hostnames })
}

/// libvirt's default prefix when an IPv4 `<ip>` has neither netmask nor prefix: the class.
fn classful_prefix(a: Ipv4Addr) -> Option<u8> {
    match a.octets()[0] {
        0..=127 => Some(8),
        128..=191 => Some(16),
        192..=223 => Some(24),
        _ => None,
    }
}

/// `address` + `netmask`|`prefix` (+ `family` consistency) of `<ip>` and `<route>`, and the
/// form the prefix was written in.
fn address_prefix(el: &Element) -> Result<(IpAddr, u8, MaskForm), NetworkError> {
    let address: IpAddr = el.req_parse("address", "an IP address")?;
    match (el.attr("family"), address) {
        (None, _) | (Some("ipv4"), IpAddr::V4(_)) | (Some("ipv6"), IpAddr::V6(_)) => {}
        (Some(f @ ("ipv4" | "ipv6")), _) => {
            return Err(el.bad_value("family", f, format!("does not match address '{address}'")))
        }
        (Some(f), _) => return Err(el.bad_value("family", f, "expected 'ipv4' or 'ipv6'")),
    }
    let netmask: Option<Ipv4Addr> = el.parse_attr("netmask", "an IPv4 netmask")?;
    let prefix: Option<u8> = el.parse_attr("prefix", "a prefix length")?;
    let prefix = match (address, netmask, prefix) {
        (_, Some(_), Some(_)) => {
            return Err(el.bad_value(
                "netmask",
                el.attr("netmask").unwrap_or_default(),
                "use netmask or prefix, not both",
            ))
        }
        (IpAddr::V6(_), Some(_), None) => {
            return Err(el.bad_value("netmask", el.attr("netmask").unwrap_or_default(), "IPv6 takes a prefix"))
        }
        (_, Some(m), None) => (
            netmask_to_prefix(m).ok_or_else(|| el.bad_value("netmask", &m.to_string(), "not a contiguous netmask"))?,
            MaskForm::Usual,
        ),
        (IpAddr::V4(_), None, Some(p)) => (p, MaskForm::Prefix),
        (IpAddr::V6(_), None, Some(p)) => (p, MaskForm::Usual),
        (IpAddr::V6(_), None, None) => (64, MaskForm::Implied),
        (IpAddr::V4(a), None, None) => (
            classful_prefix(a).ok_or_else(|| el.bad_value("address", &a.to_string(), "needs a netmask or prefix"))?,
            MaskForm::Implied,
        ),
    };
    Ok((address, prefix.0, prefix.1))
}

fn ip(el: &Element) -> Result<IpDef, NetworkError> {
    el.check(&["address", "netmask", "prefix", "family", "localPtr"], &["dhcp", "tftp"])?;
    let (address, prefix, mask) = address_prefix(el)?;
    let tftp_root = match el.child("tftp")? {
        None => None,
        Some(t) => {
            t.check(&["root"], &[])?;
            Some(t.req_attr("root")?.to_string())
        }
    };
    Ok(IpDef {
        address,
        prefix,
        explicit_family: address.is_ipv4() && el.attr("family") == Some("ipv4"),
        mask,
        local_ptr: el.flag("localPtr", "yes", "no")?.unwrap_or(false),
        tftp_root,
        dhcp: el.child("dhcp")?.map(dhcp).transpose()?,
    })
}

fn dhcp(el: &Element) -> Result<DhcpDef, NetworkError> {
    el.check(&[], &["range", "host", "bootp"])?;
    let bootp = match el.child("bootp")? {
        None => None,
        Some(b) => {
            b.check(&["file", "server"], &[])?;
            Some(Bootp { file: b.req_attr("file")?.to_string(), server: b.parse_attr("server", "an IPv4 address")? })
        }
    };
    Ok(DhcpDef {
        ranges: el.children_named("range").map(dhcp_range).collect::<Result<_, _>>()?,
        hosts: el.children_named("host").map(dhcp_host).collect::<Result<_, _>>()?,
        bootp,
    })
}

fn lease(el: &Element) -> Result<Option<Lease>, NetworkError> {
    let Some(l) = el.child("lease")? else { return Ok(None) };
    l.check(&["expiry", "unit"], &[])?;
    let unit = match l.attr("unit") {
        None => LeaseUnit::default(),
        Some("seconds") => LeaseUnit::Seconds,
        Some("minutes") => LeaseUnit::Minutes,
        Some("hours") => LeaseUnit::Hours,
        Some(u) => return Err(l.bad_value("unit", u, "expected 'seconds', 'minutes' or 'hours'")),
    };
    Ok(Some(Lease { expiry: l.req_parse("expiry", "a number (0 = infinite)")?, unit }))
}

fn dhcp_range(el: &Element) -> Result<DhcpRange, NetworkError> {
    el.check(&["start", "end"], &["lease"])?;
    let start = el.req_parse("start", "an IP address")?;
    Ok(DhcpRange { start, end: el.req_parse("end", "an IP address")?, lease: lease(el)? })
}

fn dhcp_host(el: &Element) -> Result<DhcpHost, NetworkError> {
    el.check(&["mac", "id", "name", "ip"], &["lease"])?;
    Ok(DhcpHost {
        mac: el.attr("mac").map(|_| mac_attr(el, "mac")).transpose()?,
        id: el.attr("id").map(str::to_string),
        name: el.attr("name").map(str::to_string),
        ip: el.req_parse("ip", "an IP address")?,
        lease: lease(el)?,
    })
}

fn route(el: &Element) -> Result<RouteDef, NetworkError> {
    el.check(&["family", "address", "netmask", "prefix", "gateway", "metric"], &[])?;
    let (address, prefix, _) = address_prefix(el)?;
    Ok(RouteDef {
        address,
        prefix,
        gateway: el.req_parse("gateway", "an IP address")?,
        metric: el.parse_attr("metric", "a number")?,
    })
}

#[cfg(test)]
#[path = "libvirt_xml_tests.rs"]
mod tests;
