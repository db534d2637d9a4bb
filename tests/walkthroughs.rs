//! Issue 12: the seeds' libvirt networking walkthroughs (seeds 003 and 004), run for real with
//! tiny guests. Each test is one README section ("## Networking walkthroughs"): the same kvmctl
//! commands a person types, then what the guests and an "upstream" machine see.
//!
//! Topology (all of it inside namespaces the test creates, deleted on drop even on failure):
//!
//! ```text
//!   guests --tap-- [bridge of the network]  host ns (kvmctl, dnsmasq, nft)  up0 10.99.0.1/24
//!                                                     | veth, default route via 10.99.0.2
//!                                            upstream ns ("the internet")    eth0 10.99.0.2/24
//! ```
//!
//! Needs root, qemu, dnsmasq, nft, python3 and the test guest (images/build.sh).

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};

use common::netns::{can_netns, Netns};
use common::vmhost::VmHost;
use common::*;

const HOST_UP: &str = "10.99.0.1";
const UPSTREAM: &str = "10.99.0.2";

fn prereqs() -> bool {
    require(
        "root, qemu-system-x86_64, dnsmasq, nft, python3 and the test guest (images/build.sh)",
        can_netns()
            && ["qemu-system-x86_64", "dnsmasq", "nft", "python3"].iter().all(|p| have_program(p))
            && guest_dir().join("tiny.qcow2").exists(),
    )
}

/// The host namespace where kvmctl runs (with its state root) and the upstream namespace,
/// joined by a veth; the host's default route points upstream, upstream has no route back
/// into any guest subnet unless a test adds one.
struct Walk {
    h: VmHost,
    up: Netns,
    t0: std::time::Instant,
}

/// What a guest printed about its NIC at boot (`KVMCTL-NIC: eth0 mac=.. driver=.. addr=..`).
#[derive(Debug, Clone)]
struct Nic {
    mac: String,
    /// `a.b.c.d/nn`, or `none` without a lease.
    addr: String,
}

impl Nic {
    /// The address without its prefix length.
    fn ip(&self) -> &str {
        self.addr.split('/').next().unwrap()
    }
}

impl Walk {
    fn new() -> Walk {
        let h = VmHost::new("w");
        let up = Netns::new("u");
        h.ns.veth("up0", &up, "eth0");
        h.ns.ip(&["addr", "add", &format!("{HOST_UP}/24"), "dev", "up0"]);
        up.ip(&["addr", "add", &format!("{UPSTREAM}/24"), "dev", "eth0"]);
        h.ns.ip(&["route", "add", "default", "via", UPSTREAM]);
        h.ok(&["-q", "vol-import", guest_dir().join("tiny.qcow2").to_str().unwrap(), "--pool", "default"]);
        Walk { h, up, t0: std::time::Instant::now() }
    }

