"""Semantic segmentation: U-Nets trained on image + mask columns.

Architectures: a U-Net from scratch (Ronneberger et al., 2015), its residual
variant (ResUNet), and a U-Net whose encoder is a pretrained backbone from
the registry (SqueezeNet works offline). Losses: cross-entropy, soft Dice,
focal, and Dice + cross-entropy.

Images of any size are trained on random tiles, streamed from disk (a pair
whose image or mask cannot be read is left out, and the model's
``skipped`` says which and why), and predicted tile by tile with overlap:
each tile's border (where the network sees less context) is discarded, so
a 4000×3000 photo is segmented with bounded memory and no seams::

    >>> from orangecontrib.deepimage import SegmentationLearner
    >>> model = SegmentationLearner(epochs=30)(table)   # image + mask columns
    >>> labels = model.segment(["slide.png"])[0]         # (H, W) class indices
"""
import io
import itertools
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from Orange.data import Domain, StringVariable, Table
from Orange.data.util import get_unique_names

from orangecontrib.deepimage.backbones import get_backbone
from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.images import (
    ImageSkipped, image_paths, load_image, paths_of, require_image_column,
    require_mask_column)
from orangecontrib.deepimage.segdata import MaskInfo, mask_info
from orangecontrib.deepimage.device import (
    preferred_dtype_policy, training_strategy)
from orangecontrib.deepimage.training import (
    UNREADABLE, NetworkModelMixin, StreamingDataset, TrainingHooks, fit,
    read_image_and_mask)

__all__ = ["SegmentationLearner", "SegmentationModel", "EpochPreview",
           "build_unet", "build_encoder_unet", "segmentation_loss",
           "predict_tiled", "iou_and_dice", "ARCHITECTURES", "LOSSES"]

ARCHITECTURES = ("unet", "resunet")
LOSSES = ("crossentropy", "dice", "focal", "dice+crossentropy")

#: Encoder layers whose outputs feed the decoder, finest first.
ENCODER_SKIPS = {
    "squeezenet": ("conv1", "fire3_concat", "fire5_concat", "fire9_concat"),
    "vgg16": ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3",
              "block5_conv3"),
    "mobilenet-v2": ("block_1_expand_relu", "block_3_expand_relu",
                     "block_6_expand_relu", "block_13_expand_relu",
                     "out_relu"),
    "resnet50": ("conv1_relu", "conv2_block3_out", "conv3_block4_out",
                 "conv4_block6_out", "conv5_block3_out"),
}


# --- networks ---------------------------------------------------------------

class _Initializers:
    """Kernel initialisers for one network: each layer gets its own seed,
    derived from the network's, so that the same seed gives the same
    weights without seeding anything global (None: unseeded)."""

    def __init__(self, seed: Optional[int]):
        self.seed = seed
        self.count = 0

    def __call__(self):
        import keras
        if self.seed is None:
            return keras.initializers.GlorotUniform()
        self.count += 1
        return keras.initializers.GlorotUniform(
            seed=(self.seed * 7919 + self.count) % 2 ** 31)


def _conv_block(x, filters, name, residual=False, dtype="float32",
                initializers=None):
    from keras import layers
    initializers = initializers or _Initializers(None)
    shortcut = x
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                          kernel_initializer=initializers(), dtype=dtype,
                          name=f"{name}_conv{i}")(x)
        # Momentum 0.9: small data gives few steps, and prediction uses
        # the moving statistics.
        x = layers.BatchNormalization(momentum=0.9, dtype=dtype,
                                      name=f"{name}_bn{i}")(x)
        if i == 1 or not residual:
            x = layers.Activation("relu", dtype=dtype,
                                  name=f"{name}_relu{i}")(x)
    if residual:
        if shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, padding="same",
                                     kernel_initializer=initializers(),
                                     dtype=dtype,
                                     name=f"{name}_shortcut")(shortcut)
        x = layers.Add(dtype=dtype, name=f"{name}_add")([x, shortcut])
        x = layers.Activation("relu", dtype=dtype, name=f"{name}_relu2")(x)
    return x


