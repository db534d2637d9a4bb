//! `--accel auto|kvm|tcg`: does KVM really work on this host?
//!
//! `/dev/kvm` opening is not enough. On nested hosts without VMX exposed (no `vmx`/`svm` in
//! `/proc/cpuinfo`) `KVM_CREATE_VM` and even a bare `KVM_RUN` of a `hlt` succeed, but the vCPU
//! is emulated about a thousand times slower than native: qemu gets through SeaBIOS and then
//! appears to hang forever in the guest kernel. So [`probe`] decides in steps:
//!
//! 1. `/dev/kvm` opens read-write and reports API version 12;
//! 2. `/proc/cpuinfo` has a `vmx` or `svm` flag (absent: unusable, no need to run anything);
//! 3. a tiny guest, run through the KVM ioctls in a forked child, switches from real mode to
//!    protected mode and runs 40 million loop iterations (~15 ms natively). The child is
//!    SIGKILLed at a deadline (500 ms); it reports progress through a pipe so the verdict can
//!    say how far it got ([`guest`]);
//! 4. qemu itself initialises KVM with `-cpu host` and runs its vCPU: some hosts pass step 3
//!    and still make qemu abort at init (a refused MSR); killed at a deadline (10 s)
//!    ([`qemu_init`]).
//!
//! The verdict is cached per host boot in `<cache_dir>/accel.json`, keyed by
//! `/proc/sys/kernel/random/boot_id`. [`probe`] blocks for up to the deadlines: call it from
//! `spawn_blocking` in async code. x86_64 hosts only.

mod guest;
mod qemu_init;

pub use guest::{probe_guest, run_guest, Workload, HOST_REFUSALS, PROBE_WORKLOAD};
pub use qemu_init::{probe_qemu, QEMU_DEADLINE};

use std::fmt;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info, warn};

use guest::kvm;

/// How long the test guest may run before it is killed and KVM declared unusable.
pub const GUEST_DEADLINE: Duration = Duration::from_millis(500);

/// Name of the cache file inside the cache directory.
pub const CACHE_FILE: &str = "accel.json";

/// Bump when the probe changes, so older cached verdicts are not trusted.
const PROBE_VERSION: u32 = 2;
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, Error)]
pub enum AccelError {
    #[error("--accel kvm requested, but {reason}")]
    KvmUnusable { reason: String },
    #[error("unknown accelerator {value:?} (expected auto, kvm or tcg)")]
    Unknown { value: String },
}

/// The accelerator asked for on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// The name used on the command line and in qemu's `-accel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = AccelError;

    fn from_str(s: &str) -> Result<Accel, AccelError> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(AccelError::Unknown { value: s.to_string() }),
        }
    }
}

/// Which step of the probe decided the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeStep {
    DevKvm,
    CpuFlags,
    TestGuest,
    QemuInit,
}

/// Whether KVM works here, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelVerdict {
    pub kvm_usable: bool,
    /// One human line, e.g. "KVM unusable: /proc/cpuinfo has no vmx/svm flag (...)".
    pub reason: String,
    pub decided_by: ProbeStep,
    /// How long the probe took when it actually ran.
    pub probe_ms: u64,
    /// True when read from the per-boot cache instead of probing now.
    #[serde(skip)]
    pub cached: bool,
}

impl AccelVerdict {
    fn new(kvm_usable: bool, decided_by: ProbeStep, reason: String) -> AccelVerdict {
        AccelVerdict { kvm_usable, reason, decided_by, probe_ms: 0, cached: false }
    }
}

impl fmt::Display for AccelVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)?;
        if self.cached {
            f.write_str(" (cached for this boot)")?;
        }
        Ok(())
    }
}

/// The accelerator to put on qemu's command line, and what to tell the user about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// `Kvm` or `Tcg`, never `Auto`.
    pub accel: Accel,
    /// Set when `auto` fell back to TCG: one line for the user.
    pub notice: Option<String>,
}

/// Turn the requested accelerator into the one to use.
pub fn resolve(requested: Accel, verdict: &AccelVerdict) -> Result<Resolution, AccelError> {
    match (requested, verdict.kvm_usable) {
        (Accel::Tcg, _) => Ok(Resolution { accel: Accel::Tcg, notice: None }),
        (_, true) => Ok(Resolution { accel: Accel::Kvm, notice: None }),
        (Accel::Auto, false) => {
            Ok(Resolution { accel: Accel::Tcg, notice: Some(format!("{}; using TCG", verdict.reason)) })
        }
        (Accel::Kvm, false) => Err(AccelError::KvmUnusable { reason: verdict.reason.clone() }),
    }
}

/// Probe KVM, or reuse this boot's verdict from `<cache_dir>/accel.json`.
pub fn probe(cache_dir: &Path) -> AccelVerdict {
    let boot_id = fs::read_to_string(BOOT_ID_PATH).ok().map(|s| s.trim().to_string());
    if let Some(verdict) = boot_id.as_deref().and_then(|id| load_cache(cache_dir, id)) {
        debug!(usable = verdict.kvm_usable, reason = %verdict.reason, "KVM verdict from cache");
        return verdict;
    }
    let verdict = probe_uncached();
    if let (true, Some(id)) = (is_final(&verdict), &boot_id) {
        store_cache(cache_dir, id, &verdict);
    }
    verdict
}

