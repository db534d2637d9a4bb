//! [`NetworkDef::validate`]: everything that must hold before a definition is stored or started.
//!
//! Strings that end up in the dnsmasq config (names, domains, paths, TXT values) are checked
//! here too, so that no value can break a config line or inject another option.

use std::collections::HashSet;
use std::net::IpAddr;

use super::definition::*;
use super::NetworkError;

/// A firewalld zone name (firewalld's own rule: letters, digits, `_`, `-`, `/`, at most 17).
fn check_zone(net: &str, zone: &str) -> Result<(), NetworkError> {
    let ok = !zone.is_empty()
        && zone.len() <= 17
        && zone.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/'));
    if ok {
        return Ok(());
    }
    let (tag, reason) =
        (format!("<bridge zone='{zone}'>"), "not a firewalld zone name (letters, digits, _ - /, at most 17)");
    Err(NetworkError::BadText { net: net.into(), tag, reason: reason.into() })
}

/// `<metadata>` content (from a hand-written TOML too) must be well-formed XML that stays
/// inside `<metadata>`: written back verbatim, it may not close the element or open another.
fn check_metadata(net: &str, m: &str) -> Result<(), NetworkError> {
    let doc = format!("<metadata>{m}</metadata>");
    let fits = match crate::xml::parse_document(&doc) {
        Ok(el) => el.name == "metadata" && el.raw_content(&doc) == m,
        Err(_) => false,
    };
    if fits {
        return Ok(());
    }
    let reason = "its content is not well-formed XML that stays inside <metadata>";
    Err(NetworkError::BadText { net: net.into(), tag: "<metadata>".into(), reason: reason.into() })
}

/// Linux IFNAMSIZ - 1.
const MAX_IFNAME: usize = 15;
/// dnsmasq's minimum lease time.
const MIN_LEASE_SECS: u64 = 120;

impl NetworkDef {
    /// Check the definition; the error names the network, the element and the value.
    pub fn validate(&self) -> Result<(), NetworkError> {
        crate::names::validate("network", &self.name)?;
        super::dnsmasq_options::check(&self.dnsmasq_options)?;
        if let Some(bw) = &self.bandwidth {
            let bad =
                |reason: String| NetworkError::BadText { net: self.name.clone(), tag: "<bandwidth>".into(), reason };
            if self.forward.mode == ForwardMode::Bridge {
                // libvirt: "Unsupported network-wide <bandwidth> element in network ... with forward mode='bridge'".
                return Err(bad("a network-wide limit needs a bridge kvmctl creates; forward mode 'bridge' uses the admin's bridge, which kvmctl does not change".into()));
            }
            super::bandwidth::plan(bw).map_err(bad)?;
        }
        if let Some(v) = &self.vlan {
            super::vlan::check(v).map_err(|reason| NetworkError::BadText {
                net: self.name.clone(),
                tag: "<vlan>".into(),
                reason,
            })?;
        }
        if !self.dnsmasq_options.is_empty() && !super::dnsmasq::needs_dnsmasq(self) {
            let reason = "kvmctl runs no dnsmasq for this network (bridge mode, or no <ip> with DHCP or DNS)";
            return Err(NetworkError::BadText {
                net: self.name.clone(),
                tag: "<dnsmasq:options>".into(),
                reason: reason.into(),
            });
        }
        let net = self.name.as_str();
        if let Some(name) = &self.bridge.name {
            check_ifname(net, &format!("<bridge name='{name}'>"), name, true)?;
        }
        if let Some(dev) = &self.forward.dev {
            check_ifname(net, &format!("<forward dev='{dev}'>"), dev, false)?;
        }
        if let Some(mac) = self.mac {
            check_mac(net, &format!("<mac address='{mac}'>"), mac)?;
        }
        if let Some(mtu) = self.mtu.filter(|m| !(68..=65535).contains(m)) {
            return Err(NetworkError::MtuOutOfRange { net: net.into(), mtu });
        }
        if let Some(d) = &self.domain {
            check_dns_name(net, &format!("<domain name='{}'>", d.name), &d.name)?;
        }
        if let Some(zone) = &self.bridge.zone {
            check_zone(net, zone)?;
        }
        if let Some(m) = &self.metadata {
            check_metadata(net, m)?;
        }
        if let Some(ip) = self.ips.iter().find(|ip| ip.explicit_family && !ip.is_ipv4()) {
            let tag = format!("<ip address='{}'>", ip.address);
            return Err(NetworkError::BadText {
                net: net.into(),
                tag,
                reason: "explicit_family is for IPv4 addresses".into(),
            });
        }
        self.validate_mode()?;
        self.validate_nat()?;
        validate_dns(net, &self.dns)?;
        self.validate_ips()?;
        self.validate_static_hosts()?;
        self.validate_interfaces()?;
        self.routes.iter().try_for_each(|r| self.validate_route(r))
    }

