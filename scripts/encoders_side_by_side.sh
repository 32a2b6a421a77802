#!/usr/bin/env bash
# Side-by-side CPU measurement of the `cnn` and `isfm` encoders' training steps: our engine
# (`cargo bench -p cid-engine --bench workload`) against `encoders_ref.py --time` (PyTorch, fp32
# eager and bf16 autocast), the same configs by name, 2 threads, on a quiet machine. Rounds are
# interleaved (ours, PyTorch, ours, PyTorch) so drift on a shared VM shows as spread, not bias.
# Writes under $1 (default bench-results/encoders-side-by-side); ROUNDS, STEPS, CONFIGS override.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results/encoders-side-by-side}
ref=${REF:-../shared/reference/encoders_ref.py}
configs=${CONFIGS:-cnn-medium,cnn-large,isfm-small,isfm-base}
rounds=${ROUNDS:-2}
steps=${STEPS:-30}
mkdir -p "$out"
cargo build --release --benches -p cid-engine >/dev/null 2>&1
engine_bench=$(ls -t target/release/deps/workload-* | grep -v '\.d$' | head -1)
{
  echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%FT%TZ)"
  for round in $(seq 1 "$rounds"); do
    echo "## round $round: engine"
    "$engine_bench" --threads 2 --steps "$steps" --configs "$configs" --json "$out/engine_round$round.json"
    echo "## round $round: encoders_ref.py"
    python3 "$ref" --time --configs "$configs" --amp "${AMP:-none,bf16}" --threads 2 --steps "$steps" --json "$out/torch_round$round.json" | grep -E '^\[train\]'
  done
} 2>&1 | tee "$out/log.txt"
