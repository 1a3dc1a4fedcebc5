"""A small procedurally generated anomaly detection dataset in the MVTec AD layout.

``make_synthetic(root)`` writes, for each category::

    <root>/<category>/train/good/000.png ...                 normal images
    <root>/<category>/test/good/000.png ...                  normal test images
    <root>/<category>/test/<defect>/000.png ...              anomalous test images
    <root>/<category>/ground_truth/<defect>/000_mask.png     0/255 masks, same size
    <root>/synthetic.json                                    the parameters and defect kinds

so ``open_dataset(root, "mvtec_ad", category, ...)`` (or ``"folder"``: the layout is also a
valid generic folder dataset) reads it. Images are 8-bit RGB PNGs, 256x256 by default.

``kit`` alone is written in MVTec LOCO's layout, beside the others in the same root::

    <root>/kit/train/good/, <root>/kit/validation/good/, <root>/kit/test/good/
    <root>/kit/test/{logical_anomalies,structural_anomalies}/000.png ...
    <root>/kit/ground_truth/<type>/000/000.png (, 001.png)   one mask per region, its pixels = the
                                                              defect's pixel_value, else 0
    <root>/kit/defects_config.json                            LOCO's format, for sPRO

Open it with ``open_dataset(root, "mvtec_loco", "kit", ...)`` (``--dataset loco``; asked as
``mvtec_ad`` it refuses and says so); ``list_categories`` lists it for ``mvtec_loco`` only and
the others for every layout but that one, so ``report --dataset loco`` on such a root runs
kit and ``--dataset mvtec`` runs the rest. synthetic.json's ``test_images`` names each kit
test image's defect.

Categories
----------
``weave`` (texture): a plain-woven fabric; every image has its own thread phase (shift),
    a small rotation (+-3 deg), brightness (x0.8-1.2), a lighting gradient, a colour tint,
    slow shading and pixel noise.
``board`` (object): a green circuit board with copper traces on a grey bench; five
    distinct flat parts sit at fixed cells of a 3x3 grid (red square chip, blue disc
    capacitor, yellow bar resistor, dark grey connector, purple coil ring), each hiding a
    land pattern (bare copper pad with vias); the four empty cells carry white silkscreen
    label squares. The board shifts by +-4 px and each part by +-2 px; lighting varies as
    for ``weave``. The board is kept plain (flat parts, no fine print): a random-teacher
    model trained for a few hundred steps learns smooth content quickly, so defects stand
    out against a well-learned normal.

``kit`` (object, MVTec LOCO layout): a grey tray on a dark bench with four distinct parts,
    each in its own dark pocket: red disc (top left), blue square block (top right), yellow
    bar (bottom left), green ring (bottom right); the middle of the tray is empty. The tray
    shifts by +-4 px and each part by +-1.5 px in its pocket; lighting as for ``weave``.
    Structural (on one part, kept on it): ``scratch`` (pale line, 34-46 px long, 3.5-4.5 px
    wide), ``stain`` (murky brown blob, radius 10-14 px), ``dent`` (a round depression lit
    from one side, sigma 5.5-7.5 px). Logical: ``missing_part`` (an empty pocket; mask: where
    the part should be), ``swapped_parts`` (two parts in each other's pockets; two masks,
    each the old and the new part's footprint at one place), ``extra_part`` (a copy of a
    part in the middle; mask: the copy). Every defect keeps its size (``defect_scale`` does
    not apply). defects_config.json: pixel values 255 (missing_part) down to 250 (dent),
    each saturating at its region's whole area (relative, 1.0).

Photo textures (need scikit-image, the ``[distill]`` extra)
-------------------------------------------------------------
``brick``, ``grass``, ``gravel`` (texture): real photographed surfaces, the scikit-image
    sample photographs of those names (512x512 grayscale, bundled with scikit-image). Each
    image is a random 288x288 window of the photo (random flips), resized to the image size,
    with the lighting variation of ``weave``. The distillation of the teacher
    (``efficientad_fast.distill``) keeps these photographs out, so they measure how a
    teacher does on real textures it has never seen. Not part of the default dataset.

Defects (structural: every category; logical: ``board`` only)
--------------------------------------------------------------
``scratch``          a bright, slightly curved line, 70-120 px long, 3-4.5 px wide
                     (board: 5-7 px, pale laminate colour).
``hole``             a dark irregular hole (radius 9-15 px) with a lighter frayed rim.
``stain``            a soft-edged blob (radius 15-30 px): dark coffee brown on the
                     fabric, whitish flux residue on the board.
``crack``            a dark, wandering, sometimes branching line with lighter chipped
                     edges, 60-110 px long, 3.5-5 px wide (board: 5.5-8 px) plus 3 px edges.
``missing_part``     one part is absent; its land pattern shows. Mask: where the part should be.
``extra_part``       a copy of a part sits on a label square. Mask: the copy.
``misplaced_part``   a part sits on a label square instead of its home. Mask: both
                     the place it left (land pattern showing) and where it is now.
``recoloured_part``  one part has a colour no part ever has (cyan, orange, lime or pink).
                     Mask: the part.

Masks cover the pixels a defect changes (soft edges: where its opacity exceeds ~25 %).
Same seed and arguments give byte-identical files; each image has its own random stream,
so changing a count leaves the other images unchanged.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .._checkpoint import replace_folder
from ._drawing import _DESIGN, _STRUCTURAL, _SUPERSAMPLE, _lighting, _rng, _shape_mask, _smooth_noise
from .synthetic_kit import KIT_DEFECT_KINDS, KIT_DEFECTS, render_kit, write_loco_category

STRUCTURAL_DEFECTS = ("scratch", "hole", "stain", "crack")
LOGICAL_DEFECTS = ("missing_part", "extra_part", "misplaced_part", "recoloured_part")
_MVTEC_DEFECT_KINDS = {**{d: "structural" for d in STRUCTURAL_DEFECTS}, **{d: "logical" for d in LOGICAL_DEFECTS}}
SYNTHETIC_DEFECT_KINDS = {**_MVTEC_DEFECT_KINDS, **KIT_DEFECT_KINDS}
PHOTO_TEXTURES = ("brick", "grass", "gravel")
LOCO_CATEGORIES = ("kit",)  # written in MVTec LOCO's layout: open them with dataset "mvtec_loco"
SYNTHETIC_CATEGORIES = {
    "weave": {"type": "texture", "defects": STRUCTURAL_DEFECTS},
    "board": {"type": "object", "defects": STRUCTURAL_DEFECTS + LOGICAL_DEFECTS},
    **{name: {"type": "texture", "defects": STRUCTURAL_DEFECTS} for name in PHOTO_TEXTURES},
    "kit": {"type": "object", "defects": KIT_DEFECTS, "layout": "mvtec_loco"},
}


# -- weave (texture) ----------------------------------------------------------------------

_WEAVE_STYLE = {
    "rim": (0.93, 0.87, 0.74),
    "stain": (0.42, 0.28, 0.14),
    "stain_mode": "multiply",
    "scratch": (1.0, 1.0, 1.0),
    "line_scale": 1.0,
}


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    scale = size / _DESIGN
    period = 12.0 * scale
    angle = math.radians(rng.uniform(-3, 3))
    ox, oy = rng.uniform(0, 2 * period, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (math.cos(angle) * xx + math.sin(angle) * yy + ox) / period
    v = (-math.sin(angle) * xx + math.cos(angle) * yy + oy) / period
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    warp_top = ((iu + iv) % 2) == 0
    across_u = np.sqrt(np.clip(np.sin(math.pi * fu), 0, 1))
    across_v = np.sqrt(np.clip(np.sin(math.pi * fv), 0, 1))
    warp = across_u * (0.72 + 0.28 * np.sin(math.pi * fv))
    weft = across_v * (0.72 + 0.28 * np.sin(math.pi * fu))
    shade = np.where(warp_top, warp, weft)
    warp_colour = np.array([0.80, 0.68, 0.48], np.float32)
    weft_colour = np.array([0.66, 0.56, 0.40], np.float32)
    colour = np.where(warp_top[..., None], warp_colour, weft_colour)
    fibre = 1 + 0.06 * rng.standard_normal((size, size), dtype=np.float32)
    slow = 1 + 0.06 * _smooth_noise(rng, size, 8)
    return (0.15 + 0.85 * shade)[..., None] * colour * (fibre * slow)[..., None]


def _structural(image, drng, size, defect, region, style, apply, defect_scale=1.0):
    target = image if apply else image.copy()
    if defect_scale == 1.0:
        return _STRUCTURAL[defect](target, drng, size, region, style)
    # A smaller defect: drawn as on a whole image into a square patch defect_scale times the
    # image's side, placed inside ``region`` (the patch is a view: the defect lands in place).
    patch = max(16, round(size * defect_scale))
    x0, y0, x1, y1 = (round(v * size / _DESIGN) for v in region)
    left = min(int(drng.integers(x0, max(x0, x1 - patch) + 1)), size - patch)  # a patch wider than the
    top = min(int(drng.integers(y0, max(y0, y1 - patch) + 1)), size - patch)  # region still fits the image
    mask = np.zeros((size, size), bool)
    mask[top : top + patch, left : left + patch] = _STRUCTURAL[defect](
        target[top : top + patch, left : left + patch], drng, patch, (12, 12, _DESIGN - 12, _DESIGN - 12), style
    )
    return mask


def _textured(
    image, rng, drng, size: int, defect: str | None, apply: bool, defect_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A texture image with its structural defect anywhere but the border, then lit."""
    mask = np.zeros((size, size), bool)
    if defect is not None:
        region = (12, 12, _DESIGN - 12, _DESIGN - 12)
        mask = _structural(image, drng, size, defect, region, _WEAVE_STYLE, apply, defect_scale)
    return _lighting(image, rng), mask


