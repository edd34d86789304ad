"""Grad-CAM: where in an image the network looked for a class.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the last
convolutional feature map by the mean gradient of the class score with
respect to it; the positive part of the weighted sum, scaled to 0..1 and
resized to the image, is the heatmap.

It works for an :class:`~orangecontrib.deepimage.classification.ImageClassifierModel`
and for a backbone's own ImageNet head (pass its registry key)::

    >>> from orangecontrib.deepimage.explain import grad_cam
    >>> heatmaps = grad_cam("squeezenet", ["cat.jpg"])
"""
import io
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from Orange.data import Table

from orangecontrib.deepimage.backbones import get_backbone, imagenet_labels
from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.images import (
    iter_image_batches, paths_of)

__all__ = ["grad_cam", "explain_images", "Explanation", "overlay_heatmap",
           "EvaluatedPredictions", "evaluated_predictions"]


@dataclass
class Explanation:
    """Grad-CAM heatmaps and predictions for a sequence of images.

    Attributes
    ----------
    heatmaps : list of numpy.ndarray or None
        Per image, a (height, width) map in 0..1 at the network's input
        size; None for images that could not be read.
    classes : numpy.ndarray
        Index of the explained class per image (-1 where skipped).
    probabilities : numpy.ndarray
        Probability of the explained class per image (NaN where skipped).
    predicted : numpy.ndarray
        Index of the predicted class per image (-1 where skipped).
    class_names : tuple of str
    skipped : dict
        Position -> reason, for images that could not be read.
    """
    heatmaps: List[Optional[np.ndarray]]
    classes: np.ndarray
    probabilities: np.ndarray
    predicted: np.ndarray
    class_names: tuple
    skipped: Dict[int, str] = field(default_factory=dict)


def _grad_model(model):
    """(keras.Model pixels → [feature map, probabilities], input size, names)."""
    import keras
    from orangecontrib.deepimage.classification import ImageClassifierModel
    from orangecontrib.deepimage.preprocessing import ImagePreprocessing
    if isinstance(model, ImageClassifierModel):
        # The trunk is a nested model: its own `.output` is not connected
        # to the network's input, so the graph is rebuilt from its layers
        # (shared, not copied).
        network = model.network
        pixels = keras.Input(network.input_shape[1:], name="pixels")
        x = network.get_layer("preprocessing")(pixels)
        feature_map = network.get_layer("trunk")(x, training=False)
        output = network.get_layer("head")(
            network.get_layer("pool")(feature_map))
        grad_model = keras.Model(pixels, [feature_map, output])
        return grad_model, model.input_size, model.class_names
    if isinstance(model, str):
        backbone = get_backbone(model)
        network = backbone.build()
        height, width = backbone.input_size
        pixels = keras.Input((height, width, 3), name="pixels")
        x = ImagePreprocessing(backbone.preprocessing)(pixels)
        inner = keras.Model(
            network.input,
            [network.get_layer(backbone.feature_map_layer).output,
             network.output])
        feature_map, output = inner(x)
        if backbone.outputs_logits:
            output = keras.layers.Softmax()(output)
        return (keras.Model(pixels, [feature_map, output]),
                backbone.input_size, imagenet_labels())
    raise TypeError(f"grad_cam explains an ImageClassifierModel or a "
                    f"backbone key. Received: {type(model).__name__}")


def _class_indices(target, class_names, n):
    """Target per image as class indices (None: the predicted class)."""
    if target is None:
        return None
    targets = [target] * n if np.isscalar(target) or isinstance(target, str) \
        else list(target)
    indices = []
    for value in targets:
        if isinstance(value, str):
            if value not in class_names:
                raise InvalidInput(
                    f"Unknown class. Received: target={value!r}")
            value = list(class_names).index(value)
        indices.append(int(value))
    return np.array(indices)


def explain_images(model, table_or_paths: Union[Table, Sequence[str]],
                   target=None, batch_size: int = 16,
                   callback=None) -> Explanation:
    """Grad-CAM heatmaps with the explained class and its probability.

    Parameters
    ----------
    model : ImageClassifierModel or str
        A trained classifier, or a backbone key for its ImageNet head.
    table_or_paths : Orange.data.Table or sequence of str
    target : int, str or sequence, optional
        Class (index or name) to explain, for all images or per image (an
        index of -1: that image's predicted class); default: each image's
        predicted class.
    batch_size : int
    callback : callable, optional
        ``callback(fraction)``; may raise to cancel.

    Returns
    -------
    Explanation
    """
    import tensorflow as tf
    grad_model, (height, width), class_names = _grad_model(model)
    paths = paths_of(table_or_paths)
    n = len(paths)
    targets = _class_indices(target, class_names, n)
    result = Explanation([None] * n, np.full(n, -1), np.full(n, np.nan),
                         np.full(n, -1), tuple(class_names))
    done = 0
    for batch, _ in iter_image_batches(paths, (width, height), batch_size):
        result.skipped.update(batch.skipped)
        if len(batch.indices):
            pixels = tf.constant(batch.pixels, tf.float32)
            chosen = None if targets is None else targets[batch.indices]
            maps, explained, probs, predicted = _grad_cam_batch(
                grad_model, pixels, chosen)
            for row, index in enumerate(batch.indices):
                result.heatmaps[index] = maps[row]
                result.classes[index] = explained[row]
                result.probabilities[index] = probs[row]
                result.predicted[index] = predicted[row]
        done += len(batch.indices) + len(batch.skipped)
        if callback is not None:
            callback(done / max(n, 1))
    return result


