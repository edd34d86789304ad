"""What classification and segmentation training share.

* :class:`ProgressReporter`, the bridge from Keras to Orange: it reports the
  fraction done through a progress callback (which may raise to cancel, as
  Orange's callbacks do), stops training when ``should_stop()`` says so, and
  passes each epoch's metrics to ``on_epoch_end`` for live curves;
* :class:`KeepBestWeights`, which restores the best epoch's weights at the
  end however training ended (finished, stopped early or cancelled);
* :func:`fit`, which runs ``model.fit`` with these and turns NaN losses and
  running out of memory into :class:`TrainingError` with advice; a model
  built under a ``MultiWorkerMirroredStrategy`` (training across machines)
  trains in a loop of its own instead, with the same callbacks (see
  :func:`fit`);
* :class:`StreamingDataset`, the one way training images (with their labels
  or masks) go from files into ``tf.data``: decoded in worker threads,
  shuffled with an explicit seed, and an image that cannot be read is
  skipped with its reason (in ``skipped``), never trained on.
"""
import math
import os
import tempfile
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import (Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple)

import numpy as np

from orangecontrib.deepimage.errors import InvalidInput, TrainingError
from orangecontrib.deepimage.images import (
    ImageSkipped, load_image, load_image_array)
from orangecontrib.deepimage.segdata import MaskError, MaskInfo, load_mask

