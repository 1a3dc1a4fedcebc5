"""The networks (docs/architecture.md, "The networks"), EfficientAD.predict, save/load and teacher-file loading.

Full-size networks at 256 px cost about a second per forward on a small CPU, so the
models and their predictions are built once per module (fixtures ``small`` and ``base``);
tests that change a model work on a deep copy.
"""

from __future__ import annotations

import copy

import pytest
import torch

import efficientad_fast as ead
from efficientad_fast.model import FORMAT_VERSION
from efficientad_fast.networks import AutoEncoder, feature_size, make_pdn

# --------------------------------------------------------------------------- helpers


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_maps_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """|actual - expected| <= rel * (range of expected) everywhere."""
    assert actual.shape == expected.shape
    span = float(expected.max() - expected.min())
    assert span > 0, "degenerate map: the comparison would prove nothing"
    err = float((actual.float() - expected.float()).abs().max())
    assert err <= rel * span, f"max error {err:.3g} > {rel} x map range {span:.3g}"


def assert_scores_close(actual: torch.Tensor, expected: torch.Tensor, span: float, rel: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    err = float((actual.float() - expected.float()).abs().max())
    assert err <= rel * span, f"score error {err:.3g} > {rel} x map range {span:.3g}"


def assert_predictions_close(actual: ead.Prediction, expected: ead.Prediction, rel: float = 1e-5) -> None:
    assert_maps_close(actual.anomaly_map, expected.anomaly_map, rel)
    span = float(expected.anomaly_map.max() - expected.anomaly_map.min())
    assert_scores_close(actual.score, expected.score, span, rel)


def nontrivial_stats(model: ead.EfficientAD, images: torch.Tensor, seed: int = 3) -> None:
    """Teacher statistics from the teacher's own output (then perturbed per channel) and
    quantiles that move the maps: the scoring's every step does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        t = model.teacher(images.float())
    std = t.std(dim=(0, 2, 3)) * (0.8 + 0.4 * torch.rand(384, generator=g)) + 1e-4
    mean = t.mean(dim=(0, 2, 3)) + 0.5 * std * torch.randn(384, generator=g)
    model.set_teacher_stats(mean, std)
    model.set_quantiles(0.7, 2.3, 0.2, 1.1)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images_u8() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randint(0, 256, (2, 3, 256, 256), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def images(images_u8) -> torch.Tensor:
    return images_u8.float() / 255


@pytest.fixture(scope="module")
def small(images) -> ead.EfficientAD:
    """A PDN-S EfficientAD with seeded weights, non-trivial teacher stats and quantiles.
    Left in training mode (nn.Module's default) on purpose: predict must not need eval()."""
    torch.manual_seed(1)
    model = ead.EfficientAD("small", teacher="random")
    nontrivial_stats(model, images[:1])
    assert model.training
    return model


@pytest.fixture(scope="module")
def base(small, images) -> dict:
    """Fused and reference predictions of ``small`` on ``images`` (batch 2), made in training mode."""
    fused = small.predict(images)
    training_after_fused = small.training
    reference = small.predict(images, backend="reference")
    return {"fused": fused, "reference": reference, "training_after": training_after_fused and small.training}


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize("size, teacher, student", [("small", 2_694_144, 4_267_392), ("medium", 8_026_624, 11_615_488)])
def test_parameter_counts(size, teacher, student):
    model = ead.EfficientAD(size, teacher="random")
    assert n_params(model.teacher) == teacher
    assert n_params(model.student) == student
    assert n_params(model.autoencoder) == 1_096_320
    # The teacher is frozen; student and autoencoder train.
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student.parameters())


@pytest.mark.parametrize("padding, side", [(False, 56), (True, 64)])
def test_feature_shapes_256(padding, side):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 256, 256)
    assert feature_size((256, 256), padding) == (side, side)
    with torch.no_grad():
        assert make_pdn("small", 384, padding)(x).shape == (1, 384, side, side)
        assert make_pdn("small", 768, padding)(x).shape == (1, 768, side, side)
        assert AutoEncoder(384, padding)(x).shape == (1, 384, side, side)


def test_feature_shapes_medium_256():
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert make_pdn("medium", 384)(x).shape == (1, 384, 56, 56)


