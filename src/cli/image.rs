//! image pull / list / rm / catalog: cloud images as read-only base volumes.

use clap::Subcommand;

use super::output::table;
use super::Ctx;
use crate::images::{self, sums::Checksum, PullOpts};
use crate::inventory::Inventory;
use crate::size::human;

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Download a cloud image (a catalog NAME or an https URL), verify it, keep it as a base.
    Pull {
        /// A catalog name (kvmctl image catalog) or an https:// URL.
        source: String,
        /// Name to keep it under (default: the catalog name, or the URL's file name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "default")]
        pool: String,
        /// sha256:HEX or sha512:HEX.
        #[arg(long, conflicts_with = "checksum_url")]
        checksum: Option<Checksum>,
        /// A SHA256SUMS/SHA512SUMS file listing the image's file name.
        #[arg(long)]
        checksum_url: Option<String>,
        /// A detached signature of the --checksum-url file, checked with gpgv.
        #[arg(long, requires = "checksum_url")]
        signature_url: Option<String>,
        /// The keyring gpgv checks the signature against (a clear-signed SUMS file too).
        #[arg(long)]
        keyring: Option<std::path::PathBuf>,
    },
    /// List the pulled images.
    List,
    /// Remove a pulled image and its volume (refused while a VM or an overlay uses it).
    Rm {
        #[arg(add = super::image_names())]
        name: String,
    },
    /// The images `image pull NAME` knows (built in, and <root>/catalog.toml).
    Catalog,
}

pub fn run(cmd: ImageCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let store = &ctx.store;
    let out = &ctx.out;
    match cmd {
        ImageCmd::Pull { source, name, pool, checksum, checksum_url, signature_url, keyring } => {
            let o = PullOpts { source, name, pool, checksum, checksum_url, signature_url, keyring };
            let r = images::pull(store, &o, &mut out.progress("pull"))?;
            let signature = r.signature.as_deref().map(|s| format!("; signature: {s}")).unwrap_or_default();
            out.done(format!(
                "Image {} pulled into pool {} as {} ({}, {}; {} verified{signature})",
                r.name,
                r.pool,
                r.volume,
                r.format,
                human(r.capacity),
                r.checksum.split(':').next().unwrap_or("checksum")
            ));
        }
        ImageCmd::List => {
            let all = images::list(store)?;
            if out.json {
                return out.json(&all);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|r| {
                    let vol = if r.path.exists() {
                        format!("{}/{}", r.pool, r.volume)
                    } else {
                        format!("{}/{} (missing)", r.pool, r.volume)
                    };
                    vec![r.name.clone(), vol, r.format.to_string(), human(r.capacity), r.url.clone()]
                })
                .collect();
            print!("{}", table(&["Name", "Volume", "Format", "Capacity", "Source"], &rows));
        }
        ImageCmd::Rm { name } => {
            let rec = images::load(store, &name)?;
            let users = Inventory::read(store).users_of(&rec.path, None);
            images::remove(store, &name, &users)?;
            out.done(format!("Image {name} removed (volume {}/{})", rec.pool, rec.volume));
        }
        ImageCmd::Catalog => {
            let all = images::catalog(store)?;
            if out.json {
                return out.json(&all);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|e| vec![e.name.clone(), e.description.clone().unwrap_or_default(), e.origin.clone()])
                .collect();
            print!("{}", table(&["Name", "Description", "From"], &rows));
        }
    }
    Ok(())
}
