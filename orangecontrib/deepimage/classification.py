"""Transfer learning as an Orange learner: ImageClassifierLearner/Model.

A pretrained backbone's last convolutional feature map is averaged over the
image and a new head ("Dense → BatchNorm → Dropout → softmax") learns the
classes of the table. With the backbone frozen and no augmentation (the
default) every image is embedded once, through the embedding cache, and only
the head trains, on the cached features: cross-validation then costs seconds.
With ``unfreeze > 0`` the head trains first, then the top backbone layers
train with a ten times lower learning rate, images streaming from disk
through ``tf.data``; batch-normalisation layers stay in inference mode.

The model holds the whole network, from raw RGB pixels (0–255) to class
probabilities, so a saved model goes from image file to label by itself::

    >>> from orangecontrib.deepimage import ImageClassifierLearner
    >>> model = ImageClassifierLearner(epochs=30)(train_table)
    >>> labels = model(test_table)
    >>> model.export("valves.keras", "keras")
"""
from typing import List, Optional, Sequence

import numpy as np

from Orange.base import Learner, Model
from Orange.data import Table
from Orange.data.filter import HasClass
from Orange.util import dummy_callback

from orangecontrib.deepimage.backbones import get_backbone
from orangecontrib.deepimage.device import distribution_strategy
from orangecontrib.deepimage.embedding import shared_embedder
from orangecontrib.deepimage.images import (
    ImageSkipped, decode_image, image_paths, require_image_column,
    iter_image_batches, read_image_bytes)
from orangecontrib.deepimage.training import (
    NetworkModelMixin, TrainingHooks, fit)

__all__ = ["ImageClassifierLearner", "ImageClassifierModel"]

#: Share of the progress bar spent embedding (fast path) before training.
_EMBEDDING_SHARE = 0.5


