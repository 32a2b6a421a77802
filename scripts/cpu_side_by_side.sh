#!/usr/bin/env bash
# Side-by-side CPU measurement: our engine and data pipeline against the PyTorch reference, in
# one run on a quiet machine (nothing else running). Each pair is run twice, interleaved, so that
# drift on a shared VM shows up as spread instead of as a bias. Writes results under $1 (default
# bench-results/cpu-side-by-side).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results/cpu-side-by-side}
ref=${REF:-../shared/reference/torch_ref.py}
mkdir -p "$out"
cargo build --release --benches -p cid-engine -p cid-signal >/dev/null 2>&1
engine_bench=$(ls -t target/release/deps/workload-* | grep -v '\.d$' | head -1)
data_bench=$(ls -t target/release/deps/batch_prep-* | grep -v '\.d$' | head -1)
{
  echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%FT%TZ)"
  for round in 1 2; do
    echo "## round $round: engine"
    "$engine_bench" --threads 2 --steps 50 --json "$out/engine_round$round.json"
    echo "## round $round: torch_ref train"
    python3 "$ref" --device cpu --configs small,medium,large,complex,xl --steps 50 --sections train --json "$out/torch_train_round$round.json" | grep -E '^\[train\]'
  done
  echo "## data: ours (cargo bench -p cid-signal --bench batch_prep)"
  "$data_bench" --threads 2
  echo "## data: torch_ref --sections data"
  python3 "$ref" --device cpu --sections data --json "$out/torch_data.json" | grep -E '^\[data\]'
} 2>&1 | tee "$out/log.txt"
