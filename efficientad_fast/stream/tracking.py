"""Parts on a fixed-camera conveyor: which pixels are a part (against a learned image of the
empty belt), and which part each blob of them is from one frame to the next.

    belt = Belt.learn(empty_belt_frames)            # (3, H, W) float frames of the empty belt
    tracker = PartTracker(belt)
    for index, image in enumerate(frames):          # the same (3, H, W) size
        seen, left = tracker.update(index, image)   # boxes of the parts in view; parts that left
    left += tracker.finish()                        # parts still in view when the stream ends

Segmentation works on a grid of at most 64 cells a side (block means of the frame), so it
costs well under a millisecond: a cell is foreground when it differs from the belt by more
than ``contrast`` (or 5 times the belt's own frame-to-frame noise there); small specks are
opened away and each connected blob of at least ``min_area`` of the frame is a part. A frame
that changes almost everywhere (a flash, a torn frame; ``max_area``) is skipped: the parts
in view keep their boxes. Blobs are matched to the parts of the previous frame greedily by
box overlap (IoU), then by nearest centre within ``max_jump`` of the frame's side; a blob
left over is a part entering; a part unseen for ``max_missed`` frames has left (its last box
is where it was last seen). A part seen in fewer than ``min_frames`` frames is dropped as
noise. A blob over where two parts should be (a torn frame) updates neither: they are held
for that frame (up to ``max_missed`` frames; then they are missed). A part going out through
an edge (at it, moving towards it) stays at that edge until it is gone: a blob away from it
is another part, however close (a flash while one part left and the next came in had carried
the first into the second). Touching parts are one blob, hence one part: space parts on the
belt, or score them together.
"""

from __future__ import annotations

import itertools
import math
import os
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from scipy import ndimage

GRID_CELLS = 64  # segmentation grid: at most this many cells a side


@dataclass(frozen=True)
class Box:
    """A part's bounding box in frame pixels: columns x0..x1, rows y0..y1 (ends excluded)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def intersection(self, other: Box) -> Box:
        """The boxes' common part (maybe empty: area 0)."""
        return Box(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1))

    def iou(self, other: Box) -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter.area
        return inter.area / union if union > 0 else 0.0

    def clipped(self, width: int, height: int) -> Box:
        """The part of the box inside a ``width`` x ``height`` frame (maybe empty)."""
        return self.intersection(Box(0, 0, width, height))

    def covers_half(self, other: Box) -> bool:
        """Whether this box covers at least half of ``other`` (a non-empty box)."""
        return other.area > 0 and 2 * self.intersection(other).area >= other.area

    def touches_border(self, width: int, height: int, margin: int) -> bool:
        """Whether the box reaches within ``margin`` pixels of the frame's edge (the part is
        not wholly in view)."""
        return self.x0 <= margin or self.y0 <= margin or self.x1 >= width - margin or self.y1 >= height - margin

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"{what} must be a float (3, H, W) array, got {shape}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ValueError(f"{what} has NaN or infinite values")
    return image


def _cell(shape: tuple[int, ...]) -> int:
    """Pixels per grid cell side for frames of ``shape`` (3, H, W)."""
    return max(1, math.ceil(max(shape[1:]) / GRID_CELLS))