    /// Log a step with the time since the topology was set up (shown with --nocapture or on
    /// failure).
    fn step(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.t0.elapsed().as_secs_f64());
    }

    /// `kvmctl net-define FILE` of `xml` saved as `file` (as the seed's `cat` shows it).
    fn net_define(&self, file: &str, xml: &str) -> String {
        let f = self.h.k.dir.path().join(file);
        std::fs::write(&f, xml).unwrap();
        self.h.ok(&["net-define", f.to_str().unwrap()])
    }

    /// A VM on a linked clone of the tiny disk, installed as the seed installs it
    /// (`--network network=NET --graphics none`); it boots in the background.
    fn vm(&self, name: &str, network: &str) {
        let disk = format!("{}.qcow2", name.to_lowercase());
        self.h.ok(&["-q", "vol-clone", "tiny.qcow2", &disk, "--pool", "default", "--linked"]);
        let vol = format!("vol=default/{disk}");
        self.h.ok(&[
            "-q",
            "install",
            "--name",
            name,
            "--memory",
            "256",
            "--network",
            network,
            "--graphics",
            "none",
            "--disk",
            &vol,
            "--import",
            "--noautoconsole",
        ]);
    }

    /// Wait for the guest's readiness line; returns its eth0 as the guest saw it.
    fn ready(&self, vm: &str) -> Nic {
        let log = self.h.wait_console(vm, "KVMCTL-GUEST-READY", 1, 300);
        let line = log
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix("KVMCTL-NIC: eth0 ").map(str::to_string))
            .unwrap_or_else(|| panic!("{vm}: no KVMCTL-NIC line for eth0:\n{log}"));
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .unwrap_or_else(|| panic!("{vm}: no {k} in {line}"))
                .to_string()
        };
        Nic { mac: field("mac="), addr: field("addr=") }
    }

    /// The MAC kvmctl gave the VM's first NIC (`domiflist`).
    fn mac_of(&self, vm: &str) -> String {
        let j: serde_json::Value = serde_json::from_str(&self.h.ok(&["--json", "domiflist", vm])).unwrap();
        j[0]["mac"].as_str().unwrap().to_string()
    }

    /// Does `vm` get an answer to a ping of `addr`?
    fn guest_pings(&self, vm: &str, addr: &str) -> bool {
        self.h.guest_sh(vm, &format!("ping -c 1 -W 5 {addr}"), 60).0 == 0
    }

    /// Start a one-connection TCP listener in `vm` on `port` (background; what it receives
    /// goes to /tmp/in.PORT).
    fn guest_listen(&self, vm: &str, port: u16) {
        self.h.guest_ok(vm, &format!("{{ nc -l -p {port} </dev/null >/tmp/in.{port} 2>&1 & }}"), 30);
        // The shell returns once nc is forked; give it a moment to bind.
        self.h.guest_ok(vm, &format!("sleep 1; netstat -tln | grep -q ':{port} '"), 30);
    }

    /// From `vm`, open a TCP connection to `addr:port`, send `text` and close: true if it went
    /// through.
    fn guest_sends(&self, vm: &str, addr: &str, port: u16, text: &str) -> bool {
        self.h.guest_sh(vm, &format!("echo {text} | timeout 10 nc -w 5 {addr} {port}"), 60).0 == 0
    }
}

