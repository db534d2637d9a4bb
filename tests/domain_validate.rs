//! Issue 10: option values that used to reach qemu's option strings (`--disk
//! format=raw,,file=/etc/shadow`, `--machine pc,accel=kvm`, ...) are refused, and `define`,
//! `edit` and `start` refuse what `install` refuses. Each refusal names the field and the value
//! and leaves nothing behind. Needs qemu-system-x86_64 (its machine and CPU lists); starts no VM
//! and creates no link.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{have_program, require, Kvm};

fn qemu() -> bool {
    require("qemu-system-x86_64", have_program("qemu-system-x86_64"))
}

/// `name` left nothing: no definition, no runtime dir, no volume in the default pool.
fn nothing_left(k: &Kvm, name: &str) {
    assert!(!k.root().join(format!("domains/{name}.toml")).exists(), "definition of {name} left");
    assert!(!k.root().join(format!("run/domains/{name}")).exists(), "runtime dir of {name} left");
    let vols: Vec<String> = std::fs::read_dir(k.images())
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(vols.is_empty(), "volumes left: {vols:?}");
}

#[test]
fn install_refuses_the_disk_format_injection_of_issue_10() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let decoy = k.dir.path().join("d.qcow2");
    std::fs::write(&decoy, b"decoy").unwrap();
    let disk = format!("path={},format=raw,,file=/etc/shadow", decoy.display());
    for dry_run in [false, true] {
        let mut a = vec!["install", "--name", "x", "--memory", "64", "--import", "--network", "none", "--disk", &disk];
        if dry_run {
            a.push("--dry-run");
        }
        let e = k.fails(2, &a);
        assert!(e.contains("--disk: format='raw,file=/etc/shadow' is not valid: one of raw, qcow2"), "{e}");
        nothing_left(&k, "x");
        assert_eq!(std::fs::read(&decoy).unwrap(), b"decoy");
        assert_eq!(k.ok(&["list", "--all", "--name"]), "");
    }
}

#[test]
fn install_refuses_every_option_value_that_would_reach_qemu_unchecked() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let kernel = k.dir.path().join("vmlinuz");
    let initrd = k.dir.path().join("init,rd");
    std::fs::write(&kernel, b"k").unwrap();
    std::fs::write(&initrd, b"i").unwrap();
    let boot = format!("kernel={},initrd={}", kernel.display(), initrd.display().to_string().replace(',', ",,"));
    let boot_initrd = format!("kernel.initrd path \"{}\" holds a ','", initrd.display());
    // (extra arguments, exit code, what the error says)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--disk", "size=1,cache=none,,file=/etc/shadow"],
            2,
            "--disk: cache='none,file=/etc/shadow' is not valid",
        ),
        (vec!["--disk", "size=1,bus=virtio,,x=y"], 2, "--disk: bus='virtio,x=y' is not valid"),
        (vec!["--disk", "size=1", "--machine", "pc,accel=kvm"], 2, "machine \"pc,accel=kvm\" may hold only letters"),
        (vec!["--disk", "size=1", "--cpu", "max,+vmx"], 2, "cpu \"max,+vmx\" may hold only letters"),
        (
            vec!["--disk", "size=1", "--machine", "no-such-machine"],
            1,
            "machine \"no-such-machine\" is not a machine type of qemu-system-x86_64",
        ),
        (
            vec!["--disk", "size=1", "--cpu", "no-such-cpu"],
            1,
            "cpu \"no-such-cpu\" is not a CPU model of qemu-system-x86_64",
        ),
        (
            vec!["--disk", "size=1", "--network", "user,mac=52:54:00:00:00:01,,model=e1000"],
            1,
            "'52:54:00:00:00:01,model=e1000' is not a MAC address",
        ),
        (
            vec!["--disk", "size=1", "--network", "user,mac=01:00:5e:00:00:01"],
            1,
            "nic 1: mac 01:00:5e:00:00:01 is multicast",
        ),
        (
            vec!["--disk", "size=1", "--network", "user,mac=ff:ff:ff:ff:ff:ff"],
            1,
            "nic 1: mac ff:ff:ff:ff:ff:ff is the broadcast address",
        ),
        (
            vec!["--disk", "size=1", "--network", "user,mac=00:00:00:00:00:00"],
            1,
            "nic 1: mac 00:00:00:00:00:00 is all zero",
        ),
        (
            vec!["--disk", "size=1", "--graphics", "vnc,listen=127.0.0.1,,to=99"],
            1,
            "listen='127.0.0.1,to=99' is not an IP address",
        ),
        // Every --graphics key is implemented or refused by name.
        (vec!["--disk", "size=1", "--graphics", "vnc,foo=bar"], 1, "unknown key 'foo'"),
        (vec!["--disk", "size=1", "--graphics", "vnc,port=80"], 1, "port=80 is not a VNC port"),
        (vec!["--disk", "size=1", "--graphics", "vnc,port=99999"], 1, "port=99999 is not a VNC port"),
        (vec!["--disk", "size=1", "--graphics", "vnc,password=123456789"], 1, "1 to 8 printable characters"),
        (vec!["--disk", "size=1", "--graphics", "vnc,password"], 1, "'password' needs a value"),
        (vec!["--disk", "size=1", "--graphics", "spice"], 1, "use none or vnc"),
        (vec!["--disk", "size=1", "--graphics", "none,port=5900"], 1, "use none or vnc"),
    ];
    for (extra, code, want) in cases {
        let mut a = vec!["install", "--name", "x", "--memory", "64", "--import"];
        a.extend(extra.iter().copied());
        if !a.contains(&"--network") {
            a.extend(["--network", "none"]);
        }
        let e = k.fails(code, &a);
        assert!(e.contains(want), "{extra:?}: {e}");
        nothing_left(&k, "x");
    }
    let e = k.fails(1, &["install", "--name", "x", "--memory", "64", "--network", "none", "--boot", &boot]);
    assert!(e.contains(&boot_initrd), "{e}");
    nothing_left(&k, "x");
}

