//! virt-install's and virt-clone's spellings with the real binary: --print-xml and --dry-run
//! create nothing; --check's checks and their waivers; --memory/--vcpus topology, --console
//! file,path= and --cloud-init clouduser-ssh-key in a real (TCG) boot; --location over http
//! and https (a tree and an ISO) from a server in a namespace the test creates, with
//! --initrd-inject seen by the guest; clone --print-xml, --replace and --reflink (XFS on a
//! loop device, unmounted even on failure).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::netns::{can_netns, Netns};
use common::vmhost::VmHost;
use common::*;

fn guest(f: &str) -> PathBuf {
    guest_dir().join(f)
}

fn have_guest() -> bool {
    require(
        "root, qemu and the test guest (images/build.sh)",
        can_netns() && have_program("qemu-system-x86_64") && guest("tiny.qcow2").exists(),
    )
}

/// Nothing of VM `vm` exists: no definition, no runtime dir, no volume in the default pool.
fn nothing_of(k: &Kvm, vm: &str) {
    assert!(!k.root().join(format!("domains/{vm}.toml")).exists(), "no definition");
    assert!(!k.root().join(format!("run/domains/{vm}")).exists(), "no runtime dir");
    let vols: Vec<_> =
        std::fs::read_dir(k.images()).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(vols.iter().all(|v| !v.to_string_lossy().starts_with(vm)), "no volume: {vols:?}");
}

/// A copy of the test guest's disk in `dir`.
fn tiny_copy(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(guest("tiny.qcow2"), &p).unwrap();
    p
}

#[test]
fn print_xml_and_dry_run_create_nothing_and_check_the_media() {
    if !have_guest() {
        return;
    }
    let k = Kvm::new();
    let uuid = "3e3fce45-4f53-4fa7-bb32-11f34168b82b";
    let xml = k.ok(&[
        "install",
        "-n",
        "px",
        "-r",
        "256",
        "--vcpus",
        "2,maxvcpus=4,sockets=2,cores=2,threads=1",
        "--disk",
        "size=1",
        "--import",
        "--network",
        "none",
        "-u",
        uuid,
        "--boot",
        "firmware=efi",
        "--print-xml",
    ]);
    assert!(xml.starts_with("<domain type="), "{xml}");
    assert!(xml.contains(&format!("<uuid>{uuid}</uuid>")) && xml.contains("<memory unit='MiB'>256</memory>"), "{xml}");
    assert!(xml.contains("<loader readonly='yes' type='pflash'>"), "{xml}");
    assert!(xml.contains(&format!("<source file='{}/px.qcow2'/>", k.images().display())), "{xml}");
    nothing_of(&k, "px");
    assert!(!k.root().join("nvram/px_VARS.fd").exists(), "no NVRAM copy");
    // The dry run's argv carries the topology and the memory hotplug room.
    let out = k.ok(&[
        "install",
        "-n",
        "dr",
        "--memory",
        "memory=256,maxmemory=1024,maxMemory.slots=2",
        "--vcpus",
        "2,maxvcpus=4,sockets=2,cores=2,threads=1",
        "--disk",
        "size=1",
        "--import",
        "--network",
        "none",
        "--dry-run",
    ]);
    assert!(
        out.contains("-m size=256M,slots=2,maxmem=1024M")
            && out.contains("-smp 2,sockets=2,cores=2,threads=1,maxcpus=4"),
        "{out}"
    );
    nothing_of(&k, "dr");
    // --dry-run looks at the install media, and a missing one creates nothing either.
    let e =
        k.fails(1, &["install", "-n", "m", "-r", "64", "--disk", "size=1", "--cdrom", "/nonexistent.iso", "--dry-run"]);
    assert!(e.contains("--cdrom") && e.contains("/nonexistent.iso"), "{e}");
    let empty = k.dir.path().join("empty-tree");
    std::fs::create_dir(&empty).unwrap();
    let e =
        k.fails(1, &["install", "-n", "m", "-r", "64", "--disk", "size=1", "-l", empty.to_str().unwrap(), "--dry-run"]);
    assert!(e.contains("no kernel and initrd found"), "{e}");
    let e = k.fails(1, &["install", "-n", "m", "-r", "64", "--disk", "size=1", "-l", empty.to_str().unwrap()]);
    assert!(e.contains("no kernel and initrd found"), "{e}");
    nothing_of(&k, "m");
    let tree = guest("location");
    let e = k.fails(
        1,
        &[
            "install",
            "-n",
            "m",
            "-r",
            "64",
            "--disk",
            "size=1",
            "-l",
            tree.to_str().unwrap(),
            "--initrd-inject",
            "/nonexistent/ks.cfg",
            "--dry-run",
        ],
    );
    assert!(e.contains("--initrd-inject /nonexistent/ks.cfg"), "{e}");
    // Bad values: exit 1, naming the option.
    for (args, want) in [
        (vec!["--memory", "memory=256,currentMemory=128"], "needs a memory balloon"),
        (vec!["--memory", "memory=256,maxmemory=1024"], "needs maxMemory.slots=N"),
        (vec!["-r", "256", "--vcpus", "2,maxvcpus=4,sockets=2,cores=2,threads=2"], "must equal maxvcpus 4"),
        (vec!["-r", "256", "--vcpus", "2,sockets=1,cores=1,threads=1"], "is more than the topology's"),
        (vec!["-r", "256", "-u", "00000000-0000-0000-0000-000000000000"], "the nil UUID"),
        (vec!["-r", "256", "--boot", "firmware=coreboot"], "firmware=coreboot is not offered"),
    ] {
        let mut a = vec!["install", "-n", "bad", "--disk", "size=1", "--import", "--network", "none", "--dry-run"];
        a.extend(args);
        let e = k.fails(1, &a);
        assert!(e.contains(want), "{a:?}: {e}");
    }
    // Usage errors: exit 2.
    for args in [
        vec!["--memory", "256,hugepages=on"],
        vec!["-r", "256", "--check", "path_exists=off"],
        vec!["-r", "256", "--console", "unix,path=/tmp/s"],
        vec!["-r", "256", "--serial", "tcp,host=127.0.0.1:4555"],
        vec!["-r", "256", "--autoconsole", "graphical"],
    ] {
        let mut a = vec!["install", "-n", "bad", "--disk", "size=1", "--import", "--network", "none", "--dry-run"];
        a.extend(args);
        k.fails(2, &a);
    }
    nothing_of(&k, "bad");
}

