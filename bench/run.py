#!/usr/bin/env python3
"""kvmctl benchmarks: each row runs kvmctl and its peer side by side, alternating, in one run.

Usage: bench/run.py [path/to/kvmctl]   (make bench)
Prints a Markdown table; the numbers in BENCHMARKS.md come from it.
"""
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

    # 1. vol-create-as 10G qcow2 vs qemu-img create.
    v = os.path.join(images, "v.qcow2")
    p = os.path.join(peer_dir, "v.qcow2")
    ours, peer = alternate(
        30,
        lambda: timed(k + ["vol-create-as", "default", "v.qcow2", "10G", "--format", "qcow2"], lambda: rm(v)),
        lambda: timed(["qemu-img", "create", "-q", "-f", "qcow2", p, "10G"], lambda: rm(p)),
    )
    row("vol-create-as 10G qcow2", ours, peer, "qemu-img create", "not slower (>= 1.0x)")

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
    clone = lambda: timed(k + ["vol-clone", "src.qcow2", "dst.qcow2", "--pool", "default"], lambda: rm(dst))
    # kvmctl fsyncs a new volume before renaming it into place; qemu-img convert's default
    # cache mode (unsafe) never flushes, -t writeback flushes at the end: both are shown.
    for cache, target in [("unsafe", ">= 1.0x, sparse"), ("writeback", "same durability as kvmctl")]:
        ours, peer = alternate(
            5, clone, lambda: timed(["qemu-img", "convert", "-t", cache, "-O", "qcow2", src, conv], lambda: rm(conv))
        )
        run(["qemu-img", "compare", src, dst])
        note = f"output {allocated(dst) >> 20} MiB allocated (qemu-img: {allocated(conv) >> 20} MiB)"
        row("full clone 4 GiB / 512 MiB data", ours, peer, f"qemu-img convert -t {cache} -O qcow2", target, note)

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


def main():
    if not os.path.exists(KVMCTL):
        sys.exit(f"bench: {KVMCTL} not found; run make build")
    tmp = tempfile.mkdtemp(prefix="kvmctl-bench-", dir="/var/tmp")
    try:
        bench_storage(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"kvmctl benchmarks, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, medians of alternating runs\n")
    print("| what | kvmctl | peer | peer command | peer/kvmctl | target | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
