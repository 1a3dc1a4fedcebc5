"""The predict job on this machine: score image files and folders into scores.csv, heatmaps and
masks, row by row (the Ray Data engine is :mod:`.ray_predict`)."""

from __future__ import annotations

import csv
import errno
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .._checkpoint import atomic_files, remove_stale_temporaries, writable_folder
from .._numbers import image_hw
from ..data.inputs import PICTURE_FOLDERS, collect_image_paths, read_images
from ..heatmaps import default_threshold, heatmap_overlay, save_png
from ..model import EfficientAD
from ..networks import check_image_size
from .evaluate import check_tiling


def printable(value):
    """``value`` as text any UTF-8 file can hold: a file name that is not valid UTF-8 (its
    bytes come from the file system as surrogates) gets backslash escapes for those bytes,
    e.g. ``caf\\xe9.png`` for a Latin-1 ``café.png``. Other values are returned as they are."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return os.fsencode(value).decode("utf-8", "backslashreplace")


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> Path:
    """A CSV written whole or not at all (temporary file, then rename), names made
    :func:`printable`."""
    with atomic_files(path) as (temporary,), open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({k: printable(v) for k, v in row.items()} for row in rows)
    return path


def decision_thresholds(
    model: EfficientAD, threshold: float | None = None, sensitivity: float = 0.5
) -> tuple[float | None, float | None]:
    """(image threshold, pixel threshold) of a predict run: the model's calibrated ones
    shifted by ``sensitivity`` (see :meth:`EfficientAD.thresholds`); ``threshold``, when
    given, is the image threshold as it is (no shift). A model file from before thresholds
    were stored labels by the old rule, score > 0.1 (the q_b level)."""
    image, pixel = model.thresholds(sensitivity)
    if threshold is not None:
        image = float(threshold)
    elif image is None:
        image = default_threshold(model)
    return image, pixel


def score_row(path, score: float, threshold: float | None) -> dict:
    """A scores.csv row: path, score (6 significant digits), label (score > the image
    threshold: "true" = anomalous; empty without a threshold) and anomalous (the same
    decision, the column's name before label existed)."""
    label = "" if threshold is None else str(not score <= threshold).lower()  # NaN: anomalous, as decide()
    return {"path": str(path), "score": f"{score:.6g}", "label": label, "anomalous": label}


def heatmap_name(path: Path, used_names: set[str]) -> str:
    """The heatmap file's stem for ``path``: its own stem, with "_" added while another image
    (same file name in another folder) has it; adds the name to ``used_names``."""
    name = path.stem
    while name in used_names:
        name += "_"
    used_names.add(name)
    return name


PICTURE_NOT_WRITTEN = "scored, but its picture cannot be written"


def write_scores_parquet(path: Path, rows: list[dict], scores: list[float]) -> Path:
    """scores.csv's rows as Parquet (``pip install pyarrow``), with the scores as float64
    (the CSV rounds them to 6 digits) and ``anomalous`` as a boolean (null without a threshold)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("scores.parquet needs pyarrow: pip install -e '.[ray]' (or pip install pyarrow)") from exc
    columns = {"path": [printable(r["path"]) for r in rows], "score": pa.array(scores, pa.float64())}
    for key in ("label", "anomalous"):
        columns[key] = pa.array([None if r.get(key, "") == "" else r[key] == "true" for r in rows], pa.bool_())
    if rows and "heatmap" in rows[0]:
        columns["heatmap"] = [printable(r["heatmap"]) for r in rows]
    with atomic_files(path) as (temporary,):
        pq.write_table(pa.table(columns), temporary)
    return path


def _score_fields(heatmaps: bool) -> list[str]:
    return ["path", "score", "label", "anomalous"] + (["heatmap"] if heatmaps else [])


def write_predictions(
    out_dir: Path,
    rows: list[dict],
    scores: list[float],
    errors: list[dict],
    heatmaps: bool,
    parquet: bool,
    csv_written: bool = False,
) -> Path:
    """``scores.csv`` (unless ``csv_written``: the local engine writes it as it scores) and
    ``scores.parquet``, and ``errors.csv`` when some file could not be read (removed
    otherwise: a previous run's list would be read as this one's); returns the CSV's path.
    Both predict engines end here."""
    csv_path = out_dir / "scores.csv"
    if not csv_written:
        _write_csv(csv_path, _score_fields(heatmaps), rows)
    if parquet:
        write_scores_parquet(out_dir / "scores.parquet", rows, scores)
    else:
        (out_dir / "scores.parquet").unlink(missing_ok=True)
    if errors:
        _write_csv(out_dir / "errors.csv", ["path", "error"], errors)
    else:
        (out_dir / "errors.csv").unlink(missing_ok=True)
    return csv_path


def _output_folder(out_dir) -> Path:
    """``out_dir`` made and checked writable, with no name predict writes taken by the wrong
    kind of entry, and cleared of the half-written scores of a killed run (said)."""
    out_dir = writable_folder(out_dir)
    _refuse_taken_output_names(out_dir)
    remove_stale_temporaries(out_dir, ("scores", "errors"))
    for pictures in PICTURE_FOLDERS:  # a picture cut by SIGKILL (the tenth probe)
        if (out_dir / pictures).is_dir():
            remove_stale_temporaries(out_dir / pictures, None)
    return out_dir


def _say_earlier_pictures(out_dir: Path, written: set[str]) -> None:
    """The thirteenth probe (K15): an --out used before keeps pictures that the new scores.csv
    does not list. predict deletes nothing it did not write, but says so."""
    for pictures in PICTURE_FOLDERS:
        folder = out_dir / pictures
        earlier = sum(1 for p in folder.glob("*.png") if p.stem not in written) if folder.is_dir() else 0
        if earlier:
            print(
                f"note: {folder} holds {earlier} picture(s) of an earlier run that this run's scores.csv "
                "does not list; they stay",
                file=sys.stderr,
            )


def _refuse_taken_output_names(out_dir: Path) -> None:
    """Before scoring: a folder where predict writes a file (or a file where it makes a
    folder) would fail the run at its end."""
    for name in ("scores.csv", "errors.csv", "scores.parquet", *PICTURE_FOLDERS):
        if (out_dir / name).exists() and (out_dir / name).is_dir() != (name in PICTURE_FOLDERS):
            raise (NotADirectoryError if name in PICTURE_FOLDERS else IsADirectoryError)(
                f"{out_dir / name} is in the way of predict's output: move it or choose another --out"
            )


@torch.no_grad()
def predict_files(
    model: EfficientAD,
    inputs,
    out_dir,
    *,
    image_size: int | tuple[int, int] = 256,
    batch_size: int = 8,
    threshold: float | None = None,
    heatmaps: bool = True,
    progress: bool = True,
    parquet: bool = False,
    sensitivity: float = 0.5,
    masks: bool = False,
    tile: int | None = None,
    overlap: int = 32,
) -> tuple[Path, list[dict], list[dict]]:
    """Score image files: ``out_dir/scores.csv`` (path, score, label, anomalous; see
    :func:`score_row` and :func:`decision_thresholds` for ``threshold`` and ``sensitivity``)
    and, per image, ``out_dir/heatmaps/<name>.png`` (contour at the pixel threshold) and with
    ``masks`` ``out_dir/masks/<name>.png`` (255 = pixel above the pixel threshold); with
    ``parquet`` also ``out_dir/scores.parquet``. Files
    that cannot be read are skipped and listed with the reason in ``out_dir/errors.csv``.
    Returns the scores CSV's path, its rows and the errors ({"path", "error"} rows).
    :func:`efficientad_fast.ray_engine.predict_files` does the same on a pool of Ray actors.
    ``tile``, ``overlap``: as :meth:`EfficientAD.predict` takes them (None: the model's tile)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = image_hw(image_size)
    check_image_size(*size)
    check_tiling(model, tile, overlap, size)
    paths = collect_image_paths(inputs, out_dir)
    threshold, pixel_threshold = decision_thresholds(model, threshold, sensitivity)
    if masks and pixel_threshold is None:
        raise ValueError("masks need a pixel threshold: this model is not calibrated")
    out_dir = _output_folder(out_dir)
    rows, scores, errors = [], [], list[dict[str, str]]()  # errors: read_images fills it
    chunks = range(0, len(paths), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="predicting", dynamic_ncols=True)
    used_names: set[str] = set()
    # Rows go to a temporary CSV as they are scored (flushed per batch) and it becomes
    # scores.csv at the end, or at Ctrl-C with the rows scored so far; any other failure
    # leaves the previous scores.csv as it was.
    csv_path = out_dir / "scores.csv"
    temporary = csv_path.with_name(f"scores.tmp{os.getpid()}.csv")
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=_score_fields(heatmaps))
            writer.writeheader()
            for start in chunks:
                batch_paths, arrays = read_images(paths[start : start + batch_size], size, errors)
                if not batch_paths:
                    continue
                images = torch.stack([torch.from_numpy(a) for a in arrays])
                pred = model.predict(images, tile=tile, overlap=overlap)
                for i, path in enumerate(batch_paths):
                    score = float(pred.score[i])
                    row = score_row(path, score, threshold)
                    name = heatmap_name(path, used_names)
                    try:
                        if heatmaps:
                            heatmap = out_dir / "heatmaps" / f"{name}.png"
                            row["heatmap"] = ""
                            save_png(
                                heatmap_overlay(
                                    images[i].numpy(), pred.anomaly_map[i, 0].cpu().numpy(), pixel_threshold
                                ),
                                heatmap,
                            )
                            row["heatmap"] = str(heatmap)
                        if masks and pixel_threshold is not None:  # masks without one were refused above
                            mask = (pred.anomaly_map[i, 0] > pixel_threshold).cpu().numpy()
                            save_png(mask.astype(np.uint8) * 255, out_dir / "masks" / f"{name}.png")
                    except OSError as exc:
                        if exc.errno == errno.ENOSPC:  # the machine's problem: stop, as for scores.csv
                            raise
                        # A name too long for the file system, ...: keep the score.
                        errors.append({"path": str(path), "error": f"{PICTURE_NOT_WRITTEN}: {exc}"})
                    rows.append(row)
                    scores.append(score)
                    writer.writerow({k: printable(v) for k, v in row.items()})
                f.flush()
    except KeyboardInterrupt:
        os.replace(temporary, csv_path)  # what was scored stays, in both formats asked for
        write_predictions(out_dir, rows, scores, errors, heatmaps, parquet=parquet, csv_written=True)
        raise PredictInterrupted(len(rows), len(paths), csv_path, parquet) from None
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"no space left writing the predictions in {out_dir} after {len(rows)} of "
                f"{len(paths)} images; the previous scores.csv is unchanged",
            ) from exc
        raise
    try:  # scores.csv last: it appears only beside its own scores.parquet and errors.csv
        write_predictions(out_dir, rows, scores, errors, heatmaps, parquet, csv_written=True)
        os.replace(temporary, csv_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _say_earlier_pictures(out_dir, used_names)
    return csv_path, rows, errors


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`predict_files`: ``scores.csv`` (and with ``parquet``
    ``scores.parquet``) holds the ``scored`` of ``total`` images scored before it (and
    ``errors.csv`` the unreadable ones met so far)."""

    def __init__(self, scored: int, total: int, csv_path: Path, parquet: bool = False) -> None:
        also = f" (and {csv_path.with_suffix('.parquet').name})" if parquet else ""
        super().__init__(f"interrupted after {scored} of {total} images; {csv_path}{also} holds the {scored} scored")
        self.scored, self.total, self.csv_path = scored, total, csv_path
