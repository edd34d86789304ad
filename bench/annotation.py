"""Annotation tools: scribbles, boxes and suggestions, measured.

1. Scribbles (:func:`scribble_segmenter`) on the nuclei tutorial tiles
   (16 grey 128×128 fluorescence tiles with ground-truth masks). The
   strokes are synthetic, drawn from the ground truth: on each of three
   tiles, 10-pixel lines through the centres of five nuclei (kept inside
   the nucleus, one pixel from its edge) and four 30-pixel lines in the
   background at least 3 pixels from any nucleus. Foreground IoU on the
   13 other tiles, against Otsu's threshold and a plain random forest
   (scikit-image's default features, scikit-learn's default forest, the
   same strokes); IoU on the stroked tiles themselves; seconds per
   megapixel to train and to predict (also on a 1024×1024 mosaic).
   Repeated for several draws of strokes.
2. Boxes (:func:`mask_from_box`) around each nucleus of the tutorial
   (bounding box + 3 pixels), IoU with its instance mask; raw GrabCut
   on the grey pixels for comparison. No colour photos with object masks
   are at hand (scikit-image's sample photos have none), so colour is not
   measured here.
3. Suggestions (:func:`suggest_next`) against random picks on
   scikit-learn's digits (1797 8×8 images, saved as 32×32 PNGs, embedded
   with SqueezeNet through ImageEmbedder), a logistic regression trained
   on the labels so far, accuracy on 500 held-out digits, 10 to 100 labels
   in rounds of 10, several seeds (each its own split); also picking the
   smallest margin after a random first round, the strategy the
   literature warns about at these budgets. Plot: annotation-suggest.png.

Usage: python bench/annotation.py [--seeds 5] [--out bench/results]
Results: annotation.json and annotation-suggest.png in the output folder.
"""
import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from orangecontrib.deepimage.annotation import (  # noqa: E402
    mask_from_box, scribble_segmenter, suggest_next)

from results_io import write_results  # noqa: E402

NUCLEI = os.path.join(os.path.dirname(__file__), "..", "orangecontrib",
                      "deepimage", "tutorials", "nuclei")
TRAIN_TILES = ("nuclei_r0_c0.png", "nuclei_r1_c2.png", "nuclei_r2_c1.png")


def iou(mask, truth):
    return float((mask & truth).sum() / max((mask | truth).sum(), 1))


def load_nuclei():
    names = sorted(os.listdir(os.path.join(NUCLEI, "images")))
    read = lambda folder, name: np.asarray(  # noqa: E731
        Image.open(os.path.join(NUCLEI, folder, name)))
    return ({n: read("images", n) for n in names},
            {n: read("masks", n) > 0 for n in names},
            {n: read("instances", n) for n in names})


def strokes(truth, instances, rng, n_nuclei=5, n_background=4, length=10):
    """Synthetic strokes drawn from the ground truth (see the module doc)."""
    from scipy.ndimage import binary_erosion, distance_transform_edt
    from skimage.draw import line
    from skimage.measure import regionprops
    height, width = truth.shape
    marks = np.zeros(truth.shape, np.uint8)

    def segment(y, x, angle, size):
        rows, cols = line(int(y), int(x), int(y + size * np.sin(angle)),
                          int(x + size * np.cos(angle)))
        keep = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        return rows[keep], cols[keep]

    regions = regionprops(instances)
    for index in rng.permutation(len(regions))[:n_nuclei]:
        region = regions[index]
        inside = binary_erosion(instances == region.label)
        angle = rng.uniform(0, np.pi)
        cy, cx = region.centroid
        rows, cols = segment(cy - length / 2 * np.sin(angle),
                             cx - length / 2 * np.cos(angle), angle, length)
        keep = inside[rows, cols]
        marks[rows[keep], cols[keep]] = 2
    far = distance_transform_edt(~truth) > 3
    placed = 0
    while placed < n_background:
        y, x = rng.integers(0, height), rng.integers(0, width)
        rows, cols = segment(y, x, rng.uniform(0, np.pi), 3 * length)
        keep = far[rows, cols]
        if keep.sum() < 1.5 * length:
            continue
        marks[rows[keep], cols[keep]] = 1
        placed += 1
    return marks


