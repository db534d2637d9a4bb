//! Running external programs: explicit argv, `LC_ALL=C`, stderr captured into the error.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot run {program}: {source} (is it installed?)")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed { argv: String, status: String, stderr: String },
}

/// The first executable file called `name` in a PATH directory (what exec would run), found
/// with one stat per directory instead of one failed exec per directory.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    find_in_path(name, &std::env::var_os("PATH")?)
}

fn find_in_path(name: &str, path: &OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Output of a successful run.
pub struct Output {
    pub stdout: String,
}

/// Run `program args...` to completion, feeding `stdin` if given.
pub fn run<I, S>(program: &str, args: I, stdin: Option<&[u8]>) -> Result<Output, ProcessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    let argv = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%argv, "run");
    let mut child = Command::new(program)
        .args(&args)
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn { program: program.into(), source })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows up as the program's own error below.
        let _ = pipe.write_all(data);
    }
    let out = child.wait_with_output().map_err(|source| ProcessError::Spawn { program: program.into(), source })?;
    if !out.status.success() {
        return Err(ProcessError::Failed {
            argv,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(Output { stdout: String::from_utf8_lossy(&out.stdout).into_owned() })
}

/// In a forked child before exec (`CommandExt::pre_exec`): let exactly `keep` and the
/// standard streams reach the program. Every other fd is marked close-on-exec
/// (`close_range(CLOSE_RANGE_CLOEXEC)`: whatever the parent inherited from its own caller,
/// such as `flock FILE kvmctl ...`'s lock or a pipe, goes away at exec, while std's own
/// exec-error pipe still works until then); the fds in `keep` get close-on-exec cleared.
/// `fallback_max` (from [`fd_limit`], read before the fork) bounds a per-fd loop on kernels
/// without CLOSE_RANGE_CLOEXEC (before 5.11). Async-signal-safe: system calls only.
pub fn inherit_only(keep: &[std::os::fd::RawFd], fallback_max: libc::c_int) -> std::io::Result<()> {
    // SAFETY: close_range and fcntl only change descriptor flags of this (forked) process.
    let r = unsafe {
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC)
    };
    if r != 0 {
        for fd in 3..fallback_max {
            // SAFETY: as above; an fd that is not open is reported as EBADF and skipped.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    for fd in keep {
        // SAFETY: as above.
        unsafe {
            let flags = libc::fcntl(*fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The fd limit a child starts with (bounds [`inherit_only`]'s fallback loop).
pub fn fd_limit() -> libc::c_int {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur.min(1 << 20) as libc::c_int
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Does `/proc/self/fd/<fd>` exist in a child whose pre_exec first makes `fds` inheritable
    /// (as fds inherited from a caller are), then runs `inherit_only(keep)`?
    fn child_has_fd(fds: [i32; 2], keep: i32, probe: i32) -> bool {
        use std::os::unix::process::CommandExt;
        let limit = fd_limit();
        let mut c = Command::new("test");
        c.args(["-e", &format!("/proc/self/fd/{probe}")]);
        // SAFETY: only fcntl and close_range between fork and exec.
        unsafe {
            c.pre_exec(move || {
                for fd in fds {
                    // SAFETY: flag change on an fd of this child.
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
                inherit_only(&[keep], limit)
            });
        }
        c.status().unwrap().success()
    }

    #[test]
    fn inherit_only_passes_the_kept_fd_and_no_other() {
        use std::os::fd::AsRawFd;
        let d = tempfile::tempdir().unwrap();
        let a = std::fs::File::create(d.path().join("a")).unwrap();
        let b = std::fs::File::create(d.path().join("b")).unwrap();
        let fds = [a.as_raw_fd(), b.as_raw_fd()];
        assert!(child_has_fd(fds, fds[0], fds[0]));
        assert!(!child_has_fd(fds, fds[0], fds[1]));
    }

    #[test]
    fn find_program_takes_the_first_executable_in_path() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        // In a: present but not executable; in b: executable.
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        let found = find_in_path("tool", &path);
        let missing = find_in_path("no-such-tool-here", &path);
        assert_eq!(found, Some(b.join("tool")));
        assert_eq!(missing, None);
    }
}
