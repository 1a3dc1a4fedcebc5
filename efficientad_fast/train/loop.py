"""The slim training loop (paper Algorithm 1); teacher statistics and calibration are in :mod:`.calibrate`.

    stats   = teacher channel mean/std over the training images, one streaming pass
    loop    : hard feature loss (mean of the student-teacher squared differences at or
              above their 0.999 quantile) + penalty (student[:, :384]^2 on a generic image)
              + autoencoder loss on an augmented image + student-autoencoder loss;
              Adam(lr 1e-4, weight decay 1e-5), lr x 0.1 at 95 % of the steps
    calibrate: q_a = 0.9 and q_b = 0.995 quantiles of each map on held-out training images,
              then the decision thresholds: image = the 0.995 quantile of those images'
              scores, pixel = the q_b level (0.1) of the normalized map; optionally the
              F1-optimal image threshold on labelled validation images (threshold_from_f1)

Every random draw (batch order, augmentation, penalty images, dropout) comes from state
saved in the checkpoint, so ``resume`` ends exactly where an uninterrupted run would; a
checkpoint written on Ctrl-C holds the state as of the last completed step.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .._checkpoint import (
    atomic_save,
    atomic_write_text,
    check_checkpoint_checksum,
    config_diff,
    load_state_dict_checked,
    payload_checksum,
    read_checkpoint,
    require_file,
    save_figure,
    writable_folder,
)
from .._device import autocast_dtype
from .._progress import progress as progress_bar
from .._signals import interrupts_held
from ..data.inputs import load_images_uint8
from ..model import EfficientAD
from ..networks import TEACHER_CHANNELS, feature_size
from .calibrate import exact_quantile, teacher_channel_stats

CHECKPOINT_NAME = "checkpoint.pt"
# What save_checkpoint writes (older checkpoints lack some): any other entry is refused on resume.
CHECKPOINT_ENTRIES = (
    "kind", "step", "model_config", "train_config", "run_settings", "model", "optimizer", "scheduler", "rng",
    "history", "scaler",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Training settings; the defaults are the paper's."""

    steps: int = 70_000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lr_drop_fraction: float = 0.95  # lr x 0.1 from this fraction of the steps on
    hard_quantile: float = 0.999
    augment_range: tuple[float, float] = (0.8, 1.2)
    seed: int = 0
    # "fp16" or "bf16" autocast, or "auto": bf16 (or fp16 on a GPU) only where a short probe of
    # training steps on this machine shows it faster (precision.choose_amp; train resolves it)
    amp: str | None = None
    checkpoint_every: int = 1000  # steps; 0 = only at the end and on Ctrl-C
    # Keep the frozen teacher's outputs for the training images in host memory when they
    # fit in this many MiB (4.8 MiB per 256x256 image): saves one teacher pass per step.
    teacher_cache_mib: int = 2048
    workers: int = 2  # image-loading processes
    progress: bool = True

    def check(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.amp != "auto":
            autocast_dtype(self.amp)  # raises for anything but None, "fp16", "bf16", "auto"
        if not 0 < self.hard_quantile < 1:
            raise ValueError(f"hard_quantile must be in (0, 1), got {self.hard_quantile}")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # one row per logged step


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the checkpoint to resume from was written first."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


def augment(images: torch.Tensor, generator: torch.Generator, factor_range=(0.8, 1.2)) -> torch.Tensor:
    """One of brightness, contrast or saturation per image with a factor from U(0.8, 1.2),
    as torchvision's adjust_* do it (grayscale weights 0.2989, 0.587, 0.114)."""
    n = images.shape[0]
    choice = torch.randint(0, 3, (n,), generator=generator)
    lo, hi = factor_range
    factor = (torch.rand(n, generator=generator) * (hi - lo) + lo).to(images.device, images.dtype)
    choice = choice.to(images.device)
    f = factor.view(n, 1, 1, 1)
    gray = (0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)
    brightness = images * f
    contrast = (images - gray.mean(dim=(2, 3), keepdim=True)) * f + gray.mean(dim=(2, 3), keepdim=True)
    saturation = images * f + gray * (1 - f)
    c = choice.view(n, 1, 1, 1)
    out = torch.where(c == 0, brightness, torch.where(c == 1, contrast, saturation))
    return out.clamp(0, 1)


class BatchSchedule:
    """Which training images each step uses: epochs of seeded permutations, computed from
    the step alone so a resumed run draws the same batches."""

    def __init__(self, n_images: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n_images, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)  # epoch -1: drawn at the first step

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, i = divmod(pos, self.n)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
            out.append(int(self._perm[i]))
        return torch.tensor(out)


def compute_losses(
    model: EfficientAD,
    images: torch.Tensor,
    penalty: torch.Tensor | None,
    generator: torch.Generator,
    config: TrainConfig,
    teacher_images: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The three losses of one step.

    Same losses as anomalib's, computed with less work: the images are normalized once;
    the student's body runs once on [images, augmented, penalty] and the teacher once on
    [images, augmented]; and the student's last conv computes only the half of its output
    channels each loss reads (the first C for the images and the penalty, the last C for
    the augmented images), which saves a quarter of the student's work. ``teacher_images``
    are the teacher's (frozen, so cacheable) standardized outputs for ``images``."""
    c = model.teacher_mean.numel()
    n = images.shape[0]
    augmented = augment(images, generator, config.augment_range)
    parts = [images, augmented] + ([penalty] if penalty is not None else [])
    x = model.teacher.normalize(torch.cat(parts)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        t = model.teacher(x[n : 2 * n] if teacher_images is not None else x[: 2 * n], normalized=True)
        t = (t - model.teacher_mean.view(1, -1, 1, 1)) / model.teacher_std.view(1, -1, 1, 1)
        if teacher_images is not None:
            t = torch.cat([teacher_images.to(t.dtype), t])
    features = model.student.body(x)
    last = model.student.last_conv
    assert last.bias is not None  # the PDNs' convs have biases
    for_st = features[:n] if penalty is None else torch.cat([features[:n], features[2 * n :]])
    s_st = last._conv_forward(for_st, last.weight[:c], last.bias[:c])  # images (+ penalty)
    s_ae = last._conv_forward(features[n : 2 * n], last.weight[c:], last.bias[c:])  # augmented
    ae = model.autoencoder(x[n : 2 * n], normalized=True)

    distance_st = (t[:n].float() - s_st[:n].float()) ** 2
    d_hard = exact_quantile(distance_st.detach(), config.hard_quantile)
    loss_hard = distance_st[distance_st >= d_hard].mean()
    loss_penalty = (s_st[n:].float() ** 2).mean() if penalty is not None else torch.zeros((), device=x.device)
    loss_ae = ((t[n:].float() - ae.float()) ** 2).mean()
    loss_stae = ((ae.float() - s_ae.float()) ** 2).mean()
    return {
        "loss": loss_hard + loss_penalty + loss_ae + loss_stae,
        "loss_hard": loss_hard,
        "loss_penalty": loss_penalty,
        "loss_ae": loss_ae,
        "loss_stae": loss_stae,
    }


def _rng_state(generator: torch.Generator) -> dict:
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    step,
    generator,
    config,
    history,
    rng: dict | None = None,
    scaler: torch.amp.GradScaler | None = None,
    run_settings: dict | None = None,
) -> None:
    """Write a training checkpoint; ``rng``: the RNG state to store (default: the current one);
    ``run_settings``: what else a resumed run must share (see :func:`train`)."""
    payload = {
        "kind": "efficientad_fast-training-checkpoint",
        "step": step,
        "model_config": model.config(),
        "train_config": asdict(config),
        "run_settings": dict(run_settings or {}),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng if rng is not None else _rng_state(generator),
        "history": history,
        # fp16 loss scaling on CUDA: the scale is part of where the run is.
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
    }
    payload["checksum"] = payload_checksum(payload)  # a changed byte is refused on resume
    atomic_save(payload, path)  # never a half-written checkpoint


# Settings a resumed run may change (they do not change what is computed).
# Settings a resumed run may change: they do not change its result.
RESUMABLE_CHANGES = ("progress", "workers", "checkpoint_every")


def _as_uint8_images(images: torch.Tensor | Dataset, config: TrainConfig, desc: str) -> torch.Tensor:
    if isinstance(images, Dataset):
        return load_images_uint8(images, config.workers, desc)
    return images


def _refuse_constant_images(images: torch.Tensor) -> None:
    """ValueError when every training image is one colour (all black, say): the teacher's
    statistics would have no spread and the run would learn nothing, after hours."""
    flat = images.flatten(1)
    if bool((flat.amax(dim=1) == flat.amin(dim=1)).all()):
        raise ValueError(
            f"all {images.shape[0]} training images are constant (one value everywhere, e.g. all black): check the data"
        )


def _restore(
    checkpoint: Path | None, model, optimizer, scheduler, generator, config, run_settings: dict | None = None
) -> tuple[int, list, dict]:
    """Load a training checkpoint into the model, optimizer, scheduler and RNGs; returns
    (step, history, the GradScaler's state or {}). Refuses a checkpoint made with settings
    that change the result."""
    if checkpoint is None:
        raise FileNotFoundError("resume: no checkpoint given")
    require_file(checkpoint, f"resume: no checkpoint at {checkpoint}", prefix="resume: ")
    # On the CPU; load_state_dict copies to the model's device, the optimizer to its parameters'.
    state = read_checkpoint(checkpoint)
    if not isinstance(state, dict) or state.get("kind") != "efficientad_fast-training-checkpoint":
        raise ValueError(f"{checkpoint}: not a training checkpoint of efficientad_fast")
    check_checkpoint_checksum(
        state, checkpoint, "training checkpoint", "start afresh with --overwrite", known=CHECKPOINT_ENTRIES
    )
    diff = config_diff(state["train_config"], asdict(config), ignore=RESUMABLE_CHANGES)
    # Checkpoints from before run settings were stored have none to compare.
    diff.update(config_diff(state.get("run_settings") or {}, dict(run_settings or {})))
    if diff:
        raise ValueError(f"resume: the checkpoint was made with other settings (saved, now): {diff}")
    load_state_dict_checked(model, state["model"], source=str(checkpoint))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], generator)
    return state["step"], list(state["history"]), dict(state.get("scaler") or {})


