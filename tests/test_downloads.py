"""Verified downloads (efficientad_fast.downloads), the paper's teachers (teacher="paper",
fetch-teacher) and Imagenette penalty images (fetch-imagenette), with no network: a local
HTTP server on 127.0.0.1 serves archives the tests build, and every test has an empty cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import efficientad_fast.teachers as teachers
from efficientad_fast import EfficientAD, load
from efficientad_fast.cli import main
from efficientad_fast.data import fetch_imagenette, imagenette_folder, make_synthetic, penalty_image_set
from efficientad_fast.data.penalty import IMAGENETTE_SHA256, IMAGENETTE_URL, GenericImages
from efficientad_fast.downloads import (
    DownloadError,
    NotCachedError,
    UnsafeArchiveError,
    downloads_root,
    fetch_verified,
    safe_extract,
    sha256_of,
)
from efficientad_fast.networks import TEACHER_CHANNELS, make_pdn
from efficientad_fast.teachers import (
    PAPER_TEACHER_MEMBERS,
    PAPER_TEACHER_SHA256,
    PAPER_TEACHER_URL,
    fetch_paper_teacher,
    paper_teacher_path,
    resolve_auto_teacher,
)

SMALL_MEMBER = PAPER_TEACHER_MEMBERS["small"]


# --------------------------------------------------------------------------- fixtures


class _Handler(BaseHTTPRequestHandler):
    """GET /<name>: the bytes in ``server.files[name]``; names starting with ``cut`` announce
    the full length, send half and close the connection; /loop redirects to itself."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        if name == "loop":  # a redirect to itself
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name.startswith("cut") else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    """A local HTTP server in a daemon thread; stopped when the module's tests are done."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """An empty efficientad_fast cache, an empty anomalib cache (XDG_CACHE_HOME) and no mirrors."""
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("EFFICIENTAD_FAST_TEACHER_URL", raising=False)
    monkeypatch.delenv("EFFICIENTAD_FAST_IMAGENETTE_URL", raising=False)
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def no_network(monkeypatch, server):
    """Any request that is not to the local server fails the test."""
    import urllib.request

    real = urllib.request.urlopen

    def local_only(request, *args, **kwargs):
        url = request.full_url if hasattr(request, "full_url") else request
        assert url.lower().startswith(server.url), f"network access to {url}"  # schemes: any case
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def teacher_archive(tmp_path_factory):
    """A zip laid out like the paper's archive, holding a seeded random PDN-S teacher
    (``conv1..`` keys): (path, SHA-256, state dict)."""
    torch.manual_seed(123)
    state = make_pdn("small", TEACHER_CHANNELS, False).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = _zip_bytes({SMALL_MEMBER: buffer.getvalue()})
    path = tmp_path_factory.mktemp("archives") / "efficientad_pretrained_weights.zip"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), state


@pytest.fixture(scope="module")
def imagenette_archive(tmp_path_factory):
    """A .tgz laid out like imagenette2 with 6 small colour images: (path, SHA-256)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for i in range(6):
            image = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(image, "PNG")
            info = tarfile.TarInfo(f"imagenette2/{('train', 'val')[i % 2]}/n0{i % 3}/img{i}.png")
            info.size = len(image.getvalue())
            tf.addfile(info, io.BytesIO(image.getvalue()))
    path = tmp_path_factory.mktemp("archives") / "imagenette2.tgz"
    path.write_bytes(buffer.getvalue())
    return path, hashlib.sha256(buffer.getvalue()).hexdigest()


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------- fetch_verified


def test_download_into_empty_cache_with_progress(server, teacher_archive, capsys):
    path, sha, state = teacher_archive
    server.files["weights.zip"] = path.read_bytes()
    folder = fetch_paper_teacher(f"{server.url}/weights.zip", sha256=sha)
    assert "the paper's teachers" in capsys.readouterr().err  # the byte progress bar
    assert (downloads_root() / "efficientad_pretrained_weights.zip").read_bytes() == path.read_bytes()
    assert paper_teacher_path("small", sha) == folder / SMALL_MEMBER
    loaded = torch.load(folder / SMALL_MEMBER, weights_only=True)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not [p for p in _files_under(downloads_root()) if p.name.endswith(".part")]


