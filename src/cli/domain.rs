//! Domain commands: install (virt-install), and the virsh lifecycle.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{info_block, table, yes_no};
use super::Ctx;
use crate::domain::accel::Accel;
use crate::domain::definition::{DomainDef, Graphics, KernelBoot, NicSource};
use crate::domain::install::{self, Created, InstallOpts};
use crate::domain::libvirt_xml;
use crate::domain::lifecycle::{self, DomainError};
use crate::domain::options::{split_kv, DiskSpec, NetSpec};
use crate::domain::runtime::{self, RunDir, VmState};
use crate::domain::supervisor::Request;
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
    /// Define (or update) a VM from a kvmctl TOML definition.
    Define { file: PathBuf },
    /// Print the VM as libvirt domain XML (common subset).
    Dumpxml { domain: String },
    /// Edit the VM's definition (TOML) in $EDITOR; invalid edits are refused.
    Edit { domain: String },
    /// Start a defined VM.
    Start {
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
        domain: String,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Reboot the guest (ACPI power button, then reset instead of power-off).
    Reboot { domain: String },
    /// Hard reset.
    Reset { domain: String },
    /// Stop the VM at once (quit, then SIGKILL).
    Destroy { domain: String },
    /// Pause the vCPUs.
    Suspend { domain: String },
    /// Resume paused vCPUs.
    Resume { domain: String },
    /// Remove a VM's definition (refused while running).
    Undefine {
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
    Dominfo { domain: String },
    /// Show a VM's state.
    Domstate {
        domain: String,
        #[arg(long)]
        reason: bool,
    },
    /// The VM's addresses (from its networks' DHCP leases; user-mode NICs from QMP).
    Domifaddr { domain: String },
    /// The VM's NICs.
    Domiflist { domain: String },
    /// The VM's disks.
    Domblklist { domain: String },
    /// Start the VM at boot (kvmctl up).
    Autostart {
        domain: String,
        #[arg(long)]
        disable: bool,
    },
    /// Start every autostart pool, network and VM (run at boot by templates/kvmctl.service).
    Up,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Source VM (short form: `clone SRC NEW`).
    #[arg(value_name = "SRC", required_unless_present = "original")]
    src: Option<String>,
    #[arg(value_name = "NEW")]
    new: Option<String>,
    #[arg(long, short = 'o', conflicts_with = "src")]
    original: Option<String>,
    #[arg(long, short = 'n', conflicts_with = "new")]
    name: Option<String>,
    /// Generate the name (`<src>-clone`, `<src>-clone1`, …) and the disk paths.
    #[arg(long)]
    auto_clone: bool,
    /// New disk path, in the order of the writable disks (repeatable).
    #[arg(long, short = 'f')]
    file: Vec<PathBuf>,
    /// New MAC per NIC in order (RANDOM: generated; repeatable).
    #[arg(long, short = 'm')]
    mac: Vec<String>,
    #[arg(long, short = 'u')]
    uuid: Option<uuid::Uuid>,
    /// qcow2 overlays on the source's disks, in constant time; the source is then protected.
    #[arg(long)]
    linked: bool,
    /// Use the source's disk TARGET (vda, sdb…) as it is.
    #[arg(long)]
    skip_copy: Vec<String>,
    /// Do not copy: the --file paths exist and are used as they are.
    #[arg(long, requires = "file")]
    preserve_data: bool,
    /// Allocate the whole copy (raw disks).
    #[arg(long)]
    nonsparse: bool,
    /// Print the new definition; create nothing.
    #[arg(long, alias = "print-xml")]
    print_definition: bool,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    domain: String,
    /// Take the console over from another session (it is told and detached).
    #[arg(long)]
    force: bool,
    /// Watch only: any number of read-only viewers may attach.
    #[arg(long)]
    readonly: bool,
    /// Detach sequence (caret notation), default ^] as virsh.
    #[arg(long, default_value = "^]")]
    escape: String,
    /// With a pipe as stdin: keep printing this many seconds after the input ends.
    #[arg(long, default_value_t = 1.0)]
    timeout: f64,
    /// Print the console log (from the first byte of the last boot); works for stopped VMs.
    #[arg(long)]
    log: bool,
    /// With --log: keep printing as the guest writes.
    #[arg(short, long, requires = "log")]
    follow: bool,
    /// With --log: only the last N lines.
    #[arg(long, requires = "log")]
    tail: Option<usize>,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[arg(long, short = 'n')]
    name: String,
    /// Memory in MiB.
    #[arg(long, alias = "ram")]
    memory: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// qemu CPU model (default: host under KVM, max under TCG).
    #[arg(long)]
    cpu: Option<String>,
    /// path=P | vol=POOL/NAME | pool=P,size=GiB | size=GiB, with format=, bus=, cache=, device=, readonly=, shareable=, backing_store=
    #[arg(long)]
    disk: Vec<DiskSpec>,
    /// network=NAME | bridge=BR | user | none, with model=, mac=
    #[arg(long, short = 'w')]
    network: Vec<NetSpec>,
    /// Boot the first disk as it is.
    #[arg(long)]
    import: bool,
    /// kernel=PATH,initrd=PATH,kernel_args=ARGS (direct kernel boot)
    #[arg(long)]
    boot: Option<String>,
    /// Kernel command line (with --boot kernel=...).
    #[arg(long)]
    extra_args: Option<String>,
    /// none | vnc[,listen=127.0.0.1]
    #[arg(long, default_value = "none")]
    graphics: String,
    /// Recorded in the definition (virt-install's --osinfo/--os-variant).
    #[arg(long, alias = "os-variant")]
    osinfo: Option<String>,
    /// Do not attach to the console (install attaches when run on a terminal).
    #[arg(long)]
    noautoconsole: bool,
    #[arg(long)]
    autostart: bool,
    /// auto | kvm | tcg (auto: KVM only where it really runs).
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// virt-install's --virt-type: kvm or qemu (= tcg).
    #[arg(long, conflicts_with = "accel")]
    virt_type: Option<String>,
    #[arg(long)]
    machine: Option<String>,
    /// Print the definition and the qemu argv; create and start nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run without a persistent definition (gone when it stops).
    #[arg(long)]
    transient: bool,
    /// Install from an ISO: boot it with the disks; after the installer powers off or
    /// reboots, the VM boots from disk (the CD is not in the saved definition).
    #[arg(long, conflicts_with_all = ["import", "location", "pxe"])]
    cdrom: Option<PathBuf>,
    /// PATH[,kernel=K,initrd=I]: an ISO or a tree; its kernel and initrd boot with --extra-args.
    #[arg(long, conflicts_with_all = ["import", "pxe"])]
    location: Option<String>,
    /// Boot from the network first (iPXE), then from disk.
    #[arg(long, conflicts_with = "import")]
    pxe: bool,
    /// A NoCloud seed for the first boot: root-password-generate=on,root-ssh-key=F,user-data=F,meta-data=F,network-config=F
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    cloud_init: Option<String>,
    /// Do not boot the installed system after the install phase.
    #[arg(long)]
    noreboot: bool,
    /// Wait this many minutes for the install phase to end (-1: forever).
    #[arg(long, allow_hyphen_values = true)]
    wait: Option<i64>,
}

/// `--boot`: kernel=,initrd=,kernel_args= (direct kernel boot), uefi, a device order
/// (hd, cdrom, network) and menu=on.
#[derive(Debug, Default, Clone)]
struct BootSpec {
    kernel: Option<KernelBoot>,
    uefi: bool,
    order: Vec<String>,
    menu: bool,
}

fn parse_boot(boot: &str, extra: Option<&str>) -> anyhow::Result<BootSpec> {
    let mut spec = BootSpec::default();
    let mut k = KernelBoot::default();
    let mut any_kernel = false;
    for (key, v) in split_kv(boot) {
        match (key.as_str(), v) {
            ("kernel", Some(v)) => (k.kernel, any_kernel) = (PathBuf::from(v), true),
            ("initrd", Some(v)) => k.initrd = Some(PathBuf::from(v)),
            ("kernel_args" | "cmdline", Some(v)) => k.cmdline = v,
            ("uefi", None) => spec.uefi = true,
            ("hd" | "cdrom" | "network", None) => spec.order.push(key.clone()),
            ("menu", v) => spec.menu = matches!(v.as_deref(), None | Some("on") | Some("yes")),
            (other, _) => bail!("--boot: unknown key '{other}' in '{boot}' (kernel=, initrd=, kernel_args=, uefi, hd, cdrom, network, menu=on)"),
        }
    }
    if any_kernel {
        for p in std::iter::once(&k.kernel).chain(k.initrd.as_ref()) {
            if !p.is_file() {
                bail!("--boot: {} is not a readable file", p.display());
            }
        }
        if let Some(e) = extra {
            k.cmdline = if k.cmdline.is_empty() { e.to_string() } else { format!("{} {e}", k.cmdline) };
        }
        spec.kernel = Some(k);
    } else if k.initrd.is_some() || !k.cmdline.is_empty() {
        bail!("--boot '{boot}': initrd= and kernel_args= need kernel=PATH");
    }
    Ok(spec)
}

fn parse_graphics(g: &str) -> anyhow::Result<Graphics> {
    let items = split_kv(g);
    match items.first().map(|(k, _)| k.as_str()) {
        Some("none") => Ok(Graphics::None),
        Some("vnc") => {
            let listen = items
                .iter()
                .find(|(k, _)| k == "listen")
                .and_then(|(_, v)| v.clone())
                .unwrap_or_else(|| "127.0.0.1".into());
            Ok(Graphics::Vnc { listen })
        }
        _ => bail!("--graphics '{g}': use none or vnc[,listen=ADDR]"),
    }
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
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let def: DomainDef = toml::from_str(&text)
                .with_context(|| format!("{}: not a valid kvmctl domain definition", file.display()))?;
            crate::names::validate("domain", &def.name)?;
            let _l = store.lock(Kind::Domain, &def.name)?;
            store.save(Kind::Domain, &def.name, &def)?;
            out.done(format!("Domain '{}' defined from {}", def.name, file.display()));
        }
        DomCmd::Dumpxml { domain } => print!("{}", libvirt_xml::to_xml(&lifecycle::current_def(store, &domain)?)),
        DomCmd::Edit { domain } => edit(ctx, &domain)?,
        DomCmd::Start { domain, console } => {
            {
                let _l = store.lock(Kind::Domain, &domain)?;
                let def: DomainDef = store.load(Kind::Domain, &domain)?;
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
        DomCmd::Domstate { domain, reason } => {
            let def = lifecycle::current_def(store, &domain)?;
            let (st, why) = runtime::observed(&RunDir::of(store, &def.name));
            if out.json {
                return out.json(&serde_json::json!({"state": st, "reason": why}));
            }
            println!("{}", if reason { format!("{} ({why})", st.as_str()) } else { st.as_str().to_string() });
        }
        DomCmd::Domifaddr { domain } => domifaddr(ctx, &domain)?,
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
    }
    Ok(())
}

fn simple(ctx: &Ctx, name: &str, req: Request, what: &'static str, done: &str) -> anyhow::Result<()> {
    lifecycle::control(&ctx.store, name, req, what)?;
    ctx.out.done(format!("Domain '{name}' {done}"));
    Ok(())
}

fn install_cmd(ctx: &Ctx, a: InstallArgs) -> anyhow::Result<()> {
    let store = &ctx.store;
    let accel = match a.virt_type.as_deref() {
        None => a.accel,
        Some("kvm") => Accel::Kvm,
        Some("qemu") => Accel::Tcg,
        Some(o) => bail!("--virt-type '{o}': use kvm or qemu"),
    };
    let boot = match &a.boot {
        Some(b) => parse_boot(b, a.extra_args.as_deref())?,
        None => BootSpec::default(),
    };
    if a.extra_args.is_some() && boot.kernel.is_none() && a.location.is_none() {
        bail!("--extra-args needs a kernel to pass them to (--location or --boot kernel=...)");
    }
    let kernel = boot.kernel.clone();
    let opts = InstallOpts {
        name: a.name.clone(),
        memory_mib: a.memory,
        vcpus: a.vcpus,
        cpu: a.cpu,
        disks: a.disk,
        networks: a.network,
        import: a.import || a.cdrom.is_some() || a.location.is_some() || a.pxe,
        kernel,
        graphics: parse_graphics(&a.graphics)?,
        os_variant: a.osinfo,
        autostart: a.autostart,
        accel,
        machine: a.machine,
    };
    let src = Sources {
        cdrom: a.cdrom.clone(),
        location: a.location.clone(),
        extra_args: a.extra_args.clone(),
        pxe: a.pxe,
        cloud_init: a.cloud_init.clone(),
        boot,
        noreboot: a.noreboot,
        wait: a.wait,
    };
    if (src.cdrom.is_some() || src.location.is_some() || src.pxe) && opts.disks.is_empty() && !a.dry_run {
        bail!("--cdrom, --location and --pxe install onto a disk: give one with --disk (size=GiB creates it)");
    }
    let mut created = Created::default();
    let r = install_steps(ctx, &opts, &src, a.dry_run, a.transient, &mut created);
    // virt-install's autoconsole: attach when we are on a terminal, unless --noautoconsole.
    let autoconsole =
        !a.noautoconsole && !a.dry_run && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if r.is_ok() && autoconsole {
        return attach(ctx, &opts.name, false, false, "^]", 1.0);
    }
    if r.is_err() {
        created.undo();
        // Only what this command made: its definition and the runtime dir of its failed start.
        if created.definition {
            let _ = store.remove(Kind::Domain, &opts.name);
        }
        if created.started && !RunDir::of(store, &opts.name).alive() {
            let _ = std::fs::remove_dir_all(RunDir::of(store, &opts.name).dir);
        }
    }
    r
}

fn install_steps(
    ctx: &Ctx,
    opts: &InstallOpts,
    src: &Sources,
    dry_run: bool,
    transient: bool,
    created: &mut Created,
) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Domain, &opts.name)?;
    let mut def = install::build(store, opts, dry_run, created)?;
    src.check()?;
    apply_firmware(store, &mut def, &src.boot, dry_run, created)?;
    if dry_run {
        println!("# definition\n{}", toml::to_string_pretty(&def)?);
        let verdict = crate::domain::accel::probe(&store.paths.run);
        let res = crate::domain::accel::resolve(def.accel, &verdict)?;
        let rd = RunDir::of(store, &def.name);
        let fds: Vec<Option<i32>> = def.nics.iter().map(|n| (n.source != NicSource::User).then_some(3)).collect();
        let env = crate::domain::argv::RenderEnv {
            accel: res.accel,
            qmp_socket: &rd.qmp(),
            serial_socket: &rd.console_sock(),
            tap_fds: &fds,
            vhost: crate::domain::tap::vhost_available(),
            vnc_display: 0,
        };
        println!(
            "# qemu argv (tap fds are opened at start)\nqemu-system-x86_64 {}",
            crate::domain::argv::render(&def, &env).join(" ")
        );
        return Ok(());
    }
    if !transient {
        store.create(Kind::Domain, &def.name, &def)?;
        created.definition = true;
    }
    created.started = true;
    let notify = |m: &str| {
        if !ctx.out.quiet {
            eprintln!("{m}");
        }
    };
    let rd = RunDir::of(store, &def.name);
    std::fs::create_dir_all(&rd.dir)?;
    match first_boot(ctx, &def, src, &rd)? {
        None => {
            lifecycle::start(store, &def, transient, &notify)?;
        }
        Some((first, poweroff_stops)) => {
            let phase = lifecycle::Phase { next: &def, noreboot: src.noreboot, poweroff_stops };
            lifecycle::start_phased(store, &first, Some(phase), transient, &notify)?;
            ctx.out.done(format!("Domain '{}' started (install phase; it boots from disk afterwards)", def.name));
            if let Some(minutes) = src.wait {
                wait_install(store, &def.name, minutes)?;
            }
            return Ok(());
        }
    }
    ctx.out.done(format!("Domain '{}' started", def.name));
    Ok(())
}

