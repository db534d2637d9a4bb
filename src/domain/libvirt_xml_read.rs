//! `define FILE.xml`: libvirt domain XML -> [`DomainDef`], for the subset kvmctl models (what
//! `dumpxml` writes, so that `dumpxml | define` changes nothing).
//!
//! Each element and attribute kvmctl does not model is refused with an error naming it and its
//! line, except those that change nothing for kvmctl, which are accepted and not kept:
//! `<metadata>`, `<currentMemory>`, `<features>`, `<clock>`,
//! `<pm>`, `<resource>`, `<seclabel>`, `<sysinfo>`, `<emulator>` (kvmctl finds qemu itself),
//! `<serial>` and `<console>` of type `pty` (every VM has one serial console), the devices qemu
//! or kvmctl adds by itself (`<controller>`, `<input>`, `<memballoon>`, `<video>`, `<audio>`,
//! `<sound>`, `<rng>`, `<channel>`) and device `<address>` and `<alias>`.
//!
//! The document is bounded in size, depth and attributes (`crate::xml`); the definition is then
//! checked exactly as one `install` builds (`validate`).

use std::net::IpAddr;
use std::path::PathBuf;

use thiserror::Error;
use uuid::Uuid;

use super::definition::*;
use crate::xml::{parse_document, Element, XmlError};

#[derive(Debug, Error)]
pub enum DomainXmlError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("the document element is <{0}>; expected <domain>")]
    NotADomain(String),
    #[error("<{parent}>: unknown element <{element}> (line {line})")]
    UnknownElement { parent: String, element: String, line: usize },
    #[error("<{element}>: unknown attribute '{attribute}' (line {line})")]
    UnknownAttribute { element: String, attribute: String, line: usize },
    #[error("<{element}>: {what} is not supported by kvmctl (line {line})")]
    Unsupported { element: String, what: String, line: usize },
    #[error("<{parent}>: missing <{element}> (line {line})")]
    MissingElement { parent: String, element: &'static str, line: usize },
    #[error("<{parent}>: <{element}> may appear only once (line {line})")]
    Duplicate { parent: String, element: String, line: usize },
    #[error("<{element}>: missing attribute '{attribute}' (line {line})")]
    MissingAttribute { element: String, attribute: &'static str, line: usize },
    #[error("<{element}{attribute}>: '{value}' {reason} (line {line})")]
    BadValue { element: String, attribute: String, value: String, reason: String, line: usize },
    #[error("<{element}>: {message} (line {line})")]
    Invalid { element: String, message: String, line: usize },
}

type Result<T> = std::result::Result<T, DomainXmlError>;

/// Elements accepted anywhere under their parent and not kept (see the module comment).
const IGNORED_DOMAIN: &[&str] =
    &["metadata", "currentMemory", "features", "clock", "pm", "resource", "seclabel", "sysinfo"];
const IGNORED_DEVICES: &[&str] =
    &["emulator", "controller", "input", "memballoon", "video", "audio", "sound", "rng", "channel"];
const IGNORED_IN_DEVICE: &[&str] = &["address", "alias"];

fn bad(el: &Element, attribute: &str, value: &str, reason: impl Into<String>) -> DomainXmlError {
    let attribute = if attribute.is_empty() { String::new() } else { format!(" {attribute}") };
    DomainXmlError::BadValue {
        element: el.name.clone(),
        attribute,
        value: value.escape_debug().to_string(),
        reason: reason.into(),
        line: el.line,
    }
}

fn unsupported(el: &Element, what: impl Into<String>) -> DomainXmlError {
    DomainXmlError::Unsupported { element: el.name.clone(), what: what.into(), line: el.line }
}

/// Refuse attributes and children not listed (or ignored), and text where none belongs.
fn check(el: &Element, attrs: &[&str], children: &[&str], ignored: &[&str]) -> Result<()> {
    if let Some((attribute, _)) = el.attrs.iter().find(|(k, _)| !attrs.contains(&k.as_str())) {
        let (element, attribute, line) = (el.name.clone(), attribute.clone(), el.line);
        return Err(DomainXmlError::UnknownAttribute { element, attribute, line });
    }
    let known = |c: &&Element| children.contains(&c.name.as_str()) || ignored.contains(&c.name.as_str());
    if let Some(c) = el.children.iter().find(|c| !known(c)) {
        let (parent, element, line) = (el.name.clone(), c.name.clone(), c.line);
        return Err(DomainXmlError::UnknownElement { parent, element, line });
    }
    if !children.is_empty() && !el.text.trim().is_empty() {
        return Err(unsupported(el, format!("text content '{}'", el.text.trim().escape_debug())));
    }
    Ok(())
}

/// The single child `name`, if present.
fn child<'a>(el: &'a Element, name: &'static str) -> Result<Option<&'a Element>> {
    let mut found = el.children_named(name);
    let first = found.next();
    if let Some(dup) = found.next() {
        return Err(DomainXmlError::Duplicate { parent: el.name.clone(), element: name.into(), line: dup.line });
    }
    Ok(first)
}

fn req_child<'a>(el: &'a Element, name: &'static str) -> Result<&'a Element> {
    child(el, name)?.ok_or(DomainXmlError::MissingElement { parent: el.name.clone(), element: name, line: el.line })
}

fn req_attr<'a>(el: &'a Element, name: &'static str) -> Result<&'a str> {
    el.attr(name).ok_or(DomainXmlError::MissingAttribute { element: el.name.clone(), attribute: name, line: el.line })
}

/// The trimmed text of a text-only element with the attributes `attrs`.
fn text(el: &Element, attrs: &[&str]) -> Result<String> {
    check(el, attrs, &[], &[])?;
    if let Some(c) = el.children.first() {
        let (parent, element, line) = (el.name.clone(), c.name.clone(), c.line);
        return Err(DomainXmlError::UnknownElement { parent, element, line });
    }
    Ok(el.text.trim().to_string())
}

/// A value whose own error names it (`machine "pc,x" may hold only ...`).
fn invalid(el: &Element, e: impl std::fmt::Display) -> DomainXmlError {
    DomainXmlError::Invalid { element: el.name.clone(), message: e.to_string(), line: el.line }
}

fn parse_value<T: std::str::FromStr>(el: &Element, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| invalid(el, e))
}

