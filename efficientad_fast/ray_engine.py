"""Scale out on Ray (the ``[ray]`` extra): the runs of ``report`` and the categories of
``train`` as Ray tasks, and ``predict`` over a pool of Ray actors fed by Ray Data.

Each engine does the same work as the local one in jobs.py, by the same functions
(:func:`jobs.report_run`, :func:`jobs.train_fleet_member`, :func:`jobs.read_images`), and
writes the same files: Ray only decides where each piece runs. Without an address a local
Ray instance starts for the command and stops after it; with one the command joins that
cluster (``ray start --head`` / ``ray start --address``), whose nodes must see the data and
the output folder at the same paths (shared storage) and have this package installed.

Ray is imported on first use, so the package imports without it.
"""

from __future__ import annotations

import contextlib
import re
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from . import jobs
from ._checkpoint import writable_folder
from ._optional import require
from .heatmaps import heatmap_overlay, save_png
from .networks import check_image_size
from .train import TrainConfig


def require_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    require("ray.data", "ray")  # predict needs Ray Data: ray[data]
    return require("ray", "ray")


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Ray, connected for the ``with`` block: to the cluster at ``address`` (e.g.
    ``ray://head:10001`` or ``head:6379``; "auto": the one ``ray start`` made on this machine),
    else to a new local instance (``num_cpus``: default all cores), shut down afterwards.
    An instance already connected in this process (tests, notebooks) is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _gpus_per_job(ray, gpus_per_job: float | None, device: str) -> float:
    """``gpus_per_job``, by default 1 when the cluster has GPUs and ``device`` allows them."""
    if gpus_per_job is not None:
        return gpus_per_job
    return 1 if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0


def _job_device(device: str, gpus: float) -> str:
    # A task without GPUs may still see the node's GPUs: "auto" must not pick one of them.
    return "cpu" if device == "auto" and gpus == 0 else device


def _threads(cpus: float) -> int:
    return max(1, int(cpus))


def _run_in_task(threads: int, function, kwargs: dict):
    """The body of every Ray task: ``function(**kwargs)`` on ``threads`` torch threads (the
    task's CPUs, so parallel tasks do not oversubscribe the node)."""
    torch.set_num_threads(threads)
    return function(**kwargs)


def _failure(exc: Exception) -> tuple[str, str]:
    """(one line, details) of a task's failure: the task's own exception and remote
    traceback for a raise, Ray's reason for a lost worker or node."""
    ray = require_ray()
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
        remote = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours the task's name
        return f"{type(cause).__name__}: {cause}", f"failed on a Ray worker; its traceback:\n{remote}\n"
    return f"{type(exc).__name__}: {exc}", traceback.format_exc()


def _gather(ray, pending: dict, on_done, on_failed) -> None:
    """Wait for the tasks in ``pending`` ({ref: key}) as they finish, in any order; calls
    ``on_done(key, result)`` or ``on_failed(key, exc)`` (after Ray's retries). Ctrl-C cancels
    the rest."""
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the task raised, or its worker or node was lost
                on_failed(key, exc)
            else:
                on_done(key, result)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _remote(ray, name: str, cpus: float, gpus: float, retries: int):
    # retry_exceptions: a job that raises is retried too, not only one whose worker died.
    return ray.remote(_run_in_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=retries,
                                            retry_exceptions=True, name=name)


def run_report(
    data,
    dataset: str,
    out,
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
    ray_address: str | None = None,
    cpus_per_job: float = 1,
    gpus_per_job: float | None = None,
    retries: int = 1,
    log=print,
) -> dict:
    """:func:`efficientad_fast.jobs.run_report` with each run (category, sweep setting) a Ray
    task of ``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs (default: 1 when the cluster has
    GPUs, else 0), all submitted at once; the same rows (in run order), tables and pictures.

    A run that fails is tried ``retries`` more times (also when its worker or node is lost),
    then reported with its traceback in its ``error.txt``. ``resume``: as the local engine.
    The latency-against-batch-size chart times the first run's model (none when it fails).
    """
    require_ray()  # before any folder is made
    config = config or TrainConfig()
    config.check()
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if cpus_per_job <= 0:
        raise ValueError(f"cpus_per_job must be > 0, got {cpus_per_job}")
    runs = jobs.report_runs(data, dataset, categories, sweep)
    out = writable_folder(out)
    # Workers do not share the driver's working folder: give them absolute paths.
    data_path, out_path = str(Path(data).resolve()), out.resolve()
    started = time.perf_counter()
    rows: list[dict | None] = [None] * len(runs)
    curves: list[list] = [[] for _ in runs]
    with ray_session(ray_address, num_cpus=None) as ray:
        gpus = _gpus_per_job(ray, gpus_per_job, device)
        pending, curve_wanted = {}, bool(latency_batches)
        for i, (category, setting, name) in enumerate(runs):
            label = f"[report {i + 1}/{len(runs)}] {name}"
            finished = jobs.read_finished_run(out / name) if resume else None
            if finished is not None:
                log(f"{label}: finished by an earlier run, not run again (--resume)")
                rows[i], curves[i] = finished["row"], finished["latency_vs_batch"]
                curve_wanted = curve_wanted and not curves[i]
                continue
            kwargs = dict(data=data_path, dataset=dataset, category=category, setting=setting,
                          out_dir=out_path / name, model_size=model_size, config=config, teacher=teacher,
                          image_size=image_size, device=_job_device(device, gpus), latency_runs=latency_runs,
                          penalty_images=penalty_images, latency_batches=latency_batches if curve_wanted else (),
                          resume=resume, label=label)
            curve_wanted = False
            task = _remote(ray, f"report {name}", cpus_per_job, gpus, retries)
            pending[task.remote(_threads(cpus_per_job), jobs.report_run, kwargs)] = i
        if pending:
            log(f"[report] {len(pending)} runs on Ray ({cpus_per_job} CPUs, {gpus} GPUs each; "
                f"cluster: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)")

        def done(i, run):
            rows[i], curves[i] = run["row"], run["latency_vs_batch"]
            row = run["row"]
            log(f"[report] {runs[i][2]}: image AUROC {row['image_auroc']:.3f}, pixel AUROC "
                f"{row['pixel_auroc']:.3f}, latency {row['latency_ms']:.1f} ms")

        def failed(i, exc):
            category, setting, name = runs[i]
            error, details = _failure(exc)
            rows[i] = jobs.record_failure(
                jobs.report_row(data, dataset, category, setting, model_size, config, teacher), out / name,
                error, details)
            log(f"[report] {name}: FAILED after {retries + 1} tries: {error} (details in {out / name / 'error.txt'})")

        _gather(ray, pending, done, failed)
    latency_curve = next((c for c in curves if c), [])
    return jobs.finish_report(out, data, dataset, rows, latency_curve, started, model_size=model_size, config=config,
                              sweep=sweep, teacher=teacher, image_size=image_size, device=device,
                              penalty_images=penalty_images)


def train_categories(data, dataset: str, categories, out, *, resume: bool = False, overwrite: bool = False,
                     ray_address: str | None = None, cpus_per_job: float = 1, gpus_per_job: float | None = None,
                     retries: int = 1, device: str = "auto", log=print, **train_args) -> list[dict]:
    """:func:`efficientad_fast.jobs.train_categories` with each category a Ray task (resources
    and retries as :func:`run_report`); each writes to ``out/<category>``. Returns per
    category {"category", "summary", "skipped", "error"}, in the order given. One category
    goes to ``out`` itself. Every category's folder is checked before Ray starts."""
    require_ray()  # before any folder is made
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if cpus_per_job <= 0:
        raise ValueError(f"cpus_per_job must be > 0, got {cpus_per_job}")
    jobs.check_categories(data, dataset, categories, train_args.get("image_size", 256), train_args.get("layout"))
    out = writable_folder(out)
    data_path, out_path = str(Path(data).resolve()), out.resolve()
    results: list[dict | None] = [None] * len(categories)
    with ray_session(ray_address) as ray:
        gpus = _gpus_per_job(ray, gpus_per_job, device)
        pending = {}
        for i, category in enumerate(categories):
            kwargs = dict(data=data_path, dataset=dataset, category=category,
                          out_dir=jobs.fleet_folder(out_path, category, categories),
                          resume=resume, overwrite=overwrite, device=_job_device(device, gpus), **train_args)
            task = _remote(ray, f"train {category}", cpus_per_job, gpus, retries)
            pending[task.remote(_threads(cpus_per_job), jobs.train_fleet_member, kwargs)] = i
        log(f"[train] {len(pending)} categories on Ray ({cpus_per_job} CPUs, {gpus} GPUs each)")

        def done(i, result):
            results[i] = {**result, "error": None}
            category, folder = categories[i], jobs.fleet_folder(out, categories[i], categories)
            log(f"[train] {category}: " + ("finished by an earlier run, not trained again (--resume)"
                                           if result["skipped"] else f"model {folder / jobs.MODEL_FILE}"))

        def failed(i, exc):
            category, folder = categories[i], jobs.fleet_folder(out, categories[i], categories)
            error, details = _failure(exc)
            jobs.record_failure({}, folder, error, details)
            results[i] = {"category": category, "summary": None, "skipped": False, "error": error}
            log(f"[train] {category}: FAILED after {retries + 1} tries: {error} (details in {folder / 'error.txt'})")

        _gather(ray, pending, done, failed)
    return results


class _Scorer:
    """A Ray Data actor holding one loaded model: decodes a batch of image paths, scores the
    readable ones and writes their heatmaps (and masks); an unreadable file becomes a row with
    its error. Decisions as the local engine makes them (:func:`jobs.decision_thresholds`)."""

    def __init__(self, model_path: str, image_size: tuple[int, int], threshold: float | None, sensitivity: float,
                 tile: int | None, overlap: int, device: str, threads: int, precision: str = "fp32",
                 batch_size: int = 8):
        from ._device import resolve_device
        from .model import load

        torch.set_num_threads(threads)
        self.model = load(model_path, map_location=resolve_device(device), precision=precision, batch_size=batch_size,
                          image_size=image_size).eval()
        self.size, self.tile, self.overlap = tuple(image_size), tile, overlap
        self.threshold, self.pixel_threshold = jobs.decision_thresholds(self.model, threshold, sensitivity)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        arrays, good, error = [], [], [""] * n
        for j, path in enumerate(batch["path"]):  # by position: the same file may come twice
            errors: list[dict] = []
            _, read = jobs.read_images([Path(path)], self.size, errors)
            if read:
                arrays.append(read[0])
                good.append(j)
            else:
                error[j] = errors[0]["error"]
        score = np.full(n, np.nan, dtype=np.float64)
        if good:
            images = torch.stack([torch.from_numpy(a) for a in arrays])
            pred = self.model.predict(images, tile=self.tile, overlap=self.overlap)
            for i, j in enumerate(good):
                score[j] = float(pred.score[i])
                amap = pred.anomaly_map[i, 0].cpu()
                if batch["heatmap"][j]:
                    save_png(heatmap_overlay(images[i].numpy(), amap.numpy(), self.pixel_threshold),
                             batch["heatmap"][j])
                if batch["mask"][j]:
                    save_png((amap > self.pixel_threshold).numpy().astype(np.uint8) * 255, batch["mask"][j])
        return {"index": batch["index"], "score": score, "error": np.array(error, dtype=object)}


def predict_files(model_path, inputs, out_dir, *, image_size: int | tuple[int, int] = 256, batch_size: int = 8,
                  threshold: float | None = None, heatmaps: bool = True, sensitivity: float = 0.5,
                  masks: bool = False, tile: int | None = None, overlap: int = 32, workers: int | None = None,
                  device: str = "auto", precision: str = "fp32", ray_address: str | None = None,
                  progress: bool = True, log=print) -> tuple[Path, list[dict], list[dict]]:
    """:func:`efficientad_fast.jobs.predict_files` on Ray (the same arguments, the same
    files): Ray Data streams the image paths to ``workers`` actors, each holding one model
    loaded from ``model_path`` (one GPU per actor when the cluster has GPUs and ``device`` is
    not "cpu"; else one CPU; default: one actor per GPU, or per CPU but one), which decode,
    score and write heatmaps (and masks) in batches of ``batch_size``. Writes ``scores.csv``
    (rows in input order, the local layout), ``scores.parquet`` and ``errors.csv``
    (unreadable files and why); every input is in one of them (checked). Returns the scores
    CSV's path, its rows and the errors. ``precision``: each actor loads the model in it
    (:func:`efficientad_fast.load`; "auto" is measured by the first actor on a machine and
    cached for the others).

    Heatmap names are given out in input order before scoring, so an unreadable file keeps
    its name from a later readable file of the same name in another folder (locally the
    later file gets the plain name)."""
    from .model import load

    require_ray()  # before any folder is made
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    check_image_size(*size)
    model = load(model_path, map_location="cpu")  # the checks and decisions the actors will make
    jobs.check_tiling(model, tile, overlap, size)
    threshold, pixel_threshold = jobs.decision_thresholds(model, threshold, sensitivity)
    if masks and pixel_threshold is None:
        raise ValueError("masks need a pixel threshold: this model is not calibrated")
    del model
    paths = jobs.collect_image_paths(inputs, out_dir, log)
    out_dir = writable_folder(out_dir)
    used_names: set[str] = set()
    names = [jobs.heatmap_name(p, used_names) for p in paths]
    heatmap_files = [out_dir / "heatmaps" / f"{name}.png" for name in names]
    if not paths:  # nothing to start Ray for
        return jobs.write_predictions(out_dir, [], [], [], heatmaps, parquet=True), [], []
    started = time.perf_counter()
    with ray_session(ray_address) as ray:
        connected = time.perf_counter()
        cluster = ray.cluster_resources()
        use_gpu = device != "cpu" and cluster.get("GPU", 0) >= 1
        if device.startswith("cuda") and not use_gpu:
            raise ValueError(f"--device {device}: the Ray cluster has no GPUs ({cluster.get('CPU', 0):g} CPUs)")
        if workers is None:
            workers = int(cluster["GPU"]) if use_gpu else max(1, int(cluster.get("CPU", 1)) - 1)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        # Actors do not share the driver's working folder: absolute paths.
        folder = out_dir.resolve()
        items = [{"index": i, "path": str(p.resolve()),
                  "heatmap": str(folder / "heatmaps" / f"{names[i]}.png") if heatmaps else "",
                  "mask": str(folder / "masks" / f"{names[i]}.png") if masks else ""}
                 for i, p in enumerate(paths)]
        dataset = ray.data.from_items(items).map_batches(
            _Scorer, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1, num_gpus=1 if use_gpu else 0,
            fn_constructor_kwargs=dict(model_path=str(Path(model_path).resolve()), image_size=size,
                                       threshold=threshold, sensitivity=sensitivity, tile=tile, overlap=overlap,
                                       device="cuda" if use_gpu else "cpu", threads=1, precision=precision,
                                       batch_size=batch_size))
        columns: dict[str, list] = {k: [] for k in ("index", "score", "error")}
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for key, values in columns.items():
                values.append(batch[key])
    merged = {k: np.concatenate(v) if v else np.array([]) for k, v in columns.items()}
    order = np.argsort(merged["index"], kind="stable")
    if not np.array_equal(merged["index"][order], np.arange(len(paths))):  # nothing lost, nothing twice
        raise RuntimeError(f"Ray returned {len(order)} results for {len(paths)} inputs")
    rows, scores, errors = [], [], []
    for k in order:  # the rows as the local engine writes them: paths as given, in input order
        i, error = int(merged["index"][k]), str(merged["error"][k])
        if error:
            errors.append({"path": str(paths[i]), "error": error})
            continue
        score = float(merged["score"][k])
        row = jobs.score_row(paths[i], score, threshold)
        if heatmaps:
            row["heatmap"] = str(heatmap_files[i])
        rows.append(row)
        scores.append(score)
    csv_path = jobs.write_predictions(out_dir, rows, scores, errors, heatmaps, parquet=True)
    log(f"[predict] {len(rows)} scored, {len(errors)} unreadable, {workers} Ray workers "
        f"({'GPU' if use_gpu else 'CPU'}): {time.perf_counter() - connected:.1f} s after "
        f"{connected - started:.1f} s to connect to Ray")
    return csv_path, rows, errors
