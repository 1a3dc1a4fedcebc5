"""Files of weights and state: make sure an output folder can be written before any work,
read a PyTorch checkpoint with errors a user can act on, write one atomically (never a half
file), load a state dict with checked keys and shapes, and say which settings differ between
a saved run and the one asked for."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


def _anomalib_safe_globals() -> list:
    """Types anomalib declares safe in its checkpoints (the model-size enum), when installed."""
    try:
        with warnings.catch_warnings():  # its imports warn about deprecations that are not the user's
            warnings.simplefilter("ignore")
            from anomalib.models import EfficientAd

        return list(EfficientAd.checkpoint_safe_globals())
    except Exception:  # anomalib absent or changed: load without them
        return []


def writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) and write and remove a probe file in it: a folder
    that cannot be written fails now, with its path, not after hours of work. Returns it."""
    folder = Path(folder)
    probe = folder / f".efficientad_fast_probe_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:  # read-only, not a folder, a file in the way, full disk, ...
        raise PermissionError(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from exc
    return folder


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """As :func:`writable_folder`, but a folder that does not exist yet is not made: the
    nearest existing folder above it must be writable (so a command refused later leaves no
    empty folder behind). Returns ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        return writable_folder(folder)
    ancestor = folder
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PermissionError(f"cannot write to the output folder {folder}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to the output folder {folder}: {ancestor} is not writable")
    return folder


def replace_folder(new: Path, root: Path) -> None:
    """Rename the finished folder ``new`` to ``root``, moving an existing ``root`` aside first
    (an empty one is just removed) and deleting it after."""
    if root.exists():
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        else:
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, trash / root.name)
            shutil.rmtree(trash, ignore_errors=True)
    os.replace(new, root)


_SPECIAL_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists (links followed) but is not a regular file: "a folder",
    "a FIFO (named pipe)", a device, a socket; None for a regular file or a missing path.
    Opening a FIFO or a device blocks or reads forever, so callers refuse these up front."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), None if stat.S_ISREG(mode) else "a special file")


def require_file(path: str | os.PathLike, missing: str, prefix: str = "") -> Path:
    """``path`` as a Path when it is a regular file (links followed); FileNotFoundError with the
    message ``missing`` when nothing is there, ValueError saying what it is otherwise (after
    ``prefix``, such as the option's name)."""
    kind = special_kind(path)
    if kind is not None:
        raise ValueError(f"{prefix}{path} is {kind}, not a regular file")
    if not os.path.isfile(path):
        raise FileNotFoundError(missing)
    return Path(path)


def refuse_non_file_target(path: str | os.PathLike, what: str = "") -> None:
    """A file about to be written at ``path`` (after ``what``, such as "--out ") would replace
    what is there: refuse a folder (IsADirectoryError) and a FIFO, device or socket (ValueError;
    a rename over /dev/full turns the device into a plain file), before any work."""
    refuse_link_into_missing_folder(path, what)
    kind = special_kind(path)
    if kind == "a folder":
        raise IsADirectoryError(f"{what}{path} is a folder: give the path of the file to write")
    if kind is not None:
        raise ValueError(f"{what}{path} is {kind}, not a regular file: give the path of the file to write")


def refuse_link_into_missing_folder(path: str | os.PathLike, what: str = "") -> None:
    """A symbolic link at ``path`` is written where it points: when that folder does not exist,
    FileNotFoundError naming the link, its target and the folder (the writers named their
    temporary file, or said only "No such file or directory": the ninth probe's E26, W46)."""
    if os.path.islink(path):
        target = Path(os.path.realpath(path))
        if not target.parent.is_dir():
            raise FileNotFoundError(
                f"{what}{path} is a link to {target}, whose folder {target.parent} does not exist: "
                "make that folder or name another file"
            )


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: torch.load's run over many lines (one of them
    'WeightsUnpickler error: ...'), which would read as several errors of the command line.
    For torch.load's weights-only refusal, its reason, not its preamble (whose advice,
    ``weights_only=False`` "will likely succeed", is wrong for a damaged file and unsafe)."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        return f"the weights-only reader refused it: {reason or 'no reason given'}"
    return (text.splitlines() or [type(exc).__name__])[0]


