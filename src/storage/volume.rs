//! Volumes: image files inside a pool's target directory, addressed by name or by path.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::copy::{copy_bytes, copy_image};
use super::error::{io_at, StorageError};
use super::foreign;
use super::image::{self, Format, ImageInfo, InUse, Source};
use super::pool::{self, PoolDef, PoolState};
use super::qcow2::{self, Backing, Qcow2Writer};
use super::Users;
use crate::state::TempFile;
use crate::{domain, names, process, size, state::Store};

/// A volume found by name in a pool, or by path.
#[derive(Debug, Clone, Serialize)]
pub struct VolRef {
    pub pool: Option<String>,
    pub name: String,
    pub path: PathBuf,
}

/// Progress callback: `(done, total)` bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

fn active_pools(store: &Store) -> Result<Vec<PoolDef>, StorageError> {
    Ok(pool::list(store)?.into_iter().flatten().filter(|p| pool::state(store, p) == PoolState::Active).collect())
}

/// Which active pool (if any) holds the file at `path`.
fn pool_of(store: &Store, path: &Path) -> Option<String> {
    let dir = path.parent()?;
    let dir = fs::canonicalize(dir).ok()?;
    active_pools(store)
        .ok()?
        .into_iter()
        .find(|p| fs::canonicalize(&p.target).ok().as_deref() == Some(dir.as_path()))
        .map(|p| p.name)
}

