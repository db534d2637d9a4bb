//! The virsh options users reach for, on real VMs, pools and volumes: list filters, start
//! --paused, destroy --graceful, shutdown --mode, undefine --storage/--wipe-storage, dumpxml
//! live/--inactive/--xpath, domifaddr --source/--interface, the dom*stat/info commands, desc,
//! domrename, capabilities; pool-create-as, pool-start --build, pool-dumpxml, pool-edit;
//! vol-create-as --allocation/--print-xml, vol-info --bytes, vol-upload/download
//! --offset/--length, vol-wipe, vol-dumpxml; net-list/pool-list filters.

mod common;

use common::vmhost::{vm_prereqs, VmHost};
use common::*;

fn names(h: &VmHost, args: &[&str]) -> Vec<String> {
    let mut a = vec!["list", "--name"];
    a.extend_from_slice(args);
    h.ok(&a).lines().map(str::to_string).collect()
}

/// `KEY=VALUE` lines of `domstats`.
fn stat(out: &str, key: &str) -> String {
    out.lines().find_map(|l| l.trim().strip_prefix(&format!("{key}="))).unwrap_or_default().to_string()
}

#[test]
fn domain_options_filter_pause_inspect_rename_and_remove() {
    if !vm_prereqs() {
        return;
    }
    let h = VmHost::new("o");
    h.guest_disk("a.qcow2");
    h.guest_disk("b.qcow2");
    let install = |name: &str, extra: &[&str]| {
        let vol = format!("vol=default/{name}.qcow2");
        let mut a = vec!["-q", "install", "--name", name, "--memory", "128", "--disk", &vol, "--import"];
        a.extend_from_slice(extra);
        h.ok(&a);
    };
    install("a", &["--network", "network=default", "--noautoconsole"]);
    install("b", &["--network", "network=default", "--noautoconsole"]);
    h.ok(&["-q", "destroy", "b"]);
    // List filters.
    assert_eq!(names(&h, &[]), ["a"]);
    assert_eq!(names(&h, &["--inactive"]), ["b"]);
    assert_eq!(names(&h, &["--all"]), ["a", "b"]);
    assert_eq!(names(&h, &["--state-running"]), ["a"]);
    assert_eq!(names(&h, &["--state-shutoff"]), ["b"]);
    assert_eq!(names(&h, &["--state-running", "--state-shutoff"]), ["a", "b"]);
    assert!(names(&h, &["--state-paused"]).is_empty());
    assert!(names(&h, &["--all", "--transient"]).is_empty());
    assert_eq!(names(&h, &["--all", "--persistent"]), ["a", "b"]);
    h.ok(&["-q", "autostart", "b"]);
    assert_eq!(names(&h, &["--all", "--autostart"]), ["b"]);
    assert_eq!(names(&h, &["--all", "--no-autostart"]), ["a"]);
    assert_eq!(names(&h, &["--all", "--autostart", "--no-autostart"]), ["a", "b"]);
    // Titles and descriptions; control characters are refused.
    h.ok(&["-q", "desc", "a", "--title", "web server"]);
    h.ok(&["-q", "desc", "a", "two\nlines"]);
    assert_eq!(h.ok(&["desc", "a", "--title"]).trim(), "web server");
    assert_eq!(h.ok(&["desc", "a"]), "two\nlines\n");
    let t = h.ok(&["list", "--all", "--title"]);
    assert!(t.lines().next().unwrap().ends_with("Title") && t.contains("web server"), "{t}");
    assert!(h.fails(1, &["desc", "a", "--title", "bad\x1b[2J"]).contains("title must be one line of printable text"));
    assert!(h.ok(&["dumpxml", "a", "--inactive"]).contains("<title>web server</title>"));

    let log = h.wait_console("a", "KVMCTL-GUEST-READY", 1, 300);
    assert!(log.contains("eth0=192.168.122."), "{log}");
    // dumpxml says what runs: the domain id, the tap, the accelerator and the CPU qemu got.
    let info = h.ok(&["dominfo", "a"]);
    let tcg = info.lines().any(|l| l.starts_with("Accelerator:") && l.ends_with("tcg"));
    let live = h.ok(&["dumpxml", "a"]);
    let id = h.ok(&["domid", "a"]).trim().to_string();
    assert!(live.starts_with(&format!("<domain type='{}' id='{id}'>", if tcg { "qemu" } else { "kvm" })), "{live}");
    assert!(live.contains(if tcg { "<cpu mode='maximum'/>" } else { "<cpu mode='host-passthrough'/>" }), "{live}");
    let tap = h.ok(&["dumpxml", "a", "--xpath", "string(//interface/target/@dev)"]).trim().to_string();
    assert!(tap.starts_with("vnet") && h.ok(&["domiflist", "a"]).contains(&tap), "{tap}");
    let inactive = h.ok(&["dumpxml", "a", "--inactive"]);
    assert!(!inactive.contains(" id=") && !inactive.contains("<target dev='vnet"), "{inactive}");
    assert_eq!(h.ok(&["dumpxml", "a", "--xpath", "count(//disk)"]).trim(), "1");
    let src = h.ok(&["dumpxml", "a", "--xpath", "//disk/source/@file"]);
    assert_eq!(src.trim(), format!("file=\"{}\"", h.k.images().join("a.qcow2").display()));
    let wrapped = h.ok(&["dumpxml", "a", "--xpath", "//interface/mac", "--wrap"]);
    assert!(wrapped.starts_with("<nodes>\n<mac address=") && wrapped.ends_with("</nodes>\n"), "{wrapped}");
    assert!(h.fails(1, &["dumpxml", "a", "--xpath", "//disk[last()]"]).contains("is not understood"));
    assert!(h.fails(2, &["dumpxml", "a", "--wrap"]).contains("--xpath"));

    // domifaddr: leases, the neighbour table once the guest has talked to the host, filters.
    let mac = h.ok(&["dumpxml", "a", "--xpath", "string(//interface/mac/@address)"]).trim().to_string();
    let lease = h.ok(&["domifaddr", "a", "--source", "lease"]);
    assert!(lease.contains(&mac) && lease.contains("192.168.122."), "{lease}");
    h.guest_ok("a", "ping -c 1 -W 5 192.168.122.1 >/dev/null", 60);
    let arp = h.ok(&["domifaddr", "a", "--source", "arp"]);
    let addr = log.lines().rev().find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("eth0="))).unwrap();
    let ip = addr.split('/').next().unwrap();
    assert!(arp.contains(&format!("{ip}/32")) && arp.contains(&tap), "{arp}");
    assert_eq!(h.ok(&["domifaddr", "a", "--interface", &tap]), lease);
    assert_eq!(h.ok(&["domifaddr", "a", "--interface", &mac]), lease);
    assert!(h.fails(1, &["domifaddr", "a", "--interface", "eth9"]).contains("has no interface 'eth9'"));
    assert!(h.fails(1, &["domifaddr", "a", "--source", "agent"]).contains("qemu-guest-agent"));
    assert!(h.fails(2, &["domifaddr", "a", "--source", "dns"]).contains("--source"));

    // Disks and memory.
    let details = h.ok(&["domblklist", "a", "--details"]);
    assert!(details.contains("Type") && details.contains("file   disk     vda"), "{details}");
    let bi = h.json(&["domblkinfo", "a", "vda"]);
    assert_eq!(bi[0]["capacity"], 64 << 20, "{bi}");
    assert!(h.ok(&["domblkinfo", "a", "--all", "--human"]).contains("64.00 MiB"));
    assert!(h.fails(1, &["domblkinfo", "a", "vdz"]).contains("has no disk 'vdz'"));
    let bs = h.json(&["domblkstat", "a", "vda"]);
    assert!(bs["rd_bytes"].as_u64().unwrap() > 0 && bs["rd_req"].as_u64().unwrap() > 0, "{bs}");
    assert!(h.ok(&["domblkstat", "a", "--human"]).contains("number of bytes read:"));
    let mem = h.ok(&["dommemstat", "a"]);
    assert!(mem.contains(&format!("actual {}", 128 * 1024)), "{mem}");
    let rss: u64 = mem.lines().find_map(|l| l.strip_prefix("rss ")).unwrap().parse().unwrap();
    assert!(rss > 0, "{mem}");
    let st = h.ok(&["domstats", "a"]);
    assert_eq!(stat(&st, "state.state"), "running");
    assert_eq!(stat(&st, "net.0.name"), tap);
    assert!(stat(&st, "net.0.rx.bytes").parse::<u64>().unwrap() > 0, "{st}");
    assert!(stat(&st, "block.0.rd.bytes").parse::<u64>().unwrap() > 0, "{st}");
    assert!(stat(&st, "cpu.time").parse::<u64>().unwrap() > 0, "{st}");
    let only = h.ok(&["domstats", "b", "--state"]);
    assert_eq!(only.trim(), "Domain: 'b'\n  state.state=shut off\n  state.reason=destroyed");
    assert!(h.fails(1, &["domblkstat", "b"]).contains("is not running"));

    // Power: --mode, start --paused, destroy --graceful.
    assert!(h.fails(1, &["shutdown", "a", "--mode", "agent"]).contains("qemu-guest-agent"));
    assert!(h.fails(1, &["reboot", "a", "--mode", "initctl"]).contains("--mode acpi"));
    h.ok(&["-q", "start", "b", "--paused"]);
    assert_eq!(h.ok(&["domstate", "b", "--reason"]).trim(), "paused (start paused)");
    assert_eq!(names(&h, &["--state-paused"]), ["b"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(h.console("b").is_empty(), "a paused guest prints nothing: {}", h.console("b"));
    h.ok(&["-q", "resume", "b"]);
    h.wait_console("b", "KVMCTL-GUEST-READY", 1, 300);
    h.ok(&["-q", "destroy", "b", "--graceful"]);
    assert_eq!(h.ok(&["domstate", "b", "--reason"]).trim(), "shut off (destroyed)");

    // Rename: only shut off, never onto an existing name.
    assert!(h.fails(1, &["domrename", "a", "c"]).contains("it is running"));
    assert!(h.fails(1, &["domrename", "b", "a"]).contains("a domain named 'a' exists"));
    h.ok(&["-q", "domrename", "b", "c"]);
    assert_eq!(names(&h, &["--all"]), ["a", "c"]);
    // The event journal tells of the paused start and the rename.
    let journal = std::fs::read_to_string(h.k.root().join("run/events.ndjson")).unwrap();
    let events: Vec<serde_json::Value> = journal.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |name: &str, event: &str, detail: &str| {
        events.iter().any(|e| e["name"] == name && e["event"] == event && e["detail"] == detail)
    };
    assert!(has("b", "paused", "start paused"), "{journal}");
    assert!(has("b", "undefined", "renamed to c") && has("c", "defined", "renamed from b"), "{journal}");
    assert_eq!(h.ok(&["domblklist", "c"]).matches("b.qcow2").count(), 1, "disks keep their paths");

    // undefine --storage: an unknown disk removes nothing; --wipe-storage zeroes first.
    let bdisk = h.k.images().join("b.qcow2");
    assert!(h.fails(1, &["undefine", "c", "--storage", "vda,vdq"]).contains("has no disk 'vdq'"));
    assert!(bdisk.exists() && names(&h, &["--all"]).contains(&"c".to_string()));
    assert!(h.fails(1, &["undefine", "c", "--wipe-storage"]).contains("--wipe-storage"));
    h.ok(&["-q", "undefine", "c", "--storage", "vda", "--wipe-storage", "--snapshots-metadata"]);
    assert!(!bdisk.exists(), "its disk went with it");
    assert!(h.k.images().join("tiny.qcow2").exists(), "its backing file stays");
    h.ok(&["-q", "destroy", "a"]);
}

#[test]
fn storage_options_xml_ranges_wipe_and_transient_pools() {
    if !require("qemu-img", have_program("qemu-img")) {
        return;
    }
    let k = Kvm::new();
    let dir = k.dir.path();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let img = k.images();
    // --allocation: raw only, at most the capacity, allocated at once.
    k.ok(&["-q", "vol-create-as", "default", "r.img", "8M", "--allocation", "4M"]);
    assert!(allocated_bytes(&img.join("r.img")) >= 4 << 20);
    let info = k.ok(&["vol-info", "r.img", "--pool", "default", "--bytes"]);
    assert!(info.contains("Capacity:       8388608 bytes") && info.contains("Allocation:     "), "{info}");
    assert!(k
        .fails(1, &["vol-create-as", "default", "x.img", "1M", "--allocation", "2M"])
        .contains("more than its capacity"));
    let e = k.fails(1, &["vol-create-as", "default", "x.qcow2", "1M", "--format", "qcow2", "--allocation", "1M"]);
    assert!(e.contains("--allocation applies to raw volumes"), "{e}");
    // --print-xml creates nothing.
    let before = tree(&img);
    let xml = k.ok(&[
        "vol-create-as",
        "default",
        "o.qcow2",
        "1G",
        "--format",
        "qcow2",
        "--backing-vol",
        "r.img",
        "--print-xml",
    ]);
    assert!(xml.contains("<name>o.qcow2</name>") && xml.contains("<capacity unit='bytes'>1073741824</capacity>"));
    assert!(xml.contains(&format!(
        "<backingStore>\n    <path>{}</path>\n    <format type='raw'/>",
        img.join("r.img").display()
    )));
    assert_eq!(tree(&img), before, "--print-xml leaves nothing");
    // vol-dumpxml of an overlay names its backing file.
    k.ok(&["-q", "vol-create-as", "default", "base.qcow2", "16M", "--format", "qcow2"]);
    k.ok(&["-q", "vol-clone", "base.qcow2", "top.qcow2", "--pool", "default", "--linked"]);
    let x = k.ok(&["vol-dumpxml", "top.qcow2", "--pool", "default"]);
    assert!(x.contains("<format type='qcow2'/>") && x.contains(&img.join("base.qcow2").display().to_string()), "{x}");
    // Byte ranges.
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(p("up.bin"), &data).unwrap();
    k.ok(&["-q", "vol-upload", "r.img", &p("up.bin"), "--pool", "default", "--offset", "65536", "--length", "3000"]);
    k.ok(&[
        "-q",
        "vol-download",
        "r.img",
        &p("down.bin"),
        "--pool",
        "default",
        "--offset",
        "65536",
        "--length",
        "4000",
    ]);
    let got = std::fs::read(p("down.bin")).unwrap();
    assert_eq!(&got[..3000], &data[..3000]);
    assert!(got[3000..].iter().all(|b| *b == 0));
    assert_eq!(std::fs::metadata(img.join("r.img")).unwrap().len(), 8 << 20, "in place, same size");
    let e =
        k.fails(1, &["vol-upload", "r.img", &p("up.bin"), "--pool", "default", "--offset", "0", "--length", "9000"]);
    assert!(e.contains("more than the 5000 bytes"), "{e}");
    let e = k.fails(1, &["vol-download", "r.img", &p("d2.bin"), "--pool", "default", "--offset", "99999999"]);
    assert!(e.contains("past the end") && !std::path::Path::new(&p("d2.bin")).exists(), "{e}");
    // vol-wipe: zeros; a qcow2 stays a valid empty qcow2; nothing under an overlay.
    k.ok(&["-q", "vol-wipe", "r.img", "--pool", "default"]);
    assert!(std::fs::read(img.join("r.img")).unwrap().iter().all(|b| *b == 0));
    qemu_write(&img.join("top.qcow2"), "qcow2", 0xab, 0, 1 << 20);
    k.ok(&["-q", "vol-wipe", "top.qcow2", "--pool", "default"]);
    qemu_img_check(&img.join("top.qcow2"));
    let i = qemu_img_info(&img.join("top.qcow2"));
    assert_eq!(i["virtual-size"], 16 << 20, "{i}");
    assert_eq!(i["full-backing-filename"], img.join("base.qcow2").to_str().unwrap(), "{i}");
    let e = k.fails(1, &["vol-wipe", "base.qcow2", "--pool", "default"]);
    assert!(e.contains("refusing to wipe it"), "{e}");
    assert!(k.fails(1, &["vol-wipe", "r.img", "--pool", "default", "--algorithm", "dod"]).contains("zero"));

    // Transient pools: created started, listed as not persistent, gone at pool-destroy.
    assert!(k.fails(1, &["pool-create-as", "t1", "dir", "--target", &p("t1")]).contains("pool-build"));
    assert!(!k.ok(&["pool-list", "--all", "--name"]).contains("t1"), "a failed create leaves no pool");
    k.ok(&["-q", "pool-create-as", "t1", "dir", "--target", &p("t1"), "--build"]);
    assert_eq!(k.ok(&["pool-list", "--transient", "--name"]).trim(), "t1");
    assert_eq!(k.ok(&["pool-list", "--persistent", "--name"]).trim(), "default");
    let uuid = k.json(&["pool-info", "t1"])["uuid"].as_str().unwrap().to_string();
    assert!(k.ok(&["pool-list", "--transient", "--uuid"]).contains(&uuid));
    let px = k.ok(&["pool-dumpxml", "t1"]);
    assert!(px.starts_with("<pool type='dir'>") && px.contains(&format!("<path>{}</path>", p("t1"))), "{px}");
    assert!(px.contains(&format!("<uuid>{uuid}</uuid>")));
    assert_eq!(k.ok(&["pool-dumpxml", "--pool", "t1"]), px);
    k.ok(&["-q", "pool-destroy", "t1"]);
    assert!(!k.ok(&["pool-list", "--all", "--name"]).contains("t1"));
    assert!(k.fails(1, &["pool-list", "--type", "logical"]).contains("'logical'"));
    // pool-start --build; pool-edit keeps the name and moves a target only while inactive.
    k.ok(&["-q", "pool-define-as", "p2", "dir", "--target", &p("p2")]);
    k.ok(&["-q", "pool-start", "p2", "--build"]);
    assert!(std::path::Path::new(&p("p2")).is_dir());
    let editor = dir.join("ed.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i \"$EDSCRIPT\" \"$1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let edit = |script: &str| {
        let mut c = k.cmd();
        c.args(["pool-edit", "p2"]).env("EDITOR", &editor).env("EDSCRIPT", script);
        bounded_output(&mut c)
    };
    assert!(edit("s/autostart = false/autostart = true/").status.success());
    assert!(k.ok(&["pool-list", "--autostart", "--name"]).contains("p2"));
    let o = edit("s/name = \"p2\"/name = \"p9\"/");
    assert!(String::from_utf8_lossy(&o.stderr).contains("edit cannot rename a pool"), "{o:?}");
    let o = edit(&format!("s|{}|{}|", p("p2"), p("p3")));
    assert!(String::from_utf8_lossy(&o.stderr).contains("only while it is inactive"), "{o:?}");
    k.ok(&["-q", "pool-destroy", "p2"]);
    assert!(edit(&format!("s|{}|{}|", p("p2"), p("p3"))).status.success());
    assert_eq!(k.json(&["pool-info", "p2"])["target"], p("p3"));
    // net-list filters and --uuid.
    let nuuid = k.json(&["net-info", "default"])["uuid"].as_str().unwrap().to_string();
    assert_eq!(k.ok(&["net-list", "--all", "--uuid"]).trim(), nuuid);
    assert_eq!(k.ok(&["net-list", "--all", "--persistent", "--name"]).trim(), "default");
    assert_eq!(k.ok(&["net-list", "--all", "--transient", "--name"]).trim(), "");
}

#[test]
fn capabilities_say_what_this_host_runs() {
    if !require("qemu-system-x86_64", have_program("qemu-system-x86_64")) {
        return;
    }
    let k = Kvm::new();
    let c = k.json(&["capabilities"]);
    let accel = c["accelerator"].as_str().unwrap();
    assert!(accel == "kvm" || accel == "tcg", "{c}");
    assert_eq!(c["kvm_usable"], accel == "kvm");
    assert_eq!(c["default_cpu"], if accel == "kvm" { "host" } else { "max" });
    assert!(c["machines"].as_array().unwrap().iter().any(|m| m["alias"] == "pc"), "{c}");
    assert!(c["cpu_models"].as_array().unwrap().iter().any(|m| m == "max"), "{c}");
    assert!(c["qemu"].as_str().unwrap().starts_with("qemu-system-x86_64 "));
    let text = k.ok(&["capabilities"]);
    assert!(text.contains("Machine types:") && text.contains("Accelerator:"), "{text}");
}
