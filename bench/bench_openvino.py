#!/usr/bin/env python
"""Our ``predict`` (fp32, bf16, int8, auto) against OpenVINO (fp32 IR, INT8 IR) on this CPU: latency at
batch 1 and throughput at batch 16, measured in interleaved rounds (every variant once per
round, the order rotating, so load from other jobs hits all of them alike), with the image
and pixel AUROC of each variant on the built-in synthetic test set beside its timings.

The model is EfficientAD-S at 256 px, trained ``--steps`` steps on the synthetic category
(``--teacher distilled``: the shipped teacher, so no download), calibrated on held-out
training images; or a saved ``--model``. The INT8 IR is calibrated (NNCF) on the category's
normal training images. Variants:

* ours fp32 / ours bf16: ``model.predict`` (fused op, channels_last), the model in float32 /
  bfloat16 (images and results float32);
* ours int8: ``efficientad_fast.quantize(model, images)`` on the same calibration images as
  the INT8 IR (torchao PT2E, Inductor-compiled; the scoring stays the fused op in float32);
* ours auto: what ``load(..., precision="auto")`` picks (``precision.choose_precision``,
  measured afresh for batch 1 and for batch 16), timed like the others;
* OpenVINO fp32: the fp32 IR with ``INFERENCE_PRECISION_HINT=f32`` (equal to predict);
* OpenVINO fp32, bf16 hint: the same IR as OpenVINO runs it by default on a CPU with
  AVX-512 BF16 (bf16 arithmetic where the plugin chooses);
* OpenVINO INT8: the INT8 IR (convolutions in INT8, the rest in f32).

Each timed call goes from a float32 CPU batch to the map and scores as CPU tensors.

    python bench/bench_openvino.py --steps 100 --markdown out.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_machine_info, interleaved  # noqa: E402

from efficientad_fast import load, metrics, quantize  # noqa: E402
from efficientad_fast.data import make_synthetic, open_dataset  # noqa: E402
from efficientad_fast.deploy.openvino import calibration_images, export_openvino, load_openvino  # noqa: E402
from efficientad_fast.jobs import train_category  # noqa: E402
from efficientad_fast.precision import choose_precision  # noqa: E402
from efficientad_fast.train import TrainConfig  # noqa: E402

IMAGE_SIZE = 256


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="folder for the data, the run and the IRs (default: a temporary one)")
    p.add_argument("--category", default="board", choices=("board", "weave"), help="synthetic category")
    p.add_argument("--n-train", type=int, default=40, help="synthetic training images (default 40)")
    p.add_argument("--n-test-good", type=int, default=10, help="normal test images (default 10)")
    p.add_argument("--n-test-defect", type=int, default=2, help="test images per defect type (default 2)")
    p.add_argument("--model", default=None, help="a saved model to use instead of training one")
    p.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    p.add_argument("--teacher", default="distilled", help="teacher of the trained model (default distilled)")
    p.add_argument("--calibration-size", type=int, default=32, help="INT8 calibration images (default 32)")
    p.add_argument("--latency-rounds", type=int, default=10, help="interleaved rounds at batch 1 (default 10)")
    p.add_argument("--throughput-rounds", type=int, default=3, help="interleaved rounds at batch 16 (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant first (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of torch and OpenVINO (default: all)")
    p.add_argument("--json", metavar="OUT", help="write settings, machine info and results here")
    p.add_argument("--markdown", metavar="OUT", help="write the table here")
    return p.parse_args(argv)


def prepare_model(args, work: Path, data: Path):
    if args.model:
        return load(args.model).float().eval()
    config = TrainConfig(steps=args.steps, workers=0, progress=False, checkpoint_every=0, amp="bf16")
    model, _ = train_category(
        data,
        "mvtec",
        args.category,
        work / "run",
        config=config,
        teacher=args.teacher,
        penalty_images="none",
        overwrite=True,
    )
    return model.float().eval()


def variants(model, int8, fp32_ir: Path, int8_ir: Path, threads: int) -> tuple[dict, dict]:
    """(name -> callable(images float32 (N, 3, H, W)) -> (map, score) CPU tensors, what auto
    chose at batch 1 and at batch 16)."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    config = {"INFERENCE_NUM_THREADS": threads}
    auto = {
        batch: choose_precision(
            copy.deepcopy(int8).set_precision("fp32"), batch_size=batch, image_size=IMAGE_SIZE, refresh=True
        )
        for batch in (1, 16)
    }

    def ours(m):
        def run(x):
            pred = m.predict(x)
            return pred.anomaly_map, pred.score

        return run

    def ours_auto(x):  # the model auto chose for this batch size (16 for any batch but 1)
        pred = auto[1 if x.shape[0] == 1 else 16].predict(x)
        return pred.anomaly_map, pred.score

    return {
        "ours fp32 (predict)": ours(model),
        "ours bf16 (predict)": ours(bf16),
        "ours int8 (predict)": ours(int8),
        "ours auto (predict)": ours_auto,
        "OpenVINO fp32 IR": load_openvino(fp32_ir, inference_precision="f32", config=config),
        "OpenVINO fp32 IR, bf16 hint": load_openvino(fp32_ir, inference_precision="bf16", config=config),
        "OpenVINO INT8 IR": load_openvino(int8_ir, inference_precision="f32", config=config),
    }, {batch: m.precision for batch, m in auto.items()}


