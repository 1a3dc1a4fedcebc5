"""Datasets: MVTec AD, VisA, MVTec LOCO, MPDD, a generic folder layout, and a synthetic set.

    from efficientad_fast.data import open_dataset, split_train_validation, make_loader

    train = open_dataset("/data/mvtec", "mvtec_ad", "bottle", "train")       # 256x256 default
    train, held_out = split_train_validation(train, fraction=0.1, seed=0)    # for quantiles
    test = open_dataset("/data/mvtec", "mvtec_ad", "bottle", "test")
    for batch in make_loader(test, batch_size=16, workers=2):
        batch["image"], batch["mask"], batch["label"], batch["kind"]          # (N,3,H,W), (N,1,H,W), (N,)

    make_synthetic("/tmp/synthetic")          # weave (texture) + board (object), MVTec AD layout
    open_dataset("/tmp/synthetic", "mvtec_ad", "board", "test")
    make_synthetic("/tmp/kit", categories=("kit",))   # parts on a tray, MVTec LOCO layout
    open_dataset("/tmp/kit", "mvtec_loco", "kit", "test")   # kinds: structural / logical
    make_synthetic_video("/tmp/conveyor.avi")  # boards on a conveyor + conveyor.avi.labels.csv

Layouts read (``root`` holds the category folders):

    mvtec_ad, mpdd  <cat>/train/good, <cat>/test/{good,<defect>}, <cat>/ground_truth/<defect>/<stem>_mask.png
    visa            <cat>/Data/Images/{Normal,Anomaly}, <cat>/Data/Masks/Anomaly, split from
                    <root>/split_csv/1cls.csv (object,split,label,image,mask; label normal/anomaly;
                    paths relative to root); defect names from <cat>/image_anno.csv if present
    mvtec_loco      <cat>/{train/good, validation/good, test/{good,logical_anomalies,structural_anomalies}},
                    <cat>/ground_truth/<type>/<stem>/000.png, 001.png, ... (OR-ed into one mask;
                    AnomalyDataset.region_masks(i) gives them one by one for sPRO,
                    read_loco_defects_config(root, cat) reads defects_config.json)
    folder          [<cat>/]train/good, optional validation/good, test/<label>/ ("good" = normal),
                    optional ground_truth/<label>/<stem>_mask.png or <stem>.png (without that
                    folder, the label's images have has_mask=False and an all-zero mask)

Items are dicts: image float32 (3,H,W) in [0,1], mask float32 (1,H,W) in {0,1}, label 0/1,
path, defect ("good" or the defect folder), kind ("good" | "structural" | "logical" |
"anomalous"; structural/logical only for MVTec LOCO), has_mask, index. Images are resized with
an antialiasing bilinear filter, masks with nearest neighbour; grayscale becomes RGB, alpha is
dropped, 16-bit images keep their precision. Any non-zero mask pixel is defect.
"""

from ._io import IMAGE_SUFFIXES, DataError, find_images, open_image, to_rgb_array
from .datasets import (
    DATASETS,
    KINDS,
    AnomalyDataset,
    list_categories,
    make_loader,
    open_dataset,
    open_labelled_folder,
    read_loco_defects_config,
    split_train_validation,
)
from .layouts import FolderLayout, Sample
from .penalty import GenericImages, check_penalty_images, fetch_imagenette, imagenette_folder, penalty_image_set
from .synthetic import (
    LOCO_CATEGORIES,
    LOGICAL_DEFECTS,
    PHOTO_TEXTURES,
    STRUCTURAL_DEFECTS,
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DEFECT_KINDS,
    make_synthetic,
    render_synthetic,
)
from .video import make_synthetic_video, read_video_labels
from .video_frames import labelled_video_set, video_training_set

__all__ = [
    "AnomalyDataset",
    "DATASETS",
    "DataError",
    "FolderLayout",
    "GenericImages",
    "check_penalty_images",
    "IMAGE_SUFFIXES",
    "KINDS",
    "LOCO_CATEGORIES",
    "LOGICAL_DEFECTS",
    "PHOTO_TEXTURES",
    "STRUCTURAL_DEFECTS",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DEFECT_KINDS",
    "Sample",
    "fetch_imagenette",
    "find_images",
    "imagenette_folder",
    "list_categories",
    "make_loader",
    "make_synthetic",
    "labelled_video_set",
    "make_synthetic_video",
    "open_image",
    "open_dataset",
    "open_labelled_folder",
    "penalty_image_set",
    "read_loco_defects_config",
    "read_video_labels",
    "video_training_set",
    "render_synthetic",
    "split_train_validation",
    "to_rgb_array",
]
