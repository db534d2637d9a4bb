//! Lifecycle events (`kvmctl events`, virsh's `event --all --loop`), without a daemon.
//!
//! Whoever causes an event appends it to the root's journal, `<run>/events.ndjson`: the
//! supervisor for what happens to its VM (started, paused, crashed, ...), the commands that
//! define, undefine, start and stop networks and VMs for theirs. One event is one JSON line
//! written with one `write(2)` on an `O_APPEND` descriptor, so concurrent writers never
//! interleave; the file is 0600 whatever the umask, and is rotated to `events.ndjson.1` when
//! it passes [`MAX_JOURNAL`]. A failed append never fails the operation: it is logged.
//!
//! [`Follower`] reads the journal from its end as it grows (inotify, no polling), and derives
//! DHCP lease events by watching each running network's dnsmasq lease file and comparing the
//! leases before and after each change: no program runs on dnsmasq's behalf with arguments a
//! guest chose. Whatever a guest wrote (a hostname) is stripped of control characters before
//! it reaches an event.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::paths::{Kind as ObjKind, Paths};

/// The journal's file name in the runtime dir.
pub const JOURNAL: &str = "events.ndjson";
/// The journal's previous generation (one is kept).
pub const JOURNAL_OLD: &str = "events.ndjson.1";
/// Past this size the next append rotates the journal.
pub const MAX_JOURNAL: u64 = 1 << 20;
/// How long a lease file must be quiet before it is read (dnsmasq truncates it, then writes).
const LEASE_SETTLE: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum EventsError {
    #[error("cannot watch {path} (inotify)")]
    Watch { path: PathBuf, source: nix::Error },
    #[error("cannot read the event journal {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("waiting for events")]
    Poll(#[source] nix::Error),
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Domain,
    Network,
    Lease,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    Defined,
    Undefined,
    Started,
    Paused,
    Resumed,
    /// The VM stopped (detail: poweroff, destroyed, ...).
    Shutdown,
    /// The guest panicked or qemu died unexpectedly.
    Crashed,
    Rebooted,
    /// A network stopped.
    Stopped,
    /// A DHCP lease was handed out.
    Acquired,
    /// A DHCP lease went away (released by the guest, or expired).
    Released,
}

impl What {
    /// virsh's word for it.
    pub fn word(self) -> &'static str {
        match self {
            What::Defined => "Defined",
            What::Undefined => "Undefined",
            What::Started => "Started",
            What::Paused => "Suspended",
            What::Resumed => "Resumed",
            What::Shutdown => "Stopped",
            What::Crashed => "Crashed",
            What::Rebooted => "Rebooted",
            What::Stopped => "Stopped",
            What::Acquired => "Acquired",
            What::Released => "Released",
        }
    }
}

/// A DHCP lease's fields (lease events only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub network: String,
    /// None for an IPv6 lease (dnsmasq records its DUID instead).
    pub mac: Option<String>,
    pub ip: String,
    /// As the guest sent it, control characters escaped.
    pub hostname: Option<String>,
    /// The VM with this MAC on this network, if one runs.
    pub domain: Option<String>,
}

/// One event: one line of the journal, and of `events --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// UTC, RFC 3339 with milliseconds: `2026-12-04T21:00:01.123Z`.
    pub time: String,
    pub kind: Kind,
    /// The domain or network (for a lease: its network).
    pub name: String,
    pub event: What,
    /// Why, or more about it (`booted`, `destroyed`, `poweroff`, ...); may be empty.
    pub detail: String,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
}

impl Event {
    pub fn new(kind: Kind, name: &str, event: What, detail: impl Into<String>) -> Event {
        Event { time: now_rfc3339(), kind, name: name.into(), event, detail: detail.into(), lease: None }
    }

