"""What the timing scripts and pytest-benchmark suites in bench/ share: interleaved rounds,
result rows and their table, the machine record, JSON output, and anomalib's side of the
comparisons (its import and a model holding our weights).

The ``bench`` command's own protocol (warm-up + mean, host-to-host clock) is
:mod:`efficientad_fast.benchmark`; the shared random inputs are :mod:`efficientad_fast.testing`.
Scripts here run from any folder: each puts bench/ on ``sys.path`` (pytest does it for the suites).
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from efficientad_fast.benchmark import machine_info

MAP_TOLERANCE = 0.02  # a half-precision row is "met" only with max |map - fp32 map| / fp32 map range <= this


# -- interleaved rounds ---------------------------------------------------------------------


@dataclass
class Series:
    """The times of one variant, in milliseconds, and their statistics."""

    name: str
    times_ms: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.times_ms) if len(self.times_ms) > 1 else 0.0

    @property
    def minimum(self) -> float:
        return min(self.times_ms)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved(variants: dict[str, callable], rounds: int, warmup: int) -> dict[str, Series]:
    """Time each variant once per round, in a rotating round-robin (ABAB for two)."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    series = {name: Series(name) for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            series[name].times_ms.append(_timed(variants[name]))
    return series


def device_case(device: str, *values, id: str):
    """A pytest.param of a suite's device grid: ``(device, *values)``, marked ``cuda`` on
    CUDA (bench/conftest.py skips those without a GPU)."""
    import pytest

    return pytest.param(device, *values, id=id, marks=[pytest.mark.cuda] if device == "cuda" else [])


# -- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    """A variant's series, against a baseline series (ratio = baseline / this) and a target ratio."""

    group: str
    name: str
    series: Series
    baseline: Series | None = None
    target: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None else self.baseline.median / self.series.median

    @property
    def ratio_mean(self) -> float | None:
        return None if self.baseline is None else self.baseline.mean / self.series.mean

    @property
    def ratio_min(self) -> float | None:
        return None if self.baseline is None else self.baseline.minimum / self.series.minimum

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        ok = self.ratio >= self.target
        if "map_rel_diff" in self.extra:
            ok = ok and self.extra["map_rel_diff"] <= MAP_TOLERANCE
        return ok

    def as_dict(self) -> dict:
        return {
            "group": self.group,
            "name": self.name,
            "mean_ms": self.series.mean,
            "median_ms": self.series.median,
            "min_ms": self.series.minimum,
            "stdev_ms": self.series.stdev,
            "rounds": len(self.series.times_ms),
            "baseline": None if self.baseline is None else self.baseline.name,
            "ratio_median": self.ratio,
            "ratio_mean": self.ratio_mean,
            "ratio_min": self.ratio_min,
            "target": self.target,
            "met": self.met,
            **self.extra,
            "times_ms": [round(t, 4) for t in self.series.times_ms],
        }


def print_table(rows: list[Row], title: str) -> None:
    header = (
        f"{'name':<36} {'mean ms':>9} {'median ms':>9} {'min ms':>9} {'ratio':>7} {'(mean)':>7} "
        f"{'(min)':>7} {'target':>7} {'met?':>5}"
    )
    print(f"\n{title}\n{header}\n{'-' * len(header)}")
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        ratio_mean = "" if row.ratio_mean is None else f"{row.ratio_mean:.2f}x"
        ratio_min = "" if row.ratio_min is None else f"{row.ratio_min:.2f}x"
        target = "" if row.target is None else f">={row.target:g}x"
        met = {None: "", True: "yes", False: "NO"}[row.met]
        s = row.series
        print(
            f"{row.name:<36} {s.mean:>9.2f} {s.median:>9.2f} {s.minimum:>9.2f} {ratio:>7} "
            f"{ratio_mean:>7} {ratio_min:>7} {target:>7} {met:>5}"
        )
        for key, value in row.extra.items():
            if key == "map_rel_diff":
                print(f"{'':<6}max|map - fp32 map| / fp32 map range = {value:.3e} (limit {MAP_TOLERANCE:g})")
            elif key == "map_rel_diff_vs_anomalib":
                print(f"{'':<6}max|map - anomalib map| / anomalib map range = {value:.3e}")


def cpu_machine_info() -> dict:
    """:func:`efficientad_fast.benchmark.machine_info` plus what matters for CPU timings here
    (its ``loadavg`` is called ``loadavg_start``)."""
    info = machine_info()
    info["loadavg_start"] = info.pop("loadavg")
    info["torch_num_interop_threads"] = torch.get_num_interop_threads()
    info["mkldnn_enabled"] = torch.backends.mkldnn.is_available()
    info["cuda_available"] = torch.cuda.is_available()
    return info


def write_results(path: str | Path, result: dict) -> None:
    """Write a script's result as indented JSON, making the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


# -- anomalib -----------------------------------------------------------------------------------


class Anomalib(NamedTuple):
    version: str
    EfficientAdModel: type
    EfficientAdModelSize: type


def import_anomalib() -> tuple[Anomalib | None, str | None]:
    """``(Anomalib(version, EfficientAdModel, EfficientAdModelSize), None)``, or ``(None,
    why)`` when anomalib is not installed (its import warnings are silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import anomalib
            from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize
    except ImportError as exc:
        return None, str(exc)
    return Anomalib(anomalib.__version__, EfficientAdModel, EfficientAdModelSize), None


def anomalib_twin(ours, anomalib: Anomalib):
    """anomalib's ``EfficientAdModel`` (eval) holding ``ours``' weights, teacher statistics
    and quantiles, so its map equals ours: the reverse of ``efficientad_fast.from_anomalib``."""
    size = anomalib.EfficientAdModelSize.S if ours.model_size == "small" else anomalib.EfficientAdModelSize.M
    theirs = anomalib.EfficientAdModel(model_size=size).eval()
    state = {
        ("ae." + k[len("autoencoder.") :] if k.startswith("autoencoder.") else k): v
        for k, v in ours.state_dict().items()
        if k.startswith(("teacher.", "student.", "autoencoder."))
    }
    theirs.load_state_dict(state, strict=False)
    with torch.no_grad():  # anomalib keeps its statistics as parameters
        theirs.mean_std["mean"].copy_(ours.teacher_mean.view(1, -1, 1, 1))
        theirs.mean_std["std"].copy_(ours.teacher_std.view(1, -1, 1, 1))
        for name, value in zip(("qa_st", "qb_st", "qa_ae", "qb_ae"), ours.quantiles):
            theirs.quantiles[name].copy_(value)
    return theirs
