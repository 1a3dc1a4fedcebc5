"""The EfficientAD detector: teacher, student, autoencoder, teacher channel statistics
and map quantiles, with a fast ``predict`` over the fused op and a one-file save/load."""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from ._checkpoint import atomic_save, payload_checksum, read_checkpoint, state_checksum
from ._model_checks import check_statistics
from ._numbers import image_hw, real_number, whole_number
from .int8 import FeatureGraph, Int8Calibration, Int8Networks, calibrate_int8
from .networks import MODEL_SIZES, PDN, TEACHER_CHANNELS, AutoEncoder, check_image_size, make_pdn
from .op.ops import DISTANCES, anomaly_map
from .op.reference import OutputSize, reference_anomaly_map
from .teachers import init_teacher

FORMAT = "efficientad_fast"
FORMAT_VERSION = 2  # 2: the all_sha256 digest of everything is required
BACKENDS = ("fused", "reference")
# What the networks compute in (set_precision); "auto" (load) measures which is fastest.
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# On a CPU, predict scores this many images at a time: one image's activations stay in cache (2-core
# Xeon, batch 16: bf16 17.7 vs 11.0 images/s, fp32 3.5 vs 3.3, INT8 32 vs 24; bench/results/int8_cpu_2026-12-06.md).
CPU_CHUNK = 1
# Statistics that stay float32 when the networks move to fp16/bf16.
_FLOAT32_BUFFERS = ("teacher_mean", "teacher_std", "quantiles")
# Normalized maps put the q_b (99.5 %) level of the normal held-out maps at 0.1 (both maps
# are 0.1 there, so any alpha fuses them to 0.1): the default pixel threshold of masks.
DEFAULT_PIXEL_THRESHOLD = 0.1
# The image threshold calibrate stores: this quantile of held-out normal images' scores.
DEFAULT_IMAGE_QUANTILE = 0.995
# Serializes the one-time switch to channels_last (no thread may run convolutions while another swaps
# the weights' layout). Module-level: a lock cannot be deep-copied, and export copies models.
_LAYOUT_LOCK = threading.Lock()
# The folded teacher conv: key (data_ptr, version, dtype, device of weight, bias, mean, std), weight, bias.
_FoldedTeacher = tuple[tuple[tuple[int, int, torch.dtype, torch.device], ...], torch.Tensor, torch.Tensor]


class _MapArgs(TypedDict):
    """The keyword arguments score_images hands both map functions."""

    quantiles: torch.Tensor | None
    alpha: float
    pad: int
    output_size: OutputSize
    distance: str


def check_unit_range(images: torch.Tensor) -> None:
    """ValueError when float ``images`` hold values outside [0, 1] (8-bit values passed as
    float are the usual mistake). Reads the values: call it on CPU tensors only, since on a
    GPU it would synchronize the stream."""
    if images.numel() > 0:
        lo, hi = torch.aminmax(images)
        if not (lo >= 0 and hi <= 1):
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{lo.item():.9g}, {hi.item():.9g}]; "
                "divide 8-bit images by 255 or pass them as uint8"
            )


def check_sensitivity(sensitivity: float) -> float:
    """``sensitivity`` as a float; ValueError unless it is a number in [0, 1]."""
    value = real_number(sensitivity, "sensitivity (in [0, 1])")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"sensitivity must be in [0, 1], got {value}")
    return value


def shift_threshold(threshold: float, sensitivity: float = 0.5) -> float:
    """The calibrated ``threshold`` moved by ``sensitivity`` in [0, 1]:
    ``threshold * 2 ** (1 - 2 * sensitivity)`` (0.5: the threshold itself; 0: twice it, fewer
    images and pixels flagged; 1: half of it, more flagged). A negative threshold is divided
    by the factor instead, so a higher sensitivity always lowers the threshold."""
    factor: float = 2.0 ** (1.0 - 2.0 * check_sensitivity(sensitivity))  # float ** float types as Any
    return threshold * factor if threshold >= 0 else threshold / factor


