import os
import pathlib
import tempfile
import unittest

import numpy as np
from PIL import Image

from Orange.data import Domain, StringVariable, Table
from Orange.widgets.tests.base import WidgetTest

from orangecontrib.deepimage.segdata import load_mask
from orangecontrib.deepimage.widgets.owsegmentationpreview import (
    OWSegmentationPreview, image_iou, load_view)
from orangecontrib.deepimage.widgets.owsegmentationtrainer import (
    OWSegmentationTrainer)
from orangecontrib.deepimage.widgets.owsegmentimages import OWSegmentImages
from orangecontrib.deepimage.widgets.utils.masks import (
    class_colours, overlay_mask)

from test_segmentation import pairs_table

TIMEOUT = 60000


def with_prediction(data: Table, folder: pathlib.Path) -> Table:
    """Add a mask column "prediction": the truth moved 2 pixels right."""
    truth_folder = data.domain["mask"].attributes["origin"]
    os.makedirs(folder, exist_ok=True)
    names = []
    for name in data.get_column("mask"):
        truth = load_mask(os.path.join(truth_folder, name))
        Image.fromarray(np.roll(truth, 2, axis=1).astype(np.uint8)).save(
            folder / name)
        names.append(name)
    var = StringVariable("prediction")
    var.attributes.update(type="image", origin=str(folder), mask="class",
                          classes="background,cell")
    domain = Domain([], metas=data.domain.metas + (var,))
    metas = np.hstack([data.metas, np.array(names, dtype=object)[:, None]])
    return Table.from_numpy(domain, np.empty((len(data), 0)), metas=metas)


