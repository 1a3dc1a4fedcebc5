"""Tiling (efficientad_fast.tiling): the grid covers every pixel and stays in bounds, stitching
blends overlaps into a weighted mean, a tiled map equals each tile's own map where tiles do
not overlap, predict(tile=...) and the model's recorded tile, train --tile end to end on
large synthetic images with small defects (tiled vs downscaled pixel AUROC and AU-PRO)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import efficientad_fast.tiling as tiling
from efficientad_fast import EfficientAD, load, metrics
from efficientad_fast.cli import main
from efficientad_fast.data import make_synthetic, open_dataset, render_synthetic
from efficientad_fast.testing import random_model
from efficientad_fast.tiling import blend_weights, cut_tiles, predict_tiled, stitch, tile_grid

pytestmark = pytest.mark.usefixtures("op_library")


@pytest.mark.parametrize(
    "height,width,tile,overlap",
    [
        (256, 256, 256, 0),
        (256, 256, 256, 32),
        (300, 513, 256, 32),
        (1024, 1024, 256, 32),
        (1000, 777, 300, 250),
        (257, 256, 256, 255),
        (700, 300, 256, 0),
        (999, 1001, 256, 100),
    ],
)
def test_tile_grid_covers_every_pixel_and_stays_in_bounds(height, width, tile, overlap):
    positions = tile_grid(height, width, tile, overlap)
    assert len(set(positions)) == len(positions)
    covered = np.zeros((height, width), int)
    for top, left in positions:
        assert 0 <= top <= height - tile and 0 <= left <= width - tile
        covered[top : top + tile, left : left + tile] += 1
    assert covered.min() >= 1
    for axis, length in ((0, height), (1, width)):
        starts = sorted({p[axis] for p in positions})
        assert starts[0] == 0 and starts[-1] == length - tile  # the last tile flush with the border
        # neighbours share at least `overlap` pixels: the blend ramps always have a partner
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize(
    "args,error,words",
    [
        ((256, 256, 256, 256), ValueError, "tile=256, overlap=256"),
        ((256, 256, 256, -1), ValueError, "overlap=-1"),
        ((256, 300, 301, 32), ValueError, "tile=301"),
        ((256, 256, 256.0, 0), TypeError, "tile must be an int"),
    ],
)
def test_tile_grid_refuses_bad_tiles_naming_the_values(args, error, words):
    with pytest.raises(error, match=words):
        tile_grid(*args)


def test_blend_ramps_sum_to_one_where_two_tiles_meet_and_stitch_keeps_constants():
    positions = tile_grid(256, 480, 256, 32)  # left 0 and 224: overlap [224, 256)
    assert positions == [(0, 0), (0, 224)]
    w = blend_weights(positions, 256, 480, 256, 32)
    assert torch.allclose(w[0, 0, :, 224:] + w[1, 0, :, :32], torch.ones(256, 32))
    assert (w[0, 0, :, :224] == 1).all() and (w[1, 0, :, 32:] == 1).all()  # borders of the image keep 1
    # a constant map stays that constant however the tiles lie
    positions = tile_grid(300, 513, 256, 32)
    maps = torch.full((len(positions), 2, 256, 256), 0.37)
    assert torch.allclose(stitch(maps, positions, 300, 513, 32), torch.full((2, 300, 513), 0.37))
    # different constants per tile: a weighted mean stays between the extremes
    values = torch.arange(len(positions), dtype=torch.float32)
    out = stitch(values.view(-1, 1, 1, 1).expand(-1, 1, 256, 256), positions, 300, 513, 32)
    assert out.min() >= 0 and out.max() <= len(positions) - 1 and out[0, 0, 0] == 0 and out[0, -1, -1] == values[-1]


def test_cut_tiles_are_the_grid_crops():
    images = torch.randint(0, 256, (2, 3, 300, 513), dtype=torch.uint8)
    tiles = cut_tiles(images, 256)
    positions = tile_grid(300, 513, 256, 0)
    assert tiles.shape == (2 * len(positions), 3, 256, 256) and tiles.dtype == torch.uint8
    top, left = positions[-1]
    assert torch.equal(tiles[-1], images[1, :, top : top + 256, left : left + 256])


@pytest.fixture(scope="module")
def model():
    return random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).eval()


def test_one_tile_image_equals_predict(model):
    images = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    tiled, whole = predict_tiled(model, images, tile=256, overlap=32), model.predict(images)
    torch.testing.assert_close(tiled.anomaly_map, whole.anomaly_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(tiled.score, whole.score, rtol=0, atol=1e-6)


def test_tiled_map_is_each_tiles_own_map_outside_the_overlap(model):
    """Two tiles on a 256x480 image, sharing columns 224-255: left of them the stitched map
    is the first tile's map, right of them the second's, in them a value between the two.
    Tiles scored one per network batch give the same map as all in one batch."""
    image = torch.randint(0, 256, (1, 3, 256, 480), dtype=torch.uint8)
    pred = model.predict(image, tile=256, overlap=32)
    left, right = model.predict(image[..., :256]).anomaly_map, model.predict(image[..., 224:]).anomaly_map
    stitched = pred.anomaly_map
    assert stitched.shape == (1, 1, 256, 480)
    torch.testing.assert_close(stitched[..., :224], left[..., :224], rtol=0, atol=1e-6)
    torch.testing.assert_close(stitched[..., 256:], right[..., 32:], rtol=0, atol=1e-6)
    lo, hi = torch.minimum(left[..., 224:], right[..., :32]), torch.maximum(left[..., 224:], right[..., :32])
    assert ((stitched[..., 224:256] >= lo - 1e-6) & (stitched[..., 224:256] <= hi + 1e-6)).all()
    assert pred.score.item() == pytest.approx(stitched.max().item())
    with torch.inference_mode():
        x = image.float().div(255).contiguous(memory_format=torch.channels_last)
        one_at_a_time, _ = tiling.tiled_scores(model, x, 256, 32, batch_size=1)
    torch.testing.assert_close(one_at_a_time, stitched, rtol=0, atol=1e-6)


def test_model_records_its_tile_and_predict_uses_it(model, tmp_path, monkeypatch):
    calls = []

    def spy(m, x, tile, overlap, output_size=None, backend="fused", batch_size=16):
        calls.append((tile, overlap))
        return torch.zeros(x.shape[0], 1, *x.shape[2:]), torch.zeros(x.shape[0])

    tiled = EfficientAD(teacher="random", tile=256)
    tiled.load_state_dict(model.state_dict())
    assert tiled.config()["tile"] == 256 and model.config()["tile"] is None
    tiled.save(tmp_path / "m.pt")
    assert load(tmp_path / "m.pt").tile == 256
    monkeypatch.setattr(tiling, "tiled_scores", spy)
    image = torch.zeros(1, 3, 256, 256, dtype=torch.uint8)
    tiled.predict(image)  # the model's own tile
    tiled.predict(image, tile=256, overlap=0)
    model.predict(image)  # no tile recorded: whole images, no call
    tiled.predict(image, tile=0)  # 0: whole images
    assert calls == [(256, 32), (256, 0)]
    with pytest.raises(ValueError, match="at least 256"):
        EfficientAD(teacher="random", tile=128)
    with pytest.raises(TypeError, match="tile must be an int"):
        EfficientAD(teacher="random", tile="256")


@pytest.mark.parametrize(
    "tile,overlap,words",
    [
        (300, 32, "tile=300 does not fit in a 256x256 image"),
        (128, 0, "tile=128 is too small"),
        (256, 256, "tile=256, overlap=256"),
    ],
)
def test_predict_refuses_bad_tiles(model, tile, overlap, words):
    with pytest.raises(ValueError, match=words):
        model.predict(torch.zeros(1, 3, 256, 256, dtype=torch.uint8), tile=tile, overlap=overlap)


def test_synthetic_defect_scale_draws_smaller_defects():
    big, big_mask = render_synthetic("weave", 0, "test", "hole", 0, 512)
    small, small_mask = render_synthetic("weave", 0, "test", "hole", 0, 512, defect_scale=0.25)
    assert 0 < small_mask.sum() < big_mask.sum() / 6  # ~1/16 of the area
    clean, _ = render_synthetic("weave", 0, "test", "hole", 0, 512, defect_scale=0.25, clean=True)
    changed = np.abs(small - clean).max(axis=2) > 0.05  # the same scene without its defect
    assert changed[small_mask].mean() > 0.5 and changed[~small_mask].sum() < small_mask.sum()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="defect_scale"):
            render_synthetic("weave", 0, "test", "hole", 0, 512, defect_scale=bad)


def test_train_on_tiles_then_tiled_vs_downscaled(tmp_path, capsys):
    """train --tile on large synthetic images with small defects (512 px, defects a quarter of
    their size; --image-size H W), then the test images scored in tiles and downscaled whole:
    both give valid pixel AUROC and AU-PRO against the full-resolution masks (printed; the
    measured comparison is bench/bench_tiling.py's)."""
    data = make_synthetic(
        tmp_path / "data",
        seed=0,
        categories=("weave",),
        n_train=3,
        n_test_good=1,
        n_test_defect_per_type=1,
        defects=("hole", "scratch"),
        image_size=512,
        defect_scale=0.25,
    )
    assert json.loads((data / "synthetic.json").read_text())["defect_scale"] == 0.25
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--dataset",
            "mvtec",
            "--category",
            "weave",
            "--out",
            str(out),
            "--image-size",
            "256",
            "512",
            "--tile",
            "256",
            "--steps",
            "2",
            "--workers",
            "0",
            "--quiet",
            "--checkpoint-every",
            "0",
            "--teacher",
            "random",
            "--penalty-images",
            "none",
        ]
    )
    assert code == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["tile"] == 256 and summary["image_size"] == [256, 512]
    assert summary["train_tiles"] == 2 * summary["train_images"]  # two tiles per 256x512 image
    assert "scored in 256 px tiles" in summary["thresholds"]["source"]
    model = load(out / "model.pt")
    assert model.tile == 256 and model.image_threshold is not None
    # eval refuses a tile that does not fit before it scores anything
    assert (
        main(
            [
                "eval",
                "--model",
                str(out / "model.pt"),
                "--data",
                str(data),
                "--dataset",
                "mvtec",
                "--category",
                "weave",
                "--image-size",
                "256",
                "--tile",
                "300",
                "--quiet",
            ]
        )
        == 2
    )
    assert "tile=300 does not fit" in capsys.readouterr().err

    test = open_dataset(data, "mvtec_ad", "weave", "test", (256, 512))
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    masks = torch.stack([test[i]["mask"] for i in range(len(test))]).bool().numpy()
    labels = np.array([test[i]["label"] for i in range(len(test))])
    tiled = model.predict(images, overlap=0)  # the model's tile
    small = F.interpolate(images, size=(256, 256), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    downscaled = model.predict(small, output_size=(256, 512), tile=0)
    results = {}
    for name, pred in (("tiled", tiled), ("downscaled", downscaled)):
        assert pred.anomaly_map.shape == (len(test), 1, 256, 512) and pred.label is not None
        results[name] = metrics.evaluate(pred.score.numpy(), labels, pred.anomaly_map.numpy(), masks)
        for key in ("pixel_auroc", "aupro"):
            assert 0.0 <= results[name][key] <= 1.0, (name, key, results[name][key])
    print(
        "tiled vs downscaled (2 training steps, random teacher):",
        {n: {k: round(r[k], 3) for k in ("pixel_auroc", "aupro")} for n, r in results.items()},
    )


def test_watch_scores_frames_in_tiles(model, tmp_path, monkeypatch):
    """watch --tile: each frame goes through predict's tiles (not the whole-frame
    FastPredictor); a tile that does not fit the frames is refused before any frame."""
    from PIL import Image

    calls = []

    def spy(m, x, tile, overlap, output_size=None, backend="fused", batch_size=16):
        calls.append((tuple(x.shape), tile, overlap))
        return torch.zeros(x.shape[0], 1, *x.shape[2:]), torch.zeros(x.shape[0])

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (256, 480, 3), dtype=np.uint8)).save(frames / f"{i:03d}.png")
    model = copy.deepcopy(model)  # the module's model stays as it was
    model.set_thresholds(image=0.5, pixel=0.1, source="test")
    model.save(tmp_path / "m.pt")
    monkeypatch.setattr(tiling, "tiled_scores", spy)
    assert (
        main(
            [
                "watch",
                "--model",
                str(tmp_path / "m.pt"),
                "--source",
                str(frames),
                "--out",
                str(tmp_path / "w"),
                "--image-size",
                "300",
                "--tile",
                "256",
                "--overlap",
                "40",
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "w" / "frames.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == [0.0, 0.0]
    assert calls == [((1, 3, 300, 300), 256, 40)] * 2
    assert (
        main(
            [
                "watch",
                "--model",
                str(tmp_path / "m.pt"),
                "--source",
                str(frames),
                "--out",
                str(tmp_path / "x"),
                "--image-size",
                "256",
                "--tile",
                "300",
                "--quiet",
            ]
        )
        == 2
    )
