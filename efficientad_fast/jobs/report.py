"""The report job: train, calibrate and evaluate every category (and sweep setting) on a runner
(:mod:`.engines`) and write report.md/csv/json/png."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from pathlib import Path

from .._checkpoint import atomic_write_text, writable_folder
from .._device import resolve_device
from ..benchmark import time_predict
from ..data import list_categories
from ..report import headline_metrics, run_name, write_report
from ..train import CHECKPOINT_NAME, TrainConfig
from .engines import LocalRunner, record_failure
from .evaluate import evaluate_model
from .train import train_category


# teacher: "random", "distilled", "paper" or a teacher file (compares teachers on the same data)
def _number_from(least: float, strict: bool, kind=float):
    """A sweep value parser: ``kind`` of the text, finite and >= ``least`` (> when ``strict``),
    so a value no run could train with is refused before the first run, not in the middle."""

    def parse(text: str):
        value = kind(text)
        if not (math.isfinite(value) and (value > least if strict else value >= least)):
            raise ValueError(f"must be a finite number {'>' if strict else '>='} {least:g}, got {text.strip()}")
        return value

    return parse


def _teacher_value(text: str) -> str:
    """A sweep's teacher: a keyword or a file that exists (checked before the first run)."""
    text = text.strip()
    if text not in ("auto", "random", "distilled", "paper") and not Path(text).is_file():
        raise ValueError(f"no teacher file {text} (or one of auto, random, distilled, paper)")
    return text


SWEEP_KEYS = {
    "lr": _number_from(0, strict=True),
    "weight_decay": _number_from(0, strict=False),
    "steps": _number_from(1, strict=False, kind=int),
    "batch_size": _number_from(1, strict=False, kind=int),
    "teacher": _teacher_value,
}


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
        if key in sweep:  # the later one silently won before
            raise ValueError(f"{key} is swept twice; give its values in one item, e.g. {key}=V1,V2")
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


def _latency_ms(model, batch: int, image_size: int, runs: int | None) -> float:
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
    teacher: str | None = "auto",
    image_size: int = 256,
    device: str = "auto",
    latency_batches=(1, 4, 16),
    latency_runs: int | None = None,
    penalty_images="auto",
    resume: bool = False,
    runner=None,
    log=print,
) -> dict:
    """Train, calibrate and evaluate each category (for each sweep setting) and write
    ``report.md``, ``report.csv``, ``report.json`` and ``report.png`` to ``out``.

    Each run goes to ``runner`` (default: a :class:`~.engines.LocalRunner`, one after another
    here; a :class:`~.engines.RayRunner`: each a Ray task, all at once); the rows come in run
    order whichever ran them. A run that fails is reported with its error (traceback in its
    ``error.txt``) and the others go on. Training time is training + calibration; inference
    time is the test split's network and scoring time; latency is the paper's protocol at
    batch 1 (mean ms, image on the host to map on the host). ``latency_batches`` also times
    the first run's model at those batch sizes for the latency-against-batch-size chart (none
    when that run fails). ``resume``: a run whose folder holds its finished row
    (``row.json``) is not run again, an interrupted one continues from its checkpoint (see
    :func:`report_run`).
    """
    config = config or TrainConfig()
    config.check()
    runner = runner or LocalRunner(log)
    runs = report_runs(data, dataset, categories, sweep)
    out = writable_folder(out)
    started = time.perf_counter()
    rows: list[dict | None] = [None] * len(runs)
    curves: list[list] = [[] for _ in runs]
    labels = [f"[report {i}/{len(runs)}] {name}" for i, (_, _, name) in enumerate(runs, 1)]
    with runner:
        curve_wanted = bool(latency_batches)
        for i, (category, setting, name) in enumerate(runs):
            finished = read_finished_run(out / name) if resume else None
            if finished is not None:
                log(f"{labels[i]}: finished by an earlier run, not run again (--resume)")
                rows[i], curves[i] = finished["row"], finished["latency_vs_batch"]
                curve_wanted = curve_wanted and not curves[i]
                continue
            if isinstance(runner, LocalRunner):
                log(f"{labels[i]}: training {model_size} for {setting.get('steps', config.steps)} steps")
            kwargs = dict(
                data=runner.path(data),
                dataset=dataset,
                category=category,
                setting=setting,
                out_dir=runner.path(out / name),
                model_size=model_size,
                config=config,
                teacher=teacher,
                image_size=image_size,
                device=runner.device(device),
                latency_runs=latency_runs,
                penalty_images=penalty_images,
                latency_batches=latency_batches if curve_wanted else (),
                resume=resume,
                label=labels[i],
            )
            curve_wanted = False
            runner.submit(i, f"report {name}", report_run, kwargs, local_log=True)
        if not isinstance(runner, LocalRunner) and None in rows:
            log(f"[report] {rows.count(None)} runs on {runner.where}")

        def done(i, run):
            rows[i], curves[i] = run["row"], run["latency_vs_batch"]
            row = run["row"]
            log(
                f"{labels[i]}: image AUROC {row['image_auroc']:.3f}, pixel AUROC {row['pixel_auroc']:.3f}, "
                f"latency {row['latency_ms']:.1f} ms"
            )

        def failed(i, error, details):
            category, setting, name = runs[i]
            rows[i] = record_failure(
                report_row(data, dataset, category, setting, model_size, config, teacher), out / name, error, details
            )
            log(f"{labels[i]}: FAILED{runner.tries_note}: {error} (details in {out / name / 'error.txt'})")

        runner.gather(done, failed)
    finished_rows = [r for r in rows if r is not None]
    assert len(finished_rows) == len(rows)  # each run was finished before, done or failed
    latency_curve = next((c for c in curves if c), [])
    return finish_report(
        out,
        data,
        dataset,
        finished_rows,
        latency_curve,
        started,
        model_size=model_size,
        config=config,
        sweep=sweep,
        teacher=teacher,
        image_size=image_size,
        device=device,
        penalty_images=penalty_images,
    )


