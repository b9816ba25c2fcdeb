#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Fetches NVRTC's shared libraries from PyPI's nvidia-cuda-nvrtc wheel (through pip,
which checks the index's hashes) and unpacks them into DIR.
Usage: fetch-nvrtc.py VERSION DIR."""

import glob
import os
import subprocess
import sys
import tempfile
import zipfile


def main() -> int:
    version, dest = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", tmp,
             f"nvidia-cuda-nvrtc=={version}"],
            check=True,
        )
        wheels = glob.glob(os.path.join(tmp, "nvidia_cuda_nvrtc-*.whl"))
        if not wheels:
            print(f"fetch-nvrtc: pip found no wheel for nvidia-cuda-nvrtc {version}", file=sys.stderr)
            return 1
        os.makedirs(dest, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                base = os.path.basename(name)
                if "/lib/" in name and base.startswith("libnvrtc"):
                    with open(os.path.join(dest, base), "wb") as f:
                        f.write(z.read(name))
    with open(os.path.join(dest, "VERSION"), "w") as f:
        f.write(version + "\n")
    print(f"fetch-nvrtc: {os.path.basename(wheels[0])} unpacked into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
