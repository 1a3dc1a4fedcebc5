"""Teacher statistics and map calibration: exact quantiles, the teacher's channel mean/std,
the q_a/q_b quantiles of both maps and the decision thresholds (see :mod:`efficientad_fast.train`)."""

from __future__ import annotations

import functools
import math

import torch

from .._progress import progress as progress_bar
from ..metrics import f1_optimal_threshold
from ..model import DEFAULT_IMAGE_QUANTILE, DEFAULT_PIXEL_THRESHOLD, EfficientAD
from ..op.ops import anomaly_map
from ..op.reference import normalize_map


def exact_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(values, q) (linear interpolation) for any number of elements (older
    torch.quantile refuses more than 2^24). Selects the two order statistics it needs with
    topk from the nearer end: fast for the 0.999 / 0.995 / 0.9 quantiles used here and
    robust to sorted input and ties (CPU kthvalue's quickselect takes minutes on those)."""
    flat = values.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("quantile of an empty tensor")
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    if n - lo <= lo + 2:  # upper quantile: the n - lo largest, descending
        top = torch.topk(flat, n - lo, largest=True, sorted=True).values
        v_lo, v_hi = top[-1], top[n - 1 - hi]
    else:  # lower quantile: the hi + 1 smallest, ascending
        bottom = torch.topk(flat, hi + 1, largest=False, sorted=True).values
        v_lo, v_hi = bottom[lo], bottom[hi]
    return v_lo + frac * (v_hi - v_lo) if frac else v_lo


@torch.no_grad()
def teacher_channel_stats(
    model: EfficientAD, images: torch.Tensor, batch_size: int = 8, progress: bool = False, keep_outputs: bool = False
) -> tuple[torch.Tensor, ...]:
    """Per-channel mean and std of the teacher's outputs over ``images`` (uint8, N×3×H×W),
    accumulated batch by batch in float64 (never all outputs in memory, unless
    ``keep_outputs``: then the raw outputs come back too, as a CPU tensor)."""
    device = model.device
    total: torch.Tensor | None = None
    sq_total: torch.Tensor | None = None
    count = 0
    kept = []
    batches = range(0, images.shape[0], batch_size)
    for start in progress_bar(batches, progress, "teacher statistics"):
        x = images[start : start + batch_size].to(device).float().div_(255)
        out = model.teacher(x)
        if keep_outputs:
            kept.append(out.cpu())
        y = out.double()
        s, sq = y.sum(dim=(0, 2, 3)), (y * y).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        sq_total = sq if sq_total is None else sq_total + sq
        count += y.shape[0] * y.shape[2] * y.shape[3]
    assert total is not None and sq_total is not None  # train scores at least one image
    mean = total / count
    std = (sq_total / count - mean * mean).clamp_min(0).sqrt()
    if keep_outputs:
        return mean.float().cpu(), std.float().cpu(), torch.cat(kept)
    return mean.float().cpu(), std.float().cpu()


@torch.no_grad()
def calibrate(
    model: EfficientAD,
    images: torch.Tensor,
    batch_size: int = 8,
    q_a: float = 0.9,
    q_b: float = 0.995,
    progress: bool = False,
    image_quantile: float = DEFAULT_IMAGE_QUANTILE,
    int8: bool = True,
) -> tuple[float, ...]:
    """Set the model's map quantiles from held-out *training* images (uint8, N×3×H×W):
    q_a and q_b of the unnormalized student-teacher and autoencoder maps at image
    resolution, exact over all pixels. Returns (q_a_st, q_b_st, q_a_ae, q_b_ae).

    Then sets the decision thresholds (:meth:`EfficientAD.set_thresholds`): the image
    threshold is the ``image_quantile`` quantile of these normal images' scores (the max of
    each normalized map, as predict computes it; needs no defective image), the pixel
    threshold the q_b level of normalized maps, 0.1. With ``int8`` (default) it also records
    the INT8 activation ranges from the same images (:meth:`EfficientAD.record_int8_ranges`,
    a few seconds), so the model can run in INT8 on a CPU without another calibration."""
    if not 0.0 < image_quantile <= 1.0:
        raise ValueError(f"image_quantile must be in (0, 1], got {image_quantile}")
    if images.shape[0] == 0:
        raise ValueError("calibration needs at least one held-out training image")
    was_training = model.training
    model.eval()
    maps_st, maps_ae = [], []
    for start in progress_bar(range(0, images.shape[0], batch_size), progress, "calibrating"):
        x = images[start : start + batch_size].to(model.device).to(model.dtype).div_(255)
        teacher, student, ae = model.features(x)
        score = functools.partial(
            anomaly_map,
            teacher,
            student,
            ae,
            teacher_mean=model.teacher_mean,
            teacher_std=model.teacher_std,
            pad=model.map_pad,
            output_size=tuple(x.shape[-2:]),
            distance=model.distance,
        )
        maps_st.append(score(alpha=1.0)[0].cpu())
        maps_ae.append(score(alpha=0.0)[0].cpu())
    model.train(was_training)
    st, ae = torch.cat(maps_st), torch.cat(maps_ae)
    levels = [exact_quantile(st, q_a), exact_quantile(st, q_b), exact_quantile(ae, q_a), exact_quantile(ae, q_b)]
    q = tuple(float(v) for v in levels)
    if not (q[1] > q[0] and q[3] > q[2]):
        raise ValueError(f"calibration maps are (nearly) constant, quantiles {q}: train longer or check the data")
    model.set_quantiles(*q)
    # The normalized fused map from the two maps at hand (normalizing commutes with the
    # resize, so this is predict's map up to float rounding): no second network pass.
    alpha = model.alpha
    fused = alpha * normalize_map(st, q[0], q[1]) + (1 - alpha) * normalize_map(ae, q[2], q[3])
    scores = fused.flatten(1).amax(dim=1)
    image_threshold = float(exact_quantile(scores, image_quantile))
    model.set_thresholds(
        image=image_threshold,
        pixel=DEFAULT_PIXEL_THRESHOLD,
        source=f"image: {image_quantile:g} quantile of {scores.numel()} held-out normal "
        f"images' scores; pixel: q_b level",
    )
    if int8:
        model.record_int8_ranges(images, batch_size)
    return q


@torch.no_grad()
def threshold_from_f1(
    model: EfficientAD, images: torch.Tensor, labels, batch_size: int = 8, progress: bool = False
) -> tuple[float, float]:
    """Set the model's image threshold to the F1-optimal one on labelled validation images
    (uint8 N×3×H×W, ``labels`` 1 = anomalous, both classes present; score them with the
    calibrated model). The pixel threshold stays. Returns (threshold, its F1)."""
    if not model.quantiles_set:
        raise ValueError("threshold_from_f1 needs a calibrated model: run calibrate first")
    scores = []
    for start in progress_bar(range(0, images.shape[0], batch_size), progress, "F1 threshold"):
        scores.append(model.predict(images[start : start + batch_size]).score.cpu())
    threshold, f1 = f1_optimal_threshold(torch.cat(scores), labels)
    n_bad = int(torch.as_tensor(labels).sum())
    model.set_thresholds(
        image=threshold,
        pixel=model.pixel_threshold,
        source=f"image: F1-optimal (F1 {f1:.3f}) on {images.shape[0]} labelled validation "
        f"images ({n_bad} anomalous); pixel: {model.threshold_source.split('pixel: ')[-1]}",
    )
    return threshold, f1
