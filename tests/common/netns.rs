//! Network namespaces for tests: every link, bridge, firewall table, dnsmasq and packet of a
//! network test lives in namespaces created here and deleted on drop (even on panic).
//! Nothing touches the host's own interfaces, routes, sysctls or firewall.
#![allow(dead_code)]

use super::Bounded;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// One namespace; `ip netns del` and a kill of everything inside it on drop.
pub struct Netns {
    pub name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// A fresh namespace named `kvt<pid>-<n><tag>` with `lo` up.
    pub fn new(tag: &str) -> Netns {
        let name = format!("kvt{}-{}{tag}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Run a program inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(argv).bounded()
    }

    /// Run inside the namespace and require success; returns stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let o = self.exec(argv);
        assert!(
            o.status.success(),
            "in netns {}: {argv:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ip ARGS` inside the namespace (test setup only; kvmctl itself uses netlink).
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        self.ok(&argv)
    }

    /// A veth pair from this namespace (`here`) to `other` (`there`), both up.
    pub fn veth(&self, here: &str, other: &Netns, there: &str) {
        self.ip(&["link", "add", here, "type", "veth", "peer", "name", there, "netns", &other.name]);
        self.ip(&["link", "set", here, "up"]);
        other.ip(&["link", "set", there, "up"]);
    }

    pub fn pids(&self) -> Vec<i32> {
        let o = Command::new("ip").args(["netns", "pids", &self.name]).bounded();
        String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) with a pid from `ip netns pids`; no memory effects.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).bounded();
    assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Can this process create namespaces (root, iproute2 present)?
pub fn can_netns() -> bool {
    super::is_root() && super::have_program("ip")
}
