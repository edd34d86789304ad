"""Segment Images: predict masks with a trained segmentation model.

The model segments every image (tile by tile, any size) in a worker thread;
each mask is written as a PNG (never beside the images) and the images go
out with a mask column pointing at them. By default the masks go to the
widget's own folder, which holds the masks of its last run only (the same
masks are not written again); in a folder the user chose, every run adds
new files and none is ever overwritten. The masks are then measured: the
objects of each class (connected regions, or split where they touch) with
their size, position, shape and brightness, and per image the count of
objects and the area of each class.

Changing "Split touching objects" only measures again: the masks are not
predicted (nor written) anew.
"""
import os
from dataclasses import dataclass
from typing import Optional

from orangewidget.report import bool_str

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.errors import (
    DeepImageError, UnwritableFolder, raise_if_cancelled)
from orangecontrib.deepimage.files import (
    FolderMissing, NewFiles, OwnFolder, check_output_folder)
from orangecontrib.deepimage.images import find_image_column
from orangecontrib.deepimage.measure import measure_table
from orangecontrib.deepimage.segmentation import SegmentationModel
# Registers the summaries of segmentation models on links.
from orangecontrib.deepimage.widgets.utils import (  # noqa: F401
    summaries)  # pylint: disable=unused-import
from orangecontrib.deepimage.widgets.utils.messages import WrappedErrors
from orangecontrib.deepimage.widgets.utils.outputfolder import (
    OutputFolderMixin)
from orangecontrib.deepimage.widgets.utils.tasks import (
    TaskButtonsMixin, task_progress)

#: Share of the progress bar for predicting; measuring takes the rest.
PREDICT_SHARE = 0.9


def default_output_folder() -> str:
    """Masks go to a folder in Orange's data folder, not beside the
    images (each widget has its own folder in it)."""
    from Orange.misc.environ import data_dir
    return os.path.join(data_dir(versioned=False), "deepimage",
                        "predicted masks")


@dataclass
class SegmentResult:
    """What a run gives: the outputs and what to tell the user."""
    images: Table  # the input with the predicted mask column
    mask_column: str
    counts: Table
    objects: Table
    n_written: int
    n_unreadable: int
    folder: str


def run_measure(images: Table, mask_column: str, split_touching: bool,
                state: TaskState, start: float = 0.0, folder: str = ""
                ) -> SegmentResult:
    """Measure the objects of predicted masks (runs in a worker thread)."""
    state.set_status("Measuring objects…")
    image_var = find_image_column(images)
    objects, counts = measure_table(
        images, image_column=image_var.name if image_var else None,
        mask_column=mask_column, split_touching=split_touching,
        callback=task_progress(state, 100 * start, 100))
    written = [value for value in images.get_column(mask_column) if value]
    return SegmentResult(images, mask_column, counts, objects, len(written),
                         len(images) - len(written), folder)


def run_segmentation(model: SegmentationModel, data: Table, folder,
                     split_touching: bool, state: TaskState
                     ) -> SegmentResult:
    """Predict, write and measure the masks of `data`'s images (runs in a
    worker thread).

    `folder` is a folder (new files are added) or an :class:`OwnFolder`
    (the widget's own, which keeps this run's masks only).
    """
    state.set_status("Segmenting images…")
    files = folder if isinstance(folder, NewFiles) else NewFiles(folder)
    with files:
        images = model.predict_masks(
            data, files, callback=task_progress(state, 0,
                                                100 * PREDICT_SHARE))
        raise_if_cancelled(state)
    mask_column = images.domain.metas[-1].name
    return run_measure(images, mask_column, split_touching, state,
                       PREDICT_SHARE, files.path)


