"""A camera-style inspection loop: one frame at a time through ``ead.FastPredictor``.

Shows how to score a stream of frames with the lowest latency the machine allows:
``ead.FastPredictor`` at batch 1 holds one fixed input shape (uint8 (1, 3, S, S) frames,
a quarter of float32's bytes to move), runs the whole computation as one CUDA graph on a GPU
(fp16 networks) and the plain fast path on a CPU (the fastest precision there, measured once
by ``precision="auto"`` and cached). For every frame it prints the score, the label and the
latency of the call (copying the frame in and reading the score back); at the end the p50
and p99 latency and the frames per second.

Frames come from ``--source``: a folder of PNG/JPEG images (sorted by name) or, when PyAV is
installed (``pip install av``), a video file. Without ``--source`` it makes a few images of
the built-in synthetic "board" category (``efficientad_fast.data.make_synthetic``, normal
parts and a few defective ones) in a temporary folder and loops over them, so it runs
anywhere. Every frame is resized to ``--image-size`` (default 256).

Run it (on the demo's model: ``efficientad-fast demo [--video]`` writes demo_out/):

    python examples/python/camera_loop.py --model demo_out/board/model.pt --frames 50
    python examples/python/camera_loop.py --model demo_out/board/model.pt --source demo_out/data/board/test
    python examples/python/camera_loop.py --model demo_out/board/model.pt --source demo_out/video/conveyor.avi

Ctrl-C stops the loop and still prints the summary. Exit codes: 0 done, 2 bad input
(missing model or source, no frames, a video without PyAV, a bad option), 130 interrupted.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_SYNTHETIC_FRAMES = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Score frames one at a time with ead.FastPredictor (batch 1) and report latency."
    )
    parser.add_argument("--model", required=True, help="model file written by `train` or model.save")
    parser.add_argument(
        "--source", default=None, help="folder of images or a video file (needs PyAV); default: synthetic board frames"
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help=f"score N frames (default: every frame of --source, or {DEFAULT_SYNTHETIC_FRAMES} "
        "synthetic ones); the images of a folder repeat as needed",
    )
    parser.add_argument(
        "--sensitivity",
        type=float,
        default=0.5,
        help="in [0, 1]: 0.5 = the calibrated thresholds, higher flags more (default 0.5)",
    )
    parser.add_argument("--image-size", type=int, default=256, help="frame size, >= 256 (default 256)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto (default): the GPU when there is one, else the CPU",
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before loading anything heavy."""
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if not 0.0 <= args.sensitivity <= 1.0:
        raise ValueError(f"--sensitivity must be in [0, 1], got {args.sensitivity}")
    if args.image_size < 256:
        raise ValueError(f"--image-size must be >= 256 (the networks need 256 px), got {args.image_size}")
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"model file not found: {args.model}")
    if args.source is not None and not Path(args.source).exists():
        raise FileNotFoundError(f"--source not found: {args.source}")


def to_tensor(image, size: int):
    """A PIL image as a uint8 (1, 3, size, size) tensor."""
    import numpy as np
    import torch
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)


def image_paths(folder: Path) -> list[Path]:
    paths = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


def folder_frames(paths: list[Path], size: int, repeat: bool) -> Iterator:
    """The images in order (again and again with ``repeat``), as frames."""
    from PIL import Image

    while True:
        for path in paths:
            try:
                with Image.open(path) as image:
                    frame = to_tensor(image, size)
            except OSError as exc:
                raise ValueError(f"cannot read {path} as an image: {exc}") from None
            yield frame
        if not repeat:
            return


def open_video(path: Path):
    """The video file opened with PyAV (checked before the model loads)."""
    try:
        import av
    except ImportError:
        raise ValueError(f"{path} is not a folder; reading a video file needs PyAV: pip install av") from None
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot open {path} as a video: {exc}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


def video_frames(container, size: int) -> Iterator:
    """The frames of an opened video, decoded one by one; closes it at the end."""
    import av

    with container:
        try:
            for frame in container.decode(video=0):
                yield to_tensor(frame.to_image(), size)
        except av.error.FFmpegError as exc:
            raise ValueError(f"cannot decode {container.name}: {exc}") from None


def synthetic_frames(folder: Path, size: int) -> list[Path]:
    """Make a few synthetic board images (normal and defective) in ``folder``: their paths."""
    from efficientad_fast.data import make_synthetic

    root = make_synthetic(
        folder / "data",
        seed=0,
        categories=("board",),
        n_train=1,
        n_test_good=4,
        n_test_defect_per_type=1,
        defects=("hole", "stain"),
        image_size=size,
    )
    test = root / "board" / "test"
    # Interleave normal and defective parts, as a line would show them.
    return sorted(test.rglob("*.png"), key=lambda p: (p.stem, p.parent.name))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation between the closest ranks)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def loop(args: argparse.Namespace, frames: Iterator) -> int:
    import torch

    import efficientad_fast as ead

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA GPU here")
        # fp16 networks and a CUDA graph: the fast GPU setting.
        model = ead.load(args.model).to("cuda", torch.float16)
    else:
        model = ead.load(args.model, precision="auto", batch_size=1, image_size=args.image_size)
    fast = ead.FastPredictor(
        model, batch_size=1, image_size=args.image_size, input_dtype=torch.uint8, sensitivity=args.sensitivity
    )
    print(
        f"FastPredictor: batch 1, {args.image_size}x{args.image_size} uint8 frames on {fast.device}, "
        f"precision {model.precision}"
    )

    latencies: list[float] = []
    flagged = 0
    status = 0
    started = time.perf_counter()
    try:
        for index, frame in enumerate(itertools.islice(frames, args.frames)):
            t0 = time.perf_counter()
            pred = fast(frame)
            score = float(pred.score[0])  # reading the score waits for the GPU
            latency_ms = (time.perf_counter() - t0) * 1000
            latencies.append(latency_ms)
            if pred.label is None:
                label = "-"
            else:
                label = "ANOMALOUS" if bool(pred.label[0]) else "normal"
                flagged += label == "ANOMALOUS"
            print(f"frame {index:5d}  score {score:9.4f}  {label:<9}  {latency_ms:8.2f} ms", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    elapsed = time.perf_counter() - started
    if not latencies:
        if status:
            return status
        raise ValueError(f"no frames in {args.source}")
    n = len(latencies)
    print(
        f"{n} frames, {flagged} anomalous: latency p50 {percentile(latencies, 50):.2f} ms, "
        f"p99 {percentile(latencies, 99):.2f} ms; {n / (sum(latencies) / 1000):.1f} fps predictor, "
        f"{n / elapsed:.1f} fps with reading frames"
    )
    return status


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.source is None:
        with tempfile.TemporaryDirectory(prefix="camera_loop_") as folder:
            paths = synthetic_frames(Path(folder), args.image_size)
            if args.frames is None:
                args.frames = DEFAULT_SYNTHETIC_FRAMES
            return loop(args, folder_frames(paths, args.image_size, repeat=True))
    source = Path(args.source)
    if source.is_dir():
        # With --frames, the images repeat until that many frames have been scored.
        return loop(args, folder_frames(image_paths(source), args.image_size, repeat=args.frames is not None))
    return loop(args, video_frames(open_video(source), args.image_size))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {str(exc).strip()}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
