"""Shared pytest fixtures. Not autouse: a test module opts in, e.g. with
``pytestmark = pytest.mark.usefixtures("op_library", "seeded")``, so tests that do not
need the compiled op never trigger its build."""

import pytest
import torch

import efficientad_fast


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
