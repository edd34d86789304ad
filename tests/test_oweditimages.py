import contextlib
import os
import stat
import tempfile
import threading
import unittest
from unittest import mock

import numpy as np
from PIL import Image

from Orange.data import ContinuousVariable, Domain, StringVariable, Table
from Orange.widgets.tests.base import WidgetTest
from Orange.widgets.tests.utils import simulate

from orangecontrib.deepimage.errors import Cancelled
from orangecontrib.deepimage.files import FolderReadOnly
from orangecontrib.deepimage.widgets import oweditimages
from orangecontrib.deepimage.widgets.oweditimages import OWEditImages

CLASSES = "background, square, disc"


def make_data(folder):
    """Two photos with class masks (a square and a disc) and a broken row."""
    yy, xx = np.mgrid[:40, :56]
    labels = np.zeros((40, 56), np.uint8)
    labels[8:20, 6:18] = 1
    labels[(yy - 24) ** 2 + (xx - 38) ** 2 <= 7 ** 2] = 2
    for i in range(2):
        pixels = np.dstack([xx * 4, yy * 5, np.full_like(xx, 100 + 50 * i)])
        pixels = pixels.astype(np.uint8)
        pixels[labels > 0] = (250, 0, 250)
        Image.fromarray(pixels).save(os.path.join(folder, f"photo{i}.png"))
        Image.fromarray(labels).save(os.path.join(folder, f"mask{i}.png"))
    image = StringVariable("image")
    image.attributes.update({"type": "image", "origin": folder})
    mask = StringVariable("mask")
    mask.attributes.update({"type": "image", "origin": folder,
                            "mask": "class", "classes": CLASSES})
    rows = [["photo0.png", "mask0.png"], ["photo1.png", "mask1.png"],
            ["missing.png", "mask0.png"]]
    return Table.from_numpy(Domain([], metas=[image, mask]),
                            np.empty((3, 0)),
                            metas=np.array(rows, dtype=object)), labels


