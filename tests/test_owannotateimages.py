"""The Annotate Images widget: real mouse and key events on its view, the
store it saves into, and its outputs in the widgets that learn from them."""
import hashlib
import os
import tempfile
import time
import unittest
from unittest import mock

import numpy as np
from PIL import Image

from AnyQt.QtCore import Qt
from AnyQt.QtTest import QTest

from Orange.data import ContinuousVariable, Domain, Table
from Orange.widgets.tests.base import WidgetTest

from orangecontrib.deepimage.annotation import AnnotationStore
from orangecontrib.deepimage.segdata import load_mask
from orangecontrib.deepimage.widgets import owannotateimages
from orangecontrib.deepimage.widgets.utils import annotationtasks
from orangecontrib.deepimage.annotationstate import SUGGESTED
from orangecontrib.deepimage.widgets.owannotateimages import OWAnnotateImages
from orangecontrib.deepimage.widgets.utils.annotationstrip import (
    MARK_COLOURS)
from orangecontrib.deepimage.widgets.utils.annotationtools import TOOL_INFO

from imagedata import image_table, shapes_table

TIMEOUT = 60000
SIZE = 32


def disc_images(folder, n=4, size=SIZE):
    """`n` grey-blue images of a bright disc each, as PNG files."""
    os.makedirs(folder, exist_ok=True)
    names = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        pixels = np.full((size, size, 3), (40, 50, 60), np.uint8)
        cy, cx = 10 + 3 * i % 12, 12 + 5 * i % 10
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = (230, 220, 90)
        name = f"disc{i}.png"
        Image.fromarray(pixels).save(os.path.join(folder, name))
        names.append(name)
    return names


def digest(path):
    with open(path, "rb") as file:
        return hashlib.sha1(file.read()).hexdigest()


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


class AnnotateTest(WidgetTest):
    def setUp(self):
        self.tempdir = tempfile.TemporaryDirectory()
        self.root = self.tempdir.name
        self.images_dir = os.path.join(self.root, "images")
        self.names = disc_images(self.images_dir)
        self.data = image_table(self.images_dir, self.names)
        self.store_dir = os.path.join(self.root, "store")

        # Orange's own checks (minimum size, image export, messages) use it
        self.widget = self.create_widget(
            OWAnnotateImages, stored_settings={"store_folder": self.store_dir,
                                               "n_suggested": 0})

    def path(self, row):
        return os.path.join(self.images_dir, self.names[row])

    def tearDown(self):
        self._clear_widgets()  # they save what they hold: before cleanup
        self.tempdir.cleanup()

    def create(self, **settings):
        settings = {"store_folder": self.store_dir, "n_suggested": 0,
                    **settings}
        widget = self.create_widget(OWAnnotateImages,
                                    stored_settings=settings)
        widget.resize(900, 600)
        widget.show()
        self.widget = widget
        return widget

    def stroke(self, widget, points, button=Qt.MouseButton.LeftButton):
        """A real press-move-release on the widget's view."""
        view = widget.view
        viewport = view.viewport()
        positions = [view.map_from_image(x, y) for x, y in points]
        QTest.mousePress(viewport, button, Qt.KeyboardModifier.NoModifier,
                         positions[0])
        for position in positions[1:]:
            QTest.mouseMove(viewport, position)
        QTest.mouseRelease(viewport, button, Qt.KeyboardModifier.NoModifier,
                           positions[-1])

    def wait_quick(self, widget):
        self.process_events(until=lambda: not widget.quick.is_busy(),
                            timeout=TIMEOUT)


