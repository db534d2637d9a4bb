//! Definition -> qemu argv: a pure function of the definition and what was probed before.
//!
//! Every value placed in a qemu option string (`key=value,key=value`) is either of a closed
//! type (formats, cache modes, buses, MACs, machine types and CPU models, addresses, numbers)
//! or escaped here (`,` doubled: names, paths). What cannot be made safe is refused: a
//! relative image path (qemu reads `json:{...}` or `nbd:...` as an image spec, not a file) and
//! an initrd path holding a comma (qemu's multiboot loader splits `-initrd` at commas).

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::definition::{Accel, DiskBus, DiskDevice, DiskFormat, DomainDef, Firmware, Graphics, NicModel, NicSource};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgvError {
    #[error("{field} path \"{path}\" is not absolute (qemu would read a relative name as an image spec such as json: or nbd:)")]
    RelativePath { field: String, path: String },
    #[error("kernel.initrd path \"{path}\" holds a ',' (qemu's multiboot loader splits -initrd at commas)")]
    CommaInInitrd { path: String },
}

fn shown(p: &Path) -> String {
    p.display().to_string().escape_debug().to_string()
}

/// The paths qemu's block layer opens (`-drive file=`), by the definition field they come from.
fn image_paths(def: &DomainDef) -> Vec<(String, &PathBuf)> {
    let mut v: Vec<(String, &PathBuf)> =
        def.disks.iter().enumerate().map(|(i, d)| (format!("disk {}", i + 1), &d.path)).collect();
    if let Firmware::Uefi { code, nvram } = &def.firmware {
        v.push(("firmware.code".into(), code));
        v.push(("firmware.nvram".into(), nvram));
    }
    v
}

/// Refuse what the renderer cannot make safe (see the module doc).
pub fn check(def: &DomainDef) -> Result<(), ArgvError> {
    for (field, p) in image_paths(def) {
        if !p.is_absolute() {
            return Err(ArgvError::RelativePath { field, path: shown(p) });
        }
    }
    if let Some(i) = def.kernel.as_ref().and_then(|k| k.initrd.as_ref()) {
        if i.as_os_str().as_encoded_bytes().contains(&b',') {
            return Err(ArgvError::CommaInInitrd { path: shown(i) });
        }
    }
    Ok(())
}

/// What the renderer needs beyond the definition; probing happens before, not here.
#[derive(Debug, Clone)]
pub struct RenderEnv<'a> {
    /// The resolved accelerator (never `Auto`).
    pub accel: Accel,
    /// qemu's listening QMP and serial sockets, bound by kvmctl in the VM's private runtime
    /// dir and inherited by qemu at these fd numbers.
    pub qmp_fd: i32,
    pub serial_fd: i32,
    /// Tap fd for each NIC in order (`None` for user-mode NICs).
    pub tap_fds: &'a [Option<i32>],
    /// The files qemu gets as fds (images, boot files, vhost-net): see `confine`.
    pub files: &'a Handed,
    /// VNC display number, when graphics is VNC.
    pub vnc_display: u16,
}

/// One `-add-fd fd=N,set=S,opaque=PATH`: fd `N`, opened from `path`, in qemu fd set `S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFd {
    pub fd: i32,
    pub set: u32,
    pub path: PathBuf,
}

/// A disk's image as qemu gets it: its fd set and, nearest first, each backing file's set and
/// recorded format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSets {
    pub set: u32,
    pub backing: Vec<(u32, DiskFormat)>,
}

/// What qemu gets as open fds instead of file names (opened by `confine::open`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handed {
    pub add_fd: Vec<AddFd>,
    /// Per disk, in definition order.
    pub disks: Vec<ImageSets>,
    /// OVMF code and NVRAM sets.
    pub firmware: Option<(u32, u32)>,
    /// `-kernel` and `-initrd` fds (qemu reads `/proc/self/fd/N`).
    pub kernel: Option<i32>,
    pub initrd: Option<i32>,
    /// A `/dev/vhost-net` fd per NIC (`None`: vhost off).
    pub vhost: Vec<Option<i32>>,
}

