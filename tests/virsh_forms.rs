//! virsh's named forms (`--domain`, `--network`, `--pool`, `--vol`, `--file`, `vol-create-as
//! --pool --name --capacity`, `pool-define-as NAME dir - - - - PATH`) run the same commands as
//! the positional ones, with the same output.

mod common;

use common::*;

const XML: &str = "<domain type='kvm'><name>vf1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
                   <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>\n";

#[test]
fn named_forms_run_the_same_commands_as_positional_ones() {
    let k = Kvm::new();
    let dir = k.dir.path();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    // Pools: virsh's dashes for the source fields, then --pool everywhere.
    k.ok(&["-q", "pool-define-as", "p2", "dir", "-", "-", "-", "-", &p("p2")]);
    assert!(k.ok(&["pool-info", "p2"]).contains("p2"));
    k.ok(&["-q", "pool-build", "--pool", "p2"]);
    k.ok(&["-q", "pool-start", "--pool", "p2"]);
    assert_eq!(k.ok(&["pool-info", "--pool", "p2"]), k.ok(&["pool-info", "p2"]));
    k.ok(&["-q", "pool-define-as", "--name", "p3", "--type", "dir", "--target", &p("p3")]);
    assert!(k.ok(&["pool-info", "p3"]).contains(&p("p3")));
    // Volumes.
    k.ok(&["-q", "vol-create-as", "--pool", "p2", "--name", "a.qcow2", "--capacity", "1G", "--format", "qcow2"]);
    k.ok(&["-q", "vol-create-as", "p2", "b.img", "--capacity", "2M"]);
    assert_eq!(k.ok(&["vol-info", "--vol", "a.qcow2", "--pool", "p2"]), k.ok(&["vol-info", "a.qcow2", "--pool", "p2"]));
    assert!(k.ok(&["vol-info", "b.img", "--pool", "p2"]).contains("2.00 MiB"));
    assert_eq!(k.ok(&["vol-path", "--vol", "a.qcow2", "--pool", "p2"]).trim(), p("p2/a.qcow2"));
    k.ok(&["-q", "vol-resize", "--vol", "a.qcow2", "--capacity", "2G", "--pool", "p2"]);
    assert!(k.ok(&["vol-info", "a.qcow2", "--pool", "p2"]).contains("2.00 GiB"));
    k.ok(&["-q", "vol-clone", "--vol", "a.qcow2", "--newname", "c.qcow2", "--pool", "p2"]);
    k.ok(&["-q", "vol-download", "--vol", "b.img", "--file", &p("b.out"), "--pool", "p2"]);
    assert_eq!(std::fs::metadata(p("b.out")).unwrap().len(), 2 << 20);
    k.ok(&["-q", "vol-upload", "--vol", "b.img", "--file", &p("b.out"), "--pool", "p2"]);
    k.ok(&["-q", "vol-delete", "--vol", "c.qcow2", "--pool", "p2"]);
    assert!(!std::path::Path::new(&p("p2/c.qcow2")).exists());
    // Networks.
    assert_eq!(k.ok(&["net-dumpxml", "--network", "default"]), k.ok(&["net-dumpxml", "default"]));
    assert_eq!(k.ok(&["net-info", "--network", "default"]), k.ok(&["net-info", "default"]));
    // Domains.
    std::fs::write(p("d.xml"), XML).unwrap();
    k.ok(&["-q", "define", "--file", &p("d.xml")]);
    assert_eq!(k.ok(&["dominfo", "--domain", "vf1"]), k.ok(&["dominfo", "vf1"]));
    assert_eq!(k.ok(&["dumpxml", "--domain", "vf1"]), k.ok(&["dumpxml", "vf1"]));
    assert_eq!(k.ok(&["domstate", "--domain=vf1"]).trim(), "shut off");
    k.ok(&["-q", "autostart", "--domain", "vf1"]);
    k.ok(&["-q", "undefine", "--domain", "vf1"]);
    assert_eq!(k.ok(&["list", "--all", "--name"]).trim(), "");
    // version, uri, nodeinfo.
    let v = k.ok(&["version"]);
    assert!(v.starts_with("kvmctl ") && v.contains("Running hypervisor: QEMU"), "{v}");
    assert_eq!(k.ok(&["uri"]).trim(), format!("kvmctl://{}", k.root().display()));
    let n = k.json(&["nodeinfo"]);
    assert!(n["CPU(s)"].as_str().unwrap().parse::<u32>().unwrap() >= 1, "{n}");
    assert!(n["Memory size"].as_str().unwrap().ends_with(" KiB"), "{n}");
    // A named form without its value, or one the command does not have, is a usage error.
    assert!(k.fails(2, &["start", "--domain"]).contains("--domain"));
    assert!(k.fails(2, &["start", "--network", "default"]).contains("--network"));
}
