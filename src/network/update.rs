//! `net-update`: add, delete or modify one static DHCP host or DNS host in a definition.

use std::fmt;
use std::str::FromStr;

use super::{libvirt_xml, DhcpHost, NetworkDef, NetworkError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateCmd {
    Add,
    Delete,
    Modify,
}

impl FromStr for UpdateCmd {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "add" | "add-last" | "add-first" => Ok(UpdateCmd::Add),
            "delete" => Ok(UpdateCmd::Delete),
            "modify" => Ok(UpdateCmd::Modify),
            o => Err(format!("unknown net-update command '{o}' (use add, delete or modify)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    IpDhcpHost,
    DnsHost,
}

impl FromStr for Section {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ip-dhcp-host" => Ok(Section::IpDhcpHost),
            "dns-host" => Ok(Section::DnsHost),
            o => Err(format!("net-update section '{o}' is not supported (kvmctl updates ip-dhcp-host and dns-host)")),
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::IpDhcpHost => "ip-dhcp-host",
            Section::DnsHost => "dns-host",
        })
    }
}

fn err(def: &NetworkDef, what: String) -> NetworkError {
    NetworkError::Update { name: def.name.clone(), what }
}

/// Is `a` the same static host as `b` (same MAC, DUID or name)?
fn same_host(a: &DhcpHost, b: &DhcpHost) -> bool {
    (a.mac.is_some() && a.mac == b.mac)
        || (a.id.is_some() && a.id == b.id)
        || (a.mac.is_none() && a.id.is_none() && a.name == b.name)
}

/// Apply one update to `def` and validate the result.
pub fn apply(def: &mut NetworkDef, cmd: UpdateCmd, section: Section, xml: &str) -> Result<(), NetworkError> {
    match section {
        Section::IpDhcpHost => {
            let host = libvirt_xml::parse_dhcp_host(xml)?;
            let v4 = host.ip.is_ipv4();
            let name = def.name.clone();
            let ip = def
                .ips
                .iter_mut()
                .find(|i| i.is_ipv4() == v4 && i.dhcp.is_some() && i.subnet().contains(host.ip))
                .ok_or_else(|| NetworkError::Update {
                    name,
                    what: format!("no <ip> with <dhcp> contains {}", host.ip),
                })?;
            let hosts = &mut ip.dhcp.as_mut().expect("checked").hosts;
            let found = hosts.iter().position(|h| same_host(&host, h) || (cmd != UpdateCmd::Add && h.ip == host.ip));
            match (cmd, found) {
                (UpdateCmd::Add, Some(i)) => {
                    let h = hosts[i].clone();
                    return Err(err(def, format!("a static host for {} already exists (ip {})", host_key(&h), h.ip)));
                }
                (UpdateCmd::Add, None) => hosts.push(host),
                (UpdateCmd::Delete, Some(i)) => {
                    hosts.remove(i);
                }
                (UpdateCmd::Modify, Some(i)) => hosts[i] = host,
                (_, None) => return Err(err(def, format!("no static host matches {}", host_key(&host)))),
            }
        }
        Section::DnsHost => {
            let host = libvirt_xml::parse_dns_host(xml)?;
            let found = def.dns.hosts.iter().position(|h| h.ip == host.ip);
            match (cmd, found) {
                (UpdateCmd::Add, Some(_)) => {
                    return Err(err(def, format!("a DNS host for {} already exists", host.ip)))
                }
                (UpdateCmd::Add, None) => def.dns.hosts.push(host),
                (UpdateCmd::Delete, Some(i)) => {
                    def.dns.hosts.remove(i);
                }
                (UpdateCmd::Modify, Some(i)) => def.dns.hosts[i] = host,
                (_, None) => return Err(err(def, format!("no DNS host has ip {}", host.ip))),
            }
        }
    }
    def.validate()
}

fn host_key(h: &DhcpHost) -> String {
    match (&h.mac, &h.id, &h.name) {
        (Some(m), _, _) => format!("mac {m}"),
        (_, Some(id), _) => format!("id {id}"),
        (_, _, Some(n)) => format!("name {n}"),
        _ => format!("ip {}", h.ip),
    }
}