def test_cut_connection_leaves_no_partial_file(server, teacher_archive, empty_cache):
    path, sha, _ = teacher_archive
    server.files["cut.zip"] = path.read_bytes()
    with pytest.raises(DownloadError, match=r"cut.zip.*(cut after \d+ of \d+ bytes|failed after \d+ bytes)"):
        fetch_paper_teacher(f"{server.url}/cut.zip", sha256=sha, progress=False)
    assert _files_under(empty_cache) == []
    with pytest.raises(NotCachedError):
        paper_teacher_path("small", sha)


def test_hash_mismatch_is_rejected_and_nothing_cached(teacher_archive, empty_cache):
    path, sha, _ = teacher_archive
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=f"SHA-256 {sha}.*expected {wrong}; nothing was cached"):
        fetch_verified(path, wrong, downloads_root() / "x.zip", what="test", progress=False)
    assert _files_under(empty_cache) == []


def test_unreachable_server_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match=r"missing.zip failed after 0 bytes \(HTTPError"):
        fetch_verified(f"{server.url}/missing.zip", "0" * 64, tmp_path / "x.zip", what="test", progress=False)
    assert _files_under(tmp_path) == []


def test_url_schemes_are_case_insensitive(server, tmp_path):
    """The eighth probe (F34): HTTP://host/... was "unsupported URL scheme"."""
    with pytest.raises(DownloadError, match=r"missing.zip failed after 0 bytes \(HTTPError"):
        fetch_verified(f"{server.url.upper()}/missing.zip", "0" * 64, tmp_path / "x.zip", what="test", progress=False)


def test_a_password_in_the_url_is_refused_and_never_printed(server, tmp_path):
    """The seventh probe: user:pw@host failed as "Name or service not known", echoing the password."""
    url, asked = server.url.replace("http://", "http://user:secret@") + "/x.zip", len(server.requests)
    with pytest.raises(DownloadError, match=r"http://\*\*\*@127.0.0.1:\d+/x.zip: a user name or password") as info:
        fetch_verified(url, "0" * 64, tmp_path / "x.zip", what="test", progress=False)
    assert "secret" not in str(info.value) and len(server.requests) == asked
    assert _files_under(tmp_path) == []


