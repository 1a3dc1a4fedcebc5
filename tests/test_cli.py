"""The command line end to end at tiny settings: train, eval, predict, demo's pieces, --help."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from efficientad_fast import load
from efficientad_fast.cli import main
from efficientad_fast.data import make_synthetic

pytestmark = pytest.mark.usefixtures("op_library")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic(root / "data", seed=1, categories=("board",), n_train=6, n_test_good=2,
                          n_test_defect_per_type=1, defects=("hole", "missing_part"))


# Whatever the cache holds ("auto" would pick the paper's teacher or Imagenette when cached).
PINNED = ("--teacher", "random", "--penalty-images", "none")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--data", str(dataset), "--dataset", "mvtec", "--category", "board",
                 "--out", str(out), "--steps", "2", "--workers", "0", "--quiet", "--checkpoint-every", "1",
                 *PINNED])
    assert code == 0
    return out


def test_train_writes_model_log_curve_and_summary(trained):
    for name in ("model.pt", "train_log.jsonl", "loss_curve.png", "train_summary.json", "checkpoint.pt"):
        assert (trained / name).is_file(), name
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["train_config"]["steps"] == 2 and summary["held_out_images"] >= 1
    model = load(trained / "model.pt")
    assert model.quantiles_set
    lines = (trained / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_eval_prints_table_and_writes_json_and_markdown(trained, dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(trained / "model.pt"), "--data", str(dataset), "--dataset", "mvtec",
                 "--category", "board", "--out", str(out), "--workers", "0", "--quiet", "--heatmaps"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "image_auroc" in printed and "aupro" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) >= {"image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "aupro"}
    assert len(metrics["images"]) == 4  # 2 good + 1 hole + 1 missing part
    assert (out / "metrics.md").read_text().startswith("# EfficientAD evaluation")
    assert list((out / "heatmaps").glob("*.png"))


def test_predict_writes_scores_and_heatmaps(trained, dataset, tmp_path):
    out = tmp_path / "pred"
    images = dataset / "board" / "test"
    code = main(["predict", "--model", str(trained / "model.pt"), str(images), "--out", str(out), "--quiet"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 4
    assert all(float(r["score"]) == float(r["score"]) for r in rows)
    assert all(r["anomalous"] in ("true", "false") for r in rows)
    for r in rows:
        assert Path(r["heatmap"]).is_file()


def test_predict_missing_input_is_a_clear_error(trained, tmp_path, capsys):
    code = main(["predict", "--model", str(trained / "model.pt"), str(tmp_path / "nope.png"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "no such image or folder" in err and "Traceback" not in err


def test_train_resume_continues_the_same_run(dataset, trained, tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    code = main(["train", "--data", str(dataset), "--dataset", "mvtec", "--category", "board",
                 "--out", str(out), "--steps", "2", "--workers", "0", "--quiet", "--resume", *PINNED])
    assert code == 0  # the checkpoint is at step 2 of 2: nothing left but calibration and saving


@pytest.mark.parametrize("command", ["info", "train", "eval", "predict", "demo"])
def test_every_command_has_help(command):
    out = subprocess.run([sys.executable, "-m", "efficientad_fast", command, "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout


def test_console_script_is_installed():
    out = subprocess.run(["efficientad-fast", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout
