"""efficientad_fast: fast EfficientAD anomaly detection over fused C++/CUDA kernels."""

from ._build import BuildError
from ._extension import load_extension
from .ops import anomaly_map
from .reference import reference_anomaly_map

__version__ = "0.1.0"

__all__ = ["BuildError", "anomaly_map", "load_extension", "reference_anomaly_map", "__version__"]
