"""Edit Images: remove, blur, pixelate, fill or cut out objects by masks."""
import base64
import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import List, Optional

import numpy as np
from AnyQt.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from AnyQt.QtGui import (
    QBrush, QColor, QIcon, QImage, QPainter, QPen, QPixmap)
from AnyQt.QtWidgets import (
    QAbstractItemView, QColorDialog, QListWidget, QListWidgetItem,
    QSizePolicy, QSlider, QWidget)
from PIL import Image

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.concurrent import FutureWatcher, TaskState
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.edit import (
    DEFAULT_BLUR_RADIUS, DEFAULT_PIXEL_SIZE, METHODS, OPERATIONS,
    EditResult, default_output_folder, edit_images, first_touched_row,
    preview_edit)
from orangecontrib.deepimage.errors import DeepImageError
from orangecontrib.deepimage.files import (
    FolderMissing, FolderReadOnly, check_output_folder)
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, find_mask_column, image_paths)
from orangecontrib.deepimage.segdata import mask_info
from orangecontrib.deepimage.widgets.utils.outputfolder import (
    OutputFolderMixin)
from orangecontrib.deepimage.widgets.utils.masks import to_qimage
from orangecontrib.deepimage.widgets.utils.tasks import (
    TaskButtonsMixin, task_progress)

OPERATION_KEYS = list(OPERATIONS)
METHOD_KEYS = list(METHODS)
#: The preview is computed on the image reduced to fit this size.
PREVIEW_SIZE = 800
#: The most images listed for the preview.
MAX_PREVIEW_ROWS = 1000
#: The most masks read to find an image the operation changes.
MAX_PREVIEW_SEARCH = 200


def run_edit(data: Table, operation: str, classes: Optional[List[str]],
             dilate: int, out_dir: Optional[str], method: str,
             blur_radius: float, pixel_size: int, colour: str,
             state: TaskState) -> EditResult:
    """Edit the images of `data` and write them (runs in a worker thread)."""
    state.set_status("Editing images…")
    return edit_images(data, operation, classes=classes, dilate=dilate,
                       out_dir=out_dir, method=method,
                       blur_radius=blur_radius, pixel_size=pixel_size,
                       colour=colour, progress=task_progress(state))


