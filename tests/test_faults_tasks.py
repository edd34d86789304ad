"""Faults around the widgets' tasks: cancelling in the middle of real work,
many input changes in a row, an unexpected error in a worker, and what the
canvas pays when it discovers and creates the widgets (no TensorFlow)."""
import glob
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import unittest
from unittest import mock

import numpy as np
from PIL import Image

from Orange.data import Domain, StringVariable, Table
from Orange.widgets.tests.base import WidgetTest

from orangecontrib.deepimage.widgets import oweditimages, owdeepembedding
from orangecontrib.deepimage.widgets import owimageclassifier
from orangecontrib.deepimage.widgets.oweditimages import OWEditImages
from orangecontrib.deepimage.widgets.owdeepembedding import OWDeepEmbedding
from orangecontrib.deepimage.widgets.owimageclassifier import (
    OWImageClassifier)

from imagedata import image_table, shapes_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET_FILES = sorted(glob.glob(os.path.join(
    ROOT, "orangecontrib", "deepimage", "widgets", "ow*.py")))
TIMEOUT = 60000


def widget_modules():
    return ["orangecontrib.deepimage.widgets."
            + os.path.splitext(os.path.basename(path))[0]
            for path in WIDGET_FILES]


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with this tree first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, os.environ.get("PYTHONPATH", "")]),
        QT_QPA_PLATFORM="offscreen")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def new_threads(before):
    """Threads started since `before` (thread ids) that still do work of
    the add-on, or that decode images (a pool that was not shut down).

    A widget keeps one idle worker thread for its next task (Orange's
    ConcurrentMixin); waiting in it for work is not running.
    """
    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        if thread.ident in before or not thread.is_alive():
            continue
        frame = frames.get(thread.ident)
        stack = traceback.extract_stack(frame) if frame is not None else []
        if thread.name.startswith("deepimage-decode") or any(
                os.path.join("orangecontrib", "deepimage") in entry.filename
                for entry in stack):
            busy.append(f"{thread.name} at {stack[-1] if stack else '?'}")
    return busy


def waiting_progress(real, started: threading.Event):
    """A stand-in for tasks.task_progress: at its first report it signals
    `started` and waits until the task is cancelled (at most 10 s), then
    reports as the real one does (which raises Cancelled)."""
    def make(state, *args):
        report = real(state, *args)

        def progress(fraction):
            if not started.is_set():
                started.set()
                wait_for(state.is_interruption_requested)
            report(fraction)
        return progress
    return make


