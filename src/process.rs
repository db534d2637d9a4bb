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
