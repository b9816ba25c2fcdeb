#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# PID 1 of the homi test VM. The guest's root is the host's root, shared read-only
# over 9p, so host-built binaries run unchanged. Writable scratch lives on tmpfs
# under /run; results go to the 9p share "homiout", mounted at $HOMI_OUT.
# `cargo xtask vm` writes the command to run into $HOMI_OUT/cmd.sh.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/run/home TMPDIR=/run/tmp HOMI_OUT=/run/homi-out

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p "$HOMI_OUT" "$HOME" "$TMPDIR" /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 homiout "$HOMI_OUT"

echo "homi-guest: up at $(cut -d' ' -f1 /proc/uptime)s"
/bin/sh "$HOMI_OUT/cmd.sh"
rc=$?
echo "$rc" > "$HOMI_OUT/exit-status"
dmesg > "$HOMI_OUT/dmesg.txt"
sync
umount "$HOMI_OUT"
echo "homi-guest: command exited $rc"
exec busybox poweroff -f
