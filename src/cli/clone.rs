//! `clone` (virt-clone).

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::Ctx;
use crate::paths::Kind;

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Source VM (short form: `clone SRC NEW`).
    #[arg(value_name = "SRC", required_unless_present = "original", add = super::vm_names())]
    src: Option<String>,
    #[arg(value_name = "NEW")]
    new: Option<String>,
    #[arg(long, short = 'o', conflicts_with = "src", add = super::vm_names())]
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
    /// Write the copied qcow2 disks' clusters compressed (zlib), like `qemu-img convert -c`.
    #[arg(long, conflicts_with_all = ["linked", "preserve_data"])]
    compress: bool,
    /// Return only once the copied disks are on stable storage (fsync).
    #[arg(long)]
    sync: bool,
    /// Print the new definition; create nothing.
    #[arg(long, alias = "print-xml")]
    print_definition: bool,
}

pub(super) fn clone_cmd(ctx: &Ctx, a: CloneArgs) -> anyhow::Result<()> {
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
        compress: a.compress,
        sync: a.sync,
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
