"""Segment Anything: a mask from a click or a box, with no training.

:class:`SegmentAnything` wraps KerasHub's ``SAMImageSegmenter`` (Kirillov
et al., "Segment Anything", ICCV 2023): given an image and a prompt — a few
points marked as object (1) or background (0), or a box around the object —
it returns a boolean mask of the object at the image's full resolution::

    >>> from orangecontrib.deepimage.sam import SegmentAnything
    >>> sam = SegmentAnything()                  # sam_base_sa1b, 375 MB
    >>> mask = sam.mask_from_box(rgb, (120, 40, 380, 300))
    >>> mask = sam.mask_from_points(rgb, [(250, 170), (30, 30)], [1, 0])

The weights come as KerasHub presets, loaded as the KerasHub detectors of
:mod:`~orangecontrib.deepimage.detection` load theirs (one loader,
:func:`~orangecontrib.deepimage.detection.load_keras_hub_task`): from a
preset folder written by ``save_to_preset`` or its URL (`preset_path`);
else from the weights mirror (`mirror`, or ``$DEEPIMAGE_WEIGHTS_MIRROR``)
holding that folder under the preset's name; else KerasHub downloads the
preset on first use. Without them, :class:`WeightsUnavailable` names the
preset, its size and these ways of providing it.

The image goes in as Segment Anything's own predictor prepares it: its
longer side resized to the model's input (1024 pixels for the released
presets), the rest padded at the bottom and right with the mean colour
(what the network sees as zero), and the prompt's coordinates scaled by the
same factors (:func:`to_input_coords`). The network's low-resolution mask
logits are enlarged to the input, cropped to the image's part and resized
to the image's size before the threshold at 0 (:func:`logits_to_mask`).

The image's embedding (the expensive part, a ViT over the whole image) is
kept for the last few images, so that more clicks on the same image cost
only the small prompt decoder. A :class:`SegmentAnything` is not
thread-safe: use it from one thread at a time.

Importing this module does not import TensorFlow or KerasHub; loading the
model does.
"""
import hashlib
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from orangecontrib.deepimage.detection import (
    DetectorSpec, load_keras_hub_task)
from orangecontrib.deepimage.errors import InvalidInput, raise_if_cancelled

__all__ = ["SegmentAnything", "SAM_PRESETS", "resized_size",
           "to_input_coords", "logits_to_mask"]

Box = Tuple[float, float, float, float]
Progress = Optional[Callable[[float], None]]
DownloadProgress = Optional[Callable[[int, Optional[int]], None]]

_SAM_LICENCE = ("Apache-2.0 (Segment Anything's code and weights, and "
                "KerasHub)")
_SAM_INPUT = ("colour; the longer side resized to 1024 and padded to "
              "1024×1024 with the mean colour; the preset's own scaling")


def _sam_spec(source: str, name: str, size_mb: float,
              description: str) -> DetectorSpec:
    return DetectorSpec(
        key=source, name=name, description=description, classes=(),
        kind="segment-anything", input=_SAM_INPUT, max_side=1024,
        weights="download", source=source, size_mb=size_mb,
        licence=_SAM_LICENCE,
        score="the model's own estimate of the mask's intersection over "
              "union with the object",
        options={"task": "SAMImageSegmenter"}, package="keras_hub")


#: The KerasHub presets of Segment Anything (KerasHub 0.32). Sizes are the
#: float32 parameters: 93,735,728 for the base model (KerasHub's preset
#: metadata); for the other two, KerasHub's metadata has the counts the
#: other way round (641 M for "large", 312 M for "huge") from the published
#: ViT-L (about 308 M) and ViT-H (about 636 M) models, whose checkpoints are
#: 1.25 and 2.56 GB, so the sizes here follow the architectures.
SAM_PRESETS: Dict[str, DetectorSpec] = {spec.key: spec for spec in [
    _sam_spec("sam_base_sa1b", "Segment Anything (ViT-B, KerasHub)", 374.9,
              "The base model trained on SA-1B: a few seconds an image on "
              "a CPU, then a fraction of a second a click."),
    _sam_spec("sam_large_sa1b", "Segment Anything (ViT-L, KerasHub)", 1249.4,
              "The large model trained on SA-1B; slower, a little better."),
    _sam_spec("sam_huge_sa1b", "Segment Anything (ViT-H, KerasHub)", 2564.4,
              "The huge model trained on SA-1B; the best, and the slowest."),
]}

