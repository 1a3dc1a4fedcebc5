"""Signals as the jobs expect them: SIGTERM (``kill``, ``docker stop``, a scheduler's
preemption) raises KeyboardInterrupt like Ctrl-C, so the same cleanup runs (partial files
removed, checkpoints and finished rows kept); a block that must run whole holds both."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HELD = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """KeyboardInterrupt raised for SIGTERM (exit status 143 rather than Ctrl-C's 130)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextmanager
def terminate_as_interrupt() -> Iterator[list[bool]]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread. Yields a
    one-element list that holds True once SIGTERM came (the caller's exit status)."""
    came = [False]
    if threading.current_thread() is not threading.main_thread():
        yield came  # only the main thread can set handlers
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        came[0] = True
        _raise_terminated(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield came
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


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
        if signal.SIGTERM in received:
            # Whoever installed the SIGTERM handler (terminate_as_interrupt) sees it now.
            handler = previous[signal.SIGTERM]
            if callable(handler):
                handler(signal.SIGTERM, None)
            raise Terminated(f"terminated by signal {signal.SIGTERM}")
        raise KeyboardInterrupt
