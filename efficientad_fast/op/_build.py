"""One place for how the C++/CUDA extension is built: sources, compiler flags, the
CUDA toolkit, and the JIT build used on first call. ``setup.py`` imports this file
for the ahead-of-time build (``EFFICIENTAD_FAST_BUILD_EXT=1 pip install .``) and
CMakeLists.txt lists the same sources (a test checks), so every path compiles the same
sources with the same flags but one: the JIT build adds ``-march=native`` (it runs on
the machine that built it, so it may use every instruction that CPU has, e.g. AVX-512
and F16C for the half-precision loads), while the ahead-of-time build, a wheel that may
be installed on another CPU, keeps the compiler's baseline target. CMake does the same
unless ``-DEFFICIENTAD_FAST_NATIVE=ON``.

Switches (environment variables):
  EFFICIENTAD_FAST_CUDA=0|1     force the CPU-only build (0) or the CUDA build (1);
                                default: CUDA when torch has CUDA and a toolkit is found.
  EFFICIENTAD_FAST_CACHE=DIR    where JIT builds live (default ~/.cache/efficientad_fast).
  EFFICIENTAD_FAST_VERBOSE=1    show the compiler's command lines and output.
  EFFICIENTAD_FAST_EXTRA_CFLAGS="FLAGS"  more C++ compiler flags (shell-split), appended
                                to every build's; the JIT build then uses its own cache
                                folder (named by the flags' hash), so a failing build,
                                e.g. an invalid flag to test that failures show, never
                                touches the normal cache.
  TORCH_CUDA_ARCH_LIST          GPU architectures (default: the visible GPUs, else 9.0).
  CUDA_HOME                     the CUDA toolkit, when it cannot be found by itself.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXTENSION_NAME = "efficientad_fast"
# Paths under csrc/. CMakeLists.txt (the C++-host build) lists the same sources; a test
# checks they agree. The headers need no list: they sit beside the sources.
CPU_SOURCES = ["anomaly_map.cpp", "cpu/anomaly_map_cpu.cpp", "api.cpp"]
CUDA_SOURCES = ["cuda/anomaly_map_cuda.cu"]
SOURCE_SUFFIXES = (".h", ".cpp", ".cu", ".cuh")  # what the library is built from
PUBLIC_INCLUDE_DIR = "include"  # under csrc/: the C++ API header efficientad_fast/efficientad_fast.h
CXX_FLAGS = ["-O3", "-fopenmp"]  # OpenMP: at::parallel_for is inlined into our code
# JIT only: the JIT library runs on the CPU that built it; a wheel (AOT) may not.
JIT_CXX_FLAGS = ["-march=native"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr"]
EXTRA_CFLAGS_ENV = "EFFICIENTAD_FAST_EXTRA_CFLAGS"
# The GPU architecture compiled when no GPU is visible (an H100/H200 is sm_90).
DEFAULT_CUDA_ARCH_LIST = "9.0"


class BuildError(RuntimeError):
    """The extension failed to compile or load."""


def extra_cxx_flags() -> list[str]:
    """The C++ flags of ``EFFICIENTAD_FAST_EXTRA_CFLAGS`` (shell-split; empty when unset)."""
    return shlex.split(os.environ.get(EXTRA_CFLAGS_ENV, ""))


def source_dir() -> Path:
    """The folder holding the C++/CUDA sources: ``csrc/`` beside the package in a source
    checkout, or ``efficientad_fast/csrc`` in an installed wheel."""
    here = Path(__file__).resolve().parent  # efficientad_fast/op
    for candidate in (here.parents[1] / "csrc", here.parent / "csrc"):
        if (candidate / CPU_SOURCES[0]).is_file():
            return candidate
    raise BuildError(
        f"efficientad_fast: C++ sources not found beside {here} (looked for csrc/{CPU_SOURCES[0]}); "
        "reinstall the package"
    )


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").is_file() and any(
        (root / sub / "cuda_runtime.h").is_file()
        for sub in ("include", "targets/x86_64-linux/include", "targets/sbsa-linux/include")
    )


def find_cuda_home() -> Path | None:
    """Find the CUDA toolkit: $CUDA_HOME/$CUDA_PATH, then the folder of ``nvcc`` on PATH
    (following symlinks, and wrapper scripts that ``exec`` the real nvcc), then
    /usr/local/cuda*. Returns None when there is none."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and _is_toolkit(Path(os.environ[var])):
            return Path(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(os.path.realpath(nvcc))
        if _is_toolkit(real.parent.parent):
            return real.parent.parent
        try:  # a small wrapper script around the real nvcc
            text = real.read_text(errors="ignore")[:4096]
        except OSError:
            text = ""
        for path in re.findall(r"(/[^\s\"']+)/bin/nvcc\b", text):
            if _is_toolkit(Path(path)):
                return Path(path)
    for root in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if _is_toolkit(Path(root)):
            return Path(root)
    return None


def _pip_cuda_include_dirs() -> list[str]:
    """Headers torch's CUDA headers include (cusparse.h, cublas_v2.h, ...) that a slim
    toolkit may lack but the pip packages nvidia-* ship."""
    dirs = []
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        if base.is_dir():
            dirs += sorted(str(p) for p in base.glob("cu*/include") if p.is_dir())
            dirs += sorted(str(p) for p in base.glob("*/include") if (p / "cusparse.h").is_file())
    return list(dict.fromkeys(dirs))


def cuda_include_dirs(cuda_home: Path) -> list[str]:
    if (cuda_home / "include" / "cusparse.h").is_file():
        return []
    return _pip_cuda_include_dirs()


def want_cuda() -> tuple[bool, str]:
    """Whether to build the CUDA kernels, and why."""
    import torch

    switch = os.environ.get("EFFICIENTAD_FAST_CUDA", "").strip()
    if switch not in ("", "0", "1"):
        raise BuildError(f"EFFICIENTAD_FAST_CUDA must be 0 or 1, got {switch!r}")
    if switch == "0":
        return False, "EFFICIENTAD_FAST_CUDA=0"
    if torch.version.cuda is None:
        if switch == "1":
            raise BuildError("EFFICIENTAD_FAST_CUDA=1 but this torch has no CUDA support")
        return False, "torch has no CUDA support"
    if find_cuda_home() is None:
        if switch == "1":
            raise BuildError(
                "EFFICIENTAD_FAST_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the "
                "folder holding bin/nvcc and include/cuda_runtime.h"
            )
        return False, "no CUDA toolkit found"
    return True, "EFFICIENTAD_FAST_CUDA=1" if switch == "1" else "torch has CUDA and a toolkit was found"


def cuda_arch_list(detect_gpus: bool = True) -> str | None:
    """TORCH_CUDA_ARCH_LIST if set, else the visible GPUs' architectures, else the default.
    With ``detect_gpus=False`` the GPUs are not asked (that initializes CUDA): None unless
    TORCH_CUDA_ARCH_LIST is set."""
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if not detect_gpus:
        return None
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps) + "+PTX"
    return DEFAULT_CUDA_ARCH_LIST


