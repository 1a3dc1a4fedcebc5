"""INT8 networks on the CPU: post-training quantization of teacher, student and autoencoder
with PyTorch 2 export quantization (torchao's x86 Inductor quantizer: uint8 activations per
tensor, int8 weights per output channel), compiled by Inductor so oneDNN runs the
convolutions in int8 (VNNI, or AMX where the CPU has it). The scoring tail, the fused op,
stays in float32.

Activation ranges are the min and max seen on the calibration images, not the recipe's
default histogram search, which clips the rare large activations to fit the common ones
more finely: the large activations are where anomalies show. On a model trained 60 steps
(bench/results/int8_cpu_2026-12-06.md) min/max kept the map within 0.026 of the fp32 map's
range against 0.071 for histograms, and the image AUROC at fp32's.

What calibration learns is the state of the activation observers (the min/max of each
quantized activation): :class:`Int8Calibration` holds it as plain tensors,
so a model file can carry it and a loaded model can rebuild and compile its INT8 networks
without the calibration images. The weight observers are not stored: they are recomputed
from the weights, so the ranges stay right for the weights they are used with.

Only this module imports torchao (lazily: ``import efficientad_fast`` does not need it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from ._device import cpu_has_vnni
from .networks import PDN, AutoEncoder
from .op._build import import_cpp_extension

# Names the recipe: a file calibrated by another recipe is refused, not silently misread.
SCHEME = "pt2e-x86-inductor-minmax-v1"
_TORCHAO_HINT = "INT8 needs torchao (pip install 'torchao>=0.18'; it ships with efficientad_fast's dependencies)"


def _torchao():
    """torchao's PT2E entry points, or an ImportError that says what to install."""
    # Importing torchao registers an Enum the way this torch deprecates, and torch logs a
    # 'W... KernelPreference is an Enum subclass' line to stderr for it, in front of every
    # INT8 run's output (and of one-line errors): not the user's concern.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    import_cpp_extension()  # Inductor's import of it would warn that no GPU is present
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as exc:
        raise ImportError(_TORCHAO_HINT) from exc
    finally:
        pytree_log.setLevel(level)
    return prepare_pt2e, convert_pt2e, xiq


