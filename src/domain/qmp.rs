//! QMP client: a small tolerant transport of our own under qapi's typed commands.
//!
//! qapi's own stream drops the connection on any event its schema does not know, so the wire
//! layer is ours:
//!
//! - **wire**: greeting (qemu version kept), `qmp_capabilities`, commands as JSON lines with a
//!   numeric `id`; a reader task matches replies to waiting commands by id and passes every
//!   event on as raw JSON (unknown ones too); `{"error": {class, desc}}` becomes
//!   [`QmpError::Command`]; each command has a timeout; all traffic is logged at debug level.
//! - **typed**: [`QmpHandle::execute`] with qapi's command types (`qapi::qmp::query_status {}`...),
//!   and [`QmpHandle::execute_raw`] for anything else.
//! - **fd passing**: [`QmpHandle::getfd`] sends the fd as SCM_RIGHTS with the command's bytes.
//!
//! [`connect`] returns a cloneable [`QmpHandle`] for commands and a [`QmpEvents`] receiver, so a
//! supervisor can wait for events in one task and issue commands from others.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Default time a command (and the greeting) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("QMP socket I/O failed while sending {command}")]
    Write { command: String, source: io::Error },
    #[error("cannot pass fd {fd} to qemu as {name:?}")]
    SendFd { name: String, fd: RawFd, source: io::Error },
    #[error("bad QMP greeting: {line}")]
    Greeting { line: String },
    #[error("QMP connection closed while waiting for {waiting_for}")]
    Closed { waiting_for: String },
    #[error("timed out after {timeout:?} waiting for {waiting_for}")]
    Timeout { waiting_for: String, timeout: Duration },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("cannot encode the arguments of QMP command {command}")]
    Encode { command: String, source: serde_json::Error },
    #[error("cannot decode the reply to QMP command {command}: {reply}")]
    Decode { command: String, reply: String, source: serde_json::Error },
}

impl QmpError {
    /// The QMP error class (`GenericError`, `CommandNotFound`...) of a command error.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// What qemu said when we connected.
#[derive(Clone, Debug)]
pub struct Greeting {
    pub version: qapi::qmp::VersionInfo,
    /// Capabilities qemu offers (e.g. `oob`); none are enabled.
    pub capabilities: Vec<String>,
}

impl Greeting {
    /// Parse a greeting line: `{"QMP": {"version": {...}, "capabilities": [...]}}`.
    pub fn parse(line: &str) -> Result<Greeting, QmpError> {
        let bad = || QmpError::Greeting { line: line.trim_end().to_string() };
        let value: Value = serde_json::from_str(line).map_err(|_| bad())?;
        let qmp = value.get("QMP").ok_or_else(bad)?;
        let version = serde_json::from_value(qmp.get("version").cloned().ok_or_else(bad)?).map_err(|_| bad())?;
        let capabilities = match qmp.get("capabilities") {
            Some(Value::Array(caps)) => caps.iter().map(|c| c.as_str().map_or(c.to_string(), String::from)).collect(),
            _ => Vec::new(),
        };
        Ok(Greeting { version, capabilities })
    }

    /// `major.minor.micro`, e.g. `7.2.0`.
    pub fn qemu_version(&self) -> String {
        let v = &self.version.qemu;
        format!("{}.{}.{}", v.major, v.minor, v.micro)
    }
}

/// One line from qemu, classified.
#[derive(Debug, PartialEq)]
pub enum Message {
    Event(Value),
    Reply { id: u64, result: Result<Value, ErrorReply> },
    Other(Value),
}

/// The `error` member of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub class: String,
    pub desc: String,
}

impl Message {
    /// Sort a parsed line into event, reply (by our numeric id) or anything else.
    pub fn classify(value: Value) -> Message {
        if value.get("event").is_some() {
            return Message::Event(value);
        }
        let Some(id) = value.get("id").and_then(Value::as_u64) else {
            return Message::Other(value);
        };
        if let Some(ret) = value.get("return") {
            return Message::Reply { id, result: Ok(ret.clone()) };
        }
        match value.get("error") {
            Some(err) => {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                Message::Reply { id, result: Err(ErrorReply { class: field("class"), desc: field("desc") }) }
            }
            None => Message::Other(value),
        }
    }
}

