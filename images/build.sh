#!/usr/bin/env bash
# Build the kvmctl test guests from Debian 12 packages only:
#   out/vmlinuz            Debian kernel (linux-image-<abi>-<flavour>, not installed on the host)
#   out/initramfs.cpio.gz  busybox-static initramfs with the kvmctl /init (see guest/rootfs)
#   out/tiny.qcow2         64 MiB bootable disk: MBR + FAT16 partition + syslinux
#   out/tiny-uefi.qcow2    64 MiB UEFI disk: GPT + EFI system partition + systemd-boot
#   out/tiny-installer.iso bootable ISO (isolinux): writes tiny.qcow2's system onto /dev/vda
#   out/location{,-casper,-fedora}/ and .iso   kernel + initrd in Debian/Ubuntu/Fedora layouts
#   out/pxe/               TFTP root: pxelinux.0, ldlinux.c32, pxelinux.cfg/default, kernel, initrd
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
	virtio_rng virtio_balloon e1000 8139cp 8139too button evdev
	ata_piix ahci sr_mod isofs vfat nls_cp437 nls_ascii)

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

outputs=("$out/vmlinuz" "$out/initramfs.cpio.gz" "$out/tiny.qcow2" "$out/tiny-uefi.qcow2"
	"$out/tiny-installer.iso"
	"$out/location/.disk/info" "$out/location/install.amd/vmlinuz" "$out/location/install.amd/initrd.gz"
	"$out/location.iso"
	"$out/location-casper/.disk/info" "$out/location-casper/casper/vmlinuz" "$out/location-casper/casper/initrd"
	"$out/location-casper.iso"
	"$out/location-fedora/.treeinfo" "$out/location-fedora/images/pxeboot/vmlinuz"
	"$out/location-fedora/images/pxeboot/initrd.img" "$out/location-fedora.iso"
	"$out/pxe/pxelinux.0" "$out/pxe/ldlinux.c32" "$out/pxe/pxelinux.cfg/default" "$out/pxe/vmlinuz"
	"$out/pxe/initrd.gz")
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
		log "up to date: ${out#"$here/"}/{vmlinuz,initramfs.cpio.gz,tiny.qcow2,tiny-uefi.qcow2,tiny-installer.iso,location*,pxe}" \
			"($(sed -n 2p "$stamp"))"
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
need_pkgs=(busybox-static syslinux syslinux-common mtools dosfstools cpio qemu-utils kmod gzip
	isolinux pxelinux xorriso fdisk systemd-boot-efi ovmf dhcpcd-base)
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
# DHCPv6 client of the guest (busybox-static has no udhcpc6): dhcpcd and the
# shared libraries it links (glibc), copied from the host's Debian packages.
dhcpcd=/usr/sbin/dhcpcd
[ -x "$dhcpcd" ] || die "$dhcpcd missing (dhcpcd-base)"
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$mbr_bin" ] || die "$mbr_bin missing (syslinux-common)"
ldlinux_c32=/usr/lib/syslinux/modules/bios/ldlinux.c32
[ -f "$ldlinux_c32" ] || die "$ldlinux_c32 missing (syslinux-common)"
isolinux_bin=/usr/lib/ISOLINUX/isolinux.bin
[ -f "$isolinux_bin" ] || die "$isolinux_bin missing (isolinux)"
pxelinux_0=/usr/lib/PXELINUX/pxelinux.0
[ -f "$pxelinux_0" ] || die "$pxelinux_0 missing (pxelinux)"
sdboot_efi=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
[ -f "$sdboot_efi" ] || die "$sdboot_efi missing (systemd-boot-efi)"

# ---------------------------------------------------------------- temp + work dirs
mkdir -p "$out"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmctl-images.XXXXXX")
cleanup() { rm -rf "$tmp" "$out/.new"; }
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
chmod 0755 "$root/init" "$root/etc/init.d/rcS" "$root/etc/udhcpc.script" "$root/etc/acpi/PWRF/00000080" \
	"$root/sbin/kvmctl-install" "$root/sbin/kvmctl-cloudinit" "$root/sbin/kvmctl-ipv6"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for app in $("$busybox" --list-full); do
	[ -e "$root/$app" ] || [ -L "$root/$app" ] || ln -s /bin/busybox "$root/$app"
