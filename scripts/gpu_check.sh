#!/usr/bin/env bash
# One prepared device-machine run (the `device` tool): CUDA-vs-CPU parity of the engine, then the
# PyTorch reference on the same GPU, results under $OUT. Build here first and carry the binaries:
#   cargo test --release -p cid-engine --test cuda_parity --no-run
#   mkdir -p .gpu && cp $(ls -t target/release/deps/cuda_parity-* | grep -v '\.d$' | head -1) .gpu/cuda_parity
#   cp target/release/contrastive-id .gpu/
# then run this script on the device with carry [".gpu"].
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
.gpu/cuda_parity --nocapture 2>&1 | tee "$OUT/parity.txt"
python3 ../shared/reference/torch_ref.py --device cuda --amp none,bf16 --quick --json "$OUT/torch_gpu.json" 2>&1 | tail -20 | tee "$OUT/torch_gpu.txt" \
  || python3 shared/reference/torch_ref.py --device cuda --amp none,bf16 --quick --json "$OUT/torch_gpu.json" 2>&1 | tail -20 | tee "$OUT/torch_gpu.txt"
