"""The ``quantize`` command: INT8 networks for the CPU, calibrated on normal images."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import _add_image_size_arg, _check_output_file, at_least


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a saved model's networks to INT8 for the CPU (PyTorch 2 export quantization with
    torchao's x86 Inductor recipe, compiled by Inductor so oneDNN runs int8 convolutions; the
    scoring stays the fused op in float32), calibrated on a folder of normal images, and write
    it to --out, which then loads with precision int8 (or auto) without the images. Prints the
    accuracy cost (the largest map difference to fp32 on those images, as a fraction of the
    fp32 map's range) beside the batch-1 time of fp32 and int8 on this machine."""
    from .._checkpoint import writable_folder
    from ..deploy.openvino import calibration_images
    from ..deploy.quantize import quantize
    from ..model_file import load
    from ..precision import measure_precisions

    _check_output_file(args.out, args.model)
    start = time.perf_counter()
    size = (args.image_size, args.image_size) if isinstance(args.image_size, int) else args.image_size
    model = load(args.model, map_location="cpu")
    images = calibration_images(args.calibration_data, size, args.calibration_size)
    quantized = quantize(model, images, batch_size=args.batch_size)
    reference, int8 = model.predict(images).anomaly_map, quantized.predict(images).anomaly_map
    diff = float((int8 - reference).abs().max()) / max(float(reference.max() - reference.min()), 1e-12)
    times = measure_precisions(quantized, batch_size=1, image_size=size, names=["fp32", "int8"])["times_ms"]
    writable_folder(Path(args.out).parent)
    quantized.save(args.out)
    print(
        f"int8: {args.out}  ({time.perf_counter() - start:.0f} s; calibrated on {images.shape[0]} images of "
        f"{args.calibration_data})"
    )
    print(
        f"accuracy: map within {diff:.3g} of the fp32 map's range on those images; speed at batch 1 here: "
        f"fp32 {times['fp32']:.0f} ms, int8 {times['int8']:.0f} ms ({times['fp32'] / times['int8']:.1f}x)"
    )
    return 0


def _add_quantize_parser(subparsers) -> None:
    """Register the ``quantize`` command."""
    p = subparsers.add_parser(
        "quantize", help="INT8 networks for the CPU, calibrated on normal images", description=cmd_quantize.__doc__
    )
    p.add_argument("--model", required=True, help="model file written by train (or EfficientAD.save)")
    p.add_argument(
        "--calibration-data",
        required=True,
        metavar="DIR",
        help="folder of normal images (searched recursively), ideally held-out training images; "
        "resized to --image-size",
    )
    p.add_argument(
        "--calibration-size",
        type=at_least(1),
        default=64,
        metavar="N",
        help="use at most N of those images, evenly spaced (default 64)",
    )
    p.add_argument("--out", required=True, help="output model file (e.g. model_int8.pt)")
    _add_image_size_arg(p)
    p.add_argument("--batch-size", type=at_least(1), default=8, help="calibration batch size (default 8)")
    p.set_defaults(func=cmd_quantize)
