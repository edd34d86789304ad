"""Anomaly detection on real texture photos with synthesised defects.

For each of scikit-image's texture photos (brick, grass, gravel; 512×512,
greyscale) the top and bottom thirds of the photo give the normal training
crops and the band between them the test crops, so no test pixel was ever
seen in training (``--split top-bottom``: the top 60 % for training, the
bottom 40 % for testing, which also measures the photo's change of light
and scale from top to bottom).
Half of the test crops get one synthesised defect each, with its mask:

* scratch: a line 3 px wide and 30-80 px long, 80 % of the way to nearly
  white or nearly black;
* hole: a dark ellipse, 5-12 px in radius, with a soft rim;
* stain: an irregular blob, 16-30 px across, blended 55-75 % towards a
  flat light or dark grey.

Each is small, about 0.5-4 % of the crop's pixels. On brick all three
are plainly visible to a person looking at the crop; on grass a bright
scratch looks like a blade of grass and a light stain like a sunlit leaf,
and on gravel a stain like a paler stone, so those are hard to see there
even at full size.

Side by side in the same run, on the same crops:

* ``patchcore`` and ``padim``: AnomalyLearner on SqueezeNet's patch features;
* ``lof`` and ``ocsvm``: Orange's own outlier methods, as its Outliers widget
  uses them (local outlier factor, 20 neighbours; one-class SVM, RBF kernel,
  nu 0.5, gamma 0.01), on our SqueezeNet embeddings (ImageEmbedder);
  their decision function gives the scores.

Figures: image-level AUROC (also of the normal crops against each kind of
defect alone), pixel-level AUROC (over all test images' pixels)
and the share of defective images whose heatmap peaks inside the defect,
per texture and averaged; the memory bank's size; scoring speed (images/s,
scores only and with maps, after the network is built).

Usage: python bench/bench_anomaly.py [--train 60] [--test 30] [--out ...]
"""
import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, draw
from sklearn.metrics import roc_auc_score

from results_io import write_results  # bench/ is on sys.path

TEXTURES = ("brick", "grass", "gravel")
CROP = 128


def crops(photo, rows, count, rng):
    """`count` random CROP×CROP crops whose rows lie in `rows`."""
    top, bottom = rows
    out = []
    for _ in range(count):
        y = int(rng.integers(top, bottom - CROP + 1))
        x = int(rng.integers(0, photo.shape[1] - CROP + 1))
        out.append(photo[y:y + CROP, x:x + CROP].astype(np.float64))
    return out


def scratch(image, rng):
    mask = np.zeros(image.shape, bool)
    length = rng.uniform(30, 80)
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(25, CROP - 25, 2)
    dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
    r0, c0, r1, c1 = (np.clip(v, 0, CROP - 1) for v in
                      (cy - dy, cx - dx, cy + dy, cx + dx))
    rr, cc = draw.line(int(r0), int(c0), int(r1), int(c1))
    mask[rr, cc] = True
    mask = ndimage.binary_dilation(mask, iterations=1)
    target = rng.uniform(225, 250) if rng.random() < 0.5 \
        else rng.uniform(5, 30)
    image = image.copy()
    image[mask] = 0.2 * image[mask] + 0.8 * target
    return image, mask


def hole(image, rng):
    ry, rx = rng.uniform(5, 12, 2)
    cy, cx = rng.uniform(20, CROP - 20, 2)
    yy, xx = np.mgrid[:CROP, :CROP]
    distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    depth = np.clip((1.2 - distance) / 0.4, 0, 1)  # soft rim
    image = image * (1 - 0.85 * depth)
    return image, depth > 0.3


def stain(image, rng):
    radius = rng.uniform(16, 30) / 2
    cy, cx = rng.uniform(20, CROP - 20, 2)
    yy, xx = np.mgrid[:CROP, :CROP]
    noise = ndimage.gaussian_filter(rng.normal(size=(CROP, CROP)), 3)
    noise /= noise.std()
    distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius
    blob = (distance + 0.35 * noise) < 1
    blob = ndimage.binary_fill_holes(blob)
    alpha = ndimage.gaussian_filter(blob.astype(float), 1) \
        * rng.uniform(0.55, 0.75)
    # A flat, even patch (paint, rust, oil) over the texture.
    target = rng.uniform(200, 230) if rng.random() < 0.5 \
        else rng.uniform(25, 55)
    image = image * (1 - alpha) + target * alpha
    return image, alpha > 0.15


DEFECTS = (scratch, hole, stain)


def save(folder, name, pixels):
    path = os.path.join(folder, name)
    Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).save(path)
    return path


