"""OpenVINO IR export of :meth:`EfficientAD.predict` and a Python loader for it.

The same computation as the ONNX export (images in, anomaly map and image score out, batch
size dynamic, image size fixed at export time), as an OpenVINO IR (``model.xml`` +
``model.bin``) in one of three precisions:

* ``fp32``: the weights and the arithmetic as ``predict`` has them (within 1e-4 of the map's
  range, run with ``inference_precision="f32"``, the loader's default);
* ``fp16``: the weights stored in float16 (half the file; OpenVINO computes in f32 or bf16 on
  a CPU, so this is a storage format, not a speed-up there);
* ``int8``: post-training quantization with NNCF on normal images (``calibration_data``):
  the networks' convolutions run in INT8, while the scoring (squared feature differences,
  quantile normalization, resize, max) is kept in floating point, because the distances of
  a few features around the anomaly threshold are where INT8 rounding would show.

The graph comes from ``torch.export`` of :class:`efficientad_fast.export.PredictGraph` with
the scoring written in plain PyTorch ops (``scoring="reference"``: OpenVINO has no kernel of
our fused op), converted by ``openvino.convert_model``. That is the path the AOTInductor
export traces too, it needs neither onnx nor onnxscript (the ``[openvino]`` extra is
openvino and nncf only), and in our test it matches ``predict`` as closely as the ONNX route.

The metadata of :func:`efficientad_fast.export.metadata` (format name and version, image
size, ...) is stored in the IR's ``rt_info`` under ``efficientad_fast``, with the precision;
:func:`load_openvino` checks it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .._checkpoint import atomic_files, writable_folder
from .._optional import require
from .._signals import interrupts_held
from ..model import EfficientAD, Prediction, check_unit_range, decisions
from .export import (
    EXPORTER_BUSY,
    OUTPUT_NAMES,
    CheckedMetadata,
    PredictGraph,
    _prepare,
    check_exported_input,
    check_metadata,
    metadata,
)

PRECISIONS = ("fp32", "fp16", "int8")
# rt_info section of the IR that holds export.metadata() and the OpenVINO-only keys below.
RT_INFO_SECTION = "efficientad_fast"
# Images NNCF collects activation statistics on (NNCF's own default subset size): a folder
# with more is subsampled evenly, one with fewer is used whole.
DEFAULT_CALIBRATION_SIZE = 300
# What the loader asks the CPU plugin to compute in: on CPUs with AVX-512 BF16 or AMX
# OpenVINO would otherwise pick bf16 by itself, which moves the map by ~3e-3 of its range.
DEFAULT_INFERENCE_PRECISION = "f32"
# openvino.Model and NNCF's objects: the optional packages carry no types mypy reads here.
OVModel = Any


def _require(module: str) -> ModuleType:
    return require(module, "openvino")


@functools.cache
def _core() -> Any:
    """The process's one ``openvino.Core``. Each Core's CPU plugin puts the thread on a signal
    stack of its own and, when the Core is freed, puts back the stack it found: with two
    Cores freed out of order the thread was left on a freed stack, and the next Ctrl-C or
    SIGTERM crashed the process with a segfault (openvino 2026.4, fresh-clone CI of 28ff869)."""
    return _require("openvino").Core()


def calibration_images(
    source: str | os.PathLike[str] | torch.Tensor, image_size: tuple[int, int], size: int = DEFAULT_CALIBRATION_SIZE
) -> torch.Tensor:
    """The INT8 calibration images as float32 (N, 3, H, W) in [0, 1].

    ``source``: a folder of normal images (searched recursively; ideally held-out normal
    training images, as the quantiles use; they are resized to ``image_size``), or a uint8
    or float [0, 1] tensor (N, 3, H, W) of the export's image size. At most ``size`` images
    are used, chosen evenly spaced in sorted order when there are more.
    """
    if size < 1:
        raise ValueError(f"calibration size must be >= 1, got {size}")
    if isinstance(source, torch.Tensor):
        if source.dim() != 4 or source.shape[1] != 3 or tuple(source.shape[2:]) != tuple(image_size):
            raise ValueError(
                f"calibration images must be (N, 3, {image_size[0]}, {image_size[1]}), got {tuple(source.shape)}"
            )
        if source.shape[0] == 0:
            raise ValueError("calibration images must hold at least one image")
        if source.dtype == torch.uint8:
            images = source.float().div_(255)
        elif source.is_floating_point():
            images = source.detach().float().cpu()
            check_unit_range(images)
        else:
            raise TypeError(f"calibration images must be uint8 or float in [0, 1], got {source.dtype}")
        pick = np.unique(np.linspace(0, images.shape[0] - 1, min(size, images.shape[0])).round().astype(int))
        return images[torch.from_numpy(pick)].contiguous()
    from ..data import find_images, open_image, to_rgb_array

    paths = find_images(source, "calibration image")
    pick = np.unique(np.linspace(0, len(paths) - 1, min(size, len(paths))).round().astype(int))
    height_width = (int(image_size[0]), int(image_size[1]))
    # open_image names a file with NaN or inf pixels (a float TIFF), not "values in [nan, nan]".
    arrays = [to_rgb_array(open_image(paths[i], "calibration image"), height_width) for i in pick]
    return torch.from_numpy(np.stack(arrays))


def _scoring_scope(ov_model: OVModel, nncf: ModuleType) -> Any:
    """NNCF's IgnoredScope for the scoring: every node that runs after the three networks'
    last convolutions (found by walking the graph from the outputs back to them; a ShapeOf
    reads only a shape, so the walk does not follow it into the networks)."""
    stop = {"Convolution", "GroupConvolution", "ShapeOf"}
    names: set[str] = set()
    todo = [output.get_node() for output in ov_model.outputs]
    while todo:
        node = todo.pop()
        if node.get_friendly_name() in names or node.get_type_name() in stop:
            continue
        names.add(node.get_friendly_name())
        todo += [value.get_node() for value in node.input_values()]
    return nncf.IgnoredScope(names=sorted(names), validate=False)


def export_openvino(
    model: EfficientAD,
    out: str | os.PathLike[str],
    image_size: int | Sequence[int] = 256,
    precision: str = "fp32",
    calibration_data: str | os.PathLike[str] | torch.Tensor | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
) -> Path:
    """Write an OpenVINO IR of ``model.predict`` to ``out`` (``.xml``; the weights go to the
    ``.bin`` beside it): float32 (N, 3, H, W) images in [0, 1] -> ``anomaly_map``
    (N, 1, H, W) and ``score`` (N,), dynamic batch.

    ``precision``: "fp32", "fp16" (weights stored in float16) or "int8" (NNCF post-training
    quantization of the networks on ``calibration_data``: a folder of normal images or an
    (N, 3, H, W) tensor, see :func:`calibration_images`; needed for int8 only, at most
    ``calibration_size`` images used). Needs the ``[openvino]`` extra.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and calibration_data is None:
        raise ValueError("int8 needs calibration_data: a folder of normal images (held-out training images)")
    if precision != "int8" and calibration_data is not None:
        raise ValueError(f"calibration_data is for int8 only, got precision {precision!r}")
    ov = _require("openvino")
    nncf = _require("nncf") if precision == "int8" else None
    size, example = _prepare(model, image_size)
    out = Path(out)
    if out.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR must end in .xml (weights go to the .bin beside it), got {out}")
    images = None
    if precision == "int8":
        assert calibration_data is not None  # refused above
        images = calibration_images(calibration_data, size, calibration_size)
    writable_folder(out.parent)
    # Both files under temporary names, renamed when whole (the .xml last): a failed or
    # interrupted export leaves any earlier IR at ``out`` as it was.
    # The .bin holds the weights (float16 for fp16, 8 bits for INT8's networks, fp32 else).
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    needs = weight_bytes // (2 if precision == "fp16" else 4 if precision == "int8" else 1)
    with (
        # The writer puts the .bin beside the .xml it writes: beside the file a link points to.
        atomic_files(out, Path(os.path.realpath(out)).with_suffix(".bin"), needs_bytes=needs) as (temporary, _),
        interrupts_held(EXPORTER_BUSY),
    ):
        ov_model = _ir_model(model, size, example, images, precision, ov, nncf)
        # save_model stores float16 weights unless told not to: only the fp16 export wants that.
        ov.save_model(ov_model, str(temporary), compress_to_fp16=precision == "fp16")
    return out


