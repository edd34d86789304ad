"""The folder a widget writes its files to, and the controls to choose it.

Explain Images, Segment Images and Edit Images each write new files into an
``output_folder`` setting ("" for a default folder of their own) and show it
in a box with a "Choose…" button. :class:`OutputFolderMixin` is that part.
"""
import os

from AnyQt.QtCore import Qt
from AnyQt.QtWidgets import QFileDialog, QGridLayout, QLabel, QLineEdit

from Orange.widgets import gui

__all__ = ["OutputFolderMixin"]


class OutputFolderMixin:
    """The ``output_folder`` setting of a widget that writes files.

    The widget declares ``output_folder: str = Setting("")`` ("" for the
    default folder), overrides :meth:`default_folder` and
    :meth:`output_folder_changed`, and calls :meth:`add_output_folder_row`.
    It then has :meth:`folder`, :meth:`choose_output_folder`,
    :meth:`set_output_folder` and :meth:`reset_output_folder`.

    The row shows the folder either in a label (``self.folder_label``) with
    "Choose…" and "Default" buttons, or in a line edit
    (``self.folder_edit``, empty for the default) with "Choose…".
    """
    output_folder: str  # the widget's Setting

    def default_folder(self) -> str:
        """Where files go when no folder is chosen."""
        raise NotImplementedError

    def output_folder_changed(self):
        """Called after the folder changed: what happens to the result."""

    def folder(self) -> str:
        """The folder files are written to."""
        return self.output_folder or self.default_folder()

    def add_output_folder_row(self, box, *, dialog_title: str, tooltip: str,
                              default_tooltip: str = "",
                              editable: bool = False):
        """Show the folder in `box` with the buttons that change it.

        Parameters
        ----------
        box : QWidget
        dialog_title : str
            The title of the folder dialog.
        tooltip : str
            The tooltip of the folder.
        default_tooltip : str
            Added to the tooltip while the default folder is used.
        editable : bool
            A line edit in which a folder can be typed (empty for the
            default, shown as the placeholder) instead of a label and a
            "Default" button.
        """
        # pylint: disable=attribute-defined-outside-init
        self._folder_dialog_title = dialog_title
        self._folder_tooltip = (tooltip, default_tooltip)
        self._folder_editable = editable
        grid = QGridLayout()
        gui.widgetBox(box, orientation=grid)
        choose = gui.button(None, self, "Choose…",
                            callback=self.choose_output_folder,
                            autoDefault=False)
        if editable:
            self.folder_edit = QLineEdit(self.output_folder)
            self.folder_edit.setPlaceholderText(self.default_folder())
            self.folder_edit.editingFinished.connect(self._on_folder_edited)
            grid.addWidget(self.folder_edit, 0, 0)
            grid.addWidget(choose, 0, 1)
        else:
            self.folder_label = QLabel()
            self.folder_label.setWordWrap(True)
            self.folder_label.setTextInteractionFlags(
                Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(self.folder_label, 0, 0, 1, 2)
            grid.addWidget(choose, 1, 0)
            grid.addWidget(gui.button(None, self, "Default",
                                      callback=self.reset_output_folder,
                                      autoDefault=False), 1, 1)
        self._show_output_folder()

    def _show_output_folder(self):
        tooltip, default_tooltip = self._folder_tooltip
        tooltip += "" if self.output_folder else default_tooltip
        if self._folder_editable:
            self.folder_edit.setText(self.output_folder)
            self.folder_edit.setToolTip(tooltip)
        else:
            self.folder_label.setText(self.folder())
            self.folder_label.setToolTip(tooltip)

    def _on_folder_edited(self):
        folder = self.folder_edit.text().strip()
        if folder != self.output_folder:
            self.set_output_folder(folder)

    def choose_output_folder(self):
        """Choose the folder in a dialog."""
        start = self.folder()
        if not os.path.isdir(start):
            start = os.path.expanduser("~")
        folder = QFileDialog.getExistingDirectory(
            self, self._folder_dialog_title, start)
        if folder:
            self.set_output_folder(folder)

    def set_output_folder(self, folder: str):
        """Write files to `folder` ("" for the default one)."""
        self.output_folder = folder
        self._show_output_folder()
        self.output_folder_changed()

    def reset_output_folder(self):
        """Write files to the default folder."""
        self.set_output_folder("")