    fn validate_mode(&self) -> Result<(), NetworkError> {
        let net = self.name.as_str();
        let mode = self.forward.mode;
        let refuse = |element: &str| {
            Err(NetworkError::NotWithMode { net: net.into(), mode: mode.to_string(), element: element.into() })
        };
        match mode {
            ForwardMode::Bridge => {
                if self.bridge.name.is_none() {
                    return Err(NetworkError::BridgeModeNeedsBridge { net: net.into() });
                }
                let stray = [
                    (!self.ips.is_empty(), "<ip>"),
                    (!self.dns.is_default(), "<dns>"),
                    (self.domain.is_some(), "<domain>"),
                    (self.mac.is_some(), "<mac> (kvmctl does not own the bridge)"),
                    (self.mtu.is_some(), "<mtu> (kvmctl does not own the bridge)"),
                    (!self.routes.is_empty(), "<route>"),
                    (self.forward.dev.is_some(), "<forward dev> (macvtap)"),
                    (!self.bridge.stp || self.bridge.delay != 0, "<bridge stp/delay> (kvmctl does not own the bridge)"),
                    (self.ipv6, "<network ipv6='yes'> (kvmctl does not own the bridge)"),
                ];
                if let Some((_, element)) = stray.iter().find(|(bad, _)| *bad) {
                    return refuse(element);
                }
            }
            // An IPv6-only NAT network is libvirt's too: its IPv6 is routed (or masqueraded
            // with <nat ipv6='yes'>), and it has no IPv4 rules.
            ForwardMode::Nat | ForwardMode::Route if self.ips.is_empty() => {
                return Err(NetworkError::ModeNeedsIp { net: net.into(), mode: mode.to_string(), what: "an <ip>" });
            }
            // libvirt accepts `dev` with mode open (and adds no rules for it, as kvmctl).
            ForwardMode::Isolated if self.forward.dev.is_some() => {
                return refuse("<forward dev>");
            }
            _ => {}
        }
        if mode != ForwardMode::Nat && !self.forward.nat.is_default() {
            return refuse("<nat>");
        }
        Ok(())
    }

    fn validate_nat(&self) -> Result<(), NetworkError> {
        let net = self.name.as_str();
        if let Some(a) = &self.forward.nat.address {
            if a.start > a.end {
                return Err(NetworkError::NatRangeReversed {
                    net: net.into(),
                    start: a.start.to_string(),
                    end: a.end.to_string(),
                });
            }
        }
        let p = self.forward.nat.port;
        if p.start == 0 || p.start > p.end {
            return Err(NetworkError::NatPortRange { net: net.into(), start: p.start, end: p.end });
        }
        Ok(())
    }

