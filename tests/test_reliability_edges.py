"""Reliability at the edges (issue 24's "Poor" list): a full disk (a real one, a small tmpfs,
when running as root), interrupted and stalled downloads, SIGTERM, files that are not what
their name says, watch's early checks and its alarm pictures, export's opset, an unwritable
cache and numbers of NumPy or tensor type. Each ends in one clear line (exit 2, 130 or 143)
with nothing half-made."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import one_error_line, train_args
from PIL import Image

from efficientad_fast.cli import main
from efficientad_fast.testing import random_model

pytestmark = pytest.mark.usefixtures("op_library")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9))
    model.set_thresholds(image=0.25, pixel=0.1, source="test")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A folder of three 64 px images (frames or images to score)."""
    folder = tmp_path_factory.mktemp("frames")
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 60 * i, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MiB tmpfs filled to the last byte (root only: mount needs it), unmounted after."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount, which needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    """Write until the file system says it is full (ENOSPC)."""
    try:
        with open(disk / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass


# -- a full disk -------------------------------------------------------------------------------


def test_saving_a_model_to_a_full_disk_says_so_and_keeps_nothing(full_disk):
    model = random_model("small", seed=0)
    with pytest.raises(OSError, match=f"no space left writing {full_disk / 'model.pt'}"):
        model.save(full_disk / "model.pt")  # 32 MB on a 4 MiB disk: torch's zip writer fails
    assert sorted(p.name for p in full_disk.iterdir()) == []


def test_train_onto_a_full_disk_is_one_line(full_disk, tiny_board, capsys):
    data = tiny_board
    out = full_disk / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--dataset",
        "mvtec",
        "--category",
        "board",
        "--out",
        str(out),
        "--steps",
        "2",
        "--teacher",
        "random",
        "--penalty-images",
        "none",
        "--workers",
        "0",
        "--quiet",
    ]
    assert main(args) == 2
    line = one_error_line("train", capsys.readouterr().err)
    assert "no space left writing" in line and "[Errno" not in line
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_predict_onto_a_full_disk_keeps_the_previous_scores(full_disk, model_file, frames, capsys):
    out = full_disk / "out"
    args = ["predict", "--model", str(model_file), str(frames), "--out", str(out), "--quiet", "--precision", "fp32"]
    assert main([*args, "--no-heatmaps"]) == 0
    before = (out / "scores.csv").read_bytes()
    fill(full_disk)
    assert main(args) == 2  # heatmaps and rows no longer fit
    one_error_line("predict", capsys.readouterr().err)
    assert (out / "scores.csv").read_bytes() == before
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_onnx_export_onto_a_full_disk_leaves_nothing(full_disk, model_file, capsys):
    pytest.importorskip("onnx")
    out = full_disk / "m.onnx"
    assert main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(out)]) == 2
    assert "no space left" in one_error_line("export", capsys.readouterr().err)
    assert list(full_disk.iterdir()) == []


# -- files that are not what they say --------------------------------------------------------


def test_a_text_file_as_the_model_says_what_it_is(tmp_path, frames, capsys):
    text = tmp_path / "model.pt"
    text.write_text("hello, not a model\n")
    assert main(["predict", "--model", str(text), str(frames), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    line = one_error_line("predict", capsys.readouterr().err)
    assert "not an efficientad_fast model file (it is text starting 'hello, not a mod')" in line
    png = tmp_path / "image.pt"
    png.write_bytes((frames / "000.png").read_bytes())
    assert main(["predict", "--model", str(png), str(frames), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "starts with bytes b'\\x89PNG" in one_error_line("predict", capsys.readouterr().err)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_model_or_checkpoint_that_is_no_regular_file_says_what_it_is(kind, tmp_path, frames, tiny_board, capsys):
    """The sixth probe: a FIFO, a folder or /dev/zero as --model read "no model file at ...";
    a FIFO must also never be opened (it would wait for a writer forever)."""
    path = {"device": Path("/dev/zero")}.get(kind, tmp_path / "model.pt")
    words = {"fifo": "is a FIFO (named pipe), not a regular file", "folder": "is a folder, not a regular file"}
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    assert main(["predict", "--model", str(path), str(frames), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    line = one_error_line("predict", capsys.readouterr().err)
    assert f"--model: {path} " + words.get(kind, "is a character device, not a regular file") in line
    from efficientad_fast import load

    with pytest.raises(ValueError, match="not a regular file"):
        load(path)
    if kind != "device":
        run = tmp_path / "run"
        run.mkdir()
        path.rename(run / "checkpoint.pt")
        assert main([*train_args(tiny_board, run), "--resume"]) == 2
        assert "resume: " in one_error_line("train", capsys.readouterr().err)


def test_a_pickled_teacher_module_says_how_to_save_its_weights(tmp_path, recwarn):
    from efficientad_fast import teachers

    module = tmp_path / "teacher_module.pt"
    torch.save(teachers.make_pdn("small", 384, False), module)  # the whole nn.Module: code, not weights
    with pytest.raises(ValueError) as info:
        teachers.load_teacher(module)
    message = str(info.value)
    assert "holds Python objects (efficientad_fast.networks.PDNSmall)" in message
    assert "state_dict()" in message and "weights_only=False." not in message
    assert not [w for w in recwarn if "anomalib" in str(w.filename) or "timm" in str(w.filename)]


def _predict_beside_one_bad_file(tmp_path, model_file, frames, name: str, make) -> list[dict]:
    """predict on a folder holding a good image and ``name`` (made by ``make(path)``): the good
    image alone is scored and ``name`` alone is an errors.csv row; returns the errors.csv rows."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes((frames / "001.png").read_bytes())
    make(folder / name)
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_file), str(folder), "--out", str(out), "--quiet", "--no-heatmaps"]
    assert main([*args, "--precision", "fp32"]) == 0
    assert [r["path"] for r in csv.DictReader(open(out / "scores.csv"))] == [str(folder / "good.png")]
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert [r["path"] for r in errors] == [str(folder / name)]
    return errors


def _float_image_with(value: float):
    """A maker for _predict_beside_one_bad_file: a grey float TIFF with one pixel ``value``."""

    def make(path: Path) -> None:
        pixels = np.full((64, 64), 0.5, np.float32)
        pixels[3, 3] = value
        Image.fromarray(pixels, mode="F").save(path)

    return make


def test_a_dangling_image_link_is_an_errors_row(tmp_path, model_file, frames, capsys):
    errors = _predict_beside_one_bad_file(
        tmp_path, model_file, frames, "gone.png", lambda path: path.symlink_to(tmp_path / "deleted.png")
    )
    assert "is a link to" in errors[0]["error"] and "does not exist" in errors[0]["error"]


