"""Image and mask reading: any bit depth and colour mode in, float RGB / binary masks out.

Errors name the file: a missing file raises FileNotFoundError, unreadable bytes raise
:class:`DataError` (a ValueError).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .._checkpoint import special_kind

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Antialiasing filter for images: Pillow's BILINEAR widens its support by the scale factor
# when shrinking (like torchvision's Resize(antialias=True)); masks use NEAREST.
IMAGE_RESAMPLE = Image.Resampling.BILINEAR
MASK_RESAMPLE = Image.Resampling.NEAREST

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# EXIF orientations that turn the image by 90 or 270 degrees (swap width and height).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class DataError(ValueError):
    """A dataset file or folder is present but wrong (unreadable, empty, mismatched)."""


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.fspath(path)
    return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))


def find_images(folder: str | os.PathLike, what: str = "image", broken_links: bool = False) -> list[Path]:
    """Image files under ``folder`` and its subfolders, sorted (hidden files skipped).
    ``broken_links``: include image names that are symbolic links to nothing or not regular
    files (a FIFO, a device), so a caller that reports unreadable files (predict's errors.csv)
    lists them instead of losing them; :func:`open_image` refuses those without opening them.
    FileNotFoundError when the folder is missing, ValueError when it holds no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    found = sorted(
        p
        for p in folder.rglob("*")
        if is_image_file(p.name) and (p.is_file() or (broken_links and _unreadable_entry(p)))
    )
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {what} folder {folder}")
    return found


def _unreadable_entry(path: Path) -> bool:
    """A link to nothing, or a name that is neither a file nor a folder (a FIFO, a device)."""
    return (path.is_symlink() and not path.exists()) or (path.exists() and not path.is_dir() and not path.is_file())


def _refuse_special_file(path: str, what: str) -> None:
    # Pillow would open a FIFO and wait for a writer forever, or read a device without end.
    kind = special_kind(path)
    if kind is not None:
        raise DataError(f"cannot read {what} file {path}: it is {kind}, not a regular file")


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open and fully decode ``path`` with Pillow, turned as its EXIF orientation says
    (as image viewers show it); errors name the file."""
    path = os.fspath(path)
    _refuse_special_file(path, what)
    try:
        image = Image.open(path)
        image.load()
        # Cameras store photos as the sensor saw them and record the turn in EXIF: without
        # this, a photo taken upright would reach the model (and its mask) rotated.
        ImageOps.exif_transpose(image, in_place=True)
        _check_float_range(image)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(
                f"{what} file {path} is a link to {os.readlink(path)}, which does not exist"
            ) from None
        raise FileNotFoundError(f"{what} file {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read {what} file {path}: {error}") from error
    return image


def image_size_of(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(width, height) from the file header only, as :func:`open_image` returns the image
    (swapped when the EXIF orientation turns it by 90 degrees)."""
    path = os.fspath(path)
    _refuse_special_file(path, what)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(ExifTags.Base.Orientation, 1) in _TRANSPOSING_ORIENTATIONS:
                return height, width
            return width, height
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(
                f"{what} file {path} is a link to {os.readlink(path)}, which does not exist"
            ) from None
        raise FileNotFoundError(f"{what} file {path} does not exist") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read {what} file {path}: {error}") from error


def _check_float_range(image: Image.Image) -> None:
    """A float image (mode F, e.g. a float TIFF) holds [0, 1], or 0..255 or 0..65535 that
    :func:`to_rgb_array` scales: anything below 0 or above 65535 was clipped silently before,
    and an infinite pixel chose the scale (the whole image divided by 65535)."""
    if image.mode != "F":
        return
    array = np.asarray(image)
    if not np.isfinite(array).all():
        raise ValueError("it has pixels that are not finite (NaN or inf)")
    if array.size and (array.min() < 0.0 or array.max() > 65535.0):
        raise ValueError(
            f"float pixel values must lie in [0, 1] (or 0..255 or 0..65535, which are scaled), "
            f"got values in [{array.min():g}, {array.max():g}]"
        )


def _gray_float(image: Image.Image) -> np.ndarray | None:
    """High-bit-depth single-channel images as float32 in [0, 1]; None for 8-bit modes."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.float32) / 65535.0
    if image.mode == "I":  # 32-bit int container; in practice 16-bit data (old Pillow PNG path)
        array = np.asarray(image).astype(np.float32)
        scale = 255.0 if array.max(initial=0) <= 255 else 65535.0
        return np.clip(array / scale, 0.0, 1.0)
    if image.mode == "F":
        array = np.asarray(image).astype(np.float32)
        if array.max(initial=0) > 1.0:
            array = array / (255.0 if array.max() <= 255 else 65535.0)
        return np.clip(array, 0.0, 1.0)
    return None


def _resize_float(channel: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (channel.shape[0], channel.shape[1]) == size:
        return channel
    height, width = size
    resized = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize((width, height), IMAGE_RESAMPLE)
    return np.asarray(resized, dtype=np.float32)


def to_rgb_array(image: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """float32 (3, H, W) in [0, 1], resized (antialiased) to ``size`` = (H, W) if given.

    Grayscale becomes RGB, alpha is dropped (not composited), palette images are expanded,
    16-bit and float images keep their precision through the resize.
    """
    gray = _gray_float(image)
    if gray is not None:
        gray = np.clip(_resize_float(gray, size), 0.0, 1.0)
        return np.ascontiguousarray(np.broadcast_to(gray, (3, *gray.shape)), dtype=np.float32)
    if image.mode != "RGB":
        # RGBA/LA/PA -> RGB drops alpha; L/1/P/CMYK/YCbCr convert to RGB.
        image = image.convert("RGB")
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), IMAGE_RESAMPLE)
    array = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / 255.0


def to_binary_mask(image: Image.Image) -> np.ndarray:
    """bool (H, W): every non-zero pixel is defect (VisA masks use small values, LOCO masks
    encode the defect type in the value). Alpha channels are ignored."""
    if image.mode == "P":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3:
        if image.mode in ("RGBA", "LA", "PA"):
            array = array[..., :-1]
        array = array.max(axis=-1)
    return array > 0


def mask_value(image: Image.Image) -> int:
    """The largest pixel value of a mask (LOCO: identifies the defect in defects_config.json)."""
    if image.mode == "P":
        image = image.convert("L")
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3] if image.mode == "RGBA" else array
    return int(array.max(initial=0))


def resize_mask(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``size`` = (H, W); stays binary."""
    if size is None or mask.shape == tuple(size):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((size[1], size[0]), MASK_RESAMPLE)) > 0
