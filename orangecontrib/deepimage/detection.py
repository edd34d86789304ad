"""Find objects in photos with pretrained detectors: no training.

Faces to blur before photos go online, number plates to blank in car
adverts, people to count at a demonstration: :class:`ObjectDetector` runs a
pretrained detector from the registry :data:`DETECTORS` over images and
returns boxes; :func:`detections_to_masks` turns the boxes (or, with
Segment Anything, :mod:`~orangecontrib.deepimage.sam`, the object's shape
in each box) into mask files in the add-on's mask-column convention (see
:func:`~orangecontrib.deepimage.images.find_mask_column`), so that
:mod:`~orangecontrib.deepimage.edit` (Edit Images) blurs, pixelates, fills
or removes what was found, and Measure and Segmentation Preview show it::

    >>> from orangecontrib.deepimage import ObjectDetector
    >>> detector = ObjectDetector("faces")
    >>> detector(["astronaut.jpg"])      # one list of detections per path
    [[Detection(label='face', score=0.999...,
                box=(177.0, 66.0, 272.0, 161.0))]]
    >>> objects, counts, skipped = detector(table)   # Orange tables

The detectors that work offline ship inside the ``opencv-python-headless``
4.x wheel (OpenCV 5 no longer ships the cascades, hence the pin in
``setup.py``): Viola–Jones Haar cascades for frontal faces and for
(Russian) number plates, and the Dalal–Triggs HOG people detector. They are
classics, far weaker than modern COCO detectors, but they need no network.
KerasHub's RetinaNet trained on COCO (80 classes) is listed too: it needs
the ``keras-hub`` package and its weights, downloaded on first use or read
from a preset folder (``save_to_preset``) on disk or on a web server.

Boxes are ``(x0, y0, x1, y1)`` in the pixels of the upright image at full
resolution (x to the right, y downwards, the maxima exclusive). Large
images are reduced for detection (each entry's ``max_side``) and the boxes
mapped back.
"""
import math
import os
from dataclasses import dataclass, field
from typing import (
    Callable, Dict, List, Optional, Sequence, Tuple, Union)

import numpy as np

from Orange.data import (ContinuousVariable, DiscreteVariable, Domain,
                         StringVariable, Table)
from Orange.data.util import get_unique_names

from orangecontrib.deepimage.errors import (
    InvalidInput, WeightsUnavailable)
from orangecontrib.deepimage.images import (
    ImageSkipped, image_paths, load_image, require_image_column)

__all__ = ["Detection", "DetectorSpec", "DETECTORS", "get_detector_spec",
           "ObjectDetector", "non_max_suppression", "select_detections",
           "detections_to_masks", "detection_tables", "boxes_to_labels",
           "cascade_file", "preset_folder", "keras_hub_message",
           "load_keras_hub_task", "COCO_90",
           "VOC_CLASSES"]

Box = Tuple[float, float, float, float]
Progress = Optional[Callable[[float], None]]


@dataclass(frozen=True)
class Detection:
    """One object found in an image.

    Attributes
    ----------
    label : str
        Its class, one of the detector's classes.
    score : float
        Confidence from 0 to 1 (see each detector's ``score`` note).
    box : (float, float, float, float)
        ``(x0, y0, x1, y1)`` in full-resolution pixels of the upright
        image; x1 and y1 are exclusive.
    mask : numpy.ndarray or None
        For models that give one, a boolean mask of the object over the
        whole image, at the resolution the image was detected at (large
        images are reduced): :meth:`full_mask` gives it at full resolution.
    """
    label: str
    score: float
    box: Box
    mask: Optional[np.ndarray] = field(default=None, compare=False,
                                       repr=False)

    @property
    def area(self) -> float:
        """The box's area in pixels."""
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def full_mask(self, width: int, height: int) -> Optional[np.ndarray]:
        """The mask at the image's full ``width`` × ``height`` (None when
        the model gives no mask)."""
        if self.mask is None or self.mask.shape == (height, width):
            return self.mask
        import cv2
        return cv2.resize(self.mask.view(np.uint8), (width, height),
                          interpolation=cv2.INTER_NEAREST).astype(bool)


# --- the registry ---------------------------------------------------------

@dataclass(frozen=True)
class DetectorSpec:
    """A pretrained detector and everything needed to run it.

    Attributes
    ----------
    key : str
        Registry key, e.g. ``"faces"``.
    name : str
        Name shown to the user.
    description : str
        One sentence for the user.
    classes : tuple of str
        What it finds.
    kind : str
        ``"cascade"`` (OpenCV Haar cascade), ``"hog"`` (OpenCV HOG people
        detector) or ``"keras-hub"`` (a KerasHub object detector, loaded
        from a preset).
    input : str
        Its input convention, in words.
    max_side : int
        Images whose longer side is larger are reduced to this for
        detection; boxes are mapped back to full resolution.
    weights : str
        Where the weights come from: ``"bundled"`` (inside an installed
        package) or ``"download"``.
    source : str
        The file inside its package, or the KerasHub preset's name.
    size_mb : float
        Size of the weights in MB (for downloads, what the user waits for).
    licence : str
        The licence of the model and its weights.
    score : str
        What the score means for this detector.
    options : dict
        Parameters of the backend (cascade file, scale step, ...).
    order : int
        Position in lists shown to the user.
    package : str
        An optional package the detector needs (its import name); "" when
        the add-on's own dependencies suffice.
    """
    key: str
    name: str
    description: str
    classes: Tuple[str, ...]
    kind: str
    input: str
    max_side: int
    weights: str
    source: str
    size_mb: float
    licence: str
    score: str = ""
    options: Dict[str, object] = field(default_factory=dict)
    order: int = 0
    package: str = ""

    @property
    def offline(self) -> bool:
        """True when the weights come with an installed package."""
        return self.weights == "bundled"

    @property
    def installed(self) -> bool:
        """True when the package the detector needs is installed."""
        import importlib.util
        return not self.package or \
            importlib.util.find_spec(self.package) is not None

    def availability(self) -> str:
        """A short phrase for the user: offline, or the download's size."""
        if not self.installed:
            return f"needs pip install {self.package.replace('_', '-')}"
        if self.offline:
            return "works offline"
        return f"downloads {self.size_mb:.0f} MB"


