"""Part verdicts on synthetic conveyors (issue 27, part 4): ``watch --parts`` with a model
trained on the line's own normal video against one trained on still images of the category,
over several seeds.

    python bench/parts_line.py --out /tmp/parts_line --seeds 0 1 2           # run (resumable)
    python bench/parts_line.py --out /tmp/parts_line --summary bench/results/parts_line_DATE.md
    python bench/parts_line.py --out /tmp/parts_line --seeds 0 --replay 2.44  # the tracker alone
    python bench/parts_line.py --out /tmp/parts_line --train-only   # train beside other work; watch later, alone

``--summary`` also reads and rewrites ``--archive`` (default bench/results/parts_line_rows.jsonl):
every finished row, one JSON line per (category, frame size, steps, model, seed) with the CPU it
ran on, so the figures outlive the machine that made them; a row in ``--out`` replaces the
archived row of the same key.

Per seed: a normal run of the line (``--train-frames``, no defect) to train on, a clip of the
empty belt (``--belt``), a normal clip to calibrate on (``--calibrate-on``: the frame and part
thresholds), and a test line with a share of defective parts. Two models, same steps:
``video`` (``train --video`` on the normal run) and ``still`` (``train`` on the synthetic
category's images, what the demo does). Each watches the test line once with ``--parts``;
from its parts.jsonl and frames.jsonl against the ground truth:

- part level: recall of defective parts and false rejects per 1000 normal parts at the
  calibrated part threshold, and false rejects at the highest threshold that still rejects
  every defective part (100 % recall); the share of parts decided as they leave; decision
  delay after the part's exit at the measured frame rate (ms, p50/max): a camera sending
  frames as fast as the CPU scores them captures frame f at f/fps and has its verdict one
  frame time later, so a verdict given on frame v for a part whose first frame without it is
  e comes (v + 1 - e) / fps after the exit (negative: before it; e from watch's own tracker
  run again on the line, ~1 ms a frame); and watch's ``latency_ms`` (p50/max), from the
  arrival of the frame that settled the verdict, which for a file includes the frames waiting
  in the queue;
- frame level: false-alarm onsets per 1000 normal frames at 100 % recall of defective parts,
  for kofn (3 of 5), ema and raw scores (:func:`efficientad_fast.stream.compare_smoothers`).

A tracked part is matched to the true part that is in view in most of its frames; a true part
matched by two tracked parts (a split) or none (missed) is counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

from _rows import merged_rows, write_rows

from efficientad_fast.cli._common import at_least
from efficientad_fast.precision import cpu_info

ARCHIVE = Path(__file__).resolve().parent / "results" / "parts_line_rows.jsonl"
CHECKPOINT_EVERY = 50
IMAGE_SIZE = 256  # watch's --image-size: the tracker of exit_frames sees frames at this size
# Belt around each part, as a share of the frame side: a weave part fills its image, and a part
# is wholly in view (judged on whole frames, decided as it leaves) only when clear of the
# tracker's edge margin (3 of its 64 grid cells, 4.7 %); 12 px at 256 px were not.
PART_MARGIN = {"board": 0.0, "weave": 3 / 32}


def line_settings(category: str, frame_size: int) -> dict:
    """make_synthetic_video's settings shared by a category's videos at this frame size."""
    return {"frame_size": frame_size, "part_margin": round(PART_MARGIN[category] * frame_size)}


def make_videos(folder: Path, category: str, seed: int, args) -> dict[str, Path]:
    from efficientad_fast.data import make_synthetic_video

    extra = line_settings(category, args.frame_size)
    train_frames, test_frames = args.train_frames, args.test_frames
    videos = {
        "normal": dict(frames=train_frames, defect_fraction=0.0, seed=1000 + seed),
        "belt": dict(frames=30, empty_belt=True, seed=2000 + seed),
        "calibration": dict(frames=360, defect_fraction=0.0, seed=3000 + seed),
        "line": dict(frames=test_frames, defect_fraction=0.3, seed=seed),
    }
    paths = {}
    for name, settings in videos.items():
        path = folder / f"{name}.avi"
        if not path.is_file():
            make_synthetic_video(path, category, **settings, **extra)
        paths[name] = path
    return paths


def cli(*args) -> None:
    command = [sys.executable, "-m", "efficientad_fast", *map(str, args)]
    print("==", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def train(folder: Path, category: str, kind: str, videos: dict, seed: int, steps: int) -> Path:
    """The model of ``kind`` (video or still), trained unless it already was."""
    out = folder / f"model_{kind}"
    if (out / "model.pt").is_file():
        return out / "model.pt"
    common = ["--out", out, "--steps", steps, "--seed", seed, "--penalty-images", "none", "--workers", "0", "--quiet"]
    common += ["--checkpoint-every", CHECKPOINT_EVERY]  # a killed run (a machine handed back) loses at most these steps
    resume = ["--resume"] if (out / "checkpoint.pt").is_file() else []
    if kind == "video":
        cli("train", "--video", videos["normal"], *common, *resume)
    else:
        from efficientad_fast.data import make_synthetic

        data = folder / "still_data"
        if not (data / category / "test").is_dir():
            make_synthetic(data, seed=seed, categories=(category,))
        cli("train", "--data", data, "--dataset", "mvtec", "--category", category, *common, *resume)
    return out / "model.pt"


def watch(folder: Path, kind: str, model: Path, videos: dict, dtype: str) -> Path:
    out = folder / f"watch_{kind}"
    summary = out / "summary.json"
    if summary.is_file() and not json.loads(summary.read_text()).get("interrupted"):
        return out
    cli(
        "watch", "--model", model, "--source", videos["line"], "--out", out, "--parts", "--belt", videos["belt"],
        "--calibrate-on", videos["calibration"], "--smoothing", "kofn", "--dtype", dtype, "--quiet",
        "--image-size", IMAGE_SIZE,
    )  # fmt: skip
    return out


def exit_frames(videos: dict) -> tuple[dict[int, int], dict[int, int]]:
    """({part: its first frame gone}, {part: the frame where the tracker called it gone}) as
    watch --parts's tracker follows the test line: the same frames, belt and part numbers."""
    from efficientad_fast.stream import Belt, PartTracker, prepared_frames

    tracker = PartTracker(Belt.from_source(videos["belt"], IMAGE_SIZE))
    gone, called = {}, {}
    for index, image in prepared_frames(videos["line"], (IMAGE_SIZE, IMAGE_SIZE)):
        for track in tracker.update(index, image)[1]:
            gone[track.part], called[track.part] = track.last_frame + 1, index
    return gone, called


