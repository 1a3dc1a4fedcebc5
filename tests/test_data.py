"""Dataset loaders (MVTec AD, VisA, MVTec LOCO, MPDD, folder), loading/splitting, errors,
and the synthetic dataset generator. Every dataset here is a tiny tree written to tmp_path."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from efficientad_fast import data as D
from efficientad_fast.data import (
    AnomalyDataset,
    DataError,
    list_categories,
    make_loader,
    make_synthetic,
    open_dataset,
    read_loco_defects_config,
    split_train_validation,
)

HAVE_SKIMAGE = importlib.util.find_spec("skimage") is not None
SIZE = (40, 48)  # (H, W) of the written images: not square, so H/W mix-ups show
OUT = (32, 32)


# -- writers for each layout ----------------------------------------------------------------


def _rng_image(rng, hw=SIZE) -> np.ndarray:
    return rng.integers(0, 256, (*hw, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _box_mask(hw=SIZE, box=(5, 5, 15, 20), value=255) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = value
    return mask


def write_mvtec(root: Path, category="widget", n_train=6, n_good=3, defects=(("scratch", 2), ("hole", 2))) -> Path:
    """MVTec AD / MPDD layout with random images and rectangular 0/255 masks."""
    rng = np.random.default_rng(0)
    base = root / category
    for i in range(n_train):
        _save(base / "train" / "good" / f"{i:03d}.png", _rng_image(rng))
    for i in range(n_good):
        _save(base / "test" / "good" / f"{i:03d}.png", _rng_image(rng))
    for name, count in defects:
        for i in range(count):
            _save(base / "test" / name / f"{i:03d}.png", _rng_image(rng))
            _save(base / "ground_truth" / name / f"{i:03d}_mask.png", _box_mask())
    return root


def write_visa(root: Path, category="pcb9", n_train=5, n_test_good=2, n_anomaly=3) -> Path:
    """VisA raw layout: JPG images, masks with pixel value 1 (as VisA's), split_csv/1cls.csv."""
    rng = np.random.default_rng(1)
    base = root / category / "Data"
    rows = [("object", "split", "label", "image", "mask")]
    for i in range(n_train + n_test_good):
        rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
        _save(root / rel, _rng_image(rng), format="JPEG")
        rows.append((category, "train" if i < n_train else "test", "normal", rel, ""))
    anno = [("image", "label", "mask")]
    for i in range(n_anomaly):
        rel = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
        mrel = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
        _save(root / rel, _rng_image(rng), format="JPEG")
        _save(root / mrel, _box_mask(value=1))
        rows.append((category, "test", "anomaly", rel, mrel))
        anno.append((rel, "bent lead" if i % 2 else "scratch", mrel))
    rows.append(("other", "train", "normal", "other/Data/Images/Normal/0000.JPG", ""))  # another object
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with open(root / category / "image_anno.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(anno)
    assert base.is_dir()
    return root


def write_loco(root: Path, category="box", n_train=4, n_val=2, n_good=2, n_logical=2, n_structural=2) -> Path:
    """MVTec LOCO layout; each anomalous image has two masks (000.png, 001.png) with different
    pixel values and disjoint regions, plus defects_config.json."""
    rng = np.random.default_rng(2)
    base = root / category
    for split, n in (("train", n_train), ("validation", n_val)):
        for i in range(n):
            _save(base / split / "good" / f"{i:03d}.png", _rng_image(rng))
    for i in range(n_good):
        _save(base / "test" / "good" / f"{i:03d}.png", _rng_image(rng))
    for kind, n, value in (("logical_anomalies", n_logical, 255), ("structural_anomalies", n_structural, 254)):
        for i in range(n):
            _save(base / "test" / kind / f"{i:03d}.png", _rng_image(rng))
            gt = base / "ground_truth" / kind / f"{i:03d}"
            _save(gt / "000.png", _box_mask(box=(2, 2, 10, 10), value=value))
            _save(gt / "001.png", _box_mask(box=(20, 30, 30, 40), value=value))
    config = [
        {"defect_name": "missing_thing", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
        {"defect_name": "dent", "pixel_value": 254, "saturation_threshold": 300, "relative_saturation": False},
    ]
    (base / "defects_config.json").write_text(json.dumps(config))
    return root


def write_folder(root: Path, with_gt=True) -> Path:
    """Generic folder layout without category; masks named <stem>.png."""
    rng = np.random.default_rng(3)
    for i in range(4):
        _save(root / "train" / "good" / f"img{i}.png", _rng_image(rng))
    for i in range(2):
        _save(root / "test" / "good" / f"ok{i}.png", _rng_image(rng))
        _save(root / "test" / "bad" / f"bad{i}.png", _rng_image(rng))
        _save(root / "test" / "odd" / f"odd{i}.png", _rng_image(rng))
        if with_gt:
            _save(root / "ground_truth" / "bad" / f"bad{i}.png", _box_mask())
    return root


# -- real layouts -----------------------------------------------------------------------------


def _check_item(item, shape=OUT):
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *shape)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, *shape)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert (item["mask"].sum() > 0) == (item["label"] == 1 and item["has_mask"])


@pytest.mark.parametrize("name", ["mvtec_ad", "mvtec", "mpdd"])
def test_mvtec_layout(tmp_path, name):
    root = write_mvtec(tmp_path)
    train = open_dataset(root, name, "widget", "train", image_size=OUT)
    test = open_dataset(root, name, "widget", "test", image_size=OUT)
    assert len(train) == 6 and train.labels.sum() == 0
    assert len(test) == 7 and test.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert [s.defect for s in test.samples] == ["good"] * 3 + ["hole"] * 2 + ["scratch"] * 2
    for i in range(len(test)):
        item = test[i]
        _check_item(item)
        assert item["kind"] == ("good" if item["label"] == 0 else "anomalous")
        assert item["path"] == test.samples[i].path and item["index"] == i
    assert list_categories(root, name) == ["widget"]


def test_visa_layout(tmp_path):
    root = write_visa(tmp_path)
    train = open_dataset(root, "visa", "pcb9", "train", image_size=OUT)
    test = open_dataset(root, "visa", "pcb9", "test", image_size=OUT)
    assert len(train) == 5 and train.labels.sum() == 0
    assert len(test) == 5 and test.labels.tolist() == [0, 0, 1, 1, 1]
    assert [s.defect for s in test.samples] == ["good", "good", "scratch", "bent_lead", "scratch"]
    for i in range(len(test)):
        _check_item(test[i])  # VisA masks use pixel value 1: still a full binary mask
    assert test[2]["mask"].sum() > 0
    assert list_categories(root, "visa") == ["other", "pcb9"]


def test_loco_layout_kinds_and_mask_union(tmp_path):
    root = write_loco(tmp_path)
    train = open_dataset(root, "mvtec_loco", "box", "train", image_size=None)
    validation = open_dataset(root, "loco", "box", "validation", image_size=None)
    test = open_dataset(root, "mvtec_loco", "box", "test", image_size=None)
    assert (len(train), len(validation), len(test)) == (4, 2, 6)
    assert validation.split == "validation" and validation.labels.sum() == 0
    assert [s.kind for s in test.samples] == ["good"] * 2 + ["logical"] * 2 + ["structural"] * 2
    assert [s.defect for s in test.samples][2:] == ["logical_anomalies"] * 2 + ["structural_anomalies"] * 2
    item = test[2]
    expected = np.zeros(SIZE, bool)
    expected[2:10, 2:10] = True
    expected[20:30, 30:40] = True
    assert item["mask"].shape == (1, *SIZE)
    assert torch.equal(item["mask"][0].bool(), torch.from_numpy(expected))  # OR of both masks
    regions = test.region_masks(2, image_size=None)
    assert len(regions) == 2 and [v for _, v in regions] == [255, 255]
    assert regions[0][0].sum() == 64 and regions[1][0].sum() == 100
    assert [v for _, v in test.region_masks(4)] == [254, 254]
    config = read_loco_defects_config(root, "box")
    assert config[254]["defect_name"] == "dent" and config[255]["relative_saturation"] is True
    with pytest.raises(FileNotFoundError, match=r"nope[/\\]defects_config.json does not exist"):
        read_loco_defects_config(root, "nope")
    (root / "box" / "defects_config.json").write_text('[{"defect_name": "x", "pixel_value": 1}]')
    with pytest.raises(DataError, match=r"defects_config.json: .*lacks"):
        read_loco_defects_config(root, "box")
    assert test[0]["kind"] == "good" and test[0]["mask"].sum() == 0


def test_folder_layout(tmp_path):
    root = write_folder(tmp_path / "data")
    train = open_dataset(root, "folder", None, "train", image_size=OUT)
    test = open_dataset(root, "folder", split="test", image_size=OUT)
    assert len(train) == 4
    assert [(s.defect, s.label, s.has_mask) for s in test.samples] == [
        ("bad", 1, True),
        ("bad", 1, True),
        ("good", 0, True),
        ("good", 0, True),
        ("odd", 1, False),
        ("odd", 1, False),
    ]
    for i in range(len(test)):
        _check_item(test[i])
    assert test[0]["mask"].sum() > 0 and test[4]["mask"].sum() == 0 and test[4]["has_mask"] is False
    with pytest.raises(ValueError, match="split_train_validation"):
        open_dataset(root, "folder", None, "validation")


def write_free_folders(root: Path, n_normal=10) -> Path:
    """anomalib-Folder-style tree: normal/, abnormal/{crack,<loose>}, masks/ mirroring abnormal/."""
    rng = np.random.default_rng(3)
    for i in range(n_normal):
        _save(root / "normal" / f"n{i:02d}.png", _rng_image(rng))
    _save(root / "abnormal" / "loose.png", _rng_image(rng))  # directly inside: defect "abnormal"
    _save(root / "masks" / "loose_mask.png", _box_mask())
    for i in range(2):
        _save(root / "abnormal" / "crack" / f"c{i}.png", _rng_image(rng))
        _save(root / "masks" / "crack" / f"c{i}.png", _box_mask())
    return root


def test_folder_with_free_folders_splits_normal_images_for_test(tmp_path):
    root = write_free_folders(tmp_path / "data")
    layout = D.FolderLayout(normal_dir="normal", abnormal_dir="abnormal", mask_dir="masks")
    train = open_dataset(root, "folder", None, "train", image_size=OUT, layout=layout)
    test = open_dataset(root, "folder", None, "test", image_size=OUT, layout=layout)
    normal = sorted(str(p) for p in (root / "normal").glob("*.png"))
    test_normal = [s.path for s in test.samples if s.label == 0]
    assert len(train) == 8 and len(test_normal) == 2  # round(0.2 * 10) held out for testing
    assert sorted(train.paths + test_normal) == normal and not set(train.paths) & set(test_normal)
    assert sorted(s.defect for s in test.samples if s.label) == ["abnormal", "crack", "crack"]
    for i in range(len(test)):
        item = test[i]
        _check_item(item)
        assert float(item["mask"].sum() > 0) == item["label"]  # masks found for every anomalous image
    # Same seed, same split; another seed, another split of the same size.
    again = open_dataset(root, "folder", None, "train", image_size=OUT, layout=layout)
    assert again.paths == train.paths
    other = open_dataset(
        root, "folder", None, "train", image_size=OUT, layout=D.FolderLayout(normal_dir="normal", seed=5)
    )
    assert len(other) == 8 and other.paths != train.paths
    # A normal test folder of its own: every normal image trains.
    layout = D.FolderLayout(normal_dir="normal", normal_test_dir="abnormal/crack")
    assert len(open_dataset(root, "folder", None, "train", image_size=OUT, layout=layout)) == 10
    # No masks: anomalous images say so.
    test = open_dataset(
        root,
        "folder",
        None,
        "test",
        image_size=OUT,
        layout=D.FolderLayout(normal_dir="normal", abnormal_dir="abnormal"),
    )
    assert [s.has_mask for s in test.samples if s.label] == [False] * 3


def test_folder_with_free_folders_errors(tmp_path):
    root = write_free_folders(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="normal images folder"):
        open_dataset(root, "folder", None, "train", layout=D.FolderLayout(normal_dir="nope"))
    (root / "masks" / "crack" / "c1.png").unlink()
    with pytest.raises(FileNotFoundError, match="c1.png has no mask"):
        open_dataset(
            root,
            "folder",
            None,
            "test",
            layout=D.FolderLayout(normal_dir="normal", abnormal_dir="abnormal", mask_dir="masks"),
        )
    with pytest.raises(ValueError, match="no validation split"):
        open_dataset(root, "folder", None, "validation", layout=D.FolderLayout(normal_dir="normal"))
    with pytest.raises(ValueError, match="for the folder dataset"):
        open_dataset(root, "mvtec", "x", "train", layout=D.FolderLayout(normal_dir="normal"))
    with pytest.raises(ValueError, match="normal_split_ratio"):
        D.FolderLayout(normal_dir="normal", normal_split_ratio=1.0)


def test_open_labelled_folder(tmp_path):
    root = write_mvtec(tmp_path / "mvtec")
    labelled = D.open_labelled_folder(root / "widget" / "test", image_size=OUT)
    assert [(s.defect, s.label) for s in labelled.samples] == [("good", 0)] * 3 + [("hole", 1)] * 2 + [
        ("scratch", 1)
    ] * 2  # good/ first, then the defect folders in name order
    with pytest.raises(DataError, match="needs good/ and at least one defect folder"):
        D.open_labelled_folder(root / "widget" / "train")


def test_native_size_and_with_image_size(tmp_path):
    root = write_mvtec(tmp_path)
    test = open_dataset(root, "mvtec", "widget", "test", image_size=None)
    assert test[4]["image"].shape == (3, *SIZE) and test[4]["mask"].shape == (1, *SIZE)
    assert test[0]["mask"].shape == (1, *SIZE)
    assert test.with_image_size(16)[4]["image"].shape == (3, 16, 16)


# -- image decoding and resizing ------------------------------------------------------------


def _single(tmp_path, array_or_image, mask=None, image_size=OUT, name="000.png") -> AnomalyDataset:
    """A one-image MVTec tree whose test/defect image is ``array_or_image``."""
    base = tmp_path / "m" / "c"
    path = base / "test" / "d" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    image.save(path)
    if mask is None:
        mask = _box_mask(hw=(image.height, image.width), box=(0, 0, 4, 4))
    _save(base / "ground_truth" / "d" / (Path(name).stem + "_mask.png"), mask)
    return open_dataset(tmp_path / "m", "mvtec", "c", "test", image_size=image_size)


def test_resize_is_antialiased_and_masks_stay_binary(tmp_path):
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    blob = _box_mask(hw=(64, 64), box=(9, 13, 41, 30))
    blob[20:24, 40:60] = 255
    ds = _single(tmp_path, np.stack([checker] * 3, -1), mask=blob, image_size=(32, 32))
    item = ds[0]
    # A 1-pixel checkerboard averages to grey when shrunk with an antialiasing filter;
    # point sampling would keep pure 0/1 values.
    assert abs(item["image"].mean().item() - 0.5) < 0.02
    assert item["image"].std().item() < 0.05
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert 0 < item["mask"].sum() < 32 * 32
    assert abs(item["mask"].sum().item() - (blob > 0).sum() / 4) < 40
    up = ds.with_image_size((80, 72))[0]
    assert set(up["mask"].unique().tolist()) <= {0.0, 1.0}


def test_image_modes(tmp_path):
    gray = np.full((20, 24), 128, np.uint8)
    item = _single(tmp_path / "l", gray, image_size=None)[0]
    assert item["image"].shape == (3, 20, 24) and torch.allclose(item["image"], torch.full((3, 20, 24), 128 / 255))

    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha dropped, colour kept
    item = _single(tmp_path / "rgba", rgba, image_size=None)[0]
    assert torch.allclose(item["image"][0], torch.full((20, 24), 200 / 255)) and item["image"][1:].max() == 0

    sixteen = np.full((20, 24), 32768, np.uint16)
    sixteen[:, :12] = 65535
    img16 = Image.fromarray(sixteen)
    assert img16.mode.startswith("I")
    item = _single(tmp_path / "i16", img16, image_size=None)[0]
    assert (
        abs(item["image"][0, 0, 0].item() - 1.0) < 1e-6 and abs(item["image"][1, 0, 20].item() - 32768 / 65535) < 1e-6
    )
    item = _single(tmp_path / "i16r", img16, image_size=(10, 12))[0]
    assert item["image"].shape == (3, 10, 12) and abs(item["image"][2, 5, 10].item() - 32768 / 65535) < 1e-4

    palette = Image.new("P", (24, 20), 0)
    palette.putpalette([10, 200, 30] + [0] * 765)
    item = _single(tmp_path / "p", palette, image_size=None)[0]
    assert torch.allclose(item["image"][:, 0, 0], torch.tensor([10, 200, 30]) / 255.0, atol=0.02)


# -- splitting and loading -------------------------------------------------------------------


def test_split_train_validation_is_deterministic(tmp_path):
    root = write_mvtec(tmp_path, n_train=20)
    train = open_dataset(root, "mvtec", "widget", "train", image_size=OUT)
    a_train, a_val = split_train_validation(train, fraction=0.25, seed=3)
    b_train, b_val = split_train_validation(train, fraction=0.25, seed=3)
    assert a_val.paths == b_val.paths and a_train.paths == b_train.paths
    assert len(a_val) == 5 and len(a_train) == 15
    assert sorted(a_val.paths + a_train.paths) == train.paths and not set(a_val.paths) & set(a_train.paths)
    assert a_val.paths == sorted(a_val.paths) and a_val.split == "validation"
    assert split_train_validation(train, 0.25, seed=4)[1].paths != a_val.paths
    torch.manual_seed(123)
    np.random.seed(123)
    assert split_train_validation(train, 0.25, seed=3)[1].paths == a_val.paths  # no global RNG use
    assert len(split_train_validation(train, 0.01)[1]) == 1
    with pytest.raises(ValueError, match="fraction"):
        split_train_validation(train, 1.0)


def test_make_loader_workers_give_same_batches(tmp_path):
    root = write_mvtec(tmp_path)
    test = open_dataset(root, "mvtec", "widget", "test", image_size=OUT)

    def batches(workers):
        return [b for b in make_loader(test, batch_size=3, shuffle=True, workers=workers, seed=7)]

    single, multi = batches(0), batches(2)
    assert [b["path"] for b in single] == [b["path"] for b in multi]
    assert [b["path"] for b in single] != [[s.path for s in test.samples[i : i + 3]] for i in range(0, 7, 3)]
    for s, m in zip(single, multi):
        assert torch.equal(s["image"], m["image"]) and torch.equal(s["mask"], m["mask"])
        assert torch.equal(s["label"], m["label"]) and s["kind"] == m["kind"]
    assert single[0]["image"].shape == (3, 3, *OUT) and single[0]["mask"].shape == (3, 1, *OUT)
    ordered = make_loader(test, batch_size=4)
    assert sum(len(b["path"]) for b in ordered) == 7 and next(iter(ordered))["path"] == test.paths[:4]


# -- errors -------------------------------------------------------------------------------------


def test_missing_folders(tmp_path):
    root = write_mvtec(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere.*does not exist.*widget"):
        open_dataset(root, "mvtec", "nothere", "train")
    with pytest.raises(FileNotFoundError, match="no_root"):
        open_dataset(tmp_path / "no_root", "mvtec", "widget", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset(root, "imagenet", "widget")
    with pytest.raises(ValueError, match="split"):
        open_dataset(root, "mvtec", "widget", "val")
    with pytest.raises(ValueError, match="split_train_validation"):
        open_dataset(root, "mvtec", "widget", "validation")
    loco = write_loco(tmp_path / "loco")
    import shutil

    shutil.rmtree(loco / "box" / "test" / "logical_anomalies")
    with pytest.raises(FileNotFoundError, match="logical_anomalies"):
        open_dataset(loco, "mvtec_loco", "box", "test")


def test_empty_category(tmp_path):
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "good" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match=r"empty[/\\]train[/\\]good holds no images"):
        open_dataset(tmp_path, "mvtec", "empty", "train")


def test_corrupt_image_raises_at_load_with_path(tmp_path):
    root = write_mvtec(tmp_path)
    bad = root / "widget" / "train" / "good" / "002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    train = open_dataset(root, "mvtec", "widget", "train", image_size=OUT)  # cheap checks pass
    train[0]
    with pytest.raises(DataError, match="002.png"):
        train[2]
    truncated = root / "widget" / "train" / "good" / "003.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="003.png"):
        train[3]


def test_mask_size_mismatch(tmp_path):
    root = write_mvtec(tmp_path)
    mask = root / "widget" / "ground_truth" / "hole" / "001_mask.png"
    _save(mask, _box_mask(hw=(SIZE[0] + 1, SIZE[1])))
    test = open_dataset(root, "mvtec", "widget", "test", image_size=OUT)
    with pytest.raises(DataError, match=r"001_mask.png.*48x41.*hole[/\\]001.png.*48x40"):
        test[4]


def test_missing_mask(tmp_path):
    root = write_mvtec(tmp_path)
    (root / "widget" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"scratch[/\\]001.png has no mask.*001_mask.png"):
        open_dataset(root, "mvtec", "widget", "test")
    loco = write_loco(tmp_path / "loco")
    for f in (loco / "box" / "ground_truth" / "structural_anomalies" / "001").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"structural_anomalies[/\\]001.png has no mask"):
        open_dataset(loco, "mvtec_loco", "box", "test")
    folder = write_folder(tmp_path / "folder")
    (folder / "ground_truth" / "bad" / "bad1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"bad1.png has no mask"):
        open_dataset(folder, "folder", None, "test")


def test_visa_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="1cls.csv"):
        (tmp_path / "v0" / "pcb9" / "Data" / "Images").mkdir(parents=True)
        open_dataset(tmp_path / "v0", "visa", "pcb9", "train")
    root = write_visa(tmp_path / "v1")
    with pytest.raises(DataError, match="no rows for object 'candle'"):
        (root / "candle" / "Data" / "Images").mkdir(parents=True)
        open_dataset(root, "visa", "candle", "train")
    (root / "pcb9" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"Anomaly[/\\]001.png"):
        open_dataset(root, "visa", "pcb9", "test")
    assert len(open_dataset(root, "visa", "pcb9", "train")) == 5  # train rows unaffected
    csv_path = root / "split_csv" / "1cls.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("object,split,label,image,mask", "object,split,label,image"))
    with pytest.raises(DataError, match=r"1cls.csv lacks column\(s\) \['mask'\]"):
        open_dataset(root, "visa", "pcb9", "train")
    csv_path.write_text(
        text.replace(
            "test,anomaly,pcb9/Data/Images/Anomaly/000.JPG,pcb9/Data/Masks/Anomaly/000.png",
            "test,anomaly,pcb9/Data/Images/Anomaly/000.JPG,",
        )
    )
    with pytest.raises(FileNotFoundError, match=r"Anomaly[/\\]000.JPG has no mask"):
        open_dataset(root, "visa", "pcb9", "test")
    with pytest.raises(ValueError, match="split_train_validation"):
        open_dataset(root, "visa", "pcb9", "validation")


# -- synthetic ---------------------------------------------------------------------------------


SMALL = dict(n_train=3, n_test_good=2, n_test_defect_per_type=1, image_size=64)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_is_deterministic(tmp_path):
    a = _tree(make_synthetic(tmp_path / "a", seed=5, **SMALL))
    b = _tree(make_synthetic(tmp_path / "b", seed=5, **SMALL))
    c = _tree(make_synthetic(tmp_path / "c", seed=6, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png") and "ground_truth" not in k]
    assert all(a[k] != c[k] for k in pngs)
    assert len(pngs) == 2 * (3 + 2) + 4 + 8
    # a count change leaves the other images as they were
    d = _tree(make_synthetic(tmp_path / "d", seed=5, **{**SMALL, "n_train": 4}))
    assert all(d[k] == v for k, v in a.items() if k != "synthetic.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]  # no temp folders left


def test_synthetic_layout_masks_and_loading(tmp_path):
    root = make_synthetic(tmp_path / "syn", seed=0, n_train=4, n_test_good=2, n_test_defect_per_type=1)
    manifest = json.loads((root / "synthetic.json").read_text())
    assert sorted(manifest["categories"]) == ["board", "weave"]
    for category in manifest["categories"]:
        info = D.SYNTHETIC_CATEGORIES[category]
        train = open_dataset(root, "mvtec_ad", category, "train")
        test = open_dataset(root, "mvtec_ad", category, "test")
        assert len(train) == 4 and len(test) == 2 + len(info["defects"])
        assert sorted({s.defect for s in test.samples} - {"good"}) == sorted(info["defects"])
        for i in range(len(test)):
            item = test[i]
            assert item["image"].shape == (3, 256, 256)
            area = item["mask"].sum().item()
            if item["label"] == 0:
                assert area == 0
            else:
                assert 30 < area < 0.2 * 256 * 256, (item["path"], area)  # visible, not the whole image
        assert len(open_dataset(root, "folder", category, "test")) == len(test)  # also a folder dataset
        kinds = open_dataset(root, "mvtec", category, "test", defect_kinds=D.SYNTHETIC_DEFECT_KINDS)
        assert [s.kind for s in kinds.samples] == [
            "good" if s.label == 0 else D.SYNTHETIC_DEFECT_KINDS[s.defect] for s in test.samples
        ]
    images = [test[i]["image"] for i in range(len(test))]
    assert torch.stack(images).std(0).mean() > 0.02  # images differ from each other
    train_means = torch.stack([train[i]["image"].mean() for i in range(len(train))])
    assert train_means.max() - train_means.min() > 0.01  # lighting varies


def test_synthetic_defects_are_visible_and_masked():
    """Against the same image rendered without its defect: the defect changes the image
    clearly inside its mask and (almost) nowhere else."""
    for category, info in D.SYNTHETIC_CATEGORIES.items():
        if category in D.PHOTO_TEXTURES and not HAVE_SKIMAGE:
            continue  # test_photo_textures says why it is skipped
        for defect in info["defects"]:
            for index in range(2):
                image, mask = D.render_synthetic(category, 0, "test", defect, index)
                clean, clean_mask = D.render_synthetic(category, 0, "test", defect, index, clean=True)
                least = 0.0005 if category in D.LOCO_CATEGORIES else 0.002  # kit: defects on a part
                assert np.array_equal(mask, clean_mask) and least < mask.mean() < 0.2
                assert image.shape == (256, 256, 3) and image.dtype == np.float32
                change = np.abs(image - clean).max(-1)
                assert change[mask].mean() > 0.12, (category, defect, index, change[mask].mean())
                grown = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(5))) > 0
                assert (change[~grown] > 0.1).mean() < 1e-3, (category, defect, index)
            assert D.SYNTHETIC_DEFECT_KINDS[defect] in ("structural", "logical")


@pytest.mark.skipif(not HAVE_SKIMAGE, reason="photo textures need scikit-image (the [distill] extra)")
def test_photo_textures(tmp_path):
    root = make_synthetic(tmp_path / "photo", seed=3, categories=D.PHOTO_TEXTURES, **SMALL)
    again = make_synthetic(tmp_path / "again", seed=3, categories=D.PHOTO_TEXTURES, **SMALL)
    assert _tree(root) == _tree(again)
    for category in D.PHOTO_TEXTURES:
        train = open_dataset(root, "mvtec_ad", category, "train")
        test = open_dataset(root, "mvtec_ad", category, "test")
        assert len(train) == 3 and len(test) == 2 + len(D.STRUCTURAL_DEFECTS)
        first, second = train[0]["image"], train[1]["image"]
        assert (first - second).abs().mean() > 0.05  # different windows of the photograph
        assert 0.2 < first.mean() < 0.8 and first.std() > 0.05  # a textured photo, not a flat fill


def test_photo_textures_without_scikit_image(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # import fails
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    D.synthetic._photo.cache_clear()
    try:
        with pytest.raises(ImportError, match="needs scikit-image"):
            D.render_synthetic("gravel", 0, "train", None, 0, 64)
    finally:
        D.synthetic._photo.cache_clear()


def test_synthetic_refuses_to_clobber_and_cleans_up(tmp_path, monkeypatch):
    root = tmp_path / "syn"
    root.mkdir()
    (root / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="syn"):
        make_synthetic(root, **SMALL)
    assert (root / "keep.txt").exists()
    make_synthetic(root, overwrite=True, categories=("weave",), **SMALL)
    assert not (root / "keep.txt").exists() and (root / "weave" / "train" / "good" / "000.png").exists()

    calls = {"n": 0}
    real = D.synthetic.render_synthetic

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(D.synthetic, "render_synthetic", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        make_synthetic(tmp_path / "half", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # nothing half-written
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        make_synthetic(tmp_path / "x", categories=("carpet",))
