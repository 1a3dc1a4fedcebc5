"""What the commands share: argument adders and validators, loading the --model, the one-line error."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

DATASET_CHOICES = ("mvtec", "visa", "loco", "mpdd", "folder")


def _add_image_size_arg(p: argparse.ArgumentParser) -> None:
    """--image-size H W, or one number for a square size (_check_arguments makes it an int or
    an (H, W) tuple), where the command's API takes (H, W)."""
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=256,
        metavar="PX",
        help="input size in pixels: H W, or one number for a square (default 256; each >= 256)",
    )


def _add_tile_args(p: argparse.ArgumentParser) -> None:
    """--tile and --overlap, as predict and eval take them."""
    p.add_argument(
        "--tile",
        type=at_least(0),
        default=None,
        metavar="PX",
        help="score each --image-size image in PX x PX tiles, the tile maps stitched with blended "
        "overlaps and the score the stitched map's max (for small defects on large images); "
        "default: the model's own tile size (train --tile), else whole images; 0: whole images",
    )
    p.add_argument(
        "--overlap",
        type=at_least(0),
        default=32,
        metavar="PX",
        help="pixels neighbouring tiles share (default 32; blended with linear ramps)",
    )


def _add_data_args(
    p: argparse.ArgumentParser, category_required: bool = False, several: bool = False, data_required: bool = True
) -> None:
    """--data, --dataset, --category and the folder-layout options. ``data_required`` False:
    the command checks itself that --data and --dataset come (train: unless --video)."""
    p.add_argument("--data", required=data_required, help="dataset root (the folder holding the categories)")
    p.add_argument("--dataset", required=data_required, choices=DATASET_CHOICES, help="dataset layout")
    if several:  # train: --category a b, or --category a --category b
        p.add_argument(
            "--category",
            required=category_required,
            default=None,
            nargs="+",
            action="extend",
            help="category, e.g. bottle (a folder dataset may have none); several (given together or "
            "repeated) train one after another, or at once with --engine ray, each to OUT/<category>",
        )
    else:
        p.add_argument(
            "--category",
            required=category_required,
            default=None,
            help="category, e.g. bottle (a folder dataset may have none)",
        )
    _add_image_size_arg(p)
    p.add_argument("--workers", type=at_least(0), default=2, help="image-loading processes")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    folder = p.add_argument_group(
        "--dataset folder with arbitrary folders (as anomalib's Folder; paths relative "
        "to --data[/category] or absolute; images found recursively)"
    )
    folder.add_argument(
        "--normal-dir",
        default=None,
        metavar="DIR",
        help="normal images; without --normal-test-dir a seeded --normal-split-ratio of them "
        "is the test split's normal part (instead of train/good and test/)",
    )
    folder.add_argument(
        "--abnormal-dir",
        default=None,
        metavar="DIR",
        help="anomalous test images (subfolder names become defect names)",
    )
    folder.add_argument(
        "--mask-dir",
        default=None,
        metavar="DIR",
        help="masks of the anomalous images, same subfolders, <stem>_mask.png or <stem>.png",
    )
    folder.add_argument("--normal-test-dir", default=None, metavar="DIR", help="normal test images kept apart")
    folder.add_argument(
        "--normal-split-ratio",
        type=_open_unit_interval,
        default=0.2,
        metavar="R",
        help="share of --normal-dir held out for testing without --normal-test-dir (default 0.2)",
    )


def _open_unit_interval(text: str) -> float:
    """argparse type: a number in (0, 1)."""
    value = finite_number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = finite_number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _given_options(args: argparse.Namespace, *dests: str) -> list[str]:
    """The flags (``--max-frames``) of the options ``dests`` (``max_frames``) that were given:
    not None."""
    return [f"--{dest.replace('_', '-')}" for dest in dests if getattr(args, dest, None) is not None]


def _folder_layout(args: argparse.Namespace):
    """The FolderLayout of --normal-dir and friends, None without --normal-dir."""
    given = _given_options(args, "abnormal_dir", "mask_dir", "normal_test_dir")
    if args.normal_dir is None:
        if given:
            raise _BadArguments(f"{', '.join(given)} need --normal-dir")
        return None
    if args.dataset != "folder":
        raise _BadArguments(f"--normal-dir is for --dataset folder, not {args.dataset}")
    from ..data import FolderLayout

    return FolderLayout(
        normal_dir=args.normal_dir,
        abnormal_dir=args.abnormal_dir,
        mask_dir=args.mask_dir,
        normal_test_dir=args.normal_test_dir,
        normal_split_ratio=args.normal_split_ratio,
    )


