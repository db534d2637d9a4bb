//! Networks on the host: define, start (bridge + firewall + dnsmasq under a rollback guard),
//! destroy, reconcile what is real, live updates. Runtime state: `<run>/networks/<name>/`.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::netlink::{BridgeSpec, Netlink, NetlinkError};
use super::{dnsmasq, firewall, libvirt_xml, ForwardMode, NetworkDef, NetworkError, RunFiles};
use crate::paths::Kind;
use crate::process::{self, ProcessError};
use crate::state::{atomic_write, runtime_write, Revert, Store, StoreError, Undo};

#[derive(Debug, Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Def(#[from] NetworkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Attach(#[from] super::attach::AttachError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("network '{0}' is already active")]
    Active(String),
    #[error("network '{0}' is not active")]
    Inactive(String),
    #[error("network '{name}' has the same UUID as network '{other}'")]
    DuplicateUuid { name: String, other: String },
    #[error("network '{name}' already exists with uuid {uuid}")]
    UuidMismatch { name: String, uuid: String },
    #[error("network '{name}': bridge {bridge} is already used by network '{other}'")]
    BridgeTaken { name: String, bridge: String, other: String },
    #[error("network '{name}': bridge {bridge} already exists on the host and was not created by kvmctl")]
    BridgeExists { name: String, bridge: String },
    #[error("network '{name}': bridge {bridge} does not exist (forward mode='bridge' uses an existing host bridge)")]
    NoBridge { name: String, bridge: String },
    #[error("network '{name}': {bridge} is a {kind} link, not a bridge")]
    NotABridge { name: String, bridge: String, kind: String },
    #[error(
        "network '{name}': <vlan> needs VLAN filtering on bridge {bridge}, which is the admin's (forward \
         mode='bridge') and does not filter VLANs; turn it on first (ip link set {bridge} type bridge vlan_filtering 1)"
    )]
    NoVlanFiltering { name: String, bridge: String },
    #[error("network '{name}': subnet {subnet} overlaps {what} {other} on {ifname}")]
    Overlap { name: String, subnet: String, what: String, other: String, ifname: String },
    #[error("network '{name}': dnsmasq did not start: {reason}")]
    Dnsmasq { name: String, reason: String },
    #[error("network '{name}': runtime dir {path} is not reachable by the unprivileged dnsmasq user (a parent directory lacks o+x); use a --root under a world-traversable directory")]
    RunDirPrivate { name: String, path: PathBuf },
    #[error("network '{name}': {what}")]
    Invalid { name: String, what: String },
    #[error("network '{name}' is in use by running domains: {vms}; destroying it cuts their NICs off (they are re-attached at the next net-start): use --force to destroy it anyway")]
    InUse { name: String, vms: String },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> LifecycleError + '_ {
    move |source| LifecycleError::Io { path: path.to_path_buf(), source }
}

/// What a started network created, kept in `<run>/networks/<name>/state.json`. It is written
/// before any host effect, naming what is about to be made (intent), and committed at the end
/// (`phase: running`): a command killed half-way leaves a record of everything it may have
/// made, so that the next `net-start` finishes it and `net-destroy` removes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetState {
    /// The definition the network runs with (differs from the persistent one after edits).
    pub def: NetworkDef,
    pub bridge: String,
    pub bridge_created: bool,
    /// The nftables table of the network (recorded before it is created).
    pub table: Option<String>,
    /// A dnsmasq belongs to the network (recorded before it is spawned).
    #[serde(default)]
    pub dnsmasq: bool,
    pub dnsmasq_pid: Option<i32>,
    /// Started by net-create: no persistent definition.
    pub transient: bool,
    /// `starting` from the intent until the start is committed.
    #[serde(default)]
    pub phase: Phase,
    /// Host interfaces enslaved to the bridge (`<kvmctl:interface>`), as they were before:
    /// recorded before each is enslaved, put back by net-destroy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enslaved: Vec<super::attach::Enslaved>,
}

impl NetState {
    /// Should a dnsmasq run (states written before the intent record only have its pid)?
    pub fn wants_dnsmasq(&self) -> bool {
        self.dnsmasq || self.dnsmasq_pid.is_some()
    }
}

/// How far a start got: a state still `starting` belongs to a start that did not finish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    #[default]
    Running,
}

/// Reconciled state of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "problems")]
pub enum Status {
    Active,
    Inactive,
    /// Started, but something it needs is gone.
    Degraded(Vec<String>),
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Degraded(_) => "degraded",
        }
    }
    pub fn is_active(&self) -> bool {
        !matches!(self, Status::Inactive)
    }
}

pub fn run_dir(store: &Store, name: &str) -> PathBuf {
    store.paths.run_dir(Kind::Network).join(name)
}

