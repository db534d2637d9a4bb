//! net-* commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{info_block, listed, table, yes_no};
use super::Ctx;
use crate::network::lifecycle::{self, LifecycleError, NetState, Status};
use crate::network::netlink::Netlink;
use crate::network::update::{self, Section, UpdateCmd};
use crate::network::{leases, to_xml, NetworkDef};
use crate::paths::Kind;

// Variant names become the virsh command names (NetDefine -> net-define).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum NetCmd {
    /// Define a network from libvirt network XML (or kvmctl TOML).
    NetDefine {
        file: PathBuf,
        /// Accepted for virsh's scripts: every definition is checked strictly (unknown elements,
        /// attributes and keys are refused by name) whether or not it is given.
        #[arg(long)]
        validate: bool,
    },
    /// Create and start a transient network from a file (not persisted).
    NetCreate { file: PathBuf },
    /// Start a defined network: bridge, firewall, dnsmasq.
    NetStart {
        #[arg(add = super::network_names())]
        network: String,
    },
    /// Stop a network, removing everything its start created.
    NetDestroy {
        #[arg(add = super::network_names())]
        network: String,
        /// Also when running VMs have NICs on it (they are re-attached at the next net-start).
        #[arg(long)]
        force: bool,
    },
    /// Remove a network's definition (an active network keeps running, as a transient one).
    NetUndefine {
        #[arg(add = super::network_names())]
        network: String,
    },
    /// Start the network at boot (kvmctl up).
    NetAutostart {
        #[arg(add = super::network_names())]
        network: String,
        #[arg(long)]
        disable: bool,
    },
    /// List networks (active ones unless --all).
    NetList(NetListArgs),
    /// Show a network's state, bridge and UUID.
    NetInfo {
        #[arg(add = super::network_names())]
        network: String,
    },
    /// Print the network as libvirt XML.
    NetDumpxml {
        #[arg(add = super::network_names())]
        network: String,
        /// The persistent definition, not the running one.
        #[arg(long)]
        inactive: bool,
    },
    /// Edit the definition in $EDITOR; an invalid edit is refused and the old one kept.
    NetEdit {
        #[arg(add = super::network_names())]
        network: String,
    },
    /// Show the DHCP leases of a network.
    NetDhcpLeases {
        #[arg(add = super::network_names())]
        network: String,
        #[arg(long)]
        mac: Option<String>,
    },
    /// Add, delete or modify a static DHCP host or DNS host: net-update NET add ip-dhcp-host "<host .../>".
    NetUpdate {
        #[arg(add = super::network_names())]
        network: String,
        command: UpdateCmd,
        section: Section,
        xml: String,
        /// Also (or only) change the running network.
        #[arg(long)]
        live: bool,
        /// Also (or only) change the persistent definition.
        #[arg(long)]
        config: bool,
    },
    /// Enslave a host interface to the network's bridge (kept in the definition; live when active).
    NetAttachInterface {
        #[arg(add = super::network_names())]
        network: String,
        interface: String,
        /// Release it instead (as it was before it was enslaved) and drop it from the definition.
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Debug, Args)]
pub struct NetListArgs {
    #[arg(long)]
    all: bool,
    #[arg(long, conflicts_with = "all")]
    inactive: bool,
    /// Names only.
    #[arg(long)]
    name: bool,
    /// UUIDs only.
    #[arg(long)]
    uuid: bool,
    #[command(flatten)]
    filter: super::output::Filter,
}

#[derive(Serialize)]
struct NetView {
    name: String,
    uuid: String,
    #[serde(flatten)]
    status: Status,
    autostart: bool,
    persistent: bool,
    bridge: Option<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn run(cmd: NetCmd, ctx: &Ctx) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let nl = Netlink::connect()?;
        dispatch(cmd, ctx, &nl).await
    })
}

fn read_file(p: &std::path::Path) -> anyhow::Result<String> {
    Ok(crate::limits::read_definition(p)?)
}

