//! `clone` (virt-clone): a new VM from a shut-off (or paused) one, with new UUID, MACs and
//! disks; full sparse copies (all disks at once) or linked qcow2 overlays in constant time.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::definition::{DiskDef, DomainDef};
use super::lifecycle::DomainError;
use super::runtime::{observed, RunDir, VmState};
use crate::paths::Kind;
use crate::state::{Revert, Store, TempFile, Undo};
use crate::storage::copy::copy_image;
use crate::storage::image::{self, Format, Source};
use crate::storage::qcow2::{self, Backing, Qcow2Writer};

#[derive(Debug, Clone, Default)]
pub struct CloneOpts {
    pub original: String,
    pub name: String,
    /// `--file`: new disk paths, in the order of the writable disks.
    pub files: Vec<PathBuf>,
    /// `--mac`: new MACs in NIC order (`RANDOM` = generated).
    pub macs: Vec<String>,
    pub uuid: Option<Uuid>,
    pub linked: bool,
    /// `--skip-copy TARGET`: the clone uses the source's disk as it is.
    pub skip_copy: Vec<String>,
    /// `--preserve-data`: the `--file` paths exist and are used as they are.
    pub preserve_data: bool,
    pub nonsparse: bool,
    /// Full copies: write their clusters compressed (qcow2 disks only).
    pub compress: bool,
    /// Full copies: fsync them before they are linked into place.
    pub sync: bool,
    /// `--replace`: a shut-off VM of the new name is replaced (it and its own disks removed
    /// once the clone is made).
    pub replace: bool,
    /// `--reflink`: full copies share the source's extents (FICLONE), or the clone fails.
    pub reflink: bool,
    /// `--check`.
    pub checks: super::install_spec::Checks,
}

fn bad(name: &str, what: impl Into<String>) -> DomainError {
    DomainError::Invalid { name: name.into(), what: what.into() }
}

/// One disk's plan: where it comes from and where it goes (None: shared as it is).
#[derive(Debug, Clone)]
pub struct DiskPlan {
    pub target: String,
    pub from: PathBuf,
    /// The source disk's format as its definition records it (never probed).
    pub format: Format,
    pub to: Option<PathBuf>,
}

/// What `plan` decided: the new definition, the disk work, the VM it replaces.
#[derive(Debug, Clone)]
pub struct ClonePlan {
    pub def: DomainDef,
    pub disks: Vec<DiskPlan>,
    /// `--replace`: the definition of the shut-off VM the clone replaces.
    pub replaced: Option<DomainDef>,
}

/// `--replace`: the VM of the new name, which must be shut off and whose writable disks no
/// other VM or overlay uses (they are removed with it).
fn replaceable(store: &Store, o: &CloneOpts) -> Result<DomainDef, DomainError> {
    if o.name == o.original {
        return Err(bad(&o.name, "--replace: a VM cannot replace itself with its clone"));
    }
    let old: DomainDef = store.load(Kind::Domain, &o.name)?;
    super::adopt::ensure_supervised(store, &o.name);
    let (state, _) = observed(&RunDir::of(store, &o.name));
    if !matches!(state, VmState::Shutoff | VmState::Crashed) {
        return Err(bad(
            &o.name,
            format!("--replace: it is {}; shut it off first (it is not replaced while it runs)", state.as_str()),
        ));
    }
    let inventory = crate::inventory::Inventory::read(store);
    for d in old.disks.iter().filter(|d| own_disk(d)) {
        let users = inventory.users_of(&d.path, Some(&o.name));
        if !users.is_empty() {
            return Err(bad(
                &o.name,
                format!("--replace: its disk {} is also used by {users}; it is not replaced", d.path.display()),
            ));
        }
    }
    Ok(old)
}

/// A disk that goes with its VM when `--replace` removes it: writable and not shared.
fn own_disk(d: &DiskDef) -> bool {
    !d.readonly && !d.shareable && d.device != super::definition::DiskDevice::Cdrom
}

