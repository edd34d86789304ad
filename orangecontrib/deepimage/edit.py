"""Remove, blur, pixelate, fill or cut out objects by their masks.

Cranes out of skylines, number plates out of car ads: a table with an image
column and a mask column (see
:func:`~orangecontrib.deepimage.images.find_mask_column`) goes in, every
image is edited where its mask has the chosen classes, and the edited
images are written as new files::

    >>> from orangecontrib.deepimage.edit import edit_images
    >>> result = edit_images(table, "remove", classes=["crane"],
    ...                      out_dir="edited")
    >>> result.table      # the edited images, ready for Image Viewer
    >>> result.skipped    # [(row, reason), ...] for rows that were not read

Operations (:data:`OPERATIONS`):

* ``remove`` fills the masked pixels from their surroundings (inpainting):
  ``method="fast"`` uses OpenCV's Telea fast-marching method,
  ``method="quality"`` scikit-image's biharmonic inpainting, which gives
  smoother fills of larger areas but solves a linear system per region.
* ``blur`` (Gaussian, ``blur_radius`` is its sigma in pixels),
  ``pixelate`` (blocks of ``pixel_size`` pixels), ``fill`` (a ``colour``).
* ``cut-out`` keeps only the object: an RGBA PNG whose alpha is the mask.

The mask is grown by ``dilate`` pixels (binary dilation with a disk) to
cover the soft edges that segmentation misses. Large photos stay fast
because every operation works on padded bounding boxes of the masked
regions, never on the whole image.

Files are never overwritten: each edited image is written to a temporary
name in the output folder and renamed to a new name (``<stem>-<operation>
.<ext>``, or with ``-1``, ``-2``… added) only when it is complete, so a
failure leaves no half-written file; the originals are only read.
"""
import io
import os
from dataclasses import dataclass, field
from typing import (
    Callable, Dict, List, Optional, Sequence, Tuple, Union)

import cv2
import numpy as np
from PIL import Image, ImageColor, ImageOps

from Orange.data import ContinuousVariable, Domain, StringVariable, Table

from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.files import check_output_folder, write_new_file
from orangecontrib.deepimage.images import (
    ImageSkipped, decode_image, image_paths, read_image_bytes,
    require_image_column, require_mask_column)
from orangecontrib.deepimage.segdata import MaskError, load_mask, mask_info

__all__ = [
    "OPERATIONS", "METHODS", "EditResult", "edit_images",
    "edit_array", "object_mask", "grow_mask", "parse_colour",
    "default_output_folder", "preview_edit", "first_touched_row",
]


@dataclass(frozen=True)
class Operation:
    """What an operation is called, does, and which parameters it reads."""
    label: str
    description: str
    parameters: Tuple[str, ...] = ()


#: The operations, in the order the widget lists them.
OPERATIONS: Dict[str, Operation] = {
    "remove": Operation(
        "Remove", "Fill the objects in from their surroundings (inpainting).",
        ("method",)),
    "blur": Operation(
        "Blur", "Gaussian blur inside the objects.", ("blur_radius",)),
    "pixelate": Operation(
        "Pixelate", "Large single-colour blocks over the objects.",
        ("pixel_size",)),
    "fill": Operation(
        "Fill", "Paint the objects in one colour.", ("colour",)),
    "cut-out": Operation(
        "Cut out", "Keep only the objects, on a transparent background "
                   "(always PNG)."),
}

#: Inpainting methods for ``remove``.
METHODS: Dict[str, str] = {
    "fast": "Fast (OpenCV Telea)",
    "quality": "Quality (biharmonic)",
}

DEFAULT_BLUR_RADIUS = 12.0
DEFAULT_PIXEL_SIZE = 16
DEFAULT_COLOUR = (0, 0, 0)

#: Neighbourhood radius of Telea's method, in pixels.
TELEA_RADIUS = 5
#: Biharmonic inpainting of a region with more unknown pixels than this is
#: solved at a reduced scale (the sparse solve grows faster than linearly:
#: about 1 s for 50,000 pixels, 20 s for 400,000).
MAX_BIHARMONIC_PIXELS = 50_000
#: With more separate regions than this, one box around all of them is
#: used instead of one box per group of nearby regions.
MAX_BOXES = 256

