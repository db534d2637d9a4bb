//! `dumpxml`: the definition as libvirt domain XML, for the subset kvmctl models (read back by
//! `libvirt_xml_read`).

use super::definition::*;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;")
}

/// Target device name as libvirt assigns them: vda.. for virtio, sda.. for sata/scsi, hda.. for ide.
pub fn target_names(def: &DomainDef) -> Vec<String> {
    let (mut vd, mut sd, mut hd) = (0u8, 0u8, 0u8);
    def.disks
        .iter()
        .map(|d| {
            let bus = if d.device == DiskDevice::Cdrom && d.bus == DiskBus::Virtio { DiskBus::Ide } else { d.bus };
            let (prefix, n) = match bus {
                DiskBus::Virtio => ("vd", &mut vd),
                DiskBus::Sata | DiskBus::Scsi => ("sd", &mut sd),
                DiskBus::Ide => ("hd", &mut hd),
            };
            *n += 1;
            format!("{prefix}{}", (b'a' + *n - 1) as char)
        })
        .collect()
}

fn bus_name(d: &DiskDef) -> &'static str {
    match (d.device, d.bus) {
        (DiskDevice::Cdrom, DiskBus::Virtio) | (_, DiskBus::Ide) => "ide",
        (_, DiskBus::Virtio) => "virtio",
        (_, DiskBus::Sata) => "sata",
        (_, DiskBus::Scsi) => "scsi",
    }
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Destroy => "destroy",
        Action::Restart => "restart",
        Action::Preserve => "preserve",
    }
}

/// What a running VM adds to its XML: the domain id, the accelerator it really runs on, and
/// its NICs' tap names.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub id: Option<u32>,
    /// Kvm or Tcg (what runs, or what a start would pick now).
    pub accel: Option<Accel>,
    pub taps: Vec<String>,
}

/// The definition as libvirt XML (`dumpxml --inactive`).
pub fn to_xml(def: &DomainDef) -> String {
    to_xml_live(def, &Live::default())
}

