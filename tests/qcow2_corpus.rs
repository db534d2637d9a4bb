//! Every qcow2 qemu writes, generated with qemu-img and qemu-io, copied by kvmctl and compared
//! with `qemu-img compare`; damaged variants refused by reason with nothing left in the pool.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn qemu_tools() -> bool {
    require("qemu-img, qemu-io (apt: qemu-utils)", ["qemu-img", "qemu-io"].iter().all(|p| have_program(p)))
}

/// 8 MiB of mixed content: pseudo-random runs (incompressible), repeated bytes, and holes.
fn mixed_raw(path: &Path) {
    let mut raw = vec![0u8; 8 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (i, chunk) in raw.chunks_mut(1 << 20).enumerate() {
        if i == 5 {
            continue; // a whole MiB of zeros
        }
        for b in chunk.iter_mut().take(70_000 + i * 13_001) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        chunk[200_000..200_000 + 3_000 + i * 511].fill(i as u8 + 1);
        chunk[(1 << 20) - 777..].fill(0xa5);
    }
    std::fs::write(path, &raw).unwrap();
}

struct Corpus {
    k: Kvm,
    raw: PathBuf,
}

impl Corpus {
    fn new() -> Corpus {
        let k = Kvm::new();
        let raw = k.dir.path().join("disk.raw");
        mixed_raw(&raw);
        Corpus { k, raw }
    }
    fn p(&self, name: &str) -> String {
        self.k.dir.path().join(name).to_str().unwrap().to_string()
    }
    fn raw(&self) -> &str {
        self.raw.to_str().unwrap()
    }
    fn pool(&self, name: &str) -> PathBuf {
        self.k.images().join(name)
    }
    /// Import `name` (a file beside the corpus), check the copy with qemu-img and compare it
    /// with the source as the guest sees both.
    fn import_and_compare(&self, name: &str) {
        let out = format!("imp-{name}");
        self.k.ok(&["vol-import", &self.p(name), "--pool", "default", "--name", &out]);
        let dest = self.pool(&out);
        qemu_img_check(&dest);
        let fmt = qemu_img_info(&dest)["format"].as_str().unwrap().to_string();
        assert_eq!(fmt, "qcow2", "{name}: a qcow2 source stays qcow2");
        sh("qemu-img", &["compare", "-f", "qcow2", "-F", "qcow2", &self.p(name), dest.to_str().unwrap()]);
    }
    /// The pool holds nothing whose name contains `part` (no partial file, no temp file).
    fn nothing_left(&self, part: &str) {
        let left: Vec<String> = std::fs::read_dir(self.k.images())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(part) || n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "left in the pool: {left:?}");
    }
    fn refused(&self, name: &str, reasons: &[&str]) -> String {
        let e = self.k.fails(1, &["vol-import", &self.p(name), "--pool", "default", "--name", &format!("r-{name}")]);
        for r in reasons {
            assert!(e.contains(r), "{name}: '{r}' not in: {e}");
        }
        assert!(e.contains(name), "{name}: the image is named: {e}");
        self.nothing_left(&format!("r-{name}"));
        e
    }
}

fn convert(c: &Corpus, out: &str, compress: bool, opts: &str) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if compress {
        args.push("-c");
    }
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let (src, dst) = (c.raw().to_string(), c.p(out));
    args.extend([src.as_str(), dst.as_str()]);
    sh("qemu-img", &args);
}

