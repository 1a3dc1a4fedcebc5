"""The paper's timing protocol, as a function and as ``efficientad-fast bench``.

EfficientAD's paper times a batch from the image on the host until the anomaly map is back
on the host, reporting the mean over 1000 runs after 1000 warm-up runs. :func:`run_benchmark`
does that for each (model size, batch size, dtype, CUDA graph on/off) and also times a
device-resident variant (images already on the GPU, map left there; the clock stops at a
stream synchronize). :func:`bench_op` times the fused scoring op alone against the plain
PyTorch reference and reports the memory bandwidth it achieves.

How many warm-up and timed runs each of these makes is :data:`PROTOCOLS` (``paper``, the
default, and ``budget``, what ``bench/gpu_check.sh`` runs in its few minutes): the one
definition that the ``bench`` command's defaults and help, ``gpu_check.sh`` and the results'
``settings`` read.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._checkpoint import atomic_write_text
from ._device import DTYPES, cpu_has_bf16_kernels, resolve_device
from .deploy.inference import FastPredictor
from .model import PRECISIONS, EfficientAD
from .precision import cpu_info
from .testing import random_model
from .timing_protocol import (
    DEFAULT_PROTOCOL,
    OP_LAYOUTS,
    OpTiming,
    _peak_memory_mib,
    bench_op,
    peak_bandwidth_gbs,
    protocol,
    sync,
)


def default_runs(device: torch.device, batch: int, protocol_name: str = DEFAULT_PROTOCOL) -> tuple[int, int]:
    """(warm-up runs, timed runs) of the protocol on this device at this batch size."""
    return protocol(protocol_name).runs(device, batch)


def loadavg() -> list[float] | None:
    """The system's 1, 5 and 15 minute load averages (None where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device | None = None) -> dict:
    """What the figures were measured on: CPU, GPU, versions, threads, load."""
    from ._version import __version__

    cpu_model, isa = cpu_info()
    info: dict[str, object] = {
        "cpu_model": cpu_model,
        "cpu_isa": isa,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
        "efficientad_fast": __version__,
        "loadavg": loadavg(),
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"sm_{props.major}{props.minor}"
        info["gpu_peak_gbs"] = peak_bandwidth_gbs(device)
    return info


@dataclass
class Timing:
    """One configuration of the protocol and its figures (times in milliseconds per batch)."""

    model_size: str
    batch: int
    dtype: str
    path: str  # "host" (image on the host -> map on the host) or "device" (GPU-resident)
    cuda_graph: bool
    compiled: bool
    warmup: int
    runs: int
    mean_ms: float = 0.0
    median_ms: float = 0.0
    p99_ms: float = 0.0
    min_ms: float = 0.0
    images_per_s: float = 0.0
    peak_memory_mib: float = 0.0
    peak_memory_kind: str = ""
    error: str | None = None
    times_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        graph = " graph" if self.cuda_graph else ""
        comp = " compile" if self.compiled else ""
        return f"{self.model_size} N={self.batch} {self.dtype} {self.path}{graph}{comp}"


def make_model(
    model_size: str,
    device: torch.device,
    precision: str,
    model_file: str | None = None,
    seed: int = 0,
    image_size: int = 256,
) -> EfficientAD:
    """The model to time, in ``precision`` ("fp32", "bf16", "fp16" or "int8"): a saved one,
    or a seeded random one with its quantiles set (the timing does not depend on the
    weights, only on the shapes). INT8 uses the file's calibration; a model without one is
    calibrated on 4 seeded random images of ``image_size`` (enough to time it, not to score)."""
    if model_file:
        from .model_file import load

        model = load(model_file, map_location=device)
    else:
        model = random_model(model_size, seed=seed, teacher_stats=False, quantiles=(0.1, 1.0, 0.1, 1.0))
    model = model.to(device).eval()
    if precision == "int8" and model.int8_calibration is None:
        images = torch.rand(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
        model.record_int8_ranges(images)
    return model.set_precision(precision)


def time_predict(
    model: EfficientAD,
    batch: int,
    *,
    image_size: int = 256,
    path: str = "host",
    cuda_graph: bool = False,
    compile: bool = False,
    warmup: int | None = None,
    runs: int | None = None,
    dtype_name: str | None = None,
    protocol_name: str = DEFAULT_PROTOCOL,
) -> Timing:
    """Time ``model`` on batches of ``batch`` random images by a timing protocol
    (:data:`PROTOCOLS`; ``warmup``/``runs`` override its counts).

    ``path="host"``: each timed run copies a float32 batch from pinned host memory to the
    model's device, scores it and copies map and scores back into pinned host buffers
    (allocated once, before the warm-up, so no run pays for an allocation or a pageable
    copy). ``path="device"``: the batch is already on the device and the run ends with a
    synchronize. ``cuda_graph`` replays one CUDA graph per run (:class:`FastPredictor`);
    ``compile`` uses torch.compile.
    """
    device = model.device
    if path not in ("host", "device"):
        raise ValueError(f"path must be 'host' or 'device', got {path!r}")
    d_warm, d_runs = default_runs(device, batch, protocol_name)
    warmup = d_warm if warmup is None else warmup
    runs = d_runs if runs is None else runs
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    dtype_name = dtype_name or model.precision
    timing = Timing(model.model_size, batch, dtype_name, path, cuda_graph, compile, warmup, runs)
    g = torch.Generator().manual_seed(batch)
    host_images = torch.rand(batch, 3, image_size, image_size, generator=g)
    if device.type == "cuda":
        host_images = host_images.pin_memory()
        torch.cuda.reset_peak_memory_stats(device)
    predictor = FastPredictor(
        model, batch, image_size, cuda_graph=cuda_graph, compile=compile, warmup=min(3, max(1, warmup))
    )
    images = host_images if path == "host" else host_images.to(device)
    host_map: torch.Tensor | None = None
    host_score: torch.Tensor | None = None
    if path == "host" and device.type == "cuda":  # on a CPU the map is already on the host
        host_map = torch.empty((batch, 1, image_size, image_size), dtype=torch.float32, device="cpu", pin_memory=True)
        host_score = torch.empty((batch,), dtype=torch.float32, device="cpu", pin_memory=True)

    def run() -> None:
        pred = predictor(images, copy=False)
        if host_map is not None and host_score is not None:  # set together
            host_map.copy_(pred.anomaly_map, non_blocking=True)
            host_score.copy_(pred.score, non_blocking=True)
        sync(device)

    return _timed(timing, run, device)


def _timed(timing: Timing, run, device: torch.device) -> Timing:
    """``timing`` filled in by calling ``run`` (one batch, host to host, synchronized)
    ``timing.warmup`` times untimed, then ``timing.runs`` times on the clock."""
    for _ in range(timing.warmup):
        run()
    sync(device)
    times = []
    for _ in range(timing.runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    timing.times_ms = times
    timing.mean_ms = statistics.fmean(times)
    timing.median_ms = statistics.median(times)
    timing.min_ms = min(times)
    timing.p99_ms = sorted(times)[min(len(times) - 1, int(0.99 * len(times)))]
    timing.images_per_s = 1e3 * timing.batch / timing.mean_ms
    timing.peak_memory_mib = _peak_memory_mib(device)
    timing.peak_memory_kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS"
    return timing


def time_scorer(
    score,
    name: str,
    device: torch.device,
    batch: int,
    *,
    image_size: int = 256,
    warmup: int | None = None,
    runs: int | None = None,
    protocol_name: str = DEFAULT_PROTOCOL,
) -> Timing:
    """Time any scorer as :func:`time_predict` times EfficientAD (``path="host"``): the same
    protocol, the same seeded random batch, the same clock. ``score(images)`` takes float
    (N, 3, H, W) in [0, 1] on ``device`` and returns ``(anomaly_map, score)`` tensors there;
    each run copies the batch from the host, scores it and copies both back (report
    --compare times PatchCore, PaDiM and FastFlow with it)."""
    d_warm, d_runs = default_runs(device, batch, protocol_name)
    warmup = d_warm if warmup is None else warmup
    runs = d_runs if runs is None else runs
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    timing = Timing(name, batch, "fp32", "host", False, False, warmup, runs)
    host_images = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
    if device.type == "cuda":
        host_images = host_images.pin_memory()
        torch.cuda.reset_peak_memory_stats(device)

    @torch.no_grad()
    def run() -> None:
        anomaly_map, scores = score(host_images.to(device, non_blocking=True))
        anomaly_map.cpu(), scores.cpu()  # the map and the scores back on the host, as for EfficientAD
        sync(device)

    return _timed(timing, run, device)


# -- the fused op alone -------------------------------------------------------------------


# -- the whole benchmark --------------------------------------------------------------------


def run_benchmark(
    *,
    model_sizes=("small",),
    batch_sizes=(1, 16),
    dtypes=None,
    device: str | torch.device = "auto",
    image_size: int = 256,
    paths=None,
    cuda_graphs=None,
    compile: bool = False,
    warmup: int | None = None,
    runs: int | None = None,
    model_file: str | None = None,
    op: bool = False,
    op_batches=(1, 16, 64),
    op_layouts=tuple(OP_LAYOUTS),
    protocol_name: str = DEFAULT_PROTOCOL,
    json_path: str | os.PathLike | None = None,
    log=print,
) -> dict:
    """Run a timing protocol (:data:`PROTOCOLS`, default the paper's) over every combination
    and return (and optionally write) the results with machine, versions and settings.
    Defaults depend on the device: on a GPU fp32 and fp16, host and device-resident paths,
    CUDA graphs off and on; on a CPU fp32, bf16 and int8, one path, no graphs; the run counts are
    the protocol's for the device and batch size unless ``warmup``/``runs`` are given.
    A configuration that fails (say, out of memory) is reported with its error and the rest go on.
    With ``json_path`` the file is rewritten (whole, by rename) after every measured row, so a
    run cut short (a time limit) keeps what it measured.
    """
    dev = resolve_device(device)
    settings = benchmark_settings(
        dev,
        model_sizes=model_sizes,
        batch_sizes=batch_sizes,
        dtypes=dtypes,
        image_size=image_size,
        paths=paths,
        cuda_graphs=cuda_graphs,
        compile=compile,
        warmup=warmup,
        runs=runs,
        model_file=model_file,
        protocol_name=protocol_name,
    )
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    from .op._library import load_extension

    load_extension()  # JIT-builds on first use: keep that out of every timing
    result: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(dev),
        "settings": settings,
        "timings": [],
        "op": [],
    }

    def save_timings(timings: list[Timing]) -> None:
        result["timings"] = [asdict(t) | {"name": t.name} for t in timings]
        _write_json(result, json_path)

    def save_ops(ops: list[OpTiming]) -> None:
        result["op"] = [asdict(r) for r in ops]
        _write_json(result, json_path)

    _time_grid(dev, settings, warmup, runs, log, on_row=save_timings)
    if op:
        op_dtypes = [d for d in settings["dtypes"] if d in DTYPES]  # the op's inputs: float features
        bench_op(
            dev,
            op_batches,
            op_dtypes,
            image_size=image_size,
            layouts=op_layouts,
            protocol_name=protocol_name,
            progress=log,
            on_row=save_ops,
        )
    result["machine"]["loadavg_end"] = loadavg()
    _write_json(result, json_path)
    return result


def _write_json(result: dict, json_path: str | os.PathLike | None) -> None:
    """Write ``result`` to ``json_path`` (if given) whole: a reader, or a kill mid-write,
    never sees half a file."""
    if not json_path:
        return
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2))


