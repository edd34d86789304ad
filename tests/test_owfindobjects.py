"""Tests of the Find Objects widget, on scikit-image's sample photos."""
import os
import tempfile
import threading
import unittest
from unittest import mock

import numpy as np
import skimage.data
from AnyQt.QtCore import QPoint, Qt
from AnyQt.QtTest import QTest
from PIL import Image

from Orange.data import Domain, StringVariable, Table
from Orange.widgets.tests.base import WidgetTest

from orangecontrib.deepimage.errors import WeightsUnavailable
from orangecontrib.deepimage.segdata import load_mask
from orangecontrib.deepimage.widgets import owfindobjects
from orangecontrib.deepimage.widgets.owfindobjects import OWFindObjects

TIMEOUT = 30000


def image_table(folder, names):
    var = StringVariable("image")
    var.attributes.update({"type": "image", "origin": folder})
    return Table.from_numpy(Domain([], metas=[var]),
                            np.empty((len(names), 0)),
                            metas=np.array(names, dtype=object)[:, None])


class TestOWFindObjects(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.folder = cls.tempdir.name
        Image.fromarray(skimage.data.astronaut()).save(
            os.path.join(cls.folder, "astronaut.png"))
        Image.fromarray(skimage.data.coffee()).save(
            os.path.join(cls.folder, "coffee.png"))
        with open(os.path.join(cls.folder, "bad.png"), "w") as file:
            file.write("not an image")
        cls.data = image_table(cls.folder,
                               ["astronaut.png", "coffee.png", "bad.png"])

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.out = tempfile.mkdtemp(dir=self.tempdir.name)
        self.widget = self.create_widget(
            OWFindObjects, stored_settings={"output_folder": self.out})

    def run_widget(self, data=None):
        self.send_signal(self.widget.Inputs.data,
                         self.data if data is None else data)
        self.wait_until_finished(timeout=TIMEOUT)

    def outputs(self):
        widget = self.widget
        return (self.get_output(widget.Outputs.objects),
                self.get_output(widget.Outputs.counts),
                self.get_output(widget.Outputs.images))

    def test_outputs(self):
        self.run_widget()
        objects, counts, images = self.outputs()
        self.assertEqual(len(objects), 1)
        self.assertEqual(objects.get_column("image")[0], "astronaut.png")
        self.assertEqual(list(counts.get_column("face count")), [1, 0])
        self.assertTrue(self.widget.Warning.skipped.is_shown())
        self.assertIn("not an image", str(self.widget.Warning.skipped))

        self.assertEqual(len(images), 2)
        mask_var = images.domain["objects mask"]
        self.assertEqual(mask_var.attributes["origin"], self.out)
        self.assertEqual(mask_var.attributes["classes"], "background,face")
        mask = load_mask(os.path.join(self.out,
                                      images.get_column(mask_var)[0]))
        self.assertEqual(mask.shape, (512, 512))
        x0, y0, x1, y1 = (int(objects.get_column(name)[0])
                          for name in ("x0", "y0", "x1", "y1"))
        self.assertEqual(int(mask.sum()), (x1 - x0) * (y1 - y0))
        self.assertTrue(self.widget.Information.written.is_shown())

    def test_edit_images_pixelates_the_found_faces_unchanged(self):
        from orangecontrib.deepimage.widgets.oweditimages import OWEditImages
        self.run_widget()
        images = self.get_output(self.widget.Outputs.images)
        objects = self.get_output(self.widget.Outputs.objects)
        edited_dir = tempfile.mkdtemp(dir=self.tempdir.name)
        editor = self.create_widget(OWEditImages, stored_settings={
            "output_folder": edited_dir, "operation": "pixelate",
            "dilate": 0})
        self.send_signal(editor.Inputs.data, images, widget=editor)
        self.assertFalse(editor.Error.no_mask_column.is_shown())
        editor.commit.now()
        self.wait_until_finished(widget=editor, timeout=TIMEOUT)
        edited = self.get_output(editor.Outputs.edited_images, widget=editor)
        self.assertEqual(len(edited), 2)
        photo = skimage.data.astronaut()
        name = edited.get_column("edited image")[0]
        pixels = np.asarray(Image.open(os.path.join(edited_dir, name)))
        changed = (pixels != photo).any(axis=2)
        x0, y0, x1, y1 = (int(objects.get_column(name)[0])
                          for name in ("x0", "y0", "x1", "y1"))
        inside = np.zeros_like(changed)
        inside[y0:y1, x0:x1] = True
        self.assertGreater(changed[inside].mean(), 0.8)
        self.assertFalse(changed[~inside].any())

    def test_score_threshold_counts_live_without_detecting_again(self):
        self.run_widget()
        candidates = self.widget.candidates
        self.assertIn("1 object(s) in 1 of 2", self.widget.count_label.text())
        with mock.patch.object(owfindobjects, "run_detection") as run:
            self.widget.controls.min_score.setValue(1.0)
            self.assertIn("0 object(s)", self.widget.count_label.text())
            self.wait_until_finished(timeout=TIMEOUT)
            run.assert_not_called()
        self.assertIs(self.widget.candidates, candidates)
        objects, counts, _ = self.outputs()
        self.assertIsNone(objects)
        self.assertEqual(list(counts.get_column("face count")), [0, 0])

    def test_other_model_detects_again(self):
        self.run_widget()
        self.widget.controls.model_index.setCurrentIndex(
            owfindobjects.MODEL_KEYS.index("people"))
        self.widget.controls.model_index.activated.emit(
            owfindobjects.MODEL_KEYS.index("people"))
        self.wait_until_finished(timeout=TIMEOUT)
        self.assertEqual(self.widget.model_key, "people")
        self.assertEqual(self.widget.candidates.model, "people")
        counts = self.get_output(self.widget.Outputs.counts)
        self.assertIn("person count", counts.domain)

    def test_unticked_class_is_not_counted(self):
        self.run_widget()
        item = self.widget.class_list.item(0)
        item.setCheckState(Qt.CheckState.Unchecked)
        self.wait_until_finished(timeout=TIMEOUT)
        self.assertEqual(self.widget.hidden_classes, ["face"])
        objects, counts, _ = self.outputs()
        self.assertIsNone(objects)
        self.assertNotIn("face count", counts.domain)

    def test_click_selects_a_box(self):
        self.run_widget()
        self.widget.image_list.setCurrentRow(0)
        view = self.widget.view
        view.resize(400, 400)
        self.assertEqual(len(view.detections), 1)
        centre = view.box_rect(view.detections[0]).center()
        QTest.mouseClick(view, Qt.MouseButton.LeftButton,
                         pos=QPoint(int(centre.x()), int(centre.y())))
        self.assertEqual(view.selected, 0)
        self.assertIn("face, score", self.widget.selection_label.text())
        QTest.mouseClick(view, Qt.MouseButton.LeftButton, pos=QPoint(2, 2))
        self.assertIsNone(view.selected)

    def test_filter_changed_while_detecting(self):
        self.send_signal(self.widget.Inputs.data, self.data)
        self.widget.controls.min_score.setValue(1.0)  # during detection
        self.wait_until_finished(timeout=TIMEOUT)
        QTest.qWait(50)  # the outputs are made anew after detection
        self.wait_until_finished(timeout=TIMEOUT)
        counts = self.get_output(self.widget.Outputs.counts)
        self.assertEqual(list(counts.get_column("face count")), [0, 0])

    def test_without_auto_apply_outputs_wait_for_apply(self):
        widget = self.create_widget(
            OWFindObjects, stored_settings={"output_folder": self.out,
                                            "auto_apply": False})
        self.send_signal(widget.Inputs.data, self.data, widget=widget)
        self.wait_until_finished(widget, timeout=TIMEOUT)
        self.assertIsNotNone(widget.candidates)
        self.assertIsNone(self.get_output(widget.Outputs.counts,
                                          widget=widget))
        self.assertEqual(os.listdir(self.out), [])
        widget.commit.now()
        self.wait_until_finished(widget, timeout=TIMEOUT)
        counts = self.get_output(widget.Outputs.counts, widget=widget)
        self.assertEqual(list(counts.get_column("face count")), [1, 0])

    def test_missing_folder_is_shown_and_detection_still_counts(self):
        widget = self.create_widget(OWFindObjects, stored_settings={
            "output_folder": os.path.join(self.out, "no", "such")})
        self.send_signal(widget.Inputs.data, self.data, widget=widget)
        self.wait_until_finished(widget, timeout=TIMEOUT)
        self.assertTrue(widget.Error.folder.is_shown())
        self.assertIn("does not exist", str(widget.Error.folder))
        self.assertIn("1 object(s)", widget.count_label.text())
        self.assertIsNone(self.get_output(widget.Outputs.images,
                                          widget=widget))
        widget.set_output_folder(self.out)
        self.wait_until_finished(widget, timeout=TIMEOUT)
        self.assertFalse(widget.Error.folder.is_shown())
        self.assertEqual(len(self.get_output(widget.Outputs.images,
                                             widget=widget)), 2)

    def test_cancel_stops_detection_without_outputs(self):
        started, release = threading.Event(), threading.Event()
        real = owfindobjects.ObjectDetector.detect_paths

        def slow(detector, paths, progress=None, candidates=False):
            def waiting(fraction):
                started.set()
                release.wait(5)
                progress(fraction)
            return real(detector, paths, waiting, candidates)

        with mock.patch.object(owfindobjects.ObjectDetector, "detect_paths",
                               slow):
            self.send_signal(self.widget.Inputs.data, self.data)
            self.assertTrue(started.wait(TIMEOUT / 1000))
            self.assertTrue(self.widget.cancel_button.isEnabled())
            self.widget.cancel_button.click()
            release.set()
            self.wait_until_finished(timeout=TIMEOUT)
        self.assertIsNone(self.widget.candidates)
        self.assertFalse(self.widget.cancel_button.isEnabled())
        self.assertIsNone(self.get_output(self.widget.Outputs.counts))

    def test_no_image_column(self):
        table = Table.from_numpy(Domain([], metas=[StringVariable("text")]),
                                 np.empty((1, 0)),
                                 metas=np.array([["hello"]], dtype=object))
        self.send_signal(self.widget.Inputs.data, table)
        self.assertTrue(self.widget.Error.no_image_column.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.counts))
        self.send_signal(self.widget.Inputs.data, None)
        self.assertFalse(self.widget.Error.no_image_column.is_shown())

    def test_missing_weights_show_the_message(self):
        message = "The weights are missing: put them there"
        with mock.patch.object(owfindobjects.ObjectDetector, "load",
                               side_effect=WeightsUnavailable(message)):
            self.run_widget()
        self.assertTrue(self.widget.Error.user_error.is_shown())
        self.assertIn(message, str(self.widget.Error.user_error))
        self.assertIsNone(self.get_output(self.widget.Outputs.counts))

    def test_a_bug_reaches_orange_error_reporting(self):
        error = RuntimeError("a bug")
        with mock.patch.object(owfindobjects.ObjectDetector, "detect_paths",
                               side_effect=error), \
                mock.patch("sys.excepthook") as hook:
            self.send_signal(self.widget.Inputs.data, self.data)
            self.assertTrue(QTest.qWaitFor(lambda: hook.called, TIMEOUT))
        hook.assert_called()
        self.assertIs(hook.call_args[0][1], error)
        self.assertFalse(self.widget.Error.user_error.is_shown())

    def test_settings_round_trip(self):
        widget = self.widget
        widget.controls.model_index.setCurrentIndex(
            owfindobjects.MODEL_KEYS.index("number-plates"))
        widget.controls.model_index.activated.emit(
            owfindobjects.MODEL_KEYS.index("number-plates"))
        widget.controls.min_score.setValue(0.7)
        widget.controls.overlap.setValue(0.3)
        settings = widget.settingsHandler.pack_data(widget)
        self.assertEqual(settings["model_key"], "number-plates")
        restored = self.create_widget(OWFindObjects,
                                      stored_settings=settings)
        self.assertEqual(restored.model_key, "number-plates")
        self.assertEqual(restored.model_combo.currentIndex(),
                         owfindobjects.MODEL_KEYS.index("number-plates"))
        self.assertAlmostEqual(restored.min_score, 0.7)
        self.assertAlmostEqual(restored.overlap, 0.3)
        self.assertEqual(restored.class_list.item(0).text(), "number plate")

    def test_unknown_model_in_settings_falls_back(self):
        widget = self.create_widget(
            OWFindObjects, stored_settings={"model_key": "gone"})
        self.assertEqual(widget.model_key, owfindobjects.MODEL_KEYS[0])

    def test_models_listed_with_availability(self):
        combo = self.widget.model_combo
        texts = dict(zip(owfindobjects.MODEL_KEYS,
                         (combo.itemText(i) for i in range(combo.count()))))
        for key in ("faces", "people", "number-plates"):
            self.assertIn("works offline", texts[key])
        self.assertIn("downloads 136 MB", texts["coco-retinanet"])
        # The preset folder is asked for only where there is one.
        self.assertFalse(self.widget.preset_edit.isEnabled())
        index = owfindobjects.MODEL_KEYS.index("coco-retinanet")
        self.widget.controls.model_index.setCurrentIndex(index)
        self.widget.controls.model_index.activated.emit(index)
        self.assertTrue(self.widget.preset_edit.isEnabled())

    def test_kerashub_without_weights_shows_how_to_provide_them(self):
        index = owfindobjects.MODEL_KEYS.index("coco-retinanet")
        self.widget.preset_location = os.path.join(self.out, "no-preset")
        self.widget.controls.model_index.setCurrentIndex(index)
        self.widget.controls.model_index.activated.emit(index)
        self.run_widget()
        self.assertTrue(self.widget.Error.user_error.is_shown())
        text = str(self.widget.Error.user_error)
        self.assertIn("retinanet_resnet50_fpn_coco", text)
        self.assertIn("save_to_preset", text)

    def test_report(self):
        self.run_widget()
        self.widget.send_report()
        html = self.widget.report_html
        self.assertIn("Faces", html)
        self.assertIn("data:image/png;base64", html)


if __name__ == "__main__":
    unittest.main()
