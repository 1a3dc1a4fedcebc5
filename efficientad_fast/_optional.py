"""Packages of the optional extras, imported on first use with an error that says which extra
installs them: ``[distill]`` (timm, scikit-image, torchvision: teacher distillation, the bundled
penalty images), ``[ray]``, ``[video]`` (PyAV), ``[openvino]`` (OpenVINO, NNCF)."""

from __future__ import annotations

import importlib
from types import ModuleType

# What each extra is for, named in the error.
EXTRA_PURPOSE = {
    "distill": "teacher distillation, bundled penalty images",
    "ray": "--engine ray: Ray with Ray Data",
    "video": "video files and cameras: PyAV (FFmpeg)",
    "openvino": "OpenVINO export and INT8 quantization",
}


def require(module: str, extra: str = "distill") -> ModuleType:
    """``importlib.import_module(module)``, or an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this needs '{module.split('.')[0]}' ({EXTRA_PURPOSE[extra]}): "
            f"pip install 'efficientad_fast[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
        ) from exc
