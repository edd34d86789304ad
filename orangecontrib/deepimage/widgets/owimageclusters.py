"""Image Clusters: group embedded images, name the groups, find duplicates.

The computation lives in :mod:`orangecontrib.deepimage.clustering`; this
module wires it to a widget and shows the images.

The gallery is a scroll area that paints only the cells in view, cluster
by cluster under a header, with uniform cells; with 10,000 images it
lays out in microseconds and paints a screenful at a time. Thumbnails load
lazily: only the cells in view (and the next screenful) are asked for, in
worker threads that decode and shrink them into numpy arrays (no Qt objects
off the GUI thread); a queued signal brings each array back to the GUI
thread, which makes it a QPixmap and repaints a few times a second at most.
Requests that scroll out of view before they start are cancelled.
"""
import io
import os
from bisect import bisect_right
from collections import OrderedDict, abc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from math import ceil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from AnyQt.QtCore import (
    QEvent, QObject, QPoint, QPointF, QRect, QRectF, QSize, Qt, QTimer,
    pyqtSignal as Signal)
from AnyQt.QtGui import (
    QColor, QFont, QImage, QKeySequence, QPainter, QPalette, QPen,
    QPixmap, QPolygonF, QStandardItem, QStandardItemModel)
from AnyQt.QtWidgets import (
    QAbstractItemView, QAbstractScrollArea, QListView, QRubberBand,
    QSizePolicy, QTabWidget, QToolTip, QWidget)

from pyqtgraph.functions import create_qpolygonf, ndarray_from_qpolygonf

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.colorpalettes import LimitedDiscretePalette
from Orange.widgets.utils.concurrent import ConcurrentWidgetMixin, TaskState
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.clustering import (
    METHODS, ClusteringCancelled, ClusteringResult, DUPLICATE_THRESHOLD,
    add_cluster_columns, cluster_embeddings, duplicates_table,
    embedding_matrix, imagenet_probabilities, map_embeddings, name_clusters,
    near_duplicates, recorded_model, typical_rows)
from orangecontrib.deepimage.images import (
    ImageSkipped, decode_image, find_image_column, read_image_bytes,
    resolve_path)
from orangecontrib.deepimage.widgets.owdeepembedding import shared_embedder

THUMBNAIL_SIZE = 96
#: Model that names clusters when the data does not say which made it: it
#: ships with the add-on and runs offline.
NAMING_MODEL = "squeezenet"
MIN_IMAGES = 3


# --- thumbnails (worker side: no Qt) -----------------------------------------

def make_thumbnail(path: Optional[str], size: int = THUMBNAIL_SIZE
                   ) -> Optional[np.ndarray]:
    """Return an upright RGB thumbnail that fits `size`×`size`, or None.

    Decoding goes through :func:`~orangecontrib.deepimage.images.decode_image`
    (JPEGs are decoded at a reduced scale), keeping the aspect ratio.
    """
    if not path:
        return None
    try:
        data = read_image_bytes(path).data
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            if header.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
        scale = min(1.0, size / max(width, height, 1))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        return np.ascontiguousarray(decode_image(data, target),
                                    dtype=np.uint8)
    except ImageSkipped:
        return None
    except Exception:  # pylint: disable=broad-except
        # An odd file must not stop the gallery; it shows as unreadable.
        return None


class RowPaths(abc.Sequence):
    """The image path of each row, resolved when asked for.

    Resolving 10,000 paths up front (as
    :func:`~orangecontrib.deepimage.images.image_paths` does) takes a tenth
    of a second on the GUI thread; the gallery needs only those in view.
    """

    def __init__(self, table: Optional[Table] = None, column=None):
        self._column = column
        self._values = table.get_column(column) if column is not None \
            else np.full(0 if table is None else len(table), None)
        self._origin = column.attributes.get("origin", "") \
            if column is not None else ""

    def __len__(self):
        return len(self._values)

    def __getitem__(self, row: int) -> Optional[str]:
        value = self._values[row]
        if self._column is not None and self._column.is_discrete:
            value = None if np.isnan(value) \
                else self._column.values[int(value)]
        if value is None or value == "" or (
                isinstance(value, float) and np.isnan(value)):
            return None
        return resolve_path(str(value), self._origin)


