"""The ``fetch-teacher``, ``fetch-imagenette`` and ``fetch-backbone`` commands: verified downloads
into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._signals import Terminated
from ._common import _error, _progress_enabled


def _run_fetch(args: argparse.Namespace, fetch, cached) -> Path | None:
    """``fetch(args.source, progress=...)``, or without --from a copy ``cached()`` finds; the
    folder of the verified files, or None after printing a one-line error."""
    from ..downloads import DownloadError, NotCachedError

    try:
        folder = None
        if args.source is None:
            try:
                folder = cached()
            except NotCachedError:
                pass
        if folder is None:
            folder = fetch(args.source, progress=_progress_enabled(args))
        else:
            print(f"already in the cache (verified when fetched): {folder}")
    except (DownloadError, OSError, ValueError) as exc:
        _error(args, exc)
        return None
    except KeyboardInterrupt as stop:  # the partial file is gone already (Ctrl-C, SIGTERM or SIGHUP)
        message = f"{str(stop) or 'interrupted'}; nothing was cached"
        raise (
            Terminated(stop.signum, message) if isinstance(stop, Terminated) else KeyboardInterrupt(message)
        ) from None
    return folder


def cmd_fetch_teacher(args: argparse.Namespace) -> int:
    """Put the paper's pretrained teachers (PDN-S and PDN-M, the archive anomalib 2.7.0
    downloads) into the cache for --teacher paper, verified by SHA-256: downloaded from the
    release URL (or the mirror in $EFFICIENTAD_FAST_TEACHER_URL), or --from a copy of the
    archive (a file, e.g. on a USB stick, or a URL). Nothing else downloads a teacher."""
    from ..teachers import PAPER_TEACHER_MEMBERS, PAPER_TEACHER_SHA256, fetch_paper_teacher, paper_teacher_path

    folder = _run_fetch(args, fetch_paper_teacher, lambda: paper_teacher_path("small").parents[1])
    if folder is None:
        return 2
    for size, member in PAPER_TEACHER_MEMBERS.items():
        if (folder / member).is_file():
            print(f"{size}: {folder / member}")
    print(f"verified SHA-256 {PAPER_TEACHER_SHA256}; use --teacher paper (or EfficientAD(teacher='paper'))")
    return 0


def cmd_fetch_imagenette(args: argparse.Namespace) -> int:
    """Put Imagenette (the ImageNet subset anomalib 2.7.0 uses as the paper's penalty images,
    1.5 GB) into the cache for --penalty-images imagenette, verified by SHA-256 and safely
    extracted: downloaded from its URL (or the mirror in $EFFICIENTAD_FAST_IMAGENETTE_URL), or
    --from a copy of imagenette2.tgz (a file or a URL). Nothing else downloads it."""
    from ..data import fetch_imagenette, imagenette_folder
    from ..data.penalty import IMAGENETTE_SHA256

    folder = _run_fetch(args, fetch_imagenette, imagenette_folder)
    if folder is None:
        return 2
    print(f"Imagenette: {folder} (verified SHA-256 {IMAGENETTE_SHA256}); use --penalty-images imagenette")
    return 0


def cmd_fetch_backbone(args: argparse.Namespace) -> int:
    """Put a torchvision ImageNet backbone (resnet18 or wide_resnet50_2, for report --compare's
    PatchCore, PaDiM and FastFlow) into the cache, verified by SHA-256: downloaded from
    torchvision's URL (or the mirror folder in $EFFICIENTAD_FAST_BACKBONE_URL), or --from a copy
    of the .pth file (a file or a URL). Nothing else downloads a backbone."""
    from ..baselines.backbones import backbone_path, fetch_backbone

    def fetch(source, progress):
        return fetch_backbone(args.name, source, progress=progress)

    def cached():
        try:
            return backbone_path(args.name)
        except ValueError:  # changed since it was fetched: fetch it again
            return None

    path = _run_fetch(args, fetch, cached)
    if path is None:
        return 2
    print(f"{args.name}: {path}")
    return 0


def _add_fetch_parser(subparsers, name: str, func, help: str, what: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, description=func.__doc__)
    p.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="FILE_OR_URL",
        help=f"a copy of {what} (file path or http(s) URL) instead of the default download; "
        "verified by the same SHA-256",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=func)
    return p


def _add_fetch_teacher_parser(subparsers) -> None:
    """Register the ``fetch-teacher`` command."""
    _add_fetch_parser(
        subparsers,
        "fetch-teacher",
        cmd_fetch_teacher,
        "download (or copy --from) the paper's teachers into the cache, verified",
        "efficientad_pretrained_weights.zip",
    )


def _add_fetch_imagenette_parser(subparsers) -> None:
    """Register the ``fetch-imagenette`` command."""
    _add_fetch_parser(
        subparsers,
        "fetch-imagenette",
        cmd_fetch_imagenette,
        "download (or copy --from) Imagenette penalty images into the cache, verified",
        "imagenette2.tgz",
    )


def _add_fetch_backbone_parser(subparsers) -> None:
    """Register the ``fetch-backbone`` command."""
    from ..baselines.backbones import BACKBONES

    p = _add_fetch_parser(
        subparsers,
        "fetch-backbone",
        cmd_fetch_backbone,
        "download (or copy --from) an ImageNet backbone for report --compare into the cache, verified",
        "the backbone's torchvision .pth file",
    )
    p.add_argument("name", choices=tuple(BACKBONES), help="the backbone")
