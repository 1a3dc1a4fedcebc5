"""The demo job: the built-in synthetic data, trained, evaluated, reported, and a conveyor video watched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .._checkpoint import atomic_write_text, writable_folder
from ..data import make_synthetic
from ..model import EfficientAD
from ..precision import choose_precision
from ..report import metrics_table, write_demo_report, write_metrics
from ..train import TrainConfig
from .evaluate import evaluate_model
from .train import train_category

# Steps per built-in category: the object (board) needs more than the texture (weave) with
# the distilled teacher to reach the demo's 0.90 AUROC targets (bench/results/demo_defaults_2026-12-01.md).
DEMO_STEPS = {"weave": 250, "board": 500}


# bf16 autocast is 2-4x faster per step on CPUs with AMX or AVX-512 BF16 on AMD Zen, and 0.6x
# on Intel CPUs with AVX-512 BF16 but no AMX (bench/bench_train.py): "auto" measures it.
DEMO_AMP = "auto"


# No penalty images in the demo (train and report default to "auto"): on board they cost 42 %
# more time per step for +0.02 image AUROC within the seeds' spread (bench/results/demo_defaults_2026-12-01.md).
DEMO_PENALTY = "none"


def run_demo(
    out: str | os.PathLike = "demo_out",
    *,
    steps: int | dict[str, int] | None = None,
    seed: int = 0,
    categories=("weave", "board"),
    device: str = "auto",
    batch_size: int = 1,
    amp: str | None = DEMO_AMP,
    teacher: str = "auto",
    penalty_images=DEMO_PENALTY,
    progress: bool = True,
    video: bool = False,
    log=print,
) -> dict:
    """Make the built-in synthetic dataset, train EfficientAD-S on each category, calibrate,
    evaluate, write heatmaps and ``report.md``; returns {category: evaluation}. ``steps``:
    one number for every category, or {category: steps}; default :data:`DEMO_STEPS`.
    ``teacher`` and ``penalty_images`` as :func:`train_category` takes them. ``video``:
    also watch a synthetic conveyor video with the board model (:func:`_demo_video`)."""
    steps = DEMO_STEPS if steps is None else steps
    steps_of = steps if isinstance(steps, dict) else dict.fromkeys(categories, steps)
    if set(categories) - set(steps_of):
        raise ValueError(f"steps: no number for the categories {sorted(set(categories) - set(steps_of))}")
    out = writable_folder(out)
    data = out / "data"
    started = time.perf_counter()
    log(f"[demo] writing the built-in dataset to {data}")
    make_synthetic(data, seed=seed, categories=tuple(categories), overwrite=True)
    results, summaries, models = {}, {}, {}
    for category in categories:
        log(f"[demo] {category}: training EfficientAD-S for {steps_of[category]} steps")
        config = TrainConfig(
            steps=steps_of[category], batch_size=batch_size, seed=seed, amp=amp, checkpoint_every=0, progress=progress
        )
        # overwrite: the demo remakes its data and runs each time
        model, summaries[category] = train_category(
            data,
            "mvtec_ad",
            category,
            out / category,
            config=config,
            device=device,
            teacher=teacher,
            penalty_images=penalty_images,
            overwrite=True,
        )
        log(f"[demo] {category}: evaluating")
        evaluation = evaluate_model(
            model, data, "mvtec_ad", category, progress=progress, heatmap_dir=out / category / "heatmaps"
        )
        write_metrics(evaluation, out / category, category)
        results[category] = evaluation
        models[category] = model
    video_lines = []
    if video:
        category = "board" if "board" in models else next(iter(models))
        video_lines = _demo_video(models[category], out, category, seed, progress, log)
    elapsed = time.perf_counter() - started
    table = metrics_table({c: r["metrics"] for c, r in results.items()})
    report = write_demo_report(out, results, summaries, table, elapsed)
    if video_lines:
        atomic_write_text(report, report.read_text().rstrip("\n") + "\n\n" + "\n".join(video_lines) + "\n")
    log("\n" + table)
    log(f"\n[demo] done in {elapsed / 60:.1f} min; report: {out / 'report.md'}")
    return results


# The demo's conveyor: frames of the video watched and of the normal clip calibrated on.
DEMO_VIDEO_FRAMES, DEMO_NORMAL_FRAMES = 192, 48


def _demo_video(model: EfficientAD, out: Path, category: str, seed: int, progress: bool, log) -> list[str]:
    """The demo's live-line step: a synthetic conveyor of ``category`` parts and a clip of
    normal parts (:func:`efficientad_fast.data.make_synthetic_video`, 256 px frames), the
    threshold calibrated on the clip, ``watch`` over the conveyor with k-of-n smoothing
    (in the fastest precision here: :func:`efficientad_fast.precision.choose_precision`), and
    every smoother compared on the same raw scores.
    Returns the report section's Markdown lines."""
    import copy

    from ..data import make_synthetic_video, read_video_labels
    from ..stream import Inspector, compare_smoothers, format_summary, plot_stream, smoother_table, watch

    folder = out / "video"
    log(f"[demo] video: a conveyor of {category} parts ({DEMO_VIDEO_FRAMES} frames) and a normal clip")
    clip = make_synthetic_video(
        folder / "normal.avi",
        category,
        frames=DEMO_NORMAL_FRAMES,
        frame_size=256,
        defect_fraction=0.0,
        glitch_rate=0.0,
        seed=seed + 1,
    )
    conveyor = make_synthetic_video(
        folder / "conveyor.avi", category, frames=DEMO_VIDEO_FRAMES, frame_size=256, seed=seed
    )
    fast = choose_precision(copy.deepcopy(model), batch_size=1, image_size=256, log=log)
    inspector = Inspector(fast, smoothing="kofn")
    normal = [r.score for r in inspector.run(clip) if r.score is not None]
    calibrated = compare_smoothers(
        normal,
        [{"frame": i, "defective": 0, "part": 0} for i in range(len(normal))],
        normal_scores=normal,
        smoothers=("kofn",),
    )[0]["threshold"]
    inspector.set_threshold(calibrated)
    log(f"[demo] video: watching with k-of-n smoothing, threshold {calibrated:.4g} (99.5 % of the normal clip)")
    summary = watch(inspector, conveyor, folder / "watch", progress=progress)
    log(format_summary(summary))
    rows = [json.loads(line) for line in (folder / "watch" / "frames.jsonl").read_text().splitlines()]
    labels = read_video_labels(conveyor)
    scores = [r["score"] for r in rows]
    if len(scores) != len(labels) or None in scores:
        raise RuntimeError(f"demo video: {len(scores)} scores for {len(labels)} frames (decode errors?)")
    table = smoother_table(compare_smoothers(scores, labels, normal_scores=normal))
    plot_stream(folder / "watch" / "frames.jsonl", folder / "scores.png", labels, calibrated)
    lines = [
        f"## Watching a conveyor ({category})",
        "",
        f"`efficientad-fast watch` with the {category} model on a synthetic conveyor "
        f"(video/conveyor.avi, {len(labels)} frames at 256 px: parts slide in and rest under the camera, "
        "with camera noise and one-frame glitches; some parts defective). Each smoother's threshold is the "
        f"99.5 % quantile of its smoothed scores on a clip of {len(normal)} normal frames (video/normal.avi), "
        "all on the same raw scores:",
        "",
        table,
        "",
        f"Live run (k-of-n): {summary['fps']:.2f} frames/s, latency p50 {summary['latency_p50_ms']:.0f} ms, "
        f"p99 {summary['latency_p99_ms']:.0f} ms; {summary['alarms']} alarms.",
        "",
        "![scores](video/scores.png)",
        "",
    ]
    for png in sorted((folder / "watch" / "alarms").glob("*.png"))[:4]:
        lines.append(f"![{png.stem}](video/watch/alarms/{png.name})")
    return lines
