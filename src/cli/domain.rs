//! Domain commands: the virsh lifecycle; install (virt-install), clone (virt-clone) and console
//! are in their own modules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Serialize;

use super::clone::{clone_cmd, CloneArgs};
use super::console::{attach, console_cmd, ConsoleArgs};
pub(super) use super::domain_info::if_addrs;
use super::domain_info::{
    domblkinfo, domblklist, domblkstat, domifaddr, domiflist, dominfo, dommemstat, domstats, dumpxml, vnc_listen,
    AddrSource, StatGroups,
};
use super::install::{install_cmd, InstallArgs};
use super::output::{table, Filter};
use super::Ctx;
use crate::domain::adopt::{self, Reconciled};
use crate::domain::define;
use crate::domain::definition::DomainDef;
use crate::domain::libvirt_xml;
use crate::domain::lifecycle;
use crate::domain::runtime::{self, RunDir, VmState};
use crate::domain::supervisor::Request;
use crate::inventory::Inventory;
use crate::paths::Kind;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Running and shut-off VMs.
    #[arg(long)]
    all: bool,
    /// Only shut-off VMs.
    #[arg(long, conflicts_with = "all")]
    inactive: bool,
    #[command(flatten)]
    filter: Filter,
    /// Only running VMs (state filters, given, select by state whatever --all says).
    #[arg(long)]
    state_running: bool,
    #[arg(long)]
    state_paused: bool,
    #[arg(long)]
    state_shutoff: bool,
    /// In shutdown, crashed or another state.
    #[arg(long)]
    state_other: bool,
    /// Names only.
    #[arg(long)]
    name: bool,
    /// UUIDs only.
    #[arg(long)]
    uuid: bool,
    /// A Title column.
    #[arg(long)]
    title: bool,
}

