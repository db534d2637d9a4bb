//! QMP client (fake server + real qemu), KVM probe, and taps (in a private network namespace).

use std::time::{Duration, Instant};

use kvmctl::domain::accel::{self, Accel, ProbeStep};

mod common;

use common::require;

fn host_has_virt_flag() -> bool {
    accel::cpu_has_virt_flag(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// accel
//
// The host's KVM is not a prerequisite: these tests pass on hosts without /dev/kvm, with a
// vCPU that crawls (nested without VMX), where qemu's own KVM init fails, and where KVM
// works. Each says which path it took; none asserts a speed (that is `make bench`'s job),
// only generous watchdogs against hangs.

/// Far above every probe deadline: only a hang trips it.
const WATCHDOG: Duration = Duration::from_secs(120);

fn dev_kvm_opens() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

#[test]
fn accel_probe_reaches_a_verdict_and_caches_it_per_boot() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let first = accel::probe(dir.path());
    let took = start.elapsed();
    eprintln!("path: verdict decided by {:?}: {first} ({took:?})", first.decided_by);
    assert!(took < WATCHDOG, "the probe hung: {took:?}");
    assert!(!first.cached);
    assert!(first.reason.starts_with(if first.kvm_usable { "KVM usable: " } else { "KVM unusable: " }), "{first}");
    if !host_has_virt_flag() && dev_kvm_opens() {
        // This kind of host (nested without VMX): decided by the flags, never by running a vCPU.
        assert_eq!(first.decided_by, ProbeStep::CpuFlags, "{first}");
    }
    if first.decided_by == ProbeStep::DevKvm {
        // No usable /dev/kvm: instant to find out again, so deliberately not cached.
        assert!(!dir.path().join(accel::CACHE_FILE).exists());
        return;
    }
    let cache = std::fs::read_to_string(dir.path().join(accel::CACHE_FILE)).unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(cache.contains(boot_id.trim()), "{cache}");

    // The second call reads the cache: the same verdict, with the first run's probe time.
    let second = accel::probe(dir.path());
    assert!(second.cached);
    assert!(second.to_string().contains("cached"), "{second}");
    assert_eq!(
        (second.kvm_usable, &second.reason, second.decided_by, second.probe_ms),
        (first.kvm_usable, &first.reason, first.decided_by, first.probe_ms)
    );
}

#[test]
fn accel_auto_follows_the_probe_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let verdict = accel::probe(dir.path());
    let auto = accel::resolve(Accel::Auto, &verdict).unwrap();
    assert_eq!(accel::resolve(Accel::Tcg, &verdict).unwrap().accel, Accel::Tcg);
    if verdict.kvm_usable {
        eprintln!("path: KVM usable here ({verdict}): auto picks KVM");
        assert_eq!(auto, accel::Resolution { accel: Accel::Kvm, notice: None });
        assert_eq!(accel::resolve(Accel::Kvm, &verdict).unwrap().accel, Accel::Kvm);
        return;
    }
    eprintln!("path: KVM unusable here ({verdict}): auto falls back to TCG");
    assert_eq!(auto.accel, Accel::Tcg);
    assert_eq!(auto.notice.unwrap(), format!("{}; using TCG", verdict.reason));
    let err = accel::resolve(Accel::Kvm, &verdict).unwrap_err().to_string();
    assert!(err.contains(&verdict.reason), "{err}");
}

/// The deep probe on its own, with the probe's workload and deadline: it finishes (KVM runs
/// natively), is killed at the deadline (the vCPU crawls), or names the KVM step the host
/// refused; a wrong result from the guest code fails.
#[test]
fn accel_test_guest_reaches_a_verdict_within_its_deadline() {
    let start = Instant::now();
    let verdict = accel::probe_guest(accel::GUEST_DEADLINE);
    let took = start.elapsed();
    assert!(took < WATCHDOG, "took {took:?}");
    assert_eq!(verdict.decided_by, ProbeStep::TestGuest);
    let killed = verdict.reason.contains(&format!("work chunks in {} ms", accel::GUEST_DEADLINE.as_millis()));
    let refused = accel::HOST_REFUSALS.iter().any(|r| verdict.reason.contains(r));
    let path = if verdict.kvm_usable {
        "finished"
    } else if killed {
        "killed at the deadline"
    } else {
        "refused by the host's KVM"
    };
    eprintln!("path: test guest {path}: {verdict} ({took:?})");
    assert!(verdict.kvm_usable || killed || refused, "{verdict}");
    if !dev_kvm_opens() {
        assert!(verdict.reason.contains("cannot open /dev/kvm"), "{verdict}");
    }
}

