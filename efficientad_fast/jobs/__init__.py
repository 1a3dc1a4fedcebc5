"""The jobs behind the command line, one module each: ``train`` (a category; several on a
runner), ``evaluate``, ``predict`` (locally; ``ray_predict`` on Ray Data), ``report`` (every
category and sweep setting on a runner) and ``demo``; ``engines`` is the one seam between the
jobs and Ray: a local runner and a Ray runner with the same submit/gather interface. (The
watch job lives with the live scorer in :mod:`efficientad_fast.stream.watch`.)"""

from .demo import DEMO_AMP, DEMO_PENALTY, DEMO_STEPS, run_demo
from .engines import LocalRunner, RayRunner, make_runner, record_failure
from .evaluate import check_tiling, evaluate_model
from .predict import PredictInterrupted, collect_image_paths, decision_thresholds, predict_files, printable, read_images
from .report import ROW_FILE, SWEEP_KEYS, parse_sweep, read_finished_run, report_run, run_report
from .train import (
    MODEL_FILE,
    build_model,
    check_categories,
    fleet_folder,
    train_categories,
    train_category,
    train_from_video,
)

__all__ = [
    "DEMO_AMP",
    "DEMO_PENALTY",
    "DEMO_STEPS",
    "MODEL_FILE",
    "ROW_FILE",
    "SWEEP_KEYS",
    "LocalRunner",
    "PredictInterrupted",
    "RayRunner",
    "build_model",
    "check_categories",
    "check_tiling",
    "collect_image_paths",
    "decision_thresholds",
    "evaluate_model",
    "fleet_folder",
    "make_runner",
    "parse_sweep",
    "predict_files",
    "printable",
    "read_finished_run",
    "read_images",
    "record_failure",
    "report_run",
    "run_demo",
    "run_report",
    "train_categories",
    "train_category",
    "train_from_video",
]