def test_a_fifo_among_the_images_is_an_errors_row_never_opened(tmp_path, model_file, frames, capsys):
    """The sixth probe: a FIFO named like an image was skipped without an errors.csv row;
    named directly it read "no such image or folder"."""
    errors = _predict_beside_one_bad_file(tmp_path, model_file, frames, "pipe.png", os.mkfifo)
    assert "it is a FIFO (named pipe), not a regular file" in errors[0]["error"]
    fifo = tmp_path / "images" / "pipe.png"
    assert main(["predict", "--model", str(model_file), str(fifo), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert f"{fifo} is a FIFO (named pipe): name an image file" in one_error_line("predict", capsys.readouterr().err)


# -- watch -------------------------------------------------------------------------------------


WATCH = ["watch", "--model", "{model}", "--quiet", "--precision", "fp32"]


@pytest.mark.parametrize(
    "case",
    [
        "not-a-video",
        "fps-nan",
        "fps-negative",
        "save-video-unwritable",
        "save-video-folder",
        "save-video-no-codec",
        "save-video-link-into-missing-folder",
    ],
)
def test_watch_refuses_before_it_writes_anything(case, tmp_path, model_file, frames, capsys):
    pytest.importorskip("av")
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "nodir" / "v.mp4")
    out = tmp_path / "out"
    extra = {
        "not-a-video": ["--source", str(junk)],
        "fps-nan": ["--source", str(frames), "--fps", "nan"],
        "fps-negative": ["--source", str(frames), "--fps", "-2"],
        "save-video-unwritable": ["--source", str(frames), "--save-video", str(tmp_path / "a_file" / "v.mp4")],
        "save-video-folder": ["--source", str(frames), "--save-video", str(tmp_path)],
        "save-video-no-codec": ["--source", str(frames), "--save-video", str(tmp_path / "v.gif")],
        "save-video-link-into-missing-folder": ["--source", str(frames), "--save-video", str(tmp_path / "link.mp4")],
    }[case]
    args = [a.format(model=model_file) for a in WATCH] + extra + ["--out", str(out)]
    assert main(args) == 2
    line = one_error_line("watch", capsys.readouterr().err)
    if case.startswith("fps"):  # refused by the parser, in one line too
        assert "argument --fps: must be a finite number > 0" in line
    else:
        assert {
            "not-a-video": "cannot open the video source",
            "save-video-unwritable": "--save-video",
            "save-video-folder": "is a folder",
            "save-video-no-codec": "cannot tell the codec",
            "save-video-link-into-missing-folder": f"whose folder {tmp_path / 'nodir'} does not exist",
        }[case] in line
    assert not out.exists()


def test_watch_api_refuses_a_nan_or_negative_fps(tmp_path, model_file, frames):
    from efficientad_fast import load
    from efficientad_fast.stream import Inspector, watch

    inspector = Inspector(load(model_file, precision="fp32"))
    for fps in (float("nan"), -2.0, 0, float("inf"), 1e-300, 1e9):
        with pytest.raises(ValueError, match="fps must be a number from 0.001 to 10000"):
            watch(inspector, frames, tmp_path / "out", fps=fps, progress=False)
    with pytest.raises(TypeError, match="fps must be a number"):
        watch(inspector, frames, tmp_path / "out", fps="25", progress=False)
    assert not (tmp_path / "out").exists()


def test_alarm_pictures_say_frame_score_and_threshold(tmp_path, model_file, frames):
    from efficientad_fast import load
    from efficientad_fast.stream import Inspector, watch
    from efficientad_fast.stream.watch import _alarm_caption

    inspector = Inspector(load(model_file, precision="fp32"), smoothing="none", threshold=-1e9)  # every frame alarms
    summary = watch(inspector, frames, tmp_path / "out", fps=5, progress=False)
    assert summary["alarms"] == 1  # one onset: the alarm stays on
    picture = np.asarray(Image.open(tmp_path / "out" / "alarms" / "frame_000000.png"))
    assert picture.shape[0] > 256  # the caption band above the 256 px overlay
    band = picture[: picture.shape[0] - 256]
    assert band.max() == 255 and np.median(band) == 0  # white text on black
    caption = _alarm_caption(next(iter(inspector.run(frames, max_frames=1, fps=5))), inspector)
    assert caption.startswith("frame 0 at 0.00 s  score ") and "threshold -1000000000.000" in caption


def test_the_annotated_video_appears_whole_and_under_its_name(tmp_path, model_file, frames):
    av = pytest.importorskip("av")
    from efficientad_fast import load
    from efficientad_fast.stream import Inspector, watch

    video = tmp_path / "video" / "v.mp4"
    watch(
        Inspector(load(model_file, precision="fp32")),
        frames,
        tmp_path / "out",
        fps=2.5,
        save_video=video,
        progress=False,
    )
    assert sorted(p.name for p in video.parent.iterdir()) == ["v.mp4"]
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 2.5  # a fractional rate kept, not rounded to 2
        assert sum(1 for _ in container.decode(stream)) == 3


def test_watch_saving_its_video_to_a_full_disk_still_writes_the_summary(
    full_disk, tmp_path, model_file, frames, capsys
):
    """The sixth probe (W37): the video's full disk was one line, but summary.json was never written."""
    pytest.importorskip("av")
    video, out = full_disk / "v.mp4", tmp_path / "out"
    fill(full_disk)
    args = [*WATCH, "--source", str(frames), "--out", str(out), "--fps", "2", "--save-video", str(video)]
    assert main([a.replace("{model}", str(model_file)) for a in args]) == 2
    assert "no space left writing" in one_error_line("watch", capsys.readouterr().err)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 3 and "video_error" in summary
    assert len((out / "frames.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


# -- export ------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", ["99", "17"])  # 17: onnx's converter always failed on this graph, noisily
def test_export_refuses_an_opset_onnx_does_not_know_before_any_work(tmp_path, model_file, capsys, opset):
    pytest.importorskip("onnx")
    out = tmp_path / "out"
    assert (
        main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(out / "m.onnx"), "--opset", opset])
        == 2
    )
    assert "opset must be an integer from 18" in one_error_line("export", capsys.readouterr().err)
    assert not out.exists()


def test_export_refuses_to_write_another_opset_than_asked(tmp_path, model_file, monkeypatch):
    """torch.onnx converts from opset 18 and keeps 18 with a warning when it cannot: pretend
    onnx knows opset 99, so the conversion fails as it would for a real new opset."""
    onnx = pytest.importorskip("onnx")
    from efficientad_fast import load
    from efficientad_fast.deploy.export import export_onnx

    monkeypatch.setattr(onnx.defs, "onnx_opset_version", lambda: 99)
    with pytest.raises(ValueError, match="asked for ONNX opset 99, but torch .* could only write opset 18"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(load(model_file), tmp_path / "m.onnx", opset=99)
    assert list(tmp_path.iterdir()) == []


# -- downloads: stalls, Ctrl-C and SIGTERM ------------------------------------------------------


class _Drip(http.server.BaseHTTPRequestHandler):
    """Announces 1 MB, then sends a byte every 0.2 s."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        try:
            for _ in range(1 << 20):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def drip_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/teacher.zip"
    server.shutdown()
    server.server_close()


def test_a_dripping_server_is_abandoned_as_stalled(tmp_path, drip_url):
    from efficientad_fast.downloads import DownloadError, fetch_verified

    dest = tmp_path / "cache" / "t.zip"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"slowed to \d+ bytes/s over the last 2 s"):
        fetch_verified(drip_url, "0" * 64, dest, what="t", progress=False, timeout=2.0)
    assert time.monotonic() - started < 10
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(DownloadError, match="not finished by the deadline"):
        fetch_verified(drip_url, "0" * 64, dest, what="t", progress=False, timeout=60.0, deadline_s=1.0)
    assert list(dest.parent.iterdir()) == []


# SIGHUP (the terminal closed) as SIGTERM: the fourth probe found it left partial files
@pytest.mark.parametrize("how, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_fetch_stopped_by_a_signal_leaves_no_partial_file(how, status, tmp_path, drip_url):
    cache = tmp_path / "cache"
    env = {**os.environ, "EFFICIENTAD_FAST_CACHE": str(cache)}
    process = subprocess.Popen(
        [sys.executable, "-m", "efficientad_fast", "fetch-teacher", "--from", drip_url, "--quiet"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background of a shell inherits SIGINT ignored, and Python then
        # installs no KeyboardInterrupt handler: the child gets the default, as from a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    downloads = cache / "downloads"
    for _ in range(300):  # until the partial file exists
        if downloads.is_dir() and list(downloads.iterdir()):
            break
        time.sleep(0.1)
    assert [p.name for p in downloads.iterdir()][0].endswith(".part")
    process.send_signal(how)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert "Traceback" not in err and "nothing was cached" in err
    assert list(downloads.iterdir()) == []


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from efficientad_fast import jobs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "run_demo", interrupted)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "1", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "efficientad-fast demo: interrupted" in err and "Traceback" not in err


def test_an_unwritable_cache_names_the_setting(tmp_path, monkeypatch):
    from efficientad_fast.downloads import fetch_verified

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "a_file" / "cache"))
    source = tmp_path / "source.zip"
    source.write_bytes(b"zip")
    from efficientad_fast.downloads import downloads_root

    with pytest.raises(PermissionError, match="cannot create the cache folder .*EFFICIENTAD_FAST_CACHE="):
        fetch_verified(source, "0" * 64, downloads_root() / "x.zip", what="x", progress=False)


def test_the_precision_cache_says_when_it_could_not_be_written(tmp_path, monkeypatch):
    from efficientad_fast import precision

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "a_file" / "cache"))
    entry, how = precision._cached("key", "precision", ["fp32"], _fp32_measured, refresh=False, times_key="times_ms")
    assert entry["precision"] == "fp32"
    assert how.startswith("measured now, not cached: cannot create the cache folder")


# -- numbers of NumPy and tensor type ----------------------------------------------------------


@pytest.mark.parametrize("value", [np.float32(0.7), np.float64(0.7), torch.tensor(0.7), torch.tensor([0.7]), 1])
def test_sensitivity_and_thresholds_take_numpy_and_tensor_numbers(value):
    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).eval()
    model.set_thresholds(image=value, pixel=value)
    assert model.image_threshold == pytest.approx(float(value))
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    reference = model.predict(x, sensitivity=float(value))
    result = model.predict(x, sensitivity=value)
    assert torch.equal(result.label, reference.label) and torch.equal(result.mask, reference.mask)


@pytest.mark.parametrize("value", ["0.5", True, torch.tensor([0.1, 0.2]), None])
def test_sensitivity_of_another_type_is_a_type_error(value):
    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).eval()
    with pytest.raises(TypeError, match="sensitivity .* must be a number"):
        model.thresholds(value)


# -- train and report --------------------------------------------------------------------------


def test_building_the_bundled_penalty_images_shows_progress(capsys):
    from efficientad_fast.data.penalty import penalty_image_set

    penalty_image_set("bundled", (64, 64), progress=True)
    assert "generic images" in capsys.readouterr().err
    penalty_image_set("bundled", (64, 64), progress=False)
    assert "generic images" not in capsys.readouterr().err


@pytest.mark.parametrize("value, text", [("auto", "auto"), (["a", "b"], "a b"), (None, "none"), ([], "none")])
def test_report_writes_the_penalty_setting_as_given(value, text):
    from efficientad_fast.report import _as_text

    assert _as_text(value) == text


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"version": 1, "entries": []}',
        '{"version": 1}',
        '{"version": 1, "entries": {"key": "a string"}}',
        '{"version": 1, "entries": {"key": {"precision": ["fp32"]}}}',
        "[" * 100_000,  # the fourth probe: RecursionError, a traceback
        '{"version": 1, "entries": {}, "pad": "' + "x" * 2**20 + '"}',  # larger than any cache we write
    ],
    ids=lambda text: text[:40],
)
def test_a_precision_cache_edited_by_hand_is_measured_again(text, tmp_path):
    from efficientad_fast import precision
    from efficientad_fast.op._build import cache_root

    path = cache_root() / precision.CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    entry, how = precision._cached("key", "precision", ["fp32"], _fp32_measured, refresh=False, times_key="times_ms")
    assert entry["precision"] == "fp32" and how.startswith("measured now, cached in")
    entry, how = precision._cached("key", "precision", ["fp32"], lambda: {}, refresh=False, times_key="times_ms")
    assert how.startswith("measured 20")  # read back from the rewritten cache


def _fp32_measured() -> dict:
    """What measure_precisions makes of a model that only runs in fp32."""
    return {"precision": "fp32", "times_ms": {"fp32": 250.0}, "map_diff": {"fp32": 0.0}}


@pytest.mark.parametrize(
    "edit",
    [
        {"times_ms": {"fp32": 250.0, "bf16": -5}},
        {"times_ms": {"fp32": 250.0, "bf16": True}},
        {"times_ms": {"fp32": 250.0, "bf16": float("nan")}},
        {"times_ms": {"fp32": 250.0, "bf16": 300.0}},  # not the fastest
        {"map_diff": {"fp32": 0.0, "bf16": float("nan")}},
        {"map_diff": {"fp32": 0.0, "bf16": 0.5}},  # beyond the tolerance
        {"map_diff": None},
    ],
    ids=str,
)
def test_a_precision_entry_that_contradicts_itself_is_measured_again(edit, tmp_path):
    """The fifth and sixth probes: bf16 was used from entries with a time of -5, true or NaN."""
    import json

    from efficientad_fast import precision
    from efficientad_fast.op._build import cache_root

    good = {"precision": "bf16", "times_ms": {"fp32": 250.0, "bf16": 60.0}, "map_diff": {"fp32": 0.0, "bf16": 0.01}}
    path = cache_root() / precision.CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    for entry, trusted in ((good, True), ({**good, **edit}, False)):
        path.write_text(json.dumps({"version": precision.CACHE_VERSION, "entries": {"key": entry}}))
        got, how = precision._cached("key", "precision", ["fp32", "bf16"], _fp32_measured, False, "times_ms")
        assert (got["precision"], how.startswith("measured now")) == (("bf16", False) if trusted else ("fp32", True))


def test_times_edited_by_hand_are_left_out_of_the_message():
    from efficientad_fast.precision import _format_times

    assert _format_times({"fp32": "slow", "bf16": 63.2, "int8": True}, ["fp32", "bf16", "int8"]) == "bf16 63 ms"
    assert _format_times("nonsense") == "times not recorded"


# -- the second probe (issue 24): what it found, each refused or handled --------------------------


def test_watch_refuses_to_save_the_video_over_its_source(tmp_path, model_file, capsys):
    av = pytest.importorskip("av")
    from efficientad_fast.data import make_synthetic_video

    video = make_synthetic_video(tmp_path / "line.mp4", frames=4, frame_size=64, seed=0)
    before = video.read_bytes()
    args = [*[a.format(model=model_file) for a in WATCH], "--source", str(video), "--save-video", str(video)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "is the video being watched" in one_error_line("watch", capsys.readouterr().err)
    assert video.read_bytes() == before and not (tmp_path / "out").exists()
    del av


def test_predict_reports_a_link_loop_and_scores_the_rest(tmp_path, model_file, frames):
    _predict_beside_one_bad_file(tmp_path, model_file, frames, "loop.png", lambda path: path.symlink_to(path))


@pytest.mark.parametrize("where", ["same", "above"])
def test_predict_with_out_at_or_above_the_inputs_scores_them(where, tmp_path, model_file, frames):
    folder = tmp_path / "par" / "imgs"
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((frames / "001.png").read_bytes())
    out = folder if where == "same" else folder.parent
    inputs = folder if where == "same" else folder.parent
    args = ["predict", "--model", str(model_file), str(inputs), "--out", str(out), "--quiet", "--precision", "fp32"]
    assert main(args) == 0
    assert len(list(csv.DictReader(open(out / "scores.csv")))) == 2
    assert main(args) == 0  # the second run does not score the first run's heatmaps
    assert len(list(csv.DictReader(open(out / "scores.csv")))) == 2


def test_predict_refuses_an_output_name_taken_by_a_folder_before_scoring(tmp_path, model_file, frames, capsys):
    out = tmp_path / "out"
    (out / "scores.csv").mkdir(parents=True)
    args = ["predict", "--model", str(model_file), str(frames), "--out", str(out), "--quiet", "--precision", "fp32"]
    assert main(args) == 2
    assert "is in the way of predict's output" in one_error_line("predict", capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv"]


def test_predict_lists_an_image_with_nan_pixels_and_scores_the_rest(tmp_path, model_file, frames):
    errors = _predict_beside_one_bad_file(tmp_path, model_file, frames, "nan.tif", _float_image_with(np.nan))
    assert "not finite" in errors[0]["error"]


def test_predict_onto_a_disk_that_fills_with_pictures_fails_and_keeps_the_previous_files(
    full_disk, model_file, frames, capsys
):
    out = full_disk / "out"
    args = ["predict", "--model", str(model_file), str(frames), "--out", str(out), "--quiet", "--precision", "fp32"]
    assert main([*args, "--no-heatmaps", "--parquet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    fill(full_disk)
    assert main([*args, "--parquet"]) == 2  # the heatmaps no longer fit: not a row per image, exit 0
    assert "no space left" in one_error_line("predict", capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def _flip_tensor_stride(path: Path, out: Path) -> None:
    """A model file whose first non-empty 1-element tensor has a stride torch cannot view as
    bytes: what a flipped byte in the pickled metadata left (the second probe's INT8 file)."""
    payload = torch.load(path, weights_only=True)
    for key, value in payload["state_dict"].items():
        if torch.is_tensor(value) and value.numel() > 1:
            payload["state_dict"][key] = value.reshape(-1)[:1].as_strided((1,), (17,))
            break
    torch.save(payload, out)


def test_load_refuses_corrupt_tensor_metadata_and_extra_state_in_one_line(tmp_path, model_file):
    from efficientad_fast import load

    odd = tmp_path / "stride.pt"
    _flip_tensor_stride(model_file, odd)
    with pytest.raises(ValueError, match="corrupt"):
        load(odd)
    payload = torch.load(model_file, weights_only=True)
    payload["state_dict"]["_extra_state"] = ["x"]
    torch.save(payload, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="corrupt"):
        load(tmp_path / "extra.pt")


def test_resume_refuses_a_corrupt_checkpoint_and_other_data(tmp_path, tiny_board, capsys, monkeypatch):
    import shutil

    from efficientad_fast.train import loop

    out = tmp_path / "run"
    calls = []
    original = loop.augment

    def interrupted_at_step_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "augment", interrupted_at_step_two)
    assert main(train_args(tiny_board, out, steps=3)) == 130
    monkeypatch.setattr(loop, "augment", original)
    checkpoint = out / "checkpoint.pt"
    good = checkpoint.read_bytes()

    state = torch.load(checkpoint, weights_only=False)
    first = next(k for k, v in state["model"].items() if torch.is_tensor(v) and v.numel() > 100)
    state["model"][first].view(-1)[7] += 1.0  # one weight changed, the stored checksum kept
    torch.save(state, checkpoint)
    assert main([*train_args(tiny_board, out, steps=3), "--resume"]) == 2
    line = one_error_line("train", capsys.readouterr().err)
    # The sixteenth probe: it said "train again without --resume", which is refused in that OUT.
    assert "corrupt: checksum mismatch" in line and line.endswith("start afresh with --overwrite")

    # The sixteenth probe: a flipped bit in the name "checksum" passed for a checkpoint from
    # before checksums (a warning), and a changed weight beside it went through.
    state = torch.load(io.BytesIO(good), weights_only=False)
    state["chdcksum"] = state.pop("checksum")
    state["model"][first].view(-1)[7] += 1.0
    torch.save(state, checkpoint)
    assert main([*train_args(tiny_board, out, steps=3), "--resume"]) == 2
    assert "corrupt: unknown entries 'chdcksum'" in one_error_line("train", capsys.readouterr().err)

    checkpoint.write_bytes(good)
    other = tmp_path / "other"
    shutil.copytree(tiny_board, other)
    (other / "board" / "train" / "good" / "000.png").rename(other / "board" / "train" / "good" / "100.png")
    (other / "board" / "train" / "good" / "extra.png").write_bytes(
        (other / "board" / "train" / "good" / "001.png").read_bytes()
    )
    assert main([*train_args(other, out, steps=3), "--resume"]) == 2
    assert "training_files" in one_error_line("train", capsys.readouterr().err)
    assert main([*train_args(tiny_board, out, steps=3), "--resume"]) == 0  # the same data resumes


def test_numpy_integers_are_taken_where_ints_are(tmp_path, model_file):
    from efficientad_fast import FastPredictor, load
    from efficientad_fast.stream import Inspector
    from efficientad_fast.tiling import predict_tiled

    model = load(model_file, precision="fp32")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    reference = model.predict(x)
    assert torch.equal(FastPredictor(model, np.int64(1), np.int64(256))(x).score, reference.score)
    assert torch.allclose(predict_tiled(model, x, tile=np.int64(256), overlap=np.int64(0)).score, reference.score)
    Inspector(model, smoothing="kofn", k=np.int64(3), n=np.int64(5), queue_size=np.int64(2), image_size=np.int64(256))
    assert load(model_file, precision="fp32", image_size=np.int64(256)).precision == "fp32"
    # 0-d arrays and tensors, as indexing hands them over (the probe's A02, A03)
    assert torch.equal(model.predict(x, sensitivity=np.array(0.7)).score, model.predict(x, sensitivity=0.7).score)
    assert model.predict(x, output_size=torch.tensor(128)).anomaly_map.shape == (1, 1, 128, 128)
    assert model.predict(x, output_size=np.array(100)).anomaly_map.shape == (1, 1, 100, 100)
    for bad in (torch.tensor(2.5), torch.tensor(True), "a"):
        with pytest.raises(TypeError, match="output_size must be an int or"):
            model.predict(x, output_size=bad)


def test_an_unwritable_cache_leaves_no_output_folder(tmp_path, model_file, frames, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path / "a_file" / "cache"))
    monkeypatch.setattr("efficientad_fast.op._library._loaded", None)
    monkeypatch.setattr("efficientad_fast.op._library._aot_library", lambda: None)
    out = tmp_path / "out"
    assert (
        main(["predict", "--model", str(model_file), str(frames), "--out", str(out), "--quiet", "--precision", "fp32"])
        == 2
    )
    assert "EFFICIENTAD_FAST_CACHE" in one_error_line("predict", capsys.readouterr().err)
    assert not out.exists()


def test_openvino_export_onto_a_full_disk_is_one_line(full_disk, model_file, capsys):
    pytest.importorskip("openvino")
    out = full_disk / "model.xml"
    assert main(["export", "--model", str(model_file), "--format", "openvino", "--out", str(out)]) == 2
    line = one_error_line("export", capsys.readouterr().err)
    # The fourth probe: OpenVINO's own "basic_ios::clear: iostream error" read as a full disk
    assert f"no space left writing {out}" in line and "basic_ios" not in line
    # The thirteenth probe (E35): the 32 MB .bin is what does not fit, so the line names it too
    assert f"and {out.with_suffix('.bin')}" in line
    assert list(full_disk.iterdir()) == []


def test_aoti_export_checks_the_free_space_before_compiling(tmp_path, model_file, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    from efficientad_fast.deploy import export

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))

    def no_compiling(*args, **kwargs):
        pytest.fail("compiled although the disk cannot hold the package")

    monkeypatch.setattr(export.torch.export, "export", no_compiling)
    out = tmp_path / "m.pt2"
    assert main(["export", "--model", str(model_file), "--format", "aoti", "--out", str(out)]) == 2
    assert "an AOTInductor package of this model needs about" in one_error_line("export", capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_during_an_export_stops_it_with_nothing_written(
    signum, status, tmp_path, model_file, monkeypatch, capsys
):
    """torch.export turned an interrupt raised inside it into AttributeError (a traceback),
    and OpenVINO swallowed one (exit 0 with the file written): the export now holds the
    signal and stops when the exporter returns."""
    pytest.importorskip("onnxscript")
    real_export = torch.onnx.export

    def exporter_that_loses_interrupts(*args, **kwargs):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(0.2)  # the handler runs here, as it would deep inside the exporter
        except BaseException:  # what the exporter did with an interrupt raised inside it
            pass
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", exporter_that_loses_interrupts)
    out = tmp_path / "old.onnx"
    out.write_bytes(b"an earlier export")
    assert main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(out)]) == status
    err = capsys.readouterr().err
    assert "stopping when the exporter returns" in err and "Traceback" not in err
    assert out.read_bytes() == b"an earlier export" and [p.name for p in tmp_path.iterdir()] == ["old.onnx"]


