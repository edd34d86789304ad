"""Segmentation data: reading masks and pairing them with their images.

A segmentation data set is a folder of images and a folder of masks with
the same file stems (``cell01.jpg`` ↔ ``cell01.png`` or
``cell01_mask.png``). :func:`load_mask` reads one mask into an integer
label image; :func:`pair_folders` pairs two folders into an Orange table
with an image column and a mask column (see
:func:`orangecontrib.deepimage.images.find_mask_column`) and a
:class:`PairingReport` that lists every file it could not use, and why.

Masks come in two kinds:

``"class"``
    Each pixel holds a class index; 0 is the background. Class names come
    from the caller, from a ``classes.txt`` in the masks folder (one name a
    line, index 0 first), or default to "background", "class 1", …
``"instance"``
    Each object has its own id (usually in a 16- or 32-bit PNG or TIFF);
    0 is the background.

:func:`mask_info` reads what a mask column says about its masks (kind,
classes, background) into a :class:`MaskInfo`.

Masks are label images, never pictures: they are not resampled, not
colour-converted and not read from lossy JPEG. Problems are reported, not
guessed: a pair whose mask is unreadable, is an RGB colour image, has a
different size than its image or holds values that are not classes is left
out and listed with the reason.
"""
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from Orange.data import ContinuousVariable, Domain, StringVariable, Table

from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.images import (
    MAX_IMAGE_PIXELS, NO_MASK_COLUMN, is_mask_column, mask_class_names,
    require_mask_column)

__all__ = [
    "MaskInfo", "mask_info", "MaskError", "RGBMaskError", "FolderNotFound",
    "PairingReport",
    "load_mask",
    "pair_folders", "read_class_names", "default_class_names",
    "image_size", "IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "MASK_SUFFIXES",
    "CLASSES_FILE", "MASK_KINDS",
]

#: Extensions of files taken as images in the images folder.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp",
                    ".gif", ".webp")
#: Extensions of files taken as masks in the masks folder (JPEG masks are
#: listed too, so that they are reported as lossy instead of ignored).
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".gif", ".jpg", ".jpeg")
#: Endings of a mask's stem that are dropped before pairing it with an
#: image (``cell01_mask.png`` pairs with ``cell01.jpg``); case-insensitive.
MASK_SUFFIXES = ("_mask", "-mask", ".mask", " mask", "_masks", "-masks",
                 "_label", "-label", "_labels", "-labels", "_seg", "-seg",
                 "_gt", "-gt", "_annotation", "-annotation")
#: The file in the masks folder that names the classes, one a line.
CLASSES_FILE = "classes.txt"
#: Mask kinds, as stored in a mask column's ``attributes["mask"]``.
MASK_KINDS = ("class", "instance")
#: Instance masks without class names have these classes.
INSTANCE_CLASSES = ["background", "object"]

#: The label value of the background in every kind of mask.
BACKGROUND = 0

_TIFF_EXTENSIONS = (".tif", ".tiff")
_GREY_MODES = ("L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")

RGB_MASK_HELP = (
    "Masks must hold class indices (0 = background, 1, 2, …) or object "
    "ids, not colours. Convert a colour mask by mapping each colour to its "
    "class index, e.g. in Python: "
    "labels = np.zeros(rgb.shape[:2], np.uint8); "
    "labels[(rgb == (255, 0, 0)).all(axis=-1)] = 1; ... "
    "Image.fromarray(labels).save('mask.png') "
    "— or save the mask as a palette (indexed) PNG, whose palette index is "
    "the class."
)


class MaskError(ValueError):
    """A file cannot be used as a mask; ``str(error)`` says why."""


class FolderNotFound(InvalidInput, FileNotFoundError):
    """A folder to read images or masks from does not exist."""


class RGBMaskError(MaskError):
    """A mask is an RGB colour image (colours are not class indices)."""


# --- what a mask column says ---------------------------------------------