def decisions(
    score: torch.Tensor,
    anomaly_map: torch.Tensor,
    image_threshold: float | None,
    pixel_threshold: float | None,
    sensitivity: float = 0.5,
) -> "Prediction":
    """A :class:`Prediction` of ``score`` and ``anomaly_map`` with ``label`` = score > the image
    threshold and ``mask`` = map > the pixel threshold (NaN counts as above: a score that
    cannot be computed never passes a part), both shifted by ``sensitivity`` as
    :func:`shift_threshold` says (None where the threshold is None). The one rule the model,
    the exported-package loaders and the OpenVINO loader decide by."""
    check_sensitivity(sensitivity)
    image, pixel = (None if t is None else shift_threshold(t, sensitivity) for t in (image_threshold, pixel_threshold))
    return Prediction(
        score=score,
        anomaly_map=anomaly_map,
        # not (<=): a NaN score or pixel (an overflowing network) is anomalous, never passed
        label=None if image is None else ~(score <= image),
        mask=None if pixel is None else ~(anomaly_map <= pixel),
    )


@dataclass
class Prediction:
    """What :meth:`EfficientAD.predict` returns: tensors on the model's device.

    ``label`` and ``mask`` are the decisions at the calibrated thresholds (shifted by the
    ``sensitivity`` predict was given): None when the model holds no such threshold."""

    score: torch.Tensor  # (N,) float32 image anomaly scores: the max of each map
    anomaly_map: torch.Tensor  # (N, 1, H, W) float32
    label: torch.Tensor | None = None  # (N,) bool: score > image threshold (True = anomalous)
    mask: torch.Tensor | None = None  # (N, 1, H, W) bool: anomaly_map > pixel threshold


