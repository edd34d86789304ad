"""The painting canvas of Annotate Images.

:class:`AnnotationView` shows an image with its class mask, its scribbles
and a live prediction drawn over it, and edits the mask and the scribbles
with a brush, an eraser, polygons and flood fill; boxes, superpixel
clicks and the prompt tool's clicks and boxes (for Segment Anything) are
only reported (the widget computes their masks and calls
:meth:`AnnotationView.apply_mask`).

Scene coordinates are image pixels: pixel ``(x, y)`` covers
``[x, x + 1) × [y, y + 1)``. The mask and the scribbles stay at the image's
full resolution; every edit is drawn into them with OpenCV, and only the
changed rectangle of an overlay is recoloured and repainted, so a brush
stroke on a 12-megapixel photo costs what its few pixels cost. Each edit is
one :class:`QUndoCommand` that keeps the changed rectangle before and after,
so undo and redo restore the very same bytes.

Mouse: the left button uses the tool; the right button erases with the
brush and eraser (the mask) and with the scribble tool (the scribbles), and
removes the last vertex of a polygon (vertices outside the image move to
its edge); the middle button, the pan tool or Space + left button pans;
the wheel zooms around the cursor. Keys: Ctrl+Z undo, Ctrl+Shift+Z (or
Ctrl+Y) redo, Ctrl+0 fit, Enter closes a polygon, Escape cancels it,
Backspace removes its last vertex. While the view has the focus, these
keys reach it before a window's shortcuts for the same keys.
"""
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from AnyQt.QtCore import QEvent, QPoint, QPointF, QRectF, Qt, \
    pyqtSignal as Signal
from AnyQt.QtGui import (
    QColor, QImage, QKeySequence, QPainter, QPainterPath, QPen, QTransform,
    QUndoCommand, QUndoStack)
from AnyQt.QtWidgets import (
    QGraphicsEllipseItem, QGraphicsItem, QGraphicsPathItem,
    QGraphicsRectItem, QGraphicsScene, QGraphicsView)

from orangecontrib.deepimage.widgets.utils.masks import class_colours

__all__ = ["TOOLS", "AnnotationView"]

TOOLS = ("brush", "eraser", "polygon", "fill", "box", "superpixel",
         "scribble", "pan", "prompt")

#: (x0, y0, x1, y1) in image pixels, x1 and y1 exclusive
Rect = Tuple[int, int, int, int]

_MASK, _SCRIBBLES = "mask", "scribbles"


def _colour_table(colours: np.ndarray, background: bool) -> np.ndarray:
    """Premultiplied ARGB32 for each label value 0…255: value k gets colour
    k; values beyond the palette cycle through its colours but the first;
    value 0 is transparent unless `background`."""
    n = len(colours)
    index = np.arange(256)
    index = np.where(index < n, index, (index - 1) % max(n - 1, 1) + 1)
    rgb = colours[np.minimum(index, n - 1)].astype(np.uint32)
    table = np.uint32(0xFF000000) | rgb[:, 0] << 16 | rgb[:, 1] << 8 \
        | rgb[:, 2]
    if not background:
        table[0] = 0
    return table.astype(np.uint32)


def _argb(image: np.ndarray) -> np.ndarray:
    """Opaque ARGB32 pixels (native 0xAARRGGBB) of an RGB, RGBA or grey
    uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) \
            or image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise ValueError(f"the image must be H×W grey or H×W×3 RGB uint8. "
                         f"Received: {image.dtype} {image.shape}")
    if image.ndim == 2 or image.shape[2] == 1:
        bgra = cv2.cvtColor(image.reshape(image.shape[:2]),
                            cv2.COLOR_GRAY2BGRA)
    else:
        bgra = cv2.cvtColor(np.ascontiguousarray(image[..., :3]),
                            cv2.COLOR_RGB2BGRA)
    pixels = bgra.view(np.uint32)[..., 0]   # bytes B, G, R, A
    return pixels if sys.byteorder == "little" else pixels.byteswap()


def _labels(values: Optional[np.ndarray], shape, what: str) -> np.ndarray:
    """A private uint8 copy of a label image of the given shape."""
    if values is None:
        return np.zeros(shape, np.uint8)
    values = np.asarray(values)
    if values.shape != shape:
        raise ValueError(f"the {what} is {values.shape[1::-1]} pixels but "
                         f"the image is {shape[::-1]}")
    return np.array(values, dtype=np.uint8)


def _union(a: Optional[Rect], b: Rect) -> Rect:
    return b if a is None else (min(a[0], b[0]), min(a[1], b[1]),
                                max(a[2], b[2]), max(a[3], b[3]))


def _bounds(changed: np.ndarray) -> Optional[Rect]:
    """The bounding rectangle of a boolean array's True pixels."""
    rows, cols = np.flatnonzero(changed.any(axis=1)), \
        np.flatnonzero(changed.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1,
            int(rows[-1]) + 1) if len(rows) else None


