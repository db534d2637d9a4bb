//! The nftables ruleset of a network (pure; no I/O): one `inet` table per network, written as a
//! replace-or-create batch for `nft -f -`.
//!
//! The rules mirror libvirt's own nftables backend (`guest_input`/`guest_output`/`guest_cross`/
//! `guest_nat`), folded into one table per network:
//!
//! - **nat**: per IPv4 subnet, masquerade toward anything outside it (`to :1024-65535` for tcp
//!   and udp, plain for the rest; `snat` to `<nat><address>` instead when given; never for
//!   multicast 224.0.0.0/24 or broadcast), replies in (established/related), guests out; IPv6
//!   subnets are routed (guest addresses kept, both ways, like libvirt), unless `<nat
//!   ipv6='yes'>`: then they are masqueraded too (never toward ff02::/16), replies only in;
//! - **route**: forwarding both ways between each subnet and the outside;
//! - **isolated**: no forwarding in or out of the bridge; guest <-> host traffic is untouched;
//! - all three: guest <-> guest through the bridge allowed, everything else forwarded to or from
//!   the bridge rejected, restricted to `<forward dev>` when given; DHCP/DNS/TFTP input to the
//!   host from the bridge accepted (and DHCP replies out), DHCPv6 included; ICMPv6 (neighbour
//!   discovery, router solicitations and advertisements) needs no rule: the input and output
//!   chains only add accepts to policy accept, as in libvirt, whose rules have none either;
//! - **open**, **bridge**: no table at all (open: unless `<bandwidth><outbound>`, whose policer
//!   is the one chain of its table);
//! - `<bandwidth><outbound>`: a `bandwidth` chain at prerouting drops what the guests send
//!   to or through the host above the rate (`super::bandwidth`).
//!
//! An accept in this table does not override a drop in another table (firewalld, docker).

use std::fmt::Write as _;

use super::definition::*;
use super::dnsmasq::needs_dnsmasq;

/// `kvmctl_<name>`, with characters outside `[A-Za-z0-9_]` mapped to `_` and, when any was
/// mapped, a stable hash of the real name appended so that `a.b` and `a-b` differ.
pub fn table_name(net: &str) -> String {
    let mapped: String = net.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if mapped == net {
        format!("kvmctl_{net}")
    } else {
        format!("kvmctl_{mapped}_{:08x}", stable_hash(net.as_bytes()) as u32)
    }
}

/// The batch that deletes the network's table, and succeeds when there is none.
pub fn delete_batch(net: &str) -> String {
    let t = table_name(net);
    format!("table inet {t} {{}}\ndelete table inet {t}\n")
}

/// The replace-or-create batch for a validated, completed definition; `None` for `open` and
/// `bridge` networks, which get no table (apply [`delete_batch`] instead).
pub fn render(def: &NetworkDef) -> Option<String> {
    let police = super::bandwidth::outbound(def);
    let open = def.forward.mode == ForwardMode::Open;
    if def.forward.mode == ForwardMode::Bridge || (open && police.is_none()) {
        return None;
    }
    let br = def.bridge_name().expect("firewall::render needs a completed definition (bridge name)");
    let mut out = delete_batch(&def.name);
    let _ = writeln!(out, "table inet {} {{", table_name(&def.name));
    let _ = writeln!(out, "\tcomment \"kvmctl network {}\"", def.name);
    if let Some(p) = police {
        // <bandwidth><outbound>: what the guests send to the host or through it, policed
        // as libvirt's tc policer on the bridge's ingress does (dropped above the rate).
        let rule =
            format!("iifname \"{br}\" limit rate over {} bytes/second burst {} bytes drop", p.rate, p.nft_burst());
        chain(&mut out, "bandwidth", "filter hook prerouting priority filter", &[rule]);
    }
    if open {
        out.push_str("}\n");
        return Some(out);
    }
    host_chains(&mut out, def, br);
    chain(&mut out, "forward", "filter hook forward priority filter", &forward_rules(def, br));
    let nat = if def.forward.mode == ForwardMode::Nat { nat_rules(def) } else { vec![] };
    if !nat.is_empty() {
        chain(&mut out, "postrouting", "nat hook postrouting priority srcnat", &nat);
    }
    out.push_str("}\n");
    Some(out)
}

