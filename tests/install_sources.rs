//! Every way to install, end to end under TCG inside namespaces the tests create:
//! --cdrom (two phases), --location (tree and ISO), --pxe (the network's TFTP), --cloud-init,
//! --boot uefi; and bad input that must leave nothing behind.

mod common;

use std::path::{Path, PathBuf};

use common::netns::can_netns;
use common::vmhost::VmHost;
use common::*;

fn out() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out")
}

fn prereqs() -> bool {
    require(
        "root, qemu, dnsmasq, nft, OVMF and the install media (images/build.sh)",
        can_netns()
            && ["qemu-system-x86_64", "dnsmasq", "nft"].iter().all(|p| have_program(p))
            && ["tiny-installer.iso", "location.iso", "pxe/pxelinux.0", "tiny-uefi.qcow2"]
                .iter()
                .all(|f| out().join(f).exists())
            && Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists(),
    )
}

type Host = VmHost;

impl Host {
    fn nothing_left(&self, vm: &str) {
        assert_eq!(self.ok(&["list", "--all", "--name"]), "", "no definition");
        assert!(!self.k.root().join(format!("run/domains/{vm}")).exists(), "no runtime dir");
        let vols = std::fs::read_dir(self.k.images()).map(|d| d.count()).unwrap_or(0);
        assert_eq!(vols, 0, "no volume");
    }
}

#[test]
fn cdrom_install_writes_the_disk_then_boots_from_it() {
    if !prereqs() {
        return;
    }
    let h = Host::new("i");
    let iso = out().join("tiny-installer.iso");
    h.ok(&[
        "install",
        "--name",
        "inst",
        "--memory",
        "256",
        "--cdrom",
        iso.to_str().unwrap(),
        "--disk",
        "size=1",
        "--network",
        "none",
        "--wait",
        "3",
    ]);
    let log = h.wait_console_with_previous("inst", "KVMCTL-GUEST-READY", 1, 300);
    assert!(log.contains("KVMCTL-INSTALL-DONE"), "{log}");
    assert!(
        log.lines().any(|l| l.starts_with("KVMCTL-CMDLINE") && l.contains("kvmctl.installed=1")),
        "booted the installed disk:\n{log}"
    );
    assert_eq!(h.ok(&["domstate", "inst", "--reason"]).trim(), "running (installed, booted from disk)");
    // The CD is not part of the definition any more; the disk boots first.
    let toml = std::fs::read_to_string(h.k.root().join("domains/inst.toml")).unwrap();
    assert!(!toml.contains("tiny-installer.iso") && toml.contains("boot_order = [\"hd\"]"), "{toml}");
    assert!(!h.ok(&["dumpxml", "inst"]).contains("cdrom"));
    h.ok(&["destroy", "inst"]);
    h.ok(&["start", "inst"]);
    h.wait_console_with_previous("inst", "KVMCTL-GUEST-READY", 1, 300);
    let this_boot = std::fs::read_to_string(h.k.root().join("run/domains/inst/console.log")).unwrap();
    assert!(!this_boot.contains("KVMCTL-INSTALL"), "the second start boots the disk, not the installer:\n{this_boot}");
    h.ok(&["destroy", "inst"]);
}