async fn dispatch(cmd: NetCmd, ctx: &Ctx, nl: &Netlink) -> anyhow::Result<()> {
    let (store, out) = (&ctx.store, &ctx.out);
    match cmd {
        NetCmd::NetDefine { file, validate: _ } => {
            let def =
                lifecycle::define(store, nl, &read_file(&file)?).await.with_context(|| file.display().to_string())?;
            out.done(format!("Network {} defined from {}", def.name, file.display()));
        }
        NetCmd::NetCreate { file } => {
            let def = lifecycle::prepare(store, &read_file(&file)?).with_context(|| file.display().to_string())?;
            if store.exists(Kind::Network, &def.name) {
                anyhow::bail!("network '{}' already exists (defined); use net-start", def.name);
            }
            let _l = store.lock(Kind::Network, &def.name)?;
            started(ctx, nl, &def, true, &format!("created from {}", file.display())).await?;
        }
        NetCmd::NetStart { network } => {
            let _l = store.lock(Kind::Network, &network)?;
            let def: NetworkDef = match store.load(Kind::Network, &network) {
                Ok(d) => d,
                // A transient network left degraded is repaired from its recorded definition.
                Err(e) => lifecycle::load_state(store, &network).map(|s| s.def).ok_or(e)?,
            };
            started(ctx, nl, &def, false, "started").await?;
        }
        NetCmd::NetDestroy { network, force } => {
            let _l = store.lock(Kind::Network, &network)?;
            known(ctx, &network)?;
            let mut users: Vec<String> =
                crate::domain::runtime::taps_on_network(store, &network).into_iter().map(|(vm, _)| vm).collect();
            users.dedup();
            let r = lifecycle::destroy(store, nl, &network, &users, force).await?;
            if !r.cleaned.is_empty() {
                out.done(format!(
                    "Network {network} was not running; cleaned up after an interrupted command: {}",
                    r.cleaned.join("; ")
                ));
            } else if !r.problems.is_empty() {
                out.done(format!("Network {network} destroyed (it was degraded: {})", r.problems.join("; ")));
            } else {
                out.done(format!("Network {network} destroyed"));
            }
            if !users.is_empty() {
                out.done(format!(
                    "Running domains lost their NICs on it until the next net-start: {}",
                    users.join(", ")
                ));
            }
        }
        NetCmd::NetUndefine { network } => undefine(ctx, &network)?,
        NetCmd::NetAutostart { network, disable } => {
            let _l = store.lock(Kind::Network, &network)?;
            let mut def: NetworkDef = store.load(Kind::Network, &network)?;
            def.autostart = !disable;
            store.save(Kind::Network, &network, &def)?;
            out.done(if disable {
                format!("Network {network} unmarked as autostarted")
            } else {
                format!("Network {network} marked as autostarted")
            });
        }
        NetCmd::NetList(a) => list(ctx, nl, a).await?,
        NetCmd::NetInfo { network } => info(ctx, nl, &network).await?,
        NetCmd::NetDumpxml { network, inactive } => {
            let def =
                if inactive { store.load(Kind::Network, &network)? } else { lifecycle::current_def(store, &network)? };
            print!("{}", to_xml(&def));
        }
        NetCmd::NetEdit { network } => edit(ctx, &network)?,
        NetCmd::NetDhcpLeases { network, mac } => dhcp_leases(ctx, &network, mac.as_deref())?,
        NetCmd::NetUpdate { network, command, section, xml, live, config } => {
            net_update(ctx, &network, command, section, &xml, live, config)?;
            out.done(format!("Updated network {network} {section}"));
        }
        NetCmd::NetAttachInterface { network, interface, detach } => {
            super::net_attach::run(ctx, nl, &network, &interface, detach).await?
        }
    }
    Ok(())
}

