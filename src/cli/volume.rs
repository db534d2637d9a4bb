//! vol-* commands.

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use super::output::{info_block, table};
use super::Ctx;
use crate::inventory::Inventory;
use crate::size::{human, parse_size};
use crate::storage::volume::{self, CreateOpts, VolRef};
use crate::storage::Format;

fn capacity(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

// Variant names become the virsh command names (VolCreateAs -> vol-create-as).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum VolCmd {
    /// Create a volume: vol-create-as POOL NAME CAPACITY (10G, 512MiB, 1GB...).
    VolCreateAs {
        #[arg(add = super::pool_names())]
        pool: String,
        name: String,
        #[arg(value_parser = capacity, allow_hyphen_values = true)]
        capacity: u64,
        #[arg(long, default_value = "raw")]
        format: Format,
        /// Make a qcow2 overlay on this volume (name in POOL, or a path).
        #[arg(long)]
        backing_vol: Option<String>,
        #[arg(long)]
        backing_vol_format: Option<Format>,
        /// Allocate all qcow2 metadata up front (qemu's preallocation=metadata).
        #[arg(long)]
        prealloc_metadata: bool,
        /// Bytes allocated at once from the start of a raw volume (at most CAPACITY).
        #[arg(long, value_parser = capacity)]
        allocation: Option<u64>,
        /// Print the volume's libvirt XML and create nothing.
        #[arg(long)]
        print_xml: bool,
    },
    /// Print a volume as libvirt volume XML.
    VolDumpxml {
        #[arg(add = super::volume_names())]
        vol: String,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
    },
    /// Overwrite a volume with zeros (a qcow2 one stays a valid, empty qcow2 of its size).
    VolWipe {
        #[arg(add = super::volume_names())]
        vol: String,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
        /// zero (the only one kvmctl has; virsh's pattern algorithms are for magnetic disks).
        #[arg(long, default_value = "zero")]
        algorithm: String,
    },
    /// List a pool's volumes.
    VolList {
        #[arg(required_unless_present = "pool_opt")]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
        #[arg(long = "pool", conflicts_with = "pool")]
        #[arg(add = super::pool_names())]
        pool_opt: Option<String>,
        /// Type, capacity and allocation columns.
        #[arg(long)]
        details: bool,
    },
    /// Show a volume's type, capacity, allocation and backing file.
    VolInfo {
        #[arg(add = super::volume_names())]
        vol: String,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
        /// Sizes in bytes.
        #[arg(long)]
        bytes: bool,
    },
    /// Print a volume's path.
    VolPath {
        #[arg(add = super::volume_names())]
        vol: String,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
    },
    /// Delete a volume (refused while a VM or an overlay uses it, unless --force).
    VolDelete {
        #[arg(add = super::volume_names())]
        vol: String,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Change a volume's capacity (shrinking needs --shrink).
    VolResize {
        #[arg(add = super::volume_names())]
        vol: String,
        #[arg(value_parser = capacity, allow_hyphen_values = true)]
        capacity: u64,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
        /// CAPACITY is added to the current size.
        #[arg(long)]
        delta: bool,
        #[arg(long)]
        shrink: bool,
    },
    /// Replace a volume's content with a file's bytes.
    VolUpload {
        #[arg(add = super::volume_names())]
        vol: String,
        file: PathBuf,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
        /// Write the file's bytes over the volume's from this byte on, in place.
        #[arg(long, value_parser = super::whole_u64)]
        offset: Option<u64>,
        /// Only this many bytes of the file (in place, as --offset).
        #[arg(long, value_parser = super::whole_u64)]
        length: Option<u64>,
    },
    /// Copy a volume's bytes into a file; with --format, export the disk as its guest sees it.
    VolDownload {
        #[arg(add = super::volume_names())]
        vol: String,
        file: PathBuf,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
        /// qcow2 | raw | vmdk | vdi | vhdx | vpc: the whole backing chain, in this format.
        #[arg(long, value_parser = ["qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc"])]
        format: Option<String>,
        /// The volume's bytes from this byte on.
        #[arg(long, value_parser = super::whole_u64, conflicts_with = "format")]
        offset: Option<u64>,
        /// Only this many bytes.
        #[arg(long, value_parser = super::whole_u64, conflicts_with = "format")]
        length: Option<u64>,
    },
    /// Clone a volume: a sparse full copy, or with --linked a qcow2 overlay (constant time).
    VolClone {
        #[arg(add = super::volume_names())]
        vol: String,
        newname: String,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: Option<String>,
        /// Pool for the clone (default: the source's pool).
        #[arg(long)]
        #[arg(add = super::pool_names())]
        newpool: Option<String>,
        #[arg(long)]
        linked: bool,
        /// Write the copy's clusters compressed (zlib), like `qemu-img convert -c` (full
        /// copies of qcow2 volumes).
        #[arg(long, conflicts_with = "linked")]
        compress: bool,
        /// Return only once the copy is on stable storage (fsync). By default, as with
        /// `qemu-img convert`, the kernel writes it back on its own schedule.
        #[arg(long)]
        sync: bool,
    },
    /// Bring an image into a pool: raw or qcow2 (converted with --format), or vmdk, vdi, vhdx,
    /// vhd or qcow (converted to qcow2, or to --format raw).
    VolImport {
        file: PathBuf,
        #[arg(long)]
        #[arg(add = super::pool_names())]
        pool: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        format: Option<Format>,
        /// Write the copy's clusters compressed (zlib), like `qemu-img convert -c` (qcow2
        /// output).
        #[arg(long)]
        compress: bool,
        /// Return only once the copy is on stable storage (fsync).
        #[arg(long)]
        sync: bool,
    },
}

pub fn run(cmd: VolCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let store = &ctx.store;
    let out = &ctx.out;
    match cmd {
        VolCmd::VolCreateAs {
            pool,
            name,
            capacity,
            format,
            backing_vol,
            backing_vol_format,
            prealloc_metadata,
            allocation,
            print_xml,
        } => {
            let opts =
                CreateOpts { capacity, format, backing_vol, backing_format: backing_vol_format, prealloc_metadata };
            if print_xml {
                print!("{}", volume::planned_xml(store, &pool, &name, &opts, allocation.unwrap_or(0))?);
                return Ok(());
            }
            volume::create_allocated(store, &pool, &name, &opts, allocation.unwrap_or(0))?;
            out.done(format!("Vol {name} created"));
        }
        VolCmd::VolDumpxml { vol, pool } => {
            let v = volume::resolve(store, pool.as_deref(), &vol)?;
            print!("{}", volume::dump_xml(store, &v)?);
        }
        VolCmd::VolWipe { vol, pool, algorithm } => {
            if algorithm != "zero" {
                anyhow::bail!(
                    "vol-wipe --algorithm '{algorithm}': kvmctl wipes with zeros (zero); pattern algorithms are for magnetic disks"
                );
            }
            let v = volume::resolve(store, pool.as_deref(), &vol)?;
            let users = Inventory::read(store).users_of(&v.path, None);
            volume::wipe(store, &v, &users)?;
            out.done(format!("Vol {} wiped", v.name));
        }
        VolCmd::VolList { pool, pool_opt, details } => list(ctx, &pool.or(pool_opt).unwrap_or_default(), details)?,
        VolCmd::VolInfo { vol, pool, bytes } => {
            let human = |n: u64| if bytes { format!("{n} bytes") } else { human(n) };
            let v = volume::resolve(store, pool.as_deref(), &vol)?;
            let info = volume::info(store, &v)?;
            if out.json {
                #[derive(Serialize)]
                struct J<'a> {
                    #[serde(flatten)]
                    vol: &'a VolRef,
                    #[serde(flatten)]
                    info: &'a crate::storage::image::ImageInfo,
                }
                return out.json(&J { vol: &v, info: &info });
            }
            let mut rows = vec![
                ("Name", v.name.clone()),
                ("Path", v.path.display().to_string()),
                ("Type", "file".to_string()),
                ("Format", info.format.to_string()),
                ("Capacity", human(info.capacity)),
                ("Allocation", human(info.allocation)),
            ];
            if let Some(b) = &info.backing_file {
                rows.push(("Backing file", format!("{b} ({})", info.backing_format.as_deref().unwrap_or("?"))));
            }
            if info.dirty {
                rows.push((
                    "State",
                    "dirty: not closed cleanly (reads and copies as qemu-img check -r leaves it)".into(),
                ));
            }
            if !info.bitmaps.is_empty() {
                rows.push(("Bitmaps", info.bitmaps.join(", ")));
            }
            if let Some(p) = &info.problem {
                rows.push(("Problem", p.clone()));
            }
            print!("{}", info_block(&rows));
        }
        VolCmd::VolPath { vol, pool } => println!("{}", volume::resolve(store, pool.as_deref(), &vol)?.path.display()),
        VolCmd::VolDelete { vol, pool, force } => {
            let v = volume::resolve(store, pool.as_deref(), &vol)?;
            volume::delete(&v, force, &Inventory::read(store).users_of(&v.path, None))?;
            out.done(format!("Vol {vol} deleted"));
        }
        VolCmd::VolResize { vol, capacity, pool, delta, shrink } => {
            let v = volume::resolve(store, pool.as_deref(), &vol)?;
            let users = Inventory::read(store).users_of(&v.path, None);
            let new = volume::resize(store, &v, capacity, delta, shrink, &users)?;
            out.done(format!("Size of volume '{}' successfully changed to {}", v.name, human(new)));
        }
        VolCmd::VolUpload { vol, file, pool, offset, length } => {
            let v = volume::resolve(store, pool.as_deref(), &vol)?;
            let users = Inventory::read(store).users_of(&v.path, None);
            let progress = &mut out.progress("upload");
            let n = if offset.is_some() || length.is_some() {
                volume::upload_range(&v, &file, offset.unwrap_or(0), length, &users, progress)?
            } else {
                volume::upload(&v, &file, &users, progress)?
            };
            out.done(format!("Uploaded {} into {}", human(n), v.name));
        }
        VolCmd::VolDownload { vol, file, pool, format, offset, length } => {
            let v = volume::resolve(store, pool.as_deref(), &vol)?;
            let progress = &mut out.progress("download");
            let n = if offset.is_some() || length.is_some() {
                volume::download_range(&v, &file, offset.unwrap_or(0), length, progress)?
            } else {
                volume::download(store, &v, &file, format.as_deref(), progress)?
            };
            out.done(format!("Downloaded {} to {}", human(n), file.display()));
        }
        VolCmd::VolClone { vol, newname, pool, newpool, linked, compress, sync } => {
            let v = volume::resolve(store, pool.as_deref(), &vol)?;
            let target = newpool.or(v.pool.clone()).ok_or_else(|| {
                anyhow::anyhow!(
                    "volume {} is not in a pool; name the pool for the clone with --newpool",
                    v.path.display()
                )
            })?;
            volume::clone(store, &v, &target, &newname, linked, compress, sync, &mut out.progress("clone"))?;
            out.done(format!("Vol {newname} cloned from {}", v.name));
        }
        VolCmd::VolImport { file, pool, name, format, compress, sync } => {
            let progress = &mut out.progress("import");
            let v = volume::import(store, &file, &pool, name.as_deref(), format, compress, sync, progress)?;
            out.done(format!("Vol {} imported into pool {pool}", v.name));
        }
    }
    Ok(())
}

