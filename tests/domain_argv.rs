//! Golden tests of the definition -> qemu argv renderer; every case is also started for real
//! (paused with -S) to prove qemu accepts the argv.
//! Regenerate the goldens with KVMCTL_REGEN_GOLDEN=1.

mod common;

use std::io::BufRead;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmctl::domain::argv::{render, RenderEnv};
use kvmctl::domain::definition::*;

fn disk(path: &str, format: &str, bus: DiskBus, device: DiskDevice) -> DiskDef {
    DiskDef {
        path: path.into(),
        format: format.into(),
        bus,
        device,
        cache: None,
        readonly: false,
        shareable: false,
        created: false,
    }
}

fn nic(source: NicSource, model: NicModel, mac: &str) -> NicDef {
    NicDef { source, model, mac: mac.into() }
}

fn base(name: &str) -> DomainDef {
    let mut d = DomainDef::new(name, 256, 1);
    d.uuid = uuid::Uuid::parse_str("3e3fce45-4f53-4fa7-bb32-11f34168b82b").unwrap();
    d
}

/// The matrix: (case name, definition, accel). `@D` in paths is the data dir.
fn cases() -> Vec<(&'static str, DomainDef, Accel)> {
    let mut v = Vec::new();
    let mut d = base("import");
    d.disks.push(disk("@D/vm.qcow2", "qcow2", DiskBus::Virtio, DiskDevice::Disk));
    d.nics.push(nic(NicSource::Network { network: "default".into() }, NicModel::Virtio, "52:54:00:00:00:01"));
    v.push(("import-virtio-nat", d, Accel::Tcg));

    let mut d = base("kernel");
    d.kernel = Some(KernelBoot {
        kernel: "@D/vmlinuz".into(),
        initrd: Some("@D/initrd".into()),
        cmdline: "console=ttyS0 kvmctl.marker=x".into(),
    });
    d.nics.push(nic(NicSource::User, NicModel::Virtio, "52:54:00:00:00:02"));
    d.on_reboot = Action::Destroy;
    v.push(("kernel-boot-user-net", d, Accel::Tcg));

    let mut d = base("buses");
    d.vcpus = 2;
    d.memory_mib = 512;
    d.boot_order = vec!["cdrom".into(), "hd".into()];
    d.disks.push(disk("@D/sata.qcow2", "qcow2", DiskBus::Sata, DiskDevice::Disk));
    d.disks.push(disk("@D/scsi.raw", "raw", DiskBus::Scsi, DiskDevice::Disk));
    d.disks.push(disk("@D/ide,comma.raw", "raw", DiskBus::Ide, DiskDevice::Disk));
    d.disks.push(disk("@D/cd.iso", "raw", DiskBus::Virtio, DiskDevice::Cdrom));
    let mut ro = disk("@D/shared.raw", "raw", DiskBus::Virtio, DiskDevice::Disk);
    ro.readonly = true;
    ro.shareable = true;
    ro.cache = Some("none".into());
    d.disks.push(ro);
    v.push(("disk-buses-cdrom-boot-order", d, Accel::Tcg));

    let mut d = base("nics");
    d.machine = "q35".into();
    d.cpu = Some("qemu64".into());
    d.graphics = Graphics::Vnc { listen: "127.0.0.1".into() };
    d.nics.push(nic(NicSource::Bridge { bridge: "br0".into() }, NicModel::E1000, "52:54:00:00:00:03"));
    d.nics.push(nic(NicSource::Network { network: "n".into() }, NicModel::Rtl8139, "52:54:00:00:00:04"));
    d.nics.push(nic(NicSource::User, NicModel::Virtio, "52:54:00:00:00:05"));
    v.push(("q35-vnc-nic-models", d, Accel::Tcg));

    let mut d = base("uefi");
    d.firmware = Firmware::Uefi { code: "/usr/share/OVMF/OVMF_CODE.fd".into(), nvram: "@D/uefi_VARS.fd".into() };
    d.boot_menu = true;
    d.boot_order = vec!["network".into(), "hd".into()];
    d.disks.push(disk("@D/vm.qcow2", "qcow2", DiskBus::Virtio, DiskDevice::Disk));
    d.nics.push(nic(NicSource::User, NicModel::Virtio, "52:54:00:00:00:06"));
    v.push(("uefi-boot-menu-network-first", d, Accel::Tcg));

    let mut d = base("kvm");
    d.disks.push(disk("@D/vm.qcow2", "qcow2", DiskBus::Virtio, DiskDevice::Disk));
    v.push(("kvm-accel", d, Accel::Kvm));
    v
}

