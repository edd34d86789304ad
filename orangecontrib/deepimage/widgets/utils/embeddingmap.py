"""Images on a 2-D map (a t-SNE of their embeddings, say).

:class:`ImageMap` draws a dot per image, coloured by its group, and, where
there is room, the thumbnail of the image nearest the centre of each patch
of the screen; thumbnails come from a shared
:class:`~.thumbnails.ThumbnailLoader`. It does not own the selection: it
emits :attr:`~ImageMap.selectionRequested` as
:class:`~.gallery.ThumbnailGallery` does.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

from AnyQt.QtCore import QPoint, QPointF, QRect, QRectF, QSize, Qt, \
    pyqtSignal as Signal
from AnyQt.QtGui import QColor, QPainter, QPalette, QPen, QPolygonF
from AnyQt.QtWidgets import QRubberBand, QSizePolicy, QWidget

from pyqtgraph.functions import create_qpolygonf, ndarray_from_qpolygonf

from Orange.data import DiscreteVariable, Table
# Orange's widgets give variables their colours (var.colors) on import
from Orange.widgets import gui  # pylint: disable=unused-import # noqa: F401

from orangecontrib.deepimage.widgets.utils.thumbnails import (
    ThumbnailLoader, draw_thumbnail)

__all__ = ["ImageMap", "variable_colors", "colour_views"]


def _polygon(points: np.ndarray) -> QPolygonF:
    """A QPolygonF filled from an (n, 2) array without a Python loop."""
    polygon = create_qpolygonf(len(points))
    ndarray_from_qpolygonf(polygon)[:] = points
    return polygon


def variable_colors(data: Table, var: DiscreteVariable
                    ) -> Tuple[np.ndarray, List[QColor]]:
    """Each row's value of `var` as an index into the variable's colours
    (Orange's ``var.colors``), and those colours; an unknown value is
    ``len(colors)``, which the views draw grey."""
    colors = [QColor(*map(int, rgb)) for rgb in var.colors]
    column = data.get_column(var)
    unknown = np.isnan(column)
    labels = np.where(unknown, len(colors), np.nan_to_num(column))
    return labels.astype(int), colors


def colour_views(map_view: "ImageMap", gallery, data: Optional[Table],
                 var: Optional[DiscreteVariable],
                 clusters: Optional[np.ndarray], cluster_colors: List[QColor]):
    """Colour the map's dots and the gallery's cell frames by `var`, or,
    with no `var`, the map by the `clusters` (the gallery's headers show
    those already, so its cells get no frames)."""
    if var is not None and data is not None:
        labels, colors = variable_colors(data, var)
        gallery.set_colors(labels, colors)
        map_view.set_clusters(labels, colors, var.values)
    else:
        gallery.set_colors(None)
        map_view.set_clusters(np.zeros(0, dtype=int) if clusters is None
                              else clusters, cluster_colors)


class ImageMap(QWidget):
    """Images on a 2-D map: a dot per image, thumbnails where there is room.

    Wheel zooms, right (or middle) drag pans, left drag selects a rectangle,
    a click selects an image, double-click shows the whole map.
    """
    selectionRequested = Signal(object, str)

    THUMB = 52
    MARGIN = 40

    def __init__(self, loader: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.coordinates: Optional[np.ndarray] = None
        self.labels = np.zeros(0, dtype=int)
        self.colors: List[QColor] = []
        self.legend: Sequence[str] = ()
        self.selected = np.zeros(0, dtype=bool)
        self.message = ""
        self._zoom = 1.0
        self._center: Optional[np.ndarray] = None
        self._press: Optional[QPoint] = None
        self._pan_from: Optional[Tuple[QPoint, np.ndarray]] = None
        self._rubber = QRubberBand(QRubberBand.Shape.Rectangle, self)
        self._shown: np.ndarray = np.zeros(0, dtype=int)
        self.setSizePolicy(QSizePolicy.Policy.Expanding,
                           QSizePolicy.Policy.Expanding)
        self.setMinimumSize(200, 200)
        loader.updated.connect(self.update)

    def set_map(self, coordinates: Optional[np.ndarray], reset: bool = False):
        """Show images at these ``(n, 2)`` coordinates (None: no map).

        Zoom and pan stay unless `reset`; until the user zooms or pans,
        the map is fitted to the view as it grows.
        """
        first = self.coordinates is None
        self.coordinates = coordinates
        if reset or first:
            self._zoom, self._center = 1.0, None
        self.update()

    def set_clusters(self, labels: np.ndarray, colors: List[QColor],
                     legend: Sequence[str] = ()):
        """Colour each image's dot by its group: ``colors[labels[row]]``
        (grey past the colours); `legend` names the colours in a corner."""
        self.labels, self.colors, self.legend = labels, colors, legend
        self.update()

    def color_of(self, row: int) -> QColor:
        """The colour of the dot of `row`."""
        label = self.labels[row] if row < len(self.labels) else 0
        return self.colors[label] if 0 <= label < len(self.colors) \
            else QColor(Qt.GlobalColor.gray)

    def set_selection(self, selected: np.ndarray):
        """Mark the rows where `selected` (boolean, over data rows) is set."""
        self.selected = selected
        self.update()

    def set_message(self, text: str):
        """Show `text` in a corner (or instead of an empty map)."""
        self.message = text
        self.update()

    # --- geometry

    def _transform(self):
        coords = self.coordinates
        low, high = coords.min(axis=0), coords.max(axis=0)
        span = np.maximum(high - low, 1e-9)
        # until the user pans or zooms, the map is fitted as it grows
        center = (low + high) / 2 if self._center is None else self._center
        usable = np.array([max(1, self.width() - 2 * self.MARGIN),
                           max(1, self.height() - 2 * self.MARGIN)])
        scale = float(min(usable / span)) * self._zoom
        return scale, center

    def _to_screen(self, points: np.ndarray) -> np.ndarray:
        scale, center = self._transform()
        middle = np.array([self.width() / 2, self.height() / 2])
        return (points - center) * scale * np.array([1, -1]) + middle

    def _to_data(self, point: QPointF) -> np.ndarray:
        scale, center = self._transform()
        middle = np.array([self.width() / 2, self.height() / 2])
        return (np.array([point.x(), point.y()]) - middle) \
            / (scale * np.array([1, -1])) + center

    def _representatives(self, screen: np.ndarray) -> np.ndarray:
        """One image per grid cell in view, the one nearest its centre."""
        inside = np.flatnonzero(
            (screen[:, 0] >= -self.THUMB / 2)
            & (screen[:, 0] <= self.width() + self.THUMB / 2)
            & (screen[:, 1] >= -self.THUMB / 2)
            & (screen[:, 1] <= self.height() + self.THUMB / 2))
        if not len(inside):
            return inside
        cell = self.THUMB + 4
        grid = np.floor(screen[inside] / cell)
        centres = (grid + 0.5) * cell
        distance = ((screen[inside] - centres) ** 2).sum(axis=1)
        keys = grid[:, 0] * 100003 + grid[:, 1]
        order = np.lexsort((distance, keys))
        _, first = np.unique(keys[order], return_index=True)
        return inside[order[first]]

    # --- painting

    def paintEvent(self, event):
        painter = QPainter(self)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Base))
        if self.coordinates is None or not len(self.coordinates):
            painter.setPen(palette.color(QPalette.ColorRole.Mid))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                             self.message or "No map")
            return
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        screen = self._to_screen(self.coordinates)
        labels = self.labels if len(self.labels) == len(screen) \
            else np.zeros(len(screen), dtype=int)
        for cluster in np.unique(labels):
            color = self.colors[cluster] if cluster < len(self.colors) \
                else QColor(Qt.GlobalColor.gray)
            pen = QPen(color, 6)
            pen.setCapStyle(Qt.PenCapStyle.RoundCap)
            painter.setPen(pen)
            points = screen[labels == cluster]
            painter.drawPoints(_polygon(points))
        highlight = palette.color(QPalette.ColorRole.Highlight)
        if len(self.selected) == len(screen) and self.selected.any():
            pen = QPen(highlight, 10)
            pen.setCapStyle(Qt.PenCapStyle.RoundCap)
            painter.setPen(pen)
            painter.drawPoints(_polygon(screen[self.selected]))
        shown = self._representatives(screen)
        self._shown = shown
        self.loader.request(self, shown.tolist())
        half = self.THUMB / 2
        for row in shown:
            x, y = screen[row]
            rect = QRectF(x - half, y - half, self.THUMB, self.THUMB)
            pixmap = self.loader.get(int(row))
            if pixmap is None:
                continue
            draw_thumbnail(painter, rect, pixmap, palette)
            selected = len(self.selected) == len(screen) and \
                self.selected[row]
            color = highlight if selected else self.color_of(row)
            painter.setPen(QPen(color, 3 if selected else 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(rect)
        self._paint_legend(painter)
        if self.message:
            painter.setPen(palette.color(QPalette.ColorRole.Text))
            painter.drawText(self.rect().adjusted(8, 4, -8, -4),
                             Qt.AlignmentFlag.AlignTop
                             | Qt.AlignmentFlag.AlignRight, self.message)

    def _paint_legend(self, painter):
        """The names of the colours, bottom left, on the base colour (as
        many as fit in the height)."""
        metrics = painter.fontMetrics()
        line = metrics.height() + 2
        names = list(self.legend)[:max(0, (self.height() - 18) // line)]
        if not names:
            return
        width = max(metrics.horizontalAdvance(name) for name in names)
        box = QRectF(6, self.height() - 6 - line * len(names) - 6,
                     width + 30, line * len(names) + 6)
        base = QColor(self.palette().color(QPalette.ColorRole.Base))
        base.setAlpha(220)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(base)
        painter.drawRect(box)
        for index, name in enumerate(names):
            top = box.top() + 3 + index * line
            color = self.colors[index] if index < len(self.colors) \
                else QColor(Qt.GlobalColor.gray)
            painter.setBrush(color)
            painter.drawEllipse(QRectF(box.left() + 6, top + line / 2 - 5,
                                       10, 10))
            painter.setPen(self.palette().color(QPalette.ColorRole.Text))
            painter.drawText(QRectF(box.left() + 22, top, width + 4, line),
                             Qt.AlignmentFlag.AlignVCenter, name)
            painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(Qt.BrushStyle.NoBrush)

    # --- interaction

    def _row_at(self, pos: QPointF) -> Optional[int]:
        if self.coordinates is None or not len(self._shown):
            return None
        screen = self._to_screen(self.coordinates[self._shown])
        half = self.THUMB / 2
        hit = np.flatnonzero((np.abs(screen[:, 0] - pos.x()) <= half)
                             & (np.abs(screen[:, 1] - pos.y()) <= half))
        return int(self._shown[hit[-1]]) if len(hit) else None

    def wheelEvent(self, event):
        if self.coordinates is None:
            return
        steps = event.angleDelta().y() / 120
        before = self._to_data(event.position())
        self._center = self._transform()[1]
        self._zoom = float(np.clip(self._zoom * 1.25 ** steps, 0.5, 200))
        after = self._to_data(event.position())
        self._center = self._center + (before - after)
        self.update()

    def mousePressEvent(self, event):
        if self.coordinates is None:
            return
        if event.button() in (Qt.MouseButton.RightButton,
                              Qt.MouseButton.MiddleButton):
            self._pan_from = (event.position(),
                              np.array(self._transform()[1]))
        elif event.button() == Qt.MouseButton.LeftButton:
            self._press = event.position().toPoint()
            self._rubber.setGeometry(QRect(self._press, QSize()))

    def mouseMoveEvent(self, event):
        if self._pan_from is not None:
            start, center = self._pan_from
            scale, _ = self._transform()
            delta = event.position() - start
            self._center = center - np.array([delta.x(), -delta.y()]) / scale
            self.update()
        elif self._press is not None:
            self._rubber.setGeometry(
                QRect(self._press, event.position().toPoint()).normalized())
            self._rubber.show()

    def mouseReleaseEvent(self, event):
        toggle = bool(event.modifiers() & (
            Qt.KeyboardModifier.ControlModifier
            | Qt.KeyboardModifier.MetaModifier
            | Qt.KeyboardModifier.ShiftModifier))
        if self._pan_from is not None:
            self._pan_from = None
            return
        if self._press is None:
            return
        rect = QRect(self._press, event.position().toPoint()).normalized()
        self._press = None
        self._rubber.hide()
        if rect.width() > 3 or rect.height() > 3:
            screen = self._to_screen(self.coordinates)
            rows = np.flatnonzero(
                (screen[:, 0] >= rect.left()) & (screen[:, 0] <= rect.right())
                & (screen[:, 1] >= rect.top())
                & (screen[:, 1] <= rect.bottom()))
            self.selectionRequested.emit(rows.tolist(),
                                         "add" if toggle else "replace")
            return
        row = self._row_at(event.position())
        if row is None:
            if not toggle:
                self.selectionRequested.emit([], "replace")
        else:
            self.selectionRequested.emit([row], "toggle" if toggle
                                         else "replace")

    def mouseDoubleClickEvent(self, event):
        self._zoom, self._center = 1.0, None
        self.update()

