"""The watch job: run an :class:`Inspector` over a source and write frames.jsonl, alarm
pictures, the annotated video and summary.json, with a live console line."""

from __future__ import annotations

import contextlib
import fractions
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._checkpoint import atomic_write_text
from .._signals import Terminated, interrupts_held
from ..data.video import VIDEO_CODECS, require_av
from ..heatmaps import captioned, heatmap_overlay, save_png
from .inspector import FrameResult, Inspector
from .live_page import LivePage
from .parts import PartJudge, PartVerdict
from .sources import open_source


def _percentile(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _stats(latencies: list[float], scored: int, seconds: float) -> dict:
    return {
        "fps": scored / seconds if seconds > 0 else None,
        "latency_p50_ms": _percentile(latencies, 50),
        "latency_p99_ms": _percentile(latencies, 99),
    }


def check_video_path(path: str | os.PathLike, source=None, inputs: dict | None = None) -> str:
    """The codec for an annotated video at ``path`` (from its suffix), after making sure its
    folder can be written and that it is neither the ``source`` being watched nor one of the
    other ``inputs`` ({option: path}, e.g. the belt clip; the video would replace it):
    ValueError/PermissionError that name the path, before any work."""
    from .._checkpoint import refuse_non_file_target, writable_folder

    path = Path(path)
    target = getattr(source, "target", source)
    if isinstance(target, (str, os.PathLike)) and os.path.realpath(path) == os.path.realpath(target):
        raise ValueError(f"--save-video {path} is the video being watched: name another file")
    for option, given in (inputs or {}).items():
        if os.path.realpath(path) == os.path.realpath(given):
            raise ValueError(f"--save-video {path} is the {option} clip: name another file")
    refuse_non_file_target(path, "--save-video: ")
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

    def __init__(self, path: Path, fps: float, source=None) -> None:
        from .._checkpoint import atomic_files, remove_stale_temporaries

        self.av = require_av()
        self.codec, self.fps = check_video_path(path, source), fps
        if path.parent.is_dir():  # the cut video of a run killed by SIGKILL (the thirteenth probe)
            remove_stale_temporaries(path.parent, (path.stem,))
        self.files = contextlib.ExitStack()
        (self.temporary,) = self.files.enter_context(atomic_files(path))  # refuses a folder
        # PyAV's container and video stream once the first frame came: Any, as self.av is the
        # module loaded on first use (typed as a plain module).
        self.container: Any = None
        self.stream: Any = None

    def write(self, picture: np.ndarray, alarm: bool) -> None:
        if alarm:
            picture = picture.copy()
            picture[:4], picture[-4:], picture[:, :4], picture[:, -4:] = (
                (255, 0, 0),
                (255, 0, 0),
                (255, 0, 0),
                (255, 0, 0),
            )
        height, width = picture.shape[:2] - np.array(picture.shape[:2]) % 2  # even sides for 4:2:0
        picture = np.ascontiguousarray(picture[:height, :width])
        if self.container is None:
            self.container = self.av.open(os.fspath(self.temporary), "w")
            # Encoders take a rational rate: 29.97 stays 30000/1001, 0.5 stays 1/2.
            self.stream = self.container.add_stream(
                self.codec, rate=fractions.Fraction(self.fps).limit_denominator(1001)
            )
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


def watch(
    inspector: Inspector,
    source,
    out: str | os.PathLike,
    *,
    max_frames: int | None = None,
    realtime: bool | None = None,
    save_video: str | os.PathLike | None = None,
    fps: float | None = None,
    progress: bool = True,
    parts: PartJudge | None = None,
    serve: LivePage | None = None,
) -> dict:
    """Run ``inspector`` over ``source`` and write ``out/frames.jsonl`` (one JSON line per
    frame scored or failed: frame, time_s, score, smoothed, alarm, latency_ms, dropped,
    and error when it failed), ``out/alarms/frame_<index>.png`` (the heatmap overlay at each
    alarm onset), optionally the annotated video, and ``out/summary.json``; prints a live
    line (fps, latency p50/p99, alarms) to stderr when ``progress``. Every line is flushed
    as it is written, so Ctrl-C (KeyboardInterrupt, re-raised after the summary is
    written) loses nothing. ``parts``: also one verdict per part, as each leaves the view
    (``out/parts.jsonl``, one JSON line per part, see :class:`PartVerdict`; a picture per
    rejected part in ``out/parts/``; the parts still in view at the end are judged then,
    ``left`` false). ``serve``: a :class:`LivePage` (not started) that shows the stream
    while it runs and stops with it. Returns the summary."""
    # Everything that can be refused is, before any output exists.
    source = _open_without_own_pictures(source, fps, Path(out))
    writer = _VideoWriter(Path(save_video), fps or 25.0, source) if save_video else None
    if serve is not None and not serve.running:
        serve.start()  # a port that cannot be had is refused before any output exists
        print(f"live page: {serve.url}", file=sys.stderr)  # also when quiet: port 0 picks one
    folder, alarms_dir, part_lines = _prepare_outputs(Path(out), parts, serve)
    latencies: list[float] = []
    summary = _new_summary(source, inspector, parts)
    started = last_print = time.perf_counter()
    was_on = False
    try:
        with open(folder / "frames.jsonl", "w") as lines:
            for result in inspector.run(source, max_frames=max_frames, realtime=realtime, fps=fps):
                lines.write(json.dumps(result.to_json()) + "\n")
                lines.flush()
                summary["frames"] += 1
                summary["dropped"] = result.dropped
                if serve is not None:
                    summary["fps"] = summary["scored"] / max(time.perf_counter() - started, 1e-9)
                    serve.update(result, summary, inspector.threshold)
                if result.error is not None:
                    summary["errors"] += 1
                    if len(summary["first_errors"]) < 10:
                        summary["first_errors"].append({"frame": result.frame, "error": result.error})
                    continue
                assert result.image is not None and result.anomaly_map is not None  # a scored frame has both
                summary["scored"] += 1
                latencies.append(result.latency_ms)
                summary["alarm_frames"] += int(result.alarm)
                if part_lines is not None:
                    part_lines.write(part_lines.judge.update(result), summary, serve)
                picture = None
                if result.alarm and not was_on:
                    summary["alarms"] += 1
                    picture = heatmap_overlay(result.image, result.anomaly_map, inspector.map_threshold)
                    save_png(
                        captioned(picture, _alarm_caption(result, inspector)),
                        alarms_dir / f"frame_{result.frame:06d}.png",
                    )
                was_on = result.alarm
                if writer is not None:
                    if picture is None:
                        picture = heatmap_overlay(result.image, result.anomaly_map, inspector.map_threshold)
                    writer.write(picture, result.alarm)
                now = time.perf_counter()
                if progress and now - last_print >= 1.0:
                    last_print = now
                    _print_live(summary, _stats(latencies[-200:], summary["scored"], now - started))
    except KeyboardInterrupt as stop:
        summary["interrupted"] = True
        summary["stopped_by"] = stop.signal_name if isinstance(stop, Terminated) else "Ctrl-C"
        raise
    finally:
        summary["dropped"] = max(summary["dropped"], inspector.dropped)
        try:
            if part_lines is not None:  # the parts still in view: judged on what was seen of them
                part_lines.write(part_lines.judge.finish(), summary, serve)
                part_lines.close()
                summary["part_skipped_frames"] = part_lines.judge.tracker.skipped_frames
        finally:
            if serve is not None:
                serve.stop()
            _finish(writer, summary, latencies, started, folder, progress)
    return summary


def check_watch_outputs(out: str | os.PathLike, parts: bool = False) -> None:
    """Refuse, before any work, a FIFO, device or folder where watch writes a file
    (frames.jsonl, summary.json, parts.jsonl: opening a FIFO would wait forever) and a file
    where it makes a folder (alarms/, parts/): ValueError/IsADirectoryError naming the path."""
    from .._checkpoint import refuse_non_file_target

    out = Path(out)
    names = ["frames.jsonl", "summary.json"] + (["parts.jsonl"] if parts else [])
    for name in names:
        refuse_non_file_target(out / name)
    for folder in ["alarms"] + (["parts"] if parts else []):
        if os.path.lexists(out / folder) and not (out / folder).is_dir():
            raise ValueError(f"{out / folder} is not a folder: watch writes its pictures there; move it away")


def _prepare_outputs(out: Path, parts: PartJudge | None, serve: LivePage | None):
    """(out made, its alarms/ cleared of an earlier run's pictures, the _PartLines of
    ``parts`` or None); the started page is stopped when that fails."""
    from .._checkpoint import writable_folder

    try:
        check_watch_outputs(out, parts is not None)  # before an earlier run's pictures are removed
        out = writable_folder(out)
        alarms_dir = out / "alarms"
        alarms_dir.mkdir(exist_ok=True)
        for old in alarms_dir.glob("frame_*.png"):  # a previous run's pictures would read as this run's
            old.unlink()
        return out, alarms_dir, (_PartLines(out, parts) if parts is not None else None)
    except BaseException:
        if serve is not None:
            serve.stop()
        raise


def _new_summary(source, inspector: Inspector, parts: PartJudge | None) -> dict[str, Any]:
    """summary.json's fields before the first frame (JSON values)."""
    summary: dict[str, Any] = {
        "source": str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__,
        "smoothing": inspector.smoothing,
        "threshold": inspector.threshold,
        "latency_frames": inspector.latency_frames,
        "frames": 0,
        "scored": 0,
        "errors": 0,
        "alarms": 0,
        "alarm_frames": 0,
        "dropped": 0,
        "interrupted": False,
        "first_errors": [],
    }
    if parts is not None:
        summary.update(parts=0, rejected=0, part_threshold=parts.threshold, part_k=parts.k)
    return summary


class _PartLines:
    """``out/parts.jsonl`` (a line per verdict, flushed) and ``out/parts/`` (a picture per
    rejected part; an earlier run's are removed first)."""

    def __init__(self, out: Path, judge: PartJudge) -> None:
        self.judge, self.pictures = judge, out / "parts"
        self.pictures.mkdir(exist_ok=True)
        for old in self.pictures.glob("part_*.png"):
            old.unlink()
        judge.reset()
        self.lines = open(out / "parts.jsonl", "w")

    def write(self, verdicts: list[PartVerdict], summary: dict[str, Any], page: LivePage | None = None) -> None:
        if page is not None:
            page.add_verdicts(verdicts)
        for verdict in verdicts:
            # The picture, the line and the counts together: Ctrl-C while the picture was
            # saved kept the line of a rejected part without its picture (the eleventh probe).
            with interrupts_held():
                if verdict.picture is not None:
                    save_png(verdict.picture, self.pictures / f"part_{verdict.part:06d}.png")
                self.lines.write(json.dumps(verdict.to_json()) + "\n")
                self.lines.flush()
                summary["parts"] += 1
                summary["rejected"] += verdict.verdict == "reject"

    def close(self) -> None:
        self.lines.close()


def _finish(writer, summary: dict[str, Any], latencies: list[float], started: float, out: Path, progress: bool) -> None:
    """Close the video and write summary.json. A second Ctrl-C or SIGTERM here would cut the
    video's end and skip summary.json: held until both are written (the fifth probe lost
    both, 2 times in 5). A video that cannot be finished (a full disk) is said in the summary
    (``video_error``), which is written before that error is raised."""
    with interrupts_held("finishing the video and summary.json first"):
        video_error = None
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:
                video_error, summary["video_error"] = exc, str(exc)
        summary["seconds"] = time.perf_counter() - started
        summary.update(_stats(latencies, summary["scored"], summary["seconds"]))
        if progress:
            print(file=sys.stderr)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if video_error is not None:
        raise video_error


def _open_without_own_pictures(source, fps: float | None, out: Path):
    """The source opened, less the alarm pictures of an earlier run into ``out`` (said once)."""
    source = open_source(source, fps, skip=[out / "alarms"]).open()
    if getattr(source, "skipped", 0):
        print(f"skipping {source.skipped} files under {out / 'alarms'} (an earlier run's output)", file=sys.stderr)
    return source


def _alarm_caption(result: FrameResult, inspector: Inspector) -> str:
    """What an alarm picture says about itself: which frame, when, and by how much."""
    when = f" at {result.time_s:.2f} s" if result.time_s is not None else ""
    return (
        f"frame {result.frame}{when}  score {result.score:.3f}  {inspector.smoothing} {result.smoothed:.3f}"
        f" > threshold {inspector.threshold:.3f}"
    )


def _print_live(summary: dict, stats: dict) -> None:
    fps = stats["fps"] or 0.0
    p50, p99 = stats["latency_p50_ms"] or 0.0, stats["latency_p99_ms"] or 0.0
    print(
        f"\r[watch] {summary['frames']} frames  {fps:.1f} fps  latency p50 {p50:.0f} ms p99 {p99:.0f} ms  "
        f"alarms {summary['alarms']}  dropped {summary['dropped']}  errors {summary['errors']}   ",
        end="",
        file=sys.stderr,
        flush=True,
    )


def format_summary(summary: dict) -> str:
    """The end-of-stream lines ``watch`` prints."""
    fps = summary.get("fps")
    p50, p99 = summary.get("latency_p50_ms"), summary.get("latency_p99_ms")
    lines = [
        f"frames: {summary['frames']} read ({summary['scored']} scored, {summary['errors']} failed to decode), "
        f"{summary['dropped']} dropped",
        f"alarms: {summary['alarms']} (onsets; {summary['alarm_frames']} frames in alarm), smoothing "
        f"{summary['smoothing']} (+{summary['latency_frames']:.1f} frames), threshold {summary['threshold']:.4g}",
        f"speed: {fps:.2f} frames/s, latency p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        if fps and p50 is not None
        else "speed: no frame scored",
    ]
    if "parts" in summary:
        threshold = summary.get("part_threshold")
        lines.append(
            f"parts: {summary['parts']} judged, {summary['rejected']} rejected (score: k-th largest frame, "
            f"k={summary['part_k']}; threshold {'none' if threshold is None else f'{threshold:.4g}'})"
        )
        if summary["dropped"]:
            lines.append(
                f"warning: {summary['dropped']} frames dropped: parts are followed frame to frame, so some may have "
                "merged or been missed; score as fast as the camera (--precision, --max-latency-ms) or read a file "
                "without --realtime"
            )
        skipped = summary.get("part_skipped_frames", 0)
        if skipped and skipped >= summary["scored"] / 2:
            lines.append(
                f"warning: {skipped} of {summary['scored']} frames differed from the belt almost everywhere and "
                "were not tracked: is --belt a clip of this camera's empty belt, at this light?"
            )
    for error in summary.get("first_errors", [])[:3]:
        lines.append(f"decode error at frame {error['frame']}: {error['error']}")
    if summary.get("interrupted"):
        lines.append(f"interrupted ({summary.get('stopped_by', 'Ctrl-C')}): everything up to here is written")
    return "\n".join(lines)
