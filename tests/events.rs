//! `kvmctl events`: a real follower in the background while real VMs (the test guest, TCG or
//! KVM) are defined, started, paused, crashed and removed on a NAT network, each test inside
//! a network namespace it creates (and deletes, even on failure). The journal and lease-file
//! tests need no root.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::netns::can_netns;
use common::vmhost::VmHost;
use common::*;
use serde_json::Value;

fn prereqs() -> bool {
    require(
        "root, qemu-system-x86_64, dnsmasq, nft and the test guest (images/build.sh)",
        can_netns()
            && ["qemu-system-x86_64", "dnsmasq", "nft"].iter().all(|p| have_program(p))
            && guest_dir().join("tiny.qcow2").exists(),
    )
}

/// A `kvmctl events` running in the background; killed on drop.
struct Follow {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follow {
    /// Start `kvmctl -v events ARGS` (in `ns` if given) and wait until it follows.
    fn start(k: &Kvm, ns: Option<&common::netns::Netns>, args: &[&str]) -> Follow {
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_kvmctl")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_kvmctl")),
        };
        c.arg("--root").arg(k.root()).arg("-v").arg("events").args(args).env_remove("KVMCTL_ROOT");
        let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = etx.send(l);
            }
        });
        let t0 = Instant::now();
        loop {
            match erx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains("following events") => break,
                Ok(_) => {}
                Err(e) => panic!("events did not start following: {e}"),
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "events did not start following");
        }
        Follow { child, lines, seen: vec![] }
    }

    /// Lines until one satisfies `want` (within `secs`); returns it.
    fn until(&mut self, secs: u64, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                    if want(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no {what} within {secs}s; events so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Wait for the event `kind`/`name`/`event`.
    fn expect(&mut self, kind: &str, name: &str, event: &str, secs: u64) -> Value {
        self.until(secs, &format!("{kind} {name} {event}"), |v| {
            v["kind"] == kind && v["name"] == name && v["event"] == event
        })
    }

    /// Wait for the process to end by itself; its exit code and remaining output.
    fn ended(mut self, secs: u64) -> (i32, Vec<String>) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(secs), "events did not end within {secs}s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = std::mem::take(&mut self.seen);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            rest.push(l);
        }
        (status.code().unwrap_or(-1), rest)
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn disk(h: &VmHost, name: &str) {
    if !h.k.images().join("tiny.qcow2").exists() {
        h.ok(&["-q", "vol-import", guest_dir().join("tiny.qcow2").to_str().unwrap(), "--pool", "default"]);
    }
    h.ok(&["-q", "vol-clone", "tiny.qcow2", name, "--pool", "default", "--linked"]);
}

fn install(h: &VmHost, name: &str, net: &str) {
    let vol = format!("vol=default/{name}.qcow2");
    disk(h, &format!("{name}.qcow2"));
    h.ok(&[
        "install",
        "--name",
        name,
        "--memory",
        "256",
        "--disk",
        &vol,
        "--network",
        net,
        "--import",
        "--noautoconsole",
    ]);
}

fn qemu_pids(h: &VmHost) -> Vec<i32> {
    h.ns.pids()
        .into_iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().starts_with("qemu"))
        .collect()
}