def exit_delays(verdicts: list[dict], exits: tuple[dict[int, int], dict[int, int]], fps: float) -> dict:
    """Decision delay after each part's exit (``exit_frames`` of the line) at the measured
    frame rate (see the docstring)."""
    gone, called = exits
    delays = []
    for verdict in verdicts:
        part = verdict["part"]
        if part not in gone or verdict.get("decided") == "end":
            continue
        decided_on = verdict["last_frame"] if verdict.get("decided") == "leaving" else called[part]
        delays.append(1e3 * (decided_on + 1 - gone[part]) / fps)
    delays.sort()
    return {
        "exit_delay_p50_ms": statistics.median(delays) if delays else None,
        "exit_delay_max_ms": delays[-1] if delays else None,
    }


REPLAY_RULES = {"tracker-lost": None, "as they leave": 2}  # PartJudge's leaving_frames


def replay(videos: dict, fps: float) -> list[dict]:
    """The tracking and decision timing of a line without a model, per decision rule: which
    parts are followed and when each is decided depend on the tracker alone, so PartJudge is
    fed every frame of the line with a flat map (~1 ms a frame), and the figures are
    part_figures' counts and exit_delays at ``fps`` (the verdicts and scores of a watch run
    are not replayed)."""
    import numpy as np

    from efficientad_fast.data import read_video_labels
    from efficientad_fast.stream import Belt, FrameResult, PartJudge, PartTracker, prepared_frames

    labels, exits = read_video_labels(videos["line"]), exit_frames(videos)  # the exits: the same for each rule
    flat = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    rows = []
    for rule, leaving_frames in REPLAY_RULES.items():
        tracker = PartTracker(Belt.from_source(videos["belt"], IMAGE_SIZE))
        judge = PartJudge(tracker, 1.0, leaving_frames=leaving_frames)
        verdicts = []
        for index, image in prepared_frames(videos["line"], (IMAGE_SIZE, IMAGE_SIZE)):
            result = FrameResult(index, 0.0, 0.0, 0.0, False, 0.0, 0, image=image, anomaly_map=flat)
            verdicts += [v.to_json() for v in judge.update(result)]
        verdicts += [v.to_json() for v in judge.finish()]
        rows.append({"rule": rule} | part_figures(verdicts, labels) | exit_delays(verdicts, exits, fps))
    return rows


