import os
import shutil
import tempfile
import threading
import unittest
from unittest import mock

import numpy as np
from PIL import Image

from Orange.widgets.tests.base import WidgetTest
from Orange.widgets.tests.utils import simulate

from orangecontrib.deepimage.errors import Cancelled
from orangecontrib.deepimage.images import find_mask_column, mask_class_names
from orangecontrib.deepimage.widgets import owsegmentationdata
from orangecontrib.deepimage.widgets.owsegmentationdata import (
    OWSegmentationData)

LABELS = np.array([[0, 1, 1], [0, 0, 2]], np.uint8)


def make_folders(root):
    """Three good pairs, and one of each problem the widget warns about."""
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    os.mkdir(images)
    os.mkdir(masks)
    for name in ("a", "b", "c", "lonely", "big", "colour", "odd"):
        Image.new("RGB", (3, 2), (90, 90, 90)).save(
            os.path.join(images, name + ".jpg"))
    for name in ("a", "b", "c_mask", "orphan"):
        Image.fromarray(LABELS).save(os.path.join(masks, name + ".png"))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(
        os.path.join(masks, "big.png"))                 # size mismatch
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(os.path.join(masks, "colour.png"))  # RGB
    Image.fromarray(LABELS * 4).save(os.path.join(masks, "odd.png"))
    with open(os.path.join(masks, "classes.txt"), "w") as file:
        file.write("background\nnucleus\nmembrane\n")
    return images, masks


