"""Buttons that act on a widget's running task (Cancel, Stop).

Every widget that runs long work through
:class:`~Orange.widgets.utils.concurrent.ConcurrentWidgetMixin` had the
same few lines for its Cancel button: enable it when a task starts, disable
it when the task ends, fails or is cancelled. :class:`TaskButtonsMixin`
keeps them in one place.
"""
from typing import Callable, List, Optional

from AnyQt.QtWidgets import QPushButton, QWidget

from Orange.widgets import gui
from Orange.widgets.utils.concurrent import ConcurrentWidgetMixin

__all__ = ["TaskButtonsMixin"]


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
        super()._on_task_done(future)
