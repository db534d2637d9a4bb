//! Pools and volumes through the real binary, every image checked with qemu-img.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn qemu_tools() -> bool {
    require(
        "qemu-img, qemu-io, qemu-nbd (apt: qemu-utils)",
        ["qemu-img", "qemu-io", "qemu-nbd"].iter().all(|p| have_program(p)),
    )
}

#[test]
fn default_pool_exists_active_and_autostarted_without_setup() {
    let k = Kvm::new();
    let out = k.ok(&["pool-list"]);
    assert!(out.contains(" default   active   yes"), "{out}");
    let j = k.json(&["pool-info", "default"]);
    assert_eq!(j["state"], "active");
    assert_eq!(j["autostart"], true);
    assert_eq!(j["target"], k.images().to_str().unwrap());
    assert!(k.images().is_dir());
}

#[test]
fn pool_lifecycle_like_virsh() {
    let k = Kvm::new();
    let target = k.dir.path().join("p1");
    let t = target.to_str().unwrap();
    k.ok(&["pool-define-as", "p1", "dir", "--target", t]);
    assert!(!k.ok(&["pool-list"]).contains("p1"), "inactive pools are hidden without --all");
    assert!(k.ok(&["pool-list", "--all"]).contains(" p1        inactive   no"));
    let e = k.fails(1, &["pool-start", "p1"]);
    assert!(e.contains("pool 'p1'") && e.contains("does not exist") && e.contains("pool-build"), "{e}");
    k.ok(&["pool-build", "p1"]);
    k.ok(&["pool-start", "p1"]);
    assert!(k.fails(1, &["pool-start", "p1"]).contains("already active"));
    k.ok(&["pool-autostart", "p1"]);
    let info = k.ok(&["pool-info", "p1"]);
    assert!(info.contains("State:          running") && info.contains("Autostart:      yes"), "{info}");
    let details = k.ok(&["pool-list", "--details"]);
    assert!(details.contains("Capacity") && details.contains("p1"), "{details}");
    assert!(k.fails(1, &["pool-undefine", "p1"]).contains("pool-destroy"));
    k.ok(&["pool-destroy", "p1"]);
    assert!(k.fails(1, &["vol-list", "p1"]).contains("pool 'p1' is not active"));
    k.ok(&["pool-undefine", "p1"]);
    assert!(target.is_dir(), "undefine keeps the files");
    assert!(k.fails(1, &["pool-info", "p1"]).contains("pool 'p1' not found"));
}

#[test]
fn pool_bad_input_is_refused_and_changes_nothing() {
    let k = Kvm::new();
    let t = k.dir.path().join("x");
    let ts = t.to_str().unwrap();
    assert!(k
        .fails(1, &["pool-define-as", "lv", "logical", "--target", ts])
        .contains("pool type 'logical' is not supported"));
    assert!(k.fails(1, &["pool-define-as", "../evil", "dir", "--target", ts]).contains("pool name '../evil'"));
    assert!(k.fails(1, &["pool-define-as", "a/b", "dir", "--target", ts]).contains("'/'"));
    let e = k.fails(1, &["pool-define-as", "dup", "dir", "--target", k.images().to_str().unwrap()]);
    assert!(e.contains("already the target of pool 'default'"), "{e}");
    k.ok(&["pool-define-as", "p", "dir", "--target", ts]);
    assert!(k.fails(1, &["pool-define-as", "p", "dir", "--target", "/tmp/other"]).contains("pool 'p' already exists"));
    // A target that is a file, not a directory.
    let f = k.dir.path().join("file");
    std::fs::write(&f, b"").unwrap();
    k.ok(&["pool-define-as", "f", "dir", "--target", f.to_str().unwrap()]);
    assert!(k.fails(1, &["pool-start", "f"]).contains("is not a directory"));
    assert!(k.fails(1, &["pool-start", "nope"]).contains("pool 'nope' not found"));
    let list = k.ok(&["pool-list", "--all", "--name"]);
    assert_eq!(list, "default\nf\np\n");
}

#[test]
fn pool_target_that_is_not_writable_is_refused() {
    if !require("root and unshare (mount namespace)", is_root() && have_program("unshare")) {
        return;
    }
    let k = Kvm::new();
    let t = k.dir.path().join("ro");
    std::fs::create_dir(&t).unwrap();
    k.ok(&["pool-define-as", "ro", "dir", "--target", t.to_str().unwrap()]);
    // A read-only tmpfs over the target, in a private mount namespace (the host sees nothing).
    let bin = env!("CARGO_BIN_EXE_kvmctl");
    let script = format!(
        "mount -t tmpfs -o ro none {t} && exec {bin} --root {r} pool-start ro",
        t = t.display(),
        r = k.root().display()
    );
    let o = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).bounded();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("pool 'ro'") && e.contains("is not writable"), "{e}");
}

