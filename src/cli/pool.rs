//! pool-* commands.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{info_block, listed, table, yes_no, Filter};
use super::Ctx;
use crate::size::human;
use crate::storage::pool::{self, fs_usage, FsUsage};
use crate::storage::{PoolDef, PoolState};

// Variant names become the virsh command names (PoolDefineAs -> pool-define-as).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Define a directory pool: pool-define-as NAME dir --target PATH.
    PoolDefineAs {
        name: String,
        /// Pool type; kvmctl has directory pools.
        #[arg(value_name = "TYPE")]
        kind: String,
        #[arg(long)]
        target: PathBuf,
    },
    /// Create a transient directory pool and start it (gone at pool-destroy or reboot):
    /// pool-create-as NAME dir --target PATH [--build].
    PoolCreateAs {
        name: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        #[arg(long)]
        target: PathBuf,
        /// Create the target directory first.
        #[arg(long)]
        build: bool,
    },
    /// Print the pool as libvirt pool XML.
    PoolDumpxml {
        #[arg(add = super::pool_names())]
        pool: String,
        /// Accepted for virsh's scripts: a directory pool's XML is the same either way.
        #[arg(long)]
        inactive: bool,
    },
    /// Edit the pool's definition (TOML) in $EDITOR; invalid edits are refused.
    PoolEdit {
        #[arg(add = super::pool_names())]
        pool: String,
    },
    /// Create the pool's target directory.
    PoolBuild {
        #[arg(add = super::pool_names())]
        pool: String,
    },
    /// Start (activate) a pool.
    PoolStart {
        #[arg(add = super::pool_names())]
        pool: String,
        /// Create the target directory first (pool-build).
        #[arg(long)]
        build: bool,
    },
    /// Stop (deactivate) a pool; its files stay.
    PoolDestroy {
        #[arg(add = super::pool_names())]
        pool: String,
    },
    /// Remove an inactive pool's definition; its files stay.
    PoolUndefine {
        #[arg(add = super::pool_names())]
        pool: String,
    },
    /// Start the pool automatically at boot (kvmctl up).
    PoolAutostart {
        #[arg(add = super::pool_names())]
        pool: String,
        #[arg(long)]
        disable: bool,
    },
    /// List pools (active ones unless --all).
    PoolList(PoolListArgs),
    /// Show a pool's state and space.
    PoolInfo {
        #[arg(add = super::pool_names())]
        pool: String,
    },
    /// Re-read a pool's directory.
    PoolRefresh {
        #[arg(add = super::pool_names())]
        pool: String,
    },
}

#[derive(Debug, Args)]
pub struct PoolListArgs {
    /// Include inactive pools.
    #[arg(long)]
    all: bool,
    /// Only inactive pools.
    #[arg(long, conflicts_with = "all")]
    inactive: bool,
    /// Persistent, capacity, allocation and available columns.
    #[arg(long)]
    details: bool,
    /// Names only.
    #[arg(long)]
    name: bool,
    /// UUIDs only.
    #[arg(long)]
    uuid: bool,
    #[command(flatten)]
    filter: Filter,
    /// Only pools of these types (comma-separated): kvmctl has dir pools.
    #[arg(long, value_name = "TYPES")]
    r#type: Option<String>,
}

#[derive(Serialize)]
struct PoolView {
    name: String,
    uuid: String,
    #[serde(rename = "type")]
    kind: String,
    target: PathBuf,
    state: PoolState,
    autostart: bool,
    persistent: bool,
    #[serde(flatten)]
    usage: Option<FsUsage>,
}

fn view(ctx: &Ctx, def: PoolDef) -> PoolView {
    let state = pool::state(&ctx.store, &def);
    let usage = if state == PoolState::Active { fs_usage(&def.target) } else { None };
    PoolView {
        name: def.name,
        uuid: def.uuid.to_string(),
        kind: def.kind,
        target: def.target,
        state,
        autostart: def.autostart,
        persistent: !def.transient,
        usage,
    }
}