fn state_file(store: &Store, name: &str) -> PathBuf {
    run_dir(store, name).join("state.json")
}

pub fn load_state(store: &Store, name: &str) -> Option<NetState> {
    let text = fs::read_to_string(state_file(store, name)).ok()?;
    serde_json::from_str(&text).ok()
}

pub(super) fn save_state(store: &Store, name: &str, st: &NetState) -> Result<(), LifecycleError> {
    let p = state_file(store, name);
    let text = serde_json::to_string_pretty(st).expect("state serializes");
    runtime_write(&p, text.as_bytes()).map_err(io_at(&p))
}

/// A network known to kvmctl: `(name, persistent def or None, runtime state or None)`.
pub type NetEntry = (String, Option<NetworkDef>, Option<NetState>);

/// Defined and running networks.
pub fn all(store: &Store) -> Result<Vec<NetEntry>, LifecycleError> {
    let mut names: Vec<String> = store.list(Kind::Network)?;
    if let Ok(rd) = fs::read_dir(store.paths.run_dir(Kind::Network)) {
        names.extend(rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)));
    }
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let def = store.load::<NetworkDef>(Kind::Network, &n).ok();
        let st = load_state(store, &n);
        if def.is_some() || st.is_some() {
            out.push((n, def, st));
        }
    }
    Ok(out)
}

/// The definition to show: the running one when active, else the persistent one.
pub fn current_def(store: &Store, name: &str) -> Result<NetworkDef, LifecycleError> {
    if let Some(st) = load_state(store, name) {
        return Ok(st.def);
    }
    Ok(store.load(Kind::Network, name)?)
}

/// Is `pid` a dnsmasq started with our config file?
fn dnsmasq_is_ours(pid: i32, conf: &Path) -> bool {
    let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let want = format!("--conf-file={}", conf.display());
    cmd.split(|b| *b == 0).any(|arg| arg == want.as_bytes())
}

/// The dnsmasq whose pid file is in `dir`, if it runs with this dir's config.
fn pidfile_dnsmasq(dir: &Path) -> Option<i32> {
    let rf = RunFiles::new(dir);
    let pid: i32 = fs::read_to_string(&rf.pid).ok()?.trim().parse().ok()?;
    (pid > 0 && dnsmasq_is_ours(pid, &rf.conf)).then_some(pid)
}

/// The network's dnsmasq as recorded in its state, if it is running.
fn recorded_dnsmasq(store: &Store, st: &NetState) -> Option<i32> {
    let conf = RunFiles::new(&run_dir(store, &st.def.name)).conf;
    st.dnsmasq_pid.filter(|pid| dnsmasq_is_ours(*pid, &conf))
}

/// Compare the recorded state with what is really there.
pub async fn status(store: &Store, nl: &Netlink, name: &str) -> Result<Status, LifecycleError> {
    let Some(st) = load_state(store, name) else { return Ok(Status::Inactive) };
    let problems = problems(store, nl, &st, false).await?;
    Ok(if problems.is_empty() { Status::Active } else { Status::Degraded(problems) })
}

/// What is missing from a started network, each named. `locked`: the caller holds the
/// network's lock (else a held lock means a start in progress, not an interrupted one).
async fn problems(store: &Store, nl: &Netlink, st: &NetState, locked: bool) -> Result<Vec<String>, LifecycleError> {
    let mut problems = Vec::new();
    if st.phase == Phase::Starting {
        let lock = store.paths.lock_file(Kind::Network, &st.def.name);
        let held = !locked && lock.exists() && matches!(crate::state::try_lock_exclusive(&lock), Ok(None));
        problems.push(if held { "its start is in progress" } else { "its start was interrupted" }.to_string());
    }
    if nl.link(&st.bridge).await?.is_none() {
        problems.push(format!("bridge {} is gone", st.bridge));
    }
    if let Some(t) = &st.table {
        match super::nftnl::inet_table_exists(t) {
            Ok(true) => {}
            Ok(false) => problems.push(format!("nftables table inet {t} is missing")),
            // Listing needs CAP_NET_ADMIN: an unprivileged reader cannot tell.
            Err(e) => tracing::debug!(table = %t, error = %e, "cannot look up the nftables table"),
        }
    }
    if st.wants_dnsmasq() && recorded_dnsmasq(store, st).is_none() {
        let orphan = pidfile_dnsmasq(&run_dir(store, &st.def.name));
        problems.push(match (orphan, st.dnsmasq_pid) {
            (Some(pid), _) => format!("dnsmasq (pid {pid}) runs but was not recorded"),
            (None, Some(pid)) => format!("dnsmasq (pid {pid}) is not running"),
            (None, None) => "dnsmasq is not running".to_string(),
        });
    }
    if let Some(br) = nl.link(&st.bridge).await? {
        problems.extend(super::attach::problems(nl, st, br.index).await?);
        if st.bridge_created && st.def.vlan.is_some() && !nl.bridge_vlans(br.index).await?.filtering {
            problems.push(format!("VLAN filtering (<vlan>) is off on bridge {}", st.bridge));
        }
        if super::bandwidth::inbound(&st.def).is_some() && !nl.shaping(br.index).await?.htb {
            problems.push(format!("the inbound <bandwidth> limit (htb) on bridge {} is missing", st.bridge));
        }
    }
    Ok(problems)
}

