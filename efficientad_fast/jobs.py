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
from ._checkpoint import writable_folder
from ._device import resolve_device
from .benchmark import time_predict
from .data import (DataError, find_images, list_categories, make_loader, make_synthetic, open_dataset,
                   open_image, penalty_image_set, read_loco_defects_config, split_train_validation,
                   to_rgb_array)
from .heatmaps import default_threshold, heatmap_overlay, save_png, write_eval_heatmaps
from .model import EfficientAD
from .networks import check_image_size
from .report import headline_metrics, metrics_table, run_name, write_demo_report, write_metrics, write_report
from .train import CHECKPOINT_NAME, TrainConfig, calibrate, load_images_uint8, train, write_training_log

MODEL_FILE = "model.pt"
# teacher: "random", "distilled", "paper" or a teacher file (compares teachers on the same data)
SWEEP_KEYS = {"lr": float, "weight_decay": float, "steps": int, "batch_size": int, "teacher": str}
# Steps per built-in category: the object (board) needs more than the texture (weave) with
# the distilled teacher to reach the demo's 0.90 AUROC targets (bench/results/demo_defaults_2026-12-01.md).
DEMO_STEPS = {"weave": 250, "board": 500}
# bf16 autocast halves the step time on CPUs with AVX-512 BF16 (bench/bench_train.py).
DEMO_AMP = "bf16"
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


def _held_out(data, dataset, category, train_set, image_size, fraction, seed):
    """MVTec LOCO (and folder datasets with validation/good) bring their own held-out set;
    elsewhere a seeded fraction of train is held out."""
    own = train_set.name == "mvtec_loco" or (
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
) -> tuple[EfficientAD, dict]:
    """Train, calibrate on held-out training images and save ``out/model.pt``, with
    ``train_log.jsonl``, ``loss_curve.png`` and ``train_summary.json``. ``teacher``: see
    :func:`build_model`; ``penalty_images``: see :func:`efficientad_fast.data.penalty_image_set`
    ("auto": Imagenette when cached, else the bundled generic images; "none" for none). The
    summary records the teacher and penalty images actually used.

    Everything is checked before the first step (settings, data, teacher, that ``out`` can
    be written), and nothing is created before the settings and data are. A folder holding
    another run's checkpoint or model is refused unless ``resume`` or ``overwrite``."""
    config = config or TrainConfig()
    config.check()
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    check_image_size(*size)
    out = Path(out)
    if resume and not (out / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {out / CHECKPOINT_NAME}")
    if not (resume or overwrite):
        _refuse_previous_run(out)
    train_set = open_dataset(data, dataset, category, "train", size)
    train_set, held_out = _held_out(data, dataset, category, train_set, size, validation_fraction, config.seed)
    penalty = penalty_image_set(penalty_images, size, config.seed)
    dev = resolve_device(device)
    model = build_model(model_size, teacher, padding, config.seed).to(dev)
    writable_folder(out)

    started = time.perf_counter()
    result = train(model, train_set, config, penalty_images=penalty, out_dir=out, resume=resume)
    held_out_images = load_images_uint8(held_out, config.workers, "held-out images")
    quantiles = calibrate(model, held_out_images, progress=config.progress)
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
        "device": str(dev),
        "train_config": asdict(config),
        "quantiles": dict(zip(("qa_st", "qb_st", "qa_ae", "qb_ae"), quantiles)),
        "loop_seconds": result.seconds,
        "seconds_per_step": result.seconds / max(1, len(result.history)),
        "total_seconds": total,
        "final_losses": {k: v for k, v in (result.history[-1] if result.history else {}).items() if k.startswith("loss")},
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return model, summary


# -- evaluation --------------------------------------------------------------------------


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
) -> dict:
    """Score the test split and compute the metrics (MVTec LOCO: structural and logical
    apart, with AU-sPRO). Returns {"metrics": ..., "images": per-image rows, "timing": ...};
    writes heatmaps of a few images per defect type to ``heatmap_dir`` if given."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    test = open_dataset(data, dataset, category, "test", size)
    loader = make_loader(test, batch_size=batch_size, workers=workers)
    scores, maps, masks, rows = [], [], [], []
    infer_seconds = 0.0
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=f"evaluating {category or dataset}", dynamic_ncols=True)
    for batch in batches:
        started = time.perf_counter()
        pred = model.predict(batch["image"])
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


def collect_image_paths(inputs) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in a stable order."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += find_images(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    return paths


def _read_images(paths: list[Path], size: tuple[int, int], errors: list[dict]) -> tuple[list[Path], list]:
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


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


@torch.no_grad()
def predict_files(model: EfficientAD, inputs, out_dir, *, image_size: int | tuple[int, int] = 256,
                  batch_size: int = 8, threshold: float | None = None, heatmaps: bool = True,
                  progress: bool = True) -> tuple[Path, list[dict], list[dict]]:
    """Score image files: ``out_dir/scores.csv`` (path, score, anomalous) and, per image,
    ``out_dir/heatmaps/<name>.png``. Files that cannot be read are skipped and listed with
    the reason in ``out_dir/errors.csv``. Returns the scores CSV's path, its rows and the
    errors ({"path", "error"} rows)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    check_image_size(*size)
    paths = collect_image_paths(inputs)
    threshold = threshold if threshold is not None else default_threshold(model)
    out_dir = writable_folder(out_dir)
    rows, errors = [], []
    chunks = range(0, len(paths), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="predicting", dynamic_ncols=True)
    used_names: set[str] = set()
    for start in chunks:
        batch_paths, arrays = _read_images(paths[start:start + batch_size], size, errors)
        if not batch_paths:
            continue
        images = torch.stack([torch.from_numpy(a) for a in arrays])
        pred = model.predict(images)
        for i, path in enumerate(batch_paths):
            score = float(pred.score[i])
            row = {"path": str(path), "score": f"{score:.6g}",
                   "anomalous": "" if threshold is None else str(score > threshold).lower()}
            if heatmaps:
                name = path.stem
                while name in used_names:  # same file name in two folders
                    name += "_"
                used_names.add(name)
                heatmap = out_dir / "heatmaps" / f"{name}.png"
                save_png(heatmap_overlay(images[i].numpy(), pred.anomaly_map[i, 0].cpu().numpy(), threshold), heatmap)
                row["heatmap"] = str(heatmap)
            rows.append(row)
    fields = ["path", "score", "anomalous"] + (["heatmap"] if heatmaps else [])
    csv_path = _write_csv(out_dir / "scores.csv", fields, rows)
    if errors:
        _write_csv(out_dir / "errors.csv", ["path", "error"], errors)
    else:  # a previous run's list would be read as this one's
        (out_dir / "errors.csv").unlink(missing_ok=True)
    return csv_path, rows, errors


