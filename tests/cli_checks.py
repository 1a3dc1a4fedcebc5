"""What several test modules share about the command line: the one-error-line check and the
arguments that pin a training run."""

from __future__ import annotations


def one_error_line(command: str, err: str) -> str:
    """The one 'error:' line of ``err``, checked to be the CLI's and alone, with no traceback."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"efficientad-fast {command}: error: "), err
    assert "Traceback" not in err, err
    return lines[0]


# Whatever the cache holds ("auto" would pick the paper's teacher or Imagenette when cached).
PINNED = ("--teacher", "random", "--penalty-images", "none")


def train_args(data, out, *extra: str, steps: int = 1) -> list[str]:
    """A quick ``train`` of the synthetic board category in ``data`` to ``out``: ``steps`` steps,
    a checkpoint each step, the teacher and penalty images pinned, no loader processes."""
    return [
        "train",
        "--data",
        str(data),
        "--dataset",
        "mvtec",
        "--category",
        "board",
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--checkpoint-every",
        "1",
        "--workers",
        "0",
        "--quiet",
        *PINNED,
        *extra,
    ]
