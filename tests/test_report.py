"""efficientad-fast report and efficientad-fast bench, end to end at tiny settings."""

import csv
import json
from pathlib import Path

import pytest
import torch

from efficientad_fast.cli import main
from efficientad_fast.data import make_synthetic
from efficientad_fast.jobs import parse_sweep
from efficientad_fast.model_file import load
from efficientad_fast.networks import make_pdn

pytestmark = pytest.mark.usefixtures("op_library")


def test_parse_sweep(tmp_path):
    assert parse_sweep(["lr=1e-6,1e-4", "weight-decay=1e-5"]) == {"lr": [1e-6, 1e-4], "weight_decay": [1e-5]}
    assert parse_sweep(["steps=2,4"]) == {"steps": [2, 4]}
    assert parse_sweep(None) == {}
    teacher = tmp_path / "t.pt"
    teacher.write_bytes(b"")
    assert parse_sweep([f"teacher=random,{teacher}"]) == {"teacher": ["random", str(teacher)]}
    with pytest.raises(ValueError, match="no teacher file"):
        parse_sweep(["teacher=random,/x/t.pt"])  # before the first run, not in the middle
    with pytest.raises(ValueError, match="can sweep"):
        parse_sweep(["momentum=0.9"])
    with pytest.raises(ValueError, match="looks like"):
        parse_sweep(["lr"])
    with pytest.raises(ValueError, match="bad value"):
        parse_sweep(["lr=fast"])


def test_report_sweeps_writes_tables_and_survives_a_failing_category(tmp_path, capsys):
    data = make_synthetic(
        tmp_path / "data",
        seed=1,
        categories=("board",),
        n_train=5,
        n_test_good=2,
        n_test_defect_per_type=1,
        defects=("scratch", "missing_part"),
    )
    out = tmp_path / "report"
    rc = main(
        [
            "report",
            "--data",
            str(data),
            "--dataset",
            "mvtec",
            "--categories",
            "board",
            "nosuch",
            "--out",
            str(out),
            "--steps",
            "2",
            "--sweep",
            "lr=1e-4,1e-3",
            "--latency-batches",
            "1",
            "2",
            "--latency-runs",
            "1",
            "--workers",
            "0",
            "--quiet",
            "--teacher",
            "random",
            "--penalty-images",
            "none",
        ]
    )
    assert rc == 0  # some runs worked
    printed = capsys.readouterr().out
    assert "| Category | Lr | Image AUROC |" in printed.replace("LR", "Lr")
    result = json.loads((out / "report.json").read_text())
    rows = result["rows"]
    assert [(r["category"], r["lr"]) for r in rows] == [
        ("board", 1e-4),
        ("board", 1e-3),
        ("nosuch", 1e-4),
        ("nosuch", 1e-3),
    ]
    for good in rows[:2]:
        assert good["error"] is None
        assert 0 <= good["image_auroc"] <= 1 and 0 <= good["pixel_auroc"] <= 1 and 0 <= good["aupro"] <= 1
        assert good["train_s"] > 0 and good["infer_s"] > 0 and good["latency_ms"] > 0
    for bad in rows[2:]:
        assert "nosuch" in bad["error"]
    assert [p["batch"] for p in result["latency_vs_batch"]] == [1, 2]
    with open(out / "report.csv") as f:
        assert [r["category"] for r in csv.DictReader(f)] == ["board", "board", "nosuch", "nosuch"]
    md = (out / "report.md").read_text()
    assert "Table 5" in md and "failed:" in md and "Latency against batch size" in md
    assert (out / "report.png").stat().st_size > 1000
    # each run kept its model and log
    assert (out / "board_lr0.0001" / "model.pt").is_file()


def test_report_bad_sweep_is_a_usage_error(tmp_path, capsys):
    rc = main(
        ["report", "--data", str(tmp_path), "--dataset", "mvtec", "--out", str(tmp_path / "o"), "--sweep", "alpha=1"]
    )
    assert rc == 2 and "can sweep" in capsys.readouterr().err


