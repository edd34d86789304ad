"""A second lane of work for a widget: short tasks that answer a click.

A widget's :class:`~Orange.widgets.utils.concurrent.ConcurrentWidgetMixin`
runs one task at a time, and starting another cancels it. Long work
(embedding all images, a model's predictions) has that lane, with its
progress bar and Cancel button; a click that asks for a GrabCut or the
superpixels of one image must not cancel it, nor wait for it.
:class:`QuickTasks` runs such short tasks in a thread of its own, one at a
time, in the order asked::

    self.quick = QuickTasks(self, on_user_error=self.show_error)
    self.quick.start(run_box, pixels, box, done=self._on_box)
    self.quick.start(run_preview, pixels, done=self._show, replace=True)

A task that makes an edit (a box, a click) is never dropped for a later
one; a task started with ``replace=True`` (a live preview) is: a newer
request takes the place of a waiting or running one, as only the answer
to the latest is wanted. The runner is a module-level ``run_…(…, state)``
function as for ConcurrentWidgetMixin; ``done(result)`` runs on the GUI
thread. Failures go as in :class:`~.tasks.TaskButtonsMixin`: Cancelled is
dropped, a :class:`~orangecontrib.deepimage.errors.DeepImageError` goes to
`on_user_error`, anything else is raised again for Orange's error
reporting.
"""
import logging
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from AnyQt.QtCore import QObject, QTimer, pyqtSignal as Signal

from Orange.widgets.utils.concurrent import ConcurrentMixin

from orangecontrib.deepimage.errors import Cancelled, DeepImageError

__all__ = ["QuickTasks"]

log = logging.getLogger(__name__)


@dataclass
class _Job:
    task: Callable
    args: tuple
    kwargs: dict
    done: Callable[[Any], None]
    description: str
    replace: bool


class QuickTasks(QObject, ConcurrentMixin):
    """Short tasks in their own thread, one after another.

    Signals
    -------
    busyChanged(bool)
        A task started (True) or none is running or waiting any more
        (False).
    """
    busyChanged = Signal(bool)

    def __init__(self, parent: QObject,
                 on_user_error: Callable[[DeepImageError], None]):
        QObject.__init__(self, parent)
        ConcurrentMixin.__init__(self)
        self._on_user_error = on_user_error
        self._running: Optional[_Job] = None
        self._waiting: List[_Job] = []

    def start(self, task: Callable, *args, done: Callable[[Any], None],
              description: str = "", replace: bool = False, **kwargs):
        """Run ``task(*args, state, **kwargs)`` after the tasks asked
        before; call ``done(result)`` on the GUI thread when it ends. With
        `replace`, it takes the place of a waiting or running task that was
        started with `replace` too."""
        job = _Job(task, args, kwargs, done, description, replace)
        if replace:
            self._waiting = [old for old in self._waiting if not old.replace]
        if self._running is not None and self._running.replace:
            super().cancel()  # a preview nobody waits for any more
            self._running = None
        if self._running is None:
            self._run(job)
        else:
            self._waiting.append(job)

    def _run(self, job: _Job):
        self._running = job
        super().start(job.task, *job.args, **job.kwargs)
        self.busyChanged.emit(True)

    def _next(self):
        if self._running is None and self._waiting:
            self._run(self._waiting.pop(0))
        elif self._running is None:
            self.busyChanged.emit(False)

    def cancel(self):
        """Drop the running and the waiting tasks."""
        super().cancel()
        self._running = None
        self._waiting = []
        self.busyChanged.emit(False)

    def shutdown(self):
        """Drop the waiting tasks, wait for the running one to end."""
        self._waiting = []
        super().shutdown()
        self._running = None

    def is_busy(self) -> bool:
        return self._running is not None or bool(self._waiting)

    def on_partial_result(self, result: Any) -> None:
        pass

    def on_done(self, result: Any) -> None:
        job, self._running = self._running, None
        # (ConcurrentMixin forbids starting a task from here)
        QTimer.singleShot(0, self._next)
        if job is not None:
            job.done(result)

    def on_exception(self, ex: Exception):
        job, self._running = self._running, None
        QTimer.singleShot(0, self._next)
        if isinstance(ex, Cancelled):
            return
        if isinstance(ex, DeepImageError):
            self._on_user_error(ex)
            return
        log.error("%s failed", job.description if job else "a quick task",
                  exc_info=(type(ex), ex, ex.__traceback__))
        raise ex