def _ir_model(
    model: EfficientAD,
    size: tuple[int, int],
    example: torch.Tensor,
    images: torch.Tensor | None,
    precision: str,
    ov: ModuleType,
    nncf: ModuleType | None,
) -> OVModel:
    """The OpenVINO model of :func:`export_openvino`: converted, named, quantized by NNCF when
    ``images`` are given, with the metadata in its rt_info."""
    graph = PredictGraph(model, "reference").cpu()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.export.export(graph, (example,), dynamic_shapes=({0: batch},))
        ov_model = ov.convert_model(program)
    ov_model.reshape({ov_model.inputs[0]: ov.PartialShape([-1, 3, size[0], size[1]])})
    for output, name in zip(ov_model.outputs, OUTPUT_NAMES):
        output.get_tensor().set_names({name})
    if images is not None:
        assert nncf is not None  # export_openvino imports it for int8, the one precision with images
        dataset = nncf.Dataset([images[i : i + 1].numpy() for i in range(images.shape[0])])
        nncf_log = logging.getLogger("nncf")
        level = nncf_log.level
        nncf_log.setLevel(logging.WARNING)  # not a line per operation it leaves in float
        try:
            ov_model = nncf.quantize(
                ov_model, dataset, subset_size=images.shape[0], ignored_scope=_scoring_scope(ov_model, nncf)
            )
        finally:
            nncf_log.setLevel(level)
    info = metadata(model, size)
    info["device"] = "any OpenVINO device (chosen at load)"
    info["openvino_precision"] = precision
    info["openvino_calibration_images"] = str(0 if images is None else images.shape[0])
    for key, value in info.items():
        ov_model.set_rt_info(str(value), [RT_INFO_SECTION, key])
    return ov_model


