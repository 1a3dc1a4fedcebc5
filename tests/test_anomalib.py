"""from_anomalib: an EfficientAD built from anomalib's EfficientAdModel (module, state dict,
Lightning checkpoint) scores exactly as anomalib's eval-mode forward does.

anomalib's forward is the reference: ``EfficientAdModel.eval()(x)`` returns
``InferenceBatch(pred_score (N, 1), anomaly_map (N, 1, H, W))``. Networks are full size, so
each comparison costs a forward of both models (about a second each for PDN-S at 256 px on
a small CPU): the models and anomalib's outputs are built once per module.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("anomalib", reason="anomalib not installed: pip install -e .[anomalib]")

from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize  # noqa: E402

import efficientad_fast as ead  # noqa: E402

QUANTILES = {"qa_st": 0.7, "qb_st": 2.3, "qa_ae": 0.2, "qb_ae": 1.1}


# --------------------------------------------------------------------------- helpers


def set_anomalib_stats(model: EfficientAdModel, images: torch.Tensor, seed: int = 3) -> None:
    """Teacher mean/std from the teacher's own output (perturbed) and non-trivial quantiles,
    written into anomalib's ParameterDicts the way its Lightning module does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        t = model.teacher(images)
        std = t.std(dim=(0, 2, 3)) * (0.8 + 0.4 * torch.rand(384, generator=g)) + 1e-4
        mean = t.mean(dim=(0, 2, 3)) + 0.5 * std * torch.randn(384, generator=g)
        model.mean_std["mean"].copy_(mean.view(1, 384, 1, 1))
        model.mean_std["std"].copy_(std.view(1, 384, 1, 1))
        for key, value in QUANTILES.items():
            model.quantiles[key].fill_(value)


def unset_anomalib_stats(model: EfficientAdModel) -> None:
    with torch.no_grad():
        for p in list(model.mean_std.values()) + list(model.quantiles.values()):
            p.zero_()


def anomalib_forward(model: EfficientAdModel, images: torch.Tensor):
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert out.pred_score.shape == (images.shape[0], 1)
    return out


def assert_matches_anomalib(ours: ead.EfficientAD, expected, images: torch.Tensor, rel: float = 1e-5) -> None:
    """ours.predict(images) equals anomalib's output within rel x the map's range."""
    pred = ours.predict(images)
    amap = expected.anomaly_map
    assert pred.anomaly_map.shape == amap.shape
    assert pred.anomaly_map.dtype == torch.float32
    span = float(amap.max() - amap.min())
    assert span > 0, "degenerate map: the comparison would prove nothing"
    err_map = float((pred.anomaly_map - amap).abs().max())
    assert err_map <= rel * span, f"map error {err_map:.3g} > {rel} x range {span:.3g}"
    assert pred.score.shape == (images.shape[0],)
    err_score = float((pred.score - expected.pred_score.reshape(-1)).abs().max())
    assert err_score <= rel * span, f"score error {err_score:.3g} > {rel} x range {span:.3g}"


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        if torch.is_tensor(value):
            assert torch.equal(value, sb[key]), key
        else:
            assert value == sb[key], key


def anomalib_model(seed: int, **kwargs) -> EfficientAdModel:
    torch.manual_seed(seed)
    return EfficientAdModel(**kwargs).eval()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(21)
    return torch.rand(2, 3, 256, 256, generator=g)


@pytest.fixture(scope="module")
def anomalib_small(images) -> EfficientAdModel:
    model = anomalib_model(2, model_size=EfficientAdModelSize.S)
    set_anomalib_stats(model, images[:1])
    return model


@pytest.fixture(scope="module")
def small_expected(anomalib_small, images):
    return anomalib_forward(anomalib_small, images)


@pytest.fixture(scope="module")
def ours_small(anomalib_small) -> ead.EfficientAD:
    return ead.from_anomalib(anomalib_small)


# --------------------------------------------------------------------------- from the module


def test_small_matches_anomalib(ours_small, anomalib_small, small_expected, images):
    assert ours_small.config() == {
        "model_size": "small",
        "padding": False,
        "alpha": 0.5,
        "pad_maps": True,
        "distance": "l2",
        "tile": None,
    }
    assert ours_small.quantiles_set
    torch.testing.assert_close(ours_small.quantiles, torch.tensor(list(QUANTILES.values())))
    torch.testing.assert_close(ours_small.teacher_mean, anomalib_small.mean_std["mean"].detach().reshape(-1))
    torch.testing.assert_close(ours_small.teacher_std, anomalib_small.mean_std["std"].detach().reshape(-1))
    assert_matches_anomalib(ours_small, small_expected, images)


