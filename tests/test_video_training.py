"""train --video: a video of normal operation as the training set (issue 27, part 1)."""

from __future__ import annotations

import json

import pytest
from cli_checks import one_error_line

from efficientad_fast.cli import main
from efficientad_fast.data import DataError, make_synthetic_video, open_dataset, video_training_set
from efficientad_fast.data.video_frames import BLOCK_FRAMES, HOLDOUT_EVERY

pytest.importorskip("av")


def _names(folder):
    return sorted(p.name for p in folder.glob("*.png"))


@pytest.fixture(scope="module")
def normal_video(tmp_path_factory):
    """A normal run of the board conveyor, long enough for one held-out block (260 frames)."""
    return make_synthetic_video(tmp_path_factory.mktemp("video") / "normal.avi", frames=260, defect_fraction=0.0)


def test_held_out_frames_are_whole_blocks_of_consecutive_frames(normal_video, tmp_path):
    out = video_training_set(normal_video, tmp_path / "frames", log=lambda line: None)
    held = _names(out / "validation" / "good")
    first = BLOCK_FRAMES * (HOLDOUT_EVERY - 1)
    assert held == [f"frame_{i:06d}.png" for i in range(first, first + BLOCK_FRAMES)]
    assert len(_names(out / "train" / "good")) == 260 - BLOCK_FRAMES
    assert len(open_dataset(out, "folder", None, "train", 256)) == 260 - BLOCK_FRAMES
    assert len(open_dataset(out, "folder", None, "validation", 256)) == BLOCK_FRAMES


def test_a_short_video_holds_out_its_last_tenth_and_every_keeps_one_in_n(normal_video, tmp_path):
    out = video_training_set(normal_video, tmp_path / "frames", every=3, max_frames=40, log=lambda line: None)
    assert _names(out / "validation" / "good") == [f"frame_{i:06d}.png" for i in range(108, 120, 3)]
    assert _names(out / "train" / "good") == [f"frame_{i:06d}.png" for i in range(0, 108, 3)]


def test_an_interrupted_extraction_continues_and_other_settings_start_afresh(normal_video, tmp_path):
    lines = []
    out = video_training_set(normal_video, tmp_path / "frames", max_frames=30, log=lines.append)
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "train" / "good" / "frame_000003.png").unlink()  # as a kill would leave it: one frame short
    video_training_set(normal_video, out, max_frames=30, log=lines.append)
    after = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert set(after) == set(before) and [n for n in after if after[n] != before[n]] == ["frame_000003.png"]
    assert not any("afresh" in line for line in lines)
    video_training_set(normal_video, out, every=2, max_frames=30, log=lines.append)
    assert "extracting afresh" in lines[-2] and len(list(out.rglob("*.png"))) == 30
    assert json.loads((out / "source.json").read_text())["every"] == 2


def test_bad_videos_and_settings_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no video file"):
        video_training_set(tmp_path / "missing.avi", tmp_path / "a")
    text = tmp_path / "text.avi"
    text.write_text("not a video")
    with pytest.raises(DataError, match=f"cannot read the video {text}"):
        video_training_set(text, tmp_path / "b")
    one = make_synthetic_video(tmp_path / "one.avi", frames=1, defect_fraction=0.0)
    with pytest.raises(DataError, match="holds 1 frames .* at least 2"):
        video_training_set(one, tmp_path / "c")
    with pytest.raises(ValueError, match="every must be >= 1 and max_frames >= 2"):
        video_training_set(one, tmp_path / "d", every=0)


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "the following arguments are required: --data, --dataset (or --video FILE)"),
        (["--video", "{video}", "--data", "{tmp}"], "--video trains one model on the video's frames: leave out --data"),
        (["--data", "{tmp}", "--dataset", "folder", "--every", "2"], "--every: for the frames of --video FILE only"),
        (["--video", "{video}", "--max-frames", "1"], "argument --max-frames: must be >= 2, got 1"),
        (
            ["--video", "{video}", "--threshold-from", "{tmp}/no.avi"],
            "the labelled clip or folder {tmp}/no.avi does not",
        ),
    ],
)
def test_train_video_usage_errors_are_one_line(args, words, normal_video, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a.format(video=normal_video, tmp=tmp_path) for a in args]
    assert main(["train", *args, "--out", str(out)]) == 2
    assert words.format(tmp=tmp_path) in one_error_line("train", capsys.readouterr().err)
    assert not out.exists()


