"""Reliability: predict and FastPredictor shared by threads, resume after Ctrl-C mid-step,
model files with bad statistics or flipped bytes, EXIF orientation, the range check of
exported packages, a full disk while saving, a rerun into another run's folder, an
unwritable output folder, unreadable files among the images to predict, and files that
load to a clear error."""

from __future__ import annotations

import csv
import errno
import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import train_args
from PIL import Image

import efficientad_fast
from efficientad_fast import EfficientAD, reference_anomaly_map
from efficientad_fast.data._io import image_size_of, open_image, to_rgb_array
from efficientad_fast.testing import random_model

pytestmark = pytest.mark.usefixtures("op_library")


@pytest.fixture(scope="module")
def two_images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(1, 3, 256, 256, generator=g) for _ in range(2)]


def _in_threads(*calls):
    """Run each call in its own thread (named "t0", "t1", ...); return their results."""
    results, errors = [None] * len(calls), []

    def work(i, call):
        try:
            results[i] = call()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, c), name=f"t{i}") for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


# -- 1. predict from two threads ----------------------------------------------------------


def test_predict_from_two_threads_on_a_training_model(two_images):
    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).train()
    a, b = two_images
    lone = [model.predict(a), model.predict(b)]
    assert model.training and model.autoencoder.decoder.dropout.training
    # predict has eval semantics (no dropout) whatever the training flag.
    model.eval()
    reference = model.predict(a)
    model.train()
    assert torch.equal(reference.anomaly_map, lone[0].anomaly_map)

    # t1 starts once t0 is at the autoencoder's input, and t0 finishes its whole predict
    # while t1 waits there: with a predict that flips the mode and back, t1's dropout ran
    # in training mode and the model was left in eval mode.
    t0_at_autoencoder, t1_at_autoencoder, t0_done = threading.Event(), threading.Event(), threading.Event()

    def hold(module, inputs):
        if threading.current_thread().name == "t0":
            t0_at_autoencoder.set()
            t1_at_autoencoder.wait(timeout=60)
        elif threading.current_thread().name == "t1":
            t1_at_autoencoder.set()
            t0_done.wait(timeout=60)

    handle = model.autoencoder.encoder.register_forward_pre_hook(hold)

    def first():
        try:
            return model.predict(a)
        finally:
            t0_done.set()

    def second():
        t0_at_autoencoder.wait(timeout=60)
        return model.predict(b)

    try:
        got = _in_threads(first, second)
    finally:
        handle.remove()
    for mine, alone in zip(got, lone):
        assert torch.equal(mine.anomaly_map, alone.anomaly_map)
        assert torch.equal(mine.score, alone.score)
    assert model.training and all(m.training for m in model.modules())


def test_load_returns_an_eval_mode_model(tmp_path):
    model = random_model("small", seed=0).train()
    model.save(tmp_path / "model.pt")
    loaded = efficientad_fast.load(tmp_path / "model.pt")
    assert not any(m.training for m in loaded.modules())


# -- 2. one FastPredictor, two threads ----------------------------------------------------


def test_fast_predictor_shared_by_two_threads(two_images):
    from efficientad_fast.deploy.inference import FastPredictor

    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9))
    predictor = FastPredictor(model, 1, 256, cuda_graph=False, warmup=0)
    a, b = two_images
    lone = [predictor(a), predictor(b)]

    # t0 has copied its images into the input buffer and pauses before computing when t1
    # starts: without a lock t1 overwrites the buffer under t0.
    t0_in_run = threading.Event()
    run = predictor._run

    def slow_run(images):
        if threading.current_thread().name == "t0":
            t0_in_run.set()
            time.sleep(1.0)
        return run(images)

    predictor._run = slow_run

    def second():
        t0_in_run.wait(timeout=60)
        return predictor(b)

    got = _in_threads(lambda: predictor(a), second)
    for mine, alone in zip(got, lone):
        assert torch.equal(mine.anomaly_map, alone.anomaly_map)
        assert torch.equal(mine.score, alone.score)


