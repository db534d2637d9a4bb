//! Command line: virsh's command names and argument order, one module per command group.

mod clone;
mod console;
mod doctor;
mod domain;
mod domain_info;
mod editor;
mod events;
mod host;
mod iface;
mod image;
mod install;
mod net_attach;
mod network;
mod output;
mod pool;
mod ssh;
pub mod virsh_args;
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
    #[command(flatten)]
    Iface(iface::IfaceCmd),
    /// Stream lifecycle events as they happen (virsh event --all --loop): domains defined,
    /// started, paused, stopped, crashed, ...; networks; DHCP leases. One line each (NDJSON
    /// with --json) until --count, --timeout, Ctrl+C or SIGTERM.
    #[command(alias = "event")]
    Events(events::EventsArgs),
    /// Host shutdown (libvirt-guests): ACPI power-off to every running VM at once, a forced
    /// stop after --timeout seconds; the VMs that ran are recorded and the next `kvmctl up`
    /// starts them again (templates/kvmctl-guests.service runs it at shutdown).
    Down(host::DownArgs),
    /// Cloud images: pull, list, rm, catalog.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Print the shell completion script (commands, options, and the names of VMs, networks,
    /// pools, volumes and images): `source <(kvmctl completion bash)`.
    Completion {
        #[arg(value_parser = ["bash", "zsh", "fish", "elvish", "powershell"])]
        shell: String,
    },
    /// Check what this host can run (virt-host-validate, and more): ok / warn / fail with what to do.
    Doctor,
    /// kvmctl's version and the versions of the programs it runs.
    Version,
    /// Which state root this command uses, as a URI (virsh uri).
    Uri,
    /// The host's CPUs and memory (virsh nodeinfo).
    Nodeinfo,
    /// Log in to a running VM with the system ssh: through its user-mode NIC's forward of port
    /// 22, or at its DHCP lease.
    Ssh(ssh::SshArgs),
    /// What this host's qemu and accelerator can run: machine types, CPU models, devices,
    /// firmware (virsh capabilities / domcapabilities); --json for scripts.
    Capabilities,
    /// Write one man page per command into DIR (`make man`).
    #[command(hide = true, name = "__man")]
    Man { dir: PathBuf },
}

/// virsh nodeinfo's rows, from /proc/cpuinfo and /proc/meminfo.
fn nodeinfo(ctx: &Ctx) -> anyhow::Result<()> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count().max(1);
    let mut sockets: Vec<&str> = cpuinfo
        .lines()
        .filter_map(|l| l.strip_prefix("physical id").map(|v| v.trim_start_matches([' ', '\t', ':'])))
        .collect();
    sockets.sort();
    sockets.dedup();
    let sockets = sockets.len().max(1);
    let cores: usize = field("cpu cores").and_then(|v| v.parse().ok()).unwrap_or(cpus / sockets);
    let siblings: usize = field("siblings").and_then(|v| v.parse().ok()).unwrap_or(cores);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches(" kB").parse().ok()))
        })
        .flatten()
        .unwrap_or(0);
    let numa = std::fs::read_dir("/sys/devices/system/node")
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("node")).count())
        .unwrap_or(1)
        .max(1);
    let mhz = field("cpu MHz")
        .and_then(|v| v.parse::<f64>().ok())
        .map(|m| format!("{} MHz", m.round()))
        .unwrap_or("-".into());
    let rows = [
        (
            "CPU model",
            nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default(),
        ),
        ("CPU model name", field("model name").unwrap_or_default()),
        ("CPU(s)", cpus.to_string()),
        ("CPU frequency", mhz),
        ("CPU socket(s)", sockets.to_string()),
        ("Core(s) per socket", cores.to_string()),
        ("Thread(s) per core", (siblings / cores.max(1)).max(1).to_string()),
        ("NUMA cell(s)", numa.to_string()),
        ("Memory size", format!("{mem_kib} KiB")),
    ];
    if ctx.out.json {
        let m: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone()))).collect();
        return ctx.out.json(&m);
    }
    print!("{}", output::info_block(&rows.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()));
    Ok(())
}

/// The environment variable of the completion callback.
pub const COMPLETE_VAR: &str = "KVMCTL_COMPLETE";