# -- the second probe's poor messages (issue 24): a changed byte is called corrupt, never accepted --


def _edited(model_file, tmp_path, edit, resign: bool = True):
    """A copy of ``model_file`` whose payload ``edit`` changed, with a recomputed checksum when
    ``resign`` (as a file written so by another tool)."""
    from efficientad_fast._checkpoint import payload_checksum

    payload = torch.load(model_file, weights_only=True)
    edit(payload)
    if resign and isinstance(payload.get("checksum"), dict):
        payload["checksum"]["all_sha256"] = payload_checksum(payload)
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


def test_a_damaged_pickle_inside_the_zip_is_corrupt(model_file, tmp_path):
    import zipfile

    from efficientad_fast import load

    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(model_file) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, b"\x80\x02}q\x00(X\xff" if item.filename.endswith("data.pkl") else data)
    with pytest.raises(ValueError, match="corrupt: its pickled part cannot be read"):
        load(damaged)


def test_a_changed_format_name_is_corrupt_not_another_tool(model_file, tmp_path):
    from efficientad_fast import load

    path = _edited(model_file, tmp_path, lambda p: p.update(format="efficientad_fasT"))
    with pytest.raises(ValueError, match="corrupt: format is 'efficientad_fasT'"):
        load(path)


@pytest.mark.parametrize("value", ["abc", [0.1]])
def test_a_wrong_typed_threshold_names_the_file(model_file, tmp_path, value):
    from efficientad_fast import load

    path = _edited(model_file, tmp_path, lambda p: p["state_dict"]["_extra_state"].update(image_threshold=value))
    with pytest.raises(ValueError, match=rf"{path.name}: corrupt"):
        load(path)


