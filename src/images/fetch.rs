//! HTTPS downloads (ureq with rustls): small files into memory, images into a partial file
//! that a later run resumes with a `Range` request.
//!
//! Trusted roots are the system's (`SSL_CERT_FILE`, else Debian's
//! `/etc/ssl/certs/ca-certificates.crt`), else Mozilla's built into the binary. Plain `http://`
//! is refused, on the first request and on every redirect, except by the client `install
//! --location URL` makes ([`Client::allowing_http`]): install trees are served over http as
//! often as not, and virt-install takes them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: kvmctl downloads over HTTPS only")]
    NotHttps { url: String },
    #[error("{url}: {what}")]
    Http { url: String, what: String },
    #[error("{url}: the server answered {status}{hint}")]
    Status { url: String, status: u16, hint: &'static str },
    #[error(
        "{url}: the transfer broke off at {done} of {total} bytes ({why}); run the same command \
         again to resume"
    )]
    Interrupted { url: String, done: u64, total: String, why: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: cannot read trusted certificates: {why}")]
    Roots { path: String, why: String },
}

const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn roots() -> Result<RootCerts, FetchError> {
    let path = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from).unwrap_or_else(|| SYSTEM_ROOTS.into());
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        // No system bundle at all: Mozilla's roots, as built into the binary.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("SSL_CERT_FILE").is_none() => {
            return Ok(RootCerts::WebPki)
        }
        Err(e) => return Err(FetchError::Roots { path: path.display().to_string(), why: e.to_string() }),
    };
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(FetchError::Roots { path: path.display().to_string(), why: "no certificate in it".into() });
    }
    Ok(RootCerts::Specific(Arc::new(certs)))
}

pub struct Client {
    agent: ureq::Agent,
    https_only: bool,
}

fn check_https(url: &str) -> Result<(), FetchError> {
    if url.len() > 8 && url[..8].eq_ignore_ascii_case("https://") {
        Ok(())
    } else {
        Err(FetchError::NotHttps { url: url.into() })
    }
}

impl Client {
    pub fn new() -> Result<Client, FetchError> {
        Client::with(true)
    }

    /// A client that also fetches plain `http://` URLs (and follows redirects to them).
    pub fn allowing_http() -> Result<Client, FetchError> {
        Client::with(false)
    }

    fn with(https_only: bool) -> Result<Client, FetchError> {
        let tls = TlsConfig::builder().root_certs(roots()?).build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(https_only)
            .http_status_as_error(false)
            .max_redirects(10)
            .timeout_connect(Some(Duration::from_secs(30)))
            // A stalled server: no byte for a minute breaks the transfer (it can be resumed).
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .user_agent(concat!("kvmctl/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client { agent: ureq::Agent::new_with_config(config), https_only })
    }

    fn check_scheme(&self, url: &str) -> Result<(), FetchError> {
        let http = url.len() > 7 && url[..7].eq_ignore_ascii_case("http://");
        if self.https_only || !http {
            check_https(url)?;
        }
        Ok(())
    }

    /// Whether `url` names a file (HEAD answered 2xx: `Some(length)` when the server gives
    /// one, else `Some(0)`); `None` for 404 and 410; other answers are errors.
    pub fn head(&self, url: &str) -> Result<Option<u64>, FetchError> {
        self.check_scheme(url)?;
        let resp =
            self.agent.head(url).call().map_err(|e| FetchError::Http { url: url.into(), what: e.to_string() })?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(Some(
                resp.headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            404 | 410 => Ok(None),
            _ => Err(FetchError::Status {
                url: url.into(),
                status,
                hint: if status == 403 { " (access denied)" } else { "" },
            }),
        }
    }

    fn get(
        &self,
        url: &str,
        range_from: Option<(u64, &Validator)>,
    ) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
        self.check_scheme(url)?;
        let mut req = self.agent.get(url);
        if let Some((from, v)) = range_from {
            req = req.header("Range", format!("bytes={from}-"));
            // Only the same file may be resumed: otherwise the server sends it whole (200).
            if let Some(tag) = v.etag.as_deref().or(v.last_modified.as_deref()) {
                req = req.header("If-Range", tag);
            }
        }
        let resp = req.call().map_err(|e| FetchError::Http { url: url.into(), what: e.to_string() })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) && status != 416 {
            let hint = match status {
                404 | 410 => " (not found: check the URL, or the catalog entry's)",
                401 | 403 => " (access denied)",
                _ => "",
            };
            return Err(FetchError::Status { url: url.into(), status, hint });
        }
        Ok(resp)
    }

    /// A small text file (a SUMS list), at most `limit` bytes.
    pub fn text(&self, url: &str, limit: u64) -> Result<String, FetchError> {
        String::from_utf8(self.bytes(url, limit)?)
            .map_err(|e| FetchError::Http { url: url.into(), what: format!("not UTF-8 text: {e}") })
    }

    /// A small binary file (a detached signature), at most `limit` bytes.
    pub fn bytes(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let mut resp = self.get(url, None)?;
        if resp.status().as_u16() == 416 {
            return Err(FetchError::Status { url: url.into(), status: 416, hint: "" });
        }
        resp.body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| FetchError::Http { url: url.into(), what: e.to_string() })
    }