/// A definition file: `name`, 64 MiB, 1 vCPU, and `body`.
fn def_file(k: &Kvm, name: &str, body: &str) -> PathBuf {
    let f = k.dir.path().join(format!("{name}.toml"));
    std::fs::write(&f, format!("name = \"{name}\"\nmemory_mib = 64\nvcpus = 1\n{body}")).unwrap();
    f
}

fn define(k: &Kvm, name: &str, body: &str) -> std::process::Output {
    k.run(&["define", def_file(k, name, body).to_str().unwrap()])
}

fn disk_toml(path: &Path, extra: &str) -> String {
    format!("[[disks]]\npath = \"{}\"\nformat = \"qcow2\"\n{extra}", path.display())
}

const NIC_A: &str = "[[nics]]\ntype = \"user\"\nmac = \"52:54:00:00:00:01\"\n";

#[test]
fn define_refuses_what_install_refuses() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let a_disk = k.dir.path().join("a.qcow2");
    std::fs::write(&a_disk, b"").unwrap();
    let a_uuid = "3e3fce45-4f53-4fa7-bb32-11f34168b82b";
    let o = define(&k, "a", &format!("uuid = \"{a_uuid}\"\n{}{NIC_A}", disk_toml(&a_disk, "")));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nic = |mac: &str| format!("[[nics]]\ntype = \"user\"\nmac = \"{mac}\"\n");
    let own_disk = disk_toml(&k.dir.path().join("b.qcow2"), "");
    let cases: Vec<(String, String)> = vec![
        (
            own_disk.replace("\"qcow2\"", "\"raw,file=/etc/shadow\""),
            "unknown variant `raw,file=/etc/shadow`, expected `qcow2` or `raw`".into(),
        ),
        (
            format!("{own_disk}cache = \"none,file=/etc/shadow\"\n"),
            "cache \"none,file=/etc/shadow\" is not one of".into(),
        ),
        ("machine = \"pc,accel=kvm\"\n".into(), "machine \"pc,accel=kvm\" may hold only letters".into()),
        ("cpu = \"max,+vmx\"\n".into(), "cpu \"max,+vmx\" may hold only letters".into()),
        ("machine = \"no-such\"\n".into(), "domain 'b': machine \"no-such\" is not a machine type".into()),
        ("cpu = \"no-such\"\n".into(), "domain 'b': cpu \"no-such\" is not a CPU model".into()),
        (nic("01:00:5e:00:00:01"), "domain 'b': nic 1: mac 01:00:5e:00:00:01 is multicast".into()),
        (nic("ff:ff:ff:ff:ff:ff"), "domain 'b': nic 1: mac ff:ff:ff:ff:ff:ff is the broadcast address".into()),
        (nic("00:00:00:00:00:00"), "domain 'b': nic 1: mac 00:00:00:00:00:00 is all zero".into()),
        (nic("52:54:00:00:00:0g"), "'52:54:00:00:00:0g' is not a MAC address".into()),
        (nic("52:54:00:00:00:01"), "domain 'b': nic 1: mac 52:54:00:00:00:01 is already used by domain 'a'".into()),
        (format!("uuid = \"{a_uuid}\"\n"), format!("domain 'b': uuid {a_uuid} is already used by domain 'a'")),
        (
            "[graphics]\ntype = \"vnc\"\nlisten = \"127.0.0.1,to=99\"\n".into(),
            "listen \"127.0.0.1,to=99\" is not an IP address".into(),
        ),
        (
            "boot_order = [\"floppy\"]\n".into(),
            "domain 'b': boot_order \"floppy\" is not one of hd, cdrom, network".into(),
        ),
        (
            disk_toml(&a_disk, ""),
            format!(
                "domain 'b': disk 1: {} is already used by domain 'a' (make it shareable or readonly",
                a_disk.display()
            ),
        ),
        (
            "[[disks]]\npath = 'json:{\"file\":{\"filename\":\"/etc/shadow\"}}'\nformat = \"raw\"\n".into(),
            "domain 'b': disk 1 path \"json:{".into(),
        ),
        (
            "[kernel]\nkernel = \"/k\"\ninitrd = \"/i,/etc/shadow\"\n".into(),
            "domain 'b': kernel.initrd path \"/i,/etc/shadow\" holds a ','".into(),
        ),
    ];
    for (body, want) in &cases {
        let o = define(&k, "b", body);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{body}: {e}");
        assert!(e.contains(want.as_str()), "{body}: {e}");
        assert_eq!(k.ok(&["list", "--all", "--name"]), "a\n", "{body}");
    }
    // memory and vcpus replace the lines def_file writes.
    let mut limits = vec![
        ("memory_mib = 64", "memory_mib = 0", "domain 'b': memory 0 MiB: must be between 1 and the host's"),
        ("vcpus = 1", "vcpus = 4096", "domain 'b': vcpus 4096: must be between 1 and the host's"),
    ];
    // qemu's own limit: isapc has one CPU (reached only where the host has two).
    if std::thread::available_parallelism().unwrap().get() >= 2 {
        limits.push((
            "vcpus = 1",
            "vcpus = 2\nmachine = \"isapc\"",
            "domain 'b': vcpus 2: machine type 'isapc' takes at most 1",
        ));
    }
    for (from, to, want) in limits {
        let f = def_file(&k, "b", "");
        let text = std::fs::read_to_string(&f).unwrap().replace(from, to);
        std::fs::write(&f, text).unwrap();
        let e = k.fails(1, &["define", f.to_str().unwrap()]);
        assert!(e.contains(want), "{e}");
    }
    assert_eq!(k.ok(&["list", "--all", "--name"]), "a\n");
    // Shared on purpose is allowed, as install allows it.
    assert!(define(&k, "b", &disk_toml(&a_disk, "shareable = true\n")).status.success());
    assert_eq!(k.ok(&["list", "--all", "--name"]), "a\nb\n");
}

