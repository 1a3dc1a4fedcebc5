"""Export of :meth:`EfficientAD.predict` for programs without Python.

Two formats of the same computation — images in, anomaly map and image score out, batch
size dynamic, image height and width fixed at export time:

* ``aoti``: an AOTInductor package (``.pt2``) made with ``torch.export`` and
  ``torch._inductor.aoti_compile_and_package``. It calls our fused op
  ``efficientad_fast::anomaly_map`` through AOTInductor's proxy executor, so the host must
  load the op library before it loads the package (C++: link or dlopen
  ``libefficientad_fast.so``; Python: :func:`efficientad_fast.load_extension`).
* ``onnx``: an ONNX model in which the scoring (the fused op's work) is written in standard
  ONNX ops, because onnxruntime has no kernel of ours.

Inputs of both: float32 (N, 3, H, W) RGB in [0, 1] (divide 8-bit images by 255).
Outputs: ``anomaly_map`` float32 (N, 1, H, W) and ``score`` float32 (N,), equal to
``model.predict(images)`` (the AOTI package to within float rounding of the compiled
networks, the ONNX model to within 1e-4 of the map's range).

Both carry metadata a host can check before running them (:func:`metadata`, string keys
and values; schema version 2, see :data:`METADATA_KEYS`): the format name
``efficientad_fast.predict`` and schema version, the image size, the input normalization,
the device, the quantiles, the decision thresholds, the teacher's source and the model's
settings. The graphs output score and map only: a host labels an image anomalous when its
score is above ``image_threshold`` and marks pixels above ``pixel_threshold``
(:meth:`LoadedPackage.predict` does this, with a sensitivity as ``EfficientAD.predict``).
Our loaders (:func:`load_package`, :func:`read_onnx_metadata`) check the metadata with
:func:`check_metadata` and refuse other formats and schema versions.
"""

from __future__ import annotations

import copy
import errno
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn

from .._checkpoint import atomic_files, writable_folder
from .._numbers import MAX_SIDE
from .._signals import interrupts_held
from ..model import EfficientAD, Prediction, check_unit_range, decisions
from ..networks import check_image_size
from ..op._build import import_cpp_extension
from ..op.reference import reference_anomaly_map

FORMATS = ("aoti", "onnx")
# Said when Ctrl-C or SIGTERM comes during an export: torch.export and OpenVINO turn an
# interrupt raised inside them into another error (or lose it), so it is held until they return.
EXPORTER_BUSY = (
    "interrupt received: stopping when the exporter returns (it cannot be stopped midway); nothing will be written"
)

# Written into the .pt2 package (AOTInductor metadata) and the ONNX model's metadata_props.
PACKAGE_FORMAT = "efficientad_fast.predict"
# The metadata schema version. 1: format, size, device, quantiles_set, model_size; 2 adds
# the normalization, quantiles, thresholds, teacher source and model settings.
PACKAGE_VERSION = "2"
READABLE_VERSIONS = ("1", "2")
# Schema 2, key -> meaning. Every value is a string; numbers are Python reprs (round-trip
# exact float32/float64 values); "" means "none" (an uncalibrated model has no thresholds).
METADATA_KEYS = {
    "format": f"always {PACKAGE_FORMAT!r}",
    "format_version": "the schema version, '2'",
    "device": "cpu or cuda: where the compiled package runs",
    "image_height": "input height in pixels (fixed at export)",
    "image_width": "input width in pixels (fixed at export)",
    "input": "the input tensor, in words",
    "outputs": "the output tensors, in words",
    "normalization": "what the graph does to the input (ImageNet mean/std inside the networks)",
    "quantiles_set": "'1' when the map is normalized by calibrated quantiles, else '0'",
    "quantiles": "q_a_st,q_b_st,q_a_ae,q_b_ae of the map normalization ('' when not calibrated)",
    "image_threshold": "label = score > this ('' when none)",
    "pixel_threshold": "mask = anomaly_map > this ('' when none)",
    "threshold_source": "how the thresholds were chosen",
    "sensitivity_rule": "how a sensitivity s in [0, 1] moves both thresholds",
    "teacher_source": "which teacher the model was trained with",
    "model_size": "small or medium",
    "alpha": "weight of the student-teacher map in the fused map",
    "distance": "l2 or cosine",
}
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["anomaly_map", "score"]


