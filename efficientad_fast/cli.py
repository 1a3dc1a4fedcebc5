"""Command line: ``efficientad-fast <command>`` (also ``python -m efficientad_fast``)."""

from __future__ import annotations

import argparse
import json
import platform
import sys


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, the CUDA toolkit, which kernels are built and where the build cache is."""
    import torch

    from . import __version__, _build, _extension

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
        rows.append(("CUDA architectures", plan.cuda_arch_list))
    if args.no_build and not _extension.is_loaded():
        lib = _build.build_directory(plan) / f"{_build.EXTENSION_NAME}_{plan.variant}.so"
        rows.append(("built", f"yes: {lib}" if lib.is_file() else "not yet (builds on first use)"))
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
    if args.json:
        print(json.dumps(dict(rows), indent=2))
    else:
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientad-fast",
        description="Fast EfficientAD anomaly detection over fused C++/CUDA kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    info = sub.add_parser("info", help="versions, toolkit, built kernels and build cache",
                          description=cmd_info.__doc__)
    info.add_argument("--no-build", action="store_true", help="report without building the extension")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
