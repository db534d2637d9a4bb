//! The read-only domain commands: dominfo, dumpxml, domiflist, domifaddr, domblklist,
//! domblkinfo, domblkstat, dommemstat, domstats, vncdisplay.

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::output::{info_block, table, yes_no};
use super::Ctx;
use crate::domain::definition::{DiskDef, DomainDef, NicSource};
use crate::domain::libvirt_xml::{self, Live};
use crate::domain::lifecycle::{self, DomainError};
use crate::domain::runtime::{self, RunDir, RunState, VmState};
use crate::domain::supervisor::{Request, UsernetAddr};
use crate::paths::Kind;
use crate::size::human;

/// While qemu runs (or is shutting down): its recorded run state.
fn live_state(ctx: &Ctx, name: &str) -> Option<RunState> {
    let rd = RunDir::of(&ctx.store, name);
    let (state, _) = runtime::observed(&rd);
    matches!(state, VmState::Running | VmState::Paused | VmState::Shutdown).then(|| rd.read_state()).flatten()
}

fn require_running(ctx: &Ctx, name: &str) -> anyhow::Result<RunState> {
    match live_state(ctx, name) {
        Some(s) => Ok(s),
        None => bail!(DomainError::NotRunning(name.into())),
    }
}

pub(super) fn dominfo(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    let rd = RunDir::of(&ctx.store, name);
    let (state, reason) = runtime::observed(&rd);
    let rs = rd.read_state();
    if ctx.out.json {
        return ctx.out.json(&json!({"definition": def, "state": state, "reason": reason, "runtime": rs}));
    }
    let running = matches!(state, VmState::Running | VmState::Paused | VmState::Shutdown);
    // The domain id and qemu's pid, while it runs.
    let live = |n: Option<i64>| n.filter(|_| running).map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let mut rows = vec![
        ("Id", live(rs.as_ref().and_then(|s| s.domain_id).map(i64::from))),
        ("PID", live(rs.as_ref().and_then(|s| s.qemu_pid).map(i64::from))),
        ("Name", def.name.clone()),
        ("UUID", def.uuid.to_string()),
        ("OS Type", "hvm".into()),
        ("State", state.as_str().into()),
        ("CPU(s)", def.vcpus.to_string()),
        ("Max memory", format!("{} KiB", def.memory_mib * 1024)),
        ("Used memory", format!("{} KiB", def.memory_mib * 1024)),
        ("Persistent", yes_no(ctx.store.exists(Kind::Domain, name))),
        ("Autostart", if def.autostart { "enable".into() } else { "disable".into() }),
        (
            "Accelerator",
            rs.as_ref().filter(|_| running).map(|s| s.accel.clone()).unwrap_or_else(|| def.accel.as_str().into()),
        ),
    ];
    if let Some(t) = &def.title {
        rows.insert(3, ("Title", t.clone()));
    }
    print!("{}", info_block(&rows));
    Ok(())
}

/// `dumpxml [--inactive] [--xpath EXPR [--wrap]]`: what runs (the domain id, taps, and the
/// accelerator and CPU qemu really got), or the definition.
pub(super) fn dumpxml(ctx: &Ctx, name: &str, inactive: bool, xpath: Option<&str>, wrap: bool) -> anyhow::Result<()> {
    let xml = if inactive {
        let def = match crate::domain::define::previous(&ctx.store, name) {
            Some(d) => d,
            None => lifecycle::current_def(&ctx.store, name)?,
        };
        libvirt_xml::to_xml(&def)
    } else {
        let def = lifecycle::current_def(&ctx.store, name)?;
        // A VM that is not running shows its definition, as virsh's does (and round-trips).
        let live = match live_state(ctx, name) {
            Some(s) => Live { id: s.domain_id, accel: s.accel.parse().ok(), taps: s.taps },
            None => Live::default(),
        };
        libvirt_xml::to_xml_live(&def, &live)
    };
    let Some(expr) = xpath else {
        print!("{xml}");
        return Ok(());
    };
    let root = crate::xml::parse_document(&xml).context("the domain's own XML")?;
    match crate::xpath::select(&root, expr)? {
        crate::xpath::Selected::Value(v) => println!("{v}"),
        crate::xpath::Selected::Nodes(nodes) if wrap => {
            println!("<nodes>");
            nodes.iter().for_each(|n| println!("{n}"));
            println!("</nodes>");
        }
        crate::xpath::Selected::Nodes(nodes) => nodes.iter().for_each(|n| println!("{n}")),
    }
    Ok(())
}

