"""bench/gpu_check.sh and what it relies on: ``info --json`` failing on a failed build, the
broken-build switch (EFFICIENTAD_FAST_EXTRA_CFLAGS), benchmark JSON written row by row, and
every target reported. The script runs end to end here on the CPU (its GPU steps skip)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientad_fast import benchmark, timing_protocol
from efficientad_fast.op import _build

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
# An option no g++ knows: every C++ compile fails at once, before any real work.
BROKEN_FLAG = "-fefficientad-fast-no-such-flag"


@pytest.fixture
def gpu_targets(bench_module):
    """bench/gpu_targets.py, which lives beside gpu_check.sh."""
    return bench_module("gpu_targets")


needs_no_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a GPU machine run the script itself (it takes minutes)"
)


def _env(tmp_path, **extra):
    # The CPU-only build (the CUDA one is minutes of nvcc on 2 cores), no install (it is
    # installed); PYTHON: the interpreter running the tests.
    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        PYTHON=sys.executable,
        EFFICIENTAD_FAST_CUDA="0",
        GPU_CHECK_SKIP_INSTALL="1",
    )
    env.pop(_build.EXTRA_CFLAGS_ENV, None)
    env.update(extra)
    return env


def test_extra_cflags_are_appended_and_get_their_own_build_directory(monkeypatch):
    monkeypatch.delenv(_build.EXTRA_CFLAGS_ENV, raising=False)
    normal = _build.build_plan(jit=True, with_cuda=False)
    monkeypatch.setenv(_build.EXTRA_CFLAGS_ENV, f"-DFOO=1 {BROKEN_FLAG}")
    extra = _build.build_plan(jit=True, with_cuda=False)
    assert extra.cxx_flags == normal.cxx_flags + ["-DFOO=1", BROKEN_FLAG]
    # A broken build must not touch the normal cache folder, nor match its fingerprint.
    assert _build.build_directory(extra) != _build.build_directory(normal)
    assert _build.build_directory(extra).name.startswith(_build.build_directory(normal).name + "-x")
    assert _build.fingerprint(extra) != _build.fingerprint(normal)


def test_info_json_exits_nonzero_when_the_build_fails(tmp_path):
    env = _env(tmp_path, EFFICIENTAD_FAST_CACHE=str(tmp_path / "cache"), **{_build.EXTRA_CFLAGS_ENV: BROKEN_FLAG})
    done = subprocess.run(
        [sys.executable, "-m", "efficientad_fast", "info", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    info = json.loads(done.stdout)  # stdout stays pure JSON; the compiler's noise is on stderr
    assert info["build"].startswith("FAILED") and BROKEN_FLAG in info["build"]
    assert info["build cache"].startswith(str(tmp_path / "cache"))
    assert "failed to build" in done.stderr


def test_run_benchmark_writes_the_json_after_every_row(tmp_path, monkeypatch):
    """A step cut by its time limit keeps what it measured: the file holds every row so far."""
    from efficientad_fast.op import _library as _extension

    path = tmp_path / "bench.json"
    monkeypatch.setattr(_extension, "load_extension", lambda: {})
    monkeypatch.setattr(benchmark, "make_model", lambda *a, **k: None)

    def fake_time_one(model, batch, dtype_name, path_, graph, *rest):
        return benchmark.Timing("small", batch, dtype_name, path_, graph, False, 1, 1, mean_ms=1.0), "1 ms"

    monkeypatch.setattr(benchmark, "_time_one", fake_time_one)
    seen = []

    def log(message):  # called after each row is stored: the file must hold it already
        seen.append(len(json.loads(path.read_text())["timings"]))

    result = benchmark.run_benchmark(device="cpu", batch_sizes=(1, 2, 4), dtypes=("fp32",), json_path=path, log=log)
    assert seen == [1, 2, 3]
    assert json.loads(path.read_text())["timings"] == result["timings"]
    assert not list(tmp_path.glob("*.tmp"))


def test_every_target_is_reported_met_missed_or_not_measured(gpu_targets):
    result = {
        "timings": [
            {
                "model_size": "small",
                "batch": 1,
                "dtype": "fp16",
                "path": "device",
                "error": None,
                "mean_ms": 0.5,
                "images_per_s": 2000.0,
                "name": "small N=1 fp16 device graph",
            },
            {
                "model_size": "medium",
                "batch": 1,
                "dtype": "fp16",
                "path": "device",
                "error": None,
                "mean_ms": 2.0,
                "images_per_s": 500.0,
                "name": "medium N=1 fp16 device",
            },
        ],
        "op": [],
    }
    rows = gpu_targets.target_status(result)
    assert len(rows) == len(gpu_targets.GPU_TARGETS) + 1
    assert [r["status"] for r in rows] == ["met", "not measured", "missed", "not measured"]
    table = gpu_targets.format_targets(rows)
    assert table.count("not measured") == 2 and "| NO |" in table


def _op_row(layout: str, fraction: float | None, batch: int = 64, dtype: str = "fp16") -> dict:
    return {
        "impl": "fused",
        "batch": batch,
        "dtype": dtype,
        "layout": layout,
        "gbs": 3000.0,
        "bytes_moved": 616_000_000,
        "l2_bytes": 50 * 2**20,
        "fraction_of_peak": fraction,
    }


def test_the_bandwidth_target_reads_only_the_channels_last_case(gpu_targets):
    """The model feeds the op channels_last features: an NCHW row, however fast, is not the target's."""
    target = gpu_targets.OP_BANDWIDTH_TARGET[0]
    status = {r["target"]: r for r in gpu_targets.target_status({"timings": [], "op": [_op_row("nchw", 0.9)]})}
    assert status[target]["status"] == "not measured"
    rows = gpu_targets.target_status(
        {
            "timings": [],
            "op": [_op_row("nchw", 0.9), _op_row("channels_last", 0.6), _op_row("channels_last", 0.95, batch=16)],
        }
    )
    status = {r["target"]: r for r in rows}
    assert status[target]["status"] == "missed" and status[target]["measured"] == 0.6


