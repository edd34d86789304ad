"""Annotate Images' annotation folder and the saving of its edits.

:class:`AnnotationStoreMixin` keeps an :class:`~orangecontrib.deepimage.
annotation.AnnotationStore` for a widget: where its folder is (also beside
a moved workflow), opening it (made at the first write), the edits waiting
to be saved (masks, labels, scribbles per row) and saving them, with the
errors a user can act on shown as the widget's messages. A failed save
keeps the edit, to be saved when it can be.

The widget calls ``_init_store_state`` (which makes ``store``,
``pending_masks``, ``pending_labels``, ``pending_scribbles``, ``_masked``
and ``_dirty``) and ``_add_folder_box`` (``folder_edit``), and has the
settings ``store_folder`` and ``store_relative``; the attributes ``data``,
``paths``, ``current``, ``class_names``, ``label_names``, ``scribbles``,
``view``, ``save_timer``, ``scribble_timer`` and ``output_timer``; the
messages ``Error.bad_store``, ``Error.unwritable``, ``Error.foreign_file``,
``Error.not_saved``, ``Warning.unsaved``, ``Warning.store_among_images``
and ``Information.no_folder``; and the methods ``_forget_history``,
``_show_current``, ``_refresh_marks``, ``_map_model_classes``,
``_show_palette``, ``_name`` and ``commit``.
"""
import os
from typing import Dict, Optional

import numpy as np

from AnyQt.QtWidgets import QFileDialog, QLineEdit, QWidget

from Orange.widgets import gui

from orangecontrib.deepimage import annotationstate as state
from orangecontrib.deepimage.annotation import (
    AnnotationStore, ForeignFileError)
from orangecontrib.deepimage.images import find_image_column
from orangecontrib.deepimage.segdata import CLASSES_FILE

__all__ = ["AnnotationStoreMixin"]


