"""Evaluation metrics for anomaly detection: exact, and frugal enough for whole categories.

    from efficientad_fast.metrics import evaluate, evaluate_loco

    # MVTec AD / VisA / MPDD: image scores (N,), labels (N,) in {0, 1},
    # maps (N, 1, H, W) or (N, H, W) float, masks of the same shape (0 = normal, one
    # positive value = anomalous; resize masks with nearest-neighbour).
    evaluate(scores, labels, maps, masks)
    # -> {"image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupr", "aupro"}

    # MVTec LOCO: per image a list of region masks (ground_truth/<type>/<id>/000.png, ...);
    # each mask's positive pixel value names its defect in defects_config.json.
    evaluate_loco(scores, kinds, maps, masks, defects_config="<cat>/defects_config.json")
    # -> {"structural": {...}, "logical": {...}, "mean": {...}}, each with
    #    "image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupr", "auspro_0.05", "auspro_0.3"

Definitions (all curves are exact: every distinct score is a threshold, ties move together):

- ``image_auroc`` / ``pixel_auroc``: area under the ROC curve (trapezoidal, as
  ``sklearn.metrics.roc_auc_score``); pixels of all images are pooled.
- ``image_f1`` / ``pixel_f1``: best F1 = max over thresholds of 2·TP / (2·TP + FP + FN).
- ``pixel_aupr``: average precision of the pooled pixels (area under the precision-recall
  curve as ``sklearn.metrics.average_precision_score``: Σ (R_k − R_{k−1}) · P_k over the
  distinct scores, descending), as VisA and MVTec AD papers report it.
- ``aupro`` (MVTec AD, Bergmann et al. 2021): regions are the 8-connected components of
  each image's ground-truth mask; PRO(t) = mean over all regions of all images of the
  fraction of the region's pixels scoring ≥ t; FPR(t) over the normal pixels (mask 0) of
  all images. The curve from (0, 0) is integrated with the trapezoidal rule up to FPR
  ``pro_limit`` (0.3; the curve is linearly interpolated there) and divided by it.
- ``auspro_<limit>`` (MVTec LOCO, Bergmann et al. 2022, following its official
  evaluation code): each ground-truth region (one mask file = one defect, whether
  connected or not, possibly overlapping others) saturates at
  ``floor(saturation_threshold × area)`` pixels if its defect's ``relative_saturation``
  is true, else at ``min(saturation_threshold, area)`` pixels (at least 1);
  sPRO(t) = mean over regions of min(overlap / saturation, 1); FPR(t) over the pixels
  that are in no region, of every evaluated image (the good ones *and* the defect-free
  part of the anomalous ones, as the official ``get_fp_tn_areas_per_image`` does).
  Integrated like ``aupro`` for each limit in ``spro_limits`` (0.05 and 0.3).

Cost: one sort of all pixels (O(P log P)), cumulative sums, no thresholds × pixels
matrix; per-region work only touches anomalous pixels. Maps are kept in their own
floating dtype (float32 costs 4 bytes a pixel; half types are widened to float32).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "auc_up_to",
    "average_precision",
    "best_f1",
    "f1_optimal_threshold",
    "evaluate",
    "evaluate_loco",
    "parse_defects_config",
    "roc_auc",
]

LOCO_KINDS = {
    "good": "good",
    "structural": "structural",
    "structural_anomalies": "structural",
    "logical": "logical",
    "logical_anomalies": "logical",
}

# scipy.ndimage.label structure: 8-connectivity inside each image, never across images.
_EIGHT_CONNECTED_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_IMAGE[1] = True


# ----------------------------------------------------------------------------- inputs


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except ValueError as e:  # ragged nested sequences
        raise ValueError(f"{name}: cannot make an array of it ({e})") from None


def _float_array(x: Any, name: str, *, dtype=None) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    elif not np.issubdtype(a.dtype, np.floating):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
        a = a.astype(np.float64)
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN: every score must be a number")
    return a


def _binary_labels(labels: Any, n: int) -> np.ndarray:
    y = _to_numpy(labels, "labels")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (one per image), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"length mismatch: {n} scores but {y.shape[0]} labels")
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number) or not np.isin(y, (0, 1)).all():
            bad = (
                np.unique(y[~np.isin(y, (0, 1))])[:5]
                if np.issubdtype(y.dtype, np.number)
                else y.dtype
            )
            raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got {bad}")
        y = y.astype(bool)
    return y


def _image_stack(x: Any, name: str, n: int, *, floating: bool) -> np.ndarray:
    """(N, H, W) from (N, H, W) or (N, 1, H, W)."""
    a = _float_array(x, name) if floating else _to_numpy(x, name)
    if a.ndim == 4:
        if a.shape[1] != 1:
            raise ValueError(f"{name} must be (N, H, W) or (N, 1, H, W), got {tuple(a.shape)}")
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) or (N, 1, H, W), got {tuple(a.shape)}")
    if a.shape[0] != n:
        raise ValueError(f"length mismatch: {n} scores but {a.shape[0]} {name}")
    return a


def _binary_mask(m: np.ndarray, name: str) -> np.ndarray:
    """Boolean mask from bool, or 0 plus one positive value (0/1, 0/255, 0./1.)."""
    if m.dtype == np.bool_:
        return m
    if not np.issubdtype(m.dtype, np.number):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {m.dtype}")
    top = m.max() if m.size else 0
    if m.size and (m.min() < 0 or not ((m == 0) | (m == top)).all()):
        raise ValueError(
            f"{name} must be binary: 0 for normal and one positive value for anomalous "
            "pixels (resize masks with nearest-neighbour, not bilinear)"
        )
    return m != 0


def parse_defects_config(defects_config: Any) -> dict[int, dict]:
    """MVTec LOCO ``defects_config.json`` as {pixel_value: entry}.

    Accepts a path to the JSON file, its parsed list of entries, or such a mapping. Each
    entry has ``defect_name``, ``pixel_value``, ``saturation_threshold`` and
    ``relative_saturation``.
    """
    if isinstance(defects_config, (str, os.PathLike)):
        with open(defects_config, encoding="utf-8") as f:
            defects_config = json.load(f)
    entries = defects_config.values() if isinstance(defects_config, Mapping) else defects_config
    table: dict[int, dict] = {}
    for entry in entries:
        missing = {"defect_name", "pixel_value", "saturation_threshold", "relative_saturation"}
        missing -= set(entry)
        if missing:
            raise ValueError(f"defects_config entry {entry!r} lacks {sorted(missing)}")
        thr, relative = float(entry["saturation_threshold"]), bool(entry["relative_saturation"])
        if relative and not 0.0 < thr <= 1.0:
            raise ValueError(f"relative saturation_threshold must be in (0, 1]: {entry!r}")
        if not relative and thr <= 0:
            raise ValueError(f"absolute saturation_threshold must be positive: {entry!r}")
        table[int(entry["pixel_value"])] = dict(entry)
    if not table:
        raise ValueError("defects_config has no entries")
    return table


# ------------------------------------------------------------------------- curve core


class _Ranking:
    """Every distinct score of all pixels (or images) as a threshold, from one value sort.

    ``tps[k]`` / ``fps[k]`` count the positives / negatives scoring ≥ the k-th largest
    distinct score ``levels[-1 - k]``. No argsort of all pixels is needed: positives
    (few) are placed on their levels by binary search, then counted.
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray, what: str):
        self.scores, positive = scores.reshape(-1), positive.reshape(-1)
        self.n_pos = int(np.count_nonzero(positive))
        self.n_neg = positive.size - self.n_pos
        if self.n_pos == 0 or self.n_neg == 0:
            only = "normal" if self.n_pos == 0 else "anomalous"
            raise ValueError(
                f"only one class present in the {what} (all {only}): "
                "AUROC, F1 and (s)PRO are undefined without both normal and anomalous ones"
            )
        ascending = np.sort(self.scores)
        new_level = np.empty(ascending.size, dtype=bool)
        new_level[0] = True
        np.not_equal(ascending[1:], ascending[:-1], out=new_level[1:])  # != keeps ±inf apart
        first = np.flatnonzero(new_level)
        del new_level
        self.levels = ascending[first]  # distinct scores, ascending
        del ascending
        at_or_above = (self.scores.size - first)[::-1]  # per level, descending
        del first
        self.tps = np.cumsum(
            np.bincount(self.level_of(self.scores[positive]), minlength=self.levels.size)
        )
        self.fps = at_or_above - self.tps

    def level_of(self, scores: np.ndarray) -> np.ndarray:
        """Index of each score's level, counted from the largest (0) down."""
        return self.levels.size - 1 - np.searchsorted(self.levels, scores, side="left")

    def auroc(self) -> float:
        tpr = np.concatenate(([0.0], self.tps / self.n_pos))
        fpr = np.concatenate(([0.0], self.fps / self.n_neg))
        return float(np.trapezoid(tpr, fpr))

    def best_f1(self) -> float:
        return float(np.max(self.f1_per_level()))

    def f1_per_level(self) -> np.ndarray:
        """F1 of "score >= level" for each level, the largest level first."""
        return 2.0 * self.tps / (self.tps + self.fps + self.n_pos)

    def average_precision(self) -> float:
        """Σ (R_k − R_{k−1}) · P_k over the levels from the largest, R_{−1} = 0."""
        precision = self.tps / (self.tps + self.fps)
        recall_steps = np.diff(np.concatenate(([0], self.tps))) / self.n_pos
        return float(np.sum(recall_steps * precision))

    def overlap_curve(
        self, pair_pixel: np.ndarray, pair_region: np.ndarray, saturation: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, mean saturated region overlap) at every threshold, from (0, 0).

        A region is the pixels ``pair_pixel[pair_region == r]`` (flat indices; regions
        may overlap and together cover exactly the positive pixels); it counts as fully
        found once ``saturation[r]`` of its pixels score at or above the threshold (its
        area gives the plain PRO). The negatives are the pixels in no region.
        """
        n_regions, n_levels = saturation.size, self.levels.size
        pair_score = self.scores[pair_pixel]
        # Inside each region, only its `saturation` best-scoring pixels add to it (ties
        # between them are settled arbitrarily: curve points only fall between levels).
        grouped = np.lexsort((-pair_score.astype(np.float64), pair_region))
        pair_score, pair_region = pair_score[grouped], pair_region[grouped]
        starts = np.concatenate(
            ([0], np.cumsum(np.bincount(pair_region, minlength=n_regions))[:-1])
        )
        rank = np.arange(pair_score.size) - starts[pair_region]
        sat = saturation[pair_region]
        weight = np.where(rank < sat, 1.0 / (n_regions * sat), 0.0)
        # Level of each pixel, counted from the top score, and the cumulative overlap.
        level = self.level_of(pair_score)
        overlap = np.cumsum(np.bincount(level, weights=weight, minlength=n_levels))
        fpr = np.concatenate(([0.0], self.fps / self.n_neg))
        overlap = np.concatenate(([0.0], np.minimum(overlap, 1.0)))
        return fpr, overlap


def auc_up_to(fpr: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under (fpr, y) for fpr in [0, limit], divided by ``limit``.

    ``fpr`` must be non-decreasing from 0; y is linearly interpolated at ``limit`` when no
    point lies exactly there (as MVTec AD's and MVTec LOCO's official ``trapezoid``).
    """
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"FPR integration limit must be in (0, 1], got {limit}")
    fpr, y = np.asarray(fpr, dtype=np.float64), np.asarray(y, dtype=np.float64)
    inside = int(np.searchsorted(fpr, limit, side="right"))
    x_part, y_part = fpr[:inside], y[:inside]
    if x_part[-1] < limit and inside < fpr.size:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x_part, y_part = np.append(x_part, limit), np.append(y_part, y_limit)
    return float(np.trapezoid(y_part, x_part) / limit)


