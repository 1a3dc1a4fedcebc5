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
from typing import Any

from .._checkpoint import atomic_write_text, refuse_non_file_target, writable_folder
from .._device import resolve_device
from ..baselines.anomalib_models import BASELINES
from ..benchmark import time_predict
from ..data import list_categories
from ..report import headline_metrics, run_name, write_report
from ..train import CHECKPOINT_NAME, RESUMABLE_CHANGES, TrainConfig
from .compare import compare_row, compare_run, model_mib
from .engines import LocalRunner, record_failure
from .evaluate import evaluate_model
from .train import train_category

# FastFlow's training budget when the EfficientAD run of its category has no finished row to
# match (it failed, or runs at the same time on another Ray worker).
FALLBACK_BUDGET_S = 300.0


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
    """A sweep's teacher: "random", "distilled", "paper" (or "auto") or a teacher file that
    exists, checked before the first run (teacher=... compares teachers on the same data)."""
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


# A run of a report: (folder name, the function that runs it, its arguments but out_dir, label
# and latency_batches, the row it reports when it fails)
Piece = tuple[str, Any, dict[str, Any], dict]


def _compare_pieces(common: dict, comparisons, out: Path, runner, config: TrainConfig, **settings) -> list[Piece]:
    """The report's comparison runs (:func:`compare_runs`) as pieces; ``settings``: the
    arguments of :func:`report_compare_run` shared by all (the seed, loader processes and
    progress bars: ``config``'s)."""
    settings.update(seed=config.seed, workers=config.workers, progress=config.progress)
    return [
        (
            name,
            report_compare_run,
            dict(common, **settings, category=category, model=model, efficientad_run=runner.path(out / matched)),
            compare_row(common["data"], common["dataset"], category, model),
        )
        for category, model, name, matched in comparisons
    ]


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
    compare=(),
    compare_budget_s: float | None = None,
    compare_random_weights: bool = False,
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

    ``compare``: models of :data:`efficientad_fast.baselines.BASELINES` to run on each
    category after EfficientAD (:func:`report_compare_run`, a run like any other, on the same
    runner), with rows whose ``model`` field names them, and ``compare.png``;
    ``compare_budget_s``: FastFlow's training seconds (None: EfficientAD's on the category);
    ``compare_random_weights``: random backbones, for plumbing tests only (rows marked).
    """
    config = config or TrainConfig()
    config.check()
    runner = runner or LocalRunner(log)
    runs = report_runs(data, dataset, categories, sweep)
    comparisons = compare_runs(data, runs, compare)
    out = writable_folder(out)
    started = time.perf_counter()
    common = dict(data=runner.path(data), dataset=dataset, image_size=image_size, device=runner.device(device))
    efficientad = dict(
        model_size=model_size, config=config, teacher=teacher, latency_runs=latency_runs, penalty_images=penalty_images
    )
    pieces: list[Piece] = [
        (
            name,
            report_run,
            dict(common, **efficientad, category=category, setting=setting, resume=resume),
            report_row(data, dataset, category, setting, model_size, config, teacher),
        )
        for category, setting, name in runs
    ]
    compared = dict(budget_s=compare_budget_s, random_weights=compare_random_weights, latency_runs=latency_runs)
    pieces += _compare_pieces(common, comparisons, out, runner, config, **compared)
    rows: list[dict | None] = [None] * len(pieces)
    curves: list[list] = [[] for _ in pieces]
    labels = [f"[report {i}/{len(pieces)}] {piece[0]}" for i, piece in enumerate(pieces, 1)]
    _refuse_taken_names(out, [name for name, *_ in pieces])
    # Every finished run is checked before any starts: one made with other settings is refused.
    earlier = [read_finished_run(out / name, run_settings(kwargs)) if resume else None for name, _, kwargs, _ in pieces]
    with runner:
        curve_wanted = bool(latency_batches)
        for i, (name, function, kwargs, _) in enumerate(pieces):
            finished = earlier[i]
            if finished is None:  # it runs: its settings first, its row.json (if any) no longer its own
                write_run_settings(out / name, run_settings(kwargs))
            else:
                log(f"{labels[i]}: finished by an earlier run, not run again (--resume)")
                rows[i], curves[i] = finished["row"], finished["latency_vs_batch"]
                curve_wanted = curve_wanted and not curves[i]
                continue
            kwargs = {**kwargs, "out_dir": runner.path(out / name), "label": labels[i]}
            if function is report_run:
                kwargs["latency_batches"] = latency_batches if curve_wanted else ()
                curve_wanted = False
            runner.submit(i, f"report {name}", function, kwargs, local_log=True)
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
            name, _, _, row = pieces[i]
            rows[i] = record_failure(dict(row), out / name, error, details)
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
        compare=tuple(compare),
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
    compare=(),
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
        "compare": list(compare),
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


def compare_runs(data, runs, compare) -> list[tuple[str | None, str, str, str]]:
    """(category, model, run folder name, the folder of EfficientAD's run to match) for each
    category of ``runs`` and each model of ``compare`` (once per category, not per sweep
    setting; matched with the category's first EfficientAD run)."""
    unknown = [m for m in compare if m not in BASELINES]
    if unknown:
        raise ValueError(f"--compare takes {', '.join(BASELINES)}, not {', '.join(unknown)}")
    first: dict[str | None, str] = {}
    for category, _, name in runs:
        first.setdefault(category, name)
    return [
        (category, model, f"{category or Path(data).name}_{model}", name)
        for category, name in first.items()
        for model in dict.fromkeys(compare)
    ]


ROW_FILE = "row.json"  # a report run's finished row: what --resume reads instead of running it again
EARLIER_ROW_FILE = "row.earlier.json"  # the row of a run that is being run again (kept, never read)


def _refuse_taken_names(out: Path, runs: list[str]) -> None:
    """A folder or FIFO where the report or a run's row.json goes is refused before any
    training (the tenth probe: one was found after it)."""
    for target in [out / f"report.{k}" for k in ("md", "csv", "json", "png")] + [out / "compare.png"]:
        refuse_non_file_target(target)
    for name in runs:
        refuse_non_file_target(out / name / ROW_FILE)


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
        "model": "efficientad",
        "error": None,
    }


SETTINGS_FILE = "settings.json"  # what a report run was started with: --resume compares it
# Arguments of a run that do not change its result (where and how it runs, what it prints).
_NOT_SETTINGS = {"data", "device", "out_dir", "label", "log", "latency_runs", "latency_batches", "resume"}
_NOT_SETTINGS |= {"efficientad_run", "workers", "progress"}


def run_settings(kwargs: dict) -> dict:
    """A report run's settings that change its result, as JSON values: its arguments less
    :data:`_NOT_SETTINGS`, the training config less what a resumed training may change."""
    settings = {k: v for k, v in kwargs.items() if k not in _NOT_SETTINGS}
    if settings.get("model") in ("patchcore", "padim"):  # they fit in one pass: no budget
        settings.pop("budget_s", None)
    if isinstance(settings.get("config"), TrainConfig):
        config = dataclasses.asdict(settings["config"])
        settings["config"] = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps(settings, default=str))


