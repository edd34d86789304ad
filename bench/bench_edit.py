"""Edit Images on a 4000×3000 photo: seconds, not minutes.

Makes a 4000×3000 JPEG (scikit-image's astronaut, upscaled, with a little
noise so it is not unnaturally smooth) and a class mask with four objects
of different sizes and shapes covering about 3 % of the pixels, then times
each operation end to end with
:func:`orangecontrib.deepimage.edit.edit_images`:
reading the photo and the mask, growing the mask, editing and writing the
new file (JPEG at quality 95; cut-out as an RGBA PNG).

Usage: python bench/bench_edit.py [--repeat 3] [--out bench/results]
Results go to edit.json: the best and the median time of each operation.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

WIDTH, HEIGHT = 4000, 3000
RUNS = [("remove", "fast"), ("remove", "quality"), ("blur", None),
        ("pixelate", None), ("fill", None), ("cut-out", None)]


def make_photo(path, seed=0):
    from skimage import data
    rng = np.random.default_rng(seed)
    photo = Image.fromarray(data.astronaut()).resize(
        (WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    pixels = np.asarray(photo, dtype=np.int16)
    pixels = pixels + rng.normal(0, 4, pixels.shape).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        path, quality=92)


def make_mask(path):
    """Four objects: a disc, a rotated bar, a polygon and a small box."""
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(mask)
    draw.ellipse((600, 500, 980, 880), fill=1)
    draw.polygon([(2200, 300), (2270, 270), (2870, 1400),
                  (2800, 1430)], fill=1)
    draw.polygon([(1200, 2000), (1600, 1950), (1650, 2330),
                  (1420, 2420), (1180, 2280)], fill=2)
    draw.rectangle((3300, 2300, 3500, 2400), fill=2)
    mask.save(path)
    return float(np.mean(np.asarray(mask) > 0))


def make_table(folder):
    from Orange.data import Domain, StringVariable, Table
    image = StringVariable("image")
    image.attributes.update({"type": "image", "origin": folder})
    mask = StringVariable("mask")
    mask.attributes.update({"type": "image", "origin": folder,
                            "mask": "class",
                            "classes": "background, crane, sign"})
    return Table.from_numpy(
        Domain([], metas=[image, mask]), np.empty((1, 0)),
        metas=np.array([["photo.jpg", "photo-mask.png"]], dtype=object))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    from orangecontrib.deepimage.edit import edit_images
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        make_photo(os.path.join(folder, "photo.jpg"))
        covered = make_mask(os.path.join(folder, "photo-mask.png"))
        table = make_table(folder)
        out_dir = os.path.join(folder, "edited")
        os.mkdir(out_dir)
        for operation, method in RUNS:
            key = operation + (f" ({method})" if method else "")
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                result = edit_images(table, operation, dilate=3,
                                     out_dir=out_dir, method=method)
                times.append(time.perf_counter() - start)
                assert not result.skipped, result.skipped
            edited = int(result.table.X[0, 0])
            size = os.path.getsize(result.files[0])
            results[key] = {"best_s": round(min(times), 3),
                            "median_s": round(float(np.median(times)), 3),
                            "pixels_edited": edited,
                            "file_mb": round(size / 2 ** 20, 2)}
            print(f"{key:18s} best {min(times):6.2f} s   median "
                  f"{np.median(times):6.2f} s   {size / 2 ** 20:5.1f} MB")
    import cv2
    import skimage
    report = {
        "photo": f"{WIDTH}x{HEIGHT} JPEG, mask covers {covered:.1%} "
                 "(4 objects), dilate=3",
        "repeat": args.repeat,
        "operations": results,
        "machine": {"python": platform.python_version(),
                    "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(),
                    "opencv": cv2.__version__,
                    "scikit-image": skimage.__version__},
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "edit.json"), "w") as file:
        json.dump(report, file, indent=2)
    print(f"mask covers {covered:.1%} of {WIDTH}×{HEIGHT}; "
          f"written to {os.path.join(args.out, 'edit.json')}")


if __name__ == "__main__":
    main()
