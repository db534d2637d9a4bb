//! Host shutdown (`kvmctl down`, libvirt-guests) and the next boot's `kvmctl up`, with real
//! VMs (the test guest) inside a network namespace the test creates; and the systemd units.

mod common;

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

fn install(h: &VmHost, name: &str) {
    if !h.k.images().join("tiny.qcow2").exists() {
        h.ok(&["-q", "vol-import", guest_dir().join("tiny.qcow2").to_str().unwrap(), "--pool", "default"]);
    }
    h.ok(&["-q", "vol-clone", "tiny.qcow2", &format!("{name}.qcow2"), "--pool", "default", "--linked"]);
    let vol = format!("vol=default/{name}.qcow2");
    h.ok(&[
        "install",
        "--name",
        name,
        "--memory",
        "256",
        "--disk",
        &vol,
        "--network",
        "none",
        "--import",
        "--noautoconsole",
    ]);
}

fn state(h: &VmHost, vm: &str) -> String {
    h.ok(&["domstate", vm, "--reason"]).trim().to_string()
}

#[test]
fn down_powers_off_forces_the_rest_records_them_and_up_starts_them_again() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("h");
    install(&h, "a1");
    install(&h, "a2");
    // a1 boots and answers the ACPI power button; a2 is paused and cannot.
    h.wait_console("a1", "KVMCTL-GUEST-READY", 1, 300);
    h.ok(&["suspend", "a2"]);
    let record = h.k.root().join("resume-on-boot.toml");
    assert!(!record.exists());
    let out = h.ok(&["down", "--timeout", "45"]);
    assert!(out.contains("Domain 'a1' is shut down"), "{out}");
    assert!(out.contains("Domain 'a2' did not power off within 45s: destroyed"), "{out}");
    assert!(out.contains("2 domain(s) recorded"), "{out}");
    assert_eq!(state(&h, "a1"), "shut off (shutdown)");
    assert_eq!(state(&h, "a2"), "shut off (destroyed)");
    assert_eq!(h.ok(&["list", "--name"]), "", "nothing runs");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains(r#"domains = ["a1", "a2"]"#), "{text}");
    // A second down (nothing runs) keeps the record.
    assert!(h.ok(&["down"]).contains("No running domains"));
    assert_eq!(std::fs::read_to_string(&record).unwrap(), text);
    // Neither is autostart: up starts them because down recorded them.
    let def = std::fs::read_to_string(h.k.root().join("domains/a1.toml")).unwrap();
    assert!(def.contains("autostart = false"), "{def}");
    let up = h.ok(&["up"]);
    assert!(up.contains("Domain 'a1' started") && up.contains("Domain 'a2' started"), "{up}");
    assert_eq!(h.ok(&["list", "--name"]), "a1\na2\n");
    assert!(!record.exists(), "the record is used up");
    h.wait_console("a2", "KVMCTL-GUEST-READY", 1, 300);
    // --json: one object per VM; a transient VM stops but is not recorded.
    let g = guest_dir();
    let boot = format!("kernel={},initrd={}", g.join("vmlinuz").display(), g.join("initramfs.cpio.gz").display());
    h.ok(&[
        "install",
        "--name",
        "t1",
        "--memory",
        "256",
        "--boot",
        &boot,
        "--network",
        "none",
        "--transient",
        "--noautoconsole",
    ]);
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["--json", "down", "--timeout", "1"])).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    for r in rows {
        assert!(["poweroff", "forced"].contains(&r["outcome"].as_str().unwrap()), "{v}");
        assert_eq!(r["recorded"], r["name"] != "t1", "{v}");
    }
    assert_eq!(h.ok(&["list", "--all", "--name"]), "a1\na2\n", "the transient VM is gone");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains(r#"domains = ["a1", "a2"]"#), "{text}");
    // A recorded VM that was undefined meanwhile is dropped from the record by up.
    h.ok(&["undefine", "a2", "--remove-all-storage"]);
    assert!(h.ok(&["up"]).contains("Domain 'a1' started"));
    assert!(!record.exists());
    h.ok(&["destroy", "a1"]);
}

#[test]
fn the_units_verify_and_stop_vms_only_from_the_guests_unit() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut units = vec![];
    for u in ["kvmctl.service", "kvmctl-guests.service"] {
        let text = std::fs::read_to_string(root.join("templates").join(u)).unwrap();
        let text = text.replace("/usr/local/bin/kvmctl", env!("CARGO_BIN_EXE_kvmctl"));
        std::fs::write(dir.path().join(u), &text).unwrap();
        units.push(text);
    }
    let line = |t: &str, key: &str| -> Vec<String> {
        t.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_string).collect()
    };
    // kvmctl.service: no ExecStop, and a restart does not kill what it started.
    assert!(line(&units[0], "ExecStop").is_empty());
    assert_eq!(line(&units[0], "KillMode"), ["process"]);
    // kvmctl-guests.service: down at stop, with room for its timeout; ordered after kvmctl.
    let stop = line(&units[1], "ExecStop");
    assert_eq!(stop.len(), 1);
    let timeout: u64 = stop[0].rsplit_once("--timeout ").unwrap().1.parse().unwrap();
    assert!(stop[0].contains(" down --timeout "), "{stop:?}");
    let stop_sec: u64 = line(&units[1], "TimeoutStopSec")[0].parse().unwrap();
    assert!(stop_sec > timeout + 30, "TimeoutStopSec={stop_sec} leaves no room after --timeout {timeout}");
    assert!(line(&units[1], "After")[0].split_whitespace().any(|u| u == "kvmctl.service"));
    assert_eq!(line(&units[1], "KillMode"), ["process"]);
    // A failed start must leave the unit active, or its ExecStop would not run at shutdown.
    assert!(line(&units[1], "ExecStart").iter().all(|l| l.starts_with('-')), "{:?}", line(&units[1], "ExecStart"));
    let makefile = std::fs::read_to_string(root.join("Makefile")).unwrap();
    assert!(makefile.contains("templates/kvmctl-guests.service"), "make install installs it");
    if !require("systemd-analyze", have_program("systemd-analyze")) {
        return;
    }
    let paths: Vec<String> =
        ["kvmctl.service", "kvmctl-guests.service"].iter().map(|u| dir.path().join(u).display().to_string()).collect();
    let o = std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).args(&paths).bounded();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
