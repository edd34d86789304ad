"""Annotate Images: paint masks and label images, with the model helping.

The annotations live in an :class:`~orangecontrib.deepimage.annotation.
AnnotationStore` (a folder the user chooses); every edit is saved there
shortly after it is made, and at once when another image is shown or the
widget is closed. An edit that cannot be saved (no folder yet, a file the
store did not write) is kept in memory and saved when it can be.

Two lanes of work keep the canvas responsive: the widget's own task
(progress bar, Cancel) predicts all images with the model on the input and
embeds them for the suggestions (``run_assistance``); clicks of the box
and superpixel tools and the scribble preview run in
:class:`~.utils.quicktasks.QuickTasks` (``run_box``, ``run_superpixels``,
``run_scribbles``), so they neither wait for nor cancel the long work. The
runners are in :mod:`~.utils.annotationtasks`.
"""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from AnyQt.QtCore import QSize, Qt, QTimer
from AnyQt.QtGui import QColor, QKeySequence, QUndoGroup, QUndoStack
from AnyQt.QtWidgets import (
    QButtonGroup, QLabel, QRadioButton, QVBoxLayout, QWidget)

from Orange.base import Model
from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage import annotationstate as state
from orangecontrib.deepimage.annotation import embeddings_for
from orangecontrib.deepimage.errors import DeepImageError
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, image_path, load_image)
from orangecontrib.deepimage.sam import SegmentAnything
from orangecontrib.deepimage.segmentation import SegmentationModel
from orangecontrib.deepimage.widgets.utils.annotationclasses import (
    AnnotationClassesMixin)
from orangecontrib.deepimage.widgets.utils.annotationstore import (
    AnnotationStoreMixin)
from orangecontrib.deepimage.widgets.utils.annotationtasks import (
    Assistance, run_assistance, run_scribbles, run_suggestions, unpack_mask)
from orangecontrib.deepimage.widgets.utils.annotationstrip import (
    AnnotationStrip)
from orangecontrib.deepimage.widgets.utils.annotationtools import (
    add_tool_controls, add_undo_buttons, tool_for_key)
from orangecontrib.deepimage.widgets.utils.annotationview import (
    TOOLS, AnnotationView)
from orangecontrib.deepimage.widgets.utils.assistedtools import (
    AssistedToolsMixin)
from orangecontrib.deepimage.widgets.utils.masks import (
    class_colours, overlay_mask, report_image_html)
from orangecontrib.deepimage.widgets.utils.quicktasks import QuickTasks
from orangecontrib.deepimage.widgets.utils.tasks import TaskButtonsMixin
from orangecontrib.deepimage.widgets.utils.thumbnails import ThumbnailLoader

MODES = (("masks", "Paint masks"), ("labels", "Label images"))
STRIP_THUMBNAIL = 96
SAVE_DELAY_MS = 400
OUTPUT_DELAY_MS = 1000
SCRIBBLE_DELAY_MS = 300


# --- the widget --------------------------------------------------------------

