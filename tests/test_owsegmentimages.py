import errno
import os
import pathlib
import tempfile
import unittest
from unittest import mock

import numpy as np
from PIL import Image
from skimage.measure import label

from Orange.data import Domain, StringVariable, Table
from Orange.misc.environ import data_dir
from Orange.widgets.tests.base import WidgetTest

from orangecontrib.deepimage import files
from orangecontrib.deepimage.errors import Cancelled
from orangecontrib.deepimage.segdata import load_mask
from orangecontrib.deepimage.segmentation import SegmentationModel
from orangecontrib.deepimage.widgets import owsegmentimages
from orangecontrib.deepimage.widgets.owsegmentimages import OWSegmentImages

from test_segmentation import pairs_table

TIMEOUT = 30000


def snapshot(folder):
    """Each file's name, size and time of change."""
    return {entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns)
            for entry in os.scandir(folder)}


def threshold_model(class_names=("background", "cell"), threshold=120):
    """A "trained" model without training: a pixel whose mean channel is
    above `threshold` is class 1. The test images' discs (about 200 on
    about 40) are segmented exactly."""
    import keras
    pixels = keras.Input((None, None, 3), name="pixels")
    conv = keras.layers.Conv2D(2, 1, activation="softmax", name="classes")
    network = keras.Model(pixels, conv(pixels))
    steepness = 0.1
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[..., 1] = steepness / 3
    conv.set_weights([kernel, np.array([0, -steepness * threshold],
                                       np.float32)])
    return SegmentationModel(network, class_names, tile_size=32)


def touching_discs(folder: pathlib.Path) -> Table:
    """One image of two discs that touch: one object, or two when split."""
    yy, xx = np.mgrid[:64, :64]
    mask = ((yy - 32) ** 2 + (xx - 20) ** 2 < 100) \
        | ((yy - 32) ** 2 + (xx - 38) ** 2 < 100)
    image = np.where(mask, 200, 40).astype(np.uint8)
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.stack([image] * 3, -1)).save(folder / "pair.png")
    var = StringVariable("image")
    var.attributes.update(type="image", origin=str(folder))
    return Table.from_numpy(Domain([], metas=[var]), np.empty((1, 0)),
                            metas=np.array([["pair.png"]], dtype=object))