class PredictGraph(nn.Module):
    """``EfficientAD.predict`` as a plain module that ``torch.export`` can trace: float32
    (N, 3, H, W) images in [0, 1] -> (anomaly_map (N, 1, H, W), score (N,)).

    ``scoring="fused"`` calls the custom op with the teacher standardization folded into
    the teacher's last conv, exactly as ``predict`` does; ``scoring="reference"`` writes the
    scoring in plain PyTorch ops (for ONNX). A model without calibrated quantiles gives the
    unnormalized map, as ``predict`` does.
    """

    teacher_weight: torch.Tensor  # buffers of the fused scoring
    teacher_bias: torch.Tensor

    def __init__(self, model: EfficientAD, scoring: str = "fused") -> None:
        super().__init__()
        if scoring not in ("fused", "reference"):
            raise ValueError(f"scoring must be 'fused' or 'reference', got {scoring!r}")
        if not isinstance(model, EfficientAD):
            raise TypeError(f"model must be an EfficientAD, got {type(model).__name__}")
        if model.dtype != torch.float32:
            raise TypeError(f"export needs a float32 model, got {model.dtype}; call model.float() first")
        # A private copy in eval mode (no dropout): export leaves the caller's model as it
        # is, and predict leaves weights as inference tensors, which torch.export rejects.
        model = copy.deepcopy(model).eval()
        self.scoring = scoring
        self.model = model
        if scoring == "fused":
            # The same fold predict uses: the teacher's last conv emits standardized features.
            weight, bias = model._folded_teacher_conv()
            self.register_buffer("teacher_weight", weight.detach().clone())
            self.register_buffer("teacher_bias", bias.detach().clone())
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        x = images.contiguous(memory_format=torch.channels_last)
        output_size = (x.shape[2], x.shape[3])
        quantiles = model.quantiles if model.quantiles_set else None
        if self.scoring == "fused":
            features = model.features(x, teacher_conv=(self.teacher_weight, self.teacher_bias))
            scored: tuple[torch.Tensor, torch.Tensor] = torch.ops.efficientad_fast.anomaly_map.default(
                *features, None, None, quantiles, model.alpha, model.map_pad, list(output_size), model.distance
            )
            return scored
        # The four quantiles as four 0-d tensors: plain ops on each, no host read.
        quantile_values = None if quantiles is None else [q for q in quantiles.unbind(0)]
        return reference_anomaly_map(
            *model.features(x),
            teacher_mean=model.teacher_mean,
            teacher_std=model.teacher_std,
            quantiles=quantile_values,  # type: ignore[arg-type]  # 0-d tensors where numbers go
            alpha=model.alpha,
            pad=model.map_pad,
            output_size=output_size,
            distance=model.distance,
        )


