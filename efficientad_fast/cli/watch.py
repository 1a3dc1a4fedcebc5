"""The ``watch`` command: score a live line with smoothing and alarms."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from ._common import (
    _add_precision_arg,
    _add_tile_args,
    _BadArguments,
    _given_options,
    _load_model,
    _progress_enabled,
    at_least,
    finite_number,
    positive_number,
)


def cmd_watch(args: argparse.Namespace) -> int:
    """Score a live line: a video file, a folder of images (name order), a camera
    (/dev/videoN or its number) or a stream URL (rtsp://...), with temporal smoothing and
    alarms. Writes OUT/frames.jsonl (one JSON line per frame), OUT/alarms/ (a heatmap overlay
    PNG per alarm onset) and OUT/summary.json, prints a live line (fps, latency p50/p99,
    alarms) and a summary. A file is read as fast as scoring goes (no frame dropped) unless
    --realtime; a camera or URL is live: frames that come while scoring lags are dropped and
    counted. Ctrl-C stops and keeps everything written (exit 130)."""
    from ..stream import Inspector, check_video_path, check_watch_outputs, format_summary, open_source, watch

    # A source that cannot be read fails before any work; watch's own earlier pictures are no frames.
    _check_part_args(args)
    check_watch_outputs(args.out, args.parts)  # a FIFO there would hang the watch after calibrating
    source = open_source(args.source, fps=args.fps, skip=[Path(args.out) / "alarms"]).open()
    if args.save_video:
        inputs = {"--belt": args.belt, "--calibrate-on": args.calibrate_on}
        check_video_path(args.save_video, args.source, {k: v for k, v in inputs.items() if v is not None})
    model = _load_model(args, 1)
    tile = model.tile if args.tile is None else args.tile
    predictor = None  # the Inspector's FastPredictor of the whole frame
    if tile:  # predict cuts, scores and stitches the tiles
        from ..tiling import check_tile

        check_tile(tile, args.overlap, args.image_size, args.image_size)
        predictor = functools.partial(model.predict, tile=tile, overlap=args.overlap)
    inspector = Inspector(
        model,
        smoothing=args.smoothing,
        threshold=args.threshold,
        image_size=args.image_size,
        ema_alpha=args.ema_alpha,
        k=args.kofn_k,
        n=args.kofn_n,
        off_threshold=args.off_threshold,
        map_alpha=args.map_alpha,
        queue_size=args.queue_size,
        max_latency_ms=args.max_latency_ms,
        predictor=predictor,
    )
    judge = _part_judge(args, inspector)
    page = _live_page(args, inspector)
    if page is not None:  # a port that cannot be had is refused before the calibration clip is scored
        page.start()
        print(f"live page: {page.url}")
    watching = False
    try:
        if args.calibrate_on is not None:
            threshold = inspector.calibrate(args.calibrate_on)
            print(
                f"threshold {threshold:.4g}: the 99.5 % quantile of {args.smoothing}-smoothed scores "
                f"of {args.calibrate_on}"
            )
            if judge is not None and args.part_threshold is None:
                from ..stream import PART_MARGIN, calibrate_parts

                margin = PART_MARGIN if args.part_margin is None else args.part_margin
                part = calibrate_parts(inspector, judge, args.calibrate_on, margin=margin)
                print(f"part threshold {part:.4g}: from the parts of {args.calibrate_on} (margin {margin})")
        watching = True
        summary = watch(
            inspector,
            source,
            args.out,
            max_frames=args.max_frames,
            realtime=args.realtime or None,
            save_video=args.save_video,
            fps=args.fps,
            progress=_progress_enabled(args),
            parts=judge,
            serve=page,
        )
    except KeyboardInterrupt:
        written = Path(args.out) / "summary.json"
        if watching and written.is_file():  # watch wrote the summary of what it did before it re-raised
            print(format_summary(json.loads(written.read_text())), file=sys.stderr)
        return 130
    print(format_summary(summary))
    print(
        f"written: {Path(args.out) / 'frames.jsonl'}, {Path(args.out) / 'alarms'}/"
        + (f", {args.save_video}" if args.save_video else "")
        + (f", {Path(args.out) / 'parts.jsonl'}, {Path(args.out) / 'parts'}/" if judge is not None else "")
    )
    if not summary["scored"]:  # exit 1 says so on stderr too (the tenth probe: a 0-frame video said nothing there)
        print(
            f"efficientad-fast watch: no frame of {args.source} was scored ({summary['frames']} read)", file=sys.stderr
        )
        return 1
    return 0


def _live_page(args: argparse.Namespace, inspector):
    """The LivePage of --serve (started by watch), else None."""
    if args.serve is None:
        return None
    from ..stream import LivePage

    host, port = args.serve
    return LivePage(host, port, source=str(args.source), map_threshold=inspector.map_threshold)


def _serve_address(text: str) -> tuple[str, int]:
    """argparse type of --serve: ``HOST:PORT`` or ``PORT``."""
    from ..stream.live_page import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--serve ")) from None


def _check_part_args(args: argparse.Namespace) -> None:
    """Part options without --parts, --parts without --belt, a --part-margin that is negative
    or has no --calibrate-on to apply to: usage errors, before any work."""
    given = _given_options(args, "belt", "part_k", "part_threshold", "part_margin")
    if not args.parts:
        if given:
            raise _BadArguments(f"{', '.join(given)}: for --parts only")
        return
    if args.belt is None:
        raise _BadArguments("--parts needs --belt CLIP: a video, folder or image of the empty belt")
    if args.part_margin is not None and (args.part_margin < 0 or args.calibrate_on is None):
        raise _BadArguments("--part-margin: a number >= 0 for the part threshold of --calibrate-on")


def _part_judge(args: argparse.Namespace, inspector):
    """The PartJudge of --parts (its belt learned from --belt), else None."""
    from ..stream import Belt, PartJudge, PartTracker

    if not args.parts:
        return None
    try:
        belt = Belt.from_source(args.belt, args.image_size)
    except (OSError, ValueError) as exc:  # the source's errors call it "the video source"
        raise type(exc)(f"--belt {args.belt}: {exc}") from exc
    # Without --part-threshold or --calibrate-on: the frame threshold (a part's score is a
    # maximum of the map, as a frame's is).
    threshold = args.part_threshold
    if threshold is None and args.calibrate_on is None:
        threshold = inspector.threshold
    return PartJudge(PartTracker(belt), threshold, k=args.part_k or 2, map_threshold=inspector.map_threshold)


def _add_watch_parser(subparsers) -> None:
    """Register the ``watch`` command."""
    from ..stream import SMOOTHERS

    w = subparsers.add_parser(
        "watch",
        help="score a video, camera or image folder live, with smoothing and alarms",
        description=cmd_watch.__doc__,
    )
    w.add_argument("--model", required=True, help="model file written by train")
    w.add_argument(
        "--source", required=True, help="video file, folder of images, camera (/dev/video0 or 0) or URL (rtsp://...)"
    )
    w.add_argument("--out", default="watch_out", help="output folder (default: watch_out)")
    w.add_argument(
        "--smoothing",
        choices=SMOOTHERS,
        default="ema",
        help="ema (default; mean delay (1-a)/a frames), kofn (alarm when k of the last n scores are "
        "over; k-1 frames late), hysteresis (off below a lower threshold; 0 frames), none",
    )
    w.add_argument(
        "--threshold",
        type=finite_number,
        default=None,
        help="on the smoothed image score (default 0.1: the q_b level of calibrated maps)",
    )
    w.add_argument(
        "--calibrate-on",
        default=None,
        metavar="CLIP",
        help="set the threshold to the 99.5 %% quantile of the smoothed scores of this clip of normal "
        "frames (a video file or folder)",
    )
    w.add_argument("--ema-alpha", type=finite_number, default=0.4, help="newest score's weight in ema (default 0.4)")
    w.add_argument("--kofn-k", type=at_least(1), default=3, help="k of kofn (default 3)")
    w.add_argument("--kofn-n", type=at_least(1), default=5, help="n of kofn (default 5)")
    w.add_argument(
        "--off-threshold",
        type=finite_number,
        default=None,
        help="hysteresis: alarm off below this (default: 0.2 x |threshold| below it)",
    )
    w.add_argument(
        "--map-alpha",
        type=finite_number,
        default=None,
        help="per-pixel EMA of the map with this weight before scoring (static camera)",
    )
    w.add_argument(
        "--save-video",
        default=None,
        metavar="FILE",
        help="write the annotated video (frame | heatmap, red border in alarm): .mp4 (H.264) or .avi (MJPEG)",
    )
    w.add_argument("--max-frames", type=at_least(1), default=None, help="stop after this many frames")
    w.add_argument(
        "--max-latency-ms",
        type=positive_number,
        default=None,
        help="skip a waiting frame whose result would come later than this when a newer one waits",
    )
    w.add_argument("--queue-size", type=at_least(1), default=2, help="decoded frames waiting for scoring (default 2)")
    w.add_argument(
        "--realtime",
        action="store_true",
        help="play a file at its timestamps, dropping frames when scoring lags (cameras always are)",
    )
    w.add_argument(
        "--fps",
        type=positive_number,
        default=None,
        help="frame rate of a folder of images (timestamps; default: the read times)",
    )
    _add_part_args(w)
    w.add_argument("--image-size", type=int, default=256, help="model input size in pixels (>= 256)")
    _add_tile_args(w)
    _add_precision_arg(w, "--dtype")
    w.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    w.add_argument("--quiet", action="store_true", help="no live line")
    w.set_defaults(func=cmd_watch)


def _add_part_args(w) -> None:
    """watch's --parts and its settings, and --serve."""
    w.add_argument(
        "--serve",
        type=_serve_address,
        default=None,
        metavar="[HOST:]PORT",
        help="show a live page while watching (frame and heatmap, score trace, part verdicts, counters) "
        "at http://HOST:PORT/ (HOST default 127.0.0.1: anyone who can reach it sees the camera); "
        "it stops with the watch",
    )
    w.add_argument(
        "--parts",
        action="store_true",
        help="also pass or reject each part once as it leaves the view (fixed camera over a conveyor): "
        "OUT/parts.jsonl and a picture per rejected part in OUT/parts/; needs --belt",
    )
    w.add_argument(
        "--belt", default=None, metavar="CLIP", help="a video, image folder or image of the empty belt (for --parts)"
    )
    w.add_argument(
        "--part-k", type=at_least(1), default=None, help="a part's score: the k-th largest of its frames' (default 2)"
    )
    w.add_argument(
        "--part-threshold",
        type=finite_number,
        default=None,
        help="reject a part scoring above this (default: from the parts of --calibrate-on, else --threshold's)",
    )
    w.add_argument(
        "--part-margin",
        type=finite_number,
        default=None,
        help="--calibrate-on's part threshold: the highest normal part plus this many times its distance "
        "from their median (default 0.25)",
    )
