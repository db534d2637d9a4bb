//! `--graphics vnc,port=,password=`: the display listens where asked, asks for VNC
//! authentication, and the password is in no definition, argv, log or world-readable file;
//! `vncdisplay` and `domdisplay` say where to connect.

mod common;

use common::netns::can_netns;
use common::vmhost::VmHost;
use common::*;

/// The security types a VNC server at 127.0.0.1:`port` in `h`'s namespace offers (RFB 3.8).
fn rfb_security_types(h: &VmHost, port: u16) -> Vec<u8> {
    let script = format!(
        "import socket,sys\ns=socket.create_connection(('127.0.0.1',{port}),timeout=10)\n\
         v=s.recv(12)\nassert v.startswith(b'RFB '),v\ns.sendall(b'RFB 003.008\\n')\n\
         n=s.recv(1)[0]\nt=b''\nwhile len(t)<n: t+=s.recv(n-len(t))\nprint(','.join(str(x) for x in t))\n"
    );
    let out = h.ns.ok(&["python3", "-c", &script]);
    out.trim().split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
}

#[test]
fn vnc_port_and_password_are_applied_and_the_password_is_kept_private() {
    let guest = guest_dir().join("tiny.qcow2");
    if !require(
        "root, qemu, python3 and the test guest (images/build.sh)",
        can_netns() && have_program("qemu-system-x86_64") && have_program("python3") && guest.exists(),
    ) {
        return;
    }
    let h = VmHost::new("v");
    h.ok(&["-q", "vol-import", guest.to_str().unwrap(), "--pool", "default", "--name", "g.qcow2"]);
    h.ok(&["-q", "vol-clone", "g.qcow2", "v1.qcow2", "--pool", "default", "--linked"]);
    h.ok(&["-q", "vol-clone", "g.qcow2", "v2.qcow2", "--pool", "default", "--linked"]);
    let pw = "s3cr3t!x";
    let install = |vm: &str, disk: &str, graphics: &str| {
        h.ok(&[
            "install",
            "--name",
            vm,
            "--memory",
            "96",
            "--disk",
            &format!("vol=default/{disk}"),
            "--import",
            "--network",
            "none",
            "--graphics",
            graphics,
            "--noautoconsole",
        ])
    };
    install("v1", "v1.qcow2", &format!("vnc,port=5907,password={pw}"));
    install("v2", "v2.qcow2", "vnc");
    // virsh's per-boot domain ids: 1 and 2 in start order (qemu's pid goes to dominfo).
    assert_eq!(h.ok(&["domid", "v1"]).trim(), "1");
    assert_eq!(h.ok(&["domid", "v2"]).trim(), "2");
    assert_eq!(h.ok(&["domname", "2"]).trim(), "v2");
    let uuid = h.ok(&["domuuid", "v1"]);
    assert_eq!(h.ok(&["domname", uuid.trim()]).trim(), "v1");
    let list = h.ok(&["list"]);
    assert!(list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "v1", "running"]), "{list}");
    let info = h.ok(&["dominfo", "v1"]);
    let pid = info.lines().find_map(|l| l.strip_prefix("PID:")).unwrap().trim().to_string();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "{info}");
    assert!(info.lines().any(|l| l.starts_with("Id:") && l.trim_end().ends_with(" 1")), "{info}");
    assert_eq!(h.ok(&["vncdisplay", "v1"]).trim(), "127.0.0.1:7");
    assert_eq!(h.ok(&["domdisplay", "v1"]).trim(), "vnc://127.0.0.1:5907");
    // The password VM asks for VNC authentication (2) only; the other offers none (1).
    assert_eq!(rfb_security_types(&h, 5907), vec![2]);
    let open = h.ok(&["vncdisplay", "v2"]);
    let display: u16 = open.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(rfb_security_types(&h, 5900 + display), vec![1]);
    // The password is nowhere but its 0600 secret file.
    let secret = h.k.root().join("secrets/v1.vnc");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), pw);
    for text in [
        h.ok(&["dumpxml", "v1"]),
        std::fs::read_to_string(h.k.root().join("domains/v1.toml")).unwrap(),
        std::fs::read_to_string(h.k.root().join("run/domains/v1/qemu.argv")).unwrap(),
        std::fs::read_to_string(h.k.root().join("run/domains/v1/qemu.log")).unwrap_or_default(),
        std::fs::read_to_string(h.k.root().join("run/domains/v1/supervisor.log")).unwrap_or_default(),
    ] {
        assert!(!text.contains(pw), "the password leaked: {text}");
    }
    let xml = h.ok(&["dumpxml", "v1"]);
    assert!(xml.contains("<graphics type='vnc' port='5907' autoport='no' listen='127.0.0.1'/>"), "{xml}");
    for vm in ["v1", "v2"] {
        h.ok(&["destroy", vm]);
    }
    assert_eq!(h.ok(&["domid", "v1"]).trim(), "-");
    // A stopped VM has no display to show.
    assert!(h.fails(1, &["vncdisplay", "v1"]).contains("not running"));
    // undefine removes the secret with the definition.
    h.ok(&["undefine", "v1"]);
    assert!(!secret.exists());
    h.ok(&["undefine", "v2"]);
}
