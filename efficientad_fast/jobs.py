"""The jobs behind the command line: train a category (train, calibrate, save), evaluate a
model on a test split, predict image files with heatmaps, the built-in demo, and the
benchmark report over every category of a dataset (optionally a hyperparameter sweep)."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import metrics as metrics_lib
from ._checkpoint import atomic_files, atomic_write_text, writable_folder
from ._device import resolve_device
from .benchmark import time_predict
from .data import (DataError, find_images, list_categories, make_loader, make_synthetic, open_dataset,
                   open_image, open_labelled_folder, penalty_image_set, read_loco_defects_config, split_train_validation,
                   to_rgb_array)
from .heatmaps import default_threshold, heatmap_overlay, save_png, write_eval_heatmaps
from .model import DEFAULT_IMAGE_QUANTILE, EfficientAD
from .networks import check_image_size
from .precision import choose_precision
from .report import headline_metrics, metrics_table, run_name, write_demo_report, write_metrics, write_report
from .tiling import check_tile, cut_tiles
from .train import (CHECKPOINT_NAME, TrainConfig, calibrate, exact_quantile, load_images_uint8, threshold_from_f1,
                    train, write_training_log)

MODEL_FILE = "model.pt"
# teacher: "random", "distilled", "paper" or a teacher file (compares teachers on the same data)
SWEEP_KEYS = {"lr": float, "weight_decay": float, "steps": int, "batch_size": int, "teacher": str}
# Steps per built-in category: the object (board) needs more than the texture (weave) with
# the distilled teacher to reach the demo's 0.90 AUROC targets (bench/results/demo_defaults_2026-12-01.md).
DEMO_STEPS = {"weave": 250, "board": 500}
# bf16 autocast is 2-4x faster per step on CPUs with AMX or AVX-512 BF16 on AMD Zen, and 0.6x
# on Intel CPUs with AVX-512 BF16 but no AMX (bench/bench_train.py): "auto" measures it.
DEMO_AMP = "auto"
# No penalty images in the demo (train and report default to "auto"): on board they cost 42 %
# more time per step for +0.02 image AUROC within the seeds' spread (bench/results/demo_defaults_2026-12-01.md).
DEMO_PENALTY = "none"


def build_model(model_size: str = "small", teacher: str | None = "auto", padding: bool = False,
                seed: int = 0) -> EfficientAD:
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
    own = train_set.name == "mvtec_loco" or (layout is None and
        train_set.name == "folder" and (Path(data) / (category or "") / "validation").is_dir())
    if own:  # errors in that folder surface; no silent fallback to a split of train
        return train_set, open_dataset(data, dataset, category, "validation", image_size)
    return split_train_validation(train_set, fraction=fraction, seed=seed)


def _refuse_previous_run(out: Path) -> None:
    """FileExistsError when ``out`` holds a run's checkpoint or model: a new run would
    overwrite an interrupted run's checkpoint at its first save."""
    for name in (CHECKPOINT_NAME, MODEL_FILE):
        if (out / name).is_file():
            raise FileExistsError(f"{out / name} is there from another run: continue it with --resume, "
                                  "start afresh with --overwrite, or choose another --out")


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
) -> tuple[EfficientAD, dict]:
    """Train, calibrate on held-out training images and save ``out/model.pt``, with
    ``train_log.jsonl``, ``loss_curve.png`` and ``train_summary.json``. ``teacher``: see
    :func:`build_model`; ``penalty_images``: see :func:`efficientad_fast.data.penalty_image_set`
    ("auto": Imagenette when cached, else the bundled generic images; "none" for none). The
    summary records the teacher and penalty images actually used. ``layout``: a
    :class:`efficientad_fast.data.FolderLayout` for a folder dataset with arbitrary folders.
    Calibration also stores the decision thresholds; ``threshold_from``: a folder of
    labelled images (``good/`` + defect folders, see
    :func:`efficientad_fast.data.open_labelled_folder`) whose F1-optimal image threshold
    replaces the default (the 0.995 quantile of the held-out normal images' scores).
    ``tile``: train and calibrate on ``tile`` x ``tile`` tiles of the ``image_size`` images
    (the grid of :func:`efficientad_fast.tiling.cut_tiles`) instead of whole images; the
    model records it and predicts in tiles by default (the image threshold then comes from
    whole held-out images scored in tiles).

    Everything is checked before the first step (settings, data, teacher, that ``out`` can
    be written), and nothing is created before the settings and data are. A folder holding
    another run's checkpoint or model is refused unless ``resume`` or ``overwrite``."""
    config = config or TrainConfig()
    config.check()
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    check_image_size(*size)
    if tile is not None:
        check_tile(tile, 0, *size)
    out = Path(out)
    if resume and not (out / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {out / CHECKPOINT_NAME}")
    if not (resume or overwrite):
        _refuse_previous_run(out)
    train_set = open_dataset(data, dataset, category, "train", size, layout=layout)
    train_set, held_out = _held_out(data, dataset, category, train_set, size, validation_fraction, config.seed,
                                    layout)
    labelled = open_labelled_folder(threshold_from, size) if threshold_from is not None else None
    penalty = penalty_image_set(penalty_images, size if tile is None else (tile, tile), config.seed,
                                progress=config.progress)
    dev = resolve_device(device)
    model = build_model(model_size, teacher, padding, config.seed).to(dev)
    model.tile = tile
    writable_folder(out)

    started = time.perf_counter()
    train_images = train_set
    if tile is not None:
        train_images = cut_tiles(load_images_uint8(train_set, config.workers, "training images"), tile)
    # What else changes the result: a resume with other values is refused, naming them.
    run_settings = {"dataset": dataset, "category": category, "image_size": list(size), "tile": tile,
                    "model_size": model_size, "padding": padding, "teacher": model.teacher_source,
                    "penalty_images": penalty.source if penalty else "none",
                    "penalty_count": len(penalty) if penalty else 0, "validation_fraction": validation_fraction}
    result = train(model, train_images, config, penalty_images=penalty, out_dir=out, resume=resume,
                   run_settings=run_settings)
    held_out_images = load_images_uint8(held_out, config.workers, "held-out images")
    if tile is None:
        quantiles = calibrate(model, held_out_images, progress=config.progress)
    else:
        quantiles = calibrate(model, cut_tiles(held_out_images, tile), progress=config.progress)
        _tiled_image_threshold(model, held_out_images)
    if labelled is not None:
        threshold_from_f1(model, load_images_uint8(labelled, config.workers, "labelled images"), labelled.labels,
                          progress=config.progress)
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
        "quantiles": dict(zip(("qa_st", "qb_st", "qa_ae", "qb_ae"), quantiles)),
        "thresholds": {"image": model.image_threshold, "pixel": model.pixel_threshold,
                       "source": model.threshold_source},
        "int8_calibration_images": model.int8_calibration.images if model.int8_calibration else None,
        "loop_seconds": result.seconds,
        "seconds_per_step": result.seconds / max(1, len(result.history)),
        "total_seconds": total,
        "final_losses": {k: v for k, v in (result.history[-1] if result.history else {}).items() if k.startswith("loss")},
    }
    atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
    return model, summary