#: ImageNet's mean colour (0..1), which the ViTDet image encoder subtracts.
_MEAN = np.array([0.485, 0.456, 0.406])


# --- the coordinate conventions -------------------------------------------

def resized_size(width: int, height: int, side: int) -> Tuple[int, int]:
    """The ``(width, height)`` of an image resized so that its longer side
    is `side`, rounded as Segment Anything's ``ResizeLongestSide`` rounds."""
    scale = side / max(width, height)
    return (min(side, max(1, int(width * scale + 0.5))),
            min(side, max(1, int(height * scale + 0.5))))


def to_input_coords(coords, width: int, height: int, side: int
                    ) -> np.ndarray:
    """Image coordinates ``(..., 2)`` as ``(x, y)`` in the model's input.

    `coords` are ``(x, y)`` in the pixels of the ``width`` × ``height``
    image (x to the right, y downwards, as boxes ``(x0, y0, x1, y1)`` are
    written); the model sees the image resized to :func:`resized_size` in
    the top-left corner of its ``side`` × ``side`` input, so x is scaled by
    the ratio of the widths and y by that of the heights.
    """
    coords = np.asarray(coords, dtype=np.float64)
    new_width, new_height = resized_size(width, height, side)
    return coords * np.array([new_width / width, new_height / height])


def logits_to_mask(logits: np.ndarray, width: int, height: int, side: int,
                   threshold: float = 0.0) -> np.ndarray:
    """The boolean ``(height, width)`` mask of low-resolution mask logits.

    `logits` is a square array over the model's whole ``side`` × ``side``
    input (256 × 256 for the released presets). As Segment Anything's own
    post-processing does, they are enlarged (bilinear) to the input, cropped
    to the image's part of it (the rest is padding) and resized to the
    image's full size before the threshold.
    """
    import cv2
    logits = np.asarray(logits, dtype=np.float32)
    new_width, new_height = resized_size(width, height, side)
    full = cv2.resize(logits, (side, side), interpolation=cv2.INTER_LINEAR)
    full = full[:new_height, :new_width]
    if (new_width, new_height) != (width, height):
        full = cv2.resize(full, (width, height),
                          interpolation=cv2.INTER_LINEAR)
    return full > threshold


