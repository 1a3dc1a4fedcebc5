"""Where and in what precision to run: the ``--device`` and ``--dtype``/``--amp`` choices
shared by the jobs, the benchmarks and the distillation."""

from __future__ import annotations

import functools
import platform

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a ``--device`` value: "auto" (or None) is the first CUDA GPU if
    there is one, else the CPU; a CUDA device that is not there is a clear error."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:  # "tpu", "gpu", "cuda:x": torch's message is a C++ traceback
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {device!r} (a {dev.type} device)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is visible to torch {torch.__version__}")
    return dev


@functools.cache
def cpu_model_and_flags() -> tuple[str | None, frozenset[str] | None]:
    """The CPU's model name and its instruction-set flags, from /proc/cpuinfo; elsewhere
    ``platform.processor()`` and None (flags unknown)."""
    cpu_model: str | None = None
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if cpu_model is None and line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                elif not flags and line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
    except OSError:
        return platform.processor() or None, None
    return cpu_model, frozenset(flags)


def cpu_has_vnni() -> bool:
    """AVX-512 VNNI or AVX-VNNI, the instructions oneDNN's exact INT8 convolutions use
    (unknown flags, not Linux: assumed, as on macOS arm64 or a Windows x86 with VNNI)."""
    flags = cpu_model_and_flags()[1]
    return flags is None or "avx512_vnni" in flags or "avx_vnni" in flags


@functools.cache
def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN has bfloat16 convolutions on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT).
    On an AVX2-only CPU (AMD Zen 2) its bf16 convolution raises, and torch's fallback is slow."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype for an ``amp`` setting: None (float32), "fp16" or "bf16"."""
    if amp is None:
        return None
    if amp not in ("fp16", "bf16"):
        raise ValueError(f"amp must be None, 'fp16' or 'bf16', got {amp!r}")
    return DTYPES[amp]
