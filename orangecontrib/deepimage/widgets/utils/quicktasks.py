"""A second lane of work for a widget: short tasks that answer a click.

A widget's :class:`~Orange.widgets.utils.concurrent.ConcurrentWidgetMixin`
runs one task at a time, and starting another cancels it. Long work
(embedding all images, a model's predictions) has that lane, with its
progress bar and Cancel button; a click that asks for a GrabCut or the
superpixels of one image must not cancel it, nor wait for it.
:class:`QuickTasks` runs such short tasks in a thread of its own, one at a
time, where each new request replaces the one before (only the answer to
the latest click is wanted)::

    self.quick = QuickTasks(self, on_user_error=self.show_error)
    self.quick.start(run_box, pixels, box, done=self._on_box)

The runner is a module-level ``run_…(…, state)`` function as for
ConcurrentWidgetMixin; ``done(result)`` runs on the GUI thread. Failures go
as in :class:`~.tasks.TaskButtonsMixin`: Cancelled is dropped, a
:class:`~orangecontrib.deepimage.errors.DeepImageError` goes to
`on_user_error`, anything else is raised again for Orange's error
reporting.
"""
import logging
from typing import Any, Callable, Optional

from AnyQt.QtCore import QObject, pyqtSignal as Signal

from Orange.widgets.utils.concurrent import ConcurrentMixin

from orangecontrib.deepimage.errors import Cancelled, DeepImageError

__all__ = ["QuickTasks"]

log = logging.getLogger(__name__)


class QuickTasks(QObject, ConcurrentMixin):
    """Short tasks in their own thread; a new one replaces the running one.

    Signals
    -------
    busyChanged(bool)
        A task started (True) or none is running any more (False).
    """
    busyChanged = Signal(bool)

    def __init__(self, parent: QObject,
                 on_user_error: Callable[[DeepImageError], None]):
        QObject.__init__(self, parent)
        ConcurrentMixin.__init__(self)
        self._on_user_error = on_user_error
        self._done: Optional[Callable[[Any], None]] = None
        self.description = ""

    def start(self, task: Callable, *args, done: Callable[[Any], None],
              description: str = "", **kwargs):
        """Run ``task(*args, state, **kwargs)``; call ``done(result)`` on the
        GUI thread when it ends, unless another task replaced it."""
        self._done = done
        self.description = description
        super().start(task, *args, **kwargs)
        self.busyChanged.emit(True)

    def cancel(self):
        super().cancel()
        self._done = None
        self.busyChanged.emit(False)

    def is_busy(self) -> bool:
        return self.task is not None

    def on_partial_result(self, result: Any) -> None:
        pass

    def on_done(self, result: Any) -> None:
        done, self._done = self._done, None
        self.busyChanged.emit(False)
        if done is not None:
            done(result)

    def on_exception(self, ex: Exception):
        self._done = None
        self.busyChanged.emit(False)
        if isinstance(ex, Cancelled):
            return
        if isinstance(ex, DeepImageError):
            self._on_user_error(ex)
            return
        log.error("%s failed", self.description or "a quick task",
                  exc_info=(type(ex), ex, ex.__traceback__))
        raise ex
