//! virsh's named forms of positional arguments (`virsh start --domain web1`, `vol-create-as
//! --pool default --name d.qcow2 --capacity 10G`, `pool-define-as NAME dir - - - - PATH`),
//! rewritten into kvmctl's positional forms before clap parses them, so that scripts written
//! for virsh run unchanged and both spellings run the same command.

use std::ffi::OsString;

/// For each command: the named options that stand for its positionals, in positional order.
fn named_positionals(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "start" | "shutdown" | "reboot" | "reset" | "destroy" | "suspend" | "resume" | "undefine" | "dominfo"
        | "domstate" | "domifaddr" | "domiflist" | "domblklist" | "dumpxml" | "edit" | "autostart" | "console"
        | "vncdisplay" | "domdisplay" | "desc" | "dommemstat" | "domid" | "domuuid" | "events" | "event" => {
            &["--domain"]
        }
        "domrename" => &["--domain", "--new-name"],
        "domblkinfo" | "domblkstat" => &["--domain", "--device"],
        "define" | "net-define" | "net-create" => &["--file"],
        "net-start" | "net-destroy" | "net-undefine" | "net-autostart" | "net-info" | "net-dumpxml" | "net-edit"
        | "net-dhcp-leases" => &["--network"],
        "pool-build" | "pool-start" | "pool-destroy" | "pool-undefine" | "pool-autostart" | "pool-info"
        | "pool-refresh" | "pool-dumpxml" | "pool-edit" => &["--pool"],
        "pool-define-as" | "pool-create-as" => &["--name", "--type"],
        "vol-create-as" => &["--pool", "--name", "--capacity"],
        "vol-info" | "vol-path" | "vol-delete" | "vol-dumpxml" | "vol-wipe" => &["--vol"],
        "vol-resize" => &["--vol", "--capacity"],
        "vol-upload" | "vol-download" => &["--vol", "--file"],
        "vol-clone" => &["--vol", "--newname"],
        _ => &[],
    }
}

/// Global options that take a value (their value is not the command name).
const GLOBAL_WITH_VALUE: [&str; 1] = ["--root"];

/// Rewrite virsh's named forms into positionals; anything else is left for clap to judge.
pub fn rewrite(args: Vec<OsString>) -> Vec<OsString> {
    let strs: Option<Vec<String>> = args.iter().map(|a| a.to_str().map(str::to_string)).collect();
    let Some(a) = strs else { return args };
    // The command: the first word that is neither a global option nor its value.
    let mut i = 1;
    while i < a.len() && a[i].starts_with('-') {
        i += if GLOBAL_WITH_VALUE.contains(&a[i].as_str()) { 2 } else { 1 };
    }
    let Some(cmd) = a.get(i).cloned() else { return args };
    let (head, rest) = (a[..=i].to_vec(), a[i + 1..].to_vec());
    let rest =
        if matches!(cmd.as_str(), "pool-define-as" | "pool-create-as") { pool_define_as_dashes(rest) } else { rest };
    let names = named_positionals(&cmd);
    if names.is_empty() {
        return head.into_iter().chain(rest).map(OsString::from).collect();
    }
    let mut found: Vec<(usize, String)> = Vec::new();
    let mut kept = Vec::new();
    let mut it = rest.into_iter();
    let mut after_dashdash = false;
    while let Some(w) = it.next() {
        if after_dashdash || w == "--" {
            after_dashdash = true;
            kept.push(w);
            continue;
        }
        let (flag, inline) = match w.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (w.clone(), None),
        };
        match names.iter().position(|n| *n == flag) {
            Some(pos) => match inline.or_else(|| it.next()) {
                Some(v) => found.push((pos, v)),
                None => kept.push(w), // `--domain` with no value: clap says what is wrong
            },
            None => kept.push(w),
        }
    }
    found.sort_by_key(|(p, _)| *p);
    let values: Vec<String> = found.iter().map(|(_, v)| v.clone()).collect();
    // Named values for the leading positionals go first; others (the user gave the leading
    // ones positionally) after the rest, where clap takes them in order.
    let leading = found.iter().enumerate().all(|(i, (p, _))| i == *p);
    let out: Vec<String> = if leading {
        head.into_iter().chain(values).chain(kept).collect()
    } else {
        head.into_iter().chain(kept).chain(values).collect()
    };
    out.into_iter().map(OsString::from).collect()
}

