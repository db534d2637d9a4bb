#!/usr/bin/env python3
"""Boot the images built by images/build.sh under qemu (TCG) and check them.

Only user-mode networking with restrict=on (or a NIC on an empty hub) is
used, so no packet leaves the machine. Every qemu started is killed at the
end and temporary files go to a temporary directory that is removed.

Usage: images/selftest.py [--out DIR] [--accel tcg] [-v] [TEST ...]
Tests: kernel disk shell q35 nodhcp nics   (default: all)
"""

import argparse
import gzip
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
READY = "KVMCTL-GUEST-READY"
VERBOSE = False


class Guest:
    """A qemu process with its serial port on stdin/stdout pipes."""

    def __init__(self, args, tmpdir, accel="tcg", qmp=False):
        self.qmp_path = os.path.join(tmpdir, "qmp-%d.sock" % time.monotonic_ns()) if qmp else None
        cmd = [QEMU, "-accel", accel, "-m", "256", "-display", "none",
               "-no-reboot", "-serial", "stdio", "-monitor", "none"]
        if self.qmp_path:
            cmd += ["-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        cmd += args
        if VERBOSE:
            print("  $ " + " ".join(cmd))
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.buf = b""
        self.pos = 0

    def read_until(self, needle, timeout):
        """Read serial output until needle (bytes) appears after the last match;
        return the text from the last match up to and including needle."""
        deadline = time.monotonic() + timeout
        while needle not in self.buf[self.pos:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %r within %ss; output:\n%s" % (needle, timeout, self.text()))
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise EOFError("qemu exited (rc=%s) before %r; output:\n%s"
                                   % (self.proc.wait(), needle, self.text()))
                if VERBOSE:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                self.buf += chunk
        i = self.buf.index(needle, self.pos) + len(needle)
        text, self.pos = self.buf[self.pos:i].decode("utf-8", "replace"), i
        return text

    def ready_line(self, timeout=60):
        self.read_until(READY.encode(), timeout)
        t = time.monotonic() - self.start
        return READY + self.read_until(b"\n", 5).rstrip(), t

    def text(self):
        return self.buf.decode("utf-8", "replace")

    def send(self, s):
        self.proc.stdin.write(s.encode())
        self.proc.stdin.flush()

    def wait_exit(self, timeout):
        """Wait for qemu to exit, draining its output; return seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("qemu still running after %ss; output:\n%s" % (timeout, self.text()))
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.2))
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                self.buf += chunk
                if not chunk:
                    self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        return time.monotonic() - t0

    def qmp(self, *commands):
        """Run QMP commands (after qmp_capabilities); return their replies."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.qmp_path)
        f = s.makefile("rwb")
        json.loads(f.readline())  # greeting
        replies = []
        for c in ("qmp_capabilities",) + commands:
            f.write((json.dumps({"execute": c}) + "\n").encode())
            f.flush()
            while True:
                msg = json.loads(f.readline())
                if "event" in msg:
                    continue
                if "error" in msg:
                    raise RuntimeError("QMP %s: %s" % (c, msg["error"]))
                replies.append(msg)
                break
        s.close()
        return replies

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def kernel_args(out, append="console=ttyS0 quiet"):
    return ["-kernel", os.path.join(out, "vmlinuz"),
            "-initrd", os.path.join(out, "initramfs.cpio.gz"),
            "-append", append]


def user_nic(i, model="virtio-net-pci"):
    return ["-netdev", "user,id=n%d,restrict=on" % i, "-device", "%s,netdev=n%d" % (model, i)]


def initramfs_has(out, name):
    with gzip.open(os.path.join(out, "initramfs.cpio.gz")) as f:
        return ("/" + name).encode() in f.read()


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def shell_roundtrip(g, plain=False, timeout=20):
    """Type commands on the serial shell and check the replies. With plain
    (kvmctl.plainshell=1) the replies must be exact: no echo, no escapes."""
    prompt = b"kvmctl-guest:~# "
    g.read_until(prompt, timeout)
    g.send("echo hello-$((100+23))\n")
    out = g.read_until(prompt, timeout)
    if plain:
        check(out == "hello-123\r\n" + prompt.decode(), "echo reply: %r" % out)
    else:
        check(out.replace("\x1b[6n", "").startswith("echo hello-$((100+23))\r\nhello-123\r\n"),
              "echo reply: %r" % out)
    g.send("cat /proc/cmdline\n")
    out = g.read_until(prompt, timeout).replace("\x1b[6n", "")
    if not plain:
        check(out.startswith("cat /proc/cmdline\r\n"), "cmdline echo: %r" % out)
        out = out[len("cat /proc/cmdline\r\n"):]
    check(out.startswith("BOOT_IMAGE=") or out.startswith("console=ttyS0"), "cmdline reply: %r" % out)


def powerdown(g, timeout=20):
    g.qmp("system_powerdown")
    return g.wait_exit(timeout)


def t_kernel(out, tmp, accel):
    """-kernel/-initrd, virtio-net, kvmctl.poweroff=1: READY then qemu exits."""
    g = Guest(kernel_args(out, "console=ttyS0 quiet kvmctl.poweroff=1") + user_nic(0), tmp, accel)
    try:
        line, t = g.ready_line()
        check(line == READY + " eth0=10.0.2.15/24", "ready line %r" % line)
        g.wait_exit(20)
        text = g.text()
        check("\nKVMCTL-CMDLINE: console=ttyS0 quiet kvmctl.poweroff=1\r\n" in text, "cmdline line")
        check(text.count("KVMCTL-") == text.count("\nKVMCTL-") == 3, "KVMCTL-* lines start lines")
        check(text.count(READY) == 1, "exactly one READY line")
        return "%s  (READY after %.2fs, exit after %.2fs)" % (line, t, time.monotonic() - g.start)
    finally:
        g.kill()


def t_disk(out, tmp, accel):
    """tiny.qcow2 as a virtio disk (no -kernel): READY, shell, QMP powerdown."""
    g = Guest(["-drive", "file=%s,if=virtio,snapshot=on" % os.path.join(out, "tiny.qcow2")]
              + user_nic(0), tmp, accel, qmp=True)
    try:
        line, t = g.ready_line()
        check(line == READY + " eth0=10.0.2.15/24", "ready line %r" % line)
        check("KVMCTL-DISK: vda size=67108864" in g.text(), "disk line")
        shell_roundtrip(g)
        d = powerdown(g)
        return "%s  (READY after %.2fs; shell ok; powerdown exit in %.2fs)" % (line, t, d)
    finally:
        g.kill()


def t_shell(out, tmp, accel):
    """-kernel boot, kvmctl.plainshell=1: exact shell replies; QMP system_powerdown."""
    g = Guest(kernel_args(out, "console=ttyS0 quiet kvmctl.plainshell=1") + user_nic(0),
              tmp, accel, qmp=True)
    try:
        line, t = g.ready_line()
        shell_roundtrip(g, plain=True)
        d = powerdown(g)
        check("Power down" in g.text() or "poweroff" in g.text().lower(), "clean poweroff message")
        return "%s  (READY after %.2fs; shell ok; powerdown exit in %.2fs)" % (line, t, d)
    finally:
        g.kill()


def t_q35(out, tmp, accel):
    """-M q35, tiny.qcow2 on virtio-blk, e.g. how a libvirt-like tool boots it."""
    g = Guest(["-M", "q35", "-drive", "file=%s,if=none,id=d0,snapshot=on" % os.path.join(out, "tiny.qcow2"),
               "-device", "virtio-blk-pci,drive=d0"] + user_nic(0), tmp, accel, qmp=True)
    try:
        line, t = g.ready_line()
        check(line == READY + " eth0=10.0.2.15/24", "ready line %r" % line)
        shell_roundtrip(g)
        d = powerdown(g)
        return "%s  (READY after %.2fs; shell ok; powerdown exit in %.2fs)" % (line, t, d)
    finally:
        g.kill()


def t_nodhcp(out, tmp, accel):
    """A NIC on an empty hub (no DHCP server): READY with eth0=none, and no NIC at all."""
    res = []
    g = Guest(kernel_args(out, "console=ttyS0 quiet kvmctl.poweroff=1")
              + ["-netdev", "hubport,id=h0,hubid=0", "-device", "virtio-net-pci,netdev=h0"], tmp, accel)
    try:
        line, t = g.ready_line()
        check(line == READY + " eth0=none", "ready line %r" % line)
        g.wait_exit(20)
        res.append("%s  (READY after %.2fs)" % (line, t))
    finally:
        g.kill()
    g = Guest(kernel_args(out, "console=ttyS0 quiet kvmctl.poweroff=1") + ["-nic", "none"], tmp, accel)
    try:
        line, t = g.ready_line()
        check(line == READY, "ready line %r" % line)
        g.wait_exit(20)
        res.append("%r  (no NIC, READY after %.2fs)" % (line, t))
    finally:
        g.kill()
    return "; ".join(res)


def t_nics(out, tmp, accel):
    """e1000 and rtl8139 NICs (kernel flavours that have the drivers) get leases."""
    models = [("e1000", "e1000.ko"), ("rtl8139", "8139cp.ko")]
    have = [m for m, ko in models if initramfs_has(out, ko)]
    if not have:
        return "SKIPPED: this kernel has no e1000/8139cp modules (use KVMCTL_KERNEL_FLAVOUR=amd64)"
    args = user_nic(0)
    for i, m in enumerate(have, 1):
        args += user_nic(i, m)
    g = Guest(kernel_args(out, "console=ttyS0 quiet kvmctl.poweroff=1") + args, tmp, accel)
    try:
        line, t = g.ready_line()
        want = READY + "".join(" eth%d=10.0.2.15/24" % i for i in range(len(have) + 1))
        check(line == want, "ready line %r, want %r" % (line, want))
        g.wait_exit(20)
        return "%s  (virtio-net + %s, READY after %.2fs)" % (line, " + ".join(have), t)
    finally:
        g.kill()


TESTS = {"kernel": t_kernel, "disk": t_disk, "shell": t_shell, "q35": t_q35, "nodhcp": t_nodhcp,
         "nics": t_nics}


def main():
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("tests", nargs="*", metavar="TEST", help="one of: " + " ".join(TESTS))
    a = ap.parse_args()
    for n in a.tests:
        if n not in TESTS:
            ap.error("unknown test %r (tests: %s)" % (n, " ".join(TESTS)))
    VERBOSE = a.verbose
    names = a.tests or list(TESTS)
    passed = failed = skipped = 0
    with tempfile.TemporaryDirectory(prefix="kvmctl-selftest.") as tmp:
        for n in names:
            t0 = time.monotonic()
            try:
                msg = TESTS[n](a.out, tmp, a.accel)
                if msg.startswith("SKIPPED"):
                    skipped += 1
                    print("skip %-7s %5.1fs  %s" % (n, time.monotonic() - t0, msg))
                else:
                    passed += 1
                    print("ok   %-7s %5.1fs  %s" % (n, time.monotonic() - t0, msg))
            except Exception as e:  # noqa: BLE001 - report and go on
                failed += 1
                print("FAIL %-7s %5.1fs  %s: %s" % (n, time.monotonic() - t0, type(e).__name__, e))
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