/// The registration script of `shell`, calling `kvmctl` (from PATH) back for every completion.
fn completion(shell: &str) -> anyhow::Result<()> {
    use clap::CommandFactory;
    // SAFETY: single-threaded here (before any runtime or thread starts).
    std::env::set_var(COMPLETE_VAR, shell);
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(COMPLETE_VAR)
        .completer("kvmctl")
        .try_complete(["kvmctl"], None)?;
    Ok(())
}

/// `kvmctl.1` and one `kvmctl-COMMAND.1` per command, for `man -l` or `make install`.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let write = |name: &str, c: clap::Command| -> anyhow::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("kvmctl-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()).bin_name(format!("kvmctl {}", sub.get_name())))?;
        for nested in sub.get_subcommands() {
            let n = format!("kvmctl-{}-{}", sub.get_name(), nested.get_name());
            let bin = format!("kvmctl {} {}", sub.get_name(), nested.get_name());
            write(&n, nested.clone().name(n.clone()).bin_name(bin))?;
        }
    }
    write("kvmctl", cmd)
}

/// Dynamic completion (`source <(kvmctl completion bash)`): the names of defined objects, read
/// from the definition directories of the root in `KVMCTL_ROOT` (or the default one) without
/// taking a lock or creating anything.
fn completion_paths() -> Paths {
    Paths::resolve(std::env::var_os("KVMCTL_ROOT").map(PathBuf::from))
}

fn defined(paths: &Paths, kind: crate::paths::Kind) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(paths.defs_dir(kind))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
        .filter(|n| crate::names::validate(kind.noun(), n).is_ok())
        .collect();
    names.sort();
    names
}

fn candidates(names: Vec<String>) -> Vec<clap_complete::engine::CompletionCandidate> {
    names.into_iter().map(clap_complete::engine::CompletionCandidate::new).collect()
}

pub(crate) fn vm_names() -> clap_complete::engine::ArgValueCandidates {
    clap_complete::engine::ArgValueCandidates::new(|| {
        candidates(defined(&completion_paths(), crate::paths::Kind::Domain))
    })
}
pub(crate) fn network_names() -> clap_complete::engine::ArgValueCandidates {
    clap_complete::engine::ArgValueCandidates::new(|| {
        candidates(defined(&completion_paths(), crate::paths::Kind::Network))
    })
}
pub(crate) fn pool_names() -> clap_complete::engine::ArgValueCandidates {
    clap_complete::engine::ArgValueCandidates::new(|| {
        candidates(defined(&completion_paths(), crate::paths::Kind::Pool))
    })
}
pub(crate) fn image_names() -> clap_complete::engine::ArgValueCandidates {
    clap_complete::engine::ArgValueCandidates::new(|| {
        candidates(defined(&completion_paths(), crate::paths::Kind::Image))
    })
}
/// Volume names: the image files in every defined pool's target directory.
pub(crate) fn volume_names() -> clap_complete::engine::ArgValueCandidates {
    clap_complete::engine::ArgValueCandidates::new(|| {
        let paths = completion_paths();
        let mut names = Vec::new();
        for pool in defined(&paths, crate::paths::Kind::Pool) {
            let Ok(text) = std::fs::read_to_string(paths.def_file(crate::paths::Kind::Pool, &pool)) else { continue };
            let Ok(def) = toml::from_str::<crate::storage::PoolDef>(&text) else { continue };
            for e in std::fs::read_dir(&def.target).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !n.starts_with('.') && e.file_type().is_ok_and(|t| t.is_file()) {
                    names.push(n);
                }
            }
        }
        names.sort();
        names.dedup();
        candidates(names)
    })
}

/// A whole number for an option: one too large for its type says so and names the maximum,
/// instead of Rust's "number too large to fit in target type".
fn whole<T: TryFrom<u64>>(s: &str, max: u64) -> Result<T, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}' is not a whole number"));
    }
    s.parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("'{s}' is too large (at most {max})"))
}

