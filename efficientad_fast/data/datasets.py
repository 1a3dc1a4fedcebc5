"""Dataset loaders for MVTec AD, VisA, MVTec LOCO, MPDD and generic folders: the fixed
``train/good``, ``test/<label>`` layout, or arbitrary normal/abnormal/mask folders
(:class:`FolderLayout`, as anomalib's ``Folder``) with a seeded test split of the normal
images when there is no normal test folder; and labelled folders (``good/`` + defect
folders) for choosing a decision threshold.

The cheap checks (folders, file lists, masks present, CSV consistent) run when a dataset is
opened; decoding errors (corrupt bytes, a mask whose size differs from its image) are raised
when the item is loaded. Every message names the file or folder and what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..metrics import parse_defects_config
from ._io import DataError, image_size_of, mask_value, open_image, resize_mask, to_binary_mask, to_rgb_array
from .layouts import (
    GOOD,
    FolderLayout,
    Sample,
    _good,
    _read_visa_csv,
    _require_dir,
    _require_images,
    _scan_folder,
    _scan_folder_layout,
    _scan_loco,
    _scan_mvtec,
    _scan_visa,
)

DATASETS = ("mvtec_ad", "visa", "mvtec_loco", "mpdd", "folder")
_ALIASES = {
    "mvtec": "mvtec_ad",
    "mvtecad": "mvtec_ad",
    "mvtec_ad": "mvtec_ad",
    "visa": "visa",
    "loco": "mvtec_loco",
    "mvtec_loco": "mvtec_loco",
    "mvtecloco": "mvtec_loco",
    "mpdd": "mpdd",
    "folder": "folder",
}
_PRETTY = {
    "mvtec_ad": "MVTec AD",
    "visa": "VisA",
    "mvtec_loco": "MVTec LOCO",
    "mpdd": "MPDD",
    "folder": "folder dataset",
}
SPLITS = ("train", "validation", "test")
KINDS = ("good", "structural", "logical", "anomalous")


class AnomalyDataset(Dataset):
    """A list of :class:`Sample` read at ``image_size``.

    ``dataset[i]`` is a dict that torch's default collate batches::

        image    float32 (3, H, W) in [0, 1]   RGB, resized with an antialiasing filter
        mask     float32 (1, H, W) in {0, 1}   union of the ground-truth masks, nearest resize
        label    int 0 (good) / 1 (anomalous)
        path     str                           the image file
        defect   str                           "good" or the defect folder name
        kind     str                           "good" | "structural" | "logical" | "anomalous"
        has_mask bool                          False: anomalous but no ground truth on disk
        index    int                           position in this dataset

    ``image_size`` (H, W) or None keeps each image's own size (batch size 1 then, unless all
    images agree). ``transform``, if given, is called on the item dict and returns it.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: tuple[int, int] | int | None = (256, 256),
        *,
        name: str = "",
        category: str = "",
        split: str = "",
        root: str | os.PathLike = "",
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.image_size = _check_image_size(image_size)
        self.name = name
        self.category = category
        self.split = split
        self.root = str(root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        n_bad = sum(s.label for s in self.samples)
        return (
            f"AnomalyDataset({_PRETTY.get(self.name, self.name)} {self.category!r} {self.split}: "
            f"{len(self) - n_bad} good, {n_bad} anomalous, image_size={self.image_size})"
        )

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    def subset(self, indices: Sequence[int], split: str | None = None) -> "AnomalyDataset":
        """A dataset of the samples at ``indices`` (same size, transform, names)."""
        return AnomalyDataset(
            [self.samples[int(i)] for i in indices],
            self.image_size,
            name=self.name,
            category=self.category,
            split=self.split if split is None else split,
            root=self.root,
            transform=self.transform,
        )

    def with_image_size(self, image_size: tuple[int, int] | int | None) -> "AnomalyDataset":
        """The same samples read at another size."""
        out = self.subset(range(len(self)))
        out.image_size = _check_image_size(image_size)
        return out

    def load_image(self, index: int) -> torch.Tensor:
        """float32 (3, H, W) in [0, 1] of sample ``index`` (at ``image_size``)."""
        sample = self.samples[index]
        image = open_image(sample.path, "image")
        return torch.from_numpy(to_rgb_array(image, self.image_size))

    def load_mask(self, index: int, image_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """float32 (1, H, W) in {0, 1}: the union of the sample's ground-truth masks.

        ``image_hw`` is the original image's (H, W) for the size check; read from the image
        header when not given.
        """
        regions = self._read_regions(index, image_hw)
        if self.image_size is not None:
            shape = self.image_size
        elif regions:
            shape = regions[0][0].shape
        else:
            shape = _hw(image_size_of(self.samples[index].path)) if image_hw is None else image_hw
        union = np.zeros(shape, dtype=bool)
        for mask, _ in regions:
            union |= resize_mask(mask, self.image_size)
        return torch.from_numpy(union.astype(np.float32))[None]

    def region_masks(
        self, index: int, image_size: tuple[int, int] | int | None | str = "same"
    ) -> list[tuple[torch.Tensor, int]]:
        """The individual ground-truth masks of sample ``index``, each as (bool (H, W), value).

        ``value`` is the mask's largest pixel value (MVTec LOCO: the ``pixel_value`` of its
        defect in ``defects_config.json``, see :func:`read_loco_defects_config`), for sPRO.
        ``image_size="same"`` uses the dataset's size; None keeps the original resolution
        (sPRO's saturation areas are defined there).
        """
        size = self.image_size if image_size == "same" else _check_image_size(image_size)
        return [
            (torch.from_numpy(resize_mask(mask, size).copy()), value) for mask, value in self._read_regions(index, None)
        ]

    def _read_regions(self, index: int, image_hw: tuple[int, int] | None) -> list[tuple[np.ndarray, int]]:
        sample = self.samples[index]
        out = []
        for mask_path in sample.mask_paths:
            image = open_image(mask_path, "mask")
            mask_hw = (image.height, image.width)
            if image_hw is None:
                image_hw = _hw(image_size_of(sample.path))
            if mask_hw != tuple(image_hw):
                raise DataError(
                    f"mask {mask_path} is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image {sample.path} "
                    f"is {image_hw[1]}x{image_hw[0]}: a mask must have its image's size"
                )
            out.append((to_binary_mask(image), mask_value(image)))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        sample = self.samples[index]
        pil = open_image(sample.path, "image")
        image = torch.from_numpy(to_rgb_array(pil, self.image_size))
        mask = self.load_mask(index, (pil.height, pil.width))
        item = {
            "image": image,
            "mask": mask,
            "label": sample.label,
            "path": sample.path,
            "defect": sample.defect,
            "kind": sample.kind,
            "has_mask": sample.has_mask,
            "index": index,
        }
        return self.transform(item) if self.transform is not None else item

    def verify(self) -> None:
        """Decode every image and mask now (raises on the first bad file)."""
        for index in range(len(self)):
            self[index]


def _hw(width_height: tuple[int, int]) -> tuple[int, int]:
    return (width_height[1], width_height[0])


def _check_image_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(int(v) for v in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (height, width) with positive values or None, got {image_size}")
    return image_size


# -- layouts ---------------------------------------------------------------------------


def open_labelled_folder(
    folder: str | os.PathLike, image_size: tuple[int, int] | int | None = (256, 256)
) -> AnomalyDataset:
    """Labelled images without masks, for choosing a decision threshold
    (``train --threshold-from``): ``folder/good/`` holds normal images and every other
    subfolder (``folder/<defect>/``) anomalous ones, as a ``test/`` folder of the MVTec AD or
    folder layouts. Both kinds must be present."""
    folder = _require_dir(Path(folder), "labelled images")
    samples: list[Sample] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _require_images(sub, "labelled images")
        samples += (
            _good(images)
            if sub.name == GOOD
            else [Sample(str(image), 1, sub.name, "anomalous", (), has_mask=False) for image in images]
        )
    if not any(s.label == 0 for s in samples) or not any(s.label for s in samples):
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise DataError(
            f"labelled folder {folder} needs good/ and at least one defect folder with images; "
            f"it holds: {', '.join(names) or 'no folders'}"
        )
    return AnomalyDataset(samples, image_size, name="folder", split="validation", root=folder)


def _normalize_name(dataset: str) -> str:
    key = str(dataset).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return _ALIASES[key]


def open_dataset(
    root: str | os.PathLike,
    dataset: str,
    category: str | None = None,
    split: str = "train",
    image_size: tuple[int, int] | int | None = (256, 256),
    transform: Callable[[dict], dict] | None = None,
    defect_kinds: Mapping[str, str] | None = None,
    layout: FolderLayout | None = None,
) -> AnomalyDataset:
    """Open one category of a dataset on disk.

    Args:
        root: the dataset root (the folder holding the category folders; for VisA also
            ``split_csv/``). For ``"folder"`` with ``category=None`` the root itself holds
            ``train/`` and ``test/``.
        dataset: ``"mvtec_ad"`` (alias ``"mvtec"``), ``"visa"``, ``"mvtec_loco"`` (``"loco"``),
            ``"mpdd"`` or ``"folder"``.
        category: e.g. ``"bottle"``, ``"pcb1"``, ``"breakfast_box"``.
        split: ``"train"``, ``"test"``, or ``"validation"`` (MVTec LOCO, or a folder dataset
            with ``validation/good``; elsewhere hold out training images with
            :func:`split_train_validation`).
        image_size: (H, W) or an int for square; None keeps the original size.
        transform: called on each item dict (after loading), returns the dict.
        defect_kinds: {defect: "structural" | "logical"} to set ``kind`` of anomalous
            samples by defect name (e.g. ``SYNTHETIC_DEFECT_KINDS`` for the synthetic set);
            others stay "anomalous" (MVTec LOCO sets kinds from its folders).
        layout: for ``"folder"`` only: arbitrary normal/abnormal/mask folders
            (:class:`FolderLayout`) in place of ``train/good`` and ``test/<label>``.

    Raises FileNotFoundError for missing folders/files/masks and :class:`DataError`
    (a ValueError) for empty folders or inconsistent split files, naming the path.
    """
    name = _normalize_name(dataset)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    pretty = _PRETTY[name]
    if layout is not None and name != "folder":
        raise ValueError(f"a FolderLayout (normal/abnormal/mask folders) is for the folder dataset, not {pretty}")
    _require_dir(root, f"{pretty} root")
    if category is None and name != "folder":
        raise ValueError(f"{pretty} needs a category; {root} holds: {', '.join(list_categories(root, name)) or 'none'}")
    if split == "validation" and name in ("mvtec_ad", "visa", "mpdd"):
        raise ValueError(
            f"{pretty} has no validation split: hold out training images with "
            f"split_train_validation(open_dataset(root, {name!r}, {category!r}, 'train'))"
        )
    if name == "visa":
        assert category is not None  # refused above without one
        samples = _scan_visa(root, category, split)
    else:
        base = root if category is None else root / category
        _require_dir(base, f"{pretty} category")
        if name in ("mvtec_ad", "mpdd"):
            if split == "test" and _is_loco(base):
                raise DataError(f"{base} is in MVTec LOCO's layout: open it as dataset 'mvtec_loco' (--dataset loco)")
            samples = _scan_mvtec(base, split, pretty)
        elif name == "mvtec_loco":
            samples = _scan_loco(base, split)
        elif layout is not None:
            samples = _scan_folder_layout(base, split, layout)
        else:
            samples = _scan_folder(base, split)
    if defect_kinds:
        bad = sorted({k for k in defect_kinds.values() if k not in ("structural", "logical")})
        if bad:
            raise ValueError(f"defect_kinds values must be 'structural' or 'logical', got {bad}")
        samples = [
            replace(s, kind=defect_kinds[s.defect]) if s.label and s.defect in defect_kinds else s for s in samples
        ]
    return AnomalyDataset(
        samples, image_size, name=name, category=category or "", split=split, root=root, transform=transform
    )


def list_categories(root: str | os.PathLike, dataset: str) -> list[str]:
    """Category names found under ``root`` (folders with a ``train/`` folder; VisA: the
    objects of ``split_csv/1cls.csv``). A root may hold both MVTec AD- and MVTec LOCO-layout
    categories (the synthetic ``kit`` beside ``weave`` and ``board``): a folder whose
    ``test/`` holds ``logical_anomalies`` or ``structural_anomalies`` is listed for
    ``mvtec_loco`` only, the others for every layout but ``mvtec_loco``."""
    name = _normalize_name(dataset)
    root = Path(root)
    if name == "visa":
        return sorted({r["object"] for r in _read_visa_csv(root)[1]})
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "train").is_dir() and not p.name.startswith(".")]
    return sorted(p.name for p in found if _is_loco(p) == (name == "mvtec_loco"))


def _is_loco(base: Path) -> bool:
    return any((base / "test" / folder).is_dir() for folder in ("logical_anomalies", "structural_anomalies"))


def read_loco_defects_config(root: str | os.PathLike, category: str) -> dict[int, dict]:
    """MVTec LOCO ``<root>/<category>/defects_config.json`` as {pixel_value: entry}, parsed and
    checked by :func:`efficientad_fast.metrics.parse_defects_config`; entries keep the file's
    keys (defect_name, pixel_value, saturation_threshold, relative_saturation)."""
    path = Path(root) / category / "defects_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"MVTec LOCO defects config {path} does not exist")
    try:
        return parse_defects_config(path)
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"cannot parse MVTec LOCO defects config {path}: {error}") from error


# -- splitting and loading -------------------------------------------------------------


def split_train_validation(
    dataset: AnomalyDataset, fraction: float = 0.1, seed: int = 0
) -> tuple[AnomalyDataset, AnomalyDataset]:
    """Hold out ``fraction`` of ``dataset`` (at least one image) as validation, deterministically
    for a given seed (independent of torch/numpy global state). Both parts keep file order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = len(dataset)
    if n < 2:
        raise ValueError(f"cannot split {n} image(s) into train and validation: {dataset!r}")
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    val = np.sort(order[:n_val])
    train = np.sort(order[n_val:])
    return dataset.subset(train.tolist()), dataset.subset(val.tolist(), split="validation")


def _seed_worker(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int = 1,
    shuffle: bool = False,
    workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader with ``workers`` processes whose order (and worker RNG) depends only on
    ``seed``: the same seed gives the same batches for any number of workers."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        worker_init_fn=_seed_worker if workers > 0 else None,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )


__all__ = [
    "AnomalyDataset",
    "DATASETS",
    "FolderLayout",
    "KINDS",
    "Sample",
    "list_categories",
    "read_loco_defects_config",
    "make_loader",
    "open_dataset",
    "open_labelled_folder",
    "split_train_validation",
]
