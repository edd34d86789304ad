"""Write the handwritten-digits tutorial images (run once; output is committed).

The 8×8 digits of the UCI "Optical Recognition of Handwritten Digits" data
set, as shipped by scikit-learn, scaled to 32×32 greyscale PNGs in one folder
per digit, so Import Images reads the digit as the class.
"""
import os
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

PER_CLASS = 20


def main(folder):
    digits = load_digits()
    counts = dict.fromkeys(range(10), 0)
    for index, (pixels, label) in enumerate(zip(digits.images,
                                                digits.target)):
        if counts[label] == PER_CLASS:
            continue
        counts[label] += 1
        target = os.path.join(folder, str(label))
        os.makedirs(target, exist_ok=True)
        image = Image.fromarray((pixels / 16 * 255).astype(np.uint8))
        image.resize((32, 32), Image.Resampling.NEAREST).save(
            os.path.join(target, f"digit{index:04d}.png"), optimize=True)
        if all(count == PER_CLASS for count in counts.values()):
            break


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         "orangecontrib/deepimage/tutorials/digits")
