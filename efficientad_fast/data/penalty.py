"""Generic natural images for the penalty loss of training (paper: ImageNet)."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from ._io import find_images, open_image, to_rgb_array


class GenericImages(Dataset):
    """Generic natural images for the penalty loss, found recursively under ``folders``:
    resized to twice the model size and centre-cropped (as anomalib prepares ImageNet)."""

    def __init__(self, folders, image_size: tuple[int, int]) -> None:
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        self.paths = [path for folder in folders for path in find_images(folder, "penalty image")]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        h, w = self.image_size
        big = torch.from_numpy(to_rgb_array(open_image(self.paths[index], "penalty image"), (2 * h, 2 * w)))
        top, left = (big.shape[1] - h) // 2, (big.shape[2] - w) // 2
        return big[:, top:top + h, left:left + w]
