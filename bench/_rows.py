"""Benchmark rows kept beyond the machine that made them (/tmp does not survive a machine): a
JSON-lines archive in bench/results, one row per key, merged with a run's new rows (a new row
replaces the archived row of the same key). Used by compare_models.py and parts_line.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path


def merged_rows(archive: Path | None, new: Iterable[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """The archive's rows with ``new`` put over the same keys, sorted by key."""
    rows = {}
    if archive is not None and archive.exists():
        for line in archive.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[key(row)] = row
    rows |= {key(row): row for row in new}
    return [rows[k] for k in sorted(rows, key=str)]


def write_rows(archive: Path, rows: list[dict]) -> None:
    """The archive, whole or not at all."""
    from efficientad_fast._checkpoint import atomic_write_text

    atomic_write_text(archive, "".join(json.dumps(row) + "\n" for row in rows))
