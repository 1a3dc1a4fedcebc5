"""Writers of results: the metrics tables of ``eval`` and the demo, the demo's report, and
the benchmark report of ``efficientad-fast report`` — per category Image AUROC, Image F1,
Pixel AUROC, Pixel F1, Pixel AUPR, AU-PRO (AU-sPRO for MVTec LOCO), training time, inference time and
latency, the per-dataset average, and with a sweep the learning-rate x weight-decay table —
as Markdown, CSV, JSON and a PNG chart. The jobs that produce the results live in jobs.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from ._checkpoint import atomic_files, atomic_write_text, save_figure

METRICS = ("image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupr", "aupro")
HEADERS = {
    "image_auroc": "Image AUROC",
    "image_f1": "Image F1",
    "pixel_auroc": "Pixel AUROC",
    "pixel_f1": "Pixel F1",
    "pixel_aupr": "Pixel AUPR",
    "aupro": "AU-PRO",
}
# MVTec LOCO (and the synthetic kit in its layout): the two kinds of anomaly apart, beside the means
LOCO_METRICS = ("structural_image_auroc", "logical_image_auroc", "structural_auspro", "logical_auspro")
LOCO_HEADERS = {
    "structural_image_auroc": "Structural Image AUROC",
    "logical_image_auroc": "Logical Image AUROC",
    "structural_auspro": "Structural AU-sPRO",
    "logical_auspro": "Logical AU-sPRO",
}


def _is_loco(dataset: str) -> bool:
    return dataset in ("loco", "mvtec_loco", "mvtecloco")


def _flatten_metrics(result: dict) -> dict[str, float]:
    if all(isinstance(v, dict) for v in result.values()):  # LOCO: structural / logical / mean
        return {f"{part}/{k}": v for part, values in result.items() for k, v in values.items()}
    return dict(result)


def metrics_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per category, one column per metric."""
    flat = {name: _flatten_metrics(r) for name, r in results.items()}
    columns = list(dict.fromkeys(k for r in flat.values() for k in r))
    lines = ["| category | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in flat.items():
        cells = [
            f"{values[c]:.3f}"
            if isinstance(values.get(c), float) and not math.isnan(values[c])
            else str(values.get(c, ""))
            for c in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_metrics(evaluation: dict, out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``metrics.json`` (metrics, timing, per-image scores) and ``metrics.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "metrics.json", out_dir / "metrics.md"
    atomic_write_text(json_path, json.dumps(evaluation, indent=2))
    timing = evaluation["timing"]
    atomic_write_text(
        md_path,
        f"# EfficientAD evaluation: {name}\n\n{metrics_table({name: evaluation['metrics']})}\n\n"
        f"{timing['images']} test images, {timing['ms_per_image']:.1f} ms per image "
        f"(batch {timing['batch_size']}, network + scoring).\n",
    )
    return json_path, md_path


def setting_label(key: str, value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return Path(value).stem if key == "teacher" else str(value)  # a file's name, no folders


def run_name(category: str, setting: dict) -> str:
    return category + "".join(f"_{k}{setting_label(k, v)}" for k, v in setting.items())


def headline_metrics(metrics: dict) -> dict[str, float]:
    """The report's six numbers; MVTec LOCO: the mean of structural and logical, with
    AU-sPRO (up to FPR 0.3) in the PRO column, plus image AUROC and AU-sPRO of each kind
    (:data:`LOCO_METRICS`)."""
    if "mean" in metrics and isinstance(metrics["mean"], dict):
        mean = metrics["mean"]
        out = {k: mean.get("auspro_0.3" if k == "aupro" else k, math.nan) for k in METRICS}
        for kind in ("structural", "logical"):
            part = metrics.get(kind, {})
            out[f"{kind}_image_auroc"] = part.get("image_auroc", math.nan)
            out[f"{kind}_auspro"] = part.get("auspro_0.3", math.nan)
        return out
    return {k: metrics.get(k, math.nan) for k in METRICS}


def _mean(rows, key) -> float:
    values = [r[key] for r in rows if is_result(r) and isinstance(r.get(key), float) and not math.isnan(r[key])]
    return sum(values) / len(values) if values else math.nan


def _fmt(value, digits=4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _teachers(result: dict) -> str:
    swept = result["sweep"].get("teacher")
    return ", ".join(str(t) for t in swept) + " (swept)" if swept else result["teacher"]


def _as_text(value) -> str:
    """A setting that is one name or a list of them (penalty image folders), as one text."""
    if not value:
        return "none"
    return str(value) if isinstance(value, (str, os.PathLike)) else " ".join(map(str, value))


def _used(rows: list[dict], key: str) -> str:
    """What the runs used (e.g. what teacher "auto" chose), each value once."""
    values = list(dict.fromkeys(r[key] for r in rows if r.get(key)))
    return ", ".join(values) if values else "–"


def _metric_columns(dataset: str) -> tuple[tuple[str, ...], list[str]]:
    """The metric keys of a report's rows and their column headers (LOCO: AU-sPRO, and the
    structural and logical columns)."""
    loco = _is_loco(dataset)
    metrics = METRICS + LOCO_METRICS if loco else METRICS
    cols = [HEADERS[k] if k != "aupro" else "AU-sPRO" if loco else "AU-PRO" for k in METRICS]
    return metrics, cols + [LOCO_HEADERS[k] for k in metrics[len(METRICS) :]]


def is_result(row: dict) -> bool:
    """A row whose numbers are a result: it ran, on real weights (not a plumbing run's random
    backbone)."""
    return not row["error"] and not row.get("plumbing_only")


def model_of(row: dict) -> str:
    """A row's model: its ``model`` field (rows from before --compare have none: EfficientAD)."""
    return row.get("model", "efficientad")


def _backbone(row: dict) -> str:
    return row.get("backbone") or f"teacher: {row.get('teacher_used') or row.get('teacher', '–')}"


def compare_table(result: dict) -> str:
    """Markdown: one row per (category, model) with the backbone each ran on, then the average
    of each model over the categories where it ran. A failed row says why (e.g. what to fetch);
    a plumbing row (random backbone) shows no numbers."""
    rows = result["rows"]
    metrics, cols = _metric_columns(result["dataset"])
    head = ["Category", "Model", "Backbone", *cols, "Train time (s)", "Latency (ms)", "Images/s", "Model (MiB)"]
    timing = ("train_s", "latency_ms", "images_per_s", "model_mib")
    digits = {"train_s": 1, "latency_ms": 2, "images_per_s": 1, "model_mib": 1}
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["category"], model_of(r), _backbone(r) if not r["error"] else "–"]
        if r["error"]:
            cells += [f"failed: {r['error'][:120]}"] + [""] * (len(head) - len(cells) - 1)
        elif r.get("plumbing_only"):
            cells += ["plumbing only (random backbone): not a result"] + [""] * (len(head) - len(cells) - 1)
        else:
            cells += [_fmt(r.get(k)) for k in metrics] + [_fmt(r.get(k), digits[k]) for k in timing]
        lines.append(f"| {' | '.join(cells)} |")
    for model in dict.fromkeys(model_of(r) for r in rows):
        ran = [r for r in rows if model_of(r) == model and is_result(r)]
        if ran:
            cells = [f"**average** ({len(ran)})", model, ""] + [_fmt(_mean(ran, k)) for k in metrics]
            lines.append(f"| {' | '.join(cells + [_fmt(_mean(ran, k), digits[k]) for k in timing])} |")
    return "\n".join(lines)


def report_tables(result: dict) -> str:
    """Markdown: Table 4 (per category, with the dataset average) and, with a sweep,
    Table 5 (one row per category and setting); with ``--compare``, :func:`compare_table`."""
    if result.get("compare"):
        return compare_table(result)
    rows = result["rows"]
    metrics, cols = _metric_columns(result["dataset"])
    sweep = bool(result["sweep"])
    swept = list(result["sweep"]) if sweep else []
    head = (
        ["Category"]
        + [k.replace("_", " ").title() if k != "lr" else "LR" for k in swept]
        + cols
        + ["Train time (s)", "Infer time (s)", "Latency (ms)"]
    )
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["category"]] + [setting_label(k, r[k]) for k in swept]
        if r["error"]:
            cells += [f"failed: {r['error'][:80]}"] + [""] * (len(head) - len(cells) - 1)
        else:
            cells += [_fmt(r.get(k)) for k in metrics] + [
                _fmt(r["train_s"], 1),
                _fmt(r["infer_s"], 2),
                _fmt(r["latency_ms"], 2),
            ]
        lines.append(f"| {' | '.join(cells)} |")
    if not sweep:
        avg = (
            ["**average**"]
            + [_fmt(_mean(rows, k)) for k in metrics]
            + [_fmt(_mean(rows, "train_s"), 1), _fmt(_mean(rows, "infer_s"), 2), _fmt(_mean(rows, "latency_ms"), 2)]
        )
        lines.append(f"| {' | '.join(avg)} |")
    return "\n".join(lines)


def write_report(result: dict, out: str | os.PathLike) -> dict[str, Path]:
    """report.md, report.csv, report.json and report.png under ``out`` (and with ``--compare``
    compare.png)."""
    out = Path(out)
    paths = {k: out / f"report.{k}" for k in ("md", "csv", "json", "png")}
    compared = bool(result.get("compare"))
    rows = result["rows"]
    title = "Table 5: hyperparameter settings" if result["sweep"] else "Table 4: per-category results"
    failed = [r for r in rows if r["error"]]
    cfg = result["train_config"]
    md = [
        f"# EfficientAD-{result['model_size'][0].upper()} on {result['dataset']} ({result['data']})",
        "",
        f"{cfg['steps']} training steps, batch {cfg['batch_size']}, lr {cfg['lr']:g}, weight decay "
        f"{cfg['weight_decay']:g}, {result['image_size']} px, teacher: {_teachers(result)}, penalty images: "
        f"{_as_text(result.get('penalty_images'))}, device "
        f"{result['device']}. Train time = training + calibration; infer time = the test split "
        "(networks + scoring); latency = mean of the paper's protocol at batch 1 (image on the host "
        "to map on the host).",
        "",
        f"Used: teacher {_used(rows, 'teacher_used')}; penalty images {_used(rows, 'penalty_used')}.",
        "",
        *(_compare_note(result) if compared else ()),
        f"## {title}",
        "",
        report_tables(result),
        "",
    ]
    if result["latency_vs_batch"]:
        md += ["## Latency against batch size", "", "| batch | ms per batch | images/s |", "|---|---|---|"]
        md += [f"| {p['batch']} | {p['ms']:.2f} | {p['images_per_s']:.1f} |" for p in result["latency_vs_batch"]]
        md.append("")
    if failed:
        md += ["## Failures", ""] + [f"- {r['category']} ({model_of(r)}): {r['error']}" for r in failed]
        md.append("")
    md += ["![chart](report.png)", ""] + (["![comparison](compare.png)", ""] if compared else [])
    md += [f"Total {result['total_s'] / 60:.1f} min."]
    atomic_write_text(paths["md"], "\n".join(md) + "\n")

    fields = [
        "dataset",
        "category",
        "model",
        "backbone",
        "plumbing_only",
        "budget",
        "model_size",
        "teacher",
        "teacher_used",
        "penalty_used",
        "lr",
        "weight_decay",
        "steps",
        "batch_size",
        *METRICS,
        *(LOCO_METRICS if _is_loco(result["dataset"]) else ()),
        "train_s",
        "infer_s",
        "infer_ms_per_image",
        "latency_ms",
        "images_per_s",
        "model_mib",
        "error",
    ]
    with atomic_files(paths["csv"]) as (temporary,), open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(paths["json"], json.dumps(result, indent=2, default=str))
    plot_report(result, paths["png"])
    if compared:
        paths["compare_png"] = out / "compare.png"
        plot_comparison(result, paths["compare_png"])
    return paths


def _compare_note(result: dict) -> list[str]:
    return [
        f"Compared with {', '.join(result['compare'])} (anomalib's torch models, fitted on the same training "
        "images, scored by the same metrics code and timed by the same protocol; FastFlow trains for "
        "EfficientAD's training time on the category unless a budget is given, PatchCore and PaDiM fit in "
        "one pass). Their maps are not normalized or calibrated: the threshold-free metrics (AUROC, AUPR, "
        "AU-PRO) compare them; F1 is each model's best over thresholds. Model (MiB): parameters and "
        "buffers, memory banks included.",
        "",
    ]


def plot_comparison(result: dict, path: str | os.PathLike) -> None:
    """Image AUROC per category and model (grouped bars), and each model's mean latency at
    batch 1 against its mean image AUROC: the question "is EfficientAD the right model here"
    in one picture. Failed and plumbing rows are left out (the tables say why)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in result["rows"] if is_result(r)]
    models = list(dict.fromkeys(model_of(r) for r in rows))  # a model without one result: the table says why
    missing = [m for m in dict.fromkeys(model_of(r) for r in result["rows"]) if m not in models]
    categories = list(dict.fromkeys(r["category"] for r in result["rows"]))
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        by_category = {r["category"]: r for r in rows if model_of(r) == model}
        xs = [i + (j - (len(models) - 1) / 2) * width for i, c in enumerate(categories) if c in by_category]
        ys = [by_category[c]["image_auroc"] for c in categories if c in by_category]
        bars.bar(xs, ys, width=width, label=model)
        ran = list(by_category.values())
        if ran:
            latency, auroc = _mean(ran, "latency_ms"), _mean(ran, "image_auroc")
            scatter.scatter([latency], [auroc], s=80, label=model)
            scatter.annotate(model, (latency, auroc), textcoords="offset points", xytext=(6, 4))
    bars.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=8)
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("image AUROC")
    no_result = f"; no result: {', '.join(missing)}" if missing else ""
    bars.set_title(f"image AUROC per category ({result['dataset']}{no_result})")
    if models:
        bars.legend(loc="lower right", fontsize=8)
    latencies = [float(c.get_offsets()[0][0]) for c in scatter.collections if len(c.get_offsets())]
    if latencies and min(latencies) > 0 and max(latencies) > 5 * min(latencies):  # log only for a wide spread
        scatter.set_xscale("log")
        scatter.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    scatter.margins(x=0.25, y=0.1)  # room for the labels
    scatter.set_xlabel(f"latency at batch 1, ms (host to host, {result['device']})")
    scatter.set_ylabel("mean image AUROC")
    scatter.set_title("accuracy against latency (up and left is better)")
    scatter.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_report(result: dict, path: str | os.PathLike) -> None:
    """Per-category image/pixel AUROC bars and, when measured, latency against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if is_result(r) and model_of(r) == "efficientad"]
    curve = result["latency_vs_batch"]
    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(12 if curve else 7, 4), squeeze=False)
    ax = axes[0][0]
    names = [run_name(r["category"], {k: r[k] for k in result["sweep"]}) for r in rows]
    x = list(range(len(rows)))
    ax.bar([i - 0.2 for i in x], [r["image_auroc"] for r in rows], width=0.4, label="image AUROC")
    ax.bar([i + 0.2 for i in x], [r["pixel_auroc"] for r in rows], width=0.4, label="pixel AUROC")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"EfficientAD-{result['model_size'][0].upper()} on {result['dataset']}")
    ax.legend(loc="lower right")
    if curve:
        ax = axes[0][1]
        ax.plot([p["batch"] for p in curve], [p["ms"] for p in curve], "o-", label="ms per batch")
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per batch (host to host)")
        ax.set_xscale("log", base=2)
        ax2 = ax.twinx()
        ax2.plot([p["batch"] for p in curve], [p["images_per_s"] for p in curve], "s--", color="tab:orange")
        ax2.set_ylabel("images/s", color="tab:orange")
        ax.set_title(f"latency against batch size ({result['device']})")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def write_demo_report(out: Path, results: dict, summaries: dict, table: str, elapsed: float) -> Path:
    lines = [
        "# efficientad_fast demo",
        "",
        "EfficientAD-S trained on the built-in synthetic dataset (efficientad_fast.data.make_synthetic) "
        f"with the teacher: {next(iter(summaries.values()))['teacher']} and penalty images: "
        f"{next(iter(summaries.values())).get('penalty_source', 'none')}, calibrated on held-out "
        "training images and evaluated on the test split.",
        "",
        table,
        "",
        f"Total time {elapsed / 60:.1f} min (dataset, training, calibration, evaluation, pictures).",
        "",
    ]
    for category, evaluation in results.items():
        s = summaries[category]
        lines += [
            f"## {category}",
            "",
            f"{s['train_images']} training images, {s['held_out_images']} held out for the quantiles, "
            f"{s['train_config']['steps']} steps at {s['seconds_per_step']:.2f} s/step on {s['device']}; "
            f"inference {evaluation['timing']['ms_per_image']:.0f} ms/image.",
            "",
            f"![loss curve]({category}/loss_curve.png)",
            "",
            "Heatmaps (left: image; right: anomaly map, white = above threshold, green = ground truth):",
            "",
        ]
        for png in sorted((out / category / "heatmaps").glob("*.png")):
            lines.append(f"![{png.stem}]({category}/heatmaps/{png.name})")
        lines.append("")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