/// Start (or repair) a network, re-attach running VMs' taps, and say what was done.
pub(super) async fn started(
    ctx: &Ctx,
    nl: &Netlink,
    def: &NetworkDef,
    transient: bool,
    what: &str,
) -> anyhow::Result<()> {
    let name = &def.name;
    let (st, report) = lifecycle::start_or_repair(&ctx.store, nl, def, transient).await?;
    if !report.cleaned.is_empty() {
        ctx.out.done(format!("Network {name}: cleaned up after an interrupted command: {}", report.cleaned.join("; ")));
    }
    if report.repaired.is_empty() {
        ctx.out.done(format!("Network {name} {what}"));
    } else {
        ctx.out.done(format!("Network {name} repaired (it was degraded: {})", report.repaired.join("; ")));
    }
    if let Some(zone) = &def.bridge.zone {
        eprintln!(
            "kvmctl: note: network '{name}': <bridge zone='{zone}'> is a firewalld zone; kvmctl's firewall is \
             its own nft table (inet {}), so the zone has no effect",
            crate::network::firewall::table_name(name)
        );
    }
    if crate::network::bandwidth::inbound(def).is_some() {
        if let Some(br) = nl.link(&st.bridge).await? {
            if !nl.shaping(br.index).await?.sfq {
                eprintln!(
                    "kvmctl: note: network '{name}': this kernel has no sfq qdisc, so the flows under the inbound \
                     <bandwidth> limit share one first-in first-out queue (the limit itself holds)"
                );
            }
        }
    }
    if let Some(p) = crate::network::bandwidth::outbound(def).filter(|p| p.raised()) {
        eprintln!(
            "kvmctl: note: network '{name}': the outbound <bandwidth> burst ({} bytes) is below one second at \
             its average; nftables' limit holds a second's worth, so the burst is {} bytes",
            p.asked, p.burst
        );
    }
    let taps = crate::domain::runtime::taps_on_network(&ctx.store, name);
    let attached = lifecycle::reattach(nl, &st, &taps).await?;
    if !attached.is_empty() {
        ctx.out.done(format!("Re-attached to bridge {}: {}", st.bridge, attached.join(", ")));
    }
    Ok(())
}

/// Fail with "not found" unless the network is defined, running, or has leftovers.
pub(super) fn known(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    if ctx.store.exists(Kind::Network, name)
        || lifecycle::load_state(&ctx.store, name).is_some()
        || (crate::names::validate("network", name).is_ok() && lifecycle::has_runtime(&ctx.store, name))
    {
        return Ok(());
    }
    crate::names::validate("network", name)?;
    anyhow::bail!("network '{name}' not found")
}

fn undefine(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Network, name)?;
    store.remove(Kind::Network, name)?;
    crate::events::network(&store.paths.run, name, crate::events::What::Undefined, "removed");
    if let Some(mut st) = lifecycle::load_state(store, name) {
        st.transient = true;
        lifecycle::reload_hosts(store, &st)?;
        ctx.out.done(format!("Network {name} has been undefined (it keeps running until net-destroy)"));
    } else {
        ctx.out.done(format!("Network {name} has been undefined"));
    }
    Ok(())
}

async fn view(
    ctx: &Ctx,
    nl: &Netlink,
    name: &str,
    def: Option<NetworkDef>,
    st: Option<NetState>,
) -> anyhow::Result<NetView> {
    let status = if st.is_some() { lifecycle::status(&ctx.store, nl, name).await? } else { Status::Inactive };
    let persistent = def.is_some();
    let shown = st.as_ref().map(|s| s.def.clone()).or(def.clone()).expect("listed networks have a definition");
    Ok(NetView {
        name: name.to_string(),
        uuid: shown.uuid.to_string(),
        status,
        autostart: def.map(|d| d.autostart).unwrap_or(false),
        persistent,
        bridge: st.map(|s| s.bridge).or(shown.bridge.name.clone()),
    })
}

async fn list(ctx: &Ctx, nl: &Netlink, a: NetListArgs) -> anyhow::Result<()> {
    let mut views = Vec::new();
    for (name, def, st) in lifecycle::all(&ctx.store)? {
        let v = view(ctx, nl, &name, def, st).await?;
        if listed(a.all, a.inactive, v.status.is_active()) && a.filter.keeps(v.persistent, v.autostart) {
            views.push(v);
        }
    }
    let field: Option<fn(&NetView) -> &str> = match (a.name, a.uuid) {
        (true, _) => Some(|v| v.name.as_str()),
        (_, true) => Some(|v| v.uuid.as_str()),
        _ => None,
    };
    if ctx.out.short_list(&views, field)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| vec![v.name.clone(), v.status.as_str().into(), yes_no(v.autostart), yes_no(v.persistent)])
        .collect();
    print!("{}", table(&["Name", "State", "Autostart", "Persistent"], &rows));
    for v in &views {
        if let Status::Degraded(p) = &v.status {
            println!(" {}: degraded: {}", v.name, p.join("; "));
        }
    }
    Ok(())
}