def _progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")
PRECISION_HELP = (
    "what the networks compute in: auto (default): the fastest on this machine among fp32, bf16 and "
    "int8 (fp16 on a GPU) whose map stays within 0.1 of the fp32 map's range, timed once for the "
    "batch size and cached; fp32; bf16; fp16 (GPU); int8 (CPU; the model needs the INT8 "
    "calibration that train records, or run efficientad-fast quantize)"
)


def _add_precision_arg(p: argparse.ArgumentParser, *aliases: str) -> None:
    """--precision (and ``aliases``, older names of it) for the commands that score."""
    p.add_argument(
        "--precision", *aliases, dest="precision", choices=PRECISION_CHOICES, default="auto", help=PRECISION_HELP
    )


def _load_model(args: argparse.Namespace, batch_size: int):
    """The --model file on --device in --precision (auto: timed for ``batch_size`` images of
    --image-size)."""
    from .. import load
    from .._device import resolve_device
    from ..op import load_extension

    load_extension()  # a build that cannot happen (an unwritable cache) fails before any output exists

    size = getattr(args, "image_size", 256)
    model = load(
        args.model,
        map_location=resolve_device(args.device),
        precision=args.precision,
        batch_size=batch_size,
        image_size=size,
    )
    if model.precision == "int8":
        # INT8 is quantized and compiled on the first predict: a stored calibration that does
        # not fit the graph fails here, naming the file, before any output folder exists.
        import torch

        height, width = (size, size) if isinstance(size, int) else size
        try:
            model.predict(torch.zeros(1, 3, height, width), tile=getattr(args, "tile", None))
        except ValueError as exc:
            if str(args.model) in str(exc):  # the calibration's own message names it
                raise
            raise ValueError(f"{args.model}: {exc}") from exc
    return model


TEACHER_HELP = (
    "'auto' (default): the paper's teacher when it is in the cache (never downloaded), else the "
    "shipped distilled one (small), else random; the choice is printed and recorded; 'random': a "
    "randomly initialised PDN; 'distilled': the shipped PDN-S teacher "
    "distilled from ImageNet EfficientNet-Lite0; 'paper': the authors' teacher (fetch it once with "
    "fetch-teacher; never downloaded otherwise); or a teacher weights file (released or from "
    "distill-teacher)"
)


def _require_cached(teachers=(), model_sizes=("small",), penalty_images=None) -> None:
    """Fail at once, before any data is read or folder made, when --teacher paper or
    --penalty-images imagenette asks for a file that is not in the cache (NotCachedError says
    how to fetch it) or a --penalty-images keyword is mixed with folders (ValueError)."""
    if "paper" in teachers:
        from ..teachers import paper_teacher_path

        for size in model_sizes:
            paper_teacher_path(size)
    if penalty_images:
        from ..data import check_penalty_images

        check_penalty_images(penalty_images)


class _BadArguments(Exception):
    """Arguments found wrong before any work: ``main`` prints one error line, exit 2."""


# Options of --engine ray only (None when not given), as _add_engine_args defines them.
_RAY_ONLY = ("--ray-address", "--cpus-per-job", "--gpus-per-job", "--retries", "--ray-actors")
TEACHER_KEYWORDS = ("auto", "random", "distilled", "paper")


# argparse ``type=`` validators: each option says what it takes where it is declared, so a bad
# value is refused while parsing, with the option's name (OneLineParser makes that one line).
LARGEST_WHOLE = 2**31 - 1
# The largest --image-size a side: 8 images of 8192x8192 already take 6 GiB as float32.
MAX_IMAGE_SIZE = 8192


def at_least(least: int) -> Callable[[str], int]:
    """argparse ``type=``: a whole number >= ``least``."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        if value > LARGEST_WHOLE:  # a count or size this large only fails later, in C++
            raise argparse.ArgumentTypeError(f"must be <= {LARGEST_WHOLE}, got {value}")
        return value

    return whole_number


def finite_number(text: str) -> float:
    """argparse ``type=``: a finite number (NaN and infinity are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def number_at_least(least: float) -> Callable[[str], float]:
    """argparse ``type=``: a finite number >= ``least``."""

    def bounded(text: str) -> float:
        value = finite_number(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least:g}, got {text}")
        return value

    return bounded


def positive_number(text: str) -> float:
    """argparse ``type=`` for a rate or a duration: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+|inf|infinity|nan)([eE][-+]?\d+)?(,.*)?$", re.IGNORECASE)


class UsageError(Exception):
    """The parser refused the command line: ``main`` prints this one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its whole usage block before an error; here the error is one line that
    names the option, and --help has the rest."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse reads "-inf", "-1e-3" or "-1,2" as an option ("expected one argument"):
        # taken as values, so the option's own check names what is wrong with them.
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")

    def parse_args(  # type: ignore[override]  # one signature for argparse's overloads; no namespace type
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but an unknown option is reported by the command it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)")
        return parsed


# Commands whose --out is one file, and the suffix an example name gets (export's per --format).
FILE_OUT_COMMANDS = {"export": ".onnx", "quantize": ".pt", "distill-teacher": ".pt"}
EXPORT_SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "aoti": ".pt2"}


