//! Step 4 of the probe: qemu's own KVM initialisation.
//!
//! A host can pass the test guest and still fail in qemu. Seen on nested hosts with qemu 7.2
//! and `-cpu host`: qemu prints its QMP greeting, then the kernel refuses an MSR while the
//! vCPU's reset state is loaded (`failed to set MSR 0x10a to 0x69`) and qemu aborts on an
//! assertion in `kvm_buf_set_msrs`. So qemu is started paused with `-accel kvm -cpu host` and
//! QMP on stdio, and asked to negotiate, run and report its status. qemu answers commands only
//! from its main loop, after machine creation has loaded every vCPU's state, so a `running`
//! reply from a live qemu means its KVM init worked; qemu dying means it did not (its stderr
//! is the reason); no answer by the deadline means the same (the child is killed).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{AccelVerdict, ProbeStep};

/// How long qemu may take to initialise KVM and answer before it is killed.
pub const QEMU_DEADLINE: Duration = Duration::from_secs(10);

const ARGS: [&str; 15] = [
    "-accel",
    "kvm",
    "-cpu",
    "host",
    "-machine",
    "q35",
    "-m",
    "16",
    "-S",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-qmp",
    "stdio",
];

const COMMANDS: &[u8] = br#"{"execute":"qmp_capabilities","id":1}
{"execute":"cont","id":2}
{"execute":"query-status","id":3}
"#;

/// Start `qemu` with KVM as above and report whether its KVM init worked, within `deadline`.
pub fn probe_qemu(qemu: &Path, deadline: Duration) -> AccelVerdict {
    let start = Instant::now();
    let mut cmd = Command::new(qemu);
    cmd.args(ARGS).env("LC_ALL", "C").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe: a killed kvmctl leaves no probe qemu.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return verdict(false, format!("cannot run {}: {e}", qemu.display())),
    };
    // stdin stays open until qemu is killed: qemu quits at EOF on its QMP stdio. A failed
    // write (qemu already gone) shows up as qemu's exit below.
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        let _ = s.write_all(COMMANDS);
    }
    let stderr = collect(child.stderr.take());
    let answer = wait_answer(&mut child, deadline);
    let _ = child.kill();
    let status = child.wait().ok();
    drop(stdin);
    let ms = start.elapsed().as_millis();
    let stderr = stderr.join().unwrap_or_default();
    outcome(answer, status, &stderr, ms, deadline)
}

enum Answer {
    Running,
    Status(String),
    Error(String),
    Exited,
    Timeout,
}

/// Read QMP replies until the status reply (id 3), an error, qemu's exit or the deadline.
fn wait_answer(child: &mut Child, deadline: Duration) -> Answer {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => return Answer::Timeout,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Answer::Exited,
        };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
        if let Some(desc) = msg["error"]["desc"].as_str() {
            return Answer::Error(desc.to_string());
        }
        if msg["id"] == 3 {
            // The reply came from a live main loop; a qemu that aborts right after is caught
            // by the exit check below.
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Answer::Exited;
            }
            return match msg["return"]["status"].as_str() {
                Some("running") => Answer::Running,
                other => Answer::Status(other.unwrap_or("none").to_string()),
            };
        }
    }
}

/// Gather a pipe's text on a thread, so qemu never blocks on a full stderr.
fn collect(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut text);
        }
        text
    })
}

fn outcome(
    answer: Answer,
    status: Option<std::process::ExitStatus>,
    stderr: &str,
    ms: u128,
    deadline: Duration,
) -> AccelVerdict {
    let said = said(stderr);
    match answer {
        Answer::Running => verdict(true, format!("KVM usable: qemu initialised KVM and ran its vCPU ({ms} ms)")),
        Answer::Status(s) => verdict(false, format!("KVM unusable: qemu with -accel kvm reports status {s:?}")),
        Answer::Error(desc) => verdict(false, format!("KVM unusable: qemu with -accel kvm refused to run: {desc}")),
        Answer::Exited => {
            let how = status.map_or("exited".to_string(), |s| s.to_string());
            verdict(false, format!("KVM unusable: qemu's KVM init failed ({how}): {said}"))
        }
        Answer::Timeout => verdict(
            false,
            format!("KVM unusable: qemu with -accel kvm did not answer within {} ms{}", deadline.as_millis(), {
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            }),
        ),
    }
}

