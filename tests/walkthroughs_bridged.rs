//! Issue 12, scenarios 2 (Bridged, seeds 001 and 003) and 6 (Mixed, seed 003's closing note),
//! and `iface-bridge` / `iface-unbridge` (the seeds' `brctl addbr` + `brctl addif` + moving
//! the ifcfg addressing): exact restore, every refusal, a kill at every step.
//!
//! All of it runs inside namespaces the tests create: the "host" namespace where kvmctl runs
//! holds the "physical" interface `eth0` (a veth, 10.77.0.5/24, default route via 10.77.0.1),
//! the "lan" namespace holds its other end and a DHCP server (a dnsmasq the test starts with
//! explicit arguments) for 10.77.0.0/24. Needs root, ip, dnsmasq, python3; the VM tests also
//! qemu and the test guest (images/build.sh); the kill test the `fault-injection` feature.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::netns::{can_netns, Netns};
use common::vmhost::VmHost;
use common::*;

fn prereqs() -> bool {
    require("root, ip, dnsmasq, python3", can_netns() && ["dnsmasq", "python3"].iter().all(|p| have_program(p)))
}

fn vm_prereqs() -> bool {
    prereqs()
        && require(
            "qemu-system-x86_64 and the test guest (images/build.sh)",
            have_program("qemu-system-x86_64") && guest_dir().join("tiny.qcow2").exists(),
        )
}

/// The seed's bridged_network.xml (003), as `virsh net-dumpxml` showed it.
const BRIDGED_XML: &str = "<network>\n  <name>bridged_network</name>\n  \
    <uuid>6579db1f-ca49-4e51-a116-c1342cd5d47a</uuid>\n  <forward mode='bridge'/>\n  \
    <bridge name='mybridge0'/>\n</network>\n";

/// A host with a "physical" interface on a LAN that has its own DHCP server.
struct Lan {
    h: VmHost,
    lan: Netns,
    dnsmasq: Option<std::process::Child>,
    leases: PathBuf,
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Lan {
    fn new(tag: &str) -> Lan {
        let h = VmHost::new(tag);
        let lan = Netns::new("l");
        h.ns.veth("eth0", &lan, "lan0");
        let host = |a: &[&str]| h.ns.ip(a);
        host(&["link", "set", "eth0", "mtu", "1400"]);
        lan.ip(&["link", "set", "lan0", "mtu", "1400"]);
        host(&["addr", "add", "10.77.0.5/24", "dev", "eth0"]);
        host(&["addr", "add", "10.77.0.6/24", "dev", "eth0"]);
        host(&["addr", "add", "fd77::5/64", "dev", "eth0", "nodad"]);
        host(&["route", "add", "default", "via", "10.77.0.1", "metric", "7"]);
        host(&["route", "add", "10.88.0.0/24", "via", "10.77.0.1", "proto", "static", "metric", "50"]);
        host(&["route", "add", "10.99.0.0/24", "dev", "eth0", "scope", "link"]);
        host(&["-6", "route", "add", "fd78::/64", "via", "fd77::1"]);
        lan.ip(&["addr", "add", "10.77.0.1/24", "dev", "lan0"]);
        lan.ip(&["addr", "add", "fd77::1/64", "dev", "lan0", "nodad"]);
        let dir = h.k.dir.path();
        let leases = dir.join("lan.leases");
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &lan.name, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null"])
            .args(["--port=0", "--no-hosts", "--no-resolv", "--interface=lan0", "--bind-interfaces"])
            .args(["--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h", "--dhcp-option=option:router,10.77.0.1"])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--pid-file={}", dir.join("lan-dnsmasq.pid").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Lan { h, lan, dnsmasq: Some(child), leases }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.h.ok(args)
    }

    /// Require exit 1; returns stderr.
    fn refused(&self, args: &[&str]) -> String {
        self.h.fails(1, args)
    }

    /// `ip -j` of addresses, links, IPv4 and IPv6 routes of the host namespace, once it has
    /// settled: no address in duplicate address detection, and the same a moment later (a
    /// new bridge gets its carrier and link-local address shortly after it is up).
    fn snapshot(&self) -> Vec<serde_json::Value> {
        let take = || -> Vec<String> {
            let ns = &self.h.ns;
            vec![ns.ip(&["-j", "addr"]), ns.ip(&["-j", "link"]), ns.ip(&["-j", "route"]), ns.ip(&["-j", "-6", "route"])]
        };
        let t0 = Instant::now();
        let mut last = take();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = take();
            let settled = now == last && !now[0].contains("\"tentative\"");
            if settled || t0.elapsed() > Duration::from_secs(20) {
                return now.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
            }
            last = now;
        }
    }

