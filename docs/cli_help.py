"""Regenerate (or --check) the "Help of every command" section of docs/cli.md from the parser,
so the manual shows what --help prints today.

    python docs/cli_help.py          # rewrite the section
    python docs/cli_help.py --check  # exit 1 when the page is out of date
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PAGE = Path(__file__).with_name("cli.md")
HEADING = "## Help of every command"
WIDTH = "100"


def render() -> str:
    """The section: every command's --help at COLUMNS=100, as `python -m efficientad_fast
    COMMAND --help` prints it."""
    os.environ["COLUMNS"] = WIDTH  # argparse's formatter reads the width from here
    from efficientad_fast.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [
        HEADING,
        "",
        f"Generated with `python docs/cli_help.py` (`python -m efficientad_fast COMMAND --help`, `COLUMNS={WIDTH}`).",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, command in sub.choices.items():
        parts += ["", f"### efficientad-fast {name}", "", "```text", command.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = PAGE.read_text()
    head = text[: text.index(HEADING)]
    page = head + render()
    if check:
        if page != text:
            print(f"{PAGE} is out of date: run python docs/cli_help.py", file=sys.stderr)
            return 1
        return 0
    tmp = PAGE.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(PAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
