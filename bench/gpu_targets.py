#!/usr/bin/env python
"""The H200 targets of ``bench/gpu_check.sh``, checked against ``efficientad-fast bench`` results.

    python bench/gpu_targets.py OUT_DIR [--commit SHA]  # tables of OUT_DIR/bench_*.json, the targets,
                                                        # targets.json, the op bandwidth row
    python bench/gpu_targets.py --junit XML # "tests skipped unexpected_skips failures errors" of a pytest run

gpu_check.sh runs this last and appends what it prints to ``summary.md``. Every target is
listed, as met, missed or not measured (a step that was skipped or cut short), never dropped;
without any GPU figures (a CPU machine) it also says that the targets were not checked.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from efficientad_fast.benchmark import format_table

# (what, model size, batch, dtype, figure, comparison, bound): the fast path is CUDA graph +
# fp16 + channels_last, GPU-resident.
GPU_TARGETS = (
    ("EfficientAD-S latency, batch 1, fp16, GPU-resident", "small", 1, "fp16", "mean_ms", "<=", 0.6),
    ("EfficientAD-S throughput, batch 64, fp16", "small", 64, "fp16", "images_per_s", ">=", 4000.0),
    ("EfficientAD-M latency, batch 1, fp16, GPU-resident", "medium", 1, "fp16", "mean_ms", "<=", 1.2),
)
# The op's bandwidth target reads the case the model runs: fp16 channels_last features, N=64
# (616 MB moved, far beyond the 50 MB L2, so the bytes come from DRAM).
OP_BANDWIDTH_TARGET = (
    "fused op N=64 fp16 channels_last, fraction of peak bandwidth",
    64,
    "fp16",
    "channels_last",
    0.70,
)
# What gpu_check.sh's benchmark steps write into its OUT folder.
BENCH_FILES = ("bench_latency.json", "bench_op.json", "bench_throughput.json")


# Skip reasons that are no failure on a GPU machine: tests that `-k cuda` selects but that
# check the CPU-only behaviour, so skip where a GPU is visible (tests/test_inference.py).
EXPECTED_GPU_SKIPS = ("checks the CPU-only error",)


def junit_counts(path: str | Path) -> tuple[int, int, int, int, int]:
    """(tests, skipped, unexpected skips, failures, errors) of a pytest ``--junitxml`` file;
    all 0 when it is missing or unreadable. Unexpected: a skip whose reason is not one of
    EXPECTED_GPU_SKIPS (with a GPU visible, a CUDA test that skips is a failure)."""
    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError):
        return 0, 0, 0, 0, 0
    skips = [c.find("skipped") for c in cases if c.find("skipped") is not None]
    unexpected = [s for s in skips if not any(r in (s.get("message") or "") for r in EXPECTED_GPU_SKIPS)]
    failures = sum(c.find("failure") is not None for c in cases)
    errors = sum(c.find("error") is not None for c in cases)
    return len(cases), len(skips), len(unexpected), failures, errors


def check_targets(result: dict) -> list[dict]:
    """The GPU targets against a ``run_benchmark`` result: for each, the best measured
    configuration (device path; CUDA graph on or off) and whether it meets the bound. Targets
    whose configuration was not measured are left out."""
    rows = []
    for what, size, batch, dtype, key, op, bound in GPU_TARGETS:
        candidates = [
            t
            for t in result["timings"]
            if not t["error"]
            and t["model_size"] == size
            and t["batch"] == batch
            and t["dtype"] == dtype
            and t["path"] == "device"
        ]
        if not candidates:
            continue
        best = (min if op == "<=" else max)(candidates, key=lambda t: t[key])
        value = best[key]
        rows.append(
            {
                "target": what,
                "bound": f"{op} {bound:g}",
                "measured": value,
                "config": best["name"],
                "met": value <= bound if op == "<=" else value >= bound,
            }
        )
    what, batch, dtype, layout, bound = OP_BANDWIDTH_TARGET
    for r in result.get("op", []):
        if (
            r["impl"] == "fused"
            and r["batch"] == batch
            and r["dtype"] == dtype
            and r.get("layout") == layout
            and r["fraction_of_peak"]
        ):
            rows.append(
                {
                    "target": what,
                    "bound": f">= {bound:g}",
                    "measured": r["fraction_of_peak"],
                    "config": f"{r['gbs']:.0f} GB/s",
                    "met": r["fraction_of_peak"] >= bound,
                }
            )
    return rows


def target_status(result: dict) -> list[dict]:
    """Every target, in GPU_TARGETS order then the op's: :func:`check_targets`' row with
    ``status`` "met" or "missed", or a "not measured" row (``measured``/``met`` None)."""
    measured = {r["target"]: r for r in check_targets(result)}
    rows = []
    for what, *_, op, bound in GPU_TARGETS + ((OP_BANDWIDTH_TARGET[0], ">=", OP_BANDWIDTH_TARGET[-1]),):
        row = measured.get(what) or {
            "target": what,
            "bound": f"{op} {bound:g}",
            "measured": None,
            "config": "",
            "met": None,
        }
        rows.append(row | {"status": "not measured" if row["met"] is None else ("met" if row["met"] else "missed")})
    return rows


def format_targets(rows: list[dict]) -> str:
    """A Markdown table of :func:`check_targets` rows."""
    lines = ["| target | bound | measured | best configuration | met? |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['target']} | {r['bound']} | "
        f"{'-' if r['measured'] is None else format(r['measured'], '.3f')} | {r['config']} | "
        f"{'not measured' if r['met'] is None else ('yes' if r['met'] else 'NO')} |"
        for r in rows
    ]
    return "\n".join(lines)


def op_bandwidth_line(result: dict, commit: str = "unknown") -> str:
    """The op's bandwidth row the target reads (N=64 fp16 channels_last, fused), labelled with
    the commit the kernels were built from, so runs before and after a kernel change compare
    line by line; "not measured" when no such row was written (no GPU, or the step was cut)."""
    what, batch, dtype, layout, _ = OP_BANDWIDTH_TARGET
    label = f"op bandwidth, fused N={batch} {dtype} {layout}, kernels of commit {commit}"
    for r in result.get("op", []):
        if r["impl"] == "fused" and r["batch"] == batch and r["dtype"] == dtype and r.get("layout") == layout:
            fraction = "n/a (within L2)" if not r["fraction_of_peak"] else f"{r['fraction_of_peak']:.2f}"
            return f"{label}: {r['gbs']:.0f} GB/s, {r['bytes_moved'] / 1e6:.0f} MB moved, fraction of peak {fraction}"
    return f"{label}: not measured"


def main(argv=None) -> int:
    """Print the tables of the benchmark JSON files in OUT_DIR (whatever rows a step wrote
    before it ended) and every target's status (also written to OUT_DIR/targets.json)."""
    args = sys.argv[1:] if argv is None else argv
    if args[0] == "--junit":
        print(*junit_counts(args[1]))
        return 0
    out = Path(args[0])
    commit = args[args.index("--commit") + 1] if "--commit" in args else "unknown"
    merged = {"timings": [], "op": []}
    for name in BENCH_FILES:
        path = out / name
        if not path.is_file():
            print(f"\n{name}: not written (step skipped or failed before its first row)")
            continue
        try:
            result = json.loads(path.read_text())
        except ValueError as exc:  # should not happen (written whole), but never hide the targets
            print(f"\n{name}: unreadable ({exc})")
            continue
        print(f"\n## {name}\n\n{format_table(result)}")
        merged["timings"] += result["timings"]
        merged["op"] += result["op"]
    print(f"\n## Op bandwidth\n\n- {op_bandwidth_line(merged, commit)}")
    targets = target_status(merged)
    print("\n## Targets (H200)\n\n" + format_targets(targets))
    for r in targets:
        print(f"- target {r['status']}: {r['target']} ({r['bound']})")
    if all(r["met"] is None for r in targets):
        print("\nno GPU figures measured: targets not checked")
    (out / "targets.json").write_text(json.dumps(targets, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