def test_nan_weights_are_refused(model_file, tmp_path):
    from efficientad_fast import load

    def poison(payload):
        payload["state_dict"]["student.conv1.weight"][0, 0, 0, 0] = float("nan")

    with pytest.raises(ValueError, match=r"student.conv1.weight holds NaN or inf"):
        load(_edited(model_file, tmp_path, poison))


def test_a_version_2_file_must_carry_the_full_digest(model_file, tmp_path):
    """Renaming all_sha256 (one byte) used to fall back to the weights-only digest, so a second
    changed byte (a threshold) went unnoticed."""
    from efficientad_fast import load

    def downgrade(payload):
        payload["checksum"]["all_sha25X"] = payload["checksum"].pop("all_sha256")
        payload["state_dict"]["_extra_state"]["image_threshold"] = -0.25

    with pytest.raises(ValueError, match="without its all_sha256 checksum"):
        load(_edited(model_file, tmp_path, downgrade, resign=False))


def test_a_version_1_file_with_the_weights_digest_only_loads_with_a_warning(model_file, tmp_path):
    from efficientad_fast import load

    def old_file(payload):
        payload["format_version"] = 1
        del payload["checksum"]["all_sha256"]

    with pytest.warns(UserWarning, match="covers its weights only"):
        model = load(_edited(model_file, tmp_path, old_file, resign=False))
    assert model.image_threshold == 0.25


