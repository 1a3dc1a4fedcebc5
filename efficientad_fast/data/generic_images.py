"""Generic natural images that ship with the library's dependencies, no download: the
scikit-image photographs (:data:`BUILTIN_PHOTOS`; the ``[distill]`` extra) and procedurally
generated images. Teacher distillation trains on them; training can use them as the bundled
penalty images (``penalty_images="bundled"``)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .._optional import require

# scikit-image photographs used for distillation. The other bundled images (rocket, brick,
# grass, gravel, ...) are kept out: HELD_OUT_PHOTOS measure generalisation.
BUILTIN_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "cell",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "text",
    "stereo_motorcycle",
    "lfw_subset",
)
HELD_OUT_PHOTOS = ("rocket", "brick", "grass", "gravel")


def _to_rgb_float(array) -> torch.Tensor:
    """(3, H, W) float in [0, 1] from a uint8/bool/float (H, W[, 3|4]) array; alpha over white."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    else:
        a = a.astype(np.float32)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).contiguous()


def _mosaic(tiles, per_row: int) -> torch.Tensor:
    rows = [torch.cat(list(tiles[i : i + per_row]), dim=2) for i in range(0, len(tiles) - per_row + 1, per_row)]
    return torch.cat(rows, dim=1)


def photo_images(names) -> dict[str, torch.Tensor]:
    """scikit-image's bundled photographs (no download) as (3, H, W) float tensors. The
    stereo pair gives two images; ``lfw_subset`` (200 faces of 25 px) gives 3 mosaics."""
    data = require("skimage.data")
    images = {}
    for name in names:
        if name not in BUILTIN_PHOTOS + HELD_OUT_PHOTOS:
            raise ValueError(f"unknown built-in photo {name!r}; choose from {BUILTIN_PHOTOS + HELD_OUT_PHOTOS}")
        value = getattr(data, name)()
        if name == "stereo_motorcycle":
            images["motorcycle_left"], images["motorcycle_right"] = _to_rgb_float(value[0]), _to_rgb_float(value[1])
        elif name == "lfw_subset":
            faces = [_to_rgb_float(f) for f in value]
            for k in range(3):
                images[f"lfw_mosaic{k}"] = _mosaic(faces[k * 64 : (k + 1) * 64], 8)
        else:
            images[name] = _to_rgb_float(value)
    return images


def procedural_images(count: int, size: int = 384, seed: int = 0, progress: bool = False) -> dict[str, torch.Tensor]:
    """Generated images with natural-image statistics, cycling through three kinds:
    dead leaves (occluding discs, power-law radii), coloured 1/f noise and oriented
    gratings over 1/f noise. Deterministic for a seed. ``progress``: a bar (about 50 ms an
    image on a fast core, seconds on a slow one)."""
    from .._progress import progress as progress_bar

    g = torch.Generator().manual_seed(seed)
    images = {}
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )

    def pink_noise(channels: int) -> torch.Tensor:
        fy = torch.fft.fftfreq(size).view(-1, 1)
        fx = torch.fft.rfftfreq(size).view(1, -1)
        amplitude = 1 / (fx**2 + fy**2).sqrt().clamp_min(1 / size) ** float(1 + torch.rand((), generator=g))
        phase = torch.rand(channels, size, size // 2 + 1, generator=g) * 2 * math.pi
        x = torch.fft.irfft2(amplitude * torch.polar(torch.ones_like(phase), phase), s=(size, size))
        x = (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True)
        return x

    for i in progress_bar(range(count), progress, "generic images"):
        kind = i % 3
        if kind == 0:  # dead leaves
            img = torch.rand(3, 1, 1, generator=g).expand(3, size, size).clone()
            for _ in range(300):
                r = float(size * 0.01 / (torch.rand((), generator=g) * 0.95 + 0.05) ** 1.2)
                cy, cx = (torch.rand(2, generator=g) * size).tolist()
                colour = torch.rand(3, 1, generator=g)
                if torch.rand((), generator=g) < 0.5:
                    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                else:  # axis-aligned rectangles: straight edges and corners
                    h = r * float(torch.rand((), generator=g) + 0.3)
                    inside = ((yy - cy).abs() <= h) & ((xx - cx).abs() <= r)
                img[:, inside] = colour
            img = img + 0.03 * pink_noise(3)
        elif kind == 1:  # coloured 1/f noise, channels partly correlated
            base = pink_noise(1)
            img = 0.5 + 0.18 * (0.6 * base + 0.4 * pink_noise(3))
        else:  # gratings / stripes of a few orientations over noise
            img = 0.5 + 0.1 * pink_noise(3)
            for _ in range(int(torch.randint(1, 4, (), generator=g))):
                theta = float(torch.rand((), generator=g) * math.pi)
                period = float(4 + torch.rand((), generator=g) * 40)
                wave = torch.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
                if torch.rand((), generator=g) < 0.5:
                    wave = wave.sign()  # square wave: hard edges
                img = img + 0.2 * wave * (torch.rand(3, 1, 1, generator=g) - 0.3)
        images[f"procedural{i:03d}"] = img.clamp(0, 1)
    return images
