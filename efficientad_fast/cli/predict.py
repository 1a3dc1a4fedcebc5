"""The ``predict`` command: score image files and folders (locally or with Ray Data)."""

from __future__ import annotations

import argparse
import sys

from ._common import (
    _add_image_size_arg,
    _add_precision_arg,
    _add_tile_args,
    _load_model,
    _progress_enabled,
    _unit_interval,
    at_least,
    finite_number,
)


def cmd_predict(args: argparse.Namespace) -> int:
    """Score image files or folders with a saved model: writes scores.csv (path, score, label =
    score above the calibrated image threshold, anomalous = the same) and, per image, a
    heatmap overlay PNG (colour map over the image, contour at the pixel threshold) and with
    --masks a mask PNG. Files that cannot be read are listed with the reason in errors.csv;
    exit 1 when no image could be scored. With --engine ray, a pool of Ray actors (Ray Data)
    decodes and scores, and scores.parquet is written too."""
    from ..jobs import predict_files
    from ..jobs.predict import PICTURE_NOT_WRITTEN

    if args.engine == "ray":
        from ..jobs.ray_predict import predict_files as predict_on_ray

        csv_path, rows, errors = predict_on_ray(
            args.model,
            args.images,
            args.out,
            image_size=args.image_size,
            batch_size=args.batch_size,
            threshold=args.threshold,
            heatmaps=not args.no_heatmaps,
            sensitivity=args.sensitivity,
            masks=args.masks,
            tile=args.tile,
            overlap=args.overlap,
            workers=args.ray_actors,
            device=args.device,
            precision=args.precision,
            ray_address=args.ray_address,
            progress=_progress_enabled(args),
            log=(lambda *a, **k: None) if args.quiet else print,
        )
    else:
        from ..jobs import PredictInterrupted

        model = _load_model(args, args.batch_size)
        try:
            csv_path, rows, errors = predict_files(
                model,
                args.images,
                args.out,
                image_size=args.image_size,
                batch_size=args.batch_size,
                threshold=args.threshold,
                heatmaps=not args.no_heatmaps,
                progress=_progress_enabled(args),
                parquet=args.parquet,
                sensitivity=args.sensitivity,
                masks=args.masks,
                tile=args.tile,
                overlap=args.overlap,
            )
        except PredictInterrupted as stop:
            print(f"efficientad-fast predict: {stop}", file=sys.stderr)
            return 130
    print(f"scores: {csv_path}")
    unwritten = sum(1 for e in errors if e["error"].startswith(PICTURE_NOT_WRITTEN))
    unread = len(errors) - unwritten
    if unread:
        print(
            f"{unread} of {unread + len(rows)} images could not be read: {csv_path.with_name('errors.csv')}",
            file=sys.stderr,
        )
    if unwritten:
        print(
            f"{unwritten} scored images' pictures could not be written: {csv_path.with_name('errors.csv')}",
            file=sys.stderr,
        )
    return 0 if rows else 1


def _add_predict_parser(subparsers) -> None:
    """Register the ``predict`` command."""
    pr = subparsers.add_parser("predict", help="score images with heatmaps", description=cmd_predict.__doc__)
    pr.add_argument("--model", required=True, help="model file written by train")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    _add_image_size_arg(pr)
    _add_tile_args(pr)
    pr.add_argument("--batch-size", type=at_least(1), default=8)
    pr.add_argument(
        "--threshold",
        type=finite_number,
        default=None,
        help="image score threshold for label, used as given (default: the model's calibrated "
        "one shifted by --sensitivity; models saved before thresholds existed: 0.1)",
    )
    pr.add_argument(
        "--sensitivity",
        type=_unit_interval,
        default=0.5,
        help="in [0, 1]: multiplies both calibrated thresholds by 2**(1 - 2*S): 0.5 (default) the "
        "calibrated ones, 1 half of them (more flagged), 0 twice them (fewer flagged)",
    )
    pr.add_argument(
        "--masks",
        action="store_true",
        help="also write OUT/masks/<name>.png: 255 where the map is above the pixel threshold",
    )
    pr.add_argument("--no-heatmaps", action="store_true", help="write only scores.csv")
    pr.add_argument(
        "--parquet",
        action="store_true",
        help="also write scores.parquet (float64 scores; needs pyarrow; always with --engine ray)",
    )
    pr.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda or auto (default; with --engine ray: a GPU per worker when the cluster has GPUs)",
    )
    _add_precision_arg(pr)
    pr.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default): this process; ray: Ray Data feeds the image paths to a pool of Ray "
        "actors, each holding one loaded model (pip install -e '.[ray]')",
    )
    pr.add_argument(
        "--ray-actors",
        "--workers",  # its old name, which train and report use for image-loading processes
        dest="ray_actors",
        type=at_least(1),
        default=None,
        metavar="N",
        help="--engine ray: actors, each with one model (default: one per GPU of the cluster, else "
        "one per CPU but one); --workers is its old name",
    )
    pr.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="--engine ray: the Ray cluster to join (default: start a local Ray instance); its nodes "
        "must see the images and --out at the same paths",
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=cmd_predict)
