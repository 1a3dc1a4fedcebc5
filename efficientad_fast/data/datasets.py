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

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..metrics import parse_defects_config
from ._io import (
    DataError,
    IMAGE_SUFFIXES,
    find_images,
    image_size_of,
    list_images,
    mask_value,
    open_image,
    resize_mask,
    to_binary_mask,
    to_rgb_array,
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
GOOD = "good"
_LOCO_TEST_KINDS = {"good": "good", "logical_anomalies": "logical", "structural_anomalies": "structural"}
_VISA_CSV = ("split_csv", "1cls.csv")
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``mask_paths`` holds the ground-truth files (several for MVTec LOCO, OR-ed into one mask;
    empty for good images). ``has_mask`` is False only for anomalous images of a folder
    dataset without a ``ground_truth/<label>/`` folder: their mask is unknown (all zeros).
    """

    path: str
    label: int
    defect: str
    kind: str
    mask_paths: tuple[str, ...] = ()
    has_mask: bool = True


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
        image_size: tuple[int, int] | None = (256, 256),
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
            (torch.from_numpy(resize_mask(mask, size).copy()), value)
            for mask, value in self._read_regions(index, None)
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


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        hint = ""
        parent = path.parent
        if parent.is_dir():
            names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
            hint = f" ({parent} holds: {', '.join(names) if names else 'no folders'})"
        raise FileNotFoundError(f"{what} folder {path} does not exist{hint}")
    return path


def _require_images(folder: Path, what: str) -> list[Path]:
    images = list_images(_require_dir(folder, what))
    if not images:
        raise DataError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def _find_mask(folder: Path, stem: str, names: Sequence[str]) -> Path | None:
    for name in names:
        for suffix in IMAGE_SUFFIXES:
            for candidate in (folder / f"{name}{suffix}", folder / f"{name}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _good(images: Sequence[Path]) -> list[Sample]:
    return [Sample(str(p), 0, GOOD, "good") for p in images]


def _scan_mvtec(base: Path, split: str, pretty: str) -> list[Sample]:
    """MVTec AD / MPDD: train/good, test/{good,<defect>}, ground_truth/<defect>/<stem>_mask.png."""
    if split == "train":
        return _good(_require_images(base / "train" / "good", f"{pretty} train"))

    def anomalous(image: Path, defect: str, gt: Path) -> Sample:
        mask = _find_mask(gt, image.stem, (f"{image.stem}_mask",))
        if mask is None:
            raise FileNotFoundError(
                f"anomalous test image {image} has no mask: expected {gt / (image.stem + '_mask.png')}"
            )
        return Sample(str(image), 1, defect, "anomalous", (str(mask),))

    return _scan_test_folders(base, pretty, "defect", anomalous)


def _scan_loco(base: Path, split: str) -> list[Sample]:
    """MVTec LOCO: train/good, validation/good, test/{good,logical_anomalies,structural_anomalies};
    masks ground_truth/<type>/<stem>/000.png, 001.png, ..."""
    if split in ("train", "validation"):
        return _good(_require_images(base / split / "good", f"MVTec LOCO {split}"))
    test = _require_dir(base / "test", "MVTec LOCO test")
    samples: list[Sample] = []
    for name, kind in _LOCO_TEST_KINDS.items():
        folder = test / name
        if not folder.is_dir():
            raise FileNotFoundError(f"MVTec LOCO test folder {folder} does not exist")
        images = _require_images(folder, "MVTec LOCO test")
        if kind == "good":
            samples += _good(images)
            continue
        for image in images:
            mask_dir = base / "ground_truth" / name / image.stem
            masks = list_images(mask_dir) if mask_dir.is_dir() else []
            if not masks:
                raise FileNotFoundError(
                    f"anomalous test image {image} has no mask: expected {mask_dir}/000.png (, 001.png, ...)"
                )
            samples.append(Sample(str(image), 1, name, kind, tuple(str(m) for m in masks)))
    return samples


def _scan_folder(base: Path, split: str) -> list[Sample]:
    """Generic: train/good, optional validation/good, test/<label>/ (good = normal), optional
    ground_truth/<label>/<stem>_mask.png or <stem>.png."""
    if split in ("train", "validation"):
        if split == "validation" and not (base / "validation").is_dir():
            raise ValueError(
                f"folder dataset {base} has no validation/good folder: hold out training images "
                f"with split_train_validation(open_dataset(..., split='train'))"
            )
        return _good(_require_images(base / split / "good", f"folder dataset {split}"))

    def anomalous(image: Path, label: str, gt: Path) -> Sample:
        if not gt.is_dir():
            return Sample(str(image), 1, label, "anomalous", (), has_mask=False)
        mask = _find_mask(gt, image.stem, (f"{image.stem}_mask", image.stem))
        if mask is None:
            raise FileNotFoundError(
                f"anomalous test image {image} has no mask: expected {gt / (image.stem + '_mask.png')} "
                f"or {gt / (image.stem + '.png')} (ground_truth/{label}/ exists)"
            )
        return Sample(str(image), 1, label, "anomalous", (str(mask),))

    return _scan_test_folders(base, "folder dataset", "label", anomalous)


@dataclass(frozen=True)
class FolderLayout:
    """A folder dataset with arbitrary folders, as anomalib's ``Folder``: each folder is
    relative to the dataset root (``root/category`` with a category) or absolute, and its
    images are found recursively.

    Args:
        normal_dir: normal (good) images. Without ``normal_test_dir`` a seeded
            ``normal_split_ratio`` of them (at least one) is the test split's normal part
            and the rest the training split; with it, all of them train.
        abnormal_dir: anomalous images for the test split (None: a test split of normal
            images only). An image directly in it has the defect name of the folder; one in
            a subfolder, the subfolder's name.
        mask_dir: ground-truth masks of the anomalous images, in the same subfolders as
            under ``abnormal_dir``, named ``<stem>_mask.<ext>`` or ``<stem>.<ext>``. None:
            masks unknown (``has_mask`` False; pixel metrics need masks).
        normal_test_dir: normal test images, when they are kept apart.
        normal_split_ratio: share of ``normal_dir`` held out for testing, in (0, 1).
        seed: the test split's seed (train and test are disjoint for the same seed).
    """

    normal_dir: str
    abnormal_dir: str | None = None
    mask_dir: str | None = None
    normal_test_dir: str | None = None
    normal_split_ratio: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.normal_dir:
            raise ValueError("FolderLayout needs a normal_dir")
        if not 0.0 < float(self.normal_split_ratio) < 1.0:
            raise ValueError(f"normal_split_ratio must be in (0, 1), got {self.normal_split_ratio}")


def _scan_folder_layout(base: Path, split: str, layout: FolderLayout) -> list[Sample]:
    """The samples of ``split`` of a :class:`FolderLayout` under ``base``."""
    if split == "validation":
        raise ValueError(
            "a folder dataset with --normal-dir (a FolderLayout) has no validation split: hold out training "
            "images with split_train_validation(open_dataset(..., split='train', layout=layout))"
        )
    normal = find_images(_require_dir(base / layout.normal_dir, "normal images"), "normal images")
    if layout.normal_test_dir is not None:
        train, test_normal = normal, None
    else:
        if len(normal) < 2:
            raise DataError(f"normal folder {base / layout.normal_dir} holds {len(normal)} image: a test split "
                            "needs at least 2 (or give a normal test folder)")
        n_test = min(len(normal) - 1, max(1, int(round(layout.normal_split_ratio * len(normal)))))
        order = np.random.default_rng(layout.seed).permutation(len(normal))
        held = set(order[:n_test].tolist())
        train = [p for i, p in enumerate(normal) if i not in held]
        test_normal = [p for i, p in enumerate(normal) if i in held]
    if split == "train":
        return _good(train)
    if test_normal is None:
        folder = _require_dir(base / layout.normal_test_dir, "normal test images")
        test_normal = find_images(folder, "normal test images")
    samples = _good(test_normal)
    if layout.abnormal_dir is None:
        return samples
    abnormal = _require_dir(base / layout.abnormal_dir, "abnormal images")
    masks = None if layout.mask_dir is None else _require_dir(base / layout.mask_dir, "mask")
    for image in find_images(abnormal, "abnormal images"):
        relative = image.parent.relative_to(abnormal)
        defect = relative.parts[0] if relative.parts else abnormal.name
        if masks is None:
            samples.append(Sample(str(image), 1, defect, "anomalous", (), has_mask=False))
            continue
        mask = _find_mask(masks / relative, image.stem, (f"{image.stem}_mask", image.stem))
        if mask is None:
            raise FileNotFoundError(
                f"anomalous image {image} has no mask: expected {masks / relative / (image.stem + '_mask.png')} "
                f"or {masks / relative / (image.stem + '.png')}"
            )
        samples.append(Sample(str(image), 1, defect, "anomalous", (str(mask),)))
    return samples


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
        samples += _good(images) if sub.name == GOOD else [
            Sample(str(image), 1, sub.name, "anomalous", (), has_mask=False) for image in images]
    if not any(s.label == 0 for s in samples) or not any(s.label for s in samples):
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise DataError(f"labelled folder {folder} needs good/ and at least one defect folder with images; "
                        f"it holds: {', '.join(names) or 'no folders'}")
    return AnomalyDataset(samples, image_size, name="folder", split="validation", root=folder)


def _scan_test_folders(
    base: Path, pretty: str, label_word: str, anomalous: Callable[[Path, str, Path], Sample]
) -> list[Sample]:
    """test/good and test/<label>/ folders (sorted, hidden skipped): good images, and
    ``anomalous(image, label, base/ground_truth/<label>)`` for each image of another folder."""
    test = _require_dir(base / "test", f"{pretty} test")
    samples: list[Sample] = []
    for folder in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _require_images(folder, f"{pretty} test")
        if folder.name == GOOD:
            samples += _good(images)
            continue
        gt = base / "ground_truth" / folder.name
        samples += [anomalous(image, folder.name, gt) for image in images]
    if not samples:
        raise DataError(f"{pretty} test folder {test} holds no image folders (good, <{label_word}>, ...)")
    return samples


def _read_visa_csv(root: Path) -> tuple[Path, list[dict[str, str]]]:
    path = root.joinpath(*_VISA_CSV)
    if not path.is_file():
        raise FileNotFoundError(f"VisA split file {path} does not exist (the raw VisA download has it)")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in _VISA_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"VisA split file {path} lacks column(s) {missing}; found {columns}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return path, rows


def _visa_defects(base: Path, root: Path) -> dict[str, str]:
    """image (relative to root) -> defect name from the optional <cat>/image_anno.csv."""
    anno = base / "image_anno.csv"
    out: dict[str, str] = {}
    if not anno.is_file():
        return out
    try:
        with open(anno, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"image", "label"} <= {c.strip() for c in reader.fieldnames}:
                return out
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                out[os.path.normpath(row["image"])] = row["label"].replace(" ", "_") or "anomaly"
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return out


def _scan_visa(root: Path, category: str, split: str) -> list[Sample]:
    """VisA raw layout, split from split_csv/1cls.csv (object,split,label,image,mask; paths
    relative to the VisA root; label normal/anomaly; mask empty for normal images)."""
    base = _require_dir(root / category, "VisA category")
    _require_dir(base / "Data" / "Images", "VisA images")
    csv_path, rows = _read_visa_csv(root)
    objects = sorted({r["object"] for r in rows})
    if category not in objects:
        raise DataError(f"VisA split file {csv_path} has no rows for object {category!r}; objects: {objects}")
    defects = _visa_defects(base, root)
    samples: list[Sample] = []
    missing: list[str] = []
    for line, row in enumerate(rows, start=2):
        if row["object"] != category or row["split"] != split:
            continue
        label = row["label"].lower()
        if label not in ("normal", "anomaly"):
            raise DataError(f"VisA split file {csv_path} line {line}: label {row['label']!r} is not normal/anomaly")
        image = root / row["image"]
        if not image.is_file():
            missing.append(f"image {image}")
            continue
        if label == "normal":
            samples.append(Sample(str(image), 0, GOOD, "good"))
            continue
        if not row["mask"]:
            raise FileNotFoundError(
                f"anomalous VisA image {image} has no mask in {csv_path} line {line} (mask column empty)"
            )
        mask = root / row["mask"]
        if not mask.is_file():
            missing.append(f"mask {mask} of anomalous image {image}")
            continue
        defect = defects.get(os.path.normpath(row["image"]), "anomaly")
        samples.append(Sample(str(image), 1, defect, "anomalous", (str(mask),)))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"VisA split file {csv_path} lists files that do not exist: {'; '.join(missing[:5])}{more}"
        )
    if not samples:
        raise DataError(f"VisA split file {csv_path} has no {split} rows for object {category!r}")
    return samples


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
        samples = _scan_visa(root, category, split)
    else:
        base = root if category is None else root / category
        _require_dir(base, f"{pretty} category")
        if name in ("mvtec_ad", "mpdd"):
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
    objects of ``split_csv/1cls.csv``)."""
    name = _normalize_name(dataset)
    root = Path(root)
    if name == "visa":
        return sorted({r["object"] for r in _read_visa_csv(root)[1]})
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "train").is_dir() and not p.name.startswith("."))


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