class LoadedOpenVINO:
    """An exported IR compiled for an OpenVINO device: ``ir(images) -> (map, score)``, or
    ``ir.predict(images, sensitivity=0.5)`` for a :class:`Prediction` with label and mask.

    ``images``: float32 (N, 3, H, W) torch tensor in [0, 1] of the export's image size (the
    same checks as :class:`efficientad_fast.export.LoadedPackage`); returns float32 CPU
    tensors ``anomaly_map`` (N, 1, H, W) and ``score`` (N,). ``metadata``: the IR's
    ``efficientad_fast`` rt_info as a dict of strings (checked by
    :func:`efficientad_fast.export.check_metadata`: format name, schema version, image size,
    thresholds); ``image_threshold`` and ``pixel_threshold``: floats or None.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "CPU",
        inference_precision: str | None = DEFAULT_INFERENCE_PRECISION,
        config: dict[str, Any] | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no OpenVINO model at {path}")
        if path.suffix != ".xml":
            raise ValueError(f"{path}: an OpenVINO IR is the .xml file (its weights are the .bin beside it)")
        # The .bin lies beside the file a link points to (export writes it there).
        real = os.path.realpath(path)
        weights = Path(real).with_suffix(".bin")
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: its weights file {weights} is missing")
        core = _core()
        try:
            # Read into memory, not mapped: a mapped .bin overwritten in place (cp over a
            # deployed IR) changed the scores of the running model or killed it with SIGBUS.
            ov_model = core.read_model(real, config={"ENABLE_MMAP": False})
        except Exception as exc:  # not XML, not an IR, a .bin that does not fit
            raise ValueError(f"{path}: cannot read it as an OpenVINO IR: {exc}") from exc
        self.metadata, checked = self._read_metadata(ov_model, path)
        self.path = path
        self.image_size = checked["image_size"]
        self.image_threshold: float | None = checked["image_threshold"]
        self.pixel_threshold: float | None = checked["pixel_threshold"]
        shape = ov_model.inputs[0].get_partial_shape()
        if shape.rank.is_dynamic or [d.get_length() if d.is_static else -1 for d in shape][1:] != [3, *self.image_size]:
            raise ValueError(f"{path}: input shape {shape} does not match the metadata's image size {self.image_size}")
        self.precision = self.metadata.get("openvino_precision", "unknown")
        self.device = device
        options = dict(config or {})
        if inference_precision is not None:
            options.setdefault("INFERENCE_PRECISION_HINT", inference_precision)
        try:
            self._compiled = core.compile_model(ov_model, device, options)
        except Exception as exc:  # an unknown device or option
            # A plugin that cannot load (the GPU one without OpenCL) says so in its own terms only.
            here = ", ".join(core.available_devices) or "none"
            raise ValueError(
                f"{path}: OpenVINO cannot compile it for device {device!r} with {options} "
                f"(devices on this machine: {here}): {exc}"
            ) from exc

    @staticmethod
    def _read_metadata(ov_model: OVModel, path: Path) -> tuple[dict[str, str], CheckedMetadata]:
        if not ov_model.has_rt_info([RT_INFO_SECTION]):
            raise ValueError(
                f"{path}: an OpenVINO IR but not an efficientad_fast model (no '{RT_INFO_SECTION}' "
                "rt_info); export one with `efficientad-fast export --format openvino`"
            )
        section = ov_model.get_rt_info([RT_INFO_SECTION])
        info = {str(key): value.astype(str) for key, value in section.astype(dict).items()}
        return info, check_metadata(info, f"{path} (an OpenVINO IR)")

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_exported_input(images, self.image_size, self.path)
        images = images.detach().cpu()
        check_unit_range(images)
        # The compiled model's own request copies its outputs (share_outputs=False), so the
        # arrays stay valid after the next call.
        results = self._compiled(images.contiguous().numpy())
        amap, score = (torch.from_numpy(results[output]) for output in self._compiled.outputs)
        return amap, score

    def predict(self, images: torch.Tensor, sensitivity: float = 0.5) -> Prediction:
        """:class:`Prediction` with ``label`` and ``mask`` at the thresholds in the IR's
        rt_info, shifted by ``sensitivity`` as :meth:`EfficientAD.predict` does (None when
        the IR has no such threshold)."""
        amap, score = self(images)
        return decisions(score, amap, self.image_threshold, self.pixel_threshold, sensitivity)


def load_openvino(
    path: str | os.PathLike[str],
    device: str = "CPU",
    inference_precision: str | None = DEFAULT_INFERENCE_PRECISION,
    config: dict[str, Any] | None = None,
) -> LoadedOpenVINO:
    """Load and compile an IR written by :func:`export_openvino` for ``device`` ("CPU",
    "GPU", "AUTO", ...), checking its rt_info (format name and version, image size).

    ``inference_precision``: the ``INFERENCE_PRECISION_HINT`` ("f32", default, for results
    equal to ``predict``; "bf16" lets a CPU with AVX-512 BF16 or AMX compute the float parts
    in bfloat16; None: OpenVINO's choice). ``config``: further ``compile_model`` properties,
    e.g. ``{"PERFORMANCE_HINT": "THROUGHPUT"}`` or ``{"INFERENCE_NUM_THREADS": 2}``.
    """
    return LoadedOpenVINO(path, device, inference_precision, config)
