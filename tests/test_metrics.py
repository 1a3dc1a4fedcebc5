"""efficientad_fast.metrics against independent computations: scikit-learn for AUROC and
best F1, brute-force threshold loops for AU-PRO (MVTec AD) and AU-sPRO (MVTec LOCO, as its
official evaluation code defines it), known values for perfect and random detectors, the
input forms, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from efficientad_fast.metrics import auc_up_to, evaluate, evaluate_loco, parse_defects_config

sklearn_metrics = pytest.importorskip("sklearn.metrics")
ndimage = pytest.importorskip("scipy.ndimage")

EIGHT = np.ones((3, 3), dtype=bool)
FOUR = ndimage.generate_binary_structure(2, 1)

# A LOCO-like defects_config: relative and absolute saturation.
DEFECTS = [
    {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "extra", "pixel_value": 254, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "small", "pixel_value": 253, "saturation_threshold": 6, "relative_saturation": False},
]


# ------------------------------------------------------------------ independent references


def integrate(fpr, y, limit):
    """Area under the piecewise-linear curve through sorted (fpr, y) on [0, limit] / limit,
    by summing trapezoids one by one (the curve starts at (0, 0))."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fpr[:-1], y[:-1]), zip(fpr[1:], y[1:])):
        if x0 >= limit:
            break
        if x1 > limit:  # clip the last segment at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def brute_pro(maps, masks, limit=0.3, structure=EIGHT):
    """AU-PRO by looping over every threshold (pixels >= t are positive)."""
    region_masks = [(i, r) for i, m in enumerate(masks) for r in _components(m, structure)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append(pred[normal].mean())
        pros.append(np.mean([pred[i][r].mean() for i, r in region_masks]))
    return integrate(np.array(fprs), np.array(pros), limit)


def _components(mask, structure):
    lab, k = ndimage.label(mask, structure=structure)
    return [lab == r for r in range(1, k + 1)]


def brute_spro(maps, region_lists, defects, limits=(0.05, 0.3)):
    """AU-sPRO the way MVTec LOCO's official code does it, for every threshold.

    region_lists[i] is the list of region masks (pixel value = defect) of image i; binary
    maps are `map > t`, the curve runs over thresholds descending from the maximum.
    """
    config = {d["pixel_value"]: d for d in defects}
    regions, union = [], np.zeros(maps.shape, dtype=bool)
    for i, lst in enumerate(region_lists):
        for m in lst:
            area = int((m > 0).sum())
            d = config[int(m.max())]
            if d["relative_saturation"]:
                sat = int(d["saturation_threshold"] * area)
            else:
                sat = min(d["saturation_threshold"], area)
            regions.append((i, m > 0, sat))
            union[i] |= m > 0
    thresholds = list(np.unique(maps)[::-1]) + [-np.inf]
    fprs, spros = [], []
    for t in thresholds:
        pred = maps > t
        fprs.append((pred & ~union).sum() / (~union).sum())
        spros.append(np.mean([min((pred[i] & r).sum() / sat, 1.0) for i, r, sat in regions]))
    return {f"auspro_{lim:g}": integrate(np.array(fprs), np.array(spros), lim) for lim in limits}


def sk_best_f1(labels, scores):
    precision, recall, _ = sklearn_metrics.precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return np.nanmax(f1)


# ------------------------------------------------------------------------ synthetic data


def blobs(rng, n, h, w, count=3, max_size=5):
    """(n, h, w) uint8 masks (0/255) with random rectangles in the anomalous images."""
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n // 2, n):
        for _ in range(rng.integers(1, count + 1)):
            y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
            dy, dx = rng.integers(1, max_size + 1, size=2)
            masks[i, y : y + dy, x : x + dx] = 255
    return masks


def noisy_maps(rng, masks, signal=0.6, decimals=None):
    maps = rng.random(masks.shape).astype(np.float32) + signal * (masks > 0)
    if decimals is not None:  # many ties
        maps = np.round(maps, decimals).astype(np.float32)
    return maps


def image_set(rng, n=40, decimals=None):
    labels = np.arange(n) >= n // 2
    scores = rng.normal(size=n) + 1.0 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels.astype(np.int64)


def loco_set(rng, n=8, h=24, w=24, overlap=True):
    """Good images first, then anomalous ones with 1-3 region masks each (pixel values
    from DEFECTS); some regions are disconnected, some overlap each other."""
    values = [d["pixel_value"] for d in DEFECTS]
    region_lists = []
    for i in range(n):
        lst = []
        if i >= n // 2:
            for _ in range(rng.integers(1, 4)):
                m = np.zeros((h, w), dtype=np.uint8)
                for _ in range(rng.integers(1, 3)):  # one or two blobs = one defect
                    y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
                    m[y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = 1
                if not overlap:
                    for other in lst:
                        m[other > 0] = 0
                    if not m.any():
                        continue
                lst.append(m * np.uint8(values[rng.integers(len(values))]))
        region_lists.append(lst)
    union = np.array([np.any([m > 0 for m in lst], axis=0) if lst else np.zeros((h, w), bool) for lst in region_lists])
    maps = noisy_maps(rng, union, signal=0.5, decimals=2)
    return maps, region_lists


# ------------------------------------------------------------------------ image metrics


@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct", "ties"])
def test_image_metrics_match_sklearn(decimals):
    rng = np.random.default_rng(1)
    scores, labels = image_set(rng, 60, decimals)
    r = evaluate(scores, labels)
    assert set(r) == {"image_auroc", "image_f1"}
    assert r["image_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert r["image_f1"] == pytest.approx(sk_best_f1(labels, scores), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct", "ties"])
def test_pixel_metrics_match_sklearn(decimals):
    rng = np.random.default_rng(2)
    masks = blobs(rng, 12, 32, 32)
    maps = noisy_maps(rng, masks, decimals=decimals)
    scores, labels = image_set(rng, 12)
    r = evaluate(scores, labels, maps, masks)
    y, s = (masks > 0).ravel(), maps.ravel()
    assert r["pixel_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-9)
    assert r["pixel_f1"] == pytest.approx(sk_best_f1(y, s), abs=1e-9)
    assert r["pixel_aupr"] == pytest.approx(sklearn_metrics.average_precision_score(y, s), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct", "ties"])
def test_average_precision_matches_sklearn(seed, decimals):
    from efficientad_fast.metrics import average_precision

    rng = np.random.default_rng(40 + seed)
    labels = rng.random(500) < 0.1
    scores = rng.normal(size=500) + 1.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    assert average_precision(scores, labels) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores), abs=1e-12
    )
    assert average_precision(labels.astype(float), labels) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_f1_optimal_threshold_matches_brute_force(seed):
    from efficientad_fast.metrics import f1_optimal_threshold

    rng = np.random.default_rng(seed)
    labels = rng.random(40) < 0.3
    labels[:2] = (True, False)
    scores = np.round(rng.normal(size=40) + labels, 1)  # ties

    def f1_of(t):
        flagged = scores > t
        tp = np.sum(flagged & labels)
        return 2 * tp / (np.sum(flagged) + np.sum(labels))

    candidates = np.concatenate(([scores.min() - 1], np.unique(scores)))  # "> t" for every distinct split
    best = max(f1_of(t) for t in candidates)
    threshold, f1 = f1_optimal_threshold(scores, labels)
    assert f1 == pytest.approx(best, abs=1e-12) and f1_of(threshold) == pytest.approx(best, abs=1e-12)
    assert not np.any(scores == threshold)  # no score sits on the boundary
    # A perfect separation: the threshold lies between the classes.
    t, f1 = f1_optimal_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert 0.2 < t < 0.8 and f1 == 1.0


# ------------------------------------------------------------------------------ AU-PRO


@pytest.mark.parametrize("decimals", [None, 2, 1], ids=["distinct", "ties", "many-ties"])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(decimals, limit):
    rng = np.random.default_rng(3)
    masks = blobs(rng, 8, 20, 20, count=4)
    maps = noisy_maps(rng, masks, signal=0.4, decimals=decimals)
    scores, labels = image_set(rng, 8)
    r = evaluate(scores, labels, maps, masks, pro_limit=limit)
    assert r["aupro"] == pytest.approx(brute_pro(maps, masks, limit), abs=1e-9)


def test_regions_are_8_connected_and_per_image():
    # (2,2) touches (3,3) only diagonally; (3,3)-(3,4) are side neighbours. 8-connected
    # that is one 3-pixel region per image; 4-connected it would be two. Image 2 has the
    # same pixels: its region must not merge with image 1's.
    masks = np.zeros((3, 8, 8), dtype=np.uint8)
    masks[1:, 2, 2] = masks[1:, 3, 3] = masks[1:, 3, 4] = 1
    maps = np.zeros((3, 8, 8), dtype=np.float32)
    maps[1, 2, 2] = 3.0  # the lone diagonal pixel found first
    maps[0, 0, 0] = 1.0  # then one false positive
    maps[2, 3, 3] = maps[2, 3, 4] = 0.5  # then two pixels of image 2
    r = evaluate([0, 1, 1], [0, 1, 1], maps, masks)
    assert r["aupro"] == pytest.approx(brute_pro(maps, masks, structure=EIGHT), abs=1e-12)
    assert r["aupro"] != pytest.approx(brute_pro(maps, masks, structure=FOUR), abs=1e-3)
    # By hand, thresholds 3, 1, 0.5, 0 over 2 regions and 186 normal pixels:
    # PRO 1/3 / 2, same at FPR 1/186, (1/3 + 2/3) / 2, then (1, 1).
    f = 1 / (3 * 64 - 6)
    fpr = np.array([0, 0, f, f, 1])
    pro = np.array([0, 1 / 6, 1 / 6, 1 / 2, 1])
    assert r["aupro"] == pytest.approx(integrate(fpr, pro, 0.3), abs=1e-12)


def test_perfect_detector():
    rng = np.random.default_rng(4)
    masks = blobs(rng, 10, 32, 32)
    maps = rng.random(masks.shape).astype(np.float32) + 2.0 * (masks > 0)
    labels = (masks.reshape(10, -1).max(1) > 0).astype(int)
    r = evaluate(labels + rng.random(10) * 0.5, labels, maps, masks)
    assert r == pytest.approx(
        {"image_auroc": 1.0, "image_f1": 1.0, "pixel_auroc": 1.0, "pixel_f1": 1.0, "pixel_aupr": 1.0, "aupro": 1.0},
        abs=1e-12,
    )


def test_inverted_detector():
    rng = np.random.default_rng(5)
    masks = blobs(rng, 6, 16, 16)
    maps = rng.random(masks.shape).astype(np.float32) - 2.0 * (masks > 0)
    r = evaluate([1.0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], maps, masks)
    assert r["image_auroc"] == 0.0 and r["pixel_auroc"] == 0.0 and r["aupro"] == 0.0


def test_random_detector():
    # PRO(t) ~ FPR(t) for scores independent of the labels: the area up to 0.3 is
    # 0.3^2 / 2 = 0.045, i.e. 0.15 after dividing by 0.3; AUROC ~ 0.5.
    rng = np.random.default_rng(6)
    masks = blobs(rng, 40, 64, 64, count=6, max_size=20)
    maps = rng.random(masks.shape).astype(np.float32)
    r = evaluate(rng.random(40), np.arange(40) >= 20, maps, masks)
    assert r["aupro"] == pytest.approx(0.15, abs=0.01)
    assert r["pixel_auroc"] == pytest.approx(0.5, abs=0.01)


def test_torch_and_numpy_inputs_and_layouts_agree():
    rng = np.random.default_rng(7)
    masks = blobs(rng, 6, 16, 16)
    maps = noisy_maps(rng, masks)
    scores, labels = image_set(rng, 6)
    ref = evaluate(scores, labels, maps, masks)
    as_torch = evaluate(
        torch.from_numpy(scores),
        torch.from_numpy(labels).bool(),
        torch.from_numpy(maps)[:, None],
        torch.from_numpy(masks > 0)[:, None],
    )
    as_lists = evaluate(list(scores), list(labels), maps[:, None], (masks > 0).astype(np.float32))
    assert as_torch == pytest.approx(ref, abs=1e-12)
    assert as_lists == pytest.approx(ref, abs=1e-12)
    half = evaluate(scores, labels, torch.from_numpy(maps).half(), masks)
    assert set(half) == set(ref)


def test_auc_up_to_interpolates_at_the_limit():
    fpr, y = np.array([0.0, 0.2, 0.4, 1.0]), np.array([0.0, 0.5, 1.0, 1.0])
    # up to 0.3: triangle to 0.2 (0.05) + trapezoid 0.2..0.3 with y 0.5..0.75 (0.0625)
    assert auc_up_to(fpr, y, 0.3) == pytest.approx((0.05 + 0.0625) / 0.3)
    assert auc_up_to(fpr, y, 0.2) == pytest.approx(0.05 / 0.2)
    with pytest.raises(ValueError, match="limit"):
        auc_up_to(fpr, y, 0.0)


# ----------------------------------------------------------------------------- AU-sPRO


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auspro_matches_official_definition(seed):
    rng = np.random.default_rng(10 + seed)
    maps, region_lists = loco_set(rng)
    labels = [int(bool(lst)) for lst in region_lists]
    r = evaluate(np.arange(len(labels)), labels, maps, region_lists, defects_config=DEFECTS)
    expected = brute_spro(maps, region_lists, DEFECTS)
    assert set(r) == {"image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupr", "auspro_0.05", "auspro_0.3"}
    for key, value in expected.items():
        assert r[key] == pytest.approx(value, abs=1e-9), key
    union = np.array([np.any([m > 0 for m in lst] or [np.zeros(maps.shape[1:], bool)], axis=0) for lst in region_lists])
    assert r["pixel_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(union.ravel(), maps.ravel()), abs=1e-9)


def test_auspro_overlapping_regions():
    # Two defects sharing pixels: each counts its own overlap; the shared pixels are no
    # normal pixels for the FPR.
    a = np.zeros((6, 6), dtype=np.uint8)
    b = np.zeros((6, 6), dtype=np.uint8)
    a[1:4, 1:4] = 255
    b[2:5, 2:5] = 254
    maps = np.random.default_rng(8).random((2, 6, 6)).astype(np.float32)
    maps[1] += 0.3 * ((a > 0) | (b > 0))
    r = evaluate([0, 1], [0, 1], maps, [None, [a, b]], defects_config=DEFECTS)
    expected = brute_spro(maps, [[], [a, b]], DEFECTS)
    assert r["auspro_0.3"] == pytest.approx(expected["auspro_0.3"], abs=1e-12)
    assert r["auspro_0.05"] == pytest.approx(expected["auspro_0.05"], abs=1e-12)


def test_auspro_mask_forms_agree(tmp_path):
    rng = np.random.default_rng(20)
    maps, region_lists = loco_set(rng, overlap=False)
    labels = [int(bool(lst)) for lst in region_lists]
    ref = evaluate(labels, labels, maps, region_lists, defects_config=DEFECTS)
    # config as a file path and as {pixel_value: entry}
    path = tmp_path / "defects_config.json"
    path.write_text(json.dumps(DEFECTS))
    assert evaluate(labels, labels, maps, region_lists, defects_config=path) == ref
    assert evaluate(labels, labels, maps, region_lists, defects_config=parse_defects_config(DEFECTS)) == ref
    # (K, H, W) stacks, torch tensors, None for good images
    stacks = [torch.from_numpy(np.stack(lst)) if lst else None for lst in region_lists]
    assert evaluate(labels, labels, torch.from_numpy(maps), stacks, defects_config=DEFECTS) == pytest.approx(ref)
    # boolean masks + region_defect_ids
    bools = [[m > 0 for m in lst] for lst in region_lists]
    ids = [[int(m.max()) for m in lst] for lst in region_lists]
    assert evaluate(labels, labels, maps, bools, defects_config=DEFECTS, region_defect_ids=ids) == ref
    # integer-labelled array: label j+1 for region j, ids give the defect values
    labelled = np.zeros(maps.shape, dtype=np.int32)
    for i, lst in enumerate(region_lists):
        for j, m in enumerate(lst):
            labelled[i][m > 0] = j + 1
    assert evaluate(labels, labels, maps, labelled, defects_config=DEFECTS, region_defect_ids=ids) == pytest.approx(
        ref, abs=1e-12
    )


def test_integer_labelled_mask_values_are_defect_ids():
    # One region per defect type per image: the mask values themselves name the defects.
    maps = np.zeros((2, 6, 6), dtype=np.float32)
    maps[1, :2, :2] = [[4, 3], [2, 1]]
    mask = np.zeros((2, 6, 6), dtype=np.uint8)
    mask[1, :2, :2] = 254  # relative 0.5: saturates after 2 of its 4 pixels
    mask[1, 4, 4] = mask[1, 5, 5] = 255  # two pixels, one (disconnected) region
    r = evaluate([0, 1], [0, 1], maps, mask, defects_config=DEFECTS)
    lst = [[], [np.where(mask[1] == 254, 254, 0), np.where(mask[1] == 255, 255, 0)]]
    assert r == pytest.approx(evaluate([0, 1], [0, 1], maps, lst, defects_config=DEFECTS))
    assert r["auspro_0.3"] == pytest.approx(brute_spro(maps, lst, DEFECTS)["auspro_0.3"], abs=1e-12)


def test_saturation_rules():
    # One image, one region of 20 pixels; the map finds its pixels one at a time before
    # any normal pixel, so sPRO reaches min(k / sat, 1) at FPR 0 and the area is
    # the final sPRO value at FPR 0 (= 1 if saturated).
    h = w = 10
    region = np.zeros((h, w), dtype=np.uint8)
    region[:2, :] = 1  # 20 pixels
    maps = np.zeros((2, h, w), dtype=np.float32)
    maps[1][region > 0] = np.linspace(2, 3, 20)
    maps[1, 0, :8] = -1.0  # only 12 of the 20 score above the normal pixels (0)
    for value, thr, relative, expected in [
        (1, 0.5, True, 1.0),  # saturation 10 pixels <= 12 found
        (1, 0.7, True, 12 / 14),  # floor(0.7 * 20) = 14
        (1, 1.0, True, 12 / 20),  # plain PRO
        (1, 12, False, 1.0),  # absolute 12 pixels
        (1, 16, False, 12 / 16),
        (1, 50, False, 12 / 20),  # capped at the area
    ]:
        cfg = [{"defect_name": "d", "pixel_value": value, "saturation_threshold": thr, "relative_saturation": relative}]
        r = evaluate([0, 1], [0, 1], maps, [[], [region]], defects_config=cfg, spro_limits=(0.05,))
        # the 8 missed region pixels score below every normal pixel: they only come in
        # at FPR 1, so the curve is flat at `expected` from FPR 0 to 1
        assert r["auspro_0.05"] == pytest.approx(expected, abs=1e-12), (thr, relative)


def test_auspro_random_detector():
    # Relative saturation 0.5: sPRO(t) ~ min(2 FPR, 1), so the normalized areas are
    # 0.05 (limit 0.05) and 0.3 (limit 0.3).
    rng = np.random.default_rng(30)
    n, h, w = 30, 64, 64
    region_lists = [[] for _ in range(n // 2)]
    for _ in range(n // 2):
        m = np.zeros((h, w), dtype=np.uint8)
        y, x = rng.integers(0, 40, size=2)
        m[y : y + 20, x : x + 20] = 254
        region_lists.append([m])
    maps = rng.random((n, h, w)).astype(np.float32)
    r = evaluate(rng.random(n), np.arange(n) >= n // 2, maps, region_lists, defects_config=DEFECTS)
    assert r["auspro_0.05"] == pytest.approx(0.05, abs=0.01)
    assert r["auspro_0.3"] == pytest.approx(0.3, abs=0.02)


def test_perfect_loco_detector():
    rng = np.random.default_rng(31)
    maps, region_lists = loco_set(rng)
    union = np.array([np.any([m > 0 for m in lst] or [np.zeros(maps.shape[1:], bool)], axis=0) for lst in region_lists])
    maps = rng.random(maps.shape).astype(np.float32) + 2 * union
    labels = [int(bool(lst)) for lst in region_lists]
    r = evaluate(labels, labels, maps, region_lists, defects_config=DEFECTS)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in r.values()), r


def test_evaluate_loco_splits_structural_and_logical():
    rng = np.random.default_rng(40)
    maps, region_lists = loco_set(rng, n=12)
    kinds = ["good"] * 6 + ["structural_anomalies", "logical"] * 3
    scores = rng.random(12) + np.array([k != "good" for k in kinds])
    out = evaluate_loco(scores, kinds, maps, region_lists, defects_config=DEFECTS)
    assert set(out) == {"structural", "logical", "mean"}
    for kind, members in [("structural", [6, 8, 10]), ("logical", [7, 9, 11])]:
        idx = list(range(6)) + members
        expected = evaluate(
            scores[idx], [0] * 6 + [1] * 3, maps[idx], [region_lists[i] for i in idx], defects_config=DEFECTS
        )
        assert out[kind] == pytest.approx(expected, abs=1e-12)
        assert out[kind]["auspro_0.3"] == pytest.approx(
            brute_spro(maps[idx], [region_lists[i] for i in idx], DEFECTS)["auspro_0.3"], abs=1e-9
        )
    for key, value in out["mean"].items():
        assert value == pytest.approx((out["structural"][key] + out["logical"][key]) / 2)
    images_only = evaluate_loco(scores, kinds)
    assert images_only["logical"] == {k: out["logical"][k] for k in ("image_auroc", "image_f1")}


# -------------------------------------------------------------------------- bad inputs


def _ad_inputs():
    rng = np.random.default_rng(50)
    masks = blobs(rng, 4, 8, 8)
    return rng.random(4), np.array([0, 0, 1, 1]), noisy_maps(rng, masks), masks


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, y, m, g: (s[:3], y, m, g), "length mismatch"),
        (lambda s, y, m, g: (s, y, m[:3], g[:3]), "length mismatch"),
        (lambda s, y, m, g: (s, y, m, g[:, :, :7]), "shape mismatch"),
        (lambda s, y, m, g: (s, y, m[:, None].repeat(2, 1), g), r"\(N, H, W\) or \(N, 1, H, W\)"),
        (lambda s, y, m, g: (s, np.array([0, 2, 1, 1]), m, g), "0 \\(normal\\) or 1"),
        (lambda s, y, m, g: (s, np.array([0.0, 0.5, 1, 1]), m, g), "0 \\(normal\\) or 1"),
        (lambda s, y, m, g: (s, np.zeros(4, int), m, g * 0), "only one class"),
        (lambda s, y, m, g: (s, np.ones(4, int), m, g), "only one class"),
        (lambda s, y, m, g: (s, y, m, np.zeros_like(g)), "only one class.*pixels"),
        (lambda s, y, m, g: (np.array([0.1, np.nan, 0.3, 0.4]), y, m, g), "scores contains NaN"),
        (lambda s, y, m, g: (s, y, np.where(g > 0, np.nan, m), g), "maps contains NaN"),
        (lambda s, y, m, g: (s, y, m, None), "without masks"),
        (lambda s, y, m, g: (s, y, None, g), "without maps"),
        (lambda s, y, m, g: (s, y, m, g * np.linspace(0, 1, 8, dtype=np.float32)), "binary"),
        (lambda s, y, m, g: (s, np.array([0, 1, 0, 1]), m, g), "labelled normal"),
    ],
)
def test_bad_inputs(change, message):
    s, y, m, g = change(*_ad_inputs())
    with pytest.raises(ValueError, match=message):
        evaluate(s, y, m, g)


def test_bad_loco_inputs():
    maps = np.random.default_rng(51).random((2, 6, 6)).astype(np.float32)
    region = np.zeros((6, 6), dtype=np.uint8)
    region[1:3, 1:3] = 255
    ok = [[], [region]]

    def run(masks=ok, **kw):
        kw.setdefault("defects_config", DEFECTS)
        return evaluate([0, 1], [0, 1], maps, masks, **kw)

    run()
    with pytest.raises(ValueError, match=r"pixel values \[7\] are not in defects_config"):
        run([[], [region // 255 * 7]])
    with pytest.raises(ValueError, match="empty"):
        run([[], [region * 0]])
    with pytest.raises(ValueError, match="several pixel values"):
        run([[], [region - (region > 0) * np.eye(6, dtype=np.uint8)]])
    with pytest.raises(ValueError, match="boolean"):
        run([[], [region > 0]])
    with pytest.raises(ValueError, match="shape mismatch"):
        run([[], [region[:5]]])
    with pytest.raises(ValueError, match="length mismatch"):
        run([[region]])
    with pytest.raises(ValueError, match="region_defect_ids"):
        run(region_defect_ids=[[], [255, 254]])
    with pytest.raises(ValueError, match="lacks"):
        run(defects_config=[{"defect_name": "x", "pixel_value": 255}])
    with pytest.raises(ValueError, match="kinds must be"):
        evaluate_loco([0, 1], ["good", "weird"])
    with pytest.raises(ValueError, match="length mismatch"):
        evaluate_loco([0, 1, 2], ["good", "logical"])
    with pytest.raises(ValueError, match="defects_config"):
        evaluate_loco([0, 1], ["good", "logical"], maps, ok)
