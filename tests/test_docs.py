"""The manual shows what the code does today: docs/cli.md's help section is what --help prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_page_holds_every_current_help(monkeypatch):
    spec = importlib.util.spec_from_file_location("cli_help", ROOT / "docs" / "cli_help.py")
    assert spec is not None and spec.loader is not None
    cli_help = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli_help)
    monkeypatch.setenv("COLUMNS", "100")
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page.endswith(cli_help.render()), "docs/cli.md is out of date: run python docs/cli_help.py"
