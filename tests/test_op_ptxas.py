"""The compiler's view of the CUDA kernels (issue 25): compiled for sm_90 with the op's own
build flags and ``-Xptxas -v`` (compile only, one architecture, no GPU needed), every kernel
has a 0-byte stack frame and no spills. A stack frame in the feature-map kernels meant every
thread stored the kernel's 128-byte argument to local memory; a spill is local-memory traffic
the bandwidth-bound kernels cannot afford. Skipped where there is no CUDA toolkit."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from efficientad_fast.op import _build

pytestmark = [
    pytest.mark.compiler,
    pytest.mark.skipif(_build.find_cuda_home() is None, reason="no CUDA toolkit (nvcc) found: nothing to compile"),
]

# The kernels csrc/cuda must hold: stage 1 in both layouts, for each distance and dtype the
# dispatch instantiates, then the resize and the score reduction.
FEATURE_MAP_KERNELS = 2 * 2 * 4  # {nchw, nhwc} x {l2, cosine} x {float, double, half, bfloat16}
EXPECTED_KERNELS = FEATURE_MAP_KERNELS + 2


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """ptxas's report for every kernel: one nvcc compile (about 30 s on 2 cores)."""
    return _build.ptxas_report(tmp_path_factory.mktemp("ptxas"))


def describe(kernels) -> str:
    return "\n".join(
        f"{k.name}: {k.registers} registers, {k.stack_frame} B stack, {k.spill_stores}/{k.spill_loads} B spilled"
        for k in kernels
    )


def test_the_report_covers_every_kernel(kernels):
    """A report that lost kernels (a changed ptxas format, a failed parse) would pass the checks below."""
    assert len(kernels) == EXPECTED_KERNELS, describe(kernels)
    assert sum("fused_feature_map" in k.name for k in kernels) == FEATURE_MAP_KERNELS
    assert all(k.registers > 0 for k in kernels), describe(kernels)


@pytest.mark.parametrize("figure", ["stack_frame", "spill_stores", "spill_loads"])
def test_no_kernel_has_a_stack_frame_or_spills(kernels, figure):
    offenders = [k for k in kernels if getattr(k, figure) > 0]
    assert offenders == [], f"{figure} > 0 in:\n{describe(offenders)}"


SAMPLE_REPORT = """\
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90'
ptxas info    : Function properties for _Z6kernelPf
    128 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 52 registers, used 0 barriers, 128 bytes cumulative stack size
ptxas info    : Compiling entry function '_Z5cleanPf' for 'sm_90'
ptxas info    : Function properties for _Z5cleanPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 13 registers, used 1 barriers
"""


def test_the_parser_reads_stack_frames_and_spills():
    """The check can fail: the report of a kernel with a stack frame and spills reads as such."""
    parsed = _build.parse_ptxas_report(SAMPLE_REPORT)
    assert [(k.name, k.registers, k.stack_frame, k.spill_stores, k.spill_loads) for k in parsed] == [
        ("_Z6kernelPf", 52, 128, 8, 4),
        ("_Z5cleanPf", 13, 0, 0, 0),
    ]


def test_the_report_is_kept_for_the_same_sources_and_flags(kernels, tmp_path, monkeypatch):
    """gpu_check.sh's ptxas step and this module compile the same kernels: the second asks the cache."""

    def no_compiling(*args, **kwargs):
        raise AssertionError("nvcc ran again for unchanged sources")

    monkeypatch.setattr(_build.subprocess, "run", no_compiling)
    assert _build.ptxas_report(tmp_path) == kernels


@pytest.mark.parametrize("occupant", ["folder", "fifo", "damaged"])
def test_a_cache_entry_it_cannot_use_costs_a_compile_and_nothing_else(occupant, tmp_path, monkeypatch):
    """Whatever sits where the report is kept, the report comes from nvcc, with no hang or error."""
    monkeypatch.setenv(_build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(_build, "_ptxas_key", lambda commands, folder: "key")
    target = tmp_path / "cache" / "ptxas" / "key.json"
    target.parent.mkdir(parents=True)
    {"folder": target.mkdir, "fifo": lambda: os.mkfifo(target), "damaged": lambda: target.write_text("[{")}[occupant]()
    compiled = subprocess.CompletedProcess([], 0, stdout=SAMPLE_REPORT, stderr="")
    monkeypatch.setattr(_build.subprocess, "run", lambda *args, **kwargs: compiled)
    plan = _build.build_plan(jit=True, with_cuda=True, detect_gpus=False)
    cuda_sources = [source for source in plan.sources if source.endswith(".cu")]
    assert _build.ptxas_report(tmp_path / "out") == _build.parse_ptxas_report(SAMPLE_REPORT) * len(cuda_sources)
    if occupant == "damaged":  # replaced by the good report
        assert len(json.loads(target.read_text())) == 2 * len(cuda_sources)
