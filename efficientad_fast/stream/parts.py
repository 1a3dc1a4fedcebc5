"""One verdict per part: :class:`PartJudge` follows the parts through scored frames (a
:class:`~efficientad_fast.stream.tracking.PartTracker`) and passes or rejects each part once,
as it leaves the view.

    judge = PartJudge(PartTracker(belt), threshold=None, k=2)
    judge.threshold = calibrate_parts(inspector, judge, "normal_clip.mp4")  # from normal parts
    for result in inspector.run(source):
        for verdict in judge.update(result):
            print(verdict.to_json())                    # {"part": 7, "verdict": "reject", ...}
    remaining = judge.finish()                          # parts in view when the stream ended

A part's score in a frame is the anomaly map's maximum inside its box; its score is the k-th
largest of those over the frames where it was wholly in view (all its frames when it never
was): one frame's glitch (k >= 2) or a half-seen part sliding in does not decide. The
threshold is calibrated on normal parts (:func:`part_threshold`).

When is a part decided: a part that was wholly in view is decided when it has reached the
frame's edge in ``leaving_frames`` frames in a row (2: a torn frame's one does not count), or
has reached it and then gone unseen (it slid out within a frame): the frames it has left, cut
by the edge, would not change its score, so the verdict comes as the part leaves, not frames
after the tracker has given it up (``decided`` "leaving"; the tracker follows a part that
comes back from going out through the edge as a new part, judged anew). A part never wholly
in view is decided when the tracker has lost it (``decided`` "left"), and one still in view
when the stream ends, then ("end").
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .inspector import FrameResult, Inspector
from .tracking import PartTracker, Track

PART_MARGIN = 0.25  # part_threshold's margin over the highest normal part, in (max - median)s


@dataclass
class PartVerdict:
    """A part's one verdict: ``verdict`` "pass" or "reject" (None while uncalibrated),
    ``score`` (see the module docstring) from ``deciding_frame`` (inf where the map had NaN
    in the part's box: never a pass; null in JSON); ``decided`` when (the module docstring):
    "leaving", "left" or "end"; ``latency_ms`` from the arrival of the frame that settled the
    verdict to the verdict: the first of the frames at the edge for a part decided while
    leaving (it had not yet left, so the time from its exit to the verdict is shorter), the
    first frame without the part for one decided after it left, None at the end (``left``
    False; True for the others); ``first_frame``..``last_frame`` and ``frames`` count the
    frames seen up to the verdict; ``picture`` (uint8 (H, W, 3)) the deciding frame's crop
    beside its heatmap, kept for rejected parts only and not written to JSON."""

    part: int
    first_frame: int
    last_frame: int
    frames: int
    score: float
    threshold: float | None
    verdict: str | None
    deciding_frame: int
    latency_ms: float | None
    left: bool
    whole_in_view: bool
    box: list[int]
    decided: str = "left"
    picture: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        """The JSON line of parts.jsonl."""
        return {
            "part": self.part,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames": self.frames,
            "score": float(f"{self.score:.6g}") if math.isfinite(self.score) else None,  # JSON has no NaN/inf
            "threshold": None if self.threshold is None else float(f"{self.threshold:.6g}"),
            "verdict": self.verdict,
            "deciding_frame": self.deciding_frame,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "left": self.left,
            "decided": self.decided,
            "whole_in_view": self.whole_in_view,
            "box": self.box,
        }


@dataclass
class _Seen:
    """A part's scores so far: the k highest (score, frame, image crop, map crop) over the
    frames where it was wholly in view and over all its frames (bounded memory)."""

    inside: list = field(default_factory=list)
    anywhere: list = field(default_factory=list)
    unscorable: tuple | None = None  # a frame whose map had NaN in the part's box: it decides
    at_edge: int = 0  # frames in a row at the frame's edge since it was last wholly in view
    edge_arrived: float = 0.0  # when the first of those frames arrived (perf_counter seconds)


def _keep_top(entries: list, entry: tuple, k: int) -> None:
    entries.append(entry)
    entries.sort(key=lambda e: -e[0])
    del entries[k:]


class PartJudge:
    """Pass or reject each part once (see the module docstring).

    Args:
        tracker: follows the parts; frames are the scored (3, H, W) images, so its belt is
            learned at the model's image size.
        threshold: on the part score; None: verdicts are None (calibration).
        k: the part score is the k-th largest of its frames' scores.
        map_threshold: the heatmap contour of the rejected parts' pictures.
        leaving_frames: frames in a row at the edge, after the part was wholly in view, that
            decide it as leaving (None: decide only once the tracker has lost it).
    """

    def __init__(
        self,
        tracker: PartTracker,
        threshold: float | None = None,
        *,
        k: int = 2,
        map_threshold: float | None = None,
        leaving_frames: int | None = 2,
    ) -> None:
        if not isinstance(tracker, PartTracker):
            raise TypeError(f"tracker must be a PartTracker, got {type(tracker).__name__}")
        for name, value in (("k", k), ("leaving_frames", 1 if leaving_frames is None else leaving_frames)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if threshold is not None and not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be a finite number or None, got {threshold}")
        self.tracker, self.k, self.map_threshold, self.leaving_frames = tracker, k, map_threshold, leaving_frames
        self.threshold = None if threshold is None else float(threshold)
        self._seen: dict[int, _Seen] = {}
        self._decided: set[int] = set()  # decided while leaving, still followed by the tracker
        self._arrived: deque[tuple[int, float]] = deque(maxlen=4 * tracker.max_missed + 8)

    def update(self, result: FrameResult) -> list[PartVerdict]:
        """Take one scored frame; the verdicts it settles: of parts leaving (see the module
        docstring) and of parts the tracker has lost."""
        if result.error is not None or result.image is None or result.anomaly_map is None:
            return []  # a frame that failed to decode: the parts neither seen nor missed
        arrived = time.perf_counter() - result.latency_ms / 1e3
        self._arrived.append((result.frame, arrived))
        seen, left = self.tracker.update(result.frame, result.image)
        # Missed in this or an earlier frame and not seen since (frames where a part is held
        # under a torn blob or skipped count no miss: they tell nothing of where it went), but
        # not yet given up by the tracker.
        unseen = [t for t in self.tracker.active if t.missed]
        verdicts = []
        for track in seen:
            if track.part in self._decided:
                continue
            kept = self._keep(track, result.frame, result.image, result.anomaly_map, arrived)
            if self.leaving_frames is not None and kept.at_edge >= self.leaving_frames:
                verdicts.append(self._decide_leaving(track))
        for track in unseen:  # at the edge in its last frame, then gone: it slid out
            kept = self._seen.get(track.part, _Seen())
            if self.leaving_frames is not None and kept.at_edge and track.part not in self._decided:
                verdicts.append(self._decide_leaving(track))
        return verdicts + [self._verdict(track, "left") for track in left if not self._forget(track)]

    def _keep(self, track: Track, frame: int, image: np.ndarray, amap: np.ndarray, arrived: float) -> _Seen:
        """Keep ``track``'s score in this frame (the map's maximum over its box) among its
        top k, anywhere and, when the box is clear of the edges, inside; count its frames in a
        row at the edge after it was wholly in view."""
        _, height, width = image.shape
        box = track.boxes[frame]
        inside = box.clipped(width, height)
        crop = (slice(inside.y0, inside.y1), slice(inside.x0, inside.x1))
        score = float(amap[crop].max())
        kept = self._seen.setdefault(track.part, _Seen())
        unscorable = math.isnan(score)  # a map that could not be computed: the part can never pass
        entry = (math.inf if unscorable else score, frame, image[:, crop[0], crop[1]], amap[crop])
        if unscorable and kept.unscorable is None:
            kept.unscorable = entry
        _keep_top(kept.anywhere, entry, self.k)
        if not box.touches_border(width, height, self.tracker.edge):
            _keep_top(kept.inside, entry, self.k)
            kept.at_edge = 0
        elif kept.inside:
            kept.at_edge += 1
            kept.edge_arrived = arrived if kept.at_edge == 1 else kept.edge_arrived
        return kept

    def _decide_leaving(self, track: Track) -> PartVerdict:
        """The verdict of a part going out, given once: the tracker follows it until it is gone."""
        self._decided.add(track.part)
        return self._verdict(track, "leaving")

    def finish(self) -> list[PartVerdict]:
        """The verdicts of the parts still in view (``left`` False), at the end of a stream."""
        return [self._verdict(track, "end") for track in self.tracker.finish() if not self._forget(track)]

    def _forget(self, track: Track) -> bool:
        """Whether ``track`` was decided while leaving (its verdict given), forgetting it."""
        decided = track.part in self._decided
        self._decided.discard(track.part)
        return decided

    def _verdict(self, track: Track, decided: str) -> PartVerdict:
        kept = self._seen.pop(track.part, _Seen())
        entries = kept.inside or kept.anywhere
        score, frame, image, amap = kept.unscorable or entries[min(self.k, len(entries)) - 1]
        verdict = None if self.threshold is None else ("reject" if score > self.threshold else "pass")
        picture = None
        if verdict == "reject":
            picture = _part_picture(track, score, frame, image, amap, self.threshold, self.map_threshold)
        return PartVerdict(
            part=track.part,
            first_frame=track.first_frame,
            last_frame=track.last_frame,
            frames=len(track.boxes),
            score=score,
            threshold=self.threshold,
            verdict=verdict,
            deciding_frame=frame,
            latency_ms=self._latency(track, kept, decided),
            left=decided != "end",
            whole_in_view=bool(kept.inside),
            box=track.boxes[frame].as_list(),
            picture=picture,
            decided=decided,
        )

    def _latency(self, track: Track, kept: _Seen, decided: str) -> float | None:
        """Milliseconds from the arrival of the frame that settled the verdict (see PartVerdict)."""
        if decided == "leaving":
            return 1e3 * (time.perf_counter() - kept.edge_arrived)
        after = [arrived for frame, arrived in self._arrived if frame > track.last_frame]
        return 1e3 * (time.perf_counter() - after[0]) if after and decided == "left" else None

    def reset(self) -> None:
        """Start a new stream: forget the parts in view; parts numbered from 0 again."""
        self.tracker.reset()
        self._seen.clear()
        self._decided.clear()
        self._arrived.clear()


def _part_picture(track: Track, score, frame, image, amap, threshold, map_threshold) -> np.ndarray:
    """The deciding frame's crop beside its heatmap, captioned with the part, score and threshold."""
    from ..heatmaps import captioned, heatmap_overlay

    picture = heatmap_overlay(image, amap, map_threshold)
    caption = f"part {track.part}  frame {frame}  score {score:.3f} > threshold {threshold:.3f}"
    return captioned(picture, caption)


