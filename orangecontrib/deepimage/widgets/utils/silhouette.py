"""A bar plot of the mean silhouette for each number of clusters tried."""
from typing import Dict, List, Optional, Tuple

from AnyQt.QtCore import QEvent, QPointF, QRectF, QSize, Qt, \
    pyqtSignal as Signal
from AnyQt.QtGui import QFont, QPainter, QPalette
from AnyQt.QtWidgets import QSizePolicy, QToolTip, QWidget

__all__ = ["SilhouettePlot"]


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

