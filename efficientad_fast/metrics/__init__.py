"""Evaluation metrics for anomaly detection: exact, and frugal enough for whole categories.

    from efficientad_fast.metrics import evaluate, evaluate_loco

    # MVTec AD / VisA / MPDD: image scores (N,), labels (N,) in {0, 1},
    # maps (N, 1, H, W) or (N, H, W) float, masks of the same shape (0 = normal, one
    # positive value = anomalous; resize masks with nearest-neighbour).
    evaluate(scores, labels, maps, masks)
    # -> {"image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupr", "aupro"}

    # MVTec LOCO: per image a list of region masks (ground_truth/<type>/<id>/000.png, ...);
    # each mask's positive pixel value names its defect in defects_config.json.
    evaluate_loco(scores, kinds, maps, masks, defects_config="<cat>/defects_config.json")
    # -> {"structural": {...}, "logical": {...}, "mean": {...}}, each with
    #    "image_auroc", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupr", "auspro_0.05", "auspro_0.3"

Definitions (all curves are exact: every distinct score is a threshold, ties move together):

- ``image_auroc`` / ``pixel_auroc``: area under the ROC curve (trapezoidal, as
  ``sklearn.metrics.roc_auc_score``); pixels of all images are pooled.
- ``image_f1`` / ``pixel_f1``: best F1 = max over thresholds of 2·TP / (2·TP + FP + FN).
- ``pixel_aupr``: average precision of the pooled pixels (area under the precision-recall
  curve as ``sklearn.metrics.average_precision_score``: Σ (R_k − R_{k−1}) · P_k over the
  distinct scores, descending), as VisA and MVTec AD papers report it.
- ``aupro`` (MVTec AD, Bergmann et al. 2021): regions are the 8-connected components of
  each image's ground-truth mask; PRO(t) = mean over all regions of all images of the
  fraction of the region's pixels scoring ≥ t; FPR(t) over the normal pixels (mask 0) of
  all images. The curve from (0, 0) is integrated with the trapezoidal rule up to FPR
  ``pro_limit`` (0.3; the curve is linearly interpolated there) and divided by it.
- ``auspro_<limit>`` (MVTec LOCO, Bergmann et al. 2022, following its official
  evaluation code): each ground-truth region (one mask file = one defect, whether
  connected or not, possibly overlapping others) saturates at
  ``floor(saturation_threshold × area)`` pixels if its defect's ``relative_saturation``
  is true, else at ``min(saturation_threshold, area)`` pixels (at least 1);
  sPRO(t) = mean over regions of min(overlap / saturation, 1); FPR(t) over the pixels
  that are in no region, of every evaluated image (the good ones *and* the defect-free
  part of the anomalous ones, as the official ``get_fp_tn_areas_per_image`` does).
  Integrated like ``aupro`` for each limit in ``spro_limits`` (0.05 and 0.3).

Cost: one sort of all pixels (O(P log P)), cumulative sums, no thresholds × pixels
matrix; per-region work only touches anomalous pixels. Maps are kept in their own
floating dtype (float32 costs 4 bytes a pixel; half types are widened to float32).
"""

from .curves import auc_up_to, average_precision, best_f1, f1_optimal_threshold, roc_auc
from .evaluate import evaluate, evaluate_loco
from .regions import LOCO_KINDS, parse_defects_config

__all__ = [
    "LOCO_KINDS",
    "auc_up_to",
    "average_precision",
    "best_f1",
    "f1_optimal_threshold",
    "evaluate",
    "evaluate_loco",
    "parse_defects_config",
    "roc_auc",
]
