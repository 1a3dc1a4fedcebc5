"""Which precision is fastest on this machine, measured, not assumed: on one CPU bf16 is 4x
faster than fp32 (AMX), on another 0.6x (AVX-512 BF16 without AMX), and INT8 wins or loses
by the CPU too. :func:`choose_precision` times the variants a model can run and keeps the
fastest whose map stays within :data:`MAP_TOLERANCE` of the fp32 map, unless a more exact one
is within :data:`MIN_SPEEDUP` of its time; the choice is cached
per (CPU, torch version, model size, batch size, image size) in the cache folder.
:func:`choose_amp` does the same for training's autocast with a short probe of steps.

Works on any model with ``predict``, ``set_precision``, ``precision``, ``model_size`` and
``int8_calibration`` (duck-typed: this module sits below the model)."""

from __future__ import annotations

import copy
import datetime
import functools
import json
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ._checkpoint import atomic_files
from ._device import cpu_has_bf16_kernels, cpu_model_and_flags
from ._numbers import image_hw
from .op._build import cache_folder, cache_root

if TYPE_CHECKING:  # for annotations only: this module sits below the model
    from .model import EfficientAD

# The largest map difference to fp32 a chosen precision may have, as a fraction of the fp32
# map's range (an INT8 map moves by about 0.02-0.09 of it; bf16 by about 0.02).
MAP_TOLERANCE = 0.1
# A less exact variant replaces a more exact one only when it is this many times faster: a
# tie on a busy machine (INT8 778 ms against fp32 788 ms, a loaded Zen 2) costs accuracy for nothing.
MIN_SPEEDUP = 1.1
CACHE_FILE = "precision.json"
# Cache entries of another layout are measured again.
CACHE_VERSION = 1


def cpu_info() -> tuple[str | None, list[str]]:
    """The CPU's model name and the instruction-set extensions that matter for the timings
    (from /proc/cpuinfo; elsewhere ``platform.processor()`` and no extensions)."""
    cpu_model, flags = cpu_model_and_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8")
    return cpu_model, [f for f in wanted if f in (flags or ())]


def machine_key(device: torch.device) -> str:
    """What a measured choice depends on besides the model: the CPU (its name and the
    extensions that decide bf16 and int8 speed, since virtual machines often share one
    generic name), or the GPU; torch's version; the number of threads."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        name, flags = cpu_info()
        hardware = f"{name} [{' '.join(flags)}]"
    return f"{hardware} | torch {torch.__version__} | {torch.get_num_threads()} threads"


NO_BF16 = "this CPU has no bf16 kernels (AVX-512 BW/VL/DQ or AVX-NE-CONVERT), where bf16 is many times slower"


def candidates(model: EfficientAD) -> list[str]:
    """The precisions worth timing for ``model`` where it is: fp32; fp16 and bf16 on a GPU;
    bf16 on a CPU with bf16 kernels (without them it runs, but 50x slower in training: not
    worth a measurement); int8 on a CPU when the model holds an INT8 calibration."""
    if model.device.type == "cuda":
        return ["fp32", "fp16", "bf16"]
    bf16 = ["bf16"] if cpu_has_bf16_kernels() else []
    return ["fp32", *bf16] + (["int8"] if model.int8_calibration is not None else [])


CACHE_MAX_BYTES = 2**20


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries that have the expected shape; anything else (absent, unreadable,
    another version, edited by hand) is measured again and rewritten whole."""
    if not path.is_file():  # absent, or a FIFO or device, whose read could wait forever
        return {}
    try:
        if path.stat().st_size > CACHE_MAX_BYTES:  # ours is a few KiB: not read whole into memory
            return {}
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: deeply nested JSON
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    entries = {k: v for k, v in data["entries"].items() if isinstance(v, dict)}
    return {**data, "entries": entries}


def _format_times(times: object, names: list[str] | None = None) -> str:
    """ "fp32 268 ms, bf16 63 ms" from a cache entry's times (numbers only: the file may have
    been edited by hand), in ``names`` order when given."""
    if not isinstance(times, dict):
        return "times not recorded"
    keys = [n for n in names if n in times] if names is not None else list(times)
    return ", ".join(f"{n} {times[n]:.0f} ms" for n in keys if _plausible_ms(times[n]))


