"""The synthetic ``kit`` category: a tray of four distinct parts in fixed pockets, with
structural defects on a part (scratch, stain, dent) and logical ones (a part missing, two
parts swapped, an extra part), written in MVTec LOCO's layout (see :mod:`.synthetic`).

Geometry is in design units (pixels of a 256x256 image) and scales with the image size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ._drawing import _DESIGN, _SUPERSAMPLE, _lighting, _shape_mask, _smooth_noise

KIT_STRUCTURAL = ("scratch", "stain", "dent")
KIT_LOGICAL = ("missing_part", "swapped_parts", "extra_part")
KIT_DEFECTS = KIT_STRUCTURAL + KIT_LOGICAL
KIT_DEFECT_KINDS = {**dict.fromkeys(KIT_STRUCTURAL, "structural"), **dict.fromkeys(KIT_LOGICAL, "logical")}
# defects_config.json as MVTec LOCO writes it: each defect's masks carry its pixel_value; every
# region saturates at its whole area (relative_saturation, threshold 1.0), as most LOCO defects do.
KIT_PIXEL_VALUES = {
    "missing_part": 255,
    "swapped_parts": 254,
    "extra_part": 253,
    "scratch": 252,
    "stain": 251,
    "dent": 250,
}
LOCO_FOLDERS = {"structural": "structural_anomalies", "logical": "logical_anomalies"}

_BENCH = (46, 48, 54)
_TRAY = (150, 156, 166)
_POCKET = (72, 76, 86)
_TRAY_SIZE = 200.0
_POCKET_GROW = 5.0
_HOMES = {  # part: (offset of its pocket's centre from the tray's corner, colour)
    "disc": ((50.0, 50.0), (210, 50, 40)),
    "block": ((150.0, 50.0), (50, 90, 210)),
    "bar": ((50.0, 150.0), (235, 200, 50)),
    "ring": ((150.0, 150.0), (40, 165, 85)),
}
_CENTRE = (100.0, 100.0)  # the free middle of the tray, where an extra part lands


def defects_config(defects=KIT_DEFECTS) -> list[dict]:
    """The category's ``defects_config.json`` entries (MVTec LOCO's format)."""
    return [
        {"defect_name": d, "pixel_value": KIT_PIXEL_VALUES[d], "saturation_threshold": 1.0, "relative_saturation": True}
        for d in defects
    ]


def _part(name: str, cx: float, cy: float, grow: float = 0.0) -> tuple[str, tuple, dict]:
    """(ImageDraw method, box in design units, keyword arguments) of a part, ``grow`` units
    larger all round (its pocket: grow = 5, drawn filled)."""
    if name == "disc":
        r = 21 + grow
        return "ellipse", (cx - r, cy - r, cx + r, cy + r), {}
    if name == "ring":
        r = 22 + grow
        return "ellipse", (cx - r, cy - r, cx + r, cy + r), {"ring": 11}
    if name == "block":
        h = 19 + grow
        return "rectangle", (cx - h, cy - h, cx + h, cy + h), {}
    if name == "bar":
        return "rounded_rectangle", (cx - 30 - grow, cy - 10 - grow, cx + 30 + grow, cy + 10 + grow), {"radius": 6}
    raise ValueError(name)


def _draw_part(d: ImageDraw.ImageDraw, name: str, cx: float, cy: float, s: float, fill, grow: float = 0.0) -> None:
    method, box, extra = _part(name, cx, cy, grow)
    xy = [v * s for v in box]
    if "ring" in extra and grow == 0.0:  # a pocket is filled; the ring itself has a hole
        d.ellipse(xy, outline=fill, width=max(1, round(extra["ring"] * s)))
    elif method == "rounded_rectangle":
        d.rounded_rectangle(xy, radius=extra["radius"] * s, fill=fill)
    else:
        getattr(d, method)(xy, fill=fill)


def _footprint(size: int, places, grow: float = 0.0) -> np.ndarray:
    """float (H, W) coverage of the parts ``places`` [(name, x, y)] (grown by ``grow``)."""

    def draw(d, s):
        for name, x, y in places:
            _draw_part(d, name, x, y, s, 255, grow)

    return _shape_mask(size, draw)


def _logical(defect: str, drng, tray: tuple[float, float], placed: dict) -> list[list[tuple[str, float, float]]]:
    """Apply a logical defect to ``placed`` {pocket: (part, x, y) or None}; returns its regions,
    each a list of (part, x, y) footprints."""
    names = list(_HOMES)
    if defect == "missing_part":
        pocket = names[int(drng.integers(len(names)))]
        regions = [[placed[pocket]]]
        placed[pocket] = None
    elif defect == "swapped_parts":
        a, b = (names[int(i)] for i in drng.choice(len(names), 2, replace=False))
        (pa, xa, ya), (pb, xb, yb) = placed[a], placed[b]
        placed[a], placed[b] = (pb, xa, ya), (pa, xb, yb)
        # each place: where the old part was and where the new one is (both changed)
        regions = [[(pa, xa, ya), (pb, xa, ya)], [(pb, xb, yb), (pa, xb, yb)]]
    else:  # extra_part: a copy of a part in the tray's free middle
        name = names[int(drng.integers(len(names)))]
        x, y = tray[0] + _CENTRE[0] + drng.uniform(-2, 2), tray[1] + _CENTRE[1] + drng.uniform(-2, 2)
        placed["extra"] = (name, x, y)
        regions = [[(name, x, y)]]
    return regions


def _scratch(image, drng, size, cover, cx, cy):
    theta = drng.uniform(0, math.pi)
    length = drng.uniform(34, 46)
    ox, oy = drng.uniform(-5, 5, 2)
    dx, dy = math.cos(theta) * length / 2, math.sin(theta) * length / 2
    width = drng.uniform(3.5, 4.5)
    x0, y0, x1, y1 = cx + ox - dx, cy + oy - dy, cx + ox + dx, cy + oy + dy
    alpha = _shape_mask(
        size, lambda d, s: d.line([(x0 * s, y0 * s), (x1 * s, y1 * s)], fill=255, width=round(width * s))
    )
    alpha = alpha * cover * 0.9
    colour = np.asarray((0.93, 0.93, 0.88), np.float32)
    image[:] = image * (1 - alpha[..., None]) + alpha[..., None] * colour
    return alpha > 0.25


def _blob(drng, size, cx, cy, radius) -> np.ndarray:
    scale = size / _DESIGN
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / scale
    field = np.zeros((size, size), np.float32)
    for _ in range(int(drng.integers(3, 6))):
        ox, oy = drng.normal(0, radius * 0.35, 2)
        sigma = radius * drng.uniform(0.4, 0.6)
        field += np.exp(-((xx - cx - ox) ** 2 + (yy - cy - oy) ** 2) / (2 * sigma**2))
    return np.clip((field - 0.35) * 5.0, 0, 1)


def _inside(drng, size, cover) -> tuple[float, float]:
    """A random point well inside a part (design units): a stain or dent lands on the part,
    not in the ring's hole."""
    ys, xs = np.nonzero(cover > 0.99)
    k = int(drng.integers(len(ys)))
    scale = size / _DESIGN
    return (xs[k] + 0.5) / scale, (ys[k] + 0.5) / scale