done
# dhcpcd + the libraries ldd names (the dynamic loader at its absolute path)
mkdir -p "$root/usr/sbin" "$root/var/lib/dhcpcd"
cp "$dhcpcd" "$root/usr/sbin/dhcpcd"
for lib in $(ldd "$dhcpcd" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p'); do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
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
mkfs.fat --invariant -F 16 -n KVMCTL -i 4b564d43 -h "$part_start" --offset "$part_start" \
	"$disk" $((part_sectors / 2)) >/dev/null
img="$disk@@$((part_start * 512))"
export MTOOLS_SKIP_CHECK=1
export SOURCE_DATE_EPOCH="$epoch"   # mtools: fixed file dates in the FAT images
cp "$here/guest/syslinux.cfg" "$tmp/syslinux.cfg"
mcopy -o -i "$img" "$tmp/vmlinuz" "$tmp/initramfs.cpio.gz" "$tmp/syslinux.cfg" ::/
syslinux --offset $((part_start * 512)) --install "$disk"
qemu-img convert -q -f raw -O qcow2 "$disk" "$tmp/tiny.qcow2"
# The installer's payload: the raw disk up to its last data block (the rest
# is zeros: ~17 of 64 MiB), gzipped (~15 MiB), and the full size. Writing
# only that part onto a (new, zeroed) disk saves ~1 s under TCG (the install
# step takes ~1.5 s instead of ~2.5 s).
used=$(qemu-img map -f raw --output=json "$disk" |
	sed -n 's/.*"start": *\([0-9]*\), *"length": *\([0-9]*\),.*"data": *true.*/\1 \2/p' |
	awk '{ e = $1 + $2 } END { print e + 0 }')
[ "$used" -gt 0 ] || die "qemu-img map found no data in the disk image"
head -c "$used" "$disk" | gzip -1 -n >"$tmp/tiny.img.gz"
echo $((disk_mib * 1024 * 1024)) >"$tmp/tiny.img.size"
rm -f "$disk"

# Everything below is assembled in $new, on the file system of $out, so
# that the trees can hard-link the kernel and initramfs and publishing is a
# rename.
new="$out/.new"
rm -rf "$new"
mkdir -p "$new"
mv "$tmp/vmlinuz" "$tmp/initramfs.cpio.gz" "$tmp/tiny.qcow2" "$new/"
K="$new/vmlinuz"
I="$new/initramfs.cpio.gz"
lnk() { # lnk FILE NEWNAME: hard link (copy if that fails), making directories
	mkdir -p "$(dirname "$2")"
	ln "$1" "$2" 2>/dev/null || cp "$1" "$2"
}
# xorriso: ISO 9660 + Rock Ridge + Joliet; SOURCE_DATE_EPOCH fixes the volume
# dates and UUID and sets every file's dates to its mtime (no ctime)
mkiso() { # mkiso OUT VOLID DIR [xorriso -as mkisofs boot options...]
	local o=$1 v=$2 d=$3
	shift 3
	find "$d" -exec touch -h -d "@$epoch" {} +
	SOURCE_DATE_EPOCH=$epoch xorriso -as mkisofs -quiet -o "$o" -V "$v" -J -joliet-long -r \
		"$@" "$d" 2>&1 |
		{ grep -v -e '^xorriso : NOTE' -e '^xorriso [0-9.]* : RockRidge' -e '^ *$' || true; } >&2
	[ -s "$o" ] || die "xorriso made no $o"
}

# ---------------------------------------------------------------- tiny-installer.iso
# El Torito (no emulation) with isolinux, in a Debian-netinst-like layout so
# that it works with --location too: install.amd/{vmlinuz,initrd.gz},
# .disk/info, and the payload /tiny.img.gz that /sbin/kvmctl-install (run
# when kvmctl.install=1 is on the command line) writes onto the disk.
t="$tmp/installer"
mkdir -p "$t/isolinux" "$t/.disk"
cp "$isolinux_bin" "$ldlinux_c32" "$t/isolinux/"
cp "$here/guest/isolinux.cfg" "$t/isolinux/isolinux.cfg"
lnk "$K" "$t/install.amd/vmlinuz"
lnk "$I" "$t/install.amd/initrd.gz"
mv "$tmp/tiny.img.gz" "$tmp/tiny.img.size" "$t/"
echo 'Debian GNU/Linux 12 "Bookworm" - kvmctl tiny installer amd64 (busybox test guest)' >"$t/.disk/info"
mkiso "$new/tiny-installer.iso" KVMCTL_INSTALLER "$t" \
	-b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table
rm -rf "$t"

# ---------------------------------------------------------------- location trees + ISOs
# Kernel + initramfs (hard links) in the layouts of Debian's, Ubuntu's and
# Fedora's install media, and the same trees as (not bootable) ISOs.
d="$new/location"
lnk "$K" "$d/install.amd/vmlinuz"
lnk "$I" "$d/install.amd/initrd.gz"
mkdir -p "$d/.disk"
echo 'Debian GNU/Linux 12 "Bookworm" - kvmctl test location amd64 (busybox test guest)' >"$d/.disk/info"
d="$new/location-casper"
lnk "$K" "$d/casper/vmlinuz"
lnk "$I" "$d/casper/initrd"
mkdir -p "$d/.disk"
echo 'Ubuntu 22.04 LTS "Jammy Jellyfish" - kvmctl test location amd64 (busybox test guest)' >"$d/.disk/info"
d="$new/location-fedora"
lnk "$K" "$d/images/pxeboot/vmlinuz"
lnk "$I" "$d/images/pxeboot/initrd.img"
cat >"$d/.treeinfo" <<'TREEINFO'
[header]
type = productmd.treeinfo
version = 1.2

[release]
name = Fedora
short = Fedora
version = 39

[tree]
arch = x86_64
platforms = x86_64
variants = Everything

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img

[general]
; kvmctl test location (busybox test guest), not a real Fedora tree
family = Fedora
version = 39
arch = x86_64
platforms = x86_64
TREEINFO
mkiso "$new/location.iso" "Debian 12 amd64 kvmctl" "$new/location"
mkiso "$new/location-casper.iso" "Ubuntu 22.04 LTS amd64 kvmctl" "$new/location-casper"
mkiso "$new/location-fedora.iso" "Fedora-kvmctl-x86_64-39" "$new/location-fedora"

# ---------------------------------------------------------------- PXE tree
d="$new/pxe"
mkdir -p "$d/pxelinux.cfg"
cp "$pxelinux_0" "$ldlinux_c32" "$d/"
cp "$here/guest/pxelinux.cfg" "$d/pxelinux.cfg/default"
lnk "$K" "$d/vmlinuz"
lnk "$I" "$d/initrd.gz"

# ---------------------------------------------------------------- tiny-uefi.qcow2
# 64 MiB GPT disk with one EFI system partition (FAT16, 1 MiB .. 63 MiB):
# systemd-boot as the removable-media loader EFI/BOOT/BOOTX64.EFI, its
# loader.conf (no menu, no timeout) and one entry, vmlinuz (the kernel is an
# EFI stub) + initramfs.cpio.gz. Fixed GUIDs and FAT serial.
udisk="$tmp/uefi.img"
esp_sectors=$(((disk_mib - 2) * 2048))
truncate -s "${disk_mib}M" "$udisk"
sfdisk -q --no-reread --no-tell-kernel "$udisk" >/dev/null <<GPT
label: gpt
label-id: 4B564D43-544C-4000-8000-000000000001
first-lba: 2048
start=$part_start, size=$esp_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=4B564D43-544C-4000-8000-000000000002, name="EFI system partition"
GPT
# (mkfs.fat warns that the file has room beyond the partition: the GPT backup)
mkfs.fat --invariant -F 16 -n KVMCTL-EFI -i 4b564d45 -h "$part_start" --offset "$part_start" \
	"$udisk" $((esp_sectors / 2)) 2>&1 >/dev/null | { grep -v 'block count mismatch' || true; } >&2
uimg="$udisk@@$((part_start * 512))"
mmd -i "$uimg" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$uimg" "$sdboot_efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$uimg" "$here/guest/systemd-boot/loader.conf" ::/loader/loader.conf
mcopy -i "$uimg" "$here/guest/systemd-boot/entries/kvmctl.conf" ::/loader/entries/kvmctl.conf
mcopy -i "$uimg" "$K" "$I" ::/
qemu-img convert -q -f raw -O qcow2 "$udisk" "$new/tiny-uefi.qcow2"
rm -f "$udisk"

# ---------------------------------------------------------------- publish
rm -f "$stamp"   # a half-published set must not look up to date
for f in vmlinuz initramfs.cpio.gz tiny.qcow2 tiny-uefi.qcow2 tiny-installer.iso \
	location.iso location-casper.iso location-fedora.iso; do
	mv -f "$new/$f" "$out/$f"
done
for d in location location-casper location-fedora pxe; do
	rm -rf "$out/$d"
	mv "$new/$d" "$out/$d"
done
rmdir "$new"
touch "${outputs[@]}"
printf '%s\n%s\n' "$want_stamp" "kernel=$kpkg $kpkgver" >"$stamp"
sz() { du -h --apparent-size "$out/$1" | cut -f1; }
log "built in $(($(date +%s) - start))s ($kpkg $kpkgver): vmlinuz $(sz vmlinuz)," \
	"initramfs.cpio.gz $(sz initramfs.cpio.gz), tiny.qcow2 $(sz tiny.qcow2)," \
	"tiny-uefi.qcow2 $(sz tiny-uefi.qcow2), tiny-installer.iso $(sz tiny-installer.iso)," \
	"location.iso $(sz location.iso) (and -casper, -fedora), trees location*/ pxe/"
