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

Both carry metadata a host can check before running them (:func:`metadata`): the format
``efficientad_fast.predict``, the image size, the device and whether the map is calibrated.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from ._checkpoint import writable_folder
from .model import EfficientAD, check_unit_range
from .networks import check_image_size
from .reference import reference_anomaly_map

FORMATS = ("aoti", "onnx")
# Written into the .pt2 package (AOTInductor metadata) and the ONNX model's metadata_props.
PACKAGE_FORMAT = "efficientad_fast.predict"
PACKAGE_VERSION = "1"
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
            return torch.ops.efficientad_fast.anomaly_map.default(
                *features, None, None, quantiles, model.alpha, model.map_pad, list(output_size), model.distance,
            )
        if quantiles is not None:
            quantiles = tuple(quantiles.unbind(0))
        return reference_anomaly_map(
            *model.features(x), teacher_mean=model.teacher_mean, teacher_std=model.teacher_std,
            quantiles=quantiles, alpha=model.alpha, pad=model.map_pad, output_size=output_size,
            distance=model.distance,
        )


def _prepare(model: EfficientAD, image_size) -> tuple[tuple[int, int], torch.Tensor]:
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


def metadata(model: EfficientAD, image_size: tuple[int, int], device: str = "cpu") -> dict[str, str]:
    """What a host needs to know about an exported package, as strings."""
    return {
        "device": device,
        "format": PACKAGE_FORMAT,
        "format_version": PACKAGE_VERSION,
        "image_height": str(image_size[0]),
        "image_width": str(image_size[1]),
        "input": "float32 (N, 3, H, W) RGB in [0, 1]",
        "outputs": "anomaly_map float32 (N, 1, H, W); score float32 (N,)",
        "quantiles_set": "1" if model.quantiles_set else "0",
        "model_size": model.model_size,
    }


def export_aoti(model: EfficientAD, out: str | os.PathLike, image_size=256, device: str = "cpu") -> Path:
    """Write an AOTInductor package of ``model.predict`` (fused op, dynamic batch) to ``out``.

    The package calls ``efficientad_fast::anomaly_map``: load the op library before loading
    the package (Python: ``efficientad_fast.load_extension()``; C++: link it). Its metadata
    (``format``, ``image_height``, ``image_width``, ``device``, ...) is readable with
    ``AOTIModelPackageLoader::get_metadata()``. ``device="cuda"`` compiles for the GPU
    (export on a machine with one); the package then takes CUDA tensors.
    Inputs must be contiguous float32 (N, 3, H, W): :func:`load_package` checks that.
    """
    from ._extension import load_extension

    load_extension()  # torch.export needs the op (and its fake kernel) registered
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("a CUDA package is compiled on a machine with a GPU: none is visible here")
    size, example = _prepare(model, image_size)
    out = Path(out)
    if out.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package must end in .pt2, got {out}")
    writable_folder(out.parent)
    graph = PredictGraph(model, "fused").to(device)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        exported = torch.export.export(graph, (example.to(device),), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(
            exported,
            package_path=str(out),
            inductor_configs={"aot_inductor.metadata": metadata(model, size, device.type)},
        )
    return out


class LoadedPackage:
    """An exported ``.pt2`` package loaded in Python: ``package(images) -> (map, score)``.

    Checks what the compiled code does not: the input's dtype, shape and device (the
    package reads its input as contiguous float32, so other layouts are made contiguous),
    and, for CPU tensors, that the values lie in [0, 1] as :meth:`EfficientAD.predict` does.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from ._extension import load_extension

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model package at {path}")
        load_extension()  # the package calls efficientad_fast::anomaly_map
        try:
            self._runner = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # a zip that is not a package, a truncated file, ...
            raise ValueError(f"{path}: cannot load it as an AOTInductor package: {exc}") from exc
        self.metadata = dict(self._runner.get_metadata())
        if self.metadata.get("format") != PACKAGE_FORMAT:
            raise ValueError(
                f"{path}: an AOTInductor package but not an efficientad_fast model "
                f"(metadata format={self.metadata.get('format')!r}); export one with `efficientad-fast export`"
            )
        self.path = path
        self.image_size = (int(self.metadata["image_height"]), int(self.metadata["image_width"]))
        self.device = torch.device(self.metadata.get("device", "cpu"))

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dtype != torch.float32:
            raise TypeError(f"images must be float32 in [0, 1], got {images.dtype} (uint8: divide by 255)")
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(
                f"images must be (N, 3, {self.image_size[0]}, {self.image_size[1]}) for {self.path}, "
                f"got {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            raise ValueError("images must hold at least one image")
        if images.device.type == "cpu":  # as predict: on a GPU the check would synchronize
            check_unit_range(images)
        return tuple(self._runner(images.to(self.device).contiguous()))


def load_package(path: str | os.PathLike) -> LoadedPackage:
    """Load a package written by :func:`export_aoti` (loads the op library first)."""
    return LoadedPackage(path)


def export_onnx(model: EfficientAD, out: str | os.PathLike, image_size=256, opset: int = 18) -> Path:
    """Write an ONNX model of ``model.predict`` to ``out`` with the scoring in standard ONNX
    ops (the fused op's plain-PyTorch reference), dynamic batch, opset ``opset`` (>= 17).

    Needs the ``onnx`` and ``onnxscript`` packages (``pip install "efficientad_fast[onnx]"``).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter writes with it)
    except ImportError as exc:
        raise ImportError(
            f'ONNX export needs onnx and onnxscript ({exc}): pip install "efficientad_fast[onnx]"'
        ) from exc
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    size, example = _prepare(model, image_size)
    out = Path(out)
    writable_folder(out.parent)
    graph = PredictGraph(model, "reference").cpu()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (example,), dynamo=True, opset_version=opset,
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    proto = program.model_proto
    for key, value in metadata(model, size).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out
