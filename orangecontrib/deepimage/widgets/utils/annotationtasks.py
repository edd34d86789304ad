"""The work of Annotate Images that runs in threads, Qt-free.

Module-level ``run_…(…, state)`` functions for the widget's task
(:func:`run_assistance`, :func:`run_suggestions`: a model's predictions,
embeddings, what to label next) and for its quick tasks (:func:`run_box`,
:func:`run_superpixels`, :func:`run_scribbles`), in the form
:class:`~Orange.widgets.utils.concurrent.ConcurrentWidgetMixin` calls them:
`state` is a ``TaskState`` (or anything with ``is_interruption_requested``,
``set_status``, ``set_progress_value`` and ``set_partial_result``).
"""
import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from orangecontrib.deepimage.annotation import (
    mask_from_box, scribble_segmenter, suggest_next, superpixels)
from orangecontrib.deepimage.errors import raise_if_cancelled
from orangecontrib.deepimage.images import ImageSkipped, load_image
from orangecontrib.deepimage.segmentation import SegmentationModel
from orangecontrib.deepimage.widgets.utils.tasks import task_progress

__all__ = ["Assistance", "run_assistance", "run_suggestions", "run_box",
           "run_superpixels", "run_scribbles", "pack_mask", "unpack_mask",
           "SCRIBBLE_PIXELS", "scribble_scale"]


