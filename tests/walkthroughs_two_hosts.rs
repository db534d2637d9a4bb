//! Issue 12, scenario 5 "Two hosts" (seed 003, "Spawning multiple hosts"): two host
//! namespaces, each with its own kvmctl root. Host A runs the NAT network `default` with DHCP,
//! host B an isolated network without an address; a veth between them plays the cable
//! (`ens2` on both sides), enslaved to each host's bridge with `net-attach-interface` (what
//! libvirt users do with `brctl addif virbr0 ens2`). A VM on host B leases from host A's
//! dnsmasq and reaches an "upstream" namespace behind A through A's NAT.
//!
//! Also here: `net-attach-interface` live and offline (dumpxml, TOML), `net-destroy` and
//! `--detach` putting the interface back exactly as it was, a degraded network repaired, and
//! every refusal with its message, exit 1 and nothing changed.

mod common;

use std::path::{Path, PathBuf};

use common::netns::{can_netns, Netns};
use common::vmhost::VmHost;
use common::*;
use serde_json::Value;

fn guest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out")
}

fn net_prereqs() -> bool {
    require("root, ip, nft, dnsmasq", can_netns() && ["nft", "dnsmasq"].iter().all(|p| have_program(p)))
}

fn vm_prereqs() -> bool {
    require(
        "root, ip, nft, dnsmasq, qemu-system-x86_64 and the test guest (images/build.sh)",
        net_prereqs() && have_program("qemu-system-x86_64") && guest().join("tiny.qcow2").exists(),
    )
}

fn define(h: &VmHost, file: &str, xml: &str) {
    let f = h.k.dir.path().join(file);
    std::fs::write(&f, xml).unwrap();
    h.ok(&["net-define", f.to_str().unwrap()]);
}

/// What `net-destroy` must give back: the link's MTU, operstate, flags and bridge, and its
/// addresses (`ip -j link show` / `ip -j addr show`).
fn link_settings(ns: &Netns, dev: &str) -> (Value, Value) {
    let link: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", dev])).unwrap();
    let l = &link[0];
    let keep = serde_json::json!({
        "mtu": l["mtu"], "operstate": l["operstate"], "flags": l["flags"], "master": l["master"],
    });
    let addr: Value = serde_json::from_str(&ns.ip(&["-j", "addr", "show", dev])).unwrap();
    (keep, addr[0]["addr_info"].clone())
}

