//! `--cloud-init [root-password-generate=on,root-ssh-key=FILE,user-data=FILE,...]`: a NoCloud
//! seed, an ISO 9660 volume labelled `cidata` with `meta-data`, `user-data` and optionally
//! `network-config`, built in Rust.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::iso9660::IsoWriter;
use super::MediaError;

/// Each file given to `--cloud-init` may hold at most this many bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Generated root passwords have this many characters.
pub const PASSWORD_LEN: usize = 16;
/// The volume label cloud-init looks for.
pub const SEED_LABEL: &str = "cidata";

const KNOWN: &str = "root-password-generate, root-password-file, root-ssh-key, clouduser-ssh-key, user-data, \
                     meta-data, network-config, disable";

/// The parsed `--cloud-init` value (virt-install's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudInitOpts {
    /// Generate a random root password (printed once; must be changed at first login).
    pub root_password_generate: bool,
    /// Set root's password to the first line of this file.
    pub root_password_file: Option<PathBuf>,
    /// Authorize the public key(s) in this file for root.
    pub root_ssh_key: Option<PathBuf>,
    /// Authorize the public key(s) in this file for the image's default user (`ubuntu`,
    /// `debian`, `fedora`, ...: cloud-init's top-level `ssh_authorized_keys`).
    pub clouduser_ssh_key: Option<PathBuf>,
    /// Use this file as `user-data`, as it is.
    pub user_data: Option<PathBuf>,
    /// Use this file as `meta-data`, as it is.
    pub meta_data: Option<PathBuf>,
    /// Add this file as `network-config`.
    pub network_config: Option<PathBuf>,
    /// Disable cloud-init in the guest after its first boot.
    pub disable: bool,
}

/// The three documents of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudSeed {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

/// Split `a=b,c=d` on commas; `,,` is a literal comma (as virt-install).
fn split_opts(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                out.last_mut().expect("non-empty").push(',');
            }
            ',' => out.push(String::new()),
            c => out.last_mut().expect("non-empty").push(c),
        }
    }
    out.into_iter().filter(|p| !p.is_empty()).collect()
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, MediaError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("on" | "yes" | "true" | "1") => Ok(true),
        Some("off" | "no" | "false" | "0") => Ok(false),
        Some(v) => {
            Err(MediaError::CloudInitValue { key: key.into(), value: v.into(), reason: "expected on or off".into() })
        }
    }
}

/// Check a file named by `key` without reading it: exists, regular, not too large.
fn check_file(key: &'static str, path: &Path) -> Result<(), MediaError> {
    let bad = |reason: String| MediaError::CloudInitFile { key, path: path.into(), reason };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(bad(format!("is {} bytes, more than the limit of {MAX_FILE_BYTES} (1 MiB)", meta.len())));
    }
    Ok(())
}

/// Read a file named by `key`: at most 1 MiB of UTF-8 text.
fn read_file(key: &'static str, path: &Path) -> Result<String, MediaError> {
    let bad = |reason: String| MediaError::CloudInitFile { key, path: path.into(), reason };
    check_file(key, path)?;
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(|e| bad(e.to_string()))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(bad(format!("is more than the limit of {MAX_FILE_BYTES} bytes (1 MiB)")));
    }
    String::from_utf8(buf).map_err(|_| bad("is not UTF-8 text".into()))
}

impl FromStr for CloudInitOpts {
    type Err = MediaError;