/// Whether a verdict holds for the rest of this boot. A /dev/kvm failure is instant to find
/// again and may change (module load, group membership); a usable verdict is final only once
/// qemu itself confirmed it (not when qemu was missing).
fn is_final(verdict: &AccelVerdict) -> bool {
    match verdict.decided_by {
        ProbeStep::DevKvm => false,
        ProbeStep::CpuFlags | ProbeStep::QemuInit => true,
        ProbeStep::TestGuest => !verdict.kvm_usable,
    }
}

/// Run every step of the probe now, ignoring the cache.
pub fn probe_uncached() -> AccelVerdict {
    let start = Instant::now();
    let mut verdict = decide(
        check_dev_kvm,
        cpuinfo_allows_kvm,
        || probe_guest(GUEST_DEADLINE),
        || crate::process::find_program("qemu-system-x86_64").map(|q| probe_qemu(&q, QEMU_DEADLINE)),
    );
    verdict.probe_ms = start.elapsed().as_millis() as u64;
    info!(usable = verdict.kvm_usable, reason = %verdict.reason, ms = verdict.probe_ms, "KVM probe");
    verdict
}

/// The probe's steps in order, each run only if the ones before passed. `qemu` is `None`
/// when there is no qemu to ask: the test guest's verdict then stands, not final.
pub fn decide(
    dev_kvm: impl FnOnce() -> Result<(), String>,
    cpu_flags: impl FnOnce() -> bool,
    guest: impl FnOnce() -> AccelVerdict,
    qemu: impl FnOnce() -> Option<AccelVerdict>,
) -> AccelVerdict {
    if let Err(reason) = dev_kvm() {
        return AccelVerdict::new(false, ProbeStep::DevKvm, format!("KVM unusable: {reason}"));
    }
    if !cpu_flags() {
        let reason = "KVM unusable: /proc/cpuinfo has no vmx/svm flag (nested virtualization without VMX)";
        return AccelVerdict::new(false, ProbeStep::CpuFlags, reason.to_string());
    }
    let tested = guest();
    if !tested.kvm_usable {
        return tested;
    }
    qemu().unwrap_or_else(|| AccelVerdict {
        reason: format!("{}; qemu-system-x86_64 not found, so its own KVM init is not checked", tested.reason),
        ..tested
    })
}

/// True if the `flags` line of a `/proc/cpuinfo` text has `vmx` (Intel) or `svm` (AMD).
pub fn cpu_has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "flags"))
        .any(|l| l.split(':').nth(1).unwrap_or("").split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// An unreadable `/proc/cpuinfo` decides nothing: the test guest will.
fn cpuinfo_allows_kvm() -> bool {
    match fs::read_to_string("/proc/cpuinfo") {
        Ok(text) => cpu_has_virt_flag(&text),
        Err(e) => {
            warn!(error = %e, "cannot read /proc/cpuinfo; relying on the test guest");
            true
        }
    }
}

fn check_dev_kvm() -> Result<(), String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm read-write: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int; the fd is open.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), kvm::GET_API_VERSION, 0) };
    if version != 12 {
        return Err(format!("/dev/kvm reports API version {version}, expected 12"));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    probe_version: u32,
    boot_id: String,
    verdict: AccelVerdict,
}

fn load_cache(cache_dir: &Path, boot_id: &str) -> Option<AccelVerdict> {
    let text = fs::read_to_string(cache_dir.join(CACHE_FILE)).ok()?;
    let cache: CacheFile = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "ignoring unreadable KVM verdict cache");
            return None;
        }
    };
    if cache.probe_version != PROBE_VERSION || cache.boot_id != boot_id {
        return None;
    }
    Some(AccelVerdict { cached: true, ..cache.verdict })
}

