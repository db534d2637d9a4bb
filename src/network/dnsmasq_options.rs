//! libvirt's `<dnsmasq:options>` (namespace [`XML_NS`]): extra lines for the network's
//! dnsmasq config, written at its end as libvirt writes them.
//!
//! libvirt passes every value through. kvmctl passes what only changes how dnsmasq answers
//! (DNS records, DHCP options, logging to syslog, ...) and refuses, naming the option, what
//! would reach outside the network: options that read or write host files or run programs
//! (dnsmasq runs them as root or reads them before it drops privileges), that change the
//! sockets, pid file or lease file kvmctl manages, or that add addresses to the host's
//! firewall sets. What is left is checked by `dnsmasq --test` at define time, so a bad option
//! is refused by net-define and net-edit, not found at net-start.

use std::fmt::Write as _;

use super::xml_dom::Element;
use super::NetworkError;
use crate::process::{self, ProcessError};

/// libvirt's namespace for dnsmasq options (`xmlns:dnsmasq='…'` on `<network>`).
pub const XML_NS: &str = "http://libvirt.org/schemas/network/dnsmasq/1.0";

const ELEMENT: &str = "dnsmasq:option";

/// Options refused, each with its reason.
const REFUSED: &[(&[&str], &str)] = &[
    (
        &[
            "conf-file",
            "conf-dir",
            "conf-script",
            "servers-file",
            "resolv-file",
            "addn-hosts",
            "hostsdir",
            "dhcp-hostsfile",
            "dhcp-hostsdir",
            "dhcp-optsfile",
            "dhcp-optsdir",
            "read-ethers",
            "dnssec-timestamp",
        ],
        "it makes dnsmasq read host files (kvmctl writes the network's own hosts files; use <dns> and <dhcp><host>)",
    ),
    (
        &["dhcp-script", "dhcp-luascript", "dhcp-scriptuser", "script-arp", "script-on-renewal"],
        "it makes dnsmasq run a program on the host",
    ),
    (&["log-facility", "dumpfile"], "it makes dnsmasq write a host file (its log goes to syslog)"),
    (&["enable-tftp", "tftp-root"], "it serves host files over TFTP (use <tftp root='…'/>, which kvmctl checks)"),
    (
        &[
            "interface",
            "except-interface",
            "listen-address",
            "bind-interfaces",
            "bind-dynamic",
            "no-dhcp-interface",
            "no-dhcpv4-interface",
            "no-dhcpv6-interface",
            "bridge-interface",
            "auth-server",
            "dhcp-relay",
            "pid-file",
            "user",
            "group",
            "keep-in-foreground",
            "no-daemon",
            "dhcp-leasefile",
            "leasefile-ro",
        ],
        "kvmctl sets it: the network's dnsmasq listens on its bridge only, as an unprivileged user, with kvmctl's pid and lease files",
    ),
    (&["ipset", "nftset"], "it adds addresses to the host's firewall sets"),
    (&["enable-dbus", "enable-ubus"], "it puts the network's dnsmasq on the host's message bus"),
];

/// The values of `<dnsmasq:options><dnsmasq:option value='…'/></dnsmasq:options>`, taken out
/// of `root` with their namespace declaration (any prefix).
pub(super) fn take(root: &mut Element) -> Result<Vec<String>, NetworkError> {
    let mut values = vec![];
    for el in super::xml_dom::take_namespace(root, XML_NS, "dnsmasq")? {
        if el.name != "dnsmasq:options" {
            let (parent, element, line) = (root.name.clone(), el.name.clone(), el.line);
            return Err(NetworkError::UnknownElement { parent, element, line });
        }
        el.check(&[], &[ELEMENT])?;
        for o in &el.children {
            o.check(&["value"], &[])?;
            values.push(o.req_attr("value")?.to_string());
        }
    }
    Ok(values)
}

fn bad(value: &str, reason: impl Into<String>) -> NetworkError {
    let (element, attribute, value) = (ELEMENT.to_string(), "value".to_string(), value.to_string());
    NetworkError::BadValue { element, attribute, value, reason: reason.into() }
}