    fn record(&self, bridge: &str) -> PathBuf {
        self.h.k.root().join(format!("ifaces/{bridge}.toml"))
    }

    fn records(&self) -> Vec<String> {
        tree(&self.h.k.root().join("ifaces"))
    }

    fn link(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.h.ns.ip(&["-d", "-j", "link", "show", name])).unwrap();
        v[0].clone()
    }

    fn has_link(&self, name: &str) -> bool {
        self.h.ns.exec(&["ip", "link", "show", name]).status.success()
    }

    fn define_bridged_network(&self) {
        let f = self.h.k.dir.path().join("bridged_network.xml");
        std::fs::write(&f, BRIDGED_XML).unwrap();
        let out = self.ok(&["net-define", f.to_str().unwrap()]);
        assert!(out.contains("Network bridged_network defined"), "{out}");
    }

    /// A VM from a linked clone of the tiny disk on `net`.
    fn vm(&self, name: &str, net: &str) {
        if !self.h.k.images().join("tiny.qcow2").exists() {
            self.ok(&["-q", "vol-import", guest_dir().join("tiny.qcow2").to_str().unwrap(), "--pool", "default"]);
        }
        let disk = format!("{name}.qcow2");
        self.ok(&["-q", "vol-clone", "tiny.qcow2", &disk, "--pool", "default", "--linked"]);
        let vol = format!("vol=default/{disk}");
        let netarg = format!("network={net}");
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
            &netarg,
            "--import",
            "--noautoconsole",
        ]);
    }

    /// The address the guest leased (from its ready line) and its MAC.
    fn ready(&self, vm: &str) -> (String, String) {
        let log = self.h.wait_console(vm, "KVMCTL-GUEST-READY", 1, 300);
        let nic = log.lines().find(|l| l.starts_with("KVMCTL-NIC: eth0")).unwrap_or("");
        let mac = nic.split_whitespace().find_map(|w| w.strip_prefix("mac=")).unwrap_or("").to_string();
        let ready = log.lines().rfind(|l| l.starts_with("KVMCTL-GUEST-READY")).unwrap_or("");
        let addr = ready.split_whitespace().find_map(|w| w.strip_prefix("eth0=")).unwrap_or("");
        (addr.split('/').next().unwrap().to_string(), mac)
    }

    fn tap(&self, vm: &str) -> String {
        let st: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.h.k.root().join(format!("run/domains/{vm}/state.json"))).unwrap(),
        )
        .unwrap();
        st["taps"][0].as_str().unwrap().to_string()
    }
}

/// ICMP echo from `ns` to `addr` (raw socket; the namespaces have no ping binary), retried
/// for up to `secs` (a new bridge port with STP on forwards after 2 x 2 s).
fn pings(ns: &Netns, addr: &str, secs: u64) -> bool {
    let code = format!(
        "import socket,struct,sys,time\n\
         def cs(b):\n s=sum(struct.unpack('!%dH'%(len(b)//2),b));s=(s>>16)+(s&0xffff);s+=s>>16;return ~s&0xffff\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP);s.settimeout(1)\n\
         end=time.time()+{secs}\ni=0\n\
         while time.time()<end:\n i+=1\n h=struct.pack('!BBHHH',8,0,0,0x4b56,i);h=struct.pack('!BBHHH',8,0,cs(h+b'kvmctl!!'),0x4b56,i)\n \
         try:\n  s.sendto(h+b'kvmctl!!',('{addr}',0))\n except OSError: time.sleep(1); continue\n try:\n  while True:\n   d,a=s.recvfrom(1500)\n   \
         if a[0]=='{addr}' and d[20]==0: sys.exit(0)\n except socket.timeout: pass\nsys.exit(1)\n"
    );
    ns.exec(&["python3", "-c", &code]).status.success()
}

