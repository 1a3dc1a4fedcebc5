"""Defect regions for the per-region overlap (AU-PRO) and MVTec LOCO's saturated overlap
(sPRO): connected regions, LOCO's defects_config, and the region/defect pairs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._inputs import _image_stack, _to_numpy

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
            f"ground-truth pixel values {unknown} are not in defects_config (known pixel values: {sorted(config)})"
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
        raise ValueError(f"length mismatch: {n} scores but {len(region_defect_ids)} region_defect_ids")
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
            raise ValueError(f"image {i}: {len(regions)} region masks but {len(ids)} region_defect_ids")
        for j, region in enumerate(regions):
            m = _to_numpy(region, f"masks[{i}][{j}]")
            if m.ndim == 3 and m.shape[0] == 1:
                m = m[0]
            if m.shape != (h, w):
                raise ValueError(f"shape mismatch: masks[{i}][{j}] is {tuple(m.shape)}, maps are {(h, w)}")
            flat = np.flatnonzero(m)
            if flat.size == 0:
                raise ValueError(f"masks[{i}][{j}] is empty: a region needs pixels")
            pixels.append(flat + i * h * w)
            defect_ids.append(int(ids[j]) if ids is not None else _mask_defect_id(m, flat, f"masks[{i}][{j}]"))
    return pixels, defect_ids


def _mask_defect_id(m: np.ndarray, flat: np.ndarray, name: str) -> int:
    """The defect pixel_value a region mask carries on its pixels ``flat`` (one value)."""
    values = m.reshape(-1)[flat]
    if m.dtype == np.bool_:
        raise ValueError(
            f"{name} is boolean: give region_defect_ids, or masks whose positive pixels carry the defect's pixel_value"
        )
    if values.min() != values.max():
        raise ValueError(
            f"{name} has several pixel values; one mask is one defect (split it, or use region_defect_ids)"
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
        raise ValueError(f"integer-labelled masks must have an integer dtype, got {labelled.dtype}")
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
                raise ValueError(f"image {image}: label {label} but only {len(ids)} region_defect_ids")
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
    return (pair_pixel, pair_region, area, np.asarray(defect_ids, dtype=np.int64), anomalous.reshape(n, h, w))
