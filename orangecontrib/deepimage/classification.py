"""Transfer learning as an Orange learner: ImageClassifierLearner/Model.

A pretrained backbone's last convolutional feature map is averaged over the
image and a new head ("Dense → BatchNorm → Dropout → softmax") learns the
classes of the table. With the backbone frozen and no augmentation (the
default) every image is embedded once, through the embedding cache, and only
the head trains, on the cached features: cross-validation then costs seconds.
With ``unfreeze > 0`` the head trains first, then the top backbone layers
train with a ten times lower learning rate, images streaming from disk
through ``tf.data``; batch-normalisation layers stay in inference mode.
An image that cannot be read is left out of training, and the model's
``skipped`` says which and why.

The model holds the whole network, from raw RGB pixels (0–255) to class
probabilities, so a saved model goes from image file to label by itself::

    >>> from orangecontrib.deepimage import ImageClassifierLearner
    >>> model = ImageClassifierLearner(epochs=30)(train_table)
    >>> labels = model(test_table)
    >>> model.export("valves.keras", "keras")
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from Orange.classification.base_classification import (
    LearnerClassification, ModelClassification)
from Orange.data import Table
from Orange.data.filter import HasClass
from Orange.util import dummy_callback

from orangecontrib.deepimage.backbones import get_backbone
from orangecontrib.deepimage.device import training_strategy
from orangecontrib.deepimage.embedding import shared_embedder
from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.images import (
    image_paths, require_image_column, iter_image_batches)
from orangecontrib.deepimage.training import (
    NetworkModelMixin, StreamingDataset, TrainingHooks, fit)

__all__ = ["ImageClassifierLearner", "ImageClassifierModel",
           "AUGMENTATIONS", "training_diagnosis"]

#: Share of the progress bar spent embedding when only the head trains, on
#: the cached features (the fast path): embedding the images the first time
#: and the head's epochs take about as long.
_EMBEDDING_SHARE = 0.5
#: When images stream through the network every epoch, one epoch costs
#: about as much as the embedding; the head's epochs on cached features
#: before fine-tuning (without augmentation) are cheap.
_CACHED_HEAD_SHARE = 0.1

#: The random alterations of augmentation, by name.
AUGMENTATIONS = ("flip", "rotation", "zoom", "contrast", "brightness")

#: Below this many validation images, validation accuracy is too rough to
#: trust (its 95 % interval is wider than ±0.18).
MIN_VALIDATION = 30
#: Training accuracy this much above validation accuracy is overfitting.
OVERFITTING_GAP = 0.2
#: Validation accuracy at most this much above always guessing the most
#: common class is at chance.
CHANCE_MARGIN = 0.05

NO_CLASS = ("The images have no class. Put the images in one sub-folder "
            "per class (e.g. images/normal, images/broken) and import the "
            "folder above them with Import Images.")
NO_IMAGES = ("The data has no image column (a text column marked as "
             "images). Connect Import Images, or Deep Embedding's output, "
             "which keeps the images.")


class ImageClassifierLearner(LearnerClassification):
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
    augmentations : sequence of str
        Which of :data:`AUGMENTATIONS` augmentation uses (default: all).
        Leave out ``"flip"`` where a mirrored image means something else
        (digits, letters, text).
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
        Seed for the split, initialisation, dropout, shuffling and
        augmentation; each is seeded with it explicitly, so training
        changes no global random state.
    weights : str, optional
        A weights file for the backbone instead of its ImageNet weights.
    mirror : str, optional
        Base URL or folder to download backbone weights from.
    preprocessors : list, optional
    hooks : TrainingHooks, optional
        Runtime hooks (stop requests, per-epoch metrics) for widgets.
    strategy : tf.distribute.Strategy or str, optional
        The distribution strategy to train under: by default all GPUs of
        this machine (``MirroredStrategy`` with two or more);
        ``"multi-worker"`` trains across the machines listed in
        ``TF_CONFIG`` (the same script runs on each, see the README's "More
        than one machine"); or any ``tf.distribute`` strategy. Across
        machines, every worker embeds all images, the head and the unfrozen
        layers train on all workers' shares of them, and every worker
        returns the same model.
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
                 hooks: Optional[TrainingHooks] = None,
                 augmentations: Sequence[str] = AUGMENTATIONS,
                 strategy=None):
        super().__init__(preprocessors=preprocessors)
        unknown = set(augmentations) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"augmentations must be among {AUGMENTATIONS}. "
                             f"Received: {sorted(unknown)}")
        get_backbone(backbone)  # fail early on an unknown key
        if unfreeze < 0 or epochs < 1 or batch_size < 1:
            raise InvalidInput(
                f"unfreeze must be >= 0, epochs and batch_size >= 1. Received: "
                f"unfreeze={unfreeze}, epochs={epochs}, batch_size={batch_size}")
        if not 0 <= validation < 1:
            raise InvalidInput(f"validation must be in [0, 1). "
                             f"Received: validation={validation}")
        self.backbone = backbone
        self.unfreeze = unfreeze
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.augment = augment
        self.augmentations = tuple(a for a in AUGMENTATIONS
                                   if a in augmentations)
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
        self.strategy = strategy
        self._progress = dummy_callback

    # --- Orange's learner protocol ---------------------------------------

    def incompatibility_reason(self, domain):
        if not domain.class_vars:
            return NO_CLASS
        if len(domain.class_vars) > 1:
            return ("Image Classifier needs a single target variable; "
                    "choose one with Select Columns.")
        if not domain.class_var.is_discrete:
            return (f"Image Classifier needs a categorical target variable; "
                    f"'{domain.class_var.name}' is numeric.")
        if not any(var.attributes.get("type") == "image" for var in
                   domain.metas) and not image_columns_of_domain(domain):
            return NO_IMAGES
        return None

    def __call__(self, data, progress_callback=None):
        # Orange does not pass the progress callback to fit_storage.
        #
        # Test & Score (Orange 3.40) cannot move its bar within a fold:
        # Orange.evaluation.testing._mp_worker trains with a bare
        # ``learner(train_data)``, without progress_callback, and
        # CrossValidation.__call__ reports its own ``callback`` only after
        # each fold (fold x learner) is trained and tested; the widget's
        # TaskState is local to OWTestAndScore.__submit and reachable from
        # no learner. So in cross-validation the bar steps once a fold and
        # progress reported here goes nowhere (as does Cancel, which
        # Test & Score checks in that same per-fold callback).
        self._progress = progress_callback or dummy_callback
        try:
            return super().__call__(data, progress_callback)
        finally:
            self._progress = dummy_callback

    def fit_storage(self, data: Table) -> "ImageClassifierModel":
        import keras

        # First: a strategy across machines must be made before anything
        # else starts TensorFlow.
        strategy = training_strategy(self.strategy)
        column = require_image_column(data)
        class_var = data.domain.class_var
        paths = image_paths(data, column)
        y = data.Y.astype(int)
        _check_classes(y, class_var)
        progress = self._progress

        backbone = get_backbone(self.backbone)
        embedder = shared_embedder(backbone.key, self.weights,
                                   backbone.transfer_layer, self.mirror)
        embedding_end, head_end = self._progress_plan()
        result = embedder.embed_paths(
            paths, callback=lambda f: progress(embedding_end * f,
                                               "Embedding images..."))
        keep = np.array([v is not None for v in result.vectors], dtype=bool)
        if keep.sum() == 0:
            raise InvalidInput("None of the images could be read.")
        features = np.vstack([v for v in result.vectors if v is not None])
        y, kept_paths = y[keep], [p for p, k in zip(paths, keep) if k]
        kept_rows = np.flatnonzero(keep)
        _check_classes(y, class_var)
        skipped = dict(result.skipped)

        train, val = self._split(y)
        hooks = self._hooks_with_progress(progress)
        with strategy.scope():
            head = build_head(features.shape[1], len(class_var.values),
                              self.hidden_units, self.batch_norm,
                              self.dropout, self.random_state)
            head.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                         loss="sparse_categorical_crossentropy",
                         metrics=["accuracy"])
        fine_tune = self.unfreeze > 0
        history = {}
        if not self.augment:
            history = fit(
                head, self._feature_dataset(features[train], y[train], True),
                validation_data=self._feature_dataset(features[val], y[val])
                if len(val) else None,
                epochs=self.epochs,
                class_weight=self._class_weight(y[train], class_var),
                hooks=hooks, early_stopping=self.early_stopping,
                start=embedding_end, end=head_end)
        # Training through the backbone needs its own copy of it, made in
        # the strategy's scope (the embedder's network is shared).
        with strategy.scope():
            network, trunk = assemble_network(
                backbone, embedder.backbone_network, head,
                copy_trunk=fine_tune or self.augment)
        if self.augment or fine_tune:
            history, streamed = self._train_streaming(
                network, trunk, backbone, kept_paths, y, train, val,
                class_var, hooks, history, strategy, start=head_end)
            skipped.update((int(kept_rows[i]), reason)
                           for i, reason in streamed.items())
        notes = _notes(y, class_var, skipped)
        model = ImageClassifierModel(
            data.domain, network, class_var.values, backbone.key,
            column.name, backbone.input_size, history, notes, skipped)
        model.validation_size = len(val)
        counts = np.bincount(y[val] if len(val) else y,
                             minlength=len(class_var.values))
        model.majority = (class_var.values[int(np.argmax(counts))],
                          float(counts.max() / max(1, counts.sum())))
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

    def _progress_plan(self):
        """Where embedding and the head's training on cached features end
        on the progress bar (0..1); streamed training takes the rest.

        Embedding and the head's epochs on cached features share the bar
        equally when nothing streams. When images stream every epoch, the
        bar is split by passes over the images: the embedding is one, each
        streamed phase `epochs`; the head's epochs on cached features
        (before fine-tuning without augmentation) get a small share. No
        share goes to a phase that does not run.
        """
        streamed_phases = int(self.augment) + int(self.unfreeze > 0)
        if not streamed_phases:
            return _EMBEDDING_SHARE, 1.0
        embedding_end = 1 / (1 + streamed_phases * self.epochs)
        head = 0.0 if self.augment else _CACHED_HEAD_SHARE
        return embedding_end, embedding_end + head * (1 - embedding_end)

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
                         class_var, hooks, history, strategy, start):
        """Train the head on augmented images, then the unfrozen layers.

        Returns the history and the images that could not be read now
        (``{position in paths: reason}``); they are not trained on.
        """
        import keras
        with strategy.scope():
            training_network = with_augmentation(
                network, self.random_state, self.augmentations) \
                if self.augment else network
        height, width = backbone.input_size
        make = lambda idx, shuffle: StreamingDataset(  # noqa: E731
            [paths[i] for i in idx], labels=y[idx], size=(width, height),
            batch_size=self.batch_size, shuffle=shuffle,
            seed=self.random_state)
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
        skipped = {int(train[i]): reason
                   for i, reason in train_data.skipped.items()}
        if val_data is not None:
            skipped.update((int(val[i]), reason)
                           for i, reason in val_data.skipped.items())
        return history, skipped


def image_columns_of_domain(domain):
    """String or discrete metas that may hold image paths."""
    return [var for var in domain.metas if var.is_string or var.is_discrete]


def _check_classes(y, class_var):
    present = np.unique(y)
    if len(present) < 2:
        only = class_var.values[present[0]] if len(present) else "none"
        raise InvalidInput(f"Image Classifier needs images of at least two "
                           f"classes; the data has only '{only}'.")


def _notes(y, class_var, skipped: Dict[int, str]) -> List[str]:
    """Warnings about the training data, kept with the model."""
    notes = []
    counts = np.bincount(y, minlength=len(class_var.values))
    single = [class_var.values[i] for i, c in enumerate(counts) if c == 1]
    if single:
        notes.append(f"Classes with a single image cannot be validated and "
                     f"are hard to learn: {', '.join(single)}.")
    if skipped:
        row, reason = min(skipped.items())
        notes.append(f"{len(skipped)} image(s) could not be read and were "
                     f"left out of training (e.g. row {row + 1}: {reason}).")
    return notes


def training_diagnosis(history: Dict[str, List[float]],
                       validation_size: int,
                       majority: Optional[tuple] = None) -> Dict[str, str]:
    """What the training curves say about the model, in words.

    Parameters
    ----------
    history : dict
        Per-epoch metrics (``accuracy``, ``val_accuracy``, ``val_loss``).
    validation_size : int
        How many images were held out for validation.
    majority : (str, float), optional
        The most common class and its share of the (validation) images.

    Returns
    -------
    dict
        ``{"small_validation" | "overfitting" | "at_chance": text}`` for the
        problems found, judged at the epoch whose weights the model keeps
        (the lowest validation loss).
    """
    problems = {}
    if validation_size < MIN_VALIDATION:
        if validation_size:
            margin = 1.96 * 0.5 / np.sqrt(validation_size)
            problems["small_validation"] = (
                f"Only {validation_size} validation images: the validation "
                f"accuracy may be off by ±{margin:.2f} from the accuracy on "
                f"new images. Use more images or a larger share for "
                f"validation, or judge the model in Test & Score.")
        else:
            problems["small_validation"] = (
                "No validation images: the accuracy shown is on the "
                "training images and says little about new ones. Set a "
                "share of validation images, or judge the model in "
                "Test & Score.")
    val_loss = history.get("val_loss") or []
    val_acc = history.get("val_accuracy") or []
    train_acc = history.get("accuracy") or []
    if not (validation_size and val_loss and val_acc and train_acc):
        return problems
    best = int(np.nanargmin(val_loss))
    train, valid = train_acc[best], val_acc[best]
    if train - valid > OVERFITTING_GAP:
        problems["overfitting"] = (
            f"Training accuracy {train:.2f} but validation accuracy "
            f"{valid:.2f}: the model memorises the training images "
            f"(overfitting). Use more images, more dropout, fewer hidden "
            f"neurons or augmentation that keeps the images' meaning.")
    if majority is not None and valid <= majority[1] + CHANCE_MARGIN:
        problems["at_chance"] = (
            f"Validation accuracy {valid:.2f} is no better than always "
            f"guessing '{majority[0]}' ({majority[1]:.2f}): the model has "
            f"not learned to tell the classes apart. Check that the classes "
            f"look different, add images, or try another network.")
    return problems


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
        trunk = _copy_network(trunk)
    trunk.trainable = False
    height, width = backbone.input_size
    pixels = keras.Input((height, width, 3), name="pixels")
    x = ImagePreprocessing(backbone.preprocessing, name="preprocessing")(pixels)
    x = trunk(x, training=False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = head(x)
    return keras.Model(pixels, outputs, name="image_classifier"), trunk


def _copy_network(network):
    """A copy of `network` with its weights.

    The copy's layers are made with fixed seeds where the original's have
    none: their initial weights are replaced at once, and Keras would draw
    each seed from Python's global random state.
    """
    import keras

    def clone(layer):
        config = layer.get_config()
        for key, value in config.items():
            if key == "seed" and value is None:
                config[key] = 0
            elif key.endswith("_initializer") and isinstance(value, dict) \
                    and value.get("config", {}).get("seed", 0) is None:
                value["config"]["seed"] = 0
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(network, clone_function=clone)
    copy.set_weights(network.get_weights())
    return copy


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


def with_augmentation(network, seed: int,
                      augmentations: Sequence[str] = AUGMENTATIONS):
    """Return a model that augments pixels, then runs `network`.

    `augmentations` names the alterations used, of :data:`AUGMENTATIONS`;
    with none, the pixels pass unchanged.
    """
    import keras
    from keras import layers
    make = {
        "flip": lambda: layers.RandomFlip("horizontal", seed=seed),
        "rotation": lambda: layers.RandomRotation(0.05, seed=seed),
        "zoom": lambda: layers.RandomZoom(0.1, seed=seed),
        "contrast": lambda: layers.RandomContrast(0.2, seed=seed),
        "brightness": lambda: layers.RandomBrightness(
            0.2, value_range=(0, 255), seed=seed),
    }
    augmentation = keras.Sequential(
        [make[name]() for name in AUGMENTATIONS if name in augmentations],
        name="augmentation")
    pixels = keras.Input(network.input_shape[1:], name="pixels")
    return keras.Model(pixels, network(augmentation(pixels)),
                       name="augmented_classifier")


class ImageClassifierModel(NetworkModelMixin, ModelClassification):
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
    skipped : dict
        ``{row: reason}``: the images of the training data (rows after the
        learner's preprocessing) that could not be read and were not
        trained on.
    """

    def __init__(self, domain, network, class_names, backbone, image_column,
                 input_size, history=None, notes=(), skipped=None):
        super().__init__(domain)
        self.network = network
        self.class_names = tuple(class_names)
        self.backbone = backbone
        self.image_column = image_column
        self.input_size = tuple(input_size)
        self.history = dict(history or {})
        self.notes = list(notes)
        self.skipped = dict(sorted((skipped or {}).items()))
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

    #: (Models pickled before it was added have none.)
    skipped: Dict[int, str] = {}
    #: How many images were held out for validation (None: not known).
    validation_size: Optional[int] = None
    #: The most common class of the validation images and its share.
    majority: Optional[tuple] = None

    export_output_description = \
        "class probabilities, in the order of class_names"

    def __repr__(self):
        return (f"ImageClassifierModel(backbone={self.backbone!r}, "
                f"classes={list(self.class_names)!r})")


#: What the learner returns; Orange's learner widgets type their outputs by it.
ImageClassifierLearner.__returns__ = ImageClassifierModel
