"""The on-disk layouts of the datasets: MVTec AD (and MPDD), MVTec LOCO, VisA (its split CSV) and
folders (a FolderLayout), scanned into :class:`Sample` lists without decoding an image."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ._io import IMAGE_SUFFIXES, DataError, find_images, list_images

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
            raise DataError(
                f"normal folder {base / layout.normal_dir} holds {len(normal)} image: a test split "
                "needs at least 2 (or give a normal test folder)"
            )
        n_test = min(len(normal) - 1, max(1, int(round(layout.normal_split_ratio * len(normal)))))
        order = np.random.default_rng(layout.seed).permutation(len(normal))
        held = set(order[:n_test].tolist())
        train = [p for i, p in enumerate(normal) if i not in held]
        test_normal = [p for i, p in enumerate(normal) if i in held]
    if split == "train":
        return _good(train)
    if test_normal is None:
        assert layout.normal_test_dir is not None  # FolderLayout: a split ratio or a test folder
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