fn used_bridges(store: &Store, except: &str) -> Result<Vec<(String, String)>, LifecycleError> {
    let mut used = Vec::new();
    for (n, def, st) in all(store)? {
        if n == except {
            continue;
        }
        if let Some(b) =
            st.as_ref().map(|s| s.bridge.clone()).or_else(|| def.as_ref().and_then(|d| d.bridge.name.clone()))
        {
            used.push((b, n));
        }
    }
    Ok(used)
}

/// Parse, complete and validate a network document, checking it against the others.
pub fn prepare(store: &Store, text: &str) -> Result<NetworkDef, LifecycleError> {
    prepare_as(store, text, None)
}

/// [`prepare`] of a new text for the network `old` (net-define over a defined network,
/// net-edit): the UUID and autostart carry over. A UUID written in the text must be the
/// network's own, as libvirt requires.
pub fn prepare_as(store: &Store, text: &str, old: Option<&NetworkDef>) -> Result<NetworkDef, LifecycleError> {
    let mut def = libvirt_xml::parse_any(text)?;
    crate::names::validate("network", &def.name).map_err(NetworkError::from)?;
    if let Some(old) = old.filter(|o| o.name == def.name) {
        if def.uuid.is_nil() {
            def.uuid = old.uuid;
        } else if def.uuid != old.uuid && !is_generated_default(store, old) {
            return Err(LifecycleError::UuidMismatch { name: def.name, uuid: old.uuid.to_string() });
        }
        def.autostart = old.autostart;
    }
    let used = used_bridges(store, &def.name)?;
    let set: HashSet<String> = used.iter().map(|(b, _)| b.clone()).collect();
    def.complete(&set);
    def.validate()?;
    super::dnsmasq_options::test(&def.dnsmasq_options)?;
    check_against_others(store, &def, &used)?;
    Ok(def)
}

fn check_against_others(store: &Store, def: &NetworkDef, used: &[(String, String)]) -> Result<(), LifecycleError> {
    if def.forward.mode != ForwardMode::Bridge {
        if let (Some(b), true) = (def.bridge_name(), def.creates_bridge()) {
            if let Some((_, other)) = used.iter().find(|(ub, _)| ub == b) {
                return Err(LifecycleError::BridgeTaken {
                    name: def.name.clone(),
                    bridge: b.into(),
                    other: other.clone(),
                });
            }
        }
    }
    for (n, other, st) in all(store)? {
        let o = st.map(|s| s.def).or(other);
        if n != def.name && o.is_some_and(|o| o.uuid == def.uuid) {
            return Err(LifecycleError::DuplicateUuid { name: def.name.clone(), other: n });
        }
    }
    Ok(())
}

/// `net-define`: persist a new definition (or replace an inactive/active one's config),
/// after the checks against the host that `net-start` would make ([`preflight`]).
pub async fn define(store: &Store, nl: &Netlink, text: &str) -> Result<NetworkDef, LifecycleError> {
    let name = libvirt_xml::parse_any(text)?.name;
    crate::names::validate("network", &name).map_err(NetworkError::from)?;
    let _l = store.lock(Kind::Network, &name)?;
    let old = store.load::<NetworkDef>(Kind::Network, &name).ok();
    let def = prepare_as(store, text, old.as_ref())?;
    preflight(store, nl, &def).await?;
    let detail = match old {
        Some(_) => store.save(Kind::Network, &def.name, &def).map(|()| "updated")?,
        None => store.create(Kind::Network, &def.name, &def).map(|()| "added")?,
    };
    crate::events::network(&store.paths.run, &def.name, crate::events::What::Defined, detail);
    Ok(def)
}

