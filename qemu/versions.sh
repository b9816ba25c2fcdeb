# SPDX-License-Identifier: GPL-2.0
# Pinned versions and cache locations shared by the harness scripts.

# Debian source package that provides the kernel tarball, and the suite it is taken from.
KERNEL_SRC_PKG=linux-source-7.2
KERNEL_SUITE=sid
# The oldest /usr/bin/rustc minor version the 7.2 build accepts with our config.
KERNEL_RUSTC_MINOR_MIN=85
BINDGEN_VERSION=0.72.1
# NVRTC (the CUDA run-time compiler) from PyPI's nvidia-cuda-nvrtc wheel: lets the
# CUDA sources be compile-checked on machines without a GPU or a CUDA install.
NVRTC_VERSION=13.0.88
LLVM_SUFFIX=-19
# Bump when kernel.sh changes how the kernel is built (not how it logs), so cached
# builds made the old way are not reused.
KERNEL_BUILD_REV=1

# Everything built or downloaded lives outside the repository, keyed by inputs.
HOMI_CACHE=${HOMI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/homi}
HOMI_TOOLS=$HOMI_CACHE/tools