def describe_start(path: Path) -> str:
    """What ``path`` looks like from its first bytes, for an error message: PyTorch files are
    zip archives (or, from before 1.6, pickles), so a text file or an image says so here."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not head:
        return "it is empty"
    if head.startswith(b"PK"):
        return "a zip archive"
    if head[:1] == b"\x80":
        return "a pickle"
    if all(32 <= b < 127 or b in b"\r\n\t" for b in head):
        return f"it is text starting {head.decode('ascii')!r}"
    return f"it starts with bytes {head[:8]!r}, where a PyTorch file starts with a zip header"


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_checkpoint(
    path: Path,
    weights_only: bool = True,
    refused_hint: str = "A checkpoint efficientad_fast wrote holds weights and plain values only: this file is "
    "damaged or was written by other code.",
) -> dict:
    """``torch.load`` of ``path`` on the CPU; FileNotFoundError or ValueError that say why not.
    ``refused_hint`` ends the message when the file holds Python objects (code) that a
    weights-only load refuses: what the caller's user can do about it."""
    path = require_file(path, f"no checkpoint at {path}")
    try:
        if not weights_only:
            return torch.load(path, map_location="cpu", weights_only=False)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # Lightning checkpoints of anomalib hold its model-size enum: allow anomalib's
            # safe types (importing anomalib takes seconds, so only when they are needed).
            refused = _REFUSED_GLOBAL.search(str(exc))
            safe = _anomalib_safe_globals() if refused and refused.group(1).startswith("anomalib.") else []
            if not safe:
                raise
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused or "Weights only load failed" in str(exc):
            what = f"Python objects ({refused.group(1)})" if refused else "Python objects"
            raise ValueError(
                f"{path}: holds {what}, not only weights; a weights-only load refuses them "
                f"because unpickling them could run code. {refused_hint}"
            ) from exc
        raise ValueError(f"{path}: not a PyTorch checkpoint ({describe_start(path)})") from exc
    except Exception as exc:  # truncated zip, text file, ...: torch raises many kinds
        raise ValueError(
            f"{path}: cannot read it as a PyTorch checkpoint (truncated or corrupt? "
            f"{describe_start(path)}): {type(exc).__name__}: {first_line(exc)}"
        ) from exc


def atomic_save(payload, path: str | os.PathLike) -> Path:
    """``torch.save`` of ``payload`` to ``path`` whole or not at all (:func:`atomic_files`: a
    temporary file beside it, renamed; a full disk says so; any earlier file stays)."""
    path = Path(path)
    with atomic_files(path) as (temporary,):
        torch.save(payload, temporary)
    return path


# How C++ writers say a write failed (libstdc++ streams, torch's zip writer).
_WRITE_FAILED = re.compile(r"iostream error|unexpected pos|file write failed|No space left", re.IGNORECASE)


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:  # cannot be asked
        return None


def _disk_is_full(folder: Path, temps: list[Path], free_before: int | None, needs_bytes: int | None) -> bool:
    """The write that failed filled the disk: less than 1 MiB is free where ``folder`` lives,
    or the half-written ``temps`` took all but 2 MiB of what was free when writing began
    (a writer's last chunk may not fit in what is left), or less was free than the writer
    said it ``needs_bytes`` (OpenVINO removes its half files before it raises)."""
    free = _free_bytes(folder)
    if free is None:
        return False
    written = sum(t.stat().st_size for t in temps if t.is_file())
    if free_before is not None and needs_bytes is not None and free_before < needs_bytes:
        return True
    return free < 2**20 or (free_before is not None and written >= free_before - 2 * 2**20)


def remove_stale_temporaries(folder: Path, stems: tuple[str, ...] | None) -> list[Path]:
    """Remove the temporary files of ``stems`` (``STEM.tmpPID.SUFFIX``, as :func:`atomic_files`
    and predict name them; no other file is touched; None: of any stem, in a folder only this
    package writes) in ``folder`` left by a process that no longer runs (killed by SIGKILL or
    a power cut, which no handler sees); says so on stderr and returns them. Those of
    running processes stay."""
    removed = []
    for stem in stems if stems is not None else [None]:
        pattern = r"[^/]+" if stem is None else re.escape(stem)
        for path in Path(folder).glob("*.tmp*" if stem is None else f"{stem}.tmp*"):
            match = re.fullmatch(rf"{pattern}\.tmp(\d+)\.[^.]+", path.name)
            if match is None or not path.is_file() or _process_runs(int(match.group(1))):
                continue
            path.unlink(missing_ok=True)
            print(f"removed {path}, left by an earlier run that was killed", file=sys.stderr)
            removed.append(path)
    return removed


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # no process has such a number
        return False
    return True


