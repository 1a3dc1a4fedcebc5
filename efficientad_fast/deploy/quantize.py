"""INT8 copies of a model for the CPU (``efficientad-fast quantize``): the networks quantized
by torchao's PT2E x86 Inductor recipe (:mod:`efficientad_fast.int8`), the scoring left in
float32. Loading such a model back needs only :mod:`efficientad_fast.model_file`."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from ..model import EfficientAD


def quantize(model: EfficientAD, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 8) -> EfficientAD:
    """An INT8 copy of ``model`` for the CPU: post-training quantization of teacher, student
    and autoencoder, calibrated on normal ``images`` ((N, 3, H, W) uint8 or float in [0, 1],
    or an iterable of such batches: a few dozen of the training images are enough); the
    scoring tail stays the fused op in float32. The copy's ``precision`` is "int8" and
    ``save`` stores the calibration, so ``load(path, precision="int8")`` needs no images.
    ``model`` itself is left as it is."""
    if not isinstance(model, EfficientAD):
        raise TypeError(f"model must be an EfficientAD, got {type(model).__name__}")
    quantized = copy.deepcopy(model).cpu().float().eval()
    quantized.record_int8_ranges(images, batch_size)
    return quantized.set_precision("int8")


__all__ = ["quantize"]
