#!/usr/bin/env python3
"""Boot the images built by images/build.sh under qemu (TCG) and check them.

Only user-mode networking with restrict=on (or a NIC on an empty hub) is
used, so no packet leaves the machine. Every qemu started is killed at the
end and temporary files go to a temporary directory that is removed.
Host tools used besides qemu: qemu-img, xorriso, mkfs.fat, mcopy (all
installed by build.sh), and OVMF (ovmf) for the uefi test.

Usage: images/selftest.py [--out DIR] [--accel tcg] [-v] [TEST ...]
Tests: kernel disk shell q35 nodhcp nics installer location pxe cloudinit uefi
(default: all)
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
        check("\nKVMCTL-FIRMWARE: bios\r\n" in text, "firmware line")
        check(text.count("KVMCTL-") == text.count("\nKVMCTL-") == 4, "KVMCTL-* lines start lines")
        check("KVMCTL-DISK:" not in text, "no disk (the empty default CD-ROM drive is none)")
        check("KVMCTL-CLOUDINIT" not in text, "no cloud-init lines without a seed")
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


def check_protocol(text):
    """Every KVMCTL-* line starts a line of its own; READY at most once."""
    check(text.count("KVMCTL-") == text.count("\nKVMCTL-"), "KVMCTL-* lines start lines")
    check(text.count(READY) <= 1, "at most one READY line")


def new_disk(tmp, name, size="1G"):
    path = os.path.join(tmp, name)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size], check=True)
    return path


def boot_installed(disk, tmp, accel):
    """Boot a disk written by the installer: READY, kvmctl.installed=1, QMP powerdown."""
    g = Guest(["-drive", "file=%s,if=virtio" % disk] + user_nic(0), tmp, accel, qmp=True)
    try:
        line, t = g.ready_line()
        check(line == READY + " eth0=10.0.2.15/24", "ready line %r" % line)
        text = g.text()
        check_protocol(text)
        check("\nKVMCTL-CMDLINE: BOOT_IMAGE=/vmlinuz console=tty0 console=ttyS0,115200 quiet "
              "kvmctl.installed=1 initrd=/initramfs.cpio.gz\r\n" in text, "installed system's cmdline")
        check("\nKVMCTL-DISK: vda size=1073741824\r\n" in text, "disk line")
        d = powerdown(g)
        return t, d
    finally:
        g.kill()


def t_installer(out, tmp, accel):
    """tiny-installer.iso (--cdrom): isolinux boots the installer from the CD, it writes the tiny
    system onto an empty virtio disk and powers off; then the disk alone reaches READY."""
    iso = os.path.join(out, "tiny-installer.iso")
    disk = new_disk(tmp, "installer-target.qcow2")
    try:
        g = Guest(["-cdrom", iso, "-drive", "file=%s,if=virtio" % disk, "-boot", "d", "-nic", "none"],
                  tmp, accel)
        try:
            g.read_until(b"KVMCTL-INSTALL-DONE", 120)
            t1 = time.monotonic() - g.start
            g.wait_exit(20)
            t1x = time.monotonic() - g.start
            text = g.text()
            check_protocol(text)
            check("ISOLINUX" in text, "isolinux banner")
            check("kvmctl.install=1" in text, "installer cmdline")
            check("\nKVMCTL-DISK: sr0 size=%d\r\n" % os.path.getsize(iso) in text, "CD line")
            check("\nKVMCTL-INSTALL: source=sr0 target=vda size=67108864\r\n" in text, "install line")
            check("\nKVMCTL-INSTALL-DONE\r\n" in text, "done line")
            check(READY not in text and "FAILED" not in text, "no READY/FAILED line")
        finally:
            g.kill()
        t2, d = boot_installed(disk, tmp, accel)
    finally:
        os.remove(disk)
    # no disk to install onto: KVMCTL-INSTALL-FAILED, and it powers off all the same
    g = Guest(["-cdrom", iso, "-boot", "d", "-nic", "none"], tmp, accel)
    try:
        g.read_until(b"KVMCTL-INSTALL-FAILED: no target disk", 120)
        g.wait_exit(20)
        check("KVMCTL-INSTALL-DONE" not in g.text(), "no DONE line")
    finally:
        g.kill()
    return ("KVMCTL-INSTALL-DONE after %.2fs, qemu exit after %.2fs; disk: READY after %.2fs, "
            "kvmctl.installed=1, powerdown exit in %.2fs; no disk: KVMCTL-INSTALL-FAILED"
            % (t1, t1x, t2, d))


def iso_files(iso):
    """Paths of the regular files in an ISO (Rock Ridge names), read with xorriso."""
    r = subprocess.run(["xorriso", "-abort_on", "NEVER", "-indev", iso, "-find", "/", "-type", "f"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    return sorted(l.strip().strip("'") for l in r.stdout.decode().splitlines() if l.startswith("'/"))


def iso_extract(iso, path, dest):
    subprocess.run(["xorriso", "-abort_on", "NEVER", "-osirrox", "on", "-indev", iso,
                    "-extract", path, dest], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    with open(dest, "rb") as f:
        data = f.read()
    os.remove(dest)
    return data


def t_location(out, tmp, accel):
    """--location media: the Debian/Ubuntu/Fedora trees and ISOs hold the same kernel + initrd;
    a direct boot of location/install.amd with extra args (and location.iso as a CD) shows them on
    KVMCTL-CMDLINE; tiny-installer.iso used as a --location (kernel from install.amd/, the ISO as
    a CD, kvmctl.install=1 kvmctl.install.reboot=1) installs and reboots."""
    with open(os.path.join(out, "vmlinuz"), "rb") as f:
        kernel = f.read()
    with open(os.path.join(out, "initramfs.cpio.gz"), "rb") as f:
        initrd = f.read()
    layouts = {  # tree -> (kernel, initrd, info file)
        "location": ("install.amd/vmlinuz", "install.amd/initrd.gz", ".disk/info"),
        "location-casper": ("casper/vmlinuz", "casper/initrd", ".disk/info"),
        "location-fedora": ("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img", ".treeinfo"),
    }
    for tree, (k, i, info) in layouts.items():
        for rel, want in ((k, kernel), (i, initrd)):
            with open(os.path.join(out, tree, rel), "rb") as f:
                check(f.read() == want, "%s/%s differs from the kernel/initramfs" % (tree, rel))
        check(os.path.getsize(os.path.join(out, tree, info)) > 0, "%s/%s" % (tree, info))
        iso = os.path.join(out, tree + ".iso")
        files = iso_files(iso)
        check(files == sorted("/" + p for p in (k, i, info)), "%s files: %r" % (iso, files))
        check(iso_extract(iso, "/" + k, os.path.join(tmp, "k")) == kernel, "%s:/%s" % (iso, k))
    inst = os.path.join(out, "tiny-installer.iso")
    files = iso_files(inst)
    for p in ("/install.amd/vmlinuz", "/install.amd/initrd.gz", "/.disk/info", "/tiny.img.gz",
              "/isolinux/isolinux.bin", "/isolinux/isolinux.cfg", "/isolinux/ldlinux.c32"):
        check(p in files, "%s in tiny-installer.iso (%r)" % (p, files))
    res = ["3 trees + 3 ISOs ok"]

    loc = os.path.join(out, "location")
    iso = os.path.join(out, "location.iso")
    append = "console=ttyS0 quiet kvmctl.poweroff=1 kvmctl.marker=loc-42"
    g = Guest(["-kernel", os.path.join(loc, "install.amd/vmlinuz"),
               "-initrd", os.path.join(loc, "install.amd/initrd.gz"), "-append", append,
               "-cdrom", iso] + user_nic(0), tmp, accel)
    try:
        line, t = g.ready_line()
        check(line == READY + " eth0=10.0.2.15/24", "ready line %r" % line)
        g.wait_exit(20)
        text = g.text()
        check_protocol(text)
        check("\nKVMCTL-CMDLINE: %s\r\n" % append in text, "cmdline with the marker")
        check("\nKVMCTL-DISK: sr0 size=%d\r\n" % os.path.getsize(iso) in text, "CD line")
        res.append("extra args + CD: READY after %.2fs" % t)
    finally:
        g.kill()

    disk = new_disk(tmp, "location-target.qcow2")
    try:
        append = "console=ttyS0 quiet kvmctl.install=1 kvmctl.install.reboot=1"
        g = Guest(["-kernel", os.path.join(loc, "install.amd/vmlinuz"),
                   "-initrd", os.path.join(loc, "install.amd/initrd.gz"), "-append", append,
                   "-cdrom", inst, "-drive", "file=%s,if=virtio" % disk, "-nic", "none"], tmp, accel)
        try:
            g.read_until(b"KVMCTL-INSTALL-DONE", 120)
            t1 = time.monotonic() - g.start
            g.wait_exit(20)  # reboot + -no-reboot: qemu exits
            text = g.text()
            check_protocol(text)
            check("\nKVMCTL-INSTALL: source=sr0 target=vda size=67108864\r\n" in text, "install line")
            check("reboot: Restarting system" in text, "rebooted (not powered off)")
        finally:
            g.kill()
        t2, _ = boot_installed(disk, tmp, accel)
        res.append("install from tiny-installer.iso as --location: DONE after %.2fs, rebooted; "
                   "disk READY after %.2fs" % (t1, t2))
    finally:
        os.remove(disk)
    return "; ".join(res)


def t_pxe(out, tmp, accel):
    """PXE: qemu's iPXE ROM (virtio-net) fetches pxelinux.0 from slirp's TFTP server (images/out/pxe),
    pxelinux loads vmlinuz + initrd.gz: READY, QMP powerdown."""
    pxe = os.path.join(out, "pxe")
    g = Guest(["-netdev", "user,id=n0,restrict=on,tftp=%s,bootfile=pxelinux.0" % pxe,
               "-device", "virtio-net-pci,netdev=n0", "-boot", "n"], tmp, accel, qmp=True)
    try:
        line, t = g.ready_line(120)
        check(line == READY + " eth0=10.0.2.15/24", "ready line %r" % line)
        text = g.text()
        check_protocol(text)
        check("PXELINUX" in text, "PXELINUX banner")  # (iPXE writes on the VGA console only)
        check("\nKVMCTL-CMDLINE: BOOT_IMAGE=vmlinuz console=tty0 console=ttyS0,115200 quiet "
              "initrd=initrd.gz\r\n" in text, "cmdline line")
        d = powerdown(g)
        return "%s  (READY after %.2fs; powerdown exit in %.2fs)" % (line, t, d)
    finally:
        g.kill()


SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEm1Sx6PZ0ZpQk3yd9o0kCWZ6bbcZ5ciMGZVyU1vj5Hb "
           "selftest@kvmctl")


def make_seed(tmp, name, meta, user, fs="iso9660", label="cidata", network=None):
    """A NoCloud seed: an ISO (xorriso -as mkisofs -V cidata -J -r) or a FAT image (mkfs.fat + mcopy)."""
    d = os.path.join(tmp, name + ".d")
    os.mkdir(d)
    files = {"meta-data": meta, "user-data": user}
    if network is not None:
        files["network-config"] = network
    for f, content in files.items():
        with open(os.path.join(d, f), "w") as fh:
            fh.write(content)
    img = os.path.join(tmp, name)
    if fs == "iso9660":
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", img, "-V", label, "-J", "-r", d],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        subprocess.run(["mkfs.fat", "-C", "-n", label, img, "2048"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["mcopy", "-i", img] + [os.path.join(d, f) for f in files] + ["::/"], check=True,
                       env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    shutil.rmtree(d)
    return img


def cloudinit_lines(text):
    return [l for l in text.replace("\r", "").split("\n") if l.startswith("KVMCTL-CLOUDINIT")]


def t_cloudinit(out, tmp, accel):
    """NoCloud seed (label cidata) as a virtio disk (ISO 9660 and FAT), an IDE CD and a virtio-scsi
    CD: KVMCTL-CLOUDINIT lines before READY, hostname applied, ssh key installed."""
    res = []
    meta = "instance-id: iid-selftest-1\nlocal-hostname: meta-host\n"
    user = ("#cloud-config\nhostname: seed-host\nkvmctl_marker: marker-123\n"
            "chpasswd:\n  list: |\n    root:s3cret\n  expire: False\n"
            "users:\n  - name: root\n    ssh_authorized_keys:\n      - %s\n" % SSH_KEY)
    seed = make_seed(tmp, "seed.iso", meta, user, network="version: 2\nethernets: {}\n")
    tail = ["KVMCTL-CLOUDINIT: instance-id=iid-selftest-1",
            "KVMCTL-CLOUDINIT: hostname=seed-host",
            "KVMCTL-CLOUDINIT: marker=marker-123",
            "KVMCTL-CLOUDINIT: root-password=set",
            "KVMCTL-CLOUDINIT: ssh-key=ssh-ed25519 selftest@kvmctl"]

    # 1. ISO seed on virtio-blk (read-only), with the shell: hostname and authorized_keys
    g = Guest(kernel_args(out, "console=ttyS0 quiet kvmctl.plainshell=1")
              + ["-drive", "file=%s,if=virtio,format=raw,readonly=on" % seed] + user_nic(0),
              tmp, accel, qmp=True)
    try:
        line, t = g.ready_line()
        text = g.text()
        check_protocol(text)
        got = cloudinit_lines(text)
        want = ["KVMCTL-CLOUDINIT: seed=vda fs=iso9660 label=cidata "
                "files=meta-data,user-data,network-config user-data=cloud-config"] + tail
        check(got == want, "cloud-init lines %r, want %r" % (got, want))
        check(text.index("KVMCTL-DISK: vda") < text.index("KVMCTL-CLOUDINIT") < text.index(READY),
              "order: DISK, CLOUDINIT, READY")
        prompt = b"kvmctl-guest:~# "
        g.read_until(prompt, 20)
        g.send("hostname\n")
        r = g.read_until(prompt, 20)
        check(r == "seed-host\r\n" + prompt.decode(), "hostname reply %r" % r)
        g.send("cat /root/.ssh/authorized_keys\n")
        r = g.read_until(prompt, 20)
        check(r == SSH_KEY + "\r\n" + prompt.decode(), "authorized_keys %r" % r)
        powerdown(g)
        res.append("virtio ISO: %d lines, hostname + key applied (READY %.2fs)" % (len(got), t))
    finally:
        g.kill()

    # 2. the same ISO as an IDE CD-ROM, 3. on virtio-scsi as scsi-cd (LUN 0), with a
    # scsi-hd on LUN 1 (tiny.qcow2) as kvmctl puts them
    tiny = os.path.join(out, "tiny.qcow2")
    for what, args in (("IDE CD", ["-cdrom", seed]),
                       ("virtio-scsi CD", ["-device", "virtio-scsi-pci,id=scsi0",
                                           "-drive", "if=none,id=cd0,file=%s,format=raw,media=cdrom,"
                                                     "readonly=on" % seed,
                                           "-device", "scsi-cd,drive=cd0,bus=scsi0.0,lun=0",
                                           "-drive", "if=none,id=hd1,file=%s,snapshot=on" % tiny,
                                           "-device", "scsi-hd,drive=hd1,bus=scsi0.0,lun=1"])):
        g = Guest(kernel_args(out, "console=ttyS0 quiet kvmctl.poweroff=1") + args + user_nic(0),
                  tmp, accel)
        try:
            line, t = g.ready_line()
            g.wait_exit(20)
            text = g.text()
            check_protocol(text)
            got = cloudinit_lines(text)
            want = ["KVMCTL-CLOUDINIT: seed=sr0 fs=iso9660 label=cidata "
                    "files=meta-data,user-data,network-config user-data=cloud-config"] + tail
            check(got == want, "%s: cloud-init lines %r" % (what, got))
            check("\nKVMCTL-DISK: sr0 size=%d\r\n" % os.path.getsize(seed) in text, "%s: disk line" % what)
            if "scsi" in what:
                check("\nKVMCTL-DISK: sda size=67108864\r\n" in text, "virtio-scsi disk line")
            res.append("%s ok (READY %.2fs)" % (what, t))
        finally:
            g.kill()

    # 4. FAT seed labelled CIDATA, JSON meta-data, no hostname in user-data: meta-data's wins
    fat = make_seed(tmp, "seed.img", '{"instance-id": "iid-fat", "local-hostname": "meta-host"}\n',
                    "#cloud-config\nkvmctl_marker: 'fat-marker'\n", fs="vfat", label="CIDATA")
    g = Guest(kernel_args(out, "console=ttyS0 quiet kvmctl.poweroff=1")
              + ["-drive", "file=%s,if=virtio,format=raw" % fat] + user_nic(0), tmp, accel)
    try:
        line, t = g.ready_line()
        g.wait_exit(20)
        got = cloudinit_lines(g.text())
        want = ["KVMCTL-CLOUDINIT: seed=vda fs=vfat label=CIDATA files=meta-data,user-data "
                "user-data=cloud-config",
                "KVMCTL-CLOUDINIT: instance-id=iid-fat",
                "KVMCTL-CLOUDINIT: hostname=meta-host",
                "KVMCTL-CLOUDINIT: marker=fat-marker"]
        check(got == want, "FAT seed: cloud-init lines %r, want %r" % (got, want))
        res.append("FAT seed + JSON meta-data ok (READY %.2fs)" % t)
    finally:
        g.kill()
    return "; ".join(res)


OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS.fd"


def t_uefi(out, tmp, accel):
    """OVMF (Debian's ovmf): tiny-uefi.qcow2 (GPT, ESP, systemd-boot) reaches READY with
    KVMCTL-FIRMWARE: uefi; and a -kernel boot under OVMF too."""
    if not (os.path.exists(OVMF_CODE) and os.path.exists(OVMF_VARS)):
        return "SKIPPED: no %s (apt-get install ovmf)" % OVMF_CODE
    res = []
    for what, args in (("tiny-uefi.qcow2", ["-drive", "file=%s,if=virtio,snapshot=on"
                                            % os.path.join(out, "tiny-uefi.qcow2")]),
                       ("-kernel", kernel_args(out))):
        vars_fd = os.path.join(tmp, "OVMF_VARS.fd")
        shutil.copyfile(OVMF_VARS, vars_fd)
        g = Guest(["-drive", "if=pflash,format=raw,readonly=on,file=" + OVMF_CODE,
                   "-drive", "if=pflash,format=raw,file=" + vars_fd] + args + user_nic(0),
                  tmp, accel, qmp=True)
        try:
            line, t = g.ready_line(180)
            check(line == READY + " eth0=10.0.2.15/24", "ready line %r" % line)
            text = g.text()
            check_protocol(text)
            check("\nKVMCTL-FIRMWARE: uefi\r\n" in text, "firmware line")
            if what == "-kernel":
                # (OVMF's -kernel loader adds initrd=initrd)
                check("\nKVMCTL-CMDLINE: console=ttyS0 quiet initrd=initrd\r\n" in text, "cmdline line")
            else:
                check("\nKVMCTL-CMDLINE: initrd=\\initramfs.cpio.gz console=tty0 console=ttyS0,115200 quiet\r\n"
                      in text, "cmdline line")
                check("\nKVMCTL-DISK: vda size=67108864\r\n" in text, "disk line")
            d = powerdown(g, 60)
            res.append("%s: READY after %.2fs, powerdown exit in %.2fs" % (what, t, d))
        finally:
            g.kill()
            os.remove(vars_fd)
    return "; ".join(res)


TESTS = {"kernel": t_kernel, "disk": t_disk, "shell": t_shell, "q35": t_q35, "nodhcp": t_nodhcp,
         "nics": t_nics, "installer": t_installer, "location": t_location, "pxe": t_pxe,
         "cloudinit": t_cloudinit, "uefi": t_uefi}


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