class ThumbnailLoader(QObject):
    """Load thumbnails in worker threads and keep the recent ones.

    Views call :meth:`request` with the rows they show and :meth:`get` while
    painting; :attr:`updated` tells them (at most every 40 ms) to repaint.
    """
    updated = Signal()
    _ready = Signal(int, int, object)

    FAILED = object()

    def __init__(self, parent=None, size: int = THUMBNAIL_SIZE,
                 capacity: int = 1500, workers: int = 2):
        super().__init__(parent)
        self.size = size
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="deepimage-thumbnails")
        self._paths: Sequence[Optional[str]] = []
        self._generation = 0
        self._cache: "OrderedDict[int, object]" = OrderedDict()
        self._pending = {}
        self._wanted: Dict[int, List[int]] = {}
        self._ready.connect(self._on_ready, Qt.ConnectionType.QueuedConnection)
        self._notify = QTimer(self, singleShot=True, interval=40)
        self._notify.timeout.connect(self.updated)

    def set_paths(self, paths: Sequence[Optional[str]]):
        """Forget all thumbnails and show these images from now on."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._cache.clear()
        self._wanted.clear()
        self._generation += 1
        self._paths = paths

    def get(self, row: int):
        """A QPixmap, :attr:`FAILED`, or None while not loaded."""
        pixmap = self._cache.get(row)
        if pixmap is not None:
            self._cache.move_to_end(row)
        return pixmap

    def is_loaded(self, row: int) -> bool:
        return row in self._cache

    def request(self, client: object, rows: Sequence[int]):
        """Load `rows` for `client`, in order; drop its earlier requests."""
        self._wanted[id(client)] = list(rows)
        wanted = set()
        for client_rows in self._wanted.values():
            wanted.update(client_rows)
        for row in [row for row in self._pending if row not in wanted]:
            if self._pending[row].cancel():
                del self._pending[row]
        for row in rows:
            if row in self._cache or row in self._pending \
                    or not 0 <= row < len(self._paths):
                continue
            self._pending[row] = self._executor.submit(
                self._load, self._generation, row, self._paths[row])

    def _load(self, generation: int, row: int, path: Optional[str]):
        array = make_thumbnail(path, self.size)
        try:
            self._ready.emit(generation, row, array)
        except RuntimeError:  # the loader was deleted meanwhile
            pass

    def _on_ready(self, generation: int, row: int, array):
        if generation != self._generation:
            return
        self._pending.pop(row, None)
        if array is None:
            self._cache[row] = self.FAILED
        else:
            height, width = array.shape[:2]
            image = QImage(array.data, width, height, 3 * width,
                           QImage.Format.Format_RGB888)
            self._cache[row] = QPixmap.fromImage(image)  # copies the pixels
        wanted = set()
        for client_rows in self._wanted.values():
            wanted.update(client_rows)
        while len(self._cache) > self.capacity:
            oldest = next(iter(self._cache))
            if oldest in wanted:
                break
            self._cache.popitem(last=False)
        if not self._notify.isActive():
            self._notify.start()

    def shutdown(self):
        self.set_paths([])
        self._executor.shutdown(wait=False, cancel_futures=True)


def _polygon(points: np.ndarray) -> QPolygonF:
    """A QPolygonF filled from an (n, 2) array without a Python loop."""
    polygon = create_qpolygonf(len(points))
    ndarray_from_qpolygonf(polygon)[:] = points
    return polygon


def _draw_thumbnail(painter: QPainter, rect: QRectF, pixmap, palette):
    """Draw a thumbnail fitted into `rect`, or a placeholder."""
    if pixmap is None:
        painter.fillRect(rect, palette.color(QPalette.ColorRole.Midlight))
    elif pixmap is ThumbnailLoader.FAILED:
        painter.fillRect(rect, palette.color(QPalette.ColorRole.Midlight))
        painter.setPen(palette.color(QPalette.ColorRole.Mid))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "?")
    else:
        size = _fit_size(pixmap.size(), rect.size())
        target = QRectF(rect.center().x() - size[0] / 2,
                        rect.center().y() - size[1] / 2, size[0], size[1])
        painter.drawPixmap(target, pixmap, QRectF(pixmap.rect()))


def _fit_size(size: QSize, bounds) -> Tuple[float, float]:
    """(width, height) of `size` scaled to fit `bounds`, keeping aspect."""
    width, height = max(1, size.width()), max(1, size.height())
    scale = min(bounds.width() / width, bounds.height() / height)
    return width * scale, height * scale


# --- the gallery -------------------------------------------------------------

@dataclass
class Group:
    """A cluster as the gallery shows it."""
    title: str
    color: QColor
    rows: np.ndarray


class ClusterGallery(QAbstractScrollArea):
    """Thumbnails grouped under cluster headers; paints only what is seen.

    Signals
    -------
    selectionRequested(rows, mode)
        The user clicked: `mode` is ``"replace"``, ``"toggle"`` or
        ``"add"``; `rows` are data rows.
    """
    selectionRequested = Signal(object, str)

    CELL = THUMBNAIL_SIZE + 12
    HEADER = 30
    MARGIN = 8
    GAP = 10

    def __init__(self, loader: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.groups: List[Group] = []
        self.selected = np.zeros(0, dtype=bool)
        self.tooltip = None  # callable(row) -> str
        self._columns = 1
        self._tops: List[int] = []
        self._height = 0
        self._anchor: Optional[Tuple[int, int]] = None
        self.verticalScrollBar().valueChanged.connect(self._request_visible)
        self.setHorizontalScrollBarPolicy(
            Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.viewport().setMouseTracking(False)
        loader.updated.connect(self.viewport().update)

    def sizeHint(self):
        return QSize(6 * self.CELL + 2 * self.MARGIN + 20, 5 * self.CELL)

    def set_groups(self, groups: List[Group]):
        keep_position = bool(self.groups) and \
            [len(g.rows) for g in groups] == [len(g.rows) for g in self.groups]
        self.groups = groups
        self._layout()
        if not keep_position:
            self.verticalScrollBar().setValue(0)
        self._request_visible()
        self.viewport().update()

    def set_selection(self, selected: np.ndarray):
        self.selected = selected
        self.viewport().update()

    # --- geometry

    def _layout(self):
        width = self.viewport().width()
        self._columns = max(1, (width - 2 * self.MARGIN) // self.CELL)
        y = self.MARGIN
        self._tops = []
        for group in self.groups:
            self._tops.append(y)
            y += self.HEADER + ceil(len(group.rows) / self._columns) \
                * self.CELL + self.GAP
        self._height = y
        bar = self.verticalScrollBar()
        bar.setRange(0, max(0, y - self.viewport().height()))
        bar.setPageStep(self.viewport().height())
        bar.setSingleStep(self.CELL // 3)

    def _cell_rect(self, group: int, position: int) -> QRect:
        row, column = divmod(position, self._columns)
        return QRect(self.MARGIN + column * self.CELL,
                     self._tops[group] + self.HEADER + row * self.CELL,
                     self.CELL, self.CELL)

    def _header_rect(self, group: int) -> QRect:
        return QRect(self.MARGIN, self._tops[group],
                     self.viewport().width() - 2 * self.MARGIN, self.HEADER)

    def _visible(self, top: int, bottom: int):
        """(group, first position, end position) of cells between y's."""
        spans = []
        first = max(0, bisect_right(self._tops, top) - 1)
        for group in range(first, len(self.groups)):
            group_top = self._tops[group]
            if group_top > bottom:
                break
            cells_top = group_top + self.HEADER
            n = len(self.groups[group].rows)
            first_row = max(0, (top - cells_top) // self.CELL)
            last_row = max(-1, (bottom - cells_top) // self.CELL)
            start = min(n, first_row * self._columns)
            end = min(n, (last_row + 1) * self._columns)
            spans.append((group, start, end))
        return spans

    def visible_rows(self, extra_pages: float = 0) -> List[int]:
        """Data rows of the cells in view (and `extra_pages` below)."""
        top = self.verticalScrollBar().value()
        height = self.viewport().height()
        rows = []
        for group, start, end in self._visible(
                top, top + int(height * (1 + extra_pages))):
            rows.extend(self.groups[group].rows[start:end].tolist())
        return rows

    def item_at(self, pos: QPoint):
        """("header", group), ("image", group, position) or None."""
        y = pos.y() + self.verticalScrollBar().value()
        group = bisect_right(self._tops, y) - 1
        if group < 0:
            return None
        if self._header_rect(group).contains(QPoint(pos.x(), y)):
            return ("header", group)
        x = pos.x() - self.MARGIN
        cells_top = self._tops[group] + self.HEADER
        if x < 0 or x >= self._columns * self.CELL or y < cells_top:
            return None
        position = (y - cells_top) // self.CELL * self._columns \
            + x // self.CELL
        if position >= len(self.groups[group].rows):
            return None
        return ("image", group, position)

    # --- events

    def _request_visible(self):
        if self.groups:
            self.loader.request(self, self.visible_rows(extra_pages=1))

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self._layout()
        self._request_visible()

    def scrollContentsBy(self, dx, dy):
        self.viewport().update()

    def paintEvent(self, event):
        painter = QPainter(self.viewport())
        palette = self.palette()
        painter.fillRect(self.viewport().rect(),
                         palette.color(QPalette.ColorRole.Base))
        if not self.groups:
            painter.setPen(palette.color(QPalette.ColorRole.Mid))
            painter.drawText(self.viewport().rect(),
                             Qt.AlignmentFlag.AlignCenter, "No clusters")
            return
        offset = self.verticalScrollBar().value()
        painter.translate(0, -offset)
        clip = event.rect().translated(0, offset)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        bold = QFont(self.font())
        bold.setBold(True)
        highlight = palette.color(QPalette.ColorRole.Highlight)
        fill = QColor(highlight)
        fill.setAlpha(70)
        drawn = set()
        for group, start, end in self._visible(clip.top(), clip.bottom()):
            info = self.groups[group]
            if group not in drawn \
                    and self._header_rect(group).intersects(clip):
                drawn.add(group)
                self._paint_header(painter, group, bold, fill)
            for position in range(start, end):
                rect = self._cell_rect(group, position)
                row = info.rows[position]
                selected = row < len(self.selected) and self.selected[row]
                if selected:
                    painter.fillRect(rect.adjusted(1, 1, -1, -1), fill)
                inner = QRectF(rect.adjusted(6, 6, -6, -6))
                _draw_thumbnail(painter, inner, self.loader.get(row), palette)
                if selected:
                    painter.setPen(QPen(highlight, 2))
                    painter.drawRect(rect.adjusted(2, 2, -2, -2))

    def _paint_header(self, painter, group, bold, fill):
        info = self.groups[group]
        rect = self._header_rect(group)
        rows = info.rows
        if len(rows) and len(self.selected) and self.selected[rows].all():
            painter.fillRect(rect, fill)
        painter.fillRect(QRect(rect.left(), rect.top() + 6, 6,
                               rect.height() - 12), info.color)
        painter.setFont(bold)
        painter.setPen(self.palette().color(QPalette.ColorRole.Text))
        text_rect = rect.adjusted(14, 0, 0, 0)
        text = painter.fontMetrics().elidedText(
            f"{info.title}  ({len(rows)})", Qt.TextElideMode.ElideRight,
            text_rect.width())
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter, text)
        painter.setFont(self.font())

    def mousePressEvent(self, event):
        if event.button() != Qt.MouseButton.LeftButton:
            return super().mousePressEvent(event)
        modifiers = event.modifiers()
        toggle = bool(modifiers & (Qt.KeyboardModifier.ControlModifier
                                   | Qt.KeyboardModifier.MetaModifier))
        extend = bool(modifiers & Qt.KeyboardModifier.ShiftModifier)
        item = self.item_at(event.position().toPoint())
        if item is None:
            if not toggle and not extend:
                self.selectionRequested.emit([], "replace")
            return None
        if item[0] == "header":
            rows = self.groups[item[1]].rows.tolist()
            self.selectionRequested.emit(rows, "toggle" if toggle
                                         else "replace")
            return None
        _, group, position = item
        if extend and self._anchor is not None:
            self.selectionRequested.emit(self._range(self._anchor,
                                                     (group, position)), "add")
            return None
        self._anchor = (group, position)
        self.selectionRequested.emit([int(self.groups[group].rows[position])],
                                     "toggle" if toggle else "replace")
        return None

    def _range(self, first, last) -> List[int]:
        order = [(g, p) for g, p in sorted([first, last])]
        (g1, p1), (g2, p2) = order
        rows = []
        for group in range(g1, g2 + 1):
            start = p1 if group == g1 else 0
            end = p2 + 1 if group == g2 else len(self.groups[group].rows)
            rows.extend(self.groups[group].rows[start:end].tolist())
        return rows

    def keyPressEvent(self, event):
        if event.matches(QKeySequence.StandardKey.SelectAll):
            rows = [row for group in self.groups for row in group.rows]
            self.selectionRequested.emit(rows, "replace")
            return
        super().keyPressEvent(event)

    def viewportEvent(self, event):
        if event.type() == QEvent.Type.ToolTip and self.tooltip is not None:
            item = self.item_at(event.pos())
            if item is not None and item[0] == "image":
                row = int(self.groups[item[1]].rows[item[2]])
                QToolTip.showText(event.globalPos(), self.tooltip(row),
                                  self.viewport())
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)


