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

/// The new definition and the disk work it needs (nothing is created here).
pub fn plan(store: &Store, o: &CloneOpts) -> Result<(DomainDef, Vec<DiskPlan>), DomainError> {
    crate::names::validate("domain", &o.name).map_err(|e| bad(&o.name, e.to_string()))?;
    if o.compress && (o.linked || o.preserve_data) {
        return Err(bad(&o.name, "--compress is for full copies (not with --linked or --preserve-data)"));
    }
    let src: DomainDef = store.load(Kind::Domain, &o.original)?;
    if store.exists(Kind::Domain, &o.name) {
        return Err(bad(&o.name, "is already defined"));
    }
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
    let mut used = super::install::defined_macs(store);
    for (i, nic) in def.nics.iter_mut().enumerate() {
        nic.mac = match o.macs.get(i).map(String::as_str) {
            None | Some("RANDOM") => super::install::random_mac(&used),
            Some(m) => {
                let p: crate::network::MacAddr = m.parse().map_err(|e| bad(&o.name, format!("--mac {m}: {e}")))?;
                if p.is_multicast() || p.is_zero() || used.contains(&p) {
                    return Err(bad(&o.name, format!("--mac {m}: must be unicast, non-zero and unused")));
                }
                p
            }
        };
        used.insert(nic.mac);
    }
    // A UEFI VM's variable store is copied for the clone (execute copies it).
    if let super::definition::Firmware::Uefi { nvram, .. } = &mut def.firmware {
        let new = nvram.with_file_name(format!("{}_VARS.fd", o.name));
        if new.exists() {
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
        } else if to.exists() {
            return Err(bad(&o.name, format!("disk {} already exists (name another with --file)", to.display())));
        }
        if o.compress && format != Format::Qcow2 && !o.preserve_data {
            return Err(bad(&o.name, format!("--compress needs qcow2 output: disk {target} is {format}")));
        }
        plans.push(DiskPlan { target, from: d.path.clone(), format, to: Some(to.clone()) });
        *d = DiskDef { path: to, created: true, format: if o.linked { Format::Qcow2 } else { d.format }, ..d.clone() };
    }
    Ok((def, plans))
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
/// clone made is removed and nothing is defined. The caller holds the new name's lock.
pub fn execute(
    store: &Store,
    o: &CloneOpts,
    def: &DomainDef,
    plans: &[DiskPlan],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), DomainError> {
    let journal = |e: std::io::Error| bad(&def.name, format!("cannot write the clone journal: {e}"));
    let mut revert = Revert::journaled(&store.paths, Kind::Domain, &def.name, "clone").map_err(journal)?;
    copy_nvram(store, o, def, &mut revert)?;
    if !o.preserve_data {
        place_disks(store, o, def, plans, progress, &mut revert)?;
    }
    revert.add(Undo::File(store.paths.def_file(Kind::Domain, &def.name))).map_err(journal)?;
    store.create(Kind::Domain, &def.name, def)?;
    crate::events::domain(&store.paths.run, &def.name, crate::events::What::Defined, "cloned");
    crate::fault::point("clone.defined");
    revert.commit();
    Ok(())
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
                    make_disk(src, to, o, &|d| {
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
        let linked_in = if o.sync || o.linked { t.commit_new(&to) } else { t.link_new(&to) };
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
fn make_disk(src: Source, to: &Path, o: &CloneOpts, progress: &dyn Fn(u64)) -> Result<TempFile, String> {
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