/// Parse a libvirt `<domain>` document. A missing `<uuid>` is generated; `<mac>` likewise
/// (`random_mac`), unique among the document's NICs.
pub fn from_xml(xml: &str) -> Result<DomainDef> {
    read(xml).map(|(def, _)| def)
}

/// [`from_xml`], and whether the document gave the UUID.
pub fn read(xml: &str) -> Result<(DomainDef, bool)> {
    let root = parse_document(xml)?;
    if root.name != "domain" {
        return Err(DomainXmlError::NotADomain(root.name));
    }
    Ok((domain(&root)?, child(&root, "uuid")?.is_some()))
}

fn domain(el: &Element) -> Result<DomainDef> {
    let children = [
        "name",
        "uuid",
        "title",
        "description",
        "memory",
        "maxMemory",
        "vcpu",
        "os",
        "cpu",
        "on_poweroff",
        "on_reboot",
        "on_crash",
        "devices",
    ];
    check(el, &["type", "id"], &children, IGNORED_DOMAIN)?;
    let name = text(req_child(el, "name")?, &[])?;
    let mut def = DomainDef::new(&name, memory_mib(req_child(el, "memory")?)?, 1);
    def.accel = match req_attr(el, "type")? {
        "kvm" => Accel::Auto,
        "qemu" => Accel::Tcg,
        other => return Err(bad(el, "type", other, "is not a domain type of kvmctl (kvm or qemu)")),
    };
    if let Some(u) = child(el, "uuid")? {
        let t = text(u, &[])?;
        def.uuid = Uuid::parse_str(&t).map_err(|e| bad(u, "", &t, format!("is not a UUID: {e}")))?;
    }
    if let Some(v) = child(el, "vcpu")? {
        let t = text(v, &["placement", "current"])?;
        let max: u32 = t.parse().map_err(|_| bad(v, "", &t, "is not a number of vCPUs (0 to 4294967295)"))?;
        def.vcpus = max;
        if let Some(c) = v.attr("current") {
            def.vcpus = c.parse().map_err(|_| bad(v, "current", c, "is not a number of vCPUs"))?;
            if def.vcpus != max {
                def.max_vcpus = Some(max);
            }
        }
    }
    if let Some(m) = child(el, "maxMemory")? {
        let slots = req_attr(m, "slots")?;
        let slots = slots.parse().map_err(|_| bad(m, "slots", slots, "is not a number of slots"))?;
        let mut plain = m.clone();
        plain.attrs.retain(|(k, _)| k != "slots");
        def.max_memory = Some(MaxMemory { mib: memory_mib(&plain)?, slots });
    }
    if let Some(os) = child(el, "os")? {
        read_os(os, &mut def)?;
    }
    if let Some(t) = child(el, "title")? {
        def.title = Some(text(t, &[])?);
    }
    if let Some(d) = child(el, "description")? {
        def.description = Some(text(d, &[])?);
    }
    if let Some(cpu) = child(el, "cpu")? {
        def.cpu = read_cpu(cpu, def.accel == Accel::Tcg)?;
        if let Some(t) = child(cpu, "topology")? {
            def.topology = Some(topology(t)?);
        }
    }
    for (tag, slot) in
        [("on_poweroff", &mut def.on_poweroff), ("on_reboot", &mut def.on_reboot), ("on_crash", &mut def.on_crash)]
    {
        if let Some(a) = child(el, tag)? {
            *slot = action(a)?;
        }
    }
    if let Some(devices) = child(el, "devices")? {
        read_devices(devices, &mut def)?;
    }
    Ok(def)
}