# -- 3. resume after Ctrl-C in the middle of a step ---------------------------------------


def test_resume_after_an_interrupt_mid_step_is_bit_identical(tmp_path, monkeypatch):
    from efficientad_fast.train import TrainConfig, TrainingInterrupted, train
    from efficientad_fast.train import loop as train_module

    g = torch.Generator().manual_seed(0)
    small = torch.rand(5, 3, 32, 32, generator=g)
    images = (torch.nn.functional.interpolate(small, size=256, mode="bilinear") * 255).round().to(torch.uint8)
    config = TrainConfig(steps=8, progress=False, workers=0, checkpoint_every=0)

    torch.manual_seed(0)
    straight = EfficientAD(teacher="random")
    expected = train(straight, images, config, penalty_images=images[:2], out_dir=tmp_path / "straight")

    # Ctrl-C in step 5, after its penalty pick and augmentation drew from the RNGs.
    augment, calls = train_module.augment, []

    def interrupting_augment(*args, **kwargs):
        out = augment(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(train_module, "augment", interrupting_augment)
    torch.manual_seed(0)
    interrupted = EfficientAD(teacher="random")
    with pytest.raises(TrainingInterrupted) as stop:
        train(interrupted, images, config, penalty_images=images[:2], out_dir=tmp_path / "resumed")
    assert stop.value.step == 4
    monkeypatch.setattr(train_module, "augment", augment)

    torch.manual_seed(123)
    resumed = EfficientAD(teacher="random")
    result = train(resumed, images, config, penalty_images=images[:2], out_dir=tmp_path / "resumed", resume=True)
    assert [r["step"] for r in result.history] == list(range(1, 9))
    for mine, want in zip(result.history, expected.history):
        assert {k: v for k, v in mine.items() if k != "time"} == {k: v for k, v in want.items() if k != "time"}
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        if torch.is_tensor(a):
            assert torch.equal(a, b), key
    saved = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("straight", "resumed")]
    for (key, a), b in zip(saved[0]["optimizer"]["state"].items(), saved[1]["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]), key


# -- 6. statistics that would give NaN or inf maps -----------------------------------------


@pytest.mark.parametrize("bad", ["std_zero", "std_one_zero", "std_nan", "mean_nan", "quantiles_nan"])
def test_save_and_load_refuse_bad_statistics(tmp_path, bad, monkeypatch):
    model = random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9))
    with torch.no_grad():
        if bad == "std_zero":
            model.teacher_std.zero_()
        elif bad == "std_one_zero":
            model.teacher_std[7] = 0
        elif bad == "std_nan":
            model.teacher_std[3] = float("nan")
        elif bad == "mean_nan":
            model.teacher_mean[3] = float("nan")
        else:
            model.quantiles.fill_(float("nan"))
    path = tmp_path / "model.pt"
    with pytest.raises(ValueError, match="refusing to save "):
        model.save(path)
    assert not path.exists()
    monkeypatch.setattr("efficientad_fast.model.check_statistics", lambda *args: None)  # a file made elsewhere
    model.save(path)
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        efficientad_fast.load(path)


def test_nan_quantiles_load_when_not_set(tmp_path):
    model = random_model("small", seed=0)
    with torch.no_grad():
        model.quantiles.fill_(float("nan"))  # unused until set_quantiles
    model.save(tmp_path / "model.pt")
    assert not efficientad_fast.load(tmp_path / "model.pt").quantiles_set


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_op_and_reference_refuse_a_bad_teacher_std(value):
    g = torch.Generator().manual_seed(0)
    teacher, student, ae = (torch.randn(1, c, 6, 6, generator=g) for c in (8, 16, 8))
    mean, std = torch.zeros(8), torch.ones(8)
    std[2] = value
    with pytest.raises(ValueError, match="teacher_std must be finite and > 0"):
        efficientad_fast.anomaly_map(teacher, student, ae, teacher_mean=mean, teacher_std=std)
    with pytest.raises(ValueError, match="teacher_std must be finite and > 0"):
        reference_anomaly_map(teacher, student, ae, teacher_mean=mean, teacher_std=std)