/// A helper process (a python3 server or client inside a namespace); killed and reaped on drop.
struct Helper(Option<Child>);

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Helper {
    /// Run python3 `code` in `ns`; returns once it printed its first line (which must be `want`).
    fn start(ns: &Netns, code: &str, want: &str) -> Helper {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", code])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.as_mut().unwrap();
        let mut buf = [0u8; 1];
        while !line.ends_with('\n') {
            if stdout.read(&mut buf).unwrap() == 0 {
                break;
            }
            line.push(buf[0] as char);
        }
        let helper = Helper(Some(child));
        assert_eq!(line.trim(), want, "python helper in {}", ns.name);
        helper
    }

    /// Everything else the helper printed, after it exited by itself.
    fn finish(mut self) -> String {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A one-connection TCP server in `ns` on `addr:port` (IPv4 or IPv6; 60 s to get it); `peer_of` tells who
/// connected and what it sent.
fn tcp_server(ns: &Netns, addr: &str, port: u16) -> Helper {
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{addr}',{port}))\ns.listen(1)\ns.settimeout(60)\nprint('READY',flush=True)\n\
         c,a=s.accept()\nc.settimeout(10)\nd=c.recv(100).decode().strip()\nprint('PEER',a[0],d,flush=True)\n"
    );
    Helper::start(ns, &code, "READY")
}

/// (peer address, first line it sent) of the connection `server` accepted.
fn peer_of(server: Helper) -> (String, String) {
    let out = server.finish();
    let line = out.lines().find_map(|l| l.strip_prefix("PEER ")).unwrap_or_else(|| panic!("no connection: {out}"));
    let mut f = line.splitn(2, ' ');
    (f.next().unwrap().to_string(), f.next().unwrap_or("").to_string())
}

/// Try a TCP connection from `ns` (10 s timeout, far above a connection's setup time inside
/// one machine): true if it was accepted.
fn connects(ns: &Netns, addr: &str, port: u16) -> bool {
    let code = format!("import socket\ns=socket.create_connection(('{addr}',{port}),timeout=10)\ns.close()\n");
    ns.exec(&["python3", "-c", &code]).status.success()
}

/// A TCP client in `ns` that connects to `addr:port`, sends `text` and keeps the connection
/// open (up to 60 s) so the other side can look at it.
fn tcp_hold(ns: &Netns, addr: &str, port: u16, text: &str) -> Helper {
    let code = format!(
        "import socket,time\ns=socket.create_connection(('{addr}',{port}),timeout=10)\n\
         s.sendall(b'{text}\\n')\nprint('CONNECTED',flush=True)\ntime.sleep(60)\n"
    );
    Helper::start(ns, &code, "CONNECTED")
}

/// One ICMP echo exchange with `addr` from `ns` (python3, raw socket): true on a reply, false
/// after three unanswered tries or at once on a "destination unreachable" (a firewall's reject).
fn pings(ns: &Netns, addr: &str) -> bool {
    let code = format!(
        "import socket,struct,sys\n\
         def cs(b):\n s=sum(struct.unpack('!%dH'%(len(b)//2),b));s=(s>>16)+(s&0xffff);s+=s>>16;return ~s&0xffff\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP);s.settimeout(2)\n\
         for i in range(3):\n h=struct.pack('!BBHHH',8,0,0,0x4b56,i);h=struct.pack('!BBHHH',8,0,cs(h+b'kvmctl!!'),0x4b56,i)\n \
         s.sendto(h+b'kvmctl!!',('{addr}',0))\n try:\n  while True:\n   d,a=s.recvfrom(1500)\n   \
         if a[0]=='{addr}' and d[20]==0: sys.exit(0)\n   \
         if d[20]==3 and d[44:48]==socket.inet_aton('{addr}'): sys.exit(1)\n except socket.timeout: pass\nsys.exit(1)\n"
    );
    ns.exec(&["python3", "-c", &code]).status.success()
}

/// Seed 003's `/etc/libvirt/qemu/networks/default.xml`, verbatim.
const DEFAULT_XML: &str = "<network>
  <name>default</name>
  <uuid>f6514662-26e5-431e-8544-fd216bed9312</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:53:d4:ee'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
";

/// Seed 003, "NAT mode": the default network, VM1 and VM2 on it. Both lease; they reach each
/// other and upstream; upstream sees only the host's address and cannot open a connection to
/// either VM, even with a route toward the subnet.
#[test]
fn nat_default_network_two_vms_reach_each_other_and_upstream_but_upstream_cannot_reach_them() {
    if !prereqs() {
        return;
    }
    let w = Walk::new();
    let out = w.net_define("default.xml", DEFAULT_XML);
    assert!(out.contains("Network default defined from"), "{out}");
    let out = w.h.ok(&["net-start", "default"]);
    assert!(out.contains("Network default started"), "{out}");
    let list = w.h.ok(&["net-list"]);
    assert!(
        list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["default", "active", "yes", "yes"]),
        "{list}"
    );
    let br = w.h.ns.ip(&["-br", "addr", "show", "virbr0"]);
    assert!(br.contains("192.168.122.1/24"), "{br}");
    let link = w.h.ns.ip(&["-br", "link", "show", "virbr0"]);
    assert!(link.contains("52:54:00:53:d4:ee"), "the seed's bridge MAC: {link}");
    // The default kvmctl made on first use takes the seed's UUID (nobody chose the generated
    // one); from then on another UUID for 'default' is refused, as libvirt refuses it.
    assert!(w.h.ok(&["net-info", "default"]).contains("f6514662-26e5-431e-8544-fd216bed9312"));
    let other = DEFAULT_XML.replace("f6514662-26e5-431e-8544-fd216bed9312", "f6514662-26e5-431e-8544-fd216bed9313");
    let f = w.h.k.dir.path().join("other-default.xml");
    std::fs::write(&f, other).unwrap();
    let e = w.h.fails(1, &["net-define", f.to_str().unwrap()]);
    assert!(e.contains("network 'default' already exists with uuid f6514662-26e5-431e-8544-fd216bed9312"), "{e}");

    // Both VMs boot together.
    w.step("network up; installing VM1, VM2");
    w.vm("VM1", "network=default");
    w.vm("VM2", "network=default");
    let (n1, n2) = (w.ready("VM1"), w.ready("VM2"));
    let list = w.h.ok(&["list"]);
    assert!(list.contains("VM1") && list.contains("VM2") && list.matches("running").count() == 2, "{list}");
    for (vm, n) in [("VM1", &n1), ("VM2", &n2)] {
        assert_eq!(n.mac, w.mac_of(vm), "{vm}: the guest sees the MAC kvmctl gave it");
        let last: u8 = n.ip().strip_prefix("192.168.122.").and_then(|h| h.parse().ok()).unwrap_or(0);
        assert!(n.addr.ends_with("/24") && (2..=254).contains(&last), "{vm}: lease from the seed's range: {n:?}");
        let routes = w.h.guest_ok(vm, "ip route", 30);
        assert!(routes.contains("default via 192.168.122.1"), "{vm}: the gateway is the bridge: {routes}");
    }
    w.step("both ready");
    assert_ne!(n1.ip(), n2.ip());
    let leases = w.h.ok(&["net-dhcp-leases", "default"]);
    for n in [&n1, &n2] {
        assert!(leases.lines().any(|l| l.contains(&n.mac) && l.contains(&n.addr)), "{n:?} not in\n{leases}");
    }
    // The taps (vnetN) are ports of virbr0.
    let ports = w.h.ns.ip(&["-br", "link", "show", "master", "virbr0"]);
    assert_eq!(ports.lines().count(), 2, "{ports}");

    // VM1 <-> VM2, each <-> the host.
    w.step("leases checked");
    assert!(w.guest_pings("VM1", n2.ip()), "VM1 -> VM2");
    assert!(w.guest_pings("VM2", n1.ip()), "VM2 -> VM1");
    assert!(w.guest_pings("VM2", "192.168.122.1"), "VM2 -> host");

    w.step("guests ping each other");
    // Out to upstream: ping, and a TCP connection whose source upstream records.
    assert!(w.guest_pings("VM1", UPSTREAM), "VM1 -> upstream");
    for (vm, port) in [("VM1", 7001), ("VM2", 7002)] {
        let server = tcp_server(&w.up, UPSTREAM, port);
        assert!(w.guest_sends(vm, UPSTREAM, port, &format!("hello-from-{vm}")), "{vm} -> upstream:{port}");
        let (peer, said) = peer_of(server);
        assert_eq!(said, format!("hello-from-{vm}"));
        assert_eq!(peer, HOST_UP, "{vm}: upstream sees the host's address only (masquerade)");
    }

    w.step("outbound checked");
    // In from upstream: nothing, even with a route toward the subnet.
    w.up.ip(&["route", "add", "192.168.122.0/24", "via", HOST_UP]);
    w.guest_listen("VM1", 7003);
    assert!(!connects(&w.up, n1.ip(), 7003), "NAT lets no connection in from upstream");
    assert!(!pings(&w.up, n1.ip()), "NAT: upstream cannot ping VM1");
    assert!(!pings(&w.up, n2.ip()), "NAT: upstream cannot ping VM2");
    // The listener was there all along: VM2 gets in.
    assert!(w.guest_sends("VM2", n1.ip(), 7003, "hello-from-VM2"), "VM2 -> VM1:7003");
    let got = w.h.guest_ok("VM1", "cat /tmp/in.7003", 30);
    assert_eq!(got.trim(), "hello-from-VM2");

    w.step("inbound checked");
    w.h.ok(&["destroy", "VM1"]);
    w.h.ok(&["destroy", "VM2"]);
    w.h.ok(&["net-destroy", "default"]);
    w.step("done");
    assert!(w.h.ns.exec(&["ip", "link", "show", "virbr0"]).status.code() != Some(0), "virbr0 is gone");
}