/// The new definition and the disk work it needs (nothing is created here).
pub fn plan(store: &Store, o: &CloneOpts) -> Result<ClonePlan, DomainError> {
    crate::names::validate("domain", &o.name).map_err(|e| bad(&o.name, e.to_string()))?;
    if o.compress && (o.linked || o.preserve_data) {
        return Err(bad(&o.name, "--compress is for full copies (not with --linked or --preserve-data)"));
    }
    if o.reflink && (o.linked || o.preserve_data || o.compress) {
        return Err(bad(&o.name, "--reflink is for full copies (not with --linked, --preserve-data or --compress)"));
    }
    let src: DomainDef = store.load(Kind::Domain, &o.original)?;
    let replaced = match (store.exists(Kind::Domain, &o.name), o.replace) {
        (false, _) => None,
        (true, true) => Some(replaceable(store, o)?),
        (true, false) => return Err(bad(&o.name, "is already defined (--replace replaces a shut-off VM)")),
    };
    // Paths the replaced VM owns may be written again by the clone.
    let reusable: Vec<PathBuf> = replaced
        .iter()
        .flat_map(|r| r.disks.iter().filter(|d| own_disk(d)).map(|d| d.path.clone()))
        .chain(replaced.iter().filter_map(|r| match &r.firmware {
            super::definition::Firmware::Uefi { nvram, .. } => Some(nvram.clone()),
            _ => None,
        }))
        .collect();
    super::adopt::ensure_supervised(store, &o.original);
    let (state, _) = observed(&RunDir::of(store, &o.original));
    match state {
        VmState::Shutoff | VmState::Crashed => {}
        VmState::Paused if !o.linked => {}
        VmState::Paused => {
            return Err(bad(
                &o.original,
                "is paused: a linked clone needs it shut off (its disks would keep changing under the overlays)",
            ))
        }
        other => {
            return Err(bad(&o.original, format!("is {}: shut it off (or pause it) before cloning", other.as_str())))
        }
    }
    let mut def = src.clone();
    def.name = o.name.clone();
    def.uuid = o.uuid.unwrap_or_else(Uuid::new_v4);
    def.autostart = false;
    // The replaced VM's MACs are free again.
    let mut used: std::collections::HashSet<_> = super::install::defined_macs(store);
    if let Some(r) = &replaced {
        for n in &r.nics {
            used.remove(&n.mac);
        }
    }
    let taken = used.clone();
    let mut assigned = std::collections::HashSet::new();
    for (i, nic) in def.nics.iter_mut().enumerate() {
        nic.mac = match o.macs.get(i).map(String::as_str) {
            None | Some("RANDOM") => super::install::random_mac(&used),
            Some(m) => {
                let p: crate::network::MacAddr = m.parse().map_err(|e| bad(&o.name, format!("--mac {m}: {e}")))?;
                if p.is_multicast() || p.is_zero() {
                    return Err(bad(&o.name, format!("--mac {m}: must be unicast and non-zero")));
                }
                if assigned.contains(&p) {
                    return Err(bad(&o.name, format!("--mac {m}: given to two NICs")));
                }
                if taken.contains(&p) && o.checks.mac_in_use {
                    return Err(bad(
                        &o.name,
                        format!("--mac {m}: is used by another VM (--check mac_in_use=off allows it)"),
                    ));
                }
                p
            }
        };
        used.insert(nic.mac);
        assigned.insert(nic.mac);
    }
    if !o.checks.mac_in_use && def.nics.iter().any(|n| taken.contains(&n.mac)) {
        def.checks_off.push("mac_in_use".into());
    }
    if !o.checks.path_in_use && o.preserve_data {
        def.checks_off.push("path_in_use".into());
    }
    def.checks_off.sort();
    def.checks_off.dedup();
    // A UEFI VM's variable store is copied for the clone (execute copies it).
    if let super::definition::Firmware::Uefi { nvram, .. } = &mut def.firmware {
        let new = nvram.with_file_name(format!("{}_VARS.fd", o.name));
        if new.exists() && !reusable.contains(&new) {
            return Err(bad(&o.name, format!("NVRAM {} already exists", new.display())));
        }
        *nvram = new;
    }
    let targets = super::libvirt_xml::target_names(&src);
    let mut plans = Vec::new();
    let mut files = o.files.iter();
    let mut n = 0;
    for (d, target) in def.disks.iter_mut().zip(targets) {
        let format = d.format;
        // Read-only and shareable disks (CDs, shared data) are shared, not copied.
        if d.readonly || d.shareable || o.skip_copy.contains(&target) {
            plans.push(DiskPlan { target, from: d.path.clone(), format, to: None });
            continue;
        }
        let to = match files.next() {
            Some(f) => absolute(f),
            None => derived_path(&d.path, &o.name, n),
        };
        n += 1;
        if o.preserve_data {
            if !to.is_file() {
                return Err(bad(&o.name, format!("--preserve-data: {} does not exist", to.display())));
            }
            if o.checks.path_in_use {
                let users = crate::inventory::Inventory::read(store).users_of(&to, Some(&o.name));
                if !users.domains.is_empty() {
                    return Err(bad(
                        &o.name,
                        format!(
                            "--preserve-data: {} is used by {} (--check path_in_use=off allows it)",
                            to.display(),
                            users.domains.join(", ")
                        ),
                    ));
                }
            }
        } else if to.exists() && !reusable.contains(&to) {
            return Err(bad(&o.name, format!("disk {} already exists (name another with --file)", to.display())));
        }
        if o.compress && format != Format::Qcow2 && !o.preserve_data {
            return Err(bad(&o.name, format!("--compress needs qcow2 output: disk {target} is {format}")));
        }
        plans.push(DiskPlan { target, from: d.path.clone(), format, to: Some(to.clone()) });
        *d = DiskDef { path: to, created: true, format: if o.linked { Format::Qcow2 } else { d.format }, ..d.clone() };
    }
    if o.checks.disk_size && !o.preserve_data && !o.linked {
        check_space(store, &o.name, &plans)?;
    }
    Ok(ClonePlan { def, disks: plans, replaced })
}