# --- the map -----------------------------------------------------------------

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
        first = self.coordinates is None
        self.coordinates = coordinates
        if reset or first:
            self._zoom, self._center = 1.0, None
        self.update()

    def set_clusters(self, labels: np.ndarray, colors: List[QColor]):
        self.labels, self.colors = labels, colors
        self.update()

    def set_selection(self, selected: np.ndarray):
        self.selected = selected
        self.update()

    def set_message(self, text: str):
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
            _draw_thumbnail(painter, rect, pixmap, palette)
            selected = len(self.selected) == len(screen) and \
                self.selected[row]
            color = highlight if selected else (
                self.colors[labels[row]] if labels[row] < len(self.colors)
                else QColor(Qt.GlobalColor.gray))
            painter.setPen(QPen(color, 3 if selected else 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(rect)
        if self.message:
            painter.setPen(palette.color(QPalette.ColorRole.Text))
            painter.drawText(self.rect().adjusted(8, 4, -8, -4),
                             Qt.AlignmentFlag.AlignTop
                             | Qt.AlignmentFlag.AlignRight, self.message)

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


# --- the silhouette plot -----------------------------------------------------

class SilhouettePlot(QWidget):
    """Bars of the mean silhouette for each number of clusters tried.

    Clicking a bar emits :attr:`clusterCountClicked`.
    """
    clusterCountClicked = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.scores: Dict[int, float] = {}
        self.current: Optional[int] = None
        self.best: Optional[int] = None
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Preferred,
                           QSizePolicy.Policy.Fixed)
        self.setToolTip("Mean silhouette for each number of clusters; "
                        "click a bar to use that number.")

    def sizeHint(self):
        return QSize(220, 110)

    def set_scores(self, scores: Dict[int, float], current: Optional[int],
                   best: Optional[int] = None):
        self.scores = dict(sorted(scores.items()))
        self.current = current
        self.best = best
        self.update()

    def _bars(self) -> List[Tuple[int, QRectF, float]]:
        if not self.scores:
            return []
        top, bottom = 16, self.height() - 18
        high = max(0.05, max(self.scores.values()))
        low = min(0.0, min(self.scores.values()))
        scale = (bottom - top) / (high - low)
        zero = top + high * scale
        width = (self.width() - 8) / len(self.scores)
        bars = []
        for i, (k, score) in enumerate(self.scores.items()):
            y0, y1 = sorted((zero, zero - score * scale))
            bars.append((k, QRectF(4 + i * width + 2, y0, width - 4,
                                   max(1.0, y1 - y0)), score))
        return bars

    def paintEvent(self, event):
        painter = QPainter(self)
        palette = self.palette()
        bars = self._bars()
        if not bars:
            painter.setPen(palette.color(QPalette.ColorRole.Mid))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                             "No silhouettes yet")
            return
        highlight = palette.color(QPalette.ColorRole.Highlight)
        plain = palette.color(QPalette.ColorRole.Mid)
        small = QFont(self.font())
        small.setPointSizeF(max(6.0, small.pointSizeF() * 0.85))
        painter.setFont(small)
        for k, rect, score in bars:
            painter.fillRect(rect, highlight if k == self.current else plain)
            painter.setPen(palette.color(QPalette.ColorRole.Text))
            painter.drawText(QRectF(rect.left(), self.height() - 16,
                                    rect.width(), 16),
                             Qt.AlignmentFlag.AlignCenter,
                             f"{k}*" if k == self.best else str(k))
            if k == self.current:
                painter.drawText(QRectF(rect.left() - 10, 0,
                                        rect.width() + 20, 15),
                                 Qt.AlignmentFlag.AlignCenter,
                                 f"{score:.2f}")

    def _count_at(self, pos: QPointF) -> Optional[int]:
        for k, rect, _ in self._bars():
            if rect.left() <= pos.x() <= rect.right():
                return k
        return None

    def mousePressEvent(self, event):
        k = self._count_at(event.position())
        if k is not None:
            self.clusterCountClicked.emit(k)

    def event(self, event):
        if event.type() == QEvent.Type.ToolTip:
            k = self._count_at(QPointF(event.pos()))
            if k is not None:
                QToolTip.showText(
                    event.globalPos(),
                    f"{k} clusters: mean silhouette {self.scores[k]:.3f}"
                    + (" (best)" if k == self.best else ""), self)
                return True
        return super().event(event)


