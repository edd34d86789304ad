"""Segmentation Preview: images with their masks drawn over them.

Pick an image from the list; the widget shows it with the mask over it (in
class colours, filled or as outlines). With two mask columns — the ground
truth from Segmentation Data and a prediction from Segment Images — they are
shown side by side with the image's IoU. The selected images go out.

An image and its masks are read in a worker (the image reduced to fit the
view, masks at full size for the IoU) and the last few are kept, so going
back and forth is instant and the opacity slider only blends again.
"""
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from AnyQt.QtCore import (
    QItemSelection, QItemSelectionModel, QStringListModel, Qt)
from AnyQt.QtWidgets import QAbstractItemView, QLabel, QListView

from orangewidget.report import bool_str

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import (
    ContextSetting, DomainContextHandler, Setting)
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.itemmodels import VariableListModel
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.errors import (
    Cancelled, DeepImageError, raise_if_cancelled)
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, image_paths, is_mask_column,
    load_image)
from orangecontrib.deepimage.segdata import MaskError, load_mask, mask_info
from orangecontrib.deepimage.segmentation import iou_and_dice
from orangecontrib.deepimage.widgets.utils.masks import (
    MaskView, class_colours, legend_html, overlay_mask, report_image_html,
    shrink, to_qimage)
from orangecontrib.deepimage.widgets.utils.tasks import TaskButtonsMixin

#: Images are reduced to fit this size for the view.
VIEW_SIDE = 640
#: Images (with their masks) kept in memory.
CACHE_SIZE = 12


@dataclass
class LoadedView:
    """An image and its masks, reduced for the view, and their IoU."""
    image: Optional[np.ndarray]  # (h, w, 3) uint8
    masks: List[Optional[np.ndarray]]  # (h, w) labels, one per mask column
    problems: List[str] = field(default_factory=list)
    iou: Optional[float] = None  # between the two masks, at full size


def image_iou(truth: np.ndarray, prediction: np.ndarray, binary: bool
              ) -> float:
    """Mean IoU over the foreground classes present in either mask
    (`binary`: of the foreground as a whole, e.g. for instance masks);
    NaN when both are all background."""
    if binary:
        truth, prediction = truth > 0, prediction > 0
    n_classes = int(max(truth.max(initial=0), prediction.max(initial=0))) + 1
    scores = iou_and_dice(truth, prediction, max(n_classes, 2))["iou"][1:]
    return float(np.nanmean(scores)) if np.isfinite(scores).any() \
        else float("nan")


def load_view(image_path: Optional[str],
              masks: Sequence[Tuple[Optional[str], str]],
              state: Optional[TaskState] = None) -> LoadedView:
    """Read an image and its masks (runs in a worker thread).

    Parameters
    ----------
    image_path : str or None
    masks : sequence of (str or None, str)
        Path and kind (``"class"`` or ``"instance"``) of each mask.
    """
    problems = []
    image = None
    try:
        image = np.asarray(load_image(image_path), dtype=np.uint8)
    except ImageSkipped as error:
        problems.append(f"image: {error}")
    full = []
    for path, kind in masks:
        raise_if_cancelled(state)  # another image was chosen meanwhile
        if not path:
            problems.append("no mask in this row")
            full.append(None)
            continue
        try:
            mask = load_mask(path, kind)
        except (MaskError, OSError) as error:
            problems.append(str(error))
            full.append(None)
            continue
        if image is not None and mask.shape != image.shape[:2]:
            problems.append(f"the mask is {mask.shape[1]}×{mask.shape[0]} "
                            f"but the image {image.shape[1]}×"
                            f"{image.shape[0]}")
            full.append(None)
            continue
        full.append(mask)
    iou = None
    if len(full) == 2 and full[0] is not None and full[1] is not None \
            and full[0].shape == full[1].shape:
        iou = image_iou(full[0], full[1],
                        binary="instance" in [kind for _, kind in masks])
    if image is None:
        shape = next((mask.shape for mask in full if mask is not None), None)
        if shape is not None:  # show the masks over grey
            image = np.full(shape + (3,), 96, np.uint8)
    if image is not None:
        image = shrink(image, VIEW_SIDE)
    return LoadedView(
        image, [None if mask is None else shrink(mask, VIEW_SIDE, True)
                for mask in full], problems, iou)