fn chain(out: &mut String, name: &str, hook: &str, rules: &[String]) {
    let _ = writeln!(out, "\tchain {name} {{\n\t\ttype {hook}; policy accept;");
    for r in rules {
        let _ = writeln!(out, "\t\t{r}");
    }
    out.push_str("\t}\n");
}

/// `udp dport 67` or `udp dport { 53, 67 }`.
fn ports(proto: &str, ports: &[u16]) -> String {
    match ports {
        [one] => format!("{proto} dport {one}"),
        many => format!("{proto} dport {{ {} }}", many.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Input: the services dnsmasq offers on the bridge. Output: DHCP replies to the guests.
fn host_chains(out: &mut String, def: &NetworkDef, br: &str) {
    if !needs_dnsmasq(def) {
        return;
    }
    let (dhcp4, dhcp6) = (def.dhcp_ip(true).is_some(), def.dhcp_ip(false).is_some());
    let tftp = def.ips.iter().any(|ip| ip.is_ipv4() && ip.tftp_root.is_some());
    let dns = def.dns.enable;
    let udp_in: Vec<u16> = [(dns, 53), (dhcp4, 67), (tftp, 69), (dhcp6, 547)]
        .into_iter()
        .filter_map(|(on, port)| on.then_some(port))
        .collect();
    let mut input = Vec::new();
    if !udp_in.is_empty() {
        input.push(format!("iifname \"{br}\" {} accept", ports("udp", &udp_in)));
    }
    if dns {
        input.push(format!("iifname \"{br}\" tcp dport 53 accept"));
    }
    if !input.is_empty() {
        chain(out, "input", "filter hook input priority filter", &input);
    }
    let udp_out: Vec<u16> =
        [(dhcp4, 68), (dhcp6, 546)].into_iter().filter_map(|(on, port)| on.then_some(port)).collect();
    if !udp_out.is_empty() {
        let rule = format!("oifname \"{br}\" {} accept", ports("udp", &udp_out));
        chain(out, "output", "filter hook output priority filter", &[rule]);
    }
}

fn family(s: &Subnet) -> &'static str {
    if s.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn forward_rules(def: &NetworkDef, br: &str) -> Vec<String> {
    let mut rules = vec![format!("iifname \"{br}\" oifname \"{br}\" accept")];
    let dev_in = def.forward.dev.as_ref().map(|d| format!("iifname \"{d}\" ")).unwrap_or_default();
    let dev_out = def.forward.dev.as_ref().map(|d| format!(" oifname \"{d}\"")).unwrap_or_default();
    if def.forward.mode != ForwardMode::Isolated {
        for s in def.subnets() {
            let fam = family(&s);
            // NAT: only replies come in; IPv6 of a NAT network (unless <nat ipv6='yes'>) and
            // route networks are routed.
            let replies_only = def.forward.mode == ForwardMode::Nat && masqueraded(def, &s);
            let state = if replies_only { " ct state established,related" } else { "" };
            rules.push(format!("{dev_in}oifname \"{br}\" {fam} daddr {s}{state} accept"));
            rules.push(format!("iifname \"{br}\"{dev_out} {fam} saddr {s} accept"));
        }
    }
    rules.push(format!("oifname \"{br}\" reject"));
    rules.push(format!("iifname \"{br}\" reject"));
    rules
}

/// Is this subnet of a NAT network masqueraded? IPv4 always, IPv6 with `<nat ipv6='yes'>`.
fn masqueraded(def: &NetworkDef, s: &Subnet) -> bool {
    s.is_ipv4() || def.forward.nat.ipv6
}

fn nat_rules(def: &NetworkDef) -> Vec<String> {
    let nat = &def.forward.nat;
    let dev_out = def.forward.dev.as_ref().map(|d| format!(" oifname \"{d}\"")).unwrap_or_default();
    let port = if nat.port.start == nat.port.end {
        format!(":{}", nat.port.start)
    } else {
        format!(":{}-{}", nat.port.start, nat.port.end)
    };
    let (with_ports, plain) = match &nat.address {
        None => (format!("masquerade to {port}"), "masquerade".to_string()),
        Some(a) => {
            let to = if a.start == a.end { a.start.to_string() } else { format!("{}-{}", a.start, a.end) };
            (format!("snat ip to {to}{port}"), format!("snat ip to {to}"))
        }
    };
    let mut rules = Vec::new();
    for s in def.subnets().into_iter().filter(Subnet::is_ipv4) {
        rules.push(format!("ip saddr {s} ip daddr 224.0.0.0/24 return"));
        rules.push(format!("ip saddr {s} ip daddr 255.255.255.255 return"));
        let base = format!("ip saddr {s} ip daddr != {s}{dev_out}");
        rules.push(format!("meta l4proto tcp {base} {with_ports}"));
        rules.push(format!("meta l4proto udp {base} {with_ports}"));
        rules.push(format!("{base} {plain}"));
    }
    // <nat ipv6='yes'>: masquerade (the <address> range is IPv4 only, as in libvirt).
    for s in def.subnets().into_iter().filter(|s| !s.is_ipv4() && def.forward.nat.ipv6) {
        rules.push(format!("ip6 saddr {s} ip6 daddr ff02::/16 return"));
        let base = format!("ip6 saddr {s} ip6 daddr != {s}{dev_out}");
        rules.push(format!("meta l4proto tcp {base} masquerade to {port}"));
        rules.push(format!("meta l4proto udp {base} masquerade to {port}"));
        rules.push(format!("{base} masquerade"));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::super::libvirt_xml::parse;
    use super::*;

    #[test]
    fn table_names_are_sanitized_with_a_stable_suffix() {
        assert_eq!(table_name("default"), "kvmctl_default");
        assert_eq!(table_name("my_net2"), "kvmctl_my_net2");
        let a = table_name("192.168.160.0");
        assert!(a.starts_with("kvmctl_192_168_160_0_") && a.len() == "kvmctl_192_168_160_0_".len() + 8, "{a}");
        assert_eq!(a, table_name("192.168.160.0"), "stable");
        assert_ne!(table_name("a.b"), table_name("a-b"));
        assert_ne!(table_name("a_b"), table_name("a.b"));
    }

    #[test]
    fn delete_batch_tolerates_a_missing_table() {
        assert_eq!(delete_batch("default"), "table inet kvmctl_default {}\ndelete table inet kvmctl_default\n");
    }

    #[test]
    fn open_and_bridge_networks_have_no_table() {
        let open = parse("<network><name>o</name><forward mode='open'/><bridge name='br1'/><ip address='10.0.0.1' prefix='24'/></network>").unwrap();
        assert_eq!(render(&open), None);
        let bridge = parse("<network><name>b</name><forward mode='bridge'/><bridge name='br0'/></network>").unwrap();
        assert_eq!(render(&bridge), None);
    }

    #[test]
    fn isolated_network_forwards_nothing_but_serves_dhcp() {
        let d = parse("<network><name>i</name><bridge name='br2'/><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.9'/></dhcp></ip></network>").unwrap();
        let rules = render(&d).unwrap();
        assert!(rules.contains("oifname \"br2\" reject\n\t\tiifname \"br2\" reject\n"), "{rules}");
        assert!(!rules.contains("saddr") && !rules.contains("postrouting"), "{rules}");
        assert!(rules.contains("iifname \"br2\" udp dport { 53, 67 } accept"), "{rules}");
    }
}
