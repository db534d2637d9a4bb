//! Networks for real: bridge, nftables and dnsmasq inside namespaces the tests create.
//! Topology: `host` runs kvmctl; `up` plays the outside world (veth, 10.99.0.0/24);
//! `client` is a guest stand-in attached to the network's bridge by a veth.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::netns::{can_netns, Netns};
use common::*;

fn prereqs() -> bool {
    require(
        "root, ip, nft, dnsmasq, udhcpc, python3",
        can_netns() && ["nft", "dnsmasq", "udhcpc", "python3"].iter().all(|p| have_program(p)),
    )
}

struct Topo {
    k: Kvm,
    host: Netns,
    up: Netns,
    client: Netns,
    script: PathBuf,
}

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# Applies a lease inside the client namespace only; never touches resolv.conf.
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router"
    echo "LEASE $ip" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
"#;

impl Topo {
    fn new() -> Topo {
        let k = Kvm::new();
        let (host, up, client) = (Netns::new("h"), Netns::new("u"), Netns::new("c"));
        host.veth("up0", &up, "eth0");
        host.ip(&["addr", "add", "10.99.0.1/24", "dev", "up0"]);
        up.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
        host.ip(&["route", "add", "default", "via", "10.99.0.2"]);
        let script = k.dir.path().join("udhcpc.sh");
        std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
        sh("chmod", &["755", script.to_str().unwrap()]);
        Topo { k, host, up, client, script }
    }

    fn define(&self, xml: &str) {
        let f = self.k.dir.path().join("net.xml");
        std::fs::write(&f, xml).unwrap();
        self.k.ok_in(&self.host, &["net-define", f.to_str().unwrap()]);
    }

    /// Attach the client to `bridge` with a veth (`vc0` on the host side).
    fn attach_client(&self, bridge: &str) {
        self.host.veth("vc0", &self.client, "eth0");
        self.host.ip(&["link", "set", "vc0", "master", bridge]);
    }

    fn client_mac(&self) -> String {
        self.client.ip(&["-br", "link", "show", "eth0"]).split_whitespace().nth(2).unwrap().to_string()
    }

    /// Ask for a lease; returns the address bound.
    fn dhcp(&self) -> String {
        let out = self.client.ok(&[
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "10",
            "-T",
            "3",
            "-s",
            self.script.to_str().unwrap(),
        ]);
        out.lines().find_map(|l| l.strip_prefix("LEASE ")).unwrap_or_else(|| panic!("no lease: {out}")).to_string()
    }
}

/// A one-shot TCP server process; killed and reaped on drop.
struct Server(Option<std::process::Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A one-shot TCP server in `ns` on `port`; `peer_of` tells who connected.
fn tcp_server(ns: &Netns, addr: &str, port: u16) -> Server {
    let code = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{addr}',{port}))\ns.listen(1)\ns.settimeout(60)\n\
         print('READY',flush=True)\nc,a=s.accept()\nprint('PEER',a[0],flush=True)\n"
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", &code])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    let mut buf = [0u8; 1];
    while !line.ends_with('\n') {
        if std::io::Read::read(stdout, &mut buf).unwrap() == 0 {
            break;
        }
        line.push(buf[0] as char);
    }
    assert_eq!(line.trim(), "READY");
    Server(Some(child))
}

fn peer_of(mut server: Server) -> String {
    let out = server.0.take().unwrap().wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.lines().find_map(|l| l.strip_prefix("PEER ")).unwrap_or("").to_string()
}

/// Try a TCP connection from `ns` (10 s timeout, far above a connection's setup time inside
/// one machine): true if it was accepted.
fn connect(ns: &Netns, addr: &str, port: u16) -> bool {
    let code = format!("import socket\ns=socket.create_connection(('{addr}',{port}),timeout=10)\ns.close()\n");
    ns.exec(&["python3", "-c", &code]).status.success()
}

const NAT_XML: &str = "<network>\n  <name>natnet</name>\n  <forward mode='nat'/>\n  <bridge name='brnat' stp='on' delay='0'/>\n  \
    <ip address='192.168.150.1' netmask='255.255.255.0'>\n    <dhcp>\n      <range start='192.168.150.10' end='192.168.150.50'/>\n    \
    </dhcp>\n  </ip>\n</network>\n";

#[test]
fn nat_network_leases_addresses_and_masquerades_toward_upstream() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define(NAT_XML);
    t.k.ok_in(&t.host, &["net-start", "natnet"]);
    // The bridge exists with its address; the table holds the NAT rules.
    let addr = t.host.ip(&["-br", "addr", "show", "brnat"]);
    assert!(addr.contains("192.168.150.1/24"), "{addr}");
    let rules = t.host.ok(&["nft", "list", "table", "inet", "kvmctl_natnet"]);
    assert!(rules.contains("masquerade") && rules.contains("brnat"), "{rules}");
    t.attach_client("brnat");
    let lease = t.dhcp();
    let n: u8 = lease.rsplit('.').next().unwrap().parse().unwrap();
    assert!(lease.starts_with("192.168.150.") && (10..=50).contains(&n), "{lease}");
    let leases = t.k.ok_in(&t.host, &["net-dhcp-leases", "natnet"]);
    assert!(leases.contains(&t.client_mac()) && leases.contains(&format!("{lease}/24")), "{leases}");
    let j: serde_json::Value =
        serde_json::from_str(&t.k.ok_in(&t.host, &["--json", "net-dhcp-leases", "natnet", "--mac", &t.client_mac()]))
            .unwrap();
    assert_eq!(j[0]["ip"], lease);
    // Outbound: upstream sees the host's address as the source.
    let server = tcp_server(&t.up, "10.99.0.2", 7001);
    assert!(connect(&t.client, "10.99.0.2", 7001));
    assert_eq!(peer_of(server), "10.99.0.1");
    // Inbound: even with a route, upstream cannot open a connection to the guest.
    t.up.ip(&["route", "add", "192.168.150.0/24", "via", "10.99.0.1"]);
    let _guest = tcp_server(&t.client, "0.0.0.0", 7002);
    assert!(!connect(&t.up, &lease, 7002), "NAT must not let upstream in");
    // Destroy removes everything it created.
    t.k.ok_in(&t.host, &["net-destroy", "natnet"]);
    assert!(t.host.exec(&["ip", "link", "show", "brnat"]).status.code() != Some(0));
    assert!(!t.host.ok(&["nft", "list", "tables"]).contains("kvmctl_natnet"));
    assert!(!t
        .host
        .pids()
        .iter()
        .any(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim() == "dnsmasq"));
    assert!(t.host.ip(&["-br", "addr", "show", "up0"]).contains("10.99.0.1/24"), "host links untouched");
}

#[test]
fn routed_network_keeps_guest_addresses_both_ways() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define(&NAT_XML.replace("natnet", "rnet").replace("mode='nat'", "mode='route'").replace("brnat", "brr"));
    t.k.ok_in(&t.host, &["net-start", "rnet"]);
    t.attach_client("brr");
    let lease = t.dhcp();
    t.up.ip(&["route", "add", "192.168.150.0/24", "via", "10.99.0.1"]);
    let server = tcp_server(&t.up, "10.99.0.2", 7003);
    assert!(connect(&t.client, "10.99.0.2", 7003));
    assert_eq!(peer_of(server), lease, "routed: the source is the guest's own address");
    let guest = tcp_server(&t.client, "0.0.0.0", 7004);
    assert!(connect(&t.up, &lease, 7004), "routed: upstream reaches the guest");
    assert_eq!(peer_of(guest), "10.99.0.2");
    t.k.ok_in(&t.host, &["net-destroy", "rnet"]);
}

