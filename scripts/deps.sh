#!/usr/bin/env bash
# Install what kvmctl's build, tests, demo and benchmarks need, from Debian 12's packages.
# Installs only what is missing; safe to run again.
set -euo pipefail

pkgs=(
  qemu-utils qemu-system-x86 dnsmasq-base nftables iproute2 util-linux procps
  busybox-static udhcpc syslinux syslinux-common isolinux mtools dosfstools xorriso cpio kmod
  python3 ca-certificates openssl gnupg gpgv man-db ovmf genisoimage pxelinux systemd-boot-efi fdisk strace
  xfsprogs
)
[[ "${1:-}" == "--bench" ]] && pkgs+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients virtinst)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "deps: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  extra=()
  # qemu-system-x86 needs qemu-utils of the same version; some machines carry a backported
  # qemu-utils that conflicts with it, so pin both to the candidate of qemu-system-x86.
  if printf '%s\n' "${missing[@]}" | grep -qx 'qemu-system-x86'; then
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    extra=(--allow-downgrades "qemu-system-x86=$ver" "qemu-utils=$ver")
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" "${extra[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "deps: cargo not found: install a Rust toolchain (>= 1.87) with rustup first" >&2
  exit 1
fi