def build_unet(n_classes: int, depth: int = 4, base_filters: int = 16,
               residual: bool = False, input_shape=(None, None, 3),
               dtype: str = "float32", seed: Optional[int] = None):
    """A U-Net (or ResUNet when `residual`) from scratch.

    Parameters
    ----------
    n_classes : int
        Output classes (background included).
    depth : int
        Down-sampling steps; input sides must be divisible by ``2**depth``.
    base_filters : int
        Filters of the first level; doubled at each level down.
    residual : bool
        Residual convolution blocks (ResUNet).
    input_shape : tuple
        (height, width, 3) of RGB pixels in 0..255.
    dtype : str
        The dtype policy of its layers (e.g. ``"mixed_float16"``); the
        output layer is float32 in any case.
    seed : int, optional
        Seed of the initial weights (None: random).

    Returns
    -------
    keras.Model
        Pixels → per-pixel class probabilities (float32).
    """
    import keras
    from keras import layers
    initializers = _Initializers(seed)
    pixels = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255, dtype=dtype, name="scale")(pixels)
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2 ** level, f"down{level}",
                        residual, dtype, initializers)
        skips.append(x)
        x = layers.MaxPooling2D(2, dtype=dtype, name=f"pool{level}")(x)
    x = _conv_block(x, base_filters * 2 ** depth, "bottom", residual, dtype,
                    initializers)
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same",
                                   kernel_initializer=initializers(),
                                   dtype=dtype, name=f"up{level}")(x)
        x = layers.Concatenate(dtype=dtype,
                               name=f"join{level}")([x, skips[level]])
        x = _conv_block(x, filters, f"dec{level}", residual, dtype,
                        initializers)
    outputs = layers.Conv2D(n_classes, 1, activation="softmax",
                            kernel_initializer=initializers(),
                            dtype="float32", name="classes")(x)
    name = "resunet" if residual else "unet"
    return keras.Model(pixels, outputs, name=name)


def build_encoder_unet(n_classes: int, encoder: str,
                       weights: Optional[str] = None,
                       mirror: Optional[str] = None, base_filters: int = 16,
                       dtype: str = "float32", seed: Optional[int] = None):
    """A U-Net whose encoder is a pretrained backbone (frozen).

    The input size is the backbone's (e.g. 227×227 for SqueezeNet); the
    decoder resizes each map to the size of the skip it joins. `dtype` and
    `seed` are as for :func:`build_unet`.

    Returns
    -------
    keras.Model
        Pixels (0..255) at the backbone's input size → class probabilities.
    """
    import keras
    from keras import layers
    from orangecontrib.deepimage.layers import ResizeLike
    from orangecontrib.deepimage.preprocessing import ImagePreprocessing
    if encoder not in ENCODER_SKIPS:
        raise InvalidInput(f"No U-Net encoder for this backbone. Received: "
                           f"encoder={encoder!r}; expected one of "
                           f"{sorted(ENCODER_SKIPS)}")
    backbone = get_backbone(encoder)
    initializers = _Initializers(seed)
    network = backbone.build(weights, mirror=mirror, dtype=dtype)
    skip_names = ENCODER_SKIPS[encoder]
    features = keras.Model(
        network.input, [network.get_layer(n).output for n in skip_names],
        name="encoder")
    features.trainable = False
    height, width = backbone.input_size
    pixels = keras.Input((height, width, 3), name="pixels")
    skips = features(ImagePreprocessing(backbone.preprocessing, dtype=dtype,
                                        name="preprocessing")(pixels),
                     training=False)
    x = skips[-1]
    for level in reversed(range(len(skips) - 1)):
        x = ResizeLike(dtype=dtype, name=f"up{level}")([x, skips[level]])
        x = layers.Concatenate(dtype=dtype,
                               name=f"join{level}")([x, skips[level]])
        x = _conv_block(x, base_filters * 2 ** level, f"dec{level}",
                        dtype=dtype, initializers=initializers)
    x = ResizeLike(dtype=dtype, name="up_full")([x, pixels])
    x = _conv_block(x, base_filters, "dec_full", dtype=dtype,
                    initializers=initializers)
    outputs = layers.Conv2D(n_classes, 1, activation="softmax",
                            kernel_initializer=initializers(),
                            dtype="float32", name="classes")(x)
    return keras.Model(pixels, outputs, name=f"unet_{encoder}")


