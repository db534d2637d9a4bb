//! `events`: virsh's `event --all --loop`, one line per event as it happens (NDJSON with --json).

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use clap::Args;
use nix::poll::PollFlags;

use super::Ctx;
use crate::events::{Filter, Follower, Next};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this VM's events and its DHCP leases (virsh's `--domain VM` too). It need not
    /// exist yet: its definition is an event.
    #[arg(add = super::vm_names(), conflicts_with = "network")]
    pub domain: Option<String>,
    /// Only this network's events and its DHCP leases.
    #[arg(long, value_name = "NET", add = super::network_names())]
    pub network: Option<String>,
    /// End after S seconds (exit 0).
    #[arg(long, value_name = "S", value_parser = super::whole_u64)]
    pub timeout: Option<u64>,
    /// End after N events (exit 0).
    #[arg(long, value_name = "N", value_parser = super::whole_u64)]
    pub count: Option<u64>,
    /// virsh's spelling; kvmctl reports every kind of event anyway.
    #[arg(long, hide = true)]
    pub all: bool,
    /// virsh's spelling; kvmctl goes on until --count, --timeout or a signal anyway.
    #[arg(long = "loop", hide = true)]
    pub looping: bool,
}

pub fn events(a: EventsArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if let Some(d) = &a.domain {
        crate::names::validate("domain", d)?;
    }
    if let Some(n) = &a.network {
        crate::names::validate("network", n)?;
    }
    let filter = Filter { domain: a.domain, network: a.network };
    let mut left = a.count;
    if left == Some(0) {
        return Ok(());
    }
    // Ctrl+C, SIGTERM, SIGHUP: the end of the stream, not an error.
    let stop = crate::state::interrupt::signals_to_pipe()?;
    let deadline = a.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut follower = Follower::open(&ctx.store.paths, crate::domain::journal::owner_of_mac)?;
    tracing::info!(journal = %ctx.store.paths.run.join(crate::events::JOURNAL).display(), "following events");
    let stdout = std::io::stdout();
    loop {
        // stdout with no events asked: ready only when its reader has gone (`| head`).
        let extra = [(stop.as_fd(), PollFlags::POLLIN), (stdout.as_fd(), PollFlags::empty())];
        match follower.next(deadline, &extra)? {
            Next::Event(ev) if filter.matches(&ev) => {
                let line = if ctx.out.json { serde_json::to_string(&ev)? } else { ev.human() };
                let mut out = stdout.lock();
                writeln!(out, "{line}")?;
                out.flush()?;
                if let Some(n) = &mut left {
                    *n -= 1;
                    if *n == 0 {
                        return Ok(());
                    }
                }
            }
            Next::Event(_) => {}
            Next::Timeout | Next::Woken(_) => return Ok(()),
        }
    }
}