#[test]
fn define_without_uuid_generates_one_and_redefine_keeps_it() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let uuid_of = |name: &str| -> String {
        let v = k.json(&["dominfo", name]);
        v["definition"]["uuid"].as_str().unwrap().to_string()
    };
    assert!(define(&k, "u", "").status.success());
    let u = uuid_of("u");
    let parsed = uuid::Uuid::parse_str(&u).unwrap();
    assert!(!parsed.is_nil());
    let saved = std::fs::read_to_string(k.root().join("domains/u.toml")).unwrap();
    assert!(saved.contains(&format!("uuid = \"{u}\"")), "{saved}");
    assert!(define(&k, "u", "autostart = true\n").status.success());
    assert_eq!(uuid_of("u"), u, "redefining without uuid keeps the VM's UUID");
    assert!(define(&k, "u2", "").status.success());
    assert_ne!(uuid_of("u2"), u);
}

/// A definition saved by kvmctl, then edited by hand in the store: start refuses it, naming
/// the field, and starts nothing.
#[test]
fn start_refuses_a_hand_edited_definition_naming_the_field() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let disk = k.dir.path().join("s.qcow2");
    std::fs::write(&disk, b"").unwrap();
    assert!(define(&k, "s", &format!("{}{NIC_A}", disk_toml(&disk, ""))).status.success());
    let stored = k.root().join("domains/s.toml");
    let good = std::fs::read_to_string(&stored).unwrap();
    let cases = [
        ("format = \"qcow2\"", "format = \"raw,file=/etc/shadow\"", "unknown variant `raw,file=/etc/shadow`"),
        ("machine = \"pc\"", "machine = \"pc,accel=kvm\"", "machine \"pc,accel=kvm\" may hold only letters"),
        ("memory_mib = 64", "memory_mib = 0", "domain 's': memory 0 MiB: must be between 1"),
        (
            "mac = \"52:54:00:00:00:01\"",
            "mac = \"01:00:5e:00:00:01\"",
            "domain 's': nic 1: mac 01:00:5e:00:00:01 is multicast",
        ),
        ("name = \"s\"", "name = \"other\"", "domain 's': its definition file names domain 'other'"),
    ];
    for (from, to, want) in cases {
        let text = good.replace(from, to);
        assert_ne!(text, good, "{from}");
        std::fs::write(&stored, text).unwrap();
        let e = k.fails(1, &["start", "s"]);
        assert!(e.contains(want), "{to}: {e}");
        assert!(!k.root().join("run/domains/s").exists(), "{to}: start left a runtime dir");
        assert!(!k.root().join("run/domains/other").exists(), "{to}");
    }
}

