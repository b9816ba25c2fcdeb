#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Builds the homi guest kernel: Debian's linux-source-X.Y, plus qemu/patches/*.patch
# (but the cover letter),
# configured from allnoconfig + qemu/kernel.config (+ qemu/kernel-debug.config for
# VARIANT=debug). The result is cached outside the repository under a key made of
# the source version, config fragments, patches, toolchain versions and this
# script, so an unchanged tree is never rebuilt.
#
# Which kernel: KERNEL_SRC_PKG, KERNEL_VERSION and KERNEL_SUITE, as `cargo xtask`
# selects them (xtask/src/kselect.rs); run alone, the verified one of versions.sh.
#
# Prints the build directory (the KDIR for out-of-tree modules) on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"
variant=${VARIANT:-release}
pkg=${KERNEL_SRC_PKG:-$KERNEL_VERIFIED_PKG}
suite=${KERNEL_SUITE:-$KERNEL_VERIFIED_SUITE}
ver=${KERNEL_VERSION:-$KERNEL_VERIFIED_VERSION}

log() { echo "kernel: $*" >&2; }

src=$("$here/fetch-kernel.sh" fetch "$suite" "$pkg" "$ver")
# The cache key names the Debian version, as it always has; what else is known about
# the source goes beside the build, in .homi-kernel.
[ "$(basename "$src")" = "$ver" ] || { log "fetch-kernel.sh returned $src for $ver"; exit 1; }
record="$pkg $ver from $suite"

# kernel-X.Y.config follows the kernel's Kconfig where it changed in X.Y (a renamed
# option, say): it applies to X.Y and every later series, and an option it sets
# replaces the one kernel.config sets. Series before the first of them use
# kernel.config alone, so their cache keys are what they always were.
series=$(sed -n 's/^VERSION = //p; s/^PATCHLEVEL = //p' "$src/Makefile" | paste -sd.)
frags=("$here/kernel.config")
shopt -s nullglob
for f in $(printf '%s\n' "$here"/kernel-[0-9]*.config | sort -V); do
	s=${f##*/kernel-} s=${s%.config}
	[ "$(printf '%s\n%s\n' "$s" "$series" | sort -V | head -1)" = "$s" ] && frags+=("$f")
done
shopt -u nullglob
[ "$variant" = debug ] && frags+=("$here/kernel-debug.config")
[ "$variant" = release ] || [ "$variant" = debug ] || { log "unknown VARIANT=$variant (release|debug)"; exit 1; }
shopt -s nullglob
patches=()
for p in "$here"/patches/*.patch; do
	# git format-patch's cover letter carries no diff.
	[ "$(basename "$p")" = 0000-cover-letter.patch ] || patches+=("$p")
done
# HOMI_NO_PATCHES=1 builds the stock kernel, for checking homi.ko against one.
[ -z "${HOMI_NO_PATCHES:-}" ] || patches=()
shopt -u nullglob

key=$( {
	echo "$ver $variant rev$KERNEL_BUILD_REV"
	cat "${frags[@]}"
	for p in "${patches[@]}"; do basename "$p"; cat "$p"; done
	/usr/bin/rustc --version; clang$LLVM_SUFFIX --version | head -1; "$HOMI_TOOLS/bin/bindgen" --version
} | sha256sum | cut -c1-16)

out=$HOMI_CACHE/kernel/$ver-$variant-$key
# One run at a time per build: a second one waits, then finds it cached, rather than
# deleting the first one's half-built tree.
mkdir -p "$HOMI_CACHE/kernel"
exec 9> "$HOMI_CACHE/kernel/.lock-$ver-$variant-$key"
if ! flock -n 9; then
	log "another run is building $out; waiting for it"
	flock 9
fi
if [ -f "$out/.homi-built" ]; then
	# Builds made before .homi-kernel existed get it on first use.
	[ -f "$out/.homi-kernel" ] || echo "$record" > "$out/.homi-kernel"
	log "cached: $out ($(cat "$out/.homi-built"))"
	echo "$out"
	exit 0
fi

start=$(date +%s)
tree=$HOMI_CACHE/tree/$ver-$key
if [ ! -f "$tree/.homi-patched" ]; then
	rm -rf "$tree"
	mkdir -p "$(dirname "$tree")"
	# Hard links are safe: patch(1) replaces files rather than writing through them.
	cp -al "$src" "$tree"
	for p in "${patches[@]}"; do
		log "applying $(basename "$p")"
		# No fuzz: a hunk whose context moved too far must fail, not land elsewhere.
		if ! patch -d "$tree" -p1 --quiet --forward --batch --fuzz=0 < "$p" >&2; then
			log "$(basename "$p") does not apply to $pkg $ver (from $suite)."
			log "Set HOMI_KERNEL=$KERNEL_VERIFIED_VERSION (the verified kernel) or another version that"
			log "\`cargo xtask kernel --check-upstream\` shows the series applies to, rebase qemu/patches/,"
			log "or set HOMI_NO_PATCHES=1 to build a stock kernel."
			rm -rf "$tree"
			exit 1
		fi
	done
	touch "$tree/.homi-patched"
fi

mk=(make -C "$tree" O="$out" LLVM="$LLVM_SUFFIX" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
	BINDGEN="$HOMI_TOOLS/bin/bindgen" -s)
export LIBCLANG_PATH=/usr/lib/llvm${LLVM_SUFFIX}/lib
rm -rf "$out"
mkdir -p "$out"
# A failed or interrupted build leaves nothing that looks reusable.
trap 'rm -rf "$out"' EXIT
"${mk[@]}" rustavailable >&2 || { log "the kernel reports Rust unavailable (run make setup)"; exit 1; }
cat "${frags[@]}" > "$out/homi.config"
KCONFIG_ALLCONFIG="$out/homi.config" "${mk[@]}" allnoconfig >&2

# Every requested option must have survived dependency resolution. Where a fragment
# sets an option again, its last value is the one asked for.
missing=0
while IFS= read -r line; do
	opt=${line%%=*} val=${line#*=}
	if [ "$val" = n ]; then
		grep -qx "$opt=y" "$out/.config" && { log "config: $opt should be off"; missing=1; }
	else
		grep -qxF "$line" "$out/.config" || { log "config: $line did not survive (dependency missing?)"; missing=1; }
	fi
done < <(grep -v -e '^#' -e '^$' "$out/homi.config" | tac | awk -F= '!seen[$1]++' | tac)
[ "$missing" = 0 ] || exit 1

jobs=$(( $(nproc) + 1 ))
log "building Linux $ver ($variant) with -j$jobs in $out"
"${mk[@]}" -j"$jobs" >&2
elapsed=$(( $(date +%s) - start ))
echo "$record" > "$out/.homi-kernel"
echo "built in ${elapsed}s on $(nproc) cores, $(date -u +%FT%TZ)" > "$out/.homi-built"
trap - EXIT
log "built Linux $ver ($variant) in ${elapsed}s"

# Keep the three newest builds of this variant (and their source trees), and every
# build of the verified kernel, so that trying another kernel never costs the default
# its cached build; drop the rest.
for old in $(ls -dt "$HOMI_CACHE"/kernel/*-"$variant"-* | grep -v "/$KERNEL_VERIFIED_VERSION-$variant-" | tail -n +4); do
	log "pruning old build $old"
	rm -rf "$old" "$HOMI_CACHE"/tree/*-"${old##*-}"
done
echo "$out"
