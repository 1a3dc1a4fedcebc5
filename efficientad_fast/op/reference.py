"""Plain-PyTorch reference of the fused anomaly-map op, op by op as anomalib scores
(docs/architecture.md, "Scoring"). The C++/CUDA kernels must equal it; tests compare the two."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# What the op takes as quantiles and output size (see efficientad_fast.anomaly_map).
Quantiles = torch.Tensor | Sequence[float] | np.ndarray | None
OutputSize = int | Sequence[int] | None


def normalize_map(d: torch.Tensor, q_a: float | torch.Tensor, q_b: float | torch.Tensor) -> torch.Tensor:
    """The paper's map normalization: ``q_a`` goes to 0 and ``q_b`` to 0.1."""
    normalized: torch.Tensor = 0.1 * (d - q_a) / (q_b - q_a)
    return normalized


def _check_teacher_std(std: torch.Tensor) -> None:
    """The op's check: a std that is not finite and > 0 makes the map inf or NaN. Like the
    op, only eager CPU tensors are read: on a GPU it would synchronize, and traced (export,
    compile) tensors have no values to read."""
    if std.device.type != "cpu" or torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None:
        return
    values = std.detach().float().reshape(-1)
    bad = ~(torch.isfinite(values) & (values > 0))
    if bool(bad.any()):
        channel = int(bad.nonzero()[0])
        raise ValueError(
            f"anomaly_map: teacher_std must be finite and > 0 in every channel, "
            f"got {values[channel].item()} in channel {channel}"
        )


def reference_anomaly_map(
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
    """Same signature and result as :func:`efficientad_fast.anomaly_map`, in plain PyTorch.

    Computes in float32 whatever the input dtype, except float64 features, which it keeps
    in float64 (the tests' exact reference; the op itself takes no float64)::

        t = (teacher - mean) / std                                  # if mean/std given
        d_st = ((t - student[:, :C]) ** 2).mean(1)                  # "l2"
        d_ae = ((autoencoder - student[:, C:]) ** 2).mean(1)
        #  or  1 - F.cosine_similarity(a, b, dim=1)                 # "cosine"
        d = F.interpolate(F.pad(d, [pad] * 4), output_size, mode="bilinear")
        m = 0.1 * (d - q_a) / (q_b - q_a)                           # if quantiles given
        map = alpha * m_st + (1 - alpha) * m_ae;  score = map.amax((-2, -1))
    """
    channels = teacher.shape[1]
    dtype = torch.float64 if teacher.dtype == torch.float64 else torch.float32
    t, s, ae = teacher.to(dtype), student.to(dtype), autoencoder.to(dtype)
    if (teacher_mean is None) != (teacher_std is None):
        raise ValueError("anomaly_map: give teacher_mean and teacher_std together, or neither")
    if teacher_mean is not None and teacher_std is not None:
        _check_teacher_std(teacher_std)
        mean = teacher_mean.to(dtype).reshape(1, channels, 1, 1)
        std = teacher_std.to(dtype).reshape(1, channels, 1, 1)
        t = (t - mean) / std
    if distance == "l2":
        d_st = torch.mean((t - s[:, :channels]) ** 2, dim=1, keepdim=True)
        d_ae = torch.mean((ae - s[:, channels:]) ** 2, dim=1, keepdim=True)
    elif distance == "cosine":
        d_st = 1 - F.cosine_similarity(t, s[:, :channels], dim=1).unsqueeze(1)
        d_ae = 1 - F.cosine_similarity(ae, s[:, channels:], dim=1).unsqueeze(1)
    else:
        raise ValueError(f"distance must be 'l2' or 'cosine', got {distance!r}")
    if pad:
        d_st = F.pad(d_st, (pad, pad, pad, pad))
        d_ae = F.pad(d_ae, (pad, pad, pad, pad))
    if output_size is None:
        size = (int(d_st.shape[-2]), int(d_st.shape[-1]))
    elif isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = (int(output_size[0]), int(output_size[1]))
    d_st = F.interpolate(d_st, size=size, mode="bilinear", align_corners=False)
    d_ae = F.interpolate(d_ae, size=size, mode="bilinear", align_corners=False)
    if quantiles is not None:
        qa_st, qb_st, qa_ae, qb_ae = (q.to(dtype) if torch.is_tensor(q) else float(q) for q in quantiles)
        d_st = normalize_map(d_st, qa_st, qb_st)
        d_ae = normalize_map(d_ae, qa_ae, qb_ae)
    anomaly_map = alpha * d_st + (1 - alpha) * d_ae
    score = torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1)
    return anomaly_map, score