/// virsh's `pool-define-as NAME TYPE [SRC-HOST] [SRC-PATH] [SRC-DEV] [SRC-NAME] [TARGET]`: the
/// source fields are `-` for a directory pool, and the seventh word is the target.
fn pool_define_as_dashes(rest: Vec<String>) -> Vec<String> {
    let positional: Vec<usize> =
        (0..rest.len()).filter(|&i| !rest[i].starts_with("--") && (i == 0 || rest[i - 1] != "--target")).collect();
    if positional.len() != 7 || positional[2..6].iter().any(|&i| rest[i] != "-") {
        return rest;
    }
    let target = rest[positional[6]].clone();
    let mut out: Vec<String> =
        rest.into_iter().enumerate().filter(|(i, _)| !positional[2..].contains(i)).map(|(_, w)| w).collect();
    out.extend(["--target".to_string(), target]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(line: &str) -> String {
        let args: Vec<OsString> = line.split(' ').map(OsString::from).collect();
        rewrite(args).iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn virsh_named_forms_become_positionals() {
        assert_eq!(rw("kvmctl start --domain web1"), "kvmctl start web1");
        assert_eq!(rw("kvmctl start --domain=web1 --console"), "kvmctl start web1 --console");
        assert_eq!(rw("kvmctl --root /r -q shutdown --domain web1"), "kvmctl --root /r -q shutdown web1");
        assert_eq!(rw("kvmctl net-start --network default"), "kvmctl net-start default");
        assert_eq!(rw("kvmctl define --file vm.xml"), "kvmctl define vm.xml");
        assert_eq!(rw("kvmctl pool-info --pool default"), "kvmctl pool-info default");
        assert_eq!(
            rw("kvmctl vol-create-as --pool default --name d.qcow2 --capacity 10G --format qcow2"),
            "kvmctl vol-create-as default d.qcow2 10G --format qcow2"
        );
        // Mixed: the leading ones positional, the last one named.
        assert_eq!(rw("kvmctl vol-create-as default d.qcow2 --capacity 1G"), "kvmctl vol-create-as default d.qcow2 1G");
        assert_eq!(rw("kvmctl vol-info --vol d.qcow2 --pool default"), "kvmctl vol-info d.qcow2 --pool default");
        assert_eq!(rw("kvmctl vol-upload --vol d --file /x --pool p"), "kvmctl vol-upload d /x --pool p");
        assert_eq!(rw("kvmctl vol-clone --vol a --newname b --pool p"), "kvmctl vol-clone a b --pool p");
        // vol-list's --pool is its own option already, untouched; so is everything after --.
        assert_eq!(rw("kvmctl vol-list --pool default"), "kvmctl vol-list --pool default");
        assert_eq!(rw("kvmctl console web1 -- --domain"), "kvmctl console web1 -- --domain");
        // A named form without its value is left for clap to refuse.
        assert_eq!(rw("kvmctl start --domain"), "kvmctl start --domain");
    }

    #[test]
    fn pool_define_as_takes_virshs_dashes() {
        assert_eq!(rw("kvmctl pool-define-as p dir - - - - /srv/p"), "kvmctl pool-define-as p dir --target /srv/p");
        assert_eq!(
            rw("kvmctl pool-define-as --name p --type dir --target /t"),
            "kvmctl pool-define-as p dir --target /t"
        );
        assert_eq!(rw("kvmctl pool-define-as p dir --target /t"), "kvmctl pool-define-as p dir --target /t");
        // Not virsh's shape: left alone for clap to refuse.
        assert_eq!(rw("kvmctl pool-define-as p dir x - - - /t"), "kvmctl pool-define-as p dir x - - - /t");
    }
}
