"""ImageNet backbones for the comparison models (PatchCore, PaDiM, FastFlow), kept in the cache
like the paper's teacher: ``efficientad-fast fetch-backbone NAME`` downloads torchvision's
published weight file (or copies ``--from`` a file or URL), checks its SHA-256 and keeps it under
``<cache>/downloads/backbones/``; nothing else downloads one (anomalib would, at run time).

torchvision names its files ``<arch>-<first 8 hex of the SHA-256>.pth``. Where the whole digest
is recorded here (from an independent copy of the file), the whole digest is checked; where it
is not, the file must match the 8-hex prefix of its name (what torchvision itself checks) and
the whole digest it had is written beside it, so later reads compare against that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..downloads import DownloadError, downloads_root, fetch_verified, not_cached_error, sha256_of

BACKBONE_FOLDER = "backbones"  # under <cache>/downloads
BACKBONE_URL_ENV = "EFFICIENTAD_FAST_BACKBONE_URL"  # a mirror: a folder URL holding the same file names
TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class Backbone:
    """A torchvision ImageNet weight file: its file name and the SHA-256 it must have (the
    whole digest, or the 8-hex prefix torchvision's name carries)."""

    name: str
    file: str
    sha256: str

    @property
    def whole_digest(self) -> bool:
        return len(self.sha256) == 64


BACKBONES = {
    b.name: b
    for b in (
        # The whole digest of resnet18-f37072fd.pth as published copies record it.
        Backbone(
            "resnet18", "resnet18-f37072fd.pth", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"
        ),
        Backbone("wide_resnet50_2", "wide_resnet50_2-95faca4d.pth", "95faca4d"),
    )
}


def _backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"backbones are {sorted(BACKBONES)}, not {name!r}")
    return BACKBONES[name]


def backbone_url(name: str) -> str:
    """Where fetch-backbone downloads ``name`` from: ``$EFFICIENTAD_FAST_BACKBONE_URL`` (a mirror
    folder) or torchvision's; the SHA-256 check is the same either way."""
    base = os.environ.get(BACKBONE_URL_ENV) or TORCHVISION_URL
    return base.rstrip("/") + "/" + _backbone(name).file


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def backbone_path(name: str) -> Path:
    """The cached, verified weight file of backbone ``name``. Never downloads: NotCachedError
    says how to fetch it (online or offline) when it is not there; ValueError when the cached
    file changed since it was fetched."""
    backbone = _backbone(name)
    path = downloads_root() / BACKBONE_FOLDER / backbone.file
    if not path.is_file():
        raise not_cached_error(
            f"the ImageNet {name} backbone",
            where=path.parent,
            url=backbone_url(name),
            sha256=backbone.sha256 if backbone.whole_digest else f"{backbone.sha256}... (the prefix in its name)",
            env=BACKBONE_URL_ENV,
            command=f"fetch-backbone {name}",
            alternatives="PatchCore and PaDiM run on the EfficientNet-Lite0 ImageNet weights of the [distill] extra",
        )
    recorded = _digest_file(path)
    expected = backbone.sha256 if backbone.whole_digest else recorded.read_text().strip() if recorded.is_file() else ""
    if len(expected) != 64 or sha256_of(path) != expected:
        raise ValueError(
            f"{path}: the cached {name} backbone is not the file that was fetched (SHA-256 differs "
            f"or its record is missing); fetch it again with efficientad-fast fetch-backbone {name}"
        )
    return path


def fetch_backbone(name: str, source: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Download (or copy, ``source`` a file or URL) backbone ``name``'s torchvision weight file
    into the cache, verified by its SHA-256 (see the module docstring); returns its path. The
    only code that downloads a backbone."""
    backbone = _backbone(name)
    dest = downloads_root() / BACKBONE_FOLDER / backbone.file
    fetch_verified(
        source or backbone_url(name),
        backbone.sha256,
        dest,
        what=f"the {name} backbone",
        progress=progress,
        prefix_only=not backbone.whole_digest,
    )
    if not backbone.whole_digest:  # what later reads check against
        from .._checkpoint import atomic_write_text

        try:
            atomic_write_text(_digest_file(dest), sha256_of(dest) + "\n")
        except BaseException:
            dest.unlink(missing_ok=True)  # a file without its record would be refused later
            raise
    return dest


__all__ = ["BACKBONES", "Backbone", "DownloadError", "backbone_path", "backbone_url", "fetch_backbone"]
