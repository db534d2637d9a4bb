//! Install media: the ISO 9660 reader against images that xorriso makes (Rock Ridge, Joliet,
//! plain, relocated deep directories, long names), the writer's images read back by xorriso,
//! isoinfo, our reader and a real Linux kernel (the test guest under qemu), `--location`
//! layouts, and `--cloud-init` seeds. Needs xorriso; the kernel test needs qemu and images/out.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{have_program, require, sh, Bounded};
use kvmctl::media::location::LAYOUTS;
use kvmctl::media::{build_seed, find_boot_files, BootFile, CloudInitOpts, Iso, IsoWriter, MediaError, Naming};

fn xorriso() -> bool {
    require("xorriso (apt-get install xorriso)", have_program("xorriso"))
}

/// Write `files` (path, content) under `root`.
fn tree(root: &Path, files: &[(&str, &[u8])]) {
    for (p, data) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// `xorriso -as mkisofs` of `dir` into `out`, with extra mkisofs options.
fn mkisofs(dir: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["-as", "mkisofs", "-quiet", "-o", out.to_str().unwrap(), "-V", "TESTVOL"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    sh("xorriso", &args);
}

/// A temp dir with a tree in `t/` made into `x.iso`.
fn iso_of(files: &[(&str, &[u8])], extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    tree(&d.path().join("t"), files);
    let iso = d.path().join("x.iso");
    mkisofs(&d.path().join("t"), &iso, extra);
    (d, iso)
}

fn names(iso: &Iso, dir: &str) -> Vec<String> {
    let mut n: Vec<String> = iso.read_dir(dir).unwrap().into_iter().map(|e| e.name).collect();
    n.sort();
    n
}

fn read(iso: &Iso, path: &str) -> Vec<u8> {
    let e = iso.find(path).unwrap().unwrap_or_else(|| panic!("{path} not found"));
    iso.read_file(&e).unwrap()
}

const DEBIAN_INFO: &[u8] =
    b"Debian GNU/Linux 12.5.0 \"Bookworm\" - Official amd64 NETINST with firmware 20240210-11:28\n";

// ------------------------------------------------------------------------------------------
// Reader against xorriso's images

#[test]
fn debian_rock_ridge_iso_yields_install_amd_kernel_initrd_and_disk_info_label() {
    if !xorriso() {
        return;
    }
    let files: &[(&str, &[u8])] = &[
        ("install.amd/vmlinuz", b"debian kernel"),
        ("install.amd/initrd.gz", b"debian initrd"),
        ("install.amd/gtk/vmlinuz", b"gtk kernel"),
        (".disk/info", DEBIAN_INFO),
    ];
    let (d, path) = iso_of(files, &["-J"]);
    let iso = Iso::open(&path).unwrap();
    assert_eq!(iso.naming(), Naming::RockRidge);
    assert_eq!(iso.volume_id(), "TESTVOL");
    assert_eq!(names(&iso, "/"), [".disk", "install.amd"]);
    assert_eq!(names(&iso, "install.amd"), ["gtk", "initrd.gz", "vmlinuz"]);

    let b = find_boot_files(&path, None, None).unwrap();
    assert_eq!(b.layout, "debian");
    assert!(b.is_iso());
    assert_eq!(
        b.distro.as_deref(),
        Some(r#"Debian GNU/Linux 12.5.0 "Bookworm" - Official amd64 NETINST with firmware 20240210-11:28"#)
    );
    assert_eq!(b.volume_id.as_deref(), Some("TESTVOL"));
    assert_eq!(b.kernel.describe(), "install.amd/vmlinuz");
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let p = b.extract_to(&run).unwrap();
    assert_eq!(p.kernel, run.join("vmlinuz"));
    assert_eq!(std::fs::read(&p.kernel).unwrap(), b"debian kernel");
    assert_eq!(std::fs::read(&p.initrd).unwrap(), b"debian initrd");
    let leftovers: Vec<_> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temp files left: {leftovers:?}");
}

#[test]
fn ubuntu_casper_joliet_only_iso_is_read_by_joliet_names() {
    if !xorriso() {
        return;
    }
    let files: &[(&str, &[u8])] = &[
        ("casper/vmlinuz", b"ubuntu kernel"),
        ("casper/initrd", b"ubuntu initrd"),
        ("casper/filesystem.squashfs", b"squash"),
        (".disk/info", b"Ubuntu-Server 24.04 LTS \"Noble Numbat\" - Release amd64 (20240423)\n"),
    ];
    let (_d, path) = iso_of(files, &["--norock", "-J"]);
    let iso = Iso::open(&path).unwrap();
    assert_eq!(iso.naming(), Naming::Joliet);
    assert_eq!(names(&iso, "casper"), ["filesystem.squashfs", "initrd", "vmlinuz"]);
    let b = find_boot_files(&path, None, None).unwrap();
    assert_eq!(b.layout, "ubuntu-casper");
    assert_eq!(b.initrd.describe(), "casper/initrd");
    assert!(b.distro.unwrap().starts_with("Ubuntu-Server 24.04"));
}

#[test]
fn casper_initrd_lz_and_gz_variants_are_found() {
    for initrd in ["casper/initrd.lz", "casper/initrd.gz"] {
        let d = tempfile::tempdir().unwrap();
        tree(d.path(), &[("casper/vmlinuz", b"k"), (initrd, b"i")]);
        let b = find_boot_files(d.path(), None, None).unwrap();
        assert_eq!((b.layout.as_str(), b.initrd), ("ubuntu-casper", BootFile::Path(d.path().join(initrd))));
    }
}

#[test]
fn fedora_pxeboot_iso_layout_and_treeinfo_label() {
    if !xorriso() {
        return;
    }
    let treeinfo = b"[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n[release]\nname = Fedora\nshort = Fedora\nversion = 40\n";
    let files: &[(&str, &[u8])] = &[
        ("images/pxeboot/vmlinuz", b"fedora kernel"),
        ("images/pxeboot/initrd.img", b"fedora initrd"),
        (".treeinfo", treeinfo),
    ];
    let (d, path) = iso_of(files, &["-J"]);
    let b = find_boot_files(&path, None, None).unwrap();
    assert_eq!(b.layout, "fedora");
    assert_eq!(b.distro.as_deref(), Some("Fedora 40"));
    let p = b.extract_to(d.path()).unwrap();
    assert_eq!(std::fs::read(p.initrd).unwrap(), b"fedora initrd");
}

#[test]
fn netboot_opensuse_and_debian_install_layouts_are_found_in_directory_trees() {
    let cases: &[(&str, &str, &str)] = &[
        ("debian-netboot", "debian-installer/amd64/linux", "debian-installer/amd64/initrd.gz"),
        ("opensuse", "boot/x86_64/loader/linux", "boot/x86_64/loader/initrd"),
        ("debian-install", "install/vmlinuz", "install/initrd.gz"),
    ];
    for (layout, k, i) in cases {
        let d = tempfile::tempdir().unwrap();
        tree(d.path(), &[(k, b"k"), (i, b"i")]);
        let b = find_boot_files(d.path(), None, None).unwrap();
        assert_eq!(b.layout, *layout);
        assert!(!b.is_iso());
        let p = b.extract_to(Path::new("/nonexistent")).unwrap();
        assert_eq!((p.kernel, p.initrd), (d.path().join(k), d.path().join(i)), "tree paths, nothing copied");
    }
}

#[test]
fn layouts_are_tried_in_order_and_a_kernel_without_initrd_does_not_match() {
    let d = tempfile::tempdir().unwrap();
    // install.amd has a kernel but no initrd: the Fedora layout behind it wins.
    tree(
        d.path(),
        &[("install.amd/vmlinuz", b"k"), ("images/pxeboot/vmlinuz", b"fk"), ("images/pxeboot/initrd.img", b"fi")],
    );
    assert_eq!(find_boot_files(d.path(), None, None).unwrap().layout, "fedora");
    tree(d.path(), &[("install.amd/initrd.gz", b"i")]);
    assert_eq!(find_boot_files(d.path(), None, None).unwrap().layout, "debian");
}

#[test]
fn plain_iso_without_extensions_matches_install_amd_as_d_characters() {
    if !xorriso() {
        return;
    }
    let files: &[(&str, &[u8])] = &[("install.amd/vmlinuz", b"kernel"), ("install.amd/initrd.gz", b"initrd")];
    let (_d, path) = iso_of(files, &["--norock"]);
    let iso = Iso::open(&path).unwrap();
    assert_eq!(iso.naming(), Naming::Plain);
    assert_eq!(names(&iso, "/INSTALL.AMD"), ["INITRD.GZ", "VMLINUZ"], "version ';1' and the trailing dot stripped");
    assert_eq!(read(&iso, "install.amd/vmlinuz"), b"kernel", "case-insensitive");
    assert_eq!(read(&iso, "INSTALL.AMD/VMLINUZ.;1"), b"kernel", "the raw ISO name works too");
    assert_eq!(find_boot_files(&path, None, None).unwrap().layout, "debian");
}

#[test]
fn rock_ridge_relocated_deep_directories_are_followed_and_rr_moved_is_hidden() {
    if !xorriso() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let deep: String = (1..=11).map(|i| format!("level{i}/")).collect();
    tree(&d.path().join("t"), &[(&format!("{deep}file.txt"), b"deep"), ("top.txt", b"top")]);
    let out = d.path().join("reloc.iso");
    let map = d.path().join("t");
    sh(
        "xorriso",
        &[
            "-compliance",
            "deep_paths_off",
            "-rr_reloc_dir",
            "rr_moved",
            "-outdev",
            out.to_str().unwrap(),
            "-map",
            map.to_str().unwrap(),
            "/",
            "-commit",
        ],
    );
    let plain = sh("xorriso", &["-read_fs", "ecma119", "-indev", out.to_str().unwrap(), "-find", "/", "-type", "d"]);
    assert!(
        plain.to_ascii_uppercase().contains("'/RR_MOVED/LEVEL8'"),
        "xorriso relocated the deep directories: {plain}"
    );
    let iso = Iso::open(&out).unwrap();
    assert_eq!(iso.naming(), Naming::RockRidge);
    assert_eq!(read(&iso, &format!("{deep}file.txt")), b"deep");
    assert_eq!(names(&iso, "level1/level2/level3/level4/level5/level6/level7"), ["level8"]);
    // As xorriso shows it: the relocation directory and the relocated copies (RE) are hidden.
    assert_eq!(names(&iso, "/"), ["level1", "top.txt"]);
}

#[test]
fn long_rock_ridge_names_and_mixed_case_are_read_whole() {
    if !xorriso() {
        return;
    }
    let long = format!("{}-End.Of.Name", "Long_name-".repeat(22));
    assert!(long.len() > 220);
    let p = format!("Dir With Spaces/{long}");
    let (_d, path) = iso_of(&[(&p, b"long"), ("MiXeD/CaSe.TxT", b"mixed")], &[]);
    let iso = Iso::open(&path).unwrap();
    assert_eq!(names(&iso, "Dir With Spaces"), std::slice::from_ref(&long));
    assert_eq!(read(&iso, &p), b"long");
    assert_eq!(names(&iso, "mixed"), ["CaSe.TxT"], "exact Rock Ridge case is kept, lookup ignores case");
}

#[test]
fn joliet_deep_tree_and_64_character_names_are_found() {
    if !xorriso() {
        return;
    }
    let deep: String = (1..=10).map(|i| format!("Sub{i}/")).collect();
    let name64 = format!("{}.bin", "x".repeat(60));
    let p = format!("{deep}{name64}");
    let (_d, path) = iso_of(&[(&p, b"joliet deep")], &["--norock", "-J"]);
    let iso = Iso::open(&path).unwrap();
    assert_eq!(iso.naming(), Naming::Joliet);
    assert_eq!(read(&iso, &p), b"joliet deep");
    assert_eq!(names(&iso, &deep), [name64]);
}

#[test]
fn extract_streams_a_large_initrd_byte_for_byte() {
    if !xorriso() {
        return;
    }
    let big: Vec<u8> = (0..(20u32 << 20) + 123).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let (d, path) = iso_of(&[("images/pxeboot/vmlinuz", b"k"), ("images/pxeboot/initrd.img", &big)], &[]);
    let b = find_boot_files(&path, None, None).unwrap();
    let BootFile::Iso { entry, .. } = &b.initrd else { panic!("not in the ISO: {:?}", b.initrd) };
    assert_eq!(entry.size, big.len() as u64);
    let p = b.extract_to(d.path()).unwrap();
    assert!(std::fs::read(p.initrd).unwrap() == big, "extracted initrd differs");
}

#[test]
fn kernel_and_initrd_overrides_win_over_layouts() {
    if !xorriso() {
        return;
    }
    let files: &[(&str, &[u8])] = &[
        ("install.amd/vmlinuz", b"k"),
        ("install.amd/initrd.gz", b"i"),
        ("custom/bzImage", b"custom kernel"),
        ("custom/ramdisk", b"custom initrd"),
    ];
    let (_d, path) = iso_of(files, &[]);
    let both = find_boot_files(&path, Some("custom/bzImage"), Some("/custom/ramdisk")).unwrap();
    assert_eq!(
        (both.layout.as_str(), both.kernel.describe(), both.initrd.describe()),
        ("custom", "custom/bzImage".into(), "custom/ramdisk".into())
    );
    let k_only = find_boot_files(&path, Some("custom/bzImage"), None).unwrap();
    assert_eq!((k_only.layout.as_str(), k_only.initrd.describe()), ("debian", "install.amd/initrd.gz".into()));
    let e = find_boot_files(&path, None, Some("custom/missing")).unwrap_err();
    assert!(matches!(e, MediaError::BootFileMissing { key: "initrd", .. }), "{e}");
    assert!(e.to_string().contains("initrd=custom/missing"), "{e}");
}

// ------------------------------------------------------------------------------------------
// Bad input

#[test]
fn raw_file_directory_and_small_file_are_not_iso() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let small = d.path().join("small");
    std::fs::write(&small, b"CD001").unwrap();
    for p in [&raw, &small, &d.path().to_path_buf()] {
        let e = Iso::open(p).unwrap_err();
        assert!(matches!(&e, MediaError::NotIso { path } if path == p), "{e}");
        assert!(e.to_string().contains("not an ISO 9660 image"), "{e}");
    }
    // A file location that is no ISO: the same error from find_boot_files.
    assert!(matches!(find_boot_files(&raw, None, None), Err(MediaError::NotIso { .. })));
}

#[test]
fn missing_location_is_an_io_error_naming_it() {
    let e = find_boot_files(Path::new("/nonexistent/debian.iso"), None, None).unwrap_err();
    assert!(matches!(e, MediaError::Io { .. }), "{e}");
    assert!(e.to_string().starts_with("/nonexistent/debian.iso: "), "{e}");
}

#[test]
fn truncated_iso_is_an_error_not_a_panic() {
    if !xorriso() {
        return;
    }
    let (d, path) = iso_of(&[("install.amd/vmlinuz", &[1u8; 300_000]), ("install.amd/initrd.gz", b"i")], &["-J"]);
    let full = std::fs::read(&path).unwrap();
    let cut = d.path().join("cut.iso");
    for len in [full.len() - 2048, full.len() / 2, 40 * 2048, 17 * 2048, 16 * 2048 + 100] {
        std::fs::write(&cut, &full[..len]).unwrap();
        let e = Iso::open(&cut).unwrap_err();
        assert!(matches!(e, MediaError::Truncated { .. } | MediaError::NotIso { .. }), "cut at {len}: {e}");
    }
    // A lying volume size: open succeeds, reading the missing data fails.
    let mut lying = full[..full.len() / 2].to_vec();
    let sectors = (lying.len() / 2048) as u32;
    lying[16 * 2048 + 80..16 * 2048 + 84].copy_from_slice(&sectors.to_le_bytes());
    std::fs::write(&cut, &lying).unwrap();
    let iso = Iso::open(&cut).unwrap();
    let mut errors = 0;
    for p in ["install.amd/vmlinuz", "install.amd/initrd.gz"] {
        match iso.find(p) {
            Ok(Some(e)) => match iso.read_file(&e) {
                Ok(data) => assert_eq!(data.len() as u64, e.size),
                Err(err) => {
                    assert!(matches!(err, MediaError::Truncated { .. }), "{err}");
                    errors += 1;
                }
            },
            Ok(None) => panic!("{p} vanished"),
            Err(err) => {
                assert!(matches!(err, MediaError::Truncated { .. }), "{err}");
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "something past the cut must fail to read");
}

#[test]
fn entry_pointing_past_the_end_is_refused() {
    let img = seed_writer().build().unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.iso");
    std::fs::write(&p, &img).unwrap();
    let iso = Iso::open(&p).unwrap();
    let mut e = iso.find("meta-data").unwrap().unwrap();
    e.extent = u32::MAX;
    assert!(matches!(iso.read_file(&e), Err(MediaError::Truncated { .. })));
    assert!(matches!(iso.copy_file(&e, &d.path().join("out")), Err(MediaError::Truncated { .. })));
    assert!(!d.path().join("out").exists());
    let dir = iso.find("/").unwrap().unwrap();
    assert!(matches!(iso.read_file(&dir), Err(MediaError::IsADirectory { .. })));
    assert!(matches!(iso.read_dir("meta-data"), Err(MediaError::NotADirectory { .. })));
    assert!(matches!(iso.read_dir("nope"), Err(MediaError::NotInIso { .. })));
}

#[test]
fn location_without_kernel_lists_every_path_tried() {
    let d = tempfile::tempdir().unwrap();
    tree(d.path(), &[("README", b"nothing here"), ("casper/vmlinuz", b"kernel but no initrd")]);
    let e = find_boot_files(d.path(), None, None).unwrap_err();
    let MediaError::NoBootFiles { tried, .. } = &e else { panic!("{e}") };
    for l in LAYOUTS {
        assert!(tried.iter().any(|t| t == l.kernels[0]), "{} not listed: {tried:?}", l.kernels[0]);
    }
    for i in ["casper/initrd", "casper/initrd.gz", "casper/initrd.lz"] {
        assert!(tried.iter().any(|t| t == i), "{i} not listed");
    }
    let msg = e.to_string();
    assert!(msg.contains("install.amd/vmlinuz") && msg.contains("images/pxeboot/vmlinuz"), "{msg}");
    assert!(msg.contains("kernel=PATH,initrd=PATH"), "{msg}");
}

#[test]
fn iso_without_kernel_lists_every_path_tried() {
    if !xorriso() {
        return;
    }
    let (_d, path) = iso_of(&[("EFI/boot/bootx64.efi", b"efi")], &["-J"]);
    let e = find_boot_files(&path, None, None).unwrap_err();
    let MediaError::NoBootFiles { tried, location } = &e else { panic!("{e}") };
    assert_eq!(location, &path);
    assert_eq!(tried.len(), LAYOUTS.iter().map(|l| l.kernels.len()).sum::<usize>(), "{tried:?}");
}

// ------------------------------------------------------------------------------------------
// Writer, checked by other readers

fn seed_writer() -> IsoWriter {
    let mut w = IsoWriter::new("cidata").unwrap();
    w.fixed_time(1_700_000_000);
    w.add_file("meta-data", "instance-id: iid-1\nlocal-hostname: vm1\n").unwrap();
    w.add_file("user-data", "#cloud-config\nhostname: vm1\n").unwrap();
    w.add_file("network-config", "version: 2\n").unwrap();
    w.add_file("docs/Some.Long-File name (v2).txt", vec![b'z'; 7000]).unwrap();
    w.add_file("empty-file", Vec::new()).unwrap();
    w.add_dir("empty-dir").unwrap();
    w
}

fn written(w: &IsoWriter) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("w.iso");
    w.write_to(&p).unwrap();
    (d, p)
}

#[test]
fn writer_output_lists_and_extracts_with_xorriso_byte_for_byte() {
    if !xorriso() {
        return;
    }
    let w = seed_writer();
    for (rr, joliet) in [(true, true), (true, false), (false, true)] {
        let mut w = w.clone();
        w.rock_ridge(rr).joliet(joliet);
        let (d, p) = written(&w);
        let dev = p.to_str().unwrap();
        let load = ["-abort_on", "WARNING", "-return_with", "WARNING", "32"];
        // Each tree on its own: Rock Ridge (or what there is), Joliet (norock), ISO names.
        for (fs, present) in [("any", true), ("norock", joliet)] {
            if !present {
                continue;
            }
            let find =
                sh("xorriso", &[&load[..], &["-read_fs", fs, "-indev", dev, "-find", "/", "-exec", "lsdl"]].concat());
            for name in
                ["/meta-data", "/user-data", "/network-config", "/docs/Some.Long-File name (v2).txt", "/empty-dir"]
            {
                assert!(find.contains(&format!("'{name}'")), "rr={rr} joliet={joliet} {fs}: {name} missing in\n{find}");
            }
            if rr && fs == "any" {
                assert!(find.contains("-r--r--r--") && find.contains("dr-xr-xr-x"), "Rock Ridge modes: {find}");
            }
        }
        let plain = sh("xorriso", &[&load[..], &["-read_fs", "ecma119", "-indev", dev, "-find", "/"]].concat());
        for name in ["'/META_DATA'", "'/DOCS/SOME_LONG_FILE_NAME__V2_.TXT'", "'/EMPTY_DIR'"] {
            assert!(plain.contains(name), "{name} in {plain}");
        }
        let out = d.path().join("x");
        sh(
            "xorriso",
            &[&load[..], &["-osirrox", "on", "-indev", dev, "-extract", "/", out.to_str().unwrap()]].concat(),
        );
        assert_eq!(std::fs::read(out.join("meta-data")).unwrap(), b"instance-id: iid-1\nlocal-hostname: vm1\n");
        assert_eq!(std::fs::read(out.join("docs/Some.Long-File name (v2).txt")).unwrap(), vec![b'z'; 7000]);
        assert_eq!(std::fs::read(out.join("empty-file")).unwrap(), b"");
        assert!(out.join("empty-dir").is_dir());
        let pvd = sh("xorriso", &["-indev", dev, "-pvd_info"]);
        assert!(pvd.contains("Volume Id    : cidata"), "{pvd}");
    }
}

#[test]
fn writer_output_passes_isoinfo_with_rock_ridge_and_joliet() {
    if !have_program("isoinfo") {
        eprintln!("SKIP: isoinfo (genisoimage) not installed; xorriso and the guest kernel check the writer");
        return;
    }
    let (_d, p) = written(&seed_writer());
    let dev = p.to_str().unwrap();
    let info = sh("isoinfo", &["-d", "-i", dev]);
    for want in ["Volume id: cidata", "Joliet with UCS level 3 found", "Rock Ridge signatures version 1 found"] {
        assert!(info.contains(want), "{want} in\n{info}");
    }
    for mode in ["-R", "-J"] {
        let f = sh("isoinfo", &[mode, "-f", "-i", dev]);
        let lines: Vec<&str> = f.lines().collect();
        for want in ["/meta-data", "/user-data", "/network-config", "/docs/Some.Long-File name (v2).txt"] {
            assert!(lines.contains(&want), "isoinfo {mode}: {want} in {lines:?}");
        }
        let x = Command::new("isoinfo").args([mode, "-i", dev, "-x", "/meta-data"]).bounded();
        assert_eq!(x.stdout, b"instance-id: iid-1\nlocal-hostname: vm1\n");
    }
    let plain = sh("isoinfo", &["-f", "-i", dev]);
    assert!(plain.lines().any(|l| l == "/META_DATA.;1"), "{plain}");
}

#[test]
fn writer_output_reads_back_with_our_reader_in_each_naming() {
    for (rr, joliet, naming) in
        [(true, true, Naming::RockRidge), (false, true, Naming::Joliet), (false, false, Naming::Plain)]
    {
        let mut w = seed_writer();
        w.rock_ridge(rr).joliet(joliet);
        let (_d, p) = written(&w);
        let iso = Iso::open(&p).unwrap();
        assert_eq!((iso.naming(), iso.volume_id()), (naming, "cidata"));
        assert_eq!(read(&iso, "meta-data"), b"instance-id: iid-1\nlocal-hostname: vm1\n");
        assert_eq!(read(&iso, "docs/Some.Long-File name (v2).txt"), vec![b'z'; 7000]);
        if naming != Naming::Plain {
            assert_eq!(
                names(&iso, "/"),
                ["docs", "empty-dir", "empty-file", "meta-data", "network-config", "user-data"]
            );
        }
    }
}

#[test]
fn writer_is_byte_identical_for_identical_inputs_with_fixed_time() {
    let a = seed_writer().build().unwrap();
    assert_eq!(a, seed_writer().build().unwrap());
    let mut later = seed_writer();
    later.fixed_time(1_800_000_000);
    assert_ne!(a, later.build().unwrap(), "the time is in the image");
}

#[test]
fn writer_handles_many_files_spanning_several_directory_sectors() {
    let mut w = IsoWriter::new("many").unwrap();
    for i in 0..300 {
        w.add_file(&format!("dir/file-number-{i:04}.data"), format!("{i}")).unwrap();
    }
    let (_d, p) = written(&w);
    let iso = Iso::open(&p).unwrap();
    assert_eq!(iso.read_dir("dir").unwrap().len(), 300);
    assert_eq!(read(&iso, "dir/file-number-0299.data"), b"299");
    if have_program("xorriso") {
        let find = sh("xorriso", &["-indev", p.to_str().unwrap(), "-find", "/dir", "-type", "f"]);
        assert_eq!(find.lines().filter(|l| l.contains("file-number-")).count(), 300);
    }
}

// ------------------------------------------------------------------------------------------
// Linux reads the writer's images

/// A newc cpio archive (what the kernel unpacks as an initramfs) of regular files.
fn cpio(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(4) * 4, 0);
    let mut entry = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend_from_slice(data);
        pad(&mut out);
    };
    for (i, (name, mode, data)) in files.iter().enumerate() {
        entry(name, *mode, data, i as u32 + 1);
    }
    entry("TRAILER!!!", 0, b"", 0);
    out
}

/// The guest's /init for this test: mount each virtio disk as iso9660 and list every file with
/// its size and MD5, then power off.
const GUEST_INIT: &str = r#"#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_pci virtio_blk isofs; do modprobe $m 2>/dev/null; done
grep -q iso9660 /proc/filesystems || echo "MEDIA-NO-ISOFS"
i=0
while [ ! -b /dev/vdc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
for d in vda vdb vdc; do
  mkdir -p /m/$d
  if mount -t iso9660 -o ro /dev/$d /m/$d; then
    cd /m/$d
    busybox find . -type f | while read -r f; do
      echo "MEDIA $d ${f#./}|$(busybox wc -c < "$f"),$(busybox md5sum < "$f" | busybox cut -d' ' -f1)"
    done
    cd /
  else
    echo "MEDIA $d MOUNT-FAILED"
  fi
done
echo "MEDIA-DONE"
poweroff -f
"#;

/// "size,md5" of `data`, by the host's md5sum (the guest's busybox prints the same).
fn md5(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("md5sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap();
    format!("{},{}", data.len(), out.split_whitespace().next().unwrap())
}

/// Kill qemu (by its pid) if the test ends early.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn guest_linux_kernel_mounts_writer_images_and_sees_exact_names() {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out");
    if !require("qemu-system-x86_64", have_program("qemu-system-x86_64"))
        || !require("the test guest (images/build.sh)", guest.join("initramfs.cpio.gz").exists())
    {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // vda: a real NoCloud seed (Rock Ridge + Joliet); vdb: Joliet only; vdc: Rock Ridge only,
    // with a tree deeper than ISO 9660's 8 levels and a 64-character name.
    let opts = CloudInitOpts::from_str("root-password-generate=on").unwrap();
    let (seed, _) = build_seed(&opts, "vm-linux", "iid-linux").unwrap();
    let mut joliet = seed_writer();
    joliet.rock_ridge(false);
    let mut rock = IsoWriter::new("deep").unwrap();
    let deep: String = (1..=10).map(|i| format!("Level{i}/")).collect();
    let long = format!("{}.Tail", "N".repeat(59));
    rock.joliet(false).add_file(&format!("{deep}{long}"), "deep content\n").unwrap();
    rock.add_file("user-data", "rr\n").unwrap();

    let mut expect: Vec<String> = Vec::new();
    let seed_iso = d.path().join("vda.iso");
    std::fs::write(&seed_iso, &seed).unwrap();
    let reader = Iso::open(&seed_iso).unwrap();
    for f in ["meta-data", "user-data"] {
        expect.push(format!("MEDIA vda {f}|{}", md5(&read(&reader, f))));
    }
    joliet.write_to(&d.path().join("vdb.iso")).unwrap();
    for (f, data) in [
        ("meta-data", &b"instance-id: iid-1\nlocal-hostname: vm1\n"[..]),
        ("user-data", b"#cloud-config\nhostname: vm1\n"),
        ("network-config", b"version: 2\n"),
        ("docs/Some.Long-File name (v2).txt", &[b'z'; 7000]),
        ("empty-file", b""),
    ] {
        expect.push(format!("MEDIA vdb {f}|{}", md5(data)));
    }
    rock.write_to(&d.path().join("vdc.iso")).unwrap();
    expect.push(format!("MEDIA vdc {deep}{long}|{}", md5(b"deep content\n")));
    expect.push(format!("MEDIA vdc user-data|{}", md5(b"rr\n")));

    // The guest's initramfs plus our /init on top (a second, uncompressed archive).
    let mut initrd = std::fs::read(guest.join("initramfs.cpio.gz")).unwrap();
    initrd.resize(initrd.len().div_ceil(4) * 4, 0);
    initrd.extend(cpio(&[("init", 0o100755, GUEST_INIT.as_bytes())]));
    std::fs::write(d.path().join("initrd"), initrd).unwrap();

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "256", "-nographic", "-nodefaults", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(guest.join("vmlinuz"))
        .arg("-initrd")
        .arg(d.path().join("initrd"))
        .args(["-append", "console=ttyS0 quiet panic=-1"]);
    for disk in ["vda", "vdb", "vdc"] {
        let f = d.path().join(format!("{disk}.iso"));
        cmd.arg("-drive").arg(format!("file={},if=virtio,format=raw,readonly=on", f.display()));
    }
    let mut child = Child(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let mut stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).replace('\r', "")
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the guest did not power off within 240 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let console = reader.join().unwrap();
    // Firmware output may share a line with the first report: keep what follows the marker.
    let console: String = console.lines().map(|l| &l[l.find("MEDIA").unwrap_or(0)..]).collect::<Vec<_>>().join("\n");
    if console.contains("MEDIA-NO-ISOFS") {
        require("the isofs module in the test guest's initramfs (images/build.sh)", false);
        return;
    }
    assert!(console.contains("MEDIA-DONE"), "console:\n{console}");
    let mut seen: Vec<String> = console.lines().filter(|l| l.starts_with("MEDIA v")).map(String::from).collect();
    seen.sort();
    expect.sort();
    assert_eq!(seen, expect, "console:\n{console}");
}

#[test]
fn host_kernel_loop_mount_in_private_namespace_shows_seed_files() {
    if !require("root and unshare", common::is_root() && have_program("unshare")) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (iso, mnt) = (d.path().join("seed.iso"), d.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    seed_writer().write_to(&iso).unwrap();
    let script = "mount -o loop,ro \"$1\" \"$2\" && ls -1 \"$2\" && cat \"$2/meta-data\"";
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&iso)
        .arg(&mnt)
        .bounded();
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        // This host's kernel may lack iso9660 or loop devices; the guest test covers Linux.
        eprintln!("SKIP: loop mount on the host failed (the guest-kernel test covers this): {err}");
        return;
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    for want in ["docs", "empty-dir", "empty-file", "meta-data", "network-config", "user-data", "local-hostname: vm1"] {
        assert!(lines.contains(&want), "{want} in {lines:?}");
    }
}

// ------------------------------------------------------------------------------------------
// --cloud-init

fn err_of(s: &str) -> String {
    CloudInitOpts::from_str(s).unwrap_err().to_string()
}

#[test]
fn cloud_init_unknown_key_is_refused_naming_it() {
    let e = err_of("root-password-generate=on,root-ssh-keys=/x");
    assert!(e.contains("unknown option 'root-ssh-keys'") && e.contains("clouduser-ssh-key"), "{e}");
    // clouduser-ssh-key is known (virt-install 4.1): its file is checked.
    let e = err_of("clouduser-ssh-key=/nonexistent/id.pub");
    assert!(e.contains("clouduser-ssh-key=/nonexistent/id.pub"), "{e}");
}

#[test]
fn cloud_init_missing_file_names_key_and_path() {
    let e = err_of("user-data=/nonexistent/user-data.yaml");
    assert!(e.contains("user-data=/nonexistent/user-data.yaml") && e.contains("No such file"), "{e}");
    let e = err_of("meta-data=");
    assert!(e.contains("meta-data") && e.contains("needs a file path"), "{e}");
}

#[test]
fn cloud_init_file_over_1_mib_and_a_directory_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; (1 << 20) + 1]).unwrap();
    let e = err_of(&format!("network-config={}", big.display()));
    assert!(e.contains("network-config=") && e.contains("1048577 bytes") && e.contains("1 MiB"), "{e}");
    std::fs::write(&big, vec![b'#'; 1 << 20]).unwrap();
    assert!(CloudInitOpts::from_str(&format!("network-config={}", big.display())).is_ok(), "exactly 1 MiB is fine");
    let e = err_of(&format!("root-ssh-key={}", d.path().display()));
    assert!(e.contains("root-ssh-key=") && e.contains("not a regular file"), "{e}");
}

