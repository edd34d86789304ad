"""Small image tables made on the fly for tests."""
import os

import numpy as np
from PIL import Image

from Orange.data import DiscreteVariable, Domain, StringVariable, Table


def image_table(folder, names, labels=None, class_values=None,
                class_name="class"):
    """A table with an image column (type=image, origin=folder)."""
    image = StringVariable("image")
    image.attributes.update({"type": "image", "origin": str(folder)})
    metas = np.array(names, dtype=object)[:, None]
    if labels is None:
        return Table.from_numpy(Domain([], metas=[image]),
                                np.empty((len(names), 0)), metas=metas)
    class_var = DiscreteVariable(class_name, values=list(class_values))
    return Table.from_numpy(Domain([], class_var, metas=[image]),
                            np.empty((len(names), 0)),
                            np.asarray(labels, dtype=float), metas=metas)


def digits_table(folder, n=200, size=32):
    """sklearn's handwritten digits as `size`×`size` PNG files."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    names = []
    for i in range(n):
        pixels = (digits.images[i] / 16 * 255).astype(np.uint8)
        name = f"digit{i:04d}.png"
        Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST) \
            .save(os.path.join(folder, name))
        names.append(name)
    return image_table(folder, names, digits.target[:n],
                       [str(d) for d in range(10)], "digit")


def shapes_table(folder, per_class=10, size=32, seed=0):
    """Three classes that a frozen SqueezeNet tells apart easily.

    Red discs, green squares and blue stripes at random places and sizes.
    """
    rng = np.random.default_rng(seed)
    names, labels = [], []
    for label, kind in enumerate(("disc", "square", "stripes")):
        for i in range(per_class):
            pixels = np.full((size, size, 3), 235, np.uint8)
            yy, xx = np.mgrid[:size, :size]
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            radius = rng.integers(size // 6, size // 3)
            if kind == "disc":
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
                pixels[inside] = (220, 30, 30)
            elif kind == "square":
                inside = (abs(yy - cy) < radius) & (abs(xx - cx) < radius)
                pixels[inside] = (30, 180, 30)
            else:
                pixels[(xx // 4) % 2 == 0] = (30, 30, 220)
            name = f"{kind}{i:02d}.png"
            Image.fromarray(pixels).save(os.path.join(folder, name))
            names.append(name)
            labels.append(label)
    return image_table(folder, names, labels, ["disc", "square", "stripes"],
                       "shape")
