"""The plain functions behind Annotate Images' strip, captions and folder."""
import os

import numpy as np

from orangecontrib.deepimage import annotationstate as state
from orangecontrib.deepimage.annotationstate import (
    LABELLED, SUGGESTED, UNLABELLED)


def test_a_labelled_suggestion_is_marked_labelled():
    labelled = np.array([True, False, False, True])
    marks = state.status_marks(labelled, [3, 2])
    assert marks.tolist() == [LABELLED, UNLABELLED, SUGGESTED, LABELLED]
    # no suggestions: an empty index changes nothing
    assert state.status_marks(labelled, []).tolist() == [1, 0, 0, 1]


def test_label_frames_colour_only_known_labels():
    marks = np.array([LABELLED, LABELLED, SUGGESTED, LABELLED])
    labels = {0: "b", 1: "stray", 3: "a"}
    frames = state.label_frames(marks, labels.get, ["a", "b"], first=3)
    assert frames.tolist() == [4, LABELLED, SUGGESTED, 3]
    assert marks.tolist() == [1, 1, 2, 1]  # the marks are not changed


def test_captions_and_tooltips():
    marks = np.array([LABELLED, SUGGESTED, UNLABELLED])
    assert [state.caption("x.png", state.mark_at(marks, row))
            for row in range(4)] == [
        "✓ x.png", "★ x.png", "x.png", "x.png"]
    assert state.mark_at(None, 0) is None
    assert state.tooltip("x.png", SUGGESTED) == "x.png (suggested)"
    assert state.tooltip("x.png", LABELLED, "cat") == "x.png (cat)"
    assert state.tooltip("x.png", None) == "x.png ()"


def test_next_suggested_wraps_and_starts_at_the_first():
    labelled = np.array([False, True, False, False])
    waiting = state.waiting_suggestions([3, 1, 0], labelled)
    assert waiting == [3, 0]
    assert state.next_suggested(waiting, 3) == 0
    assert state.next_suggested(waiting, 0) == 3  # wraps round
    assert state.next_suggested(waiting, 2) == 3  # not suggested: first


def test_names():
    assert state.new_name(["class 2", "class 3"], "class", 2) == "class 4"
    assert state.new_name(["a"], "label", 2) == "label 2"
    assert state.merge_names(["a", "b"], ["b", "c", "a"]) == ["a", "b", "c"]
    assert state.rename_in(["a", "b"], "b", "z") == ["a", "z"]


def test_model_classes_join_the_mask_classes_by_name():
    # the model's background (its class 0) maps to the background whatever
    # its name; "cell" is already class 2, "debris" is new
    names, lut = state.model_class_lut(
        ["background", "nucleus", "cell"], ["bg", "cell", "debris"])
    assert names == ["background", "nucleus", "cell", "debris"]
    assert lut.dtype == np.uint8 and lut.tolist() == [0, 2, 3]


def test_image_info():
    text = state.image_info("x.png", 1, 5, None, ("cat", 0.876), True, True)
    assert text.startswith("<b>x.png</b> (2 of 5) · no label")
    assert "the model says cat (88 %) — Enter takes it" in text
    assert "prediction" in text and text.endswith("suggested")
    text = state.image_info("x.png", 0, 1, "dog", ("cat", 0.5), False, False)
    assert text == ("<b>x.png</b> (1 of 1) · label: dog · "
                    "the model says cat (50 %)")


def test_store_paths(tmp_path):
    base = str(tmp_path / "work")
    moved = tmp_path / "work" / "notes"
    # a relative setting is read from the workflow's folder
    assert state.store_path("notes", "", base) == os.path.join(base, "notes")
    # the folder moved with the workflow wins once it is there
    assert state.store_path("/old/notes", "notes", base) == "/old/notes"
    moved.mkdir(parents=True)
    assert state.store_path("/old/notes", "notes", base) == str(moved)
    assert state.relative_store_path(str(moved), base) == "notes"
    assert state.relative_store_path(str(tmp_path), base) == ""  # outside
    assert state.relative_store_path(str(moved), None) == ""


def test_store_among_images(tmp_path):
    images = tmp_path / "images"
    (images / "store").mkdir(parents=True)
    assert state.store_among_images(str(images / "store"), str(images))
    assert not state.store_among_images(str(tmp_path / "store"), str(images))
    assert not state.store_among_images(str(images), None)
    assert not state.store_among_images("", str(images))