/// Everything a refusal must leave as it was.
fn assert_unchanged(t: &Lan, before: &[serde_json::Value], what: &str) {
    assert_eq!(t.snapshot(), before, "{what}: the host's links, addresses or routes changed");
    assert!(t.records().is_empty(), "{what}: records left: {:?}", t.records());
}

#[test]
fn iface_bridge_moves_addresses_and_routes_and_unbridge_restores_them_exactly() {
    if !prereqs() {
        return;
    }
    let t = Lan::new("b");
    let before = t.snapshot();
    let out = t.ok(&["iface-bridge", "eth0", "mybridge0"]);
    assert!(out.contains("Created bridge mybridge0 with attached device eth0"), "{out}");
    assert!(out.contains("10.77.0.5/24, 10.77.0.6/24, fd77::5/64") && out.contains("route default via 10.77.0.1"));
    // The bridge carries the addresses and routes, eth0 is its port, STP on with the
    // kernel's minimum forward delay (virsh's default is STP on, delay 0), the MTU and MAC
    // are eth0's.
    let br = t.link("mybridge0");
    assert_eq!(br["linkinfo"]["info_data"]["stp_state"], 1, "{br}");
    assert_eq!(br["mtu"], 1400);
    assert_eq!(br["address"], t.link("eth0")["address"]);
    assert_eq!(t.link("eth0")["master"], "mybridge0");
    let addrs = t.h.ns.ip(&["addr", "show", "mybridge0"]);
    for a in ["10.77.0.5/24", "10.77.0.6/24", "fd77::5/64"] {
        assert!(addrs.contains(a), "{a} on the bridge: {addrs}");
    }
    assert!(!t.h.ns.ip(&["-4", "addr", "show", "eth0"]).contains("inet"), "eth0 keeps no IPv4 address");
    let routes = t.h.ns.ip(&["route"]);
    for r in [
        "default via 10.77.0.1 dev mybridge0 metric 7",
        "10.88.0.0/24 via 10.77.0.1 dev mybridge0 proto static metric 50",
        "10.99.0.0/24 dev mybridge0 scope link",
    ] {
        assert!(routes.contains(r), "{r}: {routes}");
    }
    assert!(t.h.ns.ip(&["-6", "route"]).contains("fd78::/64 via fd77::1 dev mybridge0"));
    assert!(pings(&t.h.ns, "10.77.0.1", 20), "the host reaches the LAN through the bridge");
    // The record: phase, what was moved.
    let rec = std::fs::read_to_string(t.record("mybridge0")).unwrap();
    assert!(rec.contains("interface = \"eth0\"") && rec.contains("phase = \"bridged\"") && rec.contains("mtu = 1400"));
    let list = t.ok(&["iface-list"]);
    assert!(list.contains("mybridge0") && list.contains("(iface-bridge of eth0)"), "{list}");
    let json: serde_json::Value = serde_json::from_str(&t.ok(&["--json", "iface-list"])).unwrap();
    let eth0 = json.as_array().unwrap().iter().find(|v| v["name"] == "eth0").unwrap().clone();
    assert_eq!(eth0["master"], "mybridge0");
    // Unbridge: exactly as before (links, addresses with flags and order, routes with metrics,
    // protocols and scopes), no record.
    let out = t.ok(&["iface-unbridge", "mybridge0"]);
    assert!(out.contains("Device eth0 un-attached from bridge mybridge0"), "{out}");
    assert_eq!(t.snapshot(), before);
    assert!(t.records().is_empty(), "{:?}", t.records());
    assert!(pings(&t.h.ns, "10.77.0.1", 20), "the host reaches the LAN through eth0 again");

    // --no-stp and --delay; a down interface comes back down.
    t.h.ns.ip(&["link", "set", "eth0", "down"]);
    let down = t.snapshot();
    t.ok(&["iface-bridge", "eth0", "mybridge0", "--no-stp", "--delay", "3"]);
    let br = t.link("mybridge0");
    assert_eq!(br["linkinfo"]["info_data"]["stp_state"], 0, "{br}");
    assert_eq!(br["linkinfo"]["info_data"]["forward_delay"], 300, "{br}");
    assert!(t.h.ns.ip(&["addr", "show", "mybridge0"]).contains("10.77.0.5/24"));
    t.ok(&["iface-unbridge", "mybridge0"]);
    assert_eq!(t.snapshot(), down);
    assert!(t.fails_usage(&["iface-bridge", "eth0", "mybridge0", "--delay", "31"]).contains("31"));
}