@pytest.mark.parametrize("hw, expected", [((256, 384), (56, 88)), ((512, 512), (120, 120))])
def test_feature_shapes_match_feature_size(hw, expected):
    assert feature_size(hw, padding=False) == expected
    x = torch.rand(1, 3, *hw)
    with torch.no_grad():
        assert make_pdn("small", 384)(x).shape == (1, 384, *expected)
        if hw == (256, 384):  # the student's body is the teacher's; one size is enough
            assert make_pdn("small", 768)(x).shape == (1, 768, *expected)
            assert AutoEncoder(384)(x).shape == (1, 384, *expected)


def test_feature_size_padding_rectangular():
    x = torch.rand(1, 3, 256, 384)
    with torch.no_grad():
        assert make_pdn("small", 384, padding=True)(x).shape[-2:] == feature_size((256, 384), True) == (64, 96)


@pytest.mark.parametrize("hw", [(255, 256), (256, 255), (128, 128)])
def test_predict_below_minimum_size(small, hw):
    with pytest.raises(ValueError, match="256"):
        small.predict(torch.rand(1, 3, *hw))


# --------------------------------------------------------------------------- predict


def test_fused_equals_reference(base):
    assert_predictions_close(base["fused"], base["reference"])


def test_prediction_shapes_and_dtypes(base):
    pred = base["fused"]
    assert isinstance(pred, ead.Prediction)
    assert pred.score.shape == (2,) and pred.score.dtype == torch.float32
    assert pred.anomaly_map.shape == (2, 1, 256, 256) and pred.anomaly_map.dtype == torch.float32
    assert torch.isfinite(pred.anomaly_map).all()
    torch.testing.assert_close(pred.score, pred.anomaly_map.amax(dim=(-2, -1)).reshape(-1), rtol=0, atol=0)


def test_uint8_equals_float_and_training_flag(small, base, images_u8):
    assert base["training_after"], "predict switched a model in training mode to eval"
    # Predict in eval mode here, while ``base`` predicted in training mode: equal results
    # also show predict disables the autoencoder's dropout itself.
    was = small.training
    small.eval()
    try:
        pred = small.predict(images_u8[:1])
        assert not small.training, "predict switched a model in eval mode to training"
    finally:
        small.train(was)
    assert pred.anomaly_map.dtype == torch.float32
    expected = ead.Prediction(base["fused"].score[:1], base["fused"].anomaly_map[:1])
    assert_predictions_close(pred, expected, rel=1e-6)


def test_output_size(small, images):
    x = images[:1]
    fused = small.predict(x, output_size=(300, 200))
    assert fused.anomaly_map.shape == (1, 1, 300, 200)
    assert fused.score.shape == (1,)
    assert_predictions_close(fused, small.predict(x, output_size=(300, 200), backend="reference"))


def test_predict_rectangular(small):
    x = torch.rand(1, 3, 256, 320)
    fused = small(x)  # forward() is predict() with its defaults
    assert fused.anomaly_map.shape == (1, 1, 256, 320)
    assert fused.score.shape == (1,)
    assert_predictions_close(fused, small.predict(x, output_size=(256, 320), backend="reference"))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: torch.rand(1, 4, 256, 256), ValueError, r"\(N, 3, H, W\)"),
        (lambda: torch.rand(1, 1, 256, 256), ValueError, r"\(N, 3, H, W\)"),
        (lambda: torch.rand(3, 256, 256), ValueError, r"\(N, 3, H, W\)"),
        (lambda: torch.randint(0, 255, (1, 3, 256, 256), dtype=torch.int32), TypeError, "int32"),
        (lambda: torch.rand(1, 3, 256, 256) * 255, ValueError, r"\[0, 1\]"),
        (lambda: torch.rand(1, 3, 256, 256) - 0.5, ValueError, r"\[0, 1\]"),
        (lambda: torch.rand(1, 3, 256, 256).numpy(), TypeError, "torch.Tensor"),
        (lambda: [[0.0] * 256] * 256, TypeError, "torch.Tensor"),
    ],
    ids=["4-channels", "1-channel", "3-D", "int32", "float-0-255", "float-negative", "numpy", "list"],
)
def test_predict_bad_inputs(small, make, exc, match):
    with pytest.raises(exc, match=match):
        small.predict(make())