/// Where the fds of [`Handed`] come from: opened files (`confine`) or plain numbers (the
/// dry run and the goldens). One walk over the definition serves both.
pub trait FdSource {
    type Error;
    /// An image (or firmware file), read-write or read-only.
    fn file(&mut self, path: &Path, writable: bool) -> Result<i32, Self::Error>;
    /// A boot file qemu reads as `/proc/self/fd/N`.
    fn readable(&mut self, path: &Path) -> Result<i32, Self::Error>;
    /// A `/dev/vhost-net` fd, where one opens.
    fn vhost(&mut self) -> Option<i32>;
    /// A qcow2 disk's backing files, nearest first, with their recorded formats.
    fn backing(&mut self, disk: &Path, format: DiskFormat) -> Result<Vec<(PathBuf, DiskFormat)>, Self::Error>;
}

impl Handed {
    /// What qemu gets for `def`: an fd set per image (read-write and read-only fds for a
    /// writable one), per backing file, and per firmware file; the boot files; vhost-net fds.
    pub fn walk<S: FdSource>(def: &DomainDef, src: &mut S, vhost: bool) -> Result<Handed, S::Error> {
        let mut h = Handed::default();
        let mut next_set = 1u32;
        let mut set_of = |src: &mut S, h: &mut Handed, path: &Path, writable: bool| -> Result<u32, S::Error> {
            let set = next_set;
            next_set += 1;
            let modes: &[bool] = if writable { &[true, false] } else { &[false] };
            for &w in modes {
                let fd = src.file(path, w)?;
                h.add_fd.push(AddFd { fd, set, path: path.to_path_buf() });
            }
            Ok(set)
        };
        if let Firmware::Uefi { code, nvram } = &def.firmware {
            let c = set_of(src, &mut h, code, false)?;
            let n = set_of(src, &mut h, nvram, true)?;
            h.firmware = Some((c, n));
        }
        for d in &def.disks {
            let writable = !(d.readonly || d.device == DiskDevice::Cdrom);
            let set = set_of(src, &mut h, &d.path, writable)?;
            let mut chain = Vec::new();
            if d.format == DiskFormat::Qcow2 {
                for (p, f) in src.backing(&d.path, d.format)? {
                    chain.push((set_of(src, &mut h, &p, false)?, f));
                }
            }
            h.disks.push(ImageSets { set, backing: chain });
        }
        if let Some(k) = &def.kernel {
            h.kernel = Some(src.readable(&k.kernel)?);
            if let Some(i) = &k.initrd {
                h.initrd = Some(src.readable(i)?);
            }
        }
        for n in &def.nics {
            let fd = if vhost && n.source != NicSource::User { src.vhost() } else { None };
            h.vhost.push(fd);
        }
        Ok(h)
    }

    /// Fd numbers from `first` up, as [`confine::open`](super::confine::open) would assign
    /// them for `def` without backing files: for `install --dry-run` and the goldens.
    pub fn numbered(def: &DomainDef, first: i32, vhost: bool) -> Handed {
        struct Numbers(i32);
        impl Numbers {
            fn next(&mut self) -> i32 {
                self.0 += 1;
                self.0 - 1
            }
        }
        impl FdSource for Numbers {
            type Error = std::convert::Infallible;
            fn file(&mut self, _: &Path, _: bool) -> Result<i32, Self::Error> {
                Ok(self.next())
            }
            fn readable(&mut self, _: &Path) -> Result<i32, Self::Error> {
                Ok(self.next())
            }
            fn vhost(&mut self) -> Option<i32> {
                Some(self.next())
            }
            fn backing(&mut self, _: &Path, _: DiskFormat) -> Result<Vec<(PathBuf, DiskFormat)>, Self::Error> {
                Ok(vec![])
            }
        }
        match Handed::walk(def, &mut Numbers(first), vhost) {
            Ok(h) => h,
            Err(never) => match never {},
        }
    }
}

