"""U-Net on the tutorial's nuclei: training time, held-out IoU and counts.

The 16 tiles (128×128) of the tutorial are split 12 for training and 4
held out. Reported: training time, per-class IoU and Dice on the held-out
tiles (whole-tile prediction), and nuclei counted on the predicted masks
(connected components, split by a distance-transform watershed) against
the annotated instances.

Usage: python bench/bench_segmentation.py [--epochs 40] [--out bench/results]
"""
import argparse
import os
import time

import numpy as np

from results_io import write_results  # bench/ is on sys.path

from orangecontrib.deepimage.demo import TUTORIALS_DIR


def main():
    from orangecontrib.deepimage.measure import label_objects
    from orangecontrib.deepimage.segdata import load_mask, pair_folders
    from orangecontrib.deepimage.segmentation import SegmentationLearner
    from orangecontrib.deepimage.images import (
        find_image_column, find_mask_column, image_paths)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", default=os.path.join("bench", "results"))
    args = parser.parse_args()

    folder = os.path.join(TUTORIALS_DIR, "nuclei")
    table, _ = pair_folders(os.path.join(folder, "images"),
                            os.path.join(folder, "masks"))
    order = np.random.default_rng(0).permutation(len(table))
    train, held_out = table[np.sort(order[4:])], table[np.sort(order[:4])]
    learner = SegmentationLearner(epochs=args.epochs, tile_size=128,
                                  validation=0.2, random_state=0)
    start = time.perf_counter()
    model = learner(train)
    train_seconds = time.perf_counter() - start

    images = image_paths(held_out, find_image_column(held_out))
    masks = image_paths(held_out, find_mask_column(held_out))
    scores = model.evaluate(list(zip(images, masks)))
    predicted = model.segment(images)
    counted, annotated = 0, 0
    for path, labels in zip(images, predicted):
        instances = load_mask(os.path.join(
            folder, "instances", os.path.basename(path)), "instance")
        annotated += len(np.unique(instances[instances > 0]))
        objects, _ = label_objects(labels, split_touching=True)
        counted += int(objects.max())
    results = {
        "data": "tutorial nuclei: 12 training tiles, 4 held out (128x128)",
        "epochs_run": len(model.history.get("loss", [])),
        "train_seconds": round(train_seconds, 1),
        "held_out_iou": [round(float(v), 3) for v in scores["iou"]],
        "held_out_dice": [round(float(v), 3) for v in scores["dice"]],
        "held_out_nucleus_iou": round(float(scores["iou"][1]), 3),
        "nuclei_annotated": annotated,
        "nuclei_counted": counted,
        "count_error": round(abs(counted - annotated) / annotated, 3),
    }
    write_results(results, args.out, "segmentation")


if __name__ == "__main__":
    main()