class TestOWAnnotateImages(AnnotateTest):
    def test_brush_stroke_autosaves_the_views_mask(self):
        widget = self.create(brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        self.assertEqual(widget.current, 0)
        self.assertFalse(os.path.exists(self.store_dir))  # nothing yet
        self.stroke(widget, [(5, 5), (10, 5), (15, 5)])
        painted = widget.view.mask()
        self.assertTrue(painted[5, 5:16].all())
        self.assertEqual(int(painted.max()), 1)  # the class "object"
        self.process_events(
            until=lambda: os.path.exists(
                os.path.join(self.store_dir, "masks", "disc0.png")),
            timeout=5000)
        store = AnnotationStore(self.store_dir)
        saved = load_mask(os.path.join(store.masks_dir, "disc0.png"))
        np.testing.assert_array_equal(saved, painted)
        # the output follows
        widget.commit.now()
        masks = self.get_output(widget.Outputs.masks)
        self.assertEqual(list(masks.get_column("image name")), ["disc0"])

    def test_closing_right_after_a_stroke_saves_it(self):
        widget = self.create(brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        self.stroke(widget, [(4, 20), (20, 20)])
        painted = widget.view.mask()
        self.assertTrue(widget.save_timer.isActive())  # not saved yet
        self.widgets.remove(widget)
        widget.onDeleteWidget()
        np.testing.assert_array_equal(
            AnnotationStore(self.store_dir).mask(self.path(0)), painted)

    def test_switching_images_saves_at_once_and_undo_survives(self):
        widget = self.create(brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        self.stroke(widget, [(4, 4), (8, 4)])
        painted = widget.view.mask()
        widget.show_image(1)  # before the autosave's timer
        store = AnnotationStore(self.store_dir)
        np.testing.assert_array_equal(store.mask(self.path(0)), painted)
        self.assertFalse(widget.view.mask().any())
        widget.show_image(0)
        np.testing.assert_array_equal(widget.view.mask(), painted)
        QTest.keyClick(widget, Qt.Key.Key_Z,
                       Qt.KeyboardModifier.ControlModifier)
        self.assertFalse(widget.view.mask().any())
        QTest.keyClick(widget, Qt.Key.Key_Z,
                       Qt.KeyboardModifier.ControlModifier
                       | Qt.KeyboardModifier.ShiftModifier)
        np.testing.assert_array_equal(widget.view.mask(), painted)

    def test_keys_pick_classes_tools_and_label_images(self):
        widget = self.create(class_names=["background", "cell", "dust"],
                             label_names=["round", "odd"])
        self.send_signal(widget.Inputs.images, self.data)
        QTest.keyClick(widget, Qt.Key.Key_2)
        self.assertEqual(widget.current_class, "dust")
        QTest.keyClick(widget, Qt.Key.Key_1)
        self.assertEqual(widget.current_class, "cell")
        for name, (_, key, _) in TOOL_INFO.items():
            QTest.keyClick(widget, key.lower())
            self.assertEqual(widget.tool, name)
            self.assertEqual(widget.view.tool(), name)
            button = widget.tool_buttons.button(
                owannotateimages.TOOLS.index(name))
            self.assertIn(f"({key})", button.toolTip())
            self.assertTrue(button.isChecked())
        # keys typed while the view or the strip has the focus reach the
        # widget too
        QTest.keyClick(widget.view, Qt.Key.Key_2)
        self.assertEqual(widget.current_class, "dust")
        QTest.keyClick(widget.strip, "b")
        self.assertEqual(widget.view.tool(), "brush")
        widget.set_mode("labels")
        QTest.keyClick(widget, Qt.Key.Key_2)  # labels image 0, goes on
        self.assertEqual(widget.current, 1)
        QTest.keyClick(widget, Qt.Key.Key_1)
        store = AnnotationStore(self.store_dir)
        self.assertEqual(store.label(self.path(0)), "odd")
        self.assertEqual(store.label(self.path(1)), "round")
        # the strip frames each labelled image in its label's colour
        colours = widget._colours()
        self.assertEqual(widget.strip.cell_color(0).getRgb()[:3],
                         tuple(colours[2]))
        self.assertEqual(widget.strip.cell_color(1).getRgb()[:3],
                         tuple(colours[1]))
        self.assertIn("(odd)", widget.strip.tooltip(0))
        self.assertTrue(widget.accept_button.isEnabled())
        widget.show_image(1)
        QTest.keyClick(widget, Qt.Key.Key_0)  # removes the label
        self.assertIsNone(AnnotationStore(self.store_dir).label(self.path(1)))
        widget.commit.now()
        labelled = self.get_output(widget.Outputs.labelled)
        self.assertEqual(list(labelled.get_column("image")), [self.names[0]])

    def test_n_goes_to_the_next_suggested_image(self):
        rng = np.random.default_rng(0)
        domain = Domain([ContinuousVariable(f"n{i}") for i in range(4)],
                        metas=self.data.domain.metas)
        embedded = Table.from_numpy(domain, rng.normal(size=(4, 4)),
                                    metas=self.data.metas)
        widget = self.create(n_suggested=2)
        self.send_signal(widget.Inputs.embeddings, embedded)
        self.send_signal(widget.Inputs.images, self.data)
        self.wait_until_finished(widget, timeout=TIMEOUT)
        self.assertEqual(len(widget.suggested), 2)
        suggested = self.get_output(widget.Outputs.suggested)
        self.assertEqual(len(suggested), 2)
        QTest.keyClick(widget, Qt.Key.Key_N)
        first = widget.current
        self.assertEqual(first, widget.suggested[0])
        QTest.keyClick(widget, Qt.Key.Key_N)
        self.assertEqual(widget.current, widget.suggested[1])
        self.assertEqual(widget.strip.cell_color(first),
                         MARK_COLOURS[SUGGESTED])
        self.assertTrue(widget.strip.caption(first).startswith("★"))
        # once annotated, an image is no longer suggested
        widget.show_image(first)
        self.stroke(widget, [(3, 3), (6, 3)])
        widget.save_now()
        widget.commit.now()
        self.assertEqual(len(self.get_output(widget.Outputs.suggested)), 1)
        self.assertTrue(widget.strip.caption(first).startswith("✓"))

    def test_palette_adds_and_renames_classes_in_the_store(self):
        widget = self.create(brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        self.stroke(widget, [(5, 5), (12, 5)])
        widget.save_now()
        widget.palette.list.setCurrentRow(1)
        widget.palette.list.currentItem().setText("crane")  # as edited
        store = AnnotationStore(self.store_dir)
        self.assertEqual(store.classes, ["background", "crane"])
        self.assertEqual(widget.current_class, "crane")
        self.assertEqual(int(store.mask(self.path(0)).max()), 1)  # kept
        widget._on_add_clicked()
        widget.palette.list.currentItem().setText("cable")
        self.assertEqual(AnnotationStore(self.store_dir).classes,
                         ["background", "crane", "cable"])
        self.assertEqual(widget.palette.list.count(), 3)
        QTest.keyClick(widget, Qt.Key.Key_2)
        self.assertEqual(widget.current_class, "cable")
        # labels have their own names
        widget.set_mode("labels")
        widget.add_class("sharp")
        QTest.keyClick(widget, Qt.Key.Key_1)
        widget.rename("sharp", "crisp")
        store = AnnotationStore(self.store_dir)
        self.assertEqual(store.label(self.path(0)), "crisp")
        self.assertEqual(store.classes, ["background", "crane", "cable"])

    def test_settings_round_trip(self):
        widget = self.create(class_names=["background", "cell"])
        widget.set_tool("polygon")
        widget.set_mode("labels")
        widget.add_class("sharp")
        settings = widget.settingsHandler.pack_data(widget)
        restored = self.create_widget(OWAnnotateImages,
                                      stored_settings=settings)
        self.assertEqual(restored.store_folder, self.store_dir)
        self.assertEqual(restored.class_names, ["background", "cell"])
        self.assertEqual(restored.label_names, ["sharp"])
        self.assertEqual(restored.tool, "polygon")
        self.assertEqual(restored.mode, "labels")
        self.assertTrue(restored.mode_buttons.button(1).isChecked())
        self.assertTrue(restored.tool_buttons.button(
            owannotateimages.TOOLS.index("polygon")).isChecked())

    def test_only_loading_writes_nothing(self):
        # a store with a mask and a label, opened by a new widget
        store = AnnotationStore(self.store_dir, ["background", "cell"])
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[3:9, 3:9] = 1
        store.set_mask(self.path(1), mask)
        store.set_label(self.path(2), "round")
        before = {name: (digest(os.path.join(self.store_dir, name)),
                         os.stat(os.path.join(self.store_dir, name))
                         .st_mtime_ns)
                  for name in files_under(self.store_dir)}
        images = {name: digest(self.path(i))
                  for i, name in enumerate(self.names)}
        widget = self.create()
        self.send_signal(widget.Inputs.images, self.data)
        masks = self.get_output(widget.Outputs.masks)
        labelled = self.get_output(widget.Outputs.labelled)
        self.assertEqual(list(masks.get_column("image name")), ["disc1"])
        self.assertEqual(list(labelled.get_column("image")),
                         [self.names[2]])
        widget.show_image(1)
        np.testing.assert_array_equal(widget.view.mask(), mask)
        widget.show_image(3)
        self.widgets.remove(widget)
        widget.onDeleteWidget()
        after = {name: (digest(os.path.join(self.store_dir, name)),
                        os.stat(os.path.join(self.store_dir, name))
                        .st_mtime_ns)
                 for name in files_under(self.store_dir)}
        self.assertEqual(after, before)
        self.assertEqual({name: digest(self.path(i))
                          for i, name in enumerate(self.names)}, images)

    def test_the_same_images_again_keep_history_and_place(self):
        widget = self.create(brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        widget.show_image(2)
        self.stroke(widget, [(4, 4), (9, 4)])
        self.send_signal(widget.Inputs.images, self.data.copy())
        self.assertEqual(widget.current, 2)
        widget.undo()
        self.assertFalse(widget.view.mask().any())

    def test_strip_scrolls_to_the_shown_image(self):
        names = disc_images(self.images_dir, n=12)
        widget = self.create()
        self.send_signal(widget.Inputs.images,
                         image_table(self.images_dir, names))
        self.assertNotIn(11, widget.strip.visible_rows())
        widget.show_image(11)
        self.assertIn(11, widget.strip.visible_rows())
        widget.show_image(0)
        self.assertIn(0, widget.strip.visible_rows())

    def test_folder_relative_to_the_moved_workflow(self):
        AnnotationStore(os.path.join(self.root, "moved", "store"),
                        ["background", "nucleus"])
        widget = self.create_widget(
            OWAnnotateImages, stored_settings={
                "store_folder": "/no/such/place/store",
                "store_relative": "store", "n_suggested": 0},
            env={"basedir": os.path.join(self.root, "moved")})
        self.assertEqual(widget.class_names, ["background", "nucleus"])
        widget.set_store_folder(os.path.join(self.root, "moved", "other"))
        self.assertEqual(widget.store_relative, "other")

    def test_cancel_stops_the_predictions(self):
        class Slow:  # waits, reporting progress, until cancelled
            class_names = ("round", "odd")

            def predict_paths(self, paths, callback=None):
                while True:
                    callback(0.5)
                    time.sleep(0.01)

        widget = self.create()
        widget.set_model(Slow())  # a stand-in, so not sent as a signal
        self.send_signal(widget.Inputs.images, self.data)
        self.assertIsNotNone(widget.task)
        self.assertTrue(widget.cancel_button.isEnabled())
        widget.cancel_button.click()
        self.assertIsNone(widget.task)
        self.assertFalse(widget.cancel_button.isEnabled())
        self.assertIsNone(widget.probabilities)

    def test_a_new_folder_is_made_only_at_the_first_edit(self):
        widget = self.create()
        self.send_signal(widget.Inputs.images, self.data)
        self.assertIsNone(self.get_output(widget.Outputs.masks))
        widget.show_image(2)
        widget.show_image(0)
        self.assertFalse(os.path.exists(self.store_dir))


class TestMessages(AnnotateTest):
    def test_no_image_column(self):
        widget = self.create()
        table = Table.from_numpy(Domain([ContinuousVariable("x")]),
                                 np.zeros((2, 1)))
        self.send_signal(widget.Inputs.images, table)
        self.assertTrue(widget.Error.no_image_column.is_shown())
        self.assertIsNone(self.get_output(widget.Outputs.masks))
        self.send_signal(widget.Inputs.images, self.data)
        self.assertFalse(widget.Error.no_image_column.is_shown())

    def test_unreadable_image(self):
        with open(os.path.join(self.images_dir, "broken.png"), "wb") as file:
            file.write(b"not a png")
        widget = self.create()
        self.send_signal(widget.Inputs.images, image_table(
            self.images_dir, ["broken.png", "missing.png"] + self.names
            + [""]))
        self.assertTrue(widget.Error.unreadable.is_shown())
        self.assertIn("broken.png", str(widget.Error.unreadable))
        self.assertIsNone(widget.image)
        QTest.keyClick(widget, Qt.Key.Key_Return)  # nothing to accept
        widget.show_image(1)
        widget.set_mode("labels")
        widget.add_class("sharp")
        QTest.keyClick(widget, Qt.Key.Key_1)  # is kept for a missing file
        widget.save_now()
        self.assertFalse(widget.Warning.unsaved.is_shown())
        widget.set_mode("masks")
        self.assertIn("missing.png", str(widget.Error.unreadable))
        widget.show_image(2)
        self.assertFalse(widget.Error.unreadable.is_shown())
        self.assertEqual(widget.view.mask().shape, (SIZE, SIZE))
        widget.show_image(len(self.names) + 2)  # a row without a path
        self.assertTrue(widget.Error.unreadable.is_shown())
        widget.set_mode("labels")
        QTest.keyClick(widget, Qt.Key.Key_1)  # nothing to label
        self.assertEqual(widget.pending_labels, {})

    def test_a_model_that_cannot_read_images(self):
        from Orange.classification import MajorityLearner
        widget = self.create()
        model = MajorityLearner()(Table("iris"))
        self.send_signal(widget.Inputs.model, model)
        self.assertTrue(widget.Error.model_kind.is_shown())
        self.assertIsNone(widget.model)
        self.send_signal(widget.Inputs.model, None)
        self.assertFalse(widget.Error.model_kind.is_shown())

    def test_embeddings_without_images_or_numbers(self):
        widget = self.create(n_suggested=2)
        self.send_signal(widget.Inputs.images, self.data)
        self.send_signal(widget.Inputs.embeddings, self.data)  # no numbers
        self.assertTrue(widget.Error.no_embedding.is_shown())
        numbers = Table.from_numpy(Domain([ContinuousVariable("x")]),
                                   np.zeros((2, 1)))
        self.send_signal(widget.Inputs.embeddings, numbers)
        self.assertIn("no image column", str(widget.Error.no_embedding))
        self.assertIsNone(widget.task)  # nothing to suggest from
        self.send_signal(widget.Inputs.embeddings, None)
        self.assertFalse(widget.Error.no_embedding.is_shown())

    def test_unwritable_folder_keeps_the_edit(self):
        blocker = os.path.join(self.root, "a file")
        with open(blocker, "w") as file:
            file.write("not a folder")
        widget = self.create(store_folder=os.path.join(blocker, "store"),
                             brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        self.stroke(widget, [(5, 5), (12, 5)])
        painted = widget.view.mask()
        widget.save_now()
        self.assertTrue(widget.Error.unwritable.is_shown())
        self.assertTrue(widget.Warning.unsaved.is_shown())
        widget.set_store_folder(self.store_dir)  # the edit goes there
        self.assertFalse(widget.Error.unwritable.is_shown())
        self.assertFalse(widget.Warning.unsaved.is_shown())
        np.testing.assert_array_equal(
            AnnotationStore(self.store_dir).mask(self.path(0)), painted)

    def test_edits_wait_for_a_folder(self):
        widget = self.create(store_folder="", brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        self.assertFalse(widget.Information.no_folder.is_shown())
        self.stroke(widget, [(5, 5), (12, 5)])
        painted = widget.view.mask()
        widget.show_image(1)
        self.assertTrue(widget.Information.no_folder.is_shown())
        self.assertIn("disc0.png", str(widget.Warning.unsaved))
        widget.show_image(0)
        np.testing.assert_array_equal(widget.view.mask(), painted)
        widget.set_store_folder(self.store_dir)
        self.assertFalse(widget.Information.no_folder.is_shown())
        np.testing.assert_array_equal(
            AnnotationStore(self.store_dir).mask(self.path(0)), painted)

    def test_a_folder_among_the_images_is_warned_about(self):
        widget = self.create(
            store_folder=os.path.join(self.images_dir, "labels"))
        self.send_signal(widget.Inputs.images, self.data)
        self.assertTrue(widget.Warning.store_among_images.is_shown())
        widget.set_store_folder(self.store_dir)
        self.assertFalse(widget.Warning.store_among_images.is_shown())

    def test_foreign_mask_file_is_left_alone(self):
        store = AnnotationStore(self.store_dir)
        foreign = os.path.join(store.masks_dir, "disc0.png")
        Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(foreign)
        before = digest(foreign)
        widget = self.create(brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        self.stroke(widget, [(5, 5), (12, 5)])
        widget.save_now()
        self.assertTrue(widget.Error.foreign_file.is_shown())
        self.assertIn("not written by this annotation store",
                      str(widget.Error.foreign_file))
        self.assertEqual(digest(foreign), before)
        self.assertTrue(widget.Warning.unsaved.is_shown())


class TestTools(AnnotateTest):
    def test_box_runs_grabcut_as_one_undoable_edit(self):
        widget = self.create(tool="box")
        self.send_signal(widget.Inputs.images, self.data)
        expected = annotationtasks.mask_from_box(
            widget.image, (2, 2, 22, 22))
        # a real drag on the view draws the box
        self.stroke(widget, [(2, 2), (12, 12), (21, 21)])
        self.wait_quick(widget)
        mask = widget.view.mask()
        np.testing.assert_array_equal(mask > 0, expected)
        self.assertTrue(mask.any())
        widget.undo()
        self.assertFalse(widget.view.mask().any())

    def test_boxes_in_quick_succession_are_all_kept(self):
        def slow_box(image, box):  # the box itself, after a while
            time.sleep(0.1)
            x0, y0, x1, y1 = box
            mask = np.zeros(image.shape[:2], bool)
            mask[y0:y1, x0:x1] = True
            return mask

        widget = self.create(tool="box")
        self.send_signal(widget.Inputs.images, self.data)
        boxes = [(1, 1, 9, 9), (20, 20, 30, 30), (1, 20, 9, 30)]
        expected = np.zeros((SIZE, SIZE), bool)
        for box in boxes:
            expected |= slow_box(widget.image, box)
        with mock.patch.object(annotationtasks, "mask_from_box", slow_box):
            for x0, y0, x1, y1 in boxes:  # no waiting between the drags
                self.stroke(widget, [(x0, y0), (x1 - 1, y1 - 1)])
            self.assertTrue(widget.quick.is_busy())
            self.wait_quick(widget)
        np.testing.assert_array_equal(widget.view.mask() > 0, expected)
        self.assertEqual(widget.view.undo_stack().count(), 3)

    def test_superpixel_click(self):
        widget = self.create(tool="superpixel")
        self.send_signal(widget.Inputs.images, self.data)
        segments = annotationtasks.superpixels(widget.image)
        self.stroke(widget, [(12, 10)])
        self.wait_quick(widget)
        np.testing.assert_array_equal(widget.view.mask() > 0,
                                      segments == segments[10, 12])
        # the next click reuses the superpixels, without a task
        self.stroke(widget, [(2, 2)])
        self.assertFalse(widget.quick.is_busy())
        self.assertTrue(widget.view.mask()[2, 2])

    def test_scribbles_preview_and_enter_accepts_it(self):
        widget = self.create(tool="scribble", brush_size=2)
        self.send_signal(widget.Inputs.images, self.data)
        QTest.keyClick(widget, Qt.Key.Key_0)  # the background
        self.stroke(widget, [(1, 1), (30, 1)])
        self.stroke(widget, [(1, 30), (30, 30)])
        self.assertEqual(set(np.unique(widget.view.scribbles())), {0, 1})
        self.process_events(
            until=lambda: widget.Information.scribble_more.is_shown(),
            timeout=5000)  # one class is not enough
        QTest.keyClick(widget, Qt.Key.Key_1)  # the object, in the disc
        self.stroke(widget, [(10, 12), (14, 12)])
        self.process_events(until=lambda: widget.view.preview() is not None,
                            timeout=TIMEOUT)
        preview = widget.view.preview()
        self.assertFalse(widget.Information.scribble_more.is_shown())
        self.assertEqual(preview[12, 12], 1)
        self.assertEqual(preview[28, 3], 0)
        self.assertFalse(widget.view.mask().any())  # only a preview
        QTest.keyClick(widget, Qt.Key.Key_Return)
        np.testing.assert_array_equal(widget.view.mask(), preview)
        self.assertIsNone(widget.view.preview())
        widget.save_now()
        np.testing.assert_array_equal(
            AnnotationStore(self.store_dir).mask(self.path(0)), preview)
        # another image: the segmenter learned on the first predicts it
        widget.show_image(2)
        self.process_events(until=lambda: widget.view.preview() is not None,
                            timeout=TIMEOUT)
        self.assertTrue(widget.view.preview().any())
        widget.undo()  # nothing to undo on this image; the first keeps it
        widget.show_image(0)
        np.testing.assert_array_equal(widget.view.mask(), preview)
        # the strokes are kept in the store, and come back
        scribbles = widget.view.scribbles()
        np.testing.assert_array_equal(
            AnnotationStore(self.store_dir).scribbles(self.path(0)),
            scribbles)
        again = self.create()
        self.send_signal(again.Inputs.images, self.data, widget=again)
        np.testing.assert_array_equal(again.view.scribbles(), scribbles)
        again.show_image(1)
        self.process_events(until=lambda: again.view.preview() is not None,
                            timeout=TIMEOUT)
        self.assertTrue(again.view.preview().any())

    def test_scribbles_on_a_large_image_are_learned_shrunk(self):
        state = mock.Mock(is_interruption_requested=lambda: False)
        height, width = 1500, 2000  # 3 megapixels
        yy, xx = np.mgrid[:height, :width]
        inside = (yy - 700) ** 2 + (xx - 900) ** 2 < 400 ** 2
        image = np.where(inside[..., None], [220, 200, 60], [30, 40, 60]) \
            .astype(np.uint8)
        marks = np.zeros((height, width), np.uint8)
        marks[100, 100:1900] = 1  # one-pixel strokes
        marks[700, 700:1100] = 2
        with mock.patch.object(annotationtasks, "scribble_segmenter",
                               wraps=annotationtasks.scribble_segmenter) \
                as fit:
            _, mask = annotationtasks.run_scribbles([image], [marks], image,
                                                     None, state)
        fitted_image, = fit.call_args[0][0]
        fitted_marks, = fit.call_args[0][1]
        self.assertLessEqual(fitted_image.shape[0] * fitted_image.shape[1],
                             annotationtasks.SCRIBBLE_PIXELS)
        self.assertEqual(set(np.unique(fitted_marks)), {0, 1, 2})
        self.assertEqual(mask.shape, (height, width))
        self.assertGreater(np.mean(mask[inside] == 1), 0.95)
        self.assertGreater(np.mean(mask[~inside] == 0), 0.95)

    def test_failures_of_quick_tasks(self):
        from orangecontrib.deepimage.errors import InvalidInput
        widget = self.create(tool="box")
        self.send_signal(widget.Inputs.images, self.data)
        # a problem the user can act on is a message
        with mock.patch.object(annotationtasks, "mask_from_box",
                               side_effect=InvalidInput("too dim to see")):
            self.stroke(widget, [(2, 2), (20, 20)])
            self.wait_quick(widget)
        self.assertIn("too dim to see", str(widget.Error.failed))
        # a bug reaches Orange's error reporting
        bug = RuntimeError("a bug")
        with mock.patch.object(annotationtasks, "mask_from_box",
                               side_effect=bug), \
                mock.patch("sys.excepthook") as hook:
            self.stroke(widget, [(2, 2), (20, 20)])
            self.process_events(until=lambda: hook.called, timeout=5000)
        self.assertIs(hook.call_args[0][1], bug)
        self.assertFalse(widget.quick.is_busy())
        self.assertFalse(widget.view.mask().any())

    def test_painting_session_leaves_the_images_as_they_were(self):
        before = {name: (digest(self.path(i)),
                         os.stat(self.path(i)).st_mtime_ns)
                  for i, name in enumerate(self.names)}
        listing = sorted(os.listdir(self.images_dir))
        widget = self.create(brush_size=4)
        self.send_signal(widget.Inputs.images, self.data)
        for row in range(len(self.names)):
            widget.show_image(row)
            widget.set_tool("brush")
            self.stroke(widget, [(3, 3), (20, 8)])
            widget.set_tool("eraser")
            self.stroke(widget, [(10, 3), (10, 10)])
            widget.set_tool("fill")
            self.stroke(widget, [(28, 28)])
        widget.undo()
        widget.show_image(0)
        self.widgets.remove(widget)
        widget.onDeleteWidget()
        self.assertEqual({name: (digest(self.path(i)),
                                 os.stat(self.path(i)).st_mtime_ns)
                          for i, name in enumerate(self.names)}, before)
        self.assertEqual(sorted(os.listdir(self.images_dir)), listing)
        self.assertEqual(len(AnnotationStore(self.store_dir).annotated()),
                         len(self.names))

    def test_report(self):
        widget = self.create(brush_size=3)
        self.send_signal(widget.Inputs.images, self.data)
        self.stroke(widget, [(5, 5), (12, 5)])
        widget.save_now()
        widget.send_report()
        html = widget.report_html
        for text in ("Annotation folder", self.store_dir, "With a mask",
                     "disc0.png with its mask", "<img"):
            self.assertIn(text, html)


class TestModels(AnnotateTest):
    def test_segmentation_model_prefills_without_saving(self):
        from orangecontrib.deepimage.segmentation import SegmentationModel

        class Halves(SegmentationModel):  # a model that needs no training
            def __init__(self):  # pylint: disable=super-init-not-called
                self.class_names = ("background", "cell")

            def segment_array(self, image):
                mask = np.zeros(image.shape[:2], np.uint8)
                mask[:, :image.shape[1] // 2] = 1
                return mask

        widget = self.create()
        self.send_signal(widget.Inputs.model, Halves())
        self.send_signal(widget.Inputs.images, self.data)
        self.wait_until_finished(widget, timeout=TIMEOUT)
        self.assertIn("cell", widget.class_names)
        cell = widget.class_names.index("cell")
        shown = widget.view.mask()
        self.assertTrue((shown[:, :SIZE // 2] == cell).all())
        self.assertFalse(shown[:, SIZE // 2:].any())
        widget.show_image(1)
        widget.show_image(2)
        self.assertFalse(os.path.exists(self.store_dir))  # not saved
        QTest.keyClick(widget, Qt.Key.Key_Return)  # accepted: saved
        store = AnnotationStore(self.store_dir)
        np.testing.assert_array_equal(store.mask(self.path(2)), shown)
        self.assertIsNone(store.mask(self.path(1)))
        self.assertEqual(store.classes[cell], "cell")
        # without the model, an image shows no prediction any more
        widget.show_image(3)
        self.assertTrue(widget.view.mask().any())
        self.send_signal(widget.Inputs.model, None)
        self.assertFalse(widget.view.mask().any())
        self.assertFalse(widget._prefilled)

    def test_classifier_prefills_labels_with_its_confidence(self):
        class Classifier:  # what the widget uses of ImageClassifierModel
            class_names = ("round", "odd")

            def predict_paths(self, paths, callback=None):
                probabilities = np.tile([0.8, 0.2], (len(paths), 1))
                probabilities[1] = [0.3, 0.7]
                if callback is not None:
                    callback(1.0)
                return probabilities, {}

        widget = self.create()
        widget.set_model(Classifier())  # a stand-in, so not sent as a signal
        self.send_signal(widget.Inputs.images, self.data)
        self.wait_until_finished(widget, timeout=TIMEOUT)
        self.assertEqual(widget.label_names, ["round", "odd"])
        widget.set_mode("labels")
        widget.show_image(1)
        self.assertIn("odd (70 %)", widget.image_label.text())
        self.assertIsNone(self.get_output(widget.Outputs.labelled))
        QTest.keyClick(widget, Qt.Key.Key_Return)
        self.assertEqual(AnnotationStore(self.store_dir).label(self.path(1)),
                         "odd")

    def test_suggestions_from_the_shared_embedder(self):
        widget = self.create(n_suggested=2)
        self.send_signal(widget.Inputs.images, self.data)
        self.wait_until_finished(widget, timeout=TIMEOUT)
        self.assertEqual(widget.embeddings.shape, (len(self.names), 1000))
        self.assertEqual(len(widget.suggested), 2)
        self.assertEqual(len(self.get_output(widget.Outputs.suggested)), 2)


class TestDownstream(AnnotateTest):
    def test_store_opens_in_segmentation_data_and_output_trains(self):
        from orangecontrib.deepimage.segmentation import SegmentationModel
        from orangecontrib.deepimage.widgets.owsegmentationdata import (
            OWSegmentationData)
        from orangecontrib.deepimage.widgets.owsegmentationtrainer import (
            OWSegmentationTrainer)
        names = disc_images(self.images_dir, n=6)
        data = image_table(self.images_dir, names)
        widget = self.create(class_names=["background", "cell"],
                             current_class="cell", brush_size=9)
        self.send_signal(widget.Inputs.images, data)
        for row in range(len(names)):
            widget.show_image(row)
            cy, cx = 10 + 3 * row % 12, 12 + 5 * row % 10
            self.stroke(widget, [(cx - 1, cy), (cx + 1, cy)])
        widget.show_image(0)
        widget.commit.now()
        masks = self.get_output(widget.Outputs.masks)
        self.assertEqual(len(masks), 6)

        paired = self.create_widget(OWSegmentationData)
        paired.set_folders(self.images_dir,
                           AnnotationStore(self.store_dir).masks_dir)
        table = self.get_output(paired.Outputs.data, widget=paired,
                                wait=TIMEOUT)
        self.assertEqual(len(table), 6)
        self.assertFalse(paired.Warning.unpaired_masks.is_shown())
        self.assertEqual(table.domain["mask"].attributes["classes"],
                         "background,cell")

        trainer = self.create_widget(OWSegmentationTrainer, stored_settings={
            "depth": 2, "base_filters": 4, "tile_size": 32, "epochs": 1,
            "batch_size": 4, "validation_percent": 34, "augment": False,
            "auto_apply": True})
        self.send_signal(trainer.Inputs.data, masks, widget=trainer)
        model = self.get_output(trainer.Outputs.model, widget=trainer,
                                wait=TIMEOUT)
        self.assertIsInstance(model, SegmentationModel)
        self.assertEqual(model.class_names, ("background", "cell"))
        self.assertFalse(trainer.Error.active)

        # the model back in the widget: new images start from its masks
        more = disc_images(os.path.join(self.root, "more"), n=2)
        widget.set_store_folder(os.path.join(self.root, "store2"))
        self.send_signal(widget.Inputs.model, model)
        self.send_signal(widget.Inputs.images,
                         image_table(os.path.join(self.root, "more"), more))
        self.wait_until_finished(widget, timeout=TIMEOUT)
        self.assertEqual(sorted(widget.predicted_masks), [0, 1])
        self.assertTrue(widget._prefilled)
        self.assertEqual(widget.view.mask().shape, (SIZE, SIZE))
        self.assertFalse(os.path.exists(os.path.join(self.root, "store2")))

    def test_labelled_images_in_test_and_score_with_image_classifier(self):
        from AnyQt.QtCore import Qt as QtCore_Qt
        from Orange.evaluation import Results
        from Orange.widgets.evaluate.owtestandscore import OWTestAndScore
        from orangecontrib.deepimage.widgets.owimageclassifier import (
            OWImageClassifier)
        folder = os.path.join(self.root, "shapes")
        os.mkdir(folder)
        shapes = shapes_table(folder, per_class=6)
        # Test & Score needs a feature (after Deep Embedding there are
        # many); the classifier reads the images.
        domain = Domain([ContinuousVariable("width")], None,
                        shapes.domain.metas)
        images = Table.from_numpy(domain, np.full((len(shapes), 1), 32.0),
                                  metas=shapes.metas)
        names = shapes.domain.class_var.values
        widget = self.create(mode="labels", label_names=list(names))
        self.send_signal(widget.Inputs.images, images)
        for value in shapes.Y.astype(int):  # each key labels and goes on
            QTest.keyClick(widget, str(value + 1))
        self.process_events(until=lambda: self.get_output(
            widget.Outputs.labelled) is not None, timeout=5000)  # debounced
        labelled = self.get_output(widget.Outputs.labelled)
        self.assertEqual(len(labelled), len(shapes))
        self.assertEqual(
            [labelled.domain.class_var.values[int(v)] for v in labelled.Y],
            [names[int(v)] for v in shapes.Y])

        classifier = self.create_widget(OWImageClassifier, stored_settings={
            "epochs": 2, "learning_rate": 0.01, "auto_apply": True})
        learner = self.get_output(classifier.Outputs.learner,
                                  widget=classifier)
        test_and_score = self.create_widget(OWTestAndScore)
        test_and_score.n_folds = 0  # two-fold cross-validation
        self.send_signal(test_and_score.Inputs.train_data, labelled,
                         widget=test_and_score)
        self.send_signal(test_and_score.Inputs.learner, learner, 0,
                         widget=test_and_score)
        results = self.get_output(test_and_score.Outputs.evaluations_results,
                                  widget=test_and_score, wait=TIMEOUT)
        self.assertIsInstance(results, Results)
        self.assertEqual(len(results.actual), len(shapes))
        model = test_and_score.score_table.model
        header = [model.headerData(i, QtCore_Qt.Orientation.Horizontal)
                  for i in range(model.columnCount())]
        score = model.index(0, header.index("CA")).data()
        self.assertTrue(0 <= score <= 1)
        self.assertFalse(test_and_score.Error.active)

        # the trained classifier back in the widget labels new images
        self.send_signal(classifier.Inputs.data, labelled, widget=classifier)
        trained = self.get_output(classifier.Outputs.model,
                                  widget=classifier, wait=TIMEOUT)
        fresh = self.create(mode="labels",
                            store_folder=os.path.join(self.root, "new"))
        self.send_signal(fresh.Inputs.model, trained, widget=fresh)
        self.send_signal(fresh.Inputs.images, images, widget=fresh)
        self.wait_until_finished(fresh, timeout=TIMEOUT)
        self.assertEqual(fresh.probabilities.shape, (len(shapes), 3))
        self.assertEqual(fresh.label_names, list(names))
        self.assertRegex(fresh.image_label.text(),
                         r"the model says \w+ \(\d+ %\)")


class TestHeadless(AnnotateTest):
    def test_a_saved_workflow_sends_what_the_store_holds(self):
        from orangecontrib.deepimage.workflow import (
            _application, _registry, run_workflow)
        from test_workflow import save_workflow
        _application()
        store = AnnotationStore(self.store_dir, ["background", "cell"])
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[4:12, 4:12] = 1
        store.set_mask(self.path(0), mask)
        store.set_mask(self.path(3), mask)
        store.set_label(self.path(1), "round")
        before = {name: digest(os.path.join(self.store_dir, name))
                  for name in files_under(self.store_dir)}
        table_path = os.path.join(self.root, "images.tab")
        self.data.save(table_path)
        path = os.path.join(self.root, "annotate.ows")

        def setup(widgets):
            widgets["File"].add_path(table_path)
            widgets["Annotate"].n_suggested = 0
            widgets["Annotate"].set_store_folder(self.store_dir)

        save_workflow(path, _registry(), {
            "File": "Orange.widgets.data.owfile.OWFile",
            "Annotate": "orangecontrib.deepimage.widgets.owannotateimages."
                        "OWAnnotateImages"},
            [("File", "Data", "Annotate", "Images")], setup)
        masks_out = os.path.join(self.root, "masks.tab")
        labels_out = os.path.join(self.root, "labels.tab")
        result = run_workflow(path, outputs=[
            f"Annotate:Images with Masks={masks_out}",
            f"Annotate:Labelled Images={labels_out}"])
        self.assertFalse(result.failed, result.nodes)
        self.assertEqual(list(Table(masks_out).get_column("image name")),
                         ["disc0", "disc3"])
        self.assertEqual(len(Table(labels_out)), 1)
        self.assertEqual({name: digest(os.path.join(self.store_dir, name))
                          for name in files_under(self.store_dir)}, before)


if __name__ == "__main__":
    import unittest
    unittest.main()


class TestSegmentAnything(AnnotateTest):
    """The prompt tool with a tiny Segment Anything of random weights,
    saved as a local KerasHub preset (nothing is downloaded)."""
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            from test_sam import tiny_sam
        except unittest.SkipTest:  # keras-hub is optional
            raise
        cls.sam_dir = tempfile.TemporaryDirectory()
        tiny_sam().save_to_preset(cls.sam_dir.name)

    @classmethod
    def tearDownClass(cls):
        cls.sam_dir.cleanup()
        super().tearDownClass()

    def wait_all(self, widget):
        self.process_events(until=lambda: widget.task is None
                            and not widget.quick.is_busy(), timeout=TIMEOUT)

    def test_click_and_box_paint_what_segment_anything_gives(self):
        from orangecontrib.deepimage.sam import SegmentAnything
        widget = self.create(tool="prompt", sam_preset=self.sam_dir.name)
        self.send_signal(widget.Inputs.images, self.data)
        sam = SegmentAnything(preset_path=self.sam_dir.name)
        clicked = sam.mask_from_points(widget.image, [(12, 12)], [1])
        boxed = sam.mask_from_box(widget.image, (2, 2, 22, 22))
        self.assertTrue(0 < clicked.mean() < 1)

        self.stroke(widget, [(12, 12)])     # a real click: weights load
        self.wait_all(widget)
        np.testing.assert_array_equal(widget.view.mask() > 0, clicked)
        self.assertEqual(widget.view.undo_stack().undoText(),
                         "Segment Anything")
        widget.undo()
        self.stroke(widget, [(2, 2), (12, 12), (21, 21)])  # a real drag
        self.wait_all(widget)
        np.testing.assert_array_equal(widget.view.mask() > 0, boxed)
        self.assertFalse(widget.Error.failed.is_shown())

    def test_without_weights_it_says_what_it_needs(self):
        with tempfile.TemporaryDirectory() as empty:
            widget = self.create(tool="prompt", sam_preset=empty)
            self.send_signal(widget.Inputs.images, self.data)
            self.stroke(widget, [(12, 12)])
            self.wait_all(widget)
            self.assertTrue(widget.Error.failed.is_shown())
            text = str(widget.Error.failed)
            self.assertIn("sam_base_sa1b", text)
            self.assertIn("375 MB", text)
            self.assertFalse(widget.view.mask().any())

    def test_a_new_preset_folder_is_used(self):
        widget = self.create(tool="prompt", sam_preset=self.sam_dir.name)
        self.send_signal(widget.Inputs.images, self.data)
        self.stroke(widget, [(12, 12)])
        self.wait_all(widget)
        self.assertIsNotNone(widget.sam.model)
        edit = widget.controls.sam_preset   # the user clears the field
        QTest.keyClick(edit, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
        QTest.keyClick(edit, Qt.Key.Key_Backspace)
        QTest.keyClick(edit, Qt.Key.Key_Return)
        self.assertEqual(widget.sam_preset, "")
        self.assertIsNone(widget.sam)