@dataclass
class BuildPlan:
    """Everything that decides one build: the same for the JIT and ahead-of-time paths."""

    with_cuda: bool
    reason: str
    sources: list[str]
    include_dirs: list[str]
    cxx_flags: list[str]
    nvcc_flags: list[str] = field(default_factory=list)
    ld_flags: list[str] = field(default_factory=list)
    cuda_home: str | None = None
    cuda_arch_list: str | None = None
    extra_cxx_flags: list[str] = field(default_factory=list)  # EFFICIENTAD_FAST_EXTRA_CFLAGS, also in cxx_flags

    @property
    def variant(self) -> str:
        return "cuda" if self.with_cuda else "cpu"


def build_plan(jit: bool, with_cuda: bool | None = None, detect_gpus: bool = True) -> BuildPlan:
    """The sources and flags of the build. ``with_cuda=None`` decides by :func:`want_cuda`;
    ``detect_gpus=False``: see :func:`cuda_arch_list` (enough to find a built library)."""
    reason = "requested"
    if with_cuda is None:
        with_cuda, reason = want_cuda()
    src = source_dir()
    extra = extra_cxx_flags()
    plan = BuildPlan(
        with_cuda=with_cuda,
        reason=reason,
        sources=[str(src / s) for s in CPU_SOURCES],
        include_dirs=[str(src), str(src / PUBLIC_INCLUDE_DIR)],
        cxx_flags=CXX_FLAGS + (JIT_CXX_FLAGS if jit else []) + extra,
        ld_flags=list(LD_FLAGS),
        extra_cxx_flags=extra,
    )
    if with_cuda:
        cuda_home = find_cuda_home()
        if cuda_home is None:
            raise BuildError("the CUDA build needs a CUDA toolkit: set CUDA_HOME (or EFFICIENTAD_FAST_CUDA=0)")
        plan.cuda_home = str(cuda_home)
        plan.sources += [str(src / s) for s in CUDA_SOURCES]
        plan.include_dirs += cuda_include_dirs(cuda_home)
        plan.nvcc_flags = list(NVCC_FLAGS)
        plan.cuda_arch_list = cuda_arch_list(detect_gpus)
    return plan


