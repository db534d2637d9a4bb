//! clone (virt-clone) and console, driven as a person would: through a real pty.
//! VMs run inside namespaces the tests create; needs root, qemu and the test guest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::netns::can_netns;
use common::pty::Pty;
use common::vmhost::VmHost;
use common::*;

fn guest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out")
}

fn prereqs() -> bool {
    require(
        "root, qemu-system-x86_64, dnsmasq, nft, qemu-io and the test guest (images/build.sh)",
        can_netns()
            && ["qemu-system-x86_64", "dnsmasq", "nft", "qemu-io"].iter().all(|p| have_program(p))
            && guest().join("tiny.qcow2").exists(),
    )
}

type Host = VmHost;

/// A host with the tiny guest's disk imported into its default pool.
fn host() -> Host {
    let h = VmHost::new("k");
    h.ok(&["-q", "vol-import", guest().join("tiny.qcow2").to_str().unwrap(), "--pool", "default"]);
    h
}

impl Host {
    fn wait_ready(&self, vm: &str, n: usize) -> String {
        self.wait_console(vm, "KVMCTL-GUEST-READY", n, 300)
    }
    /// A VM from a linked clone of the tiny disk.
    fn vm(&self, name: &str, net: &str) {
        let disk = format!("{name}.qcow2");
        self.ok(&["-q", "vol-clone", "tiny.qcow2", &disk, "--pool", "default", "--linked"]);
        let vol = format!("vol=default/{disk}");
        self.ok(&[
            "-q",
            "install",
            "--name",
            name,
            "--memory",
            "256",
            "--disk",
            &vol,
            "--network",
            net,
            "--import",
            "--noautoconsole",
        ]);
    }
    /// `kvmctl console ...` under a pty (the console needs no namespace: it talks to a socket).
    fn console_pty(&self, args: &[&str]) -> Pty {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kvmctl"));
        c.arg("--root").arg(self.k.root()).arg("console").args(args);
        Pty::spawn(c)
    }
    fn supervisor_fds(&self, vm: &str) -> usize {
        let st: serde_json::Value = serde_json::from_str(&self.ok(&["--json", "dominfo", vm])).unwrap();
        let pid = st["runtime"]["supervisor_pid"].as_i64().unwrap();
        std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
    }
}

#[test]
fn console_types_detaches_refuses_second_writer_and_force_takes_over() {
    if !prereqs() {
        return;
    }
    let h = host();
    h.vm("c1", "none");
    h.wait_ready("c1", 1);
    let mut a = h.console_pty(&["c1"]);
    a.expect("Escape character is ^]", 60);
    // The last screenful is replayed on attach: the guest's prompt is already there.
    a.expect("kvmctl-guest:~#", 60);
    let token = format!("hello-{}", std::process::id());
    a.send(format!("echo {token}\r").as_bytes());
    a.expect_n(&token, 2, 60); // typed, then printed by the guest
                               // A second writer is refused; a read-only viewer sees output but cannot type.
    let o = Command::new(env!("CARGO_BIN_EXE_kvmctl")).arg("--root").arg(h.k.root()).args(["console", "c1"]).bounded();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use by another session"));
    let mut v = h.console_pty(&["c1", "--readonly"]);
    v.expect("(read-only)", 60);
    a.send(b"echo seen-by-viewer\r");
    v.expect_n("seen-by-viewer", 2, 60);
    v.send(b"echo typed-by-viewer\r");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!h.console("c1").contains("typed-by-viewer"), "a viewer's keys reach nobody");
    // --force takes over; the first session is told and detached.
    let mut b = h.console_pty(&["c1", "--force"]);
    b.expect("Escape character", 60);
    a.expect("another session took over this console", 60);
    a.wait_exit(60);
    b.send(b"echo after-takeover\r");
    b.expect_n("after-takeover", 2, 60);
    // Ctrl+] detaches at once and gives the terminal back.
    b.send(&[0x1d]);
    b.wait_exit(60);
    v.send(&[0x1d]);
    v.wait_exit(60);
    h.ok(&["destroy", "c1"]);
}

