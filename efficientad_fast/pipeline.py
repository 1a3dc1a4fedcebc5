"""The jobs behind the command line: train a category (train, calibrate, save), evaluate a
model on a test split, predict image files with heatmaps, and the built-in demo."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import metrics as metrics_lib

from .data import make_loader, open_dataset, split_train_validation
from .data._io import IMAGE_SUFFIXES, list_images, open_image, to_rgb_array
from .inference import resolve_device  # noqa: F401  (pipeline.resolve_device for callers)
from .model import EfficientAD
from .train import TrainConfig, calibrate, load_images_uint8, train, write_training_log

MODEL_FILE = "model.pt"
# Normalized maps put the q_b (99.5 %) level of normal training maps at 0.1 (both maps,
# any alpha): pixels above it are flagged by default.
DEFAULT_THRESHOLD = 0.1


def build_model(model_size: str = "small", teacher: str | None = None, padding: bool = False,
                seed: int = 0) -> EfficientAD:
    """A new EfficientAD with networks initialized from ``seed``. ``teacher``: None /
    "random" (the PDN's default initialization), "distilled" (the shipped ImageNet-distilled
    PDN-S teacher, see efficientad_fast.teachers) or a teacher file."""
    torch.manual_seed(seed)
    return EfficientAD(model_size=model_size, padding=padding, teacher=teacher or "random")


class GenericImages(Dataset):
    """Generic natural images for the penalty loss, found recursively under ``folders``:
    resized to twice the model size and centre-cropped (as anomalib prepares ImageNet)."""

    def __init__(self, folders, image_size: tuple[int, int]) -> None:
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        self.paths = []
        for folder in folders:
            folder = Path(folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"penalty image folder {folder} does not exist")
            self.paths += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(map(str, folders))}")
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        h, w = self.image_size
        big = torch.from_numpy(to_rgb_array(open_image(self.paths[index], "penalty image"), (2 * h, 2 * w)))
        top, left = (big.shape[1] - h) // 2, (big.shape[2] - w) // 2
        return big[:, top:top + h, left:left + w]


def _held_out(data, dataset, category, train_set, image_size, fraction, seed):
    """MVTec LOCO (and folder datasets with validation/good) bring their own held-out set;
    elsewhere a seeded fraction of train is held out."""
    own = train_set.name == "mvtec_loco" or (
        train_set.name == "folder" and (Path(data) / (category or "") / "validation").is_dir())
    if own:  # errors in that folder surface; no silent fallback to a split of train
        return train_set, open_dataset(data, dataset, category, "validation", image_size)
    return split_train_validation(train_set, fraction=fraction, seed=seed)


def train_category(
    data: str | os.PathLike,
    dataset: str,
    category: str | None,
    out: str | os.PathLike,
    *,
    model_size: str = "small",
    config: TrainConfig | None = None,
    teacher: str | None = None,
    penalty_images=None,
    image_size: int | tuple[int, int] = 256,
    padding: bool = False,
    device: str = "auto",
    resume: bool = False,
    validation_fraction: float = 0.1,
) -> tuple[EfficientAD, dict]:
    """Train, calibrate on held-out training images and save ``out/model.pt``, with
    ``train_log.jsonl``, ``loss_curve.png`` and ``train_summary.json``."""
    config = config or TrainConfig()
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_set = open_dataset(data, dataset, category, "train", size)
    train_set, held_out = _held_out(data, dataset, category, train_set, size, validation_fraction, config.seed)
    penalty = GenericImages(penalty_images, size) if penalty_images else None
    dev = resolve_device(device)
    model = build_model(model_size, teacher, padding, config.seed).to(dev)

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
        from .data import load_defects_config

        regions = [[m.numpy() * value for m, value in test.region_masks(i)] if labels[i] else None
                   for i in range(len(test))]
        result = metrics_lib.evaluate_loco(
            score_all, [r["kind"] for r in rows], map_all, regions,
            defects_config=load_defects_config(data, category),
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


def default_threshold(model: EfficientAD) -> float | None:
    return DEFAULT_THRESHOLD if model.quantiles_set else None


# -- pictures ----------------------------------------------------------------------------


def heatmap_overlay(image: np.ndarray, amap: np.ndarray, threshold: float | None,
                    mask: np.ndarray | None = None, vmax: float | None = None) -> np.ndarray:
    """uint8 (H, 2W+, 3): the image | the image under a colour map of ``amap`` with the
    threshold's contour in white (and the ground truth's in green when ``mask`` is given).
    Colours span [0, vmax]; vmax defaults to 3 x threshold (per-image max without one)."""
    from matplotlib import colormaps
    from scipy import ndimage

    img = np.clip(image.transpose(1, 2, 0) if image.shape[0] == 3 else image, 0, 1)
    top = vmax if vmax is not None else (3 * threshold if threshold else float(np.nanmax(amap)) or 1.0)
    colours = colormaps["inferno"](np.clip(np.nan_to_num(amap) / top, 0, 1))[..., :3]
    blended = 0.55 * img + 0.45 * colours

    def outline(region: np.ndarray) -> np.ndarray:
        return region & ~ndimage.binary_erosion(region, iterations=1)

    if threshold is not None:
        blended[outline(amap > threshold)] = (1.0, 1.0, 1.0)
    if mask is not None and mask.any():
        blended[outline(mask.astype(bool))] = (0.2, 1.0, 0.2)
    gap = np.ones((img.shape[0], 4, 3))
    return (np.concatenate([img, gap, blended], axis=1) * 255).round().astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_eval_heatmaps(test, rows, maps, masks, out_dir, per_defect: int, threshold) -> list[Path]:
    out_dir = Path(out_dir)
    written, seen = [], {}
    for i, row in enumerate(rows):
        if seen.get(row["defect"], 0) >= per_defect:
            continue
        seen[row["defect"]] = seen.get(row["defect"], 0) + 1
        image = test[i]["image"].numpy()
        path = out_dir / f"{row['defect']}_{Path(row['path']).stem}.png"
        save_png(heatmap_overlay(image, maps[i], threshold, masks[i]), path)
        written.append(path)
    return written


# -- prediction on files -----------------------------------------------------------------


def collect_image_paths(inputs) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in a stable order."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {item}")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    return paths


@torch.no_grad()
def predict_files(model: EfficientAD, inputs, out_dir, *, image_size: int | tuple[int, int] = 256,
                  batch_size: int = 8, threshold: float | None = None, heatmaps: bool = True,
                  progress: bool = True) -> Path:
    """Score image files: ``out_dir/scores.csv`` (path, score, anomalous) and, per image,
    ``out_dir/heatmaps/<name>.png``. Returns the CSV's path."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    paths = collect_image_paths(inputs)
    threshold = threshold if threshold is not None else default_threshold(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    chunks = range(0, len(paths), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="predicting", dynamic_ncols=True)
    used_names: set[str] = set()
    for start in chunks:
        batch_paths = paths[start:start + batch_size]
        images = torch.stack([torch.from_numpy(to_rgb_array(open_image(p), size)) for p in batch_paths])
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
    csv_path = out_dir / "scores.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


# -- reports -----------------------------------------------------------------------------


def _flatten_metrics(result: dict) -> dict[str, float]:
    if all(isinstance(v, dict) for v in result.values()):  # LOCO: structural / logical / mean
        return {f"{part}/{k}": v for part, values in result.items() for k, v in values.items()}
    return dict(result)


def metrics_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per category, one column per metric."""
    flat = {name: _flatten_metrics(r) for name, r in results.items()}
    columns = list(dict.fromkeys(k for r in flat.values() for k in r))
    lines = ["| category | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in flat.items():
        cells = [f"{values[c]:.3f}" if isinstance(values.get(c), float) and not math.isnan(values[c])
                 else str(values.get(c, "")) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_metrics(evaluation: dict, out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``metrics.json`` (metrics, timing, per-image scores) and ``metrics.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "metrics.json", out_dir / "metrics.md"
    json_path.write_text(json.dumps(evaluation, indent=2))
    timing = evaluation["timing"]
    md_path.write_text(
        f"# EfficientAD evaluation: {name}\n\n{metrics_table({name: evaluation['metrics']})}\n\n"
        f"{timing['images']} test images, {timing['ms_per_image']:.1f} ms per image "
        f"(batch {timing['batch_size']}, network + scoring).\n"
    )
    return json_path, md_path


# -- the built-in demo -------------------------------------------------------------------

DEMO_STEPS = 250
# bf16 autocast halves the step time on CPUs with AVX-512 BF16 (bench/bench_train.py).
DEMO_AMP = "bf16"


def run_demo(out: str | os.PathLike = "demo_out", *, steps: int = DEMO_STEPS, seed: int = 0,
             categories=("weave", "board"), device: str = "auto", batch_size: int = 1,
             amp: str | None = DEMO_AMP, teacher: str = "random", progress: bool = True,
             log=print) -> dict:
    """Make the built-in synthetic dataset, train EfficientAD-S on each category, calibrate,
    evaluate, write heatmaps and ``report.md``; returns {category: evaluation}."""
    from .data import make_synthetic

    out = Path(out)
    data = out / "data"
    started = time.perf_counter()
    log(f"[demo] writing the built-in dataset to {data}")
    make_synthetic(data, seed=seed, categories=tuple(categories), overwrite=True)
    results, summaries = {}, {}
    for category in categories:
        log(f"[demo] {category}: training EfficientAD-S for {steps} steps")
        config = TrainConfig(steps=steps, batch_size=batch_size, seed=seed, amp=amp,
                             checkpoint_every=0, progress=progress)
        model, summaries[category] = train_category(data, "mvtec_ad", category, out / category,
                                                    config=config, device=device, teacher=teacher)
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


def write_demo_report(out: Path, results: dict, summaries: dict, table: str, elapsed: float) -> Path:
    lines = [
        "# efficientad_fast demo",
        "",
        "EfficientAD-S trained on the built-in synthetic dataset (efficientad_fast.data.make_synthetic) "
        f"with the teacher: {next(iter(summaries.values()))['teacher']}, calibrated on held-out "
        "training images and evaluated on the test split.",
        "",
        table,
        "",
        f"Total time {elapsed / 60:.1f} min (dataset, training, calibration, evaluation, pictures).",
        "",
    ]
    for category, evaluation in results.items():
        s = summaries[category]
        lines += [
            f"## {category}",
            "",
            f"{s['train_images']} training images, {s['held_out_images']} held out for the quantiles, "
            f"{s['train_config']['steps']} steps at {s['seconds_per_step']:.2f} s/step on {s['device']}; "
            f"inference {evaluation['timing']['ms_per_image']:.0f} ms/image.",
            "",
            f"![loss curve]({category}/loss_curve.png)",
            "",
            "Heatmaps (left: image; right: anomaly map, white = above threshold, green = ground truth):",
            "",
        ]
        for png in sorted((out / category / "heatmaps").glob("*.png")):
            lines.append(f"![{png.stem}]({category}/heatmaps/{png.name})")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
