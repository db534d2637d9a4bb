#!/usr/bin/env bash
# Build the kvmctl test guests from Debian 12 packages only:
#   out/vmlinuz            Debian kernel (linux-image-<abi>-<flavour>, not installed on the host)
#   out/initramfs.cpio.gz  busybox-static initramfs with the kvmctl /init (see guest/rootfs)
#   out/tiny.qcow2         64 MiB bootable disk: MBR + FAT16 partition + syslinux
#
# Usage: images/build.sh [-f|--force] [-h|--help]
# Environment:
#   KVMCTL_KERNEL_FLAVOUR  Debian kernel flavour: cloud-amd64 (default; boots fastest, but
#                          has no e1000/rtl8139 NIC drivers) or amd64 (generic kernel,
#                          also has e1000, 8139cp, 8139too; boots ~2.5 s slower under TCG)
#   KVMCTL_IMAGES_OUT      output directory (default: images/out)
# See images/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${KVMCTL_IMAGES_OUT:-$here/out}
flavour=${KVMCTL_KERNEL_FLAVOUR:-cloud-amd64}
force=0

usage() { sed -n '2,/^set -e/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
for a in "$@"; do
	case "$a" in
	-f|--force) force=1 ;;
	-h|--help) usage; exit 0 ;;
	*) echo "build.sh: unknown argument: $a" >&2; usage >&2; exit 2 ;;
	esac
done

# Modules to put in the initramfs (plus their dependencies). Names missing
# from the chosen kernel (or built in) are skipped.
modules=(virtio_pci virtio_net virtio_blk virtio_console virtio_scsi sd_mod
	virtio_rng virtio_balloon e1000 8139cp 8139too button evdev)

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

outputs=("$out/vmlinuz" "$out/initramfs.cpio.gz" "$out/tiny.qcow2")
stamp="$out/.stamp"
want_stamp="flavour=$flavour modules=${modules[*]}"

# ---------------------------------------------------------------- up to date?
up_to_date() {
	local f oldest=
	[ "$force" = 0 ] || return 1
	[ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$want_stamp" ] || return 1
	for f in "${outputs[@]}"; do
		[ -f "$f" ] || return 1
		if [ -z "$oldest" ] || [ "$f" -ot "$oldest" ]; then oldest=$f; fi
	done
	# any input newer than the oldest output?
	[ -z "$(find "$here/build.sh" "$here/guest" -newer "$oldest" -print -quit)" ]
}
exit_if_up_to_date() {
	if up_to_date; then
		log "up to date: ${outputs[*]#"$here/"} ($(sed -n 2p "$stamp"))"
		exit 0
	fi
}
exit_if_up_to_date
# one build at a time (tests may call this concurrently); re-check after waiting
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
exit_if_up_to_date

start=$(date +%s)

# ---------------------------------------------------------------- host packages
need_pkgs=(busybox-static syslinux syslinux-common mtools dosfstools cpio qemu-utils kmod gzip)
apt_updated=0
apt_update() {
	if [ "$apt_updated" = 0 ]; then
		log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
		apt_updated=1
	fi
}
ensure_pkgs() {
	local p missing=()
	for p in "$@"; do
		# (dpkg -s alone also succeeds for removed packages whose conffiles remain)
		dpkg -s "$p" 2>/dev/null | grep -qx 'Status: install ok installed' || missing+=("$p")
	done
	[ "${#missing[@]}" = 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root; install them first"
	log "installing ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
		apt_update
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
	fi
}
ensure_pkgs "${need_pkgs[@]}"
export PATH="$PATH:/usr/sbin:/sbin"

busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox missing (busybox-static)"
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$mbr_bin" ] || die "$mbr_bin missing (syslinux-common)"

# ---------------------------------------------------------------- temp + work dirs
mkdir -p "$out"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmctl-images.XXXXXX")
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- kernel package
meta="linux-image-$flavour"
resolve_kernel_pkg() {
	apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ <>]*\)$/\1/p' | sed -n 1p
}
kpkg=$(resolve_kernel_pkg)
if [ -z "$kpkg" ]; then
	apt_update
	kpkg=$(resolve_kernel_pkg)
