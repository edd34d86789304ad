"""Find Objects: faces, people and number plates, with no training.

A pretrained detector from :data:`orangecontrib.deepimage.detection.DETECTORS`
finds objects in every image in a worker thread. The widget keeps every
candidate box, so the score threshold, the overlap and the classes to keep
change the count at once, without detecting again. Its outputs are a row per
object, the count per image (zeros included), and the images with a mask
column (the boxes drawn as class masks) that Edit Images blurs, pixelates,
fills or removes.
"""
import base64
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from AnyQt.QtCore import (
    QBuffer, QIODevice, QPointF, QRectF, QSize, Qt, QTimer, Signal)
from AnyQt.QtGui import QColor, QFont, QPainter, QPen
from AnyQt.QtWidgets import (
    QListWidget, QListWidgetItem, QSizePolicy, QSplitter, QWidget)

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.detection import (
    DETECTORS, Detection, ObjectDetector, detection_tables,
    detections_to_masks, select_detections)
from orangecontrib.deepimage.errors import Cancelled, DeepImageError
from orangecontrib.deepimage.files import check_output_folder
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, image_paths, load_image)
from orangecontrib.deepimage.widgets.utils.masks import to_qimage
from orangecontrib.deepimage.widgets.utils.outputfolder import (
    OutputFolderMixin)
from orangecontrib.deepimage.widgets.utils.tasks import (
    TaskButtonsMixin, task_progress)

MODEL_KEYS = sorted(DETECTORS, key=lambda key: DETECTORS[key].order)
#: The image in the main area is reduced to fit this size.
VIEW_SIZE = 1024
#: Share of the progress bar for detecting when the outputs are made too.
DETECT_SHARE = 0.8
#: Share of the rest for building the tables; masks take what is left.
TABLES_SHARE = 0.1


def default_output_folder() -> str:
    """Masks go to a folder in Orange's data folder, not beside the
    images."""
    from Orange.misc.environ import data_dir
    return os.path.join(data_dir(versioned=False), "deepimage",
                        "object masks")


@dataclass
class Candidates:
    """Every candidate box of every image (before threshold and overlap)."""
    model: str
    results: List[Optional[List[Detection]]]
    skipped: List[Tuple[int, str]]
    sizes: List[Optional[Tuple[int, int]]]


@dataclass
class FoundObjects:
    """The outputs of a run."""
    objects: Optional[Table]
    counts: Optional[Table]
    images: Optional[Table]
    n_masks: int
    folder: str


@dataclass(frozen=True)
class Filter:
    """What is kept of the candidates."""
    classes: Tuple[str, ...]
    min_score: float
    overlap: float

    def apply(self, results: List[Optional[List[Detection]]]
              ) -> List[Optional[List[Detection]]]:
        """Per image, the candidates that pass (None stays None)."""
        return [None if found is None else
                select_detections(found, self.min_score, self.overlap,
                                  self.classes)
                for found in results]


def run_detection(model: str, data: Table, paths: List[Optional[str]],
                  keep: Optional[Filter], folder: str, state: TaskState,
                  preset: str = ""
                  ) -> Tuple[Candidates, Optional["FoundObjects"]]:
    """Detect the candidates in every image and, with `keep`, make the
    outputs too (runs in a worker thread). `preset` is a KerasHub preset
    folder or URL ("" for the download)."""
    state.set_status("Loading the detector…")
    detector = ObjectDetector(model, preset=preset or None)
    detector.load()
    state.set_status("Finding objects…")
    share = 100 * DETECT_SHARE if keep is not None else 100
    results, skipped, sizes = detector.detect_paths(
        paths, progress=task_progress(state, 0, share), candidates=True)
    candidates = Candidates(model, results, skipped, sizes)
    if keep is None:
        return candidates, None
    return candidates, run_outputs(data, keep.apply(results), skipped, sizes,
                                   list(keep.classes), folder, state,
                                   start=share)


def run_outputs(data: Table, selected: List[Optional[List[Detection]]],
                skipped: List[Tuple[int, str]],
                sizes: List[Optional[Tuple[int, int]]],
                class_names: List[str], folder: str, state: TaskState,
                start: float = 0.0) -> FoundObjects:
    """Build the tables and write the masks (runs in a worker thread)."""
    state.set_status("Building tables…")
    objects, counts, _ = detection_tables(data, selected, skipped,
                                          class_names)
    masks_start = start + (100 - start) * TABLES_SHARE
    state.set_progress_value(masks_start)
    state.set_status("Writing masks…")
    images = detections_to_masks(
        data, selected, sizes, class_names, folder,
        progress=task_progress(state, masks_start, 100))
    return FoundObjects(objects, counts, images,
                        0 if images is None else len(images), folder)


