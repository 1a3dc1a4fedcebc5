"""The fused anomaly-map op: the public wrapper over ``torch.ops.efficientad_fast.anomaly_map``
and its fake (meta) kernel for ``torch.compile`` and ``torch.export``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from ._extension import load_extension

DISTANCES = ("l2", "cosine")
_fake_registered = False


def _op():
    # Under torch.compile the library must already be loaded (any eager call, or
    # efficientad_fast.load_extension(), does it); loading is not traceable.
    if not torch.compiler.is_compiling():
        load_extension()
    return torch.ops.efficientad_fast.anomaly_map.default


def _as_quantiles(quantiles, device: torch.device) -> torch.Tensor | None:
    if quantiles is None or torch.is_tensor(quantiles):
        return quantiles
    if isinstance(quantiles, np.ndarray):
        quantiles = quantiles.reshape(-1).tolist()
    if not isinstance(quantiles, Sequence) or len(quantiles) != 4:
        raise ValueError(
            f"quantiles must be (q_a_st, q_b_st, q_a_ae, q_b_ae) or a tensor of 4 values, got {quantiles!r}"
        )
    values = [float(q) for q in quantiles]
    for name, (qa, qb) in (("st", values[:2]), ("ae", values[2:])):
        if not (math.isfinite(qa) and math.isfinite(qb) and qb > qa):
            raise ValueError(f"quantiles need finite q_b_{name} > q_a_{name}, got q_a_{name}={qa}, q_b_{name}={qb}")
    return torch.tensor(values, dtype=torch.float32, device=device)


def _as_output_size(output_size) -> list[int] | None:
    if output_size is None:
        return None
    if isinstance(output_size, numbers.Integral):
        output_size = (output_size, output_size)
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
    quantiles=None,
    alpha: float = 0.5,
    pad: int = 4,
    output_size=None,
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
            None for no map normalization (as anomalib does before calibration). Values in
            a CUDA tensor are not checked (that would synchronize); q_b must exceed q_a.
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
    if distance not in DISTANCES:
        raise ValueError(f"anomaly_map: distance must be one of {DISTANCES}, got {distance!r}")
    return _op()(
        teacher,
        student,
        autoencoder,
        teacher_mean,
        teacher_std,
        _as_quantiles(quantiles, teacher.device),
        float(alpha),
        int(pad),
        _as_output_size(output_size),
        distance,
    )


def _register_fake() -> None:
    """Shape-only kernel so torch.compile(fullgraph=True) and torch.export trace the op."""
    global _fake_registered
    if _fake_registered:
        return

    @torch.library.register_fake("efficientad_fast::anomaly_map")
    def _(teacher, student, autoencoder, teacher_mean, teacher_std, quantiles, alpha, pad, output_size, distance):
        # Also serves as the Meta kernel: check what needs no values, as the C++ kernels do.
        for name, value in (("student", student), ("autoencoder", autoencoder), ("teacher_mean", teacher_mean),
                            ("teacher_std", teacher_std), ("quantiles", quantiles)):
            if value is not None and value.device != teacher.device:
                raise ValueError(f"anomaly_map: {name} is on {value.device} but teacher is on {teacher.device}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"anomaly_map: alpha must be in [0, 1], got {alpha}")
        if pad < 0:
            raise ValueError(f"anomaly_map: pad must be >= 0, got {pad}")
        if distance not in DISTANCES:
            raise ValueError(f"anomaly_map: distance must be 'l2' or 'cosine', got {distance!r}")
        torch._check(teacher.dim() == 4 and student.dim() == 4 and autoencoder.dim() == 4,
                     lambda: "anomaly_map: teacher, student and autoencoder must be 4-D")
        torch._check(student.shape[1] == 2 * teacher.shape[1],
                     lambda: f"anomaly_map: student needs 2C channels, got {student.shape} for teacher {teacher.shape}")
        torch._check(autoencoder.shape == teacher.shape,
                     lambda: f"anomaly_map: autoencoder {autoencoder.shape} != teacher {teacher.shape}")
        n, _, h, w = teacher.shape
        if output_size is None:
            out_h, out_w = h + 2 * pad, w + 2 * pad
        else:
            out_h, out_w = output_size
        anomaly = teacher.new_empty((n, 1, out_h, out_w), dtype=torch.float32)
        score = teacher.new_empty((n,), dtype=torch.float32)
        return anomaly, score

    _fake_registered = True
