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
//!    say how far it got.
//!
//! The verdict is cached per host boot in `<cache_dir>/accel.json`, keyed by
//! `/proc/sys/kernel/random/boot_id`. [`probe`] blocks for up to the deadline: call it from
//! `spawn_blocking` in async code. x86_64 hosts only.

use std::fmt;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info, warn};

/// How long the test guest may run before it is killed and KVM declared unusable.
pub const GUEST_DEADLINE: Duration = Duration::from_millis(500);

/// Name of the cache file inside the cache directory.
pub const CACHE_FILE: &str = "accel.json";

/// Bump when the probe changes, so older cached verdicts are not trusted.
const PROBE_VERSION: u32 = 1;
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
    // A /dev/kvm failure is instant to find again and may change (module load, group membership).
    if verdict.decided_by != ProbeStep::DevKvm {
        if let Some(id) = &boot_id {
            store_cache(cache_dir, id, &verdict);
        }
    }
    verdict
}

/// Run every step of the probe now, ignoring the cache.
pub fn probe_uncached() -> AccelVerdict {
    let start = Instant::now();
    let mut verdict = if let Err(reason) = check_dev_kvm() {
        AccelVerdict::new(false, ProbeStep::DevKvm, format!("KVM unusable: {reason}"))
    } else if !cpuinfo_allows_kvm() {
        let reason = "KVM unusable: /proc/cpuinfo has no vmx/svm flag (nested virtualization without VMX)";
        AccelVerdict::new(false, ProbeStep::CpuFlags, reason.to_string())
    } else {
        probe_guest(GUEST_DEADLINE)
    };
    verdict.probe_ms = start.elapsed().as_millis() as u64;
    info!(usable = verdict.kvm_usable, reason = %verdict.reason, ms = verdict.probe_ms, "KVM probe");
    verdict
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

enum ChildEnd {
    Exited(i32),
    Signaled(Signal),
    Killed,
    WaitFailed(Errno),
}

/// Run the test guest in a forked child, killed at `deadline`.
pub fn probe_guest(deadline: Duration) -> AccelVerdict {
    let start = Instant::now();
    let (progress_rd, progress_wr) = match pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
        Ok(p) => p,
        Err(e) => return guest_verdict(false, format!("cannot create a pipe for the test guest: {e}")),
    };
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs only `guest::run` (raw prctl/open/ioctl/mmap/write syscalls on
    // stack data, no allocation, no locks) and then `_exit`, so forking a multithreaded process
    // is sound: nothing in the child depends on state other threads may have held.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = guest::run(parent.as_raw(), progress_wr.as_raw_fd());
            // SAFETY: `_exit` ends the child without running destructors or atexit handlers
            // that belong to the parent's state.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(progress_wr);
            let end = wait_until(child, deadline);
            let chunks = count_progress(&progress_rd);
            guest_outcome(end, chunks, start.elapsed(), deadline)
        }
        Err(e) => guest_verdict(false, format!("cannot fork the test guest: {e}")),
    }
}

fn guest_verdict(usable: bool, reason: String) -> AccelVerdict {
    AccelVerdict::new(usable, ProbeStep::TestGuest, reason)
}

fn wait_until(child: Pid, deadline: Duration) -> ChildEnd {
    let start = Instant::now();
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return ChildEnd::Exited(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return ChildEnd::Signaled(sig),
            Ok(_) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(_) => {
                debug!(pid = child.as_raw(), "test guest still running at the deadline; killing it");
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return ChildEnd::Killed;
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return ChildEnd::WaitFailed(e);
            }
        }
    }
}

/// The child writes one byte per finished work chunk; it is dead now, so this cannot block.
fn count_progress(rd: &OwnedFd) -> u32 {
    let mut total = 0u32;
    let mut buf = [0u8; 64];
    while let Ok(n) = nix::unistd::read(rd.as_raw_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        total += n as u32;
    }
    total
}