#[test]
fn vol_create_as_writes_images_qemu_accepts() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    for (name, cap, bytes) in [
        ("a.qcow2", "10G", 10u64 << 30),
        ("b.qcow2", "1GB", 1_000_000_000),
        ("c.qcow2", "1T", 1 << 40),
        ("d.qcow2", "100M", 100 << 20),
    ] {
        k.ok(&["vol-create-as", "default", name, cap, "--format", "qcow2"]);
        let p = k.images().join(name);
        qemu_img_check(&p);
        let info = qemu_img_info(&p);
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], bytes, "{name}");
    }
    k.ok(&["vol-create-as", "default", "r.img", "512MiB"]);
    let info = qemu_img_info(&k.images().join("r.img"));
    assert_eq!((info["format"].as_str(), info["virtual-size"].as_u64()), (Some("raw"), Some(512 << 20)));
    assert!(allocated_bytes(&k.images().join("r.img")) < 1 << 20, "raw volumes are sparse");
    k.ok(&["vol-create-as", "default", "pre.qcow2", "2G", "--format", "qcow2", "--prealloc-metadata"]);
    let pre = k.images().join("pre.qcow2");
    qemu_img_check(&pre);
    let map = sh("qemu-img", &["map", "--output=json", pre.to_str().unwrap()]);
    assert!(map.contains("\"data\": true") && !map.contains("\"data\": false"), "every cluster is mapped: {map}");
    // Backing volume by name and by path, with its format recorded.
    k.ok(&["vol-create-as", "default", "ov.qcow2", "10G", "--format", "qcow2", "--backing-vol", "a.qcow2"]);
    let ov = qemu_img_info(&k.images().join("ov.qcow2"));
    assert_eq!(ov["backing-filename"], k.images().join("a.qcow2").to_str().unwrap());
    assert_eq!(ov["backing-filename-format"], "qcow2");
    let rp = k.images().join("r.img");
    k.ok(&[
        "vol-create-as",
        "default",
        "ovr.qcow2",
        "512M",
        "--format",
        "qcow2",
        "--backing-vol",
        rp.to_str().unwrap(),
    ]);
    assert_eq!(qemu_img_info(&k.images().join("ovr.qcow2"))["backing-filename-format"], "raw");
    qemu_img_check(&k.images().join("ovr.qcow2"));
    let list = k.ok(&["vol-list", "default"]);
    assert!(list.starts_with(" Name") && list.contains(k.images().join("a.qcow2").to_str().unwrap()), "{list}");
    let det = k.ok(&["vol-list", "default", "--details"]);
    assert!(det.contains("qcow2   10.00 GiB"), "{det}");
    let vi = k.ok(&["vol-info", "ov.qcow2", "--pool", "default"]);
    assert!(vi.contains("Capacity:       10.00 GiB") && vi.contains("Backing file:"), "{vi}");
    let path = k.ok(&["vol-path", "a.qcow2", "--pool", "default"]);
    assert_eq!(path.trim(), k.images().join("a.qcow2").to_str().unwrap());
    // Addressable by path too.
    let j = k.json(&["vol-info", path.trim()]);
    assert_eq!((j["pool"].as_str(), j["capacity"].as_u64()), (Some("default"), Some(10 << 30)));
}

#[test]
fn malformed_sizes_are_usage_errors() {
    let k = Kvm::new();
    for (bad, why) in [("10X", "unknown unit 'X'"), ("-1G", "negative"), ("", "empty"), ("G", "no number")] {
        let e = k.fails(2, &["vol-create-as", "default", "v", bad]);
        assert!(e.contains(why), "{bad}: {e}");
    }
    assert!(!k.images().exists() || std::fs::read_dir(k.images()).unwrap().count() == 0);
}

#[test]
fn volume_bad_input_names_the_object_and_leaves_nothing() {
    let k = Kvm::new();
    assert!(k.fails(1, &["vol-create-as", "nopool", "v", "1G"]).contains("pool 'nopool' not found"));
    assert!(k.fails(1, &["vol-create-as", "default", "../v", "1G"]).contains("volume name '../v'"));
    assert!(k.fails(1, &["vol-create-as", "default", ".v", "1G"]).contains("must start with a letter or digit"));
    k.ok(&["vol-create-as", "default", "v", "1G"]);
    assert!(k
        .fails(1, &["vol-create-as", "default", "v", "1G"])
        .contains("volume 'v' already exists in pool 'default'"));
    assert!(k.fails(1, &["vol-info", "w", "--pool", "default"]).contains("volume 'w' not found in pool 'default'"));
    assert!(k.fails(1, &["vol-delete", "w", "--pool", "default"]).contains("volume 'w' not found"));
    assert!(k.fails(1, &["vol-info", "w"]).contains("not found in any active pool"));
    let e = k.fails(1, &["vol-create-as", "default", "o", "1G", "--backing-vol", "missing.qcow2", "--format", "qcow2"]);
    assert!(e.contains("missing.qcow2"), "{e}");
    assert!(k.fails(1, &["vol-create-as", "default", "o", "1G", "--backing-vol", "v"]).contains("need --format qcow2"));
    let e = k.fails(2, &["vol-create-as", "default", "o", "1G", "--format", "vmdk"]);
    assert!(e.contains("unknown volume format 'vmdk'"), "{e}");
    let names: Vec<_> = std::fs::read_dir(k.images()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["v"], "nothing but the one good volume");
}