def finish_report(
    out: Path,
    data,
    dataset: str,
    rows: list[dict],
    latency_curve: list[dict],
    started: float,
    *,
    model_size: str,
    config: TrainConfig,
    sweep,
    teacher,
    image_size: int,
    device: str,
    penalty_images,
) -> dict:
    """The report's result (settings, rows in run order, the latency curve, total time since
    ``started``), written by :func:`efficientad_fast.report.write_report`; both engines end here."""
    result = {
        "dataset": dataset,
        "data": str(data),
        "model_size": model_size,
        "image_size": image_size,
        "device": str(resolve_device(device)),
        "train_config": dataclasses.asdict(config),
        "sweep": sweep or {},
        "teacher": teacher or "auto",
        "penalty_images": penalty_images,
        "rows": rows,
        "latency_vs_batch": latency_curve,
        "total_s": time.perf_counter() - started,
    }
    write_report(result, out)
    return result


def report_runs(data, dataset: str, categories, sweep) -> list[tuple[str | None, dict, str]]:
    """(category, sweep setting, run folder name) for every run of a report; refuses settings
    whose runs would share a folder."""
    if categories is None:
        categories = list_categories(data, dataset) if dataset != "folder" else [None]
        if not categories:
            raise FileNotFoundError(f"no categories (folders with a train/ folder) under {data}")
    runs = [(c, s, run_name(c or Path(data).name, s)) for c in categories for s in _settings(sweep or {})]
    names = [name for _, _, name in runs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:  # e.g. two teacher files with the same name in different folders
        raise ValueError(f"sweep settings would share the run folders {clashes}; give them different names")
    return runs


ROW_FILE = "row.json"  # a report run's finished row: what --resume reads instead of running it again


def report_row(
    data, dataset: str, category: str | None, setting: dict, model_size: str, config: TrainConfig, teacher: str | None
) -> dict:
    """A report row's settings (category, model size, lr, weight decay, steps, batch size,
    teacher) before its run fills in the results; ``error`` None."""
    return {
        "dataset": dataset,
        "category": category or Path(data).name,
        "model_size": model_size,
        "lr": setting.get("lr", config.lr),
        "weight_decay": setting.get("weight_decay", config.weight_decay),
        "steps": setting.get("steps", config.steps),
        "batch_size": setting.get("batch_size", config.batch_size),
        "teacher": setting.get("teacher", teacher or "auto"),
        "error": None,
    }


def read_finished_run(out_dir: Path) -> dict | None:
    """{"row", "latency_vs_batch"} of a run that finished (its ``row.json``), else None."""
    try:
        finished = json.loads((Path(out_dir) / ROW_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # never finished, or cut off while writing
        return None
    return finished if finished.get("row", {}).get("error", "missing") is None else None


def report_run(
    data,
    dataset: str,
    category: str | None,
    setting: dict,
    out_dir: Path,
    *,
    model_size: str,
    config: TrainConfig,
    teacher: str | None,
    image_size: int,
    device: str,
    latency_runs: int | None,
    penalty_images,
    latency_batches=(),
    resume: bool = False,
    log=print,
    label: str = "",
) -> dict:
    """One run of a report (a category at one sweep setting): train (with ``resume``,
    continue from the checkpoint an interrupted run left in ``out_dir``; else afresh),
    calibrate, evaluate and time; ``latency_batches``: also the latency at those batch sizes.
    Writes ``out_dir/row.json`` last and returns {"row", "latency_vs_batch"}. Raises what
    fails: each engine reports it."""
    out_dir = Path(out_dir)
    (out_dir / ROW_FILE).unlink(missing_ok=True)  # an earlier run's row is not this run's
    row = report_row(data, dataset, category, setting, model_size, config, teacher)
    run_config = dataclasses.replace(config, **{k: v for k, v in setting.items() if k != "teacher"})
    resume = resume and (out_dir / CHECKPOINT_NAME).is_file()
    if resume:
        log(f"{label}: continuing from {out_dir / CHECKPOINT_NAME}")
    # overwrite: a report reruns every run of its folder
    model, summary = train_category(
        data,
        dataset,
        category,
        out_dir,
        model_size=model_size,
        config=run_config,
        teacher=row["teacher"],
        penalty_images=penalty_images,
        image_size=image_size,
        device=device,
        resume=resume,
        overwrite=True,
    )
    log(f"{label}: evaluating")
    evaluation = evaluate_model(
        model, data, dataset, category, image_size=image_size, progress=run_config.progress, workers=run_config.workers
    )
    row.update(headline_metrics(evaluation["metrics"]))
    row["teacher_used"] = summary["teacher"]  # what "auto" chose, or the file's name
    row["penalty_used"] = summary["penalty_source"]
    row["train_s"] = summary["total_seconds"]
    row["infer_s"] = evaluation["timing"]["seconds"]
    row["infer_ms_per_image"] = evaluation["timing"]["ms_per_image"]
    row["latency_ms"] = _latency_ms(model, 1, image_size, latency_runs)
    row["metrics"] = evaluation["metrics"]
    curve = []
    for batch in latency_batches or ():
        ms = _latency_ms(model, batch, image_size, latency_runs)
        curve.append({"batch": batch, "ms": ms, "images_per_s": 1e3 * batch / ms})
    finished = {"row": row, "latency_vs_batch": curve}
    # Whole or absent: a cut-off write is never read as finished.
    atomic_write_text(out_dir / ROW_FILE, json.dumps(finished, indent=2, default=str))
    return finished