_CASCADE_SCORE = ("the logistic function of the cascade's last-stage sum "
                  "(OpenCV's level weight): above 0.5 the last stage votes "
                  "'object'; overlapping windows are first grouped as "
                  "OpenCV does (min_neighbors)")
_OPENCV_LICENCE = ("OpenCV (Apache-2.0); the cascade file carries the Intel "
                   "open-source licence (BSD-style) in its header")
#: COCO category ids (1 to 90, with the gaps of the original annotations)
#: and their names, as KerasHub's RetinaNet COCO preset predicts them (the
#: mapping of keras-io's guide "Object Detection with KerasHub").
COCO_90 = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane",
    6: "bus", 7: "train", 8: "truck", 9: "boat", 10: "traffic light",
    11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow",
    22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee",
    35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite",
    39: "baseball bat", 40: "baseball glove", 41: "skateboard",
    42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl",
    52: "banana", 53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli",
    57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake",
    62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse",
    75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book",
    85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}

#: Pascal VOC's classes; in segmentation masks 0 is the background and
#: these are 1 to 20.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
    "potted plant", "sheep", "sofa", "train", "tv monitor")

DETECTORS: Dict[str, DetectorSpec] = {spec.key: spec for spec in [
    DetectorSpec(
        key="faces", name="Faces (OpenCV cascade)",
        description="Frontal faces, upright, at least 24 pixels wide after "
                    "reduction; profiles and tilted faces are missed.",
        classes=("face",), kind="cascade",
        input="grey, histogram-equalised; 24×24 window over a pyramid",
        max_side=1280, weights="bundled",
        source="haarcascade_frontalface_default.xml", size_mb=0.9,
        licence=_OPENCV_LICENCE, score=_CASCADE_SCORE,
        options={"scale_factor": 1.1, "min_neighbors": 5,
                 "min_size": (24, 24), "equalize": True},
        order=0),
    DetectorSpec(
        key="faces-mtcnn", name="Faces (MTCNN)",
        description="Faces, frontal and in profile, at least about 20 "
                    "pixels wide after reduction; a small neural network "
                    "(three cascaded CNNs), slower than the OpenCV cascade "
                    "and much better; needs the mtcnn package.",
        classes=("face",), kind="mtcnn",
        input="colour; an image pyramid through three small CNNs",
        max_side=1280, weights="bundled",
        source="the weights inside the mtcnn package (mtcnn/assets)",
        size_mb=2.0, licence="MIT (the mtcnn package and its weights)",
        score="the last network's face probability; candidates below 0.7 "
              "are dropped by MTCNN itself",
        package="mtcnn", order=1),
    DetectorSpec(
        key="people", name="People (OpenCV HOG)",
        description="Whole people standing upright, at least about 50 "
                    "pixels tall in a photo of 640 pixels (a twelfth of its "
                    "height); sitting, partly hidden or cut-off people are "
                    "often missed.",
        classes=("person",), kind="hog",
        input="colour; 64×128 window of gradient histograms over a pyramid",
        max_side=1600, weights="bundled",
        source="cv2.HOGDescriptor_getDefaultPeopleDetector()", size_mb=0.02,
        licence="OpenCV (Apache-2.0); Dalal–Triggs detector trained on "
                "INRIA Person",
        score="the logistic function of the linear SVM's margin",
        options={"win_stride": (8, 8), "padding": (8, 8), "scale": 1.05,
                 "enlarge_to": 1600, "max_enlarge": 3.0},
        order=2),
    DetectorSpec(
        key="number-plates", name="Number plates (OpenCV cascade)",
        description="Car number plates of the Russian format, seen from the "
                    "front; other formats, tilted or blurred plates are "
                    "often missed.",
        classes=("number plate",), kind="cascade",
        input="grey; 60×20 window over a pyramid",
        max_side=1600, weights="bundled",
        source="haarcascade_russian_plate_number.xml", size_mb=0.08,
        licence=_OPENCV_LICENCE, score=_CASCADE_SCORE,
        options={"scale_factor": 1.1, "min_neighbors": 5,
                 "min_size": (60, 20), "equalize": False},
        order=3),
    DetectorSpec(
        key="coco-retinanet", name="COCO objects (RetinaNet, KerasHub)",
        description="80 everyday classes (person, car, bus, truck, "
                    "bicycle, dog ...), far better than the classics; needs "
                    "the keras-hub package and its weights (a download, or "
                    "a preset folder).",
        classes=tuple(COCO_90.values()), kind="keras-hub",
        input="colour; padded to a square and resized to the preset's "
              "800×800; the preset's own scaling",
        max_side=800, weights="download",
        source="retinanet_resnet50_fpn_coco",
        # 34,121,239 float32 parameters (KerasHub's preset metadata)
        size_mb=136.5,
        licence="Apache-2.0 (KerasHub); the weights under the terms of "
                "their KerasHub model page on Kaggle",
        score="the class probability (sigmoid) of the box",
        options={"task": "RetinaNetObjectDetector",
                 "label_ids": tuple(COCO_90.items())},
        package="keras_hub", order=10),
    DetectorSpec(
        key="voc-deeplab", name="VOC pixel masks (DeepLabV3+, KerasHub)",
        description="Pixel masks of 20 Pascal VOC classes (person, car, "
                    "bus, cat, dog ...); each connected region is an "
                    "object, masked to its outline; needs the keras-hub "
                    "package and its weights (a download, or a preset "
                    "folder).",
        classes=VOC_CLASSES, kind="keras-hub",
        input="colour; padded to a square and resized to the preset's "
              "512×512; the preset's own scaling",
        max_side=512, weights="download",
        source="deeplab_v3_plus_resnet50_pascalvoc",
        # 39,190,656 float32 parameters (KerasHub's preset metadata)
        size_mb=156.8,
        licence="Apache-2.0 (KerasHub); the weights under the terms of "
                "their KerasHub model page on Kaggle",
        score="the mean class probability over the region",
        options={"task": "DeepLabV3ImageSegmenter", "segmenter": True,
                 "min_area": 0.0005},
        package="keras_hub", order=11),
]}