def _cut(array: np.ndarray, rect: Rect) -> np.ndarray:
    x0, y0, x1, y1 = rect
    return array[y0:y1, x0:x1]


class _Layer(QGraphicsItem):
    """ARGB32 pixels at scene (0, 0), a scene unit a pixel; the QImage
    shares the numpy array's memory, so a changed rectangle is repainted
    without converting the rest."""

    def __init__(self, z: float, smooth: bool = False):
        super().__init__()
        self.setZValue(z)
        self.setFlag(
            QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)
        self.smooth = smooth
        self.set_pixels(np.zeros((0, 0), np.uint32))

    def boundingRect(self) -> QRectF:
        height, width = self._pixels.shape
        return QRectF(0, 0, width, height)

    def set_pixels(self, pixels: np.ndarray):
        self.prepareGeometryChange()
        self._pixels = np.ascontiguousarray(pixels, np.uint32)
        height, width = self._pixels.shape
        self._image = QImage(self._pixels.data, width, height, 4 * width,
                             QImage.Format.Format_ARGB32_Premultiplied) \
            if self._pixels.size else QImage()
        self.update()

    def paint(self, painter, option, widget=None):
        rect = option.exposedRect.toAlignedRect().intersected(
            self._image.rect())
        if not rect.isEmpty():
            painter.setRenderHint(
                QPainter.RenderHint.SmoothPixmapTransform,
                self.smooth and painter.transform().m11() < 1)
            painter.drawImage(QRectF(rect), self._image, QRectF(rect))


class _Labels(_Layer):
    """A label image drawn through a colour table (:func:`_colour_table`)."""

    def __init__(self, z: float, opacity: float = 1.0):
        super().__init__(z)
        self.setOpacity(opacity)
        self.labels = np.zeros((0, 0), np.uint8)
        self.table = np.zeros(256, np.uint32)

    def set_labels(self, labels: Optional[np.ndarray] = None,
                   table: Optional[np.ndarray] = None):
        self.labels = self.labels if labels is None else labels
        self.table = self.table if table is None else table
        if self.table[0] == 0 and not self.labels.any():
            # all transparent: zeros that take memory only where drawn
            self.set_pixels(np.zeros(self.labels.shape, np.uint32))
        else:
            self.set_pixels(self.table[self.labels])

    def write(self, rect: Rect, values: Optional[np.ndarray] = None):
        """Put `values` (if given) into `rect`, recolour and repaint it."""
        if values is not None:
            _cut(self.labels, rect)[:] = values
        _cut(self._pixels, rect)[:] = self.table[_cut(self.labels, rect)]
        x0, y0, x1, y1 = rect
        self.update(QRectF(x0, y0, x1 - x0, y1 - y0))


class _Edit(QUndoCommand):
    """One edit of the mask or the scribbles: the changed rectangle before
    and after. It changes the view only while its stack is the view's.
    `drawn`: the layer already shows `after` (a stroke is drawn as it goes),
    so the first redo only announces the change."""

    def __init__(self, view: "AnnotationView", layer: str, rect: Rect,
                 before: np.ndarray, after: np.ndarray, text: str,
                 drawn: bool = False):
        super().__init__(text)
        self.view, self.stack = view, view.undo_stack()
        self.layer, self.rect, self.before, self.after = \
            layer, rect, before, after
        self.drawn = drawn

    def redo(self):
        self.view._put(self.stack, self.layer, self.rect,
                       None if self.drawn else self.after)
        self.drawn = False

    def undo(self):
        self.view._put(self.stack, self.layer, self.rect, self.before)


