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
   Repeated for several draws of strokes; the same strokes also measure
   the segmenter without moving its boundaries onto the edges (snap=0)
   and other settings (feature options, forest, post-processing).
2. Boxes (:func:`mask_from_box`) around each nucleus of the tutorial
   (bounding box + 3 pixels), IoU with its instance mask; raw GrabCut
   on the grey pixels for comparison. Colour photos: no colour photos with
   object masks ship offline (scikit-image's and scikit-learn's sample
   photos have none, nor has any installed package; the Edit Images
   tutorial's masks are rough hand-drawn polygons, not ground truth), so
   colour is measured on composites whose truth is known by construction:
   a patch of one real photo, cut in the shape of an object's outline and
   pasted with a soft edge (alpha = the outline blurred with a Gaussian
   of 1 pixel; truth = the outline) at a random place of another real
   photo; the box is the outline's bounding box + 5 % of its size (at
   least 3 pixels). See :func:`composites` for the photos and outlines.
   Raw GrabCut on the whole photo for comparison. Also, for a look at
   real objects in real photos, boxes around the objects of the Edit
   Images tutorial (rocket, two lightning towers, model shuttle, helmet),
   scored against its rough hand-drawn outlines: not ground truth, as a
   rough outline caps the IoU of even a perfect mask. OpenCV's random
   generator is reseeded before each box so that every figure is
   repeatable (GrabCut's k-means starts from it).
3. Suggestions (:func:`suggest_next`) against random picks on
   scikit-learn's digits (1797 8×8 images, saved as 32×32 PNGs, embedded
   with SqueezeNet through ImageEmbedder), a logistic regression trained
   on the labels so far, accuracy on 500 held-out digits, 10 to 100 labels
   in rounds of 10, several seeds (each its own split); also picking the
   smallest margin after a random first round, the strategy the
   literature warns about at these budgets. Plot: annotation-suggest.png.

Usage: python bench/annotation.py [--seeds 5] [--out bench/results]
       [--parts scribbles boxes suggestions]
