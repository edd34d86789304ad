"""Deep Embedding: embed images locally with a pretrained network."""
import os
import sqlite3
from types import SimpleNamespace
from typing import Optional

from AnyQt.QtCore import Qt
from AnyQt.QtWidgets import QFileDialog, QGridLayout, QLabel, QLineEdit

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import (
    ContextSetting, DomainContextHandler, Setting)
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.itemmodels import VariableListModel
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.backbones import BACKBONES, get_backbone
from orangecontrib.deepimage.cache import cache_file, clear_cache
from orangecontrib.deepimage.device import (
    DEVICE_NOT_DETECTED, device_description, known_device_description)
from orangecontrib.deepimage.embedding import shared_embedder
from orangecontrib.deepimage.errors import DeepImageError
from orangecontrib.deepimage.images import image_columns
from orangecontrib.deepimage.weights import WeightsUnavailable
from orangecontrib.deepimage.widgets.utils.messages import WrappedErrors
from orangecontrib.deepimage.widgets.utils.tasks import (
    TaskButtonsMixin, download_progress, task_progress)

MODEL_KEYS = sorted(BACKBONES, key=lambda key: BACKBONES[key].order)


#: The cache size limits offered, in megabytes.
CACHE_SIZES_MB = (100, 250, 500, 1024, 2048, 5120, 10240, 20480)


#: Percent of Deep Embedding's progress bar for downloading the weights,
#: when they must be downloaded first.
DOWNLOAD_SHARE = 20


def run_embedding(data: Table, column_name: str, model: str,
                  weights: Optional[str], layer: str, mirror: Optional[str],
                  state: TaskState, cache_size: Optional[int] = None
                  ) -> SimpleNamespace:
    """Embed the images of `data` (runs in a worker thread).

    `cache_size` is the size limit of the embedding cache in bytes (None:
    the default).

    Returns
    -------
    SimpleNamespace
        ``embeddings``, ``skipped`` (tables or None), ``n_skipped``,
        ``cache_error`` (why the cache was off, or None) and ``device``, the
        description of the device it ran on.
    """
    embedder = shared_embedder(model, weights, layer, mirror)
    if cache_size is not None:
        embedder.cache_size = cache_size
    state.set_status("Loading the network…")
    device = device_description()
    # One bar for the whole task: a download (when the weights are not on
    # disk yet) fills the first DOWNLOAD_SHARE percent, embedding the rest,
    # so the bar never goes back to 0 between the two.
    downloading = download_progress(state, 0, DOWNLOAD_SHARE)
    downloaded = []

    def on_download(done, total):
        downloaded.append(True)
        downloading(done, total)

    embedder.load_network(on_download)
    start = DOWNLOAD_SHARE if downloaded else 0
    state.set_status("Embedding…")
    state.set_progress_value(start)
    embedded, skipped, n_skipped = embedder.embed_table(
        data, column_name, callback=task_progress(state, start, 100))
    return SimpleNamespace(embeddings=embedded, skipped=skipped,
                           n_skipped=n_skipped,
                           cache_error=embedder.cache_error, device=device)


