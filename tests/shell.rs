//! Around the tool: `kvmctl completion bash` loaded into a real `bash -i` completes commands,
//! options and the names of VMs, networks, pools, volumes and images from the store; every
//! man page `kvmctl __man` (make man) writes renders with `man -l`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// What bash offers for `line` (completing its last word) with kvmctl's completion loaded.
fn complete(k: &Kvm, line: &str) -> Vec<String> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kvmctl")).parent().unwrap();
    let words: Vec<&str> = line.split(' ').collect();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source <(kvmctl completion bash)\n\
         COMP_WORDS=({words})\nCOMP_CWORD={cword}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\nCOMP_TYPE=9\n\
         _clap_complete_kvmctl kvmctl '{cur}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-i", "-c", &script])
        .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .env("KVMCTL_ROOT", k.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn bash_completes_commands_options_and_the_names_in_the_store() {
    if !require("bash", have_program("bash")) {
        return;
    }
    let k = Kvm::new();
    k.ok(&["-q", "pool-list"]); // the default pool and network exist
                                // Names as the store has them: a VM, an image, a volume in the default pool.
    std::fs::write(k.root().join("domains/web1.toml"), "").unwrap();
    std::fs::write(k.root().join("domains/web2.toml"), "").unwrap();
    std::fs::write(k.root().join("base-images/debian-12.toml"), "").unwrap();
    std::fs::write(k.images().join("disk1.qcow2"), "").unwrap();
    let got = complete(&k, "kvmctl net-");
    assert!(got.iter().any(|c| c == "net-list") && got.iter().any(|c| c == "net-start"), "{got:?}");
    let got = complete(&k, "kvmctl start we");
    assert_eq!(got, vec!["web1", "web2"], "VM names");
    let got = complete(&k, "kvmctl net-start ");
    assert!(got.iter().any(|c| c == "default"), "network names: {got:?}");
    let got = complete(&k, "kvmctl pool-info ");
    assert!(got.iter().any(|c| c == "default"), "pool names: {got:?}");
    let got = complete(&k, "kvmctl vol-info di");
    assert_eq!(got, vec!["disk1.qcow2"], "volume names");
    let got = complete(&k, "kvmctl image rm de");
    assert_eq!(got, vec!["debian-12"], "image names");
    let got = complete(&k, "kvmctl install --ima");
    assert!(got.iter().any(|c| c == "--image"), "options: {got:?}");
}

#[test]
fn every_man_page_renders() {
    if !require("man (apt: man-db)", have_program("man")) {
        return;
    }
    let k = Kvm::new();
    let dir = k.dir.path().join("man");
    k.ok(&["__man", dir.to_str().unwrap()]);
    let mut pages: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    pages.sort();
    for want in ["kvmctl.1", "kvmctl-install.1", "kvmctl-vol-create-as.1", "kvmctl-image-pull.1", "kvmctl-console.1"] {
        assert!(pages.iter().any(|p| p.ends_with(want)), "{want} missing");
    }
    assert!(pages.len() > 60, "one page per command: {}", pages.len());
    for p in &pages {
        let out = Command::new("man")
            .arg("-l")
            .arg(p)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .unwrap();
        // Without a terminal man still emboldens by overstriking ("N\x08N"): read the letters.
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut text = String::new();
        for c in raw.chars() {
            if c == '\x08' {
                text.pop();
            } else {
                text.push(c);
            }
        }
        assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{}: {text}", p.display());
    }
    let page = std::fs::read_to_string(dir.join("kvmctl-image-pull.1")).unwrap();
    assert!(page.contains("checksum"), "{page}");
}
