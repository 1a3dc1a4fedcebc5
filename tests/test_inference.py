"""FastPredictor (fixed-shape fast path) and the timing protocol (efficientad_fast.benchmark)."""

import json

import pytest
import torch

import efficientad_fast as ead
from efficientad_fast.benchmark import format_table, run_benchmark, time_predict
from efficientad_fast.testing import assert_map_close, random_teacher_stats
from efficientad_fast.timing_protocol import bench_op

pytestmark = pytest.mark.usefixtures("op_library")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ead.EfficientAD("small", teacher="random")
    m.set_quantiles(0.1, 0.6, 0.2, 0.7)
    return m


def images(n, seed=1):
    return torch.rand(n, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.uint8])
def test_fast_predictor_equals_predict_on_cpu(model, input_dtype):
    x = images(2)
    if input_dtype == torch.uint8:
        x = (x * 255).round().to(torch.uint8)
    expected = model.predict(x)
    fast = ead.FastPredictor(model, 2, 256, input_dtype=input_dtype)
    got = fast(x)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.score, expected.score, rtol=0, atol=1e-6)
    # a second call with other images gives their own result, not the first one's
    y = images(2, seed=5)
    if input_dtype == torch.uint8:
        y = (y * 255).round().to(torch.uint8)
    torch.testing.assert_close(fast(y).score, model.predict(y).score, rtol=0, atol=1e-6)


def test_fast_predictor_decides_at_the_model_thresholds(model):
    import copy

    decided = copy.deepcopy(model)
    x = images(1, seed=3)
    amap = model.predict(x).anomaly_map
    decided.set_thresholds(image=float(amap.max()) * 0.9, pixel=float(amap.median()), source="test")
    fast = ead.FastPredictor(decided, 1, 256, warmup=0, sensitivity=0.8)
    got = fast(x)
    image, pixel = decided.thresholds(0.8)
    assert torch.equal(got.label, got.score > image) and torch.equal(got.mask, got.anomaly_map > pixel)
    assert (image, pixel) != decided.thresholds(0.5)  # the predictor's sensitivity, not the default
    assert ead.FastPredictor(model, 1, 256, warmup=0)(x).label is None  # no image threshold
    with pytest.raises(ValueError, match="sensitivity"):
        ead.FastPredictor(model, 1, 256, warmup=0, sensitivity=2)


def test_fast_predictor_rejects_bad_input(model):
    fast = ead.FastPredictor(model, 1, 256, warmup=0)
    with pytest.raises(ValueError, match=r"shape \(1, 3, 256, 256\)"):
        fast(images(2))
    with pytest.raises(TypeError, match="torch.float32 images"):
        fast((images(1) * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fast([1, 2, 3])
    with pytest.raises(ValueError, match="at least 256"):
        ead.FastPredictor(model, 1, 128)
    with pytest.raises(ValueError, match="batch_size"):
        ead.FastPredictor(model, 0, 256)
    with pytest.raises(TypeError, match="input_dtype"):
        ead.FastPredictor(model, 1, 256, input_dtype=torch.int32)
    with pytest.raises(TypeError, match="EfficientAD"):
        ead.FastPredictor(torch.nn.Linear(2, 2), 1, 256)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_fast_predictor_cuda_graph_needs_cuda_model(model):
    with pytest.raises(ValueError, match="CUDA device"):
        ead.FastPredictor(model, 1, 256, cuda_graph=True)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.uint8])
def test_cuda_graph_predictor_equals_predict(model, dtype, input_dtype):
    gpu = ead.EfficientAD("small", teacher="random")
    gpu.load_state_dict(model.state_dict())
    gpu = gpu.to("cuda", dtype)
    x = images(4)
    if input_dtype == torch.uint8:
        x = (x * 255).round().to(torch.uint8)
    expected = gpu.predict(x.cuda())
    fast = ead.FastPredictor(gpu, 4, 256, input_dtype=input_dtype, cuda_graph=True)
    for source in (x, x.cuda(), x.pin_memory()):  # from the host, the device, pinned memory
        got = fast(source)
        torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.score, expected.score, rtol=0, atol=1e-5)
    y = images(4, seed=9).cuda()
    if input_dtype == torch.uint8:
        y = (y * 255).round().to(torch.uint8)
    torch.testing.assert_close(fast(y).score, gpu.predict(y).score, rtol=0, atol=1e-5)


# --- predict on each device against the CPU reference backend ---------------------------


