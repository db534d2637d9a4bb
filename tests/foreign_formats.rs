//! Images from other hypervisors: vmdk (every subformat qemu-img writes), vdi, vhdx, vhd and
//! qcow imported as qcow2 (or raw) through qemu-img and compared with their source; what qemu
//! would open besides the file (far or linked extents, parents) refused with nothing left;
//! `vol-download --format` exporting a whole chain; `install --disk path=X.vmdk` booting.

mod common;

use std::path::{Path, PathBuf};

use common::netns::can_netns;
use common::vmhost::VmHost;
use common::*;

fn qemu_img() -> bool {
    require("qemu-img (apt: qemu-utils)", have_program("qemu-img"))
}

/// 8 MiB: random runs, repeated bytes and holes.
fn mixed_raw(path: &Path) {
    let mut raw = vec![0u8; 8 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, chunk) in raw.chunks_mut(1 << 20).enumerate() {
        if i == 3 {
            continue;
        }
        for b in chunk.iter_mut().take(50_000 + i * 7_001) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        chunk[300_000..310_000].fill(i as u8 + 1);
    }
    std::fs::write(path, &raw).unwrap();
}

struct Bench {
    k: Kvm,
    raw: PathBuf,
}

impl Bench {
    fn new() -> Bench {
        let k = Kvm::new();
        let raw = k.dir.path().join("disk.raw");
        mixed_raw(&raw);
        k.ok(&["-q", "pool-list"]); // the default pool and its directory
        Bench { k, raw }
    }
    fn p(&self, name: &str) -> String {
        self.k.dir.path().join(name).to_str().unwrap().to_string()
    }
    fn make(&self, name: &str, fmt: &str, opts: &str) -> String {
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let (src, dst) = (self.raw.to_str().unwrap().to_string(), self.p(name));
        args.extend([src.as_str(), dst.as_str()]);
        sh("qemu-img", &args);
        dst
    }
    /// The pool's file names, temp files included.
    fn pool_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.k.images())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
    fn refused(&self, file: &str, reasons: &[&str]) {
        let before = self.pool_files();
        let e = self.k.fails(1, &["vol-import", file, "--pool", "default", "--name", "r.qcow2"]);
        for r in reasons {
            assert!(e.contains(r), "{file}: '{r}' not in: {e}");
        }
        assert_eq!(self.pool_files(), before, "{file}: nothing left in the pool");
    }
}

/// The same disk as the guest sees both (`qemu-img compare`; sizes may differ where the
/// format rounds up, as vhd does to its CHS geometry, but the extra bytes must read as zeros).
fn same_disk(a: &str, a_fmt: &str, b: &str, b_fmt: &str) {
    sh("qemu-img", &["compare", "-f", a_fmt, "-F", b_fmt, a, b]);
}