    /// The same event with every string stripped of control characters (a journal line is
    /// ours, but what it carries may have come from a guest).
    pub fn sanitized(mut self) -> Event {
        for s in [&mut self.time, &mut self.name, &mut self.detail] {
            *s = sanitize(s);
        }
        if let Some(l) = &mut self.lease {
            for s in [&mut l.network, &mut l.ip] {
                *s = sanitize(s);
            }
            for s in [&mut l.mac, &mut l.hostname, &mut l.domain].into_iter().flatten() {
                *s = sanitize(s);
            }
        }
        self
    }

    /// virsh's line: `2026-12-04 21:00:01.123+0000: event 'lifecycle' for domain 'vm1': Started (booted)`.
    pub fn human(&self) -> String {
        let time = human_time(&self.time);
        let (ty, noun) = match (self.kind, self.event) {
            (Kind::Lease, _) => ("lease", "network"),
            (Kind::Domain, What::Rebooted) => ("reboot", "domain"),
            (Kind::Domain, _) => ("lifecycle", "domain"),
            (Kind::Network, _) => ("lifecycle", "network"),
        };
        let mut line = format!("{time}: event '{ty}' for {noun} '{}': {}", self.name, self.event.word());
        if let Some(l) = &self.lease {
            line.push_str(&format!(" {}", l.ip));
            if let Some(m) = &l.mac {
                line.push_str(&format!(" mac {m}"));
            }
            if let Some(h) = &l.hostname {
                line.push_str(&format!(" hostname '{h}'"));
            }
            if let Some(d) = &l.domain {
                line.push_str(&format!(" domain '{d}'"));
            }
        } else if !self.detail.is_empty() {
            line.push_str(&format!(" ({})", self.detail));
        }
        sanitize(&line)
    }
}

