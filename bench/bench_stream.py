"""Live-line scoring on this machine (efficientad_fast.stream), two parts:

1. Speed, EfficientAD-S at 256 px, per dtype: scoring alone (a FastPredictor call on a
   prepared frame, batch 1) against end to end (``watch`` over a synthetic conveyor video:
   decode, resize, queue, score, smooth, write frames.jsonl and alarm pictures), as
   frames/s and latency p50/p99 (end to end: from the frame leaving the decoder to its
   result; the file is read as fast as scoring goes, so latency includes the frames
   waiting in the queue of --queue-size).
2. Alarms, with a trained model (--model): every smoother on the same raw scores of a
   synthetic conveyor (:func:`efficientad_fast.data.make_synthetic_video`), thresholds
   calibrated on a normal clip (99.5 % of smoothed normal scores) and at equal recall of
   defective parts: false alarms per 1000 normal frames and the recall of defective parts.

    python bench/bench_stream.py --model demo_out/board/model.pt --markdown bench/results/stream.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_machine_info  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def percentiles(values_ms) -> tuple[float, float]:
    return float(np.percentile(values_ms, 50)), float(np.percentile(values_ms, 99))


def time_scoring(model, frames: int, warmup: int) -> dict:
    """Scoring alone: one prepared (1, 3, 256, 256) float frame per FastPredictor call,
    the map and score brought to numpy as the Inspector does."""
    from efficientad_fast.deploy.inference import FastPredictor

    predictor = FastPredictor(model, 1, 256, input_dtype=torch.float32, warmup=warmup)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(frames):
        began = time.perf_counter()
        pred = predictor(image)
        float(pred.score[0]), pred.anomaly_map[0, 0].float().cpu().numpy()
        times.append(1e3 * (time.perf_counter() - began))
    p50, p99 = percentiles(times)
    return {"frames": frames, "fps": 1e3 * frames / sum(times), "latency_p50_ms": p50, "latency_p99_ms": p99}


def time_end_to_end(model, video: Path, frames: int, out: Path, smoothing: str, queue_size: int) -> dict:
    """``watch`` over the video's first ``frames`` frames: frames/s over the whole run and the
    per-frame latency of frames.jsonl."""
    from efficientad_fast.stream import Inspector, watch

    inspector = Inspector(model, smoothing=smoothing, queue_size=queue_size)
    summary = watch(inspector, video, out, max_frames=frames, progress=False)
    return {
        "frames": summary["scored"],
        "fps": summary["fps"],
        "latency_p50_ms": summary["latency_p50_ms"],
        "latency_p99_ms": summary["latency_p99_ms"],
        "dropped": summary["dropped"],
    }


def alarm_figures_of(model, folder: Path, frames: int, normal_frames: int, seed: int) -> dict:
    """Raw scores of a conveyor and a normal clip (every frame scored), then every smoother
    at calibrated thresholds and at equal recall of defective parts."""
    from efficientad_fast.data import make_synthetic_video, read_video_labels
    from efficientad_fast.stream import Inspector, compare_smoothers

    clip = make_synthetic_video(
        folder / "normal.avi", frames=normal_frames, frame_size=256, defect_fraction=0.0, glitch_rate=0.0, seed=seed + 1
    )
    conveyor = make_synthetic_video(folder / "conveyor.avi", frames=frames, frame_size=256, seed=seed)
    inspector = Inspector(model, smoothing="none")
    normal = [r.score for r in inspector.run(clip)]
    scores = [r.score for r in inspector.run(conveyor)]
    labels = read_video_labels(conveyor)
    if None in scores or None in normal:
        raise RuntimeError("a frame failed to decode")
    recall = compare_smoothers(scores, labels, recall=1.0)
    return {
        "frames": frames,
        "normal_frames": normal_frames,
        "seed": seed,
        "calibrated": compare_smoothers(scores, labels, normal_scores=normal),
        "equal_recall": recall,
        "scores": scores,
        "normal_scores": normal,
        "labels": labels,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=None,
        help="a trained model file for the alarm figures (e.g. the demo's board/model.pt); "
        "without it only the speed part runs, with a random-weight calibrated model",
    )
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--speed-frames", type=int, default=32, help="frames timed per speed figure (default 32)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed scoring calls first (default 2)")
    parser.add_argument("--smoothing", default="kofn", help="smoother of the end-to-end run (default kofn)")
    parser.add_argument("--queue-size", type=int, default=2)
    parser.add_argument("--video-frames", type=int, default=240, help="conveyor frames for the alarm figures")
    parser.add_argument("--normal-frames", type=int, default=60, help="normal clip frames to calibrate on")
    parser.add_argument("--alarm-dtype", choices=tuple(DTYPES), default="bf16", help="dtype of the alarm part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", default=None, help="write all figures (and raw scores) here")
    parser.add_argument("--markdown", default=None, help="write the tables here")
    return parser.parse_args(argv)


def fresh_model(args: argparse.Namespace, dtype: str):
    """The model of --model, or a random-weight calibrated EfficientAD-S, in ``dtype``."""
    from efficientad_fast import load
    from efficientad_fast.testing import random_model

    model = load(args.model) if args.model else random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9))
    return model.eval().to(DTYPES[dtype])


def speed_part(args: argparse.Namespace, tmp: Path, result: dict) -> list[str]:
    """Scoring alone against end to end, per dtype: the table's lines (figures into ``result``)."""
    from efficientad_fast.data import make_synthetic_video

    video = make_synthetic_video(tmp / "speed.avi", frames=args.speed_frames + 4, frame_size=256, seed=args.seed)
    lines = [
        "| dtype | what | frames | frames/s | latency p50 (ms) | latency p99 (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in args.dtypes:
        model = fresh_model(args, name)
        alone = time_scoring(model, args.speed_frames, args.warmup)
        whole = time_end_to_end(model, video, args.speed_frames, tmp / f"watch_{name}", args.smoothing, args.queue_size)
        result["speed"][name] = {"scoring_alone": alone, "end_to_end": whole}
        for what, r in (("scoring alone", alone), ("end to end (watch)", whole)):
            lines.append(
                f"| {name} | {what} | {r['frames']} | {r['fps']:.2f} | {r['latency_p50_ms']:.0f} | "
                f"{r['latency_p99_ms']:.0f} |"
            )
        print("\n".join(lines[-2:]), flush=True)
    return lines


def alarm_part(args: argparse.Namespace, tmp: Path, result: dict) -> list[str]:
    """Every smoother, calibrated and at equal recall: the tables' lines (figures into ``result``)."""
    from efficientad_fast.stream import smoother_table

    alarms = alarm_figures_of(
        fresh_model(args, args.alarm_dtype), tmp, args.video_frames, args.normal_frames, args.seed
    )
    result["alarms"] = alarms
    lines = [
        "",
        f"Calibrated (99.5 % of smoothed scores on {args.normal_frames} normal frames):",
        "",
        smoother_table(alarms["calibrated"]),
        "",
        "At equal recall (the highest threshold finding every defective part):",
        "",
        smoother_table(alarms["equal_recall"]),
    ]
    print("\n".join(lines), flush=True)
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = cpu_machine_info()
    cpu = machine["cpu_model"] or "unknown CPU"
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
        "speed": {},
        "alarms": None,
    }
    lines = [f"{result['date']}, {cpu}, {result['threads']} threads, torch {result['torch']}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speed:
            lines += speed_part(args, Path(tmp), result)
        if args.model:
            lines += alarm_part(args, Path(tmp), result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