def get_detector_spec(key: str) -> DetectorSpec:
    """Return the registry entry `key`.

    Raises
    ------
    InvalidInput
        For a key that is not in :data:`DETECTORS`.
    """
    if key not in DETECTORS:
        raise InvalidInput(f"Unknown detector. Received: model={key!r}; "
                           f"the detectors are {', '.join(DETECTORS)}")
    return DETECTORS[key]


def cascade_file(name: str) -> str:
    """The path of an OpenCV cascade inside the installed wheel.

    Raises
    ------
    WeightsUnavailable
        When the installed OpenCV does not ship it (OpenCV 5 does not).
    """
    import cv2
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "") or ""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise WeightsUnavailable(
            f"The installed OpenCV ({cv2.__version__}) does not ship the "
            f"cascade {name}. OpenCV 5 removed the cascades; install the 4.x "
            f"wheel: pip install 'opencv-python-headless>=4.5,<5'.")
    return path


# --- the backends ---------------------------------------------------------

def _sigmoid(values) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(values, dtype=float)))


class _CascadeBackend:
    """An OpenCV Haar cascade."""

    def __init__(self, spec: DetectorSpec):
        import cv2
        path = cascade_file(spec.source)
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise WeightsUnavailable(f"OpenCV cannot read the cascade {path}")
        self.label = spec.classes[0]
        self.options = spec.options

    def __call__(self, rgb: np.ndarray) -> List[Tuple[str, float, Box]]:
        import cv2
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self.options.get("equalize"):
            grey = cv2.equalizeHist(grey)
        min_size = tuple(self.options["min_size"])
        if grey.shape[0] < min_size[1] or grey.shape[1] < min_size[0]:
            return []
        boxes, _, weights = self.cascade.detectMultiScale3(
            grey, scaleFactor=float(self.options["scale_factor"]),
            minNeighbors=int(self.options["min_neighbors"]),
            minSize=min_size, outputRejectLevels=True)
        scores = _sigmoid(np.ravel(weights))
        return [(self.label, float(score), (x, y, x + w, y + h))
                for (x, y, w, h), score in zip(np.reshape(boxes, (-1, 4)),
                                               scores)]


class _HOGBackend:
    """OpenCV's HOG + linear SVM people detector."""

    def __init__(self, spec: DetectorSpec):
        import cv2
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.label = spec.classes[0]
        self.options = spec.options

    def __call__(self, rgb: np.ndarray) -> List[Tuple[str, float, Box]]:
        import cv2
        height, width = rgb.shape[:2]
        # People smaller than the 64×128 window are only found in an
        # enlarged image: smaller photos are enlarged (at most
        # max_enlarge times) until their longer side is enlarge_to.
        factor = min(float(self.options["max_enlarge"]),
                     float(self.options["enlarge_to"]) / max(height, width))
        if factor > 1.0:
            rgb = cv2.resize(rgb, (round(width * factor),
                                   round(height * factor)),
                             interpolation=cv2.INTER_CUBIC)
        else:
            factor = 1.0
        if rgb.shape[0] < 128 or rgb.shape[1] < 64:
            return []
        boxes, weights = self.hog.detectMultiScale(
            cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
            winStride=tuple(self.options["win_stride"]),
            padding=tuple(self.options["padding"]),
            scale=float(self.options["scale"]))
        scores = _sigmoid(np.ravel(weights))
        return [(self.label, float(score),
                 (x / factor, y / factor, (x + w) / factor, (y + h) / factor))
                for (x, y, w, h), score in zip(np.reshape(boxes, (-1, 4)),
                                               scores)]


#: Candidates below this probability are not kept from KerasHub detectors.
CANDIDATE_SCORE = 0.05
#: The files ``save_to_preset`` writes for an object detector; the first two
#: must be there.
PRESET_FILES = ("config.json", "metadata.json", "task.json",
                "preprocessor.json", "image_converter.json",
                "model.weights.h5", "task.weights.h5")
_REQUIRED_PRESET_FILES = 2
_PRESET_TIMEOUT = 30


def keras_hub_message(spec: DetectorSpec, reason: str = "") -> str:
    """What a user reads when a KerasHub model cannot be loaded.

    `spec` is a :class:`DetectorSpec` of a KerasHub model: its ``name``,
    ``source`` (the preset), ``size_mb`` and ``options["task"]`` (the
    ``keras_hub.models`` class) are named.
    """
    from orangecontrib.deepimage.weights import MIRROR_ENV
    why = f" ({reason})" if reason else ""
    task = spec.options.get("task", "ObjectDetector")
    return (
        f"{spec.name} could not be loaded{why}. It needs the keras-hub "
        f"package (pip install keras-hub) and the KerasHub preset "
        f"{spec.source} (about {spec.size_mb:.0f} MB), which is downloaded "
        f"on first use when the computer is online. Offline: on a computer "
        f"with a network run keras_hub.models.{task}.from_preset("
        f"'{spec.source}').save_to_preset('<folder>'), then copy the folder "
        f"here, or serve it on a web server, and give the folder or its URL "
        f"as the preset; or put it on the weights mirror ({MIRROR_ENV}, a "
        f"URL or folder) as {spec.source}/.")