pub(super) fn domiflist(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    let mut taps = live_state(ctx, name).map(|s| s.taps).unwrap_or_default().into_iter();
    let rows: Vec<Vec<String>> = def
        .nics
        .iter()
        .map(|n| {
            let (ty, src) = nic_source(&n.source);
            let iface =
                if n.source == NicSource::User { "-".into() } else { taps.next().unwrap_or_else(|| "-".into()) };
            vec![iface, ty.into(), src, format!("{:?}", n.model).to_lowercase(), n.mac.to_string()]
        })
        .collect();
    if ctx.out.json {
        return ctx.out.json(&def.nics);
    }
    print!("{}", table(&["Interface", "Type", "Source", "Model", "MAC"], &rows));
    Ok(())
}

fn nic_source(s: &NicSource) -> (&'static str, String) {
    match s {
        NicSource::Network { network } => ("network", network.clone()),
        NicSource::Bridge { bridge } => ("bridge", bridge.clone()),
        NicSource::User => ("user", "-".into()),
    }
}

/// Where `domifaddr` looks for addresses (virsh's `--source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AddrSource {
    /// The DHCP leases of kvmctl's networks (and user-mode DHCP).
    Lease,
    /// The host's ARP/NDP neighbour table on the NIC's tap or bridge.
    Arp,
    /// qemu-guest-agent inside the guest.
    Agent,
}

#[derive(Serialize)]
pub(super) struct IfAddr {
    name: String,
    mac: String,
    protocol: &'static str,
    pub(super) address: String,
    source: String,
}

/// The running VM's VNC listen address as qemu was given it (`-vnc HOST:DISPLAY[,...]`):
/// `HOST:DISPLAY`, and the two apart.
pub(super) fn vnc_listen(ctx: &Ctx, name: &str) -> anyhow::Result<(String, (String, u16))> {
    lifecycle::current_def(&ctx.store, name)?;
    let rd = RunDir::of(&ctx.store, name);
    if !rd.alive() {
        bail!(DomainError::NotRunning(name.into()));
    }
    let argv: Vec<String> = serde_json::from_slice(&std::fs::read(rd.argv())?).context("the VM's recorded argv")?;
    let Some(vnc) = argv.iter().position(|a| a == "-vnc").and_then(|i| argv.get(i + 1)) else {
        bail!("domain '{name}' has no graphics (install it with --graphics vnc)");
    };
    let addr = vnc.split(',').next().unwrap_or_default();
    let (host, display) = addr.rsplit_once(':').context("the VM's -vnc argument")?;
    Ok((addr.to_string(), (host.to_string(), display.parse().context("the VM's VNC display")?)))
}

pub(super) fn domifaddr(ctx: &Ctx, name: &str, source: AddrSource, interface: Option<&str>) -> anyhow::Result<()> {
    let rows = match source {
        AddrSource::Lease => if_addrs(ctx, name)?,
        AddrSource::Arp => arp_addrs(ctx, name)?,
        AddrSource::Agent => {
            lifecycle::current_def(&ctx.store, name)?;
            bail!(
                "domain '{name}': --source agent needs qemu-guest-agent, which kvmctl does not talk to yet; \
                 use --source lease or --source arp"
            )
        }
    };
    let rows: Vec<IfAddr> = match interface {
        Some(i) => {
            let kept: Vec<IfAddr> = rows.into_iter().filter(|r| r.name == i || r.mac == i).collect();
            if kept.is_empty() && !nic_names(ctx, name)?.iter().any(|n| n == i) {
                bail!("domain '{name}' has no interface '{i}' (its taps and MACs: kvmctl domiflist {name})");
            }
            kept
        }
        None => rows,
    };
    if ctx.out.json {
        return ctx.out.json(&rows);
    }
    let t: Vec<Vec<String>> =
        rows.iter().map(|r| vec![r.name.clone(), r.mac.clone(), r.protocol.into(), r.address.clone()]).collect();
    print!("{}", table(&["Name", "MAC address", "Protocol", "Address"], &t));
    Ok(())
}