async fn info(ctx: &Ctx, nl: &Netlink, name: &str) -> anyhow::Result<()> {
    let def = ctx.store.load::<NetworkDef>(Kind::Network, name).ok();
    let st = lifecycle::load_state(&ctx.store, name);
    if def.is_none() && st.is_none() {
        known(ctx, name)?;
    }
    let v = view(ctx, nl, name, def, st).await?;
    if ctx.out.json {
        return ctx.out.json(&v);
    }
    let mut rows = vec![
        ("Name", v.name.clone()),
        ("UUID", v.uuid.clone()),
        ("Active", yes_no(v.status.is_active())),
        ("Persistent", yes_no(v.persistent)),
        ("Autostart", yes_no(v.autostart)),
        ("Bridge", v.bridge.clone().unwrap_or_default()),
    ];
    if let Status::Degraded(p) = &v.status {
        rows.push(("Problems", p.join("; ")));
    }
    print!("{}", info_block(&rows));
    Ok(())
}

fn edit(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Network, name)?;
    let old: NetworkDef = store.load(Kind::Network, name)?;
    let text = super::editor::edit_text(store, &format!("{name}.xml"), &to_xml(&old), &format!("network '{name}'"))?;
    let new = lifecycle::prepare_as(store, &text, Some(&old))
        .map_err(|e| anyhow::anyhow!("{e}; network '{name}' unchanged"))?;
    if new.name != name {
        anyhow::bail!("net-edit cannot rename network '{name}' to '{}'; network unchanged", new.name);
    }
    if new == old {
        ctx.out.done(format!("Network {name} XML configuration not changed."));
        return Ok(());
    }
    store.save(Kind::Network, name, &new)?;
    crate::events::network(&store.paths.run, name, crate::events::What::Defined, "updated");
    let note = if lifecycle::load_state(store, name).is_some() { " (takes effect at the next net-start)" } else { "" };
    ctx.out.done(format!("Network {name} XML configuration edited{note}."));
    Ok(())
}

fn dhcp_leases(ctx: &Ctx, name: &str, mac: Option<&str>) -> anyhow::Result<()> {
    known(ctx, name)?;
    let Some(st) = lifecycle::load_state(&ctx.store, name) else {
        anyhow::bail!(LifecycleError::Inactive(name.into()))
    };
    let want = mac.map(|m| m.to_lowercase());
    let list: Vec<_> =
        lifecycle::current_leases(&ctx.store, &st).into_iter().filter(|l| want.is_none() || l.mac == want).collect();
    if ctx.out.json {
        return ctx.out.json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            vec![
                leases::format_time(l.expiry),
                l.mac.clone().unwrap_or_else(|| "-".into()),
                if l.ipv6 { "ipv6" } else { "ipv4" }.into(),
                format!("{}/{}", l.ip, l.prefix),
                l.hostname.clone().unwrap_or_else(|| "-".into()),
                l.client_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["Expiry Time", "MAC address", "Protocol", "IP address", "Hostname", "Client ID or DUID"], &rows)
    );
    Ok(())
}

fn net_update(
    ctx: &Ctx,
    name: &str,
    cmd: UpdateCmd,
    section: Section,
    xml: &str,
    live: bool,
    config: bool,
) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Network, name)?;
    known(ctx, name)?;
    let st = lifecycle::load_state(store, name);
    // virsh's --current: the running network when active, else the definition.
    let (live, config) = if !live && !config { (st.is_some(), st.is_none()) } else { (live, config) };
    if live && st.is_none() {
        anyhow::bail!(LifecycleError::Inactive(name.into()));
    }
    let mut new_config = None;
    if config {
        let mut def: NetworkDef = store.load(Kind::Network, name)?;
        update::apply(&mut def, cmd, section, xml)?;
        new_config = Some(def);
    }
    let mut new_state = None;
    if let (true, Some(mut st)) = (live, st) {
        update::apply(&mut st.def, cmd, section, xml)?;
        new_state = Some(st);
    }
    // Both validated: now write.
    if let Some(def) = new_config {
        store.save(Kind::Network, name, &def)?;
    }
    if let Some(st) = new_state {
        lifecycle::reload_hosts(store, &st)?;
    }
    Ok(())
}
