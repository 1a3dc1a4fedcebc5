"""The distillation loop: train a PDN to reproduce the target (:mod:`.target`) on random crops
of generic images (:mod:`.images`), offline, with checkpoints and resume.

    loss    = mean squared error between the PDN's output and the target
    optim   = Adam (weight decay 1e-5), linear warm-up then cosine decay of the lr

:func:`distill_teacher` runs the steps in order: :func:`_prepare` (device, backbone, PDN,
images), :func:`_calibrate` (fit the projection) or :func:`_resume` (from the checkpoint),
:func:`_held_out_evaluator`, :func:`_train` and :func:`_write_teacher`.

Under ``torchrun`` the same function runs data-parallel (:mod:`.parallel`): each rank trains
on its slice of every global batch with the PDN in DistributedDataParallel; rank 0 alone
calibrates (the projection is sent to the others), reads the checkpoint on ``resume`` (sent
likewise), evaluates on the held-out crops, logs and writes the checkpoints, the teacher and
its record. The recorded train loss is the mean over the ranks, i.e. the global batch's loss.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._checkpoint import (
    atomic_save,
    atomic_write_text,
    check_checkpoint_checksum,
    config_diff,
    payload_checksum,
    read_checkpoint,
    refuse_previous_run,
    require_file,
    writable_folder,
)
from .._device import autocast_dtype, cpu_has_bf16_kernels
from .._progress import progress
from .._signals import interrupts_held
from ..data.generic_images import HELD_OUT_PHOTOS, photo_images
from ..model import FORMAT as MODEL_FORMAT
from ..networks import MODEL_SIZES, TEACHER_CHANNELS, make_pdn
from . import parallel
from .backbones import BACKBONES, LITE0_BLOCKS, RESNET_LAYERS, load_backbone
from .images import CropSampler, training_images
from .parallel import Ranks
from .target import TargetProjection, fit_projection, targets

CHECKPOINT_KIND = "efficientad_fast-distill-checkpoint"
# What _save_checkpoint writes (older checkpoints lack some): any other entry is refused on resume.
CHECKPOINT_ENTRIES = (
    "kind", "step", "config", "processes", "pdn", "optimizer", "projection", "sampler_rng", "torch_rng", "history",
    "schedule_changes",
)  # fmt: skip
# What a file given as the checkpoint holds instead, by its "kind": said when it is refused.
OTHER_FILES = {"efficientad_fast-training-checkpoint": "a training checkpoint of `efficientad-fast train`"}
# Settings a resumed run may change; with another ``steps`` the lr schedule follows the new
# length from the resumed step on.
RESUMABLE = ("progress", "device", "eval_every", "checkpoint_every", "steps")
HELD_OUT_SEED = 12345
EVAL_BATCH = 8


@dataclass
class DistillConfig:
    """Distillation settings (defaults: the recipe of the shipped teacher)."""

    model_size: str = "small"
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    lite0_blocks: tuple[int, ...] = LITE0_BLOCKS
    steps: int = 1400
    batch_size: int = 8
    crop: int = 128  # PDN input size; the backbone sees 2 x crop
    lr: float = 5e-4
    warmup_fraction: float = 0.03
    final_lr_fraction: float = 0.02  # cosine decay down to lr x this
    weight_decay: float = 1e-5
    scale: tuple[float, float] = (0.03, 0.6)
    builtin_photos: bool = True
    procedural: int = 48  # generated images added to the pool
    images: list[str] = field(default_factory=list)  # extra folders
    calibration_crops: int = 96
    held_out_crops: int = 32
    eval_every: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    amp: str | None = "auto"  # "auto": fp16 on CUDA, bf16 on a CPU with bf16 kernels; None: float32
    device: str = "auto"
    progress: bool = True

    def check(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise ValueError(f"model_size must be one of {MODEL_SIZES}, got {self.model_size!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.crop < 32 or self.crop % 4:
            raise ValueError(f"crop must be a multiple of 4 and >= 32, got {self.crop}")
        if self.amp not in (None, "auto", "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'auto', 'bf16' or 'fp16', got {self.amp!r}")
        if not self.builtin_photos and not self.procedural and not self.images:
            raise ValueError("no images: enable the built-in photos, procedural images or pass folders")
        # Missing paths fail before the backbone loads and the output folder is made.
        for folder in self.images or ():
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"image folder {folder} does not exist")
        if self.backbone_weights and not Path(self.backbone_weights).is_file():
            raise FileNotFoundError(f"backbone weights file {self.backbone_weights} does not exist")

    def as_json(self) -> dict:
        """The settings as JSON gives them back (tuples become lists): for records and checkpoints."""
        return json.loads(json.dumps(asdict(self)))


# Named recipes for ``distill-teacher --preset``; explicit options override a preset's values.
DISTILL_PRESETS = {
    # The shipped teacher's recipe (pdn_small_lite0.pt): the DistillConfig defaults.
    "shipped": DistillConfig(),
    # A more local target with a constant learning rate on the photographs only (issue 12's
    # recipe): Lite0 blocks 4, 7, 10, lr 1e-4 constant, no procedural images, 1,481 steps.
    # (That recipe also jittered hue by 0.1, which CropSampler does not.)
    "local": DistillConfig(
        lite0_blocks=(4, 7, 10), lr=1e-4, warmup_fraction=0.0, final_lr_fraction=1.0, procedural=0, steps=1481
    ),
}


def learning_rate(step: int, config: DistillConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr x final_lr_fraction`` at the last step."""
    if config.warmup_fraction <= 0 and config.final_lr_fraction >= 1:
        return config.lr  # constant
    warmup = max(1, int(config.steps * config.warmup_fraction))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, config.steps - warmup)
    low = config.final_lr_fraction
    return config.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class _Run:
    """What the steps of one distillation share; the checkpoint holds its changing part."""

    config: DistillConfig
    ckpt_path: Path
    device: torch.device
    autocast: torch.dtype | None
    backbone: nn.Module
    pdn: nn.Module
    pool: dict[str, torch.Tensor]
    sampler: CropSampler
    held: CropSampler
    optimizer: torch.optim.Optimizer
    ranks: Ranks = field(default_factory=Ranks)
    train_pdn: nn.Module | None = None  # what a train step calls: the PDN, or its DDP wrapper (parallel.wrap)
    projection: TargetProjection | None = None
    step: int = 0
    history: list[dict] = field(default_factory=list)
    schedule_changes: list[dict] = field(default_factory=list)  # resumed with another --steps
    # The random states as of the last completed step (what a checkpoint saves; the step
    # under way may have drawn from them already): (crop sampler, torch).
    completed_rng: tuple[torch.Tensor, torch.Tensor] | None = None

    def mark_completed(self) -> None:
        self.completed_rng = (self.sampler.generator.get_state(), torch.get_rng_state())

    @property
    def grid(self) -> tuple[int, int]:
        """The padded PDN's output grid."""
        return (self.config.crop // 4, self.config.crop // 4)

    def targets(self, big: torch.Tensor, projected: bool = True) -> torch.Tensor:
        return targets(
            self.backbone, self.projection if projected else None, big, self.grid, self.autocast, self.device
        )

    def autocast_context(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None)


def _prepare(config: DistillConfig, ckpt_path: Path, ranks: Ranks) -> _Run:
    """Device, seeded backbone and PDN, the image pool, the crop samplers and the optimizer
    (the same on every rank: same seeds)."""
    device = parallel.device_for(config.device, ranks)
    auto = "fp16" if device.type == "cuda" else "bf16" if cpu_has_bf16_kernels() else None
    amp = auto if config.amp == "auto" else config.amp
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.backbone, config.backbone_weights, config.lite0_blocks).to(device)
    pdn = make_pdn(config.model_size, TEACHER_CHANNELS, padding=True).to(device)
    pool = training_images(config.builtin_photos, config.procedural, config.images, config.seed)
    sampler = CropSampler(list(pool.values()), config.crop, seed=config.seed, scale=config.scale)
    held = CropSampler(
        list(photo_images(HELD_OUT_PHOTOS).values()), config.crop, seed=HELD_OUT_SEED, scale=config.scale, augment=False
    )
    optimizer = torch.optim.Adam(pdn.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return _Run(
        config,
        ckpt_path,
        device,
        autocast_dtype(amp),
        backbone,
        pdn,
        pool,
        sampler,
        held,
        optimizer,
        ranks=ranks,
        train_pdn=pdn,
    )


def _calibrate(run: _Run, log) -> None:
    """Fit the target projection on ``calibration_crops`` crops of the pool (on rank 0, which
    sends it to the other ranks: every rank must train towards the same target)."""
    run.projection = parallel.from_main(run.ranks, lambda: _fitted_projection(run, log)).to(run.device)


def _fitted_projection(run: _Run, log) -> TargetProjection:
    config = run.config
    started = time.perf_counter()
    sampler = CropSampler(list(run.pool.values()), config.crop, seed=config.seed + 1, scale=config.scale)
    feats = []
    for start in range(0, config.calibration_crops, config.batch_size):
        big, _ = sampler.batch(min(config.batch_size, config.calibration_crops - start))
        feats.append(run.targets(big, projected=False).cpu())
    projection = fit_projection(feats, seed=config.seed)
    log(
        f"[distill] {len(run.pool)} training images; target: {feats[0].shape[1]} backbone channels -> "
        f"{TEACHER_CHANNELS} (projection keeps {float(projection.explained):.1%} of the variance); "
        f"calibration on {config.calibration_crops} crops took {time.perf_counter() - started:.0f} s"
    )
    return projection


def _checked_checkpoint(run: _Run) -> dict:
    """The checkpoint's contents, if it was made with the same settings (but RESUMABLE ones)."""
    config, path = run.config, run.ckpt_path
    require_file(path, f"resume: no checkpoint at {path}", prefix="resume: ")
    state = read_checkpoint(path)
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        kind = state.get("kind") if isinstance(state, dict) else None
        what = OTHER_FILES.get(str(kind)) or (
            "a model file" if isinstance(state, dict) and state.get("format") == MODEL_FORMAT else ""
        )
        raise ValueError(f"resume: {path} is not a distill-teacher checkpoint" + (f" but {what}" if what else ""))
    check_checkpoint_checksum(
        state, path, "distill-teacher checkpoint", "distill again with --overwrite", known=CHECKPOINT_ENTRIES
    )
    diff = config_diff(state["config"], config.as_json(), ignore=RESUMABLE)
    if diff:
        raise ValueError(f"resume: {path} was made with other settings (saved, now): {diff}")
    saved_steps = state["config"]["steps"]
    if saved_steps != config.steps and state["step"] >= config.steps:
        raise ValueError(f"resume: {path} is at step {state['step']}, beyond --steps {config.steps}")
    return state


def _resume(run: _Run, log) -> None:
    """Restore the PDN, optimizer, projection, random states and history from the checkpoint
    (read by rank 0 and sent to the others: only rank 0 needs to see the file). The state
    does not depend on the number of ranks (see :mod:`.parallel`), so any number resumes it."""
    config, path = run.config, run.ckpt_path
    state = parallel.from_main(run.ranks, lambda: _checked_checkpoint(run))
    run.pdn.load_state_dict(state["pdn"])
    run.optimizer.load_state_dict(state["optimizer"])
    # Older checkpoints also hold the projection's out_mean, which was always zero.
    projection = {k: v for k, v in state["projection"].items() if k != "out_mean"}
    run.projection = TargetProjection(projection["weight"].shape[0]).to(run.device)
    run.projection.load_state_dict(projection)
    run.sampler.generator.set_state(state["sampler_rng"])
    torch.set_rng_state(state["torch_rng"])
    run.step, run.history = state["step"], list(state["history"])
    run.schedule_changes = list(state.get("schedule_changes", []))
    saved_steps = state["config"]["steps"]
    if saved_steps != config.steps:
        run.schedule_changes.append({"at_step": run.step, "from_steps": saved_steps, "to_steps": config.steps})
    saved_processes = state.get("processes", 1)
    log(
        f"[distill] resuming at step {run.step} of {config.steps} from {path}"
        + (
            f" (written by {saved_processes} processes, now {run.ranks.world})"
            if saved_processes != run.ranks.world
            else ""
        )
    )


def _held_out_evaluator(run: _Run) -> Callable[[], float]:
    """A function giving the PDN's loss on fixed crops of the held-out photographs."""
    big, small = run.held.batch(run.config.held_out_crops)
    target = torch.cat([run.targets(big[i : i + EVAL_BATCH]) for i in range(0, big.shape[0], EVAL_BATCH)]).float()
    small = small.to(run.device)

    @torch.no_grad()
    def held_out_loss() -> float:
        run.pdn.eval()
        with run.autocast_context():
            pred = torch.cat([run.pdn(small[i : i + EVAL_BATCH]) for i in range(0, small.shape[0], EVAL_BATCH)])
        run.pdn.train()
        return float(F.mse_loss(pred.float(), target))

    return held_out_loss


def _save_checkpoint(run: _Run) -> None:
    """The checkpoint as of the last completed step (rank 0 only; every rank holds the same
    state), with a checksum: a changed byte is refused on resume."""
    if not run.ranks.main:
        return
    assert run.projection is not None and run.completed_rng is not None  # set before any step
    sampler_rng, torch_rng = run.completed_rng
    payload = {
        "kind": CHECKPOINT_KIND,
        "step": len(run.history),
        "config": run.config.as_json(),
        "processes": run.ranks.world,
        "pdn": run.pdn.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "projection": run.projection.state_dict(),
        "sampler_rng": sampler_rng,
        "torch_rng": torch_rng,
        "history": run.history,
        "schedule_changes": run.schedule_changes,
    }
    payload["checksum"] = payload_checksum(payload)
    atomic_save(payload, run.ckpt_path)


def _gradients(run: _Run, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The loss and gradients of the next step on a fresh batch of crops (this rank's share of
    it). Changes no saved state but the random streams (restored from ``completed_rng``
    when a checkpoint is written), so it may be interrupted."""
    big, small = run.sampler.batch(run.config.batch_size, run.ranks.share(run.config.batch_size))
    target = run.targets(big).float()
    assert run.train_pdn is not None  # distill_teacher sets it before training
    with run.autocast_context():
        pred = run.train_pdn(small.to(run.device))
    loss = F.mse_loss(pred.float(), target)
    run.optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return loss.detach()


def _commit(run: _Run, step: int, loss: torch.Tensor, scaler, held_out_loss, started: float) -> dict:
    """Apply step ``step`` (optimizer update, held-out evaluation, history row) whole: the
    caller holds Ctrl-C and SIGTERM around it. Returns the row."""
    config, done = run.config, step + 1
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(step, config)
    scaler.step(run.optimizer)
    scaler.update()
    row = {"step": done, "loss": parallel.mean_over_ranks(loss, run.ranks), "lr": run.optimizer.param_groups[0]["lr"]}
    if held_out_loss is not None and config.eval_every and (done % config.eval_every == 0 or done == config.steps):
        row["held_out_loss"] = held_out_loss()
    row["time"] = time.perf_counter() - started
    run.history.append(row)
    run.mark_completed()
    return row


def _train(run: _Run, held_out_loss: Callable[[], float] | None, log) -> None:
    """Steps from ``run.step`` to ``config.steps``: history, held-out evaluations (when
    ``held_out_loss`` is given: on rank 0) and checkpoints (also on Ctrl-C, which is re-raised)."""
    config = run.config
    show = config.progress and run.ranks.main
    # fp16 gradients need loss scaling (CUDA); bf16 and float32 do not.
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.autocast == torch.float16 and run.device.type == "cuda")
    run.pdn.train()
    started = time.perf_counter() - (run.history[-1]["time"] if run.history else 0.0)  # resumed: keep counting
    bar = progress(range(run.step, config.steps), show, "distilling", total=config.steps, initial=run.step)
    run.mark_completed()
    try:
        for step in bar:
            loss = _gradients(run, scaler)
            # Ctrl-C and SIGTERM wait for the update (a fraction of a second): the checkpoint
            # then holds whole steps, and a resumed run ends where an uninterrupted run ends.
            with interrupts_held():
                row = _commit(run, step, loss, scaler, held_out_loss, started)
            if "held_out_loss" in row:
                recent = [r["loss"] for r in run.history[-50:]]
                log(
                    f"[distill] step {row['step']}: train loss (mean of last {len(recent)}) "
                    f"{sum(recent) / len(recent):.4f}, held-out loss {row['held_out_loss']:.4f}, {row['time']:.0f} s"
                )
            if show:
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            if config.checkpoint_every and row["step"] % config.checkpoint_every == 0:
                _save_checkpoint(run)
    except KeyboardInterrupt:
        _save_checkpoint(run)
        log(f"[distill] interrupted after step {len(run.history)}; checkpoint at {run.ckpt_path}; rerun with --resume")
        raise
    finally:
        if show and hasattr(bar, "close"):
            bar.close()
    _save_checkpoint(run)


def _record(run: _Run, out: Path, command: str | None) -> dict:
    """The JSON recipe written beside the teacher: settings, images, losses, environment."""
    config, history = run.config, run.history
    assert run.projection is not None  # _calibrate or _resume set it before any step
    channels = int(run.projection.in_mean.numel())
    tail = [r["loss"] for r in history[-50:]]
    return {
        "what": f"PDN-{config.model_size[0].upper()} teacher (384 channels) distilled from {config.backbone}",
        "command": command or f"efficientad_fast.distill.distill_teacher({str(out)!r}, DistillConfig(...))",
        "config": config.as_json(),
        "backbone_features": (
            f"flat blocks {list(config.lite0_blocks)}"
            if config.backbone == "efficientnet_lite0"
            else f"{list(RESNET_LAYERS)}"
        ),
        "backbone_channels": channels,
        "projection": (
            "PCA to 384 + fixed random rotation"
            if channels >= TEACHER_CHANNELS
            else "fixed random orthogonal lift to 384"
        ),
        "projection_variance_kept": float(run.projection.explained),
        "images": sorted(run.pool),
        "held_out_images": list(HELD_OUT_PHOTOS),
        "steps": config.steps,
        "schedule_changes": run.schedule_changes,
        "seed": config.seed,
        "final_train_loss_mean_last_50": sum(tail) / len(tail),
        "final_held_out_loss": next((r["held_out_loss"] for r in reversed(history) if "held_out_loss" in r), None),
        "held_out_curve": [[r["step"], r["held_out_loss"]] for r in history if "held_out_loss" in r],
        "seconds": history[-1]["time"] if history else 0.0,
        "device": str(run.device),
        "processes": run.ranks.world,  # torchrun ranks, each with batch_size / processes crops a step
        "amp": str(run.autocast).replace("torch.", "") if run.autocast else "float32",
        "weights_dtype": "float32",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "note": "targets are standardized, so a loss of L means about 1 - L of the target variance explained",
    }


def _write_teacher(run: _Run, out: Path, command: str | None, log) -> dict:
    """The teacher's float32 state dict at ``out`` and its record at ``out`` with suffix .json."""
    atomic_save({k: v.detach().cpu().float().clone() for k, v in run.pdn.state_dict().items()}, out)
    record = _record(run, out, command)
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    log(f"[distill] wrote {out} and {out.with_suffix('.json')}")
    return record


def _interrupted_while_starting(out: Path, resume: bool, made: list[Path], log) -> None:
    """Ctrl-C or SIGTERM before the first step: nothing was written; the folders this run
    made for ``out`` go again (when still empty), and the user is told."""
    if resume:
        log(f"[distill] interrupted while starting; {out.name}.ckpt is unchanged: rerun with --resume")
        return
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: leave it
            break
    log("[distill] interrupted before the first step; nothing was written")


def distill_teacher(
    out: str | os.PathLike,
    config: DistillConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    log=print,
) -> dict | None:
    """Distill a PDN teacher and write it to ``out`` (a state dict with ``conv1.weight``,
    ... keys, readable by :func:`efficientad_fast.load_teacher` and ``--teacher``) plus
    ``out`` with suffix ``.json`` recording the recipe and the final losses. A checkpoint
    ``out`` + ``.ckpt`` (with a checksum) is written every ``checkpoint_every`` steps and on
    Ctrl-C or SIGTERM, as of the last whole step; ``resume=True`` continues from it and ends
    where an uninterrupted run ends. An ``out`` or checkpoint already there (another run's)
    is refused unless ``resume`` or ``overwrite``. Returns the JSON record.

    Started by ``torchrun --nproc-per-node N`` (WORLD_SIZE > 1 in the environment) it runs
    data-parallel over N processes, ``batch_size / N`` crops each (see :mod:`.parallel`);
    rank 0 writes the files and returns the record, the other ranks return None."""
    config = config or DistillConfig()
    config.check()
    ranks = parallel.torchrun_ranks()
    ranks.share(config.batch_size)  # divisible: fail before any work
    out = Path(out)
    made = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]  # innermost first
    if ranks.main:
        writable_folder(out.parent)
        if not (resume or overwrite):
            refuse_previous_run(out.with_name(out.name + ".ckpt"), out)
    else:
        log = lambda *_: None  # noqa: E731 - rank 0 speaks for all
    try:  # seconds to minutes: the backbone, the images, the calibration
        run = _prepare(config, out.with_name(out.name + ".ckpt"), ranks)
        created = parallel.start(ranks, run.device)
        if resume:
            _resume(run, log)
        else:
            _calibrate(run, log)
        run.train_pdn = parallel.wrap(run.pdn, ranks, run.device)
        held_out_loss = _held_out_evaluator(run) if ranks.main else None
    except KeyboardInterrupt:
        _interrupted_while_starting(out, resume, made if ranks.main else [], log)
        raise
    _train(run, held_out_loss, log)
    record = _write_teacher(run, out, command, log) if ranks.main else None
    # Not in a finally: after an error on one rank the others may never reach the barrier;
    # torchrun then stops them all.
    parallel.stop(ranks, created)
    return record


def command_line(out, config: DistillConfig) -> str:
    """The distill-teacher command that reproduces ``config`` (every setting spelled out)."""
    parts = [
        "efficientad-fast distill-teacher",
        f"--out {out}",
        f"--model-size {config.model_size}",
        f"--backbone {config.backbone}",
    ]
    if config.backbone_weights:
        parts.append(f"--backbone-weights {config.backbone_weights}")
    if config.backbone == "efficientnet_lite0" and tuple(config.lite0_blocks) != LITE0_BLOCKS:
        parts.append("--lite0-blocks " + " ".join(map(str, config.lite0_blocks)))
    if config.images:
        parts.append("--images " + " ".join(config.images))
    if not config.builtin_photos:
        parts.append("--no-builtin-images")
    parts += [
        f"--procedural {config.procedural}",
        f"--steps {config.steps}",
        f"--batch-size {config.batch_size}",
        f"--crop {config.crop}",
        f"--lr {config.lr}",
        f"--calibration-crops {config.calibration_crops}",
        f"--held-out-crops {config.held_out_crops}",
        f"--seed {config.seed}",
        f"--amp {config.amp or 'none'}",
    ]
    return " ".join(parts)