def test_report_without_categories_is_a_clear_error(tmp_path, capsys):
    code = main(["report", "--data", str(tmp_path), "--dataset", "mvtec", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no categories" in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_bench_command_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    rc = main(
        [
            "bench",
            "--batch-sizes",
            "1",
            "--dtypes",
            "fp32",
            "--device",
            "cpu",
            "--warmup",
            "0",
            "--runs",
            "1",
            "--json",
            str(out),
            "--markdown",
            str(md),
            "--quiet",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| small | 1 | fp32 | host | no | no |" in printed
    saved = json.loads(out.read_text())
    assert saved["timings"][0]["runs"] == 1 and saved["settings"]["device"] == "cpu"
    assert md.read_text().startswith("Timing protocol on")


@pytest.mark.parametrize("command", ["bench", "report"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out


def test_check_targets_picks_the_best_device_configuration(bench_module):
    gpu_targets = bench_module("gpu_targets")  # the targets live beside gpu_check.sh
    check_targets, format_targets = gpu_targets.check_targets, gpu_targets.format_targets

    def timing(size, batch, path, graph, mean_ms):
        return {
            "model_size": size,
            "batch": batch,
            "dtype": "fp16",
            "path": path,
            "cuda_graph": graph,
            "error": None,
            "mean_ms": mean_ms,
            "images_per_s": 1e3 * batch / mean_ms,
            "name": f"{size} N={batch} fp16 {path}{' graph' if graph else ''}",
        }

    result = {
        "timings": [
            timing("small", 1, "device", False, 0.9),
            timing("small", 1, "device", True, 0.5),
            timing("small", 1, "host", True, 0.1),  # host path is not what the target measures
            timing("small", 64, "device", True, 20.0),
            timing("medium", 1, "device", True, 1.5),
        ],
        "op": [
            {
                "impl": "fused",
                "batch": 64,
                "dtype": "fp16",
                "layout": "channels_last",
                "fraction_of_peak": 0.75,
                "gbs": 3600.0,
            },
            {
                "impl": "fused",
                "batch": 64,
                "dtype": "fp16",
                "layout": "nchw",
                "fraction_of_peak": 0.5,
                "gbs": 2400.0,
            },  # not the layout the model feeds the op
            {
                "impl": "reference",
                "batch": 64,
                "dtype": "fp16",
                "layout": "channels_last",
                "fraction_of_peak": 0.9,
                "gbs": 4300.0,
            },
        ],
    }
    rows = {r["target"].split(",")[0] + r["target"].split(",")[1]: r for r in check_targets(result)}
    s1, s64, m1, op = rows.values()
    assert s1["measured"] == 0.5 and s1["met"] and "graph" in s1["config"]
    assert s64["measured"] == pytest.approx(3200.0) and not s64["met"]
    assert m1["measured"] == 1.5 and not m1["met"]
    assert op["measured"] == 0.75 and op["met"]
    assert "| NO |" in format_targets(list(rows.values()))
    assert check_targets({"timings": [], "op": []}) == []


def test_report_sweeps_teachers(tmp_path):
    """teacher=random,FILE trains one model per teacher on the same data; rows name them."""
    data = make_synthetic(
        tmp_path / "data",
        seed=2,
        categories=("weave",),
        n_train=4,
        n_test_good=2,
        n_test_defect_per_type=1,
        defects=("hole",),
    )
    torch.manual_seed(7)
    teacher_file = tmp_path / "teachers" / "my_teacher.pt"
    teacher_file.parent.mkdir()
    torch.save(make_pdn("small", out_channels=384).state_dict(), teacher_file)
    out = tmp_path / "report"
    rc = main(
        [
            "report",
            "--data",
            str(data),
            "--dataset",
            "mvtec",
            "--out",
            str(out),
            "--steps",
            "2",
            "--sweep",
            f"teacher=random,{teacher_file}",
            "--latency-batches",
            "--latency-runs",
            "1",
            "--workers",
            "0",
            "--quiet",
            "--penalty-images",
            "none",
        ]
    )
    assert rc == 0
    result = json.loads((out / "report.json").read_text())
    assert [(r["teacher"], r["error"]) for r in result["rows"]] == [("random", None), (str(teacher_file), None)]
    assert (out / "weave_teacherrandom" / "model.pt").is_file()
    assert (out / "weave_teachermy_teacher" / "model.pt").is_file()
    first, second = (load(out / name / "model.pt") for name in ("weave_teacherrandom", "weave_teachermy_teacher"))
    saved = torch.load(teacher_file, weights_only=True)
    assert all(torch.equal(v, second.teacher.state_dict()[k]) for k, v in saved.items())
    assert not any(torch.equal(v, first.teacher.state_dict()[k]) for k, v in saved.items() if v.dim() == 4)
    md = (out / "report.md").read_text()
    assert "| weave | my_teacher |" in md and "| weave | random |" in md and "(swept)" in md


def test_report_refuses_sweep_settings_that_share_a_run_folder(tmp_path):
    from efficientad_fast.jobs import run_report

    with pytest.raises(ValueError, match="share the run folders"):
        run_report(
            tmp_path, "mvtec", tmp_path / "o", categories=["board"], sweep={"teacher": ["a/teacher.pt", "b/teacher.pt"]}
        )


def test_report_resume_refuses_finished_runs_made_with_other_settings(tiny_board, tmp_path, capsys):
    """The fourth probe: --resume reused a finished EfficientAD-S run for --model-size medium (or
    other steps, lr, seed) and labelled its numbers with the new settings."""
    from cli_checks import one_error_line

    out = tmp_path / "report"
    args = ["report", "--data", str(tiny_board), "--dataset", "mvtec", "--out", str(out), "--steps", "2"]
    args += ["--workers", "0", "--quiet", "--teacher", "random", "--penalty-images", "none", "--latency-batches"]
    args += ["--latency-runs", "1"]
    assert main(args) == 0
    row = (out / "board" / "row.json").read_text()
    for change, words in (
        (["--model-size", "medium"], "model_size 'small' -> 'medium'"),
        (["--steps", "3"], "steps 2 -> 3"),
        (["--lr", "0.001"], "lr 0.0001 -> 0.001"),
        (["--seed", "7"], "seed 0 -> 7"),
    ):
        capsys.readouterr()
        assert main([*args, *change, "--resume"]) == 2, change
        line = one_error_line("report", capsys.readouterr().err)
        assert "finished with other settings" in line and words in line, line
        assert (out / "board" / "row.json").read_text() == row  # nothing was run or removed
    # What does not change the result may change: the latency runs, the loaders, the bars
    assert main([*args, "--latency-runs", "2", "--resume"]) == 0
    assert "finished by an earlier run, not run again" in capsys.readouterr().out
    # The fifth probe: a cut (or foreign) settings.json let --steps 3 keep the 2-step row. Now
    # such a run is not trusted: it runs again, and continuing its 2-step checkpoint with 3
    # steps is refused by train's own check (a failed row, never the old numbers relabelled).
    settings = out / "board" / "settings.json"
    for damaged in (settings.read_text()[:100], "[]"):
        assert main(args) == 0  # a finished 2-step run
        settings.write_text(damaged)
        capsys.readouterr()
        assert main([*args, "--steps", "3", "--resume"]) == 1
        assert "finished by an earlier run" not in capsys.readouterr().out
        rows = json.loads((out / "report.json").read_text())["rows"]
        assert "other settings" in rows[0]["error"] and "'steps': (2, 3)" in rows[0]["error"]


def test_a_finished_run_whose_settings_file_is_incomplete_or_a_fifo_runs_again(tmp_path):
    """The sixth probe: settings.json = '{}' (or without its config) kept a 2-step row for
    --steps 3; a FIFO in place of row.json or settings.json hung --resume forever."""
    import os

    from efficientad_fast.jobs.report import read_finished_run, run_settings
    from efficientad_fast.train import TrainConfig

    run = tmp_path / "board"
    run.mkdir()
    settings = run_settings({"category": "board", "model_size": "small", "config": TrainConfig(steps=2)})
    row = {"row": {"error": None, "category": "board", "steps": 2}, "latency_vs_batch": [], "settings": settings}
    (run / "row.json").write_text(json.dumps(row))
    (run / "settings.json").write_text(json.dumps(settings))
    assert read_finished_run(run, settings) == row
    for incomplete in ({}, {k: v for k, v in settings.items() if k != "config"}, {**settings, "extra": 1}):
        (run / "settings.json").write_text(json.dumps(incomplete))
        assert read_finished_run(run, settings) is None
    for name in ("settings.json", "row.json"):
        (run / name).unlink()
        os.mkfifo(run / name)
        assert read_finished_run(run, settings) is None  # at once, not waiting for a writer
        (run / name).unlink()
        (run / name).write_text(json.dumps(settings if name == "settings.json" else row))


def test_running_a_finished_run_again_keeps_its_row_aside(tmp_path):
    """The sixth probe (K42): a settings.json replaced by a folder made --resume run the run
    again, fail to write its settings and lose the finished row.json."""
    from efficientad_fast.jobs.report import read_finished_run, write_run_settings

    run = tmp_path / "board"
    run.mkdir()
    row = json.dumps({"row": {"error": None, "category": "board", "steps": 2}, "latency_vs_batch": []})
    (run / "row.json").write_text(row)
    (run / "settings.json").mkdir()
    with pytest.raises(IsADirectoryError):
        write_run_settings(run, {"steps": 3})
    assert (run / "row.json").read_text() == row and not (run / "row.earlier.json").exists()
    (run / "settings.json").rmdir()
    write_run_settings(run, {"steps": 3})
    assert not (run / "row.json").exists() and (run / "row.earlier.json").read_text() == row
    assert read_finished_run(run, {"steps": 3}) is None


def test_a_settings_file_edited_since_the_run_finished_makes_it_run_again(tmp_path):
    """The seventh probe: settings.json edited to steps 3 (or steps true, which equals 1) kept the
    2-step row for --steps 3 (or --steps 1)."""
    from efficientad_fast.jobs.report import read_finished_run, run_settings, write_finished_run, write_run_settings
    from efficientad_fast.train import TrainConfig

    run = tmp_path / "board"

    def settings(steps):
        return run_settings({"category": "board", "model_size": "small", "config": TrainConfig(steps=steps)})

    write_run_settings(run, settings(2))
    finished = write_finished_run(run, {"error": None, "category": "board", "steps": 2}, [])
    assert read_finished_run(run, settings(2)) == finished
    with pytest.raises(ValueError, match=r"finished with other settings \(steps 2 -> 3\)"):
        read_finished_run(run, settings(3))
    for steps, now in ((3, 3), (True, 1)):
        edited = settings(2)
        edited["config"]["steps"] = steps
        (run / "settings.json").write_text(json.dumps(edited))
        assert read_finished_run(run, settings(now)) is None
    (run / "settings.json").write_text(json.dumps(settings(2)))
    with pytest.raises(ValueError, match=r"steps True -> 1"):
        saved = settings(2)
        saved["config"]["steps"] = True
        (run / "settings.json").write_text(json.dumps(saved))
        (run / "row.json").write_text(
            json.dumps({**finished, "row": {"error": None, "category": "board"}, "settings": saved})
        )
        read_finished_run(run, settings(1))
    # The eighth probe: both copies of the settings edited to 3 steps; the row itself says 2.
    edited = settings(2)
    edited["config"]["steps"] = 3
    (run / "settings.json").write_text(json.dumps(edited))
    (run / "row.json").write_text(json.dumps({**finished, "settings": edited}))
    assert read_finished_run(run, settings(3)) is None


def test_a_row_naming_another_category_or_model_than_its_run_runs_again(tmp_path):
    """The seventh probe (K11, C06): a row.json edited to category "other" (or PaDiM's row to
    model "patchcore") was shown as written."""
    from efficientad_fast.jobs.report import read_finished_run, run_settings, write_finished_run, write_run_settings

    run = tmp_path / "board_padim"
    settings = run_settings({"category": "board", "model": "padim", "seed": 0})
    write_run_settings(run, settings)
    finished = write_finished_run(run, {"error": None, "category": "board", "model": "padim"}, [])
    assert read_finished_run(run, settings) == finished
    for edit in ({"category": "other"}, {"model": "patchcore"}):
        (run / "row.json").write_text(json.dumps({**finished, "row": {**finished["row"], **edit}}))
        assert read_finished_run(run, settings) is None


def test_an_efficientad_row_edited_to_name_another_model_runs_again(tmp_path):
    """The eighth and ninth probes (K35): EfficientAD runs record no ``model`` setting, so a row
    edited to model "patchcore" was kept and shown as PatchCore's."""
    from efficientad_fast.jobs.report import read_finished_run, run_settings, write_finished_run, write_run_settings

    run = tmp_path / "board"
    settings = run_settings({"category": "board", "seed": 0})
    write_run_settings(run, settings)
    finished = write_finished_run(run, {"error": None, "category": "board", "model": "efficientad"}, [])
    assert read_finished_run(run, settings) == finished
    (run / "row.json").write_text(json.dumps({**finished, "row": {**finished["row"], "model": "patchcore"}}))
    assert read_finished_run(run, settings) is None


def test_a_fifo_where_the_earlier_row_goes_is_refused_not_replaced(tmp_path):
    """The eighth probe (K43b): row.json's rename to row.earlier.json replaced a FIFO there."""
    import os
    import stat

    from efficientad_fast.jobs.report import write_run_settings

    run = tmp_path / "board"
    run.mkdir()
    (run / "row.json").write_text("{}")
    os.mkfifo(run / "row.earlier.json")
    with pytest.raises(ValueError, match="row.earlier.json is a FIFO"):
        write_run_settings(run, {"steps": 3})
    assert stat.S_ISFIFO(os.stat(run / "row.earlier.json").st_mode) and (run / "row.json").read_text() == "{}"


@pytest.mark.parametrize("damage", ["no-category", "curve-junk"])
def test_a_damaged_finished_row_runs_again(damage, tmp_path):
    """The eighth probe (K38, K40): a row.json without its category was a KeyError traceback,
    a latency_vs_batch of "junk" an unclear error."""
    from efficientad_fast.jobs.report import read_finished_run, run_settings, write_finished_run, write_run_settings

    run = tmp_path / "board"
    settings = run_settings({"category": "board", "model_size": "small"})
    write_run_settings(run, settings)
    finished = write_finished_run(run, {"error": None, "category": "board"}, [])
    assert read_finished_run(run, settings) == finished
    if damage == "no-category":
        finished["row"].pop("category")
    else:
        finished["latency_vs_batch"] = "junk"
    (run / "row.json").write_text(json.dumps(finished))
    assert read_finished_run(run, settings) is None


@pytest.mark.parametrize("taken", ["board/row.json", "report.csv"])
def test_a_folder_where_a_report_file_goes_is_refused_before_any_training(taken, tiny_board, tmp_path, capsys):
    """The tenth probe (K74, K79): a folder at row.json was found after the training, one at
    report.csv after report.md was rewritten."""
    out = tmp_path / "report"
    (out / taken).mkdir(parents=True)
    args = ["report", "--data", str(tiny_board), "--dataset", "mvtec", "--out", str(out), "--steps", "2"]
    assert main([*args, "--teacher", "random", "--penalty-images", "none", "--workers", "0", "--quiet"]) == 2
    assert f"{out / taken} is a folder" in capsys.readouterr().err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted({taken, str(Path(taken).parent)} - {"."})
