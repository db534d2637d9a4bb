//! What a definition must satisfy before it is saved or started: one set of checks, called by
//! `install`, `define`, `edit` and `start` (and `up`). The types of the definition already
//! refuse malformed values when it is read (formats, cache modes, MAC syntax, machine and CPU
//! names); here are the checks that need the host, qemu's own lists, or the other VMs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use thiserror::Error;
use uuid::Uuid;

use super::argv::{self, ArgvError};
use super::definition::{DiskDef, DomainDef, MacAddr, NicSource};
use super::lifecycle::DomainError;
use super::qemu_caps::{self, CapsError, QemuCaps};
use super::runtime::RunDir;
use crate::inventory::Inventory;
use crate::names::NameError;
use crate::paths::Kind;
use crate::state::Store;
use crate::storage::{image, Users};

/// The device classes `boot_order` may name.
pub const BOOT_CLASSES: [&str; 3] = ["hd", "cdrom", "network"];

#[derive(Debug, Error)]
pub enum ValidateError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("memory {value} MiB: must be between 1 and the host's {host} MiB")]
    Memory { value: u64, host: u64 },
    #[error("vcpus {value}: must be between 1 and the host's {host}")]
    VcpusHost { value: u32, host: u32 },
    #[error("vcpus {value}: machine type '{machine}' takes at most {max}")]
    VcpusMachine { value: u32, machine: String, max: u32 },
    #[error("maxmemory {max} MiB is below memory {memory} MiB")]
    MaxMemory { max: u64, memory: u64 },
    #[error("maxMemory.slots {slots}: must be between 1 and 256 (qemu's limit of memory slots)")]
    MemorySlots { slots: u32 },
    #[error("vcpus {vcpus} is more than maxvcpus {max}")]
    VcpusAboveMax { vcpus: u32, max: u32 },
    #[error("vcpus {vcpus} is more than the topology's sockets * cores * threads = {product}")]
    VcpusAboveTopology { vcpus: u32, product: u64 },
    #[error("cpu topology sockets={sockets},cores={cores},threads={threads}: each must be at least 1")]
    TopologyZero { sockets: u32, cores: u32, threads: u32 },
    #[error(
        "cpu topology sockets={sockets} * cores={cores} * threads={threads} = {product} must equal maxvcpus {max} \
         (qemu requires the product of the topology to match maxcpus)"
    )]
    Topology { sockets: u32, cores: u32, threads: u32, product: u64, max: u32 },
    #[error("machine \"{value}\" is not a machine type of {qemu} (`{} -machine help` lists them)", qemu_caps::QEMU)]
    Machine { value: String, qemu: String },
    #[error("cpu \"{value}\" is not a CPU model of {qemu} (`{} -cpu help` lists them)", qemu_caps::QEMU)]
    Cpu { value: String, qemu: String },
    #[error("boot_order \"{value}\" is not one of hd, cdrom, network")]
    BootOrder { value: String },
    #[error("{field} {reason}")]
    Text { field: &'static str, reason: &'static str },
    #[error("nic {index}: {reason}")]
    HostFwd { index: usize, reason: String },
    #[error("nic {index}: mac {mac} is {what}: a NIC needs a unicast, non-zero MAC")]
    MacKind { index: usize, mac: MacAddr, what: &'static str },
    #[error("nic {index}: mac {mac} is already used by {by}")]
    MacUsed { index: usize, mac: MacAddr, by: String },
    #[error("uuid {uuid} is already used by domain '{other}'")]
    UuidUsed { uuid: Uuid, other: String },
    #[error("disk {index}: {path} is already used by {by} (make it shareable or readonly to share it)")]
    DiskUsed { index: usize, path: String, by: String },
    #[error("disk {index}: {path} is in use by a running qemu")]
    DiskLocked { index: usize, path: String },
    #[error(transparent)]
    Argv(#[from] ArgvError),
    #[error("cannot check the machine type and CPU model: {0}")]
    Caps(#[from] CapsError),
}

/// The host's memory and CPUs, the bounds of `memory_mib` and `vcpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub memory_mib: u64,
    pub cpus: u32,
}

impl HostLimits {
    pub fn probe() -> HostLimits {
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(u64::MAX / 1024);
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        HostLimits { memory_mib: mem_kib / 1024, cpus }
    }
}

/// Why the definition is checked: the cross-VM disk check applies to the disks it adds.
#[derive(Debug, Clone, Copy)]
pub enum Purpose<'a> {
    /// install, or define of a new name: every disk is new.
    New,
    /// define or edit of an existing VM: disks it had already are not checked again
    /// (`clone --skip-copy` shares a writable disk on purpose).
    Update { previous: &'a DomainDef },
    /// start: nothing is added; qemu's image locks are checked.
    Start,
}

/// The checks that need only the definition, the host and qemu's lists.
pub fn check_def(def: &DomainDef, host: &HostLimits, caps: &QemuCaps) -> Result<(), ValidateError> {
    crate::names::validate("domain", &def.name)?;
    if def.memory_mib == 0 || def.memory_mib > host.memory_mib {
        return Err(ValidateError::Memory { value: def.memory_mib, host: host.memory_mib });
    }
    if def.vcpus == 0 || def.vcpus > host.cpus {
        return Err(ValidateError::VcpusHost { value: def.vcpus, host: host.cpus });
    }
    let machine = caps
        .machine(def.machine.as_str())
        .ok_or_else(|| ValidateError::Machine { value: def.machine.to_string(), qemu: caps.qemu.clone() })?;
    check_topology(def)?;
    if def.vcpus_max() > machine.cpu_max {
        return Err(ValidateError::VcpusMachine {
            value: def.vcpus_max(),
            machine: def.machine.to_string(),
            max: machine.cpu_max,
        });
    }
    if let Some(cpu) = def.cpu.as_ref().filter(|c| !caps.has_cpu(c.as_str())) {
        return Err(ValidateError::Cpu { value: cpu.to_string(), qemu: caps.qemu.clone() });
    }
    if let Some(b) = def.boot_order.iter().find(|b| !BOOT_CLASSES.contains(&b.as_str())) {
        return Err(ValidateError::BootOrder { value: b.escape_debug().to_string() });
    }
    check_text("title", def.title.as_deref(), 256, false)?;
    check_text("description", def.description.as_deref(), 8192, true)?;
    for (i, n) in def.nics.iter().enumerate() {
        let what = if n.mac.is_zero() {
            "all zero"
        } else if n.mac.0 == [0xff; 6] {
            "the broadcast address"
        } else if n.mac.is_multicast() {
            "multicast"
        } else {
            continue;
        };
        return Err(ValidateError::MacKind { index: i + 1, mac: n.mac, what });
    }
    check_hostfwd(def)?;
    argv::check(def)?;
    Ok(())
}

/// maxmemory and its slots; maxvcpus and the topology, whose product qemu requires to be the
/// maximum.
fn check_topology(def: &DomainDef) -> Result<(), ValidateError> {
    if let Some(m) = def.max_memory {
        if m.mib < def.memory_mib {
            return Err(ValidateError::MaxMemory { max: m.mib, memory: def.memory_mib });
        }
        if m.slots == 0 || m.slots > 256 {
            return Err(ValidateError::MemorySlots { slots: m.slots });
        }
    }
    if let Some(t) = def.topology {
        let (sockets, cores, threads) = (t.sockets, t.cores, t.threads);
        if sockets == 0 || cores == 0 || threads == 0 {
            return Err(ValidateError::TopologyZero { sockets, cores, threads });
        }
        let product = sockets as u64 * cores as u64 * threads as u64;
        match def.max_vcpus {
            Some(max) if product != max as u64 => {
                return Err(ValidateError::Topology { sockets, cores, threads, product, max })
            }
            _ if product < def.vcpus as u64 => {
                return Err(ValidateError::VcpusAboveTopology { vcpus: def.vcpus, product })
            }
            _ => {}
        }
    }
    let max = def.vcpus_max();
    if def.vcpus > max {
        return Err(ValidateError::VcpusAboveMax { vcpus: def.vcpus, max });
    }
    Ok(())
}

/// The other defined VMs, as far as they can be read.
pub fn others(store: &Store, name: &str) -> Vec<DomainDef> {
    let names = store.list(Kind::Domain).unwrap_or_default();
    names.iter().filter(|n| *n != name).filter_map(|n| store.load::<DomainDef>(Kind::Domain, n).ok()).collect()
}

/// Port forwards belong to user-mode NICs, one per host port and protocol.
fn check_hostfwd(def: &DomainDef) -> Result<(), ValidateError> {
    let mut seen = std::collections::HashSet::new();
    for (i, n) in def.nics.iter().enumerate() {
        if !n.hostfwd.is_empty() && n.source != NicSource::User {
            let reason = "hostfwd is for user-mode NICs (a tap NIC is reached at its address)".to_string();
            return Err(ValidateError::HostFwd { index: i + 1, reason });
        }
        for f in &n.hostfwd {
            if !seen.insert((f.udp, f.host_addr, f.host_port)) {
                return Err(ValidateError::HostFwd {
                    index: i + 1,
                    reason: format!("host port of {f} is forwarded twice"),
                });
            }
        }
    }
    Ok(())
}

/// Titles and descriptions are shown in tables and on terminals: printable text only.
fn check_text(field: &'static str, text: Option<&str>, max: usize, lines: bool) -> Result<(), ValidateError> {
    let Some(t) = text else { return Ok(()) };
    if t.chars().count() > max {
        return Err(ValidateError::Text { field, reason: "is too long" });
    }
    if t.chars().any(|c| c.is_control() && !(lines && (c == '\n' || c == '\t'))) {
        let reason = if lines { "holds control characters" } else { "must be one line of printable text" };
        return Err(ValidateError::Text { field, reason });
    }
    Ok(())
}

/// The checks against the other VMs: MACs and UUIDs are unique; a writable disk the definition
/// adds is no other VM's. `users_of` answers who else uses an image (`Inventory::users_of`:
/// every defined VM's disks, even of a definition this version cannot load). Overlays on a
/// disk are `start`'s to refuse: a VM may be defined on a base image, not run on it.
pub fn check_relations(
    def: &DomainDef,
    others: &[DomainDef],
    purpose: Purpose,
    users_of: &dyn Fn(&Path) -> Users,
) -> Result<(), ValidateError> {
    if let Some(o) = others.iter().find(|o| o.uuid == def.uuid) {
        return Err(ValidateError::UuidUsed { uuid: def.uuid, other: o.name.clone() });
    }
    let off = |check: &str| def.checks_off.iter().any(|c| c == check);
    let mut seen: HashSet<MacAddr> = HashSet::new();
    for (i, n) in def.nics.iter().enumerate() {
        let by = if !seen.insert(n.mac) {
            "another NIC of this domain".to_string()
        } else if off("mac_in_use") {
            continue;
        } else if let Some(o) = others.iter().find(|o| o.nics.iter().any(|m| m.mac == n.mac)) {
            format!("domain '{}'", o.name)
        } else {
            continue;
        };
        return Err(ValidateError::MacUsed { index: i + 1, mac: n.mac, by });
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let had: Vec<PathBuf> = match purpose {
        Purpose::New => Vec::new(),
        Purpose::Update { previous } => previous.disks.iter().map(|d| canon(&d.path)).collect(),
        Purpose::Start => return Ok(()),
    };
    if off("path_in_use") {
        return Ok(());
    }
    for (i, d) in def.disks.iter().enumerate().filter(|(_, d)| writable(d) && !had.contains(&canon(&d.path))) {
        let domains = users_of(&d.path).domains;
        if !domains.is_empty() {
            let (index, path) = (i + 1, d.path.display().to_string());
            return Err(ValidateError::DiskUsed { index, path, by: domains.join(", ") });
        }
    }
    Ok(())
}

/// A disk this VM writes to without sharing it.
fn writable(d: &DiskDef) -> bool {
    !d.readonly && !d.shareable && d.device != super::definition::DiskDevice::Cdrom
}

/// Writable disks held by a running qemu (qemu's image locks), unless this VM itself runs.
fn check_locks(store: &Store, def: &DomainDef) -> Result<(), ValidateError> {
    if RunDir::of(store, &def.name).alive() {
        return Ok(());
    }
    for (i, d) in
        def.disks.iter().enumerate().filter(|(_, d)| !d.readonly && d.device != super::definition::DiskDevice::Cdrom)
    {
        if image::qemu_lock_holder(&d.path).ok().flatten().is_some() {
            return Err(ValidateError::DiskLocked { index: i + 1, path: d.path.display().to_string() });
        }
    }
    Ok(())
}

/// Every check, with the host and qemu probed (qemu's lists cached, see `qemu_caps`).
pub fn check(store: &Store, def: &DomainDef, purpose: Purpose) -> Result<(), DomainError> {
    let wrap = |source| DomainError::Definition { name: def.name.clone(), source };
    let caps = qemu_caps::probe(&store.paths.run).map_err(|e| wrap(e.into()))?;
    check_def(def, &HostLimits::probe(), &caps).map_err(wrap)?;
    let inventory = match purpose {
        Purpose::Start => None,
        _ => Some(Inventory::read(store)),
    };
    let users_of = |p: &Path| inventory.as_ref().map(|i| i.users_of(p, Some(&def.name))).unwrap_or_default();
    check_relations(def, &others(store, &def.name), purpose, &users_of).map_err(wrap)?;
    check_locks(store, def).map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::definition::{DiskBus, DiskDevice, DiskFormat, NicDef, NicModel, NicSource};
    use crate::domain::qemu_caps::Machine;

    fn caps() -> QemuCaps {
        let m = |name: &str, alias: Option<&str>, cpu_max| Machine {
            name: name.into(),
            alias: alias.map(str::to_string),
            cpu_max,
        };
        QemuCaps {
            qemu: "qemu-system-x86_64 7.2.22".into(),
            machines: vec![m("pc-i440fx-7.2", Some("pc"), 255), m("isapc", None, 1)],
            cpus: vec!["max".into(), "qemu64".into()],
        }
    }

    const HOST: HostLimits = HostLimits { memory_mib: 4096, cpus: 8 };

    fn def(name: &str) -> DomainDef {
        DomainDef::new(name, 256, 1)
    }

    fn disk(path: &str) -> DiskDef {
        DiskDef {
            path: path.into(),
            format: DiskFormat::Qcow2,
            bus: DiskBus::Virtio,
            device: DiskDevice::Disk,
            cache: None,
            readonly: false,
            shareable: false,
            created: false,
        }
    }

    fn nic(mac: &str) -> NicDef {
        NicDef { source: NicSource::User, model: NicModel::Virtio, mac: mac.parse().unwrap(), hostfwd: vec![] }
    }

    fn err(d: &DomainDef) -> String {
        check_def(d, &HOST, &caps()).unwrap_err().to_string()
    }

    #[test]
    fn memory_and_vcpus_are_bounded_by_host_and_machine_type() {
        check_def(&def("ok"), &HOST, &caps()).unwrap();
        let mut d = def("m");
        d.memory_mib = 0;
        assert_eq!(err(&d), "memory 0 MiB: must be between 1 and the host's 4096 MiB");
        d.memory_mib = 4097;
        assert_eq!(err(&d), "memory 4097 MiB: must be between 1 and the host's 4096 MiB");
        let mut d = def("v");
        d.vcpus = 0;
        assert_eq!(err(&d), "vcpus 0: must be between 1 and the host's 8");
        d.vcpus = 9;
        assert_eq!(err(&d), "vcpus 9: must be between 1 and the host's 8");
        d.vcpus = 2;
        d.machine = "isapc".parse().unwrap();
        assert_eq!(err(&d), "vcpus 2: machine type 'isapc' takes at most 1");
    }

    #[test]
    fn topology_product_must_equal_maxvcpus_and_maxmemory_needs_room_and_slots() {
        use crate::domain::definition::{CpuTopology, MaxMemory};
        let mut d = def("t");
        d.vcpus = 2;
        d.max_vcpus = Some(4);
        d.topology = Some(CpuTopology { sockets: 1, cores: 2, threads: 2 });
        check_def(&d, &HOST, &caps()).unwrap();
        d.topology = Some(CpuTopology { sockets: 2, cores: 2, threads: 2 });
        assert_eq!(
            err(&d),
            "cpu topology sockets=2 * cores=2 * threads=2 = 8 must equal maxvcpus 4 (qemu requires the product of \
             the topology to match maxcpus)"
        );
        d.max_vcpus = None;
        d.vcpus = 4;
        d.topology = Some(CpuTopology { sockets: 1, cores: 2, threads: 1 });
        assert_eq!(err(&d), "vcpus 4 is more than the topology's sockets * cores * threads = 2");
        d.topology = Some(CpuTopology { sockets: 0, cores: 2, threads: 1 });
        assert!(err(&d).ends_with("each must be at least 1"));
        d.topology = None;
        d.max_vcpus = Some(2);
        assert_eq!(err(&d), "vcpus 4 is more than maxvcpus 2");
        d.max_vcpus = Some(300);
        assert_eq!(err(&d), "vcpus 300: machine type 'pc' takes at most 255");
        let mut d = def("m");
        d.max_memory = Some(MaxMemory { mib: 128, slots: 2 });
        assert_eq!(err(&d), "maxmemory 128 MiB is below memory 256 MiB");
        d.max_memory = Some(MaxMemory { mib: 1024, slots: 0 });
        assert!(err(&d).starts_with("maxMemory.slots 0: must be between 1 and 256"));
        d.max_memory = Some(MaxMemory { mib: 1024, slots: 4 });
        check_def(&d, &HOST, &caps()).unwrap();
    }

    #[test]
    fn machine_and_cpu_come_from_qemus_lists() {
        let mut d = def("m");
        d.machine = "pc-i440fx-7.2".parse().unwrap();
        check_def(&d, &HOST, &caps()).unwrap();
        d.machine = "virt".parse().unwrap();
        assert_eq!(
            err(&d),
            "machine \"virt\" is not a machine type of qemu-system-x86_64 7.2.22 (`qemu-system-x86_64 -machine help` lists them)"
        );
        let mut d = def("c");
        d.cpu = Some("qemu64".parse().unwrap());
        check_def(&d, &HOST, &caps()).unwrap();
        d.cpu = Some("Skylake-Nope".parse().unwrap());
        assert!(err(&d).starts_with("cpu \"Skylake-Nope\" is not a CPU model of qemu-system-x86_64 7.2.22"));
    }

    #[test]
    fn a_nic_needs_a_unicast_nonzero_mac() {
        for (mac, what) in [
            ("00:00:00:00:00:00", "all zero"),
            ("ff:ff:ff:ff:ff:ff", "the broadcast address"),
            ("01:00:5e:00:00:01", "multicast"),
            ("53:54:00:00:00:01", "multicast"),
        ] {
            let mut d = def("n");
            d.nics.push(nic("52:54:00:00:00:01"));
            d.nics.push(nic(mac));
            assert_eq!(err(&d), format!("nic 2: mac {mac} is {what}: a NIC needs a unicast, non-zero MAC"));
        }
    }

    #[test]
    fn name_boot_order_and_paths_are_checked() {
        let mut d = def("a,b");
        assert!(err(&d).contains("domain name 'a,b' contains ','"), "{}", err(&d));
        d = def("b");
        d.boot_order = vec!["hd".into(), "floppy".into()];
        assert_eq!(err(&d), "boot_order \"floppy\" is not one of hd, cdrom, network");
        d = def("p");
        d.disks.push(disk("images/x.qcow2"));
        assert!(err(&d).starts_with("disk 1 path \"images/x.qcow2\" is not absolute"), "{}", err(&d));
    }

    #[test]
    fn macs_uuids_and_writable_disks_are_not_shared_with_other_vms() {
        let mut other = def("other");
        other.nics.push(nic("52:54:00:00:00:01"));
        other.disks.push(disk("/nonexistent/other.qcow2"));
        let others = [other.clone()];
        // Who uses what, as the inventory tells (here: other's disk).
        let users_of = |p: &Path| match p.to_str().unwrap() {
            "/nonexistent/other.qcow2" => Users { domains: vec!["domain 'other'".into()], overlays: vec![] },
            _ => Users::default(),
        };
        let check = |d: &DomainDef, purpose| check_relations(d, &others, purpose, &users_of);
        let mut d = def("new");
        d.nics.push(nic("52:54:00:00:00:01"));
        let e = check(&d, Purpose::New).unwrap_err().to_string();
        assert_eq!(e, "nic 1: mac 52:54:00:00:00:01 is already used by domain 'other'");
        d.nics = vec![nic("52:54:00:00:00:02"), nic("52:54:00:00:00:02")];
        let e = check(&d, Purpose::New).unwrap_err().to_string();
        assert_eq!(e, "nic 2: mac 52:54:00:00:00:02 is already used by another NIC of this domain");
        d.nics.pop();
        d.uuid = other.uuid;
        let e = check(&d, Purpose::New).unwrap_err().to_string();
        assert_eq!(e, format!("uuid {} is already used by domain 'other'", other.uuid));
        d.uuid = Uuid::new_v4();
        d.disks.push(disk("/nonexistent/other.qcow2"));
        let e = check(&d, Purpose::New).unwrap_err().to_string();
        assert!(e.starts_with("disk 1: /nonexistent/other.qcow2 is already used by domain 'other'"), "{e}");
        // Shared on purpose, or a disk the VM already had (clone --skip-copy), or at start.
        let previous = d.clone();
        check(&d, Purpose::Update { previous: &previous }).unwrap();
        check(&d, Purpose::Start).unwrap();
        d.disks[0].shareable = true;
        check(&d, Purpose::New).unwrap();
        d.disks[0].shareable = false;
        d.disks[0].readonly = true;
        check(&d, Purpose::New).unwrap();
    }
}