impl Lan {
    fn fails_usage(&self, args: &[&str]) -> String {
        self.h.fails(2, args)
    }
}

#[test]
fn iface_bridge_and_unbridge_refuse_with_the_reason_and_change_nothing() {
    if !prereqs() {
        return;
    }
    let t = Lan::new("r");
    t.h.ns.veth("eth1", &t.lan, "lan1");
    t.h.ns.ip(&["link", "add", "brx", "type", "bridge"]);
    t.h.ns.veth("eth2", &t.lan, "lan2");
    t.h.ns.ip(&["addr", "add", "10.66.0.5/24", "dev", "eth2"]);
    t.h.ns.ip(&["link", "set", "eth2", "master", "brx"]);
    let before = t.snapshot();
    let cases: &[(&[&str], &str)] = &[
        (
            &["iface-bridge", "eth1", "br1"],
            "cannot bridge eth1: it has no IP address to move onto br1 (iface-bridge moves a configured interface's addresses",
        ),
        (&["iface-bridge", "eth2", "br2"], "cannot bridge eth2: it is already a port of brx"),
        (&["iface-bridge", "eth0", "brx"], "cannot create bridge brx: a bridge link of that name exists already"),
        (&["iface-bridge", "eth0", "eth1"], "cannot create bridge eth1: a veth link of that name exists already"),
        (&["iface-bridge", "eth9", "br1"], "interface eth9 does not exist"),
        (&["iface-bridge", "lo", "br1"], "cannot bridge lo: it is the loopback device, not a host interface"),
        (&["iface-bridge", "brx", "br1"], "cannot bridge brx: it is a bridge, not a host interface"),
        (
            &["iface-bridge", "eth0", "abcdefghijklmnop"],
            "interface name 'abcdefghijklmnop' is 16 bytes long; the kernel allows at most 15",
        ),
        (&["iface-bridge", "eth0/x", "br1"], "interface name 'eth0/x' contains '/'"),
        (&["iface-unbridge", "brx"], "cannot unbridge brx: it was not created by kvmctl iface-bridge (no record"),
        (&["iface-unbridge", "nobr0"], "bridge nobr0 does not exist"),
        (&["iface-unbridge", "abcdefghijklmnop"], "is 16 bytes long"),
    ];
    for (args, want) in cases {
        let e = t.refused(args);
        assert!(e.contains(want), "{args:?}: {e}");
        assert_unchanged(&t, &before, &format!("{args:?}"));
    }
    // Unbridge of a bridge with another port, or with a network active on it.
    t.ok(&["iface-bridge", "eth0", "mybridge0", "--no-stp"]);
    let bridged = t.snapshot();
    t.h.ns.ip(&["link", "set", "eth1", "master", "mybridge0"]);
    let with_port = t.snapshot();
    let e = t.refused(&["iface-unbridge", "mybridge0"]);
    assert!(e.contains("cannot unbridge mybridge0: besides eth0 it has the ports eth1; detach them first"), "{e}");
    assert_eq!(t.snapshot(), with_port);
    t.h.ns.ip(&["link", "set", "eth1", "nomaster"]);
    t.define_bridged_network();
    t.ok(&["net-start", "bridged_network"]);
    let e = t.refused(&["iface-unbridge", "mybridge0"]);
    assert!(e.contains("network 'bridged_network' is active on it; net-destroy bridged_network first"), "{e}");
    t.ok(&["net-destroy", "bridged_network"]);
    assert_eq!(t.snapshot(), bridged);
    // The same bridge again, and the same interface onto a second bridge.
    let e = t.refused(&["iface-bridge", "eth0", "mybridge0"]);
    assert!(e.contains("cannot bridge eth0: it is already a port of mybridge0"), "{e}");
    let e = t.refused(&["iface-bridge", "eth0", "mybridge1"]);
    assert!(e.contains("already a port of mybridge0"), "{e}");
    assert_eq!(t.snapshot(), bridged);
    t.ok(&["iface-unbridge", "mybridge0"]);
    assert_unchanged(&t, &before, "after the unbridge");
}