@pytest.mark.parametrize(
    "state, words",
    [
        ({"eps": [2.4e-4], "min_val": 0.0, "max_val": 0.0}, "empty or inverted range"),
        ({"eps": [0.0], "min_val": 0.0, "max_val": 1.0}, "must be > 0"),
        ({"eps": [2.4e-4], "min_val": -1e30, "max_val": 1e30}, "beyond"),
        ({"eps": [2.4e-4], "min_val": 2.0, "max_val": 1.0}, "empty or inverted range"),
    ],
)
def test_degenerate_int8_ranges_are_refused(state, words):
    from efficientad_fast.int8 import SCHEME, Int8Calibration

    observer = {k: torch.tensor(v) for k, v in state.items()}
    payload = {"scheme": SCHEME, "observers": {"activation_post_process_0": observer}, "image_size": [256, 256]}
    with pytest.raises(ValueError, match=words):
        Int8Calibration.from_payload({**payload, "images": 8}, "m.pt")
    good = {"eps": torch.tensor([2.4e-4]), "min_val": torch.tensor(0.0), "max_val": torch.tensor(0.05)}
    Int8Calibration.from_payload({**payload, "observers": {"a": good}, "images": 8}, "m.pt")  # a real range


@pytest.mark.parametrize("size", [["a", "b"], [256.5, 256], [0, 256], [True, 256]])
def test_a_bad_int8_image_size_names_the_file(size):
    from efficientad_fast.int8 import SCHEME, Int8Calibration

    good = {"eps": torch.tensor([2.4e-4]), "min_val": torch.tensor(0.0), "max_val": torch.tensor(0.05)}
    payload = {"scheme": SCHEME, "observers": {"a": good}, "image_size": size, "images": 8}
    with pytest.raises(ValueError, match="m.pt: INT8 calibration has a bad image_size"):
        Int8Calibration.from_payload(payload, "m.pt")


@pytest.mark.parametrize("value", [1e6, -5.0])
def test_float_images_outside_the_scaled_ranges_are_refused_not_clipped(tmp_path, value):
    from efficientad_fast.data import DataError, open_image

    pixels = np.full((16, 16), 0.5, np.float32)
    pixels[2, 2] = value
    Image.fromarray(pixels, mode="F").save(tmp_path / "odd.tif")
    with pytest.raises(DataError, match=r"odd\.tif: float pixel values must lie in \[0, 1\]"):
        open_image(tmp_path / "odd.tif")
    pixels[2, 2] = 200.0  # an 8-bit scale held in floats: scaled, as before
    Image.fromarray(pixels, mode="F").save(tmp_path / "scaled.tif")
    open_image(tmp_path / "scaled.tif")


@pytest.mark.parametrize("item", ["lr=nan", "lr=0", "weight_decay=-1", "steps=0", "batch_size=0", "lr=1e-4,inf"])
def test_a_sweep_value_no_run_could_use_is_refused_before_the_first_run(tmp_path, item, capsys):
    out = tmp_path / "rep"
    args = ["report", "--data", str(tmp_path), "--dataset", "mvtec", "--out", str(out), "--sweep", item]
    assert main([*args, "--teacher", "random", "--penalty-images", "none", "--quiet"]) == 2
    assert "bad value in sweep item" in one_error_line("report", capsys.readouterr().err)
    assert not out.exists()