# --- losses and metrics -----------------------------------------------------

def segmentation_loss(name: str, n_classes: int):
    """Return a Keras loss: ``crossentropy``, ``dice``, ``focal`` or a sum.

    Dice is the soft Dice loss averaged over classes (1 − mean Dice); focal
    is the focal loss with γ = 2 (Lin et al., 2017). Labels are sparse
    class indices of shape (batch, height, width).
    """
    from keras import ops
    import keras
    if name not in LOSSES:
        raise InvalidInput(f"Unknown loss. Received: loss={name!r}; expected "
                           f"one of {LOSSES}")
    def crossentropy(y_true, y_pred):
        # The mean over pixels, as SparseCategoricalCrossentropy() gives,
        # but not also divided by the number of replicas (a Loss object
        # called under a distribution strategy divides; Keras then divides
        # the whole loss again).
        return ops.mean(keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred))

    def one_hot(y_true):
        return ops.one_hot(ops.cast(ops.squeeze(y_true, -1)
                                    if len(y_true.shape) == 4 else y_true,
                                    "int32"), n_classes)

    def dice(y_true, y_pred):
        truth = one_hot(y_true)
        intersection = ops.sum(truth * y_pred, axis=(1, 2))
        total = ops.sum(truth + y_pred, axis=(1, 2))
        return 1 - ops.mean((2 * intersection + 1) / (total + 1))

    def focal(y_true, y_pred, gamma=2.0):
        truth = one_hot(y_true)
        p = ops.clip(ops.sum(truth * y_pred, axis=-1), 1e-7, 1.0)
        return ops.mean(-((1 - p) ** gamma) * ops.log(p))

    def loss(y_true, y_pred):
        if name == "crossentropy":
            return crossentropy(y_true, y_pred)
        if name == "dice":
            return dice(y_true, y_pred)
        if name == "focal":
            return focal(y_true, y_pred)
        return dice(y_true, y_pred) + crossentropy(y_true, y_pred)
    loss.__name__ = name.replace("+", "_")
    return loss


def iou_and_dice(truth: np.ndarray, predicted: np.ndarray, n_classes: int
                 ) -> Dict[str, np.ndarray]:
    """Per-class IoU and Dice of label images (NaN for absent classes).

    Returns
    -------
    dict
        ``{"iou": array(n_classes), "dice": array(n_classes)}``.
    """
    truth = np.asarray(truth).ravel()
    predicted = np.asarray(predicted).ravel()
    iou = np.full(n_classes, np.nan)
    dice = np.full(n_classes, np.nan)
    for c in range(n_classes):
        t, p = truth == c, predicted == c
        union = np.logical_or(t, p).sum()
        if union:
            inter = np.logical_and(t, p).sum()
            iou[c] = inter / union
            dice[c] = 2 * inter / (t.sum() + p.sum())
    return {"iou": iou, "dice": dice}


# --- tiles ------------------------------------------------------------------

def _tile_starts(length: int, tile: int, stride: int) -> List[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def predict_tiled(predict_batch, image: np.ndarray, tile: int,
                  overlap: int, n_classes: int, batch_size: int = 4
                  ) -> np.ndarray:
    """Segment an image of any size tile by tile.

    Tiles of ``tile × tile`` overlap by `overlap` pixels; of each tile only
    the part at least ``overlap // 2`` from its inner edges is kept, so
    every pixel is labelled from a tile where it had context on all sides
    (except at the image's own border). Memory holds one batch of tiles and
    the label image.

    Parameters
    ----------
    predict_batch : callable
        ``(n, tile, tile, 3) float32 → (n, tile, tile, n_classes)``.
    image : numpy.ndarray
        (height, width, 3) RGB pixels.
    tile, overlap : int
    n_classes : int

    Returns
    -------
    numpy.ndarray
        (height, width) class indices (uint8, or uint16 for > 255 classes).
    """
    height, width = image.shape[:2]
    margin = overlap // 2
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)),
                       mode="reflect" if min(height, width) > 1 else "edge")
    stride = max(1, tile - overlap)
    rows = _tile_starts(image.shape[0], tile, stride)
    cols = _tile_starts(image.shape[1], tile, stride)
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    labels = np.zeros(image.shape[:2], dtype)
    windows = [(r, c) for r in rows for c in cols]
    for start in range(0, len(windows), batch_size):
        part = windows[start:start + batch_size]
        batch = np.stack([image[r:r + tile, c:c + tile] for r, c in part]
                         ).astype(np.float32)
        classes = np.argmax(predict_batch(batch), axis=-1)
        for (r, c), tile_labels in zip(part, classes):
            top = 0 if r == rows[0] else margin
            left = 0 if c == cols[0] else margin
            bottom = tile if r == rows[-1] else tile - margin
            right = tile if c == cols[-1] else tile - margin
            labels[r + top:r + bottom, c + left:c + right] = \
                tile_labels[top:bottom, left:right]
    return labels[:height, :width]