def replay_table(rows: list[dict], fps: float) -> str:
    lines = [
        f"| line | decision rule | parts followed (of true) | missed | split | decided as they leave "
        f"| exit delay p50 / max at {fps:g} frames/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        delays = " / ".join(
            "–" if row[k] is None else f"{row[k]:.0f}" for k in ("exit_delay_p50_ms", "exit_delay_max_ms")
        )
        lines.append(
            f"| {row['line']} | {row['rule']} | {row['tracked_parts']} ({row['true_parts']}) | {row['missed_parts']} "
            f"| {row['split_parts']} | {row['decided_leaving']:.0%} | {delays} ms |"
        )
    return "\n".join(lines) + "\n"


def part_figures(verdicts: list[dict], labels: list[dict]) -> dict:
    """Part-level figures of one watch run against the video's ground truth."""
    defective = {row["part"] for row in labels if row["defective"] and row["part"] >= 0}
    true_parts = {row["part"] for row in labels if row["part"] >= 0}
    scores: dict[int, list[float]] = {}
    rejected: set[int] = set()
    for verdict in verdicts:
        in_view = Counter(labels[f]["part"] for f in range(verdict["first_frame"], verdict["last_frame"] + 1))
        in_view.pop(-1, None)
        if not in_view:
            continue
        part = in_view.most_common(1)[0][0]
        scores.setdefault(part, []).append(verdict["score"])
        if verdict["verdict"] == "reject":
            rejected.add(part)
    normal = [p for p in true_parts - defective if p in scores]
    best = {p: max(s) for p, s in scores.items()}
    at_full_recall = min((best[p] for p in defective if p in best), default=float("nan"))
    latencies = sorted(v["latency_ms"] for v in verdicts if v["latency_ms"] is not None)
    return {
        "true_parts": len(true_parts),
        "tracked_parts": len(verdicts),
        "missed_parts": len(true_parts - set(scores)),
        "split_parts": sum(len(s) > 1 for s in scores.values()),
        "defective_parts": len(defective),
        "normal_parts": len(normal),
        "recall": len(defective & rejected) / len(defective) if defective else float("nan"),
        "false_rejects_per_1000": 1000 * len([p for p in normal if p in rejected]) / max(1, len(normal)),
        "full_recall_false_rejects_per_1000": 1000
        * len([p for p in normal if best[p] >= at_full_recall])
        / max(1, len(normal)),
        "latency_p50_ms": statistics.median(latencies) if latencies else None,
        "latency_max_ms": latencies[-1] if latencies else None,
        "decided_leaving": sum(v.get("decided") == "leaving" for v in verdicts) / max(1, len(verdicts)),
    }


def frame_figures(frames: list[dict], labels: list[dict]) -> dict:
    from efficientad_fast.stream import compare_smoothers

    scores = [row["score"] for row in frames]
    rows = compare_smoothers(scores, labels, recall=1.0, smoothers=("kofn", "ema", "none"))
    return {f"{row['smoothing']}_onsets_per_1000": row["false_onsets_per_1000"] for row in rows}


def line_folder(out: Path, category: str, seed: int, args) -> Path:
    """One line's folder: its videos, models, watch runs and figures."""
    return out / f"{category}_{args.frame_size}px_{args.steps}steps_seed{seed}"


def lines(args):
    """Each line asked for, its videos made if missing: (category, seed, folder, videos)."""
    for category in args.categories:
        for seed in args.seeds:
            folder = line_folder(args.out, category, seed, args)
            yield category, seed, folder, make_videos(folder, category, seed, args)


