//! A VM's runtime directory `<run>/domains/<name>/` and what is recorded in it.
//! Liveness is the supervisor's OFD lock on `lock`: held = alive, whatever state.json says.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths::Kind;
use crate::state::{bind_private, private_dir, runtime_write, try_lock_exclusive, Store};

/// Every file of one VM's runtime dir.
/// The VM's VNC password, handed by `start` to its supervisor (0600 in the 0700 run dir).
pub const VNC_PASSWORD: &str = "vnc-password";
/// Present while a `start --paused` boot has not yet been launched: qemu is left at `-S`.
pub const START_PAUSED: &str = "start-paused";

#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn of(store: &Store, name: &str) -> RunDir {
        RunDir { dir: store.paths.run_dir(Kind::Domain).join(name) }
    }
    /// Create the dir, or repair it: 0700 whatever the umask (its parents 0755).
    pub fn create(&self) -> std::io::Result<()> {
        private_dir(&self.dir)
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn console_sock(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// The definition the VM runs with.
    pub fn live_def(&self) -> PathBuf {
        self.dir.join("live.toml")
    }
    pub fn argv(&self) -> PathBuf {
        self.dir.join("qemu.argv")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    /// After an install's first boot: what to boot next (virt-install's two phases).
    pub fn next_boot(&self) -> PathBuf {
        self.dir.join("next.json")
    }

    /// Bind qemu's QMP and serial sockets (0600, in the 0700 dir) for qemu to inherit as
    /// `-chardev socket,fd=N,server=on`: qemu creates no file and needs no access to the dir.
    pub fn bind_qemu_sockets(&self) -> std::io::Result<QemuSockets> {
        Ok(QemuSockets { qmp: bind_private(&self.qmp())?, console: bind_private(&self.console_sock())? })
    }

    /// Is a supervisor holding this VM's lock?
    pub fn alive(&self) -> bool {
        if !self.lock().exists() {
            return false;
        }
        matches!(try_lock_exclusive(&self.lock()), Ok(None))
    }

    pub fn read_state(&self) -> Option<RunState> {
        serde_json::from_str(&fs::read_to_string(self.state()).ok()?).ok()
    }

    pub fn write_state(&self, st: &RunState) -> std::io::Result<()> {
        runtime_write(&self.state(), serde_json::to_string_pretty(st).expect("state serializes").as_bytes())
    }

    /// The last `n` lines of a log file (for errors: qemu's own words).
    pub fn tail(path: &Path, n: usize) -> String {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// qemu's listening sockets, bound by kvmctl; the supervisor keeps them for the VM's life so
/// that a restarted qemu gets the same ones.
#[derive(Debug)]
pub struct QemuSockets {
    pub qmp: UnixListener,
    pub console: UnixListener,
}

/// The second phase of an install: when the first boot ends (the installer powers off or
/// reboots), the supervisor boots this instead, or stops (`noreboot`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextBoot {
    pub argv: Vec<String>,
    pub def: super::definition::DomainDef,
    /// Stop after the first boot instead of booting `def` (--noreboot).
    pub noreboot: bool,
    /// A guest power-off ends the VM; only a reboot boots `def` (cloud-init's first boot).
    #[serde(default)]
    pub poweroff_stops: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Paused,
    /// The guest powered off and on_poweroff=preserve keeps qemu around.
    Shutdown,
    Shutoff,
    Crashed,
}

impl VmState {
    /// virsh's words.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Shutdown => "in shutdown",
            VmState::Shutoff => "shut off",
            VmState::Crashed => "crashed",
        }
    }
}

/// `state.json`, kept current by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub state: VmState,
    /// Why: booted, user, unpaused, shutdown, destroyed, crashed, failed, ...
    pub reason: String,
    pub supervisor_pid: i32,
    pub qemu_pid: Option<i32>,
    /// qemu's start time (/proc/PID/stat field 22): with the pid, which process qemu is.
    #[serde(default)]
    pub qemu_start_time: Option<u64>,
    pub accel: String,
    /// Seconds since the epoch.
    pub started_at: u64,
    pub taps: Vec<String>,
    pub transient: bool,
    /// Times the guest was restarted by on_* policies.
    pub restarts: u32,
    /// Set while qemu is being stopped on purpose (`shutdown`, `destroy`, a policy): a qemu
    /// that exits while no supervisor watches it then ends shut off, not crashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<String>,
    /// Times a new supervisor took this qemu over after its supervisor died.
    #[serde(default)]
    pub adoptions: u32,
    /// The small per-boot domain id `list` shows (virsh's Id), given at each start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<u32>,
}

/// The next domain id: 1, 2, 3, ... per runtime dir (per host boot, as `/run` is), taken under
/// a lock so two starts never share one.
pub fn next_domain_id(store: &Store) -> std::io::Result<u32> {
    use std::io::{Read, Seek, Write};
    let path = store.paths.run.join("domain-ids");
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    nix::fcntl::Flock::lock(f.try_clone()?, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))
        .map(|held| {
            let mut text = String::new();
            let next = f.read_to_string(&mut text).ok().and_then(|_| text.trim().parse::<u32>().ok()).unwrap_or(0) + 1;
            let _ = f.seek(std::io::SeekFrom::Start(0)).and_then(|_| f.set_len(0)).and_then(|_| write!(f, "{next}"));
            drop(held);
            next
        })
}

impl RunState {
    /// The qemu this state records, if any (pid and start time).
    pub fn qemu_id(&self) -> Option<super::qemu::QemuId> {
        Some(super::qemu::QemuId { pid: self.qemu_pid?, start_time: self.qemu_start_time? })
    }

    /// Record `id` as this VM's qemu (None: no qemu).
    pub fn set_qemu(&mut self, id: Option<super::qemu::QemuId>) {
        self.qemu_pid = id.map(|i| i.pid);
        self.qemu_start_time = id.map(|i| i.start_time);
    }
}

/// What `list`/`domstate` should say: the recorded state, corrected by the lock.
pub fn observed(rd: &RunDir) -> (VmState, String) {
    let st = rd.read_state();
    let alive = rd.alive();
    match (st, alive) {
        (Some(s), true) => (s.state, s.reason),
        (Some(s), false) if matches!(s.state, VmState::Shutoff | VmState::Crashed) => (s.state, s.reason),
        (Some(_), false) => (VmState::Crashed, "supervisor gone".into()),
        (None, true) => (VmState::Running, "starting".into()),
        (None, false) => (VmState::Shutoff, "unknown".into()),
    }
}

/// The taps of running VMs whose NICs are on network `net`, as `(vm, tap)` pairs: the live
/// definition's tap-backed NICs, in order, match `state.json`'s `taps`.
pub fn taps_on_network(store: &Store, net: &str) -> Vec<(String, String)> {
    use super::definition::{DomainDef, NicSource};
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(store.paths.run_dir(Kind::Domain)) else { return out };
    let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for vm in names {
        let rd = RunDir::of(store, &vm);
        if !rd.alive() {
            continue;
        }
        let (Some(st), Ok(text)) = (rd.read_state(), fs::read_to_string(rd.live_def())) else { continue };
        let Ok(def) = toml::from_str::<DomainDef>(&text) else { continue };
        let tap_nics = def.nics.iter().filter(|n| n.source != NicSource::User);
        for (nic, tap) in tap_nics.zip(st.taps) {
            if matches!(&nic.source, NicSource::Network { network } if network == net) {
                out.push((vm.clone(), tap));
            }
        }
    }
    out
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