/// What `net-start` checks against the host, run by `net-define` before it stores: a
/// bridge name held by a link kvmctl did not create, a subnet overlapping an address or a
/// route on the host (another network's bridge included, named). The network's own running
/// bridge is not a clash.
pub async fn preflight(store: &Store, nl: &Netlink, def: &NetworkDef) -> Result<(), LifecycleError> {
    if !def.creates_bridge() {
        return Ok(());
    }
    let own = load_state(store, &def.name).map(|st| st.bridge);
    let bridge = def.bridge_name().expect("completed definition has a bridge name");
    if own.as_deref() != Some(bridge) && nl.link(bridge).await?.is_some() {
        return Err(LifecycleError::BridgeExists { name: def.name.clone(), bridge: bridge.into() });
    }
    check_overlaps(store, nl, def, own.as_deref()).await
}

/// First use of a root: define libvirt's `default` network (autostart), once.
pub fn ensure_default(store: &Store) -> Result<(), LifecycleError> {
    let marker = store.paths.root.join(".default-network");
    if marker.exists() {
        return Ok(());
    }
    if !store.exists(Kind::Network, "default") {
        let mut def = super::default_network();
        let used: HashSet<String> = used_bridges(store, "default")?.into_iter().map(|(b, _)| b).collect();
        if used.contains("virbr0") {
            def.bridge.name = None;
        }
        def.complete(&used);
        def.validate()?;
        match store.create(Kind::Network, "default", &def) {
            Ok(()) => {
                crate::events::network(&store.paths.run, "default", crate::events::What::Defined, "added");
                return atomic_write(&marker, def.uuid.to_string().as_bytes()).map_err(io_at(&marker));
            }
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    atomic_write(&marker, b"").map_err(io_at(&marker))
}

/// Is `old` the `default` network as kvmctl defined it on first use, with the UUID it made
/// up (recorded in the marker)? Its first redefinition from a file takes the file's UUID: the
/// user never chose the generated one (libvirt's own `default` comes with the package).
fn is_generated_default(store: &Store, old: &NetworkDef) -> bool {
    let marker = store.paths.root.join(".default-network");
    old.name == "default" && fs::read_to_string(marker).is_ok_and(|u| u.trim() == old.uuid.to_string())
}

fn nft(batch: &str) -> Result<(), ProcessError> {
    process::run("nft", ["-f", "-"], Some(batch.as_bytes())).map(|_| ())
}

async fn stop_dnsmasq(pid: i32, conf: &Path) {
    if !dnsmasq_is_ours(pid, conf) {
        return;
    }
    // SAFETY: kill(2) on a pid verified through /proc to be our dnsmasq.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for i in 0..400 {
        if exited(pid) {
            return;
        }
        if i == 100 {
            // SAFETY: as above (it has not exited, so the pid is still that process).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tracing::warn!(pid, "dnsmasq did not exit");
}

/// Has process `pid` finished exiting (gone, or a zombie)? Its cmdline empties earlier, while
/// it still holds its sockets: a new dnsmasq started then finds its address in use.
fn exited(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    matches!(stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()), Some("Z" | "X") | None)
}

/// What `net-start` did besides starting.
#[derive(Debug, Clone, Default)]
pub struct StartReport {
    /// The problems of a degraded network that the start repaired in place (empty: a fresh start).
    pub repaired: Vec<String>,
    /// What an interrupted command had left and the start removed first.
    pub cleaned: Vec<String>,
}

/// `net-start` (or `net-create` with `transient`): everything or nothing.
pub async fn start(store: &Store, nl: &Netlink, def: &NetworkDef, transient: bool) -> Result<NetState, LifecycleError> {
    start_or_repair(store, nl, def, transient).await.map(|(st, _)| st)
}

/// `net-start`: start the network, or, when a kill left it degraded (its start interrupted or
/// a piece gone), finish it in place from its recorded state. Call under the network's lock.
pub async fn start_or_repair(
    store: &Store,
    nl: &Netlink,
    def: &NetworkDef,
    transient: bool,
) -> Result<(NetState, StartReport), LifecycleError> {
    let name = &def.name;
    if let Some(st) = load_state(store, name) {
        let problems = problems(store, nl, &st, true).await?;
        if problems.is_empty() {
            return Err(LifecycleError::Active(name.clone()));
        }
        let st = repair(store, nl, st).await?;
        return Ok((st, StartReport { repaired: problems, cleaned: vec![] }));
    }
    let cleaned = clear_leftovers(store, name).await?;
    let used = used_bridges(store, name)?;
    // A hand-written definition file may lack what `net-define` fills in (the bridge name, the
    // bridge MAC): fill it in as libvirt would (the lowest free virbrN), or refuse with the
    // field named, as `net-define` does.
    let mut def = def.clone();
    def.complete(&used.iter().map(|(b, _)| b.clone()).collect());
    def.validate()?;
    check_against_others(store, &def, &used)?;
    let dir = run_dir(store, name);
    // A failure undoes what this start made, in reverse order (a kill is repaired from the
    // intent in state.json instead: see `status` and `repair`).
    let mut revert = Revert::new();
    match start_steps(store, nl, &def, transient, &dir, &mut revert).await {
        Ok(st) => {
            revert.commit();
            crate::events::network(
                &store.paths.run,
                name,
                crate::events::What::Started,
                format!("bridge {}", st.bridge),
            );
            Ok((st, StartReport { repaired: vec![], cleaned }))
        }
        Err(e) => {
            revert.undo_async().await;
            Err(e)
        }
    }
}

/// A run dir without a state file is what a command killed before its first write (or while
/// removing the dir) left: stop the dnsmasq its pid file names, if it is ours, and remove it.
async fn clear_leftovers(store: &Store, name: &str) -> Result<Vec<String>, LifecycleError> {
    let dir = run_dir(store, name);
    let mut cleaned = vec![];
    if !dir.exists() {
        return Ok(cleaned);
    }
    if let Some(pid) = pidfile_dnsmasq(&dir) {
        stop_dnsmasq(pid, &RunFiles::new(&dir).conf).await;
        cleaned.push(format!("stopped an orphan dnsmasq (pid {pid})"));
    }
    fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
    cleaned.push(format!("removed the leftover runtime dir {}", dir.display()));
    Ok(cleaned)
}

/// Is there anything of network `name` in the runtime dir (a state, or leftovers)?
pub fn has_runtime(store: &Store, name: &str) -> bool {
    run_dir(store, name).exists()
}

async fn start_steps<'a>(
    store: &Store,
    nl: &'a Netlink,
    def: &NetworkDef,
    transient: bool,
    dir: &Path,
    undo: &mut Revert<'a>,
) -> Result<NetState, LifecycleError> {
    let name = def.name.clone();
    let bridge = def.bridge_name().expect("completed definition has a bridge name").to_string();
    let bridge_created = def.forward.mode != ForwardMode::Bridge;
    match (nl.link(&bridge).await?, bridge_created) {
        (Some(_), true) => return Err(LifecycleError::BridgeExists { name, bridge }),
        (None, false) => return Err(LifecycleError::NoBridge { name, bridge }),
        (Some(l), false) if l.kind.as_deref() != Some("bridge") => {
            let kind = l.kind.unwrap_or_else(|| "non-bridge".into());
            return Err(LifecycleError::NotABridge { name, bridge, kind });
        }
        (Some(l), false) if def.vlan.is_some() && !nl.bridge_vlans(l.index).await?.filtering => {
            return Err(LifecycleError::NoVlanFiltering { name, bridge });
        }
        _ => {}
    }
    if bridge_created {
        check_overlaps(store, nl, def, None).await?;
    }
    undo.add(Undo::Dir(dir.to_path_buf())).map_err(io_at(dir))?;
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    // The intent: everything this start may create, before it creates any of it.
    let mut st = NetState {
        def: def.clone(),
        bridge,
        bridge_created,
        table: firewall::render(def).map(|_| firewall::table_name(&name)),
        dnsmasq: dnsmasq::needs_dnsmasq(def),
        dnsmasq_pid: None,
        transient,
        phase: Phase::Starting,
        enslaved: Vec::new(),
    };
    save_state(store, &name, &st)?;
    crate::fault::point("net-start.intent");
    converge(store, nl, &mut st, dir, undo).await?;
    commit(store, &mut st)?;
    Ok(st)
}

fn commit(store: &Store, st: &mut NetState) -> Result<(), LifecycleError> {
    st.phase = Phase::Running;
    save_state(store, &st.def.name, st)
}

/// Finish a degraded network from its state: create what is missing, keep what is there.
/// A failure leaves it degraded (everything is still recorded for `net-destroy`).
async fn repair(store: &Store, nl: &Netlink, mut st: NetState) -> Result<NetState, LifecycleError> {
    let dir = run_dir(store, &st.def.name);
    crate::state::interrupt::sweep_stale(&dir);
    // A failed repair keeps what it made: everything is recorded for net-destroy.
    let mut keep = Revert::new();
    let r = converge(store, nl, &mut st, &dir, &mut keep).await;
    keep.commit();
    r?;
    commit(store, &mut st)?;
    Ok(st)
}

/// Bring the host to what `st` records: the bridge with its addresses and routes, the
/// table, dnsmasq. Each step is safe to run again over a half-done one; what a step creates
/// is registered with `undo`.
async fn converge<'a>(
    store: &Store,
    nl: &'a Netlink,
    st: &mut NetState,
    dir: &Path,
    undo: &mut Revert<'a>,
) -> Result<(), LifecycleError> {
    let def = st.def.clone();
    let mut new_bridge = false;
    if st.bridge_created {
        let idx = match nl.link(&st.bridge).await? {
            Some(l) => l.index,
            None => {
                let spec = BridgeSpec {
                    name: &st.bridge,
                    mac: def.mac.map(|m| m.0),
                    mtu: def.mtu,
                    stp: def.bridge.stp,
                    delay: def.bridge.delay,
                    vlan_filtering: def.vlan.is_some(),
                };
                let idx = nl.create_bridge(&spec).await?;
                undo.on_fail_async(format!("delete bridge {}", st.bridge), move || async move {
                    nl.delete_link(idx).await.map_err(|e| e.to_string())
                });
                new_bridge = true;
                crate::fault::point("net-start.bridge");
                idx
            }
        };
        ignore_guest_router_advertisements(&st.bridge)?;
        for ip in &def.ips {
            nl.add_address_again(idx, ip.address, ip.prefix).await?;
        }
        if let Some(v) = &def.vlan {
            // Again on a bridge left by a killed start: both are idempotent.
            nl.set_vlan_filtering(idx).await?;
            let host = super::vlan::host(v).expect("a validated <vlan> has a tag");
            nl.set_port_vlans(idx, &[super::vlan::PortVlan { vid: host, pvid: true, untagged: true }], true).await?;
        }
        nl.set_up(idx).await?;
        crate::fault::point("net-start.addresses");
        for r in &def.routes {
            nl.add_route_again(r.address, r.prefix, r.gateway).await?;
        }
        enable_forwarding(&def)?;
        crate::fault::point("net-start.routes");
        super::attach::enslave_step(store, nl, st, idx, undo).await?;
        if let Some(shape) = super::bandwidth::inbound(&def) {
            nl.set_shaping(idx, &shape).await?;
            crate::fault::point("net-start.bandwidth");
        }
    } else if nl.link(&st.bridge).await?.is_none() {
        return Err(LifecycleError::NoBridge { name: def.name.clone(), bridge: st.bridge.clone() });
    }
    if let Some(table) = &st.table {
        // Replace-or-create in one batch: a table left by a killed start is rewritten whole.
        let rules = firewall::render(&def).expect("a network with a table has rules");
        nft(&rules)?;
        let t = table.clone();
        undo.on_fail(format!("delete nftables table inet {table}"), move || {
            super::nftnl::delete_inet_table(&t).map_err(|e| e.to_string())
        });
        crate::fault::point("net-start.table");
    }
    if st.wants_dnsmasq() {
        let conf = RunFiles::new(dir).conf;
        match recorded_dnsmasq(store, st) {
            // A dnsmasq of a bridge that was made again starts afresh on the new one.
            Some(pid) if new_bridge => stop_dnsmasq(pid, &conf).await,
            Some(_) => return Ok(()),
            None => {}
        }
        // One that the state does not know (spawned by a start killed before it recorded the
        // pid) is an orphan: stop it before starting ours.
        if let Some(pid) = pidfile_dnsmasq(dir) {
            stop_dnsmasq(pid, &conf).await;
        }
        let files = dnsmasq::render(&def, dir).expect("a network with dnsmasq has its files");
        let pid = spawn_dnsmasq(&def.name, dir, &files)?;
        undo.on_fail_async(format!("stop dnsmasq (pid {pid})"), move || async move {
            stop_dnsmasq(pid, &conf).await;
            Ok(())
        });
        st.dnsmasq_pid = Some(pid);
        crate::fault::point("net-start.dnsmasq");
    }
    Ok(())
}

