#!/usr/bin/env python3
"""kvmctl benchmarks: each row runs kvmctl and its peer side by side, alternating, in one run.

Usage: bench/run.py [path/to/kvmctl]   (make bench)
Prints a Markdown table; the numbers in BENCHMARKS.md come from it.
KVMCTL_BENCH=storage,network,domains picks groups; BENCH_ONLY=SUBSTRING runs only the storage
rows whose name contains it (and, unless KVMCTL_BENCH names them, no network or domain rows),
e.g. BENCH_ONLY=compressed.
"""
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

KVMCTL = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/kvmctl")


def run(argv, **kw):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


def timed(argv, before=None):
    """Wall time of one run in ms; `before` runs untimed first (cleanup)."""
    if before:
        before()
    os.sync()  # no run pays for the writeback of the one before it
    t = time.perf_counter()
    run(argv)
    return (time.perf_counter() - t) * 1000


def rm(path):
    if os.path.exists(path):
        os.remove(path)


def alternate(n, a, b):
    """Run a and b alternately n times each; medians in ms."""
    ta, tb = [], []
    for _ in range(n):
        ta.append(a())
        tb.append(b())
    return statistics.median(ta), statistics.median(tb)


def allocated(path):
    return os.stat(path).st_blocks * 512


rows = []
ONLY = os.environ.get("BENCH_ONLY", "")


def wanted(*names):
    """Does BENCH_ONLY (unset: everything) select a row with one of these names?"""
    return not ONLY or any(ONLY in n for n in names)


def row(name, ours, peer, peer_name, target, note=""):
    ratio = f"{peer / ours:.2f}x" if peer else "-"
    rows.append((name, f"{ours:.2f} ms", f"{peer:.2f} ms" if peer else "-", peer_name, ratio, target, note))


def bench_storage(tmp):
    root = os.path.join(tmp, "root")
    k = [KVMCTL, "--root", root, "-q"]
    images = os.path.join(root, "images")
    run(k + ["pool-list"])
    peer_dir = os.path.join(tmp, "peer")
    os.makedirs(peer_dir)

    if wanted("vol-create-as 10G qcow2"):
        bench_create(k, images, peer_dir)
    if wanted("full clone 4 GiB / 512 MiB data", "full clone 4 GiB / 512 MiB data --sync"):
        bench_full_clone(k, tmp, images, peer_dir)
    if wanted("linked clone of 10G", "linked clone of 1T"):
        bench_linked(k, images, peer_dir)
    if wanted(*COMPRESSED_ROWS):
        bench_compressed(k, tmp, images, peer_dir)


def bench_create(k, images, peer_dir):
    # 1. vol-create-as 10G qcow2 vs qemu-img create.
    v = os.path.join(images, "v.qcow2")
    p = os.path.join(peer_dir, "v.qcow2")
    ours, peer = alternate(
        30,
        lambda: timed(k + ["vol-create-as", "default", "v.qcow2", "10G", "--format", "qcow2"], lambda: rm(v)),
        lambda: timed(["qemu-img", "create", "-q", "-f", "qcow2", p, "10G"], lambda: rm(p)),
    )
    row("vol-create-as 10G qcow2", ours, peer, "qemu-img create", "not slower (>= 1.0x)")


def bench_full_clone(k, tmp, images, peer_dir):
    # 2. Full clone of a 4 GiB volume holding 512 MiB of data vs qemu-img convert -O qcow2.
    run(k + ["vol-create-as", "default", "src.qcow2", "4G", "--format", "qcow2"])
    src = os.path.join(images, "src.qcow2")
    for i in range(8):  # 8 x 64 MiB spread over the disk, random bytes (no zero shortcut)
        blob = os.path.join(tmp, "blob")
        with open(blob, "wb") as f:
            f.write(os.urandom(64 << 20))
        off = i * (512 << 20)
        run(["qemu-io", "-f", "qcow2", "-c", f"write -s {blob} {off} {64 << 20}", src])
        os.remove(blob)
    dst = os.path.join(images, "dst.qcow2")
    conv = os.path.join(peer_dir, "conv.qcow2")
    clone = lambda extra: lambda: timed(k + ["vol-clone", "src.qcow2", "dst.qcow2", "--pool", "default"] + extra, lambda: rm(dst))
    # By default kvmctl, like qemu-img convert (cache=unsafe), leaves the data to the kernel's
    # writeback; with --sync it returns once the copy is on disk, as -t writeback does.
    for extra, cache, target in [([], "unsafe", ">= 1.0x, sparse"), (["--sync"], "writeback", "same durability")]:
        ours, peer = alternate(
            9, clone(extra), lambda: timed(["qemu-img", "convert", "-t", cache, "-O", "qcow2", src, conv], lambda: rm(conv))
        )
        run(["qemu-img", "compare", src, dst])
        note = f"output {allocated(dst) >> 20} MiB allocated (qemu-img: {allocated(conv) >> 20} MiB)"
        name = "full clone 4 GiB / 512 MiB data" + (" --sync" if extra else "")
        row(name, ours, peer, f"qemu-img convert -t {cache} -O qcow2", target, note)