def make_texture_set(folder, texture, n_train, n_test, seed,
                     split="band"):
    """Write the training and test crops of one texture; return paths."""
    rng = np.random.default_rng(seed)
    photo = getattr(data, texture)()
    height = photo.shape[0]
    if split == "band":
        top, bottom = int(height * 0.35), int(height * 0.65)
        train_crops = crops(photo, (0, top), n_train // 2, rng) \
            + crops(photo, (bottom, height), n_train - n_train // 2, rng)
        test_rows = (top, bottom)
    else:
        top = int(height * 0.6)
        train_crops = crops(photo, (0, top), n_train, rng)
        test_rows = (top, height)
    train = [save(folder, f"{texture}-train{i:03d}.png", c) for i, c in
             enumerate(train_crops)]
    test, masks, kinds = [], [], []
    for i, crop in enumerate(crops(photo, test_rows, 2 * n_test, rng)):
        if i % 2:
            kind = DEFECTS[(i // 2) % len(DEFECTS)]
            crop, mask = kind(crop, rng)
            kinds.append(kind.__name__)
        else:
            mask = np.zeros(crop.shape, bool)
            kinds.append("normal")
        test.append(save(folder, f"{texture}-test{i:03d}.png", crop))
        masks.append(mask)
    return train, test, masks, kinds


def peak_inside(maps, masks):
    hits = [mask[np.unravel_index(m.argmax(), m.shape)]
            for m, mask in zip(maps, masks) if mask.any()]
    return float(np.mean(hits))


def by_kind(kinds, scores):
    """Image AUROC of the normal test crops against each kind of defect."""
    kinds = np.asarray(kinds)
    scores = np.asarray(scores)
    normal = scores[kinds == "normal"]
    return {kind.__name__: round(roc_auc_score(
        np.r_[np.zeros(len(normal)), np.ones(np.sum(kinds == kind.__name__))],
        np.r_[normal, scores[kinds == kind.__name__]]), 4)
        for kind in DEFECTS}


def bench_ours(method, train, test, masks, labels, kinds):
    from orangecontrib.deepimage import AnomalyLearner
    start = time.perf_counter()
    model = AnomalyLearner(method=method)(train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = model.score(test)
    score_seconds = time.perf_counter() - start
    start = time.perf_counter()
    maps = model.anomaly_map(test)
    map_seconds = time.perf_counter() - start
    pixel_truth = np.concatenate([m.ravel() for m in masks])
    pixel_scores = np.concatenate([m.ravel() for m in maps])
    flagged = model.is_anomalous(scores)
    return {
        "image_auroc": round(roc_auc_score(labels, scores), 4),
        "image_auroc_by_defect": by_kind(kinds, scores),
        "pixel_auroc": round(roc_auc_score(pixel_truth, pixel_scores), 4),
        "peak_in_defect": round(peak_inside(maps, masks), 3),
        "threshold_accuracy": round(float(np.mean(flagged == labels)), 3),
        "memory_bank": None if model.memory_bank is None
        else int(len(model.memory_bank)),
        "fit_s": round(fit_seconds, 1),
        "scores_per_s": round(len(test) / score_seconds, 1),
        "maps_per_s": round(len(test) / map_seconds, 1),
    }


def bench_orange_outliers(train, test, labels, kinds):
    """LOF and one-class SVM, as Orange's Outliers widget sets them up."""
    from Orange.classification import (
        LocalOutlierFactorLearner, OneClassSVMLearner)
    from Orange.data import Domain, StringVariable, Table
    from orangecontrib.deepimage import ImageEmbedder

    def table(paths):
        column = StringVariable("image")
        column.attributes["type"] = "image"
        return Table.from_numpy(
            Domain([], metas=[column]), np.empty((len(paths), 0)),
            metas=np.array(paths, dtype=object)[:, None])

    embedder = ImageEmbedder("squeezenet", use_cache=False)
    train_table, _, _ = embedder(table(train))
    test_table, _, _ = embedder(table(test))
    learners = {
        "lof": LocalOutlierFactorLearner(n_neighbors=20, metric="euclidean",
                                         contamination=0.1),
        "ocsvm": OneClassSVMLearner(kernel="rbf", nu=0.5, gamma=0.01),
    }
    results = {}
    for name, learner in learners.items():
        model = learner(train_table)
        x = model.data_to_model_domain(test_table).X
        scores = -model.skl_model.decision_function(x)
        results[name] = {"image_auroc": round(roc_auc_score(labels, scores),
                                              4),
                         "image_auroc_by_defect": by_kind(kinds, scores)}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=60,
                        help="normal training crops per texture")
    parser.add_argument("--test", type=int, default=30,
                        help="normal and defective test crops per texture")
    parser.add_argument("--split", choices=("band", "top-bottom"),
                        default="band")
    parser.add_argument("--out", default=os.path.join("bench", "results"))
    args = parser.parse_args()

    methods = ("patchcore", "padim", "lof", "ocsvm")
    per_texture = {}
    with tempfile.TemporaryDirectory() as folder:
        for seed, texture in enumerate(TEXTURES):
            train, test, masks, kinds = make_texture_set(
                folder, texture, args.train, args.test, seed, args.split)
            labels = np.array([kind != "normal" for kind in kinds])
            figures = {method: bench_ours(method, train, test, masks, labels,
                                          kinds)
                       for method in ("patchcore", "padim")}
            figures.update(bench_orange_outliers(train, test, labels, kinds))
            per_texture[texture] = figures
            print(texture, figures, flush=True)

    def mean(method, key):
        values = [per_texture[t][method].get(key) for t in TEXTURES]
        if any(v is None for v in values):
            return None
        return round(float(np.mean(values)), 4)

    summary = {method: {key: mean(method, key) for key in
                        per_texture[TEXTURES[0]][method]
                        if key not in ("memory_bank",
                                       "image_auroc_by_defect")}
               for method in methods}
    write_results({
        "what": "image and pixel AUROC on texture crops with synthesised "
                "scratches, holes and stains (skimage brick, grass, gravel); "
                "training on normal crops only; LOF and one-class SVM as in "
                "Orange's Outliers widget, on SqueezeNet embeddings",
        "split": args.split,
        "train_crops_per_texture": args.train,
        "test_crops_per_texture": 2 * args.test,
        "crop": CROP,
        "mean": summary,
        "per_texture": per_texture,
    }, args.out, "anomaly" if args.split == "band" else "anomaly-top-bottom")


if __name__ == "__main__":
    main()
