//! The supervisor's side of the serial console: everything the guest prints goes to
//! `console.log` (from the first byte), to a replay buffer (the last screenful) and to every
//! attached client; one client at a time may type (`--force` takes over), any number may watch.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

/// How much output a new client is shown first.
const REPLAY: usize = 4096;
/// console.log is rotated (to console.log.1) beyond this size.
pub const LOG_LIMIT: u64 = 16 << 20;

pub struct Hub {
    log: PathBuf,
    /// `--console file,path=`: a copy of the output, written as it comes (0600).
    copy: Mutex<Option<std::fs::File>>,
    ring: Mutex<VecDeque<u8>>,
    tx: broadcast::Sender<Arc<Vec<u8>>>,
    serial: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    writer: Mutex<Option<(u64, oneshot::Sender<()>)>>,
    next_id: AtomicU64,
}

/// The console copy file: 0600 whatever the umask or an earlier mode, never through a symlink.
fn open_copy(p: &std::path::Path, append: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let f = OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(p)?;
    if !append {
        f.set_len(0)?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

impl Hub {
    pub fn new(log: PathBuf) -> Arc<Hub> {
        Hub::with_copy(log, None, false)
    }

    /// A hub that also copies the output to `copy` (truncated first, unless `append`).
    pub fn with_copy(log: PathBuf, copy: Option<&std::path::Path>, append: bool) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(256);
        let copy = copy.and_then(|p| match open_copy(p, append) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %p.display(), "cannot open the console copy file: {e}");
                None
            }
        });
        Arc::new(Hub {
            log,
            copy: Mutex::new(copy),
            ring: Mutex::new(VecDeque::with_capacity(REPLAY)),
            tx,
            serial: tokio::sync::Mutex::new(None),
            writer: Mutex::new(None),
            next_id: AtomicU64::new(1),
        })
    }

    /// A hub for an adopted VM: console.log goes on (appended to), and the replay buffer
    /// starts with what the log ends with, so a client attaching at once sees the last screen.
    pub fn resume(log: PathBuf, copy: Option<&std::path::Path>) -> Arc<Hub> {
        use std::io::{Read, Seek, SeekFrom};
        let hub = Hub::with_copy(log, copy, true);
        if let Ok(mut f) = std::fs::File::open(&hub.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut tail = Vec::new();
            if f.seek(SeekFrom::Start(len.saturating_sub(REPLAY as u64))).is_ok() && f.read_to_end(&mut tail).is_ok() {
                hub.ring.lock().expect("ring lock").extend(tail);
            }
        }
        hub
    }

    /// Take over qemu's serial chardev socket (again after a restart).
    pub async fn attach_serial(self: &Arc<Hub>, stream: UnixStream) {
        let (mut r, w) = stream.into_split();
        *self.serial.lock().await = Some(w);
        let hub = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => hub.output(&buf[..n]),
                }
            }
        });
    }

    fn output(&self, data: &[u8]) {
        // console.log is created 0600 by `start`; a rotated-away one comes back 0600 too.
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.log) {
            let _ = f.write_all(data);
            if f.metadata().map(|m| m.len() > LOG_LIMIT).unwrap_or(false) {
                let _ = std::fs::rename(&self.log, self.log.with_extension("log.1"));
            }
        }
        if let Some(f) = self.copy.lock().expect("copy lock").as_mut() {
            let _ = f.write_all(data);
        }
        {
            let mut ring = self.ring.lock().expect("ring lock");
            ring.extend(data);
            let excess = ring.len().saturating_sub(REPLAY);
            ring.drain(..excess);
        }
        let _ = self.tx.send(Arc::new(data.to_vec()));
    }

    /// The replay buffer, starting at a line boundary when there is one.
    fn replay(&self) -> Vec<u8> {
        let ring = self.ring.lock().expect("ring lock");
        let v: Vec<u8> = ring.iter().copied().collect();
        match v.iter().position(|b| *b == b'\n') {
            Some(i) if v.len() == REPLAY => v[i + 1..].to_vec(),
            _ => v,
        }
    }

    /// Claim the writer seat; with `force`, the current writer is told and detached.
    fn claim(&self, force: bool) -> Result<(u64, oneshot::Receiver<()>), String> {
        let mut w = self.writer.lock().expect("writer lock");
        if w.is_some() && !force {
            return Err("the console is in use by another session (--force takes it over, --readonly watches)".into());
        }
        if let Some((_, kick)) = w.take() {
            let _ = kick.send(());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        *w = Some((id, tx));
        Ok((id, rx))
    }

    fn release(&self, id: u64) {
        let mut w = self.writer.lock().expect("writer lock");
        if w.as_ref().is_some_and(|(cur, _)| *cur == id) {
            *w = None;
        }
    }

    /// Serve one console client on `stream` (the JSON request was already read). Returns when
    /// the client leaves or is taken over.
    pub async fn session(self: Arc<Hub>, mut stream: UnixStream, force: bool, readonly: bool) {
        let claim = if readonly { Ok(None) } else { self.claim(force).map(Some) };
        let (id, mut kicked) = match claim {
            Err(e) => {
                let _ =
                    stream.write_all(format!("{}\n", serde_json::json!({"ok": false, "error": e})).as_bytes()).await;
                return;
            }
            Ok(Some((id, rx))) => (Some(id), Some(rx)),
            Ok(None) => (None, None),
        };
        let mut rx = self.tx.subscribe();
        let mut hello = format!("{}\n", serde_json::json!({"ok": true})).into_bytes();
        hello.extend(self.replay());
        let (mut cr, mut cw) = stream.into_split();
        if cw.write_all(&hello).await.is_err() {
            if let Some(i) = id {
                self.release(i);
            }
            return;
        }
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Ok(data) => if cw.write_all(&data).await.is_err() { break },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
                n = cr.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) if id.is_some() => {
                        if let Some(w) = self.serial.lock().await.as_mut() {
                            let _ = w.write_all(&buf[..n]).await;
                        }
                    }
                    Ok(_) => {}
                },
                _ = async { match kicked.as_mut() { Some(k) => { let _ = k.await; } None => std::future::pending().await } } => {
                    let _ = cw.write_all(b"\r\n[kvmctl: another session took over this console]\r\n").await;
                    break;
                }
            }
        }
        if let Some(i) = id {
            self.release(i);
        }
    }
}