def _stain(image, drng, size, cover, cx, cy):
    cx, cy = _inside(drng, size, cover)
    alpha = _blob(drng, size, cx, cy, drng.uniform(10, 14)) * cover * drng.uniform(0.75, 0.85)
    colour = np.asarray((0.42, 0.34, 0.24), np.float32)  # murky brown grease
    image[:] = image * (1 - alpha[..., None]) + alpha[..., None] * colour
    return alpha > 0.25 * 0.75


def _dent(image, drng, size, cover, cx, cy):
    """A round depression lit from one side: one flank darker, the other brighter."""
    sigma = drng.uniform(5.5, 7.5)
    x0, y0 = _inside(drng, size, cover)
    light = drng.uniform(0, 2 * math.pi)
    scale = size / _DESIGN
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / scale
    dx, dy = (xx - x0) / sigma, (yy - y0) / sigma
    bump = np.exp(-(dx**2 + dy**2) / 2)
    slope = (dx * math.cos(light) + dy * math.sin(light)) * bump
    gain = 1 + cover * (1.1 * slope - 0.35 * bump)
    image *= gain[..., None]
    np.clip(image, 0, 1, out=image)
    return ((np.abs(gain - 1) > 0.08) | (bump > 0.3)) & (cover > 0.5)


_STRUCTURAL = {"scratch": _scratch, "stain": _stain, "dent": _dent}


