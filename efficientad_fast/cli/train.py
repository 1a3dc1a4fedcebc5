"""The ``train`` command: one category, or several (locally or as Ray tasks)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import (
    _add_data_args,
    _add_engine_args,
    _add_training_args,
    _BadArguments,
    _folder_layout,
    _given_options,
    _runner,
    _train_config,
    at_least,
)


def cmd_train(args: argparse.Namespace) -> int:
    """Train EfficientAD on one category, calibrate the map quantiles on held-out training
    images and write model.pt, train_log.jsonl, loss_curve.png and train_summary.json. With
    several --category, each goes to OUT/<category> (one after another, or as Ray tasks with
    --engine ray); one that fails is reported and the others go on (exit 1). With --video,
    on the frames of a video of the line running normally."""
    from ..jobs import train_category, train_from_video
    from ..train import TrainingInterrupted

    config = _train_config(args, checkpoint_every=args.checkpoint_every)
    kwargs = dict(
        model_size=args.model_size,
        config=config,
        teacher=args.teacher,
        penalty_images=args.penalty_images,
        image_size=args.image_size,
        padding=args.padding,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        threshold_from=args.threshold_from,
        tile=args.tile,
    )
    categories = args.category or [None]
    try:
        if args.video is not None:
            every = args.every or 1
            _, summary = train_from_video(args.video, args.out, every=every, max_frames=args.max_frames, **kwargs)
            done = f"trained on {summary['train_images']} frames of {args.video}"
        elif len(categories) > 1 or args.engine == "ray":
            return _train_several(args, categories, {**kwargs, "layout": _folder_layout(args)})
        else:
            layout = _folder_layout(args)
            _, summary = train_category(args.data, args.dataset, categories[0], args.out, layout=layout, **kwargs)
            done = f"{summary['seconds_per_step']:.3f} s/step, {summary['total_seconds'] / 60:.1f} min"
    except TrainingInterrupted as stop:
        print(f"\n{stop}\nresume with the same command plus --resume", file=sys.stderr)
        return 130
    print(f"model: {Path(args.out) / 'model.pt'}  ({done})")
    return 0


def _check_train_source(args: argparse.Namespace) -> None:
    """--data and --dataset, or --video alone (its frames are the dataset)."""
    if args.video is None:
        missing = [name for name, value in (("--data", args.data), ("--dataset", args.dataset)) if value is None]
        if missing:
            raise _BadArguments(f"the following arguments are required: {', '.join(missing)} (or --video FILE)")
        given = _given_options(args, "every", "max_frames")
        if given:
            raise _BadArguments(f"{', '.join(given)}: for the frames of --video FILE only")
        return
    given = _given_options(args, "data", "dataset", "category", "normal_dir")
    if given or args.engine == "ray":
        raise _BadArguments(
            f"--video trains one model on the video's frames: leave out {', '.join(given) or '--engine ray'}"
        )


def _train_several(args: argparse.Namespace, categories: list, train_args: dict) -> int:
    """train with several categories (or --engine ray): each to OUT/<category> (one: OUT)."""
    from ..jobs import train_categories

    if len(set(categories)) != len(categories):
        raise _BadArguments(f"--category: each category once, got {categories}")
    results = train_categories(args.data, args.dataset, categories, args.out, runner=_runner(args), **train_args)
    failed = [r["category"] for r in results if r["error"]]
    print(
        f"trained {len(results) - len(failed)} of {len(results)} categories under {args.out}"
        + (f"; failed: {', '.join(map(str, failed))} (see their error.txt)" if failed else "")
    )
    return 1 if failed else 0


def _add_train_parser(subparsers) -> None:
    """Register the ``train`` command."""
    train = subparsers.add_parser(
        "train", help="train on one category (or several, e.g. on Ray)", description=cmd_train.__doc__
    )
    _add_data_args(train, several=True, data_required=False)
    train.add_argument("--out", required=True, help="output folder")
    video = train.add_argument_group("training on a video of the line running normally (in place of --data)")
    video.add_argument(
        "--video",
        default=None,
        metavar="FILE",
        help="a video of normal operation (parts entering, resting, leaving): its frames, written to "
        "OUT/video_frames, are the training set; whole blocks of consecutive frames are held out to calibrate",
    )
    video.add_argument("--every", type=at_least(1), default=None, metavar="N", help="keep one frame in N (default 1)")
    video.add_argument(
        "--max-frames", type=at_least(2), default=None, metavar="K", help="keep the first K frames only (default: all)"
    )
    _add_training_args(train, steps_help="training steps (paper: 70000)")
    train.add_argument("--padding", action="store_true", help="padded convolutions (64x64 maps at 256 px)")
    train.add_argument(
        "--checkpoint-every", type=at_least(0), default=1000, help="steps between checkpoints (0: end only)"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (several categories: a finished category is "
        "skipped, one with a checkpoint continues, one with none starts)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUT that holds another run's checkpoint.pt or model.pt",
    )
    train.add_argument(
        "--threshold-from",
        default=None,
        metavar="DIR_OR_CLIP",
        help="labelled validation images, DIR/good/ and DIR/<defect>/ (as a test/ folder), or a "
        "video clip with its labels beside it (CLIP.labels.csv: frame,defective,...): the image "
        "threshold becomes the F1-optimal one on them (default: the 0.995 quantile of "
        "the held-out normal images' scores, which needs no defective image)",
    )
    train.add_argument(
        "--tile",
        type=at_least(0),
        default=None,
        metavar="PX",
        help="train and calibrate on PX x PX tiles of the --image-size images instead of whole "
        "images (large images with small defects); the model records it, and predict and "
        "eval then score in tiles by default",
    )
    _add_engine_args(train, "category")
    train.set_defaults(func=cmd_train, check=_check_train_source)