/// Seed 003's `/etc/libvirt/qemu/networks/router.xml`, verbatim.
const ROUTER_XML: &str = "<network>
  <name>router</name>
  <uuid>186ffd11-ce2d-452a-9970-baf07b723de8</uuid>
  <forward mode='route'/>
  <bridge name='virbr1' stp='on' delay='0'/>
  <mac address='52:54:00:56:e6:21'/>
  <ip address='192.168.132.1' netmask='255.255.255.0'>
  </ip>
</network>
";

/// Seed 003, "Routed mode": no DHCP, the VM gets a static address with the bridge as its
/// gateway; upstream reaches it through a route, and both sides see each other's own address
/// (no NAT).
#[test]
fn routed_network_static_guest_and_upstream_see_each_others_own_address() {
    if !prereqs() {
        return;
    }
    let w = Walk::new();
    let out = w.net_define("router.xml", ROUTER_XML);
    assert!(out.contains("Network router defined from"), "{out}");
    w.h.ok(&["net-start", "router"]);
    let out = w.h.ok(&["net-autostart", "router"]);
    assert!(out.contains("Network router marked as autostarted"), "{out}");
    let list = w.h.ok(&["net-list"]);
    assert!(
        list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["router", "active", "yes", "yes"]),
        "{list}"
    );
    let route = w.h.ns.ip(&["route", "show", "192.168.132.0/24"]);
    assert!(route.contains("dev virbr1"), "the host routes the subnet to the bridge: {route}");
    w.step("network up; installing VM3");

    w.vm("VM3", "network=router");
    let nic = w.ready("VM3");
    assert_eq!(nic.addr, "none", "no DHCP on the routed network: {nic:?}");
    w.step("ready");
    // Inside the guest (over its console): the static address and the default gateway.
    w.h.guest_ok("VM3", "ip addr add 192.168.132.10/24 dev eth0 && ip route add default via 192.168.132.1", 30);
    assert!(w.guest_pings("VM3", "192.168.132.1"), "VM3 -> host");
    // Upstream learns the way to the subnet: through the host.
    w.up.ip(&["route", "add", "192.168.132.0/24", "via", HOST_UP]);

    // Out: upstream sees the guest's own address.
    assert!(w.guest_pings("VM3", UPSTREAM), "VM3 -> upstream");
    let server = tcp_server(&w.up, UPSTREAM, 7011);
    assert!(w.guest_sends("VM3", UPSTREAM, 7011, "hello-from-VM3"), "VM3 -> upstream:7011");
    assert_eq!(peer_of(server), ("192.168.132.10".to_string(), "hello-from-VM3".to_string()), "routed: no NAT");
    w.step("outbound checked");

    // In: upstream reaches the guest, which sees upstream's own address.
    assert!(pings(&w.up, "192.168.132.10"), "upstream -> VM3");
    w.guest_listen("VM3", 7012);
    let _held = tcp_hold(&w.up, "192.168.132.10", 7012, "hello-from-upstream");
    let seen = w.h.guest_ok("VM3", "sleep 1; cat /tmp/in.7012; netstat -tn | grep ':7012 '", 30);
    assert!(seen.contains("hello-from-upstream"), "{seen}");
    let conn = seen.lines().find(|l| l.contains("192.168.132.10:7012")).unwrap_or_else(|| panic!("{seen}"));
    assert!(conn.contains(&format!("{UPSTREAM}:")), "the guest sees upstream's own address: {conn}");
    w.step("inbound checked");

    w.h.ok(&["destroy", "VM3"]);
    w.h.ok(&["net-destroy", "router"]);
    w.step("done");
}

