"""Explain Images: where an Image Classifier looked, as Grad-CAM heatmaps.

The heatmaps are computed in a worker thread; the overlays in the grid are
blended on the GUI thread from the heatmaps (so the opacity slider needs no
new computation and writes nothing). The output gets an image column
pointing at PNG files of the overlays (at :data:`FILE_OPACITY`), so Image
Viewer can show them. By default they go to the widget's own folder, which
holds the files of its last run only (the same images give the same files,
which are reused); in a folder the user chose, every run adds new files and
none is ever overwritten.
"""
import base64
import html
import io
import os
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from AnyQt.QtCore import Qt
from AnyQt.QtGui import QBrush, QColor, QIcon, QImage, QPixmap
from AnyQt.QtWidgets import QListWidgetItem

from Orange.base import Model
from Orange.data import (
    ContinuousVariable, DiscreteVariable, Domain, StringVariable, Table)
from Orange.data.util import get_unique_names
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.cache import default_cache_dir
from orangecontrib.deepimage.classification import ImageClassifierModel
from orangecontrib.deepimage.errors import (
    Cancelled, DeepImageError, UnwritableFolder, raise_if_cancelled)
from orangecontrib.deepimage.explain import (
    EvaluatedPredictions, Explanation, evaluated_predictions, explain_images,
    overlay_heatmap, write_heatmaps)
from orangecontrib.deepimage.files import (
    NewFiles, OwnFolder, check_output_folder)
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, image_paths, load_image)
from orangecontrib.deepimage.widgets.utils.outputfolder import (
    OutputFolderMixin)
from orangecontrib.deepimage.widgets.utils.thumbnails import captioned_grid
from orangecontrib.deepimage.widgets.utils.tasks import (
    TaskButtonsMixin, task_progress)

#: Size of the images in the grid (pixels, the longer side).
THUMBNAIL_SIZE = 128
#: At most this many images are shown; all are explained and written.
MAX_SHOWN = 100
#: Images written per step (between checks for cancellation).
WRITE_CHUNK = 16
#: Overlays in the report.
REPORT_IMAGES = 6
#: Opacity of the heatmap in the written files.
FILE_OPACITY = 0.5
#: Background of a wrongly predicted image in the grid.
WRONG_COLOUR = QColor(255, 215, 215)


@dataclass
class ExplainResult:
    """What the worker returns.

    Attributes
    ----------
    explanation : Explanation
    thumbnails : dict
        Row -> small PIL image, for the rows shown in the grid.
    files : list of str or None
        The written overlay per row (None where there is no heatmap).
    folder : str
        Where the files are.
    """
    explanation: Explanation
    thumbnails: Dict[int, Image.Image]
    files: List[Optional[str]]
    folder: str


def default_output_folder() -> str:
    """Heatmaps go to a folder in Orange's cache, not beside the images
    (each widget has its own folder in it)."""
    return os.path.join(default_cache_dir(), "heatmaps")


