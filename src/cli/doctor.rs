//! `doctor` (virt-host-validate, and more): what this host can run, and what would break a
//! network or a VM before a command fails on it. Each finding is ok, warn or fail with one
//! line on what to do. Read-only: nothing on the host is created or changed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::output::table;
use super::Ctx;
use crate::network::NetworkDef;
use crate::paths::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

fn f(check: &str, status: Status, detail: impl Into<String>) -> Finding {
    Finding { check: check.into(), status, detail: detail.into() }
}

/// The first line a program prints for `--version`, or None when it is not installed.
fn version(program: &str, arg: &str) -> Option<String> {
    crate::process::find_program(program)?;
    let out = crate::process::run(program, [arg], None).ok()?;
    out.stdout.lines().next().map(|l| l.trim().to_string())
}

fn programs(out: &mut Vec<Finding>) {
    for (program, arg, need, what) in [
        ("qemu-system-x86_64", "--version", Status::Fail, "VMs cannot start (apt install qemu-system-x86)"),
        (
            "qemu-img",
            "--version",
            Status::Warn,
            "vol-resize of qcow2 and foreign images need it (apt install qemu-utils)",
        ),
        ("dnsmasq", "--version", Status::Fail, "networks with DHCP or DNS cannot start (apt install dnsmasq-base)"),
        ("nft", "--version", Status::Fail, "NAT and routed networks cannot start (apt install nftables)"),
    ] {
        out.push(match version(program, arg) {
            Some(v) => f(program, Status::Ok, v),
            None => f(program, need, format!("not installed: {what}")),
        });
    }
}

fn devices(out: &mut Vec<Finding>) {
    let rw = |p: &str| std::fs::OpenOptions::new().read(true).write(true).open(p);
    out.push(match rw("/dev/net/tun") {
        Ok(_) => f("/dev/net/tun", Status::Ok, "taps can be made"),
        Err(e) => f("/dev/net/tun", Status::Fail, format!("{e}: network NICs need it (modprobe tun)")),
    });
    out.push(match rw("/dev/vhost-net") {
        Ok(_) => f("/dev/vhost-net", Status::Ok, "virtio-net runs with vhost"),
        Err(e) => f(
            "/dev/vhost-net",
            Status::Warn,
            format!("{e}: virtio-net runs without vhost, slower (modprobe vhost_net)"),
        ),
    });
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let module = |name: &str, rel: &str| {
        Path::new("/sys/module").join(name).exists()
            || ["", ".xz", ".zst", ".gz"]
                .iter()
                .any(|ext| Path::new(&format!("/lib/modules/{release}/kernel/{rel}{ext}")).exists())
    };
    out.push(if module("bridge", "net/bridge/bridge.ko") {
        f("bridge", Status::Ok, "Linux bridges available")
    } else {
        f("bridge", Status::Fail, "no bridge support in this kernel: networks cannot start")
    });
    out.push(match crate::process::run("nft", ["list", "tables"], None) {
        Ok(_) => f("nf_tables", Status::Ok, "nftables works"),
        Err(e) => f("nf_tables", Status::Fail, format!("{e}: NAT and routed networks cannot start")),
    });
    out.push(if Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists() {
        f("OVMF", Status::Ok, "UEFI firmware present (--boot uefi)")
    } else {
        f("OVMF", Status::Warn, "no /usr/share/OVMF/OVMF_CODE.fd: --boot uefi needs it (apt install ovmf)")
    });
}

fn accel(ctx: &Ctx, out: &mut Vec<Finding>) {
    let v = crate::domain::accel::probe(&ctx.store.paths.run);
    out.push(if v.kvm_usable {
        f("KVM", Status::Ok, "usable: VMs run under KVM")
    } else {
        f("KVM", Status::Warn, format!("{}: VMs run under TCG (emulated, much slower)", v.reason))
    });
}

