//! Step 3 of the probe: a tiny guest run through the KVM ioctls in a forked child.
//!
//! The guest switches from real mode to protected mode and runs a [`Workload`] of `dec; jnz`
//! loops, writing one byte to a pipe per finished chunk, and is SIGKILLed at a deadline.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use tracing::debug;

use super::{AccelVerdict, ProbeStep};

/// How much the test guest computes: `chunks` times `iterations` loop turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub chunks: u32,
    pub iterations: u32,
}

/// The probe's workload: 40 million iterations, ~15 ms on a native vCPU.
pub const PROBE_WORKLOAD: Workload = Workload { chunks: 40, iterations: 1_000_000 };

enum ChildEnd {
    Exited(i32),
    Signaled(Signal),
    Killed,
    WaitFailed(Errno),
}

/// Run the probe's workload in a forked child, killed at `deadline`.
pub fn probe_guest(deadline: Duration) -> AccelVerdict {
    run_guest(PROBE_WORKLOAD, deadline)
}

/// Run `work` in the test guest in a forked child, killed at `deadline`.
/// Both counts are at least 1 (a 0 would make the guest's `dec; jnz` loop 2^32 times).
pub fn run_guest(work: Workload, deadline: Duration) -> AccelVerdict {
    let work = Workload { chunks: work.chunks.max(1), iterations: work.iterations.max(1) };
    let start = Instant::now();
    let (progress_rd, progress_wr) = match pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
        Ok(p) => p,
        Err(e) => return guest_verdict(false, format!("cannot create a pipe for the test guest: {e}")),
    };
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs only `code::run` (raw prctl/open/ioctl/mmap/write syscalls on
    // stack data, no allocation, no locks) and then `_exit`, so forking a multithreaded process
    // is sound: nothing in the child depends on state other threads may have held.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = code::run(parent.as_raw(), progress_wr.as_raw_fd(), work);
            // SAFETY: `_exit` ends the child without running destructors or atexit handlers
            // that belong to the parent's state.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(progress_wr);
            let end = wait_until(child, deadline);
            let chunks = count_progress(&progress_rd);
            guest_outcome(end, chunks, work, start.elapsed(), deadline)
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

fn guest_outcome(end: ChildEnd, chunks: u32, work: Workload, elapsed: Duration, deadline: Duration) -> AccelVerdict {
    let ms = elapsed.as_millis();
    match end {
        ChildEnd::Exited(0) if chunks == work.chunks => guest_verdict(
            true,
            format!("KVM usable: test guest entered protected mode and finished its work in {ms} ms"),
        ),
        ChildEnd::Exited(0) => guest_verdict(
            false,
            format!("KVM unusable: test guest reported {chunks} of {} work chunks before finishing", work.chunks),
        ),
        ChildEnd::Exited(status) => {
            guest_verdict(false, format!("KVM unusable: test guest failed: {}", code::failure(status)))
        }
        ChildEnd::Signaled(sig) => guest_verdict(false, format!("KVM unusable: test guest died of {sig}")),
        ChildEnd::WaitFailed(e) => guest_verdict(false, format!("KVM unusable: cannot wait for the test guest: {e}")),
        ChildEnd::Killed => guest_verdict(
            false,
            format!(
                "KVM unusable: test guest vCPU finished {chunks} of {} work chunks in {} ms \
                 (native KVM needs ~15 ms); the vCPU does not run natively",
                work.chunks,
                deadline.as_millis()
            ),
        ),
    }
}

/// What a test guest failure says when the host's KVM refused a step (as opposed to a fault
/// of the probe itself: a wrong result, an unexpected exit, no memory).
pub const HOST_REFUSALS: [&str; 6] = [
    "cannot open /dev/kvm",
    "KVM_CREATE_VM failed",
    "KVM_SET_USER_MEMORY_REGION failed",
    "KVM_CREATE_VCPU failed",
    "cannot set the vCPU registers",
    "KVM_RUN failed",
];

/// KVM ioctl numbers and the x86 structures they use (from `linux/kvm.h`).
pub(super) mod kvm {
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

/// The test guest's code and its runner. Everything here runs in the forked child: raw
/// syscalls only.
mod code {
    use super::kvm;
    use std::os::fd::RawFd;

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
    pub(super) const CODE: [u8; 110] = [
        0xfa, 0x66, 0x0f, 0x01, 0x16, 0x68, 0x10, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01, 0x0f, 0x22, 0xc0, 0x66,
        0xea, 0x19, 0x10, 0x00, 0x00, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc,
        0x00, 0x80, 0x00, 0x00, 0xbb, 0x28, 0x00, 0x00, 0x00, 0xb9, 0x40, 0x42, 0x0f, 0x00, 0x49, 0x75, 0xfd, 0x89,
        0xd8, 0x66, 0xba, 0x10, 0x00, 0xef, 0x4b, 0x75, 0xee, 0xb8, 0x21, 0x4d, 0x56, 0x4b, 0x66, 0xba, 0x11, 0x00,
        0xef, 0xf4, 0x8d, 0xb6, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
        0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0x17, 0x00, 0x50, 0x10,
        0x00, 0x00,
    ];

    /// Offsets of the imm32 operands of `mov $40,%ebx` (bb 28 00 00 00) and
    /// `mov $1000000,%ecx` (b9 40 42 0f 00) in CODE.
    const CHUNKS_IMM: usize = 41;
    const ITERATIONS_IMM: usize = 46;

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
    pub fn run(parent: libc::pid_t, progress: RawFd, work: super::Workload) -> i32 {
        // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are plain syscalls without pointers.
        let orphaned = unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 || libc::getppid() != parent
        };
        if orphaned {
            return 19;
        }
        match setup(work) {
            Ok((vcpu, run)) => run_loop(vcpu, run, progress),
            Err(code) => code,
        }
    }

    fn setup(work: super::Workload) -> Result<(libc::c_int, *mut u8), i32> {
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
        load_memory(vm, work)?;
        // SAFETY: vm is a VM fd of this process; KVM_CREATE_VCPU takes the vCPU id by value.
        let vcpu = unsafe { libc::ioctl(vm, kvm::CREATE_VCPU, 0) };
        if vcpu < 0 {
            return Err(14);
        }
        let run = map_run(kvm_fd, vcpu)?;
        set_registers(vcpu)?;
        Ok((vcpu, run))
    }

    /// The code with the workload's counts in its two immediates (`mov $chunks,%ebx` and
    /// `mov $iterations,%ecx`); a copy on the stack, no allocation.
    pub(super) fn code(work: super::Workload) -> [u8; CODE.len()] {
        let mut code = CODE;
        code[CHUNKS_IMM..CHUNKS_IMM + 4].copy_from_slice(&work.chunks.to_le_bytes());
        code[ITERATIONS_IMM..ITERATIONS_IMM + 4].copy_from_slice(&work.iterations.to_le_bytes());
        code
    }

    fn load_memory(vm: libc::c_int, work: super::Workload) -> Result<(), i32> {
        let code = code(work);
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let mem =
            unsafe { libc::mmap(std::ptr::null_mut(), MEM_SIZE, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if mem == libc::MAP_FAILED {
            return Err(12);
        }
        // SAFETY: CODE_ADDR + CODE.len() is inside the MEM_SIZE bytes just mapped.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem.cast::<u8>().add(CODE_ADDR), code.len()) };
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
    fn workload_is_patched_into_the_two_mov_immediates() {
        assert_eq!(code::code(PROBE_WORKLOAD), code::CODE, "the probe's workload is the code as assembled");
        let code = code::code(Workload { chunks: 2, iterations: 0x0102_0304 });
        assert_eq!(code[40..45], [0xbb, 2, 0, 0, 0], "mov $2,%ebx");
        assert_eq!(code[45..50], [0xb9, 4, 3, 2, 1], "mov $0x01020304,%ecx");
    }

    #[test]
    fn outcome_needs_every_chunk_reported() {
        let work = Workload { chunks: 3, iterations: 1 };
        let d = Duration::from_millis(500);
        let done = guest_outcome(ChildEnd::Exited(0), 3, work, d, d);
        assert!(done.kvm_usable, "{done}");
        let short = guest_outcome(ChildEnd::Exited(0), 2, work, d, d);
        assert!(!short.kvm_usable && short.reason.contains("2 of 3"), "{short}");
        let killed = guest_outcome(ChildEnd::Killed, 1, work, d, d);
        assert!(!killed.kvm_usable && killed.reason.contains("1 of 3 work chunks in 500 ms"), "{killed}");
        let refused = guest_outcome(ChildEnd::Exited(17), 0, work, d, d);
        assert!(HOST_REFUSALS.iter().any(|r| refused.reason.contains(r)), "{refused}");
        let wrong = guest_outcome(ChildEnd::Exited(18), 0, work, d, d);
        assert!(!HOST_REFUSALS.iter().any(|r| wrong.reason.contains(r)), "{wrong}");
    }
}
