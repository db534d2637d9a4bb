//! `--location PATH[,kernel=K,initrd=I]`: find an installer's kernel and initrd in a directory
//! tree or inside an ISO image (read in Rust, no loop mount), by the known distribution layouts.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::iso9660::{Entry, Iso};
use super::MediaError;

/// Where one distribution family keeps its installer kernel and initrd.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub name: &'static str,
    pub kernels: &'static [&'static str],
    pub initrds: &'static [&'static str],
}

/// The layouts tried, in order.
pub const LAYOUTS: &[Layout] = &[
    Layout { name: "debian", kernels: &["install.amd/vmlinuz"], initrds: &["install.amd/initrd.gz"] },
    Layout { name: "debian-install", kernels: &["install/vmlinuz"], initrds: &["install/initrd.gz"] },
    Layout {
        name: "debian-netboot",
        kernels: &["debian-installer/amd64/linux"],
        initrds: &["debian-installer/amd64/initrd.gz"],
    },
    Layout {
        name: "ubuntu-netboot",
        kernels: &["ubuntu-installer/amd64/linux"],
        initrds: &["ubuntu-installer/amd64/initrd.gz"],
    },
    Layout {
        name: "ubuntu-casper",
        kernels: &["casper/vmlinuz", "casper/vmlinuz.efi"],
        initrds: &["casper/initrd", "casper/initrd.gz", "casper/initrd.lz"],
    },
    Layout { name: "fedora", kernels: &["images/pxeboot/vmlinuz"], initrds: &["images/pxeboot/initrd.img"] },
    Layout { name: "opensuse", kernels: &["boot/x86_64/loader/linux"], initrds: &["boot/x86_64/loader/initrd"] },
];

/// Metadata files read for the distribution label are capped at this size.
const MAX_INFO_BYTES: u64 = 64 * 1024;

/// A kernel or initrd found in a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// A file in a directory tree.
    Path(PathBuf),
    /// A file inside the ISO image: its path there and its directory entry.
    Iso { path: String, entry: Entry },
}

impl BootFile {
    /// Where it is, for messages: a host path, or the path inside the image.
    pub fn describe(&self) -> String {
        match self {
            BootFile::Path(p) => p.display().to_string(),
            BootFile::Iso { path, .. } => path.clone(),
        }
    }
}

/// What `find_boot_files` found.
#[derive(Debug)]
pub struct BootFiles {
    pub location: PathBuf,
    pub kernel: BootFile,
    pub initrd: BootFile,
    /// The layout that matched (`debian`, `fedora`, ...), or `custom` when both were named.
    pub layout: String,
    /// From `.disk/info` (Debian, Ubuntu) or `.treeinfo` (Fedora, RHEL), when present.
    pub distro: Option<String>,
    /// The ISO's volume id, for an image.
    pub volume_id: Option<String>,
    iso: Option<Iso>,
}

/// Host paths of the kernel and initrd, ready for qemu's `-kernel`/`-initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPaths {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

enum Source {
    Dir(PathBuf),
    Iso(Iso),
}

impl Source {
    /// The file at `rel`, if the location has one (a directory there does not count).
    fn probe(&self, rel: &str) -> Result<Option<BootFile>, MediaError> {
        let rel = rel.trim_start_matches('/');
        match self {
            Source::Dir(root) => {
                let p = root.join(rel);
                if !p.is_file() {
                    return Ok(None);
                }
                std::fs::File::open(&p).map_err(|e| MediaError::io(&p, e))?;
                Ok(Some(BootFile::Path(p)))
            }
            Source::Iso(iso) => match iso.find(rel)? {
                Some(entry) if !entry.is_dir => {
                    iso.check_file(&entry)?;
                    Ok(Some(BootFile::Iso { path: rel.to_string(), entry }))
                }
                _ => Ok(None),
            },
        }
    }