def _plausible_ms(value: object) -> bool:
    """A time a measurement could have written: a finite number of milliseconds below a day
    (an int of 400 digits would not even convert to a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (
        isinstance(value, float)
        and math.isfinite(value)
        and 0 <= value < 86_400_000
        or (isinstance(value, int) and 0 <= value < 86_400_000)
    )


def _write_cache(path: Path, data: dict[str, Any]) -> str | None:
    """None when written, else why not: a read-only cache only costs a measurement next time."""
    try:
        cache_folder(path.parent)
        with atomic_files(path) as (temporary,):
            temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
    except (OSError, ValueError) as exc:  # ValueError: a FIFO or device there (the tenth probe)
        return str(exc)
    return None


def _most_exact_fast_choice(order: list[str], times: dict[str, float], within: Callable[[str], bool]) -> str:
    """Of ``order`` (the most exact first, which is always allowed), the choice: walking down
    the order, a variant ``within`` the tolerance replaces the current one when it is at least
    :data:`MIN_SPEEDUP` times faster."""
    choice = order[0]
    for name in order[1:]:
        if within(name) and times[name] * MIN_SPEEDUP <= times[choice]:
            choice = name
    return choice


def _consistent(entry: dict[str, Any], field: str, times_key: str, allowed: list[str]) -> bool:
    """Whether ``entry`` is one a measurement could have written: its choice (``field``) among
    ``allowed``, every allowed setting timed (a plausible time), and the choice the one
    :func:`_most_exact_fast_choice` makes of those times and map differences ("map_diff", where
    the entry has it; entries chosen by an older rule are measured again).
    A hand-edited entry that contradicts itself (a negative or NaN time, ``true``) is measured again."""
    times, choice = entry.get(times_key), entry.get(field)
    # amp entries record no map difference: every setting counts.
    diffs = entry.get("map_diff") if field == "precision" else dict.fromkeys(allowed, 0.0)
    if choice not in allowed or not isinstance(times, dict) or not isinstance(diffs, dict):
        return False
    if not all(_plausible_ms(times.get(name)) for name in allowed):
        return False

    def within(name: str) -> bool:
        diff = diffs.get(name)
        return isinstance(diff, (int, float)) and not isinstance(diff, bool) and 0 <= diff <= MAP_TOLERANCE

    return within(allowed[0]) and choice == _most_exact_fast_choice(allowed, times, within)


def _cached(
    key: str, field: str, allowed: list[str], measure: Callable[[], dict[str, Any]], refresh: bool, times_key: str
) -> tuple[dict[str, Any], str]:
    """(entry, how it was had and where it is kept): the cache's entry for ``key`` when it is
    :func:`_consistent` (and not ``refresh``), else ``measure()`` dated and stored."""
    path = cache_root() / CACHE_FILE
    entry = None if refresh else _read_cache(path).get("entries", {}).get(key)
    if entry is not None and _consistent(entry, field, times_key, allowed):
        return entry, f"measured {entry.get('measured', '?')}, cached in {path}"
    entry = {**measure(), "measured": datetime.date.today().isoformat()}
    # Read again after the measurement (seconds): another process may have added its entry since.
    cache = _read_cache(path)
    failed = _write_cache(path, {"version": CACHE_VERSION, "entries": {**cache.get("entries", {}), key: entry}})
    return entry, f"measured now, not cached: {failed}" if failed else f"measured now, cached in {path}"


def _time_ms(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def _size(image_size: object) -> tuple[int, int]:
    return image_hw(image_size)


def measure_precisions(
    model: EfficientAD,
    batch_size: int = 1,
    image_size: int | tuple[int, int] = 256,
    calls: int = 3,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Time ``model.predict`` in each precision of ``names`` (default: :func:`candidates`)
    on seeded random images: two untimed calls (INT8 compiles in the first), then ``calls``
    rounds, every variant once per round, the median per variant. Returns ``{"times_ms":
    {name: ms}, "map_diff": {name: max |map - fp32 map| / range of the fp32 map},
    "models": {name: model in that precision}}``."""
    names = names or candidates(model)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, *_size(image_size), generator=generator)
    models: dict[str, EfficientAD] = {}
    for name in names:
        models[name] = model if name == model.precision else copy.deepcopy(model).set_precision(name)
    maps = {name: m.predict(images).anomaly_map.float() for name, m in models.items()}  # warm-up 1
    for m in models.values():
        m.predict(images)  # warm-up 2
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(calls):
        for name, m in models.items():
            times[name].append(_time_ms(functools.partial(m.predict, images)))
    reference = maps.get("fp32", next(iter(maps.values())))
    span = float(reference.max() - reference.min()) or 1.0
    diff = {name: float((amap - reference).abs().max()) / span for name, amap in maps.items()}
    return {"times_ms": {n: statistics.median(t) for n, t in times.items()}, "map_diff": diff, "models": models}


