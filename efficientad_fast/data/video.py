"""A synthetic conveyor video for the live-line scorer (``efficientad_fast.stream``).

``make_synthetic_video(path)`` writes a small video of an indexing conveyor: parts of one of
the built-in synthetic categories (a ``board`` by default; see
:mod:`efficientad_fast.data.synthetic`) lie side by side on a belt, slide one part pitch
into view in ``move_frames`` frames and rest under the camera for ``dwell_frames`` frames,
the belt vibrating by a pixel. A fraction of the parts carry one of the category's defects.
Every frame gets its own camera noise (Gaussian pixel noise and a brightness flicker), so
consecutive frames of a resting part differ as a real camera's do, and a few frames
(``glitch_rate``) carry a one-frame camera glitch: a flash of light, or a band of rows torn
sideways as a lost packet or a rolling shutter leaves it. Glitches are not defects (their
frames are labelled by the part in view): they are the single-frame events an inspection
should not stop the line for, which temporal smoothing is there to ignore.

Beside the video, ``<video path>.labels.csv`` holds the per-frame ground truth::

    frame,defective,part,glitch
    0,0,-1,0
    ...

``defective`` is 1 when any pixel of a defect is in view; ``part`` is the part whose
defect is in view, else the part under the frame's centre (-1: the empty belt before the
first part), so the recall of defective *parts* can be counted; ``glitch`` is 1 on the
frames with a camera glitch. When a part rests, the frame equals a ``render_synthetic`` image of the category
(plus the camera), so a model trained on the synthetic dataset at the frame size sees
familiar images there; the sliding frames show two half parts.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from .._checkpoint import atomic_files
from .._optional import require
from .synthetic import SYNTHETIC_CATEGORIES, render_synthetic

# Container suffix -> codec: MJPEG codes every frame on its own (a damaged frame damages
# only itself); H.264 is what IP cameras send.
VIDEO_CODECS = {".avi": "mjpeg", ".mkv": "mjpeg", ".mov": "mjpeg", ".mp4": "h264"}
_BELT = (0.227, 0.227, 0.251)  # the board's bench colour: the belt between parts


def require_av():
    """The ``av`` module (PyAV), or an ImportError saying how to install the ``[video]`` extra."""
    return require("av", "video")


def labels_path(video: str | os.PathLike) -> Path:
    """Where :func:`make_synthetic_video` writes the ground truth of ``video``."""
    return Path(f"{os.fspath(video)}.labels.csv")


def read_video_labels(video: str | os.PathLike) -> list[dict]:
    """The rows of ``<video>.labels.csv``: [{"frame", "defective", "part", "glitch"}: int, ...]
    (``frame`` and ``defective`` required; ``defective`` 0 or 1; a frame listed once). A
    spreadsheet's byte-order mark is read past; ValueError names the file and line."""
    path = labels_path(video)
    if not path.is_file():
        raise FileNotFoundError(f"no ground truth {path} beside the video {video}")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [name for name in ("frame", "defective") if name not in header]
    if missing:
        raise ValueError(f"{path}: the header {','.join(header) or '(none)'} lacks {', '.join(missing)}")
    seen: dict[int, int] = {}
    numbers: list[dict[str, int]] = []
    for line, text in enumerate(rows, 2):
        try:
            row = {key: int(value) for key, value in text.items()}
        except (TypeError, ValueError):  # a non-number, or a row with fewer fields (None)
            raise ValueError(f"{path}, line {line}: every field must be a whole number, got {text}") from None
        if row["defective"] not in (0, 1) or row["frame"] < 0:
            raise ValueError(f"{path}, line {line}: need frame >= 0 and defective 0 or 1, got {row}")
        if seen.setdefault(row["frame"], line) != line:
            raise ValueError(
                f"{path}, line {line}: frame {row['frame']} is listed again (first on line {seen[row['frame']]})"
            )
        numbers.append(row)
    return numbers


def _belt_positions(
    frames: int, frame_size: int, move_frames: int, dwell_frames: int, rng: np.random.Generator
) -> np.ndarray:
    """Left edge of the camera's window on the belt, in pixels, for each frame: part p rests
    at p * frame_size; it slides in from the previous rest position in ``move_frames``
    frames (eased: slow start and stop), then rests ``dwell_frames`` frames, jittering by
    up to a pixel."""
    cycle = move_frames + dwell_frames
    positions = np.empty(frames, dtype=np.int64)
    for t in range(frames):
        part, phase = divmod(t, cycle)
        if phase < move_frames:
            progress = 0.5 - 0.5 * math.cos(math.pi * (phase + 1) / (move_frames + 1))
            positions[t] = round((part - 1 + progress) * frame_size)
        else:
            positions[t] = part * frame_size + int(rng.integers(-1, 2))
    return positions


