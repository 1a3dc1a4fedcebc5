"""The predict job on Ray Data (the ``[ray]`` extra): the image paths streamed to a pool of
actors, each holding one loaded model, which decode, score and write heatmaps; the same files
as the local predict (:mod:`.predict`), plus ``scores.parquet``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .._checkpoint import writable_folder
from .._numbers import image_hw
from ..heatmaps import heatmap_overlay, save_png
from ..networks import check_image_size
from .engines import ray_session, require_ray
from .evaluate import check_tiling
from .predict import collect_image_paths, decision_thresholds, heatmap_name, read_images, score_row, write_predictions


class _Scorer:
    """A Ray Data actor holding one loaded model: decodes a batch of image paths, scores the
    readable ones and writes their heatmaps (and masks); an unreadable file becomes a row with
    its error. Decisions as the local engine makes them (:func:`decision_thresholds`)."""

    def __init__(
        self,
        model_path: str,
        image_size: tuple[int, int],
        threshold: float | None,
        sensitivity: float,
        tile: int | None,
        overlap: int,
        device: str,
        threads: int,
        precision: str = "fp32",
        batch_size: int = 8,
    ):
        from .._device import resolve_device
        from ..model_file import load

        torch.set_num_threads(threads)
        self.model = load(
            model_path,
            map_location=resolve_device(device),
            precision=precision,
            batch_size=batch_size,
            image_size=image_size,
        ).eval()
        self.size, self.tile, self.overlap = (image_size[0], image_size[1]), tile, overlap
        self.threshold, self.pixel_threshold = decision_thresholds(self.model, threshold, sensitivity)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        arrays, good, error = [], [], [""] * n
        for j, path in enumerate(batch["path"]):  # by position: the same file may come twice
            errors: list[dict] = []
            _, read = read_images([Path(path)], self.size, errors)
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
                    save_png(
                        heatmap_overlay(images[i].numpy(), amap.numpy(), self.pixel_threshold), batch["heatmap"][j]
                    )
                if batch["mask"][j]:
                    assert self.pixel_threshold is not None  # predict_ray asks for masks only with one
                    save_png((amap > self.pixel_threshold).numpy().astype(np.uint8) * 255, batch["mask"][j])
        return {"index": batch["index"], "score": score, "error": np.array(error, dtype=object)}


def _rows_in_input_order(
    columns: dict[str, list], paths: list[Path], threshold: float | None, heatmap_files: list[Path] | None
) -> tuple[list[dict], list[float], list[dict]]:
    """(rows, scores, errors) from the actors' batches, as the local engine writes them: paths
    as given, in input order; RuntimeError unless every input came back exactly once."""
    merged = {k: np.concatenate(v) if v else np.array([]) for k, v in columns.items()}
    order = np.argsort(merged["index"], kind="stable")
    if not np.array_equal(merged["index"][order], np.arange(len(paths))):  # nothing lost, nothing twice
        raise RuntimeError(f"Ray returned {len(order)} results for {len(paths)} inputs")
    rows, scores, errors = [], [], []
    for k in order:
        i, error = int(merged["index"][k]), str(merged["error"][k])
        if error:
            errors.append({"path": str(paths[i]), "error": error})
            continue
        score = float(merged["score"][k])
        row = score_row(paths[i], score, threshold)
        if heatmap_files is not None:
            row["heatmap"] = str(heatmap_files[i])
        rows.append(row)
        scores.append(score)
    return rows, scores, errors


def predict_files(
    model_path,
    inputs,
    out_dir,
    *,
    image_size: int | tuple[int, int] = 256,
    batch_size: int = 8,
    threshold: float | None = None,
    heatmaps: bool = True,
    sensitivity: float = 0.5,
    masks: bool = False,
    tile: int | None = None,
    overlap: int = 32,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    ray_address: str | None = None,
    progress: bool = True,
    log=print,
) -> tuple[Path, list[dict], list[dict]]:
    """:func:`efficientad_fast.jobs.predict.predict_files` on Ray (the same arguments, the same
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
    from ..model_file import load

    require_ray()  # before any folder is made
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    size = image_hw(image_size)
    check_image_size(*size)
    model = load(model_path, map_location="cpu")  # the checks and decisions the actors will make
    check_tiling(model, tile, overlap, size)
    threshold, pixel_threshold = decision_thresholds(model, threshold, sensitivity)
    if masks and pixel_threshold is None:
        raise ValueError("masks need a pixel threshold: this model is not calibrated")
    del model
    paths = collect_image_paths(inputs, out_dir, log)
    out_dir = writable_folder(out_dir)
    used_names: set[str] = set()
    names = [heatmap_name(p, used_names) for p in paths]
    heatmap_files = [out_dir / "heatmaps" / f"{name}.png" for name in names]
    if not paths:  # nothing to start Ray for
        return write_predictions(out_dir, [], [], [], heatmaps, parquet=True), [], []
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
        items = [
            {
                "index": i,
                "path": str(p.resolve()),
                "heatmap": str(folder / "heatmaps" / f"{names[i]}.png") if heatmaps else "",
                "mask": str(folder / "masks" / f"{names[i]}.png") if masks else "",
            }
            for i, p in enumerate(paths)
        ]
        dataset = ray.data.from_items(items).map_batches(
            _Scorer,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=1 if use_gpu else 0,
            fn_constructor_kwargs=dict(
                model_path=str(Path(model_path).resolve()),
                image_size=size,
                threshold=threshold,
                sensitivity=sensitivity,
                tile=tile,
                overlap=overlap,
                device="cuda" if use_gpu else "cpu",
                threads=1,
                precision=precision,
                batch_size=batch_size,
            ),
        )
        columns: dict[str, list] = {k: [] for k in ("index", "score", "error")}
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for key, values in columns.items():
                values.append(batch[key])
    rows, scores, errors = _rows_in_input_order(columns, paths, threshold, heatmap_files if heatmaps else None)
    csv_path = write_predictions(out_dir, rows, scores, errors, heatmaps, parquet=True)
    log(
        f"[predict] {len(rows)} scored, {len(errors)} unreadable, {workers} Ray workers "
        f"({'GPU' if use_gpu else 'CPU'}): {time.perf_counter() - connected:.1f} s after "
        f"{connected - started:.1f} s to connect to Ray"
    )
    return csv_path, rows, errors