#[test]
fn checks_refuse_by_default_and_check_off_waives_them() {
    if !have_guest() {
        return;
    }
    let k = Kvm::new();
    let disk = tiny_copy(k.dir.path(), "a.qcow2");
    let a = k.dir.path().join("a.toml");
    std::fs::write(
        &a,
        format!(
            "name = \"a\"\nuuid = \"3e3fce45-4f53-4fa7-bb32-11f34168b82b\"\nmemory_mib = 64\nvcpus = 1\n\
             [[disks]]\npath = \"{}\"\nformat = \"qcow2\"\n[[nics]]\ntype = \"user\"\nmac = \"52:54:00:00:00:01\"\n",
            disk.display()
        ),
    )
    .unwrap();
    k.ok(&["define", a.to_str().unwrap()]);
    let d = format!("path={}", disk.display());
    let base = ["install", "-n", "b", "-r", "64", "--import", "--dry-run"];
    fn run<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let e = k.fails(1, &run(&base, &["--disk", &d, "--network", "none"]));
    assert!(e.contains("is already used by domain 'a'"), "{e}");
    k.ok(&run(&base, &["--disk", &d, "--network", "none", "--check", "path_in_use=off"]));
    let e = k.fails(1, &run(&base, &["--disk", "size=1", "--network", "user,mac=52:54:00:00:00:01"]));
    assert!(e.contains("mac 52:54:00:00:00:01 is already used by domain 'a'"), "{e}");
    let out = k
        .ok(&run(&base, &["--disk", "size=1", "--network", "user,mac=52:54:00:00:00:01", "--check", "mac_in_use=off"]));
    assert!(out.contains("checks_off = [\"mac_in_use\"]"), "the waiver is kept in the definition: {out}");
    let e = k.fails(
        1,
        &run(&base, &["--disk", "size=1", "--network", "none", "-u", "3e3fce45-4f53-4fa7-bb32-11f34168b82b"]),
    );
    assert!(e.contains("uuid 3e3fce45-4f53-4fa7-bb32-11f34168b82b is already used by domain 'a'"), "{e}");
    // A disk larger than the pool's free space (1 PiB), unless disk_size=off.
    let e = k.fails(1, &run(&base, &["--disk", "size=1048576", "--network", "none"]));
    assert!(e.contains("free there (--check disk_size=off"), "{e}");
    k.ok(&run(&base, &["--disk", "size=1048576", "--network", "none", "--check", "all=off"]));
    nothing_of(&k, "b");
}

/// The tree server in `ns` (plain HTTP, or HTTPS with a CA of the test's own), killed on drop.
struct TreeServer {
    child: Child,
    log: PathBuf,
    ca: Option<PathBuf>,
}

