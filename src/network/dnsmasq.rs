//! The dnsmasq configuration of a network (pure; no I/O).
//!
//! Mirrors libvirt's `networkDnsmasqConfContents` option for option where it applies: the same
//! order, `strict-order`, `bind-dynamic` + `interface=` + `except-interface=lo`, `no-resolv` when
//! a forwarder takes all unqualified queries and on isolated networks (so DNS cannot become a
//! channel to the outside), `dhcp-option=3` and `ra-param=*,0,0` on isolated networks (no
//! default route), `dhcp-range=...,static` for static-only DHCP, `enable-ra` with DHCPv6 and
//! `ra-only` for IPv6 subnets without it. Differences: the lease database is a plain
//! `dhcp-leasefile=` in the runtime dir (libvirt uses a lease helper script), and static hosts
//! and DNS hosts always live in their own files so a live update rewrites a file and SIGHUPs.
//!
//! dnsmasq is started as `dnsmasq --conf-file=<run>/dnsmasq.conf` (see [`RunFiles`]).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::definition::*;

/// The generated file contents for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqFiles {
    pub conf: String,
    /// `dhcp-hostsfile=`: static DHCP hosts (rewrite + SIGHUP for live updates).
    pub hostsfile: String,
    /// `addn-hosts=`: the `<dns><host>` entries (rewrite + SIGHUP for live updates).
    pub addnhosts: String,
}

/// Where a network's dnsmasq files live inside its runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFiles {
    pub conf: PathBuf,
    pub hostsfile: PathBuf,
    pub addnhosts: PathBuf,
    pub leases: PathBuf,
    pub pid: PathBuf,
}

impl RunFiles {
    pub fn new(run_dir: &Path) -> RunFiles {
        RunFiles {
            conf: run_dir.join("dnsmasq.conf"),
            hostsfile: run_dir.join("hostsfile"),
            addnhosts: run_dir.join("addnhosts"),
            leases: run_dir.join("leases"),
            pid: run_dir.join("dnsmasq.pid"),
        }
    }
}

/// Whether the network runs a dnsmasq at all: not for `bridge` mode, not without any `<ip>`,
/// and not when DNS is disabled and no `<ip>` has DHCP (as libvirt decides).
pub fn needs_dnsmasq(def: &NetworkDef) -> bool {
    def.forward.mode != ForwardMode::Bridge
        && !def.ips.is_empty()
        && (def.dns.enable || def.ips.iter().any(IpDef::has_dhcp))
}

/// The dnsmasq config, hostsfile and addnhosts of a validated, completed definition (bridge
/// name filled in); `None` when the network has no dnsmasq ([`needs_dnsmasq`]).
pub fn render(def: &NetworkDef, run_dir: &Path) -> Option<DnsmasqFiles> {
    if !needs_dnsmasq(def) {
        return None;
    }
    let files = RunFiles::new(run_dir);
    Some(DnsmasqFiles { conf: conf(def, &files), hostsfile: hostsfile(def), addnhosts: addnhosts(def) })
}

/// `dhcp-hostsfile` contents: one static host per line, IPv4 first.
pub fn hostsfile(def: &NetworkDef) -> String {
    let mut out = String::new();
    for ip in dhcp_ips(def) {
        for h in ip.dhcp.iter().flat_map(|d| &d.hosts) {
            out.push_str(&dhcp_host_line(h));
            out.push('\n');
        }
    }
    out
}

/// `addn-hosts` contents: `ip<TAB>name<TAB>alias...` per `<dns><host>`.
pub fn addnhosts(def: &NetworkDef) -> String {
    let mut out = String::new();
    for h in &def.dns.hosts {
        out.push_str(&h.ip.to_string());
        for name in &h.hostnames {
            out.push('\t');
            out.push_str(name);
        }
        out.push('\n');
    }
    out
}

/// The `<ip>`s that serve DHCP: the IPv4 one, then the IPv6 one.
fn dhcp_ips(def: &NetworkDef) -> impl Iterator<Item = &IpDef> {
    def.dhcp_ip(true).into_iter().chain(def.dhcp_ip(false))
}

/// A lease time as libvirt writes it for dnsmasq: in the unit it was given (`1h`, `30m`,
/// `200s`), or `infinite`.
fn lease_text(lease: &Option<Lease>) -> Option<String> {
    lease.map(|l| match (l.expiry, l.unit) {
        (0, _) => "infinite".to_string(),
        (n, LeaseUnit::Seconds) => format!("{n}s"),
        (n, LeaseUnit::Minutes) => format!("{n}m"),
        (n, LeaseUnit::Hours) => format!("{n}h"),
    })
}