class BeforeAfterView(QWidget):
    """An image split by a vertical line: the original left of the line,
    the edited image right of it; drag (or click) to move the line."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.before: Optional[QImage] = None
        self.after: Optional[QImage] = None
        self.split = 0.5
        self.message = ""
        self.setMinimumSize(240, 180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding,
                           QSizePolicy.Policy.Expanding)
        self.setMouseTracking(False)
        checker = QPixmap(16, 16)
        checker.fill(QColor(255, 255, 255))
        painter = QPainter(checker)
        painter.fillRect(0, 0, 8, 8, QColor(204, 204, 204))
        painter.fillRect(8, 8, 8, 8, QColor(204, 204, 204))
        painter.end()
        self._checker = QBrush(checker)

    def sizeHint(self):
        return QSize(480, 360)

    def set_images(self, before: Optional[QImage], after: Optional[QImage],
                   message: str = ""):
        self.before, self.after, self.message = before, after, message
        self.update()

    def set_split(self, fraction: float):
        self.split = float(min(1.0, max(0.0, fraction)))
        self.update()

    def image_rect(self) -> QRectF:
        if self.before is None:
            return QRectF()
        width, height = self.before.width(), self.before.height()
        scale = min((self.width() - 8) / width, (self.height() - 8) / height)
        scale = max(scale, 1e-3)
        return QRectF((self.width() - width * scale) / 2,
                      (self.height() - height * scale) / 2,
                      width * scale, height * scale)

    def paintEvent(self, _event):
        painter = QPainter(self)
        if self.before is None:
            painter.setPen(self.palette().color(self.foregroundRole()))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter
                             | Qt.TextFlag.TextWordWrap,
                             self.message or "No image")
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        target = self.image_rect()
        painter.fillRect(target, self._checker)
        split_x = target.left() + self.split * target.width()
        painter.save()
        painter.setClipRect(QRectF(target.left(), target.top(),
                                   split_x - target.left(), target.height()))
        painter.drawImage(target, self.before)
        painter.restore()
        after = self.after if self.after is not None else self.before
        painter.save()
        painter.setClipRect(QRectF(split_x, target.top(),
                                   target.right() - split_x, target.height()))
        painter.drawImage(target, after)
        painter.restore()
        painter.setPen(QPen(QColor(255, 255, 255), 2))
        painter.drawLine(QPointF(split_x, target.top()),
                         QPointF(split_x, target.bottom()))
        painter.setPen(QPen(QColor(0, 0, 0, 160), 1))
        painter.drawLine(QPointF(split_x + 1.5, target.top()),
                         QPointF(split_x + 1.5, target.bottom()))
        self._label(painter, target.topLeft() + QPointF(6, 6), "before")
        right = QPointF(target.right() - 6, target.top() + 6)
        self._label(painter, right, "after", align_right=True)
        if self.message:
            self._label(painter, QPointF(target.left() + 6,
                                         target.bottom() - 26), self.message)

    @staticmethod
    def _label(painter, point, text, align_right=False):
        metrics = painter.fontMetrics()
        rect = QRectF(metrics.boundingRect(text)).adjusted(-4, -2, 4, 2)
        rect.moveTopLeft(point - QPointF(rect.width(), 0) if align_right
                         else point)
        painter.fillRect(rect, QColor(0, 0, 0, 140))
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)

    def _move_split(self, event):
        target = self.image_rect()
        if target.width() > 0:
            self.set_split((event.position().x() - target.left())
                           / target.width())

    def mousePressEvent(self, event):
        self._move_split(event)

    def mouseMoveEvent(self, event):
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._move_split(event)


class OWEditImages(OWWidget, TaskButtonsMixin, OutputFolderMixin):
    name = "Edit Images"
    description = "Remove, blur, pixelate, fill or cut out objects by " \
                  "their masks; the edited images are written as new files."
    icon = "icons/EditImages.svg"
    priority = 80
    keywords = "edit images, remove objects, inpainting, inpaint, blur, " \
               "pixelate, anonymise, number plates, fill, cut out, mask"

    class Inputs:
        data = Input("Data", Table, default=True)

    class Outputs:
        edited_images = Output("Edited Images", Table, default=True)

    class Error(OWWidget.Error):
        no_image_column = Msg("The data has no image column.")
        no_mask_column = Msg("The data has no mask column; connect Segment "
                             "Images or Segmentation Data.")
        folder_missing = Msg("{}")
        folder_read_only = Msg("{}")
        edit_failed = Msg("Editing failed: {}")

    class Warning(OWWidget.Warning):
        images_skipped = Msg("{} image(s) were skipped: {}")
        no_classes = Msg("No class is chosen: there is nothing to edit.")

    class Information(OWWidget.Information):
        written = Msg("{} edited image(s) written to {}")

    settings_version = 1
    operation: str = Setting("remove")
    # Names of the classes to edit; None for all but the background.
    selected_classes: Optional[List[str]] = Setting(None, schema_only=True)
    dilate: int = Setting(3)
    method: str = Setting("fast")
    blur_radius: int = Setting(int(DEFAULT_BLUR_RADIUS))
    pixel_size: int = Setting(DEFAULT_PIXEL_SIZE)
    fill_colour: str = Setting("#000000")
    output_folder: str = Setting("")  # "" for default_output_folder()
    auto_commit: bool = Setting(False)

    want_main_area = True

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        self.data: Optional[Table] = None
        self.paths: List[Optional[str]] = []
        self.mask_paths: List[Optional[str]] = []
        self.class_names: List[str] = []
        self.mask_kind = "class"
        self.preview_row = 0
        self._preview_chosen = False
        self.preview_pixels = None  # (before, after) arrays of the preview
        self._preview_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="deepimage-edit-preview")
        self._preview_watcher: Optional[FutureWatcher] = None
        self._preview_generation = 0
        self._preview_closed = False
        self._preview_timer = QTimer(self, singleShot=True, interval=150)
        self._preview_timer.timeout.connect(self._start_preview)
        if self.operation not in OPERATIONS:
            self.operation = "remove"
        if self.method not in METHODS:
            self.method = "fast"

        box = gui.vBox(self.controlArea, "Images")
        self.info_label = gui.widgetLabel(box, "No data.")
        self.info_label.setWordWrap(True)

        box = gui.vBox(self.controlArea, "Edit")
        self.operation_combo = gui.comboBox(
            box, self, None, label="Operation:", orientation=Qt.Horizontal)
        for key in OPERATION_KEYS:
            self.operation_combo.addItem(OPERATIONS[key].label, key)
            self.operation_combo.setItemData(
                self.operation_combo.count() - 1,
                OPERATIONS[key].description, Qt.ItemDataRole.ToolTipRole)
        self.operation_combo.setCurrentIndex(
            OPERATION_KEYS.index(self.operation))
        self.operation_combo.activated.connect(self._on_operation_changed)

        gui.widgetLabel(box, "Classes:")
        self.class_list = QListWidget(
            selectionMode=QAbstractItemView.SelectionMode.ExtendedSelection)
        self.class_list.setMaximumHeight(110)
        self.class_list.setToolTip("The classes to edit (Ctrl/Cmd-click to "
                                   "choose several).")
        self.class_list.itemSelectionChanged.connect(self._on_classes_changed)
        box.layout().addWidget(self.class_list)

        gui.spin(box, self, "dilate", 0, 100, label="Dilation (px):",
                 controlWidth=70, callback=self._on_parameter_changed,
                 tooltip="Grow the masks by this many pixels to cover "
                         "object edges.")
        self.method_box = gui.hBox(box)
        self.method_combo = gui.comboBox(
            self.method_box, self, None, label="Method:",
            orientation=Qt.Horizontal, contentsLength=18)
        for key in METHOD_KEYS:
            self.method_combo.addItem(METHODS[key], key)
        self.method_combo.setCurrentIndex(METHOD_KEYS.index(self.method))
        self.method_combo.activated.connect(self._on_method_changed)
        self.blur_box = gui.hBox(box)
        gui.spin(self.blur_box, self, "blur_radius", 1, 200,
                 label="Blur strength (px):", controlWidth=70,
                 callback=self._on_parameter_changed,
                 tooltip="The sigma of the Gaussian blur, in pixels.")
        self.pixel_box = gui.hBox(box)
        gui.spin(self.pixel_box, self, "pixel_size", 2, 256,
                 label="Pixel size (px):", controlWidth=70,
                 callback=self._on_parameter_changed)
        self.colour_box = gui.hBox(box)
        gui.widgetLabel(self.colour_box, "Colour:")
        self.colour_button = gui.button(
            self.colour_box, self, "", callback=self.choose_colour,
            autoDefault=False)
        self._update_colour_button()
        self._show_parameters()

        box = gui.vBox(self.controlArea, "Output folder")
        self.add_output_folder_row(
            box, dialog_title="Folder for the edited images",
            tooltip="Edited images are written here as new files; nothing "
                    "is ever overwritten. Empty: a folder in Orange's data "
                    "folder.",
            editable=True)
        self.controlArea.layout().addStretch(1)

        self.add_cancel_button(self.buttonsArea)
        gui.auto_commit(self.buttonsArea, self, "auto_commit",
                        "Write Images", checkbox_label="Write automatically")

        preview_box = gui.vBox(self.mainArea, "Preview")
        self.preview_combo = gui.comboBox(
            preview_box, self, None, label="Image:",
            orientation=Qt.Horizontal)
        self.preview_combo.activated.connect(self._on_preview_row_changed)
        self.preview_view = BeforeAfterView()
        preview_box.layout().addWidget(self.preview_view)
        self.split_slider = QSlider(Qt.Orientation.Horizontal, minimum=0,
                                    maximum=100, value=50)
        self.split_slider.setToolTip("Left of the line: the original; "
                                     "right: the edited image.")
        preview_box.layout().addWidget(self.split_slider)
        self.split_slider.valueChanged.connect(
            lambda value: self.preview_view.set_split(value / 100))

    # --- controls ------------------------------------------------------------

    def _show_parameters(self):
        parameters = OPERATIONS[self.operation].parameters
        self.method_box.setVisible("method" in parameters)
        self.blur_box.setVisible("blur_radius" in parameters)
        self.pixel_box.setVisible("pixel_size" in parameters)
        self.colour_box.setVisible("colour" in parameters)

    def set_operation(self, operation: str):
        """Use `operation` (a key of :data:`OPERATIONS`)."""
        if operation not in OPERATIONS:
            raise ValueError(f"Unknown operation. Received: "
                             f"operation={operation!r}")
        self.operation_combo.setCurrentIndex(OPERATION_KEYS.index(operation))
        self._on_operation_changed()

    def _on_operation_changed(self):
        self.operation = self.operation_combo.currentData()
        self._show_parameters()
        self._on_parameter_changed()

    def _on_method_changed(self):
        self.method = self.method_combo.currentData()
        self._on_parameter_changed()

    def _on_parameter_changed(self):
        self._schedule_preview()
        self.commit.deferred()

    def choose_colour(self):
        colour = QColorDialog.getColor(QColor(self.fill_colour), self,
                                       "Fill colour")
        if colour.isValid():
            self.set_fill_colour(colour.name())

    def set_fill_colour(self, colour: str):
        """Fill with `colour` ("#rrggbb")."""
        self.fill_colour = QColor(colour).name()
        self._update_colour_button()
        self._on_parameter_changed()

    def _update_colour_button(self):
        pixmap = QPixmap(32, 14)
        pixmap.fill(QColor(self.fill_colour))
        self.colour_button.setIcon(QIcon(pixmap))
        self.colour_button.setText(self.fill_colour)

    def _on_classes_changed(self):
        chosen = [item.text() for item in self.class_list.selectedItems()]
        chosen.sort(key=self.class_names.index)
        self.selected_classes = chosen
        self.Warning.no_classes(shown=self.data is not None
                                and bool(self.class_names) and not chosen)
        if not self._preview_chosen:
            self._preview_touched_row()
        self._on_parameter_changed()

    def _fill_classes(self):
        """List the mask column's classes; select the stored ones."""
        self.class_list.blockSignals(True)
        self.class_list.clear()
        stored = self.selected_classes
        present = [name for name in stored or () if name in self.class_names]
        if stored is None or (stored and not present):
            # Default, or classes of other data: all but the background.
            present = self.class_names[1:]
        for name in self.class_names:
            item = QListWidgetItem(name)
            self.class_list.addItem(item)
            item.setSelected(name in present)
        self.class_list.setEnabled(bool(self.class_names))
        self.class_list.blockSignals(False)
        if self.class_names:
            self.selected_classes = present
        self.Warning.no_classes(shown=bool(self.class_names) and not present)

    def _classes_argument(self) -> Optional[List[str]]:
        if not self.class_names or self.mask_kind == "instance":
            return None
        return list(self.selected_classes or [])

    def _folder_argument(self) -> Optional[str]:
        return self.output_folder or None

    def default_folder(self) -> str:
        return default_output_folder()

    def output_folder_changed(self):
        self._check_folder()
        self.commit.deferred()

    def _check_folder(self) -> bool:
        self.Error.folder_missing.clear()
        self.Error.folder_read_only.clear()
        if not self.output_folder:
            return True
        try:
            check_output_folder(self.output_folder)
        except FolderMissing as error:
            self.Error.folder_missing(str(error))
            return False
        except FolderReadOnly as error:
            self.Error.folder_read_only(str(error))
            return False
        return True

    # --- data ----------------------------------------------------------------

    @Inputs.data
    def set_data(self, data: Optional[Table]):
        self.cancel()
        self.data = data
        self.Error.no_image_column.clear()
        self.Error.no_mask_column.clear()
        self.paths, self.mask_paths, self.class_names = [], [], []
        self.mask_kind = "class"
        if data is not None:
            image_column = find_image_column(data)
            mask_column = find_mask_column(data)
            if image_column is None:
                self.Error.no_image_column()
            elif mask_column is None:
                self.Error.no_mask_column()
            else:
                self.paths = image_paths(data, image_column)
                self.mask_paths = image_paths(data, mask_column)
                info = mask_info(mask_column)
                self.mask_kind = info.kind
                if not info.instance:
                    self.class_names = list(info.classes)
        self._fill_classes()
        self._update_info()
        self._fill_preview_rows()
        self._schedule_preview(now=True)
        if self.paths:
            self.commit.deferred()
        else:
            self.commit.now()

    def _update_info(self):
        if self.data is None:
            text = "No data."
        elif not self.paths:
            text = f"{len(self.data)} rows, no images with masks."
        else:
            if self.mask_kind == "instance":
                kind = "instance masks (every object is edited)"
            elif self.class_names:
                kind = f"{len(self.class_names) - 1} classes"
            else:
                kind = "masks without class names (every object is edited)"
            text = f"{len(self.paths)} images, {kind}."
        self.info_label.setText(text)

    # --- preview -------------------------------------------------------------

    def _fill_preview_rows(self):
        self.preview_combo.clear()
        for row, path in enumerate(self.paths[:MAX_PREVIEW_ROWS]):
            name = os.path.basename(path) if path else f"(row {row + 1})"
            self.preview_combo.addItem(name, row)
        self._preview_chosen = False
        self._preview_touched_row()
        self.preview_combo.setEnabled(bool(self.paths))

    def _preview_touched_row(self):
        """Preview an image the operation changes, not one it leaves as is:
        the first whose mask has a chosen class (masks read up to it)."""
        row = first_touched_row(
            self.mask_paths, self._classes_argument(), self.class_names,
            self.mask_kind, min(MAX_PREVIEW_SEARCH, MAX_PREVIEW_ROWS)) \
            if self.paths else None
        self.preview_row = row or 0
        self.preview_combo.setCurrentIndex(self.preview_row)

    def _on_preview_row_changed(self):
        self.preview_row = self.preview_combo.currentData() or 0
        self._preview_chosen = True  # the user's choice stays
        self._schedule_preview(now=True)

    def _schedule_preview(self, now=False):
        self._preview_generation += 1
        self.preview_pixels = None  # stale until the new one is ready
        if now:
            self._preview_timer.stop()
            self._start_preview()
        else:
            self._preview_timer.start()

    def _start_preview(self):
        if self._preview_closed:  # the widget is being deleted
            return
        self._preview_generation += 1
        self.preview_pixels = None
        if not self.paths:
            self.preview_view.set_images(
                None, None, "" if self.data is None
                else "No images with masks to preview.")
            return
        row = self.preview_row
        kwargs = dict(kind=self.mask_kind, classes=self._classes_argument(),
                      class_names=self.class_names, dilate=self.dilate,
                      method=self.method, blur_radius=self.blur_radius,
                      pixel_size=self.pixel_size, colour=self.fill_colour,
                      max_size=PREVIEW_SIZE)
        future = self._preview_executor.submit(
            _preview, self.paths[row], self.mask_paths[row], self.operation,
            kwargs)
        generation = self._preview_generation
        watcher = FutureWatcher(future, parent=self)
        watcher.done.connect(
            lambda done: self._on_preview_done(done, generation))
        self._preview_watcher = watcher

    def _on_preview_done(self, future: Future, generation: int):
        if generation != self._preview_generation or future.cancelled():
            return
        try:
            before, after = future.result()
        except Exception as error:  # pylint: disable=broad-except
            self.preview_pixels = None
            self.preview_view.set_images(None, None,
                                         f"No preview: {error}")
            return
        self.preview_pixels = (before, after)
        self.preview_view.set_images(to_qimage(before), to_qimage(after))

    # --- work ----------------------------------------------------------------

    @gui.deferred
    def commit(self):
        self.cancel()
        self.Error.edit_failed.clear()
        self.Warning.images_skipped.clear()
        self.Information.written.clear()
        if not self.paths or not self._check_folder() \
                or self.Warning.no_classes.is_shown():
            self.Outputs.edited_images.send(None)
            return
        self.start(run_edit, self.data, self.operation,
                   self._classes_argument(), self.dilate,
                   self._folder_argument(), self.method,
                   float(self.blur_radius), self.pixel_size, self.fill_colour)

    def on_done(self, result: EditResult):
        if result.skipped:
            reasons = "; ".join(f"row {row + 1}: {reason}"
                                for row, reason in result.skipped[:3])
            more = ", …" if len(result.skipped) > 3 else ""
            self.Warning.images_skipped(len(result.skipped), reasons + more)
        if result.files:
            self.Information.written(len(result.files), result.out_dir)
        self.Outputs.edited_images.send(result.table)

    def on_exception(self, ex: Exception):
        self.Outputs.edited_images.send(None)
        super().on_exception(ex)

    def on_user_error(self, ex: DeepImageError):
        if isinstance(ex, FolderMissing):
            self.Error.folder_missing(str(ex))
        elif isinstance(ex, FolderReadOnly):
            self.Error.folder_read_only(str(ex))
        else:
            self.Error.edit_failed(str(ex) or type(ex).__name__)

    def on_partial_result(self, result):
        pass

    def onDeleteWidget(self):
        self.shutdown()
        self._preview_generation += 1
        # A pending preview must not start on the closed executor.
        self._preview_closed = True
        self._preview_timer.stop()
        self._preview_executor.shutdown(wait=False, cancel_futures=True)
        super().onDeleteWidget()

    def send_report(self):
        items = [("Operation", OPERATIONS[self.operation].label)]
        classes = self._classes_argument()
        if classes is not None:
            items.append(("Classes", ", ".join(classes) or "none"))
        items.append(("Dilation", f"{self.dilate} px"))
        parameters = OPERATIONS[self.operation].parameters
        if "method" in parameters:
            items.append(("Method", METHODS[self.method]))
        if "blur_radius" in parameters:
            items.append(("Blur strength", f"{self.blur_radius} px"))
        if "pixel_size" in parameters:
            items.append(("Pixel size", f"{self.pixel_size} px"))
        if "colour" in parameters:
            items.append(("Colour", self.fill_colour))
        items.append(("Output folder", self.folder()))
        self.report_items("Settings", items)
        if self.data is not None:
            self.report_data("Images", self.data)
        if self.preview_pixels is not None:
            name = self.preview_combo.currentText()
            self.report_raw(f"Before and after: {name}",
                            _report_image(*self.preview_pixels))


