#!/usr/bin/env python
"""One training step of EfficientAD-S on this machine: ours against anomalib 2.7.0, measured
in interleaved rounds (A B A B ...), batch 1, 256x256, all three losses, penalty on.

A step is what each library's training loop does per image: anomalib's
``EfficientAdModel.forward(batch, batch_imagenet)`` (training mode) + the sum of its three
losses + backward + Adam step; ours ``efficientad_fast.train.compute_losses`` (with the
teacher-output cache that ``train`` keeps for the training images) + backward + Adam step,
channels_last as ``train`` runs it. ``--amp bf16`` adds a row with CPU bf16 autocast.

    python bench/bench_train.py --rounds 10 --json bench/results/train_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Row, cpu_machine_info, import_anomalib, interleaved, print_table, write_results  # noqa: E402

from efficientad_fast import from_anomalib  # noqa: E402
from efficientad_fast.train import TrainConfig, compute_losses  # noqa: E402

TARGET = 1.3  # ours >= 1.3x faster than anomalib per step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--amp", choices=("bf16",), default=None, help="also time ours with CPU bf16 autocast")
    p.add_argument("--json", metavar="OUT", help="write settings, machine info and results here")
    return p.parse_args(argv)


def train_steps(anomalib, n: int) -> tuple:
    """(anomalib's step, our step taking an ``amp`` setting): EfficientAD-S with the same
    random weights and teacher statistics (mean 0.1, std 1) on both sides, each with its Adam."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 256, 256, generator=g)
    penalty = torch.rand(n, 3, 256, 256, generator=g)

    torch.manual_seed(0)
    theirs = anomalib.EfficientAdModel(model_size=anomalib.EfficientAdModelSize.S)
    theirs.train()
    with torch.no_grad():  # set: anomalib normalizes the teacher only when mean_std is set
        theirs.mean_std["mean"].fill_(0.1)
        theirs.mean_std["std"].fill_(1.0)
    their_opt = torch.optim.Adam(
        list(theirs.student.parameters()) + list(theirs.ae.parameters()), lr=1e-4, weight_decay=1e-5
    )

    ours = from_anomalib(theirs).to(memory_format=torch.channels_last)  # its weights, teacher mean 0.1, std 1
    ours.train()
    ours.teacher.eval()
    our_opt = torch.optim.Adam(
        list(ours.student.parameters()) + list(ours.autoencoder.parameters()), lr=1e-4, weight_decay=1e-5
    )
    config = TrainConfig()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # train() caches the frozen teacher's outputs for the training images
        cached = (ours.teacher(images) - 0.1) / 1.0

    def anomalib_step():
        losses = theirs(images, penalty)
        their_opt.zero_grad()
        sum(losses).backward()
        their_opt.step()

    def our_step(amp=None):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            losses = compute_losses(
                ours,
                images.contiguous(memory_format=torch.channels_last),
                penalty.contiguous(memory_format=torch.channels_last),
                generator,
                config,
                cached,
            )
        our_opt.zero_grad()
        losses["loss"].backward()
        our_opt.step()

    return anomalib_step, our_step


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    anomalib, error = import_anomalib()
    if anomalib is None:
        print(f"anomalib is not installed ({error}): pip install 'efficientad_fast[anomalib]'")
        return 1
    anomalib_step, our_step = train_steps(anomalib, args.batch_size)
    variants = {"anomalib fp32 step": anomalib_step, "ours fp32 step": our_step}
    if args.amp:
        variants["ours bf16-autocast step"] = lambda: our_step("bf16")
    started = time.perf_counter()
    series = interleaved(variants, args.rounds, args.warmup)
    base = series["anomalib fp32 step"]
    rows = [Row("train", "anomalib fp32 step", base)]
    rows.append(Row("train", "ours fp32 step", series["ours fp32 step"], base, TARGET))
    if args.amp:
        rows.append(Row("train", "ours bf16-autocast step", series["ours bf16-autocast step"], base))
    print_table(
        rows,
        f"EfficientAD-S training step, batch {args.batch_size}, 256x256, penalty on, "
        f"{args.threads} threads (anomalib {anomalib.version}); ratio = anomalib / ours",
    )
    if args.json:
        write_results(
            args.json,
            {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "settings": vars(args),
                "machine": cpu_machine_info(),
                "seconds": time.perf_counter() - started,
                "rows": [r.as_dict() for r in rows],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
