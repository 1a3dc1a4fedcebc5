"""Numbers as callers hand them over: Python, NumPy (``np.int64`` from an array, ``np.float32``
from a computation) or one-element tensors, never bools or strings."""

from __future__ import annotations

import numbers

import numpy as np
import torch


def is_whole(value: object) -> bool:
    """A Python or NumPy integer (not a bool), or a one-element integer array or tensor (as
    indexing or reducing an array or a tensor hands one over)."""
    if isinstance(value, torch.Tensor):  # one element, as real_number takes
        integral = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
        return value.numel() == 1 and integral
    if isinstance(value, np.ndarray):
        return value.size == 1 and value.dtype.kind in "iu"
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def whole_number(value: object, what: str) -> int:
    """``value`` as an int; TypeError naming ``what`` unless :func:`is_whole`."""
    if not is_whole(value):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    return int(value)  # type: ignore[call-overload]  # an integer, checked above


def real_number(value: object, what: str) -> float:
    """``value`` as a float: a Python or NumPy real number, or a one-element real tensor (as
    a computation hands it over); TypeError naming ``what`` for a bool, a string or others."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
        return float(value.item())
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iuf":
        return float(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        shape = f" of shape {tuple(value.shape)}" if isinstance(value, (torch.Tensor, np.ndarray)) else ""
        raise TypeError(f"{what} must be a number, got {type(value).__name__}{shape}")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float, e.g. 10**400
        raise ValueError(f"{what} must be finite, got an integer too large for a float") from None


MAX_SIDE = 2**16  # pixels a side of any image or map: beyond it torch's size arithmetic overflows


def image_hw(image_size: object, what: str = "image_size") -> tuple[int, int]:
    """(H, W) from one integer (a square) or a pair of integers; TypeError otherwise, and
    ValueError for a side < 1 or > :data:`MAX_SIDE`."""
    if is_whole(image_size):
        side = int(image_size)  # type: ignore[call-overload]
        height, width = side, side
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(is_whole(v) for v in image_size):
        height, width = int(image_size[0]), int(image_size[1])
    else:
        raise TypeError(f"{what} must be an int or (H, W) of ints, got {image_size!r}")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise ValueError(f"{what} must be 1 to {MAX_SIDE} pixels a side, got {height}x{width}")
    return height, width
