"""What Annotate Images shows about its images, as plain functions.

Which rows are labelled or suggested (the marks of the thumbnail strip),
the strip's captions and tooltips, the line about the shown image, the
merge of a model's classes into the annotation's, and where the annotation
folder is. No Qt: the widget calls these and draws the results.
"""
import os
from typing import (
    Callable, List, Optional, Sequence, Tuple)

import numpy as np

__all__ = ["UNLABELLED", "LABELLED", "SUGGESTED", "status_marks",
           "mark_at", "label_frames", "caption", "tooltip",
           "waiting_suggestions", "next_suggested", "new_name",
           "merge_names", "rename_in", "model_class_lut", "image_info",
           "store_path", "relative_store_path", "store_among_images"]

#: Status marks of the thumbnails: unlabelled, labelled, suggested.
UNLABELLED, LABELLED, SUGGESTED = 0, 1, 2
_STATUS = ("unlabelled", "labelled", "suggested")
_SIGNS = {LABELLED: "✓ ", SUGGESTED: "★ "}


# --- marks of the rows -------------------------------------------------------

def status_marks(labelled: np.ndarray, suggested: Sequence[int]
                 ) -> np.ndarray:
    """UNLABELLED, LABELLED or SUGGESTED per row: a suggested row that is
    labelled meanwhile is LABELLED."""
    marks = np.where(labelled, LABELLED, UNLABELLED)
    marks[[row for row in suggested if marks[row] == UNLABELLED]] = SUGGESTED
    return marks


def mark_at(marks: Optional[np.ndarray], row: int) -> Optional[int]:
    """The mark of `row`, or None while there are no marks for it."""
    if marks is None or row >= len(marks):
        return None
    return int(marks[row])


def label_frames(marks: np.ndarray, label_of: Callable[[int], Optional[str]],
                 label_names: Sequence[str], first: int) -> np.ndarray:
    """`marks`, with each labelled row's label as `first` + its index in
    `label_names` (a frame in the label's colour); other labels (not in
    the list) keep LABELLED."""
    frames = marks.copy()
    for row in np.flatnonzero(marks == LABELLED):
        label = label_of(row)
        if label in label_names:
            frames[row] = first + list(label_names).index(label)
    return frames


def caption(name: str, mark: Optional[int]) -> str:
    """The caption under a thumbnail: ✓ labelled, ★ suggested."""
    return _SIGNS.get(mark, "") + name


def tooltip(name: str, mark: Optional[int], label: Optional[str] = None
            ) -> str:
    """`name (status)`; the label instead of the status when given."""
    status = "" if mark is None else _STATUS[mark]
    return f"{name} ({label or status})"


# --- suggestions -------------------------------------------------------------

def waiting_suggestions(suggested: Sequence[int], labelled: np.ndarray
                        ) -> List[int]:
    """The suggested rows that are not labelled yet, in their order."""
    return [row for row in suggested if not labelled[row]]


def next_suggested(waiting: Sequence[int], current: Optional[int]) -> int:
    """The row after `current` in `waiting` (the first if it is not
    there); `waiting` must not be empty."""
    waiting = list(waiting)
    position = waiting.index(current) + 1 if current in waiting else 0
    return waiting[position % len(waiting)]


# --- names of classes and labels ---------------------------------------------

def new_name(names: Sequence[str], stem: str, number: int) -> str:
    """`stem number`, with the first number from `number` on that is not
    taken in `names`."""
    while f"{stem} {number}" in names:
        number += 1
    return f"{stem} {number}"


def merge_names(names: Sequence[str], more: Sequence[str]) -> List[str]:
    """`names`, then those of `more` that are not among them."""
    names = list(names)
    return names + [name for name in more if name not in names]


def rename_in(names: Sequence[str], old: str, new: str) -> List[str]:
    """`names` with `old` replaced by `new`."""
    return [new if name == old else name for name in names]


def model_class_lut(class_names: Sequence[str],
                    model_classes: Sequence[str]
                    ) -> Tuple[List[str], np.ndarray]:
    """The mask classes with a segmentation model's classes joined (by
    name; its first class is the background), and the look-up table from
    the model's class indices to theirs."""
    names = merge_names(class_names, model_classes[1:])
    lut = np.array([0] + [names.index(name) for name in model_classes[1:]],
                   np.uint8)
    return names, lut


# --- the line about the shown image ------------------------------------------

def image_info(name: str, row: int, n_rows: int, label: Optional[str],
               predicted: Optional[Tuple[str, float]], prefilled: bool,
               suggested: bool) -> str:
    """The line (rich text) under the shown image: its name and place,
    its label, the model's label and whether its mask is a prediction."""
    parts = [f"<b>{name}</b> ({row + 1} of {n_rows})",
             f"label: {label}" if label else "no label"]
    if predicted is not None:
        parts.append(f"the model says {predicted[0]} "
                     f"({100 * predicted[1]:.0f} %)"
                     + ("" if label else " — Enter takes it"))
    if prefilled:
        parts.append("the mask is the model's prediction: edit it or "
                     "press Enter to keep it")
    if suggested:
        parts.append("suggested")
    return " · ".join(parts)


# --- where the annotation folder is ------------------------------------------

def store_path(folder: str, relative: str, basedir: Optional[str]) -> str:
    """The annotation folder: `relative` to the workflow's `basedir` when
    it is there (the workflow and its folder were moved together), else
    `folder` (a relative one from `basedir`)."""
    if relative and basedir:
        moved = os.path.join(basedir, relative)
        if os.path.isdir(moved):
            return moved
    if folder and not os.path.isabs(folder) and basedir:
        return os.path.join(basedir, folder)
    return folder


def relative_store_path(folder: str, basedir: Optional[str]) -> str:
    """`folder` relative to `basedir`, or "" when it is not inside it (or
    either is missing or relative already)."""
    if not (folder and basedir and os.path.isabs(folder)):
        return ""
    relative = os.path.relpath(folder, basedir)
    return "" if relative.startswith("..") else relative


def store_among_images(folder: str, origin: Optional[str]) -> bool:
    """Whether the annotation `folder` lies inside the images' folder
    `origin` (Import Images would then read its masks as images)."""
    if not folder or not origin or not os.path.isdir(origin):
        return False
    store, images = (os.path.realpath(path) for path in (folder, origin))
    return os.path.commonpath([store, images]) == images
