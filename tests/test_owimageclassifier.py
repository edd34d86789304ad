import os
import tempfile
import unittest
import warnings
from types import SimpleNamespace
from unittest import mock

import numpy as np

from AnyQt.QtCore import Qt

from Orange.data import ContinuousVariable, DiscreteVariable, Domain, Table
from Orange.evaluation import Results
from Orange.widgets.evaluate.owpredictions import OWPredictions
from Orange.widgets.evaluate.owtestandscore import OWTestAndScore
from Orange.widgets.tests.base import WidgetLearnerTestMixin, WidgetTest
from Orange.widgets.tests.utils import simulate

from orangecontrib.deepimage.classification import (
    ImageClassifierLearner, ImageClassifierModel)
from orangecontrib.deepimage.device import device_description
from orangecontrib.deepimage.errors import Cancelled
from orangecontrib.deepimage.training import TrainingError
from orangecontrib.deepimage.widgets import owimageclassifier
from orangecontrib.deepimage.widgets.owimageclassifier import (
    OWImageClassifier)

from imagedata import image_table, shapes_table

TIMEOUT = 60000


class TestOWImageClassifier(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        # The embedding cache goes with the test's files.
        cls.env = mock.patch.dict(os.environ, {
            "DEEPIMAGE_CACHE_DIR": os.path.join(cls.tempdir.name, "cache")})
        cls.env.start()
        cls.images = os.path.join(cls.tempdir.name, "images")
        os.mkdir(cls.images)
        # Three classes of eight 32×32 images.
        cls.data = shapes_table(cls.images, per_class=8)

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(
            OWImageClassifier, stored_settings={
                "epochs": 3, "learning_rate": 0.01, "auto_apply": True})

    def train(self, widget=None, data=None):
        widget = widget or self.widget
        self.send_signal(widget.Inputs.data,
                         self.data if data is None else data, widget=widget)
        return self.get_output(widget.Outputs.model, widget=widget,
                               wait=TIMEOUT)

    def test_learner_on_creation_and_after_change(self):
        learner = self.get_output(self.widget.Outputs.learner)
        self.assertIsInstance(learner, ImageClassifierLearner)
        self.assertEqual(learner.epochs, 3)
        self.assertEqual(learner.backbone, "squeezenet")
        self.assertEqual(learner.name, "Image Classifier")

        self.widget.controls.hidden_units.setValue(64)
        learner = self.get_output(self.widget.Outputs.learner)
        self.assertEqual(learner.hidden_units, 64)
        self.widget.controls.validation_percent.setValue(30)
        self.assertEqual(
            self.get_output(self.widget.Outputs.learner).validation, 0.3)
        self.widget.controls.unfreeze.setValue(4)
        self.assertEqual(
            self.get_output(self.widget.Outputs.learner).unfreeze, 4)
        # No data: no model and no training.
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.assertIsNone(self.widget.task)

    def test_learner_sent_without_auto_apply(self):
        self.widget.auto_apply = False
        self.widget.controls.epochs.setValue(7)
        self.assertEqual(
            self.get_output(self.widget.Outputs.learner).epochs, 7)

    def test_backbone_combo_shows_availability_and_stores_key(self):
        combo = self.widget.backbone_combo
        self.assertIn("works offline", combo.itemText(0))
        self.assertTrue(any("downloads" in combo.itemText(i)
                            for i in range(1, combo.count())))
        simulate.combobox_activate_index(
            combo, owimageclassifier.BACKBONE_KEYS.index("vgg16"))
        self.assertEqual(self.widget.backbone, "vgg16")
        self.assertEqual(
            self.get_output(self.widget.Outputs.learner).backbone, "vgg16")

    def test_model_after_data_with_curves(self):
        model = self.train()
        self.assertIsInstance(model, ImageClassifierModel)
        self.assertEqual(model.name, "Image Classifier")
        self.assertEqual(model.class_names, ("disc", "square", "stripes"))
        self.assertEqual(len(model.history["loss"]), 3)
        xs, ys = self.widget.curves["loss"].getData()
        self.assertEqual(list(xs), [1, 2, 3])
        self.assertEqual(len(ys), 3)
        xs, _ = self.widget.curves["val_accuracy"].getData()
        self.assertEqual(len(xs), 3)
        self.assertIn("Best epoch", self.widget.metrics_label.text())
        self.assertFalse(self.widget.stop_button.isEnabled())
        self.assertFalse(self.widget.Error.active)
        predictions = model(self.data)
        self.assertEqual(len(predictions), len(self.data))

        self.send_signal(self.widget.Inputs.data, None)
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.assertEqual(len(self.widget.curves["loss"].getData()[0] or []),
                         0)

    def test_curves_follow_partial_results(self):
        received = []
        original = self.widget.on_partial_result

        def record(result):
            original(result)
            received.append(len(self.widget.curves["loss"].getData()[0]))
        self.widget.on_partial_result = record
        self.train()
        self.assertEqual(received, [1, 2, 3])

    def test_stop_keeps_best_model(self):
        self.widget.controls.epochs.setValue(500)
        self.widget.controls.early_stopping.setChecked(False)
        original = self.widget.on_partial_result

        def stop_at_first_epoch(result):
            original(result)
            self.widget.stop_training()
        self.widget.on_partial_result = stop_at_first_epoch
        model = self.train()
        self.assertIsInstance(model, ImageClassifierModel)
        self.assertLess(len(model.history["loss"]), 500)
        self.assertTrue(self.widget.Information.stopped.is_shown())
        self.assertFalse(self.widget.stop_button.isEnabled())
        self.assertEqual(len(model(self.data)), len(self.data))

    def test_stop_before_training_gives_no_model(self):
        def stopped(learner, data, state, stop):
            stop.wait(10)
            return None  # what run_training gives for it

        with mock.patch.object(owimageclassifier, "run_training", stopped):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.assertTrue(self.widget.stop_button.isEnabled())
            self.widget.stop_button.click()
            self.wait_until_finished(timeout=TIMEOUT)
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.assertTrue(
            self.widget.Information.stopped_before_training.is_shown())

    def test_new_data_cancels_running_training(self):
        calls = []
        trained = SimpleNamespace(history={}, notes=[], validation_size=None)

        def slow(learner, data, state, stop):
            calls.append(len(data))
            if len(data) == len(self.data):
                while not state.is_interruption_requested():
                    stop.wait(0.01)
                raise Cancelled()
            return trained

        with mock.patch.object(owimageclassifier, "run_training", slow):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.send_signal(self.widget.Inputs.data, self.data[:20])
            output = self.get_output(self.widget.Outputs.model,
                                     wait=TIMEOUT)
        self.assertEqual(calls, [len(self.data), 20])
        self.assertIs(output, trained)
        self.assertFalse(self.widget.Error.active)
        self.assertFalse(self.widget.Information.stopped.is_shown())

    def test_parameter_change_cancels_training_without_auto_apply(self):
        calls = []
        trained = SimpleNamespace(history={}, notes=[], validation_size=None)

        def slow(learner, data, state, stop):
            calls.append(learner.epochs)
            if learner.epochs == 3:
                while not state.is_interruption_requested():
                    stop.wait(0.01)
                raise Cancelled()
            return trained

        self.widget.auto_apply = False
        with mock.patch.object(owimageclassifier, "run_training", slow):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.assertIsNotNone(self.widget.task)
            self.widget.controls.epochs.setValue(4)
            self.assertIsNone(self.widget.task)
            self.assertTrue(self.widget.Warning.outdated_learner.is_shown())
            self.assertEqual(
                self.get_output(self.widget.Outputs.learner).epochs, 4)
            self.widget.apply_button.button.click()
            output = self.get_output(self.widget.Outputs.model, wait=TIMEOUT)
        self.assertEqual(calls, [3, 4])
        self.assertIs(output, trained)

    def test_table_without_images(self):
        data = Table.from_numpy(
            Domain([ContinuousVariable("x")],
                   DiscreteVariable("y", ("a", "b"))),
            np.arange(4).reshape(4, 1), np.array([0, 1, 0, 1]))
        self.send_signal(self.widget.Inputs.data, data)
        self.assertTrue(self.widget.Error.data_error.is_shown())
        self.assertIn("Import Images", str(self.widget.Error.data_error))
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.assertIsNone(self.widget.task)
        self.send_signal(self.widget.Inputs.data, None)
        self.assertFalse(self.widget.Error.data_error.is_shown())

    def test_single_class(self):
        data = self.data[:8]  # only discs
        self.send_signal(self.widget.Inputs.data, data)
        self.assertTrue(self.widget.Error.data_error.is_shown())
        self.assertIn("single class ('disc')",
                      str(self.widget.Error.data_error))
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.send_signal(self.widget.Inputs.data, self.data)
        self.assertFalse(self.widget.Error.data_error.is_shown())
        self.wait_until_finished(timeout=TIMEOUT)

    def test_numeric_class(self):
        data = image_table(self.images, [f"disc{i:02d}.png" for i in range(4)])
        domain = Domain([], ContinuousVariable("size"),
                        metas=data.domain.metas)
        data = Table.from_numpy(domain, np.empty((4, 0)),
                                np.arange(4, dtype=float), data.metas)
        self.send_signal(self.widget.Inputs.data, data)
        self.assertTrue(self.widget.Error.data_error.is_shown())
        self.assertIn("'size' is numeric", str(self.widget.Error.data_error))
        self.assertIsNone(self.get_output(self.widget.Outputs.model))

    def test_unlabelled_images_say_how_to_label_them(self):
        data = image_table(self.images, list(self.data.get_column("image")))
        self.send_signal(self.widget.Inputs.data, data)
        self.assertTrue(self.widget.Error.data_error.is_shown())
        self.assertIn("one sub-folder per class",
                      str(self.widget.Error.data_error))
        self.assertNotIn("Select Columns", str(self.widget.Error.data_error))
        self.assertIsNone(self.get_output(self.widget.Outputs.model))
        self.send_signal(self.widget.Inputs.data, None)
        self.assertFalse(self.widget.Error.data_error.is_shown())

    def test_data_without_features_says_what_test_and_score_needs(self):
        trained = SimpleNamespace(history={}, notes=[], validation_size=None)
        with mock.patch.object(owimageclassifier, "run_training",
                               lambda *_, **__: trained):
            self.send_signal(self.widget.Inputs.data, self.data)
            info = self.widget.Information.needs_features
            self.assertTrue(info.is_shown())
            self.assertIn("Import Images → Deep Embedding → Test & Score",
                          str(info))
            width = ContinuousVariable("width")
            domain = Domain([width], self.data.domain.class_var,
                            self.data.domain.metas)
            embedded = Table.from_numpy(
                domain, np.ones((len(self.data), 1)), self.data.Y,
                self.data.metas)
            self.send_signal(self.widget.Inputs.data, embedded)
            self.assertFalse(info.is_shown())
            self.wait_until_finished(timeout=TIMEOUT)

    def test_learner_in_test_and_score_names_what_is_missing(self):
        # Test & Score passes a table without images on to the learner,
        # whose reason is shown there.
        learner = self.get_output(self.widget.Outputs.learner)
        reason = learner.incompatibility_reason(Domain(
            [ContinuousVariable("x")], DiscreteVariable("y", ("a", "b"))))
        self.assertIn("Import Images", reason)
        self.assertIsNone(
            learner.incompatibility_reason(self.data.domain))

    def diagnose(self, history, validation_size, majority=("disc", 0.34)):
        trained = SimpleNamespace(history=history, notes=[],
                                  validation_size=validation_size,
                                  majority=majority)
        with mock.patch.object(owimageclassifier, "run_training",
                               lambda *_, **__: trained):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.wait_until_finished(timeout=TIMEOUT)

    def test_overfitting_warning(self):
        overfit = {"loss": [1.0, 0.1], "val_loss": [1.2, 1.0],
                   "accuracy": [0.6, 1.0], "val_accuracy": [0.5, 0.6]}
        self.diagnose(overfit, 40)
        self.assertTrue(self.widget.Warning.overfitting.is_shown())
        self.assertIn("1.00", str(self.widget.Warning.overfitting))
        self.assertIn("0.60", str(self.widget.Warning.overfitting))
        fine = dict(overfit, val_accuracy=[0.5, 0.95])
        self.diagnose(fine, 40)
        self.assertFalse(self.widget.Warning.overfitting.is_shown())

    def test_small_validation_warning(self):
        history = {"loss": [0.5], "val_loss": [0.5], "accuracy": [0.9],
                   "val_accuracy": [0.9]}
        self.diagnose(history, 10)
        self.assertTrue(self.widget.Warning.small_validation.is_shown())
        self.assertIn("Only 10 validation images",
                      str(self.widget.Warning.small_validation))
        self.diagnose(history, 0)
        self.assertIn("No validation images",
                      str(self.widget.Warning.small_validation))
        self.diagnose(history, 60)
        self.assertFalse(self.widget.Warning.small_validation.is_shown())

    def test_accuracy_at_chance_warning(self):
        history = {"loss": [1.0], "val_loss": [1.1], "accuracy": [0.4],
                   "val_accuracy": [0.36]}
        self.diagnose(history, 40, ("disc", 0.34))
        self.assertTrue(self.widget.Warning.at_chance.is_shown())
        self.assertIn("'disc'", str(self.widget.Warning.at_chance))
        self.diagnose(dict(history, accuracy=[0.9], val_accuracy=[0.85]),
                      40, ("disc", 0.34))
        self.assertFalse(self.widget.Warning.at_chance.is_shown())
        self.assertFalse(self.widget.Warning.overfitting.is_shown())

    def test_flip_augmentation_warns_and_can_be_switched_off(self):
        warning = self.widget.Warning.flips_change_meaning
        self.assertFalse(warning.is_shown())  # no augmentation
        self.assertFalse(self.widget.flips_check.isEnabled())
        self.widget.controls.augment.click()
        self.assertTrue(warning.is_shown())
        self.assertIn("digits", str(warning))
        learner = self.get_output(self.widget.Outputs.learner)
        self.assertTrue(learner.augment)
        self.assertIn("flip", learner.augmentations)
        self.widget.controls.augment_flips.click()
        self.assertFalse(warning.is_shown())
        learner = self.get_output(self.widget.Outputs.learner)
        self.assertNotIn("flip", learner.augmentations)
        self.assertIn("rotation", learner.augmentations)
        self.assertFalse(self.widget.augment_flips)
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertFalse(settings["augment_flips"])

    def test_no_deferred_warning_at_start(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.create_widget(OWImageClassifier)
        self.assertFalse([w for w in caught
                          if "gui.deferred" in str(w.message)])

    def test_training_error_shows_its_text(self):
        def fail(learner, data, state, stop):
            raise TrainingError("Training diverged: lower the learning rate")

        with mock.patch.object(owimageclassifier, "run_training", fail):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.wait_until_finished(timeout=TIMEOUT)
        self.assertTrue(self.widget.Error.training_failed.is_shown())
        self.assertIn("lower the learning rate",
                      str(self.widget.Error.training_failed))
        self.assertIsNone(self.get_output(self.widget.Outputs.model))

    def test_notes_become_warnings(self):
        # One unreadable image: trained without it, and the model says so.
        broken = os.path.join(self.images, "broken.png")
        with open(broken, "w") as file:
            file.write("not a picture")
        names = list(self.data.get_column("image")) + ["broken.png"]
        labels = list(self.data.Y) + [0]
        data = image_table(self.images, names, labels,
                           self.data.domain.class_var.values, "shape")
        model = self.train(data=data)
        self.assertIsNotNone(model)
        self.assertTrue(self.widget.Warning.notes.is_shown())
        self.assertIn("could not be read", str(self.widget.Warning.notes))

    def test_settings_round_trip(self):
        widget = self.widget
        simulate.combobox_activate_index(
            widget.backbone_combo,
            owimageclassifier.BACKBONE_KEYS.index("mobilenet-v2"))
        widget.controls.unfreeze.setValue(10)
        widget.controls.hidden_units.setValue(32)
        widget.controls.dropout.setValue(0.5)
        widget.controls.batch_norm.setChecked(False)
        widget.controls.augment.setChecked(True)
        widget.controls.batch_size.setValue(8)
        widget.controls.learning_rate.setValue(0.0005)
        widget.controls.validation_percent.setValue(25)
        widget.controls.early_stopping.setChecked(False)
        widget.controls.class_weights.setChecked(True)
        widget.controls.random_seed.setValue(42)
        settings = widget.settingsHandler.pack_data(widget)
        self.assertEqual(settings["backbone"], "mobilenet-v2")
        self.assertEqual(settings["__version__"], 1)

        restored = self.create_widget(OWImageClassifier,
                                      stored_settings=settings)
        self.assertEqual(restored.backbone_combo.currentData(), "mobilenet-v2")
        learner = self.get_output(restored.Outputs.learner, widget=restored)
        expected = dict(backbone="mobilenet-v2", unfreeze=10, hidden_units=32,
                        dropout=0.5, batch_norm=False, augment=True,
                        epochs=3, batch_size=8, learning_rate=0.0005,
                        validation=0.25, early_stopping=False,
                        class_weights=True, random_state=42)
        for name, value in expected.items():
            self.assertEqual(getattr(learner, name), value, name)

    def test_unknown_stored_backbone_falls_back(self):
        widget = self.create_widget(OWImageClassifier,
                                    stored_settings={"backbone": "alexnet"})
        self.assertEqual(widget.backbone, "squeezenet")
        self.assertEqual(widget.backbone_combo.currentData(), "squeezenet")

    def test_report(self):
        self.widget.send_report()
        self.train()
        self.widget.report_html = ""
        self.widget.send_report()
        html = self.widget.report_html
        for text in ("SqueezeNet", "Fine-tuned top layers",
                     device_description(), "Best epoch", "validation loss"):
            self.assertIn(text, html)

    def test_learner_in_test_and_score(self):
        learner = self.get_output(self.widget.Outputs.learner)
        test_and_score = self.create_widget(OWTestAndScore)
        test_and_score.n_folds = 0  # two-fold cross-validation
        # Test & Score refuses data without features; after Deep Embedding
        # or Select Columns there are some (the learner reads the images).
        width = ContinuousVariable("width")
        domain = Domain([width], self.data.domain.class_var,
                        self.data.domain.metas)
        data = Table.from_numpy(domain, np.full((len(self.data), 1), 32.0),
                                self.data.Y, self.data.metas)
        self.send_signal(test_and_score.Inputs.train_data, data,
                         widget=test_and_score)
        self.send_signal(test_and_score.Inputs.learner, learner, 0,
                         widget=test_and_score)
        results = self.get_output(test_and_score.Outputs.evaluations_results,
                                  widget=test_and_score, wait=TIMEOUT)
        self.assertIsInstance(results, Results)
        self.assertEqual(len(results.actual), len(self.data))
        model = test_and_score.score_table.model
        header = [model.headerData(i, Qt.Horizontal)
                  for i in range(model.columnCount())]
        self.assertIn("CA", header)
        score = model.index(0, header.index("CA")).data()
        self.assertIsInstance(score, float)
        self.assertTrue(0 <= score <= 1)

    def test_model_in_predictions(self):
        model = self.train()
        predictions = self.create_widget(OWPredictions)
        self.send_signal(predictions.Inputs.data, self.data,
                         widget=predictions)
        self.send_signal(predictions.Inputs.predictors, model, 0,
                         widget=predictions)
        output = self.get_output(predictions.Outputs.annotated,
                                 widget=predictions)
        self.assertIn("Image Classifier", output.domain)
        predicted = output.get_column("Image Classifier")
        self.assertEqual(len(predicted), len(self.data))
        self.assertFalse(np.isnan(predicted).any())
        self.assertFalse(predictions.Error.active)


class TestOWImageClassifierAsLearnerWidget(WidgetTest,
                                           WidgetLearnerTestMixin):
    """Orange's own checks for learner widgets, on a table of images."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.env = mock.patch.dict(os.environ, {
            "DEEPIMAGE_CACHE_DIR": os.path.join(cls.tempdir.name, "cache")})
        cls.env.start()
        cls.images = cls.tempdir.name
        cls.image_data = shapes_table(cls.images, per_class=4)

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(
            OWImageClassifier, stored_settings={
                "epochs": 1, "validation_percent": 0, "auto_apply": False})
        self.init()
        numeric = Domain([], ContinuousVariable("size"),
                         self.image_data.domain.metas)
        # Orange's classification data (no images) and images with a
        # numeric target are both inadequate.
        self.inadequate_dataset = self.inadequate_dataset + (
            Table.from_numpy(numeric, np.empty((len(self.image_data), 0)),
                             np.arange(len(self.image_data), dtype=float),
                             self.image_data.metas),)
        self.data = self.image_data
        self.valid_datasets = (self.image_data,)

    def get_output(self, output=None, widget=None, wait=TIMEOUT):
        # Training takes longer than Orange's default wait of five seconds.
        return super().get_output(output, widget, wait)

    def test_learner_is_a_classification_learner(self):
        self.assertEqual(self.learner_class.__name__, "LearnerClassification")
        self.assertTrue(issubclass(self.widget.LEARNER, self.learner_class))


if __name__ == "__main__":
    unittest.main()