class TestOWEditImages(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.data, cls.labels = make_data(cls.tempdir.name)

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self._out = tempfile.TemporaryDirectory()
        self.out = self._out.name
        self.widget = self.create_widget(
            OWEditImages, stored_settings={"output_folder": self.out})

    def tearDown(self):
        os.chmod(self.out, 0o755)
        self._out.cleanup()

    def write(self, data=None, widget=None):
        widget = widget or self.widget
        self.send_signal(widget.Inputs.data,
                         self.data if data is None else data, widget=widget)
        widget.commit.now()
        self.wait_until_finished(widget=widget, timeout=30000)
        return self.get_output(widget.Outputs.edited_images, widget=widget)

    def wait_for_preview(self, widget=None):
        widget = widget or self.widget
        self.process_events(lambda: widget.preview_pixels is not None,
                            timeout=10000)
        return widget.preview_pixels

    def test_writes_and_outputs_edited_images(self):
        output = self.write()
        self.assertEqual(len(output), 2)
        column = output.domain["edited image"]
        self.assertEqual(column.attributes["type"], "image")
        self.assertEqual(column.attributes["origin"], self.out)
        self.assertEqual(sorted(os.listdir(self.out)),
                         ["photo0-remove.png", "photo1-remove.png"])
        self.assertTrue(self.widget.Warning.images_skipped.is_shown())
        self.assertIn("not found", str(self.widget.Warning.images_skipped))
        self.assertTrue(self.widget.Information.written.is_shown())

    def test_nothing_is_written_without_asking(self):
        self.send_signal(self.widget.Inputs.data, self.data)
        self.wait_until_finished()
        self.assertIsNone(self.get_output(self.widget.Outputs.edited_images))
        self.assertEqual(os.listdir(self.out), [])

    def test_operation_change_shows_its_parameters(self):
        widget = self.widget
        self.assertFalse(widget.method_box.isHidden())
        self.assertTrue(widget.blur_box.isHidden())
        simulate.combobox_activate_index(
            widget.operation_combo, oweditimages.OPERATION_KEYS.index("blur"))
        self.assertEqual(widget.operation, "blur")
        self.assertTrue(widget.method_box.isHidden())
        self.assertFalse(widget.blur_box.isHidden())
        widget.set_operation("pixelate")
        self.assertFalse(widget.pixel_box.isHidden())
        widget.set_operation("fill")
        self.assertFalse(widget.colour_box.isHidden())
        widget.set_operation("cut-out")
        output = self.write()
        self.assertEqual(sorted(os.listdir(self.out)),
                         ["photo0-cut-out.png", "photo1-cut-out.png"])
        self.assertEqual(len(output), 2)

    def test_classes_are_listed_and_chosen(self):
        self.send_signal(self.widget.Inputs.data, self.data)
        items = [self.widget.class_list.item(i).text()
                 for i in range(self.widget.class_list.count())]
        self.assertEqual(items, ["background", "square", "disc"])
        self.assertEqual(self.widget.selected_classes, ["square", "disc"])
        self.widget.class_list.item(1).setSelected(False)
        self.assertEqual(self.widget.selected_classes, ["disc"])
        self.widget.set_operation("fill")
        output = self.write()
        disc = np.asarray(Image.open(os.path.join(
            self.out, output.get_column("edited image")[0])))
        # The square is not filled, the disc is (black).
        self.assertTrue((disc[12, 12] != 0).any())
        self.assertTrue((disc[24, 38] == 0).all())

        self.widget.class_list.clearSelection()
        self.assertTrue(self.widget.Warning.no_classes.is_shown())
        self.widget.commit.now()
        self.wait_until_finished()
        self.assertIsNone(self.get_output(self.widget.Outputs.edited_images))

    def test_missing_folder_message(self):
        missing = os.path.join(self.out, "no such folder")
        self.widget.set_output_folder(missing)
        self.assertTrue(self.widget.Error.folder_missing.is_shown())
        self.assertIn("does not exist", str(self.widget.Error.folder_missing))
        self.assertIsNone(self.write())
        self.assertFalse(os.path.exists(missing))
        self.widget.set_output_folder(self.out)
        self.assertFalse(self.widget.Error.folder_missing.is_shown())

    def test_read_only_folder_message(self):
        os.chmod(self.out, stat.S_IRUSR | stat.S_IXUSR)
        # Root may write anyway: then pretend, as a user would see it.
        patch = mock.patch("os.access", return_value=False) \
            if os.access(self.out, os.W_OK) else contextlib.nullcontext()
        with patch:
            self.widget.set_output_folder(self.out)
            self.assertTrue(self.widget.Error.folder_read_only.is_shown())
            self.assertIsNone(self.write())
        os.chmod(self.out, 0o755)
        self.assertEqual(os.listdir(self.out), [])

    def test_folder_error_from_the_run_is_shown(self):
        def fail(*_args):
            raise FolderReadOnly("The output folder is read-only: X")
        with mock.patch.object(oweditimages, "run_edit", fail):
            self.write()
        self.assertTrue(self.widget.Error.folder_read_only.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.edited_images))

    def test_no_image_or_mask_column(self):
        numbers = Table.from_numpy(Domain([ContinuousVariable("x")]),
                                   np.arange(3).reshape(3, 1))
        self.send_signal(self.widget.Inputs.data, numbers)
        self.assertTrue(self.widget.Error.no_image_column.is_shown())
        only_images = self.data.transform(
            Domain([], metas=[self.data.domain["image"]]))
        self.send_signal(self.widget.Inputs.data, only_images)
        self.assertFalse(self.widget.Error.no_image_column.is_shown())
        self.assertTrue(self.widget.Error.no_mask_column.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.edited_images))
        self.send_signal(self.widget.Inputs.data, None)
        self.assertFalse(self.widget.Error.no_mask_column.is_shown())

    def test_preview_before_and_after(self):
        self.send_signal(self.widget.Inputs.data, self.data)
        before, after = self.wait_for_preview()
        self.assertEqual(before.shape, (40, 56, 3))
        self.assertTrue((before[12, 12] == (250, 0, 250)).all())
        self.assertFalse((after[12, 12] == (250, 0, 250)).all())
        self.assertIsNotNone(self.widget.preview_view.after)
        self.widget.set_operation("cut-out")
        _, after = self.wait_for_preview()
        self.assertEqual(after.shape, (40, 56, 4))
        self.widget.split_slider.setValue(20)
        self.assertAlmostEqual(self.widget.preview_view.split, 0.2)
        self.widget.preview_view.grab()  # paints both halves
        self.assertEqual(os.listdir(self.out), [])  # nothing written

    def test_preview_opens_on_an_image_the_classes_touch(self):
        square_only = np.where(self.labels == 2, 0, self.labels)
        Image.fromarray(square_only.astype(np.uint8)).save(
            os.path.join(self.tempdir.name, "square-only.png"))
        data = self.data.copy()
        with data.unlocked(data.metas):
            data.metas[0, 1] = "square-only.png"
        widget = self.create_widget(
            OWEditImages, stored_settings={"output_folder": self.out,
                                           "selected_classes": ["disc"]})
        self.send_signal(widget.Inputs.data, data, widget=widget)
        self.assertEqual(widget.preview_row, 1)
        self.assertEqual(widget.preview_combo.currentText(), "photo1.png")
        before, after = self.wait_for_preview(widget)
        self.assertFalse((before == after).all())  # the disc was removed
        # choosing the square too moves the preview to the first image
        widget.class_list.item(1).setSelected(True)
        self.assertEqual(widget.selected_classes, ["square", "disc"])
        self.assertEqual(widget.preview_row, 0)
        # unless the user chose the image to preview
        simulate.combobox_activate_index(widget.preview_combo, 1)
        widget.class_list.item(2).setSelected(False)
        self.assertEqual(widget.selected_classes, ["square"])
        self.assertEqual(widget.preview_row, 1)
        # new data opens on a touched image again
        self.send_signal(widget.Inputs.data, data, widget=widget)
        self.assertEqual(widget.preview_row, 0)

    def test_preview_of_an_unreadable_row(self):
        self.send_signal(self.widget.Inputs.data, self.data)
        self.wait_for_preview()
        simulate.combobox_activate_index(self.widget.preview_combo, 2)
        self.process_events(lambda: "No preview"
                            in self.widget.preview_view.message,
                            timeout=10000)
        self.assertIsNone(self.widget.preview_pixels)

    def test_settings_round_trip(self):
        widget = self.widget
        self.send_signal(widget.Inputs.data, self.data)
        widget.set_operation("remove")
        simulate.combobox_activate_index(widget.method_combo, 1)
        widget.class_list.item(1).setSelected(False)
        widget.controls.dilate.setValue(7)
        widget.set_fill_colour("#ff8000")
        settings = widget.settingsHandler.pack_data(widget)
        self.assertEqual(settings["operation"], "remove")
        self.assertEqual(settings["method"], "quality")
        self.assertEqual(settings["selected_classes"], ["disc"])
        self.assertEqual(settings["fill_colour"], "#ff8000")

        restored = self.create_widget(OWEditImages, stored_settings=settings)
        self.send_signal(restored.Inputs.data, self.data, widget=restored)
        self.assertEqual(restored.operation_combo.currentData(), "remove")
        self.assertEqual(restored.method_combo.currentData(), "quality")
        self.assertEqual(restored.dilate, 7)
        self.assertEqual(restored.folder_edit.text(), self.out)
        self.assertEqual([item.text() for item
                          in restored.class_list.selectedItems()], ["disc"])
        self.assertEqual(restored.colour_button.text(), "#ff8000")

    def test_unknown_stored_names_fall_back(self):
        widget = self.create_widget(
            OWEditImages, stored_settings={
                "operation": "smudge", "method": "magic",
                "selected_classes": ["crane"]})
        self.assertEqual(widget.operation, "remove")
        self.assertEqual(widget.method, "fast")
        self.send_signal(widget.Inputs.data, self.data, widget=widget)
        self.assertEqual(widget.selected_classes, ["square", "disc"])

    def test_cancel_stops_the_run(self):
        started, release = threading.Event(), threading.Event()

        def slow(*args):
            state = args[-1]
            started.set()
            release.wait(10)
            if state.is_interruption_requested():
                raise Cancelled()
            raise AssertionError("the task was not interrupted")

        with mock.patch.object(oweditimages, "run_edit", slow):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.widget.commit.now()
            self.assertTrue(started.wait(10))
            self.assertTrue(self.widget.cancel_button.isEnabled())
            self.widget.cancel_button.click()
            release.set()
            self.wait_until_finished()
        self.assertFalse(self.widget.cancel_button.isEnabled())
        self.assertFalse(self.widget.Error.edit_failed.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.edited_images))

    def test_auto_commit_writes_on_new_data(self):
        widget = self.create_widget(
            OWEditImages, stored_settings={"output_folder": self.out,
                                           "auto_commit": True})
        self.send_signal(widget.Inputs.data, self.data, widget=widget)
        self.wait_until_finished(widget=widget)
        self.assertEqual(
            len(self.get_output(widget.Outputs.edited_images, widget=widget)),
            2)

    def test_report(self):
        self.send_signal(self.widget.Inputs.data, self.data)
        self.wait_for_preview()
        self.widget.send_report()
        self.assertIn("data:image/png;base64", self.widget.report_html)
        self.send_signal(self.widget.Inputs.data, None)
        self.widget.send_report()


if __name__ == "__main__":
    unittest.main()
