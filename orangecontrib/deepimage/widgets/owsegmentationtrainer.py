"""Segmentation Trainer: train a U-Net on images paired with masks.

The widget sends a
:class:`~orangecontrib.deepimage.segmentation.SegmentationLearner` at once
and, given data with an image and a mask column (e.g. from Segmentation
Data), trains a
:class:`~orangecontrib.deepimage.segmentation.SegmentationModel` off the
GUI thread. Each epoch the worker sends the metrics for the live curves and
a preview: a held-out image segmented by the network as it is at the end of
that epoch, drawn over the image next to its ground truth.

"Stop" ends training early and keeps the best model (see
:mod:`.utils.training`, shared with Image Classifier).
"""
import threading
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from AnyQt.QtCore import Qt
from AnyQt.QtWidgets import QFormLayout, QLabel

from orangewidget.report import bool_str

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Input, Msg, Output, OWWidget

from orangecontrib.deepimage.backbones import BACKBONES
from orangecontrib.deepimage.device import (
    DEVICE_NOT_DETECTED, known_device_description)
from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.images import (
    find_image_column, find_mask_column)
from orangecontrib.deepimage.segdata import INSTANCE_CLASSES, mask_info
from orangecontrib.deepimage.segmentation import (
    ENCODER_SKIPS, EpochPreview, SegmentationLearner, SegmentationModel,
    iou_and_dice)
from orangecontrib.deepimage.training import TrainingHooks
# Registers the summaries of learners and models on links.
from orangecontrib.deepimage.widgets.utils import (  # noqa: F401
    summaries)  # pylint: disable=unused-import
from orangecontrib.deepimage.widgets.utils.masks import (
    MaskView, class_colours, legend_html, overlay_mask, report_image_html,
    shrink, to_qimage)
from orangecontrib.deepimage.widgets.utils.training import (
    EpochMetrics, StoppableTrainingMixin, TrainingRun)
from orangecontrib.deepimage.widgets.utils.trainingcurves import (
    TrainingCurves)

#: (setting value, combo text); settings store the value, not the index.
ARCHITECTURES = [("unet", "U-Net"),
                 ("resunet", "ResUNet (U-Net with residual blocks)")]
NO_ENCODER = "none"
ENCODER_KEYS = [NO_ENCODER] + sorted(ENCODER_SKIPS,
                                     key=lambda key: BACKBONES[key].order)
LOSSES = [("dice+crossentropy", "Dice + cross-entropy"),
          ("crossentropy", "Cross-entropy"),
          ("dice", "Dice (for small objects)"),
          ("focal", "Focal (for rare classes)")]
LOSS_TIPS = {
    "dice+crossentropy": "A good default: pixel-wise accuracy and overlap.",
    "crossentropy": "Every pixel counts the same; large classes dominate.",
    "dice": "Overlap of each class with its ground truth; small objects "
            "count as much as large ones.",
    "focal": "Cross-entropy that focuses on pixels that are still wrong; "
             "for rare classes.",
}
#: Plots: history key, axis title, name in the text.
CURVES = (("loss", "Loss", "loss"),
          ("iou", "Mean IoU",
           "mean IoU of all classes, background included"))

#: Below this validation IoU of a class the model is not worth using.
POOR_IOU = 0.5
#: The preview is shown at most this large.
PREVIEW_SIDE = 384


@dataclass
class PreviewPicture:
    """A held-out image with its predicted and true masks drawn over it."""
    name: str
    prediction: np.ndarray  # (h, w, 3) uint8
    truth: np.ndarray  # (h, w, 3) uint8
    iou: float  # mean IoU over foreground classes (NaN when none is there)
    held_out: bool = True  # a validation image (else a training image)


@dataclass
class EpochResult(EpochMetrics):
    """One epoch's metrics and preview, sent as a partial result."""
    preview: Optional[PreviewPicture] = None


def preview_picture(preview: EpochPreview, n_classes: int
                    ) -> PreviewPicture:
    """Draw an epoch's preview (in the worker: plain numpy)."""
    colours = class_colours(n_classes)
    image = shrink(preview.image, PREVIEW_SIDE)
    truth = shrink(preview.truth, PREVIEW_SIDE, labels=True)
    labels = shrink(preview.labels, PREVIEW_SIDE, labels=True)
    scores = iou_and_dice(preview.truth, preview.labels, n_classes)["iou"][1:]
    iou = float(np.nanmean(scores)) if np.isfinite(scores).any() \
        else float("nan")
    return PreviewPicture(preview.name,
                          overlay_mask(image, labels, colours, 0.5),
                          overlay_mask(image, truth, colours, 0.5), iou,
                          preview.held_out)


