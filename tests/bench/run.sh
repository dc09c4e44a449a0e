#!/bin/bash
# Runs the drift-vs-PyTorch benchmark on a Linux machine with an NVIDIA GPU,
# PyTorch, torchvision and transformers installed, and no network.
#
# Usage, from the repository root:
#   bash tests/bench/run.sh DRIFT_BINARY OUT_DIR [--only gemm4096,resnet50,...]
#
# Vulkan: if the machine lacks the loader (libvulkan.so.1), put its .deb files
# in .gl/ (see docs/benchmarks.md); they are unpacked into / first.
set -u
drift=$1
out=$2
shift 2
for f in .gl/*.deb .device/*/deb/*.deb; do
    [ -e "$f" ] && dpkg -x "$f" /
done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -e "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
    export VK_DRIVER_FILES=$icd
fi
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$out/gpu.txt"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=/tmp
set -o pipefail
python3 "$(dirname "$0")/bench.py" --drift "$drift" --out "$out" "$@" 2>&1 | tee "$out/bench.log"
