"""Buttons that act on a widget's running task (Cancel, Stop).

Every widget that runs long work through
:class:`~Orange.widgets.utils.concurrent.ConcurrentWidgetMixin` had the
same few lines for its Cancel button: enable it when a task starts, disable
it when the task ends, fails or is cancelled. :class:`TaskButtonsMixin`
keeps them in one place.
"""
import logging
from typing import Callable, List, Optional

from AnyQt.QtWidgets import QPushButton, QWidget

from Orange.widgets import gui
from Orange.widgets.utils.concurrent import ConcurrentWidgetMixin, TaskState

from orangecontrib.deepimage.errors import (
    Cancelled, DeepImageError, raise_if_cancelled)

__all__ = ["TaskButtonsMixin", "task_progress", "download_progress"]

log = logging.getLogger(__name__)


class TaskButtonsMixin(ConcurrentWidgetMixin):
    """A ConcurrentWidgetMixin whose task buttons are enabled only while a
    task runs.

    Buttons made with :meth:`add_task_button` (such as the one from
    :meth:`add_cancel_button`) are enabled by :meth:`start` and disabled when
    the task is done, fails or is cancelled, so the widget's ``on_done`` and
    ``on_exception`` need not see to them. Mix it in after the widget class,
    as ConcurrentWidgetMixin, and call its ``__init__`` before making buttons.
    """

    def __init__(self):
        super().__init__()
        self.__task_buttons: List[QPushButton] = []
        self.cancel_button: Optional[QPushButton] = None

    def add_task_button(self, parent: QWidget, label: str,
                        callback: Callable[[], None],
                        tooltip: Optional[str] = None) -> QPushButton:
        """A button in `parent` that is enabled only while a task runs."""
        button = gui.button(parent, self, label, callback=callback,
                            autoDefault=False, tooltip=tooltip)
        button.setEnabled(self.task is not None)
        self.__task_buttons.append(button)
        return button

    def add_cancel_button(self, parent: QWidget) -> QPushButton:
        """Put a Cancel button (``self.cancel_button``) into `parent`."""
        self.cancel_button = self.add_task_button(parent, "Cancel",
                                                  self.cancel)
        return self.cancel_button

    def _enable_task_buttons(self, enabled: bool):
        for button in self.__task_buttons:
            button.setEnabled(enabled)

    def start(self, task, *args, **kwargs):
        super().start(task, *args, **kwargs)
        self._enable_task_buttons(True)

    def cancel(self):
        """Cancel the running task and discard its result."""
        super().cancel()
        self._enable_task_buttons(False)

    def _on_task_done(self, future):
        # ConcurrentWidgetMixin's own hook for what follows every task
        # (it finishes the progress bar there); on_done and on_exception
        # are the widget's.
        self._enable_task_buttons(False)
        try:
            super()._on_task_done(future)
        except BaseException:
            # on_exception raised an unexpected error again, for Orange's
            # error reporting; ConcurrentWidgetMixin's clean-up after it
            # was skipped: the widget is ready for new work all the same.
            self.progressBarFinished()
            self.setInvalidated(False)
            self.setStatusMessage("")
            raise

    def on_exception(self, ex: Exception):
        """What every task's failure does.

        A cancelled task shows nothing; a :class:`DeepImageError` (a problem
        the user can act on) goes to :meth:`on_user_error`, which the widget
        overrides to show it as its own message; anything else is logged
        and raised again, so that Orange's error reporting shows it with its
        traceback (as Orange's own widgets do).
        """
        if isinstance(ex, Cancelled):
            return
        if isinstance(ex, DeepImageError):
            self.on_user_error(ex)
            return
        log.error("%s failed", type(self).__name__,
                  exc_info=(type(ex), ex, ex.__traceback__))
        raise ex

    def on_user_error(self, ex: DeepImageError):
        """Show `ex`, a problem the user can act on (override this)."""
        self.error(str(ex))


def task_progress(state: TaskState, start: float = 0.0, end: float = 100.0
                  ) -> Callable[[float], None]:
    """A ``callback(fraction)`` for the core's long functions.

    It raises :class:`~orangecontrib.deepimage.errors.Cancelled` when the
    task was cancelled, and otherwise shows `fraction` (0 to 1) of the work
    as progress between `start` and `end` percent, so that phases of one
    task can share the bar.
    """
    def progress(fraction: float):
        raise_if_cancelled(state)
        state.set_progress_value(start + (end - start) * fraction)
    return progress


def download_progress(state: TaskState, start: float = 0.0,
                      end: float = 100.0
                      ) -> Callable[[int, Optional[int]], None]:
    """A ``progress(bytes_done, bytes_total)`` for weight downloads that
    shows the megabytes in the status line and honours Cancel.

    When the size is known, the bytes done show as progress between `start`
    and `end` percent, so that a download can be the first phase of a task
    whose bar then goes on from `end` (see :func:`task_progress`).
    """
    megabyte = 2 ** 20

    def progress(done: int, total: Optional[int]):
        raise_if_cancelled(state)
        size = f" of {total / megabyte:.0f}" if total else ""
        state.set_status(f"Downloading weights: "
                         f"{done / megabyte:.0f}{size} MB")
        if total:
            state.set_progress_value(
                start + (end - start) * min(done / total, 1.0))
    return progress
