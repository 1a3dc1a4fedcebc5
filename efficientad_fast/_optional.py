"""The ``[distill]`` extra's packages (timm, scikit-image, torchvision), imported on first use
with an error that says how to install them (teacher distillation, the bundled penalty images)."""

from __future__ import annotations

import importlib


def require(module: str):
    """``importlib.import_module(module)``, or an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this needs '{module.split('.')[0]}' (teacher distillation, bundled penalty images): "
                          "pip install 'efficientad_fast[distill]'") from exc
