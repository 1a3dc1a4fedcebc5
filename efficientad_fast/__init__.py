"""efficientad_fast: fast EfficientAD anomaly detection over fused C++/CUDA kernels.

import efficientad_fast as ead
model = ead.load("model.pt")                # or ead.from_anomalib(checkpoint)
pred = model.predict(images)                 # (N, 3, H, W) uint8 or float in [0, 1]
pred.score, pred.anomaly_map                 # (N,), (N, 1, H, W)

fast = ead.FastPredictor(model.to("cuda", torch.float16), batch_size=1)  # CUDA graph
pred = fast(images)

amap, score = ead.anomaly_map(teacher, student, autoencoder, quantiles=q)  # the fused op
"""

from ._signals import STARTUP_INTERRUPTED, started_as_command
from ._version import __version__

try:  # torch and the op library load here: a second or two
    from .deploy.anomalib_io import from_anomalib
    from .deploy.inference import FastPredictor
    from .deploy.quantize import quantize
    from .model import EfficientAD, Prediction
    from .model_file import load
    from .op import BuildError, anomaly_map, load_extension, load_if_built, reference_anomaly_map
    from .teachers import load_teacher

    load_if_built()  # torch.ops.efficientad_fast works after import when a library is built
except KeyboardInterrupt:
    if not started_as_command():  # a program importing us decides what Ctrl-C means
        raise
    import sys

    print(f"\n{STARTUP_INTERRUPTED}", file=sys.stderr)
    raise SystemExit(130) from None


__all__ = [
    "BuildError",
    "EfficientAD",
    "FastPredictor",
    "Prediction",
    "anomaly_map",
    "from_anomalib",
    "load",
    "load_extension",
    "load_teacher",
    "quantize",
    "reference_anomaly_map",
    "__version__",
]
