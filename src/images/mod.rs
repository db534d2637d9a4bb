//! Base images: `image pull NAME|URL` downloads a distribution's cloud image over HTTPS,
//! verifies its checksum, and keeps it as a read-only volume that `install --image` puts
//! overlays on. A record per image (`<root>/base-images/NAME.toml`) names its volume, where it
//! came from and the digest it was verified against; the catalog (`templates/images.toml`,
//! built in, plus the user's `<root>/catalog.toml`) names images by short names.

pub mod fetch;
pub mod sums;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths::Kind;
use crate::state::Store;
use crate::storage::image::{self, Format};
use crate::storage::volume::{self, VolRef};
use crate::storage::{pool, qcow2, Users};
use fetch::Client;
use sums::Checksum;

/// The catalog shipped with kvmctl.
const BUILTIN_CATALOG: &str = include_str!("../../templates/images.toml");

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
    #[error("image '{0}' is not in the catalog (kvmctl image catalog lists it; or give a URL)")]
    NotInCatalog(String),
    #[error("image '{0}' has not been pulled (kvmctl image list shows the pulled ones)")]
    NotPulled(String),
    #[error("image '{name}' is already pulled (volume {volume}); image rm it first to pull it again")]
    Exists { name: String, volume: String },
    #[error(
        "{url}: no checksum to verify it against: give --checksum sha256:HEX or --checksum-url URL \
         (kvmctl keeps no image it has not verified)"
    )]
    NoChecksum { url: String },
    #[error("{sums}: its signature does not verify with {keyring}: {why}; nothing was downloaded")]
    BadSignature { sums: String, keyring: String, why: String },
    #[error("{sums}: lists no checksum for '{file}'")]
    NotInSums { sums: String, file: String },
    #[error(
        "{url}: checksum mismatch: expected {expected}, the download has {got}; the download was \
         deleted (a corrupted transfer, or not the file the checksum is for)"
    )]
    Mismatch { url: String, expected: String, got: String },
    #[error("{url}: {why}; the download was deleted")]
    Unusable { url: String, why: String },
    #[error("catalog {path}: {why}")]
    Catalog { path: String, why: String },
    #[error("image '{name}' is in use by {users}: remove them first")]
    InUse { name: String, users: String },
    #[error("{0}")]
    Invalid(String),
}

/// One catalog entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CatalogEntry {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub checksum_url: Option<String>,
    /// A detached signature of the checksum file, checked with gpgv against `keyring`.
    #[serde(default)]
    pub signature_url: Option<String>,
    #[serde(default)]
    pub keyring: Option<PathBuf>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub osinfo: Option<String>,
    /// Where the entry comes from: "builtin" or the user's catalog file.
    #[serde(skip_deserializing, default)]
    pub origin: String,
}

#[derive(Debug, Deserialize)]
struct CatalogFile {
    #[serde(default)]
    image: Vec<CatalogEntry>,
}

/// The user's own catalog entries, which win over the built-in ones of the same name.
pub fn user_catalog_path(store: &Store) -> PathBuf {
    store.paths.root.join("catalog.toml")
}

fn parse_catalog(text: &str, origin: &str) -> Result<Vec<CatalogEntry>, ImageError> {
    let bad = |why: String| ImageError::Catalog { path: origin.into(), why };
    let f: CatalogFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for mut e in f.image {
        crate::names::validate("image", &e.name).map_err(|err| bad(err.to_string()))?;
        if let Some(c) = &e.checksum {
            c.parse::<Checksum>().map_err(|err| bad(format!("image '{}': {err}", e.name)))?;
        }
        e.origin = origin.into();
        out.push(e);
    }
    Ok(out)
}

/// The catalog: built-in entries, then the user's (replacing built-ins by name).
pub fn catalog(store: &Store) -> Result<Vec<CatalogEntry>, ImageError> {
    let mut all = parse_catalog(BUILTIN_CATALOG, "builtin")?;
    let user = user_catalog_path(store);
    match std::fs::read_to_string(&user) {
        Ok(text) => {
            for e in parse_catalog(&text, &user.display().to_string())? {
                all.retain(|b| b.name != e.name);
                all.push(e);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::Catalog { path: user.display().to_string(), why: e.to_string() }),
    }
    Ok(all)
}

/// A pulled image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub pool: String,
    pub volume: String,
    pub path: PathBuf,
    pub format: Format,
    pub capacity: u64,
    pub url: String,
    /// The digest the download was verified against (`sha256:...`).
    pub checksum: String,
    /// Where the digest came from: "--checksum", or the SUMS file's URL.
    pub checksum_source: String,
    /// How the SUMS file's signature was checked ("gpgv with KEYRING"), or why it was not.
    #[serde(default)]
    pub signature: Option<String>,
    pub pulled_at: u64,
    #[serde(default)]
    pub osinfo: Option<String>,
}

