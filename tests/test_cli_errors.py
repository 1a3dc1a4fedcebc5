"""The command line's expected errors: every command answers a bad argument with exactly one
``efficientad-fast <command>: error: ...`` line and exit code 2, no traceback, and creates no
output folder; --debug shows the traceback; unexpected errors keep theirs."""

from __future__ import annotations

import pytest
from cli_checks import PINNED, one_error_line

from efficientad_fast.cli import main
from efficientad_fast.data import make_synthetic
from efficientad_fast.testing import random_model

TRAIN = ["train", "--dataset", "mvtec", "--category", "board", "--workers", "0", "--quiet", *PINNED]
EVAL = ["eval", "--model", "{model}", "--dataset", "mvtec", "--category", "board", "--workers", "0", "--quiet"]
PREDICT = ["predict", "--model", "{model}", "--quiet"]
REPORT = ["report", "--dataset", "mvtec", "--steps", "1", "--workers", "0", "--quiet", *PINNED]
EXPORT = ["export", "--model", "{model}", "--format", "onnx"]
DEMO = ["demo", "--steps", "1", "--quiet", *PINNED]
DISTILL = ["distill-teacher", "--steps", "1", "--quiet"]

# One bad argument each. {out}: a folder that must not be created; {blocked}: a path under a
# regular file, which cannot be created (the read-only folder of any user, root included).
CASES = {
    "train-steps-0": [*TRAIN, "--data", "{data}", "--out", "{out}", "--steps", "0"],
    "train-batch-size-0": [*TRAIN, "--data", "{data}", "--out", "{out}", "--batch-size", "0"],
    "train-image-size-100": [*TRAIN, "--data", "{data}", "--out", "{out}", "--image-size", "100"],
    "train-lr-nan": [*TRAIN, "--data", "{data}", "--out", "{out}", "--lr", "nan"],
    "train-missing-data": [*TRAIN, "--data", "{root}/nope", "--out", "{out}"],
    "train-missing-category": [*TRAIN, "--data", "{data}", "--out", "{out}", "--category", "nope"],
    "train-missing-teacher": [*TRAIN, "--data", "{data}", "--out", "{out}", "--teacher", "{root}/nope.pt"],
    "train-unwritable-out": [*TRAIN, "--data", "{data}", "--out", "{blocked}"],
    "eval-batch-size-0": [*EVAL, "--data", "{data}", "--out", "{out}", "--batch-size", "0"],
    "eval-missing-model": [*EVAL, "--data", "{data}", "--out", "{out}", "--model", "{root}/nope.pt"],
    "eval-missing-data": [*EVAL, "--data", "{root}/nope", "--out", "{out}"],
    "eval-unwritable-out": [*EVAL, "--data", "{data}", "--out", "{blocked}"],
    "predict-batch-size-0": [*PREDICT, "{image}", "--out", "{out}", "--batch-size", "0"],
    "predict-ray-workers-0": [*PREDICT, "{image}", "--out", "{out}", "--engine", "ray", "--workers", "0"],
    "predict-threshold-nan": [*PREDICT, "{image}", "--out", "{out}", "--threshold", "nan"],
    "predict-image-size-100": [*PREDICT, "{image}", "--out", "{out}", "--image-size", "100"],
    "predict-missing-image": [*PREDICT, "{root}/nope.png", "--out", "{out}"],
    "predict-not-a-model": [*PREDICT, "{image}", "--out", "{out}", "--model", "{image}"],
    "predict-unwritable-out": [*PREDICT, "{image}", "--out", "{blocked}"],
    "report-steps-0": [*REPORT, "--data", "{data}", "--out", "{out}", "--steps", "0"],
    "report-no-categories": [*REPORT, "--data", "{root}", "--out", "{out}"],
    "report-unwritable-out": [*REPORT, "--data", "{data}", "--out", "{blocked}"],
    "export-image-size-100": [*EXPORT, "--out", "{out}/m.onnx", "--image-size", "100"],
    "export-missing-model": [*EXPORT, "--out", "{out}/m.onnx", "--model", "{root}/nope.pt"],
    "export-unwritable-out": [*EXPORT, "--out", "{blocked}/m.onnx"],
    "export-out-ends-with-slash": [*EXPORT, "--out", "{out}/"],  # the fourteenth probe: a file named "out"
    "export-out-ends-with-dot": [*EXPORT, "--out", "{out}/."],  # the fifteenth probe: the same
    "distill-teacher-out-ends-with-dot-dot": [*DISTILL, "--out", "{out}/sub/.."],
    "quantize-out-ends-with-slash": [
        "quantize",
        "--model",
        "{model}",
        "--calibration-data",
        "{data}",
        "--out",
        "{out}/",
    ],
    "demo-steps-0": [*DEMO, "--out", "{out}", "--steps", "0"],
    "demo-unwritable-out": [*DEMO, "--out", "{blocked}"],
    "distill-teacher-steps-0": [*DISTILL, "--out", "{out}/t.pt", "--steps", "0"],
    "distill-teacher-missing-images": [*DISTILL, "--out", "{out}/t.pt", "--images", "{root}/nope"],
    "distill-teacher-unwritable-out": [*DISTILL, "--out", "{blocked}/t.pt"],
    "bench-batch-size-0": ["bench", "--device", "cpu", "--batch-sizes", "0", "--json", "{out}/b.json"],
    "bench-image-size-100": ["bench", "--device", "cpu", "--image-size", "100", "--json", "{out}/b.json"],
    "fetch-teacher-missing-file": ["fetch-teacher", "--from", "{root}/nope.zip", "--quiet"],
    "fetch-imagenette-missing-file": ["fetch-imagenette", "--from", "{root}/nope.tgz", "--quiet"],
    # refused by the parser (argparse would print its usage block first)
    "predict-batch-size-abc": [*PREDICT, "{image}", "--out", "{out}", "--batch-size", "abc"],
    "predict-precision-int4": [*PREDICT, "{image}", "--out", "{out}", "--precision", "int4"],
    "train-no-out": [*TRAIN, "--data", "{data}"],
    "train-unknown-option": [*TRAIN, "--data", "{data}", "--out", "{out}", "--stpes", "3"],
    "watch-kofn-k-0": ["watch", "--model", "{model}", "--source", "{image}", "--out", "{out}", "--kofn-k", "0"],
    "bench-runs-inf": ["bench", "--device", "cpu", "--runs", "inf", "--json", "{out}/b.json"],
    # values that start with "-", which argparse took for options ("expected one argument")
    "predict-threshold-minus-inf": [*PREDICT, "{image}", "--out", "{out}", "--threshold", "-inf"],
    "watch-fps-minus-inf": ["watch", "--model", "{model}", "--source", "{image}", "--out", "{out}", "--fps", "-inf"],
    "bench-batch-sizes-minus-1-2": ["bench", "--device", "cpu", "--batch-sizes", "-1,2", "--json", "{out}/b.json"],
}


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    data = make_synthetic(
        root / "data",
        seed=1,
        categories=("board",),
        n_train=4,
        n_test_good=1,
        n_test_defect_per_type=1,
        defects=("hole",),
    )
    model = root / "model.pt"
    random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).save(model)
    (root / "a_file").write_text("a file, not a folder")
    image = next((data / "board" / "test" / "good").iterdir())
    return {"root": root, "data": data, "model": model, "image": image, "blocked": root / "a_file" / "out"}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_one_error_line_and_creates_nothing(case, files, tmp_path, capsys):
    out = tmp_path / "out"
    args = [arg.format(out=out, **files) for arg in CASES[case]]
    assert main(args) == 2
    one_error_line(args[0], capsys.readouterr().err)
    assert not out.exists()
    assert not (files["root"] / "a_file" / "out").exists()