def test_int8_and_aoti_set_up_without_library_warnings_on_stderr():
    """torchao's import logged 'W... KernelPreference is an Enum subclass', and Inductor's import
    of cpp_extension 'No CUDA runtime is found', in front of every INT8 run's output."""
    pytest.importorskip("torchao")
    code = (  # train's INT8 calibration imported torchao before the quiet import did (the third probe)
        "import torch; from efficientad_fast.testing import random_model; "
        "random_model('small', seed=0).record_int8_ranges(torch.rand(1, 3, 256, 256)); "
        "import torch._inductor.cpp_builder"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "KernelPreference" not in result.stderr and "No CUDA runtime" not in result.stderr, result.stderr


def test_predict_refuses_an_input_inside_the_folder_its_pictures_go_to(tmp_path, model_file, frames, capsys):
    """The third probe: in3/heatmaps/x.png, named as an input with --out in3, was overwritten by
    the heatmap of in3/x.png."""
    (tmp_path / "heatmaps").mkdir()
    (tmp_path / "x.png").write_bytes((frames / "001.png").read_bytes())
    inside = tmp_path / "heatmaps" / "x.png"
    inside.write_bytes((frames / "002.png").read_bytes())
    before = inside.read_bytes()
    args = ["predict", "--model", str(model_file), str(tmp_path / "x.png"), str(inside), "--out", str(tmp_path)]
    assert main([*args, "--quiet", "--precision", "fp32"]) == 2
    assert "where predict writes its pictures" in one_error_line("predict", capsys.readouterr().err)
    assert inside.read_bytes() == before and not (tmp_path / "scores.csv").exists()


# -- the third probe (issue 24): what it found, each refused or handled ---------------------------


def test_an_infinite_pixel_in_a_float_image_is_an_error_row_not_a_rescaled_image(tmp_path, model_file, frames):
    """One +inf pixel made the reader divide the whole image by 65535 and clip the inf to 1."""
    errors = _predict_beside_one_bad_file(tmp_path, model_file, frames, "inf.tif", _float_image_with(np.inf))
    assert "not finite" in errors[0]["error"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("min_val", torch.tensor(-2 + 0j)),
        ("min_val", torch.tensor(False)),
        ("eps", torch.tensor([1j])),
        ("max_val", torch.tensor(5, dtype=torch.uint8)),
    ],
)
def test_int8_observer_tensors_of_another_dtype_are_refused(key, value):
    from efficientad_fast.int8 import SCHEME, Int8Calibration

    state = {"eps": torch.tensor([2.4e-4]), "min_val": torch.tensor(0.0), "max_val": torch.tensor(0.05), key: value}
    payload = {"scheme": SCHEME, "observers": {"a": state}, "image_size": [256, 256], "images": 8}
    with pytest.raises(ValueError, match=rf"m.pt: INT8 calibration a.{key} must be real floats"):
        Int8Calibration.from_payload(payload, "m.pt")


@pytest.mark.parametrize(
    "where, key, value",
    [
        ("extra", "quantiles_set", ""),
        ("extra", "quantiles_set", "False"),
        ("extra", "image_threshold", "-0.5"),
        ("extra", "image_threshold", True),
        ("extra", "teacher_source", 5),
        ("config", "padding", "no"),
        ("config", "alpha", "0.5"),
    ],
)
def test_a_wrong_typed_value_in_a_model_file_is_refused_not_converted(model_file, tmp_path, where, key, value):
    """The third probe: quantiles_set '' became False and moved a score, padding 'no' became
    True, image_threshold '-0.5' flipped every label (all with a valid checksum)."""
    from efficientad_fast import load

    def edit(payload):
        (payload["state_dict"]["_extra_state"] if where == "extra" else payload["config"])[key] = value

    with pytest.raises(ValueError, match=rf"{key}|invalid config"):
        load(_edited(model_file, tmp_path, edit))


def test_a_fifo_in_place_of_the_precision_cache_does_not_hang(tmp_path):
    from efficientad_fast import precision

    fifo = tmp_path / "precision.json"
    os.mkfifo(fifo)
    result: list[dict] = []
    reader = threading.Thread(target=lambda: result.append(precision._read_cache(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive() and result == [{}]
    # The tenth probe: writing the measured choice refused the FIFO with a ValueError that
    # ended predict; a cache that cannot be written only costs a measurement next time.
    written = precision._write_cache(fifo, {"x": 1})
    assert written is not None and "FIFO" in written and stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--device", "tpu"], "device must be cpu, cuda, cuda:N or auto, got 'tpu'"),
        (["--batch-size", "99999999999999999999"], "argument --batch-size: must be <= 2147483647"),
    ],
)
def test_an_unknown_device_or_an_absurd_batch_is_one_line(extra, words, tmp_path, model_file, frames, capsys):
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_file), str(frames), "--out", str(out), *extra]) == 2
    assert words in one_error_line("predict", capsys.readouterr().err)
    assert not out.exists()


def test_tile_and_overlap_take_one_element_arrays_and_tensors(model_file):
    from efficientad_fast import load
    from efficientad_fast.tiling import predict_tiled

    model = load(model_file, precision="fp32")
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    reference = model.predict(x, tile=256, overlap=32).score
    for tile in (torch.tensor(256), np.array(256), torch.tensor([256])):
        assert torch.equal(model.predict(x, tile=tile).score, reference)
    assert torch.equal(predict_tiled(model, x, tile=256, overlap=np.array(32)).score, reference)


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--format", "openvino", "--out", "{new}/x.onnx"],  # refused: an IR ends in .xml
        ["quantize", "--calibration-data", "{frames}", "--out", "{new}/q.pt", "--model", "{frames}/001.png"],
    ],
)
def test_a_refused_export_or_quantize_leaves_no_empty_output_folder(args, tmp_path, model_file, frames, capsys):
    new = tmp_path / "new" / "sub"
    args = [a.format(new=new, frames=frames) for a in args]
    if "--model" not in args:
        args += ["--model", str(model_file)]
    assert main(args) == 2
    one_error_line(args[0], capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "items, words",
    [(["teacher=nofile.pt"], "no teacher file nofile.pt"), (["lr=1e-4", "lr=1e-5"], "lr is swept twice")],
)
def test_sweep_teachers_and_repeated_keys_are_checked_before_the_first_run(items, words, tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["report", "--data", str(tmp_path), "--dataset", "mvtec", "--out", str(out), "--sweep", *items]
    assert main([*args, "--teacher", "random", "--penalty-images", "none", "--quiet"]) == 2
    assert words in one_error_line("report", capsys.readouterr().err)
    assert not out.exists()


def test_a_flipped_byte_in_a_pickled_torch_name_is_corrupt_but_a_saved_module_is_another_file(model_file, tmp_path):
    import zipfile

    from efficientad_fast import load

    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(model_file) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"collections", b"collectionz", 1)
            target.writestr(item, data)
    with pytest.raises(ValueError, match="corrupt: its pickled part cannot be read"):
        load(damaged)
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), module)
    with pytest.raises(ValueError, match="not an efficientad_fast model file"):
        load(module)
    ir = tmp_path / "model.xml"  # the thirteenth probe: an OpenVINO IR given as --model
    ir.write_text('<?xml version="1.0"?>\n<net name="Model0" version="11"></net>\n')
    with pytest.raises(ValueError, match=r"the command line reads model.pt files.*load_openvino"):
        load(ir)


# -- the third probe's leftover poor items (issue 24) ----------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda w: w.to(torch.int64),  # truncated to integers by load_state_dict before
        lambda w: w > 0,  # bool: every weight 0 or 1
        lambda w: w.to(torch.complex64),  # a 2-line torch warning, the imaginary part dropped
        lambda w: w.to_sparse(),  # a 2-line torch warning before the error
    ],
    ids=["int64", "bool", "complex64", "sparse"],
)
def test_a_weight_of_the_wrong_kind_is_refused_not_converted(model_file, tmp_path, make, recwarn, request):
    from efficientad_fast import load

    sparse = "sparse" in request.node.callspec.id  # no checksum can be computed over it: checked first anyway

    def retype(payload):
        payload["state_dict"]["student.conv1.weight"] = make(payload["state_dict"]["student.conv1.weight"])

    with pytest.raises(
        ValueError, match=r"student.conv1.weight is a torch\.\w+ torch\.\w+ tensor, expected torch.float"
    ):
        load(_edited(model_file, tmp_path, retype, resign=not sparse))
    assert not [w for w in recwarn if "sparse" in str(w.message) or "complex" in str(w.message)]


def test_the_version_1_warning_is_one_line_on_the_command_line(model_file, tmp_path, frames, capsys):
    def old_file(payload):
        payload["format_version"] = 1
        del payload["checksum"]["all_sha256"]

    path = _edited(model_file, tmp_path, old_file, resign=False)
    out = tmp_path / "out"
    args = ["predict", "--model", str(path), str(frames), "--out", str(out), "--quiet", "--precision", "fp32"]
    assert main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("efficientad-fast predict: warning: ")
        and "covers its weights only" in err[0]
    )