#[test]
fn concurrent_creates_of_one_volume_have_one_winner() {
    let k = Kvm::new();
    k.ok(&["pool-list"]);
    let children: Vec<_> = (0..20)
        .map(|_| {
            k.cmd()
                .args(["vol-create-as", "default", "race.qcow2", "1G", "--format", "qcow2"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert_eq!(outs.iter().filter(|o| o.status.success()).count(), 1);
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    }
    assert_eq!(std::fs::read_dir(k.images()).unwrap().count(), 1, "no temp files left");
}

#[test]
fn full_clone_copies_only_data_and_stays_sparse() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "src.qcow2", "4G", "--format", "qcow2"]);
    let src = k.images().join("src.qcow2");
    qemu_write(&src, "qcow2", 0xab, 0, 8 << 20);
    qemu_write(&src, "qcow2", 0xcd, 3 << 30, 1 << 20);
    qemu_write(&src, "qcow2", 0, 1 << 30, 4 << 20); // allocated zeros: skipped in the copy
    k.ok(&["vol-clone", "src.qcow2", "dst.qcow2", "--pool", "default"]);
    let dst = k.images().join("dst.qcow2");
    qemu_img_check(&dst);
    sh("qemu-img", &["compare", src.to_str().unwrap(), dst.to_str().unwrap()]);
    let alloc = allocated_bytes(&dst);
    assert!(alloc < 12 << 20, "clone holds the 9 MiB of data plus metadata, not 4 GiB: {alloc}");
    // A raw volume clones to a sparse raw volume.
    k.ok(&["vol-create-as", "default", "r.img", "1G"]);
    let r = k.images().join("r.img");
    qemu_write(&r, "raw", 0x11, 512 << 20, 2 << 20);
    k.ok(&["vol-clone", "r.img", "r2.img", "--pool", "default"]);
    let r2 = k.images().join("r2.img");
    assert_eq!(qemu_img_info(&r2)["format"], "raw");
    sh("qemu-img", &["compare", r.to_str().unwrap(), r2.to_str().unwrap()]);
    assert!(allocated_bytes(&r2) < 4 << 20);
    // Cloning an overlay flattens its chain into one standalone image.
    k.ok(&["vol-clone", "src.qcow2", "ov.qcow2", "--pool", "default", "--linked"]);
    let ov = k.images().join("ov.qcow2");
    qemu_write(&ov, "qcow2", 0xee, 2 << 30, 1 << 20);
    k.ok(&["vol-clone", "ov.qcow2", "flat.qcow2", "--pool", "default"]);
    let flat = k.images().join("flat.qcow2");
    assert!(qemu_img_info(&flat)["backing-filename"].is_null());
    sh("qemu-img", &["compare", ov.to_str().unwrap(), flat.to_str().unwrap()]);
}

/// fsync calls on files whose path contains `needle`, made by `kvmctl args` (strace -y).
fn fsyncs_of(k: &Kvm, needle: &str, args: &[&str]) -> usize {
    let log = k.dir.path().join(format!("strace-{}.log", std::process::id()));
    let mut c = Command::new("strace");
    c.args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"]).arg(&log).arg(env!("CARGO_BIN_EXE_kvmctl"));
    c.arg("--root").arg(k.root()).args(args).env_remove("KVMCTL_ROOT");
    let o = c.bounded();
    assert!(o.status.success(), "strace kvmctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    text.lines().filter(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(needle)).count()
}

/// A full copy waits for the disk only with --sync (like qemu-img convert's default, it is
/// otherwise left to writeback); either way the result is the same image.
#[test]
fn full_copies_fsync_only_with_sync() {
    if !qemu_tools() || !require("strace", have_program("strace")) {
        return;
    }
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "s.qcow2", "1G", "--format", "qcow2"]);
    let s = k.images().join("s.qcow2");
    qemu_write(&s, "qcow2", 0x42, 0, 3 << 20);
    assert_eq!(fsyncs_of(&k, "fast.qcow2", &["vol-clone", "s.qcow2", "fast.qcow2", "--pool", "default"]), 0);
    assert!(fsyncs_of(&k, "safe.qcow2", &["vol-clone", "s.qcow2", "safe.qcow2", "--pool", "default", "--sync"]) >= 1);
    let raw = k.dir.path().join("in.raw");
    sh("qemu-img", &["convert", "-O", "raw", s.to_str().unwrap(), raw.to_str().unwrap()]);
    let r = raw.to_str().unwrap();
    assert_eq!(fsyncs_of(&k, "imp1", &["vol-import", r, "--pool", "default", "--name", "imp1"]), 0);
    assert!(fsyncs_of(&k, "imp2", &["vol-import", r, "--pool", "default", "--name", "imp2", "--sync"]) >= 1);
    // An overlay is a few KiB of metadata: always made durable.
    assert!(fsyncs_of(&k, "ov.qcow2", &["vol-clone", "s.qcow2", "ov.qcow2", "--pool", "default", "--linked"]) >= 1);
    // The same for clone (virt-clone) of a VM's disks.
    let def = k.dir.path().join("vm.toml");
    std::fs::write(
        &def,
        format!("name = \"vm\"\nuuid = \"5b2a8a4e-0c1f-4c55-9d4e-2f1d7c3a9b10\"\nmemory_mib = 128\nvcpus = 1\n[[disks]]\npath = \"{}\"\nformat = \"qcow2\"\n", s.display()),
    )
    .unwrap();
    k.ok(&["define", def.to_str().unwrap()]);
    assert_eq!(fsyncs_of(&k, "images/.vmfast.qcow2", &["clone", "vm", "vmfast"]), 0);
    assert!(fsyncs_of(&k, "images/.vmsafe.qcow2", &["clone", "vm", "vmsafe", "--sync"]) >= 1);
    for name in ["fast.qcow2", "safe.qcow2", "imp1", "imp2"] {
        let v = k.images().join(name);
        sh("qemu-img", &["compare", s.to_str().unwrap(), v.to_str().unwrap()]);
    }
}

#[test]
fn linked_clone_is_an_overlay_and_protects_its_source() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "base.qcow2", "1T", "--format", "qcow2"]);
    let base = k.images().join("base.qcow2");
    qemu_write(&base, "qcow2", 0x42, 0, 1 << 20);
    k.ok(&["vol-clone", "base.qcow2", "lc.qcow2", "--pool", "default", "--linked"]);
    let lc = k.images().join("lc.qcow2");
    qemu_img_check(&lc);
    let info = qemu_img_info(&lc);
    assert_eq!(info["backing-filename"], base.to_str().unwrap());
    assert_eq!(info["virtual-size"], 1u64 << 40);
    sh("qemu-img", &["compare", base.to_str().unwrap(), lc.to_str().unwrap()]);
    // A write in the clone leaves the source as it was.
    qemu_write(&lc, "qcow2", 0x99, 0, 4096);
    sh("qemu-io", &["-f", "qcow2", "-c", "read -P 0x42 0 4096", base.to_str().unwrap()]);
    // Nothing under an overlay is deleted, not even with --force.
    for force in [&[][..], &["--force"][..]] {
        let e = k.fails(1, &[&["vol-delete", "base.qcow2", "--pool", "default"][..], force].concat());
        assert!(e.contains("overlay volume default/lc.qcow2") && e.contains("remove them first"), "{e}");
    }
    k.ok(&["vol-delete", "lc.qcow2", "--pool", "default"]);
    k.ok(&["vol-delete", "base.qcow2", "--pool", "default"]);
}