# --- data -------------------------------------------------------------------

def _random_tile(image, mask, tile, rng, augment):
    height, width = mask.shape
    if height < tile or width < tile:
        pad = ((0, max(0, tile - height)), (0, max(0, tile - width)))
        image = np.pad(image, pad + ((0, 0),), mode="reflect")
        mask = np.pad(mask, pad, mode="reflect")
        height, width = mask.shape
    top = rng.integers(0, height - tile + 1)
    left = rng.integers(0, width - tile + 1)
    image = image[top:top + tile, left:left + tile].astype(np.float32)
    mask = mask[top:top + tile, left:left + tile]
    if augment:
        # The same flips and quarter turns for image and mask; brightness
        # and contrast change the image only.
        turns = int(rng.integers(4))
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image = (image - 127.5) * rng.uniform(0.8, 1.2) + 127.5 \
            + rng.uniform(-20, 20)
        image = np.clip(image, 0, 255)
    return np.ascontiguousarray(image, np.float32), \
        np.ascontiguousarray(mask, np.int32)


def tile_dataset(pairs: Sequence[Tuple[str, str]], mask: MaskInfo,
                 n_classes: int, tile: int, tiles_per_image: int,
                 batch_size: int, augment: bool, seed: int,
                 validation: bool = False) -> StreamingDataset:
    """Random tiles of image/mask pairs, decoded from disk as they are used.

    Each image is read once an epoch and gives `tiles_per_image` tiles, so
    memory holds only the images in flight, whatever their number. A pair
    that cannot be read is skipped (see ``StreamingDataset.skipped``).
    `validation` gives the same tiles, in the same order, every epoch.
    """
    def tiles(image, labels, rng):
        return [_random_tile(image, labels, tile, rng, augment)
                for _ in range(tiles_per_image)]

    return StreamingDataset(
        [image for image, _ in pairs], masks=[mask for _, mask in pairs],
        mask=mask, n_classes=n_classes, batch_size=batch_size,
        shuffle=not validation, seed=seed, same_each_epoch=validation,
        examples=tiles, examples_per_image=tiles_per_image,
        example_shapes=[((tile, tile, 3), "float32"), ((tile, tile), "int32")])


#: At most this many batches of training tiles re-estimate the batch
#: normalisation statistics after training (see recalibrate_batch_norm).
RECALIBRATION_BATCHES = 32


def recalibrate_batch_norm(network, examples: Iterable[tuple],
                           batch_size: int) -> int:
    """Set the moving statistics of `network`'s trainable batch
    normalisation layers to their mean over `examples` (``(pixels, mask)``
    pairs, not augmented), with the weights as they are now.

    Prediction normalises with the moving statistics, which follow the
    batches of training with momentum: after the few steps of a small set
    (the nuclei tutorial's 12 tiles make 2 steps an epoch) they still
    describe the network of earlier steps, and of augmented tiles, so a
    network that segments its training batches well predicted nearly all
    pixels as one class on held-out images (nucleus IoU 0.18 instead of
    0.46 after 12 epochs; see README, Figures). Returns the number of
    batches used (0: nothing changed).
    """
    import keras
    layers = [layer for layer in network._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization)
              and layer.trainable]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    examples = iter(examples)
    n_batches = 0
    try:
        while n_batches < RECALIBRATION_BATCHES:
            batch = [pixels for pixels, _ in
                     itertools.islice(examples, batch_size)]
            if not batch:
                break
            # A running mean over the batches: batch k weighs 1 / k.
            for layer in layers:
                layer.momentum = n_batches / (n_batches + 1)
            network(np.stack(batch), training=True)
            n_batches += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return n_batches