def test_watch_leaves_out_its_own_pictures_when_its_output_lies_in_the_watched_folder(tmp_path, model_file, capsys):
    """The third probe: the second run listed the first run's alarm picture as a frame, then
    (the run cleared it) reported it as a missing frame."""
    import json

    watched = tmp_path / "watched"
    watched.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 60 * i, np.uint8)).save(watched / f"{i:03d}.png")
    args = ["watch", "--model", str(model_file), "--source", str(watched), "--out", str(watched / "w")]
    args += ["--threshold", "-1", "--smoothing", "none", "--quiet", "--precision", "fp32"]
    assert main(args) == 0
    assert list((watched / "w" / "alarms").glob("frame_*.png"))  # the first run raised an alarm
    capsys.readouterr()
    assert main(args) == 0
    summary = json.loads((watched / "w" / "summary.json").read_text())
    assert summary["frames"] == 3 and summary["errors"] == 0
    assert "skipping 1 files under" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "report", "watch"])
def test_an_image_size_beyond_the_limit_is_one_line_before_any_work(command, tmp_path, model_file, frames, capsys):
    """The fourth probe: --image-size 99999999999 was a 31-line traceback (or a 13.8 GB allocation)."""
    out = tmp_path / "out"
    args = {
        "predict": ["predict", "--model", str(model_file), str(frames), "--out", str(out)],
        "report": ["report", "--data", str(frames), "--dataset", "mvtec", "--out", str(out)],
        "watch": ["watch", "--model", str(model_file), "--source", str(frames), "--out", str(out)],
    }[command]
    assert main([*args, "--image-size", "99999999999"]) == 2
    assert "larger than 8192 px a side" in one_error_line(command, capsys.readouterr().err)
    assert not out.exists()


def test_running_out_of_memory_is_one_line(tmp_path, model_file, frames, capsys, monkeypatch):
    from efficientad_fast.model import EfficientAD

    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: 13824000000 bytes"
        )

    monkeypatch.setattr(EfficientAD, "predict", no_memory)
    args = ["predict", "--model", str(model_file), str(frames), "--out", str(tmp_path / "o"), "--precision", "fp32"]
    assert main([*args, "--quiet"]) == 2
    line = one_error_line("predict", capsys.readouterr().err)
    assert "out of memory" in line and "--batch-size" in line


def test_predict_removes_the_half_written_scores_of_a_killed_run(tmp_path, model_file, frames, capsys):
    """The fourth probe: after SIGKILL (which no handler sees) scores.tmpPID.csv stayed in --out
    forever. A later run removes the temporary files of processes that no longer run."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    out = tmp_path / "out"
    out.mkdir()
    (out / f"scores.tmp{dead}.csv").write_text("path,score\n/a.png,0.1\n/b.p")
    (out / f"scores.tmp{os.getppid()}.csv").write_text("a running process's")  # not ours to remove
    (out / f"notes.tmp{dead}.csv").write_text("a user's file that looks like one")  # nor this
    (out / "heatmaps").mkdir()
    (out / "heatmaps" / f"06.tmp{dead}.png").write_bytes(b"\x89PNG cut")  # the tenth probe: stayed
    args = ["predict", "--model", str(model_file), str(frames), "--out", str(out), "--precision", "fp32"]
    assert main([*args, "--quiet", "--no-heatmaps"]) == 0
    printed = capsys.readouterr().err
    assert f"removed {out / f'scores.tmp{dead}.csv'}" in printed and f"06.tmp{dead}.png" in printed
    assert list((out / "heatmaps").iterdir()) == []
    (out / "heatmaps").rmdir()
    assert sorted(p.name for p in out.iterdir()) == [
        f"notes.tmp{dead}.csv",
        "scores.csv",
        f"scores.tmp{os.getppid()}.csv",
    ]


def test_predict_into_a_used_out_says_the_earlier_pictures_stay(tmp_path, model_file, frames, capsys):
    """The thirteenth probe (K15): earlier heatmaps stayed beside a scores.csv that does not list
    them, unsaid. predict deletes nothing it did not write this run, but says so."""
    out = tmp_path / "out"
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "earlier_part.png").write_bytes(b"an earlier run's picture")
    args = ["predict", "--model", str(model_file), str(frames), "--out", str(out), "--precision", "fp32", "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{out / 'heatmaps'} holds 1 picture(s) of an earlier run that this run's scores.csv does not list" in err
    assert (out / "heatmaps" / "earlier_part.png").read_bytes() == b"an earlier run's picture"
    assert "earlier_part" not in (out / "scores.csv").read_text()
    # The fourteenth probe (P03b): the same run again overwrites its own pictures: nothing to say
    (out / "heatmaps" / "earlier_part.png").unlink()
    assert main(args) == 0
    assert "earlier run" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, words",
    [
        (["predict", "--model", "M", "", "--out", "o"], "an input is an empty string"),
        (["predict", "--model", "M", "F", "--out", ""], "--out is an empty string"),
        (["train", "--data", "", "--dataset", "mvtec", "--category", "board", "--out", "o"], "--data is an empty"),
        (["train", "--data", "F", "--dataset", "mvtec", "--category", "board", "--out", "o", "--seed", "-1"], "--seed"),
        (
            ["train", "--data", "F", "--dataset", "mvtec", "--category", "board", "--out", "o", "--seed", "9" * 20],
            "--seed",
        ),
    ],
    ids=["empty input", "empty out", "empty data", "negative seed", "huge seed"],
)
def test_empty_paths_and_bad_seeds_are_refused_naming_the_option(args, words, tmp_path, model_file, frames, capsys):
    """The fourth probe: '' meant the current folder (239 files scored, outputs written into it);
    --seed -1 or 10**20 failed later without naming the option."""
    args = [{"M": str(model_file), "F": str(frames)}.get(a, a) for a in args]
    args = [str(tmp_path / a) if a == "o" else a for a in args]
    assert main(args) == 2
    assert words in one_error_line(args[0], capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_absurd_numbers_in_the_python_api_are_value_errors(model_file):
    """The fourth probe: set_thresholds(image=10**400) raised a raw OverflowError and
    output_size=np.int64(2**40) torch's 'Storage size calculation overflowed'."""
    from efficientad_fast import load

    model = load(model_file)
    with pytest.raises(ValueError, match="image threshold must be finite"):
        model.set_thresholds(image=10**400)
    with pytest.raises(ValueError, match=r"output_size must be 1 to 65536 pixels a side, got 1099511627776x"):
        model.predict(torch.rand(1, 3, 256, 256), output_size=np.int64(2**40))


def test_a_model_file_holding_a_numpy_scalar_says_so(model_file, tmp_path):
    """The fourth probe: it read 'not an efficientad_fast model file', though it is one, edited."""
    from efficientad_fast import load

    path = _edited(
        model_file, tmp_path, lambda p: p["state_dict"]["_extra_state"].update(image_threshold=np.float64(0.3))
    )
    with pytest.raises(
        ValueError, match=r"a model file holding a numpy\S* object, which efficientad_fast never writes"
    ):
        load(path)


def test_a_nan_score_is_anomalous_never_passed():
    """The fifth probe: a model with huge (finite) weights scored NaN and predict wrote
    'nan,false,false' (exit 0): a part whose score cannot be computed was passed."""
    from efficientad_fast.jobs.predict import score_row
    from efficientad_fast.model import decisions

    nan = float("nan")
    pred = decisions(torch.tensor([nan, 0.1, 0.9]), torch.tensor([nan, 0.0, 1.0]).view(3, 1, 1, 1), 0.5, 0.5)
    assert pred.label.tolist() == [True, False, True] and pred.mask.flatten().tolist() == [True, False, True]
    assert score_row("a.png", nan, 0.5)["anomalous"] == "true" and score_row("b.png", 0.1, 0.5)["label"] == "false"


def test_a_cached_time_no_float_can_hold_is_left_out():
    """The fifth probe: times_ms = 10**400 in precision.json was an OverflowError traceback."""
    from efficientad_fast.precision import _format_times

    assert _format_times({"fp32": 10**400, "bf16": 63.2, "fp16": float("inf"), "int8": True}) == "bf16 63 ms"