# --- the work ----------------------------------------------------------------

@dataclass
class Pieces:
    """What a run computes; pieces already known are passed in and kept.

    Attributes
    ----------
    auto : ClusteringResult or None
        The automatic choice for the method (its scores feed the plot).
    result : ClusteringResult or None
        The clustering asked for (``auto`` when automatic).
    duplicates : list of (int, int, float) or None
    threshold : float or None
        The threshold `duplicates` were found with.
    probabilities : dict of int -> numpy.ndarray or None
        ImageNet class probabilities of the images that name clusters
        (:func:`~orangecontrib.deepimage.clustering.typical_rows`); None for
        images that could not be read.
    naming_error : str or None
        Why probabilities could not be computed.
    map : numpy.ndarray or None
        t-SNE coordinates.
    """
    auto: Optional[ClusteringResult] = None
    result: Optional[ClusteringResult] = None
    duplicates: Optional[list] = None
    threshold: Optional[float] = None
    probabilities: Dict[int, Optional[np.ndarray]] = field(
        default_factory=dict)
    naming_error: Optional[str] = None
    map: Optional[np.ndarray] = None


def run_clustering(X: np.ndarray, method: str, n_clusters: Optional[int],
                   threshold: float, want_map: bool,
                   names_data: Optional[Table], names_model: Optional[str],
                   known: Pieces, state: TaskState) -> Pieces:
    """Compute what `known` lacks (runs in a worker thread).

    Partial results, as ``(tag, Pieces)``: ``"clusters"`` when the
    clustering is known, ``"ready"`` when everything for the outputs is,
    ``"map"`` with the t-SNE map so far.

    Parameters
    ----------
    X : numpy.ndarray
        Embeddings.
    method : str
    n_clusters : int or None
        None for the automatic choice.
    threshold : float
        Cosine distance for near-duplicates.
    want_map : bool
        Compute the t-SNE map.
    names_data : Orange.data.Table or None
        The images, when clusters are to be named: probabilities of the
        typical images of each cluster that `known` lacks are computed.
    names_model : str or None
        The backbone that gives them.
    known : Pieces
    state : TaskState
    """
    pieces = replace(known)
    stage = [0.0, 1.0]

    def progress(fraction):
        if state.is_interruption_requested():
            raise ClusteringCancelled()
        state.set_progress_value(100 * (stage[0] + stage[1] * fraction))

    def in_stage(start, length, status):
        stage[:] = [start, length]
        state.set_status(status)
        progress(0)

    heavy_names = names_data is not None and (
        pieces.result is None
        or bool(_missing_names(pieces.result, pieces.probabilities)))
    clustering_share = 0.3 if heavy_names else 0.8
    if pieces.auto is None:
        in_stage(0, clustering_share * (0.5 if n_clusters else 1),
                 "Clustering…")
        pieces.auto = cluster_embeddings(X, None, method, callback=progress)
    if n_clusters is None:
        pieces.result = pieces.auto
    elif pieces.result is None:
        in_stage(clustering_share / 2, clustering_share / 2, "Clustering…")
        pieces.result = cluster_embeddings(X, n_clusters, method,
                                           callback=progress)
    state.set_partial_result(("clusters", replace(pieces)))

    if pieces.duplicates is None or pieces.threshold != threshold:
        in_stage(clustering_share, 0.1, "Finding near-duplicates…")
        pieces.duplicates = near_duplicates(X, threshold, callback=progress)
        pieces.threshold = threshold

    missing = _missing_names(pieces.result, pieces.probabilities) \
        if names_data is not None else []
    if missing:
        in_stage(clustering_share + 0.1, 0.9 - clustering_share,
                 "Naming clusters…")
        try:
            embedder = shared_embedder(names_model, None, "penultimate", None)
            matrix = imagenet_probabilities(
                names_data, embedder=embedder, callback=progress,
                rows=missing)
        except ClusteringCancelled:
            raise
        except Exception as error:  # pylint: disable=broad-except
            # Names are a nicety: clusters still go out without them.
            pieces.naming_error = str(error) or type(error).__name__
        else:
            if matrix is None:  # no image column: nothing to name with
                matrix = np.full((len(missing), 1), np.nan)
            pieces.probabilities = dict(pieces.probabilities)
            pieces.probabilities.update(
                (row, None if np.isnan(vector).any() else vector)
                for row, vector in zip(missing, matrix))
    state.set_partial_result(("ready", replace(pieces)))

    if want_map and pieces.map is None:
        in_stage(0, 1, "Computing the map…")

        def map_progress(fraction, coordinates):
            progress(fraction)
            state.set_partial_result(("map", replace(pieces, map=coordinates)))

        pieces.map = map_embeddings(X, callback=map_progress)
    return pieces


