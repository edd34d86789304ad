import pathlib
import tempfile
import unittest
from types import SimpleNamespace
from unittest import mock

import numpy as np

from AnyQt.QtCore import QRectF
from AnyQt.QtGui import QImage

from Orange.data import Domain, Table
from Orange.widgets.tests.base import WidgetTest
from Orange.widgets.tests.utils import simulate

from orangecontrib.deepimage.device import device_description
from orangecontrib.deepimage.errors import Cancelled
from orangecontrib.deepimage.segmentation import (
    SegmentationLearner, SegmentationModel)
from orangecontrib.deepimage.training import TrainingError
from orangecontrib.deepimage.widgets import owsegmentationtrainer
from orangecontrib.deepimage.widgets.owsegmentationtrainer import (
    OWSegmentationTrainer)

from test_segmentation import pairs_table

TIMEOUT = 60000
#: A tiny U-Net that trains in seconds on 32×32 images.
TINY = {"depth": 2, "base_filters": 4, "tile_size": 32, "epochs": 3,
        "batch_size": 4, "learning_rate": 0.01, "validation_percent": 34,
        "augment": False, "auto_apply": True}


def tiny_data(folder: pathlib.Path, n: int = 6) -> Table:
    """Six 32×32 images of bright discs with their class masks."""
    return pairs_table(folder, n=n, size=32)


def fake_model(history=None):
    return SimpleNamespace(history=history or {}, validation_metrics=None,
                           class_names=("background", "cell"))


