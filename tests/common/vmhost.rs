//! A host for end-to-end VM tests: a kvmctl root plus the network namespace its commands run
//! in, with the console-log waits every VM test needs.

use std::time::{Duration, Instant};

use super::netns::Netns;
use super::Kvm;

pub struct VmHost {
    pub k: Kvm,
    pub ns: Netns,
}

impl VmHost {
    /// `tag` names the namespace (one letter per test file keeps names apart).
    pub fn new(tag: &str) -> VmHost {
        VmHost { k: Kvm::new(), ns: Netns::new(tag) }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.k.ok_in(&self.ns, args)
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