/// qemu's seccomp sandbox: no obsolete system calls, no set*id, no fork/exec, no scheduler
/// or affinity changes.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The qemu argv (without the program name). qemu starts paused (`-S`): the supervisor
/// connects QMP and the console first, then sends `cont`.
pub fn render(def: &DomainDef, env: &RenderEnv) -> Result<Vec<String>, ArgvError> {
    check(def)?;
    let mut a = Args::default();
    let accel = if env.accel == Accel::Kvm { "kvm" } else { "tcg" };
    let default_cpu = if env.accel == Accel::Kvm { "host" } else { "max" };
    let cpu = def.cpu.as_ref().map_or(default_cpu, |c| c.as_str());
    a.push(["-name", &format!("guest={},debug-threads=on", escape(&def.name))]);
    a.push(["-uuid", &def.uuid.to_string()]);
    a.push(["-machine", &escape(def.machine.as_str())]);
    a.push(["-accel", accel]);
    a.push(["-cpu", cpu]);
    a.push(["-m", &memory(def)]);
    a.push(["-smp", &smp(def)]);
    a.flag("-nodefaults");
    a.flag("-no-user-config");
    a.flag("-S");
    a.flag("-no-shutdown");
    if def.on_reboot == super::definition::Action::Destroy {
        a.flag("-no-reboot");
    }
    a.push(["-rtc", "base=utc"]);
    a.push(["-sandbox", SANDBOX]);
    for f in &env.files.add_fd {
        a.push(["-add-fd", &format!("fd={},set={},opaque={}", f.fd, f.set, escape_path(&f.path))]);
    }
    a.push(["-chardev", &format!("socket,id=qmp,fd={},server=on,wait=off", env.qmp_fd)]);
    a.push(["-mon", "chardev=qmp,mode=control"]);
    a.push(["-chardev", &format!("socket,id=serial0,fd={},server=on,wait=off", env.serial_fd)]);
    a.push(["-serial", "chardev:serial0"]);
    match &def.graphics {
        Graphics::None => a.push(["-display", "none"]),
        Graphics::Vnc { listen, port, password } => {
            let display = port.map(|p| p.saturating_sub(5900)).unwrap_or(env.vnc_display);
            let host = match listen {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            };
            // The password itself goes over QMP (set_password), never into the argv.
            let auth = if *password { ",password=on" } else { "" };
            a.push(["-vnc", &format!("{host}:{display}{auth}")]);
            a.push(["-device", "VGA"]);
        }
    }
    if let (Firmware::Uefi { .. }, Some((code, nvram))) = (&def.firmware, env.files.firmware) {
        a.push(["-drive", &format!("if=pflash,format=raw,readonly=on,file=/dev/fdset/{code}")]);
        a.push(["-drive", &format!("if=pflash,format=raw,file=/dev/fdset/{nvram}")]);
    }
    if def.boot_menu {
        a.push(["-boot", "menu=on"]);
    }
    // -kernel, -initrd and -append are taken whole by qemu (no option parsing, no escaping).
    if let (Some(k), Some(kfd)) = (&def.kernel, env.files.kernel) {
        a.push(["-kernel", &format!("/proc/self/fd/{kfd}")]);
        if let (Some(_), Some(ifd)) = (&k.initrd, env.files.initrd) {
            a.push(["-initrd", &format!("/proc/self/fd/{ifd}")]);
        }
        if !k.cmdline.is_empty() {
            a.push(["-append", &k.cmdline]);
        }
    }
    disks(def, env.files, &mut a);
    nics(def, env, &mut a);
    Ok(a.0)
}

/// `-m`: the size, and the hotplug room (`slots=`, `maxmem=`) when there is one.
fn memory(def: &DomainDef) -> String {
    match def.max_memory {
        None => format!("{}M", def.memory_mib),
        Some(m) => format!("size={}M,slots={},maxmem={}M", def.memory_mib, m.slots, m.mib),
    }
}

/// `-smp`: the vCPUs at boot, with the topology and the maximum when given.
fn smp(def: &DomainDef) -> String {
    let mut s = def.vcpus.to_string();
    if let Some(t) = def.topology {
        s.push_str(&format!(",sockets={},cores={},threads={}", t.sockets, t.cores, t.threads));
    }
    if def.topology.is_some() || def.max_vcpus.is_some() {
        s.push_str(&format!(",maxcpus={}", def.vcpus_max()));
    }
    s
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push<const N: usize>(&mut self, items: [&str; N]) {
        self.0.extend(items.iter().map(|s| s.to_string()));
    }
    fn flag(&mut self, f: &str) {
        self.0.push(f.to_string());
    }
}

/// bootindex for the first device of each class, in the definition's boot order.
fn boot_index(def: &DomainDef, class: &str, first_of_class: bool) -> Option<usize> {
    if !first_of_class || def.kernel.is_some() {
        return None;
    }
    def.boot_order.iter().position(|c| c == class).map(|p| p + 1)
}

