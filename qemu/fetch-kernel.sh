#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Downloads Debian's linux-source-7.2 tarball from sid through a private apt
# configuration (the host's own sources are left alone) and unpacks a pristine
# tree into the cache. Prints the path of the pristine tree.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"

apt_root=$HOMI_CACHE/apt-$KERNEL_SUITE
mkdir -p "$apt_root/lists/partial" "$apt_root/archives/partial" "$HOMI_CACHE/src"
cat > "$apt_root/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $KERNEL_SUITE main
SRC
aptopts=(-o "Dir::Etc::sourcelist=$apt_root/sources.list" -o "Dir::Etc::sourceparts=-"
	-o "Dir::State::Lists=$apt_root/lists" -o "Dir::Cache::Archives=$apt_root/archives"
	-o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")

# Reuse a tarball already unpacked for this package version.
ver=""
if [ -f "$apt_root/version" ] && [ -d "$HOMI_CACHE/src/$(cat "$apt_root/version")" ] && [ -z "${HOMI_REFRESH_KERNEL:-}" ]; then
	ver=$(cat "$apt_root/version")
else
	apt-get "${aptopts[@]}" -qq update >&2
	ver=$(apt-cache "${aptopts[@]}" show "$KERNEL_SRC_PKG" | sed -n 's/^Version: //p' | sort -V | tail -1)
	[ -n "$ver" ] || { echo "fetch-kernel: $KERNEL_SRC_PKG not found in $KERNEL_SUITE" >&2; exit 1; }
	if [ ! -d "$HOMI_CACHE/src/$ver" ]; then
		(cd "$apt_root/archives" && apt-get "${aptopts[@]}" -qq download "$KERNEL_SRC_PKG=$ver" >&2)
		deb=$(ls "$apt_root"/archives/"${KERNEL_SRC_PKG}"_*.deb | grep -F "$ver" | head -1 || true)
		[ -z "$deb" ] && deb=$(ls -t "$apt_root"/archives/"${KERNEL_SRC_PKG}"_*.deb | head -1)
		tmp=$(mktemp -d "$HOMI_CACHE/src/.unpack.XXXXXX")
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/src/linux-source-*.tar.*'
		tarball=$(ls "$tmp"/usr/src/linux-source-*.tar.*)
		mkdir "$tmp/tree"
		tar -xf "$tarball" -C "$tmp/tree" --strip-components=1
		mv "$tmp/tree" "$HOMI_CACHE/src/$ver"
		rm -rf "$tmp" "$deb"
	fi
	echo "$ver" > "$apt_root/version"
fi
echo "$HOMI_CACHE/src/$ver"
