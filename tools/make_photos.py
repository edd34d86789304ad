"""Write the tutorial photos (run once; output is committed).

Photographs that ship with scikit-image and scikit-learn under licences that
allow redistribution (see tutorials/README-photos.md), saved as JPEG with
the longest side at most 640 pixels.
"""
import os
import sys

import numpy as np
from PIL import Image

#: file name -> (loader, source description)
PHOTOS = {
    "cat-chelsea.jpg": ("skimage", "chelsea"),
    "coffee.jpg": ("skimage", "coffee"),
    "astronaut.jpg": ("skimage", "astronaut"),
    "rocket.jpg": ("skimage", "rocket"),
    "coins.jpg": ("skimage", "coins"),
    "hubble-deep-field.jpg": ("skimage", "hubble_deep_field"),
    "camera-man.jpg": ("skimage", "camera"),
    "retina.jpg": ("skimage", "retina"),
    "bricks.jpg": ("skimage", "brick"),
    "grass.jpg": ("skimage", "grass"),
    "gravel.jpg": ("skimage", "gravel"),
    "china-temple.jpg": ("sklearn", "china.jpg"),
    "flower.jpg": ("sklearn", "flower.jpg"),
}


def load(source, name):
    if source == "skimage":
        from skimage import data
        return np.asarray(getattr(data, name)())
    from sklearn.datasets import load_sample_image
    return load_sample_image(name)


def main(folder):
    os.makedirs(folder, exist_ok=True)
    for filename, (source, name) in PHOTOS.items():
        image = Image.fromarray(load(source, name))
        image = image.convert("RGB")
        image.thumbnail((640, 640), Image.Resampling.LANCZOS)
        image.save(os.path.join(folder, filename), quality=88)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         "orangecontrib/deepimage/tutorials/photos")