impl TreeServer {
    fn start(ns: &Netns, dir: &Path, work: &Path, port: u16, tls: bool) -> TreeServer {
        let f = |n: &str| work.join(n).to_str().unwrap().to_string();
        let log = work.join(format!("requests-{port}.log"));
        std::fs::write(&log, "").unwrap();
        let mut args = vec![
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tree_server.py").display().to_string(),
            dir.display().to_string(),
            port.to_string(),
            log.display().to_string(),
        ];
        let mut ca = None;
        if tls {
            let (cap, cak, key, csr, cert, ext) =
                (f("ca.pem"), f("ca.key"), f("key.pem"), f("leaf.csr"), f("cert.pem"), f("leaf.ext"));
            let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
            sh(
                "openssl",
                &[
                    &["req"][..],
                    &ec,
                    &["-x509", "-days", "1", "-subj", "/CN=kvmctl test CA", "-keyout", &cak, "-out", &cap],
                ]
                .concat(),
            );
            sh("openssl", &[&["req"][..], &ec, &["-subj", "/CN=tree.test", "-keyout", &key, "-out", &csr]].concat());
            std::fs::write(
                &ext,
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            sh(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &cap,
                    "-CAkey",
                    &cak,
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-extfile",
                    &ext,
                    "-out",
                    &cert,
                ],
            );
            args.extend([cert, key]);
            ca = Some(PathBuf::from(cap));
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3"])
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the tree server did not start");
        TreeServer { child, log, ca }
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for TreeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn location_urls_fetch_trees_and_isos_and_inject_files_into_the_initrd() {
    if !require(
        "root, qemu, python3, openssl and the location media (images/build.sh)",
        have_guest() && have_program("python3") && have_program("openssl") && guest("location.iso").exists(),
    ) {
        return;
    }
    let h = VmHost::new("s");
    let www = h.k.dir.path().join("www");
    // A Debian-layout tree of the test guest's kernel and initramfs, a tree found only through
    // its .treeinfo, and the location ISO.
    std::fs::create_dir_all(www.join("debian/install.amd")).unwrap();
    std::fs::copy(guest("vmlinuz"), www.join("debian/install.amd/vmlinuz")).unwrap();
    std::fs::copy(guest("initramfs.cpio.gz"), www.join("debian/install.amd/initrd.gz")).unwrap();
    std::fs::create_dir_all(www.join("ti/boot/x")).unwrap();
    std::fs::copy(guest("vmlinuz"), www.join("ti/boot/x/k")).unwrap();
    std::fs::copy(guest("initramfs.cpio.gz"), www.join("ti/boot/x/i")).unwrap();
    std::fs::write(
        www.join("ti/.treeinfo"),
        "[release]\nname = TestOS\nversion = 1\n[images-x86_64]\nkernel = boot/x/k\ninitrd = boot/x/i\n",
    )
    .unwrap();
    std::fs::copy(guest("location.iso"), www.join("loc.iso")).unwrap();
    let http = TreeServer::start(&h.ns, &www, h.k.dir.path(), 8080, false);
    let https = TreeServer::start(&h.ns, &www, h.k.dir.path(), 8443, true);
    let env = [("SSL_CERT_FILE", https.ca.as_ref().unwrap().to_str().unwrap())];
    let run = |args: &[&str]| h.k.in_ns_env(&h.ns, &env, args);
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let base = ["install", "-r", "256", "--disk", "size=1", "--network", "none", "--noautoconsole"];
    // Dry runs: HEAD requests find the layout, nothing is downloaded or created.
    let o = run(&[&base[..], &["-n", "d1", "-l", "http://127.0.0.1:8080/debian/", "--dry-run"]].concat());
    assert!(o.status.success() && text(&o).contains("Found debian layout"), "{}", text(&o));
    let o = run(&[&base[..], &["-n", "d2", "-l", "https://127.0.0.1:8443/ti", "--dry-run"]].concat());
    assert!(o.status.success() && text(&o).contains("Found treeinfo layout"), "{}", text(&o));
    assert!(!http.requests().contains("GET /debian/install.amd/"), "a dry run downloads nothing: {}", http.requests());
    let o = run(&[&base[..], &["-n", "d3", "-l", "http://127.0.0.1:8080/nothing/", "--dry-run"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no kernel and initrd found"), "{}", text(&o));
    let o = run(&[&base[..], &["-n", "d4", "-l", "https://127.0.0.1:8443/missing.iso", "--dry-run"]].concat());
    assert!(o.status.code() == Some(1) && text(&o).contains("missing.iso: not found"), "{}", text(&o));
    for vm in ["d1", "d2", "d3", "d4"] {
        nothing_of(&h.k, vm);
    }
    // A real install from the http tree, with a file injected into its initrd.
    let inject = h.k.dir.path().join("kvmctl-inject.cfg");
    std::fs::write(&inject, "injected-by-kvmctl-test\n").unwrap();
    let o = run(&[
        &base[..],
        &[
            "-n",
            "ht",
            "-l",
            "http://127.0.0.1:8080/debian",
            "-x",
            "console=ttyS0",
            "--initrd-inject",
            inject.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Injected into the initrd: kvmctl-inject.cfg"), "{}", text(&o));
    h.wait_console_with_previous("ht", "KVMCTL-GUEST-READY", 1, 300);
    assert_eq!(h.guest_ok("ht", "cat /kvmctl-inject.cfg", 60).trim(), "injected-by-kvmctl-test");
    h.ok(&["destroy", "ht"]);
    // An ISO over https: downloaded, its kernel booted, the ISO attached as the installer's CD.
    let o = run(&[&base[..], &["-n", "hi", "-l", "https://127.0.0.1:8443/loc.iso", "-x", "console=ttyS0"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let log = h.wait_console_with_previous("hi", "KVMCTL-GUEST-READY", 1, 300);
    assert!(log.contains("KVMCTL-DISK: sr0"), "{log}");
    assert!(https.requests().contains("GET /loc.iso"), "{}", https.requests());
    h.ok(&["destroy", "hi"]);
}

#[test]
fn topology_maxmemory_console_file_and_clouduser_key_boot_for_real() {
    if !have_guest() {
        return;
    }
    let h = VmHost::new("s");
    let disk = tiny_copy(h.k.dir.path(), "t.qcow2");
    let copy = h.k.dir.path().join("console,copy.log");
    let key = h.k.dir.path().join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmctlTestKey user@test\n").unwrap();
    let o = h.k.in_ns(
        &h.ns,
        &[
            "install",
            "-n",
            "t",
            "--memory",
            "memory=256,maxmemory=1024,maxMemory.slots=2",
            "--vcpus",
            "2,maxvcpus=4,sockets=2,cores=2,threads=1",
            "--disk",
            &format!("path={}", disk.display()),
            "--import",
            "--network",
            "none",
            "--console",
            &format!("file,path={}", copy.display().to_string().replace(',', ",,")),
            "--cloud-init",
            &format!("clouduser-ssh-key={},root-password-generate=on", key.display()),
            "--autoconsole",
            "none",
        ],
    );
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The generated password is shown once, on stdout, and never written where others read it.
    assert_eq!(stdout.matches("Generated root password for 't': ").count(), 1, "{stdout}");
    let pw = stdout.split("Generated root password for 't': ").nth(1).unwrap().trim().to_string();
    let seed = h.k.root().join("run/domains/t/cidata.iso");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&seed).unwrap().permissions().mode() & 0o777, 0o600);
    let bytes = std::fs::read(&seed).unwrap();
    let iso = String::from_utf8_lossy(&bytes);
    assert!(
        iso.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmctlTestKey user@test\""),
        "the key goes to the default user"
    );
    assert!(
        !std::fs::read_to_string(h.k.root().join("domains/t.toml")).unwrap().contains(&pw),
        "not in the definition"
    );
    h.wait_console_with_previous("t", "KVMCTL-GUEST-READY", 1, 300);
    let argv = std::fs::read_to_string(h.k.root().join("run/domains/t/qemu.argv")).unwrap();
    assert!(
        argv.contains("2,sockets=2,cores=2,threads=1,maxcpus=4") && argv.contains("size=256M,slots=2,maxmem=1024M"),
        "{argv}"
    );
    // The copy holds what the guest printed, 0600.
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&copy).unwrap_or_default().contains("KVMCTL-GUEST-READY") {
        assert!(t0.elapsed().as_secs() < 30, "console copy: {}", std::fs::read_to_string(&copy).unwrap_or_default());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
    // The guest has the topology's CPUs it was given at boot.
    assert_eq!(h.guest_ok("t", "grep -c ^processor /proc/cpuinfo", 60).trim(), "2");
    h.ok(&["destroy", "t"]);
}

fn define_vm(k: &Kvm, name: &str, disk: &Path, extra: &str) {
    let f = k.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &f,
        format!(
            "name = \"{name}\"\nmemory_mib = 64\nvcpus = 1\n[[disks]]\npath = \"{}\"\nformat = \"qcow2\"\n{extra}",
            disk.display()
        ),
    )
    .unwrap();
    k.ok(&["define", f.to_str().unwrap()]);
}

#[test]
fn clone_print_xml_replace_and_its_refusals() {
    if !have_guest() {
        return;
    }
    let h = VmHost::new("s");
    let k = &h.k;
    k.ok(&["-q", "vol-create-as", "default", "src.qcow2", "64M", "--format", "qcow2"]);
    define_vm(k, "src", &k.images().join("src.qcow2"), "");
    let xml = k.ok(&["clone", "src", "c", "--print-xml"]);
    assert!(xml.contains("<name>c</name>") && xml.contains(&format!("{}/c.qcow2", k.images().display())), "{xml}");
    assert_eq!(k.ok(&["list", "--all", "--name"]), "src\n");
    assert!(!k.images().join("c.qcow2").exists());
    k.ok(&["clone", "src", "c"]);
    let old_uuid = k.ok(&["domuuid", "c"]);
    let e = k.fails(1, &["clone", "src", "c"]);
    assert!(e.contains("is already defined (--replace"), "{e}");
    // Replaced: a new UUID, the disk written again at its path, nothing else left.
    k.ok(&["clone", "src", "c", "--replace"]);
    assert_ne!(k.ok(&["domuuid", "c"]), old_uuid);
    assert!(k.images().join("c.qcow2").exists());
    // Refused while another VM uses its disk; refused while it runs.
    define_vm(k, "user", &k.images().join("c.qcow2"), "readonly = true\n");
    let e = k.fails(1, &["clone", "src", "c", "--replace"]);
    assert!(e.contains("--replace: its disk") && e.contains("also used by domain 'user'"), "{e}");
    k.ok(&["undefine", "user"]);
    h.ok(&["start", "c"]);
    let e = h.fails(1, &["clone", "src", "c", "--replace"]);
    assert!(e.contains("--replace: it is running"), "{e}");
    h.ok(&["destroy", "c"]);
    let e = k.fails(1, &["clone", "src", "src", "--replace"]);
    assert!(e.contains("a VM cannot be its own clone"), "{e}");
}

/// A loop-mounted XFS (reflink=1), unmounted and detached on drop.
struct XfsMount {
    dir: tempfile::TempDir,
    loopdev: String,
}

impl XfsMount {
    fn new(work: &Path) -> XfsMount {
        let img = work.join("xfs.img");
        std::fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
        sh("mkfs.xfs", &["-q", "-m", "reflink=1", img.to_str().unwrap()]);
        let loopdev = sh("losetup", &["--find", "--show", img.to_str().unwrap()]).trim().to_string();
        let dir = tempfile::Builder::new().prefix("kvmctl-xfs").tempdir().unwrap();
        let m = XfsMount { dir, loopdev };
        sh("mount", &[&m.loopdev, m.dir.path().to_str().unwrap()]);
        m
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
    }
}

#[test]
fn clone_reflink_shares_extents_on_xfs_and_says_where_it_cannot() {
    if !require(
        "root, mkfs.xfs, losetup and the test guest",
        is_root() && have_program("mkfs.xfs") && have_program("losetup") && guest("tiny.qcow2").exists(),
    ) {
        return;
    }
    let k = Kvm::new();
    let xfs = XfsMount::new(k.dir.path());
    let target = xfs.dir.path().join("pool");
    std::fs::create_dir(&target).unwrap();
    k.ok(&["-q", "pool-define-as", "fast", "dir", "--target", target.to_str().unwrap()]);
    k.ok(&["-q", "pool-start", "fast"]);
    define_vm(&k, "src", &tiny_copy(&target, "src.qcow2"), "");
    k.ok(&["clone", "src", "r", "--reflink"]);
    let (a, b) = (std::fs::read(target.join("src.qcow2")).unwrap(), std::fs::read(target.join("r.qcow2")).unwrap());
    assert!(a == b, "the reflinked copy has the same bytes");
    // On the ext4/tmpfs of the default pool: a clear refusal, and nothing left.
    define_vm(&k, "plain", &tiny_copy(&k.images(), "plain.qcow2"), "");
    let e = k.fails(1, &["clone", "plain", "p2", "--reflink"]);
    assert!(
        e.contains("--reflink:")
            && (e.contains("pool 'default' cannot reflink") || e.contains("different filesystems")),
        "{e}"
    );
    assert!(!k.images().join("p2.qcow2").exists());
    assert!(!k.ok(&["list", "--all", "--name"]).contains("p2"));
    // Across filesystems (XFS source, a --file on the default pool): EXDEV, said so.
    let e = k.fails(1, &["clone", "src", "x2", "--reflink", "--file", k.images().join("x2.qcow2").to_str().unwrap()]);
    assert!(e.contains("--reflink:"), "{e}");
    assert!(!k.images().join("x2.qcow2").exists());
}
