# Shell helpers of the kvmctl test guest, sourced by /etc/init.d/rcS,
# /sbin/kvmctl-cloudinit and /sbin/kvmctl-install (busybox ash).

# say LINE: print a protocol line on the console, and on ttyS0 too if the
# console is somewhere else (e.g. console=tty0 only).
say() {
	echo "$*"
	if [ -c /dev/ttyS0 ] && ! grep -qw ttyS0 /sys/class/tty/console/active 2>/dev/null; then
		echo "$*" >/dev/ttyS0 2>/dev/null
	fi
}

# cmdline_value KEY: the value of KEY=VALUE on the kernel command line.
cmdline_value() {
	for w in $(cat /proc/cmdline); do
		case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac
	done
	return 1
}

# has_medium NAME: true if block device NAME (e.g. vda, sr0) has data: a
# size > 0; a CD-ROM drive that had no medium when the sr driver probed it
# has the made-up size 0x1fffff sectors (1 GiB - 512 bytes) instead (opening
# it to find out would take ~0.1 s under TCG; a medium inserted later is
# not seen here).
has_medium() {
	s=$(cat "/sys/class/block/$1/size" 2>/dev/null)
	[ "${s:-0}" -gt 0 ] 2>/dev/null || return 1
	case "$1" in sr*) [ "$s" != 2097151 ] || return 1 ;; esac
	return 0
}

# block_devices [PREFIX...]: names of the block devices (disks and their
# partitions) that may hold a file system, by kind in the order of the
# prefixes (default: vd sd sr = virtio-blk, SCSI/SATA disks, CD-ROMs); empty
# ones (e.g. a CD-ROM drive without a medium) are left out.
block_devices() {
	[ $# -gt 0 ] || set -- vd sd sr
	for p in "$@"; do
		for b in /sys/class/block/$p*; do
			[ -e "$b/size" ] || continue
			has_medium "${b##*/}" && echo "${b##*/}"
		done
	done
}

# fs_probe DEV: print "iso9660 LABEL" or "vfat LABEL" (LABEL may be empty)
# for an ISO 9660 or FAT file system on DEV; print nothing otherwise.
fs_probe() {
	# ISO 9660: primary volume descriptor at 32768: type 1, "CD001",
	# volume identifier at +40 (32 bytes, space padded)
	if [ "$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ]; then
		echo "iso9660 $(dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d '\000' | sed 's/ *$//')"
		return 0
	fi
	# FAT: boot signature 55 aa; "FAT" at 54 (FAT12/16, label at 43) or at
	# 82 (FAT32, label at 71). The label of the boot sector is used.
	[ "$(dd if="$1" bs=1 skip=510 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 55aa ] || return 1
	if [ "$(dd if="$1" bs=1 skip=54 count=3 2>/dev/null)" = FAT ]; then
		off=43
	elif [ "$(dd if="$1" bs=1 skip=82 count=3 2>/dev/null)" = FAT ]; then
		off=71
	else
		return 1
	fi
	l=$(dd if="$1" bs=1 skip=$off count=11 2>/dev/null | tr -d '\000' | sed 's/ *$//')
	[ "$l" = "NO NAME" ] && l=
	echo "vfat $l"
}

# load_fs_modules: make sure that ISO 9660 / FAT mounts work (the modules
# are normally loaded by rcS already).
load_fs_modules() {
	grep -q iso9660 /proc/filesystems && grep -q vfat /proc/filesystems && return 0
	for m in isofs vfat nls_cp437 nls_ascii; do
		modprobe -q "$m" 2>/dev/null
	done
	return 0
}
