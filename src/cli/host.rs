//! `down`: host shutdown (libvirt-guests); `up` (in domain.rs) starts the VMs again.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::Ctx;
use crate::domain::host::{self, Outcome};

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Seconds the guests have to power off after the ACPI power button; then the ones still
    /// running are stopped at once (quit, then SIGKILL).
    #[arg(long, value_name = "S", default_value_t = 120, value_parser = super::whole_u64)]
    pub timeout: u64,
}

#[derive(Serialize)]
struct Line {
    name: String,
    /// poweroff, forced, already-stopped or failed.
    outcome: &'static str,
    error: Option<String>,
    /// Started again by the next `kvmctl up`.
    recorded: bool,
}

pub fn down(a: DownArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let stopped = host::down(&ctx.store, Duration::from_secs(a.timeout))?;
    let mut failed = 0;
    let mut lines = Vec::new();
    for s in stopped {
        let (outcome, error) = match s.outcome {
            Outcome::PoweredOff => ("poweroff", None),
            Outcome::Forced => ("forced", None),
            Outcome::AlreadyStopped => ("already-stopped", None),
            Outcome::Failed(e) => ("failed", Some(e.to_string())),
        };
        match (outcome, &error) {
            ("poweroff", _) => ctx.out.done(format!("Domain '{}' is shut down", s.name)),
            ("forced", _) => {
                ctx.out.done(format!("Domain '{}' did not power off within {}s: destroyed", s.name, a.timeout))
            }
            ("already-stopped", _) => ctx.out.done(format!("Domain '{}' had stopped already", s.name)),
            (_, e) => {
                eprintln!("error: {}", e.as_deref().unwrap_or_default());
                failed += 1;
            }
        }
        lines.push(Line { name: s.name, outcome, error, recorded: s.recorded });
    }
    if ctx.out.json {
        ctx.out.json(&lines)?;
    } else {
        let recorded = lines.iter().filter(|l| l.recorded).count();
        ctx.out.done(match lines.len() {
            0 => "No running domains".to_string(),
            _ => format!("{recorded} domain(s) recorded: the next `kvmctl up` starts them again"),
        });
    }
    if failed > 0 {
        anyhow::bail!("{failed} domain(s) could not be stopped");
    }
    Ok(())
}
