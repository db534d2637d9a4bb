//! `doctor`: each check made to fail inside a namespace the test creates (a runtime dir
//! dnsmasq cannot reach, another firewall dropping forwarded traffic, a host route over the
//! default network's subnet), and clean otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::netns::{can_netns, Netns};
use common::*;

fn findings(ns: &Netns, root: &str) -> (i32, Vec<serde_json::Value>) {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_kvmctl"), "--root", root, "--json", "doctor"])
        .env_remove("KVMCTL_ROOT")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("doctor --json: {e}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    });
    (o.status.code().unwrap_or(-1), v.as_array().unwrap().clone())
}

fn finding<'a>(all: &'a [serde_json::Value], check: &str) -> &'a serde_json::Value {
    all.iter().find(|f| f["check"] == check).unwrap_or_else(|| panic!("no '{check}' in {all:?}"))
}

#[test]
fn doctor_names_each_problem_and_what_to_do() {
    if !require(
        "root, network namespaces, nft, dnsmasq, qemu",
        can_netns() && ["nft", "dnsmasq", "qemu-system-x86_64"].iter().all(|p| have_program(p)),
    ) {
        return;
    }
    let k = Kvm::new();
    let ns = Netns::new("d");
    let root = k.root().to_str().unwrap().to_string();
    // A clean namespace: nothing fails; every finding has the three keys.
    let (code, all) = findings(&ns, &root);
    assert_eq!(code, 0, "{all:?}");
    for x in &all {
        assert!(x["check"].is_string() && x["detail"].is_string(), "{x}");
        assert!(["ok", "warn", "fail"].contains(&x["status"].as_str().unwrap()), "{x}");
    }
    for check in ["KVM", "/dev/net/tun", "bridge", "nf_tables", "qemu-system-x86_64", "dnsmasq", "nft"] {
        assert_ne!(finding(&all, check)["status"], "fail", "{check}");
    }
    assert_eq!(finding(&all, "runtime dir")["status"], "ok");
    assert_eq!(finding(&all, "firewall")["status"], "ok");
    assert_eq!(finding(&all, "networks")["status"], "ok");

    // Another firewall dropping forwarded traffic, and a route over 192.168.122.0/24.
    ns.ok(&["nft", "add", "table", "ip", "filter"]);
    ns.ok(&["nft", "add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }"]);
    ns.ip(&["link", "add", "lan0", "type", "veth", "peer", "name", "lan1"]);
    ns.ip(&["addr", "add", "192.168.122.5/24", "dev", "lan0"]);
    ns.ip(&["link", "set", "lan0", "up"]);
    ns.ip(&["link", "set", "lan1", "up"]);
    let (code, all) = findings(&ns, &root);
    assert_eq!(code, 0, "warnings only: {all:?}");
    let fw = finding(&all, "firewall");
    assert_eq!(fw["status"], "warn");
    assert!(fw["detail"].as_str().unwrap().contains("ip filter chain FORWARD"), "{fw}");
    let net = finding(&all, "network default");
    assert_eq!(net["status"], "warn");
    assert!(net["detail"].as_str().unwrap().contains("192.168.122"), "{net}");

    // A root under a directory others cannot search: dnsmasq would not reach its files.
    let private = k.dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let root2 = private.join("root");
    let (code, all) = findings(&ns, root2.to_str().unwrap());
    assert_eq!(code, 1, "a failed check exits 1: {all:?}");
    let rd = finding(&all, "runtime dir");
    assert_eq!(rd["status"], "fail");
    let detail = rd["detail"].as_str().unwrap();
    assert!(detail.contains(private.to_str().unwrap()) && detail.contains("chmod o+x"), "{detail}");
}