pub fn load(store: &Store, name: &str) -> Result<ImageRecord, ImageError> {
    if !store.exists(Kind::Image, name) {
        return Err(ImageError::NotPulled(name.into()));
    }
    Ok(store.load(Kind::Image, name)?)
}

pub fn list(store: &Store) -> Result<Vec<ImageRecord>, ImageError> {
    let mut out = Vec::new();
    for n in store.list(Kind::Image)? {
        out.push(store.load(Kind::Image, &n)?);
    }
    Ok(out)
}

/// What `image pull` was asked for.
#[derive(Debug, Clone, Default)]
pub struct PullOpts {
    pub source: String,
    pub name: Option<String>,
    pub pool: String,
    pub checksum: Option<Checksum>,
    pub checksum_url: Option<String>,
    pub signature_url: Option<String>,
    pub keyring: Option<PathBuf>,
}

/// The last path segment of a URL (without query or fragment).
fn url_file(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or("").to_string()
}

/// A name for an image pulled by URL: its file name without the extension.
fn name_from_url(url: &str) -> String {
    let file = url_file(url);
    let stem = match file.rsplit_once('.') {
        Some((s, ext)) if ["qcow2", "img", "raw", "qcow", "vmdk", "vhdx", "vdi", "vhd"].contains(&ext) => s,
        _ => file.as_str(),
    };
    stem.to_string()
}

/// `image pull`: download, verify, inspect, and keep as a read-only volume.
pub fn pull(store: &Store, o: &PullOpts, progress: &mut dyn FnMut(u64, u64)) -> Result<ImageRecord, ImageError> {
    let by_url = o.source.contains("://");
    let entry = if by_url {
        None
    } else {
        Some(
            catalog(store)?
                .into_iter()
                .find(|e| e.name == o.source)
                .ok_or_else(|| ImageError::NotInCatalog(o.source.clone()))?,
        )
    };
    let url = entry.as_ref().map(|e| e.url.clone()).unwrap_or_else(|| o.source.clone());
    let name = o.name.clone().unwrap_or_else(|| if by_url { name_from_url(&url) } else { o.source.clone() });
    crate::names::validate("image", &name).map_err(|e| ImageError::Invalid(format!("{e} (pick one with --name)")))?;
    let _lock = store.lock(Kind::Image, &name)?;
    if let Ok(r) = load(store, &name) {
        return Err(ImageError::Exists { name, volume: format!("{}/{}", r.pool, r.volume) });
    }
    let pool_def = pool::active(store, &o.pool)?;
    let client = Client::new()?;
    // The expected digest first: a wrong SUMS URL fails before a long download.
    let downloads = store.paths.root.join("downloads");
    crate::state::private_dir(&downloads).map_err(|e| ImageError::Invalid(format!("{}: {e}", downloads.display())))?;
    let explicit = o.signature_url.is_some() || o.keyring.is_some();
    let sig = Signature {
        url: o.signature_url.clone().or_else(|| entry.as_ref().and_then(|e| e.signature_url.clone())),
        keyring: o.keyring.clone().or_else(|| entry.as_ref().and_then(|e| e.keyring.clone())),
        explicit,
        scratch: downloads.join(format!("{name}.sums")),
    };
    let mut signature = None;
    let (expected, source) = match (&o.checksum, &o.checksum_url, entry.as_ref()) {
        (Some(c), _, _) => (c.clone(), "--checksum".to_string()),
        (None, Some(u), _) => (from_sums(&client, u, &url, &sig, &mut signature)?, u.clone()),
        (None, None, Some(e)) => match (&e.checksum, &e.checksum_url) {
            (Some(c), _) => (c.parse::<Checksum>().map_err(ImageError::Invalid)?, format!("catalog ({})", e.origin)),
            (None, Some(u)) => (from_sums(&client, u, &url, &sig, &mut signature)?, u.clone()),
            (None, None) => return Err(ImageError::NoChecksum { url }),
        },
        (None, None, None) => return Err(ImageError::NoChecksum { url }),
    };
    let part = downloads.join(format!("{name}.part"));
    client.download(&url, &part, progress)?;
    let got =
        sums::hash_file(&part, expected.algo).map_err(|e| ImageError::Invalid(format!("{}: {e}", part.display())))?;
    if got != expected.hex {
        fetch::discard(&part);
        let got = Checksum { algo: expected.algo, hex: got }.to_string();
        return Err(ImageError::Mismatch { url, expected: expected.to_string(), got });
    }
    let r = keep(store, &part, &url, &name, &pool_def.name);
    fetch::discard(&part);
    let (vref, format, capacity) = r?;
    let rec = ImageRecord {
        name: name.clone(),
        pool: pool_def.name.clone(),
        volume: vref.name.clone(),
        path: vref.path.clone(),
        format,
        capacity,
        url,
        checksum: expected.to_string(),
        checksum_source: source,
        signature,
        pulled_at: crate::domain::runtime::now_secs(),
        osinfo: entry.and_then(|e| e.osinfo),
    };
    if let Err(e) = store.create(Kind::Image, &name, &rec) {
        let _ = std::fs::remove_file(&vref.path);
        return Err(e.into());
    }
    Ok(rec)
}