def _temporary_name(path: Path, index: int) -> Path:
    """A temporary path beside ``path`` with its suffix; short when the target's name is near
    the file system's 255-byte limit (a name that fits must not fail for its temporary)."""
    name = f"{path.stem}.tmp{os.getpid()}{path.suffix}"
    if len(os.fsencode(name)) > 255:
        name = f".efficientad_fast.tmp{os.getpid()}.{index}{path.suffix}"
    return path.with_name(name)


def save_figure(figure, path: str | os.PathLike, dpi: int) -> Path:
    """A matplotlib figure saved whole at ``path`` (format from its suffix), then closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_files(path) as (temporary,):
            figure.savefig(temporary, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``path`` holds ``text`` (UTF-8) whole, or keeps what it held: a temporary file, renamed."""
    path = Path(path)
    with atomic_files(path) as (temporary,):
        temporary.write_text(text, encoding="utf-8")
    return path


@contextmanager
def atomic_files(*paths: str | os.PathLike, needs_bytes: int | None = None) -> Iterator[list[Path]]:
    """Write several files whole or not at all: yields one temporary path beside each of
    ``paths`` (same folder and suffix, so writers that go by the suffix still work); when the
    block ends without error, renames each over its target (in reverse order, so the first
    path, e.g. an IR's ``.xml``, appears last, after the files it refers to); on any failure,
    Ctrl-C included, removes the temporary files and leaves the targets as they were. A
    target that is a folder, FIFO or device is refused on entry, before any work; a full disk says so
    (``needs_bytes``: about how much the files take, when the writer knows, so that a writer
    that cleans up before it fails is still read right). A target that is a symbolic link is
    written where the link points (the link stays; a rename would replace the link itself:
    the eighth probe turned /dev/stdout into a plain file)."""
    shown = " and ".join(str(p) for p in paths)  # an IR's .bin is the file a full disk usually cuts
    targets = [Path(os.path.realpath(p)) for p in paths]
    for path, given in zip(targets, paths):
        refuse_link_into_missing_folder(given)
        refuse_non_file_target(path, f"{given} -> " if os.path.islink(given) else "")  # not for a relative name
    temps = [_temporary_name(p, i) for i, p in enumerate(targets)]
    free_before = _free_bytes(targets[0].parent)
    try:
        yield temps
        missing = [str(t) for t in temps if not t.is_file()]
        if missing:
            raise OSError(f"the writer did not create {', '.join(missing)}")
        for temp, target in reversed(list(zip(temps, targets))):
            os.replace(temp, target)
    except BaseException as exc:
        # Writers in C++ (OpenVINO, torch) report a short write as RuntimeError: ask the file
        # system while their half files are still there.
        full = isinstance(exc, RuntimeError) and _disk_is_full(targets[0].parent, temps, free_before, needs_bytes)
        for temp in temps:
            temp.unlink(missing_ok=True)
        if isinstance(exc, RuntimeError) and not full and _WRITE_FAILED.search(str(exc)):
            free = shutil.disk_usage(targets[0].parent).free / 2**20
            raise OSError(
                errno.EIO,
                f"cannot write {shown}: {first_line(exc)} ({free:.0f} MiB are free "
                "there now: a full disk?); any earlier file there is unchanged",
            ) from exc
        if full or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            raise OSError(
                errno.ENOSPC,
                f"no space left writing {shown} (free some space and write again; any earlier file there is unchanged)",
            ) from exc
        raise