#[test]
fn events_follow_a_vm_and_its_network_through_their_lifecycle_in_order() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("e");
    let mut all = Follow::start(&h.k, Some(&h.ns), &["--json"]);
    // The filters, and --count ending the stream on its own.
    let by_vm = Follow::start(&h.k, Some(&h.ns), &["--json", "--domain", "vm1", "--count", "3"]);
    let by_net = Follow::start(&h.k, Some(&h.ns), &["--json", "--network", "default", "--count", "1"]);
    let human = Follow::start(&h.k, Some(&h.ns), &["--count", "2", "vm1"]);
    install(&h, "vm1", "network=default");
    let defined = all.expect("domain", "vm1", "defined", 60);
    assert_eq!(defined["detail"], "added");
    let net = all.expect("network", "default", "started", 60);
    assert!(net["detail"].as_str().unwrap().starts_with("bridge "), "{net}");
    let started = all.expect("domain", "vm1", "started", 60);
    assert_eq!(started["detail"], "booted");
    let keys: Vec<&str> = started.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 5, "{started}");
    assert!(["time", "kind", "name", "event", "detail"].iter().all(|k| keys.contains(k)), "{started}");
    let t = started["time"].as_str().unwrap();
    assert!(t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    // The guest prints its readiness line after DHCP: its lease is an event, naming the VM.
    let log = h.wait_console("vm1", "KVMCTL-GUEST-READY", 1, 300);
    let lease = all.expect("lease", "default", "acquired", 120);
    let nics: Value = serde_json::from_str(&h.ok(&["--json", "domiflist", "vm1"])).unwrap();
    let mac = nics[0]["mac"].as_str().unwrap().to_string();
    assert_eq!((lease["network"].as_str(), lease["mac"].as_str()), (Some("default"), Some(mac.as_str())), "{lease}");
    assert_eq!(lease["domain"], "vm1", "{lease}");
    let ip = lease["ip"].as_str().unwrap();
    assert!(log.contains(&format!("eth0={ip}/24")), "{lease} vs {log}");
    assert!(lease.as_object().unwrap().contains_key("hostname"), "{lease}");
    // Filtered followers saw only theirs, and ended after --count.
    let (code, lines) = by_vm.ended(60);
    assert_eq!(code, 0);
    let evs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let words: Vec<(&str, &str)> =
        evs.iter().map(|v| (v["kind"].as_str().unwrap(), v["event"].as_str().unwrap())).collect();
    assert_eq!(words, [("domain", "defined"), ("domain", "started"), ("lease", "acquired")], "{lines:?}");
    let (code, lines) = by_net.ended(60);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(r#""kind":"network","name":"default","event":"started""#), "{lines:?}");
    let (code, lines) = human.ended(60);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let re = |l: &str, tail: &str| {
        let (time, rest) = l.split_at(28);
        assert!(time.ends_with("+0000") && time.as_bytes()[10] == b' ' && time.as_bytes()[19] == b'.', "{l}");
        assert_eq!(rest, tail, "{l}");
    };
    re(&lines[0], ": event 'lifecycle' for domain 'vm1': Defined (added)");
    re(&lines[1], ": event 'lifecycle' for domain 'vm1': Started (booted)");
    // Pause, resume, a reboot through the guest, a reset, then destroy and undefine.
    h.ok(&["suspend", "vm1"]);
    assert_eq!(all.expect("domain", "vm1", "paused", 60)["detail"], "user");
    h.ok(&["resume", "vm1"]);
    all.expect("domain", "vm1", "resumed", 60);
    h.ok(&["reboot", "vm1"]);
    all.expect("domain", "vm1", "rebooted", 300);
    h.ok(&["reset", "vm1"]);
    assert_eq!(all.expect("domain", "vm1", "rebooted", 60)["detail"], "reset");
    h.ok(&["destroy", "vm1"]);
    assert_eq!(all.expect("domain", "vm1", "shutdown", 60)["detail"], "destroyed");
    h.ok(&["undefine", "vm1", "--remove-all-storage"]);
    all.expect("domain", "vm1", "undefined", 60);
    h.ok(&["net-destroy", "default"]);
    all.expect("network", "default", "stopped", 60);
    // Nothing out of order or twice for vm1: destroy's second record is no event.
    let vm1: Vec<String> = all
        .seen
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "domain" && v["name"] == "vm1")
        .map(|v| v["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        vm1,
        ["defined", "started", "paused", "resumed", "rebooted", "rebooted", "shutdown", "undefined"],
        "{:#?}",
        all.seen
    );
}

#[test]
fn a_killed_qemu_is_a_crash_event_and_a_guest_poweroff_a_shutdown() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("e");
    let mut f = Follow::start(&h.k, Some(&h.ns), &["--json", "c1"]);
    install(&h, "c1", "none");
    f.expect("domain", "c1", "started", 60);
    for p in qemu_pids(&h) {
        // SAFETY: kill(2) on a qemu inside this test's own namespace.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let crash = f.expect("domain", "c1", "crashed", 120);
    assert!(crash["detail"].as_str().unwrap().contains("SIGKILL"), "{crash}");
    // ACPI shutdown of a booted guest: it powers off.
    h.ok(&["start", "c1"]);
    f.expect("domain", "c1", "started", 60);
    h.wait_console("c1", "KVMCTL-GUEST-READY", 1, 300);
    assert!(h.ok(&["shutdown", "c1", "--timeout", "120"]).contains("is shut down"));
    assert_eq!(f.expect("domain", "c1", "shutdown", 60)["detail"], "poweroff (ACPI shutdown)");
    h.ok(&["undefine", "c1", "--remove-all-storage"]);
}

#[test]
fn timeout_ends_a_quiet_stream_with_exit_zero() {
    let k = Kvm::new();
    k.ok(&["-q", "pool-list"]);
    let t0 = Instant::now();
    let out = k.ok(&["events", "--timeout", "2"]);
    assert!(t0.elapsed() >= Duration::from_secs(2), "ended early");
    assert_eq!(out, "", "no event, no line");
    assert_eq!(k.ok(&["events", "--count", "0"]), "");
    assert!(k.fails(1, &["events", "--domain", "bad/name"]).contains("domain name 'bad/name'"));
    k.fails(2, &["events", "vm1", "--network", "default"]);
    k.fails(2, &["events", "--timeout", "soon"]);
}

#[test]
fn a_journal_that_cannot_be_written_never_fails_the_operation() {
    let k = Kvm::new();
    k.ok(&["-q", "pool-list"]);
    let journal = k.root().join("run/events.ndjson");
    let _ = std::fs::remove_file(&journal);
    std::fs::create_dir(&journal).unwrap();
    let def = k.dir.path().join("v.toml");
    std::fs::write(&def, "name = \"v\"\nmemory_mib = 64\nvcpus = 1\n").unwrap();
    let o = k.run(&["define", def.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot record the event") && err.contains("events.ndjson"), "{err}");
    k.ok(&["undefine", "v"]);
}

#[test]
fn journal_is_private_and_lease_hostnames_reach_no_terminal_raw() {
    use std::os::unix::fs::PermissionsExt;
    let k = Kvm::new();
    k.ok(&["-q", "pool-list"]);
    let mut f = Follow::start(&k, None, &["--json"]);
    let mut human = Follow::start(&k, None, &["--count", "2"]);
    // A network's lease file as dnsmasq writes it, with what a hostile guest might send as
    // its hostname (dnsmasq's own checks aside).
    let net = k.root().join("run/networks/evil");
    std::fs::create_dir_all(&net).unwrap();
    let hostile = "pwn\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\u{202e}";
    std::fs::write(net.join("leases"), format!("0 52:54:00:11:22:33 10.9.9.9 {hostile} *\n")).unwrap();
    let v = f.expect("lease", "evil", "acquired", 30);
    let host = v["hostname"].as_str().unwrap();
    assert!(!host.chars().any(|c| c.is_control() || c == '\u{202e}'), "{host:?}");
    assert!(host.starts_with("pwn\\u{1b}]0;owned"), "{host:?}");
    assert_eq!((v["ip"].as_str(), v["mac"].as_str()), (Some("10.9.9.9"), Some("52:54:00:11:22:33")));
    assert!(v["domain"].is_null());
    // Released once both followers have seen it (a lease shorter than their settling time
    // would be no event at all).
    let first = human.lines.recv_timeout(Duration::from_secs(30)).expect("the human line of the lease");
    human.seen.push(first);
    std::fs::write(net.join("leases"), "").unwrap();
    f.expect("lease", "evil", "released", 30);
    let (code, lines) = human.ended(30);
    assert_eq!(code, 0);
    assert!(lines.iter().all(|l| !l.chars().any(|c| c.is_control())), "{lines:?}");
    assert!(lines[0]
        .contains("event 'lease' for network 'evil': Acquired 10.9.9.9 mac 52:54:00:11:22:33 hostname 'pwn\\u{1b}"));
    assert!(lines[1].contains("Released 10.9.9.9"), "{lines:?}");
    let mode = std::fs::metadata(k.root().join("run/events.ndjson")).map(|m| m.permissions().mode() & 0o777);
    // The only writer so far was the first command (the default network's definition).
    assert_eq!(mode.unwrap(), 0o600);
}

#[test]
fn sigterm_ctrl_c_and_a_reader_that_goes_away_end_the_stream_with_exit_zero() {
    use nix::sys::signal::{kill, Signal};
    let k = Kvm::new();
    k.ok(&["-q", "pool-list"]);
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let f = Follow::start(&k, None, &["--json"]);
        kill(nix::unistd::Pid::from_raw(f.child.id() as i32), sig).unwrap();
        let (code, lines) = f.ended(30);
        assert_eq!((code, lines.len()), (0, 0), "{sig}");
    }
    // `kvmctl events | true`: the reader is gone before any event; events notices and ends.
    let script =
        format!("set -o pipefail; {} --root {} events --json | true", env!("CARGO_BIN_EXE_kvmctl"), k.root().display());
    let o = bounded_output_within(Command::new("bash").args(["-c", &script]), Duration::from_secs(60));
    assert!(o.status.success() && o.stderr.is_empty(), "{o:?}");
}