def fleet_folder(out, category: str | None, categories) -> Path:
    """A fleet member's folder: ``out/<category>``, or ``out`` itself when it is the only one."""
    return Path(out) / category if len(categories) > 1 else Path(out)


def _tiled_image_threshold(model: EfficientAD, images: torch.Tensor, batch_size: int = 2) -> None:
    """Set the image threshold of a model calibrated on tiles again, from the scores of whole
    held-out images scored in tiles (the quantile of the tiles' own scores would sit below
    an image's score, the max over all its tiles, and flag normal images)."""
    scores = torch.cat([model.predict(images[start:start + batch_size]).score.cpu()
                        for start in range(0, images.shape[0], batch_size)])
    model.set_thresholds(image=float(exact_quantile(scores, DEFAULT_IMAGE_QUANTILE)), pixel=model.pixel_threshold,
                         source=f"image: {DEFAULT_IMAGE_QUANTILE:g} quantile of {scores.numel()} held-out normal "
                                f"images' scores, scored in {model.tile} px tiles; pixel: q_b level")


def check_categories(data, dataset: str, categories, image_size=256, layout=None) -> None:
    """Open each category's training split (no image is decoded): a missing or misnamed
    category stops ``train`` with several categories before any of them starts."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    for category in categories:
        open_dataset(data, dataset, category, "train", size, layout=layout)


def train_fleet_member(data, dataset: str, category: str | None, out_dir, *, resume: bool = False,
                       overwrite: bool = False, **train_args) -> dict:
    """One category of a ``train`` with several categories (see :func:`train_category` for
    ``train_args``). With ``resume``, a category whose folder holds its model and summary is
    not trained again, one with a checkpoint continues from it, one with neither starts.
    Returns {"category", "summary", "skipped"}."""
    out_dir = Path(out_dir)
    if resume and (out_dir / MODEL_FILE).is_file() and (out_dir / "train_summary.json").is_file():
        return {"category": category, "summary": json.loads((out_dir / "train_summary.json").read_text()),
                "skipped": True}
    resume = resume and (out_dir / CHECKPOINT_NAME).is_file()
    _, summary = train_category(data, dataset, category, out_dir, resume=resume, overwrite=overwrite, **train_args)
    return {"category": category, "summary": summary, "skipped": False}


def train_categories(data, dataset: str, categories, out, *, resume: bool = False, overwrite: bool = False,
                     log=print, **train_args) -> list[dict]:
    """``train`` with several categories, one after another: each to ``out/<category>``
    (with one category: ``out``; see :func:`train_fleet_member`). A category that fails is reported with its traceback
    in ``out/<category>/error.txt`` and the others go on. Returns per category {"category",
    "summary", "skipped", "error"}; :func:`efficientad_fast.ray_engine.train_categories`
    runs them as Ray tasks. Every category's folder is checked first (:func:`check_categories`)."""
    check_categories(data, dataset, categories, train_args.get("image_size", 256), train_args.get("layout"))
    results = []
    for i, category in enumerate(categories, 1):
        label = f"[train {i}/{len(categories)}] {category}"
        folder = fleet_folder(out, category, categories)
        try:
            result = train_fleet_member(data, dataset, category, folder, resume=resume, overwrite=overwrite,
                                        **train_args)
            result["error"] = None
            log(f"{label}: " + ("finished by an earlier run, not trained again (--resume)" if result["skipped"]
                                else f"model {folder / MODEL_FILE}"))
        except KeyboardInterrupt:  # and TrainingInterrupted: its checkpoint is written, the command says how to resume
            raise
        except Exception as exc:  # report it, go on with the next category
            result = {"category": category, "summary": None, "skipped": False, "error": f"{type(exc).__name__}: {exc}"}
            record_failure({}, folder, result["error"], traceback.format_exc())
            log(f"{label}: FAILED: {result['error']} (details in {folder / 'error.txt'})")
        results.append(result)
    return results


