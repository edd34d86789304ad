"""The tools panel of Annotate Images, and what its keys pick.

:data:`TOOL_INFO` says, for each tool of
:data:`~.annotationview.TOOLS`, its title, its key and what it does (the
buttons' tooltips). :func:`add_tool_controls` puts the tool buttons, the
brush size, the mask opacity and the Segment Anything weights field into a
box, bound to the widget's settings; :func:`add_undo_buttons` adds Undo and
Redo for an undo group.
"""
from typing import Callable, Optional

from AnyQt.QtCore import Qt
from AnyQt.QtGui import QUndoGroup
from AnyQt.QtWidgets import QButtonGroup, QGridLayout, QToolButton, QWidget

from Orange.widgets import gui

from orangecontrib.deepimage.widgets.utils.annotationview import TOOLS

__all__ = ["TOOL_INFO", "tool_for_key", "add_tool_controls",
           "add_undo_buttons"]

#: tool -> (title, key, what it does); the keys show in the tooltips.
TOOL_INFO = {
    "brush": ("Brush", "B", "Paint the selected class."),
    "eraser": ("Eraser", "E", "Paint the background."),
    "polygon": ("Polygon", "P", "Click the corners; double-click or Enter "
                                "fills; Esc cancels, right click removes "
                                "the last corner."),
    "fill": ("Fill", "F", "Fill the connected region under the click."),
    "box": ("Box", "X", "Draw a box around an object; GrabCut (or a "
                        "threshold, in grey images) finds it."),
    "superpixel": ("Superpixel", "S", "Add the superpixel under the click."),
    "scribble": ("Scribble", "W", "Mark a few pixels of each class; the "
                                  "prediction of the whole mask follows "
                                  "live, Enter accepts it."),
    "pan": ("Pan", "H", "Drag to move; the wheel zooms."),
    "prompt": ("Segment Anything", "A",
               "Click an object or draw a box around it; KerasHub's Segment "
               "Anything (SAM) outlines it. Its weights (about 375 MB) are "
               "downloaded on first use, or read from the folder or URL "
               "under SAM weights, or from the weights mirror."),
}


def tool_for_key(text: str) -> Optional[str]:
    """The tool whose key is the letter `text` (either case), or None."""
    letter = text.upper()
    return next((name for name, info in TOOL_INFO.items()
                 if letter and info[1] == letter), None)


def add_tool_controls(box: QWidget, widget, on_tool: Callable[[str], None],
                      on_brush_size: Callable[[], None],
                      on_opacity: Callable[[], None],
                      on_sam_preset: Callable[[], None]) -> QButtonGroup:
    """Tool buttons (three a row), brush size, opacity and SAM weights in
    `box`, bound to `widget`'s settings ``tool``, ``brush_size``,
    ``opacity`` and ``sam_preset``. Return the buttons' group: button `i`
    is ``TOOLS[i]``."""
    grid = QGridLayout()
    gui.widgetBox(box, orientation=grid)
    buttons = QButtonGroup(box)
    buttons.setExclusive(True)
    for index, name in enumerate(TOOLS):
        title, key, text = TOOL_INFO[name]
        button = QToolButton(text=title, checkable=True)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        button.setToolTip(f"{title} ({key}): {text}")
        button.setProperty("tool", name)
        button.setChecked(name == widget.tool)
        buttons.addButton(button, index)
        grid.addWidget(button, index // 3, index % 3)
    buttons.buttonClicked.connect(
        lambda button: on_tool(button.property("tool")))
    gui.spin(box, widget, "brush_size", 1, 500, label="Brush size:",
             orientation=Qt.Horizontal, suffix=" px",
             callback=on_brush_size)
    gui.hSlider(box, widget, "opacity", minValue=0, maxValue=100,
                label="Mask opacity:", callback=on_opacity)
    gui.lineEdit(box, widget, "sam_preset", label="SAM weights:",
                 orientation=Qt.Horizontal, callback=on_sam_preset,
                 placeholderText="download on first use",
                 tooltip="Where Segment Anything's KerasHub preset is: "
                         "a folder or URL (e.g. one saved with "
                         "save_to_preset); empty: the Keras cache, the "
                         "weights mirror, or a download of about 375 MB.")
    return buttons


def add_undo_buttons(row: QWidget, undo_group: QUndoGroup):
    """Undo (Ctrl+Z) and Redo (Ctrl+Shift+Z) buttons of `undo_group`'s
    active stack, in `row`."""
    for action, title, key in (
            (undo_group.createUndoAction(row), "Undo", "Ctrl+Z"),
            (undo_group.createRedoAction(row), "Redo", "Ctrl+Shift+Z")):
        action.setText(title)
        action.setToolTip(f"{title} ({key})")
        button = QToolButton()
        button.setDefaultAction(action)
        row.layout().addWidget(button)
