"""Score every image in a folder with a trained EfficientAD model and write a CSV.

Shows the plainest use of the Python API: ``ead.load`` (precision "auto": the fastest
precision on this machine whose map stays close to fp32's, measured once and cached) and
``model.predict`` on uint8 (N, 3, H, W) batches read with Pillow. Each image is resized to
``--image-size`` (default 256, the size models are trained at), prints one table row and
becomes one CSV row: path, score, label ("true" = anomalous, "false" = normal, empty for a
model without an image threshold).

Run it (on the demo's data: ``efficientad-fast demo`` writes demo_out/):

    python examples/python/score_folder.py --model demo_out/board/model.pt \\
        --images demo_out/data/board/test --out scores.csv [--sensitivity 0.5]

PNG and JPEG files are found in the folder and its subfolders. The CSV is written under a
temporary name and renamed when complete, so a failed run leaves no half file. Exit codes:
0 done, 2 bad input (missing model or folder, no images, an unreadable image, a bad
option), 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PRECISIONS = ("auto", "fp32", "bf16", "int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Score every PNG/JPEG image under a folder with an EfficientAD model; "
        "print a table and write a CSV (path, score, label)."
    )
    parser.add_argument("--model", required=True, help="model file written by `train` or model.save")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", default="scores.csv", help="CSV to write (default: scores.csv)")
    parser.add_argument(
        "--sensitivity",
        type=float,
        default=0.5,
        help="in [0, 1]: 0.5 = the calibrated thresholds, higher flags more (default 0.5)",
    )
    parser.add_argument(
        "--image-size", type=int, default=256, help="images are resized to this square size, >= 256 (default 256)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per predict call (default 8)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="precision of the networks (default auto: the fastest here, measured once)",
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[Path, list[Path], Path]:
    """Everything that can be checked before loading the model: (model, images, out)."""
    if not 0.0 <= args.sensitivity <= 1.0:
        raise ValueError(f"--sensitivity must be in [0, 1], got {args.sensitivity}")
    if args.image_size < 256:
        raise ValueError(f"--image-size must be >= 256 (the networks need 256 px), got {args.image_size}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = Path(args.model)
    if not model.is_file():
        raise FileNotFoundError(f"model file not found: {model}")
    folder = Path(args.images)
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"--images must be a folder, got the file {folder}")
    images = find_images(folder)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out must be a file name, got the folder {out}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder for --out not found: {out.parent}")
    return model, images, out


def find_images(folder: Path) -> list[Path]:
    """PNG/JPEG files under ``folder`` (not hidden ones), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def read_image(path: Path, size: int):
    """The image as a uint8 (1, 3, size, size) tensor; ValueError naming the file if Pillow
    cannot read it."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except OSError as exc:  # PIL.UnidentifiedImageError, truncated files, ...
        raise ValueError(f"cannot read {path} as an image: {exc}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def write_csv_atomically(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` via a temporary file in the same folder and os.replace."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "score", "label"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    model_path, paths, out = check_args(args)

    import torch

    import efficientad_fast as ead

    model = ead.load(model_path, precision=args.precision, batch_size=args.batch_size, image_size=args.image_size)
    width = max(len(str(p)) for p in paths)
    print(f"{'path':<{width}}  {'score':>10}  label")
    rows = []
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        images = torch.cat([read_image(p, args.image_size) for p in batch])
        pred = model.predict(images, sensitivity=args.sensitivity)
        for i, path in enumerate(batch):
            score = float(pred.score[i])
            if pred.label is None:  # a model without an image threshold (not calibrated)
                shown, label = "-", ""
            else:
                anomalous = bool(pred.label[i])
                shown, label = ("anomalous" if anomalous else "normal"), str(anomalous).lower()
            print(f"{path!s:<{width}}  {score:>10.4f}  {shown}")
            rows.append({"path": str(path), "score": f"{score:.6g}", "label": label})
    write_csv_atomically(out, rows)
    flagged = sum(r["label"] == "true" for r in rows)
    decided = "no image threshold in this model" if pred.label is None else f"{flagged} anomalous"
    print(
        f"scored {len(rows)} images ({decided}, precision {model.precision}, "
        f"sensitivity {args.sensitivity}); wrote {out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {str(exc).strip()}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no CSV written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
