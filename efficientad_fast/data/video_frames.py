"""A video of normal operation as a training set (``train --video``).

:func:`video_training_set` decodes a video of the line running normally (parts entering,
resting and leaving, the empty belt) and writes its frames as a folder dataset::

    OUT/train/good/frame_000000.png ...       the training frames
    OUT/validation/good/frame_000225.png ...  held-out frames, for calibration
    OUT/source.json                           which video and settings the frames came from

Consecutive frames are nearly equal, so a random hold-out would calibrate on near-copies of
training frames and set the thresholds too low: held-out frames are whole blocks of
:data:`BLOCK_FRAMES` consecutive kept frames, the last block of every :data:`HOLDOUT_EVERY`
(a video shorter than that holds out its last tenth). Each frame is written whole
(temporary name + rename) and an existing one is kept, so an interrupted extraction
continues where it stopped; frames of another video or other settings are removed first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .._checkpoint import atomic_files, atomic_write_text, require_file
from .._numbers import whole_number
from .._progress import progress as progress_bar
from ._io import DataError

BLOCK_FRAMES = 25  # kept frames per hold-out block (a second of 25 fps video at --every 1)
HOLDOUT_EVERY = 10  # one block in ten is held out: 10 % of the frames, as for image folders
SPLITS = ("train", "validation")


def _source(video: Path, every: int, max_frames: int | None) -> dict:
    """What the frames in a folder came from: a changed video or setting means other frames."""
    stat = video.stat()
    with open(video, "rb") as f:  # its content, so that a video of the same length is told apart
        head = hashlib.sha256(f.read(2**20)).hexdigest()[:16]
    resolved = str(video.resolve())
    return {
        "video": resolved,
        "bytes": stat.st_size,
        "head_sha256": head,
        "mtime_ns": stat.st_mtime_ns,
        "every": every,
        "max_frames": max_frames,
    }


def _prepare(out: Path, source: dict, log: Callable[[str], None], folders: tuple[str, ...] = SPLITS) -> None:
    """Keep ``out``'s frames (in ``folders``) when they came from ``source``; else start afresh."""
    record = out / "source.json"
    try:
        same = json.loads(record.read_text()) == source if record.is_file() else False
    except (OSError, ValueError):
        same = False
    if not same:
        if any((out / folder).exists() for folder in folders):
            log(f"video frames: {out} holds frames of another video or setting: extracting afresh")
        for folder in folders:
            shutil.rmtree(out / folder, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(source, indent=1))


def _frame_path(out: Path, index: int, kept: int) -> Path:
    split = "validation" if (kept // BLOCK_FRAMES) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else "train"
    return out / split / "good" / f"frame_{index:06d}.png"


def _hold_out_the_end(out: Path) -> int:
    """A video too short for a held-out block: its last tenth (at least one frame) moves to
    validation/. Returns the frames held out."""
    held = sorted((out / "validation" / "good").glob("frame_*.png"))
    if held:
        return len(held)
    train = sorted((out / "train" / "good").glob("frame_*.png"))
    moved = train[len(train) - max(1, len(train) // HOLDOUT_EVERY) :] if len(train) > 1 else []
    (out / "validation" / "good").mkdir(parents=True, exist_ok=True)
    for path in moved:
        os.replace(path, out / "validation" / "good" / path.name)
    return len(moved)


def _write_frames(
    video: Path, path_for: Callable[[int, int], Path | None], progress: bool, limit: int | None = None
) -> int:
    """Decode ``video`` and write frame ``index`` to ``path_for(index, frames kept so far)``
    (None: skip it), whole, keeping a file already there, until ``limit`` frames are kept;
    returns the frames kept."""
    from .video import require_av

    av = require_av()
    kept = 0
    try:
        with av.open(os.fspath(video)) as container:
            if not container.streams.video:
                raise DataError(f"{video} holds no video stream")
            frames = container.decode(container.streams.video[0])
            for index, frame in enumerate(progress_bar(frames, progress, "video frames")):
                if limit is not None and kept >= limit:
                    break
                path = path_for(index, kept)
                if path is None:
                    continue
                if not path.is_file():  # else written whole by an earlier, interrupted extraction
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_files(path) as (temporary,):
                        frame.to_image().convert("RGB").save(temporary, format="PNG")
                kept += 1
    except (av.error.FFmpegError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, av.error.FFmpegError) and exc.filename != os.fspath(video):
            raise  # our own disk (full, read-only), not the video
        raise DataError(f"cannot read the video {video} (after {kept} frames): {exc}") from exc
    return kept


def video_training_set(
    video: str | os.PathLike,
    out: str | os.PathLike,
    every: int = 1,
    max_frames: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write every ``every``-th frame of ``video`` (the first ``max_frames`` of them, or all)
    into the folder dataset ``out`` (see the module docstring; open it with
    ``open_dataset(out, "folder")``) and return ``out``. FileNotFoundError for a missing
    video, ValueError for bad numbers or a video that cannot be decoded or has one frame or none."""
    video = require_file(video, f"no video file {video}", prefix="video ")
    every = whole_number(every, "every")
    limit = None if max_frames is None else whole_number(max_frames, "max_frames")
    if every < 1 or (limit is not None and limit < 2):
        raise ValueError(
            f"every must be >= 1 and max_frames >= 2 (one frame to train, one to calibrate), got {every} and {max_frames}"
        )
    out = Path(out)
    _prepare(out, _source(video, every, limit), log)

    def path_for(index: int, kept: int) -> Path | None:
        if index % every:
            return None
        path = _frame_path(out, index, kept)
        moved = out / "validation" / "good" / path.name  # held out by _hold_out_the_end last time
        return moved if moved.is_file() else path

    kept = _write_frames(video, path_for, progress, limit)
    if kept < 2:
        raise DataError(f"{video} holds {kept} frames (every {every}): training needs at least 2")
    held = _hold_out_the_end(out)
    log(f"video frames: {kept} of {video} (one in {every}), {held} held out for calibration, in {out}")
    return out


def labelled_video_set(
    video: str | os.PathLike, out: str | os.PathLike, progress: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Write the frames of a labelled clip (``<video>.labels.csv`` beside it, as
    :func:`~efficientad_fast.data.make_synthetic_video` writes: ``frame,defective,...``) as a
    labelled folder, ``out/good/`` and ``out/defect/`` (what ``train --threshold-from`` reads),
    and return ``out``. FileNotFoundError without the labels; ValueError when a frame has no
    label or the clip lacks normal or defective frames."""
    from .video import labels_path, read_video_labels

    video = require_file(video, f"no video file {video}", prefix="video ")
    labels = {row["frame"]: row["defective"] for row in read_video_labels(video)}
    out = Path(out)
    _prepare(out, {**_source(video, 1, None), "labels": _source(labels_path(video), 1, None)}, log, ("good", "defect"))

    def path_for(index: int, kept: int) -> Path | None:
        if index not in labels:
            raise DataError(f"{labels_path(video)} has no row for frame {index} of {video}")
        return out / ("defect" if labels[index] else "good") / f"frame_{index:06d}.png"

    _write_frames(video, path_for, progress)
    counts = {name: sum(1 for _ in (out / name).glob("frame_*.png")) for name in ("good", "defect")}
    if not all(counts.values()):
        raise DataError(f"{video}: a threshold needs normal and defective frames, got {counts} (from its labels)")
    log(f"labelled frames: {counts['good']} normal and {counts['defect']} defective of {video}, in {out}")
    return out