/// qemu-nbd holds an image open for writing, with qemu's own image locks, as a VM would.
struct Holder(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl Holder {
    fn open(path: &Path) -> Holder {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("nbd.sock");
        let child = Command::new("qemu-nbd")
            .args(["--persistent", "-k", sock.to_str().unwrap(), "-f", "qcow2", path.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(sock.exists(), "qemu-nbd did not start");
        Holder(child, d)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn volume_open_for_writing_by_qemu_is_protected() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "busy.qcow2", "1G", "--format", "qcow2"]);
    let busy = k.images().join("busy.qcow2");
    let holder = Holder::open(&busy);
    let e = k.fails(1, &["vol-clone", "busy.qcow2", "lc", "--pool", "default", "--linked"]);
    assert!(e.contains("in use by a running qemu (open for writing)"), "{e}");
    let e = k.fails(1, &["vol-create-as", "default", "ov", "1G", "--format", "qcow2", "--backing-vol", "busy.qcow2"]);
    assert!(e.contains("in use by a running qemu"), "{e}");
    assert!(k.fails(1, &["vol-delete", "busy.qcow2", "--pool", "default"]).contains("in use by a running qemu"));
    assert!(k.fails(1, &["vol-resize", "busy.qcow2", "2G", "--pool", "default"]).contains("in use by a running qemu"));
    drop(holder);
    k.ok(&["vol-clone", "busy.qcow2", "lc", "--pool", "default", "--linked"]);
    assert_eq!(std::fs::read_dir(k.images()).unwrap().count(), 2);
}

#[test]
fn vol_delete_refuses_a_disk_of_a_defined_domain_unless_forced() {
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "vm1.qcow2", "1G", "--format", "qcow2"]);
    let p = k.images().join("vm1.qcow2");
    let def = format!("name = \"vm1\"\n\n[[disks]]\npath = \"{}\"\n", p.display());
    std::fs::write(k.root().join("domains/vm1.toml"), def).unwrap();
    let e = k.fails(1, &["vol-delete", "vm1.qcow2", "--pool", "default"]);
    assert!(e.contains("used by domain 'vm1'") && e.contains("--force"), "{e}");
    assert!(p.exists());
    k.ok(&["vol-delete", "vm1.qcow2", "--pool", "default", "--force"]);
    assert!(!p.exists());
}

#[test]
fn vol_resize_grows_and_shrinks_only_when_asked() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "q.qcow2", "1G", "--format", "qcow2"]);
    k.ok(&["vol-create-as", "default", "r.img", "1G"]);
    let q = k.images().join("q.qcow2");
    k.ok(&["vol-resize", "q.qcow2", "100G", "--pool", "default"]);
    assert_eq!(qemu_img_info(&q)["virtual-size"], 100u64 << 30);
    qemu_img_check(&q);
    k.ok(&["vol-resize", "r.img", "1G", "--pool", "default", "--delta"]);
    assert_eq!(std::fs::metadata(k.images().join("r.img")).unwrap().len(), 2 << 30);
    let e = k.fails(1, &["vol-resize", "q.qcow2", "1G", "--pool", "default"]);
    assert!(e.contains("smaller than the current 100.00 GiB") && e.contains("--shrink"), "{e}");
    assert_eq!(qemu_img_info(&q)["virtual-size"], 100u64 << 30);
    k.ok(&["vol-resize", "q.qcow2", "1G", "--pool", "default", "--shrink"]);
    assert_eq!(qemu_img_info(&q)["virtual-size"], 1u64 << 30);
    assert!(k.fails(1, &["vol-resize", "r.img", "0", "--pool", "default", "--shrink"]).contains("greater than zero"));
}

#[test]
fn upload_download_import_round_trip() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    let raw = k.dir.path().join("disk.raw");
    sh("qemu-img", &["create", "-f", "raw", raw.to_str().unwrap(), "256M"]);
    qemu_write(&raw, "raw", 0x5a, 64 << 20, 3 << 20);
    // Import converts raw to qcow2 and keeps it sparse.
    k.ok(&["vol-import", raw.to_str().unwrap(), "--pool", "default", "--name", "imp.qcow2", "--format", "qcow2"]);
    let imp = k.images().join("imp.qcow2");
    qemu_img_check(&imp);
    sh("qemu-img", &["compare", raw.to_str().unwrap(), imp.to_str().unwrap()]);
    assert!(allocated_bytes(&imp) < 5 << 20);
    // Import as-is keeps the name and the format.
    k.ok(&["vol-import", raw.to_str().unwrap(), "--pool", "default"]);
    assert_eq!(qemu_img_info(&k.images().join("disk.raw"))["format"], "raw");
    // Download and upload move bytes unchanged.
    let down = k.dir.path().join("down.qcow2");
    k.ok(&["vol-download", "imp.qcow2", down.to_str().unwrap(), "--pool", "default"]);
    assert_eq!(std::fs::read(&down).unwrap(), std::fs::read(&imp).unwrap());
    k.ok(&["vol-create-as", "default", "up", "1M"]);
    k.ok(&["vol-upload", "up", down.to_str().unwrap(), "--pool", "default"]);
    assert_eq!(std::fs::read(k.images().join("up")).unwrap(), std::fs::read(&imp).unwrap());
    assert!(k.fails(1, &["vol-import", "/nonexistent.img", "--pool", "default"]).contains("/nonexistent.img"));
}