/// Where a SUMS file's signature comes from: a detached signature at `url`, or the file itself
/// when it is PGP clear-signed; checked with gpgv against `keyring`.
struct Signature {
    url: Option<String>,
    keyring: Option<PathBuf>,
    /// Asked for on the command line: a check that cannot run is an error, not a notice.
    explicit: bool,
    /// Where the SUMS file is written for gpgv (removed after).
    scratch: PathBuf,
}

fn from_sums(
    client: &Client,
    sums_url: &str,
    url: &str,
    sig: &Signature,
    checked: &mut Option<String>,
) -> Result<Checksum, ImageError> {
    let text = client.text(sums_url, 4 << 20)?;
    *checked = verify_signature(client, sums_url, &text, sig)?;
    let file = url_file(url);
    sums::find_in_sums(&text, &file).ok_or_else(|| ImageError::NotInSums { sums: sums_url.into(), file })
}

/// gpgv over the SUMS file, where gpgv and the keyring are there; what was checked.
fn verify_signature(
    client: &Client,
    sums_url: &str,
    text: &str,
    sig: &Signature,
) -> Result<Option<String>, ImageError> {
    let clearsigned = text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----");
    if sig.url.is_none() && !(clearsigned && sig.keyring.is_some()) {
        return Ok(None);
    }
    let not_checked = |why: String| -> Result<Option<String>, ImageError> {
        if sig.explicit {
            return Err(ImageError::Invalid(format!("{sums_url}: cannot check its signature: {why}")));
        }
        eprintln!("notice: {sums_url}: signature not checked: {why}");
        Ok(Some(format!("not checked: {why}")))
    };
    let Some(keyring) = &sig.keyring else { return not_checked("no keyring given (--keyring FILE)".into()) };
    if !keyring.is_file() {
        return not_checked(format!("keyring {} not found", keyring.display()));
    }
    if crate::process::find_program("gpgv").is_none() {
        return not_checked("gpgv is not installed (apt install gpgv)".into());
    }
    let sig_file = sig.scratch.with_extension("sums.sig");
    let cleanup = || {
        let _ = std::fs::remove_file(&sig.scratch);
        let _ = std::fs::remove_file(&sig_file);
    };
    let io = |p: &Path, e: std::io::Error| ImageError::Invalid(format!("{}: {e}", p.display()));
    std::fs::write(&sig.scratch, text).map_err(|e| io(&sig.scratch, e))?;
    let mut args = vec!["--keyring".to_string(), keyring.display().to_string()];
    if let Some(u) = &sig.url {
        let signature = match client.bytes(u, 1 << 20) {
            Ok(s) => s,
            Err(e) => {
                cleanup();
                return Err(e.into());
            }
        };
        std::fs::write(&sig_file, signature).map_err(|e| io(&sig_file, e))?;
        args.push(sig_file.display().to_string());
    }
    args.push(sig.scratch.display().to_string());
    let r = crate::process::run("gpgv", &args, None);
    cleanup();
    match r {
        Ok(_) => Ok(Some(format!("gpgv with {}", keyring.display()))),
        Err(crate::process::ProcessError::Failed { stderr, .. }) => Err(ImageError::BadSignature {
            sums: sums_url.into(),
            keyring: keyring.display().to_string(),
            why: stderr.lines().last().unwrap_or("gpgv failed").to_string(),
        }),
        Err(e) => Err(ImageError::Invalid(e.to_string())),
    }
}

