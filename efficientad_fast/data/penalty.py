"""Generic natural images for the penalty loss of training (paper: ImageNet), and Imagenette.

``penalty_images="imagenette"`` (``--penalty-images imagenette``) uses the Imagenette archive
anomalib downloads for the same loss, from the cache once ``efficientad-fast
fetch-imagenette`` has put it there; never downloaded implicitly. ``"bundled"`` uses the
generic images that ship with the dependencies (:mod:`.generic_images`); ``"auto"`` (the
default of ``train`` and ``report``) takes Imagenette when it is cached, else the bundled
images; ``"none"`` (or None) trains without the penalty loss.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..downloads import downloads_root, fetch_archive, not_cached_error
from ._io import find_images, open_image, to_rgb_array
from .generic_images import BUILTIN_PHOTOS, photo_images, procedural_images

# Imagenette 2 (full size), as anomalib 2.7.0 downloads it (its IMAGENETTE_DOWNLOAD_INFO).
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
IMAGENETTE_SHA256 = "6cbfac238434d89fe99e651496f0812ebc7a10fa62bd42d6874042bf01de4efd"
IMAGENETTE_ARCHIVE = "imagenette2.tgz"
IMAGENETTE_URL_ENV = "EFFICIENTAD_FAST_IMAGENETTE_URL"
IMAGENETTE_FOLDER = "imagenette"  # under <cache>/downloads; the archive holds imagenette2/{train,val}
IMAGENETTE = "imagenette"  # the penalty_images value that selects it
BUNDLED = "bundled"  # the scikit-image photographs (no held-out texture) + procedural images
AUTO = "auto"  # Imagenette when cached, else bundled
NONE = "none"  # no penalty loss
KEYWORDS = (IMAGENETTE, BUNDLED, AUTO, NONE)
BUNDLED_PROCEDURAL = 24  # procedural images in the bundled set (20 photographs come with scikit-image)
IMAGENETTE_GRAYSCALE_P = 0.3  # the paper's (and anomalib's) RandomGrayscale(p=0.3)
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)  # ITU-R 601-2, as PIL


class GenericImages(Dataset):
    """Generic natural images for the penalty loss, found recursively under ``folders``:
    resized to twice the model size and centre-cropped (as anomalib prepares ImageNet).

    ``grayscale_p``: the probability that an image becomes grayscale (anomalib's
    RandomGrayscale for Imagenette), decided per index from ``seed`` so that a run is
    repeatable; 0 (the default) leaves every image in colour."""

    source: str  # what penalty_image_set made it from, for the training summary

    def __init__(self, folders, image_size: tuple[int, int], grayscale_p: float = 0.0, seed: int = 0) -> None:
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        self.paths = [path for folder in folders for path in find_images(folder, "penalty image")]
        self.image_size = image_size
        self.grayscale_p = grayscale_p
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def is_grayscale(self, index: int) -> bool:
        return self.grayscale_p > 0 and random.Random(f"{self.seed}:{index}").random() < self.grayscale_p

    def __getitem__(self, index: int) -> torch.Tensor:
        h, w = self.image_size
        array = to_rgb_array(open_image(self.paths[index], "penalty image"), (2 * h, 2 * w))
        if self.is_grayscale(index):
            array = np.ascontiguousarray(np.broadcast_to((array * _GRAY_WEIGHTS).sum(0), array.shape))
        big = torch.from_numpy(array)
        top, left = (big.shape[1] - h) // 2, (big.shape[2] - w) // 2
        return big[:, top : top + h, left : left + w]


def imagenette_url() -> str:
    """``$EFFICIENTAD_FAST_IMAGENETTE_URL`` (a mirror) or the release URL; same SHA-256 check."""
    return os.environ.get(IMAGENETTE_URL_ENV) or IMAGENETTE_URL


def fetch_imagenette(
    source: str | os.PathLike | None = None, sha256: str = IMAGENETTE_SHA256, progress: bool = True
) -> Path:
    """Download (or copy, ``source`` a file) the Imagenette archive, verify its SHA-256 and
    extract it safely into the cache (the 1.5 GB archive is deleted once extracted); returns
    the image folder. ``source`` defaults to :func:`imagenette_url`."""
    fetch_archive(
        source or imagenette_url(),
        sha256,
        IMAGENETTE_ARCHIVE,
        IMAGENETTE_FOLDER,
        what="Imagenette",
        keep_archive=False,
        progress=progress,
    )
    return imagenette_folder()


def imagenette_folder() -> Path:
    """The cached, extracted Imagenette images (train and val, as anomalib uses them). Never
    downloads: raises NotCachedError saying how to fetch it, online or offline."""
    folder = downloads_root() / IMAGENETTE_FOLDER
    if folder.is_dir():  # extraction renames the folder into place only when complete
        return folder
    raise not_cached_error(
        "Imagenette (penalty images 'imagenette')",
        where=folder,
        url=imagenette_url(),
        sha256=IMAGENETTE_SHA256,
        env=IMAGENETTE_URL_ENV,
        command="fetch-imagenette",
        alternatives="--penalty-images DIR (any folder of generic photographs), or no --penalty-images",
    )


class TensorImages(Dataset):
    """Generic images held in memory ((3, H, W) float in [0, 1]) prepared as
    :class:`GenericImages` prepares files: resized to twice the model size, centre-cropped."""

    source: str  # what penalty_image_set made it from, for the training summary

    def __init__(self, images: list[torch.Tensor], image_size: tuple[int, int]) -> None:
        self.images = images
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        h, w = self.image_size
        big = F.interpolate(
            self.images[index][None], size=(2 * h, 2 * w), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp(0, 1)
        top, left = (big.shape[1] - h) // 2, (big.shape[2] - w) // 2
        return big[:, top : top + h, left : left + w]


def bundled_penalty_images(image_size: tuple[int, int], seed: int = 0, progress: bool = False) -> TensorImages:
    """The bundled generic images: scikit-image's photographs (never the textures held out
    from distillation; needs the ``[distill]`` extra, else left out with a notice) and
    :data:`BUNDLED_PROCEDURAL` procedural images drawn from ``seed`` (``progress``: a bar)."""
    images = list(procedural_images(BUNDLED_PROCEDURAL, seed=seed, progress=progress).values())
    try:
        images = list(photo_images(BUILTIN_PHOTOS).values()) + images
    except ImportError as exc:
        print(
            f"penalty images: bundled photographs left out ({exc}); using {len(images)} procedural images",
            file=sys.stderr,
        )
    return TensorImages(images, image_size)


def _imagenette_images(folder: Path, image_size: tuple[int, int], seed: int) -> GenericImages:
    return GenericImages(folder, image_size, grayscale_p=IMAGENETTE_GRAYSCALE_P, seed=seed)


def _auto_penalty_images(image_size: tuple[int, int], seed: int, progress: bool) -> GenericImages | TensorImages:
    try:
        folder = imagenette_folder()
    except FileNotFoundError:  # NotCachedError
        print(
            "penalty images 'auto': Imagenette is not cached (efficientad-fast fetch-imagenette); "
            "using the bundled generic images",
            file=sys.stderr,
        )
        return bundled_penalty_images(image_size, seed, progress)
    print(f"penalty images 'auto': Imagenette from {folder}", file=sys.stderr)
    return _imagenette_images(folder, image_size, seed)


def _penalty_names(penalty_images) -> tuple[list, list[str]]:
    """(all values, the keyword values among them); a keyword mixed with folders is a ValueError."""
    names = [penalty_images] if isinstance(penalty_images, (str, os.PathLike)) else list(penalty_images)
    keywords = [name for name in names if isinstance(name, str) and name in KEYWORDS]
    if keywords and len(names) > 1:
        raise ValueError(f"penalty images: {keywords[0]!r} cannot be mixed with folders")
    return names, keywords


def check_penalty_images(penalty_images) -> None:
    """Check a ``penalty_images`` value without reading any image: a keyword ("imagenette",
    "bundled", "auto", "none") stands alone, and "imagenette" must be cached (NotCachedError)."""
    if penalty_images:
        _, keywords = _penalty_names(penalty_images)
        if keywords == [IMAGENETTE]:
            imagenette_folder()


def penalty_image_set(
    penalty_images, image_size: tuple[int, int], seed: int = 0, progress: bool = False
) -> GenericImages | TensorImages | None:
    """The penalty images for training: None or ``"none"`` (none), ``"imagenette"`` (the
    cached Imagenette, random grayscale 0.3 as in the paper), ``"bundled"``
    (:func:`bundled_penalty_images`), ``"auto"`` (Imagenette when cached, else bundled; the
    choice is printed) or folder(s) of images (kept in colour). The dataset's ``source``
    says which, for the training summary. ``progress``: a bar while the bundled set is made."""
    if not penalty_images:
        return None
    names, keywords = _penalty_names(penalty_images)
    if keywords == [NONE]:
        return None
    images: GenericImages | TensorImages
    if keywords == [IMAGENETTE]:
        images, source = _imagenette_images(imagenette_folder(), image_size, seed), IMAGENETTE
    elif keywords == [BUNDLED]:
        images, source = bundled_penalty_images(image_size, seed, progress), BUNDLED
    elif keywords == [AUTO]:
        images = _auto_penalty_images(image_size, seed, progress)
        source = f"auto: {IMAGENETTE if isinstance(images, GenericImages) else BUNDLED}"
    else:
        images, source = GenericImages(names, image_size), " ".join(map(str, names))
    images.source = source
    return images