@functools.cache
def _quantizer():
    """The x86 Inductor quantizer with its default recipe, but min/max activation ranges
    (see the module's docstring) and uint8 average pools.

    The default recipe leaves conv -> ReLU -> avg_pool2d in float (the pool's input is not
    a quantized pattern's output), so the PDNs' two largest activations (128 x 253 x 253 at
    256 px) go through memory as float32 twice. Annotating each pool to take and give
    uint8 with its input's scale lets the convolution emit uint8 and the pool run on it:
    2.5 ms less per image at batch 1 (30.6 -> 28.0 ms on the Xeon of
    bench/results/int8_cpu_2026-12-06.md), the map within 0.006 of the fp32 map's range."""
    _, _, xiq = _torchao()
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.utils import get_input_act_qspec

    default = xiq.get_default_x86_inductor_quantization_config()
    # Without VNNI, oneDNN multiplies uint8 x int8 with a 16-bit intermediate that saturates:
    # 7-bit activations keep it exact (the map was 0.47 of its range off on an AVX2 EPYC).
    reduce_range = not cpu_has_vnni()
    activation = dataclasses.replace(
        default.input_activation,
        observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12, reduce_range=reduce_range),
    )
    config = dataclasses.replace(default, input_activation=activation, output_activation=activation)

    class PoolingX86InductorQuantizer(xiq.X86InductorQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.target is torch.ops.aten.avg_pool2d.default:
                    source = node.args[0]
                    node.meta[xiq.QUANT_ANNOTATION_KEY] = xiq._X86InductorQuantizationAnnotation(
                        input_qspec_map={source: get_input_act_qspec(config)},
                        output_qspec=SharedQuantizationSpec((source, node)),
                        _annotated=True,
                        _is_output_of_quantized_pattern=True,
                    )
            return model

    quantizer = PoolingX86InductorQuantizer()
    quantizer.set_global(config)
    return quantizer


class FeatureGraph(nn.Module):
    """The three networks as one module that ``torch.export`` can trace: float32 images in
    [0, 1] -> (standardized teacher, student, autoencoder) features, as in eval mode.

    The teacher standardization is folded into a real ``nn.Conv2d`` (the teacher's last conv
    with (t - mean) / std folded in): a convolution module the quantizer annotates like the
    others (a functional conv on a buffer was left in fp32, at 25 ms of a 57 ms pass)."""

    def __init__(
        self, teacher: PDN, head_weight: torch.Tensor, head_bias: torch.Tensor, student: PDN, autoencoder: AutoEncoder
    ) -> None:
        super().__init__()
        last = teacher.last_conv
        self.normalize = teacher.normalize
        self.teacher = teacher
        # The sizes are a Conv2d's own, which torch types as tuple[int, ...] (not the (h, w) it takes).
        self.head = nn.Conv2d(
            last.in_channels,
            last.out_channels,
            last.kernel_size,  # type: ignore[arg-type]
            last.stride,  # type: ignore[arg-type]
            last.padding,  # type: ignore[arg-type]
        )
        with torch.no_grad():
            self.head.weight.copy_(head_weight.float())
            assert self.head.bias is not None  # nn.Conv2d has one by default
            self.head.bias.copy_(head_bias.float())
        self.student = student
        self.autoencoder = autoencoder
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xn = self.normalize(x)
        teacher = self.head(self.teacher.body(xn))
        return teacher, self.student(xn, normalized=True), self.autoencoder(xn, normalized=True, dropout=False)


@dataclass
class Int8Calibration:
    """The activation observers' state after calibration: ``observers`` maps an observer's
    name in the prepared graph to its tensors (``min_val``, ``max_val``, ``eps``).
    ``images``: how many images it saw; ``image_size``: at which size (the ranges are used at
    any size); ``scheme``: the quantization recipe (:data:`SCHEME`)."""

    observers: dict[str, dict[str, torch.Tensor]]
    images: int
    image_size: tuple[int, int]
    scheme: str = SCHEME
    torchao_version: str = field(default="")
    source: str = field(default="", compare=False)  # the model file it was read from, for messages

    def to_payload(self) -> dict:
        """Plain types and tensors for ``torch.save(weights_only=True)``."""
        return {
            "scheme": self.scheme,
            "images": int(self.images),
            "image_size": list(self.image_size),
            "torchao_version": self.torchao_version,
            "observers": {
                name: {k: v.detach().cpu().clone() for k, v in state.items()} for name, state in self.observers.items()
            },
        }

    @classmethod
    def from_payload(cls, payload, source: str = "model file") -> "Int8Calibration":
        """Read what :meth:`to_payload` wrote; ValueError naming ``source`` when malformed or
        written by another recipe."""
        if not isinstance(payload, dict):
            raise ValueError(f"{source}: INT8 calibration must be a dict, got {type(payload).__name__}")
        scheme = payload.get("scheme")
        if scheme != SCHEME:
            raise ValueError(
                f"{source}: INT8 calibration of recipe {scheme!r}, this efficientad_fast reads "
                f"{SCHEME!r}; quantize the model again (efficientad-fast quantize)"
            )
        observers = payload.get("observers")
        if (
            not isinstance(observers, dict)
            or not observers
            or not all(
                isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values())
                for state in observers.values()
            )
        ):
            raise ValueError(f"{source}: INT8 calibration holds no observer tensors")
        for name, state in observers.items():
            for key in ("min_val", "max_val", "eps"):
                value = state.get(key)
                if value is not None and (not value.is_floating_point() or value.is_complex()):
                    raise ValueError(f"{source}: INT8 calibration {name}.{key} must be real floats, got {value.dtype}")
            for key, value in state.items():
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise ValueError(f"{source}: INT8 calibration {name}.{key} holds NaN or inf")
            _check_range(name, state, source)
        size = payload.get("image_size")
        images = payload.get("images")
        if not (
            isinstance(size, (list, tuple))
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            and isinstance(images, int)
            and not isinstance(images, bool)  # True is an int to Python, not an image count
            and images > 0
        ):
            raise ValueError(f"{source}: INT8 calibration has a bad image_size {size!r} or image count {images!r}")
        return cls(
            observers=observers,
            images=images,
            image_size=(int(size[0]), int(size[1])),
            scheme=scheme,
            torchao_version=str(payload.get("torchao_version", "")),
            source=source,
        )