    /// Parse the option's value; files named are checked (exist, regular, at most 1 MiB).
    fn from_str(s: &str) -> Result<CloudInitOpts, MediaError> {
        let mut o = CloudInitOpts::default();
        let mut seen = Vec::new();
        for part in split_opts(s) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.to_string())),
                None => (part.trim().to_string(), None),
            };
            if seen.contains(&key) {
                let reason = "given twice".to_string();
                return Err(MediaError::CloudInitValue { key, value: value.unwrap_or_default(), reason });
            }
            let file = |k: &'static str| -> Result<Option<PathBuf>, MediaError> {
                match value.as_deref() {
                    Some(v) if !v.is_empty() => {
                        let p = home_relative(v);
                        check_file(k, &p)?;
                        Ok(Some(p))
                    }
                    _ => Err(MediaError::CloudInitValue {
                        key: k.into(),
                        value: String::new(),
                        reason: "needs a file path".into(),
                    }),
                }
            };
            match key.as_str() {
                "root-password-generate" => o.root_password_generate = parse_bool(&key, value.as_deref())?,
                "disable" => o.disable = parse_bool(&key, value.as_deref())?,
                "root-password-file" => o.root_password_file = file("root-password-file")?,
                "root-ssh-key" => o.root_ssh_key = file("root-ssh-key")?,
                "clouduser-ssh-key" => o.clouduser_ssh_key = file("clouduser-ssh-key")?,
                "user-data" => o.user_data = file("user-data")?,
                "meta-data" => o.meta_data = file("meta-data")?,
                "network-config" => o.network_config = file("network-config")?,
                _ => return Err(MediaError::CloudInitKey { key, known: KNOWN }),
            }
            seen.push(key);
        }
        o.check()?;
        Ok(o)
    }
}

