"""Screenshots of every widget at its default size, for the help pages.

Each widget in orangecontrib/deepimage/widgets/ow*.py is created offscreen,
given a little of the tutorial data so that its controls and messages are
filled in, shown at its default size and saved as
doc/widgets/images/<name>.png, where <name> is the widget's module name
without the "ow" (the name of its help page).

    QT_QPA_PLATFORM=offscreen python tools/screenshots.py [name ...]

The name ``annotateimages-tools`` stands for a picture of each tool of
Annotate Images, used with real mouse events on its view
(doc/widgets/images/annotateimages-<tool>.png; see :func:`shoot_tools`).

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
from AnyQt.QtCore import QBuffer, QRect, QSize, Qt
from AnyQt.QtTest import QTest
from AnyQt.QtWidgets import QApplication

import numpy as np
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


# --- Annotate Images: a picture of each tool -------------------------------
#
# Each tool is used with real mouse and key events (QTest) on the widget's
# view, on the nuclei tiles in a copy of the annotate-nuclei tutorial's
# store, aimed with the tiles' ground truth; the picture is the view's part
# that shows the tile. Box, polygon and fill show two moments side by side.

#: The tools with a picture, in the order of the help page.
TOOL_PICTURES = ("brush", "eraser", "polygon", "fill", "box", "superpixel",
                 "scribble")
#: A tile without a mask in the tutorial's store, and one with a mask.
FREE_TILE, MASKED_TILE = "nuclei_r0_c2", "nuclei_r0_c0"
TOOL_ZOOM = 3  # screen pixels per image pixel: a tile is 384 a side


def tool_picture_path(tool, out_dir=OUT_DIR):
    return os.path.join(out_dir, f"annotateimages-{tool}.png")


def nucleus_at(stem, x, y):
    """The ground-truth nucleus at pixel (x, y) of a nuclei tile (bool)."""
    ids = np.asarray(Image.open(os.path.join(
        TUTORIALS, "nuclei", "instances", stem + ".png")))
    return ids == ids[y, x]


def _outline(region, n_points):
    """`n_points` corners along the outline of a region, (x, y) ints."""
    from skimage.measure import find_contours
    contour = max(find_contours(region.astype(float), 0.5), key=len)
    picks = contour[np.linspace(0, len(contour) - 1, n_points,
                                endpoint=False).astype(int)]
    return [(int(round(col)), int(round(row))) for row, col in picks]


class _Hand:
    """Real mouse and key events on an AnnotationView's viewport."""

    def __init__(self, view):
        self.view, self.viewport = view, view.viewport()

    def at(self, x, y):
        return self.view.map_from_image(x, y)

    def stroke(self, points, button=None):
        button = button or Qt.MouseButton.LeftButton
        none = Qt.KeyboardModifier.NoModifier
        QTest.mousePress(self.viewport, button, none, self.at(*points[0]))
        for point in points[1:]:
            QTest.mouseMove(self.viewport, self.at(*point))
        QTest.mouseRelease(self.viewport, button, none, self.at(*points[-1]))

    def click(self, x, y):
        self.stroke([(x, y)])

    def hover(self, x, y):
        QTest.mouseMove(self.viewport, self.at(x, y))

    def key(self, key):
        QTest.keyClick(self.viewport, key)


def _show(widget, row):
    """Show image `row` at TOOL_ZOOM, as a user zooms in with the wheel."""
    widget.show_image(row)
    widget.view.set_zoom(TOOL_ZOOM)
    QTest.qWait(50)


def _tile_picture(view):
    """The part of the view that shows the tile."""
    QTest.qWait(50)
    height, width = view.mask().shape
    top_left = view.map_from_image(-0.5, -0.5)
    bottom_right = view.map_from_image(width - 0.5, height - 0.5)
    grab = view.viewport().grab(QRect(top_left, bottom_right))
    buffer = QBuffer()
    buffer.open(QBuffer.OpenModeFlag.WriteOnly)
    assert grab.save(buffer, "PNG")
    return Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")


def _side_by_side(*images, gap=8):
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    joined = Image.new("RGB", (width, images[0].height), (255, 255, 255))
    x = 0
    for image in images:
        joined.paste(image, (x, 0))
        x += image.width + gap
    return joined