#[test]
fn isolated_network_reaches_the_host_but_not_upstream() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    let xml = NAT_XML.replace("natnet", "iso").replace("  <forward mode='nat'/>\n", "").replace("brnat", "briso");
    t.define(&xml);
    t.k.ok_in(&t.host, &["net-start", "iso"]);
    t.attach_client("briso");
    t.dhcp();
    let host_srv = tcp_server(&t.host, "192.168.150.1", 7005);
    assert!(connect(&t.client, "192.168.150.1", 7005), "guest -> host works");
    drop(host_srv);
    let _up = tcp_server(&t.up, "10.99.0.2", 7006);
    assert!(!connect(&t.client, "10.99.0.2", 7006), "guest -> upstream is not forwarded");
    t.k.ok_in(&t.host, &["net-destroy", "iso"]);
    // A firewalld zone is kept and said to have no effect.
    let zoned = xml.replace("<name>iso</name>", "<name>zoned</name>").replace("briso'", "brzone' zone='trusted'");
    t.define(&zoned);
    let o = t.k.in_ns(&t.host, &["net-start", "zoned"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && e.contains("zone='trusted'") && e.contains("no effect"), "{e}");
    assert!(t.k.ok_in(&t.host, &["net-dumpxml", "zoned"]).contains("zone='trusted'"));
    t.k.ok_in(&t.host, &["net-destroy", "zoned"]);
}

#[test]
fn net_update_live_adds_a_reservation_the_next_request_gets() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define(NAT_XML);
    t.k.ok_in(&t.host, &["net-start", "natnet"]);
    t.attach_client("brnat");
    t.dhcp();
    let mac = t.client_mac();
    let host = format!("<host mac='{mac}' name='guest1' ip='192.168.150.77'/>");
    t.k.ok_in(&t.host, &["net-update", "natnet", "add", "ip-dhcp-host", &host, "--live", "--config"]);
    // dnsmasq is still the same process (no restart) and the next request gets the reservation.
    assert_eq!(t.dhcp(), "192.168.150.77");
    let xml = t.k.ok_in(&t.host, &["net-dumpxml", "natnet"]);
    assert!(xml.contains("ip='192.168.150.77'"), "{xml}");
    let xml = t.k.ok_in(&t.host, &["net-dumpxml", "natnet", "--inactive"]);
    assert!(xml.contains("ip='192.168.150.77'"), "config updated too: {xml}");
    let e = t.k.fails_in(&t.host, 1, &["net-update", "natnet", "add", "ip-dhcp-host", &host, "--live"]);
    assert!(e.contains("already exists"), "{e}");
    let e = t.k.fails_in(
        &t.host,
        1,
        &["net-update", "natnet", "add", "ip-dhcp-host", "<host mac='52:54:00:00:00:09' ip='10.1.1.1'/>"],
    );
    assert!(e.contains("10.1.1.1"), "{e}");
    t.k.ok_in(&t.host, &["net-destroy", "natnet"]);
}

#[test]
fn bad_networks_are_refused_and_change_nothing() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    let k = &t.k;
    let f = k.dir.path().join("bad.xml");
    let define = |xml: &str| {
        std::fs::write(&f, xml).unwrap();
        k.in_ns(&t.host, &["net-define", f.to_str().unwrap()])
    };
    let err = |o: std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // net-define runs net-start's preflight: overlap with the host's own address, reported
    // with the interface; a host link already named like the bridge.
    let clash = NAT_XML.replace("192.168.150", "10.99.0").replace("natnet", "clash").replace("brnat", "brclash");
    let e = err(define(&clash));
    assert!(e.contains("overlaps") && e.contains("up0"), "{e}");
    t.host.ip(&["link", "add", "brtaken", "type", "veth", "peer", "name", "brtakenp"]);
    let e = err(define(&NAT_XML.replace("natnet", "taken").replace("brnat", "brtaken")));
    assert!(e.contains("bridge brtaken already exists on the host"), "{e}");
    // What appears on the host after the define is caught by net-start.
    assert!(define(
        &NAT_XML.replace("natnet", "later").replace("brnat", "brlater").replace("192.168.150", "192.168.151")
    )
    .status
    .success());
    t.host.ip(&["addr", "add", "192.168.151.200/24", "dev", "brtakenp"]);
    let e = k.fails_in(&t.host, 1, &["net-start", "later"]);
    assert!(e.contains("overlaps") && e.contains("brtakenp"), "{e}");
    t.host.ip(&["link", "del", "brtaken"]);
    t.host.ip(&["link", "add", "brlater", "type", "veth", "peer", "name", "brlaterp"]);
    let e = k.fails_in(&t.host, 1, &["net-start", "later"]);
    assert!(e.contains("bridge brlater already exists on the host"), "{e}");
    t.host.ip(&["link", "del", "brlater"]);
    // A redefinition with another UUID is refused (libvirt's words); without one it keeps it.
    let uuid = serde_json::from_str::<serde_json::Value>(&k.ok_in(&t.host, &["--json", "net-info", "later"])).unwrap()
        ["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let later = NAT_XML.replace("natnet", "later").replace("brnat", "brlater").replace("192.168.150", "192.168.151");
    let other =
        later.replace("<name>later</name>", "<name>later</name><uuid>4b4c0c2e-0000-4000-8000-000000000001</uuid>");
    let e = err(define(&other));
    assert!(e.contains(&format!("network 'later' already exists with uuid {uuid}")), "{e}");
    let same = later.replace("<name>later</name>", &format!("<name>later</name><uuid>{uuid}</uuid>"));
    assert!(define(&same).status.success());
    assert!(define(&later.replace("stp='on'", "stp='off'")).status.success());
    assert!(k.ok_in(&t.host, &["net-dumpxml", "later"]).contains(&uuid));
    // Bridge mode naming a bridge that does not exist; then one that does.
    let bridged = "<network><name>hb</name><forward mode='bridge'/><bridge name='mybridge0'/></network>";
    assert!(define(bridged).status.success());
    let e = k.fails_in(&t.host, 1, &["net-start", "hb"]);
    assert!(e.contains("bridge mybridge0 does not exist"), "{e}");
    t.host.ip(&["link", "add", "mybridge0", "type", "bridge"]);
    k.ok_in(&t.host, &["net-start", "hb"]);
    assert!(!t.host.ok(&["nft", "list", "tables"]).contains("kvmctl_hb"), "bridge mode has no firewall");
    k.ok_in(&t.host, &["net-destroy", "hb"]);
    assert!(t.host.ip(&["link", "show", "mybridge0"]).contains("mybridge0"), "the admin's bridge stays");
    // Same bridge name as another network; duplicate UUID; malformed XML; bad range.
    assert!(define(NAT_XML).status.success());
    let e = err(define(&NAT_XML.replace("natnet", "other")));
    assert!(e.contains("bridge brnat is already used by network 'natnet'"), "{e}");
    let uuid = k.ok_in(&t.host, &["--json", "net-info", "natnet"]);
    let uuid = serde_json::from_str::<serde_json::Value>(&uuid).unwrap()["uuid"].as_str().unwrap().to_string();
    let dup = NAT_XML
        .replace("natnet", "dupu")
        .replace("brnat", "brdup")
        .replace("<name>dupu</name>", &format!("<name>dupu</name><uuid>{uuid}</uuid>"));
    assert!(err(define(&dup)).contains("same UUID as network 'natnet'"));
    assert!(err(define("<network><name>x</name>")).contains("malformed XML"));
    let e = err(define(
        &NAT_XML
            .replace("natnet", "rev")
            .replace("brnat", "brrev")
            .replace("start='192.168.150.10' end='192.168.150.50'", "start='192.168.150.50' end='192.168.150.10'"),
    ));
    assert!(e.contains("reversed"), "{e}");
    assert!(err(define(&NAT_XML.replace("mode='nat'", "mode='passthrough'"))).contains("passthrough"));
    assert!(err(define(&NAT_XML.replace("brnat", "a-very-long-bridge-name"))).contains("a-very-long-bridge-name"));
    let list = k.ok_in(&t.host, &["net-list", "--all", "--name"]);
    assert_eq!(list, "default\nhb\nlater\nnatnet\n");
    // Nothing half-started anywhere.
    let links = t.host.ip(&["-br", "link"]);
    assert!(!links.contains("brnat") && !links.contains("virbr"), "{links}");
    assert!(!t.host.ok(&["nft", "list", "tables"]).contains("kvmctl"));
}