/// The names `--interface` may give: the VM's taps and MACs.
fn nic_names(ctx: &Ctx, name: &str) -> anyhow::Result<Vec<String>> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    let mut names: Vec<String> = def.nics.iter().map(|n| n.mac.to_string()).collect();
    names.extend(live_state(ctx, name).map(|s| s.taps).unwrap_or_default());
    Ok(names)
}

/// A running VM's addresses: its leases on kvmctl networks, and user-mode DHCP's (`domifaddr`).
pub(super) fn if_addrs(ctx: &Ctx, name: &str) -> anyhow::Result<Vec<IfAddr>> {
    let store = &ctx.store;
    let def = lifecycle::current_def(store, name)?;
    let rd = RunDir::of(store, name);
    if !rd.alive() {
        bail!(DomainError::NotRunning(name.into()));
    }
    let mut taps = rd.read_state().map(|s| s.taps).unwrap_or_default().into_iter();
    let mut rows = Vec::new();
    let mut usernet: Option<Vec<UsernetAddr>> = None;
    for (idx, n) in def.nics.iter().enumerate() {
        match &n.source {
            NicSource::Network { network } => {
                let iface = taps.next().unwrap_or_default();
                let Some(st) = crate::network::lifecycle::load_state(store, network) else { continue };
                for l in crate::network::lifecycle::current_leases(store, &st)
                    .into_iter()
                    .filter(|l| l.mac.as_deref() == Some(n.mac.to_string().as_str()))
                {
                    rows.push(IfAddr {
                        name: iface.clone(),
                        mac: n.mac.to_string(),
                        protocol: if l.ip.is_ipv4() { "ipv4" } else { "ipv6" },
                        address: format!("{}/{}", l.ip, l.prefix),
                        source: format!("lease ({network})"),
                    });
                }
            }
            NicSource::Bridge { .. } => {
                taps.next();
            }
            NicSource::User => {
                if usernet.is_none() {
                    let r = lifecycle::control(store, name, Request::UsernetAddrs, "domifaddr")?;
                    usernet = Some(serde_json::from_value(r.data).context("domifaddr: the supervisor's reply")?);
                }
                for a in usernet.iter().flatten().filter(|a| a.nic == idx) {
                    rows.push(IfAddr {
                        name: "-".into(),
                        mac: n.mac.to_string(),
                        protocol: "ipv4",
                        address: format!("{}/{}", a.address, a.prefix),
                        source: "user-mode DHCP (QMP)".into(),
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// `domifaddr --source arp`: what the host's neighbour table holds for each NIC's MAC, on the
/// bridge its tap is a port of (networks and host bridges alike; user-mode NICs have none).
fn arp_addrs(ctx: &Ctx, name: &str) -> anyhow::Result<Vec<IfAddr>> {
    let store = &ctx.store;
    let def = lifecycle::current_def(store, name)?;
    let st = require_running(ctx, name)?;
    let mut taps = st.taps.into_iter();
    let mut wanted = Vec::new();
    for n in &def.nics {
        let bridge = match &n.source {
            NicSource::User => continue,
            NicSource::Bridge { bridge } => Some(bridge.clone()),
            NicSource::Network { network } => crate::network::lifecycle::load_state(store, network).map(|s| s.bridge),
        };
        let tap = taps.next().unwrap_or_default();
        if let Some(b) = bridge {
            wanted.push((tap, n.mac, b));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let nl = crate::network::netlink::Netlink::connect()?;
        let mut rows = Vec::new();
        for (tap, mac, bridge) in wanted {
            let Some(link) = nl.link(&bridge).await? else { continue };
            for (ip, _) in nl.neighbours(link.index).await?.into_iter().filter(|(_, m)| *m == mac.0) {
                rows.push(IfAddr {
                    name: tap.clone(),
                    mac: mac.to_string(),
                    protocol: if ip.is_ipv4() { "ipv4" } else { "ipv6" },
                    address: format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
                    source: format!("arp ({bridge})"),
                });
            }
        }
        Ok(rows)
    })
}

/// One disk's target name, definition and (while running) qemu's drive id.
fn disks(def: &DomainDef) -> Vec<(String, &DiskDef, String)> {
    libvirt_xml::target_names(def)
        .into_iter()
        .zip(&def.disks)
        .enumerate()
        .map(|(i, (t, d))| (t, d, format!("drive{i}")))
        .collect()
}

/// Pick the disk `dev` names: its target (`vda`) or its path.
fn pick<'a>(
    name: &str,
    all: Vec<(String, &'a DiskDef, String)>,
    dev: Option<&str>,
) -> anyhow::Result<Vec<(String, &'a DiskDef, String)>> {
    let Some(dev) = dev else { return Ok(all) };
    let picked: Vec<_> = all.into_iter().filter(|(t, d, _)| t == dev || d.path == std::path::Path::new(dev)).collect();
    if picked.is_empty() {
        bail!("domain '{name}' has no disk '{dev}' (its targets and sources: kvmctl domblklist {name})");
    }
    Ok(picked)
}

pub(super) fn domblklist(ctx: &Ctx, name: &str, details: bool, inactive: bool) -> anyhow::Result<()> {
    let def = if inactive {
        crate::domain::define::previous(&ctx.store, name)
            .map(Ok)
            .unwrap_or_else(|| lifecycle::current_def(&ctx.store, name))?
    } else {
        lifecycle::current_def(&ctx.store, name)?
    };
    if ctx.out.json {
        return ctx.out.json(&def.disks);
    }
    let rows: Vec<Vec<String>> = disks(&def)
        .into_iter()
        .map(|(t, d, _)| {
            let src = d.path.display().to_string();
            if details {
                vec!["file".into(), format!("{:?}", d.device).to_lowercase(), t, src]
            } else {
                vec![t, src]
            }
        })
        .collect();
    let headers: &[&str] = if details { &["Type", "Device", "Target", "Source"] } else { &["Target", "Source"] };
    print!("{}", table(headers, &rows));
    Ok(())
}

#[derive(Serialize)]
struct BlkInfo {
    target: String,
    source: String,
    capacity: u64,
    allocation: u64,
    physical: u64,
}

fn blk_info(t: &str, d: &DiskDef) -> anyhow::Result<BlkInfo> {
    let format: crate::storage::Format = d.format.to_string().parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let i = crate::storage::image::inspect_as(&d.path, format)
        .with_context(|| format!("disk {t} ({})", d.path.display()))?;
    Ok(BlkInfo {
        target: t.into(),
        source: d.path.display().to_string(),
        capacity: i.capacity,
        allocation: i.allocation,
        physical: i.physical,
    })
}

/// `domblkinfo VM [DEV | --all] [--human]`: capacity, allocation and physical size of disks,
/// read from the images with their recorded formats (running or not).
pub(super) fn domblkinfo(ctx: &Ctx, name: &str, dev: Option<&str>, all: bool, human_sizes: bool) -> anyhow::Result<()> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    if dev.is_none() && !all {
        bail!("domblkinfo needs a disk (a target such as vda, or its path) or --all");
    }
    let infos = pick(name, disks(&def), dev)?
        .into_iter()
        .map(|(t, d, _)| blk_info(&t, d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if ctx.out.json {
        return ctx.out.json(&infos);
    }
    let size = |n: u64| if human_sizes { human(n) } else { n.to_string() };
    if all {
        let rows: Vec<Vec<String>> = infos
            .iter()
            .map(|i| vec![i.target.clone(), size(i.capacity), size(i.allocation), size(i.physical)])
            .collect();
        print!("{}", table(&["Target", "Capacity", "Allocation", "Physical"], &rows));
    } else {
        let i = &infos[0];
        let rows = [("Capacity", size(i.capacity)), ("Allocation", size(i.allocation)), ("Physical", size(i.physical))];
        print!("{}", info_block(&rows));
    }
    Ok(())
}

/// Each counter: virsh's domblkstat name, its --human name, domstats' name, qemu's name.
const BLOCK_STATS: [(&str, &str, &str, &str); 8] = [
    ("rd_req", "number of read operations:", "rd.reqs", "rd_operations"),
    ("rd_bytes", "number of bytes read:", "rd.bytes", "rd_bytes"),
    ("wr_req", "number of write operations:", "wr.reqs", "wr_operations"),
    ("wr_bytes", "number of bytes written:", "wr.bytes", "wr_bytes"),
    ("flush_operations", "number of flush operations:", "fl.reqs", "flush_operations"),
    ("rd_total_times", "total duration of reads (ns):", "rd.times", "rd_total_time_ns"),
    ("wr_total_times", "total duration of writes (ns):", "wr.times", "wr_total_time_ns"),
    ("flush_total_times", "total duration of flushes (ns):", "fl.times", "flush_total_time_ns"),
];

/// qemu's `query-blockstats` for the VM's own disks, by target name: the counters in
/// [`BLOCK_STATS`] order.
fn block_stats(ctx: &Ctx, name: &str, def: &DomainDef) -> anyhow::Result<Vec<(String, [u64; 8])>> {
    let r = lifecycle::control(&ctx.store, name, Request::BlockStats, "domblkstat")?;
    let entries = r.data.as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (t, _, drive) in disks(def) {
        let Some(e) = entries.iter().find(|e| e["device"] == drive.as_str()) else { continue };
        let mut v = [0u64; 8];
        for (slot, (.., qemu)) in v.iter_mut().zip(BLOCK_STATS) {
            *slot = e["stats"][qemu].as_u64().unwrap_or(0);
        }
        out.push((t, v));
    }
    Ok(out)
}

/// `domblkstat VM [DEV] [--human]`: I/O counters from qemu, summed over all disks without DEV.
pub(super) fn domblkstat(ctx: &Ctx, name: &str, dev: Option<&str>, human_names: bool) -> anyhow::Result<()> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    require_running(ctx, name)?;
    let wanted: Vec<String> = pick(name, disks(&def), dev)?.into_iter().map(|(t, ..)| t).collect();
    let mut total = [0u64; 8];
    for (_, v) in block_stats(ctx, name, &def)?.into_iter().filter(|(t, _)| wanted.contains(t)) {
        total.iter_mut().zip(v).for_each(|(t, n)| *t += n);
    }
    if ctx.out.json {
        let m: Map<String, Value> =
            BLOCK_STATS.iter().zip(total).map(|((k, ..), v)| (k.to_string(), v.into())).collect();
        return ctx.out.json(&m);
    }
    let label = dev.unwrap_or_default();
    for ((key, human, ..), v) in BLOCK_STATS.iter().zip(total) {
        println!("{label} {} {v}", if human_names { human } else { key });
    }
    Ok(())
}

/// The balloon's size (KiB): qemu's word where it has a balloon, else the whole memory.
fn balloon_kib(ctx: &Ctx, name: &str, def: &DomainDef) -> u64 {
    lifecycle::control(&ctx.store, name, Request::Balloon, "dommemstat")
        .ok()
        .and_then(|r| r.data.get("actual").and_then(Value::as_u64))
        .map(|b| b / 1024)
        .unwrap_or(def.memory_mib * 1024)
}

/// `dommemstat VM`: the balloon's size and qemu's resident memory (KiB), as virsh prints them.
pub(super) fn dommemstat(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    let st = require_running(ctx, name)?;
    let rss = st.qemu_id().and_then(crate::domain::qemu::usage).map(|u| u.1).unwrap_or(0);
    let rows = [("actual", balloon_kib(ctx, name, &def)), ("rss", rss)];
    if ctx.out.json {
        return ctx.out.json(&rows.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<_, _>>());
    }
    rows.iter().for_each(|(k, v)| println!("{k} {v}"));
    Ok(())
}

/// virsh domstats' groups.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct StatGroups {
    /// State and reason.
    #[arg(long)]
    state: bool,
    /// qemu's CPU time.
    #[arg(long)]
    cpu_total: bool,
    /// Balloon size and maximum.
    #[arg(long)]
    balloon: bool,
    /// vCPU count.
    #[arg(long)]
    vcpu: bool,
    /// Per-NIC traffic (from the tap's counters, seen from the guest).
    #[arg(long)]
    interface: bool,
    /// Per-disk sizes and I/O.
    #[arg(long)]
    block: bool,
}

/// `domstats [VM...] [--state --cpu-total --balloon --vcpu --interface --block]`: virsh's
/// `Domain: 'name'` blocks of `key=value` (one JSON object per VM with --json).
pub(super) fn domstats(ctx: &Ctx, names: &[String], g: StatGroups) -> anyhow::Result<()> {
    let all = !(g.state || g.cpu_total || g.balloon || g.vcpu || g.interface || g.block);
    let names: Vec<String> = if names.is_empty() {
        super::domain::views(ctx)?.into_iter().map(|v| v.name).collect()
    } else {
        names.to_vec()
    };
    let mut out = Vec::new();
    for name in &names {
        let def = lifecycle::current_def(&ctx.store, name)?;
        let rd = RunDir::of(&ctx.store, name);
        let (state, reason) = runtime::observed(&rd);
        let live = live_state(ctx, name);
        let mut m: Vec<(String, Value)> = Vec::new();
        let mut put = |k: String, v: Value| m.push((k, v));
        if all || g.state {
            put("state.state".into(), state.as_str().into());
            put("state.reason".into(), reason.into());
        }
        if let (true, Some(st)) = (all || g.cpu_total, &live) {
            if let Some((ns, _)) = st.qemu_id().and_then(crate::domain::qemu::usage) {
                put("cpu.time".into(), ns.into());
            }
        }
        if all || g.balloon {
            let current = if live.is_some() { balloon_kib(ctx, name, &def) } else { def.memory_mib * 1024 };
            put("balloon.current".into(), current.into());
            put("balloon.maximum".into(), (def.memory_mib * 1024).into());
            if let Some((_, rss)) = live.as_ref().and_then(|s| s.qemu_id()).and_then(crate::domain::qemu::usage) {
                put("balloon.rss".into(), rss.into());
            }
        }
        if all || g.vcpu {
            put("vcpu.current".into(), def.vcpus.into());
            put("vcpu.maximum".into(), def.vcpus.into());
        }
        if let (true, Some(st)) = (all || g.interface, &live) {
            put("net.count".into(), st.taps.len().into());
            for (i, tap) in st.taps.iter().enumerate() {
                put(format!("net.{i}.name"), tap.clone().into());
                // A tap's transmit is the guest's receive.
                for (key, file) in [
                    ("rx.bytes", "tx_bytes"),
                    ("rx.pkts", "tx_packets"),
                    ("rx.drop", "tx_dropped"),
                    ("tx.bytes", "rx_bytes"),
                    ("tx.pkts", "rx_packets"),
                    ("tx.drop", "rx_dropped"),
                ] {
                    let v = std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{file}"))
                        .ok()
                        .and_then(|t| t.trim().parse::<u64>().ok());
                    if let Some(v) = v {
                        put(format!("net.{i}.{key}"), v.into());
                    }
                }
            }
        }
        if all || g.block {
            let io = if live.is_some() { block_stats(ctx, name, &def).unwrap_or_default() } else { Vec::new() };
            put("block.count".into(), def.disks.len().into());
            for (i, (t, d, _)) in disks(&def).into_iter().enumerate() {
                put(format!("block.{i}.name"), t.clone().into());
                put(format!("block.{i}.path"), d.path.display().to_string().into());
                if let Ok(b) = blk_info(&t, d) {
                    put(format!("block.{i}.capacity"), b.capacity.into());
                    put(format!("block.{i}.allocation"), b.allocation.into());
                    put(format!("block.{i}.physical"), b.physical.into());
                }
                if let Some((_, v)) = io.iter().find(|(n, _)| *n == t) {
                    for ((.., key, _), n) in BLOCK_STATS.iter().zip(v) {
                        put(format!("block.{i}.{key}"), (*n).into());
                    }
                }
            }
        }
        out.push((name.clone(), m));
    }
    if ctx.out.json {
        let v: Vec<Value> = out
            .into_iter()
            .map(|(n, m)| json!({"name": n, "stats": m.into_iter().collect::<Map<String, Value>>()}))
            .collect();
        return ctx.out.json(&v);
    }
    for (n, m) in out {
        println!("Domain: '{n}'");
        for (k, v) in m {
            let v = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            println!("  {k}={v}");
        }
        println!();
    }
    Ok(())
}
