"""Shared pytest fixtures. Not autouse: a test module opts in, e.g. with
``pytestmark = pytest.mark.usefixtures("op_library", "seeded")``, so tests that do not
need the compiled op never trigger its build."""

import importlib
from pathlib import Path

import pytest
import torch

import efficientad_fast
from efficientad_fast.testing import random_model


@pytest.fixture(scope="session")
def op_library():
    """Load (JIT-building on first use, ~40 s) the op library once per session.

    torch.compile and torch.export need the op registered before tracing starts.
    """
    return efficientad_fast.load_extension()


@pytest.fixture
def bench_module(monkeypatch):
    """``bench_module("parts_line")``: a script of bench/, imported as a module. bench/ goes on
    sys.path for this test only, as the scripts import their siblings (``_rows``) by name."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    return importlib.import_module


@pytest.fixture
def seeded():
    """Same random values in every run, whatever the test order or selection."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def calibrated_model():
    """A seeded EfficientAD-S (random weights) with teacher statistics, quantiles and decision
    thresholds set (so exports carry thresholds)."""
    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).eval()
    model.set_thresholds(image=0.25, pixel=0.1, source="test fixture")
    return model


@pytest.fixture(scope="session")
def aoti_package(calibrated_model, tmp_path_factory):
    """``efficientad-fast export --format aoti`` of ``calibrated_model`` (256 px), made once
    per session (AOTInductor compiles for ~30 s on 2 cores): (model file, package path)."""
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path_factory.mktemp("aoti")
    model_path, package_path = folder / "model.pt", folder / "model.pt2"
    calibrated_model.save(model_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "efficientad_fast",
            "export",
            "--model",
            str(model_path),
            "--format",
            "aoti",
            "--out",
            str(package_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert package_path.is_file()
    return model_path, package_path


@pytest.fixture(scope="session")
def tiny_board(tmp_path_factory):
    """The synthetic ``board`` category, tiny: 4 training images, one normal and one defective
    (a hole) test image; read-only (tests that change data make their own)."""
    from efficientad_fast.data import make_synthetic

    return make_synthetic(
        tmp_path_factory.mktemp("tiny") / "data",
        seed=1,
        categories=("board",),
        n_train=4,
        n_test_good=1,
        n_test_defect_per_type=1,
        defects=("hole",),
    )


@pytest.fixture(scope="session")
def board_dataset(tmp_path_factory):
    """The synthetic ``board`` category, small: 8 training images, 4 normal and 4 defective
    test images (one per defect type)."""
    from efficientad_fast.data import make_synthetic

    return make_synthetic(
        tmp_path_factory.mktemp("synthetic") / "data",
        seed=2,
        categories=("board",),
        n_train=8,
        n_test_good=4,
        n_test_defect_per_type=1,
        defects=("hole", "stain", "missing_part", "extra_part"),
    )


@pytest.fixture(scope="session")
def board_trained(board_dataset, tmp_path_factory):
    """EfficientAD-S with the shipped teacher, trained 3 steps on ``board_dataset`` and
    calibrated (quantiles, thresholds, INT8 ranges) on 2 held-out training images:
    (model, model file)."""
    from efficientad_fast.jobs import train_category
    from efficientad_fast.train import TrainConfig

    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(steps=3, workers=0, progress=False, checkpoint_every=0)
    model, _ = train_category(
        board_dataset,
        "mvtec",
        "board",
        out,
        config=config,
        teacher="distilled",
        penalty_images="none",
        validation_fraction=0.25,
    )
    return model.eval(), out / "model.pt"
