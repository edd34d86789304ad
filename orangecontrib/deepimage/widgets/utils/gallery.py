"""A gallery of image thumbnails: a grid, optionally in titled groups.

:class:`ThumbnailGallery` is a scroll area that paints only the cells in
view, with uniform cells: with 10,000 images it lays out in microseconds
and paints a screenful at a time. Its thumbnails come from a
:class:`~.thumbnails.ThumbnailLoader`, which it asks only for the cells in
view (and the next screenful). Each cell may have a caption and an overlay
image (a heatmap, a mask) drawn over the thumbnail.

The gallery does not own the selection: a click emits
:attr:`~ThumbnailGallery.selectionRequested`; the widget changes its
selection (e.g. with :func:`apply_selection`) and shows it with
:meth:`~ThumbnailGallery.set_selection`::

    gallery = ThumbnailGallery(loader)
    gallery.set_rows(range(len(data)))        # or set_groups([...])
    gallery.selectionRequested.connect(on_request)

:class:`GroupList` lists the gallery's groups beside it, to select whole
groups.
"""
from bisect import bisect_right
from dataclasses import dataclass
from math import ceil
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from AnyQt.QtCore import QEvent, QPoint, QRect, QRectF, QSize, Qt, \
    pyqtSignal as Signal
from AnyQt.QtGui import (
    QColor, QFont, QKeySequence, QPainter, QPalette, QPen, QPixmap,
    QStandardItem, QStandardItemModel)
from AnyQt.QtWidgets import (
    QAbstractItemView, QAbstractScrollArea, QListView, QToolTip)

from orangecontrib.deepimage.widgets.utils.thumbnails import (
    ThumbnailLoader, draw_thumbnail)

__all__ = ["Group", "ThumbnailGallery", "GroupList", "apply_selection"]


@dataclass
class Group:
    """Images the gallery shows together.

    Attributes
    ----------
    title : str or None
        Shown in a header above the images (with their number); None: no
        header.
    color : QColor or None
        A mark beside the title.
    rows : numpy.ndarray
        Data rows, in the order shown.
    """
    title: Optional[str]
    color: Optional[QColor]
    rows: np.ndarray


def apply_selection(selected: np.ndarray, rows: Iterable[int], mode: str
                    ) -> None:
    """Change `selected` (a boolean array over data rows) in place as the
    gallery's :attr:`~ThumbnailGallery.selectionRequested` asks.

    ``"replace"`` selects just `rows`; ``"add"`` adds them; ``"toggle"``
    flips one row, and deselects several rows if all were selected, else
    selects them all.
    """
    rows = np.asarray(list(rows), dtype=int)
    if mode == "replace":
        selected[:] = False
        selected[rows] = True
    elif mode == "add":
        selected[rows] = True
    elif mode != "toggle":
        raise ValueError(f"Unknown selection mode. Received: mode={mode!r}")
    elif len(rows) > 1:
        selected[rows] = not selected[rows].all()
    else:
        selected[rows] = ~selected[rows]


