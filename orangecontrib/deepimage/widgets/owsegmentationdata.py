"""Segmentation Data: pair a folder of images with a folder of masks."""
import os
from typing import List, Optional, Tuple

from AnyQt.QtCore import QStringListModel, Qt
from AnyQt.QtWidgets import (
    QCompleter, QFileDialog, QGridLayout, QLabel, QLineEdit)

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Msg, Output, OWWidget

from orangecontrib.deepimage.errors import DeepImageError, InvalidInput
from orangecontrib.deepimage.segdata import (
    FolderNotFound, PairingReport, pair_folders)
from orangecontrib.deepimage.widgets.utils.messages import WrappedErrors
from orangecontrib.deepimage.widgets.utils.tasks import (
    TaskButtonsMixin, task_progress)

#: (setting value, combo text); settings store the value, not the index.
KINDS = [("auto", "Automatic"), ("class", "Class masks"),
         ("instance", "Instance masks")]
MAX_RECENT = 10
MAX_NAMES_SHOWN = 3


def run_pairing(images_dir: str, masks_dir: str, classes: Optional[str],
                kind: Optional[str], state: TaskState
                ) -> Tuple[Optional[Table], PairingReport]:
    """Pair the folders (runs in a worker thread); see `pair_folders`."""
    state.set_status("Pairing images and masks…")
    return pair_folders(images_dir, masks_dir, classes=classes, kind=kind,
                        callback=task_progress(state))


