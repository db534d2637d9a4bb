//! What kvmctl guarantees about private state and confinement (README "Safety"), each proved
//! on a real VM (the tiny test guest, direct kernel boot, TCG, no NIC), inside a namespace.
//! Needs root, qemu and images/out (images/build.sh).

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::netns::can_netns;
use common::vmhost::VmHost;
use common::*;

fn prereqs() -> bool {
    require(
        "root, qemu-system-x86_64 and the test guest (images/build.sh)",
        can_netns() && have_program("qemu-system-x86_64") && guest_dir().join("vmlinuz").exists(),
    )
}

/// `kvmctl ARGS` inside the host's namespace, as a command to adjust before running.
fn kvmctl(h: &VmHost, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &h.ns.name, env!("CARGO_BIN_EXE_kvmctl"), "--root"])
        .arg(h.k.root())
        .args(args)
        .env_remove("KVMCTL_ROOT");
    c
}

fn must(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// `install` argv of a small VM that boots the test guest's kernel, with no NIC.
fn install_args(name: &str) -> Vec<String> {
    let g = guest_dir();
    let boot = format!("kernel={},initrd={}", g.join("vmlinuz").display(), g.join("initramfs.cpio.gz").display());
    ["install", "--name", name, "--memory", "128", "--boot", &boot, "--network", "none", "--noautoconsole"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn run_dir(h: &VmHost, vm: &str) -> PathBuf {
    h.k.root().join(format!("run/domains/{vm}"))
}

/// Every entry of `dir` (recursively) with its mode bits, sorted.
fn modes(dir: &Path) -> Vec<(String, char, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_socket() {
            's'
        } else if ft.is_file() {
            'f'
        } else {
            '?'
        };
        out.push((e.file_name().to_string_lossy().into_owned(), kind, meta.permissions().mode() & 0o7777));
        if ft.is_dir() {
            out.extend(
                modes(&e.path())
                    .into_iter()
                    .map(|(n, k, m)| (format!("{}/{n}", e.file_name().to_string_lossy()), k, m)),
            );
        }
    }
    out.sort();
    out
}

#[test]
fn vm_runtime_dir_files_and_sockets_are_private_under_umask_000() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("s");
    let umask0 = |c: &mut Command| {
        // SAFETY: umask(2) in the child before exec; async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    };
    let args = install_args("p1");
    let mut c = kvmctl(&h, &args.iter().map(String::as_str).collect::<Vec<_>>());
    umask0(&mut c);
    must(c.bounded(), "install under umask 000");
    h.wait_console("p1", "KVMCTL-GUEST-READY", 1, 120);
    // A second boot under umask 000: the previous console log is kept, private too.
    h.ok(&["destroy", "p1"]);
    let mut c = kvmctl(&h, &["start", "p1"]);
    umask0(&mut c);
    must(c.bounded(), "start under umask 000");
    h.wait_console("p1", "KVMCTL-GUEST-READY", 1, 120);
    let dir = run_dir(&h, "p1");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    let entries = modes(&dir);
    for want in
        ["control.sock", "qmp.sock", "console.sock", "console.log", "console.log.1", "qemu.log", "supervisor.log"]
    {
        assert!(entries.iter().any(|(n, _, _)| n == want), "{want} missing: {entries:?}");
    }
    for (name, kind, mode) in &entries {
        let want = if *kind == 'd' { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{name} ({kind}) is {mode:o}, not {want:o}: {entries:?}");
    }
    h.ok(&["destroy", "p1"]);
}

/// `kvmctl --root R ARGS` as uid/gid 65534 (nobody), optionally keeping CAP_DAC_OVERRIDE so
/// that file modes do not stop it.
fn kvmctl_as_nobody(h: &VmHost, past_file_modes: bool, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if past_file_modes {
        c.args(["--inh-caps=+dac_override", "--ambient-caps=+dac_override"]);
    }
    c.args(["--", env!("CARGO_BIN_EXE_kvmctl"), "--root"]).arg(h.k.root()).args(args).env_remove("KVMCTL_ROOT");
    c.bounded()
}

#[test]
fn control_socket_refuses_an_unprivileged_user() {
    if !prereqs() || !require("setpriv (util-linux)", have_program("setpriv")) {
        return;
    }
    let h = VmHost::new("s");
    let args = install_args("p2");
    must(kvmctl(&h, &args.iter().map(String::as_str).collect::<Vec<_>>()).bounded(), "install");
    // Plain nobody: the 0700 run dir and the 0600 socket stop it.
    let o = kvmctl_as_nobody(&h, false, &["suspend", "p2"]);
    assert!(!o.status.success(), "nobody suspended the VM");
    // nobody past the file modes reaches the socket: the supervisor checks the peer's uid.
    let o = kvmctl_as_nobody(&h, true, &["suspend", "p2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "nobody with CAP_DAC_OVERRIDE suspended the VM");
    assert!(err.contains("permission denied: uid 65534 may not control this VM"), "{err}");
    let log = std::fs::read_to_string(run_dir(&h, "p2").join("supervisor.log")).unwrap();
    assert!(log.contains("control connection refused") && log.contains("uid=65534"), "{log}");
    assert_eq!(h.ok(&["domstate", "p2"]).trim(), "running");
    // root is still answered.
    h.ok(&["suspend", "p2"]);
    assert_eq!(h.ok(&["domstate", "p2"]).trim(), "paused");
    h.ok(&["destroy", "p2"]);
}

/// The supervisor's and qemu's pids, from the VM's state.json.
fn vm_pids(h: &VmHost, vm: &str) -> (i32, i32) {
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir(h, vm).join("state.json")).unwrap()).unwrap();
    (st["supervisor_pid"].as_i64().unwrap() as i32, st["qemu_pid"].as_i64().unwrap() as i32)
}

/// What each open fd of `pid` points to (`readlink /proc/PID/fd/N`).
fn fd_targets(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).ok()?.display().to_string()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn start_leaves_no_caller_fd_open_in_the_supervisor_or_qemu() {
    if !prereqs() || !require("flock (util-linux)", have_program("flock")) {
        return;
    }
    let h = VmHost::new("s");
    let args = install_args("p3");
    must(kvmctl(&h, &args.iter().map(String::as_str).collect::<Vec<_>>()).bounded(), "install");
    h.ok(&["destroy", "p3"]);
    // `flock FILE kvmctl start p3`, with a pipe's write end on fd 7.
    let lockfile = h.k.dir.path().join("caller.lock");
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut c = Command::new("flock");
    c.arg(&lockfile).args(["ip", "netns", "exec", &h.ns.name, env!("CARGO_BIN_EXE_kvmctl"), "--root"]);
    c.arg(h.k.root()).args(["start", "p3"]).env_remove("KVMCTL_ROOT");
    let w = std::os::fd::AsRawFd::as_raw_fd(&wr);
    // SAFETY: dup2 in the child before exec; async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(w, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    must(c.bounded(), "flock ... kvmctl start");
    drop(wr);
    // start has returned: the lock is free and the pipe has no writer left.
    let o = Command::new("flock").args(["-n"]).arg(&lockfile).arg("true").bounded();
    assert!(o.status.success(), "the caller's lock is still held while the VM runs");
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&rd),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&rd), &mut buf), Ok(0), "fd 7's pipe has a writer");
    // Neither process holds anything of its caller, nor qemu the supervisor's lock.
    let (sup, qemu) = vm_pids(&h, "p3");
    let pipe = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&rd)))
        .unwrap()
        .display()
        .to_string();
    let lock = run_dir(&h, "p3").join("lock").display().to_string();
    for (who, pid) in [("supervisor", sup), ("qemu", qemu)] {
        let fds = fd_targets(pid);
        assert!(
            !fds.iter().any(|(_, t)| t == &lockfile.display().to_string()),
            "{who} holds the caller's lock: {fds:?}"
        );
        assert!(!fds.iter().any(|(_, t)| t == &pipe), "{who} holds the caller's pipe (fd 7): {fds:?}");
        if who == "qemu" {
            assert!(!fds.iter().any(|(_, t)| t == &lock), "qemu holds the supervisor's lock file: {fds:?}");
        }
    }
    assert_eq!(h.ok(&["domstate", "p3"]).trim(), "running");
    h.ok(&["destroy", "p3"]);
}

