"""Make the annotation store of the "Annotate nuclei, train, count" tutorial.

The store (``store/`` next to this file) holds what a person would make in
Annotate Images in a few minutes: a few scribbles on three of the nuclei
tiles, and the masks of six tiles predicted from those scribbles and then
corrected. Nothing in it was drawn by hand; every step is made here from
the ground truth that ships with the nuclei tiles (``../nuclei``), so that
anyone can make the very same files again and see what was done:

1. Scribbles, on the tiles in :data:`SCRIBBLED`, placed automatically as a
   person draws them: a short line (10 pixels) through the middle of five
   nuclei of each tile, kept one pixel inside the nucleus, and four longer
   lines (30 pixels) in the background, at least 3 pixels from any nucleus.
   Which nuclei, where the background lines start and the directions come
   from a random generator with a fixed seed. (The same strokes as in
   ``bench/annotation.py``, which measures the scribble segmenter with
   them.) They are the Scribble tool's strokes: value 1 marks the
   background, 2 a nucleus.
2. :func:`~orangecontrib.deepimage.annotation.scribble_segmenter`, with
   its default settings (as the Scribble tool uses it), learns from those
   strokes and predicts the masks of the tiles in :data:`MASKED`.
3. Corrected object by object, as a person corrects a prediction: redraw
   what is wrong, leave what is roughly right. Objects are connected
   regions of the class masks (4-connected). A predicted object that
   covers no nucleus of the ground truth is erased; one that matches the
   nuclei it covers poorly (IoU below :data:`REDRAW_BELOW`: two nuclei
   merged into one, half a nucleus, a blob spilling into the background)
   is erased and those nuclei are drawn in from the ground truth; a
   ground-truth nucleus that the prediction misses (less than half of it
   covered) is drawn in from the ground truth. The other objects keep the
   classifier's outline, a pixel or two off as it may be.

The store is written through
:meth:`~orangecontrib.deepimage.annotation.AnnotationStore.from_masks` and
:meth:`~orangecontrib.deepimage.annotation.AnnotationStore.set_scribbles`,
so Annotate Images knows every file as its own and replaces them when the
user edits; no image path is recorded, so the store works wherever the
tutorial is installed. Run from anywhere::

    python make_store.py [folder]

which replaces ``store/`` (or writes into `folder`, which must not exist
yet) and prints what was corrected.
"""
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
# a checkout's own package before an installed one
sys.path.insert(0, os.path.normpath(os.path.join(HERE, *[".."] * 4)))

# pylint: disable=wrong-import-position
from orangecontrib.deepimage.annotation import (  # noqa: E402
    AnnotationStore, scribble_segmenter)

NUCLEI = os.path.join(os.path.dirname(HERE), "nuclei")
STORE = os.path.join(HERE, "store")
CLASSES = ["background", "nucleus"]
#: the tiles with scribbles
SCRIBBLED = ("nuclei_r0_c0", "nuclei_r1_c2", "nuclei_r2_c1")
#: the tiles with a mask: the scribbled ones and three more
MASKED = SCRIBBLED + ("nuclei_r0_c3", "nuclei_r3_c0", "nuclei_r3_c3")
#: a predicted object matching the ground truth worse than this is redrawn
REDRAW_BELOW = 0.5
SEED = 0


def read(folder, stem):
    return np.asarray(Image.open(os.path.join(NUCLEI, folder, stem + ".png")))


def strokes(truth, instances, rng, n_nuclei=5, n_background=4, length=10):
    """Scribbles placed from the ground truth (see the module's doc):
    0 not marked, 1 background, 2 nucleus."""
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


def iou(a, b):
    return float((a & b).sum() / max((a | b).sum(), 1))


def correct(predicted, truth):
    """The prediction corrected object by object (see the module's doc);
    return the corrected mask and how many objects were kept, erased,
    redrawn from the ground truth and added from it."""
    from skimage.measure import label
    objects = label(predicted, connectivity=1)
    nuclei = label(truth, connectivity=1)
    corrected = np.zeros_like(predicted)
    drawn = set()
    counts = {"kept": 0, "erased": 0, "redrawn": 0, "added": 0}
    for index in range(1, objects.max() + 1):
        region = objects == index
        covered = set(np.unique(nuclei[region])) - {0}
        if not covered:
            counts["erased"] += 1
            continue
        if iou(region, np.isin(nuclei, list(covered))) < REDRAW_BELOW:
            counts["redrawn"] += 1
            drawn |= covered
            continue
        corrected |= region
        counts["kept"] += 1
    for index in range(1, nuclei.max() + 1):
        nucleus = nuclei == index
        if index not in drawn and (predicted & nucleus).sum() \
                < 0.5 * nucleus.sum():
            counts["added"] += 1
            drawn.add(index)
    corrected |= np.isin(nuclei, list(drawn))
    return corrected, counts


def make_store(folder=STORE):
    """Write the store into `folder` (replaced if it is the tutorial's
    own); return a row of figures per masked tile."""
    rng = np.random.default_rng(SEED)
    images = {stem: read("images", stem) for stem in MASKED}
    truth = {stem: read("masks", stem) > 0 for stem in MASKED}
    marks = {stem: strokes(truth[stem], read("instances", stem), rng)
             for stem in SCRIBBLED}
    segmenter = scribble_segmenter([images[stem] for stem in SCRIBBLED],
                                   [marks[stem] for stem in SCRIBBLED])
    rows = []
    if os.path.abspath(folder) == STORE and os.path.isdir(STORE):
        shutil.rmtree(STORE)
    with tempfile.TemporaryDirectory() as masks_dir:
        for stem in MASKED:
            predicted = segmenter.predict(images[stem]) == 1
            corrected, counts = correct(predicted, truth[stem])
            Image.fromarray(corrected.astype(np.uint8)).save(
                os.path.join(masks_dir, stem + ".png"))
            rows.append({"tile": stem, "scribbled": stem in SCRIBBLED,
                         "IoU before": iou(predicted, truth[stem]),
                         "IoU after": iou(corrected, truth[stem]),
                         **counts})
        store = AnnotationStore.from_masks(masks_dir, folder, CLASSES)
    for stem in SCRIBBLED:
        store.set_scribbles(stem + ".png", marks[stem])
    return rows


def main(argv):
    folder = argv[0] if argv else STORE
    if folder != STORE and os.path.exists(folder):
        raise SystemExit(f"{folder} exists; give a new folder")
    rows = make_store(folder)
    print(f"Store written to {folder}")
    print("| tile | scribbles | foreground IoU predicted | corrected | "
          "objects kept | erased | redrawn | added |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['tile']} | {'yes' if row['scribbled'] else 'no'} | "
              f"{row['IoU before']:.3f} | {row['IoU after']:.3f} | "
              f"{row['kept']} | {row['erased']} | {row['redrawn']} | "
              f"{row['added']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