class TestOWSegmentationPreview(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.root = pathlib.Path(cls.tempdir.name)
        cls.data = pairs_table(cls.root / "cells", n=5, size=64)
        cls.compared = with_prediction(cls.data, cls.root / "predicted")

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(OWSegmentationPreview)

    def show(self, data, widget=None):
        widget = widget or self.widget
        self.send_signal(widget.Inputs.data, data, widget=widget)
        self.wait_until_finished(widget=widget, timeout=TIMEOUT)

    def test_image_with_mask_overlay_and_legend(self):
        self.show(self.data)
        widget = self.widget
        self.assertEqual(widget.list_model.stringList(),
                         [f"cell{i:02d}.png" for i in range(5)])
        self.assertEqual(len(widget.view.images), 1)
        self.assertEqual(widget.view.images[0][1], "mask")
        self.assertIn("cell", widget.legend_label.text())
        loaded = widget.loaded
        self.assertEqual(loaded.image.shape, (64, 64, 3))
        self.assertIsNone(loaded.iou)
        self.assertIsNone(widget.compare_var)
        # Nothing is selected until the user selects.
        self.assertIsNone(self.get_output(widget.Outputs.selected))

        first = widget.view.images[0][0]
        widget.controls.opacity.setValue(100)
        self.assertNotEqual(widget.view.images[0][0], first)
        widget.controls.outline.setChecked(True)
        self.assertEqual(len(widget.view.images), 1)

    def test_overlay_colours_only_the_mask(self):
        image = np.full((6, 6, 3), 100, np.uint8)
        mask = np.zeros((6, 6), int)
        mask[1:5, 1:5] = 1
        colours = class_colours(2)
        full = overlay_mask(image, mask, colours, opacity=1.0)
        np.testing.assert_array_equal(full[0, 0], [100, 100, 100])
        np.testing.assert_array_equal(full[2, 2], colours[1])
        outline = overlay_mask(image, mask, colours, 1.0, outline=True)
        np.testing.assert_array_equal(outline[1, 1], colours[1])
        np.testing.assert_array_equal(outline[2, 2], [100, 100, 100])
        none = overlay_mask(image, mask, colours, opacity=0.0)
        np.testing.assert_array_equal(none, image)

    def test_two_masks_side_by_side_with_iou(self):
        self.show(self.compared)
        widget = self.widget
        self.assertEqual(widget.mask_var.name, "mask")
        self.assertEqual(widget.compare_var.name, "prediction")
        self.assertEqual(len(widget.view.images), 2)
        truth = load_mask(os.path.join(
            self.data.domain["mask"].attributes["origin"], "cell00.png"))
        expected = image_iou(truth, np.roll(truth, 2, axis=1), False)
        self.assertLess(expected, 1)
        self.assertAlmostEqual(widget.loaded.iou, expected)
        self.assertIn(f"IoU {expected:.3f}", widget.view.images[1][1])
        self.assertIn(f"IoU {expected:.3f}", widget.caption_label.text())

        # Another image is read in the background; the first is cached.
        widget.list_view.setCurrentIndex(widget.list_model.index(2))
        self.wait_until_finished(timeout=TIMEOUT)
        self.assertIn("cell02.png", widget.caption_label.text())
        widget.list_view.setCurrentIndex(widget.list_model.index(0))
        self.assertIsNone(widget.task)  # from the cache
        self.assertAlmostEqual(widget.loaded.iou, expected)

        # Without the comparison: one image, no IoU.
        widget.compare_var = None
        widget.controls.compare_var.activated.emit(0)
        self.wait_until_finished(timeout=TIMEOUT)
        self.assertEqual(len(widget.view.images), 1)
        self.assertIsNone(widget.loaded.iou)

    def test_iou_of_instance_masks_is_of_the_foreground(self):
        truth = np.array([[0, 1, 2, 2]])
        predicted = np.array([[0, 1, 1, 0]])
        self.assertAlmostEqual(image_iou(truth, predicted, True), 2 / 3)
        self.assertTrue(np.isnan(image_iou(np.zeros((2, 2), int),
                                           np.zeros((2, 2), int), False)))

    def test_selection_goes_out(self):
        self.show(self.compared)
        self.widget.set_selection([1, 3])
        selected = self.get_output(self.widget.Outputs.selected)
        self.assertEqual(list(selected.get_column("image")),
                         ["cell01.png", "cell03.png"])
        self.assertEqual(selected.domain, self.compared.domain)
        self.widget.set_selection([])
        self.assertIsNone(self.get_output(self.widget.Outputs.selected))

    def test_settings_round_trip(self):
        self.show(self.compared)
        self.widget.controls.opacity.setValue(80)
        self.widget.controls.outline.setChecked(True)
        self.widget.compare_var = None
        self.widget.set_selection([2])
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertEqual(settings["__version__"], 1)

        restored = self.create_widget(OWSegmentationPreview,
                                      stored_settings=settings)
        self.show(self.compared, widget=restored)
        self.assertEqual(restored.opacity, 80)
        self.assertTrue(restored.outline)
        self.assertEqual(restored.mask_var.name, "mask")
        self.assertIsNone(restored.compare_var)  # remembered per domain
        self.assertEqual(restored.selection, [2])
        selected = self.get_output(restored.Outputs.selected,
                                   widget=restored)
        self.assertEqual(list(selected.get_column("image")), ["cell02.png"])

    def test_messages(self):
        masks_only = self.data.transform(
            Domain([], metas=self.data.domain.metas[:1]))
        self.show(masks_only)
        self.assertTrue(self.widget.Warning.no_mask_column.is_shown())
        self.assertEqual(len(self.widget.view.images), 1)  # the image alone
        no_images = Table.from_numpy(
            Domain([], metas=[StringVariable("text")]), np.empty((1, 0)),
            metas=np.array([["x"]], dtype=object))
        self.show(no_images)
        self.assertTrue(self.widget.Error.no_image_column.is_shown())
        self.assertEqual(self.widget.list_model.rowCount(), 0)
        self.show(None)
        self.assertFalse(self.widget.Error.active)
        self.assertFalse(self.widget.Warning.active)

    def test_unreadable_mask_is_reported(self):
        folder = self.root / "broken"
        os.makedirs(folder, exist_ok=True)
        (folder / "cell00.png").write_text("not a mask")
        var = StringVariable("broken")
        var.attributes.update(type="image", origin=str(folder), mask="class")
        result = load_view(
            os.path.join(self.data.domain["image"].attributes["origin"],
                         "cell00.png"),
            [(str(folder / "cell00.png"), "class")])
        self.assertIsNotNone(result.image)
        self.assertIsNone(result.masks[0])
        self.assertIn("not an image", result.problems[0])

    def test_report(self):
        self.show(self.compared)
        self.widget.send_report()
        html = self.widget.report_html
        for text in ("prediction", "Opacity", "data:image/png;base64",
                     "IoU"):
            self.assertIn(text, html)


class TestSegmentationWorkflow(WidgetTest):
    """Segmentation Trainer → Segment Images → Segmentation Preview."""

    def test_trained_model_segments_and_previews(self):
        with tempfile.TemporaryDirectory() as folder:
            root = pathlib.Path(folder)
            data = pairs_table(root / "cells", n=6, size=32)
            trainer = self.create_widget(OWSegmentationTrainer,
                                         stored_settings={
                                             "depth": 2, "base_filters": 4,
                                             "tile_size": 32, "epochs": 2,
                                             "batch_size": 4,
                                             "augment": False,
                                             "validation_percent": 34})
            self.send_signal(trainer.Inputs.data, data, widget=trainer)
            model = self.get_output(trainer.Outputs.model, widget=trainer,
                                    wait=TIMEOUT)
            self.assertIsNotNone(model)

            out = root / "predicted"
            out.mkdir()
            segment = self.create_widget(
                OWSegmentImages, stored_settings={"output_folder": str(out)})
            self.send_signal(segment.Inputs.data, data, widget=segment)
            self.send_signal(segment.Inputs.model, model, widget=segment)
            self.wait_until_finished(widget=segment, timeout=TIMEOUT)
            images = self.get_output(segment.Outputs.images, widget=segment)
            self.assertEqual(len(os.listdir(out)), 6)
            self.assertIsNotNone(self.get_output(segment.Outputs.counts,
                                                 widget=segment))

            preview = self.create_widget(OWSegmentationPreview)
            self.send_signal(preview.Inputs.data, images, widget=preview)
            self.wait_until_finished(widget=preview, timeout=TIMEOUT)
            self.assertEqual(preview.mask_var.name, "mask")
            self.assertEqual(preview.compare_var.name, "predicted mask")
            self.assertEqual(len(preview.view.images), 2)
            self.assertIsNotNone(preview.loaded.iou)
            self.assertIn("IoU", preview.caption_label.text())


if __name__ == "__main__":
    unittest.main()
