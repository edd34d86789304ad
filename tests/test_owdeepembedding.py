import os
import sqlite3
import tempfile
import threading
import unittest
import warnings
from unittest import mock

import numpy as np

from AnyQt.QtCore import Qt
from PIL import Image

from Orange.data import ContinuousVariable, Domain, StringVariable, Table
from Orange.widgets.tests.base import WidgetTest
from Orange.widgets.tests.utils import simulate

from orangecontrib.deepimage import device
from orangecontrib.deepimage.cache import CacheUnavailable, EmbeddingCache
from orangecontrib.deepimage.embedding import shared_embedder
from orangecontrib.deepimage.errors import Cancelled
from orangecontrib.deepimage.widgets import owdeepembedding
from orangecontrib.deepimage.widgets.owdeepembedding import OWDeepEmbedding
from orangecontrib.deepimage.weights import WeightsUnavailable

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 0)]


def make_image_table(folder):
    """A table of four good images and a broken file named like an image."""
    names = []
    for i, colour in enumerate(COLOURS):
        names.append(f"good{i}.png")
        Image.new("RGB", (32, 24), colour).save(os.path.join(folder, names[-1]))
    names.insert(2, "broken.jpg")
    with open(os.path.join(folder, "broken.jpg"), "w") as file:
        file.write("this is text, not a picture")
    image = StringVariable("image")
    image.attributes.update({"type": "image", "origin": folder})
    return Table.from_numpy(Domain([], metas=[image]), np.empty((5, 0)),
                            metas=np.array(names, dtype=object)[:, None])