#[test]
fn failed_start_rolls_back_bridge_and_firewall() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define(NAT_XML);
    // Something else holds the DHCP port: dnsmasq cannot start, so the start must undo itself.
    let mut blocker = Server(Some(std::process::Command::new("ip")
        .args(["netns", "exec", &t.host.name, "python3", "-c", "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',67))\nprint('READY',flush=True)\ntime.sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()));
    let mut b = [0u8; 6];
    std::io::Read::read_exact(blocker.0.as_mut().unwrap().stdout.as_mut().unwrap(), &mut b).unwrap();
    let e = t.k.fails_in(&t.host, 1, &["net-start", "natnet"]);
    assert!(e.contains("dnsmasq did not start"), "{e}");
    drop(blocker);
    assert!(t.host.exec(&["ip", "link", "show", "brnat"]).status.code() != Some(0), "bridge rolled back");
    assert!(!t.host.ok(&["nft", "list", "tables"]).contains("kvmctl"), "table rolled back");
    assert!(t.k.ok_in(&t.host, &["net-list", "--all"]).contains(" natnet    inactive"));
    // And it starts fine once the port is free.
    t.k.ok_in(&t.host, &["net-start", "natnet"]);
    t.k.ok_in(&t.host, &["net-destroy", "natnet"]);
}

#[test]
fn default_network_is_libvirts_and_round_trips_as_xml() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    let xml = t.k.ok_in(&t.host, &["net-dumpxml", "default"]);
    for want in [
        "<name>default</name>",
        "<forward mode='nat'>",
        "<bridge name='virbr0' stp='off' delay='0'/>",
        "<ip address='192.168.122.1' netmask='255.255.255.0'>",
        "<range start='192.168.122.2' end='192.168.122.254'/>",
    ] {
        assert!(xml.contains(want), "{want} not in {xml}");
    }
    assert!(t.k.ok_in(&t.host, &["net-list", "--all"]).contains(" default   inactive   yes         yes"));
    // The dump defines an identical network under another name.
    let f = t.k.dir.path().join("copy.xml");
    let mut file = std::fs::File::create(&f).unwrap();
    let copy = xml.replace("<name>default</name>", "<name>copy</name>").replace("virbr0", "virbr9");
    let copy: String =
        copy.lines().filter(|l| !l.contains("<uuid>") && !l.contains("<mac ")).map(|l| format!("{l}\n")).collect();
    file.write_all(copy.as_bytes()).unwrap();
    t.k.ok_in(&t.host, &["net-define", f.to_str().unwrap()]);
    t.k.ok_in(&t.host, &["net-start", "default"]);
    let info = t.k.ok_in(&t.host, &["net-info", "default"]);
    assert!(info.contains("Active:         yes") && info.contains("Bridge:         virbr0"), "{info}");
    let e = t.k.fails_in(&t.host, 1, &["net-start", "copy"]);
    assert!(e.contains("overlaps") && e.contains("network 'default'"), "{e}");
    t.k.ok_in(&t.host, &["net-destroy", "default"]);
}

/// `kvmctl net-edit` with $EDITOR set to a sed script (as a person's editor would save).
fn net_edit(t: &Topo, name: &str, sed: &str) -> std::process::Output {
    let editor = t.k.dir.path().join("editor.sh");
    std::fs::write(&editor, format!("#!/bin/sh\nsed -i \"{sed}\" \"$1\"\n")).unwrap();
    sh("chmod", &["755", editor.to_str().unwrap()]);
    std::process::Command::new("ip")
        .args(["netns", "exec", &t.host.name, env!("CARGO_BIN_EXE_kvmctl"), "--root"])
        .arg(t.k.root())
        .args(["net-edit", name])
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .bounded()
}

#[test]
fn net_edit_saves_valid_edits_and_refuses_invalid_ones() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define(NAT_XML);
    let o = net_edit(&t, "natnet", "s/192.168.150.50/192.168.150.60/");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.k.ok_in(&t.host, &["net-dumpxml", "natnet"]).contains("end='192.168.150.60'"));
    // A reversed range: refused, the old definition kept.
    let o = net_edit(&t, "natnet", "s/start='192.168.150.10'/start='192.168.150.99'/");
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("reversed") && e.contains("unchanged"), "{e}");
    let xml = t.k.ok_in(&t.host, &["net-dumpxml", "natnet"]);
    assert!(xml.contains("start='192.168.150.10'") && xml.contains("end='192.168.150.60'"), "{xml}");
    // XML that is not well-formed: refused too.
    let o = net_edit(&t, "natnet", "s/<\\/network>//");
    assert_eq!(o.status.code(), Some(1));
    assert!(t.k.ok_in(&t.host, &["net-dumpxml", "natnet"]).contains("</network>"));
}

#[test]
fn open_network_has_bridge_and_dhcp_but_no_firewall() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define(&NAT_XML.replace("natnet", "opn").replace("mode='nat'", "mode='open'").replace("brnat", "bropen"));
    t.k.ok_in(&t.host, &["net-start", "opn"]);
    assert!(t.host.ip(&["-br", "addr", "show", "bropen"]).contains("192.168.150.1/24"));
    assert!(!t.host.ok(&["nft", "list", "tables"]).contains("kvmctl_opn"), "open: no rules at all");
    t.attach_client("bropen");
    assert!(t.dhcp().starts_with("192.168.150."));
    t.k.ok_in(&t.host, &["net-destroy", "opn"]);
    assert!(t.host.exec(&["ip", "link", "show", "bropen"]).status.code() != Some(0));
}

#[test]
fn net_create_runs_a_transient_network_that_vanishes_when_destroyed() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    let f = t.k.dir.path().join("tr.xml");
    std::fs::write(&f, NAT_XML.replace("natnet", "tr").replace("brnat", "brtr")).unwrap();
    t.k.ok_in(&t.host, &["net-create", f.to_str().unwrap()]);
    let list = t.k.ok_in(&t.host, &["net-list"]);
    let row: Vec<&str> = list.lines().find(|l| l.starts_with(" tr ")).unwrap_or("").split_whitespace().collect();
    assert_eq!(row, ["tr", "active", "no", "no"], "{list}");
    assert!(t.k.fails_in(&t.host, 1, &["net-autostart", "tr"]).contains("not found"));
    t.k.ok_in(&t.host, &["net-destroy", "tr"]);
    assert!(!t.k.ok_in(&t.host, &["net-list", "--all"]).contains(" tr "));
    assert!(t.host.exec(&["ip", "link", "show", "brtr"]).status.code() != Some(0));
}

