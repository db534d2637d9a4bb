//! The persistent definition of a domain (VM): `<root>/domains/<name>.toml`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use uuid::Uuid;

pub use super::accel::Accel;
pub use crate::network::MacAddr;
pub use crate::storage::image::Format as DiskFormat;

/// A value of the definition that is not one of its closed set or not in its syntax. Every
/// value that reaches a qemu option string is one of these types, so a comma or an `=` in
/// it is refused when the definition is read, before anything is rendered.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("{field} \"{value}\" is not one of {allowed}")]
    NotOneOf { field: &'static str, value: String, allowed: &'static str },
    #[error("{field} \"{value}\" {why}")]
    BadSyntax { field: &'static str, value: String, why: &'static str },
}

/// qemu's disk cache modes (`-drive cache=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    None,
    Writeback,
    Writethrough,
    Unsafe,
    Directsync,
}

impl CacheMode {
    pub const ALLOWED: &'static str = "none, writeback, writethrough, unsafe, directsync";

    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::Unsafe => "unsafe",
            CacheMode::Directsync => "directsync",
        }
    }

    /// virt-install's `cache=`: one of the modes, or `default` (qemu's own choice: no option).
    pub fn parse_or_default(s: &str) -> Result<Option<CacheMode>, ValueError> {
        if s == "default" {
            return Ok(None);
        }
        s.parse().map(Some)
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CacheMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let all =
            [CacheMode::None, CacheMode::Writeback, CacheMode::Writethrough, CacheMode::Unsafe, CacheMode::Directsync];
        all.into_iter().find(|m| m.as_str() == s).ok_or_else(|| ValueError::NotOneOf {
            field: "cache",
            value: s.escape_debug().to_string(),
            allowed: Self::ALLOWED,
        })
    }
}

/// `cache = "default"` (written by earlier versions for virt-install's cache=default) reads as
/// no cache option.
fn cache_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CacheMode>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => CacheMode::parse_or_default(&s).map_err(serde::de::Error::custom),
    }
}

/// `listen`: an IP address (a host name or an option suffix never reaches `-vnc`).
fn ip_addr<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(ValueError::BadSyntax {
            field: "listen",
            value: s.escape_debug().to_string(),
            why: "is not an IP address",
        })
    })
}

/// The characters of a qemu machine type or CPU model name: qemu's own names use only
/// letters, digits, `.`, `_` and `-` (`pc-i440fx-7.2`, `Opteron_G5`, `Skylake-Client-v4`).
fn qemu_name(field: &'static str, s: &str) -> Result<String, ValueError> {
    let bad = |why| ValueError::BadSyntax { field, value: s.escape_debug().to_string(), why };
    let Some(first) = s.chars().next() else { return Err(bad("is empty")) };
    if s.len() > 64 {
        return Err(bad("is longer than 64 bytes"));
    }
    if !first.is_ascii_alphanumeric() || !s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(bad("may hold only letters, digits, '.', '_' and '-' (starting with a letter or digit)"));
    }
    Ok(s.to_string())
}