/// dnsmasq drops to an unprivileged user, which must reach its files in the runtime dir:
/// every directory above it must let others search it.
fn runtime_reachable(ctx: &Ctx, out: &mut Vec<Finding>) {
    let run = &ctx.store.paths.run;
    let mut blocked: Option<PathBuf> = None;
    let mut p: Option<&Path> = Some(run.as_path());
    while let Some(dir) = p {
        if let Ok(m) = std::fs::metadata(dir) {
            if m.permissions().mode() & 0o001 == 0 {
                blocked = Some(dir.to_path_buf());
            }
        }
        p = dir.parent();
    }
    out.push(match blocked {
        None => f("runtime dir", Status::Ok, format!("{} is reachable by dnsmasq's user", run.display())),
        Some(d) => f(
            "runtime dir",
            Status::Fail,
            format!(
                "{} is not searchable by others (mode {:o}): dnsmasq, which drops to its own user, cannot reach {} and every net-start fails (chmod o+x {})",
                d.display(),
                std::fs::metadata(&d).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0),
                run.display(),
                d.display()
            ),
        ),
    });
}

/// Defined networks that could not start here: their subnet overlaps a host route or another
/// network, or their bridge name is taken (what net-start's preflight would say).
async fn networks(ctx: &Ctx, out: &mut Vec<Finding>) {
    let store = &ctx.store;
    let Ok(nl) = crate::network::netlink::Netlink::connect() else {
        out.push(f("networks", Status::Fail, "cannot talk to the kernel over netlink"));
        return;
    };
    let mut checked = 0;
    for name in store.list(Kind::Network).unwrap_or_default() {
        if crate::network::lifecycle::load_state(store, &name).is_some() {
            continue; // active: it runs already
        }
        let Ok(def) = store.load::<NetworkDef>(Kind::Network, &name) else { continue };
        checked += 1;
        if let Err(e) = crate::network::lifecycle::preflight(store, &nl, &def).await {
            out.push(f(&format!("network {name}"), Status::Warn, format!("net-start would fail: {e}")));
        }
    }
    if !out.iter().any(|x| x.check.starts_with("network ")) {
        out.push(f(
            "networks",
            Status::Ok,
            format!("{checked} inactive network(s) can start (no subnet or bridge clash)"),
        ));
    }
}

/// nftables chains of other firewall managers (docker, firewalld, iptables-nft) that drop
/// forwarded traffic by policy: guests' traffic through kvmctl's bridges would be dropped.
fn foreign_firewalls(out: &mut Vec<Finding>) {
    let Ok(o) = crate::process::run("nft", ["-j", "list", "chains"], None) else { return };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&o.stdout) else { return };
    let mut found = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["chain"];
        let (Some(table), Some(name)) = (c["table"].as_str(), c["name"].as_str()) else { continue };
        if table.starts_with("kvmctl_") {
            continue;
        }
        if c["hook"] == "forward" && c["policy"] == "drop" {
            let family = c["family"].as_str().unwrap_or("?");
            found.push(format!("{family} {table} chain {name}"));
        }
    }
    out.push(if found.is_empty() {
        f("firewall", Status::Ok, "no other firewall drops forwarded traffic")
    } else {
        f(
            "firewall",
            Status::Warn,
            format!(
                "{} drops forwarded traffic by policy (docker, firewalld or iptables): guests on NAT and routed networks cannot reach out unless it accepts their bridges",
                found.join(", ")
            ),
        )
    });
}

pub(super) fn doctor(ctx: &Ctx) -> anyhow::Result<()> {
    let mut out = Vec::new();
    accel(ctx, &mut out);
    devices(&mut out);
    programs(&mut out);
    runtime_reachable(ctx, &mut out);
    foreign_firewalls(&mut out);
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(networks(ctx, &mut out));
    let failed = out.iter().filter(|x| x.status == Status::Fail).count();
    if ctx.out.json {
        ctx.out.json(&out)?;
    } else {
        let rows: Vec<Vec<String>> = out
            .iter()
            .map(|x| {
                let s = match x.status {
                    Status::Ok => "ok",
                    Status::Warn => "warn",
                    Status::Fail => "FAIL",
                };
                vec![x.check.clone(), s.into(), x.detail.clone()]
            })
            .collect();
        print!("{}", table(&["Check", "Status", "Detail"], &rows));
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}
