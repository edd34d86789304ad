"""Screenshots of every widget at its default size, for the help pages.

Each widget in orangecontrib/deepimage/widgets/ow*.py is created offscreen,
given a little of the tutorial data so that its controls and messages are
filled in, shown at its default size and saved as
doc/widgets/images/<name>.png, where <name> is the widget's module name
without the "ow" (the name of its help page).

    QT_QPA_PLATFORM=offscreen python tools/screenshots.py [name ...]

Runs offline: the only network it may load is SqueezeNet, whose weights
ship with the add-on.
"""
import glob
import io
import importlib
import inspect
import os
import sys
import tempfile
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable=wrong-import-position
from AnyQt.QtCore import QBuffer, QSize
from AnyQt.QtTest import QTest
from AnyQt.QtWidgets import QApplication

from Orange.widgets.widget import OWWidget
from PIL import Image

import orangecontrib.deepimage.widgets as widgets_package

WIDGETS = os.path.dirname(widgets_package.__file__)
TUTORIALS = os.path.join(os.path.dirname(WIDGETS), "tutorials")
OUT_DIR = os.path.join(ROOT, "doc", "widgets", "images")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
SCREEN = QSize(1920, 1080)


def widget_names():
    """Module names (without "ow") of all widgets, found by glob."""
    return sorted(os.path.basename(path)[2:-3]
                  for path in glob.glob(os.path.join(WIDGETS, "ow*.py")))


def widget_class(name):
    module = importlib.import_module(
        f"orangecontrib.deepimage.widgets.ow{name}")
    classes = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, OWWidget) and cls.__module__ == module.__name__
               and getattr(cls, "name", None)]
    assert len(classes) == 1, (name, classes)
    return classes[0]


def _files(folder, limit=None):
    names = sorted(name for name in os.listdir(folder)
                   if name.lower().endswith(PHOTO_EXTENSIONS))
    return names[:limit]


def photos(limit=None):
    from imagedata import image_table
    folder = os.path.join(TUTORIALS, "photos")
    return image_table(folder, _files(folder, limit))


def digits(per_class=3):
    """Digits from the tutorial's class folders, with their class."""
    from imagedata import image_table
    folder = os.path.join(TUTORIALS, "digits")
    names, labels = [], []
    for digit in range(10):
        for name in _files(os.path.join(folder, str(digit)), per_class):
            names.append(f"{digit}/{name}")
            labels.append(digit)
    return image_table(folder, names, labels, [str(d) for d in range(10)],
                       "digit")


def defects(kind):
    from imagedata import image_table
    folder = os.path.join(TUTORIALS, "defects", kind)
    return image_table(folder, _files(folder))


def pairs(tutorial):
    from orangecontrib.deepimage.segdata import pair_folders
    folder = os.path.join(TUTORIALS, tutorial)
    table, _ = pair_folders(os.path.join(folder, "images"),
                            os.path.join(folder, "masks"))
    return table


def embeddings():
    from orangecontrib.deepimage.embedding import ImageEmbedder
    with tempfile.TemporaryDirectory() as cache:
        return ImageEmbedder("squeezenet", cache_dir=cache)(photos())[0]


def send(widget, name, value):
    """Send `value` to the input called `name`, as the canvas does."""
    signal = getattr(widget.Inputs, name)
    getattr(widget, signal.handler)(value)


def set_segmentation_folders(widget):
    folder = os.path.join(TUTORIALS, "nuclei")
    widget.set_folders(os.path.join(folder, "images"),
                       os.path.join(folder, "masks"))


def annotate_nuclei(widget):
    """The nuclei tutorial's images, in a store (a temporary folder) that
    starts from the tutorial's masks, so the view shows one corrected."""
    from orangecontrib.deepimage.annotation import AnnotationStore
    folder = os.path.join(TUTORIALS, "nuclei")
    store = tempfile.mkdtemp(prefix="annotate-")
    AnnotationStore.from_masks(os.path.join(folder, "masks"), store)
    table = pairs("nuclei")
    widget.set_store_folder(store)
    send(widget, "images", table)
    widget.handleNewSignals()


# What each widget is given: (input name, function making the value), or a
# function that sets the widget up itself.
FEEDS = {
    "annotateimages": annotate_nuclei,
    "deepembedding": [("images", lambda: photos(6))],
    "editimages": [("data", lambda: pairs("edit"))],
    "explainimages": [("data", lambda: digits(1))],
    "findobjects": [("data", lambda: photos(6))],
    "imageanomalies": [("normal", lambda: defects("good")),
                       ("data", lambda: defects("check"))],
    "imageclassifier": [],
    "imageclusters": [("embeddings", embeddings)],
    "segmentationdata": set_segmentation_folders,
    "segmentationpreview": [("data", lambda: pairs("nuclei"))],
    "segmentationtrainer": [("data", lambda: pairs("nuclei"))],
    "segmentimages": [("data", lambda: pairs("nuclei"))],
}


# Seconds to wait for a widget's task; Segmentation Trainer trains (30
# epochs of a small U-Net on the 16 nuclei) to show its curves.
TIMEOUTS = {"segmentationtrainer": 240}


def wait(widget, timeout=60):
    """Process events until the widget's task ends (at most `timeout` s)."""
    end = time.monotonic() + timeout
    QTest.qWait(100)
    while getattr(widget, "task", None) is not None \
            and time.monotonic() < end:
        QTest.qWait(100)
    QTest.qWait(200)


def save_small(pixmap, path):
    """Save as a PNG with a palette of 256 colours (a few tens of KB)."""
    buffer = QBuffer()
    buffer.open(QBuffer.OpenModeFlag.WriteOnly)
    assert pixmap.save(buffer, "PNG")
    image = Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT) \
        .save(path, optimize=True)


def shoot(name, out_dir=OUT_DIR, timeout=None):
    """Create widget `name`, feed it and save its picture.

    Return the path of the PNG and the widget's size (width, height)."""
    app = QApplication.instance() or QApplication([])
    assert app is not None
    widget = widget_class(name)()
    feed = FEEDS.get(name, [])
    if callable(feed):
        feed(widget)
    else:
        for input_name, make in feed:
            send(widget, input_name, make())
        if feed:
            widget.handleNewSignals()
    wait(widget, timeout or TIMEOUTS.get(name, 60))
    # A new window opens at its size hint, at most 2/3 of the screen: the
    # offscreen screen is 800×600, so take 2/3 of a 1920×1080 screen.
    widget.resize(widget.sizeHint().boundedTo(SCREEN * 2 / 3)
                  .expandedTo(widget.minimumSizeHint()))
    widget.show()
    QTest.qWait(200)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.png")
    save_small(widget.grab(), path)
    size = (widget.width(), widget.height())
    if hasattr(widget, "cancel"):
        widget.cancel()
    widget.onDeleteWidget()
    widget.close()
    widget.deleteLater()
    QTest.qWait(50)
    return path, size


def main(names=None):
    for name in names or widget_names():
        start = time.monotonic()
        path, (width, height) = shoot(name)
        print(f"{path}: {width}×{height}, {os.path.getsize(path) // 1024} KB, "
              f"{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