macro_rules! qemu_name_type {
    ($(#[$doc:meta])* $ty:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $ty(String);

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                qemu_name($field, s).map($ty)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

qemu_name_type!(
    /// A qemu machine type (`-machine`): its syntax here, its existence in qemu's list at
    /// define, install, edit and start (`domain::validate`).
    MachineType,
    "machine"
);
qemu_name_type!(
    /// A qemu CPU model (`-cpu`), without feature flags: `max,+vmx` is refused.
    CpuModel,
    "cpu"
);

/// What to do when the guest powers off, reboots or crashes (libvirt's on_* elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Destroy,
    Restart,
    Preserve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    #[default]
    Virtio,
    Sata,
    Scsi,
    Ide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskDevice {
    #[default]
    Disk,
    Cdrom,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDef {
    pub path: PathBuf,
    pub format: DiskFormat,
    #[serde(default)]
    pub bus: DiskBus,
    #[serde(default)]
    pub device: DiskDevice,
    /// qemu's cache mode; none: qemu's default.
    #[serde(default, deserialize_with = "cache_mode", skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheMode>,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub shareable: bool,
    /// Created by `install` for this VM (removed by `undefine --remove-all-storage`).
    #[serde(default)]
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NicSource {
    /// A kvmctl virtual network.
    Network { network: String },
    /// An existing host bridge.
    Bridge { bridge: String },
    /// qemu user-mode networking (slirp).
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    #[default]
    Virtio,
    E1000,
    Rtl8139,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicDef {
    #[serde(flatten)]
    pub source: NicSource,
    #[serde(default)]
    pub model: NicModel,
    pub mac: MacAddr,
    /// Port forwards of a user-mode NIC (`hostfwd=tcp::2222-:22`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostfwd: Vec<HostFwd>,
}

/// One user-mode port forward: connections to `host_addr:host_port` on the host reach
/// `guest_port` at the guest's DHCP address (qemu's `hostfwd=`). The host side listens on
/// 127.0.0.1 unless another address is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    pub udp: bool,
    pub host_addr: std::net::Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("hostfwd '{value}': {reason} (as tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT, e.g. tcp::2222-:22)")]
pub struct HostFwdError {
    pub value: String,
    pub reason: &'static str,
}

impl FromStr for HostFwd {
    type Err = HostFwdError;

    fn from_str(s: &str) -> Result<HostFwd, HostFwdError> {
        let bad = |reason| HostFwdError { value: s.escape_debug().to_string(), reason };
        let (proto, rest) = s.split_once(':').ok_or_else(|| bad("no protocol"))?;
        let udp = match proto {
            "tcp" | "" => false,
            "udp" => true,
            _ => return Err(bad("the protocol is tcp or udp")),
        };
        let (host, guest) = rest.split_once('-').ok_or_else(|| bad("no '-' between the host and guest sides"))?;
        let side = |part: &str| -> Result<(Option<std::net::Ipv4Addr>, u16), HostFwdError> {
            let (addr, port) = part.rsplit_once(':').ok_or_else(|| bad("a side is ADDR:PORT (ADDR may be empty)"))?;
            let addr = match addr {
                "" => None,
                a => Some(a.parse().map_err(|_| bad("an address is not an IPv4 address"))?),
            };
            let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad("a port is 1 to 65535"))?;
            Ok((addr, port))
        };
        let (host_addr, host_port) = side(host)?;
        let (guest_addr, guest_port) = side(guest)?;
        if guest_addr.is_some() {
            return Err(bad("the guest side is its DHCP address: leave GUESTADDR empty"));
        }
        Ok(HostFwd { udp, host_addr: host_addr.unwrap_or(std::net::Ipv4Addr::LOCALHOST), host_port, guest_port })
    }
}

impl fmt::Display for HostFwd {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{proto}:{}:{}-:{}", self.host_addr, self.host_port, self.guest_port)
    }
}

impl Serialize for HostFwd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HostFwd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HostFwd, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Graphics {
    None,
    Vnc {
        #[serde(deserialize_with = "ip_addr")]
        listen: IpAddr,
        /// A fixed TCP port (5900 and up); none: a display number kvmctl picks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// Clients must give the password kept in `<root>/secrets/VM.vnc` (set over QMP).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        password: bool,
    },
}

/// Firmware: SeaBIOS (qemu's default) or OVMF with a per-VM NVRAM (variable store) copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi {
        code: PathBuf,
        nvram: PathBuf,
    },
}

/// Room for memory hotplug (`-m SIZE,slots=N,maxmem=M`; libvirt's `<maxMemory slots=>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxMemory {
    pub mib: u64,
    pub slots: u32,
}

/// The guest's CPU topology (`-smp sockets=,cores=,threads=`): their product is the maximum
/// vCPU count, as qemu requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainDef {
    pub name: String,
    /// Generated when a definition given to `define` has none, as virsh does.
    #[serde(default = "Uuid::new_v4")]
    pub uuid: Uuid,
    pub memory_mib: u64,
    /// Memory hotplug room above `memory_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<MaxMemory>,
    /// vCPUs at boot.
    pub vcpus: u32,
    /// Hotpluggable maximum (`-smp maxcpus=`); none: `vcpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<CpuTopology>,
    /// A copy of the serial console's output, written by the supervisor (0600) besides
    /// console.log (`--console file,path=P`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_file: Option<PathBuf>,
    /// Checks turned off at install (`--check path_in_use=off`, `mac_in_use=off`): define,
    /// edit and start honour them for this VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks_off: Vec<String>,
    /// qemu -cpu model; None: `host` under KVM, `max` under TCG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuModel>,
    #[serde(default)]
    pub accel: Accel,
    #[serde(default = "default_machine")]
    pub machine: MachineType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_variant: Option<String>,
    /// A short title (`list --title`, `desc --title`): one line of printable text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// A free-form description (`desc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub autostart: bool,
    #[serde(default = "destroy")]
    pub on_poweroff: Action,
    #[serde(default = "restart")]
    pub on_reboot: Action,
    #[serde(default = "destroy")]
    pub on_crash: Action,
    #[serde(default = "no_graphics")]
    pub graphics: Graphics,
    /// Boot order by device class: `hd`, `cdrom`, `network`.
    #[serde(default = "default_boot_order")]
    pub boot_order: Vec<String>,
    /// `-boot menu=on`.
    #[serde(default)]
    pub boot_menu: bool,
    #[serde(default)]
    pub firmware: Firmware,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelBoot>,
    #[serde(default)]
    pub disks: Vec<DiskDef>,
    #[serde(default)]
    pub nics: Vec<NicDef>,
}

fn default_machine() -> MachineType {
    MachineType("pc".into())
}
fn destroy() -> Action {
    Action::Destroy
}
fn restart() -> Action {
    Action::Restart
}
fn no_graphics() -> Graphics {
    Graphics::None
}
fn default_boot_order() -> Vec<String> {
    vec!["hd".into()]
}

