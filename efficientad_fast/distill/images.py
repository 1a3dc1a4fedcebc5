"""Generic images to distill on, offline: the scikit-image photographs and procedurally
generated images of :mod:`efficientad_fast.data.generic_images`, and any folders given; and
:class:`CropSampler`, the seeded random crops the loop trains on."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import find_images, open_image, to_rgb_array
from ..data.generic_images import BUILTIN_PHOTOS, photo_images, procedural_images

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