class OWSegmentationPreview(OWWidget, TaskButtonsMixin):
    name = "Segmentation Preview"
    description = "Show images with their masks; compare the ground truth " \
                  "with a prediction, with each image's IoU."
    icon = "icons/SegmentationPreview.svg"
    priority = 130
    keywords = "segmentation preview, masks, overlay, ground truth, " \
               "prediction, iou, compare"

    class Inputs:
        data = Input("Data", Table, default=True)

    class Outputs:
        selected = Output("Selected Images", Table, default=True)

    class Error(OWWidget.Error):
        no_image_column = Msg("The data has no image column.")

    class Warning(OWWidget.Warning):
        no_mask_column = Msg("The data has no mask column; the images are "
                             "shown without masks.")

    settingsHandler = DomainContextHandler()
    mask_var = ContextSetting(None)
    compare_var = ContextSetting(None)
    selection: List[int] = Setting([], schema_only=True)
    opacity: int = Setting(50)
    outline: bool = Setting(False)
    auto_commit: bool = Setting(True)

    settings_version = 1
    want_main_area = True

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        self.data: Optional[Table] = None
        self.paths: List[Optional[str]] = []
        self.current_row: Optional[int] = None
        self.loaded: Optional[LoadedView] = None
        self._cache: "OrderedDict[tuple, LoadedView]" = OrderedDict()
        self._pending_selection: List[int] = list(self.selection)

        box = gui.vBox(self.controlArea, "Masks")
        self.mask_model = VariableListModel()
        self.compare_model = VariableListModel(placeholder="(none)")
        gui.comboBox(box, self, "mask_var", label="Mask:",
                     orientation=Qt.Orientation.Horizontal,
                     model=self.mask_model, callback=self._on_masks_changed,
                     tooltip="The mask drawn over the image (the ground "
                             "truth when comparing).")
        gui.comboBox(box, self, "compare_var", label="Compare with:",
                     orientation=Qt.Orientation.Horizontal,
                     model=self.compare_model,
                     callback=self._on_masks_changed,
                     tooltip="A second mask (e.g. a prediction from Segment "
                             "Images), shown beside the first with their "
                             "IoU.")

        box = gui.vBox(self.controlArea, "Display")
        gui.hSlider(box, self, "opacity", minValue=0, maxValue=100, step=5,
                    label="Opacity:", callback=self._draw,
                    createLabel=False)
        gui.checkBox(box, self, "outline", "Outlines only",
                     callback=self._draw,
                     tooltip="Draw only the borders of the regions.")

        box = gui.vBox(self.controlArea, "Images")
        self.list_model = QStringListModel()
        self.list_view = QListView()
        self.list_view.setModel(self.list_model)
        self.list_view.setSelectionMode(
            QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list_view.setEditTriggers(
            QAbstractItemView.EditTrigger.NoEditTriggers)
        self.list_view.setUniformItemSizes(True)
        self.list_view.selectionModel().selectionChanged.connect(
            self._on_selection_changed)
        self.list_view.selectionModel().currentChanged.connect(
            self._on_current_changed)
        box.layout().addWidget(self.list_view)
        gui.auto_send(self.buttonsArea, self, "auto_commit")

        self.view = MaskView()
        self.mainArea.layout().addWidget(self.view)
        self.caption_label = QLabel()
        self.caption_label.setWordWrap(True)
        self.mainArea.layout().addWidget(self.caption_label)
        self.legend_label = QLabel()
        self.legend_label.setWordWrap(True)
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        self.mainArea.layout().addWidget(self.legend_label)
        self._draw()

    # --- data ----------------------------------------------------------------

    @Inputs.data
    def set_data(self, data: Optional[Table]):
        self.closeContext()
        self.cancel()
        self.data = data
        self._cache.clear()
        self.loaded = None
        self.current_row = None
        self.Error.no_image_column.clear()
        self.Warning.no_mask_column.clear()
        self.paths = []
        masks = []
        if data is not None:
            image_var = find_image_column(data)
            masks = [var for var in data.domain.metas if is_mask_column(var)]
            if image_var is None and not masks:
                self.Error.no_image_column()
                self.data = None
            else:
                if image_var is not None:
                    self.paths = image_paths(data, image_var)
                else:
                    self.paths = [None] * len(data)
                if not masks:
                    self.Warning.no_mask_column()
        self.mask_model[:] = masks
        self.compare_model[:] = [None] + masks
        self.mask_var = masks[0] if masks else None
        self.compare_var = masks[-1] if len(masks) > 1 else None
        if self.data is not None:
            self.openContext(self.data)
        self.list_model.setStringList(self._row_names())
        self._restore_selection()
        if self.paths:
            # The first image is shown, not selected.
            self.list_view.selectionModel().setCurrentIndex(
                self.list_model.index(0),
                QItemSelectionModel.SelectionFlag.NoUpdate)
            if self.current_row is None:
                self._show_row(0)
        else:
            self._draw()
        self.commit.now()

    def _row_names(self) -> List[str]:
        if self.data is None:
            return []
        names = None
        if "image name" in self.data.domain:
            var = self.data.domain["image name"]
            if var.is_string:
                names = [str(value) for value in self.data.get_column(var)]
        if names is None:
            names = [os.path.basename(path) if path else ""
                     for path in self.paths]
        return [name or f"row {row + 1}" for row, name in enumerate(names)]

    def _restore_selection(self):
        rows = [row for row in self._pending_selection
                if 0 <= row < len(self.paths)]
        self._pending_selection = []
        self.set_selection(rows)

    def set_selection(self, rows: Sequence[int]):
        """Select these rows in the list (and send them)."""
        selection = QItemSelection()
        for row in rows:
            index = self.list_model.index(row)
            selection.select(index, index)
        self.list_view.selectionModel().select(
            selection, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.selection = sorted(set(rows))

    def _on_selection_changed(self):
        self.selection = sorted(
            index.row() for index in
            self.list_view.selectionModel().selectedRows())
        self.commit.deferred()

    def _on_current_changed(self, current, _previous):
        if current.isValid():
            self._show_row(current.row())

    def _on_masks_changed(self):
        self.loaded = None
        if self.current_row is not None:
            self._show_row(self.current_row)

    # --- reading images ------------------------------------------------------

    def _mask_vars(self) -> list:
        return [var for var in (self.mask_var, self.compare_var)
                if var is not None]

    def _cache_key(self, row: int) -> tuple:
        return (row,) + tuple(var.name for var in self._mask_vars())

    def _show_row(self, row: int):
        """Show the image of `row`: from the cache, or read in a worker."""
        self.current_row = row
        key = self._cache_key(row)
        if key in self._cache:
            self.cancel()
            self._cache.move_to_end(key)
            self.loaded = self._cache[key]
            self._draw()
            return
        self.loaded = None
        masks = []
        for var in self._mask_vars():
            path = image_paths(self.data[row:row + 1], var)[0]
            masks.append((path, mask_info(var).kind))
        self.view.clear("Loading…")
        self.start(load_view, self.paths[row], masks)

    def on_done(self, result: LoadedView):
        key = self._cache_key(self.current_row)
        self._cache[key] = result
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        self.loaded = result
        self._draw()

    def on_exception(self, ex: Exception):
        if not isinstance(ex, Cancelled):
            self.loaded = None
            self.view.clear("Cannot show this image.")
        super().on_exception(ex)

    def on_user_error(self, ex: DeepImageError):
        self.view.clear(f"Cannot show this image: {ex}")

    def on_partial_result(self, result):
        pass

    # --- drawing -------------------------------------------------------------

    def _draw(self):
        """Blend the loaded image with its masks (cheap: a reduced image)."""
        self.legend_label.setText(self._legend())
        loaded = self.loaded
        if loaded is None:
            self.caption_label.setText("")
            self.view.clear("No data." if self.data is None
                            else "No images." if not self.paths
                            else "Loading…")
            return
        if loaded.image is None:
            self.view.clear("Cannot show this image: "
                            + "; ".join(loaded.problems))
            self.caption_label.setText("")
            return
        variables = self._mask_vars()
        images = []
        if not variables:
            images.append((to_qimage(loaded.image), "image"))
        for index, (var, mask) in enumerate(zip(variables, loaded.masks)):
            colours = _colours(var)
            caption = var.name
            if index == 1 and loaded.iou is not None:
                caption += f" — IoU {_score(loaded.iou)}"
            images.append((to_qimage(overlay_mask(
                loaded.image, mask, colours, self.opacity / 100,
                self.outline)), caption))
        self.view.set_images(images)
        self.caption_label.setText(self._caption())

    def _caption(self) -> str:
        if self.current_row is None or self.loaded is None:
            return ""
        names = self.list_model.stringList()
        text = names[self.current_row] if self.current_row < len(names) \
            else ""
        if self.loaded.iou is not None:
            text += f": IoU {_score(self.loaded.iou)} between " \
                    f"{self.mask_var.name} and {self.compare_var.name}"
        if self.loaded.problems:
            text += " (" + "; ".join(self.loaded.problems) + ")"
        return text

    def _legend(self) -> str:
        lines = []
        seen = []
        for var in self._mask_vars():
            info = mask_info(var)
            instance, names = info.instance, \
                list(info.classes) or info.model_classes
            key = (instance, tuple(names))
            if key in seen:
                continue
            seen.append(key)
            lines.append(legend_html(names, class_colours(len(names)),
                                     instance=instance))
        return "<br/>".join(lines)

    # --- output and report ---------------------------------------------------

    @gui.deferred
    def commit(self):
        if self.data is None or not self.selection:
            self.Outputs.selected.send(None)
        else:
            self.Outputs.selected.send(self.data[self.selection])

    def send_report(self):
        if self.data is None:
            return
        self.report_items("Display", (
            ("Mask", self.mask_var.name if self.mask_var else "none"),
            ("Compared with",
             self.compare_var.name if self.compare_var else "none"),
            ("Opacity", f"{self.opacity} %"),
            ("Outlines only", bool_str(self.outline))))
        if self.loaded is not None and self.loaded.image is not None:
            images = [overlay_mask(self.loaded.image, mask, _colours(var),
                                   self.opacity / 100, self.outline)
                      for var, mask in zip(self._mask_vars(),
                                           self.loaded.masks)] \
                or [self.loaded.image]
            self.report_raw(self._caption(), report_image_html(
                images, alt="image with masks"))
        if self.selection:
            self.report_items("Selection", (
                ("Selected images", len(self.selection)),))

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    @classmethod
    def migrate_settings(cls, settings, version):
        # Version 1 is the first; later versions migrate from here.
        pass


def _colours(var) -> np.ndarray:
    """The colours of a mask column's classes (at least two)."""
    return class_colours(max(len(mask_info(var).classes), 2))


def _score(value: Optional[float]) -> str:
    return f"{value:.3f}" if value is not None and np.isfinite(value) \
        else "–"


if __name__ == "__main__":  # pragma: no cover
    from orangecontrib.deepimage.segdata import pair_folders
    TUTORIAL = os.path.join(os.path.dirname(__file__), "..", "tutorials",
                            "nuclei")
    WidgetPreview(OWSegmentationPreview).run(
        pair_folders(os.path.join(TUTORIAL, "images"),
                     os.path.join(TUTORIAL, "masks"))[0])