def measure(category: str, seed: int, folder: Path, videos: dict, args) -> list[dict]:
    from efficientad_fast.data import read_video_labels

    labels = read_video_labels(videos["line"])
    rows = []
    for kind in args.models:
        model = train(folder, category, kind, videos, seed, args.steps)
        run = watch(folder, kind, model, videos, args.dtype)
        verdicts = [json.loads(line) for line in (run / "parts.jsonl").read_text().splitlines()]
        frames = [json.loads(line) for line in (run / "frames.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
        row = {"category": category, "seed": seed, "model": kind, "fps": summary["fps"]}
        row |= {"frame_size": args.frame_size, "steps": args.steps, "cpu": cpu_info()[0], "source": str(run)}
        row |= part_figures(verdicts, labels) | frame_figures(frames, labels)
        row |= exit_delays(verdicts, exit_frames(videos), summary["fps"])
        (folder / f"figures_{kind}.json").write_text(json.dumps(row, indent=2))
        rows.append(row)
    return rows


COLUMNS = (
    "recall",
    "false_rejects_per_1000",
    "full_recall_false_rejects_per_1000",
    "decided_leaving",
    "exit_delay_p50_ms",
    "exit_delay_max_ms",
    "latency_p50_ms",
    "latency_max_ms",
    "kofn_onsets_per_1000",
    "ema_onsets_per_1000",
    "none_onsets_per_1000",
)


def _key(row: dict) -> tuple:
    return row["category"], row.get("frame_size", 128), row.get("steps", 500), row["model"], row["seed"]


def finished_rows(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*_seed*/figures_*.json"))]


def summary_table(rows: list[dict]) -> str:
    lines = [
        "| category | frames | steps | model | seeds | "
        + " | ".join(COLUMNS)
        + " | parts (normal/defective), missed, split |",
        "|---" * (len(COLUMNS) + 6) + "|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["category"], row.get("frame_size", 128), row.get("steps", 500), row["model"])
        groups.setdefault(key, []).append(row)
    for (category, size, steps, model), group in sorted(groups.items()):
        cells = []
        for column in COLUMNS:
            values = [r[column] for r in group if r.get(column) is not None]  # older rows lack some
            if not values:
                cells.append("–")
                continue
            spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3g} ± {spread:.2g}")
        counts = ", ".join(
            f"{r['normal_parts']}/{r['defective_parts']}, {r['missed_parts']}, {r['split_parts']}" for r in group
        )
        seeds = ",".join(str(r["seed"]) for r in group)
        lines.append(
            f"| {category} | {size} px | {steps} | {model} | {seeds} | " + " | ".join(cells) + f" | {counts} |"
        )
    return "\n".join(lines) + "\n\nMeans ± half the range over the seeds; counts per seed.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of the videos, models and runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--categories", nargs="+", choices=sorted(PART_MARGIN), default=["board"])
    parser.add_argument("--steps", type=at_least(1), default=500, help="training steps of both models (default 500)")
    parser.add_argument("--models", nargs="+", choices=("video", "still"), default=["video", "still"])
    parser.add_argument(
        "--frame-size", type=at_least(64), default=128, help="video frame side in pixels, >= 64 (default 128)"
    )
    parser.add_argument(
        "--train-frames", type=at_least(1), default=1200, help="frames of the normal run (default 1200)"
    )
    parser.add_argument("--test-frames", type=at_least(1), default=1800, help="frames of the test line (default 1800)")
    parser.add_argument("--dtype", default="auto", help="watch's precision (default auto: the fastest on this CPU)")
    parser.add_argument("--summary", type=Path, default=None, help="write the table of what finished, run nothing")
    parser.add_argument(
        "--replay",
        type=float,
        default=None,
        metavar="FPS",
        help="train and watch nothing: replay the tracker on each line (made if missing) and print its "
        "tracking and exit delays at FPS frames/s, for both decision rules",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="make the videos and train the models (resuming), watch nothing: the watch's frame rate is a "
        "measurement, so run it later, alone on the machine, with the same command without --train-only",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        default=ARCHIVE,
        help=f"with --summary: rows of earlier machines to include, rewritten with this run's (default {ARCHIVE})",
    )
    args = parser.parse_args()
    if args.summary is not None:
        from efficientad_fast._checkpoint import atomic_write_text

        rows = merged_rows(args.archive, finished_rows(args.out), _key)
        write_rows(args.archive, rows)
        atomic_write_text(args.summary, summary_table(rows))
        print(args.summary.read_text())
        return
    if args.replay is not None and args.train_only:
        parser.error("--replay and --train-only exclude each other (--replay trains nothing)")
    if args.replay is not None:
        rows = []
        for _category, _seed, folder, videos in lines(args):
            rows += [{"line": folder.name} | row for row in replay(videos, args.replay)]
        print(replay_table(rows, args.replay))
        return
    if args.train_only:
        for category, seed, folder, videos in lines(args):
            for kind in args.models:
                print("trained:", train(folder, category, kind, videos, seed, args.steps), flush=True)
        return
    for category, seed, folder, videos in lines(args):
        for row in measure(category, seed, folder, videos, args):
            print(json.dumps(row), flush=True)
    print(summary_table(finished_rows(args.out)))


if __name__ == "__main__":
    main()
