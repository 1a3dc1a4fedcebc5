"""The values a model must hold to give finite, meaningful maps, checked when a model file is
loaded (model_file) and before one is written (EfficientAD.save), so that save never writes a
file that load refuses."""

from __future__ import annotations

import math
from typing import Any

import torch


def check_statistics(model: Any, where: str) -> None:  # an EfficientAD: model.py imports this module
    """What set_teacher_stats and set_quantiles enforce, for the values a file brought or a
    file is about to get (``where`` starts each message): a zero std or NaN statistics would
    make every map inf or NaN, silently; and finite weights (the fused convolution + ReLU
    turns a NaN weight into a plausible score)."""
    for name, value in model.state_dict().items():
        if name in ("teacher_mean", "teacher_std", "quantiles"):  # checked below (quantiles: once set)
            continue
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {name} holds NaN or inf: the file is corrupt or was saved from a diverged run")
    mean, std = model.teacher_mean, model.teacher_std
    bad = (~(torch.isfinite(mean) & torch.isfinite(std) & (std > 0))).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{where}: teacher std must be finite and > 0 and mean finite in every channel; channels "
            f"{bad[:8]}{'...' if len(bad) > 8 else ''} have mean {mean[bad[:4]].tolist()}, std {std[bad[:4]].tolist()}"
        )
    for name, value in (("image_threshold", model.image_threshold), ("pixel_threshold", model._pixel_threshold)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{where}: {name} must be finite, got {value}")
    if model.quantiles_set:
        qa_st, qb_st, qa_ae, qb_ae = model.quantiles.tolist()
        if not (all(math.isfinite(q) for q in (qa_st, qb_st, qa_ae, qb_ae)) and qb_st > qa_st and qb_ae > qa_ae):
            raise ValueError(
                f"{where}: quantiles need finite q_b > q_a for both maps, got q_a_st={qa_st}, q_b_st={qb_st}, "
                f"q_a_ae={qa_ae}, q_b_ae={qb_ae}"
            )
