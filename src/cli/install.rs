//! `install` (virt-install).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::console::attach;
use super::Ctx;
use crate::domain::accel::Accel;
use crate::domain::definition::{CpuModel, DomainDef, Graphics, KernelBoot, MachineType, NicSource};
use crate::domain::install::{self, InstallOpts};
use crate::domain::install_spec::{AutoConsole, CheckSpec, Checks, ConsoleSpec, MemorySpec, VcpuSpec};
use crate::domain::lifecycle;
use crate::domain::options::{split_kv, DiskSpec, NetSpec};
use crate::domain::runtime::RunDir;
use crate::paths::Kind;
use crate::state::{Revert, Undo};

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[arg(long, short = 'n')]
    name: String,
    /// MiB, or memory=N[,currentMemory=N][,maxmemory=N,maxMemory.slots=N] (MiB).
    #[arg(long, short = 'r', alias = "ram", value_parser = MemorySpec::from_str)]
    memory: MemorySpec,
    /// N, or N[,maxvcpus=M][,sockets=S,cores=C,threads=T] (default 1).
    #[arg(long, value_parser = VcpuSpec::from_str)]
    vcpus: Option<VcpuSpec>,
    /// qemu CPU model, one of `qemu-system-x86_64 -cpu help` (default: host under KVM, max under TCG).
    #[arg(long)]
    cpu: Option<CpuModel>,
    /// path=P | vol=POOL/NAME | pool=P,size=GiB | size=GiB, with format=, bus=, cache=, device=, readonly=, shareable=, backing_store=
    #[arg(long)]
    disk: Vec<DiskSpec>,
    /// network=NAME | bridge=BR | user | none, with model=, mac=
    #[arg(long, short = 'w')]
    network: Vec<NetSpec>,
    /// Boot the first disk as it is.
    #[arg(long)]
    import: bool,
    /// kernel=PATH,initrd=PATH,kernel_args=ARGS (direct kernel boot), uefi or firmware=efi,
    /// a device order (hd, cdrom, network), menu=on
    #[arg(long)]
    boot: Option<String>,
    /// Kernel command line (with --location or --boot kernel=...).
    #[arg(long, short = 'x')]
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
    /// text: attach to the serial console once the VM runs; none: return at once (default:
    /// text when run on a terminal).
    #[arg(long, conflicts_with = "noautoconsole", value_parser = AutoConsole::from_str)]
    autoconsole: Option<AutoConsole>,
    /// The serial console: pty (default; `kvmctl console` attaches), or file,path=FILE (its
    /// output also copied to FILE, 0600).
    #[arg(long, value_parser = console_spec)]
    console: Vec<ConsoleSpec>,
    /// Same as --console (the guest has one serial console).
    #[arg(long, value_parser = serial_spec)]
    serial: Vec<ConsoleSpec>,
    /// The VM's UUID (default: a random one); refused if another VM has it.
    #[arg(long, short = 'u')]
    uuid: Option<uuid::Uuid>,
    /// Turn checks off: all=off, path_in_use=off, disk_size=off, mac_in_use=off.
    #[arg(long, value_parser = CheckSpec::from_str)]
    check: Vec<CheckSpec>,
    /// Print the libvirt domain XML of the VM this would create; create nothing.
    #[arg(long)]
    print_xml: bool,
    /// A file added to the root of the --location initrd (preseed, kickstart); repeatable.
    #[arg(long, requires = "location")]
    initrd_inject: Vec<PathBuf>,
    #[arg(long)]
    autostart: bool,
    /// auto | kvm | tcg (auto: KVM only where it really runs).
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// virt-install's --virt-type: kvm or qemu (= tcg).
    #[arg(long, conflicts_with = "accel")]
    virt_type: Option<String>,
    /// qemu machine type, one of `qemu-system-x86_64 -machine help` (default: pc).
    #[arg(long)]
    machine: Option<MachineType>,
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
    /// PATH or URL[,kernel=K,initrd=I]: an ISO or a tree (a directory, or http(s)://; a URL
    /// ending in .iso is downloaded); its kernel and initrd boot with --extra-args.
    #[arg(long, short = 'l', conflicts_with_all = ["import", "pxe"])]
    location: Option<String>,
    /// Boot from the network first (iPXE), then from disk.
    #[arg(long, conflicts_with = "import")]
    pxe: bool,
    /// A NoCloud seed for the first boot: root-password-generate=on,root-ssh-key=F,clouduser-ssh-key=F,user-data=F,meta-data=F,network-config=F
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    cloud_init: Option<String>,
    /// Do not boot the installed system after the install phase.
    #[arg(long)]
    noreboot: bool,
    /// Wait this many minutes for the install phase to end (-1 or no value: forever); with
    /// --image, until the guest has a DHCP lease.
    #[arg(long, allow_hyphen_values = true, num_args = 0..=1, default_missing_value = "-1")]
    wait: Option<i64>,
    /// Boot a pulled cloud image (kvmctl image pull): a linked overlay on it, grown to
    /// --disk size=GiB, with a NoCloud seed (--cloud-init options apply).
    #[arg(long, conflicts_with_all = ["import", "cdrom", "location", "pxe", "boot"])]
    image: Option<String>,
}

