#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Debian's linux-source-X.Y packages, through one private apt configuration per suite
# (the host's own sources are left alone).
#
#   fetch-kernel.sh list SUITE                 refreshes SUITE's index and prints
#                                              `apt-cache show` of every linux-source-X.Y
#                                              it offers (nothing if none)
#   fetch-kernel.sh fetch SUITE PKG VERSION    downloads PKG=VERSION from SUITE and
#                                              unpacks a pristine tree into the cache
#                                              (reused if already there); prints its path
#   fetch-kernel.sh                            fetch of the verified kernel (versions.sh)
#
# Which kernel to use is decided by `cargo xtask` (xtask/src/kselect.rs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"

die() { echo "fetch-kernel: $*" >&2; exit 1; }

apt_setup() {
	suite=$1
	apt_root=$HOMI_CACHE/apt-$suite
	mkdir -p "$apt_root/lists/partial" "$apt_root/archives/partial" "$HOMI_CACHE/src"
	cat > "$apt_root/sources.list" <<-SRC
	deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
	SRC
	aptopts=(-o "Dir::Etc::sourcelist=$apt_root/sources.list" -o "Dir::Etc::sourceparts=-"
		-o "Dir::State::Lists=$apt_root/lists" -o "Dir::Cache::Archives=$apt_root/archives"
		-o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
		-o "Acquire::Retries=1" -o "Acquire::http::Timeout=20")
}

cmd=${1:-fetch}
case "$cmd" in
list)
	[ $# = 2 ] || die "usage: $0 list SUITE"
	apt_setup "$2"
	apt-get "${aptopts[@]}" -qq update >&2 || die "could not refresh the $suite index from deb.debian.org (apt-get update failed)"
	# apt-cache exits 100 when nothing matches: an empty list, not an error.
	apt-cache "${aptopts[@]}" show 'linux-source-[0-9]*' 2>/dev/null || true
	;;
fetch)
	if [ $# = 1 ] || [ $# = 0 ]; then
		set -- fetch "$KERNEL_VERIFIED_SUITE" "$KERNEL_VERIFIED_PKG" "$KERNEL_VERIFIED_VERSION"
	fi
	[ $# = 4 ] || die "usage: $0 fetch SUITE PKG VERSION"
	apt_setup "$2"
	pkg=$3 ver=$4
	if [ ! -d "$HOMI_CACHE/src/$ver" ]; then
		apt-get "${aptopts[@]}" -qq update >&2 || die "could not refresh the $suite index from deb.debian.org (apt-get update failed)"
		(cd "$apt_root/archives" && apt-get "${aptopts[@]}" -qq download "$pkg=$ver" >&2) ||
			die "could not download $pkg $ver from $suite (does $suite still offer it? \`cargo xtask kernel --check-upstream\` lists what it does)"
		deb=$apt_root/archives/${pkg}_${ver//:/%3a}_all.deb
		[ -f "$deb" ] || deb=$(ls -t "$apt_root"/archives/"${pkg}"_*.deb | head -1)
		tmp=$(mktemp -d "$HOMI_CACHE/src/.unpack.XXXXXX")
		trap 'rm -rf "$tmp"' EXIT
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/src/linux-source-*.tar.*' ||
			die "$deb holds no ./usr/src/linux-source-*.tar.*"
		tarball=$(ls "$tmp"/usr/src/linux-source-*.tar.*)
		mkdir "$tmp/tree"
		tar -xf "$tarball" -C "$tmp/tree" --strip-components=1
		mv "$tmp/tree" "$HOMI_CACHE/src/$ver"
		rm -rf "$tmp" "$deb"
		trap - EXIT
	fi
	echo "$HOMI_CACHE/src/$ver"
	;;
*)
	die "usage: $0 list SUITE | fetch SUITE PKG VERSION"
	;;
esac
