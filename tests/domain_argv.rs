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

use kvmctl::domain::argv::{render, ArgvError, Handed, RenderEnv};
use kvmctl::domain::confine;
use kvmctl::domain::definition::*;

fn disk(path: &str, format: &str, bus: DiskBus, device: DiskDevice) -> DiskDef {
    DiskDef {
        path: path.into(),
        format: format.parse().unwrap(),
        bus,
        device,
        cache: None,
        readonly: false,
        shareable: false,
        created: false,
    }
}

fn nic(source: NicSource, model: NicModel, mac: &str) -> NicDef {
    NicDef { source, model, mac: mac.parse().unwrap(), hostfwd: vec![] }
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
    ro.cache = Some(CacheMode::None);
    d.disks.push(ro);
    v.push(("disk-buses-cdrom-boot-order", d, Accel::Tcg));

    let mut d = base("nics");
    d.machine = "q35".parse().unwrap();
    d.cpu = Some("qemu64".parse().unwrap());
    d.graphics = Graphics::Vnc { listen: "127.0.0.1".parse().unwrap(), port: None, password: false };
    d.nics.push(nic(NicSource::Bridge { bridge: "br0".into() }, NicModel::E1000, "52:54:00:00:00:03"));
    d.nics.push(nic(NicSource::Network { network: "n".into() }, NicModel::Rtl8139, "52:54:00:00:00:04"));
    d.nics.push(nic(NicSource::User, NicModel::Virtio, "52:54:00:00:00:05"));
    // q35's IDE is AHCI: one unit per bus.
    d.disks.push(disk("@D/hd,a.raw", "raw", DiskBus::Ide, DiskDevice::Disk));
    d.disks.push(disk("@D/c,d.iso", "raw", DiskBus::Ide, DiskDevice::Cdrom));
    v.push(("q35-vnc-nic-models", d, Accel::Tcg));

    // A fixed port (display 5) on IPv6, with a password: `password=on`, the password itself
    // never in the argv (it goes over QMP).
    let mut d = base("vncpw");
    d.graphics = Graphics::Vnc { listen: "::1".parse().unwrap(), port: Some(5905), password: true };
    d.disks.push(disk("@D/vm.qcow2", "qcow2", DiskBus::Virtio, DiskDevice::Disk));
    v.push(("vnc-port-password", d, Accel::Tcg));

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

    // --memory maxmemory=,maxMemory.slots= and --vcpus N,maxvcpus=,sockets=,cores=,threads=.
    let mut d = base("topology");
    d.memory_mib = 256;
    d.max_memory = Some(MaxMemory { mib: 1024, slots: 2 });
    d.vcpus = 2;
    d.max_vcpus = Some(4);
    d.topology = Some(CpuTopology { sockets: 2, cores: 2, threads: 1 });
    d.disks.push(disk("@D/vm.qcow2", "qcow2", DiskBus::Virtio, DiskDevice::Disk));
    v.push(("smp-topology-maxmem", d, Accel::Tcg));
    v.push(("commas-in-every-free-form-field", commas(), Accel::Tcg));
    v
}