fn guest_outcome(end: ChildEnd, chunks: u32, elapsed: Duration, deadline: Duration) -> AccelVerdict {
    let ms = elapsed.as_millis();
    match end {
        ChildEnd::Exited(0) => guest_verdict(
            true,
            format!("KVM usable: test guest entered protected mode and finished its work in {ms} ms"),
        ),
        ChildEnd::Exited(code) => {
            guest_verdict(false, format!("KVM unusable: test guest failed: {}", guest::failure(code)))
        }
        ChildEnd::Signaled(sig) => guest_verdict(false, format!("KVM unusable: test guest died of {sig}")),
        ChildEnd::WaitFailed(e) => guest_verdict(false, format!("KVM unusable: cannot wait for the test guest: {e}")),
        ChildEnd::Killed => guest_verdict(
            false,
            format!(
                "KVM unusable: test guest vCPU finished {chunks} of {} work chunks in {} ms \
                 (native KVM needs ~15 ms); the vCPU does not run natively",
                guest::CHUNKS,
                deadline.as_millis()
            ),
        ),
    }
}

/// KVM ioctl numbers and the x86 structures they use (from `linux/kvm.h`).
mod kvm {
    use nix::sys::ioctl::ioctl_num_type;
    use nix::{request_code_none, request_code_read, request_code_write};

    const KVMIO: u8 = 0xAE;
    pub const GET_API_VERSION: ioctl_num_type = request_code_none!(KVMIO, 0x00);
    pub const CREATE_VM: ioctl_num_type = request_code_none!(KVMIO, 0x01);
    pub const GET_VCPU_MMAP_SIZE: ioctl_num_type = request_code_none!(KVMIO, 0x04);
    pub const CREATE_VCPU: ioctl_num_type = request_code_none!(KVMIO, 0x41);
    pub const SET_USER_MEMORY_REGION: ioctl_num_type =
        request_code_write!(KVMIO, 0x46, std::mem::size_of::<MemoryRegion>());
    pub const RUN: ioctl_num_type = request_code_none!(KVMIO, 0x80);
    pub const SET_REGS: ioctl_num_type = request_code_write!(KVMIO, 0x82, std::mem::size_of::<Regs>());
    pub const GET_SREGS: ioctl_num_type = request_code_read!(KVMIO, 0x83, std::mem::size_of::<Sregs>());
    pub const SET_SREGS: ioctl_num_type = request_code_write!(KVMIO, 0x84, std::mem::size_of::<Sregs>());

    pub const EXIT_IO: u32 = 2;
    /// `struct kvm_run`: `exit_reason` offset, and the `io` member of its exit union.
    pub const RUN_EXIT_REASON: usize = 8;
    pub const RUN_IO_PORT: usize = 34;
    pub const RUN_IO_DATA_OFFSET: usize = 40;

    #[repr(C)]
    pub struct MemoryRegion {
        pub slot: u32,
        pub flags: u32,
        pub guest_phys_addr: u64,
        pub memory_size: u64,
        pub userspace_addr: u64,
    }

    /// `struct kvm_regs`: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags.
    #[repr(C)]
    pub struct Regs(pub [u64; 18]);
    pub const REG_RIP: usize = 16;
    pub const REG_RFLAGS: usize = 17;

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Segment {
        pub base: u64,
        pub limit: u32,
        pub selector: u16,
        /// type present dpl db s l g avl unusable padding
        pub attrs: [u8; 10],
    }

    #[repr(C)]
    pub struct Dtable {
        pub base: u64,
        pub limit: u16,
        pub padding: [u16; 3],
    }

    /// `struct kvm_sregs`: cs ds es fs gs ss tr ldt, gdt idt, cr0 cr2 cr3 cr4 cr8 efer apic_base.
    #[repr(C)]
    pub struct Sregs {
        pub segments: [Segment; 8],
        pub dtables: [Dtable; 2],
        pub control: [u64; 7],
        pub interrupt_bitmap: [u64; 4],
    }

    const _: () = assert!(std::mem::size_of::<Segment>() == 24);
    const _: () = assert!(std::mem::size_of::<Sregs>() == 312);
    const _: () = assert!(std::mem::size_of::<Regs>() == 144);
    const _: () = assert!(std::mem::size_of::<MemoryRegion>() == 32);
}

/// The test guest. Everything here runs in the forked child: raw syscalls only.
mod guest {
    use super::kvm;
    use std::os::fd::RawFd;

    /// Work chunks of one million `dec; jnz` iterations each.
    pub const CHUNKS: u32 = 40;
    const MEM_SIZE: usize = 0x10000;
    const CODE_ADDR: usize = 0x1000;
    const PORT_PROGRESS: u16 = 0x10;
    const PORT_DONE: u16 = 0x11;
    const DONE_MAGIC: u32 = 0x4b56_4d21;