def _prepare(model: EfficientAD, image_size: int | Sequence[int]) -> tuple[tuple[int, int], torch.Tensor]:
    if not isinstance(model, EfficientAD):
        raise TypeError(f"model must be an EfficientAD, got {type(model).__name__}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    height, width = (int(v) for v in image_size)
    check_image_size(height, width)
    # Batch 2 as the example: a batch of 1 would let torch.export specialize the batch to 1.
    example = torch.rand(2, 3, height, width)
    return (height, width), example


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def metadata(model: EfficientAD, image_size: tuple[int, int], device: str = "cpu") -> dict[str, str]:
    """What a host needs to know about an exported model, as str -> str (schema version 2,
    keys :data:`METADATA_KEYS`): AOTInductor metadata, ONNX ``metadata_props`` and OpenVINO
    ``rt_info`` all carry this dict."""
    quantiles = ",".join(repr(float(q)) for q in model.quantiles.tolist()) if model.quantiles_set else ""
    return {
        "device": str(device),
        "format": PACKAGE_FORMAT,
        "format_version": PACKAGE_VERSION,
        "image_height": str(int(image_size[0])),
        "image_width": str(int(image_size[1])),
        "input": "float32 (N, 3, H, W) RGB in [0, 1]",
        "outputs": "anomaly_map float32 (N, 1, H, W); score float32 (N,)",
        "normalization": "RGB in [0, 1]; ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225) "
        "applied inside the graph",
        "quantiles_set": "1" if model.quantiles_set else "0",
        "quantiles": quantiles,
        "image_threshold": _number(model.image_threshold),
        "pixel_threshold": _number(model.pixel_threshold),
        "threshold_source": model.threshold_source,
        "sensitivity_rule": "threshold * 2**(1 - 2*s) (threshold / 2**(1 - 2*s) when negative); s = 0.5: as stored",
        "teacher_source": str(model.teacher_source),
        "model_size": model.model_size,
        "alpha": repr(float(model.alpha)),
        "distance": model.distance,
    }


class CheckedMetadata(TypedDict):
    """What :func:`check_metadata` returns."""

    image_size: tuple[int, int]
    device: str
    format_version: str
    image_threshold: float | None
    pixel_threshold: float | None


def check_metadata(info: dict[str, str], source: str | os.PathLike[str]) -> CheckedMetadata:
    """Check exported metadata (AOTInductor, ONNX or OpenVINO) read from ``source`` and
    return what a loader needs: {"image_size": (H, W), "device", "image_threshold",
    "pixel_threshold" (floats or None), "format_version"}. ValueError naming ``source`` for
    another format, a schema version this efficientad_fast does not read, or bad values."""
    if info.get("format") != PACKAGE_FORMAT:
        raise ValueError(
            f"{source}: not an efficientad_fast model (metadata format={info.get('format')!r}, "
            f"expected {PACKAGE_FORMAT!r}); export one with `efficientad-fast export`"
        )
    version = info.get("format_version")
    if version is None or version not in READABLE_VERSIONS:
        raise ValueError(
            f"{source}: metadata schema version {version!r}; this efficientad_fast reads versions "
            f"{', '.join(READABLE_VERSIONS)}: export the model again with this version"
        )
    size = []
    for key in ("image_height", "image_width"):
        # ASCII digits only: str.isdigit takes "²" and int() then fails; 5 digits hold any side.
        if not re.fullmatch(r"[0-9]{1,5}", str(info.get(key, ""))) or not 1 <= int(info[key]) <= MAX_SIDE:
            raise ValueError(f"{source}: metadata has no valid {key} (got {str(info.get(key))[:40]!r})")
        size.append(int(info[key]))
    thresholds: dict[str, float | None] = {}
    for key in ("image_threshold", "pixel_threshold"):
        text = info.get(key, "")  # absent in version 1
        try:
            value = float(text) if text != "" else None
        except ValueError:
            raise ValueError(f"{source}: metadata {key} must be a number or empty, got {text!r}") from None
        if value is not None and not torch.isfinite(torch.tensor(value)):
            raise ValueError(f"{source}: metadata {key} must be finite, got {text!r}")
        thresholds[key] = value
    return {
        "image_size": (size[0], size[1]),
        "device": info.get("device", "cpu") or "cpu",
        "format_version": version,
        "image_threshold": thresholds["image_threshold"],
        "pixel_threshold": thresholds["pixel_threshold"],
    }


def _require_free_space(out: Path, model: EfficientAD) -> None:
    """An OSError before compiling when ``out``'s disk cannot hold the package (its weights and
    compiled code: about twice the weights plus 64 MiB): AOTInductor's C++ writer aborts the
    whole process on a full disk, where nothing can clean up or explain."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if torch.is_tensor(t))
    needed = 2 * weights + 64 * 2**20
    free = shutil.disk_usage(out.parent).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"no space for {out}: an AOTInductor package of this model needs about "
            f"{needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free",
        )


def export_aoti(
    model: EfficientAD, out: str | os.PathLike[str], image_size: int | Sequence[int] = 256, device: str = "cpu"
) -> Path:
    """Write an AOTInductor package of ``model.predict`` (fused op, dynamic batch) to ``out``.

    The package calls ``efficientad_fast::anomaly_map``: load the op library before loading
    the package (Python: ``efficientad_fast.load_extension()``; C++: link it). Its metadata
    (``format``, ``image_height``, ``image_width``, ``device``, ...) is readable with
    ``AOTIModelPackageLoader::get_metadata()``. ``device="cuda"`` compiles for the GPU
    (export on a machine with one); the package then takes CUDA tensors.
    Inputs must be contiguous float32 (N, 3, H, W): :func:`load_package` checks that.
    """
    from ..op._library import load_extension

    load_extension()  # torch.export needs the op (and its fake kernel) registered
    target = torch.device(device)
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {target}")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("a CUDA package is compiled on a machine with a GPU: none is visible here")
    size, example = _prepare(model, image_size)
    out = Path(out)
    if out.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package must end in .pt2, got {out}")
    writable_folder(out.parent)
    _require_free_space(out, model)
    graph = PredictGraph(model, "fused").to(target)
    batch = torch.export.Dim("batch", min=1, max=1024)
    import_cpp_extension()  # before Inductor imports it: without its no-GPU warning
    with atomic_files(out) as (temporary,), torch.no_grad(), interrupts_held(EXPORTER_BUSY):  # whole or nothing
        exported = torch.export.export(graph, (example.to(target),), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(
            exported,
            package_path=str(temporary),
            inductor_configs={"aot_inductor.metadata": metadata(model, size, target.type)},
        )
    return out


class LoadedPackage:
    """An exported ``.pt2`` package loaded in Python: ``package(images) -> (map, score)``.

    Checks what the compiled code does not: the input's dtype, shape and device (the
    package reads its input as contiguous float32, so other layouts are made contiguous),
    and, for CPU tensors, that the values lie in [0, 1] as :meth:`EfficientAD.predict` does.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from ..op._library import load_extension

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model package at {path}")
        load_extension()  # the package calls efficientad_fast::anomaly_map
        try:
            self._runner = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # a zip that is not a package, a truncated file, ...
            raise ValueError(f"{path}: cannot load it as an AOTInductor package: {exc}") from exc
        self.metadata = dict(self._runner.get_metadata())
        checked = check_metadata(self.metadata, f"{path} (an AOTInductor package)")
        self.path = path
        self.image_size = checked["image_size"]
        self.device = torch.device(checked["device"])
        self.image_threshold: float | None = checked["image_threshold"]
        self.pixel_threshold: float | None = checked["pixel_threshold"]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_exported_input(images, self.image_size, self.path)
        if images.device.type == "cpu":  # as predict: on a GPU the check would synchronize
            check_unit_range(images)
        return tuple(self._runner(images.to(self.device).contiguous()))

    def predict(self, images: torch.Tensor, sensitivity: float = 0.5) -> Prediction:
        """:class:`Prediction` with ``label`` and ``mask`` at the thresholds in the package's
        metadata, shifted by ``sensitivity`` as :meth:`EfficientAD.predict` does (None when the
        package has no such threshold)."""
        amap, score = self(images)
        return decisions(score, amap, self.image_threshold, self.pixel_threshold, sensitivity)