/// Install sources beyond --import and --boot kernel=.
#[derive(Debug, Default)]
struct Sources {
    cdrom: Option<PathBuf>,
    location: Option<String>,
    extra_args: Option<String>,
    pxe: bool,
    cloud_init: Option<String>,
    boot: BootSpec,
    noreboot: bool,
    wait: Option<i64>,
}

impl Sources {
    /// Checks that need no disk work: readable media, well-formed options.
    fn check(&self) -> anyhow::Result<()> {
        if let Some(iso) = &self.cdrom {
            crate::media::iso9660::Iso::open(iso).map_err(|e| anyhow::anyhow!("--cdrom: {e}"))?;
        }
        if let Some(c) = &self.cloud_init {
            c.parse::<crate::media::nocloud::CloudInitOpts>()?;
        }
        Ok(())
    }
}

/// The first boot of a phased install (the saved definition is the system after it), and
/// whether a guest power-off ends the VM instead of booting the installed system.
fn first_boot(ctx: &Ctx, def: &DomainDef, src: &Sources, rd: &RunDir) -> anyhow::Result<Option<(DomainDef, bool)>> {
    use crate::domain::definition::{Action, DiskBus, DiskDef, DiskDevice};
    let cd = |path: PathBuf| DiskDef {
        path,
        format: "raw".into(),
        bus: DiskBus::Ide,
        device: DiskDevice::Cdrom,
        cache: None,
        readonly: true,
        shareable: true,
        created: false,
    };
    let mut first = def.clone();
    let mut installer = false;
    if let Some(iso) = &src.cdrom {
        first.disks.push(cd(iso.clone()));
        first.boot_order = vec!["cdrom".into(), "hd".into()];
        installer = true;
    }
    if let Some(loc) = &src.location {
        let items = split_kv(loc);
        let path = PathBuf::from(items.first().map(|(k, _)| k.clone()).unwrap_or_default());
        let get = |key: &str| items.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.clone());
        for (k, _) in items.iter().skip(1) {
            if k != "kernel" && k != "initrd" {
                bail!("--location: unknown key '{k}' in '{loc}' (use PATH[,kernel=K,initrd=I])");
            }
        }
        let found = crate::media::location::find_boot_files(&path, get("kernel").as_deref(), get("initrd").as_deref())?;
        let boot_dir = rd.dir.join("boot");
        std::fs::create_dir_all(&boot_dir)?;
        let files = found.extract_to(&boot_dir)?;
        if !ctx.out.quiet {
            eprintln!("Using {} layout: {} + {}", found.layout, found.kernel.describe(), found.initrd.describe());
        }
        first.kernel = Some(KernelBoot {
            kernel: files.kernel,
            initrd: Some(files.initrd),
            cmdline: src.extra_args.clone().unwrap_or_default(),
        });
        if found.is_iso() {
            first.disks.push(cd(path.canonicalize().unwrap_or(path)));
        }
        installer = true;
    }
    if src.pxe {
        first.boot_order = vec!["network".into(), "hd".into()];
        installer = true;
    }
    if let Some(c) = &src.cloud_init {
        let opts: crate::media::nocloud::CloudInitOpts = c.parse()?;
        let (iso, password) = crate::media::nocloud::build_seed(&opts, &def.name, &def.uuid.to_string())?;
        let seed = rd.dir.join("cidata.iso");
        crate::state::runtime_write(&seed, &iso)?;
        first.disks.push(cd(seed));
        if let Some(p) = password {
            // Shown once, never stored.
            println!("Generated root password for '{}': {p}", def.name);
        }
    }
    if first == *def {
        return Ok(None);
    }
    // The installer's reboot ends the first boot too (it must not boot the installer again).
    first.on_reboot = Action::Destroy;
    Ok(Some((first, !installer)))
}