def _missing_names(result: ClusteringResult,
                   known: Dict[int, Optional[np.ndarray]]) -> List[int]:
    """Typical rows of `result`'s clusters whose probabilities are unknown."""
    return [int(row) for row in typical_rows(result) if row not in known]


# --- the widget --------------------------------------------------------------

class OWImageClusters(OWWidget, ConcurrentWidgetMixin):
    name = "Image Clusters"
    description = "Group embedded images into clusters named by what they " \
                  "show, see them in a gallery and on a map, and find " \
                  "near-duplicates."
    icon = "icons/ImageClusters.svg"
    priority = 40
    keywords = "image clusters, clustering, k-means, hierarchical, " \
               "silhouette, near duplicates, t-sne, gallery"

    class Inputs:
        embeddings = Input("Embeddings", Table)

    class Outputs:
        data = Output("Data", Table, default=True)
        selected_images = Output("Selected Images", Table)
        duplicates = Output("Duplicates", Table)

    class Error(OWWidget.Error):
        no_embedding = Msg("The data has no embedding: send images through "
                           "Deep Embedding or Image Embedding first.")
        too_few_images = Msg("At least {} images are needed for clusters; "
                             "the data has {}.")
        clustering_failed = Msg("Clustering failed: {}")

    class Warning(OWWidget.Warning):
        no_image_column = Msg("The data has no image column: clusters are "
                              "shown without thumbnails.")
        naming_failed = Msg("Clusters could not be named: {}")

    class Information(OWWidget.Information):
        no_data = Msg("Connect embedded images (from Deep Embedding or "
                      "Image Embedding).")
        duplicates_found = Msg("{} pair(s) of near-duplicate images; see "
                               "the Duplicates output.")

    settings_version = 1
    method: str = Setting("kmeans")
    n_clusters: int = Setting(3)
    auto_clusters: bool = Setting(True)
    label_clusters: bool = Setting(True)
    duplicate_threshold: float = Setting(DUPLICATE_THRESHOLD)
    selection: Optional[List[int]] = Setting(None, schema_only=True)
    auto_commit: bool = Setting(True)

    GALLERY_TAB, MAP_TAB = 0, 1

    def __init__(self):
        OWWidget.__init__(self)
        ConcurrentWidgetMixin.__init__(self)
        if self.method not in METHODS:
            self.method = "kmeans"
        self.data: Optional[Table] = None
        self.X: Optional[np.ndarray] = None
        self.paths: Sequence[Optional[str]] = RowPaths()
        self._pending_selection = self.selection
        self.selected = np.zeros(0, dtype=bool)
        self._filling_list = False
        self._reset_results()

        box = gui.vBox(self.controlArea, "Clustering")
        self.method_combo = gui.comboBox(box, self, None)
        for key, label in METHODS.items():
            self.method_combo.addItem(label, key)
        self.method_combo.setCurrentIndex(list(METHODS).index(self.method))
        self.method_combo.activated.connect(self._on_method_changed)
        row = gui.hBox(box)
        self.clusters_spin = gui.spin(
            row, self, "n_clusters", 2, 50, label="Clusters:",
            callback=self._on_clusters_changed, controlWidth=60)
        self.auto_check = gui.checkBox(
            row, self, "auto_clusters", "Automatic",
            callback=self._on_auto_changed,
            tooltip="Choose the number with the best mean silhouette "
                    "(2 to 10 clusters).")
        self.clusters_spin.setEnabled(not self.auto_clusters)
        self.silhouette_plot = SilhouettePlot()
        self.silhouette_plot.clusterCountClicked.connect(
            self._on_bar_clicked)
        box.layout().addWidget(self.silhouette_plot)
        gui.checkBox(box, self, "label_clusters",
                     "Name clusters by ImageNet labels",
                     callback=self._on_naming_changed,
                     tooltip="Uses the network that made the embedding when "
                             "the data says which, otherwise SqueezeNet.")

        box = gui.vBox(self.controlArea, "Clusters")
        self.cluster_model = QStandardItemModel(self)
        self.cluster_list = QListView(
            selectionMode=QAbstractItemView.SelectionMode.ExtendedSelection,
            editTriggers=QAbstractItemView.EditTrigger.NoEditTriggers,
            uniformItemSizes=True)
        self.cluster_list.setModel(self.cluster_model)
        self.cluster_list.selectionModel().selectionChanged.connect(
            self._on_cluster_list_selection)
        box.layout().addWidget(self.cluster_list)
        self.info_label = gui.widgetLabel(box, "")
        self.info_label.setWordWrap(True)

        box = gui.vBox(self.controlArea, "Near-duplicates")
        gui.doubleSpin(box, self, "duplicate_threshold", 0.0, 0.5, 0.01,
                       label="Cosine distance below:", decimals=3,
                       callback=self._on_threshold_changed,
                       controlWidth=70)

        gui.auto_send(self.buttonsArea, self, "auto_commit")

        self.loader = ThumbnailLoader(self)
        self.tabs = QTabWidget(self)
        self.gallery = ClusterGallery(self.loader)
        self.gallery.tooltip = self._tooltip
        self.gallery.selectionRequested.connect(self._on_selection_requested)
        self.map_view = ImageMap(self.loader)
        self.map_view.selectionRequested.connect(self._on_selection_requested)
        self.tabs.addTab(self.gallery, "Gallery")
        self.tabs.addTab(self.map_view, "Map")
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self.mainArea.layout().addWidget(self.tabs)
        self.Information.no_data()

    def sizeHint(self):
        return QSize(1000, 650)

    # --- state

    def _reset_results(self):
        self._auto: Dict[str, ClusteringResult] = {}
        self._fixed: Dict[Tuple[str, int], ClusteringResult] = {}
        self._duplicates: Optional[list] = None
        self._threshold: Optional[float] = None
        self._probabilities: Dict[int, Optional[np.ndarray]] = {}
        self._naming_error: Optional[str] = None
        self._map: Optional[np.ndarray] = None
        self.result: Optional[ClusteringResult] = None
        self.names: List[str] = []
        self._output: Optional[Table] = None
        self._new_data = False
        self._ready_seen = False

    # --- input

    @Inputs.embeddings
    def set_data(self, data: Optional[Table]):
        self.cancel()
        self.Error.clear()
        self.Warning.clear()
        self.Information.clear()
        self.data = self.X = None
        self._reset_results()
        self._new_data = True
        self._show_clusters()
        self.map_view.set_map(None, reset=True)
        self.map_view.set_message("")
        if data is None:
            self.Information.no_data()
        else:
            try:
                X = embedding_matrix(data)
            except ValueError:
                self.Error.no_embedding()
            else:
                if len(data) < MIN_IMAGES:
                    self.Error.too_few_images(MIN_IMAGES, len(data))
                else:
                    self.data, self.X = data, X
        if self.data is None:
            self.paths = RowPaths()
            self.selected = np.zeros(0, dtype=bool)
            self.selection = None
            self.loader.set_paths([])
            self._update_selection_views()
            self.commit.now()
            return
        column = find_image_column(self.data)
        if column is None:
            self.Warning.no_image_column()
        self.paths = RowPaths(self.data, column)
        self.loader.set_paths(self.paths)
        self.selected = np.zeros(len(self.data), dtype=bool)
        pending, self._pending_selection = self._pending_selection, None
        if pending and max(pending) < len(self.data):
            self.selected[pending] = True
        self.selection = np.flatnonzero(self.selected).tolist() or None
        self._update_selection_views()
        self._run()

    # --- running

    def _naming_job(self) -> Tuple[Optional[Table], Optional[str]]:
        """(table, model) to name clusters with, or (None, None)."""
        if not self.label_clusters or self._naming_error \
                or find_image_column(self.data) is None:
            return None, None
        return self.data, recorded_model(self.data) or NAMING_MODEL

    def _known(self) -> Pieces:
        auto = self._auto.get(self.method)
        result = auto if self.auto_clusters \
            else self._fixed.get((self.method, self.n_clusters))
        return Pieces(auto, result, self._duplicates, self._threshold,
                      self._probabilities, self._naming_error, self._map)

    def _run(self):
        """Show what is known and start a task for what is missing."""
        self.cancel()
        if self.data is None:
            return
        self.Error.clustering_failed.clear()
        known = self._known()
        names_data, names_model = self._naming_job()
        want_map = self.tabs.currentIndex() == self.MAP_TAB
        if known.result is not None:
            self._show(known)
        missing = known.auto is None or known.result is None \
            or known.duplicates is None \
            or known.threshold != self.duplicate_threshold \
            or (names_data is not None
                and bool(_missing_names(known.result, self._probabilities))) \
            or (want_map and known.map is None)
        if not missing:
            self._finish()
            return
        if want_map and known.map is None:
            self.map_view.set_message("Computing the map…")
        self._ready_seen = False
        self.start(run_clustering, self.X, self.method,
                   None if self.auto_clusters else self.n_clusters,
                   self.duplicate_threshold, want_map, names_data,
                   names_model, known)

    def _store(self, pieces: Pieces):
        """Keep the pieces of a run, for these settings and later ones."""
        if pieces.auto is not None:
            self._auto[pieces.auto.method] = pieces.auto
        result = pieces.result
        if result is not None and not self.auto_clusters \
                and result is not pieces.auto:
            self._fixed[(result.method, self.n_clusters)] = result
        if pieces.duplicates is not None:
            self._duplicates = pieces.duplicates
            self._threshold = pieces.threshold
        self._probabilities = pieces.probabilities
        self._naming_error = pieces.naming_error

    def on_partial_result(self, partial):
        tag, pieces = partial
        if tag == "map":
            self.map_view.set_map(pieces.map)
            return
        self._store(pieces)
        self._show(pieces)
        if tag == "ready":
            self._ready_seen = True
            self._finish()

    def on_done(self, pieces: Pieces):
        self._store(pieces)
        if pieces.map is not None:
            self._map = pieces.map
            self.map_view.set_message("")
            self.map_view.set_map(pieces.map)
        self._show(pieces)
        if not self._ready_seen:
            self._finish()

    def on_exception(self, ex: Exception):
        self.map_view.set_message("")
        if isinstance(ex, ClusteringCancelled):
            return
        self.Error.clustering_failed(str(ex) or type(ex).__name__)
        self.result = None
        self.names = []
        self._output = None
        self._show_clusters()
        self.commit.now()

    def _show(self, pieces: Pieces):
        """Show a clustering (and what else is known) in all views."""
        result = pieces.result
        if result is None:
            return
        changed = result is not self.result
        if changed:
            self.result = result
            self._output = None
        if self.auto_clusters and self.n_clusters != result.n_clusters \
                and result.n_clusters >= 2:
            self.n_clusters = result.n_clusters
        auto = pieces.auto or self._auto.get(self.method)
        scores = dict(auto.scores) if auto is not None else {}
        scores.update(result.scores)
        self.silhouette_plot.set_scores(
            scores, result.n_clusters,
            auto.n_clusters if auto is not None else None)
        names = self._cluster_names()
        if names != self.names:
            self.names = names
            self._output = None
            changed = True
        if changed:
            self._show_clusters()

    def _finish(self):
        """Everything for the outputs is known: show messages, commit."""
        self.Warning.naming_failed.clear()
        if self.label_clusters and self._naming_error:
            self.Warning.naming_failed(self._naming_error)
        self.Information.duplicates_found.clear()
        if self._duplicates:
            self.Information.duplicates_found(len(self._duplicates))
        if self._new_data:
            self._new_data = False
            self.commit.now()
        else:
            self.commit.deferred()

    def _cluster_names(self) -> List[str]:
        if self.result is None:
            return []
        labels = self.result.labels
        if not self.label_clusters or not self._probabilities:
            return name_clusters(labels)
        # every cluster has typical rows, so their labels cover all clusters
        rows = typical_rows(self.result)
        return name_clusters(labels[rows],
                             [self._probabilities.get(row) for row in rows])

    def _colors(self) -> List[QColor]:
        k = self.result.n_clusters if self.result is not None else 0
        return list(LimitedDiscretePalette(max(k, 1)).qcolors)[:k]

    def _show_clusters(self):
        """Fill the gallery, the cluster list and the map's colours."""
        result = self.result
        self._filling_list = True
        self.cluster_model.clear()
        self._filling_list = False
        if result is None:
            self.gallery.set_groups([])
            self.map_view.set_clusters(np.zeros(0, dtype=int), [])
            self.silhouette_plot.set_scores({}, None)
            self.info_label.setText("")
            return
        colors = self._colors()
        groups = []
        sizes = result.sizes()
        for cluster, (name, color) in enumerate(zip(self.names, colors)):
            rows = np.flatnonzero(result.labels == cluster)
            rows = rows[np.argsort(-result.silhouette[rows], kind="stable")]
            groups.append(Group(name, color, rows))
            item = QStandardItem(f"{name} ({sizes[cluster]})")
            item.setData(color, Qt.ItemDataRole.DecorationRole)
            item.setToolTip(f"{name}: {sizes[cluster]} images, mean "
                            f"silhouette "
                            f"{result.silhouette[rows].mean():.2f}")
            self.cluster_model.appendRow(item)
        self.gallery.set_groups(groups)
        self.map_view.set_clusters(result.labels, colors)
        self.info_label.setText(
            f"{len(result.labels)} images in {result.n_clusters} clusters; "
            f"mean silhouette {result.silhouette.mean():.2f}.")
        self._update_selection_views()

    # --- controls

    def _on_method_changed(self):
        self.method = self.method_combo.currentData()
        self._run()

    def _on_clusters_changed(self):
        if not self.auto_clusters:
            self._run()

    def _on_auto_changed(self):
        self.clusters_spin.setEnabled(not self.auto_clusters)
        self._run()

    def _on_bar_clicked(self, k: int):
        self.set_clusters(k)

    def set_clusters(self, n_clusters: Optional[int]):
        """Use `n_clusters` clusters, or choose automatically with None."""
        if n_clusters is not None:
            self.n_clusters = int(n_clusters)
        self.auto_clusters = n_clusters is None
        self.clusters_spin.setEnabled(not self.auto_clusters)
        self._run()

    def _on_naming_changed(self):
        self._naming_error = None
        if self.data is None:
            return
        self._run()

    def _on_threshold_changed(self):
        self._run()

    def _on_tab_changed(self, index: int):
        if index == self.MAP_TAB and self.data is not None \
                and self._map is None:
            self._run()
        elif self._map is not None:
            self.map_view.set_map(self._map)

    # --- selection

    def _on_selection_requested(self, rows, mode: str):
        if self.data is None:
            return
        rows = np.asarray(rows, dtype=int)
        if mode == "replace":
            self.selected[:] = False
            self.selected[rows] = True
        elif mode == "add":
            self.selected[rows] = True
        elif len(rows) > 1 and self.selected[rows].all():
            self.selected[rows] = False
        elif len(rows) > 1:
            self.selected[rows] = True
        else:
            self.selected[rows] = ~self.selected[rows]
        self._selection_changed()

    def select_clusters(self, clusters: Sequence[int]):
        """Select all images of these clusters (numbered from 0)."""
        if self.result is None:
            return
        self.selected[:] = np.isin(self.result.labels, list(clusters))
        self._selection_changed()

    def select_rows(self, rows: Sequence[int]):
        """Select these rows of the data."""
        self._on_selection_requested(list(rows), "replace")

    def _selection_changed(self):
        self.selection = np.flatnonzero(self.selected).tolist() or None
        self._update_selection_views()
        self.commit.deferred()

    def _update_selection_views(self):
        self.gallery.set_selection(self.selected)
        self.map_view.set_selection(self.selected)
        model = self.cluster_list.selectionModel()
        model.blockSignals(True)
        model.clearSelection()
        if self.result is not None and len(self.selected):
            for cluster in range(self.cluster_model.rowCount()):
                members = self.result.labels == cluster
                if members.any() and self.selected[members].all():
                    model.select(self.cluster_model.index(cluster, 0),
                                 model.SelectionFlag.Select)
        model.blockSignals(False)
        self.cluster_list.viewport().update()

    def _on_cluster_list_selection(self):
        if self._filling_list:
            return
        clusters = [index.row() for index in
                    self.cluster_list.selectionModel().selectedRows()]
        self.select_clusters(clusters)

    # --- output

    def _tooltip(self, row: int) -> str:
        lines = []
        if row < len(self.paths) and self.paths[row]:
            lines.append(os.path.basename(self.paths[row]))
        if self.result is not None and row < len(self.result.labels):
            label = self.result.labels[row]
            if label < len(self.names):
                lines.append(self.names[label])
            lines.append(f"Silhouette: {self.result.silhouette[row]:.2f}")
        return "<br/>".join(lines)

    @gui.deferred
    def commit(self):
        data = selected = duplicates = None
        if self.data is not None and self.result is not None:
            if self._output is None:
                self._output = add_cluster_columns(self.data, self.result,
                                                   self.names)
            data = self._output
            if len(self.selected) == len(data) and self.selected.any():
                selected = data[self.selected]
            if self._duplicates:
                duplicates = duplicates_table(self.data, self._duplicates)
        self.Outputs.data.send(data)
        self.Outputs.selected_images.send(selected)
        self.Outputs.duplicates.send(duplicates)

    def send_report(self):
        self.report_items((
            ("Method", METHODS[self.method]),
            ("Number of clusters",
             "automatic (best mean silhouette)" if self.auto_clusters
             else str(self.n_clusters)),
            ("Near-duplicates below", f"{self.duplicate_threshold:.3f}"),
        ))
        if self.result is None:
            return
        sizes = self.result.sizes()
        silhouette, labels = self.result.silhouette, self.result.labels
        self.report_items("Clusters", [
            (name, f"{size} images, mean silhouette "
                   f"{silhouette[labels == i].mean():.2f}")
            for i, (name, size) in enumerate(zip(self.names, sizes))])
        self.report_items("Summary", (
            ("Images", len(self.result.labels)),
            ("Mean silhouette", f"{self.result.silhouette.mean():.3f}"),
            ("Near-duplicate pairs", len(self._duplicates or [])),
            ("Selected images", int(self.selected.sum())),
        ))

    def onDeleteWidget(self):
        self.shutdown()
        self.loader.shutdown()
        super().onDeleteWidget()


