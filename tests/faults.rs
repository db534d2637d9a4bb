//! Issue 11: a kill -9 at every named fault point (src/fault.rs) of install, start, shutdown,
//! destroy, clone, vol-clone and vol-import (copied and converted), each followed by the next command. Afterwards:
//! nothing leaked (tap, bridge, nft table, dnsmasq, lock, socket, temp file, journal,
//! half-written definition), the bystander VM still runs with the same qemu, and the retry of
//! the same command succeeds (or finds the work done, where the kill came after its point of no
//! return). `make stress` runs random rounds of the same cases (`stress_random_fault_points`).
//! Network points are in tests/network_netns.rs. Needs root, qemu, dnsmasq, nft, the test
//! guest and the `fault-injection` feature (make test has all of them).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::netns::can_netns;
use common::vmhost::VmHost;
use common::*;

fn guest() -> PathBuf {
    guest_dir().join("tiny.qcow2")
}

fn prereqs() -> bool {
    require(
        "root, qemu-system-x86_64, dnsmasq, nft, OVMF, the test guest and the fault-injection feature",
        can_netns()
            && ["qemu-system-x86_64", "dnsmasq", "nft"].iter().all(|p| have_program(p))
            && Path::new("/usr/share/OVMF/OVMF_VARS.fd").exists()
            && guest().exists()
            && cfg!(feature = "fault-injection"),
    )
}