class OWSegmentImages(OWWidget, TaskButtonsMixin, OutputFolderMixin):
    name = "Segment Images"
    description = "Predict the masks of images with a segmentation model, " \
                  "count the objects and measure them."
    icon = "icons/SegmentImages.svg"
    priority = 120
    keywords = "segment images, predict masks, segmentation, count " \
               "objects, measure objects, cells, nuclei"

    class Inputs:
        data = Input("Data", Table, default=True)
        model = Input("Model", SegmentationModel)

    class Outputs:
        images = Output("Images with Masks", Table, default=True)
        counts = Output("Counts", Table)
        objects = Output("Objects", Table)

    class Error(OWWidget.Error):
        no_image_column = Msg("The data has no image column.")
        folder_missing = Msg("{}")
        folder_read_only = Msg("{}")
        segmentation_failed = Msg("Segmentation failed: {}")

    class Warning(OWWidget.Warning):
        unreadable = Msg("{} image(s) could not be read and have no mask.")

    class Information(OWWidget.Information):
        # Short: the status bar of this narrow window elides longer text;
        # the Info box says where a model comes from.
        no_model = Msg("No model.")
        written = Msg("{} mask(s) written to {}")

    settings_version = 1
    output_folder: str = Setting("")  # "" for the widget's own folder
    own_folder_id: str = Setting("", schema_only=True)
    split_touching: bool = Setting(False)
    auto_apply: bool = Setting(True)

    uses_own_folder = True

    want_main_area = False
    resizing_enabled = False

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        self.data: Optional[Table] = None
        self.model: Optional[SegmentationModel] = None
        self.result: Optional[SegmentResult] = None
        self._data_changed = False

        box = gui.vBox(self.controlArea, "Info")
        self.info_label = gui.widgetLabel(box, "No data.")
        self.info_label.setWordWrap(True)

        box = gui.vBox(self.controlArea, "Objects")
        gui.checkBox(
            box, self, "split_touching", "Split touching objects",
            callback=self._on_split_changed,
            tooltip="Split objects of a class that touch, by a watershed of "
                    "the distance to the background (e.g. touching "
                    "nuclei); otherwise each connected region is an "
                    "object.")

        box = gui.vBox(self.controlArea, "Output folder")
        self.add_output_folder_row(
            box, dialog_title="Folder for predicted masks",
            tooltip="Masks are written here as new PNG files; nothing is "
                    "ever overwritten.",
            default_tooltip=" (default: this widget's folder in Orange's "
                            "data folder, which keeps the last result's "
                            "masks only)")
        self.folder_label.setMinimumWidth(260)
        # The window has a fixed width: errors are repeated here, wrapped.
        self.wrapped_errors = WrappedErrors(self)
        self.controlArea.layout().addWidget(self.wrapped_errors)

        self.add_cancel_button(self.buttonsArea)
        gui.auto_apply(self.buttonsArea, self, "auto_apply",
                       commit=self.commit)
        self.Information.no_model()

    # --- output folder -------------------------------------------------------

    def default_folder(self) -> str:
        return default_output_folder()

    def output_folder_changed(self):
        self.result = None  # the masks are to be written there
        self.commit.deferred()

    # --- inputs --------------------------------------------------------------

    @Inputs.data
    def set_data(self, data: Optional[Table]):
        self.data = data

    @Inputs.model
    def set_model(self, model: Optional[SegmentationModel]):
        self.model = model

    def handleNewSignals(self):
        self.cancel()
        self.result = None
        self.Error.no_image_column.clear()
        self.Information.no_model(shown=self.model is None)
        if self.data is not None and find_image_column(self.data) is None:
            self.Error.no_image_column()
        self._update_info()
        self.commit.now()

    def _update_info(self):
        if self.data is None:
            text = "No data."
        else:
            text = f"{len(self.data)} image(s)"
            if self.model is not None:
                classes = ", ".join(self.model.class_names[1:])
                text += f"; the model finds: {classes}."
            else:
                text += ("; no model: connect one from Segmentation "
                         "Trainer or Load Model.")
        self.info_label.setText(text)

    def _on_split_changed(self):
        self.commit.deferred()

    # --- work ----------------------------------------------------------------

    @gui.deferred
    def commit(self):
        self.cancel()
        self.Error.folder_missing.clear()
        self.Error.folder_read_only.clear()
        self.Error.segmentation_failed.clear()
        self.Warning.unreadable.clear()
        self.Information.written.clear()
        if self.data is None or self.model is None \
                or self.Error.no_image_column.is_shown():
            self._send(None)
            return
        if self.result is not None:
            # Same images, model and folder: measure the masks again.
            self.start(run_measure, self.result.images,
                       self.result.mask_column, self.split_touching,
                       folder=self.result.folder)
            return
        folder = self.folder()
        try:
            if self.writes_own_folder():
                os.makedirs(folder, exist_ok=True)
            check_output_folder(folder)
        except OSError as error:
            self._show_folder_error(error)
            self._send(None)
            return
        self.start(run_segmentation, self.model, self.data,
                   OwnFolder(folder) if self.writes_own_folder() else folder,
                   self.split_touching)

    def _show_folder_error(self, error: OSError):
        if isinstance(error, FolderMissing):
            self.Error.folder_missing(str(error))
        else:
            self.Error.folder_read_only(str(error))

    def on_done(self, result: SegmentResult):
        self.result = result
        if result.n_unreadable:
            self.Warning.unreadable(result.n_unreadable)
        if result.n_written:
            self.Information.written(result.n_written, result.folder)
        self._send(result)

    def on_exception(self, ex: Exception):
        self._send(None)
        super().on_exception(ex)

    def on_user_error(self, ex: DeepImageError):
        if isinstance(ex, UnwritableFolder):
            self._show_folder_error(ex)
        else:
            self.Error.segmentation_failed(str(ex) or type(ex).__name__)

    def on_partial_result(self, result):
        pass

    def _send(self, result: Optional[SegmentResult]):
        self.Outputs.images.send(result.images if result else None)
        self.Outputs.counts.send(result.counts if result else None)
        self.Outputs.objects.send(result.objects if result else None)

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    def send_report(self):
        items = []
        if self.model is not None:
            items.append(("Model", f"{self.model.backbone}, classes "
                                   f"{', '.join(self.model.class_names)}"))
        items += [("Split touching objects", bool_str(self.split_touching)),
                  ("Output folder", self.folder())]
        self.report_items("Settings", items)
        if self.data is not None:
            self.report_data("Images", self.data)
        if self.result is not None:
            self.report_items("Result", (
                ("Masks written", self.result.n_written),
                ("Objects", len(self.result.objects))))

    @classmethod
    def migrate_settings(cls, settings, version):
        # Version 1 is the first; later versions migrate from here.
        pass


if __name__ == "__main__":  # pragma: no cover
    from orangecontrib.deepimage.segdata import pair_folders
    from orangecontrib.deepimage.segmentation import SegmentationLearner
    TUTORIAL = os.path.join(os.path.dirname(__file__), "..", "tutorials",
                            "nuclei")
    pairs = pair_folders(os.path.join(TUTORIAL, "images"),
                         os.path.join(TUTORIAL, "masks"))[0]
    WidgetPreview(OWSegmentImages).run(
        set_data=pairs,
        set_model=SegmentationLearner(depth=2, epochs=5, tile_size=64)(pairs))
