"""The build: toolkit discovery, the CPU-only and CUDA builds (the CUDA sources must compile
and link on these GPU-less machines), loading a built library at import (and building
nothing there), the failure message, and the `info` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientad_fast.op import _build

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env={**os.environ, **env}, cwd=ROOT
    )


def test_find_cuda_home_follows_wrapper_script(tmp_path, monkeypatch):
    toolkit = tmp_path / "cuda-x"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    (toolkit / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    wrapper = wrappers / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    assert _build.find_cuda_home() == toolkit


def test_cuda_switch_must_be_0_or_1(monkeypatch):
    monkeypatch.setenv("EFFICIENTAD_FAST_CUDA", "yes")
    with pytest.raises(_build.BuildError, match="must be 0 or 1"):
        _build.want_cuda()


# A new user's first session: import, then the op through torch.ops as the README shows it.
FIRST_IMPORT = """
import os, time, torch
start = time.perf_counter()
import efficientad_fast
print(f"import {time.perf_counter() - start:.2f} s")
print("op loaded", hasattr(torch.ops.efficientad_fast, "anomaly_map"))
print("cache", sorted(os.listdir(os.environ["EFFICIENTAD_FAST_CACHE"])))
"""
RAW_CALL = """
t = torch.randn(1, 4, 5, 5); s = torch.randn(1, 8, 5, 5)
m, sc = torch.ops.efficientad_fast.anomaly_map(t, s, t, None, None, None, 0.5, 4, None, "l2")
print("map", tuple(m.shape))
"""


def library_files(cache: Path) -> dict[str, float]:
    return {str(p.relative_to(cache)): p.stat().st_mtime for p in cache.rglob("*") if p.suffix in (".so", ".o")}


@pytest.fixture(scope="module")
def cpu_cache(tmp_path_factory):
    """An empty build cache (CPU-only builds), built into by the first test below."""
    return {"EFFICIENTAD_FAST_CUDA": "0", "EFFICIENTAD_FAST_CACHE": str(tmp_path_factory.mktemp("cache"))}


def test_import_builds_nothing_then_load_extension_builds_the_cpu_op(cpu_cache):
    # A separate process: one process can hold only one build of the op library.
    out = run_python(FIRST_IMPORT, **cpu_cache)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # silent
    lines = out.stdout.splitlines()
    assert lines[1:] == ["op loaded False", "cache []"], out.stdout  # nothing compiled, not even a folder
    assert float(lines[0].split()[1]) < 30  # a build takes minutes here; no import does one

    out = run_python(
        "import torch, efficientad_fast as e\n"
        "info = e.load_extension()\n"
        "from efficientad_fast.op import _library as _extension\n"
        "t = torch.randn(1, 4, 5, 5); s = torch.randn(1, 8, 5, 5)\n"
        "m, sc = e.anomaly_map(t, s, t)\n"
        "print(info['plan']['variant'], _extension.has_kernel('CPU'), _extension.has_kernel('CUDA'), tuple(m.shape))\n",
        **cpu_cache,
    )
    assert out.returncode == 0, out.stderr
    assert "cpu True False (1, 1, 13, 13)" in out.stdout


def test_import_loads_a_built_library_without_compiling(cpu_cache):
    cache = Path(cpu_cache["EFFICIENTAD_FAST_CACHE"])
    before = library_files(cache)
    assert any(name.endswith(".so") for name in before), "the test above builds the library"
    out = run_python(
        FIRST_IMPORT + RAW_CALL + "from efficientad_fast.op import _library as _extension\n"
        "print('how', _extension.load_extension()['how'])\n",
        **cpu_cache,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == "op loaded True" and lines[-2:] == ["map (1, 1, 13, 13)", "how jit"], out.stdout
    assert float(lines[0].split()[1]) < 30
    assert library_files(cache) == before  # loaded as built: nothing compiled or linked again


def test_built_library_is_found_only_for_unchanged_sources(cpu_cache, tmp_path, monkeypatch):
    """A cache entry counts as built only for the sources it was built from: a changed
    header makes import leave the op to load_extension(), which rebuilds it."""
    sources = tmp_path / "csrc"
    shutil.copytree(_build.source_dir(), sources)
    monkeypatch.setattr(_build, "source_dir", lambda: sources)
    for key, value in cpu_cache.items():
        monkeypatch.setenv(key, value)
    plan = _build.build_plan(jit=True, detect_gpus=False)
    found = _build.built_library(plan)
    assert found is not None and found[0].is_file() and found[1]["variant"] == "cpu"
    assert _build.built_library(_build.build_plan(jit=False, with_cuda=False)) is None  # other flags
    header = sources / "anomaly_map.h"
    header.write_text(header.read_text() + "\n// changed\n")
    assert _build.built_library(plan) is None


@pytest.mark.skipif(
    torch.version.cuda is None or _build.find_cuda_home() is None,
    reason="needs a CUDA build of torch and a CUDA toolkit (nvcc)",
)
def test_cuda_sources_compile_and_link():
    out = run_python(
        "import efficientad_fast as e\n"
        "from efficientad_fast.op import _library as _extension\n"
        "info = e.load_extension()\n"
        "print('variant', info['plan']['variant'], 'cuda_kernel', _extension.has_kernel('CUDA'))\n",
        EFFICIENTAD_FAST_CUDA="1",
    )
    assert out.returncode == 0, out.stderr
    assert "variant cuda cuda_kernel True" in out.stdout


def test_failed_build_shows_compiler_message_and_fallback(tmp_path, monkeypatch):
    broken = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", broken)
    (broken / "anomaly_map.cpp").write_text((broken / "anomaly_map.cpp").read_text() + "\nthis is not C++;\n")
    monkeypatch.setattr(_build, "source_dir", lambda: broken)
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "cache"))
    plan = _build.build_plan(jit=True, with_cuda=False)
    with pytest.raises(_build.BuildError) as err:
        _build.jit_build(plan)
    message = str(err.value)
    assert "anomaly_map.cpp" in message and "error" in message  # the compiler's own words
    assert "Check that a C++ compiler" in message


@pytest.mark.skipif(
    torch.version.cuda is None or _build.find_cuda_home() is None,
    reason="needs a CUDA build of torch and a CUDA toolkit (nvcc)",
)
def test_failed_cuda_build_says_how_to_fall_back_to_cpu(tmp_path, monkeypatch):
    broken = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", broken)
    (broken / "cuda" / "anomaly_map_cuda.cu").write_text("this is not CUDA;\n")
    monkeypatch.setattr(_build, "source_dir", lambda: broken)
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(_build.BuildError) as err:
        _build.jit_build(_build.build_plan(jit=True, with_cuda=True))
    assert "anomaly_map_cuda.cu" in str(err.value)
    assert "EFFICIENTAD_FAST_CUDA=0" in str(err.value)


def test_info_command_reports_kernels_and_cache():
    out = subprocess.run(
        [sys.executable, "-m", "efficientad_fast", "info", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["torch"] == torch.__version__
    assert info["CPU kernel"] == "yes"
    assert "build cache" in info and "build variant" in info


def test_info_help():
    out = subprocess.run(
        [sys.executable, "-m", "efficientad_fast", "info", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and "--no-build" in out.stdout