def test_predict_unknown_backend(small):
    with pytest.raises(ValueError, match="backend"):
        small.predict(torch.rand(1, 3, 256, 256), backend="triton")


def test_bad_input_leaves_training_flag(small):
    assert small.training
    with pytest.raises(ValueError):
        small.predict(torch.rand(1, 3, 256, 256) * 2)
    assert small.training


# --------------------------------------------------------------------------- bf16


def test_bf16(small, base, images):
    model = copy.deepcopy(small).to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.teacher.conv1.weight.dtype == torch.bfloat16
    for name in ("quantiles", "teacher_mean", "teacher_std"):
        assert getattr(model, name).dtype == torch.float32, name
        torch.testing.assert_close(getattr(model, name), getattr(small, name), rtol=0, atol=0)
    pred = model.predict(images[:1])
    assert pred.anomaly_map.dtype == torch.float32 and pred.score.dtype == torch.float32
    expected = base["fused"].anomaly_map[:1]
    assert_maps_close(pred.anomaly_map, expected, rel=0.02)
    span = float(expected.max() - expected.min())
    assert_scores_close(pred.score, base["fused"].score[:1], span, rel=0.02)
    # The original stays float32.
    assert small.dtype == torch.float32


# --------------------------------------------------------------------------- folding cache


def test_folded_teacher_cache_invalidation(small, base, images):
    """``small`` folded its teacher stats into the last conv when ``base`` predicted; changing
    the stats or the weights afterwards must not reuse that cache. Works on ``small`` itself
    (a copy would start with no valid cache) and restores it afterwards."""
    saved_state = copy.deepcopy(small.state_dict())
    x = images[:1]
    before = base["fused"].anomaly_map[:1]
    try:
        small.set_teacher_stats(small.teacher_mean + 0.5, small.teacher_std * 1.3)
        after_stats = small.predict(x)
        assert not torch.allclose(after_stats.anomaly_map, before)
        assert_predictions_close(after_stats, small.predict(x, backend="reference"))

        with torch.no_grad():
            small.teacher.last_conv.weight.mul_(1.5)
        # Only the folded conv differs from the ``after_stats`` prediction: a stale cache would
        # give exactly the same map. (An int output_size, the image's, on the way.)
        after_weights = small.predict(x, output_size=256)
        assert after_weights.anomaly_map.shape == after_stats.anomaly_map.shape == (1, 1, 256, 256)
        assert not torch.allclose(after_weights.anomaly_map, after_stats.anomaly_map)
    finally:
        small.load_state_dict(saved_state)


# --------------------------------------------------------------------------- save / load


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        if torch.is_tensor(value):
            assert value.dtype == sb[key].dtype, key
            assert torch.equal(value, sb[key]), key
        else:
            assert value == sb[key], key


def test_save_load_round_trip(small, base, images, tmp_path):
    path = tmp_path / "model.pt"
    small.save(path)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left
    loaded = ead.load(path)
    assert isinstance(loaded, ead.EfficientAD)
    assert loaded.config() == small.config()
    assert loaded.quantiles_set is True
    assert_same_state(loaded, small)
    pred = loaded.predict(images[:1])
    expected = ead.Prediction(base["fused"].score[:1], base["fused"].anomaly_map[:1])
    assert_predictions_close(pred, expected, rel=1e-6)


def test_save_load_config_variants(tmp_path):
    torch.manual_seed(5)
    medium = ead.EfficientAD("medium", alpha=0.3, pad_maps=False, distance="cosine", teacher="random")
    medium.set_teacher_stats(torch.randn(384), torch.rand(384) + 0.5)
    medium.set_quantiles(0.1, 0.4, 0.2, 0.9)
    medium.save(tmp_path / "m.pt")
    loaded = ead.load(tmp_path / "m.pt")
    assert loaded.config() == {
        "model_size": "medium",
        "padding": False,
        "alpha": 0.3,
        "pad_maps": False,
        "distance": "cosine",
        "tile": None,
    }
    assert loaded.quantiles_set is True
    assert_same_state(loaded, medium)

    padded = ead.EfficientAD("small", padding=True, teacher="random")  # quantiles never set
    padded.save(tmp_path / "p.pt")
    loaded = ead.load(str(tmp_path / "p.pt"))
    assert loaded.config() == padded.config() and loaded.padding is True
    assert loaded.quantiles_set is False
    assert tuple(loaded.teacher.conv1.padding) == (3, 3)
    assert_same_state(loaded, padded)


