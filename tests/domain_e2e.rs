//! Real guests (the tiny test guest, TCG) on real networks, each test inside namespaces it
//! creates. Needs root, qemu, dnsmasq, nft and images/out (images/build.sh).

mod common;

use std::time::{Duration, Instant};

use common::netns::can_netns;
use common::vmhost::VmHost;
use common::*;

fn prereqs() -> bool {
    require(
        "root, qemu-system-x86_64, dnsmasq, nft and the test guest (images/build.sh)",
        can_netns()
            && ["qemu-system-x86_64", "dnsmasq", "nft"].iter().all(|p| have_program(p))
            && guest_dir().join("tiny.qcow2").exists(),
    )
}

/// A state root and a namespace playing the host; VMs are destroyed on drop.
type Host = VmHost;

impl Host {
    /// A linked clone of the tiny guest disk in the default pool.
    fn disk(&self, name: &str) {
        if !self.k.images().join("tiny.qcow2").exists() {
            self.ok(&["-q", "vol-import", guest_dir().join("tiny.qcow2").to_str().unwrap(), "--pool", "default"]);
        }
        self.ok(&["-q", "vol-clone", "tiny.qcow2", name, "--pool", "default", "--linked"]);
    }
    fn qemu_pids(&self) -> Vec<i32> {
        self.ns
            .pids()
            .into_iter()
            .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().starts_with("qemu"))
            .collect()
    }
}

fn ready_addr(log: &str) -> String {
    let line = log.lines().rfind(|l| l.starts_with("KVMCTL-GUEST-READY")).unwrap_or("");
    line.split_whitespace().find_map(|w| w.strip_prefix("eth0=")).unwrap_or("").to_string()
}

