"""The ``report`` command: train and evaluate every category (and sweeps) into one report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..baselines.anomalib_models import BASELINES
from ._common import (
    DATASET_CHOICES,
    _add_engine_args,
    _add_training_args,
    _require_cached,
    _runner,
    _train_config,
    at_least,
    positive_number,
)


def cmd_report(args: argparse.Namespace) -> int:
    """Train and evaluate every category of a dataset and write the benchmark report's tables:
    per category Image AUROC, Image F1, Pixel AUROC, Pixel F1, AU-PRO (AU-sPRO for LOCO),
    training time, inference time and latency, the dataset average, and with --sweep the
    hyperparameter table. Writes report.md, report.csv, report.json and report.png to --out;
    a category that fails is reported and the rest go on. With --engine ray each run is a Ray
    task; with --resume finished runs are kept and interrupted ones continue. With --compare
    patchcore fastflow [padim] anomalib's models (extra [anomalib]) run on the same data,
    metrics and clock, one row per category and model, and compare.png."""
    from ..jobs import parse_sweep, run_report
    from ..report import report_tables

    if args.compare_budget is not None and "fastflow" not in (args.compare or ()):
        raise ValueError("--compare-budget is FastFlow's training time: give it with --compare fastflow")
    sweep = parse_sweep(args.sweep)
    _require_cached(sweep.get("teacher", ()), (args.model_size,))  # --teacher: checked by main
    config = _train_config(args, checkpoint_every=args.checkpoint_every)
    settings = dict(
        categories=args.categories,
        model_size=args.model_size,
        config=config,
        sweep=sweep,
        teacher=args.teacher,
        image_size=args.image_size,
        device=args.device,
        latency_batches=args.latency_batches,
        latency_runs=args.latency_runs,
        penalty_images=args.penalty_images,
        resume=args.resume,
        compare=args.compare or (),
        compare_budget_s=args.compare_budget,
    )
    result = run_report(args.data, args.dataset, args.out, **settings, runner=_runner(args))
    print("\n" + report_tables(result))
    print(f"\nwritten: {Path(args.out) / 'report.md'} (+ .csv, .json, .png)")
    return 1 if all(r["error"] for r in result["rows"]) else 0


def _add_report_parser(subparsers) -> None:
    """Register the ``report`` command."""
    rep = subparsers.add_parser(
        "report",
        help="train and evaluate every category; the benchmark report's tables",
        description=cmd_report.__doc__,
    )
    rep.add_argument("--data", required=True, help="dataset root (the folder holding the categories)")
    rep.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="dataset layout")
    rep.add_argument("--categories", nargs="+", default=None, help="categories (default: all found)")
    rep.add_argument("--out", required=True, help="output folder")
    _add_training_args(rep, steps_help="training steps per category (paper: 70000)")
    rep.add_argument(
        "--sweep",
        nargs="+",
        default=None,
        metavar="KEY=V1,V2",
        help="hyperparameter grid, e.g. --sweep lr=1e-6,1e-4 weight_decay=1e-6,1e-4 "
        "(keys: lr, weight_decay, steps, batch_size, teacher; "
        "teacher=random,distilled,paper,FILE compares teachers)",
    )
    rep.add_argument("--image-size", type=int, default=256, help="square input size in pixels (>= 256)")
    rep.add_argument(
        "--latency-batches",
        type=at_least(1),
        nargs="*",
        default=[1, 4, 16],
        help="batch sizes of the latency chart (default 1 4 16; none to skip)",
    )
    rep.add_argument(
        "--latency-runs",
        type=at_least(1),
        default=None,
        help="timed runs per latency figure (default: 1000 on a GPU, a few on a CPU)",
    )
    rep.add_argument("--workers", type=at_least(0), default=2, help="image-loading processes")
    rep.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    rep.add_argument(
        "--checkpoint-every",
        type=at_least(0),
        default=0,
        help="steps between a run's checkpoints, which --resume continues from (default 0: at the end only)",
    )
    rep.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs OUT holds finished (their row.json), continue interrupted ones from "
        "their checkpoint.pt, run the rest: rerun the same command after a crash or a lost node",
    )
    rep.add_argument(
        "--compare",
        nargs="+",
        choices=BASELINES,
        default=None,
        metavar="MODEL",
        help="also run these anomalib models on each category: patchcore, fastflow, padim (extra [anomalib]; "
        "backbones from fetch-backbone, or offline EfficientNet-Lite0 for patchcore and padim; a model "
        "without weights gets a row saying what to fetch)",
    )
    rep.add_argument(
        "--compare-budget",
        type=positive_number,
        default=None,
        metavar="SECONDS",
        help="FastFlow's training time per category (default: EfficientAD's training time on that category)",
    )
    _add_engine_args(rep, "run (category, sweep setting, compared model)")
    rep.set_defaults(func=cmd_report)