# --- learner and model ------------------------------------------------------

#: The epoch preview segments a centre crop of at most this many pixels a
#: side (or two tiles, when they are larger).
PREVIEW_SIDE = 256


@dataclass
class EpochPreview:
    """One held-out image, segmented by the network as it is after an epoch.

    See `preview` of :class:`SegmentationLearner`.

    Attributes
    ----------
    name : str
        The image's file name.
    image : numpy.ndarray
        ``(height, width, 3)`` uint8 pixels (a centre crop of the image).
    truth : numpy.ndarray
        ``(height, width)`` class indices of its mask (instance masks as
        0 / 1).
    labels : numpy.ndarray
        ``(height, width)`` class indices predicted at the end of the epoch.
    held_out : bool
        True for a validation image, False for a training image (when no
        image is held out).
    """
    name: str
    image: np.ndarray
    truth: np.ndarray
    labels: np.ndarray
    held_out: bool = True


@dataclass
class _Columns:
    image: object
    mask: object
    info: MaskInfo

    @property
    def classes(self) -> List[str]:
        return self.info.model_classes


def _columns(table: Table) -> _Columns:
    image = require_image_column(table)
    mask = require_mask_column(table)
    return _Columns(image, mask, mask_info(mask))


def _pairs(table: Table, columns: _Columns):
    """The rows with an image and a mask, their paths, and the reasons of
    the other rows."""
    rows, pairs, skipped = [], [], {}
    for row, (image, mask) in enumerate(zip(
            image_paths(table, columns.image),
            image_paths(table, columns.mask))):
        if image and mask:
            rows.append(row)
            pairs.append((image, mask))
        else:
            skipped[row] = "no mask in this row" if image \
                else "no image in this row"
    return rows, pairs, skipped