def bench_linked(k, images, peer_dir):
    # 3. Linked clone of 10 GiB and of 1 TiB: constant time.
    for size in ["10G", "1T"]:
        name = f"base{size}.qcow2"
        run(k + ["vol-create-as", "default", name, size, "--format", "qcow2"])
        lc = os.path.join(images, "lc.qcow2")
        times = [timed(k + ["vol-clone", name, "lc.qcow2", "--pool", "default", "--linked"], lambda: rm(lc)) for _ in range(30)]
        rm(lc)
        base = os.path.join(images, name)
        ov = os.path.join(peer_dir, "ov.qcow2")
        peer = statistics.median(
            [timed(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, ov], lambda: rm(ov)) for _ in range(30)]
        )
        row(f"linked clone of {size}", statistics.median(times), peer, "qemu-img create -b", "< 5 ms, same for both sizes")


COMPRESSED_ROWS = ("copy of a compressed 2 GiB qcow2", "copy of a compressed 2 GiB qcow2 --compress")


def mixed_raw(path, size=2 << 30):
    """A disk with realistic mixed content, per 16 MiB: 8 MiB of zeros (a hole), 4 MiB of
    text-like data (words from a vocabulary, about 3:1 under deflate), 4 MiB of random bytes."""
    import random

    r = random.Random(13)
    vocab = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 10))) for _ in range(5000)]
    lines = []
    n = 0
    while n < 4 << 20:
        line = " ".join(r.choice(vocab) for _ in range(r.randint(4, 14))) + "\n"
        lines.append(line)
        n += len(line)
    text = "".join(lines).encode()[: 4 << 20]
    with open(path, "wb") as f:
        for off in range(0, size, 16 << 20):
            f.seek(off + (8 << 20))
            # The text shifted per block, so that no two blocks are the same.
            k = (off >> 20) * 4099 % len(text)
            f.write(text[k:] + text[:k])
            f.write(os.urandom(4 << 20))
        f.truncate(size)


def bench_compressed(k, tmp, images, peer_dir):
    # 4. Copies of a compressed 2 GiB qcow2 (qemu-img convert -c of a mixed raw disk):
    # written uncompressed (vs qemu-img convert -O qcow2) and compressed (vs convert -c).
    raw = os.path.join(tmp, "mixed.raw")
    mixed_raw(raw)
    src = os.path.join(tmp, "mixed-c.qcow2")
    run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, src])
    os.remove(raw)
    dst = os.path.join(images, "imp.qcow2")
    conv = os.path.join(peer_dir, "conv.qcow2")
    for name, extra, peer_opts, n in [(COMPRESSED_ROWS[0], [], [], 5), (COMPRESSED_ROWS[1], ["--compress"], ["-c"], 3)]:
        if not wanted(name):
            continue
        ours, peer = alternate(
            n,
            lambda: timed(k + ["vol-import", src, "--pool", "default", "--name", "imp.qcow2"] + extra, lambda: rm(dst)),
            lambda: timed(["qemu-img", "convert"] + peer_opts + ["-O", "qcow2", src, conv], lambda: rm(conv)),
        )
        run(["qemu-img", "compare", src, dst])
        run(["qemu-img", "check", dst])
        mib = lambda p: os.stat(p).st_size / (1 << 20)
        note = f"source {mib(src):.0f} MiB; output {mib(dst):.0f} MiB (qemu-img: {mib(conv):.0f} MiB)"
        row(name, ours, peer, "qemu-img convert " + " ".join(peer_opts + ["-O", "qcow2"]), ">= 1.0x", note)
        rm(dst)
        rm(conv)


