"""Where frames come from: a list of arrays, a folder of images, a video file, a camera or a
stream URL, each with its frames' timestamps; :func:`open_source` picks one for a value."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Iterable, Iterator

import numpy as np

from .._checkpoint import require_file
from ..data import DataError, find_images, open_image, to_rgb_array
from ..data.video import require_av

# URL schemes of streams that do not wait for the reader (frames are dropped when scoring lags).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "rtp", "srt", "tcp", "http", "https")


@dataclass
class SourceFrame:
    """One frame as a source delivers it: an RGB image (uint8 (H, W, 3) array or a PIL
    image), or the error that kept it from being decoded."""

    index: int
    time_s: float | None
    image: object = None
    error: str | None = None


READ_TIMEOUT_S = 10.0  # a network source silent this long is given up (PyAV's open/read timeout)


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
    ``fps`` is given, else seconds since the first image was read. Images under a folder of
    ``skip`` (watch's own alarm pictures, when its output lies in the watched folder) are left
    out; ``skipped`` counts them."""

    def __init__(self, folder: str | os.PathLike, fps: float | None = None, skip=()) -> None:
        found = find_images(folder, "frame")
        skipped = [Path(os.path.realpath(s)) for s in skip]
        self.paths = [p for p in found if not any(s in Path(os.path.realpath(p)).parents for s in skipped)]
        self.skipped = len(found) - len(self.paths)
        if not self.paths:
            raise ValueError(f"no images under frame folder {folder} but watch's own pictures")
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
        elif not scheme:
            require_file(target, f"no video file {target}", prefix="video source ")  # a FIFO, a device: say so
        self.target = self.name = target
        self.live = bool(self.format or scheme in LIVE_SCHEMES) if live is None else live
        self._container = None

    def open(self) -> VideoSource:
        """Open the container now (the iterator reads from it); ValueError when FFmpeg cannot
        or it holds no video stream."""
        if self._container is None:
            try:
                container = self.av.open(self.target, format=self.format, options=self.options, timeout=READ_TIMEOUT_S)
            except self.av.error.FFmpegError as exc:
                raise ValueError(f"cannot open the video source {self.target}: {self._reason(exc)}") from exc
            if not container.streams.video:
                container.close()
                raise ValueError(f"{self.target} holds no video stream")
            self._container = container
        return self

    def __iter__(self) -> Iterator[SourceFrame]:
        av = self.av
        container = self.open()._container
        assert container is not None  # open() sets it
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
                    yield SourceFrame(index, None, None, f"reading {self.target} failed: {self._reason(exc)}")
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

    def _reason(self, exc: Exception) -> str:
        """FFmpeg's error in words: its 'Immediate exit requested' is PyAV's read timeout."""
        if isinstance(exc, self.av.error.ExitError):
            return f"no data came for {READ_TIMEOUT_S:g} s (timed out)"
        return str(getattr(exc, "strerror", None) or exc)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


MIN_FPS, MAX_FPS = 1e-3, 1e4  # a frame every 17 minutes to ten thousand a second


def check_fps(fps) -> None:
    """ValueError/TypeError unless ``fps`` is None or a number from MIN_FPS to MAX_FPS (NaN
    would reach the timestamps and the JSON, a negative rate the video encoder, a rate near 0
    timestamps past what the clock can hold)."""
    if fps is None:
        return
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise TypeError(f"fps must be a number, got {type(fps).__name__}")
    if not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
        raise ValueError(f"fps must be a number from {MIN_FPS:g} to {MAX_FPS:g}, got {fps}")


def open_source(source, fps: float | None = None, skip=()) -> FrameSource:
    """A :class:`FrameSource` for ``source``: a FrameSource (returned as it is), a folder of
    images (less those under the folders of ``skip``), a video file, a URL, a camera
    (``/dev/videoN`` or its number N), or a list of frames (arrays or PIL images; ``fps``
    gives their timestamps)."""
    check_fps(fps)
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if "://" not in text and Path(text).is_dir():
            return FolderSource(text, fps, skip)
        return VideoSource(text)
    if isinstance(source, (list, tuple)):
        return ArraySource(source, fps)
    raise TypeError(
        f"source must be a path, URL, camera number, list of frames or FrameSource, got {type(source).__name__}"
    )


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


def prepared_frames(source, size: tuple[int, int]) -> Generator[tuple[int, np.ndarray], None, None]:
    """(frame index, :func:`prepare_frame` of it) for each frame of ``source`` (anything
    :func:`open_source` takes) that decodes, in order; frames that do not are left out. The
    source is closed when the frames end or the generator is closed."""
    opened = open_source(source).open()
    try:
        for item in opened:
            if item.error is None:
                yield item.index, prepare_frame(item.image, size)
    finally:
        opened.close()
