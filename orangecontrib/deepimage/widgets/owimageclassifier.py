"""Image Classifier: train a deep image classifier by transfer learning.

A learner widget like Orange's own: it sends an
:class:`~orangecontrib.deepimage.classification.ImageClassifierLearner` at
once (for Test & Score) and, given data, trains a model off the GUI thread
(for Predictions, Confusion Matrix, Save Model, Explain Images) while live
loss and accuracy curves are drawn.

"Stop" ends training early and keeps the best model found so far (see
:mod:`.utils.training`, shared with Segmentation Trainer).
"""
import os
import threading
import warnings
from typing import Optional

import numpy as np

from AnyQt.QtCore import Qt
from AnyQt.QtWidgets import QFormLayout

from orangewidget.report import bool_str

from Orange.data import Table
from Orange.widgets import gui
from Orange.widgets.settings import Setting
from Orange.widgets.utils.concurrent import TaskState
from Orange.widgets.utils.owlearnerwidget import OWBaseLearner
from Orange.widgets.utils.widgetpreview import WidgetPreview
from Orange.widgets.widget import Msg

from orangecontrib.deepimage.backbones import BACKBONES, get_backbone
from orangecontrib.deepimage.classification import (
    AUGMENTATIONS, NO_CLASS, NO_IMAGES, ImageClassifierLearner,
    ImageClassifierModel, training_diagnosis)
from orangecontrib.deepimage.device import (
    DEVICE_NOT_DETECTED, known_device_description)
from orangecontrib.deepimage.errors import Cancelled
from orangecontrib.deepimage.images import find_image_column
from orangecontrib.deepimage.training import TrainingHooks
from orangecontrib.deepimage.widgets.utils.training import (
    EpochMetrics, StoppableTrainingMixin, TrainingRun)
from orangecontrib.deepimage.widgets.utils.trainingcurves import (
    TrainingCurves)

BACKBONE_KEYS = sorted(BACKBONES, key=lambda key: BACKBONES[key].order)

#: Plots: history key (validation: "val_" + key), axis title, name in text.
CURVES = (("loss", "Loss", "loss"), ("accuracy", "Accuracy", "accuracy"))


def run_training(learner: ImageClassifierLearner, data: Table,
                 state: TaskState, stop: Optional[threading.Event] = None
                 ) -> Optional[ImageClassifierModel]:
    """Train `learner` on `data` (runs in a worker thread).

    Each epoch's metrics are sent with ``state.set_partial_result`` as
    :class:`EpochMetrics`. Setting `stop` ends training after the current
    batch and returns the model with the best weights so far (or None at
    once when no training step ran yet: loading the network and embedding
    the images are abandoned); ``state``'s interruption raises
    :class:`~orangecontrib.deepimage.errors.Cancelled`.
    """
    run = TrainingRun(state, stop)
    training = threading.Event()  # set once Keras runs training steps
    status = [None]

    def progress(fraction, message=None):
        run.check_cancelled()
        if run.stop.is_set() and not training.is_set():
            raise Cancelled()  # TrainingRun.train gives None for it
        if message and message != status[0]:
            status[0] = message
            state.set_status(message)
        state.set_progress_value(100 * fraction)

    def training_step(_fraction):
        training.set()

    def on_epoch_end(epoch, metrics):
        training.set()
        state.set_partial_result(EpochMetrics(epoch, dict(metrics)))

    hooks = TrainingHooks(training_step, run.should_stop, on_epoch_end)
    return run.train(learner, data, hooks, "Loading the network…",
                     progress_callback=progress)


