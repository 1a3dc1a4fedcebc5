"""The C++ side: the CMake build of the op library (installed, found by find_package from
another project), the example host in examples/cpp_host running an exported package on an
image (score and map equal Python's), its error handling, and the C++ API of the op.

The CMake builds are cached in the build cache (``~/.cache/efficientad_fast/cmake-*``,
keyed by torch and Python version), so reruns only check that nothing changed."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils

import efficientad_fast as ead
from efficientad_fast.deploy import export
from efficientad_fast.op import _build

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("op_library")


def test_cmake_build_compiles_the_python_build_sources():
    """One list of sources for both builds: CMakeLists.txt names what _build.py compiles."""
    text = (ROOT / "CMakeLists.txt").read_text()

    def cmake_list(name):
        match = re.search(rf"set\({name}\s+([^)]*)\)", text)
        assert match, f"CMakeLists.txt sets no {name}"
        return [Path(s).relative_to("csrc").as_posix() for s in match.group(1).split()]

    assert cmake_list("EFFICIENTAD_FAST_CPU_SOURCES") == _build.CPU_SOURCES
    assert cmake_list("EFFICIENTAD_FAST_CUDA_SOURCES") == _build.CUDA_SOURCES
    for source in _build.CPU_SOURCES + _build.CUDA_SOURCES:
        assert (ROOT / "csrc" / source).is_file()


def cmake_cache() -> Path:
    # CMake ties a build folder to one source folder: key it by this checkout too, so two
    # clones (say a CI clone beside a working copy) never share one.
    checkout = hashlib.sha1(str(ROOT.resolve()).encode()).hexdigest()[:8]
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-{checkout}"
    return _build.cache_root() / f"cmake-{tag}"


def torch_cmake_args() -> list[str]:
    """CMake arguments that find libtorch; a CUDA libtorch's config also needs the toolkit
    (found as the Python build finds it, since nvcc on PATH may be a wrapper script)."""
    args = [f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", "-DCMAKE_BUILD_TYPE=Release"]
    if torch.version.cuda is not None:
        cuda_home = _build.find_cuda_home()
        if cuda_home is None:
            pytest.skip("this libtorch is a CUDA build: its CMake config needs a CUDA toolkit, none found")
        args += [f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}", f"-DCMAKE_CUDA_COMPILER={cuda_home / 'bin' / 'nvcc'}"]
    return args


def run(command, **kwargs):
    out = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=900, **kwargs)
    assert out.returncode == 0, f"{' '.join(map(str, command))} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def installed_library():
    """The op library built with CMake and installed to a prefix (incremental rebuilds).
    -march=native as the JIT build has it, so the results are Python's bit for bit."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    cache = cmake_cache()
    build, prefix = cache / "library-build", cache / "install"
    run(["cmake", "-S", ROOT, "-B", build, "-DEFFICIENTAD_FAST_NATIVE=ON", *torch_cmake_args()])
    run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2)])
    run(["cmake", "--install", build, "--prefix", prefix])
    assert (prefix / "include" / "efficientad_fast" / "efficientad_fast.h").is_file()
    assert (prefix / "lib" / "cmake" / "efficientad_fast" / "efficientad_fastConfig.cmake").is_file()
    return prefix


@pytest.fixture(scope="module")
def host(installed_library):
    """examples/cpp_host built against the installed library with find_package."""
    build = cmake_cache() / "host-build"
    args = torch_cmake_args()
    args[0] += f";{installed_library}"  # CMAKE_PREFIX_PATH: libtorch and our install
    run(["cmake", "-S", ROOT / "examples" / "cpp_host", "-B", build, *args])
    run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2)])
    return {"host": build / "efficientad_fast_host", "op_example": build / "efficientad_fast_op_example"}


@pytest.fixture(scope="module")
def foreign_package(tmp_path_factory):
    """A real AOTInductor package that is not an efficientad_fast model (~10 s to compile)."""
    path = tmp_path_factory.mktemp("foreign") / "linear.pt2"
    with torch.no_grad():
        program = torch.export.export(torch.nn.Linear(4, 2).eval(), (torch.rand(2, 4),))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


def test_python_loader_rejects_a_foreign_package(foreign_package):
    with pytest.raises(ValueError, match="not an efficientad_fast model"):
        export.load_package(foreign_package)


def write_ppm(path, pixels):
    from PIL import Image

    Image.fromarray(pixels).save(path)  # .ppm: binary P6
    assert path.read_bytes()[:2] == b"P6"


