//! `kvmctl ssh VM`: the system ssh client, pointed at the VM: through a user-mode NIC's
//! forward of guest port 22, or at the address its network leased it.

use std::os::unix::process::CommandExt;

use anyhow::bail;
use clap::Args;

use super::Ctx;
use crate::domain::definition::NicSource;
use crate::domain::lifecycle::{self, DomainError};
use crate::domain::runtime::RunDir;

#[derive(Debug, Args)]
pub struct SshArgs {
    #[arg(add = super::vm_names())]
    domain: String,
    /// The user to log in as (ssh -l).
    #[arg(short = 'l', long = "login", value_name = "USER")]
    login: Option<String>,
    /// Print the ssh command instead of running it.
    #[arg(long)]
    print: bool,
    /// Passed on to ssh after the destination (a remote command, options before `--`).
    #[arg(last = true)]
    rest: Vec<String>,
}

/// Where to reach the VM's sshd: (address, port, through a forward on this host).
fn destination(ctx: &Ctx, name: &str) -> anyhow::Result<(String, u16, bool)> {
    let def = lifecycle::current_def(&ctx.store, name)?;
    if !RunDir::of(&ctx.store, name).alive() {
        bail!(DomainError::NotRunning(name.into()));
    }
    let fwd = def.nics.iter().flat_map(|n| &n.hostfwd).find(|f| !f.udp && f.guest_port == 22);
    if let Some(f) = fwd {
        let host = if f.host_addr.is_unspecified() { "127.0.0.1".to_string() } else { f.host_addr.to_string() };
        return Ok((host, f.host_port, true));
    }
    if def.nics.iter().any(|n| matches!(n.source, NicSource::Network { .. })) {
        let addrs = super::domain_info::if_addrs(ctx, name)?;
        if let Some(a) =
            addrs.iter().map(|a| a.address.split('/').next().unwrap_or_default()).find(|a| !a.contains(':'))
        {
            return Ok((a.to_string(), 22, false));
        }
        bail!("domain '{name}' has no DHCP lease yet (kvmctl domifaddr {name}): wait for it to boot, or retry");
    }
    bail!(
        "domain '{name}' has no address to ssh to: put it on a kvmctl network, or forward a port to its sshd \
         (--network user,hostfwd=tcp::2222-:22)"
    )
}

pub(super) fn ssh(ctx: &Ctx, a: SshArgs) -> anyhow::Result<()> {
    let (host, port, forwarded) = destination(ctx, &a.domain)?;
    let mut argv: Vec<String> = Vec::new();
    if port != 22 {
        argv.extend(["-p".into(), port.to_string()]);
    }
    if forwarded {
        // Every VM behind a forward is "127.0.0.1": keep their host keys apart.
        argv.extend(["-o".into(), format!("HostKeyAlias=kvmctl-{}", a.domain)]);
    }
    if let Some(u) = &a.login {
        argv.extend(["-l".into(), u.clone()]);
    }
    argv.push(host);
    argv.extend(a.rest);
    if a.print {
        println!("ssh {}", argv.join(" "));
        return Ok(());
    }
    let Some(ssh) = crate::process::find_program("ssh") else {
        bail!("cannot run ssh: not found in PATH (apt install openssh-client)");
    };
    let err = std::process::Command::new(ssh).args(&argv).exec();
    bail!("cannot run ssh: {err}")
}
