"""The ``demo`` command: the whole job on the built-in synthetic data."""

from __future__ import annotations

import argparse

from ._common import TEACHER_HELP, _add_penalty_arg, _progress_enabled, at_least


def cmd_demo(args: argparse.Namespace) -> int:
    """Make the built-in synthetic dataset, train EfficientAD-S on it, calibrate, evaluate,
    write heatmaps and a report, and print the metrics table. Needs no arguments."""
    from ..jobs import run_demo

    run_demo(
        args.out,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        amp=None if args.amp == "none" else args.amp,
        teacher=args.teacher,
        penalty_images=args.penalty_images,
        progress=_progress_enabled(args),
        video=args.video,
    )
    return 0


def _add_demo_parser(subparsers) -> None:
    """Register the ``demo`` command."""
    from ..jobs import DEMO_AMP, DEMO_PENALTY, DEMO_STEPS

    demo = subparsers.add_parser(
        "demo", help="train and evaluate on the built-in dataset", description=cmd_demo.__doc__
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    per_category = ", ".join(f"{c} {n}" for c, n in DEMO_STEPS.items())
    demo.add_argument(
        "--steps", type=at_least(1), default=None, help=f"training steps for every category (default: {per_category})"
    )
    demo.add_argument("--seed", type=at_least(0), default=0, help="random seed (default 0)")
    demo.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    demo.add_argument(
        "--amp",
        choices=("auto", "fp16", "bf16", "none"),
        default=DEMO_AMP,
        help=f"mixed precision (autocast; default {DEMO_AMP}: bf16 where a short probe shows it "
        "faster on this machine; 'none' for float32)",
    )
    demo.add_argument("--teacher", default="auto", help=TEACHER_HELP)
    _add_penalty_arg(demo, default=DEMO_PENALTY)
    demo.add_argument(
        "--video",
        action="store_true",
        help="also make a synthetic conveyor video and watch it with the board model (live-line "
        "scoring, smoothers compared; a few more minutes on a CPU)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
