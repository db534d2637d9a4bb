//! Issue 10, "Definitions and limits", through the real CLI: big inputs stay linear and bounded
//! (32,000 static DHCP hosts define and are all kept; 100,000 nested elements, 100,000
//! attributes and files over 16 MiB are refused with the file, the limit and what exceeded it),
//! a qcow2 larger than qemu opens is refused at create and resize, sizes past 2^64 bytes are
//! "too large", and a refused command leaves no file under the root. Creates no network object
//! (`net-define` writes a definition only).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;

/// The largest qcow2 qemu opens at 64 KiB clusters: 4 Mi L1 entries x 8192 L2 entries x 64 KiB.
const QCOW2_MAX: u64 = 2 << 50;

/// Errors that must never reach the user.
fn no_rust_conversion_message(e: &str) {
    for rust in ["number too large to fit in target type", "out of range integral type conversion"] {
        assert!(!e.contains(rust), "Rust's conversion message: {e}");
    }
}

fn write(k: &Kvm, name: &str, text: &str) -> PathBuf {
    let f = k.dir.path().join(name);
    std::fs::write(&f, text).unwrap();
    f
}

/// A first command creates the root (and the default network and pool).
fn initialized() -> Kvm {
    let k = Kvm::new();
    k.ok(&["net-list", "--all"]);
    k
}

/// Host `i` of the big network: a MAC, a name and an IP of 10.0.0.0/8 (outside its DHCP range).
fn host(i: u32) -> (String, String, String) {
    let a = i + 2;
    let [b0, b1, b2, b3] = a.to_be_bytes();
    (format!("52:54:{b0:02x}:{b1:02x}:{b2:02x}:{b3:02x}"), format!("h{i}"), format!("10.{b1}.{b2}.{b3}"))
}

