"""Loading the compiled op library into ``torch.ops.efficientad_fast``: the ahead-of-time
build inside the package if there is one, else the JIT build (compiled on first use,
cached, rebuilt when a source changes). Build settings live in ``_build.py``."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from . import _build

_lock = threading.Lock()
_loaded: dict | None = None


def _aot_library() -> Path | None:
    libs = sorted(Path(__file__).resolve().parent.glob("_C*.so"))
    return libs[0] if libs else None


def load_extension(verbose: bool | None = None) -> dict:
    """Make ``torch.ops.efficientad_fast.anomaly_map`` available, building it if needed.

    Returns a dict describing what was loaded (``path``, ``how``: "aot" or "jit",
    ``plan``: the build settings). Raises :class:`efficientad_fast.BuildError` with the
    compiler's message when the build fails.
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        aot = _aot_library()
        if aot is not None:
            torch.ops.load_library(str(aot))
            _loaded = {"path": str(aot), "how": "aot", "plan": None}
        else:
            plan = _build.build_plan(jit=True)
            path = _build.jit_build(plan, verbose=verbose)
            _loaded = {"path": str(path), "how": "jit", "plan": _build.plan_summary(plan)}
        from . import ops  # the fake kernel needs the op to exist

        ops._register_fake()
        return _loaded


def is_loaded() -> bool:
    return _loaded is not None


def has_kernel(dispatch_key: str) -> bool:
    """Whether the loaded library registered anomaly_map for ``dispatch_key`` ("CPU", "CUDA")."""
    return _loaded is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "efficientad_fast::anomaly_map", dispatch_key
    )