Results: annotation.json and annotation-suggest.png in the output folder
(with --parts, only those parts of an existing annotation.json are
replaced).
"""
import argparse
import json
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
# The strokes the tutorial's annotation store was made with: one
# definition, so the bench measures the very strokes the tutorial ships.
from orangecontrib.deepimage.tutorials.annotate.make_store import (  # noqa
    strokes)

TUTORIALS = os.path.join(os.path.dirname(__file__), "..", "orangecontrib",
                         "deepimage", "tutorials")
NUCLEI = os.path.join(TUTORIALS, "nuclei")
TRAIN_TILES = ("nuclei_r0_c0.png", "nuclei_r1_c2.png", "nuclei_r2_c1.png")
PARTS = ["scribbles", "boxes", "suggestions"]


def iou(mask, truth):
    return float((mask & truth).sum() / max((mask | truth).sum(), 1))


def load_nuclei():
    names = sorted(os.listdir(os.path.join(NUCLEI, "images")))
    read = lambda folder, name: np.asarray(  # noqa: E731
        Image.open(os.path.join(NUCLEI, folder, name)))
    return ({n: read("images", n) for n in names},
            {n: read("masks", n) > 0 for n in names},
            {n: read("instances", n) for n in names})


#: settings of scribble_segmenter measured besides its defaults (each with
#: the same strokes); "post" ones act on the predicted masks
SCRIBBLE_VARIANTS = {
    "snap=0 (the forest's own boundaries)": {"snap": 0},
    "snap=1": {"snap": 1},
    "snap=3": {"snap": 3},
    "edge_sigma=1": {"edge_sigma": 1.0},
    "sigma_max=8": {"sigma_max": 8},
    "sigma_max=32": {"sigma_max": 32},
    "sigma_min=1": {"sigma_min": 1},
    "texture=False": {"texture": False},
    "edges=False": {"edges": False},
    "normalize=True": {"normalize": True},
    "class_weight=None": {"class_weight": None},
    "n_estimators=100": {"n_estimators": 100},
    "max_depth=None": {"max_depth": None},
    "post: remove objects of <= 20 pixels": {"post": "small objects"},
    "post: fill holes of <= 30 pixels": {"post": "holes"},
}


def _post(mask, kind):
    from skimage.morphology import remove_small_holes, remove_small_objects
    if kind == "small objects":
        return remove_small_objects(mask, max_size=20)
    return remove_small_holes(mask, max_size=30)


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
    train_mp = sum(images[n].size for n in TRAIN_TILES) / 1e6
    rows, variants = [], {name: [] for name in SCRIBBLE_VARIANTS}
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
            "train s/MP (of stroked images)": fit_s / train_mp,
            "predict s/MP": predict_s / (len(images) * 128 * 128 / 1e6)})
        for name, options in SCRIBBLE_VARIANTS.items():
            options = dict(options)
            post = options.pop("post", None)
            variant = scribble_segmenter(
                [images[n] for n in TRAIN_TILES],
                [marks[n] for n in TRAIN_TILES], random_state=draw,
                **options)
            predicted = {n: variant.predict(images[n]).astype(bool)
                         for n in images}
            if post:
                predicted = {n: _post(m, post) for n, m in predicted.items()}
            variants[name].append([
                float(np.mean([iou(predicted[n], truth[n]) for n in test])),
                float(np.mean([iou(predicted[n], truth[n])
                               for n in TRAIN_TILES]))])
    # a larger image: the 512×512 original (the 16 tiles), twice in each
    # direction, predicted at once
    grid = np.block([[images[f"nuclei_r{r}_c{c}.png"] for c in range(4)]
                     for r in range(4)])
    mosaic = np.tile(grid, (2, 2))
    start = time.perf_counter()
    segmenter.predict(mosaic)
    mosaic_s = time.perf_counter() - start
    segmenter.snap = 0
    start = time.perf_counter()
    segmenter.predict(mosaic)
    mosaic_unsnapped_s = time.perf_counter() - start
    start = time.perf_counter()
    scribble_segmenter([mosaic], [np.tile(np.block(
        [[marks[n] if n in TRAIN_TILES else np.zeros((128, 128), np.uint8)
          for n in (f"nuclei_r{r}_c{c}.png" for c in range(4))]
         for r in range(4)]), (2, 2))], random_state=0)
    mosaic_fit_s = time.perf_counter() - start
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
        "mean train s/MP (3 stroked 128×128 tiles)":
            mean("train s/MP (of stroked images)"),
        "train s/MP (1024×1024, strokes on 12 of its tiles)":
            mosaic_fit_s / (mosaic.size / 1e6),
        "mean predict s/MP (128×128 tiles)": mean("predict s/MP"),
        "predict s/MP (1024×1024)": mosaic_s / (mosaic.size / 1e6),
        "predict s/MP (1024×1024, snap=0)":
            mosaic_unsnapped_s / (mosaic.size / 1e6),
        "variants (mean held-out IoU, mean IoU on the stroked tiles)": {
            name: np.mean(values, axis=0).round(4).tolist()
            for name, values in variants.items()},
    }


def nucleus_boxes():
    """Each nucleus of the tutorial (30 pixels or more): its tile, its box
    (bounding box + 3 pixels) and its instance mask."""
    from skimage.measure import regionprops
    images, _, instances = load_nuclei()
    for name, image in images.items():
        for region in regionprops(instances[name]):
            if region.area < 30:
                continue
            y0, x0, y1, x1 = region.bbox
            box = (max(0, x0 - 3), max(0, y0 - 3), min(image.shape[1], x1 + 3),
                   min(image.shape[0], y1 + 3))
            yield image, box, instances[name] == region.label


def _photos():
    """Real colour photos that ship with scikit-image and scikit-learn."""
    from skimage import data
    from skimage.transform import rescale
    from sklearn.datasets import load_sample_image
    retina = rescale(data.retina(), 0.4, channel_axis=-1, anti_aliasing=True)
    return {"coffee": data.coffee(), "chelsea": data.chelsea(),
            "astronaut": data.astronaut(), "rocket": data.rocket(),
            "retina": (retina * 255).astype(np.uint8),
            "china": load_sample_image("china.jpg"),
            "flower": load_sample_image("flower.jpg")}


def _outlines():
    """Object outlines (boolean, cropped to the object): scikit-image's
    horse silhouette, the outlines drawn for the Edit Images tutorial
    (rocket, lightning tower, model shuttle, helmet) and two nuclei of the
    nuclei tutorial, 10 times larger."""
    import importlib.util
    from PIL import ImageDraw
    from skimage import data
    from skimage.measure import regionprops
    from skimage.transform import resize

    def cropped(mask):
        rows, cols = np.nonzero(mask)
        return mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]

    outlines = {"horse": cropped(~data.horse())}
    spec = importlib.util.spec_from_file_location(
        "make_data", os.path.join(TUTORIALS, "edit", "make_data.py"))
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    sizes = {"rocket": (640, 427), "astronaut": (512, 512)}
    for photo, shapes in make_data.SHAPES.items():
        for name, kind, points in shapes:
            if name == "flag" or name in outlines:  # the flag is cut off
                continue
            canvas = Image.new("L", sizes[photo], 0)
            draw = ImageDraw.Draw(canvas)
            (draw.polygon if kind == "polygon" else draw.ellipse)(
                points, fill=1)
            outlines[name] = cropped(np.asarray(canvas) > 0)
    ids = np.asarray(Image.open(os.path.join(NUCLEI, "instances",
                                             "nuclei_r1_c1.png")))
    largest = sorted(regionprops(ids), key=lambda r: -r.area)[:2]
    for i, region in enumerate(largest):
        big = resize(region.image.astype(float),
                     np.array(region.image.shape) * 10, order=1)
        outlines[f"nucleus {i + 1}"] = big > 0.5
    return outlines


def composites(seed=0):
    """(name, photo, box, truth) for every photo as the background and
    every outline: the outline, scaled to 35–60 % of the photo's shorter
    side, cut from another photo (chosen at random, at a random place;
    enlarged when smaller than the object) and pasted at a random place
    with a soft edge (alpha = the outline blurred with a Gaussian of 1
    pixel); the truth is the outline; the box its bounding box + 5 % of
    its larger side (at least 3 pixels)."""
    from skimage.filters import gaussian
    from skimage.transform import rescale
    photos, outlines = _photos(), _outlines()
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    for background_name in names:
        background = photos[background_name]
        height, width = background.shape[:2]
        for outline_name, outline in outlines.items():
            scale = rng.uniform(0.35, 0.6) * min(height, width) / \
                max(outline.shape)
            shape = rescale(outline.astype(float), scale, order=1) > 0.5
            h, w = shape.shape
            source_name = rng.choice([n for n in names
                                      if n != background_name])
            source = photos[source_name]
            if source.shape[0] <= h or source.shape[1] <= w:
                factor = 1.05 * max(h / source.shape[0], w / source.shape[1])
                source = (rescale(source, factor, channel_axis=-1) * 255
                          ).astype(np.uint8)
            sy = rng.integers(0, source.shape[0] - h)
            sx = rng.integers(0, source.shape[1] - w)
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            truth = np.zeros((height, width), bool)
            truth[y:y + h, x:x + w] = shape
            layer = np.zeros((height, width, 3))
            layer[y:y + h, x:x + w] = source[sy:sy + h, sx:sx + w]
            alpha = gaussian(truth.astype(float), 1.0)[..., None]
            photo = np.clip(alpha * layer + (1 - alpha) * background, 0,
                            255).astype(np.uint8)
            margin = max(3, int(round(0.05 * max(h, w))))
            rows, cols = np.nonzero(truth)
            box = (max(0, cols.min() - margin), max(0, rows.min() - margin),
                   min(width, cols.max() + 1 + margin),
                   min(height, rows.max() + 1 + margin))
            yield (f"{outline_name} of {source_name} on {background_name}",
                   photo, box, truth)


def edit_tutorial_objects():
    """(name, photo, box, outline) for each object of the Edit Images
    tutorial's two real photos but the flag (cut by the photo's edge):
    its hand-drawn outline is rough, no ground truth; the box is the
    outline's bounding box + 5 % of its larger side (at least 3 pixels)."""
    from scipy import ndimage
    folder = os.path.join(TUTORIALS, "edit")
    with open(os.path.join(folder, "masks", "classes.txt")) as file:
        classes = file.read().split()
    for photo_name in ("rocket", "astronaut"):
        photo = np.asarray(Image.open(os.path.join(
            folder, "images", f"{photo_name}.jpg")).convert("RGB"))
        mask = np.asarray(Image.open(os.path.join(
            folder, "masks", f"{photo_name}.png")))
        height, width = mask.shape
        for index in np.unique(mask):
            if index == 0 or classes[index] == "flag":
                continue
            parts, n_parts = ndimage.label(mask == index)
            for part in range(1, n_parts + 1):
                outline = parts == part
                rows, cols = np.nonzero(outline)
                margin = max(3, int(round(0.05 * max(np.ptp(rows) + 1,
                                                     np.ptp(cols) + 1))))
                box = (max(0, cols.min() - margin),
                       max(0, rows.min() - margin),
                       min(width, cols.max() + 1 + margin),
                       min(height, rows.max() + 1 + margin))
                yield (f"{classes[index]} {part} in {photo_name}", photo,
                       box, outline)


