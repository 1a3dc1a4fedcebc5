"""Data-parallel distillation under ``torchrun``: which process this is, its device, the
process group (gloo on the CPU, NCCL on GPUs), its share of each batch and the few messages
the ranks exchange. One process without torchrun; every helper is then a no-op.

How the ranks divide the work (what "each rank draws its own share of the batch from its own
seeded stream" means here): every rank holds its own :class:`~.images.CropSampler`, seeded
with the same seed, and draws the random choices of the *whole* global batch from it (cheap:
a few numbers per crop), so all streams stay in step; it then renders and trains on only its
slice of the batch (:meth:`Ranks.share`). The slices of step k together are exactly the crops
a single process draws at step k, DistributedDataParallel averages the ranks' gradients, so
the run follows the single-process loss curve up to the order of float additions, and the
sampler's state is the same on every rank: a checkpoint does not depend on the number of
ranks that wrote it, and a run resumes with any number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import nn

from .._device import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (world 1, rank 0: a single process)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that reads and writes files and logs."""
        return self.rank == 0

    def share(self, batch_size: int) -> slice:
        """This rank's slice of a global batch of ``batch_size`` crops."""
        if batch_size % self.world:
            raise ValueError(
                f"the batch size ({batch_size}) must be divisible by the number of torchrun "
                f"processes ({self.world}): each trains on batch_size / processes crops"
            )
        n = batch_size // self.world
        return slice(self.rank * n, (self.rank + 1) * n)


def torchrun_ranks() -> Ranks:
    """The world size, rank and local rank torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK);
    a single process without them."""
    try:
        ranks = Ranks(
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise ValueError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them): {exc}") from exc
    if ranks.world < 1 or not 0 <= ranks.rank < ranks.world:
        raise ValueError(f"RANK {ranks.rank} out of range for WORLD_SIZE {ranks.world}")
    return ranks


def device_for(setting: str, ranks: Ranks) -> torch.device:
    """The ``--device`` setting resolved; under torchrun a CUDA device is cuda:LOCAL_RANK (one
    GPU per process), made the current one."""
    device = resolve_device(setting)
    if not ranks.parallel or device.type != "cuda":
        return device
    if device.index is not None and device.index != ranks.local_rank:
        raise ValueError(
            f"under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda or auto, not {setting!r}"
        )
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {ranks.local_rank} but {torch.cuda.device_count()} GPUs are visible: "
            "--nproc-per-node must not exceed the GPUs of a machine"
        )
    device = torch.device("cuda", ranks.local_rank)
    torch.cuda.set_device(device)
    return device


def start(ranks: Ranks, device: torch.device) -> bool:
    """Join the process group (torchrun's env:// rendezvous): NCCL for CUDA, gloo for the CPU.
    Returns whether this call created it (then :func:`stop` destroys it)."""
    if not ranks.parallel:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        raise ImportError(f"torch {torch.__version__} was built without torch.distributed; run one process")
    if dist.is_initialized():  # the caller made the group: use it, leave it
        if dist.get_world_size() != ranks.world:
            raise ValueError(f"the process group has {dist.get_world_size()} ranks, WORLD_SIZE says {ranks.world}")
        return False
    if device.type == "cuda":  # bound to this rank's GPU (collectives and barriers use it)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return True


def stop(ranks: Ranks, created: bool) -> None:
    """Wait for every rank (rank 0 has written its files by then), then leave the group if
    :func:`start` created it."""
    if not ranks.parallel:
        return
    import torch.distributed as dist

    dist.barrier()
    if created:
        dist.destroy_process_group()


def wrap(pdn: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """``pdn`` in DistributedDataParallel (gradients averaged over the ranks in backward), or
    ``pdn`` itself in a single process. (Its only buffers, the fixed ImageNet normalization,
    are re-sent by DDP each step: 6 numbers; the option to skip that differs across torch
    versions.)"""
    if not ranks.parallel:
        return pdn
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(pdn, device_ids=[device.index] if device.type == "cuda" else None)


def mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> float:
    """The mean of a scalar over the ranks (every rank must call it)."""
    if not ranks.parallel:
        return float(value)
    import torch.distributed as dist

    total = value.detach().float().clone().reshape(1)
    dist.all_reduce(total)
    return float(total) / ranks.world


def from_main(ranks: Ranks, make: Callable[[], T]) -> T:
    """``make()`` run on rank 0 and its (picklable) result sent to every rank. An error it
    raises is raised on every rank, so none waits for a message that never comes."""
    if not ranks.parallel:
        return make()
    import torch.distributed as dist

    box: list = [None]
    error: Exception | None = None
    if ranks.main:
        try:
            box[0] = (make(), None)
        except Exception as exc:
            error, box[0] = exc, (None, exc)
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error  # rank 0: the original, with its traceback
    result, remote_error = box[0]
    if remote_error is not None:
        raise remote_error
    return result
