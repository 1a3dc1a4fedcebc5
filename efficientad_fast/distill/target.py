"""The distillation target: backbone features of a crop seen at twice the PDN's resolution,
each chosen map 3x3 average-pooled (stride 1), resized to the PDN's output grid and
concatenated (D channels), then standardized per channel, projected to 384 channels and
standardized again by :class:`TargetProjection`. D >= 384: the top 384 principal components
(full rank), mixed by a fixed random rotation so every channel carries a similar share of the
variance; D < 384: a fixed random orthogonal lift. :func:`fit_projection` takes the statistics
and components from a calibration set of crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..networks import TEACHER_CHANNELS


def raw_target(backbone: nn.Module, big: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Backbone block outputs (``big``: RGB in [0, 1]), 3x3 average-pooled, resized to
    ``grid`` and concatenated (float32)."""
    maps = backbone(big)
    maps = [F.avg_pool2d(m.float(), 3, stride=1, padding=1, count_include_pad=False) for m in maps]
    maps = [F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps]
    return torch.cat(maps, dim=1)


class TargetProjection(nn.Module):
    """Standardize D channels, project to ``out_channels`` and divide by the output's standard
    deviation (the projected features have mean zero: the inputs are centred first)."""

    # Buffers, declared so type checkers see tensors (nn.Module's __getattr__ would not say).
    in_mean: torch.Tensor
    in_std: torch.Tensor
    weight: torch.Tensor
    out_std: torch.Tensor
    explained: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int = TEACHER_CHANNELS) -> None:
        super().__init__()
        self.register_buffer("in_mean", torch.zeros(in_channels))
        self.register_buffer("in_std", torch.ones(in_channels))
        self.register_buffer("weight", torch.zeros(in_channels, out_channels))
        self.register_buffer("out_std", torch.ones(out_channels))
        self.register_buffer("explained", torch.ones(()))  # variance share the projection keeps

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = (f - self.in_mean.view(1, -1, 1, 1)) / self.in_std.view(1, -1, 1, 1)
        y = torch.einsum("ndhw,dc->nchw", z, self.weight)
        return y / self.out_std.view(1, -1, 1, 1)


@torch.no_grad()
def fit_projection(
    features: list[torch.Tensor], out_channels: int = TEACHER_CHANNELS, seed: int = 0
) -> TargetProjection:
    """Fit :class:`TargetProjection` on calibration features (list of (N, D, h, w)),
    streaming in float64: channel statistics, then (D >= out) the principal components
    of the standardized features, then the output standard deviations."""
    d = features[0].shape[1]
    n = sum(f.shape[0] * f.shape[2] * f.shape[3] for f in features)

    def flat(f):
        return f.permute(0, 2, 3, 1).reshape(-1, d).double()

    total = sum(flat(f).sum(0) for f in features)
    mean = total / n
    var = sum(((flat(f) - mean) ** 2).sum(0) for f in features) / n
    std = var.sqrt().clamp_min(1e-6)
    cov = sum((((flat(f) - mean) / std).T @ ((flat(f) - mean) / std)) for f in features) / n
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(out_channels, out_channels, generator=g, dtype=torch.float64))
    proj = TargetProjection(d, out_channels)
    if d >= out_channels:
        eigenvalues, vectors = torch.linalg.eigh(cov)  # ascending
        top = vectors[:, -out_channels:].flip(1)
        proj.weight.copy_((top @ rotation).float())
        proj.explained.fill_(float(eigenvalues[-out_channels:].sum() / eigenvalues.sum()))
    else:  # fewer channels than outputs: a fixed orthogonal lift (rank d)
        proj.weight.copy_(rotation[:d].float())
    proj.in_mean.copy_(mean.float())
    proj.in_std.copy_(std.float())
    w = proj.weight.double()
    out_var = torch.einsum("dc,de,ec->c", w, cov, w)
    proj.out_std.copy_(out_var.clamp_min(1e-12).sqrt().float())
    return proj


@torch.no_grad()
def targets(
    backbone: nn.Module,
    projection: TargetProjection | None,
    big: torch.Tensor,
    grid: tuple[int, int],
    autocast: torch.dtype | None,
    device: torch.device,
) -> torch.Tensor:
    """The target for a batch of backbone inputs: :func:`raw_target` under autocast (when
    ``autocast`` is a dtype), then ``projection`` (the raw features when it is None)."""
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        raw = raw_target(backbone, big.to(device), grid)
    return raw if projection is None else projection(raw)
