"""watch --serve: the live page's endpoints over HTTP, and the page in a real headless browser
(issue 27, part 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from cli_checks import one_error_line

from efficientad_fast.stream import FrameResult, FrameSource, LivePage, PartVerdict, SourceFrame
from efficientad_fast.stream.live_page import parse_address

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def frame_result(index: int, score: float) -> FrameResult:
    rng = np.random.default_rng(index)
    image = rng.random((3, 64, 64), dtype=np.float32)
    amap = np.zeros((64, 64), np.float32)
    amap[20:30, 20:30] = score
    return FrameResult(index, index / 25, score, score, score > 0.5, 3.0, 0, image=image, anomaly_map=amap)


def verdict(part: int, score: float) -> PartVerdict:
    decided = "reject" if score > 0.5 else "pass"
    return PartVerdict(part, 0, 5, 6, score, 0.5, decided, 3, 12.0, True, True, [0, 0, 10, 10])


def test_the_pages_endpoints_answer_and_it_stops(tmp_path):
    page = LivePage(port=0, source="line.mp4", map_threshold=0.3).start()
    try:
        status, kind, body = get(page.url)
        assert status == 200 and kind.startswith("text/html") and b"frame.jpg" in body and b"state.json" in body
        assert get(page.url + "frame.jpg")[0] == 503  # nothing scored yet
        for i, score in enumerate([0.1, 0.2, 0.9]):
            page.update(frame_result(i, score), {"frames": i + 1, "parts": 2, "rejected": 1, "fps": 9.5}, 0.5)
        page.add_verdicts([verdict(0, 0.2), verdict(1, 0.9)])
        status, kind, body = get(page.url + "state.json")
        state = json.loads(body)
        assert status == 200 and kind == "application/json"
        assert state["scores"] == [0.1, 0.2, 0.9] and state["threshold"] == 0.5 and state["frames"] == 3
        assert [v["verdict"] for v in state["verdicts"]] == ["pass", "reject"] and state["source"] == "line.mp4"
        status, kind, body = get(page.url + "frame.jpg?n=3")
        assert status == 200 and kind == "image/jpeg" and body[:3] == b"\xff\xd8\xff"
        assert get(page.url + "nope")[0] == 404
        # The twelfth probe: NaN or infinite scores and verdicts made state.json invalid JSON.
        page.update(frame_result(3, float("nan")), {"frames": 4})
        page.update(frame_result(4, float("inf")), {"frames": 5})
        page.add_verdicts([verdict(2, float("inf"))])
        state = json.loads(get(page.url + "state.json")[2], parse_constant=pytest.fail)
        assert state["scores"][-2:] == [None, None] and state["verdicts"][-1]["score"] is None
        assert frame_result(5, float("inf")).to_json()["score"] is None  # frames.jsonl: null, not Infinity
    finally:
        page.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(page.url, timeout=2)


def test_serve_addresses():
    assert parse_address("8765") == ("127.0.0.1", 8765)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("", "host:", "127.0.0.1:99999", "abc", "\u00b2"):
        with pytest.raises(ValueError, match="--serve takes PORT or HOST:PORT"):
            parse_address(bad)
    with pytest.raises(ValueError, match="port must be an int"):
        LivePage(port=-1)


def test_an_ipv6_host_is_served_over_ipv6():
    """The twelfth probe: --serve [::1]:PORT was parsed but the server spoke IPv4 only."""
    try:
        page = LivePage("::1", 0).start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert page.url.startswith("http://[::1]:") and get(page.url)[0] == 200
    finally:
        page.stop()


def test_a_port_in_use_is_refused_before_any_output(tmp_path):
    from efficientad_fast.stream import Inspector, watch
    from efficientad_fast.testing import random_model

    with LivePage(port=0) as taken:
        inspector = Inspector(random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).eval(), image_size=256)
        frames = [np.zeros((64, 64, 3), np.uint8)]
        with pytest.raises(OSError, match=f"--serve 127.0.0.1:{taken.port}: cannot listen there"):
            watch(inspector, frames, tmp_path / "out", serve=LivePage(port=taken.port), progress=False)
    assert not (tmp_path / "out").exists()


def test_serve_usage_error_is_one_line(tmp_path, capsys):
    from efficientad_fast.cli import main

    assert main(["watch", "--model", "m.pt", "--source", "v.avi", "--serve", "here"]) == 2
    assert "argument --serve: takes PORT or HOST:PORT" in one_error_line("watch", capsys.readouterr().err)


class HeldSource(FrameSource):
    """Frames of a conveyor video, then waits (the stream stays up) until ``release`` is set."""

    def __init__(self, frames, release: threading.Event) -> None:
        self.frames, self.release = frames, release

    def __iter__(self):
        for index, frame in enumerate(self.frames):
            yield SourceFrame(index, index / 25, frame)
        self.release.wait(120)


def test_the_page_in_a_headless_browser_shows_frame_heatmap_and_verdicts(tmp_path):
    if CHROMIUM is None:  # .ci/run installs it and sets the variable: there it must run
        assert not os.environ.get("EFFICIENTAD_FAST_REQUIRE_BROWSER"), "chromium is not installed"
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("av")
    from PIL import Image

    from efficientad_fast.data import make_synthetic_video
    from efficientad_fast.stream import Belt, Inspector, PartJudge, PartTracker, open_source, watch
    from efficientad_fast.testing import random_model

    line = make_synthetic_video(tmp_path / "line.avi", frames=40, glitch_rate=0.0, seed=2)
    belt = make_synthetic_video(tmp_path / "belt.avi", frames=4, empty_belt=True, glitch_rate=0.0)
    frames = [item.image for item in open_source(line).open()]
    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).eval()
    inspector = Inspector(model, image_size=256)
    judge = PartJudge(PartTracker(Belt.from_source(belt, 256)), threshold=-100.0)  # every part rejected
    page = LivePage(port=0, source=str(line), map_threshold=inspector.map_threshold)
    release = threading.Event()
    watching = threading.Thread(
        target=watch,
        args=(inspector, HeldSource(frames, release), tmp_path / "out"),
        kwargs=dict(parts=judge, serve=page, progress=False),
        daemon=True,
    )
    watching.start()
    try:
        deadline = 0
        while page.state()["frames"] < len(frames) and deadline < 600:
            threading.Event().wait(0.2)
            deadline += 1
        assert page.state()["frames"] == len(frames) and page.state()["verdicts"]
        browser = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1000,900",
            "--virtual-time-budget=4000",
        ]
        shot = tmp_path / "page.png"
        subprocess.run([*browser, f"--screenshot={shot}", page.url], check=True, capture_output=True, timeout=120)
        dom = subprocess.run([*browser, "--dump-dom", page.url], check=True, capture_output=True, timeout=120).stdout
    finally:
        release.set()
        watching.join(60)
    text = dom.decode()
    assert f"frames {len(frames)}" in text and 'class="reject">reject' in text and "frame.jpg?n=" in text
    picture = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    # The frame beside its heatmap lies under the counters: many colours there, not the page's plain background.
    region = picture[80:330, 10:600].reshape(-1, 3)
    assert len(np.unique(region // 16, axis=0)) > 50
    assert not watching.is_alive()
    with pytest.raises(OSError):  # the page stopped with the watch
        urllib.request.urlopen(page.url, timeout=2)