def choose_precision(
    model: EfficientAD,
    batch_size: int = 1,
    image_size: int | tuple[int, int] = 256,
    log: Callable[[str], None] | None = print,
    refresh: bool = False,
) -> EfficientAD:
    """``model`` in its fastest precision on this machine for batches of ``batch_size``
    images of ``image_size`` px, among :func:`candidates` whose map stays within
    :data:`MAP_TOLERANCE` of fp32. Measured by :func:`measure_precisions` the first time,
    then read from the cache (``refresh``: measure again). Returns the model in that
    precision (``model`` itself or a copy); ``log`` gets one line saying what was chosen."""
    names = candidates(model)
    if names == ["fp32"]:  # nothing to choose from: no measurement, no cache entry
        if log is not None:
            log(f"precision auto: fp32 ({NO_BF16})")
        return model.set_precision("fp32")
    height, width = _size(image_size)
    key = " | ".join(
        [
            machine_key(model.device),
            f"{model.model_size}",
            f"batch {batch_size}",
            f"{height}x{width} px",
            ",".join(names),
        ]
    )
    measured: dict[str, Any] = {}

    def measure() -> dict[str, Any]:
        measured.update(measure_precisions(model, batch_size, image_size, names=names))
        return {
            "precision": _most_exact_fast_choice(
                names, measured["times_ms"], lambda n: measured["map_diff"][n] <= MAP_TOLERANCE
            ),
            "times_ms": measured["times_ms"],
            "map_diff": measured["map_diff"],
        }

    entry, how = _cached(key, "precision", names, measure, refresh, "times_ms")
    # Measured now: the variant is built and warm already; from the cache: switch the model.
    chosen: EfficientAD = (
        measured["models"][entry["precision"]] if measured else model.set_precision(entry["precision"])
    )
    if log is not None:
        times = _format_times(entry.get("times_ms"), names)
        log(f"precision auto: {entry['precision']} at batch {batch_size} ({times}; {how})")
    return chosen


def choose_amp(
    device: torch.device,
    what: str,
    run_step: Callable[[str | None], None],
    steps: int = 3,
    log: Callable[[str], None] | None = print,
    refresh: bool = False,
) -> str | None:
    """The faster of training without autocast (None) and with bf16 autocast (a GPU: fp16
    too; autocast only when :data:`MIN_SPEEDUP` times faster): ``run_step(amp)`` runs one
    training step; each setting gets one untimed step, then ``steps`` timed ones,
    interleaved; the median decides. Cached like
    :func:`choose_precision` under ``what`` (the model size, batch and image size)."""
    names: list[str | None] = [None, "fp16", "bf16"] if device.type == "cuda" else [None, "bf16"]
    if device.type == "cpu" and not cpu_has_bf16_kernels():  # a bf16 step took 200 s against 4 s
        if log is not None:
            log(f"amp auto: fp32 ({NO_BF16})")
        return None
    key = " | ".join([machine_key(device), "train", what])

    def label(amp: str | None) -> str:
        return "fp32" if amp is None else amp

    def measure() -> dict[str, Any]:
        for amp in names:
            run_step(amp)  # warm-up: allocations, oneDNN primitives
        times: dict[str, list[float]] = {label(n): [] for n in names}
        for _ in range(steps):
            for amp in names:
                times[label(amp)].append(_time_ms(functools.partial(run_step, amp)))
        medians = {n: statistics.median(t) for n, t in times.items()}
        return {"amp": _most_exact_fast_choice(list(medians), medians, lambda n: True), "step_ms": medians}

    entry, how = _cached(key, "amp", [label(n) for n in names], measure, refresh, "step_ms")
    if log is not None:
        times = _format_times(entry.get("step_ms"))
        log(f"amp auto: {entry['amp']} (a training step: {times}; {how})")
    return None if entry["amp"] == "fp32" else entry["amp"]