#[test]
fn cloud_init_conflicting_and_repeated_options_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let ud = d.path().join("ud");
    std::fs::write(&ud, "#cloud-config\n").unwrap();
    let e = err_of(&format!("user-data={},root-password-generate=on", ud.display()));
    assert!(e.contains("root-password-generate would be ignored"), "{e}");
    let e = err_of("disable=on,disable=off");
    assert!(e.contains("disable") && e.contains("given twice"), "{e}");
    let e = err_of("root-password-generate=perhaps");
    assert!(e.contains("root-password-generate=perhaps: expected on or off"), "{e}");
}

#[test]
fn cloud_init_double_comma_is_a_literal_comma_in_paths() {
    let d = tempfile::tempdir().unwrap();
    let ud = d.path().join("user,data");
    std::fs::write(&ud, "#cloud-config\n").unwrap();
    let o = CloudInitOpts::from_str(&format!("user-data={}", ud.display().to_string().replace(',', ",,"))).unwrap();
    assert_eq!(o.user_data.as_deref(), Some(ud.as_path()));
}

#[test]
fn cloud_init_private_key_and_non_key_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("id_ed25519");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n").unwrap();
    let o = CloudInitOpts::from_str(&format!("root-ssh-key={}", key.display())).unwrap();
    let e = build_seed(&o, "vm", "iid").unwrap_err().to_string();
    assert!(e.contains("root-ssh-key=") && e.contains("private key"), "{e}");
    std::fs::write(&key, "hello\n").unwrap();
    let e = build_seed(&o, "vm", "iid").unwrap_err().to_string();
    assert!(e.contains("not an OpenSSH public key"), "{e}");
}

