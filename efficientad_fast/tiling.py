"""Tiling for large images with small defects: score an image in overlapping tiles at its
own resolution instead of downscaling it whole to the networks' input size.

    pred = model.predict(images, tile=256, overlap=32)     # or predict_tiled(model, images, 256, 32)
    pred.score, pred.anomaly_map                            # (N,), (N, 1, H, W): as without tiles

Why: a 4 px defect on a 2048 px frame is under one pixel once the frame is downscaled to
256 px; in 256 px tiles of the full-resolution frame it keeps its 4 px.

How: :func:`tile_grid` places tiles of ``tile`` x ``tile`` pixels every ``tile - overlap``
pixels, the last row and column flush with the image's border, so every pixel is covered
and no tile leaves the image. All tiles of all images are scored as batches of
:data:`TILE_BATCH` tiles (the batch bounds the networks' memory, whatever the image size),
each tile exactly as ``model.predict`` scores an image of that size. :func:`stitch` puts
the tile maps back: in the overlaps it takes a weighted mean, each tile weighted by a
linear ramp that rises from ``0.5 / overlap`` to 1 over the ``overlap`` pixels next to each
edge it shares with a neighbour (edges on the image's border keep weight 1). Where two
tiles overlap by exactly ``overlap`` pixels the two ramps sum to 1, a crossfade; the ramp
also gives each tile's own border, where its map sees no context beyond the tile, the
least say. The image score is the maximum of the stitched map, as without tiles.

Training on tiles (``train --tile 256``, ``train_category(tile=...)``) cuts the training
and held-out images into the grid of :func:`cut_tiles` (no overlap but the last, flush
tile), so the model learns and is calibrated at the scale it is used at; the model then
records the tile size (``model.tile``) and ``predict`` tiles by default.

This module imports nothing from :mod:`efficientad_fast.model` (the model imports it):
it takes any object with the model's ``score_images``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._numbers import is_whole, whole_number
from .networks import check_image_size

# Tiles per network batch when scoring tiled images: about the memory of predict at batch 16.
TILE_BATCH = 16


def _check_tile(tile, overlap) -> None:
    for name, value in (("tile", tile), ("overlap", overlap)):
        whole_number(value, name)
    if not tile > overlap >= 0:
        raise ValueError(f"tiles need tile > overlap >= 0, got tile={tile}, overlap={overlap}")


def check_tile(tile, overlap, height: int, width: int) -> None:
    """TypeError/ValueError naming the values unless ``tile`` and ``overlap`` are ints with
    ``tile > overlap >= 0``, the tile is an image the networks take (>= 256 px) and it fits
    in a ``height`` x ``width`` image."""
    _check_tile(tile, overlap)
    try:
        check_image_size(tile, tile)
    except ValueError as exc:
        raise ValueError(f"tile={tile} is too small: {exc}") from None
    if tile > height or tile > width:
        raise ValueError(f"tile={tile} does not fit in a {height}x{width} image: choose a tile <= {min(height, width)}")


def _starts(length: int, tile: int, step: int) -> list[int]:
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:  # the last tile flush with the border
        starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(top, left) of each ``tile`` x ``tile`` tile covering a ``height`` x ``width`` image,
    row by row: a tile every ``tile - overlap`` pixels, and a last row and column flush with
    the bottom and right borders (they overlap their neighbour by ``overlap`` or more).
    Every pixel is covered and every tile lies inside the image. ValueError unless
    ``tile > overlap >= 0`` and the tile fits in the image."""
    _check_tile(tile, overlap)
    if tile > height or tile > width:
        raise ValueError(f"tile={tile} does not fit in a {height}x{width} image: choose a tile <= {min(height, width)}")
    step = tile - overlap
    return [(top, left) for top in _starts(height, tile, step) for left in _starts(width, tile, step)]


