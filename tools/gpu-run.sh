#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Everything homi measures and checks on a GPU machine, from binaries built elsewhere
# by `cargo xtask gpu` (GPU machines need no Rust): the device engine's checks against
# the test instruments, the GPU round-trip benchmark against the GPU-resident null
# controller (rings in GPU and in host memory, beside the SQ store ceiling), and the
# queue-depth and I/O-size sweeps with plots. Usage: gpu-run.sh [OUT_DIR].
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-gpu-results}
mkdir -p "$out"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/cuda/lib64}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true

echo "== checks: 1 GiB round trips through the software and GPU-resident controllers"
"$here/homi-gpucheck" | tee "$out/gpucheck.txt"

echo "== round trips per second, GPU-resident null controller, 4 KiB, QD 64 x 256 queue pairs"
for placement in gpu host; do
	"$here/homi" perf --path gpu --controller gpu-null --placement "$placement" \
		--queues 256 --qd 64 --runtime 3 --ceiling --json | tee "$out/perf-gpu-null-$placement.json"
done
echo "== the same through the software controller (host thread), rings in host memory"
"$here/homi" perf --path gpu --controller soft --placement host --queues 8 --qd 32 --runtime 3 --json \
	| tee "$out/perf-soft-host.json"

echo "== sweeps: queue depth and I/O size, GPU-resident null controller"
"$here/homi" bench --gpu --controller gpu-null --queues 128 --runtime 1 --out "$out/sweep"
