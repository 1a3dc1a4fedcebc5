"""anomalib's EfficientAD as ours: ``from_anomalib`` reads its EfficientAdModel (module,
state dict or Lightning checkpoint) into an :class:`EfficientAD` that scores the same."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checkpoint import load_state_dict_checked, read_checkpoint
from ..model import EfficientAD
from ..networks import TEACHER_CHANNELS

_QUANTILE_KEYS = ("qa_st", "qb_st", "qa_ae", "qb_ae")


def _anomalib_state_dict(obj: object, weights_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict with anomalib's EfficientAdModel keys, hyperparameters found)."""
    hparams: dict[str, Any] = {}
    if isinstance(obj, (str, os.PathLike)):
        obj = read_checkpoint(Path(obj), weights_only)
    if isinstance(obj, nn.Module):
        model: Any = getattr(obj, "model", obj)  # the Lightning module wraps the torch model
        hparams = {
            "padding": tuple(model.teacher.conv1.padding) != (0, 0),
            "pad_maps": bool(getattr(model, "pad_maps", True)),
        }
        return model.state_dict(), hparams
    if not isinstance(obj, dict):
        raise TypeError(
            f"from_anomalib takes an EfficientAdModel, its state dict or a checkpoint path, got {type(obj).__name__}"
        )
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):  # Lightning checkpoint
        hp = obj.get("hyper_parameters") or {}
        hparams = {k: hp[k] for k in ("padding", "pad_maps") if k in hp}
        obj = obj["state_dict"]
    if any(k.startswith("model.") for k in obj):
        obj = {k[len("model.") :]: v for k, v in obj.items() if k.startswith("model.")}
    return obj, hparams


def from_anomalib(
    obj: object, padding: bool | None = None, pad_maps: bool | None = None, weights_only: bool = True
) -> EfficientAD:
    """An :class:`EfficientAD` equal to an anomalib EfficientAD model.

    Args:
        obj: anomalib's ``EfficientAdModel`` (or the Lightning ``EfficientAd`` module), its
            ``state_dict()``, a Lightning checkpoint dict (keys ``model.*`` under
            ``state_dict``) or the path of such a checkpoint.
        padding, pad_maps: the model's settings when they cannot be read from ``obj``
            (state dicts carry no settings; modules and checkpoints' hyperparameters do).
            Defaults: anomalib's, False and True.
        weights_only: passed to ``torch.load`` for paths; set False only for files you trust.

    ``predict`` of the result equals anomalib's ``anomaly_map`` and ``pred_score``: unset
    (all-zero) teacher statistics or quantiles mean "not applied", as in anomalib.
    """
    state, hparams = _anomalib_state_dict(obj, weights_only)
    if "teacher.conv1.weight" not in state:
        sample = sorted(state)[:6]
        raise ValueError(f"not an anomalib EfficientAD state dict: no 'teacher.conv1.weight' (keys: {sample}...)")
    model_size = "medium" if "teacher.conv6.weight" in state else "small"
    padding = hparams.get("padding", False) if padding is None else padding
    pad_maps = hparams.get("pad_maps", True) if pad_maps is None else pad_maps
    model = EfficientAD(
        model_size=model_size, padding=bool(padding), pad_maps=bool(pad_maps), teacher="random"
    )  # its weights come from the state dict

    ours: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(("teacher.", "student.")):
            ours[key] = value
        elif key.startswith("ae."):
            ours["autoencoder." + key[len("ae.") :]] = value
    mean = state.get("mean_std.mean")
    std = state.get("mean_std.std")
    if mean is not None and std is not None and bool((mean != 0).any() or (std != 0).any()):
        ours["teacher_mean"] = mean.reshape(-1).float()
        ours["teacher_std"] = std.reshape(-1).float()
    else:  # unset in anomalib: the teacher output is used as it is
        ours["teacher_mean"] = torch.zeros(TEACHER_CHANNELS)
        ours["teacher_std"] = torch.ones(TEACHER_CHANNELS)
    quantiles = [state.get(f"quantiles.{k}") for k in _QUANTILE_KEYS]
    ours["quantiles"] = torch.zeros(4)
    ours["_extra_state"] = {"quantiles_set": False, "teacher_source": "anomalib"}
    load_state_dict_checked(model, ours, source="anomalib state dict")
    values = [float(q) for q in quantiles if q is not None]
    if len(values) == len(quantiles) and any(v != 0 for v in values):
        model.set_quantiles(*values)
    return model