/// Attach the taps of running VMs (`(vm, tap)` pairs) that are not on the network's bridge
/// to it, as libvirt does at daemon start: after `net-destroy --force` and `net-start`, or a
/// bridge made again by a repair. Returns the taps attached.
pub async fn reattach(nl: &Netlink, st: &NetState, taps: &[(String, String)]) -> Result<Vec<String>, LifecycleError> {
    let Some(br) = nl.link(&st.bridge).await? else {
        return Err(LifecycleError::NoBridge { name: st.def.name.clone(), bridge: st.bridge.clone() });
    };
    let mut attached = vec![];
    for (vm, tap) in taps {
        if let Some(l) = nl.link(tap).await? {
            if l.controller != Some(br.index) {
                nl.attach_port(l.index, br.index, st.def.port_isolated, &super::vlan::guest_of(&st.def)).await?;
                attached.push(format!("{tap} ({vm})"));
            }
        }
    }
    Ok(attached)
}

/// Overlaps with addresses and routes on the host (kvmctl's own bridges included), but for
/// those on `skip` (the network's own running bridge).
async fn check_overlaps(
    store: &Store,
    nl: &Netlink,
    def: &NetworkDef,
    skip: Option<&str>,
) -> Result<(), LifecycleError> {
    let host = nl.host_nets().await?;
    for s in def.subnets() {
        for h in host.iter().filter(|h| Some(h.ifname.as_str()) != skip) {
            let hs = super::Subnet::new(h.addr, h.prefix);
            if h.addr.is_loopback() || matches!(h.addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
                continue;
            }
            if s.is_ipv4() == hs.is_ipv4() && super::overlaps(&s, &hs) {
                let owner =
                    all(store)?.into_iter().find(|(_, _, st)| st.as_ref().is_some_and(|st| st.bridge == h.ifname));
                let what = match owner {
                    Some((n, _, _)) => format!("network '{n}': {}", h.what),
                    None => h.what.to_string(),
                };
                return Err(LifecycleError::Overlap {
                    name: def.name.clone(),
                    subnet: format!("{}/{}", s.network, s.prefix),
                    what,
                    other: format!("{}/{}", h.addr, h.prefix),
                    ifname: h.ifname.clone(),
                });
            }
        }
    }
    Ok(())
}