/// The name of a raw event (`SHUTDOWN`, `STOP`...).
pub fn event_name(event: &Value) -> Option<&str> {
    event.get("event").and_then(Value::as_str)
}

/// Decode a raw event as qapi's type `E` if its name matches (events without `data` decode as `{}`).
pub fn event_data<E: qapi::Event>(event: &Value) -> Option<Result<E, serde_json::Error>> {
    if event_name(event) != Some(E::NAME) {
        return None;
    }
    Some(serde_json::from_value(event.get("data").cloned().unwrap_or_else(|| json!({}))))
}

type Reply = Result<Value, ErrorReply>;

/// Commands waiting for their reply, by id. `closed` once the reader has stopped.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes a command's slot when its caller stops waiting (reply, timeout or cancellation).
struct Slot<'a> {
    pending: &'a Mutex<Pending>,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(self.pending).waiting.remove(&self.id);
    }
}

struct Shared {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    greeting: Greeting,
}

/// Issues commands; cheap to clone, usable from many tasks at once.
#[derive(Clone)]
pub struct QmpHandle {
    shared: Arc<Shared>,
    timeout: Duration,
}

/// Events from qemu, raw, in arrival order. `recv` returns `None` once the connection is gone.
pub struct QmpEvents {
    rx: mpsc::UnboundedReceiver<Value>,
}

impl QmpEvents {
    pub async fn recv(&mut self) -> Option<Value> {
        self.rx.recv().await
    }

    /// An event already received, if any.
    pub fn try_recv(&mut self) -> Option<Value> {
        self.rx.try_recv().ok()
    }

    /// Wait for the event `name`, skipping (and logging) others.
    pub async fn wait_for(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        let waiting_for = || format!("event {name}");
        let wait = async {
            while let Some(ev) = self.rx.recv().await {
                if event_name(&ev) == Some(name) {
                    return Ok(ev);
                }
                debug!(event = ?event_name(&ev), want = name, "skipping QMP event");
            }
            Err(QmpError::Closed { waiting_for: waiting_for() })
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| QmpError::Timeout { waiting_for: waiting_for(), timeout })?
    }
}

/// Connect to qemu's QMP socket, read the greeting and negotiate capabilities.
/// `timeout` bounds the greeting and becomes the handle's per-command timeout.
pub async fn connect(path: &Path, timeout: Duration) -> Result<(QmpHandle, QmpEvents), QmpError> {
    let stream =
        UnixStream::connect(path).await.map_err(|source| QmpError::Connect { path: path.to_path_buf(), source })?;
    handshake(stream, timeout).await
}

/// As [`connect`], on a stream that is already connected (e.g. one end of a socketpair).
pub async fn handshake(stream: UnixStream, timeout: Duration) -> Result<(QmpHandle, QmpEvents), QmpError> {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    let read_greeting = reader.read_line(&mut line);
    let n = tokio::time::timeout(timeout, read_greeting)
        .await
        .map_err(|_| QmpError::Timeout { waiting_for: "the QMP greeting".into(), timeout })?
        .map_err(|_| QmpError::Closed { waiting_for: "the QMP greeting".into() })?;
    if n == 0 {
        return Err(QmpError::Closed { waiting_for: "the QMP greeting".into() });
    }
    debug!(target: "kvmctl::qmp", "<- {}", line.trim_end());
    let greeting = Greeting::parse(&line)?;
    let (handle, events) = start(reader, write, greeting, timeout);
    handle.execute(qapi::qmp::qmp_capabilities { enable: None }).await?;
    Ok((handle, events))
}

fn start(
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    greeting: Greeting,
    timeout: Duration,
) -> (QmpHandle, QmpEvents) {
    let pending = Arc::new(Mutex::new(Pending::default()));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(read_loop(reader, Arc::clone(&pending), tx));
    let shared = Shared { writer: tokio::sync::Mutex::new(writer), pending, next_id: AtomicU64::new(1), greeting };
    (QmpHandle { shared: Arc::new(shared), timeout }, QmpEvents { rx })
}

