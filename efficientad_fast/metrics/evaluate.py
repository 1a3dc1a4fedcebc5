"""The metrics of an evaluation: image and pixel AUROC/F1/AUPR, AU-PRO and, for MVTec
LOCO, per kind (structural, logical) with sPRO."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._inputs import _binary_labels, _binary_mask, _float_array, _image_stack, _to_numpy
from .curves import _Ranking, auc_up_to
from .regions import LOCO_KINDS, _connected_regions, _loco_regions, _saturation, parse_defects_config


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
            raise ValueError(f"shape mismatch: maps are {tuple(amaps.shape)}, masks {tuple(gt.shape)}")
        anomalous = _binary_mask(gt, "masks")
        del gt
    else:
        pair_pixel, pair_region, area, defect_ids, anomalous = _loco_regions(masks, n, (h, w), region_defect_ids)
    normal_with_defect = np.flatnonzero(~y & anomalous.reshape(n, -1).any(axis=1))
    if normal_with_defect.size:
        raise ValueError(
            f"images {normal_with_defect[:5].tolist()} are labelled normal (0) but their "
            "masks have anomalous pixels: are labels and masks in the same order?"
        )

    pixels = _Ranking(amaps, anomalous, "pixels of the masks")
    result = {"pixel_auroc": pixels.auroc(), "pixel_f1": pixels.best_f1(), "pixel_aupr": pixels.average_precision()}
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
        raise ValueError(f"length mismatch: {s.shape[0] if s.ndim else 'scalar'} scores but {len(kinds)} kinds")
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
