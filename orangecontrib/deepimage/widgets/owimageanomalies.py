"""Image Anomalies: learn normal images, flag and show what departs.

The model is fitted and the data scored in a worker thread
(:func:`run_anomalies`), which also makes the thumbnails with their
heatmaps; the widget shows them sorted by score, with a histogram of the
scores whose threshold line can be dragged. Changing the threshold only
re-splits the scored rows; it does not score again.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pyqtgraph as pg
from AnyQt.QtCore import Qt
from AnyQt.QtGui import QIcon, QPixmap
from AnyQt.QtWidgets import QListWidgetItem

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.anomaly import (
    METHODS, AnomalyLearner, AnomalyModel, AnomalyResult, scored_table)
from orangecontrib.deepimage.backbones import BACKBONES
from orangecontrib.deepimage.errors import DeepImageError, raise_if_cancelled
from orangecontrib.deepimage.explain import overlay_heatmap
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, load_image)
from orangecontrib.deepimage.widgets.utils.masks import (
    report_image_html, to_qimage)
from orangecontrib.deepimage.widgets.utils.thumbnails import captioned_grid
from orangecontrib.deepimage.widgets.utils.tasks import (
    TaskButtonsMixin, task_progress)

THUMBNAIL_SIZE = 128
#: The gallery shows at most this many of the most anomalous images.
MAX_SHOWN = 200
REPORT_IMAGES = 6
HISTOGRAM_BINS = 30


def anomaly_backbones() -> List[str]:
    """Registry keys of the backbones with feature maps for anomalies."""
    return [key for key, backbone in sorted(BACKBONES.items(),
                                            key=lambda kv: kv[1].order)
            if len(backbone.anomaly_layers) == 2]


@dataclass
class AnomalyRun:
    """What the worker hands to the widget."""
    model: AnomalyModel
    result: AnomalyResult
    #: Row -> thumbnail with its heatmap (RGB uint8), most anomalous first.
    thumbnails: Dict[int, np.ndarray] = field(default_factory=dict)


def heat(anomaly_map: np.ndarray, model: AnomalyModel) -> np.ndarray:
    """0..1 colour scale of a map: 0 at half the threshold, 1 at one and
    a half times it, so that what is above the threshold is bright."""
    threshold = model.threshold
    if not np.isfinite(threshold) or threshold <= 0:
        threshold = float(np.max(anomaly_map)) or 1.0
    return np.clip((anomaly_map - 0.5 * threshold) / threshold, 0, 1)


def run_anomalies(normal: Table, data: Table, params: dict,
                  state: TaskState) -> AnomalyRun:
    """Fit on `normal`, score `data` and make thumbnails (in a worker).

    Parameters
    ----------
    normal : Orange.data.Table
        Normal images, or images with a class (``params["normal_value"]``
        names the normal one).
    data : Orange.data.Table
        Images to score.
    params : dict
        Keyword arguments of :class:`AnomalyLearner`.
    """
    state.set_status("Learning the normal images…")
    learner = AnomalyLearner(**params)
    model = learner(normal, progress_callback=task_progress(state, 0, 60))
    state.set_status("Scoring…")
    result = model.evaluate(data, maps=True, max_side=THUMBNAIL_SIZE,
                            callback=task_progress(state, 60, 90))
    state.set_status("Drawing heatmaps…")
    paths = model.image_paths_of(data)
    order = [int(i) for i in np.argsort(-np.nan_to_num(result.scores,
                                                       nan=-np.inf))
             if result.maps[i] is not None][:MAX_SHOWN]
    thumbnails = {}
    for i, row in enumerate(order):
        raise_if_cancelled(state)
        anomaly_map = result.maps[row]
        try:
            image = load_image(paths[row], anomaly_map.shape[::-1])
        except ImageSkipped:
            continue  # the file changed since it was scored
        thumbnails[row] = np.asarray(
            overlay_heatmap(image, heat(anomaly_map, model), 0.6))
        state.set_progress_value(90 + 10 * (i + 1) / len(order))
    result.maps = None  # the thumbnails are all the widget needs
    return AnomalyRun(model, result, thumbnails)


class OWImageAnomalies(OWWidget, TaskButtonsMixin):
    name = "Image Anomalies"
    description = "Learn from normal images only; score new images and " \
                  "show where they depart from normal (PatchCore, PaDiM)."
    icon = "icons/ImageAnomalies.svg"
    priority = 35
    keywords = "image anomalies, anomaly detection, defects, inspection, " \
               "patchcore, padim, outliers, heatmap"

    class Inputs:
        normal = Input("Normal Images", Table)
        data = Input("Data", Table, default=True)

    class Outputs:
        anomalies = Output("Anomalies", Table)
        normal = Output("Normal", Table)
        scored = Output("Scored Data", Table, default=True)

    class Error(OWWidget.Error):
        no_image_column = Msg("The {} have no image column (a text column "
                              "marked as images, e.g. from Import Images).")
        failed = Msg("{}")

    class Warning(OWWidget.Warning):
        images_skipped = Msg("{} image(s) could not be read; e.g. {}")
        normal_value_missing = Msg("'{}' is not a class value here; the "
                                   "first value is taken as normal.")

    class Information(OWWidget.Information):
        no_normal = Msg("Connect normal images (or images with a class) to "
                        "learn from.")
        first_shown = Msg("Showing the {} most anomalous of {} images.")

    settings_version = 1
    method: str = Setting("patchcore")
    backbone: str = Setting("squeezenet")
    coreset_percent: int = Setting(10)
    normal_value: str = Setting("")
    #: The threshold the user set; None follows the learned one.
    user_threshold: Optional[float] = Setting(None)
    auto_commit: bool = Setting(True)

    want_main_area = True

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        self.normal_data: Optional[Table] = None
        self.data: Optional[Table] = None
        self.run: Optional[AnomalyRun] = None
        self._stored_normal_value = self.normal_value
        if self.method not in METHODS:
            self.method = "patchcore"
        if self.backbone not in anomaly_backbones():
            self.backbone = "squeezenet"

        box = gui.vBox(self.controlArea, "Model")
        self.method_combo = gui.comboBox(
            box, self, None, label="Method:", orientation=Qt.Horizontal)
        for key, (title, description) in METHODS.items():
            self.method_combo.addItem(title, key)
            self.method_combo.setItemData(self.method_combo.count() - 1,
                                          description, Qt.ToolTipRole)
        self.method_combo.setCurrentIndex(
            self.method_combo.findData(self.method))
        self.method_combo.activated.connect(self._on_method_changed)
        self.backbone_combo = gui.comboBox(
            box, self, None, label="Backbone:", orientation=Qt.Horizontal)
        for key in anomaly_backbones():
            backbone = BACKBONES[key]
            self.backbone_combo.addItem(
                f"{backbone.name} ({backbone.availability()})", key)
        self.backbone_combo.setCurrentIndex(
            self.backbone_combo.findData(self.backbone))
        self.backbone_combo.activated.connect(self._on_backbone_changed)
        self.coreset_spin = gui.spin(
            box, self, "coreset_percent", 1, 100, label="Memory bank:",
            suffix=" % of patches", orientation=Qt.Horizontal,
            callback=self._on_model_setting_changed,
            tooltip="PatchCore keeps this share of the normal images' "
                    "patches (a greedy coreset).")
        self.normal_combo = gui.comboBox(
            box, self, None, label="Normal value:", orientation=Qt.Horizontal,
            tooltip="When the normal images have a class: its normal value; "
                    "the other rows only help to set the threshold.")
        self.normal_combo.activated.connect(self._on_normal_value_changed)
        self._fill_normal_values()

        box = gui.vBox(self.controlArea, "Threshold")
        self.threshold_spin = gui.doubleSpin(
            box, self, None, 0, 1e9, 0.1, label="Anomalous above:",
            orientation=Qt.Horizontal, decimals=3,
            callback=self._on_threshold_spin)
        self.threshold_spin.setEnabled(False)
        self.reset_button = gui.button(
            box, self, "Use the learned threshold",
            callback=self.reset_threshold, autoDefault=False)
        self.controlArea.layout().addStretch(1)

        self.add_cancel_button(self.buttonsArea)
        gui.auto_send(self.buttonsArea, self, "auto_commit")

        self.histogram = pg.PlotWidget(background="w")
        self.histogram.setMaximumHeight(160)
        self.histogram.setMenuEnabled(False)
        self.histogram.setMouseEnabled(False, False)
        self.histogram.getPlotItem().setLabel("bottom", "anomaly score")
        self.threshold_line = pg.InfiniteLine(
            angle=90, movable=True, pen=pg.mkPen("#d62728", width=2))
        self.threshold_line.sigPositionChangeFinished.connect(
            self._on_line_moved)
        self.mainArea.layout().addWidget(self.histogram)

        self.grid = captioned_grid(THUMBNAIL_SIZE, 48)
        self.mainArea.layout().addWidget(self.grid)

    # --- inputs ------------------------------------------------------------

    @Inputs.normal
    def set_normal(self, data: Optional[Table]):
        self.normal_data = data
        self._fill_normal_values()

    @Inputs.data
    def set_data(self, data: Optional[Table]):
        self.data = data

    def handleNewSignals(self):
        self.run = None
        self.commit.now()

    def _data_to_score(self) -> Optional[Table]:
        return self.data if self.data is not None else self.normal_data

    # --- controls ----------------------------------------------------------

    def _class_values(self) -> List[str]:
        data = self.normal_data
        if data is None or data.domain.class_var is None \
                or not data.domain.class_var.is_discrete:
            return []
        return list(data.domain.class_var.values)

    def _fill_normal_values(self):
        self.normal_combo.clear()
        values = self._class_values()
        self.Warning.normal_value_missing.clear()
        for value in values:
            self.normal_combo.addItem(value, value)
        self.normal_combo.setEnabled(bool(values))
        if not values:
            self.normal_value = self._stored_normal_value
            return
        wanted = self._stored_normal_value
        if wanted in values:
            self.normal_value = wanted
        else:
            guess = next((v for v in values if v.lower() in
                          ("normal", "good", "ok")), values[0])
            if wanted:
                self.Warning.normal_value_missing(wanted)
            self.normal_value = guess
        self.normal_combo.setCurrentIndex(
            self.normal_combo.findData(self.normal_value))

    def _on_method_changed(self):
        self.method = self.method_combo.currentData()
        self.coreset_spin.setEnabled(self.method == "patchcore")
        self._on_model_setting_changed()

    def _on_backbone_changed(self):
        self.backbone = self.backbone_combo.currentData()
        self._on_model_setting_changed()

    def _on_normal_value_changed(self):
        self.normal_value = self._stored_normal_value = \
            self.normal_combo.currentData()
        self._on_model_setting_changed()

    def _on_model_setting_changed(self):
        self.run = None
        self.user_threshold = None
        self.commit.deferred()

    def set_method(self, key: str):
        """Use method `key` (``"patchcore"`` or ``"padim"``)."""
        index = self.method_combo.findData(key)
        if index < 0:
            raise ValueError(f"Unknown method. Received: method={key!r}")
        self.method_combo.setCurrentIndex(index)
        self._on_method_changed()

    def set_normal_value(self, value: str):
        """Take class value `value` as normal."""
        index = self.normal_combo.findData(value)
        if index < 0:
            raise ValueError(f"Unknown value. Received: value={value!r}")
        self.normal_combo.setCurrentIndex(index)
        self._on_normal_value_changed()

    # --- threshold ---------------------------------------------------------

    @property
    def threshold(self) -> float:
        """The threshold in use: the user's, else the learned one."""
        if self.user_threshold is not None:
            return self.user_threshold
        return self.run.model.threshold if self.run is not None \
            else float("nan")

    def set_threshold(self, value: Optional[float]):
        """Flag images above `value`; None: the learned threshold."""
        self.user_threshold = None if value is None else float(value)
        self._show_threshold()
        self._send_outputs()

    def reset_threshold(self):
        self.set_threshold(None)

    def _on_threshold_spin(self):
        self.set_threshold(self.threshold_spin.value())

    def _on_line_moved(self):
        self.set_threshold(self.threshold_line.value())

    def _show_threshold(self):
        threshold = self.threshold
        has_run = self.run is not None and bool(np.isfinite(threshold))
        self.threshold_spin.setEnabled(has_run)
        self.reset_button.setEnabled(has_run
                                     and self.user_threshold is not None)
        if has_run:
            self.threshold_spin.blockSignals(True)
            self.threshold_spin.setValue(float(threshold))
            self.threshold_spin.blockSignals(False)
            self.threshold_line.blockSignals(True)
            self.threshold_line.setValue(float(threshold))
            self.threshold_line.blockSignals(False)
        self._draw_grid()

    # --- work --------------------------------------------------------------

    def _params(self) -> dict:
        params = dict(backbone=self.backbone, method=self.method,
                      coreset=self.coreset_percent / 100)
        if self._class_values():
            params["normal_value"] = self.normal_value
        return params

    @gui.deferred
    def commit(self):
        self.cancel()
        self.Error.clear()
        self.Warning.images_skipped.clear()
        self.Information.no_normal.clear()
        data = self._data_to_score()
        if self.normal_data is None:
            if self.data is not None:
                self.Information.no_normal()
            self._clear()
            return
        for table, what in ((self.normal_data, "normal images"),
                            (data, "data")):
            if find_image_column(table) is None:
                self.Error.no_image_column(what)
                self._clear()
                return
        if self.run is not None:
            self._send_outputs()
            return
        self.start(run_anomalies, self.normal_data, data, self._params())

    def on_done(self, run: AnomalyRun):
        self.run = run
        skipped = run.result.skipped
        if skipped:
            self.Warning.images_skipped(len(skipped),
                                        next(iter(skipped.values())))
        self._draw_histogram()
        self._show_threshold()
        self._send_outputs()

    def on_user_error(self, ex: DeepImageError):
        self._clear()
        self.Error.failed(str(ex))

    def on_exception(self, ex: Exception):
        self.Outputs.scored.send(None)
        self.Outputs.anomalies.send(None)
        self.Outputs.normal.send(None)
        super().on_exception(ex)

    def on_partial_result(self, result):
        pass

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    def _clear(self):
        self.run = None
        self._draw_histogram()
        self._show_threshold()
        for output in (self.Outputs.scored, self.Outputs.anomalies,
                       self.Outputs.normal):
            output.send(None)

    def _send_outputs(self):
        if self.run is None:
            return
        data = self._data_to_score()
        scored = scored_table(data, self.run.result.scores, self.threshold)
        scored.name = "Scored images"
        flags = scored.get_column(scored.domain.metas[-1])
        anomalies = scored[flags == 1] if (flags == 1).any() else None
        normal = scored[flags == 0] if (flags == 0).any() else None
        self.Outputs.scored.send(scored)
        self.Outputs.anomalies.send(anomalies)
        self.Outputs.normal.send(normal)

    # --- views -------------------------------------------------------------

    def _draw_histogram(self):
        plot = self.histogram.getPlotItem()
        plot.clear()
        if self.run is None:
            return
        scores = self.run.result.scores
        scores = scores[np.isfinite(scores)]
        if not len(scores):
            return
        counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS)
        plot.addItem(pg.BarGraphItem(
            x0=edges[:-1], x1=edges[1:], height=counts,
            brush=pg.mkBrush("#8fb3d9"), pen=pg.mkPen("#4a78a8")))
        plot.addItem(self.threshold_line)

    def _draw_grid(self):
        self.grid.clear()
        self.Information.first_shown.clear()
        if self.run is None:
            return
        scores = self.run.result.scores
        threshold = self.threshold
        for row, pixels in self.run.thumbnails.items():
            flag = "anomalous" if scores[row] > threshold else "normal"
            item = QListWidgetItem(QIcon(QPixmap.fromImage(to_qimage(pixels))),
                                   f"{scores[row]:.3g} ({flag})")
            item.setData(Qt.UserRole, row)
            self.grid.addItem(item)
        n_scored = int(np.isfinite(scores).sum())
        if n_scored > len(self.run.thumbnails):
            self.Information.first_shown(len(self.run.thumbnails), n_scored)

    # --- report ------------------------------------------------------------

    def send_report(self):
        items = [("Method", METHODS[self.method][0]),
                 ("Backbone", BACKBONES[self.backbone].name)]
        if self.method == "patchcore":
            items.append(("Memory bank", f"{self.coreset_percent} % of the "
                                         f"normal patches"))
        if self._class_values():
            items.append(("Normal value", self.normal_value))
        if self.run is not None:
            scores = self.run.result.scores
            n_anomalous = int(np.sum(scores > self.threshold))
            items += [("Threshold", f"{self.threshold:.4g}"
                       + (" (set by hand)" if self.user_threshold is not None
                          else " (learned)")),
                      ("Anomalous", f"{n_anomalous} of "
                                    f"{int(np.isfinite(scores).sum())}")]
        self.report_items(items)
        if self.run is not None and self.run.thumbnails:
            self.report_caption("The most anomalous images, with where")
            self.report_raw(report_image_html(
                list(self.run.thumbnails.values())[:REPORT_IMAGES],
                height=THUMBNAIL_SIZE, alt="most anomalous images"))


if __name__ == "__main__":  # pragma: no cover
    WidgetPreview(OWImageAnomalies).run()
