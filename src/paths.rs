//! Every on-disk name and path kvmctl uses, in one place.

use std::path::{Path, PathBuf};

/// The two state roots: persistent definitions and runtime state.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub run: PathBuf,
}

/// Object kinds that have a definition directory and a per-object lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pool,
    Network,
    Domain,
    /// A pulled base image (`image pull`).
    Image,
}

impl Kind {
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Pool => "pools",
            Kind::Network => "networks",
            Kind::Domain => "domains",
            Kind::Image => "base-images",
        }
    }
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Pool => "pool",
            Kind::Network => "network",
            Kind::Domain => "domain",
            Kind::Image => "image",
        }
    }
}

impl Paths {
    /// Resolve the roots: `--root DIR` (or `KVMCTL_ROOT`) holds both, runtime under `DIR/run`;
    /// otherwise `/var/lib/kvmctl` + `/run/kvmctl` for root, XDG dirs for a normal user.
    pub fn resolve(root: Option<PathBuf>) -> Paths {
        if let Some(root) = root {
            let root = absolute(&root);
            let run = root.join("run");
            return Paths { root, run };
        }
        if nix::unistd::geteuid().is_root() {
            return Paths { root: "/var/lib/kvmctl".into(), run: "/run/kvmctl".into() };
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/tmp".into());
        let data = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".local/share"));
        let run = std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("kvmctl"))
            .unwrap_or_else(|| data.join("kvmctl/run"));
        Paths { root: data.join("kvmctl"), run }
    }

    pub fn defs_dir(&self, kind: Kind) -> PathBuf {
        self.root.join(kind.dir())
    }
    pub fn def_file(&self, kind: Kind, name: &str) -> PathBuf {
        self.defs_dir(kind).join(format!("{name}.toml"))
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    pub fn lock_file(&self, kind: Kind, name: &str) -> PathBuf {
        self.locks_dir().join(format!("{}.{name}", kind.noun()))
    }
    /// A VM's VNC password (0600 in a 0700 dir): never in a definition, an argv or a log.
    pub fn vnc_password(&self, vm: &str) -> PathBuf {
        self.root.join("secrets").join(format!("{vm}.vnc"))
    }
    /// The `default` directory pool.
    pub fn default_pool_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn run_dir(&self, kind: Kind) -> PathBuf {
        self.run.join(kind.dir())
    }
    /// Marker for an active pool (pools have no other runtime state).
    pub fn pool_active_marker(&self, name: &str) -> PathBuf {
        self.run_dir(Kind::Pool).join(format!("{name}.active"))
    }
    /// Present once per boot of the runtime dir: autostart pools have been started.
    pub fn boot_marker(&self) -> PathBuf {
        self.run.join("booted")
    }
    /// The VMs that ran at host shutdown (`down`), for the next `up` to start again.
    pub fn resume_record(&self) -> PathBuf {
        self.root.join("resume-on-boot.toml")
    }
    /// Present once the built-in objects (default pool) were first defined in this root.
    pub fn init_marker(&self) -> PathBuf {
        self.root.join(".initialized")
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

// Host interfaces bridged by `iface-bridge`: one record per bridge, and one lock for all of
// them (they change the host's addressing, one command at a time).
impl Paths {
    pub fn ifaces_dir(&self) -> PathBuf {
        self.root.join("ifaces")
    }
    pub fn iface_record(&self, bridge: &str) -> PathBuf {
        self.ifaces_dir().join(format!("{bridge}.toml"))
    }
    pub fn ifaces_lock(&self) -> PathBuf {
        self.locks_dir().join("ifaces")
    }
}
