//! `install` (virt-install): options -> a complete definition, with the volumes it needs.
//! Everything this command creates is removed again if any later step fails.

use std::collections::HashSet;
use std::path::Path;

use super::definition::*;
use super::lifecycle::DomainError;
use super::options::{DiskSource, DiskSpec, NetKind, NetSpec};
use super::validate;
use crate::paths::Kind;
use crate::state::{Revert, Store, Undo};
use crate::storage::image::{self, Format};
use crate::storage::qcow2::DEFAULT_CLUSTER_BITS;
use crate::storage::volume::{self, CreateOpts};

/// What `install` was asked for, already parsed.
#[derive(Debug, Clone)]
pub struct InstallOpts {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub cpu: Option<CpuModel>,
    pub disks: Vec<DiskSpec>,
    pub networks: Vec<NetSpec>,
    pub import: bool,
    pub kernel: Option<KernelBoot>,
    pub graphics: Graphics,
    pub os_variant: Option<String>,
    pub autostart: bool,
    pub accel: Accel,
    pub machine: Option<MachineType>,
    /// `--memory maxmemory=,maxMemory.slots=`.
    pub max_memory: Option<MaxMemory>,
    /// `--vcpus maxvcpus=` and `sockets=,cores=,threads=`.
    pub max_vcpus: Option<u32>,
    pub topology: Option<CpuTopology>,
    /// `--uuid`.
    pub uuid: Option<uuid::Uuid>,
    /// `--check`.
    pub checks: super::install_spec::Checks,
    /// `--console file,path=`.
    pub console_file: Option<std::path::PathBuf>,
}

fn bad(name: &str, what: impl Into<String>) -> DomainError {
    DomainError::Invalid { name: name.into(), what: what.into() }
}

/// Check the options and build the definition; with `dry_run` nothing is created. The
/// definition passes the checks `define` and `start` make (`validate`): those that need no
/// disk before any disk is created, all of them at the end.
/// Every file it creates is registered with `revert` first (removed again unless committed).
pub fn build(store: &Store, o: &InstallOpts, dry_run: bool, revert: &mut Revert) -> Result<DomainDef, DomainError> {
    crate::names::validate("domain", &o.name).map_err(|e| bad(&o.name, e.to_string()))?;
    if store.exists(Kind::Domain, &o.name) {
        return Err(bad(&o.name, "is already defined (undefine it or pick another --name)"));
    }
    if o.import && o.disks.is_empty() {
        return Err(bad(&o.name, "--import needs a --disk to boot from"));
    }
    if !o.import && o.kernel.is_none() {
        return Err(bad(
            &o.name,
            "no install source: use --import, --cdrom ISO, --location PATH, --pxe or --boot kernel=...",
        ));
    }
    let mut def = DomainDef::new(&o.name, o.memory_mib, o.vcpus);
    if let Some(u) = o.uuid {
        if u.is_nil() {
            return Err(bad(&o.name, "--uuid 00000000-0000-0000-0000-000000000000: the nil UUID names no VM"));
        }
        def.uuid = u;
    }
    def.max_memory = o.max_memory;
    def.max_vcpus = o.max_vcpus;
    def.topology = o.topology;
    def.console_file = o.console_file.clone();
    def.checks_off = [("path_in_use", o.checks.path_in_use), ("mac_in_use", o.checks.mac_in_use)]
        .into_iter()
        .filter(|(_, on)| !on)
        .map(|(c, _)| c.to_string())
        .collect();
    def.cpu = o.cpu.clone();
    def.accel = o.accel;
    def.graphics = o.graphics.clone();
    def.os_variant = o.os_variant.clone();
    def.autostart = o.autostart;
    def.kernel = o.kernel.clone();
    if let Some(m) = &o.machine {
        def.machine = m.clone();
    }
    let mut used_macs = defined_macs(store);
    let specs = if o.networks.is_empty() { vec![default_nic(store)] } else { o.networks.clone() };
    for spec in specs {
        if let Some(nic) = nic(store, &o.name, &spec, &mut used_macs)? {
            def.nics.push(nic);
        }
    }
    // Everything but the disks, before any disk is created.
    let invalid = |source| DomainError::Definition { name: o.name.clone(), source };
    let caps = super::qemu_caps::probe(&store.paths.run).map_err(|e| invalid(e.into()))?;
    validate::check_def(&def, &validate::HostLimits::probe(), &caps)
        .and_then(|()| {
            // No disk yet: who uses an image is asked once they are known (`validate::check`).
            let nobody = |_: &Path| crate::storage::Users::default();
            validate::check_relations(&def, &validate::others(store, &def.name), validate::Purpose::New, &nobody)
        })
        .map_err(invalid)?;
    for (i, spec) in o.disks.iter().enumerate() {
        def.disks.push(disk(store, &o.name, i, spec, o.checks.disk_size, dry_run, revert)?);
    }
    validate::check(store, &def, validate::Purpose::New)?;
    Ok(def)
}