fi
[ -n "$kpkg" ] || die "cannot resolve the kernel package of $meta (apt-cache depends $meta)"
kver=${kpkg#linux-image-}                       # e.g. 6.1.0-56-cloud-amd64
kpkgver=$(apt-cache policy "$kpkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
[ -n "$kpkgver" ] && [ "$kpkgver" != "(none)" ] || die "no installable version of $kpkg"
log "kernel: $kpkg $kpkgver"

# Cache: vmlinuz + the needed modules of this kernel package, kept in
# out/work so that rebuilding after editing guest/ needs no download.
kcache="$out/work/$kpkg-$kpkgver"
kcache_key="modules=${modules[*]}"
if [ ! -f "$kcache/done" ] || [ "$(cat "$kcache/done")" != "$kcache_key" ]; then
	rm -rf "$out/work"
	mkdir -p "$kcache"
	dl="$tmp/dl"
	mkdir -p "$dl"
	# let apt's _apt sandbox user write there (avoids a warning as root)
	if id _apt >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then chmod 711 "$tmp"; chown _apt "$dl"; fi
	log "apt-get download $kpkg=$kpkgver"
	if ! (cd "$dl" && apt-get download -q "$kpkg=$kpkgver" >/dev/null); then
		apt_update
		(cd "$dl" && apt-get download -q "$kpkg=$kpkgver" >/dev/null)
	fi
	deb=$(ls "$dl"/*.deb)
	kroot="$out/work/extract"
	log "dpkg-deb -x $(basename "$deb")"
	dpkg-deb -x "$deb" "$kroot"
	rm -f "$deb"
	mdir="$kroot/lib/modules/$kver"
	[ -d "$mdir" ] || die "no lib/modules/$kver in $kpkg"
	cp "$kroot/boot/vmlinuz-$kver" "$kcache/vmlinuz"
	cp "$kroot/boot/config-$kver" "$kcache/config"
	# The package has no modules.dep (made at install time): make one here.
	depmod -b "$kroot" "$kver"
	: >"$kcache/modules.list"
	mkdir -p "$kcache/lib/modules/$kver"
	for f in modules.builtin modules.builtin.modinfo modules.order; do
		[ -f "$mdir/$f" ] && cp "$mdir/$f" "$kcache/lib/modules/$kver/"
	done
	for m in "${modules[@]}"; do
		if ! deps=$(modprobe -d "$kroot" -S "$kver" --show-depends "$m" 2>/dev/null); then
			log "module $m: not in $kpkg, skipped"
			continue
		fi
		printf '%s\n' "$deps" | grep -q '^builtin ' && log "module $m: built in"
		printf '%s\n' "$deps" | sed -n 's/^insmod \([^ ]*\).*/\1/p' | while read -r ko; do
			rel=${ko#"$mdir/"}
			dst=${rel%.xz}; dst=${dst%.zst}; dst=${dst%.gz}
			grep -qxF "$dst" "$kcache/modules.list" && continue
			mkdir -p "$kcache/lib/modules/$kver/$(dirname "$dst")"
			case "$ko" in
			*.ko) cp "$ko" "$kcache/lib/modules/$kver/$dst" ;;
			*.ko.xz) ensure_pkgs xz-utils; xz -dc "$ko" >"$kcache/lib/modules/$kver/$dst" ;;
			*.ko.zst) ensure_pkgs zstd; zstd -qdc "$ko" >"$kcache/lib/modules/$kver/$dst" ;;
			*.ko.gz) gzip -dc "$ko" >"$kcache/lib/modules/$kver/$dst" ;;
			*) die "unexpected module file $ko" ;;
			esac
			echo "$dst" >>"$kcache/modules.list"
		done
	done
	# modules.dep etc. for the subset, so that modprobe works in the guest
	depmod -b "$kcache" "$kver"
	rm -rf "$kroot"
	echo "$kcache_key" >"$kcache/done"
fi
log "modules: $(tr '\n' ' ' <"$kcache/modules.list" | sed 's#[^ ]*/##g')"