def foreground_iou_name(names) -> str:
    """What the IoU of the foreground classes is called: "nucleus IoU",
    or "mean IoU of nucleus, cell" for several."""
    foreground = list(names)[1:]
    if len(foreground) == 1:
        return f"{foreground[0]} IoU"
    return f"mean IoU of {', '.join(foreground)}"


def poor_model_text(metrics, names, epochs_run: int, epochs: int
                    ) -> Optional[str]:
    """A warning when a foreground class's validation IoU is below
    :data:`POOR_IOU`, with what to try; None for a usable model."""
    if not metrics:
        return None
    poor = [(name, iou) for name, iou in zip(list(names)[1:],
                                             metrics["iou"][1:])
            if np.isfinite(iou) and iou < POOR_IOU]
    if not poor:
        return None
    scores = ", ".join(f"{name} IoU {iou:.2f}" for name, iou in poor)
    text = (f"The model is poor: {scores} on the validation images "
            f"({POOR_IOU:.2f} or more is usable).")
    if epochs_run < epochs:
        text += f" Training ended after {epochs_run} of {epochs} epochs."
    # Augmentation is no reason to give: since the batch normalisation
    # statistics are re-estimated after training, 12 epochs on the nuclei
    # tutorial give the same nucleus IoU with it as without (README,
    # Figures); few epochs are.
    text += (" Train for more epochs (on a small set without early "
             "stopping), or with more images.")
    return text


def class_names(data: Table) -> List[str]:
    """The classes a model trained on `data` has (as the learner names
    them: instance masks and unnamed classes give background / object)."""
    mask_column = find_mask_column(data)
    if mask_column is None:
        return list(INSTANCE_CLASSES)
    return mask_info(mask_column).model_classes


def run_training(learner: SegmentationLearner, data: Table,
                 state: TaskState, stop: Optional[threading.Event] = None
                 ) -> Optional[SegmentationModel]:
    """Train `learner` on `data` (runs in a worker thread).

    After each epoch an :class:`EpochResult` with a preview goes out with
    ``state.set_partial_result``. Setting `stop` ends training after the
    current batch and returns the model with the best weights so far (or
    None when no epoch ended); ``state``'s interruption raises
    :class:`~orangecontrib.deepimage.errors.Cancelled`.
    """
    run = TrainingRun(state, stop)
    n_classes = len(class_names(data))
    epochs_done = [0]

    def progress(fraction):
        run.check_cancelled()
        state.set_progress_value(100 * fraction)

    def on_epoch_end(epoch, logs):
        epochs_done[0] += 1
        metrics = dict(logs)
        preview = metrics.pop("preview", None)
        picture = preview_picture(preview, n_classes) \
            if preview is not None else None
        state.set_partial_result(EpochResult(epoch, metrics, picture))
        state.set_status(f"Training: epoch {epoch + 1} of {learner.epochs}")

    if run.stop.is_set():
        return None
    hooks = TrainingHooks(progress, run.should_stop, on_epoch_end)
    model = run.train(learner, data, hooks, "Preparing the network…",
                      preview=True)
    if run.stop.is_set() and not epochs_done[0]:
        return None
    return model