def render_kit(rng, drng, size: int, defect: str | None, apply: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """A kit image (float32 (H, W, 3) in [0, 1]) and its defect's regions (bool (H, W), one
    per ground-truth mask file; none for a good image). ``apply=False``: the same scene
    without the defect (the regions are still the defect's)."""
    tx, ty = 28 + rng.uniform(-4, 4, 2)
    placed: dict[str, tuple[str, float, float] | None] = {}
    for name, ((ox, oy), _) in _HOMES.items():
        jx, jy = rng.uniform(-1.5, 1.5, 2)
        placed[name] = (name, tx + ox + jx, ty + oy + jy)
    pockets = {name: (tx + ox, ty + oy) for name, ((ox, oy), _) in _HOMES.items()}
    places: list[list[tuple[str, float, float]]] = []
    if defect in KIT_LOGICAL:
        normal = dict(placed)
        places = _logical(defect, drng, (tx, ty), placed)
        if not apply:
            placed = normal

    big = size * _SUPERSAMPLE
    s = big / _DESIGN
    canvas = Image.new("RGB", (big, big), _BENCH)
    d = ImageDraw.Draw(canvas)
    d.rounded_rectangle([v * s for v in (tx, ty, tx + _TRAY_SIZE, ty + _TRAY_SIZE)], radius=12 * s, fill=_TRAY)
    for name, (px, py) in pockets.items():
        _draw_part(d, name, px, py, s, _POCKET, grow=_POCKET_GROW)
    for part in placed.values():
        if part is not None:
            _draw_part(d, part[0], part[1], part[2], s, _HOMES[part[0]][1])
    image = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    image = image * (1 + 0.04 * _smooth_noise(rng, size, 16))[..., None]  # surface unevenness

    regions = [_footprint(size, region) > 0.5 for region in places]
    if defect in _STRUCTURAL:
        name = list(_HOMES)[int(drng.integers(len(_HOMES)))]
        part = placed[name]
        assert part is not None
        cover = _footprint(size, [part])
        target = image if apply else image.copy()
        regions = [_STRUCTURAL[defect](target, drng, size, cover, part[1], part[2])]
    return _lighting(image, rng), regions


def write_loco_category(
    base: Path,
    render: Callable[[str, str | None, int], tuple[np.ndarray, list[np.ndarray]]],
    save: Callable[[np.ndarray, Path], None],
    counts: dict[str, int],
    defects,
) -> dict[str, str]:
    """Write a category in MVTec LOCO's layout under ``base``: train/good, validation/good,
    test/{good,logical_anomalies,structural_anomalies}, ground_truth/<type>/<id>/000.png, ...
    (one mask per region, its pixels = the defect's pixel_value) and defects_config.json.
    ``render(split, defect, index)`` gives (image, regions). Returns {test image: defect}."""
    jobs = [("train", None, counts["n_train"]), ("validation", None, counts["n_validation"])]
    jobs += [("test", None, counts["n_test_good"])] + [("test", d, counts["n_test_defect_per_type"]) for d in defects]
    next_id = dict.fromkeys(LOCO_FOLDERS.values(), 0)
    listing: dict[str, str] = {}
    for split, defect, count in jobs:
        folder = "good" if defect is None else LOCO_FOLDERS[KIT_DEFECT_KINDS[defect]]
        out = base / split / folder
        out.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, regions = render(split, defect, i)
            stem = f"{i:03d}" if defect is None else f"{next_id[folder]:03d}"
            save(image, out / f"{stem}.png")
            if defect is None:
                continue
            next_id[folder] += 1
            listing[f"{folder}/{stem}.png"] = defect
            gt = base / "ground_truth" / folder / stem
            gt.mkdir(parents=True, exist_ok=True)
            for j, region in enumerate(regions):
                mask = region.astype(np.uint8) * KIT_PIXEL_VALUES[defect]
                Image.fromarray(mask).save(gt / f"{j:03d}.png", format="PNG", optimize=False)
    config = json.dumps(defects_config([d for d in KIT_DEFECTS if d in defects]), indent=2)
    (base / "defects_config.json").write_text(config + "\n")
    return listing