class TestOWSegmentationTrainer(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.data = tiny_data(pathlib.Path(cls.tempdir.name))

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(OWSegmentationTrainer,
                                         stored_settings=dict(TINY))

    def train(self, widget=None):
        widget = widget or self.widget
        self.send_signal(widget.Inputs.data, self.data, widget=widget)
        return self.get_output(widget.Outputs.model, widget=widget,
                               wait=TIMEOUT)

    def test_learner_on_creation_and_after_change(self):
        learner = self.get_output(self.widget.Outputs.learner)
        self.assertIsInstance(learner, SegmentationLearner)
        self.assertEqual((learner.depth, learner.base_filters,
                          learner.tile_size, learner.epochs),
                         (2, 4, 32, 3))
        self.assertIsNone(learner.encoder)

        self.widget.controls.epochs.setValue(7)
        self.assertEqual(
            self.get_output(self.widget.Outputs.learner).epochs, 7)
        simulate.combobox_activate_item(self.widget.loss_combo,
                                        "Focal (for rare classes)")
        self.assertEqual(
            self.get_output(self.widget.Outputs.learner).loss, "focal")
        simulate.combobox_activate_index(self.widget.architecture_combo, 1)
        self.assertEqual(
            self.get_output(self.widget.Outputs.learner).architecture,
            "resunet")
        # No data: no model and no training.
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.assertIsNone(self.widget.task)

    def test_pretrained_encoder_fixes_the_tile_size(self):
        index = owsegmentationtrainer.ENCODER_KEYS.index("squeezenet")
        simulate.combobox_activate_index(self.widget.encoder_combo, index)
        self.assertEqual(self.widget.encoder, "squeezenet")
        learner = self.get_output(self.widget.Outputs.learner)
        self.assertEqual(learner.encoder, "squeezenet")
        self.assertFalse(self.widget.tile_spin.isEnabled())
        self.assertFalse(self.widget.architecture_combo.isEnabled())
        simulate.combobox_activate_index(self.widget.encoder_combo, 0)
        self.assertIsNone(self.get_output(self.widget.Outputs.learner)
                          .encoder)
        self.assertTrue(self.widget.tile_spin.isEnabled())

    def test_tile_that_does_not_fit_the_levels(self):
        self.widget.controls.depth.setValue(4)
        self.widget.controls.tile_size.setValue(40)
        self.assertTrue(self.widget.Error.invalid_parameters.is_shown())
        self.assertIn("multiple of 16",
                      str(self.widget.Error.invalid_parameters))
        self.assertIsNone(self.get_output(self.widget.Outputs.learner))
        self.send_signal(self.widget.Inputs.data, self.data)
        self.assertIsNone(self.widget.task)  # no learner, no training
        self.send_signal(self.widget.Inputs.data, None)
        self.widget.controls.tile_size.setValue(48)
        self.assertFalse(self.widget.Error.invalid_parameters.is_shown())
        self.assertIsNotNone(self.get_output(self.widget.Outputs.learner))

    def test_model_with_curves_preview_scores_and_report(self):
        received = []
        original = self.widget.on_partial_result

        def record(result):
            original(result)
            received.append((len(self.widget.curves.epochs),
                             self.widget.preview_epoch))
        self.widget.on_partial_result = record
        model = self.train()
        # Curves and preview follow each epoch.
        self.assertEqual(received, [(1, 1), (2, 2), (3, 3)])
        self.assertIsInstance(model, SegmentationModel)
        self.assertEqual(model.class_names, ("background", "cell"))
        self.assertEqual(len(model.history["loss"]), 3)
        curves = self.widget.curves.curves
        for key in ("loss", "val_loss", "iou", "val_iou"):
            xs, ys = curves[key].getData()
            self.assertEqual(list(xs), [1, 2, 3], key)
        self.assertIn("Best epoch", self.widget.curves.metrics_label.text())
        # The preview: a held-out image, predicted and true masks.
        self.assertEqual(len(self.widget.preview_view.images), 2)
        self.assertEqual(self.widget.preview_epoch, 3)
        self.assertRegex(self.widget.preview_label.text(),
                         r"cell\d\d\.png \(validation image\): cell IoU")
        self.assertIn("cell", self.widget.legend_label.text())
        preview = self.widget.preview
        self.assertEqual(preview.truth.shape, (32, 32, 3))
        # Final per-class scores on the validation images.
        self.assertEqual(model.validation_metrics["iou"].shape, (2,))
        self.assertIn("Dice", self.widget.scores_label.text())
        # Each IoU says whose it is.
        self.assertIn("background IoU", self.widget.scores_label.text())
        self.assertIn("cell IoU", self.widget.scores_label.text())
        self.assertNotIn("of the classes", self.widget.scores_label.text())
        self.assertFalse(self.widget.stop_button.isEnabled())
        self.assertFalse(self.widget.Error.active)

        self.widget.send_report()
        html = self.widget.report_html
        for text in ("U-Net, 2 levels", device_description(), "Best epoch",
                     "Mean IoU", "Validation (per class)", "Dice",
                     "data:image/png;base64"):
            self.assertIn(text, html)

        self.send_signal(self.widget.Inputs.data, None)
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.assertEqual(len(self.widget.curves.epochs), 0)
        self.assertEqual(self.widget.preview_view.images, [])

    def test_stop_keeps_best_model(self):
        self.widget.controls.epochs.setValue(500)
        self.widget.controls.early_stopping.setChecked(False)
        original = self.widget.on_partial_result

        def stop_at_first_epoch(result):
            original(result)
            self.widget.stop_training()
        self.widget.on_partial_result = stop_at_first_epoch
        model = self.train()
        self.assertIsInstance(model, SegmentationModel)
        self.assertLess(len(model.history["loss"]), 500)
        self.assertTrue(self.widget.Information.stopped.is_shown())
        self.assertFalse(self.widget.stop_button.isEnabled())
        labels = model.segment(self.data)
        self.assertEqual(labels[0].shape, (32, 32))

    def test_stop_before_training_gives_no_model(self):
        def stopped(learner, data, state, stop):
            stop.wait(10)
            return None  # what run_training gives for it

        with mock.patch.object(owsegmentationtrainer, "run_training",
                               stopped):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.assertTrue(self.widget.stop_button.isEnabled())
            self.widget.stop_button.click()
            self.wait_until_finished(timeout=TIMEOUT)
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.assertTrue(
            self.widget.Information.stopped_before_training.is_shown())

    def test_new_data_cancels_running_training(self):
        calls = []
        trained = fake_model()

        def slow(learner, data, state, stop):
            calls.append(len(data))
            if len(data) == len(self.data):
                while not state.is_interruption_requested():
                    stop.wait(0.01)
                raise Cancelled()
            return trained

        with mock.patch.object(owsegmentationtrainer, "run_training", slow):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.send_signal(self.widget.Inputs.data, self.data[:4])
            output = self.get_output(self.widget.Outputs.model,
                                     wait=TIMEOUT)
        self.assertEqual(calls, [len(self.data), 4])
        self.assertIs(output, trained)
        self.assertFalse(self.widget.Error.active)

    def test_poor_model_is_diagnosed(self):
        def trained(iou):
            model = fake_model({"loss": [1.0] * 12})
            model.class_names = ("background", "nucleus")
            model.validation_metrics = {
                "iou": np.array([0.971, iou]), "dice": np.array([0.9, 0.1]),
                "mean_iou": iou}
            return model

        self.widget.controls.epochs.setValue(30)
        self.widget.controls.augment.setChecked(True)
        for iou, shown in ((0.065, True), (0.862, False)):
            model = trained(iou)
            with mock.patch.object(owsegmentationtrainer, "run_training",
                                   lambda *_, **__: model):
                self.send_signal(self.widget.Inputs.data, self.data)
                self.assertIs(self.get_output(self.widget.Outputs.model,
                                              wait=TIMEOUT), model)
            warning = self.widget.Warning.poor_model
            self.assertEqual(warning.is_shown(), shown)
            if shown:
                self.assertIn("nucleus IoU 0.07", str(warning))
                self.assertNotIn("background IoU", str(warning))
                self.assertIn("12 of 30 epochs", str(warning))
                self.assertIn("more epochs", str(warning))
                # Not blamed on augmentation, which is on: measured, it
                # is not what makes a short training poor.
                self.assertNotIn("augmentation", str(warning))
            self.assertIn("nucleus IoU 0.", self.widget.scores_label.text())

    def test_nothing_clipped_at_the_default_size(self):
        self.widget.show()
        image = QImage(64, 64, QImage.Format.Format_RGB888)
        image.fill(0)
        view = self.widget.preview_view
        captions = ["Prediction (epoch 12)", "Ground truth"]
        view.set_images([(image, caption) for caption in captions])
        self.process_events()
        metrics = view.fontMetrics()
        for rect, caption in zip(view.caption_rects(), captions):
            self.assertGreaterEqual(rect.left(), 0)
            self.assertLessEqual(rect.right(), view.width())
            self.assertGreaterEqual(rect.width(),
                                    metrics.horizontalAdvance(caption))
        for rect in view.image_rects():
            self.assertTrue(QRectF(view.rect()).contains(rect))
        for combo in (self.widget.encoder_combo,
                      self.widget.architecture_combo, self.widget.loss_combo):
            longest = max(metrics.horizontalAdvance(combo.itemText(i))
                          for i in range(combo.count()))
            self.assertGreaterEqual(combo.width(), combo.sizeHint().width())
            self.assertGreater(combo.sizeHint().width(), longest)
        self.widget.hide()

    def test_parameter_change_without_auto_apply(self):
        calls = []
        trained = fake_model()

        def slow(learner, data, state, stop):
            calls.append(learner.epochs)
            if learner.epochs == 3:
                while not state.is_interruption_requested():
                    stop.wait(0.01)
                raise Cancelled()
            return trained

        self.widget.auto_apply = False
        with mock.patch.object(owsegmentationtrainer, "run_training", slow):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.assertIsNotNone(self.widget.task)
            self.widget.controls.epochs.setValue(4)
            self.assertIsNone(self.widget.task)
            self.assertTrue(self.widget.Warning.outdated.is_shown())
            self.assertEqual(
                self.get_output(self.widget.Outputs.learner).epochs, 4)
            self.widget.apply_button.button.click()
            output = self.get_output(self.widget.Outputs.model, wait=TIMEOUT)
        self.assertEqual(calls, [3, 4])
        self.assertIs(output, trained)
        self.assertFalse(self.widget.Warning.outdated.is_shown())

    def test_data_without_masks_or_images(self):
        images_only = self.data.transform(
            Domain([], metas=self.data.domain.metas[:1]))
        self.send_signal(self.widget.Inputs.data, images_only)
        self.assertTrue(self.widget.Error.no_mask_column.is_shown())
        self.assertIsNone(self.widget.task)
        masks_only = self.data.transform(
            Domain([], metas=self.data.domain.metas[1:]))
        self.send_signal(self.widget.Inputs.data, masks_only)
        self.assertTrue(self.widget.Error.no_image_column.is_shown())
        self.assertFalse(self.widget.Error.no_mask_column.is_shown())
        self.assertIsNone(self.widget.task)
        self.send_signal(self.widget.Inputs.data, self.data[:0])
        self.assertTrue(self.widget.Error.no_rows.is_shown())
        self.send_signal(self.widget.Inputs.data, None)
        self.assertFalse(self.widget.Error.active)
        self.assertIsNone(self.get_output(self.widget.Outputs.model))

    def test_training_error_shows_its_text(self):
        def fail(learner, data, state, stop):
            raise TrainingError("Training diverged: lower the learning rate")

        with mock.patch.object(owsegmentationtrainer, "run_training", fail):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.wait_until_finished(timeout=TIMEOUT)
        self.assertTrue(self.widget.Error.training_failed.is_shown())
        self.assertIn("lower the learning rate",
                      str(self.widget.Error.training_failed))
        self.assertIsNone(self.get_output(self.widget.Outputs.model))

    def test_settings_round_trip(self):
        widget = self.widget
        simulate.combobox_activate_index(widget.architecture_combo, 1)
        simulate.combobox_activate_item(widget.loss_combo, "Cross-entropy")
        widget.controls.depth.setValue(3)
        widget.controls.base_filters.setValue(8)
        widget.controls.batch_size.setValue(2)
        widget.controls.learning_rate.setValue(0.0005)
        widget.controls.tile_size.setValue(64)
        widget.controls.validation_percent.setValue(25)
        widget.controls.augment.setChecked(True)
        widget.controls.early_stopping.setChecked(False)
        widget.controls.random_seed.setValue(42)
        settings = widget.settingsHandler.pack_data(widget)
        self.assertEqual(settings["architecture"], "resunet")
        self.assertEqual(settings["loss"], "crossentropy")
        self.assertEqual(settings["encoder"], "none")
        self.assertEqual(settings["__version__"], 1)

        restored = self.create_widget(OWSegmentationTrainer,
                                      stored_settings=settings)
        self.assertEqual(restored.architecture_combo.currentData(),
                         "resunet")
        self.assertEqual(restored.loss_combo.currentData(), "crossentropy")
        learner = self.get_output(restored.Outputs.learner, widget=restored)
        expected = dict(architecture="resunet", encoder=None,
                        loss="crossentropy", depth=3, base_filters=8,
                        epochs=3, batch_size=2, learning_rate=0.0005,
                        tile_size=64, validation=0.25, augment=True,
                        early_stopping=False, random_state=42)
        for name, value in expected.items():
            self.assertEqual(getattr(learner, name), value, name)

    def test_unknown_stored_names_fall_back(self):
        widget = self.create_widget(OWSegmentationTrainer, stored_settings={
            "architecture": "segnet", "encoder": "alexnet",
            "loss": "hinge"})
        self.assertEqual((widget.architecture, widget.encoder, widget.loss),
                         ("unet", "none", "dice+crossentropy"))
        self.assertIsNotNone(self.get_output(widget.Outputs.learner,
                                             widget=widget))

    def test_preview_picture_draws_masks_over_the_image(self):
        image = np.full((8, 8, 3), 100, np.uint8)
        truth = np.zeros((8, 8), int)
        truth[2:6, 2:6] = 1
        labels = np.zeros((8, 8), int)
        labels[2:6, 2:4] = 1  # half of the object
        picture = owsegmentationtrainer.preview_picture(
            owsegmentationtrainer.EpochPreview("a.png", image, truth,
                                               labels), 2)
        self.assertAlmostEqual(picture.iou, 0.5)
        self.assertTrue((picture.truth[0, 0] == 100).all())  # background
        self.assertFalse((picture.truth[3, 5] == 100).all())  # object
        self.assertTrue((picture.prediction[3, 5] == 100).all())


if __name__ == "__main__":
    unittest.main()