def _rgb(image) -> np.ndarray:
    """`image` (array or PIL image) as a (height, width, 3) uint8 array."""
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[..., :3]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise InvalidInput(f"Expected a (height, width, 3) RGB image. "
                           f"Received an array of shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


class SegmentAnything:
    """Segment Anything (KerasHub's ``SAMImageSegmenter``) for prompts.

    Parameters
    ----------
    preset : str
        A key of :data:`SAM_PRESETS`: ``"sam_base_sa1b"`` (375 MB),
        ``"sam_large_sa1b"`` or ``"sam_huge_sa1b"``. It names the weights
        that are downloaded (or looked for on the mirror), and the model in
        messages.
    preset_path : str, optional
        A preset folder (``SAMImageSegmenter.save_to_preset``) or the URL
        of one on a web server, used instead of the download.
    mirror : str, optional
        A URL or folder holding preset folders under their names (else
        ``$DEEPIMAGE_WEIGHTS_MIRROR``).
    threshold : float
        Mask logits above it are the object (Segment Anything's own is 0).
    cache_size : int
        Embeddings of this many images are kept.

    Raises
    ------
    InvalidInput
        For an unknown preset.
    """

    def __init__(self, preset: str = "sam_base_sa1b",
                 preset_path: Optional[str] = None,
                 mirror: Optional[str] = None, threshold: float = 0.0,
                 cache_size: int = 2):
        if preset not in SAM_PRESETS:
            raise InvalidInput(
                f"Unknown Segment Anything preset. Received: "
                f"preset={preset!r}; the presets are "
                f"{', '.join(SAM_PRESETS)}")
        self.spec = SAM_PRESETS[preset]
        self.preset = preset
        self.preset_path = preset_path or None
        self.mirror = mirror or None
        self.threshold = float(threshold)
        self.cache_size = max(1, int(cache_size))
        self.model = None
        self._embeddings: "OrderedDict[bytes, np.ndarray]" = OrderedDict()

    # --- the model ---------------------------------------------------------

    @property
    def size_mb(self) -> float:
        """The size of the preset's weights, for telling the user."""
        return self.spec.size_mb

    def availability(self) -> str:
        """A short phrase for the user (as :meth:`DetectorSpec.availability`
        says it): what is needed before the first use."""
        if self.model is not None:
            return "loaded"
        if self.preset_path:
            return "from " + self.preset_path
        return self.spec.availability()

    def load(self, progress: DownloadProgress = None, state=None) -> None:
        """Load the model now (else on the first prompt).

        Parameters
        ----------
        progress : callable, optional
            ``progress(bytes_done, bytes_total)`` while a preset is fetched
            from a URL or the mirror (e.g. the widgets' ``download_progress``);
            it may raise to stop.
        state : TaskState, optional
            Cancelled before loading when it asks to stop.

        Raises
        ------
        WeightsUnavailable
            With the preset's name, size and the ways to provide it.
        """
        if self.model is not None:
            return
        raise_if_cancelled(state)
        model = load_keras_hub_task(self.spec, self.preset_path, self.mirror,
                                    progress)
        backbone = model.backbone
        encoder = backbone.image_encoder
        side = int(encoder.input.shape[1])
        converter = getattr(model.preprocessor, "image_converter", None)
        # The colour that the converter and the encoder's normalisation
        # turn into zero: Segment Anything pads with zeros after both.
        scale = getattr(converter, "scale", None)
        offset = getattr(converter, "offset", None)
        scale = np.asarray(1.0 if scale is None else scale, np.float64)
        offset = np.asarray(0.0 if offset is None else offset, np.float64)
        self._pad = np.broadcast_to(
            np.clip((_MEAN - offset) / scale, 0, 255), (3,)).astype(
                np.float32)
        self._converter = converter
        self._encoder = encoder
        self._prompt_encoder = backbone.prompt_encoder
        self._mask_decoder = backbone.mask_decoder
        self.side = side
        self.model = model

    @property
    def input_size(self) -> int:
        """The side of the model's square input (after :meth:`load`)."""
        self.load()
        return self.side

    # --- the image -----------------------------------------------------------

    def model_input(self, image) -> np.ndarray:
        """The ``(side, side, 3)`` float32 picture the model sees: `image`
        resized (longer side = ``side``) and padded with the mean colour at
        the bottom and right, before the preset's scaling."""
        import cv2
        self.load()
        rgb = _rgb(image)
        height, width = rgb.shape[:2]
        new_width, new_height = resized_size(width, height, self.side)
        if (new_width, new_height) != (width, height):
            shrink = new_width < width
            rgb = cv2.resize(rgb, (new_width, new_height),
                             interpolation=cv2.INTER_AREA if shrink
                             else cv2.INTER_LINEAR)
        canvas = np.empty((self.side, self.side, 3), np.float32)
        canvas[...] = self._pad
        canvas[:new_height, :new_width] = rgb
        return canvas

    def image_embedding(self, image, state=None) -> np.ndarray:
        """The image encoder's output for `image` (kept for the last
        ``cache_size`` images)."""
        self.load()
        rgb = _rgb(image)
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16,
                              person=b"deepimage-sam").digest() \
            + repr(rgb.shape).encode()
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        raise_if_cancelled(state)
        batch = self.model_input(rgb)[None]
        if self._converter is not None:
            batch = np.asarray(self._converter(batch))
        embedding = np.asarray(self._encoder.predict(batch, verbose=0))
        self._embeddings[key] = embedding
        while len(self._embeddings) > self.cache_size:
            self._embeddings.popitem(last=False)
        return embedding

    # --- prompts -------------------------------------------------------------

    def _decode(self, embedding: np.ndarray, points: np.ndarray,
                labels: np.ndarray, boxes: np.ndarray):
        """Mask logits and IoU estimates of a batch of prompts, in input
        coordinates: `points` ``(n, k, 2)``, `labels` ``(n, k)``, `boxes`
        ``(n, 0 or 1, 2, 2)``. Returns ``(n, masks, m, m)`` logits and
        ``(n, masks)`` scores."""
        prompts = self._prompt_encoder(
            points=points.astype(np.float32),
            labels=labels.astype(np.float32),
            boxes=boxes.astype(np.float32))
        out = self._mask_decoder(image_embeddings=embedding, **prompts)
        return np.asarray(out["masks"]), np.asarray(out["iou_pred"])

    def _prompt(self, width: int, height: int,
                points: Optional[np.ndarray], labels: Optional[np.ndarray],
                box: Optional[Box]):
        """One prompt as model inputs (without the batch axis)."""
        if points is None or len(points) == 0:
            points = np.zeros((0, 2))
            labels = np.zeros((0,))
        else:
            points = to_input_coords(points, width, height, self.side)
        if box is None:
            # Without a box Segment Anything adds a padding point (label
            # -1) after the points.
            points = np.concatenate([points, np.zeros((1, 2))])
            labels = np.concatenate([labels, [-1.0]])
            boxes = np.zeros((0, 2, 2))
        else:
            corners = np.reshape(np.asarray(box, np.float64), (2, 2))
            boxes = to_input_coords(corners, width, height, self.side)[None]
        return points, labels, boxes

    def _choose(self, logits: np.ndarray, scores: np.ndarray,
                multimask: bool) -> Tuple[np.ndarray, float]:
        """The mask of one prompt: the first (single-mask) output, or the
        best-scoring of the others for an ambiguous prompt."""
        index = 0
        if multimask and logits.shape[0] > 1:
            index = 1 + int(np.argmax(scores[1:]))
        return logits[index], float(scores[index])

    def segment(self, image, points=None, labels=None,
                box: Optional[Box] = None, multimask: Optional[bool] = None,
                state=None) -> Tuple[np.ndarray, float]:
        """The mask of one prompt, and the model's estimate of its quality.

        Parameters
        ----------
        image : numpy.ndarray or PIL.Image.Image
            An RGB (or grey, or RGBA) image.
        points : sequence of (x, y), optional
            Points in the image's pixels.
        labels : sequence of int, optional
            Per point 1 (the object) or 0 (background); all 1 if omitted.
        box : (x0, y0, x1, y1), optional
            A box around the object in the image's pixels (x1, y1
            exclusive); clipped to the image.
        multimask : bool, optional
            Choose the best of the model's three alternative masks (what
            Segment Anything recommends for a single point, which is
            ambiguous: a shirt or the person?) instead of its single mask.
            None: only for a single point without a box.
        state : TaskState, optional
            Cancelled before the image is encoded when it asks to stop.

        Returns
        -------
        (numpy.ndarray, float)
            The boolean ``(height, width)`` mask and the model's estimate of
            its intersection over union with the object.

        Raises
        ------
        InvalidInput
            For no prompt, labels that do not match the points, a label
            other than 0 or 1, or an empty box.
        WeightsUnavailable
            When the model cannot be loaded.
        """
        rgb = _rgb(image)
        height, width = rgb.shape[:2]
        points, labels = self._check_points(points, labels)
        if box is not None:
            box = self._check_box(box, width, height)
        if points is None and box is None:
            raise InvalidInput("Segment Anything needs a prompt: points or "
                               "a box.")
        if multimask is None:
            multimask = box is None and len(points) == 1
        embedding = self.image_embedding(rgb, state)
        points, labels, boxes = self._prompt(width, height, points, labels,
                                             box)
        logits, scores = self._decode(embedding, points[None], labels[None],
                                      boxes[None])
        chosen, score = self._choose(logits[0], scores[0], multimask)
        return logits_to_mask(chosen, width, height, self.side,
                              self.threshold), score

    def mask_from_points(self, image, points, labels=None,
                         state=None) -> np.ndarray:
        """The boolean ``(height, width)`` mask of the object at `points`
        (``(x, y)`` in the image's pixels; `labels` 1 for the object, 0 for
        background, all 1 if omitted). See :meth:`segment`."""
        if points is None or len(points) == 0:
            raise InvalidInput("mask_from_points needs at least one point.")
        return self.segment(image, points, labels, state=state)[0]

    def mask_from_box(self, image, box: Box, state=None) -> np.ndarray:
        """The boolean ``(height, width)`` mask of the object in `box`
        (``(x0, y0, x1, y1)`` in the image's pixels). See :meth:`segment`."""
        return self.segment(image, box=box, state=state)[0]

    def masks_for_boxes(self, image, boxes: Sequence[Box],
                        progress: Progress = None, state=None,
                        batch_size: int = 16) -> List[np.ndarray]:
        """A boolean ``(height, width)`` mask for each box, in order.

        The image is encoded once; the boxes go through the prompt decoder
        `batch_size` at a time. ``progress(fraction)`` after each batch (it
        may raise to stop); `state` is checked between batches.
        """
        rgb = _rgb(image)
        height, width = rgb.shape[:2]
        boxes = [self._check_box(box, width, height) for box in boxes]
        if not boxes:
            return []
        embedding = self.image_embedding(rgb, state)
        masks = []
        for start in range(0, len(boxes), batch_size):
            raise_if_cancelled(state)
            chunk = boxes[start:start + batch_size]
            corners = np.reshape(np.asarray(chunk, np.float64), (-1, 1, 2, 2))
            corners = to_input_coords(corners, width, height, self.side)
            logits, scores = self._decode(
                embedding, np.zeros((len(chunk), 0, 2)),
                np.zeros((len(chunk), 0)), corners)
            for one_logits, one_scores in zip(logits, scores):
                chosen, _ = self._choose(one_logits, one_scores, False)
                masks.append(logits_to_mask(chosen, width, height, self.side,
                                            self.threshold))
            if progress is not None:
                progress(len(masks) / len(boxes))
        return masks

    # --- checks --------------------------------------------------------------

    @staticmethod
    def _check_points(points, labels):
        if points is None or len(points) == 0:
            if labels is not None and len(labels):
                raise InvalidInput("Labels were given without points.")
            return None, None
        points = np.asarray(points, np.float64)
        if points.ndim != 2 or points.shape[1] != 2 \
                or not np.isfinite(points).all():
            raise InvalidInput(f"Points must be (x, y) pairs. Received an "
                               f"array of shape {points.shape}")
        labels = np.ones(len(points)) if labels is None \
            else np.asarray(labels, np.float64).ravel()
        if len(labels) != len(points):
            raise InvalidInput(f"Each point needs one label. Received "
                               f"{len(points)} points and {len(labels)} "
                               f"labels")
        if not np.isin(labels, (0, 1)).all():
            raise InvalidInput(f"Labels must be 1 (the object) or 0 "
                               f"(background). Received: {labels.tolist()}")
        return points, labels

    @staticmethod
    def _check_box(box, width: int, height: int) -> Box:
        values = np.asarray(box, np.float64).ravel()
        if values.shape != (4,) or not np.isfinite(values).all():
            raise InvalidInput(f"A box is (x0, y0, x1, y1). Received: "
                               f"{box!r}")
        x0, y0, x1, y1 = (float(v) for v in values)
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        if not (x1 > x0 and y1 > y0):
            raise InvalidInput(f"The box {tuple(values.tolist())} is empty "
                               f"inside the {width}×{height} image.")
        return x0, y0, x1, y1
