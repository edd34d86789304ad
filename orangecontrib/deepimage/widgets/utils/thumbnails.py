"""Thumbnails of a table's images, loaded lazily off the GUI thread.

Views ask :class:`ThumbnailLoader` for the rows they show, and only for
those: worker threads decode and shrink the images into numpy arrays (no
Qt objects off the GUI thread); a queued signal brings each array back to
the GUI thread, which makes it a QPixmap, and views repaint a few times a
second at most. Requests that scroll out of view before they start are
cancelled. :class:`RowPaths` resolves image paths only when asked, so a
table of 10,000 images costs nothing until it is shown.
"""
import io
from collections import OrderedDict, abc
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from AnyQt.QtCore import QObject, QRectF, QSize, Qt, QTimer, \
    pyqtSignal as Signal
from AnyQt.QtGui import QImage, QPainter, QPalette, QPixmap
from AnyQt.QtWidgets import QListView, QListWidget

from Orange.data import Table, Variable

from orangecontrib.deepimage.images import (
    ImageSkipped, decode_image, image_path, read_image_bytes)

__all__ = ["THUMBNAIL_SIZE", "make_thumbnail", "RowPaths",
           "ThumbnailLoader", "draw_thumbnail", "fit_size", "captioned_grid"]

THUMBNAIL_SIZE = 96


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
    of a second on the GUI thread; a view needs only those it shows. Rows
    resolve with :func:`~orangecontrib.deepimage.images.image_path`; without
    a column, every row is None.
    """

    def __init__(self, table: Optional[Table] = None,
                 column: Optional[Variable] = None):
        self._column = column
        self._values = table.get_column(column) if column is not None \
            else np.full(0 if table is None else len(table), None)

    def __len__(self):
        return len(self._values)

    def __getitem__(self, row: int) -> Optional[str]:
        value = self._values[row]
        if self._column is None:
            return None
        return image_path(self._column, value)


class ThumbnailLoader(QObject):
    """Load thumbnails in worker threads and keep the recent ones.

    Views call :meth:`request` with the rows they show and :meth:`get` while
    painting; :attr:`updated` tells them (at most every 40 ms) to repaint.
    Several views may share one loader: each view's request replaces only
    its own earlier one.
    """
    updated = Signal()
    _ready = Signal(int, int, object)

    #: What :meth:`get` returns for an image that could not be read.
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
        wanted = self._all_wanted()
        for row in [row for row in self._pending if row not in wanted]:
            if self._pending[row].cancel():
                del self._pending[row]
        for row in rows:
            if row in self._cache or row in self._pending \
                    or not 0 <= row < len(self._paths):
                continue
            self._pending[row] = self._executor.submit(
                self._load, self._generation, row, self._paths[row])

    def _all_wanted(self) -> set:
        wanted = set()
        for client_rows in self._wanted.values():
            wanted.update(client_rows)
        return wanted

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
        wanted = self._all_wanted()
        while len(self._cache) > self.capacity:
            oldest = next(iter(self._cache))
            if oldest in wanted:
                break
            self._cache.popitem(last=False)
        if not self._notify.isActive():
            self._notify.start()

    def shutdown(self):
        """Stop loading; call it when the widget is deleted."""
        self.set_paths([])
        self._executor.shutdown(wait=False, cancel_futures=True)


def fit_size(size: QSize, bounds) -> Tuple[float, float]:
    """(width, height) of `size` scaled to fit `bounds`, keeping aspect."""
    width, height = max(1, size.width()), max(1, size.height())
    scale = min(bounds.width() / width, bounds.height() / height)
    return width * scale, height * scale


def draw_thumbnail(painter: QPainter, rect: QRectF, pixmap, palette,
                   overlay: Optional[QPixmap] = None, opacity: float = 1.0):
    """Draw a thumbnail fitted into `rect`, or a placeholder.

    `pixmap` is what :meth:`ThumbnailLoader.get` gives: None (not loaded:
    an empty cell), :attr:`ThumbnailLoader.FAILED` (a "?") or a QPixmap.
    An `overlay` (a heatmap, a mask) is drawn over the same area with
    `opacity`.
    """
    if pixmap is None or pixmap is ThumbnailLoader.FAILED:
        painter.fillRect(rect, palette.color(QPalette.ColorRole.Midlight))
        if pixmap is not None:
            painter.setPen(palette.color(QPalette.ColorRole.Mid))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "?")
    else:
        painter.drawPixmap(_fitted(pixmap, rect), pixmap,
                           QRectF(pixmap.rect()))
    if overlay is not None and not overlay.isNull():
        painter.save()
        painter.setOpacity(opacity)
        painter.drawPixmap(_fitted(overlay, rect), overlay,
                           QRectF(overlay.rect()))
        painter.restore()


def _fitted(pixmap: QPixmap, rect: QRectF) -> QRectF:
    """The part of `rect` that `pixmap` fills when fitted, centred."""
    width, height = fit_size(pixmap.size(), rect.size())
    return QRectF(rect.center().x() - width / 2,
                  rect.center().y() - height / 2, width, height)


def captioned_grid(icon_size: int, caption_height: int) -> QListWidget:
    """A static grid of icons of `icon_size` with captions below them, for
    a few hundred images at most (Explain Images, Image Anomalies); the
    :class:`~.gallery.ThumbnailGallery` is for many."""
    grid = QListWidget(
        viewMode=QListView.IconMode, resizeMode=QListView.Adjust,
        movement=QListView.Static, wordWrap=True,
        selectionMode=QListWidget.NoSelection, spacing=6)
    grid.setIconSize(QSize(icon_size, icon_size))
    grid.setGridSize(QSize(icon_size + 24, icon_size + caption_height))
    return grid
