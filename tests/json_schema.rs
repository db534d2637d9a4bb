//! README's "JSON output" table is the `--json` schema: every row's command is run for real
//! (a booted VM on the default NAT network, inside a namespace) and the keys of its object (or
//! of each element of its list) must be exactly the documented ones, `?` keys optional.

mod common;

use std::collections::BTreeSet;

use common::vmhost::{vm_prereqs, VmHost};

/// (command words, required keys, optional keys) of each row of the table.
fn documented() -> Vec<(Vec<String>, BTreeSet<String>, BTreeSet<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("### JSON output").nth(1).expect("README has a JSON output section");
    let section = section.split("\n#").next().unwrap();
    let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let cmd = ticked(cells[0]).remove(0).split(' ').map(str::to_string).collect();
        let (mut req, mut opt) = (BTreeSet::new(), BTreeSet::new());
        for k in ticked(cells[1]) {
            match k.strip_suffix('?') {
                Some(o) => opt.insert(o.to_string()),
                None => req.insert(k),
            };
        }
        rows.push((cmd, req, opt));
    }
    assert!(rows.len() >= 20, "the table has its rows: {rows:?}");
    rows
}

#[test]
fn every_documented_json_shape_is_what_the_commands_print() {
    if !vm_prereqs() {
        return;
    }
    let h = VmHost::new("j");
    h.guest_disk("vm1.qcow2");
    h.ok(&[
        "-q",
        "install",
        "--name",
        "vm1",
        "--memory",
        "128",
        "--disk",
        "vol=default/vm1.qcow2",
        "--network",
        "network=default",
        "--import",
        "--noautoconsole",
    ]);
    h.wait_console("vm1", "KVMCTL-GUEST-READY", 1, 300);
    for (cmd, req, opt) in documented() {
        let mut args = vec!["--json".to_string()];
        args.extend(cmd.iter().cloned());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = h.k.in_ns(&h.ns, &a);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{cmd:?}: not JSON ({e}): {text}{}", String::from_utf8_lossy(&out.stderr)));
        let objects: Vec<&serde_json::Value> = match &v {
            serde_json::Value::Array(items) => items.iter().collect(),
            o => vec![o],
        };
        assert!(!objects.is_empty(), "{cmd:?} printed an empty list: nothing to check");
        for o in objects {
            let keys: BTreeSet<String> =
                o.as_object().unwrap_or_else(|| panic!("{cmd:?}: {o}")).keys().cloned().collect();
            let missing: Vec<&String> = req.difference(&keys).collect();
            let extra: Vec<&String> = keys.iter().filter(|k| !req.contains(*k) && !opt.contains(*k)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{cmd:?}: missing {missing:?}, undocumented {extra:?}: {o}"
            );
        }
    }
    h.ok(&["-q", "destroy", "vm1"]);
}