#[test]
fn cloud_init_non_utf8_user_data_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let ud = d.path().join("ud.bin");
    std::fs::write(&ud, [0x1f, 0x8b, 0xff, 0xfe]).unwrap();
    let o = CloudInitOpts::from_str(&format!("user-data={}", ud.display())).unwrap();
    let e = build_seed(&o, "vm", "iid").unwrap_err().to_string();
    assert!(e.contains("user-data=") && e.contains("not UTF-8"), "{e}");
}

#[test]
fn seed_with_generated_password_and_key_is_a_cidata_volume_with_default_meta_data() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("k.pub");
    std::fs::write(&key, "# mine\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO3 me@host\n").unwrap();
    let o = CloudInitOpts::from_str(&format!("root-password-generate=on,root-ssh-key={},disable=on", key.display()))
        .unwrap();
    let (img, pw) = build_seed(&o, "web01", "3f1c-iid").unwrap();
    let pw = pw.expect("a generated password");
    assert!(pw.len() == 16 && pw.bytes().all(|b| b.is_ascii_alphanumeric()), "{pw}");
    let p = d.path().join("seed.iso");
    std::fs::write(&p, img).unwrap();
    let iso = Iso::open(&p).unwrap();
    assert_eq!(iso.volume_id(), "cidata");
    assert_eq!(names(&iso, "/"), ["meta-data", "user-data"], "no network-config unless given");
    assert_eq!(read(&iso, "meta-data"), b"instance-id: 3f1c-iid\nlocal-hostname: web01\n");
    let ud = String::from_utf8(read(&iso, "user-data")).unwrap();
    assert!(ud.starts_with("#cloud-config\nhostname: \"web01\"\n"), "{ud}");
    assert!(ud.contains(&format!("    root:{pw}\n  expire: true\n")), "{ud}");
    assert!(
        ud.contains(
            "  - name: root\n    ssh_authorized_keys:\n      - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO3 me@host\"\n"
        ),
        "{ud}"
    );
    assert!(ud.contains("/etc/cloud/cloud-init.disabled"), "{ud}");
}

