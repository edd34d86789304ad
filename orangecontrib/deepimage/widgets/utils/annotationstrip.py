"""The thumbnail strip of Annotate Images, with each image's status.

:class:`AnnotationStrip` is a one-column :class:`~.gallery.ThumbnailGallery`
whose frames, captions (✓ labelled, ★ suggested) and tooltips show the
marks of :mod:`orangecontrib.deepimage.annotationstate`; in labels mode a
labelled image's frame has its label's colour.
"""
from typing import Callable, Optional, Sequence

import numpy as np

from AnyQt.QtGui import QColor

from orangecontrib.deepimage import annotationstate as state
from orangecontrib.deepimage.widgets.utils.gallery import ThumbnailGallery
from orangecontrib.deepimage.widgets.utils.thumbnails import ThumbnailLoader

__all__ = ["AnnotationStrip", "MARK_COLOURS"]

#: Frame colours of the marks: unlabelled (none), labelled, suggested.
MARK_COLOURS = (QColor(0, 0, 0, 0), QColor("#2ca02c"), QColor("#ff7f0e"))


class AnnotationStrip(ThumbnailGallery):
    """Thumbnails in one column, marked by :meth:`set_marks`.

    Args:
        loader: the thumbnails' loader.
        name_of: ``name_of(row)``, the caption's and tooltip's name.
        label_of: ``label_of(row)``, the image's label (for the tooltips
            in labels mode).
    """

    def __init__(self, loader: ThumbnailLoader,
                 name_of: Callable[[int], str],
                 label_of: Callable[[int], Optional[str]], parent=None):
        super().__init__(loader, parent)
        self._name_of, self._label_of = name_of, label_of
        self.marks: Optional[np.ndarray] = None
        self._labels_shown = False
        self.caption = self._caption
        self.tooltip = self._tooltip
        self.setFixedWidth(self.cell_width + 2 * self.MARGIN + 24)

    def set_marks(self, marks: Optional[np.ndarray],
                  label_names: Optional[Sequence[str]] = None,
                  label_colours: Sequence[QColor] = ()):
        """Mark the rows (None: no marks). With `label_names` (labels
        mode), a labelled image whose label is among them is framed in its
        colour from `label_colours`, and tooltips show labels."""
        self.marks = marks
        self._labels_shown = label_names is not None
        if marks is None:
            self.set_colors(None)
        elif label_names is None:
            self.set_colors(marks, MARK_COLOURS)
        else:
            frames = state.label_frames(marks, self._label_of, label_names,
                                        len(MARK_COLOURS))
            self.set_colors(frames, list(MARK_COLOURS) + list(label_colours))

    def _caption(self, row: int) -> str:
        return state.caption(self._name_of(row),
                             state.mark_at(self.marks, row))

    def _tooltip(self, row: int) -> str:
        mark = state.mark_at(self.marks, row)
        label = self._label_of(row) if mark == state.LABELLED \
            and self._labels_shown else None
        return state.tooltip(self._name_of(row), mark, label)