#[test]
fn every_foreign_format_qemu_img_writes_is_imported_as_qcow2_or_raw() {
    if !qemu_img() {
        return;
    }
    let b = Bench::new();
    let raw = b.raw.to_str().unwrap().to_string();
    for (name, fmt, opts) in [
        ("sparse.vmdk", "vmdk", ""),
        ("stream.vmdk", "vmdk", "subformat=streamOptimized"),
        ("flat.vmdk", "vmdk", "subformat=monolithicFlat"),
        ("split.vmdk", "vmdk", "subformat=twoGbMaxExtentSparse"),
        ("esx.vmdk", "vmdk", "adapter_type=lsilogic,subformat=monolithicSparse"),
        ("d.vdi", "vdi", ""),
        ("static.vdi", "vdi", "static=on"),
        ("d.vhdx", "vhdx", ""),
        ("d.vhd", "vpc", ""),
        ("fixed.vhdx", "vhdx", "subformat=fixed"),
        ("d.qcow", "qcow", ""),
    ] {
        let src = b.make(name, fmt, opts);
        let out = b.k.ok(&["vol-import", &src, "--pool", "default"]);
        // Named after the file with the format it now has.
        let vol = format!("{}.qcow2", name.rsplit_once('.').unwrap().0);
        assert!(out.contains(&format!("Vol {vol} imported")), "{name}: {out}");
        let dest = b.k.images().join(&vol);
        qemu_img_check(&dest);
        assert_eq!(qemu_img_info(&dest)["format"], "qcow2", "{name}");
        same_disk(&raw, "raw", dest.to_str().unwrap(), "qcow2");
        let info = b.k.json(&["vol-info", &vol, "--pool", "default"]);
        assert_eq!(info["format"], "qcow2", "{name}: {info}");
        assert!(info["capacity"].as_u64().unwrap() >= 8 << 20, "{name}: {info}");
        b.k.ok(&["-q", "vol-delete", &vol, "--pool", "default"]);
    }
    // --format raw, and a name of one's own.
    let vhd = b.p("d.vhd");
    b.k.ok(&["-q", "vol-import", &vhd, "--pool", "default", "--format", "raw", "--name", "vhd.img"]);
    let dest = b.k.images().join("vhd.img");
    same_disk(&raw, "raw", dest.to_str().unwrap(), "raw");
    assert_eq!(b.k.json(&["vol-info", "vhd.img", "--pool", "default"])["format"], "raw");
    // --compress: qemu-img convert -c; with raw output it is refused and nothing is written.
    let vdi = b.p("d.vdi");
    b.k.ok(&["-q", "vol-import", &vdi, "--pool", "default", "--name", "vdi-z.qcow2", "--compress"]);
    let z = b.k.images().join("vdi-z.qcow2");
    qemu_img_check(&z);
    same_disk(&raw, "raw", z.to_str().unwrap(), "qcow2");
    let map = sh("qemu-img", &["map", "--output=json", "-f", "qcow2", z.to_str().unwrap()]);
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    let compressed = map.as_array().unwrap().iter().filter(|e| e["data"] == true && e.get("offset").is_none()).count();
    assert!(compressed > 0, "compressed clusters written: {map}");
    let e = b.k.fails(1, &["vol-import", &vdi, "--pool", "default", "--format", "raw", "--compress"]);
    assert!(e.contains("--compress needs qcow2 output"), "{e}");
    b.k.ok(&["-q", "vol-delete", "vdi-z.qcow2", "--pool", "default"]);
    // The converted volume is named in `vol-list` like any other; nothing else is in the pool.
    assert_eq!(b.pool_files(), vec!["vhd.img".to_string()]);
}

