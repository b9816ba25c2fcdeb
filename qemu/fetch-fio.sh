#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# fio's source tree of exactly the installed fio version, for building fio/'s
# external ioengine against the headers of the binary that will dlopen it (struct
# thread_data, io_u and fio_file layouts depend on the generated config-host.h).
#
# The source package comes from Debian's archive through a private apt configuration
# (deb-src lines for bookworm and its updates, security and backports suites), the
# way fetch-kernel.sh gets linux-source-*; the host's own sources are left alone.
# It is unpacked with dpkg-source -x (Debian's patches applied) into
# $HOMI_CACHE/fio/<version>, and fio's ./configure is run there as the package's
# debian/rules runs it, as far as struct layouts go (see fio/homi_engine.c for the
# fields checked, and xtask/src/fio.rs for the check against /usr/bin/fio).
#
#   fetch-fio.sh         prints the tree's path (fetches and configures it once)
#   fetch-fio.sh --path  prints where the tree would be, fetching nothing
#
# Exits 2, with the reason on stderr, when fio is not installed or its source cannot
# be had; callers report the fio checks skipped then.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"

die() { echo "fetch-fio: $*" >&2; exit 2; }

ver=$(dpkg-query -W -f='${Version}' fio 2>/dev/null) || die "fio is not installed (qemu/setup.sh installs it)"
[ -n "$ver" ] || die "fio is not installed (qemu/setup.sh installs it)"
tree=$HOMI_CACHE/fio/$ver
if [ "${1:-}" = --path ]; then
	echo "$tree"
	exit 0
fi
if [ -f "$tree/.homi-configured" ]; then
	echo "$tree"
	exit 0
fi

command -v dpkg-source >/dev/null || die "dpkg-source missing (package dpkg-dev; qemu/setup.sh installs it)"
apt_root=$HOMI_CACHE/apt-fio-src
mkdir -p "$apt_root/lists/partial" "$apt_root/archives/partial" "$HOMI_CACHE/fio"
# bookworm-updates, -security and -backports too: an update or a backport may be
# the installed version.
cat > "$apt_root/sources.list" <<-SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
SRC
aptopts=(-o "Dir::Etc::sourcelist=$apt_root/sources.list" -o "Dir::Etc::sourceparts=-"
	-o "Dir::State::Lists=$apt_root/lists" -o "Dir::Cache::Archives=$apt_root/archives"
	-o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
	-o "Acquire::Retries=1" -o "Acquire::http::Timeout=20")

dl=$(mktemp -d "$HOMI_CACHE/fio/.fetch.XXXXXX")
trap 'rm -rf "$dl"' EXIT
apt-get "${aptopts[@]}" -qq update >&2 || die "could not refresh the bookworm source index from deb.debian.org (apt-get update failed)"
# --download-only fetches the .dsc, .orig and .debian files and checks them against
# the signed index; nothing is built or installed.
(cd "$dl" && apt-get "${aptopts[@]}" -qq source --download-only "fio=$ver" >&2) ||
	die "could not download the fio $ver source package (does bookworm still offer it?)"
dsc=$(ls "$dl"/fio_*.dsc 2>/dev/null | head -1)
[ -n "$dsc" ] || die "no .dsc among the downloaded files"
# apt checked every file against the signed Sources index; the uploader's own
# signature on the .dsc needs debian-keyring, which is not installed, so dpkg-source
# says it cannot verify it.
dpkg-source --no-copy -x "$dsc" "$dl/tree" >"$dl/dpkg-source.log" 2>&1 ||
	die "dpkg-source -x $dsc failed: $(tail -3 "$dl/dpkg-source.log")"

# debian/rules runs `./configure --disable-native --prefix=/usr --enable-gfio
# --enable-libnbd` with its Build-Depends installed (libaio, numa, rdma, rbd, ...).
# Those libraries and gfio add engines and a GUI, not fields to the structures the
# engine reads (fio/homi_engine.c lists what was checked, and `cargo xtask fio`
# compares sizes and offsets with Debian's /usr/bin/fio); --disable-native keeps
# CPU-specific -march flags out, as in the package.
rules=$dl/tree/debian/rules
grep -q -- '--disable-native' "$rules" ||
	echo "fetch-fio: note: debian/rules no longer passes --disable-native; check fio/homi_engine.c's layout notes" >&2
(cd "$dl/tree" && ./configure --disable-native --prefix=/usr >"$dl/configure.log" 2>&1) ||
	die "fio's ./configure failed (log: $(tail -5 "$dl/configure.log"))"
[ -f "$dl/tree/config-host.h" ] || die "./configure wrote no config-host.h"
cp "$dl/configure.log" "$dl/tree/.homi-configure.log"
echo "$ver" > "$dl/tree/.homi-configured"
rm -rf "$tree"
mv "$dl/tree" "$tree"
echo "$tree"