    /// Loaded at 0x1000, entered in real mode with CS=0 (`as --32`, `ld -Ttext=0x1000`):
    /// ```text
    /// .code16: cli; lgdtl gdtr; mov %cr0,%eax; or $1,%eax; mov %eax,%cr0; ljmpl $8,$pm32
    /// .code32 pm32: mov $0x10,%ax; mov %ax,%ds/%es/%ss; mov $0x8000,%esp; mov $40,%ebx
    /// outer: mov $1000000,%ecx
    /// inner: dec %ecx; jnz inner
    ///        mov %ebx,%eax; mov $0x10,%dx; out %eax,%dx     # progress
    ///        dec %ebx; jnz outer
    ///        mov $0x4b564d21,%eax; mov $0x11,%dx; out %eax,%dx; hlt
    /// gdt: null; 0x00cf9a000000ffff (code); 0x00cf92000000ffff (data); gdtr: limit, gdt
    /// ```
    const CODE: [u8; 110] = [
        0xfa, 0x66, 0x0f, 0x01, 0x16, 0x68, 0x10, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01, 0x0f, 0x22, 0xc0, 0x66,
        0xea, 0x19, 0x10, 0x00, 0x00, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc,
        0x00, 0x80, 0x00, 0x00, 0xbb, 0x28, 0x00, 0x00, 0x00, 0xb9, 0x40, 0x42, 0x0f, 0x00, 0x49, 0x75, 0xfd, 0x89,
        0xd8, 0x66, 0xba, 0x10, 0x00, 0xef, 0x4b, 0x75, 0xee, 0xb8, 0x21, 0x4d, 0x56, 0x4b, 0x66, 0xba, 0x11, 0x00,
        0xef, 0xf4, 0x8d, 0xb6, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
        0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0x17, 0x00, 0x50, 0x10,
        0x00, 0x00,
    ];

    /// Exit codes of the child, one per failing step.
    const STEPS: [(i32, &str); 10] = [
        (10, "cannot open /dev/kvm"),
        (11, "KVM_CREATE_VM failed"),
        (12, "cannot map guest memory"),
        (13, "KVM_SET_USER_MEMORY_REGION failed"),
        (14, "KVM_CREATE_VCPU failed"),
        (15, "cannot map the vCPU's kvm_run area"),
        (16, "cannot set the vCPU registers"),
        (17, "KVM_RUN failed"),
        (18, "unexpected vCPU exit or wrong result"),
        (19, "parent exited before the test guest started"),
    ];

