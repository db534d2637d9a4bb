//! VMs outlive their supervisor: a killed supervisor is replaced by the next command (or
//! `recover`), which re-adopts the same qemu; a qemu that died unsupervised is recorded and
//! cleaned up. Real VMs (the tiny test guest, direct kernel boot, TCG, no NIC) inside a
//! namespace each test creates; needs root, qemu and the test guest.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::netns::can_netns;
use common::pty::Pty;
use common::vmhost::VmHost;
use common::*;

fn prereqs() -> bool {
    require(
        "root, qemu-system-x86_64 and the test guest (images/build.sh)",
        can_netns() && have_program("qemu-system-x86_64") && guest_dir().join("vmlinuz").exists(),
    )
}

/// Install (and start) a small VM booting the test guest's kernel, with no NIC.
fn install(h: &VmHost, name: &str) {
    let g = guest_dir();
    let boot = format!("kernel={},initrd={}", g.join("vmlinuz").display(), g.join("initramfs.cpio.gz").display());
    h.ok(&[
        "-q",
        "install",
        "--name",
        name,
        "--memory",
        "128",
        "--boot",
        &boot,
        "--network",
        "none",
        "--noautoconsole",
    ]);
}

fn run_dir(h: &VmHost, vm: &str) -> PathBuf {
    h.k.root().join(format!("run/domains/{vm}"))
}

fn state(h: &VmHost, vm: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run_dir(h, vm).join("state.json")).unwrap()).unwrap()
}

/// (supervisor pid, qemu pid) from state.json.
fn pids(h: &VmHost, vm: &str) -> (i32, i32) {
    let st = state(h, vm);
    (st["supervisor_pid"].as_i64().unwrap() as i32, st["qemu_pid"].as_i64().unwrap() as i32)
}

/// Is `pid` a live process (not gone, not a zombie waiting to be reaped)?
fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    !matches!(after.split_whitespace().next(), Some("Z" | "X"))
}

fn wait_gone(pid: i32, secs: u64) {
    let t0 = Instant::now();
    while running(pid) {
        assert!(t0.elapsed() < Duration::from_secs(secs), "pid {pid} still runs after {secs}s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigkill(pid: i32) {
    assert!(running(pid), "pid {pid} is not running");
    // SAFETY: kill(2) on a pid this test just read from the VM's state and checked.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_gone(pid, 10);
}

/// Live qemu processes whose command line has `-uuid UUID`.
fn qemus_of(uuid: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.windows(2).any(|w| w[0] == b"-uuid" && w[1] == uuid.as_bytes()) && running(pid) {
            out.push(pid);
        }
    }
    out
}

fn uuid(h: &VmHost, vm: &str) -> String {
    let info: serde_json::Value = serde_json::from_str(&h.ok(&["--json", "dominfo", vm])).unwrap();
    info["definition"]["uuid"].as_str().unwrap().to_string()
}

/// `kvmctl console ARGS` under a pty.
fn console_pty(h: &VmHost, args: &[&str]) -> Pty {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmctl"));
    c.arg("--root").arg(h.k.root()).arg("console").args(args);
    Pty::spawn(c)
}

/// `kvmctl ARGS` in the host's namespace with fault point `fault` armed.
fn with_fault(h: &VmHost, fault: &str, args: &[&str]) -> Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &h.ns.name, env!("CARGO_BIN_EXE_kvmctl"), "--root"])
        .arg(h.k.root())
        .args(args)
        .env_remove("KVMCTL_ROOT")
        .env("KVMCTL_FAULT", fault);
    c.bounded()
}

fn sockets_gone(h: &VmHost, vm: &str) {
    for f in ["control.sock", "qmp.sock", "console.sock"] {
        assert!(!run_dir(h, vm).join(f).exists(), "{vm}: {f} left behind");
    }
}

