"""pytest-benchmark suite: the fused anomaly-map op against the plain-PyTorch reference.

EfficientAD-S shapes at 256 px: C=384, 56x56 features, pad 4, output 256x256, teacher
mean/std and quantiles given, l2 distance. Batch 1, 8, 64 x fp32/fp16/bf16 x features
channels_last (what the networks emit and the model feeds the op) and NCHW x CPU/CUDA
(CUDA cases skip without a GPU). Each (device, N, dtype, layout) is one benchmark group, so
the fused op and the reference print side by side; ``extra_info`` records the bytes moved
(features read + map and scores written) and whether they exceed the GPU's L2 cache:

    pytest bench --benchmark-only
    pytest bench --benchmark-only -k "cpu and N1"        # a subset

These report figures; nothing here asserts a speed-up (bench/bench_core.py checks targets).
"""

from __future__ import annotations

import pytest
import torch
from timing import device_case

import efficientad_fast
from efficientad_fast._device import DTYPES
from efficientad_fast.testing import op_inputs
from efficientad_fast.timing_protocol import OP_LAYOUTS, l2_cache_bytes, protocol, sync

OUTPUT_SIZE = (256, 256)
BATCHES = (1, 8, 64)
IMPLS = {"fused": efficientad_fast.anomaly_map, "reference": efficientad_fast.reference_anomaly_map}

# Warm-up and timed rounds: the op counts of the `budget` timing protocol (timing_protocol.PROTOCOLS),
# the same as `efficientad-fast bench --op --protocol budget` and gpu_check.sh. On 2 CPU cores
# the reference takes ~3 ms (N=1), ~0.1 s (N=8) and ~1 s (N=64) a call: the CPU grid takes minutes.
PROTOCOL = protocol("budget")

CASES = [
    device_case(device, batch, dtype, layout, impl, id=f"{device}-N{batch}-{dtype}-{layout}-{impl}")
    for device in ("cpu", "cuda")
    for batch in BATCHES
    for dtype in DTYPES
    for layout in OP_LAYOUTS
    for impl in IMPLS
]

# The fused and reference cases of one (device, N, dtype, layout) run back to back and share
# their inputs; only the latest set is kept (N=64 fp32 features are 1.2 GB).
_cached: dict = {}


def features(device: str, batch: int, dtype: str, layout: str):
    key = (device, batch, dtype, layout)
    if key not in _cached:
        _cached.clear()
        _cached[key] = op_inputs(
            batch, DTYPES[dtype], device, image_size=OUTPUT_SIZE[0], memory_format=OP_LAYOUTS[layout]
        )
    return _cached[key]


@pytest.mark.parametrize("device, batch, dtype, layout, impl", CASES)
def test_anomaly_map(benchmark, device, batch, dtype, layout, impl):
    tensors, kwargs = features(device, batch, dtype, layout)
    fn = IMPLS[impl]

    def run():
        out = fn(*tensors, **kwargs)
        sync(device)
        return out

    moved = sum(t.numel() * t.element_size() for t in tensors) + batch * (OUTPUT_SIZE[0] * OUTPUT_SIZE[1] + 1) * 4
    l2 = l2_cache_bytes(torch.device(device))
    benchmark.group = f"anomaly_map {device} N={batch} {dtype} {layout}"
    benchmark.extra_info.update(
        impl=impl,
        device=device,
        batch=batch,
        dtype=dtype,
        layout=layout,
        bytes_moved=moved,
        l2_bytes=l2,
        exceeds_l2=None if l2 is None else moved > l2,
        threads=torch.get_num_threads(),
    )
    warmup, rounds = PROTOCOL.op_runs(torch.device(device), batch)
    amap, score = benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    assert amap.shape == (batch, 1, *OUTPUT_SIZE) and score.shape == (batch,)
