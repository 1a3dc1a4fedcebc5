"""The live scorer: :class:`Inspector` decodes on one thread into a bounded queue and scores
on another, smoothing each frame's score and raising alarms; :class:`FrameResult` is what it
says about each frame."""

from __future__ import annotations

import collections
import dataclasses
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, TypedDict

import numpy as np
import torch

from .._numbers import is_whole
from ..deploy.inference import FastPredictor
from ..heatmaps import default_threshold
from ..model import EfficientAD
from .smoothing import make_smoother
from .sources import FrameSource, SourceFrame, open_source, prepare_frame

CALIBRATION_QUANTILE = 0.995


@dataclass
class FrameResult:
    """What :class:`Inspector` says about one frame. ``score`` is the raw image score,
    ``smoothed`` the smoother's value, ``latency_ms`` the time from the frame leaving the
    source to this result (resize, waiting in the queue, scoring, smoothing; a file read as
    fast as scoring goes keeps up to ``queue_size`` + 1 frames waiting, a live source
    drops them instead), ``dropped`` the frames dropped so far in this stream. A frame
    that could not be decoded has ``error`` set and no scores. ``image`` (3, H, W) and
    ``anomaly_map`` (H, W) (the per-pixel EMA's map with ``map_alpha``) are kept for
    pictures, not written to JSON."""

    frame: int
    time_s: float | None
    score: float | None
    smoothed: float | None
    alarm: bool
    latency_ms: float
    dropped: int
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    anomaly_map: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        """The JSON line of frames.jsonl (no image or map)."""
        row: dict[str, object] = {
            "frame": self.frame,
            "time_s": _rounded(self.time_s),
            "score": _rounded(self.score),
            "smoothed": _rounded(self.smoothed),
            "alarm": self.alarm,
            "latency_ms": round(self.latency_ms, 3),
            "dropped": self.dropped,
        }
        if self.error is not None:
            row["error"] = self.error
        return row


class _SmootherSettings(TypedDict):
    """make_smoother's settings, kept so set_threshold makes the same smoother again."""

    ema_alpha: float
    k: int
    n: int
    off_threshold: float | None


def _rounded(value: float | None) -> float | None:
    """For JSON: 6 significant digits; None for NaN and infinities, which JSON does not have."""
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


@dataclass
class _Queued:
    item: SourceFrame
    arrived: float
    image: np.ndarray | None


class _DecodeFailed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def _newer_frame_waits(frames: queue.Queue) -> bool:
    with frames.mutex:  # the queue's own lock: look without taking anything out
        return any(isinstance(waiting, _Queued) for waiting in frames.queue)


def _put_unless_stopped(frames: queue.Queue, item, stop: threading.Event) -> None:
    """Wait for room in ``frames`` for ``item``, checking ``stop`` every 0.1 s so a stopped
    scorer never leaves the decode thread blocked on a full queue."""
    while not stop.is_set():
        try:
            frames.put(item, timeout=0.1)
            return
        except queue.Full:
            pass