/// NAT and routed networks need forwarding in this network namespace; nothing else does.
fn enable_forwarding(def: &NetworkDef) -> Result<(), LifecycleError> {
    if !matches!(def.forward.mode, ForwardMode::Nat | ForwardMode::Route) {
        return Ok(());
    }
    let mut knobs = vec![];
    if def.ips.iter().any(|i| i.is_ipv4()) {
        knobs.push("/proc/sys/net/ipv4/ip_forward");
    }
    if def.ips.iter().any(|i| !i.is_ipv4()) {
        knobs.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for k in knobs {
        if fs::read_to_string(k).map(|v| v.trim() == "1").unwrap_or(false) {
            continue;
        }
        fs::write(k, "1\n").map_err(io_at(Path::new(k)))?;
    }
    Ok(())
}

/// A bridge kvmctl owns never takes IPv6 configuration from its guests (as libvirt sets it):
/// `accept_ra=0` and `autoconf=0` on the bridge, in this network namespace. Nothing to do
/// where IPv6 is off (no `/proc/sys/net/ipv6/conf/<bridge>`).
fn ignore_guest_router_advertisements(bridge: &str) -> Result<(), LifecycleError> {
    let dir = Path::new("/proc/sys/net/ipv6/conf").join(bridge);
    if !dir.is_dir() {
        return Ok(());
    }
    for knob in ["accept_ra", "autoconf"] {
        let k = dir.join(knob);
        if fs::read_to_string(&k).map(|v| v.trim() == "0").unwrap_or(false) {
            continue;
        }
        fs::write(&k, "0\n").map_err(io_at(&k))?;
    }
    Ok(())
}

/// Can the unprivileged user dnsmasq drops to reach `dir`?
fn world_traversable(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors().all(|d| fs::metadata(d).map(|m| m.permissions().mode() & 0o001 != 0).unwrap_or(false))
}

fn spawn_dnsmasq(name: &str, dir: &Path, files: &dnsmasq::DnsmasqFiles) -> Result<i32, LifecycleError> {
    use std::os::unix::fs::PermissionsExt;
    if !world_traversable(dir) {
        return Err(LifecycleError::RunDirPrivate { name: name.into(), path: dir.into() });
    }
    let rf = RunFiles::new(dir);
    for (p, text) in [(&rf.conf, &files.conf), (&rf.hostsfile, &files.hostsfile), (&rf.addnhosts, &files.addnhosts)] {
        runtime_write(p, text.as_bytes()).map_err(io_at(p))?;
        fs::set_permissions(p, fs::Permissions::from_mode(0o644)).map_err(io_at(p))?;
    }
    crate::fault::point("net-start.dnsmasq-files");
    let conf_arg = format!("--conf-file={}", rf.conf.display());
    // dnsmasq daemonizes: its first process exits once the daemon is ready (or failed).
    process::run("dnsmasq", [conf_arg.as_str()], None)
        .map_err(|e| LifecycleError::Dnsmasq { name: name.into(), reason: e.to_string() })?;
    let pid: i32 = fs::read_to_string(&rf.pid).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
        LifecycleError::Dnsmasq { name: name.into(), reason: format!("no pid in {}", rf.pid.display()) }
    })?;
    if !dnsmasq_is_ours(pid, &rf.conf) {
        return Err(LifecycleError::Dnsmasq { name: name.into(), reason: format!("pid {pid} is not our dnsmasq") });
    }
    Ok(pid)
}