/// What qemu would open besides the file: every such image is refused by name before qemu-img
/// runs, and formats kvmctl does not convert are named with the way out.
#[test]
fn images_reaching_other_files_or_damaged_are_refused_and_leave_nothing() {
    if !qemu_img() {
        return;
    }
    let b = Bench::new();
    // A descriptor whose extent is a host file by absolute path, or above its directory.
    let secret = b.p("secret.bin");
    std::fs::write(&secret, vec![0x5a; 1 << 20]).unwrap();
    for (name, extent) in [("abs.vmdk", secret.clone()), ("up.vmdk", "../secret.bin".into())] {
        let d = b.p(name);
        let text = format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
             RW 2048 FLAT \"{extent}\" 0\n"
        );
        std::fs::write(&d, text).unwrap();
        b.refused(&d, &[name, &format!("vmdk extent \"{extent}\""), "not a file name beside the descriptor"]);
    }
    // An extent beside it that is a symbolic link to a host file.
    let flat = b.make("f.vmdk", "vmdk", "subformat=monolithicFlat");
    let extent = b.p("f-flat.vmdk");
    std::fs::remove_file(&extent).unwrap();
    std::os::unix::fs::symlink(&secret, &extent).unwrap();
    b.refused(&flat, &["f.vmdk", "\"f-flat.vmdk\" is a symbolic link"]);
    std::fs::remove_file(&extent).unwrap();
    b.refused(&flat, &["\"f-flat.vmdk\" is missing"]);
    // A vmdk snapshot: its parent is named in the descriptor embedded in the sparse file.
    let base = b.make("base.vmdk", "vmdk", "");
    let snap = b.p("snap.vmdk");
    sh("qemu-img", &["create", "-f", "vmdk", "-b", &base, "-F", "vmdk", &snap]);
    b.refused(&snap, &["snap.vmdk", "differencing vmdk", "base.vmdk"]);
    // qcow (version 1) on a backing file.
    let q1 = b.p("over.qcow");
    sh("qemu-img", &["create", "-f", "qcow", "-b", b.raw.to_str().unwrap(), "-F", "raw", &q1]);
    b.refused(&q1, &["over.qcow", "overlay on a backing file"]);
    // A differencing VHD (disk type 4 in its footer copy).
    let vhd = b.make("diff.vhd", "vpc", "");
    let mut bytes = std::fs::read(&vhd).unwrap();
    bytes[60..64].copy_from_slice(&4u32.to_be_bytes());
    std::fs::write(&vhd, &bytes).unwrap();
    b.refused(&vhd, &["diff.vhd", "differencing VHD"]);
    // Cut short, in each one-file format: qemu reads the missing part as zeros (vhdx and vhd
    // notice, and their reason is shown).
    for (name, fmt, why) in [
        ("cut.vdi", "vdi", "is cut short"),
        ("cut.vhdx", "vhdx", "probably been truncated"),
        ("cut.vhd", "vpc", "has been truncated"),
        ("cut.vmdk", "vmdk", "is cut short"),
        ("cut.qcow", "qcow", "is cut short"),
    ] {
        let f = b.make(name, fmt, "");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len / 2).unwrap();
        b.refused(&f, &[name, why]);
    }
    // Garbage behind a valid signature: qemu-img's own reason is shown.
    let junk = b.p("junk.vhdx");
    std::fs::write(&junk, [b"vhdxfile".as_slice(), &[0xff; 4096]].concat()).unwrap();
    b.refused(&junk, &["junk.vhdx", "qemu-img"]);
    // Formats kvmctl names but does not convert.
    for (name, fmt, named) in [("d.qed", "qed", "qed"), ("d.parallels", "parallels", "parallels")] {
        let f = b.make(name, fmt, "");
        b.refused(&f, &[name, &format!("is a {named} image"), "does not import", "qemu-img convert"]);
    }
    // A foreign image dropped into a pool is not run as raw: it is named, with vol-import.
    std::fs::copy(b.p("base.vmdk"), b.k.images().join("dropped.vmdk")).unwrap();
    let e = b.k.fails(1, &["vol-info", "dropped.vmdk", "--pool", "default"]);
    assert!(e.contains("is a vmdk (VMware sparse) image") && e.contains("vol-import converts it"), "{e}");
}