/// Turn a verified download into the image's volume: a standalone qcow2 or raw kept as it
/// came (compressed clusters and all), a vmdk/vdi/vhdx/vhd/qcow converted to qcow2. Read-only.
fn keep(store: &Store, part: &Path, url: &str, name: &str, pool: &str) -> Result<(VolRef, Format, u64), ImageError> {
    let unusable = |why: String| ImageError::Unusable { url: url.into(), why };
    let vref = if let Some(f) = image::foreign_format(part).map_err(|e| unusable(e.to_string()))? {
        let Some(driver) = f.driver else {
            return Err(unusable(format!("it is a {} image, which kvmctl does not import", f.what)));
        };
        volume::import_foreign(
            store,
            part,
            driver,
            pool,
            &format!("{name}.qcow2"),
            Format::Qcow2,
            false,
            true,
            &mut |_, _| {},
        )?
    } else {
        let format = image::detect(part).map_err(|e| unusable(e.to_string()))?;
        if format == Format::Qcow2 {
            let h = qcow2::read_header(part).map_err(|e| unusable(e.to_string()))?;
            if let Some(b) = h.backing_file {
                return Err(unusable(format!(
                    "it is a qcow2 overlay naming the backing file '{b}' (a downloaded image must stand alone)"
                )));
            }
        }
        let info = image::inspect_as(part, format).map_err(|e| unusable(e.to_string()))?;
        if let Some(p) = info.problem {
            return Err(unusable(format!("the image is damaged: {p}")));
        }
        let ext = if format == Format::Qcow2 { "qcow2" } else { "img" };
        volume::take_file(store, pool, &format!("{name}.{ext}"), part)?
    };
    let info = volume::info(store, &vref)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&vref.path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| ImageError::Invalid(format!("{}: {e}", vref.path.display())))?;
    Ok((vref, info.format, info.capacity))
}

/// `image rm`: refused while a VM's disk or an overlay needs the image (`users`).
pub fn remove(store: &Store, name: &str, users: &Users) -> Result<ImageRecord, ImageError> {
    let _lock = store.lock(Kind::Image, name)?;
    let rec = load(store, name)?;
    if !users.is_empty() {
        return Err(ImageError::InUse { name: name.into(), users: users.to_string() });
    }
    if rec.path.exists() {
        let vref = VolRef { pool: Some(rec.pool.clone()), name: rec.volume.clone(), path: rec.path.clone() };
        volume::delete(&vref, false, users)?;
    }
    store.remove(Kind::Image, name)?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_url_file() {
        assert_eq!(
            url_file("https://h/a/b/debian-12-genericcloud-amd64.qcow2?x=1#y"),
            "debian-12-genericcloud-amd64.qcow2"
        );
        assert_eq!(name_from_url("https://h/noble-server-cloudimg-amd64.img"), "noble-server-cloudimg-amd64");
        assert_eq!(name_from_url("https://h/Arch-Linux-x86_64-cloudimg.qcow2"), "Arch-Linux-x86_64-cloudimg");
        assert_eq!(name_from_url("https://h/disk.tar.gz"), "disk.tar.gz");
    }

    #[test]
    fn the_builtin_catalog_parses_and_every_entry_has_a_checksum_source() {
        let all = parse_catalog(BUILTIN_CATALOG, "builtin").unwrap();
        for want in ["debian-12", "ubuntu-24.04", "fedora-41", "alpine-3.20", "arch"] {
            let e = all.iter().find(|e| e.name == want).unwrap_or_else(|| panic!("{want} missing"));
            assert!(e.url.starts_with("https://"), "{want}");
            assert!(
                e.checksum.is_some() || e.checksum_url.as_deref().is_some_and(|u| u.starts_with("https://")),
                "{want}"
            );
        }
    }

    #[test]
    fn bad_catalog_entries_are_refused_naming_the_file() {
        let e = parse_catalog("[[image]]\nname = \"a/b\"\nurl = \"https://x/y\"\n", "/c.toml").unwrap_err();
        assert!(e.to_string().contains("/c.toml"), "{e}");
        let e = parse_catalog("[[image]]\nname = \"a\"\nurl = \"https://x/y\"\nchecksum = \"md5:1\"\n", "/c.toml")
            .unwrap_err();
        assert!(e.to_string().contains("image 'a'"), "{e}");
    }
}