/// `<memory unit='KiB'>N</memory>` (libvirt's default unit is KiB), rounded up to a MiB.
fn memory_mib(el: &Element) -> Result<u64> {
    let t = text(el, &["unit", "dumpCore"])?;
    let unit = el.attr("unit").unwrap_or("KiB");
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(el, "", &t, "is not a whole number"));
    }
    let bytes = crate::size::parse_size(&format!("{t}{unit}"))
        .map_err(|e| bad(el, "", &format!("{t} {unit}"), e.to_string()))?;
    Ok(bytes.div_ceil(1 << 20))
}

fn read_os(os: &Element, def: &mut DomainDef) -> Result<()> {
    check(os, &[], &["type", "kernel", "initrd", "cmdline", "boot", "bootmenu", "loader", "nvram"], &[])?;
    let ty = req_child(os, "type")?;
    let kind = text(ty, &["arch", "machine"])?;
    if kind != "hvm" {
        return Err(unsupported(ty, format!("OS type '{}' (kvmctl runs hvm guests)", kind.escape_debug())));
    }
    if let Some(arch) = ty.attr("arch").filter(|a| *a != "x86_64") {
        return Err(bad(ty, "arch", arch, "is not x86_64 (kvmctl runs qemu-system-x86_64)"));
    }
    if let Some(m) = ty.attr("machine") {
        def.machine = parse_value(ty, m)?;
    }
    if let Some(k) = child(os, "kernel")? {
        let initrd = child(os, "initrd")?.map(|i| text(i, &[])).transpose()?.map(PathBuf::from);
        let cmdline = child(os, "cmdline")?.map(|c| text(c, &[])).transpose()?.unwrap_or_default();
        def.kernel = Some(KernelBoot { kernel: text(k, &[])?.into(), initrd, cmdline });
    } else if let Some(extra) = child(os, "initrd")?.or(child(os, "cmdline")?) {
        return Err(unsupported(extra, "an initrd or a kernel command line without <kernel>"));
    }
    let boots: Vec<&Element> = os.children_named("boot").collect();
    if !boots.is_empty() {
        def.boot_order = boots
            .iter()
            .map(|b| text(b, &["dev"]).and(req_attr(b, "dev").map(str::to_string)))
            .collect::<Result<_>>()?;
    }
    if let Some(m) = child(os, "bootmenu")? {
        text(m, &["enable", "timeout"])?;
        def.boot_menu = match req_attr(m, "enable")? {
            "yes" => true,
            "no" => false,
            other => return Err(bad(m, "enable", other, "is not yes or no")),
        };
    }
    match (child(os, "loader")?, child(os, "nvram")?) {
        (None, None) => {}
        (Some(l), Some(n)) => {
            let code = text(l, &["readonly", "type", "secure"])?;
            if let Some(t) = l.attr("type").filter(|t| *t != "pflash") {
                return Err(unsupported(
                    l,
                    format!("loader type '{}' (kvmctl loads OVMF as pflash)", t.escape_debug()),
                ));
            }
            def.firmware = Firmware::Uefi { code: code.into(), nvram: text(n, &["template"])?.into() };
        }
        (Some(l), None) => return Err(unsupported(l, "a <loader> without its <nvram> variable store")),
        (None, Some(n)) => return Err(unsupported(n, "an <nvram> without its <loader>")),
    }
    Ok(())
}