/// `net-destroy`'s bridge removal returns when the kernel has unlisted the link (its own
/// RTM_DELLINK announcement), not after its RCU teardown: the name is free and the index gone
/// at once; a link already gone is fine; a delete the kernel refuses reports its error.
#[test]
fn detached_link_delete_returns_with_the_link_gone_and_reports_refusals() {
    use kvmctl::network::unlink::delete_link_detached;
    use std::time::Duration;
    if !require("root and network namespaces", can_netns()) {
        return;
    }
    // A thread of its own in a private network namespace (namespaces are per thread; the
    // `ip` children and the delete's helper inherit it).
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let index_of = |name: &str| {
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: c is a valid NUL-terminated string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            (i != 0).then_some(i)
        };
        for _ in 0..5 {
            sh("ip", &["link", "add", "kvt0", "type", "bridge"]);
            sh("ip", &["addr", "add", "10.77.0.1/24", "dev", "kvt0"]);
            sh("ip", &["link", "set", "kvt0", "up"]);
            let idx = index_of("kvt0").expect("bridge created");
            delete_link_detached(idx, Duration::from_secs(30)).unwrap();
            assert_eq!(index_of("kvt0"), None, "the link is gone when the call returns");
            // Gone twice is not an error.
            delete_link_detached(idx, Duration::from_secs(30)).unwrap();
        }
        // The loopback device cannot be deleted: the kernel's refusal comes back.
        let lo = index_of("lo").unwrap();
        let e = delete_link_detached(lo, Duration::from_secs(30)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
        assert_eq!(index_of("lo"), Some(lo));
    })
    .join()
    .unwrap();
}

/// The stored definition file of network `name` under the kvmctl root.
fn stored_toml(root: &Path, name: &str) -> PathBuf {
    let want = format!("{name}.toml");
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.ends_with("run") {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == want.as_str())
                && p.parent().is_some_and(|d| d.ends_with("networks"))
            {
                return p;
            }
        }
    }
    panic!("no stored {want} under {}", root.display());
}

/// Issue 11: a hand-written network TOML without a bridge name made `net-start` panic (exit
/// 101). It now picks the lowest free virbrN, as `net-define` does; in `bridge` mode, where
/// the name cannot be made up, it refuses with the field named.
#[test]
fn net_start_of_a_hand_written_definition_without_a_bridge_name() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define("<network><name>hand</name><forward mode='nat'/><bridge name='kvhand0'/><ip address='10.77.0.1' netmask='255.255.255.0'/></network>");
    let f = stored_toml(&t.k.root(), "hand");
    let text = std::fs::read_to_string(&f).unwrap();
    let stripped: String =
        text.lines().filter(|l| !l.trim_start().starts_with("name = \"kvhand0\"")).map(|l| format!("{l}\n")).collect();
    assert_ne!(stripped, text, "the stored definition names its bridge:\n{text}");
    std::fs::write(&f, &stripped).unwrap();
    let out = t.k.ok_in(&t.host, &["net-start", "hand"]);
    assert!(out.contains("hand"), "{out}");
    let info = t.k.ok_in(&t.host, &["net-info", "hand"]);
    assert!(info.contains("virbr"), "a virbrN bridge was picked: {info}");
    assert!(t.host.ip(&["-br", "link", "show", "type", "bridge"]).contains("virbr"));
    t.k.ok_in(&t.host, &["net-destroy", "hand"]);
    assert!(!t.host.ip(&["-br", "link", "show", "type", "bridge"]).contains("virbr"), "net-destroy removed the bridge");
    // bridge mode: there is no name to pick.
    t.define("<network><name>br</name><forward mode='bridge'/><bridge name='kvbr9'/></network>");
    let f = stored_toml(&t.k.root(), "br");
    let text = std::fs::read_to_string(&f).unwrap();
    let stripped: String =
        text.lines().filter(|l| !l.trim_start().starts_with("name = \"kvbr9\"")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&f, &stripped).unwrap();
    let e = t.k.fails_in(&t.host, 1, &["net-start", "br"]);
    assert!(e.contains("network 'br'") && e.contains("needs <bridge name="), "{e}");
}

/// NAT_XML with a static route and a (generous) bandwidth limit, so that every step of a
/// start has something to do.
fn routed_nat_xml() -> String {
    NAT_XML.replace(
        "</network>",
        "  <route address='10.98.0.0' prefix='24' gateway='192.168.150.2'/>\n  \
         <bandwidth><inbound average='100000'/><outbound average='100000'/></bandwidth>\n</network>",
    )
}

/// Run kvmctl in the host namespace with `KVMCTL_FAULT=point`: it must die of SIGKILL there.
fn killed_at(t: &Topo, point: &str, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let o = t.k.in_ns_env(&t.host, &[("KVMCTL_FAULT", point)], args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{args:?} with KVMCTL_FAULT={point}: {:?} {err}", o.status);
    assert!(err.contains(&format!("fault point {point}")), "{err}");
}

/// The `net-list --all` row of `net` (name, state, autostart, persistent), and its problems line.
fn net_row(t: &Topo, net: &str) -> (Vec<String>, String) {
    let list = t.k.ok_in(&t.host, &["net-list", "--all"]);
    let row = list.lines().find(|l| l.starts_with(&format!(" {net} "))).unwrap_or("");
    let problems = list.lines().find_map(|l| l.strip_prefix(&format!(" {net}: degraded: "))).unwrap_or("");
    (row.split_whitespace().map(String::from).collect(), problems.to_string())
}

/// dnsmasq processes started with a config file under `root` (zombies have no cmdline).
fn our_dnsmasqs(root: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("dnsmasq ") && cmd.contains(&root.display().to_string()) {
            out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    out
}

/// Is the OFD lock on `path` free (nobody holds it)?
fn lock_free(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK with a valid flock on an open fd; closing the fd releases it.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) == 0 }
}

/// Nothing of network `net` is left in the host namespace or the root: no bridge, no
/// kvmctl nft table, no dnsmasq of ours, no runtime dir, no temp file, and no lock file but
/// the (free) locks of defined networks.
fn assert_nothing_left(t: &Topo, net: &str, what: &str) {
    let bridges = t.host.ip(&["-br", "link", "show", "type", "bridge"]);
    assert!(bridges.trim().is_empty(), "{what}: bridge left: {bridges}");
    let tables = t.host.ok(&["nft", "list", "tables"]);
    assert!(!tables.contains("kvmctl_"), "{what}: table left: {tables}");
    let d = our_dnsmasqs(&t.k.root());
    assert!(d.is_empty(), "{what}: dnsmasq left: {d:?}");
    let run = t.k.root().join("run/networks").join(net);
    assert!(!run.exists(), "{what}: {} left: {:?}", run.display(), tree(&run));
    let all = tree(&t.k.root());
    let temps: Vec<&String> = all.iter().filter(|p| p.contains(".tmp-")).collect();
    assert!(temps.is_empty(), "{what}: temp files left: {temps:?}");
    for e in std::fs::read_dir(t.k.root().join("locks")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("network.") else { continue };
        let defined = t.k.root().join("networks").join(format!("{n}.toml")).exists();
        assert!(defined, "{what}: lock file {name} of no defined network left");
        assert!(lock_free(&e.path()), "{what}: lock {name} still held");
    }
}

