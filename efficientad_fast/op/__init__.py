"""The fused anomaly-map op: build flags (``_build``), loading the compiled library and its
fake kernel (``_library``), the public wrapper (``ops``) and the pure-PyTorch reference it is
tested against (``reference``). The kernels themselves are in ``csrc/``."""

from ._build import BuildError
from ._library import load_extension, load_if_built
from .ops import anomaly_map
from .reference import reference_anomaly_map

__all__ = ["BuildError", "anomaly_map", "load_extension", "load_if_built", "reference_anomaly_map"]