#: Output formats kept as they are, with the options they are saved with;
#: other formats (GIF, ...) become PNG.
_SAVE_OPTIONS = {
    "JPEG": {"quality": 95},
    "PNG": {"compress_level": 4},
    "TIFF": {"compression": "tiff_lzw"},
    "WEBP": {"quality": 95, "method": 4},
    "BMP": {},
}
_ICC_MODES = ("RGB", "RGBA", "RGBX", "P")
_EXIF_ORIENTATION = 0x0112

Colour = Union[str, Sequence[int]]


@dataclass
class EditResult:
    """The result of :func:`edit_images`.

    Attributes
    ----------
    table : Orange.data.Table or None
        One row per edited image (None when no image was edited): the
        edited image (an image column with ``origin`` = the output folder),
        the source image and the number of pixels edited.
    skipped : list of (int, str)
        Rows of the input that were not edited, with the reason.
    files : list of str
        The written files, in the order of the table's rows.
    out_dir : str
        The output folder.
    """
    table: Optional[Table]
    skipped: List[Tuple[int, str]] = field(default_factory=list)
    files: List[str] = field(default_factory=list)
    out_dir: str = ""


def default_output_folder() -> str:
    """A folder in Orange's data folder: never one beside the originals."""
    from Orange.misc.environ import data_dir
    return os.path.join(data_dir(versioned=False), "deepimage",
                        "edited images")


# --- masks ----------------------------------------------------------------

def _read_labels(path: Optional[str], kind: str) -> np.ndarray:
    """Read a mask with :func:`segdata.load_mask`; problems are skips."""
    if not path:
        raise ImageSkipped("no mask in this row")
    try:
        return load_mask(path, kind)
    except (MaskError, OSError) as error:
        raise ImageSkipped(f"mask: {error}") from None


def object_mask(labels: np.ndarray,
                classes: Optional[Sequence[Union[str, int]]] = None,
                class_names: Sequence[str] = (),
                kind: str = "class") -> np.ndarray:
    """Return the pixels of the chosen classes as a boolean array.

    Parameters
    ----------
    labels : numpy.ndarray
        An integer label image (class indices, or instance ids).
    classes : sequence of str or int, optional
        Class names (from `class_names`) or indices; None for every class
        but the background (index 0). Instance masks ("instance") have no
        classes: every object is taken and `classes` is ignored.
    class_names : sequence of str
        Names of the class indices; index 0 is the background.
    kind : str
        "class" or "instance".

    Raises
    ------
    ValueError
        For a class name that is not in `class_names`.
    """
    if classes is None or kind == "instance":
        return labels > 0
    return np.isin(labels, _class_indices(classes, class_names))


def first_touched_row(mask_paths: Sequence[Optional[str]],
                      classes: Optional[Sequence[Union[str, int]]] = None,
                      class_names: Sequence[str] = (), kind: str = "class",
                      limit: Optional[int] = None) -> Optional[int]:
    """Return the first row whose mask has a pixel of the chosen classes.

    Masks are read one at a time, up to `limit` of them, stopping at the
    first hit; rows whose mask cannot be read are passed over. None when no
    mask (of those read) has one.
    """
    for row, path in enumerate(mask_paths[:limit]):
        try:
            labels = _read_labels(path, kind)
        except ImageSkipped:
            continue
        if object_mask(labels, classes, class_names, kind).any():
            return row
    return None


def _class_indices(classes: Sequence[Union[str, int]],
                   class_names: Sequence[str]) -> List[int]:
    indices = []
    for cls in classes:
        if isinstance(cls, (int, np.integer)):
            indices.append(int(cls))
        elif cls in class_names:
            indices.append(list(class_names).index(cls))
        else:
            raise InvalidInput(f"Unknown class. Received: classes={cls!r}; "
                               f"the classes are {', '.join(class_names)}")
    return indices


