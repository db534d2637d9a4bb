//! Command line: virsh's command names and argument order, one module per command group.

mod clone;
mod console;
mod domain;
mod editor;
mod install;
mod network;
mod output;
mod pool;
mod volume;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::paths::Paths;
use crate::state::Store;

pub use output::Out;

#[derive(Debug, Parser)]
#[command(
    name = "kvmctl",
    version,
    about = "VMs, networks, pools and volumes: virsh, virt-install and virt-clone in one daemonless binary"
)]
pub struct Cli {
    /// State directory (definitions, images; runtime state under DIR/run).
    /// Default: /var/lib/kvmctl + /run/kvmctl as root, XDG dirs otherwise.
    #[arg(long, global = true, env = "KVMCTL_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Machine-readable JSON output for list and info commands.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors and requested data.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More logging (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Pool(pool::PoolCmd),
    #[command(flatten)]
    Volume(volume::VolCmd),
    #[command(flatten)]
    Network(network::NetCmd),
    #[command(flatten)]
    Domain(domain::DomCmd),
}

/// What every command gets: the store and the output settings.
pub struct Ctx {
    pub store: Store,
    pub out: Out,
}

pub fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KVMCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let store = Store::open(Paths::resolve(cli.root))?;
    crate::storage::pool::ensure_defaults(&store)?;
    crate::network::lifecycle::ensure_default(&store)?;
    let ctx = Ctx { store, out: Out { json: cli.json, quiet: cli.quiet } };
    match cli.command {
        Command::Pool(c) => pool::run(c, &ctx),
        Command::Volume(c) => volume::run(c, &ctx),
        Command::Network(c) => network::run(c, &ctx),
        Command::Domain(c) => domain::run(c, &ctx),
    }
}
