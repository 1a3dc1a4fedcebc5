"""The command line end to end at tiny settings: train, eval, predict, demo's pieces, --help."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_checks import PINNED

from efficientad_fast import load
from efficientad_fast.cli import main
from efficientad_fast.data import make_synthetic

pytestmark = pytest.mark.usefixtures("op_library")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic(
        root / "data",
        seed=1,
        categories=("board",),
        n_train=6,
        n_test_good=2,
        n_test_defect_per_type=1,
        defects=("hole", "missing_part"),
    )


# Whatever the cache holds ("auto" would pick the paper's teacher or Imagenette when cached).


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # --threshold-from: the test folder's good/ and defect folders, as labelled validation images.
    code = main(
        [
            "train",
            "--data",
            str(dataset),
            "--dataset",
            "mvtec",
            "--category",
            "board",
            "--out",
            str(out),
            "--steps",
            "2",
            "--workers",
            "0",
            "--quiet",
            "--checkpoint-every",
            "1",
            "--threshold-from",
            str(dataset / "board" / "test"),
            *PINNED,
        ]
    )
    assert code == 0
    return out


def test_train_writes_model_log_curve_and_summary(trained):
    for name in ("model.pt", "train_log.jsonl", "loss_curve.png", "train_summary.json", "checkpoint.pt"):
        assert (trained / name).is_file(), name
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["train_config"]["steps"] == 2 and summary["held_out_images"] >= 1
    model = load(trained / "model.pt")
    assert model.quantiles_set
    # The F1-optimal image threshold on the labelled folder, recorded in the model and summary.
    assert model.image_threshold is not None and model.pixel_threshold == 0.1
    assert "F1-optimal" in model.threshold_source and "on 4 labelled validation images" in model.threshold_source
    assert summary["thresholds"] == {"image": model.image_threshold, "pixel": 0.1, "source": model.threshold_source}
    lines = (trained / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_eval_prints_table_and_writes_json_and_markdown(trained, dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(trained / "model.pt"),
            "--data",
            str(dataset),
            "--dataset",
            "mvtec",
            "--category",
            "board",
            "--out",
            str(out),
            "--workers",
            "0",
            "--quiet",
            "--heatmaps",
            "--precision",
            "fp32",  # auto times INT8 against fp32 for 15 s here (the predict tests cover auto)
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "image_auroc" in printed and "aupro" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) >= {"image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupr", "aupro"}
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
    model = load(trained / "model.pt")
    for r in rows:
        assert Path(r["heatmap"]).is_file()
        assert r["label"] == r["anomalous"] == str(float(r["score"]) > model.image_threshold).lower()


def test_predict_sensitivity_moves_labels_and_masks(trained, dataset, tmp_path):
    from PIL import Image

    images = [dataset / "board" / "test" / "hole", dataset / "board" / "test" / "missing_part"]
    flagged, pixels = {}, {}
    for sensitivity in ("0", "1"):
        out = tmp_path / sensitivity
        assert (
            main(
                [
                    "predict",
                    "--model",
                    str(trained / "model.pt"),
                    *map(str, images),
                    "--out",
                    str(out),
                    "--quiet",
                    "--no-heatmaps",
                    "--masks",
                    "--sensitivity",
                    sensitivity,
                    "--precision",
                    "fp32",  # not auto: timing INT8 against fp32 (the model holds INT8 ranges) takes 30 s here
                ]
            )
            == 0
        )
        rows = list(csv.DictReader(open(out / "scores.csv")))
        flagged[sensitivity] = {r["path"] for r in rows if r["label"] == "true"}
        masks = sorted((out / "masks").glob("*.png"))
        assert len(masks) == 2
        pixels[sensitivity] = sum(int((np.asarray(Image.open(m)) == 255).sum()) for m in masks)
    assert flagged["0"] <= flagged["1"] and pixels["0"] < pixels["1"]


def test_folder_options_need_normal_dir_and_folder_dataset(trained, dataset, tmp_path, capsys):
    model = str(trained / "model.pt")
    code = main(
        [
            "eval",
            "--model",
            model,
            "--data",
            str(dataset / "board"),
            "--dataset",
            "folder",
            "--abnormal-dir",
            "test/hole",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr()
    assert code == 2 and "--abnormal-dir need --normal-dir" in printed.err
    assert "precision auto" not in printed.out  # refused before the model loads (30 s of INT8 timing)
    code = main(
        [
            "eval",
            "--model",
            model,
            "--data",
            str(dataset),
            "--dataset",
            "mvtec",
            "--category",
            "board",
            "--normal-dir",
            "train/good",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr()
    assert code == 2 and "is for --dataset folder" in printed.err
    assert "precision auto" not in printed.out  # refused before the model loads (30 s of INT8 timing)


def test_eval_folder_dataset_with_free_folders(trained, dataset, tmp_path):
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(trained / "model.pt"),
            "--data",
            str(dataset / "board"),
            "--dataset",
            "folder",
            "--normal-dir",
            "train/good",
            "--abnormal-dir",
            "test/hole",
            "--mask-dir",
            "ground_truth/hole",
            "--normal-split-ratio",
            "0.3",
            "--out",
            str(out),
            "--workers",
            "0",
            "--quiet",
            "--precision",
            "fp32",
        ]
    )
    assert code == 0
    rows = json.loads((out / "metrics.json").read_text())["images"]
    # round(0.3 * 6) = 2 normal training images held out for the test, and the one hole image.
    assert sorted((r["defect"], r["label"]) for r in rows) == [("good", 0), ("good", 0), ("hole", 1)]


def test_predict_missing_input_is_a_clear_error(trained, tmp_path, capsys):
    code = main(["predict", "--model", str(trained / "model.pt"), str(tmp_path / "nope.png"), "--out", str(tmp_path)])
    printed = capsys.readouterr()
    assert code == 2 and "no such image or folder" in printed.err and "Traceback" not in printed.err
    assert "precision auto" not in printed.out  # refused before the model loads and times INT8


def test_train_resume_continues_the_same_run(dataset, trained, tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    code = main(
        [
            "train",
            "--data",
            str(dataset),
            "--dataset",
            "mvtec",
            "--category",
            "board",
            "--out",
            str(out),
            "--steps",
            "2",
            "--workers",
            "0",
            "--quiet",
            "--resume",
            *PINNED,
        ]
    )
    assert code == 0  # the checkpoint is at step 2 of 2: nothing left but calibration and saving


@pytest.mark.parametrize("command", ["info", "train", "eval", "predict", "demo"])
def test_every_command_has_help(command):
    out = subprocess.run(
        [sys.executable, "-m", "efficientad_fast", command, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0 and "usage:" in out.stdout


def test_console_script_is_installed():
    out = subprocess.run(["efficientad-fast", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout
