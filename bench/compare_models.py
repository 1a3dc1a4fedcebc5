"""EfficientAD against PatchCore and FastFlow (``report --compare``), and EfficientAD with and
without the bundled penalty images, on the synthetic categories, over several seeds (issue 26,
part 4). Each (seed, penalty, group) is one ``efficientad-fast report`` run with ``--resume``,
so rerunning the same command after an interruption continues where it stopped; ``--summary``
then gathers every finished report into one Markdown table with means and spreads (accuracy only:
latency is timed apart, `--latency` on a quiet machine).

    python bench/compare_models.py --out /tmp/compare            # run (hours on a 2-core CPU)
    python bench/compare_models.py --out /tmp/compare --summary bench/results/compare_DATE.md
    python bench/compare_models.py --out /tmp/compare --latency 20   # batch-1 latencies (quiet machine)

Every run's rows are worth keeping beyond the machine that made them (/tmp does not survive a
machine): ``--summary`` also reads and ``--archive`` (default bench/results/compare_rows.jsonl)
then holds every row, one JSON line per (seed, penalty, category, model) with the CPU it ran on;
a run in ``--out`` replaces the archived row of the same key.

Groups, at the demo's training budgets: the textures (weave and the photo textures brick,
grass, gravel) at 250 steps, board at 500, and the LOCO-layout kit at 500 (its structural and
logical columns). Data seed = training seed. ``--penalty none`` runs the comparison models too;
``--penalty bundled`` runs EfficientAD only (for the penalty-image default).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from _rows import merged_rows, write_rows

GROUPS = {  # name: (dataset layout, categories, steps)
    "textures": ("mvtec", ("weave", "brick", "grass", "gravel"), 250),
    "board": ("mvtec", ("board",), 500),
    "kit": ("loco", ("kit",), 500),
}
COMPARED = ("patchcore", "fastflow")
CHECKPOINT_EVERY = 25  # EfficientAD training steps between checkpoints (about 2 min on a 2-core CPU)
COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "logical_image_auroc", "structural_image_auroc", "latency_ms")
# The table's columns: the runs' latencies are kept in the archive, beside the threads and load
# they ran with, but not averaged into the table: runs are made one thread each beside other
# jobs, on whatever CPU the session has. Latency is timed apart (--latency, a quiet machine).
TABLE_COLUMNS = COLUMNS[:-1]
ARCHIVE = Path(__file__).resolve().parent / "results" / "compare_rows.jsonl"


def make_data(out: Path, seed: int) -> dict[str, Path]:
    """The synthetic data of one seed: the mvtec-layout categories and the kit (LOCO layout)."""
    from efficientad_fast.data import make_synthetic

    roots = {}
    for layout, categories in (("mvtec", ("weave", "brick", "grass", "gravel", "board")), ("loco", ("kit",))):
        root = out / f"data_seed{seed}_{layout}"
        if not (root / categories[-1] / "test").is_dir():
            make_synthetic(root, seed=seed, categories=categories)
        roots[layout] = root
    return roots


def run(out: Path, seeds, penalties, groups) -> None:
    for seed in seeds:
        roots = make_data(out, seed)
        for penalty in penalties:
            for group in groups:
                layout, categories, steps = GROUPS[group]
                report = out / f"seed{seed}_{penalty}_{group}"
                command = [
                    sys.executable,
                    "-m",
                    "efficientad_fast",
                    "report",
                    "--data",
                    str(roots[layout]),
                    "--dataset",
                    layout,
                    "--categories",
                    *categories,
                    "--out",
                    str(report),
                    "--steps",
                    str(steps),
                    "--seed",
                    str(seed),
                    "--amp",
                    "auto",
                    "--penalty-images",
                    penalty,
                    "--latency-batches",
                    "--latency-runs",
                    "5",
                    "--workers",
                    "0",
                    "--quiet",
                    "--resume",
                    # a killed run (a machine handed back) loses at most these steps
                    "--checkpoint-every",
                    str(CHECKPOINT_EVERY),
                ]
                if penalty == "none":
                    command += ["--compare", *COMPARED]
                print(f"== seed {seed}, penalty {penalty}, {group}: {' '.join(command)}", flush=True)
                _note_machine(report)
                subprocess.run(command, check=False)


def _note_machine(report: Path) -> None:
    """The CPU a run is made on, beside its report (a resumed run keeps the first machine's)."""
    from efficientad_fast._checkpoint import atomic_write_text
    from efficientad_fast.benchmark import machine_info

    note = report / "machine.json"
    if not note.exists():
        report.mkdir(parents=True, exist_ok=True)
        atomic_write_text(note, json.dumps(machine_info(), indent=1) + "\n")


def finished_rows(out: Path) -> list[dict]:
    """The rows of every report in ``out``, each with its seed, penalty, CPU and source; of a
    report still running (no report.json yet), the rows of its finished runs (their row.json)."""
    from efficientad_fast.report import model_of

    rows = []
    for folder in sorted(p for p in out.glob("seed*_*_*") if p.is_dir()):
        seed, penalty = folder.name.split("_")[:2]
        note = folder / "machine.json"
        machine = json.loads(note.read_text()) if note.exists() else {}
        cpu = machine.get("cpu_model", "unknown")
        threads = machine.get("torch_num_threads")
        load = machine.get("loadavg", [None])[0]
        report = folder / "report.json"
        if report.is_file():
            found = [(row, f"{report} (report.json)") for row in json.loads(report.read_text())["rows"]]
        else:
            found = [(json.loads(p.read_text())["row"], f"{p} (row.json)") for p in sorted(folder.glob("**/row.json"))]
        for row, source in found:
            kept = {"seed": int(seed.removeprefix("seed")), "penalty": penalty, "category": row["category"]}
            kept |= {"model": model_of(row), "backbone": row.get("backbone"), "error": row["error"]}
            kept |= {c: row.get(c) for c in COLUMNS} | {"cpu": cpu, "threads": threads, "load_at_start": load}
            kept["source"] = source
            rows.append(kept)
    return rows


def _key(row: dict) -> tuple:
    return row["seed"], row["penalty"], row["category"], row["model"]


def _stats(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, float) and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.fmean(values):.3f} ({min(values):.3f}–{max(values):.3f}, n={len(values)})"


def summary(rows: list[dict]) -> str:
    """Markdown: per (category, model/penalty) the mean (min–max, n) over seeds of each of
    :data:`TABLE_COLUMNS`."""
    cells: dict[tuple[str, str], dict[str, list]] = {}
    errors: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        model = row["model"]
        key = (row["category"], model if model != "efficientad" else f"efficientad, penalty {row['penalty']}")
        if row["error"]:
            errors.setdefault(key, set()).add(row["error"])
            continue
        for column in TABLE_COLUMNS:
            value = row.get(column)
            cells.setdefault(key, {}).setdefault(column, []).append(math.nan if value is None else value)
    head = ["category", "model", *TABLE_COLUMNS]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for (category, model), values in sorted(cells.items()):
        stats = [_stats([float(v) for v in values.get(c, [])]) for c in TABLE_COLUMNS]
        lines.append(f"| {category} | {model} | {' | '.join(stats)} |")
    for (category, model), why in sorted(errors.items()):
        lines.append(
            f"| {category} | {model} | failed: {'; '.join(sorted(why))[:200]} |" + " |" * (len(TABLE_COLUMNS) - 1)
        )
    return "\n".join(lines)


def penalty_pairs(rows: list[dict]) -> str:
    """Markdown: EfficientAD with the bundled penalty images against none, paired over the
    (seed, category) runs that have both: per metric the means, and the mean (min to max)
    of the paired differences (the evidence for the penalty-image default)."""
    runs: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row["model"] == "efficientad" and not row["error"]:
            runs.setdefault((row["seed"], row["category"]), {})[row["penalty"]] = row
    pairs = [both for both in runs.values() if len(both) == 2]
    lines = [
        f"Penalty images, paired over the {len(pairs)} (seed, category) runs that have both:",
        "",
        "| metric | bundled | none | bundled − none: mean (min to max) | bundled ahead / behind / tied |",
        "|---|---|---|---|---|",
    ]
    for column in ("image_auroc", "pixel_auroc", "aupro"):
        both = [(p["bundled"][column], p["none"][column]) for p in pairs]
        both = [(b, n) for b, n in both if b is not None and n is not None]
        if not both:
            continue
        diffs = [b - n for b, n in both]
        ahead, behind = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        lines.append(
            f"| {column} | {statistics.fmean(b for b, _ in both):.4f} | {statistics.fmean(n for _, n in both):.4f} "
            f"| {statistics.fmean(diffs):+.4f} ({min(diffs):+.3f} to {max(diffs):+.3f}) "
            f"| {ahead} / {behind} / {len(diffs) - ahead - behind} |"
        )
    return "\n".join(lines)


def latency(out: Path, runs: int) -> str:
    """Markdown: batch-1 latency (mean ms, host to host, the same loop for all: benchmark's
    time_predict and time_scorer) of EfficientAD-S in fp32 and bf16 and of PatchCore and PaDiM
    on the offline Lite0, fitted on the seed-0 board's training images. Run it on a quiet machine."""
    import torch

    from efficientad_fast.baselines.anomalib_models import Baseline, resolve_backbone
    from efficientad_fast.benchmark import machine_info, time_predict, time_scorer
    from efficientad_fast.data import open_dataset
    from efficientad_fast.testing import random_model

    root = make_data(out, 0)["mvtec"]
    train = open_dataset(root, "mvtec", "board", "train", 256)
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    cpu = torch.device("cpu")
    rows = []
    model = random_model("small", seed=0, teacher_stats=False, quantiles=(0.1, 1.0, 0.1, 1.0)).eval()
    for precision in ("fp32", "bf16"):
        timing = time_predict(model.set_precision(precision), 1, warmup=3, runs=runs)
        rows.append((f"EfficientAD-S {precision}", timing.mean_ms, timing.median_ms))
    for name in ("patchcore", "padim"):
        baseline = Baseline(name, resolve_backbone(name), (256, 256))
        baseline.fit(images, progress=False)
        timing = time_scorer(baseline, name, cpu, 1, warmup=3, runs=runs)
        rows.append(
            (f"{name} fp32 ({baseline.backbone.label}, {len(train)} training images)", timing.mean_ms, timing.median_ms)
        )
    info = machine_info(cpu)
    lines = [
        f"{info['cpu_model']}, {info['logical_cpus']} logical CPUs, torch {info['torch']}, "
        f"{info['torch_num_threads']} threads, load average {info['loadavg']}; {runs} timed runs after 3 warm-up",
        "",
        "| model | mean ms | median ms |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {mean:.1f} | {median:.1f} |" for name, mean, median in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder of the data and the reports")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--penalty", nargs="+", default=["none", "bundled"], choices=["none", "bundled"])
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--summary", type=Path, default=None, help="write the table of what finished here, run nothing")
    parser.add_argument(
        "--archive",
        type=Path,
        default=ARCHIVE,
        help=f"with --summary: rows of earlier machines to include, rewritten with this run's (default {ARCHIVE})",
    )
    parser.add_argument("--latency", type=int, default=0, metavar="RUNS", help="time the models at batch 1 only")
    args = parser.parse_args(argv)
    if args.latency:
        print(latency(args.out, args.latency))
        return 0
    if args.summary:
        from efficientad_fast._checkpoint import atomic_write_text

        rows = merged_rows(args.archive, finished_rows(args.out), _key)
        write_rows(args.archive, rows)
        atomic_write_text(args.summary, summary(rows) + "\n\n" + penalty_pairs(rows) + "\n")
        print(args.summary.read_text())
        return 0
    run(args.out, args.seeds, args.penalty, args.groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