class OWSegmentationTrainer(OWWidget, StoppableTrainingMixin):
    name = "Segmentation Trainer"
    description = "Train a U-Net that segments images pixel by pixel, " \
                  "from images paired with masks (on the GPU when there " \
                  "is one)."
    icon = "icons/SegmentationTrainer.svg"
    priority = 110
    keywords = "segmentation trainer, semantic segmentation, u-net, unet, " \
               "resunet, masks, deep learning, train, learner"

    class Inputs:
        data = Input("Data", Table, default=True)

    class Outputs:
        learner = Output("Learner", SegmentationLearner)
        model = Output("Model", SegmentationModel)

    class Error(OWWidget.Error):
        no_image_column = Msg("The data has no image column.")
        no_mask_column = Msg("The data has no mask column: connect "
                             "Segmentation Data, which pairs images with "
                             "their masks.")
        no_rows = Msg("The data has no rows.")
        invalid_parameters = Msg("{}")
        training_failed = Msg("{}")

    class Warning(OWWidget.Warning):
        outdated = Msg("Press Apply to train with the changed parameters.")
        poor_model = Msg("{}")

    class Information(OWWidget.Information):
        stopped = Msg("Training was stopped after {} epoch(s); the model "
                      "has the best weights found so far.")
        stopped_before_training = Msg("Training was stopped before the "
                                      "first epoch ended; there is no "
                                      "model.")

    settings_version = 1
    architecture: str = Setting("unet")
    encoder: str = Setting(NO_ENCODER)
    depth: int = Setting(4)
    base_filters: int = Setting(16)
    loss: str = Setting("dice+crossentropy")
    epochs: int = Setting(30)
    batch_size: int = Setting(8)
    learning_rate: float = Setting(0.001)
    tile_size: int = Setting(128)
    augment: bool = Setting(True)
    validation_percent: int = Setting(20)
    early_stopping: bool = Setting(True)
    random_seed: int = Setting(0)
    auto_apply: bool = Setting(True)

    want_main_area = True
    resizing_enabled = True

    def __init__(self):
        OWWidget.__init__(self)
        StoppableTrainingMixin.__init__(self)
        self.data: Optional[Table] = None
        self.learner: Optional[SegmentationLearner] = None
        self.model: Optional[SegmentationModel] = None
        self.preview: Optional[PreviewPicture] = None
        self.preview_epoch = 0
        self._class_names: List[str] = []
        if self.architecture not in [key for key, _ in ARCHITECTURES]:
            self.architecture = "unet"
        if self.encoder not in ENCODER_KEYS:
            self.encoder = NO_ENCODER
        if self.loss not in [key for key, _ in LOSSES]:
            self.loss = "dice+crossentropy"
        self._setup_controls()
        self._setup_main_area()
        self._enable_controls()
        self.update_learner()

    # --- GUI -----------------------------------------------------------------

    def _setup_controls(self):
        box = gui.vBox(self.controlArea, "Network")
        form = self._form(box)
        self.architecture_combo = gui.comboBox(None, self, None)
        for key, text in ARCHITECTURES:
            self.architecture_combo.addItem(text, key)
        self.architecture_combo.setCurrentIndex(
            [key for key, _ in ARCHITECTURES].index(self.architecture))
        self.architecture_combo.activated.connect(
            self._on_architecture_changed)
        form.addRow("Architecture:", self.architecture_combo)

        self.encoder_combo = gui.comboBox(None, self, None)
        self.encoder_combo.setToolTip(
            "A network pretrained on photos as the U-Net's encoder (frozen); "
            "helps with few images. 'None' trains the whole U-Net.")
        for key in ENCODER_KEYS:
            if key == NO_ENCODER:
                self.encoder_combo.addItem("None (train from scratch)", key)
            else:
                backbone = BACKBONES[key]
                self.encoder_combo.addItem(
                    f"{backbone.name} ({backbone.availability()})", key)
        self.encoder_combo.setCurrentIndex(ENCODER_KEYS.index(self.encoder))
        self.encoder_combo.activated.connect(self._on_encoder_changed)
        form.addRow("Pretrained encoder:", self.encoder_combo)

        self.depth_spin = gui.spin(
            None, self, "depth", 2, 6, callback=self.settings_changed,
            controlWidth=80, alignment=Qt.AlignmentFlag.AlignRight,
            tooltip="How many times the U-Net halves the image; more levels "
                    "see more context. Tiles must be a multiple of "
                    "2 to this power.")
        form.addRow("Levels:", self.depth_spin)
        self.filters_spin = gui.spin(
            None, self, "base_filters", 4, 128, step=4,
            callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignmentFlag.AlignRight,
            tooltip="Filters of the first level, doubled at each level "
                    "down: the network's size.")
        form.addRow("Filters:", self.filters_spin)

        box = gui.vBox(self.controlArea, "Training")
        form = self._form(box)
        self.loss_combo = gui.comboBox(None, self, None)
        for key, text in LOSSES:
            self.loss_combo.addItem(text, key)
            self.loss_combo.setItemData(self.loss_combo.count() - 1,
                                        LOSS_TIPS[key],
                                        Qt.ItemDataRole.ToolTipRole)
        self.loss_combo.setCurrentIndex(
            [key for key, _ in LOSSES].index(self.loss))
        self.loss_combo.activated.connect(self._on_loss_changed)
        form.addRow("Loss:", self.loss_combo)
        form.addRow("Epochs:", gui.spin(
            None, self, "epochs", 1, 1000, callback=self.settings_changed,
            controlWidth=80, alignment=Qt.AlignmentFlag.AlignRight,
            tooltip="Passes over the training images."))
        form.addRow("Batch size:", gui.spin(
            None, self, "batch_size", 1, 256, callback=self.settings_changed,
            controlWidth=80, alignment=Qt.AlignmentFlag.AlignRight,
            tooltip="Tiles per training step; lower it if memory runs "
                    "out."))
        form.addRow("Learning rate:", gui.doubleSpin(
            None, self, "learning_rate", 0.00001, 1.0, step=0.0005,
            decimals=5, callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignmentFlag.AlignRight,
            tooltip="Step size of the optimiser (Adam)."))
        self.tile_spin = gui.spin(
            None, self, "tile_size", 16, 1024, step=16,
            callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignmentFlag.AlignRight,
            tooltip="Side of the square pieces the network is trained on; "
                    "images of any size are segmented in such tiles.")
        self.tile_spin.setSuffix(" px")
        form.addRow("Tile size:", self.tile_spin)
        spin = gui.spin(
            None, self, "validation_percent", 0, 50,
            callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignmentFlag.AlignRight,
            tooltip="Share of images held out to measure IoU, pick the best "
                    "epoch and show the preview; 0 uses the training loss.")
        spin.setSuffix(" %")
        form.addRow("Validation images:", spin)
        form.addRow(gui.checkBox(
            None, self, "augment", "Augment (flips, turns, brightness)",
            callback=self.settings_changed,
            tooltip="Flip and turn image and mask together and change the "
                    "image's brightness and contrast."))
        form.addRow(gui.checkBox(
            None, self, "early_stopping",
            "Stop early when validation stops improving",
            callback=self.settings_changed,
            tooltip="Stop after 8 epochs without improvement; the best "
                    "epoch's weights are kept in any case."))
        form.addRow("Random seed:", gui.spin(
            None, self, "random_seed", 0, 2 ** 31 - 1,
            callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignmentFlag.AlignRight,
            tooltip="The same seed gives the same split and model."))

        box = gui.vBox(self.controlArea, "Device")
        # Asking TensorFlow would import it here, on the GUI thread: the
        # device is shown once a training has run.
        self.device_label = gui.widgetLabel(
            box, known_device_description() or DEVICE_NOT_DETECTED)
        self._fit_combos()

        self.controlArea.layout().addStretch(1)
        self.add_stop_button(self.buttonsArea)
        self.apply_button = gui.auto_apply(self.buttonsArea, self,
                                           "auto_apply", commit=self.commit)

    def _fit_combos(self):
        # As wide as the longest item, so that no choice is cut ("None
        # (train from scratc"); Orange bounds combos to 25 characters.
        for combo in (self.architecture_combo, self.encoder_combo,
                      self.loss_combo):
            combo.setMaximumContentsLength(0)
            combo.setSizeAdjustPolicy(
                combo.SizeAdjustPolicy.AdjustToContents)

    @staticmethod
    def _form(box):
        form = QFormLayout()
        form.setFieldGrowthPolicy(
            QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        box.layout().addLayout(form)
        return form

    def _setup_main_area(self):
        row = gui.hBox(self.mainArea)
        self.curves = TrainingCurves(CURVES, plot_size=(220, 140))
        row.layout().addWidget(self.curves, 3)
        box = gui.vBox(row, "Preview")
        self.preview_view = MaskView()
        self.preview_view.setMinimumSize(180, 140)
        self.preview_view.clear("The prediction on a validation image "
                                "appears here after each epoch.")
        box.layout().addWidget(self.preview_view)
        self.preview_label = QLabel()
        self.preview_label.setWordWrap(True)
        box.layout().addWidget(self.preview_label)
        self.legend_label = QLabel()
        self.legend_label.setWordWrap(True)
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        box.layout().addWidget(self.legend_label)
        row.layout().setStretch(1, 2)
        self.scores_label = QLabel()
        self.scores_label.setTextFormat(Qt.TextFormat.RichText)
        self.scores_label.setWordWrap(True)
        self.mainArea.layout().addWidget(self.scores_label)

    # --- parameters ----------------------------------------------------------

    def _on_architecture_changed(self):
        self.architecture = self.architecture_combo.currentData()
        self.settings_changed()

    def _on_encoder_changed(self):
        self.encoder = self.encoder_combo.currentData()
        self._enable_controls()
        self.settings_changed()

    def _on_loss_changed(self):
        self.loss = self.loss_combo.currentData()
        self.settings_changed()

    def _enable_controls(self):
        scratch = self.encoder == NO_ENCODER
        self.architecture_combo.setEnabled(scratch)
        self.depth_spin.setEnabled(scratch)
        self.tile_spin.setEnabled(scratch)
        if scratch:
            self.tile_spin.setToolTip(
                "Side of the square pieces the network is trained on; "
                "images of any size are segmented in such tiles.")
        else:
            size = BACKBONES[self.encoder].input_size[0]
            self.tile_spin.setToolTip(f"{BACKBONES[self.encoder].name} "
                                      f"works on tiles of {size} px.")

    def settings_changed(self):
        """Send the new learner at once; the running training (for the old
        parameters) is cancelled and training follows Apply."""
        self.cancel()
        self.update_learner()
        self._set_model(None)
        self.Warning.outdated(shown=not self.auto_apply
                              and self.data is not None)
        self.commit.deferred()

    def create_learner(self) -> SegmentationLearner:
        """The learner for the current parameters (raises ValueError for
        parameters that do not fit together)."""
        return SegmentationLearner(
            architecture=self.architecture,
            encoder=None if self.encoder == NO_ENCODER else self.encoder,
            loss=self.loss, epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, tile_size=self.tile_size,
            augment=self.augment, validation=self.validation_percent / 100,
            random_state=self.random_seed, depth=self.depth,
            base_filters=self.base_filters,
            early_stopping=self.early_stopping)

    def update_learner(self):
        self.Error.invalid_parameters.clear()
        try:
            self.learner = self.create_learner()
        except InvalidInput as error:
            self.learner = None
            self.Error.invalid_parameters(str(error))
        self.Outputs.learner.send(self.learner)

    def learner_parameters(self):
        if self.encoder == NO_ENCODER:
            network = dict(ARCHITECTURES)[self.architecture]
            items = [("Network", f"{network}, {self.depth} levels, "
                                 f"{self.base_filters} filters"),
                     ("Tile size", f"{self.tile_size} px")]
        else:
            backbone = BACKBONES[self.encoder]
            items = [("Network", f"U-Net with a pretrained {backbone.name} "
                                 f"encoder"),
                     ("Tile size", f"{backbone.input_size[0]} px")]
        return items + [
            ("Loss", dict(LOSSES)[self.loss]),
            ("Epochs", self.epochs),
            ("Batch size", self.batch_size),
            ("Learning rate", f"{self.learning_rate:g}"),
            ("Validation images", f"{self.validation_percent} %"),
            ("Augmentation", bool_str(self.augment)),
            ("Early stopping", bool_str(self.early_stopping)),
            ("Random seed", self.random_seed)]

    # --- data and training ---------------------------------------------------

    @Inputs.data
    def set_data(self, data: Optional[Table]):
        self.cancel()
        self.data = data
        self.Error.no_image_column.clear()
        self.Error.no_mask_column.clear()
        self.Error.no_rows.clear()
        self._class_names = []
        if data is not None:
            if find_image_column(data) is None:
                self.Error.no_image_column()
            elif find_mask_column(data) is None:
                self.Error.no_mask_column()
            elif not len(data):
                self.Error.no_rows()
            else:
                self._class_names = class_names(data)
        self.Warning.outdated.clear()
        # New data trains at once, as in Orange's learner widgets.
        self.commit.now()

    def _data_ok(self) -> bool:
        return self.data is not None and not (
            self.Error.no_image_column.is_shown()
            or self.Error.no_mask_column.is_shown()
            or self.Error.no_rows.is_shown())

    @gui.deferred
    def commit(self):
        """Train a model on the data (in the background)."""
        self.cancel()
        self.clear_training_messages()
        self.Warning.outdated.clear()
        self.Warning.poor_model.clear()
        self._set_model(None)
        self.curves.clear()
        self._clear_preview()
        self.scores_label.setText("")
        if self.learner is None or not self._data_ok():
            return
        self.start_training(run_training, self.learner, self.data)

    def on_partial_result(self, result: EpochResult):
        self.curves.add_epoch(result.epoch, result.metrics)
        if result.preview is not None:
            self.preview = result.preview
            self.preview_epoch = result.epoch + 1
            self._show_preview()

    def on_done(self, result: Optional[SegmentationModel]):
        # None: Stop came before an epoch ended.
        if result is not None:
            if result.history:
                self.curves.set_history(result.history, best=True)
            self.scores_label.setText(self._scores_html(result))
        self.show_if_stopped(result, len(self.curves.epochs))
        poor = None if result is None else poor_model_text(
            result.validation_metrics, result.class_names,
            len(self.curves.epochs), self.learner.epochs
            if self.learner is not None else self.epochs)
        self.Warning.poor_model(poor, shown=poor is not None)
        self._set_model(result)

    def on_exception(self, ex: Exception):
        self._set_model(None)
        super().on_exception(ex)

    def _set_model(self, model: Optional[SegmentationModel]):
        self.model = model
        self.Outputs.model.send(model)

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    # --- preview and scores --------------------------------------------------

    def _clear_preview(self):
        self.preview = None
        self.preview_epoch = 0
        self.preview_view.clear("The prediction on a validation image "
                                "appears here after each epoch.")
        self.preview_label.setText("")
        self.legend_label.setText("")

    def _show_preview(self):
        preview = self.preview
        self.preview_view.set_images([
            (to_qimage(preview.prediction),
             f"Prediction (epoch {self.preview_epoch})"),
            (to_qimage(preview.truth), "Ground truth")])
        iou = f"{preview.iou:.3f}" if np.isfinite(preview.iou) else "–"
        held_out = "validation image" if preview.held_out \
            else "training image"
        names = self._class_names or list(INSTANCE_CLASSES)
        self.preview_label.setText(f"{preview.name} ({held_out}): "
                                   f"{foreground_iou_name(names)} {iou}")
        self.legend_label.setText(legend_html(names,
                                              class_colours(len(names))))

    @staticmethod
    def _scores_html(model: SegmentationModel) -> str:
        metrics = model.validation_metrics
        if not metrics:
            return ""
        rows = "".join(
            f"<tr><td>{name}</td><td align='right'>{_score(iou)}</td>"
            f"<td align='right'>{_score(dice)}</td></tr>"
            for name, iou, dice in zip(model.class_names, metrics["iou"],
                                       metrics["dice"]))
        each = ", ".join(f"{name} IoU {_score(iou)}" for name, iou in
                         zip(model.class_names, metrics["iou"]))
        return ("<b>Validation images</b> (whole images): "
                f"{each}"
                "<table cellspacing='6'><tr><th align='left'>Class</th>"
                f"<th>IoU</th><th>Dice</th></tr>{rows}</table>")

    # --- report --------------------------------------------------------------

    def send_report(self):
        self.report_items("Parameters", self.learner_parameters())
        self.report_items("Device", (
            ("Device", known_device_description() or DEVICE_NOT_DETECTED),))
        if self.data is not None:
            self.report_data("Data", self.data)
        self.curves.report(self)
        if self.model is not None and self.model.validation_metrics:
            metrics = self.model.validation_metrics
            self.report_items("Validation (per class)", [
                (name, f"IoU {_score(iou)}, Dice {_score(dice)}")
                for name, iou, dice in zip(self.model.class_names,
                                           metrics["iou"], metrics["dice"])])
        if self.preview is not None:
            self.report_raw(
                f"Preview: {self.preview_label.text()}",
                report_image_html((self.preview.prediction,
                                   self.preview.truth),
                                  alt="prediction and ground truth"))

    @classmethod
    def migrate_settings(cls, settings, version):
        # Version 1 is the first; later versions migrate from here.
        pass


def _score(value) -> str:
    return f"{value:.3f}" if value is not None and np.isfinite(value) \
        else "–"


if __name__ == "__main__":  # pragma: no cover
    import os
    from orangecontrib.deepimage.segdata import pair_folders
    TUTORIAL = os.path.join(os.path.dirname(__file__), "..", "tutorials",
                            "nuclei")
    WidgetPreview(OWSegmentationTrainer).run(
        pair_folders(os.path.join(TUTORIAL, "images"),
                     os.path.join(TUTORIAL, "masks"))[0])
