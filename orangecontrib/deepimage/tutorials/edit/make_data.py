"""Make the photos and masks of the Edit Images tutorial.

The photos are scikit-image's sample images ``rocket`` and ``astronaut``
(both public domain); the masks are polygons and an ellipse drawn by hand
on a 10-pixel grid over each photo, written as palette PNGs whose pixel
values are class indices (``masks/classes.txt``; 0 is the background).

Run from anywhere: ``python make_data.py``; it rewrites images/ and masks/
next to this file.
"""
import os

import numpy as np
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = ["background", "rocket", "tower", "flag", "shuttle", "helmet"]
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25),
           (0, 130, 200), (245, 130, 48)]

SHAPES = {
    "rocket": [
        ("rocket", "polygon", [
            (320, 125), (326, 127), (331, 133), (334, 142), (334, 180),
            (333, 185), (333, 406), (311, 406), (311, 185), (310, 180),
            (310, 142), (313, 133), (317, 127)]),
        ("tower", "polygon", [  # the lightning mast on the left
            (197, 121), (202, 121), (203, 188), (206, 405), (166, 405),
            (188, 190), (197, 186)]),
        ("tower", "polygon", [  # and on the right
            (444, 121), (449, 121), (451, 186), (454, 190), (472, 405),
            (437, 405), (440, 190), (443, 186)]),
    ],
    "astronaut": [
        ("flag", "polygon", [
            (0, 0), (66, 0), (66, 88), (88, 112), (98, 150), (100, 200),
            (94, 218), (80, 236), (50, 280), (36, 350), (26, 420),
            (20, 512), (0, 512)]),
        ("shuttle", "polygon", [  # the model, its stand included
            (402, 0), (430, 0), (438, 20), (450, 35), (456, 60), (458, 190),
            (464, 215), (462, 240), (468, 262), (468, 286), (362, 286),
            (356, 262), (352, 222), (360, 205), (370, 185), (370, 100),
            (382, 75), (388, 50), (396, 30)]),
        ("helmet", "ellipse", (280, 345, 530, 595)),
    ],
}


def make_mask(size, shapes):
    mask = Image.new("P", size, 0)
    mask.putpalette([c for colour in PALETTE for c in colour])
    draw = ImageDraw.Draw(mask)
    for name, kind, points in shapes:
        index = CLASSES.index(name)
        if kind == "polygon":
            draw.polygon(points, fill=index)
        else:
            draw.ellipse(points, fill=index)
    return mask


def main():
    from skimage import data
    os.makedirs(os.path.join(HERE, "images"), exist_ok=True)
    os.makedirs(os.path.join(HERE, "masks"), exist_ok=True)
    for name, shapes in SHAPES.items():
        photo = Image.fromarray(getattr(data, name)())
        photo.save(os.path.join(HERE, "images", f"{name}.jpg"), quality=90)
        mask = make_mask(photo.size, shapes)
        mask.save(os.path.join(HERE, "masks", f"{name}.png"), optimize=True)
        counts = np.bincount(np.asarray(mask).ravel(),
                             minlength=len(CLASSES))
        print(name, {CLASSES[i]: int(n) for i, n in enumerate(counts) if n})
    with open(os.path.join(HERE, "masks", "classes.txt"), "w") as file:
        file.write("\n".join(CLASSES) + "\n")


if __name__ == "__main__":
    main()
