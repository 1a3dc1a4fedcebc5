"""Random inputs shared by the tests and the benchmarks: op features, op calls, models; and
the one tolerance rule by which the tests compare maps with the reference.

Nothing here is needed to use the library; it gives the tests (``tests/``), the pytest-benchmark
suites and timing scripts (``bench/``) and the ``bench`` command one definition of the random
features and seeded models they time or check, so a figure and a test speak of the same input.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import EfficientAD
from .networks import TEACHER_CHANNELS, feature_size

# The op's quantiles (q_a_st, q_b_st, q_a_ae, q_b_ae) in op_inputs: a plausible calibration.
OP_QUANTILES = (1.5, 3.0, 1.8, 3.5)


def random_features(
    n: int,
    c: int,
    h: int,
    w: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    teacher_stats: bool = True,
    generator: torch.Generator | None = None,
) -> dict:
    """Random teacher (N, C, h, w), student (N, 2C, h, w) and autoencoder (N, C, h, w)
    features as the op's keyword arguments.

    With ``teacher_stats`` the teacher is drawn around a per-channel mean/std (returned too,
    float32, as ``teacher_mean``/``teacher_std``), so standardizing it matters, as with a real
    teacher. Draws from ``generator`` (default: torch's global generator) in a fixed order:
    teacher, student, autoencoder, mean, std.
    """
    teacher = torch.randn(n, c, h, w, generator=generator)
    student = torch.randn(n, 2 * c, h, w, generator=generator)
    autoencoder = torch.randn(n, c, h, w, generator=generator)
    features = {}
    if teacher_stats:
        mean = torch.randn(c, generator=generator)
        std = torch.rand(c, generator=generator) + 0.5
        teacher = teacher * std.view(1, c, 1, 1) + mean.view(1, c, 1, 1)
        features["teacher_mean"] = mean.to(device)
        features["teacher_std"] = std.to(device)
    features["teacher"] = teacher.to(device=device, dtype=dtype)
    features["student"] = student.to(device=device, dtype=dtype)
    features["autoencoder"] = autoencoder.to(device=device, dtype=dtype)
    return features


def op_inputs(
    batch: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    image_size: int = 256,
    seed: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of one op call on features shaped like EfficientAD-S's at
    ``image_size`` (no padding; the teacher drawn around its channel mean/std), with
    quantiles, pad 4, α = 0.5 and l2: the benchmarks' common input. ``memory_format``:
    the features' layout (``torch.channels_last`` is what the networks emit)."""
    h, w = feature_size((image_size, image_size), padding=False)
    f = random_features(
        batch, TEACHER_CHANNELS, h, w, dtype=dtype, device=device, generator=torch.Generator().manual_seed(seed)
    )
    args = tuple(f.pop(name).contiguous(memory_format=memory_format) for name in ("teacher", "student", "autoencoder"))
    kwargs = dict(
        f,
        quantiles=torch.tensor(OP_QUANTILES, device=device),
        alpha=0.5,
        pad=4,
        output_size=(image_size, image_size),
        distance="l2",
    )
    return args, kwargs


def random_teacher_stats(
    channels: int = TEACHER_CHANNELS, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A plausible per-channel teacher (mean, std): mean ~ 0.1 N(0, 1), std ~ U(0.5, 1.5)."""
    return torch.randn(channels, generator=generator) * 0.1, torch.rand(channels, generator=generator) + 0.5


def random_model(
    model_size: str = "small",
    *,
    seed: int = 0,
    teacher_stats: bool = True,
    quantiles: tuple[float, float, float, float] | None = None,
) -> EfficientAD:
    """A seeded EfficientAD with random weights (torch's global generator is left as it
    was), teacher statistics from :func:`random_teacher_stats` (generator seeded ``seed``)
    unless ``teacher_stats`` is False, and ``quantiles`` when given. Timings depend on the
    shapes only; tests get the same model in every run."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EfficientAD(model_size=model_size, teacher="random")
    if teacher_stats:
        model.set_teacher_stats(*random_teacher_stats(generator=torch.Generator().manual_seed(seed)))
    if quantiles is not None:
        model.set_quantiles(*quantiles)
    return model


def map_tolerance(expected_map: torch.Tensor, rtol: float, atol: float = 1e-6) -> torch.Tensor:
    """Per-image tolerance (N,) for a float32 map compared with ``expected_map`` (N, 1, H, W):
    ``rtol`` x the image's map range (max - min), plus a floor of ``atol`` and of float32's
    rounding of the map's largest magnitude (8 ulp), so a flat or near-constant map, whose
    range is ~0, is held to what float32 can represent rather than to ~1e-9."""
    flat = expected_map.detach().double().reshape(expected_map.shape[0], -1)
    if flat.shape[1] == 0:
        return torch.full((flat.shape[0],), float(atol), dtype=torch.float64)
    span = flat.amax(1) - flat.amin(1)
    rounding = float(8 * np.finfo(np.float32).eps) * flat.abs().amax(1)
    return rtol * span + torch.clamp(rounding, min=atol)


def assert_map_close(result, expected, rtol: float, atol: float = 1e-6) -> None:
    """``result`` = (map, score) equals ``expected`` (map, score, any float dtype and device) to
    within :func:`map_tolerance` per image, in the map and in the score; the result must be
    float32 and of the expected shapes. NaN must match NaN. Errors name the worst image."""
    got_map, got_score = (t.detach().cpu().double() for t in result)
    expected_map, expected_score = (t.detach().cpu().double() for t in expected)
    assert result[0].dtype == torch.float32 and result[1].dtype == torch.float32, (result[0].dtype, result[1].dtype)
    assert got_map.shape == expected_map.shape, (tuple(got_map.shape), tuple(expected_map.shape))
    assert got_score.shape == expected_score.shape == (expected_map.shape[0],), (
        tuple(got_score.shape),
        tuple(expected_score.shape),
    )
    if got_map.numel() == 0:
        return
    tolerance = map_tolerance(expected_map, rtol, atol)
    for name, got, want in (("map", got_map, expected_map), ("score", got_score, expected_score)):
        got, want = got.reshape(got.shape[0], -1), want.reshape(want.shape[0], -1)
        assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN in different places"
        error = (got - want).nan_to_num(0.0).abs().amax(1)
        worst = int((error - tolerance).argmax())
        assert bool((error <= tolerance).all()), (
            f"{name} error {error[worst].item():.3g} > tolerance {tolerance[worst].item():.3g} in image "
            f"{worst} (map range {(want[worst].amax() - want[worst].amin()).item():.3g}, rtol {rtol}, atol {atol})"
        )