/// An isolated network as seeds 003 and 004 describe it (no `<forward>`), with the DHCP and
/// DNS that seed 004 says dnsmasq still provides: a static lease with a name for VM2, and a
/// DNS name for the upstream machine that resolves although nothing reaches it.
const ISOLATED_XML: &str = "<network>
  <name>isolated</name>
  <bridge name='virbr2' stp='on' delay='0'/>
  <dns>
    <host ip='10.99.0.2'>
      <hostname>upstream</hostname>
    </host>
  </dns>
  <ip address='192.168.100.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.100.2' end='192.168.100.254'/>
      <host mac='52:54:00:00:64:0c' name='vm2' ip='192.168.100.12'/>
    </dhcp>
  </ip>
</network>
";

/// Seeds 003 and 004, "Isolated mode": VM1 and VM2 reach each other and the host, nothing
/// outside in either direction (even with a default route in the guest and a route in
/// upstream), and names still resolve through the network's dnsmasq while pings to the
/// outside fail.
#[test]
fn isolated_network_vms_reach_each_other_and_the_host_resolve_names_but_nothing_outside() {
    if !prereqs() {
        return;
    }
    let w = Walk::new();
    let out = w.net_define("isolated.xml", ISOLATED_XML);
    assert!(out.contains("Network isolated defined from"), "{out}");
    w.h.ok(&["net-start", "isolated"]);
    let rules = w.h.ns.ok(&["nft", "list", "table", "inet", "kvmctl_isolated"]);
    assert!(!rules.contains("masquerade") && rules.contains("oifname \"virbr2\" reject"), "{rules}");
    // An isolated network turns no forwarding on, and a fresh namespace has none; on a real host
    // it is usually on (a NAT network, docker...). Turn it on here (in the host namespace only),
    // so that what keeps the VMs in is the network's firewall, not the namespace's default.
    w.h.ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    w.step("network up; installing VM1, VM2");

    w.vm("VM1", "network=isolated");
    w.vm("VM2", "network=isolated,mac=52:54:00:00:64:0c");
    let (n1, n2) = (w.ready("VM1"), w.ready("VM2"));
    w.step("both ready");
    assert!(n1.addr.starts_with("192.168.100.") && n1.addr.ends_with("/24"), "{n1:?}");
    assert_eq!((n2.mac.as_str(), n2.addr.as_str()), ("52:54:00:00:64:0c", "192.168.100.12/24"), "VM2's static lease");
    let leases = w.h.ok(&["net-dhcp-leases", "isolated"]);
    assert!(leases.lines().any(|l| l.contains(&n1.mac) && l.contains(&n1.addr)), "{leases}");
    assert!(leases.lines().any(|l| l.contains(&n2.mac) && l.contains(&n2.addr) && l.contains("vm2")), "{leases}");
    let routes = w.h.guest_ok("VM1", "ip route", 30);
    assert!(!routes.contains("default"), "an isolated network offers no gateway: {routes}");

    // Inside: guest <-> guest, guest -> host (the host sees the guest's own address).
    assert!(w.guest_pings("VM1", n2.ip()), "VM1 -> VM2");
    assert!(w.guest_pings("VM2", n1.ip()), "VM2 -> VM1");
    assert!(w.guest_pings("VM1", "192.168.100.1"), "VM1 -> host");
    let server = tcp_server(&w.h.ns, "192.168.100.1", 7021);
    assert!(w.guest_sends("VM1", "192.168.100.1", 7021, "hello-host"), "VM1 -> host:7021");
    assert_eq!(peer_of(server), (n1.ip().to_string(), "hello-host".to_string()));
    w.step("inside checked");

    // Names resolve through the network's dnsmasq: the other VM's DHCP name and a <dns><host>,
    // asked of the gateway and through the resolv.conf DHCP wrote. (Type A: dnsmasq of an
    // isolated network has no upstream server to ask for the AAAA records it does not hold,
    // and answers those REFUSED, as libvirt's does.)
    let vm2 = w.h.guest_ok("VM1", "nslookup -type=a vm2 192.168.100.1", 60);
    assert!(vm2.contains("192.168.100.12"), "{vm2}");
    let resolv = w.h.guest_ok("VM1", "cat /etc/resolv.conf", 30);
    assert!(resolv.contains("nameserver 192.168.100.1"), "{resolv}");
    let up = w.h.guest_ok("VM1", "nslookup -type=a upstream", 60);
    assert!(up.contains(UPSTREAM), "{up}");
    // ... but nothing reaches the outside: not by name, not even with a default route.
    assert!(!w.guest_pings("VM1", "upstream"), "VM1 -> upstream without a route");
    w.h.guest_ok("VM1", "ip route add default via 192.168.100.1", 30);
    assert!(!w.guest_pings("VM1", "upstream"), "isolated: VM1 cannot ping upstream even via the host");
    let _server = tcp_server(&w.up, UPSTREAM, 7022);
    assert!(!w.guest_sends("VM1", UPSTREAM, 7022, "leak"), "isolated: no TCP to upstream");
    w.step("outbound checked");

    // Nor in: upstream, with a route toward the subnet, reaches neither VM.
    w.up.ip(&["route", "add", "192.168.100.0/24", "via", HOST_UP]);
    assert!(!pings(&w.up, n1.ip()) && !pings(&w.up, n2.ip()), "isolated: upstream cannot ping the VMs");
    w.guest_listen("VM1", 7023);
    assert!(!connects(&w.up, n1.ip(), 7023), "isolated: no connection in from upstream");
    assert!(w.guest_sends("VM2", n1.ip(), 7023, "hello-from-VM2"), "VM2 -> VM1:7023");
    assert_eq!(w.h.guest_ok("VM1", "cat /tmp/in.7023", 30).trim(), "hello-from-VM2");
    w.step("inbound checked");

    w.h.ok(&["destroy", "VM1"]);
    w.h.ok(&["destroy", "VM2"]);
    w.h.ok(&["net-destroy", "isolated"]);
    w.step("done");
}

