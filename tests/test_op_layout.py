"""How the fused op reads its three feature tensors (issue 25), on the CPU twin of the CUDA
kernels: the layout is chosen from all three inputs, and inputs the chosen kernel can read
are read in place with their strides (no hidden NCHW copy). The decisions are the C++ input
checks' own (``ops.layout_plan`` asks them); copies are also counted
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
