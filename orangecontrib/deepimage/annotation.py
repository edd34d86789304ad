"""Annotating images: a store of masks and labels, tools that draw, and
what to label next.

:class:`AnnotationStore` keeps a project's annotations in one folder::

    <folder>/masks/<image stem>.png      class-index masks (0 = background)
    <folder>/masks/classes.txt           the class names, index 0 first
    <folder>/labels.csv                  image-level labels (image, label)
    <folder>/scribbles/<image stem>.png  scribbles (0 = none, k = class k-1)
    <folder>/.annotation-store.json      what the store wrote (see below)

so that :func:`orangecontrib.deepimage.segdata.pair_folders` (and the
Segmentation Data widget) read ``store.masks_dir`` unchanged. Every write
goes to a hidden temporary file in the same folder that takes the final
name only once complete (a kill leaves the earlier file intact and no
half-written one). The store writes only inside its folder, never touches
the user's images, and never replaces a file it did not write: the
manifest records a digest of every file it wrote, and a file whose content
does not match is someone else's.

The tools that draw for the user are plain functions on arrays:
:func:`scribble_segmenter` (a pixel classifier from a few brush strokes),
:func:`mask_from_box` (GrabCut inside a box), :func:`superpixel_at` (the
SLIC superpixel under a click). :func:`suggest_next` says which images to
label next; :func:`image_uncertainty` ranks images by a segmentation
model's mean pixel entropy.
"""
import csv
import hashlib
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from Orange.data import (ContinuousVariable, DiscreteVariable, Domain,
                         StringVariable, Table)
from Orange.data.util import get_unique_names

from orangecontrib.deepimage import files
from orangecontrib.deepimage.images import (
    image_path, load_image, require_image_column)
from orangecontrib.deepimage.segdata import (
    CLASSES_FILE, MASK_EXTENSIONS, MaskError, _check_names,
    _strip_mask_suffix, image_size, load_mask, read_class_names)

__all__ = ["AnnotationStore", "ForeignFileError", "scribble_segmenter",
           "ScribbleSegmenter", "mask_from_box", "superpixels",
           "superpixel_at", "suggest_next", "image_uncertainty",
           "embeddings_for",
           "UNCERTAINTY_AFTER"]

MASKS_DIR = "masks"
SCRIBBLES_DIR = "scribbles"
LABELS_FILE = "labels.csv"
MANIFEST_FILE = ".annotation-store.json"
DEFAULT_CLASSES = ("background", "object")

ArrayLike = Union[np.ndarray, str]


class ForeignFileError(FileExistsError):
    """The store would have to replace a file that it did not write."""


def _digest(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()


def _file_digest(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as file:
            return _digest(file.read())
    except FileNotFoundError:
        return None


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip("/\\")))[0]


def _image_key(path: str) -> str:
    """How labels.csv names an image: an absolute, normalised path (URLs
    as they are)."""
    if "://" in path:
        return path
    return os.path.normpath(os.path.abspath(path))


def _mask_png(mask: np.ndarray, n_classes: int) -> bytes:
    """A class-index mask as PNG bytes: a palette PNG (the palette index is
    the class, read so by load_mask; viewers show the classes in colour) or
    a 16-bit grey PNG beyond 256 classes."""
    buffer = io.BytesIO()
    if n_classes <= 256:
        image = Image.fromarray(mask.astype(np.uint8))
        image.putpalette(_palette(n_classes))
    else:
        image = Image.fromarray(mask.astype(np.uint16))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _palette(n_classes: int) -> List[int]:
    colours = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25),
               (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60)]
    flat = []
    for index in range(256):
        if index < len(colours):
            flat.extend(colours[index])
        else:  # more classes: repeatable, distinct-enough colours
            flat.extend(((index * 67) % 256, (index * 151) % 256,
                         (index * 211) % 256))
    return flat