/// `link_settings` once IPv6 duplicate address detection is over (no `tentative` address):
/// the state an interface is in before kvmctl touches it.
fn settled(ns: &Netns, dev: &str) -> (Value, Value) {
    for _ in 0..100 {
        let s = link_settings(ns, dev);
        if !s.1.to_string().contains("tentative") {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{dev}: an address stays tentative: {:?}", link_settings(ns, dev));
}

fn master(ns: &Netns, dev: &str) -> Option<String> {
    let (l, _) = link_settings(ns, dev);
    l["master"].as_str().map(String::from)
}

/// The row of `net-list --all` for `net`, and its degraded line.
fn net_state(h: &VmHost, net: &str) -> (String, String) {
    let list = h.ok(&["net-list", "--all"]);
    let row = list.lines().find(|l| l.split_whitespace().next() == Some(net)).unwrap_or("").to_string();
    let problems = list.lines().find_map(|l| l.strip_prefix(&format!(" {net}: degraded: "))).unwrap_or("");
    (row.split_whitespace().nth(1).unwrap_or("").to_string(), problems.to_string())
}

const LAN_B: &str = "<network xmlns:kvmctl='https://kvmctl.dev/xml/network/1'>
  <name>lan</name>
  <bridge name='br-lan' stp='off'/>
  <kvmctl:interface dev='ens2'/>
</network>
";

/// The scenario, with kvmctl commands only on both hosts (the test lays the cables with `ip`).
#[test]
fn a_vm_on_host_b_leases_from_host_a_and_reaches_upstream_through_host_as_nat() {
    if !vm_prereqs() {
        return;
    }
    let (a, b, up) = (VmHost::new("a"), VmHost::new("b"), Netns::new("u"));
    // The cables: A <-> upstream (10.96.0.0/24, A routes out through it), A <-> B (ens2).
    a.ns.veth("up0", &up, "eth0");
    a.ns.ip(&["addr", "add", "10.96.0.1/24", "dev", "up0"]);
    up.ip(&["addr", "add", "10.96.0.2/24", "dev", "eth0"]);
    a.ns.ip(&["route", "add", "default", "via", "10.96.0.2"]);
    a.ns.veth("ens2", &b.ns, "ens2");
    let (a_before, b_before) = (settled(&a.ns, "ens2"), settled(&b.ns, "ens2"));

    // Host A: libvirt's default network, with the cable enslaved to virbr0.
    let out = a.ok(&["net-attach-interface", "default", "ens2"]);
    assert_eq!(out, "Interface ens2 attached to network default (enslaved at the next net-start)\n");
    assert_eq!(a.ok(&["net-start", "default"]), "Network default started\n");
    assert_eq!(master(&a.ns, "ens2").as_deref(), Some("virbr0"));
    let xml = a.ok(&["net-dumpxml", "default"]);
    assert!(xml.starts_with("<network xmlns:kvmctl='https://kvmctl.dev/xml/network/1'>\n"), "{xml}");
    assert!(xml.contains("  <kvmctl:interface dev='ens2'/>\n</network>"), "{xml}");

    // Host B: an isolated network with no address whose bridge enslaves the cable.
    define(&b, "lan.xml", LAN_B);
    assert_eq!(b.ok(&["net-start", "lan"]), "Network lan started\n");
    assert_eq!(master(&b.ns, "ens2").as_deref(), Some("br-lan"));
    assert!(!b.ns.ip(&["-4", "addr", "show", "br-lan"]).contains("inet "), "br-lan has no IPv4 address");
    let (state, problems) = net_state(&b, "lan");
    assert_eq!((state.as_str(), problems.as_str()), ("active", ""));

    // A VM on host B, on network lan.
    b.ok(&["-q", "vol-import", guest().join("tiny.qcow2").to_str().unwrap(), "--pool", "default"]);
    b.ok(&["-q", "vol-clone", "tiny.qcow2", "vmb.qcow2", "--pool", "default", "--linked"]);
    b.ok(&[
        "-q",
        "install",
        "--name",
        "vmb",
        "--memory",
        "256",
        "--disk",
        "vol=default/vmb.qcow2",
        "--network",
        "network=lan",
        "--import",
        "--noautoconsole",
    ]);
    let console = b.wait_console("vmb", "KVMCTL-GUEST-READY", 1, 300);
    let ready = console.lines().find(|l| l.starts_with("KVMCTL-GUEST-READY")).unwrap();
    assert!(ready.contains("eth0=192.168.122."), "the lease comes from host A's dnsmasq: {ready}");
    let mac = console
        .lines()
        .find(|l| l.starts_with("KVMCTL-NIC: eth0"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("mac=")))
        .unwrap()
        .to_string();
    let leases = a.ok(&["net-dhcp-leases", "default"]);
    assert!(leases.contains(&mac), "host A leased to the VM on host B ({mac}):\n{leases}");

    // Upstream knows nothing of 192.168.122.0/24: a reply reaches the guest only through A's NAT.
    assert!(!up.ip(&["route"]).contains("192.168.122"));
    let route = b.guest_ok("vmb", "ip route", 30);
    assert!(route.contains("default via 192.168.122.1"), "{route}");
    b.guest_ok("vmb", "ping -c 1 -W 5 192.168.122.1", 30);
    b.guest_ok("vmb", "ping -c 2 -W 5 10.96.0.2", 30);
    let rules = a.ns.ok(&["nft", "list", "table", "inet", "kvmctl_default"]);
    assert!(rules.contains("masquerade"), "{rules}");

    // Both hosts take it all down; the cable ends are as they were before.
    b.ok(&["destroy", "vmb"]);
    b.ok(&["net-destroy", "lan"]);
    a.ok(&["net-destroy", "default"]);
    assert_eq!(link_settings(&a.ns, "ens2"), a_before);
    assert_eq!(link_settings(&b.ns, "ens2"), b_before);
    for h in [&a, &b] {
        assert!(h.ns.ip(&["-br", "link", "show", "type", "bridge"]).trim().is_empty());
    }
}

const LAN: &str = "<network>
  <name>lan</name>
  <bridge name='br-t' stp='off'/>
  <mtu size='9000'/>
  <ip address='192.168.160.1' netmask='255.255.255.0'/>
</network>
";

fn toml(h: &VmHost, net: &str) -> String {
    std::fs::read_to_string(h.k.root().join(format!("networks/{net}.toml"))).unwrap()
}

/// Offline and live, attach and detach; net-destroy and --detach give the interface back
/// exactly (MTU, up/down, flags, addresses); a listed interface taken off the bridge makes the
/// network degraded, and net-start repairs it.
#[test]
fn net_attach_interface_live_and_offline_and_the_interface_comes_back_unchanged() {
    if !net_prereqs() {
        return;
    }
    let h = VmHost::new("t");
    let peer = Netns::new("p");
    // eth9: down, MTU 1400, an address. eth8: up, default MTU, no address of its own.
    h.ns.veth("eth9", &peer, "eth9");
    h.ns.ip(&["link", "set", "eth9", "down", "mtu", "1400"]);
    h.ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "eth9"]);
    h.ns.veth("eth8", &peer, "eth8");
    let before9 = settled(&h.ns, "eth9");
    let before8 = settled(&h.ns, "eth8");
    define(&h, "lan.xml", LAN);

    // Offline: the definition only (XML and TOML).
    let out = h.ok(&["net-attach-interface", "lan", "eth9"]);
    assert_eq!(out, "Interface eth9 attached to network lan (enslaved at the next net-start)\n");
    assert_eq!(master(&h.ns, "eth9"), None);
    let xml = h.ok(&["net-dumpxml", "lan"]);
    assert!(xml.starts_with("<network xmlns:kvmctl='https://kvmctl.dev/xml/network/1'>"), "{xml}");
    assert!(xml.contains("<kvmctl:interface dev='eth9'/>"), "{xml}");
    assert!(toml(&h, "lan").contains("[[interface]]\ndev = \"eth9\"\n"), "{}", toml(&h, "lan"));

    // net-start enslaves it (MTU of the network's <mtu>), net-destroy gives it back.
    h.ok(&["net-start", "lan"]);
    let (l, _) = link_settings(&h.ns, "eth9");
    assert_eq!((l["master"].as_str(), l["mtu"].as_u64()), (Some("br-t"), Some(9000)));
    assert!(l["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{l}");
    h.ok(&["net-destroy", "lan"]);
    assert_eq!(link_settings(&h.ns, "eth9"), before9);

    // Live --detach: released and put back, gone from the running and the persistent definition.
    h.ok(&["net-start", "lan"]);
    let out = h.ok(&["net-attach-interface", "lan", "eth9", "--detach"]);
    assert_eq!(out, "Interface eth9 detached from network lan (released from bridge br-t, its settings put back)\n");
    assert_eq!(link_settings(&h.ns, "eth9"), before9);
    for args in [&["net-dumpxml", "lan"][..], &["net-dumpxml", "lan", "--inactive"]] {
        let xml = h.ok(args);
        assert!(!xml.contains("kvmctl"), "{args:?}: {xml}");
    }
    assert!(!toml(&h, "lan").contains("interface"));

    // Live attach: enslaved now, in both definitions; the up interface too.
    for dev in ["eth9", "eth8"] {
        let out = h.ok(&["net-attach-interface", "lan", dev]);
        assert_eq!(out, format!("Interface {dev} attached to network lan (enslaved to bridge br-t)\n"));
        assert_eq!(master(&h.ns, dev).as_deref(), Some("br-t"));
    }
    for args in [&["net-dumpxml", "lan"][..], &["net-dumpxml", "lan", "--inactive"]] {
        let xml = h.ok(args);
        assert!(xml.contains("  <kvmctl:interface dev='eth9'/>\n  <kvmctl:interface dev='eth8'/>\n"), "{xml}");
    }
    assert_eq!(net_state(&h, "lan"), ("active".to_string(), String::new()));

    // Taken off the bridge behind kvmctl's back: degraded, named; net-start puts it back.
    h.ns.ip(&["link", "set", "eth8", "nomaster"]);
    let (state, problems) = net_state(&h, "lan");
    assert_eq!((state.as_str(), problems.as_str()), ("degraded", "interface eth8 is not attached to bridge br-t"));
    let out = h.ok(&["net-start", "lan"]);
    assert!(
        out.contains("Network lan repaired (it was degraded: interface eth8 is not attached to bridge br-t)"),
        "{out}"
    );
    assert_eq!(master(&h.ns, "eth8").as_deref(), Some("br-t"));

    h.ok(&["net-destroy", "lan"]);
    assert_eq!(link_settings(&h.ns, "eth9"), before9);
    assert_eq!(link_settings(&h.ns, "eth8"), before8);
    assert!(h.ns.ip(&["-br", "link", "show", "type", "bridge"]).trim().is_empty());
}

/// Every refusal of net-attach-interface: its message, exit 1, the definition and the running
/// state unchanged. And a start whose listed interface is missing fails naming it, leaving
/// nothing behind.
#[test]
fn net_attach_interface_refusals_name_the_reason_and_change_nothing() {
    if !net_prereqs() {
        return;
    }
    let h = VmHost::new("r");
    let peer = Netns::new("q");
    h.ns.veth("eth9", &peer, "eth9");
    h.ns.veth("eth7", &peer, "eth7");
    h.ns.ip(&["link", "add", "brx", "type", "bridge"]);
    h.ns.ip(&["link", "set", "eth7", "master", "brx"]);
    h.ns.ip(&["tuntap", "add", "vnet0", "mode", "tap"]);
    define(&h, "lan.xml", LAN);
    define(&h, "lan2.xml", &LAN.replace("lan", "lan2").replace("br-t", "br-t2").replace("160", "161"));
    define(&h, "hb.xml", "<network><name>hb</name><forward mode='bridge'/><bridge name='brx'/></network>");
    h.ok(&["net-start", "lan"]);
    h.ok(&["net-attach-interface", "lan", "eth9"]);

    let snapshot = |h: &VmHost| {
        let run = std::fs::read_to_string(h.k.root().join("run/networks/lan/state.json")).unwrap();
        (toml(h, "lan"), toml(h, "lan2"), toml(h, "hb"), run, h.ns.ip(&["-o", "link"]))
    };
    let before = snapshot(&h);
    let refusals: [(&[&str], &str); 10] = [
        (&["lan", "nope0"], "network 'lan': interface nope0 does not exist"),
        (&["lan", "eth7"], "network 'lan': interface eth7 is already enslaved to bridge brx"),
        (&["lan", "br-t"], "network 'lan': <kvmctl:interface dev='br-t'>: is the network's own bridge"),
        (&["lan", "vnet0"], "network 'lan': interface vnet0 is a VM tap"),
        (&["lan", "brx"], "network 'lan': interface brx is a bridge"),
        (
            &["hb", "eth9"],
            "network 'hb' is in bridge mode: its bridge brx is the administrator's, there is nothing to attach",
        ),
        (&["lan", "eth9"], "network 'lan': interface eth9 is already attached"),
        (&["lan2", "eth9"], "network 'lan2': interface eth9 is already attached to network 'lan'"),
        (&["lan", "eth7", "--detach"], "network 'lan': interface eth7 is not attached"),
        (&["nonet", "eth9"], "network 'nonet' not found"),
    ];
    for (args, want) in refusals {
        let mut argv = vec!["net-attach-interface"];
        argv.extend_from_slice(args);
        let err = h.fails(1, &argv);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(snapshot(&h) == before, "{args:?} changed something");
    }
    // Also offline: a loopback, a name no interface can have.
    let lan2 = toml(&h, "lan2");
    assert!(h.fails(1, &["net-attach-interface", "lan2", "lo"]).contains("is the loopback interface"));
    assert!(h.fails(1, &["net-attach-interface", "lan2", "a/b"]).contains("is not a valid interface name"));
    assert_eq!(toml(&h, "lan2"), lan2);

    // A listed interface missing at net-start: the start fails naming it and is rolled back.
    let out = h.ok(&["net-attach-interface", "lan2", "gone0"]);
    assert_eq!(
        out,
        "Interface gone0 attached to network lan2 (enslaved at the next net-start; gone0 does not exist now)\n"
    );
    let err = h.fails(1, &["net-start", "lan2"]);
    assert!(err.contains("network 'lan2': interface gone0 does not exist"), "{err}");
    assert_eq!(net_state(&h, "lan2").0, "inactive");
    assert!(h.ns.exec(&["ip", "link", "show", "br-t2"]).status.code() != Some(0), "bridge br-t2 left behind");
    assert!(!h.k.root().join("run/networks/lan2").exists());
    assert!(!h.ns.ok(&["nft", "list", "tables"]).contains("kvmctl_lan2"));

    h.ok(&["net-destroy", "lan"]);
    assert_eq!(master(&h.ns, "eth9"), None);
}
