//! A host for end-to-end VM tests: a kvmctl root plus the network namespace its commands run
//! in, with the console-log waits every VM test needs.

use std::time::{Duration, Instant};

use super::netns::Netns;
use super::Kvm;

pub struct VmHost {
    pub k: Kvm,
    pub ns: Netns,
}

/// What a booted test VM needs: root (namespaces), qemu, dnsmasq, nft and the test guest;
/// under CI a missing one fails the test.
pub fn vm_prereqs() -> bool {
    super::require(
        "root, qemu-system-x86_64, qemu-img, dnsmasq, nft and the test guest (images/build.sh)",
        super::netns::can_netns()
            && ["qemu-system-x86_64", "qemu-img", "dnsmasq", "nft"].iter().all(|p| super::have_program(p))
            && super::guest_dir().join("tiny.qcow2").exists(),
    )
}

impl VmHost {
    /// A linked clone `name` of the tiny test guest's disk in the default pool (imported once).
    pub fn guest_disk(&self, name: &str) {
        if !self.k.images().join("tiny.qcow2").exists() {
            let guest = super::guest_dir().join("tiny.qcow2");
            self.ok(&["-q", "vol-import", guest.to_str().unwrap(), "--pool", "default"]);
        }
        self.ok(&["-q", "vol-clone", "tiny.qcow2", name, "--pool", "default", "--linked"]);
    }

    /// `tag` names the namespace (one letter per test file keeps names apart).
    pub fn new(tag: &str) -> VmHost {
        VmHost { k: Kvm::new(), ns: Netns::new(tag) }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.k.ok_in(&self.ns, args)
    }

    /// `--json` output, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kvmctl {args:?}: not JSON ({e}): {out}"))
    }

    /// Require exit `code`; returns stderr.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        self.k.fails_in(&self.ns, code, args)
    }

    fn run_file(&self, vm: &str, file: &str) -> String {
        std::fs::read_to_string(self.k.root().join(format!("run/domains/{vm}/{file}"))).unwrap_or_default()
    }

    /// What the guest printed since its current boot began.
    pub fn console(&self, vm: &str) -> String {
        self.run_file(vm, "console.log")
    }

    /// The previous boot's console (kept at the next start) followed by the current one.
    pub fn console_with_previous(&self, vm: &str) -> String {
        self.run_file(vm, "console.log.1") + &self.console(vm)
    }

    /// Wait until the current boot's console shows `pat` `n` times; returns the log.
    pub fn wait_console(&self, vm: &str, pat: &str, n: usize, secs: u64) -> String {
        self.wait_in(vm, pat, n, secs, VmHost::console)
    }

    /// `wait_console` over the previous boot's console and the current one.
    pub fn wait_console_with_previous(&self, vm: &str, pat: &str, n: usize, secs: u64) -> String {
        self.wait_in(vm, pat, n, secs, VmHost::console_with_previous)
    }

    fn wait_in(&self, vm: &str, pat: &str, n: usize, secs: u64, log: fn(&VmHost, &str) -> String) -> String {
        let t0 = Instant::now();
        loop {
            let text = log(self, vm);
            if text.matches(pat).count() >= n {
                return text;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                let sup = self.run_file(vm, "supervisor.log");
                panic!("{vm}: no {pat} (x{n}) within {secs}s; console:\n{text}\n--- supervisor.log:\n{sup}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Numbers the commands typed into guests, so each reply is found by its own markers.
static GUEST_CMDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl VmHost {
    /// Type `cmd` into the guest's root shell on its serial console (the VM must have printed
    /// KVMCTL-GUEST-READY) and wait up to `secs` for it to finish: returns its exit status and
    /// what it printed. Markers around the command find its reply in the console log, so
    /// kernel messages before it and the shell's echo of the typed line are not part of it.
    pub fn guest_sh(&self, vm: &str, cmd: &str, secs: u64) -> (i32, String) {
        use std::io::Write;
        let n = GUEST_CMDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (begin, end) = (format!("KVMCTL-BEGIN-{n}"), format!("KVMCTL-RC-{n}="));
        let line = format!("echo {begin}; {cmd}; echo {end}$?\n");
        let mut child = self
            .k
            .cmd()
            .args(["console", vm, "--timeout", "0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(line.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "console {vm}: {}", String::from_utf8_lossy(&out.stderr));
        let t0 = Instant::now();
        loop {
            let log = self.console(vm);
            let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
            if let Some(b) = lines.iter().position(|l| *l == begin) {
                let rc = lines[b + 1..].iter().position(|l| {
                    l.strip_prefix(&end).is_some_and(|r| !r.is_empty() && r.bytes().all(|c| c.is_ascii_digit()))
                });
                if let Some(r) = rc {
                    let code = lines[b + 1 + r][end.len()..].parse().unwrap();
                    return (code, lines[b + 1..b + 1 + r].join("\n"));
                }
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                panic!("{vm}: `{cmd}` did not finish within {secs}s; console:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `guest_sh` that must succeed; returns its output.
    pub fn guest_ok(&self, vm: &str, cmd: &str, secs: u64) -> String {
        let (rc, out) = self.guest_sh(vm, cmd, secs);
        assert_eq!(rc, 0, "{vm}: `{cmd}` exited {rc}:\n{out}");
        out
    }
}