_COLOURS = [QColor(237, 70, 47), QColor(70, 190, 250), QColor(255, 200, 0),
            QColor(120, 220, 90), QColor(200, 120, 255)]


class BoxesView(QWidget):
    """An image with its boxes and labels; a click on a box selects it."""
    selection_changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.image = None
        self.scale = 1.0  # view pixels per full-resolution pixel
        self.detections: List[Detection] = []
        self.class_names: List[str] = []
        self.selected: Optional[int] = None
        self.message = "No image"
        self.setMinimumSize(240, 180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding,
                           QSizePolicy.Policy.Expanding)

    def sizeHint(self):
        return QSize(560, 420)

    def set_image(self, image, scale: float, message: str = ""):
        """`image`: a QImage reduced by `scale` from full resolution."""
        self.image, self.scale, self.message = image, scale, message
        self.selected = None
        self.update()

    def set_detections(self, detections: List[Detection],
                       class_names: List[str]):
        self.detections = list(detections)
        self.class_names = list(class_names)
        if self.selected is not None and \
                self.selected >= len(self.detections):
            self.selected = None
        self.update()

    def _target(self) -> QRectF:
        width, height = self.image.width(), self.image.height()
        fit = max(1e-3, min((self.width() - 8) / width,
                            (self.height() - 8) / height))
        return QRectF((self.width() - width * fit) / 2,
                      (self.height() - height * fit) / 2,
                      width * fit, height * fit)

    def box_rect(self, detection: Detection) -> QRectF:
        """Where `detection`'s box is drawn, in widget coordinates."""
        target = self._target()
        factor = target.width() / self.image.width() * self.scale
        x0, y0, x1, y1 = detection.box
        return QRectF(target.left() + x0 * factor, target.top() + y0 * factor,
                      (x1 - x0) * factor, (y1 - y0) * factor)

    def paintEvent(self, _event):
        painter = QPainter(self)
        if self.image is None:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter
                             | Qt.TextFlag.TextWordWrap, self.message)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(self._target(), self.image)
        font = QFont(painter.font())
        font.setBold(True)
        painter.setFont(font)
        for index, det in enumerate(self.detections):
            colour = _COLOURS[self.class_names.index(det.label)
                              % len(_COLOURS)] \
                if det.label in self.class_names else _COLOURS[0]
            rect = self.box_rect(det)
            pen = QPen(colour, 4 if index == self.selected else 2)
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(rect)
            text = f"{det.label} {det.score:.2f}"
            metrics = painter.fontMetrics()
            label = QRectF(rect.left(), rect.top() - metrics.height() - 2,
                           metrics.horizontalAdvance(text) + 6,
                           metrics.height() + 2)
            if label.top() < 0:
                label.moveTop(rect.top())
            painter.fillRect(label, colour)
            painter.setPen(QColor(0, 0, 0))
            painter.drawText(label, Qt.AlignmentFlag.AlignCenter, text)

    def mousePressEvent(self, event):
        if self.image is None:
            return
        point = QPointF(event.position()) if hasattr(event, "position") \
            else QPointF(event.pos())
        hits = [index for index, det in enumerate(self.detections)
                if self.box_rect(det).contains(point)]
        # The smallest box under the pointer: boxes may nest.
        self.selected = min(hits, key=lambda i: self.detections[i].area) \
            if hits else None
        self.update()
        self.selection_changed.emit()