// ---------------------------------------------------------------------------------- IPv6

const HOST_UP6: &str = "fd99::1";
const UPSTREAM6: &str = "fd99::2";

impl Walk {
    /// IPv6 on the upstream link too (no duplicate address detection: the link is new and
    /// ours), the host's IPv6 default route upstream.
    fn with_ipv6(self) -> Walk {
        self.h.ns.ip(&["-6", "addr", "add", &format!("{HOST_UP6}/64"), "dev", "up0", "nodad"]);
        self.up.ip(&["-6", "addr", "add", &format!("{UPSTREAM6}/64"), "dev", "eth0", "nodad"]);
        self.h.ns.ip(&["-6", "route", "add", "default", "via", UPSTREAM6]);
        self
    }

    /// Wait for `n` global IPv6 addresses of the guest's eth0 (its `KVMCTL-NIC6` lines, printed
    /// as SLAAC and DHCPv6 complete); returns them as `addr/prefix`.
    fn ipv6_addresses(&self, vm: &str, n: usize) -> Vec<String> {
        let log = self.h.wait_console(vm, "KVMCTL-NIC6: eth0 ", n, 180);
        // The lines come from the background, so one may follow the shell's prompt.
        let tag = "KVMCTL-NIC6: eth0 addr=";
        log.lines().filter_map(|l| l.find(tag).map(|i| l[i + tag.len()..].trim_end().to_string())).collect()
    }
}