#[test]
fn import_on_default_nat_network_boots_leases_and_follows_the_lifecycle() {
    if !prereqs() {
        return;
    }
    let h = Host::new("d");
    h.disk("vm1.qcow2");
    let out = h.k.in_ns(
        &h.ns,
        &[
            "install",
            "--name",
            "vm1",
            "--memory",
            "256",
            "--vcpus",
            "1",
            "--disk",
            "vol=default/vm1.qcow2",
            "--network",
            "network=default",
            "--import",
            "--noautoconsole",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Network 'default' is not active: starting it"), "{err}");
    assert!(err.contains("using TCG") || err.is_empty(), "{err}");
    let log = h.wait_console("vm1", "KVMCTL-GUEST-READY", 1, 300);
    let addr = ready_addr(&log);
    assert!(addr.starts_with("192.168.122.") && addr.ends_with("/24"), "{addr}");
    // domifaddr and net-dhcp-leases agree on the address.
    let ifaddr = h.ok(&["domifaddr", "vm1"]);
    assert!(ifaddr.contains(&addr) && ifaddr.contains("vnet"), "{ifaddr}");
    let leases = h.ok(&["net-dhcp-leases", "default"]);
    assert!(leases.contains(&addr), "{leases}");
    let list = h.ok(&["list"]);
    assert!(list.contains(" vm1 ") && list.contains("running"), "{list}");
    // ACPI shutdown through the guest's power button handling.
    assert!(h.ok(&["shutdown", "vm1", "--timeout", "120"]).contains("is shut down"));
    assert_eq!(h.ok(&["domstate", "vm1", "--reason"]).trim(), "shut off (shutdown)");
    assert!(h.qemu_pids().is_empty());
    assert!(h.fails(1, &["shutdown", "vm1"]).contains("domain 'vm1' is not running"));
    // start again; suspend/resume; reboot; destroy.
    h.ok(&["start", "vm1"]);
    assert!(h.fails(1, &["start", "vm1"]).contains("domain 'vm1' is already running"));
    h.wait_console("vm1", "KVMCTL-GUEST-READY", 1, 300);
    h.ok(&["suspend", "vm1"]);
    assert_eq!(h.ok(&["domstate", "vm1", "--reason"]).trim(), "paused (user)");
    let before = h.console("vm1").len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(h.console("vm1").len(), before, "a paused guest prints nothing");
    h.ok(&["resume", "vm1"]);
    assert_eq!(h.ok(&["domstate", "vm1"]).trim(), "running");
    h.ok(&["reboot", "vm1"]);
    h.wait_console("vm1", "KVMCTL-GUEST-READY", 2, 300);
    assert_eq!(h.ok(&["domstate", "vm1", "--reason"]).trim(), "running (rebooted)");
    h.ok(&["reset", "vm1"]);
    h.wait_console("vm1", "KVMCTL-GUEST-READY", 3, 300);
    h.ok(&["destroy", "vm1"]);
    // edit: $EDITOR saves a change; an invalid edit is refused and the definition kept.
    let edit = |sed: &str| {
        let editor = h.k.dir.path().join("ed.sh");
        std::fs::write(&editor, format!("#!/bin/sh\nsed -i '{sed}' \"$1\"\n")).unwrap();
        sh("chmod", &["755", editor.to_str().unwrap()]);
        std::process::Command::new(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--root")
            .arg(h.k.root())
            .args(["edit", "vm1"])
            .env("EDITOR", &editor)
            .env_remove("VISUAL")
            .bounded()
    };
    assert!(edit("s/^memory_mib = 256/memory_mib = 192/").status.success());
    assert!(h.ok(&["dominfo", "vm1"]).contains("Max memory:     196608 KiB"));
    let bad = edit("s/^memory_mib = 192/memory_mib = lots/");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unchanged"));
    assert!(h.ok(&["dominfo", "vm1"]).contains("Max memory:     196608 KiB"));
    assert_eq!(h.ok(&["domstate", "vm1", "--reason"]).trim(), "shut off (destroyed)");
    assert!(h.qemu_pids().is_empty());
    assert!(!h.ns.ip(&["-br", "link"]).contains("vnet"), "the tap went away with qemu");
    // undefine --remove-all-storage: files gone, nothing left.
    let disk = h.k.images().join("vm1.qcow2");
    assert!(disk.exists());
    h.ok(&["undefine", "vm1", "--remove-all-storage"]);
    assert!(!disk.exists() && h.k.images().join("tiny.qcow2").exists());
    assert!(!h.k.root().join("run/domains/vm1").exists());
    assert_eq!(h.ok(&["list", "--all", "--name"]), "");
}

#[test]
fn direct_kernel_boot_with_extra_args_on_user_networking() {
    if !prereqs() {
        return;
    }
    let h = Host::new("d");
    let g = guest_dir();
    let boot = format!("kernel={},initrd={}", g.join("vmlinuz").display(), g.join("initramfs.cpio.gz").display());
    h.ok(&[
        "install",
        "--name",
        "k1",
        "--memory",
        "256",
        "--boot",
        &boot,
        "--extra-args",
        "console=ttyS0 kvmctl.marker=xyz42",
        "--network",
        "user",
        "--noautoconsole",
    ]);
    let log = h.wait_console("k1", "KVMCTL-GUEST-READY", 1, 300);
    let cmdline = log.lines().find(|l| l.starts_with("KVMCTL-CMDLINE:")).unwrap_or("");
    assert!(cmdline.contains("kvmctl.marker=xyz42"), "{cmdline}");
    assert_eq!(ready_addr(&log), "10.0.2.15/24");
    let iflist = h.ok(&["domiflist", "k1"]);
    assert!(iflist.contains("user"), "{iflist}");
    let ifaddr = h.ok(&["domifaddr", "k1"]);
    assert!(ifaddr.contains("10.0.2.15/24"), "user-mode address from QMP: {ifaddr}");
    let xml = h.ok(&["dumpxml", "k1"]);
    assert!(
        xml.contains("<cmdline>console=ttyS0 kvmctl.marker=xyz42</cmdline>") && xml.contains("<interface type='user'>"),
        "{xml}"
    );
    h.ok(&["destroy", "k1"]);
    h.ok(&["undefine", "k1"]);
}

#[test]
fn killed_qemu_is_noticed_and_on_crash_applies() {
    if !prereqs() {
        return;
    }
    let h = Host::new("d");
    h.disk("c1.qcow2");
    h.ok(&[
        "install",
        "--name",
        "c1",
        "--memory",
        "256",
        "--disk",
        "vol=default/c1.qcow2",
        "--network",
        "none",
        "--import",
    ]);
    h.wait_console("c1", "KVMCTL-GUEST-READY", 1, 300);
    let kill_qemu = || {
        for p in h.qemu_pids() {
            // SAFETY: kill(2) on a qemu inside this test's own namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    };
    kill_qemu();
    let t0 = Instant::now();
    while !h.ok(&["domstate", "c1"]).contains("crashed") {
        assert!(t0.elapsed() < Duration::from_secs(120), "crash not noticed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(h.ok(&["domstate", "c1", "--reason"]).contains("SIGKILL"));
    // on_crash = restart: the supervisor starts qemu again.
    let def_path = h.k.dir.path().join("c1.toml");
    let def = std::fs::read_to_string(h.k.root().join("domains/c1.toml"))
        .unwrap()
        .replace("on_crash = \"destroy\"", "on_crash = \"restart\"");
    std::fs::write(&def_path, def).unwrap();
    h.ok(&["define", def_path.to_str().unwrap()]);
    h.ok(&["start", "c1"]);
    h.wait_console("c1", "KVMCTL-GUEST-READY", 1, 300);
    kill_qemu();
    h.wait_console("c1", "KVMCTL-GUEST-READY", 2, 300);
    assert_eq!(h.ok(&["domstate", "c1", "--reason"]).trim(), "running (crashed, restarted)");
    h.ok(&["destroy", "c1"]);
}

#[test]
fn up_starts_autostart_networks_and_vms() {
    if !prereqs() {
        return;
    }
    let h = Host::new("d");
    h.disk("a1.qcow2");
    h.ok(&["install", "--name", "a1", "--memory", "256", "--disk", "vol=default/a1.qcow2", "--import", "--autostart"]);
    h.ok(&["destroy", "a1"]);
    h.ok(&["net-destroy", "default"]);
    assert!(h.ok(&["up"]).contains("Domain 'a1' started"));
    assert!(h.ok(&["net-list"]).contains(" default   active"));
    assert!(h.ok(&["list"]).contains("a1"));
    h.wait_console("a1", "KVMCTL-GUEST-READY", 1, 300);
    h.ok(&["destroy", "a1"]);
}

#[test]
fn install_bad_input_is_refused_and_leaves_nothing() {
    if !prereqs() {
        return;
    }
    let h = Host::new("d");
    h.disk("b1.qcow2");
    let base = ["install", "--memory", "128", "--noautoconsole"];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        h.k.in_ns(&h.ns, &a)
    };
    let err = |extra: &[&str], code: i32| {
        let o = run(extra);
        assert_eq!(o.status.code(), Some(code), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(err(&["--name", "x", "--disk", "size=1", "--import", "--network", "network=nope"], 1)
        .contains("network 'nope' not found"));
    assert!(err(&["--name", "x", "--disk", "vol=nopool/v", "--import"], 1).contains("pool 'nopool' not found"));
    assert!(err(&["--name", "x", "--disk", "vol=default/nov", "--import"], 1).contains("volume 'nov' not found"));
    assert!(err(&["--name", "x", "--import"], 1).contains("--import needs a --disk"));
    assert!(err(&["--name", "x", "--disk", "size=1"], 1).contains("no install source"));
    assert!(err(&["--name", "x", "--disk", "size=1,sise=2", "--import"], 2).contains("unknown key 'sise'"));
    assert!(err(&["--name", "x", "--vcpus", "0", "--disk", "size=1", "--import"], 1)
        .contains("domain 'x': vcpus 0: must be between 1 and the host's"));
    assert!(err(&["--name", "x", "--vcpus", "4096", "--disk", "size=1", "--import"], 1)
        .contains("domain 'x': vcpus 4096: must be between 1 and the host's"));
    assert!(err(&["--name", "x/y", "--disk", "size=1", "--import"], 1).contains("'/'"));
    let o = h.k.in_ns(&h.ns, &["install", "--name", "x", "--memory", "0", "--disk", "size=1", "--import"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("domain 'x': memory 0 MiB: must be between 1 and the host's"));
    // --accel kvm where the probe says KVM cannot run is refused, with its reason, before
    // anything runs. (Where KVM is usable there is nothing to refuse.)
    let probe_dir = tempfile::tempdir().unwrap();
    let verdict = kvmctl::domain::accel::probe(probe_dir.path());
    if verdict.kvm_usable {
        eprintln!("path: KVM usable here ({verdict}): --accel kvm is not refused");
    } else {
        eprintln!("path: KVM unusable here ({verdict}): --accel kvm is refused");
        let e = err(&["--name", "x", "--disk", "size=1", "--import", "--accel", "kvm", "--network", "none"], 1);
        assert!(e.contains("--accel kvm requested, but KVM unusable"), "{e}");
        assert!(e.contains(verdict.reason.trim_start_matches("KVM unusable: ")), "{e}");
    }
    // A CPU model qemu does not have is refused before anything is created.
    let e = err(
        &["--name", "q", "--disk", "pool=default,size=1", "--import", "--cpu", "no-such-cpu", "--network", "none"],
        1,
    );
    assert!(e.contains("cpu \"no-such-cpu\" is not a CPU model of qemu-system-x86_64"), "{e}");
    assert!(!h.k.images().join("q.qcow2").exists());
    assert!(!h.k.root().join("run/domains/q").exists());
    // qemu itself refuses (host needs KVM): its own message, and the volume this install
    // created is removed.
    let e = err(
        &[
            "--name",
            "q",
            "--disk",
            "pool=default,size=1",
            "--import",
            "--accel",
            "tcg",
            "--cpu",
            "host",
            "--network",
            "none",
        ],
        1,
    );
    assert!(e.contains("CPU model 'host' requires KVM"), "{e}");
    assert!(!h.k.images().join("q.qcow2").exists());
    assert!(!h.k.root().join("run/domains/q").exists());
    // A disk used by another defined VM; a name already defined.
    h.ok(&[
        "install",
        "--name",
        "b1",
        "--memory",
        "128",
        "--disk",
        "vol=default/b1.qcow2",
        "--import",
        "--network",
        "none",
    ]);
    assert!(
        err(&["--name", "b2", "--disk", "vol=default/b1.qcow2", "--import"], 1).contains("already used by domain 'b1'")
    );
    assert!(err(&["--name", "b1", "--disk", "size=1", "--import"], 1).contains("already defined"));
    assert!(h.fails(1, &["undefine", "b1"]).contains("is running"));
    h.ok(&["destroy", "b1"]);
    let names: Vec<String> = std::fs::read_dir(h.k.images())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec!["b1.qcow2", "tiny.qcow2"], "no orphan volume");
    assert_eq!(h.ok(&["list", "--all", "--name"]), "b1\n");
    assert!(!h.ns.ip(&["-br", "link"]).contains("vnet"), "no tap left");
}

#[test]
fn disk_held_by_another_qemu_is_refused() {
    if !prereqs() || !require("qemu-nbd", have_program("qemu-nbd")) {
        return;
    }
    let h = Host::new("d");
    h.disk("held.qcow2");
    let sock = h.k.dir.path().join("nbd.sock");
    let mut nbd = std::process::Command::new("qemu-nbd")
        .args([
            "--persistent",
            "-k",
            sock.to_str().unwrap(),
            "-f",
            "qcow2",
            h.k.images().join("held.qcow2").to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !sock.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = h.fails(
        1,
        &[
            "install",
            "--name",
            "h1",
            "--memory",
            "128",
            "--disk",
            "vol=default/held.qcow2",
            "--import",
            "--network",
            "none",
        ],
    );
    nbd.kill().unwrap();
    nbd.wait().unwrap();
    assert!(e.contains("in use by a running qemu"), "{e}");
    assert_eq!(h.ok(&["list", "--all", "--name"]), "");
}
