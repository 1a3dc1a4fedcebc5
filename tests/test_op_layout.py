"""How the fused op reads its three feature tensors (issue 25), on the CPU twin of the CUDA
kernels: the layout is chosen from all three inputs, inputs the chosen kernel can read are
read in place with their strides (no hidden NCHW copy), and the channels_last CUDA kernel's
16-byte vector loads are taken only where pointers, strides and C allow. The decisions are
the C++ input checks' own (``ops.layout_plan`` asks them); copies are also counted
independently, with the profiler; every result is compared with the reference."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from efficientad_fast import anomaly_map, reference_anomaly_map
from efficientad_fast.op.ops import layout_plan
from efficientad_fast.testing import assert_map_close
from efficientad_fast.testing import random_features as make_features

pytestmark = pytest.mark.usefixtures("op_library", "seeded")

QUANTILES = (0.5, 3.0, 0.25, 2.5)
NAMES = ("teacher", "student", "autoencoder")


def _wider(x: torch.Tensor, extra: int, channels_last: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    wider = torch.full((n, c + extra, h, w), float("nan"), dtype=x.dtype)
    return wider.contiguous(memory_format=torch.channels_last) if channels_last else wider


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of x in one memory layout; the views share no storage with x."""
    n, c, h, w = x.shape
    if layout == "nchw":
        return x.contiguous()
    if layout == "cl":
        return x.contiguous(memory_format=torch.channels_last)
    if layout in ("cl_slice", "nchw_slice"):  # channels 1..C of a C+2-channel tensor
        wider = _wider(x, 2, channels_last=layout == "cl_slice")
        wider[:, 1 : c + 1] = x
        return wider[:, 1 : c + 1]
    if layout == "cl_batch_slice":  # every other image of a channels_last batch of 2N
        double = torch.full((2 * n, c, h, w), float("nan"), dtype=x.dtype).contiguous(memory_format=torch.channels_last)
        double[::2] = x
        return double[::2]
    if layout == "nchw_rows":  # rows 1..h of an NCHW tensor h+2 rows high
        tall = torch.full((n, c, h + 2, w), float("nan"), dtype=x.dtype)
        tall[:, :, 1 : h + 1] = x
        return tall[:, :, 1 : h + 1]
    if layout == "transposed":  # h and w swapped in memory: neither channels nor rows contiguous
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "strided":  # every other column of a twice-as-wide tensor
        wide = torch.full((n, c, h, 2 * w), float("nan"), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    raise AssertionError(layout)


# (teacher, student, autoencoder layouts) -> (the kernel's layout, the inputs it copies). The
# rule (csrc/anomaly_map.cpp, choose_layout): channels_last when the inputs it reads in place
# hold at least as many values as those NCHW reads in place (the student counts 2C channels).
LAYOUT_CASES = {
    "all-nchw": (("nchw", "nchw", "nchw"), "nchw", ()),
    "all-cl": (("cl", "cl", "cl"), "channels_last", ()),
    "teacher-cl-slice": (("cl_slice", "cl", "cl"), "channels_last", ()),  # chose NCHW, copied all three
    "all-cl-slices": (("cl_slice", "cl_slice", "cl_slice"), "channels_last", ()),
    "cl-batch-slice": (("cl_batch_slice", "cl", "cl_slice"), "channels_last", ()),
    "nchw-slices": (("nchw_slice", "nchw_rows", "nchw"), "nchw", ()),
    "teacher-cl-others-nchw": (("cl", "nchw", "nchw"), "nchw", ("teacher",)),
    "teacher-nchw-others-cl": (("nchw", "cl", "cl"), "channels_last", ("teacher",)),  # copied student and ae
    "tie-goes-to-cl": (("cl", "nchw", "cl"), "channels_last", ("student",)),
    "teacher-transposed": (("transposed", "cl", "cl_slice"), "channels_last", ("teacher",)),
    "student-transposed": (("nchw", "transposed", "nchw_rows"), "nchw", ("student",)),
    "all-strided": (("strided", "strided", "strided"), "channels_last", NAMES),
}


def features_in(layouts, shape=(2, 16, 5, 7), dtype=torch.float32):
    features = make_features(*shape, dtype=dtype)
    expected = reference_anomaly_map(**features, quantiles=QUANTILES, output_size=(13, 11))
    for name, layout in zip(NAMES, layouts):
        features[name] = in_layout(features[name], layout)
    return features, expected


def copies_made(features) -> int:
    """How many tensor copies (aten::copy_) one op call makes, counted by the profiler: the
    feature copies the layout needs and nothing else (float32 stats and quantile numbers
    need none)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        anomaly_map(**features, quantiles=QUANTILES, output_size=(13, 11))
    return sum(event.name == "aten::copy_" for event in prof.events())


@pytest.mark.parametrize("case", list(LAYOUT_CASES), ids=list(LAYOUT_CASES))
def test_layout_is_chosen_from_all_three_inputs(case):
    layouts, layout, copied = LAYOUT_CASES[case]
    features, _ = features_in(layouts)
    plan = layout_plan(features["teacher"], features["student"], features["autoencoder"])
    assert (plan["layout"], plan["copied"]) == (layout, copied)
    assert copies_made(features) == len(copied)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", list(LAYOUT_CASES), ids=list(LAYOUT_CASES))
def test_every_layout_mix_matches_reference(case, dtype, distance):
    layouts = LAYOUT_CASES[case][0]
    features = make_features(2, 16, 5, 7, dtype=dtype)
    options = dict(quantiles=QUANTILES, output_size=(13, 11), distance=distance)
    expected = reference_anomaly_map(**features, **options)
    for name, layout in zip(NAMES, layouts):
        features[name] = in_layout(features[name], layout)
    assert_map_close(anomaly_map(**features, **options), expected, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 1, 4, 5), (3, 5, 1, 6)], ids=["1x1-pixel", "c1", "h1"])
@pytest.mark.parametrize("case", ["all-nchw", "all-cl", "all-cl-slices", "teacher-cl-others-nchw"])
def test_size_one_dimensions_read_in_place(case, shape):
    """A dimension of size 1 has no stride that matters: e.g. an NCHW tensor of 1x1 maps is
    channels_last too, and reads in place in either layout."""
    layouts = LAYOUT_CASES[case][0]
    features, expected = features_in(layouts, shape)
    assert_map_close(anomaly_map(**features, quantiles=QUANTILES, output_size=(13, 11)), expected, rtol=1e-5)
    plan = layout_plan(features["teacher"], features["student"], features["autoencoder"])
    assert copies_made(features) == len(plan["copied"])
    assert len(plan["copied"]) <= len(LAYOUT_CASES[case][2])
    if shape[2:] == (1, 1):
        assert plan["copied"] == ()


# --- the channels_last CUDA kernel's 16-byte loads: when they are taken ---------------------


def cl_slice_at(x: torch.Tensor, first: int, total: int) -> torch.Tensor:
    """x as channels first..first+C of a channels_last tensor of `total` channels."""
    c = x.shape[1]
    wider = _wider(x, total - c, channels_last=True)
    wider[:, first : first + c] = x
    return wider[:, first : first + c]


def offset_by_one(x: torch.Tensor) -> torch.Tensor:
    """x channels_last, but starting one element into its storage (misaligned)."""
    n, c, h, w = x.shape
    storage = torch.empty(x.numel() + 1, dtype=x.dtype)
    view = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    view.copy_(x)
    return view


VECTOR_CASES = {  # (dtype, channels, how every input is laid out) -> vector loads?
    "fp16-c16": (torch.float16, 16, "cl", True),
    "bf16-c16": (torch.bfloat16, 16, "cl", True),
    "fp32-c12": (torch.float32, 12, "cl", True),  # 4 floats a vector
    "fp16-c384-model": (torch.float16, 384, "cl", True),  # the model's: 48 vectors over 32 lanes
    "fp32-c260": (torch.float32, 260, "cl", True),  # 65 vectors: one lane takes three
    "fp16-c12-partial-vector": (torch.float16, 12, "cl", False),  # 8 halves a vector
    "fp32-c6-partial-vector": (torch.float32, 6, "cl", False),
    "fp16-c15-odd": (torch.float16, 15, "cl", False),
    "fp16-slice-at-8-of-32": (torch.float16, 16, "slice8of32", True),  # like student[:, 384:]
    "fp16-slice-at-4-of-32": (torch.float16, 16, "slice4of32", False),  # starts 8 bytes in
    "fp16-slice-pixel-stride-20": (torch.float16, 16, "slice0of20", False),  # pixels 40 bytes apart
    "fp16-misaligned-pointer": (torch.float16, 16, "offset1", False),
    "fp16-batch-slice": (torch.float16, 16, "cl_batch_slice", True),
    "fp16-nchw": (torch.float16, 16, "nchw", False),  # the NCHW kernel has no vector path
    "fp16-transposed-copied": (torch.float16, 16, "transposed", True),  # copied: aligned, whole
}


def vector_layout(x: torch.Tensor, how: str) -> torch.Tensor:
    if how.startswith("slice"):
        first, total = (int(v) for v in how.removeprefix("slice").split("of"))
        return cl_slice_at(x, first, total * x.shape[1] // 16)  # student: twice as wide
    if how == "offset1":
        return offset_by_one(x)
    return in_layout(x, how)


@pytest.mark.parametrize("case", list(VECTOR_CASES), ids=list(VECTOR_CASES))
def test_vector_loads_only_where_pointers_strides_and_channels_allow(case):
    dtype, channels, how, vectors = VECTOR_CASES[case]
    features = make_features(2, channels, 3, 4, dtype=dtype)
    options = dict(quantiles=QUANTILES, output_size=(9, 10))
    expected = reference_anomaly_map(**features, **options)
    for name in NAMES:
        features[name] = vector_layout(features[name], how)
    plan = layout_plan(features["teacher"], features["student"], features["autoencoder"])
    assert plan["vector_loads"] is vectors, plan
    assert_map_close(anomaly_map(**features, **options), expected, rtol=1e-5)


def test_one_misaligned_input_turns_vector_loads_off_for_all():
    features = make_features(2, 16, 3, 4, dtype=torch.float16)
    aligned = {name: features[name].contiguous(memory_format=torch.channels_last) for name in NAMES}
    assert layout_plan(*aligned.values())["vector_loads"] is True
    for name in NAMES:
        mixed = dict(aligned, **{name: offset_by_one(features[name])})
        assert layout_plan(*mixed.values()) == {"layout": "channels_last", "copied": (), "vector_loads": False}


def to_cuda_as_laid_out(x: torch.Tensor) -> torch.Tensor:
    """x on the GPU with the same strides and storage offset (so the same 16-byte alignment:
    CUDA allocations are aligned far beyond 16 bytes, as CPU ones are)."""
    whole = torch.as_strided(x, (x.untyped_storage().nbytes() // x.element_size(),), (1,), 0)
    return whole.cuda().as_strided(x.shape, x.stride(), x.storage_offset())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("case", list(VECTOR_CASES), ids=list(VECTOR_CASES))
def test_cuda_vector_and_scalar_paths_match_reference(case, distance):
    """The same cases on the GPU, where the decision picks the kernel's vector or scalar loop."""
    dtype, channels, how, vectors = VECTOR_CASES[case]
    features = make_features(3, channels, 5, 6, dtype=dtype)
    options = dict(quantiles=QUANTILES, output_size=(17, 15), distance=distance)
    expected = reference_anomaly_map(**features, **options)
    for name in NAMES:
        features[name] = to_cuda_as_laid_out(vector_layout(features[name], how))
    features = {k: v.cuda() for k, v in features.items()}  # the teacher statistics
    plan = layout_plan(features["teacher"], features["student"], features["autoencoder"])
    assert plan["vector_loads"] is vectors, plan
    assert_map_close(anomaly_map(**features, **options), expected, rtol=1e-5)