def part_threshold(scores, margin: float = PART_MARGIN) -> float:
    """A part threshold from normal parts' ``scores`` (at least 3): the highest plus
    ``margin`` times its distance from the median, so a new normal part a little above the
    calibration parts still passes."""
    values = np.asarray([float(s) for s in scores], dtype=np.float64)
    if values.size < 3 or not np.isfinite(values).all():
        raise ValueError(f"part calibration needs the finite scores of at least 3 normal parts, got {values.size}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    highest = float(values.max())
    threshold = highest + margin * (highest - float(np.median(values)))
    if not math.isfinite(threshold):
        raise ValueError(f"the normal parts' scores (up to {highest:.4g}) give no finite part threshold")
    return threshold


def calibrate_parts(
    inspector: Inspector, judge: PartJudge, normal_source, *, margin: float = PART_MARGIN, max_frames=None
) -> float:
    """Score a clip of normal parts, set ``judge.threshold`` from their part scores
    (:func:`part_threshold`) and return it."""
    part_threshold([0.0, 0.0, 0.0], margin)  # a bad margin refused before the clip is scored
    judge.reset()
    saved, judge.threshold = judge.threshold, None
    scores: list[float] = []
    try:
        for result in inspector.run(normal_source, max_frames=max_frames, realtime=False):
            scores += [v.score for v in judge.update(result)]
        scores += [v.score for v in judge.finish()]
        judge.threshold = part_threshold(scores, margin)
    except BaseException:
        judge.threshold = saved
        raise
    return judge.threshold


__all__ = ["PART_MARGIN", "PartJudge", "PartVerdict", "calibrate_parts", "part_threshold"]