/// One hostsfile line, in libvirt's forms: `mac,ip,name`, `name,ip`, `mac,ip`;
/// IPv6: `id:DUID,name,[ip]`, `id:DUID,[ip]`, `name,[ip]`; plus `,lease`.
fn dhcp_host_line(h: &DhcpHost) -> String {
    let mut fields: Vec<String> = Vec::new();
    match h.ip {
        IpAddr::V4(ip) => {
            fields.extend(h.mac.map(|m| m.to_string()));
            match (&h.mac, &h.name) {
                (Some(_), Some(name)) => fields.extend([ip.to_string(), name.clone()]),
                (None, Some(name)) => fields.extend([name.clone(), ip.to_string()]),
                _ => fields.push(ip.to_string()),
            }
        }
        IpAddr::V6(ip) => {
            fields.extend(h.id.as_ref().map(|id| format!("id:{id}")));
            fields.extend(h.name.clone());
            fields.push(format!("[{ip}]"));
        }
    }
    fields.extend(lease_text(&h.lease));
    fields.join(",")
}

fn conf(def: &NetworkDef, files: &RunFiles) -> String {
    let mut c = String::new();
    let bridge = def.bridge_name().expect("dnsmasq::render needs a completed definition (bridge name)");
    let _ = writeln!(c, "##WARNING:  THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE");
    let _ = writeln!(c, "##OVERWRITTEN AND LOST.  Changes to this configuration should be made using:");
    let _ = writeln!(c, "##    kvmctl net-edit {}", def.name);
    let _ = writeln!(c, "##\n## dnsmasq conf file created by kvmctl\nstrict-order");
    if !def.dns.enable {
        c.push_str("port=0\n");
    }
    let mut no_resolv = false;
    if def.dns.enable {
        no_resolv = forwarders(&mut c, &def.dns);
    }
    if let Some(d) = &def.domain {
        if d.local_only {
            let _ = writeln!(c, "local=/{}/", d.name);
        }
        let _ = writeln!(c, "domain={}\nexpand-hosts", d.name);
    }
    if def.dns.enable {
        for ip in def.ips.iter().filter(|ip| ip.local_ptr) {
            let _ = writeln!(c, "local=/{}/", ptr_domain(ip));
        }
        if def.dns.forward_plain_names == Some(false) {
            c.push_str("domain-needed\nlocal=//\n");
        }
    }
    let _ = writeln!(c, "pid-file={}", files.pid.display());
    let _ = writeln!(c, "except-interface=lo\nbind-dynamic\ninterface={bridge}");
    if def.forward.mode == ForwardMode::Isolated {
        c.push_str("dhcp-option=3\n");
        if !no_resolv {
            c.push_str("no-resolv\n");
        }
        c.push_str("ra-param=*,0,0\n");
    }
    if def.dns.enable {
        dns_records(&mut c, &def.dns);
    }
    dhcp(&mut c, def, files);
    if def.dns.enable {
        let _ = writeln!(c, "addn-hosts={}", files.addnhosts.display());
    }
    if let Some(mtu) = def.mtu {
        let _ = writeln!(c, "dhcp-option=option:mtu,{mtu}");
    }
    router_advertisements(&mut c, def);
    // <dnsmasq:options>, last, as libvirt writes them.
    for o in &def.dnsmasq_options {
        let _ = writeln!(c, "{o}");
    }
    c
}

/// `server=` lines; returns whether `no-resolv` was written (a forwarder takes all queries).
fn forwarders(c: &mut String, dns: &DnsDef) -> bool {
    let mut no_resolv = false;
    for f in &dns.forwarders {
        c.push_str("server=");
        if let Some(d) = &f.domain {
            let _ = write!(c, "/{d}/");
        }
        match f.addr {
            Some(addr) => {
                let _ = writeln!(c, "{addr}");
                no_resolv |= f.domain.is_none();
            }
            None => c.push_str("#\n"),
        }
    }
    if no_resolv {
        c.push_str("no-resolv\n");
    }
    no_resolv
}

