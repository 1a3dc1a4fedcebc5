"""Pictures of anomaly maps: the image beside its heatmap, with the threshold's contour and
the ground truth's, for evaluation and prediction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Normalized maps put the q_b (99.5 %) level of normal training maps at 0.1 (both maps,
# any alpha): pixels above it are flagged by default.
DEFAULT_THRESHOLD = 0.1


def default_threshold(model) -> float | None:
    """The map threshold of a calibrated model (the q_b level), None before calibration."""
    return DEFAULT_THRESHOLD if model.quantiles_set else None


def heatmap_overlay(
    image: np.ndarray,
    amap: np.ndarray,
    threshold: float | None,
    mask: np.ndarray | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """uint8 (H, 2W+, 3): the image | the image under a colour map of ``amap`` with the
    threshold's contour in white (and the ground truth's in green when ``mask`` is given).
    Colours span [0, vmax]; vmax defaults to 3 x threshold (per-image max without one)."""
    from matplotlib import colormaps
    from scipy import ndimage

    img = np.clip(image.transpose(1, 2, 0) if image.shape[0] == 3 else image, 0, 1)
    top = vmax if vmax is not None else (3 * threshold if threshold else float(np.nanmax(amap)) or 1.0)
    colours = colormaps["inferno"](np.clip(np.nan_to_num(amap) / top, 0, 1))[..., :3]
    blended = 0.55 * img + 0.45 * colours

    def outline(region: np.ndarray) -> np.ndarray:
        return region & ~ndimage.binary_erosion(region, iterations=1)

    if threshold is not None:
        blended[outline(amap > threshold)] = (1.0, 1.0, 1.0)
    if mask is not None and mask.any():
        blended[outline(mask.astype(bool))] = (0.2, 1.0, 0.2)
    gap = np.ones((img.shape[0], 4, 3))
    return (np.concatenate([img, gap, blended], axis=1) * 255).round().astype(np.uint8)


def captioned(picture: np.ndarray, text: str) -> np.ndarray:
    """``picture`` (uint8 (H, W, 3)) with a black band above it holding ``text`` in white,
    so a picture that travels alone (an alarm, a rejected part) says what it shows."""
    from PIL import Image, ImageDraw, ImageFont

    height = max(14, picture.shape[0] // 16)
    font = ImageFont.load_default(size=max(10, height - 4))
    band = Image.new("RGB", (picture.shape[1], height + 4), (0, 0, 0))
    ImageDraw.Draw(band).text((4, 2), text, fill=(255, 255, 255), font=font)
    return np.concatenate([np.asarray(band), picture], axis=0)


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """``array`` as a PNG at ``path`` (folders made), written whole or not at all."""
    from PIL import Image

    from ._checkpoint import atomic_files

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_files(path) as (temporary,):
        Image.fromarray(array).save(temporary, format="PNG")


def write_eval_heatmaps(test, rows, maps, masks, out_dir, per_defect: int, threshold) -> list[Path]:
    out_dir = Path(out_dir)
    written: list[Path] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if seen.get(row["defect"], 0) >= per_defect:
            continue
        seen[row["defect"]] = seen.get(row["defect"], 0) + 1
        image = test[i]["image"].numpy()
        path = out_dir / f"{row['defect']}_{Path(row['path']).stem}.png"
        save_png(heatmap_overlay(image, maps[i], threshold, masks[i]), path)
        written.append(path)
    return written