#[test]
fn net_define_of_32000_static_hosts_keeps_every_host() {
    const N: u32 = 32_000;
    let k = initialized();
    let mut xml = String::from(
        "<network>\n  <name>big</name>\n  <forward mode='nat'/>\n  <bridge name='kvbig' stp='off' delay='0'/>\n  \
         <ip address='10.0.0.1' netmask='255.0.0.0'>\n    <dhcp>\n      <range start='10.200.0.2' end='10.200.0.254'/>\n",
    );
    for i in 0..N {
        let (mac, name, ip) = host(i);
        xml += &format!("      <host mac='{mac}' name='{name}' ip='{ip}'/>\n");
    }
    xml += "    </dhcp>\n  </ip>\n</network>\n";
    let f = write(&k, "big.xml", &xml);
    // A generous watchdog only (the bounded command limit); this took 8.5 s here before the
    // fix (lines were counted from the document start for every element), 0.3 s after.
    k.ok(&["net-define", f.to_str().unwrap()]);
    let want: BTreeSet<(String, String, String)> = (0..N).map(host).collect();
    let dumped: BTreeSet<(String, String, String)> = k
        .ok(&["net-dumpxml", "big"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("<host mac='"))
        .map(|l| {
            let (mac, rest) = l.split_once("' name='").unwrap();
            let (name, rest) = rest.split_once("' ip='").unwrap();
            (mac.to_string(), name.to_string(), rest.trim_end_matches("'/>").to_string())
        })
        .collect();
    assert_eq!(dumped.len(), N as usize);
    assert!(dumped == want, "net-dumpxml lost or changed hosts");
    let stored: toml::Table = std::fs::read_to_string(k.root().join("networks/big.toml")).unwrap().parse().unwrap();
    let hosts = stored["ip"][0]["dhcp"]["host"].as_array().unwrap();
    assert_eq!(hosts.len(), N as usize, "the stored definition keeps every host");
}

#[test]
fn deep_wide_and_huge_documents_are_refused_naming_file_limit_and_culprit() {
    let k = initialized();
    let deep =
        |top: &str, name: &str| format!("{top}<name>{name}</name>{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
    let net_deep = deep("<network>", "deep") + "</network>";
    let dom_deep = deep("<domain type='kvm'>", "deep") + "</domain>";
    let attrs: String = (0..100_000).map(|i| format!(" a{i}='x'")).collect();
    let net_wide = format!("<network>\n<name{attrs}>wide</name></network>");
    let pad = " ".repeat(17 << 20);
    let net_huge = format!("<network><name>huge</name>{pad}</network>");
    let dom_huge = format!("name = \"huge\"\nmemory_mib = 64\nvcpus = 1\n#{pad}\n");
    let depth = "elements nest deeper than 64 levels: <a> at line 1 is at depth 65";
    let size = |f: &PathBuf| {
        let len = std::fs::metadata(f).unwrap().len();
        format!(
            "error: {} is too large ({len} bytes): a definition may have at most 16777216 bytes (16 MiB)\n",
            f.display()
        )
    };
    let before = tree(&k.root());
    // (command, file name, its text, the whole error for the file's path)
    type Expect = Box<dyn Fn(&PathBuf) -> String>;
    let cases: Vec<(&str, &str, String, Expect)> = vec![
        ("net-define", "deep.xml", net_deep, Box::new(move |f| format!("error: {}: {depth}\n", f.display()))),
        (
            "define",
            "deep.xml",
            dom_deep,
            Box::new(move |f| format!("error: {}: not a valid libvirt domain definition: {depth}\n", f.display())),
        ),
        (
            "net-define",
            "wide.xml",
            net_wide,
            Box::new(|f| format!("error: {}: <name> at line 2 has more than 256 attributes\n", f.display())),
        ),
        ("net-define", "huge.xml", net_huge.clone(), Box::new(size)),
        ("net-create", "huge.xml", net_huge, Box::new(size)),
        ("define", "huge.toml", dom_huge, Box::new(size)),
    ];
    for (cmd, file, text, want) in cases {
        let f = write(&k, file, &text);
        let e = k.fails(1, &[cmd, f.to_str().unwrap()]);
        assert_eq!(e, want(&f), "{cmd} {file}");
        assert_eq!(tree(&k.root()), before, "{cmd} {file} left something behind");
    }
    // What is just within the limits is read: 64 levels, 256 attributes (refused for what they
    // are, unknown elements and attributes, not for their number).
    let at_limit = format!("<network><name>x</name>{}{}</network>", "<a>".repeat(63), "</a>".repeat(63));
    let e = k.fails(1, &["net-define", write(&k, "64.xml", &at_limit).to_str().unwrap()]);
    assert!(e.contains("<network>: unknown element <a> (line 1)"), "{e}");
}

#[test]
fn a_qcow2_larger_than_qemu_opens_is_refused_at_create_and_resize() {
    if !require("qemu-img", have_program("qemu-img")) {
        return;
    }
    let k = initialized();
    // The limit is qemu's own: qemu-img creates (and opens) 2 PiB and refuses one byte more.
    let q = k.dir.path().join("q.qcow2");
    let q = q.to_str().unwrap();
    sh("qemu-img", &["create", "-q", "-f", "qcow2", q, &QCOW2_MAX.to_string()]);
    let o = bounded_output(std::process::Command::new("qemu-img").args([
        "create",
        "-q",
        "-f",
        "qcow2",
        q,
        &(QCOW2_MAX + 1).to_string(),
    ]));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("too large"), "{o:?}");
    let over = format!("{}b", QCOW2_MAX + 1);
    let before = tree(&k.root());
    let e = k.fails(1, &["vol-create-as", "default", "big.qcow2", &over, "--format", "qcow2"]);
    assert_eq!(
        e,
        "error: volume 'big.qcow2' in pool 'default': capacity 2.00 PiB (2251799813685249 bytes) is too large: \
         qemu opens a qcow2 image of at most 2.00 PiB (2251799813685248 bytes) with 64 KiB clusters\n"
    );
    let e = k.fails(1, &["vol-create-as", "default", "big.qcow2", "3P", "--format", "qcow2"]);
    assert!(e.contains("capacity 3.00 PiB (3377699720527872 bytes) is too large"), "{e}");
    assert_eq!(tree(&k.root()), before, "a refused create leaves nothing");
    // Exactly the maximum is created, and qemu opens it.
    k.ok(&["vol-create-as", "default", "max.qcow2", &format!("{QCOW2_MAX}b"), "--format", "qcow2"]);
    let max = k.images().join("max.qcow2");
    assert_eq!(qemu_img_info(&max)["virtual-size"], QCOW2_MAX);
    qemu_img_check(&max);
    // Growing past it is refused and changes nothing; growing to it works.
    k.ok(&["vol-create-as", "default", "small.qcow2", "1G", "--format", "qcow2"]);
    let small = k.images().join("small.qcow2");
    let e = k.fails(1, &["vol-resize", "small.qcow2", &over, "--pool", "default"]);
    assert!(
        e.starts_with(&format!(
            "error: volume {}: capacity 2.00 PiB (2251799813685249 bytes) is too large",
            small.display()
        )),
        "{e}"
    );
    let e = k.fails(1, &["vol-resize", "small.qcow2", "--delta", &format!("{}b", QCOW2_MAX), "--pool", "default"]);
    assert!(e.contains("is too large: qemu opens a qcow2 image of at most 2.00 PiB"), "{e}");
    assert_eq!(qemu_img_info(&small)["virtual-size"], 1u64 << 30);
    k.ok(&["vol-resize", "small.qcow2", &format!("{QCOW2_MAX}b"), "--pool", "default"]);
    assert_eq!(qemu_img_info(&small)["virtual-size"], QCOW2_MAX);
}

#[test]
fn install_refuses_a_disk_larger_than_qemu_opens_even_in_a_dry_run() {
    if !require("qemu-system-x86_64, qemu-img", have_program("qemu-system-x86_64") && have_program("qemu-img")) {
        return;
    }
    let k = initialized();
    // 2097152 GiB is 2 PiB: one GiB more is refused (the free-space check is waived: the
    // host has no 2 PiB free, and qemu's limit is what is tested).
    let base =
        ["install", "--name", "x", "--memory", "64", "--import", "--network", "none", "--check", "disk_size=off"];
    k.ok(&[&base[..], &["--disk", "size=2097152", "--dry-run"]].concat());
    let before = tree(&k.root());
    let path = k.dir.path().join("p.qcow2");
    let by_path = format!("path={},size=2097153", path.display());
    for (disk, dry) in [("size=2097153", false), ("size=2097153", true), (by_path.as_str(), false)] {
        let mut a = base.to_vec();
        a.extend(["--disk", disk]);
        if dry {
            a.push("--dry-run");
        }
        let e = k.fails(1, &a);
        let what = if disk.starts_with("path=") {
            format!("--disk path={}", path.display())
        } else {
            "--disk pool=default,size=...: volume 'x.qcow2' in pool 'default'".into()
        };
        assert_eq!(
            e,
            format!(
                "error: domain 'x': {what}: capacity 2.00 PiB (2251800887427072 bytes) is too large: \
                 qemu opens a qcow2 image of at most 2.00 PiB (2251799813685248 bytes) with 64 KiB clusters\n"
            ),
            "{disk}"
        );
        assert_eq!(tree(&k.root()), before, "{disk}");
        assert!(!path.exists());
    }
}

#[test]
fn sizes_past_2_to_the_64_say_too_large_never_rusts_conversion_message() {
    let k = initialized();
    k.ok(&["vol-create-as", "default", "one.img", "1G", "--format", "raw"]);
    let one = k.images().join("one.img");
    let volume_too_large = |name: &str| {
        format!("volume '{name}' in pool 'default': capacity 16.00 EiB (18446744073709551615 bytes) is too large")
    };
    // (arguments, exit code, what the error says)
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (vec!["vol-create-as", "default", "q", "18446744073709551615b", "--format", "qcow2"], 1, volume_too_large("q")),
        (
            vec!["vol-create-as", "default", "r", "18446744073709551615b", "--format", "raw"],
            1,
            volume_too_large("r") + ": a file holds at most 8.00 EiB (9223372036854775807 bytes)",
        ),
        (
            vec!["vol-create-as", "default", "r", "18446744073709551616b"],
            2,
            "size '18446744073709551616b' is too large".into(),
        ),
        (vec!["vol-create-as", "default", "r", "99999999999T"], 2, "size '99999999999T' is too large".into()),
        (vec!["vol-create-as", "default", "r", "16E"], 2, "size '16E' is too large".into()),
        (
            vec!["vol-create-as", "default", "r", "1000000000000000000000000000000"],
            2,
            "size '1000000000000000000000000000000' is too large".into(),
        ),
        (
            vec!["vol-create-as", "default", "r", "999999999999999999999999999999.5E"],
            2,
            "size '999999999999999999999999999999.5E' is too large".into(),
        ),
        (
            vec!["vol-resize", "one.img", "18446744073709551615b", "--pool", "default"],
            1,
            format!("volume {}: capacity 16.00 EiB (18446744073709551615 bytes) is too large", one.display()),
        ),
        (
            vec!["vol-resize", "one.img", "--delta", "18446744073709551615b", "--pool", "default"],
            1,
            format!(
                "volume {}: capacity 1073741824 + 18446744073709551615 bytes is too large: more than 2^64 bytes",
                one.display()
            ),
        ),
        (
            vec!["install", "--name", "x", "--memory", "64", "--disk", "size=1e30", "--import", "--dry-run"],
            2,
            "--disk: size='1e30' is not valid: too large (a size must be less than 16 EiB = 17179869184 GiB)".into(),
        ),
        (
            vec!["install", "--name", "x", "--memory", "64", "--disk", "size=17179869184", "--import", "--dry-run"],
            2,
            "--disk: size='17179869184' is not valid: too large".into(),
        ),
        (
            vec!["install", "--name", "x", "--memory", "184467440737095516150", "--disk", "size=1", "--import"],
            2,
            "memory='184467440737095516150' is not valid: is too large (at most 18446744073709551615)".into(),
        ),
        (
            vec!["install", "--name", "x", "--memory", "64", "--vcpus", "4294967296", "--disk", "size=1", "--import"],
            2,
            "vcpus='4294967296' is not valid: is too large (at most 4294967295)".into(),
        ),
        (
            vec!["shutdown", "x", "--timeout", "18446744073709551616"],
            2,
            "'18446744073709551616' is too large (at most 18446744073709551615)".into(),
        ),
    ];
    for (args, code, want) in cases {
        let e = k.fails(code, &args);
        assert!(e.contains(&want), "{args:?}: {e}");
        no_rust_conversion_message(&e);
    }
    assert_eq!(std::fs::metadata(&one).unwrap().len(), 1 << 30, "the refused resizes changed nothing");
    assert_eq!(tree(&k.images()), ["one.img"], "no volume created");
}