def _is_url(text: str) -> bool:
    return text.split("://", 1)[0].lower() in ("http", "https") \
        and "://" in text


class _PresetMissing(Exception):
    """A preset could not be fetched; the text says why."""


def preset_folder(spec: DetectorSpec, preset: str,
                  progress: Optional[Callable[[int, Optional[int]], None]]
                  = None) -> str:
    """A local folder holding `preset`: a folder as it is, a URL fetched.

    The files of a preset served over HTTP (the folder ``save_to_preset``
    wrote) are downloaded once into ``$KERAS_HOME/deepimage-presets``;
    ``progress(bytes_done, bytes_total)`` is called during the download
    (the total is that of the files seen so far, None when the server does
    not say); it may raise (e.g. Cancelled) to stop.

    Raises
    ------
    WeightsUnavailable
        When the folder has no preset, or the URL cannot be fetched.
    """
    try:
        return _fetch_preset(spec, preset, progress)
    except _PresetMissing as error:
        raise WeightsUnavailable(keras_hub_message(spec, str(error))) \
            from None


def _fetch_preset(spec: DetectorSpec, preset: str, progress=None) -> str:
    """:func:`preset_folder`, raising :class:`_PresetMissing`."""
    import hashlib
    import shutil
    import tempfile
    import urllib.error
    import urllib.request
    from orangecontrib.deepimage.weights import keras_cache_dir
    if not _is_url(preset):
        if not os.path.isfile(os.path.join(preset, PRESET_FILES[0])):
            raise _PresetMissing(f"{preset} is not a KerasHub preset folder")
        return preset
    digest = hashlib.sha1(preset.encode("utf-8")).hexdigest()[:12]
    folder = os.path.join(os.path.dirname(keras_cache_dir()),
                          "deepimage-presets", f"{spec.key}-{digest}")
    if os.path.isfile(os.path.join(folder, ".complete")):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".preset-", dir=os.path.dirname(folder))
    done, total = 0, 0
    try:
        for index, name in enumerate(PRESET_FILES):
            url = preset.rstrip("/") + "/" + name
            try:
                with urllib.request.urlopen(
                        url, timeout=_PRESET_TIMEOUT) as response, \
                        open(os.path.join(partial, name), "wb") as out:
                    length = response.headers.get("Content-Length")
                    if total is not None and length and length.isdigit():
                        total += int(length)
                    else:
                        total = None
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            except urllib.error.HTTPError as error:
                if error.code == 404 and index >= _REQUIRED_PRESET_FILES:
                    continue  # an optional file of the preset
                raise _PresetMissing(
                    f"{url}: HTTP {error.code} {error.reason}") from None
            except OSError as error:  # URLError, timeouts, a full disk
                reason = getattr(error, "reason", error)
                raise _PresetMissing(f"{url}: {reason}") from None
        open(os.path.join(partial, ".complete"), "w").close()
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(partial, folder)
    finally:
        if os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def load_keras_hub_task(spec: DetectorSpec, preset: Optional[str] = None,
                        mirror: Optional[str] = None,
                        progress: Optional[Callable[[int, Optional[int]],
                                                    None]] = None):
    """Load the KerasHub task of `spec` (``spec.options["task"]``).

    The preset comes from `preset` (a folder written by ``save_to_preset``
    or its URL, see :func:`preset_folder`) when it is given; else from the
    weights mirror (`mirror`, else ``$DEEPIMAGE_WEIGHTS_MIRROR``: a URL or
    folder holding the preset folder under its name, ``spec.source``) when
    the mirror has it; else KerasHub loads ``spec.source`` by name, from its
    own cache or downloaded on first use. `progress` is as for
    :func:`preset_folder` (KerasHub's own download does not report it).

    Raises
    ------
    WeightsUnavailable
        With :func:`keras_hub_message`: no keras-hub, no preset where it was
        looked for, or a folder that holds another model.
    """
    from orangecontrib.deepimage.weights import mirror_from_environment
    try:
        import keras_hub
    except ImportError:
        raise WeightsUnavailable(keras_hub_message(
            spec, "the keras-hub package is not installed")) from None
    task = getattr(keras_hub.models, spec.options.get("task",
                                                      "ObjectDetector"))
    failures = []
    if preset:
        source = preset_folder(spec, preset, progress)
    else:
        source = spec.source
        mirror = mirror or mirror_from_environment()
        if mirror:
            location = mirror.rstrip("/") + "/" + spec.source \
                if _is_url(mirror) else os.path.join(mirror, spec.source)
            try:
                source = _fetch_preset(spec, location, progress)
            except _PresetMissing as error:
                failures.append(f"not on the mirror: {error}")
    try:
        return task.from_preset(source)
    except (OSError, ValueError) as error:
        # No network, no such preset, or a folder of another model.
        failures.append(str(error))
        raise WeightsUnavailable(keras_hub_message(
            spec, "; ".join(failures))) from error