/// Proves the guest code itself is right: a workload small enough that even a vCPU emulated a
/// thousand times slower finishes it long before the watchdog. Where the host's KVM refuses a
/// step (no /dev/kvm, no vCPU), the verdict must name that step.
#[test]
fn accel_test_guest_code_finishes_a_small_workload() {
    let work = accel::Workload { chunks: 3, iterations: 1000 };
    let verdict = accel::run_guest(work, WATCHDOG);
    if verdict.kvm_usable {
        eprintln!("path: the vCPU ran the guest to the end: {verdict}");
        return;
    }
    eprintln!("path: the host's KVM refused the guest: {verdict}");
    assert!(accel::HOST_REFUSALS.iter().any(|r| verdict.reason.contains(r)), "{verdict}");
    assert!(!verdict.reason.contains("work chunks in"), "the small workload hung: {verdict}");
}

/// Step 4 against the real qemu: a verdict in qemu's own words where its KVM init fails (as on
/// hosts whose kernel refuses an MSR, or without /dev/kvm), usable where it runs its vCPU.
#[test]
fn accel_qemu_kvm_init_reaches_a_verdict() {
    if !require("qemu-system-x86_64", common::have_program("qemu-system-x86_64")) {
        return;
    }
    let qemu = kvmctl::process::find_program("qemu-system-x86_64").unwrap();
    let start = Instant::now();
    let verdict = accel::probe_qemu(&qemu, accel::QEMU_DEADLINE);
    let took = start.elapsed();
    eprintln!("path: qemu -accel kvm {}: {verdict} ({took:?})", if verdict.kvm_usable { "ran" } else { "failed" });
    assert!(took < WATCHDOG, "took {took:?}");
    assert_eq!(verdict.decided_by, ProbeStep::QemuInit);
    if verdict.kvm_usable {
        assert!(dev_kvm_opens(), "qemu ran KVM without a usable /dev/kvm? {verdict}");
    } else {
        let said = verdict.reason.rsplit(": ").next().unwrap_or_default();
        assert!(!said.trim().is_empty(), "the failure must carry qemu's words: {verdict}");
    }
}

/// Run `body` on a thread in a private mount namespace where `setup` changed what the probe
/// sees (the host stays untouched: the mounts vanish with the namespace).
fn in_private_mounts<T: Send + 'static>(setup: fn(), body: fn() -> T) -> T {
    std::thread::spawn(move || {
        use nix::mount::{mount, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount namespace");
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
        setup();
        body()
    })
    .join()
    .unwrap()
}

