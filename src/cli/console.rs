//! `console`: attach to the serial console, or print its log.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::Ctx;
use crate::domain::lifecycle::{self, DomainError};
use crate::domain::runtime::RunDir;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[arg(add = super::vm_names())]
    domain: String,
    /// Take the console over from another session (it is told and detached).
    #[arg(long)]
    force: bool,
    /// Watch only: any number of read-only viewers may attach.
    #[arg(long)]
    readonly: bool,
    /// virsh's safe console handling: kvmctl's console always is (one session writes at a
    /// time; another attaching is refused unless it takes over with --force).
    #[arg(long)]
    safe: bool,
    /// The console device: serial0 (also console0), a VM's one serial console.
    #[arg(long, value_name = "DEVICE")]
    devname: Option<String>,
    /// Detach sequence (caret notation), default ^] as virsh.
    #[arg(long, default_value = "^]")]
    escape: String,
    /// With a pipe as stdin: keep printing this many seconds after the input ends.
    #[arg(long, default_value_t = 1.0)]
    timeout: f64,
    /// Print the console log (from the first byte of the last boot); works for stopped VMs.
    #[arg(long)]
    log: bool,
    /// With --log: keep printing as the guest writes.
    #[arg(short, long, requires = "log")]
    follow: bool,
    /// With --log: only the last N lines.
    #[arg(long, requires = "log")]
    tail: Option<usize>,
}

pub(super) fn attach(
    ctx: &Ctx,
    name: &str,
    force: bool,
    readonly: bool,
    escape: &str,
    linger: f64,
) -> anyhow::Result<()> {
    let rd = RunDir::of(&ctx.store, name);
    if !rd.alive() {
        bail!(DomainError::NotRunning(name.into()));
    }
    let escape = crate::console::parse_escape(escape).map_err(anyhow::Error::msg)?;
    let o = crate::console::AttachOpts { force, readonly, escape, linger: Duration::from_secs_f64(linger.max(0.0)) };
    crate::console::attach(&rd, name, &o)
}

pub(super) fn console_cmd(ctx: &Ctx, a: ConsoleArgs) -> anyhow::Result<()> {
    let rd = RunDir::of(&ctx.store, &a.domain);
    let _ = a.safe;
    if let Some(d) = a.devname.as_deref().filter(|d| !matches!(*d, "serial0" | "console0")) {
        lifecycle::current_def(&ctx.store, &a.domain)?;
        bail!("domain '{}' has no console device '{d}': its one console is serial0 (console0)", a.domain);
    }
    if !a.log {
        lifecycle::current_def(&ctx.store, &a.domain)?;
        return attach(ctx, &a.domain, a.force, a.readonly, &a.escape, a.timeout);
    }
    let path = rd.console_log();
    let text = std::fs::read(&path)
        .map_err(|_| anyhow::anyhow!("domain '{}': no console log (it has not run since it was defined)", a.domain))?;
    // The last N lines (a final line without its newline counts too).
    let start = match a.tail {
        Some(n) => {
            let lines: Vec<usize> = text.split_inclusive(|b| *b == b'\n').map(<[u8]>::len).collect();
            lines.iter().rev().skip(n).sum::<usize>()
        }
        None => 0,
    };
    let mut out = std::io::stdout();
    use std::io::Write;
    out.write_all(&text[start..])?;
    out.flush()?;
    if a.follow {
        let mut pos = text.len() as u64;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len < pos {
                pos = 0; // rotated or a new boot
            }
            if len > pos {
                use std::io::{Read, Seek};
                let mut f = std::fs::File::open(&path)?;
                f.seek(std::io::SeekFrom::Start(pos))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                out.write_all(&buf)?;
                out.flush()?;
                pos += buf.len() as u64;
            }
            if !rd.alive() {
                return Ok(());
            }
        }
    }
    Ok(())
}