/// libvirt's own `dhcp6-network` case, reduced: a NAT network with only IPv6 (accepted as
/// libvirt accepts it), one subnet with DHCPv6 and a static host by DUID, one with router
/// advertisements only (SLAAC).
const NAT6_XML: &str = "<network>
  <name>nat6</name>
  <forward mode='nat'/>
  <bridge name='virbr6'/>
  <ip family='ipv6' address='fd00:6::1' prefix='64'>
    <dhcp>
      <range start='fd00:6::100' end='fd00:6::1ff'/>
      <host id='0:3:0:1:52:54:0:0:6:6' name='vm6' ip='fd00:6::22'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd00:7::1' prefix='64'/>
</network>
";

/// IPv6 walkthrough, part 1: an IPv6-only NAT network. The guest takes its static DHCPv6
/// address (matched by its DUID-LL) and a SLAAC address from the second subnet's router
/// advertisements; its IPv6 is routed, not translated: upstream sees the guest's own
/// address and, with a route back, reaches it. There are no IPv4 rules at all.
#[test]
fn ipv6_only_nat_network_dhcpv6_and_slaac_and_the_ipv6_is_routed() {
    if !prereqs() {
        return;
    }
    let w = Walk::new().with_ipv6();
    let out = w.net_define("nat6.xml", NAT6_XML);
    assert!(out.contains("Network nat6 defined from"), "{out}");
    w.h.ok(&["net-start", "nat6"]);
    let rules = w.h.ns.ok(&["nft", "list", "table", "inet", "kvmctl_nat6"]);
    assert!(
        rules.contains("ip6 saddr fd00:6::/64 accept") && rules.contains("ip6 saddr fd00:7::/64 accept"),
        "{rules}"
    );
    assert!(!rules.contains("ip saddr") && !rules.contains("ip daddr"), "no IPv4 rules: {rules}");
    assert!(!rules.contains("masquerade") && !rules.contains("postrouting"), "IPv6 is routed: {rules}");
    let xml = w.h.ok(&["net-dumpxml", "nat6"]);
    assert!(xml.contains("<ip family='ipv6' address='fd00:7::1' prefix='64'/>"), "{xml}");
    w.step("network up; installing VM6");

    w.vm("VM6", "network=nat6,mac=52:54:00:00:06:06");
    let nic = w.ready("VM6");
    assert_eq!(nic.addr, "none", "no IPv4 on this network: {nic:?}");
    let addrs = w.ipv6_addresses("VM6", 2);
    w.step("IPv6 addresses up");
    // DHCPv6 hands out the host entry's address (a /128: the prefix comes from the RA);
    // SLAAC makes the EUI-64 address of the MAC in the RA-only subnet.
    assert!(addrs.iter().any(|a| a.starts_with("fd00:6::22/")), "DHCPv6 static host: {addrs:?}");
    assert!(addrs.iter().any(|a| a == "fd00:7::5054:ff:fe00:606/64"), "SLAAC: {addrs:?}");
    assert_eq!(addrs.len(), 2, "nothing from the DHCPv6 subnet by SLAAC (managed, no autonomous flag): {addrs:?}");
    let routes = w.h.guest_ok("VM6", "ip -6 route", 30);
    assert!(routes.contains("default via fe80::"), "the router advertisements make the bridge the gateway: {routes}");
    let leases = w.h.ok(&["net-dhcp-leases", "nat6"]);
    assert!(leases.contains("fd00:6::22") && leases.contains("vm6"), "{leases}");

    // Out: the guest reaches the host and, once upstream knows the way back to the subnets
    // (through the host), upstream with its own address.
    assert!(w.guest_pings("VM6", "fd00:6::1"), "VM6 -> host");
    for subnet in ["fd00:6::/64", "fd00:7::/64"] {
        w.up.ip(&["-6", "route", "add", subnet, "via", HOST_UP6]);
    }
    assert!(w.guest_pings("VM6", UPSTREAM6), "VM6 -> upstream");
    let server = tcp_server(&w.up, UPSTREAM6, 7061);
    assert!(w.guest_sends("VM6", UPSTREAM6, 7061, "hello-from-VM6"), "VM6 -> upstream:7061");
    let (peer, said) = peer_of(server);
    assert_eq!(said, "hello-from-VM6");
    let own: Vec<&str> = addrs.iter().map(|a| a.split('/').next().unwrap()).collect();
    assert!(own.contains(&peer.as_str()), "routed: upstream sees the guest's own address {own:?}, not {peer}");
    w.step("outbound checked");

    // In: upstream reaches the guest.
    w.guest_listen("VM6", 7062);
    assert!(connects(&w.up, "fd00:6::22", 7062), "routed IPv6: upstream connects to the guest");
    w.step("inbound checked");

    w.h.ok(&["destroy", "VM6"]);
    w.h.ok(&["net-destroy", "nat6"]);
    w.step("done");
}

