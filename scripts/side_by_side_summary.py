#!/usr/bin/env python3
"""Ratios of a side-by-side run: our best precision against PyTorch's best mode, per config and
round, beside each issue's goal.

Reads the JSON files a side-by-side script wrote into one folder: ours as `engine*_round<N>.json`
(the workload bench's records: config, precision, median_ms), PyTorch's as `torch*_round<N>.json`
(`torch_ref.py` records step_median_ms per amp, `encoders_ref.py` median_ms). For each config
and round the faster of our precisions is set against the faster of PyTorch's modes (fp32 eager
or bf16 autocast), as the issues measure. Prints a Markdown table, then one line per config: the
median speed-up over the rounds and in how many rounds the goal was met (a shared VM moves either
side by tens of percent from one minute to the next, so one round settles little).

    python3 scripts/side_by_side_summary.py bench-results/cpu-generation/<run>
"""
import glob
import json
import os
import re
import statistics
import sys

# The goal of each config: issue 14 (MLP workloads), issue 12 (cnn), issue 11 (isfm).
GOALS = {"small": 4.0, "medium": 4.0, "large": 2.5, "complex": 2.5, "xl": 2.0,
         "cnn-medium": 5.0, "cnn-large": 5.0, "isfm-small": 2.0, "isfm-base": 2.0}


def rounds_of(folder, prefix):
    """{round: [records]} from `<prefix>*_round<N>.json`."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, prefix + "*_round*.json"))):
        m = re.search(r"_round(\d+)\.json$", path)
        if not m:
            continue
        with open(path) as f:
            data = json.load(f)
        records = data if isinstance(data, list) else data.get("train", [])
        out.setdefault(int(m.group(1)), []).extend(records)
    return out


def best(records, config, time_key, mode_key):
    """The fastest (ms, mode) of `config` among records that have a time."""
    timed = [(r[k], r.get(mode_key, "?")) for r in records if r.get("config") == config
             for k in time_key if isinstance(r.get(k), (int, float))]
    return min(timed) if timed else None


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: side_by_side_summary.py FOLDER (written by a side-by-side script)")
    folder = sys.argv[1]
    ours, theirs = rounds_of(folder, "engine"), rounds_of(folder, "torch")
    rounds = sorted(set(ours) & set(theirs))
    if not rounds:
        sys.exit(f"{folder}: no round has both engine*_roundN.json and torch*_roundN.json")
    configs = [c for c in GOALS if any(best(ours[r], c, ["median_ms"], "precision") for r in rounds)]
    print("| config | round | ours ms (precision) | PyTorch ms (mode) | speed-up | goal |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios = {}
    for c in configs:
        for r in rounds:
            o = best(ours[r], c, ["median_ms"], "precision")
            t = best(theirs[r], c, ["median_ms", "step_median_ms"], "amp")
            if not o or not t:
                print(f"| {c} | {r} | {o[0] if o else '—'} | {t[0] if t else '—'} | not measured | ≥ {GOALS[c]}× |")
                continue
            ratio = t[0] / o[0]
            ratios.setdefault(c, []).append(ratio)
            verdict = "met" if ratio >= GOALS[c] else "not met"
            mode = "fp32" if t[1] == "none" else t[1]
            print(f"| {c} | {r} | {o[0]:.2f} ({o[1]}) | {t[0]:.2f} ({mode}) | {ratio:.2f}× | ≥ {GOALS[c]}× {verdict} |")
    print()
    print("| config | goal | median speed-up | rounds met |")
    print("| --- | --- | --- | --- |")
    for c, rs in ratios.items():
        met = sum(r >= GOALS[c] for r in rs)
        print(f"| {c} | ≥ {GOALS[c]}× | {statistics.median(rs):.2f}× | {met} of {len(rs)} |")


if __name__ == "__main__":
    main()