/// virt-install's default: the `default` network if defined (and kvmctl runs as root: a
/// network needs bridges and taps), else user-mode networking.
fn default_nic(store: &Store) -> NetSpec {
    let kind = if is_root() && store.exists(Kind::Network, "default") {
        NetKind::Network("default".into())
    } else {
        NetKind::User
    };
    NetSpec { kind, model: NicModel::Virtio, mac: None, hostfwd: vec![] }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The MACs of every defined VM, to keep new ones unique.
pub(crate) fn defined_macs(store: &Store) -> HashSet<MacAddr> {
    let mut macs = HashSet::new();
    for n in store.list(Kind::Domain).unwrap_or_default() {
        if let Ok(d) = store.load::<DomainDef>(Kind::Domain, &n) {
            macs.extend(d.nics.into_iter().map(|n| n.mac));
        }
    }
    macs
}

/// A NIC for `spec`; its MAC is checked (unicast, unused) with the rest of the definition.
fn nic(store: &Store, vm: &str, spec: &NetSpec, used: &mut HashSet<MacAddr>) -> Result<Option<NicDef>, DomainError> {
    if !is_root() && matches!(spec.kind, NetKind::Bridge(_) | NetKind::Network(_)) {
        let (what, name) = match &spec.kind {
            NetKind::Bridge(b) => ("bridge", b.as_str()),
            NetKind::Network(n) => ("network", n.as_str()),
            _ => unreachable!(),
        };
        return Err(bad(
            vm,
            format!(
                "--network {what}={name}: a tap on a bridge needs root; as a user, use --network user \
                 (with hostfwd=tcp::2222-:22 to reach the guest)"
            ),
        ));
    }
    let source = match &spec.kind {
        NetKind::None => return Ok(None),
        NetKind::User => NicSource::User,
        NetKind::Bridge(b) => NicSource::Bridge { bridge: b.clone() },
        NetKind::Network(n) => {
            if !store.exists(Kind::Network, n) && crate::network::lifecycle::load_state(store, n).is_none() {
                return Err(bad(vm, format!("--network network={n}: network '{n}' not found")));
            }
            NicSource::Network { network: n.clone() }
        }
    };
    let mac = match &spec.mac {
        Some(m) if m.eq_ignore_ascii_case("RANDOM") => random_mac(used),
        Some(m) => m.parse().map_err(|e| bad(vm, format!("--network mac={m}: {e}")))?,
        None => random_mac(used),
    };
    used.insert(mac);
    Ok(Some(NicDef { source, model: spec.model, mac, hostfwd: spec.hostfwd.clone() }))
}

/// `52:54:00:xx:xx:xx`, unique among the MACs given.
pub fn random_mac(used: &HashSet<MacAddr>) -> MacAddr {
    loop {
        let b = *uuid::Uuid::new_v4().as_bytes();
        let m = MacAddr([0x52, 0x54, 0x00, b[0], b[1], b[2]]);
        if !used.contains(&m) {
            return m;
        }
    }
}

fn disk(
    store: &Store,
    vm: &str,
    index: usize,
    spec: &DiskSpec,
    check_size: bool,
    dry_run: bool,
    revert: &mut Revert,
) -> Result<DiskDef, DomainError> {
    let journal = |e: std::io::Error| bad(vm, format!("cannot write the install journal: {e}"));
    let mut was_created = false;
    let path = match &spec.source {
        DiskSource::Path(p) => {
            let p = if p.is_absolute() {
                p.clone()
            } else {
                std::env::current_dir().map(|d| d.join(p)).unwrap_or(p.clone())
            };
            if !p.exists() {
                let size = spec.size.ok_or_else(|| {
                    bad(vm, format!("--disk path={}: does not exist (add size=GiB to create it)", p.display()))
                })?;
                let format = spec.format.unwrap_or(DiskFormat::Qcow2);
                volume::check_capacity(&format!("--disk path={}", p.display()), format, DEFAULT_CLUSTER_BITS, size)
                    .map_err(|e| bad(vm, e.to_string()))?;
                if check_size {
                    fits(vm, &format!("--disk path={}", p.display()), p.parent().unwrap_or(Path::new("/")), size)?;
                }
                if !dry_run {
                    revert.add(Undo::File(p.clone())).map_err(journal)?;
                    crate::fault::point("install.disk-file");
                    if let Err(e) = create_file(vm, &p, size, spec) {
                        revert.forget(&p).map_err(journal)?;
                        return Err(e);
                    }
                }
                was_created = true;
                p
            } else if let Some((driver, what)) = convertible(&p) {
                was_created = true;
                convert_disk(store, vm, index, &p, driver, what, spec, dry_run, revert)?
            } else {
                p
            }
        }
        DiskSource::Volume { pool, name } => {
            volume::resolve(store, Some(pool), name)
                .map_err(|e| bad(vm, format!("--disk vol={pool}/{name}: {e}")))?
                .path
        }
        DiskSource::NewVolume { pool } => {
            let def =
                crate::storage::pool::active(store, pool).map_err(|e| bad(vm, format!("--disk pool={pool}: {e}")))?;
            let name = if index == 0 { format!("{vm}.qcow2") } else { format!("{vm}-{index}.qcow2") };
            let path = def.target.join(&name);
            let capacity = spec.size.unwrap_or(0);
            volume::check_capacity(
                &format!("--disk pool={pool},size=...: volume '{name}' in pool '{pool}'"),
                Format::Qcow2,
                DEFAULT_CLUSTER_BITS,
                capacity,
            )
            .map_err(|e| bad(vm, e.to_string()))?;
            if check_size {
                fits(vm, &format!("--disk pool={pool},size=...: pool '{pool}'"), &def.target, capacity)?;
            }
            if !dry_run {
                if path.exists() {
                    return Err(bad(vm, format!("--disk pool={pool}: volume '{name}' already exists in pool '{pool}' (use vol={pool}/{name} to boot from it, or pick another --name)")));
                }
                revert.add(Undo::File(path.clone())).map_err(journal)?;
                let opts = CreateOpts {
                    capacity,
                    format: Format::Qcow2,
                    backing_vol: spec.backing_store.clone(),
                    backing_format: spec.backing_format,
                    prealloc_metadata: false,
                };
                if let Err(e) = volume::create_as(store, pool, &name, &opts) {
                    revert.forget(&path).map_err(journal)?;
                    return Err(bad(vm, format!("--disk pool={pool},size=...: {e}")));
                }
                crate::fault::point("install.volume");
            }
            was_created = true;
            path
        }
    };
    let readonly = spec.readonly || spec.device == DiskDevice::Cdrom;
    let format = match spec.format {
        Some(f) => f,
        None if dry_run && was_created => DiskFormat::Qcow2,
        None => image::detect(&path).map_err(|e| bad(vm, format!("--disk {}: {e}", path.display())))?,
    };
    Ok(DiskDef {
        path,
        format,
        bus: spec.bus.unwrap_or(DiskBus::Virtio),
        device: spec.device,
        cache: spec.cache,
        readonly,
        shareable: spec.shareable,
        created: was_created,
    })
}

/// virt-install's disk_size check: a new disk of `size` bytes fits in the free space of the
/// filesystem holding `dir` (`--check disk_size=off` skips it: sparse images may still fit).
fn fits(vm: &str, what: &str, dir: &Path, size: u64) -> Result<(), DomainError> {
    let Some(u) = crate::storage::pool::fs_usage(dir) else { return Ok(()) };
    if size > u.available {
        return Err(bad(
            vm,
            format!(
                "{what}: the disk of {} is larger than the {} free there (--check disk_size=off to create it anyway)",
                crate::size::human(size),
                crate::size::human(u.available)
            ),
        ));
    }
    Ok(())
}

/// A vmdk, vdi, vhdx, vhd or qcow given as `--disk path=`: its qemu driver and its name.
fn convertible(p: &Path) -> Option<(&'static str, &'static str)> {
    let f = image::foreign_format(p).ok()??;
    Some((f.driver?, f.what))
}

/// `--disk path=disk.vmdk`: converted (qcow2, or format=raw) into a new volume named after the
/// VM in the `default` pool, which the VM boots instead; registered with `revert` first.
#[allow(clippy::too_many_arguments)]
fn convert_disk(
    store: &Store,
    vm: &str,
    index: usize,
    p: &Path,
    driver: &str,
    what: &str,
    spec: &DiskSpec,
    dry_run: bool,
    revert: &mut Revert,
) -> Result<std::path::PathBuf, DomainError> {
    let pool = "default";
    let fail = |e: String| {
        bad(vm, format!("--disk path={}: a {what} image is converted into pool '{pool}': {e}", p.display()))
    };
    let def = crate::storage::pool::active(store, pool).map_err(|e| fail(e.to_string()))?;
    let format = spec.format.unwrap_or(DiskFormat::Qcow2);
    let name = match index {
        0 => format!("{vm}.{format}"),
        i => format!("{vm}-{i}.{format}"),
    };
    let path = def.target.join(&name);
    if dry_run {
        return Ok(path);
    }
    if path.exists() {
        return Err(fail(format!("volume '{name}' already exists (pick another --name)")));
    }
    let journal = |e: std::io::Error| bad(vm, format!("cannot write the install journal: {e}"));
    revert.add(Undo::File(path.clone())).map_err(journal)?;
    let mut quiet = |_, _| {};
    if let Err(e) = volume::import_foreign(store, p, driver, pool, &name, format, false, false, &mut quiet) {
        revert.forget(&path).map_err(journal)?;
        return Err(fail(e.to_string()));
    }
    eprintln!("Converted {} ({what}) into volume {pool}/{name}", p.display());
    Ok(path)
}

/// A new disk file at a path outside any pool (qcow2 unless format=raw).
fn create_file(vm: &str, p: &Path, size: u64, spec: &DiskSpec) -> Result<(), DomainError> {
    let fail = |e: String| bad(vm, format!("--disk path={}: {e}", p.display()));
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(p).map_err(|e| fail(e.to_string()))?;
    let r = match spec.format.unwrap_or(DiskFormat::Qcow2) {
        DiskFormat::Raw => file.set_len(size).map_err(|e| e.to_string()),
        DiskFormat::Qcow2 => crate::storage::qcow2::Qcow2Writer::new(&file, size, None)
            .map_err(|e| e.to_string())
            .and_then(|w| w.finish().map(|_| ()).map_err(|e| e.to_string())),
    };
    if let Err(e) = r {
        drop(file);
        let _ = std::fs::remove_file(p);
        return Err(fail(e));
    }
    Ok(())
}
