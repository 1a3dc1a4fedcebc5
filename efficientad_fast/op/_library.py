"""Loading the compiled op library into ``torch.ops.efficientad_fast``: the ahead-of-time
build inside the package if there is one, else the JIT build (compiled on first use,
cached, rebuilt when a source changes); then the op's fake kernel. Build settings live in
``_build.py``; the Python wrapper of the op in ``ops.py``, which imports this module; the
pure-PyTorch reference it is tested against in ``reference.py``.

``import efficientad_fast`` calls :func:`load_if_built`, so ``torch.ops.efficientad_fast``
works right after the import whenever a library is already built; :func:`load_extension`
builds one otherwise.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from . import _build

OP_NAME = "efficientad_fast::anomaly_map"

_lock = threading.Lock()
_loaded: dict[str, Any] | None = None


def _aot_library() -> Path | None:
    libs = sorted(Path(__file__).resolve().parent.glob("_C*.so"))
    return libs[0] if libs else None


def _load(path: Path, how: str, plan: dict[str, Any] | None) -> dict[str, Any]:
    """Load the library at ``path``, then register the fake kernel (it needs the schema)."""
    global _loaded
    torch.ops.load_library(str(path))  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    torch.library.register_fake(OP_NAME)(_anomaly_map_fake)
    _loaded = {"path": str(path), "how": how, "plan": plan}
    return _loaded


def load_extension(verbose: bool | None = None) -> dict[str, Any]:
    """Make ``torch.ops.efficientad_fast.anomaly_map`` available, building it if needed.

    Returns a dict describing what was loaded (``path``, ``how``: "aot" or "jit",
    ``plan``: the build settings). Raises :class:`efficientad_fast.BuildError` with the
    compiler's message when the build fails.
    """
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        aot = _aot_library()
        if aot is not None:
            return _load(aot, "aot", None)
        plan = _build.build_plan(jit=True)
        path = _build.jit_build(plan, verbose=verbose)
        return _load(path, "jit", _build.plan_summary(plan))


def load_if_built() -> bool:
    """Load the library when one is built already (the ahead-of-time build, or a JIT cache
    entry built from today's sources and flags: :func:`_build.built_library`), without
    compiling and without asking the GPUs. Quick and silent either way, as it runs at
    ``import efficientad_fast``; returns whether the op is loaded."""
    if _loaded is not None:
        return True
    with _lock:
        if _loaded is not None:
            return True
        try:
            aot = _aot_library()
            if aot is not None:
                _load(aot, "aot", None)
                return True
            built = _build.built_library(_build.build_plan(jit=True, detect_gpus=False))
            if built is not None:
                path, info = built
                info = {k: v for k, v in info.items() if k not in ("library", "fingerprint")}
                _load(path, "jit", info)
        except (_build.BuildError, OSError, RuntimeError):
            pass  # not loadable now: load_extension() builds it, or says what is wrong
        return _loaded is not None


def is_loaded() -> bool:
    return _loaded is not None


def has_kernel(dispatch_key: str) -> bool:
    """Whether the loaded library registered anomaly_map for ``dispatch_key`` ("CPU", "CUDA")."""
    return _loaded is not None and torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, dispatch_key)


def _anomaly_map_fake(
    teacher: torch.Tensor,
    student: torch.Tensor,
    autoencoder: torch.Tensor,
    teacher_mean: torch.Tensor | None,
    teacher_std: torch.Tensor | None,
    quantiles: torch.Tensor | None,
    alpha: float,
    pad: int,
    output_size: list[int] | None,
    distance: str,
    quantile_values: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape-only kernel so torch.compile(fullgraph=True) and torch.export trace the op; also
    its Meta kernel. It checks what the output shapes depend on, and the devices (a call that
    mixes meta and CPU tensors lands here, not in C++); every other argument is checked by
    the C++ kernels when the op runs."""
    for name, value in (
        ("student", student),
        ("autoencoder", autoencoder),
        ("teacher_mean", teacher_mean),
        ("teacher_std", teacher_std),
        ("quantiles", quantiles),
    ):
        if value is not None and value.device != teacher.device:
            raise ValueError(f"anomaly_map: {name} is on {value.device} but teacher is on {teacher.device}")
    if pad < 0:
        raise ValueError(f"anomaly_map: pad must be >= 0, got {pad}")
    torch._check(
        teacher.dim() == 4 and student.dim() == 4 and autoencoder.dim() == 4,
        lambda: "anomaly_map: teacher, student and autoencoder must be 4-D",
    )
    torch._check(
        student.shape[1] == 2 * teacher.shape[1],
        lambda: f"anomaly_map: student needs 2C channels, got {student.shape} for teacher {teacher.shape}",
    )
    torch._check(
        autoencoder.shape == teacher.shape,
        lambda: f"anomaly_map: autoencoder {autoencoder.shape} != teacher {teacher.shape}",
    )
    n, _, h, w = teacher.shape
    if output_size is None:
        out_h, out_w = h + 2 * pad, w + 2 * pad
    else:
        out_h, out_w = output_size
    anomaly = teacher.new_empty((n, 1, out_h, out_w), dtype=torch.float32)
    score = teacher.new_empty((n,), dtype=torch.float32)
    return anomaly, score