/// Issue 10: a comma in every free-form value the renderer places in an option string. Each
/// is doubled (the name, disk and firmware paths; qemu's sockets arrive as fds) or,
/// where qemu takes the whole argument (-kernel, -append), passed as it is. The typed fields
/// (format, cache, bus, MAC, machine, CPU, VNC address) cannot hold one: see
/// `typed_fields_refuse_a_comma_when_read`; an initrd path with one is refused.
fn commas() -> DomainDef {
    let mut d = base("com,ma");
    d.machine = "pc-i440fx-7.2".parse().unwrap();
    d.cpu = Some("Opteron_G1".parse().unwrap());
    d.firmware = Firmware::Uefi { code: "@D/OVMF,CODE.fd".into(), nvram: "@D/uefi,VARS.fd".into() };
    d.kernel = Some(KernelBoot {
        kernel: "@D/vm,linuz".into(),
        initrd: Some("@D/initrd".into()),
        cmdline: "console=ttyS0,115200 kvmctl.marker=a,b".into(),
    });
    let caches = [CacheMode::Writeback, CacheMode::Writethrough, CacheMode::Unsafe, CacheMode::Directsync];
    let disks = [
        ("@D/vd,a.qcow2", "qcow2", DiskBus::Virtio),
        ("@D/sd,a.raw", "raw", DiskBus::Sata),
        ("@D/sd,b.raw", "raw", DiskBus::Scsi),
        ("@D/hd,a.raw", "raw", DiskBus::Ide),
    ];
    for ((path, format, bus), cache) in disks.into_iter().zip(caches) {
        let mut dd = disk(path, format, bus, DiskDevice::Disk);
        dd.cache = Some(cache);
        d.disks.push(dd);
    }
    d.disks.push(disk("@D/c,d.iso", "raw", DiskBus::Virtio, DiskDevice::Cdrom));
    d.nics.push(nic(NicSource::Bridge { bridge: "br0".into() }, NicModel::Virtio, "52:54:00:00:00:07"));
    d.nics.push(nic(NicSource::User, NicModel::E1000, "52:54:00:00:00:08"));
    d
}

/// `def` with its data dir placeholder `@D` replaced by `data`.
fn fixed(def: &DomainDef, data: &str) -> DomainDef {
    let mut def = def.clone();
    let fix = |p: &mut PathBuf| *p = PathBuf::from(p.display().to_string().replace("@D", data));
    def.disks.iter_mut().for_each(|d| fix(&mut d.path));
    if let Firmware::Uefi { code, nvram } = &mut def.firmware {
        fix(code);
        fix(nvram);
    }
    if let Some(k) = def.kernel.as_mut() {
        fix(&mut k.kernel);
        if let Some(i) = k.initrd.as_mut() {
            fix(i);
        }
    }
    def
}

/// Render a case with the data dir given; qemu's sockets are fds `socks`, tap NICs get `fds`,
/// files are `files` (default: numbered from fd 10, as `install --dry-run` shows them).
fn render_case(
    def: &DomainDef,
    accel: Accel,
    data: &str,
    socks: (i32, i32),
    fds: &[Option<i32>],
    files: Option<&Handed>,
) -> Vec<String> {
    let def = fixed(def, data);
    let numbered = Handed::numbered(&def, 10, false);
    let files = files.unwrap_or(&numbered);
    let env = RenderEnv { accel, qmp_fd: socks.0, serial_fd: socks.1, tap_fds: fds, files, vnc_display: 0 };
    render(&def, &env).unwrap()
}