def _ramp(tile: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """1-D weights of a tile: 1, rising over the first ``overlap`` pixels when ``rise`` (a
    neighbour before it) and falling over the last ``overlap`` when ``fall`` (one after it)."""
    w = torch.ones(tile)
    if overlap:
        up = (torch.arange(overlap) + 0.5) / overlap
        if rise:
            w[:overlap] = torch.minimum(w[:overlap], up)
        if fall:
            w[-overlap:] = torch.minimum(w[-overlap:], up.flip(0))
    return w


def blend_weights(positions: list[tuple[int, int]], height: int, width: int, tile: int, overlap: int) -> torch.Tensor:
    """(T, 1, tile, tile) weights of the tiles at ``positions`` (see the module docstring):
    separable linear ramps over ``overlap`` pixels at the edges shared with another tile."""
    weights = []
    for top, left in positions:
        wy = _ramp(tile, overlap, rise=top > 0, fall=top + tile < height)
        wx = _ramp(tile, overlap, rise=left > 0, fall=left + tile < width)
        weights.append(wy[:, None] * wx[None, :])
    return torch.stack(weights).unsqueeze(1)


def stitch(
    tile_maps: torch.Tensor, positions: list[tuple[int, int]], height: int, width: int, overlap: int
) -> torch.Tensor:
    """One (C, height, width) map from the (T, C, tile, tile) maps of the tiles at
    ``positions``: the weighted mean of :func:`blend_weights` where tiles overlap."""
    if tile_maps.dim() != 4 or tile_maps.shape[2] != tile_maps.shape[3] or tile_maps.shape[0] != len(positions):
        raise ValueError(
            f"tile_maps must be (T, C, tile, tile) with T = {len(positions)} positions, "
            f"got shape {tuple(tile_maps.shape)}"
        )
    tile = tile_maps.shape[2]
    weights = blend_weights(positions, height, width, tile, overlap).to(tile_maps.device, torch.float32)
    total = torch.zeros(tile_maps.shape[1], height, width, device=tile_maps.device)
    weight_sum = torch.zeros(1, height, width, device=tile_maps.device)
    for (top, left), m, w in zip(positions, tile_maps.float(), weights):
        total[:, top : top + tile, left : left + tile] += w * m
        weight_sum[:, top : top + tile, left : left + tile] += w
    return total / weight_sum  # every pixel has a tile, every weight is > 0


def cut_tiles(images: torch.Tensor, tile: int, overlap: int = 0) -> torch.Tensor:
    """(N * T, C, tile, tile): the tiles of :func:`tile_grid` of every image of an (N, C, H, W)
    batch, image by image (what training on tiles trains and calibrates on)."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    positions = tile_grid(images.shape[2], images.shape[3], tile, overlap)
    return torch.stack(
        [images[i, :, top : top + tile, left : left + tile] for i in range(images.shape[0]) for top, left in positions]
    )


def tiled_scores(
    model,
    x: torch.Tensor,
    tile: int,
    overlap: int,
    output_size=None,
    backend: str = "fused",
    batch_size: int = TILE_BATCH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(map (N, 1, H, W), score (N,)) of an (N, 3, H, W) batch ``x`` scored in tiles: the work
    of ``model.predict(..., tile=...)``. ``x`` is as ``model.score_images`` takes it (the
    networks' device and dtype, values in [0, 1]); call it under ``torch.inference_mode()``.
    ``output_size``: resize the stitched map (bilinear) to it; None: the image size."""
    if not is_whole(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    n, _, height, width = x.shape
    check_tile(tile, overlap, height, width)
    tile, overlap = whole_number(tile, "tile"), whole_number(overlap, "overlap")  # 0-d arrays and tensors as ints
    positions = tile_grid(height, width, tile, overlap)
    crops = [(i, top, left) for i in range(n) for top, left in positions]
    tile_maps = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        batch = torch.stack([x[i, :, top : top + tile, left : left + tile] for i, top, left in chunk])
        tile_maps.append(
            model.score_images(batch.contiguous(memory_format=torch.channels_last), (tile, tile), backend)[0]
        )
    maps = torch.cat(tile_maps).float()
    count = len(positions)
    amap = torch.stack([stitch(maps[i * count : (i + 1) * count], positions, height, width, overlap) for i in range(n)])
    if output_size is not None:
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if size != (height, width):
            amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
    return amap, amap.amax(dim=(1, 2, 3))


def predict_tiled(model, images: torch.Tensor, tile: int = 256, overlap: int = 32, **predict_args):
    """``model.predict(images, tile=tile, overlap=overlap, **predict_args)``: each image cut
    into overlapping tiles, scored in batches, the maps stitched with blended overlaps and
    the score the stitched map's maximum (see the module docstring). Returns the
    :class:`~efficientad_fast.model.Prediction` ``predict`` returns."""
    return model.predict(images, tile=tile, overlap=overlap, **predict_args)


__all__ = [
    "TILE_BATCH",
    "blend_weights",
    "check_tile",
    "cut_tiles",
    "predict_tiled",
    "stitch",
    "tile_grid",
    "tiled_scores",
]
