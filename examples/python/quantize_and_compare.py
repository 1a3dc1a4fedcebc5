"""Quantize a model to INT8 on a few normal images and compare it with fp32.

Shows ``ead.quantize``: post-training INT8 quantization of the three networks for the CPU,
calibrated on normal images (a few dozen training images are enough; the scoring tail stays
the fused op in float32). It then compares the INT8 copy with the fp32 model on the same
images:

- the largest difference between their anomaly maps, as a fraction of the fp32 map's range
  (max - min of each fp32 map; ``ead.load(precision="auto")`` accepts a precision within 0.1);
- whether their labels (anomalous / normal at ``--sensitivity``) agree, image by image;
- batch-1 latency of ``predict``: the median of ``--runs`` timed calls each, after a warm-up.

and saves the INT8 model (``model.save``: written under a temporary name and renamed), which
``ead.load(path, precision="int8")`` loads with no calibration images.

Run it (on the demo's data: ``efficientad-fast demo`` writes demo_out/):

    python examples/python/quantize_and_compare.py --model demo_out/board/model.pt \\
        --calibration demo_out/data/board/train/good --out model_int8.pt \\
        [--compare demo_out/data/board/test]

The first quantization compiles the INT8 networks with Inductor (about a minute on 2 cores).
Exit codes: 0 done, 2 bad input (missing model or folder, no images, an unreadable image, a
bad option), 130 interrupted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="INT8-quantize an EfficientAD model on normal images, compare it with fp32 "
        "(maps, labels, batch-1 latency) and save it."
    )
    parser.add_argument("--model", required=True, help="fp32 model file written by `train` or model.save")
    parser.add_argument(
        "--calibration", required=True, help="folder of normal images to calibrate on (searched recursively)"
    )
    parser.add_argument("--out", default="model_int8.pt", help="INT8 model file to write (default: model_int8.pt)")
    parser.add_argument(
        "--compare", default=None, help="folder of images to compare fp32 and INT8 on (default: the calibration images)"
    )
    parser.add_argument(
        "--max-images", type=int, default=32, help="use at most this many images of each folder (default 32)"
    )
    parser.add_argument(
        "--sensitivity",
        type=float,
        default=0.5,
        help="in [0, 1], for the labels compared (default 0.5: the calibrated thresholds)",
    )
    parser.add_argument(
        "--image-size", type=int, default=256, help="images are resized to this square size, >= 256 (default 256)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed batch-1 calls per precision (default 5)")
    return parser.parse_args(argv)


def find_images(folder: Path, what: str, limit: int) -> list[Path]:
    """Up to ``limit`` PNG/JPEG files under ``folder``, sorted."""
    if not folder.exists():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"--{what} must be a folder, got the file {folder}")
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return paths[:limit]


def check_args(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """Everything that can be checked before loading the model: (calibration, compare) paths."""
    if args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    if args.runs < 1:
        raise ValueError(f"--runs must be >= 1, got {args.runs}")
    if not 0.0 <= args.sensitivity <= 1.0:
        raise ValueError(f"--sensitivity must be in [0, 1], got {args.sensitivity}")
    if args.image_size < 256:
        raise ValueError(f"--image-size must be >= 256 (the networks need 256 px), got {args.image_size}")
    model, out = Path(args.model), Path(args.out)
    if not model.is_file():
        raise FileNotFoundError(f"model file not found: {model}")
    if out.is_dir():
        raise ValueError(f"--out must be a file name, got the folder {out}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder for --out not found: {out.parent}")
    if out.exists() and out.resolve() == model.resolve():
        raise ValueError(f"--out is the --model file {model}; write the INT8 copy under another name")
    calibration = find_images(Path(args.calibration), "calibration", args.max_images)
    compare = calibration if args.compare is None else find_images(Path(args.compare), "compare", args.max_images)
    return calibration, compare


def read_images(paths: list[Path], size: int):
    """The images as one uint8 (N, 3, size, size) tensor; ValueError naming an unreadable file."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                arrays.append(np.array(image, dtype=np.uint8))
        except OSError as exc:
            raise ValueError(f"cannot read {path} as an image: {exc}") from None
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def median_latency_ms(model, image, runs: int) -> float:
    """Median wall time of ``model.predict(image)`` over ``runs`` calls, after one warm-up."""
    model.predict(image)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        float(model.predict(image).score[0])
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    calibration_paths, compare_paths = check_args(args)
    calibration = read_images(calibration_paths, args.image_size)
    compare = calibration if args.compare is None else read_images(compare_paths, args.image_size)

    import efficientad_fast as ead

    model = ead.load(args.model, precision="fp32")
    print(
        f"quantizing on {len(calibration)} images of {args.calibration} "
        "(the first INT8 run compiles with Inductor: up to a minute)",
        flush=True,
    )
    t0 = time.perf_counter()
    int8 = ead.quantize(model, calibration)
    print(f"quantized in {time.perf_counter() - t0:.1f} s; precision {int8.precision}")

    fp32_pred = model.predict(compare, sensitivity=args.sensitivity)
    int8_pred = int8.predict(compare, sensitivity=args.sensitivity)
    a32, a8 = fp32_pred.anomaly_map.flatten(1), int8_pred.anomaly_map.flatten(1)
    ranges = (a32.amax(1) - a32.amin(1)).clamp_min(1e-12)
    map_diff = (a8 - a32).abs().amax(1) / ranges  # per image, a fraction of its fp32 map's range
    worst = int(map_diff.argmax())
    print(
        f"maps on {len(compare)} images: largest difference {float(map_diff.max()):.4f} of the fp32 map range "
        f"({compare_paths[worst].name}), mean {float(map_diff.mean()):.4f}; "
        f"largest score difference {float((int8_pred.score - fp32_pred.score).abs().max()):.4g}"
    )
    if fp32_pred.label is None:
        print("labels: the model has no image threshold (not calibrated), nothing to compare")
    else:
        agree = int((fp32_pred.label == int8_pred.label).sum())
        print(f"labels agree on {agree} of {len(compare)} images (sensitivity {args.sensitivity})")
        for i in (fp32_pred.label != int8_pred.label).nonzero().flatten().tolist():
            print(
                f"  differs: {compare_paths[i]}: fp32 score {float(fp32_pred.score[i]):.4f} "
                f"{'anomalous' if fp32_pred.label[i] else 'normal'}, int8 {float(int8_pred.score[i]):.4f} "
                f"{'anomalous' if int8_pred.label[i] else 'normal'}"
            )

    one = compare[:1]
    fp32_ms = median_latency_ms(model, one, args.runs)
    int8_ms = median_latency_ms(int8, one, args.runs)
    print(
        f"batch-1 latency (median of {args.runs}): fp32 {fp32_ms:.1f} ms, int8 {int8_ms:.1f} ms "
        f"({fp32_ms / int8_ms:.2f}x)"
    )

    int8.save(args.out)  # written next to --out first and renamed: never a half file
    print(f'wrote {args.out} (load it with ead.load(path, precision="int8"))')
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {str(exc).strip()}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {args.out} not written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