class _KerasHubBackend:
    """A KerasHub object detector (e.g. RetinaNet) loaded from a preset.

    Each image is padded (right and bottom) to the preset's aspect ratio and
    resized to its input size, so that the preset's own resizing changes
    nothing and its boxes map back by one factor.
    """

    def __init__(self, spec: DetectorSpec, preset: Optional[str] = None):
        model = load_keras_hub_task(spec, preset)
        self.model = model
        self._configure(model, spec)

    def _configure(self, model, spec: DetectorSpec):
        decoder = model.prediction_decoder
        config = decoder.get_config()
        if "confidence_threshold" in config:
            # Keep the candidates: the threshold and the suppression are
            # ObjectDetector's (per class, and changeable at once).
            config.update(confidence_threshold=CANDIDATE_SCORE,
                          iou_threshold=0.95)
            model.prediction_decoder = type(decoder).from_config(config)
        converter = getattr(model.preprocessor, "image_converter", None)
        size = getattr(converter, "image_size", None)
        self.input_size = tuple(size) if size else None  # (height, width)
        self.format = model.bounding_box_format
        label_ids = spec.options.get("label_ids")
        self.names = dict(label_ids) if label_ids \
            else dict(enumerate(spec.classes))

    def _letterbox(self, rgb: np.ndarray):
        """(input, scale, (width, height) of the photo in the input)."""
        import cv2
        height, width = rgb.shape[:2]
        if self.input_size is None:
            return rgb, 1.0, (width, height)
        in_height, in_width = self.input_size
        scale = min(in_height / height, in_width / width)
        size = (max(1, min(in_width, round(width * scale))),
                max(1, min(in_height, round(height * scale))))
        resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA
                             if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.zeros((in_height, in_width, 3), np.uint8)
        canvas[:size[1], :size[0]] = resized
        return canvas, scale, size

    def __call__(self, rgb: np.ndarray) -> List[Tuple[str, float, Box]]:
        import keras
        rgb, scale, _ = self._letterbox(rgb)
        out = self.model.predict(rgb[None].astype(np.float32), verbose=0)
        boxes = np.asarray(keras.utils.bounding_boxes.convert_format(
            out["boxes"], source=self.format, target="xyxy",
            height=rgb.shape[0], width=rgb.shape[1]))[0]
        scores = np.asarray(out["confidence"])[0]
        labels = np.asarray(out["labels"])[0]
        count = int(np.asarray(out["num_detections"]).ravel()[0])
        found = []
        for box, score, label in zip(boxes[:count], scores[:count],
                                     labels[:count]):
            if int(label) not in self.names or not score > 0:
                continue
            x0, y0, x1, y1 = (float(v) / scale for v in box)
            found.append((self.names[int(label)], float(score),
                          (x0, y0, x1, y1)))
        return found


class _KerasHubSegmenterBackend(_KerasHubBackend):
    """A KerasHub segmenter (DeepLabV3+): each connected region of a class
    is an object, with its box and its mask."""

    def _configure(self, model, spec):
        converter = getattr(model.preprocessor, "image_converter", None)
        size = getattr(converter, "image_size", None)
        self.input_size = tuple(size) if size else None
        self.softmax = getattr(model, "activation", None) is None
        self.min_area = float(spec.options.get("min_area", 0.0))
        # Class index 0 is the background.
        self.names = dict(enumerate(spec.classes, start=1))

    def __call__(self, rgb: np.ndarray):
        import cv2
        height, width = rgb.shape[:2]
        canvas, scale, (used_width, used_height) = self._letterbox(rgb)
        out = np.asarray(self.model.predict(
            canvas[None].astype(np.float32), verbose=0))[0]
        out = out[:used_height, :used_width].astype(np.float64)
        if self.softmax:
            out = np.exp(out - out.max(axis=-1, keepdims=True))
            out /= out.sum(axis=-1, keepdims=True)
        labels = out.argmax(axis=-1)
        min_area = max(1, self.min_area * used_width * used_height)
        found = []
        for index in np.unique(labels):
            if int(index) not in self.names:
                continue
            binary = (labels == index).astype(np.uint8)
            count, regions, stats, _ = cv2.connectedComponentsWithStats(
                binary, connectivity=8)
            for region in range(1, count):
                x, y, w, h, area = stats[region]
                if area < min_area:
                    continue
                mask = regions == region
                score = float(out[..., index][mask].mean())
                mask = cv2.resize(mask.view(np.uint8), (width, height),
                                  interpolation=cv2.INTER_NEAREST)
                found.append((self.names[int(index)], score,
                              (x / scale, y / scale, (x + w) / scale,
                               (y + h) / scale), mask.astype(bool)))
        return found


class _MTCNNBackend:
    """The MTCNN face detector of the ``mtcnn`` package (TensorFlow), on
    the GPU when there is one."""

    def __init__(self, spec: DetectorSpec):
        try:
            from mtcnn import MTCNN
        except ImportError:
            raise WeightsUnavailable(
                f"{spec.name} needs the mtcnn package, which bundles its "
                f"weights (about {spec.size_mb:.0f} MB): pip install mtcnn"
            ) from None
        import tensorflow as tf
        device = "GPU:0" if tf.config.list_physical_devices("GPU") \
            else "CPU:0"
        self.mtcnn = MTCNN(device=device)
        self.label = spec.classes[0]

    def __call__(self, rgb: np.ndarray) -> List[Tuple[str, float, Box]]:
        if min(rgb.shape[:2]) < 12:  # smaller than MTCNN's first window
            return []
        faces = self.mtcnn.detect_faces(rgb, box_format="xyxy")
        return [(self.label, float(face["confidence"]),
                 tuple(float(v) for v in face["box"]))
                for face in faces]


def _build_backend(spec: DetectorSpec, preset: Optional[str] = None):
    if spec.kind == "cascade":
        return _CascadeBackend(spec)
    if spec.kind == "hog":
        return _HOGBackend(spec)
    if spec.kind == "mtcnn":
        return _MTCNNBackend(spec)
    if spec.kind == "keras-hub" and spec.options.get("segmenter"):
        return _KerasHubSegmenterBackend(spec, preset)
    if spec.kind == "keras-hub":
        return _KerasHubBackend(spec, preset)
    raise InvalidInput(f"Unknown detector kind. Received: kind={spec.kind!r}")


# --- boxes ----------------------------------------------------------------

