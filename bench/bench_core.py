#!/usr/bin/env python
"""Core CPU benchmarks of efficientad_fast, measured in interleaved rounds.

1. The fused anomaly-map op (``efficientad_fast.anomaly_map``) against the plain-PyTorch
   reference (``efficientad_fast.reference_anomaly_map``): C=384, 56x56 features, pad 4,
   output 256x256, teacher mean/std and quantiles given, l2 distance. N=1 and N=8 in fp32
   (targets >= 2x and >= 5x) plus fp16/bf16 inputs as extra rows.
2. EfficientAD-S end to end: ``EfficientAD.predict`` against anomalib's
   ``EfficientAdModel.forward`` (eval, inference_mode) with the same weights, 256x256,
   batch 1, float images. Ours runs in fp32 (target >= 1.2x) and bf16 (target >= 2x and a
   map within 2 % of the fp32 map's range), each in NCHW and channels_last.

Every round runs each variant of a comparison once, one after the other (A B A B ...; with
more than two variants a round-robin whose starting point rotates every round), so slow
phases of a shared, noisy machine hit all variants alike. Ratios are baseline / candidate
of the medians, which decides "met?" (the ratios of the means and of the minima are given too;
on a loaded machine the minima are the least disturbed figures).

    python bench/bench_core.py                       # defaults: 30 predict rounds, 2 threads
    python bench/bench_core.py --rounds 40 --json bench/results/core.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Row, cpu_machine_info, import_anomalib, interleaved, print_table, write_results  # noqa: E402

import efficientad_fast  # noqa: E402
from efficientad_fast._device import DTYPES  # noqa: E402
from efficientad_fast.networks import TEACHER_CHANNELS as CHANNELS  # noqa: E402
from efficientad_fast.networks import feature_size
from efficientad_fast.testing import op_inputs  # noqa: E402

IMAGE_SIZE = 256
FEATURE_SIZE = feature_size((IMAGE_SIZE, IMAGE_SIZE), padding=False)[0]  # 56, as op_inputs makes them
PAD = 4
# Op targets (reference / fused, median), fp32 only; other dtypes are extra rows.
OP_TARGETS = {1: 2.0, 8: 5.0}
PREDICT_TARGET_FP32 = 1.2
PREDICT_TARGET_BF16 = 2.0  # and the map within timing.MAP_TOLERANCE of the fp32 map


# -- 1. fused op vs reference -------------------------------------------------------------


def compare_op(batches: list[int], dtypes: list[str], rounds: int, warmup: int) -> list[Row]:
    rows = []
    for batch in batches:
        for dtype_name in dtypes:
            args, kwargs = op_inputs(batch, DTYPES[dtype_name])  # CPU, 256 px
            # Fewer rounds where the reference is slow (N=64: ~1-2 s a call on 2 threads).
            n_rounds = rounds if batch <= 8 else max(3, rounds // 10)
            series = interleaved(
                {
                    f"reference N={batch} {dtype_name}": lambda: efficientad_fast.reference_anomaly_map(
                        *args, **kwargs
                    ),
                    f"fused     N={batch} {dtype_name}": lambda: efficientad_fast.anomaly_map(*args, **kwargs),
                },
                rounds=n_rounds,
                warmup=warmup,
            )
            ref, fused = series.values()
            target = OP_TARGETS.get(batch) if dtype_name == "fp32" else None
            group = f"op N={batch} {dtype_name}"
            rows.append(Row(group, ref.name, ref))
            rows.append(Row(group, fused.name, fused, baseline=ref, target=target))
    return rows


# -- 2. predict vs anomalib ---------------------------------------------------------------


def calibrated_anomalib_model(EfficientAdModel, EfficientAdModelSize, seed: int = 0):
    """An anomalib EfficientAD-S (random init) with teacher mean/std and map quantiles
    computed as anomalib does, from a few random 'training' images, so neither is trivial."""
    torch.manual_seed(seed)
    model = EfficientAdModel(model_size=EfficientAdModelSize.S).eval()
    calib = torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        teacher = model.teacher(calib)
        model.mean_std["mean"].copy_(teacher.mean(dim=(0, 2, 3), keepdim=True))
        model.mean_std["std"].copy_(teacher.std(dim=(0, 2, 3), keepdim=True))
        map_st, map_ae = model.get_maps(calib, normalize=False)
        q = torch.tensor([0.9, 0.995])
        qa_st, qb_st = torch.quantile(map_st.flatten(), q)
        qa_ae, qb_ae = torch.quantile(map_ae.flatten(), q)
        for key, value in zip(("qa_st", "qb_st", "qa_ae", "qb_ae"), (qa_st, qb_st, qa_ae, qb_ae)):
            model.quantiles[key].copy_(value)
    return model


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / range of b."""
    b = b.float()
    return float((a.float() - b).abs().max() / (b.max() - b.min()))


