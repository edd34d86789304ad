"""Image Clusters: group embedded images, name the groups, find duplicates.

This module wires :func:`~orangecontrib.deepimage.clustering.cluster_job`
and the shared views of :mod:`orangecontrib.deepimage.widgets.utils`."""
import os
from typing import List, Optional, Sequence

import numpy as np

from AnyQt.QtCore import QSize
from AnyQt.QtGui import QColor
from AnyQt.QtWidgets import QTabWidget

from Orange.data import DiscreteVariable, Table
from Orange.widgets import gui
from Orange.widgets.settings import (
    ContextSetting, DomainContextHandler, Setting)
from Orange.widgets.utils.colorpalettes import LimitedDiscretePalette
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.itemmodels import DomainModel
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.clustering import (
    DUPLICATE_THRESHOLD, METHODS, NAMING_MODEL, ClusteringCache,
    ClusteringPieces, ClusteringResult, add_cluster_columns, cluster_job,
    cluster_names, cluster_summary, duplicates_table, embedding_matrix,
    recorded_model)
from orangecontrib.deepimage.errors import Cancelled, DeepImageError
from orangecontrib.deepimage.images import find_image_column
from orangecontrib.deepimage.widgets.utils.embeddingmap import (
    ImageMap, colour_views)
from orangecontrib.deepimage.widgets.utils.gallery import (
    Group, GroupList, ThumbnailGallery, apply_selection)
from orangecontrib.deepimage.widgets.utils.silhouette import SilhouettePlot
from orangecontrib.deepimage.widgets.utils.tasks import (
    TaskButtonsMixin, task_progress)
from orangecontrib.deepimage.widgets.utils.thumbnails import (
    RowPaths, ThumbnailLoader)

MIN_IMAGES = 3


def run_clustering(X: np.ndarray, method: str, n_clusters: Optional[int],
                   threshold: float, want_map: bool,
                   names_data: Optional[Table], names_model: Optional[str],
                   known: ClusteringPieces, state: TaskState, *,
                   images: Optional[Table] = None) -> ClusteringPieces:
    """:func:`~orangecontrib.deepimage.clustering.cluster_job` in a worker
    thread; its partial results come as ``(tag, pieces)``. `images` (a
    table with an image column) confirm near-duplicates on their pixels."""
    return cluster_job(
        X, method, n_clusters, duplicate_threshold=threshold,
        want_map=want_map, names_table=names_data, names_model=names_model,
        known=known, duplicate_images=images,
        progress=task_progress(state), status=state.set_status,
        partial=lambda tag, pieces: state.set_partial_result((tag, pieces)))