class TestOWSegmentImages(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.root = pathlib.Path(cls.tempdir.name)
        cls.data = pairs_table(cls.root / "cells", n=4, size=64)
        cls.model = threshold_model()

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.out = tempfile.mkdtemp(dir=self.tempdir.name)
        self.widget = self.create_widget(
            OWSegmentImages, stored_settings={"output_folder": self.out})

    def test_errors_are_wrapped_in_the_fixed_width_window(self):
        label = self.widget.wrapped_errors
        text = "a long reason " * 12
        self.widget.Error.segmentation_failed(text)
        self.assertTrue(label.isVisibleTo(self.widget))
        self.assertTrue(label.wordWrap())
        self.assertIn(text.strip(), label.text())
        self.widget.Error.segmentation_failed.clear()
        self.assertFalse(label.isVisibleTo(self.widget))

    def run_widget(self, data=None, model=None):
        self.send_signal(self.widget.Inputs.data,
                         self.data if data is None else data)
        self.send_signal(self.widget.Inputs.model, model or self.model)
        self.wait_until_finished(timeout=TIMEOUT)
        return (self.get_output(self.widget.Outputs.images),
                self.get_output(self.widget.Outputs.counts),
                self.get_output(self.widget.Outputs.objects))

    def test_outputs_masks_counts_and_objects(self):
        images, counts, objects = self.run_widget()
        mask_var = images.domain.metas[-1]
        self.assertEqual(mask_var.name, "predicted mask")  # truth: "mask"
        self.assertEqual(mask_var.attributes["mask"], "class")
        self.assertEqual(mask_var.attributes["origin"], self.out)
        self.assertEqual(len(os.listdir(self.out)), 4)
        truth_folder = self.data.domain["mask"].attributes["origin"]
        expected_counts = []
        for name, predicted in zip(images.get_column("mask"),
                                   images.get_column(mask_var)):
            truth = load_mask(os.path.join(truth_folder, name))
            mask = load_mask(os.path.join(self.out, predicted))
            np.testing.assert_array_equal(mask, truth)
            expected_counts.append(label(truth, connectivity=2).max())

        self.assertEqual(len(counts), 4)
        np.testing.assert_array_equal(counts.get_column("cell count"),
                                      expected_counts)
        fractions = counts.get_column("cell area fraction")
        self.assertTrue(((fractions > 0) & (fractions < 1)).all())
        self.assertEqual(list(counts.get_column("image name")),
                         [f"cell{i:02d}.png" for i in range(4)])
        self.assertEqual(len(objects), sum(expected_counts))
        self.assertIn("area", objects.domain)
        self.assertIn("mean intensity", objects.domain)
        self.assertTrue(self.widget.Information.written.is_shown())
        self.assertFalse(self.widget.Error.active)

    def test_never_overwrites(self):
        images, _, _ = self.run_widget()
        first = sorted(os.listdir(self.out))
        before = {name: (pathlib.Path(self.out) / name).read_bytes()
                  for name in first}
        self.send_signal(self.widget.Inputs.data, self.data[:2])
        self.wait_until_finished(timeout=TIMEOUT)
        again = self.get_output(self.widget.Outputs.images)
        names = list(again.get_column(again.domain.metas[-1]))
        self.assertEqual(names, ["cell00-mask-1.png", "cell01-mask-1.png"])
        self.assertEqual(len(os.listdir(self.out)), 6)
        for name, content in before.items():
            self.assertEqual((pathlib.Path(self.out) / name).read_bytes(),
                             content)

    def test_split_touching_measures_again_without_writing(self):
        data = touching_discs(self.root / "touching")
        _, counts, objects = self.run_widget(data)
        self.assertEqual(counts.get_column("cell count")[0], 1)
        self.assertEqual(len(objects), 1)
        files = sorted(os.listdir(self.out))
        self.widget.controls.split_touching.setChecked(True)
        self.wait_until_finished(timeout=TIMEOUT)
        counts = self.get_output(self.widget.Outputs.counts)
        self.assertEqual(counts.get_column("cell count")[0], 2)
        self.assertEqual(len(self.get_output(self.widget.Outputs.objects)),
                         2)
        self.assertEqual(sorted(os.listdir(self.out)), files)

    def test_default_folder_is_not_beside_the_images(self):
        folder = owsegmentimages.default_output_folder()
        self.assertTrue(folder.startswith(data_dir(versioned=False)))
        default = os.path.join(self.tempdir.name, "default", "masks")
        widget = self.create_widget(OWSegmentImages,
                                    stored_settings={"output_folder": ""})
        with mock.patch.object(owsegmentimages, "default_output_folder",
                               lambda: default):
            own = widget.folder()
            self.assertEqual(os.path.dirname(own), default)
            self.send_signal(widget.Inputs.data, self.data[:1],
                             widget=widget)
            self.send_signal(widget.Inputs.model, self.model, widget=widget)
            self.wait_until_finished(widget=widget, timeout=TIMEOUT)
        self.assertEqual(os.listdir(default), [os.path.basename(own)])
        names = os.listdir(own)
        self.assertEqual(len(names), 1)
        self.assertTrue(names[0].startswith("cell00-mask"))
        images_folder = self.data.domain["image"].attributes["origin"]
        self.assertFalse(any("mask" in name
                             for name in os.listdir(images_folder)))

    def test_own_folder_keeps_one_runs_masks(self):
        widget = self.create_widget(OWSegmentImages)
        folder = widget.folder()

        def run(data):
            self.send_signal(widget.Inputs.data, data, widget=widget)
            self.send_signal(widget.Inputs.model, self.model, widget=widget)
            self.wait_until_finished(widget=widget, timeout=TIMEOUT)
            return self.get_output(widget.Outputs.images, widget=widget)

        images = run(self.data)
        self.assertEqual(images.domain.metas[-1].attributes["origin"], folder)
        once = snapshot(folder)
        self.assertEqual(len(once), 4)
        for _ in range(10):
            images = run(self.data)
        # The same masks: not written again.
        self.assertEqual(snapshot(folder), once)
        names = images.get_column(images.domain.metas[-1])
        self.assertEqual(sorted(names), sorted(once))
        # New input: its masks replace the old ones.
        images = run(self.data[:2])
        self.assertEqual(sorted(os.listdir(folder)),
                         sorted(images.get_column(images.domain.metas[-1])))

    def test_read_only_output_folder(self):
        segment = mock.Mock(side_effect=AssertionError("segmented"))
        with mock.patch.object(SegmentationModel, "segment", segment), \
                mock.patch("os.access", return_value=False):
            images, _, _ = self.run_widget()
        self.assertIsNone(images)
        self.assertTrue(self.widget.Error.folder_read_only.is_shown())
        self.assertIn("read-only", str(self.widget.Error.folder_read_only))
        segment.assert_not_called()
        self.assertEqual(os.listdir(self.out), [])

    def test_full_disk_leaves_no_partial_mask(self):
        self.run_widget(self.data[:2])
        before = snapshot(self.out)
        written = []
        original = files.write_new_file

        def fill_up(path, content, numbered=True):
            if written:  # the second mask finds the disk full
                def half(file):
                    file.write(content[:10])
                    raise OSError(errno.ENOSPC, "No space left on device")
                return original(path, half, numbered)
            written.append(path)
            return original(path, content, numbered)

        with mock.patch.object(files, "write_new_file", fill_up):
            images, _, _ = self.run_widget(self.data[2:])
        self.assertIsNone(images)
        self.assertIn("No space left", " ".join(
            str(message) for message in self.widget.Error.active))
        # The one mask written before the disk was full is complete; of the
        # second nothing is left, and the earlier masks are as they were.
        after = snapshot(self.out)
        self.assertEqual(len(after), len(before) + 1)
        for name, stamp in before.items():
            self.assertEqual(after[name], stamp)
        (new,) = set(after) - set(before)
        load_mask(os.path.join(self.out, new))

    def test_missing_output_folder(self):
        self.widget.set_output_folder(os.path.join(self.out, "missing"))
        images, _, _ = self.run_widget()
        self.assertIsNone(images)
        self.assertTrue(self.widget.Error.folder_missing.is_shown())
        self.widget.set_output_folder(self.out)
        self.wait_until_finished(timeout=TIMEOUT)
        self.assertFalse(self.widget.Error.folder_missing.is_shown())
        self.assertIsNotNone(self.get_output(self.widget.Outputs.images))

    def test_unreadable_image_gets_no_mask(self):
        folder = self.data.domain["image"].attributes["origin"]
        (pathlib.Path(folder) / "broken.png").write_text("not an image")
        metas = np.vstack([self.data.metas[:2],
                           [["broken.png", "cell00.png"]]])
        data = Table.from_numpy(self.data.domain, np.empty((3, 0)),
                                metas=metas)
        images, counts, _ = self.run_widget(data)
        self.assertEqual(images.get_column(images.domain.metas[-1])[2], "")
        self.assertTrue(self.widget.Warning.unreadable.is_shown())
        self.assertTrue(np.isnan(counts.get_column("cell count")[2]))
        self.assertEqual(len(os.listdir(self.out)), 2)

    def test_table_without_rows(self):
        images, counts, objects = self.run_widget(self.data[:0])
        self.assertEqual((len(images), len(counts), len(objects)),
                         (0, 0, 0))
        self.assertFalse(self.widget.Error.active)
        self.assertEqual(os.listdir(self.out), [])

    def test_no_image_column_and_no_model(self):
        self.assertTrue(self.widget.Information.no_model.is_shown())
        masks_only = self.data.transform(
            Domain([], metas=self.data.domain.metas[1:]))
        images, counts, objects = self.run_widget(masks_only)
        self.assertTrue(self.widget.Error.no_image_column.is_shown())
        self.assertIsNone(images)
        self.assertIsNone(counts)
        self.assertIsNone(objects)
        self.send_signal(self.widget.Inputs.data, self.data)
        self.assertFalse(self.widget.Error.no_image_column.is_shown())
        self.send_signal(self.widget.Inputs.model, None)
        self.assertTrue(self.widget.Information.no_model.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.images))

    def test_cancel_sends_nothing(self):
        def slow(model, data, folder, split, state):
            while not state.is_interruption_requested():
                state.set_progress_value(1)
            raise Cancelled()

        with mock.patch.object(owsegmentimages, "run_segmentation", slow):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.send_signal(self.widget.Inputs.model, self.model)
            self.assertTrue(self.widget.cancel_button.isEnabled())
            self.widget.cancel_button.click()
        self.assertIsNone(self.widget.task)
        self.assertIsNone(self.get_output(self.widget.Outputs.images))
        self.assertFalse(self.widget.Error.active)

    def test_settings_round_trip(self):
        self.widget.controls.split_touching.setChecked(True)
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertEqual(settings["output_folder"], self.out)
        self.assertEqual(settings["__version__"], 1)
        restored = self.create_widget(OWSegmentImages,
                                      stored_settings=settings)
        self.assertTrue(restored.split_touching)
        self.assertEqual(restored.folder(), self.out)
        self.assertEqual(restored.folder_label.text(), self.out)

    def test_report(self):
        self.widget.send_report()
        self.run_widget()
        self.widget.send_report()
        html = self.widget.report_html
        for text in ("background, cell", "Split touching objects",
                     self.out, "Masks written"):
            self.assertIn(text, html)


if __name__ == "__main__":
    unittest.main()
