"""EfficientAD's networks (docs/architecture.md, "The networks"): PDN-S and PDN-M patch description networks
(teacher: 384 output channels, student: 768) and the autoencoder. Layer names follow
anomalib so its state dicts load unchanged. Inputs are RGB in [0, 1]; each network
applies the ImageNet normalization itself."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._device import cpu_has_bf16_kernels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEACHER_CHANNELS = 384
MODEL_SIZES = ("small", "medium")
# The autoencoder's encoder halves the image 5 times, then applies an 8x8 conv.
MIN_IMAGE_SIZE = 256


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))``. On a CPU without autograd (inference), in float32 or bfloat16 and
    not under torch.compile or torch.export, one oneDNN call with the ReLU fused in: the same
    values (bit-identical here) without a separate ReLU pass over the activation (19 ms of a
    251 ms fp32 predict at 256 px on the Xeon of bench/results/int8_cpu_2026-12-06.md; batch 16
    fp32 3.93 -> 4.44 images/s). Traced and training code keep the plain ops."""
    if (
        x.device.type == "cpu"
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and cpu_has_bf16_kernels()))
        and conv.weight.dtype == x.dtype
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
    ):
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            conv.weight,
            conv.bias,
            list(conv.padding),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
            "relu",
            [],
            "",
        )
    return F.relu(conv(x))


