"""Progress bars for long work (training, loading, evaluation), off when ``enabled`` is False."""

from __future__ import annotations


def progress(iterable, enabled: bool, desc: str, total: int | None = None, initial: int = 0):
    """``iterable`` wrapped in a tqdm bar, or ``iterable`` itself when not ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, initial=initial, dynamic_ncols=True)