def accuracy(run, images, labels, masks, reference_map, batch: int = 8) -> dict:
    maps, scores = [], []
    for start in range(0, images.shape[0], batch):
        amap, score = run(images[start : start + batch])
        maps.append(amap[:, 0].float())
        scores.append(score.float())
    amap, score = torch.cat(maps), torch.cat(scores)
    span = float(reference_map.max() - reference_map.min())
    return {
        "image_auroc": metrics.roc_auc(score.numpy(), labels),
        "pixel_auroc": metrics.roc_auc(amap.numpy().ravel(), masks.ravel()),
        "map_diff_vs_ours_fp32": float((amap - reference_map).abs().max()) / span,
    }


def prepare(args: argparse.Namespace, work: Path) -> tuple:
    """The synthetic data (made once per ``work``), the trained model, its two OpenVINO IRs
    and its int8 twin: (data folder, model, fp32 IR, int8 IR, int8 model)."""
    data = work / "data"
    if not (data / args.category).is_dir():
        make_synthetic(
            data,
            seed=0,
            categories=(args.category,),
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_test_defect_per_type=args.n_test_defect,
            overwrite=True,
        )
    model = prepare_model(args, work, data)
    fp32_ir = export_openvino(model, work / "fp32" / "model.xml", IMAGE_SIZE, "fp32")
    calibration = data / args.category / "train" / "good"
    int8_ir = export_openvino(
        model,
        work / "int8" / "model.xml",
        IMAGE_SIZE,
        "int8",
        calibration_data=calibration,
        calibration_size=args.calibration_size,
    )
    int8 = quantize(model, calibration_images(calibration, (IMAGE_SIZE, IMAGE_SIZE), args.calibration_size))
    return data, model, fp32_ir, int8_ir, int8


def timed_rows(runs: dict, images: torch.Tensor, quality: dict, args: argparse.Namespace) -> tuple[list, dict, dict]:
    """Latency at batch 1 and throughput at batch 16 of every variant, interleaved: (table
    rows with each variant's accuracy, the latency series, the throughput series)."""
    generator = torch.Generator().manual_seed(0)
    batch1 = images[:1].clone()
    batch16 = images[torch.randint(0, images.shape[0], (16,), generator=generator)].clone()
    latency = interleaved({n: (lambda r=r: r(batch1)) for n, r in runs.items()}, args.latency_rounds, args.warmup)
    throughput = interleaved({n: (lambda r=r: r(batch16)) for n, r in runs.items()}, args.throughput_rounds, 1)
    rows = [
        {
            "variant": name,
            "latency_b1_median_ms": latency[name].median,
            "latency_b1_mean_ms": latency[name].mean,
            "throughput_b16_img_s": 16 * 1e3 / throughput[name].mean,
            "b16_median_ms": throughput[name].median,
            **quality[name],
        }
        for name in runs
    ]
    return rows, latency, throughput


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = cpu_machine_info()  # its loadavg_start: before any work
    import nncf
    import openvino

    machine.update(openvino=openvino.__version__, nncf=nncf.__version__)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_openvino_"))
    data, model, fp32_ir, int8_ir, int8 = prepare(args, work)
    print(f"model and IRs ready ({time.perf_counter() - started:.0f} s)", flush=True)

    test = open_dataset(data, "mvtec", args.category, "test", (IMAGE_SIZE, IMAGE_SIZE))
    items = [test[i] for i in range(len(test))]
    images = torch.stack([item["image"] for item in items])
    labels = np.array([item["label"] for item in items])
    masks = torch.stack([item["mask"][0] for item in items]).numpy().astype(bool)
    runs, auto_chose = variants(model, int8, fp32_ir, int8_ir, args.threads)
    reference_map = model.predict(images).anomaly_map[:, 0]
    quality = {name: accuracy(run, images, labels, masks, reference_map) for name, run in runs.items()}
    print(f"accuracy done ({time.perf_counter() - started:.0f} s)", flush=True)

    rows, latency, throughput = timed_rows(runs, images, quality, args)
    table = (
        f"CPU: {machine.get('cpu_model')} ({', '.join(machine.get('cpu_isa') or [])}), {args.threads} threads, "
        f"load average {machine['loadavg_start'][0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n\n"
        + format_table(rows)
        + f"\n\nauto chose: {auto_chose[1]} at batch 1, {auto_chose[16]} at batch 16"
    )
    print("\n" + table)
    machine["loadavg_end"] = list(os.getloadavg())
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "settings": {
            **vars(args),
            "image_size": IMAGE_SIZE,
            "test_images": len(items),
            "test_anomalous": int(labels.sum()),
        },
        "auto_chose": {f"batch {b}": p for b, p in auto_chose.items()},
        "machine": machine,
        "rows": rows,
        "latency_times_ms": {n: s.times_ms for n, s in latency.items()},
        "throughput_times_ms": {n: s.times_ms for n, s in throughput.items()},
        "seconds": time.perf_counter() - started,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table + "\n")
    return 0


def format_table(rows: list[dict]) -> str:
    lines = [
        "| variant | latency batch 1, median ms (mean) | throughput batch 16, images/s | image AUROC "
        "| pixel AUROC | max map diff vs ours fp32 (of its range) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['latency_b1_median_ms']:.0f} ({r['latency_b1_mean_ms']:.0f}) "
            f"| {r['throughput_b16_img_s']:.2f} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} "
            f"| {r['map_diff_vs_ours_fp32']:.1e} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
