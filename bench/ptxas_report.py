#!/usr/bin/env python
"""ptxas's register, stack-frame and spill report for every CUDA kernel of the op, compiled
for sm_90 with the op's own build flags (``efficientad_fast.op._build.ptxas_report``; nvcc
only, no GPU needed). Writes ``ptxas.md`` (a table, names demangled when c++filt is there)
and ``ptxas.json`` into OUT_DIR.

    python bench/ptxas_report.py OUT_DIR

Exit 0: every kernel has a 0-byte stack frame and no spills; 1: some kernel has either
(the table says which); 2: nvcc failed or no CUDA toolkit. tests/test_op_ptxas.py checks the
same, gpu_check.sh runs this as its ``ptxas`` step.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from efficientad_fast.op import _build


def demangle(names: list[str]) -> list[str]:
    """The names as c++filt prints them, without the namespace's anonymous-namespace noise;
    the mangled names when c++filt is missing."""
    tool = shutil.which("c++filt")
    if tool is None:
        return names
    done = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != len(names):
        return names
    return [line.replace("efficientad_fast::(anonymous namespace)::", "") for line in lines]


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as folder:
            kernels = _build.ptxas_report(Path(folder))
    except _build.BuildError as exc:
        print(f"ptxas report: {exc}", file=sys.stderr)
        return 2
    names = demangle([k.name for k in kernels])
    bad = [n for n, k in zip(names, kernels) if k.stack_frame or k.spill_stores or k.spill_loads]
    rows = [
        f"| {n} | {k.registers} | {k.stack_frame} | {k.spill_stores} | {k.spill_loads} |"
        for n, k in zip(names, kernels)
    ]
    table = "\n".join(
        [
            f"## ptxas -v, sm_{_build.PTXAS_ARCH} ({len(kernels)} kernels)",
            "",
            "| kernel | registers | stack frame (bytes) | spill stores (bytes) | spill loads (bytes) |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"kernels with a stack frame or spills: {len(bad)}",
        ]
    )
    (out / "ptxas.md").write_text(table + "\n")
    (out / "ptxas.json").write_text(
        json.dumps([asdict(k) | {"demangled": n} for n, k in zip(names, kernels)], indent=2)
    )
    print(table)
    return 1 if bad or not kernels else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