# -- 7. flipped bytes -----------------------------------------------------------------------


def _flip_bytes_in_largest_tensor(path):
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    # Local header: 30 bytes, then the name and the extra field, then the stored data.
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_load_refuses_a_file_with_flipped_bytes(tmp_path):
    path = tmp_path / "model.pt"
    random_model("small", seed=0).save(path)
    size = path.stat().st_size
    _flip_bytes_in_largest_tensor(path)
    assert path.stat().st_size == size
    with pytest.raises(ValueError, match="corrupt: checksum mismatch") as error:
        efficientad_fast.load(path)
    assert str(path) in str(error.value)


def test_load_refuses_a_flipped_bit_in_the_settings(tmp_path):
    """Issue 24, bug 1: one bit of the pickled image threshold (its exponent's lowest bit:
    the value doubles) changed in place, as a disk or a copy can; it loaded before."""
    import struct

    path = tmp_path / "model.pt"
    model = random_model("small", seed=0, quantiles=(0.1, 1.0, 0.1, 1.0))
    model.set_thresholds(image=0.1344, pixel=0.1)
    model.save(path)
    data = bytearray(path.read_bytes())
    packed = struct.pack(">d", 0.1344)  # pickle's BINFLOAT
    at = data.find(packed)
    assert at > 0 and data.find(packed, at + 1) == -1
    data[at + 1] ^= 0x10  # exponent + 1: 0.1344 -> 0.2688
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt: checksum mismatch"):
        efficientad_fast.load(path)