class AnnotationStore:
    """A project's masks and image labels in one folder.

    Parameters
    ----------
    folder : str
        The store's folder; made when missing. An existing store reopens
        with its masks, labels and classes. A folder with a ``masks/``
        folder that the store did not write (e.g. one that Segmentation
        Data reads) opens for reading: its masks are shown by
        :meth:`mask`, but a mask that the store did not write is never
        replaced (:class:`ForeignFileError`); use :meth:`from_masks` to
        correct such masks in a store of their own.
    classes : sequence of str, optional
        Class names for masks, the background first (default: those in
        ``masks/classes.txt``, else "background", "object"). Given for an
        existing store, they must start with the store's classes (more
        are added).

    Image labels (:meth:`set_label`) are any non-empty strings; the
    labelled table's class values are the labels in the order they were
    first given.
    """

    def __init__(self, folder: str, classes: Optional[Sequence[str]] = None):
        self.folder = os.path.abspath(folder)
        self.masks_dir = os.path.join(self.folder, MASKS_DIR)
        try:
            os.makedirs(self.masks_dir, exist_ok=True)
        except OSError as error:
            raise (files.unwritable(error, self.folder) or error) from error
        self._manifest_path = os.path.join(self.folder, MANIFEST_FILE)
        self._manifest = self._read_manifest()
        classes_path = os.path.join(self.masks_dir, CLASSES_FILE)
        if os.path.isfile(classes_path):
            self._classes = read_class_names(classes_path)
        else:
            self._classes = None
        if classes is not None:
            classes = _check_names(list(classes), "the class names given")
            if self._classes is None:
                self._write_classes(classes)
            else:
                if classes[:len(self._classes)] != self._classes:
                    raise ValueError(
                        f"the store at {self.folder} has the classes "
                        f"{', '.join(self._classes)}; the classes given "
                        f"must start with them. Received: "
                        f"{', '.join(classes)}")
                if len(classes) > len(self._classes):
                    self._write_classes(classes)
        elif self._classes is None:
            self._write_classes(list(DEFAULT_CLASSES))
        self._labels = self._read_labels()

    @classmethod
    def from_masks(cls, masks_dir: str, folder: str,
                   classes: Optional[Sequence[str]] = None
                   ) -> "AnnotationStore":
        """A new store in `folder` that starts from the masks in
        `masks_dir` (class masks in any format :func:`load_mask` reads),
        for correction; `masks_dir` is only read.

        Class names come from `classes`, else ``classes.txt`` in
        `masks_dir`, else "background", "class 1", ….
        """
        if os.path.realpath(os.path.join(folder, MASKS_DIR)) == \
                os.path.realpath(masks_dir):
            raise ValueError("from_masks copies the masks into a new store; "
                             "give another folder than the masks' own")
        masks = {}
        for name in sorted(os.listdir(masks_dir)):
            if name.startswith(".") or \
                    not name.lower().endswith(MASK_EXTENSIONS):
                continue
            stem = os.path.splitext(name)[0]
            stem = _strip_mask_suffix(stem) or stem
            masks[stem] = load_mask(os.path.join(masks_dir, name))
        if classes is None and os.path.isfile(
                os.path.join(masks_dir, CLASSES_FILE)):
            classes = read_class_names(os.path.join(masks_dir, CLASSES_FILE))
        if classes is None:
            from orangecontrib.deepimage.segdata import default_class_names
            top = max((int(mask.max()) for mask in masks.values()
                       if mask.size), default=1)
            classes = default_class_names(top + 1)
        store = cls(folder, classes)
        for stem, mask in masks.items():
            store._write_mask(stem, mask, image=None)
        return store

    # --- files the store owns -------------------------------------------

    def _read_manifest(self) -> Dict:
        try:
            with open(self._manifest_path, encoding="utf-8") as file:
                manifest = json.load(file)
        except FileNotFoundError:
            return {"files": {}, "images": {}}
        manifest.setdefault("files", {})
        manifest.setdefault("images", {})
        return manifest

    def _save_manifest(self):
        content = json.dumps(self._manifest, indent=1,
                             sort_keys=True).encode("utf-8")
        self._replace(self._manifest_path, content)

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.folder).replace(os.sep, "/")

    def owns(self, path: str) -> bool:
        """True when the file at `path` is one the store wrote (its
        content is what the store wrote there)."""
        digest = _file_digest(path)
        return digest is not None and digest in self._manifest[
            "files"].get(self._relative(path), [])

    def _replace(self, path: str, content: bytes) -> None:
        """Write `content` at `path` all or nothing (a hidden temporary
        file in the same folder, fsync, rename)."""
        folder = os.path.dirname(path)
        # pylint: disable=protected-access
        handle, temp = files._open_temp(folder)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            files._remove(temp)  # pylint: disable=protected-access
            raise

    def _write_own(self, path: str, content: bytes) -> None:
        """Write one of the store's files; never replace anyone else's.

        The manifest first learns the new digest (beside the old one), so
        that after a kill at any point the file there is still known as
        the store's; once the file is in place the old digest is dropped.
        """
        path = os.path.abspath(path)
        if os.path.commonpath([path, self.folder]) != self.folder:
            raise ValueError(f"the store writes only inside {self.folder}. "
                             f"Received: {path}")
        relative = self._relative(path)
        exists = os.path.lexists(path)
        if exists and not self.owns(path):
            raise ForeignFileError(
                f"{path} was not written by this annotation store; it is "
                f"left as it is (open its folder with "
                f"AnnotationStore.from_masks to correct it)")
        digest = _digest(content)
        known = self._manifest["files"].get(relative, [])
        self._manifest["files"][relative] = sorted(set(known) | {digest})
        self._save_manifest()
        try:
            if exists:
                self._replace(path, content)
            else:
                files.write_new_file(path, content, numbered=False)
        except FileExistsError as error:
            raise ForeignFileError(
                f"{path} appeared while the store was writing it; it is "
                f"left as it is") from error
        self._manifest["files"][relative] = [digest]
        self._save_manifest()

    # --- classes --------------------------------------------------------

    @property
    def classes(self) -> List[str]:
        """Mask class names, index 0 (the background) first."""
        return list(self._classes)

    def _write_classes(self, classes: List[str]):
        content = ("\n".join(classes) + "\n").encode("utf-8")
        self._write_own(os.path.join(self.masks_dir, CLASSES_FILE), content)
        self._classes = list(classes)

    def add_class(self, name: str) -> int:
        """Add a mask class; return its index. Existing masks keep their
        meaning (indices do not move)."""
        classes = _check_names(self._classes + [name], "the new class")
        self._write_classes(classes)
        return len(classes) - 1

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class (masks hold indices and stay valid; image labels
        equal to `old` become `new`)."""
        if old not in self._classes:
            raise ValueError(f"no class {old!r}; the classes are "
                             f"{', '.join(self._classes)}")
        classes = [new if name == old else name for name in self._classes]
        classes = _check_names(classes, "the renamed classes")
        self._write_classes(classes)
        if any(label == old for label in self._labels.values()):
            if new in self._labels.values():
                raise ValueError(f"images are already labelled {new!r}")
            self._labels = {key: new if label == old else label
                            for key, label in self._labels.items()}
            self._write_labels()

    # --- masks ----------------------------------------------------------

    def _mask_file(self, stem: str) -> Optional[str]:
        """The file that holds the mask of images with this stem."""
        own = os.path.join(self.masks_dir, stem + ".png")
        if os.path.isfile(own):
            return own
        for name in sorted(os.listdir(self.masks_dir)):
            if name.startswith(".") or \
                    not name.lower().endswith(MASK_EXTENSIONS):
                continue
            mask_stem = os.path.splitext(name)[0]
            if mask_stem == stem or _strip_mask_suffix(mask_stem) == stem:
                return os.path.join(self.masks_dir, name)
        return None

    def mask(self, image_path: str) -> Optional[np.ndarray]:
        """The image's class-index mask, or None when it has none."""
        path = self._mask_file(_stem(image_path))
        return None if path is None else load_mask(path)

    def set_mask(self, image_path: str, mask: np.ndarray) -> str:
        """Save the image's class-index mask (``(height, width)``, values
        0 … ``len(classes) - 1``); return the mask file's path.

        Raises
        ------
        ValueError
            For a mask of the wrong shape, size or values, or when another
            image with the same file stem already has a mask.
        ForeignFileError
            When the mask file there was not written by the store.
        """
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"a mask must be 2-D (height, width). "
                             f"Received: shape={mask.shape}")
        if mask.dtype == bool:
            mask = mask.astype(np.uint8)
        if not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(f"a mask holds class indices (integers). "
                             f"Received: dtype={mask.dtype}")
        if mask.size and (mask.min() < 0 or mask.max() >= len(self._classes)):
            raise ValueError(
                f"mask values must be class indices 0–"
                f"{len(self._classes) - 1} ({', '.join(self._classes)}). "
                f"Received: {int(mask.min())}–{int(mask.max())}")
        if os.path.isfile(image_path):
            width, height = image_size(image_path)
            if (height, width) != mask.shape:
                raise ValueError(
                    f"{os.path.basename(image_path)} is {width}×{height}; "
                    f"the mask is {mask.shape[1]}×{mask.shape[0]}")
        return self._write_mask(_stem(image_path), mask, image_path)

    def _write_mask(self, stem: str, mask: np.ndarray,
                    image: Optional[str]) -> str:
        images = self._manifest["images"]
        if image is not None:
            key = _image_key(image)
            if images.get(stem, key) != key:
                raise ValueError(
                    f"{images[stem]} already has the mask {stem}.png; "
                    f"masks are named by file stem, so {image} cannot "
                    f"have one too")
            images[stem] = key
        path = os.path.join(self.masks_dir, stem + ".png")
        existing = self._mask_file(stem)
        if existing is not None and existing != path:
            raise ForeignFileError(
                f"{existing} holds the mask of {stem} and was not written "
                f"by this annotation store; it is left as it is (open its "
                f"folder with AnnotationStore.from_masks to correct it)")
        self._write_own(path, _mask_png(mask, len(self._classes)))
        return path

    def annotated(self) -> List[str]:
        """Stems of the images that have a mask."""
        stems = set()
        for name in os.listdir(self.masks_dir):
            if name.startswith(".") or \
                    not name.lower().endswith(MASK_EXTENSIONS):
                continue
            stem = os.path.splitext(name)[0]
            own = self.owns(os.path.join(self.masks_dir, name))
            stems.add(stem if own else (_strip_mask_suffix(stem) or stem))
        return sorted(stems)

    # --- scribbles ------------------------------------------------------

    @property
    def scribbles_dir(self) -> str:
        """Where :meth:`set_scribbles` keeps the strokes (beside masks/, so
        that Segmentation Data never takes them for masks)."""
        return os.path.join(self.folder, SCRIBBLES_DIR)

    def set_scribbles(self, image_path: str, scribbles: np.ndarray) -> str:
        """Keep the image's scribble strokes (0 = not marked, k >= 1 =
        class k - 1, as :func:`scribble_segmenter` takes them) as
        ``scribbles/<image stem>.png``; return the file's path."""
        scribbles = np.asarray(scribbles)
        if scribbles.ndim != 2 or not np.issubdtype(scribbles.dtype,
                                                    np.integer):
            raise ValueError(f"scribbles are a 2-D integer array. Received: "
                             f"shape={scribbles.shape}, "
                             f"dtype={scribbles.dtype}")
        if scribbles.size and (scribbles.min() < 0
                               or scribbles.max() > len(self._classes)):
            raise ValueError(
                f"scribble values must be 0 (not marked) to "
                f"{len(self._classes)} (class index + 1). Received: "
                f"{int(scribbles.min())}–{int(scribbles.max())}")
        os.makedirs(self.scribbles_dir, exist_ok=True)
        path = os.path.join(self.scribbles_dir, _stem(image_path) + ".png")
        self._write_own(path, _mask_png(scribbles, len(self._classes) + 1))
        return path

    def scribbles(self, image_path: str) -> Optional[np.ndarray]:
        """The image's scribbles, or None when it has none."""
        path = os.path.join(self.scribbles_dir, _stem(image_path) + ".png")
        return load_mask(path) if os.path.isfile(path) else None

    # --- labels ---------------------------------------------------------

    def _labels_path(self) -> str:
        return os.path.join(self.folder, LABELS_FILE)

    def _read_labels(self) -> Dict[str, str]:
        try:
            with open(self._labels_path(), encoding="utf-8",
                      newline="") as file:
                rows = list(csv.reader(file))
        except FileNotFoundError:
            return {}
        return {row[0]: row[1] for row in rows[1:] if len(row) >= 2}

    def _write_labels(self):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "label"])
        writer.writerows(self._labels.items())
        self._write_own(self._labels_path(),
                        buffer.getvalue().encode("utf-8"))

    def label(self, image_path: str) -> Optional[str]:
        """The image's label, or None when it has none."""
        return self._labels.get(_image_key(image_path))

    def set_label(self, image_path: str, label: Optional[str]) -> None:
        """Label the image (None removes its label)."""
        key = _image_key(image_path)
        if label is None:
            if self._labels.pop(key, None) is not None:
                self._write_labels()
            return
        label = str(label).strip()
        if not label:
            raise ValueError("a label cannot be empty")
        self._labels[key] = label
        self._write_labels()

    @property
    def labels(self) -> List[str]:
        """The labels in use, in the order they were first given."""
        return list(dict.fromkeys(self._labels.values()))

    def rename_label(self, old: str, new: str) -> int:
        """Give the images labelled `old` the label `new`; return how many.

        Mask classes are not touched (see :meth:`rename_class`).

        Raises
        ------
        ValueError
            When `new` is empty or images are already labelled `new`.
        """
        new = str(new).strip()
        if not new:
            raise ValueError("a label cannot be empty")
        keys = [key for key, label in self._labels.items() if label == old]
        if not keys or new == old:
            return 0
        if new in self._labels.values():
            raise ValueError(f"images are already labelled {new!r}")
        for key in keys:
            self._labels[key] = new
        self._write_labels()
        return len(keys)

    # --- tables ---------------------------------------------------------

    def masks_table(self, images_table: Table) -> Optional[Table]:
        """The annotated rows of `images_table` as Segmentation Data gives
        them: metas "image name", "image" (the input's values and origin),
        "mask" (origin ``masks_dir``, ``mask="class"``, the classes),
        "width" and "height"; None when no row has a mask."""
        column = require_image_column(images_table)
        rows = []
        for value in images_table.get_column(column):
            path = image_path(column, value)
            if path is None:
                continue
            mask_file = self._mask_file(_stem(path))
            if mask_file is None:
                continue
            try:
                mask = load_mask(mask_file)
            except MaskError:
                continue
            if column.is_discrete:
                value = column.values[int(value)]
            rows.append([_stem(path), str(value),
                         os.path.basename(mask_file),
                         mask.shape[1], mask.shape[0]])
        if not rows:
            return None
        name_var = StringVariable("image name")
        image_var = StringVariable("image")
        image_var.attributes.update(
            {"type": "image",
             "origin": column.attributes.get("origin", "")})
        mask_var = StringVariable("mask")
        mask_var.attributes.update({"type": "image",
                                    "origin": self.masks_dir,
                                    "mask": "class",
                                    "classes": ",".join(self._classes)})
        domain = Domain([], metas=[
            name_var, image_var, mask_var,
            ContinuousVariable("width", number_of_decimals=0),
            ContinuousVariable("height", number_of_decimals=0)])
        table = Table.from_numpy(domain, np.empty((len(rows), 0)),
                                 metas=np.array(rows, dtype=object))
        table.name = images_table.name or "masks"
        return table

    def labels_table(self, images_table: Table) -> Optional[Table]:
        """The labelled rows of `images_table` with their label as the
        class variable (a categorical variable, values in the order the
        labels were first given). Unlabelled rows are left out (a learner
        would drop rows with an unknown class anyway). An existing class
        variable moves to the metas; ids are kept. None when no row is
        labelled."""
        column = require_image_column(images_table)
        keep, labels = [], []
        for row, value in enumerate(images_table.get_column(column)):
            path = image_path(column, value)
            label = None if path is None else self.label(path)
            if label is not None:
                keep.append(row)
                labels.append(label)
        if not keep:
            return None
        domain = images_table.domain
        names = [var.name for var in domain.variables + domain.metas]
        values = [label for label in self.labels if label in set(labels)]
        class_var = DiscreteVariable(get_unique_names(names, "label"),
                                     values=values)
        subset = images_table[keep]
        metas = list(domain.metas)
        meta_values = subset.metas
        if domain.class_vars:
            metas = list(domain.class_vars) + metas
            meta_values = np.hstack([subset.Y.reshape(len(keep), -1)
                                     .astype(object), subset.metas])
        new_domain = Domain(domain.attributes, class_var, metas)
        index = {value: i for i, value in enumerate(values)}
        table = Table.from_numpy(
            new_domain, subset.X, np.array([index[l] for l in labels],
                                           dtype=float),
            metas=meta_values, ids=subset.ids)
        table.name = images_table.name
        return table


