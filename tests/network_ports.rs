//! How a network's bridge ports are set up for VMs, seen from inside real guests:
//! `<port isolated='yes'/>` (kernel bridge port isolation). VMs run inside a namespace the
//! test creates; needs root, qemu, dnsmasq, nft and the test guest.

mod common;

use common::netns::can_netns;
use common::vmhost::VmHost;
use common::*;

fn prereqs() -> bool {
    require(
        "root, qemu-system-x86_64, dnsmasq, nft and the test guest kernel (images/build.sh)",
        can_netns()
            && ["qemu-system-x86_64", "dnsmasq", "nft"].iter().all(|p| have_program(p))
            && guest_dir().join("vmlinuz").exists(),
    )
}

/// Install VM `name` booting the tiny guest's kernel on network `net`.
fn vm(h: &VmHost, name: &str, net: &str) {
    let g = guest_dir();
    let boot = format!("kernel={},initrd={}", g.join("vmlinuz").display(), g.join("initramfs.cpio.gz").display());
    let net = format!("network={net}");
    h.ok(&["-q", "install", "--name", name, "--memory", "128", "--boot", &boot, "--network", &net, "--noautoconsole"]);
}

/// The guest's DHCP address on eth0, from its readiness line.
fn ready_addr(h: &VmHost, name: &str) -> String {
    let log = h.wait_console(name, "KVMCTL-GUEST-READY", 1, 300);
    let line = log.lines().find_map(|l| l.trim_end().strip_prefix("KVMCTL-GUEST-READY eth0=")).unwrap();
    line.split('/').next().unwrap().to_string()
}

fn isolated_flag(h: &VmHost, tap: &str) -> bool {
    let j: serde_json::Value = serde_json::from_str(&h.ns.ip(&["-d", "-j", "link", "show", tap])).unwrap();
    j[0]["linkinfo"]["info_slave_data"]["isolated"].as_bool().unwrap_or(false)
}

fn tap_of(h: &VmHost, vm: &str) -> String {
    let st = std::fs::read_to_string(h.k.root().join(format!("run/domains/{vm}/state.json"))).unwrap();
    serde_json::from_str::<serde_json::Value>(&st).unwrap()["taps"][0].as_str().unwrap().to_string()
}

#[test]
fn isolated_ports_reach_the_host_but_not_each_other() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("p");
    let xml = "<network><name>iso</name><bridge name='briso'/><port isolated='yes'/>\
               <ip address='192.168.160.1' netmask='255.255.255.0'><dhcp>\
               <range start='192.168.160.10' end='192.168.160.50'/></dhcp></ip></network>";
    let f = h.k.dir.path().join("iso.xml");
    std::fs::write(&f, xml).unwrap();
    h.ok(&["net-define", f.to_str().unwrap()]);
    assert!(h.ok(&["net-dumpxml", "iso"]).contains("<port isolated='yes'/>"));
    vm(&h, "p1", "iso");
    vm(&h, "p2", "iso");
    let (_, a2) = (ready_addr(&h, "p1"), ready_addr(&h, "p2"));
    let (t1, t2) = (tap_of(&h, "p1"), tap_of(&h, "p2"));
    assert!(isolated_flag(&h, &t1) && isolated_flag(&h, &t2), "both taps are isolated bridge ports");
    // Each guest reaches the host (the bridge is not an isolated port) ...
    for vm in ["p1", "p2"] {
        h.guest_ok(vm, "ping -c 1 -W 3 192.168.160.1", 30);
    }
    // ... and not the other guest.
    let (rc, out) = h.guest_sh("p1", &format!("ping -c 2 -W 2 {a2}"), 30);
    assert_ne!(rc, 0, "p1 must not reach p2 through isolated ports:\n{out}");
    // The same network without isolation: they do (the test can fail).
    h.ok(&["destroy", "p2"]);
    h.ok(&["destroy", "p1"]);
    h.ok(&["net-destroy", "iso"]);
    std::fs::write(&f, xml.replace("<port isolated='yes'/>", "")).unwrap();
    h.ok(&["net-define", f.to_str().unwrap()]);
    h.ok(&["start", "p1"]);
    h.ok(&["start", "p2"]);
    let (_, a2) = (ready_addr(&h, "p1"), ready_addr(&h, "p2"));
    assert!(!isolated_flag(&h, &tap_of(&h, "p1")));
    h.guest_ok("p1", &format!("ping -c 1 -W 3 {a2}"), 30);
    h.ok(&["destroy", "p1"]);
    h.ok(&["destroy", "p2"]);
    h.ok(&["net-destroy", "iso"]);
}