/// `--image NAME`: the install's disk becomes a linked overlay on the pulled image, in the
/// image's pool, at least as large as the image; a NoCloud seed is made even without
/// --cloud-init (cloud images wait for one).
fn apply_image(ctx: &Ctx, a: &mut InstallArgs) -> anyhow::Result<()> {
    use crate::domain::options::DiskSource;
    let Some(name) = a.image.clone() else { return Ok(()) };
    let rec = crate::images::load(&ctx.store, &name)?;
    if !rec.path.exists() {
        bail!("--image {name}: its volume {}/{} is gone (image rm {name}, then pull it again)", rec.pool, rec.volume);
    }
    let mut spec = match a.disk.len() {
        0 => format!("pool={},size=1", rec.pool).parse::<DiskSpec>().map_err(|e| anyhow::anyhow!("{e}"))?,
        1 => a.disk.remove(0),
        _ => bail!("--image {name} makes one disk: give at most one --disk (size=GiB)"),
    };
    if !matches!(spec.source, DiskSource::NewVolume { .. }) || spec.backing_store.is_some() {
        bail!(
            "--image {name}: --disk takes only size=GiB (and bus=, cache=) here; the disk is an overlay on the image"
        );
    }
    spec.source = DiskSource::NewVolume { pool: rec.pool.clone() };
    spec.size = Some(spec.size.unwrap_or(0).max(rec.capacity));
    spec.format = Some(crate::domain::definition::DiskFormat::Qcow2);
    spec.backing_store = Some(rec.volume.clone());
    spec.backing_format = Some(rec.format);
    a.disk = vec![spec];
    a.import = true;
    a.cloud_init.get_or_insert_with(String::new);
    if a.osinfo.is_none() {
        a.osinfo = rec.osinfo.clone();
    }
    Ok(())
}

