"""pytest-benchmark suite: end-to-end ``predict`` and one training step.

predict: EfficientAD-S and -M, batch 1 and 16, 256x256 float images, fp32 and a half dtype
(bf16 on CPU, fp16 on CUDA), against anomalib's ``EfficientAdModel`` (eval,
inference_mode) holding the same weights where anomalib is installed. Each (device, size,
batch) is one group, so our dtypes and anomalib print side by side. On CUDA the timed call
ends with a synchronize.

train: one EfficientAD-S step (all three losses, penalty images on, Adam) at batch 1 and 8,
fp32 and (CPU) bf16 autocast, as ``efficientad_fast.train`` runs it.

    pytest bench/test_bench_predict.py --benchmark-only
    pytest bench --benchmark-only -k "predict and cpu and small and N1"   # a subset

CPU rounds are few: on 2 cores EfficientAD-S takes ~1 s an image, -M ~3 s.
"""

from __future__ import annotations

import copy

import pytest
import torch
from timing import anomalib_twin, device_case, import_anomalib

from efficientad_fast.testing import random_model
from efficientad_fast.timing_protocol import sync
from efficientad_fast.train import TrainConfig, compute_losses

SIZES = ("small", "medium")
BATCHES = (1, 16)
HALF = {"cpu": torch.bfloat16, "cuda": torch.float16}
# (rounds, warm-up rounds) by device and batch.
ROUNDS = {"cpu": {1: (5, 1), 16: (2, 1), 8: (2, 1)}, "cuda": {1: (200, 20), 16: (100, 10), 8: (50, 5)}}


_models: dict = {}


def models(size: str, device: str):
    """(ours fp32, ours half, anomalib or None) with the same random weights and statistics."""
    key = (size, device)
    if key not in _models:
        _models.clear()
        anomalib, _ = import_anomalib()
        # The timing depends on shapes, not weights.
        ours = random_model(size, seed=0, quantiles=(0.1, 1.0, 0.1, 1.0))
        theirs = None if anomalib is None else anomalib_twin(ours, anomalib).to(device)
        half = copy.deepcopy(ours).to(device, HALF[device])
        _models[key] = (ours.to(device), half, theirs)
    return _models[key]


PREDICT_CASES = [
    device_case(device, size, batch, impl, id=f"predict-{device}-{size}-N{batch}-{impl}")
    for device in ("cpu", "cuda")
    for size in SIZES
    for batch in BATCHES
    for impl in ("fp32", "half", "anomalib")
]


@pytest.mark.parametrize("device, size, batch, impl", PREDICT_CASES)
def test_predict(benchmark, device, size, batch, impl):
    ours, half, theirs = models(size, device)
    images = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(batch)).to(device)
    if impl == "anomalib":
        if theirs is None:
            pytest.skip("anomalib is not installed: pip install 'efficientad_fast[anomalib]'")

        def run():
            with torch.inference_mode():
                out = theirs(images)
            sync(device)
            return out.anomaly_map
    else:
        model = ours if impl == "fp32" else half

        def run():
            out = model.predict(images)
            sync(device)
            return out.anomaly_map

    dtype = {"fp32": "fp32", "half": str(HALF[device]).replace("torch.", ""), "anomalib": "anomalib fp32"}[impl]
    benchmark.group = f"predict {device} {size} N={batch}"
    benchmark.extra_info.update(device=device, size=size, batch=batch, impl=dtype, threads=torch.get_num_threads())
    rounds, warmup = ROUNDS[device][batch]
    amap = benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    assert amap.shape == (batch, 1, 256, 256)
    if impl == "anomalib":  # same weights and statistics: the same map as ours
        expected = ours.predict(images).anomaly_map
        assert (amap - expected).abs().max() <= 1e-4 * (expected.max() - expected.min())


TRAIN_CASES = [
    device_case(device, batch, amp, id=f"train-{device}-small-N{batch}-{amp}")
    for device in ("cpu", "cuda")
    for batch in (1, 8)
    for amp in ("fp32", "bf16" if device == "cpu" else "fp16")
]


@pytest.mark.parametrize("device, batch, amp", TRAIN_CASES)
def test_train_step(benchmark, device, batch, amp):
    model = random_model("small", seed=0).to(device, memory_format=torch.channels_last)
    model.train()
    model.teacher.eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 256, 256, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    penalty = torch.rand(batch, 3, 256, 256, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        list(model.student.parameters()) + list(model.autoencoder.parameters()), lr=1e-4, weight_decay=1e-5
    )
    config = TrainConfig()
    generator = torch.Generator().manual_seed(0)  # augmentation draws on the CPU
    with torch.no_grad():  # train() caches the frozen teacher's standardized outputs
        cached = model.teacher(images)
        cached = (cached - model.teacher_mean.view(1, -1, 1, 1)) / model.teacher_std.view(1, -1, 1, 1)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device, enabled=amp == "fp16")

    def step():
        with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            losses = compute_losses(model, images, penalty, generator, config, cached)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        sync(device)
        return losses["loss"].detach()

    benchmark.group = f"train step {device} small N={batch}"
    benchmark.extra_info.update(device=device, batch=batch, amp=amp, penalty=True, threads=torch.get_num_threads())
    rounds, warmup = ROUNDS[device][batch]
    loss = benchmark.pedantic(step, rounds=rounds, warmup_rounds=warmup, iterations=1)
    assert torch.isfinite(loss)
