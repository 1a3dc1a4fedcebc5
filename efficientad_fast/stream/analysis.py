"""Offline analysis of a scored stream against ground truth: replaying smoothers over
recorded scores, alarm figures (recall of defective parts, false-alarm onsets), the
threshold for a recall, the smoother comparison table and the score plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._checkpoint import save_figure
from .inspector import CALIBRATION_QUANTILE
from .smoothing import SMOOTHERS, make_smoother


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


def compare_smoothers(
    scores, labels: list[dict], *, normal_scores=None, recall: float | None = None, smoothers=SMOOTHERS, **settings
) -> list[dict]:
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
        rows.append(
            {
                "smoothing": name,
                "latency_frames": smoother.latency_frames,
                "threshold": threshold,
                **alarm_figures(replay(scores, smoother)[1], labels),
            }
        )
    return rows


def smoother_table(rows: list[dict]) -> str:
    """Markdown table of :func:`compare_smoothers` rows."""
    lines = [
        "| smoothing | latency (frames) | threshold | false alarm frames / 1000 normal | "
        "false alarm onsets / 1000 normal | defective parts found |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['smoothing']} | {r['latency_frames']:.1f} | {r['threshold']:.4g} | "
            f"{r['false_alarms_per_1000']:.1f} | {r['false_onsets_per_1000']:.1f} | "
            f"{r['found_parts']}/{r['defective_parts']} ({100 * r['part_recall']:.0f} %) |"
        )
    return "\n".join(lines)


def plot_stream(
    frames_jsonl: str | os.PathLike,
    path: str | os.PathLike,
    labels: list[dict] | None = None,
    threshold: float | None = None,
) -> Path:
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