def test_from_anomalib_copies(ours_small, anomalib_small):
    """The result owns its weights: changing anomalib's model afterwards changes nothing."""
    assert ours_small.teacher.conv1.weight.data_ptr() != anomalib_small.teacher.conv1.weight.data_ptr()


def test_unset_stats_match_anomalib(anomalib_small, images):
    """anomalib's initial state (all-zero mean_std and quantiles) means 'not applied'."""
    model = copy.deepcopy(anomalib_small)
    unset_anomalib_stats(model)
    x = images[:1]
    expected = anomalib_forward(model, x)
    ours = ead.from_anomalib(model)
    assert not ours.quantiles_set
    assert torch.equal(ours.teacher_mean, torch.zeros(384))
    assert torch.equal(ours.teacher_std, torch.ones(384))
    assert_matches_anomalib(ours, expected, x)


def test_pad_maps_false_matches_anomalib(anomalib_small, images):
    model = EfficientAdModel(model_size=EfficientAdModelSize.S, pad_maps=False).eval()
    model.load_state_dict(anomalib_small.state_dict())
    x = images[:1]
    expected = anomalib_forward(model, x)
    ours = ead.from_anomalib(model)
    assert ours.pad_maps is False and ours.padding is False
    assert_matches_anomalib(ours, expected, x)


def test_padding_true_matches_anomalib(images):
    """With padding=True anomalib's PDNs give 64x64 maps at 256 px, and (pad_maps defaulting
    to True) it still pads them by 4 to 72x72 before resizing; we must do the same."""
    model = anomalib_model(4, model_size=EfficientAdModelSize.S, padding=True)
    x = images[:1]
    set_anomalib_stats(model, x)
    expected = anomalib_forward(model, x)
    ours = ead.from_anomalib(model)
    assert ours.padding is True and ours.pad_maps is True
    assert tuple(ours.teacher.conv1.padding) == (3, 3)
    assert_matches_anomalib(ours, expected, x)


def test_medium_matches_anomalib(images):
    model = anomalib_model(5, model_size=EfficientAdModelSize.M)
    x = images[:1]
    set_anomalib_stats(model, x)
    expected = anomalib_forward(model, x)
    ours = ead.from_anomalib(model)
    assert ours.model_size == "medium"
    assert_matches_anomalib(ours, expected, x)


# --------------------------------------------------------------------------- from state dicts and checkpoints


def test_from_state_dict(ours_small, anomalib_small):
    ours = ead.from_anomalib(anomalib_small.state_dict())
    assert ours.config() == ours_small.config()
    assert ours.quantiles_set
    assert_same_state(ours, ours_small)


def test_from_state_dict_settings(anomalib_small):
    """A state dict carries no settings: they come from the arguments."""
    ours = ead.from_anomalib(anomalib_small.state_dict(), padding=True, pad_maps=False)
    assert ours.padding is True and ours.pad_maps is False
    assert tuple(ours.student.conv1.padding) == (3, 3)


@pytest.fixture(scope="module")
def lightning_module(anomalib_small):
    """anomalib's Lightning module, built offline (its constructor downloads nothing: the
    teacher weights and Imagenette are fetched only when training starts)."""
    from anomalib.models import EfficientAd

    module = EfficientAd()
    module.model.load_state_dict(anomalib_small.state_dict())
    return module


def test_lightning_state_dict_layout(lightning_module, anomalib_small):
    keys = set(lightning_module.state_dict())
    expected = {"model." + k for k in anomalib_small.state_dict()}
    assert expected <= keys
    # Anything else belongs to the pre/post-processors, never to the model.
    assert all(k.startswith(("pre_processor.", "post_processor.")) for k in keys - expected), sorted(keys - expected)


def lightning_checkpoint(module, hyper_parameters: dict) -> dict:
    """What Lightning's ModelCheckpoint writes, less the optimizer and loop states."""
    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": module.state_dict(),
        "hyper_parameters": hyper_parameters,
    }


