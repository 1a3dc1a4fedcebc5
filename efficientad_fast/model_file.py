"""Reading a model file written by :meth:`EfficientAD.save`: the checksum of everything it
holds, the format version, the statistics it brought, and the precision it is run in."""

from __future__ import annotations

import difflib
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ._checkpoint import (
    describe_start,
    first_line,
    load_state_dict_checked,
    payload_checksum,
    require_file,
    state_checksum,
)
from ._model_checks import check_statistics
from .int8 import Int8Calibration
from .model import FORMAT, FORMAT_VERSION, EfficientAD
from .precision import choose_precision


def _checksum_or_corrupt(payload: dict[str, Any], path: Path) -> str:
    """The payload's SHA-256, or ValueError when a value cannot even be hashed (a flipped byte
    in a tensor's metadata can leave a tensor torch cannot view)."""
    try:
        return payload_checksum(payload)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt: {type(exc).__name__}: {first_line(exc)}") from exc


# What torch.save's pickle of plain tensors and dicts names; a refused name among these is a
# changed byte (a whole nn.Module saved names torch.nn..., another tool's file its own classes).
_PICKLE_MACHINERY = ("torch._utils", "torch._tensor", "torch.storage", "collections", "builtins", "_codecs")


def _names_pickle_machinery(name: str) -> bool:
    """``name`` is one of those, or one with a changed character (difflib ratio >= 0.8)."""
    return any(difflib.SequenceMatcher(None, name[: len(m)], m).ratio() >= 0.8 for m in _PICKLE_MACHINERY)


def _names_our_format(path: Path) -> bool:
    """The file's pickle (inside its zip) names our format: one of our files, edited."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return bool(pickles) and FORMAT.encode() in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return False


def _read_payload(path: Path) -> tuple[dict[str, Any], int]:
    """The file's payload (read weights-only, on the CPU) and its format version; ValueError
    that tells a damaged file from another tool's."""
    try:
        # On the CPU first: the checks below run there, then the model moves to the device.
        with warnings.catch_warnings():  # a sparse tensor is refused below, in our words
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read it as a model file (truncated or corrupt?): {first_line(exc)}") from exc
    except Exception as exc:  # pickle.UnpicklingError and friends
        start = describe_start(path)
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        # A PyTorch file whose pickle is damaged: unreadable, or naming a torch or collections
        # object that does not exist (a changed byte in "torch._utils._rebuild_tensor_v2").
        damaged = refused is None or _names_pickle_machinery(refused.group(1))
        if start == "a zip archive" and damaged:
            raise ValueError(f"{path}: corrupt: its pickled part cannot be read ({first_line(exc)})") from exc
        if start == "a zip archive" and refused is not None and _names_our_format(path):
            raise ValueError(
                f"{path}: a model file holding a {refused.group(1)} object, which efficientad_fast never writes "
                "(edited by another tool?): it is not read, as it could run code"
            ) from exc
        hint = ""
        if Path(path).suffix.lower() in (".xml", ".bin", ".onnx", ".pt2"):  # an export of ours, given as --model
            hint = (
                "; the command line reads model.pt files: an export runs in its runtime (an OpenVINO IR "
                "with efficientad_fast.deploy.openvino.load_openvino, a .pt2 with "
                "efficientad_fast.deploy.export.load_package, ONNX with onnxruntime)"
            )
        raise ValueError(f"{path}: not an efficientad_fast model file ({start}){hint}") from exc
    if isinstance(payload, dict) and {"config", "format_version"} <= payload.keys() and payload.get("format") != FORMAT:
        # Our other keys are there: a changed byte, not another tool's file.
        raise ValueError(f"{path}: corrupt: format is {payload.get('format')!r}, not {FORMAT!r}")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and "state_dict" in payload:
            hint = " (a Lightning/anomalib checkpoint? use efficientad_fast.from_anomalib)"
        elif isinstance(payload, dict) and str(payload.get("kind", "")).endswith("training-checkpoint"):
            hint = " but a training checkpoint (train --resume continues it; the model is model.pt beside it)"
        keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not an efficientad_fast model file{hint}; found {keys}")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path}: format_version must be an integer, got {version!r}")
    if version < 1:
        raise ValueError(f"{path}: format_version must be >= 1, got {version}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version!r} is newer than this efficientad_fast reads ({FORMAT_VERSION}); upgrade"
        )
    return payload, version


