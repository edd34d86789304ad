"""The exceptions of the add-on's core.

Two kinds of failure reach a widget from a worker thread:

* a problem the user can act on: a :class:`DeepImageError`, whose text says
  what is wrong and what to do. Widgets show exactly these as their
  messages;
* anything else, which is a bug or a fault of the machine: widgets let it
  reach Orange's error reporting, with its traceback.

:class:`Cancelled` is neither: the user asked for the work to end, and its
result is not wanted.

The subclasses also derive from the built-in exception that scripts would
catch for the same problem (``ValueError`` for bad input, ``OSError`` for a
folder that cannot be written), so ``except ValueError`` in a script still
works.
"""

__all__ = ["DeepImageError", "InvalidInput", "WeightsUnavailable",
           "UnwritableFolder", "TrainingError", "Cancelled",
           "raise_if_cancelled"]


class DeepImageError(Exception):
    """A problem the user can act on; the text says what to do."""


class InvalidInput(DeepImageError, ValueError):
    """The data, a setting or an argument cannot be used as it is."""


class WeightsUnavailable(DeepImageError, RuntimeError):
    """The weights a model needs are not here and could not be fetched."""


class UnwritableFolder(DeepImageError, OSError):
    """A folder that results go to is missing, read-only or full."""


class TrainingError(DeepImageError, RuntimeError):
    """Training failed for a reason the user can act on."""


class Cancelled(Exception):
    """The work was cancelled; its result is not wanted."""


def raise_if_cancelled(state) -> None:
    """Raise :class:`Cancelled` if `state` (a ``TaskState`` or anything with
    ``is_interruption_requested()``) asks to stop; no-op for ``None``."""
    if state is not None and state.is_interruption_requested():
        raise Cancelled()