#[test]
fn damaged_images_are_listed_and_marked() {
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "good.qcow2", "1G", "--format", "qcow2"]);
    k.ok(&["vol-create-as", "default", "trunc.qcow2", "1G", "--format", "qcow2"]);
    let t = k.images().join("trunc.qcow2");
    std::fs::OpenOptions::new().write(true).open(&t).unwrap().set_len(70_000).unwrap();
    std::fs::write(k.images().join("junk.qcow2"), b"QFI\xfb").unwrap();
    let out = k.ok(&["vol-list", "default", "--details"]);
    let good = out.lines().find(|l| l.starts_with(" good.qcow2")).unwrap();
    assert!(good.contains(" qcow2 ") && good.contains("1.00 GiB"), "{out}");
    assert!(out.contains(" trunc.qcow2: damaged: corrupt qcow2 image: truncated"), "{out}");
    assert!(out.contains(" junk.qcow2: damaged: corrupt qcow2 image: file is 4 bytes"), "{out}");
    assert!(out.contains("qcow2 (damaged)"), "{out}");
    let e = k.fails(1, &["vol-clone", "trunc.qcow2", "c", "--pool", "default"]);
    assert!(e.contains("truncated"), "{e}");
    assert!(!k.images().join("c").exists());
}

#[test]
fn disk_full_mid_copy_leaves_no_partial_file() {
    if !qemu_tools() || !require("root and unshare (mount namespace)", is_root() && have_program("unshare")) {
        return;
    }
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "big.qcow2", "1G", "--format", "qcow2"]);
    let big = k.images().join("big.qcow2");
    qemu_write(&big, "qcow2", 0x77, 0, 24 << 20);
    let small = k.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    k.ok(&["pool-define-as", "small", "dir", "--target", small.to_str().unwrap()]);
    // A 8 MiB tmpfs as the target pool, inside a private mount namespace.
    let bin = env!("CARGO_BIN_EXE_kvmctl");
    let r = k.root();
    let script = format!(
        "mount -t tmpfs -o size=8m none {s} && {bin} --root {r} -q pool-start small && \
         {bin} --root {r} vol-clone big.qcow2 copy.qcow2 --pool default --newpool small; rc=$?; ls -A {s}; exit $rc",
        s = small.display(),
        r = r.display()
    );
    let o = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).bounded();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("No space left on device"), "{e}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "", "the pool holds no partial file");
}

/// The tests' own watchdog: a command that outlives its limit is killed and fails the test
/// with its argv and output, instead of stalling the whole run.
#[test]
fn a_hung_command_fails_its_test_naming_it() {
    let started = std::time::Instant::now();
    let r = std::panic::catch_unwind(|| {
        bounded_output_within(
            Command::new("sh").args(["-c", "echo before-hang; exec sleep 60"]),
            std::time::Duration::from_secs(1),
        )
    });
    let msg = *r.expect_err("a hung command must panic").downcast::<String>().unwrap();
    assert!(msg.contains("hung:") && msg.contains("sleep 60") && msg.contains("before-hang"), "{msg}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// A file outside every pool that a hostile image header names as its backing file.
fn host_secret(k: &Kvm) -> std::path::PathBuf {
    k.ok(&["pool-list"]); // the default pool's directory exists from the first command on
    let secret = k.dir.path().join("host-secret.raw");
    std::fs::write(&secret, b"KVMCTL-HOST-SECRET\n".repeat(4096)).unwrap();
    secret
}

/// A raw disk whose guest wrote a qcow2 header onto it, naming `backing` as its backing file.
fn raw_disk_with_guest_qcow2_header(k: &Kvm, name: &str, backing: &Path) -> std::path::PathBuf {
    let hdr = k.dir.path().join(format!("{name}.hdr"));
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", backing.to_str().unwrap(), "-F", "raw", hdr.to_str().unwrap(), "1M"],
    );
    let mut bytes = std::fs::read(&hdr).unwrap();
    bytes.resize(4 << 20, 0);
    let disk = k.images().join(name);
    std::fs::write(&disk, &bytes).unwrap();
    disk
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn clone_reads_a_raw_disk_as_raw_even_with_a_guest_written_qcow2_header() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    let secret = host_secret(&k);
    let disk = raw_disk_with_guest_qcow2_header(&k, "vm.img", &secret);
    let def = k.dir.path().join("vm.toml");
    std::fs::write(
        &def,
        format!(
            "name = \"vm\"\nuuid = \"8d0e3c2a-54f1-4c9e-a3b7-1f2e3d4c5b6a\"\nmemory_mib = 64\nvcpus = 1\n[[disks]]\npath = \"{}\"\nformat = \"raw\"\n",
            disk.display()
        ),
    )
    .unwrap();
    k.ok(&["define", def.to_str().unwrap()]);
    // Full clone (virt-clone) and vol-clone copy the disk's bytes as they are: the header is
    // guest data, and the host file it names is never opened.
    k.ok(&["clone", "vm", "vm2"]);
    k.ok(&["vol-clone", "vm.img", "copy.img", "--pool", "default"]);
    for copy in ["vm2.img", "copy.img"] {
        let c = k.images().join(copy);
        sh("qemu-img", &["compare", "-q", "-f", "raw", "-F", "raw", disk.to_str().unwrap(), c.to_str().unwrap()]);
        assert!(!contains(&std::fs::read(&c).unwrap(), b"KVMCTL-HOST-SECRET"), "{copy} holds the host file");
    }
    // vol-info reads it as the definition records it.
    let info = k.json(&["vol-info", "vm.img", "--pool", "default"]);
    assert_eq!(info["format"], "raw", "{info}");
    assert_eq!(info["capacity"], 4 << 20, "{info}");
    // A linked clone's overlay records the source's format, raw: qemu never probes it either.
    k.ok(&["clone", "vm", "vm3", "--linked"]);
    let ov = sh("qemu-img", &["info", "--output=json", k.images().join("vm3.img").to_str().unwrap()]);
    let ov: serde_json::Value = serde_json::from_str(&ov).unwrap();
    assert_eq!(ov["backing-filename-format"], "raw", "{ov}");
    assert_eq!(ov["virtual-size"], 4 << 20, "{ov}");
}

#[test]
fn backing_files_are_followed_only_inside_pools_with_a_recorded_format() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    let secret = host_secret(&k);
    // A qcow2 in the pool whose backing file is a host file outside every pool.
    let out = k.images().join("out.qcow2");
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", secret.to_str().unwrap(), "-F", "raw", out.to_str().unwrap(), "1M"],
    );
    let e = k.fails(1, &["vol-clone", "out.qcow2", "out2", "--pool", "default"]);
    assert!(e.contains("host-secret.raw") && e.contains("outside every storage pool"), "{e}");
    let e = k.fails(1, &["vol-import", out.to_str().unwrap(), "--pool", "default", "--name", "imp"]);
    assert!(e.contains("outside every storage pool"), "{e}");
    let left: Vec<String> =
        std::fs::read_dir(k.images()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["out.qcow2"], "nothing was left behind");

    // Inside a pool, with the format recorded: followed.
    k.ok(&["vol-create-as", "default", "base.img", "1M"]);
    k.ok(&["vol-create-as", "default", "ov.qcow2", "1M", "--format", "qcow2", "--backing-vol", "base.img"]);
    k.ok(&["vol-clone", "ov.qcow2", "flat", "--pool", "default"]);
    // The same overlay with its backing-format extension made unknown: refused, not probed.
    let ov = k.images().join("ov.qcow2");
    let mut bytes = std::fs::read(&ov).unwrap();
    let at = bytes.windows(4).position(|w| w == [0xe2, 0x79, 0x2a, 0xca]).expect("backing format extension");
    bytes[at..at + 4].copy_from_slice(&[0x00, 0x00, 0x00, 0x42]);
    let nofmt = k.images().join("nofmt.qcow2");
    std::fs::write(&nofmt, &bytes).unwrap();
    let e = k.fails(1, &["vol-clone", "nofmt.qcow2", "flat2", "--pool", "default"]);
    assert!(e.contains("has no recorded format") && e.contains("never probes"), "{e}");
    assert!(!k.images().join("flat2").exists());
}