pub fn run(cmd: PoolCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let store = &ctx.store;
    let out = &ctx.out;
    match cmd {
        PoolCmd::PoolDefineAs { name, kind, target } => {
            pool::define_as(store, &name, &kind, &target)?;
            out.done(format!("Pool {name} defined"));
        }
        PoolCmd::PoolBuild { pool } => {
            let def = pool::build(store, &pool)?;
            out.done(format!("Pool {pool} built ({})", def.target.display()));
        }
        PoolCmd::PoolStart { pool, build } => {
            if build {
                pool::build(store, &pool)?;
            }
            pool::start(store, &pool)?;
            out.done(format!("Pool {pool} started"));
        }
        PoolCmd::PoolCreateAs { name, kind, target, build } => {
            pool::create_as(store, &name, &kind, &target, build)?;
            out.done(format!("Pool {name} created"));
        }
        PoolCmd::PoolDumpxml { pool, inactive: _ } => {
            let def = pool::load(store, &pool)?;
            let state = pool::state(store, &def);
            let usage = fs_usage(&def.target);
            print!("{}", crate::storage::libvirt_xml::pool_xml(&def, state, usage));
        }
        PoolCmd::PoolEdit { pool } => edit(ctx, &pool)?,
        PoolCmd::PoolDestroy { pool } => {
            pool::destroy(store, &pool)?;
            out.done(format!("Pool {pool} destroyed"));
        }
        PoolCmd::PoolUndefine { pool } => {
            pool::undefine(store, &pool)?;
            out.done(format!("Pool {pool} has been undefined"));
        }
        PoolCmd::PoolAutostart { pool, disable } => {
            pool::set_autostart(store, &pool, !disable)?;
            out.done(if disable {
                format!("Pool {pool} unmarked as autostarted")
            } else {
                format!("Pool {pool} marked as autostarted")
            });
        }
        PoolCmd::PoolList(a) => list(ctx, a)?,
        PoolCmd::PoolInfo { pool } => {
            let v = view(ctx, pool::load(store, &pool)?);
            if out.json {
                return out.json(&v);
            }
            let u = v.usage.unwrap_or_default();
            let mut rows = vec![
                ("Name", v.name.clone()),
                ("UUID", v.uuid.clone()),
                ("Type", v.kind.clone()),
                ("Target", v.target.display().to_string()),
                ("State", if v.state == PoolState::Active { "running".into() } else { v.state.as_str().into() }),
                ("Persistent", yes_no(v.persistent)),
                ("Autostart", yes_no(v.autostart)),
            ];
            if v.usage.is_some() {
                rows.push(("Capacity", human(u.capacity)));
                rows.push(("Allocation", human(u.allocation)));
                rows.push(("Available", human(u.available)));
            }
            print!("{}", info_block(&rows));
        }
        PoolCmd::PoolRefresh { pool } => {
            let def = pool::load(store, &pool)?;
            if pool::state(store, &def) == PoolState::Active {
                for p in crate::state::interrupt::sweep_stale(&def.target) {
                    out.done(format!("Removed {} (a temp file of an interrupted copy)", p.display()));
                }
            }
            let n = crate::storage::volume::list(store, &pool)?.len();
            out.done(format!("Pool {pool} refreshed ({n} volumes)"));
        }
    }
    Ok(())
}

fn list(ctx: &Ctx, a: PoolListArgs) -> anyhow::Result<()> {
    let mut views = Vec::new();
    for entry in pool::list(&ctx.store)? {
        match entry {
            Ok(def) => views.push(view(ctx, def)),
            Err(b) => eprintln!("warning: pool '{}': {}", b.name, b.error),
        }
    }
    if let Some(types) = &a.r#type {
        if let Some(t) = types.split(',').find(|t| *t != "dir") {
            anyhow::bail!("pool type '{t}' is not one kvmctl has (dir)");
        }
    }
    views.retain(|v| {
        listed(a.all, a.inactive, v.state != PoolState::Inactive) && a.filter.keeps(v.persistent, v.autostart)
    });
    let field: Option<fn(&PoolView) -> &str> = match (a.name, a.uuid) {
        (true, _) => Some(|v| v.name.as_str()),
        (_, true) => Some(|v| v.uuid.as_str()),
        _ => None,
    };
    if ctx.out.short_list(&views, field)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let mut r = vec![v.name.clone(), v.state.as_str().into(), yes_no(v.autostart)];
            if a.details {
                let u = v.usage;
                let sz = |f: fn(&FsUsage) -> u64| u.as_ref().map(|u| human(f(u))).unwrap_or_else(|| "-".into());
                r.extend([yes_no(v.persistent), sz(|u| u.capacity), sz(|u| u.allocation), sz(|u| u.available)]);
            }
            r
        })
        .collect();
    let headers: &[&str] = if a.details {
        &["Name", "State", "Autostart", "Persistent", "Capacity", "Allocation", "Available"]
    } else {
        &["Name", "State", "Autostart"]
    };
    print!("{}", table(headers, &rows));
    Ok(())
}

fn edit(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let store = &ctx.store;
    let _l = store.lock(crate::paths::Kind::Pool, name)?;
    let old = pool::load(store, name)?;
    let text = super::editor::edit_text(
        store,
        &format!("{name}.toml"),
        &toml::to_string_pretty(&old)?,
        &format!("pool '{name}'"),
    )?;
    let new: PoolDef = toml::from_str(&text).with_context(|| format!("invalid definition, pool '{name}' unchanged"))?;
    if new == old {
        ctx.out.done(format!("Pool {name} XML configuration not changed."));
        return Ok(());
    }
    pool::redefine(store, &old, &new)?;
    ctx.out.done(format!("Pool {name} XML configuration edited."));
    Ok(())
}