class OWImageClassifier(OWBaseLearner, StoppableTrainingMixin):
    name = "Image Classifier"
    description = "Train a deep image classifier by transfer learning from " \
                  "a pretrained network (on the GPU when there is one)."
    icon = "icons/ImageClassifier.svg"
    priority = 20
    keywords = "image classifier, transfer learning, fine-tuning, deep " \
               "learning, cnn, neural network"

    LEARNER = ImageClassifierLearner

    # What is wrong with the data goes to Orange's Error.data_error, with
    # the learner's own words, as in Orange's learner widgets.
    class Error(OWBaseLearner.Error):
        training_failed = Msg("{}")

    class Warning(OWBaseLearner.Warning):
        notes = Msg("{}")
        small_validation = Msg("{}")
        overfitting = Msg("{}")
        at_chance = Msg("{}")
        flips_change_meaning = Msg(
            "Augmentation mirrors the images: switch 'Mirror images' off if "
            "a mirrored image means something else (digits, letters, text).")

    class Information(OWBaseLearner.Information):
        needs_features = Msg(
            "Test & Score refuses data without features (\"Data has no "
            "features to learn from\"): connect Import Images → Deep "
            "Embedding → Test & Score, and this learner to Test & Score. "
            "Image Classifier reads the images themselves, so here the "
            "data may stay as it is.")
        stopped = Msg("Training was stopped after {} epoch(s); the model "
                      "has the best weights found so far.")
        stopped_before_training = Msg("Training was stopped before it "
                                      "began; there is no model.")

    settings_version = 1
    backbone: str = Setting("squeezenet")
    unfreeze: int = Setting(0)
    hidden_units: int = Setting(128)
    dropout: float = Setting(0.3)
    batch_norm: bool = Setting(True)
    augment: bool = Setting(False)
    augment_flips: bool = Setting(True)
    epochs: int = Setting(50)
    batch_size: int = Setting(32)
    learning_rate: float = Setting(0.001)
    validation_percent: int = Setting(20)
    early_stopping: bool = Setting(True)
    class_weights: bool = Setting(False)
    random_seed: int = Setting(0)

    want_main_area = True
    resizing_enabled = True

    def __init__(self):
        StoppableTrainingMixin.__init__(self)
        if self.backbone not in BACKBONES:
            self.backbone = "squeezenet"
        OWBaseLearner.__init__(self)

    # --- GUI ---------------------------------------------------------------

    def add_main_layout(self):
        # called from OWBaseLearner.__init__;
        # pylint: disable=attribute-defined-outside-init
        box = gui.vBox(self.controlArea, "Network")
        self.backbone_combo = gui.comboBox(box, self, None)
        for key in BACKBONE_KEYS:
            backbone = BACKBONES[key]
            self.backbone_combo.addItem(
                f"{backbone.name} ({backbone.availability()})", key)
            self.backbone_combo.setItemData(
                self.backbone_combo.count() - 1, backbone.description,
                Qt.ToolTipRole)
        self.backbone_combo.setCurrentIndex(BACKBONE_KEYS.index(self.backbone))
        self.backbone_combo.activated.connect(self._on_backbone_changed)

        form = self._form(box)
        self.unfreeze_spin = gui.spin(
            None, self, "unfreeze", 0, 200, callback=self.settings_changed,
            controlWidth=80, alignment=Qt.AlignRight,
            tooltip="How many of the network's top layers learn too; 0 "
                    "keeps the network as it is and trains only the new "
                    "layers on top (feature extraction, fast).")
        self.unfreeze_spin.setSpecialValueText("none")
        form.addRow("Fine-tune top layers:", self.unfreeze_spin)

        box = gui.vBox(self.controlArea, "New layers on top")
        form = self._form(box)
        spin = gui.spin(
            None, self, "hidden_units", 0, 4096, step=16,
            callback=self._on_hidden_units_changed, controlWidth=80,
            alignment=Qt.AlignRight,
            tooltip="Neurons in the hidden layer; 0 for none.")
        spin.setSpecialValueText("none")
        form.addRow("Hidden neurons:", spin)
        form.addRow("Dropout:", gui.doubleSpin(
            None, self, "dropout", 0, 0.9, step=0.05, decimals=2,
            callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignRight,
            tooltip="Share of neurons switched off at random while "
                    "training, against overfitting."))
        self.batch_norm_check = gui.checkBox(
            None, self, "batch_norm", "Batch normalisation",
            callback=self.settings_changed,
            tooltip="Normalise the hidden layer's outputs.")
        form.addRow(self.batch_norm_check)
        self.batch_norm_check.setEnabled(bool(self.hidden_units))

        box = gui.vBox(self.controlArea, "Training")
        form = self._form(box)
        form.addRow("Epochs:", gui.spin(
            None, self, "epochs", 1, 1000, callback=self.settings_changed,
            controlWidth=80, alignment=Qt.AlignRight,
            tooltip="Passes over the training images."))
        form.addRow("Batch size:", gui.spin(
            None, self, "batch_size", 1, 1024, callback=self.settings_changed,
            controlWidth=80, alignment=Qt.AlignRight,
            tooltip="Images per training step; lower it if memory runs out."))
        form.addRow("Learning rate:", gui.doubleSpin(
            None, self, "learning_rate", 0.00001, 1.0, step=0.0005,
            decimals=5, callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignRight,
            tooltip="Step size of the optimiser (Adam); fine-tuned layers "
                    "use a tenth of it."))
        spin = gui.spin(
            None, self, "validation_percent", 0, 50,
            callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignRight,
            tooltip="Share of images held out to pick the best epoch and "
                    "to stop early; 0 uses the training loss.")
        spin.setSuffix(" %")
        form.addRow("Validation images:", spin)
        form.addRow(gui.checkBox(
            None, self, "augment", "Augment images (flips, rotation, zoom, "
                                   "contrast)",
            callback=self._on_augment_changed,
            tooltip="Show the network altered copies of the images; "
                    "slower, as images are read from disk every epoch."))
        self.flips_check = gui.checkBox(
            None, self, "augment_flips", "Mirror images",
            callback=self._on_augment_changed,
            tooltip="Flip images left to right while augmenting; switch it "
                    "off where a mirrored image means something else "
                    "(digits, letters, text).")
        self.flips_check.setEnabled(self.augment)
        form.addRow("", self.flips_check)
        form.addRow(gui.checkBox(
            None, self, "early_stopping",
            "Stop early when validation stops improving",
            callback=self.settings_changed,
            tooltip="Stop after 5 epochs without improvement; the best "
                    "epoch's weights are kept in any case."))
        form.addRow(gui.checkBox(
            None, self, "class_weights", "Balance rare classes",
            callback=self.settings_changed,
            tooltip="Weigh classes inversely to how often they occur "
                    "(for imbalanced classes)."))
        form.addRow("Random seed:", gui.spin(
            None, self, "random_seed", 0, 2 ** 31 - 1,
            callback=self.settings_changed, controlWidth=80,
            alignment=Qt.AlignRight,
            tooltip="The same seed gives the same split and model."))

        box = gui.vBox(self.controlArea, "Device")
        # Asking TensorFlow would import it here, on the GUI thread: the
        # device is shown once a training has run.
        self.device_label = gui.widgetLabel(
            box, known_device_description() or DEVICE_NOT_DETECTED)
        self._show_augmentation_warning()

        self._setup_plots()

    @staticmethod
    def _form(box):
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignLeft)
        box.layout().addLayout(form)
        return form

    def _setup_plots(self):
        # pylint: disable=attribute-defined-outside-init
        self.training_curves = TrainingCurves(CURVES)
        self.mainArea.layout().addWidget(self.training_curves)
        # Its plots, curves ("loss", "val_loss", ...) and text.
        self.plots = self.training_curves.plots
        self.curves = self.training_curves.curves
        self.best_lines = self.training_curves.best_lines
        self.metrics_label = self.training_curves.metrics_label

    def add_bottom_buttons(self):
        self.add_stop_button(self.buttonsArea)
        # OWBaseLearner's apply is called directly (not through
        # gui.deferred) by OWBaseLearner itself, so it cannot be decorated
        # here; its warning about that is Orange's, not the user's.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=f"decorate {type(self).__name__}.apply "
                                  f"with @gui.deferred")
            super().add_bottom_buttons()

    # --- parameters --------------------------------------------------------

    def _on_backbone_changed(self):
        self.backbone = self.backbone_combo.currentData()
        self.settings_changed()

    def _on_augment_changed(self):
        self.flips_check.setEnabled(self.augment)
        self._show_augmentation_warning()
        self.settings_changed()

    def _show_augmentation_warning(self):
        self.Warning.flips_change_meaning(
            shown=self.augment and self.augment_flips)

    def _on_hidden_units_changed(self):
        self.batch_norm_check.setEnabled(bool(self.hidden_units))
        self.settings_changed()

    def settings_changed(self, *args, **kwargs):
        # The learner goes out at once (Test & Score needs no training);
        # training a model follows Apply / Apply Automatically. A running
        # training is for the old parameters: its model is not wanted.
        self.cancel()
        self.update_learner()
        self.model = None
        self.Warning.outdated_learner(shown=not self.auto_apply)
        self.apply_as(self._SOFT)

    def create_learner(self):
        return self.LEARNER(
            backbone=self.backbone, unfreeze=self.unfreeze,
            hidden_units=self.hidden_units, dropout=self.dropout,
            batch_norm=self.batch_norm, augment=self.augment,
            augmentations=self._augmentations(), epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            validation=self.validation_percent / 100,
            early_stopping=self.early_stopping,
            class_weights=self.class_weights, random_state=self.random_seed,
            preprocessors=self.preprocessors)

    def _augmentations(self):
        return tuple(name for name in AUGMENTATIONS
                     if name != "flip" or self.augment_flips)

    def get_learner_parameters(self):
        backbone = get_backbone(self.backbone)
        return (
            ("Network", backbone.name),
            ("Fine-tuned top layers",
             self.unfreeze or "none (feature extraction)"),
            ("Hidden neurons", self.hidden_units or "none"),
            ("Dropout", f"{self.dropout:.2f}"),
            ("Batch normalisation",
             bool_str(self.batch_norm and bool(self.hidden_units))),
            ("Augmentation", ", ".join(self._augmentations())
             if self.augment else bool_str(False)),
            ("Epochs", self.epochs),
            ("Batch size", self.batch_size),
            ("Learning rate", f"{self.learning_rate:g}"),
            ("Validation images", f"{self.validation_percent} %"),
            ("Early stopping", bool_str(self.early_stopping)),
            ("Balanced classes", bool_str(self.class_weights)),
            ("Random seed", self.random_seed))

    # --- data and training ---------------------------------------------------

    @OWBaseLearner.Inputs.data
    def set_data(self, data):
        super().set_data(data)
        # Orange's "Data has no target variable" does not say where a class
        # of images comes from.
        if data is not None and not data.domain.class_vars:
            self.Error.data_error(NO_CLASS)
        self.Information.needs_features(
            shown=data is not None and self.data is not None
            and not data.domain.attributes)

    def check_data(self):
        # As OWBaseLearner's, but the images are the features: a table
        # without any (straight from Import Images) is fine.
        self.valid_data = False
        self.Error.sparse_not_supported.clear()
        data = self.data
        if data is None or self.learner is None:
            return False
        self.Error.data_error.clear()
        reason = self.learner.incompatibility_reason(data.domain)
        if reason is None and find_image_column(data) is None:
            reason = NO_IMAGES
        if reason is not None:
            self.Error.data_error(reason)
            return False
        if not len(data):
            self.Error.data_error("Dataset is empty.")
            return False
        class_var = data.domain.class_var
        present = np.unique(data.Y[~np.isnan(data.Y)]).astype(int)
        if len(present) < 2:
            only = class_var.values[present[0]] if len(present) else "none"
            self.Error.data_error(
                f"All images are of a single class ('{only}'); at least two "
                f"classes are needed.")
            return False
        self.valid_data = True
        return True

    def update_model(self):
        self.cancel()
        self.show_fitting_failed(None)
        self.clear_training_messages()
        self.Warning.notes.clear()
        self._show_diagnosis({})
        self.model = None
        self.training_curves.clear()
        self._send_model()
        if self.check_data():
            self.start_training(run_training, self.learner, self.data)

    def on_partial_result(self, result: EpochMetrics):
        self.training_curves.add_epoch(result.epoch, result.metrics)

    def on_done(self, result: Optional[ImageClassifierModel]):
        # None: Stop came before there was a model.
        model = result
        if model is not None:
            model.name = self.effective_learner_name()
            model.instances = self.data
            if model.history:
                self.training_curves.set_history(model.history, best=True)
            if model.notes:
                self.Warning.notes("\n".join(model.notes))
        self.model = model
        self.show_if_stopped(model, len(self.training_curves.epochs))
        if model is not None and model.validation_size is not None:
            self._show_diagnosis(training_diagnosis(
                model.history, model.validation_size, model.majority))
        self._send_model()

    def _show_diagnosis(self, problems):
        for key in ("small_validation", "overfitting", "at_chance"):
            msg = getattr(self.Warning, key)
            if key in problems:
                msg(problems[key])
            else:
                msg.clear()

    def on_exception(self, ex: Exception):
        self.model = None
        self._send_model()
        super().on_exception(ex)

    def onDeleteWidget(self):
        self.shutdown()
        super().onDeleteWidget()

    # --- report ------------------------------------------------------------

    def send_report(self):
        super().send_report()
        self.report_items("Device", (
            ("Device", known_device_description() or DEVICE_NOT_DETECTED),))
        self.training_curves.report(self)

    @classmethod
    def migrate_settings(cls, settings, version):
        # Version 1 is the first; later versions migrate from here.
        pass


if __name__ == "__main__":  # pragma: no cover
    from orangecontrib.imageanalytics.import_images import ImportImages
    WidgetPreview(OWImageClassifier).run(
        ImportImages()(os.path.expanduser("~/Pictures"))[0])
