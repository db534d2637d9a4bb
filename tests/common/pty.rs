//! Drive a program through a real pseudo-terminal, as a person at a terminal would.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pty {
    master: std::fs::File,
    pub child: Child,
    pub seen: String,
}

impl Pty {
    /// Spawn `cmd` with a new pty as its controlling terminal and stdio.
    pub fn spawn(mut cmd: Command) -> Pty {
        let p = nix::pty::openpty(None, None).expect("openpty");
        let slave: OwnedFd = p.slave;
        let (s0, s1, s2) = (slave.try_clone().unwrap(), slave.try_clone().unwrap(), slave);
        cmd.stdin(Stdio::from(s0)).stdout(Stdio::from(s1)).stderr(Stdio::from(s2));
        // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn under pty");
        let master = std::fs::File::from(p.master);
        nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        Pty { master, child, seen: String::new() }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.master.write_all(data).unwrap();
    }

    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.master.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => return,
            }
        }
    }

    /// Wait until the output holds `pat` `n` times; panics with the transcript on timeout.
    pub fn expect_n(&mut self, pat: &str, n: usize, secs: u64) {
        let t0 = Instant::now();
        loop {
            self.pump();
            if self.seen.matches(pat).count() >= n {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "no {pat:?} (x{n}) within {secs}s; transcript:\n{}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn expect(&mut self, pat: &str, secs: u64) {
        self.expect_n(pat, 1, secs)
    }

    /// Wait for the program to exit, whatever its status; returns the status.
    pub fn wait_status(&mut self, secs: u64) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            self.pump();
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                self.pump();
                return st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "did not exit within {secs}s; transcript:\n{}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the program to exit; returns how long that took.
    pub fn wait_exit(&mut self, secs: u64) -> Duration {
        let t0 = Instant::now();
        loop {
            self.pump();
            if let Some(st) = self.child.try_wait().unwrap() {
                self.pump();
                assert!(st.success(), "exited with {st}; transcript:\n{}", self.seen);
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "did not exit within {secs}s; transcript:\n{}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