def bench_scribbles(n_draws):
    from skimage.feature import multiscale_basic_features
    from skimage.filters import threshold_otsu
    from skimage.future import fit_segmenter, predict_segmenter
    from sklearn.ensemble import RandomForestClassifier
    images, truth, instances = load_nuclei()
    test = [n for n in images if n not in TRAIN_TILES]
    otsu = np.mean([iou(images[n] > threshold_otsu(images[n]), truth[n])
                    for n in test])
    features = {n: multiscale_basic_features(images[n]) for n in images}
    rows = []
    for draw in range(n_draws):
        rng = np.random.default_rng(draw)
        marks = {n: strokes(truth[n], instances[n], rng) for n in TRAIN_TILES}
        labels = np.concatenate([marks[n][marks[n] > 0] for n in TRAIN_TILES])
        plain = fit_segmenter(
            labels, np.concatenate([features[n][marks[n] > 0]
                                    for n in TRAIN_TILES]),
            RandomForestClassifier(random_state=draw))
        plain_iou = np.mean([iou(predict_segmenter(features[n], plain) == 2,
                                 truth[n]) for n in test])
        start = time.perf_counter()
        segmenter = scribble_segmenter([images[n] for n in TRAIN_TILES],
                                       [marks[n] for n in TRAIN_TILES],
                                       random_state=draw)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        masks = {n: segmenter.predict(images[n]).astype(bool)
                 for n in images}
        predict_s = time.perf_counter() - start
        rows.append({
            "marked pixels (background, nuclei)": [
                int(sum((marks[n] == k).sum() for n in TRAIN_TILES))
                for k in (1, 2)],
            "held-out IoU": float(np.mean([iou(masks[n], truth[n])
                                           for n in test])),
            "plain random forest held-out IoU": float(plain_iou),
            "IoU on the stroked tiles": float(np.mean(
                [iou(masks[n], truth[n]) for n in TRAIN_TILES])),
            "train s": fit_s,
            "predict s/MP": predict_s / (len(images) * 128 * 128 / 1e6)})
    # a larger image: the 512×512 original (the 16 tiles), twice in each
    # direction, predicted at once
    grid = np.block([[images[f"nuclei_r{r}_c{c}.png"] for c in range(4)]
                     for r in range(4)])
    mosaic = np.tile(grid, (2, 2))
    start = time.perf_counter()
    segmenter.predict(mosaic)
    mosaic_s = time.perf_counter() - start
    mean = lambda key: float(np.mean([row[key] for row in rows]))  # noqa
    return {
        "strokes": "synthetic, drawn from the ground truth: on 3 tiles, "
                   "10-pixel lines inside 5 nuclei and four 30-pixel lines "
                   "in the background, per draw",
        "draws": rows,
        "Otsu held-out IoU": float(otsu),
        "mean held-out IoU": mean("held-out IoU"),
        "mean plain random forest held-out IoU":
            mean("plain random forest held-out IoU"),
        "mean IoU on the stroked tiles": mean("IoU on the stroked tiles"),
        "mean predict s/MP (128×128 tiles)": mean("predict s/MP"),
        "predict s/MP (1024×1024)": mosaic_s / (mosaic.size / 1e6),
    }


def bench_boxes():
    import cv2
    from skimage.measure import regionprops
    images, _, instances = load_nuclei()
    ours, raw, empty_raw = [], [], 0
    for name, image in images.items():
        for region in regionprops(instances[name]):
            if region.area < 30:
                continue
            y0, x0, y1, x1 = region.bbox
            box = (max(0, x0 - 3), max(0, y0 - 3), min(image.shape[1], x1 + 3),
                   min(image.shape[0], y1 + 3))
            truth = instances[name] == region.label
            ours.append(iou(mask_from_box(image, box), truth))
            labels = np.zeros(image.shape, np.uint8)
            cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), labels,
                        (box[0], box[1], box[2] - box[0], box[3] - box[1]),
                        np.zeros((1, 65)), np.zeros((1, 65)), 5,
                        cv2.GC_INIT_WITH_RECT)
            grabcut = (labels == 1) | (labels == 3)
            raw.append(iou(grabcut, truth))
            empty_raw += not grabcut.any()
    return {"nuclei boxes": len(ours),
            "mask_from_box mean IoU (grey nuclei)": float(np.mean(ours)),
            "raw GrabCut mean IoU (grey nuclei)": float(np.mean(raw)),
            "raw GrabCut empty masks": empty_raw,
            "colour photos": "not measured: no colour photos with object "
                             "masks at hand"}


