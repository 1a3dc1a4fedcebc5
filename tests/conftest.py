"""Shared pytest fixtures. Not autouse: a test module opts in, e.g. with
``pytestmark = pytest.mark.usefixtures("op_library", "seeded")``, so tests that do not
need the compiled op never trigger its build."""

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
        [sys.executable, "-m", "efficientad_fast", "export", "--model", str(model_path),
         "--format", "aoti", "--out", str(package_path)],
        capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert package_path.is_file()
    return model_path, package_path