# The largest activation an observer may have seen: the networks' activations stay within a
# few hundred; a range beyond this is a damaged or hand-made file.
_LARGEST_ACTIVATION = 1e6


def _check_range(name: str, state: dict, source: str) -> None:
    """An observer's range must be one quantization can use: min_val < max_val (an empty range
    maps every activation to one value), within +-1e6, and a positive eps (the smallest scale)."""
    low, high, eps = state.get("min_val"), state.get("max_val"), state.get("eps")
    if eps is not None and not bool((eps > 0).all()):
        raise ValueError(f"{source}: INT8 calibration {name} has eps {eps.flatten()[:4].tolist()}, which must be > 0")
    if low is None or high is None:
        return
    if low.shape != high.shape:
        raise ValueError(f"{source}: INT8 calibration {name} has min_val and max_val of different shapes")
    if bool((low >= high).any()):
        raise ValueError(
            f"{source}: INT8 calibration {name} has an empty or inverted range "
            f"[{low.flatten()[:4].tolist()}, {high.flatten()[:4].tolist()}]; quantize the model again"
        )
    if bool((low.abs() > _LARGEST_ACTIVATION).any() or (high.abs() > _LARGEST_ACTIVATION).any()):
        raise ValueError(
            f"{source}: INT8 calibration {name} has a range beyond +-{_LARGEST_ACTIVATION:g}; quantize the model again"
        )


def _prepared(graph: FeatureGraph, image_size: tuple[int, int]):
    """``graph`` exported for float32 (N, 3, H, W) batches (N dynamic) with observers
    inserted by the x86 Inductor quantizer; returns (prepared module, {name: observer})."""
    prepare_pt2e, _, _ = _torchao()
    height, width = image_size
    # Batch 2 as the example: a batch of 1 would let torch.export specialize the batch to 1.
    example = torch.rand(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        exported = torch.export.export(graph, (example,), dynamic_shapes=({0: batch},)).module()
    with warnings.catch_warnings():  # torchao's note on reduce_range (7-bit activations, above)
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated")
        prepared = prepare_pt2e(exported, _quantizer())
    observers = {name: module for name, module in prepared.named_modules() if "activation_post_process" in name}
    return prepared, observers


def _is_activation_observer(observer: nn.Module) -> bool:
    # Activation observers are per tensor; weight observers per output channel.
    return observer.qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric)


def calibrate_int8(
    graph: FeatureGraph, batches: Iterable[torch.Tensor], image_size: tuple[int, int]
) -> Int8Calibration:
    """Run float32 batches in [0, 1] ((N, 3, H, W), the size of ``image_size``) through the
    observed graph and return the activation observers' state. ValueError without images."""
    prepared, observers = _prepared(graph, image_size)  # imports torchao quietly (_torchao) first
    import torchao

    seen = 0
    with torch.no_grad():
        for batch in batches:
            prepared(batch.float().contiguous())
            seen += batch.shape[0]
    if seen == 0:
        raise ValueError("INT8 calibration needs at least one normal image, got none")
    states = {
        name: {k: v.detach().clone() for k, v in obs.state_dict().items()}
        for name, obs in observers.items()
        if _is_activation_observer(obs)
    }
    return Int8Calibration(
        observers=states,
        images=seen,
        image_size=(image_size[0], image_size[1]),
        torchao_version=getattr(torchao, "__version__", ""),
    )


