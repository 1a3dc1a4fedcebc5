"""Export of predict: the AOTInductor package (fused op, dynamic batch) and the ONNX model
(scoring in standard ONNX ops, run in onnxruntime), both against ``model.predict``."""

import importlib.util

import numpy as np
import pytest
import torch

import efficientad_fast as ead
from efficientad_fast import cli
from efficientad_fast.deploy import export

pytestmark = pytest.mark.usefixtures("op_library")

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(
    not HAVE_ONNX, reason='ONNX export tests need onnx, onnxruntime and onnxscript: pip install -e ".[onnx]"'
)


def relative_error(actual, expected, expected_map):
    """Largest difference of a map or scores as a fraction of the expected map's range."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    return ((actual - expected).abs().max() / (expected_map.max() - expected_map.min())).item()


def images(n, size=256, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def uncalibrated_model():
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return ead.EfficientAD(model_size="small", teacher="random").eval()


# --- AOTInductor package ------------------------------------------------------------------


def test_aoti_package_matches_predict_with_dynamic_batch(calibrated_model, aoti_package):
    _, path = aoti_package
    package = export.load_package(path)
    assert package.metadata["format"] == export.PACKAGE_FORMAT
    assert package.image_size == (256, 256) and package.metadata["quantiles_set"] == "1"
    x = images(3)
    expected = calibrated_model.predict(x)
    for n in (3, 1):  # exported with batch 2: other sizes prove the batch is dynamic
        amap, score = package(x[:n])
        assert amap.shape == (n, 1, 256, 256) and score.shape == (n,)
        # The package runs Inductor's compiled convolutions: equal up to float rounding.
        assert relative_error(amap, expected.anomaly_map[:n], expected.anomaly_map) < 1e-4
        assert relative_error(score, expected.score[:n], expected.anomaly_map) < 1e-4
        assert torch.equal(score, amap.amax((-2, -1)).flatten())


def test_aoti_package_carries_thresholds_and_decides_as_predict(calibrated_model, aoti_package):
    package = export.load_package(aoti_package[1])
    assert package.metadata["format_version"] == export.PACKAGE_VERSION
    assert package.image_threshold == calibrated_model.image_threshold
    assert package.pixel_threshold == calibrated_model.pixel_threshold
    assert package.metadata["teacher_source"] == calibrated_model.teacher_source
    x = images(1)
    for sensitivity in (0.5, 1.0):
        got = package.predict(x, sensitivity=sensitivity)
        image, pixel = calibrated_model.thresholds(sensitivity)
        assert torch.equal(got.label, got.score > image) and torch.equal(got.mask, got.anomaly_map > pixel)


def test_metadata_round_trip_and_refused_schema_versions(calibrated_model):
    info = export.metadata(calibrated_model, (256, 320))
    assert set(info) == set(export.METADATA_KEYS)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.items())
    checked = export.check_metadata(info, "m.pt2")
    assert checked["image_size"] == (256, 320) and checked["format_version"] == export.PACKAGE_VERSION
    assert checked["image_threshold"] == calibrated_model.image_threshold  # repr round-trips exactly
    assert checked["pixel_threshold"] == calibrated_model.pixel_threshold
    quantiles = [float(q) for q in info["quantiles"].split(",")]
    assert quantiles == calibrated_model.quantiles.tolist()
    for version in ("3", "", "2.0"):
        with pytest.raises(ValueError, match="schema version"):
            export.check_metadata({**info, "format_version": version}, "m.pt2")
    with pytest.raises(ValueError, match="not an efficientad_fast model"):
        export.check_metadata({**info, "format": "other"}, "m.pt2")
    with pytest.raises(ValueError, match="image_threshold"):
        export.check_metadata({**info, "image_threshold": "nan"}, "m.pt2")
    for side in ("\u00b256", "9" * 5000, "0", "70000"):  # the sixth probe: "²56" was a bare int() error
        with pytest.raises(ValueError, match="m.pt2: metadata has no valid image_height"):
            export.check_metadata({**info, "image_height": side}, "m.pt2")
    # Version 1 (no thresholds) still reads, without thresholds.
    old = {k: info[k] for k in ("format", "image_height", "image_width", "device")} | {"format_version": "1"}
    assert export.check_metadata(old, "old.pt2")["image_threshold"] is None
    # An uncalibrated model has empty thresholds.
    assert export.metadata(uncalibrated_model(), (256, 256))["image_threshold"] == ""


def test_aoti_package_makes_inputs_contiguous(aoti_package):
    package = export.load_package(aoti_package[1])
    x = images(2)
    # A channels_last batch (what permuting an HWC image gives) must give the same result.
    amap, score = package(x.contiguous(memory_format=torch.channels_last))
    amap_ref, score_ref = package(x)
    assert torch.equal(amap, amap_ref) and torch.equal(score, score_ref)


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (lambda x: x.double(), TypeError, "float32"),
        (lambda x: (x * 255).to(torch.uint8), TypeError, "float32"),
        (lambda x: x[:, :, :200], ValueError, "(N, 3, 256, 256)"),
        (lambda x: x[:, :1], ValueError, "(N, 3, 256, 256)"),
        (lambda x: x[:0], ValueError, "at least one image"),
    ],
)
def test_aoti_package_rejects_bad_input(aoti_package, bad, error, words):
    package = export.load_package(aoti_package[1])
    with pytest.raises(error) as err:
        package(bad(images(1)))
    assert words in str(err.value)


def test_load_package_rejects_missing_and_foreign_files(tmp_path, aoti_package):
    with pytest.raises(FileNotFoundError, match="no model package"):
        export.load_package(tmp_path / "missing.pt2")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="cannot load it as an AOTInductor package"):
        export.load_package(garbage)
    model_file = aoti_package[0]  # a model file (torch.save zip), not a package
    with pytest.raises(ValueError, match=str(model_file.name)):
        export.load_package(model_file)


def test_uncalibrated_model_exports_the_unnormalized_map():
    """Without quantiles predict gives the unnormalized fused map; so does the export graph
    (eager and as a torch.export program, which is what AOTInductor compiles)."""
    model = uncalibrated_model()
    assert not model.quantiles_set
    x = images(2)
    expected = model.predict(x)
    graph = export.PredictGraph(model, "fused")
    with torch.no_grad():
        amap, score = graph(x)
        assert torch.allclose(amap, expected.anomaly_map, rtol=0, atol=1e-6 * float(expected.anomaly_map.abs().max()))
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(graph, (x,), dynamic_shapes=({0: batch},))
    assert any(node.target is torch.ops.efficientad_fast.anomaly_map.default for node in program.graph.nodes)
    with torch.no_grad():
        amap1, score1 = program.module()(x[:1])
    assert relative_error(amap1, expected.anomaly_map[:1], expected.anomaly_map) < 1e-5
    assert relative_error(score1, expected.score[:1], expected.anomaly_map) < 1e-5


def test_export_rejects_bad_arguments(tmp_path, calibrated_model):
    with pytest.raises(ValueError, match="at least 256x256"):
        export.export_aoti(calibrated_model, tmp_path / "m.pt2", image_size=128)
    with pytest.raises(ValueError, match="must end in .pt2"):
        export.export_aoti(calibrated_model, tmp_path / "m.bin")
    with pytest.raises(TypeError, match="EfficientAD"):
        export.export_aoti(torch.nn.Linear(2, 2), tmp_path / "m.pt2")
    with pytest.raises(TypeError, match="float32 model"):
        export.PredictGraph(uncalibrated_model().to(torch.bfloat16))
    with pytest.raises(ValueError, match="opset must be an integer from 18"):
        export.export_onnx(calibrated_model, tmp_path / "m.onnx", opset=13)


def test_cli_export_help_and_bad_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["export", "--help"])
    assert done.value.code == 0
    assert "--format {aoti,onnx,openvino}" in capsys.readouterr().out
    code = cli.main(
        ["export", "--model", str(tmp_path / "missing.pt"), "--format", "aoti", "--out", str(tmp_path / "m.pt2")]
    )
    assert code == 2
    assert "no model file" in capsys.readouterr().err
    assert not (tmp_path / "m.pt2").exists()


# --- ONNX ---------------------------------------------------------------------------------


def run_onnx(path, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == export.INPUT_NAMES
    assert [o.name for o in session.get_outputs()] == export.OUTPUT_NAMES
    return session.run(None, {"images": x.numpy()})


@needs_onnx
@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "uncalibrated"])
def test_onnx_matches_predict_in_onnxruntime(tmp_path, calibrated_model, calibrated, capsys):
    import onnx

    model = calibrated_model if calibrated else uncalibrated_model()
    path = tmp_path / "model.onnx"
    if calibrated:  # through the command line
        model_file = tmp_path / "model.pt"
        model.save(model_file)
        assert cli.main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(path)]) == 0
        assert "onnx:" in capsys.readouterr().out
    else:
        export.export_onnx(model, path)
    proto = onnx.load(str(path))
    # The scoring is in standard ops: nothing of ours, opset >= 18.
    assert all(node.domain in ("", "ai.onnx") for node in proto.graph.node)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert props == export.metadata(model, (256, 256))
    info, checked = export.read_onnx_metadata(path)
    assert info == props and checked["image_threshold"] == model.image_threshold
    x = images(3, seed=5)
    expected = model.predict(x)
    for n in (3, 1):  # dynamic batch
        amap, score = run_onnx(path, x[:n])
        assert amap.shape == (n, 1, 256, 256) and score.shape == (n,)
        assert relative_error(amap, expected.anomaly_map[:n], expected.anomaly_map) < 1e-4
        assert relative_error(score, expected.score[:n], expected.anomaly_map) < 1e-4
        np.testing.assert_array_equal(score, amap.max(axis=(1, 2, 3)))