/// The XML of what runs (`dumpxml`): `type='qemu'` and `<cpu mode='maximum'/>` (qemu's
/// `-cpu max`) under TCG, `host-passthrough` (`-cpu host`) under KVM.
pub fn to_xml_live(def: &DomainDef, live: &Live) -> String {
    let mut x = String::new();
    let tcg = live.accel.unwrap_or(def.accel) == Accel::Tcg;
    let virt = if tcg { "qemu" } else { "kvm" };
    let id = live.id.map(|i| format!(" id='{i}'")).unwrap_or_default();
    x += &format!("<domain type='{virt}'{id}>\n  <name>{}</name>\n  <uuid>{}</uuid>\n", esc(&def.name), def.uuid);
    if let Some(t) = &def.title {
        x += &format!("  <title>{}</title>\n", esc(t));
    }
    if let Some(d) = &def.description {
        x += &format!("  <description>{}</description>\n", esc(d));
    }
    if let Some(m) = &def.max_memory {
        x += &format!("  <maxMemory slots='{}' unit='MiB'>{}</maxMemory>\n", m.slots, m.mib);
    }
    x += &format!(
        "  <memory unit='MiB'>{0}</memory>\n  <currentMemory unit='MiB'>{0}</currentMemory>\n",
        def.memory_mib
    );
    let current = if def.vcpus_max() != def.vcpus { format!(" current='{}'", def.vcpus) } else { String::new() };
    x += &format!(
        "  <vcpu placement='static'{current}>{}</vcpu>\n  <os>\n    <type arch='x86_64' machine='{}'>hvm</type>\n",
        def.vcpus_max(),
        esc(def.machine.as_str())
    );
    if let Firmware::Uefi { code, nvram } = &def.firmware {
        x += &format!("    <loader readonly='yes' type='pflash'>{}</loader>\n", esc(&code.display().to_string()));
        x += &format!("    <nvram>{}</nvram>\n", esc(&nvram.display().to_string()));
    }
    if let Some(k) = &def.kernel {
        x += &format!("    <kernel>{}</kernel>\n", esc(&k.kernel.display().to_string()));
        if let Some(i) = &k.initrd {
            x += &format!("    <initrd>{}</initrd>\n", esc(&i.display().to_string()));
        }
        if !k.cmdline.is_empty() {
            x += &format!("    <cmdline>{}</cmdline>\n", esc(&k.cmdline));
        }
    } else {
        for b in &def.boot_order {
            x += &format!("    <boot dev='{}'/>\n", esc(b));
        }
    }
    if def.boot_menu {
        x += "    <bootmenu enable='yes'/>\n";
    }
    x += "  </os>\n  <features>\n    <acpi/>\n  </features>\n";
    let (mode, model) = match &def.cpu {
        Some(m) => ("custom", format!("    <model>{}</model>\n", esc(m.as_str()))),
        None if tcg => ("maximum", String::new()),
        None => ("host-passthrough", String::new()),
    };
    let topology = def
        .topology
        .map(|t| {
            format!("    <topology sockets='{}' dies='1' cores='{}' threads='{}'/>\n", t.sockets, t.cores, t.threads)
        })
        .unwrap_or_default();
    if model.is_empty() && topology.is_empty() {
        x += &format!("  <cpu mode='{mode}'/>\n");
    } else {
        x += &format!("  <cpu mode='{mode}'>\n{model}{topology}  </cpu>\n");
    }
    x += &format!(
        "  <on_poweroff>{}</on_poweroff>\n  <on_reboot>{}</on_reboot>\n  <on_crash>{}</on_crash>\n  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n",
        action(def.on_poweroff),
        action(def.on_reboot),
        action(def.on_crash)
    );
    for (d, target) in def.disks.iter().zip(target_names(def)) {
        let dev = if d.device == DiskDevice::Cdrom { "cdrom" } else { "disk" };
        x += &format!("    <disk type='file' device='{dev}'>\n      <driver name='qemu' type='{}'", d.format);
        if let Some(c) = &d.cache {
            x += &format!(" cache='{c}'");
        }
        x += &format!(
            "/>\n      <source file='{}'/>\n      <target dev='{target}' bus='{}'/>\n",
            esc(&d.path.display().to_string()),
            bus_name(d)
        );
        if d.readonly {
            x += "      <readonly/>\n";
        }
        if d.shareable {
            x += "      <shareable/>\n";
        }
        x += "    </disk>\n";
    }
    let mut taps = live.taps.iter();
    for n in &def.nics {
        let target = match (&n.source, live.taps.is_empty()) {
            (NicSource::User, _) | (_, true) => String::new(),
            _ => taps.next().map(|t| format!("      <target dev='{}'/>\n", esc(t))).unwrap_or_default(),
        };
        let (ty, src) = match &n.source {
            NicSource::Network { network } => ("network", format!("      <source network='{}'/>\n", esc(network))),
            NicSource::Bridge { bridge } => ("bridge", format!("      <source bridge='{}'/>\n", esc(bridge))),
            NicSource::User => ("user", String::new()),
        };
        let model = match n.model {
            NicModel::Virtio => "virtio",
            NicModel::E1000 => "e1000",
            NicModel::Rtl8139 => "rtl8139",
        };
        let fwd: String = n
            .hostfwd
            .iter()
            .map(|f| {
                let proto = if f.udp { "udp" } else { "tcp" };
                format!(
                    "      <portForward proto='{proto}' address='{}'>\n        <range start='{}' to='{}'/>\n      </portForward>\n",
                    f.host_addr, f.host_port, f.guest_port
                )
            })
            .collect();
        x += &format!("    <interface type='{ty}'>\n      <mac address='{}'/>\n{src}{target}      <model type='{model}'/>\n{fwd}    </interface>\n", n.mac);
    }
    let log = def
        .console_file
        .as_ref()
        .map(|p| format!("      <log file='{}' append='off'/>\n", esc(&p.display().to_string())))
        .unwrap_or_default();
    x += &format!("    <serial type='pty'>\n{log}      <target port='0'/>\n    </serial>\n");
    x += "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n";
    if let Graphics::Vnc { listen, port, .. } = &def.graphics {
        match port {
            Some(p) => x += &format!("    <graphics type='vnc' port='{p}' autoport='no' listen='{listen}'/>\n"),
            None => x += &format!("    <graphics type='vnc' port='-1' autoport='yes' listen='{listen}'/>\n"),
        }
    }
    x += "  </devices>\n</domain>\n";
    x
}