class TestOWDeepEmbedding(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.images = make_image_table(cls.tempdir.name)

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(OWDeepEmbedding)

    def test_embeds_images_and_lists_skipped(self):
        self.send_signal(self.widget.Inputs.images, self.images)
        embeddings = self.get_output(self.widget.Outputs.embeddings,
                                     wait=60000)
        skipped = self.get_output(self.widget.Outputs.skipped_images)
        self.assertEqual(len(embeddings), 4)
        self.assertEqual(len(embeddings.domain.attributes),
                         len(self.images.domain.attributes) + 1000)
        self.assertTrue(all(var.attributes.get("hidden") for var in
                            embeddings.domain.attributes[-1000:]))
        self.assertFalse(np.isnan(embeddings.X).any())
        self.assertEqual(len(skipped), 1)
        reason = skipped.get_column("Skip reason")[0]
        self.assertIn("not an image", reason)
        self.assertTrue(self.widget.Warning.images_skipped.is_shown())
        self.assertIn("CPU", self.widget.device_label.text())

    def test_no_image_column(self):
        data = Table.from_numpy(Domain([ContinuousVariable("x")]),
                                np.arange(3).reshape(3, 1))
        self.send_signal(self.widget.Inputs.images, data)
        self.assertTrue(self.widget.Error.no_image_column.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.embeddings))
        self.send_signal(self.widget.Inputs.images, None)
        self.assertFalse(self.widget.Error.no_image_column.is_shown())

    def test_long_error_is_shown_whole_and_wrapped(self):
        label = self.widget.wrapped_errors
        self.assertFalse(label.isVisibleTo(self.widget))
        text = ("The ImageNet weights for VGG16 could not be downloaded: "
                "no connection. Put vgg16_weights.h5 into the Keras folder "
                "or set a mirror.")
        self.widget.Error.weights_unavailable(text)
        self.assertTrue(label.isVisibleTo(self.widget))
        self.assertTrue(label.wordWrap())
        self.assertEqual(label.text(), text)
        # It fits the widget's width, so it is not cut.
        self.widget.show()
        self.assertLessEqual(label.width(), self.widget.controlArea.width())
        self.assertGreater(label.heightForWidth(label.width()),
                           label.fontMetrics().height())
        self.widget.Error.weights_unavailable.clear()
        self.assertFalse(label.isVisibleTo(self.widget))
        self.widget.hide()

    def test_layers_have_plain_names_and_settings_keep_keys(self):
        combo = self.widget.layer_combo
        texts = [combo.itemText(i) for i in range(combo.count())]
        self.assertEqual(texts, [
            "last layer (1000 values)",
            "image features before the last layer (512 values)"])
        self.assertFalse(any("penultimate" in t or "fire9" in t
                             for t in texts))
        combo.setCurrentIndex(1)
        combo.activated.emit(1)
        self.assertEqual(self.widget.layer, "fire9")
        self.assertEqual(
            self.widget.settingsHandler.pack_data(self.widget)["layer"],
            "fire9")
        self.assertTrue(combo.itemData(0, Qt.ToolTipRole))

    def test_model_list_marks_offline_and_download(self):
        texts = [self.widget.model_combo.itemText(i)
                 for i in range(self.widget.model_combo.count())]
        self.assertIn("works offline", texts[0])
        self.assertTrue(texts[0].startswith("SqueezeNet"))
        self.assertTrue(any("downloads" in text and "MB" in text
                            for text in texts[1:]))

    def test_missing_weights_shows_error(self):
        def fail(*_, **__):
            raise WeightsUnavailable("weights missing: set the mirror")
        with mock.patch.object(owdeepembedding, "run_embedding", fail):
            self.send_signal(self.widget.Inputs.images, self.images)
            self.wait_until_finished()
        self.assertTrue(self.widget.Error.weights_unavailable.is_shown())
        self.assertIn("set the mirror",
                      str(self.widget.Error.weights_unavailable))
        self.assertIsNone(self.get_output(self.widget.Outputs.embeddings))

    def test_cancel_stops_the_run(self):
        started, release = threading.Event(), threading.Event()

        def slow(data, column, model, weights, layer, mirror, state,
                 cache_size=None):
            started.set()
            release.wait(10)
            if state.is_interruption_requested():
                raise Cancelled()
            raise AssertionError("the task was not interrupted")

        with mock.patch.object(owdeepembedding, "run_embedding", slow):
            self.send_signal(self.widget.Inputs.images, self.images)
            self.assertTrue(started.wait(10))
            self.assertTrue(self.widget.cancel_button.isEnabled())
            self.widget.cancel_button.click()
            release.set()
            self.wait_until_finished()
        self.assertFalse(self.widget.cancel_button.isEnabled())
        self.assertFalse(self.widget.Error.embedding_failed.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.embeddings))

    def test_device_is_shown_once_work_ran(self):
        # Asking for the device imports TensorFlow: not when the widget is
        # made, but in the worker of its first task.
        with mock.patch.object(device, "_described", []):
            widget = self.create_widget(OWDeepEmbedding)
            self.assertEqual(widget.device_label.text(),
                             device.DEVICE_NOT_DETECTED)
            self.send_signal(widget.Inputs.images, self.images,
                             widget=widget)
            self.wait_until_finished(widget=widget, timeout=60000)
            self.assertEqual(widget.device_label.text(),
                             device.device_description())
            self.assertNotEqual(widget.device_label.text(),
                                device.DEVICE_NOT_DETECTED)

    def test_settings_round_trip(self):
        simulate.combobox_activate_index(
            self.widget.model_combo, owdeepembedding.MODEL_KEYS.index("vgg16"))
        self.widget.mirror_edit.setText("http://127.0.0.1:9/weights/")
        self.widget.mirror_edit.editingFinished.emit()
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertEqual(settings["model"], "vgg16")
        restored = self.create_widget(OWDeepEmbedding,
                                      stored_settings=settings)
        self.assertEqual(restored.model, "vgg16")
        self.assertEqual(restored.model_combo.currentData(), "vgg16")
        self.assertEqual(restored.mirror_edit.text(),
                         "http://127.0.0.1:9/weights/")

    def test_unknown_stored_model_falls_back_to_squeezenet(self):
        widget = self.create_widget(OWDeepEmbedding,
                                    stored_settings={"model": "painters"})
        self.assertEqual(widget.model, "squeezenet")

    def test_cache_limit_clear_and_fault(self):
        # The cache is the test session's: other tests' images leave.
        shared_embedder("squeezenet").clear_cache()
        self.widget.cache_size_combo.setCurrentIndex(
            owdeepembedding.CACHE_SIZES_MB.index(500))
        self.widget.cache_size_combo.activated.emit(
            owdeepembedding.CACHE_SIZES_MB.index(500))
        self.assertEqual(self.widget.cache_size_mb, 500)
        self.send_signal(self.widget.Inputs.images, self.images)
        first = self.get_output(self.widget.Outputs.embeddings, wait=60000)
        embedder = shared_embedder("squeezenet")
        self.assertEqual(embedder.cache_size, 500 * 2 ** 20)
        self.assertEqual(len(embedder.cache), 4)
        self.assertFalse(self.widget.Warning.cache_off.is_shown())
        self.assertIn("MB", self.widget.cache_label.text())

        self.widget.clear_cache_button.click()
        self.assertEqual(len(embedder.cache), 0)
        self.assertFalse(self.widget.Warning.cache_not_cleared.is_shown())

        # A cache that cannot be used: the same embeddings, and a warning.
        damaged = sqlite3.DatabaseError("file is not a database")
        with mock.patch.object(EmbeddingCache, "_connect",
                               side_effect=damaged), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheUnavailable)
            self.widget.commit.now()
            second = self.get_output(self.widget.Outputs.embeddings,
                                     wait=60000)
        self.assertTrue(self.widget.Warning.cache_off.is_shown())
        self.assertIn("damaged", str(self.widget.Warning.cache_off))
        np.testing.assert_allclose(second.X, first.X, rtol=1e-5, atol=1e-6)
        self.assertEqual(len(embedder.cache), 0)
        # The next run uses the cache again.
        self.widget.commit.now()
        self.get_output(self.widget.Outputs.embeddings, wait=60000)
        self.assertFalse(self.widget.Warning.cache_off.is_shown())
        self.assertEqual(len(embedder.cache), 4)

    def test_cache_that_cannot_be_cleared(self):
        locked = sqlite3.OperationalError("database is locked")
        with mock.patch.object(owdeepembedding, "clear_cache",
                               side_effect=locked):
            self.widget.clear_cache_button.click()
        self.assertTrue(self.widget.Warning.cache_not_cleared.is_shown())
        self.assertIn("locked", str(self.widget.Warning.cache_not_cleared))

    def test_report(self):
        self.send_signal(self.widget.Inputs.images, self.images)
        self.wait_until_finished(timeout=60000)
        self.widget.send_report()