/// The network works: bridge address and route, NAT table, a lease for the client.
fn assert_working(t: &Topo, what: &str) {
    let (row, problems) = net_row(t, "natnet");
    assert_eq!(row[1], "active", "{what}: {row:?} {problems}");
    assert!(t.host.ip(&["-br", "addr", "show", "brnat"]).contains("192.168.150.1/24"), "{what}");
    assert!(t.host.ip(&["route", "show", "10.98.0.0/24"]).contains("via 192.168.150.2"), "{what}");
    let rules = t.host.ok(&["nft", "list", "table", "inet", "kvmctl_natnet"]);
    assert!(rules.contains("masquerade"), "{what}: {rules}");
    assert!(rules.contains("iifname \"brnat\" limit rate over 100000000 bytes/second"), "{what}: {rules}");
    let qdiscs = t.host.ok(&["tc", "qdisc", "show", "dev", "brnat"]);
    assert!(qdiscs.contains("qdisc htb 1: root"), "{what}: {qdiscs}");
    if t.host.exec(&["ip", "link", "show", "vc0"]).status.success() {
        t.host.ip(&["link", "set", "vc0", "master", "brnat"]);
    } else {
        t.attach_client("brnat");
    }
    assert!(t.dhcp().starts_with("192.168.150."), "{what}: no lease");
}

/// Issue 11: kill -9 at each step of `net-start` and `net-destroy` (fault points): the network
/// shows as degraded with what is missing, the same command run again finishes the job, and
/// after `net-destroy` nothing is left (bridge, table, dnsmasq, runtime dir, temp or lock).
#[test]
fn a_net_start_or_net_destroy_killed_at_any_step_is_finished_by_the_next_one() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define(&routed_nat_xml());
    // A host interface enslaved at each start (net-attach-interface), released at each destroy.
    t.host.veth("lk0", &t.up, "lk1");
    t.k.ok_in(&t.host, &["net-attach-interface", "natnet", "lk0"]);
    let start_points = [
        ("net-start.intent", "its start was interrupted; bridge brnat is gone"),
        ("net-start.bridge", "its start was interrupted; nftables table inet kvmctl_natnet is missing"),
        ("net-start.addresses", "its start was interrupted; nftables table inet kvmctl_natnet is missing"),
        ("net-start.routes", "its start was interrupted; nftables table inet kvmctl_natnet is missing"),
        ("net-start.interfaces", "its start was interrupted; nftables table inet kvmctl_natnet is missing"),
        ("net-start.bandwidth", "its start was interrupted; nftables table inet kvmctl_natnet is missing"),
        ("net-start.table", "its start was interrupted; dnsmasq is not running"),
        ("net-start.dnsmasq-files", "its start was interrupted; dnsmasq is not running"),
        ("net-start.dnsmasq", "runs but was not recorded"),
    ];
    for (point, problem) in start_points {
        killed_at(&t, point, &["net-start", "natnet"]);
        let (row, problems) = net_row(&t, "natnet");
        assert_eq!(row[1], "degraded", "{point}: {row:?}");
        assert!(problems.contains(problem), "{point}: {problems}");
        let info = t.k.ok_in(&t.host, &["net-info", "natnet"]);
        assert!(info.contains("Problems:") && info.contains(problem), "{point}: {info}");
        let out = t.k.ok_in(&t.host, &["net-start", "natnet"]);
        assert!(out.contains("Network natnet repaired (it was degraded: "), "{point}: {out}");
        assert_working(&t, point);
        assert!(t.host.ip(&["link", "show", "lk0"]).contains("master brnat"), "{point}");
        assert!(t.k.fails_in(&t.host, 1, &["net-start", "natnet"]).contains("already active"), "{point}");
        t.k.ok_in(&t.host, &["net-destroy", "natnet"]);
        assert_nothing_left(&t, "natnet", point);
        assert!(!t.host.ip(&["link", "show", "lk0"]).contains("master"), "{point}");
    }
    for point in ["net-destroy.table", "net-destroy.dnsmasq", "net-destroy.rundir"] {
        t.k.ok_in(&t.host, &["net-start", "natnet"]);
        killed_at(&t, point, &["net-destroy", "natnet"]);
        let (row, problems) = net_row(&t, "natnet");
        assert_eq!(row[1], "degraded", "{point}: {row:?}");
        assert!(problems.contains("nftables table inet kvmctl_natnet is missing"), "{point}: {problems}");
        let out = t.k.ok_in(&t.host, &["net-destroy", "natnet"]);
        assert!(out.contains("Network natnet destroyed (it was degraded: "), "{point}: {out}");
        assert_nothing_left(&t, "natnet", point);
        assert!(t.k.fails_in(&t.host, 1, &["net-destroy", "natnet"]).contains("is not active"), "{point}");
    }
    // A transient network (net-create) killed half-way: net-create again finishes it, and
    // its destroy leaves not even a lock file.
    let f = t.k.dir.path().join("tr.xml");
    std::fs::write(&f, routed_nat_xml().replace("natnet", "tr").replace("brnat", "brtr")).unwrap();
    killed_at(&t, "net-start.table", &["net-create", f.to_str().unwrap()]);
    let (row, _) = net_row(&t, "tr");
    assert_eq!(row, ["tr", "degraded", "no", "no"]);
    let out = t.k.ok_in(&t.host, &["net-create", f.to_str().unwrap()]);
    assert!(out.contains("Network tr repaired"), "{out}");
    assert!(t.host.ok(&["nft", "list", "table", "inet", "kvmctl_tr"]).contains("masquerade"));
    t.k.ok_in(&t.host, &["net-destroy", "tr"]);
    assert_nothing_left(&t, "tr", "net-create");
    assert!(!t.k.root().join("locks/network.tr").exists());
}

/// A dnsmasq whose start recorded nothing (its state file lost: a kill between its spawn and
/// the first state write in earlier versions) blocked the next start with "Address already
/// in use". The next net-start or net-destroy finds it by its pid file and /proc cmdline and
/// stops it; a dnsmasq of another config is left alone.
#[test]
fn an_orphan_dnsmasq_without_state_is_stopped_by_the_next_net_start_or_net_destroy() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    t.define(&routed_nat_xml());
    let run = t.k.root().join("run/networks/natnet");
    let orphan = |t: &Topo| {
        killed_at(t, "net-start.dnsmasq", &["net-start", "natnet"]);
        t.host.ip(&["link", "del", "brnat"]);
        t.host.ok(&["nft", "delete", "table", "inet", "kvmctl_natnet"]);
        std::fs::remove_file(run.join("state.json")).unwrap();
        let d = our_dnsmasqs(&t.k.root());
        assert_eq!(d.len(), 1, "{d:?}");
        let (row, _) = net_row(t, "natnet");
        assert_eq!(row[1], "inactive");
        d[0].split(':').next().unwrap().to_string()
    };
    // Someone else's dnsmasq in the namespace (another config) must survive all of it.
    let other = t.k.dir.path().join("other.conf");
    let other_pid = t.k.dir.path().join("other.pid");
    std::fs::write(
        &other,
        format!("port=5353\nlisten-address=127.0.0.1\nbind-interfaces\npid-file={}\n", other_pid.display()),
    )
    .unwrap();
    t.host.ok(&["dnsmasq", &format!("--conf-file={}", other.display())]);
    let other_pid: i32 = std::fs::read_to_string(&other_pid).unwrap().trim().parse().unwrap();
    let pid = orphan(&t);
    let out = t.k.ok_in(&t.host, &["net-start", "natnet"]);
    assert!(
        out.contains(&format!("stopped an orphan dnsmasq (pid {pid})")) && out.contains("Network natnet started"),
        "{out}"
    );
    assert_working(&t, "net-start after an orphan");
    t.k.ok_in(&t.host, &["net-destroy", "natnet"]);
    assert_nothing_left(&t, "natnet", "net-start after an orphan");
    let pid = orphan(&t);
    let out = t.k.ok_in(&t.host, &["net-destroy", "natnet"]);
    assert!(out.contains(&format!("stopped an orphan dnsmasq (pid {pid})")), "{out}");
    assert_nothing_left(&t, "natnet", "net-destroy of an orphan");
    assert!(std::path::Path::new(&format!("/proc/{other_pid}/cmdline")).exists(), "another dnsmasq was stopped");
    // SAFETY: kill(2) of the dnsmasq this test started.
    unsafe { libc::kill(other_pid, libc::SIGTERM) };
}

