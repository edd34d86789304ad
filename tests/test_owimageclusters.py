import os
import tempfile
import unittest
from unittest import mock

import numpy as np
from PIL import Image

from AnyQt.QtCore import QPoint, Qt
from AnyQt.QtGui import QColor
from AnyQt.QtTest import QTest

from Orange.data import (
    ContinuousVariable, DiscreteVariable, Domain, StringVariable, Table)
from Orange.widgets.tests.base import WidgetTest
from Orange.widgets.tests.utils import simulate

from orangecontrib.deepimage import clustering
from orangecontrib.deepimage.clustering import METHODS
from orangecontrib.deepimage.clustering import ClusteringPieces as Pieces
from orangecontrib.deepimage.errors import Cancelled, InvalidInput
from orangecontrib.deepimage.widgets.owimageclusters import (
    OWImageClusters, run_clustering)
from orangecontrib.deepimage.widgets.utils.thumbnails import make_thumbnail

#: ImageNet classes 281-285 are the domestic cats.
CAT_WORDS = ("cat", "Mau", "tabby", "Persian", "Siamese")


def small_photos(folder, per_group=4, seed=0):
    """Small JPEG crops of three different photos (a cat, coffee, a rocket)."""
    from skimage import data
    rng = np.random.default_rng(seed)
    names = []
    for kind, photo in (("cat", data.chelsea()), ("coffee", data.coffee()),
                        ("rocket", data.rocket())):
        image = Image.fromarray(photo)
        width, height = image.size
        for i in range(per_group):
            scale = rng.uniform(0.7, 0.95)
            w, h = int(width * scale), int(height * scale)
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            names.append(f"{kind}{i}.jpg")
            image.crop((left, top, left + w, top + h)).resize((96, 72)).save(
                os.path.join(folder, names[-1]))
    return names


def image_table(folder, names):
    column = StringVariable("image")
    column.attributes.update({"type": "image", "origin": folder})
    return Table.from_numpy(Domain([], metas=[column]),
                            np.empty((len(names), 0)),
                            metas=np.array(names, dtype=object)[:, None])