class ThumbnailGallery(QAbstractScrollArea):
    """Thumbnails in a grid, in groups under headers; paints only what is
    seen.

    Attributes
    ----------
    tooltip : callable or None
        ``tooltip(row) -> str`` for the image under the mouse.
    caption : callable or None
        ``caption(row) -> str``, shown under each thumbnail; set it before
        the groups (it changes the height of the cells).
    placeholder : str
        Shown when there are no images.

    Signals
    -------
    selectionRequested(rows, mode)
        The user clicked: `mode` is ``"replace"``, ``"toggle"`` or
        ``"add"``; `rows` are data rows (see :func:`apply_selection`).
        A click on an image selects it (Ctrl toggles, Shift adds the range
        from the last clicked one), on a header its group; Ctrl+A selects
        all.
    """
    selectionRequested = Signal(object, str)

    HEADER = 30
    MARGIN = 8
    GAP = 10
    PADDING = 6

    def __init__(self, loader: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.groups: List[Group] = []
        self.selected = np.zeros(0, dtype=bool)
        self.tooltip: Optional[Callable[[int], str]] = None
        self.caption: Optional[Callable[[int], str]] = None
        self.placeholder = "No images"
        self.overlays: Dict[int, QPixmap] = {}
        self.overlay_opacity = 1.0
        self.color_labels: Optional[np.ndarray] = None
        self.colors: List[QColor] = []
        self.cell_width = loader.size + 2 * self.PADDING
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

    @property
    def cell_height(self) -> int:
        caption = self.fontMetrics().height() + 2 if self.caption else 0
        return self.cell_width + caption

    def sizeHint(self):
        return QSize(6 * self.cell_width + 2 * self.MARGIN + 20,
                     5 * self.cell_height)

    def set_groups(self, groups: List[Group]):
        """Show these groups; the scroll position stays when only the
        titles or the order of images changed."""
        keep_position = bool(self.groups) and \
            [len(g.rows) for g in groups] == [len(g.rows) for g in self.groups]
        self.groups = groups
        self._anchor = None
        self._layout()
        if not keep_position:
            self.verticalScrollBar().setValue(0)
        self._request_visible()
        self.viewport().update()

    def set_rows(self, rows: Iterable[int]):
        """Show these rows in one grid, without a header."""
        self.set_groups([Group(None, None, np.asarray(list(rows), int))])

    def set_selection(self, selected: np.ndarray):
        """Mark the rows where `selected` (boolean, over data rows) is set."""
        self.selected = selected
        self.viewport().update()

    def set_overlays(self, overlays: Dict[int, QPixmap],
                     opacity: float = 1.0):
        """Draw these images (by data row) over the thumbnails."""
        self.overlays = dict(overlays)
        self.overlay_opacity = opacity
        self.viewport().update()

    def set_colors(self, labels: Optional[np.ndarray],
                   colors: Sequence[QColor] = ()):
        """Frame each thumbnail and colour its caption in
        ``colors[labels[row]]`` (grey past the colours); None: no frames."""
        self.color_labels, self.colors = labels, list(colors)
        self.viewport().update()

    def cell_color(self, row: int) -> Optional[QColor]:
        """The colour of the frame of `row`'s cell (None: no frame)."""
        labels = self.color_labels
        if labels is None or row >= len(labels):
            return None
        label = labels[row]
        return self.colors[label] if 0 <= label < len(self.colors) \
            else QColor(Qt.GlobalColor.gray)

    # --- geometry

    def _header_height(self, group: int) -> int:
        return self.HEADER if self.groups[group].title is not None else 0

    def _layout(self):
        width = self.viewport().width()
        self._columns = max(1, (width - 2 * self.MARGIN) // self.cell_width)
        y = self.MARGIN
        self._tops = []
        for index, group in enumerate(self.groups):
            self._tops.append(y)
            y += self._header_height(index) + self.GAP \
                + ceil(len(group.rows) / self._columns) * self.cell_height
        self._height = y
        bar = self.verticalScrollBar()
        bar.setRange(0, max(0, y - self.viewport().height()))
        bar.setPageStep(self.viewport().height())
        bar.setSingleStep(self.cell_height // 3)

    def _cell_rect(self, group: int, position: int) -> QRect:
        row, column = divmod(position, self._columns)
        return QRect(self.MARGIN + column * self.cell_width,
                     self._tops[group] + self._header_height(group)
                     + row * self.cell_height,
                     self.cell_width, self.cell_height)

    def _header_rect(self, group: int) -> QRect:
        return QRect(self.MARGIN, self._tops[group],
                     self.viewport().width() - 2 * self.MARGIN,
                     self._header_height(group))

    def _visible(self, top: int, bottom: int):
        """(group, first position, end position) of cells between y's."""
        spans = []
        first = max(0, bisect_right(self._tops, top) - 1)
        for group in range(first, len(self.groups)):
            group_top = self._tops[group]
            if group_top > bottom:
                break
            cells_top = group_top + self._header_height(group)
            n = len(self.groups[group].rows)
            first_row = max(0, (top - cells_top) // self.cell_height)
            last_row = max(-1, (bottom - cells_top) // self.cell_height)
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

    def ensure_visible(self, row: int):
        """Scroll so that data row `row`'s cell is in view."""
        for group, info in enumerate(self.groups):
            positions = np.flatnonzero(info.rows == row)
            if len(positions):
                rect = self._cell_rect(group, int(positions[0]))
                bar = self.verticalScrollBar()
                height = self.viewport().height()
                if rect.top() < bar.value():
                    bar.setValue(rect.top())
                elif rect.bottom() > bar.value() + height:
                    bar.setValue(rect.bottom() - height)
                return

    def item_at(self, pos: QPoint):
        """("header", group), ("image", group, position) or None."""
        y = pos.y() + self.verticalScrollBar().value()
        group = bisect_right(self._tops, y) - 1
        if group < 0:
            return None
        if self._header_rect(group).contains(QPoint(pos.x(), y)):
            return ("header", group)
        x = pos.x() - self.MARGIN
        cells_top = self._tops[group] + self._header_height(group)
        if x < 0 or x >= self._columns * self.cell_width or y < cells_top:
            return None
        position = (y - cells_top) // self.cell_height * self._columns \
            + x // self.cell_width
        if position >= len(self.groups[group].rows):
            return None
        return ("image", group, position)

    def row_at(self, pos: QPoint) -> Optional[int]:
        """The data row of the image at `pos` (viewport coordinates)."""
        item = self.item_at(pos)
        if item is None or item[0] != "image":
            return None
        return int(self.groups[item[1]].rows[item[2]])

    # --- painting

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
        if not any(len(group.rows) for group in self.groups):
            painter.setPen(palette.color(QPalette.ColorRole.Mid))
            painter.drawText(self.viewport().rect(),
                             Qt.AlignmentFlag.AlignCenter, self.placeholder)
            return
        offset = self.verticalScrollBar().value()
        painter.translate(0, -offset)
        clip = event.rect().translated(0, offset)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        highlight = palette.color(QPalette.ColorRole.Highlight)
        fill = QColor(highlight)
        fill.setAlpha(70)
        for group, start, end in self._visible(clip.top(), clip.bottom()):
            if self.groups[group].title is not None \
                    and self._header_rect(group).intersects(clip):
                self._paint_header(painter, group, fill)
            for position in range(start, end):
                self._paint_cell(painter, self._cell_rect(group, position),
                                 int(self.groups[group].rows[position]),
                                 fill, highlight)

    def _paint_cell(self, painter, rect: QRect, row: int, fill, highlight):
        palette = self.palette()
        selected = row < len(self.selected) and self.selected[row]
        if selected:
            painter.fillRect(rect.adjusted(1, 1, -1, -1), fill)
        pad = self.PADDING
        inner = QRectF(rect.left() + pad, rect.top() + pad,
                       rect.width() - 2 * pad, self.cell_width - 2 * pad)
        draw_thumbnail(painter, inner, self.loader.get(row), palette,
                       self.overlays.get(row), self.overlay_opacity)
        color = self.cell_color(row)
        if color is not None:
            painter.setPen(QPen(color, 3))
            painter.drawRect(inner.adjusted(-2, -2, 2, 2))
        if self.caption is not None:
            text_rect = QRect(rect.left() + 2, rect.top() + self.cell_width
                              - pad + 1, rect.width() - 4,
                              rect.height() - self.cell_width + pad - 2)
            painter.setPen(color.darker(130) if color is not None
                           else palette.color(QPalette.ColorRole.Text))
            text = painter.fontMetrics().elidedText(
                self.caption(row), Qt.TextElideMode.ElideMiddle,
                text_rect.width())
            painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter
                             | Qt.AlignmentFlag.AlignTop, text)
        if selected:
            painter.setPen(QPen(highlight, 2))
            painter.drawRect(rect.adjusted(2, 2, -2, -2))

    def _paint_header(self, painter, group: int, fill):
        info = self.groups[group]
        rect = self._header_rect(group)
        rows = info.rows
        if len(rows) and len(self.selected) and self.selected[rows].all():
            painter.fillRect(rect, fill)
        if info.color is not None:
            painter.fillRect(QRect(rect.left(), rect.top() + 6, 6,
                                   rect.height() - 12), info.color)
        bold = QFont(self.font())
        bold.setBold(True)
        painter.setFont(bold)
        painter.setPen(self.palette().color(QPalette.ColorRole.Text))
        text_rect = rect.adjusted(14, 0, 0, 0)
        text = painter.fontMetrics().elidedText(
            f"{info.title}  ({len(rows)})", Qt.TextElideMode.ElideRight,
            text_rect.width())
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter, text)
        painter.setFont(self.font())

    # --- interaction

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
        (g1, p1), (g2, p2) = sorted([first, last])
        rows = []
        for group in range(g1, g2 + 1):
            start = p1 if group == g1 else 0
            end = p2 + 1 if group == g2 else len(self.groups[group].rows)
            rows.extend(self.groups[group].rows[start:end].tolist())
        return rows

    def keyPressEvent(self, event):
        if event.matches(QKeySequence.StandardKey.SelectAll):
            rows = [int(row) for group in self.groups for row in group.rows]
            self.selectionRequested.emit(rows, "replace")
            return
        super().keyPressEvent(event)

    def viewportEvent(self, event):
        if event.type() == QEvent.Type.ToolTip and self.tooltip is not None:
            row = self.row_at(event.pos())
            if row is not None:
                QToolTip.showText(event.globalPos(), self.tooltip(row),
                                  self.viewport())
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)


class GroupList(QListView):
    """The titles of a gallery's groups, with their colours and sizes.

    Selecting groups in the list emits :attr:`groupsSelected` with their
    indices; :meth:`set_selection` marks the groups whose images are all
    selected, without emitting it.
    """
    groupsSelected = Signal(list)

    def __init__(self, parent=None):
        super().__init__(
            parent,
            selectionMode=QAbstractItemView.SelectionMode.ExtendedSelection,
            editTriggers=QAbstractItemView.EditTrigger.NoEditTriggers,
            # Long cluster names (several ImageNet labels) wrap instead of
            # being cut at the list's edge; there are few groups.
            wordWrap=True)
        self.groups: List[Group] = []
        self.setModel(QStandardItemModel(self))
        self.selectionModel().selectionChanged.connect(self._on_selection)

    def set_groups(self, groups: List[Group],
                   tooltips: Optional[List[str]] = None):
        """List `groups` (as "title (size)"), with optional tooltips."""
        self.groups = groups
        model = self.model()
        self.selectionModel().blockSignals(True)
        model.clear()
        self.selectionModel().blockSignals(False)
        for index, group in enumerate(groups):
            item = QStandardItem(f"{group.title} ({len(group.rows)})")
            if group.color is not None:
                item.setData(group.color, Qt.ItemDataRole.DecorationRole)
            if tooltips is not None:
                item.setToolTip(tooltips[index])
            model.appendRow(item)

    def set_selection(self, selected: np.ndarray):
        """Select the groups whose rows are all set in `selected`."""
        selection = self.selectionModel()
        selection.blockSignals(True)
        selection.clearSelection()
        if len(selected):
            for index, group in enumerate(self.groups):
                if len(group.rows) and selected[group.rows].all():
                    selection.select(self.model().index(index, 0),
                                     selection.SelectionFlag.Select)
        selection.blockSignals(False)
        self.viewport().update()

    def _on_selection(self):
        self.groupsSelected.emit(
            [index.row() for index in self.selectionModel().selectedRows()])
