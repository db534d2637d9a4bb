//! iface-* commands: a host interface onto a bridge and back (virsh iface-bridge,
//! iface-unbridge, iface-list).

use clap::Subcommand;

use super::output::table;
use super::Ctx;
use crate::network::iface::{self, IfaceRecord, Phase};
use crate::network::netlink::Netlink;

// Variant names become the virsh command names (IfaceBridge -> iface-bridge).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum IfaceCmd {
    /// Create BRIDGE and move INTERFACE's addresses and routes onto it, INTERFACE becoming its
    /// port (brctl addbr + addif + moving the address); recorded for iface-unbridge.
    IfaceBridge {
        interface: String,
        bridge: String,
        /// Spanning tree off (on by default, as virsh).
        #[arg(long)]
        no_stp: bool,
        /// Forward delay in seconds (with STP on the kernel makes it at least 2).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=30))]
        delay: u32,
    },
    /// Undo iface-bridge: the interface gets its addresses, routes, MTU and up/down state
    /// back, and the bridge is deleted.
    IfaceUnbridge { bridge: String },
    /// List host interfaces with their state, MAC, master and addresses (up ones unless --all).
    IfaceList {
        #[arg(long)]
        all: bool,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn run(cmd: IfaceCmd, ctx: &Ctx) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let nl = Netlink::connect()?;
        dispatch(cmd, ctx, &nl).await
    })
}

fn moved(rec: &IfaceRecord) -> String {
    let mut parts: Vec<String> = rec.addresses.iter().map(|a| a.text.clone()).collect();
    parts.extend(rec.routes.iter().map(|r| format!("route {}", r.text)));
    parts.join(", ")
}

async fn dispatch(cmd: IfaceCmd, ctx: &Ctx, nl: &Netlink) -> anyhow::Result<()> {
    let (store, out) = (&ctx.store, &ctx.out);
    match cmd {
        IfaceCmd::IfaceBridge { interface, bridge, no_stp, delay } => {
            iface::check_name(&interface)?;
            iface::check_name(&bridge)?;
            let _l = iface::lock(&store.paths)?;
            for r in iface::repair_all(store, nl).await? {
                out.done(r.message);
            }
            let rec = iface::bridge(store, nl, &interface, &bridge, !no_stp, delay).await?;
            out.done(format!("Created bridge {bridge} with attached device {interface}"));
            out.done(format!("Moved onto {bridge}: {}", moved(&rec)));
            out.done(format!(
                "Bridge interface {bridge} started (STP {}, forward delay {delay} s)",
                if rec.stp { "on" } else { "off" }
            ));
        }
        IfaceCmd::IfaceUnbridge { bridge } => {
            iface::check_name(&bridge)?;
            let _l = iface::lock(&store.paths)?;
            let repaired = iface::repair_all(store, nl).await?;
            let mine = repaired.iter().any(|r| r.bridge == bridge);
            for r in repaired {
                out.done(r.message);
            }
            if mine {
                return Ok(());
            }
            let rec = iface::unbridge(store, nl, &bridge).await?;
            out.done(format!("Device {} un-attached from bridge {bridge}, bridge deleted", rec.interface));
            out.done(format!("Back on {}: {}", rec.interface, moved(&rec)));
        }
        IfaceCmd::IfaceList { all } => {
            let mut views = iface::list(&store.paths, nl).await?;
            views.retain(|v| all || v.state == "up");
            if out.json {
                return out.json(&views);
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let master = v.master.clone().unwrap_or_else(|| "-".into());
                    let note = match (&v.bridged_interface, v.phase) {
                        (Some(i), Some(Phase::Bridged)) => format!("   (iface-bridge of {i})"),
                        (Some(i), _) => format!(
                            "   (interrupted iface command on {i}: the next iface-bridge or iface-unbridge puts it back)"
                        ),
                        _ => String::new(),
                    };
                    vec![v.name.clone(), v.state.into(), v.mac.clone(), master, v.addresses.join(" ") + &note]
                })
                .collect();
            print!("{}", table(&["Name", "State", "MAC Address", "Master", "Addresses"], &rows));
        }
    }
    Ok(())
}