/// `edit` refuses an invalid change and keeps the definition as it was.
#[test]
fn edit_refuses_what_define_refuses() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let disk = k.dir.path().join("e.qcow2");
    std::fs::write(&disk, b"").unwrap();
    assert!(define(&k, "e", &disk_toml(&disk, "")).status.success());
    let stored = std::fs::read_to_string(k.root().join("domains/e.toml")).unwrap();
    let edit = |sed: &str| {
        let editor = k.dir.path().join("ed.sh");
        std::fs::write(&editor, format!("#!/bin/sh\nsed -i '{sed}' \"$1\"\n")).unwrap();
        common::sh("chmod", &["755", editor.to_str().unwrap()]);
        let mut c = Command::new(env!("CARGO_BIN_EXE_kvmctl"));
        c.arg("--root").arg(k.root()).args(["edit", "e"]).env("EDITOR", &editor).env_remove("VISUAL");
        common::bounded_output(&mut c)
    };
    for (sed, want) in [
        ("s/^memory_mib = 64/memory_mib = 0/", "domain 'e' unchanged: domain 'e': memory 0 MiB"),
        ("s/^format = \"qcow2\"/format = \"qcow2,file=\\/etc\\/shadow\"/", "invalid definition, domain 'e' unchanged"),
        ("s/^machine = \"pc\"/machine = \"pc,accel=kvm\"/", "machine \"pc,accel=kvm\" may hold only letters"),
    ] {
        let o = edit(sed);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{sed}: {e}");
        assert!(e.contains(want), "{sed}: {e}");
        assert_eq!(std::fs::read_to_string(k.root().join("domains/e.toml")).unwrap(), stored);
    }
    assert!(edit("s/^memory_mib = 64/memory_mib = 96/").status.success());
}

/// qemu's machine and CPU lists are asked once per qemu binary: a second install does not run
/// qemu; a changed binary is asked again.
#[test]
fn qemu_lists_are_cached_per_binary() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let bin = k.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = k.dir.path().join("qemu.log");
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .unwrap();
    let wrapper = bin.join("qemu-system-x86_64");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n", log.display(), real.display()),
    )
    .unwrap();
    common::sh("chmod", &["755", wrapper.to_str().unwrap()]);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let install = |name: &str| {
        let mut c = k.cmd();
        c.env("PATH", &path).args(["install", "--name", name, "--memory", "64", "--disk", "size=1", "--import"]);
        c.args(["--network", "none", "--machine", "q35", "--cpu", "qemu64", "--dry-run"]);
        let o = common::bounded_output(&mut c);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let runs = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
    install("c1");
    assert_eq!(runs(), 1, "the first install asks qemu");
    install("c2");
    assert_eq!(runs(), 1, "the second one reads the cache");
    std::fs::write(&wrapper, std::fs::read_to_string(&wrapper).unwrap() + "# upgraded\n").unwrap();
    install("c3");
    assert_eq!(runs(), 2, "a changed binary is asked again");
}