# -- evaluation --------------------------------------------------------------------------


def check_tiling(model: EfficientAD, tile: int | None, overlap: int, size: tuple[int, int]) -> None:
    """Before any image is read: ValueError when ``model.predict(tile=tile, overlap=overlap)``
    cannot tile images of ``size`` (None: the model's own tile; 0: no tiles)."""
    tile = model.tile if tile is None else tile
    if tile:
        check_tile(tile, overlap, *size)


@torch.no_grad()
def evaluate_model(
    model: EfficientAD,
    data: str | os.PathLike,
    dataset: str,
    category: str | None,
    *,
    image_size: int | tuple[int, int] = 256,
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
    heatmap_dir: str | os.PathLike | None = None,
    heatmaps_per_defect: int = 2,
    threshold: float | None = None,
    layout=None,
    tile: int | None = None,
    overlap: int = 32,
) -> dict:
    """Score the test split and compute the metrics (MVTec LOCO: structural and logical
    apart, with AU-sPRO). Returns {"metrics": ..., "images": per-image rows, "timing": ...};
    writes heatmaps of a few images per defect type to ``heatmap_dir`` if given. ``layout``:
    a :class:`efficientad_fast.data.FolderLayout` for a folder dataset with arbitrary folders.
    ``tile``, ``overlap``: as :meth:`EfficientAD.predict` takes them (None: the model's tile)."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    check_tiling(model, tile, overlap, size)
    test = open_dataset(data, dataset, category, "test", size, layout=layout)
    loader = make_loader(test, batch_size=batch_size, workers=workers)
    scores, maps, masks, rows = [], [], [], []
    infer_seconds = 0.0
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=f"evaluating {category or dataset}", dynamic_ncols=True)
    for batch in batches:
        started = time.perf_counter()
        pred = model.predict(batch["image"], tile=tile, overlap=overlap)
        score, amap = pred.score.cpu(), pred.anomaly_map.cpu()
        infer_seconds += time.perf_counter() - started
        scores.append(score)
        maps.append(amap[:, 0].numpy())
        masks.append(batch["mask"][:, 0].numpy().astype(bool))
        for i in range(score.shape[0]):
            rows.append({"path": batch["path"][i], "defect": batch["defect"][i], "kind": batch["kind"][i],
                         "label": int(batch["label"][i]), "score": float(score[i])})
    score_all = torch.cat(scores).numpy()
    map_all, mask_all = np.concatenate(maps), np.concatenate(masks)
    labels = np.array([r["label"] for r in rows])
    if test.name == "mvtec_loco":
        regions = [[m.numpy() * value for m, value in test.region_masks(i)] if labels[i] else None
                   for i in range(len(test))]
        result = metrics_lib.evaluate_loco(
            score_all, [r["kind"] for r in rows], map_all, regions,
            defects_config=read_loco_defects_config(data, category),
        )
    else:
        result = metrics_lib.evaluate(score_all, labels, map_all, mask_all)
    if heatmap_dir is not None:
        write_eval_heatmaps(test, rows, map_all, mask_all, heatmap_dir, heatmaps_per_defect,
                            threshold if threshold is not None else default_threshold(model))
    n = len(rows)
    timing = {"images": n, "seconds": infer_seconds, "ms_per_image": 1000 * infer_seconds / max(1, n),
              "batch_size": batch_size}
    return {"metrics": result, "images": rows, "timing": timing}


def collect_image_paths(inputs, out_dir=None, log=print) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in a stable order.
    Files found in folders under ``out_dir`` (an earlier run's heatmaps and masks, when the
    output folder lies inside an input folder) are left out, said once through ``log``."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += find_images(item, broken_links=True)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    if out_dir is not None:
        out = Path(out_dir).resolve()
        named = {Path(item).resolve() for item in inputs}
        kept = [p for p in paths if p.resolve() in named or out not in p.resolve().parents]
        if len(kept) < len(paths):
            log(f"skipping {len(paths) - len(kept)} files under the output folder {out_dir} (an earlier run's output)")
        paths = kept
    return paths


def read_images(paths: list[Path], size: tuple[int, int], errors: list[dict]) -> tuple[list[Path], list]:
    """The readable ``paths`` and their (3, H, W) arrays; each unreadable file goes to
    ``errors`` with its reason, so one bad file does not stop a folder's worth of scoring."""
    read, arrays = [], []
    for path in paths:
        try:
            arrays.append(to_rgb_array(open_image(path), size))
            read.append(path)
        except (DataError, OSError) as exc:  # corrupt, truncated, a folder, unreadable, vanished
            errors.append({"path": str(path), "error": str(exc)})
    return read, arrays


