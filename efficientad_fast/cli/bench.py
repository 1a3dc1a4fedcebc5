"""The ``bench`` command: the paper's timing protocol."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import at_least


def cmd_bench(args: argparse.Namespace) -> int:
    """Time EfficientAD by the paper's protocol: warm-up runs, then the mean over timed runs,
    from the image on the host until the map is back on the host (and a GPU-resident
    variant), per model size, batch size, dtype and CUDA graphs on/off. Prints a table and
    writes JSON with the machine, versions and settings."""
    from .._checkpoint import writable_folder
    from ..benchmark import format_table, run_benchmark

    for path in (args.json, args.markdown):
        if path:
            writable_folder(Path(path).parent)
    graphs = {"off": (False,), "on": (True,), "both": (False, True), None: None}[args.cuda_graphs]
    result = run_benchmark(
        model_sizes=args.model_size,
        batch_sizes=args.batch_sizes,
        dtypes=args.dtypes,
        device=args.device,
        image_size=args.image_size,
        paths=args.paths,
        cuda_graphs=graphs,
        compile=args.compile,
        warmup=args.warmup,
        runs=args.runs,
        model_file=args.model,
        op=args.op,
        op_batches=args.op_batches,
        op_layouts=args.op_layouts,
        protocol_name=args.protocol,
        json_path=args.json,
        log=(lambda *a, **k: None) if args.quiet else print,
    )
    table = format_table(result)
    print("\n" + table)
    if args.markdown:
        from .._checkpoint import atomic_write_text

        atomic_write_text(args.markdown, table + "\n")
    if args.json:
        print(f"\nwritten: {args.json}")
    failed = [t["name"] for t in result["timings"] if t["error"]]
    return 1 if failed and len(failed) == len(result["timings"]) else 0


def _add_bench_parser(subparsers) -> None:
    """Register the ``bench`` command."""
    from ..timing_protocol import DEFAULT_PROTOCOL, OP_LAYOUTS, PROTOCOLS

    be = subparsers.add_parser(
        "bench", help="latency and throughput by the paper's timing protocol", description=cmd_bench.__doc__
    )
    be.add_argument("--model-size", nargs="+", choices=("small", "medium"), default=["small"])
    be.add_argument("--model", default=None, help="time a saved model instead of a random one of --model-size")
    be.add_argument(
        "--batch-sizes",
        type=at_least(1),
        nargs="+",
        default=[1, 16],
        help="batch sizes (default 1 16: latency at 1, throughput at 16)",
    )
    be.add_argument(
        "--precision",
        "--dtypes",
        dest="dtypes",
        nargs="+",
        choices=("fp32", "fp16", "bf16", "int8", "all"),
        default=None,
        help="precisions of the networks (default: fp32 fp16 on a GPU, fp32 bf16 int8 on a CPU; all: "
        "every one the device runs): the table shows which is fastest on this machine. int8 uses "
        "the --model file's calibration (a random model is calibrated on random images)",
    )
    be.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    be.add_argument("--image-size", type=int, default=256, help="square image size (>= 256)")
    be.add_argument(
        "--paths",
        nargs="+",
        choices=("host", "device"),
        default=None,
        help="host: image on the host -> map on the host (the paper's clock); device: "
        "GPU-resident (default: both on a GPU, host on a CPU)",
    )
    be.add_argument(
        "--cuda-graphs",
        choices=("off", "on", "both"),
        default=None,
        help="replay the computation as one CUDA graph (default: both on a GPU, off on a CPU)",
    )
    be.add_argument("--compile", action="store_true", help="also wrap the networks in torch.compile")
    protocols = "; ".join(p.describe() for p in PROTOCOLS.values())
    be.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default=DEFAULT_PROTOCOL,
        help=f"how many warm-up and timed runs (default {DEFAULT_PROTOCOL}) -- {protocols}",
    )
    be.add_argument("--warmup", type=at_least(0), default=None, help="warm-up runs (default: the protocol's)")
    be.add_argument("--runs", type=at_least(1), default=None, help="timed runs (default: the protocol's)")
    be.add_argument("--op", action="store_true", help="also time the fused op alone (with bytes moved and GB/s)")
    be.add_argument("--op-batches", type=at_least(1), nargs="+", default=[1, 16, 64])
    be.add_argument(
        "--op-layouts",
        nargs="+",
        choices=tuple(OP_LAYOUTS),
        default=list(OP_LAYOUTS),
        help="memory formats of the op's features (default: both; channels_last is what the model feeds it)",
    )
    be.add_argument("--json", default=None, help="write the results here (JSON)")
    be.add_argument("--markdown", default=None, help="write the table here (Markdown)")
    be.add_argument("--quiet", action="store_true", help="print only the final table")
    be.set_defaults(func=cmd_bench)