def use_toolkit(plan: BuildPlan) -> None:
    """Point torch.utils.cpp_extension at the toolkit the plan found (its own guess from
    nvcc's folder is wrong for wrapper scripts) and at the plan's GPU architectures."""
    if not plan.with_cuda:
        return
    if plan.cuda_home is None or plan.cuda_arch_list is None:
        raise BuildError("a CUDA build plan needs the toolkit's folder and the GPU architectures")
    os.environ["CUDA_HOME"] = plan.cuda_home  # before cpp_extension's import-time guess
    cpp_extension = import_cpp_extension()

    cpp_extension.CUDA_HOME = plan.cuda_home  # type: ignore[attr-defined]  # a module global torch reads
    os.environ["TORCH_CUDA_ARCH_LIST"] = plan.cuda_arch_list


def import_cpp_extension() -> types.ModuleType:
    """torch.utils.cpp_extension, without its import-time warning that no GPU is present
    (expected on CPU machines that compile the CUDA kernels). Inductor imports it too (INT8,
    AOTInductor): importing it here first keeps that warning off their output as well."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


CACHE_ENV = "EFFICIENTAD_FAST_CACHE"


def cache_root() -> Path:
    """Where builds, downloads and measurements are kept: $EFFICIENTAD_FAST_CACHE, else
    ~/.cache/efficientad_fast."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "efficientad_fast")


