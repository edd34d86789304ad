"""Orange's report window and the deep widgets in one process.

Run by ``test_webengine.py`` in a fresh interpreter, as
``python webengine_check.py report-first|deep-first``: the order in which
QtWebEngine (the report window) and TensorFlow (the deep widgets) are
loaded is what used to kill the process, at once or at exit, so only the
exit status of a whole process tells whether it is safe.
"""
import os
import pathlib
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from AnyQt.QtTest import QTest  # noqa: E402

from Orange.widgets.report.owreport import OWReport  # noqa: E402
from Orange.widgets.tests.base import WidgetTest  # noqa: E402

from orangecontrib.deepimage.widgets.owdeepembedding import (  # noqa: E402
    OWDeepEmbedding)
from orangecontrib.deepimage.widgets.owimageclassifier import (  # noqa: E402
    OWImageClassifier)
from orangecontrib.deepimage.widgets.owsegmentationtrainer import (  # noqa
    OWSegmentationTrainer)

from imagedata import shapes_table  # noqa: E402

ORDER = sys.argv.pop(1) if len(sys.argv) > 1 else "report-first"
TIMEOUT = 120000


def mesa_llvm_loaded() -> bool:
    """Whether the process has a system LLVM (Mesa's) mapped."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return any("libLLVM" in line for line in maps)


class ReportAndDeepWidgets(WidgetTest):
    def open_report(self, widget):
        report = OWReport.get_instance()
        # WidgetTest replaces the window's show with a Mock; a person's
        # click on the report button shows the real window.
        report.__dict__.pop("show", None)
        widget.show_report()
        QTest.qWait(2000)  # QtWebEngine renders the page meanwhile
        self.assertTrue(report.isVisible())
        self.assertGreater(report.table_model.rowCount(), 0)

    def deep_work(self, folder):
        # Imported here: it loads TensorFlow, which must come after the
        # report window in "report-first".
        from test_segmentation import pairs_table
        images = folder / "images"
        images.mkdir()
        shapes = shapes_table(str(images), per_class=4)

        embedder = self.create_widget(OWDeepEmbedding)
        self.send_signal(embedder.Inputs.images, shapes, widget=embedder)
        embedded = self.get_output(embedder.Outputs.embeddings,
                                   widget=embedder, wait=TIMEOUT)
        self.assertEqual(len(embedded), len(shapes))
        self.assertEqual(len(embedded.domain.attributes), 1000)

        classifier = self.create_widget(
            OWImageClassifier,
            stored_settings={"epochs": 2, "auto_apply": True})
        self.send_signal(classifier.Inputs.data, shapes, widget=classifier)
        model = self.get_output(classifier.Outputs.model, widget=classifier,
                                wait=TIMEOUT)
        self.assertIsNotNone(model)
        self.assertEqual(len(model(shapes)), len(shapes))

        trainer = self.create_widget(
            OWSegmentationTrainer, stored_settings={
                "depth": 2, "base_filters": 4, "tile_size": 32, "epochs": 2,
                "batch_size": 4, "validation_percent": 34, "augment": False,
                "auto_apply": True})
        pairs = pairs_table(folder / "pairs", n=6, size=32)
        self.send_signal(trainer.Inputs.data, pairs, widget=trainer)
        self.assertIsNotNone(self.get_output(
            trainer.Outputs.model, widget=trainer, wait=TIMEOUT))
        return embedder

    def test_in_order(self):
        with tempfile.TemporaryDirectory() as folder:
            folder = pathlib.Path(folder)
            if ORDER == "report-first":
                self.open_report(self.create_widget(OWDeepEmbedding))
                self.assertFalse("tensorflow" in sys.modules,
                                 "TensorFlow was loaded before the report")
            embedder = self.deep_work(folder)
            self.open_report(embedder)
            print(f"order={ORDER} mesa_llvm={mesa_llvm_loaded()} "
                  f"tensorflow={'tensorflow' in sys.modules}", flush=True)


if __name__ == "__main__":
    unittest.main()