#[test]
fn qemu_argv_matches_goldens() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/domain");
    let regen = std::env::var("KVMCTL_REGEN_GOLDEN").as_deref() == Ok("1");
    for (name, def, accel) in cases() {
        let fds: Vec<_> = def.nics.iter().map(|n| if n.source == NicSource::User { None } else { Some(3) }).collect();
        let argv = render_case(&def, accel, "/var/lib/kvmctl/images", (4, 5), &fds, None);
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

/// The comma golden, read for what it must show (so a regenerated golden cannot lose it).
#[test]
fn comma_golden_doubles_every_comma_in_option_strings() {
    let (_, def, accel) = cases().into_iter().find(|(n, _, _)| n.starts_with("commas")).unwrap();
    let argv = render_case(&def, accel, "/img", (4, 5), &[Some(3), None], None);
    let after = |flag: &str| -> Vec<&str> { argv.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect() };
    assert_eq!(after("-name"), ["guest=com,,ma,debug-threads=on"]);
    // qemu's sockets arrive as fds: no path in -chardev at all.
    assert_eq!(
        after("-chardev"),
        ["socket,id=qmp,fd=4,server=on,wait=off", "socket,id=serial0,fd=5,server=on,wait=off"]
    );
    // Every file reaches qemu as an fd: its path is only the fd's label (opaque=, escaped).
    let add_fd = after("-add-fd");
    assert_eq!(add_fd[0], "fd=10,set=1,opaque=/img/OVMF,,CODE.fd");
    assert_eq!(add_fd[1..3], ["fd=11,set=2,opaque=/img/uefi,,VARS.fd", "fd=12,set=2,opaque=/img/uefi,,VARS.fd"]);
    assert_eq!(add_fd[3], "fd=13,set=3,opaque=/img/vd,,a.qcow2");
    assert_eq!(add_fd[add_fd.len() - 1], "fd=21,set=7,opaque=/img/c,,d.iso");
    let drives = after("-drive");
    assert_eq!(drives[0], "if=pflash,format=raw,readonly=on,file=/dev/fdset/1");
    assert_eq!(drives[1], "if=pflash,format=raw,file=/dev/fdset/2");
    assert_eq!(drives[2], "file=/dev/fdset/3,format=qcow2,if=none,id=drive0,cache=writeback");
    assert_eq!(drives[5], "file=/dev/fdset/6,format=raw,if=none,id=drive3,cache=directsync");
    assert_eq!(drives[6], "file=/dev/fdset/7,format=raw,if=none,id=drive4,readonly=on");
    assert_eq!(drives.len(), 7);
    assert_eq!(after("-kernel"), ["/proc/self/fd/22"]);
    assert_eq!(after("-initrd"), ["/proc/self/fd/23"]);
    let paths: Vec<&String> = argv.iter().filter(|a| a.contains("/img/")).collect();
    assert!(paths.iter().all(|a| a.starts_with("fd=")), "a path outside -add-fd: {paths:?}");
    assert_eq!(after("-sandbox"), [kvmctl::domain::argv::SANDBOX]);
    // qemu takes these arguments whole: no option syntax, nothing to escape.
    assert_eq!(after("-append"), ["console=ttyS0,115200 kvmctl.marker=a,b"]);
    assert_eq!(after("-machine"), ["pc-i440fx-7.2"]);
    assert_eq!(after("-cpu"), ["Opteron_G1"]);
}

/// What no escaping makes safe is refused by the renderer itself.
#[test]
fn renderer_refuses_relative_image_paths_and_an_initrd_with_a_comma() {
    let files = Handed::default();
    let env = RenderEnv { accel: Accel::Tcg, qmp_fd: 4, serial_fd: 5, tap_fds: &[], files: &files, vnc_display: 0 };
    let mut d = base("rel");
    d.disks.push(disk(
        r#"json:{"file":{"driver":"file","filename":"/etc/shadow"}}"#,
        "raw",
        DiskBus::Virtio,
        DiskDevice::Disk,
    ));
    let e = render(&d, &env).unwrap_err();
    assert!(matches!(&e, ArgvError::RelativePath { field, .. } if field == "disk 1"), "{e}");
    assert!(e.to_string().starts_with("disk 1 path \"json:{"), "{e}");
    let mut d = base("rel");
    d.firmware = Firmware::Uefi { code: "/usr/share/OVMF/OVMF_CODE.fd".into(), nvram: "nbd:localhost:10809".into() };
    let e = render(&d, &env).unwrap_err();
    assert_eq!(e, ArgvError::RelativePath { field: "firmware.nvram".into(), path: "nbd:localhost:10809".into() });
    let mut d = base("initrd");
    d.kernel = Some(KernelBoot { kernel: "/k".into(), initrd: Some("/i,/etc/shadow".into()), cmdline: String::new() });
    let e = render(&d, &env).unwrap_err().to_string();
    assert_eq!(
        e,
        "kernel.initrd path \"/i,/etc/shadow\" holds a ',' (qemu's multiboot loader splits -initrd at commas)"
    );
}

/// A definition file's typed fields: a value with a comma (or an `=`) is refused when the
/// file is read, naming the field and the value, so it never reaches the renderer.
#[test]
fn typed_fields_refuse_a_comma_when_read() {
    let good = "name = \"t\"\nmemory_mib = 64\nvcpus = 1\nmachine = \"pc\"\ncpu = \"max\"\n\
                [graphics]\ntype = \"vnc\"\nlisten = \"127.0.0.1\"\n\
                [[disks]]\npath = \"/d\"\nformat = \"raw\"\ncache = \"none\"\nbus = \"virtio\"\n\
                [[nics]]\ntype = \"user\"\nmodel = \"virtio\"\nmac = \"52:54:00:00:00:01\"\n";
    let d: DomainDef = toml::from_str(good).unwrap();
    assert_eq!((d.disks[0].format, d.disks[0].cache), (DiskFormat::Raw, Some(CacheMode::None)));
    // (field as written, with a comma, what the error must say)
    let cases = [
        (
            "format = \"raw\"",
            "format = \"raw,file=/etc/shadow\"",
            "unknown variant `raw,file=/etc/shadow`, expected `qcow2` or `raw`",
        ),
        (
            "cache = \"none\"",
            "cache = \"none,file=/etc/shadow\"",
            "cache \"none,file=/etc/shadow\" is not one of none, writeback",
        ),
        ("bus = \"virtio\"", "bus = \"virtio,x=y\"", "unknown variant `virtio,x=y`"),
        ("model = \"virtio\"", "model = \"virtio,x=y\"", "unknown variant `virtio,x=y`"),
        ("machine = \"pc\"", "machine = \"pc,accel=kvm\"", "machine \"pc,accel=kvm\" may hold only letters"),
        ("cpu = \"max\"", "cpu = \"max,+vmx\"", "cpu \"max,+vmx\" may hold only letters"),
        ("cpu = \"max\"", "cpu = \"max=1\"", "cpu \"max=1\" may hold only letters"),
        ("mac = \"52:54:00:00:00:01\"", "mac = \"52:54:00:00:00:01,x\"", "'52:54:00:00:00:01,x' is not a MAC address"),
        ("listen = \"127.0.0.1\"", "listen = \"127.0.0.1,to=99\"", "listen \"127.0.0.1,to=99\" is not an IP address"),
    ];
    for (from, to, want) in cases {
        let text = good.replace(from, to);
        assert_ne!(text, good, "{from}");
        let e = toml::from_str::<DomainDef>(&text).unwrap_err().to_string();
        assert!(e.contains(want), "{to}: {e}");
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
    for f in ["base.qcow2", "sata.qcow2", "vd,a.qcow2"] {
        common::sh("qemu-img", &["create", "-q", "-f", "qcow2", &format!("{data}/{f}"), "64M"]);
    }
    // vm.qcow2 is an overlay: its backing file is handed over as an fd too.
    common::sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", &format!("{data}/vm.qcow2")],
    );
    for f in ["scsi.raw", "ide,comma.raw", "cd.iso", "shared.raw", "sd,a.raw", "sd,b.raw", "hd,a.raw", "c,d.iso"] {
        std::fs::write(tmp.path().join(f), vec![0u8; 1 << 20]).unwrap();
    }
    // qemu loads -kernel at machine init (before -S takes effect): it must be a real kernel.
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out");
    if !common::require("the test guest (images/build.sh)", guest.join("vmlinuz").exists()) {
        return;
    }
    std::fs::copy(guest.join("vmlinuz"), tmp.path().join("vmlinuz")).unwrap();
    std::fs::copy(guest.join("vmlinuz"), tmp.path().join("vm,linuz")).unwrap();
    std::fs::copy(guest.join("initramfs.cpio.gz"), tmp.path().join("initrd")).unwrap();
    // A boot file only root may read reaches the qemu user as a sealed copy.
    std::fs::set_permissions(tmp.path().join("initrd"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if !common::require("OVMF (apt: ovmf)", Path::new("/usr/share/OVMF/OVMF_VARS.fd").exists()) {
        return;
    }
    std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", tmp.path().join("uefi_VARS.fd")).unwrap();
    std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", tmp.path().join("uefi,VARS.fd")).unwrap();
    std::fs::copy("/usr/share/OVMF/OVMF_CODE.fd", tmp.path().join("OVMF,CODE.fd")).unwrap();
    // The host's KVM is not a prerequisite: a KVM case runs with -accel kvm only where the
    // project's own probe says KVM is usable here.
    let verdict = kvmctl::domain::accel::probe(tmp.path());
    // qemu runs as kvmctl runs it: as the qemu user, with no new privileges, every file an fd.
    let creds = confine::qemu_creds().unwrap();
    let policy = kvmctl::storage::image::BackingPolicy::within([tmp.path().to_path_buf()]);
    for (name, def, accel) in cases() {
        // A comma in the runtime path too: qemu gets its sockets as fds, never as paths.
        let run = tmp.path().join(format!("run,{name}"));
        std::fs::create_dir(&run).unwrap();
        let taps: Vec<Option<OwnedFd>> =
            def.nics.iter().map(|n| (n.source != NicSource::User).then(tap_in_private_netns)).collect();
        let fds: Vec<Option<i32>> = taps.iter().map(|t| t.as_ref().map(|f| f.as_raw_fd())).collect();
        let (qmp, console) = (run.join("qmp.sock"), run.join("console.sock"));
        let socks = [UnixListener::bind(&qmp).unwrap(), UnixListener::bind(&console).unwrap()];
        let sock_fds = (socks[0].as_raw_fd(), socks[1].as_raw_fd());
        let opened = confine::open(&[&fixed(&def, data)], &policy, true).unwrap();
        let files = Some(&opened.handed[0]);
        let mut argv = render_case(&def, accel, data, sock_fds, &fds, files);
        if accel == Accel::Kvm && !verdict.kvm_usable {
            eprintln!("{name}: path: KVM unusable here ({verdict}): the argv runs with TCG swapped in");
            let tcg = render_case(&def, Accel::Tcg, data, sock_fds, &fds, files);
            assert_kvm_argv_differs_only_in_accel(&argv, &tcg);
            assert_qemu_knows("-accel", "kvm");
            assert_qemu_knows("-cpu", "host");
            argv = tcg;
        } else {
            eprintln!("{name}: path: started as rendered ({accel})");
        }
        let inherit: Vec<i32> =
            fds.iter().flatten().copied().chain(socks.iter().map(|s| s.as_raw_fd())).chain(opened.raw_fds()).collect();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(&argv).stderr(Stdio::piped());
        let creds = creds.clone();
        // SAFETY: only set*id, prctl and fcntl (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                confine::enter(creds.as_ref())?;
                inherit.iter().try_for_each(|fd| kvmctl::domain::tap::clear_cloexec_fd(*fd))
            });
        }
        let mut child = cmd.spawn().unwrap();
        // qemu holds the listeners now: if it exits, the connection below ends at once.
        drop(socks);
        qemu_accepts(name, &mut child, &qmp);
    }
}