def benchmark_settings(
    dev: torch.device,
    *,
    model_sizes,
    batch_sizes,
    dtypes,
    image_size: int,
    paths,
    cuda_graphs,
    compile: bool,
    warmup: int | None,
    runs: int | None,
    model_file: str | None,
    protocol_name: str = DEFAULT_PROTOCOL,
) -> dict:
    """:func:`run_benchmark`'s arguments checked, with the device's defaults filled in, as
    the ``settings`` its result records (and the grid it times)."""
    cuda = dev.type == "cuda"
    timing_protocol = protocol(protocol_name)
    # bf16 by default only where the CPU has its kernels (elsewhere it runs many times slower)
    cpu_default = ["fp32", *(["bf16"] if cpu_has_bf16_kernels() else []), "int8"]
    dtypes = list(dtypes or (["fp32", "fp16"] if cuda else cpu_default))
    if "all" in dtypes:  # every precision this device runs
        dtypes = ["fp32", "fp16", "bf16"] if cuda else ["fp32", "bf16", "int8"]
    for name in dtypes:
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} or 'all', got {name!r}")
    if cuda and "int8" in dtypes:
        raise ValueError("int8 runs on the CPU only: use --device cpu, or fp16 on a GPU")
    paths = list(paths or (("host", "device") if cuda else ("host",)))
    cuda_graphs = list(cuda_graphs if cuda_graphs is not None else ((False, True) if cuda else (False,)))
    if any(cuda_graphs) and not cuda:
        raise ValueError("CUDA graphs need a CUDA device; drop --cuda-graphs or use --device cuda")
    sizes = [model_sizes] if isinstance(model_sizes, str) else list(model_sizes)
    if model_file:
        sizes = ["from file"]
    return {
        "model_sizes": sizes,
        "batch_sizes": list(batch_sizes),
        "dtypes": dtypes,
        "device": str(dev),
        "image_size": image_size,
        "paths": paths,
        "cuda_graphs": cuda_graphs,
        "compile": compile,
        "protocol_name": timing_protocol.name,
        "timing_protocol": timing_protocol.describe(),
        "warmup": warmup if warmup is not None else "protocol's",
        "runs": runs if runs is not None else "protocol's",
        "model_file": model_file,
        "images": "torch.rand float32 in [0, 1]",
        "protocol": "mean over the timed runs after the warm-up; host path: pinned host image -> "
        "device -> map and scores back into pinned host buffers; device path: image on "
        "the device, ends with a stream synchronize",
        "cudnn_benchmark": cuda,
    }