/// `host-passthrough` (and `host-model`): kvmctl's default (`host` under KVM, `max` under TCG);
/// `custom`: the `<model>`; `maximum` (`-cpu max`): the default under TCG, the `max` model
/// under KVM.
fn read_cpu(cpu: &Element, tcg: bool) -> Result<Option<CpuModel>> {
    check(cpu, &["mode", "match", "check", "migratable"], &["model", "topology"], &[])?;
    let model = cpu.children.iter().find(|c| c.name != "topology");
    match cpu.attr("mode").unwrap_or("custom") {
        "maximum" => {
            if let Some(m) = model {
                return Err(unsupported(m, "a CPU model with mode maximum"));
            }
            Ok(if tcg { None } else { Some(parse_value(cpu, "max")?) })
        }
        "host-passthrough" | "host-model" => {
            if let Some(m) = model {
                return Err(unsupported(m, "a CPU model with mode host-passthrough"));
            }
            Ok(None)
        }
        "custom" => {
            let m = req_child(cpu, "model")?;
            let name = text(m, &["fallback", "vendor_id"])?;
            Ok(Some(parse_value(m, &name)?))
        }
        other => Err(bad(cpu, "mode", other, "is not host-passthrough, host-model, maximum or custom")),
    }
}

/// `<topology sockets= dies='1' cores= threads=/>`.
fn topology(t: &Element) -> Result<CpuTopology> {
    check(t, &["sockets", "dies", "clusters", "cores", "threads"], &[], &[])?;
    let n = |name: &'static str| -> Result<u32> {
        let v = req_attr(t, name)?;
        v.parse().ok().filter(|n: &u32| *n > 0).ok_or_else(|| bad(t, name, v, "is not a positive number"))
    };
    for one in ["dies", "clusters"] {
        if let Some(v) = t.attr(one).filter(|v| *v != "1") {
            return Err(bad(t, one, v, "must be 1 (kvmctl models sockets, cores and threads)"));
        }
    }
    Ok(CpuTopology { sockets: n("sockets")?, cores: n("cores")?, threads: n("threads")? })
}

fn action(el: &Element) -> Result<Action> {
    let t = text(el, &[])?;
    Ok(match t.as_str() {
        "destroy" => Action::Destroy,
        "restart" => Action::Restart,
        "preserve" => Action::Preserve,
        _ => return Err(bad(el, "", &t, "is not destroy, restart or preserve")),
    })
}

fn read_devices(devs: &Element, def: &mut DomainDef) -> Result<()> {
    check(devs, &[], &["disk", "interface", "graphics", "serial", "console"], IGNORED_DEVICES)?;
    for d in devs.children_named("disk") {
        def.disks.push(disk(d)?);
    }
    let mut macs = std::collections::HashSet::new();
    for i in devs.children_named("interface") {
        let nic = interface(i, &macs)?;
        macs.insert(nic.mac);
        def.nics.push(nic);
    }
    for c in devs.children.iter().filter(|c| c.name == "serial" || c.name == "console") {
        check(c, &["type", "tty"], &["target", "source", "log"], IGNORED_IN_DEVICE)?;
        if req_attr(c, "type")? != "pty" {
            return Err(unsupported(c, "a serial port other than a pty (every VM has one serial console)"));
        }
        // `<log file='P'/>`: a copy of the console's output (install --console file,path=P).
        if let (Some(l), "serial") = (child(c, "log")?, c.name.as_str()) {
            check(l, &["file", "append"], &[], &[])?;
            def.console_file = Some(PathBuf::from(req_attr(l, "file")?));
        }
    }
    if let Some(g) = child(devs, "graphics")? {
        def.graphics = graphics(g)?;
    }
    Ok(())
}

