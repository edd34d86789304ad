"""Objects in label images, measured into Orange tables.

:func:`label_objects` turns a mask into a label image of objects: in a
class mask each connected component of each class is an object
(8-connectivity: pixels touching at a corner belong together); in an
instance mask each id is an object. With ``split_touching=True`` touching
objects of a class mask are split by a distance-transform watershed.

:func:`measure_objects` measures each object with scikit-image's
``regionprops`` (so the numbers are exactly scikit-image's), and
:func:`summarize_objects` gives per-image counts and area fractions.
:func:`measure_table` does both for every row of a table with an image
column and a mask column (see :mod:`orangecontrib.deepimage.segdata`).

Coordinates are in pixels: rows grow downwards, columns to the right; a
bounding box is ``(min row, min col, max row, max col)`` with the maxima
exclusive, as in scikit-image and Python slices.
"""
import io
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import label, regionprops_table
from skimage.morphology import local_maxima
from skimage.segmentation import watershed

from Orange.data import (ContinuousVariable, DiscreteVariable, Domain,
                         StringVariable, Table)

from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, image_paths, read_image_bytes,
    require_mask_column)
from orangecontrib.deepimage.segdata import (
    INSTANCE_CLASSES, MaskError, default_class_names, load_mask, mask_info)

__all__ = ["label_objects", "measure_objects", "summarize_objects",
           "measure_table", "grey_values", "CONNECTIVITY"]

#: Pixels touching at an edge or a corner belong to one object.
CONNECTIVITY = 2
#: Default smallest distance (pixels) between the centres of split objects.
MIN_DISTANCE = 5

#: Weights of R, G, B in grey values (ITU-R 601-2 luma, as PIL's "L").
LUMA = np.array([0.299, 0.587, 0.114])

# regionprops property -> column name, in column order.
_PROPERTIES = [
    ("area", "area"),
    ("centroid-0", "centroid row"),
    ("centroid-1", "centroid col"),
    ("bbox-0", "min row"),
    ("bbox-1", "min col"),
    ("bbox-2", "max row"),
    ("bbox-3", "max col"),
    ("equivalent_diameter_area", "equivalent diameter"),
    ("eccentricity", "eccentricity"),
]
_INTEGER_COLUMNS = ("area", "min row", "min col", "max row", "max col")


def _split_component_image(binary: np.ndarray, min_distance: int
                           ) -> np.ndarray:
    """Label a binary image, splitting touching blobs by watershed."""
    components = label(binary, connectivity=CONNECTIVITY)
    if not components.any():
        return components
    distance = ndimage.distance_transform_edt(binary)
    peaks = peak_local_max(distance, min_distance=max(1, int(min_distance)),
                           labels=components, exclude_border=False)
    # A flat ridge (a plateau of the distance) may hold several peaks: it
    # is one marker, so a thin line or a long bar is not cut in pieces.
    plateaus = label(local_maxima(distance, connectivity=CONNECTIVITY)
                     & binary, connectivity=CONNECTIVITY)
    chosen = np.unique(plateaus[tuple(peaks.T)])
    markers = label(np.isin(plateaus, chosen[chosen > 0]),
                    connectivity=CONNECTIVITY)
    split = watershed(-distance, markers, mask=binary,
                      connectivity=CONNECTIVITY)
    missing = binary & (split == 0)
    if missing.any():  # a component without any peak stays whole
        extra = label(missing, connectivity=CONNECTIVITY)
        split[missing] = extra[missing] + split.max()
    return split