#[test]
fn every_qcow2_variant_qemu_img_writes_is_copied_exactly() {
    if !qemu_tools() {
        return;
    }
    let c = Corpus::new();
    let variants: &[(&str, bool, &str)] = &[
        ("v2.qcow2", false, "compat=0.10"),
        ("v3.qcow2", false, "compat=1.1"),
        ("c512.qcow2", false, "cluster_size=512"),
        ("c2m.qcow2", false, "cluster_size=2M"),
        ("zlib-v2.qcow2", true, "compat=0.10"),
        ("zlib-4k.qcow2", true, "cluster_size=4096"),
        ("zlib-2m.qcow2", true, "cluster_size=2M"),
        ("zstd.qcow2", true, "compression_type=zstd"),
        ("zstd-4k.qcow2", true, "compression_type=zstd,cluster_size=4096"),
        ("xl2.qcow2", false, "extended_l2=on"),
        ("xl2-32k.qcow2", false, "extended_l2=on,cluster_size=32k"),
        ("xl2-2m.qcow2", false, "extended_l2=on,cluster_size=2M"),
        ("xl2-zstd.qcow2", true, "extended_l2=on,compression_type=zstd"),
        ("rc1.qcow2", false, "refcount_bits=1"),
        ("rc8.qcow2", true, "refcount_bits=8"),
        ("rc64.qcow2", false, "refcount_bits=64"),
        ("lazy.qcow2", false, "lazy_refcounts=on"),
        ("meta.qcow2", false, "preallocation=metadata"),
        ("falloc.qcow2", false, "preallocation=falloc,extended_l2=on"),
    ];
    for (name, compress, opts) in variants {
        convert(&c, name, *compress, opts);
        c.import_and_compare(name);
    }
    // Amended images: v3 turned v2 (zero clusters rewritten), refcount width changed.
    for (name, from, amend) in
        [("am-v2.qcow2", "v3.qcow2", "compat=0.10"), ("am-rc.qcow2", "rc1.qcow2", "refcount_bits=32")]
    {
        std::fs::copy(c.p(from), c.p(name)).unwrap();
        sh("qemu-img", &["amend", "-f", "qcow2", "-o", amend, &c.p(name)]);
        c.import_and_compare(name);
    }
}

#[test]
fn overlays_with_subclusters_zero_clusters_and_compressed_writes_read_through_the_chain() {
    if !qemu_tools() {
        return;
    }
    let c = Corpus::new();
    let k = &c.k;
    convert(&c, "base-src.qcow2", true, "compression_type=zstd");
    k.ok(&["vol-import", &c.p("base-src.qcow2"), "--pool", "default", "--name", "base.qcow2"]);
    let io = |img: &Path, cmd: &str| sh("qemu-io", &["-f", "qcow2", "-c", cmd, img.to_str().unwrap()]);
    for (name, opts) in
        [("xl2-top.qcow2", "extended_l2=on"), ("v3-top.qcow2", "compat=1.1"), ("v2-top.qcow2", "compat=0.10")]
    {
        let top = c.pool(name);
        let o = format!("{opts},backing_file=base.qcow2,backing_fmt=qcow2");
        sh("qemu-img", &["create", "-f", "qcow2", "-o", &o, top.to_str().unwrap()]);
        // Partial-cluster writes (a few subclusters of a cluster), zeroed ranges over data
        // in the base (zero clusters or zero subclusters), an unmapped range, and a
        // compressed write.
        io(&top, "write -P 0x11 4k 6k");
        io(&top, "write -P 0x22 1M 2k");
        io(&top, "write -z 2M 8k");
        io(&top, "write -z 3M 128k");
        io(&top, "write -P 0x33 3M 4k");
        io(&top, "discard 6M 64k");
        io(&top, "write -c -P 0x44 7M 64k");
        let flat = format!("flat-{name}");
        k.ok(&["vol-clone", name, &flat, "--pool", "default"]);
        let flat = c.pool(&flat);
        qemu_img_check(&flat);
        sh("qemu-img", &["compare", "-f", "qcow2", "-F", "qcow2", top.to_str().unwrap(), flat.to_str().unwrap()]);
    }
}

#[test]
fn dirty_images_read_as_repaired_and_refused_while_a_qemu_writes_them() {
    if !qemu_tools() {
        return;
    }
    let c = Corpus::new();
    convert(&c, "dirty.qcow2", false, "lazy_refcounts=on");
    // qemu-io's abort leaves the image as a crashed qemu would: dirty bit set, refcounts of
    // the new clusters never written.
    let o = bounded_output(std::process::Command::new("qemu-io").args([
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 5M 192k",
        "-c",
        "abort",
        &c.p("dirty.qcow2"),
    ]));
    assert!(!o.status.success(), "qemu-io abort exits by signal");
    let info = qemu_img_info(Path::new(&c.p("dirty.qcow2")));
    assert_eq!(info["dirty-flag"], true, "{info}");
    c.import_and_compare("dirty.qcow2");
    assert!(!qemu_img_info(&c.pool("imp-dirty.qcow2"))["dirty-flag"].as_bool().unwrap_or(false));
    // vol-info says so, and a copy is allowed.
    std::fs::copy(c.p("dirty.qcow2"), c.pool("d.qcow2")).unwrap();
    let vi = c.k.ok(&["vol-info", "d.qcow2", "--pool", "default"]);
    assert!(vi.contains("dirty: not closed cleanly"), "{vi}");
    c.k.ok(&["vol-clone", "d.qcow2", "d2.qcow2", "--pool", "default"]);
    sh("qemu-img", &["compare", &c.p("dirty.qcow2"), c.pool("d2.qcow2").to_str().unwrap()]);
    // Open for writing by a running qemu (qemu-io holding it): refused, nothing written.
    let mut holder = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", &c.p("dirty.qcow2")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let o = bounded_output(std::process::Command::new("qemu-img").args(["info", "-U", &c.p("dirty.qcow2")]));
        o.status.success()
            && !bounded_output(std::process::Command::new("qemu-img").args(["info", &c.p("dirty.qcow2")]))
                .status
                .success()
    });
    assert!(held, "qemu-io took its lock");
    let e = c.refused("dirty.qcow2", &["open for writing"]);
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert!(e.contains("shut down"), "{e}");
}