#[test]
fn nothing_under_an_overlay_is_changed_and_the_refusal_names_it() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "base.qcow2", "8M", "--format", "qcow2"]);
    let base = k.images().join("base.qcow2");
    sh("qemu-io", &["-f", "qcow2", "-c", "write -P 0x5a 0 1M", base.to_str().unwrap()]);
    k.ok(&["vol-clone", "base.qcow2", "ov.qcow2", "--pool", "default", "--linked"]);
    let ov = k.images().join("ov.qcow2");
    let def = k.dir.path().join("b.toml");
    std::fs::write(
        &def,
        format!(
            "name = \"b\"\nuuid = \"0c5e6f2a-8d1b-4f3e-9a7c-2b4d6e8f0a1c\"\nmemory_mib = 64\nvcpus = 1\n\
             [[disks]]\npath = \"{}\"\nformat = \"qcow2\"\n",
            base.display()
        ),
    )
    .unwrap();
    k.ok(&["define", def.to_str().unwrap()]);
    let named = |e: &str| e.contains("overlay volume default/ov.qcow2");
    // start (it would write the disk the overlay reads through), shrink, upload, delete even
    // with --force: each refused, naming the overlay.
    let e = k.fails(1, &["start", "b"]);
    assert!(named(&e) && e.contains("refusing to start"), "{e}");
    let e = k.fails(1, &["vol-resize", "base.qcow2", "4M", "--shrink", "--pool", "default"]);
    assert!(named(&e) && e.contains("refusing to shrink"), "{e}");
    k.ok(&["vol-resize", "base.qcow2", "16M", "--pool", "default"]); // growing changes nothing it reads
    let junk = k.dir.path().join("junk");
    std::fs::write(&junk, vec![1u8; 1 << 20]).unwrap();
    let e = k.fails(1, &["vol-upload", "base.qcow2", junk.to_str().unwrap(), "--pool", "default"]);
    assert!(named(&e) && e.contains("refusing to overwrite"), "{e}");
    let e = k.fails(1, &["vol-delete", "base.qcow2", "--pool", "default", "--force"]);
    assert!(named(&e) && e.contains("refusing to delete"), "{e}");
    // undefine --remove-all-storage keeps the disk the overlay needs, names it, and goes on.
    let o = k.run(&["undefine", "b", "--remove-all-storage"]);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("keeping") && named(&err), "{err}");
    assert!(base.exists());
    // The overlay still reads the base's data.
    sh("qemu-img", &["check", "-q", ov.to_str().unwrap()]);
    sh("qemu-io", &["-f", "qcow2", "-c", "read -P 0x5a 0 1M", ov.to_str().unwrap()]);
    // Once the overlay is gone, the base is free again.
    k.ok(&["vol-delete", "ov.qcow2", "--pool", "default"]);
    k.ok(&["vol-delete", "base.qcow2", "--pool", "default"]);
}

