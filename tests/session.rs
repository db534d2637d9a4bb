//! User-mode networking with port forwards (`hostfwd`), and `kvmctl ssh`: a forward reaches
//! the guest for real (inside a namespace the test owns), and ssh is pointed at the forward
//! or at the lease.

mod common;

use std::io::Write;

use common::vmhost::{vm_prereqs, VmHost};
use common::{bounded_output, guest_dir, have_program, require};

const DEF: &str = r#"name = "s1"
memory_mib = 128
vcpus = 1

[[disks]]
path = "@DISK@"
format = "qcow2"

[[nics]]
type = "user"
mac = "52:54:00:5e:00:01"
hostfwd = ["tcp::2222-:22", "tcp:127.0.0.1:8022-:8022"]
"#;

#[test]
fn a_port_forward_reaches_the_guest_and_ssh_uses_it() {
    if !vm_prereqs() {
        return;
    }
    let h = VmHost::new("u");
    h.guest_disk("s1.qcow2");
    let f = h.k.dir.path().join("s1.toml");
    std::fs::write(&f, DEF.replace("@DISK@", h.k.images().join("s1.qcow2").to_str().unwrap())).unwrap();
    h.ok(&["-q", "define", f.to_str().unwrap()]);
    // Kept as written, in the definition and its XML (libvirt's <portForward>).
    let xml = h.ok(&["dumpxml", "s1"]);
    assert!(
        xml.contains("<portForward proto='tcp' address='127.0.0.1'>\n        <range start='2222' to='22'/>"),
        "{xml}"
    );
    assert!(h.fails(1, &["ssh", "s1"]).contains("is not running"));
    h.ok(&["-q", "start", "s1"]);
    let argv: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(h.k.root().join("run/domains/s1/qemu.argv")).unwrap()).unwrap();
    assert!(argv.iter().any(|a| a == "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8022-:8022"));
    h.wait_console("s1", "KVMCTL-GUEST-READY", 1, 300);
    // A connection to the host side of the forward arrives in the guest.
    h.guest_ok("s1", "{ nc -l -p 8022 </dev/null >/tmp/in.8022 2>&1 & }", 30);
    h.guest_ok("s1", "sleep 1; netstat -tln | grep -q ':8022 '", 30);
    let send =
        "import socket; s = socket.create_connection(('127.0.0.1', 8022), 10); s.sendall(b'via-hostfwd\\n'); s.close()";
    h.ns.ok(&["python3", "-c", send]);
    let got = h.guest_ok("s1", "sleep 1; cat /tmp/in.8022", 30);
    assert!(got.contains("via-hostfwd"), "{got}");
    // ssh goes through the forward of port 22, with the VM's own host-key alias.
    assert_eq!(h.ok(&["ssh", "s1", "--print"]).trim(), "ssh -p 2222 -o HostKeyAlias=kvmctl-s1 127.0.0.1");
    let cmd = h.ok(&["ssh", "s1", "-l", "root", "--print", "--", "uname", "-a"]);
    assert_eq!(cmd.trim(), "ssh -p 2222 -o HostKeyAlias=kvmctl-s1 -l root 127.0.0.1 uname -a");
    h.ok(&["-q", "destroy", "s1"]);
}

#[test]
fn forwards_are_checked_before_anything_runs() {
    if !vm_prereqs() {
        return;
    }
    let h = VmHost::new("u");
    h.guest_disk("x.qcow2");
    let disk = h.k.images().join("x.qcow2");
    let cases = [
        (r#"hostfwd = ["tcp::2222-:22", "tcp::2222-:23"]"#, "is forwarded twice"),
        (r#"hostfwd = ["tcp::2222-10.0.2.15:22"]"#, "leave GUESTADDR empty"),
        (r#"hostfwd = ["tcp::99999-:22"]"#, "a port is 1 to 65535"),
        (r#"hostfwd = ["tcp::22,guestfwd=tcp:1.2.3.4:1-cmd:sh-:22"]"#, "hostfwd"),
    ];
    for (line, why) in cases {
        let text = DEF
            .replace("@DISK@", disk.to_str().unwrap())
            .replace(r#"hostfwd = ["tcp::2222-:22", "tcp:127.0.0.1:8022-:8022"]"#, line);
        let f = h.k.dir.path().join("bad.toml");
        std::fs::File::create(&f).unwrap().write_all(text.as_bytes()).unwrap();
        let err = h.fails(1, &["define", f.to_str().unwrap()]);
        assert!(err.contains(why), "{line}: {err}");
    }
    // On a tap NIC a forward means nothing: refused.
    let text = DEF
        .replace("@DISK@", disk.to_str().unwrap())
        .replace("type = \"user\"", "type = \"network\"\nnetwork = \"default\"");
    let f = h.k.dir.path().join("tap.toml");
    std::fs::write(&f, text).unwrap();
    assert!(h.fails(1, &["define", f.to_str().unwrap()]).contains("hostfwd is for user-mode NICs"));
    assert_eq!(h.ok(&["list", "--all", "--name"]).trim(), "", "nothing defined");
}

/// Session mode: as an unprivileged user, install defaults to a user-mode NIC, a bridge or
/// network NIC is refused with what to do instead (never a raw EPERM), and the VM runs.
#[test]
fn an_unprivileged_install_uses_user_networking_and_says_why_not_a_network() {
    if !vm_prereqs() || !require("setpriv", have_program("setpriv")) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let h = VmHost::new("u");
    // A root owned by nobody, and a copy of the guest disk nobody can read.
    let home = h.k.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let disk = home.join("tiny.qcow2");
    std::fs::copy(guest_dir().join("tiny.qcow2"), &disk).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let root = home.join("k");
    let user = |args: &[&str]| {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &h.ns.name, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_kvmctl"))
            .arg("--root")
            .arg(&root)
            .args(args)
            .env("HOME", &home)
            .env_remove("KVMCTL_ROOT");
        bounded_output(&mut c)
    };
    let ok = |args: &[&str]| {
        let o = user(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    ok(&["-q", "vol-import", disk.to_str().unwrap(), "--pool", "default", "--name", "u.qcow2"]);
    let base =
        ["install", "-n", "u1", "--memory", "128", "--disk", "vol=default/u.qcow2", "--import", "--noautoconsole"];
    for net in ["network=default", "bridge=br0"] {
        let mut a = base.to_vec();
        a.extend(["--network", net]);
        let o = user(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("needs root; as a user, use --network user") && !err.contains("os error 1)"), "{err}");
    }
    assert_eq!(ok(&["list", "--all", "--name"]).trim(), "", "a refused install leaves nothing");
    ok(&base[..].iter().copied().chain(["-q"]).collect::<Vec<_>>());
    assert_eq!(ok(&["dumpxml", "u1", "--xpath", "string(//interface/@type)"]).trim(), "user");
    let log = root.join("run/domains/u1/console.log");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("KVMCTL-GUEST-READY eth0=10.0.2.15/24") {
        assert!(t0.elapsed().as_secs() < 300, "{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ok(&["-q", "destroy", "u1"]);
}