def _standardized_teacher_cache(model, train_images, config, resume: bool, generator) -> torch.Tensor | None:
    """Set the teacher statistics (new runs) and return the standardized teacher outputs of
    all training images when they fit in ``config.teacher_cache_mib``, else None."""
    feature_bytes = 4 * TEACHER_CHANNELS * math.prod(feature_size(tuple(train_images.shape[-2:]), model.padding))
    use_cache = train_images.shape[0] * feature_bytes <= config.teacher_cache_mib * 2**20
    cache = None
    if not resume:
        torch.manual_seed(config.seed)
        generator.manual_seed(config.seed)
        stats = teacher_channel_stats(model, train_images, progress=config.progress, keep_outputs=use_cache)
        model.set_teacher_stats(stats[0], stats[1].clamp_min(1e-6))
        cache = stats[2] if use_cache else None
    elif use_cache:  # resuming: one teacher pass refills the cache
        cache = teacher_channel_stats(model, train_images, progress=config.progress, keep_outputs=True)[2]
    if cache is None:
        return None
    return (cache - model.teacher_mean.cpu().view(1, -1, 1, 1)) / model.teacher_std.cpu().view(1, -1, 1, 1)


def train(
    model: EfficientAD,
    train_images: torch.Tensor | Dataset,
    config: TrainConfig | None = None,
    *,
    penalty_images: torch.Tensor | Dataset | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callback: Callable[[int, dict], None] | None = None,
    run_settings: dict | None = None,
) -> TrainResult:
    """Train ``model``'s student and autoencoder (the teacher stays frozen).

    Args:
        model: an :class:`EfficientAD`; its teacher weights are used as they are.
        train_images: good training images: a uint8 (N, 3, H, W) tensor, or a Dataset of
            float (3, H, W) images in [0, 1] (or dicts with an "image" key).
        config: :class:`TrainConfig` (steps, batch size, lr, ...).
        penalty_images: generic natural images for the penalty loss (same forms), or None.
        out_dir: where checkpoints go (``checkpoint.pt``); needed for checkpoints and resume.
        resume: continue from ``out_dir/checkpoint.pt`` (model, optimizer, scheduler, RNG, step).
        callback: called as ``callback(step, losses)`` after every step.
        run_settings: settings outside ``config`` that change the result (image size, tile,
            the teacher and penalty images as resolved, ...): stored in the checkpoint, and a
            resume with other values is refused, naming them (as for ``config``).

    Computes the teacher statistics first (unless resuming). Ctrl-C writes a checkpoint and
    raises :class:`TrainingInterrupted`. Returns a :class:`TrainResult` with the loss history.
    """
    config = config or TrainConfig()
    config.check()
    train_images = _as_uint8_images(train_images, config, "training images")
    penalty_images = None if penalty_images is None else _as_uint8_images(penalty_images, config, "penalty images")
    if train_images.dtype != torch.uint8 or train_images.dim() != 4 or train_images.shape[1] != 3:
        raise ValueError(
            f"train_images must be uint8 (N, 3, H, W), got {train_images.dtype} {tuple(train_images.shape)}"
        )
    _refuse_constant_images(train_images)
    checkpoint = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if checkpoint is not None:
        writable_folder(checkpoint.parent)  # not after all the steps, at the first checkpoint
    if config.amp == "auto":  # the checkpoint and summary record what it resolved to
        config.amp = _choose_amp(model, train_images, config)

    params = list(model.student.parameters()) + list(model.autoencoder.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    drop_at = max(1, int(config.steps * config.lr_drop_fraction))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=drop_at, gamma=0.1)
    generator = torch.Generator()
    step, history, scaler_state = (
        _restore(checkpoint, model, optimizer, scheduler, generator, config, run_settings) if resume else (0, [], {})
    )
    teacher_cache = _standardized_teacher_cache(model, train_images, config, resume, generator)

    model.to(memory_format=torch.channels_last)  # 1.1x faster steps on CPU (bench/bench_train.py)
    model.train()
    model.teacher.eval()
    loop = _Loop(model, optimizer, scheduler, generator, config, checkpoint, history, callback, run_settings)
    if scaler_state and loop.scaler.is_enabled():
        loop.scaler.load_state_dict(scaler_state)
    started = time.perf_counter()
    loop.run(step, train_images, penalty_images, teacher_cache, started)
    if checkpoint is not None:
        loop.save(config.steps)
    model.eval()
    return TrainResult(steps=config.steps, seconds=time.perf_counter() - started, history=history)