class TestOWSegmentationData(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.images, cls.masks = make_folders(cls.tempdir.name)

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(OWSegmentationData)

    def test_errors_are_wrapped_in_the_fixed_width_window(self):
        label = self.widget.wrapped_errors
        text = "a long reason " * 12
        self.widget.Error.pairing_failed(text)
        self.assertTrue(label.isVisibleTo(self.widget))
        self.assertTrue(label.wordWrap())
        self.assertIn(text.strip(), label.text())
        self.widget.Error.pairing_failed.clear()
        self.assertFalse(label.isVisibleTo(self.widget))

    def choose(self, widget=None):
        widget = widget or self.widget
        widget.set_images_dir(self.images)
        widget.set_masks_dir(self.masks)
        self.wait_until_finished(widget)

    def test_no_folder_message_and_no_personal_defaults(self):
        self.assertEqual(self.widget.images_dir, "")
        self.assertEqual(self.widget.masks_dir, "")
        self.assertTrue(self.widget.Information.no_folder.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.data))

    def test_pairs_and_warns_about_each_problem(self):
        self.choose()
        data = self.get_output(self.widget.Outputs.data)
        self.assertEqual(list(data.get_column("image name")),
                         ["a", "b", "c"])
        mask_var = find_mask_column(data)
        self.assertEqual(mask_class_names(mask_var),
                         ["background", "nucleus", "membrane"])
        self.assertEqual(mask_var.attributes["mask"], "class")
        warning = self.widget.Warning
        self.assertIn("lonely.jpg", str(warning.unpaired_images))
        self.assertIn("orphan.png", str(warning.unpaired_masks))
        self.assertIn("big.png", str(warning.size_mismatch))
        self.assertIn("odd.png", str(warning.unknown_values))
        self.assertTrue(str(warning.rgb_masks).startswith("1 mask(s)"))
        self.assertIn("3 pairs", self.widget.info_label.text())
        self.assertIn("classes.txt", self.widget.info_label.text())
        self.assertFalse(self.widget.Error.nothing_paired.is_shown())
        self.widget.send_report()

    def test_class_names_and_kind_override(self):
        self.choose()
        self.widget.classes_edit.setText("bg, a, b, c, d, e, f, g, h")
        self.widget.classes_edit.editingFinished.emit()
        self.wait_until_finished()
        data = self.get_output(self.widget.Outputs.data)
        self.assertEqual(len(mask_class_names(find_mask_column(data))), 9)
        self.assertFalse(self.widget.Warning.unknown_values.is_shown())

        simulate.combobox_activate_index(self.widget.kind_combo, 2)
        self.wait_until_finished()
        self.assertEqual(self.widget.mask_kind, "instance")
        data = self.get_output(self.widget.Outputs.data)
        self.assertEqual(find_mask_column(data).attributes["mask"],
                         "instance")

        self.widget.classes_edit.setText("only-one")
        self.widget.classes_edit.editingFinished.emit()
        self.wait_until_finished()
        self.assertTrue(self.widget.Error.bad_classes.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.data))

    def test_missing_folder_and_nothing_paired(self):
        self.widget.set_images_dir(self.images)
        self.widget.set_masks_dir(os.path.join(self.masks, "gone"))
        self.assertTrue(self.widget.Error.folder_missing.is_shown())
        self.assertIn("masks", str(self.widget.Error.folder_missing))
        self.assertIsNone(self.get_output(self.widget.Outputs.data))

        # a folder of images paired with itself: no masks in it
        self.widget.set_masks_dir(self.images)
        self.wait_until_finished()
        self.assertFalse(self.widget.Error.folder_missing.is_shown())
        self.assertTrue(self.widget.Error.nothing_paired.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.data))

    def test_settings_round_trip(self):
        self.choose()
        simulate.combobox_activate_index(self.widget.kind_combo, 1)
        self.widget.classes_edit.setText("bg, nucleus, membrane")
        self.widget.classes_edit.editingFinished.emit()
        self.wait_until_finished()
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertEqual(settings["mask_kind"], "class")
        self.assertEqual(settings["recent_images"], [self.images])
        self.assertEqual(settings["__version__"], 1)

        restored = self.create_widget(OWSegmentationData,
                                      stored_settings=settings)
        self.wait_until_finished(restored)
        self.assertEqual(restored.images_edit.text(), self.images)
        self.assertEqual(restored.masks_edit.text(), self.masks)
        self.assertEqual(restored.kind_combo.currentIndex(), 1)
        self.assertEqual(restored.classes_edit.text(),
                         "bg, nucleus, membrane")
        self.assertEqual(len(self.get_output(restored.Outputs.data,
                                             widget=restored)), 3)
        # an unknown stored kind falls back to automatic
        widget = self.create_widget(OWSegmentationData,
                                    stored_settings={"mask_kind": "stuff"})
        self.assertEqual(widget.mask_kind, "auto")

    def test_recent_folders_are_remembered(self):
        for i in range(12):
            self.widget.set_images_dir(f"/nowhere/{i}")
        self.assertEqual(len(self.widget.recent_images), 10)
        self.assertEqual(self.widget.recent_images[0], "/nowhere/11")

    def test_new_folder_cancels_running_pairing(self):
        started, release = threading.Event(), threading.Event()

        def slow(images, masks, classes, kind, state):
            started.set()
            release.wait(10)
            if state.is_interruption_requested():
                raise Cancelled()
            raise AssertionError("the task was not interrupted")

        with mock.patch.object(owsegmentationdata, "run_pairing", slow):
            self.choose_no_wait()
            self.assertTrue(started.wait(10))
            self.widget.set_masks_dir("")
            release.set()
            self.wait_until_finished()
        self.assertTrue(self.widget.Information.no_folder.is_shown())
        self.assertFalse(self.widget.Error.pairing_failed.is_shown())

    def choose_no_wait(self):
        self.widget.images_dir = self.images
        self.widget.set_masks_dir(self.masks)

    def test_folders_are_found_beside_a_moved_workflow(self):
        root = self.tempdir.name
        widget = self.create_widget(OWSegmentationData,
                                    env={"basedir": root})
        widget.set_folders(self.images, self.masks)
        self.wait_until_finished(widget)
        settings = widget.settingsHandler.pack_data(widget)
        self.assertEqual(settings["images_relative"], "images")
        self.assertEqual(settings["masks_relative"], "masks")

        # The workflow and its folders moved: the old absolute paths are gone.
        with tempfile.TemporaryDirectory() as moved:
            shutil.copytree(self.images, os.path.join(moved, "images"))
            shutil.copytree(self.masks, os.path.join(moved, "masks"))
            settings["images_dir"] = "/nonexistent/images"
            settings["masks_dir"] = "/nonexistent/masks"
            restored = self.create_widget(
                OWSegmentationData, stored_settings=settings,
                env={"basedir": moved})
            restored.reload()
            self.wait_until_finished(restored)
            output = self.get_output(restored.Outputs.data, widget=restored)
            self.assertFalse(restored.Error.folder_missing.is_shown())
            self.assertEqual(len(output), 3)
            origin = output.domain["image"].attributes["origin"]
            self.assertTrue(origin.startswith(moved))

    def test_browse_uses_the_dialog(self):
        with mock.patch.object(owsegmentationdata.QFileDialog,
                               "getExistingDirectory",
                               return_value=self.images):
            self.widget.browse_images()
        with mock.patch.object(owsegmentationdata.QFileDialog,
                               "getExistingDirectory", return_value=""):
            self.widget.browse_masks()  # cancelled: nothing changes
        self.assertEqual(self.widget.images_dir, self.images)
        self.assertEqual(self.widget.masks_dir, "")


if __name__ == "__main__":
    unittest.main()