fn disk(el: &Element) -> Result<DiskDef> {
    let children = ["driver", "source", "target", "readonly", "shareable", "backingStore"];
    check(el, &["type", "device"], &children, IGNORED_IN_DEVICE)?;
    let ty = el.attr("type").unwrap_or("file");
    if ty != "file" && ty != "block" {
        return Err(unsupported(el, format!("disk type '{}' (kvmctl has file and block disks)", ty.escape_debug())));
    }
    let device = match el.attr("device").unwrap_or("disk") {
        "disk" => DiskDevice::Disk,
        "cdrom" => DiskDevice::Cdrom,
        other => return Err(bad(el, "device", other, "is not disk or cdrom")),
    };
    let source = child(el, "source")?.ok_or_else(|| unsupported(el, "a drive without <source> (an empty drive)"))?;
    check(source, &["file", "dev"], &[], &[])?;
    let path = source.attr("file").or(source.attr("dev"));
    let path = path.ok_or(DomainXmlError::MissingAttribute {
        element: "source".into(),
        attribute: "file",
        line: source.line,
    })?;
    let driver = req_child(el, "driver")?;
    check(driver, &["name", "type", "cache"], &[], &[])?;
    let format = req_attr(driver, "type")?;
    let format =
        format.parse().map_err(|_| bad(driver, "type", format, "is not a disk format of kvmctl (raw, qcow2)"))?;
    let cache = driver.attr("cache").map(|c| CacheMode::parse_or_default(c).map_err(|e| invalid(driver, e)));
    let bus = match child(el, "target")? {
        None => DiskBus::Virtio,
        Some(t) => {
            check(t, &["dev", "bus"], &[], &[])?;
            match t.attr("bus").unwrap_or("virtio") {
                "virtio" => DiskBus::Virtio,
                "sata" => DiskBus::Sata,
                "scsi" => DiskBus::Scsi,
                "ide" => DiskBus::Ide,
                other => return Err(bad(t, "bus", other, "is not virtio, sata, scsi or ide")),
            }
        }
    };
    let flag = |name| child(el, name).and_then(|c| c.map(|c| text(c, &[])).transpose()).map(|t| t.is_some());
    Ok(DiskDef {
        path: path.into(),
        format,
        bus,
        device,
        cache: cache.transpose()?.flatten(),
        readonly: flag("readonly")? || device == DiskDevice::Cdrom,
        shareable: flag("shareable")?,
        created: false,
    })
}

fn interface(el: &Element, used: &std::collections::HashSet<MacAddr>) -> Result<NicDef> {
    check(el, &["type"], &["mac", "source", "model", "target", "portForward"], IGNORED_IN_DEVICE)?;
    let src = child(el, "source")?;
    let source_attr = |name: &'static str| -> Result<String> {
        let s =
            src.ok_or(DomainXmlError::MissingElement { parent: el.name.clone(), element: "source", line: el.line })?;
        check(s, &[name], &[], &[])?;
        Ok(req_attr(s, name)?.to_string())
    };
    let source = match req_attr(el, "type")? {
        "network" => NicSource::Network { network: source_attr("network")? },
        "bridge" => NicSource::Bridge { bridge: source_attr("bridge")? },
        "user" => NicSource::User,
        other => return Err(unsupported(el, format!("interface type '{}'", other.escape_debug()))),
    };
    let model = match child(el, "model")? {
        None => NicModel::Virtio,
        Some(m) => {
            check(m, &["type"], &[], &[])?;
            match req_attr(m, "type")? {
                "virtio" => NicModel::Virtio,
                "e1000" => NicModel::E1000,
                "rtl8139" => NicModel::Rtl8139,
                other => return Err(bad(m, "type", other, "is not virtio, e1000 or rtl8139")),
            }
        }
    };
    let mac = match child(el, "mac")? {
        None => super::install::random_mac(used),
        Some(m) => {
            check(m, &["address"], &[], &[])?;
            let a = req_attr(m, "address")?;
            a.parse().map_err(|e: crate::network::NetworkError| invalid(m, e))?
        }
    };
    if let Some(t) = child(el, "target")? {
        check(t, &["dev", "managed"], &[], &[])?;
    }
    let mut hostfwd = Vec::new();
    for f in el.children.iter().filter(|c| c.name == "portForward") {
        if source != NicSource::User {
            return Err(unsupported(f, "a <portForward> on an interface that is not type='user'"));
        }
        hostfwd.extend(port_forward(f)?);
    }
    Ok(NicDef { source, model, mac, hostfwd })
}

