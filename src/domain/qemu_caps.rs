//! What the installed qemu offers: its machine types (with their vCPU limits) and CPU models,
//! asked once over QMP (`query-machines`, `query-cpu-definitions`) and cached in
//! `<run>/qemu-caps.json`, keyed by the qemu binary's path, inode, size and mtime: a qemu
//! upgrade invalidates the cache, everything else reads it (no qemu exec per command).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, warn};

pub const QEMU: &str = "qemu-system-x86_64";
pub const CACHE_FILE: &str = "qemu-caps.json";
/// Bump when the probe or the cached shape changes.
const PROBE_VERSION: u32 = 1;
const DEADLINE: Duration = Duration::from_secs(20);

/// The QMP conversation: one line per command, answered in order.
const QMP_INPUT: &str = concat!(
    "{\"execute\":\"qmp_capabilities\"}\n",
    "{\"execute\":\"query-machines\",\"id\":\"machines\"}\n",
    "{\"execute\":\"query-cpu-definitions\",\"id\":\"cpus\"}\n",
    "{\"execute\":\"quit\"}\n",
);

#[derive(Debug, Error)]
pub enum CapsError {
    #[error("{QEMU} not found in PATH (is qemu-system-x86 installed?)")]
    NotFound,
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{argv}` did not answer within {}s", DEADLINE.as_secs())]
    Timeout { argv: String },
    #[error("`{argv}` gave no {what}: {detail}")]
    BadReply { argv: String, what: &'static str, detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub name: String,
    /// `pc` for `pc-i440fx-7.2`, `q35` for `pc-q35-7.2`.
    pub alias: Option<String>,
    pub cpu_max: u32,
}

/// What qemu offers, as used to validate a definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuCaps {
    /// e.g. `qemu-system-x86_64 7.2.22`, for messages.
    pub qemu: String,
    pub machines: Vec<Machine>,
    pub cpus: Vec<String>,
}

impl QemuCaps {
    /// The machine type called `name` (its own name or its alias).
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name == name || m.alias.as_deref() == Some(name))
    }

    pub fn has_cpu(&self, name: &str) -> bool {
        self.cpus.iter().any(|c| c == name)
    }
}

/// The binary and what identifies its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BinaryKey {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl BinaryKey {
    fn of(path: &Path) -> Option<BinaryKey> {
        let path = fs::canonicalize(path).ok()?;
        let m = fs::metadata(&path).ok()?;
        let mtime_ns = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
        Some(BinaryKey { path, dev: m.dev(), ino: m.ino(), size: m.size(), mtime_ns })
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    probe_version: u32,
    binary: BinaryKey,
    caps: QemuCaps,
}

/// qemu's capabilities, from the cache in `cache_dir` when it matches the binary in PATH.
pub fn probe(cache_dir: &Path) -> Result<QemuCaps, CapsError> {
    let qemu = crate::process::find_program(QEMU).ok_or(CapsError::NotFound)?;
    let key = BinaryKey::of(&qemu);
    let file = cache_dir.join(CACHE_FILE);
    if let Some(key) = &key {
        if let Some(caps) = load_cache(&file, key) {
            debug!(qemu = %qemu.display(), "qemu capabilities from cache");
            return Ok(caps);
        }
    }
    let caps = probe_uncached(&qemu)?;
    if let Some(key) = key {
        store_cache(cache_dir, &file, key, &caps);
    }
    Ok(caps)
}

fn load_cache(file: &Path, key: &BinaryKey) -> Option<QemuCaps> {
    let text = fs::read_to_string(file).ok()?;
    match serde_json::from_str::<CacheFile>(&text) {
        Ok(c) if c.probe_version == PROBE_VERSION && c.binary == *key => Some(c.caps),
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, file = %file.display(), "ignoring unreadable qemu capability cache");
            None
        }
    }
}

fn store_cache(dir: &Path, file: &Path, binary: BinaryKey, caps: &QemuCaps) {
    let c = CacheFile { probe_version: PROBE_VERSION, binary, caps: caps.clone() };
    let write = || -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let json = serde_json::to_vec(&c).map_err(std::io::Error::other)?;
        crate::state::runtime_write(file, &json)
    };
    if let Err(e) = write() {
        warn!(error = %e, file = %file.display(), "cannot cache qemu's capabilities");
    }
}

/// Ask `qemu` now: an empty machine, paused, QMP on stdio.
pub fn probe_uncached(qemu: &Path) -> Result<QemuCaps, CapsError> {
    let args = ["-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio"];
    let argv = format!("{} {}", qemu.display(), args.join(" "));
    let t0 = Instant::now();
    let mut child = Command::new(qemu)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CapsError::Spawn { program: qemu.display().to_string(), source })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // A failed write shows up as a missing reply below.
    let _ = stdin.write_all(QMP_INPUT.as_bytes());
    drop(stdin);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() < DEADLINE => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CapsError::Timeout { argv });
            }
        }
    }
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    debug!(ms = t0.elapsed().as_millis() as u64, "qemu capability probe");
    parse_replies(&out).map_err(|(what, detail)| {
        let detail = if err.trim().is_empty() { detail } else { format!("{detail}; stderr: {}", err.trim()) };
        CapsError::BadReply { argv, what, detail }
    })
}

/// The capabilities from qemu's QMP output (the greeting, then one reply per line).
pub fn parse_replies(out: &str) -> Result<QemuCaps, (&'static str, String)> {
    let msgs: Vec<serde_json::Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let version = msgs
        .iter()
        .find_map(|m| m.pointer("/QMP/version/qemu"))
        .map(|v| format!("{QEMU} {}.{}.{}", v["major"], v["minor"], v["micro"]))
        .ok_or(("QMP greeting", format!("output: {:?}", trim(out))))?;
    let reply = |id: &str| msgs.iter().find(|m| m["id"] == id).and_then(|m| m["return"].as_array());
    let machines: Vec<Machine> = reply("machines")
        .ok_or(("query-machines reply", format!("output: {:?}", trim(out))))?
        .iter()
        .filter_map(|m| {
            Some(Machine {
                name: m["name"].as_str()?.to_string(),
                alias: m["alias"].as_str().map(str::to_string),
                cpu_max: m["cpu-max"].as_u64()?.try_into().ok()?,
            })
        })
        .collect();
    let cpus: Vec<String> = reply("cpus")
        .ok_or(("query-cpu-definitions reply", format!("output: {:?}", trim(out))))?
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    if machines.is_empty() || cpus.is_empty() {
        return Err(("machine types and CPU models", "qemu listed none".into()));
    }
    Ok(QemuCaps { qemu: version, machines, cpus })
}

fn trim(s: &str) -> &str {
    &s[..s.len().min(300)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = concat!(
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\n",
        "{\"return\": {}}\n",
        "{\"return\": [{\"name\": \"pc-i440fx-7.2\", \"alias\": \"pc\", \"cpu-max\": 255, \"is-default\": true},",
        " {\"name\": \"isapc\", \"cpu-max\": 1}], \"id\": \"machines\"}\n",
        "{\"return\": [{\"name\": \"max\", \"typename\": \"max-x86_64-cpu\"}, {\"name\": \"Opteron_G5\"}], \"id\": \"cpus\"}\n",
        "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"SHUTDOWN\", \"data\": {}}\n",
        "{\"return\": {}}\n",
    );

    #[test]
    fn qmp_replies_give_machines_aliases_limits_and_cpus() {
        let c = parse_replies(OUT).unwrap();
        assert_eq!(c.qemu, "qemu-system-x86_64 7.2.22");
        assert_eq!(c.machine("pc").unwrap().name, "pc-i440fx-7.2");
        assert_eq!(c.machine("pc-i440fx-7.2").unwrap().cpu_max, 255);
        assert_eq!(c.machine("isapc").unwrap().cpu_max, 1);
        assert!(c.machine("q35").is_none());
        assert!(c.has_cpu("Opteron_G5") && c.has_cpu("max") && !c.has_cpu("host"));
    }

    #[test]
    fn missing_replies_are_errors_not_empty_lists() {
        let greeting = OUT.lines().next().unwrap();
        assert_eq!(parse_replies(greeting).unwrap_err().0, "query-machines reply");
        assert_eq!(parse_replies("").unwrap_err().0, "QMP greeting");
    }

    #[test]
    fn cache_is_keyed_by_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("qemu");
        fs::write(&bin, b"v1").unwrap();
        let key = BinaryKey::of(&bin).unwrap();
        let caps = parse_replies(OUT).unwrap();
        let file = dir.path().join(CACHE_FILE);
        store_cache(dir.path(), &file, key.clone(), &caps);
        assert_eq!(load_cache(&file, &key), Some(caps));
        fs::write(&bin, b"version 2").unwrap();
        assert_eq!(load_cache(&file, &BinaryKey::of(&bin).unwrap()), None, "a changed binary is probed again");
    }
}