impl CloudInitOpts {
    fn check(&self) -> Result<(), MediaError> {
        if self.root_password_generate && self.root_password_file.is_some() {
            return Err(MediaError::CloudInitConflict(
                "root-password-generate and root-password-file exclude each other".into(),
            ));
        }
        if self.user_data.is_some() {
            let mut with = Vec::new();
            if self.root_password_generate {
                with.push("root-password-generate");
            }
            if self.root_password_file.is_some() {
                with.push("root-password-file");
            }
            if self.root_ssh_key.is_some() {
                with.push("root-ssh-key");
            }
            if self.clouduser_ssh_key.is_some() {
                with.push("clouduser-ssh-key");
            }
            if self.disable {
                with.push("disable");
            }
            if !with.is_empty() {
                return Err(MediaError::CloudInitConflict(format!(
                    "user-data= is used as it is; {} would be ignored (put them in the user-data file)",
                    with.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Random bytes: /dev/urandom, or the OS generator behind uuid v4 if that cannot be read.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).is_ok();
    if !ok {
        buf = std::iter::repeat_with(|| uuid::Uuid::new_v4().into_bytes()).flatten().take(n).collect();
    }
    buf
}

/// A password of `PASSWORD_LEN` letters and digits (unbiased: bytes >= 248 are dropped).
/// `~/x` as the shell would expand it (a tilde after `key=` is not expanded by the shell).
fn home_relative(v: &str) -> PathBuf {
    match (v.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(v),
    }
}

pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(PASSWORD_LEN);
    while out.len() < PASSWORD_LEN {
        for b in random_bytes(32) {
            if (b as usize) < ALPHABET.len() * 4 && out.len() < PASSWORD_LEN {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// The OpenSSH public keys of a file: one per non-empty, non-comment line.
fn ssh_keys(key: &'static str, path: &Path) -> Result<Vec<String>, MediaError> {
    let bad = |reason: &str| MediaError::CloudInitFile { key, path: path.into(), reason: reason.into() };
    let text = read_file(key, path)?;
    if text.contains("PRIVATE KEY") {
        return Err(bad("is a private key; give the public key (the .pub file)"));
    }
    let keys: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    let known = ["ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-"];
    if keys.is_empty() || !keys.iter().all(|k| known.iter().any(|p| k.starts_with(p))) {
        return Err(bad("is not an OpenSSH public key file (lines like 'ssh-ed25519 AAAA... comment')"));
    }
    Ok(keys)
}

fn password_from_file(path: &Path) -> Result<String, MediaError> {
    let text = read_file("root-password-file", path)?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.trim().is_empty() {
        let reason = "has an empty first line".into();
        return Err(MediaError::CloudInitFile { key: "root-password-file", path: path.into(), reason });
    }
    Ok(pw)
}

/// YAML scalar, quoted (JSON strings are YAML): names like `on` or `1e5` stay strings.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A `#cloud-config` for the options (no user-data file given). Root's keys go on a `root`
/// entry of `users` (after `default`, so the image's own user is still made); the default
/// user's keys are cloud-init's top-level `ssh_authorized_keys`, which it gives that user.
fn cloud_config(
    vm_name: &str,
    password: Option<(&str, bool)>,
    keys: &[String],
    user_keys: &[String],
    disable: bool,
) -> String {
    let mut c = format!("#cloud-config\nhostname: {}\n", q(vm_name));
    if let Some((pw, expire)) = password {
        c.push_str(&format!("chpasswd:\n  list: |\n    root:{pw}\n  expire: {expire}\n"));
    }
    if !user_keys.is_empty() {
        c.push_str("ssh_authorized_keys:\n");
        for k in user_keys {
            c.push_str(&format!("  - {}\n", q(k)));
        }
    }
    if !keys.is_empty() {
        c.push_str("disable_root: false\nusers:\n  - default\n  - name: root\n    ssh_authorized_keys:\n");
        for k in keys {
            c.push_str(&format!("      - {}\n", q(k)));
        }
    }
    if disable {
        c.push_str("runcmd:\n  - [touch, /etc/cloud/cloud-init.disabled]\n");
    }
    c
}

impl NoCloudSeed {
    /// The seed's documents; the second value is a generated root password, to show the user.
    pub fn from_opts(
        opts: &CloudInitOpts,
        vm_name: &str,
        instance_id: &str,
    ) -> Result<(NoCloudSeed, Option<String>), MediaError> {
        opts.check()?;
        let meta_data = match &opts.meta_data {
            Some(p) => read_file("meta-data", p)?,
            None => format!("instance-id: {instance_id}\nlocal-hostname: {vm_name}\n"),
        };
        let network_config = opts.network_config.as_deref().map(|p| read_file("network-config", p)).transpose()?;
        let mut generated = None;
        let user_data = match &opts.user_data {
            Some(p) => read_file("user-data", p)?,
            None => {
                let keys =
                    opts.root_ssh_key.as_deref().map(|p| ssh_keys("root-ssh-key", p)).transpose()?.unwrap_or_default();
                let user_keys = opts
                    .clouduser_ssh_key
                    .as_deref()
                    .map(|p| ssh_keys("clouduser-ssh-key", p))
                    .transpose()?
                    .unwrap_or_default();
                let password = if opts.root_password_generate {
                    generated = Some(generate_password());
                    generated.clone().map(|p| (p, true))
                } else {
                    opts.root_password_file.as_deref().map(password_from_file).transpose()?.map(|p| (p, false))
                };
                let pw = password.as_ref().map(|(p, e)| (p.as_str(), *e));
                cloud_config(vm_name, pw, &keys, &user_keys, opts.disable)
            }
        };
        Ok((NoCloudSeed { meta_data, user_data, network_config }, generated))
    }

    /// The seed image, dated now.
    pub fn to_iso(&self) -> Result<Vec<u8>, MediaError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs());
        self.to_iso_at(now.unwrap_or(0) as i64)
    }

    /// The seed image with every date set to `unix_secs` (same seed, same bytes).
    pub fn to_iso_at(&self, unix_secs: i64) -> Result<Vec<u8>, MediaError> {
        let mut w = IsoWriter::new(SEED_LABEL)?;
        w.fixed_time(unix_secs);
        w.add_file("meta-data", self.meta_data.as_bytes())?;
        w.add_file("user-data", self.user_data.as_bytes())?;
        if let Some(n) = &self.network_config {
            w.add_file("network-config", n.as_bytes())?;
        }
        w.build()
    }
}

/// Build the seed image for `--cloud-init`: (ISO bytes, generated root password if any).
pub fn build_seed(
    opts: &CloudInitOpts,
    vm_name: &str,
    instance_id: &str,
) -> Result<(Vec<u8>, Option<String>), MediaError> {
    let (seed, password) = NoCloudSeed::from_opts(opts, vm_name, instance_id)?;
    Ok((seed.to_iso()?, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_tilde_is_the_home_directory() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(h) = home {
            assert_eq!(home_relative("~/.ssh/id.pub"), h.join(".ssh/id.pub"));
        }
        assert_eq!(home_relative("/k/~/x"), PathBuf::from("/k/~/x"));
        assert_eq!(home_relative("~user/x"), PathBuf::from("~user/x"));
    }

    #[test]
    fn split_keeps_double_comma_as_literal() {
        assert_eq!(split_opts("a=1,b=x,,y,,c"), ["a=1", "b=x,y,c"]);
        assert!(split_opts("").is_empty());
    }

    #[test]
    fn generated_password_is_16_alphanumerics_and_varies() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn default_user_data_sets_hostname_password_keys_and_disable() {
        let keys = vec!["ssh-ed25519 AAAAC3Nza me@host".to_string()];
        let c = cloud_config("vm1", Some(("Secret123", true)), &keys, &[], true);
        assert_eq!(
            c,
            "#cloud-config\nhostname: \"vm1\"\nchpasswd:\n  list: |\n    root:Secret123\n  expire: true\n\
             disable_root: false\nusers:\n  - default\n  - name: root\n    ssh_authorized_keys:\n      - \
             \"ssh-ed25519 AAAAC3Nza me@host\"\nruncmd:\n  - [touch, /etc/cloud/cloud-init.disabled]\n"
        );
    }

    #[test]
    fn clouduser_keys_go_to_the_default_user_root_keys_to_root() {
        let user = vec!["ssh-ed25519 AAAAuser u@h".to_string()];
        let root = vec!["ssh-ed25519 AAAAroot r@h".to_string()];
        let c = cloud_config("vm1", None, &root, &user, false);
        assert_eq!(
            c,
            "#cloud-config\nhostname: \"vm1\"\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAuser u@h\"\n\
             disable_root: false\nusers:\n  - default\n  - name: root\n    ssh_authorized_keys:\n      - \
             \"ssh-ed25519 AAAAroot r@h\"\n"
        );
        let c = cloud_config("vm1", None, &[], &user, false);
        assert!(!c.contains("users:") && !c.contains("disable_root"), "{c}");
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("id.pub");
        std::fs::write(&k, "ssh-ed25519 AAAAuser u@h\n").unwrap();
        let o: CloudInitOpts = format!("clouduser-ssh-key={}", k.display()).parse().unwrap();
        assert_eq!(o.clouduser_ssh_key.as_deref(), Some(k.as_path()));
        let (seed, _) = NoCloudSeed::from_opts(&o, "vm1", "i-1").unwrap();
        assert!(
            seed.user_data.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 AAAAuser u@h\""),
            "{}",
            seed.user_data
        );
        let u = d.path().join("user-data");
        std::fs::write(&u, "#cloud-config\n").unwrap();
        let e = format!("user-data={},clouduser-ssh-key={}", u.display(), k.display()).parse::<CloudInitOpts>();
        assert!(e.unwrap_err().to_string().contains("clouduser-ssh-key would be ignored"));
    }

    #[test]
    fn bool_values_and_bare_keys_parse() {
        assert!(CloudInitOpts::from_str("root-password-generate").unwrap().root_password_generate);
        assert!(!CloudInitOpts::from_str("root-password-generate=off").unwrap().root_password_generate);
        assert!(CloudInitOpts::from_str("disable=maybe").is_err());
        assert_eq!(CloudInitOpts::from_str("").unwrap(), CloudInitOpts::default());
    }
}