def cache_folder(folder: Path) -> Path:
    """``folder`` (under :func:`cache_root`) created, or a PermissionError that names the
    setting to change: the folder alone would not tell a user where it came from."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = (
            f"{CACHE_ENV}={os.environ[CACHE_ENV]}"
            if os.environ.get(CACHE_ENV)
            else f"the default cache; set {CACHE_ENV} to a folder you can write"
        )
        raise PermissionError(f"cannot create the cache folder {folder} ({where}): {exc.strerror or exc}") from exc
    return folder


def build_directory(plan: BuildPlan) -> Path:
    """One folder per torch version, Python version and variant, so builds never mix ABIs;
    with EFFICIENTAD_FAST_EXTRA_CFLAGS, one more per set of extra flags, so a build with
    odd (or broken) flags never leaves its objects, build.ninja or lock in the normal one."""
    import torch

    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-{plan.variant}"
    if plan.extra_cxx_flags:
        tag += "-x" + hashlib.sha256(json.dumps(plan.extra_cxx_flags).encode()).hexdigest()[:8]
    return cache_root() / tag


def jit_build(plan: BuildPlan, verbose: bool | None = None) -> Path:
    """Compile (or reuse) the extension for this plan with ninja and load it into torch.ops.
    Returns the shared library's path."""
    if verbose is None:
        verbose = os.environ.get("EFFICIENTAD_FAST_VERBOSE") == "1"
    directory = cache_folder(build_directory(plan))
    stamp = fingerprint(plan)  # of the sources as this build reads them
    use_toolkit(plan)
    cpp_extension = import_cpp_extension()

    name = f"{EXTENSION_NAME}_{plan.variant}"
    try:
        path = cpp_extension.load(
            name=name,
            sources=plan.sources,
            extra_cflags=plan.cxx_flags,
            extra_cuda_cflags=plan.nvcc_flags,
            extra_ldflags=plan.ld_flags,
            extra_include_paths=plan.include_dirs,
            build_directory=str(directory),
            with_cuda=plan.with_cuda,
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors arrive as RuntimeError with ninja's output
        fallback = (
            "To use the CPU-only build instead, set EFFICIENTAD_FAST_CUDA=0."
            if plan.with_cuda
            else "Check that a C++ compiler (g++) and ninja are installed."
        )
        raise BuildError(
            f"efficientad_fast: building the {plan.variant} extension in {directory} failed.\n"
            f"{exc}\n{fallback} Set EFFICIENTAD_FAST_VERBOSE=1 to see every compiler command."
        ) from exc
    info = {**plan_summary(plan), "library": str(path), "fingerprint": stamp}
    temporary = directory / f"build_info.json.{os.getpid()}"
    temporary.write_text(json.dumps(info, indent=2))
    temporary.replace(directory / "build_info.json")  # whole, even with builds in parallel
    return Path(path)


def fingerprint(plan: BuildPlan) -> str:
    """A hash of what decides the built library: the variant, the flags, the toolkit and the
    content of every file under csrc/ (sources and headers). The GPU architectures are
    left out: finding the visible GPUs' would initialize CUDA (see :func:`built_library`)."""
    digest = hashlib.sha256()
    decided = [plan.variant, plan.cxx_flags, plan.nvcc_flags, plan.ld_flags, plan.cuda_home]
    digest.update(json.dumps(decided).encode())
    src = source_dir()
    for path in sorted(p for p in src.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def built_library(plan: BuildPlan) -> tuple[Path, dict[str, Any]] | None:
    """The JIT cache's library for ``plan`` and its build summary, when it was built from
    today's sources and flags (and, with TORCH_CUDA_ARCH_LIST set, for those GPU
    architectures); else None. Reads a few files and compiles nothing. Like torch's own JIT
    cache, the cache belongs to one machine: neither -march=native's CPU nor the GPUs the
    architectures were taken from are part of the key."""
    try:
        info = json.loads((build_directory(plan) / "build_info.json").read_text())
    except (OSError, ValueError):
        return None
    library = Path(info.get("library") or "")
    if not library.is_file() or info.get("fingerprint") != fingerprint(plan):
        return None
    if plan.cuda_arch_list is not None and info.get("cuda_arch_list") != plan.cuda_arch_list:
        return None
    return library, info


def plan_summary(plan: BuildPlan) -> dict[str, Any]:
    return {
        "variant": plan.variant,
        "reason": plan.reason,
        "sources": [Path(s).relative_to(source_dir()).as_posix() for s in plan.sources],
        "cxx_flags": plan.cxx_flags,
        "nvcc_flags": plan.nvcc_flags,
        "cuda_home": plan.cuda_home,
        "cuda_arch_list": plan.cuda_arch_list,
    }


def tool_version(command: list[str]) -> str:
    """First line of ``command``'s version output, or 'not found'."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return lines[-1].strip() if "nvcc" in command[0] and lines else (lines[0].strip() if lines else "not found")


# The GPU architecture whose ptxas report the compiler check reads (H100/H200).
PTXAS_ARCH = "90"


def nvcc_compile_command(plan: BuildPlan, source: str, output: str, arch: str = PTXAS_ARCH) -> list[str]:
    """The nvcc command that compiles one CUDA source of ``plan`` to an object file for one GPU
    architecture (``sm_<arch>``), with ptxas's per-kernel register/stack/spill report
    (``-Xptxas -v``, on stderr): the include folders and flags are the JIT build's (torch's
    include folders and common nvcc flags, the plan's own), so the report describes the kernels
    that build makes (tests/test_op_ptxas.py checks it; bench/ptxas_report.py writes it)."""
    import sysconfig

    if not plan.with_cuda or plan.cuda_home is None:
        raise BuildError("the nvcc command needs a CUDA build plan (a CUDA toolkit)")
    os.environ["CUDA_HOME"] = plan.cuda_home  # before cpp_extension's import-time guess
    cpp_extension = import_cpp_extension()
    cpp_extension.CUDA_HOME = plan.cuda_home  # type: ignore[attr-defined]  # a module global torch reads
    includes = [*plan.include_dirs, *cpp_extension.include_paths("cuda"), sysconfig.get_path("include")]
    return [
        str(Path(plan.cuda_home) / "bin" / "nvcc"),
        "-c",
        source,
        "-o",
        output,
        *[f"-I{d}" for d in includes],
        *cpp_extension.COMMON_NVCC_FLAGS,
        *plan.nvcc_flags,
        "-std=c++20",  # torch's JIT build compiles CUDA sources as C++20 too
        "--compiler-options",
        "-fPIC",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xptxas",
        "-v",
    ]


@dataclass
class KernelResources:
    """One kernel's line of ptxas's ``-v`` report."""

    name: str  # the mangled name ptxas prints
    registers: int = 0
    stack_frame: int = 0  # bytes
    spill_stores: int = 0  # bytes
    spill_loads: int = 0  # bytes


def parse_ptxas_report(text: str) -> list[KernelResources]:
    """Each kernel's registers, stack frame and spills from ``nvcc -Xptxas -v`` output: ptxas
    prints "Compiling entry function '<name>'", then "<n> bytes stack frame, <n> bytes spill
    stores, <n> bytes spill loads" and "Used <n> registers" for it."""
    kernels: list[KernelResources] = []
    for line in text.splitlines():
        entry = re.search(r"Compiling entry function '([^']+)'", line)
        if entry:
            kernels.append(KernelResources(entry.group(1)))
            continue
        if not kernels:
            continue
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if frame:
            current = kernels[-1]
            current.stack_frame, current.spill_stores, current.spill_loads = (int(g) for g in frame.groups())
        used = re.search(r"Used (\d+) registers", line)
        if used:
            kernels[-1].registers = int(used.group(1))
    return kernels


def ptxas_report(folder: Path, arch: str = PTXAS_ARCH) -> list[KernelResources]:
    """Compile every CUDA source (compile only, one architecture) into ``folder`` and return
    each kernel's registers, stack frame and spills as ptxas reports them; the report is kept
    in the cache (``ptxas/``) under a digest of the commands, compiler and sources. Raises
    :class:`BuildError` with nvcc's output when a compile fails, or when no CUDA toolkit is
    found."""
    plan = build_plan(jit=True, with_cuda=True, detect_gpus=False)
    commands = {
        source: nvcc_compile_command(plan, source, str(folder / (Path(source).stem + ".o")), arch)
        for source in plan.sources
        if source.endswith(".cu")
    }
    cached = cache_root() / "ptxas" / f"{_ptxas_key(commands, folder)}.json"
    try:  # the same sources, flags and compiler report the same (nvcc takes ~35 s on 2 cores)
        if cached.is_file():  # a FIFO there would block the read
            return [KernelResources(**k) for k in json.loads(cached.read_text())]
    except (OSError, ValueError, TypeError):  # damaged: compile
        pass
    kernels: list[KernelResources] = []
    for source, command in commands.items():
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BuildError(f"nvcc failed on {source} (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        kernels += parse_ptxas_report(done.stdout + done.stderr)
    # Imported here: setup.py loads this file by path, without the package (or torch).
    from efficientad_fast._checkpoint import atomic_write_text

    try:
        atomic_write_text(cache_folder(cached.parent) / cached.name, json.dumps([vars(k) for k in kernels]))
    except (OSError, ValueError):  # a read-only cache costs a compile next time; ValueError: a FIFO there
        pass
    return kernels


def _ptxas_key(commands: dict[str, list[str]], folder: Path) -> str:
    """What a ptxas report depends on: the nvcc commands (less the output folder), the
    compiler binary and every file under the source folder (headers included)."""
    digest = hashlib.sha256()
    for command in commands.values():
        digest.update(json.dumps([part.replace(str(folder), "OUT") for part in command]).encode())
        nvcc = Path(command[0]).stat()
        digest.update(f"{command[0]} {nvcc.st_size} {nvcc.st_mtime_ns}".encode())
    for path in sorted(p for p in source_dir().rglob("*") if p.is_file()):
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()[:32]