/// Before the fix, `start nosuch` left `locks/domain.nosuch`, `define` of a refused definition
/// `locks/domain.<name>`, `clone nosuch copy` two lock files, and so on.
#[test]
fn refused_commands_leave_no_file_under_the_root() {
    if !require("qemu-system-x86_64", have_program("qemu-system-x86_64")) {
        return;
    }
    let k = initialized();
    // Objects that exist (their lock files may stay), and qemu's lists cached.
    k.ok(&["vol-create-as", "default", "a.qcow2", "1M", "--format", "qcow2"]);
    let ok = write(&k, "ok.toml", "name = \"ok\"\nmemory_mib = 64\nvcpus = 1\n");
    k.ok(&["define", ok.to_str().unwrap()]);
    let net = write(&k, "n1.xml", "<network><name>n1</name><bridge name='kvn1'/></network>");
    k.ok(&["net-define", net.to_str().unwrap()]);
    let before = tree(&k.root());
    assert!(before.contains(&"locks/domain.ok".to_string()), "{before:?}");
    let f = |name: &str, text: &str| write(&k, name, text).to_str().unwrap().to_string();
    let mem0 = f("m0.toml", "name = \"b\"\nmemory_mib = 0\nvcpus = 1\n");
    let mac = f("mac.xml", "<domain type='kvm'><name>c</name><memory>65536</memory><devices><interface type='user'><mac address='01:00:5e:00:00:01'/></interface></devices></domain>");
    let unparsable = f("u.toml", "name = \"d\"\nmemory_mib = \"lots\"\nvcpus = 1\n");
    let bad_mac = f(
        "badmac.toml",
        "name = \"e\"\nmemory_mib = 64\nvcpus = 1\n[[nics]]\ntype = \"user\"\nmac = \"52:54:00:00:00:0g\"\n",
    );
    let bad_net = f("bad.xml", "<network><name>n2</name><bogus/></network>");
    let net_mac = f("netmac.xml", "<network><name>n3</name><mac address='01:00:5e:00:00:01'/></network>");
    let deep =
        f("deep.xml", &format!("<network><name>n4</name>{}{}</network>", "<a>".repeat(1000), "</a>".repeat(1000)));
    let install = |extra: &[&'static str]| {
        let mut a = vec!["install", "--name", "x", "--import"];
        a.extend_from_slice(extra);
        if !a.contains(&"--memory") {
            a.extend(["--memory", "64"]);
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let s = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<(Vec<String>, i32)> = vec![
        (s(&["vol-create-as", "nopool", "v", "1G"]), 1),
        (s(&["vol-create-as", "default", "big", "3P", "--format", "qcow2"]), 1),
        (s(&["vol-create-as", "default", "../x", "1G"]), 1),
        (s(&["vol-resize", "a.qcow2", "3P", "--pool", "default"]), 1),
        (s(&["vol-delete", "nosuch", "--pool", "default"]), 1),
        (s(&["define", &mem0]), 1),
        (s(&["define", &mac]), 1),
        (s(&["define", &unparsable]), 1),
        (s(&["define", &bad_mac]), 1),
        (s(&["define", "/nonexistent/def.toml"]), 1),
        (s(&["net-define", &bad_net]), 1),
        (s(&["net-define", &net_mac]), 1),
        (s(&["net-define", &deep]), 1),
        (install(&["--network", "none", "--disk", "size=1,format=raw,,file=/etc/shadow"]), 2),
        (install(&["--network", "none", "--memory", "0", "--disk", "size=1"]), 1),
        (install(&["--network", "user,mac=ff:ff:ff:ff:ff:ff", "--disk", "size=1"]), 1),
        (install(&["--network", "none", "--disk", "size=3000000"]), 1),
        (install(&["--network", "network=nosuch", "--disk", "size=1"]), 1),
        (s(&["start", "nosuch"]), 1),
        (s(&["destroy", "nosuch"]), 1),
        (s(&["undefine", "nosuch"]), 1),
        (s(&["autostart", "nosuch"]), 1),
        (s(&["edit", "nosuch"]), 1),
        (s(&["clone", "nosuch", "copy"]), 1),
        (s(&["net-start", "nosuch"]), 1),
        (s(&["net-destroy", "nosuch"]), 1),
        (s(&["net-undefine", "nosuch"]), 1),
        (s(&["net-autostart", "nosuch"]), 1),
        (s(&["pool-start", "nosuch"]), 1),
        (s(&["pool-undefine", "nosuch"]), 1),
    ];
    for (args, code) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        k.fails(code, &a);
        let after = tree(&k.root());
        let new: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
        let gone: Vec<&String> = before.iter().filter(|p| !after.contains(p)).collect();
        assert!(new.is_empty() && gone.is_empty(), "{a:?} left {new:?} (and removed {gone:?})");
    }
}
