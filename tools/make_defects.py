"""Make the data of the "find-defects" tutorial (run once; it is committed).

Crops of scikit-image's brick photo (``skimage.data.brick``, CC0): good
parts from the top and bottom thirds of the photo, parts to check from the
band between them (no pixel of theirs is in a good part), half of them with a synthesised scratch, hole or stain (the defects of
``bench/bench_anomaly.py``). Usage: python tools/make_defects.py
"""
import os
import shutil
import sys

import numpy as np
from PIL import Image
from skimage import data

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))
from bench_anomaly import CROP, DEFECTS, crops  # noqa: E402

FOLDER = os.path.join(os.path.dirname(HERE), "orangecontrib", "deepimage",
                      "tutorials", "defects")
N_GOOD, N_CHECK = 24, 12


def save(path, pixels):
    Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)) \
        .save(path, optimize=True)


def main():
    rng = np.random.default_rng(7)
    photo = data.brick()
    height = photo.shape[0]
    top, bottom = int(height * 0.35), int(height * 0.65)
    for sub in ("good", "check"):
        shutil.rmtree(os.path.join(FOLDER, sub), ignore_errors=True)
        os.makedirs(os.path.join(FOLDER, sub))
    good = crops(photo, (0, top), N_GOOD // 2, rng) \
        + crops(photo, (bottom, height), N_GOOD // 2, rng)
    for i, crop in enumerate(good):
        save(os.path.join(FOLDER, "good", f"good{i:02d}.png"), crop)
    for i, crop in enumerate(crops(photo, (top, bottom), N_CHECK, rng)):
        name = f"part{i:02d}"
        if i % 2:
            defect = DEFECTS[(i // 2) % len(DEFECTS)]
            crop, _ = defect(crop, rng)
            name += f"-{defect.__name__}"
        save(os.path.join(FOLDER, "check", f"{name}.png"), crop)
    assert crop.shape == (CROP, CROP)


if __name__ == "__main__":
    main()
