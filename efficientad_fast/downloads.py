"""Fetching files that must be exactly what we expect: the one home for downloads.

Nothing here runs on its own: only the ``fetch-teacher`` / ``fetch-imagenette`` commands (and
the functions they call) download. Every file is written to a temporary file beside its
destination, checked against its SHA-256 and renamed only when the hash matches; a hash
mismatch, a cut connection or any other failure deletes the partial file and raises
:class:`DownloadError` saying what happened. Archives are extracted by :func:`safe_extract`,
which refuses members that would land outside the target folder.

Cache layout (``cache_root()`` honours ``EFFICIENTAD_FAST_CACHE``, default
``~/.cache/efficientad_fast``)::

    <cache>/downloads/efficientad_pretrained_weights.zip      the paper's teachers (verified archive)
    <cache>/downloads/paper_teacher/efficientad_pretrained_weights/pretrained_teacher_{small,medium}.pth
    <cache>/downloads/imagenette/imagenette2/{train,val}/...   Imagenette (its archive is removed once extracted)
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from .op._build import cache_folder, cache_root

CHUNK = 1 << 20
TIMEOUT_S = 60.0
# A download that brings fewer bytes than this per second, averaged over TIMEOUT_S, is
# abandoned: a server that drips a byte every few seconds never trips the socket timeout.
MIN_RATE_BYTES_S = 1024
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


class DownloadError(RuntimeError):
    """A fetch failed: unreachable source, cut connection or SHA-256 mismatch. Nothing was cached."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the folder it is extracted into."""


class NotCachedError(FileNotFoundError):
    """A file efficientad_fast only fetches when asked is not in the cache."""


def downloads_root() -> Path:
    """``<cache>/downloads``: verified downloads and what was extracted from them."""
    return cache_root() / "downloads"


def is_url(source: str | os.PathLike) -> bool:
    return isinstance(source, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) is not None


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shown_source(source: str | os.PathLike) -> str:
    """``source`` as messages show it: a URL's user name and password replaced by ``***``."""
    if not (isinstance(source, str) and is_url(source)):
        return os.fspath(source)
    parts = urllib.parse.urlsplit(source)
    if "@" not in parts.netloc:
        return source
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _open_source(source: str | os.PathLike, timeout: float):
    """(readable stream, expected length or None) for a URL or a local file."""
    if isinstance(source, str) and is_url(source):
        if source[:7].lower() == "file://":
            return _open_source(urllib.request.url2pathname(source[len("file://") :]), timeout)
        if not source.lower().startswith(("http://", "https://")):  # schemes are case-insensitive
            raise ValueError(f"unsupported URL scheme in {shown_source(source)} (http://, https:// or a file path)")
        if "@" in urllib.parse.urlsplit(source).netloc:  # urllib would take user:password@host for a host name
            raise ValueError(
                f"{shown_source(source)}: a user name or password in the URL is not sent; download the "
                "file with a tool that can log in, then pass its path"
            )
        request = urllib.request.Request(source, headers={"User-Agent": "efficientad-fast"})
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked above)
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else None
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    return open(path, "rb"), path.stat().st_size


def _copy_hashing(
    stream, out, total: int | None, what: str, progress: bool, received: list, window_s: float, deadline: float | None
) -> str:
    """Copy ``stream`` to ``out`` in chunks; returns the SHA-256. ``received[0]`` counts bytes.
    DownloadError when fewer than MIN_RATE_BYTES_S came on average over the last ``window_s``
    seconds, or past ``deadline`` (a ``time.monotonic()`` value)."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    # read1 returns what has arrived (an HTTP response's read(n) waits for all n bytes, so a
    # slow drip would never come back to the checks below).
    read = getattr(stream, "read1", stream.read)
    window_start, window_bytes = time.monotonic(), 0
    with tqdm(
        total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, dynamic_ncols=True
    ) as bar:
        for chunk in iter(lambda: read(CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            received[0] += len(chunk)
            bar.update(len(chunk))
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise DownloadError(
                    f"{what}: not finished by the deadline ({received[0]} bytes received); nothing was cached"
                )
            if now - window_start >= window_s:
                rate = (received[0] - window_bytes) / (now - window_start)
                if rate < MIN_RATE_BYTES_S:
                    raise DownloadError(
                        f"{what}: the download slowed to {rate:.0f} bytes/s over the last "
                        f"{now - window_start:.0f} s (after {received[0]} bytes; under "
                        f"{MIN_RATE_BYTES_S} bytes/s counts as stalled); nothing was cached, "
                        "try again or use --from with a copy"
                    )
                window_start, window_bytes = now, received[0]
    return digest.hexdigest()


def fetch_verified(
    source: str | os.PathLike,
    sha256: str,
    dest: str | os.PathLike,
    *,
    what: str,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
    deadline_s: float | None = None,
    prefix_only: bool = False,
) -> Path:
    """Download (http/https URL) or copy (local path) ``source`` to ``dest``, verified.

    Written to a temporary file beside ``dest`` with a byte progress bar, renamed to ``dest``
    only when its SHA-256 equals ``sha256`` (``prefix_only``: starts with it, at least 8 hex
    digits, for files known only by the digest prefix in their name). On a mismatch, a cut connection (fewer bytes than
    the server announced, a socket error, a ``timeout``-second stall or fewer than
    MIN_RATE_BYTES_S bytes/s over ``timeout`` seconds, ``deadline_s`` seconds passed) or any
    other error (Ctrl-C included) the partial file is deleted and :class:`DownloadError`
    names the source, the hashes and the bytes received. Returns ``dest``."""
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    shown = shown_source(source)  # a password in the URL is never printed
    dest = Path(dest)
    cache_folder(dest.parent)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp, received, done = Path(tmp_name), [0], False
    try:
        with os.fdopen(handle, "wb") as out:
            stream, total = _open_source(source, timeout)
            with stream:
                got = _copy_hashing(stream, out, total, what, progress, received, timeout, deadline)
        if total is not None and received[0] < total:
            raise DownloadError(
                f"{what}: the connection to {shown} was cut after {received[0]} of {total} "
                "bytes; nothing was cached, run the command again"
            )
        matches = got.startswith(sha256.lower()) and len(sha256) >= 8 if prefix_only else got == sha256.lower()
        if not matches:
            raise DownloadError(
                f"{what}: {shown} is not the expected file: SHA-256 {got} ({received[0]} bytes), "
                f"expected {sha256}; nothing was cached"
            )
        os.replace(tmp, dest)
        done = True
    except DownloadError:
        raise
    except Exception as exc:  # URLError, timeouts, resets, http.client.IncompleteRead, disk full, ...
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # our disk, not the source
            raise DownloadError(
                f"{what}: no space left writing {dest} after {received[0]} bytes of {shown} (free "
                "some space there, or set EFFICIENTAD_FAST_CACHE to a larger disk); nothing was cached"
            ) from exc
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line (urllib's redirect loop has three)
        raise DownloadError(
            f"{what}: fetching {shown} failed after {received[0]} bytes ({detail}); nothing was cached"
        ) from exc
    finally:
        if not done:
            tmp.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------- extraction


def _escapes(name: str) -> bool:
    """True when the archive path ``name`` is absolute or climbs above its folder."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return True
    normal = posixpath.normpath(name)
    return normal == ".." or normal.startswith("../")