# ---------------------------------------------------------------- initramfs
root="$tmp/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/kvmctl,proc,sys,dev,run,tmp,root,mnt,var/log,lib/modules}
cp -a "$here/guest/rootfs/." "$root/"
chmod 0755 "$root/init" "$root/etc/init.d/rcS" "$root/etc/udhcpc.script" "$root/etc/acpi/PWRF/00000080"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for app in $("$busybox" --list-full); do
	[ -e "$root/$app" ] || [ -L "$root/$app" ] || ln -s /bin/busybox "$root/$app"
done
mkdir -p "$root/usr/share/udhcpc"
ln -sf /etc/udhcpc.script "$root/usr/share/udhcpc/default.script"
cp -a "$kcache/lib/modules/$kver" "$root/lib/modules/"
cp "$kcache/modules.list" "$root/etc/kvmctl/modules"
echo "$kpkg $kpkgver" >"$root/etc/kvmctl/kernel"
ln -sf /proc/mounts "$root/etc/mtab"
: >"$root/etc/resolv.conf"
# /dev/console for the kernel to open before /init mounts devtmpfs (the
# kernel's built-in initramfs has one too; this is belt and braces).
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true

# reproducible-ish archive: fixed mtimes, sorted names, numeric root owner
epoch=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$here/build.sh")}
find "$root" -exec touch -h -d "@$epoch" {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
	cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$tmp/initramfs.cpio.gz"
cp "$kcache/vmlinuz" "$tmp/vmlinuz"

# ---------------------------------------------------------------- disk image
# 64 MiB raw disk: syslinux MBR, one bootable FAT16 partition from 1 MiB to the
# end holding syslinux + vmlinuz + initramfs + syslinux.cfg.
disk="$tmp/disk.img"
disk_mib=64
part_start=2048                                  # sectors (1 MiB)
part_sectors=$((disk_mib * 2048 - part_start))
truncate -s "${disk_mib}M" "$disk"
le32() { # little-endian 32-bit value as raw bytes
	printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) \
		$((($1 >> 16) & 255)) $((($1 >> 24) & 255)))"
}
{
	printf '\x80'                 # bootable
	printf '\x20\x21\x00'         # CHS of LBA 2048 (255 heads, 63 sectors)
	printf '\x0e'                 # FAT16 (LBA)
	printf '\xfe\xff\xff'         # CHS end: beyond CHS range, use LBA
	le32 "$part_start"
	le32 "$part_sectors"
} | dd of="$disk" bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of="$disk" bs=1 seek=510 conv=notrunc status=none
printf 'KVMC' | dd of="$disk" bs=1 seek=440 conv=notrunc status=none   # disk signature
dd if="$mbr_bin" of="$disk" bs=440 count=1 conv=notrunc status=none
mkfs.fat -F 16 -n KVMCTL -i 4b564d43 -h "$part_start" --offset "$part_start" \
	"$disk" $((part_sectors / 2)) >/dev/null
img="$disk@@$((part_start * 512))"
export MTOOLS_SKIP_CHECK=1
cp "$here/guest/syslinux.cfg" "$tmp/syslinux.cfg"
mcopy -o -i "$img" "$tmp/vmlinuz" "$tmp/initramfs.cpio.gz" "$tmp/syslinux.cfg" ::/
syslinux --offset $((part_start * 512)) --install "$disk"
qemu-img convert -q -f raw -O qcow2 "$disk" "$tmp/tiny.qcow2"

# ---------------------------------------------------------------- publish
rm -f "$stamp"   # a half-published set must not look up to date
mv -f "$tmp/vmlinuz" "$out/vmlinuz"
mv -f "$tmp/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
mv -f "$tmp/tiny.qcow2" "$out/tiny.qcow2"
touch "$out/vmlinuz" "$out/initramfs.cpio.gz" "$out/tiny.qcow2"
printf '%s\n%s\n' "$want_stamp" "kernel=$kpkg $kpkgver" >"$stamp"
log "built in $(($(date +%s) - start))s: vmlinuz $(du -h "$out/vmlinuz" | cut -f1)," \
	"initramfs.cpio.gz $(du -h "$out/initramfs.cpio.gz" | cut -f1)," \
	"tiny.qcow2 $(du -h "$out/tiny.qcow2" | cut -f1) ($kpkg $kpkgver)"