def seeded_model(model_size: str, padding: bool) -> ead.EfficientAD:
    """A seeded EfficientAD (random weights, teacher statistics, quantiles), in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ead.EfficientAD(model_size, padding=padding, teacher="random")
    model.set_teacher_stats(*random_teacher_stats(generator=torch.Generator().manual_seed(0)))
    model.set_quantiles(0.1, 0.6, 0.2, 0.7)
    return model.eval()


def copy_model(model: ead.EfficientAD, device, dtype) -> ead.EfficientAD:
    """The same weights, statistics and quantiles in a new model on device, in dtype."""
    twin = ead.EfficientAD(model.model_size, padding=model.padding, teacher="random")
    twin.load_state_dict(model.state_dict())
    twin.set_quantiles(*model.quantiles.tolist())
    return twin.to(device, dtype).eval()


# Of each image's map range (assert_map_close). fp32 on CUDA runs without TF32 (below), so
# only summation order differs from the CPU; fp16 networks round every layer's output to
# 11 bits (estimates: not yet measured on a GPU).
PREDICT_RTOL = {torch.float32: 1e-4, torch.float16: 5e-2}


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", torch.float32),
        pytest.param("cuda", torch.float32, marks=requires_cuda),
        pytest.param("cuda", torch.float16, marks=requires_cuda),
    ],
    ids=["cpu-fp32", "cuda-fp32", "cuda-fp16"],
)
@pytest.mark.parametrize("padding", [False, True], ids=["no-padding", "padding"])
@pytest.mark.parametrize("model_size", ["small", "medium"])
def test_predict_matches_cpu_reference_backend(model_size, padding, device, dtype):
    cpu_model = seeded_model(model_size, padding)
    n = 1 if device == "cpu" else 2  # keep the CPU twin cheap (2 cores)
    x = images(n, seed=3)
    expected = cpu_model.predict(x, backend="reference")
    model = copy_model(cpu_model, device, dtype)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        got = model.predict(x.to(device))
    assert got.anomaly_map.device.type == device
    assert_map_close((got.anomaly_map, got.score), (expected.anomaly_map, expected.score), rtol=PREDICT_RTOL[dtype])


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("padding", [False, True], ids=["no-padding", "padding"])
@pytest.mark.parametrize("model_size", ["small", "medium"])
def test_cuda_graph_predictor_equals_eager_predictor(model_size, padding, dtype):
    model = copy_model(seeded_model(model_size, padding), "cuda", dtype)
    graphed = ead.FastPredictor(model, 2, 256, cuda_graph=True)
    eager = ead.FastPredictor(model, 2, 256, cuda_graph=False)
    for seed in (4, 5):  # a second batch: the replay reads the new images
        x = images(2, seed=seed).cuda()
        got, expected = graphed(x), eager(x)
        # The same kernels on the same inputs: equal but for cuDNN's algorithm choice.
        assert_map_close((got.anomaly_map, got.score), (expected.anomaly_map, expected.score), rtol=1e-4)


def test_time_predict_reports_consistent_figures(model):
    t = time_predict(model, 1, warmup=0, runs=2)
    assert t.runs == 2 and len(t.times_ms) == 2 and t.error is None
    assert min(t.times_ms) == t.min_ms <= t.median_ms <= max(t.times_ms)
    assert t.images_per_s == pytest.approx(1e3 / t.mean_ms)
    assert t.peak_memory_mib > 0 and t.path == "host" and not t.cuda_graph
    with pytest.raises(ValueError, match="path"):
        time_predict(model, 1, path="disk")
    with pytest.raises(ValueError, match="runs"):
        time_predict(model, 1, runs=0)


def test_bench_op_measures_both_implementations():
    rows = bench_op(torch.device("cpu"), batches=(1,), dtypes=("fp32",), runs=2, warmup=0, layouts=("nchw",))
    assert [(r.impl, r.layout) for r in rows] == [("fused", "nchw"), ("reference", "nchw")]
    for r in rows:
        # features 384 + 768 + 384 channels of 56x56 fp32, plus a 256x256 float map and a score
        assert r.bytes_moved == (4 * 384 * 56 * 56) * 4 + (256 * 256 + 1) * 4
        assert r.gbs == pytest.approx(r.bytes_moved / (r.mean_ms / 1e3) / 1e9)


def test_run_benchmark_writes_json_and_table(tmp_path):
    out = tmp_path / "bench.json"
    result = run_benchmark(
        batch_sizes=(1,), dtypes=("fp32",), device="cpu", warmup=0, runs=1, json_path=out, log=lambda *a: None
    )
    saved = json.loads(out.read_text())
    assert saved["settings"]["batch_sizes"] == [1] and saved["machine"]["torch"] == torch.__version__
    assert [t["name"] for t in saved["timings"]] == ["small N=1 fp32 host"]
    assert "| small | 1 | fp32 | host | no | no |" in format_table(result)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        run_benchmark(device="cpu", cuda_graphs=(True,), log=lambda *a: None)
    with pytest.raises(ValueError, match="precision must be one of"):
        run_benchmark(device="cpu", dtypes=("fp64",), log=lambda *a: None)
