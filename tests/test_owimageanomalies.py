import os
import tempfile
from unittest import mock

import numpy as np
from PIL import Image

from Orange.data import ContinuousVariable, Domain, Table
from Orange.widgets.tests.base import WidgetTest

from orangecontrib.deepimage.widgets.owimageanomalies import (
    OWImageAnomalies, run_anomalies)

from imagedata import image_table
from test_anomaly import texture, with_defect

TIMEOUT = 60000


class TestOWImageAnomalies(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        folder = cls.tempdir.name
        rng = np.random.default_rng(0)
        names, labels = [], []
        for i in range(8):
            name = f"normal{i}.png"
            Image.fromarray(texture(rng, 64, 80)).save(
                os.path.join(folder, name))
            names.append(name)
            labels.append(0)
        for i in range(3):
            pixels, _ = with_defect(rng, texture(rng, 64, 80))
            name = f"defect{i}.png"
            Image.fromarray(pixels).save(os.path.join(folder, name))
            names.append(name)
            labels.append(1)
        cls.normal = image_table(folder, names[:6])
        cls.test_data = image_table(folder, names[6:] + ["missing.png"])
        cls.labelled = image_table(folder, names, labels, ["good", "broken"],
                                   "state")

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(OWImageAnomalies)

    def score(self, normal=None, data=None, widget=None):
        widget = widget or self.widget
        self.send_signals([(widget.Inputs.normal,
                            self.normal if normal is None else normal),
                           (widget.Inputs.data,
                            self.test_data if data is None else data)],
                          widget=widget)
        return self.get_output(widget.Outputs.scored, widget=widget,
                               wait=TIMEOUT)

    def test_outputs_scored_anomalies_and_normal(self):
        scored = self.score()
        self.assertEqual(len(scored), len(self.test_data))
        self.assertEqual([var.name for var in scored.domain.metas[-2:]],
                         ["Anomaly score", "Anomalous"])
        scores = scored.get_column("Anomaly score")
        self.assertTrue(np.isnan(scores[-1]))  # the missing file
        self.assertTrue(self.widget.Warning.images_skipped.is_shown())
        # The defects score above both normal test images.
        self.assertGreater(scores[2:5].min(), scores[:2].max())
        anomalies = self.get_output(self.widget.Outputs.anomalies)
        normal = self.get_output(self.widget.Outputs.normal)
        self.assertEqual(len(anomalies) + len(normal), len(scored) - 1)
        flagged = scores > self.widget.threshold
        self.assertEqual(len(anomalies), int(flagged.sum()))
        # The gallery: the most anomalous first, with its heatmap.
        grid = self.widget.grid
        self.assertEqual(grid.count(), len(scored) - 1)
        first = grid.item(0).data(0x0100)  # Qt.UserRole
        self.assertEqual(first, int(np.nanargmax(scores)))

    def test_threshold_set_by_hand_splits_again(self):
        scored = self.score()
        scores = scored.get_column("Anomaly score")
        low = float(np.nanmin(scores)) - 1
        with mock.patch.object(OWImageAnomalies, "start") as start:
            self.widget.set_threshold(low)
            start.assert_not_called()  # no scoring again
        anomalies = self.get_output(self.widget.Outputs.anomalies)
        self.assertEqual(len(anomalies), len(scored) - 1)
        self.assertIsNone(self.get_output(self.widget.Outputs.normal))
        self.assertAlmostEqual(self.widget.threshold_spin.value(), low, 3)
        self.widget.threshold_line.setValue(float(np.nanmax(scores)) + 1)
        self.widget.threshold_line.sigPositionChangeFinished.emit(
            self.widget.threshold_line)
        self.assertIsNone(self.get_output(self.widget.Outputs.anomalies))
        self.widget.reset_threshold()
        self.assertIsNone(self.widget.user_threshold)
        self.assertEqual(self.widget.threshold,
                         self.widget.run.model.threshold)

    def test_labelled_table_and_settings_round_trip(self):
        self.widget.set_method("padim")
        scored = self.score(self.labelled, self.labelled)
        self.assertEqual(self.widget.normal_value, "good")
        self.assertEqual(self.widget.run.model.method, "padim")
        self.assertEqual(len(scored), len(self.labelled))
        self.widget.set_normal_value("broken")
        self.widget.set_threshold(1.5)
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertEqual(settings["method"], "padim")
        self.assertEqual(settings["normal_value"], "broken")
        self.assertEqual(settings["user_threshold"], 1.5)
        restored = self.create_widget(OWImageAnomalies,
                                      stored_settings=settings)
        self.assertEqual(restored.method_combo.currentData(), "padim")
        self.send_signal(restored.Inputs.normal, self.labelled,
                         widget=restored)
        self.assertEqual(restored.normal_combo.currentData(), "broken")

    def test_scores_normal_images_without_data(self):
        self.send_signal(self.widget.Inputs.normal, self.normal)
        scored = self.get_output(self.widget.Outputs.scored, wait=TIMEOUT)
        self.assertEqual(len(scored), len(self.normal))

    def test_no_image_column(self):
        table = Table.from_numpy(Domain([ContinuousVariable("x")]),
                                 np.zeros((3, 1)))
        self.send_signal(self.widget.Inputs.normal, table)
        self.assertTrue(self.widget.Error.no_image_column.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.scored))
        self.send_signal(self.widget.Inputs.normal, None)
        self.assertFalse(self.widget.Error.no_image_column.is_shown())

    def test_data_without_normal_images_asks_for_them(self):
        self.send_signal(self.widget.Inputs.data, self.test_data)
        self.assertTrue(self.widget.Information.no_normal.is_shown())
        self.assertIsNone(self.get_output(self.widget.Outputs.scored))

    def test_unexpected_failure_reaches_error_reporting(self):
        with mock.patch("orangecontrib.deepimage.widgets.owimageanomalies."
                        "AnomalyLearner.fit",
                        side_effect=RuntimeError("boom")), \
                mock.patch("sys.excepthook") as hook:
            self.send_signal(self.widget.Inputs.normal, self.normal)
            self.process_events(until=lambda: hook.called, timeout=TIMEOUT)
        self.assertTrue(hook.called)
        self.assertIsInstance(hook.call_args[0][1], RuntimeError)

    def test_report(self):
        self.score()
        self.widget.send_report()

    def test_runner_reports_progress(self):
        state = mock.Mock()
        state.is_interruption_requested.return_value = False
        run = run_anomalies(self.normal, self.test_data,
                            {"method": "patchcore"}, state)
        self.assertEqual(len(run.thumbnails), len(self.test_data) - 1)
        values = [call.args[0] for call in
                  state.set_progress_value.call_args_list]
        self.assertEqual(values[-1], 100)
        self.assertEqual(values, sorted(values))
