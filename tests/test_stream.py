"""The live-line scorer (efficientad_fast.stream): smoothers against hand-computed sequences,
the bounded queue dropping and counting frames, damaged frames reported while the stream
goes on, frames.jsonl, Ctrl-C, the watch command, the synthetic conveyor video, and
smoothing lowering false alarms at equal recall with a model trained a few steps."""

from __future__ import annotations

import json
import signal
import time
import tracemalloc

import numpy as np
import pytest
import torch

from efficientad_fast.model import Prediction
from efficientad_fast.stream import (
    ArraySource,
    EMASmoothing,
    HysteresisSmoothing,
    Inspector,
    KOfNSmoothing,
    NoSmoothing,
    alarm_figures,
    make_smoother,
    open_source,
    prepare_frame,
    replay,
    threshold_for_recall,
    watch,
)

av = pytest.importorskip("av", reason="PyAV (the [video] extra) is not installed")

from efficientad_fast._device import cpu_has_bf16_kernels  # noqa: E402
from efficientad_fast.data import make_synthetic_video, read_video_labels  # noqa: E402

# bf16 where the CPU has its kernels; elsewhere (AVX2 only) it runs many times slower than fp32
FAST_DTYPE = "bf16" if cpu_has_bf16_kernels() else "fp32"

# -- smoothers ------------------------------------------------------------------------------


def run_smoother(smoother, scores):
    return [smoother.update(s) for s in scores]


def test_no_smoothing_is_the_raw_score():
    assert run_smoother(NoSmoothing(0.5), [0.4, 0.6, 0.5]) == [(0.4, False), (0.6, True), (0.5, False)]


def test_ema_against_hand_computed_sequence():
    out = run_smoother(EMASmoothing(0.5, alpha=0.5), [0.0, 1.0, 1.0, 0.0, 0.0])
    # s0 = x0; s_t = 0.5 x_t + 0.5 s_(t-1)
    assert [v for v, _ in out] == pytest.approx([0.0, 0.5, 0.75, 0.375, 0.1875])
    assert [a for _, a in out] == [False, False, True, False, False]
    assert EMASmoothing(0.5, alpha=0.4).latency_frames == pytest.approx(1.5)


def test_kofn_against_hand_computed_sequence():
    scores = [0.9, 0.1, 0.8, 0.2, 0.1, 0.7, 0.6]
    out = run_smoother(KOfNSmoothing(0.5, k=2, n=3), scores)
    # windows: [.9] [.9 .1] [.9 .1 .8] [.1 .8 .2] [.8 .2 .1] [.2 .1 .7] [.1 .7 .6]; smoothed: 2nd largest
    assert [v for v, _ in out] == pytest.approx([0.9, 0.1, 0.8, 0.2, 0.2, 0.2, 0.6])
    assert [a for _, a in out] == [False, False, True, False, False, False, True]


def test_kofn_raises_k_minus_1_frames_late_and_holds_n_minus_k():
    smoother = KOfNSmoothing(0.5, k=3, n=5)
    alarms = [a for _, a in run_smoother(smoother, [0.0] * 5 + [1.0] * 6 + [0.0] * 5)]
    assert alarms.index(True) == 5 + 2  # step at frame 5, alarm k - 1 = 2 frames later
    assert len(alarms) - 1 - alarms[::-1].index(True) == 10 + 2  # holds n - k = 2 frames after the last
    assert smoother.latency_frames == 2


def test_hysteresis_against_hand_computed_sequence():
    scores = [0.4, 0.6, 0.45, 0.35, 0.29, 0.45, 0.51]
    out = run_smoother(HysteresisSmoothing(0.5, off_threshold=0.3), scores)
    assert [v for v, _ in out] == scores
    assert [a for _, a in out] == [False, True, True, True, False, False, True]
    assert HysteresisSmoothing(0.5).off_threshold == pytest.approx(0.4)  # default: 0.2 x |threshold| lower