def run_host(host, *args):
    return subprocess.run([str(host["host"]), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_host_score_and_map_equal_python(tmp_path, host, aoti_package, calibrated_model):
    model_file, package_path = aoti_package
    pixels = np.random.default_rng(7).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    pixels[100:130, 60:90] = 255  # a bright defect
    write_ppm(tmp_path / "image.ppm", pixels)
    out = run_host(host, package_path, tmp_path / "image.ppm", tmp_path / "result")
    assert out.returncode == 0, out.stderr
    score_line = next(line for line in out.stdout.splitlines() if line.startswith("score "))
    host_score = np.float32(score_line.split()[1])
    host_map = np.fromfile(tmp_path / "result.f32", dtype=np.float32)
    assert host_map.size == 256 * 256

    # Python on the same input through the same package: equal, bit for bit.
    images = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255)
    amap, score = export.load_package(package_path)(images)
    np.testing.assert_array_equal(host_map.reshape(256, 256), amap[0, 0].numpy())
    assert host_score == score[0].item()
    # The label from the package's metadata threshold, as Python's package.predict decides.
    label = export.load_package(package_path).predict(images).label[0].item()
    threshold = calibrated_model.image_threshold
    assert f"label {'anomalous' if label else 'normal'} (threshold {threshold:.9g})" in out.stdout.splitlines()
    # ... and what predict gives, up to the compiled networks' float rounding.
    expected = calibrated_model.predict(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    value_range = float(expected.anomaly_map.max() - expected.anomaly_map.min())
    assert np.abs(host_map - expected.anomaly_map.numpy().ravel()).max() < 1e-4 * value_range
    assert abs(host_score - expected.score.item()) < 1e-4 * value_range
    pgm = (tmp_path / "result.pgm").read_bytes()
    assert pgm.startswith(b"P5\n256 256\n255\n") and len(pgm) == len(b"P5\n256 256\n255\n") + 256 * 256


def test_host_bad_input_gives_message_and_exit_status(tmp_path, host, aoti_package, foreign_package):
    _, package_path = aoti_package
    good = tmp_path / "good.ppm"
    write_ppm(good, np.zeros((256, 256, 3), dtype=np.uint8))
    small = tmp_path / "small.ppm"
    write_ppm(small, np.zeros((200, 256, 3), dtype=np.uint8))
    png = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.zeros((256, 256, 3), dtype=np.uint8)).save(png)
    truncated = tmp_path / "truncated.ppm"
    truncated.write_bytes(good.read_bytes()[:5000])
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a package")
    out_prefix = tmp_path / "out"
    cases = [
        ((package_path, tmp_path / "missing.ppm", out_prefix), 2, "no image at"),
        ((tmp_path / "missing.pt2", good, out_prefix), 2, "no model package at"),
        ((package_path, small, out_prefix), 2, "was exported for 256x256"),
        ((package_path, png, out_prefix), 2, "not a binary PPM"),
        ((package_path, truncated, out_prefix), 2, "truncated PPM"),
        ((garbage, good, out_prefix), 3, "cannot load"),
        ((foreign_package, good, out_prefix), 2, "not an efficientad_fast model"),
        ((package_path, good), 2, "usage:"),
    ]
    for args, status, words in cases:
        out = run_host(host, *args)
        assert out.returncode == status, (args, out.returncode, out.stderr)
        assert words in out.stderr, (args, out.stderr)
        assert "frame #" not in out.stderr  # a message, not a C++ backtrace
    assert not out_prefix.with_suffix(".f32").exists()


def op_example_features(n, channels, phase):
    """The features op_example.cpp builds: sin(0.37 * i + phase) over an index ramp."""
    return (
        torch.arange(n * channels * 56 * 56, dtype=torch.float32)
        .mul(0.37)
        .add(phase)
        .sin()
        .reshape(n, channels, 56, 56)
    )


def test_cpp_api_equals_python_op(host):
    out = subprocess.run([str(host["op_example"]), "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "kernels cpu" or lines[0] == "kernels cpu,cuda"
    amap, score = ead.anomaly_map(
        op_example_features(3, 384, 0.0),
        op_example_features(3, 768, 1.0),
        op_example_features(3, 384, 2.0),
        teacher_mean=torch.full((384,), 0.1),
        teacher_std=torch.full((384,), 2.0),
        quantiles=torch.tensor([0.2, 1.5, 0.3, 1.8]),
        output_size=(256, 256),
    )
    assert lines[1] == f"map 3 1 256 256 sum {amap.sum().item():.9g}"
    assert lines[2:] == [f"score {s:.9g}" for s in score.tolist()]


@pytest.mark.skipif(
    torch.version.cuda is None or _build.find_cuda_home() is None,
    reason="needs a CUDA build of libtorch and a CUDA toolkit (nvcc)",
)
def test_cmake_cuda_build_registers_the_cuda_kernel(host):
    """-DEFFICIENTAD_FAST_CUDA=ON compiles the CUDA kernel into the library (one architecture,
    to keep it quick); no GPU is needed to see the kernel registered."""
    build = cmake_cache() / "library-build-cuda"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=_build.DEFAULT_CUDA_ARCH_LIST)
    run(["cmake", "-S", ROOT, "-B", build, "-DEFFICIENTAD_FAST_CUDA=ON", *torch_cmake_args()], env=env)
    run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2)], env=env)
    library = build / "libefficientad_fast.so.0"
    # The example links the installed CPU-only library by soname; preload the CUDA one instead.
    out = subprocess.run(
        [str(host["op_example"]), "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, LD_PRELOAD=str(library)),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "kernels cpu,cuda"
