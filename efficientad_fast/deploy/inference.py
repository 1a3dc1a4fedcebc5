"""The fast inference path for a fixed batch shape: CUDA graphs, fp16/bf16, channels_last,
optionally torch.compile.

``EfficientAD.predict`` launches some 30 kernels per batch and checks its input every call;
at batch 1 on a big GPU the launches, not the arithmetic, set the latency. A
:class:`FastPredictor` fixes the batch shape once, records the whole computation (input
conversion, the three networks, the fused scoring op) in one CUDA graph and replays it.
"""

from __future__ import annotations

import threading

import torch

from .._numbers import image_hw, is_whole
from ..model import EfficientAD, Prediction, check_sensitivity
from ..networks import check_image_size
from ..precision import choose_precision

INPUT_DTYPES = (torch.uint8, torch.float32, torch.float16, torch.bfloat16)


class FastPredictor:
    """Anomaly maps and scores for batches of one fixed shape, as fast as the device allows.

    Args:
        model: a trained (calibrated) :class:`EfficientAD`. Put it on its device and in its
            dtype first (``model.to("cuda", torch.float16)`` is the fast GPU setting); it is
            switched to eval mode and channels_last.
        batch_size, image_size: the one input shape this predictor accepts, (N, 3, H, W).
        input_dtype: dtype of the images you pass: ``torch.uint8`` (0..255, a quarter of the
            float32 bytes to move from the host) or a float dtype with values in [0, 1].
        cuda_graph: record the computation in a CUDA graph and replay it (default: True on a
            CUDA device). Needs a CUDA model.
        compile: wrap the computation in ``torch.compile`` (the fused op stays one opaque call).
        output_size: size of the map, default the image size.
        sensitivity: shifts the model's decision thresholds for ``label`` and ``mask`` as
            :meth:`EfficientAD.predict` does (0.5: the calibrated thresholds).
        precision: None (default): the model as it is; "fp32", "bf16", "fp16" or "int8":
            :meth:`EfficientAD.set_precision` first (changes ``model``); "auto": the fastest on
            this machine for this batch shape (:func:`efficientad_fast.precision.choose_precision`).

    Calling the predictor copies the images into its input buffer (from the host or the
    device) and returns a :class:`Prediction` (with ``label`` and ``mask`` when the model
    holds thresholds; they are computed after the graph, as fresh tensors). With ``copy=False`` the returned tensors are
    the predictor's output buffers, overwritten by the next call: read them (or ``.cpu()``
    them) before calling again.

    Thread-safe: calls from several threads take turns (a lock guards the input and output
    buffers, which every call shares), so each gets the results for its own images. With
    ``copy=False`` the returned buffers are still overwritten by the next call from any
    thread. For parallel work, make one predictor per thread.
    """

    def __init__(
        self,
        model: EfficientAD,
        batch_size: int,
        image_size: int | tuple[int, int] = 256,
        *,
        input_dtype: torch.dtype = torch.float32,
        cuda_graph: bool | None = None,
        compile: bool = False,
        output_size: int | tuple[int, int] | None = None,
        warmup: int = 3,
        sensitivity: float = 0.5,
        precision: str | None = None,
    ) -> None:
        if not isinstance(model, EfficientAD):
            raise TypeError(f"model must be an efficientad_fast.EfficientAD, got {type(model).__name__}")
        if not is_whole(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        height, width = image_hw(image_size)
        check_image_size(height, width)
        if input_dtype not in INPUT_DTYPES:
            raise TypeError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype}")
        if precision == "auto":
            model = choose_precision(model, batch_size, (height, width))
        elif precision is not None:
            model.set_precision(precision)
        device = model.device
        if cuda_graph is None:
            cuda_graph = device.type == "cuda"
        if cuda_graph and device.type != "cuda":
            raise ValueError(
                f"cuda_graph=True needs the model on a CUDA device, it is on {device}; "
                "move it with model.to('cuda') or pass cuda_graph=False"
            )
        if output_size is None:
            output_size = (height, width)
        elif isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.model = model
        self.sensitivity = check_sensitivity(sensitivity)
        self.shape = (batch_size, 3, height, width)
        self.input_dtype = input_dtype
        self.output_size = tuple(output_size)
        self.cuda_graph = bool(cuda_graph)
        self.compiled = bool(compile)
        model.eval()
        model._use_channels_last()
        score_images = torch.compile(model.score_images, dynamic=False) if compile else model.score_images
        scale = 1.0 / 255 if input_dtype == torch.uint8 else None
        net_dtype = model.dtype

        def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = images.to(net_dtype)
            if scale is not None:
                x = x * scale
            return score_images(x, self.output_size)

        self._run = run
        self._input = torch.zeros(self.shape, dtype=input_dtype, device=device).contiguous(
            memory_format=torch.channels_last
        )
        self._graph = None
        self._lock = threading.Lock()  # one call at a time: all calls share the buffers
        with torch.inference_mode():
            if self.cuda_graph:
                # Warm up on a side stream (cuDNN picks its algorithms, compile traces, the
                # folded teacher conv is cached), then record one replayable graph.
                stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):
                    for _ in range(max(1, warmup)):
                        run(self._input)
                torch.cuda.current_stream(device).wait_stream(stream)
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph):
                    self._outputs = run(self._input)
            else:
                for _ in range(max(0, warmup)):
                    self._outputs = run(self._input)

    @property
    def device(self) -> torch.device:
        return self._input.device

    def __call__(self, images: torch.Tensor, copy: bool = True) -> Prediction:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if tuple(images.shape) != self.shape:
            raise ValueError(
                f"this predictor takes images of shape {self.shape}, got {tuple(images.shape)}; "
                "make another FastPredictor for another batch or image size"
            )
        if images.dtype != self.input_dtype:
            raise TypeError(f"this predictor takes {self.input_dtype} images, got {images.dtype}")
        with self._lock, torch.inference_mode():
            self._input.copy_(images, non_blocking=True)
            if self._graph is not None:
                self._graph.replay()
                amap, score = self._outputs
            else:
                amap, score = self._run(self._input)
            if copy and self._graph is not None:
                # Inside the lock: the next call's replay overwrites the output buffers.
                amap, score = amap.clone(), score.clone()
            return self.model.decide(score, amap, self.sensitivity)