class ImageNetNormalize(nn.Module):
    """(x - mean) / std with ImageNet's RGB statistics, as buffers (follow .to(device/dtype))."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PDNSmall(nn.Module):
    """PDN-S: conv4-relu-pool, conv4-relu-pool, conv3-relu, conv4. 256x256 -> 56x56 (64 with padding)."""

    def __init__(self, out_channels: int, padding: bool = False) -> None:
        super().__init__()
        p = 1 if padding else 0
        self.normalize = ImageNetNormalize()
        self.conv1 = nn.Conv2d(3, 128, kernel_size=4, padding=3 * p)
        self.conv2 = nn.Conv2d(128, 256, kernel_size=4, padding=3 * p)
        self.conv3 = nn.Conv2d(256, 256, kernel_size=3, padding=1 * p)
        self.conv4 = nn.Conv2d(256, out_channels, kernel_size=4)
        self.avgpool1 = nn.AvgPool2d(kernel_size=2, stride=2, padding=1 * p)
        self.avgpool2 = nn.AvgPool2d(kernel_size=2, stride=2, padding=1 * p)

    @property
    def last_conv(self) -> nn.Conv2d:
        return self.conv4

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to the last conv, on an ImageNet-normalized input."""
        x = self.avgpool1(conv_relu(self.conv1, x))
        x = self.avgpool2(conv_relu(self.conv2, x))
        return conv_relu(self.conv3, x)

    def forward(self, x: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        """``normalized=True`` skips the ImageNet normalization (input already normalized)."""
        return self.last_conv(self.body(x if normalized else self.normalize(x)))


class PDNMedium(nn.Module):
    """PDN-M: conv4-relu-pool, conv4-relu-pool, conv1-relu, conv3-relu, conv4-relu, conv1."""

    def __init__(self, out_channels: int, padding: bool = False) -> None:
        super().__init__()
        p = 1 if padding else 0
        self.normalize = ImageNetNormalize()
        self.conv1 = nn.Conv2d(3, 256, kernel_size=4, padding=3 * p)
        self.conv2 = nn.Conv2d(256, 512, kernel_size=4, padding=3 * p)
        self.conv3 = nn.Conv2d(512, 512, kernel_size=1)
        self.conv4 = nn.Conv2d(512, 512, kernel_size=3, padding=1 * p)
        self.conv5 = nn.Conv2d(512, out_channels, kernel_size=4)
        self.conv6 = nn.Conv2d(out_channels, out_channels, kernel_size=1)
        self.avgpool1 = nn.AvgPool2d(kernel_size=2, stride=2, padding=1 * p)
        self.avgpool2 = nn.AvgPool2d(kernel_size=2, stride=2, padding=1 * p)

    @property
    def last_conv(self) -> nn.Conv2d:
        return self.conv6

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to the last conv, on an ImageNet-normalized input."""
        x = self.avgpool1(conv_relu(self.conv1, x))
        x = self.avgpool2(conv_relu(self.conv2, x))
        x = conv_relu(self.conv3, x)
        x = conv_relu(self.conv4, x)
        return conv_relu(self.conv5, x)

    def forward(self, x: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        """``normalized=True`` skips the ImageNet normalization (input already normalized)."""
        return self.last_conv(self.body(x if normalized else self.normalize(x)))


PDN = PDNSmall | PDNMedium  # what make_pdn returns: both have conv1, last_conv, body and normalize


def make_pdn(model_size: str, out_channels: int, padding: bool = False) -> PDN:
    """A PDN-S ("small") or PDN-M ("medium") with ``out_channels`` outputs."""
    if model_size == "small":
        return PDNSmall(out_channels, padding)
    if model_size == "medium":
        return PDNMedium(out_channels, padding)
    raise ValueError(f"model_size must be one of {MODEL_SIZES}, got {model_size!r}")


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enconv1 = nn.Conv2d(3, 32, kernel_size=4, stride=2, padding=1)
        self.enconv2 = nn.Conv2d(32, 32, kernel_size=4, stride=2, padding=1)
        self.enconv3 = nn.Conv2d(32, 64, kernel_size=4, stride=2, padding=1)
        self.enconv4 = nn.Conv2d(64, 64, kernel_size=4, stride=2, padding=1)
        self.enconv5 = nn.Conv2d(64, 64, kernel_size=4, stride=2, padding=1)
        self.enconv6 = nn.Conv2d(64, 64, kernel_size=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.enconv1, self.enconv2, self.enconv3, self.enconv4, self.enconv5):
            x = conv_relu(conv, x)
        return self.enconv6(x)


class Decoder(nn.Module):
    def __init__(self, out_channels: int, padding: bool = False) -> None:
        super().__init__()
        self.padding = padding
        for i in range(1, 7):
            setattr(self, f"deconv{i}", nn.Conv2d(64, 64, kernel_size=4, padding=2))
        self.deconv7 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.deconv8 = nn.Conv2d(64, out_channels, kernel_size=3, padding=1)
        self.dropout = nn.Dropout(p=0.2)

    def resize_targets(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """The sizes the decoder resizes to before each conv (3, 8, 15, 32, 63, 127, 56 for 256)."""
        h, w = image_size
        feature = (math.ceil(h / 4), math.ceil(w / 4)) if self.padding else (math.ceil(h / 4) - 8, math.ceil(w / 4) - 8)
        return [
            (h // 64 - 1, w // 64 - 1),
            (h // 32, w // 32),
            (h // 16 - 1, w // 16 - 1),
            (h // 8, w // 8),
            (h // 4 - 1, w // 4 - 1),
            (h // 2 - 1, w // 2 - 1),
            feature,
        ]

    def forward(self, x: torch.Tensor, image_size: tuple[int, int], dropout: bool | None = None) -> torch.Tensor:
        """``dropout``: None follows ``self.training``; False is eval mode's output without
        touching the flag (threads may share the module)."""
        targets = self.resize_targets(image_size)
        drop = self.training if dropout is None else dropout
        for i, size in enumerate(targets[:6], start=1):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = F.dropout(conv_relu(getattr(self, f"deconv{i}"), x), self.dropout.p, training=drop)
        x = F.interpolate(x, size=targets[6], mode="bilinear", align_corners=False)
        x = conv_relu(self.deconv7, x)
        return self.deconv8(x)


class AutoEncoder(nn.Module):
    """EfficientAD's autoencoder: image -> 64-d code (1x1 at 256 px) -> 384-channel feature map."""

    def __init__(self, out_channels: int = TEACHER_CHANNELS, padding: bool = False) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.encoder = Encoder()
        self.decoder = Decoder(out_channels, padding)

    def forward(self, x: torch.Tensor, normalized: bool = False, dropout: bool | None = None) -> torch.Tensor:
        image_size = (x.shape[-2], x.shape[-1])
        if not normalized:
            x = self.normalize(x)
        return self.decoder(self.encoder(x), image_size, dropout)


def feature_size(image_size: tuple[int, int], padding: bool = False) -> tuple[int, int]:
    """Feature-map size of the PDNs (and the autoencoder) for an image size."""
    h, w = image_size
    if padding:
        return math.ceil(h / 4), math.ceil(w / 4)
    return math.ceil(h / 4) - 8, math.ceil(w / 4) - 8


def check_image_size(height: int, width: int) -> None:
    """Raise ValueError when the networks cannot take an image of this size."""
    if height < MIN_IMAGE_SIZE or width < MIN_IMAGE_SIZE:
        raise ValueError(
            f"EfficientAD needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels "
            f"(the autoencoder's encoder reduces 256 px to 1x1), got {height}x{width}"
        )