    /// A small text file's content, if present (for the distribution label).
    fn small_text(&self, rel: &str) -> Result<Option<String>, MediaError> {
        let bytes = match self {
            Source::Dir(root) => {
                let p = root.join(rel);
                if !p.is_file() {
                    return Ok(None);
                }
                let f = std::fs::File::open(&p).map_err(|e| MediaError::io(&p, e))?;
                let mut buf = Vec::new();
                f.take(MAX_INFO_BYTES).read_to_end(&mut buf).map_err(|e| MediaError::io(&p, e))?;
                buf
            }
            Source::Iso(iso) => match iso.find(rel)? {
                Some(e) if !e.is_dir && e.size <= MAX_INFO_BYTES => iso.read_file(&e)?,
                _ => return Ok(None),
            },
        };
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// Find the installer kernel and initrd in `location` (a directory or an ISO image).
/// `kernel`/`initrd` name them explicitly (paths inside the location); a part not named is
/// looked for in the known layouts, in `LAYOUTS` order.
pub fn find_boot_files(location: &Path, kernel: Option<&str>, initrd: Option<&str>) -> Result<BootFiles, MediaError> {
    let meta = std::fs::metadata(location).map_err(|e| MediaError::io(location, e))?;
    let source = if meta.is_dir() { Source::Dir(location.into()) } else { Source::Iso(Iso::open(location)?) };
    let wanted = |key: &'static str, rel: Option<&str>| -> Result<Option<BootFile>, MediaError> {
        let Some(rel) = rel else { return Ok(None) };
        match source.probe(rel)? {
            Some(f) => Ok(Some(f)),
            None => Err(MediaError::BootFileMissing { location: location.into(), key, path: rel.into() }),
        }
    };
    let (k_override, i_override) = (wanted("kernel", kernel)?, wanted("initrd", initrd)?);
    let (kernel, initrd, layout) = match (k_override, i_override) {
        (Some(k), Some(i)) => (k, i, "custom".to_string()),
        (k, i) => {
            let (lk, li, name) = search_layouts(&source, location, k.is_none(), i.is_none())?;
            (k.or(lk).expect("kernel found"), i.or(li).expect("initrd found"), name.to_string())
        }
    };
    let distro = distro_label(&source)?;
    let (volume_id, iso) = match source {
        Source::Iso(iso) => (Some(iso.volume_id().to_string()), Some(iso)),
        Source::Dir(_) => (None, None),
    };
    Ok(BootFiles { location: location.into(), kernel, initrd, layout, distro, volume_id, iso })
}

type Found = (Option<BootFile>, Option<BootFile>, &'static str);

/// The first layout that has every part still wanted; the error lists each path tried.
fn search_layouts(source: &Source, location: &Path, want_k: bool, want_i: bool) -> Result<Found, MediaError> {
    let mut tried = Vec::new();
    for layout in LAYOUTS {
        let mut k = None;
        if want_k {
            for rel in layout.kernels {
                tried.push(rel.to_string());
                if let Some(f) = source.probe(rel)? {
                    k = Some(f);
                    break;
                }
            }
            if k.is_none() {
                continue;
            }
        }
        let mut i = None;
        if want_i {
            for rel in layout.initrds {
                tried.push(rel.to_string());
                if let Some(f) = source.probe(rel)? {
                    i = Some(f);
                    break;
                }
            }
            if i.is_none() {
                continue;
            }
        }
        return Ok((k, i, layout.name));
    }
    Err(MediaError::NoBootFiles { location: location.into(), tried })
}

/// `.disk/info`'s first line, or "name version" from `.treeinfo`.
fn distro_label(source: &Source) -> Result<Option<String>, MediaError> {
    if let Some(info) = source.small_text(".disk/info")? {
        let line = info.lines().next().unwrap_or("").trim().trim_matches('"').trim();
        if !line.is_empty() {
            return Ok(Some(line.to_string()));
        }
    }
    Ok(source.small_text(".treeinfo")?.and_then(|t| treeinfo_label(&t)))
}

/// `[release] name/version` (productmd 1.x) or `[general] family/version` (older trees).
pub fn treeinfo_label(text: &str) -> Option<String> {
    let mut section = String::new();
    let (mut release, mut general) = ((None, None), (None, None));
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let (k, v) = (k.trim(), Some(v.trim().to_string()));
        match (section.as_str(), k) {
            ("release", "name") => release.0 = v,
            ("release", "version") => release.1 = v,
            ("general", "family") => general.0 = v,
            ("general", "version") => general.1 = v,
            _ => {}
        }
    }
    let (name, version) = if release.0.is_some() { release } else { general };
    let name = name.filter(|n| !n.is_empty())?;
    Some(match version.filter(|v| !v.is_empty()) {
        Some(v) => format!("{name} {v}"),
        None => name,
    })
}

impl BootFiles {
    /// Whether the files are inside an ISO image (and `extract_to` copies them out).
    pub fn is_iso(&self) -> bool {
        self.iso.is_some()
    }

