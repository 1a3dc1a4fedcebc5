"""Packaging. ``pip install -e .`` compiles nothing: the extension is JIT-built on first use.
``EFFICIENTAD_FAST_BUILD_EXT=1 pip install --no-build-isolation .`` compiles it ahead of time
from the same sources and flags (efficientad_fast/op/_build.py), except the JIT build's
-march=native: a wheel may run on another CPU than the one that built it."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_sources(build_py):
    """Ship csrc/ inside the package so an installed wheel can still JIT-build."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "efficientad_fast" / "csrc"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / "csrc", target, ignore=shutil.ignore_patterns("CMakeLists.txt", "cmake"))


def ahead_of_time_extension():
    # Load _build.py by path: importing the package would import torch-dependent modules.
    spec = importlib.util.spec_from_file_location(
        "_efficientad_fast_build", ROOT / "efficientad_fast" / "op" / "_build.py"
    )
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # dataclasses look their module up there
    spec.loader.exec_module(build)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    plan = build.build_plan(jit=False)
    build.use_toolkit(plan)
    sources = [os.path.relpath(s, ROOT) for s in plan.sources]
    if plan.with_cuda:
        ext = CUDAExtension(
            "efficientad_fast.op._C",
            sources,
            include_dirs=plan.include_dirs,
            extra_compile_args={"cxx": plan.cxx_flags, "nvcc": plan.nvcc_flags},
            extra_link_args=plan.ld_flags,
        )
    else:
        ext = CppExtension(
            "efficientad_fast.op._C",
            sources,
            include_dirs=plan.include_dirs,
            extra_compile_args={"cxx": plan.cxx_flags},
            extra_link_args=plan.ld_flags,
        )
    return [ext], {
        "build_ext": BuildExtension.with_options(no_python_abi_suffix=True),
        "build_py": build_py_with_sources,
    }


if os.environ.get("EFFICIENTAD_FAST_BUILD_EXT") == "1":
    ext_modules, cmdclass = ahead_of_time_extension()
else:
    ext_modules, cmdclass = [], {"build_py": build_py_with_sources}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
