#!/usr/bin/env python
"""Bulk scoring throughput: local ``predict`` against ``predict --engine ray`` with 1 and 2
workers on the same images, and where the time goes.

Makes ``--images`` JPEGs (``--source-size`` px, random texture) and a seeded, calibrated
EfficientAD-S (random weights: the cost does not depend on the weights), then times:

- local: ``jobs.predict.predict_files`` (decode, resize, score, write scores.csv) on ``--threads``
  torch threads, after loading the model (timed apart);
- Ray start-up: ``ray.init`` of a local instance with ``--threads`` CPUs, and a first
  ``jobs.ray_predict.predict_files`` of 2 images with 1 worker (pipeline start, actor start, model
  load in the actor): the fixed cost every Ray run pays;
- ray W: ``jobs.ray_predict.predict_files`` with W actors (one thread each) on all images,
  including its per-run pipeline and actor start;
- the parts of the local run: decode + resize per image, the networks + scoring per image at
  ``--batch-size``, model load, and writing scores.csv + scores.parquet.

images/s = images / wall time of the run. Heatmaps are off unless ``--heatmaps``.

    python bench/bench_ray_predict.py --images 200 --out /tmp/ray_bench --markdown result.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_machine_info  # noqa: E402

Row = tuple[str, float, str]  # (what, seconds, note)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="images to score (default 200)")
    p.add_argument("--source-size", type=int, default=512, help="side of the JPEGs written (default 512)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray actor counts (default 1 2)")
    p.add_argument("--threads", type=int, default=2, help="local torch threads and the Ray instance's CPUs")
    p.add_argument("--heatmaps", action="store_true", help="also write a heatmap per image")
    p.add_argument("--out", required=True, help="working folder (images, model, outputs)")
    p.add_argument("--markdown", default=None, help="append the table here")
    return p.parse_args(argv)


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    paths = []
    for i in range(count):  # smooth texture + noise: JPEGs of realistic size, each different
        image = Image.fromarray(base).resize((size, size), Image.BICUBIC)
        noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (size, size, 3)), 0, 255)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(noisy.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def local_rows(model, out: Path, images: list[Path], args: argparse.Namespace) -> list[Row]:
    """The local run, whole, then its parts: decode + resize, the networks + scoring, the writing."""
    from efficientad_fast.jobs import predict as jobs

    n = len(images)
    started = time.perf_counter()
    jobs.predict_files(
        model, [out / "images"], out / "local", batch_size=args.batch_size, heatmaps=args.heatmaps, progress=False
    )
    local_s = time.perf_counter() - started
    rows = [(f"local predict, {args.threads} threads", local_s, f"{n / local_s:.2f} images/s")]

    errors: list[dict] = []
    started = time.perf_counter()
    _, arrays = jobs.read_images(images, (256, 256), errors)
    decode_s = time.perf_counter() - started
    rows.append(("  decode + resize (1 thread)", decode_s, f"{1e3 * decode_s / n:.1f} ms/image"))
    batch = torch.stack([torch.from_numpy(a) for a in arrays[: args.batch_size]])
    with torch.no_grad():
        model.predict(batch)  # warm-up
        started = time.perf_counter()
        for start in range(0, n, args.batch_size):
            model.predict(torch.stack([torch.from_numpy(a) for a in arrays[start : start + args.batch_size]]))
    net_s = time.perf_counter() - started
    rows.append((f"  networks + scoring, batch {args.batch_size}", net_s, f"{1e3 * net_s / n:.1f} ms/image"))
    result_rows = [jobs.score_row(p, 0.5, 0.1) for p in images]
    (out / "write_check").mkdir(exist_ok=True)
    jobs.write_predictions(out / "write_check", result_rows, [0.5] * n, [], heatmaps=False, parquet=True)  # imports
    started = time.perf_counter()
    jobs.write_predictions(out / "write_check", result_rows, [0.5] * n, [], heatmaps=False, parquet=True)
    write_s = time.perf_counter() - started
    rows.append(("  write scores.csv + scores.parquet", write_s, f"{1e3 * write_s / n:.3f} ms/image"))
    return rows


def ray_rows(model_path: Path, out: Path, images: list[Path], args: argparse.Namespace) -> list[Row]:
    """A local Ray instance's start-up, its first small run, then a run of all images per worker count."""
    import ray

    from efficientad_fast.jobs import ray_predict as ray_engine

    def run(sources, folder: str, workers: int) -> float:
        started = time.perf_counter()
        ray_engine.predict_files(
            model_path,
            sources,
            out / folder,
            batch_size=args.batch_size,
            heatmaps=args.heatmaps,
            workers=workers,
            progress=False,
            log=lambda *a, **k: None,
        )
        return time.perf_counter() - started

    started = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    rows = [(f"Ray start-up: ray.init (local, {args.threads} CPUs)", time.perf_counter() - started, "")]
    try:
        first = run(images[:2], "ray_first", 1)
        rows.append(("Ray start-up: first run of 2 images, 1 worker", first, "pipeline + actor start + model load"))
        for workers in args.workers:
            seconds = run([out / "images"], f"ray_{workers}", workers)
            rows.append((f"predict --engine ray --workers {workers}", seconds, f"{len(images) / seconds:.2f} images/s"))
    finally:
        ray.shutdown()
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from efficientad_fast import load_extension
    from efficientad_fast.model_file import load
    from efficientad_fast.testing import random_model

    load_extension()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    images = make_images(out / "images", args.images, args.source_size)
    model_path = out / "model.pt"
    random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).save(model_path)
    started = time.perf_counter()
    model = load(model_path).eval()
    rows = [("model load (local)", time.perf_counter() - started, "")]
    rows += local_rows(model, out, images, args)
    rows += ray_rows(model_path, out, images, args)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"{len(images)} JPEGs of {args.source_size}x{args.source_size} px scored at 256 px, batch {args.batch_size}, "
        f"heatmaps {'on' if args.heatmaps else 'off'}; {cpu_machine_info()['cpu_model'] or 'unknown CPU'}, "
        f"torch {torch.__version__}, ray {ray.__version__}, {when}",
        "",
        "| what | seconds | |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {seconds:.2f} | {note} |" for what, seconds, note in rows]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