@dataclass(frozen=True)
class MaskInfo:
    """The kind, classes and background of a mask column's masks.

    Read it from a column with :func:`mask_info`; every part of the add-on
    that reads masks (segmentation, measure, edit and their widgets) takes
    the kind and classes from here.

    Attributes
    ----------
    kind : str
        ``"class"`` (pixel values are class indices) or ``"instance"``
        (each object has its own id).
    classes : tuple of str
        Class names, index 0 (the background) first, as the column names
        them (``attributes["classes"]``). Empty for class masks whose
        column names fewer than two classes (the names then come from the
        values, see :func:`default_class_names`); instance masks without
        names have "background" and "object".
    background : int
        The label value of the background (0 in every kind of mask).
    """
    kind: str = "class"
    classes: Tuple[str, ...] = ()
    background: int = BACKGROUND

    @property
    def instance(self) -> bool:
        """True for instance masks."""
        return self.kind == "instance"

    @property
    def binary(self) -> bool:
        """True when the masks tell only objects from the background:
        instance masks, and class masks with two classes."""
        return self.instance or len(self.classes) == 2

    @property
    def background_name(self) -> str:
        """The name of the background class."""
        return self.classes[0] if self.classes else INSTANCE_CLASSES[0]

    @property
    def model_classes(self) -> List[str]:
        """The classes of a network trained on these masks.

        Class masks keep their names; instance masks (whose objects are
        learned as one foreground class) and class masks without names
        give the background and "object".
        """
        if self.instance:
            return list(self.classes[:2]) if len(self.classes) >= 2 \
                else list(INSTANCE_CLASSES)
        return list(self.classes) or list(INSTANCE_CLASSES)

    def training_labels(self, labels: np.ndarray) -> np.ndarray:
        """The class indices a network learns from one mask: the mask for
        class masks; foreground (1) and background (0) for instance
        masks."""
        if self.instance:
            return (np.asarray(labels) != self.background).astype(np.int32)
        return np.asarray(labels)


def mask_info(table_or_column) -> MaskInfo:
    """Read the kind and classes of a table's (first) mask column.

    Parameters
    ----------
    table_or_column : Orange.data.Table or Orange.data.Variable
        A table with a mask column, or the mask column itself (see
        :func:`orangecontrib.deepimage.images.find_mask_column`).

    Returns
    -------
    MaskInfo
        ``attributes["mask"]`` gives the kind: ``"instance"`` (in any
        case) is instance masks, anything else class masks;
        ``attributes["classes"]`` (comma-separated) the class names.

    Raises
    ------
    ValueError
        (:class:`~orangecontrib.deepimage.errors.InvalidInput` for a
        variable) when the table has no mask column, or the variable is
        not one.
    """
    if isinstance(table_or_column, Table):
        column = require_mask_column(table_or_column)
    else:
        column = table_or_column
        if not is_mask_column(column):
            raise InvalidInput(NO_MASK_COLUMN)
    kind = "instance" \
        if str(column.attributes.get("mask", "")).strip().lower() \
        == "instance" else "class"
    classes = mask_class_names(column)
    if len(classes) < 2:
        classes = list(INSTANCE_CLASSES) if kind == "instance" else []
    return MaskInfo(kind, tuple(classes))


# --- one mask ------------------------------------------------------------