fn store_cache(cache_dir: &Path, boot_id: &str, verdict: &AccelVerdict) {
    let cache = CacheFile { probe_version: PROBE_VERSION, boot_id: boot_id.to_string(), verdict: verdict.clone() };
    let write = || -> std::io::Result<()> {
        fs::create_dir_all(cache_dir)?;
        let json = serde_json::to_vec_pretty(&cache).map_err(std::io::Error::other)?;
        crate::state::runtime_write(&cache_dir.join(CACHE_FILE), &json)
    };
    if let Err(e) = write() {
        warn!(error = %e, dir = %cache_dir.display(), "cannot cache the KVM verdict");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(usable: bool) -> AccelVerdict {
        AccelVerdict::new(usable, ProbeStep::CpuFlags, "KVM unusable: because".to_string())
    }

    #[test]
    fn cpu_flag_detection_reads_only_the_flags_line() {
        assert!(cpu_has_virt_flag("processor\t: 0\nflags\t\t: fpu vme vmx sse\n"));
        assert!(cpu_has_virt_flag("flags\t\t: fpu svm\n"));
        assert!(!cpu_has_virt_flag("flags\t\t: fpu vmxx hypervisor\nmodel name\t: vmx svm\n"));
        assert!(!cpu_has_virt_flag(""));
    }

    #[test]
    fn resolve_auto_falls_back_to_tcg_with_a_notice() {
        let r = resolve(Accel::Auto, &verdict(false)).unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        assert_eq!(r.notice.as_deref(), Some("KVM unusable: because; using TCG"));
        let r = resolve(Accel::Auto, &verdict(true)).unwrap();
        assert_eq!(r, Resolution { accel: Accel::Kvm, notice: None });
    }

    #[test]
    fn resolve_kvm_requested_but_unusable_names_the_reason() {
        let err = resolve(Accel::Kvm, &verdict(false)).unwrap_err().to_string();
        assert!(err.contains("because"), "{err}");
        assert_eq!(resolve(Accel::Kvm, &verdict(true)).unwrap().accel, Accel::Kvm);
        assert_eq!(resolve(Accel::Tcg, &verdict(true)).unwrap().accel, Accel::Tcg);
    }

    #[test]
    fn accel_parses_and_prints() {
        for a in [Accel::Auto, Accel::Kvm, Accel::Tcg] {
            assert_eq!(a.to_string().parse::<Accel>().unwrap(), a);
        }
        assert!("hvf".parse::<Accel>().is_err());
    }

    #[test]
    fn cache_is_keyed_by_boot_id() {
        let dir = tempfile::tempdir().unwrap();
        store_cache(dir.path(), "boot-a", &verdict(false));
        let cached = load_cache(dir.path(), "boot-a").unwrap();
        assert!(cached.cached);
        assert_eq!(cached.reason, "KVM unusable: because");
        assert!(load_cache(dir.path(), "boot-b").is_none());
    }

    fn step(usable: bool, by: ProbeStep, reason: &str) -> AccelVerdict {
        AccelVerdict::new(usable, by, reason.to_string())
    }

    /// The four kinds of host in order: no KVM, a vCPU that crawls, qemu's init failing, KVM
    /// working; each reaches a verdict naming its reason, and `auto` ends on TCG or KVM.
    #[test]
    fn decide_covers_every_kind_of_host_and_auto_follows_it() {
        let never = || -> AccelVerdict { panic!("a later step ran after an earlier one failed") };
        let no_dev = decide(|| Err("cannot open /dev/kvm read-write: ENOENT".into()), || panic!(), never, || panic!());
        assert_eq!((no_dev.kvm_usable, no_dev.decided_by), (false, ProbeStep::DevKvm));
        assert!(!is_final(&no_dev));

        let no_vmx = decide(|| Ok(()), || false, never, || panic!());
        assert_eq!((no_vmx.kvm_usable, no_vmx.decided_by), (false, ProbeStep::CpuFlags));
        let crawl = step(false, ProbeStep::TestGuest, "KVM unusable: test guest vCPU finished 3 of 40 work chunks");
        let crawls = decide(|| Ok(()), || true, || crawl.clone(), || panic!("qemu asked after the guest failed"));
        assert_eq!(crawls, crawl);

        let guest_ok = step(true, ProbeStep::TestGuest, "KVM usable: test guest finished");
        let msr = step(false, ProbeStep::QemuInit, "KVM unusable: qemu's KVM init failed: failed to set MSR 0x10a");
        let qemu_fails = decide(|| Ok(()), || true, || guest_ok.clone(), || Some(msr.clone()));
        assert_eq!(qemu_fails, msr);
        let works = step(true, ProbeStep::QemuInit, "KVM usable: qemu initialised KVM");
        let all_good = decide(|| Ok(()), || true, || guest_ok.clone(), || Some(works.clone()));
        assert_eq!(all_good, works);

        for v in [&no_dev, &no_vmx, &crawls, &qemu_fails] {
            let auto = resolve(Accel::Auto, v).unwrap();
            assert_eq!(auto.accel, Accel::Tcg, "{v}");
            assert_eq!(auto.notice.unwrap(), format!("{}; using TCG", v.reason));
            assert!(resolve(Accel::Kvm, v).unwrap_err().to_string().contains(&v.reason));
        }
        assert_eq!(resolve(Accel::Auto, &all_good).unwrap(), Resolution { accel: Accel::Kvm, notice: None });
        assert!(is_final(&no_vmx) && is_final(&crawls) && is_final(&qemu_fails) && is_final(&all_good));
    }

    #[test]
    fn without_qemu_a_passing_guest_verdict_stands_but_is_not_cached() {
        let guest_ok = step(true, ProbeStep::TestGuest, "KVM usable: test guest finished");
        let v = decide(|| Ok(()), || true, || guest_ok.clone(), || None);
        assert!(v.kvm_usable && v.reason.contains("qemu-system-x86_64 not found"), "{v}");
        assert!(!is_final(&v));
    }
}
