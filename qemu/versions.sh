# SPDX-License-Identifier: GPL-2.0
# Pinned versions and cache locations shared by the harness scripts.

# The guest kernel the project was last verified on: Debian's package, its exact
# version and the suite it came from. `cargo xtask` uses it whenever its source is
# cached or Debian still offers it; otherwise the newest linux-source-X.Y (X.Y at
# least the verified one) in the suites below, in order. HOMI_KERNEL overrides
# (xtask/src/kselect.rs). Update these three after a full `cargo xtask test` passes
# on a newer kernel.
KERNEL_VERIFIED_PKG=linux-source-7.2
KERNEL_VERIFIED_VERSION=7.2.13-1
KERNEL_VERIFIED_SUITE=sid
# Debian suites searched for kernel sources, in order of preference.
KERNEL_SUITES="sid experimental"
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
