"""The ``export`` command: AOTInductor, ONNX or OpenVINO files of a model's predict."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import _add_image_size_arg, _BadArguments, _check_output_file, at_least


def _check_export_options(args: argparse.Namespace) -> None:
    """export's --precision and --calibration-data: OpenVINO options, int8 needs images."""
    if args.format != "openvino":
        for name in ("precision", "calibration_data", "calibration_size"):
            if getattr(args, name) is not None:
                raise _BadArguments(f"--{name.replace('_', '-')} is an option of --format openvino")
    elif args.precision == "int8" and args.calibration_data is None:
        raise _BadArguments(
            "--precision int8 needs --calibration-data DIR: normal images to calibrate the "
            "quantization on (held-out training images)"
        )
    elif args.precision != "int8" and (args.calibration_data is not None or args.calibration_size is not None):
        raise _BadArguments("--calibration-data and --calibration-size are for --precision int8")


def cmd_export(args: argparse.Namespace) -> int:
    """Export a saved model's predict (images in, map and score out, dynamic batch) as an
    AOTInductor package (--format aoti, .pt2, for C++ hosts with libtorch and our op
    library), an ONNX model (--format onnx, scoring in standard ONNX ops) or an OpenVINO IR
    (--format openvino, .xml + .bin, fp32, fp16 or NNCF-quantized int8)."""
    from ..deploy.export import check_opset, export_aoti, export_onnx
    from ..model_file import load

    if args.format == "onnx":
        check_opset(args.opset)
    _check_output_file(args.out, args.model)
    if args.format == "openvino":  # the IR's weights go beside the .xml
        weights = str(Path(args.out).with_suffix(".bin"))
        _check_output_file(weights, args.model, label=f"--out {args.out} writes its weights to ")
    start = time.perf_counter()
    model = load(args.model, map_location="cpu").float()
    if args.format == "aoti":
        path = export_aoti(model, args.out, image_size=args.image_size, device=args.device)
    elif args.format == "openvino":
        from ..deploy.openvino import DEFAULT_CALIBRATION_SIZE, export_openvino

        path = export_openvino(
            model,
            args.out,
            image_size=args.image_size,
            precision=args.precision or "fp32",
            calibration_data=args.calibration_data,
            calibration_size=args.calibration_size or DEFAULT_CALIBRATION_SIZE,
        )
    else:
        path = export_onnx(model, args.out, image_size=args.image_size, opset=args.opset)
    height, width = (args.image_size, args.image_size) if isinstance(args.image_size, int) else args.image_size
    print(
        f"{args.format}: {path}  ({time.perf_counter() - start:.1f} s; input float32 (N, 3, "
        f"{height}, {width}) in [0, 1])"
    )
    return 0


def _add_export_parser(subparsers) -> None:
    """Register the ``export`` command."""
    from ..deploy.export import FORMATS
    from ..deploy.openvino import DEFAULT_CALIBRATION_SIZE, PRECISIONS

    p = subparsers.add_parser(
        "export",
        help="export predict as an AOTInductor package, ONNX model or OpenVINO IR",
        description=cmd_export.__doc__,
    )
    p.add_argument("--model", required=True, help="model file written by train (or EfficientAD.save)")
    p.add_argument(
        "--format",
        required=True,
        choices=(*FORMATS, "openvino"),
        help="aoti (.pt2), onnx (.onnx) or openvino (.xml, weights in the .bin beside it; "
        "pip install -e '.[openvino]')",
    )
    p.add_argument("--out", required=True, help="output file (.pt2 for aoti, .xml for openvino)")
    _add_image_size_arg(p)
    p.add_argument(
        "--opset",
        type=int,
        default=18,
        help="ONNX opset (default 18; 18 to the newest the installed onnx knows; onnx only)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="device the AOTInductor package runs on (aoti only; cuda needs a GPU here)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="openvino only: fp32 (default; equal to predict), fp16 (weights stored in float16) or "
        "int8 (NNCF post-training quantization of the networks; needs --calibration-data)",
    )
    p.add_argument(
        "--calibration-data",
        metavar="DIR",
        default=None,
        help="int8 only: folder of normal images (searched recursively), ideally held-out training "
        "images; resized to --image-size",
    )
    p.add_argument(
        "--calibration-size",
        type=at_least(1),
        default=None,
        metavar="N",
        help=f"int8 only: use at most N of those images, evenly spaced (default {DEFAULT_CALIBRATION_SIZE})",
    )
    p.set_defaults(func=cmd_export, check=_check_export_options)