def state_checksum(state_dict: dict) -> str:
    """SHA-256 (hex) of a state dict's tensors: their names, dtypes, shapes and bytes, in
    key order. Non-tensor entries (extra state) are left out."""
    digest = hashlib.sha256()
    for key, value in state_dict.items():
        if not torch.is_tensor(value):
            continue
        flat = value.detach().cpu().clone(memory_format=torch.contiguous_format).reshape(-1)
        digest.update(f"{key}\0{flat.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy().data)  # view: bfloat16 has no numpy dtype
    return digest.hexdigest()


def payload_checksum(payload: dict) -> str:
    """SHA-256 (hex) of everything in a model file but its ``checksum`` entry: every tensor's
    name, dtype, shape and bytes and every other value (format version, config, thresholds,
    flags, teacher source, INT8 calibration), walked in sorted key order. A changed byte
    anywhere that ``load`` reads changes it."""
    digest = hashlib.sha256()

    def walk(name: str, value) -> None:
        if torch.is_tensor(value):
            # A fresh dense copy: a tensor's stored strides need not be the standard ones.
            flat = value.detach().cpu().clone(memory_format=torch.contiguous_format).reshape(-1)
            digest.update(f"T{name}\0{flat.dtype}\0{tuple(value.shape)}\0".encode())
            digest.update(flat.view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            digest.update(f"D{name}\0{len(value)}\0".encode())
            for key in sorted(value, key=str):
                walk(f"{name}/{key}", value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{name}\0{len(value)}\0".encode())
            for i, item in enumerate(value):
                walk(f"{name}/{i}", item)
        else:  # repr: exact for floats; the type name tells True from 1
            digest.update(f"V{name}\0{type(value).__name__}\0{value!r}\0".encode())

    walk("", {k: v for k, v in payload.items() if k != "checksum"})
    return digest.hexdigest()


def refuse_previous_run(checkpoint: Path, result: Path) -> None:
    """FileExistsError when another run's ``checkpoint`` or ``result`` is there: a new run
    would replace an interrupted run's checkpoint at its first save, or a finished run's
    result. Callers skip this for ``--resume`` and ``--overwrite``."""
    if checkpoint.exists():
        raise FileExistsError(
            f"{checkpoint} is there from another run: continue it with --resume, "
            "start afresh with --overwrite, or choose another --out"
        )
    if result.exists():  # a finished run whose checkpoint was removed: nothing to resume
        raise FileExistsError(
            f"{result} is there from another run (and no checkpoint to resume): start afresh with --overwrite, "
            "or choose another --out"
        )


def check_checkpoint_checksum(state: dict, path: Path, what: str, remedy: str, known: Iterable[str]) -> None:
    """ValueError when a checkpoint's bytes changed since it was written (its ``checksum``
    entry is :func:`payload_checksum` of the rest) or it holds an entry not in ``known`` (a
    flipped bit in the name ``checksum`` would otherwise pass for a checkpoint from before
    checksums); one from before checkpoints carried a checksum resumes with a warning.
    ``what``: the kind of checkpoint, for the messages; ``remedy``: what the user can do
    about a corrupt one."""
    unknown = sorted(set(state) - set(known) - {"checksum"}, key=str)
    if unknown:
        raise ValueError(
            f"{path}: corrupt: unknown entries {', '.join(map(repr, unknown))} (the {what} changed since it "
            f"was written, or other code wrote it); {remedy}"
        )
    if "checksum" not in state:
        warnings.warn(
            f"{path}: {what} without a checksum (older efficientad_fast); corruption cannot be detected", stacklevel=3
        )
        return
    try:
        same = state["checksum"] == payload_checksum(state)
    except (RuntimeError, TypeError, ValueError):  # a tensor torch cannot even view
        same = False
    if not same:
        raise ValueError(f"{path}: corrupt: checksum mismatch (the {what} changed since it was written); {remedy}")


def load_state_dict_checked(model: nn.Module, state_dict: dict, source: str) -> None:
    """load_state_dict with errors that name the source, the key and both shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match an EfficientAD {getattr(model, 'model_size', '')} model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, value in expected.items():
        if torch.is_tensor(value) and not torch.is_tensor(state_dict[key]):
            raise ValueError(f"{source}: {key} is a {type(state_dict[key]).__name__}, not a tensor")
        if torch.is_tensor(value) and tuple(state_dict[key].shape) != tuple(value.shape):
            raise ValueError(f"{source}: {key} has shape {tuple(state_dict[key].shape)}, expected {tuple(value.shape)}")
        if torch.is_tensor(value) and not _same_kind(state_dict[key], value):
            # load_state_dict would cast: integer or bool weights truncated, complex ones halved
            got = state_dict[key]
            raise ValueError(
                f"{source}: {key} is a {got.dtype} {got.layout} tensor, expected {value.dtype} "
                f"{value.layout}: the file is corrupt or not written by efficientad_fast"
            )
    model.load_state_dict(state_dict)


def _same_kind(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """A tensor that loads into ``expected`` without losing its meaning: dense, and real
    floating point where floats are expected (any float precision), else the same dtype."""
    if got.layout != torch.strided:
        return False
    if expected.is_floating_point():
        return got.is_floating_point() and not got.is_complex()
    return got.dtype == expected.dtype


def config_diff(saved: dict, wanted: dict, ignore=()) -> dict:
    """{key: (saved, wanted)} for the settings a resumed run would change. Keys in ``ignore``
    (progress bars, worker counts, ...) may differ; tuples and lists compare equal."""

    def plain(value):
        return list(value) if isinstance(value, (tuple, list)) else value

    keys = [k for k in saved if k not in ignore]
    return {k: (saved[k], wanted.get(k)) for k in keys if plain(saved[k]) != plain(wanted.get(k))}
