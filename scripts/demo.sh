#!/usr/bin/env bash
# make demo: kvmctl's main job. A VM from the bundled tiny image boots on the default NAT
# network; its console output and DHCP address are shown; then everything is cleaned up.
# All of it happens inside a network namespace created here (the host's own interfaces,
# routes and firewall are never touched) and a throwaway state root.
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/kvmctl}")
IMG=$(readlink -f images/out/tiny.qcow2)
NS="kvmctl-demo-$$"
ROOT=$(mktemp -d /var/tmp/kvmctl-demo.XXXXXX)
chmod 755 "$ROOT"

cleanup() {
  "$BIN" --root "$ROOT" -q destroy demo-vm >/dev/null 2>&1 || true
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$ROOT"
}
trap cleanup EXIT

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
k() { echo "+ kvmctl $*" >&2; ip netns exec "$NS" "$BIN" --root "$ROOT" "$@"; }

echo "== storage: the bundled tiny guest disk, imported into the default pool, and a linked clone"
k vol-import "$IMG" --pool default --name tiny.qcow2
k vol-clone tiny.qcow2 demo-vm.qcow2 --pool default --linked
k net-list --all
echo "== install: boot it on the default NAT network (started on demand)"
t0=$(date +%s%N)
k install --name demo-vm --memory 256 --vcpus 1 --disk vol=default/demo-vm.qcow2 \
  --network network=default --import --noautoconsole
LOG="$ROOT/run/domains/demo-vm/console.log"
for _ in $(seq 1 600); do grep -q KVMCTL-GUEST-READY "$LOG" 2>/dev/null && break; sleep 0.1; done
t1=$(date +%s%N)
grep -q KVMCTL-GUEST-READY "$LOG" || { echo "the guest did not become ready; console:"; cat "$LOG"; exit 1; }
echo "== console output (from the first byte of boot; guest ready after $(( (t1 - t0) / 1000000 )) ms)"
sed -e 's/\x1b\[[0-9;]*[a-zA-Z]//g' "$LOG" | grep -v '^\s*$' | head -20
echo "== its DHCP address, from the network's leases"
k domifaddr demo-vm
k net-dhcp-leases default
k list --all
echo "== clean up: ACPI shutdown, undefine with its storage, stop the network"
k shutdown demo-vm --timeout 30
k undefine demo-vm --remove-all-storage
k net-destroy default
echo "demo done: everything it created is removed."
