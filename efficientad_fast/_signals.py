"""Signals as the jobs expect them: SIGTERM (``kill``, ``docker stop``, a scheduler's
preemption) raises KeyboardInterrupt like Ctrl-C, so the same cleanup runs (partial files
removed, checkpoints and finished rows kept); a block that must run whole holds both."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Signals that end a job as Ctrl-C does: SIGTERM, and SIGHUP (its terminal closed) where it exists.
TERMINATING = (signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))
_HELD = (signal.SIGINT, *TERMINATING)


STARTUP_INTERRUPTED = "efficientad-fast: interrupted while starting; nothing was done"


def started_as_command() -> bool:
    """True in the ``efficientad-fast`` command or ``python -m efficientad_fast`` (not when a
    program imports the package): there Ctrl-C while torch loads ends with one line."""
    argv = getattr(sys, "orig_argv", sys.argv)
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
    return module == "efficientad_fast" or os.path.basename(sys.argv[0]) in ("efficientad-fast", "efficientad-fast.exe")


class Terminated(KeyboardInterrupt):
    """KeyboardInterrupt raised for SIGTERM or SIGHUP (exit status 143 or 129 rather than
    Ctrl-C's 130); ``signal_name`` says which."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum, self.signal_name = signum, signal.Signals(signum).name
        super().__init__(message or f"terminated by {self.signal_name}")


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


@contextmanager
def terminate_as_interrupt() -> Iterator[list[int]]:
    """While the block runs, SIGTERM (and SIGHUP) raises :class:`Terminated` in the main
    thread. Yields a one-element list that holds the signal's number once one came (0 before;
    the caller's exit status is 128 + it)."""
    came = [0]
    if threading.current_thread() is not threading.main_thread():
        yield came  # only the main thread can set handlers
        return
    previous = {s: signal.getsignal(s) for s in TERMINATING}

    def handler(signum, frame):
        came[0] = signum
        _raise_terminated(signum, frame)

    for s in TERMINATING:
        signal.signal(s, handler)
    try:
        yield came
    finally:
        for s, before in previous.items():
            signal.signal(s, before if before is not None else signal.SIG_DFL)


@contextmanager
def interrupts_held(note: str | None = None) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block has run, then raise KeyboardInterrupt (or
    :class:`Terminated`): e.g. an optimizer update must be applied whole or not at all, and
    an exporter (torch.export, OpenVINO) turns an interrupt raised inside it into another
    error or swallows it. ``note``: printed to stderr when the first signal is held, to say
    why the program goes on for a moment."""
    previous = {s: signal.getsignal(s) for s in _HELD}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield  # None: a handler not set from Python, which we could not restore
        return
    received: list[int] = []

    def hold(signum, frame) -> None:
        if not received and note:
            print(f"\n{note}", file=sys.stderr, flush=True)
        received.append(signum)

    for s in _HELD:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        ending = next((s for s in received if s in TERMINATING), None)
        if ending is not None:
            # Whoever installed the handler (terminate_as_interrupt) sees it now.
            handler = previous[ending]
            if callable(handler):
                handler(ending, None)
            raise Terminated(ending)
        raise KeyboardInterrupt
