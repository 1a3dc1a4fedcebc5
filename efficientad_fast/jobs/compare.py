"""The comparison runs of ``report --compare`` (issue 26): PatchCore, PaDiM or FastFlow
(:mod:`efficientad_fast.baselines`) fitted on a category's training images, then judged by the
same metrics code (:func:`.evaluate.evaluate_model`) and timed by the same protocol
(:func:`efficientad_fast.benchmark.time_scorer`) as EfficientAD in the same report."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._device import resolve_device
from ..baselines.anomalib_models import RANDOM_LABEL, Baseline, resolve_backbone
from ..benchmark import time_scorer
from ..data import open_dataset
from ..model import Prediction
from ..report import headline_metrics
from .evaluate import evaluate_model


class BaselineScorer:
    """A fitted baseline as :func:`.evaluate.evaluate_model` scores with a model: ``predict``
    returns a :class:`~efficientad_fast.model.Prediction` (no thresholds, no tiles)."""

    tile: int | None = 0  # baselines score whole images
    quantiles_set = False  # no calibrated threshold: heatmaps are drawn without one

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.device = baseline.mean.device

    def predict(self, images: torch.Tensor, *, tile: int | None = None, overlap: int = 0) -> Prediction:
        anomaly_map, score = self.baseline(images.to(self.device))
        return Prediction(score=score, anomaly_map=anomaly_map)


def compare_row(data, dataset: str, category: str | None, model: str) -> dict:
    """A comparison row's settings before its run fills in the results; ``error`` None."""
    return {
        "dataset": dataset,
        "category": category or Path(data).name,
        "model": model,
        "backbone": None,
        "error": None,
    }


def model_mib(module: torch.nn.Module) -> float:
    """MiB of a model's parameters and buffers (PatchCore's memory bank, PaDiM's Gaussians
    included): what it holds in memory to score, whatever else the process holds."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def compare_run(
    data: str | os.PathLike,
    dataset: str,
    category: str | None,
    *,
    model: str,
    image_size: int,
    device: str,
    budget_s: float | None = None,
    budget_note: str = "",
    latency_runs: int | None = None,
    workers: int = 2,
    progress: bool = True,
    seed: int = 0,
    random_weights: bool = False,
    log=print,
    label: str = "",
) -> dict:
    """Fit ``model`` (one of :data:`~efficientad_fast.baselines.BASELINES`) on the category's
    training images, evaluate it on the test split and time it at batch 1; returns
    {"row", "latency_vs_batch"} as a report run does. FastFlow trains for ``budget_s`` seconds
    (None: its epoch cap; ``budget_note`` says where the budget came from); PatchCore and
    PaDiM fit in one pass. ``random_weights``: a random backbone, for plumbing tests (the row
    is marked ``plumbing_only`` and never shown as a result). Raises what fails
    (:class:`~efficientad_fast.baselines.BackboneMissing` says what to fetch)."""
    row = compare_row(data, dataset, category, model)
    backbone = resolve_backbone(model, random_weights=random_weights)
    row["backbone"] = backbone.label
    row["plumbing_only"] = RANDOM_LABEL in backbone.label
    row["budget"] = budget_note if model == "fastflow" else "one pass"
    torch_device = resolve_device(device)
    size = (image_size, image_size)
    train = open_dataset(data, dataset, category, "train", size)
    if len(train) == 0:
        raise ValueError(f"no training images for {row['category']} in {data}")
    images = torch.stack([train[i]["image"] for i in range(len(train))]).to(torch_device)
    baseline = Baseline(model, backbone, size, seed=seed).to(torch_device)
    log(f"{label}: fitting {model} on {len(train)} images ({backbone.label})")
    fitted = baseline.fit(images, budget_s=budget_s if model == "fastflow" else None, seed=seed, progress=progress)
    del images
    log(f"{label}: evaluating")
    evaluation = evaluate_model(
        BaselineScorer(baseline), data, dataset, category, image_size=image_size, progress=progress, workers=workers
    )
    timing = time_scorer(baseline, model, torch_device, 1, image_size=image_size, warmup=1, runs=latency_runs)
    row.update(headline_metrics(evaluation["metrics"]))
    row.update(
        train_s=fitted["train_s"],
        epochs=fitted["epochs"],
        infer_s=evaluation["timing"]["seconds"],
        infer_ms_per_image=evaluation["timing"]["ms_per_image"],
        images_per_s=1e3 / evaluation["timing"]["ms_per_image"],
        latency_ms=timing.mean_ms,
        model_mib=model_mib(baseline),
        metrics=evaluation["metrics"],
    )
    return {"row": row, "latency_vs_batch": []}
