//! Host-wide commands: `down` (host shutdown, as libvirt-guests; `up` in domain.rs starts the
//! VMs again) and `capabilities` (what this host's qemu and accelerator can run).

use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::output::info_block;
use super::Ctx;
use crate::domain::accel;
use crate::domain::host::{self, Outcome};
use crate::domain::qemu_caps::{self, Machine};

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

/// UEFI firmware files kvmctl uses where they exist (`--boot uefi`).
const FIRMWARE: [&str; 2] = ["/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"];

#[derive(Serialize)]
struct Capabilities {
    arch: String,
    /// What `--accel auto` picks on this host now: kvm or tcg.
    accelerator: &'static str,
    kvm_usable: bool,
    kvm_reason: String,
    qemu: String,
    machines: Vec<Machine>,
    cpu_models: Vec<String>,
    /// `-cpu` under the accelerator when a definition names no model.
    default_cpu: &'static str,
    devices: Devices,
    firmware: Vec<String>,
    disk_formats: [&'static str; 2],
    disk_buses: [&'static str; 4],
    nic_models: [&'static str; 3],
}

#[derive(Serialize)]
struct Devices {
    tun: bool,
    vhost_net: bool,
}

pub(super) fn capabilities(ctx: &Ctx) -> anyhow::Result<()> {
    let verdict = accel::probe(&ctx.store.paths.run);
    let caps = qemu_caps::probe(&ctx.store.paths.run)?;
    let c = Capabilities {
        arch: nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default(),
        accelerator: if verdict.kvm_usable { "kvm" } else { "tcg" },
        kvm_usable: verdict.kvm_usable,
        kvm_reason: verdict.reason.clone(),
        qemu: caps.qemu.clone(),
        machines: caps.machines.clone(),
        cpu_models: caps.cpus.clone(),
        default_cpu: if verdict.kvm_usable { "host" } else { "max" },
        devices: Devices { tun: Path::new("/dev/net/tun").exists(), vhost_net: Path::new("/dev/vhost-net").exists() },
        firmware: FIRMWARE.iter().filter(|f| Path::new(f).exists()).map(|f| f.to_string()).collect(),
        disk_formats: ["qcow2", "raw"],
        disk_buses: ["virtio", "sata", "scsi", "ide"],
        nic_models: ["virtio", "e1000", "rtl8139"],
    };
    if ctx.out.json {
        return ctx.out.json(&c);
    }
    let machines: Vec<String> = c
        .machines
        .iter()
        .map(|m| match &m.alias {
            Some(a) => format!("{a} ({}, up to {} vCPUs)", m.name, m.cpu_max),
            None => format!("{} (up to {} vCPUs)", m.name, m.cpu_max),
        })
        .collect();
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let rows = vec![
        ("Arch", c.arch.clone()),
        ("Accelerator", format!("{} ({})", c.accelerator, c.kvm_reason)),
        ("Emulator", c.qemu.clone()),
        ("Default CPU", format!("-cpu {}", c.default_cpu)),
        ("CPU models", c.cpu_models.len().to_string()),
        ("Machines", machines.len().to_string()),
        ("/dev/net/tun", yes(c.devices.tun)),
        ("/dev/vhost-net", yes(c.devices.vhost_net)),
        ("UEFI firmware", if c.firmware.is_empty() { "none (apt install ovmf)".into() } else { c.firmware.join(", ") }),
        ("Disk formats", c.disk_formats.join(", ")),
        ("Disk buses", c.disk_buses.join(", ")),
        ("NIC models", c.nic_models.join(", ")),
    ];
    print!("{}", info_block(&rows));
    println!("\nMachine types:");
    machines.iter().for_each(|m| println!("  {m}"));
    println!("\nCPU models:\n  {}", c.cpu_models.join(" "));
    Ok(())
}