def test_from_file_function_and_cli(teacher_archive, empty_cache, monkeypatch, capsys):
    path, sha, _ = teacher_archive
    # The public command checks the real SHA-256: a test archive is refused, nothing cached.
    assert main(["fetch-teacher", "--from", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and PAPER_TEACHER_SHA256 in err and sha in err
    assert _files_under(empty_cache) == []
    # The same command, checking this archive's hash, verifies and caches it.
    monkeypatch.setattr(teachers, "fetch_paper_teacher", partial(fetch_paper_teacher, sha256=sha))
    assert main(["fetch-teacher", "--from", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"small: {downloads_root() / 'paper_teacher' / SMALL_MEMBER}" in out
    assert paper_teacher_path("small", sha).is_file()
    # Without --from, a cached copy is reported and nothing is fetched.
    assert main(["fetch-teacher", "--quiet"]) == 0
    assert "already in the cache" in capsys.readouterr().out


def test_teacher_mirror_env_var_is_used(server, teacher_archive, monkeypatch):
    path, sha, _ = teacher_archive
    server.files["mirror/weights.zip"] = path.read_bytes()
    monkeypatch.setenv("EFFICIENTAD_FAST_TEACHER_URL", f"{server.url}/mirror/weights.zip")
    assert teachers.paper_teacher_url() == f"{server.url}/mirror/weights.zip"
    fetch_paper_teacher(sha256=sha, progress=False)
    assert server.requests[-1] == "mirror/weights.zip"
    assert paper_teacher_path("small", sha).is_file()


def test_anomalib_copy_is_reused_when_its_hash_matches(teacher_archive, tmp_path):
    path, sha, _ = teacher_archive
    theirs = tmp_path / "xdg" / "anomalib" / "pre_trained" / "efficientad_pretrained_weights.zip"
    assert teachers.anomalib_teacher_archive() == theirs
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(path.read_bytes())
    with pytest.raises(NotCachedError):
        paper_teacher_path("small", "1" * 64)  # another file than expected: not used
    assert paper_teacher_path("small", sha).is_file()


# --------------------------------------------------------------------------- safe_extract


def _tar_with(tmp_path: Path, info: tarfile.TarInfo) -> Path:
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("inside/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _tar_member("../evil.txt"),
        _tar_member("/tmp/evil.txt"),
        _tar_member("inside/../../evil.txt"),
        _tar_member("inside/link", tarfile.SYMTYPE, "../../outside"),
        _tar_member("inside/link", tarfile.SYMTYPE, "/etc/passwd"),
        _tar_member("inside/hard", tarfile.LNKTYPE, "../outside"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink-up", "symlink-absolute", "hardlink-up"],
)
def test_tar_member_escaping_the_folder_is_refused(tmp_path, member):
    archive = _tar_with(tmp_path, member)
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        safe_extract(archive, tmp_path / "out" / "target")
    assert _files_under(tmp_path / "out") == [] and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/evil.txt", "a/../../evil.txt", "C:/evil.txt"])
def test_zip_member_escaping_the_folder_is_refused(tmp_path, name):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_bytes({"inside/ok.txt": b"ok", name: b"x"}))
    with pytest.raises(UnsafeArchiveError, match=f"member {name!r}"):
        safe_extract(archive, tmp_path / "out" / "target")
    assert _files_under(tmp_path / "out") == []


def test_safe_extract_replaces_the_target_when_complete(tmp_path):
    archive = tmp_path / "good.zip"
    archive.write_bytes(_zip_bytes({"a/b.txt": b"new", "a/link-free.txt": b"ok"}))
    target = tmp_path / "target"
    (target / "a").mkdir(parents=True)
    (target / "a" / "stale.txt").write_text("old")
    assert safe_extract(archive, target) == target
    assert sorted(p.name for p in _files_under(target)) == ["b.txt", "link-free.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- offline


def test_paper_teacher_not_cached_fails_at_once_and_says_how(capsys):
    with pytest.raises(NotCachedError) as error:
        EfficientAD(teacher="paper")
    message = str(error.value)
    for needed in (
        PAPER_TEACHER_URL,
        PAPER_TEACHER_SHA256,
        "fetch-teacher --from FILE",
        "EFFICIENTAD_FAST_TEACHER_URL",
        "'distilled'",
        "'random'",
        "teacher file",
    ):
        assert needed in message, needed
    # The commands stop before reading any data (the dataset folder does not exist).
    assert (
        main(
            [
                "train",
                "--data",
                "/no/such/data",
                "--dataset",
                "mvtec",
                "--out",
                "/no/such/out",
                "--teacher",
                "paper",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "fetch-teacher --from FILE" in err


def test_imagenette_not_cached_fails_at_once_and_says_how(capsys):
    with pytest.raises(NotCachedError) as error:
        penalty_image_set("imagenette", (64, 64))
    for needed in (
        IMAGENETTE_URL,
        IMAGENETTE_SHA256,
        "fetch-imagenette --from FILE",
        "EFFICIENTAD_FAST_IMAGENETTE_URL",
        "--penalty-images DIR",
    ):
        assert needed in str(error.value), needed
    assert (
        main(
            [
                "train",
                "--data",
                "/no/such/data",
                "--dataset",
                "mvtec",
                "--out",
                "/no/such/out",
                "--penalty-images",
                "imagenette",
                "--quiet",
            ]
        )
        == 2
    )
    assert "fetch-imagenette --from FILE" in capsys.readouterr().err


# --------------------------------------------------------------------------- constants


@pytest.fixture(scope="module")
def anomalib_efficient_ad():
    """anomalib's EfficientAd module (imported once: ~20 s)."""
    return pytest.importorskip("anomalib.models.image.efficient_ad.lightning_model")


def test_constants_equal_anomalibs(anomalib_efficient_ad):
    weights, imagenette = anomalib_efficient_ad.WEIGHTS_DOWNLOAD_INFO, anomalib_efficient_ad.IMAGENETTE_DOWNLOAD_INFO
    assert (weights.url, weights.hashsum) == (PAPER_TEACHER_URL, PAPER_TEACHER_SHA256)
    assert weights.url.rsplit("/", 1)[1] == teachers.PAPER_TEACHER_ARCHIVE
    assert (imagenette.url, imagenette.hashsum) == (IMAGENETTE_URL, IMAGENETTE_SHA256)


# --------------------------------------------------------------------------- teacher="paper" and Imagenette in use


def test_imagenette_mirror_fetch_and_grayscale(server, imagenette_archive, monkeypatch):
    path, sha = imagenette_archive
    server.files["nette.tgz"] = path.read_bytes()
    monkeypatch.setenv("EFFICIENTAD_FAST_IMAGENETTE_URL", f"{server.url}/nette.tgz")
    folder = fetch_imagenette(sha256=sha, progress=False)
    assert server.requests[-1] == "nette.tgz" and folder == imagenette_folder()
    assert not (downloads_root() / "imagenette2.tgz").exists()  # removed once extracted
    images = penalty_image_set("imagenette", (16, 16), seed=3)
    assert len(images) == 6 and images.grayscale_p == 0.3
    for i in range(len(images)):
        x = images[i]
        assert x.shape == (3, 16, 16)
        gray = bool(torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]))
        assert gray == images.is_grayscale(i) and torch.equal(x, images[i])
    assert [images.is_grayscale(i) for i in range(200)].count(True) in range(40, 81)  # p = 0.3
    # Folders keep their colour (unchanged behaviour).
    plain = penalty_image_set([str(folder)], (16, 16))
    assert type(plain) is GenericImages and plain.grayscale_p == 0


@pytest.mark.usefixtures("op_library")
def test_paper_teacher_trains_saves_and_reloads(teacher_archive, imagenette_archive, tmp_path):
    path, sha, state = teacher_archive
    fetch_paper_teacher(path, sha256=sha, progress=False)
    fetch_imagenette(imagenette_archive[0], sha256=imagenette_archive[1], progress=False)
    model = EfficientAD(teacher="paper")
    assert model.teacher_source == "paper (pretrained_teacher_small.pth)"
    assert all(torch.equal(model.teacher.state_dict()[k], state[k]) for k in state)

    from efficientad_fast.jobs import train_category
    from efficientad_fast.train import TrainConfig

    data = make_synthetic(
        tmp_path / "data",
        seed=1,
        categories=("board",),
        n_train=4,
        n_test_good=1,
        n_test_defect_per_type=1,
        defects=("hole",),
    )
    config = TrainConfig(steps=1, workers=0, progress=False, checkpoint_every=0)
    trained, summary = train_category(
        data, "mvtec_ad", "board", tmp_path / "run", config=config, teacher="paper", penalty_images="imagenette"
    )
    assert summary["teacher"] == "paper (pretrained_teacher_small.pth)" and summary["penalty_images"] == 6
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["teacher"] == summary["teacher"]
    reloaded = load(tmp_path / "run" / "model.pt")
    assert all(torch.equal(reloaded.teacher.state_dict()[k], state[k]) for k in state)


@pytest.mark.parametrize("command", ["fetch-teacher", "fetch-imagenette"])
def test_fetch_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--from FILE_OR_URL" in out and "SHA-256" in out


# --------------------------------------------------------------------------- teacher="auto"


def test_auto_teacher_in_each_cache_state(teacher_archive, capsys, monkeypatch):
    monkeypatch.setattr(teachers, "_announced", set())
    path, sha, state = teacher_archive
    # Nothing cached: the shipped distilled teacher where one ships (small), else random.
    assert resolve_auto_teacher("small") == "distilled"
    assert resolve_auto_teacher("medium") == "random"
    small = EfficientAD(teacher="auto")
    assert small.teacher_source == "auto: distilled (pdn_small_lite0.pt)"
    assert "teacher='auto' chose distilled (pdn_small_lite0.pt)" in capsys.readouterr().err
    EfficientAD(teacher="auto")
    assert "chose" not in capsys.readouterr().err  # printed once per process
    # The paper's teacher cached: auto takes it, without any download.
    fetch_paper_teacher(path, sha256=sha, progress=False)
    assert resolve_auto_teacher("small") == "paper"
    model = EfficientAD(teacher="auto")
    assert model.teacher_source == "auto: paper (pretrained_teacher_small.pth)"
    assert all(torch.equal(model.teacher.state_dict()[k], state[k]) for k in state)


def test_auto_model_reloads_with_its_teacher_whatever_the_cache_says(teacher_archive, tmp_path):
    model = EfficientAD(teacher="auto")  # nothing cached: the distilled teacher
    model.save(tmp_path / "m.pt")
    path, sha, _ = teacher_archive
    fetch_paper_teacher(path, sha256=sha, progress=False)  # auto would now choose the paper's
    loaded = load(tmp_path / "m.pt")
    assert loaded.teacher_source == "auto: distilled (pdn_small_lite0.pt)"
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.teacher.state_dict().values(), model.teacher.state_dict().values())
    )


# --------------------------------------------------------------------------- penalty images "bundled" / "auto"


def test_bundled_penalty_images_are_generic_photos_and_procedural(capsys):
    from efficientad_fast.data.generic_images import BUILTIN_PHOTOS, photo_images
    from efficientad_fast.data.penalty import BUNDLED_PROCEDURAL, TensorImages

    images = penalty_image_set("bundled", (32, 48), seed=1)
    assert isinstance(images, TensorImages)
    assert len(images) == len(photo_images(BUILTIN_PHOTOS)) + BUNDLED_PROCEDURAL  # no held-out texture
    for i in (0, len(images) - 1):
        x = images[i]
        assert x.shape == (3, 32, 48) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    again = penalty_image_set("bundled", (32, 48), seed=1)
    assert torch.equal(images[len(images) - 1], again[len(images) - 1])  # seeded
    with pytest.raises(ValueError, match="cannot be mixed"):
        penalty_image_set(["bundled", "/some/folder"], (32, 32))


def test_auto_penalty_images_in_each_cache_state(imagenette_archive, capsys):
    from efficientad_fast.data.penalty import TensorImages

    assert isinstance(penalty_image_set("auto", (16, 16)), TensorImages)
    assert "Imagenette is not cached" in capsys.readouterr().err
    fetch_imagenette(imagenette_archive[0], sha256=imagenette_archive[1], progress=False)
    images = penalty_image_set("auto", (16, 16), seed=2)
    assert type(images) is GenericImages and images.grayscale_p == 0.3 and len(images) == 6
    assert "Imagenette from" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "report"])
def test_penalty_keyword_mixed_with_a_folder_is_one_error_line(command, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        command,
        "--data",
        str(tmp_path),
        "--dataset",
        "mvtec",
        "--out",
        str(out),
        "--penalty-images",
        "bundled",
        str(tmp_path),
    ]
    assert main(args + (["--category", "board"] if command == "train" else [])) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "cannot be mixed" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.usefixtures("op_library")
def test_report_defaults_are_auto_and_record_what_they_chose(teacher_archive, imagenette_archive, tmp_path):
    data = make_synthetic(
        tmp_path / "data",
        seed=1,
        categories=("board",),
        n_train=4,
        n_test_good=1,
        n_test_defect_per_type=1,
        defects=("hole",),
    )
    common = [
        "--data",
        str(data),
        "--dataset",
        "mvtec",
        "--steps",
        "1",
        "--latency-batches",
        "--latency-runs",
        "1",
        "--workers",
        "0",
        "--quiet",
    ]
    # Nothing cached: the shipped distilled teacher and the bundled generic images.
    assert main(["report", *common, "--out", str(tmp_path / "empty")]) == 0
    row = json.loads((tmp_path / "empty" / "report.json").read_text())["rows"][0]
    assert (row["teacher"], row["error"]) == ("auto", None)
    assert row["teacher_used"] == "auto: distilled (pdn_small_lite0.pt)" and row["penalty_used"] == "auto: bundled"
    summary = json.loads((tmp_path / "empty" / "board" / "train_summary.json").read_text())
    assert summary["teacher"] == row["teacher_used"] and summary["penalty_source"] == "auto: bundled"
    assert (
        "Used: teacher auto: distilled (pdn_small_lite0.pt); penalty images auto: bundled."
        in (tmp_path / "empty" / "report.md").read_text()
    )
    # Both cached: the paper's teacher and Imagenette, without a download.
    fetch_paper_teacher(teacher_archive[0], sha256=teacher_archive[1], progress=False)
    fetch_imagenette(imagenette_archive[0], sha256=imagenette_archive[1], progress=False)
    assert main(["report", *common, "--out", str(tmp_path / "cached")]) == 0
    row = json.loads((tmp_path / "cached" / "report.json").read_text())["rows"][0]
    assert row["teacher_used"] == "auto: paper (pretrained_teacher_small.pth)"
    assert row["penalty_used"] == "auto: imagenette"
    # "none" trains without the penalty loss.
    assert (
        main(["report", *common, "--out", str(tmp_path / "none"), "--teacher", "random", "--penalty-images", "none"])
        == 0
    )
    row = json.loads((tmp_path / "none" / "report.json").read_text())["rows"][0]
    assert (row["teacher_used"], row["penalty_used"]) == ("random", "none")


def test_a_redirect_loop_is_one_line(server, capsys):
    from efficientad_fast.cli import main

    assert main(["fetch-teacher", "--from", f"{server.url}/loop", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "infinite loop" in err and "nothing was cached" in err, err


def test_a_full_cache_disk_names_where_it_could_not_write(tmp_path, monkeypatch):
    import errno

    from efficientad_fast import downloads

    source = tmp_path / "teacher.bin"
    source.write_bytes(b"x" * 4096)

    def full(stream, out, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(downloads, "_copy_hashing", full)
    dest = tmp_path / "cache" / "teachers" / "t.bin"
    with pytest.raises(downloads.DownloadError, match=r"no space left writing .*t\.bin .*EFFICIENTAD_FAST_CACHE"):
        downloads.fetch_verified(source, "0" * 64, dest, what="teacher", progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


# --------------------------------------------------------------------------- fetch-backbone


@pytest.fixture
def fake_backbones(monkeypatch, server):
    """Two backbones served by the local server: one known by its whole SHA-256, one by the
    8-hex prefix of it (as torchvision's file names carry)."""
    import hashlib

    from efficientad_fast.baselines import backbones

    whole, prefixed = b"whole backbone weights" * 100, b"prefixed backbone weights" * 100
    server.files.update({"whole-1.pth": whole, "prefixed-2.pth": prefixed})
    registry = {
        "whole": backbones.Backbone("whole", "whole-1.pth", hashlib.sha256(whole).hexdigest()),
        "prefixed": backbones.Backbone("prefixed", "prefixed-2.pth", hashlib.sha256(prefixed).hexdigest()[:8]),
    }
    monkeypatch.setattr(backbones, "BACKBONES", registry)
    monkeypatch.setenv(backbones.BACKBONE_URL_ENV, server.url)
    return registry


def test_fetch_backbone_downloads_verifies_and_finds_it_cached(fake_backbones, server, capsys):
    from efficientad_fast.baselines.backbones import backbone_path, fetch_backbone

    with pytest.raises(NotCachedError, match="fetch-backbone whole"):
        backbone_path("whole")
    path = fetch_backbone("whole", progress=False)
    assert backbone_path("whole") == path and path.read_bytes() == server.files["whole-1.pth"]
    asked = len(server.requests)

    assert main(["fetch-backbone", "whole", "--quiet"]) == 0  # cached: nothing downloaded
    assert "already in the cache" in capsys.readouterr().out and len(server.requests) == asked


def test_fetch_backbone_refuses_other_bytes_and_caches_nothing(fake_backbones, server, capsys):
    server.files["other.pth"] = b"not the weights"
    assert main(["fetch-backbone", "whole", "--from", f"{server.url}/other.pth", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the expected file" in err and "nothing was cached" in err
    assert not list((Path(os.environ["EFFICIENTAD_FAST_CACHE"]) / "downloads" / "backbones").glob("*"))


def test_a_prefix_known_backbone_records_its_whole_digest_and_refuses_a_changed_copy(fake_backbones, server):
    from efficientad_fast.baselines.backbones import backbone_path, fetch_backbone

    path = fetch_backbone("prefixed", progress=False)
    assert path.with_name(path.name + ".sha256").read_text().strip() == sha256_of(path)
    assert backbone_path("prefixed") == path
    path.write_bytes(b"changed in the cache")
    with pytest.raises(ValueError, match="not the file that was fetched"):
        backbone_path("prefixed")
    assert main(["fetch-backbone", "prefixed", "--quiet"]) == 0  # fetched again
    assert backbone_path("prefixed").read_bytes() == server.files["prefixed-2.pth"]


def test_the_real_registry_names_torchvision_files_by_their_digest_prefix():
    from efficientad_fast.baselines.backbones import BACKBONES, backbone_url

    for name, backbone in BACKBONES.items():
        assert backbone.file.startswith(name + "-") and backbone.file.endswith(".pth")
        assert backbone.sha256.startswith(backbone.file[len(name) + 1 : -4])  # the name's 8 hex
        assert backbone_url(name).startswith(("https://download.pytorch.org/models/", "http://127.0.0.1"))