/// qemu's stderr in one line: its messages without the program-name prefix.
fn said(stderr: &str) -> String {
    let lines: Vec<&str> =
        stderr.lines().map(|l| l.trim().trim_start_matches("qemu-system-x86_64: ")).filter(|l| !l.is_empty()).collect();
    let text = lines.join("; ");
    match text.char_indices().nth(400) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

fn verdict(usable: bool, reason: String) -> AccelVerdict {
    AccelVerdict::new(usable, ProbeStep::QemuInit, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for qemu: a script that reads its stdin like QMP would and behaves as told.
    fn fake_qemu(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("qemu-system-x86_64");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// `probe_qemu` on a script this process just wrote. Another test thread that forks
    /// while the script is open for writing holds a copy of that descriptor until its own
    /// exec, and exec of a file open for writing fails with ETXTBSY; that moment passes.
    fn probe_fake(qemu: &Path, deadline: Duration) -> AccelVerdict {
        for _ in 0..100 {
            let v = probe_qemu(qemu, deadline);
            if !v.reason.contains("os error 26") {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} stayed busy (ETXTBSY) for a second", qemu.display());
    }

    const GREETING: &str = r#"echo '{"QMP": {"version": {}, "capabilities": []}}'"#;

    #[test]
    fn qemu_that_aborts_after_its_greeting_is_unusable_with_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let q = fake_qemu(
            dir.path(),
            &format!(
                "{GREETING}\necho 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2\n\
                 echo 'qemu-system-x86_64: kvm.c:3183: kvm_buf_set_msrs: Assertion failed.' >&2\nkill -ABRT $$"
            ),
        );
        let v = probe_fake(&q, Duration::from_secs(60));
        assert!(!v.kvm_usable, "{v}");
        assert_eq!(v.decided_by, ProbeStep::QemuInit);
        assert!(v.reason.contains("qemu's KVM init failed"), "{v}");
        assert!(v.reason.contains("failed to set MSR 0x10a to 0x69; kvm.c:3183"), "{v}");
    }

    #[test]
    fn qemu_that_runs_its_vcpu_is_usable() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "{GREETING}\nread a; echo '{{\"return\": {{}}, \"id\": 1}}'\nread b; echo '{{\"return\": {{}}, \"id\": 2}}'\n\
             read c; echo '{{\"return\": {{\"status\": \"running\", \"running\": true}}, \"id\": 3}}'\nexec sleep 60"
        );
        let v = probe_fake(&fake_qemu(dir.path(), &body), Duration::from_secs(60));
        assert!(v.kvm_usable, "{v}");
        assert_eq!(v.decided_by, ProbeStep::QemuInit);
    }

    #[test]
    fn qemu_that_never_answers_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let q = fake_qemu(dir.path(), &format!("{GREETING}\necho 'still initialising' >&2\nexec sleep 60"));
        let v = probe_fake(&q, Duration::from_millis(300));
        assert!(!v.kvm_usable, "{v}");
        assert!(v.reason.contains("did not answer within 300 ms: still initialising"), "{v}");
    }

    #[test]
    fn qemu_refusing_kvm_in_qmp_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "{GREETING}\nread a; echo '{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"no KVM here\"}}, \"id\": 1}}'\n\
             exec sleep 60"
        );
        let v = probe_fake(&fake_qemu(dir.path(), &body), Duration::from_secs(60));
        assert!(!v.kvm_usable && v.reason.contains("no KVM here"), "{v}");
    }

    #[test]
    fn a_missing_qemu_binary_is_named() {
        let v = probe_qemu(Path::new("/nonexistent/qemu-system-x86_64"), Duration::from_secs(60));
        assert!(!v.kvm_usable && v.reason.contains("/nonexistent/qemu-system-x86_64"), "{v}");
    }
}