@dataclass
class _Stroke:
    """A brush stroke in progress: what it paints and, for undo, each
    segment's rectangle as it was before the segment was drawn."""
    layer: str
    value: int
    last: Tuple[int, int]
    saved: List[Tuple[Rect, np.ndarray]] = field(default_factory=list)
    rect: Optional[Rect] = None


def _cosmetic(item, colour, style=Qt.PenStyle.SolidLine):
    pen = QPen(QColor(colour), 0, style)
    pen.setCosmetic(True)
    item.setPen(pen)
    return item


class AnnotationView(QGraphicsView):
    """A canvas that paints class masks and scribbles on an image.

    See the module's documentation for the mouse and keys. Signals:
    maskChanged and scribblesChanged after each completed edit (also undo
    and redo), boxDrawn((x0, y0, x1, y1)) when the box or prompt tool is released
    (image pixels, x1 and y1 exclusive; only boxes of at least 2×2 pixels),
    pointClicked(x, y) for a superpixel click inside the image or a click
    (no box) of the prompt tool, which a model such as Segment Anything
    answers with a mask, and zoomChanged(factor).
    """
    maskChanged = Signal()
    scribblesChanged = Signal()
    boxDrawn = Signal(tuple)
    pointClicked = Signal(int, int)
    zoomChanged = Signal(float)

    PREVIEW_OPACITY = 0.45
    MIN_ZOOM, MAX_ZOOM = 0.01, 64.0
    WHEEL_STEP = 1.25

    def __init__(self, parent=None):
        super().__init__(parent)
        scene = QGraphicsScene(self)
        scene.setItemIndexMethod(QGraphicsScene.ItemIndexMethod.NoIndex)
        self.setScene(scene)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.NoAnchor)
        self.setBackgroundBrush(QColor(96, 96, 96))
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._photo = _Layer(0, smooth=True)
        self._layers = {_MASK: _Labels(1, 0.5), _SCRIBBLES: _Labels(3)}
        self._preview = _Labels(2, self.PREVIEW_OPACITY)
        self._outline = _cosmetic(QGraphicsEllipseItem(), Qt.GlobalColor.white)
        self._path = _cosmetic(QGraphicsPathItem(), Qt.GlobalColor.yellow)
        self._band = _cosmetic(QGraphicsRectItem(), Qt.GlobalColor.yellow,
                               Qt.PenStyle.DashLine)
        for z, item in enumerate((self._outline, self._path, self._band)):
            item.setZValue(4 + z)
            item.hide()
        for item in (self._photo, self._preview, *self._layers.values(),
                     self._outline, self._path, self._band):
            scene.addItem(item)
        self._path.show()
        self._has_preview = False
        self._stack = QUndoStack(self)
        self._tool, self._class, self._brush = "brush", 1, 10
        self._gesture = None   # a _Stroke, ("box", start) or ("pan", pos)
        self._button = Qt.MouseButton.NoButton   # the gesture's
        self._polygon: List[Tuple[int, int]] = []
        self._space = self._fitted = False
        self.set_palette(class_colours(16))
        self._update_cursor()

    # ---- the image and its layers -------------------------------------
    def set_image(self, image: Optional[np.ndarray],
                  mask: Optional[np.ndarray] = None,
                  scribbles: Optional[np.ndarray] = None,
                  undo_stack: Optional[QUndoStack] = None) -> None:
        """Show an image (H×W×3 RGB or H×W grey uint8) with its mask and
        scribbles (H×W uint8; None: zeros); its edits go to `undo_stack`
        (None: a fresh private stack). ``set_image(None)`` clears the view."""
        self._cancel_gestures()
        pixels = np.zeros((0, 0), np.uint32) if image is None \
            else _argb(image)
        shape = pixels.shape
        mask, scribbles = _labels(mask, shape, "mask"), \
            _labels(scribbles, shape, "scribbles")
        if self._stack.parent() is self:   # a private stack: let it go
            self._stack.setParent(None)
        self._stack = undo_stack if undo_stack is not None \
            else QUndoStack(self)
        self._photo.set_pixels(pixels)
        self._layers[_MASK].set_labels(mask)
        self._layers[_SCRIBBLES].set_labels(scribbles)
        self.set_preview(None)
        self.setSceneRect(QRectF(0, 0, shape[1], shape[0]))
        self.fit_in_view()

    @property
    def _mask(self) -> np.ndarray:
        return self._layers[_MASK].labels

    def mask(self) -> np.ndarray:
        """A copy of the mask (H×W uint8 class indices)."""
        return self._mask.copy()

    def scribbles(self) -> np.ndarray:
        """A copy of the scribbles (0: none, k >= 1: class k - 1)."""
        return self._layers[_SCRIBBLES].labels.copy()

    def undo_stack(self) -> QUndoStack:
        return self._stack

    def set_palette(self, colours: Sequence[Tuple[int, int, int]]) -> None:
        """RGB colours by class index; the mask's background (0) is not
        drawn; scribbles of class k are drawn in colour k, background too."""
        colours = np.asarray(colours, np.uint8).reshape(-1, 3)
        if not len(colours):
            raise ValueError("the palette needs at least one colour")
        table = _colour_table(colours, background=False)
        self._layers[_MASK].set_labels(table=table)
        self._preview.set_labels(table=table)
        self._layers[_SCRIBBLES].set_labels(table=np.concatenate(
            [[0], _colour_table(colours, background=True)[:255]]
        ).astype(np.uint32))

    def set_current_class(self, index: int) -> None:
        """The class that brush, polygon, fill and scribbles paint."""
        if not 0 <= index < 255:
            raise ValueError(f"class index must be 0…254. Received: {index}")
        self._class = int(index)

    def set_tool(self, name: str) -> None:
        if name not in TOOLS:
            raise ValueError(f"tool must be one of {', '.join(TOOLS)}. "
                             f"Received: {name!r}")
        self._cancel_gestures()
        self._tool = name
        self._update_cursor()

    def tool(self) -> str:
        return self._tool

    def set_brush_size(self, pixels: int) -> None:
        """The brush's diameter in image pixels."""
        self._brush = max(1, int(pixels))
        self._outline.hide()

    def set_opacity(self, value: float) -> None:
        """The mask overlay's opacity, 0…1."""
        self._layers[_MASK].setOpacity(float(np.clip(value, 0, 1)))

    def apply_mask(self, mask: np.ndarray, text: str = "Edit",
                   region: Optional[np.ndarray] = None) -> None:
        """One undoable edit from outside: the mask takes `mask`'s values
        (with `region`, a boolean H×W array, only in the region). An edit
        that changes nothing is not recorded and emits nothing."""
        new = _labels(mask, self._mask.shape, "mask")
        if region is not None:
            new = np.where(_labels(region, new.shape, "region").astype(bool),
                           new, self._mask)
        rect = _bounds(new != self._mask)
        if rect is not None:
            self._push(_MASK, rect, _cut(new, rect).copy(), text)

    def set_preview(self, mask: Optional[np.ndarray]) -> None:
        """Show a translucent prediction over the mask (not part of it);
        None hides it."""
        self._has_preview = mask is not None
        self._preview.set_labels(
            _labels(mask, self._mask.shape if self._has_preview else (0, 0),
                    "preview"))

    def preview(self) -> Optional[np.ndarray]:
        return self._preview.labels.copy() if self._has_preview else None

    def _push(self, layer: str, rect: Rect, after: np.ndarray, text: str,
              before: Optional[np.ndarray] = None):
        """Record an edit of `rect` and apply it; with `before`, the layer
        holds `after` already (a stroke) and `before` is what it held."""
        drawn = before is not None
        if not drawn:
            before = _cut(self._layers[layer].labels, rect).copy()
        if not np.array_equal(before, after):
            self._stack.push(
                _Edit(self, layer, rect, before, after, text, drawn))

    def _put(self, stack: QUndoStack, layer: str, rect: Rect,
             values: Optional[np.ndarray]):
        """Write an edit's pixels (from undo and redo; None: they are
        there already) and announce the change."""
        if stack is self._stack:
            if values is not None:
                self._layers[layer].write(rect, values)
            (self.maskChanged if layer == _MASK
             else self.scribblesChanged).emit()

    # ---- coordinates and zoom -----------------------------------------
    def map_from_image(self, x: float, y: float) -> QPoint:
        """The viewport pixel that shows the centre of image pixel (x, y)."""
        point = self.viewportTransform().map(QPointF(x + 0.5, y + 0.5))
        return QPoint(int(np.floor(point.x())), int(np.floor(point.y())))

    def map_to_image(self, pos) -> Tuple[int, int]:
        """The image pixel under the centre of a viewport pixel."""
        inverse, _ = self.viewportTransform().inverted()
        point = inverse.map(QPointF(pos) + QPointF(0.5, 0.5))
        return int(np.floor(point.x())), int(np.floor(point.y()))

    def zoom(self) -> float:
        """Viewport pixels per image pixel."""
        return self.transform().m11()

    def set_zoom(self, factor: float) -> None:
        """Zoom around the centre of the viewport."""
        self._zoom_at(factor, QPointF(self.viewport().rect().center()))

    def fit_in_view(self) -> None:
        """Show the whole image (also after resizing, until zoomed)."""
        if self._mask.size:
            self.fitInView(self.sceneRect(),
                           Qt.AspectRatioMode.KeepAspectRatio)
            self._fitted = True
            self.zoomChanged.emit(self.zoom())

    def _zoom_at(self, factor: float, anchor: QPointF):
        factor = float(np.clip(factor, self.MIN_ZOOM, self.MAX_ZOOM))
        self._fitted = False
        if factor == self.zoom():
            return
        inverse, _ = self.viewportTransform().inverted()
        fixed = inverse.map(anchor)
        self.setTransform(QTransform.fromScale(factor, factor))
        self._scroll_by(self.viewportTransform().map(fixed) - anchor)
        self.zoomChanged.emit(factor)

    def _scroll_by(self, delta: QPointF):
        for bar, step in ((self.horizontalScrollBar(), delta.x()),
                          (self.verticalScrollBar(), delta.y())):
            bar.setValue(bar.value() + round(step))

    def resizeEvent(self, event):
        super().resizeEvent(event)
        if self._fitted:
            self.fit_in_view()

    def wheelEvent(self, event):
        steps = event.angleDelta().y() / 120
        if steps:
            self._zoom_at(self.zoom() * self.WHEEL_STEP ** steps,
                          event.position())
        event.accept()

    # ---- mouse --------------------------------------------------------
    def mousePressEvent(self, event):
        event.accept()
        if not self._mask.size or self._gesture is not None:
            return
        button, pos = event.button(), event.position()
        self._button = button
        pixel = self.map_to_image(pos)
        left, right = Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton
        if button == Qt.MouseButton.MiddleButton or button == left and (
                self._tool == "pan" or self._space):
            self._gesture = ("pan", pos)
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
        elif button == left:
            self._use_tool(pixel)
        elif button == right and self._tool == "polygon":
            self._polygon[-1:] = []
            self._show_polygon(pixel)
        elif button == right and self._tool in ("brush", "eraser"):
            self._start_stroke(_MASK, 0, pixel)
        elif button == right and self._tool == "scribble":
            self._start_stroke(_SCRIBBLES, 0, pixel)

    def _use_tool(self, pixel):
        tool = self._tool
        if tool in ("brush", "eraser"):
            self._start_stroke(_MASK, self._class if tool == "brush" else 0,
                               pixel)
        elif tool == "scribble":
            self._start_stroke(_SCRIBBLES, self._class + 1, pixel)
        elif tool == "polygon":
            self._add_vertex(pixel)
        elif tool == "fill":
            self._fill(pixel)
        elif tool in ("box", "prompt"):
            self._gesture = ("box", self._clamp(pixel))
            self._show_band(pixel)
        elif tool == "superpixel" and self._inside(pixel):
            self.pointClicked.emit(*pixel)

    def mouseMoveEvent(self, event):
        event.accept()
        pos = event.position()
        pixel = self.map_to_image(pos)
        self._show_outline(pixel)
        gesture = self._gesture
        if isinstance(gesture, _Stroke):
            if pixel != gesture.last:
                self._segment(pixel)
        elif gesture is None:
            if self._polygon:
                self._show_polygon(pixel)
        elif gesture[0] == "pan":
            self._scroll_by(gesture[1] - pos)
            self._gesture = ("pan", pos)
        elif gesture[0] == "box":
            self._show_band(pixel)

    def mouseReleaseEvent(self, event):
        event.accept()
        if event.button() != self._button:
            return
        gesture, self._gesture = self._gesture, None
        if isinstance(gesture, _Stroke):
            self._end_stroke(gesture)
        elif gesture is not None and gesture[0] == "box":
            self._band.hide()
            end = self.map_to_image(event.position())
            box = self._box(gesture[1], end)
            if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
                self.boxDrawn.emit(box)
            elif self._tool == "prompt" and self._inside(end):
                self.pointClicked.emit(*end)
        self._update_cursor()

    def mouseDoubleClickEvent(self, event):
        if self._tool == "polygon" and self._mask.size and event.button() \
                == Qt.MouseButton.LeftButton:
            event.accept()
            self._add_vertex(self.map_to_image(event.position()))
            self._close_polygon()
        else:  # the second click of a double click: a click like others
            self.mousePressEvent(event)

    def leaveEvent(self, event):
        self._outline.hide()
        super().leaveEvent(event)

    def focusOutEvent(self, event):
        self._space = False   # its release goes elsewhere
        self._update_cursor()
        super().focusOutEvent(event)

    # ---- keys ---------------------------------------------------------
    def _handled_key(self, event) -> Optional[str]:
        key, modifiers = event.key(), event.modifiers()
        ctrl = Qt.KeyboardModifier.ControlModifier
        shift = Qt.KeyboardModifier.ShiftModifier
        if event.matches(QKeySequence.StandardKey.Redo) \
                or key == Qt.Key.Key_Z and modifiers & ctrl \
                and modifiers & shift:
            return "redo"
        if event.matches(QKeySequence.StandardKey.Undo):
            return "undo"
        if key == Qt.Key.Key_0 and modifiers & ctrl:
            return "fit"
        if self._polygon and key in (Qt.Key.Key_Return, Qt.Key.Key_Enter,
                                     Qt.Key.Key_Escape, Qt.Key.Key_Backspace):
            return "polygon"
        return None

    def event(self, event):
        # Take the keys this view handles before shortcuts of the same keys
        # (the widget's undo action) while the view has the focus.
        if event.type() == QEvent.Type.ShortcutOverride \
                and self._handled_key(event):
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event):
        action = self._handled_key(event)
        if action == "undo" and self._gesture is None:
            self._stack.undo()
        elif action == "redo" and self._gesture is None:
            self._stack.redo()
        elif action == "fit":
            self.fit_in_view()
        elif action == "polygon":
            self._polygon_key(event.key())
        elif event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self._update_cursor()
        else:
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event):
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self._update_cursor()
        super().keyReleaseEvent(event)

    def _polygon_key(self, key):
        if key == Qt.Key.Key_Escape:
            self._polygon.clear()
        elif key == Qt.Key.Key_Backspace:
            self._polygon.pop()
        else:
            self._close_polygon()
        self._show_polygon(None)

    # ---- tools --------------------------------------------------------
    def _inside(self, pixel) -> bool:
        height, width = self._mask.shape
        return 0 <= pixel[0] < width and 0 <= pixel[1] < height

    def _clamp(self, pixel) -> Tuple[int, int]:
        height, width = self._mask.shape
        return (int(np.clip(pixel[0], 0, width - 1)),
                int(np.clip(pixel[1], 0, height - 1)))

    def _box(self, a, b) -> Rect:
        (ax, ay), (bx, by) = a, self._clamp(b)
        return min(ax, bx), min(ay, by), max(ax, bx) + 1, max(ay, by) + 1

    def _around(self, a, b) -> List[Rect]:
        """What a brush segment from a to b may change, inside the image:
        rectangles along it, so a long diagonal one is not its whole
        bounding box."""
        reach = self._brush // 2 + 2
        height, width = self._mask.shape
        pieces = int(np.ceil(max(abs(b[0] - a[0]), abs(b[1] - a[1]))
                             / (8 * reach))) or 1
        ends = np.linspace(a, b, pieces + 1)
        rects = []
        for (ax, ay), (bx, by) in zip(ends, ends[1:]):
            x0, x1 = max(int(min(ax, bx)) - reach, 0), \
                min(int(max(ax, bx)) + reach + 2, width)
            y0, y1 = max(int(min(ay, by)) - reach, 0), \
                min(int(max(ay, by)) + reach + 2, height)
            if x0 < x1 and y0 < y1:
                rects.append((x0, y0, x1, y1))
        return rects

    def _start_stroke(self, layer: str, value: int, pixel):
        self._gesture = _Stroke(layer, value, pixel)
        self._segment(pixel)

    def _segment(self, pixel):
        """Draw a stroke's segment from its last point into the
        full-resolution layer and repaint the rectangles it touched."""
        stroke = self._gesture
        layer = self._layers[stroke.layer]
        rects = self._around(stroke.last, pixel)
        for rect in rects:
            stroke.saved.append((rect, _cut(layer.labels, rect).copy()))
        cv2.line(layer.labels, stroke.last, pixel, stroke.value,
                 thickness=self._brush)
        for rect in rects:
            layer.write(rect)
            stroke.rect = _union(stroke.rect, rect)
        stroke.last = pixel

    def _end_stroke(self, stroke: _Stroke):
        """Record a finished stroke as one edit: its rectangle before is
        the rectangle now with each segment's saved pixels put back, the
        last segment first."""
        if stroke.rect is None:
            return
        x0, y0 = stroke.rect[:2]
        after = _cut(self._layers[stroke.layer].labels, stroke.rect).copy()
        before = after.copy()
        for (sx0, sy0, sx1, sy1), pixels in reversed(stroke.saved):
            before[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = pixels
        text = "Scribble" if stroke.layer == _SCRIBBLES \
            else "Erase" if stroke.value == 0 else "Brush"
        self._push(stroke.layer, stroke.rect, after, text, before)

    def _add_vertex(self, pixel):
        pixel = self._clamp(pixel)
        if not self._polygon or self._polygon[-1] != pixel:
            self._polygon.append(pixel)
        self._show_polygon(pixel)

    def _close_polygon(self):
        points, self._polygon = np.array(self._polygon, np.int32), []
        self._show_polygon(None)
        if len(points) < 3:
            return
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0) + 1
        rect = (int(x0), int(y0), int(x1), int(y1))
        after = _cut(self._mask, rect).copy()
        cv2.fillPoly(after, [points - (x0, y0)], self._class)
        self._push(_MASK, rect, after, "Polygon")

    def _fill(self, pixel):
        """Flood the 4-connected region of the clicked pixel's class."""
        if not self._inside(pixel):
            return
        height, width = self._mask.shape
        region = np.zeros((height + 2, width + 2), np.uint8)
        _, _, _, (x, y, w, h) = cv2.floodFill(
            self._mask, region, pixel, 0, 0, 0,
            4 | cv2.FLOODFILL_MASK_ONLY | 1 << 8)
        rect = (x, y, x + w, y + h)
        after = _cut(self._mask, rect).copy()
        after[region[1 + y:1 + y + h, 1 + x:1 + x + w] == 1] = self._class
        self._push(_MASK, rect, after, "Fill")

    def _cancel_gestures(self):
        if isinstance(self._gesture, _Stroke):
            self._end_stroke(self._gesture)
        self._gesture = None
        self._polygon.clear()
        self._show_polygon(None)
        self._band.hide()

    # ---- feedback -----------------------------------------------------
    def _show_outline(self, pixel):
        if self._tool not in ("brush", "eraser", "scribble") \
                or not self._mask.size:
            self._outline.hide()
            return
        radius = self._brush / 2
        self._outline.setRect(QRectF(pixel[0] + 0.5 - radius,
                                     pixel[1] + 0.5 - radius,
                                     self._brush, self._brush))
        self._outline.show()

    def _show_polygon(self, hover):
        path = QPainterPath()
        points = [QPointF(x + 0.5, y + 0.5) for x, y in self._polygon]
        if points and hover is not None:
            points.append(QPointF(hover[0] + 0.5, hover[1] + 0.5))
        for i, point in enumerate(points):
            path.lineTo(point) if i else path.moveTo(point)
        self._path.setPath(path)

    def _show_band(self, pixel):
        x0, y0, x1, y1 = self._box(self._gesture[1], pixel)
        self._band.setRect(QRectF(x0, y0, x1 - x0, y1 - y0))
        self._band.show()

    def _update_cursor(self):
        shape = Qt.CursorShape.OpenHandCursor \
            if self._tool == "pan" or self._space \
            else Qt.CursorShape.PointingHandCursor \
            if self._tool == "superpixel" else Qt.CursorShape.CrossCursor
        self.viewport().setCursor(shape)