class TestOWImageClusters(WidgetTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from orangecontrib.deepimage.embedding import ImageEmbedder
        cls.tempdir = tempfile.TemporaryDirectory()
        folder = cls.tempdir.name
        names = small_photos(folder)
        cls.embedder = ImageEmbedder("squeezenet", cache_dir=folder)
        cls.embedded = cls.embedder(image_table(folder, names))[0]
        cls.kinds = np.repeat(np.arange(3), 4)
        # naming runs the test's embedder: no second network, no user cache
        cls.patcher = mock.patch.object(
            clustering, "shared_embedder",
            return_value=cls.embedder)
        cls.patcher.start()

    @classmethod
    def tearDownClass(cls):
        cls.patcher.stop()
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.widget = self.create_widget(OWImageClusters)

    def send(self, data, widget=None):
        widget = widget or self.widget
        self.send_signal(widget.Inputs.embeddings, data, widget=widget)
        self.wait_until_finished(widget=widget, timeout=30000)

    def output(self, name="data", widget=None):
        widget = widget or self.widget
        return self.get_output(getattr(widget.Outputs, name), widget=widget)

    def test_outputs_have_named_clusters_and_silhouettes(self):
        self.send(self.embedded)
        data = self.output()
        self.assertEqual(len(data), len(self.embedded))
        cluster = data.domain["Cluster"]
        silhouette = data.domain["Silhouette"]
        self.assertIn(cluster, data.domain.metas)
        self.assertIn(silhouette, data.domain.metas)
        self.assertEqual(len(cluster.values), 3)
        self.assertEqual(self.widget.n_clusters, 3)
        labels = data.get_column(cluster)
        for kind in range(3):
            self.assertEqual(len(set(labels[self.kinds == kind])), 1)
        cat = cluster.values[int(labels[0])]
        self.assertTrue(any(word in cat for word in CAT_WORDS), cat)
        self.assertTrue(all(value.startswith("Cluster ") and ": " in value
                            for value in cluster.values))
        # the input is passed on, with ids
        np.testing.assert_array_equal(data.ids, self.embedded.ids)
        self.assertEqual(self.widget.silhouette_plot.current, 3)
        self.assertEqual(sorted(self.widget.silhouette_plot.scores),
                         list(range(2, 11)))
        self.assertEqual(self.widget.cluster_model.rowCount(), 3)
        self.assertEqual(len(self.widget.gallery.groups), 3)
        self.assertIsNone(self.output("selected_images"))

    def test_changing_the_number_of_clusters_changes_the_output(self):
        self.send(self.embedded)
        self.widget.set_clusters(2)
        self.wait_until_finished()
        self.assertEqual(len(self.output().domain["Cluster"].values), 2)
        self.assertFalse(self.widget.auto_clusters)
        self.assertTrue(self.widget.clusters_spin.isEnabled())
        self.widget.clusters_spin.setValue(5)
        self.wait_until_finished()
        self.assertEqual(len(self.output().domain["Cluster"].values), 5)
        self.assertEqual(self.widget.silhouette_plot.current, 5)
        # back to automatic: from the cache, no new run needed
        self.widget.controls.auto_clusters.click()
        self.wait_until_finished()
        self.assertEqual(len(self.output().domain["Cluster"].values), 3)
        self.assertEqual(self.widget.n_clusters, 3)

    def test_bar_click_fixes_the_number(self):
        self.send(self.embedded)
        self.widget.silhouette_plot.clusterCountClicked.emit(4)
        self.wait_until_finished()
        self.assertFalse(self.widget.auto_clusters)
        self.assertEqual(len(self.output().domain["Cluster"].values), 4)

    def test_methods(self):
        self.send(self.embedded)
        for index, method in enumerate(METHODS):
            simulate.combobox_activate_index(self.widget.method_combo, index)
            self.wait_until_finished()
            self.assertEqual(self.widget.method, method)
            labels = self.output().get_column("Cluster")
            for kind in range(3):
                self.assertEqual(len(set(labels[self.kinds == kind])), 1)

    def test_select_cluster_outputs_its_images(self):
        self.send(self.embedded)
        data = self.output()
        self.widget.select_clusters([1])
        selected = self.output("selected_images")
        expected = data.get_column("Cluster") == 1
        np.testing.assert_array_equal(selected.ids, data.ids[expected])
        # the same through the list of clusters
        self.widget.cluster_list.selectionModel().clearSelection()
        self.assertIsNone(self.output("selected_images"))
        view = self.widget.cluster_list
        view.selectionModel().select(
            self.widget.cluster_model.index(2, 0),
            view.selectionModel().SelectionFlag.Select)
        selected = self.output("selected_images")
        np.testing.assert_array_equal(
            selected.ids, data.ids[data.get_column("Cluster") == 2])

    def test_gallery_clicks_select(self):
        self.send(self.embedded)
        gallery = self.widget.gallery
        gallery.resize(700, 500)
        gallery._layout()
        header = gallery._header_rect(0).center()
        QTest.mouseClick(gallery.viewport(), Qt.MouseButton.LeftButton,
                         pos=header)
        data = self.output()
        np.testing.assert_array_equal(
            self.output("selected_images").ids,
            data.ids[data.get_column("Cluster") == 0])
        first = gallery._cell_rect(1, 0).center()
        QTest.mouseClick(gallery.viewport(), Qt.MouseButton.LeftButton,
                         pos=first)
        row = gallery.groups[1].rows[0]
        np.testing.assert_array_equal(self.output("selected_images").ids,
                                      data.ids[[row]])
        second = gallery._cell_rect(1, 1).center()
        QTest.mouseClick(gallery.viewport(), Qt.MouseButton.LeftButton,
                         Qt.KeyboardModifier.ControlModifier, pos=second)
        self.assertEqual(len(self.output("selected_images")), 2)
        QTest.mouseClick(gallery.viewport(), Qt.MouseButton.LeftButton,
                         pos=QPoint(gallery.viewport().width() - 3,
                                    gallery.viewport().height() - 3))
        self.assertIsNone(self.output("selected_images"))

    def test_thumbnails_load_off_the_gui_thread(self):
        self.send(self.embedded)
        gallery = self.widget.gallery
        gallery.resize(700, 500)
        gallery._layout()
        gallery._request_visible()
        visible = gallery.visible_rows()
        self.assertEqual(len(visible), len(self.embedded))
        loader = self.widget.loader
        for _ in range(200):
            if all(loader.is_loaded(row) for row in visible):
                break
            QTest.qWait(20)
        pixmap = loader.get(visible[0])
        self.assertFalse(pixmap is None or pixmap is loader.FAILED)
        self.assertEqual(max(pixmap.width(), pixmap.height()), 96)
        gallery.grab()   # paints without errors
        self.assertIn("Silhouette", self.widget._tooltip(0))

    def test_make_thumbnail(self):
        folder = self.tempdir.name
        thumbnail = make_thumbnail(os.path.join(folder, "cat0.jpg"), 48)
        self.assertEqual(thumbnail.shape, (36, 48, 3))
        self.assertIsNone(make_thumbnail(os.path.join(folder, "nope.jpg")))
        self.assertIsNone(make_thumbnail(None))

    def test_map_is_computed_when_shown(self):
        self.send(self.embedded)
        self.assertIsNone(self.widget.map_view.coordinates)
        self.widget.tabs.setCurrentIndex(self.widget.MAP_TAB)
        self.wait_until_finished(timeout=30000)
        coordinates = self.widget.map_view.coordinates
        self.assertEqual(coordinates.shape, (len(self.embedded), 2))
        self.widget.map_view.resize(500, 400)
        self.widget.map_view.grab()
        # a rectangle over the whole map selects every image
        self.widget.map_view.selectionRequested.emit(
            list(range(len(self.embedded))), "replace")
        self.assertEqual(len(self.output("selected_images")),
                         len(self.embedded))

    def test_duplicates_output(self):
        data = Table.concatenate([self.embedded, self.embedded[:1]])
        self.send(data)
        duplicates = self.output("duplicates")
        self.assertGreaterEqual(len(duplicates), 1)
        self.assertEqual(list(duplicates.get_column("Row 1")[:1]), [1])
        self.assertEqual(list(duplicates.get_column("Row 2")[:1]),
                         [len(data)])
        self.assertTrue(self.widget.Information.duplicates_found.is_shown())

    def test_no_data(self):
        self.assertTrue(self.widget.Information.no_data.is_shown())
        self.send(self.embedded)
        self.assertFalse(self.widget.Information.no_data.is_shown())
        self.send(None)
        self.assertTrue(self.widget.Information.no_data.is_shown())
        for name in ("data", "selected_images", "duplicates"):
            self.assertIsNone(self.output(name))
        self.assertEqual(self.widget.gallery.groups, [])

    def test_no_embedding_and_too_few_images(self):
        table = self.embedded.transform(Domain([], metas=self.embedded.domain
                                               .metas))
        self.send(table)
        self.assertTrue(self.widget.Error.no_embedding.is_shown())
        self.assertIsNone(self.output())
        self.send(self.embedded[:2])
        self.assertFalse(self.widget.Error.no_embedding.is_shown())
        self.assertTrue(self.widget.Error.too_few_images.is_shown())
        self.assertIsNone(self.output())
        self.send(self.embedded)
        self.assertFalse(self.widget.Error.too_few_images.is_shown())
        self.assertIsNotNone(self.output())

    def test_no_image_column_still_clusters(self):
        rng = np.random.default_rng(0)
        X = np.repeat(np.eye(3), 5, axis=0) + 0.05 * rng.random((15, 3))
        table = Table.from_numpy(
            Domain([ContinuousVariable(name) for name in "abc"]), X)
        self.send(table)
        self.assertTrue(self.widget.Warning.no_image_column.is_shown())
        values = self.output().domain["Cluster"].values
        self.assertEqual(values, ("Cluster 1", "Cluster 2", "Cluster 3"))
        self.widget.gallery.resize(600, 400)
        self.widget.gallery.grab()

    def test_naming_can_be_turned_off_and_may_fail(self):
        self.widget.controls.label_clusters.click()
        self.send(self.embedded)
        self.assertEqual(self.output().domain["Cluster"].values,
                         ("Cluster 1", "Cluster 2", "Cluster 3"))
        with mock.patch.object(clustering, "imagenet_probabilities",
                               side_effect=RuntimeError("no network")):
            self.widget.controls.label_clusters.click()
            self.wait_until_finished()
        self.assertTrue(self.widget.Warning.naming_failed.is_shown())
        self.assertIn("no network", str(self.widget.Warning.naming_failed))
        self.assertEqual(len(self.output().domain["Cluster"].values), 3)

    def test_names_come_from_typical_images_only(self):
        real = clustering.imagenet_probabilities
        with mock.patch.object(clustering, "NAMING_SAMPLE", 2), \
                mock.patch.object(clustering, "imagenet_probabilities",
                                  wraps=real) as probabilities:
            self.send(self.embedded)
            self.assertEqual(len(probabilities.call_args.kwargs["rows"]), 6)
            values = self.output().domain["Cluster"].values
            self.assertTrue(all(": " in value for value in values))
            self.widget.set_clusters(4)
            self.wait_until_finished()
            # only the typical images not seen before go through the network
            asked = [row for call in probabilities.call_args_list
                     for row in call.kwargs["rows"]]
            self.assertEqual(len(asked), len(set(asked)))
            self.assertLessEqual(len(asked), 8)
            self.widget.set_clusters(None)
            self.wait_until_finished()
        self.assertEqual(probabilities.call_count, 2)

    def test_clustering_error_is_shown(self):
        with mock.patch.object(clustering, "cluster_embeddings",
                               side_effect=MemoryError("too big")):
            self.send(self.embedded)
        self.assertTrue(self.widget.Error.clustering_failed.is_shown())
        self.assertIsNone(self.output())

    def test_user_error_is_shown_and_a_bug_reaches_error_reporting(self):
        with mock.patch.object(clustering, "cluster_embeddings",
                               side_effect=InvalidInput("bad vectors")):
            self.send(self.embedded)
        self.assertIn("bad vectors", str(self.widget.Error.clustering_failed))
        bug = RuntimeError("a bug")
        with mock.patch.object(clustering, "cluster_embeddings",
                               side_effect=bug), \
                mock.patch("sys.excepthook") as excepthook:
            self.send(self.embedded[:-1])
            QTest.qWait(50)
        excepthook.assert_called_once()
        self.assertIs(excepthook.call_args.args[1], bug)
        self.assertIsNotNone(excepthook.call_args.args[2])  # the traceback
        self.assertFalse(self.widget.Error.clustering_failed.is_shown())
        self.assertIsNone(self.output())
        self.assertEqual(self.widget.gallery.groups, [])
        # and the widget is ready for the next input
        self.assertFalse(self.widget.isInvalidated())
        self.send(self.embedded)
        self.assertEqual(len(self.output()), len(self.embedded))

    def test_runner_stops_on_request(self):
        state = mock.Mock()
        state.is_interruption_requested.return_value = True
        with self.assertRaises(Cancelled):
            run_clustering(self.embedded.X, "kmeans", None, 0.05, False,
                           None, None, Pieces(), state)

    def test_runner_reuses_known_pieces(self):
        state = mock.Mock()
        state.is_interruption_requested.return_value = False
        first = run_clustering(self.embedded.X, "ward", None, 0.05, False,
                               None, None, Pieces(), state)
        with mock.patch.object(clustering, "cluster_embeddings") as run:
            again = run_clustering(self.embedded.X, "ward", None, 0.05,
                                   False, None, None, first, state)
        run.assert_not_called()
        self.assertIs(again.result, first.result)
        tags = [call.args[0][0] for call in
                state.set_partial_result.call_args_list]
        self.assertEqual(tags, ["clusters", "ready"] * 2)

    def test_settings_round_trip(self):
        simulate.combobox_activate_index(self.widget.method_combo, 2)
        self.widget.set_clusters(4)
        self.widget.duplicate_threshold = 0.1
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertEqual(settings["method"], "cosine")
        self.assertEqual(settings["n_clusters"], 4)
        self.assertFalse(settings["auto_clusters"])
        self.assertEqual(settings["__version__"], 1)
        restored = self.create_widget(OWImageClusters,
                                      stored_settings=settings)
        self.assertEqual(restored.method, "cosine")
        self.assertEqual(restored.method_combo.currentData(), "cosine")
        self.assertEqual(restored.n_clusters, 4)
        self.assertFalse(restored.auto_clusters)
        self.assertTrue(restored.clusters_spin.isEnabled())
        self.assertEqual(restored.duplicate_threshold, 0.1)
        self.send(self.embedded, widget=restored)
        self.assertEqual(
            len(self.output(widget=restored).domain["Cluster"].values), 4)

    def labelled(self):
        """The embedded photos with their kind as the class and a
        categorical meta "half" (with one unknown value)."""
        kind = DiscreteVariable("kind", values=("cat", "coffee", "rocket"))
        half = DiscreteVariable("half", values=("first", "second"))
        domain = self.embedded.domain
        data = self.embedded.transform(Domain(
            domain.attributes, kind, domain.metas + (half,)))
        halves = (np.arange(len(data)) % 2).astype(float)
        halves[3] = np.nan
        with data.unlocked(data.Y, data.metas):
            data.Y[:] = self.kinds
            data.metas[:, -1] = halves
        return data, kind, half

    def assert_coloured_by(self, var, values):
        colors = [QColor(*map(int, rgb)) for rgb in var.colors]
        map_view, gallery = self.widget.map_view, self.widget.gallery
        for row, value in enumerate(values):
            expected = QColor(Qt.GlobalColor.gray) if np.isnan(value) \
                else colors[int(value)]
            self.assertEqual(map_view.color_of(row), expected)
            self.assertEqual(gallery.cell_color(row), expected)
        self.assertEqual(list(map_view.legend), list(var.values))

    def test_colour_by_the_class_first_then_any_variable(self):
        data, kind, half = self.labelled()
        self.send(data)
        combo = self.widget.controls.color_var
        self.assertEqual(self.widget.color_var, kind)
        self.assertEqual(combo.currentText(), "kind")
        self.assertEqual([combo.itemText(i) for i in range(combo.count())
                          if combo.itemText(i)],
                         ["Clusters", "kind", "half"])
        self.assert_coloured_by(kind, self.kinds)
        self.widget.gallery.grab()  # paints the frames
        simulate.combobox_activate_item(combo, "half")
        self.assertEqual(self.widget.color_var, half)
        self.assert_coloured_by(half, data.get_column(half))
        simulate.combobox_activate_item(combo, "Clusters")
        self.assertIsNone(self.widget.color_var)
        result = self.widget.result
        for row in range(len(data)):
            self.assertEqual(self.widget.map_view.color_of(row),
                             self.widget._colors()[result.labels[row]])
            self.assertIsNone(self.widget.gallery.cell_color(row))

    def test_colour_by_the_clusters_without_a_class(self):
        self.send(self.embedded)
        self.assertIsNone(self.widget.color_var)
        self.assertEqual(self.widget.controls.color_var.currentText(),
                         "Clusters")
        labels = self.widget.result.labels
        self.assertEqual(self.widget.map_view.color_of(0),
                         self.widget._colors()[labels[0]])
        self.assertIsNone(self.widget.gallery.cell_color(0))

    def test_colour_by_is_stored_by_name(self):
        data = self.labelled()[0]
        self.send(data)
        simulate.combobox_activate_item(self.widget.controls.color_var,
                                        "half")
        settings = self.widget.settingsHandler.pack_data(self.widget)
        self.assertIn(("half", 101),
                      [context.values.get("color_var")
                       for context in settings["context_settings"]])
        restored = self.create_widget(OWImageClusters,
                                      stored_settings=settings)
        self.send(data, widget=restored)
        self.assertEqual(restored.color_var.name, "half")
        self.assertEqual(restored.controls.color_var.currentText(), "half")
        # an explicit choice of the clusters is kept as well
        simulate.combobox_activate_item(restored.controls.color_var,
                                        "Clusters")
        settings = restored.settingsHandler.pack_data(restored)
        again = self.create_widget(OWImageClusters, stored_settings=settings)
        self.send(data, widget=again)
        self.assertIsNone(again.color_var)

    def test_selection_is_restored_with_the_workflow(self):
        self.send(self.embedded)
        self.widget.select_rows([1, 5])
        settings = self.widget.settingsHandler.pack_data(self.widget)
        restored = self.create_widget(OWImageClusters,
                                      stored_settings=settings)
        self.send(self.embedded, widget=restored)
        selected = self.output("selected_images", widget=restored)
        np.testing.assert_array_equal(selected.ids, self.embedded.ids[[1, 5]])

    def test_unknown_stored_method_falls_back(self):
        widget = self.create_widget(OWImageClusters,
                                    stored_settings={"method": "dbscan"})
        self.assertEqual(widget.method, "kmeans")

    def test_report(self):
        self.widget.send_report()
        self.send(self.embedded)
        self.widget.send_report()


if __name__ == "__main__":
    unittest.main()