def _render_weave(
    rng, drng, size: int, defect: str | None, apply: bool, defect_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    return _textured(_weave(rng, size), rng, drng, size, defect, apply, defect_scale)


# -- board (object) -----------------------------------------------------------------------

# Lines on the board are wider than on the fabric: thin bright/dark lines (traces, outlines,
# slots) are part of a normal board, so scratches (bare laminate) and cracks must stand out.
_BOARD_STYLE = {
    "rim": (0.80, 0.76, 0.62),
    "stain": (0.88, 0.86, 0.72),
    "stain_mode": "blend",
    "scratch": (1.0, 0.95, 0.72),
    "line_scale": 1.6,
}
_BENCH = (58, 58, 64)
_BOARD_GREEN = (28, 104, 58)
_TRACE = (176, 150, 70)
_SILK = (236, 236, 230)
_COPPER = (214, 120, 56)
_CELL = (40.0, 100.0, 160.0)  # cell centres, board coordinates
_BOARD_SIZE = 200.0
_PARTS = {  # name: (cell (row, col), colour)
    "chip": ((0, 0), (205, 40, 30)),
    "capacitor": ((0, 2), (40, 80, 210)),
    "resistor": ((1, 1), (232, 200, 40)),
    "connector": ((2, 0), (64, 64, 76)),
    "coil": ((2, 2), (150, 50, 178)),
}
_FREE_CELLS = ((0, 1), (1, 0), (1, 2), (2, 1))
_ODD_COLOURS = ((30, 205, 205), (250, 130, 20), (150, 235, 40), (250, 125, 175))


def _part_shapes(name: str, cx: float, cy: float, colour) -> tuple[list, list]:
    """(shapes, footprint): shapes are (method, coords, fill) in design units. Parts are
    flat and simple on purpose: a random-teacher model trained for a few hundred steps
    learns smooth content fast, so defects stand out against a well-learned normal."""
    if name == "chip":
        box = ("rectangle", (cx - 20, cy - 20, cx + 20, cy + 20))
        return [(*box, colour)], [box]
    if name == "capacitor":
        disc = ("ellipse", (cx - 19, cy - 19, cx + 19, cy + 19))
        return [(*disc, colour)], [disc]
    if name == "resistor":
        bar = ("rectangle", (cx - 26, cy - 10, cx + 26, cy + 10))
        return [("rounded_rectangle", bar[1], colour)], [bar]
    if name == "connector":
        box = ("rectangle", (cx - 24, cy - 13, cx + 24, cy + 13))
        return [(*box, colour)], [box]
    if name == "coil":
        disc = ("ellipse", (cx - 20, cy - 20, cx + 20, cy + 20))
        return [(*disc, colour), ("ellipse", (cx - 8, cy - 8, cx + 8, cy + 8), _BOARD_GREEN)], [disc]
    raise ValueError(name)


def _land(name: str, cx: float, cy: float) -> list:
    """Land pattern at a part's home, hidden under the part: a bare copper pad with a grid of
    vias (a colour and pattern seen nowhere else on a normal board)."""
    if name in ("capacitor", "coil"):
        shapes = [("ellipse", (cx - 13, cy - 13, cx + 13, cy + 13), _COPPER)]
    elif name == "resistor":
        shapes = [("rectangle", (cx - 18, cy - 7, cx + 18, cy + 7), _COPPER)]
    elif name == "connector":
        shapes = [("rectangle", (cx - 16, cy - 8, cx + 16, cy + 8), _COPPER)]
    else:
        shapes = [("rectangle", (cx - 14, cy - 12, cx + 14, cy + 12), _COPPER)]
    rows = (-4, 4) if name in ("resistor", "connector") else (-6, 0, 6)
    return shapes + [
        ("ellipse", (cx + dx - 2, cy + dy - 2, cx + dx + 2, cy + dy + 2), (20, 20, 22))
        for dx in (-6, 0, 6)
        for dy in rows
    ]


def _scaled(coords, s):
    return [c * s for c in coords]


def _draw_shapes(d: ImageDraw.ImageDraw, shapes, s: float) -> None:
    for method, coords, fill in shapes:
        if method == "rounded_rectangle":
            d.rounded_rectangle(_scaled(coords, s), radius=6 * s, fill=fill)
        else:
            getattr(d, method)(_scaled(coords, s), fill=fill)


def _render_board(
    rng, drng, size: int, defect: str | None, apply: bool, defect_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    bx, by = 28 + rng.uniform(-4, 4, 2)
    home = {
        name: (bx + _CELL[c] + rng.uniform(-2, 2), by + _CELL[r] + rng.uniform(-2, 2), bx + _CELL[c], by + _CELL[r])
        for name, ((r, c), _) in _PARTS.items()
    }
    # what is drawn where: name -> list of (x, y, colour); footprints for the mask
    placed = {name: [(home[name][0], home[name][1], _PARTS[name][1])] for name in _PARTS}
    masked: list[tuple[str, float, float]] = []
    if defect in LOGICAL_DEFECTS:
        name = list(_PARTS)[int(drng.integers(len(_PARTS)))]
        free = _FREE_CELLS[int(drng.integers(len(_FREE_CELLS)))]
        fx, fy = bx + _CELL[free[1]] + drng.uniform(-2, 2), by + _CELL[free[0]] + drng.uniform(-2, 2)
        odd = _ODD_COLOURS[int(drng.integers(len(_ODD_COLOURS)))]
        x, y, colour = placed[name][0]
        normal = {k: list(v) for k, v in placed.items()}
        if defect == "missing_part":
            placed[name] = []
            masked.append((name, x, y))
        elif defect == "extra_part":
            placed[name].append((fx, fy, colour))
            masked.append((name, fx, fy))
        elif defect == "misplaced_part":
            placed[name] = [(fx, fy, colour)]
            masked += [(name, x, y), (name, fx, fy)]
        else:  # recoloured_part
            placed[name] = [(x, y, odd)]
            masked.append((name, x, y))
        if not apply:
            placed = normal

    big = size * _SUPERSAMPLE
    s = big / _DESIGN
    canvas = Image.new("RGB", (big, big), _BENCH)
    d = ImageDraw.Draw(canvas)
    d.rounded_rectangle(_scaled((bx, by, bx + _BOARD_SIZE, by + _BOARD_SIZE), s), radius=10 * s, fill=_BOARD_GREEN)
    for k in (70, 130):  # copper traces between the cells
        d.line(_scaled((bx + 8, by + k, bx + _BOARD_SIZE - 8, by + k), s), fill=_TRACE, width=max(1, round(3 * s)))
        d.line(_scaled((bx + k, by + 8, bx + k, by + _BOARD_SIZE - 8), s), fill=_TRACE, width=max(1, round(3 * s)))
    for r, c in _FREE_CELLS:  # white silkscreen label squares on the empty cells
        x, y = bx + _CELL[c], by + _CELL[r]
        d.rectangle(_scaled((x - 17, y - 17, x + 17, y + 17), s), fill=_SILK)
    for name, (_, _, px, py) in home.items():
        _draw_shapes(d, _land(name, px, py), s)
    for name, copies in placed.items():
        for x, y, colour in copies:
            _draw_shapes(d, _part_shapes(name, x, y, colour)[0], s)
    image = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    image = image * (1 + 0.04 * _smooth_noise(rng, size, 16))[..., None]  # surface unevenness

    mask = np.zeros((size, size), bool)
    if masked:

        def draw(dm, sm):
            for name, x, y in masked:
                for method, coords in _part_shapes(name, x, y, (0, 0, 0))[1]:
                    getattr(dm, method)(_scaled(coords, sm), fill=255)

        mask = _shape_mask(size, draw) > 0.5
    elif defect is not None:
        region = (bx + 10, by + 10, bx + _BOARD_SIZE - 10, by + _BOARD_SIZE - 10)
        mask = _structural(image, drng, size, defect, region, _BOARD_STYLE, apply, defect_scale)
    return _lighting(image, rng), mask


# -- photo textures ----------------------------------------------------------------------

_PHOTO_WINDOW = 288  # pixels of the 512x512 photograph per image


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError(
            f"the photo texture {name!r} needs scikit-image: pip install 'efficientad_fast[distill]' (or scikit-image)"
        ) from exc
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _photo_renderer(name: str):
    def render(
        rng, drng, size: int, defect: str | None, apply: bool, defect_scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        photo = _photo(name)
        left, top = (int(v) for v in rng.integers(0, np.array(photo.size) - _PHOTO_WINDOW + 1))
        window = photo.crop((left, top, left + _PHOTO_WINDOW, top + _PHOTO_WINDOW))
        window = window.resize((size, size), Image.Resampling.LANCZOS)
        image = np.asarray(window, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if rng.random() < 0.5:
            image = image[::-1]
        return _textured(np.ascontiguousarray(image), rng, drng, size, defect, apply, defect_scale)

    return render


def _render_kit(rng, drng, size: int, defect: str | None, apply: bool, defect_scale: float = 1.0):
    image, regions = render_kit(rng, drng, size, defect, apply)  # its defects keep their size
    return image, np.logical_or.reduce(regions) if regions else np.zeros((size, size), bool)


_RENDER = {
    "weave": _render_weave,
    "board": _render_board,
    **{n: _photo_renderer(n) for n in PHOTO_TEXTURES},
    "kit": _render_kit,
}


# -- writer -------------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path) -> None:
    if array.dtype == bool:
        data = array.astype(np.uint8) * 255
    else:
        data = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(data).save(path, format="PNG", optimize=False)


def render_synthetic(
    category: str,
    seed: int = 0,
    split: str = "train",
    defect: str | None = None,
    index: int = 0,
    image_size: int = 256,
    clean: bool = False,
    defect_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image: (float32 (H, W, 3) in [0, 1], bool (H, W) mask), as written by
    :func:`make_synthetic` before 8-bit quantization.

    ``clean=True`` renders the same image without its defect (same scene, lighting and
    noise; the mask is still the defect's), so the two differ only where the defect is.
    ``defect_scale`` < 1 draws structural defects that much smaller than their usual size
    relative to the image (see :func:`make_synthetic`).
    """
    if category not in _RENDER:
        raise ValueError(f"unknown synthetic category {category!r}; choose from {sorted(_RENDER)}")
    allowed = SYNTHETIC_CATEGORIES[category]["defects"]
    if defect is not None and defect not in allowed:
        raise ValueError(f"category {category!r} has no defect {defect!r}; it has {allowed}")
    rng, drng = _streams(seed, category, split, defect, index)
    _check_defect_scale(defect_scale)
    image, mask = _RENDER[category](rng, drng, int(image_size), defect, not clean, float(defect_scale))
    if defect is not None and not mask.any():
        raise AssertionError(f"empty mask for {category}/{defect}/{index}")  # never expected
    return image.astype(np.float32), mask


def _streams(seed: int, category: str, split: str, defect: str | None, index: int):
    key = (seed, category, split, defect or "good", index)
    return _rng(*key), _rng(*key, "defect")  # scene/lighting stream, defect stream


def _kit_regions(seed: int, image_size: int, split: str, defect: str | None, index: int):
    """A kit image and its defect's regions (one per mask file), as :func:`render_synthetic`
    draws it."""
    rng, drng = _streams(seed, "kit", split, defect, index)
    image, regions = render_kit(rng, drng, int(image_size), defect, True)
    return image.astype(np.float32), regions


def make_synthetic(
    root: str | os.PathLike,
    seed: int = 0,
    *,
    categories: Sequence[str] = ("weave", "board"),
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_defect_per_type: int = 5,
    defects: Sequence[str] | None = None,
    image_size: int = 256,
    overwrite: bool = False,
    defect_scale: float = 1.0,
    n_validation: int | None = None,
) -> Path:
    """Write the synthetic dataset (see the module docstring) to ``root`` and return it.

    Args:
        categories: any of ``"weave"`` (texture), ``"board"`` (object), ``"kit"`` (object,
            MVTec LOCO layout: open it as ``"mvtec_loco"``) and the photo textures
            ``"brick"``, ``"grass"``, ``"gravel"`` (need scikit-image).
        n_train / n_test_good: normal images in train/good and test/good.
        n_test_defect_per_type: anomalous test images per defect type.
        defects: restrict to these defect types (each category keeps the ones it has).
        image_size: side of the square images (>= 64; the model needs >= 256).
        overwrite: replace an existing non-empty ``root``; otherwise that raises
            FileExistsError. An empty folder is fine.
        defect_scale: in (0, 1]: structural defects (scratch, hole, stain, crack) are drawn
            this much smaller relative to the image, with their usual look (as on a 256 px
            image, into a patch of ``defect_scale * image_size`` pixels). Large images with
            small defects: ``image_size=1024, defect_scale=0.25`` gives defects of the pixel
            sizes listed above on 1024 px images (a 3 px scratch; under 1 px at 256 px).
            Logical defects keep their size, and so do all of ``kit``'s.
        n_validation: normal images in validation/good of the MVTec LOCO-layout categories
            (``kit``); default ``max(1, n_train // 6)``. The MVTec AD-layout ones have none.

    Everything is written into a temporary folder beside ``root`` and renamed at the end,
    so ``root`` never holds a half-written dataset.
    """
    root = Path(root)
    _check_synthetic_args(categories, n_train, n_test_good, n_test_defect_per_type, defects, image_size)
    _check_defect_scale(defect_scale)
    n_validation = max(1, int(n_train) // 6) if n_validation is None else int(n_validation)
    _check_loco_args(categories, defects, n_train, n_validation, n_test_good, n_test_defect_per_type)
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not empty (pass overwrite=True to replace it)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        manifest: dict[str, Any] = {  # JSON
            "seed": int(seed),
            "image_size": int(image_size),
            "layout": "mvtec_ad",
            "categories": {},
            "defect_kinds": _MVTEC_DEFECT_KINDS,
        }
        if set(categories) & set(LOCO_CATEGORIES):  # the manifest of the usual dataset stays as it was
            manifest["defect_kinds"] = SYNTHETIC_DEFECT_KINDS
        if defect_scale != 1.0:  # the manifest of the usual dataset stays as it was
            manifest["defect_scale"] = float(defect_scale)
        counts = {
            "n_train": int(n_train),
            "n_test_good": int(n_test_good),
            "n_test_defect_per_type": int(n_test_defect_per_type),
        }
        for category in categories:
            chosen = [d for d in SYNTHETIC_CATEGORIES[category]["defects"] if defects is None or d in defects]
            manifest["categories"][category] = {
                "type": SYNTHETIC_CATEGORIES[category]["type"],
                "defects": chosen,
                **counts,
            }
            if category in LOCO_CATEGORIES:
                entry = manifest["categories"][category]
                entry.update(layout="mvtec_loco", n_validation=n_validation)
                entry["test_images"] = write_loco_category(
                    tmp / category,
                    functools.partial(_kit_regions, seed, image_size),
                    _save_png,
                    {**counts, "n_validation": n_validation},
                    chosen,
                )
                continue
            jobs: list[_Job] = [("train", "good", None, n_train), ("test", "good", None, n_test_good)]
            jobs += [("test", d, d, n_test_defect_per_type) for d in chosen]
            _write_category(tmp / category, category, seed, jobs, image_size, defect_scale)
        (tmp / "synthetic.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        replace_folder(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _check_synthetic_args(categories, n_train, n_test_good, n_test_defect_per_type, defects, image_size) -> None:
    unknown = [c for c in categories if c not in SYNTHETIC_CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from {sorted(SYNTHETIC_CATEGORIES)}")
    if int(image_size) < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    if min(n_train, n_test_good, n_test_defect_per_type) < 0:
        raise ValueError("image counts must be >= 0")
    if defects is not None:
        bad = [d for d in defects if d not in SYNTHETIC_DEFECT_KINDS]
        if bad:
            raise ValueError(f"unknown synthetic defects {bad}; choose from {list(SYNTHETIC_DEFECT_KINDS)}")


def _check_loco_args(categories, defects, *counts) -> None:
    """A category in MVTec LOCO's layout needs images in every folder and both kinds of defect."""
    for category in set(categories) & set(LOCO_CATEGORIES):
        chosen = {
            SYNTHETIC_DEFECT_KINDS[d]
            for d in SYNTHETIC_CATEGORIES[category]["defects"]
            if defects is None or d in defects
        }
        if chosen != {"structural", "logical"} or min(counts) < 1:
            raise ValueError(
                f"{category!r} is written in MVTec LOCO's layout, which needs at least one image in train, "
                "validation and test/good, and at least one structural and one logical defect"
            )


def _check_defect_scale(defect_scale) -> None:
    if isinstance(defect_scale, bool) or not isinstance(defect_scale, (int, float)) or not 0 < defect_scale <= 1:
        raise ValueError(f"defect_scale must be a number in (0, 1], got {defect_scale!r}")


# What _write_category renders: (split, folder, defect or None, count).
_Job = tuple[str, str, str | None, int]


def _write_category(
    base: Path, category: str, seed: int, jobs: list[_Job], image_size: int, defect_scale: float = 1.0
) -> None:
    """Render and save one category's images (and masks) for each job
    (split, folder, defect or None, count)."""
    for split, folder, defect, count in jobs:
        out = base / split / folder
        out.mkdir(parents=True, exist_ok=True)
        if defect is not None:
            (base / "ground_truth" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = render_synthetic(category, seed, split, defect, i, image_size, defect_scale=defect_scale)
            _save_png(image, out / f"{i:03d}.png")
            if defect is not None:
                _save_png(mask, base / "ground_truth" / folder / f"{i:03d}_mask.png")


__all__ = [
    "LOCO_CATEGORIES",
    "LOGICAL_DEFECTS",
    "PHOTO_TEXTURES",
    "STRUCTURAL_DEFECTS",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DEFECT_KINDS",
    "make_synthetic",
    "render_synthetic",
]