def _choose_amp(model: EfficientAD, train_images: torch.Tensor, config: TrainConfig) -> str | None:
    """Resolve ``amp="auto"``: time training steps of a copy of ``model`` (so the model, the
    global RNG and the run's results are untouched) with and without autocast."""
    from ..precision import choose_amp

    probe = copy.deepcopy(model).to(memory_format=torch.channels_last).train()
    probe.teacher.eval()
    device = probe.device
    images = train_images[: config.batch_size].to(device).float().div_(255)
    params = list(probe.student.parameters()) + list(probe.autoencoder.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)
    generator = torch.Generator().manual_seed(0)

    def run_step(amp: str | None) -> None:
        dtype = autocast_dtype(amp)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = compute_losses(probe, images, None, generator, config)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    what = f"{probe.model_size} | batch {config.batch_size} | {images.shape[2]}x{images.shape[3]} px"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return choose_amp(device, what, run_step)


class _Loop:
    """The optimisation steps of :func:`train`, with checkpoints and Ctrl-C handling.

    A step first computes (forward, backward: this draws from the RNGs but changes no
    saved state), then commits (optimizer, scheduler, history) with Ctrl-C held. Ctrl-C
    during the computation saves the state of the last completed step, RNGs included, so
    the resumed run redoes the step exactly as an uninterrupted run does it."""

    def __init__(
        self,
        model,
        optimizer,
        scheduler,
        generator,
        config,
        checkpoint,
        history,
        callback,
        run_settings: dict | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler, self.generator = model, optimizer, scheduler, generator
        self.config, self.checkpoint, self.history, self.callback = config, checkpoint, history, callback
        self.run_settings = run_settings
        device = model.device
        self.autocast = autocast_dtype(config.amp)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.autocast == torch.float16 and device.type == "cuda"
        )
        # (steps done, RNG state then): what a checkpoint saves; set between steps.
        self.completed: tuple[int, dict] | None = None

    def save(self, step: int, rng: dict | None = None) -> None:
        save_checkpoint(
            self.checkpoint,
            self.model,
            self.optimizer,
            self.scheduler,
            step,
            self.generator,
            self.config,
            self.history,
            rng=rng,
            scaler=self.scaler,
            run_settings=self.run_settings,
        )

    def step(self, images, penalty, teacher_images, done: int, started: float) -> dict:
        """One optimisation step, ``done`` = its number counted from 1; returns its history row."""
        device = self.model.device
        with torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None):
            losses = compute_losses(self.model, images, penalty, self.generator, self.config, teacher_images)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        row = {k: float(v.detach()) for k, v in losses.items()}
        with interrupts_held():
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            row.update(step=done, lr=self.optimizer.param_groups[0]["lr"], time=time.perf_counter() - started)
            self.history.append(row)
            self.completed = (done, _rng_state(self.generator))
        return row

    def run(self, first_step: int, train_images, penalty_images, teacher_cache, started: float) -> None:
        config, device = self.config, self.model.device
        schedule = BatchSchedule(train_images.shape[0], config.batch_size, config.seed)
        bar = progress_bar(
            range(first_step, config.steps), config.progress, "training", total=config.steps, initial=first_step
        )
        self.completed = (first_step, _rng_state(self.generator))
        try:
            for step in bar:
                indices = schedule.indices(step)
                images = train_images[indices].to(device).float().div_(255)
                teacher_images = teacher_cache[indices].to(device) if teacher_cache is not None else None
                penalty = None
                if penalty_images is not None:
                    pick = torch.randint(0, penalty_images.shape[0], (config.batch_size,), generator=self.generator)
                    penalty = penalty_images[pick].to(device).float().div_(255)
                done = step + 1
                row = self.step(images, penalty, teacher_images, done, started)
                if config.progress:
                    bar.set_postfix(
                        loss=f"{row['loss']:.4f}",
                        st=f"{row['loss_hard']:.3f}",
                        ae=f"{row['loss_ae']:.3f}",
                        stae=f"{row['loss_stae']:.3f}",
                    )
                if self.callback is not None:
                    self.callback(done, row)
                if self.checkpoint is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
                    self.save(done)
        except KeyboardInterrupt:
            if self.checkpoint is None:
                raise
            # Not the RNGs of now: the interrupted step may have drawn from them already.
            done, rng = self.completed
            self.save(done, rng)
            raise TrainingInterrupted(done, self.checkpoint) from None
        finally:
            if config.progress and hasattr(bar, "close"):
                bar.close()


def write_training_log(history: list[dict], out_dir: str | os.PathLike) -> tuple[Path, Path | None]:
    """Write ``train_log.jsonl`` and ``loss_curve.png`` (when matplotlib is installed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train_log.jsonl"
    atomic_write_text(log, "".join(json.dumps(row) + "\n" for row in history))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return log, None
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in history]
    for key, label in (
        ("loss", "total"),
        ("loss_hard", "student-teacher (hard)"),
        ("loss_penalty", "penalty"),
        ("loss_ae", "autoencoder"),
        ("loss_stae", "student-autoencoder"),
    ):
        if any(r[key] for r in history):
            ax.plot(steps, [r[key] for r in history], label=label, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("EfficientAD training losses")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return log, save_figure(fig, out / "loss_curve.png", dpi=110)