def _examples(names: List[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


class OWSegmentationData(OWWidget, TaskButtonsMixin):
    name = "Segmentation Data"
    description = "Pair a folder of images with a folder of masks " \
                  "(class or instance labels) for segmentation."
    icon = "icons/SegmentationData.svg"
    priority = 100
    keywords = "segmentation data, masks, labels, import masks, " \
               "ground truth, annotation"

    class Outputs:
        data = Output("Data", Table)

    class Error(OWWidget.Error):
        folder_missing = Msg("The {} folder does not exist: {}")
        nothing_paired = Msg("No image could be paired with a usable mask.")
        bad_classes = Msg("{}")
        pairing_failed = Msg("Pairing failed: {}")

    class Warning(OWWidget.Warning):
        unpaired_images = Msg("{} image(s) have no mask: {}")
        unpaired_masks = Msg("{} mask(s) have no image: {}")
        ambiguous = Msg("{} image(s) left out because their pairing is "
                        "ambiguous: {}")
        size_mismatch = Msg("{} pair(s) left out because the image and the "
                            "mask differ in size: {}")
        unknown_values = Msg("{} mask(s) left out because they hold values "
                             "that are not classes: {}")
        rgb_masks = Msg("{} mask(s) left out because they are RGB colour "
                        "images; masks must hold class indices or object "
                        "ids (a grey or palette PNG): {}")
        unreadable = Msg("{} file(s) could not be read: {}")

    class Information(OWWidget.Information):
        no_folder = Msg("Choose a folder of images and a folder of masks.")

    settings_version = 1
    images_dir: str = Setting("")
    masks_dir: str = Setting("")
    # The same folders relative to the workflow's folder, so a workflow
    # moved together with its data (e.g. a tutorial) still finds them.
    images_relative: str = Setting("")
    masks_relative: str = Setting("")
    recent_images: List[str] = Setting([])
    recent_masks: List[str] = Setting([])
    class_names: str = Setting("")
    mask_kind: str = Setting("auto")

    want_main_area = False
    resizing_enabled = False

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        self.report_result: Optional[PairingReport] = None
        self.output: Optional[Table] = None
        if self.mask_kind not in [key for key, _ in KINDS]:
            self.mask_kind = "auto"

        box = gui.vBox(self.controlArea, "Folders")
        grid = QGridLayout()
        gui.widgetBox(box, orientation=grid)
        self.images_edit = self._folder_row(
            grid, 0, "Images:", self.images_dir, self.recent_images,
            self._on_images_edited, self.browse_images)
        self.masks_edit = self._folder_row(
            grid, 1, "Masks:", self.masks_dir, self.recent_masks,
            self._on_masks_edited, self.browse_masks)

        box = gui.vBox(self.controlArea, "Masks")
        self.kind_combo = gui.comboBox(
            box, self, None, label="Kind:", orientation=Qt.Horizontal,
            items=[text for _, text in KINDS])
        self.kind_combo.setCurrentIndex(
            [key for key, _ in KINDS].index(self.mask_kind))
        self.kind_combo.activated.connect(self._on_kind_changed)
        self.classes_edit = QLineEdit(self.class_names)
        self.classes_edit.setPlaceholderText(
            "from classes.txt, or background, class 1, …")
        self.classes_edit.setToolTip(
            "Class names, comma-separated, background first; they override "
            "a classes.txt in the masks folder.")
        self.classes_edit.editingFinished.connect(self._on_classes_edited)
        hbox = gui.hBox(box)
        hbox.layout().addWidget(QLabel("Classes:"))
        hbox.layout().addWidget(self.classes_edit)

        box = gui.vBox(self.controlArea, "Found")
        self.info_label = gui.widgetLabel(box, "No data.")
        self.info_label.setWordWrap(True)
        # The window has a fixed width: errors are repeated here, wrapped.
        self.wrapped_errors = WrappedErrors(self)
        self.controlArea.layout().addWidget(self.wrapped_errors)

        gui.button(self.buttonsArea, self, "Reload", callback=self.reload,
                   autoDefault=False)
        self.reload()

    def _folder_row(self, grid, row, title, path, recent, on_edited,
                    on_browse) -> QLineEdit:
        edit = QLineEdit(path)
        edit.setPlaceholderText("choose a folder")
        edit.setMinimumWidth(280)
        completer = QCompleter(edit)
        completer.setModel(QStringListModel(recent, completer))
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        edit.setCompleter(completer)
        edit.editingFinished.connect(on_edited)
        grid.addWidget(QLabel(title), row, 0)
        grid.addWidget(edit, row, 1)
        grid.addWidget(gui.button(None, self, "…", callback=on_browse,
                                  autoDefault=False, width=30), row, 2)
        return edit

    # --- folders and options ---------------------------------------------

    def _start_dir(self, path: str, other: str) -> str:
        for candidate in (path, other):
            if candidate and os.path.isdir(candidate):
                return candidate
        return os.path.expanduser("~")

    def browse_images(self):
        folder = QFileDialog.getExistingDirectory(
            self, "Folder of images",
            self._start_dir(self.images_dir, self.masks_dir))
        if folder:
            self.set_images_dir(folder)

    def browse_masks(self):
        folder = QFileDialog.getExistingDirectory(
            self, "Folder of masks",
            self._start_dir(self.masks_dir, self.images_dir))
        if folder:
            self.set_masks_dir(folder)

    def set_images_dir(self, folder: str, reload: bool = True):
        """Use the images in `folder` and pair again."""
        self.images_dir = folder
        self.images_relative = self._relative(folder)
        self.images_edit.setText(folder)
        self._remember(folder, self.recent_images, self.images_edit)
        if reload:
            self.reload()

    def set_masks_dir(self, folder: str, reload: bool = True):
        """Use the masks in `folder` and pair again."""
        self.masks_dir = folder
        self.masks_relative = self._relative(folder)
        self.masks_edit.setText(folder)
        self._remember(folder, self.recent_masks, self.masks_edit)
        if reload:
            self.reload()

    def set_folders(self, images_dir: str, masks_dir: str):
        """Use both folders and pair once."""
        self.set_images_dir(images_dir, reload=False)
        self.set_masks_dir(masks_dir)

    def _basedir(self) -> Optional[str]:
        return self.workflowEnv().get("basedir") or None

    def _relative(self, folder: str) -> str:
        """`folder` relative to the workflow's folder, if it lies within."""
        basedir = self._basedir()
        if not folder or not basedir or not os.path.isabs(folder):
            return ""
        relative = os.path.relpath(folder, basedir)
        return "" if relative.startswith("..") else relative

    def _resolved(self, folder: str, relative: str) -> str:
        """The folder as chosen, or found beside the moved workflow."""
        basedir = self._basedir()
        if folder and not os.path.isabs(folder) and basedir:
            return os.path.join(basedir, folder)
        if folder and not os.path.isdir(folder) and relative and basedir:
            moved = os.path.join(basedir, relative)
            if os.path.isdir(moved):
                return moved
        return folder

    @staticmethod
    def _remember(folder: str, recent: List[str], edit: QLineEdit):
        if not folder:
            return
        if folder in recent:
            recent.remove(folder)
        recent.insert(0, folder)
        del recent[MAX_RECENT:]
        edit.completer().model().setStringList(recent)

    def _on_images_edited(self):
        folder = self.images_edit.text().strip()
        if folder != self.images_dir:
            self.set_images_dir(folder)

    def _on_masks_edited(self):
        folder = self.masks_edit.text().strip()
        if folder != self.masks_dir:
            self.set_masks_dir(folder)

    def _on_kind_changed(self, index: int):
        self.mask_kind = KINDS[index][0]
        self.reload()

    def _on_classes_edited(self):
        text = self.classes_edit.text().strip()
        if text != self.class_names:
            self.class_names = text
            self.reload()

    # --- work ------------------------------------------------------------

    def _clear_messages(self):
        self.Error.clear()
        self.Warning.clear()
        self.Information.clear()

    def reload(self):
        """Pair the chosen folders again (in a worker thread)."""
        self.cancel()
        self._clear_messages()
        self.report_result = None
        if not self.images_dir or not self.masks_dir:
            self.Information.no_folder()
            self._send(None, "No data.")
            return
        images_dir = self._resolved(self.images_dir, self.images_relative)
        masks_dir = self._resolved(self.masks_dir, self.masks_relative)
        for title, folder in (("images", images_dir), ("masks", masks_dir)):
            if not os.path.isdir(folder):
                self.Error.folder_missing(title, folder)
                self._send(None, "No data.")
                return
        self.info_label.setText("Pairing…")
        kind = None if self.mask_kind == "auto" else self.mask_kind
        self.start(run_pairing, images_dir, masks_dir,
                   self.class_names or None, kind)

    def _send(self, table: Optional[Table], info: str):
        self.output = table
        self.info_label.setText(info)
        self.Outputs.data.send(table)

    def on_done(self, result: Tuple[Optional[Table], PairingReport]):
        table, report = result
        self.report_result = report
        self._show_problems(report)
        if table is None:
            self.Error.nothing_paired()
        self._send(table, report.summary())

    def _show_problems(self, report: PairingReport):
        if report.unpaired_images:
            self.Warning.unpaired_images(len(report.unpaired_images),
                                         _examples(report.unpaired_images))
        if report.unpaired_masks:
            self.Warning.unpaired_masks(len(report.unpaired_masks),
                                        _examples(report.unpaired_masks))
        for message, entries in (
                (self.Warning.ambiguous, report.ambiguous),
                (self.Warning.size_mismatch, report.size_mismatches),
                (self.Warning.unknown_values, report.unknown_values),
                (self.Warning.rgb_masks, report.rgb_masks)):
            if entries:
                message(len(entries), _examples([name for name, _ in entries]))
        unreadable = report.unreadable_masks + report.unreadable_images
        if unreadable:
            self.Warning.unreadable(
                len(unreadable),
                _examples([f"{name} ({reason})" for name, reason
                           in unreadable]))

    def on_exception(self, ex: Exception):
        self._send(None, "No data.")
        super().on_exception(ex)

    def on_user_error(self, ex: DeepImageError):
        if isinstance(ex, InvalidInput) and not isinstance(ex, FolderNotFound):
            self.Error.bad_classes(str(ex))
        else:
            self.Error.pairing_failed(str(ex) or type(ex).__name__)

    def on_partial_result(self, result):
        pass

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    def send_report(self):
        kind = dict(KINDS)[self.mask_kind]
        items = [("Images", self.images_dir or "(none)"),
                 ("Masks", self.masks_dir or "(none)"),
                 ("Kind", kind),
                 ("Classes", self.class_names or "from the masks folder")]
        report = self.report_result
        if report is not None:
            items += [
                ("Pairs", f"{report.n_pairs} of {report.n_images} images"),
                ("Mask kind", report.kind),
                ("Class names", ", ".join(report.classes)),
                ("Problems", len(report.problems()))]
        self.report_items(items)
        if report is not None and report.problems():
            self._report_problems(report)

    def _report_problems(self, report: PairingReport):
        rows = report.problems()[:20]
        text = "\n".join(f"{kind}: {name} — {reason}"
                         for kind, name, reason in rows)
        self.report_paragraph("Problems", text)


if __name__ == "__main__":  # pragma: no cover
    WidgetPreview(OWSegmentationData).run()
