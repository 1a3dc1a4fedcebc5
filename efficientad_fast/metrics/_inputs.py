"""Checking and converting the metrics' inputs (arrays or tensors) with errors that name them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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
            bad = np.unique(y[~np.isin(y, (0, 1))])[:5] if np.issubdtype(y.dtype, np.number) else y.dtype
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