def non_max_suppression(detections: Sequence[Detection], min_score: float,
                        overlap: float) -> List[int]:
    """Indices of the detections kept, class by class, best first.

    A detection is dropped when its score is below `min_score`, or when it
    overlaps a better one of its class by more than `overlap`
    (intersection over union), as :func:`cv2.dnn.NMSBoxes` decides.
    Greedy suppression and the score threshold commute: suppressing at
    ``min_score=0`` and then dropping the scores below a threshold keeps
    the same boxes as suppressing at that threshold, which is what lets a
    widget show the count for any threshold at once.
    """
    import cv2
    kept = []
    for label in sorted({det.label for det in detections}):
        indices = [i for i, det in enumerate(detections) if det.label == label]
        boxes = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
                 for x0, y0, x1, y1 in (detections[i].box for i in indices)]
        scores = [float(detections[i].score) for i in indices]
        chosen = cv2.dnn.NMSBoxes(boxes, scores, float(min_score),
                                  float(overlap))
        kept.extend(indices[int(i)] for i in np.ravel(chosen))
    return sorted(kept, key=lambda i: -detections[i].score)


def select_detections(candidates: Sequence[Detection], min_score: float,
                      overlap: float,
                      classes: Optional[Sequence[str]] = None
                      ) -> List[Detection]:
    """The candidates of the chosen `classes` (None: all) that pass the
    score threshold and non-max suppression, best first."""
    if classes is not None:
        candidates = [det for det in candidates if det.label in classes]
    return [candidates[i] for i in
            non_max_suppression(candidates, min_score, overlap)]


def _reduce(rgb: np.ndarray, max_side: int) -> Tuple[np.ndarray, float]:
    """The image reduced to fit `max_side`, and the factor to map back."""
    import cv2
    height, width = rgb.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return rgb, 1.0
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return small, width / size[0]


def _to_full(box: Box, factor: float, width: int, height: int) -> Box:
    x0, y0, x1, y1 = (float(v) * factor for v in box)
    return (min(max(0.0, x0), width), min(max(0.0, y0), height),
            min(max(0.0, x1), width), min(max(0.0, y1), height))


# --- the detector ---------------------------------------------------------