/// One ICMP echo exchange with `addr` from `ns` (python3, raw socket): true on a reply.
fn pings(ns: &Netns, addr: &str) -> bool {
    let code = format!(
        "import socket,struct,sys\n\
         def cs(b):\n s=sum(struct.unpack('!%dH'%(len(b)//2),b));s=(s>>16)+(s&0xffff);s+=s>>16;return ~s&0xffff\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP);s.settimeout(2)\n\
         for i in range(5):\n h=struct.pack('!BBHHH',8,0,0,0x4b56,i);h=struct.pack('!BBHHH',8,0,cs(h+b'kvmctl!!'),0x4b56,i)\n \
         s.sendto(h+b'kvmctl!!',('{addr}',0))\n try:\n  while True:\n   d,a=s.recvfrom(1500)\n   \
         if a[0]=='{addr}' and d[20]==0: sys.exit(0)\n except socket.timeout: pass\nsys.exit(1)\n"
    );
    ns.exec(&["python3", "-c", &code]).status.success()
}

/// Issue 11: `net-destroy` of a network that a running VM uses says so and wants --force;
/// after --force and `net-start`, the VM's tap is on the new bridge again and the guest
/// answers through it (libvirt re-attaches taps at daemon start).
#[test]
fn net_destroy_of_a_network_in_use_needs_force_and_net_start_reattaches_the_taps() {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out");
    if !prereqs()
        || !require(
            "qemu-system-x86_64 and the test guest kernel (make guest)",
            have_program("qemu-system-x86_64") && guest.join("vmlinuz").exists(),
        )
    {
        return;
    }
    let t = Topo::new();
    t.define(NAT_XML);
    t.k.ok_in(&t.host, &["net-start", "natnet"]);
    let boot =
        format!("kernel={},initrd={}", guest.join("vmlinuz").display(), guest.join("initramfs.cpio.gz").display());
    let install = ["install", "--name", "v1", "--memory", "128", "--boot", &boot, "--network", "network=natnet"];
    t.k.ok_in(&t.host, &[&install[..], &["--noautoconsole"]].concat());
    let console = t.k.root().join("run/domains/v1/console.log");
    let t0 = std::time::Instant::now();
    let addr = loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if let Some(a) = log.lines().find_map(|l| l.strip_prefix("KVMCTL-GUEST-READY eth0=")) {
            break a.split('/').next().unwrap().to_string();
        }
        assert!(t0.elapsed().as_secs() < 300, "guest not ready: {log}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.k.root().join("run/domains/v1/state.json")).unwrap()).unwrap();
    let tap = state["taps"][0].as_str().unwrap().to_string();
    assert!(pings(&t.host, &addr), "the guest answers on the network");
    // Refused while v1 runs on it, naming v1; nothing is touched.
    let e = t.k.fails_in(&t.host, 1, &["net-destroy", "natnet"]);
    assert!(e.contains("network 'natnet' is in use by running domains: v1") && e.contains("--force"), "{e}");
    assert_eq!(net_row(&t, "natnet").0[1], "active");
    assert!(t.host.ip(&["link", "show", &tap]).contains("master brnat"));
    let out = t.k.ok_in(&t.host, &["net-destroy", "natnet", "--force"]);
    assert!(out.contains("Network natnet destroyed") && out.contains("v1"), "{out}");
    let link = t.host.ip(&["link", "show", &tap]);
    assert!(!link.contains("master"), "the tap stays, on no bridge: {link}");
    assert!(!pings(&t.host, &addr), "no way to the guest without the bridge");
    // net-start puts it back on the new bridge.
    let out = t.k.ok_in(&t.host, &["net-start", "natnet"]);
    assert!(out.contains(&format!("Re-attached to bridge brnat: {tap} (v1)")), "{out}");
    assert!(t.host.ip(&["link", "show", &tap]).contains("master brnat"));
    assert!(pings(&t.host, &addr), "the guest answers through the new bridge");
    // A repaired bridge gets the taps back too.
    t.host.ip(&["link", "del", "brnat"]);
    assert!(net_row(&t, "natnet").1.contains("bridge brnat is gone"));
    let out = t.k.ok_in(&t.host, &["net-start", "natnet"]);
    assert!(out.contains("repaired") && out.contains(&format!("Re-attached to bridge brnat: {tap} (v1)")), "{out}");
    assert!(pings(&t.host, &addr), "the guest answers through the repaired bridge");
    t.k.ok_in(&t.host, &["destroy", "v1"]);
    t.k.ok_in(&t.host, &["net-destroy", "natnet"]);
    assert_nothing_left(&t, "natnet", "after the VM");
}

/// The TXT record `name` as the DNS server at `server` answers it from `ns` (python3, one
/// UDP query, 5 s timeout); `None` when there is no answer.
fn dns_txt(ns: &Netns, server: &str, name: &str) -> Option<String> {
    let code = format!(
        "import socket,struct\nq=b''.join(bytes([len(p)])+p.encode() for p in '{name}'.split('.'))+b'\\0'\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\n\
         s.sendto(struct.pack('>HHHHHH',0x4b56,0x100,1,0,0,0)+q+struct.pack('>HH',16,1),('{server}',53))\n\
         r=s.recv(4096)\nn=struct.unpack('>H',r[6:8])[0]\nassert n>0,'no answer'\ni=12+len(q)+4\n\
         i+=2 if r[i]&0xc0==0xc0 else len(q)\nt,c,ttl,l=struct.unpack('>HHIH',r[i:i+10])\nd=r[i+10:i+10+l]\n\
         print(d[1:1+d[0]].decode())\n"
    );
    let out = ns.exec(&["python3", "-c", &code]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn dnsmasq_options_reach_the_networks_dnsmasq_and_bad_ones_are_refused_at_define() {
    if !prereqs() {
        return;
    }
    let t = Topo::new();
    let k = &t.k;
    let with = |opts: &str| {
        NAT_XML
            .replace("<network>", "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>")
            .replace("</network>", &format!("<dnsmasq:options>{opts}</dnsmasq:options></network>"))
    };
    let f = k.dir.path().join("opts.xml");
    // Refused at define, naming the option and the reason; nothing is stored.
    for (opt, why) in [
        ("foo=bar", "dnsmasq --test refuses it: bad option"),
        ("dhcp-option=6,&quot;x&quot;", "dnsmasq --test refuses it"),
        ("conf-file=/etc/shadow", "'conf-file' is refused: it makes dnsmasq read host files"),
        ("dhcp-script=/bin/sh", "run a program on the host"),
    ] {
        std::fs::write(&f, with(&format!("<dnsmasq:option value='{opt}'/>"))).unwrap();
        let e = k.fails_in(&t.host, 1, &["net-define", f.to_str().unwrap()]);
        let shown = opt.replace("&quot;", "\"");
        assert!(e.contains("dnsmasq:option") && e.contains(&shown) && e.contains(why), "{opt}: {e}");
    }
    let bridged = "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'><name>hb</name>\
        <forward mode='bridge'/><bridge name='mybridge0'/><dnsmasq:options><dnsmasq:option value='log-queries'/>\
        </dnsmasq:options></network>";
    std::fs::write(&f, bridged).unwrap();
    let e = k.fails_in(&t.host, 1, &["net-define", f.to_str().unwrap()]);
    assert!(e.contains("<dnsmasq:options>") && e.contains("runs no dnsmasq"), "{e}");
    assert_eq!(k.ok_in(&t.host, &["net-list", "--all", "--name"]), "default\n");
    // Accepted: written last in the running dnsmasq's config, and answered.
    t.define(&with(
        "<dnsmasq:option value='txt-record=kvmctl.example,&quot;hello from dnsmasq:options&quot;'/>\
         <dnsmasq:option value='log-queries'/>",
    ));
    let xml = k.ok_in(&t.host, &["net-dumpxml", "natnet"]);
    assert!(
        xml.contains("<dnsmasq:option value='txt-record=kvmctl.example,&quot;hello from dnsmasq:options&quot;'/>"),
        "{xml}"
    );
    k.ok_in(&t.host, &["net-start", "natnet"]);
    t.attach_client("brnat");
    t.dhcp();
    assert_eq!(dns_txt(&t.client, "192.168.150.1", "kvmctl.example").as_deref(), Some("hello from dnsmasq:options"));
    k.ok_in(&t.host, &["net-destroy", "natnet"]);
}

/// Move `bytes` over TCP between `client` (which connects to `addr:port`) and a server in
/// `server`: `upload` sends from the client, else the server sends. Returns the seconds the
/// client measured from connect to the receiver's acknowledgement of the last byte.
fn transfer(server: &Netns, client: &Netns, addr: &str, port: u16, bytes: usize, upload: bool) -> f64 {
    let (srv_role, cli_role) = if upload { ("recv", "send") } else { ("send", "recv") };
    let common = format!(
        "import socket,sys,time\nN={bytes}\n\
         def send(c):\n c.sendall(b'x'*N)\n assert c.recv(2)==b'OK'\n\
         def recv(c):\n n=0\n while n<N:\n  d=c.recv(65536)\n  assert d\n  n+=len(d)\n c.sendall(b'OK')\n"
    );
    let srv = format!(
        "{common}s=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{addr}',{port}))\n\
         s.listen(1)\ns.settimeout(120)\nprint('READY',flush=True)\nc,a=s.accept()\nc.settimeout(120)\n{srv_role}(c)\nc.close()\n"
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &server.name, "python3", "-c", &srv])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut ready).unwrap();
    let _server = Server(Some(child));
    let cli = format!(
        "{common}t=time.monotonic()\nc=socket.create_connection(('{addr}',{port}),timeout=120)\n{cli_role}(c)\n\
         print(time.monotonic()-t)\n"
    );
    let out = client.ok(&["python3", "-c", &cli]);
    out.trim().parse().unwrap_or_else(|_| panic!("transfer: {out}"))
}

/// libvirt's network-wide `<bandwidth>`: inbound shaped by HTB on the bridge, outbound policed
/// by the network's nft table. Only lower bounds on the time are asserted: a limit makes a
/// transfer take at least bytes / rate, whatever the machine (no speed is asserted).
#[test]
fn bandwidth_limits_the_bridge_both_ways_and_bad_limits_are_refused() {
    if !prereqs() || !require("tc", have_program("tc")) {
        return;
    }
    let t = Topo::new();
    let k = &t.k;
    let f = k.dir.path().join("bw.xml");
    let with = |bw: &str| NAT_XML.replace("</network>", &format!("{bw}</network>"));
    for (bw, why) in [
        ("<bandwidth><inbound average='100' peak='50'/></bandwidth>", "<inbound peak='50'> is below its average"),
        ("<bandwidth><inbound average='100' floor='10'/></bandwidth>", "floor"),
        ("<bandwidth><outbound average='100' peak='200'/></bandwidth>", "policed at one rate"),
        ("<bandwidth/>", "empty <bandwidth>"),
        ("<bandwidth><inbound average='0'/></bandwidth>", "limits to nothing"),
        ("<bandwidth><inbound peak='10'/></bandwidth>", "average"),
    ] {
        std::fs::write(&f, with(bw)).unwrap();
        let e = k.fails_in(&t.host, 1, &["net-define", f.to_str().unwrap()]);
        assert!(e.contains(why), "{bw}: {e}");
    }
    let bridged = "<network><name>hb</name><forward mode='bridge'/><bridge name='mybridge0'/>\
        <bandwidth><inbound average='100'/></bandwidth></network>";
    std::fs::write(&f, bridged).unwrap();
    let e = k.fails_in(&t.host, 1, &["net-define", f.to_str().unwrap()]);
    assert!(e.contains("<bandwidth>") && e.contains("admin's bridge"), "{e}");
    assert_eq!(k.ok_in(&t.host, &["net-list", "--all", "--name"]), "default\n");

    // 200 kB/s each way (libvirt's units: kilobytes per second); outbound burst 64 KiB.
    let bw = "<bandwidth><inbound average='200' peak='200'/><outbound average='200' burst='64'/></bandwidth>";
    t.define(&with(bw));
    assert!(k.ok_in(&t.host, &["net-dumpxml", "natnet"]).contains(
        "  <bandwidth>\n    <inbound average='200' peak='200'/>\n    <outbound average='200' burst='64'/>\n  </bandwidth>\n"
    ));
    let o = k.in_ns(&t.host, &["net-start", "natnet"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("outbound <bandwidth> burst (65536 bytes) is below one second"),
        "{err}"
    );
    let class = t.host.ok(&["tc", "class", "show", "dev", "brnat"]);
    assert!(class.contains("class htb 1:1 root") && class.contains("rate 1600Kbit"), "{class}");
    let rules = t.host.ok(&["nft", "list", "table", "inet", "kvmctl_natnet"]);
    assert!(rules.contains("iifname \"brnat\" limit rate over 200000 bytes/second drop"), "{rules}");
    t.attach_client("brnat");
    t.dhcp();
    // 800 kB each way at 200 kB/s. Down: HTB's burst is 1.8 kB, so at least 4 s. Up: nft's
    // bucket holds a second at the rate (the 64 KiB burst is raised to it, and start says so),
    // so at least (800 - 200) / 200 = 3 s. Asserted with 10% for timer granularity.
    let down = transfer(&t.up, &t.client, "10.99.0.2", 7101, 800_000, false);
    assert!(down >= 3.6, "800 kB through a 200 kB/s inbound limit took {down:.2} s");
    let up = transfer(&t.up, &t.client, "10.99.0.2", 7102, 800_000, true);
    assert!(up >= 2.7, "800 kB through a 200 kB/s outbound limit took {up:.2} s");
    eprintln!("bandwidth: 800 kB down in {down:.2} s, up in {up:.2} s");
    // A limit lost on the host shows as degraded and net-start puts it back.
    t.host.ok(&["tc", "qdisc", "del", "dev", "brnat", "root"]);
    let (row, problems) = net_row(&t, "natnet");
    assert_eq!(row[1], "degraded", "{row:?}");
    assert!(problems.contains("the inbound <bandwidth> limit (htb) on bridge brnat is missing"), "{problems}");
    let out = k.ok_in(&t.host, &["net-start", "natnet"]);
    assert!(out.contains("repaired"), "{out}");
    assert!(t.host.ok(&["tc", "qdisc", "show", "dev", "brnat"]).contains("qdisc htb 1: root"));
    k.ok_in(&t.host, &["net-destroy", "natnet"]);
    assert!(!t.host.ok(&["nft", "list", "tables"]).contains("kvmctl_natnet"));
    // An open network gets a table for the policer only.
    t.define(&with("<bandwidth><outbound average='300'/></bandwidth>").replace("mode='nat'", "mode='open'"));
    k.ok_in(&t.host, &["net-start", "natnet"]);
    let rules = t.host.ok(&["nft", "list", "table", "inet", "kvmctl_natnet"]);
    assert!(
        rules.contains("limit rate over 300000 bytes/second")
            && !rules.contains("chain forward")
            && !rules.contains("masquerade"),
        "{rules}"
    );
    k.ok_in(&t.host, &["net-destroy", "natnet"]);
    assert!(!t.host.ok(&["nft", "list", "tables"]).contains("kvmctl_natnet"));
}

/// `bridge -j vlan show dev DEV` in `ns`: each VLAN with its flags ("PVID", "Egress Untagged").
fn port_vlans(ns: &Netns, dev: &str) -> Vec<(u64, Vec<String>)> {
    let j: serde_json::Value = serde_json::from_str(&ns.ok(&["bridge", "-j", "vlan", "show", "dev", dev])).unwrap();
    let Some(port) = j.as_array().and_then(|a| a.first()) else { return vec![] };
    port["vlans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let flags = v["flags"].as_array().map(|f| f.iter().map(|s| s.as_str().unwrap().to_string()).collect());
            (v["vlan"].as_u64().unwrap(), flags.unwrap_or_default())
        })
        .collect()
}

/// `<vlan>` on a network: the bridge filters VLANs, the host's side is on the tag, an
/// enslaved uplink carries it tagged (a client reaches dnsmasq only through a VLAN 42
/// interface), a lost filter is repaired, and what a bridge cannot carry is refused.
#[test]
fn vlan_puts_the_network_on_its_tag_and_the_uplink_carries_it_tagged() {
    if !prereqs() || !require("bridge (iproute2)", have_program("bridge")) {
        return;
    }
    let t = Topo::new();
    let k = &t.k;
    let f = k.dir.path().join("vlan.xml");
    let with = |v: &str| NAT_XML.replace("</network>", &format!("{v}</network>"));
    for (v, why) in [
        ("<vlan><tag id='0'/></vlan>", "1 to 4094"),
        ("<vlan><tag id='4095'/></vlan>", "1 to 4094"),
        ("<vlan trunk='no'><tag id='5'/><tag id='6'/></vlan>", "several <tag>s are a trunk"),
        ("<vlan><tag id='5' nativeMode='untagged'/></vlan>", "needs trunk='yes'"),
        ("<vlan trunk='yes'><tag id='5' nativeMode='both'/></vlan>", "'tagged' or 'untagged'"),
        ("<vlan trunk='yes'><tag id='5'/><tag id='5'/></vlan>", "listed twice"),
        ("<vlan/>", "needs a <tag"),
    ] {
        std::fs::write(&f, with(v)).unwrap();
        let e = k.fails_in(&t.host, 1, &["net-define", f.to_str().unwrap()]);
        // Named: the network (a value it holds) or the file (one that does not parse).
        assert!(e.contains(why) && (e.contains("network 'natnet'") || e.contains("vlan.xml")), "{v}: {e}");
    }
    assert_eq!(k.ok_in(&t.host, &["net-list", "--all", "--name"]), "default\n");

    t.define(&with("<vlan><tag id='42'/></vlan>"));
    assert!(k.ok_in(&t.host, &["net-dumpxml", "natnet"]).contains("  <vlan>\n    <tag id='42'/>\n  </vlan>\n"));
    // The admin's bridge must already filter VLANs: kvmctl does not change it.
    t.host.ip(&["link", "add", "mybridge0", "type", "bridge"]);
    let bridged = "<network><name>hb</name><forward mode='bridge'/><bridge name='mybridge0'/>\
        <vlan><tag id='7'/></vlan></network>";
    std::fs::write(&f, bridged).unwrap();
    k.ok_in(&t.host, &["net-define", f.to_str().unwrap()]);
    let e = k.fails_in(&t.host, 1, &["net-start", "hb"]);
    assert!(e.contains("network 'hb'") && e.contains("vlan_filtering 1"), "{e}");
    let filtering = t.host.exec(&["ip", "link", "set", "mybridge0", "type", "bridge", "vlan_filtering", "1"]);
    if !filtering.status.success() {
        // Kernels built without CONFIG_BRIDGE_VLAN_FILTERING (these test machines' among
        // them): net-start says so and leaves nothing behind.
        eprintln!("vlan: this kernel has no bridge VLAN filtering; checking that net-start refuses <vlan> cleanly");
        let e = k.fails_in(&t.host, 1, &["net-start", "natnet"]);
        assert!(e.contains("this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)"), "{e}");
        assert!(!t.host.exec(&["ip", "link", "show", "brnat"]).status.success(), "bridge left behind");
        assert!(!t.host.ok(&["nft", "list", "tables"]).contains("kvmctl_natnet"));
        let (row, _) = net_row(&t, "natnet");
        assert_eq!(row[1], "inactive", "{row:?}");
        return;
    }
    k.ok_in(&t.host, &["net-start", "hb"]);
    k.ok_in(&t.host, &["net-destroy", "hb"]);
    k.ok_in(&t.host, &["net-start", "natnet"]);
    let pvid_untagged = vec!["PVID".to_string(), "Egress Untagged".to_string()];
    assert_eq!(port_vlans(&t.host, "brnat"), vec![(42, pvid_untagged.clone())]);
    // The inter-host link: enslaved by the network, on VLAN 42 tagged and nothing else.
    t.host.veth("vc0", &t.client, "eth0");
    k.ok_in(&t.host, &["net-attach-interface", "natnet", "vc0"]);
    assert_eq!(port_vlans(&t.host, "vc0"), vec![(42, vec![])]);
    // Across it, a VLAN 42 interface leases from the network's dnsmasq ...
    t.client.ip(&["link", "set", "eth0", "up"]);
    t.client.ip(&["link", "add", "link", "eth0", "name", "eth0.42", "type", "vlan", "id", "42"]);
    t.client.ip(&["link", "set", "eth0.42", "up"]);
    let out = t.client.ok(&[
        "udhcpc",
        "-i",
        "eth0.42",
        "-n",
        "-q",
        "-f",
        "-t",
        "10",
        "-T",
        "3",
        "-s",
        t.script.to_str().unwrap(),
    ]);
    assert!(out.contains("192.168.150."), "{out}");
    t.client.ok(&["ping", "-c", "1", "-W", "3", "192.168.150.1"]);
    // ... and untagged frames reach nothing.
    t.client.ip(&["link", "del", "eth0.42"]);
    t.client.ip(&["addr", "add", "192.168.150.77/24", "dev", "eth0"]);
    let ping = t.client.exec(&["ping", "-c", "2", "-W", "1", "192.168.150.1"]);
    assert!(!ping.status.success(), "an untagged frame crossed a VLAN 42 uplink");
    // VLAN filtering turned off on the host shows as degraded; net-start turns it on again.
    t.host.ip(&["link", "set", "brnat", "type", "bridge", "vlan_filtering", "0"]);
    let (row, problems) = net_row(&t, "natnet");
    assert_eq!(row[1], "degraded", "{row:?}");
    assert!(problems.contains("VLAN filtering (<vlan>) is off on bridge brnat"), "{problems}");
    assert!(k.ok_in(&t.host, &["net-start", "natnet"]).contains("repaired"));
    assert_eq!(port_vlans(&t.host, "brnat"), vec![(42, pvid_untagged)]);
    k.ok_in(&t.host, &["net-destroy", "natnet"]);
    assert!(t.host.ip(&["-d", "link", "show", "vc0"]).contains("vc0"), "the uplink is released, not deleted");
}
