"""pytest-benchmark setup for bench/: load (JIT-build) the op library before any timing,
skip CUDA cases without a GPU, and record what machine and build the figures come from."""

from __future__ import annotations

import os

import pytest
import torch

import efficientad_fast
from efficientad_fast.benchmark import cpu_info


def pytest_configure(config):
    threads = os.environ.get("EAD_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session", autouse=True)
def op_library():
    """The first call of the op would JIT-build/load the library: do it outside any timing."""
    return efficientad_fast.load_extension()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cpu_model"] = cpu_info()[0]
    machine_info["torch"] = torch.__version__
    machine_info["torch_num_threads"] = torch.get_num_threads()
    machine_info["efficientad_fast"] = efficientad_fast.__version__
    if torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name()


def pytest_collection_finish(session):
    """Save every benchmark run as JSON (with the machine info above) unless told where:
    ``pytest bench --benchmark-only`` then leaves .benchmarks/<machine>/NNNN_<commit>.json."""
    option = session.config.option
    if not (
        getattr(option, "benchmark_disable", False)
        or getattr(option, "benchmark_json", None)
        or getattr(option, "benchmark_save", None)
        or getattr(option, "benchmark_autosave", False)
    ):
        option.benchmark_autosave = True
