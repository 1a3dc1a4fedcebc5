"""Training: the slim loop of the paper's Algorithm 1 (:mod:`.loop`: losses, augmentation,
checkpoints, resume, Ctrl-C) and the calibration after it (:mod:`.calibrate`: teacher
statistics, map quantiles, decision thresholds).

    stats   = teacher channel mean/std over the training images, one streaming pass
    loop    : hard feature loss (mean of the student-teacher squared differences at or
              above their 0.999 quantile) + penalty (student[:, :384]^2 on a generic image)
              + autoencoder loss on an augmented image + student-autoencoder loss;
              Adam(lr 1e-4, weight decay 1e-5), lr x 0.1 at 95 % of the steps
    calibrate: q_a = 0.9 and q_b = 0.995 quantiles of each map on held-out training images,
              then the decision thresholds: image = the 0.995 quantile of those images'
              scores, pixel = the q_b level (0.1) of the normalized map; optionally the
              F1-optimal image threshold on labelled validation images (threshold_from_f1)
"""

from .calibrate import calibrate, exact_quantile, teacher_channel_stats, threshold_from_f1
from .loop import (
    CHECKPOINT_NAME,
    RESUMABLE_CHANGES,
    BatchSchedule,
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    augment,
    compute_losses,
    save_checkpoint,
    train,
    write_training_log,
)

__all__ = [
    "CHECKPOINT_NAME",
    "RESUMABLE_CHANGES",
    "BatchSchedule",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "augment",
    "calibrate",
    "compute_losses",
    "exact_quantile",
    "save_checkpoint",
    "teacher_channel_stats",
    "threshold_from_f1",
    "train",
    "write_training_log",
]