#[test]
fn killed_supervisor_is_replaced_and_the_same_qemu_keeps_running_with_its_console() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("a");
    install(&h, "a1");
    h.wait_console("a1", "KVMCTL-GUEST-READY", 1, 300);
    let token = std::process::id();
    let mut con = console_pty(&h, &["a1"]);
    con.expect("Escape character is ^]", 60);
    con.expect("kvmctl-guest:~#", 60);
    con.send(format!("echo before-$(({token}+1))\r").as_bytes());
    con.expect(&format!("before-{}", token + 1), 60);
    let (sup, qemu) = pids(&h, "a1");
    let start_time = state(&h, "a1")["qemu_start_time"].as_u64().unwrap();
    let log_before = std::fs::read(run_dir(&h, "a1").join("console.log")).unwrap();

    sigkill(sup);
    // The attached console says its supervisor went away, and fails.
    let st = con.wait_status(30);
    assert_eq!(st.code(), Some(1), "console exit; transcript:\n{}", con.seen);
    assert!(con.seen.contains("console: supervisor of VM 'a1' went away"), "{}", con.seen);
    // qemu did not die with it.
    assert!(running(qemu), "qemu died with its supervisor");

    // The next command gives it a new supervisor: same qemu, running.
    assert_eq!(h.ok(&["domstate", "a1"]).trim(), "running");
    let (sup2, qemu2) = pids(&h, "a1");
    assert_ne!(sup2, sup, "no new supervisor");
    assert!(running(sup2));
    assert_eq!(qemu2, qemu, "the qemu pid changed");
    let st = state(&h, "a1");
    assert_eq!(st["qemu_start_time"].as_u64(), Some(start_time));
    assert_eq!(st["adoptions"].as_u64(), Some(1));
    // list's Id is the VM's domain id (its first start in this root: 1), kept by the adoption.
    let list = h.ok(&["list"]);
    assert!(list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "a1", "running"]), "{list}");

    // The console goes on: a new session types and sees the answer, console.log keeps the
    // whole boot and grows.
    let mut con = console_pty(&h, &["a1"]);
    con.expect("Escape character is ^]", 60);
    con.send(format!("echo after-$(({token}+2))\r").as_bytes());
    con.expect(&format!("after-{}", token + 2), 60);
    let log = h.wait_console("a1", &format!("after-{}", token + 2), 1, 60);
    assert!(log.as_bytes().starts_with(&log_before), "console.log was not appended to");
    assert!(log.contains("KVMCTL-GUEST-READY") && log.contains(&format!("before-{}", token + 1)));
    con.send(&[0x1d]);
    con.wait_exit(30);

    // The adopted VM's state machine works: pause, resume, destroy; nothing is left.
    h.ok(&["suspend", "a1"]);
    assert_eq!(h.ok(&["domstate", "a1"]).trim(), "paused");
    h.ok(&["resume", "a1"]);
    assert_eq!(h.ok(&["domstate", "a1"]).trim(), "running");
    h.ok(&["destroy", "a1"]);
    wait_gone(qemu, 30);
    wait_gone(sup2, 30);
    assert_eq!(h.ok(&["domstate", "a1", "--reason"]).trim(), "shut off (destroyed)");
    sockets_gone(&h, "a1");
}

#[test]
fn qemu_that_died_while_unsupervised_is_marked_crashed_and_cleaned_up() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("a");
    install(&h, "c1");
    let uuid = uuid(&h, "c1");
    let (sup, qemu) = pids(&h, "c1");
    sigkill(sup);
    sigkill(qemu);
    assert_eq!(
        h.ok(&["domstate", "c1", "--reason"]).trim(),
        "crashed (crashed: qemu exited while its supervisor was gone)"
    );
    sockets_gone(&h, "c1");
    assert!(!run_dir(&h, "c1").join("lock").exists(), "lock file left behind");
    assert!(state(&h, "c1")["qemu_pid"].is_null());
    assert!(h.ok(&["list", "--all"]).contains("crashed"));
    // Stopped means stopped: the VM starts again (its images are free) and stops.
    h.ok(&["start", "c1"]);
    let (_, qemu2) = pids(&h, "c1");
    assert_eq!(qemus_of(&uuid), vec![qemu2]);
    h.ok(&["destroy", "c1"]);
    wait_gone(qemu2, 30);
    assert!(qemus_of(&uuid).is_empty());
}

#[test]
fn recover_readopts_every_orphaned_vm_and_records_the_dead_ones() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("a");
    install(&h, "r1");
    install(&h, "r2");
    let (sup1, qemu1) = pids(&h, "r1");
    let (sup2, qemu2) = pids(&h, "r2");
    // r1 is paused when its supervisor dies: the new one reads that back from qemu.
    h.ok(&["suspend", "r1"]);
    sigkill(sup1);
    sigkill(sup2);
    sigkill(qemu2);
    let out = h.ok(&["recover"]);
    assert!(out.contains(&format!("Domain 'r1': supervisor replaced, qemu (pid {qemu1}) re-adopted")), "{out}");
    assert!(out.contains("Domain 'r2': qemu had exited while unsupervised: crashed"), "{out}");
    assert!(out.contains("1 domain(s) re-adopted, 1 found stopped and cleaned up"), "{out}");
    let (sup1b, qemu1b) = pids(&h, "r1");
    assert_eq!(qemu1b, qemu1);
    assert!(running(sup1b) && sup1b != sup1);
    // Nothing left to do: a second run changes nothing.
    let out = h.ok(&["recover"]);
    assert!(out.contains("0 domain(s) re-adopted, 0 found stopped"), "{out}");
    assert_eq!(pids(&h, "r1"), (sup1b, qemu1));
    assert_eq!(h.ok(&["domstate", "r2"]).trim(), "crashed");
    assert_eq!(h.ok(&["domstate", "r1"]).trim(), "paused");
    h.ok(&["resume", "r1"]);
    assert_eq!(h.ok(&["domstate", "r1"]).trim(), "running");
    // The shipped systemd unit runs it.
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/kvmctl.service")).unwrap();
    assert!(unit.lines().any(|l| l.starts_with("ExecStart=") && l.ends_with("kvmctl recover")), "{unit}");
    h.ok(&["destroy", "r1"]);
    wait_gone(qemu1, 30);
}