def test_from_lightning_checkpoint_path(lightning_module, ours_small, tmp_path):
    path = tmp_path / "model.ckpt"
    # The real hyper_parameters hold anomalib's EfficientAdModelSize enum, which
    # torch.load(weights_only=True) refuses: loading needs weights_only=False (trusted file).
    torch.save(lightning_checkpoint(lightning_module, dict(lightning_module.hparams)), path)
    ours = ead.from_anomalib(path, weights_only=False)
    assert ours.config() == ours_small.config()
    assert_same_state(ours, ours_small)
    ours = ead.from_anomalib(str(path), weights_only=False)
    assert_same_state(ours, ours_small)


def test_from_lightning_checkpoint_default_weights_only(lightning_module, ours_small, tmp_path):
    """With the default weights_only=True a checkpoint whose hyper_parameters hold the enum is
    either read (if the package allow-lists anomalib's safe globals) or refused with a
    ValueError that says how to load a trusted file."""
    path = tmp_path / "model.ckpt"
    torch.save(lightning_checkpoint(lightning_module, dict(lightning_module.hparams)), path)
    try:
        ours = ead.from_anomalib(path)
    except ValueError as exc:
        assert "weights_only=False" in str(exc)
    else:
        assert_same_state(ours, ours_small)


def test_from_lightning_checkpoint_hyper_parameters(lightning_module, ours_small, tmp_path):
    """padding and pad_maps come from the checkpoint's hyper_parameters (plain types here, so
    the default weights_only=True reads it)."""
    hparams = {k: v for k, v in lightning_module.hparams.items() if k != "model_size"}
    hparams.update(model_size="small", padding=True, pad_maps=False)
    path = tmp_path / "padded.ckpt"
    torch.save(lightning_checkpoint(lightning_module, hparams), path)
    ours = ead.from_anomalib(path)
    assert ours.padding is True and ours.pad_maps is False
    assert tuple(ours.teacher.conv1.padding) == (3, 3)
    # Explicit arguments win over the checkpoint's.
    ours = ead.from_anomalib(path, padding=False, pad_maps=True)
    assert ours.config() == ours_small.config()
    assert_same_state(ours, ours_small)


def test_from_lightning_checkpoint_dict(lightning_module, ours_small):
    ckpt = {
        "state_dict": {k: v for k, v in lightning_module.state_dict().items() if k.startswith("model.")},
        "hyper_parameters": {"padding": False, "pad_maps": True},
    }
    assert_same_state(ead.from_anomalib(ckpt), ours_small)


def test_from_lightning_module(lightning_module, ours_small):
    ours = ead.from_anomalib(lightning_module)
    assert ours.config() == ours_small.config()
    assert_same_state(ours, ours_small)


def test_from_medium_state_dict():
    model = anomalib_model(6, model_size=EfficientAdModelSize.M)
    ours = ead.from_anomalib({"model." + k: v for k, v in model.state_dict().items()})
    assert ours.model_size == "medium"
    assert torch.equal(ours.teacher.conv6.weight, model.teacher.conv6.weight)
    assert torch.equal(ours.autoencoder.decoder.deconv8.bias, model.ae.decoder.deconv8.bias)
    assert not ours.quantiles_set


# --------------------------------------------------------------------------- errors


def test_non_anomalib_torch_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.randn(4), "epoch": 1}, path)
    with pytest.raises(ValueError, match="anomalib"):
        ead.from_anomalib(path)


def test_efficientad_fast_file_is_not_anomalib(tmp_path):
    path = tmp_path / "ours.pt"
    ead.EfficientAD(teacher="random").save(path)
    with pytest.raises(ValueError):
        ead.from_anomalib(path)


@pytest.mark.parametrize("text", ["hello", "these are not weights\n" * 20], ids=["short", "long"])
def test_text_file(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(ValueError):
        ead.from_anomalib(path)


def test_truncated_checkpoint(anomalib_small, tmp_path):
    path = tmp_path / "full.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in anomalib_small.state_dict().items()}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        ead.from_anomalib(path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        ead.from_anomalib(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("obj", [42, [1, 2], torch.zeros(3), None], ids=["int", "list", "tensor", "none"])
def test_non_dict_object(obj):
    with pytest.raises(TypeError):
        ead.from_anomalib(obj)


def test_wrong_shapes_in_state_dict(anomalib_small):
    state = dict(anomalib_small.state_dict())
    state["student.conv4.weight"] = torch.zeros(384, 256, 4, 4)
    with pytest.raises(ValueError, match=r"student\.conv4\.weight"):
        ead.from_anomalib(state)
