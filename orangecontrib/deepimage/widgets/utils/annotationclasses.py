"""The mask classes and image labels of Annotate Images.

:class:`AnnotationClassesMixin` shows a widget's mask classes (masks mode)
or image labels (labels mode) in a :class:`~.classpalette.ClassPalette`,
picks the class to paint, adds and renames classes and labels, in the
store too, and gives the view its colours.

The widget has the settings ``mode``, ``class_names``, ``label_names`` and
``current_class``; the attributes ``store``, ``view``, ``tools_box`` and
``pending_labels``; and the methods ``_open_store``, ``_store_path``,
``_save``, ``_sync_classes`` (of :class:`~.annotationstore.
AnnotationStoreMixin`), ``_show_info``, ``set_label`` and ``commit``.
"""
from typing import List

import numpy as np

from AnyQt.QtGui import QColor
from AnyQt.QtWidgets import QWidget

from Orange.widgets import gui

from orangecontrib.deepimage import annotationstate as state
from orangecontrib.deepimage.widgets.utils.classpalette import ClassPalette
from orangecontrib.deepimage.widgets.utils.masks import class_colours

__all__ = ["AnnotationClassesMixin"]

#: The colour of the background's scribbles (its mask is not drawn).
BACKGROUND_SCRIBBLES = (255, 255, 255)


class AnnotationClassesMixin:
    """Mask classes and image labels of a widget, in a palette."""

    def _add_palette_box(self, parent: QWidget):
        self.palette_box = gui.vBox(parent, "Classes")
        self.palette = ClassPalette()
        self.palette.classSelected.connect(self._on_palette_row)
        self.palette.renamed.connect(self._on_palette_renamed)
        self.palette.addRequested.connect(self._on_add_clicked)
        self.palette.labelRequested.connect(self._on_label_clicked)
        self.palette_box.layout().addWidget(self.palette)

    def _palette_names(self) -> List[str]:
        return self.class_names if self.mode == "masks" else self.label_names

    def _colours(self) -> np.ndarray:
        return class_colours(len(self._palette_names()) + 1) \
            if self.mode == "labels" else class_colours(len(self.class_names))

    def _class_index(self) -> int:
        if self.current_class in self.class_names:
            return self.class_names.index(self.current_class)
        return min(1, len(self.class_names) - 1)

    def _show_palette(self):
        names, masks = self._palette_names(), self.mode == "masks"
        colours = [QColor(*colour) for colour in self._colours()]
        if masks and colours:  # the background
            colours[0] = QColor("white")
        self.palette.set_classes(
            names, colours if masks else colours[1:], 0 if masks else 1,
            self._class_index() if masks and names else None)
        # the mask's background is not drawn; its scribbles are, in white
        # (class_colours gives it black, which dark images hide)
        self.view.set_palette([BACKGROUND_SCRIBBLES] + [
            tuple(int(v) for v in colour)
            for colour in class_colours(len(self.class_names))[1:]])
        self.view.set_current_class(self._class_index())
        self.palette.label_button.setEnabled(self.mode == "labels")
        self.palette_box.setTitle("Mask classes" if self.mode == "masks"
                                  else "Image labels")
        self.tools_box.setEnabled(self.mode == "masks")

    def select_class(self, index: int):
        """Paint mask class `index` from now on."""
        if 0 <= index < len(self.class_names):
            self.current_class = self.class_names[index]
            self.palette.select(index)
            self.view.set_current_class(index)

    def _on_palette_row(self, row: int):
        if self.mode == "masks" and row >= 0:
            self.select_class(row)

    def add_class(self, name: str) -> None:
        """A new mask class (masks mode) or image label (labels mode)."""
        name = name.strip()
        if not name or name in self._palette_names():
            return
        if self.mode == "labels":
            self.label_names = self.label_names + [name]
        else:
            self.class_names = self.class_names + [name]
            store = self._open_store(create=bool(self._store_path()))
            if store is not None:
                self._save(self._sync_classes, store)
        self._show_palette()

    def rename(self, old: str, new: str) -> None:
        """Rename a mask class or an image label."""
        new = new.strip()
        names = self._palette_names()
        if not new or new == old or new in names or old not in names:
            self._show_palette()
            return
        store = self._open_store(create=bool(self._store_path()))
        if self.mode == "masks":
            if store is not None and old in store.classes and \
                    not self._save(store.rename_class, old, new):
                self._show_palette()
                return
            self.class_names = state.rename_in(self.class_names, old, new)
            if self.current_class == old:
                self.current_class = new
        else:
            if store is not None and \
                    not self._save(store.rename_label, old, new):
                self._show_palette()
                return
            self.pending_labels = {row: new if label == old else label
                                   for row, label
                                   in self.pending_labels.items()}
            self.label_names = state.rename_in(self.label_names, old, new)
        self._show_palette()
        self._show_info()
        self.commit.deferred()

    def _on_add_clicked(self):
        names, masks = self._palette_names(), self.mode == "masks"
        self.add_class(state.new_name(names, "class" if masks else "label",
                                      len(names) + (0 if masks else 1)))
        self.palette.edit_last()

    def _on_palette_renamed(self, index: int, text: str):
        names = self._palette_names()
        if 0 <= index < len(names):
            self.rename(names[index], text)

    def _on_label_clicked(self, row: int):
        if 0 <= row < len(self.label_names):
            self.set_label(self.label_names[row])