def _link_escapes(member: str, link: str, hard: bool) -> bool:
    """A symlink's target is relative to the member's folder, a hard link's to the archive root."""
    if _escapes(link):
        return True
    return _escapes(link if hard else posixpath.join(posixpath.dirname(member.replace("\\", "/")), link))


def _check_members(archive: Path, target: Path, members: list[tuple[str, str | None, bool, bool]]) -> None:
    """``members``: (name, link target or None, is a hard link, is a special file)."""
    for name, link, hard, special in members:
        reason = None
        if _escapes(name):
            reason = "has an absolute path or '..'"
        elif link is not None and _link_escapes(name, link, hard):
            reason = f"is a {'hard link' if hard else 'symlink'} to {link!r}"
        elif special:
            reason = "is a device or FIFO"
        if reason:
            raise UnsafeArchiveError(
                f"{archive}: refusing to extract it: member {name!r} {reason}, which would reach outside {target}"
            )


def _extract_zip(archive: Path, target: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = []
        for info in zf.infolist():
            link = zf.read(info).decode("utf-8", "replace") if stat.S_ISLNK(info.external_attr >> 16) else None
            members.append((info.filename, link, False, False))
        _check_members(archive, target, members)
        zf.extractall(into)


def _extract_tar(archive: Path, target: Path, into: Path) -> None:
    with tarfile.open(archive) as tf:
        members = [
            (m.name, m.linkname if m.issym() or m.islnk() else None, m.islnk(), m.ischr() or m.isblk() or m.isfifo())
            for m in tf.getmembers()
        ]
        _check_members(archive, target, members)
        if hasattr(tarfile, "data_filter"):
            tf.extractall(into, filter="data")
        else:  # Python without extraction filters: the members were checked above
            tf.extractall(into)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a .zip, .tar, .tar.gz or .tgz ``archive`` so that it becomes the folder ``target``.

    Every member is checked first: an absolute path, a ``..`` that climbs out, a symlink or
    hard link pointing outside, or a device file raises :class:`UnsafeArchiveError` and
    nothing is written. Extraction goes to a temporary folder beside ``target`` that replaces
    ``target`` only when complete. Returns ``target``."""
    archive, target = Path(archive), Path(target)
    name = archive.name.lower()
    if not name.endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"{archive}: not an archive this can extract ({', '.join(ARCHIVE_SUFFIXES)})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        (_extract_zip if name.endswith(".zip") else _extract_tar)(archive, target, tmp)
        old = None
        if target.exists():
            old = target.with_name(f"{tmp.name}.old")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        raise ValueError(f"{archive}: cannot read the archive: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- cached archives


def fetch_archive(
    source: str | os.PathLike,
    sha256: str,
    archive_name: str,
    folder: str,
    *,
    what: str,
    keep_archive: bool = True,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch ``source`` verified as ``<downloads>/<archive_name>`` and extract it safely into
    ``<downloads>/<folder>`` (returned). Without ``keep_archive`` the archive is deleted
    once extracted (large data sets)."""
    archive = fetch_verified(
        source, sha256, downloads_root() / archive_name, what=what, progress=progress, timeout=timeout
    )
    target = safe_extract(archive, downloads_root() / folder)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return target


def not_cached_error(
    what: str, *, where: Path, url: str, sha256: str, env: str, command: str, alternatives: str
) -> NotCachedError:
    """The error for a file that is not cached: how to fetch it online and offline, and what
    works without it. Nothing is downloaded implicitly."""
    return NotCachedError(
        f"{what} is not in the cache ({where}); efficientad_fast downloads only when asked. "
        f"Fetch it once with `efficientad-fast {command}` (downloads {url}, or the mirror in ${env}); "
        f"offline, bring a copy of that file and run `efficientad-fast {command} --from FILE` "
        f"(it must have SHA-256 {sha256}). Offline alternatives: {alternatives}."
    )