    fn validate_ips(&self) -> Result<(), NetworkError> {
        let net = self.name.as_str();
        for ip in &self.ips {
            validate_ip(net, ip)?;
        }
        for (i, a) in self.ips.iter().enumerate() {
            for b in &self.ips[i + 1..] {
                if overlaps(&a.subnet(), &b.subnet()) {
                    let (a, b) = (a.subnet().to_string(), b.subnet().to_string());
                    return Err(NetworkError::SubnetOverlap { net: net.into(), a, b });
                }
            }
        }
        for (v4, family) in [(true, "IPv4"), (false, "IPv6")] {
            if self.ips.iter().filter(|ip| ip.is_ipv4() == v4 && ip.has_dhcp()).count() > 1 {
                return Err(NetworkError::MultipleDhcp { net: net.into(), family });
            }
        }
        Ok(())
    }

    /// Static hosts: IPs and MACs unique over the whole network, names unique per `<ip>`.
    fn validate_static_hosts(&self) -> Result<(), NetworkError> {
        let net = self.name.as_str();
        let (mut ips, mut macs) = (HashSet::new(), HashSet::new());
        for ip in &self.ips {
            let mut names = HashSet::new();
            for h in ip.dhcp.iter().flat_map(|d| &d.hosts) {
                if !ips.insert(h.ip) {
                    return Err(NetworkError::DuplicateHostIp { net: net.into(), ip: h.ip.to_string() });
                }
                if let Some(mac) = h.mac.filter(|m| !macs.insert(*m)) {
                    return Err(NetworkError::DuplicateHostMac { net: net.into(), mac: mac.to_string() });
                }
                if let Some(name) = h.name.as_ref().filter(|n| !names.insert(n.to_ascii_lowercase())) {
                    return Err(NetworkError::DuplicateHostName { net: net.into(), name: name.clone() });
                }
            }
        }
        Ok(())
    }

