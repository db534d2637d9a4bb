//! `clone` (virt-clone).

use std::path::PathBuf;
use std::str::FromStr;

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
    /// Print the new definition (TOML); create nothing.
    #[arg(long, conflicts_with = "print_xml")]
    print_definition: bool,
    /// Print the clone's libvirt domain XML; create nothing.
    #[arg(long)]
    print_xml: bool,
    /// Replace a shut-off VM of the new name: it and its own disks are removed once the clone
    /// is made (refused while it runs or while another VM or an overlay uses its disks).
    #[arg(long)]
    replace: bool,
    /// Full copies share the source's extents (FICLONE: btrfs, XFS with reflink); fails where
    /// the filesystem cannot.
    #[arg(long, conflicts_with_all = ["linked", "preserve_data", "compress"])]
    reflink: bool,
    /// Turn checks off: all=off, path_in_use=off, disk_size=off, mac_in_use=off.
    #[arg(long, value_parser = crate::domain::install_spec::CheckSpec::from_str)]
    check: Vec<crate::domain::install_spec::CheckSpec>,
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
        replace: a.replace,
        reflink: a.reflink,
        checks: crate::domain::install_spec::Checks::from_specs(&a.check),
    };
    if name == original {
        // (Before the locks: the second lock on one name would wait for the first forever.)
        bail!("clone: '{name}' is the source; a VM cannot be its own clone (name another, or --replace another VM)");
    }
    let _src = store.lock(Kind::Domain, &original)?;
    let _new = store.lock(Kind::Domain, &name)?;
    let plan = clone::plan(store, &o)?;
    let def = &plan.def;
    if a.nonsparse
        && plan.disks.iter().any(|p| p.to.is_some() && p.from.extension().is_some_and(|e| e == "qcow2"))
        && !ctx.out.quiet
    {
        eprintln!("note: --nonsparse allocates raw disks in full; qcow2 disks stay sparse (they allocate by cluster)");
    }
    if a.print_definition {
        print!("{}", toml::to_string_pretty(def)?);
        return Ok(());
    }
    if a.print_xml {
        print!("{}", crate::domain::libvirt_xml::to_xml(def));
        return Ok(());
    }
    let bar = std::sync::Mutex::new(ctx.out.progress("clone"));
    clone::execute(store, &o, &plan, &|d, t| (bar.lock().expect("progress"))(d, t))?;
    let how = match (a.linked, a.reflink) {
        (true, _) => "linked clone",
        (_, true) => "reflinked clone",
        _ => "clone",
    };
    if let Some(old) = &plan.replaced {
        ctx.out.done(format!("Domain '{}' (shut off) replaced", old.name));
    }
    ctx.out.done(format!("Domain '{name}' created as a {how} of '{original}'"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{domain::DomCmd, Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<CloneArgs, clap::Error> {
        let argv = ["kvmctl", "clone"].iter().chain(args).copied();
        match Cli::try_parse_from(argv)?.command {
            Command::Domain(DomCmd::Clone(a)) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn virt_clone_spellings() {
        let a =
            parse(&["-o", "src", "-n", "new", "--print-xml", "--replace", "--reflink", "--check", "all=off"]).unwrap();
        assert!(a.print_xml && a.replace && a.reflink && !a.print_definition);
        assert!(!crate::domain::install_spec::Checks::from_specs(&a.check).disk_size);
        for bad in [["--reflink", "--linked"], ["--reflink", "--compress"], ["--print-xml", "--print-definition"]] {
            let e = parse(&[&["src", "new"][..], &bad[..]].concat()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
        }
        let e = parse(&["src", "new", "--check", "disk_space=off"]).unwrap_err();
        assert!(e.to_string().contains("names check 'disk_space'"), "{e}");
    }
}