    /// Download `url` into `part` (resuming what an earlier run left there, as recorded in
    /// `part`'s metadata file), retrying a broken transfer a few times where it broke off.
    /// `progress(done, total)`. Returns the length.
    pub fn download(&self, url: &str, part: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, FetchError> {
        let meta_path = part.with_extension("part.json");
        let mut meta = read_meta(&meta_path).filter(|m| m.url == url).unwrap_or_else(|| Meta::new(url));
        let mut attempts = 0;
        loop {
            let have = if meta.url == url { file_len(part) } else { 0 };
            match self.transfer(url, part, &meta_path, &mut meta, have, progress) {
                Ok(n) => return Ok(n),
                Err(e @ FetchError::Interrupted { .. }) if attempts < 3 => {
                    attempts += 1;
                    tracing::warn!("{e}; resuming");
                    std::thread::sleep(Duration::from_millis(500 * attempts));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn transfer(
        &self,
        url: &str,
        part: &Path,
        meta_path: &Path,
        meta: &mut Meta,
        have: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, FetchError> {
        let io = |source| FetchError::Io { path: part.display().to_string(), source };
        let resuming = have > 0 && meta.validator.is_some();
        let v = meta.validator.clone().unwrap_or_default();
        let mut resp = self.get(url, resuming.then_some((have, &v)))?;
        let status = resp.status().as_u16();
        let header = |h: &str| resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
        if status == 416 {
            // Nothing left past what we have: complete if that is the whole file.
            if resuming && meta.length == Some(have) {
                progress(have, have);
                return Ok(have);
            }
            return Err(FetchError::Status { url: url.into(), status, hint: "" });
        }
        let (mut file, mut done, total) = if status == 206 && resuming {
            let f = OpenOptions::new().append(true).open(part).map_err(io)?;
            (f, have, meta.length)
        } else {
            // A fresh transfer (the first, or the server sent the whole file again).
            let f = private_create(part).map_err(io)?;
            let length = header("content-length").and_then(|l| l.parse().ok());
            meta.length = length;
            meta.validator = Some(Validator { etag: header("etag"), last_modified: header("last-modified") });
            write_meta(meta_path, meta)
                .map_err(|source| FetchError::Io { path: meta_path.display().to_string(), source })?;
            (f, 0, length)
        };
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 20];
        let total_s = || total.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    file.flush().map_err(io)?;
                    return Err(FetchError::Interrupted {
                        url: url.into(),
                        done,
                        total: total_s(),
                        why: e.to_string(),
                    });
                }
            };
            file.write_all(&buf[..n]).map_err(io)?;
            done += n as u64;
            progress(done, total.unwrap_or(done));
        }
        if let Some(t) = total {
            if done != t {
                return Err(FetchError::Interrupted {
                    url: url.into(),
                    done,
                    total: t.to_string(),
                    why: "the connection closed early".into(),
                });
            }
        }
        file.sync_all().map_err(io)?;
        Ok(done)
    }
}

/// What identifies the file a partial download holds the start of.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Validator {
    etag: Option<String>,
    last_modified: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    url: String,
    length: Option<u64>,
    validator: Option<Validator>,
}

impl Meta {
    fn new(url: &str) -> Meta {
        Meta { url: url.into(), length: None, validator: None }
    }
}

fn read_meta(p: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn write_meta(p: &Path, m: &Meta) -> std::io::Result<()> {
    crate::state::atomic_write(p, &serde_json::to_vec(m).expect("serializable"))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn private_create(p: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(p)
}

/// Remove a partial download and its metadata.
pub fn discard(part: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(part.with_extension("part.json"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_are_fetched() {
        assert!(check_https("https://cloud.debian.org/x").is_ok());
        assert!(check_https("HTTPS://example.org/x").is_ok());
        for bad in ["http://example.org/x", "ftp://x/y", "file:///etc/passwd", "https:/", "/etc/passwd"] {
            assert!(matches!(check_https(bad), Err(FetchError::NotHttps { .. })), "{bad}");
        }
    }
}