def compare_predict(rounds: int, warmup: int, anomalib) -> tuple[list[Row], dict]:
    version, EfficientAdModel, EfficientAdModelSize = anomalib
    theirs = calibrated_anomalib_model(EfficientAdModel, EfficientAdModelSize)
    ours = efficientad_fast.from_anomalib(theirs).eval()
    images = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    images_cl = images.contiguous(memory_format=torch.channels_last)

    models = {
        "ours fp32": (ours, images),
        "ours fp32 channels_last": (copy.deepcopy(ours).to(memory_format=torch.channels_last), images_cl),
        "ours bf16": (copy.deepcopy(ours).to(torch.bfloat16), images),
        "ours bf16 channels_last": (
            copy.deepcopy(ours).to(torch.bfloat16).to(memory_format=torch.channels_last),
            images_cl,
        ),
    }

    def run_anomalib():
        with torch.inference_mode():
            return theirs(images)

    # Accuracy first (also a warm-up): every variant against ours fp32 and anomalib.
    reference = run_anomalib()
    ours_fp32 = ours.predict(images)
    accuracy = {}
    for name, (model, x) in models.items():
        pred = model.predict(x)
        accuracy[name] = {
            "map_rel_diff": _rel_diff(pred.anomaly_map, ours_fp32.anomaly_map),
            "map_rel_diff_vs_anomalib": _rel_diff(pred.anomaly_map, reference.anomaly_map),
            "score": float(pred.score[0]),
        }
    info = {
        "anomalib_version": version,
        "anomalib_score": float(reference.pred_score.reshape(-1)[0]),
        "anomalib_map_range": [float(reference.anomaly_map.min()), float(reference.anomaly_map.max())],
        "quantiles": [float(v.detach()) for v in theirs.quantiles.values()],
        "image": "torch.rand(1, 3, 256, 256) float32 in [0, 1]",
        "accuracy": accuracy,
    }

    variants = {"anomalib fp32 forward": run_anomalib}
    for name, (model, x) in models.items():
        variants[f"{name} predict"] = lambda m=model, x=x: m.predict(x)
    series = interleaved(variants, rounds=rounds, warmup=warmup)

    base = series["anomalib fp32 forward"]
    rows = [Row("predict", base.name, base)]
    for name in models:
        s = series[f"{name} predict"]
        bf16 = "bf16" in name
        extra = {}
        if bf16:
            extra["map_rel_diff"] = accuracy[name]["map_rel_diff"]
        else:
            extra["map_rel_diff_vs_anomalib"] = accuracy[name]["map_rel_diff_vs_anomalib"]
        rows.append(
            Row(
                "predict",
                s.name,
                s,
                baseline=base,
                target=PREDICT_TARGET_BF16 if bf16 else PREDICT_TARGET_FP32,
                extra=extra,
            )
        )
    # channels_last against NCHW, same dtype: which layout to make the default.
    layout = {}
    for dtype in ("fp32", "bf16"):
        nchw, cl = series[f"ours {dtype} predict"], series[f"ours {dtype} channels_last predict"]
        layout[dtype] = {
            "nchw_median_ms": nchw.median,
            "channels_last_median_ms": cl.median,
            "speedup_channels_last": nchw.median / cl.median,
            "speedup_channels_last_mean": nchw.mean / cl.mean,
        }
    info["channels_last_vs_nchw"] = layout
    return rows, info