/// `install --image ... --wait`: until the guest has an address (or `minutes` pass).
fn wait_lease(ctx: &Ctx, name: &str, minutes: i64) -> anyhow::Result<()> {
    let rd = RunDir::of(&ctx.store, name);
    let t0 = std::time::Instant::now();
    loop {
        if !rd.alive() {
            bail!("domain '{name}' stopped before it had an address");
        }
        let addrs = super::domain::if_addrs(ctx, name)?;
        if let Some(a) = addrs.first() {
            ctx.out.done(format!("Domain '{name}' has address {}", a.address));
            return Ok(());
        }
        if minutes >= 0 && t0.elapsed() > Duration::from_secs(minutes as u64 * 60) {
            bail!(
                "domain '{name}' has no DHCP lease after {minutes} minute(s); it keeps running (kvmctl console {name})"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
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
        match (key.as_str(), v.as_deref()) {
            ("kernel", Some(v)) => (k.kernel, any_kernel) = (PathBuf::from(v), true),
            ("initrd", Some(v)) => k.initrd = Some(PathBuf::from(v)),
            ("kernel_args" | "cmdline", Some(v)) => k.cmdline = v.to_string(),
            ("uefi", None) | ("firmware", Some("efi")) => spec.uefi = true,
            ("firmware", Some("bios")) => spec.uefi = false,
            ("firmware", v) => bail!(
                "--boot: firmware={} is not offered (firmware=efi for OVMF, firmware=bios for SeaBIOS)",
                v.unwrap_or_default()
            ),
            ("hd" | "cdrom" | "network", None) => spec.order.push(key.clone()),
            ("menu", v) => spec.menu = matches!(v, None | Some("on") | Some("yes")),
            (other, _) => bail!("--boot: unknown key '{other}' in '{boot}' (kernel=, initrd=, kernel_args=, uefi, firmware=efi|bios, hd, cdrom, network, menu=on)"),
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

/// `--memory`: currentMemory is the memory size (kvmctl's VMs have no balloon to hold less);
/// maxmemory comes with its slots, as qemu and libvirt want.
fn memory_of(m: &MemorySpec) -> anyhow::Result<Option<crate::domain::definition::MaxMemory>> {
    if let Some(c) = m.current.filter(|c| *c != m.memory) {
        if c > m.memory {
            bail!("--memory currentMemory={c}: more than memory={} (the size the guest boots with)", m.memory);
        }
        bail!(
            "--memory currentMemory={c}: less than memory={} needs a memory balloon, which kvmctl's VMs do not have; \
             give memory={c}, or leave currentMemory out",
            m.memory
        );
    }
    match (m.max, m.slots) {
        (None, None) => Ok(None),
        (Some(mib), Some(slots)) => Ok(Some(crate::domain::definition::MaxMemory { mib, slots })),
        (Some(_), None) => {
            bail!("--memory maxmemory= needs maxMemory.slots=N (the memory hotplug slots qemu reserves, 1 to 256)")
        }
        (None, Some(_)) => bail!("--memory maxMemory.slots= needs maxmemory=MiB (qemu: slots without a maximum size)"),
    }
}

fn console_spec(s: &str) -> Result<ConsoleSpec, String> {
    ConsoleSpec::parse("console", s).map_err(|e| e.to_string())
}

fn serial_spec(s: &str) -> Result<ConsoleSpec, String> {
    ConsoleSpec::parse("serial", s).map_err(|e| e.to_string())
}

/// The one serial console's copy file, from every --console and --serial: at most one file,
/// given as an absolute path whose directory exists.
fn console_file(console: &[ConsoleSpec], serial: &[ConsoleSpec]) -> anyhow::Result<Option<PathBuf>> {
    let mut file: Option<PathBuf> = None;
    for c in console.iter().chain(serial) {
        if let ConsoleSpec::File(p) = c {
            let p = std::path::absolute(p)?;
            if file.as_ref().is_some_and(|f| *f != p) {
                bail!("--console/--serial: the guest has one serial console; name one file,path= for its copy");
            }
            if !p.parent().is_some_and(|d| d.is_dir()) {
                bail!("--console file,path={}: its directory does not exist", p.display());
            }
            if p.is_dir() {
                bail!("--console file,path={}: is a directory", p.display());
            }
            file = Some(p);
        }
    }
    Ok(file)
}

/// `--graphics none | vnc[,listen=ADDR][,port=N][,password=PW]`: every key is implemented or
/// refused by name. Returns the graphics and the VNC password, kept apart from the definition.
fn parse_graphics(g: &str) -> anyhow::Result<(Graphics, Option<String>)> {
    let items = split_kv(g);
    match items.first().map(|(k, v)| (k.as_str(), v)) {
        Some(("none", None)) if items.len() == 1 => return Ok((Graphics::None, None)),
        Some(("vnc", None)) => {}
        _ => bail!("--graphics '{g}': use none or vnc[,listen=ADDR][,port=5900..65535][,password=PW]"),
    }
    let (mut listen, mut port, mut password) = ("127.0.0.1".to_string(), None, None);
    for (k, v) in &items[1..] {
        let Some(v) = v.clone() else { bail!("--graphics '{g}': '{k}' needs a value ({k}=...)") };
        match k.as_str() {
            "listen" => listen = v,
            "port" if v == "-1" || v == "auto" => port = None,
            "port" => match v.parse::<u16>() {
                Ok(p) if p >= 5900 => port = Some(p),
                _ => bail!("--graphics '{g}': port={v} is not a VNC port (5900..65535, or -1 for one kvmctl picks)"),
            },
            "password" | "passwd" => {
                // VNC's authentication uses at most 8 characters: a longer one would be cut silently.
                if v.is_empty() || v.len() > 8 || v.chars().any(|c| c.is_control()) {
                    bail!("--graphics '{g}': a VNC password is 1 to 8 printable characters (VNC authentication uses no more)");
                }
                password = Some(v);
            }
            other => bail!("--graphics '{g}': unknown key '{other}' (vnc takes listen=, port=, password=)"),
        }
    }
    let Ok(listen) = listen.parse() else { bail!("--graphics '{g}': listen='{listen}' is not an IP address") };
    Ok((Graphics::Vnc { listen, port, password: password.is_some() }, password))
}

pub(super) fn install_cmd(ctx: &Ctx, mut a: InstallArgs) -> anyhow::Result<()> {
    apply_image(ctx, &mut a)?;
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
    if !a.initrd_inject.is_empty() && a.location.is_none() {
        // clap's `requires` stands aside when another install source conflicts with --location.
        bail!("--initrd-inject adds files to the initrd of --location: give --location");
    }
    let kernel = boot.kernel.clone();
    let (graphics, vnc_password) = parse_graphics(&a.graphics)?;
    let max_memory = memory_of(&a.memory)?;
    let vcpus = a.vcpus.unwrap_or_default().resolve();
    let console_file = console_file(&a.console, &a.serial)?;
    let dry_run = a.dry_run || a.print_xml;
    let opts = InstallOpts {
        name: a.name.clone(),
        memory_mib: a.memory.memory,
        vcpus: vcpus.vcpus,
        max_memory,
        max_vcpus: vcpus.max,
        topology: vcpus.topology,
        uuid: a.uuid,
        checks: Checks::from_specs(&a.check),
        console_file,
        cpu: a.cpu,
        disks: a.disk,
        networks: a.network,
        import: a.import || a.cdrom.is_some() || a.location.is_some() || a.pxe,
        kernel,
        graphics,
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
        image: a.image.is_some(),
        vnc_password,
        initrd_inject: a.initrd_inject.clone(),
        print_xml: a.print_xml,
    };
    if (src.cdrom.is_some() || src.location.is_some() || src.pxe) && opts.disks.is_empty() && !dry_run {
        bail!("--cdrom, --location and --pxe install onto a disk: give one with --disk (size=GiB creates it)");
    }
    let r = install_steps(ctx, &opts, &src, dry_run, a.transient);
    // virt-install's autoconsole: text attaches; none (or --noautoconsole) does not; by
    // default, attach when we are on a terminal.
    let autoconsole = !dry_run
        && match a.autoconsole {
            Some(AutoConsole::Text) => true,
            Some(AutoConsole::None) => false,
            None => !a.noautoconsole && std::io::stdout().is_terminal() && std::io::stdin().is_terminal(),
        };
    if r.is_ok() && autoconsole {
        return attach(ctx, &opts.name, false, false, "^]", 1.0);
    }
    r
}

fn install_steps(ctx: &Ctx, opts: &InstallOpts, src: &Sources, dry_run: bool, transient: bool) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Domain, &opts.name)?;
    // One rollback scope: everything this install makes is journaled before it is made, and
    // removed again on failure, on Ctrl+C, or by the next command after a kill -9, until the
    // VM runs (its supervisor's lock held) or the install commits.
    let mut revert =
        if dry_run { Revert::new() } else { Revert::journaled(&store.paths, Kind::Domain, &opts.name, "install")? };
    // The install media first: nothing is created for media that is not there.
    src.check(ctx)?;
    let mut def = install::build(store, opts, dry_run, &mut revert)?;
    apply_firmware(store, &mut def, &src.boot, dry_run, &mut revert)?;
    if src.print_xml {
        print!("{}", crate::domain::libvirt_xml::to_xml(&def));
        return Ok(());
    }
    if dry_run {
        println!("# definition\n{}", toml::to_string_pretty(&def)?);
        let verdict = crate::domain::accel::probe(&store.paths.run);
        let res = crate::domain::accel::resolve(def.accel, &verdict)?;
        let mut next = 5;
        let mut number = || {
            next += 1;
            next - 1
        };
        let fds: Vec<Option<i32>> = def.nics.iter().map(|n| (n.source != NicSource::User).then(&mut number)).collect();
        let files = crate::domain::argv::Handed::numbered(&def, number(), crate::domain::tap::vhost_available());
        let env = crate::domain::argv::RenderEnv {
            accel: res.accel,
            qmp_fd: 3,
            serial_fd: 4,
            tap_fds: &fds,
            files: &files,
            vnc_display: 0,
        };
        let argv = crate::domain::argv::render(&def, &env)
            .map_err(|source| lifecycle::DomainError::Definition { name: def.name.clone(), source: source.into() })?;
        println!(
            "# qemu argv (sockets, taps and files are opened at start, as these fds)\nqemu-system-x86_64 {}",
            argv.join(" ")
        );
        return Ok(());
    }
    let rd = RunDir::of(store, &def.name);
    if let Some(pw) = &src.vnc_password {
        let path = store.paths.vnc_password(&def.name);
        crate::state::private_dir(path.parent().expect("secrets dir"))?;
        revert.add(Undo::File(path.clone()))?;
        crate::state::runtime_write(&path, pw.as_bytes())?;
    }
    if !transient {
        revert.add(Undo::File(store.paths.def_file(Kind::Domain, &def.name)))?;
        store.create(Kind::Domain, &def.name, &def)?;
        crate::events::domain(&store.paths.run, &def.name, crate::events::What::Defined, "added");
        let (run, name) = (store.paths.run.clone(), def.name.clone());
        revert.on_fail("record the undefine", move || {
            crate::events::domain(&run, &name, crate::events::What::Undefined, "install failed");
            Ok(())
        });
        crate::fault::point("install.defined");
    }
    revert.add(Undo::Dir(rd.dir.clone()))?;
    revert.done_if_locked(rd.lock())?;
    let notify = |m: &str| {
        if !ctx.out.quiet {
            eprintln!("{m}");
        }
    };
    rd.create()?;
    match first_boot(ctx, &def, src, &rd)? {
        None => {
            lifecycle::start(store, &def, transient, &notify)?;
            crate::fault::point("install.started");
        }
        Some((first, poweroff_stops)) => {
            let phase = lifecycle::Phase { next: &def, noreboot: src.noreboot, poweroff_stops };
            lifecycle::start_phased(store, &first, Some(phase), transient, &notify)?;
            crate::fault::point("install.started");
            revert.commit();
            ctx.out.done(format!("Domain '{}' started (install phase; it boots from disk afterwards)", def.name));
            match (src.wait, src.image) {
                (Some(minutes), true) => wait_lease(ctx, &def.name, minutes)?,
                (Some(minutes), false) => wait_install(store, &def.name, minutes)?,
                (None, _) => {}
            }
            return Ok(());
        }
    }
    revert.commit();
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
    /// Booting a pulled image: --wait waits for a lease.
    image: bool,
    /// `--graphics vnc,password=`: written to the VM's secret file, not its definition.
    vnc_password: Option<String>,
    /// `--initrd-inject`.
    initrd_inject: Vec<PathBuf>,
    /// `--print-xml`: the XML instead of the dry run's definition and argv.
    print_xml: bool,
}

/// `--location PATH|URL[,kernel=K,initrd=I]`.
struct LocationSpec {
    source: String,
    kernel: Option<String>,
    initrd: Option<String>,
}

impl LocationSpec {
    fn parse(loc: &str) -> anyhow::Result<LocationSpec> {
        let items = split_kv(loc);
        let Some((source, None)) = items.first().cloned() else {
            bail!("--location '{loc}': name the tree or ISO first (PATH or URL[,kernel=K,initrd=I])")
        };
        let mut spec = LocationSpec { source, kernel: None, initrd: None };
        for (k, v) in items.into_iter().skip(1) {
            match (k.as_str(), v) {
                ("kernel", Some(v)) => spec.kernel = Some(v),
                ("initrd", Some(v)) => spec.initrd = Some(v),
                _ => bail!("--location: unknown key '{k}' in '{loc}' (use PATH or URL[,kernel=K,initrd=I])"),
            }
        }
        Ok(spec)
    }

    fn url(&self) -> Option<&str> {
        crate::media::remote::is_url(&self.source).then_some(self.source.as_str())
    }

    /// The remote location's boot files or ISO, looked at (HEAD) without downloading.
    fn probe_remote(&self, url: &str) -> anyhow::Result<(crate::images::fetch::Client, crate::media::remote::Remote)> {
        let client = crate::images::fetch::Client::allowing_http()?;
        let found = crate::media::remote::probe(&client, url, self.kernel.as_deref(), self.initrd.as_deref())
            .map_err(|e| anyhow::anyhow!("--location {url}: {e}"))?;
        Ok((client, found))
    }
}

impl Sources {
    /// Checks that need no disk work: the install media is there and readable (an ISO's
    /// volume descriptor, a tree's or ISO's kernel and initrd, a URL that answers), the files
    /// to inject and the cloud-init files are readable, the options well-formed.
    fn check(&self, ctx: &Ctx) -> anyhow::Result<()> {
        if let Some(iso) = &self.cdrom {
            crate::media::iso9660::Iso::open(iso).map_err(|e| anyhow::anyhow!("--cdrom: {e}"))?;
        }
        if let Some(loc) = &self.location {
            let spec = LocationSpec::parse(loc)?;
            match spec.url() {
                Some(url) => {
                    let (_, found) = spec.probe_remote(url)?;
                    if let crate::media::remote::Remote::Tree { kernel, initrd, layout, .. } = &found {
                        if !ctx.out.quiet {
                            eprintln!("Found {layout} layout: {kernel} + {initrd}");
                        }
                    }
                }
                None => {
                    let path = PathBuf::from(&spec.source);
                    crate::media::location::find_boot_files(&path, spec.kernel.as_deref(), spec.initrd.as_deref())
                        .map_err(|e| anyhow::anyhow!("--location: {e}"))?;
                }
            }
        }
        crate::media::initrd_inject::read_members(&self.initrd_inject)?;
        if let Some(c) = &self.cloud_init {
            c.parse::<crate::media::nocloud::CloudInitOpts>()?;
        }
        Ok(())
    }
}

/// The first boot of a phased install (the saved definition is the system after it), and
/// whether a guest power-off ends the VM instead of booting the installed system.
fn first_boot(ctx: &Ctx, def: &DomainDef, src: &Sources, rd: &RunDir) -> anyhow::Result<Option<(DomainDef, bool)>> {
    use crate::domain::definition::{Action, DiskBus, DiskDef, DiskDevice, DiskFormat};
    let cd = |path: PathBuf| DiskDef {
        path: std::path::absolute(&path).unwrap_or(path),
        format: DiskFormat::Raw,
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
        let spec = LocationSpec::parse(loc)?;
        let boot_dir = rd.dir.join("boot");
        std::fs::create_dir_all(&boot_dir)?;
        let (files, iso) = location_files(ctx, &spec, &boot_dir)?;
        let initrd = if src.initrd_inject.is_empty() {
            files.initrd
        } else {
            let members = crate::media::initrd_inject::read_members(&src.initrd_inject)?;
            let dest = boot_dir.join("initrd.injected");
            crate::media::initrd_inject::write_injected(&files.initrd, &members, &dest)?;
            if !ctx.out.quiet {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                eprintln!("Injected into the initrd: {}", names.join(", "));
            }
            dest
        };
        first.kernel = Some(KernelBoot {
            kernel: files.kernel,
            initrd: Some(initrd),
            cmdline: src.extra_args.clone().unwrap_or_default(),
        });
        if let Some(iso) = iso {
            first.disks.push(cd(iso));
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

/// The kernel and initrd of `--location` as host files (in `boot_dir` when they had to be
/// downloaded or copied out of an ISO), and the ISO to attach as a CD, if it is one.
fn location_files(
    ctx: &Ctx,
    spec: &LocationSpec,
    boot_dir: &std::path::Path,
) -> anyhow::Result<(crate::media::BootPaths, Option<PathBuf>)> {
    use crate::media::remote::{self, Remote};
    let say = |m: String| {
        if !ctx.out.quiet {
            eprintln!("{m}");
        }
    };
    let local = match spec.url() {
        Some(url) => {
            let (client, found) = spec.probe_remote(url)?;
            let mut bar = ctx.out.progress("download");
            let got = remote::fetch(&client, &found, boot_dir, &mut bar)
                .map_err(|e| anyhow::anyhow!("--location {url}: {e}"))?;
            match found {
                Remote::Tree { layout, distro, .. } => {
                    let d = distro.map(|d| format!(" ({d})")).unwrap_or_default();
                    say(format!("Using {layout} layout{d} from {url}"));
                    let paths = crate::media::BootPaths { kernel: got[0].clone(), initrd: got[1].clone() };
                    return Ok((paths, None));
                }
                Remote::Iso { .. } => got[0].clone(),
            }
        }
        None => PathBuf::from(&spec.source),
    };
    let found = crate::media::location::find_boot_files(&local, spec.kernel.as_deref(), spec.initrd.as_deref())?;
    let files = found.extract_to(boot_dir)?;
    say(format!("Using {} layout: {} + {}", found.layout, found.kernel.describe(), found.initrd.describe()));
    let iso = found.is_iso().then(|| local.canonicalize().unwrap_or(local));
    Ok((files, iso))
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
    revert: &mut Revert,
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
        revert.add(Undo::File(nvram.clone()))?;
        std::fs::copy(&vars, &nvram)?;
    }
    def.firmware = crate::domain::definition::Firmware::Uefi { code, nvram };
    Ok(())
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{domain::DomCmd, Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<InstallArgs, clap::Error> {
        let argv = ["kvmctl", "install", "--name", "v"].iter().chain(args).copied();
        match Cli::try_parse_from(argv)?.command {
            Command::Domain(DomCmd::Install(a)) => Ok(*a),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn usage_error(args: &[&str]) -> String {
        let e = parse(args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        e.to_string()
    }

    #[test]
    fn short_spellings_of_virt_install() {
        let a = parse(&[
            "-r",
            "512",
            "-l",
            "/srv/tree,kernel=k,initrd=i",
            "-x",
            "console=ttyS0",
            "-u",
            "3e3fce45-4f53-4fa7-bb32-11f34168b82b",
        ])
        .unwrap();
        assert_eq!(a.memory.memory, 512);
        assert_eq!(a.location.as_deref(), Some("/srv/tree,kernel=k,initrd=i"));
        assert_eq!(a.extra_args.as_deref(), Some("console=ttyS0"));
        assert_eq!(a.uuid.unwrap().to_string(), "3e3fce45-4f53-4fa7-bb32-11f34168b82b");
        let a = parse(&["--ram", "256", "--location", "https://h/t/", "--extra-args", "x"]).unwrap();
        assert_eq!((a.memory.memory, a.location.as_deref()), (256, Some("https://h/t/")));
        assert!(usage_error(&["-r", "512", "-u", "not-a-uuid"]).contains("--uuid"));
    }

    #[test]
    fn memory_and_vcpus_forms() {
        let a = parse(&["--memory", "memory=512,currentMemory=512,maxmemory=2048,maxMemory.slots=2"]).unwrap();
        assert_eq!(memory_of(&a.memory).unwrap(), Some(crate::domain::definition::MaxMemory { mib: 2048, slots: 2 }));
        let a = parse(&["--memory", "memory=512,currentMemory=256"]).unwrap();
        let e = memory_of(&a.memory).unwrap_err().to_string();
        assert!(e.contains("currentMemory=256: less than memory=512 needs a memory balloon"), "{e}");
        let a = parse(&["--memory", "memory=512,maxmemory=1024"]).unwrap();
        assert!(memory_of(&a.memory).unwrap_err().to_string().contains("needs maxMemory.slots=N"));
        assert!(usage_error(&["--memory", "512,hugepages=on"]).contains("key 'hugepages'"));
        let a = parse(&["-r", "64", "--vcpus", "2,maxvcpus=4,sockets=1,cores=2,threads=2"]).unwrap();
        let v = a.vcpus.unwrap().resolve();
        assert_eq!((v.vcpus, v.max), (2, Some(4)));
        assert!(usage_error(&["-r", "64", "--vcpus", "2,placement=static"]).contains("key 'placement'"));
        assert!(parse(&["--vcpus", "2"]).is_err(), "--memory is required");
    }

    #[test]
    fn boot_firmware_check_console_autoconsole_print_xml() {
        assert!(parse_boot("firmware=efi", None).unwrap().uefi);
        assert!(parse_boot("uefi", None).unwrap().uefi);
        assert!(!parse_boot("firmware=bios,hd", None).unwrap().uefi);
        let e = parse_boot("firmware=coreboot", None).unwrap_err().to_string();
        assert!(e.contains("firmware=coreboot is not offered"), "{e}");
        let a = parse(&["-r", "64", "--check", "all=off", "--check", "mac_in_use=on"]).unwrap();
        let c = Checks::from_specs(&a.check);
        assert!(!c.path_in_use && !c.disk_size && c.mac_in_use);
        assert!(usage_error(&["-r", "64", "--check", "path_exists=off"]).contains("names check 'path_exists'"));
        let a = parse(&["-r", "64", "--console", "pty", "--serial", "file,path=/tmp/c.log"]).unwrap();
        assert_eq!(console_file(&a.console, &a.serial).unwrap(), Some(PathBuf::from("/tmp/c.log")));
        let e = usage_error(&["-r", "64", "--console", "unix,path=/tmp/s"]);
        assert!(e.contains("the supervisor holds the serial console"), "{e}");
        let e = console_file(&[ConsoleSpec::File("/tmp/a".into())], &[ConsoleSpec::File("/tmp/b".into())]);
        assert!(e.unwrap_err().to_string().contains("one serial console"));
        let e = console_file(&[ConsoleSpec::File("/nonexistent-dir/c.log".into())], &[]).unwrap_err().to_string();
        assert!(e.contains("its directory does not exist"), "{e}");
        assert_eq!(parse(&["-r", "64", "--autoconsole", "text"]).unwrap().autoconsole, Some(AutoConsole::Text));
        assert!(usage_error(&["-r", "64", "--autoconsole", "graphical"]).contains("no viewer"));
        assert!(usage_error(&["-r", "64", "--autoconsole", "none", "--noautoconsole"]).contains("cannot be used with"));
        assert!(parse(&["-r", "64", "--print-xml", "--import"]).unwrap().print_xml);
        // --initrd-inject goes with --location.
        assert!(usage_error(&["-r", "64", "--initrd-inject", "/x"]).contains("--location"));
        let a = parse(&["-r", "64", "-l", "/t", "--initrd-inject", "/a", "--initrd-inject", "/b"]).unwrap();
        assert_eq!(a.initrd_inject, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        let a = parse(&["-r", "64", "--cloud-init", "clouduser-ssh-key=/k.pub"]).unwrap();
        assert_eq!(a.cloud_init.as_deref(), Some("clouduser-ssh-key=/k.pub"));
    }

    #[test]
    fn location_spec_names_its_keys() {
        let l = LocationSpec::parse("http://h/t,kernel=a/k,initrd=a/i").unwrap();
        assert_eq!((l.url(), l.kernel.as_deref(), l.initrd.as_deref()), (Some("http://h/t"), Some("a/k"), Some("a/i")));
        assert!(LocationSpec::parse("/t").unwrap().url().is_none());
        let e = LocationSpec::parse("/t,kernal=x").err().unwrap().to_string();
        assert!(e.contains("unknown key 'kernal'"), "{e}");
    }
}