/// A kill -9 at every step of iface-bridge and iface-unbridge; the next iface-bridge or
/// iface-unbridge puts the interface back exactly (an interrupted iface-bridge is undone, an
/// interrupted iface-unbridge finished), and a new iface-bridge works.
#[test]
fn an_iface_bridge_or_unbridge_killed_at_any_step_is_repaired_by_the_next_command() {
    if !prereqs() || !require("the fault-injection feature", cfg!(feature = "fault-injection")) {
        return;
    }
    let t = Lan::new("f");
    let before = t.snapshot();
    let killed = |point: &str, args: &[&str]| {
        let o = t.h.k.in_ns_env(&t.h.ns, &[("KVMCTL_FAULT", point)], args);
        assert_eq!(o.status.signal(), Some(9), "{point}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let points = ["recorded", "bridge-created", "addresses-removed", "enslaved", "addresses-moved", "routes-moved"];
    for (i, p) in points.iter().enumerate() {
        let point = format!("iface-bridge.{p}");
        killed(&point, &["iface-bridge", "eth0", "mybridge0", "--no-stp"]);
        assert!(t.record("mybridge0").exists(), "{point}: the intent was recorded first");
        let list = t.ok(&["iface-list", "--all"]);
        if t.has_link("mybridge0") {
            assert!(list.contains("interrupted iface command on eth0"), "{point}: {list}");
        }
        let undone = "Undid an interrupted iface-bridge of eth0 onto mybridge0: eth0 has its addresses and routes back";
        if i % 2 == 0 {
            let out = t.ok(&["iface-unbridge", "mybridge0"]);
            assert!(out.contains(undone), "{point}: {out}");
        } else {
            let out = t.ok(&["iface-bridge", "eth0", "mybridge0", "--no-stp"]);
            assert!(out.contains(undone) && out.contains("Created bridge mybridge0"), "{point}: {out}");
            t.ok(&["iface-unbridge", "mybridge0"]);
        }
        assert_unchanged(&t, &before, &point);
    }
    for (i, p) in ["recorded", "released", "bridge-deleted", "addresses-restored"].iter().enumerate() {
        let point = format!("iface-unbridge.{p}");
        t.ok(&["iface-bridge", "eth0", "mybridge0", "--no-stp"]);
        killed(&point, &["iface-unbridge", "mybridge0"]);
        let finished = "Finished an interrupted iface-unbridge of eth0 onto mybridge0";
        if i % 2 == 0 {
            let out = t.ok(&["iface-unbridge", "mybridge0"]);
            assert!(out.contains(finished) && !out.contains("un-attached"), "{point}: {out}");
        } else {
            let out = t.ok(&["iface-bridge", "eth0", "mybridge0", "--no-stp"]);
            assert!(out.contains(finished) && out.contains("Created bridge mybridge0"), "{point}: {out}");
            t.ok(&["iface-unbridge", "mybridge0"]);
        }
        assert_unchanged(&t, &before, &point);
    }
    assert!(pings(&t.h.ns, "10.77.0.1", 20), "the host reaches the LAN through eth0");
}

/// Scenario 2 (seeds 001, 003): `brctl addbr mybridge0` + `brctl addif mybridge0 enp0s25` +
/// moving the address become `iface-bridge`; the seed's bridged_network.xml runs on the
/// bridge; the VM leases from the LAN's DHCP server and the LAN reaches it directly.
#[test]
fn bridged_walkthrough_vm_leases_from_the_lan_and_the_lan_reaches_it() {
    if !vm_prereqs() {
        return;
    }
    let t = Lan::new("w");
    let before = t.snapshot();
    // The seed's brctl show has STP off on mybridge0.
    t.ok(&["iface-bridge", "eth0", "mybridge0", "--no-stp"]);
    t.define_bridged_network();
    assert!(t.ok(&["net-start", "bridged_network"]).contains("Network bridged_network started"));
    let list = t.ok(&["net-list"]);
    assert!(list.lines().any(|l| l.contains("bridged_network") && l.contains("active")), "{list}");
    t.vm("vm3", "bridged_network");
    let (addr, mac) = t.ready("vm3");
    let last: u8 = addr.strip_prefix("10.77.0.").and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!((100..=150).contains(&last), "vm3 leased {addr} from the LAN's range");
    let leases = std::fs::read_to_string(&t.leases).unwrap();
    assert!(leases.contains(&mac) && leases.contains(&addr), "the LAN's dnsmasq gave it: {leases}");
    // brctl show: mybridge0 has eth0 and the VM's tap.
    let tap = t.tap("vm3");
    let ifl = t.ok(&["iface-list"]);
    for port in ["eth0", tap.as_str()] {
        assert!(ifl.lines().any(|l| l.split_whitespace().next() == Some(port) && l.contains("mybridge0")), "{ifl}");
    }
    // The LAN reaches the VM directly, the VM its gateway, the host the VM.
    assert!(pings(&t.lan, &addr, 30), "the LAN reaches vm3 at {addr}");
    t.h.guest_ok("vm3", "ping -c 1 -W 5 10.77.0.1", 60);
    assert!(pings(&t.h.ns, &addr, 10), "the host reaches vm3 over the bridge");
    // Unbridge refuses while the VM's tap is on the bridge, naming it.
    let e = t.refused(&["iface-unbridge", "mybridge0"]);
    assert!(
        e.contains(&format!("besides eth0 it has the ports {tap} (tap of VM 'vm3' on network 'bridged_network')")),
        "{e}"
    );
    t.ok(&["destroy", "vm3"]);
    t.ok(&["net-destroy", "bridged_network"]);
    t.ok(&["iface-unbridge", "mybridge0"]);
    assert_unchanged(&t, &before, "after the walkthrough");
}

/// Scenario 6 (seed 003's closing note): the NAT default network and the bridged network
/// active at once, a VM on each; each gets its address from its own network's DHCP server.
#[test]
fn mixed_walkthrough_nat_and_bridged_vms_side_by_side() {
    if !vm_prereqs() {
        return;
    }
    let t = Lan::new("m");
    let before = t.snapshot();
    t.ok(&["iface-bridge", "eth0", "mybridge0", "--no-stp"]);
    t.define_bridged_network();
    t.ok(&["net-start", "bridged_network"]);
    t.ok(&["net-start", "default"]);
    let list = t.ok(&["net-list"]);
    for n in ["bridged_network", "default"] {
        assert!(list.lines().any(|l| l.contains(n) && l.contains("active")), "{list}");
    }
    t.vm("vm1", "default");
    t.vm("vm3", "bridged_network");
    let (nat_addr, nat_mac) = t.ready("vm1");
    let (br_addr, br_mac) = t.ready("vm3");
    assert!(nat_addr.starts_with("192.168.122."), "vm1 leased {nat_addr} from kvmctl's dnsmasq");
    assert!(br_addr.starts_with("10.77.0.1"), "vm3 leased {br_addr} from the LAN");
    let kvm_leases = t.ok(&["net-dhcp-leases", "default"]);
    assert!(kvm_leases.contains(&nat_addr) && !kvm_leases.contains(&br_mac), "{kvm_leases}");
    let lan_leases = std::fs::read_to_string(&t.leases).unwrap();
    assert!(lan_leases.contains(&br_addr) && !lan_leases.contains(&nat_mac), "{lan_leases}");
    // The NAT VM reaches its gateway, the LAN (masqueraded) and the bridged VM; the bridged
    // VM reaches the LAN and the LAN reaches it, but not the NAT VM (no route to it).
    t.h.guest_ok("vm1", "ping -c 1 -W 5 192.168.122.1", 60);
    t.h.guest_ok("vm1", "ping -c 1 -W 5 10.77.0.1", 60);
    t.h.guest_ok("vm1", &format!("ping -c 1 -W 5 {br_addr}"), 60);
    t.h.guest_ok("vm3", "ping -c 1 -W 5 10.77.0.1", 60);
    assert!(pings(&t.lan, &br_addr, 30), "the LAN reaches vm3");
    assert!(!pings(&t.lan, &nat_addr, 2), "the LAN has no way to the NAT VM");
    for vm in ["vm1", "vm3"] {
        t.ok(&["destroy", vm]);
    }
    t.ok(&["net-destroy", "default"]);
    t.ok(&["net-destroy", "bridged_network"]);
    t.ok(&["iface-unbridge", "mybridge0"]);
    assert_unchanged(&t, &before, "after the walkthrough");
}