#[test]
fn a_supervisor_killed_while_starting_or_adopting_leaves_no_stray_qemu() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("a");
    install(&h, "f1");
    let uuid = uuid(&h, "f1");
    h.ok(&["destroy", "f1"]);
    // Killed right after spawning qemu (paused, never run): start fails, and that qemu goes.
    let o = with_fault(&h, "supervise.qemu-spawned", &["start", "f1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("domain 'f1' failed to start: the supervisor died"), "{err}");
    assert!(qemus_of(&uuid).is_empty(), "a stray qemu is left: {:?}", qemus_of(&uuid));
    assert_eq!(
        h.ok(&["domstate", "f1", "--reason"]).trim(),
        "shut off (failed: the supervisor died while starting qemu)"
    );
    sockets_gone(&h, "f1");
    // A new supervisor killed once it reconnected qemu: the next command adopts it again.
    h.ok(&["start", "f1"]);
    let (sup, qemu) = pids(&h, "f1");
    sigkill(sup);
    let o = with_fault(&h, "adopt.connected", &["domstate", "f1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("domain 'f1': re-adopting its qemu: the new supervisor died"), "{err}");
    assert!(running(qemu), "qemu died with the new supervisor");
    assert_eq!(h.ok(&["domstate", "f1"]).trim(), "running");
    let (sup2, qemu2) = pids(&h, "f1");
    assert_eq!(qemu2, qemu);
    assert!(running(sup2) && sup2 != sup);
    h.wait_console("f1", "KVMCTL-GUEST-READY", 1, 300);
    h.ok(&["destroy", "f1"]);
    wait_gone(qemu, 30);
    assert!(qemus_of(&uuid).is_empty());
}

/// A minimal QMP client on the VM's qmp.sock (qemu serves it to whoever connects while no
/// supervisor holds it): `execute` returns the reply's `return`, skipping events.
struct Qmp(std::io::BufReader<std::os::unix::net::UnixStream>);

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut q = Qmp(std::io::BufReader::new(s));
        let greeting = q.line();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        q.execute("qmp_capabilities");
        q
    }
    fn line(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        let mut l = String::new();
        self.0.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("QMP said {l:?}: {e}"))
    }
    fn execute(&mut self, cmd: &str) -> serde_json::Value {
        use std::io::Write;
        self.0.get_mut().write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes()).unwrap();
        loop {
            let v = self.line();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("event").is_some(), "{cmd}: {v}");
        }
    }
}

/// Poll `domstate --reason` until it reads `want`.
fn wait_domstate(h: &VmHost, vm: &str, want: &str, secs: u64) {
    let t0 = Instant::now();
    loop {
        let got = h.ok(&["domstate", vm, "--reason"]);
        if got.trim() == want {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "{vm}: domstate {got:?}, not {want:?} after {secs}s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_shutdown_survives_its_supervisor_dying_and_a_poweroff_while_unsupervised_is_applied() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("a");
    install(&h, "p1");
    h.wait_console("p1", "KVMCTL-GUEST-READY", 1, 300);
    // `shutdown` is waiting for the guest when the supervisor dies: it waits on with the
    // new one, and the VM ends shut off, not crashed.
    let (sup, qemu) = pids(&h, "p1");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &h.ns.name, env!("CARGO_BIN_EXE_kvmctl"), "--root"])
        .arg(h.k.root())
        .args(["shutdown", "p1", "--timeout", "120"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let t0 = Instant::now();
    while state(&h, "p1")["stopping"] != "shutdown" {
        assert!(t0.elapsed() < Duration::from_secs(30), "the shutdown was not recorded");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Past the reply (the guest takes about two seconds to power off).
    std::thread::sleep(Duration::from_millis(300));
    sigkill(sup);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("is shut down"), "{stdout}{stderr}");
    assert_eq!(h.ok(&["domstate", "p1", "--reason"]).trim(), "shut off (shutdown)");
    wait_gone(qemu, 30);
    sockets_gone(&h, "p1");

    // The guest powers off while no supervisor runs (qemu stays, -no-shutdown): the next
    // command's supervisor applies on_poweroff (destroy) as the missed event would have.
    h.ok(&["start", "p1"]);
    h.wait_console("p1", "KVMCTL-GUEST-READY", 1, 300);
    let (sup, qemu) = pids(&h, "p1");
    sigkill(sup);
    let mut q = Qmp::connect(&run_dir(&h, "p1").join("qmp.sock"));
    q.execute("system_powerdown");
    let t0 = Instant::now();
    while q.execute("query-status")["status"] != "shutdown" {
        assert!(t0.elapsed() < Duration::from_secs(60), "the guest did not power off");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(q);
    assert!(running(qemu));
    wait_domstate(&h, "p1", "shut off (shutdown)", 30);
    wait_gone(qemu, 30);
    sockets_gone(&h, "p1");
}