def _preview_data() -> Table:  # pragma: no cover
    """Three kinds of photo from scikit-image, embedded with SqueezeNet."""
    import tempfile
    from Orange.data import Domain, StringVariable
    from skimage import data as samples
    from orangecontrib.deepimage.embedding import ImageEmbedder

    folder = tempfile.mkdtemp(prefix="deepimage-clusters-")
    rng = np.random.default_rng(0)
    names = []
    for kind, photo in (("cat", samples.chelsea()), ("coffee",
                                                      samples.coffee()),
                        ("rocket", samples.rocket())):
        image = Image.fromarray(photo)
        width, height = image.size
        for i in range(10):
            scale = rng.uniform(0.6, 0.95)
            w, h = int(width * scale), int(height * scale)
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            names.append(f"{kind}{i}.jpg")
            image.crop((left, top, left + w, top + h)).save(
                os.path.join(folder, names[-1]))
    column = StringVariable("image")
    column.attributes.update({"type": "image", "origin": folder})
    table = Table.from_numpy(Domain([], metas=[column]),
                             np.empty((len(names), 0)),
                             metas=np.array(names, dtype=object)[:, None])
    return ImageEmbedder("squeezenet")(table)[0]


if __name__ == "__main__":  # pragma: no cover
    WidgetPreview(OWImageClusters).run(_preview_data())
