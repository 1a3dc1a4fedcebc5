"""Images into memory for the jobs: a dataset's images as one uint8 tensor (training and
calibration), and the files a ``predict`` names (folders walked, its own output folder left
out) read with a row for each that cannot be."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._checkpoint import special_kind
from ._io import DataError, find_images, open_image, to_rgb_array


def _image_of(item) -> torch.Tensor:
    return item["image"] if isinstance(item, dict) else item


def load_images_uint8(dataset: Dataset[Any], workers: int = 2, desc: str = "loading images") -> torch.Tensor:
    """All images of a dataset as one uint8 (N, 3, H, W) tensor, decoded by ``workers``
    processes. 8-bit sources lose nothing (the float images are k/255)."""
    if len(dataset) == 0:  # type: ignore[arg-type]  # the datasets here are sized
        raise ValueError(f"{desc}: the dataset holds no images")
    loader = DataLoader(
        dataset,
        batch_size=16,
        shuffle=False,
        num_workers=workers,
        collate_fn=lambda items: torch.stack([_image_of(i) for i in items]),
    )
    return torch.cat([(b.clamp(0, 1) * 255).round().to(torch.uint8) for b in loader])


PICTURE_FOLDERS = ("heatmaps", "masks")  # what predict writes under its output folder


def collect_image_paths(inputs, out_dir=None, log=print) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in a stable order.
    Files found in ``out_dir/heatmaps`` and ``out_dir/masks`` (an earlier run's pictures, when
    the output folder lies inside an input folder, or is one) are left out, said once through
    ``log``; a file named directly that lies there is refused (ValueError): a picture could
    overwrite it. Links are followed as the file system says (a link loop is kept, to be reported
    as unreadable), never by raising."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += find_images(item, broken_links=True)
        elif item.is_file():
            paths.append(item)
        else:
            kind = special_kind(item)
            if kind is not None:
                raise ValueError(f"{item} is {kind}: name an image file or a folder of images")
            raise FileNotFoundError(f"no such image or folder: {item}")
    if out_dir is not None:
        pictures = [Path(os.path.realpath(Path(out_dir) / sub)) for sub in PICTURE_FOLDERS]
        named = {os.path.realpath(item) for item in inputs}

        def earlier_output(path: Path) -> bool:
            real = os.path.realpath(path)  # never raises, unlike Path.resolve on a link loop
            return real not in named and any(folder in Path(real).parents for folder in pictures)

        kept = [p for p in paths if not earlier_output(p)]
        for path in kept:  # named on purpose: refused, as predict's pictures could overwrite it
            real = Path(os.path.realpath(path))
            folder = next((f for f in pictures if f in real.parents), None)
            if folder is not None:
                raise ValueError(
                    f"the input {path} lies in {folder}, where predict writes its pictures (it could be "
                    "overwritten): choose another --out, or move the image"
                )
        if len(kept) < len(paths):
            log(f"skipping {len(paths) - len(kept)} files under {out_dir}/heatmaps and masks (an earlier run's output)")
        paths = kept
    return paths


def read_images(paths: list[Path], size: tuple[int, int], errors: list[dict]) -> tuple[list[Path], list]:
    """The readable ``paths`` and their (3, H, W) arrays; each unreadable file goes to
    ``errors`` with its reason, so one bad file does not stop a folder's worth of scoring."""
    read, arrays = [], []
    for path in paths:
        try:
            array = to_rgb_array(open_image(path), size)
            if not np.isfinite(array).all():  # a float image (TIFF) with NaN or inf pixels
                raise DataError(f"image file {path} has pixels that are not finite numbers (NaN or inf)")
            arrays.append(array)
            read.append(path)
        except (DataError, OSError) as exc:  # corrupt, truncated, a folder, unreadable, vanished
            errors.append({"path": str(path), "error": str(exc)})
    return read, arrays
