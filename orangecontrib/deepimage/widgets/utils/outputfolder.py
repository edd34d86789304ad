"""The folder a widget writes its files to, and the controls to choose it.

Explain Images, Segment Images and Edit Images each write new files into an
``output_folder`` setting ("" for a default folder of their own) and show it
in a box with a "Choose…" button. :class:`OutputFolderMixin` is that part.

Files that only the widget itself uses (Explain Images' heatmaps, Segment
Images' masks) go, when no folder is chosen, into a folder of the widget's
own (:meth:`OutputFolderMixin.own_folder`) that holds its last run's files
only; in a folder the user chose, every run adds new files.
"""
import os
import uuid
import weakref

from AnyQt.QtCore import Qt
from AnyQt.QtWidgets import QFileDialog, QGridLayout, QLabel, QLineEdit

from Orange.widgets import gui

__all__ = ["OutputFolderMixin"]

# The widgets alive in this process, by the id of their own folder: a
# widget copied in the canvas has its settings, but must not share the
# folder (each would remove the other's files).
_own_folder_owners: "weakref.WeakValueDictionary[str, object]" = \
    weakref.WeakValueDictionary()


class OutputFolderMixin:
    """The ``output_folder`` setting of a widget that writes files.

    The widget declares ``output_folder: str = Setting("")`` ("" for the
    default folder), overrides :meth:`default_folder` and
    :meth:`output_folder_changed`, and calls :meth:`add_output_folder_row`.
    It then has :meth:`folder`, :meth:`choose_output_folder`,
    :meth:`set_output_folder` and :meth:`reset_output_folder`.

    A widget whose files only it uses sets ``uses_own_folder = True`` and
    declares ``own_folder_id: str = Setting("", schema_only=True)``; with
    no folder chosen, :meth:`folder` is then :meth:`own_folder`, a folder
    inside :meth:`default_folder` that belongs to this widget (in this
    workflow), and :meth:`writes_own_folder` is True.

    The row shows the folder either in a label (``self.folder_label``) with
    "Choose…" and "Default" buttons, or in a line edit
    (``self.folder_edit``, empty for the default) with "Choose…".
    """
    output_folder: str  # the widget's Setting
    #: True: with no folder chosen, files go to :meth:`own_folder`.
    uses_own_folder = False
    own_folder_id: str  # the widget's Setting, when uses_own_folder

    def default_folder(self) -> str:
        """Where files go when no folder is chosen (for a widget that
        :attr:`uses_own_folder`: the folder its own folder is in)."""
        raise NotImplementedError

    def output_folder_changed(self):
        """Called after the folder changed: what happens to the result."""

    def folder(self) -> str:
        """The folder files are written to."""
        if self.output_folder:
            return self.output_folder
        if self.uses_own_folder:
            return self.own_folder()
        return self.default_folder()

    def writes_own_folder(self) -> bool:
        """True when files go to the widget's own folder, whose files are
        replaced by each run."""
        return self.uses_own_folder and not self.output_folder

    def own_folder(self) -> str:
        """This widget's own folder (in :meth:`default_folder`).

        Its name is a stable id kept in the workflow, so that a workflow
        opened again finds its files; a copy of the widget gets its own.
        """
        # pylint: disable=attribute-defined-outside-init
        key = self.own_folder_id
        owner = _own_folder_owners.get(key) if key else None
        if owner is not self:
            if not key or owner is not None:
                key = self.own_folder_id = uuid.uuid4().hex[:12]
            _own_folder_owners[key] = self
        return os.path.join(self.default_folder(), key)

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
