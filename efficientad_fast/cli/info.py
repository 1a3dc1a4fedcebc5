"""The ``info`` command: versions, toolkit, built kernels and the build cache."""

from __future__ import annotations

import argparse
import json
import platform
import sys


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, the CUDA toolkit, which kernels are built and where the build cache is.
    Exits 1 when the op library fails to build or load (the report still prints, with the
    error under "build"), so scripts see a failed build as failed."""
    import torch

    from .._version import __version__
    from ..op import _build
    from ..op import _library as _extension

    rows: list[tuple[str, str]] = [
        ("efficientad_fast", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none (CPU-only torch)"),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            rows.append((f"GPU {i}", f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})"))
    else:
        rows.append(("GPU", "none visible"))
    cuda_home = _build.find_cuda_home()
    rows.append(("CUDA toolkit", str(cuda_home) if cuda_home else "not found"))
    if cuda_home:
        rows.append(("nvcc", _build.tool_version([str(cuda_home / "bin" / "nvcc"), "--version"])))
    rows.append(("C++ compiler", _build.tool_version(["c++", "--version"])))
    rows.append(("ninja", _build.tool_version(["ninja", "--version"])))
    want, reason = _build.want_cuda()
    plan = _build.build_plan(jit=True, with_cuda=want)
    plan.reason = reason
    rows.append(("build variant", f"{plan.variant} ({reason})"))
    rows.append(("build cache", str(_build.build_directory(plan))))
    if plan.with_cuda:
        rows.append(("CUDA architectures", str(plan.cuda_arch_list)))
    failed = False
    if args.no_build and not _extension.is_loaded():
        built = _build.built_library(plan)
        rows.append(("built", f"yes: {built[0]}" if built else "not yet (builds on first use)"))
    else:
        try:
            loaded = _extension.load_extension()
            rows.append(("loaded", f"{loaded['how']}: {loaded['path']}"))
            rows.append(("CPU kernel", "yes" if _extension.has_kernel("CPU") else "no"))
            cuda = _extension.has_kernel("CUDA")
            archs = (loaded.get("plan") or {}).get("cuda_arch_list")
            rows.append(("CUDA kernel", f"yes ({archs})" if cuda and archs else ("yes" if cuda else "no")))
        except Exception as exc:  # report, don't crash: info is what people run when it breaks
            rows.append(("build", f"FAILED: {exc}"))
            failed = True
    if args.json:
        print(json.dumps(dict(rows), indent=2))
    else:
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    if failed:  # the JSON on stdout stays whole; say it on stderr too, for logs
        print("efficientad-fast info: the op library failed to build (see 'build' above)", file=sys.stderr)
    return 1 if failed else 0


def _add_info_parser(subparsers) -> None:
    """Register the ``info`` command."""
    info = subparsers.add_parser(
        "info", help="versions, toolkit, built kernels and build cache", description=cmd_info.__doc__
    )
    info.add_argument("--no-build", action="store_true", help="report without building the extension")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)