class SegmentationLearner:
    """Train a segmentation network on a table's image and mask columns.

    Parameters
    ----------
    architecture : str
        ``"unet"`` or ``"resunet"`` (used when `encoder` is None).
    encoder : str, optional
        A registry key for a pretrained encoder (``"squeezenet"`` works
        offline); the tile size is then the backbone's input size.
    loss : str
        ``"crossentropy"``, ``"dice"``, ``"focal"`` or
        ``"dice+crossentropy"``.
    epochs, batch_size : int
    learning_rate : float
    tile_size : int
        Side of the training tiles (a multiple of 16 for U-Nets from
        scratch); prediction uses the same tiles with overlap.
    augment : bool
        Joint random flips and quarter turns of image and mask, and
        brightness and contrast of the image.
    validation : float
        Fraction of images held out for validation metrics and for picking
        the best epoch.
    random_state : int
    depth, base_filters : int
        Size of a U-Net from scratch.
    tiles_per_image : int, optional
        Random tiles per image per epoch (default: enough to cover it).
    hooks : TrainingHooks, optional
        Runtime hooks for widgets (progress, stop, per-epoch metrics).
    preview : bool
        At the end of every epoch, segment one held-out image (the first
        readable validation image, or training image when none is held
        out; a centre crop of at most ``max(256, 2 * tile)`` pixels a side)
        with the network as it is then, and pass it to
        ``hooks.on_epoch_end`` as ``logs["preview"]``, an
        :class:`EpochPreview`. The training history is not affected.
    strategy : tf.distribute.Strategy or str, optional
        The distribution strategy to train under: by default all GPUs of
        this machine (``MirroredStrategy`` with two or more);
        ``"multi-worker"`` trains across the machines listed in
        ``TF_CONFIG`` (the same script runs on each, see the README's "More
        than one machine"), each worker reading its share of the images
        every epoch; or any ``tf.distribute`` strategy.

    After training, the batch normalisation statistics are re-estimated on
    the training tiles, not augmented (see :func:`recalibrate_batch_norm`).
    """
    name = "segmentation"

    def __init__(self, architecture: str = "unet",
                 encoder: Optional[str] = None,
                 loss: str = "dice+crossentropy", epochs: int = 30,
                 batch_size: int = 8, learning_rate: float = 1e-3,
                 tile_size: int = 128, augment: bool = True,
                 validation: float = 0.2, random_state: int = 0,
                 depth: int = 4, base_filters: int = 16,
                 tiles_per_image: Optional[int] = None,
                 early_stopping: bool = True,
                 weights: Optional[str] = None, mirror: Optional[str] = None,
                 hooks: Optional[TrainingHooks] = None,
                 preview: bool = False, strategy=None):
        if architecture not in ARCHITECTURES:
            raise InvalidInput(f"Unknown architecture. Received: architecture="
                               f"{architecture!r}; expected one of "
                               f"{ARCHITECTURES}")
        if loss not in LOSSES:
            raise InvalidInput(f"Unknown loss. Received: loss={loss!r}; "
                               f"expected one of {LOSSES}")
        if encoder is not None:
            get_backbone(encoder)
        elif tile_size % 2 ** depth:
            raise InvalidInput(
                f"tile_size must be a multiple of {2 ** depth}. "
                f"Received: tile_size={tile_size}")
        self.architecture = architecture
        self.encoder = encoder
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.tile_size = tile_size
        self.augment = augment
        self.validation = validation
        self.random_state = random_state
        self.depth = depth
        self.base_filters = base_filters
        self.tiles_per_image = tiles_per_image
        self.early_stopping = early_stopping
        self.weights = weights
        self.mirror = mirror
        self.hooks = hooks
        self.preview = preview
        self.strategy = strategy

    def build_network(self, n_classes: int):
        """The untrained network and its tile size.

        On a GPU with tensor cores the network computes in mixed precision
        (a policy of its layers, not Keras' global one); its output layer
        stays float32. Its initial weights follow `random_state`.
        """
        policy = preferred_dtype_policy()
        if self.encoder is not None:
            network = build_encoder_unet(n_classes, self.encoder,
                                         self.weights, self.mirror,
                                         self.base_filters, dtype=policy,
                                         seed=self.random_state)
            return network, get_backbone(self.encoder).input_size[0]
        network = build_unet(n_classes, self.depth, self.base_filters,
                             self.architecture == "resunet", dtype=policy,
                             seed=self.random_state)
        return network, self.tile_size

    def __call__(self, table: Table, progress_callback=None
                 ) -> "SegmentationModel":
        import keras
        # First: a strategy across machines must be made before anything
        # else starts TensorFlow.
        strategy = training_strategy(self.strategy)
        columns = _columns(table)
        rows, pairs, skipped = _pairs(table, columns)
        if not pairs:
            raise InvalidInput("No image has a mask.")
        n_classes = len(columns.classes)
        with strategy.scope():
            network, tile = self.build_network(n_classes)
        train, val = self._split(len(pairs))
        tiles = self.tiles_per_image or self._tiles_per_image(pairs[0], tile)
        train_data = tile_dataset(
            [pairs[i] for i in train], columns.info, n_classes, tile, tiles,
            self.batch_size, self.augment, self.random_state)
        val_data = None
        if len(val):
            val_data = tile_dataset(
                [pairs[i] for i in val], columns.info, n_classes, tile, tiles,
                self.batch_size, False, self.random_state + 1,
                validation=True)
        with strategy.scope():
            network.compile(
                optimizer=keras.optimizers.Adam(self.learning_rate),
                loss=segmentation_loss(self.loss, n_classes),
                metrics=[keras.metrics.MeanIoU(n_classes,
                                               sparse_y_pred=False,
                                               name="iou")])
        preview = self._preview_function(
            network, columns, tile, [pairs[i] for i in (val if len(val)
                                                        else train)],
            held_out=bool(len(val)))
        hooks = self._hooks(progress_callback, preview)
        history = fit(network, train_data, validation_data=val_data,
                      epochs=self.epochs, hooks=hooks,
                      early_stopping=self.early_stopping, patience=8)
        recalibrate_batch_norm(
            network, tile_dataset(
                [pairs[i] for i in train], columns.info, n_classes, tile,
                tiles, self.batch_size, False, self.random_state,
                validation=True), self.batch_size)
        model = SegmentationModel(network, columns.classes, tile,
                                  self.architecture, self.encoder, history)
        for part, stream in ((train, train_data), (val, val_data)):
            if stream is not None:
                skipped.update((rows[part[i]], reason)
                               for i, reason in stream.skipped.items())
        if len(val):
            model.validation_metrics = model.evaluate(
                [pairs[i] for i in val], columns.info)
            skipped.update((rows[val[i]], reason) for i, reason in
                           model.validation_metrics["skipped"].items())
        model.skipped = dict(sorted(skipped.items()))
        return model

    @staticmethod
    def _tiles_per_image(pair, tile):
        """Enough tiles to cover the first image once, 1 to 16."""
        from PIL import Image
        try:
            with Image.open(pair[0]) as image:
                width, height = image.size
        except OSError:
            return 1
        return int(np.clip(np.ceil(width * height / tile ** 2), 1, 16))

    def _split(self, n):
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(n)
        n_val = int(round(self.validation * n))
        if n - n_val < 1:
            n_val = 0
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def _preview_function(self, network, columns, tile, pairs, held_out):
        """Return a callable giving an :class:`EpochPreview` of the first
        readable pair, or None (no `preview`, or no readable pair)."""
        if not self.preview:
            return None
        for image_path, mask_path in pairs:
            try:
                image, truth = read_image_and_mask(
                    image_path, mask_path, columns.info, len(columns.classes))
            except UNREADABLE:
                continue
            side = max(PREVIEW_SIDE, 2 * tile)
            top = max(0, (truth.shape[0] - side) // 2)
            left = max(0, (truth.shape[1] - side) // 2)
            image = np.ascontiguousarray(image[top:top + side,
                                               left:left + side])
            truth = truth[top:top + side, left:left + side]
            # Shares the network (and so its current weights) with training.
            predictor = SegmentationModel(network, columns.classes, tile)
            predictor.batch_size = 16
            name = os.path.basename(image_path)
            return lambda: EpochPreview(name, image, truth,
                                        predictor.segment_array(image),
                                        held_out)
        return None

    def _hooks(self, progress_callback, preview=None):
        hooks = self.hooks or TrainingHooks()

        def on_epoch_end(epoch, logs):
            if hooks.on_epoch_end is not None:
                if preview is not None:
                    logs = dict(logs, preview=preview())
                hooks.on_epoch_end(epoch, logs)

        def progress(fraction):
            if progress_callback is not None:
                progress_callback(fraction)
            if hooks.progress is not None:
                hooks.progress(fraction)
        return TrainingHooks(progress, hooks.should_stop, on_epoch_end)


class SegmentationModel(NetworkModelMixin):
    """A trained segmentation network; see :class:`SegmentationLearner`.

    Attributes
    ----------
    network : keras.Model
        RGB pixels (0..255) → per-pixel class probabilities.
    class_names : tuple of str
        Index 0 is the background.
    tile_size : int
    history : dict
        Per-epoch metrics.
    validation_metrics : dict or None
        Per-class ``iou`` and ``dice`` on the held-out images (whole-image
        tiled prediction), and their ``mean_iou`` over foreground classes.
    skipped : dict
        ``{row: reason}``: the rows of the training table whose image or
        mask could not be read and were not trained on.
    """
    #: (Models pickled before it was added have none.)
    skipped: Dict[int, str] = {}

    export_output_description = \
        "per-pixel class probabilities, in the order of class_names"

    def __init__(self, network, class_names, tile_size, architecture="unet",
                 encoder=None, history=None):
        self.network = network
        self.class_names = tuple(class_names)
        self.tile_size = int(tile_size)
        self.architecture = architecture
        self.encoder = encoder
        self.history = dict(history or {})
        self.validation_metrics = None
        self.skipped = {}
        self.overlap = self.tile_size // 2
        self.batch_size = 4
        self._predict_fn = None

    @property
    def backbone(self):
        return self.encoder or self.architecture

    @property
    def input_size(self):
        return (self.tile_size, self.tile_size)

    def segment_array(self, image: np.ndarray) -> np.ndarray:
        """Label image of one RGB array (any size), by overlapping tiles."""
        return predict_tiled(self.predict_network, image, self.tile_size,
                             self.overlap, len(self.class_names),
                             self.batch_size)

    def segment(self, table_or_paths: Union[Table, Sequence[str]],
                callback=None) -> List[Optional[np.ndarray]]:
        """Return one (H, W) label image per input (None if unreadable)."""
        paths = paths_of(table_or_paths)
        labels = []
        for i, path in enumerate(paths):
            try:
                image = np.asarray(load_image(path), dtype=np.uint8)
            except ImageSkipped:
                labels.append(None)
            else:
                labels.append(self.segment_array(image))
            if callback is not None:
                callback((i + 1) / len(paths))
        return labels

    def evaluate(self, pairs: Sequence[Tuple[str, str]],
                 kind: Union[str, MaskInfo] = "class") -> Dict[str, object]:
        """Per-class IoU and Dice over image/mask pairs (all pixels).

        `kind` is the kind of the masks (``"class"`` or ``"instance"``) or
        their :class:`~orangecontrib.deepimage.segdata.MaskInfo`. A pair
        that cannot be read is left out; ``"skipped"`` gives its position
        and the reason.
        """
        info = kind if isinstance(kind, MaskInfo) else MaskInfo(kind)
        n_classes = len(self.class_names)
        truths, predictions, skipped = [], [], {}
        for index, (image_path, mask_path) in enumerate(pairs):
            try:
                image, mask = read_image_and_mask(image_path, mask_path,
                                                  info, n_classes)
            except UNREADABLE as error:
                skipped[index] = str(error)
                continue
            truths.append(mask.ravel())
            predictions.append(self.segment_array(image).ravel())
        if not truths:
            raise InvalidInput(f"None of the {len(pairs)} images with masks "
                               f"could be read.")
        scores = iou_and_dice(np.concatenate(truths),
                              np.concatenate(predictions), n_classes)
        foreground = scores["iou"][1:]
        scores["mean_iou"] = float(np.nanmean(foreground)) \
            if np.isfinite(foreground).any() else float("nan")
        scores["skipped"] = skipped
        return scores

    def predict_masks(self, table: Table, out_dir, callback=None
                      ) -> Table:
        """Write a mask PNG per image into `out_dir`; return the table with
        a mask column pointing at them.

        `out_dir` is a folder, which must exist and be writable (checked
        before any work); existing files are never overwritten (a numbered
        suffix is added). It may also be, inside its ``with`` block, a
        :class:`~orangecontrib.deepimage.files.NewFiles` or
        :class:`~orangecontrib.deepimage.files.OwnFolder` (a widget's own
        folder, which keeps one run's masks). Rows whose image cannot be
        read get an empty mask value.
        """
        from orangecontrib.deepimage.files import NewFiles
        if isinstance(out_dir, NewFiles):
            return self._predict_masks(table, out_dir, callback)
        with NewFiles(out_dir) as files:
            return self._predict_masks(table, files, callback)

    def _predict_masks(self, table, files, callback):
        from PIL import Image
        paths = paths_of(table)
        labels = self.segment(paths, callback)
        names = []
        for path, label in zip(paths, labels):
            if label is None:
                names.append("")
                continue
            stem = os.path.splitext(os.path.basename(path))[0]
            buffer = io.BytesIO()
            Image.fromarray(label.astype(np.uint8)
                            if label.max(initial=0) < 256 else label) \
                .save(buffer, format="PNG")
            written = files.write(f"{stem}-mask.png", buffer.getvalue())
            names.append(os.path.basename(written))
        out_dir = files.path
        mask_var = StringVariable(
            get_unique_names(table.domain, "predicted mask"))
        mask_var.attributes.update({
            "type": "image", "origin": out_dir, "mask": "class",
            "classes": ",".join(self.class_names)})
        domain = Domain(table.domain.attributes, table.domain.class_vars,
                        table.domain.metas + (mask_var,))
        result = table.transform(domain)
        if len(result):  # (an empty table's metas cannot be unlocked)
            with result.unlocked(result.metas):
                result.metas[:, -1] = names
        return result

    def __repr__(self):
        return (f"SegmentationModel({self.backbone!r}, "
                f"classes={list(self.class_names)!r})")