/// The hidden files in the default pool's directory (kvmctl's temp files).
fn hidden_in_pool(k: &Kvm) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(k.images())
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string()))
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Issue 11: a copy interrupted mid-way leaves no temp file. Ctrl+C, SIGTERM and SIGHUP remove
/// it before the process dies of the signal; after SIGKILL the next command on the pool
/// removes it (`pool-refresh` names it). Nothing half-made stays, and the retry succeeds.
#[test]
fn an_interrupted_copy_leaves_no_temp_file_and_the_retry_succeeds() {
    use std::os::unix::process::ExitStatusExt;
    if !qemu_tools() || !require("the fault-injection feature (make test has it)", cfg!(feature = "fault-injection")) {
        return;
    }
    let k = Kvm::new();
    k.ok(&["pool-list"]);
    let src = k.dir.path().join("src.raw");
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&src, &data).unwrap();
    std::fs::copy(&src, k.images().join("vm.img")).unwrap();
    let def = k.dir.path().join("vm.toml");
    let disk = k.images().join("vm.img");
    let toml = format!(
        "name = \"vm\"\nmemory_mib = 64\nvcpus = 1\n[[disks]]\npath = \"{}\"\nformat = \"raw\"\n",
        disk.display()
    );
    std::fs::write(&def, toml).unwrap();
    k.ok(&["define", def.to_str().unwrap()]);
    let srcs = src.to_str().unwrap();
    let cases: [(&str, Vec<&str>, &str); 3] = [
        ("vol-import.copy", vec!["vol-import", srcs, "--pool", "default", "--name", "imp.img"], "imp.img"),
        ("vol-clone.copy", vec!["vol-clone", "vm.img", "copy.img", "--pool", "default"], "copy.img"),
        ("clone.copy", vec!["clone", "vm", "vm2"], "vm2.img"),
    ];
    let signals = [("INT", libc::SIGINT), ("TERM", libc::SIGTERM), ("HUP", libc::SIGHUP), ("KILL", libc::SIGKILL)];
    for (point, args, made) in &cases {
        for (name, signo) in signals {
            let o = bounded_output(k.cmd().args(args).env("KVMCTL_FAULT", format!("{point}:{name}")));
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.signal(), Some(signo), "{point}:{name}: {:?} {err}", o.status);
            assert!(err.contains(&format!("fault point {point}")), "{point}:{name}: {err}");
            if signo == libc::SIGKILL {
                let left = hidden_in_pool(&k);
                assert_eq!(
                    left.len(),
                    1,
                    "{point}: after SIGKILL the temp file is there until the next command: {left:?}"
                );
                let out = k.ok(&["pool-refresh", "default"]);
                assert!(out.contains("Removed") && out.contains(&left[0]), "{point}: {out}");
            }
            assert_eq!(hidden_in_pool(&k), Vec::<String>::new(), "{point}:{name} left a temp file");
            assert!(!k.images().join(made).exists(), "{point}:{name} left {made}");
        }
        assert!(k.fails(1, &["dominfo", "vm2"]).contains("not found"), "an interrupted clone defined vm2");
        // The retry of the same command succeeds and copies every byte.
        k.ok(args);
        assert_eq!(std::fs::read(k.images().join(made)).unwrap(), data, "{point}: the retry's copy");
    }
    // A SIGKILLed writer's temp file also goes with any other command on the pool.
    let o = bounded_output(
        k.cmd().args(["vol-clone", "vm.img", "c2.img", "--pool", "default"]).env("KVMCTL_FAULT", "vol-clone.copy"),
    );
    assert_eq!(o.status.signal(), Some(libc::SIGKILL));
    assert_eq!(hidden_in_pool(&k).len(), 1);
    k.ok(&["vol-list", "default"]);
    assert_eq!(hidden_in_pool(&k), Vec::<String>::new());
}