def grow_mask(mask: np.ndarray, dilate: int) -> np.ndarray:
    """Grow `mask` by `dilate` pixels: binary dilation with a disk."""
    mask = np.asarray(mask, dtype=bool)
    if dilate <= 0 or not mask.any():
        return mask.copy()
    from skimage.morphology import disk
    # OpenCV dilates with any footprint, and fast: skimage's disk is the
    # set of offsets within `dilate` pixels (Euclidean) of the centre.
    grown = cv2.dilate(mask.view(np.uint8), disk(int(dilate)).astype(np.uint8),
                       borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return grown.astype(bool)


# --- boxes around the masked regions --------------------------------------

def _region_boxes(mask: np.ndarray, pad: int) -> List[Tuple[slice, slice]]:
    """Padded boxes that hold whole masked regions (none split by an edge).

    Connected regions whose padded boxes overlap share one box.
    """
    count, _, stats, _ = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=8)
    height, width = mask.shape
    boxes = [[max(0, y - pad), max(0, x - pad),
              min(height, y + h + pad), min(width, x + w + pad)]
             for x, y, w, h, _ in stats[1:count]]
    if len(boxes) > MAX_BOXES:
        ys, xs = np.nonzero(mask)
        boxes = [[max(0, ys.min() - pad), max(0, xs.min() - pad),
                  min(height, ys.max() + 1 + pad),
                  min(width, xs.max() + 1 + pad)]]
    merged = True
    while merged:
        merged = False
        result = []
        for box in boxes:
            for other in result:
                if box[0] < other[2] and other[0] < box[2] \
                        and box[1] < other[3] and other[1] < box[3]:
                    other[:] = [min(box[0], other[0]), min(box[1], other[1]),
                                max(box[2], other[2]), max(box[3], other[3])]
                    merged = True
                    break
            else:
                result.append(list(box))
        boxes = result
    return [(slice(y0, y1), slice(x0, x1)) for y0, x0, y1, x1 in boxes]


# --- the operations on arrays ---------------------------------------------

