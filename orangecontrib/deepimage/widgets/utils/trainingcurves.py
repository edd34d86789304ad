"""Live training curves: one plot per metric, training and validation.

Learner widgets add each epoch's metrics as they arrive (in
``on_partial_result``, on the GUI thread) and, when training ends, the
model's whole history with the best epoch — the one whose weights the model
keeps — marked by a dotted line.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyqtgraph as pg

from AnyQt.QtCore import Qt
from AnyQt.QtGui import QColor, QPen
from AnyQt.QtWidgets import QLabel, QVBoxLayout, QWidget

__all__ = ["TrainingCurves"]

TRAINING_COLOUR = QColor("#1f77b4")
VALIDATION_COLOUR = QColor("#ff7f0e")


class TrainingCurves(QWidget):
    """Plots of per-epoch metrics and a line of text about the best epoch.

    Parameters
    ----------
    metrics : sequence of (str, str, str)
        For each plot: the history key of the training metric (its
        validation metric is ``"val_" + key``), the axis title, and the name
        used in the text, e.g. ``("loss", "Loss", "loss")``.
    monitor : str
        The metric whose minimum is the best epoch (``"val_" + monitor``
        when there is validation).

    Attributes
    ----------
    plots : dict
        Plot widget of each metric key (for reports).
    curves : dict
        Curve of each history key (``"loss"``, ``"val_loss"``, …).
    best_lines : dict
        The best-epoch line of each plot.
    metrics_label : QLabel
        "Epoch 3: training loss 0.412, …" or "Best epoch 2 of 5: …".
    """

    def __init__(self, metrics: Sequence[Tuple[str, str, str]],
                 monitor: str = "loss", parent=None,
                 plot_size: Tuple[int, int] = (320, 180)):
        super().__init__(parent)
        self.metrics = list(metrics)
        self.monitor = monitor
        self.epochs: List[int] = []
        self.history: Dict[str, List[float]] = {}
        self.plots = {}
        self.curves = {}
        self.best_lines = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for key, title, _ in self.metrics:
            plot = pg.PlotWidget(background="w")
            plot.setMinimumSize(*plot_size)
            plot.setLabel("left", title)
            # Scores of 0.4 are not "400 (x0.001)".
            plot.getAxis("left").enableAutoSIPrefix(False)
            plot.setLabel("bottom", "Epoch")
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setMouseEnabled(False, False)
            plot.addLegend(offset=(-10, 10))
            layout.addWidget(plot)
            self.plots[key] = plot
            line = pg.InfiniteLine(angle=90, pen=pg.mkPen(
                "#888888", style=Qt.PenStyle.DotLine))
            line.hide()
            plot.addItem(line)
            self.best_lines[key] = line
            for prefix, legend, colour in (("", "Training", TRAINING_COLOUR),
                                           ("val_", "Validation",
                                            VALIDATION_COLOUR)):
                pen = QPen(colour, 2)
                pen.setCosmetic(True)
                if prefix:
                    pen.setStyle(Qt.PenStyle.DashLine)
                self.curves[prefix + key] = plot.plot(
                    [], [], pen=pen, name=legend, symbol="o", symbolSize=4,
                    symbolBrush=colour, symbolPen=None)
        self.metrics_label = QLabel()
        self.metrics_label.setWordWrap(True)
        layout.addWidget(self.metrics_label)

    def clear(self):
        """Forget all epochs."""
        self.epochs = []
        self.history = {}
        self.update_curves()

    def add_epoch(self, epoch: int, metrics: Dict[str, float]):
        """Add one epoch's metrics (`epoch` counts from 0, as Keras')."""
        self.epochs.append(epoch + 1)
        for key, value in metrics.items():
            if isinstance(value, (int, float, np.floating)):
                self.history.setdefault(key, []).append(float(value))
        self.update_curves()

    def set_history(self, history: Dict[str, Sequence[float]],
                    best: bool = True):
        """Show a whole history (e.g. a trained model's), marking the best
        epoch when `best`."""
        history = {key: list(values) for key, values in history.items()}
        n = max((len(values) for values in history.values()), default=0)
        self.epochs = list(range(1, n + 1))
        self.history = history
        self.update_curves(best)

    def best_epoch(self) -> Optional[int]:
        """The epoch whose weights the model keeps (1-based), if known."""
        monitor = self.history.get("val_" + self.monitor) \
            or self.history.get(self.monitor)
        if not monitor or not np.isfinite(monitor).any():
            return None
        return int(np.nanargmin(np.asarray(monitor, float))) + 1

    def update_curves(self, best: bool = False):
        for key, curve in self.curves.items():
            values = self.history.get(key, [])
            curve.setData(self.epochs[:len(values)], values)
        best_epoch = self.best_epoch() if best else None
        for line in self.best_lines.values():
            line.setVisible(best_epoch is not None)
            if best_epoch is not None:
                line.setValue(best_epoch)
        self.metrics_label.setText(self.metrics_text(best_epoch))

    def metrics_text(self, best_epoch: Optional[int] = None) -> str:
        """The metrics of the last (or the best) epoch in words."""
        if not self.epochs:
            return ""
        index = len(self.epochs) - 1 if best_epoch is None \
            else best_epoch - 1
        parts = []
        for prefix, name in (("", "training"), ("val_", "validation")):
            values = [(text, self.value(prefix + key, index))
                      for key, _, text in self.metrics]
            values = [(text, value) for text, value in values
                      if value is not None]
            if values:
                parts.append(f"{name} " + ", ".join(
                    f"{text} {value:.3f}" for text, value in values))
        which = f"Best epoch {best_epoch} of {len(self.epochs)}" \
            if best_epoch is not None else f"Epoch {self.epochs[-1]}"
        return f"{which}: {'; '.join(parts)}"

    def value(self, key: str, index: int) -> Optional[float]:
        values = self.history.get(key, [])
        return values[index] if 0 <= index < len(values) else None

    def report(self, widget):
        """Add the metrics text and the plots to `widget`'s report."""
        if not self.epochs:
            return
        widget.report_items("Training",
                            (("Result", self.metrics_label.text()),))
        for key, title, _ in self.metrics:
            widget.report_plot(title, self.plots[key])