class OWImageClusters(OWWidget, TaskButtonsMixin):
    name = "Image Clusters"
    description = "Group embedded images into clusters named by what they " \
                  "show, see them in a gallery and on a map, and find " \
                  "near-duplicates."
    icon = "icons/ImageClusters.svg"
    priority = 40
    keywords = "image clusters, clustering, k-means, hierarchical, " \
               "silhouette, near duplicates, t-sne, gallery"

    class Inputs:
        embeddings = Input("Embeddings", Table)

    class Outputs:
        data = Output("Data", Table, default=True)
        selected_images = Output("Selected Images", Table)
        duplicates = Output("Duplicates", Table)

    class Error(OWWidget.Error):
        no_embedding = Msg("The data has no embedding: send images through "
                           "Deep Embedding or Image Embedding first.")
        too_few_images = Msg("At least {} images are needed for clusters; "
                             "the data has {}.")
        clustering_failed = Msg("Clustering failed: {}")

    class Warning(OWWidget.Warning):
        no_image_column = Msg("The data has no image column: clusters are "
                              "shown without thumbnails.")
        naming_failed = Msg("Clusters could not be named: {}")

    class Information(OWWidget.Information):
        no_data = Msg("Connect embedded images (from Deep Embedding or "
                      "Image Embedding).")
        duplicates_found = Msg("{} pair(s) of near-duplicate images; see "
                               "the Duplicates output.")

    settings_version = 1
    settingsHandler = DomainContextHandler()
    color_var: Optional[DiscreteVariable] = ContextSetting(None)
    method: str = Setting("kmeans")
    n_clusters: int = Setting(3)
    auto_clusters: bool = Setting(True)
    label_clusters: bool = Setting(True)
    duplicate_threshold: float = Setting(DUPLICATE_THRESHOLD)
    selection: Optional[List[int]] = Setting(None, schema_only=True)
    auto_commit: bool = Setting(True)

    GALLERY_TAB, MAP_TAB = 0, 1

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        if self.method not in METHODS:
            self.method = "kmeans"
        self.data: Optional[Table] = None
        self.X: Optional[np.ndarray] = None
        self.paths: Sequence[Optional[str]] = RowPaths()
        self._pending_selection = self.selection
        self.selected = np.zeros(0, dtype=bool)
        self._reset_results()

        box = gui.vBox(self.controlArea, "Clustering")
        self.method_combo = gui.comboBox(box, self, None)
        for key, label in METHODS.items():
            self.method_combo.addItem(label, key)
        self.method_combo.setCurrentIndex(list(METHODS).index(self.method))
        self.method_combo.activated.connect(self._on_method_changed)
        row = gui.hBox(box)
        self.clusters_spin = gui.spin(
            row, self, "n_clusters", 2, 50, label="Clusters:",
            callback=self._on_clusters_changed, controlWidth=60)
        self.auto_check = gui.checkBox(
            row, self, "auto_clusters", "Automatic",
            callback=self._on_auto_changed,
            tooltip="Choose the number with the best mean silhouette "
                    "(2 to 10 clusters).")
        self.clusters_spin.setEnabled(not self.auto_clusters)
        self.silhouette_plot = SilhouettePlot()
        self.silhouette_plot.clusterCountClicked.connect(self.set_clusters)
        box.layout().addWidget(self.silhouette_plot)
        gui.checkBox(box, self, "label_clusters",
                     "Name clusters by ImageNet labels",
                     callback=self._on_naming_changed,
                     tooltip="Uses the network that made the embedding when "
                             "the data says which, otherwise SqueezeNet.")

        box = gui.vBox(self.controlArea, "Clusters")
        self.cluster_list = GroupList()
        self.cluster_model = self.cluster_list.model()
        self.cluster_list.groupsSelected.connect(self.select_clusters)
        box.layout().addWidget(self.cluster_list)
        self.info_label = gui.widgetLabel(box, "")
        self.info_label.setWordWrap(True)
        self.color_model = DomainModel(placeholder="Clusters",
                                       valid_types=DiscreteVariable)
        gui.comboBox(box, self, "color_var", label="Colour by:",
                     model=self.color_model, callback=self._show_colors)

        box = gui.vBox(self.controlArea, "Near-duplicates")
        gui.doubleSpin(box, self, "duplicate_threshold", 0.0, 0.5, 0.01,
                       label="Cosine distance below:", decimals=3,
                       callback=self._run, controlWidth=70)

        gui.auto_send(self.buttonsArea, self, "auto_commit")

        self.loader = ThumbnailLoader(self)
        self.tabs = QTabWidget(self)
        self.gallery = ThumbnailGallery(self.loader)
        self.gallery.placeholder = "No clusters"
        self.gallery.tooltip = self._tooltip
        self.gallery.selectionRequested.connect(self._on_selection_requested)
        self.map_view = ImageMap(self.loader)
        self.map_view.selectionRequested.connect(self._on_selection_requested)
        self.tabs.addTab(self.gallery, "Gallery")
        self.tabs.addTab(self.map_view, "Map")
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self.mainArea.layout().addWidget(self.tabs)
        self.Information.no_data()

    def sizeHint(self):
        return QSize(1000, 650)

    def _reset_results(self):
        self._cache = ClusteringCache()
        self.result: Optional[ClusteringResult] = None
        self.names: List[str] = []
        self._output: Optional[Table] = None
        self._new_data = False
        self._ready_seen = False

    @Inputs.embeddings
    def set_data(self, data: Optional[Table]):
        self.cancel()
        self.closeContext()
        self.Error.clear()
        self.Warning.clear()
        self.Information.clear()
        self.data = self.X = None
        self._reset_results()
        self._new_data = True
        self._show_clusters()
        self.map_view.set_map(None, reset=True)
        self.map_view.set_message("")
        if data is None:
            self.Information.no_data()
        else:
            try:
                X = embedding_matrix(data)
            except ValueError:
                self.Error.no_embedding()
            else:
                if len(data) < MIN_IMAGES:
                    self.Error.too_few_images(MIN_IMAGES, len(data))
                else:
                    self.data, self.X = data, X
        data = self.data
        # colour by the class if it is categorical, else by the clusters
        self.color_model.set_domain(None if data is None else data.domain)
        class_var = None if data is None else data.domain.class_var
        self.color_var = class_var if class_var in self.color_model else None
        self.openContext(data)
        column = None if data is None else find_image_column(data)
        if data is not None and column is None:
            self.Warning.no_image_column()
        self.paths = RowPaths(data, column)
        self.loader.set_paths(self.paths)
        self.selected = np.zeros(len(self.paths), dtype=bool)
        if data is not None:
            pending, self._pending_selection = self._pending_selection, None
            if pending and max(pending) < len(data):
                self.selected[pending] = True
        self.selection = np.flatnonzero(self.selected).tolist() or None
        self._update_selection_views()
        if data is None:
            self.commit.now()
        else:
            self._run()

    def _asked_clusters(self) -> Optional[int]:
        return None if self.auto_clusters else self.n_clusters

    def _run(self):
        """Show what is known and start a task for what is missing."""
        self.cancel()
        if self.data is None:
            return
        self.Error.clustering_failed.clear()
        known = self._cache.known(self.method, self._asked_clusters())
        naming = self.label_clusters and not known.naming_error \
            and find_image_column(self.data) is not None
        want_map = self.tabs.currentIndex() == self.MAP_TAB
        if known.result is not None:
            self._show(known)
        if not known.lacks(self.duplicate_threshold, naming, want_map):
            self._finish()
            return
        if want_map and known.map is None:
            self.map_view.set_message("Computing the map…")
        self._ready_seen = False
        self.start(run_clustering, self.X, self.method,
                   self._asked_clusters(), self.duplicate_threshold,
                   want_map, self.data if naming else None,
                   recorded_model(self.data) or NAMING_MODEL, known,
                   images=self.data if find_image_column(self.data)
                   is not None else None)

    def on_partial_result(self, partial):
        tag, pieces = partial
        if tag == "map":
            self.map_view.set_map(pieces.map)
            return
        self._cache.store(pieces, self._asked_clusters())
        self._show(pieces)
        if tag == "ready":
            self._ready_seen = True
            self._finish()

    def on_done(self, pieces: ClusteringPieces):
        self._cache.store(pieces, self._asked_clusters())
        if pieces.map is not None:
            self.map_view.set_message("")
            self.map_view.set_map(pieces.map)
        self._show(pieces)
        if not self._ready_seen:
            self._finish()

    def on_exception(self, ex: Exception):
        self.map_view.set_message("")
        if isinstance(ex, Cancelled):
            return
        self.result, self.names, self._output = None, [], None
        self._show_clusters()
        self.commit.now()
        if isinstance(ex, MemoryError):  # too many images for this machine
            self.Error.clustering_failed(str(ex) or type(ex).__name__)
        else:
            super().on_exception(ex)

    def on_user_error(self, ex: DeepImageError):
        self.Error.clustering_failed(str(ex))

    def _show(self, pieces: ClusteringPieces):
        """Show a clustering (and what else is known) in all views."""
        result = pieces.result
        if result is None:
            return
        changed = result is not self.result
        if changed:
            self.result = result
            self._output = None
        if self.auto_clusters and self.n_clusters != result.n_clusters \
                and result.n_clusters >= 2:
            self.n_clusters = result.n_clusters
        auto = pieces.auto or self._cache.auto.get(self.method)
        scores = dict(auto.scores) if auto is not None else {}
        scores.update(result.scores)
        self.silhouette_plot.set_scores(
            scores, result.n_clusters,
            auto.n_clusters if auto is not None else None)
        names = self._cluster_names()
        if names != self.names:
            self.names = names
            self._output = None
            changed = True
        if changed:
            self._show_clusters()

    def _finish(self):
        """Everything for the outputs is known: show messages, commit."""
        self.Warning.naming_failed.clear()
        if self.label_clusters and self._cache.naming_error:
            self.Warning.naming_failed(self._cache.naming_error)
        self.Information.duplicates_found.clear()
        if self._cache.duplicates:
            self.Information.duplicates_found(len(self._cache.duplicates))
        if self._new_data:
            self._new_data = False
            self.commit.now()
        else:
            self.commit.deferred()

    def _cluster_names(self) -> List[str]:
        if self.result is None:
            return []
        return cluster_names(self.result, self.label_clusters
                             and self._cache.probabilities or None)

    def _colors(self) -> List[QColor]:
        k = self.result.n_clusters if self.result is not None else 0
        return list(LimitedDiscretePalette(max(k, 1)).qcolors)[:k]

    def _show_clusters(self):
        """Fill the gallery, the cluster list and the map's colours."""
        result = self.result
        self._show_colors()
        if result is None:
            self.cluster_list.set_groups([])
            self.gallery.set_groups([])
            self.silhouette_plot.set_scores({}, None)
            self.info_label.setText("")
            return
        colors = self._colors()
        groups = []
        for cluster, (name, color) in enumerate(zip(self.names, colors)):
            rows = np.flatnonzero(result.labels == cluster)
            rows = rows[np.argsort(-result.silhouette[rows], kind="stable")]
            groups.append(Group(name, color, rows))
        self.cluster_list.set_groups(groups, [
            f"{name}: {text}" for name, text in cluster_summary(
                result, self.names)])
        self.gallery.set_groups(groups)
        self.info_label.setText(
            f"{len(result.labels)} images in {result.n_clusters} clusters; "
            f"mean silhouette {result.silhouette.mean():.2f}.")
        self._update_selection_views()

    def _show_colors(self):
        colour_views(self.map_view, self.gallery, self.data, self.color_var,
                     self.result and self.result.labels, self._colors())

    # --- controls

    def _on_method_changed(self):
        self.method = self.method_combo.currentData()
        self._run()

    def _on_clusters_changed(self):
        if not self.auto_clusters:
            self._run()

    def _on_auto_changed(self):
        self.clusters_spin.setEnabled(not self.auto_clusters)
        self._run()

    def set_clusters(self, n_clusters: Optional[int]):
        """Use `n_clusters` clusters, or choose automatically with None."""
        if n_clusters is not None:
            self.n_clusters = int(n_clusters)
        self.auto_clusters = n_clusters is None
        self.clusters_spin.setEnabled(not self.auto_clusters)
        self._run()

    def _on_naming_changed(self):
        self._cache.naming_error = None
        self._run()

    def _on_tab_changed(self, index: int):
        if index == self.MAP_TAB and self.data is not None \
                and self._cache.map is None:
            self._run()
        elif self._cache.map is not None:
            self.map_view.set_map(self._cache.map)

    # --- selection

    def _on_selection_requested(self, rows, mode: str):
        if self.data is None:
            return
        apply_selection(self.selected, rows, mode)
        self._selection_changed()

    def select_clusters(self, clusters: Sequence[int]):
        """Select all images of these clusters (numbered from 0)."""
        if self.result is None:
            return
        self.selected[:] = np.isin(self.result.labels, list(clusters))
        self._selection_changed()

    def select_rows(self, rows: Sequence[int]):
        """Select these rows of the data."""
        self._on_selection_requested(list(rows), "replace")

    def _selection_changed(self):
        self.selection = np.flatnonzero(self.selected).tolist() or None
        self._update_selection_views()
        self.commit.deferred()

    def _update_selection_views(self):
        for view in (self.gallery, self.map_view, self.cluster_list):
            view.set_selection(self.selected)

    # --- output

    def _tooltip(self, row: int) -> str:
        lines = [os.path.basename(self.paths[row] or "")]
        result = self.result
        if result is not None and row < len(result.labels):
            label = result.labels[row]
            lines += [self.names[label] if label < len(self.names) else "",
                      f"Silhouette: {result.silhouette[row]:.2f}"]
        return "<br/>".join(filter(None, lines))

    @gui.deferred
    def commit(self):
        data = selected = duplicates = None
        if self.data is not None and self.result is not None:
            if self._output is None:
                self._output = add_cluster_columns(self.data, self.result,
                                                   self.names)
            data = self._output
            if len(self.selected) == len(data) and self.selected.any():
                selected = data[self.selected]
            if self._cache.duplicates:
                duplicates = duplicates_table(self.data,
                                              self._cache.duplicates)
        self.Outputs.data.send(data)
        self.Outputs.selected_images.send(selected)
        self.Outputs.duplicates.send(duplicates)

    def send_report(self):
        self.report_items((
            ("Method", METHODS[self.method]),
            ("Number of clusters",
             "automatic (best mean silhouette)" if self.auto_clusters
             else str(self.n_clusters)),
            ("Near-duplicates below", f"{self.duplicate_threshold:.3f}"),
        ))
        if self.result is None:
            return
        self.report_items("Clusters", cluster_summary(self.result,
                                                      self.names))
        self.report_items("Summary", (
            ("Images", len(self.result.labels)),
            ("Mean silhouette", f"{self.result.silhouette.mean():.3f}"),
            ("Near-duplicate pairs", len(self._cache.duplicates or [])),
            ("Selected images", int(self.selected.sum())),
        ))

    def onDeleteWidget(self):
        self.shutdown()
        self.loader.shutdown()
        super().onDeleteWidget()


if __name__ == "__main__":  # pragma: no cover
    from orangecontrib.imageanalytics.import_images import ImportImages
    from orangecontrib.deepimage.demo import PHOTOS_DIR
    from orangecontrib.deepimage.embedding import ImageEmbedder
    WidgetPreview(OWImageClusters).run(
        ImageEmbedder("squeezenet")(ImportImages()(PHOTOS_DIR)[0])[0])