def check_exported_input(images: torch.Tensor, image_size: tuple[int, int], path: object) -> None:
    """What an exported model (package, OpenVINO IR) takes: a float32 (N >= 1, 3, H, W) tensor
    of the size it was exported for; TypeError/ValueError naming what is wrong otherwise."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.float32:
        raise TypeError(f"images must be float32 in [0, 1], got {images.dtype} (uint8: divide by 255)")
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != tuple(image_size):
        raise ValueError(
            f"images must be (N, 3, {image_size[0]}, {image_size[1]}) for {path}, got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image")


def load_package(path: str | os.PathLike[str]) -> LoadedPackage:
    """Load a package written by :func:`export_aoti` (loads the op library first)."""
    return LoadedPackage(path)


# torch.onnx builds opset 18 and converts to the one asked for; onnx's converter cannot take
# this graph below 18 (its ReduceMean/Split axes are inputs there), so 17 always failed after
# 17 lines of converter output.
OLDEST_OPSET = 18


def check_opset(opset: int) -> None:
    """ImportError without the ``[onnx]`` extra; ValueError unless ``opset`` is an integer
    from OLDEST_OPSET (18, what torch.onnx builds) to the newest the installed onnx knows."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter writes with it)
    except ImportError as exc:
        raise ImportError(
            f'ONNX export needs onnx and onnxscript ({exc}): pip install "efficientad_fast[onnx]"'
        ) from exc
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not OLDEST_OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be an integer from {OLDEST_OPSET} (what torch.onnx builds; this graph does not "
            f"convert lower) to {newest} (the newest this onnx {onnx.__version__} knows), got {opset!r}"
        )


def export_onnx(
    model: EfficientAD, out: str | os.PathLike[str], image_size: int | Sequence[int] = 256, opset: int = 18
) -> Path:
    """Write an ONNX model of ``model.predict`` to ``out`` with the scoring in standard ONNX
    ops (the fused op's plain-PyTorch reference), dynamic batch, opset ``opset`` (>= 18).

    Needs the ``onnx`` and ``onnxscript`` packages (``pip install "efficientad_fast[onnx]"``).
    """
    import onnx

    check_opset(opset)
    size, example = _prepare(model, image_size)
    out = Path(out)
    writable_folder(out.parent)
    graph = PredictGraph(model, "reference").cpu()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with atomic_files(out) as (temporary,):  # a half model never replaces a whole one
        with torch.no_grad(), interrupts_held(EXPORTER_BUSY):
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
        assert program is not None  # dynamo=True always returns the program
        proto = program.model_proto
        # torch.onnx builds opset 18 and converts; where the conversion fails it keeps 18
        # with a warning only: say so rather than write another opset than the one asked for.
        written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if written != opset:
            raise ValueError(
                f"asked for ONNX opset {opset}, but torch {torch.__version__.split('+')[0]} could only "
                f"write opset {written} for this model; pass --opset {written} (nothing was written)"
            )
        for key, value in metadata(model, size).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(temporary))
    return out


def read_onnx_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, str], CheckedMetadata]:
    """The ``metadata_props`` of an ONNX model written by :func:`export_onnx`, and what
    :func:`check_metadata` makes of them (raises ValueError for another format or schema
    version). Reads the graph without its weights."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: not an ONNX file
        raise ValueError(f"{path}: cannot read it as an ONNX model: {exc}") from exc
    info = {p.key: p.value for p in proto.metadata_props}
    return info, check_metadata(info, f"{path} (an ONNX model)")