def _wait_quick(widget, timeout=60):
    end = time.monotonic() + timeout
    QTest.qWait(50)
    while (widget.quick.is_busy() or widget.scribble_timer.isActive()) \
            and time.monotonic() < end:
        QTest.qWait(50)
    QTest.qWait(100)


def _use_brush(widget, hand, rows):
    stem = FREE_TILE
    _show(widget, rows[stem])
    widget.set_tool("brush")
    widget.select_class(1)
    widget.brush_size = 6
    widget._on_brush_size()  # pylint: disable=protected-access
    # a stroke along a nucleus, not quite to its ends
    hand.stroke([(50, 55), (55, 57), (60, 58), (64, 59)])
    hand.hover(70, 60)  # the brush's outline follows the mouse
    return [_tile_picture(widget.view)]


def _use_eraser(widget, hand, rows):
    _show(widget, rows[MASKED_TILE])
    widget.set_tool("eraser")
    widget.brush_size = 5
    widget._on_brush_size()  # pylint: disable=protected-access
    # across the largest nucleus of the tile, through its middle
    x, y = _largest_nucleus(MASKED_TILE)
    hand.stroke([(x - 14, y), (x - 5, y + 1), (x + 5, y), (x + 14, y + 1)])
    hand.hover(x + 18, y + 2)
    return [_tile_picture(widget.view)]


def _largest_nucleus(stem):
    """The centre (x, y) of a tile's largest nucleus off its edges."""
    from skimage.measure import regionprops
    ids = np.asarray(Image.open(os.path.join(
        TUTORIALS, "nuclei", "instances", stem + ".png")))
    inner = [region for region in regionprops(ids)
             if min(region.bbox[:2]) > 2 and max(region.bbox[2:]) < 125]
    region = max(inner, key=lambda region: region.area)
    y, x = region.centroid
    return int(x), int(y)


def _use_polygon(widget, hand, rows):
    _show(widget, rows[FREE_TILE])
    widget.set_tool("polygon")
    widget.select_class(1)
    corners = _outline(nucleus_at(FREE_TILE, 96, 79), 9)
    for corner in corners[:-1]:
        hand.click(*corner)
    hand.hover(*corners[-1])
    drawing = _tile_picture(widget.view)
    hand.click(*corners[-1])
    hand.key(Qt.Key.Key_Return)
    return [drawing, _tile_picture(widget.view)]


def _use_fill(widget, hand, rows):
    _show(widget, rows[FREE_TILE])
    widget.set_tool("brush")
    widget.select_class(1)
    widget.brush_size = 2
    widget._on_brush_size()  # pylint: disable=protected-access
    ring = _outline(nucleus_at(FREE_TILE, 19, 64), 24)
    hand.stroke(ring + ring[:1])  # an outline drawn round a nucleus
    outlined = _tile_picture(widget.view)
    widget.set_tool("fill")
    hand.click(19, 64)
    return [outlined, _tile_picture(widget.view)]


