"""Live inspection of a line: score a stream of frames (a video file, a folder of images, a
camera or an RTSP URL), smooth the scores over time and raise alarms, with a bounded queue
between decoding and scoring so memory and latency stay bounded.

    from efficientad_fast import load
    from efficientad_fast.stream import Inspector

    inspector = Inspector(load("model.pt"), smoothing="kofn")      # threshold: the q_b level
    inspector.calibrate("normal_clip.mp4")                          # or: from normal frames
    for result in inspector.run("rtsp://camera/stream"):
        if result.alarm:
            ...

EfficientAD scores each image on its own; on a line a defect stays in view for several
frames while camera noise, vibration and motion come and go from one frame to the next.
The smoothers trade a few frames of latency for fewer false alarms:

    none        the raw score against the threshold; latency 0 frames.
    ema         s_t = a x_t + (1 - a) s_(t-1); alarm when s_t > threshold. Mean delay
                (1 - a) / a frames (1.5 at the default a = 0.4).
    kofn        alarm when at least k of the last n raw scores exceed the threshold; the
                smoothed score is the k-th largest of them. Raises k - 1 frames late and
                holds up to n - k frames after the defect left (default k=3 of n=5: 2 and 2).
    hysteresis  alarm on when the raw score exceeds the threshold, off only when it drops
                below a lower off threshold (default 0.8 x threshold): no flicker around the
                threshold; latency 0 frames to raise, holds while the score stays above off.

``map_alpha`` adds a per-pixel EMA of the anomaly map before the image score is taken (for a
static camera, where pixel (i, j) of consecutive frames sees the same place): noise that
moves from frame to frame averages out, a defect that stays put does not. Mean delay
(1 - map_alpha) / map_alpha frames, on top of the smoother's.

The threshold applies to (smoothed) image scores, which are maxima of the calibrated map:
by default the model's image threshold (calibration sets it from held-out normal images'
scores), else the map's q_b level (:func:`efficientad_fast.heatmaps.default_threshold`,
0.1); :meth:`Inspector.calibrate` sets it to the 99.5 % quantile of the smoothed scores of a
clip of normal frames, which also accounts for the camera and the smoother.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fractions
import json
import math
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ._checkpoint import atomic_write_text, save_figure
from .data import DataError, find_images, open_image, to_rgb_array
from .data.video import VIDEO_CODECS, require_av
from .heatmaps import captioned, default_threshold, heatmap_overlay, save_png
from .inference import FastPredictor
from .model import EfficientAD

SMOOTHERS = ("none", "ema", "kofn", "hysteresis")
CALIBRATION_QUANTILE = 0.995
# URL schemes of streams that do not wait for the reader (frames are dropped when scoring lags).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "rtp", "srt", "tcp", "http", "https")


# -- smoothers ----------------------------------------------------------------------------


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
        if not (isinstance(k, int) and isinstance(n, int) and 1 <= k <= n):
            raise ValueError(f"kofn needs integers 1 <= k <= n, got k={k!r}, n={n!r}")
        self.threshold = float(threshold)
        self.k, self.n = k, n
        self.latency_frames = float(k - 1)
        self._window: collections.deque[float] = collections.deque(maxlen=n)

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


def make_smoother(name: str, threshold: float, *, ema_alpha: float = 0.4, k: int = 3, n: int = 5,
                  off_threshold: float | None = None):
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


# -- sources ------------------------------------------------------------------------------


@dataclass
class SourceFrame:
    """One frame as a source delivers it: an RGB image (uint8 (H, W, 3) array or a PIL
    image), or the error that kept it from being decoded."""

    index: int
    time_s: float | None
    image: object = None
    error: str | None = None


class FrameSource:
    """Frames in order. ``live``: the source does not wait for the reader (a camera), so
    frames that come while scoring lags are dropped; a file waits."""

    live = False
    name = "frames"

    def __iter__(self) -> Iterator[SourceFrame]:
        raise NotImplementedError

    def open(self) -> FrameSource:
        """Make sure the source can be read, before any output exists (a video file that is
        not one, a camera that is not there fail here). Returns the source."""
        return self

    def close(self) -> None:
        """Release the file or device (the iterator also does when it ends)."""


class ArraySource(FrameSource):
    """Frames held in memory (uint8 (H, W, 3) arrays or PIL images), at ``fps`` for the
    timestamps (None: no timestamps)."""

    def __init__(self, frames: Iterable, fps: float | None = None, live: bool = False) -> None:
        self.frames, self.fps, self.live = frames, fps, live
        self.name = f"{type(frames).__name__} of frames"

    def __iter__(self) -> Iterator[SourceFrame]:
        for i, image in enumerate(self.frames):
            yield SourceFrame(i, i / self.fps if self.fps else None, image)


class FolderSource(FrameSource):
    """The images under a folder (and its subfolders) in name order. A file that cannot be
    read is reported with its index and the stream goes on. Timestamps: index / fps when
    ``fps`` is given, else seconds since the first image was read."""

    def __init__(self, folder: str | os.PathLike, fps: float | None = None) -> None:
        self.paths = find_images(folder, "frame")
        self.fps = fps
        self.name = os.fspath(folder)

    def __iter__(self) -> Iterator[SourceFrame]:
        started = time.perf_counter()
        for i, path in enumerate(self.paths):
            stamp = i / self.fps if self.fps else time.perf_counter() - started
            try:
                yield SourceFrame(i, stamp, open_image(path, "frame"))
            except (DataError, OSError) as exc:  # corrupt, truncated, vanished
                yield SourceFrame(i, stamp, None, f"{path.name}: {exc}")


class VideoSource(FrameSource):
    """A video file, camera device or stream URL read with PyAV (FFmpeg), with each frame's
    timestamp. A packet that fails to decode is reported with its frame index and decoding
    goes on with the next one.

    ``target``: a file path; a URL (rtsp://, http://, ...; RTSP over TCP); ``/dev/videoN``
    or a camera number N (Video4Linux2, Linux). URLs and cameras are live."""

    def __init__(self, target: str | os.PathLike, live: bool | None = None) -> None:
        self.av = require_av()
        target = os.fspath(target)
        self.format, self.options = None, {}
        if re.fullmatch(r"\d+", target):
            target = f"/dev/video{target}"
        scheme = target.split("://", 1)[0].lower() if "://" in target else ""
        if target.startswith("/dev/video"):
            self.format = "v4l2"
        elif scheme in ("rtsp", "rtsps"):
            self.options = {"rtsp_transport": "tcp"}  # no lost UDP packets, no smeared frames
        elif not scheme and not Path(target).is_file():
            raise FileNotFoundError(f"no video file {target}")
        self.target = self.name = target
        self.live = bool(self.format or scheme in LIVE_SCHEMES) if live is None else live
        self._container = None

    def open(self) -> VideoSource:
        """Open the container now (the iterator reads from it); ValueError when FFmpeg cannot
        or it holds no video stream."""
        if self._container is None:
            try:
                container = self.av.open(self.target, format=self.format, options=self.options, timeout=10.0)
            except self.av.error.FFmpegError as exc:
                raise ValueError(f"cannot open the video source {self.target}: {exc.strerror or exc}") from exc
            if not container.streams.video:
                container.close()
                raise ValueError(f"{self.target} holds no video stream")
            self._container = container
        return self

    def __iter__(self) -> Iterator[SourceFrame]:
        av = self.av
        container = self.open()._container
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = 0
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as exc:  # the container itself is broken here: stop
                    yield SourceFrame(index, None, None, f"reading {self.target} failed: {exc}")
                    break
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:  # one damaged frame: report it, go on
                    stamp = float(packet.pts * packet.time_base) if packet.pts is not None else None
                    yield SourceFrame(index, stamp, None, f"cannot decode frame {index}: {exc}")
                    index += 1
                    continue
                for frame in frames:
                    yield SourceFrame(index, frame.time, frame.to_ndarray(format="rgb24"))
                    index += 1
        finally:
            self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def check_fps(fps) -> None:
    """ValueError/TypeError unless ``fps`` is None or a finite number > 0 (NaN would reach the
    timestamps and the JSON, a negative rate the video encoder)."""
    if fps is None:
        return
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise TypeError(f"fps must be a number, got {type(fps).__name__}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps}")


def open_source(source, fps: float | None = None) -> FrameSource:
    """A :class:`FrameSource` for ``source``: a FrameSource (returned as it is), a folder of
    images, a video file, a URL, a camera (``/dev/videoN`` or its number N), or a list of
    frames (arrays or PIL images; ``fps`` gives their timestamps)."""
    check_fps(fps)
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if "://" not in text and Path(text).is_dir():
            return FolderSource(text, fps)
        return VideoSource(text)
    if isinstance(source, (list, tuple)):
        return ArraySource(source, fps)
    raise TypeError(f"source must be a path, URL, camera number, list of frames or FrameSource, "
                    f"got {type(source).__name__}")


def prepare_frame(image, size: tuple[int, int]) -> np.ndarray:
    """float32 (3, H, W) in [0, 1] at the model's ``size``, resized as ``predict`` resizes
    files (:func:`efficientad_fast.data.to_rgb_array`): RGB uint8 (H, W, 3) arrays and PIL
    images."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a frame array must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"a frame must be a uint8 (H, W, 3) array or a PIL image, got {type(image).__name__}")
    return to_rgb_array(image, size)


# -- results and the inspector ------------------------------------------------------------


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
        row = {"frame": self.frame, "time_s": _rounded(self.time_s), "score": _rounded(self.score),
               "smoothed": _rounded(self.smoothed), "alarm": self.alarm,
               "latency_ms": round(self.latency_ms, 3), "dropped": self.dropped}
        if self.error is not None:
            row["error"] = self.error
        return row


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


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

    def __init__(self, model: EfficientAD, smoothing: str = "ema", threshold: float | None = None, *,
                 image_size: int = 256, ema_alpha: float = 0.4, k: int = 3, n: int = 5,
                 off_threshold: float | None = None, map_alpha: float | None = None, queue_size: int = 2,
                 max_latency_ms: float | None = None, predictor=None) -> None:
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
                raise ValueError("the model is not calibrated (no map quantiles): pass threshold= or calibrate it")
        if not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold}")
        if map_alpha is not None and not 0.0 < map_alpha <= 1.0:
            raise ValueError(f"map_alpha must be in (0, 1] or None, got {map_alpha}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        if max_latency_ms is not None and not max_latency_ms > 0:
            raise ValueError(f"max_latency_ms must be > 0, got {max_latency_ms}")
        self.smoothing = smoothing
        self._settings = dict(ema_alpha=ema_alpha, k=k, n=n, off_threshold=off_threshold)
        self.smoother = make_smoother(smoothing, float(threshold), **self._settings)
        self.model = model
        self.size = (image_size, image_size)
        if predictor is None:
            predictor = FastPredictor(model, 1, image_size, input_dtype=torch.float32, warmup=1)
        self.predictor = predictor
        self.map_alpha = map_alpha
        self.queue_size = queue_size
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
            return FrameResult(item.index, item.time_s, None, None, False,
                               1e3 * (time.perf_counter() - arrived), self.dropped, item.error or "no image")
        raw, amap = self.score_frame(image)
        value = raw if self.map_alpha is None else float(amap.max())
        smoothed, alarm = self.smoother.update(value)
        return FrameResult(item.index, item.time_s, raw, smoothed, bool(alarm),
                           1e3 * (time.perf_counter() - arrived), self.dropped, image=image, anomaly_map=amap)

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

    def _decode(self, source: FrameSource, frames: queue.Queue, stop: threading.Event, realtime: bool,
                max_frames: int | None) -> None:
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

    def run(self, source, *, max_frames: int | None = None, realtime: bool | None = None,
            fps: float | None = None) -> Iterator[FrameResult]:
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
        decoder = threading.Thread(target=self._decode, args=(source, frames, stop, realtime, max_frames),
                                   name="efficientad-fast-decode", daemon=True)
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

    def calibrate(self, normal_source, quantile: float = CALIBRATION_QUANTILE, *,
                  max_frames: int | None = None) -> float:
        """Set the threshold to the ``quantile`` (99.5 %) of the smoothed scores of a clip of
        normal frames (every frame scored, none dropped) and return it. The hysteresis off
        threshold keeps its default ratio unless it was given."""
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        values = [r.smoothed for r in self.run(normal_source, max_frames=max_frames, realtime=False)
                  if r.smoothed is not None]
        if not values:
            raise ValueError(f"calibration: no frame of {normal_source} could be scored")
        threshold = float(np.quantile(np.asarray(values, dtype=np.float64), quantile))
        self.set_threshold(threshold)
        return threshold


# -- figures against ground truth ---------------------------------------------------------


def replay(scores, smoother) -> tuple[list[float], list[bool]]:
    """Run a fresh ``smoother`` over a sequence of raw scores: (smoothed, alarms)."""
    smoother.reset()
    pairs = [smoother.update(s) for s in scores]
    return [p[0] for p in pairs], [bool(p[1]) for p in pairs]


def alarm_figures(alarms, labels: list[dict]) -> dict:
    """How alarms compare with the ground truth of :func:`efficientad_fast.data.make_synthetic_video`
    (rows with frame, defective and part): false alarms per 1000 normal frames (frames in
    alarm, and alarm onsets, where no defect is in view) and the recall of defective parts
    (a part counts as found when the alarm is on in any frame of its pass, the frames whose
    ``part`` it is, other than frames with a camera ``glitch``: an alarm the glitch raised
    did not find the defect)."""
    alarms = np.asarray(alarms, dtype=bool)
    if len(alarms) != len(labels):
        raise ValueError(f"{len(alarms)} alarms for {len(labels)} labelled frames")
    defective = np.array([row["defective"] for row in labels], dtype=bool)
    part = np.array([row["part"] for row in labels])
    glitch = np.array([row.get("glitch", 0) for row in labels], dtype=bool)
    onsets = alarms & ~np.concatenate([[False], alarms[:-1]])
    normal = int((~defective).sum())
    bad_parts = sorted({int(p) for p in part[defective] if p >= 0})
    found = [p for p in bad_parts if (alarms & ~glitch)[part == p].any()]
    return {
        "normal_frames": normal,
        "false_alarm_frames": int((alarms & ~defective).sum()),
        "false_alarms_per_1000": 1000.0 * (alarms & ~defective).sum() / max(1, normal),
        "false_onsets_per_1000": 1000.0 * (onsets & ~defective).sum() / max(1, normal),
        "defective_parts": len(bad_parts),
        "found_parts": len(found),
        "part_recall": len(found) / len(bad_parts) if bad_parts else float("nan"),
    }


def threshold_for_recall(scores, labels: list[dict], smoothing: str, recall: float, **settings) -> float:
    """The highest threshold at which ``smoothing`` over the raw ``scores`` still finds at
    least ``recall`` of the defective parts (so smoothers can be compared at equal recall)."""
    smoothed, _ = replay(scores, make_smoother(smoothing, 0.0, **settings))
    for value in sorted(set(smoothed), reverse=True):
        threshold = float(np.nextafter(value, -np.inf))  # the alarm is on for smoothed >= value
        figures = alarm_figures(replay(scores, make_smoother(smoothing, threshold, **settings))[1], labels)
        if figures["part_recall"] >= recall - 1e-9:
            return threshold
    raise ValueError(f"{smoothing}: no threshold reaches a part recall of {recall}")


def compare_smoothers(scores, labels: list[dict], *, normal_scores=None, recall: float | None = None,
                      smoothers=SMOOTHERS, **settings) -> list[dict]:
    """Each smoother over the same raw ``scores`` (a labelled stream, see
    :func:`alarm_figures`), at a threshold set one of two ways: calibrated, the 99.5 %
    quantile of its smoothed ``normal_scores`` (raw scores of a normal clip, as
    :meth:`Inspector.calibrate` does), or at equal ``recall`` of defective parts
    (:func:`threshold_for_recall`). Rows: smoothing, latency_frames, threshold and the
    figures of :func:`alarm_figures`."""
    if (normal_scores is None) == (recall is None):
        raise ValueError("pass either normal_scores (calibrated thresholds) or recall (equal recall)")
    rows = []
    for name in smoothers:
        if recall is not None:
            threshold = threshold_for_recall(scores, labels, name, recall, **settings)
        else:
            smoothed, _ = replay(normal_scores, make_smoother(name, 0.0, **settings))
            threshold = float(np.quantile(np.asarray(smoothed, dtype=np.float64), CALIBRATION_QUANTILE))
        smoother = make_smoother(name, threshold, **settings)
        rows.append({"smoothing": name, "latency_frames": smoother.latency_frames, "threshold": threshold,
                     **alarm_figures(replay(scores, smoother)[1], labels)})
    return rows


def smoother_table(rows: list[dict]) -> str:
    """Markdown table of :func:`compare_smoothers` rows."""
    lines = ["| smoothing | latency (frames) | threshold | false alarm frames / 1000 normal | "
             "false alarm onsets / 1000 normal | defective parts found |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['smoothing']} | {r['latency_frames']:.1f} | {r['threshold']:.4g} | "
                     f"{r['false_alarms_per_1000']:.1f} | {r['false_onsets_per_1000']:.1f} | "
                     f"{r['found_parts']}/{r['defective_parts']} ({100 * r['part_recall']:.0f} %) |")
    return "\n".join(lines)


def plot_stream(frames_jsonl: str | os.PathLike, path: str | os.PathLike, labels: list[dict] | None = None,
                threshold: float | None = None) -> Path:
    """A PNG of a watch run: raw and smoothed scores per frame, the threshold, alarms, and
    (with ``labels``) the frames where a defect is in view shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(frames_jsonl).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("score") is not None]
    frames = [r["frame"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    if labels:
        for row in labels:
            if row["defective"]:
                ax.axvspan(row["frame"] - 0.5, row["frame"] + 0.5, color="tab:red", alpha=0.12, lw=0)
    ax.plot(frames, [r["score"] for r in rows], lw=0.8, color="0.55", label="raw score")
    ax.plot(frames, [r["smoothed"] for r in rows], lw=1.4, color="tab:blue", label="smoothed")
    if threshold is not None:
        ax.axhline(threshold, color="tab:orange", ls="--", lw=1, label="threshold")
    on = [r for r in rows if r["alarm"]]
    ax.scatter([r["frame"] for r in on], [r["smoothed"] for r in on], s=8, color="tab:red", label="alarm", zorder=3)
    ax.set_xlabel("frame" + (" (red band: a defect in view)" if labels else ""))
    ax.set_ylabel("image score")
    ax.legend(loc="upper right", fontsize=8, ncol=4)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


# -- the watch job ------------------------------------------------------------------------


def _percentile(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _stats(latencies: list[float], scored: int, seconds: float) -> dict:
    return {"fps": scored / seconds if seconds > 0 else None,
            "latency_p50_ms": _percentile(latencies, 50), "latency_p99_ms": _percentile(latencies, 99)}


def check_video_path(path: str | os.PathLike) -> str:
    """The codec for an annotated video at ``path`` (from its suffix), after making sure its
    folder can be written: ValueError/PermissionError that name the path, before any work."""
    from ._checkpoint import writable_folder

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--save-video: {path} is a folder; name a video file")
    codec = VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"--save-video: cannot tell the codec from {path.name}; use one of {sorted(VIDEO_CODECS)}")
    try:
        writable_folder(path.parent)
    except PermissionError as exc:
        raise PermissionError(f"--save-video {path}: {exc}") from exc
    return codec


class _VideoWriter:
    """The annotated video: the frame beside its heatmap, a red border while the alarm is on.
    Written under a temporary name beside ``path`` and renamed on :meth:`close` (also after
    Ctrl-C, with the frames written so far), so ``path`` never holds a cut file."""

    def __init__(self, path: Path, fps: float) -> None:
        from ._checkpoint import atomic_files

        self.av = require_av()
        self.codec, self.fps = check_video_path(path), fps
        self.files = contextlib.ExitStack()
        (self.temporary,) = self.files.enter_context(atomic_files(path))  # refuses a folder
        self.container, self.stream = None, None

    def write(self, picture: np.ndarray, alarm: bool) -> None:
        if alarm:
            picture = picture.copy()
            picture[:4], picture[-4:], picture[:, :4], picture[:, -4:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
        height, width = picture.shape[:2] - np.array(picture.shape[:2]) % 2  # even sides for 4:2:0
        picture = np.ascontiguousarray(picture[:height, :width])
        if self.container is None:
            self.container = self.av.open(os.fspath(self.temporary), "w")
            # Encoders take a rational rate: 29.97 stays 30000/1001, 0.5 stays 1/2.
            self.stream = self.container.add_stream(self.codec, rate=fractions.Fraction(self.fps).limit_denominator(1001))
            self.stream.width, self.stream.height = int(width), int(height)
            self.stream.pix_fmt = "yuvj420p" if self.codec == "mjpeg" else "yuv420p"
        for packet in self.stream.encode(self.av.VideoFrame.from_ndarray(picture, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        """Finish the file and rename it into place (nothing is written when no frame was)."""
        if self.container is None:
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
        except BaseException as exc:
            self.files.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary file
            raise
        finally:
            self.container = None
        self.files.close()


def watch(inspector: Inspector, source, out: str | os.PathLike, *, max_frames: int | None = None,
          realtime: bool | None = None, save_video: str | os.PathLike | None = None, fps: float | None = None,
          progress: bool = True) -> dict:
    """Run ``inspector`` over ``source`` and write ``out/frames.jsonl`` (one JSON line per
    frame scored or failed: frame, time_s, score, smoothed, alarm, latency_ms, dropped,
    and error when it failed), ``out/alarms/frame_<index>.png`` (the heatmap overlay at each
    alarm onset), optionally the annotated video, and ``out/summary.json``; prints a live
    line (fps, latency p50/p99, alarms) to stderr when ``progress``. Every line is flushed
    as it is written, so Ctrl-C (KeyboardInterrupt, re-raised after the summary is
    written) loses nothing. Returns the summary."""
    from ._checkpoint import writable_folder

    # Everything that can be refused is, before any output exists.
    source = open_source(source, fps).open()
    writer = _VideoWriter(Path(save_video), fps or 25.0) if save_video else None
    out = writable_folder(out)
    alarms_dir = out / "alarms"
    alarms_dir.mkdir(exist_ok=True)
    for old in alarms_dir.glob("frame_*.png"):  # a previous run's pictures would read as this run's
        old.unlink()
    latencies: list[float] = []
    summary = {"source": str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__,
               "smoothing": inspector.smoothing, "threshold": inspector.threshold,
               "latency_frames": inspector.latency_frames, "frames": 0, "scored": 0, "errors": 0,
               "alarms": 0, "alarm_frames": 0, "dropped": 0, "interrupted": False, "first_errors": []}
    started = last_print = time.perf_counter()
    was_on = False
    try:
        with open(out / "frames.jsonl", "w") as lines:
            for result in inspector.run(source, max_frames=max_frames, realtime=realtime, fps=fps):
                lines.write(json.dumps(result.to_json()) + "\n")
                lines.flush()
                summary["frames"] += 1
                summary["dropped"] = result.dropped
                if result.error is not None:
                    summary["errors"] += 1
                    if len(summary["first_errors"]) < 10:
                        summary["first_errors"].append({"frame": result.frame, "error": result.error})
                    continue
                summary["scored"] += 1
                latencies.append(result.latency_ms)
                summary["alarm_frames"] += int(result.alarm)
                picture = None
                if result.alarm and not was_on:
                    summary["alarms"] += 1
                    picture = heatmap_overlay(result.image, result.anomaly_map, inspector.map_threshold)
                    save_png(captioned(picture, _alarm_caption(result, inspector)),
                             alarms_dir / f"frame_{result.frame:06d}.png")
                was_on = result.alarm
                if writer is not None:
                    if picture is None:
                        picture = heatmap_overlay(result.image, result.anomaly_map, inspector.map_threshold)
                    writer.write(picture, result.alarm)
                now = time.perf_counter()
                if progress and now - last_print >= 1.0:
                    last_print = now
                    _print_live(summary, _stats(latencies[-200:], summary["scored"], now - started))
    except KeyboardInterrupt:
        summary["interrupted"] = True
        raise
    finally:
        if writer is not None:
            writer.close()
        summary["dropped"] = max(summary["dropped"], inspector.dropped)
        summary["seconds"] = time.perf_counter() - started
        summary.update(_stats(latencies, summary["scored"], summary["seconds"]))
        if progress:
            print(file=sys.stderr)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _alarm_caption(result: FrameResult, inspector: Inspector) -> str:
    """What an alarm picture says about itself: which frame, when, and by how much."""
    when = f" at {result.time_s:.2f} s" if result.time_s is not None else ""
    return (f"frame {result.frame}{when}  score {result.score:.3f}  {inspector.smoothing} {result.smoothed:.3f}"
            f" > threshold {inspector.threshold:.3f}")


def _print_live(summary: dict, stats: dict) -> None:
    fps = stats["fps"] or 0.0
    p50, p99 = stats["latency_p50_ms"] or 0.0, stats["latency_p99_ms"] or 0.0
    print(f"\r[watch] {summary['frames']} frames  {fps:.1f} fps  latency p50 {p50:.0f} ms p99 {p99:.0f} ms  "
          f"alarms {summary['alarms']}  dropped {summary['dropped']}  errors {summary['errors']}   ",
          end="", file=sys.stderr, flush=True)


def format_summary(summary: dict) -> str:
    """The end-of-stream lines ``watch`` prints."""
    fps = summary.get("fps")
    p50, p99 = summary.get("latency_p50_ms"), summary.get("latency_p99_ms")
    lines = [
        f"frames: {summary['frames']} read ({summary['scored']} scored, {summary['errors']} failed to decode), "
        f"{summary['dropped']} dropped",
        f"alarms: {summary['alarms']} (onsets; {summary['alarm_frames']} frames in alarm), smoothing "
        f"{summary['smoothing']} (+{summary['latency_frames']:.1f} frames), threshold {summary['threshold']:.4g}",
        f"speed: {fps:.2f} frames/s, latency p50 {p50:.0f} ms, p99 {p99:.0f} ms" if fps and p50 is not None
        else "speed: no frame scored",
    ]
    for error in summary.get("first_errors", [])[:3]:
        lines.append(f"decode error at frame {error['frame']}: {error['error']}")
    if summary.get("interrupted"):
        lines.append("interrupted (Ctrl-C): everything up to here is written")
    return "\n".join(lines)


__all__ = [
    "ArraySource",
    "CALIBRATION_QUANTILE",
    "EMASmoothing",
    "FolderSource",
    "FrameResult",
    "FrameSource",
    "HysteresisSmoothing",
    "Inspector",
    "KOfNSmoothing",
    "NoSmoothing",
    "SMOOTHERS",
    "SourceFrame",
    "VideoSource",
    "alarm_figures",
    "compare_smoothers",
    "format_summary",
    "make_smoother",
    "open_source",
    "plot_stream",
    "prepare_frame",
    "replay",
    "smoother_table",
    "threshold_for_recall",
    "watch",
]