def test_messages_say_what_is_wrong(files, tmp_path, capsys):
    out = str(tmp_path / "out")
    expect = {
        "predict-batch-size-0": "argument --batch-size: must be >= 1, got 0",
        "predict-ray-workers-0": "argument --ray-actors/--workers: must be >= 1, got 0",
        "predict-threshold-nan": "argument --threshold: must be a finite number, got nan",
        "train-image-size-100": "at least 256x256",
        "train-unwritable-out": "cannot write to the output folder",
        "predict-missing-image": "no such image or folder",
        "report-no-categories": "no categories",
        "predict-batch-size-abc": "argument --batch-size: must be a whole number >= 1, got 'abc'",
        "train-no-out": "the following arguments are required: --out",
        "train-unknown-option": "unrecognized arguments: --stpes 3",
        "watch-kofn-k-0": "argument --kofn-k: must be >= 1, got 0",
        "predict-threshold-minus-inf": "argument --threshold: must be a finite number, got -inf",
        "watch-fps-minus-inf": "argument --fps: must be a finite number > 0, got -inf",
        "bench-batch-sizes-minus-1-2": "argument --batch-sizes: must be a whole number >= 1, got '-1,2'",
        "export-out-ends-with-dot": f"--out {out}/. names a folder, but export writes one file: "
        f"give its name (e.g. {out}/model.onnx)",
        "distill-teacher-out-ends-with-dot-dot": f"(e.g. {out}/model.pt)",
    }
    for case, text in expect.items():
        assert main([arg.format(out=out, **files) for arg in CASES[case]]) == 2
        assert text in capsys.readouterr().err, case