/// A libvirt domain document: `name`, 64 MiB (unless `top` gives `<memory>`), `top` elements
/// and `devices`.
fn dom_xml(name: &str, top: &str, devices: &str) -> String {
    let memory = if top.contains("<memory") { "" } else { "<memory unit='MiB'>64</memory>" };
    format!("<domain type='kvm'>\n  <name>{name}</name>\n  {memory}{top}\n  <devices>{devices}</devices>\n</domain>\n")
}

fn define_xml(k: &Kvm, name: &str, top: &str, devices: &str) -> std::process::Output {
    let f = k.dir.path().join(format!("{name}.xml"));
    std::fs::write(&f, dom_xml(name, top, devices)).unwrap();
    k.run(&["define", f.to_str().unwrap()])
}

fn disk_xml(path: &Path, extra: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>{extra}</disk>",
        path.display()
    )
}

fn nic_xml(mac: &str) -> String {
    format!("<interface type='user'><mac address='{mac}'/></interface>")
}

/// `define FILE.xml` (libvirt domain XML, as `virsh define` takes it) refuses what `install`
/// and a TOML `define` refuse, with the same words, and saves nothing.
#[test]
fn define_from_libvirt_xml_refuses_what_install_refuses() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let a_disk = k.dir.path().join("a.qcow2");
    std::fs::write(&a_disk, b"").unwrap();
    let a_uuid = "3e3fce45-4f53-4fa7-bb32-11f34168b82b";
    let o = define_xml(
        &k,
        "a",
        &format!("<uuid>{a_uuid}</uuid>"),
        &(disk_xml(&a_disk, "") + &nic_xml("52:54:00:00:00:01")),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let locks_before = common::tree(&k.root().join("locks"));
    let own_disk = k.dir.path().join("b.qcow2");
    let hosts = std::thread::available_parallelism().unwrap().get();
    // (top-level elements, devices, what the error says)
    let mut cases: Vec<(String, String, String)> = vec![
        ("".into(), nic_xml("01:00:5e:00:00:01"), "domain 'b': nic 1: mac 01:00:5e:00:00:01 is multicast".into()),
        (
            "".into(),
            nic_xml("ff:ff:ff:ff:ff:ff"),
            "domain 'b': nic 1: mac ff:ff:ff:ff:ff:ff is the broadcast address".into(),
        ),
        ("".into(), nic_xml("00:00:00:00:00:00"), "domain 'b': nic 1: mac 00:00:00:00:00:00 is all zero".into()),
        ("".into(), nic_xml("52:54:00:00:00:0g"), "<mac>: '52:54:00:00:00:0g' is not a MAC address".into()),
        (
            "".into(),
            nic_xml("52:54:00:00:00:01,model=e1000"),
            "'52:54:00:00:00:01,model=e1000' is not a MAC address".into(),
        ),
        (
            "".into(),
            nic_xml("52:54:00:00:00:01"),
            "domain 'b': nic 1: mac 52:54:00:00:00:01 is already used by domain 'a'".into(),
        ),
        ("<memory>0</memory>".into(), "".into(), "domain 'b': memory 0 MiB: must be between 1 and the host's".into()),
        (
            "<memory unit='TiB'>4096</memory>".into(),
            "".into(),
            "domain 'b': memory 4294967296 MiB: must be between 1 and the host's".into(),
        ),
        ("<vcpu>0</vcpu>".into(), "".into(), format!("domain 'b': vcpus 0: must be between 1 and the host's {hosts}")),
        (
            "<vcpu>4096</vcpu>".into(),
            "".into(),
            format!("domain 'b': vcpus 4096: must be between 1 and the host's {hosts}"),
        ),
        (
            format!("<uuid>{a_uuid}</uuid>"),
            "".into(),
            format!("domain 'b': uuid {a_uuid} is already used by domain 'a'"),
        ),
        (
            "<os><type machine='pc,accel=kvm'>hvm</type></os>".into(),
            "".into(),
            "machine \"pc,accel=kvm\" may hold only letters".into(),
        ),
        (
            "<os><type machine='no-such'>hvm</type></os>".into(),
            "".into(),
            "domain 'b': machine \"no-such\" is not a machine type".into(),
        ),
        (
            "<cpu mode='custom'><model>max,+vmx</model></cpu>".into(),
            "".into(),
            "cpu \"max,+vmx\" may hold only letters".into(),
        ),
        (
            "<cpu mode='custom'><model>no-such</model></cpu>".into(),
            "".into(),
            "domain 'b': cpu \"no-such\" is not a CPU model".into(),
        ),
        (
            "".into(),
            disk_xml(&own_disk, "").replace("type='qcow2'", "type='raw,file=/etc/shadow'"),
            "<driver type>: 'raw,file=/etc/shadow' is not a disk format of kvmctl (raw, qcow2)".into(),
        ),
        (
            "".into(),
            disk_xml(&own_disk, "").replace("type='qcow2'", "type='qcow2' cache='none,file=/etc/shadow'"),
            "cache \"none,file=/etc/shadow\" is not one of".into(),
        ),
        (
            "".into(),
            disk_xml(&a_disk, ""),
            format!(
                "domain 'b': disk 1: {} is already used by domain 'a' (make it shareable or readonly",
                a_disk.display()
            ),
        ),
        (
            "".into(),
            "<graphics type='vnc' listen='127.0.0.1,to=99'/>".into(),
            "<graphics listen>: '127.0.0.1,to=99' is not an IP address".into(),
        ),
        (
            "<os><type>hvm</type><boot dev='floppy'/></os>".into(),
            "".into(),
            "domain 'b': boot_order \"floppy\" is not one of hd, cdrom, network".into(),
        ),
        ("".into(), "<hostdev mode='subsystem'/>".into(), "<devices>: unknown element <hostdev> (line 4)".into()),
    ];
    // qemu's own limit: isapc has one CPU (reached only where the host has two).
    if hosts >= 2 {
        cases.push((
            "<vcpu>2</vcpu><os><type machine='isapc'>hvm</type></os>".into(),
            "".into(),
            "domain 'b': vcpus 2: machine type 'isapc' takes at most 1".into(),
        ));
    }
    for (top, devices, want) in &cases {
        let o = define_xml(&k, "b", top, devices);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{top}{devices}: {e}");
        assert!(e.contains(want.as_str()), "{top}{devices}: {e}");
        assert_eq!(k.ok(&["list", "--all", "--name"]), "a\n", "{top}{devices}");
        assert_eq!(common::tree(&k.root().join("locks")), locks_before, "{top}{devices}: a lock file left");
    }
    // Shared on purpose is allowed, as install allows it.
    assert!(define_xml(&k, "b", "", &disk_xml(&a_disk, "<shareable/>")).status.success());
    assert_eq!(k.ok(&["list", "--all", "--name"]), "a\nb\n");
}

