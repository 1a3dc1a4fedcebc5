"""pytest-benchmark suite: the fused anomaly-map op against the plain-PyTorch reference.

EfficientAD-S shapes at 256 px: C=384, 56x56 features, pad 4, output 256x256, teacher
mean/std and quantiles given, l2 distance. Batch 1, 8, 64 x fp32/fp16/bf16 x CPU/CUDA
(CUDA cases skip without a GPU). Each (device, N, dtype) is one benchmark group, so the
fused op and the reference print side by side:

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
from efficientad_fast.benchmark import sync
from efficientad_fast.testing import op_inputs

OUTPUT_SIZE = (256, 256)
BATCHES = (1, 8, 64)
IMPLS = {"fused": efficientad_fast.anomaly_map, "reference": efficientad_fast.reference_anomaly_map}

# (rounds, warmup rounds) by device and batch. On 2 CPU cores the reference takes ~3 ms
# (N=1), ~0.1 s (N=8) and ~1 s (N=64) a call, so the whole CPU grid stays within minutes.
ROUNDS = {
    "cpu": {1: (30, 3), 8: (8, 1), 64: (3, 1)},
    "cuda": {1: (200, 20), 8: (100, 10), 64: (30, 5)},
}

CASES = [
    device_case(device, batch, dtype, impl, id=f"{device}-N{batch}-{dtype}-{impl}")
    for device in ("cpu", "cuda")
    for batch in BATCHES
    for dtype in DTYPES
    for impl in IMPLS
]

# The fused and reference cases of one (device, N, dtype) run back to back and share their
# inputs; only the latest set is kept (N=64 fp32 features are 1.2 GB).
_cached: dict = {}


def features(device: str, batch: int, dtype: str):
    key = (device, batch, dtype)
    if key not in _cached:
        _cached.clear()
        _cached[key] = op_inputs(batch, DTYPES[dtype], device, image_size=OUTPUT_SIZE[0])
    return _cached[key]


@pytest.mark.parametrize("device, batch, dtype, impl", CASES)
def test_anomaly_map(benchmark, device, batch, dtype, impl):
    tensors, kwargs = features(device, batch, dtype)
    fn = IMPLS[impl]

    def run():
        out = fn(*tensors, **kwargs)
        sync(device)
        return out

    benchmark.group = f"anomaly_map {device} N={batch} {dtype}"
    benchmark.extra_info.update(
        impl=impl, device=device, batch=batch, dtype=dtype,
        feature_bytes=sum(t.numel() * t.element_size() for t in tensors),
        threads=torch.get_num_threads(),
    )
    rounds, warmup = ROUNDS[device][batch]
    amap, score = benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    assert amap.shape == (batch, 1, *OUTPUT_SIZE) and score.shape == (batch,)