def run_explanation(model: ImageClassifierModel, paths: List[Optional[str]],
                    target: Optional[str], folder, state: TaskState,
                    previous: Optional[ExplainResult] = None
                    ) -> ExplainResult:
    """Explain the images and write the overlays (runs in a worker thread).

    Parameters
    ----------
    model : ImageClassifierModel
    paths : list of str or None
        The image of each row.
    target : str or sequence, optional
        The class to explain, or one per image (an index, -1 for the
        predicted class); None for each image's predicted class.
    folder : str or OwnFolder
        Where the overlay PNGs are written: a folder (which must exist; new
        files are added) or the widget's own folder (made if missing; it
        keeps this run's files only). Checked before any work.
    state : TaskState
    previous : ExplainResult, optional
        An explanation of the same images, model and target: only the
        files are written again.
    """
    files = folder if isinstance(folder, NewFiles) else NewFiles(folder)
    if isinstance(files, OwnFolder):
        os.makedirs(files.path, exist_ok=True)
    check_output_folder(files.path)  # before any work

    def check():
        raise_if_cancelled(state)

    if previous is None:
        state.set_status("Computing heatmaps…")
        explanation = explain_images(model, paths, target,
                                     callback=task_progress(state, 0, 90))
        thumbnails = {}
        for row, heatmap in enumerate(explanation.heatmaps):
            if len(thumbnails) == MAX_SHOWN:
                break
            if heatmap is None:
                continue
            check()
            try:
                image = load_image(paths[row])
            except ImageSkipped:
                continue  # the file changed since; no overlay to show
            thumbnails[row] = _fit(image, THUMBNAIL_SIZE)
    else:
        explanation, thumbnails = previous.explanation, previous.thumbnails

    state.set_status("Writing heatmaps…")
    written = []
    with files:
        for start in range(0, len(paths), WRITE_CHUNK):
            check()
            chunk = slice(start, start + WRITE_CHUNK)
            written += write_heatmaps(
                replace(explanation, heatmaps=explanation.heatmaps[chunk]),
                paths[chunk], files, FILE_OPACITY)
            state.set_progress_value(
                90 + 10 * min(1, (start + WRITE_CHUNK) / max(1, len(paths))))
    return ExplainResult(explanation, thumbnails, written, files.path)


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Scale `image` up or down so that its longer side is `size`."""
    scale = size / max(image.size)
    return image.resize((max(1, round(image.width * scale)),
                         max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)


def _to_qimage(image: Image.Image) -> QImage:
    pixels = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    height, width, _ = pixels.shape
    return QImage(pixels.data, width, height, 3 * width,
                  QImage.Format_RGB888).copy()


class OWExplainImages(OWWidget, TaskButtonsMixin, OutputFolderMixin):
    name = "Explain Images"
    description = "Show where an image classifier looked (Grad-CAM " \
                  "heatmaps over the images)."
    icon = "icons/ExplainImages.svg"
    priority = 30
    keywords = "explain images, grad-cam, heatmap, saliency, explanation, " \
               "image classifier"

    class Inputs:
        data = Input("Data", Table, default=True)
        model = Input("Model", Model)

    class Outputs:
        data = Output("Data", Table, default=True)

    class Error(OWWidget.Error):
        no_image_column = Msg("The data has no image column (a text column "
                              "marked as images, e.g. from Import Images).")
        wrong_model = Msg("Explain Images needs a model from Image "
                          "Classifier; it got {}.")
        explanation_failed = Msg("Explaining failed: {}")
        cannot_write = Msg("Cannot write the heatmaps: {}")

    class Warning(OWWidget.Warning):
        images_skipped = Msg("{} image(s) could not be read.")

    class Information(OWWidget.Information):
        no_model = Msg("Connect a model from Image Classifier to see where "
                       "it looks.")
        first_shown = Msg("Showing the first {} of {} images; all of them "
                          "are on the output.")
        evaluated = Msg(
            "Shown are the predictions from Test & Score ('{}'){}. The "
            "heatmaps are explained with the final model, which saw these "
            "images in training, for the class Test & Score predicted.")

    settings_version = 1
    opacity: int = Setting(50)
    target_class: str = Setting("")  # "" for each image's predicted class
    output_folder: str = Setting("")  # "" for the widget's own folder
    own_folder_id: str = Setting("", schema_only=True)
    auto_commit: bool = Setting(True)

    uses_own_folder = True

    want_main_area = True

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        self.data: Optional[Table] = None
        self.model: Optional[ImageClassifierModel] = None
        self.paths: List[Optional[str]] = []
        self.result: Optional[ExplainResult] = None
        self.evaluated: Optional[EvaluatedPredictions] = None
        self._stored_target = self.target_class

        box = gui.vBox(self.controlArea, "Explain")
        self.target_combo = gui.comboBox(
            box, self, None, label="Class:", orientation=Qt.Horizontal,
            tooltip="The class whose evidence is shown; 'predicted' shows "
                    "each image's predicted class.")
        self.target_combo.activated.connect(self._on_target_changed)
        self._fill_targets()
        gui.hSlider(
            box, self, "opacity", minValue=0, maxValue=100, step=5,
            label="Opacity:", labelFormat=" %d %%",
            callback=self._draw_grid)

        box = gui.vBox(self.controlArea, "Heatmap files")
        self.add_output_folder_row(
            box, dialog_title="Folder for heatmap images",
            tooltip="Overlays are written here; existing files are never "
                    "overwritten.",
            default_tooltip=" (default: this widget's folder in Orange's "
                            "cache, which keeps the last result's files "
                            "only)")
        self.controlArea.layout().addStretch(1)

        self.add_cancel_button(self.buttonsArea)
        gui.auto_send(self.buttonsArea, self, "auto_commit")

        self.grid = captioned_grid(THUMBNAIL_SIZE, 64)
        self.mainArea.layout().addWidget(self.grid)

    # --- inputs ------------------------------------------------------------

    @Inputs.data
    def set_data(self, data: Optional[Table]):
        self.data = data
        self.Error.no_image_column.clear()
        if data is not None and find_image_column(data) is None:
            self.Error.no_image_column()

    @Inputs.model
    def set_model(self, model: Optional[Model]):
        self.Error.wrong_model.clear()
        if model is not None and not isinstance(model, ImageClassifierModel):
            self.Error.wrong_model(getattr(model, "name", None)
                                   or type(model).__name__)
            model = None
        self.model = model
        self._fill_targets()

    def handleNewSignals(self):
        self.cancel()
        self.result = None
        self.paths = []
        self.evaluated = None
        if self.data is not None and self.model is not None:
            column = find_image_column(self.data, self.model.image_column) \
                or find_image_column(self.data)
            if column is not None:
                self.paths = image_paths(self.data, column)
            self.evaluated = evaluated_predictions(
                self.data, self.model.class_names,
                getattr(self.model, "name", None))
        evaluated = self.evaluated
        self.Information.evaluated(
            evaluated.column if evaluated else "",
            ", cross-validated" if evaluated and evaluated.cross_validated
            else "", shown=evaluated is not None)
        self.Information.no_model(
            shown=self.data is not None and self.model is None
            and not self.Error.wrong_model.is_shown())
        self._draw_grid()
        self.commit.now()

    # --- controls ----------------------------------------------------------

    def _fill_targets(self):
        self.target_combo.clear()
        self.target_combo.addItem("predicted", "")
        names = self.model.class_names if self.model is not None else ()
        for name in names:
            self.target_combo.addItem(name, name)
        # Keep the stored class for a model that has it (e.g. when a saved
        # workflow sends the model after the widget is created).
        wanted = self._stored_target
        self.target_class = wanted if wanted in names else ""
        self.target_combo.setCurrentIndex(
            self.target_combo.findData(self.target_class))

    def _on_target_changed(self):
        self.target_class = self._stored_target = \
            self.target_combo.currentData()
        self.cancel()
        self.result = None
        self.commit.deferred()

    def set_target_class(self, name: str):
        """Explain class `name` ("" for the predicted class)."""
        index = self.target_combo.findData(name)
        if index < 0:
            raise ValueError(f"Unknown class. Received: name={name!r}")
        self.target_combo.setCurrentIndex(index)
        self._on_target_changed()

    def default_folder(self) -> str:
        return default_output_folder()

    def output_folder_changed(self):
        # The heatmaps are kept; only the files are written again.
        if self.result is not None:
            self.commit.deferred()

    # --- work --------------------------------------------------------------

    @gui.deferred
    def commit(self):
        self.cancel()
        self.Error.explanation_failed.clear()
        self.Error.cannot_write.clear()
        self.Warning.images_skipped.clear()
        if self.model is None or not self.paths:
            self.result = None
            self._draw_grid()
            self.Outputs.data.send(None)
            return
        folder = OwnFolder(self.folder()) if self.writes_own_folder() \
            else self.folder()
        target = self.target_class or (
            self.evaluated.classes if self.evaluated is not None else None)
        self.start(run_explanation, self.model, self.paths, target, folder,
                   previous=self.result)

    def on_partial_result(self, result):
        pass

    def on_done(self, result: ExplainResult):
        self.result = result
        n_skipped = len(result.explanation.skipped)
        if n_skipped:
            self.Warning.images_skipped(n_skipped)
        self._draw_grid()
        self.Outputs.data.send(self._output_table(result))

    def on_exception(self, ex: Exception):
        self.Outputs.data.send(None)
        if not isinstance(ex, Cancelled):
            self.result = None
            self._draw_grid()
        super().on_exception(ex)

    def on_user_error(self, ex: DeepImageError):
        if isinstance(ex, UnwritableFolder):
            self.Error.cannot_write(str(ex))
        else:
            self.Error.explanation_failed(str(ex) or type(ex).__name__)

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    def _output_table(self, result: ExplainResult) -> Table:
        """The data with the heatmap files and the explained classes."""
        data = self.data
        explanation = result.explanation
        class_names = list(explanation.class_names)
        evaluated = self.evaluated is not None
        names = get_unique_names(
            data.domain, ["Grad-CAM", "Explained class", "Predicted class",
                          "Probability"] + ["Correct"] * evaluated)
        image_var = StringVariable(names[0])
        image_var.attributes.update({"type": "image",
                                     "origin": result.folder})
        explained_var = DiscreteVariable(names[1], values=class_names)
        predicted_var = DiscreteVariable(names[2], values=class_names)
        probability_var = ContinuousVariable(names[3])
        new_vars = (image_var, explained_var, predicted_var, probability_var)
        if evaluated:
            # Whether Test & Score's prediction (shown) is right.
            new_vars += (DiscreteVariable(names[4], values=("no", "yes")),)
        domain = Domain(data.domain.attributes, data.domain.class_vars,
                        data.domain.metas + new_vars)
        table = data.transform(domain)

        def index_or_nan(indices):
            return np.where(indices >= 0, indices, np.nan).astype(float)

        files = np.array([os.path.relpath(f, result.folder) if f else ""
                          for f in result.files], dtype=object)
        first = len(data.domain.metas)
        with table.unlocked(table.metas):
            table.metas[:, first] = files
            table.metas[:, first + 1] = index_or_nan(explanation.classes)
            table.metas[:, first + 2] = index_or_nan(explanation.predicted)
            table.metas[:, first + 3] = explanation.probabilities
            if evaluated:
                correct = [np.nan if shown < 0 or actual is None
                           else float(shown == actual)
                           for shown, actual in (
                               (self._shown_prediction(row),
                                self._actual(row))
                               for row in range(len(data)))]
                table.metas[:, first + 4] = correct
        return table

    # --- grid --------------------------------------------------------------

    def _overlays(self, limit: Optional[int] = None):
        """(row, overlay PIL image) for the shown rows."""
        if self.result is None:
            return
        explanation = self.result.explanation
        for i, (row, thumbnail) in enumerate(self.result.thumbnails.items()):
            if limit is not None and i == limit:
                return
            yield row, overlay_heatmap(thumbnail, explanation.heatmaps[row],
                                       self.opacity / 100)

    def _actual(self, row: int) -> Optional[int]:
        """The row's true class as an index of the model's classes."""
        class_var = self.data.domain.class_var
        if class_var is None or not class_var.is_discrete:
            return None
        actual = self.data.Y[row] if self.data.Y.ndim == 1 \
            else self.data.Y[row, 0]
        if np.isnan(actual):
            return None
        name = class_var.values[int(actual)]
        names = list(self.result.explanation.class_names)
        return names.index(name) if name in names else -1

    def _shown_prediction(self, row: int) -> int:
        """Test & Score's prediction where the data has it, else the
        final model's (-1: none)."""
        if self.evaluated is not None:
            return int(self.evaluated.classes[row])
        return int(self.result.explanation.predicted[row])

    def _is_wrong(self, row: int) -> bool:
        actual, shown = self._actual(row), self._shown_prediction(row)
        return actual is not None and shown >= 0 and shown != actual

    def _caption(self, row: int) -> str:
        explanation = self.result.explanation
        names = explanation.class_names
        predicted = explanation.predicted[row]
        explained = explanation.classes[row]
        probability = explanation.probabilities[row]
        wrong = "✗ WRONG: " if self._is_wrong(row) else ""
        if self.evaluated is not None:
            shown = self._shown_prediction(row)
            lines = [f"{wrong}Test & Score: "
                     f"{names[shown] if shown >= 0 else '?'}",
                     f"final model: {names[predicted]}"]
            if explained != shown or self.target_class:
                lines.append(f"{names[explained]}: {probability:.0%}")
        elif explained == predicted:
            lines = [f"{wrong}{names[predicted]} ({probability:.0%})"]
        else:
            lines = [f"{wrong}predicted: {names[predicted]}",
                     f"{names[explained]}: {probability:.0%}"]
        actual = self._actual(row)
        if actual is not None:
            class_var = self.data.domain.class_var
            actual_value = self.data.Y[row] if self.data.Y.ndim == 1 \
                else self.data.Y[row, 0]
            lines.append(f"actual: {class_var.values[int(actual_value)]}")
        return "\n".join(lines)

    def _draw_grid(self):
        self.grid.clear()
        self.Information.first_shown.clear()
        if self.result is None:
            return
        for row, overlay in self._overlays():
            item = QListWidgetItem(
                QIcon(QPixmap.fromImage(_to_qimage(overlay))),
                self._caption(row))
            item.setToolTip(self.paths[row] or "")
            item.setData(Qt.UserRole, row)
            if self._is_wrong(row):
                item.setBackground(QBrush(WRONG_COLOUR))
            self.grid.addItem(item)
        n_explained = sum(h is not None
                          for h in self.result.explanation.heatmaps)
        if n_explained > len(self.result.thumbnails):
            self.Information.first_shown(len(self.result.thumbnails),
                                         n_explained)

    # --- report ------------------------------------------------------------

    def send_report(self):
        items = [("Model", getattr(self.model, "name", None) or "none"),
                 ("Explained class", self.target_class or "predicted"),
                 ("Opacity", f"{self.opacity} %"),
                 ("Heatmap files", self.folder())]
        self.report_items(items)
        if self.result is None:
            return
        figures = []
        for row, overlay in self._overlays(REPORT_IMAGES):
            buffer = io.BytesIO()
            overlay.save(buffer, format="PNG")
            encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
            caption = html.escape(self._caption(row)).replace("\n", "<br/>")
            figures.append(
                f'<figure style="display:inline-block; margin:4px">'
                f'<img src="data:image/png;base64,{encoded}"/>'
                f'<figcaption>{caption}</figcaption></figure>')
        if figures:
            self.report_raw("Heatmaps", "".join(figures))

    @classmethod
    def migrate_settings(cls, settings, version):
        # Version 1 is the first; later versions migrate from here.
        pass


if __name__ == "__main__":  # pragma: no cover
    from orangecontrib.imageanalytics.import_images import ImportImages
    from orangecontrib.deepimage.classification import ImageClassifierLearner
    images = ImportImages()(os.path.expanduser("~/Pictures"))[0]
    WidgetPreview(OWExplainImages).run(
        set_data=images, set_model=ImageClassifierLearner()(images))