def printable(value):
    """``value`` as text any UTF-8 file can hold: a file name that is not valid UTF-8 (its
    bytes come from the file system as surrogates) gets backslash escapes for those bytes,
    e.g. ``caf\\xe9.png`` for a Latin-1 ``café.png``. Other values are returned as they are."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return os.fsencode(value).decode("utf-8", "backslashreplace")


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> Path:
    """A CSV written whole or not at all (temporary file, then rename), names made
    :func:`printable`."""
    with atomic_files(path) as (temporary,), open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({k: printable(v) for k, v in row.items()} for row in rows)
    return path


def decision_thresholds(model: EfficientAD, threshold: float | None = None,
                        sensitivity: float = 0.5) -> tuple[float | None, float | None]:
    """(image threshold, pixel threshold) of a predict run: the model's calibrated ones
    shifted by ``sensitivity`` (see :meth:`EfficientAD.thresholds`); ``threshold``, when
    given, is the image threshold as it is (no shift). A model file from before thresholds
    were stored labels by the old rule, score > 0.1 (the q_b level)."""
    image, pixel = model.thresholds(sensitivity)
    if threshold is not None:
        image = float(threshold)
    elif image is None:
        image = default_threshold(model)
    return image, pixel


def score_row(path, score: float, threshold: float | None) -> dict:
    """A scores.csv row: path, score (6 significant digits), label (score > the image
    threshold: "true" = anomalous; empty without a threshold) and anomalous (the same
    decision, the column's name before label existed)."""
    label = "" if threshold is None else str(score > threshold).lower()
    return {"path": str(path), "score": f"{score:.6g}", "label": label, "anomalous": label}


def heatmap_name(path: Path, used_names: set[str]) -> str:
    """The heatmap file's stem for ``path``: its own stem, with "_" added while another image
    (same file name in another folder) has it; adds the name to ``used_names``."""
    name = path.stem
    while name in used_names:
        name += "_"
    used_names.add(name)
    return name


def write_scores_parquet(path: Path, rows: list[dict], scores: list[float]) -> Path:
    """scores.csv's rows as Parquet (``pip install pyarrow``), with the scores as float64
    (the CSV rounds them to 6 digits) and ``anomalous`` as a boolean (null without a threshold)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("scores.parquet needs pyarrow: pip install -e '.[ray]' (or pip install pyarrow)") from exc
    columns = {"path": [printable(r["path"]) for r in rows], "score": pa.array(scores, pa.float64())}
    for key in ("label", "anomalous"):
        columns[key] = pa.array([None if r.get(key, "") == "" else r[key] == "true" for r in rows], pa.bool_())
    if rows and "heatmap" in rows[0]:
        columns["heatmap"] = [printable(r["heatmap"]) for r in rows]
    with atomic_files(path) as (temporary,):
        pq.write_table(pa.table(columns), temporary)
    return path


def _score_fields(heatmaps: bool) -> list[str]:
    return ["path", "score", "label", "anomalous"] + (["heatmap"] if heatmaps else [])


def write_predictions(out_dir: Path, rows: list[dict], scores: list[float], errors: list[dict], heatmaps: bool,
                      parquet: bool, csv_written: bool = False) -> Path:
    """``scores.csv`` (unless ``csv_written``: the local engine writes it as it scores) and
    ``scores.parquet``, and ``errors.csv`` when some file could not be read (removed
    otherwise: a previous run's list would be read as this one's); returns the CSV's path.
    Both predict engines end here."""
    csv_path = out_dir / "scores.csv"
    if not csv_written:
        _write_csv(csv_path, _score_fields(heatmaps), rows)
    if parquet:
        write_scores_parquet(out_dir / "scores.parquet", rows, scores)
    else:
        (out_dir / "scores.parquet").unlink(missing_ok=True)
    if errors:
        _write_csv(out_dir / "errors.csv", ["path", "error"], errors)
    else:
        (out_dir / "errors.csv").unlink(missing_ok=True)
    return csv_path


@torch.no_grad()
def predict_files(model: EfficientAD, inputs, out_dir, *, image_size: int | tuple[int, int] = 256,
                  batch_size: int = 8, threshold: float | None = None, heatmaps: bool = True,
                  progress: bool = True, parquet: bool = False, sensitivity: float = 0.5,
                  masks: bool = False, tile: int | None = None,
                  overlap: int = 32) -> tuple[Path, list[dict], list[dict]]:
    """Score image files: ``out_dir/scores.csv`` (path, score, label, anomalous; see
    :func:`score_row` and :func:`decision_thresholds` for ``threshold`` and ``sensitivity``)
    and, per image, ``out_dir/heatmaps/<name>.png`` (contour at the pixel threshold) and with
    ``masks`` ``out_dir/masks/<name>.png`` (255 = pixel above the pixel threshold); with
    ``parquet`` also ``out_dir/scores.parquet``. Files
    that cannot be read are skipped and listed with the reason in ``out_dir/errors.csv``.
    Returns the scores CSV's path, its rows and the errors ({"path", "error"} rows).
    :func:`efficientad_fast.ray_engine.predict_files` does the same on a pool of Ray actors.
    ``tile``, ``overlap``: as :meth:`EfficientAD.predict` takes them (None: the model's tile)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    check_image_size(*size)
    check_tiling(model, tile, overlap, size)
    paths = collect_image_paths(inputs, out_dir)
    threshold, pixel_threshold = decision_thresholds(model, threshold, sensitivity)
    if masks and pixel_threshold is None:
        raise ValueError("masks need a pixel threshold: this model is not calibrated")
    out_dir = writable_folder(out_dir)
    rows, scores, errors = [], [], []
    chunks = range(0, len(paths), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="predicting", dynamic_ncols=True)
    used_names: set[str] = set()
    # Rows go to a temporary CSV as they are scored (flushed per batch) and it becomes
    # scores.csv at the end, or at Ctrl-C with the rows scored so far; any other failure
    # leaves the previous scores.csv as it was.
    csv_path = out_dir / "scores.csv"
    temporary = csv_path.with_name(f"scores.tmp{os.getpid()}.csv")
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=_score_fields(heatmaps))
            writer.writeheader()
            for start in chunks:
                batch_paths, arrays = read_images(paths[start:start + batch_size], size, errors)
                if not batch_paths:
                    continue
                images = torch.stack([torch.from_numpy(a) for a in arrays])
                pred = model.predict(images, tile=tile, overlap=overlap)
                for i, path in enumerate(batch_paths):
                    score = float(pred.score[i])
                    row = score_row(path, score, threshold)
                    name = heatmap_name(path, used_names)
                    try:
                        if heatmaps:
                            heatmap = out_dir / "heatmaps" / f"{name}.png"
                            row["heatmap"] = ""
                            save_png(heatmap_overlay(images[i].numpy(), pred.anomaly_map[i, 0].cpu().numpy(),
                                                     pixel_threshold), heatmap)
                            row["heatmap"] = str(heatmap)
                        if masks:
                            mask = (pred.anomaly_map[i, 0] > pixel_threshold).cpu().numpy()
                            save_png(mask.astype(np.uint8) * 255, out_dir / "masks" / f"{name}.png")
                    except OSError as exc:  # a name too long for the file system, ...: keep the score
                        errors.append({"path": str(path), "error": f"scored, but its picture cannot be written: {exc}"})
                    rows.append(row)
                    scores.append(score)
                    writer.writerow({k: printable(v) for k, v in row.items()})
                f.flush()
    except KeyboardInterrupt:
        os.replace(temporary, csv_path)  # what was scored stays
        write_predictions(out_dir, rows, scores, errors, heatmaps, parquet=False, csv_written=True)
        raise PredictInterrupted(len(rows), len(paths), csv_path) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, csv_path)
    write_predictions(out_dir, rows, scores, errors, heatmaps, parquet, csv_written=True)
    return csv_path, rows, errors


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`predict_files`: ``scores.csv`` holds the ``scored`` of ``total``
    images scored before it (and ``errors.csv`` the unreadable ones met so far)."""

    def __init__(self, scored: int, total: int, csv_path: Path) -> None:
        super().__init__(f"interrupted after {scored} of {total} images; {csv_path} holds the {scored} scored")
        self.scored, self.total, self.csv_path = scored, total, csv_path


def run_demo(out: str | os.PathLike = "demo_out", *, steps: int | dict[str, int] | None = None, seed: int = 0,
             categories=("weave", "board"), device: str = "auto", batch_size: int = 1,
             amp: str | None = DEMO_AMP, teacher: str = "auto", penalty_images=DEMO_PENALTY,
             progress: bool = True, video: bool = False, log=print) -> dict:
    """Make the built-in synthetic dataset, train EfficientAD-S on each category, calibrate,
    evaluate, write heatmaps and ``report.md``; returns {category: evaluation}. ``steps``:
    one number for every category, or {category: steps}; default :data:`DEMO_STEPS`.
    ``teacher`` and ``penalty_images`` as :func:`train_category` takes them. ``video``:
    also watch a synthetic conveyor video with the board model (:func:`_demo_video`)."""
    steps = DEMO_STEPS if steps is None else steps
    steps_of = steps if isinstance(steps, dict) else dict.fromkeys(categories, steps)
    if set(categories) - set(steps_of):
        raise ValueError(f"steps: no number for the categories {sorted(set(categories) - set(steps_of))}")
    out = writable_folder(out)
    data = out / "data"
    started = time.perf_counter()
    log(f"[demo] writing the built-in dataset to {data}")
    make_synthetic(data, seed=seed, categories=tuple(categories), overwrite=True)
    results, summaries, models = {}, {}, {}
    for category in categories:
        log(f"[demo] {category}: training EfficientAD-S for {steps_of[category]} steps")
        config = TrainConfig(steps=steps_of[category], batch_size=batch_size, seed=seed, amp=amp,
                             checkpoint_every=0, progress=progress)
        # overwrite: the demo remakes its data and runs each time
        model, summaries[category] = train_category(data, "mvtec_ad", category, out / category,
                                                    config=config, device=device, teacher=teacher,
                                                    penalty_images=penalty_images, overwrite=True)
        log(f"[demo] {category}: evaluating")
        evaluation = evaluate_model(model, data, "mvtec_ad", category, progress=progress,
                                    heatmap_dir=out / category / "heatmaps")
        write_metrics(evaluation, out / category, category)
        results[category] = evaluation
        models[category] = model
    video_lines = []
    if video:
        category = "board" if "board" in models else next(iter(models))
        video_lines = _demo_video(models[category], out, category, seed, progress, log)
    elapsed = time.perf_counter() - started
    table = metrics_table({c: r["metrics"] for c, r in results.items()})
    report = write_demo_report(out, results, summaries, table, elapsed)
    if video_lines:
        atomic_write_text(report, report.read_text().rstrip("\n") + "\n\n" + "\n".join(video_lines) + "\n")
    log("\n" + table)
    log(f"\n[demo] done in {elapsed / 60:.1f} min; report: {out / 'report.md'}")
    return results


# The demo's conveyor: frames of the video watched and of the normal clip calibrated on.
DEMO_VIDEO_FRAMES, DEMO_NORMAL_FRAMES = 192, 48


def _demo_video(model: EfficientAD, out: Path, category: str, seed: int, progress: bool, log) -> list[str]:
    """The demo's live-line step: a synthetic conveyor of ``category`` parts and a clip of
    normal parts (:func:`efficientad_fast.data.make_synthetic_video`, 256 px frames), the
    threshold calibrated on the clip, ``watch`` over the conveyor with k-of-n smoothing
    (in the fastest precision here: :func:`efficientad_fast.precision.choose_precision`), and
    every smoother compared on the same raw scores.
    Returns the report section's Markdown lines."""
    import copy

    from .data import make_synthetic_video, read_video_labels
    from .stream import Inspector, compare_smoothers, format_summary, plot_stream, smoother_table, watch

    folder = out / "video"
    log(f"[demo] video: a conveyor of {category} parts ({DEMO_VIDEO_FRAMES} frames) and a normal clip")
    clip = make_synthetic_video(folder / "normal.avi", category, frames=DEMO_NORMAL_FRAMES, frame_size=256,
                                defect_fraction=0.0, glitch_rate=0.0, seed=seed + 1)
    conveyor = make_synthetic_video(folder / "conveyor.avi", category, frames=DEMO_VIDEO_FRAMES, frame_size=256,
                                    seed=seed)
    fast = choose_precision(copy.deepcopy(model), batch_size=1, image_size=256, log=log)
    inspector = Inspector(fast, smoothing="kofn")
    normal = [r.score for r in inspector.run(clip) if r.score is not None]
    calibrated = compare_smoothers(normal, [{"frame": i, "defective": 0, "part": 0} for i in range(len(normal))],
                                   normal_scores=normal, smoothers=("kofn",))[0]["threshold"]
    inspector.set_threshold(calibrated)
    log(f"[demo] video: watching with k-of-n smoothing, threshold {calibrated:.4g} (99.5 % of the normal clip)")
    summary = watch(inspector, conveyor, folder / "watch", progress=progress)
    log(format_summary(summary))
    rows = [json.loads(line) for line in (folder / "watch" / "frames.jsonl").read_text().splitlines()]
    labels = read_video_labels(conveyor)
    scores = [r["score"] for r in rows]
    if len(scores) != len(labels) or None in scores:
        raise RuntimeError(f"demo video: {len(scores)} scores for {len(labels)} frames (decode errors?)")
    table = smoother_table(compare_smoothers(scores, labels, normal_scores=normal))
    plot_stream(folder / "watch" / "frames.jsonl", folder / "scores.png", labels, calibrated)
    lines = [
        f"## Watching a conveyor ({category})",
        "",
        f"`efficientad-fast watch` with the {category} model on a synthetic conveyor "
        f"(video/conveyor.avi, {len(labels)} frames at 256 px: parts slide in and rest under the camera, "
        "with camera noise and one-frame glitches; some parts defective). Each smoother's threshold is the "
        f"99.5 % quantile of its smoothed scores on a clip of {len(normal)} normal frames (video/normal.avi), "
        "all on the same raw scores:",
        "",
        table,
        "",
        f"Live run (k-of-n): {summary['fps']:.2f} frames/s, latency p50 {summary['latency_p50_ms']:.0f} ms, "
        f"p99 {summary['latency_p99_ms']:.0f} ms; {summary['alarms']} alarms.",
        "",
        "![scores](video/scores.png)",
        "",
    ]
    for png in sorted((folder / "watch" / "alarms").glob("*.png"))[:4]:
        lines.append(f"![{png.stem}](video/watch/alarms/{png.name})")
    return lines