/// What the retry of the interrupted command must find.
#[derive(Clone, Copy, Debug)]
enum Retry {
    /// It succeeds.
    Succeeds,
    /// The kill came after the point of no return: the work is done, and the retry says so
    /// with this message (exit 1).
    Done(&'static str),
    /// Either, as the guest decides (a shutdown in flight).
    SucceedsOr(&'static str),
}

struct Case {
    point: &'static str,
    /// Bring the world to the command's precondition (idempotent).
    prepare: fn(&World),
    cmd: fn(&World) -> Vec<String>,
    retry: Retry,
    /// Undo the retry's work so the next case starts clean.
    cleanup: fn(&World),
}

struct World {
    h: VmHost,
    scratch: PathBuf,
}

impl World {
    fn run(&self, args: &[String], fault: Option<&str>) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = fault.map(|f| ("KVMCTL_FAULT", f)).into_iter().collect();
        self.h.k.in_ns_env(&self.h.ns, &env, &args)
    }
    fn ok(&self, args: &[&str]) -> String {
        self.h.ok(args)
    }
    /// Run, ignoring the outcome (cleanup of what may or may not exist).
    fn try_(&self, args: &[&str]) {
        let _ = self.h.k.in_ns(&self.h.ns, args);
    }
    fn state(&self, vm: &str) -> String {
        let o = self.h.k.in_ns(&self.h.ns, &["domstate", vm]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
    /// Gone without a trace: undefined and its storage removed.
    fn remove_vm(&self, vm: &str) {
        self.try_(&["destroy", vm]);
        self.try_(&["undefine", vm, "--remove-all-storage", "--nvram"]);
    }
    fn ensure_running(&self, vm: &str) {
        if self.state(vm) != "running" {
            self.ok(&["start", vm]);
        }
    }
    fn ensure_shut_off(&self, vm: &str) {
        if self.state(vm) != "shut off" {
            self.ok(&["destroy", vm]);
        }
    }
    fn qemu_pid(&self, vm: &str) -> Option<i64> {
        let j = self.h.k.json(&["dominfo", vm]);
        let text = std::fs::read_to_string(self.h.k.root().join(format!("run/domains/{vm}/state.json"))).ok()?;
        let st: serde_json::Value = serde_json::from_str(&text).ok()?;
        (j["state"] == "running").then(|| st["qemu_pid"].as_i64()).flatten()
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn install_args(name: &str, disk: &str) -> Vec<String> {
    s(&[
        "-q",
        "install",
        "--name",
        name,
        "--memory",
        "64",
        "--vcpus",
        "1",
        "--disk",
        disk,
        "--network",
        "network=default",
        "--import",
        "--noautoconsole",
    ])
}

fn cases() -> Vec<Case> {
    fn none(_: &World) {}
    fn no_inst(w: &World) {
        w.remove_vm("inst");
    }
    fn no_clone(w: &World) {
        w.remove_vm("cl");
        w.ensure_shut_off("src");
    }
    fn stopped(w: &World) {
        w.ensure_shut_off("s");
    }
    fn running(w: &World) {
        w.ensure_running("s");
    }
    fn vol_gone(name: &'static str) -> impl Fn(&World) {
        move |w: &World| w.try_(&["vol-delete", name, "--pool", "default"])
    }
    fn net_down(w: &World) {
        w.try_(&["net-destroy", "n2"]);
    }
    fn net_up(w: &World) {
        // net-start of a degraded network repairs it.
        w.try_(&["net-start", "n2"]);
    }
    let mut net: Vec<Case> = [
        "net-start.intent",
        "net-start.bridge",
        "net-start.addresses",
        "net-start.routes",
        "net-start.table",
        "net-start.dnsmasq-files",
        "net-start.dnsmasq",
    ]
    .into_iter()
    .map(|point| Case {
        point,
        prepare: net_down,
        cmd: |_| s(&["-q", "net-start", "n2"]),
        retry: Retry::Succeeds,
        cleanup: net_down,
    })
    .collect();
    net.extend(["net-destroy.table", "net-destroy.dnsmasq", "net-destroy.rundir"].into_iter().map(|point| Case {
        point,
        prepare: net_up,
        cmd: |_| s(&["-q", "net-destroy", "n2"]),
        retry: Retry::Succeeds,
        cleanup: none,
    }));
    let mut v = vec![
        Case {
            point: "install.disk-file",
            prepare: no_inst,
            cmd: |w| install_args("inst", &format!("path={},size=1", w.scratch.join("inst.qcow2").display())),
            retry: Retry::Succeeds,
            cleanup: no_inst,
        },
        Case {
            point: "install.volume",
            prepare: no_inst,
            cmd: |_| install_args("inst", "pool=default,size=1"),
            retry: Retry::Succeeds,
            cleanup: no_inst,
        },
        Case {
            point: "install.defined",
            prepare: no_inst,
            cmd: |_| install_args("inst", "pool=default,size=1"),
            retry: Retry::Succeeds,
            cleanup: no_inst,
        },
        Case {
            point: "install.started",
            prepare: no_inst,
            cmd: |_| install_args("inst", "pool=default,size=1"),
            retry: Retry::Done("already defined"),
            cleanup: no_inst,
        },
        Case {
            point: "clone.copy",
            prepare: no_clone,
            cmd: |_| s(&["-q", "clone", "src", "cl"]),
            retry: Retry::Succeeds,
            cleanup: no_clone,
        },
        Case {
            point: "clone.nvram",
            prepare: no_clone,
            cmd: |_| s(&["-q", "clone", "src", "cl"]),
            retry: Retry::Succeeds,
            cleanup: no_clone,
        },
        Case {
            point: "clone.placed",
            prepare: no_clone,
            cmd: |_| s(&["-q", "clone", "src", "cl"]),
            retry: Retry::Succeeds,
            cleanup: no_clone,
        },
        Case {
            point: "clone.defined",
            prepare: no_clone,
            cmd: |_| s(&["-q", "clone", "src", "cl"]),
            retry: Retry::Succeeds,
            cleanup: no_clone,
        },
        Case {
            point: "domrename.created",
            prepare: |w| {
                w.try_(&["domrename", "ren", "src"]);
                no_clone(w);
            },
            cmd: |_| s(&["-q", "domrename", "src", "ren"]),
            retry: Retry::Succeeds,
            cleanup: |w| w.try_(&["domrename", "ren", "src"]),
        },
        Case {
            point: "vol-clone.copy",
            prepare: |w| vol_gone("vc.qcow2")(w),
            cmd: |_| s(&["-q", "vol-clone", "tiny.qcow2", "vc.qcow2", "--pool", "default"]),
            retry: Retry::Succeeds,
            cleanup: |w| vol_gone("vc.qcow2")(w),
        },
        Case {
            point: "vol-import.copy",
            prepare: |w| vol_gone("vi.qcow2")(w),
            cmd: |_| s(&["-q", "vol-import", guest().to_str().unwrap(), "--pool", "default", "--name", "vi.qcow2"]),
            retry: Retry::Succeeds,
            cleanup: |w| vol_gone("vi.qcow2")(w),
        },
        Case {
            point: "vol-import.converted",
            prepare: |w| {
                vol_gone("vv.qcow2")(w);
                let vmdk = w.scratch.join("g.vmdk");
                if !vmdk.exists() {
                    sh("qemu-img", &["convert", "-O", "vmdk", guest().to_str().unwrap(), vmdk.to_str().unwrap()]);
                }
            },
            cmd: |w| {
                s(&[
                    "-q",
                    "vol-import",
                    w.scratch.join("g.vmdk").to_str().unwrap(),
                    "--pool",
                    "default",
                    "--name",
                    "vv.qcow2",
                ])
            },
            retry: Retry::Succeeds,
            cleanup: |w| vol_gone("vv.qcow2")(w),
        },
        Case {
            point: "start.taps",
            prepare: stopped,
            cmd: |_| s(&["-q", "start", "s"]),
            retry: Retry::Succeeds,
            cleanup: none,
        },
        Case {
            point: "start.files",
            prepare: stopped,
            cmd: |_| s(&["-q", "start", "s"]),
            retry: Retry::Succeeds,
            cleanup: none,
        },
        Case {
            point: "start.run-files",
            prepare: stopped,
            cmd: |_| s(&["-q", "start", "s"]),
            retry: Retry::Succeeds,
            cleanup: none,
        },
        Case {
            point: "start.spawned",
            prepare: stopped,
            cmd: |_| s(&["-q", "start", "s"]),
            retry: Retry::Done("already running"),
            cleanup: none,
        },
        Case {
            point: "shutdown.requested",
            prepare: running,
            cmd: |_| s(&["-q", "shutdown", "s", "--timeout", "5"]),
            retry: Retry::SucceedsOr("is not running"),
            cleanup: none,
        },
        Case {
            point: "destroy.requested",
            prepare: running,
            cmd: |_| s(&["-q", "destroy", "s"]),
            retry: Retry::SucceedsOr("is not running"),
            cleanup: none,
        },
    ];
    v.extend(net);
    v
}

/// A NAT network with DHCP besides `default`, for the network points.
const N2: &str = "<network><name>n2</name><forward mode='nat'/><bridge name='virbr9'/>\
<ip address='192.168.209.1' netmask='255.255.255.0'><dhcp><range start='192.168.209.10' end='192.168.209.99'/></dhcp></ip></network>";

impl World {
    /// A root in its own namespace with the test guest imported and network `n2` defined.
    fn new_bare() -> World {
        let h = VmHost::new("f");
        let scratch = h.k.dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let w = World { h, scratch };
        w.ok(&["-q", "vol-import", guest().to_str().unwrap(), "--pool", "default"]);
        let xml = w.scratch.join("n2.xml");
        std::fs::write(&xml, N2).unwrap();
        w.ok(&["-q", "net-define", xml.to_str().unwrap()]);
        w
    }
}

/// Besides, the default network running, a bystander VM that must survive everything, a
/// UEFI VM `src` to clone and a VM `s` to start and stop.
fn world() -> World {
    let w = World::new_bare();
    for (vm, extra) in [("keep", &[][..]), ("src", &["--boot", "uefi"][..]), ("s", &[][..])] {
        w.ok(&["-q", "vol-clone", "tiny.qcow2", &format!("{vm}.qcow2"), "--pool", "default", "--linked"]);
        let mut a = install_args(vm, &format!("vol=default/{vm}.qcow2"));
        a.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        w.ok(&refs);
    }
    w.ok(&["destroy", "src"]);
    w
}

/// Everything kvmctl made that should exist, against what does.
fn leaks(w: &World) -> Vec<String> {
    let mut out = vec![];
    let root = w.h.k.root();
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    // Temp files, journals, half-written definitions.
    for dir in [root.join("images"), root.join("domains"), root.join("networks"), root.join("locks"), w.scratch.clone()]
    {
        for n in names(&dir) {
            if n.starts_with('.') || n.contains(".tmp") || n.ends_with(".journal") {
                out.push(format!("{}/{n}", dir.display()));
            }
        }
    }
    // Lock files of objects that do not exist.
    let doms = names(&root.join("domains"));
    let run_doms = names(&root.join("run/domains"));
    for n in names(&root.join("locks")) {
        if let Some(vm) = n.strip_prefix("domain.") {
            if !doms.contains(&format!("{vm}.toml")) && !run_doms.iter().any(|r| r == vm) {
                out.push(format!("lock of undefined domain {vm}"));
            }
        }
    }
    // Taps: every tap in the namespace belongs to a VM that runs (or is starting).
    let mut owned = vec![];
    for vm in &run_doms {
        let o = w.h.k.in_ns(&w.h.ns, &["domstate", vm, "--reason"]);
        let st = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if st == "shut off (starting)" || !["shut off", "crashed", ""].contains(&w.state(vm).as_str()) {
            if let Ok(t) = std::fs::read_to_string(root.join(format!("run/domains/{vm}/state.json"))) {
                let st: serde_json::Value = serde_json::from_str(&t).unwrap();
                owned.extend(st["taps"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()));
            }
        }
    }
    // Bridges, tables and dnsmasq of networks that are active (or degraded: started).
    let nets = names(&root.join("run/networks"));
    let bridges: Vec<&str> = [("default", "virbr0"), ("n2", "virbr9")]
        .into_iter()
        .filter(|(n, _)| nets.iter().any(|m| m == n))
        .map(|(_, b)| b)
        .collect();
    for pid in w.h.ns.pids() {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("dnsmasq ") && !nets.iter().any(|n| cmd.contains(&format!("/run/networks/{n}/"))) {
            out.push(format!("dnsmasq of no started network: {cmd}"));
        }
    }
    let links = w.h.ns.ip(&["-o", "link", "show"]);
    for l in links.lines() {
        let name = l.split(": ").nth(1).unwrap_or("").split('@').next().unwrap_or("");
        let kind = w.h.ns.ip(&["-d", "-o", "link", "show", "dev", name]);
        if kind.contains(" tun type tap ") && !owned.iter().any(|o| o == name) {
            out.push(format!("tap {name} of no running VM"));
        }
        if kind.contains(" bridge ") && !bridges.contains(&name) {
            out.push(format!("bridge {name} of no active network"));
        }
    }
    let tables = w.h.ns.ok(&["nft", "list", "tables"]);
    for t in
        tables.lines().filter(|t| t.contains("kvmctl_") && !nets.iter().any(|n| t.ends_with(&format!("kvmctl_{n}"))))
    {
        out.push(format!("nft {t}"));
    }
    // Sockets of VMs that are not running.
    for vm in &run_doms {
        if w.state(vm) != "running" {
            for n in names(&root.join(format!("run/domains/{vm}"))) {
                if n.ends_with(".sock") {
                    out.push(format!("socket {vm}/{n} of a stopped VM"));
                }
            }
        }
    }
    out
}

/// One round: kill at `c.point`, the next command, the leak check, the retry.
fn round(w: &World, c: &Case) -> Vec<String> {
    (c.prepare)(w);
    let args = (c.cmd)(w);
    let point = c.point;
    let o = w.run(&args, Some(point));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{point}: {args:?} was not killed at its point: {err}");
    assert!(err.contains(&format!("fault point {point}")), "{point}: {err}");
    // The next command of any kind repairs: a listing first.
    let listed = w.ok(&["list", "--all", "--name"]);
    w.ok(&["vol-list", "default"]);
    let mut found: Vec<String> = leaks(w).into_iter().map(|l| format!("{point}: after the kill: {l}")).collect();
    if let Retry::Succeeds = c.retry {
        if point.starts_with("install") {
            assert!(!listed.lines().any(|l| l == "inst"), "{point}: an interrupted install is listed: {listed}");
        }
        if point.starts_with("clone") {
            assert!(!listed.lines().any(|l| l == "cl"), "{point}: an interrupted clone is listed: {listed}");
        }
    }
    let r = w.run(&args, None);
    let rerr = String::from_utf8_lossy(&r.stderr);
    match c.retry {
        Retry::Succeeds => assert!(r.status.success(), "{point}: the retry failed: {rerr}"),
        Retry::Done(msg) => {
            assert_eq!(r.status.code(), Some(1), "{point}: the retry: {rerr}");
            assert!(rerr.contains(msg), "{point}: the retry should find the work done ({msg}): {rerr}");
        }
        Retry::SucceedsOr(msg) => {
            assert!(r.status.success() || rerr.contains(msg), "{point}: the retry: {rerr}");
        }
    }
    if point.starts_with("shutdown") || point.starts_with("destroy") {
        assert!(w.h.k.in_ns(&w.h.ns, &["-q", "destroy", "s"]).status.code().is_some());
        assert_eq!(w.state("s"), "shut off", "{point}");
    }
    if point.starts_with("start") {
        assert_eq!(w.state("s"), "running", "{point}: the retried start");
    }
    found.extend(leaks(w).into_iter().map(|l| format!("{point}: after the retry: {l}")));
    (c.cleanup)(w);
    found
}

#[test]
fn every_fault_point_is_repaired_by_the_next_command_and_the_retry_succeeds() {
    if !prereqs() {
        return;
    }
    let w = world();
    let keep = w.qemu_pid("keep").expect("the bystander runs");
    let cases = cases();
    assert!(cases.len() >= 20, "the issue asks for at least 20 points");
    let mut found = vec![];
    for c in &cases {
        found.extend(round(&w, c));
        assert_eq!(w.qemu_pid("keep"), Some(keep), "{}: the bystander VM's qemu changed", c.point);
    }
    assert_eq!(found, Vec::<String>::new(), "leaks");
    w.remove_vm("s");
    w.remove_vm("src");
    w.remove_vm("keep");
    assert_eq!(leaks(&w), Vec::<String>::new());
}

/// `make stress`: KVMCTL_STRESS_ROUNDS (default 100) rounds of random points (seed printed;
/// KVMCTL_STRESS_SEED repeats a run); prints the counts, fails on any leak.
#[test]
#[ignore = "make stress runs it"]
fn stress_random_fault_points() {
    if !prereqs() {
        return;
    }
    let rounds: usize = std::env::var("KVMCTL_STRESS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let seed: u64 = std::env::var("KVMCTL_STRESS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("stress: {rounds} rounds, seed {seed}");
    let w = world();
    let keep = w.qemu_pid("keep").expect("the bystander runs");
    let cases = cases();
    let mut x = seed | 1;
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let mut found = vec![];
    for _ in 0..rounds {
        // xorshift64: no dependency for a die.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = &cases[(x % cases.len() as u64) as usize];
        *counts.entry(c.point).or_default() += 1;
        found.extend(round(&w, c));
        if w.qemu_pid("keep") != Some(keep) {
            found.push(format!("{}: the bystander VM's qemu changed", c.point));
        }
    }
    for (p, n) in &counts {
        println!("stress: {p:<24} {n} kills");
    }
    println!("stress: {rounds} kill rounds, {} leaks found", found.len());
    assert_eq!(found, Vec::<String>::new(), "leaks");
}

/// A network left degraded by a killed `net-start` is repaired by whoever needs it next: a VM
/// start on it, and `up` (the boot-time unit) for an autostart network, which also puts the
/// running VMs' taps back onto its bridge.
#[test]
fn a_degraded_network_is_repaired_by_a_vm_start_on_it_and_by_up() {
    if !prereqs() {
        return;
    }
    let w = World::new_bare();
    let killed = |point: &str| {
        let o = w.run(&s(&["net-start", "n2"]), Some(point));
        assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", String::from_utf8_lossy(&o.stderr));
        let list = w.ok(&["net-list", "--all"]);
        assert!(list.lines().any(|l| l.contains("n2") && l.contains("degraded")), "{list}");
    };
    killed("net-start.table");
    w.ok(&["-q", "vol-clone", "tiny.qcow2", "v2.qcow2", "--pool", "default", "--linked"]);
    let mut a = install_args("v2", "vol=default/v2.qcow2");
    a.retain(|x| x != "-q");
    let net = a.iter().position(|x| x == "network=default").unwrap();
    a[net] = "network=n2".into();
    let o = w.run(&a, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("Network 'n2' was degraded") && err.contains("repaired"), "{err}");
    assert!(w.h.ns.ok(&["nft", "list", "tables"]).contains("kvmctl_n2"));
    assert_eq!(w.state("v2"), "running");
    // `up` repairs an autostart network and re-attaches the VM's tap to the new bridge.
    w.ok(&["net-autostart", "n2"]);
    assert!(w.h.k.fails_in(&w.h.ns, 1, &["net-destroy", "n2"]).contains("v2"));
    w.ok(&["net-destroy", "n2", "--force"]);
    killed("net-start.dnsmasq-files");
    let out = w.ok(&["up"]);
    assert!(out.contains("Network n2 repaired") && out.contains("Re-attached to bridge virbr9"), "{out}");
    let tap = w.h.ns.ip(&["-o", "link", "show", "master", "virbr9"]);
    assert!(tap.contains("vnet"), "the VM's tap is on the bridge again: {tap}");
    w.remove_vm("v2");
    w.ok(&["net-destroy", "n2"]);
    assert_eq!(leaks(&w), Vec::<String>::new());
}