# --- tools that draw ---------------------------------------------------------

def _pixels(image: ArrayLike) -> np.ndarray:
    """An image (array or path) as ``(H, W)`` grey or ``(H, W, 3)`` RGB.

    Colour images whose channels are all equal become grey: the features
    of three equal channels would only triple the work.
    """
    if isinstance(image, (str, os.PathLike)):
        image = np.asarray(load_image(os.fspath(image)))
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 3 and \
            np.array_equal(image[..., 0], image[..., 1]) and \
            np.array_equal(image[..., 0], image[..., 2]):
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"an image must be (height, width) grey or "
                         f"(height, width, 3) RGB. Received: "
                         f"shape={image.shape}")
    return image


def _stretch(image: np.ndarray, low: float = 1, high: float = 99.5
             ) -> np.ndarray:
    """Float32 in [0, 1] from the `low`–`high` percentiles of each channel,
    so that the same stain reads alike in brighter and dimmer images."""
    image = image.astype(np.float32)
    axes = (0, 1)
    lo = np.percentile(image, low, axis=axes, keepdims=True)
    hi = np.percentile(image, high, axis=axes, keepdims=True)
    return np.clip((image - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


class ScribbleSegmenter:
    """A pixel classifier trained on brush strokes (see
    :func:`scribble_segmenter`); pickles."""

    def __init__(self, classifier, n_classes: int, feature_options: Dict,
                 normalize: bool, colour: bool, snap: int = 2,
                 edge_sigma: float = 2.0):
        self.classifier = classifier
        self.n_classes = n_classes
        self.feature_options = dict(feature_options)
        self.normalize = normalize
        self.colour = colour
        self.snap = snap
        self.edge_sigma = edge_sigma

    def _prepared(self, image: ArrayLike) -> np.ndarray:
        """The image as the features see it: float32 grey ``(H, W)`` or
        RGB ``(H, W, 3)``, scaled to [0, 1] (stretched if ``normalize``)."""
        pixels = _pixels(image)
        if self.colour and pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=-1)
        elif not self.colour and pixels.ndim == 3:
            pixels = pixels.astype(np.float32).mean(axis=-1)
        return _stretch(pixels) if self.normalize else \
            pixels.astype(np.float32) / (255 if pixels.dtype == np.uint8
                                         else 1)

    def features(self, image: ArrayLike) -> np.ndarray:
        """``(H, W, F)`` float32 features of one image (scikit-image's
        :func:`~skimage.feature.multiscale_basic_features`)."""
        from skimage.feature import multiscale_basic_features
        return multiscale_basic_features(
            self._prepared(image), channel_axis=-1 if self.colour else None,
            **self.feature_options).astype(np.float32, copy=False)

    def predict_proba(self, image: ArrayLike, chunk: int = 1 << 18
                      ) -> np.ndarray:
        """``(H, W, n_classes)`` class probabilities of each pixel, as the
        random forest gives them (before :meth:`predict` moves the
        boundaries onto the image's edges)."""
        features = self.features(image)
        height, width, n_features = features.shape
        flat = features.reshape(-1, n_features)
        result = np.zeros((flat.shape[0], self.n_classes), np.float32)
        columns = np.asarray(self.classifier.classes_, dtype=int) - 1
        for start in range(0, flat.shape[0], chunk):
            result[start:start + chunk, columns] = \
                self.classifier.predict_proba(flat[start:start + chunk])
        return result.reshape(height, width, self.n_classes)

    def predict(self, image: ArrayLike) -> np.ndarray:
        """``(H, W)`` class-index mask (uint8; uint16 beyond 256 classes):
        the most probable class of each pixel, with the boundaries between
        classes moved by up to ``snap`` pixels onto the strongest edge
        near them (see :func:`scribble_segmenter`)."""
        dtype = np.uint8 if self.n_classes <= 256 else np.uint16
        pixels = _pixels(image)
        labels = self.predict_proba(pixels).argmax(axis=-1)
        snap = getattr(self, "snap", 0)
        if snap > 0:
            labels = _snap_to_edges(self._prepared(pixels), labels, snap,
                                    getattr(self, "edge_sigma", 1.0))
        return labels.astype(dtype)


def _snap_to_edges(image: np.ndarray, labels: np.ndarray, band: int,
                   sigma: float) -> np.ndarray:
    """Move the boundaries between the classes of `labels` by up to `band`
    pixels onto the image's edges: the pixels within `band` (city-block)
    pixels of another class are left open and filled by a seeded watershed
    (scikit-image) on the gradient magnitude of the image smoothed with a
    Gaussian of `sigma`; the rest keep their class and are the seeds. A
    region too thin to keep a seed (a small object, a thin line) keeps its
    pixels and their surroundings as they are, so no region is lost or
    spread."""
    from scipy import ndimage
    from skimage.filters import gaussian, sobel
    from skimage.measure import label
    from skimage.morphology import diamond
    from skimage.segmentation import watershed
    footprint = diamond(band)
    open_ = ndimage.grey_dilation(labels, footprint=footprint) != \
        ndimage.grey_erosion(labels, footprint=footprint)
    if not open_.any():
        return labels
    regions = label(labels, background=-1, connectivity=1)
    seeded = np.zeros(regions.max() + 1, bool)
    seeded[regions[~open_]] = True
    unseeded = ~seeded[regions]
    if unseeded.any():
        open_ &= ~ndimage.binary_dilation(unseeded, structure=footprint)
    channels = image[..., None] if image.ndim == 2 else image
    gradient = np.sqrt(sum(
        sobel(gaussian(channels[..., c], sigma)) ** 2
        for c in range(channels.shape[-1])))
    seeds = np.where(open_, 0, labels + 1)
    # flooding only the open pixels and the seeds beside them gives the
    # same result some ten times faster than flooding the whole image
    flooded = watershed(gradient, seeds,
                        mask=ndimage.binary_dilation(open_))
    return np.where(open_, flooded - 1, labels)


def scribble_segmenter(images: Sequence[ArrayLike],
                       scribbles: Sequence[np.ndarray], *,
                       sigma_min: float = 0.5, sigma_max: float = 16,
                       intensity: bool = True, edges: bool = True,
                       texture: bool = True, normalize: bool = False,
                       n_estimators: int = 50, max_depth: Optional[int] = 10,
                       class_weight: Optional[str] = "balanced",
                       n_jobs: Optional[int] = None, random_state: int = 0,
                       snap: int = 2, edge_sigma: float = 2.0
                       ) -> ScribbleSegmenter:
    """Learn to segment images from a few brush strokes on some of them.

    scikit-image's trainable segmentation: multiscale local features
    (:func:`skimage.feature.multiscale_basic_features`) of the marked
    pixels train a scikit-learn random forest through
    :func:`skimage.future.fit_segmenter`. The classes are weighted by their
    number of marked pixels (``class_weight``), as strokes in the
    background are usually much longer. ``normalize`` stretches each image
    to its own 1st–99.5th percentiles first, for images taken with
    different exposures; it is off by default, as on the tiles of one
    fluorescence image (the nuclei tutorial) it lowered the held-out
    foreground IoU from 0.83 to 0.80: a tile with few nuclei is stretched
    far more than a crowded one.

    Strokes are drawn inside objects and well clear of them, so the forest
    learns nothing about where an object ends, and its boundaries fall
    wherever its splits happen to put them (on the nuclei tiles, one or
    two pixels outside the annotated outline). :meth:`~ScribbleSegmenter.
    predict` therefore lets each boundary move by up to ``snap`` pixels
    onto the strongest edge of the image near it: a seeded watershed
    (scikit-image) on the gradient magnitude, seeded by the pixels farther
    than ``snap`` from another class. On the nuclei bench this raised the
    held-out foreground IoU from 0.76 to 0.83 (bench/annotation.py).

    Args:
        images: RGB or grey arrays, or paths.
        scribbles: one integer array of each image's size: 0 = not marked,
            k >= 1 = class k - 1. Images with no marks are allowed.
        sigma_min, sigma_max, intensity, edges, texture: the features.
        n_estimators, max_depth, class_weight, n_jobs, random_state: the
            random forest.
        snap: how many pixels :meth:`ScribbleSegmenter.predict` may move a
            boundary between classes onto the strongest edge near it (a
            seeded watershed on the gradient magnitude); 0 keeps the
            forest's own boundaries.
        edge_sigma: the Gaussian smoothing before that gradient.

    Returns:
        A :class:`ScribbleSegmenter`; ``predict(image)`` gives a
        class-index mask of any image.

    Raises:
        ValueError: when the images and scribbles do not match in number
            or size, or the strokes mark fewer than two classes.
    """
    from sklearn.ensemble import RandomForestClassifier
    from skimage.future import fit_segmenter
    if len(images) != len(scribbles):
        raise ValueError(f"give one scribble array per image. Received: "
                         f"{len(images)} images, {len(scribbles)} scribbles")
    pixels = [_pixels(image) for image in images]
    colour = any(p.ndim == 3 for p in pixels)
    marks = [np.asarray(s) for s in scribbles]
    for p, s in zip(pixels, marks):
        if s.shape != p.shape[:2]:
            raise ValueError(f"scribbles must have the image's size. "
                             f"Received: {s.shape} for an image of "
                             f"{p.shape[:2]}")
    classes = np.unique(np.concatenate([s[s > 0].ravel() for s in marks]))
    if len(classes) < 2:
        raise ValueError(f"strokes of at least two classes are needed. "
                         f"Received: classes {list(classes - 1)}")
    options = {"sigma_min": sigma_min, "sigma_max": sigma_max,
               "intensity": intensity, "edges": edges, "texture": texture}
    segmenter = ScribbleSegmenter(None, int(classes[-1]), options,
                                  normalize, colour, snap, edge_sigma)
    features, labels = [], []
    for p, s in zip(pixels, marks):
        if not (s > 0).any():
            continue
        marked = s > 0
        features.append(segmenter.features(p)[marked])
        labels.append(s[marked].astype(np.int64))
    classifier = RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth,
        class_weight=class_weight, n_jobs=n_jobs, random_state=random_state)
    segmenter.classifier = fit_segmenter(
        np.concatenate(labels), np.concatenate(features), classifier)
    return segmenter