/// A dual-stack NAT network whose IPv6 is masqueraded too (`<nat ipv6='yes'/>`, libvirt 6.5).
const NATV6_XML: &str = "<network>
  <name>dual</name>
  <forward mode='nat'>
    <nat ipv6='yes'/>
  </forward>
  <bridge name='virbr8'/>
  <ip address='192.168.168.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.168.2' end='192.168.168.254'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd00:8::1' prefix='64'>
    <dhcp>
      <range start='fd00:8::100' end='fd00:8::1ff'/>
    </dhcp>
  </ip>
</network>
";

/// IPv6 walkthrough, part 2: `<nat ipv6='yes'/>`. The guest leases an IPv4 and a DHCPv6
/// address from the range; upstream sees only the host's IPv6 address and cannot open a
/// connection to the guest, even with a route toward the subnet.
#[test]
fn nat_ipv6_yes_masquerades_ipv6_and_lets_nothing_in() {
    if !prereqs() {
        return;
    }
    let w = Walk::new().with_ipv6();
    w.net_define("dual.xml", NATV6_XML);
    w.h.ok(&["net-start", "dual"]);
    let xml = w.h.ok(&["net-dumpxml", "dual"]);
    assert!(xml.contains("<nat ipv6='yes'"), "{xml}");
    w.step("network up; installing VM8");

    w.vm("VM8", "network=dual");
    let nic = w.ready("VM8");
    assert!(nic.addr.starts_with("192.168.168.") && nic.addr.ends_with("/24"), "{nic:?}");
    let addrs = w.ipv6_addresses("VM8", 1);
    let v6 = addrs[0].split('/').next().unwrap().to_string();
    let last = u32::from_str_radix(v6.strip_prefix("fd00:8::").unwrap_or("0"), 16).unwrap_or(0);
    assert!((0x100..=0x1ff).contains(&last), "DHCPv6 from the range: {addrs:?}");
    w.step("dual stack up");

    let server = tcp_server(&w.up, UPSTREAM6, 7081);
    assert!(w.guest_sends("VM8", UPSTREAM6, 7081, "hello6-from-VM8"), "VM8 -> upstream:7081 over IPv6");
    assert_eq!(peer_of(server), (HOST_UP6.to_string(), "hello6-from-VM8".to_string()), "IPv6 masqueraded");
    let server = tcp_server(&w.up, UPSTREAM, 7082);
    assert!(w.guest_sends("VM8", UPSTREAM, 7082, "hello4-from-VM8"), "VM8 -> upstream:7082 over IPv4");
    assert_eq!(peer_of(server), (HOST_UP.to_string(), "hello4-from-VM8".to_string()), "IPv4 masqueraded");
    w.step("outbound checked");

    w.up.ip(&["-6", "route", "add", "fd00:8::/64", "via", HOST_UP6]);
    w.guest_listen("VM8", 7083);
    assert!(!connects(&w.up, &v6, 7083), "NAT: no IPv6 connection in from upstream");
    w.step("inbound checked");

    w.h.ok(&["destroy", "VM8"]);
    w.h.ok(&["net-destroy", "dual"]);
    w.step("done");
}