/// Find a volume: a path (anything with a '/'), or a name in `pool` (or in the one active pool
/// that has it).
pub fn resolve(store: &Store, pool_name: Option<&str>, vol: &str) -> Result<VolRef, StorageError> {
    if vol.contains('/') {
        let path = fs::canonicalize(vol).map_err(io_at(vol))?;
        if !path.is_file() {
            return Err(StorageError::Invalid(format!("volume {} is not a regular file", path.display())));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(VolRef { pool: pool_of(store, &path), name, path });
    }
    names::validate("volume", vol)?;
    if let Some(p) = pool_name {
        let def = pool::active(store, p)?;
        let path = def.target.join(vol);
        if !path.is_file() {
            return Err(StorageError::VolumeNotFound { pool: p.into(), name: vol.into() });
        }
        return Ok(VolRef { pool: Some(p.into()), name: vol.into(), path });
    }
    let found: Vec<PoolDef> = active_pools(store)?.into_iter().filter(|p| p.target.join(vol).is_file()).collect();
    match found.as_slice() {
        [] => Err(StorageError::VolumeNowhere(vol.into())),
        [p] => Ok(VolRef { pool: Some(p.name.clone()), name: vol.into(), path: p.target.join(vol) }),
        many => Err(StorageError::VolumeAmbiguous {
            name: vol.into(),
            pools: many.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// One row of `vol-list`: the inspection result, or why it failed.
#[derive(Debug, Serialize)]
pub struct VolEntry {
    pub name: String,
    pub path: PathBuf,
    #[serde(flatten)]
    pub info: Option<ImageInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn list(store: &Store, pool_name: &str) -> Result<Vec<VolEntry>, StorageError> {
    let def = pool::active(store, pool_name)?;
    let recorded = domain::recorded_formats(store);
    let mut out = Vec::new();
    for entry in fs::read_dir(&def.target).map_err(io_at(&def.target))? {
        let entry = entry.map_err(io_at(&def.target))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Hidden files are kvmctl's own temp files (or not volumes at all).
        if name.starts_with('.') || !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        let path = entry.path();
        let inspected = format_of(&recorded, &path).and_then(|f| image::inspect_as(&path, f).map_err(io_at(&path)));
        let (info, error) = match inspected {
            Ok(i) => (Some(i), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(VolEntry { name, path, info, error });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What the volume is, read with its recorded format.
pub fn info(store: &Store, vref: &VolRef) -> Result<ImageInfo, StorageError> {
    let format = recorded_format(store, &vref.path)?;
    image::inspect_as(&vref.path, format).map_err(io_at(&vref.path))
}

/// Refuse when a running qemu holds the image in a way that conflicts with `need`.
fn check_not_in_use(path: &Path, writing_only: bool, hint: &'static str) -> Result<(), StorageError> {
    match image::qemu_lock_holder(path).map_err(io_at(path))? {
        Some(InUse::Writing) => Err(StorageError::InUse { path: path.into(), how: "open for writing", hint }),
        Some(InUse::Reading) if !writing_only => {
            Err(StorageError::InUse { path: path.into(), how: "open for reading", hint })
        }
        _ => Ok(()),
    }
}

/// A new volume file being written: committed into place only when complete.
struct NewVolume {
    pool: String,
    name: String,
    dest: PathBuf,
    tmp: TempFile,
}

impl NewVolume {
    fn begin(store: &Store, pool_name: &str, name: &str) -> Result<NewVolume, StorageError> {
        names::validate("volume", name)?;
        let def = pool::active(store, pool_name)?;
        let dest = def.target.join(name);
        if dest.exists() {
            return Err(StorageError::VolumeExists { pool: pool_name.into(), name: name.into() });
        }
        let tmp = TempFile::new_beside(&dest, 0o600).map_err(io_at(&dest))?;
        Ok(NewVolume { pool: pool_name.into(), name: name.into(), dest, tmp })
    }

    fn file(&mut self) -> &File {
        self.tmp.file()
    }

    /// Link the finished file into place; `durable`: fsync it first (and the directory after).
    fn commit(self, durable: bool) -> Result<VolRef, StorageError> {
        let NewVolume { pool, name, dest, tmp } = self;
        let linked = if durable { tmp.commit_new(&dest) } else { tmp.link_new(&dest) };
        match linked {
            Ok(()) => Ok(VolRef { pool: Some(pool), name, path: dest }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StorageError::VolumeExists { pool, name }),
            Err(e) => Err(io_at(&dest)(e)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CreateOpts {
    pub capacity: u64,
    pub format: Format,
    pub backing_vol: Option<String>,
    pub backing_format: Option<Format>,
    pub prealloc_metadata: bool,
}

/// The largest capacity of an image: for qcow2 what qemu opens with that cluster size (its L1
/// table limit, `qcow2::max_size`), for raw the largest file length (`off_t`).
pub fn max_capacity(format: Format, cluster_bits: u32) -> u64 {
    match format {
        Format::Qcow2 => qcow2::max_size(cluster_bits),
        Format::Raw => i64::MAX as u64,
    }
}

/// Refuse a capacity above [`max_capacity`], naming `volume`, the size and the maximum.
pub fn check_capacity(volume: &str, format: Format, cluster_bits: u32, size: u64) -> Result<(), StorageError> {
    let max = max_capacity(format, cluster_bits);
    if size <= max {
        return Ok(());
    }
    let bytes = |n: u64| format!("{} ({n} bytes)", size::human(n));
    let limit = match format {
        Format::Qcow2 => {
            let cs = 1u64 << cluster_bits;
            let cluster = if cs >= 1024 { format!("{} KiB", cs >> 10) } else { format!("{cs}-byte") };
            format!("qemu opens a qcow2 image of at most {} with {cluster} clusters", bytes(max))
        }
        Format::Raw => format!("a file holds at most {}", bytes(max)),
    };
    Err(StorageError::TooLarge { volume: volume.to_string(), size: bytes(size), limit })
}

pub fn create_as(store: &Store, pool_name: &str, name: &str, opts: &CreateOpts) -> Result<VolRef, StorageError> {
    let what = format!("volume '{name}' in pool '{pool_name}'");
    check_capacity(&what, opts.format, qcow2::DEFAULT_CLUSTER_BITS, opts.capacity)?;
    if opts.format == Format::Raw && (opts.backing_vol.is_some() || opts.prealloc_metadata) {
        return Err(StorageError::Invalid(format!(
            "volume '{name}': --backing-vol and --prealloc-metadata need --format qcow2"
        )));
    }
    let backing = match &opts.backing_vol {
        None => None,
        Some(b) => Some(backing_for(store, pool_name, b, opts.backing_format)?),
    };
    let mut nv = NewVolume::begin(store, pool_name, name)?;
    let dest = nv.dest.clone();
    match opts.format {
        Format::Raw => nv.file().set_len(opts.capacity).map_err(io_at(&dest))?,
        Format::Qcow2 => {
            let mut w = Qcow2Writer::new(nv.file(), opts.capacity, backing)?;
            if opts.prealloc_metadata {
                w.preallocate_metadata();
            }
            w.finish().map_err(io_at(&dest))?;
        }
    }
    nv.commit(true)
}

/// `vol-create-as --allocation N`: as [`create_as`], with the first N bytes of a raw volume
/// allocated (fallocate) at once; a volume whose allocation fails is removed.
pub fn create_allocated(
    store: &Store,
    pool_name: &str,
    name: &str,
    opts: &CreateOpts,
    allocation: u64,
) -> Result<VolRef, StorageError> {
    check_allocation(name, opts, allocation)?;
    let v = create_as(store, pool_name, name, opts)?;
    if allocation > 0 {
        let f = fs::OpenOptions::new().write(true).open(&v.path).map_err(io_at(&v.path));
        let r = f.and_then(|f| {
            nix::fcntl::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                0,
                allocation as i64,
            )
            .map_err(|e| io_at(&v.path)(e.into()))
        });
        if let Err(e) = r {
            let _ = fs::remove_file(&v.path);
            return Err(e);
        }
    }
    Ok(v)
}

fn check_allocation(name: &str, opts: &CreateOpts, allocation: u64) -> Result<(), StorageError> {
    if allocation > opts.capacity {
        return Err(StorageError::Invalid(format!(
            "volume '{name}': --allocation {allocation} is more than its capacity ({} bytes)",
            opts.capacity
        )));
    }
    if allocation > 0 && opts.format == Format::Qcow2 {
        return Err(StorageError::Invalid(format!(
            "volume '{name}': --allocation applies to raw volumes; a qcow2 volume grows as it is written \
             (--prealloc-metadata allocates its metadata)"
        )));
    }
    Ok(())
}

/// `vol-create-as --print-xml`: the XML of the volume `create_allocated` would make, after
/// the same checks; nothing is created.
pub fn planned_xml(
    store: &Store,
    pool_name: &str,
    name: &str,
    opts: &CreateOpts,
    allocation: u64,
) -> Result<String, StorageError> {
    names::validate("volume", name)?;
    check_capacity(
        &format!("volume '{name}' in pool '{pool_name}'"),
        opts.format,
        qcow2::DEFAULT_CLUSTER_BITS,
        opts.capacity,
    )?;
    check_allocation(name, opts, allocation)?;
    let def = pool::active(store, pool_name)?;
    let path = def.target.join(name);
    if path.exists() {
        return Err(StorageError::Invalid(format!("volume '{name}' already exists in pool '{pool_name}'")));
    }
    let backing = match &opts.backing_vol {
        Some(b) if opts.format == Format::Qcow2 => Some(backing_for(store, pool_name, b, opts.backing_format)?),
        Some(_) => return Err(StorageError::Invalid(format!("volume '{name}': --backing-vol needs --format qcow2"))),
        None => None,
    };
    Ok(super::libvirt_xml::volume_xml(&super::libvirt_xml::VolXml {
        name,
        path: &path,
        format: opts.format,
        capacity: opts.capacity,
        allocation,
        physical: if opts.format == Format::Raw { opts.capacity } else { 0 },
        backing: backing.as_ref().map(|b| (b.file.as_str(), b.format.as_str())),
    }))
}

/// `vol-dumpxml`: the volume as libvirt XML, read with its recorded format.
pub fn dump_xml(store: &Store, vref: &VolRef) -> Result<String, StorageError> {
    let i = info(store, vref)?;
    Ok(super::libvirt_xml::volume_xml(&super::libvirt_xml::VolXml {
        name: &vref.name,
        path: &vref.path,
        format: i.format,
        capacity: i.capacity,
        allocation: i.allocation,
        physical: i.physical,
        backing: i.backing_file.as_deref().map(|f| (f, i.backing_format.as_deref().unwrap_or("raw"))),
    }))
}

/// The backing reference for an overlay on volume `vol`: absolute path and its format.
fn backing_for(store: &Store, pool_name: &str, vol: &str, fmt: Option<Format>) -> Result<Backing, StorageError> {
    let b = resolve(store, Some(pool_name), vol).or_else(|_| resolve(store, None, vol))?;
    check_not_in_use(&b.path, true, "a backing file must not change under its overlays; shut the VM off first")?;
    let format = match fmt {
        Some(f) => f,
        None => recorded_format(store, &b.path)?,
    };
    if format == Format::Qcow2 {
        qcow2::read_header(&b.path)?;
    }
    let file = b.path.to_string_lossy().into_owned();
    if !qcow2::backing_name_fits(&file) {
        return Err(StorageError::Invalid(format!("backing path {file} is too long")));
    }
    Ok(Backing { file, format: format.to_string() })
}

/// `vol-delete`: refused while overlays read through the volume (always) or a defined VM uses
/// it (unless `force`); `users` comes from the caller's inventory.
pub fn delete(vref: &VolRef, force: bool, users: &Users) -> Result<(), StorageError> {
    check_not_in_use(&vref.path, false, "stop the VM first")?;
    users.refuse_overlays(&vref.path, "delete")?;
    if !force && !users.domains.is_empty() {
        return Err(StorageError::UsedBy { path: vref.path.clone(), users: users.to_string() });
    }
    fs::remove_file(&vref.path).map_err(io_at(&vref.path))?;
    if let Some(dir) = vref.path.parent() {
        crate::state::fsync_dir(dir).map_err(io_at(dir))?;
    }
    Ok(())
}

/// `vol-resize`: `capacity` is absolute, or added to the current size with `delta`.
/// Shrinking is refused under overlays (`users`): the data they read through it would go.
pub fn resize(
    store: &Store,
    vref: &VolRef,
    capacity: u64,
    delta: bool,
    shrink: bool,
    users: &Users,
) -> Result<u64, StorageError> {
    let info = info(store, vref)?;
    if let Some(p) = info.problem {
        return Err(StorageError::Invalid(format!("volume {}: {p}", vref.path.display())));
    }
    let new = if delta {
        info.capacity.checked_add(capacity).ok_or_else(|| StorageError::TooLarge {
            volume: format!("volume {}", vref.path.display()),
            size: format!("{} + {capacity} bytes", info.capacity),
            limit: "more than 2^64 bytes".into(),
        })?
    } else {
        capacity
    };
    if new == 0 {
        return Err(StorageError::ZeroCapacity { path: vref.path.clone() });
    }
    if new < info.capacity && !shrink {
        return Err(StorageError::ShrinkRefused {
            path: vref.path.clone(),
            new: size::human(new),
            old: size::human(info.capacity),
        });
    }
    if new < info.capacity {
        users.refuse_overlays(&vref.path, "shrink")?;
    }
    let cluster_bits = match info.format {
        Format::Qcow2 => qcow2::read_header(&vref.path)?.cluster_bits,
        Format::Raw => 0,
    };
    check_capacity(&format!("volume {}", vref.path.display()), info.format, cluster_bits, new)?;
    check_not_in_use(&vref.path, false, "resize a running VM's disk with its block_resize, or shut it off first")?;
    match info.format {
        Format::Raw => {
            let f = fs::OpenOptions::new().write(true).open(&vref.path).map_err(io_at(&vref.path))?;
            f.set_len(new).map_err(io_at(&vref.path))?;
            f.sync_all().map_err(io_at(&vref.path))?;
        }
        Format::Qcow2 => {
            // qemu-img: growing may relocate the L1 table and shrinking must free clusters and
            // fix refcounts; qcow2-rs (and our writer) cannot rewrite an image in place.
            let mut args = vec!["resize".to_string(), "-f".into(), "qcow2".into()];
            if new < info.capacity {
                args.push("--shrink".into());
            }
            args.push(vref.path.to_string_lossy().into_owned());
            args.push(new.to_string());
            process::run("qemu-img", &args, None)?;
        }
    }
    Ok(new)
}

/// `vol-clone`: a full, sparse copy in the source's format, or a qcow2 overlay (`linked`).
/// A full copy waits for the disk only with `sync` (an overlay, a few KiB, always does);
/// with `compress` (full qcow2 copies) its clusters are written compressed.
#[allow(clippy::too_many_arguments)]
pub fn clone(
    store: &Store,
    src: &VolRef,
    pool_name: &str,
    new_name: &str,
    linked: bool,
    compress: bool,
    sync: bool,
    progress: Progress,
) -> Result<VolRef, StorageError> {
    if linked && compress {
        return Err(StorageError::Invalid(
            "--compress makes a full copy; a linked clone has nothing to compress".into(),
        ));
    }
    check_not_in_use(&src.path, true, "shut the VM off (or pause it) before cloning its disk")?;
    let src_info = info(store, src)?;
    let src_format = src_info.format;
    if let Some(p) = &src_info.problem {
        return Err(StorageError::Invalid(format!("volume {}: {p}", src.path.display())));
    }
    let mut nv = NewVolume::begin(store, pool_name, new_name)?;
    let dest = nv.dest.clone();
    if linked {
        let backing = Backing { file: src.path.to_string_lossy().into_owned(), format: src_format.to_string() };
        Qcow2Writer::new(nv.file(), src_info.capacity, Some(backing))?.finish().map_err(io_at(&dest))?;
    } else {
        let out = nv.file().try_clone().map_err(io_at(&dest))?;
        let policy = pool::backing_policy(store);
        let source = Source { path: &src.path, format: src_format, backing: &policy };
        copy_image(source, &out, &dest, src_format, compress, sync, "vol-clone.copy", progress)?;
    }
    nv.commit(sync || linked)
}

/// The format recorded for the image at `path`: the one a defined VM's disk records for it
/// (whatever its content looks like: a guest may write a qcow2 header onto its raw disk), else
/// the one its content shows (a volume no definition names, as libvirt's directory pools probe).
fn recorded_format(store: &Store, path: &Path) -> Result<Format, StorageError> {
    format_of(&domain::recorded_formats(store), path)
}

/// [`recorded_format`] against `recorded` (from `domain::recorded_formats`, read once). Two
/// VMs recording different formats for one file is refused.
fn format_of(recorded: &[(String, PathBuf, String)], path: &Path) -> Result<Format, StorageError> {
    let canon = fs::canonicalize(path).map_err(io_at(path))?;
    let users: Vec<&(String, PathBuf, String)> = recorded.iter().filter(|(_, p, _)| *p == canon).collect();
    match users.as_slice() {
        [] => image::detect(path).map_err(io_at(path)),
        [(_, _, f), rest @ ..] if rest.iter().all(|(_, _, g)| g == f) => f.parse().map_err(StorageError::Invalid),
        _ => {
            let named: Vec<String> = users.iter().map(|(d, _, f)| format!("domain '{d}' ({f})")).collect();
            Err(StorageError::Invalid(format!(
                "volume {}: its users record different formats: {}",
                path.display(),
                named.join(", ")
            )))
        }
    }
}

/// `vol-import`: bring an image into a pool, converting to `format` if given. An image of
/// another hypervisor's format (vmdk, vdi, vhdx, vhd, qcow) is converted with qemu-img into
/// `format` (qcow2 by default), named after the file with the new format's extension.
#[allow(clippy::too_many_arguments)]
pub fn import(
    store: &Store,
    file: &Path,
    pool_name: &str,
    name: Option<&str>,
    format: Option<Format>,
    compress: bool,
    sync: bool,
    progress: Progress,
) -> Result<VolRef, StorageError> {
    let meta = fs::metadata(file).map_err(io_at(file))?;
    if !meta.is_file() {
        return Err(StorageError::Invalid(format!("{} is not a regular file", file.display())));
    }
    check_not_in_use(file, true, "shut down the VM using it before importing its disk")?;
    if let Some(foreign) = image::foreign_format(file).map_err(io_at(file))? {
        if let Some(driver) = foreign.driver {
            let format = format.unwrap_or(Format::Qcow2);
            let name = match name {
                Some(n) => n.to_string(),
                None => converted_name(file, format),
            };
            return import_foreign(store, file, driver, pool_name, &name, format, compress, sync, progress);
        }
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    // Import is where a format is probed: the file comes from outside kvmctl.
    let src_fmt = image::detect(file).map_err(io_at(file))?;
    let policy = pool::backing_policy(store);
    let mut nv = NewVolume::begin(store, pool_name, &name)?;
    let dest = nv.dest.clone();
    let out = nv.file().try_clone().map_err(io_at(&dest))?;
    let source = Source { path: file, format: src_fmt, backing: &policy };
    copy_image(source, &out, &dest, format.unwrap_or(src_fmt), compress, sync, "vol-import.copy", progress)?;
    nv.commit(sync)
}

/// `disk.vmdk` -> `disk.qcow2` (or `disk.raw`).
pub fn converted_name(file: &Path, format: Format) -> String {
    let stem = file.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{stem}.{format}")
}

/// Convert a vmdk/vdi/vhdx/vhd/qcow image (`driver`) into a new volume with qemu-img, checked
/// before it is linked into the pool.
#[allow(clippy::too_many_arguments)]
pub fn import_foreign(
    store: &Store,
    file: &Path,
    driver: &str,
    pool_name: &str,
    name: &str,
    format: Format,
    compress: bool,
    sync: bool,
    progress: Progress,
) -> Result<VolRef, StorageError> {
    if compress && format != Format::Qcow2 {
        return Err(super::copy::CopyError::CompressNeedsQcow2 { format }.into());
    }
    let file = fs::canonicalize(file).map_err(io_at(file))?;
    foreign::check_standalone(&file, driver)?;
    foreign::check_within_file(&file, driver)?;
    let size = foreign::virtual_size(&file, driver)?;
    check_capacity(&format!("volume '{name}' in pool '{pool_name}'"), format, qcow2::DEFAULT_CLUSTER_BITS, size)?;
    let nv = NewVolume::begin(store, pool_name, name)?;
    let tmp = nv.tmp.path().to_path_buf();
    foreign::convert(&[(file.clone(), driver)], &tmp, foreign::driver_of(format), compress, size, progress)?;
    crate::fault::point("vol-import.converted");
    if format == Format::Qcow2 {
        foreign::check_qcow2(&tmp)?;
    }
    // Read back as kvmctl will run it: the format it was written as, the size it had.
    let got = image::inspect_as(&tmp, format).map_err(io_at(&tmp))?;
    if let Some(p) = got.problem {
        return Err(StorageError::Invalid(format!("{}: the converted image is damaged: {p}", file.display())));
    }
    if got.capacity < size {
        return Err(StorageError::Invalid(format!(
            "{}: the converted image holds {} bytes, not the source's {size}",
            file.display(),
            got.capacity
        )));
    }
    nv.commit(sync)
}

/// Move a complete file (a verified download) into a pool as volume `name`: renamed when on
/// the pool's file system, else copied (sparse) and the original left to the caller.
pub fn take_file(store: &Store, pool_name: &str, name: &str, file: &Path) -> Result<VolRef, StorageError> {
    let mut nv = NewVolume::begin(store, pool_name, name)?;
    let tmp = nv.tmp.path().to_path_buf();
    match fs::rename(file, &tmp) {
        Ok(()) => {
            // The temp's own (empty) inode was replaced: sync the one now at its path.
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_at(&tmp))?;
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let src = File::open(file).map_err(io_at(file))?;
            let out = nv.file().try_clone().map_err(io_at(&tmp))?;
            copy_bytes(&src, &out, &tmp, &mut |_, _| {})?;
        }
        Err(e) => return Err(io_at(file)(e)),
    }
    nv.commit(true)
}

/// `vol-upload`: replace the volume's content with a file's bytes, atomically.
/// Refused under overlays (`users`): replacing the bytes would change what they read.
pub fn upload(vref: &VolRef, file: &Path, users: &Users, progress: Progress) -> Result<u64, StorageError> {
    check_not_in_use(&vref.path, false, "stop the VM first")?;
    users.refuse_overlays(&vref.path, "overwrite")?;
    let src = File::open(file).map_err(io_at(file))?;
    let mut tmp = TempFile::new_beside(&vref.path, 0o600).map_err(io_at(&vref.path))?;
    let n = copy_bytes(&src, tmp.file(), &vref.path, progress)?;
    tmp.commit(&vref.path).map_err(io_at(&vref.path))?;
    Ok(n)
}

/// Overwrite a file's whole length with zeros and wait for the disk (`vol-wipe`,
/// `undefine --wipe-storage`).
pub fn wipe_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path)?;
    let len = f.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = zeros.len().min((len - off) as usize);
        f.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    f.sync_all()
}

/// `vol-wipe`: the volume's bytes overwritten with zeros. A qcow2 volume is then an empty
/// qcow2 of the same capacity on the same backing file (its own data gone, still usable).
/// Refused while qemu has it open or overlays read through it (`users`).
pub fn wipe(store: &Store, vref: &VolRef, users: &Users) -> Result<(), StorageError> {
    check_not_in_use(&vref.path, false, "stop the VM first")?;
    users.refuse_overlays(&vref.path, "wipe")?;
    let info = info(store, vref)?;
    if let Some(p) = info.problem {
        return Err(StorageError::Invalid(format!("volume {}: {p}", vref.path.display())));
    }
    wipe_file(&vref.path).map_err(io_at(&vref.path))?;
    if info.format == Format::Qcow2 {
        let backing = match (info.backing_file, info.backing_format) {
            (Some(file), Some(format)) => Some(Backing { file, format }),
            _ => None,
        };
        let f = fs::OpenOptions::new().write(true).open(&vref.path).map_err(io_at(&vref.path))?;
        f.set_len(0).map_err(io_at(&vref.path))?;
        Qcow2Writer::new(&f, info.capacity, backing)?.finish().map_err(io_at(&vref.path))?;
        f.sync_all().map_err(io_at(&vref.path))?;
    }
    Ok(())
}

/// `vol-upload --offset --length`: `length` bytes of `file` (all of it without) written over
/// the volume's bytes from `offset`, in place. Refused under overlays and while qemu has it.
pub fn upload_range(
    vref: &VolRef,
    file: &Path,
    offset: u64,
    length: Option<u64>,
    users: &Users,
    progress: Progress,
) -> Result<u64, StorageError> {
    check_not_in_use(&vref.path, false, "stop the VM first")?;
    users.refuse_overlays(&vref.path, "overwrite")?;
    let src = File::open(file).map_err(io_at(file))?;
    let avail = src.metadata().map_err(io_at(file))?.len();
    let n = length.unwrap_or(avail);
    if n > avail {
        return Err(StorageError::Invalid(format!(
            "--length {n} is more than the {avail} bytes of {}",
            file.display()
        )));
    }
    let dst = fs::OpenOptions::new().write(true).open(&vref.path).map_err(io_at(&vref.path))?;
    copy_range(&src, 0, &dst, offset, n, (file, &vref.path), progress)?;
    dst.sync_all().map_err(io_at(&vref.path))?;
    Ok(n)
}

/// `vol-download --offset --length`: the volume's bytes from `offset` (to its end without
/// `length`) into `file`, written beside it and renamed.
pub fn download_range(
    vref: &VolRef,
    file: &Path,
    offset: u64,
    length: Option<u64>,
    progress: Progress,
) -> Result<u64, StorageError> {
    let src = File::open(&vref.path).map_err(io_at(&vref.path))?;
    let size = src.metadata().map_err(io_at(&vref.path))?.len();
    if offset > size {
        return Err(StorageError::Invalid(format!(
            "--offset {offset} is past the end of volume {} ({size} bytes)",
            vref.path.display()
        )));
    }
    let n = length.unwrap_or(size - offset).min(size - offset);
    let mut tmp = TempFile::new_beside(file, 0o644).map_err(io_at(file))?;
    copy_range(&src, offset, tmp.file(), 0, n, (&vref.path, file), progress)?;
    tmp.commit(file).map_err(io_at(file))?;
    Ok(n)
}

fn copy_range(
    src: &File,
    from: u64,
    dst: &File,
    to: u64,
    len: u64,
    (src_path, dst_path): (&Path, &Path),
    progress: Progress,
) -> Result<(), StorageError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let got = src.read_at(&mut buf[..want], from + done).map_err(io_at(src_path))?;
        if got == 0 {
            return Err(StorageError::Invalid(format!("{} ended early", src_path.display())));
        }
        dst.write_all_at(&buf[..got], to + done).map_err(io_at(dst_path))?;
        done += got as u64;
        progress(done, len);
    }
    Ok(())
}

/// `vol-download`: the volume's bytes into `file` (written beside it, then renamed); with
/// `format`, the disk as its guest sees it (the whole backing chain) written in that format:
/// qcow2 and raw by kvmctl's own copy, vmdk, vdi, vhdx and vpc by qemu-img.
pub fn download(
    store: &Store,
    vref: &VolRef,
    file: &Path,
    format: Option<&str>,
    progress: Progress,
) -> Result<u64, StorageError> {
    let Some(format) = format else {
        let src = File::open(&vref.path).map_err(io_at(&vref.path))?;
        let mut tmp = TempFile::new_beside(file, 0o644).map_err(io_at(file))?;
        let n = copy_bytes(&src, tmp.file(), file, progress)?;
        tmp.commit(file).map_err(io_at(file))?;
        return Ok(n);
    };
    check_not_in_use(&vref.path, true, "shut the VM off (or pause it) before exporting its disk")?;
    let src_info = info(store, vref)?;
    if let Some(p) = &src_info.problem {
        return Err(StorageError::Invalid(format!("volume {}: {p}", vref.path.display())));
    }
    let policy = pool::backing_policy(store);
    let source = Source { path: &vref.path, format: src_info.format, backing: &policy };
    let mut tmp = TempFile::new_beside(file, 0o644).map_err(io_at(file))?;
    let size = match format {
        "qcow2" | "raw" => {
            let f = if format == "raw" { Format::Raw } else { Format::Qcow2 };
            let out = tmp.file().try_clone().map_err(io_at(file))?;
            copy_image(source, &out, file, f, false, false, "vol-download.copy", progress)?
        }
        _ if foreign::EXPORT_DRIVERS.contains(&format) => {
            let mut layers = vec![(vref.path.clone(), foreign::driver_of(src_info.format))];
            for (p, f) in image::backing_files(source)? {
                layers.push((p, foreign::driver_of(f)));
            }
            let tmp_path = tmp.path().to_path_buf();
            foreign::convert(&layers, &tmp_path, format, false, src_info.capacity, progress)?;
            src_info.capacity
        }
        _ => {
            return Err(StorageError::Invalid(format!(
                "vol-download --format '{format}': use qcow2, raw, vmdk, vdi, vhdx or vpc"
            )))
        }
    };
    tmp.commit(file).map_err(io_at(file))?;
    Ok(size)
}
