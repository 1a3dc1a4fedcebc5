"""Where a job's pieces run: the one seam between the jobs and Ray.

A job (``train`` with several categories, ``report``) is written once: it submits each piece
(a category, a sweep setting) to a runner and gathers the results as they finish.
:class:`LocalRunner` runs them one after another in this process; :class:`RayRunner` (the
``[ray]`` extra) runs each as a Ray task with its own CPUs/GPUs and retries. Both call
``on_done(key, result)`` or ``on_failed(key, error, details)`` (the one-line error and the
traceback), so a failed piece is reported the same way whichever ran it, and the others go
on. Ctrl-C stops the gathering (Ray: cancels the tasks still running).

Without an address Ray starts a local instance for the command and stops it after; with one
the command joins that cluster (``ray start --head`` / ``ray start --address``), whose nodes
must see the data and the output folder at the same paths (shared storage) and have this
package installed. Ray is imported on first use, so the package imports without it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .._checkpoint import atomic_write_text
from .._optional import require


def record_failure(row: dict, out_dir: Path, error: str, details: str) -> dict:
    """Mark ``row`` failed with the one-line ``error`` and write ``details`` (the traceback)
    to ``out_dir/error.txt``; returns ``row``."""
    row["error"] = error
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "error.txt", details)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        # A full disk most likely failed the run too: say what failed first, not error.txt.
        raise OSError(
            errno.ENOSPC, f"no space left in {out_dir}: the run failed ({error}) and error.txt could not be written"
        ) from exc
    return row


OnDone = Callable[[object, object], None]
OnFailed = Callable[[object, str, str], None]


class LocalRunner:
    """Runs each submitted piece in this process, in submission order, when gathered."""

    where = "this process"
    tries_note = ""  # nothing is retried here

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self._pending: list[tuple[object, Callable, dict]] = []

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc) -> None:
        self._pending.clear()

    def device(self, device: str) -> str:
        """The device a piece should use."""
        return device

    def path(self, path: str | os.PathLike) -> str | os.PathLike:
        """``path`` as a piece should see it (here: as given)."""
        return path

    def submit(self, key, name: str, function: Callable, kwargs: dict, *, local_log: bool = False) -> None:
        """Queue ``function(**kwargs)`` under ``key`` (``name``: for logs). ``local_log``: the
        function takes ``log`` and may print progress (it runs here, where the log is)."""
        self._pending.append((key, function, {**kwargs, "log": self.log} if local_log else kwargs))

    def gather(self, on_done: OnDone, on_failed: OnFailed) -> None:
        """Run the queued pieces; a piece that raises is reported with its traceback and the
        rest go on. KeyboardInterrupt (and TrainingInterrupted) stops here."""
        pending, self._pending = self._pending, []
        for key, function, kwargs in pending:
            try:
                result = function(**kwargs)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # report it, go on with the next piece
                on_failed(key, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            else:
                on_done(key, result)


def require_ray() -> ModuleType:
    """The ``ray`` module, or an ImportError that says how to install it."""
    require("ray.data", "ray")  # predict needs Ray Data: ray[data]
    return require("ray", "ray")


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[ModuleType]:
    """Ray, connected for the ``with`` block: to the cluster at ``address`` (e.g.
    ``ray://head:10001`` or ``head:6379``; "auto": the one ``ray start`` made on this machine),
    else to a new local instance (``num_cpus``: default all cores), shut down afterwards.
    An instance already connected in this process (tests, notebooks) is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_in_task(threads: int, function, kwargs: dict):
    """The body of every Ray task: ``function(**kwargs)`` on ``threads`` torch threads (the
    task's CPUs, so parallel tasks do not oversubscribe the node)."""
    torch.set_num_threads(threads)
    return function(**kwargs)


def ray_failure(exc: Exception) -> tuple[str, str]:
    """(one line, details) of a task's failure: the task's own exception and remote
    traceback for a raise, Ray's reason for a lost worker or node."""
    ray = require_ray()
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
        remote = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours the task's name
        return f"{type(cause).__name__}: {cause}", f"failed on a Ray worker; its traceback:\n{remote}\n"
    return f"{type(exc).__name__}: {exc}", traceback.format_exc()


class RayRunner:
    """Runs each submitted piece as a Ray task of ``cpus_per_job`` CPUs and ``gpus_per_job``
    GPUs (default: 1 when the cluster has GPUs and the device allows, else 0), all at once; a
    piece that fails is tried ``retries`` more times (also when its worker or node is lost).
    Use as a context manager: it connects on entry (``ray_address``, else a local instance)."""

    def __init__(
        self,
        ray_address: str | None = None,
        cpus_per_job: float = 1,
        gpus_per_job: float | None = None,
        retries: int = 1,
        log: Callable[[str], None] = print,
    ) -> None:
        require_ray()  # before any folder is made
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if cpus_per_job <= 0:
            raise ValueError(f"cpus_per_job must be > 0, got {cpus_per_job}")
        self.address, self.cpus, self.gpus_asked, self.retries, self.log = (
            ray_address,
            cpus_per_job,
            gpus_per_job,
            retries,
            log,
        )
        self.tries_note = f" after {retries + 1} tries"
        # The ray module while entered (None before): Any, as ray carries no types mypy reads here.
        self.ray: Any = None
        self.gpus = 0.0
        self._session: contextlib.AbstractContextManager[ModuleType] | None = None
        self._pending: dict = {}

    @property
    def where(self) -> str:
        resources = self.ray.cluster_resources()
        return (
            f"Ray ({self.cpus} CPUs, {self.gpus} GPUs each; cluster: {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs)"
        )

    def __enter__(self) -> RayRunner:
        self._session = ray_session(self.address)
        self.ray = self._session.__enter__()
        self.gpus = (
            self.gpus_asked
            if self.gpus_asked is not None
            else (1 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0)
        )
        return self

    def __exit__(self, *exc) -> None:
        self._pending.clear()
        assert self._session is not None  # __enter__ made it
        self._session.__exit__(*exc)

    def device(self, device: str) -> str:
        # A task without GPUs may still see the node's GPUs: "auto" must not pick one of them.
        if self.gpus_asked is None and device == "cpu":
            self.gpus = 0
        return "cpu" if device == "auto" and self.gpus == 0 else device

    def path(self, path: str | os.PathLike) -> str | os.PathLike:
        """Workers do not share the driver's working folder: absolute paths."""
        return Path(path).resolve() if isinstance(path, Path) else str(Path(path).resolve())

    def submit(self, key, name: str, function: Callable, kwargs: dict, *, local_log: bool = False) -> None:
        # retry_exceptions: a job that raises is retried too, not only one whose worker died.
        task = self.ray.remote(_run_in_task).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries, retry_exceptions=True, name=name
        )
        self._pending[task.remote(max(1, int(self.cpus)), function, kwargs)] = key

    def gather(self, on_done: OnDone, on_failed: OnFailed) -> None:
        """Wait for the tasks as they finish, in any order. Ctrl-C cancels the rest."""
        ray, pending = self.ray, self._pending
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                key = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task raised, or its worker or node was lost
                    on_failed(key, *ray_failure(exc))
                else:
                    on_done(key, result)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


def make_runner(engine: str = "local", log: Callable[[str], None] = print, **ray_options):
    """:class:`LocalRunner` for "local" (``ray_options`` must be empty), :class:`RayRunner`
    for "ray" (``ray_address``, ``cpus_per_job``, ``gpus_per_job``, ``retries``)."""
    if engine == "local":
        given = {k: v for k, v in ray_options.items() if v is not None}
        if given:
            raise ValueError(f"{', '.join(sorted(given))}: options of the Ray engine")
        return LocalRunner(log)
    if engine == "ray":
        return RayRunner(log=log, **{k: v for k, v in ray_options.items() if v is not None})
    raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