#[test]
fn vol_download_format_exports_the_whole_chain_in_every_format() {
    if !qemu_img() {
        return;
    }
    let b = Bench::new();
    let raw = b.raw.to_str().unwrap().to_string();
    b.k.ok(&["-q", "vol-import", &raw, "--pool", "default", "--name", "base.qcow2", "--format", "qcow2"]);
    b.k.ok(&["-q", "vol-create-as", "default", "top.qcow2", "8M", "--format", "qcow2", "--backing-vol", "base.qcow2"]);
    let top = b.k.images().join("top.qcow2");
    qemu_write(&top, "qcow2", 0x77, 1 << 20, 64 << 10);
    // The guest's view: the base with the overlay's write.
    let view = b.p("view.raw");
    sh("qemu-img", &["convert", "-O", "raw", top.to_str().unwrap(), &view]);
    for (fmt, ext) in
        [("vmdk", "vmdk"), ("vdi", "vdi"), ("vhdx", "vhdx"), ("vpc", "vhd"), ("qcow2", "qcow2"), ("raw", "img")]
    {
        let out = b.p(&format!("export.{ext}"));
        let said = b.k.ok(&["vol-download", "top.qcow2", &out, "--pool", "default", "--format", fmt]);
        assert!(said.contains("Downloaded 8.00 MiB"), "{fmt}: {said}");
        assert_eq!(qemu_img_info(Path::new(&out))["format"], fmt, "{fmt}");
        same_disk(&view, "raw", &out, fmt);
        // Standalone: no backing file named in the export.
        assert!(qemu_img_info(Path::new(&out)).get("backing-filename").is_none(), "{fmt}");
    }
    // Without --format: the volume's own bytes, as virsh does (an overlay stays an overlay).
    let own = b.p("own.qcow2");
    b.k.ok(&["-q", "vol-download", "top.qcow2", &own, "--pool", "default"]);
    assert_eq!(std::fs::read(&own).unwrap(), std::fs::read(&top).unwrap());
    // A bare file name lands in the working directory.
    let o =
        b.k.cmd()
            .current_dir(b.k.dir.path())
            .args(["-q", "vol-download", "base.qcow2", "here.vdi", "--pool", "default", "--format", "vdi"])
            .output()
            .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_disk(&raw, "raw", &b.p("here.vdi"), "vdi");
    // An unknown format is a usage error naming the choices; nothing is written.
    let e = b.k.fails(2, &["vol-download", "top.qcow2", &b.p("x.qed"), "--pool", "default", "--format", "qed"]);
    assert!(e.contains("qcow2, raw, vmdk, vdi, vhdx, vpc"), "{e}");
    assert!(!Path::new(&b.p("x.qed")).exists());
}

/// virt-install --import of a VMware disk: converted into the default pool and booted.
#[test]
fn install_import_of_a_vmdk_converts_it_and_boots_the_guest() {
    let guest = guest_dir().join("tiny.qcow2");
    if !require(
        "root, qemu, qemu-img and the test guest (images/build.sh)",
        can_netns() && have_program("qemu-system-x86_64") && have_program("qemu-img") && guest.exists(),
    ) {
        return;
    }
    let h = VmHost::new("f");
    let vmdk = h.k.dir.path().join("appliance.vmdk");
    sh(
        "qemu-img",
        &["convert", "-O", "vmdk", "-o", "subformat=streamOptimized", guest.to_str().unwrap(), vmdk.to_str().unwrap()],
    );
    let before = std::fs::read(&vmdk).unwrap();
    let o = h.k.in_ns(
        &h.ns,
        &[
            "install",
            "--name",
            "vm1",
            "--memory",
            "128",
            "--disk",
            &format!("path={}", vmdk.display()),
            "--import",
            "--network",
            "none",
            "--noautoconsole",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("appliance.vmdk (vmdk (VMware sparse)) into volume default/vm1.qcow2"), "{err}");
    h.wait_console("vm1", "KVMCTL-GUEST-READY", 1, 300);
    let xml = h.ok(&["dumpxml", "vm1"]);
    assert!(xml.contains("vm1.qcow2") && xml.contains("type='qcow2'") && !xml.contains("appliance.vmdk"), "{xml}");
    h.ok(&["destroy", "vm1"]);
    // The vmdk itself is never written.
    assert!(std::fs::read(&vmdk).unwrap() == before, "the source vmdk changed");
    // The converted disk goes with the VM's storage.
    h.ok(&["undefine", "vm1", "--remove-all-storage"]);
    assert!(!h.k.images().join("vm1.qcow2").exists());
    // An install failing after the conversion (its second disk is missing) removes the
    // converted volume again.
    let e = h.fails(
        1,
        &[
            "install",
            "--name",
            "vm2",
            "--memory",
            "128",
            "--disk",
            &format!("path={}", vmdk.display()),
            "--disk",
            "path=/nonexistent/d2.qcow2",
            "--import",
            "--network",
            "none",
            "--noautoconsole",
        ],
    );
    assert!(e.contains("/nonexistent/d2.qcow2"), "{e}");
    assert!(!h.k.images().join("vm2.qcow2").exists());
    assert_eq!(std::fs::read_dir(h.k.images()).unwrap().count(), 0, "nothing left in the pool");
}
