"""Teachers that ship inside the package, and how ``EfficientAD(teacher=...)`` picks one.

``pdn_small_lite0.pt``: a PDN-S teacher (384 channels, float32 state dict with ``conv1.weight``,
... keys) distilled offline from ImageNet-pretrained EfficientNet-Lite0 features by
``efficientad-fast distill-teacher``; ``pdn_small_lite0.json`` beside it records the command,
steps, seed, images and final losses. Select it with ``teacher="distilled"``. It is not the
default: on the built-in demo dataset it measured worse than the random teacher (README,
"The teacher"). No medium teacher ships (the CPU budget allowed only the small one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
SHIPPED = {"small": "pdn_small_lite0.pt"}
TEACHER_CHOICES = ("random", "distilled")


def shipped_teacher_path(model_size: str) -> Path | None:
    """The shipped distilled teacher of this size, or None when none ships."""
    name = SHIPPED.get(model_size)
    return HERE / name if name and (HERE / name).is_file() else None


def shipped_teacher_info(model_size: str = "small") -> dict | None:
    """The JSON record beside the shipped teacher (how it was made), or None."""
    path = shipped_teacher_path(model_size)
    return json.loads(path.with_suffix(".json").read_text()) if path else None


def init_teacher(pdn: nn.Module, teacher: str | os.PathLike, model_size: str, padding: bool) -> str:
    """Give ``pdn`` its weights and return where they came from.

    ``teacher``: "random" (PyTorch's default initialization, already drawn by the caller),
    "distilled" (the shipped distilled teacher of this size) or the path of a teacher file
    (released ``conv1..`` or ``nn.Sequential`` layouts, or one written by distill-teacher)."""
    if not isinstance(teacher, (str, os.PathLike)):
        raise TypeError(f"teacher must be 'random', 'distilled' or a file path, got {type(teacher).__name__}")
    if teacher == "random":
        return "random"
    if teacher == "distilled":
        path = shipped_teacher_path(model_size)
        if path is None:
            raise ValueError(f"no distilled {model_size} teacher ships with efficientad_fast (only small); "
                             "pass teacher='random' or a teacher file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = f"distilled ({path.name})"
    else:
        path = Path(teacher)
        if not path.is_file():
            raise FileNotFoundError(f"teacher file {path} does not exist (or pass 'random' / 'distilled')")
        from ..compat import load_teacher  # compat imports the model module

        state = load_teacher(path, model_size=model_size, padding=padding).state_dict()
        source = str(path)
    with torch.no_grad():
        for name, value in pdn.state_dict().items():
            if name not in state or tuple(state[name].shape) != tuple(value.shape):
                got = tuple(state[name].shape) if name in state else "missing"
                raise ValueError(f"{path}: {name} is {got}, a {model_size} teacher needs {tuple(value.shape)}")
            value.copy_(state[name])
    return source