def write_run_settings(out_dir: Path, settings: dict) -> None:
    """``out_dir/settings.json`` for a run about to start. An earlier ``row.json`` there is no
    longer this folder's run, whatever happens next: it is renamed ``row.earlier.json`` first
    (kept for the user, never read), and put back when the settings cannot be written."""
    out_dir = Path(out_dir)
    row, earlier = out_dir / ROW_FILE, out_dir / EARLIER_ROW_FILE
    refuse_non_file_target(earlier)  # a rename would replace a FIFO or device placed there
    moved = row.is_file()
    if moved:
        os.replace(row, earlier)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / SETTINGS_FILE, json.dumps(settings, indent=2))
    except BaseException:
        if moved:
            os.replace(earlier, row)
        raise


def read_finished_run(out_dir: Path, settings: dict | None = None) -> dict | None:
    """{"row", "latency_vs_batch"} of a run that finished (its ``row.json``), else None.
    ``settings``: what the run would be started with now (:func:`run_settings`); a finished
    run started with others is refused (ValueError naming them), as ``train --resume``
    refuses a checkpoint; one whose settings.json is missing or damaged (or from before
    settings were stored) is not trusted: None, so it runs again."""
    row_file, settings_file = Path(out_dir) / ROW_FILE, Path(out_dir) / SETTINGS_FILE
    if not row_file.is_file():  # never finished; or a FIFO, whose read would wait forever
        return None
    try:
        finished = json.loads(row_file.read_text())
    except (OSError, ValueError, RecursionError):  # cut off while writing, or not ours
        return None
    if not isinstance(finished, dict) or not isinstance(finished.get("row"), dict):
        return None
    if "category" not in finished["row"] or not isinstance(finished.get("latency_vs_batch"), list):
        return None  # damaged by hand: the report could not be built from it
    if finished.get("row", {}).get("error", "missing") is not None:
        return None
    if settings is None:
        return finished
    saved = _read_settings(settings_file)
    # Missing, cut, not ours, lacking a setting, or not the settings the row was made with (an
    # edit since): what the run was made with is unknown, so it runs again (the fifth, sixth and
    # seventh probes: such files let other settings through).
    if (
        not isinstance(saved, dict)
        or set(_flat(saved)) != set(_flat(settings))
        or not _same(finished.get("settings"), saved)
    ):
        return None
    saved, now = _flat(saved), _flat(settings)
    # The row's own record of its run (category, model, steps, lr, ...) must agree too: a row
    # edited by hand, or beside settings edited to match, is not this run's (seventh, eighth probes).
    row = finished["row"]
    if any(not _same(row[key], saved[key]) for key in row.keys() & saved.keys() if saved[key] is not None):
        return None
    if not _same(row.get("model", "efficientad"), saved.get("model", "efficientad")):  # EfficientAD: no model setting
        return None
    diff = {k: (saved[k], now[k]) for k in saved if not _same(saved[k], now[k])}  # True is not 1 here
    if diff:
        changed = ", ".join(f"{k} {before!r} -> {now!r}" for k, (before, now) in diff.items())
        raise ValueError(
            f"--resume: {out_dir} finished with other settings ({changed}): rerun without --resume, "
            "or give another --out"
        )
    return finished


