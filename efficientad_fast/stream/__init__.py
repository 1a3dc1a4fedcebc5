"""Live inspection of a line: score a stream of frames (a video file, a folder of images, a
camera or an RTSP URL), smooth the scores over time and raise alarms, with a bounded queue
between decoding and scoring so memory and latency stay bounded.

    from efficientad_fast import load
    from efficientad_fast.stream import Inspector

    inspector = Inspector(load("model.pt"), smoothing="kofn")      # threshold: the q_b level
    inspector.calibrate("normal_clip.mp4")                          # or: from normal frames
    for result in inspector.run("rtsp://camera/stream"):
        if result.alarm:
            ...

EfficientAD scores each image on its own; on a line a defect stays in view for several
frames while camera noise, vibration and motion come and go from one frame to the next.
The smoothers trade a few frames of latency for fewer false alarms:

    none        the raw score against the threshold; latency 0 frames.
    ema         s_t = a x_t + (1 - a) s_(t-1); alarm when s_t > threshold. Mean delay
                (1 - a) / a frames (1.5 at the default a = 0.4).
    kofn        alarm when at least k of the last n raw scores exceed the threshold; the
                smoothed score is the k-th largest of them. Raises k - 1 frames late and
                holds up to n - k frames after the defect left (default k=3 of n=5: 2 and 2).
    hysteresis  alarm on when the raw score exceeds the threshold, off only when it drops
                below a lower off threshold (default 0.8 x threshold): no flicker around the
                threshold; latency 0 frames to raise, holds while the score stays above off.

``map_alpha`` adds a per-pixel EMA of the anomaly map before the image score is taken (for a
static camera, where pixel (i, j) of consecutive frames sees the same place): noise that
moves from frame to frame averages out, a defect that stays put does not. Mean delay
(1 - map_alpha) / map_alpha frames, on top of the smoother's.

The threshold applies to (smoothed) image scores, which are maxima of the calibrated map:
by default the model's image threshold (calibration sets it from held-out normal images'
scores), else the map's q_b level (:func:`efficientad_fast.heatmaps.default_threshold`,
0.1); :meth:`Inspector.calibrate` sets it to the 99.5 % quantile of the smoothed scores of a
clip of normal frames, which also accounts for the camera and the smoother.
"""

from .analysis import alarm_figures, compare_smoothers, plot_stream, replay, smoother_table, threshold_for_recall
from .inspector import CALIBRATION_QUANTILE, FrameResult, Inspector
from .live_page import LivePage
from .parts import PART_MARGIN, PartJudge, PartVerdict, calibrate_parts, part_threshold
from .smoothing import SMOOTHERS, EMASmoothing, HysteresisSmoothing, KOfNSmoothing, NoSmoothing, make_smoother
from .sources import (
    LIVE_SCHEMES,
    ArraySource,
    FolderSource,
    FrameSource,
    SourceFrame,
    VideoSource,
    check_fps,
    open_source,
    prepare_frame,
    prepared_frames,
)
from .tracking import Belt, Box, PartTracker, Track
from .watch import check_video_path, check_watch_outputs, format_summary, watch

__all__ = [
    "CALIBRATION_QUANTILE",
    "LIVE_SCHEMES",
    "PART_MARGIN",
    "SMOOTHERS",
    "ArraySource",
    "Belt",
    "Box",
    "EMASmoothing",
    "FolderSource",
    "FrameResult",
    "FrameSource",
    "HysteresisSmoothing",
    "Inspector",
    "KOfNSmoothing",
    "LivePage",
    "NoSmoothing",
    "PartJudge",
    "PartTracker",
    "PartVerdict",
    "SourceFrame",
    "Track",
    "VideoSource",
    "alarm_figures",
    "calibrate_parts",
    "check_fps",
    "check_video_path",
    "check_watch_outputs",
    "compare_smoothers",
    "format_summary",
    "make_smoother",
    "open_source",
    "part_threshold",
    "plot_stream",
    "prepare_frame",
    "prepared_frames",
    "replay",
    "smoother_table",
    "threshold_for_recall",
    "watch",
]
