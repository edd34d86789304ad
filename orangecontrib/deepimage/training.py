"""What classification and segmentation training share.

* :class:`ProgressReporter`, the bridge from Keras to Orange: it reports the
  fraction done through a progress callback (which may raise to cancel, as
  Orange's callbacks do), stops training when ``should_stop()`` says so, and
  passes each epoch's metrics to ``on_epoch_end`` for live curves;
* :class:`KeepBestWeights`, which restores the best epoch's weights at the
  end however training ended (finished, stopped early or cancelled);
* :func:`fit`, which runs ``model.fit`` with these and turns NaN losses and
  running out of memory into :class:`TrainingError` with advice.
"""
import os
import tempfile
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np

from orangecontrib.deepimage.errors import TrainingError

__all__ = ["ProgressReporter", "KeepBestWeights", "StopOnNaN",
           "TrainingError", "fit", "TrainingHooks", "network_to_bytes",
           "network_from_bytes", "NetworkModelMixin"]


class TrainingHooks:
    """Optional callables that let a widget follow and steer training.

    Parameters
    ----------
    progress : callable, optional
        ``progress(fraction)``; may raise an exception to cancel.
    should_stop : callable, optional
        ``should_stop() -> bool``; True ends training gracefully, keeping the
        best weights so far.
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, logs)`` with the epoch's metrics.
    """

    def __init__(self, progress: Optional[Callable[[float], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None,
                 on_epoch_end: Optional[Callable[[int, Dict], None]] = None):
        self.progress = progress
        self.should_stop = should_stop
        self.on_epoch_end = on_epoch_end


# The callbacks below are Keras callbacks, but importing Keras imports
# TensorFlow, which the widgets' modules must not do when the canvas
# discovers them: their logic is written here without a base class, and
# the Keras classes (ProgressReporter, KeepBestWeights, StopOnNaN) are made
# from it on first use (see ``__getattr__``).
_CALLBACKS = {}


def _keras_callback(name: str):
    """The Keras callback class `name` (made once)."""
    if name not in _CALLBACKS:
        import keras
        logic = globals()[f"_{name}"]
        _CALLBACKS[name] = type(name, (logic, keras.callbacks.Callback),
                                {"__module__": __name__,
                                 "__qualname__": name,
                                 "__doc__": logic.__doc__})
    return _CALLBACKS[name]


def __getattr__(name):
    if name in ("ProgressReporter", "KeepBestWeights", "StopOnNaN"):
        return _keras_callback(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _ProgressReporter:
    """Report progress, honour stop requests and pass on epoch metrics.

    Parameters
    ----------
    hooks : TrainingHooks
    epochs : int
        Epochs in this call of ``fit``.
    start, end : float
        The part of the whole job this ``fit`` covers (0..1).
    epoch_offset : int
        Added to epoch numbers passed to ``on_epoch_end`` (for a second
        training phase).
    """

    def __init__(self, hooks: TrainingHooks, epochs: int, start: float = 0.0,
                 end: float = 1.0, epoch_offset: int = 0):
        super().__init__()
        self.hooks = hooks
        self.epochs = max(1, epochs)
        self.start, self.end = start, end
        self.epoch_offset = epoch_offset
        self._epoch = 0
        self.stopped_by_user = False

    def _steps(self):
        return (self.params or {}).get("steps") or 1

    def _report(self, fraction):
        if self.hooks.progress is not None:
            self.hooks.progress(self.start + (self.end - self.start) * fraction)

    def _check_stop(self):
        if self.hooks.should_stop is not None and self.hooks.should_stop():
            self.stopped_by_user = True
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._report((self._epoch + (batch + 1) / self._steps()) / self.epochs)
        self._check_stop()

    def on_epoch_end(self, epoch, logs=None):
        self._report((epoch + 1) / self.epochs)
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(epoch + self.epoch_offset,
                                    {k: float(v) for k, v in
                                     (logs or {}).items()})
        self._check_stop()


class _KeepBestWeights:
    """Restore the weights of the best epoch when training ends.

    Unlike ``EarlyStopping(restore_best_weights=True)``, this also restores
    them when training ran to the end or was stopped by the user.
    """

    def __init__(self, monitor: str = "val_loss"):
        super().__init__()
        self.monitor = monitor
        self.best = np.inf
        self.best_weights = None
        self.best_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and np.isfinite(value) and value < self.best:
            self.best = float(value)
            self.best_epoch = epoch
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class _StopOnNaN:
    """Stop at the first batch whose loss is NaN or infinite, and say so."""

    def __init__(self):
        super().__init__()
        self.diverged = False

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.diverged = True
            self.model.stop_training = True


def fit(model, data, *, epochs: int, hooks: Optional[TrainingHooks] = None,
        validation_data=None, early_stopping: bool = True, patience: int = 5,
        start: float = 0.0, end: float = 1.0, epoch_offset: int = 0,
        **fit_kwargs) -> Dict[str, List[float]]:
    """Train `model` with progress, cancellation and the best weights kept.

    Parameters
    ----------
    model : keras.Model
        A compiled model.
    data
        What ``model.fit`` takes as ``x`` (a ``tf.data.Dataset``, or an array
        with ``y=`` in `fit_kwargs`).
    epochs : int
    hooks : TrainingHooks, optional
    validation_data : optional
        As for ``model.fit``; the best epoch is chosen on it when given,
        else on the training loss.
    early_stopping : bool
        Stop when the monitored loss has not improved for `patience` epochs.
    start, end, epoch_offset
        See :class:`ProgressReporter`.

    Returns
    -------
    dict
        The metrics of each epoch (``history.history``).

    Raises
    ------
    TrainingError
        When the loss became NaN or the device ran out of memory.
    """
    import keras
    import tensorflow as tf

    monitor = "val_loss" if validation_data is not None else "loss"
    reporter = _keras_callback("ProgressReporter")(
        hooks or TrainingHooks(), epochs, start, end, epoch_offset)
    nan_guard = _keras_callback("StopOnNaN")()
    callbacks = [reporter, _keras_callback("KeepBestWeights")(monitor),
                 nan_guard]
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, patience=patience, restore_best_weights=False))
    if not isinstance(data, np.ndarray):
        fit_kwargs.setdefault("shuffle", False)  # datasets shuffle themselves
    try:
        history = model.fit(data, validation_data=validation_data,
                            epochs=epochs, callbacks=callbacks, verbose=0,
                            **fit_kwargs)
    except tf.errors.ResourceExhaustedError as error:
        raise TrainingError(
            "Out of memory while training: use a smaller batch size or "
            "smaller images, or fewer unfrozen layers.") from error
    if nan_guard.diverged:
        raise TrainingError(
            "Training diverged (the loss became NaN): lower the learning "
            "rate, or check that the images are not blank.")
    return history.history


def network_to_bytes(network) -> bytes:
    """Serialise a Keras model (architecture and weights) to bytes.

    Models pickle their network this way (Orange's Save Model).
    """
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "network.keras")
        network.save(path)
        with open(path, "rb") as file:
            return file.read()