def _integral(array: np.ndarray, path: str) -> np.ndarray:
    """Return `array` as an integer label image or raise MaskError."""
    if array.dtype == bool:
        return array.astype(np.int32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or \
                not np.array_equal(array, np.round(array)):
            raise MaskError(f"{_name(path)}: the mask holds fractional "
                            "values; masks must hold whole numbers "
                            "(class indices or object ids)")
    elif not np.issubdtype(array.dtype, np.integer):
        raise MaskError(f"{_name(path)}: unsupported pixel type "
                        f"{array.dtype}")
    if array.size and array.min() < 0:
        raise MaskError(f"{_name(path)}: the mask holds negative values "
                        f"(down to {array.min()})")
    top = array.max() if array.size else 0
    dtype = np.int32 if top <= np.iinfo(np.int32).max else np.int64
    return array.astype(dtype)


def _name(path: str) -> str:
    return os.path.basename(path)


def _from_channels(array: np.ndarray, path: str) -> np.ndarray:
    """Reduce an (H, W, C) array to (H, W) if it is grey; else refuse."""
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[-1] in (1, 2):  # grey (+ alpha)
        return array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and \
                np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
        raise RGBMaskError(
            f"{_name(path)} is an RGB colour image, not a mask. "
            + RGB_MASK_HELP)
    raise MaskError(f"{_name(path)}: cannot use an array of shape "
                    f"{array.shape} as a mask")


def _read_tiff(path: str) -> Tuple[np.ndarray, int]:
    import tifffile
    try:
        with tifffile.TiffFile(path) as tiff:
            if len(tiff.pages) > 1:
                raise MaskError(f"{_name(path)}: a multi-page TIFF; "
                                "a mask must be a single 2-D image")
            array = tiff.asarray()
    except MaskError:
        raise
    except Exception as error:  # pylint: disable=broad-except
        raise MaskError(f"cannot read {_name(path)}: {error}") from None
    while array.ndim > 2 and array.shape[0] == 1:  # (1, H, W) stacks
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[0] in (3, 4) \
            and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar RGB
    if array.ndim not in (2, 3):
        raise MaskError(f"{_name(path)}: a mask must be a 2-D image, "
                        f"not an array of shape {array.shape}")
    return array, array.dtype.itemsize * 8


def _read_pil(path: str) -> Tuple[np.ndarray, int, str]:
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise MaskError(f"file not found: {path}") from None
    except UnidentifiedImageError:
        raise MaskError(f"{_name(path)} is not an image file") from None
    except (OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as error:
        raise MaskError(f"cannot read {_name(path)}: {error}") from None
    with image:
        if image.format == "JPEG":
            raise MaskError(
                f"{_name(path)} is a JPEG: its lossy compression changes "
                "label values; save masks as PNG or TIFF")
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise MaskError(f"{_name(path)}: {width}×{height} pixels is "
                            "more than the limit")
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        mode = image.mode
        try:
            if mode == "P":
                # The palette INDEX is the class; the colours are ignored.
                array = np.asarray(image)
            elif mode == "PA":
                array = np.asarray(image)[..., 0]
            elif mode == "1":
                array = np.asarray(image).astype(np.uint8)
            elif mode in _GREY_MODES or mode in ("LA", "RGB", "RGBA"):
                array = np.asarray(image)
            else:
                array = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as error:
            raise MaskError(f"cannot decode {_name(path)}: {error}") from None
    bits = 8 if mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA") else 32
    if mode.startswith("I;16"):
        bits = 16
    return array, bits, mode


def _read_mask(path: str) -> Tuple[np.ndarray, int, bool]:
    """Return (labels, bits per pixel, is palette) before 0/255 folding."""
    if path.lower().endswith(_TIFF_EXTENSIONS):
        array, bits = _read_tiff(path)
        palette = False
    else:
        array, bits, mode = _read_pil(path)
        palette = mode in ("P", "PA")
    array = _from_channels(array, path)
    return _integral(array, path), bits, palette


def _is_binary_255(labels: np.ndarray) -> bool:
    values = np.unique(labels)
    return values.size > 0 and values[-1] == 255 and \
        np.isin(values, (0, 255)).all()


def load_mask(path: str, kind: str = "class") -> np.ndarray:
    """Read a mask file into a (height, width) integer label image.

    Handled formats:

    - class-index PNG/TIFF/BMP (8-bit grey, 16- or 32-bit): the value is
      the class;
    - black-and-white masks with values 0 and 255 (also 1-bit images):
      read as 0 and 1 for ``kind="class"``;
    - palette (indexed) PNG/GIF: the palette *index* is the class, whatever
      its colour;
    - instance-label PNG/TIFF (8, 16 or 32-bit), each object its own id,
      for ``kind="instance"``;
    - an RGB(A) image whose pixels are all grey (R = G = B): read as grey.

    Masks are never resampled or colour-converted.

    Parameters
    ----------
    path : str
        A local file.
    kind : {"class", "instance"}
        How the values are to be read; only class masks fold 0/255 to 0/1.

    Returns
    -------
    numpy.ndarray
        ``(height, width)`` int32 (int64 for ids beyond 2**31 - 1), >= 0.

    Raises
    ------
    RGBMaskError
        For an RGB colour image (the message says how to convert it).
    MaskError
        For anything else that is not a usable mask: a missing or
        unreadable file, a JPEG, fractional or negative values, several
        pages or channels.
    """
    if kind not in MASK_KINDS:
        raise InvalidInput(f"kind must be 'class' or 'instance'. "
                           f"Received: kind={kind!r}")
    labels, _, palette = _read_mask(path)
    if kind == "class" and not palette and _is_binary_255(labels):
        labels = (labels > 0).astype(np.int32)
    return labels


def image_size(path: str) -> Tuple[int, int]:
    """Return an image's upright (width, height) from its header.

    The pixels are not decoded. EXIF orientation is taken into account
    (images are decoded upright, see
    :func:`orangecontrib.deepimage.images.decode_image`).

    Raises
    ------
    OSError, ValueError
        When the file is not a readable image.
    """
    if path.lower().endswith(_TIFF_EXTENSIONS):
        try:
            import tifffile
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages[0]
                return int(page.imagewidth), int(page.imagelength)
        except Exception:  # pylint: disable=broad-except
            pass  # let PIL try, and say why it cannot
    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(0x0112, 1)
            except Exception:  # pylint: disable=broad-except
                orientation = 1
    except (UnidentifiedImageError, SyntaxError,
            Image.DecompressionBombError) as error:
        raise ValueError(str(error) or "not an image file") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height


# --- class names ---------------------------------------------------------

def default_class_names(n_classes: int) -> List[str]:
    """``["background", "class 1", …]`` for `n_classes` (at least 2)."""
    return ["background"] + [f"class {i}" for i in range(1, max(n_classes, 2))]


def _check_names(names: Sequence[str], source: str) -> List[str]:
    names = [str(name).strip() for name in names]
    if any("," in name for name in names):
        bad = next(name for name in names if "," in name)
        raise InvalidInput(f"class names cannot contain commas. Received: "
                           f"{bad!r} in {source}")
    if any(not name for name in names):
        raise InvalidInput(f"empty class name in {source}")
    if len(set(names)) != len(names):
        raise InvalidInput(f"class names repeat in {source}: "
                           f"{', '.join(names)}")
    if len(names) < 2:
        raise InvalidInput(f"at least two class names (the background and "
                           f"one class) are needed in {source}. Received: "
                           f"{', '.join(names) or 'none'}")
    return names


def read_class_names(path: str) -> List[str]:
    """Read class names from a text file, one a line, index 0 first.

    Empty lines and lines starting with ``#`` are skipped.

    Raises
    ------
    ValueError
        When the names are fewer than two, repeat or contain commas.
    """
    with open(path, encoding="utf-8-sig") as file:
        names = [line.strip() for line in file]
    names = [name for name in names if name and not name.startswith("#")]
    return _check_names(names, _name(path))


def _parse_classes(classes: Union[None, str, Sequence[str]]
                   ) -> Optional[List[str]]:
    if classes is None:
        return None
    if isinstance(classes, str):
        parts = [part.strip() for part in classes.split(",")]
        if not any(parts):
            return None
        return _check_names(parts, "the class names given")
    return _check_names(list(classes), "the class names given")


# --- pairing -------------------------------------------------------------

@dataclass
class PairingReport:
    """What :func:`pair_folders` found, and every file it could not use.

    Each problem list holds ``(file name, reason)`` pairs (for size
    mismatches and unknown values the reason gives the sizes or values).
    """
    images_dir: str = ""
    masks_dir: str = ""
    n_images: int = 0
    n_masks: int = 0
    n_pairs: int = 0
    kind: str = "class"
    kind_detected: bool = False
    classes: List[str] = field(default_factory=list)
    classes_source: str = "default"
    unpaired_images: List[str] = field(default_factory=list)
    unpaired_masks: List[str] = field(default_factory=list)
    ambiguous: List[Tuple[str, str]] = field(default_factory=list)
    size_mismatches: List[Tuple[str, str]] = field(default_factory=list)
    unknown_values: List[Tuple[str, str]] = field(default_factory=list)
    rgb_masks: List[Tuple[str, str]] = field(default_factory=list)
    unreadable_masks: List[Tuple[str, str]] = field(default_factory=list)
    unreadable_images: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def n_left_out(self) -> int:
        """Pairs (image + mask found) that were left out of the table."""
        return len(self.ambiguous) + len(self.size_mismatches) + \
            len(self.unknown_values) + len(self.rgb_masks) + \
            len(self.unreadable_masks) + len(self.unreadable_images)

    def problems(self) -> List[Tuple[str, str, str]]:
        """All problems as ``(kind of problem, file, reason)`` rows."""
        rows = [("unpaired image", name, "no mask with this stem")
                for name in self.unpaired_images]
        rows += [("unpaired mask", name, "no image with this stem")
                 for name in self.unpaired_masks]
        for title, entries in (("ambiguous", self.ambiguous),
                               ("size mismatch", self.size_mismatches),
                               ("unknown values", self.unknown_values),
                               ("RGB mask", self.rgb_masks),
                               ("unreadable mask", self.unreadable_masks),
                               ("unreadable image", self.unreadable_images)):
            rows += [(title, name, reason) for name, reason in entries]
        return rows

    def summary(self) -> str:
        """A few lines of plain text: what was paired, what was left out."""
        detected = " (detected)" if self.kind_detected else ""
        lines = [f"{self.n_images} images, {self.n_masks} masks: "
                 f"{self.n_pairs} pairs.",
                 f"{self.kind.capitalize()} masks{detected}; "
                 f"{len(self.classes)} classes ({self.classes_source}): "
                 f"{', '.join(self.classes)}."]
        problems = self.problems()
        if problems:
            lines.append(f"{len(problems)} problem(s); "
                         f"{self.n_left_out} pair(s) left out.")
        return "\n".join(lines)


def _strip_mask_suffix(stem: str) -> Optional[str]:
    lower = stem.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[:-len(suffix)]
    return None


def _list_files(folder: str, extensions: Sequence[str]) -> List[str]:
    names = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.name.lower().endswith(tuple(extensions)):
            names.append(entry.name)
    return sorted(names)


def _match(image_names: List[str], mask_names: List[str],
           report: PairingReport) -> List[Tuple[str, str]]:
    """Pair names by stem; fill the unpaired and ambiguous lists."""
    images_by_stem: Dict[str, List[str]] = {}
    for name in image_names:
        images_by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
    # A mask's candidate keys: its own stem first, then without a suffix.
    exact: Dict[str, List[str]] = {}
    suffixed: Dict[str, List[str]] = {}
    for name in mask_names:
        stem = os.path.splitext(name)[0]
        exact.setdefault(stem, []).append(name)
        base = _strip_mask_suffix(stem)
        if base is not None:
            suffixed.setdefault(base, []).append(name)
    pairs, used_masks = [], set()
    for stem in sorted(images_by_stem):
        images = images_by_stem[stem]
        masks = exact.get(stem) or suffixed.get(stem, [])
        if not masks:
            report.unpaired_images.extend(images)
            continue
        used_masks.update(masks)
        if len(images) > 1:
            for image in images:
                report.ambiguous.append(
                    (image, f"several images share the stem '{stem}': "
                            f"{', '.join(images)}"))
        elif len(masks) > 1:
            report.ambiguous.append(
                (images[0], f"several masks fit: {', '.join(masks)}"))
        else:
            pairs.append((images[0], masks[0]))
    report.unpaired_masks.extend(
        name for name in mask_names if name not in used_masks)
    return pairs


def _split_same_folder(names: List[str]) -> Tuple[List[str], List[str]]:
    """Images and masks in one folder: masks are named with a suffix."""
    images, masks = [], []
    for name in names:
        stem = os.path.splitext(name)[0]
        if _strip_mask_suffix(stem) is not None and \
                name.lower().endswith(MASK_EXTENSIONS):
            masks.append(name)
        elif name.lower().endswith(IMAGE_EXTENSIONS):
            images.append(name)
    return images, masks


def _format_values(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (", …" if len(values) > limit else "")


def pair_folders(images_dir: str, masks_dir: str,
                 classes: Union[None, str, Sequence[str]] = None,
                 kind: Optional[str] = None,
                 callback: Optional[Callable[[float], None]] = None
                 ) -> Tuple[Optional[Table], PairingReport]:
    """Pair the images in one folder with the masks in another, by stem.

    An image pairs with the mask of the same stem (``cell01.jpg`` ↔
    ``cell01.png``) or with the stem plus a mask suffix (``cell01_mask.png``,
    ``cell01-mask.tif``, see :data:`MASK_SUFFIXES`). Both folders may be
    the same when the masks carry such a suffix. Each mask is read (see
    :func:`load_mask`); a pair is left out and listed in the report when
    the mask cannot be read or is an RGB colour image, when the image's
    size (read from its header) differs from the mask's, or when a class
    mask holds values that are not classes.

    Parameters
    ----------
    images_dir, masks_dir : str
        Folders (not searched recursively; hidden files are ignored).
    classes : str or sequence of str, optional
        Class names, index 0 (the background) first; a string is split at
        commas. Without them, ``classes.txt`` in the masks folder is read
        (one name a line), else names are made: "background",
        "class 1", … up to the largest value found.
    kind : {"class", "instance"}, optional
        The kind of masks; None detects it: masks of 16 or 32 bits per
        pixel with more than two distinct values are instance masks when
        their values are not all class indices of the class names (when
        there are names); all others are class masks (a 0/255 mask is a
        class mask with two classes). Set it for 8-bit instance masks.
        Instance objects take the class name at index 1.
    callback : callable, optional
        Called with the fraction done (0 to 1) after each mask; an
        exception it raises stops the pairing and propagates.

    Returns
    -------
    (Orange.data.Table or None, PairingReport)
        A table with metas "image name", "image" (type=image,
        origin=`images_dir`), "mask" (type=image, origin=`masks_dir`,
        ``mask`` = kind, ``classes`` = comma-separated names), "width" and
        "height"; None when nothing could be paired.

    Raises
    ------
    FolderNotFound
        When a folder does not exist (a ``FileNotFoundError``).
    InvalidInput
        For an unknown `kind` or unusable class names (a ``ValueError``).
    """
    if kind is not None and kind not in MASK_KINDS:
        raise InvalidInput(f"kind must be None, 'class' or 'instance'. "
                           f"Received: kind={kind!r}")
    for title, folder in (("images", images_dir), ("masks", masks_dir)):
        if not folder or not os.path.isdir(folder):
            raise FolderNotFound(
                f"The {title} folder does not exist: {folder}")
    report = PairingReport(images_dir=images_dir, masks_dir=masks_dir)
    names = _parse_classes(classes)
    if names is not None:
        report.classes_source = "given"
    else:
        classes_path = os.path.join(masks_dir, CLASSES_FILE)
        if os.path.isfile(classes_path):
            names = read_class_names(classes_path)
            report.classes_source = CLASSES_FILE

    if os.path.realpath(images_dir) == os.path.realpath(masks_dir):
        image_names, mask_names = _split_same_folder(
            _list_files(images_dir, IMAGE_EXTENSIONS + MASK_EXTENSIONS))
    else:
        image_names = _list_files(images_dir, IMAGE_EXTENSIONS)
        mask_names = _list_files(masks_dir, MASK_EXTENSIONS)
    report.n_images, report.n_masks = len(image_names), len(mask_names)
    pairs = _match(image_names, mask_names, report)

    # Read every paired mask once: sizes, bit depths and values decide the
    # kind, the classes and which pairs are usable.
    readable = []  # (image, mask, (width, height), bits, values)
    for done, (image_name, mask_name) in enumerate(pairs, start=1):
        try:
            size = image_size(os.path.join(images_dir, image_name))
        except (OSError, ValueError) as error:
            report.unreadable_images.append(
                (image_name, str(error) or type(error).__name__))
            size = None
        if size is not None:
            try:
                labels, bits, palette = _read_mask(
                    os.path.join(masks_dir, mask_name))
            except RGBMaskError as error:
                report.rgb_masks.append((mask_name, str(error)))
            except MaskError as error:
                report.unreadable_masks.append((mask_name, str(error)))
            except (OSError, ValueError, MemoryError) as error:
                report.unreadable_masks.append(
                    (mask_name, f"cannot read the mask: {error}"))
            else:
                mask_size = labels.shape[1], labels.shape[0]
                if mask_size != size:
                    report.size_mismatches.append(
                        (mask_name,
                         f"image {image_name} is {size[0]}×{size[1]}, "
                         f"mask is {mask_size[0]}×{mask_size[1]}"))
                else:
                    values = np.unique(labels)
                    readable.append((image_name, mask_name, size, bits,
                                     palette, values))
        if callback is not None:
            callback(done / len(pairs))

    if kind is None:
        instance = any(
            bits > 8 and len(values) > 2
            and (names is None or values[-1] >= len(names))
            for *_, bits, _palette, values in readable)
        kind = "instance" if instance else "class"
        report.kind_detected = True
    report.kind = kind

    def values_of(entry):
        *_, palette, values = entry
        if kind == "class" and not palette and _is_binary_255(values):
            return np.array([0, 1])
        return values

    if kind == "instance":
        names = names or list(INSTANCE_CLASSES)
        if report.classes_source == "default":
            report.classes_source = "instance masks"
        usable = readable
    elif names is None:
        top = max((int(values_of(entry)[-1]) for entry in readable
                   if values_of(entry).size), default=1)
        names = default_class_names(top + 1)
        usable = readable
    else:
        usable = []
        for entry in readable:
            values = values_of(entry)
            unknown = values[values >= len(names)]
            if unknown.size:
                report.unknown_values.append(
                    (entry[1], f"values {_format_values(unknown)} are not "
                               f"classes (only 0–{len(names) - 1}: "
                               f"{', '.join(names)})"))
            else:
                usable.append(entry)
    report.classes = names
    report.n_pairs = len(usable)
    if not usable:
        return None, report
    return _pairs_table(usable, images_dir, masks_dir, kind, names), report


def _pairs_table(pairs, images_dir: str, masks_dir: str, kind: str,
                 classes: List[str]) -> Table:
    name_var = StringVariable("image name")
    image_var = StringVariable("image")
    image_var.attributes.update({"type": "image", "origin": images_dir})
    mask_var = StringVariable("mask")
    mask_var.attributes.update({"type": "image", "origin": masks_dir,
                                "mask": kind, "classes": ",".join(classes)})
    width_var = ContinuousVariable("width", number_of_decimals=0)
    height_var = ContinuousVariable("height", number_of_decimals=0)
    domain = Domain([], metas=[name_var, image_var, mask_var,
                               width_var, height_var])
    metas = np.array(
        [[os.path.splitext(image)[0], image, mask, size[0], size[1]]
         for image, mask, size, *_ in pairs], dtype=object)
    table = Table.from_numpy(domain, np.empty((len(pairs), 0)), metas=metas)
    table.name = os.path.basename(os.path.normpath(images_dir)) or "images"
    return table
