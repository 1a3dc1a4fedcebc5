"""The synthetic ``kit`` category: parts on a tray with structural and logical defects, written
in MVTec LOCO's layout beside the MVTec AD-layout categories; read, scored with sPRO and
reported with structural and logical columns."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientad_fast import data as D
from efficientad_fast.cli import main
from efficientad_fast.data import DataError, list_categories, make_synthetic, open_dataset, read_loco_defects_config
from efficientad_fast.data.synthetic_kit import KIT_PIXEL_VALUES
from efficientad_fast.metrics import evaluate_loco, parse_defects_config
from efficientad_fast.report import report_tables

SMALL = dict(n_train=3, n_test_good=2, n_test_defect_per_type=1, image_size=64)
KIT = ("scratch", "stain", "dent", "missing_part", "swapped_parts", "extra_part")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """weave and board (MVTec AD layout) and kit (MVTec LOCO layout) in one root."""
    return make_synthetic(
        tmp_path_factory.mktemp("mixed") / "data", seed=4, categories=("weave", "board", "kit"), **SMALL
    )


def _pixels(root: Path, pattern: str = "**/*.png") -> str:
    h = hashlib.sha256()
    for p in sorted(root.glob(pattern)):
        h.update(str(p.relative_to(root)).encode())
        h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


def test_existing_categories_are_unchanged(tmp_path):
    """weave and board render as before the kit was added (digests measured on main's code
    before it): the demo's data, and so its metrics, stay as they were."""
    root = make_synthetic(
        tmp_path / "s",
        seed=3,
        categories=("weave", "board"),
        n_train=2,
        n_test_good=1,
        n_test_defect_per_type=1,
        image_size=64,
    )
    assert _pixels(root) == "3b38d7f560624ca026e2213a7c778acd05e5b8536bac0b7f2e05006eeb005aad"
    manifest = hashlib.sha256((root / "synthetic.json").read_bytes()).hexdigest()
    assert manifest == "697fafbd49e024a6c158e06a4b26b9bdb132d127873d5d5f528b9bc8f6085791"


def test_kit_layout_on_disk(mixed):
    kit = mixed / "kit"
    assert sorted(p.name for p in kit.iterdir()) == [
        "defects_config.json",
        "ground_truth",
        "test",
        "train",
        "validation",
    ]
    assert sorted(p.name for p in (kit / "test").iterdir()) == ["good", "logical_anomalies", "structural_anomalies"]
    assert len(list((kit / "validation" / "good").glob("*.png"))) == 1  # max(1, n_train // 6)
    assert not (mixed / "board" / "validation").exists() and (mixed / "board" / "ground_truth" / "scratch").is_dir()
    config = parse_defects_config(kit / "defects_config.json")
    assert {e["defect_name"]: v for v, e in config.items()} == {d: KIT_PIXEL_VALUES[d] for d in KIT}
    entries = json.loads((kit / "defects_config.json").read_text())
    assert all(set(e) == {"defect_name", "pixel_value", "saturation_threshold", "relative_saturation"} for e in entries)
    manifest = json.loads((mixed / "synthetic.json").read_text())
    info = manifest["categories"]["kit"]
    assert info["layout"] == "mvtec_loco" and manifest["defect_kinds"]["swapped_parts"] == "logical"
    assert sorted(info["test_images"].values()) == sorted(KIT)
    seen: dict[str, int] = {}
    for name, defect in info["test_images"].items():
        index = seen[defect] = seen.get(defect, -1) + 1
        masks = sorted((kit / "ground_truth" / Path(name).with_suffix("")).glob("*.png"))
        assert [m.name for m in masks] == ["000.png", "001.png"][: 2 if defect == "swapped_parts" else 1]
        values = [np.asarray(Image.open(m)) for m in masks]
        assert all(set(np.unique(v)) == {0, KIT_PIXEL_VALUES[defect]} for v in values), name
        union = np.logical_or.reduce([v > 0 for v in values])
        # the defect is where its masks are: the image differs from the same scene without it there
        image = np.asarray(Image.open(kit / "test" / name), dtype=np.float32) / 255
        clean, _ = D.render_synthetic("kit", 4, "test", defect, index, 64, clean=True)
        change = np.abs(image - clean).max(-1)
        assert change[union].mean() > 0.1 and (change[~union] > 0.2).mean() < 0.01, name


def test_kit_loads_every_split_and_categories_keep_their_layout(mixed):
    train = open_dataset(mixed, "mvtec_loco", "kit", "train")
    validation = open_dataset(mixed, "loco", "kit", "validation")
    test = open_dataset(mixed, "loco", "kit", "test")
    assert (len(train), len(validation), len(test)) == (3, 1, 2 + 6)
    assert [s.kind for s in test.samples] == ["good"] * 2 + ["logical"] * 3 + ["structural"] * 3
    assert [len(test.region_masks(i)) for i in range(len(test))] == [0, 0, 1, 2, 1, 1, 1, 1]
    assert [v for _, v in test.region_masks(3)] == [254, 254]  # the two places of a swap
    for i in range(2, len(test)):
        assert test[i]["mask"].sum() > 0
    assert list_categories(mixed, "loco") == ["kit"]
    assert list_categories(mixed, "mvtec") == ["board", "weave"]
    with pytest.raises(DataError, match="MVTec LOCO's layout.*--dataset loco"):
        open_dataset(mixed, "mvtec_ad", "kit", "test")
    # a perfect detector scores 1 everywhere, sPRO included
    regions = [[m.numpy() * v for m, v in test.region_masks(i)] or None for i in range(len(test))]
    maps = np.stack([test.load_mask(i)[0].numpy() for i in range(len(test))])
    result = evaluate_loco(
        test.labels.astype(float),
        [s.kind for s in test.samples],
        maps,
        regions,
        defects_config=read_loco_defects_config(mixed, "kit"),
    )
    for kind in ("structural", "logical", "mean"):
        assert result[kind]["image_auroc"] == 1.0 and result[kind]["auspro_0.05"] == pytest.approx(1.0), kind