def _box(box, shape) -> Tuple[int, int, int, int]:
    height, width = shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = sorted((max(0, min(width, x0)), max(0, min(width, x1))))
    y0, y1 = sorted((max(0, min(height, y0)), max(0, min(height, y1))))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"the box (x0, y0, x1, y1) must span at least 2×2 "
                         f"pixels inside the image. Received: box={box}")
    return x0, y0, x1, y1


def _otsu_in_box(grey: np.ndarray, box) -> np.ndarray:
    """Otsu's threshold inside the box: the foreground is the side that
    holds less of the box's border (a box is drawn around its object); of
    it, the largest connected part with its holes filled (a tight box
    around one object also cuts into its neighbours)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    x0, y0, x1, y1 = box
    region = grey[y0:y1, x0:x1].astype(np.float32)
    result = np.zeros(grey.shape, bool)
    if region.max() == region.min():
        return result
    bright = region > threshold_otsu(region)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0],
                             bright[:, -1]])
    inside = bright if border.mean() <= 0.5 else ~bright
    parts, n_parts = ndimage.label(inside)
    if n_parts > 1:
        inside = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    result[y0:y1, x0:x1] = ndimage.binary_fill_holes(inside)
    return result


def mask_from_box(image: ArrayLike, box: Sequence[float],
                  iterations: int = 5, context: float = 0.5) -> np.ndarray:
    """The object inside a box: a boolean mask.

    Colour images go through GrabCut (OpenCV), initialised with the box.
    Grey images are thresholded inside the box instead (Otsu's threshold,
    the side that fills less of the box's border, its largest connected
    part, holes filled): on the 146 nuclei of the nuclei tutorial (dim
    grey fluorescence, boxes 3 pixels around each nucleus) GrabCut
    returned an empty mask for about 130 boxes on the grey pixels as three
    equal channels, also after stretching the contrast and for about 100
    after mapping grey to colours, with mean IoUs of 0.09, 0.09 and 0.20;
    the threshold gives 0.76 (bench/annotation.py). Where GrabCut keeps
    nothing, or all, of the box in a colour image, or the box is the whole
    image, the threshold decides too.

    Args:
        image: an RGB or grey array, or a path.
        box: ``(x0, y0, x1, y1)`` in pixels, x1 and y1 exclusive.
        iterations: GrabCut's iterations.
        context: how much of the photo around the box GrabCut sees, as a
            fraction of the box's width and height on each side (its
            background model is learned there). On composites of real
            photos (bench/annotation.py) 0.5 gave a mean IoU of 0.86
            where the whole photo gave 0.85, and on the Edit Images
            tutorial's five objects (against rough outlines) 0.64 where
            it gave 0.50; it also keeps a box on a large photo fast.

    Raises:
        ValueError: for a box of less than 2×2 pixels inside the image.
    """
    import cv2
    pixels = _pixels(image)
    x0, y0, x1, y1 = _box(box, pixels.shape)
    stretched = (_stretch(pixels) * 255).astype(np.uint8)
    if stretched.ndim == 2:
        return _otsu_in_box(stretched, (x0, y0, x1, y1))
    # the box with half its size around it: the background's colours are
    # learned from the object's surroundings, not from the whole photo
    height, width = pixels.shape[:2]
    margin_x = int(context * (x1 - x0)) + 1
    margin_y = int(context * (y1 - y0)) + 1
    cx0, cy0 = max(0, x0 - margin_x), max(0, y0 - margin_y)
    cx1, cy1 = min(width, x1 + margin_x), min(height, y1 + margin_y)
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        # the box is the whole photo: GrabCut has no background to learn
        return _otsu_in_box(cv2.cvtColor(stretched, cv2.COLOR_RGB2GRAY),
                            (x0, y0, x1, y1))
    crop = np.ascontiguousarray(stretched[cy0:cy1, cx0:cx1])
    labels = np.zeros(crop.shape[:2], np.uint8)
    background = np.zeros((1, 65), np.float64)
    foreground = np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), labels,
                (x0 - cx0, y0 - cy0, x1 - x0, y1 - y0), background,
                foreground, iterations, cv2.GC_INIT_WITH_RECT)
    mask = np.zeros((height, width), bool)
    mask[cy0:cy1, cx0:cx1] = (labels == cv2.GC_FGD) | \
        (labels == cv2.GC_PR_FGD)
    inside = mask[y0:y1, x0:x1].mean()
    if inside == 0 or inside > 0.98:
        mask = _otsu_in_box(cv2.cvtColor(stretched, cv2.COLOR_RGB2GRAY),
                            (x0, y0, x1, y1))
    return mask


def superpixels(image: ArrayLike, n_segments: int = 400,
                compactness: Optional[float] = None) -> np.ndarray:
    """SLIC superpixels (scikit-image) of an image: ``(H, W)`` labels from 1.

    `compactness` defaults to 10 for colour (SLIC works in Lab there) and
    0.1 for grey images (scaled to [0, 1]).
    """
    from skimage.segmentation import slic
    pixels = _pixels(image)
    colour = pixels.ndim == 3
    if compactness is None:
        compactness = 10.0 if colour else 0.1
    return slic(_stretch(pixels), n_segments=n_segments,
                compactness=compactness, start_label=1,
                channel_axis=-1 if colour else None)


def superpixel_at(image: ArrayLike, x: int, y: int, n_segments: int = 400,
                  compactness: Optional[float] = None,
                  segments: Optional[np.ndarray] = None) -> np.ndarray:
    """The superpixel under the pixel (x, y) as a boolean mask.

    Pass `segments` (from :func:`superpixels`) to reuse them between clicks.
    """
    if segments is None:
        segments = superpixels(image, n_segments, compactness)
    height, width = segments.shape
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"(x, y) must be inside the {width}×{height} "
                         f"image. Received: ({x}, {y})")
    return segments == segments[int(y), int(x)]


# --- what to label next ------------------------------------------------------

def embeddings_for(paths: Sequence[Optional[str]], table: Table
                   ) -> np.ndarray:
    """The embedding of each image in `paths`, from a table of embedded
    images (e.g. Deep Embedding's output), matched by image path.

    Returns:
        ``(len(paths), D)`` float32; a row of NaN where `table` has no row
        for the image (or the path is None).

    Raises:
        ValueError: when `table` has no image column or no embedding.
    """
    from orangecontrib.deepimage.clustering import embedding_matrix
    column = require_image_column(table)
    matrix = embedding_matrix(table)
    where = {}
    for row, value in enumerate(table.get_column(column)):
        path = image_path(column, value)
        if path is not None:
            where.setdefault(_image_key(path), row)
    result = np.full((len(paths), matrix.shape[1]), np.nan, np.float32)
    for index, path in enumerate(paths):
        row = None if path is None else where.get(_image_key(path))
        if row is not None:
            result[index] = matrix[row]
    return result


#: With at least this many labels per class (and probabilities given),
#: :func:`suggest_next` picks by uncertainty instead of typicality. On
#: scikit-learn's digits (10 classes, SqueezeNet embeddings, a logistic
#: regression; bench/annotation.py) TypiClust led random picks by 15
#: points at 10 labels and picking the smallest margin (after a random
#: first round) trailed random up to 30 labels; the margin overtook
#: TypiClust between 70 and 80 labels (0.72 vs 0.73 at 70, 0.77 vs 0.75
#: at 80, mean of 5 seeds).
UNCERTAINTY_AFTER = 7


def image_uncertainty(probabilities: np.ndarray) -> Union[float, np.ndarray]:
    """Mean pixel entropy (in nats) of a segmentation model's prediction.

    Args:
        probabilities: ``(H, W, C)`` for one image or ``(N, H, W, C)``.

    Returns:
        A float, or an ``(N,)`` array for a batch.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim not in (3, 4):
        raise ValueError(f"probabilities must be (H, W, C) or (N, H, W, C). "
                         f"Received: shape={probabilities.shape}")
    entropy = -np.sum(probabilities * np.log(np.clip(probabilities, 1e-12,
                                                     1)), axis=-1)
    return entropy.mean(axis=(-2, -1))


def _typical(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Typicality of each point: the inverse of its mean distance to its
    `k` nearest neighbours (TypiClust)."""
    from sklearn.neighbors import NearestNeighbors
    k = max(1, min(k, len(embeddings) - 1))
    if len(embeddings) < 2:
        return np.ones(len(embeddings))
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(
        embeddings).kneighbors(embeddings)
    return 1 / (distances[:, 1:].mean(axis=1) + 1e-12)


_CLUSTER_DIMENSIONS = 32


def _typiclust(embeddings: np.ndarray, labelled: np.ndarray, n: int,
               random_state: int) -> List[int]:
    """TypiClust (Hacohen et al., 2022): cluster into labelled + n
    clusters; from the clusters with the fewest labelled points, largest
    first, take the most typical unlabelled point. Embeddings are
    L2-normalised, and reduced to their first 32 principal components when
    they have more dimensions."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    data = embeddings.astype(np.float64)
    data = data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True),
                             1e-12)
    if data.shape[1] > _CLUSTER_DIMENSIONS and \
            len(data) > _CLUSTER_DIMENSIONS:
        # k-means and neighbours in 1000 dimensions took 10-20 s a round
        # for 1300 images; 32 principal components take well under one
        from sklearn.decomposition import PCA
        data = PCA(_CLUSTER_DIMENSIONS, random_state=random_state) \
            .fit_transform(data)
    n_clusters = min(int(labelled.sum()) + n, len(data))
    if n_clusters <= 50:
        kmeans = KMeans(n_clusters, n_init=3, random_state=random_state)
    else:
        kmeans = MiniBatchKMeans(n_clusters, n_init=1,
                                 random_state=random_state)
    clusters = kmeans.fit_predict(data)
    sizes = np.bincount(clusters, minlength=n_clusters)
    covered = np.bincount(clusters[labelled], minlength=n_clusters)
    picked: List[int] = []
    chosen = labelled.copy()
    while len(picked) < n:
        free = np.bincount(clusters[~chosen], minlength=n_clusters)
        candidates = [c for c in range(n_clusters) if free[c]]
        if not candidates:
            break
        # fewest labels first, then the largest; ties by index (stable)
        cluster = min(candidates, key=lambda c: (covered[c], -sizes[c], c))
        members = np.flatnonzero(clusters == cluster)
        typicality = _typical(data[members], min(20, len(members) // 2))
        typicality[chosen[members]] = -np.inf
        best = int(members[np.argmax(typicality)])
        picked.append(best)
        chosen[best] = True
        covered[cluster] += 1
    return picked


def suggest_next(probabilities: Optional[np.ndarray] = None,
                 embeddings: Optional[np.ndarray] = None,
                 labelled: Optional[np.ndarray] = None, n: int = 10,
                 random_state: int = 0) -> np.ndarray:
    """Indices of `n` unlabelled rows worth labelling next.

    With few labels, a model does not know what it does not know and
    picking its least certain images does worse than picking at random;
    typical images that cover the embedding space do better (TypiClust,
    Hacohen et al., ICML 2022; ProbCover, Yehuda et al., NeurIPS 2022).
    So, with `embeddings`, images are picked by TypiClust until there are
    :data:`UNCERTAINTY_AFTER` labels per class (the number of classes is
    the width of `probabilities`); from then on, and whenever only
    `probabilities` are given, the images whose two most likely classes
    are closest (the smallest margin) are picked.

    Args:
        probabilities: ``(N, C)`` class probabilities of a model, or
            ``(N, H, W, C)`` of a segmentation model (then an image's
            uncertainty is its mean pixel entropy, see
            :func:`image_uncertainty`).
        embeddings: ``(N, D)`` image embeddings.
        labelled: ``(N,)`` booleans, True for rows that have a label.
        n: how many to suggest (fewer when fewer are unlabelled).
        random_state: seeds the clustering; the result is deterministic.

    Returns:
        An int array of row indices, the most useful first.
    """
    if probabilities is None and embeddings is None:
        raise ValueError("give probabilities, embeddings or both")
    size = len(embeddings if embeddings is not None else probabilities)
    if probabilities is not None and embeddings is not None and \
            len(probabilities) != len(embeddings):
        raise ValueError(f"probabilities and embeddings must have a row "
                         f"each per image. Received: {len(probabilities)} "
                         f"and {len(embeddings)}")
    labelled = np.zeros(size, bool) if labelled is None \
        else np.asarray(labelled, bool)
    if labelled.shape != (size,):
        raise ValueError(f"labelled must be ({size},) booleans. Received: "
                         f"shape={labelled.shape}")
    n = min(int(n), int((~labelled).sum()))
    if n <= 0:
        return np.zeros(0, int)
    use_uncertainty = probabilities is not None and (
        embeddings is None or labelled.sum()
        >= UNCERTAINTY_AFTER * np.shape(probabilities)[-1])
    if not use_uncertainty:
        return np.array(_typiclust(np.asarray(embeddings), labelled, n,
                                   random_state), dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 4:
        score = image_uncertainty(probabilities)
    else:
        top = np.sort(probabilities, axis=1)
        score = 1 - (top[:, -1] - (top[:, -2] if top.shape[1] > 1 else 0))
    score = np.where(labelled, -np.inf, score)
    order = np.lexsort((np.arange(size), -score))  # ties by index
    return order[:n].astype(int)
