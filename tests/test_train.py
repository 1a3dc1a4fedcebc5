"""Training (paper Algorithm 1): exact quantiles, augmentation, teacher statistics,
calibration, a few steps lowering the loss, resume equal to an uninterrupted run, bad input."""

from __future__ import annotations

import pytest
import torch

from efficientad_fast import EfficientAD, reference_anomaly_map
from efficientad_fast.train import (
    TrainConfig,
    TrainingInterrupted,
    augment,
    calibrate,
    exact_quantile,
    teacher_channel_stats,
    train,
)

pytestmark = pytest.mark.usefixtures("op_library")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    # Smooth random images: closer to photographs than white noise.
    small = torch.rand(5, 3, 32, 32, generator=g)
    return (torch.nn.functional.interpolate(small, size=256, mode="bilinear") * 255).round().to(torch.uint8)


def tiny_config(**kw) -> TrainConfig:
    defaults = dict(steps=4, progress=False, workers=0, checkpoint_every=2)
    return TrainConfig(**{**defaults, **kw})


@pytest.mark.parametrize("n", [1, 2, 10, 1001, 12345])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.995, 0.999, 1.0])
def test_exact_quantile_equals_torch_quantile(n, q):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    # float64 truth: torch.quantile in float32 interpolates less precisely than we do
    assert float(exact_quantile(x, q)) == pytest.approx(float(torch.quantile(x.double(), q)), abs=1e-6)


def test_exact_quantile_beyond_torch_quantile_limit():
    n = 2**24 + 3  # older torch.quantile refuses more than 2^24 elements
    x = torch.arange(n, dtype=torch.float32).flip(0)
    q = 0.999
    expected = q * (n - 1)  # the values are 0..n-1
    assert float(exact_quantile(x, q)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("q", [0.1, 0.9, 0.995])
def test_exact_quantile_with_many_ties(q):
    # Calibration maps hold many equal values (the padded border): must stay exact and quick.
    x = torch.zeros(200_003)
    x[::7] = 1.0
    x[::11] = 0.5
    assert float(exact_quantile(x, q)) == pytest.approx(float(torch.quantile(x.double(), q)), abs=1e-7)


def test_augment_stays_in_range_and_is_seeded():
    x = torch.rand(6, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)


def test_augment_matches_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional", reason="torchvision not installed")
    x = torch.rand(1, 3, 16, 16)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    choice = int(torch.randint(0, 3, (1,), generator=g))
    factor = float(torch.rand(1, generator=g) * 0.4 + 0.8)
    g.set_state(state)
    ours = augment(x, g)
    fn = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation)[choice]
    assert torch.allclose(ours, fn(x, factor), atol=1e-5)


def test_teacher_stats_equal_direct_computation(images):
    model = EfficientAD(teacher="random")
    mean, std = teacher_channel_stats(model, images, batch_size=2)
    with torch.no_grad():
        out = model.teacher(images.float() / 255).double()
    assert torch.allclose(mean, out.mean(dim=(0, 2, 3)).float(), atol=1e-5)
    assert torch.allclose(std, out.std(dim=(0, 2, 3), unbiased=False).float(), rtol=1e-4, atol=1e-6)


def test_calibration_quantiles_are_those_of_the_reference_maps(images):
    model = EfficientAD(teacher="random").eval()
    q = calibrate(model, images[:2])
    x = images[:2].float() / 255
    with torch.no_grad():
        t, s, a = model.teacher(x), model.student(x), model.autoencoder(x)
    common = dict(teacher_mean=model.teacher_mean, teacher_std=model.teacher_std, output_size=(256, 256))
    st = reference_anomaly_map(t, s, a, alpha=1.0, **common)[0]
    ae = reference_anomaly_map(t, s, a, alpha=0.0, **common)[0]
    expected = [
        torch.quantile(st.flatten(), 0.9),
        torch.quantile(st.flatten(), 0.995),
        torch.quantile(ae.flatten(), 0.9),
        torch.quantile(ae.flatten(), 0.995),
    ]
    for got, want in zip(q, expected):
        assert got == pytest.approx(float(want), rel=1e-4, abs=1e-7)
    assert model.quantiles_set and torch.allclose(model.quantiles, torch.tensor(q))


def test_a_few_steps_lower_the_loss(images):
    torch.manual_seed(0)
    model = EfficientAD(teacher="random")
    result = train(model, images, tiny_config(steps=6, lr=1e-3, checkpoint_every=0), penalty_images=images[:2])
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 < losses[0]
    assert result.history[-1]["loss_penalty"] > 0
    assert not model.training


def test_batch_size_above_one_and_no_teacher_cache(images):
    torch.manual_seed(0)
    model = EfficientAD(teacher="random")
    result = train(model, images, tiny_config(steps=2, batch_size=3, checkpoint_every=0, teacher_cache_mib=0))
    assert len(result.history) == 2


def test_resume_ends_where_an_uninterrupted_run_ends(images, tmp_path):
    config = tiny_config(steps=4, checkpoint_every=1)

    torch.manual_seed(0)
    straight = EfficientAD(teacher="random")
    train(straight, images, config, penalty_images=images[:2], out_dir=tmp_path / "straight")

    def stop_after_two(step, losses):
        if step == 2:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    interrupted = EfficientAD(teacher="random")
    with pytest.raises(TrainingInterrupted) as stop:
        train(
            interrupted,
            images,
            config,
            penalty_images=images[:2],
            out_dir=tmp_path / "resumed",
            callback=stop_after_two,
        )
    assert stop.value.step == 2 and stop.value.checkpoint.is_file()

    torch.manual_seed(123)  # the resumed run must not depend on the global RNG state
    resumed = EfficientAD(teacher="random")
    result = train(resumed, images, config, penalty_images=images[:2], out_dir=tmp_path / "resumed", resume=True)
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        if torch.is_tensor(a):
            assert torch.equal(a, b), key


def test_bad_training_input(images, tmp_path):
    model = EfficientAD(teacher="random")
    with pytest.raises(ValueError, match="steps"):
        train(model, images, tiny_config(steps=0))
    with pytest.raises(ValueError, match="batch_size"):
        train(model, images, tiny_config(batch_size=0))
    with pytest.raises(ValueError, match="amp"):
        train(model, images, tiny_config(amp="fp8"))
    with pytest.raises(ValueError, match="uint8"):
        train(model, images.float(), tiny_config())
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(model, images, tiny_config(), out_dir=tmp_path, resume=True)


def test_resume_with_other_settings_is_refused(images, tmp_path):
    torch.manual_seed(0)
    train(EfficientAD(teacher="random"), images, tiny_config(steps=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        train(EfficientAD(teacher="random"), images, tiny_config(steps=1, lr=5e-4), out_dir=tmp_path, resume=True)