def _grid(image: np.ndarray, cell: int) -> np.ndarray:
    """(3, H // cell, W // cell) block means (the last partial cells dropped)."""
    _, height, width = image.shape
    rows, cols = max(1, height // cell), max(1, width // cell)
    cropped = image[:, : rows * cell, : cols * cell]
    return cropped.reshape(3, rows, cropped.shape[1] // rows, cols, cropped.shape[2] // cols).mean(axis=(2, 4))


@dataclass(frozen=True)
class Belt:
    """The empty belt as the camera sees it, on the segmentation grid: ``image`` (3, h, w)
    the per-cell median over the frames it was learned from, ``noise`` (h, w) their robust
    spread (1.4826 x the median absolute deviation; zeros from a single frame), ``shape``
    the frames' (3, H, W) and ``cell`` the pixels per cell side."""

    image: np.ndarray
    noise: np.ndarray
    shape: tuple[int, int, int]
    cell: int

    @classmethod
    def learn(cls, frames: Iterable[np.ndarray]) -> Belt:
        """A belt from frames of it with no part in view: float (3, H, W) arrays in [0, 1]
        of one size (what :func:`~efficientad_fast.stream.prepare_frame` gives)."""
        grids, shape = [], None
        for image in frames:
            image = _check_image(image, "a belt frame")
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise ValueError(f"belt frames differ in size: {shape} and {image.shape}")
            grids.append(_grid(image, _cell(shape)))
        if shape is None:
            raise ValueError("no frame of the empty belt to learn it from")
        stack = np.stack(grids)
        median = np.median(stack, axis=0)
        noise = 1.4826 * np.median(np.abs(stack - median), axis=0).max(axis=0)
        return cls(median.astype(np.float32), noise.astype(np.float32), (3, shape[1], shape[2]), _cell(shape))

    @classmethod
    def from_source(cls, source, image_size: int, max_frames: int = 50) -> Belt:
        """A belt from the first ``max_frames`` frames of ``source`` (a video, an image
        folder, a list of frames: see :func:`~efficientad_fast.stream.open_source`) of the
        empty belt, resized to the model's ``image_size`` as the scored frames are."""
        from ..data import open_image
        from ..data._io import is_image_file
        from .sources import prepare_frame, prepared_frames

        size = (image_size, image_size)
        if isinstance(source, (str, os.PathLike)) and is_image_file(source) and not os.path.isdir(source):
            return cls.learn([prepare_frame(open_image(source, "belt image"), size)])  # one photo of it
        with closing(prepared_frames(source, size)) as decoded:
            frames = [image for _, image in itertools.islice(decoded, max_frames)]
        if not frames:
            raise ValueError(f"no frame of the empty belt could be read from {source}")
        return cls.learn(frames)


@dataclass
class Track:
    """One part followed through the frames: ``boxes`` {frame: Box} where it was seen."""

    part: int
    first_frame: int
    boxes: dict[int, Box] = field(default_factory=dict)
    missed: int = 0
    held: int = 0  # frames in a row under one blob with another part (see PartTracker.update)
    left: bool = False  # left the view (False: still in view when the stream ended)
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels per frame, from the last two boxes

    @property
    def last_frame(self) -> int:
        return max(self.boxes)

    @property
    def box(self) -> Box:
        return self.boxes[self.last_frame]

    def predicted(self, frame: int) -> Box:
        """Where the part should be at ``frame``, moving on at its last velocity."""
        steps = frame - self.last_frame
        dx, dy = round(self.velocity[0] * steps), round(self.velocity[1] * steps)
        box = self.box
        return Box(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy)


def _edge_shift(before: tuple[int, int], after: tuple[int, int], low: int, high: int) -> float:
    """Shift along one axis of a box from ``before`` (start, end) to ``after``, from an end
    that the frame's edges (within ``low``/``high``) do not clip: an entering or leaving
    part's box grows or shrinks at the edge while its other end moves with the belt."""
    if before[0] > low and after[0] > low:
        return after[0] - before[0]
    if before[1] < high and after[1] < high:
        return after[1] - before[1]
    return (after[0] + after[1] - before[0] - before[1]) / 2


class PartTracker:
    """Follow parts through frames of a fixed camera (see the module docstring).

    Args:
        belt: the empty belt (:meth:`Belt.learn`); frames must have its size.
        contrast: a cell differing from the belt by more than this (0-1 scale, any channel)
            is foreground; at least 5 x the belt's noise there.
        min_area, max_area: a blob smaller than ``min_area`` of the frame is noise; a frame
            whose foreground covers more than ``max_area`` of it is skipped (a flash).
        max_missed: frames a part may go unseen before it counts as left.
        max_jump: how far (share of the frame's longer side) a part's centre may move
            between frames and still be matched when the boxes do not overlap.
        min_frames: a part seen in fewer frames is dropped as noise.
    """

    def __init__(
        self,
        belt: Belt,
        *,
        contrast: float = 0.12,
        min_area: float = 0.02,
        max_area: float = 0.95,
        max_missed: int = 2,
        max_jump: float = 0.6,
        min_frames: int = 2,
    ) -> None:
        if not isinstance(belt, Belt):
            raise TypeError(f"belt must be a Belt (Belt.learn(frames)), got {type(belt).__name__}")
        if not 0 < contrast < 1 or not 0 <= min_area < max_area <= 1:
            raise ValueError(
                f"need 0 < contrast < 1 and 0 <= min_area < max_area <= 1, got {contrast}, {min_area}, {max_area}"
            )
        if max_missed < 1 or min_frames < 1 or not max_jump > 0:
            raise ValueError(
                f"need max_missed >= 1, min_frames >= 1, max_jump > 0; got {max_missed}, {min_frames}, {max_jump}"
            )
        self.belt = belt
        self.edge = 3 * belt.cell  # a box this close to the frame's edge is clipped by it
        self.limit = np.maximum(contrast, 5.0 * belt.noise)
        self.min_area, self.max_area = min_area, max_area
        self.max_missed, self.max_jump, self.min_frames = int(max_missed), max_jump, int(min_frames)
        self.active: list[Track] = []
        self.next_part = 0
        self.skipped_frames = 0
        self._last_frame = -(2**62)

    def blobs(self, image: np.ndarray) -> list[Box] | None:
        """The boxes of the parts in ``image`` (frame pixels), largest first; None for a
        frame that changed almost everywhere (skipped)."""
        image = _check_image(image, "a frame")
        if image.shape != self.belt.shape:
            raise ValueError(f"frames must have the belt's size {self.belt.shape}, got {image.shape}")
        grid = _grid(image, self.belt.cell)
        mask = np.abs(grid - self.belt.image).max(axis=0) > self.limit
        if mask.mean() > self.max_area:
            return None
        # Close small gaps and fill holes (a part's inside may match the belt's colour in
        # places: one part, not several pieces), then open away specks of noise.
        # Padded with the edge's own cells: a closing would eat into a part cut by the edge.
        padded = np.pad(mask, 2, mode="edge")
        closed = ndimage.binary_closing(padded, structure=np.ones((3, 3), bool), iterations=2)[2:-2, 2:-2]
        mask = ndimage.binary_opening(ndimage.binary_fill_holes(closed), structure=np.ones((2, 2), bool))
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
        cell, boxes = self.belt.cell, []
        for index, found in enumerate(ndimage.find_objects(labels), 1):
            if found is None or (labels[found] == index).sum() < self.min_area * mask.size:
                continue
            rows, cols = found
            boxes.append(Box(cols.start * cell, rows.start * cell, cols.stop * cell, rows.stop * cell))
        return sorted(boxes, key=lambda b: -b.area)

    def update(self, frame: int, image: np.ndarray) -> tuple[list[Track], list[Track]]:
        """Take frame number ``frame``: (the parts seen in it, the parts that left before it
        that were seen in at least ``min_frames`` frames)."""
        if frame <= self._last_frame:
            raise ValueError(f"frame numbers must increase: {frame} after {self._last_frame}")
        self._last_frame = frame
        boxes = self.blobs(image)
        if boxes is None:
            self.skipped_frames += 1
            return [], []
        # A blob over where two or more parts should be is those parts run together (a torn
        # frame, a shadow): it updates none of them and starts no part; they are held, neither
        # seen nor missed (the tracker had carried one part on into the next one).
        _, height, width = self.belt.shape
        expected = {id(t): t.predicted(frame).clipped(width, height) for t in self.active}
        merged = [b for b in boxes if sum(b.covers_half(expected[id(t)]) for t in self.active) >= 2]
        held = [t for t in self.active if any(b.covers_half(expected[id(t)]) for b in merged)]
        for track in self.active:
            track.held = track.held + 1 if any(track is h for h in held) else 0
        # Run together for longer than a torn frame: parts that came to touch, one blob and
        # hence one part (held, neither was ever judged): missed, they leave, the blob enters.
        held = [t for t in held if t.held <= self.max_missed]
        boxes = [b for b in boxes if all(b is not m for m in merged)]
        matches = self._match(boxes, frame, exclude=held)
        seen: list[Track] = []
        for track, box in matches:
            before, steps = track.box, frame - track.last_frame
            track.velocity = (
                _edge_shift((before.x0, before.x1), (box.x0, box.x1), self.edge, width - self.edge) / steps,
                _edge_shift((before.y0, before.y1), (box.y0, box.y1), self.edge, height - self.edge) / steps,
            )
            track.boxes[frame], track.missed = box, 0
            seen.append(track)
        # A part entering moves with the belt: it starts at the velocity of the parts already
        # followed (at rest it would be matched to the neighbour it slides in behind).
        moving = [t.velocity for t in seen]
        vx, vy = np.median(moving, axis=0) if moving else (0.0, 0.0)
        start = (float(vx), float(vy))
        for box in (b for b in boxes if all(b is not m for _, m in matches)):
            track = Track(self.next_part, frame, {frame: box}, velocity=start)
            self.next_part += 1
            self.active.append(track)
            seen.append(track)
        left = []
        for track in [t for t in self.active if all(t is not s for s in seen + held)]:
            track.missed += 1
            if track.missed >= self.max_missed:
                self.active.remove(track)
                track.left = True
                left.append(track)
        return seen, [t for t in left if len(t.boxes) >= self.min_frames]

    def reset(self) -> None:
        """Start a new stream: no part in view, parts numbered from 0 again."""
        self.active, self.next_part, self.skipped_frames, self._last_frame = [], 0, 0, -(2**62)

    def finish(self) -> list[Track]:
        """The parts still in view when the stream ends (``left`` False), as parts that left."""
        remaining, self.active = self.active, []
        return [t for t in remaining if len(t.boxes) >= self.min_frames]

    def _match(self, boxes: list[Box], frame: int, exclude: list[Track]) -> list[tuple[Track, Box]]:
        """Greedy, against where each part (but those in ``exclude``) should be now: the
        pairs of highest overlap first, then of nearest centres."""
        _, height, width = self.belt.shape
        reach = self.max_jump * max(height, width)
        pairs = []
        for track in (t for t in self.active if all(t is not e for e in exclude)):
            expected = track.predicted(frame)
            for box in boxes:
                if not self._may_follow(track, box):
                    continue
                overlap = expected.iou(box)
                (cx, cy), (bx, by) = expected.centre, box.centre
                distance = math.hypot(cx - bx, cy - by)
                if overlap > 0 or distance <= reach:
                    pairs.append((-overlap, distance, track, box))
        pairs.sort(key=lambda p: (p[0], p[1]))
        matched: list[tuple[Track, Box]] = []
        for _, _, track, box in pairs:
            if all(track is not t and box is not b for t, b in matched):
                matched.append((track, box))
        return matched

    def _may_follow(self, track: Track, box: Box) -> bool:
        """False when ``track`` is going out through an edge (its box at that edge but not at
        the opposite one, which a torn frame's box spanning the view is, moving towards it
        faster than the edge margin a frame) and ``box`` is not at that edge."""
        _, height, width = self.belt.shape
        last, (vx, vy), near = track.box, track.velocity, self.edge
        low = (last.x0 <= near, last.y0 <= near)
        high = (last.x1 >= width - near, last.y1 >= height - near)
        leaving = (
            (low[0] and not high[0] and vx < -near, box.x0 <= near),
            (high[0] and not low[0] and vx > near, box.x1 >= width - near),
            (low[1] and not high[1] and vy < -near, box.y0 <= near),
            (high[1] and not low[1] and vy > near, box.y1 >= height - near),
        )
        return all(at_edge for going, at_edge in leaving if going)


__all__ = ["GRID_CELLS", "Belt", "Box", "PartTracker", "Track"]