def _names_a_folder(out: str) -> bool:
    """True for an --out that can only name a folder: ending in '/' (Path("new/") is "new"),
    or in '.' or '..' (Path("new/.") is "new" too)."""
    return out.endswith(("/", os.sep)) or os.path.basename(out) in (".", "..")


def _check_arguments(args: argparse.Namespace) -> None:
    """The cheap checks that span options, before any file is read or folder made (each option's
    own range is its ``type=``): files the cache must hold, options of --engine ray only, an
    image size the networks take, input paths that exist, then the command's ``check``. (Each
    job checks the rest, such as a dataset's layout, before it creates its output folder.)"""
    from .._checkpoint import require_file
    from ..networks import check_image_size

    for key, value in vars(args).items():  # an empty path would mean the current folder, silently
        if value == "" or (isinstance(value, list) and "" in value):
            option = "from" if key == "source" and args.command.startswith("fetch") else key  # dest of --from
            name = "an input" if key == "images" else f"--{option.replace('_', '-')}"
            raise _BadArguments(f"{name} is an empty string: give a path or value")
    # First: the message of a file not in the cache says how to fetch it, whatever else is wrong.
    teacher, penalty_images = getattr(args, "teacher", None), getattr(args, "penalty_images", None)
    _require_cached((teacher,), (getattr(args, "model_size", None) or "small",), penalty_images)
    if getattr(args, "engine", None) == "local":
        for flag in _RAY_ONLY:
            if getattr(args, flag[2:].replace("-", "_"), None) is not None:
                raise _BadArguments(f"{flag} is an option of --engine ray")
    if isinstance(getattr(args, "image_size", None), list):  # _add_image_size_arg's one or two numbers
        if len(args.image_size) > 2:
            raise _BadArguments(f"--image-size takes H W or one number, got {len(args.image_size)} numbers")
        args.image_size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    if getattr(args, "image_size", None) is not None:
        size = args.image_size
        height, width = (size, size) if isinstance(size, int) else size
        check_image_size(height, width)
        if max(height, width) > MAX_IMAGE_SIZE:  # else a traceback from PIL or a many-GB allocation
            raise _BadArguments(
                f"--image-size {height}x{width} is larger than {MAX_IMAGE_SIZE} px a side: score large "
                "images in tiles (--tile) of a size up to that, or downscale them first"
            )
    out = getattr(args, "out", None)
    if args.command in FILE_OUT_COMMANDS and isinstance(out, str) and _names_a_folder(out):
        # The fourteenth probe got a 32 MB file named "new" from --out new/ (X02, Q07), the fifteenth from new/.
        suffix = EXPORT_SUFFIXES.get(str(getattr(args, "format", "")), FILE_OUT_COMMANDS[args.command])
        folder = os.path.join(os.path.normpath(out), "")
        raise _BadArguments(
            f"--out {out} names a folder, but {args.command} writes one file: give its name (e.g. {folder}model{suffix})"
        )
    data, model = getattr(args, "data", None), getattr(args, "model", None)
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"--data: no folder {data}")
    if model is not None:
        require_file(model, f"--model: no model file at {model}", prefix="--model: ")
    if teacher is not None and teacher not in TEACHER_KEYWORDS and not Path(teacher).is_file():
        raise FileNotFoundError(f"--teacher: no teacher file {teacher} (or pass one of {', '.join(TEACHER_KEYWORDS)})")
    if args.command == "predict":  # before the model loads (auto precision may time INT8 for 30 s)
        from .._checkpoint import special_kind

        for item in args.images:
            if not Path(item).exists() and special_kind(item) is None:
                raise FileNotFoundError(f"no such image or folder: {item}")
    calibration_data = getattr(args, "calibration_data", None)
    if calibration_data is not None and not Path(calibration_data).is_dir():
        raise FileNotFoundError(f"--calibration-data: no folder {calibration_data}")
    command_check = getattr(args, "check", None)
    if command_check is not None:  # the command's own checks, registered beside its parser
        command_check(args)
    calibrate_on = getattr(args, "calibrate_on", None)
    if calibrate_on is not None and "://" not in calibrate_on and not Path(calibrate_on).exists():
        raise FileNotFoundError(f"--calibrate-on: no video file or folder {calibrate_on}")


