"""The list of mask classes (or image labels) of Annotate Images.

:class:`ClassPalette` shows the names with their colours and the key that
picks each, and has Add, Rename and Label image buttons. It keeps no names
of its own: the widget gives them with :meth:`ClassPalette.set_classes`
and hears what the user did through the signals. The list takes no
keyboard focus, so that letters and digits stay the widget's shortcuts.
"""
from typing import Optional, Sequence

from AnyQt.QtCore import Qt, Signal
from AnyQt.QtGui import QColor, QIcon, QPixmap
from AnyQt.QtWidgets import (
    QHBoxLayout, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout,
    QWidget)

__all__ = ["ClassPalette"]


class ClassPalette(QWidget):
    """Names with colour swatches; a double click (or Rename) edits one.

    Signals:
        classSelected(int): the user picked the row.
        renamed(int, str): the row was edited to the text.
        addRequested(): Add was clicked.
        labelRequested(int): Label image was clicked with the row current.
    """
    classSelected = Signal(int)
    renamed = Signal(int, str)
    addRequested = Signal()
    labelRequested = Signal(int)

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.list = QListWidget()
        self.list.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.list.setMaximumHeight(150)
        self.list.setEditTriggers(
            QListWidget.EditTrigger.DoubleClicked
            | QListWidget.EditTrigger.EditKeyPressed)
        self.list.currentRowChanged.connect(self.classSelected)
        self.list.itemChanged.connect(
            lambda item: self.renamed.emit(self.list.row(item), item.text()))
        layout.addWidget(self.list)
        row = QHBoxLayout()
        layout.addLayout(row)
        for title, callback in (("Add", self.addRequested.emit),
                                ("Rename", self.edit_current)):
            button = QPushButton(title, autoDefault=False)
            button.clicked.connect(callback)
            row.addWidget(button)
        self.label_button = QPushButton("Label image", autoDefault=False)
        self.label_button.setToolTip(
            "Give the shown image the selected label (keys 1–9; 0 removes "
            "its label, Enter takes the model's).")
        self.label_button.clicked.connect(
            lambda: self.labelRequested.emit(self.list.currentRow()))
        row.addWidget(self.label_button)

    def set_classes(self, names: Sequence[str],
                    colours: Sequence[QColor], first_key: int,
                    current: Optional[int]):
        """Show `names` with their `colours` and keys from `first_key` on
        (a tooltip up to key 9); select row `current` (None: keep none).
        Emits no signals."""
        self.list.blockSignals(True)
        self.list.clear()
        for index, (name, colour) in enumerate(zip(names, colours)):
            key = index + first_key
            pixmap = QPixmap(12, 12)
            pixmap.fill(colour)
            item = QListWidgetItem(QIcon(pixmap), name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            item.setToolTip(f"key {key}" if key <= 9 else "")
            self.list.addItem(item)
        if current is not None:
            self.list.setCurrentRow(current)
        self.list.blockSignals(False)

    def select(self, row: int):
        """Make `row` current (emits classSelected when it changes)."""
        self.list.setCurrentRow(row)

    def edit_current(self):
        """Start editing the current row's name."""
        self.list.editItem(self.list.currentItem())

    def edit_last(self):
        """Make the last row current and start editing its name."""
        self.list.setCurrentRow(self.list.count() - 1)
        self.edit_current()