#[derive(Debug, Subcommand)]
pub enum DomCmd {
    /// Create a VM and start it (virt-install): --import an existing disk, or --boot kernel=...
    Install(Box<InstallArgs>),
    /// List VMs (running ones unless --all): Id, Name, State.
    List(ListArgs),
    /// Define (or update) a VM from a kvmctl TOML definition or libvirt domain XML.
    Define {
        file: PathBuf,
        /// Accepted for virsh's scripts: every definition is checked strictly (unknown elements,
        /// attributes and keys are refused by name) whether or not it is given.
        #[arg(long)]
        validate: bool,
    },
    /// Print the VM as libvirt domain XML: what runs (domain id, taps, the accelerator and CPU
    /// qemu really got), or the definition with --inactive.
    Dumpxml {
        #[arg(add = super::vm_names())]
        domain: String,
        /// The definition, not what runs.
        #[arg(long)]
        inactive: bool,
        /// Print only what this XPath selects (`//disk/source/@file`, `string(/domain/name)`).
        #[arg(long, value_name = "EXPR")]
        xpath: Option<String>,
        /// With --xpath: wrap the selected nodes in one <nodes> element.
        #[arg(long, requires = "xpath")]
        wrap: bool,
    },
    /// Show or set the VM's description, or with --title its title.
    Desc {
        #[arg(add = super::vm_names())]
        domain: String,
        /// The title rather than the description.
        #[arg(long)]
        title: bool,
        /// The new text (an empty string removes it); without it, print the current one.
        #[arg(long, value_name = "TEXT")]
        new_desc: Option<String>,
        /// The new text, positionally (virsh's `desc VM TEXT`).
        #[arg(conflicts_with = "new_desc")]
        text: Option<String>,
    },
    /// Rename a shut-off VM (its disks keep their paths).
    Domrename {
        #[arg(add = super::vm_names())]
        domain: String,
        new_name: String,
    },
    /// Edit the VM's definition (TOML) in $EDITOR; invalid edits are refused.
    Edit {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// Start a defined VM.
    Start {
        #[arg(add = super::vm_names())]
        domain: String,
        /// Attach to the serial console once it runs.
        #[arg(long)]
        console: bool,
        /// Leave the vCPUs paused (`resume` runs them).
        #[arg(long)]
        paused: bool,
    },
    /// Attach to the serial console (Ctrl+] detaches), or show its log with --log.
    Console(ConsoleArgs),
    /// Clone a shut-off (or paused) VM (virt-clone): `clone SRC NEW` or `--original SRC --name NEW`.
    Clone(CloneArgs),
    /// ACPI power-off; after --timeout seconds, escalate (quit, then SIGKILL).
    Shutdown {
        #[arg(add = super::vm_names())]
        domain: String,
        #[arg(long, default_value_t = 120, value_parser = super::whole_u64)]
        timeout: u64,
        /// How to ask the guest: acpi (the power button).
        #[arg(long, value_name = "MODE")]
        mode: Option<String>,
    },
    /// Reboot the guest (ACPI power button, then reset instead of power-off).
    Reboot {
        #[arg(add = super::vm_names())]
        domain: String,
        /// How to ask the guest: acpi (the power button).
        #[arg(long, value_name = "MODE")]
        mode: Option<String>,
    },
    /// Hard reset.
    Reset {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// Stop the VM at once (quit, then SIGKILL).
    Destroy {
        #[arg(add = super::vm_names())]
        domain: String,
        /// Only ask qemu to quit (it flushes its caches); never SIGKILL it.
        #[arg(long)]
        graceful: bool,
    },
    /// Pause the vCPUs.
    Suspend {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// Resume paused vCPUs.
    Resume {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// Remove a VM's definition (refused while running).
    Undefine {
        #[arg(add = super::vm_names())]
        domain: String,
        /// Also delete the VM's writable disks.
        #[arg(long)]
        remove_all_storage: bool,
        /// Also delete these disks: targets (vda) or paths, comma-separated.
        #[arg(long, value_name = "DISKS", conflicts_with = "remove_all_storage")]
        storage: Option<String>,
        /// Overwrite the deleted disks with zeros first.
        #[arg(long)]
        wipe_storage: bool,
        /// Also remove snapshot metadata (kvmctl keeps none yet: there is nothing to remove).
        #[arg(long)]
        snapshots_metadata: bool,
        /// Also delete the UEFI variable store (NVRAM) of the VM.
        #[arg(long)]
        nvram: bool,
        /// Keep the NVRAM file.
        #[arg(long, conflicts_with = "nvram")]
        keep_nvram: bool,
    },
    /// Capacity, allocation and physical size of a disk (or --all).
    Domblkinfo {
        #[arg(add = super::vm_names())]
        domain: String,
        /// A target (vda) or a disk's path.
        device: Option<String>,
        #[arg(long)]
        all: bool,
        /// Sizes as KiB/MiB/GiB.
        #[arg(long)]
        human: bool,
    },
    /// A running VM's disk I/O counters (one disk, or all summed).
    Domblkstat {
        #[arg(add = super::vm_names())]
        domain: String,
        device: Option<String>,
        /// Descriptive names for the counters.
        #[arg(long)]
        human: bool,
    },
    /// A running VM's memory: balloon size and qemu's resident set (KiB).
    Dommemstat {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// Statistics of VMs (all without names): state, CPU time, balloon, vCPUs, NICs, disks.
    Domstats {
        #[arg(add = super::vm_names())]
        domains: Vec<String>,
        #[command(flatten)]
        groups: StatGroups,
    },
    /// Show a VM's resources and state.
    Dominfo {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// Show a VM's state.
    Domstate {
        #[arg(add = super::vm_names())]
        domain: String,
        #[arg(long)]
        reason: bool,
    },
    /// The VM's addresses (from its networks' DHCP leases; user-mode NICs from QMP).
    Domifaddr {
        #[arg(add = super::vm_names())]
        domain: String,
        /// Only this NIC: its tap name or MAC.
        #[arg(long)]
        interface: Option<String>,
        /// Where to look: lease (DHCP), arp (the host's neighbour table).
        #[arg(long, value_enum, default_value = "lease")]
        source: AddrSource,
    },
    /// The running VM's domain id (`-` when it is not running).
    Domid {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// The VM's UUID.
    Domuuid {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// The name of the VM with this domain id or UUID.
    Domname { id_or_uuid: String },
    /// Where the running VM's VNC display listens: ADDR:DISPLAY.
    Vncdisplay {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// The running VM's display as a URI: vnc://ADDR:PORT.
    Domdisplay {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// The VM's NICs.
    Domiflist {
        #[arg(add = super::vm_names())]
        domain: String,
    },
    /// The VM's disks.
    Domblklist {
        #[arg(add = super::vm_names())]
        domain: String,
        /// Type and device columns too.
        #[arg(long)]
        details: bool,
        /// The definition's disks, not the running ones.
        #[arg(long)]
        inactive: bool,
    },
    /// Start the VM at boot (kvmctl up).
    Autostart {
        #[arg(add = super::vm_names())]
        domain: String,
        #[arg(long)]
        disable: bool,
    },
    /// Start every autostart pool, network and VM, and the VMs `down` recorded at host shutdown
    /// (run at boot by templates/kvmctl.service).
    Up,
    /// Give every VM whose supervisor died a new one: its running qemu is re-adopted (same
    /// pid), a qemu that died meanwhile is recorded as crashed and cleaned up.
    Recover,
}

pub fn run(cmd: DomCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let (store, out) = (&ctx.store, &ctx.out);
    let notify = |m: &str| {
        if !out.quiet {
            eprintln!("{m}");
        }
    };
    match cmd {
        DomCmd::Install(a) => install_cmd(ctx, *a)?,
        DomCmd::List(a) => list(ctx, a)?,
        DomCmd::Define { file, validate: _ } => {
            let text = crate::limits::read_definition(&file)?;
            let not_valid = || file.display().to_string();
            let name = define::parse(&text, None).with_context(not_valid)?.name;
            crate::names::validate("domain", &name)?;
            let _l = store.lock(Kind::Domain, &name)?;
            let previous = define::previous(store, &name);
            let def = define::parse(&text, previous.as_ref()).with_context(not_valid)?;
            define::save(store, &def, previous.as_ref())?;
            out.done(format!("Domain '{}' defined from {}", def.name, file.display()));
        }
        DomCmd::Dumpxml { domain, inactive, xpath, wrap } => dumpxml(ctx, &domain, inactive, xpath.as_deref(), wrap)?,
        DomCmd::Desc { domain, title, new_desc, text } => desc(ctx, &domain, title, new_desc.or(text))?,
        DomCmd::Domrename { domain, new_name } => {
            crate::domain::define::rename(store, &domain, &new_name)?;
            out.done(format!("Domain '{domain}' renamed to '{new_name}'"));
        }
        DomCmd::Edit { domain } => edit(ctx, &domain)?,
        DomCmd::Start { domain, console, paused } => {
            {
                let _l = store.lock(Kind::Domain, &domain)?;
                let def = define::load(store, &domain)?;
                refuse_if_linked(store, &def, "start it for writing")?;
                if paused {
                    lifecycle::start_paused(store, &def, &notify)?;
                } else {
                    lifecycle::start(store, &def, false, &notify)?;
                }
            }
            out.done(format!("Domain '{domain}' started{}", if paused { " (paused)" } else { "" }));
            if console {
                attach(ctx, &domain, false, false, "^]", 1.0)?;
            }
        }
        DomCmd::Console(a) => console_cmd(ctx, a)?,
        DomCmd::Clone(a) => clone_cmd(ctx, a)?,
        DomCmd::Shutdown { domain, timeout, mode } => {
            power_mode(ctx, &domain, mode.as_deref())?;
            let clean = lifecycle::shutdown(store, &domain, Duration::from_secs(timeout))?;
            out.done(if clean {
                format!("Domain '{domain}' is shut down")
            } else {
                format!("Domain '{domain}' did not power off within {timeout}s: destroyed")
            });
        }
        DomCmd::Reboot { domain, mode } => {
            power_mode(ctx, &domain, mode.as_deref())?;
            simple(ctx, &domain, Request::Reboot, "reboot", "is being rebooted")?
        }
        DomCmd::Domblkinfo { domain, device, all, human } => domblkinfo(ctx, &domain, device.as_deref(), all, human)?,
        DomCmd::Domblkstat { domain, device, human } => domblkstat(ctx, &domain, device.as_deref(), human)?,
        DomCmd::Dommemstat { domain } => dommemstat(ctx, &domain)?,
        DomCmd::Domstats { domains, groups } => domstats(ctx, &domains, groups)?,
        DomCmd::Reset { domain } => simple(ctx, &domain, Request::Reset, "reset", "was reset")?,
        DomCmd::Suspend { domain } => simple(ctx, &domain, Request::Suspend, "suspend", "suspended")?,
        DomCmd::Resume { domain } => simple(ctx, &domain, Request::Resume, "resume", "resumed")?,
        DomCmd::Destroy { domain, graceful } => {
            if graceful {
                lifecycle::destroy_graceful(store, &domain)?;
            } else {
                lifecycle::destroy(store, &domain)?;
            }
            out.done(format!("Domain '{domain}' destroyed"));
        }
        DomCmd::Undefine {
            domain,
            remove_all_storage,
            storage,
            wipe_storage,
            snapshots_metadata: _,
            nvram,
            keep_nvram,
        } => {
            let disks = match (remove_all_storage, storage) {
                (true, _) => Storage::All,
                (_, Some(list)) => Storage::These(list.split(',').map(str::to_string).collect()),
                _ => Storage::None,
            };
            undefine(ctx, &domain, disks, wipe_storage, nvram, keep_nvram)?
        }
        DomCmd::Dominfo { domain } => dominfo(ctx, &domain)?,
        DomCmd::Domid { domain } => {
            lifecycle::current_def(&ctx.store, &domain)?;
            let v = views(ctx)?.into_iter().find(|v| v.name == domain);
            println!("{}", v.and_then(|v| v.id).map(|i| i.to_string()).unwrap_or_else(|| "-".into()));
        }
        DomCmd::Domuuid { domain } => println!("{}", lifecycle::current_def(&ctx.store, &domain)?.uuid),
        DomCmd::Domname { id_or_uuid } => {
            let v = views(ctx)?.into_iter().find(|v| {
                v.uuid.eq_ignore_ascii_case(&id_or_uuid) || v.id.is_some_and(|i| i.to_string() == id_or_uuid)
            });
            match v {
                Some(v) => println!("{}", v.name),
                None => bail!("no domain with id or UUID '{id_or_uuid}' (ids belong to running VMs: kvmctl list)"),
            }
        }
        DomCmd::Domstate { domain, reason } => {
            let def = lifecycle::current_def(store, &domain)?;
            let (st, why) = runtime::observed(&RunDir::of(store, &def.name));
            if out.json {
                return out.json(&serde_json::json!({"state": st, "reason": why}));
            }
            println!("{}", if reason { format!("{} ({why})", st.as_str()) } else { st.as_str().to_string() });
        }
        DomCmd::Domifaddr { domain, interface, source } => domifaddr(ctx, &domain, source, interface.as_deref())?,
        DomCmd::Vncdisplay { domain } => println!("{}", vnc_listen(ctx, &domain)?.0),
        DomCmd::Domdisplay { domain } => {
            let (host, display) = vnc_listen(ctx, &domain)?.1;
            println!("vnc://{host}:{}", 5900 + u32::from(display));
        }
        DomCmd::Domiflist { domain } => domiflist(ctx, &domain)?,
        DomCmd::Domblklist { domain, details, inactive } => domblklist(ctx, &domain, details, inactive)?,
        DomCmd::Autostart { domain, disable } => {
            let _l = store.lock(Kind::Domain, &domain)?;
            let mut def: DomainDef = store.load(Kind::Domain, &domain)?;
            def.autostart = !disable;
            store.save(Kind::Domain, &domain, &def)?;
            out.done(if disable {
                format!("Domain '{domain}' unmarked as autostarted")
            } else {
                format!("Domain '{domain}' marked as autostarted")
            });
        }
        DomCmd::Up => up(ctx)?,
        DomCmd::Recover => recover(ctx)?,
    }
    Ok(())
}

/// `recover`: one line per VM it repaired, then a count; a VM it could not repair fails it.
fn recover(ctx: &Ctx) -> anyhow::Result<()> {
    let (mut adopted, mut ended, mut failures) = (0, 0, 0);
    for (name, r) in adopt::recover(&ctx.store)? {
        match r {
            Ok(Reconciled::Adopted { qemu_pid }) => {
                adopted += 1;
                ctx.out.done(format!("Domain '{name}': supervisor replaced, qemu (pid {qemu_pid}) re-adopted"));
            }
            Ok(Reconciled::Ended { state, reason }) => {
                ended += 1;
                ctx.out.done(format!(
                    "Domain '{name}': qemu had exited while unsupervised: {} ({reason}), cleaned up",
                    state.as_str()
                ));
            }
            Ok(Reconciled::Supervised | Reconciled::NotRunning) => {}
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
            }
        }
    }
    ctx.out.done(format!("{adopted} domain(s) re-adopted, {ended} found stopped and cleaned up"));
    if failures > 0 {
        bail!("{failures} domain(s) could not be recovered");
    }
    Ok(())
}

fn simple(ctx: &Ctx, name: &str, req: Request, what: &'static str, done: &str) -> anyhow::Result<()> {
    lifecycle::control(&ctx.store, name, req, what)?;
    ctx.out.done(format!("Domain '{name}' {done}"));
    Ok(())
}

#[derive(Serialize)]
pub(super) struct DomView {
    /// The per-boot domain id (virsh's Id); qemu's pid is in `dominfo`.
    id: Option<u32>,
    pub(super) name: String,
    uuid: String,
    state: VmState,
    reason: String,
    persistent: bool,
    autostart: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
}

pub(super) fn views(ctx: &Ctx) -> anyhow::Result<Vec<DomView>> {
    let store = &ctx.store;
    let mut names = store.list(Kind::Domain)?;
    if let Ok(rd) = std::fs::read_dir(store.paths.run_dir(Kind::Domain)) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if names.contains(&n) {
                continue;
            }
            adopt::ensure_supervised(store, &n);
            if RunDir::of(store, &n).alive() {
                names.push(n);
            }
        }
    }
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let rd = RunDir::of(store, &n);
        let persistent = store.exists(Kind::Domain, &n);
        let Ok(def) = lifecycle::current_def(store, &n) else { continue };
        let (state, reason) =
            if rd.dir.exists() { runtime::observed(&rd) } else { (VmState::Shutoff, "never started".into()) };
        let id = if matches!(state, VmState::Running | VmState::Paused | VmState::Shutdown) {
            rd.read_state().and_then(|s| s.domain_id)
        } else {
            None
        };
        out.push(DomView {
            id,
            name: n,
            uuid: def.uuid.to_string(),
            state,
            reason,
            persistent,
            autostart: def.autostart,
            title: def.title,
        });
    }
    Ok(out)
}

fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<()> {
    let by_state = a.state_running || a.state_paused || a.state_shutoff || a.state_other;
    let v: Vec<DomView> = views(ctx)?
        .into_iter()
        .filter(|v| {
            let shown = if by_state {
                match v.state {
                    VmState::Running => a.state_running,
                    VmState::Paused => a.state_paused,
                    VmState::Shutoff => a.state_shutoff,
                    _ => a.state_other,
                }
            } else {
                super::output::listed(a.all, a.inactive, v.id.is_some())
            };
            shown && a.filter.keeps(v.persistent, v.autostart)
        })
        .collect();
    let field: Option<fn(&DomView) -> &str> = match (a.name, a.uuid) {
        (true, _) => Some(|d| d.name.as_str()),
        (_, true) => Some(|d| d.uuid.as_str()),
        _ => None,
    };
    if ctx.out.short_list(&v, field)? {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|d| {
            let mut r = vec![
                d.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                d.name.clone(),
                d.state.as_str().into(),
            ];
            if a.title {
                r.push(d.title.clone().unwrap_or_default());
            }
            r
        })
        .collect();
    let headers: &[&str] = if a.title { &["Id", "Name", "State", "Title"] } else { &["Id", "Name", "State"] };
    print!("{}", table(headers, &rows));
    Ok(())
}

/// Which disks `undefine` deletes.
enum Storage {
    None,
    All,
    /// Targets (vda) or paths.
    These(Vec<String>),
}

/// `shutdown/reboot --mode`: kvmctl asks through ACPI; the agent is not spoken to yet.
fn power_mode(ctx: &Ctx, name: &str, mode: Option<&str>) -> anyhow::Result<()> {
    for m in mode.unwrap_or("acpi").split(',') {
        match m {
            "acpi" => {}
            "agent" => {
                lifecycle::current_def(&ctx.store, name)?;
                bail!("domain '{name}': --mode agent needs qemu-guest-agent, which kvmctl does not talk to yet; use --mode acpi")
            }
            "initctl" | "signal" | "paravirt" => {
                bail!("--mode {m} is for other hypervisors (LXC, Xen); a qemu guest is asked with --mode acpi")
            }
            other => bail!("--mode '{other}' is not a shutdown mode (acpi)"),
        }
    }
    Ok(())
}

/// `desc VM [--title] [TEXT]`: print, set or (with "") remove the description or title.
fn desc(ctx: &Ctx, name: &str, title: bool, text: Option<String>) -> anyhow::Result<()> {
    let store = &ctx.store;
    let what = if title { "title" } else { "description" };
    let Some(text) = text else {
        let def = lifecycle::current_def(store, name)?;
        let current = if title { def.title } else { def.description };
        match current {
            Some(t) => println!("{t}"),
            None if ctx.out.quiet => {}
            None => println!("No {what} for domain: {name}"),
        }
        return Ok(());
    };
    let _l = store.lock(Kind::Domain, name)?;
    let old: DomainDef = store.load(Kind::Domain, name)?;
    let mut new = old.clone();
    let value = (!text.is_empty()).then_some(text);
    if title {
        new.title = value;
    } else {
        new.description = value;
    }
    define::save(store, &new, Some(&old))?;
    // Metadata only: a running VM shows it at once.
    let rd = RunDir::of(store, name);
    if rd.alive() {
        if let Ok(mut live) = lifecycle::current_def(store, name) {
            (live.title, live.description) = (new.title.clone(), new.description.clone());
            crate::state::runtime_write(&rd.live_def(), toml::to_string_pretty(&live)?.as_bytes())?;
        }
    }
    ctx.out.done(format!("Domain '{name}' {what} updated successfully"));
    Ok(())
}

fn undefine(ctx: &Ctx, name: &str, disks: Storage, wipe: bool, nvram: bool, keep_nvram: bool) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Domain, name)?;
    let def: DomainDef = store.load(Kind::Domain, name)?;
    let rd = RunDir::of(store, name);
    adopt::reconcile_vm(store, name)?;
    if rd.alive() {
        bail!("domain '{name}' is running; destroy or shut it down before undefine");
    }
    let nvram_file = match &def.firmware {
        crate::domain::definition::Firmware::Uefi { nvram: f, .. } if f.exists() => Some(f.clone()),
        _ => None,
    };
    if nvram_file.is_some() && !nvram && !keep_nvram {
        bail!("domain '{name}' has a UEFI variable store (NVRAM); pass --nvram to delete it too, or --keep-nvram");
    }
    let targets = libvirt_xml::target_names(&def);
    let chosen: Vec<&crate::domain::definition::DiskDef> = match &disks {
        Storage::None => Vec::new(),
        Storage::All => def.disks.iter().filter(|d| !d.readonly).collect(),
        Storage::These(list) => {
            let mut v = Vec::new();
            for want in list {
                let found = targets.iter().zip(&def.disks).find(|(t, d)| *t == want || d.path == Path::new(want));
                match found {
                    Some((_, d)) => v.push(d),
                    None => bail!(
                        "domain '{name}' has no disk '{want}' (--storage takes targets or paths: kvmctl domblklist {name}); nothing removed"
                    ),
                }
            }
            v
        }
    };
    if wipe && chosen.is_empty() {
        bail!("--wipe-storage wipes the disks --storage or --remove-all-storage delete: name them");
    }
    let mut removed = Vec::new();
    {
        // Each disk another VM or an overlay needs is kept and named; the rest are removed.
        let inventory = Inventory::read(store);
        for d in chosen {
            let users = inventory.users_of(&d.path, Some(name));
            if !users.is_empty() {
                eprintln!("warning: keeping {}: used by {users}", d.path.display());
                continue;
            }
            if wipe {
                crate::storage::volume::wipe_file(&d.path).with_context(|| format!("wiping {}", d.path.display()))?;
            }
            match std::fs::remove_file(&d.path) {
                Ok(()) => removed.push(d.path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("cannot remove {}: {e}", d.path.display()),
            }
        }
    }
    store.remove(Kind::Domain, name)?;
    crate::events::domain(&store.paths.run, name, crate::events::What::Undefined, "removed");
    let _ = std::fs::remove_dir_all(&rd.dir);
    let _ = std::fs::remove_file(store.paths.vnc_password(name));
    if let (Some(f), true) = (&nvram_file, nvram) {
        std::fs::remove_file(f)?;
        removed.push(f.display().to_string());
    }
    ctx.out.done(format!("Domain '{name}' has been undefined"));
    for r in removed {
        ctx.out.done(format!("Volume '{r}' removed."));
    }
    Ok(())
}

fn edit(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Domain, name)?;
    let old: DomainDef = store.load(Kind::Domain, name)?;
    let text = super::editor::edit_text(
        store,
        &format!("{name}.toml"),
        &toml::to_string_pretty(&old)?,
        &format!("domain '{name}'"),
    )?;
    let new =
        define::parse(&text, Some(&old)).with_context(|| format!("invalid definition, domain '{name}' unchanged"))?;
    if new.name != name {
        bail!("edit cannot rename domain '{name}' to '{}'; domain unchanged", new.name);
    }
    if new == old {
        ctx.out.done(format!("Domain '{name}' XML configuration not changed."));
        return Ok(());
    }
    define::save(store, &new, Some(&old)).with_context(|| format!("domain '{name}' unchanged"))?;
    ctx.out.done(format!("Domain '{name}' edited (takes effect at the next start)."));
    Ok(())
}

/// A VM whose disks back overlays (linked clones, `vol-clone --linked` volumes) must not
/// change them (virt-manager issue 443).
fn refuse_if_linked(store: &crate::state::Store, def: &DomainDef, what: &str) -> anyhow::Result<()> {
    let overlays = Inventory::read(store).overlays_on_disks_of(&def.name);
    if !overlays.is_empty() {
        bail!(
            "domain '{}' has disks that back overlays ({}): they read through its disks; refusing to {what}",
            def.name,
            overlays.join(", ")
        );
    }
    Ok(())
}

/// `up`: autostart networks, then autostart VMs (pools are started by every command).
fn up(ctx: &Ctx) -> anyhow::Result<()> {
    let store = &ctx.store;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let nl = rt.block_on(async { crate::network::netlink::Netlink::connect() })?;
    let mut failures = 0;
    for (name, def, _) in crate::network::lifecycle::all(store)? {
        let Some(def) = def.filter(|d| d.autostart) else { continue };
        let _l = store.lock(Kind::Network, &name)?;
        // Active ones are left alone; inactive ones start, degraded ones are repaired, and
        // running VMs' taps go back onto the bridge either way.
        let status = rt.block_on(crate::network::lifecycle::status(store, &nl, &name));
        if matches!(status, Ok(crate::network::lifecycle::Status::Active)) {
            continue;
        }
        match rt.block_on(super::network::started(ctx, &nl, &def, false, "started")) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("error: network '{name}': {e}");
                failures += 1;
            }
        }
    }
    drop(nl);
    drop(rt);
    // The VMs that ran at host shutdown (`down`) start too, as libvirt-guests' ON_BOOT=start.
    let resume = crate::domain::host::to_resume(store)?;
    for name in store.list(Kind::Domain)? {
        let Ok(def) = define::load(store, &name) else { continue };
        let wanted = def.autostart || resume.contains(&name);
        if wanted {
            adopt::ensure_supervised(store, &name);
        }
        if !wanted || RunDir::of(store, &name).alive() {
            continue;
        }
        let _l = store.lock(Kind::Domain, &name)?;
        if let Err(e) = refuse_if_linked(store, &def, "start it for writing") {
            eprintln!("error: {e}");
            failures += 1;
            continue;
        }
        match lifecycle::start(store, &def, false, &|m| eprintln!("{m}")) {
            Ok(_) => ctx.out.done(format!("Domain '{name}' started")),
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
            }
        }
    }
    crate::domain::host::settle(store)?;
    if failures > 0 {
        bail!("{failures} autostart object(s) failed to start");
    }
    Ok(())
}