def _error(args: argparse.Namespace, exc: BaseException) -> int:
    print(f"efficientad-fast {args.command}: error: {_message(exc)}", file=sys.stderr)
    return 2


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory errors: the CPU allocator's RuntimeError, CUDA's OutOfMemoryError."""
    text = str(exc)
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
    )


def out_of_memory(args: argparse.Namespace, exc: BaseException) -> int:
    """One line for an allocation that failed: what to make smaller."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(
        f"efficientad-fast {args.command}: error: out of memory ({first[:160]}): use a smaller "
        "--batch-size or --image-size (or tiles: --tile)",
        file=sys.stderr,
    )
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
    p.add_argument(
        "--penalty-images",
        nargs="+",
        default=default,
        metavar="DIR",
        help="folder(s) of generic natural images for the penalty loss, or 'imagenette': the "
        "paper's ImageNet subset with random grayscale 0.3 (fetch it once with "
        "fetch-imagenette; never downloaded otherwise), 'bundled': the scikit-image "
        "photographs and procedural images that ship with the dependencies, 'auto': "
        "imagenette when cached, else bundled; 'none': no penalty loss "
        f"(default: {default})",
    )


def _add_engine_args(p: argparse.ArgumentParser, what: str) -> None:
    """--engine and the options of --engine ray that train and report share (``what``: the
    unit that becomes one Ray task)."""
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help=f"local (default): one {what} after another in this process; ray: each {what} a Ray task "
        "(pip install -e '.[ray]'), on a local Ray instance or the cluster at --ray-address",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster to join (e.g. HEAD:6379, ray://HEAD:10001, or auto: the one 'ray start' made "
        "here); default: start a local Ray instance for this command. The cluster's nodes must see "
        "--data and --out at the same paths",
    )
    p.add_argument(
        "--cpus-per-job",
        type=positive_number,
        default=None,
        metavar="N",
        help=f"CPUs each {what} reserves, and its torch threads (default 1)",
    )
    p.add_argument(
        "--gpus-per-job",
        type=number_at_least(0),
        default=None,
        metavar="G",
        help=f"GPUs each {what} reserves (default: 1 when the cluster has GPUs, else 0; 0.5 packs two per GPU)",
    )
    p.add_argument(
        "--retries",
        type=at_least(0),
        default=None,
        metavar="R",
        help=f"times a failed {what} is tried again, also when its node is lost (default 1); then it "
        "is reported with its traceback",
    )


def _runner(args: argparse.Namespace):
    """The runner --engine names (local, or Ray with --engine ray's options) for train and
    report (:mod:`efficientad_fast.jobs.engines`)."""
    from ..jobs import make_runner

    if args.engine == "local":
        return make_runner("local", log=print)
    return make_runner(
        "ray",
        log=print,
        ray_address=args.ray_address,
        cpus_per_job=1 if args.cpus_per_job is None else args.cpus_per_job,
        gpus_per_job=args.gpus_per_job,
        retries=1 if args.retries is None else args.retries,
    )


def _add_training_args(p: argparse.ArgumentParser, steps_help: str) -> None:
    """The training settings that train and report share."""
    p.add_argument("--model-size", choices=("small", "medium"), default="small")
    p.add_argument("--steps", type=at_least(1), default=70_000, help=steps_help)
    p.add_argument("--batch-size", type=at_least(1), default=1, help="images per step (paper: 1)")
    p.add_argument("--lr", type=finite_number, default=1e-4)
    p.add_argument("--weight-decay", type=finite_number, default=1e-5)
    p.add_argument("--teacher", default="auto", help=TEACHER_HELP)
    p.add_argument(
        "--amp",
        choices=("fp16", "bf16", "auto"),
        default=None,
        help="mixed precision (autocast; default none: float32); auto: bf16 (fp16 too on a GPU) only "
        "where a short probe of training steps shows it faster on this machine (cached)",
    )
    _add_penalty_arg(p, default="auto")
    p.add_argument("--seed", type=at_least(0), default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_config(args: argparse.Namespace, checkpoint_every: int):
    """TrainConfig from the arguments _add_training_args (and --workers) define."""
    from ..train import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        amp=args.amp,
        checkpoint_every=checkpoint_every,
        workers=args.workers,
        progress=_progress_enabled(args),
    )


def _refuse_a_folder(path: str) -> None:
    """--out names a file: a folder, FIFO or device there is refused before the work, not after it."""
    from .._checkpoint import refuse_non_file_target

    refuse_non_file_target(path, "--out ")


def _check_output_file(path: str, model: str | None = None, label: str = "--out ") -> None:
    """--out names a file: refuse a folder, a device, the ``model`` file being read (it would
    be replaced), or a folder that cannot be written, before the work (minutes of compiling
    or calibrating) rather than after it."""
    from .._checkpoint import check_writable_folder

    _refuse_a_folder(path)
    if model is not None and os.path.exists(path) and os.path.samefile(path, model):
        raise ValueError(f"{label}{path}: that is the model file being read (--model {model}); name another file")
    check_writable_folder(Path(path).parent)  # made by the writer, once every check has passed