def _read_settings(path: Path) -> object:
    """The JSON in a run's settings.json; None when it is missing, not a regular file (a FIFO's
    read would wait forever) or unreadable."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None


def _same(a: object, b: object) -> bool:
    """Equal as JSON text: types count (``true`` is not ``1``, ``2.0`` not ``2``)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _flat(settings: dict) -> dict:
    """{"config": {"lr": ...}, ...} -> {"lr": ..., ...}: the names a user gave on the command line."""
    flat = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    for value in settings.values():
        if isinstance(value, dict):
            flat.update(value)
    return flat


def write_finished_run(out_dir: Path, row: dict, curve: list) -> dict:
    """``out_dir/row.json``, whole or absent (a cut-off write is never read as finished), with
    the settings the run was started with (its settings.json), which --resume compares."""
    finished = {"row": row, "latency_vs_batch": curve, "settings": _read_settings(Path(out_dir) / SETTINGS_FILE)}
    atomic_write_text(Path(out_dir) / ROW_FILE, json.dumps(finished, indent=2, default=str))
    return finished


def matched_budget(efficientad_run: str | os.PathLike | None) -> tuple[float, str]:
    """(seconds, where they come from): the training time of the finished EfficientAD run in
    the folder ``efficientad_run`` (equal wall-clock budgets), else :data:`FALLBACK_BUDGET_S`."""
    finished = read_finished_run(Path(efficientad_run)) if efficientad_run else None
    if finished is None:
        return FALLBACK_BUDGET_S, f"{FALLBACK_BUDGET_S:g} s (no finished EfficientAD run of this category to match)"
    seconds = float(finished["row"]["train_s"])
    return seconds, f"{seconds:.1f} s (EfficientAD's training time on this category)"


def report_compare_run(
    out_dir: Path, *, budget_s: float | None, efficientad_run: str | os.PathLike | None, log=print, **kwargs
) -> dict:
    """One comparison run of a report: :func:`.compare.compare_run` with FastFlow's budget
    (``budget_s``, or the training time of the finished EfficientAD run in ``efficientad_run``);
    writes ``out_dir/row.json`` last and returns {"row", "latency_vs_batch"}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ROW_FILE).unlink(missing_ok=True)  # an earlier run's row is not this run's
    if budget_s is None:
        budget_s, note = matched_budget(efficientad_run)
    else:
        note = f"{budget_s:g} s (given)"
    finished = compare_run(budget_s=budget_s, budget_note=note, log=log, **kwargs)
    return write_finished_run(out_dir, finished["row"], finished["latency_vs_batch"])


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
    else:  # said when it starts, not when it is queued
        log(f"{label}: training {model_size} for {run_config.steps} steps")
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
    row["images_per_s"] = 1e3 / evaluation["timing"]["ms_per_image"]
    row["latency_ms"] = _latency_ms(model, 1, image_size, latency_runs)
    row["model_mib"] = model_mib(model)
    row["metrics"] = evaluation["metrics"]
    curve = []
    for batch in latency_batches or ():
        ms = _latency_ms(model, batch, image_size, latency_runs)
        curve.append({"batch": batch, "ms": ms, "images_per_s": 1e3 * batch / ms})
    return write_finished_run(out_dir, row, curve)