def run_demo(out: str | os.PathLike = "demo_out", *, steps: int | dict[str, int] | None = None, seed: int = 0,
             categories=("weave", "board"), device: str = "auto", batch_size: int = 1,
             amp: str | None = DEMO_AMP, teacher: str = "auto", penalty_images=DEMO_PENALTY,
             progress: bool = True, log=print) -> dict:
    """Make the built-in synthetic dataset, train EfficientAD-S on each category, calibrate,
    evaluate, write heatmaps and ``report.md``; returns {category: evaluation}. ``steps``:
    one number for every category, or {category: steps}; default :data:`DEMO_STEPS`.
    ``teacher`` and ``penalty_images`` as :func:`train_category` takes them."""
    steps = DEMO_STEPS if steps is None else steps
    steps_of = steps if isinstance(steps, dict) else dict.fromkeys(categories, steps)
    if set(categories) - set(steps_of):
        raise ValueError(f"steps: no number for the categories {sorted(set(categories) - set(steps_of))}")
    out = writable_folder(out)
    data = out / "data"
    started = time.perf_counter()
    log(f"[demo] writing the built-in dataset to {data}")
    make_synthetic(data, seed=seed, categories=tuple(categories), overwrite=True)
    results, summaries = {}, {}
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
    elapsed = time.perf_counter() - started
    table = metrics_table({c: r["metrics"] for c, r in results.items()})
    write_demo_report(out, results, summaries, table, elapsed)
    log("\n" + table)
    log(f"\n[demo] done in {elapsed / 60:.1f} min; report: {out / 'report.md'}")
    return results


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
    log=print,
) -> dict:
    """Train, calibrate and evaluate each category (for each sweep setting) and write
    ``report.md``, ``report.csv``, ``report.json`` and ``report.png`` to ``out``.

    A category that fails is reported with its error and the others go on. Training time is
    training + calibration; inference time is the test split's network and scoring time;
    latency is the paper's protocol at batch 1 (mean ms, image on the host to map on the
    host). ``latency_batches`` also times the first trained model at those batch sizes for
    the latency-against-batch-size chart.
    """
    config = config or TrainConfig()
    config.check()
    runs = _report_runs(data, dataset, categories, sweep)
    out = writable_folder(out)
    rows, latency_curve = [], []
    started = time.perf_counter()
    for i, (category, setting, name) in enumerate(runs, 1):
        label = f"[report {i}/{len(runs)}] {name}"
        log(f"{label}: training {model_size} for {setting.get('steps', config.steps)} steps")
        row = {"dataset": dataset, "category": category or Path(data).name, "model_size": model_size,
               "lr": setting.get("lr", config.lr), "weight_decay": setting.get("weight_decay", config.weight_decay),
               "steps": setting.get("steps", config.steps), "batch_size": setting.get("batch_size", config.batch_size),
               "teacher": setting.get("teacher", teacher or "auto"), "error": None}
        try:
            run_config = dataclasses.replace(config, **{k: v for k, v in setting.items() if k != "teacher"})
            model = _report_run(row, data, dataset, category, out / name, run_config, image_size, device,
                                latency_runs, penalty_images, log, label)
            if not latency_curve and latency_batches:
                for batch in latency_batches:
                    ms = _latency_ms(model, batch, image_size, latency_runs)
                    latency_curve.append({"batch": batch, "ms": ms, "images_per_s": 1e3 * batch / ms})
            log(f"{label}: image AUROC {row['image_auroc']:.3f}, pixel AUROC {row['pixel_auroc']:.3f}, "
                f"latency {row['latency_ms']:.1f} ms")
            del model
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # report it, go on with the next category
            row["error"] = f"{type(exc).__name__}: {exc}"
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / "error.txt").write_text(traceback.format_exc())
            log(f"{label}: FAILED: {row['error']} (details in {out / name / 'error.txt'})")
        rows.append(row)
    result = {
        "dataset": dataset, "data": str(data), "model_size": model_size, "image_size": image_size,
        "device": str(resolve_device(device)), "train_config": dataclasses.asdict(config),
        "sweep": sweep or {}, "teacher": teacher or "auto", "penalty_images": penalty_images, "rows": rows,
        "latency_vs_batch": latency_curve, "total_s": time.perf_counter() - started,
    }
    write_report(result, out)
    return result