    fn validate_route(&self, r: &RouteDef) -> Result<(), NetworkError> {
        let bad = |reason| NetworkError::BadRoute {
            net: self.name.clone(),
            address: r.address.to_string(),
            gateway: r.gateway.to_string(),
            reason,
        };
        if self.forward.mode == ForwardMode::Bridge {
            return Err(bad("routes are not allowed with <forward mode='bridge'>"));
        }
        if r.prefix > max_prefix(r.address) {
            return Err(bad("prefix is longer than the address"));
        }
        if r.subnet().network != r.address {
            return Err(bad("address has bits set beyond the prefix (use the network address)"));
        }
        if r.gateway.is_ipv4() != r.address.is_ipv4() {
            return Err(bad("gateway and address are of different families"));
        }
        if !self.ips.iter().any(|ip| ip.subnet().contains(r.gateway)) {
            return Err(bad("gateway is not in any subnet of this network"));
        }
        Ok(())
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn validate_ip(net: &str, ip: &IpDef) -> Result<(), NetworkError> {
    let (address, prefix) = (ip.address.to_string(), ip.prefix);
    let bad_prefix = |reason| NetworkError::BadPrefix { net: net.into(), address: address.clone(), prefix, reason };
    if prefix > max_prefix(ip.address) {
        return Err(bad_prefix("the prefix is longer than the address"));
    }
    if prefix == 0 {
        return Err(bad_prefix("a /0 subnet would take every address"));
    }
    let subnet = ip.subnet();
    let reserved = subnet.network == ip.address && prefix < max_prefix(ip.address) - 1;
    if reserved || subnet.broadcast() == Some(ip.address) {
        return Err(NetworkError::IpNotHost { net: net.into(), address, prefix });
    }
    let step = if ip.is_ipv4() { 8 } else { 4 };
    if ip.local_ptr && prefix % step != 0 {
        return Err(NetworkError::LocalPtrPrefix { net: net.into(), address, prefix, step });
    }
    let tag = format!("<ip address='{address}'>");
    if let Some(root) = &ip.tftp_root {
        if !ip.is_ipv4() {
            return Err(bad_text(net, &tag, "<tftp> is for IPv4 only"));
        }
        check_conf_text(net, &format!("<tftp root='{root}'>"), root, ",")?;
        if !root.starts_with('/') {
            return Err(bad_text(net, &format!("<tftp root='{root}'>"), "root must be an absolute path"));
        }
    }
    let Some(dhcp) = &ip.dhcp else { return Ok(()) };
    if let Some(b) = &dhcp.bootp {
        if !ip.is_ipv4() {
            return Err(bad_text(net, &tag, "<bootp> is for IPv4 only"));
        }
        check_conf_text(net, &format!("<bootp file='{}'>", b.file), &b.file, ", ")?;
    }
    dhcp.ranges.iter().try_for_each(|r| validate_range(net, ip, r))?;
    dhcp.hosts.iter().try_for_each(|h| validate_dhcp_host(net, ip, h))
}

/// The addresses of `ip`'s subnet a DHCP client must never get.
fn reserved_addresses(ip: &IpDef) -> Vec<(&'static str, IpAddr)> {
    let subnet = ip.subnet();
    let mut out = vec![("network address", subnet.network), ("host address", ip.address)];
    out.extend(subnet.broadcast().map(|b| ("broadcast address", b)));
    out
}

fn validate_range(net: &str, ip: &IpDef, r: &DhcpRange) -> Result<(), NetworkError> {
    let (start, end) = (r.start.to_string(), r.end.to_string());
    let subnet = ip.subnet();
    if !subnet.contains(r.start) || !subnet.contains(r.end) {
        return Err(NetworkError::RangeOutsideSubnet { net: net.into(), start, end, subnet: subnet.to_string() });
    }
    if ip_bits(r.start) > ip_bits(r.end) {
        return Err(NetworkError::RangeReversed { net: net.into(), start, end });
    }
    for (what, addr) in reserved_addresses(ip) {
        if (ip_bits(r.start)..=ip_bits(r.end)).contains(&ip_bits(addr)) {
            return Err(NetworkError::RangeIncludesReserved {
                net: net.into(),
                start,
                end,
                what,
                addr: addr.to_string(),
            });
        }
    }
    check_lease(net, &format!("<range start='{start}' end='{end}'>"), r.lease)
}

fn validate_dhcp_host(net: &str, ip: &IpDef, h: &DhcpHost) -> Result<(), NetworkError> {
    let tag = format!("<host ip='{}'>", h.ip);
    let bad = |reason| NetworkError::BadDhcpHost { net: net.into(), tag: tag.clone(), reason };
    let subnet = ip.subnet();
    if !subnet.contains(h.ip) {
        return Err(NetworkError::HostOutsideSubnet {
            net: net.into(),
            ip: h.ip.to_string(),
            subnet: subnet.to_string(),
        });
    }
    if let Some((what, _)) = reserved_addresses(ip).into_iter().find(|(_, a)| *a == h.ip) {
        return Err(NetworkError::HostIpReserved { net: net.into(), ip: h.ip.to_string(), what });
    }
    if ip.is_ipv4() {
        if h.mac.is_none() && h.name.is_none() {
            return Err(bad("an IPv4 static host needs mac= or name="));
        }
        if h.id.is_some() {
            return Err(bad("id= (a DHCPv6 DUID) is for IPv6 hosts; use mac="));
        }
    } else {
        if h.mac.is_some() {
            return Err(bad("an IPv6 static host is identified by id= (DUID) or name=, not mac="));
        }
        if h.id.is_none() && h.name.is_none() {
            return Err(bad("an IPv6 static host needs id= or name="));
        }
    }
    if let Some(mac) = h.mac {
        check_mac(net, &format!("<host mac='{mac}'>"), mac)?;
    }
    if let Some(id) = &h.id {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(bad_text(net, &format!("<host id='{id}'>"), "a DUID is hex digits separated by ':'"));
        }
    }
    if let Some(name) = &h.name {
        check_dns_name(net, &format!("<host name='{name}'>"), name)?;
    }
    check_lease(net, &tag, h.lease)
}

fn check_lease(net: &str, tag: &str, lease: Option<Lease>) -> Result<(), NetworkError> {
    match lease.and_then(|l| l.seconds()) {
        Some(seconds) if seconds < MIN_LEASE_SECS => {
            Err(NetworkError::LeaseTooShort { net: net.into(), tag: tag.into(), seconds })
        }
        _ => Ok(()),
    }
}

fn validate_dns(net: &str, dns: &DnsDef) -> Result<(), NetworkError> {
    if !dns.enable {
        let content = [
            (!dns.forwarders.is_empty(), "<forwarder>"),
            (!dns.txts.is_empty(), "<txt>"),
            (!dns.srvs.is_empty(), "<srv>"),
            (!dns.hosts.is_empty(), "<host>"),
        ];
        if let Some((_, what)) = content.iter().find(|(has, _)| *has) {
            return Err(NetworkError::DnsDisabledWithContent { net: net.into(), what });
        }
    }
    for f in &dns.forwarders {
        if let Some(d) = &f.domain {
            check_dns_name(net, &format!("<forwarder domain='{d}'>"), d)?;
        }
    }
    for t in &dns.txts {
        let tag = format!("<txt name='{}'>", t.name);
        check_conf_text(net, &tag, &t.name, ", ")?;
        check_conf_text(net, &tag, &t.value, "\"#\\")?;
    }
    for s in &dns.srvs {
        let tag = format!("<srv service='{}' protocol='{}'>", s.service, s.protocol);
        for v in [&s.service, &s.protocol] {
            if v.is_empty() || v.len() > 15 || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(bad_text(net, &tag, "service and protocol are 1-15 letters, digits or '-'"));
            }
        }
        if let Some(d) = &s.domain {
            check_dns_name(net, &tag, d)?;
        }
        if let Some(t) = s.target.as_ref().filter(|t| t.as_str() != ".") {
            check_dns_name(net, &tag, t)?;
        }
    }
    for h in &dns.hosts {
        for name in &h.hostnames {
            check_dns_name(net, &format!("<host ip='{}'><hostname>{name}</hostname>", h.ip), name)?;
        }
    }
    Ok(())
}