#[test]
fn console_log_keeps_the_boot_and_pipes_work_for_scripts() {
    if !prereqs() {
        return;
    }
    let h = host();
    h.vm("l1", "none");
    h.wait_ready("l1", 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmctl"))
        .arg("--root")
        .arg(h.k.root())
        .args(["console", "l1", "--timeout", "10"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"echo $((6*7))-piped\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("42-piped"), "{}", String::from_utf8_lossy(&out.stdout));
    h.ok(&["destroy", "l1"]);
    // The log of a stopped VM: from the first byte of its boot.
    let log = h.ok(&["console", "l1", "--log"]);
    assert!(log.contains("SYSLINUX") && log.contains("KVMCTL-GUEST-READY") && log.contains("42-piped"), "{log}");
    let tail = h.ok(&["console", "l1", "--log", "--tail", "2"]);
    assert!(tail.lines().count() <= 2 && !tail.contains("SYSLINUX"), "{tail}");
    assert!(h.fails(1, &["console", "l1"]).contains("is not running"));
    // `console --log | head`: a reader that went away ends it quietly, exit 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmctl"))
        .arg("--root")
        .arg(h.k.root())
        .args(["console", "l1", "--log"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // closed before kvmctl writes a byte
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no broken-pipe error");
}

#[test]
fn hundred_attach_detach_cycles_leak_no_fd_in_the_supervisor() {
    if !prereqs() {
        return;
    }
    let h = host();
    h.vm("f1", "none");
    h.wait_ready("f1", 1);
    let before = h.supervisor_fds("f1");
    for _ in 0..100 {
        let o = Command::new(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--root")
            .arg(h.k.root())
            .args(["console", "f1", "--timeout", "0"])
            .stdin(std::process::Stdio::null())
            .bounded();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.supervisor_fds("f1"), before, "fds of the supervisor after 100 sessions");
    h.ok(&["destroy", "f1"]);
}

#[test]
fn clones_full_and_linked_boot_side_by_side_with_their_own_identity() {
    if !prereqs() {
        return;
    }
    let h = host();
    h.vm("src", "network=default");
    h.wait_ready("src", 1);
    assert!(h.fails(1, &["clone", "src", "bad"]).contains("is running: shut it off"));
    h.ok(&["destroy", "src"]);
    h.ok(&["clone", "src", "full1"]);
    h.ok(&["clone", "--original", "src", "--name", "lnk1", "--linked"]);
    let img = h.k.images();
    assert!(qemu_img_info(&img.join("full1.qcow2"))["backing-filename"].is_null(), "a full clone stands alone");
    assert_eq!(qemu_img_info(&img.join("lnk1.qcow2"))["backing-filename"], img.join("src.qcow2").to_str().unwrap());
    // The source is protected while a linked clone exists.
    // (undefine --remove-all-storage keeping such a disk: storage_cli's overlay test.)
    let lnk = format!("overlay {} (disk of domain 'lnk1')", img.join("lnk1.qcow2").display());
    let e = h.fails(1, &["start", "src"]);
    assert!(e.contains(&lnk) && e.contains("refusing to start"), "{e}");
    let e = h.fails(1, &["vol-delete", "src.qcow2", "--pool", "default", "--force"]);
    assert!(e.contains(&lnk) && e.contains("refusing to delete"), "{e}");
    // Clones run together on one network: own MACs, own leases.
    h.ok(&["start", "full1"]);
    h.ok(&["start", "lnk1"]);
    let (l1, l2) = (h.wait_ready("full1", 1), h.wait_ready("lnk1", 1));
    let addr = |log: &str| log.lines().find(|l| l.starts_with("KVMCTL-GUEST-READY")).unwrap().to_string();
    assert_ne!(addr(&l1), addr(&l2));
    let macs: Vec<String> = ["src", "full1", "lnk1"]
        .iter()
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(&h.ok(&["--json", "domiflist", v])).unwrap()[0]["mac"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(macs[0] != macs[1] && macs[1] != macs[2] && macs[0] != macs[2], "{macs:?}");
    let leases = h.ok(&["net-dhcp-leases", "default"]);
    assert!(leases.contains(&macs[1]) && leases.contains(&macs[2]), "{leases}");
    h.ok(&["destroy", "full1"]);
    h.ok(&["destroy", "lnk1"]);
    // A write in the clone leaves the source as it was.
    let src_disk = img.join("src.qcow2");
    let before = sh(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            src_disk.to_str().unwrap(),
            img.join("tiny.qcow2").to_str().unwrap(),
        ],
    );
    qemu_write(&img.join("lnk1.qcow2"), "qcow2", 0x5a, 0, 65536);
    qemu_write(&img.join("full1.qcow2"), "qcow2", 0x5a, 0, 65536);
    assert_eq!(
        sh(
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                src_disk.to_str().unwrap(),
                img.join("tiny.qcow2").to_str().unwrap()
            ]
        ),
        before
    );
    h.ok(&["undefine", "lnk1", "--remove-all-storage"]);
    h.ok(&["start", "src"]);
    h.ok(&["destroy", "src"]);
}

#[test]
fn failed_clone_leaves_no_file_and_no_definition() {
    if !prereqs() {
        return;
    }
    let h = host();
    h.ok(&["-q", "vol-clone", "tiny.qcow2", "two-a.qcow2", "--pool", "default"]);
    h.ok(&["-q", "vol-create-as", "default", "two-b.qcow2", "64M", "--format", "qcow2"]);
    h.ok(&[
        "-q",
        "install",
        "--name",
        "two",
        "--memory",
        "128",
        "--disk",
        "vol=default/two-a.qcow2",
        "--disk",
        "vol=default/two-b.qcow2",
        "--network",
        "none",
        "--import",
    ]);
    h.ok(&["destroy", "two"]);
    // The second disk's destination cannot be written: the first disk's copy must go too.
    let good = h.k.dir.path().join("ok.qcow2");
    let e =
        h.fails(1, &["clone", "two", "two-c", "--file", good.to_str().unwrap(), "--file", "/nonexistent-dir/x.qcow2"]);
    assert!(e.contains("/nonexistent-dir/x.qcow2"), "{e}");
    assert!(!good.exists());
    assert_eq!(
        std::fs::read_dir(h.k.dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".ok"))
            .count(),
        0
    );
    assert_eq!(h.ok(&["list", "--all", "--name"]), "two\n");
    // A full disk mid-copy, in a private mount namespace: nothing left either. (virt-clone's
    // disk_size check refuses this before copying; --check disk_size=off lets the copy start.)
    let small = h.k.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let big = h.k.images().join("two-b.qcow2");
    qemu_write(&big, "qcow2", 0x33, 0, 16 << 20);
    let bin = env!("CARGO_BIN_EXE_kvmctl");
    let script = format!(
        "mount -t tmpfs -o size=4m none {s} && ip netns exec {ns} {bin} --root {r} clone two two-d --file {s}/a.qcow2 --file {s}/b.qcow2 --check disk_size=off; rc=$?; ls -A {s}; exit $rc",
        s = small.display(),
        ns = h.ns.name,
        r = h.k.root().display()
    );
    let o = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).bounded();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No space left"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "", "no partial disk");
    assert_eq!(h.ok(&["list", "--all", "--name"]), "two\n");
}

#[test]
fn clone_options_mac_uuid_skip_copy_nvram_auto_clone_and_print() {
    if !require("qemu-img", have_program("qemu-img")) {
        return;
    }
    let k = Kvm::new();
    let img = k.images();
    k.ok(&["-q", "vol-create-as", "default", "s.qcow2", "64M", "--format", "qcow2"]);
    k.ok(&["-q", "vol-create-as", "default", "data.qcow2", "64M", "--format", "qcow2"]);
    k.ok(&["-q", "vol-create-as", "default", "r.img", "8M"]);
    let nvram = k.root().join("nvram/s_VARS.fd");
    std::fs::create_dir_all(nvram.parent().unwrap()).unwrap();
    std::fs::write(&nvram, b"vars").unwrap();
    let def = format!(
        "name = \"s\"\nuuid = \"3e3fce45-4f53-4fa7-bb32-11f34168b82b\"\nmemory_mib = 128\nvcpus = 1\n\
         [firmware]\ntype = \"uefi\"\ncode = \"/usr/share/OVMF/OVMF_CODE.fd\"\nnvram = \"{nv}\"\n\
         [[disks]]\npath = \"{i}/s.qcow2\"\nformat = \"qcow2\"\n[[disks]]\npath = \"{i}/data.qcow2\"\nformat = \"qcow2\"\n\
         [[disks]]\npath = \"{i}/r.img\"\nformat = \"raw\"\n[[disks]]\npath = \"/srv/cd.iso\"\nformat = \"raw\"\ndevice = \"cdrom\"\nreadonly = true\n\
         [[nics]]\ntype = \"user\"\nmac = \"52:54:00:00:00:01\"\n[[nics]]\ntype = \"user\"\nmac = \"52:54:00:00:00:02\"\n",
        nv = nvram.display(),
        i = img.display()
    );
    let f = k.dir.path().join("s.toml");
    std::fs::write(&f, def).unwrap();
    k.ok(&["define", f.to_str().unwrap()]);
    // --print-definition with --auto-clone creates nothing.
    let printed = k.ok(&["clone", "s", "--auto-clone", "--print-definition"]);
    assert!(printed.contains("name = \"s-clone\""), "{printed}");
    assert_eq!(k.ok(&["list", "--all", "--name"]), "s\n");
    let uuid = "11111111-2222-4333-8444-555555555555";
    k.ok(&[
        "clone",
        "s",
        "c1",
        "--mac",
        "52:54:00:aa:bb:01",
        "--mac",
        "RANDOM",
        "--uuid",
        uuid,
        "--skip-copy",
        "vdb",
        "--nonsparse",
    ]);
    let c1: serde_json::Value = serde_json::from_str(&k.ok(&["--json", "dominfo", "c1"])).unwrap();
    let d = &c1["definition"];
    assert_eq!(d["uuid"], uuid);
    assert_eq!(d["nics"][0]["mac"], "52:54:00:aa:bb:01");
    assert!(
        d["nics"][1]["mac"] != "52:54:00:00:00:02" && d["nics"][1]["mac"].as_str().unwrap().starts_with("52:54:00:")
    );
    assert_eq!(d["disks"][0]["path"], img.join("c1.qcow2").to_str().unwrap());
    assert_eq!(d["disks"][1]["path"], img.join("data.qcow2").to_str().unwrap(), "--skip-copy vdb shares the disk");
    assert_eq!(d["disks"][2]["path"], img.join("c1-1.img").to_str().unwrap());
    assert_eq!(d["disks"][3]["path"], "/srv/cd.iso", "a CD is shared, not copied");
    assert_eq!(allocated_bytes(&img.join("c1-1.img")), 8 << 20, "--nonsparse allocates raw copies");
    let nv1 = k.root().join("nvram/c1_VARS.fd");
    assert_eq!(std::fs::read(&nv1).unwrap(), b"vars");
    assert_eq!(d["firmware"]["nvram"], nv1.to_str().unwrap());
    // A MAC in use, and --preserve-data with an existing file.
    let e = k.fails(1, &["clone", "s", "c2", "--mac", "52:54:00:aa:bb:01"]);
    assert!(e.contains("52:54:00:aa:bb:01"), "{e}");
    let keep = k.dir.path().join("keep.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", keep.to_str().unwrap(), "64M"]);
    let keep2 = k.dir.path().join("keep2.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", keep2.to_str().unwrap(), "64M"]);
    k.ok(&[
        "clone",
        "s",
        "c3",
        "--preserve-data",
        "--file",
        keep.to_str().unwrap(),
        "--file",
        keep2.to_str().unwrap(),
        "--skip-copy",
        "vdc",
    ]);
    let c3: serde_json::Value = serde_json::from_str(&k.ok(&["--json", "dominfo", "c3"])).unwrap();
    assert_eq!(c3["definition"]["disks"][0]["path"], keep.to_str().unwrap());
}

#[test]
fn install_and_start_console_attach_on_a_terminal() {
    if !prereqs() {
        return;
    }
    let h = host();
    h.ok(&["-q", "vol-clone", "tiny.qcow2", "t1.qcow2", "--pool", "default", "--linked"]);
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.ns.name, env!("CARGO_BIN_EXE_kvmctl"), "--root"]).arg(h.k.root()).args(args);
        c
    };
    // install on a terminal attaches by itself (virt-install's autoconsole).
    let mut p = Pty::spawn(in_ns(&[
        "install",
        "--name",
        "t1",
        "--memory",
        "256",
        "--disk",
        "vol=default/t1.qcow2",
        "--import",
        "--network",
        "none",
    ]));
    p.expect("Escape character is ^]", 60);
    p.expect("KVMCTL-GUEST-READY", 300);
    p.send(&[0x1d]);
    p.wait_exit(60);
    h.ok(&["destroy", "t1"]);
    // start --console too.
    let mut p = Pty::spawn(in_ns(&["start", "t1", "--console"]));
    p.expect("Escape character is ^]", 60);
    p.expect("KVMCTL-GUEST-READY", 300);
    p.send(&[0x1d]);
    p.wait_exit(60);
    h.ok(&["destroy", "t1"]);
}