def test_one_timing_protocol_feeds_the_command_the_script_and_the_suite():
    """The bench command's defaults and help, gpu_check.sh and the op suite read PROTOCOLS; the
    script names the protocol instead of repeating its numbers."""
    paper, budget = timing_protocol.PROTOCOLS["paper"], timing_protocol.PROTOCOLS["budget"]
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert benchmark.default_runs(gpu, 1) == paper.gpu_latency == (1000, 1000)  # the paper's protocol
    assert benchmark.default_runs(gpu, 64, "budget") == budget.gpu_throughput
    assert benchmark.default_runs(gpu, 1, "budget") == budget.gpu_latency
    assert benchmark.default_runs(cpu, 4) == (paper.cpu[0], max(3, paper.cpu[1] // 4))
    with pytest.raises(ValueError, match="protocol must be one of"):
        benchmark.default_runs(cpu, 1, "fast")
    script = SCRIPT.read_text()
    assert "--protocol budget" in script and "--warmup" not in script and "--runs" not in script
    from efficientad_fast.cli import build_parser

    bench_help = build_parser()._subparsers._group_actions[0].choices["bench"].format_help()
    assert "budget" in bench_help and f"{budget.gpu_latency[0]} + {budget.gpu_latency[1]}" in " ".join(
        bench_help.split()
    )
    settings = benchmark.benchmark_settings(
        cpu,
        model_sizes="small",
        batch_sizes=(1,),
        dtypes=None,
        image_size=256,
        paths=None,
        cuda_graphs=None,
        compile=False,
        warmup=None,
        runs=None,
        model_file=None,
        protocol_name="budget",
    )
    assert settings["protocol_name"] == "budget" and settings["timing_protocol"] == budget.describe()


def test_bench_op_times_both_layouts_and_claims_no_bandwidth_on_a_cpu():
    rows = timing_protocol.bench_op(
        torch.device("cpu"), batches=(1,), dtypes=("fp16",), runs=1, warmup=0, reference=False
    )
    assert [(r.impl, r.layout) for r in rows] == [("fused", "channels_last"), ("fused", "nchw")]
    for r in rows:
        assert r.bytes_moved == (4 * 384 * 56 * 56) * 2 + (256 * 256 + 1) * 4
        assert r.l2_bytes is None and r.fraction_of_peak is None
    with pytest.raises(ValueError, match="layout must be one of"):
        timing_protocol.bench_op(torch.device("cpu"), batches=(1,), layouts=("nhwc",))


def test_the_op_bandwidth_row_is_labelled_with_the_commit(gpu_targets):
    """The row the bandwidth target reads gets its own line in summary.md, "not measured" or its figures."""
    assert gpu_targets.op_bandwidth_line({"op": []}, "abc123") == (
        "op bandwidth, fused N=64 fp16 channels_last, kernels of commit abc123: not measured"
    )
    rows = [_op_row("nchw", 0.9), _op_row("channels_last", 0.62)]
    line = gpu_targets.op_bandwidth_line({"op": rows}, "abc123")
    assert line.endswith("kernels of commit abc123: 3000 GB/s, 616 MB moved, fraction of peak 0.62")


def test_junit_counts_tells_expected_skips_from_unexpected(tmp_path, gpu_targets):
    """With a GPU visible, gpu_check.sh fails a step whose CUDA tests skipped (pytest exits 0)."""
    xml = tmp_path / "t.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="4">'
        '<testcase name="test_cuda_a"/>'
        '<testcase name="test_cuda_b"><skipped type="pytest.skip" message="needs a CUDA GPU">x</skipped></testcase>'
        '<testcase name="test_cpu_only"><skipped message="checks the CPU-only error">x</skipped></testcase>'
        '<testcase name="test_cuda_c"><failure message="boom">x</failure></testcase>'
        "</testsuite></testsuites>"
    )
    assert gpu_targets.junit_counts(xml) == (4, 2, 1, 1, 0)
    assert gpu_targets.junit_counts(tmp_path / "missing.xml") == (0, 0, 0, 0, 0)


@needs_no_gpu
def test_script_runs_end_to_end_on_the_cpu(tmp_path, gpu_targets):
    done = subprocess.run(["bash", str(SCRIPT)], env=_env(tmp_path), capture_output=True, text=True, timeout=280)
    out = tmp_path / "out"
    summary = (out / "summary.md").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "build: ok" in summary
    info = json.loads((out / "info.json").read_text())  # the JSON alone, compiler output in build.log
    assert info["CPU kernel"] == "yes"
    assert "cuda_tests: ok" in summary and "the CUDA tests skip (expected here)" in summary
    assert (out / "cuda_tests.xml").is_file()
    for step in ("bench_latency", "bench_op", "bench_throughput", "memcheck", "pytest_bench"):
        assert step in summary.split("steps skipped (no GPU):")[1].splitlines()[0]
    for what, *_ in gpu_targets.GPU_TARGETS + (gpu_targets.OP_BANDWIDTH_TARGET,):
        assert f"target not measured: {what}" in summary
    bandwidth = [
        line for line in summary.splitlines() if line.startswith("- op bandwidth, fused N=64 fp16 channels_last")
    ]
    assert len(bandwidth) == 1 and bandwidth[0].endswith(": not measured"), bandwidth
    if _build.find_cuda_home() is not None:  # the compiler's report needs nvcc, not a GPU
        assert "ptxas: ok" in summary and "ptxas: kernels with a stack frame or spills: 0" in summary
        report = json.loads((out / "ptxas.json").read_text())
        assert len(report) > 2 and all(k["stack_frame"] == 0 for k in report)
        assert "| registers |" in (out / "ptxas.md").read_text()
    else:
        assert "ptxas: skipped (no CUDA toolkit" in summary
    assert "FAILED" not in summary


@needs_no_gpu
def test_script_reports_a_broken_build_as_failed(tmp_path, gpu_targets):
    # ptxas compiles the kernels with nvcc whatever the C++ build did (~35 s): not this test's subject.
    env = _env(tmp_path, EFFICIENTAD_FAST_CACHE=str(tmp_path / "cache"), GPU_CHECK_SKIP_PTXAS="1")
    env[_build.EXTRA_CFLAGS_ENV] = BROKEN_FLAG
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=200)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert done.returncode != 0, summary
    assert "build: FAILED" in summary and "build: ok" not in summary
    assert "cuda_tests: skipped (build not ok)" in summary
    assert "ptxas: skipped (GPU_CHECK_SKIP_PTXAS=1)" in summary
    assert summary.count("target not measured") == len(gpu_targets.GPU_TARGETS) + 1


def test_script_skips_a_step_that_does_not_fit_the_budget(tmp_path):
    """A budget too small for any step: every step reads "skipped (budget)", which is no failure."""
    done = subprocess.run(
        ["bash", str(SCRIPT), "--budget", "20"], env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "build: skipped (budget" in summary
    assert done.returncode == 0, summary
    assert "target not measured" in summary
