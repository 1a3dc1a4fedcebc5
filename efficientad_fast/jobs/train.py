"""The train job: one category (train, calibrate, save) and several, on a runner (:mod:`.engines`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .._checkpoint import atomic_write_text, refuse_previous_run, require_file, writable_folder
from .._device import resolve_device
from .._numbers import image_hw
from ..data import (
    labelled_video_set,
    open_dataset,
    open_labelled_folder,
    penalty_image_set,
    read_video_labels,
    split_train_validation,
    video_training_set,
)
from ..data.inputs import load_images_uint8
from ..model import DEFAULT_IMAGE_QUANTILE, EfficientAD
from ..networks import check_image_size
from ..tiling import check_tile, cut_tiles
from ..train import (
    CHECKPOINT_NAME,
    TrainConfig,
    calibrate,
    exact_quantile,
    threshold_from_f1,
    train,
    write_training_log,
)
from .engines import LocalRunner, record_failure

MODEL_FILE = "model.pt"


def build_model(
    model_size: str = "small", teacher: str | None = "auto", padding: bool = False, seed: int = 0
) -> EfficientAD:
    """A new EfficientAD with networks initialized from ``seed``. ``teacher``: "auto" (or
    None; the paper's teacher when cached, else the shipped distilled one, else random),
    "random" (the PDN's default initialization), "distilled" (the shipped ImageNet-distilled
    PDN-S teacher, see efficientad_fast.teachers), "paper" (the authors' teacher, from the
    cache) or a teacher file."""
    torch.manual_seed(seed)
    return EfficientAD(model_size=model_size, padding=padding, teacher=teacher or "auto")


def _held_out(data, dataset, category, train_set, image_size, fraction, seed, layout=None):
    """MVTec LOCO (and folder datasets with validation/good) bring their own held-out set;
    elsewhere (and for a folder ``layout``) a seeded fraction of train is held out."""
    own = train_set.name == "mvtec_loco" or (
        layout is None and train_set.name == "folder" and (Path(data) / (category or "") / "validation").is_dir()
    )
    if own:  # errors in that folder surface; no silent fallback to a split of train
        return train_set, open_dataset(data, dataset, category, "validation", image_size)
    return split_train_validation(train_set, fraction=fraction, seed=seed)


VIDEO_FRAMES = "video_frames"  # train_from_video: the frames of the video, a folder dataset in OUT
THRESHOLD_FRAMES = "threshold_frames"  # threshold_from a labelled clip: its frames, good/ and defect/


def train_category(
    data: str | os.PathLike,
    dataset: str,
    category: str | None,
    out: str | os.PathLike,
    *,
    model_size: str = "small",
    config: TrainConfig | None = None,
    teacher: str | None = "auto",
    penalty_images="auto",
    image_size: int | tuple[int, int] = 256,
    padding: bool = False,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    validation_fraction: float = 0.1,
    layout=None,
    threshold_from: str | os.PathLike | None = None,
    tile: int | None = None,
    data_source: dict | None = None,
) -> tuple[EfficientAD, dict]:
    """Train, calibrate on held-out training images and save ``out/model.pt``, with
    ``train_log.jsonl``, ``loss_curve.png`` and ``train_summary.json``. ``teacher``: see
    :func:`build_model`; ``penalty_images``: see :func:`efficientad_fast.data.penalty_image_set`
    ("auto": Imagenette when cached, else the bundled generic images; "none" for none). The
    summary records the teacher and penalty images actually used. ``layout``: a
    :class:`efficientad_fast.data.FolderLayout` for a folder dataset with arbitrary folders.
    Calibration also stores the decision thresholds; ``threshold_from``: a folder of
    labelled images (``good/`` + defect folders, see
    :func:`efficientad_fast.data.open_labelled_folder`), or a labelled video clip (its
    ``<video>.labels.csv`` beside it; frames written to ``out/threshold_frames``), whose
    F1-optimal image threshold replaces the default (the 0.995 quantile of the held-out
    normal images' scores).
    ``tile``: train and calibrate on ``tile`` x ``tile`` tiles of the ``image_size`` images
    (the grid of :func:`efficientad_fast.tiling.cut_tiles`) instead of whole images; the
    model records it and predicts in tiles by default (the image threshold then comes from
    whole held-out images scored in tiles). ``data_source``: where ``data`` came from when
    that is not in its file names (:func:`train_from_video`: the video), compared on resume.

    Everything is checked before the first step (settings, data, teacher, that ``out`` can
    be written), and nothing is created before the settings and data are. A folder holding
    another run's checkpoint or model is refused unless ``resume`` or ``overwrite``."""
    config = config or TrainConfig()
    out = Path(out)
    size = _check_run(config, image_size, tile, out, resume, overwrite)
    train_set = open_dataset(data, dataset, category, "train", size, layout=layout)
    training_files = _file_list_digest(train_set)
    train_set, held_out = _held_out(data, dataset, category, train_set, size, validation_fraction, config.seed, layout)
    _check_threshold_source(threshold_from)
    if threshold_from is not None and Path(threshold_from).is_file():  # a labelled clip: its frames
        threshold_from = labelled_video_set(threshold_from, out / THRESHOLD_FRAMES, progress=config.progress)
    labelled = open_labelled_folder(threshold_from, size) if threshold_from is not None else None
    penalty = penalty_image_set(
        penalty_images, size if tile is None else (tile, tile), config.seed, progress=config.progress
    )
    dev = resolve_device(device)
    model = build_model(model_size, teacher, padding, config.seed).to(dev)
    model.tile = tile
    writable_folder(out)

    started = time.perf_counter()
    train_images = train_set
    if tile is not None:
        train_images = cut_tiles(load_images_uint8(train_set, config.workers, "training images"), tile)
    # What else changes the result: a resume with other values is refused, naming them.
    run_settings = {
        "dataset": dataset,
        "category": category,
        "training_files": training_files,
        "image_size": list(size),
        "tile": tile,
        "model_size": model_size,
        "padding": padding,
        "teacher": model.teacher_source,
        "penalty_images": penalty.source if penalty else "none",
        "penalty_count": len(penalty) if penalty else 0,
        "validation_fraction": validation_fraction,
        "data_source": data_source,
    }
    result = train(
        model, train_images, config, penalty_images=penalty, out_dir=out, resume=resume, run_settings=run_settings
    )
    quantiles = _calibrate(model, held_out, labelled, tile, config)
    total = time.perf_counter() - started
    model.save(out / MODEL_FILE)
    write_training_log(result.history, out)
    summary = {
        "dataset": dataset,
        "category": category,
        "model_size": model_size,
        "teacher": model.teacher_source,
        "train_images": len(train_set),
        "held_out_images": len(held_out),
        "penalty_images": len(penalty) if penalty else 0,
        "penalty_source": penalty.source if penalty else "none",
        "image_size": list(size),
        "tile": tile,
        "train_tiles": None if tile is None else len(train_images),
        "device": str(dev),
        "train_config": asdict(config),
        **_outcome(model, quantiles, result, total),
    }
    atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
    return model, summary


def train_from_video(
    video: str | os.PathLike, out: str | os.PathLike, *, every: int = 1, max_frames: int | None = None, **kwargs
) -> tuple[EfficientAD, dict]:
    """:func:`train_category` on the frames of ``video``, a recording of the line running
    normally (parts entering, resting and leaving): every ``every``-th frame, the first
    ``max_frames`` of them or all, become ``out/video_frames`` (a folder dataset; held-out
    frames, whole blocks of consecutive frames, calibrate; see
    :func:`efficientad_fast.data.video_training_set`), kept for a ``resume``. ``kwargs``: those
    of :func:`train_category` but its data, dataset, category and layout. The summary records
    the video."""
    config = kwargs.get("config") or TrainConfig()
    image_size, tile = kwargs.get("image_size", 256), kwargs.get("tile")
    _check_run(config, image_size, tile, Path(out), kwargs.get("resume", False), kwargs.get("overwrite", False))
    _check_threshold_source(kwargs.get("threshold_from"))  # before the frames are extracted
    frames = video_training_set(video, Path(out) / VIDEO_FRAMES, every, max_frames, progress=config.progress)
    # Frame names are the same for any video of that length: a resume compares the video itself.
    source = json.loads((frames / "source.json").read_text())
    source = {k: v for k, v in source.items() if k not in ("video", "mtime_ns")}  # moved or copied: the same
    model, summary = train_category(frames, "folder", None, out, data_source=source, **kwargs)
    summary["video"] = {"path": str(video), "every": every, "max_frames": max_frames}
    atomic_write_text(Path(out) / "train_summary.json", json.dumps(summary, indent=2))
    return model, summary


def _check_threshold_source(threshold_from: str | os.PathLike | None) -> None:
    """A missing ``threshold_from`` is named as what it may be (a missing clip was called a
    missing "labelled images folder": the ninth probe's V17); a clip's labels are read."""
    if threshold_from is not None and not os.path.exists(threshold_from):
        raise FileNotFoundError(
            f"the labelled clip or folder {threshold_from} does not exist (threshold_from: a video with "
            "VIDEO.labels.csv beside it, or a folder with good/ and one folder per defect)"
        )
    if threshold_from is not None and os.path.isfile(threshold_from):
        read_video_labels(threshold_from)  # its labels refused before any work (the tenth probe)


def _file_list_digest(dataset) -> str:
    """ "N files, sha256:..." of a dataset's image files (names relative to its root): a resume
    on other data is refused even where the dataset's name and category are the same, and a
    dataset moved to another folder still resumes."""
    names = sorted(os.path.relpath(s.path, dataset.root) for s in dataset.samples)
    return f"{len(names)} files, sha256:{hashlib.sha256(chr(0).join(names).encode()).hexdigest()[:16]}"


def _check_run(config: TrainConfig, image_size, tile: int | None, out: Path, resume: bool, overwrite: bool):
    """The settings' and the output folder's checks of :func:`train_category`, before any data
    is read; returns the image size as (H, W)."""
    config.check()
    size = image_hw(image_size)
    check_image_size(*size)
    if tile is not None:
        check_tile(tile, 0, *size)
    if resume:
        require_file(out / CHECKPOINT_NAME, f"resume: no checkpoint at {out / CHECKPOINT_NAME}", prefix="resume: ")
    if not (resume or overwrite):
        refuse_previous_run(out / CHECKPOINT_NAME, out / MODEL_FILE)
    return size


def _calibrate(model: EfficientAD, held_out, labelled, tile: int | None, config: TrainConfig) -> tuple:
    """Calibrate on the held-out images (in tiles when the model is tiled; the image threshold
    then from whole images scored in tiles); with ``labelled``, the F1-optimal image
    threshold on them. Returns the four quantiles."""
    held_out_images = load_images_uint8(held_out, config.workers, "held-out images")
    if tile is None:
        quantiles = calibrate(model, held_out_images, progress=config.progress)
    else:
        quantiles = calibrate(model, cut_tiles(held_out_images, tile), progress=config.progress)
        _tiled_image_threshold(model, held_out_images)
    if labelled is not None:
        threshold_from_f1(
            model,
            load_images_uint8(labelled, config.workers, "labelled images"),
            labelled.labels,
            progress=config.progress,
        )
    return quantiles


def _outcome(model: EfficientAD, quantiles, result, total: float) -> dict:
    """The summary's record of what training and calibration produced and how long they took."""
    last = result.history[-1] if result.history else {}
    return {
        "quantiles": dict(zip(("qa_st", "qb_st", "qa_ae", "qb_ae"), quantiles)),
        "thresholds": {
            "image": model.image_threshold,
            "pixel": model.pixel_threshold,
            "source": model.threshold_source,
        },
        "int8_calibration_images": model.int8_calibration.images if model.int8_calibration else None,
        "loop_seconds": result.seconds,
        "seconds_per_step": result.seconds / max(1, len(result.history)),
        "total_seconds": total,
        "final_losses": {k: v for k, v in last.items() if k.startswith("loss")},
    }


def fleet_folder(out, category: str | None, categories) -> Path:
    """A fleet member's folder: ``out/<category>``, or ``out`` itself when it is the only one."""
    if len(categories) > 1:
        assert category is not None  # several categories are each named
        return Path(out) / category
    return Path(out)


def _tiled_image_threshold(model: EfficientAD, images: torch.Tensor, batch_size: int = 2) -> None:
    """Set the image threshold of a model calibrated on tiles again, from the scores of whole
    held-out images scored in tiles (the quantile of the tiles' own scores would sit below
    an image's score, the max over all its tiles, and flag normal images)."""
    scores = torch.cat(
        [
            model.predict(images[start : start + batch_size]).score.cpu()
            for start in range(0, images.shape[0], batch_size)
        ]
    )
    model.set_thresholds(
        image=float(exact_quantile(scores, DEFAULT_IMAGE_QUANTILE)),
        pixel=model.pixel_threshold,
        source=f"image: {DEFAULT_IMAGE_QUANTILE:g} quantile of {scores.numel()} held-out normal "
        f"images' scores, scored in {model.tile} px tiles; pixel: q_b level",
    )


def check_categories(data, dataset: str, categories, image_size=256, layout=None) -> None:
    """Open each category's training split (no image is decoded): a missing or misnamed
    category stops ``train`` with several categories before any of them starts."""
    size = image_hw(image_size)
    for category in categories:
        open_dataset(data, dataset, category, "train", size, layout=layout)


def train_fleet_member(
    data, dataset: str, category: str | None, out_dir, *, resume: bool = False, overwrite: bool = False, **train_args
) -> dict:
    """One category of a ``train`` with several categories (see :func:`train_category` for
    ``train_args``). With ``resume``, a category whose folder holds its model and summary is
    not trained again, one with a checkpoint continues from it, one with neither starts.
    Returns {"category", "summary", "skipped"}."""
    out_dir = Path(out_dir)
    if resume and (out_dir / MODEL_FILE).is_file() and (out_dir / "train_summary.json").is_file():
        return {
            "category": category,
            "summary": json.loads((out_dir / "train_summary.json").read_text()),
            "skipped": True,
        }
    resume = resume and (out_dir / CHECKPOINT_NAME).is_file()
    _, summary = train_category(data, dataset, category, out_dir, resume=resume, overwrite=overwrite, **train_args)
    return {"category": category, "summary": summary, "skipped": False}


def train_categories(
    data,
    dataset: str,
    categories,
    out,
    *,
    resume: bool = False,
    overwrite: bool = False,
    runner=None,
    device: str = "auto",
    log=print,
    **train_args,
) -> list[dict]:
    """``train`` with several categories on ``runner`` (default: a :class:`~.engines.LocalRunner`,
    one after another here; a :class:`~.engines.RayRunner`: each a Ray task): each to
    ``out/<category>`` (with one category: ``out``; see :func:`train_fleet_member`). A category
    that fails is reported with its traceback in ``out/<category>/error.txt`` and the others go
    on. Returns per category {"category", "summary", "skipped", "error"}, in the order given.
    Every category's folder is checked first (:func:`check_categories`), before any runs."""
    check_categories(data, dataset, categories, train_args.get("image_size", 256), train_args.get("layout"))
    runner = runner or LocalRunner(log)
    out = writable_folder(out)
    results: list[dict | None] = [None] * len(categories)
    labels = [f"[train {i}/{len(categories)}] {c}" for i, c in enumerate(categories, 1)]
    with runner:
        for i, category in enumerate(categories):
            kwargs = dict(
                data=runner.path(data),
                dataset=dataset,
                category=category,
                out_dir=runner.path(fleet_folder(out, category, categories)),
                resume=resume,
                overwrite=overwrite,
                device=runner.device(device),
                **train_args,
            )
            runner.submit(i, f"train {category}", train_fleet_member, kwargs)
        if not isinstance(runner, LocalRunner):
            log(f"[train] {len(categories)} categories on {runner.where}")

        def done(i, result):
            results[i] = {**result, "error": None}
            folder = fleet_folder(out, categories[i], categories)
            log(
                f"{labels[i]}: "
                + (
                    "finished by an earlier run, not trained again (--resume)"
                    if result["skipped"]
                    else f"model {folder / MODEL_FILE}"
                )
            )

        def failed(i, error, details):
            folder = fleet_folder(out, categories[i], categories)
            record_failure({}, folder, error, details)
            results[i] = {"category": categories[i], "summary": None, "skipped": False, "error": error}
            log(f"{labels[i]}: FAILED{runner.tries_note}: {error} (details in {folder / 'error.txt'})")

        runner.gather(done, failed)
    finished = [r for r in results if r is not None]
    assert len(finished) == len(results)  # gather calls done or failed for every category
    return finished