class AnnotationStoreMixin:
    """The annotation folder of a widget, and saving into it."""

    def _init_store_state(self):
        self.store: Optional[AnnotationStore] = None
        self.pending_masks: Dict[int, np.ndarray] = {}
        self.pending_labels: Dict[int, Optional[str]] = {}
        self.pending_scribbles: Dict[int, np.ndarray] = {}
        self._masked: set = set()  # file stems with a mask in the store
        self._dirty = False  # the view's mask has unsaved edits

    def _add_folder_box(self, parent: QWidget):
        box = gui.vBox(parent, "Annotation folder")
        row = gui.hBox(box)
        self.folder_edit = QLineEdit(self.store_folder)
        self.folder_edit.setPlaceholderText("choose a folder")
        self.folder_edit.setToolTip(
            "Masks go to masks/ in this folder (as Segmentation Data reads "
            "them), image labels to labels.csv.")
        self.folder_edit.editingFinished.connect(self._on_folder_edited)
        row.layout().addWidget(self.folder_edit)
        gui.button(row, self, "…", callback=self.browse_folder,
                   autoDefault=False, width=30)

    def _basedir(self) -> Optional[str]:
        return self.workflowEnv().get("basedir") or None

    def _store_path(self) -> str:
        """The folder as chosen, or found beside the moved workflow."""
        return state.store_path(self.store_folder, self.store_relative,
                                self._basedir())

    def browse_folder(self):
        start = self._store_path() if os.path.isdir(self._store_path()) \
            else os.path.expanduser("~")
        folder = QFileDialog.getExistingDirectory(
            self, "Folder for the annotations", start)
        if folder:
            self.set_store_folder(folder)

    def _on_folder_edited(self):
        folder = self.folder_edit.text().strip()
        if folder != self.store_folder:
            self.set_store_folder(folder)

    def set_store_folder(self, folder: str):
        """Keep the annotations in `folder` (an existing store reopens)."""
        self.save_now()  # what is saved goes to the folder it was made in
        self.store_folder = folder
        self.store_relative = state.relative_store_path(folder,
                                                        self._basedir())
        self.folder_edit.setText(folder)
        self.store = None
        self._masked = set()
        self._check_store_place()
        self._open_store()
        self.save_now()  # edits kept while there was no folder
        self._forget_history()  # it was the other folder's
        self._load_scribbles()
        self._show_current()
        self._refresh_marks()
        self.commit.deferred()

    def _open_store(self, create: bool = False) -> Optional[AnnotationStore]:
        """The store, opened when its folder has one; with `create`, made
        (the first write); else nothing is written."""
        if self.store is not None:
            return self.store
        self.Error.bad_store.clear()
        self.Error.unwritable.clear()
        folder = self._store_path()
        self.Information.no_folder(shown=not folder and (
            create or self._has_pending()))
        if not folder:
            return None
        exists = os.path.isfile(os.path.join(folder, "masks", CLASSES_FILE))
        if not exists and not create:
            return None
        try:
            store = AnnotationStore(folder,
                                    None if exists else self.class_names)
        except OSError as error:  # not a folder, read-only, full
            self.Error.unwritable(folder, error.strerror or str(error))
            return None
        except ValueError as error:  # a broken classes.txt
            self.Error.bad_store(str(error))
            return None
        self.store = store
        # the store's classes win; a model's other classes join them at
        # the next save (_sync_classes)
        self.class_names = store.classes
        self.label_names = state.merge_names(self.label_names, store.labels)
        self._masked = set(store.annotated())
        self._map_model_classes()
        self._show_palette()
        return store

    def _sync_classes(self, store: AnnotationStore):
        for name in self.class_names[len(store.classes):]:
            store.add_class(name)

    def _check_store_place(self):
        """Warn when the annotation folder lies among the images: Import
        Images would read the masks there as images."""
        origin = None if self.data is None else \
            find_image_column(self.data).attributes.get("origin")
        self.Warning.store_among_images(
            shown=state.store_among_images(self._store_path(), origin))

    def _has_mask(self, row: int) -> bool:
        path = self.paths[row]
        return row in self.pending_masks or path is not None and \
            os.path.splitext(os.path.basename(path))[0] in self._masked

    def _mask_of(self, row: int) -> Optional[np.ndarray]:
        """The saved (or waiting to be saved) mask of a row."""
        if row in self.pending_masks:
            return self.pending_masks[row]
        if self.store is None or self.paths[row] is None:
            return None
        return self.store.mask(self.paths[row])

    def _label_of(self, row: int) -> Optional[str]:
        if row in self.pending_labels:
            return self.pending_labels[row]
        if self.store is None or self.paths[row] is None:
            return None
        return self.store.label(self.paths[row])

    def _capture(self):
        """Take the view's unsaved mask into the edits to be saved."""
        if self._dirty and self.current is not None:
            self.pending_masks[self.current] = self.view.mask()
        self._dirty = False

    def save_now(self):
        """Save every waiting edit into the store (made at the first)."""
        self.save_timer.stop()
        self._capture()
        if not self._has_pending():
            return
        store = self._open_store(create=True)
        if store is None:
            self._show_unsaved()
            return
        self.Error.foreign_file.clear()
        self.Error.not_saved.clear()
        if self.pending_masks:
            self._save(self._sync_classes, store)
        for row, mask in list(self.pending_masks.items()):
            path = self.paths[row]
            stem = os.path.splitext(os.path.basename(path))[0]
            if not mask.any() and stem not in self._masked:
                del self.pending_masks[row]  # nothing painted, nothing kept
                continue
            if self._save(store.set_mask, path, mask):
                del self.pending_masks[row]
                self._masked.add(stem)
        for row, label in list(self.pending_labels.items()):
            if self._save(store.set_label, self.paths[row], label):
                del self.pending_labels[row]
        for row, scribbles in list(self.pending_scribbles.items()):
            if self._save(store.set_scribbles, self.paths[row], scribbles):
                del self.pending_scribbles[row]
        self._show_unsaved()
        self._refresh_marks()
        self.output_timer.start()

    def _has_pending(self) -> bool:
        return bool(self.pending_masks or self.pending_labels
                    or self.pending_scribbles)

    def _load_scribbles(self):
        """The stored scribbles of the images (edits here win); they
        train the scribble segmenter at once."""
        if self.store is None:
            return
        for row, path in enumerate(self.paths):
            if path is not None and row not in self.scribbles:
                scribbles = self.store.scribbles(path)
                if scribbles is not None and scribbles.any():
                    self.scribbles[row] = scribbles.astype(np.uint8)
        if self.scribbles and self.segmenter is None:
            self.scribble_timer.start()

    def _save(self, method, *args) -> bool:
        try:
            method(*args)
        except ForeignFileError as error:
            self.Error.foreign_file(str(error))
        except OSError as error:  # read-only, full, removed meanwhile
            self.Error.unwritable(self.store.folder,
                                  error.strerror or str(error))
        except ValueError as error:  # e.g. two images with one file stem
            self.Error.not_saved(str(error))
        else:
            return True
        return False

    def _show_unsaved(self):
        rows = sorted(set(self.pending_masks) | set(self.pending_labels)
                      | set(self.pending_scribbles))
        self.Warning.unsaved(
            len(rows), ", ".join(self._name(row) for row in rows[:3]),
            shown=bool(rows))
