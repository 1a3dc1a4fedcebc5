"""The threshold-free curve core: one sort, cumulative sums; ROC AUC (also up to an FPR
limit), best F1, average precision, the F1-optimal threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._inputs import _binary_labels, _float_array, _to_numpy


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
        self.tps = np.cumsum(np.bincount(self.level_of(self.scores[positive]), minlength=self.levels.size))
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
        starts = np.concatenate(([0], np.cumsum(np.bincount(pair_region, minlength=n_regions))[:-1]))
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