def convert_int8(graph: FeatureGraph, calibration: Int8Calibration, image_size: tuple[int, int]) -> nn.Module:
    """The quantized graph (not compiled) of ``graph`` at ``image_size`` with the activation
    ranges of ``calibration``: the weight observers see the weights, the activation observers
    get the stored state. ValueError when the stored observers do not fit the graph."""
    _, convert_pt2e, _ = _torchao()
    prepared, observers = _prepared(graph, image_size)
    height, width = image_size
    with torch.no_grad():
        prepared(torch.zeros(1, 3, height, width))  # fills the weight observers (activations are replaced)
    activation = {name for name, obs in observers.items() if _is_activation_observer(obs)}
    whose = f"{calibration.source}: " if calibration.source else ""  # the model file, when read from one
    if activation != set(calibration.observers):
        raise ValueError(
            f"{whose}the INT8 calibration does not fit this model's graph ({len(calibration.observers)} stored observers, "
            f"{len(activation)} in the graph; recorded with torchao {calibration.torchao_version or '?'}): "
            "quantize the model again (efficientad-fast quantize)"
        )
    for name in activation:
        state = calibration.observers[name]
        expected = observers[name].state_dict()
        if set(state) != set(expected) or any(tuple(state[k].shape) != tuple(expected[k].shape) for k in state):
            raise ValueError(
                f"{whose}the INT8 calibration's observer {name} does not fit this model's graph: "
                "quantize the model again (efficientad-fast quantize)"
            )
        observers[name].load_state_dict(state)
    return convert_pt2e(prepared)


class Int8Networks:
    """The compiled INT8 graphs of a model's networks, one per image size, built on first
    use from :class:`FeatureGraph` s the model makes. Call with a float32 (N, 3, H, W) batch in
    [0, 1]: returns the three feature maps in float32. Thread-safe; a deep copy keeps the
    calibration and compiles afresh."""

    def __init__(self, calibration: Int8Calibration) -> None:
        self.calibration = calibration
        self._compiled: dict[tuple[int, int], Callable] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo) -> "Int8Networks":
        # Compiled graphs and locks do not copy; the copy compiles on its first call.
        return Int8Networks(self.calibration)

    def compiled(self, image_size: tuple[int, int], make_graph: Callable[[], FeatureGraph]) -> Callable:
        """The compiled graph for ``image_size`` (quantized and compiled on first use)."""
        image_size = (int(image_size[0]), int(image_size[1]))
        with self._lock:
            if image_size not in self._compiled:
                quantized = convert_int8(make_graph(), self.calibration, image_size)
                self._compiled[image_size] = torch.compile(quantized)
            return self._compiled[image_size]

    def __call__(
        self, x: torch.Tensor, make_graph: Callable[[], FeatureGraph]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.device.type != "cpu":
            raise ValueError(f"INT8 networks run on the CPU, the images are on {x.device}")
        run = self.compiled((x.shape[2], x.shape[3]), make_graph)
        import torch._inductor.config as inductor_config

        # Inductor's frozen INT8 graph fails to compile under inference mode (the weight
        # prepacking has no fake kernel there): no_grad gives the same guarantees here.
        # Set here, as compile's options reach the compiler too late: freezing makes the
        # weights constants that Inductor prepacks for oneDNN and fuses the int8 convolutions
        # with their quantize/dequantize neighbours; cpp_wrapper calls the 22 convolutions
        # and the fused kernels from C++ instead of Python (2.5 ms less at batch 1: 31.9 ->
        # 29.4 ms; the first call compiles some seconds longer).
        with torch.inference_mode(False), torch.no_grad(), inductor_config.patch(freezing=True, cpp_wrapper=True):
            return run(x.float())  # compiled for the layout it gets (predict's: channels_last)
