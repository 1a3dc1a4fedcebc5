"""The benchmark report (``efficientad-fast report``): train and evaluate every category of a
dataset and write the tables of the EfficientAD benchmark report our users start from —
per category Image AUROC, Image F1, Pixel AUROC, Pixel F1, AU-PRO (AU-sPRO for MVTec
LOCO), training time, inference time and latency, the per-dataset average, and with a sweep
the learning-rate x weight-decay table — as Markdown, CSV, JSON and a PNG chart.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import time
import traceback
from pathlib import Path

import torch

from .train import TrainConfig

METRICS = ("image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "aupro")
# teacher: "random", "distilled" or a teacher file (compares teachers on the same data)
SWEEP_KEYS = {"lr": float, "weight_decay": float, "steps": int, "batch_size": int, "teacher": str}
HEADERS = {"image_auroc": "Image AUROC", "image_f1": "Image F1", "pixel_auroc": "Pixel AUROC",
           "pixel_f1": "Pixel F1", "aupro": "AU-PRO"}


def parse_sweep(items) -> dict[str, list]:
    """``["lr=1e-6,1e-4", "weight_decay=1e-6,1e-4"]`` -> {"lr": [1e-6, 1e-4], ...}."""
    sweep: dict[str, list] = {}
    for item in items or ():
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ValueError(f"a sweep item looks like lr=1e-6,1e-4, got {item!r}")
        if key not in SWEEP_KEYS:
            raise ValueError(f"can sweep {sorted(SWEEP_KEYS)}, not {key!r}")
        try:
            sweep[key] = [SWEEP_KEYS[key](v) for v in values.split(",") if v.strip()]
        except ValueError as exc:
            raise ValueError(f"bad value in sweep item {item!r}: {exc}") from None
    return sweep


def _settings(sweep: dict[str, list]) -> list[dict]:
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def _setting_label(key: str, value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return Path(value).stem if key == "teacher" else str(value)  # a file's name, no folders


def _run_name(category: str, setting: dict) -> str:
    return category + "".join(f"_{k}{_setting_label(k, v)}" for k, v in setting.items())


def _headline(metrics: dict) -> dict[str, float]:
    """The report's five numbers; MVTec LOCO: the mean of structural and logical, with
    AU-sPRO in the PRO column."""
    if "mean" in metrics and isinstance(metrics["mean"], dict):
        mean = metrics["mean"]
        return {k: mean.get("auspro" if k == "aupro" else k, math.nan) for k in METRICS}
    return {k: metrics.get(k, math.nan) for k in METRICS}


def _latency_ms(model, batch: int, image_size: int, runs: int | None) -> float:
    from .benchmark import time_predict

    return time_predict(model, batch, image_size=image_size, warmup=1, runs=runs).mean_ms


def run_report(
    data: str | os.PathLike,
    dataset: str,
    out: str | os.PathLike,
    *,
    categories=None,
    model_size: str = "small",
    config: TrainConfig | None = None,
    sweep: dict[str, list] | None = None,
    teacher: str | None = None,
    image_size: int = 256,
    device: str = "auto",
    latency_batches=(1, 4, 16),
    latency_runs: int | None = None,
    log=print,
) -> dict:
    """Train, calibrate and evaluate each category (for each sweep setting) and write
    ``report.md``, ``report.csv``, ``report.json`` and ``report.png`` to ``out``.

    A category that fails is reported with its error and the others go on. Training time is
    training + calibration; inference time is the test split's network and scoring time;
    latency is the paper's protocol at batch 1 (mean ms, image on the host to map on the
    host). ``latency_batches`` also times the first trained model at those batch sizes for
    the latency-against-batch-size chart.
    """
    from .data import list_categories
    from .pipeline import evaluate_model, resolve_device, train_category

    config = config or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if categories is None:
        categories = list_categories(data, dataset) if dataset != "folder" else [None]
        if not categories:
            raise FileNotFoundError(f"no categories (folders with a train/ folder) under {data}")
    settings = _settings(sweep or {})
    runs = [(c, s) for c in categories for s in settings]
    names = [_run_name(c or Path(data).name, s) for c, s in runs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:  # e.g. two teacher files with the same name in different folders
        raise ValueError(f"sweep settings would share the run folders {clashes}; give them different names")
    rows, latency_curve = [], []
    started = time.perf_counter()
    for i, ((category, setting), name) in enumerate(zip(runs, names), 1):
        label = f"[report {i}/{len(runs)}] {name}"
        log(f"{label}: training {model_size} for {setting.get('steps', config.steps)} steps")
        row = {"dataset": dataset, "category": category or Path(data).name, "model_size": model_size,
               "lr": setting.get("lr", config.lr), "weight_decay": setting.get("weight_decay", config.weight_decay),
               "steps": setting.get("steps", config.steps), "batch_size": setting.get("batch_size", config.batch_size),
               "teacher": setting.get("teacher", teacher or "random"), "error": None}
        try:
            run_config = dataclasses.replace(config, **{k: v for k, v in setting.items() if k != "teacher"})
            model, summary = train_category(data, dataset, category, out / name, model_size=model_size,
                                            config=run_config, teacher=row["teacher"], image_size=image_size,
                                            device=device)
            log(f"{label}: evaluating")
            evaluation = evaluate_model(model, data, dataset, category, image_size=image_size,
                                        progress=config.progress, workers=config.workers)
            row.update(_headline(evaluation["metrics"]))
            row["train_s"] = summary["total_seconds"]
            row["infer_s"] = evaluation["timing"]["seconds"]
            row["infer_ms_per_image"] = evaluation["timing"]["ms_per_image"]
            row["latency_ms"] = _latency_ms(model, 1, image_size, latency_runs)
            row["metrics"] = evaluation["metrics"]
            if not latency_curve and latency_batches:
                for batch in latency_batches:
                    ms = _latency_ms(model, batch, image_size, latency_runs)
                    latency_curve.append({"batch": batch, "ms": ms, "images_per_s": 1e3 * batch / ms})
            log(f"{label}: image AUROC {row['image_auroc']:.3f}, pixel AUROC {row['pixel_auroc']:.3f}, "
                f"latency {row['latency_ms']:.1f} ms")
            del model
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # report it, go on with the next category
            row["error"] = f"{type(exc).__name__}: {exc}"
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / "error.txt").write_text(traceback.format_exc())
            log(f"{label}: FAILED: {row['error']} (details in {out / name / 'error.txt'})")
        rows.append(row)
    result = {
        "dataset": dataset, "data": str(data), "model_size": model_size, "image_size": image_size,
        "device": str(resolve_device(device)), "train_config": dataclasses.asdict(config),
        "sweep": sweep or {}, "teacher": teacher or "random", "rows": rows,
        "latency_vs_batch": latency_curve, "total_s": time.perf_counter() - started,
    }
    write_report(result, out)
    return result


def _mean(rows, key) -> float:
    values = [r[key] for r in rows if not r["error"] and isinstance(r.get(key), float) and not math.isnan(r[key])]
    return sum(values) / len(values) if values else math.nan


def _fmt(value, digits=4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _teachers(result: dict) -> str:
    swept = result["sweep"].get("teacher")
    return ", ".join(str(t) for t in swept) + " (swept)" if swept else result["teacher"]


def report_tables(result: dict) -> str:
    """Markdown: Table 4 (per category, with the dataset average) and, with a sweep,
    Table 5 (one row per category and setting)."""
    rows = result["rows"]
    pro = "AU-sPRO" if result["dataset"] in ("loco", "mvtec_loco") else "AU-PRO"
    cols = [HEADERS[k] if k != "aupro" else pro for k in METRICS]
    sweep = bool(result["sweep"])
    swept = list(result["sweep"]) if sweep else []
    head = ["Category"] + [k.replace("_", " ").title() if k != "lr" else "LR" for k in swept] + cols + [
        "Train time (s)", "Infer time (s)", "Latency (ms)"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["category"]] + [_setting_label(k, r[k]) for k in swept]
        if r["error"]:
            cells += [f"failed: {r['error'][:80]}"] + [""] * (len(head) - len(cells) - 1)
        else:
            cells += [_fmt(r[k]) for k in METRICS] + [_fmt(r["train_s"], 1), _fmt(r["infer_s"], 2),
                                                      _fmt(r["latency_ms"], 2)]
        lines.append(f"| {' | '.join(cells)} |")
    if not sweep:
        avg = ["**average**"] + [_fmt(_mean(rows, k)) for k in METRICS] + [
            _fmt(_mean(rows, "train_s"), 1), _fmt(_mean(rows, "infer_s"), 2), _fmt(_mean(rows, "latency_ms"), 2)]
        lines.append(f"| {' | '.join(avg)} |")
    return "\n".join(lines)


def write_report(result: dict, out: str | os.PathLike) -> dict[str, Path]:
    """report.md, report.csv, report.json and report.png under ``out``."""
    out = Path(out)
    paths = {k: out / f"report.{k}" for k in ("md", "csv", "json", "png")}
    rows = result["rows"]
    title = "Table 5: hyperparameter settings" if result["sweep"] else "Table 4: per-category results"
    failed = [r for r in rows if r["error"]]
    cfg = result["train_config"]
    md = [
        f"# EfficientAD-{result['model_size'][0].upper()} on {result['dataset']} ({result['data']})",
        "",
        f"{cfg['steps']} training steps, batch {cfg['batch_size']}, lr {cfg['lr']:g}, weight decay "
        f"{cfg['weight_decay']:g}, {result['image_size']} px, teacher: {_teachers(result)}, device "
        f"{result['device']}. Train time = training + calibration; infer time = the test split "
        "(networks + scoring); latency = mean of the paper's protocol at batch 1 (image on the host "
        "to map on the host).",
        "",
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
        md += ["## Failures", ""] + [f"- {r['category']}: {r['error']}" for r in failed] + [""]
    md += [f"![chart](report.png)", "", f"Total {result['total_s'] / 60:.1f} min."]
    paths["md"].write_text("\n".join(md) + "\n")

    fields = ["dataset", "category", "model_size", "teacher", "lr", "weight_decay", "steps", "batch_size", *METRICS,
              "train_s", "infer_s", "infer_ms_per_image", "latency_ms", "error"]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps(result, indent=2, default=str))
    plot_report(result, paths["png"])
    return paths


def plot_report(result: dict, path: str | os.PathLike) -> None:
    """Per-category image/pixel AUROC bars and, when measured, latency against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if not r["error"]]
    curve = result["latency_vs_batch"]
    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(12 if curve else 7, 4), squeeze=False)
    ax = axes[0][0]
    names = [_run_name(r["category"], {k: r[k] for k in result["sweep"]}) for r in rows]
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