#[test]
fn encrypted_external_data_and_bitmap_images_are_refused_by_name() {
    if !qemu_tools() {
        return;
    }
    let c = Corpus::new();
    // qemu-img's LUKS creation benchmarks PBKDF on the thread's CPU time, which sandboxed
    // hosts do not report ("Unable to get accurate CPU usage"): the header's crypt_method is
    // what marks an image encrypted, so set it on a plain image (2 = LUKS, 1 = AES).
    convert(&c, "plain.qcow2", false, "");
    for (name, method) in [("luks.qcow2", 2u32), ("aes.qcow2", 1)] {
        let mut b = std::fs::read(c.p("plain.qcow2")).unwrap();
        b[32..36].copy_from_slice(&method.to_be_bytes());
        std::fs::write(c.p(name), &b).unwrap();
    }
    c.refused("aes.qcow2", &["AES encryption", "holds no keys"]);
    c.refused("luks.qcow2", &["LUKS encryption", "holds no keys"]);
    let ext = c.p("ext.qcow2");
    sh("qemu-img", &["create", "-f", "qcow2", "-o", &format!("data_file={}", c.p("ext.data")), &ext, "16M"]);
    c.refused("ext.qcow2", &["external data file"]);
    convert(&c, "bm.qcow2", false, "");
    sh("qemu-img", &["bitmap", "--add", &c.p("bm.qcow2"), "backup-0"]);
    sh("qemu-img", &["bitmap", "--add", &c.p("bm.qcow2"), "inc-1"]);
    c.refused("bm.qcow2", &["'backup-0', 'inc-1'", "would lose", "qemu-img bitmap --remove"]);
    // In the pool: vol-info names them; a full clone is refused, a linked one keeps them.
    std::fs::copy(c.p("bm.qcow2"), c.pool("bm.qcow2")).unwrap();
    assert!(c.k.ok(&["vol-info", "bm.qcow2", "--pool", "default"]).contains("backup-0, inc-1"));
    let e = c.k.fails(1, &["vol-clone", "bm.qcow2", "bm-full.qcow2", "--pool", "default"]);
    assert!(e.contains("'backup-0', 'inc-1'"), "{e}");
    c.nothing_left("bm-full");
    c.k.ok(&["vol-clone", "bm.qcow2", "bm-linked.qcow2", "--pool", "default", "--linked"]);
}

