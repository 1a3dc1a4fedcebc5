"""Command line: ``efficientad-fast <command>`` (also ``python -m efficientad_fast``). Each
command lives in its own module with its ``cmd_*`` function and its ``_add_*_parser``; what
they share is in ``_common``."""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path

from . import bench, demo, distill_teacher, eval, export, fetch, info, predict, quantize, report, train, watch
from ._common import OneLineParser, UsageError, _BadArguments, _check_arguments, _error, is_out_of_memory, out_of_memory


def build_parser() -> argparse.ArgumentParser:
    """The ``efficientad-fast`` parser: one subcommand per job, each registered by its
    ``_add_*_parser`` beside the ``cmd_*`` function it calls."""
    parser = OneLineParser(
        prog="efficientad-fast", description="Fast EfficientAD anomaly detection over fused C++/CUDA kernels."
    )
    debug_help = "show the traceback of an error, not only its one-line message"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (
        info._add_info_parser,
        train._add_train_parser,
        eval._add_eval_parser,
        predict._add_predict_parser,
        bench._add_bench_parser,
        report._add_report_parser,
        demo._add_demo_parser,
        distill_teacher._add_distill_teacher_parser,
        export._add_export_parser,
        quantize._add_quantize_parser,
        fetch._add_fetch_teacher_parser,
        fetch._add_fetch_imagenette_parser,
        fetch._add_fetch_backbone_parser,
        watch._add_watch_parser,
    ):
        add(sub)
    for command in sub.choices.values():  # --debug after the command too; SUPPRESS keeps the one before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors of the user's input or machine, which the message explains: one line, exit 2.
    OSError covers the machine's (a full disk, a vanished network share); the file functions
    here raise it with the path. Anything else is a bug and keeps its traceback."""
    from ..downloads import NotCachedError
    from ..op._build import BuildError

    return (
        _BadArguments,
        NotCachedError,
        BuildError,
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        OSError,
        ImportError,
    )


def _one_line_warning(command: str):
    """``warnings.showwarning`` for a command: this package's warnings as one line
    (``efficientad-fast COMMAND: warning: ...``), not Python's two with a source line; other
    packages' warnings as Python shows them (their file and line say where to look)."""
    package = str(Path(__file__).resolve().parents[1])
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(Path(filename).resolve()).startswith(package):
            print(f"efficientad-fast {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    """Run one command: exit 0 (done), 1 (done, but nothing could be scored or a job failed),
    2 (an error, in one line), 130 (Ctrl-C), 143 (SIGTERM) or 129 (SIGHUP), after the command kept what it
    had finished."""
    from .._signals import STARTUP_INTERRUPTED, terminate_as_interrupt

    try:
        args = build_parser().parse_args(argv)
    except UsageError as refused:  # a bad or missing option: one line (argparse prints its usage)
        print(refused, file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while the commands' modules import (seconds): nothing begun yet
        print(f"\n{STARTUP_INTERRUPTED}", file=sys.stderr)
        return 130
    with terminate_as_interrupt() as terminated, warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args.command)
        try:
            _check_arguments(args)
            status = args.func(args)
        except _expected_errors() as exc:
            if args.debug:
                traceback.print_exc()
            status = _error(args, exc)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise  # a bug: its traceback
            if args.debug:
                traceback.print_exc()
            status = out_of_memory(args, exc)
        except KeyboardInterrupt as stop:  # the command kept what it finished; its message says what
            if args.debug:
                traceback.print_exc()
            print(f"\nefficientad-fast {args.command}: {str(stop) or 'interrupted'}", file=sys.stderr)
            status = 130
    return 128 + terminated[0] if terminated[0] and status == 130 else status


if __name__ == "__main__":
    sys.exit(main())
