import os
import tempfile
import unittest
from unittest import mock

import numpy as np
from PIL import Image

from AnyQt.QtCore import Qt

from Orange.classification import LogisticRegressionLearner
from Orange.data import ContinuousVariable, DiscreteVariable, Domain, Table
from Orange.widgets.tests.base import WidgetTest

from orangecontrib.deepimage.classification import ImageClassifierLearner
from orangecontrib.deepimage.widgets import owexplainimages
from orangecontrib.deepimage.widgets.owexplainimages import (
    OWExplainImages, default_output_folder)
from orangecontrib.deepimage.widgets.utils import outputfolder
from orangecontrib.deepimage.widgets.owimageclassifier import (
    OWImageClassifier)

from imagedata import image_table, shapes_table

TIMEOUT = 60000


def snapshot(folder):
    """Each file's name, size and time of change."""
    return {entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns)
            for entry in os.scandir(folder)}


def error_text(widget):
    return " ".join(str(message) for message in widget.Error.active)


class TestOWExplainImages(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.env = mock.patch.dict(os.environ, {
            "DEEPIMAGE_CACHE_DIR": os.path.join(cls.tempdir.name, "cache")})
        cls.env.start()
        cls.images = os.path.join(cls.tempdir.name, "images")
        os.mkdir(cls.images)
        cls.data = shapes_table(cls.images, per_class=8)
        cls.model = ImageClassifierLearner(
            epochs=3, learning_rate=0.01)(cls.data)
        # Explaining is the slow part: eight images of the three classes.
        cls.sample = cls.data[::3]
        cls.model.name = "Image Classifier"

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.out_dir = tempfile.mkdtemp(dir=self.tempdir.name)
        self.widget = self.create_widget(
            OWExplainImages, stored_settings={"output_folder": self.out_dir})

    def explain(self, data=None, model=None, widget=None):
        widget = widget or self.widget
        self.send_signals([(widget.Inputs.data,
                            self.sample if data is None else data),
                           (widget.Inputs.model, model or self.model)],
                          widget=widget)
        return self.get_output(widget.Outputs.data, widget=widget,
                               wait=TIMEOUT)

    def test_outputs_heatmap_files_and_classes(self):
        output = self.explain()
        self.assertEqual(len(output), len(self.sample))
        gradcam = output.domain["Grad-CAM"]
        self.assertTrue(gradcam.is_string)
        self.assertEqual(gradcam.attributes["type"], "image")
        self.assertEqual(gradcam.attributes["origin"], self.out_dir)
        files = output.get_column(gradcam)
        for name in files:
            path = os.path.join(self.out_dir, name)
            self.assertTrue(os.path.isfile(path), path)
            with Image.open(path) as image:
                self.assertEqual(image.format, "PNG")
                self.assertEqual(image.size, (32, 32))
        self.assertEqual(len(set(files)), len(files))
        # The input images are untouched and nothing is written beside them.
        self.assertEqual(len(os.listdir(self.images)), len(self.data))

        explained = output.domain["Explained class"]
        self.assertEqual(explained.values, self.model.class_names)
        predicted = self.model(self.sample)
        np.testing.assert_array_equal(output.get_column(explained), predicted)
        np.testing.assert_array_equal(
            output.get_column("Predicted class"), predicted)
        probability = output.get_column("Probability")
        self.assertTrue(((probability > 0) & (probability <= 1)).all())
        # The input columns are all there, in the same rows.
        np.testing.assert_array_equal(output.get_column("image"),
                                      self.sample.get_column("image"))

        self.assertEqual(self.widget.grid.count(), len(self.sample))
        self.assertFalse(self.widget.Error.active)
        self.assertFalse(self.widget.Warning.active)

    def cross_validation(self):
        """Two-fold results of a learner too weak to be right often."""
        from Orange.evaluation import CrossValidation
        learner = ImageClassifierLearner(epochs=1, learning_rate=1e-5,
                                         hidden_units=0, dropout=0)
        learner.name = self.model.name
        results = CrossValidation(k=2, random_state=0, store_data=True)(
            self.data, [learner])
        results.learner_names = [self.model.name]
        return results

    def test_misclassified_in_confusion_matrix_shows_evaluated_predictions(
            self):
        from Orange.widgets.evaluate.owconfusionmatrix import (
            OWConfusionMatrix)
        results = self.cross_validation()
        matrix = self.create_widget(OWConfusionMatrix)
        self.send_signal(matrix.Inputs.evaluation_results, results,
                         widget=matrix)
        matrix.select_wrong()
        wrong = self.get_output(matrix.Outputs.selected_data, widget=matrix)
        self.assertIsNotNone(wrong)
        n_wrong = int((results.predicted[0] != results.actual).sum())
        self.assertEqual(len(wrong), n_wrong)
        column = f"shape({self.model.name})"
        evaluated = wrong.get_column(column)

        output = self.explain(wrong)
        self.assertEqual(len(output), n_wrong)
        # Each image is shown, and explained, with the prediction that made
        # it misclassified, not the final model's.
        np.testing.assert_array_equal(
            output.get_column("Explained class"), evaluated)
        np.testing.assert_array_equal(output.get_column(column), evaluated)
        self.assertTrue((output.get_column("Correct") == 0).all())
        self.assertTrue((evaluated != wrong.Y).all())
        # (The final model, which trained on them, gets some right.)
        self.assertTrue(
            (output.get_column("Predicted class") != evaluated).any())
        names = self.model.class_names
        for i in range(self.widget.grid.count()):
            item = self.widget.grid.item(i)
            row = item.data(Qt.UserRole)
            self.assertIn(f"✗ WRONG: Test & Score: "
                          f"{names[int(evaluated[row])]}", item.text())
            self.assertIn(f"actual: {names[int(wrong.Y[row])]}", item.text())
            self.assertEqual(item.background().color(),
                             owexplainimages.WRONG_COLOUR)
        info = self.widget.Information.evaluated
        self.assertTrue(info.is_shown())
        self.assertIn("explained with the final model, which saw these "
                      "images in training", str(info))

        self.send_signal(self.widget.Inputs.data, self.sample)
        self.assertFalse(info.is_shown())
        output = self.get_output(self.widget.Outputs.data, wait=TIMEOUT)
        self.assertNotIn("Correct", output.domain)

    def test_test_and_score_predictions_are_cross_validated(self):
        results = self.cross_validation()
        predictions = results.get_augmented_data([self.model.name])
        self.assertIn("Fold", predictions.domain)
        output = self.explain(predictions)
        np.testing.assert_array_equal(
            output.get_column("Explained class"),
            predictions.get_column(self.model.name))
        correct = output.get_column("Correct")
        np.testing.assert_array_equal(
            correct, (results.predicted[0] == results.actual).astype(float))
        self.assertIn("cross-validated",
                      str(self.widget.Information.evaluated))
        n_wrong = int((correct == 0).sum())
        marked = [self.widget.grid.item(i) for i in
                  range(self.widget.grid.count())
                  if "✗ WRONG" in self.widget.grid.item(i).text()]
        self.assertEqual(len(marked), n_wrong)

    def test_target_class_changes_explained_class(self):
        self.explain()
        combo = self.widget.target_combo
        self.assertEqual(
            [combo.itemText(i) for i in range(combo.count())],
            ["predicted", "disc", "square", "stripes"])
        self.widget.set_target_class("square")
        output = self.get_output(self.widget.Outputs.data, wait=TIMEOUT)
        explained = output.get_column("Explained class")
        self.assertTrue((explained == 1).all())
        # The probabilities are now those of "square".
        probs = self.model(self.sample, self.model.Probs)[:, 1]
        np.testing.assert_allclose(output.get_column("Probability"), probs,
                                   atol=1e-4)
        self.assertEqual(self.widget.target_class, "square")
        self.assertIn("square", self.widget.grid.item(0).text())

    def test_opacity_redraws_and_writes_nothing(self):
        first = self.explain()
        before = snapshot(self.out_dir)
        icon = self.widget.grid.item(0).icon().pixmap(32, 32).toImage()
        self.widget.controls.opacity.setValue(100)
        self.assertEqual(self.widget.opacity, 100)
        self.assertNotEqual(
            self.widget.grid.item(0).icon().pixmap(32, 32).toImage(), icon)
        self.widget.controls.opacity.sliderReleased.emit()
        self.wait_until_finished(timeout=TIMEOUT)
        self.assertIsNone(self.widget.task)
        self.assertEqual(snapshot(self.out_dir), before)
        self.assertIs(self.get_output(self.widget.Outputs.data), first)

    def test_chosen_folder_gets_new_files_each_run(self):
        first = self.explain()
        second = self.explain()
        old, new = first.get_column("Grad-CAM"), second.get_column("Grad-CAM")
        # Never overwritten: new names, and the old files are still there.
        self.assertFalse(set(old) & set(new))
        for name in list(old) + list(new):
            self.assertTrue(os.path.isfile(os.path.join(self.out_dir, name)))

    def test_own_folder_keeps_one_runs_files(self):
        widget = self.create_widget(OWExplainImages)
        output = self.explain(widget=widget)
        folder = output.domain["Grad-CAM"].attributes["origin"]
        self.assertEqual(folder, widget.folder())
        once = snapshot(folder)
        self.assertEqual(len(once), len(self.sample))
        for _ in range(10):
            output = self.explain(widget=widget)
        # The same files, not written again.
        self.assertEqual(snapshot(folder), once)
        for name in output.get_column("Grad-CAM"):
            self.assertTrue(os.path.isfile(os.path.join(folder, name)))
        # Another class: the files are replaced, not added.
        widget.set_target_class("stripes")
        output = self.get_output(widget.Outputs.data, widget=widget,
                                 wait=TIMEOUT)
        self.assertEqual(sorted(os.listdir(folder)),
                         sorted(output.get_column("Grad-CAM")))

    def test_copied_widget_gets_its_own_folder(self):
        first = self.create_widget(OWExplainImages)
        folder = first.folder()
        settings = first.settingsHandler.pack_data(first)
        self.assertEqual(os.path.basename(folder), settings["own_folder_id"])
        copy = self.create_widget(OWExplainImages, stored_settings=settings)
        self.assertNotEqual(copy.folder(), folder)
        self.assertEqual(first.folder(), folder)
        # A workflow opened again (the first widget gone) finds its folder.
        owners = outputfolder._own_folder_owners
        owners.pop(settings["own_folder_id"])
        reopened = self.create_widget(OWExplainImages,
                                      stored_settings=settings)
        self.assertEqual(reopened.folder(), folder)

    def test_unwritable_folder_is_refused_before_any_work(self):
        explain = mock.Mock(side_effect=AssertionError("explained"))
        with mock.patch.object(owexplainimages, "explain_images", explain):
            self.widget.set_output_folder(os.path.join(self.out_dir, "gone"))
            self.explain()
            self.assertIn("does not exist", error_text(self.widget))
            self.widget.set_output_folder(self.out_dir)
            with mock.patch("os.access", return_value=False):
                self.explain()
            self.assertIn("read-only", error_text(self.widget))
        explain.assert_not_called()
        self.assertEqual(os.listdir(self.out_dir), [])

    def test_wrong_model_type_and_no_model(self):
        iris = Table("iris")
        logistic = LogisticRegressionLearner()(iris)
        self.send_signal(self.widget.Inputs.data, self.sample)
        self.send_signal(self.widget.Inputs.model, logistic)
        self.assertTrue(self.widget.Error.wrong_model.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.data))

        self.send_signal(self.widget.Inputs.model, None)
        self.assertFalse(self.widget.Error.wrong_model.is_shown())
        self.assertTrue(self.widget.Information.no_model.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.data))
        self.assertEqual(self.widget.target_combo.count(), 1)

        self.send_signal(self.widget.Inputs.model, self.model)
        self.assertFalse(self.widget.Information.no_model.is_shown())
        self.assertIsNotNone(
            self.get_output(self.widget.Outputs.data, wait=TIMEOUT))

    def test_no_image_column(self):
        data = Table.from_numpy(
            Domain([ContinuousVariable("x")],
                   DiscreteVariable("y", ("a", "b"))),
            np.arange(4).reshape(4, 1), np.array([0, 1, 0, 1]))
        self.send_signal(self.widget.Inputs.model, self.model)
        self.send_signal(self.widget.Inputs.data, data)
        self.assertTrue(self.widget.Error.no_image_column.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.data))
        self.send_signal(self.widget.Inputs.data, None)
        self.assertFalse(self.widget.Error.no_image_column.is_shown())

    def test_unreadable_images_are_counted(self):
        with open(os.path.join(self.out_dir, "broken.png"), "w") as file:
            file.write("not a picture")
        folder = self.images
        names = ["disc00.png", "../" + os.path.basename(self.out_dir)
                 + "/broken.png", "missing.png", "square00.png"]
        data = image_table(folder, names, [0, 0, 1, 1],
                           self.data.domain.class_var.values, "shape")
        output = self.explain(data)
        self.assertTrue(self.widget.Warning.images_skipped.is_shown())
        self.assertIn("2 image", str(self.widget.Warning.images_skipped))
        files = output.get_column("Grad-CAM")
        self.assertTrue(files[0] and files[3])
        self.assertFalse(files[1] or files[2])
        self.assertTrue(np.isnan(output.get_column("Probability")[[1, 2]])
                        .all())
        self.assertEqual(self.widget.grid.count(), 2)

    def test_default_folder_is_in_the_cache(self):
        widget = self.create_widget(OWExplainImages)
        self.assertEqual(widget.output_folder, "")
        output = self.explain(self.data[:3], widget=widget)
        origin = output.domain["Grad-CAM"].attributes["origin"]
        self.assertEqual(os.path.dirname(origin), default_output_folder())
        self.assertTrue(origin.startswith(os.environ["DEEPIMAGE_CACHE_DIR"]))
        self.assertNotEqual(os.path.dirname(origin), self.images)

    def test_settings_round_trip(self):
        self.explain()
        self.widget.set_target_class("stripes")
        self.widget.opacity = 80
        self.wait_until_finished(timeout=TIMEOUT)
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertEqual(settings["target_class"], "stripes")
        self.assertEqual(settings["__version__"], 1)
        restored = self.create_widget(OWExplainImages,
                                      stored_settings=settings)
        self.assertEqual(restored.opacity, 80)
        self.assertEqual(restored.output_folder, self.out_dir)
        # The stored class waits for a model that has it.
        self.assertEqual(restored.target_combo.currentData(), "")
        output = self.explain(widget=restored)
        self.assertEqual(restored.target_combo.currentText(), "stripes")
        self.assertTrue((output.get_column("Explained class") == 2).all())

    def test_report(self):
        self.widget.send_report()
        self.explain()
        self.widget.report_html = ""
        self.widget.send_report()
        html = self.widget.report_html
        self.assertEqual(html.count("data:image/png;base64,"), 6)
        self.assertIn(self.out_dir, html)

    def test_model_from_image_classifier_widget(self):
        classifier = self.create_widget(
            OWImageClassifier, stored_settings={"epochs": 2})
        self.send_signal(classifier.Inputs.data, self.data, widget=classifier)
        model = self.get_output(classifier.Outputs.model, widget=classifier,
                                wait=TIMEOUT)
        output = self.explain(model=model)
        self.assertEqual(len(output), len(self.sample))
        self.assertTrue(all(output.get_column("Grad-CAM")))


if __name__ == "__main__":
    unittest.main()