@pytest.fixture(scope="module")
def saved(small, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model.pt"
    small.save(path)
    return path


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        ead.load(tmp_path / "nope.pt")


def test_load_truncated(saved, tmp_path):
    data = saved.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ead.load(path)


def test_load_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.randn(4), "step": 3}, path)
    with pytest.raises(ValueError, match="not an efficientad_fast"):
        ead.load(path)
    torch.save([torch.randn(2)], path)
    with pytest.raises(ValueError, match="not an efficientad_fast"):
        ead.load(path)


def test_load_lightning_checkpoint_hints_from_anomalib(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"model.teacher.conv1.weight": torch.randn(1)}}, path)
    with pytest.raises(ValueError, match="from_anomalib"):
        ead.load(path)


def test_load_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n" * 20)
    with pytest.raises(ValueError, match="not an efficientad_fast"):
        ead.load(path)


def test_load_wrong_shape(saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    payload["state_dict"]["student.conv4.bias"] = torch.zeros(10)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"student\.conv4\.bias") as info:
        ead.load(path)
    assert "(10,)" in str(info.value) and "(768,)" in str(info.value)


def test_load_missing_key(saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    del payload["state_dict"]["autoencoder.decoder.deconv8.weight"]
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="deconv8"):
        ead.load(path)


@pytest.mark.parametrize("drop", ["config", "state_dict"])
def test_load_payload_missing_part(saved, tmp_path, drop):
    """A readable file with our format tag but a part missing is a corrupt file: ValueError."""
    payload = torch.load(saved, weights_only=True)
    del payload[drop]
    path = tmp_path / "corrupt.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError):
        ead.load(path)


def test_load_newer_format_version(saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="newer"):
        ead.load(path)


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "q",
    [
        (1.0, 1.0, 0.0, 1.0),
        (2.0, 1.0, 0.0, 1.0),
        (0.0, 1.0, 1.0, 0.5),
        (float("nan"), 1.0, 0.0, 1.0),
        (0.0, float("inf"), 0.0, 1.0),
        (0.0, 1.0, 0.0, float("nan")),
    ],
)
def test_set_quantiles_rejects(q):
    model = ead.EfficientAD(teacher="random")
    with pytest.raises(ValueError, match="q_b"):
        model.set_quantiles(*q)
    assert model.quantiles_set is False
    assert torch.equal(model.quantiles, torch.zeros(4))


def test_set_quantiles_accepts_and_sets():
    model = ead.EfficientAD(teacher="random")
    model.set_quantiles(0.1, 0.2, -0.3, 0.4)
    assert model.quantiles_set is True
    torch.testing.assert_close(model.quantiles, torch.tensor([0.1, 0.2, -0.3, 0.4]))


@pytest.mark.parametrize(
    "mean, std, match",
    [
        (torch.zeros(383), torch.ones(384), "384"),
        (torch.zeros(384), torch.ones(385), "384"),
        (torch.zeros(384), torch.zeros(384), "std"),
        (torch.zeros(384), -torch.ones(384), "std"),
        (torch.zeros(384), torch.cat([torch.ones(383), torch.zeros(1)]), "std"),
        (torch.full((384,), float("nan")), torch.ones(384), "finite"),
    ],
    ids=["mean-383", "std-385", "std-zero", "std-negative", "one-std-zero", "mean-nan"],
)
def test_set_teacher_stats_rejects(mean, std, match):
    model = ead.EfficientAD(teacher="random")
    with pytest.raises(ValueError, match=match):
        model.set_teacher_stats(mean, std)
    assert torch.equal(model.teacher_mean, torch.zeros(384))
    assert torch.equal(model.teacher_std, torch.ones(384))


def test_set_teacher_stats_accepts_anomalib_shape():
    model = ead.EfficientAD(teacher="random")
    mean, std = torch.randn(1, 384, 1, 1), torch.rand(1, 384, 1, 1) + 0.1
    model.set_teacher_stats(mean, std)
    assert torch.equal(model.teacher_mean, mean.reshape(-1))
    assert torch.equal(model.teacher_std, std.reshape(-1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model_size": "large"}, "model_size"),
        ({"alpha": 2}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"distance": "l1"}, "distance"),
    ],
)
def test_constructor_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ead.EfficientAD(**kwargs)