def _preview(image_path, mask_path, operation, kwargs):
    if not image_path:
        raise ImageSkipped("no image in this row")
    if not mask_path:
        raise ImageSkipped("no mask in this row")
    return preview_edit(image_path, mask_path, operation, **kwargs)


def _report_image(before: np.ndarray, after: np.ndarray,
                  height: int = 240) -> str:
    """An HTML <img> of the original and the edited image side by side."""
    images = [Image.fromarray(np.ascontiguousarray(pixels)).convert("RGBA")
              for pixels in (before, after)]
    scale = min(1.0, height / images[0].height)
    size = (max(1, round(images[0].width * scale)),
            max(1, round(images[0].height * scale)))
    canvas = Image.new("RGBA", (2 * size[0] + 8, size[1]), (255, 255, 255, 0))
    for index, image in enumerate(images):
        canvas.paste(image.resize(size), (index * (size[0] + 8), 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" ' \
           f'alt="before and after"/>'


if __name__ == "__main__":  # pragma: no cover
    from orangecontrib.deepimage.segdata import pair_folders
    TUTORIAL = os.path.join(os.path.dirname(__file__), "..", "tutorials",
                            "edit")
    WidgetPreview(OWEditImages).run(
        pair_folders(os.path.join(TUTORIAL, "images"),
                     os.path.join(TUTORIAL, "masks"))[0])