class EfficientAD(nn.Module):
    """EfficientAD (Batzner et al., WACV 2024) for inference and training.

    Args:
        model_size: "small" (PDN-S) or "medium" (PDN-M).
        padding: zero-pad the networks' convolutions (64x64 maps at 256 px instead of 56x56).
            The paper's results and timings use False.
        alpha: weight of the student-teacher map in the fused map (1 - alpha: autoencoder map).
        pad_maps: pad the feature-resolution maps by 4 pixels before resizing, as anomalib does.
        distance: "l2" (the paper) or "cosine".
        teacher: "auto" (the default: the paper's teacher when it is in the cache, else the shipped
            distilled one for this size, else random; see
            :func:`efficientad_fast.teachers.resolve_auto_teacher`; the choice is printed once and
            ``teacher_source`` reads "auto: <choice>"), "random" (PyTorch's default initialization, from the
            global RNG), "distilled" (the PDN-S teacher distilled offline from ImageNet EfficientNet-Lite0
            that ships in ``efficientad_fast/teachers``; small only), "paper" (the authors' teacher from the
            cache, put there by ``efficientad-fast fetch-teacher``; never downloaded here: NotCachedError
            when absent) or a teacher file (released ``conv1..`` or ``nn.Sequential`` layouts).
            ``teacher_source`` says which.
        tile: the tile size :meth:`predict` scores images in by default (training on tiles
            sets it; see :mod:`efficientad_fast.tiling`); None: whole images.

    Holds ``teacher``, ``student``, ``autoencoder`` and the float32 buffers ``teacher_mean``,
    ``teacher_std`` (384) and ``quantiles`` (q_a_st, q_b_st, q_a_ae, q_b_ae); the map is
    normalized by the quantiles once :meth:`set_quantiles` has set them. The decision
    thresholds ``image_threshold`` and ``pixel_threshold`` (floats or None, set by
    :meth:`set_thresholds`; ``threshold_source`` says how they were chosen) travel in the
    module's extra state, so ``save``/``load`` and ``state_dict`` keep them.
    ``model.to(torch.bfloat16)`` (or float16) runs the networks in that dtype; images and
    results stay float.
    """

    # Declared so type checkers see tensors and modules (nn.Module's __getattr__ types them as either).
    teacher_mean: torch.Tensor
    teacher_std: torch.Tensor
    quantiles: torch.Tensor
    teacher: PDN
    student: PDN
    autoencoder: AutoEncoder

    def __init__(
        self,
        model_size: str = "small",
        padding: bool = False,
        alpha: float = 0.5,
        pad_maps: bool = True,
        distance: str = "l2",
        teacher: str | os.PathLike[str] = "auto",
        tile: int | None = None,
    ) -> None:
        super().__init__()
        if model_size not in MODEL_SIZES:
            raise ValueError(f"model_size must be one of {MODEL_SIZES}, got {model_size!r}")
        for name, flag in (("padding", padding), ("pad_maps", pad_maps)):
            if not isinstance(flag, (bool, np.bool_)):  # "no" would be True: a model file says what it means
                raise TypeError(f"{name} must be True or False, got {type(flag).__name__} {flag!r}")
        alpha = real_number(alpha, "alpha")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.model_size = model_size
        self.padding = bool(padding)
        self.alpha = float(alpha)
        self.pad_maps = bool(pad_maps)
        self.distance = distance
        if tile is not None:
            tile = whole_number(tile, "tile")
            check_image_size(tile, tile)  # each tile is an image to the networks
        self.tile = tile
        self.teacher = make_pdn(model_size, TEACHER_CHANNELS, self.padding)
        self.student = make_pdn(model_size, 2 * TEACHER_CHANNELS, self.padding)
        self.autoencoder = AutoEncoder(TEACHER_CHANNELS, self.padding)
        self.teacher.requires_grad_(False)
        # After all three networks drew their random init, so seeds give the same student.
        try:
            self.teacher_source = init_teacher(self.teacher, teacher, model_size, self.padding)
        except ValueError as exc:
            _refuse_model_file_as_teacher(teacher, exc)
            raise
        self.register_buffer("teacher_mean", torch.zeros(TEACHER_CHANNELS))
        self.register_buffer("teacher_std", torch.ones(TEACHER_CHANNELS))
        self.register_buffer("quantiles", torch.zeros(4))
        self.quantiles_set = False
        self.image_threshold: float | None = None
        self._pixel_threshold: float | None = None
        self.threshold_source = "not calibrated"
        self._folded_teacher: _FoldedTeacher | None = None
        # INT8: the calibration (activation ranges, saved with the model) and, while the
        # precision is "int8", the compiled INT8 networks that predict runs.
        self.int8_calibration: Int8Calibration | None = None
        self._int8: Int8Networks | None = None

    # -- configuration and statistics -------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``EfficientAD(**model.config())`` rebuilds the layout."""
        return {
            "model_size": self.model_size,
            "padding": self.padding,
            "alpha": self.alpha,
            "pad_maps": self.pad_maps,
            "distance": self.distance,
            "tile": self.tile,
        }

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "quantiles_set": self.quantiles_set,
            "teacher_source": self.teacher_source,
            "image_threshold": self.image_threshold,
            "pixel_threshold": self._pixel_threshold,
            "threshold_source": self.threshold_source,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Each value as written, never converted: "" or "False" as a flag, or "-0.5" as a
        # threshold, would change decisions silently (TypeError; load calls it corrupt).
        quantiles_set = state.get("quantiles_set", False)
        if not isinstance(quantiles_set, bool):
            raise TypeError(f"quantiles_set must be True or False, got {type(quantiles_set).__name__}")
        texts = {"teacher_source": "not recorded", "threshold_source": "not calibrated"}  # older files lack them
        for key, default in texts.items():
            if not isinstance(state.get(key, default), str):
                raise TypeError(f"{key} must be a string, got {type(state[key]).__name__}")
        # Files written before thresholds existed hold none: pixel_threshold falls back to
        # the q_b level of calibrated maps, and there is no image label.
        image, pixel = state.get("image_threshold"), state.get("pixel_threshold")
        self.quantiles_set = quantiles_set
        self.teacher_source = state.get("teacher_source", texts["teacher_source"])
        self.image_threshold = None if image is None else real_number(image, "image_threshold")
        self._pixel_threshold = None if pixel is None else real_number(pixel, "pixel_threshold")
        self.threshold_source = state.get("threshold_source", texts["threshold_source"])

    @property
    def pixel_threshold(self) -> float | None:
        """The map threshold of the masks: the stored one, else the q_b level (0.1) of a
        model with calibrated quantiles (files from before thresholds were stored), else None."""
        if self._pixel_threshold is not None:
            return self._pixel_threshold
        return DEFAULT_PIXEL_THRESHOLD if self.quantiles_set else None

    def set_thresholds(
        self, image: float | None = None, pixel: float | None = DEFAULT_PIXEL_THRESHOLD, source: str = "set by hand"
    ) -> None:
        """Set the decision thresholds: a score above ``image`` labels an image anomalous, a
        map value above ``pixel`` marks the pixel in the mask (None: no such decision; for
        ``pixel`` of a model with calibrated quantiles, None means the q_b level 0.1).
        ``source`` records how they were chosen (shown in exports' metadata)."""
        image, pixel = (
            None if v is None else real_number(v, f"the {name} threshold")
            for name, v in (("image", image), ("pixel", pixel))
        )
        for name, value in (("image", image), ("pixel", pixel)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} threshold must be a finite number or None, got {value!r}")
        self.image_threshold = image
        self._pixel_threshold = pixel
        self.threshold_source = str(source)

    def thresholds(self, sensitivity: float = 0.5) -> tuple[float | None, float | None]:
        """(image threshold, pixel threshold) shifted by ``sensitivity`` as
        :func:`shift_threshold` says; None where the model holds no threshold."""
        check_sensitivity(sensitivity)
        image, pixel = (
            None if t is None else shift_threshold(t, sensitivity) for t in (self.image_threshold, self.pixel_threshold)
        )
        return image, pixel

    def decide(self, score: torch.Tensor, anomaly_map: torch.Tensor, sensitivity: float = 0.5) -> Prediction:
        """A :class:`Prediction` of ``score`` and ``anomaly_map`` with ``label`` and ``mask``
        at this model's thresholds shifted by ``sensitivity`` (None without a threshold)."""
        return decisions(score, anomaly_map, self.image_threshold, self.pixel_threshold, sensitivity)

    def set_teacher_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the per-channel teacher mean and std (384 values each, std > 0)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        for name, value in (("mean", mean), ("std", std)):
            if value.numel() != TEACHER_CHANNELS:
                raise ValueError(f"teacher {name} needs {TEACHER_CHANNELS} values, got {value.numel()}")
        if not bool((std > 0).all()) or not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("teacher std must be finite and > 0 and mean finite in every channel")
        with torch.no_grad():
            self.teacher_mean.copy_(mean)
            self.teacher_std.copy_(std)

    def set_quantiles(self, qa_st: float, qb_st: float, qa_ae: float, qb_ae: float) -> None:
        """Set the map quantiles (q_a = 0.9 and q_b = 0.995 quantiles of each map on held-out
        training images); from then on maps are normalized by them."""
        values = torch.tensor([float(qa_st), float(qb_st), float(qa_ae), float(qb_ae)])
        if not bool(torch.isfinite(values).all()) or not (values[1] > values[0] and values[3] > values[2]):
            raise ValueError(
                f"quantiles need finite q_b > q_a for both maps, got q_a_st={qa_st}, q_b_st={qb_st}, "
                f"q_a_ae={qa_ae}, q_b_ae={qb_ae}"
            )
        with torch.no_grad():
            self.quantiles.copy_(values)
        self.quantiles_set = True

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> EfficientAD:
        # Keep the statistics in float32 when the networks change dtype; follow device moves.
        kept = {name: getattr(self, name) for name in _FLOAT32_BUFFERS}
        before = (self.dtype, self.device)
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        for name, old in kept.items():
            new = getattr(self, name)
            if new.dtype != torch.float32:
                setattr(self, name, old.to(device=new.device))
        self._folded_teacher = None
        if (self.dtype, self.device) != before:  # .to(bf16) or .cuda() leaves INT8
            self._int8 = None
        return self

    # -- precision --------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """What the networks compute in: "int8" (the compiled INT8 networks), else "fp32",
        "bf16" or "fp16" (their dtype)."""
        if self._int8 is not None:
            return "int8"
        return {v: k for k, v in _PRECISION_DTYPES.items()}[self.dtype]

    def set_precision(self, precision: str) -> "EfficientAD":
        """Run the networks in ``precision`` ("fp32", "bf16", "fp16" or "int8"); returns the
        model. "int8" needs the INT8 calibration (:func:`quantize`, or ``train``, records it)
        and a CPU model; the networks are quantized and compiled on the first predict of each
        image size (some seconds), from the float32 weights as they are then: after changing
        the weights, calibrate again. Images, maps and scores stay float32 in every precision."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision != "int8":
            self.to(_PRECISION_DTYPES[precision])
            self._int8 = None
            return self
        if self.int8_calibration is None:
            raise ValueError(
                "this model holds no INT8 calibration: quantize it first (efficientad_fast.quantize(model, "
                "normal_images) or efficientad-fast quantize --model M --calibration-data DIR --out Q.pt)"
            )
        if self.device.type != "cpu":
            raise ValueError(f"INT8 runs on the CPU, the model is on {self.device}; call model.cpu() first")
        self.float()
        self._int8 = Int8Networks(self.int8_calibration)
        return self

    def feature_graph(self) -> FeatureGraph:
        """A float32 copy of the three networks as one traceable module (images in [0, 1] ->
        standardized teacher, student and autoencoder features): what INT8 quantizes."""
        weight, bias = self._folded_teacher_conv()
        teacher, student, autoencoder = copy.deepcopy((self.teacher, self.student, self.autoencoder))
        for net in (teacher, student, autoencoder):
            net.float().cpu().to(memory_format=torch.contiguous_format)
        return FeatureGraph(
            teacher, weight.detach().cpu().float().contiguous(), bias.detach().cpu().float(), student, autoencoder
        )

    def record_int8_ranges(self, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 8) -> Int8Calibration:
        """Calibrate INT8 on normal ``images``: an (N, 3, H, W) tensor or an iterable of such
        batches, uint8 or float in [0, 1]. Stores the activation ranges in the model (saved
        with it) and returns them; the precision is left as it is."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[0] == 0:
                raise ValueError(
                    f"INT8 calibration needs normal images (N, 3, H, W) with N >= 1, got shape {tuple(images.shape)}"
                )
            images = [images[i : i + batch_size] for i in range(0, images.shape[0], batch_size)]
        size: tuple[int, int] | None = None
        batches = []
        for batch in images:
            x = self._prepare_images(batch, validate=True).float().cpu()
            if size is not None and tuple(x.shape[2:]) != size:
                raise ValueError(f"INT8 calibration images must share one size, got {size} and {tuple(x.shape[2:])}")
            size = (int(x.shape[2]), int(x.shape[3]))
            batches.append(x)
        if size is None:
            raise ValueError("INT8 calibration needs at least one normal image, got none")
        self.int8_calibration = calibrate_int8(self.feature_graph(), batches, size)
        self._int8 = None if self._int8 is None else Int8Networks(self.int8_calibration)
        return self.int8_calibration

    @property
    def device(self) -> torch.device:
        return self.teacher.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.teacher.conv1.weight.dtype

    # -- inference --------------------------------------------------------------------

    def _folded_teacher_conv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's last conv with (t - mean) / std folded into its weights, so the
        teacher emits standardized features at no extra cost. Cached until any input changes."""
        conv = self.teacher.last_conv
        assert conv.bias is not None  # the PDNs' convs have biases
        sources = (conv.weight, conv.bias, self.teacher_mean, self.teacher_std)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        if self._folded_teacher is None or self._folded_teacher[0] != key:
            with torch.no_grad():
                std = self.teacher_std.float()
                weight = conv.weight.float() / std.view(-1, 1, 1, 1)
                bias = (conv.bias.float() - self.teacher_mean.float()) / std
            weight = weight.to(conv.weight.dtype).contiguous(memory_format=torch.channels_last)
            self._folded_teacher = (key, weight, bias.to(conv.bias.dtype))
        return self._folded_teacher[1], self._folded_teacher[2]

    def _use_channels_last(self) -> None:
        with _LAYOUT_LOCK:
            if not self.teacher.conv1.weight.is_contiguous(memory_format=torch.channels_last):
                self.to(memory_format=torch.channels_last)

    def _prepare_images(self, images: torch.Tensor, validate: bool | None) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.is_meta or images.is_nested or images.layout != torch.strided:  # no values to score
            raise TypeError(
                f"images must be a dense tensor holding data, got a {'meta' if images.is_meta else 'nested' if images.is_nested else images.layout} tensor"
            )
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
        check_image_size(images.shape[2], images.shape[3])
        if images.dtype == torch.uint8:
            return images.to(self.device, non_blocking=True).to(self.dtype).div_(255)
        if images.dtype not in (*_PRECISION_DTYPES.values(), torch.float64):  # float8: no range check
            raise TypeError(f"images must be uint8 or floating point in [0, 1], got {images.dtype}")
        if validate is None:
            validate = images.device.type == "cpu"  # elsewhere a range check would synchronize
        if validate:
            check_unit_range(images)
        return images.to(self.device, self.dtype, non_blocking=True)

    def predict(
        self,
        images: torch.Tensor,
        output_size: tuple[int, int] | int | None = None,
        backend: str = "fused",
        validate: bool | None = None,
        sensitivity: float = 0.5,
        tile: int | None = None,
        overlap: int = 32,
    ) -> Prediction:
        """Anomaly maps, scores and decisions for a batch of images.

        Args:
            images: (N, 3, H, W) RGB, uint8 or float in [0, 1], H and W >= 256.
            output_size: size of the map; None = the image size.
            backend: "fused" (the custom op) or "reference" (plain PyTorch, op by op).
            validate: check float images lie in [0, 1]; default only for CPU tensors, since
                on a GPU the check would synchronize the stream.
            sensitivity: in [0, 1]; shifts both decision thresholds as
                :func:`shift_threshold` says: 0.5 uses the calibrated thresholds, higher
                flags more (1: half the threshold), lower flags fewer (0: twice it).
            tile, overlap: score each image in ``tile`` x ``tile`` tiles overlapping by
                ``overlap`` pixels, the maps stitched with blended overlaps and the score the
                stitched map's maximum (:mod:`efficientad_fast.tiling`); None: the model's
                own ``tile`` (set by training on tiles; None there too: whole images);
                0: whole images.

        Returns:
            :class:`Prediction` with float32 ``score`` (N,) and ``anomaly_map`` (N, 1, H, W),
            bool ``label`` (N,) = score > image threshold and ``mask`` (N, 1, H, W) =
            anomaly_map > pixel threshold (None when the model has no such threshold).

        Computes as in eval mode (no dropout) without switching the model's mode, so threads
        may share one model, even one that is in training mode.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        check_sensitivity(sensitivity)
        with torch.inference_mode():
            # channels_last runs the convolutions and pools 1.4-1.5x faster on CPU
            # (bench/bench_core.py) and is the tensor-core layout on GPUs.
            self._use_channels_last()
            x = self._prepare_images(images, validate).contiguous(memory_format=torch.channels_last)
            output_size = (x.shape[2], x.shape[3]) if output_size is None else image_hw(output_size, "output_size")
            tile = self.tile if tile is None else tile
            if tile:  # lazy: tiling imports nothing from here
                from .tiling import tiled_scores

                amap, score = tiled_scores(self, x, tile, overlap, output_size, backend)
            else:
                amap, score = self.score_images(x, output_size, backend)
            return self.decide(score, amap, sensitivity)

    def score_images(
        self, x: torch.Tensor, output_size: OutputSize, backend: str = "fused"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The computation of :meth:`predict` without its checks: ``x`` is an (N, 3, H, W)
        batch already in the networks' device, dtype and [0, 1] range; returns (map, score),
        computed as in eval mode whatever the modules' mode. Pure tensor code (no host sync),
        so it can be captured in a CUDA graph, compiled with ``torch.compile`` or traced by
        ``torch.export``; call it under ``torch.inference_mode()``."""
        if x.device.type == "cpu" and x.shape[0] > CPU_CHUNK and not torch.compiler.is_compiling():
            parts = [self.score_images(chunk, output_size, backend) for chunk in x.split(CPU_CHUNK)]  # type: ignore[no-untyped-call]  # torch leaves Tensor.split unannotated
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        kwargs = _MapArgs(
            quantiles=self.quantiles if self.quantiles_set else None,
            alpha=self.alpha,
            pad=self.map_pad,
            output_size=output_size,
            distance=self.distance,
        )
        if self._int8 is not None:  # standardized teacher features, float32
            features = self._int8(x, self.feature_graph)
            if backend == "fused":
                return anomaly_map(*features, **kwargs)
            return reference_anomaly_map(*features, teacher_mean=None, teacher_std=None, **kwargs)
        if backend == "fused":
            features = self.features(x, teacher_conv=self._folded_teacher_conv(), eval_mode=True)
            return anomaly_map(*features, **kwargs)
        return reference_anomaly_map(
            *self.features(x, eval_mode=True), teacher_mean=self.teacher_mean, teacher_std=self.teacher_std, **kwargs
        )

    def features(
        self, x: torch.Tensor, teacher_conv: tuple[torch.Tensor, torch.Tensor] | None = None, eval_mode: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(teacher, student, autoencoder) features of images ``x`` in [0, 1] (the networks'
        device and dtype), the image normalized once for all three. ``teacher_conv``:
        (weight, bias) to use in place of the teacher's last conv, e.g. the standardization
        fold of :meth:`_folded_teacher_conv`; None gives the raw teacher features.
        ``eval_mode``: no autoencoder dropout even when the model is in training mode (the
        mode itself is left alone: other threads may be using the model)."""
        xn = self.teacher.normalize(x)
        conv = self.teacher.last_conv
        weight, bias = teacher_conv if teacher_conv is not None else (conv.weight, conv.bias)
        teacher = conv._conv_forward(self.teacher.body(xn), weight, bias)
        ae = self.autoencoder(xn, normalized=True, dropout=False if eval_mode else None)
        return teacher, self.student(xn, normalized=True), ae

    @property
    def map_pad(self) -> int:
        """Zero border added to the feature-resolution maps before resizing (4, as anomalib)."""
        return 4 if self.pad_maps else 0

    def forward(self, images: torch.Tensor) -> Prediction:
        return self.predict(images)

    # -- persistence ------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one self-describing file: weights, statistics, quantiles, config, format version.
        The file is written next to ``path`` first and renamed, so a crash leaves no half file."""
        if not os.fspath(path):  # Path("") is ".", the current folder
            raise ValueError("save needs a file path, got an empty string")
        path = Path(path)
        check_statistics(self, f"refusing to save {path}")
        state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in self.state_dict().items()}
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config(), "state_dict": state}
        if self.int8_calibration is not None:
            payload["int8"] = self.int8_calibration.to_payload()
        # Flipped bytes still unpickle: load compares these hashes. "all" covers every entry (settings,
        # thresholds, flags, INT8 ranges); "sha256", the weights only, is what versions before it check.
        payload["checksum"] = {"sha256": state_checksum(state), "all_sha256": payload_checksum(payload)}
        atomic_save(payload, path)


def _refuse_model_file_as_teacher(teacher: object, error: ValueError) -> None:
    """After a teacher file failed to load: if it is a whole model file (as train writes),
    say so, since the key mismatch alone does not tell the user what went wrong."""
    if not isinstance(teacher, (str, os.PathLike)) or not Path(teacher).is_file():
        return
    try:
        payload = read_checkpoint(Path(teacher))
    except ValueError:
        return
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        raise ValueError(
            f"{teacher} is a full model file (written by train or EfficientAD.save), not a teacher file; a "
            "teacher comes from teacher= files like those distill-teacher writes (or the paper's released "
            "ones). To reuse this model, load it with efficientad_fast.load"
        ) from error