@pytest.mark.parametrize("change", ["alpha", "quantiles_set", "teacher_source", "pixel_threshold", "int8"])
def test_load_refuses_changed_settings_flags_and_ranges(tmp_path, change):
    """Issue 24, bug 1: the checksum covers everything load reads, not only the weights."""
    path = tmp_path / "model.pt"
    model = random_model("small", seed=0, quantiles=(0.1, 1.0, 0.1, 1.0))
    model.set_thresholds(image=0.2, pixel=0.1)
    if change == "int8":
        model.record_int8_ranges(torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    model.save(path)
    payload = torch.load(path, weights_only=True)
    extra = payload["state_dict"]["_extra_state"]
    if change == "alpha":
        payload["config"]["alpha"] = 1.0
    elif change == "int8":
        observer = next(iter(payload["int8"]["observers"].values()))
        observer["max_val"] = observer["max_val"] * 2
    else:
        extra[change] = {"quantiles_set": False, "teacher_source": "paper", "pixel_threshold": 0.2}[change]
    torch.save(payload, path)
    with pytest.raises(ValueError, match="corrupt: checksum mismatch"):
        efficientad_fast.load(path)


@pytest.mark.parametrize("version", [0, -5])
def test_load_refuses_format_versions_below_one(tmp_path, version):
    path = tmp_path / "model.pt"
    random_model("small", seed=0).save(path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = version
    torch.save(payload, path)
    with pytest.raises(ValueError, match=f"format_version must be >= 1, got {version}"):
        efficientad_fast.load(path)


def test_a_file_without_checksum_loads_with_a_warning(tmp_path):
    path = tmp_path / "model.pt"
    model = random_model("small", seed=0)
    model.save(path)
    payload = torch.load(path, weights_only=True)
    assert "checksum" in payload
    del payload["checksum"]
    payload["format_version"] = 1  # files from before the checksum; version 2 files always have one
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="no checksum"):
        loaded = efficientad_fast.load(path)
    assert torch.equal(loaded.student.conv1.weight, model.student.conv1.weight)


# -- 8. EXIF orientation --------------------------------------------------------------------


def test_jpeg_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high, left half white
    array[:, :20] = 255
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the stored image rotated 90 degrees clockwise
    Image.fromarray(array).save(path, exif=exif, quality=95)

    image = to_rgb_array(open_image(path), None)
    assert image.shape == (3, 40, 20)
    assert image_size_of(path) == (20, 40)  # (width, height) as displayed
    # Rotated clockwise: the stored left half becomes the top half.
    assert image[:, :18].mean() > 0.9 and image[:, 22:].mean() < 0.1


# -- 9. the package's input range -----------------------------------------------------------


def test_package_refuses_float_images_outside_0_1():
    from efficientad_fast.deploy.export import LoadedPackage

    package = LoadedPackage.__new__(LoadedPackage)  # a stand-in runner: no 30 s AOTI compile
    package._runner = lambda images: [images.sum((1, 2, 3)), images.amax((1, 2, 3))]
    package.path, package.image_size, package.device = "stub.pt2", (256, 256), torch.device("cpu")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        package(torch.full((1, 3, 256, 256), 200.0))
    package(torch.full((1, 3, 256, 256), 0.5))


# -- 10. full disk while saving --------------------------------------------------------------


def test_full_disk_while_saving_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    model = random_model("small", seed=0)
    model.save(path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=f"no space left writing {path}"):
        model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert path.read_bytes() == before

    def other_error(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half a file")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(torch, "save", other_error)
    with pytest.raises(RuntimeError, match="disk on fire"):
        model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


# -- 4. a rerun into the folder of another run ------------------------------------------------


# Whatever the cache holds ("auto" would pick the paper's teacher or Imagenette when cached).
@pytest.mark.parametrize("left", ["checkpoint.pt", "model.pt"])
def test_train_refuses_a_folder_holding_another_run(left, tiny_board, tmp_path, capsys):
    from efficientad_fast.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / left).write_bytes(b"an interrupted run")
    assert main(train_args(tiny_board, out)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert str(out / left) in err and "--overwrite" in err
    # a checkpoint can be continued; a model without one cannot
    assert ("continue it with --resume" in err) == (left == "checkpoint.pt")
    assert ("no checkpoint to resume" in err) == (left == "model.pt")
    assert [p.name for p in out.iterdir()] == [left]
    assert (out / left).read_bytes() == b"an interrupted run"
    assert main([*train_args(tiny_board, out), "--overwrite"]) == 0
    assert efficientad_fast.load(out / "model.pt").quantiles_set


# -- 5. an output folder that cannot be written --------------------------------------------


@pytest.mark.parametrize("how", ["read_only", "under_a_file"])
def test_train_into_an_unwritable_folder_fails_before_training(how, tiny_board, tmp_path, capsys, monkeypatch):
    from efficientad_fast.cli import main
    from efficientad_fast.jobs import train as train_job

    if how == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders; 'under_a_file' covers root")
        out = tmp_path / "read_only"
        out.mkdir()
        out.chmod(0o555)
    else:  # a folder that cannot be made, for any user
        (tmp_path / "a_file").write_text("")
        out = tmp_path / "a_file" / "out"

    def no_training(*args, **kwargs):
        pytest.fail("trained although the output folder cannot be written")

    monkeypatch.setattr(train_job, "train", no_training)
    assert main(train_args(tiny_board, out)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"cannot write to the output folder {out}" in err


# -- 11. unreadable files among the images to predict -----------------------------------------


def test_predict_lists_unreadable_files_and_scores_the_rest(tmp_path, capsys):
    from efficientad_fast.cli import main

    model = tmp_path / "model.pt"
    random_model("small", seed=0, quantiles=(0.2, 1.4, 0.3, 1.9)).save(model)
    images = tmp_path / "images"
    (images / "x.png").mkdir(parents=True)  # a folder with an image's name
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(images / "good.png")
    whole = (images / "good.png").read_bytes()
    (images / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (images / "corrupt.png").write_bytes(b"not an image at all")
    (images / "._good.png").write_bytes(b"AppleDouble metadata, not an image")
    out = tmp_path / "out"
    args = ["predict", "--model", str(model), str(images), "--out", str(out), "--quiet", "--no-heatmaps"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "2 of 3 images could not be read" in captured.out + captured.err
    assert [r["path"] for r in csv.DictReader(open(out / "scores.csv"))] == [str(images / "good.png")]
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert [r["path"] for r in errors] == [str(images / "corrupt.png"), str(images / "truncated.png")]
    assert all(r["error"] for r in errors)

    # Nothing readable: exit 1.
    (images / "good.png").unlink()
    assert main(args) == 1
    assert list(csv.DictReader(open(out / "scores.csv"))) == []
    assert len(list(csv.DictReader(open(out / "errors.csv")))) == 2


# -- 12. files that load to a clear error ------------------------------------------------------


def test_load_refuses_a_string_format_version(tmp_path):
    path = tmp_path / "model.pt"
    random_model("small", seed=0).save(path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = "1"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="format_version must be an integer, got '1'"):
        efficientad_fast.load(path)


def test_load_refuses_a_state_dict_entry_that_is_not_a_tensor(tmp_path):
    path = tmp_path / "model.pt"
    random_model("small", seed=0).save(path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["student.conv1.weight"] = [1.0, 2.0]
    torch.save(payload, path)
    with pytest.raises(ValueError, match="student.conv1.weight is a list, not a tensor"):
        efficientad_fast.load(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_load_onto_cuda_without_a_gpu_says_so(tmp_path):
    path = tmp_path / "model.pt"
    random_model("small", seed=0).save(path)
    with pytest.raises(ValueError, match="no CUDA device") as error:
        efficientad_fast.load(path, map_location="cuda")
    assert "corrupt" not in str(error.value)


def test_resume_from_a_truncated_checkpoint_names_it(tmp_path):
    from efficientad_fast.train import TrainConfig, train

    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=1, progress=False, workers=0)
    train(EfficientAD(teacher="random"), images, config, out_dir=tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt") as error:
        train(EfficientAD(teacher="random"), images, config, out_dir=tmp_path, resume=True)
    assert str(checkpoint) in str(error.value)


def test_a_full_model_file_as_teacher_says_what_a_teacher_file_is(tmp_path):
    path = tmp_path / "model.pt"
    random_model("small", seed=0).save(path)
    with pytest.raises(ValueError, match="full model file") as error:
        EfficientAD(teacher=str(path))
    assert "distill-teacher" in str(error.value)


def test_training_on_constant_images_fails_before_the_first_step(tmp_path):
    from efficientad_fast.train import TrainConfig, train

    black = torch.zeros(3, 3, 256, 256, dtype=torch.uint8)
    with pytest.raises(ValueError, match="constant"):
        train(EfficientAD(teacher="random"), black, TrainConfig(steps=1, progress=False, workers=0))


# -- issue 24, bug 3: exports are written whole or not at all --------------------------------


def _fail_half_way(target_arg: int | str, suffixes=("",)):
    """A writer that writes half a file (and its siblings with ``suffixes``) at the path it
    was given, then fails as a full disk does."""

    def write(*args, **kwargs):
        target = Path(kwargs[target_arg] if isinstance(target_arg, str) else args[target_arg])
        for suffix in suffixes:
            (target.with_suffix(suffix) if suffix else target).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "aoti"])
def test_a_failed_export_keeps_the_earlier_one_and_leaves_no_temporary_file(tmp_path, monkeypatch, fmt):
    from efficientad_fast.deploy import export

    model = random_model("small", seed=0, quantiles=(0.1, 1.0, 0.1, 1.0))
    names = {"onnx": ["m.onnx"], "openvino": ["m.xml", "m.bin"], "aoti": ["m.pt2"]}[fmt]
    for name in names:
        (tmp_path / name).write_bytes(b"the earlier, good export")
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        import onnx

        monkeypatch.setattr(onnx, "save", _fail_half_way(1))
        call = lambda: export.export_onnx(model, tmp_path / "m.onnx")  # noqa: E731
    elif fmt == "openvino":
        ov = pytest.importorskip("openvino")
        from efficientad_fast.deploy import openvino as openvino_export

        monkeypatch.setattr(ov, "save_model", _fail_half_way(1, (".xml", ".bin")))
        call = lambda: openvino_export.export_openvino(model, tmp_path / "m.xml")  # noqa: E731
    else:
        efficientad_fast.load_extension()
        monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", _fail_half_way("package_path"))
        monkeypatch.setattr(torch.export, "export", lambda *a, **k: None)  # the failure is in the write
        call = lambda: export.export_aoti(model, tmp_path / "m.pt2")  # noqa: E731
    with pytest.raises(OSError, match="no space left writing .*m\\."):
        call()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    for name in names:
        assert (tmp_path / name).read_bytes() == b"the earlier, good export"


def test_export_to_a_folder_is_refused_before_any_work(tmp_path, capsys):
    from efficientad_fast import cli

    model_path = tmp_path / "m.pt"
    random_model("small", seed=0).save(model_path)
    (tmp_path / "out.onnx").mkdir()
    code = cli.main(["export", "--model", str(model_path), "--format", "onnx", "--out", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder" in err and err.count("\n") == 1


# -- issue 24, bug 4: a file name that is not UTF-8 ---------------------------------------------


def test_predict_keeps_every_row_when_a_name_is_not_utf8(tmp_path, capsys):
    """A Latin-1 ``café.png`` beside ``ok.png``: both scored, both in scores.csv, the Latin-1
    byte written as a backslash escape (scores.csv held only its header before)."""
    from efficientad_fast import cli

    model_path = tmp_path / "m.pt"
    model = random_model("small", seed=0, quantiles=(0.1, 1.0, 0.1, 1.0))
    model.set_thresholds(image=0.2, pixel=0.1)
    model.save(model_path)
    folder = tmp_path / "images"
    folder.mkdir()
    picture = Image.fromarray((np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8))
    picture.save(folder / "ok.png")
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    picture.save(latin1, format="PNG")
    out = tmp_path / "out"
    code = cli.main(
        ["predict", "--model", str(model_path), str(folder), "--out", str(out), "--precision", "fp32", "--quiet"]
    )
    capsys.readouterr()
    assert code == 0
    with open(out / "scores.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == ["caf\\xe9.png", "ok.png"]
    assert all(r["score"] for r in rows)
    assert not list(out.glob("*.tmp*"))


# -- issue 24, bug 6: --out inside the input folder ---------------------------------------------


def test_predict_does_not_score_its_own_outputs_on_the_next_run(tmp_path, capsys):
    from efficientad_fast import cli

    model_path = tmp_path / "m.pt"
    random_model("small", seed=0, quantiles=(0.1, 1.0, 0.1, 1.0)).save(model_path)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = folder / "predictions"
    args = [
        "predict",
        "--model",
        str(model_path),
        str(folder),
        "--out",
        str(out),
        "--precision",
        "fp32",
        "--masks",
        "--quiet",
    ]
    assert cli.main(args) == 0
    assert len(list((out / "heatmaps").glob("*.png"))) == 2
    capsys.readouterr()
    assert cli.main(args) == 0  # the first run's heatmaps and masks now lie under the input folder
    printed = capsys.readouterr().out
    assert "skipping 4 files under" in printed
    with open(out / "scores.csv", encoding="utf-8") as f:
        assert sorted(Path(r["path"]).name for r in csv.DictReader(f)) == ["0.png", "1.png"]


# -- issue 24, bug 5: --resume with settings that change the result -------------------------------


def test_resume_refuses_a_changed_image_size_or_teacher(board_dataset, tmp_path):
    from efficientad_fast.jobs import train_category
    from efficientad_fast.train import TrainConfig

    def run(**kwargs):
        config = TrainConfig(steps=1, workers=0, progress=False, checkpoint_every=0)
        settings = dict(teacher="random", penalty_images="none", validation_fraction=0.25) | kwargs
        return train_category(board_dataset, "mvtec", "board", tmp_path / "run", config=config, **settings)

    run()
    with pytest.raises(ValueError, match=r"other settings .*'image_size': \(\[256, 256\], \[272, 272\]\)") as error:
        run(resume=True, image_size=272)
    assert "teacher" not in str(error.value)
    with pytest.raises(ValueError, match=r"other settings .*'teacher': \('random', 'distilled"):
        run(resume=True, teacher="distilled")
    run(resume=True)  # the same settings resume


# -- issue 24, bug 2: predict writes rows as it scores ------------------------------------------


def _predict_setup(tmp_path, names):
    model_path = tmp_path / "m.pt"
    model = random_model("small", seed=0, quantiles=(0.1, 1.0, 0.1, 1.0))
    model.set_thresholds(image=0.2, pixel=0.1)
    model.save(model_path)
    rng = np.random.default_rng(0)
    for name in names:
        path = tmp_path / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(path)
    return model_path


@pytest.mark.parametrize("parquet", [False, True])
def test_ctrl_c_in_predict_keeps_the_rows_scored_so_far(tmp_path, monkeypatch, capsys, parquet):
    """With --parquet, scores.parquet keeps them too (the third probe: the earlier
    scores.parquet was deleted and none written, and the message did not say)."""
    from efficientad_fast import cli

    if parquet:
        pytest.importorskip("pyarrow")

    model_path = _predict_setup(tmp_path, [f"{i}.png" for i in range(5)])
    out = tmp_path / "out"
    (out).mkdir()
    (out / "scores.csv").write_text("an earlier run's scores\n")
    calls = []
    real_predict = EfficientAD.predict

    def predict_then_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_predict(self, *args, **kwargs)

    monkeypatch.setattr(EfficientAD, "predict", predict_then_ctrl_c)
    code = cli.main(
        [
            "predict",
            "--model",
            str(model_path),
            str(tmp_path / "images"),
            "--out",
            str(out),
            "--batch-size",
            "1",
            "--precision",
            "fp32",
            "--quiet",
            *(["--parquet"] if parquet else []),
        ]
    )
    err = capsys.readouterr().err
    assert code == 130 and "interrupted after 2 of 5 images" in err
    with open(out / "scores.csv", encoding="utf-8") as f:
        assert [Path(r["path"]).name for r in csv.DictReader(f)] == ["0.png", "1.png"]
    if parquet:
        import pyarrow.parquet as pq

        assert "(and scores.parquet) holds the 2 scored" in err
        assert [Path(p).name for p in pq.read_table(out / "scores.parquet")["path"].to_pylist()] == ["0.png", "1.png"]
    assert not list(out.glob("*.tmp*"))


def test_a_picture_name_too_long_is_an_errors_row_not_the_end_of_the_run(tmp_path, capsys):
    from efficientad_fast import cli

    long = "x" * 251 + ".png"  # two of them: the second heatmap's name gets a "_" and is too long
    model_path = _predict_setup(tmp_path, [f"a/{long}", f"b/{long}", "ok.png"])
    out = tmp_path / "out"
    code = cli.main(
        [
            "predict",
            "--model",
            str(model_path),
            str(tmp_path / "images"),
            "--out",
            str(out),
            "--precision",
            "fp32",
            "--quiet",
        ]
    )
    capsys.readouterr()
    assert code == 0
    with open(out / "scores.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 3
    with open(out / "errors.csv", encoding="utf-8") as f:
        errors = list(csv.DictReader(f))
    assert len(errors) == 1 and "picture cannot be written" in errors[0]["error"]


def test_a_failed_predict_keeps_the_previous_scores(tmp_path, monkeypatch):
    from efficientad_fast.jobs import predict_files

    model_path = _predict_setup(tmp_path, ["0.png", "1.png"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("an earlier run's scores\n")
    model = efficientad_fast.load(model_path)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "predict", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_files(model, [tmp_path / "images"], out, progress=False)
    assert (out / "scores.csv").read_text() == "an earlier run's scores\n"
    assert not list(out.glob("*.tmp*"))