impl DomainDef {
    /// The vCPU maximum qemu is given (`maxcpus`): the topology's product, else `max_vcpus`,
    /// else `vcpus`.
    pub fn vcpus_max(&self) -> u32 {
        match (self.topology, self.max_vcpus) {
            (Some(t), _) => t.sockets.saturating_mul(t.cores).saturating_mul(t.threads),
            (None, Some(m)) => m,
            (None, None) => self.vcpus,
        }
    }

    /// A definition with the defaults `install` starts from.
    pub fn new(name: &str, memory_mib: u64, vcpus: u32) -> DomainDef {
        DomainDef {
            name: name.into(),
            uuid: Uuid::new_v4(),
            memory_mib,
            max_memory: None,
            vcpus,
            max_vcpus: None,
            topology: None,
            console_file: None,
            checks_off: Vec::new(),
            cpu: None,
            accel: Accel::Auto,
            machine: default_machine(),
            os_variant: None,
            title: None,
            description: None,
            autostart: false,
            on_poweroff: Action::Destroy,
            on_reboot: Action::Restart,
            on_crash: Action::Destroy,
            graphics: Graphics::None,
            boot_order: default_boot_order(),
            boot_menu: false,
            firmware: Firmware::Bios,
            kernel: None,
            disks: Vec::new(),
            nics: Vec::new(),
        }
    }
}

#[cfg(test)]
mod hostfwd_tests {
    use super::HostFwd;

    #[test]
    fn forwards_listen_on_loopback_unless_told_and_bad_ones_say_why() {
        let f: HostFwd = "tcp::2222-:22".parse().unwrap();
        assert_eq!(f.to_string(), "tcp:127.0.0.1:2222-:22");
        assert_eq!("udp:0.0.0.0:53-:53".parse::<HostFwd>().unwrap().to_string(), "udp:0.0.0.0:53-:53");
        for (bad, why) in [
            ("sctp::1-:2", "tcp or udp"),
            ("tcp::2222:22", "no '-'"),
            ("tcp::0-:22", "1 to 65535"),
            ("tcp::70000-:22", "1 to 65535"),
            ("tcp:host:1-:22", "not an IPv4"),
            ("tcp::1-,guestfwd=x:22", "not an IPv4"),
            ("tcp", "no protocol"),
            ("tcp::1-10.0.2.15:22", "leave GUESTADDR empty"),
        ] {
            let e = bad.parse::<HostFwd>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_round_trips_through_toml() {
        let mut d = DomainDef::new("vm1", 256, 1);
        d.disks.push(DiskDef {
            path: "/var/lib/kvmctl/images/vm1.qcow2".into(),
            format: DiskFormat::Qcow2,
            bus: DiskBus::Virtio,
            device: DiskDevice::Disk,
            cache: Some(CacheMode::Writeback),
            readonly: false,
            shareable: false,
            created: true,
        });
        d.nics.push(NicDef {
            source: NicSource::Network { network: "default".into() },
            model: NicModel::Virtio,
            mac: "52:54:00:12:34:56".parse().unwrap(),
            hostfwd: vec![],
        });
        let mac = "52:54:00:12:34:57".parse().unwrap();
        let hostfwd = vec!["tcp::2222-:22".parse().unwrap(), "udp:0.0.0.0:5353-:53".parse().unwrap()];
        d.nics.push(NicDef { source: NicSource::User, model: NicModel::E1000, mac, hostfwd });
        d.machine = "pc-q35-7.2".parse().unwrap();
        d.cpu = Some("Opteron_G5".parse().unwrap());
        d.graphics = Graphics::Vnc { listen: "::1".parse().unwrap(), port: None, password: false };
        let text = toml::to_string_pretty(&d).unwrap();
        assert!(text.contains("[[disks]]") && text.contains("type = \"network\""), "{text}");
        assert!(text.contains("hostfwd = [") && text.contains(r#""tcp:127.0.0.1:2222-:22""#), "{text}");
        assert!(text.contains(r#""udp:0.0.0.0:5353-:53""#), "{text}");
        assert_eq!(toml::from_str::<DomainDef>(&text).unwrap(), d);
    }

    #[test]
    fn cache_default_written_by_earlier_versions_reads_as_no_cache_option() {
        let text = "name = \"v\"\nmemory_mib = 64\nvcpus = 1\n[[disks]]\npath = \"/d\"\nformat = \"raw\"\ncache = \"default\"\n";
        let d: DomainDef = toml::from_str(text).unwrap();
        assert_eq!(d.disks[0].cache, None);
        assert!(!toml::to_string(&d).unwrap().contains("cache"));
        let e = toml::from_str::<DomainDef>(&text.replace("\"default\"", "\"none,x\"")).unwrap_err().to_string();
        assert!(e.contains("cache \"none,x\" is not one of none, writeback, writethrough, unsafe, directsync"), "{e}");
    }
}