class TestNoTensorFlowWhenDiscovered(unittest.TestCase):
    def test_the_widget_files_are_found(self):
        self.assertIn("orangecontrib.deepimage.widgets.owdeepembedding",
                      widget_modules())
        self.assertGreaterEqual(len(WIDGET_FILES), 9)

    def test_importing_each_widget_module_imports_no_tensorflow(self):
        # One module after another, each checked right after its import,
        # so that the output names the module that pulls TensorFlow in.
        result = run_python(f"""
            import importlib, sys
            for name in {widget_modules()!r}:
                importlib.import_module(name)
                heavy = [m for m in ("tensorflow", "keras")
                         if m in sys.modules]
                print(name, *heavy)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.split("\n")[:-1]
        self.assertEqual(lines, widget_modules())

    def test_creating_each_widget_imports_no_tensorflow(self):
        result = run_python(f"""
            import importlib, inspect, sys
            from AnyQt.QtWidgets import QApplication
            from Orange.widgets.widget import OWWidget
            app = QApplication([])
            for name in {widget_modules()!r}:
                module = importlib.import_module(name)
                for cls in vars(module).values():
                    if inspect.isclass(cls) and issubclass(cls, OWWidget) \\
                            and cls.__module__ == name:
                        widget = cls()
                        widget.show()
                        app.processEvents()
                        widget.onDeleteWidget()
                        heavy = [m for m in ("tensorflow", "keras")
                                 if m in sys.modules]
                        print(cls.__name__, *heavy)
            """)
        self.assertEqual(result.returncode, 0, result.stderr)
        names = result.stdout.split("\n")[:-1]
        self.assertEqual(len(names), len(WIDGET_FILES))
        self.assertTrue(all(" " not in name for name in names), names)


class TestDeepEmbeddingFaults(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        names = []
        rng = np.random.default_rng(0)
        for i in range(40):
            names.append(f"img{i:02d}.png")
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)) \
                .save(os.path.join(cls.tempdir.name, names[-1]))
        cls.images = image_table(cls.tempdir.name, names)

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(OWDeepEmbedding)

    def assert_ready(self, widget):
        self.assertIsNone(widget.task)
        self.assertFalse(widget.cancel_button.isEnabled())
        self.assertFalse(widget.isInvalidated())
        self.assertFalse(list(widget.Error.active))

    def test_cancel_in_the_middle_of_embedding(self):
        # The real embedding, cancelled after its first batch of images.
        started = threading.Event()
        before = {thread.ident for thread in threading.enumerate()}
        progress = waiting_progress(owdeepembedding.task_progress, started)
        with mock.patch.object(owdeepembedding, "task_progress", progress):
            self.send_signal(self.widget.Inputs.images, self.images)
            self.assertTrue(started.wait(60))
            task = self.widget.task
            self.assertIsNotNone(task)
            self.assertTrue(self.widget.cancel_button.isEnabled())
            self.widget.cancel_button.click()
            self.assert_ready(self.widget)
            # The worker sees the request and ends; nothing it started
            # (such as the threads decoding images) keeps running.
            self.assertTrue(wait_for(task.future.done, 30))
            self.assertTrue(task.future.cancelled()
                            or task.future.exception() is not None)
            self.assertTrue(wait_for(lambda: not new_threads(before), 10),
                            new_threads(before))
        self.process_events()
        self.assert_ready(self.widget)
        self.assertIsNone(self.get_output(self.widget.Outputs.embeddings))

    def test_a_hundred_rapid_input_changes(self):
        tables = [self.images[i % 7:i % 7 + 3 + i % 5] for i in range(100)]
        for table in tables:
            self.send_signal(self.widget.Inputs.images, table)
        embeddings = self.get_output(self.widget.Outputs.embeddings,
                                     wait=TIMEOUT)
        self.wait_until_finished(timeout=TIMEOUT)
        last = tables[-1]
        self.assertEqual(len(embeddings), len(last))
        np.testing.assert_array_equal(embeddings.ids, last.ids)
        np.testing.assert_array_equal(
            embeddings.get_column("image"), last.get_column("image"))
        self.assertTrue(np.isfinite(embeddings.X).all())
        self.assert_ready(self.widget)

    def test_unexpected_error_reaches_the_error_reporting(self):
        def broken(*_args, **_kwargs):
            return 1 / 0

        with mock.patch.object(owdeepembedding, "run_embedding", broken), \
                mock.patch("sys.excepthook") as excepthook:
            self.send_signal(self.widget.Inputs.images, self.images)
            self.wait_until_finished(timeout=TIMEOUT)
            self.process_events(lambda: excepthook.called)
        excepthook.assert_called_once()
        kind, error, trace = excepthook.call_args[0]
        self.assertIs(kind, ZeroDivisionError)
        self.assertIsInstance(error, ZeroDivisionError)
        self.assertIsNotNone(trace)
        self.assertIn("broken", "".join(traceback.format_tb(
            error.__traceback__)))
        # Not turned into a message of the widget, which is ready again.
        self.assertFalse(self.widget.Error.embedding_failed.is_shown())
        self.assert_ready(self.widget)
        self.assertIsNone(self.get_output(self.widget.Outputs.embeddings))


class TestImageClassifierCancel(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.env = mock.patch.dict(os.environ, {
            "DEEPIMAGE_CACHE_DIR": os.path.join(cls.tempdir.name, "cache")})
        cls.env.start()
        cls.data = shapes_table(cls.tempdir.name, per_class=4)

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        cls.tempdir.cleanup()
        super().tearDownClass()

    def test_cancel_in_the_middle_of_training(self):
        widget = self.create_widget(OWImageClassifier, stored_settings={
            "epochs": 500, "early_stopping": False, "auto_apply": True})
        epochs = []
        widget.on_partial_result = epochs.append
        before = {thread.ident for thread in threading.enumerate()}
        self.send_signal(widget.Inputs.data, self.data, widget=widget)
        task = widget.task
        self.assertIsNotNone(task)
        self.process_events(lambda: len(epochs) >= 2, timeout=TIMEOUT)
        # New data (none) makes the training pointless: it is cancelled.
        self.send_signal(widget.Inputs.data, None, widget=widget)
        self.assertIsNone(widget.task)
        self.assertFalse(widget.stop_button.isEnabled())
        self.assertTrue(wait_for(task.future.done, 60))
        self.assertTrue(wait_for(lambda: not new_threads(before), 10),
                        new_threads(before))
        self.process_events()
        self.assertLess(len(epochs), 500)
        self.assertIsNone(widget.task)
        self.assertFalse(list(widget.Error.active))
        self.assertFalse(widget.Information.stopped.is_shown())
        self.assertIsNone(self.get_output(widget.Outputs.model,
                                          widget=widget))

    def test_unexpected_error_in_training_reaches_the_error_reporting(self):
        widget = self.create_widget(OWImageClassifier)

        def broken(*_args, **_kwargs):
            raise ZeroDivisionError("in the worker")

        with mock.patch.object(owimageclassifier, "run_training", broken), \
                mock.patch("sys.excepthook") as excepthook:
            self.send_signal(widget.Inputs.data, self.data, widget=widget)
            self.wait_until_finished(widget=widget, timeout=TIMEOUT)
            self.process_events(lambda: excepthook.called)
        kind, error, _ = excepthook.call_args[0]
        self.assertIs(kind, ZeroDivisionError)
        self.assertFalse(widget.Error.training_failed.is_shown())
        self.assertFalse(widget.Error.fitting_failed.is_shown())
        self.assertIsNone(widget.task)


class TestEditImagesCancel(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        folder = cls.tempdir.name
        labels = np.zeros((24, 32), np.uint8)
        labels[4:12, 6:20] = 1
        Image.fromarray(labels).save(os.path.join(folder, "mask.png"))
        rows = []
        for i in range(12):
            pixels = np.full((24, 32, 3), 20 * i, np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"p{i}.png"))
            rows.append([f"p{i}.png", "mask.png"])
        image = StringVariable("image")
        image.attributes.update({"type": "image", "origin": folder})
        mask = StringVariable("mask")
        mask.attributes.update({"type": "image", "origin": folder,
                                "mask": "class",
                                "classes": "background, object"})
        cls.data = Table.from_numpy(
            Domain([], metas=[image, mask]), np.empty((len(rows), 0)),
            metas=np.array(rows, dtype=object))

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def test_cancel_in_the_middle_of_editing(self):
        with tempfile.TemporaryDirectory() as out:
            widget = self.create_widget(
                OWEditImages, stored_settings={"output_folder": out})
            started = threading.Event()
            progress = waiting_progress(oweditimages.task_progress, started)
            before = {thread.ident for thread in threading.enumerate()}
            with mock.patch.object(oweditimages, "task_progress", progress):
                self.send_signal(widget.Inputs.data, self.data,
                                 widget=widget)
                widget.commit.now()
                self.assertTrue(started.wait(30))
                task = widget.task
                self.assertTrue(widget.cancel_button.isEnabled())
                widget.cancel_button.click()
                self.assertIsNone(widget.task)
                self.assertFalse(widget.cancel_button.isEnabled())
                self.assertTrue(wait_for(task.future.done, 30))
                self.assertTrue(wait_for(lambda: not new_threads(before)),
                                new_threads(before))
            self.process_events()
            self.assertFalse(list(widget.Error.active))
            self.assertIsNone(self.get_output(widget.Outputs.edited_images,
                                              widget=widget))
            # Cancelled after the first image: that one is written, whole,
            # and no other file (no partial one) is there.
            self.assertEqual(os.listdir(out), ["p0-remove.png"])
            with Image.open(os.path.join(out, "p0-remove.png")) as image:
                image.load()
                self.assertEqual(image.size, (32, 24))
            widget.onDeleteWidget()


if __name__ == "__main__":
    unittest.main()
