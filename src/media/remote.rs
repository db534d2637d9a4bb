//! `--location URL`: an install tree or an ISO served over http(s). A tree's kernel and initrd
//! are found by `.treeinfo` (`[images-x86_64]`) when the tree has one, else by the layouts
//! of [`LAYOUTS`](super::location::LAYOUTS) (HEAD requests, nothing downloaded to look); an
//! ISO (a URL whose path ends in `.iso`) is downloaded whole and used as a local ISO.

use std::path::{Path, PathBuf};

use super::location::{treeinfo_label, LAYOUTS};
use super::MediaError;
use crate::images::fetch::{Client, FetchError};

/// `.treeinfo` is read up to this size.
const TREEINFO_LIMIT: u64 = 64 * 1024;

/// Whether a `--location` value is a URL rather than a path.
pub fn is_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// Whether a location URL names an ISO image (its path ends in `.iso`).
pub fn is_iso_url(url: &str) -> bool {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.to_ascii_lowercase().ends_with(".iso")
}

/// What a remote location holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// An ISO image, `length` bytes (0: the server did not say).
    Iso { url: String, length: u64 },
    /// A tree: the kernel's and the initrd's URLs, the layout that matched.
    Tree { kernel: String, initrd: String, layout: String, distro: Option<String> },
}

fn join(base: &str, rel: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), rel.trim_start_matches('/'))
}

/// `[images-x86_64]` (or `[images-xen]`-less trees' `[images]`) `kernel =` / `initrd =`.
pub fn treeinfo_images(text: &str) -> Option<(String, String)> {
    let mut section = String::new();
    let (mut kernel, mut initrd) = (None, None);
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if section == "images-x86_64" {
            match k.trim() {
                "kernel" => kernel = Some(v.trim().to_string()),
                "initrd" => initrd = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    Some((kernel.filter(|k| !k.is_empty())?, initrd.filter(|i| !i.is_empty())?))
}

/// A small text file of the tree, if the server has it.
fn optional_text(client: &Client, url: &str) -> Result<Option<String>, MediaError> {
    match client.text(url, TREEINFO_LIMIT) {
        Ok(t) => Ok(Some(t)),
        Err(FetchError::Status { status: 404 | 410, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Look at the location without downloading the boot files: the ISO answers, or the tree has
/// a kernel and an initrd (named by `kernel=`/`initrd=`, `.treeinfo`, or a known layout).
pub fn probe(client: &Client, url: &str, kernel: Option<&str>, initrd: Option<&str>) -> Result<Remote, MediaError> {
    if is_iso_url(url) {
        // kernel= and initrd= are paths inside the ISO: looked for once it is downloaded.
        return match client.head(url)? {
            Some(length) => Ok(Remote::Iso { url: url.into(), length }),
            None => Err(MediaError::RemoteMissing { url: url.into() }),
        };
    }
    let exists = |rel: &str| -> Result<bool, MediaError> { Ok(client.head(&join(url, rel))?.is_some()) };
    let treeinfo = optional_text(client, &join(url, ".treeinfo"))?;
    let distro = treeinfo.as_deref().and_then(treeinfo_label);
    let named = |key: &'static str, rel: Option<&str>| -> Result<Option<String>, MediaError> {
        let Some(rel) = rel else { return Ok(None) };
        if !exists(rel)? {
            return Err(MediaError::BootFileMissing { location: PathBuf::from(url), key, path: rel.into() });
        }
        Ok(Some(rel.to_string()))
    };
    let (k, i) = (named("kernel", kernel)?, named("initrd", initrd)?);
    let found = |k: String, i: String, layout: &str| Remote::Tree {
        kernel: join(url, &k),
        initrd: join(url, &i),
        layout: layout.into(),
        distro: distro.clone(),
    };
    if let (Some(k), Some(i)) = (&k, &i) {
        return Ok(found(k.clone(), i.clone(), "custom"));
    }
    let mut tried = Vec::new();
    if let Some((tk, ti)) = treeinfo.as_deref().and_then(treeinfo_images) {
        let (tk, ti) = (k.clone().unwrap_or(tk), i.clone().unwrap_or(ti));
        tried.push(format!(".treeinfo: {tk}, {ti}"));
        if exists(&tk)? && exists(&ti)? {
            return Ok(found(tk, ti, "treeinfo"));
        }
    }
    for layout in LAYOUTS {
        let mut first = |rels: &[&str], given: &Option<String>| -> Result<Option<String>, MediaError> {
            if let Some(g) = given {
                return Ok(Some(g.clone()));
            }
            for rel in rels {
                tried.push(rel.to_string());
                if exists(rel)? {
                    return Ok(Some(rel.to_string()));
                }
            }
            Ok(None)
        };
        let Some(lk) = first(layout.kernels, &k)? else { continue };
        let Some(li) = first(layout.initrds, &i)? else { continue };
        return Ok(found(lk, li, layout.name));
    }
    Err(MediaError::NoBootFiles { location: PathBuf::from(url), tried })
}

/// Download what `probe` found into `dir`: a tree's kernel and initrd (as `vmlinuz` and
/// `initrd`), or the ISO (as `location.iso`). Returns the paths; on failure nothing is left.
pub fn fetch(
    client: &Client,
    found: &Remote,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<PathBuf>, MediaError> {
    let pairs: Vec<(&str, &str)> = match found {
        Remote::Iso { url, .. } => vec![(url, "location.iso")],
        Remote::Tree { kernel, initrd, .. } => vec![(kernel, "vmlinuz"), (initrd, "initrd")],
    };
    let mut done: Vec<PathBuf> = Vec::new();
    for (url, name) in pairs {
        let dest = dir.join(name);
        let part = dir.join(format!("{name}.part"));
        let r = client
            .download(url, &part, progress)
            .map_err(MediaError::from)
            .and_then(|_| std::fs::rename(&part, &dest).map_err(|e| MediaError::io(&dest, e)));
        crate::images::fetch::discard(&part);
        if let Err(e) = r {
            for p in &done {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        done.push(dest);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_iso_urls_are_told_apart() {
        assert!(is_url("http://deb.example/debian/dists/bookworm/main/installer-amd64/current/images/netboot"));
        assert!(is_url("HTTPS://x/y.iso") && !is_url("/srv/tree") && !is_url("ftp://x/y"));
        assert!(is_iso_url("https://x/a/debian-12.iso") && is_iso_url("http://x/A.ISO?x=1"));
        assert!(!is_iso_url("http://x/tree/") && !is_iso_url("http://x/iso/tree"));
    }

    #[test]
    fn treeinfo_names_the_x86_64_kernel_and_initrd() {
        let t = "[header]\nversion = 1.2\n[images-x86_64]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\nboot.iso = images/boot.iso\n";
        assert_eq!(treeinfo_images(t), Some(("images/pxeboot/vmlinuz".into(), "images/pxeboot/initrd.img".into())));
        assert_eq!(treeinfo_images("[images-aarch64]\nkernel = k\ninitrd = i\n"), None);
        assert_eq!(join("http://h/t/", "/a/b"), "http://h/t/a/b");
    }
}