class Namespace:
    """A network namespace for one side of a benchmark; deleted (with its processes) on exit."""

    def __init__(self, name):
        self.name = name
        run(["ip", "netns", "add", name])
        run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])

    def argv(self, argv):
        # nsenter only switches the network namespace (ip netns exec also remounts /sys).
        return ["nsenter", f"--net=/run/netns/{self.name}"] + argv

    def close(self):
        pids = subprocess.run(["ip", "netns", "pids", self.name], stdout=subprocess.PIPE, text=True).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), 9)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        subprocess.run(["ip", "netns", "del", self.name])


def pid_of(pidfile):
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def libvirt_daemon(ns, hide_kvm=False):
    """libvirtd (and virtlogd if none runs) inside namespace `ns`; yields the virsh argv once
    the daemon answers, and stops what it started on the way out. `hide_kvm`: libvirtd runs in
    a private mount namespace where /dev/kvm is /dev/null (see libvirt_vms)."""
    started = []
    try:
        os.makedirs("/var/log/libvirt", exist_ok=True)
        if pid_of("/run/virtlogd.pid") is None:
            run(["virtlogd", "-d"])
            started.append("/run/virtlogd.pid")
        started.append("/run/libvirtd.pid")
        if hide_kvm:
            run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"mount --bind /dev/null /dev/kvm && exec nsenter --net=/run/netns/{ns.name} libvirtd -d"])
        else:
            run(ns.argv(["libvirtd", "-d"]))
        v = ns.argv(["virsh", "-q", "-c", "qemu:///system"])
        for _ in range(100):
            if subprocess.run(v + ["net-list", "--all"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        yield v
    finally:
        for pf in started:
            pid = pid_of(pf)
            if pid:
                try:
                    os.kill(pid, 15)
                except ProcessLookupError:
                    pass


def bench_network(tmp):
    """net-start / net-destroy of a NAT network with DHCP: kvmctl vs libvirt, each in its own netns."""
    if not shutil.which("libvirtd") or not shutil.which("virsh"):
        print("bench: libvirt is not installed (make bench installs it); skipping the network rows", file=sys.stderr)
        return
    root = os.path.join(tmp, "netroot")
    os.makedirs(root)
    os.chmod(tmp, 0o755)
    kns, lns = Namespace(f"kvbench{os.getpid()}"), Namespace(f"lvpeer{os.getpid()}")
    try:
        k = kns.argv([KVMCTL, "--root", root, "-q"])
        run(k + ["net-list", "--all"])  # defines 'default' (virbr0, 192.168.122.0/24, NAT, DHCP)
        with libvirt_daemon(lns) as v:
            network_rows(k, v, kns)
    finally:
        kns.close()
        lns.close()


def network_rows(k, v, kns):
    """net-start / net-destroy, kvmctl (`k`) and virsh (`v`) alternating; the bare-bridge floor."""
    ts, td, ls, ld = [], [], [], []
    for _ in range(10):
        ts.append(timed(k + ["net-start", "default"]))
        ls.append(timed(v + ["net-start", "default"]))
        td.append(timed(k + ["net-destroy", "default"]))
        ld.append(timed(v + ["net-destroy", "default"]))
    # The kernel's own floor: unregistering a bare bridge (no kvmctl involved).
    floor = []
    for _ in range(10):
        run(kns.argv(["ip", "link", "add", "kvfloor0", "type", "bridge"]))
        floor.append(timed(kns.argv(["ip", "link", "del", "kvfloor0"])))
    ver = run(["libvirtd", "--version"]).split()[-1]
    row("net-start NAT+DHCP", statistics.median(ts), statistics.median(ls), f"libvirt {ver} virsh net-start", "<= 40 ms")
    row("net-destroy NAT+DHCP", statistics.median(td), statistics.median(ld), f"libvirt {ver} virsh net-destroy", "<= 40 ms")
    row("kernel floor: ip link del of a bare bridge", statistics.median(floor), 0, "-", "-", "part of every net-destroy")


GUEST = os.path.abspath("images/out")


def wait_for(path, text, timeout=120):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            with open(path, errors="replace") as f:
                if text in f.read():
                    return (time.perf_counter() - t0) * 1000
        except OSError:
            pass
        time.sleep(0.01)
    sys.exit(f"bench: {text} not seen in {path} within {timeout}s")


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def raw_qemu_ready(tmp, disk):
    """Raw qemu, user networking: spawn -> guest READY on its serial port."""
    import socket
    qmp = os.path.join(tmp, "raw-qmp.sock")
    serial = os.path.join(tmp, "raw-serial.log")
    for p in (qmp, serial):
        rm(p)
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-display", "none",
            "-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off", "-mon", "chardev=qmp,mode=control",
            "-serial", f"file:{serial}", "-drive", f"file={disk},if=virtio,format=qcow2",
            "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0"]
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(qmp):
        time.sleep(0.0005)
    s = socket.socket(socket.AF_UNIX)
    s.connect(qmp)
    f = s.makefile("rw")
    f.readline()
    f.write('{"execute":"qmp_capabilities"}\n')
    f.flush()
    f.readline()
    ready_ms = (time.perf_counter() - t0) * 1000 + wait_for(serial, "KVMCTL-GUEST-READY")
    child.kill()
    child.wait()
    s.close()
    return ready_ms


def raw_qemu_start(tmp, wrap, vm_argv, run_dir):
    """The VM's own qemu argv (its tap swapped for user networking), exec'd through the same
    namespace wrapper as kvmctl: spawn -> QMP greeting, capabilities, cont."""
    import socket
    argv = []
    for a in vm_argv:
        a = a.replace(run_dir + "/", os.path.join(tmp, "rawstart-"))
        argv.append("user,id=net0,restrict=on" if a.startswith("tap,") else a)
    qmp = os.path.join(tmp, "rawstart-qmp.sock")
    for p in (qmp, os.path.join(tmp, "rawstart-console.sock")):
        rm(p)
    t0 = time.perf_counter()
    child = subprocess.Popen(wrap(["qemu-system-x86_64"] + argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(qmp)
            break
        except OSError:
            s.close()
            if child.poll() is not None:
                sys.exit(f"bench: raw qemu exited: {argv}")
            time.sleep(0.0005)
    f = s.makefile("rw")
    f.readline()
    for cmd in ("qmp_capabilities", "cont"):
        f.write(json.dumps({"execute": cmd}) + "\n")
        f.flush()
        f.readline()
    ms = (time.perf_counter() - t0) * 1000
    child.kill()
    child.wait()
    s.close()
    return ms


def supervisor_pid(k, vm):
    return json.loads(run(k[:-1] + ["--json", "dominfo", vm]))["runtime"]["supervisor_pid"]


def libvirt_vms(tmp):
    """libvirt's VM numbers, from virt-install / virsh / virt-clone against a libvirtd in its own
    network namespace. /dev/kvm is hidden from it (a bind mount of /dev/null in a private mount
    namespace): on this nested host KVM opens but never runs a vCPU, and a libvirtd that sees
    it re-probes qemu's capabilities on every domain creation (2.5 min per virt-install; our
    reading: its cached probe never confirms the KVM it sees). The guest and devices match kvmctl's VM: pc machine, virtio
    disk and NIC, 256 MiB, TCG. Returns medians in ms, or {} when libvirt is not installed."""
    if not shutil.which("libvirtd") or not shutil.which("virt-install"):
        print("bench: libvirt is not installed (make bench installs it); no libvirt VM peers", file=sys.stderr)
        return {}
    os.chmod(tmp, 0o755)  # qemu runs as libvirt-qemu and must reach the disks
    ns = Namespace(f"lvvm{os.getpid()}")
    d = os.path.join(tmp, "lv")
    os.makedirs(d)
    os.chmod(d, 0o755)
    try:
        with libvirt_daemon(ns, hide_kvm=True) as v:
            return libvirt_vm_medians(ns, v, d)
    finally:
        ns.close()


def libvirt_vm_medians(ns, v, d):
    """virt-install, ready, virsh destroy and virt-clone medians (ms), disks under `d`."""
    run(v + ["net-start", "default"])
    common = ["--connect", "qemu:///system", "--memory", "256", "--vcpus", "1", "--machine", "pc", "--import",
              "--graphics", "none", "--osinfo", "detect=on,require=off", "--virt-type", "qemu", "--noautoconsole"]
    inst, ready, stop = [], [], []
    for i in range(3):
        disk, log = os.path.join(d, f"l{i}.qcow2"), os.path.join(d, f"l{i}.log")
        shutil.copy(os.path.join(GUEST, "tiny.qcow2"), disk)
        os.sync()
        t0 = time.perf_counter()
        run(ns.argv(["virt-install", "--name", f"l{i}", "--disk", f"path={disk},format=qcow2,bus=virtio",
                     "--network", "network=default,model=virtio", "--serial", f"file,path={log}"] + common))
        inst.append((time.perf_counter() - t0) * 1000)
        ready.append(inst[-1] + wait_for(log, "KVMCTL-GUEST-READY eth0=1"))
        stop.append(timed(v + ["destroy", f"l{i}"]))
        run(v + ["undefine", f"l{i}", "--remove-all-storage"])
    # virt-clone --auto-clone of a stopped VM whose disk holds 16 MiB.
    src = os.path.join(d, "c16.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", src, "64M"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 16M", src])
    run(ns.argv(["virt-install", "--name", "c16", "--disk", f"path={src},format=qcow2,bus=virtio",
                 "--network", "none"] + common))
    run(v + ["destroy", "c16"])
    clones = []
    for i in range(5):
        clones.append(timed(ns.argv(["virt-clone", "--connect", "qemu:///system", "--original", "c16",
                                     "--name", f"c16-{i}", "--auto-clone"])))
    for i in range(5):
        run(v + ["undefine", f"c16-{i}", "--remove-all-storage"])
    run(v + ["undefine", "c16", "--remove-all-storage"])
    run(v + ["net-destroy", "default"])
    med = statistics.median
    return {"install": med(inst), "ready": med(ready), "destroy": med(stop), "clone": med(clones)}


def bench_domains(tmp):
    """start / install / boot-to-lease / destroy / list / supervisor memory."""
    lv = libvirt_vms(tmp)
    lv_name = f"libvirt {run(['libvirtd', '--version']).split()[-1]}" if lv else "libvirt: not installed"
    root = os.path.join(tmp, "domroot")
    os.makedirs(root)
    os.chmod(tmp, 0o755)
    ns = Namespace(f"kvdom{os.getpid()}")
    try:
        k = ns.argv([KVMCTL, "--root", root, "-q"])
        images = os.path.join(root, "images")
        run(k + ["vol-import", os.path.join(GUEST, "tiny.qcow2"), "--pool", "default"])
        run(k + ["net-start", "default"])
        console = os.path.join(root, "run", "domains", "b1", "console.log")
        inst, ready, stop, starts, pss = [], [], [], [], []
        raw_s, raw_r = [], []
        for i in range(5):
            run(k + ["vol-clone", "tiny.qcow2", "b1.qcow2", "--pool", "default", "--linked"])
            t0 = time.perf_counter()
            run(k + ["install", "--name", "b1", "--memory", "256", "--disk", "vol=default/b1.qcow2", "--network", "network=default", "--import", "--noautoconsole"])
            inst.append((time.perf_counter() - t0) * 1000)
            ready.append(inst[-1] + wait_for(console, "KVMCTL-GUEST-READY"))
            pss.append(pss_kib(supervisor_pid(k, "b1")))
            stop.append(timed(k + ["destroy", "b1"]))
            starts.append(timed(k + ["start", "b1"]))
            run_dir = os.path.join(root, "run", "domains", "b1")
            with open(os.path.join(run_dir, "qemu.argv")) as f:
                vm_argv = json.load(f)
            # The peer runs in the same conditions: right after the destroy of a booted guest.
            wait_for(console, "KVMCTL-GUEST-READY")
            run(k + ["destroy", "b1"])
            raw_s.append(raw_qemu_start(tmp, ns.argv, vm_argv, run_dir))
            run(k + ["undefine", "b1", "--remove-all-storage"])
            raw_disk = os.path.join(images, "raw.qcow2")
            run(k + ["vol-clone", "tiny.qcow2", "raw.qcow2", "--pool", "default", "--linked"])
            raw_r.append(raw_qemu_ready(tmp, raw_disk))
            rm(raw_disk)
        med = statistics.median
        row("start -> VM running (paused qemu, QMP, cont)", med(starts), med(raw_s), "exec of the VM's qemu argv -> QMP, cont", "<= 25 ms more", f"+{med(starts) - med(raw_s):.1f} ms")
        row("install --import (returns with the VM running)", med(inst), lv.get("install", 0), f"{lv_name} virt-install --import", "<= 100 ms")
        row("install --import -> guest ready with a DHCP lease", med(ready), med(raw_r), "raw qemu, user net, -> READY", "<= 1.2x raw qemu", f"{med(ready) / med(raw_r):.2f}x raw qemu")
        row("install --import -> guest ready with a DHCP lease", med(ready), lv.get("ready", 0), f"{lv_name} virt-install -> READY", "-", "libvirt's default network has STP on")
        row("destroy", med(stop), lv.get("destroy", 0), f"{lv_name} virsh destroy", "<= 150 ms")
        # list --all with 1000 defined VMs.
        ddir = os.path.join(root, "domains")
        for i in range(1000):
            with open(os.path.join(ddir, f"vm{i:04d}.toml"), "w") as f:
                f.write(f'name = "vm{i:04d}"\nuuid = "00000000-0000-4000-8000-{i:012d}"\nmemory_mib = 256\nvcpus = 1\n')
        lst = med([timed(k + ["list", "--all"]) for _ in range(10)])
        row("list --all with 1000 defined VMs", lst, 0, "-", "<= 50 ms")
        rows.append(("supervisor memory (PSS), 1 VM running", f"{med(pss) / 1024:.2f} MiB", "-", "-", "-", "<= 2 MiB each", "kvmctl's code pages are all this VM's"))
        # Four VMs at once: the binary's pages are shared, as on any host running several VMs.
        names = [f"m{i}" for i in range(4)]
        for n in names:
            run(k + ["vol-clone", "tiny.qcow2", f"{n}.qcow2", "--pool", "default", "--linked"])
            run(k + ["install", "--name", n, "--memory", "128", "--disk", f"vol=default/{n}.qcow2", "--network", "none", "--import"])
        each = [pss_kib(supervisor_pid(k, n)) for n in names]
        for n in names:
            run(k + ["destroy", n])
        rows.append(("supervisor memory (PSS), 4 VMs running", f"{max(each) / 1024:.2f} MiB", "-", "-", "-", "<= 2 MiB each", "largest of the four"))
        # Console: attach -> first byte (the replayed screen) on the terminal.
        run(k + ["start", "m0"])
        wait_for(os.path.join(root, "run", "domains", "m0", "console.log"), "KVMCTL-GUEST-READY")
        firsts = []
        for _ in range(20):
            t0 = time.perf_counter()
            p = subprocess.Popen([KVMCTL, "--root", root, "console", "m0", "--timeout", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            p.stdout.read(1)
            firsts.append((time.perf_counter() - t0) * 1000)
            p.stdout.read()
            p.wait()
        run(k + ["destroy", "m0"])
        row("console attach -> first byte", med(firsts), 0, "-", "-")
        # Clones of a stopped VM with a 16 MiB disk (the size virt-clone was measured with).
        run(k + ["vol-create-as", "default", "c16.qcow2", "64M", "--format", "qcow2"])
        run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 16M", os.path.join(images, "c16.qcow2")])
        run(k + ["install", "--name", "c16", "--memory", "128", "--disk", "vol=default/c16.qcow2", "--network", "none", "--import"])
        run(k + ["destroy", "c16"])
        full, linked = [], []
        for i in range(10):
            full.append(timed(k + ["clone", "c16", f"f{i}"]))
            linked.append(timed(k + ["clone", "c16", f"l{i}", "--linked"]))
        row("clone of a stopped VM, full (16 MiB disk)", med(full), lv.get("clone", 0), f"{lv_name} virt-clone --auto-clone", "<= 60 ms")
        row("clone of a stopped VM, linked", med(linked), lv.get("clone", 0), f"{lv_name} virt-clone --auto-clone (no linked mode)", "<= 20 ms")
    finally:
        ns.close()


def main():
    if not os.path.exists(KVMCTL):
        sys.exit(f"bench: {KVMCTL} not found; run make build")
    # KVMCTL_BENCH=storage,network,domains runs only those groups (default: all).
    groups = os.environ.get("KVMCTL_BENCH", "storage" if ONLY else "storage,network,domains").split(",")
    tmp = tempfile.mkdtemp(prefix="kvmctl-bench-", dir="/var/tmp")
    try:
        for name, fn in (("storage", bench_storage), ("network", bench_network), ("domains", bench_domains)):
            if name in groups:
                fn(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"kvmctl benchmarks, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, medians of alternating runs\n")
    print("| what | kvmctl | peer | peer command | peer/kvmctl | target | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