/// Each option on its own: one line, a plain option name, not one kvmctl refuses.
pub(super) fn check(options: &[String]) -> Result<(), NetworkError> {
    for v in options {
        if v.chars().any(char::is_control) {
            return Err(bad(v, "an option is one line, without control characters"));
        }
        let name = v.split('=').next().unwrap_or_default().trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(bad(v, "it must start with a dnsmasq option name (lowercase letters, digits and '-'), as in 'cname=a.example,b.example'"));
        }
        if let Some((_, why)) = REFUSED.iter().find(|(names, _)| names.contains(&name)) {
            return Err(bad(v, format!("'{name}' is refused: {why}")));
        }
    }
    Ok(())
}

/// `dnsmasq --test` of the options (fed on stdin, one per line): dnsmasq's own verdict, its
/// message naming the option it refused.
pub(super) fn test(options: &[String]) -> Result<(), NetworkError> {
    if options.is_empty() {
        return Ok(());
    }
    let mut conf = String::new();
    for o in options {
        let _ = writeln!(conf, "{o}");
    }
    match process::run("dnsmasq", ["--test", "--conf-file=-"], Some(conf.as_bytes())) {
        Ok(_) => Ok(()),
        Err(ProcessError::Failed { stderr, .. }) => {
            let said = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim_start_matches("dnsmasq: ");
            // "bad option at line N of stdin": name the Nth option.
            let line = said.rsplit_once(" at line ").and_then(|(_, r)| r.split(' ').next()?.parse::<usize>().ok());
            let what = said.split(" at line ").next().unwrap_or(said);
            match line.and_then(|n| options.get(n.checked_sub(1)?)) {
                Some(v) => Err(bad(v, format!("dnsmasq --test refuses it: {what}"))),
                None => Err(bad(&options.join("; "), format!("dnsmasq --test refuses the options: {said}"))),
            }
        }
        Err(e) => Err(bad(&options.join("; "), format!("cannot check it with dnsmasq --test: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn harmless_options_pass_the_own_checks() {
        check(&opts(&["cname=*.foo.example.com,master.example.com", "log-queries", " dhcp-option=42,10.0.0.1"]))
            .unwrap();
    }

    #[test]
    fn options_reaching_outside_the_network_are_refused_with_the_reason() {
        for (v, why) in [
            ("conf-file=/etc/shadow", "read host files"),
            ("dhcp-script=/bin/sh", "run a program"),
            ("log-facility=/tmp/x", "write a host file"),
            ("tftp-root=/", "TFTP"),
            ("interface=eth0", "kvmctl sets it"),
            ("pid-file=/run/x", "kvmctl sets it"),
            ("nftset=/x/4#inet#t#s", "firewall sets"),
            ("auth-server=ns.example,eth0", "kvmctl sets it"),
            ("enable-dbus", "message bus"),
        ] {
            let e = check(&opts(&[v])).unwrap_err().to_string();
            assert!(e.contains("dnsmasq:option") && e.contains(v) && e.contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn a_quoted_or_multiline_option_cannot_hide_its_name() {
        for v in
            ["\"conf-file\"=/etc/shadow", "conf\\-file=/etc/shadow", "log-queries\nconf-file=/etc/shadow", "=x", ""]
        {
            assert!(check(&opts(&[v])).is_err(), "{v:?}");
        }
    }

    #[test]
    fn dnsmasq_test_names_the_option_it_refuses() {
        if crate::process::find_program("dnsmasq").is_none() {
            assert!(std::env::var("CI").is_err(), "CI=true needs dnsmasq");
            return;
        }
        test(&opts(&["cname=a.example,b.example", "log-queries"])).unwrap();
        let e = test(&opts(&["log-queries", "foo=bar"])).unwrap_err().to_string();
        assert!(e.contains("foo=bar") && e.contains("bad option"), "{e}");
        let e = test(&opts(&["dhcp-option=6,\"1.2.3.4\""])).unwrap_err().to_string();
        assert!(e.contains("dhcp-option=6") && e.contains("bad IP address"), "{e}");
    }
}