#[test]
fn truncated_and_bit_flipped_images_are_refused_with_the_reason_and_nothing_left() {
    if !qemu_tools() {
        return;
    }
    let c = Corpus::new();
    convert(&c, "z.qcow2", true, "compression_type=zstd");
    convert(&c, "x.qcow2", false, "extended_l2=on");
    convert(&c, "g.qcow2", true, "");
    let bytes = |n: &str| std::fs::read(c.p(n)).unwrap();
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l2_of = |b: &[u8]| (be64(b, be64(b, 40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    // Truncated: the header survives, the data does not.
    for src in ["z.qcow2", "x.qcow2"] {
        let b = bytes(src);
        let name = format!("trunc-{src}");
        std::fs::write(c.p(&name), &b[..b.len() / 3]).unwrap();
        c.refused(&name, &["corrupt"]);
    }
    // A zstd frame with its content damaged.
    let mut z = bytes("z.qcow2");
    let l2 = l2_of(&z);
    let e = (0..8192).map(|i| be64(&z, l2 + 8 * i)).find(|e| e & (1 << 62) != 0).expect("a compressed cluster");
    let at = (e & ((1 << 54) - 1)) as usize;
    z[at..at + 4].copy_from_slice(b"junk");
    std::fs::write(c.p("zbad.qcow2"), &z).unwrap();
    c.refused("zbad.qcow2", &["corrupt", "compressed cluster", "zstd frame"]);
    // A zlib cluster whose descriptor is stretched (more sectors than the stream): still the
    // cluster's bytes exactly, or refused; here the stream is spliced with a second one so
    // that it inflates past the cluster.
    let mut g = bytes("g.qcow2");
    let l2 = l2_of(&g);
    let (i, e) =
        (0..8192).map(|i| (i, be64(&g, l2 + 8 * i))).find(|(_, e)| e & (1 << 62) != 0).expect("a compressed cluster");
    let at = (e & ((1 << 54) - 1)) as usize;
    // A stored (uncompressed) deflate block of 65535 bytes + a final one of 2 bytes:
    // 65537 bytes, one past the 64 KiB cluster.
    let mut bomb = vec![0x00, 0xff, 0xff, 0x00, 0x00];
    bomb.extend(std::iter::repeat_n(0x42u8, 65535));
    bomb.extend([0x01, 0x02, 0x00, 0xfd, 0xff, 0x42, 0x42]);
    let sectors = (bomb.len() + (at & 511)).div_ceil(512) as u64;
    let desc = (1u64 << 62) | ((sectors - 1) << 54) | at as u64;
    if g.len() < at + bomb.len() {
        g.resize(at + bomb.len(), 0);
    }
    g[at..at + bomb.len()].copy_from_slice(&bomb);
    g[l2 + 8 * i..l2 + 8 * i + 8].copy_from_slice(&desc.to_be_bytes());
    std::fs::write(c.p("gbomb.qcow2"), &g).unwrap();
    c.refused("gbomb.qcow2", &["corrupt", "inflates past the cluster"]);
    // An extended L2 entry whose bitmap says a subcluster is both allocated and zero.
    let mut x = bytes("x.qcow2");
    let l2 = l2_of(&x);
    let i = (0..4096).find(|i| be64(&x, l2 + 16 * i) != 0).expect("an allocated cluster");
    let bm = be64(&x, l2 + 16 * i + 8) | (1 << 32) | 1;
    x[l2 + 16 * i + 8..l2 + 16 * i + 16].copy_from_slice(&bm.to_be_bytes());
    std::fs::write(c.p("xbad.qcow2"), &x).unwrap();
    c.refused("xbad.qcow2", &["corrupt", "invalid subcluster bitmap"]);
    // An L2 entry pointing past the end of the file.
    let mut v = bytes("x.qcow2");
    let desc = (1u64 << 63) | (1u64 << 50);
    v[l2 + 16 * i..l2 + 16 * i + 8].copy_from_slice(&desc.to_be_bytes());
    std::fs::write(c.p("far.qcow2"), &v).unwrap();
    c.refused("far.qcow2", &["corrupt", "outside the file"]);
}

/// Extents of `img` that hold data but no host offset: `qemu-img map` gives compressed
/// clusters none.
fn compressed_extents(img: &str) -> usize {
    let map: serde_json::Value =
        serde_json::from_str(&sh("qemu-img", &["map", "--output=json", "-f", "qcow2", img])).unwrap();
    map.as_array().unwrap().iter().filter(|e| e["data"] == true && e.get("offset").is_none()).count()
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// `qemu-img check` finds nothing wrong: no errors, no leaks (it exits non-zero for either).
fn checks_clean(img: &Path) {
    let out = sh("qemu-img", &["check", img.to_str().unwrap()]);
    assert!(out.contains("No errors were found on the image."), "{}: {out}", img.display());
}

/// `--compress` writes what `qemu-img convert -c` writes: compressed clusters (zlib) packed
/// several to a host cluster, which qemu reads back as the source and `qemu-img check`
/// finds consistent (each host cluster counted once per compressed cluster touching it).
#[test]
fn compressed_copies_read_as_their_source_check_clean_and_are_smaller() {
    if !qemu_tools() {
        return;
    }
    let c = Corpus::new();
    let k = &c.k;
    let variants: &[(&str, bool, &str)] = &[
        ("v3.qcow2", false, ""),
        ("zlib.qcow2", true, ""),
        ("zstd-4k.qcow2", true, "compression_type=zstd,cluster_size=4096"),
        ("xl2-2m.qcow2", false, "extended_l2=on,cluster_size=2M"),
    ];
    for (name, compress, opts) in variants {
        convert(&c, name, *compress, opts);
        let (z, u) = (format!("z-{name}"), format!("u-{name}"));
        k.ok(&["vol-import", &c.p(name), "--pool", "default", "--name", &z, "--compress"]);
        k.ok(&["vol-import", &c.p(name), "--pool", "default", "--name", &u]);
        let (z, u) = (c.pool(&z), c.pool(&u));
        checks_clean(&z);
        sh("qemu-img", &["compare", "-f", "qcow2", "-F", "qcow2", &c.p(name), z.to_str().unwrap()]);
        sh("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", c.raw(), z.to_str().unwrap()]);
        let info = qemu_img_info(&z);
        assert_eq!(info["format-specific"]["data"]["compression-type"], "zlib", "{info}");
        assert!(compressed_extents(z.to_str().unwrap()) > 0, "{name}: compressed clusters written");
        assert_eq!(compressed_extents(u.to_str().unwrap()), 0, "{name}: without --compress, none");
        assert!(file_len(&z) * 10 < file_len(&u) * 9, "{name}: {} not smaller than {}", file_len(&z), file_len(&u));
    }
    // A raw source converted to qcow2, compressed.
    k.ok(&["vol-import", c.raw(), "--pool", "default", "--name", "raw-z.qcow2", "--format", "qcow2", "--compress"]);
    let rz = c.pool("raw-z.qcow2");
    checks_clean(&rz);
    sh("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", c.raw(), rz.to_str().unwrap()]);
    // A compressed full clone of an overlay over a compressed base flattens it.
    let top = c.pool("top.qcow2");
    sh("qemu-img", &["create", "-f", "qcow2", "-b", "z-zlib.qcow2", "-F", "qcow2", top.to_str().unwrap()]);
    sh(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x61 1M 200k", "-c", "write -c -P 0x62 4M 64k", top.to_str().unwrap()],
    );
    k.ok(&["vol-clone", "top.qcow2", "flat.qcow2", "--pool", "default", "--compress"]);
    let flat = c.pool("flat.qcow2");
    checks_clean(&flat);
    assert!(qemu_img_info(&flat)["backing-filename"].is_null());
    sh("qemu-img", &["compare", "-f", "qcow2", "-F", "qcow2", top.to_str().unwrap(), flat.to_str().unwrap()]);
}

/// Clusters that do not shrink are written as they are: random data round-trips, with no
/// compressed cluster, in about the space of an uncompressed copy; the short last cluster
/// of an odd-sized disk round-trips too.
#[test]
fn incompressible_data_round_trips_under_compress() {
    if !qemu_tools() {
        return;
    }
    let c = Corpus::new();
    let k = &c.k;
    let mut x = 0x5851_f42d_4c95_7f2du64;
    let random: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(c.p("random.raw"), &random).unwrap();
    k.ok(&[
        "vol-import",
        &c.p("random.raw"),
        "--pool",
        "default",
        "--name",
        "r.qcow2",
        "--format",
        "qcow2",
        "--compress",
    ]);
    let r = c.pool("r.qcow2");
    checks_clean(&r);
    sh("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", &c.p("random.raw"), r.to_str().unwrap()]);
    assert_eq!(compressed_extents(r.to_str().unwrap()), 0, "nothing shrank");
    assert!(file_len(&r) >= random.len() as u64, "all data is there as it is");
    assert!(file_len(&r) < random.len() as u64 + (1 << 20), "plus metadata only: {}", file_len(&r));
    // Random with a compressible cluster in the middle and a short one at the odd-sized end
    // (4608 bytes: deflated padded with zeros, as the guest reads it).
    let mut mixed = random.clone();
    mixed[1 << 20..(1 << 20) + 65536].fill(0x42);
    mixed.extend([0x43; 4608]);
    std::fs::write(c.p("mixed.raw"), &mixed).unwrap();
    k.ok(&[
        "vol-import",
        &c.p("mixed.raw"),
        "--pool",
        "default",
        "--name",
        "m.qcow2",
        "--format",
        "qcow2",
        "--compress",
    ]);
    let m = c.pool("m.qcow2");
    checks_clean(&m);
    sh("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", &c.p("mixed.raw"), m.to_str().unwrap()]);
    assert_eq!(compressed_extents(m.to_str().unwrap()), 2, "the two runs of one byte");
}