/// The `Name:\tvalue` field of a /proc status file.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
}

#[test]
fn qemu_runs_as_its_own_user_with_no_capabilities_sandboxed_holding_files_only_as_fds() {
    if !prereqs() || !require("setpriv (util-linux)", have_program("setpriv")) {
        return;
    }
    let h = VmHost::new("q");
    let mut args = install_args("p4");
    args.extend(["--disk".into(), "size=1".into()]);
    must(kvmctl(&h, &args.iter().map(String::as_str).collect::<Vec<_>>()).bounded(), "install");
    let (_, qemu) = vm_pids(&h, "p4");
    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    let user = nix::unistd::User::from_name("kvmctl-qemu").unwrap().expect("start created the user kvmctl-qemu");
    let uid = user.uid.to_string();
    assert_eq!(status_field(&status, "Uid").split_whitespace().collect::<Vec<_>>(), [uid.as_str(); 4]);
    let gid = user.gid.to_string();
    assert_eq!(status_field(&status, "Gid").split_whitespace().collect::<Vec<_>>(), [gid.as_str(); 4]);
    let groups = status_field(&status, "Groups");
    assert!(!groups.split_whitespace().any(|g| g == "0"), "qemu is in group root: {groups}");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(status_field(&status, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "Seccomp"), "2", "qemu runs without its seccomp sandbox");
    // qemu opened no image by name: every -drive names an fd set, and the disk is held as one.
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let drives: Vec<&String> = argv.windows(2).filter(|w| w[0] == "-drive").map(|w| &w[1]).collect();
    assert!(!drives.is_empty() && drives.iter().all(|d| d.starts_with("file=/dev/fdset/")), "{drives:?}");
    let disk = h.k.images().join("p4.qcow2").display().to_string();
    assert!(fd_targets(qemu).iter().any(|(_, t)| *t == disk), "qemu does not hold {disk}");
    // What a guest that took qemu over could open as qemu's user: not root's files.
    let groups: Vec<&str> = groups.split_whitespace().collect();
    let groups =
        if groups.is_empty() { vec!["--clear-groups".to_string()] } else { vec!["--groups".into(), groups.join(",")] };
    for file in ["/etc/shadow", &disk] {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &uid, "--regid", &gid]).args(&groups);
        let o = c.args(["--no-new-privs", "head", "-c1", file]).bounded();
        assert!(!o.status.success(), "qemu's user can read {file}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"), "{file}: {o:?}");
    }
    assert_eq!(h.ok(&["domstate", "p4"]).trim(), "running");
    h.ok(&["destroy", "p4"]);
}

#[test]
fn start_refuses_a_disk_whose_backing_file_lies_outside_the_pools() {
    if !prereqs() {
        return;
    }
    let h = VmHost::new("b");
    // A qcow2 in the pool whose header names a host file as its backing file.
    let outside = h.k.dir.path().join("host-secret.raw");
    std::fs::write(&outside, b"host data").unwrap();
    h.ok(&["pool-list", "--all"]); // the default pool exists from the first command on
    let ov = h.k.images().join("ov.qcow2");
    let ovs = ov.display().to_string();
    sh("qemu-img", &["create", "-q", "-f", "qcow2", "-b", outside.to_str().unwrap(), "-F", "raw", &ovs, "64M"]);
    let mut args = install_args("p5");
    args.extend(["--disk".into(), format!("path={ovs},format=qcow2")]);
    let o = kvmctl(&h, &args.iter().map(String::as_str).collect::<Vec<_>>()).bounded();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("domain 'p5'") && err.contains("outside every storage pool"), "{err}");
    assert!(!run_dir(&h, "p5").join("qemu.argv").exists(), "qemu was set up anyway");
}