/// libvirt's `<portForward proto='tcp' address='A'><range start='H' to='G'/></portForward>`:
/// one forward per range (a range of several ports, `end=`, is refused).
fn port_forward(f: &Element) -> Result<Vec<HostFwd>> {
    check(f, &["proto", "address"], &["range"], &[])?;
    let proto = req_attr(f, "proto")?;
    let addr = f.attr("address").unwrap_or("");
    let mut out = Vec::new();
    for r in f.children.iter().filter(|c| c.name == "range") {
        check(r, &["start", "to"], &[], &[])?;
        let start = req_attr(r, "start")?;
        let to = r.attr("to").unwrap_or(start);
        out.push(parse_value(r, &format!("{proto}:{addr}:{start}-:{to}"))?);
    }
    if out.is_empty() {
        return Err(DomainXmlError::MissingElement { parent: f.name.clone(), element: "range", line: f.line });
    }
    Ok(out)
}

fn graphics(el: &Element) -> Result<Graphics> {
    check(el, &["type", "port", "autoport", "listen"], &["listen"], &[])?;
    if req_attr(el, "type")? != "vnc" {
        return Err(unsupported(el, "graphics other than vnc"));
    }
    if let Some(p) = el.attr("port").filter(|p| *p != "-1") {
        return Err(unsupported(el, format!("a fixed VNC port '{}' (kvmctl picks a free one)", p.escape_debug())));
    }
    let mut listen = el.attr("listen").map(str::to_string);
    if let Some(l) = child(el, "listen")? {
        check(l, &["type", "address"], &[], &[])?;
        if l.attr("type").is_some_and(|t| t != "address") {
            return Err(unsupported(l, "a VNC listen other than an address"));
        }
        listen = listen.or(l.attr("address").map(str::to_string));
    }
    let listen = listen.unwrap_or_else(|| "127.0.0.1".into());
    let listen: IpAddr = listen.parse().map_err(|_| bad(el, "listen", &listen, "is not an IP address"))?;
    Ok(Graphics::Vnc { listen, port: None, password: false })
}

#[cfg(test)]
mod tests {
    use super::super::libvirt_xml::to_xml;
    use super::*;

    fn full() -> DomainDef {
        let mut d = DomainDef::new("web1", 1024, 2);
        d.machine = "q35".parse().unwrap();
        d.cpu = Some("qemu64".parse().unwrap());
        d.accel = Accel::Tcg;
        d.on_crash = Action::Preserve;
        d.boot_order = vec!["cdrom".into(), "hd".into()];
        d.boot_menu = true;
        d.firmware = Firmware::Uefi { code: "/usr/share/OVMF/OVMF_CODE.fd".into(), nvram: "/n/web1_VARS.fd".into() };
        d.graphics = Graphics::Vnc { listen: "::1".parse().unwrap(), port: None, password: false };
        let disk = |path: &str, bus, device, format| DiskDef {
            path: PathBuf::from(path),
            format,
            bus,
            device,
            cache: None,
            readonly: device == DiskDevice::Cdrom,
            shareable: false,
            created: false,
        };
        d.disks.push(disk("/v/a,b&c'.qcow2", DiskBus::Virtio, DiskDevice::Disk, DiskFormat::Qcow2));
        d.disks.push(disk("/v/d.img", DiskBus::Sata, DiskDevice::Disk, DiskFormat::Raw));
        d.disks.push(disk("/v/i.iso", DiskBus::Ide, DiskDevice::Cdrom, DiskFormat::Raw));
        d.disks[1].cache = Some(CacheMode::Writeback);
        d.disks[1].shareable = true;
        let nic = |source, model, mac: &str| NicDef { source, model, mac: mac.parse().unwrap(), hostfwd: vec![] };
        d.nics.push(nic(NicSource::Network { network: "default".into() }, NicModel::Virtio, "52:54:00:00:00:01"));
        d.nics.push(nic(NicSource::Bridge { bridge: "br0".into() }, NicModel::E1000, "52:54:00:00:00:02"));
        d.nics.push(nic(NicSource::User, NicModel::Rtl8139, "52:54:00:00:00:03"));
        d
    }