def roc_auc(scores: Any, labels: Any) -> float:
    """Exact ROC AUC of ``scores`` against binary ``labels`` (any matching shapes)."""
    s = _float_array(scores, "scores").reshape(-1)
    y = _binary_labels(_to_numpy(labels, "labels").reshape(-1), s.size)
    return _Ranking(s, y, "labels").auroc()


def best_f1(scores: Any, labels: Any) -> float:
    """Best F1 over all thresholds of ``scores`` against binary ``labels``."""
    s = _float_array(scores, "scores").reshape(-1)
    y = _binary_labels(_to_numpy(labels, "labels").reshape(-1), s.size)
    return _Ranking(s, y, "labels").best_f1()


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision (area under the precision-recall curve, as
    ``sklearn.metrics.average_precision_score``) of ``scores`` against binary ``labels``."""
    s = _float_array(scores, "scores").reshape(-1)
    y = _binary_labels(_to_numpy(labels, "labels").reshape(-1), s.size)
    return _Ranking(s, y, "labels").average_precision()


def f1_optimal_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """The decision threshold ``t`` for the rule "anomalous when score > t" with the best F1
    on ``scores`` against binary ``labels``, and that F1. ``t`` lies halfway between the
    lowest score the best rule flags and the next lower score (just below the lowest score
    when the best rule flags everything), so scores seen here are never on the boundary."""
    s = _float_array(scores, "scores", dtype=np.float64).reshape(-1)
    y = _binary_labels(_to_numpy(labels, "labels").reshape(-1), s.size)
    ranking = _Ranking(s, y, "labels")
    f1 = ranking.f1_per_level()
    best = int(np.argmax(f1))  # ties: the highest threshold (fewest images flagged)
    index = ranking.levels.size - 1 - best  # ascending position of the lowest flagged score
    lowest_flagged = float(ranking.levels[index])
    if index == 0:
        below = lowest_flagged - max(1.0, abs(lowest_flagged)) * 1e-6
    else:
        below = 0.5 * (lowest_flagged + float(ranking.levels[index - 1]))
    return below, float(f1[best])


# ------------------------------------------------------------------------ regions


def _connected_regions(anomalous: np.ndarray):
    """8-connected components of each image of a (N, H, W) bool stack, as pairs."""
    from scipy import ndimage

    labelled, n_regions = ndimage.label(anomalous, structure=_EIGHT_CONNECTED_PER_IMAGE)
    labelled = labelled.reshape(-1)
    pair_pixel = np.flatnonzero(labelled)
    pair_region = labelled[pair_pixel].astype(np.int64) - 1
    area = np.bincount(pair_region, minlength=n_regions)
    return pair_pixel, pair_region, area


def _saturation(area: np.ndarray, defect_ids: np.ndarray, config: dict[int, dict]) -> np.ndarray:
    unknown = sorted(set(defect_ids.tolist()) - set(config))
    if unknown:
        raise ValueError(
            f"ground-truth pixel values {unknown} are not in defects_config "
            f"(known pixel values: {sorted(config)})"
        )
    sat = np.empty(area.size, dtype=np.float64)
    for i, (a, d) in enumerate(zip(area.tolist(), defect_ids.tolist())):
        entry = config[d]
        thr = float(entry["saturation_threshold"])
        sat[i] = np.floor(thr * a) if entry["relative_saturation"] else min(thr, a)
    return np.maximum(sat, 1.0)


def _loco_regions(masks: Any, n: int, hw: tuple[int, int], region_defect_ids: Any):
    """Regions of LOCO ground truth as pairs, their areas, defect ids, and the union mask.

    ``masks`` is either a sequence of N entries, each None/empty (no defect) or a
    sequence (or (K, H, W) stack) of region masks, or an integer-labelled (N, H, W) /
    (N, 1, H, W) array where each positive value of an image is one region.
    """
    if region_defect_ids is not None and len(region_defect_ids) != n:
        raise ValueError(
            f"length mismatch: {n} scores but {len(region_defect_ids)} region_defect_ids"
        )
    if isinstance(masks, (list, tuple)):
        pixels, defect_ids = _listed_regions(masks, n, hw, region_defect_ids)
    else:
        pixels, defect_ids = _labelled_regions(masks, n, hw, region_defect_ids)
    return _region_pairs(pixels, defect_ids, n, hw)


def _listed_regions(
    masks: Sequence, n: int, hw: tuple[int, int], region_defect_ids: Any
) -> tuple[list[np.ndarray], list[int]]:
    """Flat pixel indices and defect id of each region mask of the sequence form."""
    h, w = hw
    if len(masks) != n:
        raise ValueError(f"length mismatch: {n} scores but {len(masks)} masks")
    pixels: list[np.ndarray] = []
    defect_ids: list[int] = []
    for i, entry in enumerate(masks):
        regions = [] if entry is None else entry
        if isinstance(regions, (np.ndarray, torch.Tensor)) and regions.ndim == 2:
            regions = [regions]
        ids = None if region_defect_ids is None else region_defect_ids[i]
        if ids is not None and len(ids) != len(regions):
            raise ValueError(
                f"image {i}: {len(regions)} region masks but {len(ids)} region_defect_ids"
            )
        for j, region in enumerate(regions):
            m = _to_numpy(region, f"masks[{i}][{j}]")
            if m.ndim == 3 and m.shape[0] == 1:
                m = m[0]
            if m.shape != (h, w):
                raise ValueError(
                    f"shape mismatch: masks[{i}][{j}] is {tuple(m.shape)}, maps are {(h, w)}"
                )
            flat = np.flatnonzero(m)
            if flat.size == 0:
                raise ValueError(f"masks[{i}][{j}] is empty: a region needs pixels")
            pixels.append(flat + i * h * w)
            defect_ids.append(
                int(ids[j]) if ids is not None else _mask_defect_id(m, flat, f"masks[{i}][{j}]")
            )
    return pixels, defect_ids


def _mask_defect_id(m: np.ndarray, flat: np.ndarray, name: str) -> int:
    """The defect pixel_value a region mask carries on its pixels ``flat`` (one value)."""
    values = m.reshape(-1)[flat]
    if m.dtype == np.bool_:
        raise ValueError(
            f"{name} is boolean: give region_defect_ids, or masks "
            "whose positive pixels carry the defect's pixel_value"
        )
    if values.min() != values.max():
        raise ValueError(
            f"{name} has several pixel values; one mask is one "
            "defect (split it, or use region_defect_ids)"
        )
    return int(values[0])


def _labelled_regions(
    masks: Any, n: int, hw: tuple[int, int], region_defect_ids: Any
) -> tuple[list[np.ndarray], list[int]]:
    """Flat pixel indices and defect id of each (image, label) region of the labelled form."""
    h, w = hw
    labelled = _image_stack(masks, "masks", n, floating=False)
    if labelled.shape[1:] != (h, w):
        raise ValueError(f"shape mismatch: masks are {tuple(labelled.shape)}, maps {(n, h, w)}")
    if not (np.issubdtype(labelled.dtype, np.integer) or labelled.dtype == np.bool_):
        raise ValueError(
            f"integer-labelled masks must have an integer dtype, got {labelled.dtype}"
        )
    flat_labels = labelled.reshape(-1)
    where = np.flatnonzero(flat_labels)
    values = flat_labels[where].astype(np.int64)
    if values.size and values.min() < 0:
        raise ValueError("integer-labelled masks must be >= 0 (0 = normal)")
    stride = int(values.max(initial=0)) + 1
    keys, region_of = np.unique((where // (h * w)) * stride + values, return_inverse=True)
    region_of = region_of.reshape(-1)
    image_of, label_of = keys // stride, keys % stride
    defect_ids: list[int] = []
    for image, label in zip(image_of.tolist(), label_of.tolist()):
        if region_defect_ids is None:
            defect_ids.append(label)
        else:
            ids = region_defect_ids[image]
            if label > len(ids):
                raise ValueError(
                    f"image {image}: label {label} but only {len(ids)} region_defect_ids"
                )
            defect_ids.append(int(ids[label - 1]))
    order = np.argsort(region_of, kind="stable")
    split = np.cumsum(np.bincount(region_of, minlength=keys.size))[:-1]
    pixels = np.split(where[order], split) if keys.size else []
    return pixels, defect_ids


def _region_pairs(pixels: Sequence[np.ndarray], defect_ids: Sequence[int], n: int, hw: tuple[int, int]):
    """(pair_pixel, pair_region, area, defect_ids, union mask (N, H, W)) of flat regions."""
    h, w = hw
    if pixels:
        pair_pixel = np.concatenate(pixels)
        area = np.array([p.size for p in pixels], dtype=np.int64)
        pair_region = np.repeat(np.arange(area.size), area)
    else:
        pair_pixel = pair_region = area = np.zeros(0, dtype=np.int64)
    anomalous = np.zeros(n * h * w, dtype=bool)
    anomalous[pair_pixel] = True
    return (
        pair_pixel,
        pair_region,
        area,
        np.asarray(defect_ids, dtype=np.int64),
        anomalous.reshape(n, h, w),
    )


# ------------------------------------------------------------------------- evaluate


def evaluate(
    scores: Any,
    labels: Any,
    maps: Any = None,
    masks: Any = None,
    *,
    defects_config: Any = None,
    region_defect_ids: Sequence[Sequence[int]] | None = None,
    pro_limit: float = 0.3,
    spro_limits: Sequence[float] = (0.05, 0.3),
) -> dict[str, float]:
    """Image- and pixel-level metrics of one test set (see the module docstring).

    Args:
        scores: (N,) image anomaly scores (numpy, torch or a sequence; no NaN).
        labels: (N,) 0 = normal, 1 = anomalous (bool or integers 0/1).
        maps: optional (N, H, W) or (N, 1, H, W) anomaly maps, same size as the masks.
        masks: ground truth, required with ``maps``. Without ``defects_config`` (MVTec AD,
            VisA, MPDD): a (N, H, W) or (N, 1, H, W) array, 0 = normal and one positive
            value (1, 255, True) = anomalous; regions for ``aupro`` are its 8-connected
            components per image. With ``defects_config`` (MVTec LOCO), either
            - a sequence of N entries, one per image: None or [] for a good image, else
              a sequence (or (K, H, W) stack) of region masks (H, W), one per ground-truth
              file 000.png, 001.png, ..., each nonzero only on its region, with the
              defect's ``pixel_value`` (the PNG as read); regions may overlap; or
            - an integer-labelled (N, H, W) / (N, 1, H, W) array: each distinct positive
              value of an image is one region (connected or not), and that value is its
              defect's ``pixel_value`` unless ``region_defect_ids`` says otherwise.
        defects_config: MVTec LOCO ``defects_config.json`` (path, parsed list, or
            {pixel_value: entry}); switches ``aupro`` for ``auspro_<limit>``.
        region_defect_ids: optional, per image, the defect ``pixel_value`` of each region:
            of its j-th region mask (sequence form; needed for boolean masks), or of
            label j + 1 (integer-labelled form).
        pro_limit: FPR integration limit of ``aupro``.
        spro_limits: FPR integration limits of ``auspro``; keys are ``f"auspro_{limit:g}"``.

    Returns:
        {"image_auroc", "image_f1"} plus, with maps, {"pixel_auroc", "pixel_f1", "pixel_aupr"} and
        "aupro" (no defects_config) or "auspro_0.05", "auspro_0.3" (with it).

    Raises:
        ValueError: on length or shape mismatches, labels other than 0/1, NaN scores or
            maps, non-binary masks, a normal-labelled image with anomalous pixels, unknown
            defect pixel values, or when only one class is present among the images or
            pixels (AUROC is undefined then).
    """
    s = _float_array(scores, "scores", dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per image), got shape {tuple(s.shape)}")
    y = _binary_labels(labels, s.shape[0])
    image = _Ranking(s, y, "image labels")
    result = {"image_auroc": image.auroc(), "image_f1": image.best_f1()}
    del image
    if maps is None:
        if masks is not None:
            raise ValueError("masks given without maps: pixel metrics need both")
        return result
    if masks is None:
        raise ValueError("maps given without masks: pixel metrics need the ground truth")

    result.update(
        _pixel_metrics(
            maps,
            masks,
            y,
            defects_config=defects_config,
            region_defect_ids=region_defect_ids,
            pro_limit=pro_limit,
            spro_limits=spro_limits,
        )
    )
    return result


def _pixel_metrics(
    maps: Any,
    masks: Any,
    y: np.ndarray,
    *,
    defects_config: Any,
    region_defect_ids: Any,
    pro_limit: float,
    spro_limits: Sequence[float],
) -> dict[str, float]:
    """The pixel half of :func:`evaluate`: pixel AUROC, F1 and AUPR, then (s)PRO."""
    amaps = _image_stack(maps, "maps", y.shape[0], floating=True)
    n, h, w = amaps.shape
    config = None if defects_config is None else parse_defects_config(defects_config)
    if config is None:
        gt = _image_stack(masks, "masks", n, floating=False)
        if gt.shape != amaps.shape:
            raise ValueError(
                f"shape mismatch: maps are {tuple(amaps.shape)}, masks {tuple(gt.shape)}"
            )
        anomalous = _binary_mask(gt, "masks")
        del gt
    else:
        pair_pixel, pair_region, area, defect_ids, anomalous = _loco_regions(
            masks, n, (h, w), region_defect_ids
        )
    normal_with_defect = np.flatnonzero(~y & anomalous.reshape(n, -1).any(axis=1))
    if normal_with_defect.size:
        raise ValueError(
            f"images {normal_with_defect[:5].tolist()} are labelled normal (0) but their "
            "masks have anomalous pixels: are labels and masks in the same order?"
        )

    pixels = _Ranking(amaps, anomalous, "pixels of the masks")
    result = {"pixel_auroc": pixels.auroc(), "pixel_f1": pixels.best_f1(),
              "pixel_aupr": pixels.average_precision()}
    if config is None:
        pair_pixel, pair_region, area = _connected_regions(anomalous)
        del anomalous
        fpr, pro = pixels.overlap_curve(pair_pixel, pair_region, area.astype(np.float64))
        result["aupro"] = auc_up_to(fpr, pro, pro_limit)
    else:
        del anomalous
        saturation = _saturation(area, defect_ids, config)
        fpr, spro = pixels.overlap_curve(pair_pixel, pair_region, saturation)
        for limit in spro_limits:
            result[f"auspro_{limit:g}"] = auc_up_to(fpr, spro, limit)
    return result


def _take(x: Any, idx: np.ndarray) -> Any:
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return [x[i] for i in idx.tolist()]
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(idx)]
    return np.asarray(x)[idx]


def evaluate_loco(
    scores: Any,
    kinds: Sequence[str],
    maps: Any = None,
    masks: Any = None,
    *,
    defects_config: Any = None,
    region_defect_ids: Sequence[Sequence[int]] | None = None,
    spro_limits: Sequence[float] = (0.05, 0.3),
) -> dict[str, dict[str, float]]:
    """MVTec LOCO metrics, structural and logical anomalies apart (as the LOCO paper).

    Args:
        scores: (N,) image scores of the whole test set.
        kinds: (N,) per image "good", "structural" or "logical" (the folder names
            "structural_anomalies" / "logical_anomalies" are accepted too).
        maps, masks, region_defect_ids: as in :func:`evaluate` (LOCO forms); optional.
        defects_config: required with maps.
        spro_limits: FPR integration limits of sPRO.

    Returns:
        {"structural": evaluate(good + structural images), "logical": evaluate(good +
        logical images), "mean": the mean of the two for every metric}.
    """
    kinds = [str(k) for k in kinds]
    s = _to_numpy(scores, "scores")
    if len(kinds) != (s.shape[0] if s.ndim else -1):
        raise ValueError(
            f"length mismatch: {s.shape[0] if s.ndim else 'scalar'} scores but {len(kinds)} kinds"
        )
    unknown = sorted(set(kinds) - set(LOCO_KINDS))
    if unknown:
        raise ValueError(f"kinds must be one of {sorted(LOCO_KINDS)}, got {unknown}")
    if maps is not None and defects_config is None:
        raise ValueError("MVTec LOCO pixel metrics need defects_config (for sPRO)")
    kind = np.array([LOCO_KINDS[k] for k in kinds])
    out: dict[str, dict[str, float]] = {}
    for group in ("structural", "logical"):
        idx = np.flatnonzero((kind == "good") | (kind == group))
        out[group] = evaluate(
            _take(scores, idx),
            (kind[idx] == group).astype(np.int64),
            _take(maps, idx),
            _take(masks, idx),
            defects_config=defects_config,
            region_defect_ids=_take(region_defect_ids, idx),
            spro_limits=spro_limits,
        )
    out["mean"] = {k: 0.5 * (out["structural"][k] + out["logical"][k]) for k in out["structural"]}
    return out