def _time_grid(
    dev: torch.device, settings: dict, warmup: int | None, runs: int | None, log, on_row=None
) -> list[Timing]:
    """:func:`time_predict` over the settings' model size x dtype x batch x path x CUDA
    graph grid (one model per size and dtype), logging a line per configuration and
    calling ``on_row(timings so far)`` after each."""
    s = settings
    total = len(s["model_sizes"]) * len(s["dtypes"]) * len(s["batch_sizes"]) * len(s["paths"]) * len(s["cuda_graphs"])
    timings = []
    for size in s["model_sizes"]:
        for dtype_name in s["dtypes"]:
            model = make_model(
                "small" if size == "from file" else size, dev, dtype_name, s["model_file"], image_size=s["image_size"]
            )
            for batch in s["batch_sizes"]:
                for path in s["paths"]:
                    for graph in s["cuda_graphs"]:
                        t, msg = _time_one(
                            model,
                            batch,
                            dtype_name,
                            path,
                            graph,
                            s["image_size"],
                            s["compile"],
                            warmup,
                            runs,
                            s["protocol_name"],
                        )
                        timings.append(t)
                        if on_row:
                            on_row(timings)
                        log(f"[{len(timings)}/{total}] {t.name:<40} {msg}")
            del model
    return timings


def _time_one(
    model: EfficientAD,
    batch: int,
    dtype_name: str,
    path: str,
    graph: bool,
    image_size: int,
    compile: bool,
    warmup: int | None,
    runs: int | None,
    protocol_name: str = DEFAULT_PROTOCOL,
) -> tuple[Timing, str]:
    """One configuration's :class:`Timing` and its log message; a failure (e.g. out of
    memory at a big batch) gives a Timing with the error, so the grid goes on."""
    try:
        t = time_predict(
            model,
            batch,
            image_size=image_size,
            path=path,
            cuda_graph=graph,
            compile=compile,
            warmup=warmup,
            runs=runs,
            dtype_name=dtype_name,
            protocol_name=protocol_name,
        )
    except Exception as exc:
        t = Timing(
            model.model_size, batch, dtype_name, path, graph, compile, 0, 0, error=f"{type(exc).__name__}: {exc}"
        )
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        return t, f"FAILED: {t.error}"
    return t, f"{t.mean_ms:9.3f} ms mean, {t.images_per_s:9.1f} images/s, peak {t.peak_memory_mib:.0f} MiB"