/// virt-clone's disk_size check: the full copies fit in the free space where they go (their
/// sources' allocated bytes; a reflinked copy is counted too, as the filesystem may need it).
fn check_space(store: &Store, vm: &str, plans: &[DiskPlan]) -> Result<(), DomainError> {
    use std::os::unix::fs::MetadataExt;
    let _ = store;
    let mut per_dev: Vec<(u64, PathBuf, u64)> = Vec::new();
    for p in plans {
        let Some(to) = &p.to else { continue };
        let dir = to.parent().unwrap_or(Path::new("/")).to_path_buf();
        let Ok(meta) = std::fs::metadata(&dir) else { continue };
        let need = std::fs::metadata(&p.from).map(|m| m.blocks() * 512).unwrap_or(0);
        match per_dev.iter_mut().find(|(dev, _, _)| *dev == meta.dev()) {
            Some(e) => e.2 += need,
            None => per_dev.push((meta.dev(), dir, need)),
        }
    }
    for (_, dir, need) in per_dev {
        let Some(u) = crate::storage::pool::fs_usage(&dir) else { continue };
        if need > u.available {
            return Err(bad(
                vm,
                format!(
                    "the copies need {} in {}, which has {} free (--check disk_size=off to try anyway)",
                    crate::size::human(need),
                    dir.display(),
                    crate::size::human(u.available)
                ),
            ));
        }
    }
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// virt-clone's names: `<new>.qcow2`, `<new>-1.qcow2`… beside the source disk.
fn derived_path(src: &Path, new: &str, n: usize) -> PathBuf {
    let ext = src.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let stem = if n == 0 { new.to_string() } else { format!("{new}-{n}") };
    src.parent().unwrap_or(Path::new(".")).join(format!("{stem}{ext}"))
}

/// Make the disks (all at once, one thread each) and write the definition; on any failure,
/// or after a kill (journaled: the next command on the new name undoes it), every file this
/// clone made is removed and nothing is defined. With `--replace`, the replaced VM is touched
/// only once every copy is made: its definition is overwritten, then its own disks and NVRAM
/// that the clone does not reuse are removed. The caller holds the new name's lock.
pub fn execute(
    store: &Store,
    o: &CloneOpts,
    plan: &ClonePlan,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), DomainError> {
    let def = &plan.def;
    let journal = |e: std::io::Error| bad(&def.name, format!("cannot write the clone journal: {e}"));
    let mut revert = Revert::journaled(&store.paths, Kind::Domain, &def.name, "clone").map_err(journal)?;
    if !o.preserve_data {
        place_disks(store, o, def, &plan.disks, progress, &mut revert)?;
    }
    copy_nvram(store, o, def, &mut revert)?;
    match &plan.replaced {
        None => {
            revert.add(Undo::File(store.paths.def_file(Kind::Domain, &def.name))).map_err(journal)?;
            store.create(Kind::Domain, &def.name, def)?;
        }
        Some(_) => store.save(Kind::Domain, &def.name, def)?,
    }
    crate::events::domain(&store.paths.run, &def.name, crate::events::What::Defined, "cloned");
    crate::fault::point("clone.defined");
    revert.commit();
    if let Some(old) = &plan.replaced {
        remove_replaced(store, old, def);
    }
    Ok(())
}

/// What `--replace` leaves of the replaced VM: nothing its clone does not use.
fn remove_replaced(store: &Store, old: &DomainDef, new: &DomainDef) {
    let kept: Vec<&Path> = new.disks.iter().map(|d| d.path.as_path()).collect();
    let mut gone: Vec<PathBuf> = old.disks.iter().filter(|d| own_disk(d)).map(|d| d.path.clone()).collect();
    if let (super::definition::Firmware::Uefi { nvram, .. }, new_fw) = (&old.firmware, &new.firmware) {
        if !matches!(new_fw, super::definition::Firmware::Uefi { nvram: n, .. } if n == nvram) {
            gone.push(nvram.clone());
        }
    }
    for p in gone.iter().filter(|p| !kept.contains(&p.as_path())) {
        match std::fs::remove_file(p) {
            Ok(()) => tracing::info!(path = %p.display(), "removed a disk of the replaced VM"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: --replace: cannot remove {} of the replaced VM: {e}", p.display()),
        }
    }
    // Its runtime dir (state of its last run) and VNC secret go with it; the VM is shut off.
    let rd = RunDir::of(store, &old.name);
    if !rd.alive() {
        let _ = std::fs::remove_dir_all(&rd.dir);
    }
    let _ = std::fs::remove_file(store.paths.vnc_password(&old.name));
}

/// The source's NVRAM, copied to the clone's path.
fn copy_nvram(store: &Store, o: &CloneOpts, def: &DomainDef, revert: &mut Revert) -> Result<(), DomainError> {
    let super::definition::Firmware::Uefi { nvram: to, .. } = &def.firmware else { return Ok(()) };
    let src: DomainDef = store.load(Kind::Domain, &o.original)?;
    let super::definition::Firmware::Uefi { nvram: from, .. } = &src.firmware else { return Ok(()) };
    revert.add(Undo::File(to.clone())).map_err(|e| bad(&def.name, format!("cannot write the clone journal: {e}")))?;
    std::fs::copy(from, to).map_err(|e| bad(&def.name, format!("copying NVRAM {}: {e}", from.display())))?;
    crate::fault::point("clone.nvram");
    Ok(())
}

fn place_disks(
    store: &Store,
    o: &CloneOpts,
    def: &DomainDef,
    plans: &[DiskPlan],
    progress: &(dyn Fn(u64, u64) + Sync),
    revert: &mut Revert,
) -> Result<(), DomainError> {
    let work: Vec<&DiskPlan> = plans.iter().filter(|p| p.to.is_some()).collect();
    let total: u64 = work.iter().map(|p| std::fs::metadata(&p.from).map(|m| m.len()).unwrap_or(0)).sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    let policy = crate::storage::pool::backing_policy(store);
    let results: Vec<Result<TempFile, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = work
            .iter()
            .map(|p| {
                let (done, policy) = (&done, &policy);
                s.spawn(move || {
                    let to = p.to.as_ref().expect("planned");
                    let src = Source { path: &p.from, format: p.format, backing: policy };
                    let place = place_label(store, to);
                    make_disk(src, to, &place, o, &|d| {
                        progress(done.fetch_add(d, std::sync::atomic::Ordering::Relaxed) + d, total)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("copy thread panicked".into()))).collect()
    });
    let mut temps = Vec::new();
    let mut first_err = None;
    for (r, p) in results.into_iter().zip(&work) {
        match r {
            Ok(t) => temps.push((t, p.to.clone().expect("planned"))),
            Err(e) => {
                first_err.get_or_insert(bad(&def.name, format!("disk {}: {e}", p.target)));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e); // the temp files are removed as they drop
    }
    for (t, to) in temps {
        revert
            .add(Undo::File(to.clone()))
            .map_err(|e| bad(&def.name, format!("cannot write the clone journal: {e}")))?;
        // A path of the VM being replaced is written over (rename); any other must be new.
        let linked_in = if o.replace && to.exists() {
            t.commit(&to)
        } else if o.sync || o.linked {
            t.commit_new(&to)
        } else {
            t.link_new(&to)
        };
        if let Err(e) = linked_in {
            // Not ours: a file that appeared there meanwhile stays.
            let _ = revert.forget(&to);
            return Err(bad(&def.name, format!("{}: {e}", to.display())));
        }
        crate::fault::point("clone.placed");
    }
    Ok(())
}

/// One new disk, written to a temp file beside its destination; the source is read with the
/// format its definition records.
fn make_disk(src: Source, to: &Path, place: &str, o: &CloneOpts, progress: &dyn Fn(u64)) -> Result<TempFile, String> {
    let (linked, nonsparse, sync) = (o.linked, o.nonsparse, o.sync);
    let from = src.path;
    let info = image::inspect_as(from, src.format).map_err(|e| format!("{}: {e}", from.display()))?;
    if let Some(p) = info.problem {
        return Err(format!("{}: {p}", from.display()));
    }
    let mut tmp = TempFile::new_beside(to, 0o600).map_err(|e| format!("{}: {e}", to.display()))?;
    if linked {
        let backing = Backing { file: from.to_string_lossy().into_owned(), format: src.format.to_string() };
        if !qcow2::backing_name_fits(&backing.file) {
            return Err(format!("backing path {} is too long", backing.file));
        }
        Qcow2Writer::new(tmp.file(), info.capacity, Some(backing))
            .map_err(|e| e.to_string())?
            .finish()
            .map_err(|e| e.to_string())?;
    } else if o.reflink {
        if info.backing_file.is_some() {
            return Err(format!(
                "--reflink copies {} as it is, and it has a backing file: clone without --reflink to flatten it",
                from.display()
            ));
        }
        reflink(from, tmp.file(), to, place)?;
        progress(std::fs::metadata(from).map(|m| m.len()).unwrap_or(0));
        if sync {
            tmp.file().sync_all().map_err(|e| e.to_string())?;
        }
    } else {
        let out = tmp.file().try_clone().map_err(|e| e.to_string())?;
        let mut last = 0u64;
        copy_image(src, &out, to, src.format, o.compress, sync, "clone.copy", &mut |d, _| {
            progress(d - last);
            last = d;
        })
        .map_err(|e| e.to_string())?;
        // qcow2 allocates by cluster as data arrives: only raw copies can be allocated in full.
        if nonsparse && info.format == Format::Raw {
            nix::fcntl::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&out),
                nix::fcntl::FallocateFlags::empty(),
                0,
                info.capacity as i64,
            )
            .map_err(|e| format!("fallocate: {e}"))?;
        }
    }
    Ok(tmp)
}

/// Where a new disk goes, for messages: "pool 'NAME'" when its directory is a pool's.
fn place_label(store: &Store, to: &Path) -> String {
    let dir = to.parent().unwrap_or(Path::new("/"));
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let pools = crate::storage::pool::list(store).unwrap_or_default();
    match pools.into_iter().flatten().find(|p| canon(&p.target) == canon(dir)) {
        Some(p) => format!("pool '{}'", p.name),
        None => dir.display().to_string(),
    }
}

/// FICLONE: `out` shares `from`'s extents (copy-on-write), in constant time, or an error that
/// says the filesystem cannot.
fn reflink(from: &Path, out: &std::fs::File, to: &Path, place: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let src = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open for the call.
    let rc = unsafe { libc::ioctl(out.as_raw_fd(), libc::FICLONE as _, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    let dir = place;
    Err(match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL) => {
            format!("--reflink: the filesystem of {dir} cannot reflink ({e}); clone without --reflink to copy")
        }
        Some(libc::EXDEV) => format!(
            "--reflink: {} and {dir} are on different filesystems, which cannot share extents ({e})",
            from.display()
        ),
        _ => format!("--reflink: FICLONE {} -> {}: {e}", from.display(), to.display()),
    })
}