class ImageClassifierLearner(Learner):
    """Train an image classifier on a table's images and class.

    Parameters
    ----------
    backbone : str
        A key of the backbone registry (default ``"squeezenet"``, offline).
    unfreeze : int
        How many of the backbone's top layers with weights to fine-tune;
        0 keeps the backbone frozen (feature extraction).
    hidden_units : int
        Units of the head's hidden dense layer; 0 for none (a linear head).
    dropout : float
        Dropout rate before the output layer.
    batch_norm : bool
        Batch normalisation after the hidden layer.
    augment : bool
        Random flips, rotations, zoom, contrast and brightness while training
        (streams images, so it is slower than the cached fast path).
    epochs : int
        Epochs to train the head (and again the unfrozen layers).
    batch_size : int
    learning_rate : float
        Adam's learning rate for the head; unfrozen layers use a tenth.
    validation : float
        Fraction of images held out to pick the best epoch and stop early;
        0 uses the training loss.
    early_stopping : bool
        Stop when the validation loss has not improved for 5 epochs; the
        best epoch's weights are kept in any case.
    class_weights : bool
        Weigh classes inversely to their frequency (imbalanced classes).
    random_state : int
        Seed for the split, initialisation, shuffling and augmentation.
    weights : str, optional
        A weights file for the backbone instead of its ImageNet weights.
    mirror : str, optional
        Base URL or folder to download backbone weights from.
    preprocessors : list, optional
    hooks : TrainingHooks, optional
        Runtime hooks (stop requests, per-epoch metrics) for widgets.
    """
    name = "image classifier"
    preprocessors = [HasClass()]
    supports_weights = False

    def __init__(self, backbone: str = "squeezenet", unfreeze: int = 0,
                 hidden_units: int = 128, dropout: float = 0.3,
                 batch_norm: bool = True, augment: bool = False,
                 epochs: int = 50, batch_size: int = 32,
                 learning_rate: float = 1e-3, validation: float = 0.2,
                 early_stopping: bool = True, class_weights: bool = False,
                 random_state: int = 0, weights: Optional[str] = None,
                 mirror: Optional[str] = None, preprocessors=None,
                 hooks: Optional[TrainingHooks] = None):
        super().__init__(preprocessors=preprocessors)
        get_backbone(backbone)  # fail early on an unknown key
        if unfreeze < 0 or epochs < 1 or batch_size < 1:
            raise ValueError(
                f"unfreeze must be >= 0, epochs and batch_size >= 1. Received: "
                f"unfreeze={unfreeze}, epochs={epochs}, batch_size={batch_size}")
        if not 0 <= validation < 1:
            raise ValueError(f"validation must be in [0, 1). "
                             f"Received: validation={validation}")
        self.backbone = backbone
        self.unfreeze = unfreeze
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.augment = augment
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation = validation
        self.early_stopping = early_stopping
        self.class_weights = class_weights
        self.random_state = random_state
        self.weights = weights
        self.mirror = mirror
        self.hooks = hooks
        self._progress = dummy_callback

    # --- Orange's learner protocol ---------------------------------------

    def incompatibility_reason(self, domain):
        if len(domain.class_vars) != 1 or not domain.class_var.is_discrete:
            return "Image Classifier needs a categorical target variable."
        if not any(var.attributes.get("type") == "image" for var in
                   domain.metas) and not image_columns_of_domain(domain):
            return "The data has no image column."
        return None

    def __call__(self, data, progress_callback=None):
        # Orange does not pass the progress callback to fit_storage.
        self._progress = progress_callback or dummy_callback
        try:
            return super().__call__(data, progress_callback)
        finally:
            self._progress = dummy_callback

    def fit_storage(self, data: Table) -> "ImageClassifierModel":
        import keras

        column = require_image_column(data)
        class_var = data.domain.class_var
        paths = image_paths(data, column)
        y = data.Y.astype(int)
        _check_classes(y, class_var)
        keras.utils.set_random_seed(self.random_state)
        progress = self._progress

        backbone = get_backbone(self.backbone)
        embedder = shared_embedder(backbone.key, self.weights,
                                   backbone.transfer_layer, self.mirror)
        result = embedder.embed_paths(
            paths, callback=lambda f: progress(_EMBEDDING_SHARE * f,
                                               "Embedding images..."))
        keep = np.array([v is not None for v in result.vectors], dtype=bool)
        if keep.sum() == 0:
            raise ValueError("None of the images could be read.")
        features = np.vstack([v for v in result.vectors if v is not None])
        y, kept_paths = y[keep], [p for p, k in zip(paths, keep) if k]
        _check_classes(y, class_var)
        notes = _notes(y, class_var, len(paths) - int(keep.sum()))

        train, val = self._split(y)
        hooks = self._hooks_with_progress(progress)
        strategy = distribution_strategy()
        with strategy.scope():
            head = build_head(features.shape[1], len(class_var.values),
                              self.hidden_units, self.batch_norm,
                              self.dropout, self.random_state)
            head.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                         loss="sparse_categorical_crossentropy",
                         metrics=["accuracy"])
        fine_tune = self.unfreeze > 0
        head_end = 1.0 if not (fine_tune or self.augment) else 0.75
        history = {}
        if not self.augment:
            history = fit(
                head, self._feature_dataset(features[train], y[train], True),
                validation_data=self._feature_dataset(features[val], y[val])
                if len(val) else None,
                epochs=self.epochs,
                class_weight=self._class_weight(y[train], class_var),
                hooks=hooks, early_stopping=self.early_stopping,
                start=_EMBEDDING_SHARE, end=head_end)
        # Training through the backbone needs its own copy of it, made in
        # the strategy's scope (the embedder's network is shared).
        with strategy.scope():
            network, trunk = assemble_network(
                backbone, embedder.backbone_network, head,
                copy_trunk=fine_tune or self.augment)
        if self.augment or fine_tune:
            history = self._train_streaming(
                network, trunk, backbone, kept_paths, y, train, val,
                class_var, hooks, history, start=head_end)
        model = ImageClassifierModel(
            data.domain, network, class_var.values, backbone.key,
            column.name, backbone.input_size, history, notes)
        # The head keeps an output per value of the class variable; values
        # that no training image has are never predicted (as Orange's own
        # models give them probability 0).
        model.seen_classes = np.unique(y).astype(int)
        if not fine_tune:
            # The backbone is untouched: predictions may reuse cached
            # embeddings of the same images (cross-validation's test folds).
            model.cached_features = dict(
                model=backbone.key, weights=self.weights,
                layer=backbone.transfer_layer, mirror=self.mirror)
        return model

    def _feature_dataset(self, features, y, shuffle=False):
        """Batches of cached features: cheaper per epoch than arrays."""
        import tensorflow as tf
        data = tf.data.Dataset.from_tensor_slices(
            (features.astype(np.float32), y.astype(np.int32)))
        if shuffle:
            data = data.shuffle(len(y), seed=self.random_state,
                                reshuffle_each_iteration=True)
        return data.batch(self.batch_size)

    # --- pieces of training ------------------------------------------------

    def _split(self, y):
        """Indices of training and validation images (stratified)."""
        from sklearn.model_selection import train_test_split
        indices = np.arange(len(y))
        n_classes = len(np.unique(y))
        n_val = int(round(self.validation * len(y)))
        if n_val < n_classes or len(y) - n_val < n_classes:
            return indices, indices[:0]
        counts = np.bincount(y)
        stratify = y if counts[counts > 0].min() >= 2 else None
        train, val = train_test_split(indices, test_size=n_val,
                                      random_state=self.random_state,
                                      stratify=stratify)
        return np.sort(train), np.sort(val)

    def _class_weight(self, y, class_var):
        if not self.class_weights:
            return None
        from sklearn.utils.class_weight import compute_class_weight
        present = np.unique(y)
        weights = compute_class_weight("balanced", classes=present, y=y)
        return {int(c): float(w) for c, w in zip(present, weights)}

    def _hooks_with_progress(self, progress):
        hooks = self.hooks or TrainingHooks()
        outer = hooks.progress

        def report(fraction):
            progress(fraction, "Training...")
            if outer is not None:
                outer(fraction)
        return TrainingHooks(report, hooks.should_stop, hooks.on_epoch_end)

    def _train_streaming(self, network, trunk, backbone, paths, y, train, val,
                         class_var, hooks, history, start):
        """Train the head on augmented images, then the unfrozen layers."""
        import keras
        strategy = distribution_strategy()
        with strategy.scope():
            training_network = with_augmentation(
                network, self.random_state) if self.augment else network
        make = lambda idx, shuffle: image_dataset(  # noqa: E731
            [paths[i] for i in idx], y[idx], backbone.input_size,
            self.batch_size, shuffle, self.random_state)
        train_data = make(train, True)
        val_data = make(val, False) if len(val) else None
        class_weight = self._class_weight(y[train], class_var)
        phases = []
        if self.augment:
            phases.append(("head", self.learning_rate))
        if self.unfreeze > 0:
            phases.append(("unfrozen", self.learning_rate / 10))
        span = (1.0 - start) / len(phases)
        offset = len(next(iter(history.values()), []))
        for i, (phase, learning_rate) in enumerate(phases):
            set_trainable(trunk, self.unfreeze if phase == "unfrozen" else 0)
            with strategy.scope():
                training_network.compile(
                    optimizer=keras.optimizers.Adam(learning_rate),
                    loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
            phase_history = fit(
                training_network, train_data, validation_data=val_data,
                epochs=self.epochs, class_weight=class_weight, hooks=hooks,
                early_stopping=self.early_stopping,
                start=start + i * span, end=start + (i + 1) * span,
                epoch_offset=offset)
            for key, values in phase_history.items():
                history.setdefault(key, []).extend(values)
            offset += len(next(iter(phase_history.values()), []))
            if hooks.should_stop is not None and hooks.should_stop():
                break
        set_trainable(trunk, 0)
        return history


def image_columns_of_domain(domain):
    """String or discrete metas that may hold image paths."""
    return [var for var in domain.metas if var.is_string or var.is_discrete]


def _check_classes(y, class_var):
    present = np.unique(y)
    if len(present) < 2:
        only = class_var.values[present[0]] if len(present) else "none"
        raise ValueError(f"Image Classifier needs images of at least two "
                         f"classes; the data has only '{only}'.")


def _notes(y, class_var, n_skipped) -> List[str]:
    """Warnings about the training data, kept with the model."""
    notes = []
    counts = np.bincount(y, minlength=len(class_var.values))
    single = [class_var.values[i] for i, c in enumerate(counts) if c == 1]
    if single:
        notes.append(f"Classes with a single image cannot be validated and "
                     f"are hard to learn: {', '.join(single)}.")
    if n_skipped:
        notes.append(f"{n_skipped} image(s) could not be read and were left "
                     f"out of training.")
    return notes


def build_head(n_features: int, n_classes: int, hidden_units: int = 128,
               batch_norm: bool = True, dropout: float = 0.3,
               seed: Optional[int] = None):
    """The classification head: Dense → BatchNorm → Dropout → softmax.

    Returns
    -------
    keras.Sequential
        From `n_features` pooled features to `n_classes` probabilities.
    """
    import keras
    from keras import layers
    head = keras.Sequential(name="head")
    head.add(keras.Input((n_features,), name="features"))
    if hidden_units:
        head.add(layers.Dense(
            hidden_units, activation="relu", name="hidden",
            kernel_initializer=keras.initializers.HeNormal(seed)))
        if batch_norm:
            # A lower momentum than the default 0.99: small data sets give few
            # steps per epoch, and validation uses the moving statistics.
            head.add(layers.BatchNormalization(momentum=0.9, name="hidden_bn"))
    if dropout:
        head.add(layers.Dropout(dropout, seed=seed, name="dropout"))
    head.add(layers.Dense(
        n_classes, activation="softmax", dtype="float32", name="predictions",
        kernel_initializer=keras.initializers.GlorotUniform(seed)))
    return head


def assemble_network(backbone, backbone_network, head, copy_trunk=False):
    """Join preprocessing, the backbone's feature maps, pooling and `head`.

    Parameters
    ----------
    backbone : Backbone
    backbone_network : keras.Model
        The backbone as built with its weights.
    head : keras.Model
    copy_trunk : bool
        Give the network its own copy of the backbone layers (needed when
        they will be trained: the built backbone is shared).

    Returns
    -------
    (keras.Model, keras.Model)
        The network (RGB pixels 0–255, float32, at the backbone's input size
        → probabilities) and its trunk (preprocessed input → feature map).
    """
    import keras
    from keras import layers
    from orangecontrib.deepimage.preprocessing import ImagePreprocessing
    trunk = keras.Model(
        backbone_network.input,
        backbone_network.get_layer(backbone.feature_map_layer).output,
        name="trunk")
    if copy_trunk:
        copy = keras.models.clone_model(trunk)
        copy.set_weights(trunk.get_weights())
        trunk = copy
    trunk.trainable = False
    height, width = backbone.input_size
    pixels = keras.Input((height, width, 3), name="pixels")
    x = ImagePreprocessing(backbone.preprocessing, name="preprocessing")(pixels)
    x = trunk(x, training=False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = head(x)
    return keras.Model(pixels, outputs, name="image_classifier"), trunk


def set_trainable(trunk, n_top: int) -> int:
    """Unfreeze the top `n_top` layers with weights; keep batch norms frozen.

    Returns
    -------
    int
        How many layers were unfrozen.
    """
    from keras import layers
    trunk.trainable = n_top > 0
    unfrozen = 0
    for layer in reversed(trunk.layers):
        is_norm = isinstance(layer, layers.BatchNormalization)
        wants = bool(layer.weights) and not is_norm and unfrozen < n_top
        layer.trainable = wants
        unfrozen += wants
    return unfrozen


def with_augmentation(network, seed: int):
    """Return a model that augments pixels, then runs `network`."""
    import keras
    from keras import layers
    augmentation = keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.05, seed=seed),
        layers.RandomZoom(0.1, seed=seed),
        layers.RandomContrast(0.2, seed=seed),
        layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed),
    ], name="augmentation")
    pixels = keras.Input(network.input_shape[1:], name="pixels")
    return keras.Model(pixels, network(augmentation(pixels)),
                       name="augmented_classifier")