def test_an_int8_image_count_of_true_is_refused():
    """The fifth and sixth probes: int8.images = True was taken as one image."""
    from efficientad_fast.int8 import SCHEME, Int8Calibration

    state = {"min_val": torch.tensor(0.0), "max_val": torch.tensor(1.0), "eps": torch.tensor([2.4e-4])}
    payload = {"scheme": SCHEME, "observers": {"obs": state}, "image_size": [256, 256], "images": 4}
    assert Int8Calibration.from_payload(payload, "m.pt").images == 4
    with pytest.raises(ValueError, match="m.pt: INT8 calibration has a bad image_size .* or image count True"):
        Int8Calibration.from_payload({**payload, "images": True}, "m.pt")


def test_saving_to_an_empty_path_says_so(model_file):
    """The sixth probe: save('') said "'.' is a folder"."""
    from efficientad_fast import load

    with pytest.raises(ValueError, match="save needs a file path, got an empty string"):
        load(model_file).save("")


def test_images_without_data_and_values_just_out_of_range_are_named(model_file):
    """The sixth probe: a meta tensor was a raw NotImplementedError from torch, and an image
    of 1.0000001 read "got values in [1, 1]"."""
    from efficientad_fast import load

    model = load(model_file)
    nested = torch.nested.nested_tensor([torch.zeros(3, 256, 256)], layout=torch.jagged)
    for images in (torch.empty(1, 3, 256, 256, device="meta"), torch.zeros(1, 3, 256, 256).to_sparse(), nested):
        with pytest.raises(TypeError, match="images must be a dense tensor holding data"):
            model.predict(images)
    with pytest.raises(TypeError, match="images must be uint8 or floating point in"):  # the eighth probe: float8
        model.predict(torch.zeros(1, 3, 256, 256, dtype=torch.float8_e4m3fn))
    with pytest.raises(ValueError, match=r"got values in \[0, 1.00000012\]"):
        model.predict(torch.full((1, 3, 256, 256), 1.0000001).index_fill_(2, torch.tensor([0]), 0.0))


def test_save_refuses_a_model_that_load_would_refuse(model_file, tmp_path):
    """The sixth probe: save wrote a model whose teacher std was NaN, and load refused the file."""
    from efficientad_fast import load

    model = load(model_file)
    model.teacher_std.fill_(float("nan"))
    target = tmp_path / "nan_std.pt"
    with pytest.raises(ValueError, match=f"refusing to save {target}: teacher std must be finite"):
        model.save(target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command, target",
    [(c, t) for c in ("export", "quantize") for t in ("the-model", "a-hard-link-to-it")]
    + [(c, t) for c in ("export", "quantize", "watch") for t in ("fifo", "device")],
)
def test_an_output_file_never_replaces_the_model_or_a_device(command, target, tmp_path, model_file, frames, capsys):
    """The seventh probe: export --out MODEL replaced the model by the ONNX file (exit 0), and
    export, quantize and watch --save-video turned a device node (/dev/full) into a plain file."""
    model = tmp_path / "m.pt"
    model.write_bytes(model_file.read_bytes())
    path = tmp_path / ("out.mp4" if command == "watch" else "out.pt")
    if target == "the-model":
        path = model
    elif target == "a-hard-link-to-it":
        os.link(model, path)
    elif target == "fifo":
        os.mkfifo(path)
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    args = {
        "export": ["export", "--format", "onnx", "--out", str(path)],
        "quantize": ["quantize", "--calibration-data", str(frames), "--out", str(path)],
        "watch": [*WATCH[:1], "--source", str(frames), "--out", str(tmp_path / "w"), "--save-video", str(path)],
    }[command]
    assert main([*args, "--model", str(model)]) == 2
    line = one_error_line(command, capsys.readouterr().err)
    assert (
        "is the model file being read" if target in ("the-model", "a-hard-link-to-it") else "not a regular file"
    ) in line
    assert model.read_bytes() == model_file.read_bytes()
    if target in ("fifo", "device"):
        assert not stat.S_ISREG(os.stat(path).st_mode)


def test_an_openvino_export_never_writes_its_weights_over_the_model(tmp_path, model_file, capsys):
    """The eighth probe (E15): --model model.bin --format openvino --out model.xml wrote the IR's
    weights over the model."""
    model = tmp_path / "model.bin"
    model.write_bytes(model_file.read_bytes())
    args = ["export", "--model", str(model), "--format", "openvino", "--out", str(tmp_path / "model.xml")]
    assert main(args) == 2
    line = one_error_line("export", capsys.readouterr().err)
    assert f"writes its weights to {model}: that is the model file being read" in line
    assert model.read_bytes() == model_file.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_a_file_written_through_a_symbolic_link_keeps_the_link(tmp_path, model_file):
    """The eighth probe (E21): --out /dev/stdout (a link to /proc/self/fd/1) renamed the export
    over the link itself, turning /dev/stdout into a plain file; a link to a device is refused."""
    from efficientad_fast import load

    model = load(model_file)
    link = tmp_path / "current.pt"
    link.symlink_to(tmp_path / "v1.pt")
    model.save(link)
    assert link.is_symlink() and load(tmp_path / "v1.pt").config() == model.config()
    to_device = tmp_path / "null.pt"
    to_device.symlink_to("/dev/null")
    with pytest.raises(ValueError, match=f"{to_device} -> /dev/null is a character device"):
        model.save(to_device)
    assert to_device.is_symlink() and os.readlink(to_device) == "/dev/null"


def test_a_link_into_a_missing_folder_is_refused_naming_the_link(tmp_path, model_file, capsys):
    """The ninth probe (E26, A115): export named its temporary file after the work, and
    Model.save gave torch's "Parent directory ... does not exist", for a link into a missing folder."""
    from efficientad_fast import load

    link = tmp_path / "current.onnx"
    link.symlink_to(tmp_path / "nodir" / "v1.onnx")
    assert main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(link)]) == 2
    line = one_error_line("export", capsys.readouterr().err)
    assert f"--out {link} is a link to {tmp_path / 'nodir' / 'v1.onnx'}, whose folder" in line
    saved = tmp_path / "current.pt"
    saved.symlink_to(tmp_path / "nodir" / "v1.pt")
    with pytest.raises(FileNotFoundError, match=f"{saved} is a link to .*, whose folder .* does not exist"):
        load(model_file).save(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.onnx", "current.pt"]


def test_a_training_checkpoint_as_the_model_says_what_it_is(tmp_path):
    """The tenth probe (M20): a checkpoint named as --model listed its pickle keys."""
    import torch

    from efficientad_fast import load

    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"kind": "efficientad_fast-training-checkpoint", "step": 3, "model": {}}, checkpoint)
    with pytest.raises(ValueError, match="not an efficientad_fast model file but a training checkpoint"):
        load(checkpoint)


def test_watch_that_scores_no_frame_says_so_on_stderr(tmp_path, model_file, capsys):
    """The tenth probe (W54): a source with no frame that could be scored exited 1 silently."""
    source = tmp_path / "frames"
    source.mkdir()
    (source / "0.png").write_text("not a picture")
    args = [a.format(model=model_file) for a in WATCH] + ["--source", str(source), "--out", str(tmp_path / "out")]
    assert main(args) == 1
    assert f"no frame of {source} was scored (1 read)" in capsys.readouterr().err


def test_an_empty_zip_as_the_model_is_refused_without_torchs_unsafe_advice(tmp_path, capsys):
    """The fourteenth probe (M16): the one line passed on torch's preamble, that loading with
    weights_only=False "will likely succeed": wrong for a damaged file and an unsafe hint."""
    import zipfile

    empty = tmp_path / "e.pt"
    zipfile.ZipFile(empty, "w").close()
    assert main(["predict", "--model", str(empty), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line("predict", capsys.readouterr().err)
    assert "corrupt" in line and "weights-only reader refused it" in line
    assert "weights_only" not in line and "likely succeed" not in line
