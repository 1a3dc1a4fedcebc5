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
    return {
        str(path): torch.from_numpy(to_rgb_array(open_image(path), None))
        for folder in folders
        for path in find_images(folder)
    }


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
    Returns (backbone input at 2 x crop, PDN input at crop), both in [0, 1].

    Each crop's random choices are drawn first (:meth:`_draw`), then rendered
    (:meth:`_render`): a data-parallel rank draws the choices of the whole batch, which keeps
    its stream in step with the other ranks', and renders only its part (see :mod:`.parallel`)."""

    def __init__(
        self,
        images: list[torch.Tensor],
        crop: int,
        seed: int,
        scale=(0.03, 0.6),
        jitter: float = 0.4,
        grayscale: float = 0.1,
        augment: bool = True,
    ) -> None:
        if not images:
            raise ValueError("distillation needs at least one image")
        self.images, self.crop, self.scale = images, crop, scale
        self.jitter, self.grayscale, self.augment = jitter, grayscale, augment
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def _chance(self, p: float) -> bool:
        return bool(torch.rand((), generator=self.generator) < p)

    def _draw(self) -> dict:
        """The random choices of one crop: image, box, and (when augmenting) flips, brightness,
        contrast and saturation factors and grayscale, always drawn in this order."""
        index = int(torch.randint(len(self.images), (), generator=self.generator))
        _, h, w = self.images[index].shape
        area = h * w * self._uniform(*self.scale)
        ratio = math.exp(self._uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = max(8, min(h, int(round(math.sqrt(area / ratio)))))
        cw = max(8, min(w, int(round(math.sqrt(area * ratio)))))
        top = int(torch.randint(h - ch + 1, (), generator=self.generator))
        left = int(torch.randint(w - cw + 1, (), generator=self.generator))
        choice = {"index": index, "box": (top, left, ch, cw)}
        if self.augment:
            j = self.jitter
            choice.update(
                flip_w=self._chance(0.5),
                flip_h=self._chance(0.5),
                brightness=self._uniform(1 - j, 1 + j),
                contrast=self._uniform(1 - j, 1 + j),
                saturation=self._uniform(1 - j, 1 + j),
                gray=self._chance(self.grayscale),
            )
        return choice

    @staticmethod
    def _augmented(x: torch.Tensor, choice: dict) -> torch.Tensor:
        """Flips, brightness, contrast and saturation jitter, sometimes grayscale."""
        if choice["flip_w"]:
            x = x.flip(2)
        if choice["flip_h"]:
            x = x.flip(1)
        gray = _gray(x)
        x = x * choice["brightness"]
        m = gray.mean()
        x = (x - m) * choice["contrast"] + m
        gray = _gray(x)
        s = choice["saturation"]
        x = x * s + gray * (1 - s)
        if choice["gray"]:
            x = _gray(x).expand(3, -1, -1)
        return x.clamp(0, 1)

    def _render(self, choice: dict) -> torch.Tensor:
        """The crop ``choice`` describes, resized to 2 x crop (and augmented)."""
        top, left, ch, cw = choice["box"]
        x = self.images[choice["index"]][None, :, top : top + ch, left : left + cw]
        x = F.interpolate(x, size=(2 * self.crop, 2 * self.crop), mode="bilinear", align_corners=False, antialias=True)[
            0
        ]
        return self._augmented(x, choice) if self.augment else x

    def one(self) -> torch.Tensor:
        return self._render(self._draw())

    def batch(self, n: int, part: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` crops as (backbone input, PDN input). With ``part``, the choices of all ``n``
        are drawn (the stream moves on as for the whole batch) but only the crops in ``part``
        are rendered and returned."""
        choices = [self._draw() for _ in range(n)]
        big = torch.stack([self._render(c) for c in choices[part or slice(None)]])
        small = F.interpolate(big, size=(self.crop, self.crop), mode="bilinear", align_corners=False, antialias=True)
        return big, small