    pub fn failure(code: i32) -> &'static str {
        STEPS.iter().find(|(c, _)| *c == code).map_or("unknown exit code", |(_, what)| what)
    }

    /// Dies with the parent, so a parent killed mid-probe leaves no crawling guest behind.
    pub fn run(parent: libc::pid_t, progress: RawFd) -> i32 {
        // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are plain syscalls without pointers.
        let orphaned = unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 || libc::getppid() != parent
        };
        if orphaned {
            return 19;
        }
        match setup() {
            Ok((vcpu, run)) => run_loop(vcpu, run, progress),
            Err(code) => code,
        }
    }

    fn setup() -> Result<(libc::c_int, *mut u8), i32> {
        // SAFETY: plain syscalls on fds this function owns; every result is checked.
        let (kvm_fd, vm) = unsafe {
            let kvm_fd = libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if kvm_fd < 0 {
                return Err(10);
            }
            (kvm_fd, libc::ioctl(kvm_fd, kvm::CREATE_VM, 0))
        };
        if vm < 0 {
            return Err(11);
        }
        load_memory(vm)?;
        // SAFETY: vm is a VM fd of this process; KVM_CREATE_VCPU takes the vCPU id by value.
        let vcpu = unsafe { libc::ioctl(vm, kvm::CREATE_VCPU, 0) };
        if vcpu < 0 {
            return Err(14);
        }
        let run = map_run(kvm_fd, vcpu)?;
        set_registers(vcpu)?;
        Ok((vcpu, run))
    }

    fn load_memory(vm: libc::c_int) -> Result<(), i32> {
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let mem =
            unsafe { libc::mmap(std::ptr::null_mut(), MEM_SIZE, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if mem == libc::MAP_FAILED {
            return Err(12);
        }
        // SAFETY: CODE_ADDR + CODE.len() is inside the MEM_SIZE bytes just mapped.
        unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.cast::<u8>().add(CODE_ADDR), CODE.len()) };
        let region = kvm::MemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem as u64,
        };
        // SAFETY: region is a valid kvm_userspace_memory_region describing the mapping above,
        // which stays mapped for the life of this process.
        if unsafe { libc::ioctl(vm, kvm::SET_USER_MEMORY_REGION, &region) } < 0 {
            return Err(13);
        }
        Ok(())
    }

    fn map_run(kvm_fd: libc::c_int, vcpu: libc::c_int) -> Result<*mut u8, i32> {
        // SAFETY: KVM_GET_VCPU_MMAP_SIZE takes no argument.
        let size = unsafe { libc::ioctl(kvm_fd, kvm::GET_VCPU_MMAP_SIZE, 0) };
        if size <= 0 {
            return Err(15);
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: maps the vCPU's kvm_run area as the KVM API documents; result checked.
        let run = unsafe { libc::mmap(std::ptr::null_mut(), size as usize, prot, libc::MAP_SHARED, vcpu, 0) };
        if run == libc::MAP_FAILED {
            return Err(15);
        }
        Ok(run.cast())
    }

    /// Real mode, CS base 0, start at CODE_ADDR.
    fn set_registers(vcpu: libc::c_int) -> Result<(), i32> {
        // SAFETY: all-zero is a valid bit pattern for these plain C structs.
        let mut sregs: kvm::Sregs = unsafe { std::mem::zeroed() };
        // SAFETY: sregs is a writable kvm_sregs of the size encoded in the request.
        if unsafe { libc::ioctl(vcpu, kvm::GET_SREGS, &mut sregs) } < 0 {
            return Err(16);
        }
        sregs.segments[0].base = 0;
        sregs.segments[0].selector = 0;
        let mut regs = kvm::Regs([0; 18]);
        regs.0[kvm::REG_RIP] = CODE_ADDR as u64;
        regs.0[kvm::REG_RFLAGS] = 2;
        // SAFETY: both structs are fully initialized and match the request sizes.
        let failed =
            unsafe { libc::ioctl(vcpu, kvm::SET_SREGS, &sregs) < 0 || libc::ioctl(vcpu, kvm::SET_REGS, &regs) < 0 };
        if failed {
            return Err(16);
        }
        Ok(())
    }

    fn run_loop(vcpu: libc::c_int, run: *mut u8, progress: RawFd) -> i32 {
        loop {
            // SAFETY: vcpu is a vCPU fd of this process; KVM_RUN takes no argument.
            if unsafe { libc::ioctl(vcpu, kvm::RUN, 0) } < 0 {
                return 17;
            }
            // SAFETY: run maps at least one page holding struct kvm_run; the offsets are the
            // header and io-exit fields, and data_offset points inside the same mapping.
            let (reason, port, value) = unsafe {
                let reason = run.add(kvm::RUN_EXIT_REASON).cast::<u32>().read_volatile();
                let port = run.add(kvm::RUN_IO_PORT).cast::<u16>().read_volatile();
                let data_offset = run.add(kvm::RUN_IO_DATA_OFFSET).cast::<u64>().read_volatile();
                (reason, port, run.add(data_offset as usize).cast::<u32>().read_unaligned())
            };
            match (reason, port) {
                (kvm::EXIT_IO, PORT_PROGRESS) => {
                    // SAFETY: writes one byte from a live buffer to the pipe fd.
                    unsafe { libc::write(progress, b".".as_ptr().cast(), 1) };
                }
                (kvm::EXIT_IO, PORT_DONE) if value == DONE_MAGIC => return 0,
                _ => return 18,
            }
        }
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
    fn ioctl_numbers_match_linux_headers() {
        assert_eq!(kvm::CREATE_VM, 0xAE01);
        assert_eq!(kvm::SET_USER_MEMORY_REGION, 0x4020_AE46);
        assert_eq!(kvm::GET_SREGS, 0x8138_AE83);
        assert_eq!(kvm::SET_SREGS, 0x4138_AE84);
        assert_eq!(kvm::SET_REGS, 0x4090_AE82);
        assert_eq!(kvm::RUN, 0xAE80);
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
}