def _grad_cam_batch(grad_model, pixels, targets):
    import tensorflow as tf
    with tf.GradientTape() as tape:
        feature_map, probabilities = grad_model(pixels, training=False)
        feature_map = tf.cast(feature_map, tf.float32)
        probabilities = tf.cast(probabilities, tf.float32)
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        if targets is None:
            explained = predicted
        else:  # -1: the predicted class
            chosen = tf.constant(targets, tf.int32)
            explained = tf.where(chosen >= 0, chosen, predicted)
        score = tf.gather(probabilities, explained, batch_dims=1)
    gradients = tape.gradient(score, feature_map)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(channel_weights * feature_map, axis=-1))
    cam = tf.image.resize(cam[..., None], pixels.shape[1:3],
                          method="bilinear")[..., 0]
    top = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, top)
    return (cam.numpy(), explained.numpy(), score.numpy(),
            predicted.numpy())


@dataclass
class EvaluatedPredictions:
    """Predictions that Orange's evaluation added to a table.

    Attributes
    ----------
    column : str
        The name of the column with the predictions.
    classes : numpy.ndarray
        Per row, the index of the predicted class among the model's
        class names (-1 where unknown).
    cross_validated : bool
        Whether the table says they come from cross-validation (Test &
        Score's "Fold" column).
    """
    column: str
    classes: np.ndarray
    cross_validated: bool


def evaluated_predictions(data: Table, class_names: Sequence[str],
                          model_name: Optional[str] = None
                          ) -> Optional[EvaluatedPredictions]:
    """The predictions of Test & Score that `data` carries, if any.

    Test & Score's Predictions output adds a column named as the learner
    (with the class's values) and a "Fold" column; Confusion Matrix's
    selected data adds "<class>(<learner>)". A column named so for
    `model_name` is taken first; else the only column that looks so.

    Returns
    -------
    EvaluatedPredictions or None
    """
    domain = data.domain
    class_var = domain.class_var
    if class_var is None or not class_var.is_discrete:
        return None
    values = tuple(class_var.values)
    candidates = [var for var in domain.metas
                  if var.is_discrete and tuple(var.values) == values
                  and var is not class_var]
    folds = any(var.name == "Fold" for var in domain.metas)
    chosen = None
    if model_name:
        wanted = (model_name, f"{class_var.name}({model_name})")
        chosen = next((var for var in candidates if var.name in wanted),
                      None)
    if chosen is None:
        pattern = re.compile(re.escape(class_var.name) + r"\(.+\)")
        matching = [var for var in candidates if pattern.fullmatch(var.name)]
        if len(matching) == 1:
            chosen = matching[0]
        elif folds and len(candidates) == 1:
            chosen = candidates[0]
    if chosen is None:
        return None
    names = list(class_names)
    index = np.array([names.index(value) if value in names else -1
                      for value in chosen.values] + [-1])
    column = data.get_column(chosen)
    known = np.where(np.isnan(column), -1, column).astype(int)
    return EvaluatedPredictions(chosen.name, index[known], folds)


def grad_cam(model, table_or_paths: Union[Table, Sequence[str]],
             target=None) -> List[Optional[np.ndarray]]:
    """Return a Grad-CAM heatmap per image (None for unreadable ones).

    Parameters
    ----------
    model : ImageClassifierModel or str
        A trained classifier, or a backbone registry key (its ImageNet head).
    table_or_paths : Orange.data.Table or sequence of str
    target : int, str or sequence, optional
        The class to explain; default: the predicted class.

    Returns
    -------
    list of numpy.ndarray or None
        (height, width) maps in 0..1 at the network's input size.
    """
    return explain_images(model, table_or_paths, target).heatmaps


def overlay_heatmap(image, heatmap: np.ndarray, opacity: float = 0.5):
    """Blend a heatmap (0..1) over a PIL image as a red-yellow colour map.

    Returns
    -------
    PIL.Image.Image
        An RGB image of the size of `image`.
    """
    from PIL import Image
    heat = Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8))
    heat = np.asarray(heat.resize(image.size, Image.Resampling.BILINEAR),
                      dtype=np.float32) / 255
    colours = np.stack([np.clip(heat * 2, 0, 1),           # red first,
                        np.clip(heat * 2 - 1, 0, 1),       # then yellow
                        np.zeros_like(heat)], axis=-1) * 255
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = opacity * heat[..., None]
    blended = base * (1 - alpha) + colours * alpha
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def write_heatmaps(explanation: Explanation, paths: Sequence[Optional[str]],
                   out_dir, opacity: float = 0.5) -> List[Optional[str]]:
    """Write each image with its heatmap overlaid as a PNG.

    Parameters
    ----------
    explanation : Explanation
    paths : sequence of str or None
        The explained images.
    out_dir : str or NewFiles or OwnFolder
        A folder (files are added, never overwritten: a numbered suffix is
        added to a taken name), or, inside its ``with`` block, where a
        widget writes (see :mod:`orangecontrib.deepimage.files`).
    opacity : float

    Returns
    -------
    list of str or None
        The written file per image (None where there is no heatmap).
    """
    from orangecontrib.deepimage.files import NewFiles
    if isinstance(out_dir, NewFiles):  # the caller's ``with`` block
        return _write_heatmaps(explanation, paths, out_dir, opacity)
    with NewFiles(out_dir) as files:
        return _write_heatmaps(explanation, paths, files, opacity)


def _write_heatmaps(explanation, paths, files, opacity):
    from orangecontrib.deepimage.images import load_image
    written = []
    for path, heatmap in zip(paths, explanation.heatmaps):
        if heatmap is None:
            written.append(None)
            continue
        image = overlay_heatmap(load_image(path), heatmap, opacity)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        stem = os.path.splitext(os.path.basename(path))[0]
        written.append(files.write(f"{stem}-gradcam.png", buffer.getvalue()))
    return written
