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

#[cfg(test)]
mod tests {
    use super::*;

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
