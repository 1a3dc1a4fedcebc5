"""The timing protocol (paper, budget: warm-up and timed runs by device and batch) and timing
the fused op alone (bench --op): its achieved bandwidth against the device's peak,
per layout and batch, with the synchronisation and memory readings the whole benchmark
(:mod:`efficientad_fast.benchmark`) shares."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from ._device import DTYPES
from .testing import op_inputs

THROUGHPUT_BATCH = 16  # a batch this big or bigger is timed as throughput, smaller as latency


@dataclass(frozen=True)
class Protocol:
    """(warm-up runs, timed runs) of one timing protocol, by device and batch size.

    ``gpu_latency`` for batches below :data:`THROUGHPUT_BATCH`, ``gpu_throughput`` from it on;
    a CPU warms up ``cpu[0]`` times and times ``max(3, cpu[1] // batch)`` runs (about
    ``cpu[1]`` images: a 2-core CPU needs about a second an image). The fused op alone: a loop
    of ``op_gpu`` / ``op_cpu`` calls (CPU timed runs ``max(2, op_cpu[1] // batch)``).
    """

    name: str
    gpu_latency: tuple[int, int]
    gpu_throughput: tuple[int, int]
    cpu: tuple[int, int]
    op_gpu: tuple[int, int]
    op_cpu: tuple[int, int]

    def runs(self, device: torch.device, batch: int) -> tuple[int, int]:
        """(warm-up runs, timed runs) of ``predict`` at this batch size on this device."""
        if device.type == "cuda":
            return self.gpu_latency if batch < THROUGHPUT_BATCH else self.gpu_throughput
        return self.cpu[0], max(3, self.cpu[1] // batch)

    def op_runs(self, device: torch.device, batch: int) -> tuple[int, int]:
        """(warm-up calls, timed calls) of the fused op alone."""
        if device.type == "cuda":
            return self.op_gpu
        return self.op_cpu[0], max(2, self.op_cpu[1] // batch)

    def describe(self) -> str:
        """One line for help texts and the results' settings."""
        lat, thr = self.gpu_latency, self.gpu_throughput
        gpu = (
            f"{lat[0]} + {lat[1]}"
            if lat == thr
            else f"batch < {THROUGHPUT_BATCH}: {lat[0]} + {lat[1]}, batch >= {THROUGHPUT_BATCH}: {thr[0]} + {thr[1]}"
        )
        return (
            f"{self.name}: warm-up + timed runs on a GPU {gpu}; on a CPU {self.cpu[0]} + max(3, {self.cpu[1]} // batch); "
            f"the op alone {self.op_gpu[0]} + {self.op_gpu[1]} calls on a GPU, "
            f"{self.op_cpu[0]} + max(2, {self.op_cpu[1]} // batch) on a CPU"
        )


PROTOCOLS = {
    p.name: p
    for p in (
        # The paper's: 1000 warm-up + 1000 timed runs on a GPU at every batch size.
        Protocol(
            "paper",
            gpu_latency=(1000, 1000),
            gpu_throughput=(1000, 1000),
            cpu=(1, 20),
            op_gpu=(20, 200),
            op_cpu=(1, 16),
        ),
        # gpu_check.sh's few minutes: batch-1 latency keeps 1000 timed runs (its spread matters),
        # throughput batches are long enough that 50 runs after 10 give a stable mean.
        Protocol(
            "budget", gpu_latency=(300, 1000), gpu_throughput=(10, 50), cpu=(1, 20), op_gpu=(20, 200), op_cpu=(1, 16)
        ),
    )
}


DEFAULT_PROTOCOL = "paper"


def protocol(name: str) -> Protocol:
    """The :data:`PROTOCOLS` entry called ``name`` (ValueError naming the choices otherwise)."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


H200_L2_BYTES = 50 * 2**20  # where torch does not report the L2 size


def peak_bandwidth_gbs(device: torch.device) -> float | None:
    """Theoretical DRAM bandwidth, 2 x memory clock x bus width (as CUDA's bandwidth samples
    compute it), or None where this torch does not report the clock."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): the end of a timed GPU run."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Linux reports ru_maxrss in KiB: the process's peak resident memory so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class OpTiming:
    impl: str  # "fused" or "reference"
    device: str
    batch: int
    dtype: str
    layout: str  # memory format of the features: "channels_last" (what the networks emit) or "nchw"
    runs: int
    mean_ms: float
    bytes_moved: int  # features read + map and scores written, once each (the working set)
    gbs: float  # bytes_moved / mean time
    l2_bytes: int | None  # the GPU's L2 cache; None on a CPU
    fraction_of_peak: float | None  # gbs / peak; None on a CPU, or where bytes_moved fits in L2


# The op's features in the layouts it is timed in: channels_last first, the model's.
OP_LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def l2_cache_bytes(device: torch.device) -> int | None:
    """The GPU's L2 cache size (None on a CPU): a working set that fits in it is read from
    cache, so no DRAM bandwidth is claimed for it."""
    if device.type != "cuda":
        return None
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None) or H200_L2_BYTES


def bench_op(
    device: torch.device,
    batches=(1, 16, 64),
    dtypes=("fp32", "fp16"),
    runs: int | None = None,
    warmup: int | None = None,
    image_size: int = 256,
    reference: bool = True,
    layouts=tuple(OP_LAYOUTS),
    protocol_name: str = DEFAULT_PROTOCOL,
    progress=None,
    on_row=None,
) -> list[OpTiming]:
    """Mean time of the fused op (and of the reference) per call, and the bandwidth it
    achieves: a loop of calls (counts from the protocol, or ``warmup``/``runs``) with one
    synchronize at the end, divided by the calls. Each (batch, dtype) in each feature layout
    of ``layouts`` (``channels_last``: what the networks emit and the model feeds the op;
    ``nchw``). Bandwidth as a fraction of the GPU's peak only where the bytes moved exceed
    its L2 cache (EfficientAD-S at 256 px: 9.6 MB of fp16 features an image, so from N=8 on
    an H200's 50 MB). ``on_row(rows)`` is called with the rows so far after each one."""
    from .op.ops import anomaly_map
    from .op.reference import reference_anomaly_map

    for layout in layouts:
        if layout not in OP_LAYOUTS:
            raise ValueError(f"layout must be one of {tuple(OP_LAYOUTS)}, got {layout!r}")
    peak = peak_bandwidth_gbs(device) if device.type == "cuda" else None
    l2 = l2_cache_bytes(device)
    rows = []
    for batch in batches:
        n_warm, n_runs = protocol(protocol_name).op_runs(device, batch)
        n_warm = n_warm if warmup is None else warmup
        n_runs = n_runs if runs is None else runs
        for dtype_name in dtypes:
            for layout in layouts:
                args, kwargs = op_inputs(
                    batch, DTYPES[dtype_name], device, image_size, memory_format=OP_LAYOUTS[layout]
                )
                moved = sum(t.numel() * t.element_size() for t in args) + batch * (image_size * image_size + 1) * 4
                impls = {"fused": anomaly_map}
                if reference:
                    impls["reference"] = reference_anomaly_map
                for impl, fn in impls.items():
                    with torch.inference_mode():
                        for _ in range(n_warm):
                            fn(*args, **kwargs)
                        sync(device)
                        start = time.perf_counter()
                        for _ in range(n_runs):
                            fn(*args, **kwargs)
                        sync(device)
                    mean_s = (time.perf_counter() - start) / n_runs
                    gbs = moved / mean_s / 1e9
                    claimed = peak is not None and l2 is not None and moved > l2
                    row = OpTiming(
                        impl,
                        device.type,
                        batch,
                        dtype_name,
                        layout,
                        n_runs,
                        mean_s * 1e3,
                        moved,
                        gbs,
                        l2,
                        gbs / peak if claimed else None,
                    )
                    rows.append(row)
                    if on_row:
                        on_row(rows)
                    if progress:
                        cached = " (fits in L2: no bandwidth claimed)" if l2 is not None and moved <= l2 else ""
                        progress(
                            f"op {impl:<9} N={batch:<3} {dtype_name} {layout:<13}: {row.mean_ms:.3f} ms, "
                            f"{moved / 1e6:.1f} MB moved, {gbs:.1f} GB/s{cached}"
                        )
                del args, kwargs
    return rows
