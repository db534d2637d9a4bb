//! Checksums: `sha256:HEX` / `sha512:HEX` as given on the command line, the lines of a
//! distribution's SUMS file (GNU `HEX  NAME`, `HEX *NAME`, BSD `SHA256 (NAME) = HEX`, inside a
//! PGP clear-signed message or not), and hashing a file.

use std::fmt;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha256,
    Sha512,
}

impl Algo {
    fn hex_len(self) -> usize {
        match self {
            Algo::Sha256 => 64,
            Algo::Sha512 => 128,
        }
    }
}

/// An expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algo: Algo,
    /// Lowercase hex.
    pub hex: String,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match self.algo {
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        };
        write!(f, "{a}:{}", self.hex)
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A digest by its length: 64 hex digits are SHA-256, 128 SHA-512.
fn by_len(hex: &str) -> Option<Checksum> {
    let algo = match hex.len() {
        64 => Algo::Sha256,
        128 => Algo::Sha512,
        _ => return None,
    };
    is_hex(hex).then(|| Checksum { algo, hex: hex.to_ascii_lowercase() })
}

impl std::str::FromStr for Checksum {
    type Err = String;
    /// `sha256:HEX`, `sha512:HEX`.
    fn from_str(s: &str) -> Result<Checksum, String> {
        let usage = || format!("checksum '{s}': use sha256:HEX (64 hex digits) or sha512:HEX (128)");
        let (algo, hex) = s.split_once(':').ok_or_else(usage)?;
        let algo = match algo.to_ascii_lowercase().as_str() {
            "sha256" => Algo::Sha256,
            "sha512" => Algo::Sha512,
            _ => return Err(usage()),
        };
        if hex.len() != algo.hex_len() || !is_hex(hex) {
            return Err(usage());
        }
        Ok(Checksum { algo, hex: hex.to_ascii_lowercase() })
    }
}

/// The digest a SUMS file gives for `file` (a bare file name), if any.
pub fn find_in_sums(sums: &str, file: &str) -> Option<Checksum> {
    for line in sums.lines().map(str::trim) {
        // BSD style (Fedora's CHECKSUM): `SHA256 (NAME) = HEX`.
        if let Some((tag, rest)) = line.split_once(" (") {
            if let Some((name, hex)) = rest.split_once(") = ") {
                let algo = match tag {
                    "SHA256" => Algo::Sha256,
                    "SHA512" => Algo::Sha512,
                    _ => continue,
                };
                if name == file && hex.len() == algo.hex_len() && is_hex(hex) {
                    return Some(Checksum { algo, hex: hex.to_ascii_lowercase() });
                }
                continue;
            }
        }
        // GNU style (sha256sum): `HEX  NAME` or `HEX *NAME` (binary mode), or a bare `HEX`
        // (a `FILE.sha512` holding only the digest, as Alpine and Arch publish).
        let mut parts = line.splitn(2, char::is_whitespace);
        let hex = parts.next().unwrap_or("");
        let name = parts.next().map(|n| n.trim_start().trim_start_matches('*')).unwrap_or("");
        let name = name.strip_prefix("./").unwrap_or(name);
        if name == file || (name.is_empty() && sums.lines().filter(|l| !l.trim().is_empty()).count() == 1) {
            if let Some(c) = by_len(hex) {
                return Some(c);
            }
        }
    }
    None
}

/// The digest of a file's bytes with `algo`, as lowercase hex.
pub fn hash_file(path: &Path, algo: Algo) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    macro_rules! run {
        ($h:expr) => {{
            let mut h = $h;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
        }};
    }
    Ok(match algo {
        Algo::Sha256 => run!(Sha256::new()),
        Algo::Sha512 => run!(Sha512::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn every_sums_style_distributions_publish_is_read() {
        let b512 = "ab".repeat(64);
        let gnu = format!("{A}  other.qcow2\n{A}  debian-12-genericcloud-amd64.qcow2\n");
        assert_eq!(find_in_sums(&gnu, "debian-12-genericcloud-amd64.qcow2").unwrap().hex, A);
        assert_eq!(find_in_sums(&format!("{A} *noble.img\n"), "noble.img").unwrap().algo, Algo::Sha256);
        let bsd = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2: 123 bytes\nSHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = {A}\n-----BEGIN PGP SIGNATURE-----\n"
        );
        assert_eq!(find_in_sums(&bsd, "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2").unwrap().hex, A);
        // A file holding just the digest (Alpine's FILE.sha512).
        let only = format!("{b512}\n");
        assert_eq!(find_in_sums(&only, "anything.qcow2").unwrap().algo, Algo::Sha512);
        assert_eq!(find_in_sums(&format!("{b512}  alpine.qcow2\n"), "alpine.qcow2").unwrap().hex, b512);
        // Not listed, a name that only ends the same, or a malformed digest.
        assert!(find_in_sums(&gnu, "missing.qcow2").is_none());
        assert!(find_in_sums(&gnu, "genericcloud-amd64.qcow2").is_none());
        assert!(find_in_sums("xyz  f.qcow2\n", "f.qcow2").is_none());
    }

    #[test]
    fn command_line_checksums_are_checked() {
        let c: Checksum = format!("sha256:{}", A.to_uppercase()).parse().unwrap();
        assert_eq!(c.hex, A);
        assert_eq!(c.to_string(), format!("sha256:{A}"));
        for bad in ["sha256:abc", "md5:d41d8cd98f00b204e9800998ecf8427e", A, &format!("sha512:{A}")] {
            assert!(bad.parse::<Checksum>().is_err(), "{bad}");
        }
    }

    #[test]
    fn files_hash_to_the_known_digests() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, b"test").unwrap();
        assert_eq!(hash_file(&p, Algo::Sha256).unwrap(), A);
        let h = hash_file(&p, Algo::Sha512).unwrap();
        assert!(h.starts_with("ee26b0dd4af7e749aa1a8ee3c10ae9923f618980772e473f8819a5d4940e0db2"), "{h}");
    }
}