def _grabcut(image, box):
    """Plain GrabCut (5 iterations) initialised with the box."""
    import cv2
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2
                       else cv2.COLOR_RGB2BGR)
    labels = np.zeros(image.shape[:2], np.uint8)
    cv2.grabCut(bgr, labels, (box[0], box[1], box[2] - box[0],
                              box[3] - box[1]),
                np.zeros((1, 65)), np.zeros((1, 65)), 5,
                cv2.GC_INIT_WITH_RECT)
    return (labels == 1) | (labels == 3)


def bench_boxes():
    import cv2
    ours, raw, empty_raw = [], [], 0
    for image, box, truth in nucleus_boxes():
        cv2.setRNGSeed(0)
        ours.append(iou(mask_from_box(image, box), truth))
        cv2.setRNGSeed(0)
        grabcut = _grabcut(image, box)
        raw.append(iou(grabcut, truth))
        empty_raw += not grabcut.any()
    colour, colour_raw, colour_whole, per_case = [], [], [], {}
    seconds, megapixels = 0.0, 0.0
    for name, photo, box, truth in composites():
        cv2.setRNGSeed(0)
        start = time.perf_counter()
        mask = mask_from_box(photo, box)
        seconds += time.perf_counter() - start
        megapixels += photo.shape[0] * photo.shape[1] / 1e6
        colour.append(iou(mask, truth))
        cv2.setRNGSeed(0)
        colour_whole.append(iou(mask_from_box(photo, box, context=1e6),
                                truth))
        cv2.setRNGSeed(0)
        colour_raw.append(iou(_grabcut(photo, box), truth))
        per_case[name] = round(colour[-1], 4)
    rough = {}
    for name, photo, box, outline in edit_tutorial_objects():
        cv2.setRNGSeed(0)
        rough[name] = round(iou(mask_from_box(photo, box), outline), 4)
    by_outline = {}
    for name, value in per_case.items():
        by_outline.setdefault(name.split(" of ")[0], []).append(value)
    return {"nuclei boxes": len(ours),
            "mask_from_box mean IoU (grey nuclei)": float(np.mean(ours)),
            "raw GrabCut mean IoU (grey nuclei)": float(np.mean(raw)),
            "raw GrabCut empty masks": empty_raw,
            "colour photos": "no colour photos with object masks ship "
                             "offline; measured on composites of real "
                             "photos (module doc, composites())",
            "colour composites": len(colour),
            "mask_from_box mean IoU (colour composites)":
                float(np.mean(colour)),
            "mask_from_box median IoU (colour composites)":
                float(np.median(colour)),
            "mask_from_box IoU < 0.5 (colour composites)":
                int(sum(v < 0.5 for v in colour)),
            "mask_from_box with the whole photo as context, mean IoU "
            "(colour composites)": float(np.mean(colour_whole)),
            "raw GrabCut mean IoU (colour composites)":
                float(np.mean(colour_raw)),
            "mask_from_box s/MP of photo (colour composites)":
                seconds / megapixels,
            "mask_from_box mean IoU by outline (colour composites)": {
                name: round(float(np.mean(values)), 4)
                for name, values in by_outline.items()},
            "mask_from_box IoU per composite": per_case,
            "real photos, rough outlines (not ground truth)":
                "the Edit Images tutorial's objects: boxes around its "
                "hand-drawn outlines (polygons read off a 10-pixel grid, "
                "an ellipse), IoU with those outlines",
            "mask_from_box IoU against rough outlines": rough,
            "mask_from_box mean IoU against rough outlines":
                float(np.mean(list(rough.values())))}


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
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="measure only these (the others are kept from "
                             "an existing annotation.json)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.makedirs(args.out, exist_ok=True)
    # One BLAS/OpenMP thread: on a shared 2-core machine k-means with a
    # thread per reported core took 10-20 s a call instead of 0.3 s.
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):
        run(args)


def run(args):
    results = {}
    path = os.path.join(args.out, "annotation.json")
    if set(args.parts) != set(PARTS) and os.path.exists(path):
        with open(path) as file:
            results = json.load(file)
        for key in ("machine", "date"):
            results.pop(key, None)
    if "scribbles" in args.parts:
        results["scribbles (nuclei)"] = bench_scribbles(args.seeds)
    if "boxes" in args.parts:
        results["boxes"] = bench_boxes()
    if "suggestions" in args.parts:
        with tempfile.TemporaryDirectory() as folder:
            embeddings, target, seconds = digits_embeddings(folder)
        results["suggestions (digits)"] = {
            "embedding s": seconds,
            **bench_suggestions(embeddings, target, args.seeds, args.out)}
    write_results(results, args.out, "annotation")


if __name__ == "__main__":
    main()