/// What `net-destroy` did.
#[derive(Debug, Clone, Default)]
pub struct DestroyReport {
    /// The network was not (or no longer fully) running: what was missing.
    pub problems: Vec<String>,
    /// What an interrupted command had left and was removed (no state was recorded).
    pub cleaned: Vec<String>,
}

/// `net-destroy`: remove everything the start created, and nothing else: the nftables table
/// (committed at once), then dnsmasq's exit and the bridge's unregistering together (done
/// when the bridge has left the namespace: see `unlink`). A degraded network loses whatever
/// of it is there (missing pieces are not errors), an unrecorded dnsmasq found by its pid
/// file included. `users` are the running VMs with NICs on it: refused unless `force`.
pub async fn destroy(
    store: &Store,
    nl: &Netlink,
    name: &str,
    users: &[String],
    force: bool,
) -> Result<DestroyReport, LifecycleError> {
    let dir = run_dir(store, name);
    let Some(st) = load_state(store, name) else {
        let cleaned = clear_leftovers(store, name).await?;
        if cleaned.is_empty() {
            return Err(LifecycleError::Inactive(name.into()));
        }
        return Ok(DestroyReport { problems: vec![], cleaned });
    };
    if !users.is_empty() && !force {
        return Err(LifecycleError::InUse { name: name.into(), vms: users.join(", ") });
    }
    let problems = problems(store, nl, &st, true).await?;
    // Host interfaces first, as they were before they were enslaved (again after a kill).
    super::attach::release_all(nl, &st).await?;
    let conf = RunFiles::new(&dir).conf;
    // The table first (committed in under a millisecond); its socket stays open until the
    // bridge is gone, since closing it holds the nftables lock that the bridge's
    // unregistering needs (see `nftnl`).
    let table_sock = match &st.table {
        Some(t) => Some(super::nftnl::delete_inet_table_keep_socket(t).map_err(|e| LifecycleError::Invalid {
            name: name.into(),
            what: format!("cannot delete nftables table inet {t}: {e}"),
        })?),
        None => None,
    };
    crate::fault::point("net-destroy.table");
    let dnsmasq = async {
        // The recorded one, and one a killed start spawned but did not record.
        for pid in st.dnsmasq_pid.into_iter().chain(pidfile_dnsmasq(&dir)) {
            stop_dnsmasq(pid, &conf).await;
        }
        crate::fault::point("net-destroy.dnsmasq");
    };
    let bridge = async {
        if st.bridge_created {
            if let Some(l) = nl.link(&st.bridge).await? {
                let index = l.index;
                let wait = std::time::Duration::from_secs(30);
                tokio::task::spawn_blocking(move || super::unlink::delete_link_detached(index, wait))
                    .await
                    .expect("unlink task")
                    .map_err(|e| LifecycleError::Invalid {
                        name: name.into(),
                        what: format!("cannot delete bridge {}: {e}", st.bridge),
                    })?;
            }
        }
        Ok::<(), LifecycleError>(())
    };
    let ((), r) = tokio::join!(dnsmasq, bridge);
    drop(table_sock);
    r?;
    crate::fault::point("net-destroy.rundir");
    fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
    crate::events::network(&store.paths.run, name, crate::events::What::Stopped, "destroyed");
    Ok(DestroyReport { problems, cleaned: vec![] })
}

