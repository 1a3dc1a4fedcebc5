"""The fused op ``efficientad_fast.anomaly_map`` against its plain-PyTorch reference
``efficientad_fast.reference_anomaly_map`` (docs/architecture.md, "Scoring"): values, dtypes,
memory layouts, empty batches, bad inputs, NaN/Inf, opcheck, torch.compile, torch.export,
and the same comparison plus CUDA-graph capture on a GPU when there is one."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

from efficientad_fast import anomaly_map, reference_anomaly_map
from efficientad_fast.testing import assert_map_close, map_tolerance
from efficientad_fast.testing import random_features as make_features

# Every test needs the compiled op loaded (conftest.py) and reproducible random features.
pytestmark = pytest.mark.usefixtures("op_library", "seeded")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# The bound: max |op - reference| <= 1e-5 x (max - min of the image's reference map),
# plus a floor of 1e-6 and of float32 rounding (testing.map_tolerance).
# The op and the reference both upcast half inputs and compute in float32, so the same
# bound holds for every input dtype (measured error is ~1e-7..1e-6 of the range).
RELATIVE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}

# (q_a_st, q_b_st, q_a_ae, q_b_ae): arbitrary but distinct, so a swapped pair shows.
QUANTILES = (0.5, 3.0, 0.25, 2.5)


def raw_op():
    """The registered op itself (the library is loaded by the session fixture in conftest)."""
    return torch.ops.efficientad_fast.anomaly_map.default


def quantiles_argument(kind, device="cpu"):
    """The quantiles in each accepted form: None, a tuple of floats, a float32 tensor."""
    if kind is None:
        return None
    if kind == "tuple":
        return QUANTILES
    if kind == "tensor":
        return torch.tensor(QUANTILES, dtype=torch.float32, device=device)
    raise AssertionError(kind)


def assert_matches_reference(result, expected, relative_tolerance=1e-5):
    """Map and score equal the reference's to within relative_tolerance x each image's map
    range, with a floor for flat maps (efficientad_fast.testing.assert_map_close)."""
    assert_map_close(result, expected, rtol=relative_tolerance)


def compare_with_reference(features, relative_tolerance=1e-5, **options):
    result = anomaly_map(**features, **options)
    expected = reference_anomaly_map(**features, **options)
    assert_matches_reference(result, expected, relative_tolerance)
    return result


# --- values: op vs reference -------------------------------------------------------------

# One axis at a time away from a small base case; the cartesian test below crosses the
# options that change the arithmetic (distance, alpha, pad, standardization, quantiles).
BASE_CASE = dict(
    n=2, c=3, h=5, w=7, output_size=(13, 17), alpha=0.3, pad=4, distance="l2", teacher_stats=True, quantiles="tuple"
)
AXIS_CASES = {
    "base": {},
    "n1": dict(n=1),
    "n3": dict(n=3),
    "c1": dict(c=1),
    "c20": dict(c=20),
    "c384": dict(c=384),
    "h1w1": dict(h=1, w=1),
    "h9w4": dict(h=9, w=4),
    "h56w56": dict(h=56, w=56),
    "out-none": dict(output_size=None),
    "out-1x1": dict(output_size=(1, 1)),
    "out-int31": dict(output_size=31),
    "out-7x3-downsample": dict(output_size=(7, 3)),
    "out-list-255x257": dict(output_size=[255, 257]),
    "alpha0": dict(alpha=0.0),
    "alpha1": dict(alpha=1.0),
    "alpha-default": dict(alpha=None),
    "pad0": dict(pad=0),
    "pad1": dict(pad=1),
    "pad-default": dict(pad=None),
    "cosine": dict(distance="cosine"),
    "cosine-c1": dict(distance="cosine", c=1),
    "no-teacher-stats": dict(teacher_stats=False),
    "no-quantiles": dict(quantiles=None),
    "tensor-quantiles": dict(quantiles="tensor"),
}


@pytest.mark.parametrize("overrides", list(AXIS_CASES.values()), ids=list(AXIS_CASES))
def test_matches_reference_axis_by_axis(overrides):
    case = {**BASE_CASE, **overrides}
    features = make_features(case["n"], case["c"], case["h"], case["w"], teacher_stats=case["teacher_stats"])
    options = dict(
        output_size=case["output_size"], distance=case["distance"], quantiles=quantiles_argument(case["quantiles"])
    )
    # None means "leave the argument out", to test the defaults (alpha 0.5, pad 4).
    if case["alpha"] is not None:
        options["alpha"] = case["alpha"]
    if case["pad"] is not None:
        options["pad"] = case["pad"]
    compare_with_reference(features, **options)


@pytest.mark.parametrize(
    "distance, alpha, pad, teacher_stats, quantiles",
    list(itertools.product(["l2", "cosine"], [0.0, 0.3, 1.0], [0, 4], [False, True], [None, "tuple", "tensor"])),
)
def test_matches_reference_cartesian(distance, alpha, pad, teacher_stats, quantiles):
    features = make_features(2, 3, 5, 7, teacher_stats=teacher_stats)
    compare_with_reference(
        features, alpha=alpha, pad=pad, output_size=(11, 9), distance=distance, quantiles=quantiles_argument(quantiles)
    )


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_matches_reference_at_realistic_size(distance, layout):
    # EfficientAD-S on a 256x256 image: 384 teacher channels, 56x56 maps, padded to 64x64
    # and resized to 256x256.
    features = make_features(2, 384, 56, 56)
    if layout == "channels_last":
        for name in ("teacher", "student", "autoencoder"):
            features[name] = features[name].contiguous(memory_format=torch.channels_last)
    compare_with_reference(
        features, quantiles=quantiles_argument("tensor"), alpha=0.5, pad=4, output_size=(256, 256), distance=distance
    )


def test_quantiles_as_tuple_of_scalar_tensors():
    # anomalib keeps qa_st, qb_st, qa_ae, qb_ae as 0-d tensor buffers.
    features = make_features(2, 3, 5, 7)
    scalars = tuple(torch.tensor(q) for q in QUANTILES)
    from_scalars = anomaly_map(**features, quantiles=scalars)
    from_floats = anomaly_map(**features, quantiles=QUANTILES)
    assert torch.equal(from_scalars[0], from_floats[0])
    assert torch.equal(from_scalars[1], from_floats[1])


@pytest.mark.parametrize("stats_form", ["1xCx1x1", "strided", "float16", "float64"])
def test_teacher_stats_in_other_forms(stats_form):
    # anomalib's mean_std buffers are (1, C, 1, 1); any float dtype / view must work.
    features = make_features(2, 5, 4, 6)
    mean, std = features["teacher_mean"], features["teacher_std"]
    if stats_form == "1xCx1x1":
        mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    elif stats_form == "strided":
        mean = torch.stack([mean, torch.zeros_like(mean)], dim=1)[:, 0]
        std = torch.stack([std, torch.ones_like(std)], dim=1)[:, 0]
        assert not mean.is_contiguous()
    else:
        dtype = getattr(torch, stats_form)
        mean, std = mean.to(dtype), std.to(dtype)
    features["teacher_mean"], features["teacher_std"] = mean, std
    compare_with_reference(features, quantiles=QUANTILES, output_size=(15, 19))


# --- dtypes and memory layouts -------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_match_reference(dtype, distance, layout):
    # The reference upcasts the same half values to float32, so both see identical inputs.
    features = make_features(2, 20, 9, 11, dtype=dtype)
    if layout == "channels_last":
        for name in ("teacher", "student", "autoencoder"):
            features[name] = features[name].contiguous(memory_format=torch.channels_last)
    compare_with_reference(
        features, RELATIVE_TOLERANCE[dtype], quantiles=QUANTILES, output_size=(37, 29), distance=distance
    )


def in_layout(x, layout):
    """The same values as x in another memory layout (views share no storage with x)."""
    n, c, h, w = x.shape
    if layout == "nchw":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a twice-as-wide tensor
        wide = torch.full((n, c, h, 2 * w), float("nan"), dtype=x.dtype)
        wide[..., ::2] = x
        view = wide[..., ::2]
    elif layout in ("channel_slice", "channels_last_channel_slice"):  # channels 1..C of C+2
        wider = torch.full((n, c + 2, h, w), float("nan"), dtype=x.dtype)
        if layout == "channels_last_channel_slice":
            wider = wider.contiguous(memory_format=torch.channels_last)
        wider[:, 1 : c + 1] = x
        view = wider[:, 1 : c + 1]
    else:
        raise AssertionError(layout)
    # The point of these layouts is to be neither NCHW- nor channels_last-contiguous.
    if x.numel() > 1 and n > 1:
        assert not view.is_contiguous()
    return view


LAYOUT_COMBINATIONS = [  # (teacher, student, autoencoder)
    ("nchw", "nchw", "nchw"),
    ("channels_last", "channels_last", "channels_last"),
    ("channels_last", "nchw", "nchw"),
    ("nchw", "channels_last", "channels_last"),
    ("channels_last", "nchw", "channels_last"),
    ("strided", "strided", "strided"),
    ("channel_slice", "channel_slice", "channel_slice"),
    ("channels_last_channel_slice", "channels_last_channel_slice", "channels_last_channel_slice"),
    ("channels_last", "strided", "channel_slice"),
    ("channels_last_channel_slice", "channels_last", "nchw"),
]


@pytest.mark.parametrize("shape", [(2, 20, 5, 7), (2, 3, 1, 1)], ids=["2x20x5x7", "2x3x1x1"])
@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("layouts", LAYOUT_COMBINATIONS, ids=["-".join(c) for c in LAYOUT_COMBINATIONS])
def test_memory_layouts_match_reference(layouts, distance, shape):
    n, c, h, w = shape
    features = make_features(n, c, h, w)
    expected = reference_anomaly_map(**features, quantiles=QUANTILES, output_size=(13, 11), distance=distance)
    for name, layout in zip(("teacher", "student", "autoencoder"), layouts):
        features[name] = in_layout(features[name], layout)
    result = anomaly_map(**features, quantiles=QUANTILES, output_size=(13, 11), distance=distance)
    assert_matches_reference(result, expected)


def test_inputs_are_not_modified():
    features = make_features(2, 20, 5, 7)
    features["teacher"] = features["teacher"].contiguous(memory_format=torch.channels_last)
    originals = {name: value.clone() for name, value in features.items()}
    anomaly_map(**features, quantiles=QUANTILES)
    for name, value in features.items():
        assert torch.equal(value, originals[name]), name


# --- empty batch -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("output_size, expected_hw", [(None, (13, 15)), ((9, 11), (9, 11))])
def test_empty_batch_gives_empty_outputs(output_size, expected_hw, dtype):
    features = make_features(0, 3, 5, 7, dtype=dtype)
    result_map, result_score = anomaly_map(**features, quantiles=QUANTILES, output_size=output_size)
    assert result_map.shape == (0, 1, *expected_hw)
    assert result_score.shape == (0,)
    assert result_map.dtype == result_score.dtype == torch.float32
    expected_map, expected_score = reference_anomaly_map(**features, quantiles=QUANTILES, output_size=output_size)
    assert result_map.shape == expected_map.shape and result_score.shape == expected_score.shape


# --- bad inputs ------------------------------------------------------------------------------


def good_call():
    """Keyword arguments of a valid call: teacher (2, 3, 5, 7), everything optional given."""
    features = make_features(2, 3, 5, 7)
    return dict(features, quantiles=QUANTILES, alpha=0.5, pad=4, output_size=(13, 17), distance="l2")


NAN = float("nan")

# (change to a valid call, exception type or types allowed, regexes the message must contain).
BAD_INPUTS = {
    "student-channels-not-2C": (
        dict(student=torch.randn(2, 5, 5, 7)),
        ValueError,
        [r"student", r"\[2, 5, 5, 7\]", r"\[2, 3, 5, 7\]"],
    ),
    "student-height-differs": (dict(student=torch.randn(2, 6, 6, 7)), ValueError, [r"student", r"\[2, 6, 6, 7\]"]),
    "student-width-differs": (dict(student=torch.randn(2, 6, 5, 8)), ValueError, [r"student", r"\[2, 6, 5, 8\]"]),
    "autoencoder-spatial-differs": (
        dict(autoencoder=torch.randn(2, 3, 5, 8)),
        ValueError,
        [r"autoencoder", r"\[2, 3, 5, 8\]"],
    ),
    "student-batch-differs": (dict(student=torch.randn(3, 6, 5, 7)), ValueError, [r"student", r"\[3, 6, 5, 7\]"]),
    "autoencoder-batch-differs": (
        dict(autoencoder=torch.randn(1, 3, 5, 7)),
        ValueError,
        [r"autoencoder", r"\[1, 3, 5, 7\]"],
    ),
    "autoencoder-channels-differ": (
        dict(autoencoder=torch.randn(2, 4, 5, 7)),
        ValueError,
        [r"autoencoder", r"\[2, 4, 5, 7\]"],
    ),
    "teacher-3d": (dict(teacher=torch.randn(3, 5, 7)), ValueError, [r"teacher", r"4-D", r"\[3, 5, 7\]"]),
    "student-5d": (dict(student=torch.randn(1, 2, 6, 5, 7)), ValueError, [r"student", r"4-D", r"\[1, 2, 6, 5, 7\]"]),
    "teacher-no-channels": (
        dict(
            teacher=torch.randn(2, 0, 5, 7),
            student=torch.randn(2, 0, 5, 7),
            autoencoder=torch.randn(2, 0, 5, 7),
            teacher_mean=None,
            teacher_std=None,
        ),
        ValueError,
        [r"teacher", r"\[2, 0, 5, 7\]"],
    ),
    "teacher-integer": (dict(teacher=torch.ones(2, 3, 5, 7, dtype=torch.int64)), TypeError, [r"teacher", r"Long"]),
    "autoencoder-uint8": (
        dict(autoencoder=torch.ones(2, 3, 5, 7, dtype=torch.uint8)),
        TypeError,
        [r"autoencoder", r"Byte"],
    ),
    "student-float64": (dict(student=torch.randn(2, 6, 5, 7, dtype=torch.float64)), TypeError, [r"student", r"Double"]),
    "all-float64": (
        dict(
            teacher=torch.randn(2, 3, 5, 7, dtype=torch.float64),
            student=torch.randn(2, 6, 5, 7, dtype=torch.float64),
            autoencoder=torch.randn(2, 3, 5, 7, dtype=torch.float64),
        ),
        TypeError,
        [r"teacher", r"Double"],
    ),
    "mixed-dtypes-half-teacher": (
        dict(teacher=torch.randn(2, 3, 5, 7, dtype=torch.float16)),
        TypeError,
        [r"dtype", r"Half", r"Float"],
    ),
    "mixed-dtypes-bf16-autoencoder": (
        dict(autoencoder=torch.randn(2, 3, 5, 7, dtype=torch.bfloat16)),
        TypeError,
        [r"dtype", r"BFloat16", r"Float"],
    ),
    "quantiles-st-equal": (
        dict(quantiles=(0.5, 0.5, 0.25, 2.5)),
        ValueError,
        [r"q_b_st", r"q_a_st=0\.5", r"q_b_st=0\.5"],
    ),
    "quantiles-ae-reversed": (
        dict(quantiles=(0.5, 3.0, 2.5, 0.25)),
        ValueError,
        [r"q_b_ae", r"q_a_ae=2\.5", r"q_b_ae=0\.25"],
    ),
    "quantiles-tensor-st-reversed": (
        dict(quantiles=torch.tensor([3.0, 0.5, 0.25, 2.5])),
        ValueError,
        [r"q_b_st", r"q_a_st=3", r"q_b_st=0\.5"],
    ),
    "quantiles-tensor-ae-equal": (
        dict(quantiles=torch.tensor([0.5, 3.0, 1.0, 1.0])),
        ValueError,
        [r"q_b_ae", r"q_a_ae=1", r"q_b_ae=1"],
    ),
    "quantiles-3-values": (dict(quantiles=(0.5, 3.0, 0.25)), ValueError, [r"quantiles", r"\(0\.5, 3\.0, 0\.25\)"]),
    "quantiles-5-values": (dict(quantiles=(0.5, 3.0, 0.25, 2.5, 1.0)), ValueError, [r"quantiles", r"2\.5, 1\.0\)"]),
    "quantiles-tensor-3-values": (
        dict(quantiles=torch.tensor([0.5, 3.0, 0.25])),
        ValueError,
        [r"quantiles", r"4 values", r"\[3\]"],
    ),
    "quantiles-integer-tensor": (dict(quantiles=torch.tensor([0, 3, 1, 2])), TypeError, [r"quantiles", r"Long"]),
    "quantiles-nan": (dict(quantiles=(NAN, 3.0, 0.25, 2.5)), ValueError, [r"quantiles", r"q_a_st=nan"]),
    "quantiles-inf": (dict(quantiles=(0.5, 3.0, 0.25, float("inf"))), ValueError, [r"quantiles", r"q_b_ae=inf"]),
    "quantiles-tensor-nan": (
        dict(quantiles=torch.tensor([0.5, 3.0, NAN, 2.5])),
        ValueError,
        [r"quantiles", r"q_a_ae=nan"],
    ),
    "alpha-negative": (dict(alpha=-0.1), ValueError, [r"alpha", r"-0\.1"]),
    "alpha-above-1": (dict(alpha=1.5), ValueError, [r"alpha", r"1\.5"]),
    "alpha-nan": (dict(alpha=NAN), ValueError, [r"alpha", r"nan"]),
    "pad-negative": (dict(pad=-1), ValueError, [r"pad", r"-1"]),
    "output-size-zero": (dict(output_size=0), ValueError, [r"output_size", r"0"]),
    "output-size-zero-height": (dict(output_size=(0, 17)), ValueError, [r"output_size", r"\(0, 17\)"]),
    "output-size-negative": (dict(output_size=(13, -2)), ValueError, [r"output_size", r"\(13, -2\)"]),
    "output-size-1-value": (dict(output_size=(13,)), ValueError, [r"output_size", r"\(13,\)"]),
    "output-size-3-values": (dict(output_size=(13, 17, 3)), ValueError, [r"output_size", r"\(13, 17, 3\)"]),
    "output-size-float": (dict(output_size=(13.0, 17.0)), (ValueError, TypeError), [r"output_size", r"13\.0"]),
    "unknown-distance": (dict(distance="l1"), ValueError, [r"distance", r"'l1'"]),
    "mean-without-std": (dict(teacher_std=None), ValueError, [r"teacher_mean", r"teacher_std"]),
    "std-without-mean": (dict(teacher_mean=None), ValueError, [r"teacher_mean", r"teacher_std"]),
    "mean-wrong-length": (dict(teacher_mean=torch.zeros(4)), ValueError, [r"teacher_mean", r"\(3\)", r"\[4\]"]),
    "std-wrong-length": (dict(teacher_std=torch.ones(2)), ValueError, [r"teacher_std", r"\(3\)", r"\[2\]"]),
    "mean-integer": (dict(teacher_mean=torch.zeros(3, dtype=torch.int64)), TypeError, [r"teacher_mean", r"Long"]),
    "teacher-list": (dict(teacher=[[1.0]]), TypeError, [r"teacher", r"Tensor", r"list"]),
    "student-numpy": (dict(student=np.zeros((2, 6, 5, 7), np.float32)), TypeError, [r"student", r"Tensor", r"ndarray"]),
    "autoencoder-none": (dict(autoencoder=None), TypeError, [r"autoencoder", r"Tensor", r"NoneType"]),
}


@pytest.mark.parametrize("change, error, message_parts", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_raises(change, error, message_parts):
    call = {**good_call(), **change}
    allowed = error if isinstance(error, tuple) else (error,)
    with pytest.raises(allowed) as raised:
        anomaly_map(**call)
    # Exact type, not a subclass that happens to match (e.g. a RuntimeError wrapper).
    assert type(raised.value) in allowed, type(raised.value)
    message = str(raised.value)
    for part in message_parts:
        assert re.search(part, message), f"{part!r} not in {message!r}"


# The checks of the C++ op itself, for callers that skip the Python wrapper (exported
# programs, torch.ops users): positional (teacher, student, autoencoder, mean, std,
# quantiles, alpha, pad, output_size, distance).
RAW_OP_BAD_INPUTS = {
    "output-size-zero": (dict(output_size=[0, 17]), [r"output_size", r"\[0, 17\]"]),
    "output-size-1-value": (dict(output_size=[13]), [r"output_size", r"\[13\]"]),
    "output-size-negative": (dict(output_size=[-1, 17]), [r"output_size", r"\[-1, 17\]"]),
    "unknown-distance": (dict(distance="cos"), [r"distance", r"'cos'"]),
    "alpha-nan": (dict(alpha=NAN), [r"alpha", r"nan"]),
    "pad-negative": (dict(pad=-4), [r"pad", r"-4"]),
    "quantiles-reversed": (dict(quantiles=torch.tensor([3.0, 0.5, 0.25, 2.5])), [r"q_b_st", r"q_a_st=3"]),
}


@pytest.mark.parametrize("change, message_parts", list(RAW_OP_BAD_INPUTS.values()), ids=list(RAW_OP_BAD_INPUTS))
def test_raw_op_bad_input_raises_value_error(change, message_parts):
    features = make_features(2, 3, 5, 7)
    arguments = dict(
        teacher=features["teacher"],
        student=features["student"],
        autoencoder=features["autoencoder"],
        teacher_mean=None,
        teacher_std=None,
        quantiles=None,
        alpha=0.5,
        pad=4,
        output_size=None,
        distance="l2",
    )
    arguments.update(change)
    with pytest.raises(ValueError) as raised:
        raw_op()(*arguments.values())
    for part in message_parts:
        assert re.search(part, str(raised.value)), f"{part!r} not in {str(raised.value)!r}"


# Without a GPU the only second device is "meta"; a clean error must name both devices.
DEVICE_MISMATCHES = {
    "student-on-meta": dict(student="meta"),
    "autoencoder-on-meta": dict(autoencoder="meta"),
    "teacher-mean-on-meta": dict(teacher_mean="meta"),
    "quantiles-on-meta": dict(quantiles="meta"),
}


@pytest.mark.parametrize("moves", list(DEVICE_MISMATCHES.values()), ids=list(DEVICE_MISMATCHES))
def test_tensors_on_different_devices_raise(moves):
    call = good_call()
    call["quantiles"] = torch.tensor(QUANTILES)
    for name, device in moves.items():
        call[name] = call[name].to(device)
    with pytest.raises(ValueError) as raised:
        anomaly_map(**call)
    message = str(raised.value)
    assert "meta" in message and "cpu" in message, message


# --- NaN and Inf -------------------------------------------------------------------------------


# Where to plant the bad value: (tensor, channel) with C = 3; student channel 1 is in the
# student-teacher half, channel 4 in the student-autoencoder half.
BAD_VALUE_SITES = {
    "teacher": ("teacher", 1),
    "student-st-half": ("student", 1),
    "student-ae-half": ("student", 4),
    "autoencoder": ("autoencoder", 2),
}


@pytest.mark.parametrize("output_size", [None, (30, 31)], ids=["out-none", "out-30x31"])
@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("site", list(BAD_VALUE_SITES.values()), ids=list(BAD_VALUE_SITES))
def test_non_finite_feature_propagates_to_its_image_only(site, value, distance, output_size):
    name, channel = site
    features = make_features(3, 3, 5, 7)
    features[name][0, channel, 2, 3] = value
    options = dict(quantiles=QUANTILES, alpha=0.5, output_size=output_size, distance=distance)
    result_map, result_score = anomaly_map(**features, **options)
    expected_map, expected_score = reference_anomaly_map(**features, **options)
    # The poisoned image: its score is not finite, as the reference's (NaN stays NaN).
    assert not torch.isfinite(result_score[0])
    if value != value:
        assert torch.isnan(result_score[0]) and torch.isnan(result_map[0]).any()
    assert torch.isnan(result_score[0]) == torch.isnan(expected_score[0])
    # The other images are untouched.
    assert_matches_reference((result_map[1:], result_score[1:]), (expected_map[1:], expected_score[1:]))


def test_all_nan_features_give_nan_everywhere():
    features = make_features(2, 3, 5, 7)
    features["teacher"].fill_(float("nan"))
    result_map, result_score = anomaly_map(**features, quantiles=QUANTILES, pad=0)
    assert torch.isnan(result_map).all() and torch.isnan(result_score).all()


# --- opcheck, torch.compile, torch.export ---------------------------------------------------


def opcheck_samples():
    """Positional argument tuples for the raw op, including every optional as None."""
    small = make_features(2, 3, 5, 7, teacher_stats=True)
    plain = make_features(1, 4, 3, 6, teacher_stats=False)
    half = make_features(2, 20, 4, 5, dtype=torch.float16)
    channels_last = {
        k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
        for k, v in make_features(2, 20, 4, 5).items()
    }
    quantiles = torch.tensor(QUANTILES)
    return {
        "all-optionals-none": (
            plain["teacher"],
            plain["student"],
            plain["autoencoder"],
            None,
            None,
            None,
            0.5,
            4,
            None,
            "l2",
        ),
        "all-optionals-given": (
            small["teacher"],
            small["student"],
            small["autoencoder"],
            small["teacher_mean"],
            small["teacher_std"],
            quantiles,
            0.3,
            0,
            [9, 11],
            "cosine",
        ),
        "float16": (
            half["teacher"],
            half["student"],
            half["autoencoder"],
            half["teacher_mean"],
            half["teacher_std"],
            quantiles,
            1.0,
            4,
            [13, 7],
            "l2",
        ),
        "channels-last": (
            channels_last["teacher"],
            channels_last["student"],
            channels_last["autoencoder"],
            None,
            None,
            quantiles,
            0.0,
            2,
            None,
            "cosine",
        ),
        "quantile-values": (
            small["teacher"],
            small["student"],
            small["autoencoder"],
            small["teacher_mean"],
            small["teacher_std"],
            None,
            0.3,
            4,
            [9, 11],
            "l2",
            list(QUANTILES),
        ),
    }


OPCHECK_SAMPLE_NAMES = ["all-optionals-none", "all-optionals-given", "float16", "channels-last", "quantile-values"]


@pytest.mark.parametrize("sample", OPCHECK_SAMPLE_NAMES)
def test_opcheck(sample):
    torch.library.opcheck(raw_op(), opcheck_samples()[sample])


def score_with_fixed_calibration(teacher, student, autoencoder, mean, std):
    return anomaly_map(
        teacher,
        student,
        autoencoder,
        teacher_mean=mean,
        teacher_std=std,
        quantiles=QUANTILES,
        alpha=0.4,
        output_size=(31, 29),
        distance="l2",
    )


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_torch_compile_fullgraph_equals_eager(backend):
    # inductor on CPU compiles C++ (~20 s the first time, cached afterwards).
    torch._dynamo.reset()
    compiled = torch.compile(score_with_fixed_calibration, fullgraph=True, backend=backend)
    for batch in (2, 3):  # a second batch size exercises the fake kernel's shapes again
        features = make_features(batch, 5, 6, 7)
        arguments = (
            features["teacher"],
            features["student"],
            features["autoencoder"],
            features["teacher_mean"],
            features["teacher_std"],
        )
        compiled_map, compiled_score = compiled(*arguments)
        eager_map, eager_score = score_with_fixed_calibration(*arguments)
        assert torch.equal(compiled_map, eager_map)
        assert torch.equal(compiled_score, eager_score)


class AnomalyScorer(torch.nn.Module):
    """A deployed scoring head: calibration as buffers, features in, (map, score) out."""

    def __init__(self, channels):
        super().__init__()
        self.register_buffer("teacher_mean", torch.randn(1, channels, 1, 1))
        self.register_buffer("teacher_std", torch.rand(1, channels, 1, 1) + 0.5)
        self.register_buffer("quantiles", torch.tensor(QUANTILES))

    def forward(self, teacher, student, autoencoder):
        return anomaly_map(
            teacher,
            student,
            autoencoder,
            teacher_mean=self.teacher_mean,
            teacher_std=self.teacher_std,
            quantiles=self.quantiles,
            output_size=(33, 35),
            distance="cosine",
        )


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic-batch"])
def test_torch_export_runs_and_equals_eager(dynamic_batch):
    scorer = AnomalyScorer(channels=5)
    features = make_features(2, 5, 6, 7, teacher_stats=False)
    example = (features["teacher"], features["student"], features["autoencoder"])
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = ({0: batch}, {0: batch}, {0: batch})
    exported = torch.export.export(scorer, example, dynamic_shapes=dynamic_shapes)
    assert any(node.target is raw_op() for node in exported.graph.nodes)
    runs = [example]
    if dynamic_batch:
        other = make_features(3, 5, 6, 7, teacher_stats=False)
        runs.append((other["teacher"], other["student"], other["autoencoder"]))
    for inputs in runs:
        exported_map, exported_score = exported.module()(*inputs)
        eager_map, eager_score = scorer(*inputs)
        assert torch.equal(exported_map, eager_map)
        assert torch.equal(exported_score, eager_score)


# --- CUDA ---------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize(
    "shape, output_size", [((2, 20, 9, 11), (37, 29)), ((2, 384, 56, 56), (256, 256))], ids=["small", "realistic"]
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype, distance, layout, shape, output_size):
    features = make_features(*shape, dtype=dtype, device="cuda")
    if layout == "channels_last":
        for name in ("teacher", "student", "autoencoder"):
            features[name] = features[name].contiguous(memory_format=torch.channels_last)
    options = dict(quantiles=QUANTILES, alpha=0.3, output_size=output_size, distance=distance)
    result = anomaly_map(**features, **options)
    assert result[0].device.type == "cuda" and result[1].device.type == "cuda"
    # Reference on the CPU copies of the very same (possibly half) values.
    expected = reference_anomaly_map(**{k: v.cpu() for k, v in features.items()}, **options)
    assert_matches_reference(result, expected, RELATIVE_TOLERANCE[dtype])


def cuda_copy_with_strides(x):
    """x on the GPU with the same strides, so a non-contiguous view stays one there."""
    storage_size = sum((size - 1) * stride for size, stride in zip(x.shape, x.stride())) + 1
    view = torch.empty(storage_size, dtype=x.dtype, device="cuda").as_strided(x.shape, x.stride())
    view.copy_(x)
    return view


@requires_cuda
@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("layouts", LAYOUT_COMBINATIONS, ids=["-".join(c) for c in LAYOUT_COMBINATIONS])
def test_cuda_memory_layouts_match_reference(layouts, distance):
    features = make_features(2, 40, 5, 7)
    options = dict(quantiles=QUANTILES, output_size=(13, 11), distance=distance)
    expected = reference_anomaly_map(**features, **options)
    for name, layout in zip(("teacher", "student", "autoencoder"), layouts):
        features[name] = in_layout(features[name], layout)
    features = {name: cuda_copy_with_strides(value) for name, value in features.items()}
    assert_matches_reference(anomaly_map(**features, **options), expected)


@requires_cuda
@pytest.mark.parametrize("quantiles", [None, "tuple", "tensor"])
def test_cuda_options_match_reference(quantiles):
    features = make_features(3, 7, 5, 9, device="cuda")
    for alpha, pad in ((0.0, 0), (1.0, 4), (0.5, 1)):
        options = dict(quantiles=quantiles_argument(quantiles, "cuda"), alpha=alpha, pad=pad, output_size=None)
        expected = reference_anomaly_map(
            **{k: v.cpu() for k, v in features.items()}, **{**options, "quantiles": quantiles_argument(quantiles)}
        )
        assert_matches_reference(anomaly_map(**features, **options), expected)


@requires_cuda
def test_cuda_empty_batch():
    features = make_features(0, 3, 5, 7, device="cuda")
    result_map, result_score = anomaly_map(**features, quantiles=QUANTILES)
    assert result_map.shape == (0, 1, 13, 15) and result_score.shape == (0,)
    assert result_map.device.type == "cuda" and result_map.dtype == torch.float32


@requires_cuda
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_cuda_nan_propagates_to_its_image_only(distance):
    features = make_features(3, 40, 5, 7, device="cuda")
    features["teacher"][1, 7, 2, 3] = float("nan")
    options = dict(quantiles=QUANTILES, output_size=(64, 65), distance=distance)
    result_map, result_score = anomaly_map(**features, **options)
    expected_map, expected_score = reference_anomaly_map(**{k: v.cpu() for k, v in features.items()}, **options)
    assert torch.isnan(result_score[1]) and torch.isnan(result_map[1]).any()
    keep = torch.tensor([0, 2])
    assert_matches_reference(
        (result_map.cpu()[keep], result_score.cpu()[keep]), (expected_map[keep], expected_score[keep])
    )


@requires_cuda
@pytest.mark.parametrize(
    "moves",
    [dict(student="cpu"), dict(teacher="cpu"), dict(quantiles="cpu"), dict(teacher_mean="cpu")],
    ids=["student-cpu", "teacher-cpu", "quantiles-cpu", "mean-cpu"],
)
def test_cuda_tensors_on_different_devices_raise(moves):
    call = {k: v.cuda() if torch.is_tensor(v) else v for k, v in good_call().items()}
    call["quantiles"] = torch.tensor(QUANTILES, device="cuda")
    for name, device in moves.items():
        call[name] = call[name].to(device)
    with pytest.raises(ValueError) as raised:
        anomaly_map(**call)
    assert "cuda" in str(raised.value) and "cpu" in str(raised.value), str(raised.value)


@requires_cuda
def test_cuda_opcheck():
    features = make_features(2, 20, 4, 5, dtype=torch.float16, device="cuda")
    torch.library.opcheck(
        raw_op(),
        (
            features["teacher"],
            features["student"],
            features["autoencoder"],
            features["teacher_mean"],
            features["teacher_std"],
            torch.tensor(QUANTILES, device="cuda"),
            0.5,
            4,
            [13, 7],
            "cosine",
        ),
    )


@requires_cuda
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("quantiles_form", ["tensor", "tuple"])
def test_cuda_graph_capture_and_replay(quantiles_form, dtype, layout):
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    static = make_features(2, 384, 56, 56, dtype=dtype, device="cuda")
    for name in ("teacher", "student", "autoencoder"):
        static[name] = static[name].contiguous(memory_format=memory_format)
    # A device tensor, or numbers: these reach the kernel by value, with no host-to-device
    # copy that the capture would reject.
    quantiles = quantiles_argument(quantiles_form, "cuda")
    options = dict(quantiles=quantiles, output_size=(256, 256))

    # Warm up on a side stream, as torch.cuda.graphs recommends before capturing.
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        for _ in range(3):
            anomaly_map(**static, **options)
    torch.cuda.current_stream().wait_stream(side_stream)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_map, graph_score = anomaly_map(**static, **options)

    # New inputs copied into the captured buffers: the replay must score them, not the old ones.
    for step in range(2):
        fresh = make_features(2, 384, 56, 56, dtype=dtype, device="cuda")
        for name, value in fresh.items():
            static[name].copy_(value)
        graph.replay()
        torch.cuda.synchronize()
        expected = reference_anomaly_map(
            **{k: v.cpu() for k, v in static.items()}, quantiles=QUANTILES, output_size=(256, 256)
        )
        assert_matches_reference((graph_map, graph_score), expected, RELATIVE_TOLERANCE[dtype])


# --- the model's path, on both devices, against a float64 reference ----------------------
# EfficientAD folds the teacher statistics into its last conv and calls the op without them,
# on channels_last features. Each case runs on the CPU here and on CUDA where there is one;
# the reference is plain PyTorch in float64 on the CPU (the op's inputs, upcast exactly).

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]

# Per device: (C, h, w, output_size) -- rectangular; C = 384 (the teacher's) only on CUDA,
# where it is cheap, a smaller C with a remainder of the CPU's 16 lanes on the CPU.
MODEL_PATH_SHAPES = {"cpu": (40, 9, 13, (37, 53)), "cuda": (384, 17, 29, (70, 122))}


def float64_reference(features, **options):
    """reference_anomaly_map in float64 on the CPU, of exactly the values the op was given."""
    exact = {
        name: value.detach().cpu().double() if torch.is_tensor(value) else value for name, value in features.items()
    }
    if torch.is_tensor(options.get("quantiles")):
        options = dict(options, quantiles=options["quantiles"].cpu().double())
    return reference_anomaly_map(**exact, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("pad", [0, 4])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(
    "distance, quantiles", [("l2", None), ("l2", "tensor"), ("cosine", None)], ids=["l2", "l2-quantiles", "cosine"]
)
def test_model_path_matches_float64_reference(distance, quantiles, alpha, pad, dtype, n, device):
    c, h, w, output_size = MODEL_PATH_SHAPES[device]
    features = make_features(n, c, h, w, dtype=dtype, device=device, teacher_stats=False)
    for name in ("teacher", "student", "autoencoder"):
        features[name] = features[name].contiguous(memory_format=torch.channels_last)
    options = dict(
        quantiles=quantiles_argument(quantiles, device),
        alpha=alpha,
        pad=pad,
        output_size=output_size,
        distance=distance,
    )
    result = anomaly_map(**features, **options)
    assert result[0].device.type == device and result[1].device.type == device
    # The op computes in float32 from the same (half) values: 1e-5 of each image's range.
    assert_map_close(result, float64_reference(features, **options), rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_beyond_cuda_grid_y_limit(device):
    # More images than CUDA's gridDim.y (65535) allows: both backends take any batch.
    n = 65_537
    features = make_features(n, 2, 1, 2, device=device, teacher_stats=False)
    options = dict(quantiles=quantiles_argument("tensor", device), pad=1, output_size=(3, 5))
    result = anomaly_map(**features, **options)
    assert_map_close(result, float64_reference(features, **options), rtol=1e-5)


def test_map_tolerance_has_a_floor_for_flat_maps():
    flat = torch.full((2, 1, 4, 4), 3.0, dtype=torch.float64)
    flat[1] += 1e-9  # near-constant: a range of ~1e-9 must not become the bound
    tolerance = map_tolerance(flat, rtol=1e-5, atol=1e-6)
    assert bool((tolerance >= 8 * np.finfo(np.float32).eps * 3.0).all())
    assert_map_close((flat.float(), flat.amax((1, 2, 3)).float()), (flat, flat.amax((1, 2, 3))), rtol=1e-5)
    with pytest.raises(AssertionError, match="image 1"):
        off = flat.clone()
        off[1, 0, 2, 2] += 1e-3
        assert_map_close((off.float(), off.amax((1, 2, 3)).float()), (flat, flat.amax((1, 2, 3))), rtol=1e-5)


# --- quantiles as numbers: passed by value (quantile_values), no tensor per call -----------


@pytest.mark.parametrize("device", DEVICES)
def test_quantile_values_equal_quantile_tensor(device):
    features = make_features(2, 20, 5, 7, device=device)
    args = (
        features["teacher"],
        features["student"],
        features["autoencoder"],
        features["teacher_mean"],
        features["teacher_std"],
    )
    from_tensor = raw_op()(*args, torch.tensor(QUANTILES, device=device), 0.3, 4, [11, 13], "l2")
    from_values = raw_op()(*args, None, 0.3, 4, [11, 13], "l2", list(QUANTILES))
    assert torch.equal(from_tensor[0], from_values[0]) and torch.equal(from_tensor[1], from_values[1])


# Quantiles as numbers whose float32 rounding broke the op (issue 25): they were checked in
# double and used in float, where q_b - q_a of (1, 1 + 1e-9) is 0 (an all-NaN map and score)
# and that of (1000, 1000.01) is 1e-3 off. The op now computes the weights in double.
CLOSE_QUANTILES = {
    "difference-0-in-float": (1.0, 1.000000001, 0.0, 1.0),
    "difference-1e-3-off-in-float": (1000.0, 1000.01, 0.0, 1.0),
    "both-maps-close": (0.5, 0.5 + 1e-8, -2.0, -2.0 + 3e-8),
}


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("quantiles", list(CLOSE_QUANTILES.values()), ids=list(CLOSE_QUANTILES))
def test_close_number_quantiles_match_reference(quantiles, distance):
    features = make_features(2, 20, 5, 7)
    result = compare_with_reference(features, quantiles=quantiles, alpha=0.3, output_size=(11, 13), distance=distance)
    assert bool(torch.isfinite(result[0]).all()) and bool(torch.isfinite(result[1]).all())


@pytest.mark.parametrize(
    "quantiles",
    [
        (0.0, 1e-300, 0.0, 1.0),  # 0.1 / (q_b - q_a) overflows float32
        (0.0, 1.0, 1e39, 2e39),  # q_a is inf in float32
        torch.tensor([0.0, 1e-45, 0.0, 1.0]),  # the tensor form: a subnormal difference
    ],
    ids=["scale-overflows", "q_a-overflows", "tensor-scale-overflows"],
)
def test_quantiles_beyond_float32_are_refused(quantiles):
    features = make_features(1, 3, 4, 5)
    with pytest.raises(ValueError, match="do not fit float32"):
        anomaly_map(**features, quantiles=quantiles)


def test_wrapper_passes_number_quantiles_by_value(monkeypatch):
    # A tuple must not become a tensor (on a GPU: a host-to-device copy on every call).
    features = make_features(1, 3, 4, 5)
    made = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real_tensor(*a, **k))
    result = anomaly_map(**features, quantiles=QUANTILES)
    monkeypatch.undo()
    assert made == []
    expected = reference_anomaly_map(**features, quantiles=QUANTILES)
    assert_matches_reference(result, expected)


@pytest.mark.parametrize(
    "values, message",
    [
        ([0.5, 3.0, 0.25], "4 values"),
        ([3.0, 0.5, 0.25, 2.5], "q_b_st > q_a_st"),
        ([0.5, 3.0, 0.25, float("nan")], "q_b_ae > q_a_ae"),
    ],
    ids=["three", "st-reversed", "ae-nan"],
)
def test_raw_op_bad_quantile_values_raise(values, message):
    features = make_features(1, 3, 4, 5, teacher_stats=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        raw_op()(
            features["teacher"],
            features["student"],
            features["autoencoder"],
            None,
            None,
            None,
            0.5,
            4,
            None,
            "l2",
            values,
        )


def test_raw_op_rejects_both_quantile_forms():
    features = make_features(1, 3, 4, 5, teacher_stats=False)
    with pytest.raises(ValueError, match="not both"):
        raw_op()(
            features["teacher"],
            features["student"],
            features["autoencoder"],
            None,
            None,
            torch.tensor(QUANTILES),
            0.5,
            4,
            None,
            "l2",
            list(QUANTILES),
        )
