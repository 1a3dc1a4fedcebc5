"""The models EfficientAD is compared with (issue 26): PatchCore, PaDiM and FastFlow from
anomalib, and the ImageNet backbones they stand on (:mod:`.backbones`: fetched only when asked,
verified, cached)."""

from __future__ import annotations

from .backbones import BACKBONES, Backbone, backbone_path, fetch_backbone

__all__ = ["BACKBONES", "Backbone", "backbone_path", "fetch_backbone"]