# -- main ---------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds of the predict comparison (default 30)")
    p.add_argument(
        "--op-rounds",
        type=int,
        default=50,
        help="interleaved rounds per op comparison (default 50; N>8 uses a tenth, at least 3)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls of every variant before timing (default 3); the op "
        "library is loaded (JIT-built if needed) before any of this",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--op-batches", type=int, nargs="+", default=[1, 8], help="batch sizes of the op comparison (default 1 8)"
    )
    p.add_argument(
        "--op-dtypes",
        nargs="+",
        default=list(DTYPES),
        choices=list(DTYPES),
        help="feature dtypes of the op comparison (default fp32 fp16 bf16)",
    )
    p.add_argument("--skip-op", action="store_true", help="skip the op comparison")
    p.add_argument("--skip-predict", action="store_true", help="skip the predict comparison")
    p.add_argument("--json", metavar="OUT", help="write settings, machine info and results here")
    return p.parse_args(argv)


def predict_part(args: argparse.Namespace, result: dict) -> list[Row]:
    """2. Our predict against anomalib's forward (skipped, and said so, without anomalib),
    and channels_last against NCHW; its details go into ``result["predict"]``."""
    parts, error = import_anomalib()
    if parts is None:
        print(
            f"\n2. predict vs anomalib: SKIPPED, anomalib is not installed ({error}); "
            "pip install 'efficientad_fast[anomalib]' to run it"
        )
        result["predict_skipped"] = f"anomalib not installed: {error}"
        return []
    predict_rows, info = compare_predict(args.rounds, args.warmup, parts)
    print_table(
        predict_rows,
        f"2. EfficientAD-S predict vs anomalib {info['anomalib_version']} "
        f"EfficientAdModel.forward (CPU, 1x3x{IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"{args.threads} threads); ratio = anomalib / ours",
    )
    print("\nchannels_last vs NCHW (ours, NCHW median / channels_last median):")
    for dtype, v in info["channels_last_vs_nchw"].items():
        print(
            f"  {dtype}: NCHW {v['nchw_median_ms']:.1f} ms, channels_last "
            f"{v['channels_last_median_ms']:.1f} ms -> {v['speedup_channels_last']:.2f}x "
            f"(means: {v['speedup_channels_last_mean']:.2f}x)"
        )
    result["predict"] = info
    return predict_rows


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    t0 = time.perf_counter()
    ext = efficientad_fast.load_extension()  # first use JIT-builds; keep it out of any timing
    load_s = time.perf_counter() - t0
    machine = cpu_machine_info()
    print(
        f"CPU: {machine['cpu_model']} ({machine['logical_cpus']} logical, {' '.join(machine['cpu_isa'])}); "
        f"torch {machine['torch']}, {machine['torch_num_threads']} threads; op library: {ext['how']} "
        f"({load_s:.1f} s to load); load average {machine['loadavg_start']}"
    )

    rows: list[Row] = []
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {
            "rounds": args.rounds,
            "op_rounds": args.op_rounds,
            "warmup": args.warmup,
            "threads": args.threads,
            "op_batches": args.op_batches,
            "op_dtypes": args.op_dtypes,
            "op_shape": {
                "channels": CHANNELS,
                "features": [FEATURE_SIZE, FEATURE_SIZE],
                "pad": PAD,
                "output": [IMAGE_SIZE, IMAGE_SIZE],
                "distance": "l2",
                "teacher_stats": True,
                "quantiles": True,
            },
            "predict": {"model": "EfficientAD-S", "image": [1, 3, IMAGE_SIZE, IMAGE_SIZE], "images_dtype": "float32"},
            "ratio": "baseline median / candidate median (met? is judged on it); mean and min ratios also given",
            "order": "interleaved rounds (rotating round-robin; ABAB for two variants)",
        },
        "machine": machine,
        "extension": {"how": ext["how"], "path": ext["path"], "load_s": load_s},
    }

    if not args.skip_op:
        op_rows = compare_op(args.op_batches, args.op_dtypes, args.op_rounds, args.warmup)
        print_table(
            op_rows,
            f"1. fused anomaly_map vs reference_anomaly_map (CPU, C={CHANNELS}, "
            f"{FEATURE_SIZE}x{FEATURE_SIZE} -> {IMAGE_SIZE}x{IMAGE_SIZE}, pad {PAD}, "
            "quantiles, teacher stats, l2); ratio = reference / fused",
        )
        rows += op_rows

    if not args.skip_predict:
        rows += predict_part(args, result)

    machine["loadavg_end"] = list(os.getloadavg())
    result["results"] = [row.as_dict() for row in rows]
    result["wall_s"] = time.perf_counter() - started
    print(f"\nload average at the end {machine['loadavg_end']}; total {result['wall_s']:.0f} s")
    if args.json:
        write_results(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