/// qemu, started paused, must greet on QMP (it has parsed the whole argv and built the
/// machine) and still be running.
fn qemu_accepts(name: &str, child: &mut std::process::Child, qmp: &Path) {
    let greeting = qmp_greeting(qmp);
    if !greeting.starts_with("{\"QMP\"") || child.try_wait().unwrap().is_some() {
        let _ = child.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
        let _ = child.wait();
        panic!("{name}: qemu refused the argv ({greeting:?}): {err}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The KVM argv is the TCG one with only the accelerator and the default CPU model changed.
fn assert_kvm_argv_differs_only_in_accel(kvm: &[String], tcg: &[String]) {
    assert_eq!(kvm.len(), tcg.len(), "kvm:\n{kvm:?}\ntcg:\n{tcg:?}");
    let diffs: Vec<(&str, &str, &str)> = kvm
        .iter()
        .zip(tcg)
        .enumerate()
        .filter(|(_, (k, t))| k != t)
        .map(|(i, (k, t))| (kvm[i - 1].as_str(), k.as_str(), t.as_str()))
        .collect();
    assert_eq!(diffs, [("-accel", "kvm", "tcg"), ("-cpu", "host", "max")]);
}

/// `qemu-system-x86_64 OPTION help` lists `value`: this qemu accepts it without running it.
fn assert_qemu_knows(option: &str, value: &str) {
    let out = Command::new("qemu-system-x86_64").args([option, "help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.split_whitespace().any(|w| w == value)),
        "qemu's {option} help does not list {value}:\n{text}"
    );
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