def format_table(result: dict) -> str:
    """Markdown tables of a :func:`run_benchmark` result."""
    m = result["machine"]
    where = m.get("gpu") or m.get("cpu_model") or "unknown CPU"
    lines = [
        f"Timing protocol on {where} (torch {m['torch']}, {m['torch_num_threads']} CPU threads)",
        "",
        "| model | batch | dtype | path | CUDA graph | compile | mean ms | median ms | p99 ms | images/s | peak MiB | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result["timings"]:
        if t["error"]:
            lines.append(
                f"| {t['model_size']} | {t['batch']} | {t['dtype']} | {t['path']} | "
                f"{'yes' if t['cuda_graph'] else 'no'} | {'yes' if t['compiled'] else 'no'} | "
                f"failed: {t['error'][:60]} | | | | | |"
            )
            continue
        lines.append(
            f"| {t['model_size']} | {t['batch']} | {t['dtype']} | {t['path']} | {'yes' if t['cuda_graph'] else 'no'} | "
            f"{'yes' if t['compiled'] else 'no'} | {t['mean_ms']:.3f} | {t['median_ms']:.3f} | {t['p99_ms']:.3f} | "
            f"{t['images_per_s']:.1f} | {t['peak_memory_mib']:.0f} | {t['runs']} |"
        )
    if result["op"]:
        lines += [
            "",
            "Fused op vs reference (C=384 features of a 256 px image, pad 4, quantiles, l2; MB moved = "
            "features read + map and scores written; of peak only where that exceeds the L2 cache)",
            "",
            "| impl | device | N | dtype | layout | mean ms | MB moved | GB/s | of peak |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["op"]:
            l2 = r.get("l2_bytes")
            frac = (
                "in L2"
                if l2 and r["bytes_moved"] <= l2
                else ""
                if r["fraction_of_peak"] is None
                else f"{100 * r['fraction_of_peak']:.0f} %"
            )
            lines.append(
                f"| {r['impl']} | {r['device']} | {r['batch']} | {r['dtype']} | {r.get('layout', 'nchw')} | "
                f"{r['mean_ms']:.3f} | {r['bytes_moved'] / 1e6:.1f} | {r['gbs']:.1f} | {frac} |"
            )
    return "\n".join(lines)
