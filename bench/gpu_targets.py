#!/usr/bin/env python
"""The H200 targets of ``bench/gpu_check.sh``, checked against ``efficientad-fast bench`` results.

    python bench/gpu_targets.py OUT_DIR     # tables of OUT_DIR/bench_*.json, the targets, targets.json

gpu_check.sh runs this last and appends what it prints to ``summary.md``; without GPU figures
(a CPU machine) it says that the targets were not checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from efficientad_fast.benchmark import format_table

# (what, model size, batch, dtype, figure, comparison, bound): the fast path is CUDA graph +
# fp16 + channels_last, GPU-resident.
GPU_TARGETS = (
    ("EfficientAD-S latency, batch 1, fp16, GPU-resident", "small", 1, "fp16", "mean_ms", "<=", 0.6),
    ("EfficientAD-S throughput, batch 64, fp16", "small", 64, "fp16", "images_per_s", ">=", 4000.0),
    ("EfficientAD-M latency, batch 1, fp16, GPU-resident", "medium", 1, "fp16", "mean_ms", "<=", 1.2),
)
OP_BANDWIDTH_TARGET = ("fused op N=64 fp16, fraction of peak bandwidth", 64, "fp16", 0.70)
# What gpu_check.sh's benchmark steps write into its OUT folder.
BENCH_FILES = ("bench_latency.json", "bench_throughput.json")


def check_targets(result: dict) -> list[dict]:
    """The GPU targets against a ``run_benchmark`` result: for each, the best measured
    configuration (device path; CUDA graph on or off) and whether it meets the bound. Targets
    whose configuration was not measured are left out."""
    rows = []
    for what, size, batch, dtype, key, op, bound in GPU_TARGETS:
        candidates = [t for t in result["timings"] if not t["error"] and t["model_size"] == size
                      and t["batch"] == batch and t["dtype"] == dtype and t["path"] == "device"]
        if not candidates:
            continue
        best = (min if op == "<=" else max)(candidates, key=lambda t: t[key])
        value = best[key]
        rows.append({"target": what, "bound": f"{op} {bound:g}", "measured": value, "config": best["name"],
                     "met": value <= bound if op == "<=" else value >= bound})
    what, batch, dtype, bound = OP_BANDWIDTH_TARGET
    for r in result.get("op", []):
        if r["impl"] == "fused" and r["batch"] == batch and r["dtype"] == dtype and r["fraction_of_peak"]:
            rows.append({"target": what, "bound": f">= {bound:g}", "measured": r["fraction_of_peak"],
                         "config": f"{r['gbs']:.0f} GB/s", "met": r["fraction_of_peak"] >= bound})
    return rows


def format_targets(rows: list[dict]) -> str:
    """A Markdown table of :func:`check_targets` rows."""
    lines = ["| target | bound | measured | best configuration | met? |", "|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['bound']} | {r['measured']:.3f} | {r['config']} | "
              f"{'yes' if r['met'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the tables of the benchmark JSON files in OUT_DIR and the targets (also written
    to OUT_DIR/targets.json), or that no GPU figures were measured."""
    out = Path((sys.argv[1:] if argv is None else argv)[0])
    merged = {"timings": [], "op": []}
    for name in BENCH_FILES:
        path = out / name
        if path.is_file():
            result = json.loads(path.read_text())
            print(f"\n## {name}\n\n{format_table(result)}")
            merged["timings"] += result["timings"]
            merged["op"] += result["op"]
    targets = check_targets(merged)
    if targets:
        print("\n## Targets (H200)\n\n" + format_targets(targets))
        (out / "targets.json").write_text(json.dumps(targets, indent=2))
    else:
        print("\nno GPU figures measured: targets not checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
