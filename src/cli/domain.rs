//! Domain commands: the virsh lifecycle; install (virt-install), clone (virt-clone) and console
//! are in their own modules.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Serialize;

use super::clone::{clone_cmd, CloneArgs};
use super::console::{attach, console_cmd, ConsoleArgs};
use super::install::{install_cmd, InstallArgs};
use super::output::{info_block, table, yes_no};
use super::Ctx;
use crate::domain::adopt::{self, Reconciled};
use crate::domain::define;
use crate::domain::definition::{DomainDef, NicSource};
use crate::domain::libvirt_xml;
use crate::domain::lifecycle::{self, DomainError};
use crate::domain::runtime::{self, RunDir, VmState};
use crate::domain::supervisor::{Request, UsernetAddr};
use crate::inventory::Inventory;
use crate::paths::Kind;

#[derive(Debug, Subcommand)]
pub enum DomCmd {
    /// Create a VM and start it (virt-install): --import an existing disk, or --boot kernel=...
    Install(Box<InstallArgs>),
    /// List VMs (running ones unless --all): Id, Name, State.
    List {
        #[arg(long)]
        all: bool,
        /// Names only.
        #[arg(long)]
        name: bool,
        /// UUIDs only.
        #[arg(long)]
        uuid: bool,
    },
    /// Define (or update) a VM from a kvmctl TOML definition or libvirt domain XML.
    Define { file: PathBuf },
    /// Print the VM as libvirt domain XML (common subset).
    Dumpxml {
        #[arg(add = super::vm_names())]
        domain: String,
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
    },
    /// Reboot the guest (ACPI power button, then reset instead of power-off).
    Reboot {
        #[arg(add = super::vm_names())]
        domain: String,
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
        /// Also delete the UEFI variable store (NVRAM) of the VM.
        #[arg(long)]
        nvram: bool,
        /// Keep the NVRAM file.
        #[arg(long, conflicts_with = "nvram")]
        keep_nvram: bool,
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
        DomCmd::List { all, name, uuid } => list(ctx, all, name, uuid)?,
        DomCmd::Define { file } => {
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
        DomCmd::Dumpxml { domain } => print!("{}", libvirt_xml::to_xml(&lifecycle::current_def(store, &domain)?)),
        DomCmd::Edit { domain } => edit(ctx, &domain)?,
        DomCmd::Start { domain, console } => {
            {
                let _l = store.lock(Kind::Domain, &domain)?;
                let def = define::load(store, &domain)?;
                refuse_if_linked(store, &def, "start it for writing")?;
                lifecycle::start(store, &def, false, &notify)?;
            }
            out.done(format!("Domain '{domain}' started"));
            if console {
                attach(ctx, &domain, false, false, "^]", 1.0)?;
            }
        }
        DomCmd::Console(a) => console_cmd(ctx, a)?,
        DomCmd::Clone(a) => clone_cmd(ctx, a)?,
        DomCmd::Shutdown { domain, timeout } => {
            let clean = lifecycle::shutdown(store, &domain, Duration::from_secs(timeout))?;
            out.done(if clean {
                format!("Domain '{domain}' is shut down")
            } else {
                format!("Domain '{domain}' did not power off within {timeout}s: destroyed")
            });
        }
        DomCmd::Reboot { domain } => simple(ctx, &domain, Request::Reboot, "reboot", "is being rebooted")?,
        DomCmd::Reset { domain } => simple(ctx, &domain, Request::Reset, "reset", "was reset")?,
        DomCmd::Suspend { domain } => simple(ctx, &domain, Request::Suspend, "suspend", "suspended")?,
        DomCmd::Resume { domain } => simple(ctx, &domain, Request::Resume, "resume", "resumed")?,
        DomCmd::Destroy { domain } => {
            lifecycle::destroy(store, &domain)?;
            out.done(format!("Domain '{domain}' destroyed"));
        }
        DomCmd::Undefine { domain, remove_all_storage, nvram, keep_nvram } => {
            undefine(ctx, &domain, remove_all_storage, nvram, keep_nvram)?
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
        DomCmd::Domifaddr { domain } => domifaddr(ctx, &domain)?,
        DomCmd::Vncdisplay { domain } => println!("{}", vnc_listen(ctx, &domain)?.0),
        DomCmd::Domdisplay { domain } => {
            let (host, display) = vnc_listen(ctx, &domain)?.1;
            println!("vnc://{host}:{}", 5900 + u32::from(display));
        }
        DomCmd::Domiflist { domain } => domiflist(ctx, &domain)?,
        DomCmd::Domblklist { domain } => {
            let def = lifecycle::current_def(store, &domain)?;
            let rows: Vec<Vec<String>> = libvirt_xml::target_names(&def)
                .into_iter()
                .zip(&def.disks)
                .map(|(t, d)| vec![t, d.path.display().to_string()])
                .collect();
            if out.json {
                return out.json(&def.disks);
            }
            print!("{}", table(&["Target", "Source"], &rows));
        }
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
struct DomView {
    /// The per-boot domain id (virsh's Id); qemu's pid is in `dominfo`.
    id: Option<u32>,
    name: String,
    uuid: String,
    state: VmState,
    reason: String,
    persistent: bool,
    autostart: bool,
}

fn views(ctx: &Ctx) -> anyhow::Result<Vec<DomView>> {
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
        });
    }
    Ok(out)
}

fn list(ctx: &Ctx, all: bool, name: bool, uuid: bool) -> anyhow::Result<()> {
    let v: Vec<DomView> = views(ctx)?.into_iter().filter(|v| all || v.id.is_some()).collect();
    let field: Option<fn(&DomView) -> &str> = match (name, uuid) {
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
            vec![d.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()), d.name.clone(), d.state.as_str().into()]
        })
        .collect();
    print!("{}", table(&["Id", "Name", "State"], &rows));
    Ok(())
}