class OWDeepEmbedding(OWWidget, TaskButtonsMixin):
    name = "Deep Embedding"
    description = "Embed images with a pretrained deep network, locally " \
                  "(on the GPU when there is one)."
    icon = "icons/DeepEmbedding.svg"
    priority = 10
    keywords = "deep embedding, image embedding, squeezenet, inception, " \
               "vgg, resnet, features"

    class Inputs:
        images = Input("Images", Table)

    class Outputs:
        embeddings = Output("Embeddings", Table, default=True)
        skipped_images = Output("Skipped Images", Table)

    class Error(OWWidget.Error):
        no_image_column = Msg("The data has no image column (a text column "
                              "with image paths or URLs).")
        weights_unavailable = Msg("{}")
        embedding_failed = Msg("Embedding failed: {}")

    class Warning(OWWidget.Warning):
        images_skipped = Msg("{} image(s) could not be read; see the "
                             "'Skipped Images' output for the reasons.")
        cache_off = Msg("The embedding cache is off: {}")
        cache_not_cleared = Msg("The cache could not be cleared: {}")

    class Information(OWWidget.Information):
        all_skipped = Msg("No image could be embedded.")

    settingsHandler = DomainContextHandler()
    image_column = ContextSetting(None)
    model: str = Setting("squeezenet")
    layer: str = Setting("penultimate")
    weights_file: str = Setting("")
    mirror: str = Setting("")
    cache_size_mb: int = Setting(1024)
    auto_commit: bool = Setting(True)

    want_main_area = False
    resizing_enabled = False

    def __init__(self):
        OWWidget.__init__(self)
        TaskButtonsMixin.__init__(self)
        self.data: Optional[Table] = None
        if self.model not in BACKBONES:
            self.model = "squeezenet"

        box = gui.vBox(self.controlArea, "Images")
        self.column_model = VariableListModel(placeholder="(none)")
        gui.comboBox(box, self, "image_column", label="Image column:",
                     model=self.column_model, orientation=Qt.Horizontal,
                     callback=self.commit.deferred)

        box = gui.vBox(self.controlArea, "Model")
        self.model_combo = gui.comboBox(box, self, None)
        self.model_combo.activated.connect(self._on_model_changed)
        self._fill_models()
        self.layer_combo = gui.comboBox(
            box, self, None, label="Embedding:", orientation=Qt.Horizontal)
        self.layer_combo.activated.connect(self._on_layer_changed)
        self._fill_layers()
        self.model_info = gui.widgetLabel(box, "")
        self.model_info.setWordWrap(True)

        box = gui.vBox(self.controlArea, "Weights (optional)")
        grid = QGridLayout()
        gui.widgetBox(box, orientation=grid)
        self.weights_label = QLabel()
        self.weights_label.setWordWrap(True)
        grid.addWidget(QLabel("File:"), 0, 0)
        grid.addWidget(self.weights_label, 0, 1)
        grid.addWidget(gui.button(None, self, "Choose…",
                                  callback=self.choose_weights_file,
                                  autoDefault=False), 0, 2)
        grid.addWidget(gui.button(None, self, "Clear",
                                  callback=self.clear_weights_file,
                                  autoDefault=False), 0, 3)
        grid.addWidget(QLabel("Mirror:"), 1, 0)
        self.mirror_edit = QLineEdit(self.mirror)
        self.mirror_edit.setPlaceholderText("URL or folder with Keras weights")
        self.mirror_edit.editingFinished.connect(self._on_mirror_edited)
        grid.addWidget(self.mirror_edit, 1, 1, 1, 3)
        self._update_weights_label()

        box = gui.vBox(self.controlArea, "Device")
        # Asking TensorFlow would import it here, on the GUI thread: the
        # device is shown once a task has run.
        self.device_label = gui.widgetLabel(
            box, known_device_description() or DEVICE_NOT_DETECTED)

        box = gui.vBox(self.controlArea, "Cache")
        row = gui.hBox(box)
        self.cache_size_combo = gui.comboBox(
            row, self, None, label="Size limit:", orientation=Qt.Horizontal,
            items=[_megabytes(size) for size in CACHE_SIZES_MB],
            tooltip="Embeddings of images embedded before are kept on "
                    "disk up to this size; those used least recently go "
                    "first.")
        if self.cache_size_mb not in CACHE_SIZES_MB:
            stored = self.cache_size_mb
            self.cache_size_mb = min(CACHE_SIZES_MB,
                                     key=lambda size: abs(size - stored))
        self.cache_size_combo.setCurrentIndex(
            CACHE_SIZES_MB.index(self.cache_size_mb))
        self.cache_size_combo.activated.connect(self._on_cache_size_changed)
        self.clear_cache_button = gui.button(
            row, self, "Clear cache", callback=self.clear_cache,
            autoDefault=False)
        self.cache_label = gui.widgetLabel(box, "")
        self._update_cache_label()

        # The window has a fixed width: errors are repeated here, wrapped.
        self.wrapped_errors = WrappedErrors(self)
        self.controlArea.layout().addWidget(self.wrapped_errors)

        self.add_cancel_button(self.buttonsArea)
        gui.auto_apply(self.buttonsArea, self, "auto_commit")

    # --- model choice ----------------------------------------------------

    def _fill_models(self):
        self.model_combo.clear()
        for key in MODEL_KEYS:
            backbone = BACKBONES[key]
            weights = self.weights_file if key == self.model else None
            self.model_combo.addItem(
                f"{backbone.name} ({backbone.availability(weights)})", key)
            self.model_combo.setItemData(
                self.model_combo.count() - 1, backbone.description,
                Qt.ToolTipRole)
        self.model_combo.setCurrentIndex(MODEL_KEYS.index(self.model))

    def _fill_layers(self):
        backbone = get_backbone(self.model)
        if self.layer not in backbone.layer_names():
            self.layer = "penultimate"
        self.layer_combo.clear()
        for layer in backbone.layer_names():
            self.layer_combo.addItem(layer_label(backbone, layer), layer)
            self.layer_combo.setItemData(
                self.layer_combo.count() - 1, LAYER_TOOLTIPS[
                    layer == "penultimate"], Qt.ToolTipRole)
        self.layer_combo.setCurrentIndex(
            backbone.layer_names().index(self.layer))

    def _on_model_changed(self):
        self.model = self.model_combo.currentData()
        self.weights_file = ""
        self._fill_layers()
        self._update_weights_label()
        self.commit.deferred()

    def _on_layer_changed(self):
        self.layer = self.layer_combo.currentData()
        self.commit.deferred()

    def _on_mirror_edited(self):
        mirror = self.mirror_edit.text().strip()
        if mirror != self.mirror:
            self.mirror = mirror
            self.commit.deferred()

    def choose_weights_file(self):
        filename, _ = QFileDialog.getOpenFileName(
            self, "Weights file", os.path.expanduser("~"),
            "Weights (*.h5 *.keras *.pkl);;All files (*)")
        if filename:
            self.set_weights_file(filename)

    def set_weights_file(self, filename: str):
        """Use the weights in `filename` for the current model."""
        self.weights_file = filename
        self._update_weights_label()
        self.commit.deferred()

    def clear_weights_file(self):
        self.set_weights_file("")

    def _update_weights_label(self):
        backbone = get_backbone(self.model)
        if self.weights_file:
            text = os.path.basename(self.weights_file)
        elif backbone.is_bundled:
            text = "bundled ImageNet weights"
        else:
            text = f"ImageNet weights ({backbone.availability()})"
        self.weights_label.setText(text)
        self.model_info.setText(
            f"Input {backbone.input_size[1]}×{backbone.input_size[0]}; "
            f"{backbone.availability(self.weights_file)}.")
        self._fill_models_text()

    def _fill_models_text(self):
        for index, key in enumerate(MODEL_KEYS):
            backbone = BACKBONES[key]
            weights = self.weights_file if key == self.model else None
            self.model_combo.setItemText(
                index, f"{backbone.name} ({backbone.availability(weights)})")

    # --- the cache -------------------------------------------------------

    def _on_cache_size_changed(self, index: int):
        self.cache_size_mb = CACHE_SIZES_MB[index]

    def clear_cache(self):
        """Remove every embedding from the cache (of all models)."""
        self.Warning.cache_not_cleared.clear()
        try:
            clear_cache()
        except (sqlite3.Error, OSError) as error:
            self.Warning.cache_not_cleared(str(error))
        else:
            self.Warning.cache_off.clear()
        self._update_cache_label()

    def _update_cache_label(self):
        path = cache_file()
        size = os.path.getsize(path) if os.path.exists(path) else 0
        self.cache_label.setText(f"In use: {_megabytes(size / 2 ** 20)}")
        self.cache_label.setToolTip(path)

    # --- data and work ---------------------------------------------------

    @Inputs.images
    def set_data(self, data: Optional[Table]):
        self.closeContext()
        self.cancel()
        self.data = data
        self.Error.no_image_column.clear()
        columns = image_columns(data) if data is not None else []
        self.column_model[:] = columns
        self.image_column = columns[0] if columns else None
        if data is not None and not columns:
            self.Error.no_image_column()
        if data is not None:
            self.openContext(data)
        self.commit.now()

    @gui.deferred
    def commit(self):
        self.cancel()
        self.Error.weights_unavailable.clear()
        self.Error.embedding_failed.clear()
        self.Warning.images_skipped.clear()
        self.Warning.cache_off.clear()
        self.Information.all_skipped.clear()
        if self.data is None or self.image_column is None:
            self._send(None, None)
            return
        self.start(run_embedding, self.data, self.image_column.name,
                   self.model, self.weights_file or None, self.layer,
                   self.mirror or None,
                   cache_size=self.cache_size_mb * 2 ** 20)

    def _send(self, embeddings, skipped):
        self.Outputs.embeddings.send(embeddings)
        self.Outputs.skipped_images.send(skipped)

    def on_done(self, result: SimpleNamespace):
        self.device_label.setText(result.device)
        if result.n_skipped:
            self.Warning.images_skipped(result.n_skipped)
        if result.cache_error:
            self.Warning.cache_off(result.cache_error)
        self._update_cache_label()
        if result.embeddings is None:
            self.Information.all_skipped()
        self._send(result.embeddings, result.skipped)

    def on_exception(self, ex: Exception):
        self._send(None, None)
        super().on_exception(ex)

    def on_user_error(self, ex: DeepImageError):
        if isinstance(ex, WeightsUnavailable):
            self.Error.weights_unavailable(str(ex))
        else:
            self.Error.embedding_failed(str(ex) or type(ex).__name__)

    def on_partial_result(self, result):
        pass

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    def send_report(self):
        backbone = get_backbone(self.model)
        items = [("Model", backbone.name),
                 ("Embedding", layer_label(backbone, self.layer)),
                 ("Weights", self.weights_file or "ImageNet"),
                 ("Device",
                  known_device_description() or DEVICE_NOT_DETECTED),
                 ("Cache limit", _megabytes(self.cache_size_mb))]
        if self.image_column is not None:
            items.insert(0, ("Image column", self.image_column.name))
        self.report_items(items)
        if self.data is not None:
            self.report_data("Images", self.data)


#: Tooltips of the other layers [0] and of the last layer [1].
LAYER_TOOLTIPS = (
    "The image features before the network's last layer: shapes and "
    "textures, not tied to the photos the network learned from; often "
    "better for images unlike everyday photos (microscopy, drawings).",
    "What the network computes last, from which it names the things in "
    "everyday photos; good for photos.")


def layer_label(backbone, layer: str) -> str:
    """A layer's name in plain words, e.g. "last layer (1000 values)"; the
    setting keeps the layer's key ("penultimate", "fire9")."""
    size = backbone.embedding_size_of(layer)
    if layer == "penultimate":
        return f"last layer ({size} values)"
    return f"image features before the last layer ({size} values)"


def _megabytes(size: float) -> str:
    if size >= 1024:
        return f"{size / 1024:.3g} GB"
    return f"{size:.0f} MB" if size >= 1 or size == 0 else "< 1 MB"


if __name__ == "__main__":  # pragma: no cover
    from orangecontrib.imageanalytics.import_images import ImportImages
    WidgetPreview(OWDeepEmbedding).run(
        ImportImages()(os.path.expanduser("~/Pictures"))[0])
