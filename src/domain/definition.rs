//! The persistent definition of a domain (VM): `<root>/domains/<name>.toml`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use super::accel::Accel;

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
    /// qcow2 or raw.
    pub format: String,
    #[serde(default)]
    pub bus: DiskBus,
    #[serde(default)]
    pub device: DiskDevice,
    /// qemu cache mode (none, writeback, writethrough, unsafe, directsync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
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
    pub mac: String,
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
    Vnc { listen: String },
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainDef {
    pub name: String,
    pub uuid: Uuid,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// qemu -cpu model; None: `host` under KVM, `max` under TCG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default)]
    pub accel: Accel,
    #[serde(default = "default_machine")]
    pub machine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_variant: Option<String>,
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

fn default_machine() -> String {
    "pc".into()
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
    /// A definition with the defaults `install` starts from.
    pub fn new(name: &str, memory_mib: u64, vcpus: u32) -> DomainDef {
        DomainDef {
            name: name.into(),
            uuid: Uuid::new_v4(),
            memory_mib,
            vcpus,
            cpu: None,
            accel: Accel::Auto,
            machine: default_machine(),
            os_variant: None,
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
mod tests {
    use super::*;

    #[test]
    fn definition_round_trips_through_toml() {
        let mut d = DomainDef::new("vm1", 256, 1);
        d.disks.push(DiskDef {
            path: "/var/lib/kvmctl/images/vm1.qcow2".into(),
            format: "qcow2".into(),
            bus: DiskBus::Virtio,
            device: DiskDevice::Disk,
            cache: None,
            readonly: false,
            shareable: false,
            created: true,
        });
        d.nics.push(NicDef {
            source: NicSource::Network { network: "default".into() },
            model: NicModel::Virtio,
            mac: "52:54:00:12:34:56".into(),
        });
        d.nics.push(NicDef { source: NicSource::User, model: NicModel::E1000, mac: "52:54:00:12:34:57".into() });
        let text = toml::to_string_pretty(&d).unwrap();
        assert!(text.contains("[[disks]]") && text.contains("type = \"network\""), "{text}");
        assert_eq!(toml::from_str::<DomainDef>(&text).unwrap(), d);
    }
}