#[test]
fn location_tree_and_iso_boot_their_kernel_with_extra_args() {
    if !prereqs() {
        return;
    }
    let h = Host::new("i");
    for (vm, loc, marker) in [("ld", out().join("location"), "tree-1"), ("li", out().join("location.iso"), "iso-2")] {
        let args = format!("console=ttyS0 kvmctl.marker={marker}");
        let o = h.k.in_ns(
            &h.ns,
            &[
                "install",
                "--name",
                vm,
                "--memory",
                "256",
                "--location",
                loc.to_str().unwrap(),
                "--extra-args",
                &args,
                "--disk",
                "size=1",
                "--network",
                "none",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Using debian layout"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let log = h.wait_console_with_previous(vm, "KVMCTL-GUEST-READY", 1, 300);
        let cmdline = log.lines().find(|l| l.starts_with("KVMCTL-CMDLINE")).unwrap();
        assert!(cmdline.contains(&format!("kvmctl.marker={marker}")), "{cmdline}");
        h.ok(&["destroy", vm]);
    }
    // The ISO stayed attached as a CD for the installer.
    assert!(h.console_with_previous("li").contains("KVMCTL-DISK: sr0"), "{}", h.console_with_previous("li"));
}

#[test]
fn pxe_boots_from_the_networks_tftp() {
    if !prereqs() {
        return;
    }
    let h = Host::new("i");
    let xml = format!(
        "<network><name>pxe</name><forward mode='nat'/><bridge name='brpxe' stp='off'/>\
         <ip address='192.168.177.1' netmask='255.255.255.0'><tftp root='{}'/>\
         <dhcp><range start='192.168.177.10' end='192.168.177.50'/><bootp file='pxelinux.0'/></dhcp></ip></network>",
        out().join("pxe").display()
    );
    let f = h.k.dir.path().join("pxe.xml");
    std::fs::write(&f, xml).unwrap();
    h.ok(&["net-define", f.to_str().unwrap()]);
    h.ok(&["install", "--name", "px", "--memory", "256", "--pxe", "--disk", "size=1", "--network", "network=pxe"]);
    let log = h.wait_console_with_previous("px", "KVMCTL-GUEST-READY", 1, 300);
    assert!(log.contains("PXELINUX") && log.contains("192.168.177."), "{log}");
    h.ok(&["destroy", "px"]);
}

#[test]
fn cloud_init_seed_sets_hostname_and_marker_on_the_first_boot_only() {
    if !prereqs() {
        return;
    }
    let h = Host::new("i");
    h.ok(&["-q", "vol-import", out().join("tiny.qcow2").to_str().unwrap(), "--pool", "default"]);
    let ud = h.k.dir.path().join("user-data");
    std::fs::write(&ud, "#cloud-config\nhostname: seeded-vm\nkvmctl_marker: m-77\n").unwrap();
    let ci = format!("user-data={}", ud.display());
    h.ok(&[
        "install",
        "--name",
        "ci",
        "--memory",
        "256",
        "--disk",
        "vol=default/tiny.qcow2",
        "--import",
        "--cloud-init",
        &ci,
        "--network",
        "none",
    ]);
    let log = h.wait_console_with_previous("ci", "KVMCTL-GUEST-READY", 1, 300);
    assert!(
        log.contains("KVMCTL-CLOUDINIT: hostname=seeded-vm") && log.contains("KVMCTL-CLOUDINIT: marker=m-77"),
        "{log}"
    );
    // A reboot ends the first boot: the seed is gone.
    h.ok(&["reboot", "ci"]);
    let log = h.wait_console_with_previous("ci", "KVMCTL-GUEST-READY", 2, 300);
    let second = &log[log.find("KVMCTL-GUEST-READY").unwrap()..];
    assert!(!second.contains("KVMCTL-CLOUDINIT"), "{log}");
    h.ok(&["destroy", "ci"]);
    // A generated root password is printed once.
    let o = h.k.in_ns(
        &h.ns,
        &[
            "install",
            "--name",
            "pw",
            "--memory",
            "128",
            "--disk",
            "size=1",
            "--import",
            "--cloud-init",
            "root-password-generate=on",
            "--network",
            "none",
        ],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Generated root password for 'pw': "), "{text}");
    h.ok(&["destroy", "pw"]);
}

#[test]
fn uefi_boot_reaches_the_guest_and_undefine_nvram_removes_its_store() {
    if !prereqs() {
        return;
    }
    let h = Host::new("i");
    h.ok(&["-q", "vol-import", out().join("tiny-uefi.qcow2").to_str().unwrap(), "--pool", "default"]);
    h.ok(&[
        "install",
        "--name",
        "ue",
        "--memory",
        "256",
        "--disk",
        "vol=default/tiny-uefi.qcow2",
        "--import",
        "--boot",
        "uefi",
        "--network",
        "none",
    ]);
    let log = h.wait_console_with_previous("ue", "KVMCTL-GUEST-READY", 1, 300);
    assert!(log.contains("KVMCTL-FIRMWARE: uefi"), "{log}");
    h.ok(&["destroy", "ue"]);
    let nvram = h.k.root().join("nvram/ue_VARS.fd");
    assert!(nvram.exists());
    assert!(h.fails(1, &["undefine", "ue"]).contains("--nvram"));
    h.ok(&["undefine", "ue", "--nvram"]);
    assert!(!nvram.exists());
}

#[test]
fn bad_install_media_are_refused_and_leave_nothing() {
    if !prereqs() {
        return;
    }
    let h = Host::new("i");
    let base = ["install", "--name", "bad", "--memory", "128", "--network", "none", "--disk", "size=1"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |extra: &[&str], code: i32| {
        let a = with(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        h.fails(code, &a)
    };
    let not_iso = h.k.dir.path().join("not.iso");
    std::fs::write(&not_iso, vec![7u8; 64 << 10]).unwrap();
    assert!(run(&["--cdrom", not_iso.to_str().unwrap()], 1).contains("not an ISO 9660 image"));
    assert!(run(&["--cdrom", "/nonexistent.iso"], 1).contains("/nonexistent.iso"));
    let empty = h.k.dir.path().join("emptytree");
    std::fs::create_dir(&empty).unwrap();
    let e = run(&["--location", empty.to_str().unwrap()], 1);
    assert!(
        e.contains("no kernel and initrd found")
            && e.contains("install.amd/vmlinuz")
            && e.contains("images/pxeboot/vmlinuz"),
        "{e}"
    );
    assert!(run(&["--cdrom", out().join("tiny-installer.iso").to_str().unwrap(), "--import"], 2)
        .contains("cannot be used with"));
    assert!(run(&["--import", "--cloud-init", "user-data=/nonexistent/ud"], 1).contains("/nonexistent/ud"));
    let big = h.k.dir.path().join("big-ud");
    std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
    let e = run(&["--import", "--cloud-init", &format!("user-data={}", big.display())], 1);
    assert!(e.contains("user-data") && e.contains("big-ud"), "{e}");
    assert!(run(&["--import", "--cloud-init", "colour=blue"], 1).contains("unknown option 'colour'"));
    h.nothing_left("bad");
}
