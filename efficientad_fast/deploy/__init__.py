"""Running a trained model outside the training loop: the CUDA-graph FastPredictor
(``inference``), exports for C++ hosts and other runtimes (``export``: AOTInductor and
ONNX; ``openvino``: OpenVINO IR with NNCF INT8) and reading anomalib checkpoints
(``anomalib_io``), and INT8 copies for the CPU (``quantize``). The INT8 networks themselves live
beside the model (``efficientad_fast.int8``, ``efficientad_fast.precision``), which ``load`` needs."""

from .anomalib_io import from_anomalib
from .inference import FastPredictor

__all__ = ["FastPredictor", "from_anomalib"]