/// The probe on simulated kinds of host, run for real: `/dev/kvm` absent (a tmpfs over /dev),
/// and a CPU that claims VMX (a cpuinfo with `vmx` bound over /proc/cpuinfo), which makes the
/// test guest and, if it passes, qemu decide. Each reaches a verdict naming its reason, and
/// `auto` follows it.
#[test]
fn accel_probe_decides_on_simulated_hosts() {
    if !require("root (mount namespaces)", common::is_root()) {
        return;
    }
    let no_dev = in_private_mounts(
        || {
            use nix::mount::{mount, MsFlags};
            mount(Some("tmpfs"), "/dev", Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        },
        accel::probe_uncached,
    );
    eprintln!("path: /dev/kvm absent: {no_dev}");
    assert_eq!((no_dev.kvm_usable, no_dev.decided_by), (false, ProbeStep::DevKvm), "{no_dev}");
    assert!(no_dev.reason.contains("cannot open /dev/kvm read-write"), "{no_dev}");
    let auto = accel::resolve(Accel::Auto, &no_dev).unwrap();
    assert_eq!((auto.accel, auto.notice.is_some()), (Accel::Tcg, true));

    if !dev_kvm_opens() {
        eprintln!("path: this host has no usable /dev/kvm: the VMX-claiming case is the one above");
        return;
    }
    let start = Instant::now();
    let vmx = in_private_mounts(
        || {
            use nix::mount::{mount, MsFlags};
            let fake = std::env::temp_dir().join(format!("kvmctl-cpuinfo-{}", std::process::id()));
            std::fs::write(&fake, "processor\t: 0\nflags\t\t: fpu vmx lm\n").unwrap();
            mount(Some(&fake), "/proc/cpuinfo", None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
            let _ = std::fs::remove_file(&fake);
        },
        accel::probe_uncached,
    );
    let took = start.elapsed();
    eprintln!("path: a CPU claiming VMX: decided by {:?}: {vmx} ({took:?})", vmx.decided_by);
    assert!(took < WATCHDOG, "took {took:?}");
    assert!(matches!(vmx.decided_by, ProbeStep::TestGuest | ProbeStep::QemuInit), "{vmx}");
    let auto = accel::resolve(Accel::Auto, &vmx).unwrap();
    assert_eq!(auto.accel, if vmx.kvm_usable { Accel::Kvm } else { Accel::Tcg }, "{vmx}");
    if !host_has_virt_flag() {
        // Without real VMX the vCPU crawls: the test guest is killed at its deadline.
        assert!(!vmx.kvm_usable && vmx.reason.contains("work chunks"), "{vmx}");
    }
}

// ---------------------------------------------------------------------------------------------
// QMP against an in-process fake server

mod fake {
    use std::io::{IoSliceMut, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use serde_json::{json, Value};

    /// The server side of a QMP connection, scripted by a test (blocking, on its own thread).
    pub struct FakeQmp {
        sock: UnixStream,
        buf: Vec<u8>,
        /// Fds received as SCM_RIGHTS, in order.
        pub fds: Vec<OwnedFd>,
    }

    pub const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"#;

    impl FakeQmp {
        pub fn new(sock: UnixStream) -> FakeQmp {
            FakeQmp { sock, buf: Vec::new(), fds: Vec::new() }
        }

        pub fn send(&mut self, v: Value) {
            writeln!(self.sock, "{v}").unwrap();
        }

        pub fn reply(&mut self, cmd: &Value, ret: Value) {
            self.send(json!({"return": ret, "id": cmd["id"]}));
        }

        /// The next command line, or None at EOF.
        pub fn recv(&mut self) -> Option<Value> {
            loop {
                if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=pos).collect();
                    return Some(serde_json::from_slice(&line).unwrap());
                }
                if self.read_some() == 0 {
                    return None;
                }
            }
        }

        fn read_some(&mut self) -> usize {
            let mut chunk = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let msg = recvmsg::<UnixAddr>(self.sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
                .expect("recvmsg");
            let n = msg.bytes;
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: the kernel just installed these fds in this process for us.
                    self.fds.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            self.buf.extend_from_slice(&chunk[..n]);
            n
        }

        /// Greeting + `qmp_capabilities`.
        pub fn negotiate(&mut self) {
            self.sock.write_all(GREETING.as_bytes()).unwrap();
            self.sock.write_all(b"\n").unwrap();
            let cmd = self.recv().expect("qmp_capabilities");
            assert_eq!(cmd["execute"], "qmp_capabilities");
            self.reply(&cmd, json!({}));
        }

        /// Wait for the client to hang up.
        pub fn until_eof(&mut self) {
            while self.recv().is_some() {}
        }
    }

    /// A connected pair: the client end for tokio, the server end running `script` on a thread.
    pub fn serve(
        script: impl FnOnce(&mut FakeQmp) + Send + 'static,
    ) -> (tokio::net::UnixStream, std::thread::JoinHandle<()>) {
        let (client, server) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || script(&mut FakeQmp::new(server)));
        client.set_nonblocking(true).unwrap();
        (tokio::net::UnixStream::from_std(client).unwrap(), thread)
    }

    pub fn finish(thread: std::thread::JoinHandle<()>) {
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

use kvmctl::domain::qmp::{self, QmpError};
use qapi::qmp::RunState;
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);

fn event(name: &str, data: Value) -> Value {
    json!({"event": name, "data": data, "timestamp": {"seconds": 1700000000, "microseconds": 1}})
}

#[tokio::test]
async fn qmp_connect_reads_greeting_and_negotiates_over_a_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let mut srv = fake::FakeQmp::new(listener.accept().unwrap().0);
        srv.negotiate();
        srv.until_eof();
    });
    let (handle, events) = qmp::connect(&path, 5 * SECOND).await.unwrap();
    assert_eq!(handle.greeting().qemu_version(), "7.2.0");
    assert_eq!(handle.greeting().version.package, "fake");
    assert_eq!(handle.greeting().capabilities, vec!["oob".to_string()]);
    assert_eq!(handle.timeout(), 5 * SECOND);
    drop((handle, events));
    fake::finish(server);
}

