"""Teachers: the ones that ship inside the package, reading released teacher files, and how
``EfficientAD(teacher=...)`` picks one.

``pdn_small_lite0.pt``: a PDN-S teacher (384 channels, float32 state dict with ``conv1.weight``,
... keys) distilled offline from ImageNet-pretrained EfficientNet-Lite0 features by
``efficientad-fast distill-teacher``; ``pdn_small_lite0.json`` beside it records the command,
steps, seed, images and final losses. Select it with ``teacher="distilled"``. It is not the
default: on the built-in demo dataset it measured worse than the random teacher (README,
"The teacher"). No medium teacher ships (the CPU budget allowed only the small one).

``teacher="paper"``: the authors' PDN-S / PDN-M teachers (the archive anomalib downloads),
read from the cache once ``efficientad-fast fetch-teacher`` has put them there (see
efficientad_fast.downloads); never downloaded implicitly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from .._checkpoint import load_state_dict_checked, read_checkpoint
from ..downloads import downloads_root, fetch_archive, not_cached_error, safe_extract, sha256_of
from ..networks import TEACHER_CHANNELS, make_pdn

HERE = Path(__file__).resolve().parent
# The paper's teachers (PDN-S and PDN-M distilled from WideResNet-101 by the authors), as
# anomalib 2.7.0 downloads them (its WEIGHTS_DOWNLOAD_INFO). Fetched only by fetch-teacher.
PAPER_TEACHER_URL = (
    "https://github.com/open-edge-platform/anomalib/releases/download/"
    "efficientad_pretrained_weights/efficientad_pretrained_weights.zip"
)
PAPER_TEACHER_SHA256 = "c09aeaa2b33f244b3261a5efdaeae8f8284a949470a4c5a526c61275fe62684a"
PAPER_TEACHER_ARCHIVE = "efficientad_pretrained_weights.zip"
PAPER_TEACHER_MEMBERS = {
    "small": "efficientad_pretrained_weights/pretrained_teacher_small.pth",
    "medium": "efficientad_pretrained_weights/pretrained_teacher_medium.pth",
}
PAPER_TEACHER_URL_ENV = "EFFICIENTAD_FAST_TEACHER_URL"
PAPER_TEACHER_FOLDER = "paper_teacher"  # under <cache>/downloads
OFFLINE_TEACHERS = (
    "'distilled' (the shipped ImageNet-distilled PDN-S), 'random', "
    "or a teacher file (e.g. a pretrained_teacher_small.pth you have)"
)
SHIPPED = {"small": "pdn_small_lite0.pt"}
# nn.Sequential indices of the convs in released teacher files, in conv1, conv2, ... order.
_SEQUENTIAL_CONV_INDICES = {"small": (0, 3, 6, 8), "medium": (0, 3, 6, 8, 10, 12)}


def shipped_teacher_path(model_size: str) -> Path | None:
    """The shipped distilled teacher of this size, or None when none ships."""
    name = SHIPPED.get(model_size)
    return HERE / name if name and (HERE / name).is_file() else None


def shipped_teacher_info(model_size: str = "small") -> dict | None:
    """The JSON record beside the shipped teacher (how it was made), or None."""
    path = shipped_teacher_path(model_size)
    return json.loads(path.with_suffix(".json").read_text()) if path else None


def paper_teacher_url() -> str:
    """Where fetch-teacher downloads from: ``$EFFICIENTAD_FAST_TEACHER_URL`` (a mirror) or the
    release URL. The SHA-256 check is the same either way."""
    return os.environ.get(PAPER_TEACHER_URL_ENV) or PAPER_TEACHER_URL


def fetch_paper_teacher(
    source: str | os.PathLike | None = None, sha256: str = PAPER_TEACHER_SHA256, progress: bool = True
) -> Path:
    """Download (or copy, ``source`` a file) the paper's teacher archive, verify its SHA-256,
    keep it in the cache and extract it there; returns the extracted folder. ``source``
    defaults to :func:`paper_teacher_url`. This is the only code that downloads a teacher."""
    return fetch_archive(
        source or paper_teacher_url(),
        sha256,
        PAPER_TEACHER_ARCHIVE,
        PAPER_TEACHER_FOLDER,
        what="the paper's teachers",
        progress=progress,
    )


def anomalib_teacher_archive() -> Path:
    """Where anomalib 2.x keeps the same archive: ``<platformdirs user cache>/anomalib/pre_trained``."""
    try:
        import platformdirs

        base = platformdirs.user_cache_path("anomalib")
    except ImportError:  # platformdirs' Linux answer
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anomalib"
    return base / "pre_trained" / PAPER_TEACHER_ARCHIVE


def paper_teacher_path(model_size: str = "small", sha256: str = PAPER_TEACHER_SHA256) -> Path:
    """The cached file of the paper's teacher of this size, extracting it from the cached
    archive (or from anomalib's copy, when its SHA-256 is ``sha256``) if needed. Never
    downloads: raises NotCachedError saying how to fetch it, online or offline."""
    if model_size not in PAPER_TEACHER_MEMBERS:
        raise ValueError(f"the paper's teachers are {sorted(PAPER_TEACHER_MEMBERS)}, not {model_size!r}")
    folder = downloads_root() / PAPER_TEACHER_FOLDER
    path = folder / PAPER_TEACHER_MEMBERS[model_size]
    if path.is_file():
        return path
    ours, anomalib = downloads_root() / PAPER_TEACHER_ARCHIVE, anomalib_teacher_archive()
    if ours.is_file():  # verified when fetched
        safe_extract(ours, folder)
    elif anomalib.is_file() and sha256_of(anomalib) == sha256.lower():
        safe_extract(anomalib, folder)
    if path.is_file():
        return path
    raise not_cached_error(
        f"the paper's {model_size} teacher (teacher='paper')",
        where=folder,
        url=paper_teacher_url(),
        sha256=sha256,
        env=PAPER_TEACHER_URL_ENV,
        command="fetch-teacher",
        alternatives=f"teacher {OFFLINE_TEACHERS}",
    )


_announced: set[str] = set()


def resolve_auto_teacher(model_size: str) -> str:
    """What ``teacher="auto"`` means for this size now: "paper" when the paper's teacher is in
    the cache (nothing is downloaded), else "distilled" when one ships for the size, else
    "random". A saved model keeps the weights it was trained with, whatever this says later."""
    try:
        paper_teacher_path(model_size)
        return "paper"
    except FileNotFoundError:  # NotCachedError: not fetched
        pass
    return "distilled" if shipped_teacher_path(model_size) is not None else "random"


def _announce_once(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        print(message, file=sys.stderr)


def init_teacher(pdn: nn.Module, teacher: str | os.PathLike, model_size: str, padding: bool) -> str:
    """Give ``pdn`` its weights and return where they came from.

    ``teacher``: "auto" (:func:`resolve_auto_teacher`; the choice is printed once and the
    source reads "auto: <choice>"), "random" (PyTorch's default initialization, already drawn by the caller),
    "distilled" (the shipped distilled teacher of this size), "paper" (the authors' teacher
    from the cache, see :func:`paper_teacher_path`; never downloaded here) or the path of a
    teacher file (released ``conv1..`` or ``nn.Sequential`` layouts, or one written by
    distill-teacher)."""
    if not isinstance(teacher, (str, os.PathLike)):
        raise TypeError(
            f"teacher must be 'auto', 'random', 'distilled', 'paper' or a file path, got {type(teacher).__name__}"
        )
    if teacher == "auto":
        choice = resolve_auto_teacher(model_size)
        source = init_teacher(pdn, choice, model_size, padding)
        _announce_once(f"teacher='auto' chose {source} for a {model_size} model")
        return f"auto: {source}"
    if teacher == "random":
        return "random"
    if teacher == "paper":
        path = paper_teacher_path(model_size)
        state = load_teacher(path, model_size=model_size, padding=padding).state_dict()
        source = f"paper ({path.name})"
    elif teacher == "distilled":
        shipped = shipped_teacher_path(model_size)
        if shipped is None:
            raise ValueError(
                f"no distilled {model_size} teacher ships with efficientad_fast (only small); "
                "pass teacher='random' or a teacher file"
            )
        path = shipped
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = f"distilled ({path.name})"
    else:
        path = Path(teacher)
        if not path.is_file():
            raise FileNotFoundError(f"teacher file {path} does not exist (or pass 'random', 'distilled' or 'paper')")
        state = load_teacher(path, model_size=model_size, padding=padding).state_dict()
        source = str(path)
    with torch.no_grad():
        for name, value in pdn.state_dict().items():
            if name not in state or tuple(state[name].shape) != tuple(value.shape):
                got = tuple(state[name].shape) if name in state else "missing"
                raise ValueError(f"{path}: {name} is {got}, a {model_size} teacher needs {tuple(value.shape)}")
            value.copy_(state[name])
    return source


def load_teacher(source, model_size: str | None = None, padding: bool = False) -> nn.Module:
    """A teacher PDN (384 outputs) from a released teacher file or state dict.

    Accepts keys ``conv1.weight, ...`` (optionally prefixed ``teacher.``) or ``nn.Sequential``
    indices (``0., 3., 6., 8.`` for small; ``0, 3, 6, 8, 10, 12`` for medium). The size is
    read from the keys unless given.
    """
    if isinstance(source, (str, os.PathLike)):
        # A whole pickled nn.Module would need code to be run to load; its weights do not.
        state = read_checkpoint(
            Path(source),
            True,
            refused_hint=(
                "Save the teacher's weights alone, in Python where you trust the file: "
                "torch.save(torch.load(FILE, weights_only=False).state_dict(), 'teacher.pth')"
            ),
        )
    else:
        state = source
    if not isinstance(state, dict):
        raise TypeError(f"a teacher state dict must be a dict, got {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k[len("teacher.") :] if k.startswith("teacher.") else k: v for k, v in state.items()}
    if "0.weight" in state:
        size = model_size or ("medium" if "12.weight" in state else "small")
        renamed = {}
        for conv, index in enumerate(_SEQUENTIAL_CONV_INDICES[size], start=1):
            for kind in ("weight", "bias"):
                if f"{index}.{kind}" not in state:
                    raise ValueError(f"teacher file lacks '{index}.{kind}' of a {size} PDN")
                renamed[f"conv{conv}.{kind}"] = state[f"{index}.{kind}"]
        state = renamed
    size = model_size or ("medium" if "conv6.weight" in state else "small")
    teacher = make_pdn(size, TEACHER_CHANNELS, padding)
    load_state_dict_checked(teacher, state, source=f"teacher ({size})")
    return teacher
