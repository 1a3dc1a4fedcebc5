"""The fused anomaly-map op: the public wrapper over ``torch.ops.efficientad_fast.anomaly_map``
(loaded, with its fake kernel for ``torch.compile`` and ``torch.export``, by ``_library``).

The C++ kernels check every argument; the wrapper checks only what it must itself: that the
features are tensors (a clear TypeError), and the quantiles and output_size it accepts in
more forms than the op (errors that quote the caller's value)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._library import load_extension
from .reference import OutputSize, Quantiles

DISTANCES = ("l2", "cosine")  # the op's distance names (the C++ checks them)


def _op() -> Any:
    # Under torch.compile the library must already be loaded (the import does it when it is
    # built; else any eager call or efficientad_fast.load_extension()): loading is not traceable.
    if not torch.compiler.is_compiling():
        load_extension()
    return torch.ops.efficientad_fast.anomaly_map.default


def _as_quantiles(quantiles: Quantiles) -> tuple[torch.Tensor | None, list[float] | None]:
    """``(quantiles tensor, quantile values)`` for the op, at most one of them set: a tensor
    stays a tensor (a model's buffer: no host read); numbers go to the op as numbers, so no
    tensor is built and copied to the device on every call (CUDA-graph capturable)."""
    if quantiles is None or torch.is_tensor(quantiles):
        return quantiles, None
    if isinstance(quantiles, np.ndarray):
        quantiles = quantiles.reshape(-1).tolist()
    if not isinstance(quantiles, Sequence) or len(quantiles) != 4:
        raise ValueError(
            f"quantiles must be (q_a_st, q_b_st, q_a_ae, q_b_ae) or a tensor of 4 values, got {quantiles!r}"
        )
    values = [float(q) for q in quantiles]
    # Also checked by C++; here the error quotes the caller's values by their names.
    for name, (qa, qb) in (("st", values[:2]), ("ae", values[2:])):
        if not (math.isfinite(qa) and math.isfinite(qb) and qb > qa):
            raise ValueError(f"quantiles need finite q_b_{name} > q_a_{name}, got q_a_{name}={qa}, q_b_{name}={qb}")
    return None, values


def _as_output_size(output_size: OutputSize) -> list[int] | None:
    if output_size is None:
        return None
    if isinstance(output_size, (int, np.integer)):
        size = [int(output_size), int(output_size)]
    else:
        size = list(output_size)
    if len(size) != 2 or not all(isinstance(v, numbers.Integral) for v in size):
        raise ValueError(f"output_size must be an int or (H, W) of ints, got {output_size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"output_size must be positive, got {tuple(size)}")
    return [int(v) for v in size]


def anomaly_map(
    teacher: torch.Tensor,
    student: torch.Tensor,
    autoencoder: torch.Tensor,
    *,
    teacher_mean: torch.Tensor | None = None,
    teacher_std: torch.Tensor | None = None,
    quantiles: Quantiles = None,
    alpha: float = 0.5,
    pad: int = 4,
    output_size: OutputSize = None,
    distance: str = "l2",
) -> tuple[torch.Tensor, torch.Tensor]:
    """EfficientAD's anomaly map and image score from the three networks' features, fused.

    Args:
        teacher: (N, C, h, w) teacher features, float32/float16/bfloat16, NCHW or channels_last.
        student: (N, 2C, h, w) student features, same dtype and device.
        autoencoder: (N, C, h, w) autoencoder features, same dtype and device.
        teacher_mean, teacher_std: (C) channel statistics that standardize the teacher
            features, or None when they are standardized already (both or neither).
        quantiles: (q_a_st, q_b_st, q_a_ae, q_b_ae) as numbers or a tensor of 4 values, or
            None for no map normalization (as anomalib does before calibration). Numbers
            reach the kernel by value (no tensor made or copied to the device per call, so
            a CUDA graph can capture the call); values in a CUDA tensor are not checked
            (that would synchronize); q_b must exceed q_a.
        alpha: weight of the student-teacher map; 1 - alpha weighs the autoencoder map.
        pad: zero padding added to each side of the feature-resolution maps (4 in anomalib).
        output_size: (H, W) or an int for the map; None keeps the padded feature size.
        distance: "l2" (mean squared difference over channels) or "cosine" (1 - cosine
            similarity over channels) for both maps.

    Returns:
        ``(anomaly_map, score)``: float32 (N, 1, H, W) and (N,), score = max of the map.
        NaN or Inf in the features propagate into the map and the score.

    Equals :func:`efficientad_fast.reference_anomaly_map` (plain PyTorch) to within
    1e-5 of the map's range in float32.
    """
    for name, value in (("teacher", teacher), ("student", student), ("autoencoder", autoencoder)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"anomaly_map: {name} must be a torch.Tensor, got {type(value).__name__}")
    quantile_tensor, quantile_values = _as_quantiles(quantiles)
    result: tuple[torch.Tensor, torch.Tensor] = _op()(
        teacher,
        student,
        autoencoder,
        teacher_mean,
        teacher_std,
        quantile_tensor,
        float(alpha),
        int(pad),
        _as_output_size(output_size),
        distance,
        quantile_values,
    )
    return result


def layout_plan(teacher: torch.Tensor, student: torch.Tensor, autoencoder: torch.Tensor) -> dict[str, Any]:
    """How :func:`anomaly_map` would read these features, as the C++ input checks decide it
    (``efficientad_fast::_anomaly_map_layout``; reads shapes, strides and addresses only):

    - ``layout``: ``"channels_last"`` or ``"nchw"``, the kernel's thread mapping, chosen from
      all three inputs (docs/architecture.md, "Kernel design");
    - ``copied``: the names of the inputs copied into that layout first (the others are
      read in place, with their strides);
    - ``vector_loads``: whether the channels_last CUDA kernel reads 16-byte vectors (the
      decision is the same on every device; the CPU kernel has its own loops).
    """
    load_extension()
    flags = torch.ops.efficientad_fast._anomaly_map_layout.default(teacher, student, autoencoder)
    names = ("teacher", "student", "autoencoder")
    return {
        "layout": "channels_last" if flags[0] else "nchw",
        "copied": tuple(name for name, copied in zip(names, flags[1:4]) if copied),
        "vector_loads": bool(flags[4]),
    }
