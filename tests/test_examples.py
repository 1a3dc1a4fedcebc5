"""examples/python/*.py end to end: each script run as a user runs it (a subprocess, from the
repository root) on a few synthetic images and a seeded random model, plus one bad input each.

The subprocesses load the op library from the cache as any user's process does, and
``precision="auto"`` measures once per machine and shape (score_folder at --batch-size 1 and
camera_loop share that measurement); quantize_and_compare compiles INT8 networks with Inductor,
so it gets three calibration images and two timed runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "python"
SCRIPTS = ("score_folder.py", "camera_loop.py", "quantize_and_compare.py")


def run_example(script: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The working tree's package, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """(data folder, model file): 3 normal training images, 2 normal and 1 defective test
    images of the synthetic board; a seeded random EfficientAD-S with quantiles and thresholds."""
    from efficientad_fast.data import make_synthetic
    from efficientad_fast.testing import random_model

    root = tmp_path_factory.mktemp("examples")
    data = make_synthetic(
        root / "data",
        seed=3,
        categories=("board",),
        n_train=3,
        n_test_good=2,
        n_test_defect_per_type=1,
        defects=("hole",),
    )
    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).eval()
    model.set_thresholds(image=0.25, pixel=0.1, source="test_examples")
    model.save(root / "model.pt")
    return data / "board", root / "model.pt"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    result = run_example(script, "--help", timeout=60)
    assert result.returncode == 0, output(result)
    assert result.stdout.startswith("usage:") and "--model" in result.stdout


def test_score_folder_prints_a_table_and_writes_the_csv(workspace, tmp_path):
    board, model = workspace
    out = tmp_path / "scores.csv"
    result = run_example(
        "score_folder.py",
        "--model",
        model,
        "--images",
        board / "test",
        "--out",
        out,
        "--batch-size",
        "1",
        "--sensitivity",
        "0.6",
    )
    assert result.returncode == 0, output(result)
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert [Path(r["path"]).relative_to(board / "test").as_posix() for r in rows] == [
        "good/000.png",
        "good/001.png",
        "hole/000.png",
    ]
    assert all(float(r["score"]) == float(r["score"]) and r["label"] in ("true", "false") for r in rows)
    assert "scored 3 images" in result.stdout and f"wrote {out}" in result.stdout
    for row in rows:  # one table row per image, with its label
        line = next(line for line in result.stdout.splitlines() if line.startswith(row["path"]))
        assert line.split()[-1] == ("anomalous" if row["label"] == "true" else "normal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]  # no temporary left


def test_camera_loop_reports_each_frame_and_the_latency(workspace):
    _, model = workspace
    result = run_example("camera_loop.py", "--model", model, "--frames", "3")
    assert result.returncode == 0, output(result)
    frames = [line for line in result.stdout.splitlines() if line.startswith("frame ")]
    assert [line.split()[1] for line in frames] == ["0", "1", "2"]
    assert all(line.endswith(" ms") and ("normal" in line or "ANOMALOUS" in line) for line in frames)
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("3 frames") and "p50" in summary and "p99" in summary and "fps" in summary


def test_quantize_and_compare_saves_an_int8_model(workspace, tmp_path):
    board, model = workspace
    out = tmp_path / "model_int8.pt"
    result = run_example(
        "quantize_and_compare.py",
        "--model",
        model,
        "--calibration",
        board / "train" / "good",
        "--out",
        out,
        "--runs",
        "2",
    )
    assert result.returncode == 0, output(result)
    assert "quantized in" in result.stdout and "precision int8" in result.stdout
    assert "of the fp32 map range" in result.stdout and "labels agree on" in result.stdout
    assert "batch-1 latency" in result.stdout and f"wrote {out}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.pt"]

    import efficientad_fast as ead

    assert ead.load(out).image_threshold == 0.25  # a whole, valid model file (checksum verified)


@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "score_folder.py",
            ["--images", "{tmp}/missing", "--out", "{tmp}/out"],
            "image folder not found: {tmp}/missing",
        ),
        ("camera_loop.py", ["--frames", "0"], "--frames must be >= 1, got 0"),
        (
            "quantize_and_compare.py",
            ["--calibration", "{tmp}", "--out", "{tmp}/out"],
            "no images (.png, .jpg, .jpeg) under {tmp}",
        ),
    ],
)
def test_bad_input_exits_2_with_one_error_line(workspace, tmp_path, script, args, message):
    _, model = workspace
    result = run_example(script, "--model", model, *(a.format(tmp=tmp_path) for a in args), timeout=60)
    assert result.returncode == 2, output(result)
    assert result.stderr.splitlines() == [f"error: {message.format(tmp=tmp_path)}"], output(result)
    assert result.stdout == "" and not (tmp_path / "out").exists()