def image_dataset(paths: Sequence[str], y: np.ndarray, input_size, batch_size,
                  shuffle: bool, seed: int):
    """A ``tf.data`` stream of (pixels, label) batches decoded from disk.

    Decoding runs in two parallel calls with two batches prefetched;
    autotuning is off, as it stalls on small machines.
    """
    import tensorflow as tf
    height, width = input_size

    def load(path):
        try:
            image = decode_image(read_image_bytes(path.decode()).data,
                                 (width, height))
            return np.asarray(image, dtype=np.float32)
        except ImageSkipped:
            # The file changed since it was embedded; a blank image keeps
            # the batch's shape and cannot move a label onto another image.
            return np.full((height, width, 3), 127.0, np.float32)

    def load_tf(path, label):
        pixels = tf.numpy_function(load, [path], tf.float32)
        pixels.set_shape((height, width, 3))
        return pixels, label

    data = tf.data.Dataset.from_tensor_slices(
        (np.asarray(paths, dtype=object).astype(str), y.astype(np.int32)))
    if shuffle:
        data = data.shuffle(len(paths), seed=seed,
                            reshuffle_each_iteration=True)
    data = data.map(load_tf, num_parallel_calls=2).batch(batch_size) \
        .prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


class ImageClassifierModel(NetworkModelMixin, Model):
    """A trained image classifier; see :class:`ImageClassifierLearner`.

    Attributes
    ----------
    network : keras.Model
        RGB pixels (0–255, float32, ``input_size``) → class probabilities.
    class_names : tuple of str
    backbone : str
        The registry key of the backbone.
    image_column : str
        Name of the image column it was trained on (others are found too).
    input_size : (int, int)
        (height, width) of the network's input.
    history : dict
        Per-epoch metrics (``loss``, ``accuracy``, ``val_loss``, ...).
    notes : list of str
        Warnings about the training data.
    """

    def __init__(self, domain, network, class_names, backbone, image_column,
                 input_size, history=None, notes=()):
        super().__init__(domain)
        self.network = network
        self.class_names = tuple(class_names)
        self.backbone = backbone
        self.image_column = image_column
        self.input_size = tuple(input_size)
        self.history = dict(history or {})
        self.notes = list(notes)
        self.batch_size = 32
        self.cached_features = None
        self.seen_classes = None
        self._predict_fn = None

    def _only_seen_classes(self, probs):
        """Set the probabilities of classes absent from training to 0."""
        seen = getattr(self, "seen_classes", None)  # older pickles lack it
        if seen is None or len(seen) == probs.shape[1]:
            return probs
        unseen = np.setdiff1d(np.arange(probs.shape[1]), seen)
        probs[:, unseen] = 0
        known = ~np.isnan(probs).any(axis=1)
        probs[known] /= probs[known].sum(axis=1, keepdims=True)
        return probs

    def data_to_model_domain(self, data, progress_callback=dummy_callback):
        # The network reads only the images: keep the table as it is, so
        # its own image column (and the folder it points to) is used.
        return data

    def predict_storage(self, data):
        column = require_image_column(data, self.image_column)
        paths = image_paths(data, column)
        probs = self._predict_from_cached_features(paths)
        if probs is None:
            probs, _ = self.predict_paths(paths)
        values = np.full(len(probs), np.nan)
        known = ~np.isnan(probs).any(axis=1)
        values[known] = np.argmax(probs[known], axis=1)
        # float32 softmax sums are off by ~1e-7; Orange's scorers (log loss)
        # expect rows that sum to one.
        probs[known] /= probs[known].sum(axis=1, keepdims=True)
        return values, probs

    def backmap_value(self, value, mapped_probs, n_values, backmappers):
        # Orange fills unknown predictions with the most probable class when
        # the data's class variable is another object; an unreadable image
        # must stay unknown.
        unknown = np.isnan(value)
        value = super().backmap_value(value, mapped_probs, n_values,
                                      backmappers)
        value = np.asarray(value, dtype=float)
        value[unknown] = np.nan
        return value

    def predict_paths(self, paths: Sequence[Optional[str]], callback=None):
        """Class probabilities for image files or URLs.

        Returns
        -------
        (numpy.ndarray, dict)
            ``(len(paths), n_classes)`` probabilities, NaN rows for images
            that could not be read; and their reasons by position.
        """
        probs = np.full((len(paths), len(self.class_names)), np.nan)
        skipped = {}
        height, width = self.input_size
        done = 0
        for batch, _ in iter_image_batches(paths, (width, height),
                                           self.batch_size):
            skipped.update(batch.skipped)
            if len(batch.indices):
                probs[batch.indices] = self._only_seen_classes(
                    np.asarray(self.predict_network(batch.pixels),
                               dtype=np.float64))
            done += len(batch.indices) + len(batch.skipped)
            if callback is not None:
                callback(done / max(1, len(paths)))
        return probs, skipped

    def _predict_from_cached_features(self, paths):
        """Probabilities from the embedding cache and the head, if possible.

        Returns None when the model's backbone was fine-tuned or its
        embedder is not available here; the whole network is used then.
        """
        if not self.cached_features:
            return None
        try:
            embedder = shared_embedder(**self.cached_features)
            result = embedder.embed_paths(paths)
        except Exception:  # pylint: disable=broad-except
            return None
        probs = np.full((len(paths), len(self.class_names)), np.nan)
        rows = [i for i, v in enumerate(result.vectors) if v is not None]
        if rows:
            head = self.network.get_layer("head")
            features = np.vstack([result.vectors[i] for i in rows])
            probs[rows] = self._only_seen_classes(np.asarray(
                head(features.astype(np.float32), training=False),
                dtype=np.float64))
        return probs

    export_output_description = \
        "class probabilities, in the order of class_names"

    def __repr__(self):
        return (f"ImageClassifierModel(backbone={self.backbone!r}, "
                f"classes={list(self.class_names)!r})")


#: What the learner returns; Orange's learner widgets type their outputs by it.
ImageClassifierLearner.__returns__ = ImageClassifierModel