/// virt-install's --wait: until the install phase is over (or the VM stopped).
fn wait_install(store: &crate::state::Store, name: &str, minutes: i64) -> anyhow::Result<()> {
    let rd = RunDir::of(store, name);
    let t0 = std::time::Instant::now();
    while rd.next_boot().exists() && rd.alive() {
        if minutes >= 0 && t0.elapsed() > Duration::from_secs(minutes as u64 * 60) {
            bail!("domain '{name}': the install did not finish within {minutes} minute(s); it keeps running");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `--boot uefi`: OVMF with a per-VM copy of its variable store (removed by undefine --nvram).
fn apply_firmware(
    store: &crate::state::Store,
    def: &mut DomainDef,
    boot: &BootSpec,
    dry_run: bool,
    created: &mut Created,
) -> anyhow::Result<()> {
    if !boot.order.is_empty() {
        def.boot_order = boot.order.clone();
    }
    def.boot_menu = boot.menu;
    if !boot.uefi {
        return Ok(());
    }
    let (code, vars) = (PathBuf::from(OVMF_CODE), PathBuf::from(OVMF_VARS));
    if !code.is_file() || !vars.is_file() {
        bail!("--boot uefi: OVMF not found ({OVMF_CODE}); install Debian's ovmf package");
    }
    let nvram = store.paths.root.join("nvram").join(format!("{}_VARS.fd", def.name));
    if !dry_run {
        std::fs::create_dir_all(nvram.parent().expect("nvram dir"))?;
        std::fs::copy(&vars, &nvram)?;
        created.files.push(nvram.clone());
    }
    def.firmware = crate::domain::definition::Firmware::Uefi { code, nvram };
    Ok(())
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

fn clone_cmd(ctx: &Ctx, a: CloneArgs) -> anyhow::Result<()> {
    use crate::domain::clone::{self, CloneOpts};
    let store = &ctx.store;
    let original = a.original.or(a.src).expect("clap requires a source");
    let name = match a.name.or(a.new) {
        Some(n) => n,
        None if a.auto_clone => (0..)
            .map(|i| if i == 0 { format!("{original}-clone") } else { format!("{original}-clone{i}") })
            .find(|n| !store.exists(Kind::Domain, n))
            .expect("a free name"),
        None => bail!("clone: name the new VM (--name NEW, or `clone SRC NEW`), or pass --auto-clone"),
    };
    let o = CloneOpts {
        original: original.clone(),
        name: name.clone(),
        files: a.file,
        macs: a.mac,
        uuid: a.uuid,
        linked: a.linked,
        skip_copy: a.skip_copy,
        preserve_data: a.preserve_data,
        nonsparse: a.nonsparse,
    };
    let _src = store.lock(Kind::Domain, &original)?;
    let _new = store.lock(Kind::Domain, &name)?;
    let (def, plans) = clone::plan(store, &o)?;
    if a.nonsparse
        && plans.iter().any(|p| p.to.is_some() && p.from.extension().is_some_and(|e| e == "qcow2"))
        && !ctx.out.quiet
    {
        eprintln!("note: --nonsparse allocates raw disks in full; qcow2 disks stay sparse (they allocate by cluster)");
    }
    if a.print_definition {
        print!("{}", toml::to_string_pretty(&def)?);
        return Ok(());
    }
    let bar = std::sync::Mutex::new(ctx.out.progress("clone"));
    clone::execute(store, &o, &def, &plans, &|d, t| (bar.lock().expect("progress"))(d, t))?;
    let how = if a.linked { "linked clone" } else { "clone" };
    ctx.out.done(format!("Domain '{name}' created as a {how} of '{original}'"));
    Ok(())
}

fn attach(ctx: &Ctx, name: &str, force: bool, readonly: bool, escape: &str, linger: f64) -> anyhow::Result<()> {
    let rd = RunDir::of(&ctx.store, name);
    if !rd.alive() {
        bail!(DomainError::NotRunning(name.into()));
    }
    let escape = crate::console::parse_escape(escape).map_err(anyhow::Error::msg)?;
    let o = crate::console::AttachOpts { force, readonly, escape, linger: Duration::from_secs_f64(linger.max(0.0)) };
    crate::console::attach(&rd, name, &o)
}

fn console_cmd(ctx: &Ctx, a: ConsoleArgs) -> anyhow::Result<()> {
    let rd = RunDir::of(&ctx.store, &a.domain);
    if !a.log {
        lifecycle::current_def(&ctx.store, &a.domain)?;
        return attach(ctx, &a.domain, a.force, a.readonly, &a.escape, a.timeout);
    }
    let path = rd.console_log();
    let text = std::fs::read(&path)
        .map_err(|_| anyhow::anyhow!("domain '{}': no console log (it has not run since it was defined)", a.domain))?;
    // The last N lines (a final line without its newline counts too).
    let start = match a.tail {
        Some(n) => {
            let lines: Vec<usize> = text.split_inclusive(|b| *b == b'\n').map(<[u8]>::len).collect();
            lines.iter().rev().skip(n).sum::<usize>()
        }
        None => 0,
    };
    let mut out = std::io::stdout();
    use std::io::Write;
    out.write_all(&text[start..])?;
    out.flush()?;
    if a.follow {
        let mut pos = text.len() as u64;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len < pos {
                pos = 0; // rotated or a new boot
            }
            if len > pos {
                use std::io::{Read, Seek};
                let mut f = std::fs::File::open(&path)?;
                f.seek(std::io::SeekFrom::Start(pos))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                out.write_all(&buf)?;
                out.flush()?;
                pos += buf.len() as u64;
            }
            if !rd.alive() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct DomView {
    id: Option<i32>,
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
            if !names.contains(&n) && RunDir::of(store, &n).alive() {
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
            rd.read_state().and_then(|s| s.qemu_pid)
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
    if ctx.out.json {
        return ctx.out.json(&v);
    }
    if name || uuid {
        v.iter().for_each(|d| println!("{}", if name { &d.name } else { &d.uuid }));
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
    let rows = vec![
        (
            "Id",
            rs.as_ref()
                .and_then(|s| s.qemu_pid)
                .filter(|_| running)
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
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
            vec![iface, ty.into(), src, format!("{:?}", n.model).to_lowercase(), n.mac.clone()]
        })
        .collect();
    if ctx.out.json {
        return ctx.out.json(&def.nics);
    }
    print!("{}", table(&["Interface", "Type", "Source", "Model", "MAC"], &rows));
    Ok(())
}

#[derive(Serialize)]
struct IfAddr {
    name: String,
    mac: String,
    protocol: &'static str,
    address: String,
    source: String,
}

fn domifaddr(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let store = &ctx.store;
    let def = lifecycle::current_def(store, name)?;
    let rd = RunDir::of(store, name);
    if !rd.alive() {
        bail!(DomainError::NotRunning(name.into()));
    }
    let mut taps = rd.read_state().map(|s| s.taps).unwrap_or_default().into_iter();
    let mut rows = Vec::new();
    for (idx, n) in def.nics.iter().enumerate() {
        match &n.source {
            NicSource::Network { network } => {
                let iface = taps.next().unwrap_or_default();
                let Some(st) = crate::network::lifecycle::load_state(store, network) else { continue };
                let file = crate::network::RunFiles::new(&crate::network::lifecycle::run_dir(store, network)).leases;
                let text = std::fs::read_to_string(file).unwrap_or_default();
                let subnets = st.def.subnets();
                let prefix_of = |ip| subnets.iter().find(|s| s.contains(ip)).map(|s| s.prefix).unwrap_or(32);
                for l in crate::network::leases::parse(&text, prefix_of)
                    .into_iter()
                    .filter(|l| l.mac.as_deref() == Some(&n.mac))
                {
                    rows.push(IfAddr {
                        name: iface.clone(),
                        mac: n.mac.clone(),
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
                // qemu's user-mode network (slirp) leases its guest the 15th address of the
                // network QMP reports for the NIC's netdev (`info network`: net=10.0.2.0).
                let args = serde_json::json!({"command-line": "info network"});
                let req = Request::Qmp { command: "human-monitor-command".into(), arguments: args };
                let r = lifecycle::control(store, name, req, "domifaddr")?;
                let text = r.data.as_str().unwrap_or_default().to_string();
                if let Some(ip) = usernet_guest_addr(&text, &format!("net{idx}")) {
                    rows.push(IfAddr {
                        name: "-".into(),
                        mac: n.mac.clone(),
                        protocol: "ipv4",
                        address: format!("{ip}/24"),
                        source: "user-mode DHCP (QMP)".into(),
                    });
                }
            }
        }
    }
    if ctx.out.json {
        return ctx.out.json(&rows);
    }
    let t: Vec<Vec<String>> =
        rows.iter().map(|r| vec![r.name.clone(), r.mac.clone(), r.protocol.into(), r.address.clone()]).collect();
    print!("{}", table(&["Name", "MAC address", "Protocol", "Address"], &t));
    Ok(())
}

/// The guest address slirp leases on netdev `id`, from HMP `info network`'s `net=` (the
/// network address; slirp's DHCP starts at its 15th host address).
fn usernet_guest_addr(text: &str, id: &str) -> Option<std::net::Ipv4Addr> {
    let line = text.lines().find(|l| l.contains(&format!("{id}:")) && l.contains("type=user"))?;
    let net: std::net::Ipv4Addr = line.split(',').find_map(|kv| kv.trim().strip_prefix("net="))?.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(net) + 15))
}

fn undefine(ctx: &Ctx, name: &str, remove_storage: bool, nvram: bool, keep_nvram: bool) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Domain, name)?;
    let def: DomainDef = store.load(Kind::Domain, name)?;
    let rd = RunDir::of(store, name);
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
        refuse_if_linked(store, &def, "delete its disks")?;
        let others: Vec<(String, PathBuf)> =
            crate::domain::disk_users(store).into_iter().filter(|(n, _)| n != name).collect();
        for d in def.disks.iter().filter(|d| !d.readonly) {
            if let Some((o, _)) = others.iter().find(|(_, p)| p == &d.path) {
                eprintln!("warning: keeping {}: also used by domain '{o}'", d.path.display());
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
    let _ = std::fs::remove_dir_all(&rd.dir);
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
    let dir = store.paths.run.join("tmp");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, toml::to_string_pretty(&old)?)?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new(&editor).arg(&path).status();
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    if !status.with_context(|| format!("cannot run editor {editor}"))?.success() {
        bail!("editor {editor} failed; domain '{name}' unchanged");
    }
    let new: DomainDef =
        toml::from_str(&text?).map_err(|e| anyhow::anyhow!("invalid definition, domain '{name}' unchanged: {e}"))?;
    if new.name != name {
        bail!("edit cannot rename domain '{name}' to '{}'; domain unchanged", new.name);
    }
    if new == old {
        ctx.out.done(format!("Domain '{name}' XML configuration not changed."));
        return Ok(());
    }
    store.save(Kind::Domain, name, &new)?;
    ctx.out.done(format!("Domain '{name}' edited (takes effect at the next start)."));
    Ok(())
}

/// A VM whose disks back linked clones must not change (virt-manager issue 443).
fn refuse_if_linked(store: &crate::state::Store, def: &DomainDef, what: &str) -> anyhow::Result<()> {
    let deps = crate::domain::clone::dependents(store, def);
    if !deps.is_empty() {
        bail!(
            "domain '{}' has linked clones ({}): their disks are overlays on its disks; refusing to {what}",
            def.name,
            deps.join(", ")
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
    for (name, def, st) in crate::network::lifecycle::all(store)? {
        let Some(def) = def.filter(|d| d.autostart && st.is_none()) else { continue };
        let _l = store.lock(Kind::Network, &name)?;
        match rt.block_on(crate::network::lifecycle::start(store, &nl, &def, false)) {
            Ok(_) => ctx.out.done(format!("Network {name} started")),
            Err(e) => {
                eprintln!("error: network '{name}': {e}");
                failures += 1;
            }
        }
    }
    drop(nl);
    drop(rt);
    for name in store.list(Kind::Domain)? {
        let Ok(def) = store.load::<DomainDef>(Kind::Domain, &name) else { continue };
        if !def.autostart || RunDir::of(store, &name).alive() {
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
    if failures > 0 {
        bail!("{failures} autostart object(s) failed to start");
    }
    Ok(())
}