/// `s` with every control character (C0, DEL, C1) and bidirectional override written as a
/// `\u{..}` escape: nothing that can move a terminal's cursor or reorder its text.
pub fn sanitize(s: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
    if !s.chars().any(|c| c.is_control() || bidi(c)) {
        return s.to_string();
    }
    s.chars().map(|c| if c.is_control() || bidi(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// Now, as `2026-12-04T21:00:01.123Z`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    let day = crate::network::leases::format_time(ms / 1000).replace(' ', "T");
    format!("{day}.{:03}Z", ms % 1000)
}

/// `2026-12-04T21:00:01.123Z` -> `2026-12-04 21:00:01.123+0000` (virsh's shape); anything
/// else as it is.
fn human_time(t: &str) -> String {
    match t.strip_suffix('Z') {
        Some(body) if body.len() == 23 && body.as_bytes()[10] == b'T' => format!("{}+0000", body.replacen('T', " ", 1)),
        _ => t.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Writing

/// Append `ev` to the journal of the runtime dir `run`; a failure is logged, never returned:
/// an event that cannot be recorded must not fail what caused it.
pub fn emit(run: &Path, ev: &Event) {
    let mut line = serde_json::to_vec(ev).expect("event serializes");
    line.push(b'\n');
    if let Err(e) = append(run, &line) {
        tracing::warn!(journal = %run.join(JOURNAL).display(), error = %e, event = ?ev.event, name = %ev.name,
            "cannot record the event");
    }
}

/// [`emit`] a domain event.
pub fn domain(run: &Path, name: &str, what: What, detail: impl Into<String>) {
    emit(run, &Event::new(Kind::Domain, name, what, detail));
}

/// [`emit`] a network event.
pub fn network(run: &Path, name: &str, what: What, detail: impl Into<String>) {
    emit(run, &Event::new(Kind::Network, name, what, detail));
}

fn append(run: &Path, line: &[u8]) -> std::io::Result<()> {
    let path = run.join(JOURNAL);
    // Rotation happens under the lock, so that no append lands in the old generation after a
    // follower has left it. A lock that cannot be had at once (a writer stopped while holding
    // it) costs the rotation, not the event: O_APPEND keeps the line whole either way.
    let lock = rotation_lock(run);
    let mut f = open_journal(&path)?;
    if lock.is_some() && f.metadata()?.len() + line.len() as u64 > MAX_JOURNAL {
        std::fs::rename(&path, run.join(JOURNAL_OLD))?;
        f = open_journal(&path)?;
    }
    let n = nix::unistd::write(&f, line)?;
    if n != line.len() {
        return Err(std::io::Error::other(format!("short write ({n} of {} bytes)", line.len())));
    }
    Ok(())
}

fn open_journal(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.mode() & 0o777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// The journal's rotation lock (`<run>/events.lock`), if it can be had within a moment.
fn rotation_lock(run: &Path) -> Option<nix::fcntl::Flock<File>> {
    let f = crate::state::open_private(&run.join("events.lock"), false).ok()?;
    let mut f = Some(f);
    for _ in 0..100 {
        match nix::fcntl::Flock::lock(f.take()?, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Some(held),
            Err((back, _)) => f = Some(back),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

// ---------------------------------------------------------------------------------------
// Following

/// Which events to report.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// One VM's domain events and the leases of its NICs.
    pub domain: Option<String>,
    /// One network's events and leases.
    pub network: Option<String>,
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        let lease = ev.lease.as_ref();
        let dom = self.domain.as_ref().is_none_or(|d| match ev.kind {
            Kind::Domain => &ev.name == d,
            Kind::Lease => lease.and_then(|l| l.domain.as_ref()) == Some(d),
            Kind::Network => false,
        });
        let net = self.network.as_ref().is_none_or(|n| match ev.kind {
            Kind::Network | Kind::Lease => &ev.name == n,
            Kind::Domain => false,
        });
        dom && net
    }
}

/// What [`Follower::next`] returns.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// The deadline passed.
    Timeout,
    /// One of the extra descriptors (by index) is ready (a signal, stdout's reader gone).
    Woken(usize),
}

/// One lease as the diff sees it: who (MAC, or DUID for IPv6) and which address.
type LeaseKey = (Option<String>, String);

struct NetWatch {
    name: String,
    leases: HashMap<LeaseKey, crate::network::leases::Lease>,
    /// Set when the lease file changed: read it once it has been quiet for a moment.
    due: Option<Instant>,
}

/// Follows the journal from its end, and the lease files of running networks.
pub struct Follower {
    paths: Paths,
    ino: Inotify,
    run_wd: WatchDescriptor,
    nets_wd: Option<WatchDescriptor>,
    nets: HashMap<WatchDescriptor, NetWatch>,
    journal: Option<File>,
    partial: Vec<u8>,
    pending: VecDeque<Event>,
    /// Who owns a MAC on a network: (network, mac) -> domain.
    owner: fn(&crate::state::Store, &str, &str) -> Option<String>,
}

const DIR_EVENTS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

impl Follower {
    /// Start following: from now on, every event appended and every lease change is seen.
    /// `owner` names the VM that holds a MAC on a network (for lease events).
    pub fn open(
        paths: &Paths,
        owner: fn(&crate::state::Store, &str, &str) -> Option<String>,
    ) -> Result<Follower, EventsError> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|source| EventsError::Watch { path: paths.run.clone(), source })?;
        // Watches first, then the journal's end: nothing appended in between is missed.
        let run_wd = ino
            .add_watch(&paths.run, DIR_EVENTS)
            .map_err(|source| EventsError::Watch { path: paths.run.clone(), source })?;
        let mut f = Follower {
            paths: paths.clone(),
            ino,
            run_wd,
            nets_wd: None,
            nets: HashMap::new(),
            journal: None,
            partial: Vec::new(),
            pending: VecDeque::new(),
            owner,
        };
        let path = f.journal_path();
        f.journal = match File::open(&path) {
            Ok(mut j) => {
                j.seek(SeekFrom::End(0)).map_err(|source| EventsError::Read { path: path.clone(), source })?;
                Some(j)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(EventsError::Read { path, source }),
        };
        f.watch_networks(false)?;
        Ok(f)
    }

    fn journal_path(&self) -> PathBuf {
        self.paths.run.join(JOURNAL)
    }

    fn nets_dir(&self) -> PathBuf {
        self.paths.run_dir(ObjKind::Network)
    }

    /// Watch `<run>/networks` and every network dir in it. `fresh`: the dirs appeared after
    /// following began, so the leases already in them are news.
    fn watch_networks(&mut self, fresh: bool) -> Result<(), EventsError> {
        let dir = self.nets_dir();
        if self.nets_wd.is_none() {
            match self.ino.add_watch(&dir, DIR_EVENTS) {
                Ok(wd) => self.nets_wd = Some(wd),
                Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => return Ok(()),
                Err(source) => return Err(EventsError::Watch { path: dir, source }),
            }
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            self.watch_network(&n, fresh)?;
        }
        Ok(())
    }

    fn watch_network(&mut self, name: &str, fresh: bool) -> Result<(), EventsError> {
        if crate::names::validate("network", name).is_err() || self.nets.values().any(|n| n.name == name) {
            return Ok(());
        }
        let dir = self.nets_dir().join(name);
        let wd = match self.ino.add_watch(&dir, DIR_EVENTS) {
            Ok(wd) => wd,
            Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => return Ok(()),
            Err(source) => return Err(EventsError::Watch { path: dir, source }),
        };
        let mut w = NetWatch { name: name.to_string(), leases: HashMap::new(), due: None };
        if fresh {
            w.due = Some(Instant::now());
        } else {
            w.leases = self.read_leases(name);
        }
        self.nets.insert(wd, w);
        Ok(())
    }

    fn read_leases(&self, net: &str) -> HashMap<LeaseKey, crate::network::leases::Lease> {
        let file = crate::network::dnsmasq::RunFiles::new(&self.nets_dir().join(net)).leases;
        let text = std::fs::read_to_string(file).unwrap_or_default();
        crate::network::leases::parse(&text, |_| 0)
            .into_iter()
            .map(|l| ((l.mac.clone().or_else(|| l.client_id.clone()), l.ip.to_string()), l))
            .collect()
    }

    /// The next event; `Timeout` once `deadline` passes, `Woken(i)` when `extra[i]` is ready.
    pub fn next(&mut self, deadline: Option<Instant>, extra: &[(BorrowedFd, PollFlags)]) -> Result<Next, EventsError> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Next::Event(ev));
            }
            let now = Instant::now();
            let due = self.nets.values().filter_map(|n| n.due).min();
            if due.is_some_and(|d| d <= now) {
                self.settle_leases(now);
                continue;
            }
            if deadline.is_some_and(|d| d <= now) {
                return Ok(Next::Timeout);
            }
            let wake = [due, deadline].into_iter().flatten().min();
            let timeout = match wake {
                Some(t) => PollTimeout::try_from(t.saturating_duration_since(now) + Duration::from_millis(1))
                    .unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };
            let mut fds: Vec<PollFd> = vec![PollFd::new(self.ino.as_fd(), PollFlags::POLLIN)];
            fds.extend(extra.iter().map(|(fd, flags)| PollFd::new(*fd, *flags)));
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(EventsError::Poll(e)),
            }
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            if let Some(i) = fds[1..].iter().position(ready) {
                return Ok(Next::Woken(i));
            }
            if ready(&fds[0]) {
                drop(fds);
                self.on_inotify()?;
            }
        }
    }

    fn on_inotify(&mut self) -> Result<(), EventsError> {
        let events = match self.ino.read_events() {
            Ok(e) => e,
            Err(nix::Error::EAGAIN) => return Ok(()),
            Err(source) => return Err(EventsError::Watch { path: self.paths.run.clone(), source }),
        };
        for ev in events {
            self.on_watch_event(ev)?;
        }
        Ok(())
    }

    fn on_watch_event(&mut self, ev: InotifyEvent) -> Result<(), EventsError> {
        let name = ev.name.as_ref().and_then(|n| n.to_str()).unwrap_or("").to_string();
        let m = ev.mask;
        if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            // Events were lost: read all there is, and look at every lease file again.
            self.read_journal()?;
            self.nets.values_mut().for_each(|n| n.due = Some(Instant::now()));
            return self.watch_networks(true);
        }
        if ev.wd == self.run_wd {
            if name == JOURNAL {
                if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                    // Rotated (or created): finish the old generation, then read the new one whole.
                    self.read_journal()?;
                    let path = self.journal_path();
                    self.journal = match File::open(&path) {
                        Ok(f) => Some(f),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(source) => return Err(EventsError::Read { path, source }),
                    };
                    self.partial.clear();
                }
                self.read_journal()?;
            } else if name == ObjKind::Network.dir() && m.intersects(AddWatchFlags::IN_CREATE) {
                self.watch_networks(true)?;
            }
            return Ok(());
        }
        if Some(ev.wd) == self.nets_wd {
            if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                self.watch_network(&name, true)?;
            }
            if m.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_IGNORED) {
                self.nets_wd = None;
            }
            return Ok(());
        }
        if m.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_IGNORED) {
            // The network stopped: its dir (and lease file) went with it.
            self.nets.remove(&ev.wd);
            return Ok(());
        }
        if name == "leases" {
            if let Some(w) = self.nets.get_mut(&ev.wd) {
                w.due = Some(Instant::now() + LEASE_SETTLE);
            }
        }
        Ok(())
    }

    /// Read what was appended to the journal since the last read.
    fn read_journal(&mut self) -> Result<(), EventsError> {
        let path = self.journal_path();
        let Some(f) = &mut self.journal else { return Ok(()) };
        let err = |source| EventsError::Read { path: path.clone(), source };
        let pos = f.stream_position().map_err(err)?;
        if f.metadata().map_err(err)?.len() < pos {
            // Truncated by hand: start again from its beginning.
            f.seek(SeekFrom::Start(0)).map_err(err)?;
            self.partial.clear();
        }
        f.read_to_end(&mut self.partial).map_err(err)?;
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else { return Ok(()) };
        let rest = self.partial.split_off(end + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        for line in whole.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Event>(line) {
                Ok(ev) => self.pending.push_back(ev.sanitized()),
                Err(e) => tracing::debug!(error = %e, "skipping a journal line that is not an event"),
            }
        }
        Ok(())
    }

    /// Read the lease files that changed and have been quiet since; queue what differs.
    fn settle_leases(&mut self, now: Instant) {
        let due: Vec<WatchDescriptor> =
            self.nets.iter().filter(|(_, n)| n.due.is_some_and(|d| d <= now)).map(|(wd, _)| *wd).collect();
        let store = crate::state::Store { paths: self.paths.clone() };
        for wd in due {
            let name = self.nets[&wd].name.clone();
            let new = self.read_leases(&name);
            let w = self.nets.get_mut(&wd).expect("watched network");
            w.due = None;
            let mut gone: Vec<_> = w.leases.iter().filter(|(k, _)| !new.contains_key(*k)).map(|(_, l)| l).collect();
            let mut came: Vec<_> = new.iter().filter(|(k, _)| !w.leases.contains_key(*k)).map(|(_, l)| l).collect();
            gone.sort_by_key(|l| l.ip);
            came.sort_by_key(|l| l.ip);
            let owner = self.owner;
            let lease_event = |what, l: &crate::network::leases::Lease| {
                let domain = l.mac.as_deref().and_then(|m| owner(&store, &name, m));
                let hostname = l.hostname.as_deref().map(|h| sanitize(&h.chars().take(255).collect::<String>()));
                let mut ev = Event::new(Kind::Lease, &name, what, l.ip.to_string());
                ev.lease = Some(LeaseInfo {
                    network: name.clone(),
                    mac: l.mac.clone(),
                    ip: l.ip.to_string(),
                    hostname,
                    domain,
                });
                ev.sanitized()
            };
            let events: Vec<Event> = gone
                .into_iter()
                .map(|l| lease_event(What::Released, l))
                .chain(came.into_iter().map(|l| lease_event(What::Acquired, l)))
                .collect();
            self.pending.extend(events);
            w.leases = new;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &Path) -> Paths {
        Paths { root: dir.to_path_buf(), run: dir.join("run") }
    }

    #[test]
    fn times_are_rfc3339_in_the_journal_and_virsh_shaped_for_people() {
        assert_eq!(rfc3339(1_796_418_001_123), "2026-12-04T21:00:01.123Z");
        assert_eq!(human_time("2026-12-04T21:00:01.123Z"), "2026-12-04 21:00:01.123+0000");
        assert_eq!(human_time("yesterday"), "yesterday");
    }

    #[test]
    fn control_characters_and_bidi_overrides_never_reach_a_line() {
        assert_eq!(sanitize("vm1"), "vm1");
        assert_eq!(sanitize("a\u{1b}[2Jb\n\u{7f}\u{9b}c\u{202e}"), "a\\u{1b}[2Jb\\u{a}\\u{7f}\\u{9b}c\\u{202e}");
        let mut ev = Event::new(Kind::Lease, "default", What::Acquired, "10.0.0.2");
        ev.lease = Some(LeaseInfo {
            network: "default".into(),
            mac: Some("52:54:00:00:00:01".into()),
            ip: "10.0.0.2".into(),
            hostname: Some("evil\u{1b}]0;pwned\u{7}".into()),
            domain: None,
        });
        let line = ev.sanitized().human();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.ends_with("Acquired 10.0.0.2 mac 52:54:00:00:00:01 hostname 'evil\\u{1b}]0;pwned\\u{7}'"));
    }

    #[test]
    fn json_keys_are_stable() {
        let ev = Event {
            time: "2026-12-04T21:00:01.123Z".into(),
            kind: Kind::Domain,
            name: "vm1".into(),
            event: What::Started,
            detail: "booted".into(),
            lease: None,
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"time":"2026-12-04T21:00:01.123Z","kind":"domain","name":"vm1","event":"started","detail":"booted"}"#
        );
        assert_eq!(ev.human(), "2026-12-04 21:00:01.123+0000: event 'lifecycle' for domain 'vm1': Started (booted)");
        let mut l = Event { kind: Kind::Lease, name: "net1".into(), event: What::Released, ..ev };
        l.lease = Some(LeaseInfo {
            network: "net1".into(),
            mac: Some("52:54:00:00:00:01".into()),
            ip: "10.0.0.2".into(),
            hostname: None,
            domain: Some("vm1".into()),
        });
        let v: serde_json::Value = serde_json::to_value(&l).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = ["time", "kind", "name", "event", "detail", "network", "mac", "ip", "hostname", "domain"];
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want);
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), l);
    }

    #[test]
    fn filters_pick_a_domain_or_a_network() {
        let dom = Event::new(Kind::Domain, "vm1", What::Started, "");
        let net = Event::new(Kind::Network, "n1", What::Started, "");
        let mut lease = Event::new(Kind::Lease, "n1", What::Acquired, "");
        lease.lease = Some(LeaseInfo {
            network: "n1".into(),
            mac: None,
            ip: "10.0.0.2".into(),
            hostname: None,
            domain: Some("vm1".into()),
        });
        let by_vm = Filter { domain: Some("vm1".into()), network: None };
        let by_net = Filter { domain: None, network: Some("n1".into()) };
        let other = Filter { domain: Some("vm2".into()), network: None };
        assert!([&dom, &lease].iter().all(|e| by_vm.matches(e)) && !by_vm.matches(&net));
        assert!([&net, &lease].iter().all(|e| by_net.matches(e)) && !by_net.matches(&dom));
        assert!(![&dom, &net, &lease].iter().any(|e| other.matches(e)));
        assert!([&dom, &net, &lease].iter().all(|e| Filter::default().matches(e)));
    }

    #[test]
    fn appends_are_private_lines_and_the_journal_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        // SAFETY: umask(2) only changes this process's creation mask (restored below).
        let old = unsafe { libc::umask(0) };
        domain(run, "vm1", What::Started, "booted");
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let meta = std::fs::metadata(run.join(JOURNAL)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(run.join(JOURNAL)).unwrap();
        assert!(text.ends_with("\"detail\":\"booted\"}\n") && text.lines().count() == 1, "{text}");
        let big = "x".repeat(1000);
        for _ in 0..(MAX_JOURNAL / 1000 + 10) {
            domain(run, "vm1", What::Paused, big.clone());
        }
        let now = std::fs::metadata(run.join(JOURNAL)).unwrap().len();
        let old = std::fs::metadata(run.join(JOURNAL_OLD)).unwrap().len();
        assert!(now < MAX_JOURNAL && old <= MAX_JOURNAL && old > MAX_JOURNAL / 2, "{now} {old}");
    }

    #[test]
    fn a_journal_that_cannot_be_written_is_only_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(JOURNAL)).unwrap();
        domain(dir.path(), "vm1", What::Started, "booted"); // no panic, no error
        assert!(dir.path().join(JOURNAL).is_dir());
    }

    #[test]
    fn the_follower_reads_appends_across_a_rotation_and_sees_lease_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.run_dir(ObjKind::Network).join("n1")).unwrap();
        let leases = p.run_dir(ObjKind::Network).join("n1/leases");
        std::fs::write(&leases, "0 52:54:00:00:00:01 10.0.0.2 old *\n").unwrap();
        domain(&p.run, "before", What::Started, "");
        let mut f = Follower::open(&p, |_, _, mac| (mac == "52:54:00:00:00:03").then(|| "vm3".to_string())).unwrap();
        let soon = || Some(Instant::now() + Duration::from_secs(5));
        domain(&p.run, "vm1", What::Started, "booted");
        let Next::Event(e) = f.next(soon(), &[]).unwrap() else { panic!("no event") };
        assert_eq!((e.name.as_str(), e.event), ("vm1", What::Started), "the journal is followed from its end");
        std::fs::rename(p.run.join(JOURNAL), p.run.join(JOURNAL_OLD)).unwrap();
        domain(&p.run, "vm2", What::Paused, "user");
        let Next::Event(e) = f.next(soon(), &[]).unwrap() else { panic!("no event after rotation") };
        assert_eq!(e.name, "vm2");
        // dnsmasq's update: truncate, then write the new set.
        std::fs::write(&leases, "").unwrap();
        std::fs::write(&leases, "0 52:54:00:00:00:03 10.0.0.3 h\u{1b}x *\n").unwrap();
        let mut got = vec![];
        while got.len() < 2 {
            match f.next(soon(), &[]).unwrap() {
                Next::Event(e) => got.push(e),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((got[0].event, got[0].detail.as_str()), (What::Released, "10.0.0.2"));
        let l = got[1].lease.as_ref().unwrap();
        assert_eq!(got[1].event, What::Acquired);
        assert_eq!((l.hostname.as_deref(), l.domain.as_deref()), (Some("h\\u{1b}x"), Some("vm3")));
        // A network started later: its leases are news.
        std::fs::create_dir_all(p.run_dir(ObjKind::Network).join("n2")).unwrap();
        std::fs::write(p.run_dir(ObjKind::Network).join("n2/leases"), "0 52:54:00:00:00:09 10.9.0.9 * *\n").unwrap();
        let Next::Event(e) = f.next(soon(), &[]).unwrap() else { panic!("no lease on n2") };
        assert_eq!((e.name.as_str(), e.event), ("n2", What::Acquired));
        assert!(matches!(f.next(Some(Instant::now() + Duration::from_millis(300)), &[]).unwrap(), Next::Timeout));
    }
}