fn disks(def: &DomainDef, files: &Handed, a: &mut Args) {
    let (mut ahci, mut scsi) = (false, false);
    let (mut ide_unit, mut sata_port, mut scsi_lun) = (0usize, 0usize, 0usize);
    let (mut seen_hd, mut seen_cd) = (false, false);
    for (i, d) in def.disks.iter().enumerate() {
        let cd = d.device == DiskDevice::Cdrom;
        let sets = files.disks.get(i).cloned().unwrap_or_default();
        let mut drive = format!("file=/dev/fdset/{},format={},if=none,id=drive{i}", sets.set, d.format);
        // The backing chain as kvmctl read it, so qemu follows no header by name.
        let mut prefix = String::new();
        for (set, format) in &sets.backing {
            prefix.push_str("backing.");
            drive.push_str(&format!(",{prefix}driver={format},{prefix}file.filename=/dev/fdset/{set}"));
        }
        if let Some(c) = d.cache {
            drive.push_str(&format!(",cache={c}"));
        }
        if d.readonly || cd {
            drive.push_str(",readonly=on");
        }
        if d.shareable {
            drive.push_str(",file.locking=off");
        }
        a.push(["-drive", &drive]);
        let class = if cd { "cdrom" } else { "hd" };
        let first = if cd { !std::mem::replace(&mut seen_cd, true) } else { !std::mem::replace(&mut seen_hd, true) };
        let boot = boot_index(def, class, first).map(|b| format!(",bootindex={b}")).unwrap_or_default();
        // virtio-blk has no CD-ROM: a CD on the virtio bus goes to IDE, as virt-install does.
        let bus = if cd && d.bus == DiskBus::Virtio { DiskBus::Ide } else { d.bus };
        let kind = if cd { "cd" } else { "hd" };
        let dev = match bus {
            DiskBus::Virtio => format!("virtio-blk-pci,drive=drive{i},id=disk{i}{boot}"),
            DiskBus::Ide => {
                // i440fx's IDE has two units per bus; q35's (AHCI) one per bus, ide.0 to ide.5.
                let q35 = def.machine.as_str().contains("q35");
                let (b, u) = if q35 { (ide_unit, 0) } else { (ide_unit / 2, ide_unit % 2) };
                ide_unit += 1;
                format!("ide-{kind},drive=drive{i},id=disk{i},bus=ide.{b},unit={u}{boot}")
            }
            DiskBus::Sata => {
                if !std::mem::replace(&mut ahci, true) {
                    a.push(["-device", "ahci,id=ahci0"]);
                }
                sata_port += 1;
                format!("ide-{kind},drive=drive{i},id=disk{i},bus=ahci0.{}{boot}", sata_port - 1)
            }
            DiskBus::Scsi => {
                if !std::mem::replace(&mut scsi, true) {
                    a.push(["-device", "virtio-scsi-pci,id=scsi0"]);
                }
                scsi_lun += 1;
                format!("scsi-{kind},drive=drive{i},id=disk{i},bus=scsi0.0,lun={}{boot}", scsi_lun - 1)
            }
        };
        a.push(["-device", &dev]);
    }
}

fn nics(def: &DomainDef, env: &RenderEnv, a: &mut Args) {
    for (i, n) in def.nics.iter().enumerate() {
        let netdev = match (&n.source, env.tap_fds.get(i).copied().flatten()) {
            (NicSource::User, _) => {
                // Each part is rendered from validated numbers and addresses: no comma in it.
                let fwd: String = n.hostfwd.iter().map(|f| format!(",hostfwd={f}")).collect();
                format!("user,id=net{i}{fwd}")
            }
            (_, Some(fd)) => match env.files.vhost.get(i).copied().flatten() {
                Some(v) => format!("tap,id=net{i},fd={fd},vhost=on,vhostfd={v}"),
                None => format!("tap,id=net{i},fd={fd},vhost=off"),
            },
            // A tap NIC without its fd cannot be rendered; the caller opens taps first.
            (_, None) => format!("tap,id=net{i}"),
        };
        a.push(["-netdev", &netdev]);
        let model = match n.model {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000 => "e1000",
            NicModel::Rtl8139 => "rtl8139",
        };
        let boot = boot_index(def, "network", i == 0).map(|b| format!(",bootindex={b}")).unwrap_or_default();
        a.push(["-device", &format!("{model},netdev=net{i},id=nic{i},mac={}{boot}", n.mac)]);
    }
}

/// qemu option values use ',' as separator; a literal comma is written ',,'.
pub fn escape(v: &str) -> String {
    v.replace(',', ",,")
}

fn escape_path(p: &Path) -> String {
    escape(&p.display().to_string())
}