def _glitch(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A one-frame camera glitch: a flash (the frame overexposed) or a band of rows shifted
    sideways (a torn frame)."""
    if rng.random() < 0.5:
        return frame * rng.uniform(1.5, 1.9) + 0.1
    size = frame.shape[0]
    height = int(rng.integers(size // 8, size // 4 + 1))
    top = int(rng.integers(0, size - height + 1))
    torn = frame.copy()
    torn[top : top + height] = np.roll(frame[top : top + height], int(rng.integers(size // 8, size // 3 + 1)), axis=1)
    return torn


def _check_video_settings(
    category, defects, frames, frame_size, fps, move_frames, dwell_frames, defect_fraction, glitch_rate, noise
) -> tuple:
    """ValueError for settings :func:`make_synthetic_video` cannot draw; the defects to draw from."""
    if category not in SYNTHETIC_CATEGORIES:
        raise ValueError(f"unknown synthetic category {category!r}; choose from {sorted(SYNTHETIC_CATEGORIES)}")
    allowed = SYNTHETIC_CATEGORIES[category]["defects"]
    defects = tuple(allowed if defects is None else defects)
    if not defects or any(d not in allowed for d in defects):
        raise ValueError(f"category {category!r} has the defects {allowed}, got {defects}")
    if frames < 1 or frame_size < 64 or fps <= 0 or move_frames < 0 or dwell_frames < 1:
        raise ValueError(
            f"need frames >= 1, frame_size >= 64, fps > 0, move_frames >= 0, dwell_frames >= 1; "
            f"got {frames}, {frame_size}, {fps}, {move_frames}, {dwell_frames}"
        )
    if not (0.0 <= defect_fraction <= 1.0 and 0.0 <= glitch_rate <= 1.0) or noise < 0:
        raise ValueError(
            f"defect_fraction and glitch_rate must be in [0, 1] and noise >= 0, "
            f"got {defect_fraction}, {glitch_rate}, {noise}"
        )
    return defects


def _belt_strip(category: str, seed: int, kinds: list, size: int, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The belt: one strip of parts side by side (part p at columns (p+1)*W .. (p+2)*W), with
    an empty part of belt before the first one; the defect masks laid out alike. ``margin``:
    belt pixels around each part (drawn smaller, centred in its W x W slot)."""
    strip = np.empty((size, (len(kinds) + 1) * size, 3), dtype=np.float32)
    strip_mask = np.zeros((size, (len(kinds) + 1) * size), dtype=bool)
    strip[:] = _BELT
    inner = size - 2 * margin
    for p, defect in enumerate(kinds):
        image, mask = render_synthetic(category, seed, "video", defect, p, size)
        if margin:
            image, mask = _smaller(image, inner), _smaller(mask.astype(np.float32), inner) > 0.5
        left = (p + 1) * size + margin
        strip[margin : margin + inner, left : left + inner] = image
        strip_mask[margin : margin + inner, left : left + inner] = mask
    return strip, strip_mask


def _smaller(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (H, W[, 3]) float in [0, 1] resized to ``side`` x ``side`` (bilinear)."""
    from PIL import Image

    channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[-1])]
    resized = [
        np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BILINEAR))
        for c in channels
    ]
    return resized[0] if image.ndim == 2 else np.stack(resized, axis=-1)


def _part_in_view(visible: np.ndarray, start: int, size: int) -> int:
    """The part under the frame's centre, unless a defect is in view: then its part (a
    defective part sliding out still shows its defect at the frame's edge)."""
    part = (start + size // 2) // size - 1
    if visible.any():
        first = start // size  # strip columns of the two parts in view
        split = (first + 1) * size - start
        part = first - 1 if visible[:, :split].sum() >= visible[:, split:].sum() else first
    return int(part)


def _video_stream(container, codec: str, fps: float, size: int):
    """The video stream of a square ``size`` video at ``fps``."""
    stream = container.add_stream(codec, rate=round(fps) if float(fps).is_integer() else fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    if codec == "mjpeg":
        stream.options = {"qscale": "3"}  # good quality: compression should not look like defects
    return stream


def make_synthetic_video(
    path: str | os.PathLike,
    category: str = "board",
    *,
    frames: int = 240,
    frame_size: int = 128,
    fps: float = 25.0,
    move_frames: int = 3,
    dwell_frames: int = 9,
    defect_fraction: float = 0.3,
    defects=None,
    noise: float = 0.02,
    glitch_rate: float = 0.04,
    seed: int = 0,
    codec: str | None = None,
    empty_belt: bool = False,
    part_margin: int = 0,
) -> Path:
    """Write a synthetic conveyor video (see the module docstring) and its labels CSV.

    Args:
        path: the video file; the suffix picks the container and, unless ``codec`` is
            given, the codec (:data:`VIDEO_CODECS`: .avi/.mkv/.mov MJPEG, .mp4 H.264).
        category: a synthetic category (``board``, ``weave``; the photo textures need
            scikit-image).
        frames, frame_size, fps: length, square frame side in pixels (>= 64) and frame rate.
        move_frames, dwell_frames: frames a part takes to slide in, and to rest in view.
        defect_fraction: share of parts with a defect (drawn per part from ``seed``).
        defects: the defect types to draw from (default: all of the category's).
        noise: standard deviation of the per-frame pixel noise (images in [0, 1]).
        glitch_rate: share of frames with a one-frame camera glitch (flash or torn rows).
        seed: same seed and arguments give the same frames and labels.
        empty_belt: the belt moves as usual but carries no part (every frame's ``part`` is
            -1): the clip a part tracker learns the empty belt from
            (:meth:`efficientad_fast.stream.Belt.learn`).
        part_margin: pixels of belt around each part (drawn smaller in its frame-sized
            slot), so that parts which fill their image, as the textures do, are apart on
            the belt: a part tracker sees touching parts as one.

    Returns the video's path; the labels are at :func:`labels_path` of it.
    """
    av = require_av()
    path = Path(path)
    defects = _check_video_settings(
        category, defects, frames, frame_size, fps, move_frames, dwell_frames, defect_fraction, glitch_rate, noise
    )
    codec = codec or VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(
            f"cannot tell the codec from the suffix of {path}; use one of {sorted(VIDEO_CODECS)} or pass codec="
        )
    rng = np.random.default_rng([seed, 7])
    positions = _belt_positions(frames, frame_size, move_frames, dwell_frames, rng)
    n_parts = int(positions.max()) // frame_size + 2
    kinds = [
        defects[int(rng.integers(len(defects)))] if rng.random() < defect_fraction else None for _ in range(n_parts)
    ]
    size = frame_size
    if not 0 <= part_margin < size // 4:
        raise ValueError(
            f"part_margin must be from 0 to {size // 4 - 1} pixels (a quarter of frame_size), got {part_margin}"
        )
    strip, strip_mask = _belt_strip(category, seed, kinds, size, int(part_margin))
    if empty_belt:
        strip[:], strip_mask[:] = _BELT, False

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    # The video and its labels appear together, whole, or not at all.
    with atomic_files(path, labels_path(path)) as (video_file, labels_file):
        container = av.open(os.fspath(video_file), "w")
        try:
            stream = _video_stream(container, codec, fps, size)
            for t, left in enumerate(positions):
                start = int(left) + size  # the strip starts with the empty belt
                frame = strip[:, start : start + size]
                visible = strip_mask[:, start : start + size]
                flicker = 1.0 + rng.uniform(-0.03, 0.03)
                frame = frame * flicker + noise * rng.standard_normal(frame.shape, dtype=np.float32)
                glitch = rng.random() < glitch_rate
                if glitch:
                    frame = _glitch(frame, rng)
                pixels = np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
                rows.append(
                    {
                        "frame": t,
                        "defective": int(visible.any()),
                        "part": -1 if empty_belt else _part_in_view(visible, start, size),
                        "glitch": int(glitch),
                    }
                )
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
        with open(labels_file, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["frame", "defective", "part", "glitch"])
            writer.writeheader()
            writer.writerows(rows)
    return path


__all__ = ["VIDEO_CODECS", "labels_path", "make_synthetic_video", "read_video_labels", "require_av"]