    /// Host paths for qemu. From an ISO, the files are copied (streamed) into `dir` as `vmlinuz`
    /// and `initrd` (the caller passes the VM's runtime dir); from a directory tree, the tree's
    /// own paths are returned and nothing is copied.
    pub fn extract_to(&self, dir: &Path) -> Result<BootPaths, MediaError> {
        let out = |f: &BootFile, name: &str| -> Result<PathBuf, MediaError> {
            match (f, &self.iso) {
                (BootFile::Path(p), _) => Ok(p.clone()),
                (BootFile::Iso { entry, .. }, Some(iso)) => {
                    let dest = dir.join(name);
                    iso.copy_file(entry, &dest)?;
                    Ok(dest)
                }
                (BootFile::Iso { path, .. }, None) => {
                    Err(MediaError::NotInIso { iso: self.location.clone(), path: path.clone() })
                }
            }
        };
        let kernel = out(&self.kernel, "vmlinuz")?;
        let initrd = out(&self.initrd, "initrd").inspect_err(|_| {
            if self.is_iso() {
                let _ = std::fs::remove_file(&kernel);
            }
        })?;
        Ok(BootPaths { kernel, initrd })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn treeinfo_label_reads_release_then_general() {
        let new = "[header]\ntype = productmd.treeinfo\n[release]\nname = Fedora\nshort = Fedora\nversion = 39\n";
        assert_eq!(treeinfo_label(new).as_deref(), Some("Fedora 39"));
        let old = "[general]\nfamily = Red Hat Enterprise Linux\nversion = 7.9\narch = x86_64\n";
        assert_eq!(treeinfo_label(old).as_deref(), Some("Red Hat Enterprise Linux 7.9"));
        assert_eq!(treeinfo_label("[images-x86_64]\nkernel = images/pxeboot/vmlinuz\n"), None);
    }

    #[test]
    fn directory_tree_layouts_are_found_in_order() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("images/pxeboot")).unwrap();
        std::fs::write(d.path().join("images/pxeboot/vmlinuz"), "k").unwrap();
        std::fs::write(d.path().join("images/pxeboot/initrd.img"), "i").unwrap();
        std::fs::write(d.path().join(".treeinfo"), "[release]\nname = Fedora\nversion = 40\n").unwrap();
        let b = find_boot_files(d.path(), None, None).unwrap();
        assert_eq!(b.layout, "fedora");
        assert_eq!(b.distro.as_deref(), Some("Fedora 40"));
        assert_eq!(b.kernel, BootFile::Path(d.path().join("images/pxeboot/vmlinuz")));
        let p = b.extract_to(Path::new("/nonexistent")).unwrap();
        assert_eq!(p.initrd, d.path().join("images/pxeboot/initrd.img"));
    }

    #[test]
    fn missing_override_names_the_key() {
        let d = tempfile::tempdir().unwrap();
        let e = find_boot_files(d.path(), Some("boot/k"), None).unwrap_err();
        assert!(matches!(e, MediaError::BootFileMissing { key: "kernel", .. }), "{e}");
    }
}