def test_hysteresis_removes_flicker_around_the_threshold():
    scores = [0.49, 0.52, 0.48, 0.53, 0.47, 0.51, 0.2, 0.2]
    raw_onsets = np.diff([0] + [a for _, a in run_smoother(NoSmoothing(0.5), scores)]).clip(0).sum()
    held = [a for _, a in run_smoother(HysteresisSmoothing(0.5), scores)]
    assert raw_onsets == 3 and held == [False, True, True, True, True, True, False, False]


def test_bad_smoother_settings():
    with pytest.raises(ValueError, match="smoothing must be one of"):
        make_smoother("median", 0.1)
    with pytest.raises(ValueError, match="alpha"):
        EMASmoothing(0.1, alpha=0.0)
    with pytest.raises(ValueError, match="k <= n"):
        KOfNSmoothing(0.1, k=4, n=3)
    with pytest.raises(ValueError, match="must not exceed"):
        HysteresisSmoothing(0.1, off_threshold=0.2)


def test_alarm_figures_and_threshold_for_recall():
    labels = [
        {"frame": i, "defective": d, "part": p}
        for i, (d, p) in enumerate([(0, 0), (0, 0), (1, 1), (1, 1), (0, 2), (0, 2), (1, 3), (1, 3)])
    ]
    figures = alarm_figures([True, False, True, False, False, False, False, False], labels)
    assert figures["false_alarm_frames"] == 1 and figures["false_alarms_per_1000"] == 250.0
    assert figures["defective_parts"] == 2 and figures["found_parts"] == 1 and figures["part_recall"] == 0.5
    scores = [0.1, 0.9, 0.8, 0.7, 0.2, 0.1, 0.6, 0.65]
    # raw: both parts found down to 0.65 (part 3's best), which also flags frame 1 (0.9)
    threshold = threshold_for_recall(scores, labels, "none", 1.0)
    assert 0.6 < threshold < 0.65
    assert replay(scores, NoSmoothing(threshold))[1] == [False, True, True, True, False, False, False, True]


# -- the inspector with stand-in predictors (no network) -----------------------------------


class StandIn:
    """Called like a FastPredictor of batch 1: sleeps ``delay`` s, then returns the next
    score of ``scores`` (cycling) and a flat map of that value."""

    def __init__(self, scores=(0.05,), delay=0.0, size=256, interrupt_at=None, interrupt=KeyboardInterrupt):
        self.scores, self.delay, self.size, self.calls, self.interrupt_at = list(scores), delay, size, 0, interrupt_at
        self.interrupt = interrupt

    def __call__(self, images):
        assert images.shape == (1, 3, self.size, self.size) and images.dtype == torch.float32
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise self.interrupt
        time.sleep(self.delay)
        value = self.scores[self.calls % len(self.scores)]
        self.calls += 1
        return Prediction(score=torch.tensor([value]), anomaly_map=torch.full((1, 1, self.size, self.size), value))


@pytest.fixture(scope="module")
def model():
    from efficientad_fast.testing import random_model

    return random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).eval()


def frames_of(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_threshold_defaults_to_the_models_threshold_else_the_q_b_level(model):
    inspector = Inspector(model, predictor=StandIn())
    assert inspector.threshold == 0.1 and inspector.map_threshold == 0.1
    from efficientad_fast.testing import random_model

    with_image_threshold = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9))
    if hasattr(with_image_threshold, "set_thresholds"):  # models that store an image threshold use it
        with_image_threshold.set_thresholds(image=0.3)
        assert Inspector(with_image_threshold, predictor=StandIn()).threshold == 0.3

    # The sixteenth probe: the message named only the API's threshold=, not watch's --threshold.
    with pytest.raises(ValueError, match=r"not calibrated .*\(threshold=, watch --threshold\)"):
        Inspector(random_model("small", seed=0), predictor=StandIn())