def test_train_video_trains_on_the_frames_and_records_the_video(normal_video, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--video", str(normal_video), "--every", "10", "--out", str(out), "--steps", "1"]
    assert main([*args, "--teacher", "random", "--penalty-images", "none", "--workers", "0", "--quiet"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train_images"] + summary["held_out_images"] == 26 and summary["held_out_images"] == 2
    assert summary["video"] == {"path": str(normal_video), "every": 10, "max_frames": None}
    assert (out / "model.pt").is_file() and "trained on 24 frames of" in capsys.readouterr().out


def test_a_labelled_clip_becomes_good_and_defect_frames(tmp_path):
    from efficientad_fast.data import labelled_video_set, read_video_labels

    clip = make_synthetic_video(tmp_path / "clip.avi", frames=48, defect_fraction=0.5, seed=3)
    labels = read_video_labels(clip)
    out = labelled_video_set(clip, tmp_path / "labelled", log=lambda line: None)
    assert _names(out / "defect") == [f"frame_{r['frame']:06d}.png" for r in labels if r["defective"]]
    assert _names(out / "good") == [f"frame_{r['frame']:06d}.png" for r in labels if not r["defective"]]
    normal = make_synthetic_video(tmp_path / "normal.avi", frames=8, defect_fraction=0.0)
    with pytest.raises(DataError, match="a threshold needs normal and defective frames"):
        labelled_video_set(normal, tmp_path / "normal_labelled", log=lambda line: None)
    (tmp_path / "normal.avi.labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no ground truth"):
        labelled_video_set(normal, tmp_path / "x")


def test_train_video_with_the_threshold_from_a_labelled_clip(normal_video, tmp_path):
    clip = make_synthetic_video(tmp_path / "clip.avi", frames=36, defect_fraction=0.5, seed=4)
    out = tmp_path / "run"
    args = ["train", "--video", str(normal_video), "--every", "20", "--threshold-from", str(clip), "--out", str(out)]
    assert (
        main([*args, "--steps", "1", "--teacher", "random", "--penalty-images", "none", "--workers", "0", "--quiet"])
        == 0
    )
    assert (out / "threshold_frames" / "defect").is_dir()
    from efficientad_fast import load

    assert load(out / "model.pt").threshold_source.startswith("image: F1-optimal")


def test_a_rerun_on_a_short_video_keeps_its_held_out_frames_out_of_training(normal_video, tmp_path):
    """The ninth probe (V30b, V41): a rerun wrote the short video's held-out frames into train/
    a second time (the model trained on its calibration frames; a resume was refused)."""
    out = video_training_set(normal_video, tmp_path / "frames", max_frames=30, log=lambda line: None)
    held = _names(out / "validation" / "good")
    video_training_set(normal_video, out, max_frames=30, log=lambda line: None)
    assert _names(out / "validation" / "good") == held and len(held) == 3
    assert not set(held) & set(_names(out / "train" / "good")) and len(_names(out / "train" / "good")) == 27


def test_resume_refuses_the_checkpoint_of_another_video(normal_video, tmp_path, capsys):
    """The ninth probe (V42): --resume with another video of the same length went on training
    the first video's checkpoint on the second one's frames."""
    other = make_synthetic_video(tmp_path / "other.avi", frames=260, defect_fraction=0.0, seed=9)
    out = tmp_path / "run"
    quick = ["--every", "20", "--steps", "1", "--teacher", "random", "--penalty-images", "none", "--workers", "0"]
    assert main(["train", "--video", str(normal_video), "--out", str(out), *quick, "--quiet"]) == 0
    assert main(["train", "--video", str(other), "--out", str(out), *quick, "--quiet", "--resume"]) == 2
    assert "data_source" in one_error_line("train", capsys.readouterr().err)


def test_a_labels_file_with_a_non_number_names_its_line(tmp_path):
    """The ninth probe (V20): a non-number in the labels CSV was a bare int() error."""
    from efficientad_fast.data import read_video_labels

    clip = make_synthetic_video(tmp_path / "clip.avi", frames=6, defect_fraction=0.5)
    labels = tmp_path / "clip.avi.labels.csv"
    lines = labels.read_text().splitlines()
    lines[3] = "2,x,0,0"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{labels}, line 4: every field must be a whole number"):
        read_video_labels(clip)


@pytest.mark.parametrize(
    "edit, words",
    [
        ("bom", None),
        ("misspelt", "the header frm,defective,part,glitch lacks frame"),
        ("twice", "line 5: frame 2 is listed again (first on line 4)"),
        ("minus-one", "line 4: need frame >= 0 and defective 0 or 1"),
    ],
)
def test_a_labels_file_from_a_spreadsheet_or_with_odd_rows(edit, words, tmp_path):
    """The tenth probe: a byte-order mark (Excel's "CSV UTF-8") or a misspelt header was a
    KeyError traceback after the frames were extracted; a frame listed twice, or defective -1,
    was taken silently."""
    from efficientad_fast.data import read_video_labels

    clip = make_synthetic_video(tmp_path / "clip.avi", frames=6, defect_fraction=0.5)
    labels = tmp_path / "clip.avi.labels.csv"
    lines = labels.read_text().splitlines()
    if edit == "bom":
        labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
        assert [row["frame"] for row in read_video_labels(clip)] == list(range(6))
        return
    if edit == "misspelt":
        lines[0] = lines[0].replace("frame", "frm")
    elif edit == "twice":
        lines.insert(4, lines[3])
    else:
        lines[3] = "2,-1,0,0"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{labels}.*{words.replace('(', '.').replace(')', '.')}"):
        read_video_labels(clip)


def test_a_clips_bad_labels_are_refused_before_the_frames_are_extracted(normal_video, tmp_path, capsys):
    clip = make_synthetic_video(tmp_path / "clip.avi", frames=6, defect_fraction=0.5)
    labels = tmp_path / "clip.avi.labels.csv"
    labels.write_text(labels.read_text().replace("frame", "frm", 1))
    out = tmp_path / "out"
    assert main(["train", "--video", str(normal_video), "--threshold-from", str(clip), "--out", str(out)]) == 2
    assert "lacks frame" in one_error_line("train", capsys.readouterr().err) and not out.exists()