fn list(ctx: &Ctx, pool: &str, details: bool) -> anyhow::Result<()> {
    let vols = volume::list(&ctx.store, pool)?;
    if ctx.out.json {
        return ctx.out.json(&vols);
    }
    let mut notes = String::new();
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            let problem = v.error.clone().or_else(|| v.info.as_ref().and_then(|i| i.problem.clone()));
            if let Some(p) = &problem {
                notes.push_str(&format!(" {}: damaged: {p}\n", v.name));
            }
            let mut r = vec![v.name.clone(), v.path.display().to_string()];
            match (&v.info, details) {
                (Some(i), true) if problem.is_none() => {
                    r.extend([i.format.to_string(), human(i.capacity), human(i.allocation)])
                }
                (Some(i), true) => r.extend([format!("{} (damaged)", i.format), "-".into(), human(i.allocation)]),
                (None, true) => r.extend(["(unreadable)".into(), "-".into(), "-".into()]),
                (_, false) if problem.is_some() => r[1].push_str("   (damaged)"),
                _ => {}
            }
            r
        })
        .collect();
    let headers: &[&str] =
        if details { &["Name", "Path", "Type", "Capacity", "Allocation"] } else { &["Name", "Path"] };
    print!("{}{notes}", table(headers, &rows));
    Ok(())
}