__all__ = ["ProgressReporter", "KeepBestWeights", "StopOnNaN",
           "TrainingError", "fit", "TrainingHooks", "StreamingDataset",
           "read_image_and_mask", "network_to_bytes", "network_from_bytes",
           "NetworkModelMixin"]


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
                 end: float = 1.0, epoch_offset: int = 0,
                 steps: Optional[int] = None):
        super().__init__()
        self.hooks = hooks
        self.epochs = max(1, epochs)
        self.start, self.end = start, end
        self.epoch_offset = epoch_offset
        self.steps = steps
        self._epoch = 0
        self.stopped_by_user = False

    def _steps(self):
        # A stream has no known length (skipped images are left out), so
        # Keras gives no steps; its expected number of batches is used.
        return (self.params or {}).get("steps") or self.steps or 1

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
        within = min(1.0, (batch + 1) / self._steps())
        self._report((self._epoch + within) / self.epochs)
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
        with ``y=`` in `fit_kwargs`), or a :class:`StreamingDataset`.
    epochs : int
    hooks : TrainingHooks, optional
    validation_data : optional
        As for ``model.fit``, or a :class:`StreamingDataset`; the best epoch
        is chosen on it when given, else on the training loss.
    early_stopping : bool
        Stop when the monitored loss has not improved for `patience` epochs.
    start, end, epoch_offset
        See :class:`ProgressReporter`.

    Returns
    -------
    dict
        The metrics of each epoch (``history.history``).

    Under a ``MultiWorkerMirroredStrategy`` with several workers (the
    model built in its scope), Keras' ``model.fit`` cannot train (Keras
    3.15 reduces the nested first batch and the scalar metrics of each step
    across workers in ways TensorFlow refuses: "Attempt to convert a value
    (PerReplica...)", "Invalid reduction dimension 0"); the model then
    trains in :func:`_fit_across_workers`, with the same callbacks, every
    worker running this same call on the same data.

    Raises
    ------
    TrainingError
        When the loss became NaN or the device ran out of memory.
    InvalidInput
        When not one image of a :class:`StreamingDataset` could be read.
    """
    import keras
    import tensorflow as tf
    from orangecontrib.deepimage.device import is_multi_worker

    across_workers = is_multi_worker(model.distribute_strategy)
    stream = data if isinstance(data, StreamingDataset) else None
    if stream is not None and not across_workers:
        data = stream.tf_dataset()
    if isinstance(validation_data, StreamingDataset) and not across_workers:
        validation_data = validation_data.tf_dataset()
    monitor = "val_loss" if validation_data is not None else "loss"
    reporter = _keras_callback("ProgressReporter")(
        hooks or TrainingHooks(), epochs, start, end, epoch_offset,
        stream.expected_batches if stream else None)
    nan_guard = _keras_callback("StopOnNaN")()
    callbacks = [reporter, _keras_callback("KeepBestWeights")(monitor),
                 nan_guard]
    if stream is not None:
        callbacks.append(_keras_callback("StreamEpoch")(stream, epoch_offset))
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, patience=patience, restore_best_weights=False))
    if not isinstance(data, np.ndarray):
        fit_kwargs.setdefault("shuffle", False)  # datasets shuffle themselves
    try:
        if across_workers:
            history = _fit_across_workers(
                model, data, validation_data, epochs, callbacks,
                steps=stream.expected_batches if stream else None,
                **fit_kwargs)
        else:
            history = model.fit(data, validation_data=validation_data,
                                epochs=epochs, callbacks=callbacks,
                                verbose=0, **fit_kwargs)
    except tf.errors.ResourceExhaustedError as error:
        raise TrainingError(
            "Out of memory while training: use a smaller batch size or "
            "smaller images, or fewer unfrozen layers.") from error
    except Exception:
        # Keras fails on an epoch without batches; say why there were none.
        if stream is not None and stream.read_none:
            raise stream.nothing_read() from None
        raise
    if stream is not None and across_workers:
        # Decided alike on every worker: one that stopped alone would leave
        # the others waiting for it.
        if not _on_any_worker(model.distribute_strategy, bool(stream.used)):
            raise stream.nothing_read() if stream.skipped else InvalidInput(
                f"None of the {len(stream)} images could be read on any "
                f"machine.")
    elif stream is not None and stream.read_none:
        raise stream.nothing_read()
    if nan_guard.diverged:
        raise TrainingError(
            "Training diverged (the loss became NaN): lower the learning "
            "rate, or check that the images are not blank.")
    return history.history


# --- training across machines ----------------------------------------------

def _fit_across_workers(model, data, validation_data, epochs: int,
                        callbacks: list, steps: Optional[int] = None,
                        class_weight: Optional[Dict[int, float]] = None,
                        shuffle: bool = False):
    """Train `model` under its ``MultiWorkerMirroredStrategy``.

    Each step runs on every replica of every worker (``strategy.run`` of a
    traced step): the loss of a replica's examples is summed and divided by
    the number of examples in the step over all replicas (a last, partial
    batch weighs as many examples as it has), the optimizer sums the
    gradients over the replicas, and the step's loss is reduced over them
    (``strategy.reduce``). A replica whose worker has run out of examples
    (the workers' shares of a stream differ when images are skipped) gets
    an empty batch and contributes zero gradients. Compiled metrics are
    read over all workers; so every worker gets the same logs, and the
    callbacks (early stopping, the best weights, NaN) decide alike. A stop
    requested on one worker (``model.stop_training``) stops all of them
    after the next step. The moving statistics of trained batch
    normalisation layers are averaged over the workers after each epoch,
    so that all workers end with the same network.

    `data` and `validation_data` are ``tf.data`` datasets of batches of the
    global batch size (each worker takes its share of every batch) or
    :class:`StreamingDataset` (each worker reads only its share of the
    images, see :meth:`StreamingDataset.shard`). `class_weight` weighs
    each example by its label; `shuffle` is taken as ``model.fit`` takes it
    and ignored (the datasets shuffle themselves).

    Returns
    -------
    keras.callbacks.History
    """
    import keras
    import tensorflow as tf

    strategy = model.distribute_strategy
    replicas = strategy.num_replicas_in_sync
    train, train_steps = _distributed(strategy, data, class_weight)
    val, val_steps = (None, None) if validation_data is None \
        else _distributed(strategy, validation_data, class_weight=None)
    # Iterators of in-memory data are made once (a distributed iterator
    # costs up to a second to make, and to end, on every worker); they
    # repeat the data, `*_steps` batches an epoch.
    train_batches = None if train_steps is None else iter(train)
    val_batches = None if val_steps is None else iter(val)

    def epoch_of(dataset, batches, steps):
        if batches is None:
            return iter(dataset)
        return (next(batches) for _ in range(steps))
    loss = model.loss
    variables = model.trainable_variables
    statistics = _trained_batch_norm_statistics(model)

    def per_example_loss(y, y_pred):
        # The loss of each example, not yet averaged and not scaled for
        # distribution (a Loss' __call__ would do both).
        values = loss.call(y, y_pred) if isinstance(loss, keras.losses.Loss) \
            else keras.losses.get(loss)(y, y_pred)
        values = tf.cast(values, tf.float32)
        if values.shape.rank == 0:  # a loss of the whole batch (Dice)
            return tf.fill(tf.shape(y)[:1], values)
        if values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(
                range(1, values.shape.rank)))
        return values

    def unpack(batch):
        x, y, weight = (tuple(batch) + (None,))[:3]
        return x, y, weight

    def weighted_sum(values, weight):
        if weight is not None:
            values = values * tf.cast(weight, values.dtype)
        return tf.reduce_sum(values)

    def replica_train_step(batch, stop):
        x, y, weight = unpack(batch)
        context = tf.distribute.get_replica_context()
        count = tf.cast(tf.shape(y)[0], tf.float32)
        total = context.all_reduce("SUM", count)

        def train_on_batch():
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                summed = weighted_sum(per_example_loss(y, y_pred), weight)
                value = summed / tf.maximum(total, 1.0)
                if model.losses:  # the same on every replica
                    value += tf.add_n(model.losses) / replicas
                scaled = model.optimizer.scale_loss(value)
            gradients = tape.gradient(scaled, variables)
            model.compute_metrics(x, y, y_pred, sample_weight=weight)
            return [summed] + [tf.zeros(v.shape, v.dtype) if g is None
                               else tf.convert_to_tensor(g)
                               for g, v in zip(gradients, variables)]

        def nothing_to_train_on():
            return [tf.constant(0.0)] + [tf.zeros(v.shape, v.dtype)
                                         for v in variables]

        summed, *gradients = tf.cond(count > 0, train_on_batch,
                                     nothing_to_train_on)
        model.optimizer.apply_gradients(zip(gradients, variables))
        return tf.stack([summed, count, stop])

    def replica_test_step(batch):
        x, y, weight = unpack(batch)
        count = tf.cast(tf.shape(y)[0], tf.float32)

        def test_on_batch():
            y_pred = model(x, training=False)
            model.compute_metrics(x, y, y_pred, sample_weight=weight)
            return weighted_sum(per_example_loss(y, y_pred), weight)

        summed = tf.cond(count > 0, test_on_batch, lambda: tf.constant(0.0))
        return tf.stack([summed, count, 0.0])

    @tf.function
    def train_step(batch, stop):
        sums = strategy.run(replica_train_step, args=(batch, stop))
        return strategy.reduce("SUM", sums, axis=None)

    @tf.function
    def test_step(batch):
        return strategy.reduce("SUM", strategy.run(replica_test_step,
                                                   args=(batch,)), axis=None)

    @tf.function
    def mean_over_workers(flag):
        # One vector, read on each worker and averaged over all replicas.
        vector = tf.concat([tf.reshape(flag, [1])] + [
            tf.reshape(tf.cast(v, tf.float32), [-1]) for v in statistics], 0)
        return strategy.reduce(
            "MEAN", strategy.experimental_distribute_values_from_function(
                lambda _: vector), axis=None)

    def synchronise(stop: bool) -> bool:
        """Average the batch statistics over the workers; True when any
        worker asked to stop."""
        means = mean_over_workers(tf.constant(float(stop))).numpy()
        start = 1
        with strategy.scope():
            for variable in statistics:
                size = int(np.prod(variable.shape))
                variable.assign(means[start:start + size].reshape(
                    variable.shape).astype(variable.dtype))
                start += size
        return bool(means[0] > 0)

    def metrics(sums):
        logs = {name: float(value)
                for name, value in model.get_metrics_result().items()}
        logs["loss"] = float(sums[0] / max(sums[1], 1.0))
        if model.losses:
            logs["loss"] += float(tf.add_n(model.losses))
        return logs

    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList(
        callbacks + [history], model=model, epochs=epochs, steps=steps,
        verbose=0)
    model.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        sums = np.zeros(3)
        stop = False
        for step, batch in enumerate(epoch_of(train, train_batches,
                                              train_steps)):
            callbacks.on_train_batch_begin(step)
            result = train_step(batch, tf.constant(float(stop)))
            step_sums = result.numpy()
            sums[:2] += step_sums[:2]
            callbacks.on_train_batch_end(step, {"loss": float(
                step_sums[0] / max(step_sums[1], 1.0))})
            stop = bool(model.stop_training)
            if step_sums[2] > 0:  # some worker asked to stop before it
                break
        logs = metrics(sums)
        model.stop_training = synchronise(model.stop_training)
        if val is not None:
            model.reset_metrics()
            sums = np.zeros(3)
            for batch in epoch_of(val, val_batches, val_steps):
                sums += test_step(batch).numpy()
            logs.update({f"val_{name}": value
                         for name, value in metrics(sums).items()})
        callbacks.on_epoch_end(epoch, logs)
        # Early stopping and NaN decide on the same logs on every worker;
        # a stop asked for on one worker alone (the user's) is shared.
        model.stop_training = synchronise(model.stop_training)
        if model.stop_training:
            break
    callbacks.on_train_end()
    return history


def _on_any_worker(strategy, flag: bool) -> bool:
    """True when `flag` is True on any worker (every worker must ask)."""
    import tensorflow as tf
    value = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([float(flag)]))
    return float(strategy.reduce("MEAN", value, axis=None)[0]) > 0


def _trained_batch_norm_statistics(model) -> list:
    """The moving means and variances of the batch normalisation layers
    that train (frozen ones run in inference mode and do not change)."""
    import keras
    found = []

    def visit(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.trainable:
                found.extend([layer.moving_mean, layer.moving_variance])
        for inner in getattr(layer, "layers", ()):
            visit(inner)
    visit(model)
    return found


def _distributed(strategy, data, class_weight=None):
    """`data` (a ``tf.data`` dataset of global batches, or a
    :class:`StreamingDataset`) as a distributed dataset of `strategy`, and
    the number of batches of an epoch when the dataset repeats them (None:
    one iteration is one epoch)."""
    import tensorflow as tf

    def weighted(dataset):
        if not class_weight:
            return dataset
        table = np.ones(max(class_weight) + 1, np.float32)
        for label, weight in class_weight.items():
            table[label] = weight
        table = tf.constant(table)
        return dataset.map(lambda x, y: (x, y, tf.gather(table, y)))

    if isinstance(data, StreamingDataset):
        batch = max(1, round(data.batch_size / strategy.num_replicas_in_sync))

        def worker_dataset(context):
            data.shard(context.input_pipeline_id,
                       context.num_input_pipelines)
            return weighted(data.tf_dataset(batch_size=batch))
        return strategy.distribute_datasets_from_function(worker_dataset), \
            None
    if not isinstance(data, tf.data.Dataset):
        raise TypeError(f"Training across machines takes a tf.data.Dataset "
                        f"or a StreamingDataset. Received: "
                        f"{type(data).__name__}")
    # In-memory data cannot be split by files: every worker makes the same
    # batches (the same shuffle seed) and keeps its share of each.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    steps = int(data.cardinality())
    if steps > 0:  # known and finite
        data = data.repeat()
    return strategy.experimental_distribute_dataset(
        weighted(data).with_options(options)), steps if steps > 0 else None


class _StreamEpoch:
    """Tell a :class:`StreamingDataset` which epoch begins (its shuffle
    and random choices depend on it, not on how often Keras iterates)."""

    def __init__(self, stream: "StreamingDataset", offset: int = 0):
        super().__init__()
        self.stream = stream
        self.offset = offset

    def on_epoch_begin(self, epoch, logs=None):
        self.stream.epoch = epoch + self.offset


# --- streaming images into training --------------------------------------

#: Failures that make one image (or its mask) unusable for training.
UNREADABLE = (ImageSkipped, MaskError)


def read_image_and_mask(image_path: Optional[str], mask_path: Optional[str],
                        info: MaskInfo, n_classes: Optional[int] = None
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Read an image and the class indices of its mask, for training.

    Parameters
    ----------
    image_path, mask_path : str or None
    info : MaskInfo
        How to read the mask (see
        :func:`orangecontrib.deepimage.segdata.mask_info`); instance masks
        become foreground (1) and background (0).
    n_classes : int, optional
        Masks with a value of `n_classes` or more are refused.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(height, width, 3)`` uint8 pixels and ``(height, width)`` int32
        class indices.

    Raises
    ------
    ImageSkipped, MaskError
        When the image or the mask cannot be used; the text says why.
    """
    image = np.asarray(load_image(image_path), dtype=np.uint8)
    if not mask_path:
        raise MaskError("no mask in this row")
    labels = info.training_labels(load_mask(mask_path, info.kind))
    if labels.shape != image.shape[:2]:
        raise ImageSkipped(f"mask {labels.shape[1]}×{labels.shape[0]} does "
                           f"not match image {image.shape[1]}×"
                           f"{image.shape[0]}")
    if n_classes is not None and labels.size and labels.max() >= n_classes:
        raise MaskError(f"the mask holds the value {int(labels.max())}, "
                        f"but there are only {n_classes} classes")
    return image, labels.astype(np.int32)


def _read_in_order(order: Sequence[int], read: Callable[[int], object],
                   workers: int, in_flight: int
                   ) -> Iterator[Tuple[int, object, Optional[str]]]:
    """Run ``read(index)`` in worker threads; yield ``(index, value,
    reason)`` in the given order, with at most `in_flight` reads queued.

    An unreadable item gives None and its reason; any other exception
    goes to the caller.
    """
    def task(index):
        try:
            return read(index), None
        except UNREADABLE as error:
            return None, str(error)

    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="deepimage-train") as pool:
        pending = deque()
        position = 0
        try:
            while position < len(order) or pending:
                while position < len(order) and len(pending) < in_flight:
                    index = int(order[position])
                    pending.append((index, pool.submit(task, index)))
                    position += 1
                index, future = pending.popleft()
                value, reason = future.result()
                yield index, value, reason
        finally:
            for _, future in pending:  # stopped early: do not read the rest
                future.cancel()


