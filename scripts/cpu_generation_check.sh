#!/usr/bin/env bash
# Issue 14's checklist as one run, for a session on a CPU this repository has not measured yet
# (AVX-512F, AVX512-BF16, AMX; on an AVX2-only CPU it runs too and says what it skipped):
#   1. the CPU, its AVX-512 / AMX flags;
#   2. the engine's tests, printing every SKIPPED line (a kernel the CPU lacks), once with
#      CID_CPU_AMX=off and once with it on (the default: the AMX kernel where the CPU has it,
#      checked at first use against its emulator);
#   3. the SGEMM probe (`sgemm_time`: our kernels and faer, one thread) on five step shapes, in fp32
#      and with bf16 products (`vdpbf16ps` where the CPU has AVX512-BF16);
#   4. ROUNDS interleaved rounds of: the workload bench in fp32, in bf16 without AMX, in bf16 with
#      AMX where the CPU has it, and in fp16 where it has AVX512-FP16, beside torch_ref.py and encoders_ref.py in fp32 eager and bf16 autocast;
#   5. the hardware category (`contrastive-id bench --test hardware`: bf16's speed-up and accuracy drop);
#   6. summary.md: our best precision against PyTorch's best mode per config and round
#      (scripts/side_by_side_summary.py), with the issues' goals, and the hardware line.
# Nothing else may run meanwhile. Writes under $1 (default bench-results/cpu-generation/<time>);
# ROUNDS (default 2), STEPS (default 30), THREADS (default 2), MLPS and ENCODERS (the config
# lists), AMP (PyTorch's modes, default none,bf16) override. ONLY=side-by-side runs steps 1, 4 and
# 6 alone (a CPU already checked: the speed-ups of a new build).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results/cpu-generation/$(date -u +%Y%m%dT%H%M)}
rounds=${ROUNDS:-2}
steps=${STEPS:-30}
threads=${THREADS:-2}
mlps=${MLPS:-small,medium,large,complex,xl}
encoders=${ENCODERS:-cnn-medium,cnn-large,isfm-small,isfm-base}
amp=${AMP:-none,bf16}
ref=${REF:-../shared/reference}
only=${ONLY:-}
if [[ -n "$only" && "$only" != side-by-side ]]; then
  echo "ONLY=$only: the one part that runs alone is side-by-side" >&2
  exit 2
fi
# The PyTorch side needs torch and numpy: say so before the minutes of tests and builds, not after.
if ! python3 -c 'import torch, numpy' 2>/dev/null; then
  echo "python3 cannot import torch and numpy: pip install torch numpy (the side by side needs them)" >&2
  exit 1
fi
mkdir -p "$out"
flags=$(grep -o -E 'avx512[a-z_0-9]*|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ' || true)
model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
echo "# $model, $(nproc) cores, $threads threads used; AVX-512 / AMX flags: ${flags:-none}; $(date -u +%FT%TZ)" | tee "$out/machine.txt"

cargo build --release -p cid-engine --benches --examples --tests >/dev/null 2>&1
if [[ -z "$only" ]]; then
  echo "## tests" | tee "$out/tests.txt"
  for amx in off on; do
    echo "### CID_CPU_AMX=$amx" >>"$out/tests.txt"
    # --nocapture: a skipped kernel's test passes, so its SKIPPED line is the only trace of it.
    CID_CPU_AMX=$amx cargo test -p cid-engine --release -- --nocapture 2>&1 \
      | grep -E "SKIPPED|^test result|FAILED|panicked|warning: the" | sort | uniq -c >>"$out/tests.txt" || true
  done
  cat "$out/tests.txt"

  echo "## sgemm_time (one thread, GFLOP/s; fp32, then bf16 products: PRECISION=bf16)" | tee "$out/sgemm.txt"
  for shape in "512 512 8192 0 1" "512 4096 512 1 0" "4096 768 256 0 1" "16384 16 128 0 1" "256 256 4096 1 0"; do
    echo "### $shape" >>"$out/sgemm.txt"
    # shellcheck disable=SC2086
    ./target/release/examples/sgemm_time $shape >>"$out/sgemm.txt" 2>&1
    # shellcheck disable=SC2086
    PRECISION=bf16 ./target/release/examples/sgemm_time $shape >>"$out/sgemm.txt" 2>&1
  done
  cat "$out/sgemm.txt"
fi

bench=$(ls -t target/release/deps/workload-* | grep -v '\.d$' | head -1)
variants="fp32:off bf16:off"
if [[ " $flags " == *" amx_bf16 "* ]]; then variants="$variants bf16:on"; fi
# fp16 (products rounded to binary16, loss scaling) where training offers it.
if [[ " $flags " == *" avx512_fp16 "* ]]; then variants="$variants fp16:off"; fi
{
  for round in $(seq 1 "$rounds"); do
    for v in $variants; do
      precision=${v%%:*} amx=${v##*:}
      echo "## round $round: engine, $precision, CID_CPU_AMX=$amx"
      CID_CPU_AMX=$amx "$bench" --threads "$threads" --steps "$steps" --configs "$mlps,$encoders" \
        --precision "$precision" --json "$out/engine_${precision}_amx${amx}_round$round.json"
    done
    echo "## round $round: torch_ref.py (amp $amp)"
    python3 "$ref/torch_ref.py" --device cpu --amp "$amp" --configs "$mlps" --steps "$steps" \
      --threads "$threads" --sections train --json "$out/torch_mlp_round$round.json" | grep -E '^\[train\]'
    echo "## round $round: encoders_ref.py (amp $amp)"
    python3 "$ref/encoders_ref.py" --time --configs "$encoders" --amp "$amp" --threads "$threads" \
      --steps "$steps" --json "$out/torch_encoders_round$round.json" | grep -E '^\[train\]'
  done
} 2>&1 | tee "$out/log.txt"

# The hardware category: fp32 against bf16 (and fp16 where it runs) through the product itself.
if [[ -z "$only" ]]; then
  cargo build --release -p contrastive-id >/dev/null 2>&1
  {
    ./target/release/contrastive-id bench --test hardware --save-dir "$out/hardware" 2>&1 | grep -E '^\[hardware\]'
    grep -E '^\| hardware \| cpu\.(bf16|fp16) \| (mixed_precision_speedup|accuracy_drop)' "$out/hardware/reports/performance_summary.md"
  } >"$out/hardware.txt" 2>&1 || true
else
  echo "(ONLY=$only: the hardware category was not run)" >"$out/hardware.txt"
fi

{
  cat "$out/machine.txt"
  echo
  python3 scripts/side_by_side_summary.py "$out"
  echo
  cat "$out/hardware.txt"
} | tee "$out/summary.md"
