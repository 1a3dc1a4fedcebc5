"""Generic images to distill on, offline: the scikit-image photographs in
:data:`BUILTIN_PHOTOS`, procedurally generated images and any folders given; and
:class:`CropSampler`, the seeded random crops the loop trains on."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data import find_images, open_image, to_rgb_array
from ._optional import require

# scikit-image photographs used for distillation. The other bundled images (rocket, brick,
# grass, gravel, ...) are kept out: HELD_OUT_PHOTOS measure generalisation.
BUILTIN_PHOTOS = (
    "astronaut", "camera", "chelsea", "cell", "clock", "coffee", "coins", "colorwheel",
    "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "text",
    "stereo_motorcycle", "lfw_subset",
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
    rows = [torch.cat(list(tiles[i:i + per_row]), dim=2) for i in range(0, len(tiles) - per_row + 1, per_row)]
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
                images[f"lfw_mosaic{k}"] = _mosaic(faces[k * 64:(k + 1) * 64], 8)
        else:
            images[name] = _to_rgb_float(value)
    return images


def procedural_images(count: int, size: int = 384, seed: int = 0) -> dict[str, torch.Tensor]:
    """Generated images with natural-image statistics, cycling through three kinds:
    dead leaves (occluding discs, power-law radii), coloured 1/f noise and oriented
    gratings over 1/f noise. Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    images = {}
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")

    def pink_noise(channels: int) -> torch.Tensor:
        fy = torch.fft.fftfreq(size).view(-1, 1)
        fx = torch.fft.rfftfreq(size).view(1, -1)
        amplitude = 1 / (fx ** 2 + fy ** 2).sqrt().clamp_min(1 / size) ** float(1 + torch.rand((), generator=g))
        phase = torch.rand(channels, size, size // 2 + 1, generator=g) * 2 * math.pi
        x = torch.fft.irfft2(amplitude * torch.polar(torch.ones_like(phase), phase), s=(size, size))
        x = (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True)
        return x

    for i in range(count):
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


def folder_images(folders) -> dict[str, torch.Tensor]:
    """Every image file found recursively under ``folders`` (hidden files skipped), by path."""
    return {str(path): torch.from_numpy(to_rgb_array(open_image(path), None))
            for folder in folders for path in find_images(folder)}


def training_images(builtin_photos: bool, procedural: int, folders, seed: int) -> dict[str, torch.Tensor]:
    """The distillation pool: the built-in photographs (if wanted), ``procedural`` generated
    images (seeded) and the images under ``folders``, by name."""
    pool: dict[str, torch.Tensor] = {}
    if builtin_photos:
        pool.update(photo_images(BUILTIN_PHOTOS))
    if procedural:
        pool.update(procedural_images(procedural, seed=seed))
    if folders:
        pool.update(folder_images(folders))
    return pool


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(1, H, W) luma of a (3, H, W) image."""
    return (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


class CropSampler:
    """Random resized crops (area scale, aspect 3/4-4/3) at the backbone's size, flips,
    colour jitter and grayscale, drawn from a seeded generator (its state is checkpointed).
    Returns (backbone input at 2 x crop, PDN input at crop), both in [0, 1]."""

    def __init__(self, images: list[torch.Tensor], crop: int, seed: int, scale=(0.03, 0.6),
                 jitter: float = 0.4, grayscale: float = 0.1, augment: bool = True) -> None:
        if not images:
            raise ValueError("distillation needs at least one image")
        self.images, self.crop, self.scale = images, crop, scale
        self.jitter, self.grayscale, self.augment = jitter, grayscale, augment
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        """Flips, brightness, contrast and saturation jitter, sometimes grayscale."""
        if torch.rand((), generator=self.generator) < 0.5:
            x = x.flip(2)
        if torch.rand((), generator=self.generator) < 0.5:
            x = x.flip(1)
        j = self.jitter
        gray = _gray(x)
        x = x * self._uniform(1 - j, 1 + j)  # brightness
        m = gray.mean()
        x = (x - m) * self._uniform(1 - j, 1 + j) + m  # contrast
        gray = _gray(x)
        s = self._uniform(1 - j, 1 + j)  # saturation
        x = x * s + gray * (1 - s)
        if torch.rand((), generator=self.generator) < self.grayscale:
            x = _gray(x).expand(3, -1, -1)
        return x.clamp(0, 1)

    def one(self) -> torch.Tensor:
        img = self.images[int(torch.randint(len(self.images), (), generator=self.generator))]
        _, h, w = img.shape
        area = h * w * self._uniform(*self.scale)
        ratio = math.exp(self._uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = max(8, min(h, int(round(math.sqrt(area / ratio)))))
        cw = max(8, min(w, int(round(math.sqrt(area * ratio)))))
        top = int(torch.randint(h - ch + 1, (), generator=self.generator))
        left = int(torch.randint(w - cw + 1, (), generator=self.generator))
        x = img[None, :, top:top + ch, left:left + cw]
        x = F.interpolate(x, size=(2 * self.crop, 2 * self.crop), mode="bilinear", align_corners=False,
                          antialias=True)[0]
        return self._augmented(x) if self.augment else x

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        big = torch.stack([self.one() for _ in range(n)])
        small = F.interpolate(big, size=(self.crop, self.crop), mode="bilinear", align_corners=False, antialias=True)
        return big, small