def label_objects(mask: np.ndarray, instance: bool = False,
                  split_touching: bool = False,
                  min_distance: int = MIN_DISTANCE
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Return a label image of the objects in `mask` and each one's class.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(height, width)`` non-negative integers: class indices, or object
        ids when `instance` is True; 0 is the background.
    instance : bool
        Each distinct id is one object (even when it is in pieces); the
        ids are kept as labels. Otherwise each connected component
        (8-connectivity) of each class is an object.
    split_touching : bool
        Split touching objects of a class mask with a watershed of the
        distance transform started from its local maxima; ignored for
        instance masks, whose objects are already apart.
    min_distance : int
        The smallest distance in pixels between two maxima that start
        separate objects: about the radius of the smallest object.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The int32 label image (0 = background; labels 1…N for class masks)
        and, for each label in increasing order, its class index (always 1
        for instance masks).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InvalidInput(f"mask must be a 2-D label image. Received an "
                           f"array of shape {mask.shape}")
    if mask.size and mask.min() < 0:
        raise InvalidInput("mask values must be >= 0")
    if instance:
        ids = np.unique(mask)
        ids = ids[ids > 0]
        labels = mask.astype(np.int64 if ids.size and ids[-1] >
                             np.iinfo(np.int32).max else np.int32)
        return labels, np.ones(len(ids), dtype=int)
    labels = np.zeros(mask.shape, np.int32)
    object_classes = []
    for class_index in np.unique(mask):
        if class_index == 0:
            continue
        binary = mask == class_index
        if split_touching:
            parts = _split_component_image(binary, min_distance)
        else:
            parts = label(binary, connectivity=CONNECTIVITY)
        n_parts = int(parts.max())
        offset = len(object_classes)
        labels[binary] = parts[binary] + offset
        object_classes.extend([int(class_index)] * n_parts)
    return labels, np.array(object_classes, dtype=int)


def grey_values(image: np.ndarray) -> np.ndarray:
    """Grey values of an image: as they are, or the luma of RGB(A).

    Colour images are weighted with :data:`LUMA` (ITU-R 601-2, as PIL's
    "L" mode, without rounding); the alpha channel is ignored.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float64)
    if image.ndim == 3 and image.shape[-1] == 1:
        return image[..., 0].astype(np.float64)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3].astype(np.float64) @ LUMA
    raise InvalidInput(f"image must be (height, width) or (height, width, 3)."
                       f" Received an array of shape {image.shape}")


def _measure_arrays(mask: np.ndarray, image: Optional[np.ndarray],
                    instance: bool, split_touching: bool, min_distance: int
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (label ids, class indices, measurements) for one mask."""
    labels, object_classes = label_objects(mask, instance, split_touching,
                                           min_distance)
    names = [prop for prop, _ in _PROPERTIES]
    intensity = None
    if image is not None:
        intensity = grey_values(image)
        if intensity.shape != labels.shape:
            raise InvalidInput(
                f"the image is {intensity.shape[1]}×{intensity.shape[0]} "
                f"but the mask is {labels.shape[1]}×{labels.shape[0]}")
        names.append("intensity_mean")
    base = [name for name in names if not name.startswith(("centroid-",
                                                           "bbox-"))]
    base = sorted(set(base + ["label", "centroid", "bbox"]))
    props = regionprops_table(labels, intensity_image=intensity,
                              properties=base)
    values = np.column_stack([np.asarray(props[name], dtype=float)
                              for name in names]) \
        if len(props["label"]) else np.zeros((0, len(names)))
    return np.asarray(props["label"]), object_classes, values


def _object_domain(class_names: Sequence[str], with_intensity: bool,
                   extra_metas=()) -> Domain:
    attributes = [ContinuousVariable(
        name, number_of_decimals=0 if name in _INTEGER_COLUMNS else None)
        for _, name in _PROPERTIES]
    if with_intensity:
        attributes.append(ContinuousVariable("mean intensity"))
    class_var = DiscreteVariable("class", values=list(class_names))
    metas = list(extra_metas) + [ContinuousVariable("object",
                                                    number_of_decimals=0)]
    return Domain(attributes, class_var, metas=metas)


def _class_names(classes: Optional[Sequence[str]], instance: bool,
                 top: int) -> List[str]:
    if classes is not None:
        classes = list(classes)
        if len(classes) < 2:
            raise InvalidInput(f"classes need the background and at least one "
                               f"class. Received: classes={classes!r}")
        return classes
    return list(INSTANCE_CLASSES) if instance \
        else default_class_names(top + 1)


def _object_class_values(object_classes: np.ndarray, instance: bool,
                         n_classes: int) -> np.ndarray:
    """Class indices (1…) to values of the class variable (0…)."""
    if instance:
        return np.zeros(len(object_classes))
    if object_classes.size and object_classes.max() >= n_classes:
        raise InvalidInput(f"the mask holds class {object_classes.max()}, but "
                           f"only {n_classes} classes are named")
    return object_classes.astype(float) - 1


def measure_objects(mask: np.ndarray, image: Optional[np.ndarray] = None,
                    classes: Optional[Sequence[str]] = None,
                    instance: bool = False, split_touching: bool = False,
                    min_distance: int = MIN_DISTANCE) -> Table:
    """Measure every object of a mask into a table, one row per object.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(height, width)`` class indices or, with `instance`, object ids.
    image : numpy.ndarray, optional
        The image the mask belongs to, ``(height, width)`` or
        ``(height, width, 3)``; its grey values (see :func:`grey_values`)
        give the mean intensity of each object.
    classes : sequence of str, optional
        Class names, index 0 (the background) first; by default
        "background", "class 1", … (or "background", "object" for
        instance masks, whose objects all take class index 1).
    instance, split_touching, min_distance
        See :func:`label_objects`.

    Returns
    -------
    Orange.data.Table
        Features "area" (pixels), "centroid row", "centroid col",
        "min row", "min col", "max row", "max col" (exclusive),
        "equivalent diameter", "eccentricity" and, with an image,
        "mean intensity" — all as scikit-image's ``regionprops`` gives
        them; the target "class" (background excluded from its values);
        the meta "object", the object's label in the image (its id in an
        instance mask).
    """
    mask = np.asarray(mask)
    top = int(mask.max()) if mask.size else 0
    names = _class_names(classes, instance, top)
    ids, object_classes, values = _measure_arrays(
        mask, image, instance, split_touching, min_distance)
    domain = _object_domain(names[1:], image is not None)
    class_values = _object_class_values(object_classes, instance, len(names))
    return Table.from_numpy(domain, values, class_values,
                            metas=ids.astype(float)[:, None])


def _summary_domain(class_names: Sequence[str], name_var=None) -> Domain:
    attributes = []
    for name in class_names[1:]:
        attributes.append(ContinuousVariable(f"{name} count",
                                             number_of_decimals=0))
        attributes.append(ContinuousVariable(f"{name} area fraction"))
    metas = [name_var] if name_var is not None else []
    return Domain(attributes, metas=metas)


def _summary_row(mask: np.ndarray, object_classes: np.ndarray,
                 n_classes: int, instance: bool) -> List[float]:
    """Object count and area fraction of each class but the background."""
    total = mask.size or 1
    row = []
    for class_index in range(1, n_classes):
        if instance:
            if class_index == 1:
                row += [float(len(object_classes)),
                        np.count_nonzero(mask) / total]
            else:
                row += [0.0, 0.0]
        else:
            row += [float(np.count_nonzero(object_classes == class_index)),
                    np.count_nonzero(mask == class_index) / total]
    return row


def summarize_objects(masks: Sequence[np.ndarray],
                      names: Optional[Sequence[str]] = None,
                      classes: Optional[Sequence[str]] = None,
                      instance: bool = False, split_touching: bool = False,
                      min_distance: int = MIN_DISTANCE) -> Table:
    """Count objects and measure class areas, one row per mask.

    Parameters
    ----------
    masks : sequence of numpy.ndarray
        Label images (or a single 2-D array for one image).
    names : sequence of str, optional
        Image names for the meta column "image name" (default "image 1"…).
    classes, instance, split_touching, min_distance
        See :func:`measure_objects`.

    Returns
    -------
    Orange.data.Table
        For each class but the background: "<class> count" (objects, as
        :func:`measure_objects` finds them) and "<class> area fraction"
        (the class's pixels over all pixels of the image).
    """
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    masks = [np.asarray(mask) for mask in masks]
    if names is None:
        names = [f"image {i}" for i in range(1, len(masks) + 1)]
    if len(names) != len(masks):
        raise InvalidInput(f"{len(names)} names for {len(masks)} masks")
    top = max((int(mask.max()) for mask in masks if mask.size), default=0)
    class_names = _class_names(classes, instance, top)
    rows = []
    for mask in masks:
        _, object_classes = label_objects(mask, instance, split_touching,
                                          min_distance)
        rows.append(_summary_row(mask, object_classes, len(class_names),
                                 instance))
    domain = _summary_domain(class_names, StringVariable("image name"))
    return Table.from_numpy(
        domain, np.array(rows, dtype=float).reshape(
            len(masks), len(domain.attributes)),
        metas=np.array(names, dtype=object)[:, None])


def _read_grey_or_rgb(path: str) -> np.ndarray:
    """An image's pixels: grey values as stored, or RGB (upright)."""
    data = read_image_bytes(path).data
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("L", "I", "F") or image.mode.startswith("I;16"):
                return np.asarray(image)
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageSkipped(f"cannot decode image: {error}") from None


def measure_table(table: Table, image_column: Optional[str] = None,
                  mask_column: Optional[str] = None,
                  split_touching: bool = False,
                  min_distance: int = MIN_DISTANCE,
                  callback: Optional[Callable[[float], None]] = None
                  ) -> Tuple[Table, Table]:
    """Measure the objects of every mask in a table of images and masks.

    Parameters
    ----------
    table : Orange.data.Table
        A table with a mask column (see
        :func:`orangecontrib.deepimage.images.find_mask_column`) and,
        optionally, an image column for the mean intensities.
    image_column, mask_column : str, optional
        Column names; by default the first image and mask columns.
    split_touching, min_distance
        See :func:`label_objects`.
    callback : callable, optional
        Called with the fraction done after each row; an exception it
        raises stops the run.

    Returns
    -------
    (Orange.data.Table, Orange.data.Table)
        Objects (as :func:`measure_objects`, with the meta "image name"
        first) and a summary with a row per input row (as
        :func:`summarize_objects`). A row whose mask cannot be read gets
        no objects and unknown summary values, with the reason in the
        summary's "problem" meta; an unreadable image gives unknown mean
        intensities and a problem, but its objects are measured.

    Raises
    ------
    ValueError
        When the table has no mask column.
    """
    mask_var = table.domain[mask_column] if mask_column else \
        require_mask_column(table)
    info = mask_info(mask_var)
    image_var = table.domain[image_column] if image_column else \
        find_image_column(table)
    instance = info.instance
    class_names = list(info.classes) or None
    mask_paths = image_paths(table, mask_var)
    pictures = image_paths(table, image_var) if image_var is not None \
        else [None] * len(table)
    row_names = _row_names(table, image_var, mask_paths)

    masks, problems = [], []
    for path in mask_paths:
        try:
            masks.append(load_mask(path, info.kind) if path else None)
            problems.append("" if path else "no mask in this row")
        except (MaskError, OSError) as error:
            masks.append(None)
            problems.append(str(error))
    top = max((int(mask.max()) for mask in masks
               if mask is not None and mask.size), default=0)
    class_names = _class_names(class_names, instance, top)

    name_var = StringVariable("image name")
    with_intensity = image_var is not None
    object_domain = _object_domain(class_names[1:], with_intensity,
                                   [name_var])
    summary_domain = _summary_domain(class_names, name_var)
    n_summary = len(summary_domain.attributes)
    object_rows, object_classes_all, object_metas = [], [], []
    summary_rows = []
    for index, mask in enumerate(masks):
        if mask is None:
            summary_rows.append([np.nan] * n_summary)
        else:
            picture = None
            if pictures[index] is not None:
                try:
                    picture = _read_grey_or_rgb(pictures[index])
                    if picture.shape[:2] != mask.shape:
                        raise ImageSkipped(
                            f"the image is {picture.shape[1]}×"
                            f"{picture.shape[0]} but the mask is "
                            f"{mask.shape[1]}×{mask.shape[0]}")
                except ImageSkipped as error:
                    problems[index] = str(error)
                    picture = None
            try:
                ids, object_classes, values = _measure_arrays(
                    mask, picture, instance, split_touching, min_distance)
                class_values = _object_class_values(
                    object_classes, instance, len(class_names))
            except ValueError as error:
                problems[index] = str(error)
                summary_rows.append([np.nan] * n_summary)
            else:
                if with_intensity and picture is None:
                    values = np.column_stack(
                        [values, np.full(len(values), np.nan)])
                object_rows.append(values)
                object_classes_all.append(class_values)
                object_metas += [[row_names[index], float(i)] for i in ids]
                summary_rows.append(_summary_row(
                    mask, object_classes, len(class_names), instance))
        if callback is not None:
            callback((index + 1) / max(len(masks), 1))

    n_columns = len(object_domain.attributes)
    objects = Table.from_numpy(
        object_domain,
        np.vstack(object_rows) if object_rows else np.zeros((0, n_columns)),
        np.concatenate(object_classes_all) if object_classes_all
        else np.zeros(0),
        metas=np.array(object_metas, dtype=object).reshape(-1, 2))
    if any(problems):
        summary_domain = Domain(summary_domain.attributes,
                                metas=[name_var, StringVariable("problem")])
        metas = np.array(list(zip(row_names, problems)), dtype=object)
    else:
        metas = np.array(row_names, dtype=object)[:, None]
    summary = Table.from_numpy(
        summary_domain, np.array(summary_rows, dtype=float).reshape(
            len(masks), n_summary),
        metas=metas.reshape(len(masks), len(summary_domain.metas)))
    objects.name, summary.name = "objects", "object summary"
    return objects, summary


def _row_names(table: Table, image_var, mask_paths) -> List[str]:
    """A name for each row: "image name" when there is one, else a file."""
    if "image name" in table.domain:
        var = table.domain["image name"]
        if var.is_string:
            return [str(value) for value in table.get_column(var)]
    paths = image_paths(table, image_var) if image_var is not None \
        else mask_paths
    return [os.path.basename(path) if path else "" for path in paths]
