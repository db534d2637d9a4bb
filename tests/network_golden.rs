//! Golden files for the network pure core: for each case under `tests/golden/network/<case>/`,
//! `network.xml` is parsed, completed (bridge name/MAC as net-define does, with `virbr0` taken),
//! validated and rendered to `dumpxml.xml`, `dnsmasq.conf`, `hostsfile`, `addnhosts` and
//! `nft.rules` (the last four only where the network has them).
//!
//! `KVMCTL_REGEN_GOLDEN=1 cargo test --test network_golden` rewrites the files instead of
//! comparing. Every golden ruleset goes through `nft -c -f -` (check only: nothing is applied)
//! and every golden config (with its hostsfile lines as `dhcp-host=`) through `dnsmasq --test`;
//! they check the rendered text, which `goldens_match` proves equal to the files (so they do not
//! race a regeneration). When the tool is missing the test is skipped, except with `CI=true`,
//! where it fails.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kvmctl::network::{dnsmasq, firewall, libvirt_xml, NetworkDef};

/// The runtime dir used in goldens: `<run>/networks/<name>` for root.
const RUN_ROOT: &str = "/run/kvmctl/networks";
const OUTPUTS: [&str; 5] = ["dumpxml.xml", "dnsmasq.conf", "hostsfile", "addnhosts", "nft.rules"];
const REQUIRED_CASES: [&str; 10] = [
    "nat-v4-dhcp",
    "nat-with-dev-and-nat-range",
    "routed-v4-v6",
    "isolated-v4-v6-dhcp",
    "isolated-no-dhcp",
    "open-with-ip",
    "bridge-mode",
    "dns-full",
    "static-hosts",
    "tftp-bootp",
];

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/network")
}

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(golden_root())
        .expect("tests/golden/network exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("network.xml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn case_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn definition(dir: &Path) -> NetworkDef {
    let xml = std::fs::read_to_string(dir.join("network.xml")).unwrap();
    let mut def = libvirt_xml::parse(&xml).unwrap_or_else(|e| panic!("{}: {e}", case_name(dir)));
    def.complete(&HashSet::from(["virbr0".to_string()]));
    def.validate().unwrap_or_else(|e| panic!("{}: {e}", case_name(dir)));
    def
}

/// Every output file of a case, by file name.
fn render(dir: &Path) -> BTreeMap<&'static str, String> {
    let def = definition(dir);
    let mut out = BTreeMap::from([("dumpxml.xml", libvirt_xml::to_xml(&def))]);
    if let Some(files) = dnsmasq::render(&def, &Path::new(RUN_ROOT).join(&def.name)) {
        out.insert("dnsmasq.conf", files.conf);
        out.insert("hostsfile", files.hostsfile);
        out.insert("addnhosts", files.addnhosts);
    }
    if let Some(rules) = firewall::render(&def) {
        out.insert("nft.rules", rules);
    }
    out
}

fn regenerating() -> bool {
    std::env::var("KVMCTL_REGEN_GOLDEN").is_ok_and(|v| v == "1")
}

#[test]
fn required_cases_exist() {
    let names: Vec<String> = cases().iter().map(|d| case_name(d)).collect();
    for required in REQUIRED_CASES {
        assert!(names.iter().any(|n| n == required), "missing golden case {required}");
    }
}

#[test]
fn goldens_match() {
    let mut failures = Vec::new();
    for dir in cases() {
        let rendered = render(&dir);
        for name in OUTPUTS {
            let path = dir.join(name);
            let want = rendered.get(name);
            if regenerating() {
                match want {
                    Some(text) => std::fs::write(&path, text).unwrap(),
                    None if path.exists() => std::fs::remove_file(&path).unwrap(),
                    None => {}
                }
                continue;
            }
            let have = std::fs::read_to_string(&path).ok();
            if have.as_ref() != want {
                failures.push(format!("{}/{name}: golden differs (KVMCTL_REGEN_GOLDEN=1 to rewrite)", case_name(&dir)));
                if let (Some(h), Some(w)) = (&have, want) {
                    eprintln!("--- {}/{name} golden\n{h}\n+++ rendered\n{w}", case_name(&dir));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dumpxml_goldens_parse_back_to_the_same_definition() {
    for dir in cases() {
        let def = definition(&dir);
        let mut back = libvirt_xml::parse(&render(&dir)["dumpxml.xml"]).unwrap();
        back.autostart = def.autostart;
        assert_eq!(back, def, "{}", case_name(&dir));
    }
}

#[test]
fn seed_nat_dumpxml_matches_what_virsh_printed() {
    let virsh = "<network>\n  <name>192.168.160.0</name>\n  <uuid>588369df-02d6-45d8-9aec-1e869a1a8737</uuid>\n  \
        <forward mode='nat'>\n    <nat>\n      <port start='1024' end='65535'/>\n    </nat>\n  </forward>\n  \
        <bridge name='br140' stp='on' delay='0'/>\n  <mac address='52:54:00:a9:34:5c'/>\n  <domain name='8.8.8.8'/>\n  \
        <ip address='192.168.160.1' netmask='255.255.255.0'>\n    <dhcp>\n      \
        <range start='192.168.160.2' end='192.168.160.254'/>\n    </dhcp>\n  </ip>\n</network>\n";
    assert_eq!(render(&golden_root().join("nat-v4-dhcp"))["dumpxml.xml"], virsh);
}

/// The external checker, or `None` (skip) when it is missing outside CI.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    let found = dirs.map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is required when CI=true (apt-get install {name})"
        );
        eprintln!("skipping: {name} not installed");
    }
    found
}

fn run(prog: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(prog)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn nft_check_accepts_every_golden_ruleset() {
    let Some(nft) = tool("nft") else { return };
    if !nix::unistd::geteuid().is_root() && std::env::var("CI").as_deref() != Ok("true") {
        eprintln!("skipping: nft -c needs root (CAP_NET_ADMIN)");
        return;
    }
    let mut checked = 0;
    for dir in cases() {
        let def = definition(&dir);
        // `-c`: check only, never applied.
        let (ok, out) = run(&nft, &["-c", "-f", "-"], &firewall::delete_batch(&def.name));
        assert!(ok, "{}: delete batch: {out}", case_name(&dir));
        let Some(rules) = render(&dir).remove("nft.rules") else { continue };
        let (ok, out) = run(&nft, &["-c", "-f", "-"], &rules);
        assert!(ok, "{}/nft.rules rejected by nft -c:\n{out}", case_name(&dir));
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} rulesets checked");
}

#[test]
fn dnsmasq_test_accepts_every_golden_config() {
    let Some(dnsmasq) = tool("dnsmasq") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for dir in cases() {
        let mut files = render(&dir);
        let Some(mut conf) = files.remove("dnsmasq.conf") else { continue };
        // A hostsfile line is a dhcp-host= value: check those too.
        for line in files["hostsfile"].lines() {
            conf.push_str(&format!("dhcp-host={line}\n"));
        }
        let file = tmp.path().join(format!("{}.conf", case_name(&dir)));
        std::fs::write(&file, conf).unwrap();
        let arg = format!("--conf-file={}", file.display());
        let (ok, out) = run(&dnsmasq, &["--test", &arg], "");
        assert!(
            ok && out.contains("syntax check OK"),
            "{}/dnsmasq.conf rejected by dnsmasq --test:\n{out}",
            case_name(&dir)
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} configs checked");
}
