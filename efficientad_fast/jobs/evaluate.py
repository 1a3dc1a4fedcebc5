"""The eval job: a model's metrics, timing and heatmaps on a test split."""

from __future__ import annotations

import os
import time
from typing import Protocol

import numpy as np
import torch

from .. import metrics as metrics_lib
from .._numbers import image_hw
from ..data import make_loader, open_dataset, read_loco_defects_config
from ..heatmaps import default_threshold, write_eval_heatmaps
from ..model import Prediction
from ..tiling import check_tile


class Scorer(Protocol):
    """What :func:`evaluate_model` needs of a model: EfficientAD, or a comparison model behind
    :class:`.compare.BaselineScorer`."""

    tile: int | None

    def predict(self, images: torch.Tensor, *, tile: int | None = ..., overlap: int = ...) -> Prediction: ...


def check_tiling(model: Scorer, tile: int | None, overlap: int, size: tuple[int, int]) -> None:
    """Before any image is read: ValueError when ``model.predict(tile=tile, overlap=overlap)``
    cannot tile images of ``size`` (None: the model's own tile; 0: no tiles)."""
    if tile is None and model.tile:
        try:
            check_tile(model.tile, overlap, *size)
        except ValueError as exc:  # the model file's own setting, not an option the user gave
            raise ValueError(f"the model's own tile (set by train --tile): {exc}; or give --tile") from None
    elif tile:
        check_tile(tile, overlap, *size)


@torch.no_grad()
def evaluate_model(
    model: Scorer,
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
    size = image_hw(image_size)
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
            rows.append(
                {
                    "path": batch["path"][i],
                    "defect": batch["defect"][i],
                    "kind": batch["kind"][i],
                    "label": int(batch["label"][i]),
                    "score": float(score[i]),
                }
            )
    score_all = torch.cat(scores).numpy()
    map_all, mask_all = np.concatenate(maps), np.concatenate(masks)
    labels = np.array([r["label"] for r in rows])
    result: dict[str, float] | dict[str, dict[str, float]]
    if test.name == "mvtec_loco":
        assert category is not None  # open_dataset refuses MVTec LOCO without a category
        regions = [
            [m.numpy() * value for m, value in test.region_masks(i)] if labels[i] else None for i in range(len(test))
        ]
        result = metrics_lib.evaluate_loco(
            score_all,
            [r["kind"] for r in rows],
            map_all,
            regions,
            defects_config=read_loco_defects_config(data, category),
        )
    else:
        result = metrics_lib.evaluate(score_all, labels, map_all, mask_all)
    if heatmap_dir is not None:
        write_eval_heatmaps(
            test,
            rows,
            map_all,
            mask_all,
            heatmap_dir,
            heatmaps_per_defect,
            threshold if threshold is not None else default_threshold(model),
        )
    n = len(rows)
    timing = {
        "images": n,
        "seconds": infer_seconds,
        "ms_per_image": 1000 * infer_seconds / max(1, n),
        "batch_size": batch_size,
    }
    return {"metrics": result, "images": rows, "timing": timing}