def pack_mask(mask: np.ndarray) -> bytes:
    """A class mask as PNG bytes (predicted masks wait in memory so)."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def unpack_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@dataclass
class Assistance:
    """What :func:`run_assistance` gives the widget."""
    #: classifier: ``(N, C)`` probabilities (NaN rows: unreadable)
    probabilities: Optional[np.ndarray] = None
    #: segmentation model: row -> predicted mask (PNG bytes)
    masks: Dict[int, bytes] = field(default_factory=dict)
    #: ``(N, D)`` embeddings (NaN rows: none)
    embeddings: Optional[np.ndarray] = None
    suggested: List[int] = field(default_factory=list)


def run_suggestions(probabilities: Optional[np.ndarray],
                    embeddings: Optional[np.ndarray], labelled: np.ndarray,
                    n: int, state) -> List[int]:
    """Rows to label next (see :func:`~orangecontrib.deepimage.annotation.
    suggest_next`); rows without an embedding or a prediction are left
    out."""
    known = np.ones(len(labelled), bool)
    for values in (probabilities, embeddings):
        if values is not None:
            known &= ~np.isnan(values).any(axis=1)
    rows = np.flatnonzero(known)
    if n <= 0 or not len(rows) or (probabilities is None
                                   and embeddings is None):
        return []
    raise_if_cancelled(state)
    picked = suggest_next(
        None if probabilities is None else probabilities[rows],
        None if embeddings is None else embeddings[rows],
        labelled[rows], n=n)
    return [int(rows[i]) for i in picked]


def run_assistance(paths: Sequence[Optional[str]], model,
                   lut: Optional[np.ndarray],
                   embeddings: Optional[np.ndarray], embed: bool,
                   unannotated: Sequence[int], labelled: np.ndarray, n: int,
                   state) -> Assistance:
    """Predict with `model` and embed the images (in the widget's task).

    A segmentation model predicts the `unannotated` rows, the first of
    them first (the one shown); each mask goes to the widget as soon as it
    is ready (a partial result ``(row, png)``), its classes mapped through
    `lut`. An image classifier gives every row's class probabilities.
    With `embed`, the shared SqueezeNet embedder computes the embeddings
    that are not given. Then come the suggestions.
    """
    result = Assistance(embeddings=embeddings)
    share = 0.5 if embed else 1.0
    if isinstance(model, SegmentationModel):
        state.set_status("Predicting masks…")
        for done, row in enumerate(unannotated):
            raise_if_cancelled(state)
            try:
                image = np.asarray(load_image(paths[row]), dtype=np.uint8)
            except ImageSkipped:
                continue
            mask = lut[model.segment_array(image)]
            result.masks[row] = pack_mask(mask)
            state.set_partial_result((row, result.masks[row]))
            state.set_progress_value(100 * share * (done + 1)
                                     / len(unannotated))
    elif model is not None:
        state.set_status("Predicting labels…")
        result.probabilities, _ = model.predict_paths(
            paths, callback=task_progress(state, 0, 100 * share))
    if embed:
        from orangecontrib.deepimage.embedding import shared_embedder
        state.set_status("Embedding the images…")
        embedded = shared_embedder("squeezenet").embed_paths(
            paths, callback=task_progress(state, 100 * (1 - share), 100))
        vectors = embedded.vectors
        size = next((len(v) for v in vectors if v is not None), 1)
        result.embeddings = np.vstack(
            [np.full(size, np.nan, np.float32) if v is None else v
             for v in vectors]) if len(vectors) else None
    state.set_status("Choosing what to label next…")
    result.suggested = run_suggestions(result.probabilities,
                                       result.embeddings, labelled, n, state)
    return result


def run_box(image: np.ndarray, box: Tuple[int, int, int, int],
            state) -> np.ndarray:
    """The object in the box (GrabCut, or a threshold in grey images)."""
    raise_if_cancelled(state)
    return mask_from_box(image, box)


def run_superpixels(image: np.ndarray, state) -> np.ndarray:
    """SLIC superpixels of the image, for the superpixel tool's clicks."""
    raise_if_cancelled(state)
    return superpixels(image)


#: The scribble segmenter works on images of at most this many pixels
#: (larger ones are shrunk, the prediction enlarged back): its features
#: take about 150 bytes a pixel, 2 GB for a 12-megapixel photo.
SCRIBBLE_PIXELS = 1_000_000


def scribble_scale(shape: Tuple[int, ...]) -> float:
    """The factor that shrinks an image of `shape` to SCRIBBLE_PIXELS."""
    return min(1.0, float(np.sqrt(SCRIBBLE_PIXELS / max(1, shape[0]
                                                          * shape[1]))))


def _resized(array: np.ndarray, scale: float, labels: bool) -> np.ndarray:
    import cv2
    if scale >= 1:
        return array
    height, width = array.shape[:2]
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    if not labels:
        return cv2.resize(array, size, interpolation=cv2.INTER_AREA)
    # a stroke thinner than the shrinking would fall between the samples:
    # widen it first (where strokes meet, the larger value wins)
    radius = int(np.ceil(1 / scale))
    kernel = np.ones((radius, radius), np.uint8)
    return cv2.resize(cv2.dilate(array.astype(np.uint8), kernel), size,
                      interpolation=cv2.INTER_NEAREST)


def run_scribbles(images: Sequence, scribbles: Sequence[np.ndarray],
                  image: np.ndarray, segmenter, state):
    """Fit a scribble segmenter on the strokes of all images (unless
    `segmenter` is given) and predict the shown `image` with it; images
    larger than SCRIBBLE_PIXELS are shrunk for both.

    Returns ``(segmenter, mask)``, the mask at `image`'s size."""
    import cv2
    if segmenter is None:
        state.set_status("Learning from the scribbles…")
        pixels, marks = [], []
        for picture, strokes in zip(images, scribbles):
            raise_if_cancelled(state)
            if isinstance(picture, str):
                picture = np.asarray(load_image(picture), dtype=np.uint8)
            scale = scribble_scale(picture.shape)
            pixels.append(_resized(picture, scale, False))
            marks.append(_resized(strokes, scale, True))
        segmenter = scribble_segmenter(pixels, marks)
    raise_if_cancelled(state)
    scale = scribble_scale(image.shape)
    mask = segmenter.predict(_resized(image, scale, False))
    if mask.shape != image.shape[:2]:
        mask = cv2.resize(mask, image.shape[1::-1],
                          interpolation=cv2.INTER_NEAREST)
    return segmenter, mask
