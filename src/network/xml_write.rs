//! [`NetworkDef`] -> libvirt network XML, laid out like `virsh net-dumpxml` prints it.

use quick_xml::escape::escape;

use super::definition::*;

/// Indented element writer: single-quoted attributes, two spaces per level.
#[derive(Default)]
struct Writer {
    out: String,
    depth: usize,
}

type Attrs<'a> = &'a [(&'static str, Option<String>)];

impl Writer {
    fn tag(&mut self, name: &str, attrs: Attrs<'_>, end: &str) {
        self.out.push_str(&"  ".repeat(self.depth));
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            if let Some(v) = value {
                self.out.push_str(&format!(" {key}='{}'", escape(v.as_str())));
            }
        }
        self.out.push_str(end);
        self.out.push('\n');
    }
    fn empty(&mut self, name: &str, attrs: Attrs<'_>) {
        self.tag(name, attrs, "/>");
    }
    fn open(&mut self, name: &str, attrs: Attrs<'_>) {
        self.tag(name, attrs, ">");
        self.depth += 1;
    }
    fn close(&mut self, name: &str) {
        self.depth -= 1;
        self.out.push_str(&format!("{}</{name}>\n", "  ".repeat(self.depth)));
    }
    /// An element that is empty when `body` writes nothing.
    fn element(&mut self, name: &str, attrs: Attrs<'_>, has_body: bool, body: impl FnOnce(&mut Writer)) {
        if has_body {
            self.open(name, attrs);
            body(self);
            self.close(name);
        } else {
            self.empty(name, attrs);
        }
    }
    fn text(&mut self, name: &str, text: &str) {
        self.out.push_str(&format!("{}<{name}>{}</{name}>\n", "  ".repeat(self.depth), escape(text)));
    }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn yes_if(b: bool) -> Option<String> {
    b.then(|| "yes".to_string())
}

/// The network as `virsh net-dumpxml` would print it.
pub fn to_xml(def: &NetworkDef) -> String {
    let mut w = Writer::default();
    let ns = (!def.interfaces.is_empty()).then(|| super::attach::XML_NS.to_string());
    let dnsmasq_ns = (!def.dnsmasq_options.is_empty()).then(|| super::dnsmasq_options::XML_NS.to_string());
    w.open("network", &[("xmlns:dnsmasq", dnsmasq_ns), ("xmlns:kvmctl", ns), ("ipv6", yes_if(def.ipv6))]);
    w.text("name", &def.name);
    w.text("uuid", &def.uuid.to_string());
    if let Some(m) = &def.metadata {
        // Verbatim, as read: the applications' elements carry their own namespaces.
        w.out.push_str(&format!("  <metadata>{m}</metadata>\n"));
    }
    forward(&mut w, &def.forward);
    bridge(&mut w, def);
    if def.port_isolated {
        w.empty("port", &[("isolated", s("yes"))]);
    }
    if let Some(mtu) = def.mtu {
        w.empty("mtu", &[("size", s(mtu))]);
    }
    if let Some(mac) = def.mac {
        w.empty("mac", &[("address", s(mac))]);
    }
    if let Some(d) = &def.domain {
        w.empty("domain", &[("name", s(&d.name)), ("localOnly", yes_if(d.local_only))]);
    }
    dns(&mut w, &def.dns);
    if let Some(v) = &def.vlan {
        w.open("vlan", &[("trunk", yes_if(v.trunk))]);
        for t in &v.tags {
            w.empty("tag", &[("id", s(t.id)), ("nativeMode", t.native.map(|n| n.as_str().to_string()))]);
        }
        w.close("vlan");
    }
    if let Some(b) = &def.bandwidth {
        w.open("bandwidth", &[]);
        for (tag, r) in [("inbound", &b.inbound), ("outbound", &b.outbound)] {
            if let Some(r) = r {
                w.empty(
                    tag,
                    &[
                        ("average", s(r.average)),
                        ("peak", r.peak.map(|v| v.to_string())),
                        ("burst", r.burst.map(|v| v.to_string())),
                    ],
                );
            }
        }
        w.close("bandwidth");
    }
    for ip in &def.ips {
        ip_element(&mut w, ip);
    }
    for r in &def.routes {
        let family = r.address.is_ipv6().then(|| "ipv6".to_string());
        let attrs = [
            ("family", family),
            ("address", s(r.address)),
            ("prefix", s(r.prefix)),
            ("gateway", s(r.gateway)),
            ("metric", r.metric.map(|m| m.to_string())),
        ];
        w.empty("route", &attrs);
    }
    for i in &def.interfaces {
        w.empty("kvmctl:interface", &[("dev", s(&i.dev))]);
    }
    if !def.dnsmasq_options.is_empty() {
        w.open("dnsmasq:options", &[]);
        for o in &def.dnsmasq_options {
            w.empty("dnsmasq:option", &[("value", s(o))]);
        }
        w.close("dnsmasq:options");
    }
    w.close("network");
    w.out
}

fn forward(w: &mut Writer, f: &Forward) {
    if f.mode == ForwardMode::Isolated {
        return;
    }
    let nat = f.mode == ForwardMode::Nat;
    let attrs = [("dev", f.dev.clone()), ("mode", s(f.mode))];
    w.element("forward", &attrs, nat || f.dev.is_some(), |w| {
        if nat {
            w.open("nat", &[("ipv6", f.nat.ipv6.then(|| "yes".to_string()))]);
            if let Some(a) = &f.nat.address {
                w.empty("address", &[("start", s(a.start)), ("end", s(a.end))]);
            }
            w.empty("port", &[("start", s(f.nat.port.start)), ("end", s(f.nat.port.end))]);
            w.close("nat");
        }
        if let Some(dev) = &f.dev {
            w.empty("interface", &[("dev", s(dev))]);
        }
    });
}

fn bridge(w: &mut Writer, def: &NetworkDef) {
    let b = &def.bridge;
    // libvirt prints stp/delay only for the bridges it creates; keep non-defaults regardless
    // so that nothing is lost in a round trip.
    let show = def.forward.mode != ForwardMode::Bridge || !b.stp || b.delay != 0;
    if b.name.is_none() && b.zone.is_none() && !show {
        return;
    }
    let stp = show.then(|| if b.stp { "on" } else { "off" }.to_string());
    let attrs = [
        ("name", b.name.clone()),
        ("zone", b.zone.clone()),
        ("stp", stp),
        ("delay", show.then(|| b.delay.to_string())),
    ];
    w.empty("bridge", &attrs);
}

fn dns(w: &mut Writer, d: &DnsDef) {
    if d.is_default() {
        return;
    }
    let attrs = [
        ("enable", (!d.enable).then(|| "no".to_string())),
        ("forwardPlainNames", d.forward_plain_names.map(|y| if y { "yes" } else { "no" }.to_string())),
    ];
    let has_body = !(d.forwarders.is_empty() && d.txts.is_empty() && d.srvs.is_empty() && d.hosts.is_empty());
    w.element("dns", &attrs, has_body, |w| {
        for f in &d.forwarders {
            w.empty("forwarder", &[("domain", f.domain.clone()), ("addr", f.addr.map(|a| a.to_string()))]);
        }
        for t in &d.txts {
            w.empty("txt", &[("name", s(&t.name)), ("value", s(&t.value))]);
        }
        for r in &d.srvs {
            let attrs = [
                ("service", s(&r.service)),
                ("protocol", s(&r.protocol)),
                ("domain", r.domain.clone()),
                ("target", r.target.clone()),
                ("port", r.port.map(|v| v.to_string())),
                ("priority", r.priority.map(|v| v.to_string())),
                ("weight", r.weight.map(|v| v.to_string())),
            ];
            w.empty("srv", &attrs);
        }
        for h in &d.hosts {
            dns_host_into(w, h);
        }
    });
}

fn dns_host_into(w: &mut Writer, h: &DnsHost) {
    w.open("host", &[("ip", s(h.ip))]);
    for name in &h.hostnames {
        w.text("hostname", name);
    }
    w.close("host");
}

fn ip_element(w: &mut Writer, ip: &IpDef) {
    let v4 = ip.is_ipv4();
    let family = match v4 {
        false => s("ipv6"),
        true => ip.explicit_family.then(|| "ipv4".to_string()),
    };
    let (netmask, prefix) = match (ip.mask, v4) {
        (MaskForm::Implied, _) => (None, None),
        (MaskForm::Usual, true) => (s(prefix_to_netmask(ip.prefix)), None),
        (MaskForm::Usual, false) | (MaskForm::Prefix, _) => (None, s(ip.prefix)),
    };
    let attrs = [
        ("family", family),
        ("address", s(ip.address)),
        ("netmask", netmask),
        ("prefix", prefix),
        ("localPtr", yes_if(ip.local_ptr)),
    ];
    w.element("ip", &attrs, ip.tftp_root.is_some() || ip.dhcp.is_some(), |w| {
        if let Some(root) = &ip.tftp_root {
            w.empty("tftp", &[("root", s(root))]);
        }
        if let Some(d) = &ip.dhcp {
            let has_body = !(d.ranges.is_empty() && d.hosts.is_empty() && d.bootp.is_none());
            w.element("dhcp", &[], has_body, |w| {
                for r in &d.ranges {
                    range_into(w, r);
                }
                for h in &d.hosts {
                    host_into(w, h);
                }
                if let Some(b) = &d.bootp {
                    w.empty("bootp", &[("file", s(&b.file)), ("server", b.server.map(|a| a.to_string()))]);
                }
            });
        }
    });
}

fn lease_into(w: &mut Writer, lease: &Option<Lease>) {
    if let Some(l) = lease {
        // An infinite lease has no unit (libvirt writes none either).
        let unit = (l.expiry != 0).then(|| l.unit.as_str().to_string());
        w.empty("lease", &[("expiry", s(l.expiry)), ("unit", unit)]);
    }
}

fn range_into(w: &mut Writer, r: &DhcpRange) {
    w.element("range", &[("start", s(r.start)), ("end", s(r.end))], r.lease.is_some(), |w| lease_into(w, &r.lease));
}

fn host_into(w: &mut Writer, h: &DhcpHost) {
    let attrs =
        [("mac", h.mac.map(|m| m.to_string())), ("id", h.id.clone()), ("name", h.name.clone()), ("ip", s(h.ip))];
    w.element("host", &attrs, h.lease.is_some(), |w| lease_into(w, &h.lease));
}

/// One `<host>` of `<dhcp>`, as `net-update` and `net-dumpxml` print it.
pub fn dhcp_host_xml(h: &DhcpHost) -> String {
    let mut w = Writer::default();
    host_into(&mut w, h);
    w.out
}

/// One `<range>` of `<dhcp>`.
pub fn dhcp_range_xml(r: &DhcpRange) -> String {
    let mut w = Writer::default();
    range_into(&mut w, r);
    w.out
}

/// One `<host>` of `<dns>`.
pub fn dns_host_xml(h: &DnsHost) -> String {
    let mut w = Writer::default();
    dns_host_into(&mut w, h);
    w.out
}