/// The DHCP leases of a running network (from dnsmasq's lease file), with each address's prefix.
pub fn current_leases(store: &Store, st: &NetState) -> Vec<super::leases::Lease> {
    let file = RunFiles::new(&run_dir(store, &st.def.name)).leases;
    let text = fs::read_to_string(file).unwrap_or_default();
    let subnets = st.def.subnets();
    super::leases::parse(&text, |ip| subnets.iter().find(|s| s.contains(ip)).map(|s| s.prefix).unwrap_or(32))
}

/// Rewrite the hostsfile/addnhosts of a running network and make dnsmasq re-read them.
pub fn reload_hosts(store: &Store, st: &NetState) -> Result<(), LifecycleError> {
    let dir = run_dir(store, &st.def.name);
    let rf = RunFiles::new(&dir);
    runtime_write(&rf.hostsfile, dnsmasq::hostsfile(&st.def).as_bytes()).map_err(io_at(&rf.hostsfile))?;
    runtime_write(&rf.addnhosts, dnsmasq::addnhosts(&st.def).as_bytes()).map_err(io_at(&rf.addnhosts))?;
    for p in [&rf.hostsfile, &rf.addnhosts] {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(0o644)).map_err(io_at(p))?;
    }
    if let Some(pid) = st.dnsmasq_pid {
        if dnsmasq_is_ours(pid, &rf.conf) {
            // SAFETY: kill(2) on a pid verified to be our dnsmasq.
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
    }
    save_state(store, &st.def.name, st)
}
