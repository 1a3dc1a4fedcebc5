"""The ``eval`` command: metrics and heatmaps of a saved model on a test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    _add_data_args,
    _add_precision_arg,
    _add_tile_args,
    _folder_layout,
    _load_model,
    _progress_enabled,
    at_least,
)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved model on a dataset's test split: prints the metrics table and writes
    metrics.json and metrics.md (and heatmaps with --heatmaps)."""
    from .._checkpoint import writable_folder
    from ..jobs import evaluate_model
    from ..report import metrics_table, write_metrics

    layout = _folder_layout(args)  # a usage error, before the model loads (auto precision: seconds of timing)
    model = _load_model(args, args.batch_size)
    out = writable_folder(args.out or Path(args.model).parent / "eval")
    evaluation = evaluate_model(
        model,
        args.data,
        args.dataset,
        args.category,
        image_size=args.image_size,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=_progress_enabled(args),
        heatmap_dir=out / "heatmaps" if args.heatmaps else None,
        layout=layout,
        tile=args.tile,
        overlap=args.overlap,
    )
    name = args.category or Path(args.data).name
    json_path, md_path = write_metrics(evaluation, out, name)
    print(metrics_table({name: evaluation["metrics"]}))
    print(f"\nwritten: {json_path}, {md_path}")
    return 0


def _add_eval_parser(subparsers) -> None:
    """Register the ``eval`` command."""
    ev = subparsers.add_parser("eval", help="metrics of a saved model on a test split", description=cmd_eval.__doc__)
    ev.add_argument("--model", required=True, help="model file written by train")
    _add_data_args(ev)
    ev.add_argument("--out", default=None, help="output folder (default: MODEL's folder/eval)")
    ev.add_argument("--batch-size", type=at_least(1), default=8)
    ev.add_argument("--heatmaps", action="store_true", help="also write heatmaps of a few images per defect")
    _add_tile_args(ev)
    _add_precision_arg(ev)
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)
