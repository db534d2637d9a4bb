//! Bounds on what kvmctl reads from a definition, far above any real one: a file given to
//! `define`, `net-define`, `net-create` or left by an editor is read up to
//! [`MAX_DEFINITION_BYTES`] (never slurped whole), and XML documents are bounded in depth and
//! attributes per element as well (`crate::xml`).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The largest definition document: 16 MiB (32,000 static DHCP hosts take 2 MiB).
pub const MAX_DEFINITION_BYTES: u64 = 16 << 20;
/// How deep XML elements may nest (libvirt's own documents nest 5 levels deep).
pub const MAX_XML_DEPTH: usize = 64;
/// Attributes of one XML element (libvirt's elements have a handful).
pub const MAX_XML_ATTRIBUTES: usize = 256;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is too large ({size}): a definition may have at most {limit} bytes (16 MiB)")]
    TooLarge { path: PathBuf, size: String, limit: u64 },
    #[error("{path}: not UTF-8 text")]
    NotText { path: PathBuf },
}

/// Read a definition file, refusing one larger than [`MAX_DEFINITION_BYTES`] after reading
/// at most one byte more.
pub fn read_definition(path: &Path) -> Result<String, ReadError> {
    let io = |source| ReadError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    (&file).take(MAX_DEFINITION_BYTES + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > MAX_DEFINITION_BYTES {
        let size = match file.metadata() {
            Ok(m) if m.is_file() => format!("{} bytes", m.len()),
            _ => format!("more than {MAX_DEFINITION_BYTES} bytes"),
        };
        return Err(ReadError::TooLarge { path: path.to_path_buf(), size, limit: MAX_DEFINITION_BYTES });
    }
    String::from_utf8(buf).map_err(|_| ReadError::NotText { path: path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_file_is_read_up_to_16_mib() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.xml");
        std::fs::write(&p, vec![b' '; MAX_DEFINITION_BYTES as usize]).unwrap();
        assert_eq!(read_definition(&p).unwrap().len() as u64, MAX_DEFINITION_BYTES);
        std::fs::write(&p, vec![b' '; MAX_DEFINITION_BYTES as usize + 1]).unwrap();
        let e = read_definition(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{} is too large (16777217 bytes): a definition may have at most 16777216 bytes (16 MiB)",
                p.display()
            )
        );
        let e = read_definition(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(
            e,
            "/dev/zero is too large (more than 16777216 bytes): a definition may have at most 16777216 bytes (16 MiB)"
        );
        std::fs::write(&p, b"\xff\xfe").unwrap();
        assert_eq!(read_definition(&p).unwrap_err().to_string(), format!("{}: not UTF-8 text", p.display()));
    }
}