def _use_box(widget, hand, rows):
    _show(widget, rows[FREE_TILE])
    widget.set_tool("box")
    widget.select_class(1)
    rows, cols = np.nonzero(nucleus_at(FREE_TILE, 58, 57))
    x0, y0, x1, y1 = cols.min() - 3, rows.min() - 3, cols.max() + 3, \
        rows.max() + 3
    none = Qt.KeyboardModifier.NoModifier
    QTest.mousePress(hand.viewport, Qt.MouseButton.LeftButton, none,
                     hand.at(x0, y0))
    QTest.mouseMove(hand.viewport, hand.at((x0 + x1) // 2, (y0 + y1) // 2))
    QTest.mouseMove(hand.viewport, hand.at(x1, y1))
    band = _tile_picture(widget.view)
    QTest.mouseRelease(hand.viewport, Qt.MouseButton.LeftButton, none,
                       hand.at(x1, y1))
    _wait_quick(widget)
    return [band, _tile_picture(widget.view)]


def _use_superpixel(widget, hand, rows):
    _show(widget, rows[FREE_TILE])
    widget.set_tool("superpixel")
    widget.select_class(1)
    # clicks a few pixels apart inside one nucleus, each adding the
    # superpixel under it
    from scipy.ndimage import binary_erosion
    inside = binary_erosion(nucleus_at(FREE_TILE, 96, 79), iterations=3)
    for y in range(0, inside.shape[0], 6):
        for x in range(0, inside.shape[1], 6):
            if inside[y, x]:
                hand.click(x, y)
                _wait_quick(widget)
    return [_tile_picture(widget.view)]


def _use_scribble(widget, hand, rows):
    stem = "nuclei_r2_c0"  # neither masked nor scribbled in the store
    _show(widget, rows[stem])
    widget.set_tool("scribble")
    widget.brush_size = 2
    widget._on_brush_size()  # pylint: disable=protected-access
    widget.select_class(1)
    for x, y in ((50, 92), (22, 39), (96, 38)):
        hand.stroke([(x - 4, y - 1), (x, y), (x + 4, y + 1)])
    widget.select_class(0)
    for line in (((60, 10), (110, 20)), ((30, 70), (40, 110))):
        hand.stroke(list(line))
    _wait_quick(widget)
    return [_tile_picture(widget.view)]


TOOL_USES = {"brush": _use_brush, "eraser": _use_eraser,
             "polygon": _use_polygon, "fill": _use_fill, "box": _use_box,
             "superpixel": _use_superpixel, "scribble": _use_scribble}


def shoot_tools(out_dir=OUT_DIR, tools=TOOL_PICTURES):
    """Use each of `tools` in Annotate Images and save its picture as
    doc/widgets/images/annotateimages-<tool>.png.

    Return {tool: (path, what the view holds after it: mask, scribbles,
    preview)}. The store is a copy, in a temporary folder, of the
    annotate-nuclei tutorial's; every edit is undone before the next tool.
    """
    import shutil
    from imagedata import image_table
    app = QApplication.instance() or QApplication([])
    assert app is not None
    images = os.path.join(TUTORIALS, "nuclei", "images")
    names = sorted(os.listdir(images))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        shutil.copytree(os.path.join(TUTORIALS, "annotate", "store"), store)
        # without the tutorial's scribbles: their live prediction would
        # cover the other tools' pictures (the scribble tool draws its own)
        shutil.rmtree(os.path.join(store, "scribbles"))
        widget = widget_class("annotateimages")()
        widget.n_suggested = 0  # no embedding: the tools only
        widget.set_store_folder(store)
        send(widget, "images", image_table(images, names))
        widget.handleNewSignals()
        widget.resize(1000, 700)
        widget.show()
        QTest.qWait(200)
        hand = _Hand(widget.view)
        rows = {os.path.splitext(name)[0]: row
                for row, name in enumerate(names)}
        os.makedirs(out_dir, exist_ok=True)
        for tool in tools:
            pictures = TOOL_USES[tool](widget, hand, rows)
            path = tool_picture_path(tool, out_dir)
            picture = _side_by_side(*pictures)
            picture.quantize(256, method=Image.Quantize.MEDIANCUT) \
                .save(path, optimize=True)
            results[tool] = (path, widget.view.mask(),
                             widget.view.scribbles(), widget.view.preview())
            stack = widget.view.undo_stack()
            while stack.canUndo():
                stack.undo()
            _wait_quick(widget)
        widget.cancel()
        widget.onDeleteWidget()
        widget.close()
        widget.deleteLater()
        QTest.qWait(50)
    return results


#: The name that stands for the pictures of Annotate Images' tools.
TOOLS_NAME = "annotateimages-tools"


def main(names=None):
    for name in names or widget_names() + [TOOLS_NAME]:
        start = time.monotonic()
        if name == TOOLS_NAME:
            for path, *_ in shoot_tools().values():
                print(f"{path}: {os.path.getsize(path) // 1024} KB")
            print(f"({TOOLS_NAME}: {time.monotonic() - start:.0f} s)")
            continue
        path, (width, height) = shoot(name)
        print(f"{path}: {width}×{height}, {os.path.getsize(path) // 1024} KB, "
              f"{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