class Inspector:
    """Score frames one at a time with temporal smoothing and alarms.

    Args:
        model: a calibrated :class:`EfficientAD` on its device and in its dtype (e.g.
            ``model.to(torch.bfloat16)``); scored through a :class:`FastPredictor` of batch 1
            (a CUDA graph on a GPU), kept as ``self.predictor``.
        smoothing: one of :data:`SMOOTHERS` (see the module docstring for their latency).
        threshold: on the smoothed image score; default the model's ``image_threshold``
            (set by calibration from normal images' scores), else the map's q_b level
            (:func:`efficientad_fast.heatmaps.default_threshold`, 0.1). :meth:`calibrate`
            sets it from normal frames.
        image_size: the model's input size; frames are resized to it as ``predict`` does.
        ema_alpha, k, n, off_threshold: the smoothers' settings.
        map_alpha: per-pixel EMA weight of the map (static camera), None for none.
        queue_size: frames waiting between the decode thread and scoring (memory bound).
        max_latency_ms: a waiting frame whose result would come later than this is skipped
            (counted as dropped) when a newer frame waits behind it.
        predictor: what scores a (1, 3, H, W) float batch, called like a
            :class:`FastPredictor` (default: one made from ``model``; e.g. one made with
            ``compile=True``).
    """

    def __init__(
        self,
        model: EfficientAD,
        smoothing: str = "ema",
        threshold: float | None = None,
        *,
        image_size: int = 256,
        ema_alpha: float = 0.4,
        k: int = 3,
        n: int = 5,
        off_threshold: float | None = None,
        map_alpha: float | None = None,
        queue_size: int = 2,
        max_latency_ms: float | None = None,
        predictor=None,
    ) -> None:
        if not isinstance(model, EfficientAD):
            raise TypeError(f"model must be an efficientad_fast.EfficientAD, got {type(model).__name__}")
        # The map threshold of the alarm pictures' contour: the model's pixel threshold (the
        # q_b level, 0.1, of calibrated maps).
        self.map_threshold = getattr(model, "pixel_threshold", None) or default_threshold(model)
        if threshold is None:
            # The model's image threshold (calibration sets it from normal images' scores),
            # else the q_b level of the calibrated map.
            threshold = getattr(model, "image_threshold", None)
            if threshold is None:
                threshold = default_threshold(model)
            if threshold is None:
                raise ValueError(
                    "the model is not calibrated (no map quantiles): give a threshold on its raw scores "
                    "(threshold=, watch --threshold) or calibrate it (train does; efficientad_fast.train.calibrate)"
                )
        if not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold}")
        if map_alpha is not None and not 0.0 < map_alpha <= 1.0:
            raise ValueError(f"map_alpha must be in (0, 1] or None, got {map_alpha}")
        if not is_whole(queue_size) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        if max_latency_ms is not None and not max_latency_ms > 0:
            raise ValueError(f"max_latency_ms must be > 0, got {max_latency_ms}")
        self.smoothing = smoothing
        self._settings = _SmootherSettings(ema_alpha=ema_alpha, k=k, n=n, off_threshold=off_threshold)
        self.smoother = make_smoother(smoothing, float(threshold), **self._settings)
        self.model = model
        self.size = (image_size, image_size)
        if predictor is None:
            predictor = FastPredictor(model, 1, image_size, input_dtype=torch.float32, warmup=1)
        self.predictor = predictor
        self.map_alpha = map_alpha
        self.queue_size = int(queue_size)
        self.max_latency_ms = max_latency_ms
        self.dropped = 0
        self._next_index = 0  # frame numbers of update() calls without an index
        self._map: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return self.smoother.threshold

    @property
    def latency_frames(self) -> float:
        """Frames of delay the smoothing adds (see the module docstring)."""
        extra = 0.0 if self.map_alpha is None else (1.0 - self.map_alpha) / self.map_alpha
        return self.smoother.latency_frames + extra

    def set_threshold(self, threshold: float, off_threshold: float | None = None) -> None:
        """Use ``threshold`` from now on (the smoother starts afresh)."""
        if not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold}")
        if off_threshold is not None:
            self._settings["off_threshold"] = off_threshold
        self.smoother = make_smoother(self.smoothing, float(threshold), **self._settings)
        self.reset()

    def reset(self) -> None:
        """Start a new stream: forget the smoother's and the map EMA's history and drops."""
        self.smoother.reset()
        self._map = None
        self.dropped = 0

    # -- one frame ------------------------------------------------------------------------

    def score_frame(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """(raw score, map used for the smoothed score) of a prepared (3, H, W) frame;
        updates the per-pixel EMA of the map when ``map_alpha`` is set."""
        pred = self.predictor(torch.from_numpy(image)[None])
        raw = float(pred.score[0])
        amap = pred.anomaly_map[0, 0].float().cpu().numpy()
        if self.map_alpha is not None:
            self._map = amap if self._map is None else self.map_alpha * amap + (1 - self.map_alpha) * self._map
            amap = self._map
        return raw, amap

    def _result(self, item: SourceFrame, image: np.ndarray | None, arrived: float) -> FrameResult:
        if item.error is not None or image is None:
            return FrameResult(
                item.index,
                item.time_s,
                None,
                None,
                False,
                1e3 * (time.perf_counter() - arrived),
                self.dropped,
                item.error or "no image",
            )
        raw, amap = self.score_frame(image)
        value = raw if self.map_alpha is None else float(amap.max())
        smoothed, alarm = self.smoother.update(value)
        return FrameResult(
            item.index,
            item.time_s,
            raw,
            smoothed,
            bool(alarm),
            1e3 * (time.perf_counter() - arrived),
            self.dropped,
            image=image,
            anomaly_map=amap,
        )

    def update(self, frame, index: int | None = None, time_s: float | None = None) -> FrameResult:
        """Score one frame (uint8 (H, W, 3) RGB array or PIL image) now, in this thread."""
        arrived = time.perf_counter()
        index = self._next_index if index is None else index
        self._next_index = index + 1
        return self._result(SourceFrame(index, time_s, frame), prepare_frame(frame, self.size), arrived)

    # -- a stream ---------------------------------------------------------------------------

    def _count_drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def _decode(
        self, source: FrameSource, frames: queue.Queue, stop: threading.Event, realtime: bool, max_frames: int | None
    ) -> None:
        """The decode thread: read, resize, queue. Live (``realtime``): never wait for the
        scorer; when the queue is full the oldest waiting frame is dropped. A file source
        with ``realtime`` is paced to its timestamps, as if a camera sent it."""
        started, first_stamp = time.perf_counter(), None
        try:
            for count, item in enumerate(source):
                if stop.is_set() or (max_frames is not None and count >= max_frames):
                    break
                if realtime and not source.live and item.time_s is not None:
                    first_stamp = item.time_s if first_stamp is None else first_stamp
                    wait = started + (item.time_s - first_stamp) - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                arrived = time.perf_counter()
                image = None
                if item.error is None:
                    try:
                        image = prepare_frame(item.image, self.size)
                    except (ValueError, TypeError, OSError) as exc:
                        item = dataclasses.replace(item, image=None, error=f"cannot convert frame {item.index}: {exc}")
                queued = _Queued(item, arrived, image)
                if realtime:
                    while True:
                        try:
                            frames.put_nowait(queued)
                            break
                        except queue.Full:
                            try:
                                frames.get_nowait()
                                self._count_drop()
                            except queue.Empty:
                                pass
                else:
                    _put_unless_stopped(frames, queued, stop)
        except BaseException as exc:  # handed to the scoring thread, which raises it
            frames.put(_DecodeFailed(exc))
            return
        _put_unless_stopped(frames, _END, stop)

    def run(
        self, source, *, max_frames: int | None = None, realtime: bool | None = None, fps: float | None = None
    ) -> Iterator[FrameResult]:
        """Iterate ``source`` (see :func:`open_source`), yielding a :class:`FrameResult` per
        frame scored or failed to decode. A thread decodes and resizes into a queue of
        ``queue_size`` frames while this one scores.

        ``realtime`` (default: the source is live): frames come at the source's pace and are
        dropped, oldest first, when the queue is full; for a file this plays it at its
        timestamps. Otherwise decoding waits for scoring and no frame is dropped (except
        for ``max_latency_ms``). Drops are counted in each result's ``dropped``.
        ``max_frames``: stop after this many frames read from the source."""
        source = open_source(source, fps)
        realtime = source.live if realtime is None else bool(realtime)
        self.reset()
        frames: queue.Queue = queue.Queue(maxsize=self.queue_size)
        stop = threading.Event()
        decoder = threading.Thread(
            target=self._decode,
            args=(source, frames, stop, realtime, max_frames),
            name="efficientad-fast-decode",
            daemon=True,
        )
        decoder.start()
        score_ms: collections.deque[float] = collections.deque(maxlen=8)
        try:
            while True:
                queued = frames.get()
                if queued is _END:
                    return
                if isinstance(queued, _DecodeFailed):
                    raise queued.exc
                if self.max_latency_ms is not None and score_ms and _newer_frame_waits(frames):
                    # This frame's result would come too late and a newer frame waits: skip it.
                    age_ms = 1e3 * (time.perf_counter() - queued.arrived)
                    if age_ms + float(np.median(score_ms)) > self.max_latency_ms:
                        self._count_drop()
                        continue
                began = time.perf_counter()
                result = self._result(queued.item, queued.image, queued.arrived)
                if result.error is None:
                    score_ms.append(1e3 * (time.perf_counter() - began))
                yield result
        finally:
            stop.set()
            deadline = time.perf_counter() + 5.0
            while decoder.is_alive() and time.perf_counter() < deadline:  # unblock a waiting put
                try:
                    frames.get_nowait()
                except queue.Empty:
                    decoder.join(timeout=0.05)
            if not decoder.is_alive():  # else it is still inside a read; it closes the source itself
                source.close()

    def calibrate(
        self, normal_source, quantile: float = CALIBRATION_QUANTILE, *, max_frames: int | None = None
    ) -> float:
        """Set the threshold to the ``quantile`` (99.5 %) of the smoothed scores of a clip of
        normal frames (every frame scored, none dropped) and return it. The hysteresis off
        threshold keeps its default ratio unless it was given."""
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        values = [
            r.smoothed for r in self.run(normal_source, max_frames=max_frames, realtime=False) if r.smoothed is not None
        ]
        if not values:
            raise ValueError(f"calibration: no frame of {normal_source} could be scored")
        threshold = float(np.quantile(np.asarray(values, dtype=np.float64), quantile))
        self.set_threshold(threshold)
        return threshold
