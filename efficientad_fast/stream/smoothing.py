"""Temporal smoothing of image scores: the smoothers :class:`Inspector` runs over each
frame's score, and :func:`make_smoother` by name (see the package docstring for what each
trades)."""

from __future__ import annotations

import collections

from .._numbers import is_whole

SMOOTHERS = ("none", "ema", "kofn", "hysteresis")


class NoSmoothing:
    """The raw score against the threshold. Latency: 0 frames."""

    latency_frames = 0.0

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def update(self, score: float) -> tuple[float, bool]:
        """(smoothed score, alarm) after one more frame's score."""
        return float(score), float(score) > self.threshold

    def reset(self) -> None:
        """Forget the frames seen so far (a new stream starts)."""


class EMASmoothing:
    """Exponential moving average s_t = alpha x_t + (1 - alpha) s_(t-1), s_0 = x_0; alarm
    when s_t > threshold. Latency: the mean delay of the average, (1 - alpha) / alpha frames."""

    def __init__(self, threshold: float, alpha: float = 0.4) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ema alpha must be in (0, 1], got {alpha}")
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.latency_frames = (1.0 - self.alpha) / self.alpha
        self._value: float | None = None

    def update(self, score: float) -> tuple[float, bool]:
        score = float(score)
        self._value = score if self._value is None else self.alpha * score + (1.0 - self.alpha) * self._value
        return self._value, self._value > self.threshold

    def reset(self) -> None:
        self._value = None


class KOfNSmoothing:
    """Alarm when at least ``k`` of the last ``n`` raw scores exceed the threshold. The
    smoothed score is the k-th largest of the last n (so it exceeds the threshold exactly
    when the alarm is on; before k frames have come, the smallest so far, with no alarm).
    Latency: k - 1 frames to raise; the alarm holds up to n - k frames after."""

    def __init__(self, threshold: float, k: int = 3, n: int = 5) -> None:
        if not (is_whole(k) and is_whole(n) and 1 <= int(k) <= int(n)):  # int(): a tensor and an array mixed
            raise ValueError(f"kofn needs integers 1 <= k <= n, got k={k!r}, n={n!r}")
        self.threshold = float(threshold)
        self.k, self.n = int(k), int(n)
        self.latency_frames = float(self.k - 1)
        self._window: collections.deque[float] = collections.deque(maxlen=self.n)

    def update(self, score: float) -> tuple[float, bool]:
        self._window.append(float(score))
        if len(self._window) < self.k:
            return min(self._window), False
        kth = sorted(self._window, reverse=True)[self.k - 1]
        return kth, kth > self.threshold

    def reset(self) -> None:
        self._window.clear()


class HysteresisSmoothing:
    """Alarm on when the raw score exceeds ``threshold``, off only once it falls below
    ``off_threshold`` (default: 0.2 x |threshold| lower). The smoothed score is the raw
    score. Latency: 0 frames to raise; the alarm holds while the score stays above off."""

    latency_frames = 0.0

    def __init__(self, threshold: float, off_threshold: float | None = None) -> None:
        threshold = float(threshold)
        off = threshold - 0.2 * abs(threshold) if off_threshold is None else float(off_threshold)
        if off > threshold:
            raise ValueError(f"hysteresis off threshold {off} must not exceed the on threshold {threshold}")
        self.threshold, self.off_threshold = threshold, off
        self._on = False

    def update(self, score: float) -> tuple[float, bool]:
        score = float(score)
        self._on = score >= self.off_threshold if self._on else score > self.threshold
        return score, self._on

    def reset(self) -> None:
        self._on = False


def make_smoother(
    name: str, threshold: float, *, ema_alpha: float = 0.4, k: int = 3, n: int = 5, off_threshold: float | None = None
):
    """The smoother called ``name`` (one of :data:`SMOOTHERS`) with its settings."""
    if name == "none":
        return NoSmoothing(threshold)
    if name == "ema":
        return EMASmoothing(threshold, ema_alpha)
    if name == "kofn":
        return KOfNSmoothing(threshold, k, n)
    if name == "hysteresis":
        return HysteresisSmoothing(threshold, off_threshold)
    raise ValueError(f"smoothing must be one of {SMOOTHERS}, got {name!r}")