def network_from_bytes(data: bytes):
    """Rebuild a Keras model from :func:`network_to_bytes`' output."""
    import keras
    # Registers the add-on's serialisable layers before loading.
    import orangecontrib.deepimage.preprocessing  # noqa: F401
    import orangecontrib.deepimage.layers  # noqa: F401
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "network.keras")
        with open(path, "wb") as file:
            file.write(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return keras.saving.load_model(path, compile=False)


class NetworkModelMixin:
    """What trained models share: their Keras `network` pickles as bytes,
    exports, and predicts through one traced function.

    The class using it sets ``self.network`` and ``self._predict_fn = None``
    and provides what :func:`orangecontrib.deepimage.export.export_model`
    reads (``input_size``, ``class_names``, ``backbone``,
    ``export_output_description``).
    """

    def predict_network(self, pixels: np.ndarray) -> np.ndarray:
        """Run the network on a batch of RGB pixels (0–255); float32 out."""
        if getattr(self, "_predict_fn", None) is None:
            import tensorflow as tf
            network = self.network

            @tf.function(reduce_retracing=True)
            def predict(batch):
                return tf.cast(network(tf.cast(batch, tf.float32),
                                       training=False), tf.float32)
            self._predict_fn = predict
        return self._predict_fn(pixels).numpy()

    def export(self, path: str, format: str = "keras") -> str:
        """Write the network for use outside Orange.

        See :func:`orangecontrib.deepimage.export.export_model`.
        """
        from orangecontrib.deepimage.export import export_model
        return export_model(self, path, format)

    def __getstate__(self):
        parent = getattr(super(), "__getstate__", None)
        state = dict((parent() if parent else None) or self.__dict__)
        state["_predict_fn"] = None
        state["network"] = network_to_bytes(self.network)
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["network"] = network_from_bytes(state["network"])
        self.__dict__.update(state)