    #[test]
    fn dumpxml_reads_back_as_the_same_definition() {
        let d = full();
        assert_eq!(from_xml(&to_xml(&d)).unwrap(), d);
        // What install's virt-install spellings add, and what only kvmctl has.
        let mut e = full();
        e.title = Some("web & co".into());
        e.description = Some("two\nlines".into());
        e.max_memory = Some(MaxMemory { mib: 4096, slots: 4 });
        e.vcpus = 2;
        e.max_vcpus = Some(4);
        e.topology = Some(CpuTopology { sockets: 1, cores: 2, threads: 2 });
        e.console_file = Some("/var/log/web1 & co.log".into());
        e.nics[2].hostfwd = vec!["tcp::2222-:22".parse().unwrap(), "udp:0.0.0.0:53-:5353".parse().unwrap()];
        let x = to_xml(&e);
        assert!(
            x.contains("<vcpu placement='static' current='2'>4</vcpu>") && x.contains("<maxMemory slots='4'"),
            "{x}"
        );
        assert_eq!(from_xml(&x).unwrap(), e);
        e.cpu = None;
        e.accel = Accel::Tcg;
        assert_eq!(from_xml(&to_xml(&e)).unwrap(), e, "mode='maximum' with a topology");
        let mut k = DomainDef::new("k", 64, 1);
        k.kernel =
            Some(KernelBoot { kernel: "/b/vmlinuz".into(), initrd: Some("/b/initrd".into()), cmdline: "a=1 b".into() });
        assert_eq!(from_xml(&to_xml(&k)).unwrap(), k);
    }

    #[test]
    fn what_virsh_writes_reads_with_uuid_and_macs_generated() {
        let xml = "<domain type='kvm' id='3'>\n  <name>v</name>\n  <metadata><a:b xmlns:a='x'/></metadata>\n  \
            <memory unit='GiB'>1</memory>\n  <currentMemory unit='KiB'>1048576</currentMemory>\n  \
            <vcpu placement='static'>2</vcpu>\n  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>\n  \
            <features><acpi/><apic/></features>\n  <clock offset='utc'/>\n  <devices>\n    \
            <emulator>/usr/bin/qemu-system-x86_64</emulator>\n    <disk type='file' device='disk'>\n      \
            <driver name='qemu' type='qcow2' cache='none'/>\n      <source file='/v/a.qcow2'/>\n      \
            <target dev='vda' bus='virtio'/>\n      <address type='pci' slot='0x04'/>\n    </disk>\n    \
            <interface type='network'><source network='default'/><model type='virtio'/></interface>\n    \
            <interface type='user'/>\n    <controller type='usb'/>\n    <serial type='pty'><target port='0'/></serial>\n    \
            <console type='pty'><target type='serial' port='0'/></console>\n    <memballoon model='virtio'/>\n  \
            </devices>\n</domain>\n";
        let d = from_xml(xml).unwrap();
        assert_eq!((d.memory_mib, d.vcpus, d.machine.as_str(), d.accel), (1024, 2, "pc-q35-7.2", Accel::Auto));
        assert_eq!(d.disks[0].cache, Some(CacheMode::None));
        assert!(!d.uuid.is_nil() && d.uuid != from_xml(xml).unwrap().uuid, "a new UUID each time");
        assert_eq!(d.nics.len(), 2);
        assert_ne!(d.nics[0].mac, d.nics[1].mac);
        assert!(d.nics.iter().all(|n| n.mac.0[..3] == [0x52, 0x54, 0x00]));
    }

    fn err(xml: &str) -> String {
        from_xml(xml).unwrap_err().to_string()
    }

