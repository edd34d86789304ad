"""Training that a Stop button ends early, shared by Image Classifier and
Segmentation Trainer.

"Stop" ends training early and keeps the best model found so far: it sets an
event that the training hooks read, so Keras stops after the current batch,
restores the best epoch's weights and the task finishes normally. The
mixin's real cancel (which discards the result) is used only when new data
or parameters make the running training pointless.

* :class:`StoppableTrainingMixin`, the widget's side: the Stop button, the
  event, and the messages for a stopped or failed training;
* :class:`TrainingRun`, the worker's side: what a module-level runner
  ``run_training(learner, data, state, stop=None)`` needs to honour Stop and
  Cancel and to train a copy of the learner;
* :class:`EpochMetrics`, the partial result sent after each epoch.

Cancel raises :class:`~orangecontrib.deepimage.errors.Cancelled`, as in
every task. Stop before training gave a model ends the runner with None
(there is no model), which the widget's ``on_done`` shows with
:meth:`StoppableTrainingMixin.show_if_stopped`.
"""
import copy
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from AnyQt.QtWidgets import QPushButton, QWidget

from Orange.data import Table
from Orange.widgets.utils.concurrent import TaskState

from orangecontrib.deepimage.device import (
    DEVICE_NOT_DETECTED, device_description, known_device_description)
from orangecontrib.deepimage.errors import (
    Cancelled, DeepImageError, raise_if_cancelled)
from orangecontrib.deepimage.training import TrainingHooks
from orangecontrib.deepimage.widgets.utils.tasks import TaskButtonsMixin

__all__ = ["EpochMetrics", "TrainingRun", "StoppableTrainingMixin"]


@dataclass
class EpochMetrics:
    """One epoch's metrics, sent from the worker as a partial result."""
    epoch: int
    metrics: Dict[str, float]


class TrainingRun:
    """The worker's side of a training that Stop and Cancel can end.

    Parameters
    ----------
    state : TaskState
        Its interruption (Cancel) raises
        :class:`~orangecontrib.deepimage.errors.Cancelled`.
    stop : threading.Event, optional
        Set by Stop: training ends after the current batch and keeps the
        best weights so far.
    """

    def __init__(self, state: TaskState,
                 stop: Optional[threading.Event] = None):
        self.state = state
        self.stop = stop or threading.Event()

    def check_cancelled(self):
        """Raise :class:`~orangecontrib.deepimage.errors.Cancelled` if the
        task was cancelled."""
        raise_if_cancelled(self.state)

    def stopped_before_training(self) -> bool:
        """Stop (not Cancel) was pressed: the caller ends without a model."""
        return self.stop.is_set() and \
            not self.state.is_interruption_requested()

    def should_stop(self) -> bool:
        """The hook that ends training after the current batch."""
        return self.stop.is_set() or self.state.is_interruption_requested()

    def train(self, learner, data: Table, hooks: TrainingHooks, status: str,
              progress_callback: Optional[Callable] = None, **attributes
              ) -> Any:
        """Train a copy of `learner` with `hooks` and return the model.

        The learner on the widget's output stays as it is; `attributes`
        (e.g. ``preview=True``) are set on the copy only. `status` is shown
        while the network is prepared. Returns None when Stop ended the
        work before there was a model (a hook raised
        :class:`~orangecontrib.deepimage.errors.Cancelled` for it).
        """
        learner = copy.copy(learner)
        learner.hooks = hooks
        for name, value in attributes.items():
            setattr(learner, name, value)
        self.state.set_status(status)
        device_description()  # detected here, off the GUI thread
        try:
            model = learner(data, progress_callback=progress_callback)
        except Cancelled:
            if self.stopped_before_training():
                return None
            raise
        self.check_cancelled()
        return model


class StoppableTrainingMixin(TaskButtonsMixin):
    """A widget that trains off the GUI thread and has a Stop button.

    The widget calls :meth:`add_stop_button` where its buttons go and
    :meth:`start_training` to train; its runner takes
    ``(*args, state, stop=event)`` and returns the model, or None when Stop
    came before there was one. The widget declares the messages
    ``Information.stopped`` (with the number of epochs),
    ``Information.stopped_before_training`` and ``Error.training_failed``
    (where :meth:`on_user_error` shows problems the user can act on), in
    its own words. Its ``device_label`` shows the device once a training
    ran.
    """

    def __init__(self):
        super().__init__()
        self._stop_event = threading.Event()
        self.stop_button: Optional[QPushButton] = None

    def add_stop_button(self, parent: QWidget) -> QPushButton:
        """Put the Stop button (``self.stop_button``) into `parent`."""
        self.stop_button = self.add_task_button(
            parent, "Stop", self.stop_training,
            tooltip="Stop training and keep the best model found so far.")
        return self.stop_button

    def start_training(self, runner: Callable, *args):
        """Run ``runner(*args, state, stop=event)`` with a new stop event."""
        self._stop_event = threading.Event()
        self.start(runner, *args, stop=self._stop_event)

    def stop_training(self):
        """Stop training; the model with the best weights so far is sent."""
        if self.task is not None:
            self._stop_event.set()
            self.stop_button.setEnabled(False)
            self.setStatusMessage("Stopping…")

    def clear_training_messages(self):
        """Clear what the last training's end showed."""
        self.Error.training_failed.clear()
        self.Information.stopped.clear()
        self.Information.stopped_before_training.clear()

    def show_if_stopped(self, model, n_epochs: int):
        """At the end of training: say that Stop ended it after `n_epochs`,
        or before there was a `model` (None)."""
        self.show_device()
        if model is None:
            self.Information.stopped_before_training()
        elif self._stop_event.is_set():
            self.Information.stopped(n_epochs)

    def show_device(self):
        """Show the device training ran on (known once it ran)."""
        self.device_label.setText(known_device_description()
                                  or DEVICE_NOT_DETECTED)

    def on_exception(self, ex: Exception):
        if not isinstance(ex, Cancelled):
            self.show_device()
        super().on_exception(ex)

    def on_user_error(self, ex: DeepImageError):
        self.Error.training_failed(str(ex) or type(ex).__name__)

    def shutdown(self):
        # Stop first, so that Keras ends soon and the wait is short.
        self._stop_event.set()
        super().shutdown()