# --------------------------------------------------------------------------- load_teacher


def sequential_keys(state: dict, indices) -> dict:
    out = {}
    for conv, index in enumerate(indices, start=1):
        out[f"{index}.weight"] = state[f"conv{conv}.weight"]
        out[f"{index}.bias"] = state[f"conv{conv}.bias"]
    return out


@pytest.fixture(scope="module")
def teachers():
    torch.manual_seed(7)
    return {"small": make_pdn("small", 384), "medium": make_pdn("medium", 384)}


def teacher_output(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher(x)


@pytest.mark.parametrize(
    "size, layout",
    [
        ("small", "conv"),
        ("small", "prefixed"),
        ("small", "sequential"),
        ("small", "lightning"),
        ("medium", "conv"),
        ("medium", "sequential"),
    ],
)
def test_load_teacher(teachers, tmp_path, size, layout):
    original = teachers[size]
    state = {k: v.clone() for k, v in original.state_dict().items()}
    if layout == "prefixed":
        state = {"teacher." + k: v for k, v in state.items()}
    elif layout == "sequential":
        indices = (0, 3, 6, 8) if size == "small" else (0, 3, 6, 8, 10, 12)
        state = sequential_keys(state, indices)
    elif layout == "lightning":
        state = {"state_dict": {"teacher." + k: v for k, v in state.items()}}
    path = tmp_path / f"teacher_{size}.pth"
    torch.save(state, path)
    loaded = ead.load_teacher(path)
    assert type(loaded) is type(original)
    # A PDN takes any image of at least its receptive field: 64 px keeps this cheap.
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(teacher_output(loaded, x), teacher_output(original, x))
    # The same from the dict itself (no file).
    assert torch.equal(ead.load_teacher(state).conv1.weight, original.conv1.weight)


def test_load_teacher_explicit_size_and_padding(teachers):
    state = teachers["small"].state_dict()
    loaded = ead.load_teacher(state, model_size="small", padding=True)
    assert tuple(loaded.conv1.padding) == (3, 3)
    with pytest.raises(ValueError):
        ead.load_teacher(teachers["medium"].state_dict(), model_size="small")


def test_load_teacher_wrong_shapes(teachers, tmp_path):
    state = dict(teachers["small"].state_dict())
    state["conv4.weight"] = torch.zeros(128, 256, 4, 4)
    with pytest.raises(ValueError, match=r"conv4\.weight") as info:
        ead.load_teacher(state)
    assert "(128, 256, 4, 4)" in str(info.value) and "(384, 256, 4, 4)" in str(info.value)
    seq = sequential_keys(teachers["small"].state_dict(), (0, 3, 6, 8))
    seq["3.weight"] = torch.zeros(256, 128, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(seq, path)
    with pytest.raises(ValueError, match=r"conv2\.weight"):
        ead.load_teacher(path)


def test_load_teacher_incomplete_sequential(teachers):
    seq = sequential_keys(teachers["small"].state_dict(), (0, 3, 6, 8))
    del seq["8.bias"]
    with pytest.raises(ValueError, match="8.bias"):
        ead.load_teacher(seq)


def test_load_teacher_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        ead.load_teacher(tmp_path / "missing.pth")
    with pytest.raises(TypeError):
        ead.load_teacher([1, 2, 3])


@pytest.mark.parametrize("text", ["hello", "these are not weights\n" * 20], ids=["short", "long"])
def test_load_teacher_text_file(tmp_path, text):
    path = tmp_path / "teacher.txt"
    path.write_text(text)
    with pytest.raises(ValueError):
        ead.load_teacher(path)


# --------------------------------------------------------------------------- decisions


def test_shift_threshold_is_documented_and_monotone():
    from efficientad_fast.model import shift_threshold

    assert shift_threshold(0.2, 0.5) == 0.2
    assert shift_threshold(0.2, 0.0) == pytest.approx(0.4) and shift_threshold(0.2, 1.0) == pytest.approx(0.1)
    steps = [i / 10 for i in range(11)]
    for t in (0.2, -0.3, 0.0):
        shifted = [shift_threshold(t, s) for s in steps]
        assert all(a >= b for a, b in zip(shifted, shifted[1:])), (t, shifted)
    assert shift_threshold(-0.3, 0.0) > -0.3 > shift_threshold(-0.3, 1.0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_sensitivity_outside_unit_interval_is_refused(small, images, bad):
    with pytest.raises((ValueError, TypeError), match="sensitivity"):
        small.predict(images[:1], sensitivity=bad)


def test_label_and_mask_follow_score_map_and_sensitivity(small, base, images):
    model = copy.deepcopy(small)
    score, amap = base["fused"].score, base["fused"].anomaly_map
    assert base["fused"].label is None  # no image threshold set yet
    model.set_thresholds(image=float(score.mean()), pixel=float(amap.median()), source="test")
    pred = model.predict(images)
    image, pixel = model.thresholds(0.5)
    assert torch.equal(pred.label, pred.score > image) and torch.equal(pred.mask, pred.anomaly_map > pixel)
    assert pred.label.dtype == torch.bool and pred.mask.shape == pred.anomaly_map.shape
    previous = None
    for sensitivity in (0.0, 0.25, 0.5, 0.75, 1.0):
        decided = model.decide(score, amap, sensitivity)
        if previous is not None:  # more sensitive: every flagged image and pixel stays flagged
            assert bool((decided.label | ~previous.label).all()) and bool((decided.mask | ~previous.mask).all())
        previous = decided
    assert int(model.decide(score, amap, 1.0).mask.sum()) > int(model.decide(score, amap, 0.0).mask.sum())
    with pytest.raises(ValueError, match="finite"):
        model.set_thresholds(image=float("inf"))


def test_thresholds_survive_save_load_and_old_files_still_load(small, tmp_path):
    model = copy.deepcopy(small)
    model.set_thresholds(image=0.3125, pixel=0.12, source="by hand")
    model.save(tmp_path / "m.pt")
    loaded = ead.load(tmp_path / "m.pt")
    assert (loaded.image_threshold, loaded.pixel_threshold, loaded.threshold_source) == (0.3125, 0.12, "by hand")
    # A file written before thresholds existed: its extra state has none of the keys, and
    # its checksum covers the weights only (the digest of everything came later).
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["checksum"]["all_sha256"]
    payload["format_version"] = 1  # the version such files carry
    extra = payload["state_dict"]["_extra_state"]
    for key in ("image_threshold", "pixel_threshold", "threshold_source"):
        del extra[key]
    torch.save(payload, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="covers its weights only"):
        old = ead.load(tmp_path / "old.pt")
    assert old.image_threshold is None and old.pixel_threshold == 0.1  # the q_b level, as before
    assert old.thresholds(0.5) == (None, 0.1)
    extra["image_threshold"] = float("nan")
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="image_threshold must be finite"), pytest.warns(UserWarning):
        ead.load(tmp_path / "bad.pt")


def test_calibrate_stores_the_995_quantile_of_held_out_image_scores(small):
    import numpy as np

    from efficientad_fast.train import calibrate

    model = copy.deepcopy(small)
    held_out = torch.randint(0, 256, (2, 3, 256, 256), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    calibrate(model, held_out)
    scores = model.predict(held_out).score.double().numpy()
    # calibrate normalizes after the resize, predict before it: equal up to float32 rounding.
    tolerance = 1e-5 * np.abs(scores).max()
    assert 0.005 * np.ptp(scores) > 2 * tolerance  # the 0.995 quantile is told from the max
    assert model.image_threshold == pytest.approx(np.quantile(scores, 0.995), abs=tolerance)
    assert model.pixel_threshold == 0.1 and "0.995 quantile of 2" in model.threshold_source


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("onednn_bf16", [True, False])
def test_conv_relu_matches_the_plain_ops(dtype, onednn_bf16, monkeypatch):
    """The fused oneDNN conv+ReLU of inference; on a CPU whose oneDNN has no bfloat16 convolution
    (AVX2 only: AMD Zen 2) the fused call raised, so bf16 there takes the plain ops."""
    from efficientad_fast import networks

    if onednn_bf16 and not networks.cpu_has_bf16_kernels():
        pytest.skip("oneDNN has no bfloat16 convolution on this CPU")
    monkeypatch.setattr(networks, "cpu_has_bf16_kernels", lambda: onednn_bf16)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(dtype)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(networks.conv_relu(conv, x), torch.relu(conv(x)))
