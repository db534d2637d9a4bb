//! Shared helpers for integration tests: a temp root and the real binary.
#![allow(dead_code)]

pub mod netns;
pub mod pty;
pub mod vmhost;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The test guests built by images/build.sh (`make guest`).
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out")
}

/// A kvmctl state root in a temp dir, removed on drop.
pub struct Kvm {
    pub dir: tempfile::TempDir,
}

impl Kvm {
    pub fn new() -> Kvm {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("kvmctl-test").tempdir().unwrap();
        // dnsmasq drops to an unprivileged user that must reach the runtime dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Kvm { dir }
    }

    /// The same command, run inside network namespace `ns`.
    pub fn in_ns(&self, ns: &netns::Netns, args: &[&str]) -> Output {
        self.in_ns_env(ns, &[], args)
    }

    /// `in_ns` with extra environment variables (e.g. `KVMCTL_FAULT`).
    pub fn in_ns_env(&self, ns: &netns::Netns, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_kvmctl"), "--root"])
            .arg(self.root())
            .args(args)
            .env_remove("KVMCTL_ROOT")
            .env_remove("KVMCTL_FAULT")
            .envs(env.iter().copied());
        bounded_output(&mut c)
    }

    /// In namespace `ns`, require success; returns stdout.
    pub fn ok_in(&self, ns: &netns::Netns, args: &[&str]) -> String {
        let o = self.in_ns(ns, args);
        assert!(o.status.success(), "kvmctl {args:?} in {} failed: {}", ns.name, String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// In namespace `ns`, require exit `code`; returns stderr.
    pub fn fails_in(&self, ns: &netns::Netns, code: i32, args: &[&str]) -> String {
        let o = self.in_ns(ns, args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "kvmctl {args:?} in {}: {err}", ns.name);
        err
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn images(&self) -> PathBuf {
        self.root().join("images")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kvmctl"));
        c.arg("--root").arg(self.root()).env_remove("KVMCTL_ROOT");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        bounded_output(self.cmd().args(args))
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "kvmctl {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Run and require exit `code`; returns stderr.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(code),
            "kvmctl {args:?}: stdout {} stderr {err}",
            String::from_utf8_lossy(&o.stdout)
        );
        err
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

/// How long one command of a test may run before it counts as hung (`KVMCTL_TEST_CMD_TIMEOUT`
/// seconds, default 300): a hang then fails its own test, naming the command, instead of
/// stalling the whole run.
fn command_limit() -> std::time::Duration {
    let secs = std::env::var("KVMCTL_TEST_CMD_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    std::time::Duration::from_secs(secs)
}

/// `Command::output`, but a command still running after `command_limit()` is killed and the
/// test panics with its argv and what it printed so far.
pub fn bounded_output(cmd: &mut Command) -> Output {
    bounded_output_within(cmd, command_limit())
}

pub fn bounded_output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let argv = format!("{:?}", cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            // Children that inherited the pipes may keep them open: do not wait for them.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let got = |h: std::thread::JoinHandle<Vec<u8>>| {
                if h.is_finished() {
                    String::from_utf8_lossy(&h.join().unwrap()).into_owned()
                } else {
                    "(still open)".to_string()
                }
            };
            panic!("hung: {argv} still running after {limit:?}, killed\nstdout: {}\nstderr: {}", got(out), got(err));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// `.bounded()` on a command builder: `bounded_output` of it.
pub trait Bounded {
    fn bounded(&mut self) -> Output;
}

impl Bounded for Command {
    fn bounded(&mut self) -> Output {
        bounded_output(self)
    }
}

/// Run a helper program and require success; returns stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let o = bounded_output(Command::new(program).args(args));
    assert!(o.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A prerequisite of a test: missing means skip locally, but fail under CI=true.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {what}");
    }
    eprintln!("SKIP: prerequisite missing: {what}");
    false
}

pub fn have_program(p: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file())).unwrap_or(false)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn qemu_img_info(path: &Path) -> serde_json::Value {
    serde_json::from_str(&sh("qemu-img", &["info", "--output=json", path.to_str().unwrap()])).unwrap()
}

pub fn qemu_img_check(path: &Path) {
    sh("qemu-img", &["check", path.to_str().unwrap()]);
}

/// Write `len` bytes of pattern `byte` at `off` into an image with qemu-io.
pub fn qemu_write(path: &Path, fmt: &str, byte: u8, off: u64, len: u64) {
    sh("qemu-io", &["-f", fmt, "-c", &format!("write -P {byte} {off} {len}"), path.to_str().unwrap()]);
}

pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Every path under `dir` (files, directories, symlinks), relative to it, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