class StreamingDataset:
    """Training images, with labels or masks, streamed from files.

    Images are read and decoded in worker threads (through
    :mod:`orangecontrib.deepimage.images`) as training consumes them, so
    memory holds only the images in flight. The order is shuffled with
    `seed` (a new order each epoch, the same orders in every run) and
    ``tf.data`` autotuning is off: it stalls on small machines.
    :func:`fit` sets ``epoch`` as each epoch begins.

    An image (or mask) that cannot be read is skipped: it gives no
    example, and ``skipped`` maps its position to the reason.

    Parameters
    ----------
    paths : sequence of str
        Image files or URLs.
    labels : array-like, optional
        A class index per image (classification).
    masks : sequence of str, optional
        A mask file per image (segmentation), read with `mask` (see
        :func:`read_image_and_mask`).
    mask : MaskInfo, optional
        The kind of the masks (class masks by default).
    n_classes : int, optional
        Masks with values beyond the classes are skipped.
    size : (int, int), optional
        Images are resized to (width, height); None keeps their size.
    batch_size : int
    shuffle : bool
    seed : int
    same_each_epoch : bool
        Give the same random choices (e.g. tiles) every epoch, for
        validation.
    examples : callable, optional
        ``examples(pixels, target, rng) -> iterable of examples`` turns one
        image and its label or mask into training examples (e.g. random
        tiles); `rng` is a ``numpy.random.Generator`` seeded by `seed`, the
        image's position and the epoch. By default the example is the
        image (float32) and its target.
    example_shapes : sequence of (tuple, str), optional
        Shape and dtype of each part of an example; by default an image of
        `size` (float32) and an int32 label or mask.
    examples_per_image : int
        How many examples `examples` gives (for the expected number of
        batches).
    workers : int
        Decoding threads.
    buffer : int, optional
        Examples mixed before they go out when shuffling (several examples
        of one image do not come in a row); default four batches.

    Attributes
    ----------
    skipped : dict
        ``{position: reason}`` of the images that could not be used.
    used : set
        Positions of the images that gave examples.
    epoch : int
        The epoch that the next iteration gives: its order and random
        choices are seeded by `seed` and `epoch`.
    """

    def __init__(self, paths: Sequence[Optional[str]], *,
                 labels: Optional[Sequence[int]] = None,
                 masks: Optional[Sequence[Optional[str]]] = None,
                 mask: Optional[MaskInfo] = None,
                 n_classes: Optional[int] = None,
                 size: Optional[Tuple[int, int]] = None,
                 batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                 same_each_epoch: bool = False,
                 examples: Optional[Callable] = None,
                 example_shapes: Optional[Sequence[Tuple[tuple, str]]] = None,
                 examples_per_image: int = 1, workers: int = 2,
                 buffer: Optional[int] = None):
        if labels is not None and masks is not None:
            raise ValueError("give labels or masks, not both")
        for name, values in (("labels", labels), ("masks", masks)):
            if values is not None and len(values) != len(paths):
                raise ValueError(f"{name} must have one entry per image. "
                                 f"Received: {len(values)} {name} for "
                                 f"{len(paths)} images")
        if masks is not None and size is not None:
            raise ValueError("masks are label images and are not resized; "
                             "images with masks keep their size")
        if examples is not None and example_shapes is None:
            raise ValueError("example_shapes are needed with examples")
        self.paths = list(paths)
        self.labels = None if labels is None \
            else np.asarray(labels, dtype=np.int32)
        self.masks = None if masks is None else list(masks)
        self.mask = mask or MaskInfo()
        self.n_classes = n_classes
        self.size = None if size is None else tuple(size)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.same_each_epoch = same_each_epoch
        self.examples = examples or self._one_example
        self.example_shapes = list(example_shapes or self._default_shapes())
        self.examples_per_image = max(1, int(examples_per_image))
        self.workers = workers
        self.buffer = 4 * self.batch_size if buffer is None else int(buffer)
        self.skipped: Dict[int, str] = {}
        self.used = set()
        self.epoch = 0
        self._shard = (0, 1)
        self._dataset = None

    def shard(self, index: int, count: int) -> None:
        """Give only share `index` of `count` of the images of each epoch
        (every `count`-th of the epoch's order), for the worker `index` of
        a training across machines: the workers' shares together are the
        whole epoch, each image in one of them."""
        if not 0 <= index < count:
            raise ValueError(f"index must be in [0, count). Received: "
                             f"index={index}, count={count}")
        self._shard = (int(index), int(count))
        self._dataset = None

    def __len__(self):
        return len(self.paths)

    @property
    def expected_batches(self) -> int:
        """Batches in an epoch when every image can be read."""
        return max(1, math.ceil(len(self.paths) * self.examples_per_image
                                / self.batch_size))

    @property
    def read_none(self) -> bool:
        """True when images were tried and not one could be read."""
        return bool(self.skipped) and not self.used

    def nothing_read(self) -> InvalidInput:
        """The error for a stream of which no image could be read."""
        index, reason = next(iter(sorted(self.skipped.items())))
        return InvalidInput(f"None of the {len(self.paths)} images could be "
                            f"read (e.g. image {index + 1}: {reason}).")

    def _default_shapes(self):
        image = (None, None, 3) if self.size is None \
            else (self.size[1], self.size[0], 3)
        if self.masks is not None:
            return [(image, "float32"), (image[:2], "int32")]
        if self.labels is not None:
            return [(image, "float32"), ((), "int32")]
        return [(image, "float32")]

    @staticmethod
    def _one_example(pixels, target, _rng) -> Iterable[tuple]:
        pixels = pixels.astype(np.float32)
        return [(pixels,) if target is None else (pixels, target)]

    def read(self, index: int) -> Tuple[np.ndarray, object]:
        """The pixels and the label or mask of image `index` (this runs in
        the worker threads).

        Raises
        ------
        ImageSkipped, MaskError
            When the image or its mask cannot be used.
        """
        if self.masks is not None:
            pixels, labels = read_image_and_mask(
                self.paths[index], self.masks[index], self.mask,
                self.n_classes)
            return pixels, labels
        if self.size is None:
            pixels = np.asarray(load_image(self.paths[index]), np.uint8)
        else:
            pixels = load_image_array(self.paths[index], self.size)
        return pixels, None if self.labels is None else self.labels[index]

    def __iter__(self) -> Iterator[tuple]:
        """The examples of one epoch (see `epoch`)."""
        choices = 0 if self.same_each_epoch else self.epoch
        rng = np.random.default_rng([self.seed, choices])
        order = rng.permutation(len(self.paths)) if self.shuffle \
            else np.arange(len(self.paths))
        index, count = self._shard
        order = order[index::count]
        in_flight = max(2 * self.workers, min(self.batch_size, 64))
        pool = []
        for index, value, reason in _read_in_order(order, self.read,
                                                   self.workers, in_flight):
            if reason is not None:
                self.skipped[index] = reason
                continue
            self.used.add(index)
            self.skipped.pop(index, None)
            image_rng = np.random.default_rng([self.seed, index, choices])
            for example in self.examples(value[0], value[1], image_rng):
                if not self.shuffle:
                    yield example
                    continue
                pool.append(example)
                if len(pool) > self.buffer:
                    yield _pop_random(pool, rng)
        while pool:
            yield _pop_random(pool, rng)

    def tf_dataset(self, batch_size: Optional[int] = None):
        """The stream as a ``tf.data.Dataset`` of batches (of `batch_size`
        examples, by default the stream's ``batch_size``)."""
        batch_size = self.batch_size if batch_size is None \
            else int(batch_size)
        if self._dataset is None or self._dataset[0] != batch_size:
            import tensorflow as tf
            signature = tuple(tf.TensorSpec(shape, dtype)
                              for shape, dtype in self.example_shapes)
            data = tf.data.Dataset.from_generator(
                self.__iter__, output_signature=signature)
            data = data.batch(batch_size).prefetch(2)
            options = tf.data.Options()
            options.autotune.enabled = False
            options.deterministic = True
            self._dataset = (batch_size, data.with_options(options))
        return self._dataset[1]


def _pop_random(pool: list, rng: np.random.Generator):
    index = int(rng.integers(len(pool)))
    pool[index], pool[-1] = pool[-1], pool[index]
    return pool.pop()


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
