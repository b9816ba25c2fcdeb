#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Installs everything homi's build and test harness needs, from Debian's and
# crates.io's registries only. Idempotent: a second run checks and does nothing.
#
# Debian 12 (bookworm) hosts only: QEMU 10 comes from bookworm-backports (bookworm's
# own QEMU 7.2 has no `dbcs` property), clang/LLVM 19 from bookworm-backports too,
# and rustc-web 1.96 plus its `core` source from bookworm-updates. The kernel source
# tarball comes from sid, through a private sources list (see kernel.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=qemu/versions.sh
. "$here/versions.sh"

need_root() {
	if [ "$(id -u)" != 0 ]; then
		if command -v sudo >/dev/null; then SUDO=sudo; else
			echo "setup: must run as root (or with sudo) to install packages" >&2
			exit 1
		fi
	else
		SUDO=
	fi
}

have_pkgs() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
	done
}

need_root
. /etc/os-release
if [ "${VERSION_CODENAME:-}" != bookworm ]; then
	echo "setup: warning: tested on Debian 12 (bookworm); this is ${PRETTY_NAME:-unknown}" >&2
fi

bpo=/etc/apt/sources.list.d/homi-bookworm-backports.sources
if [ ! -f "$bpo" ]; then
	echo "setup: adding bookworm-backports ($bpo)"
	$SUDO tee "$bpo" >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	stale=1
fi

# Packages from bookworm (and bookworm-updates for rustc-web).
base_pkgs=(build-essential flex bison bc cpio kmod libelf-dev libssl-dev dwarves
	perl python3 rsync busybox-static e2fsprogs xfsprogs util-linux fio valgrind dpkg-dev pkg-config
	rustc-web rust-web-src rust-web-clippy rustfmt-web)
# Packages that must come from bookworm-backports.
bpo_pkgs=(qemu-system-x86 qemu-utils clang-19 lld-19 llvm-19 libclang-19-dev)

if ! have_pkgs "${base_pkgs[@]}" "${bpo_pkgs[@]}"; then
	echo "setup: installing packages"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${base_pkgs[@]}"
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
		-t bookworm-backports "${bpo_pkgs[@]}"
fi
unset stale

qv=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
if [ "${qv:-0}" -lt 10 ]; then
	echo "setup: qemu-system-x86_64 is version ${qv:-unknown}; homi needs 10+ (bookworm-backports) for nvme dbcs=" >&2
	exit 1
fi

rv=$(/usr/bin/rustc --version | awk '{print $2}')
if [ "${rv%%.*}" != 1 ] || [ "$(echo "$rv" | cut -d. -f2)" -lt "$KERNEL_RUSTC_MINOR_MIN" ]; then
	echo "setup: /usr/bin/rustc is $rv; the kernel build needs rustc-web >= 1.$KERNEL_RUSTC_MINOR_MIN" >&2
	exit 1
fi

# bindgen-cli, pinned, into a private root so the user's cargo setup is untouched.
if ! "$HOMI_TOOLS/bin/bindgen" --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
	echo "setup: installing bindgen-cli $BINDGEN_VERSION into $HOMI_TOOLS"
	command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
	cargo install --quiet --locked --root "$HOMI_TOOLS" "bindgen-cli@$BINDGEN_VERSION"
fi

# NVRTC alone (no driver, no toolkit), for `homi-gpucheck --compile-only`.
if [ ! -f "$HOMI_TOOLS/nvrtc/libnvrtc.so.13" ] || [ "$(cat "$HOMI_TOOLS/nvrtc/VERSION" 2>/dev/null)" != "$NVRTC_VERSION" ]; then
	echo "setup: fetching NVRTC $NVRTC_VERSION (PyPI nvidia-cuda-nvrtc) into $HOMI_TOOLS/nvrtc"
	python3 "$here/fetch-nvrtc.py" "$NVRTC_VERSION" "$HOMI_TOOLS/nvrtc" ||
		echo "setup: warning: could not fetch NVRTC; the CUDA compile checks will report skipped" >&2
fi

# fio's source of the installed version, configured, for the homi ioengine (fio/).
bash "$here/fetch-fio.sh" >/dev/null ||
	echo "setup: warning: could not fetch fio's source; the fio engine checks will report skipped" >&2

for t in clang-19 ld.lld-19 llvm-ar-19 qemu-system-x86_64 busybox /usr/bin/rustc "$HOMI_TOOLS/bin/bindgen"; do
	command -v "$t" >/dev/null || { echo "setup: missing after install: $t" >&2; exit 1; }
done
echo "setup: ok (qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), rustc $rv, bindgen $BINDGEN_VERSION, clang-19, NVRTC $NVRTC_VERSION)"
