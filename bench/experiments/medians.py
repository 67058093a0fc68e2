#!/usr/bin/env python3
"""Medians per arm of shardq_bench JSON files named WORK/ARM.ROUND.json.

Used by the experiment scripts beside it:  medians.py WORK ARM...
Prints each figure's median and its runs, then the ratios to the references where
a run measured them (a ratio is the median of each run's own ratio).
"""
import glob
import json
import statistics
import sys

RATIOS = {  # figure / its reference in the same run
    "A1 x naive": ("A1 enqueue, single (items/s)", "ref naive enqueue, single (items/s)"),
    "A2 / raw": ("A2 enqueue, batch (items/s)", "ref raw INSERT, batch (rows/s)"),
    "B2 x naive": ("B2 drain, batch ack (items/s)", "ref naive drain, batch ack (items/s)"),
}


def main(work, names):
    for name in names:
        runs = [json.load(open(f))[0] for f in sorted(glob.glob(f"{work}/{name}.*.json"))]
        if not runs:
            print(f"{name}: no runs")
            continue
        print(f"{name} ({len(runs)} runs, medians):")
        for key in runs[0]:
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            if values and "threads" not in key:
                print(f"  {key}: {statistics.median(values):.2f}  (runs: "
                      + ", ".join(f"{v:.1f}" for v in values) + ")")
        for label, (num, den) in RATIOS.items():
            values = [r[num] / r[den] for r in runs if r.get(num) and r.get(den)]
            if values:
                print(f"  {label}: {statistics.median(values):.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