fn bad_text(net: &str, tag: &str, reason: impl Into<String>) -> NetworkError {
    NetworkError::BadText { net: net.into(), tag: tag.into(), reason: reason.into() }
}

/// No control characters (a newline would start a new dnsmasq option) and none of `forbidden`.
fn check_conf_text(net: &str, tag: &str, value: &str, forbidden: &str) -> Result<(), NetworkError> {
    if value.is_empty() {
        return Err(bad_text(net, tag, "value is empty"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || forbidden.contains(*c)) {
        return Err(bad_text(net, tag, format!("{c:?} is not allowed here")));
    }
    Ok(())
}

/// A host or domain name: letters, digits, '-', '_' and '.' separated labels.
fn check_dns_name(net: &str, tag: &str, name: &str) -> Result<(), NetworkError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || name.len() > 253 || !name.chars().all(ok_char) || name.starts_with('.') || name.contains("..")
    {
        return Err(bad_text(net, tag, format!("'{}' is not a valid DNS name", name.escape_debug())));
    }
    Ok(())
}

pub(super) fn check_ifname(net: &str, tag: &str, name: &str, is_bridge: bool) -> Result<(), NetworkError> {
    let bad = |reason: &str| NetworkError::BadIfName { net: net.into(), tag: tag.into(), reason: reason.into() };
    if name.len() > MAX_IFNAME {
        if is_bridge {
            return Err(NetworkError::BridgeNameTooLong { net: net.into(), name: name.into(), len: name.len() });
        }
        return Err(bad("longer than 15 bytes"));
    }
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad("empty, '.' or '..'"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(bad("use letters, digits, '_', '.' and '-'"));
    }
    Ok(())
}

fn check_mac(net: &str, tag: &str, mac: MacAddr) -> Result<(), NetworkError> {
    if mac.is_zero() {
        return Err(NetworkError::MacZero { net: net.into(), tag: tag.into() });
    }
    if mac.is_multicast() {
        return Err(NetworkError::MacMulticast { net: net.into(), tag: tag.into() });
    }
    Ok(())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
