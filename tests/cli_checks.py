"""Checks that several test modules make of the command line's output."""

from __future__ import annotations


def one_error_line(command: str, err: str) -> str:
    """The one 'error:' line of ``err``, checked to be the CLI's and alone, with no traceback."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"efficientad-fast {command}: error: "), err
    assert "Traceback" not in err, err
    return lines[0]