def test_a_folder_out_suggests_the_suffix_of_the_export_format(files, tmp_path, capsys):
    args = [arg.format(out=tmp_path, **files) for arg in CASES["export-out-ends-with-slash"]]
    for fmt, suffix in (("openvino", ".xml"), ("aoti", ".pt2")):
        assert main([*args, "--format", fmt]) == 2
        assert f"(e.g. {tmp_path}/model{suffix})" in capsys.readouterr().err, fmt


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, files, tmp_path, capsys):
    args = [arg.format(out=tmp_path / "out", **files) for arg in CASES["predict-image-size-100"]]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "efficientad-fast predict: error: " in err and "256" in err


def test_an_unexpected_error_keeps_its_traceback(files, tmp_path, monkeypatch):
    from efficientad_fast import jobs

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(jobs, "predict_files", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["predict", "--model", str(files["model"]), str(files["image"]), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("extra", ["distill", "ray", "video", "openvino"])
def test_a_missing_optional_package_names_the_extra_that_installs_it(extra):
    from efficientad_fast._optional import require

    with pytest.raises(ImportError, match=rf"efficientad_fast\[{extra}\]") as info:
        require("efficientad_fast_no_such_module.sub", extra)
    assert "'efficientad_fast_no_such_module'" in str(info.value)


def test_ctrl_c_while_the_commands_load_is_one_line(monkeypatch, capsys):
    """The fourteenth probe (K05): SIGINT two seconds after start, while build_parser imported
    the commands' modules, printed a 33-line KeyboardInterrupt traceback."""
    import efficientad_fast.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err.strip() == "efficientad-fast: interrupted while starting; nothing was done"


def test_ctrl_c_while_torch_loads_is_one_line_in_the_command_only(tmp_path):
    """The fifteenth probe: Ctrl-C in the first second or so (while ``import efficientad_fast``
    loads torch) printed a 21-41-line traceback. A program that imports the package keeps
    its KeyboardInterrupt."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    # A sitecustomize that interrupts the import of torch, as Ctrl-C at that moment would.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n\n"
        "sys.meta_path.insert(0, Interrupt())\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    run = dict(capture_output=True, text=True, cwd=repo, env=env, timeout=120)
    command = subprocess.run([sys.executable, "-m", "efficientad_fast", "info"], **run)
    assert command.returncode == 130
    assert command.stderr.strip() == "efficientad-fast: interrupted while starting; nothing was done"
    library = subprocess.run([sys.executable, "-c", "import efficientad_fast"], **run)
    assert library.returncode != 0 and "KeyboardInterrupt" in library.stderr