/// The reader task: dispatch every line until EOF, then fail whatever is still waiting.
async fn read_loop(
    reader: BufReader<OwnedReadHalf>,
    pending: Arc<Mutex<Pending>>,
    events: mpsc::UnboundedSender<Value>,
) {
    let mut lines = reader.lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => dispatch(&line, &pending, &events),
            Ok(None) => {
                debug!(target: "kvmctl::qmp", "QMP connection closed by qemu");
                break;
            }
            Err(e) => {
                warn!(error = %e, "QMP read failed; closing the connection");
                break;
            }
        }
    }
    let mut p = lock(&pending);
    p.closed = true;
    p.waiting.clear();
}

fn dispatch(line: &str, pending: &Mutex<Pending>, events: &mpsc::UnboundedSender<Value>) {
    debug!(target: "kvmctl::qmp", "<- {line}");
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, line, "ignoring unparseable QMP line");
            return;
        }
    };
    match Message::classify(value) {
        // Nobody listening for events is fine.
        Message::Event(ev) => drop(events.send(ev)),
        Message::Reply { id, result } => match lock(pending).waiting.remove(&id) {
            Some(tx) => drop(tx.send(result)),
            None => debug!(id, "QMP reply for a command nobody waits for (timed out?)"),
        },
        Message::Other(v) => warn!(message = %v, "ignoring unexpected QMP message"),
    }
}

impl QmpHandle {
    pub fn greeting(&self) -> &Greeting {
        &self.shared.greeting
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A handle on the same connection with another per-command timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> QmpHandle {
        self.timeout = timeout;
        self
    }

    /// True once the connection is gone (qemu exited or closed the socket).
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.pending).closed
    }

    /// Run a qapi command: `handle.execute(qapi::qmp::query_status {}).await?.status`.
    pub async fn execute<C: qapi::Command>(&self, cmd: C) -> Result<C::Ok, QmpError> {
        let args = serde_json::to_value(&cmd).map_err(|source| QmpError::Encode { command: C::NAME.into(), source })?;
        let ret = self.roundtrip(C::NAME, args, None).await?;
        decode(C::NAME, ret)
    }

    /// Run any command by name; `args` is a JSON object, or `Value::Null` for none.
    pub async fn execute_raw(&self, name: &str, args: Value) -> Result<Value, QmpError> {
        self.roundtrip(name, args, None).await
    }

    /// Pass `fd` to qemu under `name` (`getfd`, fd as SCM_RIGHTS). qemu keeps its own copy;
    /// the caller still owns `fd` and must keep it open until this returns.
    pub async fn getfd(&self, name: &str, fd: RawFd) -> Result<(), QmpError> {
        let cmd = qapi::qmp::getfd { fdname: name.to_string() };
        let args = serde_json::to_value(&cmd).map_err(|source| QmpError::Encode { command: "getfd".into(), source })?;
        let ret = self.roundtrip("getfd", args, Some((name, fd))).await?;
        decode::<qapi::Empty>("getfd", ret).map(drop)
    }

    async fn roundtrip(&self, name: &str, args: Value, fd: Option<(&str, RawFd)>) -> Result<Value, QmpError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.shared.pending);
            if p.closed {
                return Err(QmpError::Closed { waiting_for: format!("the reply to {name}") });
            }
            p.waiting.insert(id, tx);
        }
        let _slot = Slot { pending: &self.shared.pending, id };
        let line = encode_line(name, args, id);
        let exchange = async {
            self.send(name, &line, fd).await?;
            rx.await.map_err(|_| QmpError::Closed { waiting_for: format!("the reply to {name}") })
        };
        let timeout = self.timeout;
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| QmpError::Timeout { waiting_for: format!("the reply to {name}"), timeout })??;
        reply.map_err(|e| QmpError::Command { command: name.to_string(), class: e.class, desc: e.desc })
    }

    async fn send(&self, name: &str, line: &str, fd: Option<(&str, RawFd)>) -> Result<(), QmpError> {
        let mut writer = self.shared.writer.lock().await;
        debug!(target: "kvmctl::qmp", fd = fd.map(|(_, fd)| fd), "-> {}", line.trim_end());
        let mut sent = 0;
        if let Some((fdname, fd)) = fd {
            sent = send_with_fd(writer.as_ref(), line.as_bytes(), fd).await.map_err(|source| QmpError::SendFd {
                name: fdname.to_string(),
                fd,
                source,
            })?;
        }
        writer
            .write_all(&line.as_bytes()[sent..])
            .await
            .map_err(|source| QmpError::Write { command: name.to_string(), source })
    }
}