/// `define` of libvirt XML without `<uuid>` (or `<mac>`) generates them, as virsh does; a
/// redefine keeps the UUID, and `dumpxml | define` changes nothing.
#[test]
fn define_from_xml_generates_uuid_and_mac_and_dumpxml_define_changes_nothing() {
    if !qemu() {
        return;
    }
    let k = Kvm::new();
    let disk = k.dir.path().join("x.qcow2");
    std::fs::write(&disk, b"").unwrap();
    let devices = disk_xml(&disk, "<target dev='vda' bus='sata'/>") + "<interface type='user'/>";
    let o = define_xml(&k, "x", "<vcpu placement='static'>1</vcpu><features><acpi/></features>", &devices);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let def = || k.json(&["dominfo", "x"])["definition"].clone();
    let first = def();
    let uuid = uuid::Uuid::parse_str(first["uuid"].as_str().unwrap()).unwrap();
    assert!(!uuid.is_nil());
    let mac = first["nics"][0]["mac"].as_str().unwrap().to_string();
    assert!(mac.starts_with("52:54:00:"), "{mac}");
    assert_eq!(first["disks"][0]["bus"], "sata");
    k.ok(&["autostart", "x"]);
    let dumped = k.ok(&["dumpxml", "x"]);
    let f = k.dir.path().join("dumped.xml");
    std::fs::write(&f, &dumped).unwrap();
    let before = std::fs::read_to_string(k.root().join("domains/x.toml")).unwrap();
    k.ok(&["define", f.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(k.root().join("domains/x.toml")).unwrap(),
        before,
        "dumpxml | define changes nothing"
    );
    // Without <uuid> and <mac> again: the VM keeps its UUID (a new MAC is generated).
    let o = define_xml(&k, "x", "", &devices);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(def()["uuid"], first["uuid"]);
    assert_eq!(def()["autostart"], true, "XML does not carry autostart: a redefine keeps it");
    let o = define_xml(&k, "y", "", "");
    assert!(o.status.success());
    assert_ne!(k.json(&["dominfo", "y"])["definition"]["uuid"], first["uuid"]);
}

/// A writable disk another VM uses is refused by install and define (TOML and XML), naming the
/// VM, however the path is spelled (a symlink, `..`, `vol=`); also when that VM's definition
/// cannot be read by this version.
#[test]
fn a_writable_disk_another_vm_uses_is_refused_naming_it() {
    if !qemu() || !require("qemu-img", have_program("qemu-img")) {
        return;
    }
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "a.qcow2", "16M", "--format", "qcow2"]);
    let a_disk = k.images().join("a.qcow2");
    assert!(define(&k, "a", &disk_toml(&a_disk, "")).status.success());
    let link = k.dir.path().join("link.qcow2");
    std::os::unix::fs::symlink(&a_disk, &link).unwrap();
    let dotted = k.root().join("images/../images/a.qcow2");
    let used = |path: &Path| {
        format!("disk 1: {} is already used by domain 'a' (make it shareable or readonly", path.display())
    };
    let install = |name: &str, disk: &str| {
        k.fails(1, &["install", "--name", name, "--memory", "64", "--import", "--network", "none", "--disk", disk])
    };
    let e = install("b", &format!("path={},format=qcow2", link.display()));
    assert!(e.contains(&format!("domain 'b': {}", used(&link))), "{e}");
    let e = install("b", "vol=default/a.qcow2,format=qcow2");
    assert!(e.contains(&format!("domain 'b': {}", used(&a_disk))), "{e}");
    for path in [&a_disk, &link, &dotted] {
        let o = define(&k, "b", &disk_toml(path, ""));
        assert!(String::from_utf8_lossy(&o.stderr).contains(&used(path)), "{}", String::from_utf8_lossy(&o.stderr));
        let o = define_xml(&k, "b", "", &disk_xml(path, ""));
        assert!(String::from_utf8_lossy(&o.stderr).contains(&used(path)), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // An existing VM redefined to take a's disk is refused too; its own disk stays its own.
    let b_disk = k.dir.path().join("b.qcow2");
    std::fs::write(&b_disk, b"").unwrap();
    assert!(define(&k, "b", &disk_toml(&b_disk, "")).status.success());
    let both = disk_toml(&b_disk, "") + &disk_toml(&a_disk, "");
    let e = String::from_utf8_lossy(&define(&k, "b", &both).stderr).into_owned();
    assert!(e.contains(&format!("disk 2: {} is already used by domain 'a'", a_disk.display())), "{e}");
    assert!(define(&k, "b", &disk_toml(&b_disk, "readonly = true\n")).status.success());
    // A definition this version cannot load still holds its disk.
    let c_disk = k.dir.path().join("c.qcow2");
    std::fs::write(
        k.root().join("domains/c.toml"),
        format!("name = \"c\"\nmemory_mib = \"lots\"\n{}", disk_toml(&c_disk, "")),
    )
    .unwrap();
    let e = String::from_utf8_lossy(&define(&k, "d", &disk_toml(&c_disk, "")).stderr).into_owned();
    assert!(e.contains(&format!("disk 1: {} is already used by domain 'c'", c_disk.display())), "{e}");
    std::fs::remove_file(k.root().join("domains/c.toml")).unwrap();
    assert_eq!(k.ok(&["list", "--all", "--name"]), "a\nb\n");
}