def parse_sweep(items) -> dict[str, list]:
    """``["lr=1e-6,1e-4", "weight_decay=1e-6,1e-4"]`` -> {"lr": [1e-6, 1e-4], ...}."""
    sweep: dict[str, list] = {}
    for item in items or ():
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ValueError(f"a sweep item looks like lr=1e-6,1e-4, got {item!r}")
        if key not in SWEEP_KEYS:
            raise ValueError(f"can sweep {sorted(SWEEP_KEYS)}, not {key!r}")
        try:
            sweep[key] = [SWEEP_KEYS[key](v) for v in values.split(",") if v.strip()]
        except ValueError as exc:
            raise ValueError(f"bad value in sweep item {item!r}: {exc}") from None
    return sweep


def _settings(sweep: dict[str, list]) -> list[dict]:
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def _latency_ms(model, batch: int, image_size: int, runs: int | None) -> float:
    return time_predict(model, batch, image_size=image_size, warmup=1, runs=runs).mean_ms


def run_report(
    data: str | os.PathLike,
    dataset: str,
    out: str | os.PathLike,
    *,
    categories=None,
    model_size: str = "small",
    config: TrainConfig | None = None,
    sweep: dict[str, list] | None = None,
    teacher: str | None = "auto",
    image_size: int = 256,
    device: str = "auto",
    latency_batches=(1, 4, 16),
    latency_runs: int | None = None,
    penalty_images="auto",
    resume: bool = False,
    log=print,
) -> dict:
    """Train, calibrate and evaluate each category (for each sweep setting) and write
    ``report.md``, ``report.csv``, ``report.json`` and ``report.png`` to ``out``.

    A category that fails is reported with its error and the others go on. Training time is
    training + calibration; inference time is the test split's network and scoring time;
    latency is the paper's protocol at batch 1 (mean ms, image on the host to map on the
    host). ``latency_batches`` also times the first trained model at those batch sizes for
    the latency-against-batch-size chart. ``resume``: a run whose folder holds its finished
    row (``row.json``) is not run again, an interrupted one continues from its checkpoint
    (see :func:`report_run`). :func:`efficientad_fast.ray_engine.run_report` runs the same
    runs as Ray tasks.
    """
    config = config or TrainConfig()
    config.check()
    runs = report_runs(data, dataset, categories, sweep)
    out = writable_folder(out)
    rows, latency_curve = [], []
    started = time.perf_counter()
    for i, (category, setting, name) in enumerate(runs, 1):
        label = f"[report {i}/{len(runs)}] {name}"
        row = report_row(data, dataset, category, setting, model_size, config, teacher)
        finished = read_finished_run(out / name) if resume else None
        if finished is not None:
            log(f"{label}: finished by an earlier run, not run again (--resume)")
            rows.append(finished["row"])
            latency_curve = latency_curve or finished["latency_vs_batch"]
            continue
        log(f"{label}: training {model_size} for {row['steps']} steps")
        try:
            run = report_run(data, dataset, category, setting, out / name, model_size=model_size, config=config,
                             teacher=teacher, image_size=image_size, device=device, latency_runs=latency_runs,
                             penalty_images=penalty_images, latency_batches=() if latency_curve else latency_batches,
                             resume=resume, log=log, label=label)
            row, latency_curve = run["row"], latency_curve or run["latency_vs_batch"]
            log(f"{label}: image AUROC {row['image_auroc']:.3f}, pixel AUROC {row['pixel_auroc']:.3f}, "
                f"latency {row['latency_ms']:.1f} ms")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # report it, go on with the next category
            record_failure(row, out / name, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            log(f"{label}: FAILED: {row['error']} (details in {out / name / 'error.txt'})")
        rows.append(row)
    return finish_report(out, data, dataset, rows, latency_curve, started, model_size=model_size, config=config,
                         sweep=sweep, teacher=teacher, image_size=image_size, device=device,
                         penalty_images=penalty_images)


def finish_report(out: Path, data, dataset: str, rows: list[dict], latency_curve: list[dict], started: float, *,
                  model_size: str, config: TrainConfig, sweep, teacher, image_size: int, device: str,
                  penalty_images) -> dict:
    """The report's result (settings, rows in run order, the latency curve, total time since
    ``started``), written by :func:`efficientad_fast.report.write_report`; both engines end here."""
    result = {
        "dataset": dataset, "data": str(data), "model_size": model_size, "image_size": image_size,
        "device": str(resolve_device(device)), "train_config": dataclasses.asdict(config),
        "sweep": sweep or {}, "teacher": teacher or "auto", "penalty_images": penalty_images, "rows": rows,
        "latency_vs_batch": latency_curve, "total_s": time.perf_counter() - started,
    }
    write_report(result, out)
    return result


def report_runs(data, dataset: str, categories, sweep) -> list[tuple[str | None, dict, str]]:
    """(category, sweep setting, run folder name) for every run of a report; refuses settings
    whose runs would share a folder."""
    if categories is None:
        categories = list_categories(data, dataset) if dataset != "folder" else [None]
        if not categories:
            raise FileNotFoundError(f"no categories (folders with a train/ folder) under {data}")
    runs = [(c, s, run_name(c or Path(data).name, s)) for c in categories for s in _settings(sweep or {})]
    names = [name for _, _, name in runs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:  # e.g. two teacher files with the same name in different folders
        raise ValueError(f"sweep settings would share the run folders {clashes}; give them different names")
    return runs


ROW_FILE = "row.json"  # a report run's finished row: what --resume reads instead of running it again


def report_row(data, dataset: str, category: str | None, setting: dict, model_size: str, config: TrainConfig,
               teacher: str | None) -> dict:
    """A report row's settings (category, model size, lr, weight decay, steps, batch size,
    teacher) before its run fills in the results; ``error`` None."""
    return {"dataset": dataset, "category": category or Path(data).name, "model_size": model_size,
            "lr": setting.get("lr", config.lr), "weight_decay": setting.get("weight_decay", config.weight_decay),
            "steps": setting.get("steps", config.steps), "batch_size": setting.get("batch_size", config.batch_size),
            "teacher": setting.get("teacher", teacher or "auto"), "error": None}


def record_failure(row: dict, out_dir: Path, error: str, details: str) -> dict:
    """Mark ``row`` failed with the one-line ``error`` and write ``details`` (the traceback)
    to ``out_dir/error.txt``; returns ``row``."""
    row["error"] = error
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "error.txt", details)
    return row


def read_finished_run(out_dir: Path) -> dict | None:
    """{"row", "latency_vs_batch"} of a run that finished (its ``row.json``), else None."""
    try:
        finished = json.loads((Path(out_dir) / ROW_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # never finished, or cut off while writing
        return None
    return finished if finished.get("row", {}).get("error", "missing") is None else None


def report_run(data, dataset: str, category: str | None, setting: dict, out_dir: Path, *, model_size: str,
               config: TrainConfig, teacher: str | None, image_size: int, device: str, latency_runs: int | None,
               penalty_images, latency_batches=(), resume: bool = False, log=print, label: str = "") -> dict:
    """One run of a report (a category at one sweep setting): train (with ``resume``,
    continue from the checkpoint an interrupted run left in ``out_dir``; else afresh),
    calibrate, evaluate and time; ``latency_batches``: also the latency at those batch sizes.
    Writes ``out_dir/row.json`` last and returns {"row", "latency_vs_batch"}. Raises what
    fails: each engine reports it."""
    out_dir = Path(out_dir)
    (out_dir / ROW_FILE).unlink(missing_ok=True)  # an earlier run's row is not this run's
    row = report_row(data, dataset, category, setting, model_size, config, teacher)
    run_config = dataclasses.replace(config, **{k: v for k, v in setting.items() if k != "teacher"})
    resume = resume and (out_dir / CHECKPOINT_NAME).is_file()
    if resume:
        log(f"{label}: continuing from {out_dir / CHECKPOINT_NAME}")
    # overwrite: a report reruns every run of its folder
    model, summary = train_category(data, dataset, category, out_dir, model_size=model_size,
                                    config=run_config, teacher=row["teacher"], penalty_images=penalty_images,
                                    image_size=image_size, device=device, resume=resume, overwrite=True)
    log(f"{label}: evaluating")
    evaluation = evaluate_model(model, data, dataset, category, image_size=image_size,
                                progress=run_config.progress, workers=run_config.workers)
    row.update(headline_metrics(evaluation["metrics"]))
    row["teacher_used"] = summary["teacher"]  # what "auto" chose, or the file's name
    row["penalty_used"] = summary["penalty_source"]
    row["train_s"] = summary["total_seconds"]
    row["infer_s"] = evaluation["timing"]["seconds"]
    row["infer_ms_per_image"] = evaluation["timing"]["ms_per_image"]
    row["latency_ms"] = _latency_ms(model, 1, image_size, latency_runs)
    row["metrics"] = evaluation["metrics"]
    curve = []
    for batch in latency_batches or ():
        ms = _latency_ms(model, batch, image_size, latency_runs)
        curve.append({"batch": batch, "ms": ms, "images_per_s": 1e3 * batch / ms})
    finished = {"row": row, "latency_vs_batch": curve}
    # Whole or absent: a cut-off write is never read as finished.
    atomic_write_text(out_dir / ROW_FILE, json.dumps(finished, indent=2, default=str))
    return finished