class RecordingState:
    """A TaskState stand-in that keeps every progress value it is given."""

    def __init__(self):
        self.values = []
        self.statuses = []

    def set_progress_value(self, value):
        self.values.append(value)

    def set_status(self, text):
        self.statuses.append(text)

    @staticmethod
    def is_interruption_requested():
        return False


class TestRunEmbeddingProgress(unittest.TestCase):
    """One bar over download and embedding: it never goes back."""

    @classmethod
    def setUpClass(cls):
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.images = make_image_table(cls.tempdir.name)

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()

    def run_with(self, download_steps):
        """Run the task with a fake download reporting `download_steps`
        (bytes done of 3 MB) before the network is built."""
        embedder = shared_embedder("squeezenet")
        # Images embedded by other tests would be cached and not reported.
        embedder.clear_cache()
        load_network = type(embedder).load_network
        total = 3 * 2 ** 20

        def fake_download(self, download_progress=None):
            for done in download_steps:
                download_progress(done, total)
            return load_network(self, download_progress)

        state = RecordingState()
        with mock.patch.object(type(embedder), "load_network",
                               fake_download):
            result = owdeepembedding.run_embedding(
                self.images, "image", "squeezenet", None, "penultimate",
                None, state)
        self.assertEqual(len(result.embeddings), 4)
        values = state.values
        self.assertTrue(values)
        self.assertTrue(all(a <= b for a, b in zip(values, values[1:])),
                        values)
        self.assertAlmostEqual(values[-1], 100)
        return state

    def test_download_then_embedding_never_goes_back(self):
        steps = [0, 2 ** 20, 2 * 2 ** 20, 3 * 2 ** 20]
        state = self.run_with(steps)
        share = owdeepembedding.DOWNLOAD_SHARE
        download = state.values[:len(steps)]
        np.testing.assert_allclose(download, [0, share / 3, 2 * share / 3,
                                              share])
        # Embedding starts where the download ended and fills the rest.
        self.assertTrue(all(share <= value
                            for value in state.values[len(steps):]))
        self.assertEqual(state.values[len(steps)], share)
        self.assertTrue(any("Downloading weights: 3 of 3 MB" == text
                            for text in state.statuses))

    def test_without_download_embedding_fills_the_bar(self):
        state = self.run_with([])
        # No share is kept for a download that did not happen.
        self.assertEqual(state.values[0], 0)
        self.assertFalse(any("Downloading" in text
                             for text in state.statuses))


if __name__ == "__main__":
    unittest.main()
