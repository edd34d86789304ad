"""The Annotate Images widget: real mouse and key events on its view, the
store it saves into, and its outputs in the widgets that learn from them."""
import hashlib
import os
import tempfile
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
from orangecontrib.deepimage.widgets.owannotateimages import (
    OWAnnotateImages, TOOL_INFO)

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
        widget.set_mode("labels")
        QTest.keyClick(widget, Qt.Key.Key_2)  # labels image 0, goes on
        self.assertEqual(widget.current, 1)
        QTest.keyClick(widget, Qt.Key.Key_1)
        store = AnnotationStore(self.store_dir)
        self.assertEqual(store.label(self.path(0)), "odd")
        self.assertEqual(store.label(self.path(1)), "round")
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
                         owannotateimages.MARK_COLOURS[
                             owannotateimages.SUGGESTED])
        self.assertTrue(widget._caption(first).startswith("★"))

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


if __name__ == "__main__":
    import unittest
    unittest.main()