fn encode_line(name: &str, args: Value, id: u64) -> String {
    let mut msg = json!({ "execute": name, "id": id });
    let empty = args.is_null() || args.as_object().is_some_and(|o| o.is_empty());
    if !empty {
        msg["arguments"] = args;
    }
    let mut line = msg.to_string();
    line.push('\n');
    line
}

fn decode<T: DeserializeOwned>(command: &str, ret: Value) -> Result<T, QmpError> {
    serde_json::from_value(ret.clone()).map_err(|source| QmpError::Decode {
        command: command.to_string(),
        reply: ret.to_string(),
        source,
    })
}

/// Send (a first part of) `buf` with `fd` attached; returns how many bytes went out.
async fn send_with_fd(stream: &UnixStream, buf: &[u8], fd: RawFd) -> io::Result<usize> {
    let iov = [IoSlice::new(buf)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            sendmsg::<UnixAddr>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_sorts_events_replies_and_errors() {
        let ev = json!({"event": "X-UNKNOWN", "data": {"a": 1}, "timestamp": {"seconds": 1, "microseconds": 2}});
        assert_eq!(Message::classify(ev.clone()), Message::Event(ev));
        assert_eq!(
            Message::classify(json!({"return": {"running": true}, "id": 7})),
            Message::Reply { id: 7, result: Ok(json!({"running": true})) }
        );
        let err = json!({"error": {"class": "GenericError", "desc": "nope"}, "id": 3});
        let want = ErrorReply { class: "GenericError".into(), desc: "nope".into() };
        assert_eq!(Message::classify(err), Message::Reply { id: 3, result: Err(want) });
        // qemu answers a line it cannot parse with an error without id.
        let no_id = json!({"error": {"class": "GenericError", "desc": "JSON parse error"}});
        assert!(matches!(Message::classify(no_id), Message::Other(_)));
    }

    #[test]
    fn greeting_keeps_the_qemu_version() {
        let line = r#"{"QMP": {"version": {"qemu": {"micro": 19, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}"#;
        let g = Greeting::parse(line).unwrap();
        assert_eq!(g.qemu_version(), "7.2.19");
        assert_eq!(g.version.package, "Debian 1:7.2+dfsg-7");
        assert_eq!(g.capabilities, vec!["oob".to_string()]);
        assert!(matches!(Greeting::parse("{\"return\": {}}"), Err(QmpError::Greeting { .. })));
    }

    #[test]
    fn encode_line_omits_empty_arguments() {
        assert_eq!(encode_line("cont", json!({}), 4), "{\"execute\":\"cont\",\"id\":4}\n");
        let line = encode_line("getfd", json!({"fdname": "t0"}), 5);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v, json!({"execute": "getfd", "id": 5, "arguments": {"fdname": "t0"}}));
    }

    #[test]
    fn event_data_decodes_known_events_and_skips_others() {
        let ev = json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}});
        let shutdown = event_data::<qapi::qmp::SHUTDOWN>(&ev).unwrap().unwrap();
        assert!(shutdown.guest);
        assert!(event_data::<qapi::qmp::STOP>(&ev).is_none());
        assert!(event_data::<qapi::qmp::STOP>(&json!({"event": "STOP"})).unwrap().is_ok());
    }
}