/// The reverse-lookup zone of an `<ip>` (prefix aligned to 8 bits for IPv4, 4 for IPv6).
fn ptr_domain(ip: &IpDef) -> String {
    let net = ip.subnet().network;
    match net {
        IpAddr::V4(a) => {
            let octets = &a.octets()[..(ip.prefix / 8) as usize];
            let mut parts: Vec<String> = octets.iter().rev().map(u8::to_string).collect();
            parts.push("in-addr.arpa".into());
            parts.join(".")
        }
        IpAddr::V6(a) => {
            let nibbles: Vec<String> = a
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .take((ip.prefix / 4) as usize)
                .map(|n| format!("{n:x}"))
                .collect();
            let mut parts: Vec<String> = nibbles.into_iter().rev().collect();
            parts.push("ip6.arpa".into());
            parts.join(".")
        }
    }
}

fn dns_records(c: &mut String, dns: &DnsDef) {
    for t in &dns.txts {
        let _ = writeln!(c, "txt-record={},{}", t.name, t.value);
    }
    for s in &dns.srvs {
        let _ = write!(c, "srv-host=_{}._{}", s.service, s.protocol);
        if let Some(d) = &s.domain {
            let _ = write!(c, ".{d}");
        }
        // An empty or "." target means "no such service": port, priority and weight are moot.
        // Otherwise they are positional, so an unset one before a set one gets its default.
        if let Some(target) = s.target.as_ref().filter(|t| t.as_str() != ".") {
            let _ = write!(c, ",{target}");
            let (port, priority, weight) = (s.port.unwrap_or(0), s.priority.unwrap_or(0), s.weight.unwrap_or(0));
            if port != 0 || priority != 0 || weight != 0 {
                let _ = write!(c, ",{}", if port == 0 { 1 } else { port });
            }
            if priority != 0 || weight != 0 {
                let _ = write!(c, ",{priority}");
            }
            if weight != 0 {
                let _ = write!(c, ",{weight}");
            }
        }
        c.push('\n');
    }
}

/// dnsmasq's `dhcp-lease-max` is an int.
const LEASE_MAX_CAP: u128 = i32::MAX as u128;

fn dhcp(c: &mut String, def: &NetworkDef, files: &RunFiles) {
    let mut leases: u128 = 0;
    let mut any = false;
    for ip in dhcp_ips(def) {
        any = true;
        let d = ip.dhcp.as_ref().expect("dhcp_ips yields <ip>s with <dhcp>");
        let subnet = ip.subnet();
        for r in &d.ranges {
            let mask = subnet.netmask().map_or_else(|| ip.prefix.to_string(), |m| m.to_string());
            let _ = write!(c, "dhcp-range={},{},{mask}", r.start, r.end);
            if let Some(l) = lease_text(&r.lease) {
                let _ = write!(c, ",{l}");
            }
            c.push('\n');
            leases = leases.saturating_add(range_len(r.start, r.end));
        }
        if d.ranges.is_empty() {
            let _ = write!(c, "dhcp-range={},static", ip.address);
            if !ip.is_ipv4() {
                let _ = write!(c, ",{}", ip.prefix);
            }
            c.push('\n');
        }
        if ip.is_ipv4() {
            // no-ping: dnsmasq is the only DHCP server on a bridge kvmctl owns, and its lease
            // file survives restarts; its ping check of each new address delays every first
            // lease by up to 3 s (a guest with a static address inside the range is a
            // misconfiguration the ping would only paper over).
            c.push_str("dhcp-no-override\ndhcp-authoritative\nno-ping\n");
        }
    }
    // TFTP and BOOTP are IPv4 features of the DHCP-serving <ip> (or any IPv4 <ip> for TFTP).
    for ip in def.ips.iter().filter(|ip| ip.is_ipv4()) {
        if let Some(root) = &ip.tftp_root {
            let _ = writeln!(c, "enable-tftp\ntftp-root={root}");
        }
        if let Some(b) = ip.dhcp.as_ref().and_then(|d| d.bootp.as_ref()) {
            match b.server {
                Some(server) => {
                    let _ = writeln!(c, "dhcp-boot={},,{server}", b.file);
                }
                None => {
                    let _ = writeln!(c, "dhcp-boot={}", b.file);
                }
            }
        }
    }
    if leases > 0 {
        let _ = writeln!(c, "dhcp-lease-max={}", leases.min(LEASE_MAX_CAP));
    }
    if any {
        let _ = writeln!(c, "dhcp-hostsfile={}", files.hostsfile.display());
        let _ = writeln!(c, "dhcp-leasefile={}", files.leases.display());
    }
}