/// Compressed qcow2, as distributions ship their cloud images (`qemu-img convert -c`): v3
/// and v2 (compat=0.10), a compressed overlay over a compressed base, each copied by
/// vol-import / vol-clone to an uncompressed image qemu-img compares equal; a compressed
/// cluster that does not inflate is refused as corrupt with no partial file.
#[test]
fn compressed_images_are_read_and_copied_uncompressed() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    let p = |n: &str| k.dir.path().join(n).to_str().unwrap().to_string();
    // 16 MiB of mixed content: pseudo-random runs (which do not compress) and patterns.
    let mut raw = vec![0u8; 16 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, chunk) in raw.chunks_mut(1 << 20).enumerate() {
        for b in chunk.iter_mut().take(100_000 + i * 7_919) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        chunk[300_000..400_000].fill(i as u8 + 1);
    }
    std::fs::write(p("disk.raw"), &raw).unwrap();
    for (name, opts) in [("v3.qcow2", "compat=1.1"), ("v2.qcow2", "compat=0.10"), ("small.qcow2", "cluster_size=4096")]
    {
        sh("qemu-img", &["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, &p("disk.raw"), &p(name)]);
        let imported = format!("imp-{name}");
        k.ok(&["vol-import", &p(name), "--pool", "default", "--name", &imported]);
        let out = k.images().join(&imported);
        qemu_img_check(&out);
        sh("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", &p("disk.raw"), out.to_str().unwrap()]);
        // Uncompressed: every data extent has a host offset (qemu-img map gives compressed
        // extents none), and the source's did not.
        let data_without_offset = |f: &str| {
            let map: serde_json::Value =
                serde_json::from_str(&sh("qemu-img", &["map", "--output=json", "-f", "qcow2", f])).unwrap();
            map.as_array().unwrap().iter().filter(|e| e["data"] == true && e.get("offset").is_none()).count()
        };
        assert!(data_without_offset(&p(name)) > 0, "{name} has compressed clusters");
        assert_eq!(data_without_offset(out.to_str().unwrap()), 0, "{imported} is written uncompressed");
    }
    // A compressed overlay over a compressed base (qemu-io write -c), cloned full.
    k.ok(&["vol-import", &p("v3.qcow2"), "--pool", "default", "--name", "base.qcow2"]);
    let base = k.images().join("base.qcow2");
    sh("qemu-img", &["convert", "-c", "-f", "raw", "-O", "qcow2", &p("disk.raw"), base.to_str().unwrap()]);
    let top = k.images().join("top.qcow2");
    sh("qemu-img", &["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top.to_str().unwrap()]);
    sh("qemu-io", &["-f", "qcow2", "-c", "write -c -P 0x77 1M 64k", top.to_str().unwrap()]);
    k.ok(&["vol-clone", "top.qcow2", "flat.qcow2", "--pool", "default"]);
    let flat = k.images().join("flat.qcow2");
    qemu_img_check(&flat);
    sh("qemu-img", &["compare", "-f", "qcow2", "-F", "qcow2", top.to_str().unwrap(), flat.to_str().unwrap()]);
    // A compressed cluster with its stream damaged: refused, named, nothing left.
    let mut bad = std::fs::read(p("v3.qcow2")).unwrap();
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l2 = (be64(&bad, be64(&bad, 40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    let first = (0..8192).map(|i| be64(&bad, l2 + 8 * i)).find(|e| e & (1 << 62) != 0).expect("a compressed cluster");
    let at = (first & ((1 << 54) - 1)) as usize;
    bad[at..at + 64].fill(0xff);
    std::fs::write(p("bad.qcow2"), &bad).unwrap();
    let e = k.fails(1, &["vol-import", &p("bad.qcow2"), "--pool", "default", "--name", "bad.qcow2"]);
    assert!(e.contains("bad.qcow2") && e.contains("corrupt") && e.contains("does not inflate"), "{e}");
    let left: Vec<_> = std::fs::read_dir(k.images()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("bad")), "{left:?}");
}

/// `--compress` is for full copies into qcow2: with `--linked` it is a usage error, and a
/// copy whose output would be raw is refused by name, nothing left in the pool.
#[test]
fn compress_is_refused_for_linked_clones_and_raw_output() {
    let k = Kvm::new();
    k.ok(&["vol-create-as", "default", "q.qcow2", "64M", "--format", "qcow2"]);
    k.ok(&["vol-create-as", "default", "r.img", "64M"]);
    let e = k.fails(2, &["vol-clone", "q.qcow2", "l.qcow2", "--pool", "default", "--linked", "--compress"]);
    assert!(e.contains("--compress") && e.contains("--linked"), "{e}");
    let e = k.fails(2, &["clone", "vm", "vm2", "--linked", "--compress"]);
    assert!(e.contains("--compress") && e.contains("--linked"), "{e}");
    let src = k.images().join("q.qcow2");
    let e = k.fails(
        1,
        &["vol-import", src.to_str().unwrap(), "--pool", "default", "--name", "i.img", "--format", "raw", "--compress"],
    );
    assert!(e.contains("--compress needs qcow2 output"), "{e}");
    let e = k.fails(1, &["vol-clone", "r.img", "r2.img", "--pool", "default", "--compress"]);
    assert!(e.contains("--compress needs qcow2 output"), "{e}");
    let mut names: Vec<_> = std::fs::read_dir(k.images()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, vec!["q.qcow2", "r.img"], "nothing but the two sources, no temp file");
}

/// `clone --compress`: the VM's qcow2 disks are copied compressed (qemu reads them as the
/// source, `qemu-img check` is clean); a raw disk to copy is refused before anything is made.
#[test]
fn clone_compress_writes_qcow2_disks_compressed_and_refuses_raw_ones() {
    if !qemu_tools() {
        return;
    }
    let k = Kvm::new();
    let img = k.images();
    k.ok(&["-q", "vol-create-as", "default", "s.qcow2", "64M", "--format", "qcow2"]);
    k.ok(&["-q", "vol-create-as", "default", "r.img", "8M"]);
    let s = img.join("s.qcow2");
    for (i, byte) in [0x11u8, 0x22, 0x33].iter().enumerate() {
        qemu_write(&s, "qcow2", *byte, i as u64 * (8 << 20), 1 << 20);
    }
    let def = format!(
        "name = \"s\"\nuuid = \"3e3fce45-4f53-4fa7-bb32-11f34168b82c\"\nmemory_mib = 128\nvcpus = 1\n\
         [[disks]]\npath = \"{i}/s.qcow2\"\nformat = \"qcow2\"\n[[disks]]\npath = \"{i}/r.img\"\nformat = \"raw\"\n",
        i = img.display()
    );
    let f = k.dir.path().join("s.toml");
    std::fs::write(&f, def).unwrap();
    k.ok(&["define", f.to_str().unwrap()]);
    let e = k.fails(1, &["clone", "s", "c", "--compress"]);
    assert!(e.contains("--compress needs qcow2 output: disk vdb is raw"), "{e}");
    assert_eq!(k.ok(&["list", "--all", "--name"]), "s\n");
    assert!(!img.join("c.qcow2").exists());
    k.ok(&["clone", "s", "c", "--compress", "--skip-copy", "vdb"]);
    let c = img.join("c.qcow2");
    let out = sh("qemu-img", &["check", c.to_str().unwrap()]);
    assert!(out.contains("No errors were found on the image."), "{out}");
    sh("qemu-img", &["compare", "-f", "qcow2", "-F", "qcow2", s.to_str().unwrap(), c.to_str().unwrap()]);
    let map: serde_json::Value =
        serde_json::from_str(&sh("qemu-img", &["map", "--output=json", "-f", "qcow2", c.to_str().unwrap()])).unwrap();
    let compressed = map.as_array().unwrap().iter().filter(|e| e["data"] == true && e.get("offset").is_none()).count();
    assert!(compressed > 0, "{map}");
    assert!(std::fs::metadata(&c).unwrap().len() < 1 << 20, "3 MiB of repeated bytes, compressed");
}