/// Render a case with the data dir given; qemu's sockets are fds `socks`, tap NICs get `fds`.
fn render_case(def: &DomainDef, accel: Accel, data: &str, socks: (i32, i32), fds: &[Option<i32>]) -> Vec<String> {
    let mut def = def.clone();
    let fix = |p: &mut PathBuf| *p = PathBuf::from(p.display().to_string().replace("@D", data));
    def.disks.iter_mut().for_each(|d| fix(&mut d.path));
    if let Firmware::Uefi { nvram, .. } = &mut def.firmware {
        fix(nvram);
    }
    if let Some(k) = def.kernel.as_mut() {
        fix(&mut k.kernel);
        if let Some(i) = k.initrd.as_mut() {
            fix(i);
        }
    }
    let env = RenderEnv { accel, qmp_fd: socks.0, serial_fd: socks.1, tap_fds: fds, vhost: false, vnc_display: 0 };
    render(&def, &env)
}

#[test]
fn qemu_argv_matches_goldens() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/domain");
    let regen = std::env::var("KVMCTL_REGEN_GOLDEN").as_deref() == Ok("1");
    for (name, def, accel) in cases() {
        let fds: Vec<_> = def.nics.iter().map(|n| if n.source == NicSource::User { None } else { Some(3) }).collect();
        let argv = render_case(&def, accel, "/var/lib/kvmctl/images", (4, 5), &fds);
        let text = argv.join("\n") + "\n";
        let file = dir.join(format!("{name}.argv"));
        if regen {
            std::fs::write(&file, &text).unwrap();
        } else {
            let want = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(text, want, "golden {name} differs (KVMCTL_REGEN_GOLDEN=1 to regenerate)");
        }
    }
}

/// Open a tap in a private network namespace (a thread that unshared its netns), so the
/// host never sees it; the fd works from any namespace.
fn tap_in_private_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        kvmctl::domain::tap::open_tap(None).expect("open tap").into_fd()
    })
    .join()
    .unwrap()
}

#[test]
fn every_golden_argv_is_accepted_by_qemu() {
    if !common::require("qemu-system-x86_64", common::have_program("qemu-system-x86_64")) {
        return;
    }
    if !common::require("root (taps)", common::is_root()) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_str().unwrap();
    for f in ["vm.qcow2", "sata.qcow2"] {
        common::sh("qemu-img", &["create", "-q", "-f", "qcow2", &format!("{data}/{f}"), "64M"]);
    }
    for f in ["scsi.raw", "ide,comma.raw", "cd.iso", "shared.raw"] {
        std::fs::write(tmp.path().join(f), vec![0u8; 1 << 20]).unwrap();
    }
    // qemu loads -kernel at machine init (before -S takes effect): it must be a real kernel.
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out");
    if !common::require("the test guest (images/build.sh)", guest.join("vmlinuz").exists()) {
        return;
    }
    std::fs::copy(guest.join("vmlinuz"), tmp.path().join("vmlinuz")).unwrap();
    std::fs::copy(guest.join("initramfs.cpio.gz"), tmp.path().join("initrd")).unwrap();
    if !common::require("OVMF (apt: ovmf)", Path::new("/usr/share/OVMF/OVMF_VARS.fd").exists()) {
        return;
    }
    std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", tmp.path().join("uefi_VARS.fd")).unwrap();
    for (name, def, accel) in cases() {
        let run = tmp.path().join(format!("run-{name}"));
        std::fs::create_dir(&run).unwrap();
        let taps: Vec<Option<OwnedFd>> =
            def.nics.iter().map(|n| (n.source != NicSource::User).then(tap_in_private_netns)).collect();
        let fds: Vec<Option<i32>> = taps.iter().map(|t| t.as_ref().map(|f| f.as_raw_fd())).collect();
        let (qmp, console) = (run.join("qmp.sock"), run.join("console.sock"));
        let socks = [UnixListener::bind(&qmp).unwrap(), UnixListener::bind(&console).unwrap()];
        let argv = render_case(&def, accel, data, (socks[0].as_raw_fd(), socks[1].as_raw_fd()), &fds);
        let inherit: Vec<i32> = fds.iter().flatten().copied().chain(socks.iter().map(|s| s.as_raw_fd())).collect();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(&argv).stderr(Stdio::piped());
        // SAFETY: only fcntl (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || inherit.iter().try_for_each(|fd| kvmctl::domain::tap::clear_cloexec_fd(*fd)));
        }
        let mut child = cmd.spawn().unwrap();
        // qemu holds the listeners now: if it exits, the connection below ends at once.
        drop(socks);
        // qemu greets on QMP once it has parsed the whole argv and built the machine.
        let greeting = qmp_greeting(&qmp);
        if !greeting.starts_with("{\"QMP\"") || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{name}: qemu refused the argv ({greeting:?}): {}", String::from_utf8_lossy(&out.stderr));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// The first line qemu sends on its QMP socket (empty if qemu exits instead). The read has a
/// generous watchdog against a hang.
fn qmp_greeting(qmp: &Path) -> String {
    let Ok(s) = UnixStream::connect(qmp) else { return String::new() };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut line = String::new();
    let _ = std::io::BufReader::new(s).read_line(&mut line);
    line
}