    #[test]
    fn what_kvmctl_does_not_model_is_refused_naming_it() {
        let dom = |body: &str| format!("<domain type='kvm'><name>v</name><memory>65536</memory>{body}</domain>");
        let dev = |body: &str| dom(&format!("<devices>{body}</devices>"));
        let cases = [
            (dom("<iothreads>2</iothreads>"), "<domain>: unknown element <iothreads> (line 1)"),
            (dev("<hostdev mode='subsystem'/>"), "<devices>: unknown element <hostdev> (line 1)"),
            (
                dev("<disk type='network'><source protocol='nbd'/></disk>"),
                "<disk>: disk type 'network' (kvmctl has file and block disks) is not supported by kvmctl (line 1)",
            ),
            (
                dev("<disk type='file' device='cdrom'><driver type='raw'/></disk>"),
                "<disk>: a drive without <source> (an empty drive) is not supported",
            ),
            (
                dev("<disk><driver type='raw,file=/etc/shadow'/><source file='/d'/></disk>"),
                "<driver type>: 'raw,file=/etc/shadow' is not a disk format of kvmctl (raw, qcow2) (line 1)",
            ),
            (
                dev("<disk><driver type='raw' cache='none,x'/><source file='/d'/></disk>"),
                "<driver>: cache \"none,x\" is not one of none, writeback",
            ),
            (dev("<interface type='direct'/>"), "interface type 'direct' is not supported"),
            (
                dev("<interface type='user'><mac address='52:54:00:00:00:0g'/></interface>"),
                "<mac>: '52:54:00:00:00:0g' is not a MAC address",
            ),
            (dev("<graphics type='spice'/>"), "<graphics>: graphics other than vnc is not supported"),
            (
                dom("<os><type machine='pc,accel=kvm'>hvm</type></os>"),
                "<type>: machine \"pc,accel=kvm\" may hold only letters",
            ),
            (dom("<cpu mode='custom'><model>max,+vmx</model></cpu>"), "cpu \"max,+vmx\" may hold only letters"),
            (dom("<cpu mode='host-passthrough'><feature name='vmx'/></cpu>"), "<cpu>: unknown element <feature>"),
            (dom("<vcpu>99999999999</vcpu>"), "<vcpu>: '99999999999' is not a number of vCPUs (0 to 4294967295)"),
            (dom("<on_crash>coredump-destroy</on_crash>"), "is not destroy, restart or preserve"),
            (dom("<uuid>nope</uuid>"), "<uuid>: 'nope' is not a UUID"),
        ];
        for (xml, want) in cases {
            assert!(err(&xml).contains(want), "{xml}: {}", err(&xml));
        }
        assert_eq!(err("<network/>"), "the document element is <network>; expected <domain>");
        assert_eq!(err("<domain type='xen'/>"), "<domain>: missing <name> (line 1)");
    }

    #[test]
    fn memory_units_are_libvirts_and_too_large_is_said_so() {
        let mem = |m: &str| from_xml(&format!("<domain type='kvm'><name>v</name>{m}</domain>"));
        assert_eq!(mem("<memory>65536</memory>").unwrap().memory_mib, 64);
        assert_eq!(mem("<memory unit='MiB'>64</memory>").unwrap().memory_mib, 64);
        assert_eq!(mem("<memory unit='G'>2</memory>").unwrap().memory_mib, 2048);
        assert_eq!(mem("<memory unit='b'>1</memory>").unwrap().memory_mib, 1, "rounded up to a MiB");
        assert_eq!(mem("<memory>0</memory>").unwrap().memory_mib, 0, "validate refuses it, naming the limits");
        let e = mem("<memory unit='KiB'>18446744073709551615</memory>").unwrap_err().to_string();
        assert_eq!(e, "<memory>: '18446744073709551615 KiB' size '18446744073709551615KiB' is too large (line 1)");
        let e = mem("<memory unit='TiB'>99999999999</memory>").unwrap_err().to_string();
        assert!(e.contains("is too large"), "{e}");
        let e = mem("<memory>1e30</memory>").unwrap_err().to_string();
        assert_eq!(e, "<memory>: '1e30' is not a whole number (line 1)");
    }

    #[test]
    fn deep_or_huge_documents_are_refused_by_the_bounded_reader() {
        let deep = format!("<domain>{}{}</domain>", "<a>".repeat(100_000), "</a>".repeat(100_000));
        assert!(err(&deep).starts_with("elements nest deeper than 64 levels: <a> at line 1 is at depth 65"));
    }
}