def test_kit_is_deterministic_by_seed(mixed, tmp_path):
    again = make_synthetic(tmp_path / "again", seed=4, categories=("kit",), **SMALL)
    other = make_synthetic(tmp_path / "other", seed=5, categories=("kit",), **SMALL)
    assert _pixels(again, "kit/**/*.png") == _pixels(mixed, "kit/**/*.png")
    assert (again / "kit" / "defects_config.json").read_bytes() == (mixed / "kit" / "defects_config.json").read_bytes()
    assert _pixels(other, "kit/**/*.png") != _pixels(again, "kit/**/*.png")
    first = np.asarray(Image.open(again / "kit" / "train" / "good" / "000.png"), dtype=np.float32)
    second = np.asarray(Image.open(again / "kit" / "train" / "good" / "001.png"), dtype=np.float32)
    assert np.abs(first - second).mean() > 2  # normal images differ (placement, lighting, noise)


def test_kit_needs_both_kinds_of_defect(tmp_path):
    with pytest.raises(ValueError, match="at least one structural and one logical"):
        make_synthetic(tmp_path / "x", categories=("kit",), defects=("scratch", "hole"), **SMALL)
    with pytest.raises(ValueError, match="at least one image in train, validation"):
        make_synthetic(tmp_path / "x", categories=("kit",), **{**SMALL, "n_test_good": 0})
    root = make_synthetic(tmp_path / "y", categories=("kit",), defects=("dent", "extra_part"), **SMALL)
    assert len(open_dataset(root, "loco", "kit", "test")) == 4


def test_report_tables_show_structural_and_logical_columns():
    row = {"category": "kit", "error": None, "train_s": 1.0, "infer_s": 0.1, "latency_ms": 2.0}
    row |= {k: 0.5 for k in ("image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupr", "aupro")}
    row |= {
        "structural_image_auroc": 0.61,
        "logical_image_auroc": 0.72,
        "structural_auspro": 0.3,
        "logical_auspro": 0.4,
    }
    loco = report_tables({"rows": [row], "dataset": "loco", "sweep": {}})
    assert "| Structural Image AUROC | Logical Image AUROC | Structural AU-sPRO | Logical AU-sPRO |" in loco
    assert "| 0.6100 | 0.7200 | 0.3000 | 0.4000 |" in loco and "AU-sPRO" in loco
    assert "Logical" not in report_tables({"rows": [row], "dataset": "mvtec", "sweep": {}})


@pytest.mark.usefixtures("op_library")
def test_report_on_the_kit_end_to_end(mixed, tmp_path):
    """Train 2 steps and evaluate: the report finds kit under --dataset loco (weave and
    board, beside it, are not LOCO categories) and writes structural and logical figures."""
    out = tmp_path / "report"
    args = ["report", "--data", str(mixed), "--dataset", "loco", "--out", str(out), "--steps", "2"]
    args += ["--teacher", "random", "--penalty-images", "none", "--latency-batches", "--latency-runs", "1"]
    assert main(args + ["--workers", "0", "--quiet"]) == 0
    result = json.loads((out / "report.json").read_text())
    (row,) = result["rows"]
    assert row["category"] == "kit" and row["error"] is None
    metrics = row["metrics"]
    assert set(metrics) == {"structural", "logical", "mean"} and "auspro_0.05" in metrics["logical"]
    assert row["logical_image_auroc"] == metrics["logical"]["image_auroc"]
    assert row["structural_auspro"] == metrics["structural"]["auspro_0.3"]
    md = (out / "report.md").read_text()
    assert "Structural Image AUROC" in md and "Logical AU-sPRO" in md
    assert "logical_image_auroc" in (out / "report.csv").read_text().splitlines()[0]


def test_bench_loco_defects_splits_auroc_by_defect_type(mixed, tmp_path, monkeypatch, capsys, bench_module):
    """bench/loco_defects.py reads each test image's defect type from its masks: scores that
    separate only the scratches and missing parts from normal give AUROC 1 for those two and
    0.5 (ties) or 0 (below every normal image) for the others."""
    loco_defects = bench_module("loco_defects")

    kit = mixed / "kit"
    names = {v: k for k, v in KIT_PIXEL_VALUES.items()}
    scores = {"scratch": 0.9, "missing_part": 0.8, "stain": 0.1, "dent": 0.1, "swapped_parts": 0.0, "extra_part": 0.0}
    rows = ["path,score"]
    for image in sorted((kit / "test").glob("*/*.png")):
        if image.parent.name == "good":
            rows.append(f"{image},0.1")
            continue
        mask = next((kit / "ground_truth" / image.parent.name / image.stem).glob("*.png"))
        rows.append(f"{image},{scores[names[int(np.array(Image.open(mask)).max())]]}")
    (tmp_path / "scores.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr("sys.argv", ["loco_defects.py", str(tmp_path / "scores.csv"), str(kit)])
    loco_defects.main()
    table = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[2] for line in capsys.readouterr().out.splitlines()[2:]
    }
    assert table == {"scratch": "1.000", "missing_part": "1.000", "stain": "0.500", "dent": "0.500",
                     "swapped_parts": "0.000", "extra_part": "0.000"}  # fmt: skip

    (tmp_path / "good_only.csv").write_text("path,score\n" + f"{next((kit / 'test' / 'good').glob('*.png'))},0.1\n")
    with pytest.raises(ValueError, match="need scores of normal .* and defective images"):
        loco_defects.scores_by_type(tmp_path / "good_only.csv", kit)