pub(crate) fn whole_u64(s: &str) -> Result<u64, String> {
    whole(s, u64::MAX)
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
    match &cli.command {
        Command::Completion { shell } => return completion(shell),
        Command::Man { dir } => return man_pages(dir),
        _ => {}
    }
    let store = Store::open(Paths::resolve(cli.root))?;
    crate::storage::pool::ensure_defaults(&store)?;
    crate::network::lifecycle::ensure_default(&store)?;
    let ctx = Ctx { store, out: Out { json: cli.json, quiet: cli.quiet } };
    match cli.command {
        Command::Pool(c) => pool::run(c, &ctx),
        Command::Volume(c) => volume::run(c, &ctx),
        Command::Network(c) => network::run(c, &ctx),
        Command::Domain(c) => domain::run(c, &ctx),
        Command::Iface(c) => iface::run(c, &ctx),
        Command::Image(c) => image::run(c, &ctx),
        Command::Events(a) => events::events(a, &ctx),
        Command::Down(a) => host::down(a, &ctx),
        Command::Doctor => doctor::doctor(&ctx),
        Command::Version => {
            println!("kvmctl {}", env!("CARGO_PKG_VERSION"));
            for (what, program) in
                [("Running hypervisor", "qemu-system-x86_64"), ("dnsmasq", "dnsmasq"), ("nftables", "nft")]
            {
                let v = crate::process::run(program, ["--version"], None).ok();
                let line = v.as_ref().and_then(|o| o.stdout.lines().next().map(str::trim)).unwrap_or("not installed");
                println!("{what}: {line}");
            }
            Ok(())
        }
        Command::Uri => {
            let root = &ctx.store.paths.root;
            match root.to_str() {
                Some("/var/lib/kvmctl") => println!("kvmctl:///system"),
                _ => println!("kvmctl://{}", root.display()),
            }
            Ok(())
        }
        Command::Nodeinfo => nodeinfo(&ctx),
        Command::Capabilities => host::capabilities(&ctx),
        Command::Ssh(a) => ssh::ssh(&ctx, a),
        Command::Completion { .. } | Command::Man { .. } => unreachable!("handled before the store is opened"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_too_large_name_the_maximum() {
        assert_eq!(whole_u64("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            whole_u64("184467440737095516150"),
            Err("'184467440737095516150' is too large (at most 18446744073709551615)".into())
        );
    }

    /// Every virsh spelling kvmctl takes parses, named forms included (through the same
    /// rewrite `main` applies); what kvmctl refuses by value is a usage error.
    #[test]
    fn virsh_spellings_parse() {
        let parse = |line: &str| {
            let args = std::iter::once("kvmctl").chain(line.split(' ')).map(std::ffi::OsString::from).collect();
            Cli::try_parse_from(virsh_args::rewrite(args))
        };
        for ok in [
            "list --inactive --persistent --transient --autostart --no-autostart --title",
            "list --state-running --state-paused --state-shutoff --state-other --uuid",
            "start vm --paused --console",
            "start --domain vm --paused",
            "shutdown vm --mode acpi",
            "reboot --domain vm --mode acpi",
            "destroy vm --graceful",
            "undefine vm --storage vda,vdb --wipe-storage --nvram --snapshots-metadata",
            "undefine vm --remove-all-storage --wipe-storage",
            "dumpxml vm --inactive --xpath //disk --wrap",
            "define --file d.xml --validate",
            "net-define --file n.xml --validate",
            "domifaddr vm --source arp --interface vnet0",
            "domifaddr --domain vm --source lease",
            "domblklist vm --details --inactive",
            "net-list --all --persistent --transient --autostart --no-autostart --uuid",
            "pool-list --all --persistent --transient --autostart --no-autostart --uuid --type dir",
            "pool-start --pool p --build",
            "pool-create-as --name p --type dir --target /p --build",
            "pool-create-as p dir - - - - /p",
            "pool-dumpxml --pool p --inactive",
            "pool-edit p",
            "vol-create-as p v.img 1G --allocation 512M --print-xml",
            "vol-info --vol v.img --pool p --bytes",
            "vol-upload --vol v.img --file f --pool p --offset 512 --length 1024",
            "vol-download v.img f --pool p --offset 512 --length 1024",
            "vol-wipe --vol v.img --pool p --algorithm zero",
            "vol-dumpxml --vol v.img --pool p",
            "console vm --safe --devname serial0",
            "desc vm --title --new-desc text",
            "desc --domain vm",
            "domrename --domain vm --new-name vm2",
            "domblkinfo --domain vm --device vda --human",
            "domblkinfo vm --all",
            "domblkstat vm vda --human",
            "dommemstat --domain vm",
            "domstats vm vm2 --state --cpu-total --balloon --vcpu --interface --block",
            "capabilities",
        ] {
            if let Err(e) = parse(ok) {
                panic!("{ok}: {e}");
            }
        }
        for bad in [
            "list --all --inactive",
            "dumpxml vm --wrap",
            "domifaddr vm --source dns",
            "undefine vm --remove-all-storage --storage vda",
            "vol-download v f --format vmdk --offset 1",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