class OWAnnotateImages(OWWidget, TaskButtonsMixin, AnnotationStoreMixin,
                       AnnotationClassesMixin, AssistedToolsMixin):
    name = "Annotate Images"
    description = "Paint masks and label images, with a model and " \
                  "scribbles helping; suggests what to label next."
    icon = "icons/AnnotateImages.svg"
    priority = 95
    keywords = "annotate images, annotation, label images, paint masks, " \
               "segmentation masks, scribbles, grabcut, superpixels, " \
               "active learning"

    class Inputs:
        images = Input("Images", Table, default=True)
        model = Input("Model", (Model, SegmentationModel),
                      auto_summary=False)
        embeddings = Input("Embeddings", Table)

    class Outputs:
        labelled = Output("Labelled Images", Table)
        masks = Output("Images with Masks", Table, default=True)
        suggested = Output("Suggested", Table)

    class Error(OWWidget.Error):
        no_image_column = Msg("The images have no image column (a text "
                              "column marked as images, e.g. from Import "
                              "Images).")
        unwritable = Msg("Annotations cannot be saved in {}: {}")
        foreign_file = Msg("{}")
        not_saved = Msg("{}")
        bad_store = Msg("The annotation folder cannot be read: {}")
        unreadable = Msg("{} cannot be shown: {}")
        no_embedding = Msg("The embeddings cannot be used: {}")
        model_kind = Msg("The model is neither an image classifier nor a "
                         "segmentation model.")
        failed = Msg("{}")

    class Warning(OWWidget.Warning):
        unsaved = Msg("{} edit(s) are not saved yet: {}")
        no_embedding = Msg("The embeddings lack {} of the images; they are "
                           "not suggested.")
        store_among_images = Msg(
            "The annotation folder is inside the images' folder: Import "
            "Images would read its masks as images. Choose another folder.")
        mask_size = Msg("The mask of {} is {}×{}, the image {}×{}; the mask "
                        "is not shown, and painting replaces it.")

    class Information(OWWidget.Information):
        no_folder = Msg("Choose a folder for the annotations; edits are kept "
                        "until then.")
        no_images = Msg("Connect images (e.g. from Import Images).")
        scribble_more = Msg("Scribble on at least two classes (the "
                            "background is one) to see the prediction.")

    settings_version = 1
    store_folder: str = Setting("")
    store_relative: str = Setting("")
    class_names: List[str] = Setting(["background", "object"])
    label_names: List[str] = Setting([])
    mode: str = Setting("masks")
    tool: str = Setting("brush")
    brush_size: int = Setting(12)
    opacity: int = Setting(50)
    current_class: str = Setting("object")
    n_suggested: int = Setting(10)
    auto_commit: bool = Setting(True)
    sam_preset: str = Setting("")

    want_main_area = True

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        self.data: Optional[Table] = None
        self.paths: List[Optional[str]] = []
        self.model = None
        self.embeddings_data: Optional[Table] = None
        self.current: Optional[int] = None
        self.image: Optional[np.ndarray] = None
        self.stacks: Dict[int, QUndoStack] = {}
        self.scribbles: Dict[int, np.ndarray] = {}
        self.predicted_masks: Dict[int, bytes] = {}
        self.probabilities: Optional[np.ndarray] = None
        self.embeddings: Optional[np.ndarray] = None
        self.suggested: List[int] = []
        self._prefilled = False  # the view shows a prediction, unsaved
        self._lut: Optional[np.ndarray] = None
        if self.mode not in dict(MODES):
            self.mode = "masks"
        if self.tool not in TOOLS:
            self.tool = "brush"
        self.quick = QuickTasks(self, self.on_user_error)
        self._init_store_state()
        self._init_tools_state()
        self.undo_group = QUndoGroup(self)
        self._timers()
        self._controls()
        self._main_area()
        self._open_store()
        self._show_palette()

    def _timers(self):
        self.save_timer = QTimer(self, singleShot=True,
                                 interval=SAVE_DELAY_MS)
        self.save_timer.timeout.connect(self.save_now)
        self.output_timer = QTimer(self, singleShot=True,
                                   interval=OUTPUT_DELAY_MS)
        self.output_timer.timeout.connect(self.commit.deferred)
        self.scribble_timer = QTimer(self, singleShot=True,
                                     interval=SCRIBBLE_DELAY_MS)
        self.scribble_timer.timeout.connect(self._fit_scribbles)

    # --- the controls ---------------------------------------------------

    def _controls(self):
        self._add_folder_box(self.controlArea)

        box = gui.vBox(self.controlArea, "Mode")
        self.mode_buttons = QButtonGroup(self)
        for index, (key, title) in enumerate(MODES):
            button = QRadioButton(title, checked=key == self.mode)
            button.setToolTip("Keys 0–9 pick a mask class" if key == "masks"
                              else "Keys 1–9 label the shown image")
            self.mode_buttons.addButton(button, index)
            box.layout().addWidget(button)
        self.mode_buttons.idClicked.connect(
            lambda index: self.set_mode(MODES[index][0]))

        self._add_palette_box(self.controlArea)

        self.tools_box = gui.vBox(self.controlArea, "Tools")
        self.tool_buttons = add_tool_controls(
            self.tools_box, self, self.set_tool, self._on_brush_size,
            self._on_opacity, self._on_sam_preset)
        # (outside the tools, which labels mode turns off: Enter takes the
        # model's label there)
        row = gui.hBox(self.controlArea)
        add_undo_buttons(row, self.undo_group)
        self.accept_button = gui.button(
            row, self, "Accept (Enter)", callback=self.accept,
            autoDefault=False,
            tooltip="Keep the scribbles' or the model's prediction.")
        gui.button(row, self, "Fit", autoDefault=False,
                   callback=lambda: self.view.fit_in_view(),
                   tooltip="Show the whole image (Ctrl+0); the wheel "
                           "zooms, the middle button or Space pans.")

        box = gui.vBox(self.controlArea, "What to label next")
        gui.spin(box, self, "n_suggested", 0, 1000, label="Suggest:",
                 orientation=Qt.Horizontal, suffix=" images",
                 callback=self.suggest)
        row = gui.hBox(box)
        gui.button(row, self, "Next suggested (N)",
                   callback=self.next_suggested, autoDefault=False)
        gui.button(row, self, "Suggest again", callback=self.suggest,
                   autoDefault=False)
        self.controlArea.layout().addStretch(1)

        self.add_cancel_button(self.buttonsArea)
        gui.auto_send(self.buttonsArea, self, "auto_commit")

    def _main_area(self):
        self.loader = ThumbnailLoader(self, size=STRIP_THUMBNAIL)
        self.strip = AnnotationStrip(self.loader, self._name, self._label_of)
        self.strip.selectionRequested.connect(self._on_strip_clicked)
        self.view = AnnotationView()
        self.view.maskChanged.connect(self._on_mask_changed)
        self.view.scribblesChanged.connect(self._on_scribbles_changed)
        self.view.boxDrawn.connect(self._on_box)
        self.view.pointClicked.connect(self._on_point)
        self.view.set_brush_size(self.brush_size)
        self.view.set_opacity(self.opacity / 100)
        self.image_label = QLabel(wordWrap=True)
        right = QWidget()
        layout = QVBoxLayout(right)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.image_label)
        row = gui.hBox(self.mainArea)
        row.layout().addWidget(self.strip)
        row.layout().addWidget(right, 1)
        self._apply_tool()

    def sizeHint(self):
        return QSize(1100, 700)

    # --- inputs -------------------------------------------------------------

    @Inputs.images
    def set_images(self, data: Optional[Table]):
        self.save_now()
        self.Error.no_image_column.clear()
        column = None if data is None else find_image_column(data)
        if data is not None and column is None:
            self.Error.no_image_column()
            data = None
        paths = [] if data is None else \
            [image_path(column, value) for value in data.get_column(column)]
        self.data = data
        if paths == self.paths and paths:
            return  # the same images again: keep their history and place
        self.paths = paths
        self._forget_history()
        self.pending_masks, self.pending_labels = {}, {}
        self.pending_scribbles = {}
        self.predicted_masks, self.probabilities = {}, None
        self.embeddings, self.suggested = None, []
        self.current = None
        self.loader.set_paths(self.paths)
        self.strip.set_rows(range(len(self.paths)))

    @Inputs.model
    def set_model(self, model):
        self.Error.model_kind.clear()
        if model is not None and not isinstance(model, SegmentationModel) \
                and not hasattr(model, "predict_paths"):
            self.Error.model_kind()
            model = None
        self.model = model
        self.predicted_masks, self.probabilities = {}, None
        self._map_model_classes()

    @Inputs.embeddings
    def set_embeddings(self, data: Optional[Table]):
        self.embeddings_data = data
        self.embeddings = None

    def handleNewSignals(self):
        self.Information.no_images(shown=self.data is None)
        self._check_store_place()
        self._open_store()
        self._load_scribbles()
        if self.data is not None and len(self.data) and self.current is None:
            self.show_image(0)
        elif self._prefilled and self.current not in self.predicted_masks:
            self._show_current()  # the prediction of a model now gone
        self._refresh_marks()
        self.commit.now()
        self.assist()

    def _map_model_classes(self):
        """Learn the model's classes: mask classes or labels by name."""
        model = self.model
        if isinstance(model, SegmentationModel):
            self.class_names, self._lut = state.model_class_lut(
                self.class_names, model.class_names)
        elif model is not None:
            self.label_names = state.merge_names(self.label_names,
                                                 model.class_names)
        self._show_palette()

    # --- the shown image --------------------------------------------------

    def show_image(self, row: Optional[int]):
        """Show image `row` (saving the shown one's edits first)."""
        self._capture()
        self.save_now()
        if self.quick.is_busy():
            self.quick.cancel()
        self.current = row
        self.segments = None
        self._show_current()
        self.strip.set_selection(self._row_mask([] if row is None
                                                else [row]))
        if row is not None:
            self.strip.ensure_visible(row)
        self._refresh_marks()

    def _forget_history(self):
        """Drop the undo stacks and the scribbles held for the images."""
        self.view.set_image(None)
        for stack in self.stacks.values():
            self.undo_group.removeStack(stack)
            stack.deleteLater()
        self.stacks, self.scribbles = {}, {}
        self.segmenter = self.segments = None

    def _show_current(self):
        self.Error.unreadable.clear()
        self._dirty = self._prefilled = False
        row = self.current
        self.image = None
        if row is not None:
            try:
                self.image = np.asarray(load_image(self.paths[row]),
                                        dtype=np.uint8)
            except ImageSkipped as error:
                self.Error.unreadable(self._name(row), str(error))
        if self.image is None:
            self.view.set_image(None)
            self._show_info()
            return
        mask = self._mask_of(row)
        self.Warning.mask_size.clear()
        if mask is not None and mask.shape != self.image.shape[:2]:
            self.Warning.mask_size(self._name(row), *mask.shape[::-1],
                                   *self.image.shape[1::-1])
            mask = None
        if mask is None and row in self.predicted_masks:
            mask = unpack_mask(self.predicted_masks[row])
            self._prefilled = True
        if row not in self.stacks:
            self.stacks[row] = QUndoStack(self)
            self.undo_group.addStack(self.stacks[row])
        self.view.set_image(self.image, mask, self.scribbles.get(row),
                            self.stacks[row])
        self.undo_group.setActiveStack(self.stacks[row])
        self._show_palette()
        self._show_info()
        if self.segmenter is not None and (row in self.scribbles
                                           or not self._has_mask(row)):
            self.quick.start(run_scribbles, [], [], self.image,
                             self.segmenter, done=self._on_scribble_preview,
                             description="scribble preview", replace=True)

    def _name(self, row: int) -> str:
        return os.path.basename(self.paths[row] or "") or f"row {row + 1}"

    def _prediction(self, row: int) -> Optional[Tuple[str, float]]:
        """The classifier's label for `row` and its probability."""
        if self.probabilities is None or \
                np.isnan(self.probabilities[row]).any():
            return None
        best = int(np.argmax(self.probabilities[row]))
        return (self.model.class_names[best],
                float(self.probabilities[row, best]))

    def _show_info(self):
        row = self.current
        if row is None:
            self.image_label.setText("")
            return
        self.image_label.setText(state.image_info(
            self._name(row), row, len(self.paths), self._label_of(row),
            self._prediction(row), self._prefilled, row in self.suggested))

    # --- edits and saving ---------------------------------------------

    def _on_mask_changed(self):
        self._dirty = True
        self._prefilled = False
        self.save_timer.start()

    def accept(self):
        """Enter: keep the scribble preview (one undoable edit), the
        model's mask, or (in labels mode) the model's label."""
        row = self.current
        if row is None:
            return
        if self.mode == "labels":
            predicted = self._prediction(row)
            if predicted is not None:
                self.set_label(predicted[0])
        elif self.view.preview() is not None:
            self.view.apply_mask(self.view.preview(),
                                 "Accept the scribbles' prediction")
            self.view.set_preview(None)
        elif self._prefilled:
            self.pending_masks[row] = self.view.mask()
            self._prefilled = False
            self.save_now()
            self._show_info()

    def set_label(self, label: Optional[str]):
        """Label the shown image (None removes its label) and go on."""
        row = self.current
        if row is None or self.paths[row] is None:
            return
        self.pending_labels[row] = label
        self.save_now()
        self._show_info()
        if label is not None and row + 1 < len(self.paths):
            self.show_image(row + 1)

    def undo(self):
        self.undo_group.undo()

    def redo(self):
        self.undo_group.redo()

    # --- tools ----------------------------------------------------------

    def set_tool(self, name: str):
        """Paint with tool `name` (one of TOOLS)."""
        if name not in TOOLS:
            raise ValueError(f"Unknown tool. Received: tool={name!r}")
        self.tool = name
        self.tool_buttons.button(TOOLS.index(name)).setChecked(True)
        self._apply_tool()

    def _apply_tool(self):
        self.view.set_tool(self.tool if self.mode == "masks" else "pan")
        self.view.set_brush_size(self.brush_size)

    def _on_brush_size(self):
        self.view.set_brush_size(self.brush_size)

    def _on_opacity(self):
        self.view.set_opacity(self.opacity / 100)

    # --- mode ------------------------------------------------------------

    def set_mode(self, mode: str):
        """``"masks"`` (paint masks) or ``"labels"`` (label images)."""
        if mode not in dict(MODES):
            raise ValueError(f"Unknown mode. Received: mode={mode!r}")
        self.mode = mode
        self.mode_buttons.button(
            [key for key, _ in MODES].index(mode)).setChecked(True)
        self._apply_tool()
        self._show_palette()
        self._refresh_marks()

    # --- the strip and suggestions ----------------------------------------

    def _row_mask(self, rows) -> np.ndarray:
        selected = np.zeros(len(self.paths), bool)
        selected[list(rows)] = True
        return selected

    def labelled_rows(self) -> np.ndarray:
        """Rows annotated in the current mode (a mask, or a label)."""
        if self.mode == "masks":
            return np.array([self._has_mask(row)
                             for row in range(len(self.paths))], bool)
        return np.array([self._label_of(row) is not None
                         for row in range(len(self.paths))], bool)

    def _refresh_marks(self):
        if not self.paths:
            self.strip.set_marks(None)
            return
        marks = state.status_marks(self.labelled_rows(), self.suggested)
        if self.mode == "masks":
            self.strip.set_marks(marks)
        else:  # a labelled image's frame has its label's colour
            self.strip.set_marks(marks, self.label_names, [
                QColor(*map(int, colour)) for colour in self._colours()[1:]])

    def _on_strip_clicked(self, rows, _mode):
        if rows:
            self.show_image(int(rows[0]))

    def next_suggested(self):
        """N: show the next suggested image that is still unlabelled."""
        waiting = self._waiting_suggestions()
        if not waiting:
            self.suggest()
            return
        self.show_image(state.next_suggested(waiting, self.current))

    def _given_embeddings(self) -> Optional[np.ndarray]:
        self.Warning.no_embedding.clear()
        self.Error.no_embedding.clear()
        data = self.embeddings_data
        if data is None:
            return None
        if find_image_column(data) is None:
            self.Error.no_embedding("they have no image column to match "
                                    "them with the images")
            return None
        try:
            matrix = embeddings_for(self.paths, data)
        except ValueError as error:  # no numeric columns
            self.Error.no_embedding(str(error))
            return None
        missing = int(np.isnan(matrix).any(axis=1).sum())
        if missing:
            self.Warning.no_embedding(missing)
        return matrix

    def assist(self):
        """Predict with the model and embed the images for suggestions."""
        self.cancel()
        if self.data is None or not len(self.data):
            return
        embeddings = self._given_embeddings()
        embed = embeddings is None and self.n_suggested > 0 and \
            self.embeddings_data is None
        if self.model is None and not embed and embeddings is None:
            return
        unannotated = [row for row in range(len(self.paths))
                       if not self._has_mask(row)]
        if self.current in unannotated:
            unannotated.remove(self.current)
            unannotated.insert(0, self.current)
        self.start(run_assistance, self.paths, self.model, self._lut,
                   embeddings, embed, unannotated if
                   isinstance(self.model, SegmentationModel) else [],
                   self.labelled_rows(), self.n_suggested)

    def suggest(self):
        """Choose the next images again, from what is labelled now."""
        if self.embeddings is None and self.probabilities is None:
            self.assist()
            return
        self.cancel()
        self.start(run_suggestions, self.probabilities, self.embeddings,
                   self.labelled_rows(), self.n_suggested)

    def on_partial_result(self, result):
        row, png = result
        self.predicted_masks[row] = png
        stack = self.stacks.get(row)
        if row == self.current and not self._has_mask(row) \
                and not self._dirty and stack is not None \
                and not stack.count():
            self._show_current()

    def on_done(self, result):
        if isinstance(result, SegmentAnything):
            self._on_sam_loaded()
            return
        if isinstance(result, Assistance):
            self.predicted_masks.update(result.masks)
            self.probabilities = result.probabilities
            self.embeddings = result.embeddings
            result = result.suggested
        self.suggested = result
        self._refresh_marks()
        self._show_info()
        self.commit.deferred()

    def on_user_error(self, ex: DeepImageError):
        self.waiting_prompt = None
        self.Error.failed(str(ex))

    # --- outputs ---------------------------------------------------------

    @gui.deferred
    def commit(self):
        self.output_timer.stop()
        data, store = self.data, self.store
        has = data is not None and store is not None
        self.Outputs.labelled.send(store.labels_table(data) if has else None)
        self.Outputs.masks.send(store.masks_table(data) if has else None)
        waiting = [] if data is None else self._waiting_suggestions()
        self.Outputs.suggested.send(data[waiting] if waiting else None)

    def _waiting_suggestions(self) -> List[int]:
        """The suggested rows that are not labelled yet."""
        return state.waiting_suggestions(self.suggested, self.labelled_rows())

    # --- keys ------------------------------------------------------------

    def keyPressEvent(self, event):
        key, modifiers = event.key(), event.modifiers()
        plain = not modifiers & ~Qt.KeyboardModifier.KeypadModifier
        if event.matches(QKeySequence.StandardKey.Undo):
            self.undo()
        elif event.matches(QKeySequence.StandardKey.Redo) or (
                key == Qt.Key.Key_Z and modifiers == (
                    Qt.KeyboardModifier.ControlModifier
                    | Qt.KeyboardModifier.ShiftModifier)):
            self.redo()
        elif plain and Qt.Key.Key_0 <= key <= Qt.Key.Key_9:
            number = key - Qt.Key.Key_0
            if self.mode == "masks":
                self.select_class(number)
            elif number == 0:
                self.set_label(None)
            elif number <= len(self.label_names):
                self.set_label(self.label_names[number - 1])
        elif plain and key == Qt.Key.Key_N:
            self.next_suggested()
        elif plain and key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.accept()
        elif plain and self.mode == "masks" and tool_for_key(event.text()):
            self.set_tool(tool_for_key(event.text()))
        else:
            super().keyPressEvent(event)

    # --- report and clean-up -------------------------------------------

    def send_report(self):
        n_masks = sum(self._has_mask(row) for row in range(len(self.paths)))
        n_labels = sum(self._label_of(row) is not None
                       for row in range(len(self.paths)))
        self.report_items((
            ("Annotation folder", self._store_path() or "(none)"),
            ("Mode", dict(MODES)[self.mode]),
            ("Mask classes", ", ".join(self.class_names)),
            ("Image labels", ", ".join(self.label_names) or "(none)"),
            ("Images", len(self.paths)),
            ("With a mask", n_masks),
            ("With a label", n_labels),
            ("Suggested", len(self._waiting_suggestions()))))
        if self.image is not None:
            colours = class_colours(len(self.class_names))
            image = self.image if self.image.ndim == 3 else \
                np.repeat(self.image[..., None], 3, axis=-1)
            self.report_caption(f"{self._name(self.current)} with its mask")
            self.report_raw(report_image_html(
                [overlay_mask(image[..., :3], self.view.mask(), colours,
                              self.opacity / 100)], alt="annotated image"))

    def onDeleteWidget(self):
        self.save_now()
        for timer in (self.save_timer, self.output_timer,
                      self.scribble_timer):
            timer.stop()
        self.quick.shutdown()
        self.shutdown()
        self.loader.shutdown()
        super().onDeleteWidget()


if __name__ == "__main__":  # pragma: no cover
    WidgetPreview(OWAnnotateImages).run()