def _check_checksum(payload: dict[str, Any], path: Path, version: int) -> None:
    """The payload's digest against the one it carries (ValueError: corrupt); files of version 1
    without the digest of everything load with a warning."""
    checksum = payload.get("checksum")
    if version >= 2 and not (isinstance(checksum, dict) and "all_sha256" in checksum):
        # Version 2 files always carry the digest of everything: without it, a changed byte.
        raise ValueError(f"{path}: corrupt: a version {version} model file without its all_sha256 checksum")
    if checksum is None:
        warnings.warn(
            f"{path}: model file has no checksum (written by an older efficientad_fast); "
            "corruption cannot be detected. Save it again to add one.",
            stacklevel=3,
        )
    elif not isinstance(checksum, dict):
        raise ValueError(f"{path}: corrupt: the checksum entry is a {type(checksum).__name__}, not a dict")
    elif "all_sha256" in checksum:
        if checksum["all_sha256"] != _checksum_or_corrupt(payload, path):
            raise ValueError(
                f"{path}: corrupt: checksum mismatch (the weights, settings, thresholds or INT8 ranges "
                "changed since the file was written)"
            )
    elif checksum.get("sha256") != state_checksum(payload["state_dict"]):  # files written before "all_sha256"
        raise ValueError(f"{path}: corrupt: checksum mismatch (the weights changed since the file was written)")
    else:
        warnings.warn(
            f"{path}: the checksum of this version 1 model file covers its weights only, not its "
            "settings and thresholds. Save it again to cover everything.",
            stacklevel=3,
        )


def load(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    precision: str = "fp32",
    batch_size: int = 1,
    image_size: int | tuple[int, int] = 256,
) -> EfficientAD:
    """Read a file written by :meth:`EfficientAD.save` (with ``torch.load(weights_only=True)``);
    the model comes back in eval mode, in ``precision``: "fp32" (default), "bf16", "fp16",
    "int8" (needs the INT8 calibration that ``train`` and :func:`quantize` store) or "auto":
    the fastest on this machine for batches of ``batch_size`` images of ``image_size`` px
    among those whose map stays within 0.1 of the fp32 map's range, timed once (INT8
    compiles first: a minute at most) and then cached (:func:`efficientad_fast.precision.choose_precision`).

    Raises FileNotFoundError for a missing file and ValueError for a truncated or corrupt
    file (including bytes changed in place: the file's SHA-256 of everything it holds, weights,
    settings, thresholds, flags and INT8 ranges, must match; files written before that
    digest existed have the weights' only),
    a file of another format, a newer format version, weights of the wrong size, or
    teacher statistics or quantiles that would make the maps inf or NaN, or a CUDA
    ``map_location`` on a machine without a GPU. Files written
    before the checksum existed load with a warning.
    """
    path = require_file(path, f"no model file at {path}")
    device = torch.device(map_location)
    if device.type == "cuda" and not torch.cuda.is_available():
        # Else torch.load's error would read as a broken file.
        raise ValueError(f"cannot load {path} onto {device}: no CUDA device is available (use map_location='cpu')")
    payload, version = _read_payload(path)
    missing = [k for k in ("config", "state_dict") if not isinstance(payload.get(k), dict)]
    if missing:
        raise ValueError(f"{path}: model file is incomplete: no {' or '.join(missing)}")
    try:
        # The file holds the teacher's weights: skip reading the shipped one.
        model = EfficientAD(**payload["config"], teacher="random")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: model file has an invalid config {payload['config']}: {exc}") from exc
    # Missing keys and wrong shapes first: their errors say more than a checksum mismatch.
    try:
        load_state_dict_checked(model, payload["state_dict"], source=str(path))
    except (AttributeError, KeyError, TypeError, RuntimeError) as exc:  # a value of the wrong type
        raise ValueError(f"{path}: corrupt: {type(exc).__name__}: {first_line(exc)}") from exc
    except ValueError as exc:  # e.g. float('abc') of a threshold; our own messages name the file
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: corrupt: {first_line(exc)}") from exc
    _check_checksum(payload, path, version)
    if payload.get("int8") is not None:
        model.int8_calibration = Int8Calibration.from_payload(payload["int8"], str(path))
    check_statistics(model, str(path))
    model = model.to(device).eval()
    if precision == "auto":
        return choose_precision(model, batch_size=batch_size, image_size=image_size)
    try:
        return model.set_precision(precision)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