def _report_runs(data, dataset: str, categories, sweep) -> list[tuple[str | None, dict, str]]:
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


def _report_run(row: dict, data, dataset, category, out_dir: Path, config: TrainConfig, image_size: int,
                device: str, latency_runs: int | None, penalty_images, log, label: str) -> EfficientAD:
    """Train, evaluate and time one run of a report, filling ``row``; returns the trained model."""
    # overwrite: a report reruns every run of its folder
    model, summary = train_category(data, dataset, category, out_dir, model_size=row["model_size"],
                                    config=config, teacher=row["teacher"], penalty_images=penalty_images,
                                    image_size=image_size, device=device, overwrite=True)
    log(f"{label}: evaluating")
    evaluation = evaluate_model(model, data, dataset, category, image_size=image_size,
                                progress=config.progress, workers=config.workers)
    row.update(headline_metrics(evaluation["metrics"]))
    row["teacher_used"] = summary["teacher"]  # what "auto" chose, or the file's name
    row["penalty_used"] = summary["penalty_source"]
    row["train_s"] = summary["total_seconds"]
    row["infer_s"] = evaluation["timing"]["seconds"]
    row["infer_ms_per_image"] = evaluation["timing"]["ms_per_image"]
    row["latency_ms"] = _latency_ms(model, 1, image_size, latency_runs)
    row["metrics"] = evaluation["metrics"]
    return model
