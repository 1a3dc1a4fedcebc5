#!/usr/bin/env python
"""Large images with small defects: scoring in tiles against downscaling the whole image.

Writes the built-in synthetic data at ``--size`` px (default 1024) with structural defects
``--defect-scale`` times their usual size (default 0.25: a 3-4.5 px wide scratch, a hole of
9-15 px radius, under a pixel or a few once the image is downscaled to 256 px), then trains
two EfficientAD-S models the same number of steps on the same training images:

    tiled       train --tile TILE at --size px; predict(image, tile=TILE, overlap=OVERLAP)
    downscaled  train at --whole-size px (the image resized whole); predict on the resized
                image with output_size = the full size (the map upsampled to the mask)

and evaluates both against the full-resolution masks of the same test images: pixel AUROC,
AU-PRO (FPR <= 0.3), image AUROC, and the mean time per image (batch 1, from the uint8 image
to the map, resize included). Writes a Markdown table with the command to ``--results``.

    python bench/bench_tiling.py --out /tmp/bench_tiling --results bench/results/tiling.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from efficientad_fast import metrics
from efficientad_fast.data import STRUCTURAL_DEFECTS, make_synthetic, open_dataset
from efficientad_fast.jobs import train_category
from efficientad_fast.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_machine_info  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working folder: data and the two models")
    p.add_argument("--results", default=None, help="write the Markdown table here")
    p.add_argument("--category", default="weave", choices=("weave", "board"), help="synthetic category")
    p.add_argument("--size", type=int, default=1024, help="image size in pixels (default 1024)")
    p.add_argument("--defect-scale", type=float, default=0.25, help="defect size relative to usual (default 0.25)")
    p.add_argument("--tile", type=int, default=256, help="tile size of the tiled arm (default 256)")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap of the tiled arm (default 32)")
    p.add_argument("--whole-size", type=int, default=256, help="input size of the downscaled arm (default 256)")
    p.add_argument("--steps", type=int, default=300, help="training steps of each model (default 300)")
    p.add_argument("--n-train", type=int, default=20, help="normal training images (10 %% held out)")
    p.add_argument("--n-test-good", type=int, default=6)
    p.add_argument("--n-test-defect", type=int, default=3, help="test images per defect type (4 types)")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "none"),
        default="auto",
        help="training autocast (default auto: bf16 only where a probe shows it faster here, as train does)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args(argv)


def score_test_set(test, predict) -> dict:
    """Run ``predict(uint8 (1, 3, H, W)) -> (score, map (H, W))`` on every test image; the
    metrics against the full-resolution masks and the mean seconds per image."""
    scores, maps, masks, labels, seconds = [], [], [], [], []
    for i in range(len(test)):
        item = test[i]
        image = (item["image"].unsqueeze(0) * 255).round().to(torch.uint8)
        started = time.perf_counter()
        score, amap = predict(image)
        seconds.append(time.perf_counter() - started)
        scores.append(score)
        maps.append(amap)
        masks.append(item["mask"][0].numpy().astype(bool))
        labels.append(item["label"])
    result = metrics.evaluate(np.array(scores), np.array(labels), np.stack(maps), np.stack(masks))
    result["s_per_image"] = float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))  # first: warm-up
    return result


def machine_load(load_at_start: float, threads: int) -> str:
    """Whether other jobs shared the machine, from the 1-minute load average at both ends."""
    load_at_end = os.getloadavg()[0]
    loads = f"load average {load_at_start:.2f} at the start, {load_at_end:.2f} at the end"
    if max(load_at_start, load_at_end) > threads + 0.5:
        return f"{loads}: other jobs shared the machine, the times are upper bounds (both arms ran in this run)."
    return f"{loads}: quiet."


def train_both(args: argparse.Namespace, data: Path) -> tuple:
    """The tiled and the downscaled model, same data, steps and seed: (tiled, its summary,
    downscaled, its summary)."""
    config = TrainConfig(
        steps=args.steps,
        seed=args.seed,
        amp=None if args.amp == "none" else args.amp,
        checkpoint_every=0,
        progress=False,
    )
    common = dict(config=config, penalty_images="none", teacher="auto", overwrite=True)
    out = Path(args.out)
    print(f"[bench_tiling] training the tiled model ({args.tile} px tiles of {args.size} px images)", flush=True)
    tiled, tiled_summary = train_category(
        data, "mvtec_ad", args.category, out / "tiled", image_size=args.size, tile=args.tile, **common
    )
    print(f"[bench_tiling] training the downscaled model ({args.whole_size} px whole images)", flush=True)
    whole, whole_summary = train_category(
        data, "mvtec_ad", args.category, out / "downscaled", image_size=args.whole_size, **common
    )
    return tiled, tiled_summary, whole, whole_summary


def score_both(args: argparse.Namespace, test, tiled, whole) -> tuple[dict, dict]:
    """Each model's metrics and time per image on the full-size test images."""
    full = (args.size, args.size)

    def predict_tiled(image):
        pred = tiled.predict(image, tile=args.tile, overlap=args.overlap)
        return float(pred.score[0]), pred.anomaly_map[0, 0].numpy()

    def predict_downscaled(image):
        small = F.interpolate(
            image.float() / 255,
            size=(args.whole_size, args.whole_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        ).clamp_(0, 1)
        pred = whole.predict(small, output_size=full, tile=0)
        return float(pred.score[0]), pred.anomaly_map[0, 0].numpy()

    print(f"[bench_tiling] scoring {len(test)} test images both ways", flush=True)
    return score_test_set(test, predict_tiled), score_test_set(test, predict_downscaled)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = cpu_machine_info()  # its loadavg_start: before any work
    started = time.perf_counter()
    data = make_synthetic(
        Path(args.out) / "data",
        seed=args.seed,
        categories=(args.category,),
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect_per_type=args.n_test_defect,
        defects=STRUCTURAL_DEFECTS,
        image_size=args.size,
        defect_scale=args.defect_scale,
        overwrite=True,
    )
    tiled, tiled_summary, whole, whole_summary = train_both(args, data)
    test = open_dataset(data, "mvtec_ad", args.category, "test", (args.size, args.size))
    tiled_metrics, whole_metrics = score_both(args, test, tiled, whole)
    rows = {
        f"tiled (tile {args.tile}, overlap {args.overlap})": (tiled_metrics, tiled_summary),
        f"downscaled whole image ({args.whole_size} px, map upsampled)": (whole_metrics, whole_summary),
    }
    table = [
        "| arm | pixel AUROC | AU-PRO (0.3) | image AUROC | s / image | training + calibration s |",
        "|---|---|---|---|---|---|",
    ]
    for name, (m, summary) in rows.items():
        table.append(
            f"| {name} | {m['pixel_auroc']:.3f} | {m['aupro']:.3f} | {m['image_auroc']:.3f} | "
            f"{m['s_per_image']:.2f} | {summary['total_seconds']:.0f} |"
        )
    command = "python bench/bench_tiling.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    n_bad = sum(int(test[i]["label"]) for i in range(len(test)))
    text = "\n".join(
        [
            f"# Tiling: tiled vs downscaled whole image on {args.size} px images with small defects",
            "",
            f"Date: {datetime.date.today().isoformat()}. {machine['cpu_model'] or 'unknown CPU'} "
            f"({machine['logical_cpus']} logical CPUs), {args.threads} torch threads; "
            f"{machine_load(machine['loadavg_start'][0], args.threads)}",
            "",
            f"Command: `{command}`",
            "",
            f"Data: synthetic `{args.category}` at {args.size}x{args.size} px, structural defects "
            f"({', '.join(STRUCTURAL_DEFECTS)}) at defect_scale {args.defect_scale}; {tiled_summary['train_images']} "
            f"training images ({tiled_summary['held_out_images']} more held out for calibration), {len(test)} test images "
            f"({n_bad} defective). Both models: EfficientAD-S, teacher `{tiled_summary['teacher']}`, {args.steps} steps, "
            f"batch 1, amp {args.amp} (ran {tiled_summary['train_config']['amp'] or 'fp32'}), no penalty images; the tiled one on "
            f"{tiled_summary['train_tiles']} tiles. Metrics against the full-resolution masks.",
            "",
            *table,
            "",
            f"Total wall time of the run: {(time.perf_counter() - started) / 60:.1f} min.",
            "",
        ]
    )
    print("\n" + text)
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(text)
        print(f"written: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