fn dominfo(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    let rd = RunDir::of(&ctx.store, name);
    let (state, reason) = runtime::observed(&rd);
    let rs = rd.read_state();
    if ctx.out.json {
        return ctx.out.json(&serde_json::json!({"definition": def, "state": state, "reason": reason, "runtime": rs}));
    }
    let running = matches!(state, VmState::Running | VmState::Paused | VmState::Shutdown);
    // The domain id and qemu's pid, while it runs.
    let live = |n: Option<i64>| n.filter(|_| running).map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let rows = vec![
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
    print!("{}", info_block(&rows));
    Ok(())
}

fn domiflist(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    let rd = RunDir::of(&ctx.store, name);
    let mut taps = if rd.alive() {
        rd.read_state().map(|s| s.taps).unwrap_or_default().into_iter()
    } else {
        Vec::new().into_iter()
    };
    let rows: Vec<Vec<String>> = def
        .nics
        .iter()
        .map(|n| {
            let (ty, src) = match &n.source {
                NicSource::Network { network } => ("network", network.clone()),
                NicSource::Bridge { bridge } => ("bridge", bridge.clone()),
                NicSource::User => ("user", "-".into()),
            };
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
fn vnc_listen(ctx: &Ctx, name: &str) -> anyhow::Result<(String, (String, u16))> {
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

fn domifaddr(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let rows = if_addrs(ctx, name)?;
    if ctx.out.json {
        return ctx.out.json(&rows);
    }
    let t: Vec<Vec<String>> =
        rows.iter().map(|r| vec![r.name.clone(), r.mac.clone(), r.protocol.into(), r.address.clone()]).collect();
    print!("{}", table(&["Name", "MAC address", "Protocol", "Address"], &t));
    Ok(())
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
                        protocol: "ipv4",
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

fn undefine(ctx: &Ctx, name: &str, remove_storage: bool, nvram: bool, keep_nvram: bool) -> anyhow::Result<()> {
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
    let mut removed = Vec::new();
    if remove_storage {
        // Each disk another VM or an overlay needs is kept and named; the rest are removed.
        let inventory = Inventory::read(store);
        for d in def.disks.iter().filter(|d| !d.readonly) {
            let users = inventory.users_of(&d.path, Some(name));
            if !users.is_empty() {
                eprintln!("warning: keeping {}: used by {users}", d.path.display());
                continue;
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