def test_update_scores_one_frame_and_smooths(model):
    inspector = Inspector(model, smoothing="ema", ema_alpha=0.5, predictor=StandIn([0.0, 0.4, 0.4]))
    results = [inspector.update(frame) for frame in frames_of(3)]
    assert [r.frame for r in results] == [0, 1, 2]
    assert [r.score for r in results] == pytest.approx([0.0, 0.4, 0.4])
    assert [r.smoothed for r in results] == pytest.approx([0.0, 0.2, 0.3])
    assert [r.alarm for r in results] == [False, True, True]
    assert results[0].image.shape == (3, 256, 256) and results[0].anomaly_map.shape == (256, 256)


def test_map_ema_smooths_pixels_before_the_max(model):
    inspector = Inspector(model, smoothing="none", map_alpha=0.5, predictor=StandIn([0.0, 0.4]))
    results = [inspector.update(frame) for frame in frames_of(2)]
    assert results[1].score == pytest.approx(0.4) and results[1].smoothed == pytest.approx(0.2)
    assert inspector.latency_frames == pytest.approx(1.0)


def test_calibrate_sets_the_quantile_of_smoothed_normal_scores(model):
    scores = list(np.linspace(0.0, 1.0, 201))
    inspector = Inspector(model, smoothing="none", predictor=StandIn(scores))
    threshold = inspector.calibrate(frames_of(201, size=32))
    assert threshold == pytest.approx(np.quantile(scores, 0.995))
    assert inspector.threshold == threshold


def test_live_queue_drops_and_counts_frames_with_bounded_memory(model):
    frame_bytes = 3 * 256 * 256 * 4  # a prepared float32 frame
    n = 60

    def camera():  # frames made on demand, as a camera delivers them
        for i in range(n):
            yield frames_of(1, size=256, seed=i)[0]

    inspector = Inspector(model, smoothing="none", queue_size=2, predictor=StandIn(delay=0.02))
    tracemalloc.start()
    try:
        # keep only the numbers: each result holds its frame and map for pictures
        results = [(r.frame, r.dropped) for r in inspector.run(ArraySource(camera(), fps=1000, live=True))]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dropped = inspector.dropped
    print(f"\nlive source, scoring slower: {len(results)} scored, {dropped} dropped, peak {peak / 2**20:.1f} MiB")
    assert dropped > 0 and len(results) + dropped == n
    counts = [d for _, d in results]
    assert counts == sorted(counts) and counts[-1] <= dropped
    assert peak < 8 * frame_bytes  # bounded by the queue, not by the 60 frames (~47 MiB)


def test_realtime_plays_a_file_at_its_timestamps_and_drops(model):
    inspector = Inspector(model, smoothing="none", queue_size=1, predictor=StandIn(delay=0.03))
    began = time.perf_counter()
    results = list(inspector.run(ArraySource(frames_of(30), fps=100), realtime=True))
    assert time.perf_counter() - began >= 0.29  # 30 frames at 100 fps
    assert inspector.dropped > 0 and len(results) + inspector.dropped == 30


def test_file_source_waits_for_scoring_and_drops_nothing(model):
    inspector = Inspector(model, smoothing="none", queue_size=1, predictor=StandIn(delay=0.005))
    results = list(inspector.run(frames_of(20)))
    assert [r.frame for r in results] == list(range(20)) and inspector.dropped == 0


def test_max_latency_skips_stale_frames(model):
    inspector = Inspector(model, smoothing="none", queue_size=4, max_latency_ms=30, predictor=StandIn(delay=0.02))
    results = list(inspector.run(frames_of(40)))
    assert inspector.dropped > 0 and len(results) + inspector.dropped == 40
    frames = [r.frame for r in results]
    assert frames == sorted(frames) and frames[-1] == 39  # the newest frame is always scored