/// IPv6 router advertisements: `enable-ra` with DHCPv6 (its prefix is advertised without the
/// autonomous flag and with "managed": stateful DHCPv6, no SLAAC), and `ra-only` (SLAAC) for
/// every IPv6 subnet without DHCP. libvirt writes the `ra-only` lines only when no subnet has
/// DHCPv6, which leaves the other IPv6 subnets of such a network unadvertised (guests get no
/// address there at all); kvmctl advertises them for SLAAC in both cases.
fn router_advertisements(c: &mut String, def: &NetworkDef) {
    let dhcp6 = def.dhcp_ip(false);
    if dhcp6.is_some() {
        c.push_str("enable-ra\n");
    }
    for ip in def.ips.iter().filter(|ip| !ip.is_ipv4() && Some(*ip) != dhcp6) {
        let _ = writeln!(c, "dhcp-range={},ra-only", ip.address);
    }
}

#[cfg(test)]
mod tests {
    use super::super::libvirt_xml::parse;
    use super::*;

    fn def(body: &str) -> NetworkDef {
        let d = parse(&format!("<network><name>t</name><bridge name='br9'/>{body}</network>")).unwrap();
        d.validate().unwrap();
        d
    }

    #[test]
    fn no_dnsmasq_for_bridge_mode_or_without_ip() {
        assert_eq!(render(&def("<forward mode='bridge'/>"), Path::new("/r")), None);
        assert_eq!(render(&def(""), Path::new("/r")), None);
        assert_eq!(render(&def("<dns enable='no'/><ip address='10.0.0.1' prefix='24'/>"), Path::new("/r")), None);
    }

    #[test]
    fn disabled_dns_with_dhcp_sets_port_zero_and_no_addn_hosts() {
        let d = def("<dns enable='no'/><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.3'/></dhcp></ip>");
        let conf = render(&d, Path::new("/r")).unwrap().conf;
        assert!(conf.contains("\nport=0\n") && !conf.contains("addn-hosts"), "{conf}");
        assert!(conf.contains("dhcp-lease-max=2\n"), "{conf}");
    }

    #[test]
    fn hostsfile_lines_follow_libvirt_forms() {
        let d = def("<ip address='10.0.0.1' prefix='24'><dhcp>\
            <host mac='52:54:00:00:00:01' name='a' ip='10.0.0.5'/>\
            <host name='b' ip='10.0.0.6'><lease expiry='1' unit='hours'/></host>\
            <host mac='52:54:00:00:00:03' ip='10.0.0.7'/></dhcp></ip>\
            <ip family='ipv6' address='fd00::1' prefix='64'><dhcp>\
            <host id='0:1:0:1:aa:bb' name='c' ip='fd00::5'/><host name='d' ip='fd00::6'/></dhcp></ip>");
        assert_eq!(
            hostsfile(&d),
            "52:54:00:00:00:01,10.0.0.5,a\nb,10.0.0.6,1h\n52:54:00:00:00:03,10.0.0.7\n\
             id:0:1:0:1:aa:bb,c,[fd00::5]\nd,[fd00::6]\n"
        );
        let conf = render(&d, Path::new("/r")).unwrap().conf;
        assert!(
            conf.contains("dhcp-range=10.0.0.1,static\n") && conf.contains("dhcp-range=fd00::1,static,64\n"),
            "{conf}"
        );
    }

    #[test]
    fn ptr_domains() {
        let ip = |a: &str, p: u8| IpDef {
            address: a.parse().unwrap(),
            prefix: p,
            explicit_family: false,
            mask: MaskForm::Usual,
            local_ptr: true,
            tftp_root: None,
            dhcp: None,
        };
        assert_eq!(ptr_domain(&ip("192.168.122.1", 24)), "122.168.192.in-addr.arpa");
        assert_eq!(ptr_domain(&ip("10.1.2.3", 8)), "10.in-addr.arpa");
        assert_eq!(ptr_domain(&ip("2001:db8:ca2:2::1", 64)), "2.0.0.0.2.a.c.0.8.b.d.0.1.0.0.2.ip6.arpa");
    }

    #[test]
    fn srv_positional_defaults() {
        let d = def("<dns><srv service='a' protocol='tcp' target='t.example' weight='5'/><srv service='b' protocol='udp' target='.' port='9'/></dns><ip address='10.0.0.1' prefix='24'/>");
        let conf = render(&d, Path::new("/r")).unwrap().conf;
        assert!(conf.contains("srv-host=_a._tcp,t.example,1,0,5\nsrv-host=_b._udp\n"), "{conf}");
    }
}
