//! `image pull` against an HTTPS server inside a test network namespace (no packet leaves it):
//! a compressed qcow2 made here, its SHA256SUMS, a wrong checksum, transfers that break off
//! (resumed in the same command, and by the next one), a 404, plain http; then `install
//! --image` booting an overlay on the pulled image with a cloud-init SSH key until it leases,
//! and `image rm` refused while the overlay needs the image.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::netns::{can_netns, Netns};
use common::vmhost::VmHost;
use common::*;

const PORT: &str = "8443";
const BASE: &str = "https://127.0.0.1:8443";

fn prereqs() -> bool {
    require(
        "root, qemu, qemu-img, python3, openssl and the test guest (images/build.sh)",
        can_netns()
            && ["qemu-system-x86_64", "qemu-img", "python3", "openssl", "dnsmasq", "nft"]
                .iter()
                .all(|p| have_program(p))
            && guest_dir().join("tiny.qcow2").exists(),
    )
}

/// The HTTPS server in `ns`, serving `dir`, killed on drop.
struct Server {
    child: Child,
    log: PathBuf,
    cert: PathBuf,
}

impl Server {
    fn start(ns: &Netns, dir: &Path, work: &Path) -> Server {
        // A CA of the test's own, and the server's certificate for 127.0.0.1 signed by it.
        let f = |n: &str| work.join(n).to_str().unwrap().to_string();
        let (ca, ca_key, key, csr, cert, ext) =
            (f("ca.pem"), f("ca.key"), f("key.pem"), f("leaf.csr"), f("cert.pem"), f("leaf.ext"));
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let mut req =
            vec!["req", "-x509", "-days", "1", "-subj", "/CN=kvmctl test CA", "-keyout", &ca_key, "-out", &ca];
        req.splice(1..1, ec);
        sh("openssl", &req);
        let mut req = vec!["req", "-subj", "/CN=images.test", "-keyout", &key, "-out", &csr];
        req.splice(1..1, ec);
        sh("openssl", &req);
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
            .unwrap();
        let sign = ["x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-CAcreateserial", "-days", "1"];
        sh("openssl", &[&sign[..], &["-extfile", &ext, "-out", &cert]].concat());
        let log = work.join("requests.log");
        std::fs::write(&log, "").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image_server.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3"])
            .arg(&script)
            .arg(dir)
            .args([&cert, &key])
            .arg(PORT)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the test server did not start");
        Server { child, log, cert: ca.into() }
    }
    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct World {
    h: VmHost,
    srv: Server,
    files: PathBuf,
}

impl World {
    fn new() -> World {
        let h = VmHost::new("m");
        let files = h.k.dir.path().join("www");
        std::fs::create_dir(&files).unwrap();
        // The "cloud image": the test guest, compressed as distributions ship theirs.
        let img = files.join("tiny-cloud.qcow2");
        let guest = guest_dir().join("tiny.qcow2");
        sh("qemu-img", &["convert", "-c", "-O", "qcow2", guest.to_str().unwrap(), img.to_str().unwrap()]);
        let sum = sh("sha256sum", &[img.to_str().unwrap()]);
        let hex = sum.split_whitespace().next().unwrap().to_string();
        std::fs::write(files.join("SHA256SUMS"), format!("{}  other.qcow2\n{hex}  tiny-cloud.qcow2\n", "0".repeat(64)))
            .unwrap();
        let srv = Server::start(&h.ns, &files, h.k.dir.path());
        World { h, srv, files }
    }
    fn env(&self) -> Vec<(&str, &str)> {
        vec![("SSL_CERT_FILE", self.srv.cert.to_str().unwrap())]
    }
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.h.k.in_ns_env(&self.h.ns, &self.env(), args)
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
    fn pool_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.h.k.images())
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
    fn downloads(&self) -> Vec<String> {
        std::fs::read_dir(self.h.k.root().join("downloads"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
    /// Nothing of a failed pull anywhere: no volume, no temp file, no partial, no record.
    fn nothing_left(&self) {
        assert_eq!(self.pool_files(), Vec::<String>::new(), "pool");
        assert_eq!(self.downloads(), Vec::<String>::new(), "downloads");
        assert_eq!(self.ok(&["image", "list", "--json"]).trim(), "[]");
    }
}

#[test]
fn image_pull_verifies_resumes_and_refuses_with_nothing_left() {
    if !prereqs() {
        return;
    }
    let w = World::new();
    let url = format!("{BASE}/tiny-cloud.qcow2");
    let sums = format!("{BASE}/SHA256SUMS");
    // Wrong checksum: refused after the download, which is deleted.
    let e = w.fails(&["image", "pull", &url, "--checksum", &format!("sha256:{}", "ab".repeat(32))]);
    assert!(e.contains("checksum mismatch") && e.contains("the download was deleted"), "{e}");
    w.nothing_left();
    // A SUMS file that does not list the file, a 404, plain http, no checksum at all.
    let e = w.fails(&["image", "pull", &format!("{BASE}/SHA256SUMS"), "--name", "x", "--checksum-url", &sums]);
    assert!(e.contains("lists no checksum for 'SHA256SUMS'"), "{e}");
    let e = w.fails(&["image", "pull", &format!("{BASE}/gone.qcow2"), "--checksum-url", &sums]);
    assert!(e.contains("lists no checksum for 'gone.qcow2'"), "{e}");
    let e =
        w.fails(&["image", "pull", &format!("{BASE}/gone.qcow2"), "--checksum", &format!("sha256:{}", "0".repeat(64))]);
    assert!(e.contains("answered 404"), "{e}");
    let e = w.fails(&["image", "pull", "http://127.0.0.1:8443/tiny-cloud.qcow2", "--checksum-url", &sums]);
    assert!(e.contains("HTTPS only"), "{e}");
    let e = w.fails(&["image", "pull", &url]);
    assert!(e.contains("no checksum to verify it against"), "{e}");
    let e = w.fails(&["image", "pull", "no-such-distro"]);
    assert!(e.contains("image 'no-such-distro' is not in the catalog"), "{e}");
    w.nothing_left();
    // An untrusted certificate (no SSL_CERT_FILE: the system's roots).
    let o = w.h.k.in_ns(&w.h.ns, &["image", "pull", &url, "--checksum-url", &sums]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("127.0.0.1") && e.to_lowercase().contains("certificate"), "{e}");
    w.nothing_left();

    // A transfer that breaks off once is resumed where it stopped, in the same command.
    let out =
        w.ok(&["image", "pull", &format!("{BASE}/once/tiny-cloud.qcow2"), "--name", "once", "--checksum-url", &sums]);
    assert!(out.contains("Image once pulled into pool default as once.qcow2"), "{out}");
    let reqs = w.srv.requests();
    let once: Vec<&str> = reqs.lines().filter(|l| l.starts_with("/once/")).collect();
    assert_eq!(once.len(), 2, "{reqs}");
    assert!(once[0].ends_with(" -") && once[1].contains("bytes="), "{reqs}");
    // Kept as it came (compressed clusters and all), read-only, and recorded.
    let vol = w.h.k.images().join("once.qcow2");
    assert!(std::fs::read(&vol).unwrap() == std::fs::read(w.files.join("tiny-cloud.qcow2")).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&vol).unwrap().permissions().mode() & 0o777, 0o444);
    let list = w.ok(&["image", "list"]);
    assert!(list.contains("once") && list.contains("default/once.qcow2") && list.contains("qcow2"), "{list}");
    assert_eq!(w.downloads(), Vec::<String>::new(), "no partial left after success");
    // Pulled twice under one name: refused.
    let e = w.fails(&["image", "pull", &url, "--name", "once", "--checksum-url", &sums]);
    assert!(e.contains("image 'once' is already pulled"), "{e}");
    w.ok(&["image", "rm", "once"]);
    w.nothing_left();

    // A transfer that keeps breaking off fails, keeping the partial outside the pool; the
    // next pull resumes it with a Range request and verifies the whole.
    let flaky = format!("{BASE}/flaky/tiny-cloud.qcow2");
    let e = w.fails(&["image", "pull", &flaky, "--name", "tiny", "--checksum-url", &sums]);
    assert!(e.contains("broke off at") && e.contains("run the same command again to resume"), "{e}");
    assert_eq!(w.pool_files(), Vec::<String>::new(), "nothing partial in the pool");
    assert!(w.downloads().contains(&"tiny.part".to_string()), "{:?}", w.downloads());
    let out = w.ok(&["image", "pull", &flaky, "--name", "tiny", "--checksum-url", &sums]);
    assert!(out.contains("Image tiny pulled"), "{out}");
    let reqs = w.srv.requests();
    let last = reqs.lines().rfind(|l| l.starts_with("/flaky/")).unwrap().to_string();
    let from: u64 = last.rsplit("bytes=").next().unwrap().trim_end_matches('-').parse().unwrap();
    assert!(from > 0, "{reqs}");
    assert_eq!(w.downloads(), Vec::<String>::new());
    qemu_img_check(&w.h.k.images().join("tiny.qcow2"));
}

#[test]
fn install_image_boots_an_overlay_with_the_ssh_key_until_it_leases() {
    if !prereqs() {
        return;
    }
    let w = World::new();
    w.ok(&[
        "image",
        "pull",
        &format!("{BASE}/tiny-cloud.qcow2"),
        "--name",
        "tiny",
        "--checksum-url",
        &format!("{BASE}/SHA256SUMS"),
    ]);
    let key = w.h.k.dir.path().join("id_ed25519.pub");
    std::fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq6fG2z3kCw0mJ8vV9Gx1N5k7b3o0rQnYp1dS2e4f5g test@kvmctl\n",
    )
    .unwrap();
    let ci = format!("root-ssh-key={}", key.display());
    let out = w.ok(&[
        "install",
        "--image",
        "tiny",
        "--name",
        "web1",
        "--memory",
        "128",
        "--disk",
        "size=1",
        "--cloud-init",
        &ci,
        "--network",
        "network=default",
        "--noautoconsole",
        "--wait",
        "10",
    ]);
    assert!(out.contains("Domain 'web1' has address 192.168.122."), "{out}");
    let addr = w.ok(&["domifaddr", "web1"]);
    assert!(addr.contains("192.168.122."), "{addr}");
    let log = w.h.wait_console("web1", "KVMCTL-GUEST-READY", 1, 300);
    assert!(log.contains("KVMCTL-CLOUDINIT: ssh-key=ssh-ed25519 test@kvmctl"), "{log}");
    // The disk is a linked overlay on the image, grown to the asked size.
    let disk = w.h.k.images().join("web1.qcow2");
    let info: serde_json::Value =
        serde_json::from_str(&sh("qemu-img", &["info", "-U", "--output=json", disk.to_str().unwrap()])).unwrap();
    assert_eq!(info["virtual-size"].as_u64().unwrap(), 1 << 30, "{info}");
    assert!(info["backing-filename"].as_str().unwrap().ends_with("/tiny.qcow2"), "{info}");
    // The image cannot go while the overlay reads through it.
    let e = w.fails(&["image", "rm", "tiny"]);
    assert!(e.contains("image 'tiny' is in use by") && e.contains("web1"), "{e}");
    w.ok(&["destroy", "web1"]);
    w.ok(&["undefine", "web1", "--remove-all-storage"]);
    w.ok(&["image", "rm", "tiny"]);
    assert_eq!(w.pool_files(), Vec::<String>::new());
    // --image with a second disk or a disk source is refused before anything is made.
    let e = w.fails(&["install", "--image", "gone", "--name", "x", "--memory", "128"]);
    assert!(e.contains("image 'gone' has not been pulled"), "{e}");
}

/// `gpg` in a home of its own (the test's keys only).
fn gpg(home: &Path, args: &[&str]) {
    let o = Command::new("gpg")
        .args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""])
        .args(args)
        .env("GNUPGHOME", home)
        .output()
        .unwrap();
    assert!(o.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A signing key in a fresh GNUPGHOME, exported as a keyring gpgv reads.
fn key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    gpg(&home, &["--quick-gen-key", &format!("{name} <{name}@kvmctl.test>"), "ed25519", "sign", "1d"]);
    let keyring = dir.join(format!("{name}.gpg"));
    gpg(&home, &["--export", "-o", keyring.to_str().unwrap()]);
    (home, keyring)
}

