"""Drawing for the synthetic categories: seeded random streams, antialiased shape masks,
the structural defects (scratch, hole, stain, crack) and the lighting/noise every image gets."""

from __future__ import annotations

import math
import zlib
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_DESIGN = 256.0  # geometry below is in pixels of a 256x256 image and scales with the size


_SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down (antialiased edges)


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
    words += [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean slow noise (H, W) in about [-1, 1]: a coarse grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _shape_mask(size: int, draw: Callable[[ImageDraw.ImageDraw, float], None], blur: float = 0.0) -> np.ndarray:
    """float (H, W) coverage in [0, 1] of shapes drawn by ``draw(d, scale)`` in design units,
    supersampled for antialiased edges, optionally Gaussian-blurred (pixels)."""
    big = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    draw(ImageDraw.Draw(big), size / _DESIGN * _SUPERSAMPLE)
    small = big.resize((size, size), Image.Resampling.BOX)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(small, dtype=np.float32) / 255.0


def _blend(image: np.ndarray, alpha: np.ndarray, colour) -> None:
    a = alpha[..., None]
    image *= 1.0 - a
    image += a * np.asarray(colour, dtype=np.float32)


def _place(rng, region, extent):
    x0, y0, x1, y1 = region
    m = min(extent, (x1 - x0) / 2 - 1, (y1 - y0) / 2 - 1)
    return rng.uniform(x0 + m, x1 - m), rng.uniform(y0 + m, y1 - m)


def _scratch(image, rng, size, region, style):
    length = rng.uniform(70, 120)
    theta = rng.uniform(0, math.pi)
    cx, cy = _place(rng, region, length / 2 * 0.9)
    dx, dy = math.cos(theta) * length / 2, math.sin(theta) * length / 2
    bend = rng.uniform(-0.15, 0.15) * length
    nx, ny = -math.sin(theta) * bend, math.cos(theta) * bend
    width = rng.uniform(3.0, 4.5) * style["line_scale"]
    t = np.linspace(0, 1, 24)
    xs = (1 - t) ** 2 * (cx - dx) + 2 * (1 - t) * t * (cx + nx) + t**2 * (cx + dx)
    ys = (1 - t) ** 2 * (cy - dy) + 2 * (1 - t) * t * (cy + ny) + t**2 * (cy + dy)

    def draw(d, s):
        d.line([(x * s, y * s) for x, y in zip(xs, ys)], fill=255, width=max(1, round(width * s)), joint="curve")

    alpha = _shape_mask(size, draw, blur=0.5 * size / _DESIGN)
    colour = np.clip(image * 0.35 + 0.65 * np.asarray(style["scratch"], np.float32), 0, 1)  # bright
    a = alpha[..., None] * 0.95
    image[:] = image * (1 - a) + a * colour
    return alpha > 0.25


def _polygon(rng, cx, cy, radius, n=18, jitter=(0.75, 1.2)):
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = radius * rng.uniform(*jitter, n)
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)]


def _hole(image, rng, size, region, style):
    radius = rng.uniform(9, 15)
    cx, cy = _place(rng, region, radius * 1.5)
    rim = _polygon(rng, cx, cy, radius * 1.35, n=26, jitter=(0.85, 1.15))
    inner = _polygon(rng, cx, cy, radius)
    rim_alpha = _shape_mask(size, lambda d, s: d.polygon([(x * s, y * s) for x, y in rim], fill=255))
    hole_alpha = _shape_mask(size, lambda d, s: d.polygon([(x * s, y * s) for x, y in inner], fill=255))
    _blend(image, rim_alpha * 0.8, style["rim"])
    depth = 0.05 + 0.04 * _smooth_noise(rng, size, 24)[..., None]
    a = hole_alpha[..., None]
    image[:] = image * (1 - a) + a * depth
    return np.maximum(rim_alpha * 0.8, hole_alpha) > 0.25


def _stain(image, rng, size, region, style):
    radius = rng.uniform(18, 28)
    cx, cy = _place(rng, region, radius * 1.2)
    scale = size / _DESIGN
    radius, cx, cy = radius * scale, cx * scale, cy * scale
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    field = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(3, 6)):
        ox, oy = rng.normal(0, radius * 0.35, 2)
        sigma = radius * rng.uniform(0.35, 0.6)
        field += np.exp(-((xx - cx - ox) ** 2 + (yy - cy - oy) ** 2) / (2 * sigma**2))
    opacity = rng.uniform(0.7, 0.85)
    alpha = np.clip((field - 0.35) * 5.0, 0, 1) * opacity
    if style["stain_mode"] == "multiply":
        tint = np.asarray(style["stain"], np.float32)
        image *= 1 - alpha[..., None] * (1 - tint)
    else:
        _blend(image, alpha, style["stain"])
    return alpha > 0.25 * opacity


def _crack(image, rng, size, region, style):
    length = rng.uniform(60, 110)
    step = 3.0
    x, y = _place(rng, region, length / 2)
    theta = rng.uniform(0, 2 * math.pi)
    # start from one end so the crack stays near its centre
    x -= math.cos(theta) * length / 2
    y -= math.sin(theta) * length / 2
    points, theta = _wander(rng, x, y, theta, int(length / step), step, region)
    branches = [points]
    if rng.random() < 0.6:
        k = int(rng.integers(len(points) // 3, 2 * len(points) // 3))
        bx, by = points[k]
        btheta = theta + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
        branches.append(_wander(rng, bx, by, btheta, int(length * 0.35 / step), step, region)[0])
    width = rng.uniform(3.5, 5.0) * style["line_scale"]

    def drawer(w):
        def draw(d, s):
            for line in branches:
                d.line([(px * s, py * s) for px, py in line], fill=255, width=max(1, round(w * s)), joint="curve")

        return draw

    edge = _shape_mask(size, drawer(width + 3.0), blur=0.4 * size / _DESIGN)  # chipped, lighter edges
    core = _shape_mask(size, drawer(width), blur=0.4 * size / _DESIGN)
    a = edge[..., None] * 0.5
    image[:] = image * (1 - a) + a * np.clip(image * 0.5 + 0.45, 0, 1)
    a = core[..., None] * 0.92
    image[:] = image * (1 - a) + a * (image * 0.1)
    return edge > 0.25


def _wander(rng, x, y, theta, n_steps, step, region) -> tuple[list, float]:
    """A random walk of ``n_steps`` steps from (x, y), heading ``theta`` turning a little at
    each step, kept inside ``region``: (points, final heading)."""
    x0, y0, x1, y1 = region
    points = [(x, y)]
    for _ in range(n_steps):
        theta += rng.normal(0, 0.3)
        x = min(max(x + step * math.cos(theta), x0), x1)
        y = min(max(y + step * math.sin(theta), y0), y1)
        points.append((x, y))
    return points, theta


_STRUCTURAL = {"scratch": _scratch, "hole": _hole, "stain": _stain, "crack": _crack}


def _lighting(image: np.ndarray, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    size = image.shape[0]
    brightness = rng.uniform(0.8, 1.2)
    tint = rng.uniform(0.95, 1.05, 3).astype(np.float32)
    gx, gy = rng.uniform(-0.12, 0.12, 2)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gain = brightness * (1 + gx * ramp[None, :] + gy * ramp[:, None]) * (1 + 0.05 * _smooth_noise(rng, size, 4))
    out = image * gain[..., None] * tint
    out += noise * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(out, 0, 1)