#[test]
fn seed_passes_user_meta_and_network_files_through_as_is() {
    let d = tempfile::tempdir().unwrap();
    let files =
        [("ud", "#!/bin/sh\necho hi\n"), ("md", "{\"instance-id\": \"x\"}\n"), ("nc", "version: 2\nethernets: {}\n")];
    for (n, c) in files {
        std::fs::write(d.path().join(n), c).unwrap();
    }
    let arg = format!(
        "user-data={},meta-data={},network-config={}",
        d.path().join("ud").display(),
        d.path().join("md").display(),
        d.path().join("nc").display()
    );
    let (img, pw) = build_seed(&CloudInitOpts::from_str(&arg).unwrap(), "vm", "iid").unwrap();
    assert_eq!(pw, None);
    let p = d.path().join("seed.iso");
    std::fs::write(&p, img).unwrap();
    let iso = Iso::open(&p).unwrap();
    assert_eq!(read(&iso, "user-data"), files[0].1.as_bytes());
    assert_eq!(read(&iso, "meta-data"), files[1].1.as_bytes());
    assert_eq!(read(&iso, "network-config"), files[2].1.as_bytes());
}

#[test]
fn seed_without_options_sets_only_the_hostname() {
    let (img, pw) = build_seed(&CloudInitOpts::default(), "on", "iid").unwrap();
    assert_eq!(pw, None);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("seed.iso");
    std::fs::write(&p, img).unwrap();
    let iso = Iso::open(&p).unwrap();
    assert_eq!(read(&iso, "user-data"), b"#cloud-config\nhostname: \"on\"\n", "quoted: YAML would read on as true");
}