class ObjectDetector:
    """Find objects with a pretrained detector from :data:`DETECTORS`.

    Parameters
    ----------
    model : str or DetectorSpec
        A key of :data:`DETECTORS`: ``"faces"``, ``"people"``,
        ``"number-plates"`` (offline) or ``"coco-retinanet"`` (KerasHub);
        or a :class:`DetectorSpec` of one's own.
    classes : sequence of str, optional
        Keep only these classes (e.g. ``["person"]``); None for all.
    min_score : float
        Drop detections with a lower score (0 to 1).
    overlap : float
        Of boxes of one class that overlap by more than this (intersection
        over union), only the best is kept.
    max_side : int, optional
        Reduce larger images to this longer side for detection; None for
        the detector's own (``DetectorSpec.max_side``).
    preset : str, optional
        For KerasHub detectors: a preset folder (from ``save_to_preset``)
        or the URL of one on a web server, instead of the download.

    Raises
    ------
    InvalidInput
        For an unknown model or class, or a score or overlap outside 0..1.
    """

    def __init__(self, model: Union[str, DetectorSpec] = "faces",
                 classes: Optional[Sequence[str]] = None,
                 min_score: float = 0.5, overlap: float = 0.5,
                 max_side: Optional[int] = None,
                 preset: Optional[str] = None):
        self.spec = model if isinstance(model, DetectorSpec) \
            else get_detector_spec(model)
        if classes is not None:
            classes = list(classes)
            unknown = [cls for cls in classes if cls not in self.spec.classes]
            if unknown:
                raise InvalidInput(
                    f"{self.spec.name} does not find {', '.join(unknown)}. "
                    f"Received: classes={classes!r}; its classes are "
                    f"{', '.join(self.spec.classes)}")
        for name, value in (("min_score", min_score), ("overlap", overlap)):
            if not 0 <= value <= 1:
                raise InvalidInput(f"{name} must be between 0 and 1. "
                                   f"Received: {name}={value!r}")
        if max_side is not None and max_side < 32:
            raise InvalidInput(f"max_side must be at least 32. "
                               f"Received: max_side={max_side!r}")
        self.model = self.spec.key
        self.preset = preset or None
        self.classes = classes
        self.min_score = float(min_score)
        self.overlap = float(overlap)
        self.max_side = int(max_side or self.spec.max_side)
        self._backend = None

    @property
    def class_names(self) -> List[str]:
        """The classes this detector reports (after `classes`)."""
        return list(self.classes) if self.classes is not None \
            else list(self.spec.classes)

    def load(self) -> None:
        """Load the detector's weights now (else on the first image).

        Raises
        ------
        WeightsUnavailable
            When the weights are missing and cannot be fetched.
        """
        if self._backend is None:
            self._backend = _build_backend(self.spec, self.preset)

    def candidates(self, rgb: np.ndarray) -> List[Detection]:
        """Every detection of the chosen classes in one ``(height, width,
        3)`` uint8 RGB array, before the score threshold and non-max
        suppression (see :func:`select_detections`)."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InvalidInput(f"Expected a (height, width, 3) RGB image. "
                               f"Received an array of shape {rgb.shape}")
        self.load()
        height, width = rgb.shape[:2]
        small, factor = _reduce(rgb, self.max_side)
        found = []
        for item in self._backend(small):
            label, score, box = item[:3]
            if self.classes is not None and label not in self.classes:
                continue
            # A mask stays at the reduced size: a widget holds the
            # candidates of many images (Detection.full_mask enlarges it).
            mask = item[3] if len(item) > 3 else None
            found.append(Detection(label, float(score),
                                   _to_full(box, factor, width, height),
                                   mask))
        return found

    def select(self, candidates: Sequence[Detection]) -> List[Detection]:
        """The `candidates` that pass this detector's `min_score` and
        `overlap`, best first."""
        return select_detections(candidates, self.min_score, self.overlap)

    def detect_array(self, rgb: np.ndarray) -> List[Detection]:
        """Detections in one ``(height, width, 3)`` uint8 RGB array."""
        return self.select(self.candidates(rgb))

    def detect_paths(self, paths: Sequence[Optional[str]],
                     progress: Progress = None, candidates: bool = False
                     ) -> Tuple[List[Optional[List[Detection]]],
                                List[Tuple[int, str]],
                                List[Optional[Tuple[int, int]]]]:
        """Detect objects in the images at `paths`, one by one.

        Parameters
        ----------
        paths : sequence of str or None
        progress : callable, optional
            ``progress(fraction)`` after each image; it may raise to stop.
        candidates : bool
            Return every candidate (:meth:`candidates`) instead of the
            selected detections.

        Returns
        -------
        (list, list, list)
            Per path its detections (None when it could not be read); the
            (position, reason) of each path that could not be read; per
            path the image's (width, height), or None.
        """
        self.load()
        results, skipped, sizes = [], [], []
        for row, path in enumerate(paths):
            try:
                image = load_image(path)
            except ImageSkipped as error:
                results.append(None)
                sizes.append(None)
                skipped.append((row, str(error)))
            else:
                found = self.candidates(np.asarray(image))
                results.append(found if candidates else self.select(found))
                sizes.append(image.size)
            if progress is not None:
                progress((row + 1) / max(1, len(paths)))
        return results, skipped, sizes

    def __call__(self, data: Union[Table, Sequence[Optional[str]]],
                 progress: Progress = None):
        """Detect objects in a table's images or in a sequence of paths.

        Parameters
        ----------
        data : Orange.data.Table or sequence of str
            A table with an image column, or image paths or URLs.
        progress : callable, optional
            ``progress(fraction)`` after each image; it may raise (e.g.
            :class:`~orangecontrib.deepimage.errors.Cancelled`) to stop.

        Returns
        -------
        list or (Table, Table, Table)
            For paths, one list of :class:`Detection` per path (None for an
            image that cannot be read). For a table, ``(objects, counts,
            skipped)`` as :func:`detection_tables` gives them.
        """
        if isinstance(data, Table):
            paths = image_paths(data, require_image_column(data))
            results, skipped, _ = self.detect_paths(paths, progress)
            return detection_tables(data, results, skipped, self.class_names)
        results, _, _ = self.detect_paths(list(data), progress)
        return results


# --- tables ---------------------------------------------------------------

SKIP_REASON = "reason skipped"


def _count_name(label: str) -> str:
    return f"{label} count"


def detection_tables(table: Table,
                     results: Sequence[Optional[List[Detection]]],
                     skipped: Sequence[Tuple[int, str]],
                     class_names: Sequence[str]
                     ) -> Tuple[Optional[Table], Optional[Table],
                                Optional[Table]]:
    """The tables of :meth:`ObjectDetector.__call__` for a table.

    Parameters
    ----------
    table : Orange.data.Table
        The input, with an image column.
    results : list
        Per row, its detections, or None for a row that was skipped.
    skipped : list of (int, str)
        Skipped rows and their reasons.
    class_names : sequence of str
        The classes that are counted (a column each, zeros included).

    Returns
    -------
    (objects, counts, skipped) : Orange tables, or None where empty
        *objects*: a row per object, with its image (an image column with
        the input's origin), class, score, box ``x0, y0, x1, y1`` and area
        in full-resolution pixels. *counts*: the input's rows whose image
        was read, with a count per class (0 where nothing was found).
        *skipped*: the input's rows that were not read, with the reason.
    """
    image_var = require_image_column(table)
    values = table.get_column(image_var)
    rows = [row for row, found in enumerate(results) if found is not None]

    source = StringVariable(get_unique_names([], image_var.name))
    source.attributes = dict(image_var.attributes)
    class_var = DiscreteVariable("class", values=tuple(class_names))
    names = ["score", "x0", "y0", "x1", "y1", "area"]
    numeric = [ContinuousVariable("score", number_of_decimals=3)] + [
        ContinuousVariable(name, number_of_decimals=0) for name in names[1:]]
    row_var = ContinuousVariable("image row", number_of_decimals=0)
    object_rows = [(row, det) for row in rows for det in results[row]
                   if det.label in class_names]
    objects = None
    if object_rows:
        domain = Domain(numeric, metas=[source, class_var, row_var])
        x = np.array([[det.score, *det.box, det.area]
                      for _, det in object_rows], dtype=float)
        metas = np.array(
            [[_value(image_var, values[row]),
              float(class_names.index(det.label)), float(row)]
             for row, det in object_rows], dtype=object)
        objects = Table.from_numpy(domain, x, metas=metas)
        objects.name = "Objects"

    counts = None
    if rows:
        count_names = get_unique_names(table.domain,
                                       [_count_name(c) for c in class_names])
        count_vars = [ContinuousVariable(name, number_of_decimals=0)
                      for name in count_names]
        domain = Domain(table.domain.attributes + tuple(count_vars),
                        table.domain.class_vars, table.domain.metas)
        counts = table[rows].transform(domain)
        matrix = np.array([[sum(det.label == cls for det in results[row])
                            for cls in class_names] for row in rows],
                          dtype=float).reshape(len(rows), len(class_names))
        if class_names:  # (-0 would be every column)
            with counts.unlocked(counts.X):
                counts.X[:, -len(class_names):] = matrix
        counts.name = "Counts"

    skipped_table = None
    if skipped:
        reason = StringVariable(get_unique_names(table.domain, SKIP_REASON))
        domain = Domain(table.domain.attributes, table.domain.class_vars,
                        table.domain.metas + (reason,))
        skipped_table = table[[row for row, _ in skipped]].transform(domain)
        with skipped_table.unlocked(skipped_table.metas):
            skipped_table.metas[:, -1] = [text for _, text in skipped]
        skipped_table.name = "Skipped images"
    return objects, counts, skipped_table


def _value(var, value) -> str:
    if var.is_discrete:
        return "" if np.isnan(value) else var.values[int(value)]
    return "" if value is None else str(value)


# --- masks ----------------------------------------------------------------

def boxes_to_labels(detections: Sequence[Detection], width: int, height: int,
                    class_names: Sequence[str]) -> np.ndarray:
    """A class-index label image of the detections (0 = background).

    Boxes are rounded outwards to whole pixels so that they cover the
    object; where a detection has its own mask, the mask is used. Where
    objects overlap, the better-scoring one is drawn last and wins.
    """
    labels = np.zeros((height, width), np.uint8 if len(class_names) < 255
                      else np.uint16)
    for det in sorted(detections, key=lambda d: d.score):
        if det.label not in class_names:
            continue
        index = class_names.index(det.label) + 1
        if det.mask is not None:
            labels[det.full_mask(width, height)] = index
            continue
        labels[_box_slices(det.box, width, height)] = index
    return labels


def _box_slices(box: Box, width: int, height: int) -> Tuple[slice, slice]:
    """The rows and columns of the pixels `box` touches (rounded out)."""
    x0, y0, x1, y1 = box
    return (slice(max(0, math.floor(y0)), min(height, math.ceil(y1))),
            slice(max(0, math.floor(x0)), min(width, math.ceil(x1))))


def _shape_by_sam(sam, path: str, detections: Sequence[Detection],
                  width: int, height: int, class_names: Sequence[str]
                  ) -> List[Detection]:
    """`detections` whose boxes carry Segment Anything's mask, cut to the
    box (those with a mask of their own keep it)."""
    import dataclasses
    todo = [i for i, det in enumerate(detections)
            if det.mask is None and det.label in class_names
            and det.area > 0]
    if not todo:
        return list(detections)
    try:
        rgb = np.asarray(load_image(path))
    except ImageSkipped as error:
        raise InvalidInput(f"The image {path} could not be read again for "
                           f"Segment Anything: {error}") from None
    if rgb.shape[:2] != (height, width):
        raise InvalidInput(f"The image {path} is {rgb.shape[1]}×"
                           f"{rgb.shape[0]} now, but was {width}×{height} "
                           f"when its objects were found.")
    masks = sam.masks_for_boxes(rgb, [detections[i].box for i in todo])
    shaped = list(detections)
    for i, mask in zip(todo, masks):
        inside = np.zeros_like(mask)
        rows, cols = _box_slices(detections[i].box, width, height)
        inside[rows, cols] = mask[rows, cols]
        shaped[i] = dataclasses.replace(detections[i], mask=inside)
    return shaped


def detections_to_masks(table: Table,
                        results: Sequence[Optional[List[Detection]]],
                        sizes: Sequence[Optional[Tuple[int, int]]],
                        class_names: Sequence[str], out_dir: str,
                        progress: Progress = None,
                        sam=None) -> Optional[Table]:
    """Write a mask per image and return the images with a mask column.

    The masks are class-index PNGs (0 background, 1 the first class, ...)
    of the images' size, named ``<stem>-objects.png`` in `out_dir` (a
    number is added rather than overwrite a file), and the new column
    follows the mask-column convention (``type=image``, ``origin`` =
    `out_dir`, ``mask=class``, ``classes`` = "background" and
    `class_names`), so Edit Images, Measure and Segmentation Preview read
    it as they read a trained model's masks.

    Parameters
    ----------
    table : Orange.data.Table
        The input with its image column.
    results : list
        Per row, its detections, or None for a skipped row.
    sizes : list
        Per row, the image's (width, height), or None for a skipped row.
    class_names : sequence of str
        The classes, in the order of their mask values.
    out_dir : str
        An existing, writable folder.
    progress : callable, optional
        ``progress(fraction)`` after each mask.
    sam : SegmentAnything, optional
        Shape each box by Segment Anything
        (:class:`~orangecontrib.deepimage.sam.SegmentAnything`): the mask it
        gives for the box, within the box, instead of the whole box. The
        image is read again for it. Detections that have a mask of their
        own (a segmenter's) keep it.

    Returns
    -------
    Orange.data.Table or None
        The rows whose image was read, with the new mask column; None when
        no image was read.

    Raises
    ------
    UnwritableFolder
        When `out_dir` is missing or read-only.
    WeightsUnavailable
        When `sam` is given and its weights cannot be loaded (before any
        mask is written).
    """
    from PIL import Image
    from orangecontrib.deepimage.errors import UnwritableFolder
    from orangecontrib.deepimage.files import (
        check_output_folder, create_new_file)
    try:
        check_output_folder(out_dir)
    except OSError as error:
        raise UnwritableFolder(str(error)) from None
    out_dir = os.path.abspath(out_dir)
    image_var = require_image_column(table)
    paths = image_paths(table, image_var)
    rows = [row for row, found in enumerate(results) if found is not None]
    if not rows:
        return None
    if sam is not None:
        sam.load()
    names = []
    for done, row in enumerate(rows):
        width, height = sizes[row]
        found = results[row]
        if sam is not None:
            found = _shape_by_sam(sam, paths[row], found, width, height,
                                  class_names)
        labels = boxes_to_labels(found, width, height, list(class_names))
        stem = os.path.splitext(os.path.basename(
            (paths[row] or "image").rstrip("/").split("?")[0]))[0] or "image"
        file, written = create_new_file(
            os.path.join(out_dir, f"{stem}-objects.png"))
        with file:
            Image.fromarray(labels).save(file, format="PNG")
        names.append(os.path.basename(written))
        if progress is not None:
            progress((done + 1) / len(rows))
    mask_var = StringVariable(get_unique_names(table.domain, "objects mask"))
    mask_var.attributes.update({
        "type": "image", "origin": out_dir, "mask": "class",
        "classes": ",".join(["background", *class_names])})
    domain = Domain(table.domain.attributes, table.domain.class_vars,
                    table.domain.metas + (mask_var,))
    result = table[rows].transform(domain)
    with result.unlocked(result.metas):
        result.metas[:, -1] = names
    result.name = "Images with masks"
    return result