def _inpaint_fast(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return cv2.inpaint(np.ascontiguousarray(rgb),
                       np.ascontiguousarray(mask, dtype=np.uint8),
                       TELEA_RADIUS, cv2.INPAINT_TELEA)


def _reduction(unknown: int) -> int:
    """The factor by which biharmonic inpainting reduces a region."""
    return max(1, int(np.ceil(np.sqrt(unknown / MAX_BIHARMONIC_PIXELS))))


def _inpaint_quality(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic
    rgb = np.ascontiguousarray(rgb)
    mask = np.ascontiguousarray(mask)
    # Regions are solved one by one: the largest sets the scale.
    count, _, stats, _ = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=8)
    factor = _reduction(int(stats[1:count, cv2.CC_STAT_AREA].max(initial=0)))
    height, width = mask.shape
    if factor > 1 and min(height, width) // factor >= 8:
        # A large region: solve at 1/factor of the size and scale the fill
        # up. Any partly masked pixel counts as masked, so the known pixels
        # of the small image are all true background.
        size = (max(1, width // factor), max(1, height // factor))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(mask.view(np.uint8) * np.uint8(255), size,
                                interpolation=cv2.INTER_AREA) > 0
        filled = inpaint_biharmonic(small.astype(np.float32) / 255,
                                    small_mask, split_into_regions=True,
                                    channel_axis=-1)
        filled = cv2.resize(filled, (width, height),
                            interpolation=cv2.INTER_CUBIC)
    else:
        filled = inpaint_biharmonic(rgb.astype(np.float32) / 255, mask,
                                    split_into_regions=True, channel_axis=-1)
    return np.clip(filled * 255 + 0.5, 0, 255).astype(np.uint8)


def _blur(rgb: np.ndarray, _mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=float(sigma),
                            borderType=cv2.BORDER_REFLECT)


def _pixelate(rgb: np.ndarray, origin: Tuple[int, int], size: int
              ) -> np.ndarray:
    """Blocks of `size` aligned with the image's (0, 0) at `origin`."""
    height, width = rgb.shape[:2]
    starts = []
    for offset, length in zip(origin, (height, width)):
        first = (-offset) % size
        starts.append(np.unique(np.r_[0, np.arange(first, length, size)]))
    sums = np.add.reduceat(np.add.reduceat(rgb.astype(np.float64),
                                           starts[0], axis=0),
                           starts[1], axis=1)
    lengths = [np.diff(np.r_[s, n]) for s, n in zip(starts, (height, width))]
    means = sums / (lengths[0][:, None, None] * lengths[1][None, :, None])
    means = np.repeat(np.repeat(means, lengths[0], axis=0), lengths[1], axis=1)
    return np.clip(means + 0.5, 0, 255).astype(np.uint8)


def parse_colour(colour: Colour) -> Tuple[int, int, int]:
    """An (r, g, b) triple from "#rrggbb", a colour name or a sequence."""
    if isinstance(colour, str):
        try:
            rgb = ImageColor.getrgb(colour)
        except ValueError:
            raise InvalidInput(f"Not a colour. Received: colour={colour!r}") \
                from None
        return tuple(int(c) for c in rgb[:3])
    values = tuple(int(c) for c in colour)
    if len(values) < 3 or not all(0 <= c <= 255 for c in values[:3]):
        raise InvalidInput(f"A colour is three values 0..255. "
                           f"Received: colour={colour!r}")
    return values[:3]


def edit_array(pixels: np.ndarray, mask: np.ndarray, operation: str, *,
               method: Optional[str] = None,
               blur_radius: float = DEFAULT_BLUR_RADIUS,
               pixel_size: int = DEFAULT_PIXEL_SIZE,
               colour: Colour = DEFAULT_COLOUR) -> np.ndarray:
    """Edit the pixels under `mask` (already grown) and return a new array.

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(height, width, 3)`` RGB or ``(height, width, 4)`` RGBA uint8;
        alpha is kept (cut-out multiplies it by the mask).
    mask : numpy.ndarray
        ``(height, width)`` bool: the pixels to edit.
    operation : str
        A key of :data:`OPERATIONS`.
    method : str, optional
        For ``remove``: "fast" (default) or "quality" (see :data:`METHODS`).
    blur_radius : float
        Sigma of the Gaussian blur, in pixels.
    pixel_size : int
        Side of the pixelation blocks, in pixels.
    colour : str or (int, int, int)
        The fill colour.

    Returns
    -------
    numpy.ndarray
        uint8; RGBA for ``cut-out`` (and for RGBA input), else RGB. Pixels
        outside `mask` are unchanged (cut-out makes them transparent).
    """
    _check_parameters(operation, method, blur_radius, pixel_size, colour)
    pixels = np.asarray(pixels, dtype=np.uint8)
    mask = np.asarray(mask, dtype=bool)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) \
            or pixels.shape[:2] != mask.shape:
        raise InvalidInput(f"Expected a (height, width, 3 or 4) image and a "
                           f"(height, width) mask. Received: "
                           f"pixels={pixels.shape}, mask={mask.shape}")
    out = pixels.copy()
    if operation == "cut-out":
        alpha = mask.astype(np.uint8) * np.uint8(255)
        if pixels.shape[2] == 4:
            alpha = np.minimum(alpha, pixels[..., 3])
        rgb = np.where(mask[..., None], pixels[..., :3], 0).astype(np.uint8)
        return np.dstack([rgb, alpha])
    if not mask.any():
        return out
    if operation == "remove" and mask.all():
        raise InvalidInput(_NOTHING_LEFT)
    rgb = out[..., :3]
    if operation == "fill":
        rgb[mask] = parse_colour(colour)
        return out
    if operation == "remove":
        quality = (method or "fast") == "quality"
        # Biharmonic inpainting reads two pixels around a region, at the
        # reduced scale of a large one: pad enough for the largest.
        pad = 3 * _reduction(int(np.count_nonzero(mask))) + 5 if quality \
            else TELEA_RADIUS + 3
    elif operation == "blur":
        pad = int(np.ceil(3 * blur_radius)) + 1
    else:  # pixelate
        pixel_size = int(pixel_size)
        pad = pixel_size
    for rows, cols in _region_boxes(mask, pad):
        if operation == "pixelate":
            # Whole blocks, so a block's colour is the mean of all of it.
            rows = slice(rows.start - rows.start % pixel_size, rows.stop)
            cols = slice(cols.start - cols.start % pixel_size, cols.stop)
        box, box_mask = rgb[rows, cols], mask[rows, cols]
        if operation == "remove":
            # Each box holds whole regions and no other masked pixels, so
            # only the box is needed to fill them.
            edited = _inpaint_quality(box, box_mask) if quality \
                else _inpaint_fast(box, box_mask)
        elif operation == "blur":
            edited = _blur(box, box_mask, blur_radius)
        else:
            edited = _pixelate(box, (rows.start, cols.start), pixel_size)
        box[box_mask] = edited[box_mask]
    return out


_NOTHING_LEFT = "the mask covers the whole image: nothing is left to " \
                "fill it in from"


def _check_parameters(operation: str, method: Optional[str],
                      blur_radius: float, pixel_size: int,
                      colour: Colour) -> None:
    """Raise ValueError, naming the bad value, for a wrong parameter."""
    if operation not in OPERATIONS:
        raise InvalidInput(f"Unknown operation. Received: "
                           f"operation={operation!r}; the operations are "
                           f"{', '.join(OPERATIONS)}")
    if method is not None and method not in METHODS:
        raise InvalidInput(f"Unknown inpainting method. Received: "
                           f"method={method!r}; the methods are "
                           f"{', '.join(METHODS)}")
    if operation == "blur" and not blur_radius > 0:
        raise InvalidInput(f"The blur radius must be positive. "
                           f"Received: blur_radius={blur_radius!r}")
    if operation == "pixelate" and not int(pixel_size) >= 1:
        raise InvalidInput(f"The pixel size must be at least 1. "
                           f"Received: pixel_size={pixel_size!r}")
    if operation == "fill":
        parse_colour(colour)


# --- reading and writing images -------------------------------------------

@dataclass
class _Photo:
    pixels: np.ndarray      # RGB or RGBA, upright
    format: Optional[str]   # PIL's format of the file
    info: dict              # what is kept when saving: exif, icc, dpi
    subsampling: Optional[int] = None


def _read_photo(path: Optional[str]) -> _Photo:
    """Read an image upright, as RGB (or RGBA when it has transparency)."""
    data = read_image_bytes(path).data
    rgb = decode_image(data)  # validates and decodes robustly
    try:
        source = Image.open(io.BytesIO(data))
    except Exception as error:  # pylint: disable=broad-except
        raise ImageSkipped(f"cannot decode image: {error}") from None
    info = {}
    subsampling = None
    with source:
        has_alpha = source.mode in ("RGBA", "LA", "PA") or (
            source.mode == "P" and "transparency" in source.info)
        pixels = None
        if has_alpha:
            try:
                pixels = np.asarray(
                    ImageOps.exif_transpose(source).convert("RGBA"))
            except (OSError, ValueError, SyntaxError):
                pixels = None
            if pixels is not None and pixels.shape[:2] != rgb.size[::-1]:
                pixels = None
        if pixels is None:
            pixels = np.asarray(rgb)
        try:
            exif = source.getexif()
            if len(exif):
                if _EXIF_ORIENTATION in exif:
                    exif[_EXIF_ORIENTATION] = 1  # the pixels are upright now
                info["exif"] = exif.tobytes()
        except Exception:  # pylint: disable=broad-except
            pass  # a broken EXIF block is dropped
        icc = source.info.get("icc_profile")
        if icc and source.mode in _ICC_MODES:
            info["icc_profile"] = icc
        if "dpi" in source.info:
            info["dpi"] = source.info["dpi"]
        if source.format == "JPEG":
            from PIL import JpegImagePlugin
            sampling = JpegImagePlugin.get_sampling(source)
            subsampling = sampling if sampling >= 0 else None
        return _Photo(np.ascontiguousarray(pixels), source.format, info,
                      subsampling)


def _output_format(photo: _Photo, operation: str, rgba: bool) -> str:
    if operation == "cut-out":
        return "PNG"
    fmt = photo.format if photo.format in _SAVE_OPTIONS else "PNG"
    if rgba and fmt in ("JPEG", "BMP"):
        return "PNG"
    return fmt


def _output_name(path: str, operation: str, fmt: str) -> str:
    name = os.path.basename(path.rstrip("/").split("?")[0]) or "image"
    stem, ext = os.path.splitext(name)
    keep_ext = {"JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
                "PNG": (".png",), "TIFF": (".tif", ".tiff"),
                "WEBP": (".webp",), "BMP": (".bmp",)}[fmt]
    if ext.lower() not in keep_ext:
        ext = keep_ext[0]
    return f"{stem or 'image'}-{operation}{ext}"


def _save_options(photo: _Photo, fmt: str) -> dict:
    options = dict(_SAVE_OPTIONS[fmt])
    if fmt in ("JPEG", "PNG", "TIFF", "WEBP"):
        options.update({key: value for key, value in photo.info.items()
                        if not (key == "exif" and fmt == "TIFF")})
    if fmt == "JPEG" and photo.subsampling is not None:
        options["subsampling"] = photo.subsampling
    return options


def _write_new_file(image: Image.Image, folder: str, name: str, fmt: str,
                    options: dict) -> str:
    """Write `image` to a new file in `folder`, all or nothing (see
    :func:`~orangecontrib.deepimage.files.write_new_file`: no file is ever
    overwritten, nor left half-written)."""
    return write_new_file(
        os.path.join(folder, name),
        lambda file: image.save(file, format=fmt, **options))


def _check_writable(folder: str) -> None:
    """Raise a clear error unless a file can really be made in `folder`."""
    check_output_folder(folder)


# --- tables ---------------------------------------------------------------

def _result_table(out_dir: str, names: List[str], sources: List[str],
                  counts: List[int], ids: np.ndarray) -> Table:
    image = StringVariable("edited image")
    image.attributes.update({"type": "image", "origin": out_dir})
    source = StringVariable("source image")
    edited = ContinuousVariable("pixels edited", number_of_decimals=0)
    domain = Domain([edited], metas=[image, source])
    metas = np.array([names, sources], dtype=object).T.reshape(len(names), 2)
    table = Table.from_numpy(
        domain, np.array(counts, dtype=float).reshape(-1, 1), metas=metas,
        ids=ids)
    table.name = "Edited images"
    return table


def edit_images(table: Table, operation: str,
                classes: Optional[Sequence[Union[str, int]]] = None,
                dilate: int = 3, out_dir: Optional[str] = None,
                method: Optional[str] = None,
                blur_radius: float = DEFAULT_BLUR_RADIUS,
                pixel_size: int = DEFAULT_PIXEL_SIZE,
                colour: Colour = DEFAULT_COLOUR,
                progress: Optional[Callable[[float], None]] = None
                ) -> EditResult:
    """Edit each image of `table` where its mask has the chosen classes.

    Parameters
    ----------
    table : Orange.data.Table
        With an image column and a mask column (see
        :func:`~orangecontrib.deepimage.images.find_mask_column`).
    operation : str
        "remove", "blur", "pixelate", "fill" or "cut-out" (:data:`OPERATIONS`).
    classes : sequence of str or int, optional
        Class names or indices to edit; None for all but the background.
    dilate : int
        Grow the mask by this many pixels (a disk) to cover object edges.
    out_dir : str, optional
        An existing, writable folder; None for
        :func:`default_output_folder` (created when missing).
    method : str, optional
        For ``remove``: "fast" (default) or "quality".
    blur_radius, pixel_size, colour
        See :func:`edit_array`.
    progress : callable, optional
        Called with the fraction done after each image; it may raise
        (e.g. :class:`~orangecontrib.deepimage.errors.Cancelled`) to stop,
        leaving the files written so far and no partial one.

    Returns
    -------
    EditResult

    Raises
    ------
    InvalidInput
        Without an image or a mask column, or for an unknown operation,
        method or class (a ``ValueError``).
    UnwritableFolder
        When the output folder is missing or read-only (also a
        ``FileNotFoundError`` or ``PermissionError``), raised before
        anything is read or written; or when the disk fills up (nothing
        half-written is left).
    """
    _check_parameters(operation, method, blur_radius, pixel_size, colour)
    image_column = require_image_column(table)
    mask_column = require_mask_column(table)
    info = mask_info(mask_column)
    kind, class_names = info.kind, list(info.classes)
    if classes is not None and kind == "class":
        _class_indices(classes, class_names)  # unknown names fail now
    if out_dir is None:
        out_dir = default_output_folder()
        os.makedirs(out_dir, exist_ok=True)
    out_dir = os.path.abspath(out_dir)
    _check_writable(out_dir)

    paths = image_paths(table, image_column)
    mask_files = image_paths(table, mask_column)
    names, sources, counts, files, rows, skipped = [], [], [], [], [], []
    for row, (path, mask_path) in enumerate(zip(paths, mask_files)):
        try:
            photo = _read_photo(path)
            labels = _read_labels(mask_path, kind)
            height, width = photo.pixels.shape[:2]
            if labels.shape != (height, width):
                raise ImageSkipped(
                    f"the mask is {labels.shape[1]}×{labels.shape[0]} "
                    f"pixels but the image {width}×{height}")
            mask = grow_mask(object_mask(labels, classes, class_names, kind),
                             dilate)
            if operation == "remove" and mask.all():
                raise ImageSkipped(_NOTHING_LEFT)
        except ImageSkipped as error:
            skipped.append((row, str(error)))
        else:
            edited = edit_array(photo.pixels, mask, operation, method=method,
                                blur_radius=blur_radius,
                                pixel_size=pixel_size, colour=colour)
            rgba = edited.shape[2] == 4
            fmt = _output_format(photo, operation, rgba)
            image = Image.fromarray(edited, "RGBA" if rgba else "RGB")
            written = _write_new_file(
                image, out_dir, _output_name(path, operation, fmt), fmt,
                _save_options(photo, fmt))
            files.append(written)
            names.append(os.path.basename(written))
            sources.append(path)
            counts.append(int(np.count_nonzero(mask)))
            rows.append(row)
        if progress is not None:
            progress((row + 1) / len(paths))
    result_table = _result_table(out_dir, names, sources, counts,
                                 table.ids[rows]) if rows else None
    return EditResult(result_table, skipped, files, out_dir)


# --- a preview of one image -----------------------------------------------

def preview_edit(image_path: str, mask_path: str, operation: str, *,
                 kind: str = "class",
                 classes: Optional[Sequence[Union[str, int]]] = None,
                 class_names: Sequence[str] = (), dilate: int = 3,
                 method: Optional[str] = None,
                 blur_radius: float = DEFAULT_BLUR_RADIUS,
                 pixel_size: int = DEFAULT_PIXEL_SIZE,
                 colour: Colour = DEFAULT_COLOUR,
                 max_size: Optional[int] = 800
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Return (before, after) arrays of one image, nothing written.

    With `max_size`, a larger image is first reduced to fit it and the
    lengths (dilation, blur radius, pixel size) are reduced with it, so
    the preview is quick and looks like the written result.

    Raises
    ------
    ImageSkipped
        When the image or the mask cannot be read or do not match.
    """
    photo = _read_photo(image_path)
    labels = _read_labels(mask_path, kind)
    height, width = photo.pixels.shape[:2]
    if labels.shape != (height, width):
        raise ImageSkipped(f"the mask is {labels.shape[1]}×{labels.shape[0]} "
                           f"pixels but the image {width}×{height}")
    mask = object_mask(labels, classes, class_names, kind)
    pixels = photo.pixels
    scale = 1.0
    if max_size and max(height, width) > max_size:
        scale = max_size / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.view(np.uint8), size,
                          interpolation=cv2.INTER_NEAREST).astype(bool)
    mask = grow_mask(mask, int(round(dilate * scale)))
    after = edit_array(pixels, mask, operation, method=method,
                       blur_radius=max(0.5, blur_radius * scale),
                       pixel_size=max(1, int(round(pixel_size * scale))),
                       colour=colour)
    return pixels, after