def damage_frame(src, dst, index):
    """Copy the video ``src`` to ``dst`` with the bytes of frame ``index`` replaced by noise."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as target:
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        for i, packet in enumerate(source.demux(stream_in)):
            if packet.size == 0:
                continue
            if i == index:
                noise = np.random.default_rng(0).integers(0, 256, packet.size, dtype=np.uint8).tobytes()
                broken = av.Packet(noise)
                broken.pts, broken.dts, broken.time_base = packet.pts, packet.dts, packet.time_base
                packet = broken
            packet.stream = stream_out
            target.mux(packet)


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video")
    return make_synthetic_video(
        folder / "conveyor.avi", frames=12, frame_size=64, defect_fraction=0.5, move_frames=1, dwell_frames=3
    )


def test_make_synthetic_video_frames_and_labels(small_video, tmp_path):
    labels = read_video_labels(small_video)
    with av.open(str(small_video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == len(labels) == 12 and frames[0].shape == (64, 64, 3)
    assert [r["frame"] for r in labels] == list(range(12))
    assert {r["defective"] for r in labels} == {0, 1}
    again = make_synthetic_video(
        tmp_path / "again.avi", frames=12, frame_size=64, defect_fraction=0.5, move_frames=1, dwell_frames=3
    )
    assert read_video_labels(again) == labels
    with pytest.raises(ValueError, match="codec"):
        make_synthetic_video(tmp_path / "x.gif", frames=2)


def test_damaged_frame_mid_video_is_reported_and_the_stream_goes_on(model, small_video, tmp_path):
    damaged = tmp_path / "damaged.avi"
    damage_frame(small_video, damaged, 5)
    inspector = Inspector(model, smoothing="kofn", predictor=StandIn())
    results = list(inspector.run(damaged))
    assert [r.frame for r in results] == list(range(12))
    assert [r.error is not None for r in results] == [i == 5 for i in range(12)]
    assert "frame 5" in results[5].error and results[5].score is None
    assert results[6].time_s == pytest.approx(6 / 25)  # timestamps from the file


def test_corrupt_image_mid_folder_is_reported(model, tmp_path):
    from PIL import Image

    for i, frame in enumerate(frames_of(6)):
        Image.fromarray(frame).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "003.png").write_bytes(b"not a png")
    results = list(Inspector(model, predictor=StandIn()).run(tmp_path))
    assert [r.frame for r in results] == list(range(6))
    assert [r.error is not None for r in results] == [False, False, False, True, False, False]
    assert "003.png" in results[3].error


def test_watch_writes_one_json_line_per_frame_and_alarm_pictures(model, small_video, tmp_path):
    damaged = tmp_path / "damaged.avi"
    damage_frame(small_video, damaged, 7)
    scores = [0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.0, 0.0]  # 7 fails to decode
    inspector = Inspector(model, smoothing="none", predictor=StandIn(scores))
    summary = watch(inspector, damaged, tmp_path / "out", save_video=tmp_path / "out" / "annotated.avi", progress=False)
    lines = (tmp_path / "out" / "frames.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 12 and [r["frame"] for r in rows] == list(range(12))
    keys = {"frame", "time_s", "score", "smoothed", "alarm", "latency_ms", "dropped"}
    assert all(keys <= set(r) for r in rows) and set(rows[7]) == keys | {"error"}
    # the stand-in's scores go to the frames that decoded: 0 0 .5 .5 0 0 0 | - | .5 .5 .5 0
    assert [i for i, r in enumerate(rows) if r["alarm"]] == [2, 3, 8, 9, 10]
    assert sorted(p.name for p in (tmp_path / "out" / "alarms").iterdir()) == ["frame_000002.png", "frame_000008.png"]
    assert summary["alarms"] == 2 and summary["errors"] == 1 and summary["scored"] == 11
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["frames"] == 12
    with av.open(str(tmp_path / "out" / "annotated.avi")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 11


@pytest.mark.parametrize("signal_name", ["Ctrl-C", "SIGTERM"])
def test_ctrl_c_or_sigterm_keeps_what_was_written(model, small_video, tmp_path, signal_name):
    from efficientad_fast._signals import Terminated
    from efficientad_fast.stream import format_summary

    stop = Terminated(signal.SIGTERM) if signal_name == "SIGTERM" else KeyboardInterrupt()
    inspector = Inspector(model, smoothing="none", predictor=StandIn(interrupt_at=5, interrupt=stop))
    with pytest.raises(KeyboardInterrupt):
        watch(inspector, small_video, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == [0, 1, 2, 3, 4]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] and summary["frames"] == 5 and summary["stopped_by"] == signal_name
    assert f"interrupted ({signal_name})" in format_summary(summary)


def test_sources_and_their_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no video file"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(TypeError, match="source must be"):
        open_source(3.5)
    assert open_source("rtsp://127.0.0.1:1/x").live and open_source("/dev/video7").format == "v4l2"
    with pytest.raises(ValueError, match="uint8"):
        prepare_frame(np.zeros((4, 4)), (256, 256))


# -- the watch command ---------------------------------------------------------------------


def test_watch_command_end_to_end(op_library, model, small_video, tmp_path, capsys):
    from efficientad_fast.cli import main

    path = tmp_path / "model.pt"
    model.save(path)
    out = tmp_path / "watch"
    code = main(
        [
            "watch",
            "--model",
            str(path),
            "--source",
            str(small_video),
            "--out",
            str(out),
            "--smoothing",
            "kofn",
            "--max-frames",
            "3",
            "--dtype",
            FAST_DTYPE,
            "--quiet",
            "--save-video",
            str(out / "annotated.mp4"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == [0, 1, 2] and all(np.isfinite(r["score"]) for r in rows)
    assert "frames: 3 read" in printed and (out / "annotated.mp4").is_file()
    assert main(["watch", "--model", str(path), "--source", str(tmp_path / "nope.avi")]) == 2
    assert main(["watch", "--model", str(path), "--source", str(small_video), "--kofn-k", "0"]) == 2


def test_demo_video_step_writes_its_report_section(op_library, model, tmp_path, monkeypatch):
    from efficientad_fast.jobs import demo as demo_job

    monkeypatch.setattr(demo_job, "DEMO_VIDEO_FRAMES", 8)
    monkeypatch.setattr(demo_job, "DEMO_NORMAL_FRAMES", 4)
    lines = demo_job._demo_video(model, tmp_path, "board", 0, False, lambda *a: None)
    text = "\n".join(lines)
    assert text.startswith("## Watching a conveyor (board)") and "| kofn | 2.0 |" in text
    assert (tmp_path / "video" / "scores.png").is_file() and "![scores](video/scores.png)" in text
    rows = (tmp_path / "video" / "watch" / "frames.jsonl").read_text().splitlines()
    assert len(rows) == 8 and model.dtype == torch.float32  # the demo scores a bf16 copy


# -- smoothing on the synthetic conveyor, with a model trained a few steps ------------------


def test_smoothing_lowers_false_alarms_at_equal_recall_on_the_conveyor(op_library, tmp_path):
    """A model trained 2 steps on a normal clip of the weave conveyor scores a conveyor with
    defective parts and one-frame camera glitches; at the recall of defective parts raw
    scores reach with their best threshold, ema and k-of-n raise fewer false alarms."""
    from efficientad_fast import EfficientAD
    from efficientad_fast.stream import compare_smoothers, smoother_table
    from efficientad_fast.train import TrainConfig, calibrate, train

    normal = make_synthetic_video(
        tmp_path / "normal.avi", "weave", frames=12, frame_size=128, defect_fraction=0.0, glitch_rate=0.0, seed=1
    )
    conveyor = make_synthetic_video(
        tmp_path / "conveyor.avi", "weave", frames=48, frame_size=128, defect_fraction=0.4, glitch_rate=0.08, seed=0
    )
    images = np.stack([prepare_frame(f.image, (256, 256)) for f in open_source(normal)])
    images = torch.from_numpy((images * 255).round().astype(np.uint8))
    torch.manual_seed(0)
    model = EfficientAD(teacher="random")
    amp = "bf16" if FAST_DTYPE == "bf16" else None
    train(model, images, TrainConfig(steps=2, amp=amp, workers=0, progress=False, checkpoint_every=0))
    calibrate(model, images[::2])
    inspector = Inspector(model.set_precision(FAST_DTYPE), smoothing="none")
    scores = [r.score for r in inspector.run(conveyor)]
    labels = read_video_labels(conveyor)
    assert len(scores) == len(labels) == 48 and None not in scores
    assert sum(r["glitch"] for r in labels) > 0 and sum(r["defective"] for r in labels) > 0
    rows = {r["smoothing"]: r for r in compare_smoothers(scores, labels, recall=0.5)}
    print("\nat equal recall of defective parts (0.5):\n" + smoother_table(rows.values()))
    raw = rows["none"]["false_alarm_frames"]
    assert raw > 0
    assert rows["ema"]["false_alarm_frames"] < raw and rows["kofn"]["false_alarm_frames"] < raw
    assert all(r["part_recall"] >= 0.5 for r in rows.values())


def test_a_silent_network_source_says_it_timed_out(monkeypatch):
    """PyAV's read timeout surfaced as FFmpeg's 'Immediate exit requested'."""
    import http.server
    import threading

    from efficientad_fast.stream import sources

    class Silent(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            time.sleep(2)  # headers, then nothing

        def log_message(self, *args):
            pass

    monkeypatch.setattr(sources, "READ_TIMEOUT_S", 0.5)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with pytest.raises(ValueError, match=r"no data came for 0.5 s \(timed out\)"):
            sources.VideoSource(f"http://127.0.0.1:{httpd.server_address[1]}/v.mp4").open()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_a_signal_while_watch_finishes_keeps_the_video_and_the_summary(model, small_video, tmp_path, monkeypatch):
    """The fifth probe: SIGTERM during the video's closing cut it and skipped summary.json (the
    command then failed reading it). Finishing holds the signal, then stops."""
    import importlib
    import os

    watch_module = importlib.import_module("efficientad_fast.stream.watch")  # the module, not the function
    real_close = watch_module._VideoWriter.close

    def close_then_signal(self):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives as the encoder flushes
        real_close(self)

    monkeypatch.setattr(watch_module._VideoWriter, "close", close_then_signal)
    inspector = Inspector(model, smoothing="none", predictor=StandIn())
    from efficientad_fast._signals import terminate_as_interrupt

    with terminate_as_interrupt(), pytest.raises(KeyboardInterrupt):
        watch(inspector, small_video, tmp_path / "out", save_video=tmp_path / "out" / "a.avi", progress=False)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["frames"] == 12
    with av.open(str(tmp_path / "out" / "a.avi")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12


def test_a_killed_runs_cut_video_is_removed_by_the_next_watch(model, small_video, tmp_path, capsys):
    """The thirteenth probe (W32): after SIGKILL, --save-video's temporary file stayed, also
    through a rerun writing the same video (predict removes its killed run's temporaries)."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a process number that no longer runs
    out = tmp_path / "out"
    out.mkdir()
    stale, other = out / f"a.tmp{dead.pid}.avi", out / f"b.tmp{dead.pid}.avi"
    stale.write_bytes(b"cut"), other.write_bytes(b"another video's")
    inspector = Inspector(model, smoothing="none", predictor=StandIn())
    watch(inspector, small_video, out, save_video=out / "a.avi", progress=False)
    assert not stale.exists() and other.exists() and (out / "a.avi").is_file()
    assert f"removed {stale}, left by an earlier run that was killed" in capsys.readouterr().err