class OWFindObjects(OWWidget, TaskButtonsMixin, OutputFolderMixin):
    name = "Find Objects"
    description = "Find faces, people or number plates in images with a " \
                  "pretrained detector, count them, and mask them for " \
                  "Edit Images. No training."
    icon = "icons/FindObjects.svg"
    priority = 150
    keywords = "find objects, detect, detection, faces, people, persons, " \
               "count people, number plates, licence plates, anonymise, " \
               "blur faces"

    class Inputs:
        data = Input("Data", Table, default=True)

    class Outputs:
        images = Output("Images with Masks", Table, default=True)
        counts = Output("Counts", Table)
        objects = Output("Objects", Table)

    class Error(OWWidget.Error):
        no_image_column = Msg("The data has no image column.")
        user_error = Msg("{}")
        folder = Msg("{}")

    class Warning(OWWidget.Warning):
        skipped = Msg("{} image(s) could not be read, e.g. {}")

    class Information(OWWidget.Information):
        written = Msg("{} mask(s) written to {}")

    settings_version = 1
    model_key: str = Setting(MODEL_KEYS[0])
    hidden_classes: List[str] = Setting([])  # names of unticked classes
    min_score: float = Setting(0.5)
    overlap: float = Setting(0.5)
    # A KerasHub preset folder or URL; "" for the download.
    preset_location: str = Setting("")
    output_folder: str = Setting("")  # "" for default_output_folder()
    auto_apply: bool = Setting(True)

    want_main_area = True

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        if self.model_key not in DETECTORS:
            self.model_key = MODEL_KEYS[0]
        self.data: Optional[Table] = None
        self.paths: List[Optional[str]] = []
        self.candidates: Optional[Candidates] = None
        self.result: Optional[FoundObjects] = None
        self._shown_row: Optional[int] = None
        self._started_with: Optional[Filter] = None

        box = gui.vBox(self.controlArea, "Detector")
        self.model_index = MODEL_KEYS.index(self.model_key)
        self.model_combo = gui.comboBox(
            box, self, "model_index",
            items=[self._model_label(key) for key in MODEL_KEYS],
            callback=self._on_model_changed)
        self.description_label = gui.widgetLabel(box, "")
        self.description_label.setWordWrap(True)
        self.preset_edit = gui.lineEdit(
            box, self, "preset_location", label="Preset folder or URL:",
            callback=self._on_preset_changed,
            placeholderText="empty: download on first use",
            tooltip="A folder saved with KerasHub's save_to_preset, or the "
                    "URL of such a folder on a web server; empty to "
                    "download the weights on first use.")

        box = gui.vBox(self.controlArea, "Classes to keep")
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(90)
        self.class_list.itemChanged.connect(self._on_class_ticked)
        box.layout().addWidget(self.class_list)

        box = gui.vBox(self.controlArea, "Filter")
        gui.doubleSpin(
            box, self, "min_score", 0.0, 1.0, 0.05, label="Minimum score:",
            decimals=2, callback=self._on_filter_changed,
            tooltip="Keep detections whose score is at least this.")
        gui.doubleSpin(
            box, self, "overlap", 0.0, 1.0, 0.05, label="Overlap:",
            decimals=2, callback=self._on_filter_changed,
            tooltip="Of boxes of one class that overlap by more than this "
                    "(intersection over union), only the best is kept.")
        self.count_label = gui.widgetLabel(box, "")
        self.count_label.setWordWrap(True)

        box = gui.vBox(self.controlArea, "Output folder")
        self.add_output_folder_row(
            box, dialog_title="Folder for object masks",
            tooltip="The masks of the boxes are written here as new PNG "
                    "files; nothing is ever overwritten.",
            default_tooltip=" (default: a folder in Orange's data folder)")
        self.folder_label.setMinimumWidth(220)

        gui.rubber(self.controlArea)
        self.add_cancel_button(self.buttonsArea)
        gui.auto_apply(self.buttonsArea, self, "auto_apply",
                       commit=self.commit)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        self.image_list = QListWidget()
        self.image_list.setMinimumWidth(150)
        self.image_list.currentRowChanged.connect(self._on_image_chosen)
        self.view = BoxesView()
        self.view.selection_changed.connect(self._on_box_selected)
        splitter.addWidget(self.image_list)
        splitter.addWidget(self.view)
        splitter.setStretchFactor(1, 1)
        self.mainArea.layout().addWidget(splitter)
        self.selection_label = gui.widgetLabel(self.mainArea, "")

        self._show_model()

    # --- the detector -------------------------------------------------------

    @staticmethod
    def _model_label(key: str) -> str:
        spec = DETECTORS[key]
        return f"{spec.name} ({spec.availability()})"

    @property
    def spec(self):
        return DETECTORS[self.model_key]

    def kept_classes(self) -> List[str]:
        return [name for name in self.spec.classes
                if name not in self.hidden_classes]

    def _show_model(self):
        spec = self.spec
        self.description_label.setText(
            f"{spec.description} Finds: {', '.join(spec.classes)}. "
            f"Licence: {spec.licence}.")
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for name in spec.classes:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked
                               if name in self.hidden_classes
                               else Qt.CheckState.Checked)
            self.class_list.addItem(item)
        self.class_list.blockSignals(False)
        self.preset_edit.setEnabled(spec.kind == "keras-hub")

    def _on_preset_changed(self):
        if self.spec.kind == "keras-hub":
            self._detect()

    def _on_model_changed(self):
        self.model_key = MODEL_KEYS[self.model_index]
        self.hidden_classes = []
        self._show_model()
        self._detect()

    def _on_class_ticked(self, _item):
        self.hidden_classes = [
            self.class_list.item(i).text()
            for i in range(self.class_list.count())
            if self.class_list.item(i).checkState() != Qt.CheckState.Checked]
        self._on_filter_changed()

    def _on_filter_changed(self):
        self._refresh()
        self.result = None
        self.commit.deferred()

    # --- output folder -------------------------------------------------------

    def default_folder(self) -> str:
        return default_output_folder()

    def output_folder_changed(self):
        self.result = None
        self.commit.deferred()

    # --- inputs --------------------------------------------------------------

    @Inputs.data
    def set_data(self, data: Optional[Table]):
        self.data = data
        self.Error.no_image_column.clear()
        self.paths = []
        if data is not None:
            column = find_image_column(data)
            if column is None:
                self.Error.no_image_column()
            else:
                self.paths = image_paths(data, column)
        self.image_list.blockSignals(True)
        self.image_list.clear()
        for path in self.paths:
            self.image_list.addItem(os.path.basename(path or "") or "(none)")
        self.image_list.blockSignals(False)
        self._shown_row = None
        self._detect()

    def _detect(self):
        self.cancel()
        self.candidates = None
        self.result = None
        self.Error.user_error.clear()
        self.Warning.skipped.clear()
        self.Information.written.clear()
        self._refresh()
        if self.data is None or not self.paths:
            self._send(None)
            return
        # With Apply Automatically, the same task makes the outputs (a
        # widget may not start a task from on_done).
        keep = self.current_filter() if self.auto_apply else None
        folder = self._output_folder()
        if folder is None:
            keep = None  # detect; the outputs wait for a usable folder
        self._started_with = keep
        self.start(run_detection, self.model_key, self.data,
                   list(self.paths), keep, folder or "",
                   preset=self.preset_location.strip()
                   if self.spec.kind == "keras-hub" else "")

    # --- the result ----------------------------------------------------------

    def current_filter(self) -> Filter:
        return Filter(tuple(self.kept_classes()), float(self.min_score),
                      float(self.overlap))

    def selected(self) -> List[Optional[List[Detection]]]:
        """Per image, the candidates that pass the filter (None: skipped)."""
        if self.candidates is None:
            return []
        return self.current_filter().apply(self.candidates.results)

    def _refresh(self):
        """The live count, the image list and the boxes shown."""
        selected = self.selected()
        if self.candidates is None:
            self.count_label.setText(
                "Finding objects…" if self.task is not None else "")
        else:
            read = [found for found in selected if found is not None]
            n_objects = sum(len(found) for found in read)
            with_objects = sum(bool(found) for found in read)
            self.count_label.setText(
                f"{n_objects} object(s) in {with_objects} of {len(read)} "
                f"image(s) at score ≥ {self.min_score:.2f}")
        for row in range(self.image_list.count()):
            name = os.path.basename(self.paths[row] or "") or "(none)"
            if selected:
                found = selected[row]
                name += " — unreadable" if found is None \
                    else f" — {len(found)}"
            self.image_list.item(row).setText(name)
        if self.image_list.currentRow() < 0 and self.image_list.count():
            self.image_list.setCurrentRow(0)  # shows it
        else:
            self._show_image(self.image_list.currentRow(), selected)

    def _on_image_chosen(self, row: int):
        self._show_image(row, self.selected())

    def _show_image(self, row: int, selected):
        if row < 0 or row >= len(self.paths):
            self.view.set_image(None, 1.0, "No image")
            self.view.set_detections([], [])
            return
        if row != self._shown_row:
            self._shown_row = row
            try:
                image = load_image(self.paths[row])
            except ImageSkipped as error:
                self.view.set_image(None, 1.0, str(error))
            else:
                width = image.width
                image.thumbnail((VIEW_SIZE, VIEW_SIZE))
                self.view.set_image(to_qimage(np.asarray(image)),
                                    image.width / width)
        found = selected[row] if selected and selected[row] else []
        self.view.set_detections(found, list(self.spec.classes))
        self._on_box_selected()

    def _on_box_selected(self):
        index = self.view.selected
        if index is None:
            self.selection_label.setText(
                "Click a box to see its score and size.")
            return
        det = self.view.detections[index]
        x0, y0, x1, y1 = det.box
        self.selection_label.setText(
            f"{det.label}, score {det.score:.3f}; box ({x0:.0f}, {y0:.0f})–"
            f"({x1:.0f}, {y1:.0f}), {x1 - x0:.0f}×{y1 - y0:.0f} pixels")

    # --- work ----------------------------------------------------------------

    @gui.deferred
    def commit(self):
        self.Information.written.clear()
        if self.candidates is None:
            if self.task is None:  # nothing is being detected
                self._send(None)
            return
        if self.result is not None:
            self._send(self.result)
            return
        folder = self._output_folder()
        if folder is None:
            self._send(None)
            return
        self.start(run_outputs, self.data, self.selected(),
                   self.candidates.skipped, self.candidates.sizes,
                   self.kept_classes(), folder)

    def _output_folder(self) -> Optional[str]:
        """The folder for the masks, or None (and an error) when it cannot
        be used."""
        self.Error.folder.clear()
        folder = self.folder()
        try:
            if not self.output_folder:
                os.makedirs(folder, exist_ok=True)
            check_output_folder(folder)
        except OSError as error:
            self.Error.folder(str(error))
            return None
        return folder

    def on_done(self, result):
        if isinstance(result, tuple):  # from run_detection
            candidates, found = result
            self.candidates = candidates
            if candidates.skipped:
                self.Warning.skipped(len(candidates.skipped),
                                     candidates.skipped[0][1])
            self._refresh()
            if found is not None and \
                    self._started_with == self.current_filter():
                self._show_result(found)
            elif self.auto_apply:
                # The filter changed while detecting: make the outputs
                # anew once this task is over.
                QTimer.singleShot(0, self.commit.now)
            else:
                self.commit.deferred()  # marks the outputs as out of date
            return
        self._show_result(result)

    def _show_result(self, result: "FoundObjects"):
        self.result = result
        if result.n_masks:
            self.Information.written(result.n_masks, result.folder)
        self._send(result)

    def on_user_error(self, ex: DeepImageError):
        self._send(None)
        self.Error.user_error(str(ex))
        self._refresh()

    def on_exception(self, ex: Exception):
        if not isinstance(ex, Cancelled):
            self._send(None)
        super().on_exception(ex)

    def on_partial_result(self, result):
        pass

    def _send(self, result: Optional[FoundObjects]):
        self.Outputs.images.send(result.images if result else None)
        self.Outputs.counts.send(result.counts if result else None)
        self.Outputs.objects.send(result.objects if result else None)

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    def send_report(self):
        spec = self.spec
        preset = (("Preset", self.preset_location or "download"),) \
            if spec.kind == "keras-hub" else ()
        self.report_items("Settings", (
            ("Detector", f"{spec.name} ({spec.availability()})"),
            *preset,
            ("Classes", ", ".join(self.kept_classes()) or "none"),
            ("Minimum score", f"{self.min_score:.2f}"),
            ("Overlap", f"{self.overlap:.2f}"),
            ("Output folder", self.folder())))
        if self.data is not None:
            self.report_data("Images", self.data)
        if self.candidates is not None:
            self.report_paragraph("Found", self.count_label.text())
            if self.view.image is not None:
                row = self.image_list.currentRow()
                name = os.path.basename(self.paths[row] or "")
                self.report_raw(f"Boxes: {name}", _report_image(self.view))

    @classmethod
    def migrate_settings(cls, settings, version):
        # Version 1 is the first; later versions migrate from here.
        pass


def _report_image(view: QWidget) -> str:
    """An HTML <img> of what `view` shows."""
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    view.grab().save(buffer, "PNG")
    data = base64.b64encode(bytes(buffer.data())).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="boxes"/>'


if __name__ == "__main__":  # pragma: no cover
    from Orange.data import Domain, StringVariable
    PHOTOS = os.path.join(os.path.dirname(__file__), "..", "tutorials",
                          "photos")
    names = ["astronaut.jpg", "camera-man.jpg", "coffee.jpg"]
    var = StringVariable("image")
    var.attributes.update({"type": "image", "origin": PHOTOS})
    WidgetPreview(OWFindObjects).run(Table.from_numpy(
        Domain([], metas=[var]), np.empty((len(names), 0)),
        metas=np.array(names, dtype=object)[:, None]))