def digits_embeddings(folder):
    from sklearn.datasets import load_digits
    from orangecontrib.deepimage.embedding import ImageEmbedder
    digits = load_digits()
    paths = []
    for i, pixels in enumerate(digits.images):
        path = os.path.join(folder, f"digit{i:04d}.png")
        Image.fromarray((pixels / 16 * 255).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.NEAREST).save(path)
        paths.append(path)
    with ImageEmbedder("squeezenet", use_cache=False) as embedder:
        start = time.perf_counter()
        result = embedder.embed_paths(paths)
        seconds = time.perf_counter() - start
    if result.skipped:
        raise RuntimeError(f"digits were skipped: {result.skipped}")
    embeddings = np.asarray(result.vectors, dtype=np.float64)
    return embeddings, digits.target, seconds


def accuracy(embeddings, target, picked, test):
    from sklearn.linear_model import LogisticRegression
    if len(set(target[picked])) < 2:
        return float(np.mean(target[test] == target[picked][0]))
    model = LogisticRegression(max_iter=2000)
    model.fit(embeddings[picked], target[picked])
    return float(model.score(embeddings[test], target[test]))


def bench_suggestions(embeddings, target, seeds, out_dir):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    budgets = list(range(10, 101, 10))
    curves = {"suggest_next": [], "random": [], "smallest margin": []}
    for seed in range(seeds):
        pool, test = train_test_split(np.arange(len(target)), test_size=500,
                                      stratify=target, random_state=seed)
        x_pool = embeddings[pool]
        rng = np.random.default_rng(seed)
        for strategy in curves:
            labelled = np.zeros(len(pool), bool)
            curve = []
            for budget in budgets:
                probabilities = None
                if labelled.any() and len(set(target[pool][labelled])) > 1:
                    model = LogisticRegression(max_iter=2000).fit(
                        x_pool[labelled], target[pool][labelled])
                    probabilities = model.predict_proba(x_pool)
                if strategy == "random" or (
                        strategy == "smallest margin"
                        and probabilities is None):
                    free = np.flatnonzero(~labelled)
                    picks = rng.choice(free, 10, replace=False)
                elif strategy == "smallest margin":
                    picks = suggest_next(probabilities, labelled=labelled,
                                         n=10)
                else:
                    picks = suggest_next(probabilities, x_pool, labelled,
                                         n=10, random_state=seed)
                labelled[picks] = True
                assert labelled.sum() == budget
                curve.append(accuracy(embeddings, target,
                                      pool[labelled], test))
            curves[strategy].append(curve)
    means = {name: np.mean(values, axis=0).tolist()
             for name, values in curves.items()}
    plot(budgets, curves, os.path.join(out_dir, "annotation-suggest.png"))
    return {"budgets": budgets, "seeds": seeds,
            "mean accuracy": means,
            "suggest_next better than random at every budget": bool(
                all(s > r for s, r in zip(means["suggest_next"],
                                          means["random"]))),
            "all curves": curves}


def plot(budgets, curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        values = np.asarray(values)
        mean, std = values.mean(axis=0), values.std(axis=0)
        axes.plot(budgets, mean, marker="o", label=name)
        axes.fill_between(budgets, mean - std, mean + std, alpha=0.2)
    axes.set_xlabel("labelled images")
    axes.set_ylabel("accuracy on 500 held-out digits")
    axes.set_title(f"Digits, SqueezeNet embeddings, logistic regression "
                   f"({len(next(iter(curves.values())))} seeds)",
                   fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.makedirs(args.out, exist_ok=True)
    # One BLAS/OpenMP thread: on a shared 2-core machine k-means with a
    # thread per reported core took 10-20 s a call instead of 0.3 s.
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):
        run(args)


def run(args):
    results = {"scribbles (nuclei)": bench_scribbles(args.seeds),
               "boxes": bench_boxes()}
    with tempfile.TemporaryDirectory() as folder:
        embeddings, target, seconds = digits_embeddings(folder)
    results["suggestions (digits)"] = {
        "embedding s": seconds,
        **bench_suggestions(embeddings, target, args.seeds, args.out)}
    write_results(results, args.out, "annotation")


if __name__ == "__main__":
    main()