#[test]
fn signed_sums_files_are_checked_with_gpgv() {
    if !prereqs() || !require("gpg and gpgv (apt: gnupg, gpgv)", have_program("gpg") && have_program("gpgv")) {
        return;
    }
    let w = World::new();
    let dir = w.h.k.dir.path();
    let (home, keyring) = key(dir, "distro");
    let (_, other) = key(dir, "stranger");
    let sums = w.files.join("SHA256SUMS");
    gpg(&home, &["--detach-sign", "-o", w.files.join("SHA256SUMS.sig").to_str().unwrap(), sums.to_str().unwrap()]);
    gpg(&home, &["--clearsign", "-o", w.files.join("SHA256SUMS.asc").to_str().unwrap(), sums.to_str().unwrap()]);
    // A signature over another file.
    std::fs::write(dir.join("other.txt"), "not the sums\n").unwrap();
    gpg(
        &home,
        &["--detach-sign", "-o", w.files.join("wrong.sig").to_str().unwrap(), dir.join("other.txt").to_str().unwrap()],
    );
    let url = format!("{BASE}/tiny-cloud.qcow2");
    let (k1, k2) = (keyring.to_str().unwrap(), other.to_str().unwrap());
    let sums_url = format!("{BASE}/SHA256SUMS");
    let sig = |f: &str| format!("{BASE}/{f}");
    // A detached signature by the distribution's key.
    let out = w.ok(&[
        "image",
        "pull",
        &url,
        "--name",
        "a",
        "--checksum-url",
        &sums_url,
        "--signature-url",
        &sig("SHA256SUMS.sig"),
        "--keyring",
        k1,
    ]);
    assert!(out.contains(&format!("signature: gpgv with {k1}")), "{out}");
    // A clear-signed SUMS file.
    let out = w.ok(&["image", "pull", &url, "--name", "b", "--checksum-url", &sig("SHA256SUMS.asc"), "--keyring", k1]);
    assert!(out.contains("signature: gpgv with"), "{out}");
    w.ok(&["image", "rm", "a"]);
    w.ok(&["image", "rm", "b"]);
    // Another key, or a signature over something else: refused before the download.
    let before = w.srv.requests().lines().filter(|l| l.contains("tiny-cloud")).count();
    let e = w.fails(&[
        "image",
        "pull",
        &url,
        "--name",
        "c",
        "--checksum-url",
        &sums_url,
        "--signature-url",
        &sig("SHA256SUMS.sig"),
        "--keyring",
        k2,
    ]);
    assert!(e.contains("signature does not verify") && e.contains(k2), "{e}");
    let e = w.fails(&[
        "image",
        "pull",
        &url,
        "--name",
        "c",
        "--checksum-url",
        &sums_url,
        "--signature-url",
        &sig("wrong.sig"),
        "--keyring",
        k1,
    ]);
    assert!(e.contains("signature does not verify"), "{e}");
    let after = w.srv.requests().lines().filter(|l| l.contains("tiny-cloud")).count();
    assert_eq!(before, after, "the image was not downloaded");
    // Asked for on the command line, a check that cannot run is an error.
    let e = w.fails(&[
        "image",
        "pull",
        &url,
        "--name",
        "c",
        "--checksum-url",
        &sums_url,
        "--signature-url",
        &sig("SHA256SUMS.sig"),
        "--keyring",
        "/nonexistent.gpg",
    ]);
    assert!(e.contains("cannot check its signature") && e.contains("/nonexistent.gpg"), "{e}");
    w.nothing_left();
}