#[tokio::test]
async fn qmp_replies_match_by_id_out_of_order_with_unknown_events_between() {
    let (stream, server) = fake::serve(|srv| {
        srv.negotiate();
        let (a, b) = (srv.recv().unwrap(), srv.recv().unwrap());
        let (status, version) = if a["execute"] == "query-status" { (a, b) } else { (b, a) };
        assert_eq!(version["execute"], "query-version");
        // Reply to the later command first, with an event nobody's schema knows in between.
        srv.send(event("X-KVMCTL-FUTURE-EVENT", json!({"n": 1})));
        srv.reply(&version, json!({"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "fake"}));
        srv.send(event("STOP", json!({})));
        srv.reply(&status, json!({"running": false, "status": "paused"}));
        srv.until_eof();
    });
    let (handle, mut events) = qmp::handshake(stream, WATCHDOG).await.unwrap();
    let other = handle.clone();
    // A spawned task (so the futures are Send) and this one issue commands concurrently.
    let version = tokio::spawn(async move { other.execute(qapi::qmp::query_version {}).await });
    let status = handle.execute(qapi::qmp::query_status {}).await.unwrap();
    assert!(!status.running);
    assert_eq!(status.status, RunState::paused);
    assert_eq!(version.await.unwrap().unwrap().qemu.minor, 2);

    let first = events.recv().await.unwrap();
    assert_eq!(qmp::event_name(&first), Some("X-KVMCTL-FUTURE-EVENT"));
    assert_eq!(first["data"]["n"], 1);
    let second = events.wait_for("STOP", WATCHDOG).await.unwrap();
    assert!(qmp::event_data::<qapi::qmp::STOP>(&second).unwrap().is_ok());
    drop((handle, events));
    fake::finish(server);
}

#[tokio::test]
async fn qmp_error_reply_carries_class_and_desc() {
    let (stream, server) = fake::serve(|srv| {
        srv.negotiate();
        let cmd = srv.recv().unwrap();
        assert_eq!(cmd["execute"], "x-no-such-command");
        assert_eq!(cmd["arguments"], json!({"a": 1}));
        let desc = "The command x-no-such-command has not been found";
        srv.send(json!({"error": {"class": "CommandNotFound", "desc": desc}, "id": cmd["id"]}));
        srv.until_eof();
    });
    let (handle, _events) = qmp::handshake(stream, WATCHDOG).await.unwrap();
    let err = handle.execute_raw("x-no-such-command", json!({"a": 1})).await.unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"));
    match &err {
        QmpError::Command { command, desc, .. } => {
            assert_eq!(command, "x-no-such-command");
            assert!(desc.contains("has not been found"), "{desc}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    drop(handle);
    fake::finish(server);
}

#[tokio::test]
async fn qmp_command_without_reply_times_out_naming_the_command() {
    let (stream, server) = fake::serve(|srv| {
        srv.negotiate();
        let ignored = srv.recv().unwrap();
        assert_eq!(ignored["execute"], "query-status");
        // Only the next command tells us the client gave up; then answer both, late one first.
        let next = srv.recv().unwrap();
        srv.reply(&ignored, json!({"running": true, "status": "running"}));
        srv.reply(&next, json!({}));
        srv.until_eof();
    });
    let (handle, _events) = qmp::handshake(stream, WATCHDOG).await.unwrap();
    let short = handle.clone().with_timeout(Duration::from_millis(200));
    let start = Instant::now();
    let err = short.execute(qapi::qmp::query_status {}).await.unwrap_err();
    // It gave up because of its timeout (not earlier), and did not hang.
    assert!(start.elapsed() >= Duration::from_millis(200), "{:?}", start.elapsed());
    assert!(start.elapsed() < WATCHDOG, "{:?}", start.elapsed());
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("query-status"), "{err}");
    // The connection survives, and the late reply does not confuse the next command.
    handle.execute(qapi::qmp::cont {}).await.unwrap();
    drop((handle, short));
    fake::finish(server);
}

#[tokio::test]
async fn qmp_getfd_passes_the_fd_as_scm_rights() {
    let (stream, server) = fake::serve(|srv| {
        srv.negotiate();
        let cmd = srv.recv().unwrap();
        assert_eq!(cmd["execute"], "getfd");
        assert_eq!(cmd["arguments"]["fdname"], "pipe0");
        assert_eq!(srv.fds.len(), 1, "exactly one fd with the command");
        nix::unistd::write(&srv.fds[0], b"through qemu's fd").unwrap();
        srv.fds.clear();
        srv.reply(&cmd, json!({}));
        srv.until_eof();
    });
    let (handle, _events) = qmp::handshake(stream, WATCHDOG).await.unwrap();
    let (rd, wr) = nix::unistd::pipe().unwrap();
    handle.getfd("pipe0", std::os::fd::AsRawFd::as_raw_fd(&wr)).await.unwrap();
    drop(wr);
    drop(handle);
    fake::finish(server);
    let mut got = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(rd), &mut got).unwrap();
    assert_eq!(got, "through qemu's fd");
}

#[tokio::test]
async fn qmp_connection_loss_fails_waiting_commands_and_ends_events() {
    let (stream, server) = fake::serve(|srv| {
        srv.negotiate();
        srv.send(event("RESUME", json!({})));
        let _unanswered = srv.recv().unwrap();
        // Returning drops the socket: qemu went away.
    });
    let (handle, mut events) = qmp::handshake(stream, WATCHDOG).await.unwrap();
    let err = handle.execute(qapi::qmp::system_powerdown {}).await.unwrap_err();
    assert!(matches!(err, QmpError::Closed { .. }), "{err:?}");
    assert!(err.to_string().contains("system_powerdown"), "{err}");
    assert_eq!(qmp::event_name(&events.recv().await.unwrap()), Some("RESUME"));
    assert!(events.recv().await.is_none(), "events end with the connection");
    assert!(handle.is_closed());
    let again = handle.execute(qapi::qmp::query_status {}).await.unwrap_err();
    assert!(matches!(again, QmpError::Closed { .. }), "{again:?}");
    fake::finish(server);
}

#[tokio::test]
async fn qmp_missing_greeting_times_out() {
    let (stream, server) = fake::serve(|srv| srv.until_eof());
    let err = match qmp::handshake(stream, Duration::from_millis(200)).await {
        Ok(_) => panic!("handshake without greeting succeeded"),
        Err(e) => e,
    };
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("greeting"), "{err}");
    fake::finish(server);
}

// ---------------------------------------------------------------------------------------------
// QMP against a real qemu

/// Serializes "make an fd inheritable, spawn qemu, close it again" against other spawns here.
static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kvmctl=debug"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

fn have_qemu() -> bool {
    let found = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require("qemu-system-x86_64", found)
}

/// A qemu child with a QMP socket in its own temp dir; killed and reaped on drop, even on panic.
struct Qemu {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Qemu {
    fn start(extra: &[&str]) -> Qemu {
        let dir = tempfile::Builder::new().prefix("kvq").tempdir().unwrap();
        let qmp = format!("unix:{},server=on,wait=off", dir.path().join("qmp.sock").display());
        let log = std::fs::File::create(dir.path().join("qemu.log")).unwrap();
        let mut cmd = std::process::Command::new("qemu-system-x86_64");
        cmd.args(["-S", "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "64", "-qmp", &qmp])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("spawn qemu-system-x86_64");
        Qemu { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default()
    }

    /// Connect once qemu has created its socket.
    async fn connect(&mut self) -> (qmp::QmpHandle, qmp::QmpEvents) {
        let path = self.dir.path().join("qmp.sock");
        let start = Instant::now();
        loop {
            match qmp::connect(&path, WATCHDOG).await {
                Ok(c) => return c,
                Err(QmpError::Connect { .. }) if start.elapsed() < WATCHDOG => {
                    if let Some(st) = self.child.try_wait().unwrap() {
                        panic!("qemu exited early ({st}): {}", self.log());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot connect to qemu's QMP: {e}; qemu log: {}", self.log()),
            }
        }
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(start.elapsed() < within, "qemu still running after {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn qmp_drives_a_real_qemu_through_pause_resume_fds_and_quit() {
    if !have_qemu() {
        return;
    }
    init_tracing();
    let mut q = {
        let _spawn = SPAWN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        Qemu::start(&[])
    };
    let (h, mut events) = q.connect().await;

    let st = h.execute(qapi::qmp::query_status {}).await.unwrap();
    assert!(!st.running);
    assert!(matches!(st.status, RunState::prelaunch | RunState::paused), "{:?}", st.status);

    h.execute(qapi::qmp::cont {}).await.unwrap();
    events.wait_for("RESUME", WATCHDOG).await.unwrap();
    assert_eq!(h.execute(qapi::qmp::query_status {}).await.unwrap().status, RunState::running);

    h.execute(qapi::qmp::stop {}).await.unwrap();
    events.wait_for("STOP", WATCHDOG).await.unwrap();
    let st = h.execute(qapi::qmp::query_status {}).await.unwrap();
    assert_eq!((st.running, st.status), (false, RunState::paused));

    let v = h.execute(qapi::qmp::query_version {}).await.unwrap();
    let g = &h.greeting().version;
    assert_eq!((v.qemu.major, v.qemu.minor, v.qemu.micro), (g.qemu.major, g.qemu.minor, g.qemu.micro));
    assert_eq!(v.package, g.package);

    let hmp = qapi::qmp::human_monitor_command { command_line: "info status".into(), cpu_index: None };
    assert!(h.execute(hmp).await.unwrap().contains("paused"));

    qmp_fd_round_trip(&h).await;

    // quit: qemu answers (or hangs up first), exits, and the event stream ends.
    match h.execute(qapi::qmp::quit {}).await {
        Ok(_) | Err(QmpError::Closed { .. }) => {}
        Err(e) => panic!("quit: {e}"),
    }
    tokio::time::timeout(WATCHDOG, async { while events.recv().await.is_some() {} }).await.unwrap();
    assert!(q.wait_exit(WATCHDOG).success());
    assert!(h.execute(qapi::qmp::query_status {}).await.is_err());
}

async fn qmp_fd_round_trip(h: &qmp::QmpHandle) {
    let (rd, wr) = nix::unistd::pipe().unwrap();
    h.getfd("kvpipe", std::os::fd::AsRawFd::as_raw_fd(&wr)).await.unwrap();
    h.execute(qapi::qmp::closefd { fdname: "kvpipe".into() }).await.unwrap();
    let err = h.execute(qapi::qmp::closefd { fdname: "kvpipe".into() }).await.unwrap_err();
    assert_eq!(err.class(), Some("GenericError"), "{err}");
    drop((rd, wr));
}

// ---------------------------------------------------------------------------------------------
// taps, inside a network namespace of the test's own

use kvmctl::domain::tap::{self, TapError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn can_make_taps() -> bool {
    require("root (CAP_NET_ADMIN, CAP_SYS_ADMIN)", nix::unistd::geteuid().is_root())
        && require("/dev/net/tun", std::path::Path::new("/dev/net/tun").exists())
}

/// A datagram socket in the calling thread's current network namespace, for name lookups.
fn netns_socket() -> OwnedFd {
    // SAFETY: socket(2) with constant arguments; the result is checked before being owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The interface index of `name` in the namespace `sock` was created in (SIOCGIFINDEX).
fn ifindex(sock: &OwnedFd, name: &str) -> Option<i32> {
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX reads the name and writes ifru_ifindex of this ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) };
    if rc != 0 {
        return None;
    }
    // SAFETY: on success the kernel filled the ifindex member of the union.
    Some(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// Wait (a forked child may briefly hold a copy of the fd) until `name` is gone.
fn assert_gone_soon(sock: &OwnedFd, name: &str) {
    let start = Instant::now();
    while ifindex(sock, name).is_some() {
        assert!(start.elapsed() < WATCHDOG, "{name} still exists after its last fd was closed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `body` on a dedicated thread moved into a fresh network namespace. `body` gets a socket
/// in the host namespace (made before the move) and one in the new namespace.
fn in_private_netns<T: Send + 'static>(body: impl FnOnce(&OwnedFd, &OwnedFd) -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        let host = netns_socket();
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread, which runs nothing but `body`
        // and then exits, so no other code ever sees the changed namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        let private = netns_socket();
        assert!(ifindex(&private, "lo").is_some(), "a new namespace has lo");
        body(&host, &private)
    });
    thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[test]
fn tap_exists_only_in_its_namespace_while_open() {
    if !can_make_taps() {
        return;
    }
    in_private_netns(|host, netns| {
        let tap = tap::open_tap(None).unwrap();
        let name = tap.name().to_string();
        assert!(name.starts_with("kvtap") && !name.contains('%'), "{name}");
        assert!(ifindex(netns, &name).is_some(), "{name} missing in its namespace");
        assert!(ifindex(host, &name).is_none(), "{name} leaked into the host namespace");

        let named = tap::open_tap(Some("kvt-test0")).unwrap();
        assert_eq!(named.name(), "kvt-test0");
        // A live tap's name cannot be taken again.
        assert!(matches!(tap::open_tap(Some("kvt-test0")), Err(TapError::Create { .. })));

        drop(tap);
        assert_gone_soon(netns, &name);
        assert!(ifindex(netns, "kvt-test0").is_some());
        drop(named);
        assert_gone_soon(netns, "kvt-test0");
    });
}

#[test]
fn tap_fd_is_accepted_by_qemu_and_the_link_lives_as_long_as_qemu() {
    if !can_make_taps() || !have_qemu() {
        return;
    }
    init_tracing();
    in_private_netns(|_host, netns| {
        let tap = tap::open_tap(Some("kvt-qemu%d")).unwrap();
        let name = tap.name().to_string();
        let netdev = tap.netdev_arg("n0", tap::vhost_available());
        let mut q = {
            let _spawn = SPAWN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            tap.clear_cloexec().unwrap();
            // SAFETY: F_GETFD only reads the descriptor flags of a live fd.
            let flags = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, 0);
            let q = Qemu::start(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
            drop(tap); // qemu holds the only fd now
            q
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let info = rt.block_on(async {
            let (h, _events) = q.connect().await;
            let hmp = qapi::qmp::human_monitor_command { command_line: "info network".into(), cpu_index: None };
            h.execute(hmp).await.unwrap()
        });
        assert!(info.contains("n0: index=0,type=tap,fd="), "{info}");
        assert!(ifindex(netns, &name).is_some(), "{name} should live while qemu holds it");
        drop(q);
        assert_gone_soon(netns, &name);
    });
}
