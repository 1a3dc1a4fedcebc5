"""Which defect types a model misses on a LOCO-layout category: image AUROC of each defect type
against the normal test images (issue 26: "say plainly where EfficientAD loses"). The report's
logical and structural columns pool three defect types each; this splits them.

    efficientad-fast predict --model MODEL.pt --out /tmp/pred --no-heatmaps DATA/kit/test
    python bench/loco_defects.py /tmp/pred/scores.csv DATA/kit

A test image's defect type is read from its ground-truth masks (``ground_truth/<split>/<stem>/``,
one PNG per defect region) and the category's ``defects_config.json``, as sPRO reads them.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from efficientad_fast.data import read_loco_defects_config
from efficientad_fast.metrics import roc_auc


def defect_type(image: Path, category: Path, names: dict[int, str]) -> str:
    """``good``, or the defect named by the pixel value of the image's ground-truth masks."""
    if image.parent.name == "good":
        return "good"
    masks = sorted((category / "ground_truth" / image.parent.name / image.stem).glob("*.png"))
    values = {int(np.array(Image.open(mask)).max()) for mask in masks}
    if not values or not values <= names.keys():
        raise ValueError(
            f"{image}: ground-truth masks {masks} carry pixel values {sorted(values)}, not one of "
            f"defects_config.json's {sorted(names)}"
        )
    return "+".join(sorted(names[v] for v in values))


def scores_by_type(scores_csv: Path, category: Path) -> dict[str, list[float]]:
    """predict's scores grouped by defect type (``good`` for the normal images)."""
    config = read_loco_defects_config(category.parent, category.name)
    names = {value: entry["defect_name"] for value, entry in config.items()}
    groups: dict[str, list[float]] = {}
    with scores_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(defect_type(Path(row["path"]), category, names), []).append(float(row["score"]))
    if "good" not in groups or len(groups) < 2:
        raise ValueError(f"{scores_csv}: need scores of normal (test/good) and defective images, got {sorted(groups)}")
    return groups


def by_type_table(groups: dict[str, list[float]]) -> str:
    good = groups["good"]
    lines = [
        f"| defect | images | image AUROC against the {len(good)} normal | "
        f"scores (normal: {min(good):.3f} to {max(good):.3f}) |",
        "|---|---|---|---|",
    ]
    for kind, scores in groups.items():
        if kind == "good":
            continue
        auroc = roc_auc(np.array(good + scores), np.array([0] * len(good) + [1] * len(scores)))
        lines.append(f"| {kind} | {len(scores)} | {auroc:.3f} | {' '.join(f'{s:.3f}' for s in sorted(scores))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", type=Path, help="scores.csv written by efficientad-fast predict")
    parser.add_argument(
        "category", type=Path, help="the LOCO-layout category folder (defects_config.json, ground_truth/)"
    )
    args = parser.parse_args()
    print(by_type_table(scores_by_type(args.scores, args.category)))


if __name__ == "__main__":
    main()
