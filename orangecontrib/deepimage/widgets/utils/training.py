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
"""
import copy
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from AnyQt.QtWidgets import QPushButton, QWidget

from Orange.data import Table
from Orange.widgets.utils.concurrent import TaskState

from orangecontrib.deepimage.training import TrainingError, TrainingHooks
from orangecontrib.deepimage.weights import WeightsUnavailable
from orangecontrib.deepimage.widgets.utils.tasks import TaskButtonsMixin

__all__ = ["TrainingCancelled", "StoppedBeforeTraining", "EpochMetrics",
           "TrainingRun", "StoppableTrainingMixin", "USER_ERRORS"]

#: Exceptions whose text tells the user what to change (shown as it is).
USER_ERRORS = (TrainingError, ValueError, WeightsUnavailable, OSError)


class TrainingCancelled(Exception):
    """The task was cancelled; its result is not wanted."""


class StoppedBeforeTraining(Exception):
    """Stop was pressed before training gave a model: there is none."""


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
        Its interruption (Cancel) raises :class:`TrainingCancelled`.
    stop : threading.Event, optional
        Set by Stop: training ends after the current batch and keeps the
        best weights so far.
    """

    def __init__(self, state: TaskState,
                 stop: Optional[threading.Event] = None):
        self.state = state
        self.stop = stop or threading.Event()

    def check_cancelled(self):
        """Raise :class:`TrainingCancelled` if the task was cancelled."""
        if self.state.is_interruption_requested():
            raise TrainingCancelled()

    def should_stop(self) -> bool:
        """The hook that ends training after the current batch."""
        return self.stop.is_set() or self.state.is_interruption_requested()

    def train(self, learner, data: Table, hooks: TrainingHooks, status: str,
              progress_callback: Optional[Callable] = None, **attributes
              ) -> Any:
        """Train a copy of `learner` with `hooks` and return the model.

        The learner on the widget's output stays as it is; `attributes`
        (e.g. ``preview=True``) are set on the copy only. `status` is shown
        while the network is prepared.
        """
        learner = copy.copy(learner)
        learner.hooks = hooks
        for name, value in attributes.items():
            setattr(learner, name, value)
        self.state.set_status(status)
        model = learner(data, progress_callback=progress_callback)
        self.check_cancelled()
        return model


class StoppableTrainingMixin(TaskButtonsMixin):
    """A widget that trains off the GUI thread and has a Stop button.

    The widget calls :meth:`add_stop_button` where its buttons go and
    :meth:`start_training` to train; its runner takes
    ``(*args, state, stop=event)``. The widget declares the messages
    ``Information.stopped`` (with the number of epochs),
    ``Information.stopped_before_training`` and ``Error.training_failed``,
    in its own words.
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

    def show_if_stopped(self, n_epochs: int):
        """On a model: say that Stop ended training after `n_epochs`."""
        if self._stop_event.is_set():
            self.Information.stopped(n_epochs)

    def show_training_exception(self, ex: Exception) -> bool:
        """Show how training ended with `ex`; False if it is unexpected.

        Cancelling shows nothing, Stop before a model was there shows the
        information, and errors the user can act on their text; what is
        left is for the widget to show.
        """
        if isinstance(ex, TrainingCancelled):
            return True
        if isinstance(ex, StoppedBeforeTraining):
            self.Information.stopped_before_training()
        elif isinstance(ex, USER_ERRORS):
            self.Error.training_failed(str(ex) or type(ex).__name__)
        else:
            return False
        return True

    def shutdown(self):
        # Stop first, so that Keras ends soon and the wait is short.
        self._stop_event.set()
        super().shutdown()
