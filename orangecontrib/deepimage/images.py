"""The image column and robust image loading.

Every feature of the add-on reads images through this module: it finds the
image column of a table (orange3-imageanalytics' convention: a string or
discrete meta with ``attributes["type"] == "image"`` and an ``origin`` folder
or URL that relative values start from), resolves each value to a path or URL,
and decodes the image into an RGB array of the size a network expects.

Real photos are messy. EXIF orientation, greyscale, palette and transparent
images, CMYK JPEGs, 16-bit PNG/TIFF, animated GIFs and truncated files are
decoded; anything that cannot give an image (a missing or empty file, text
with an image extension, SVG, a decompression bomb, an unreachable URL)
raises :class:`ImageSkipped` with a reason the user can read.
:func:`iter_image_batches` streams decoded batches with decoding running in
worker threads, so memory stays bounded however many images there are.
"""
import hashlib
import io
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from Orange.data import DiscreteVariable, StringVariable, Table, Variable

from orangecontrib.deepimage.errors import InvalidInput

__all__ = [
    "ImageSkipped", "LoadedImage", "image_columns", "find_image_column",
    "find_mask_column", "is_mask_column", "mask_class_names",
    "require_image_column", "require_mask_column", "paths_of",
    "image_paths", "read_image_bytes", "decode_image", "load_image",
    "iter_image_batches", "MAX_IMAGE_PIXELS", "image_path",
]

#: Images with more pixels than this are refused as decompression bombs.
MAX_IMAGE_PIXELS = 180_000_000
#: Downloads larger than this are refused.
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
URL_SCHEMES = ("http", "https", "ftp", "data")
URL_TIMEOUT = 20

class ImageSkipped(Exception):
    """An image could not be used; ``str(error)`` says why, in plain words."""


@dataclass
class LoadedImage:
    """Raw bytes of one image and the key of their content."""
    data: bytes
    content_key: str


# --- the image column ----------------------------------------------------

def is_mask_column(var: Variable) -> bool:
    """True for a column of segmentation masks (``attributes["mask"]``)."""
    return var.attributes.get("type") == "image" and "mask" in var.attributes


def mask_class_names(var: Variable) -> List[str]:
    """Class names of a mask column (``attributes["classes"]``, comma list).

    Class index 0 is the first name (usually "background"). Code that
    reads masks takes kind and classes together from
    :func:`orangecontrib.deepimage.segdata.mask_info`.
    """
    classes = var.attributes.get("classes", "")
    return [name.strip() for name in str(classes).split(",") if name.strip()]


def image_columns(table: Table) -> List[Variable]:
    """Return the meta columns that may hold images, ``type=image`` first.

    Mask columns (see :func:`is_mask_column`) are not image columns.

    Parameters
    ----------
    table : Orange.data.Table

    Returns
    -------
    list of Orange.data.Variable
        String and discrete metas; those marked ``type=image`` come first.
    """
    candidates = [var for var in table.domain.metas
                  if isinstance(var, (StringVariable, DiscreteVariable))
                  and not is_mask_column(var)]
    return sorted(candidates,
                  key=lambda var: var.attributes.get("type") != "image")


def find_mask_column(table: Table) -> Optional[Variable]:
    """Return the first mask column of `table`, or None.

    A mask column follows the image-column convention (a string meta with
    ``type=image`` and ``origin``) and has ``attributes["mask"]``: the kind
    of masks, ``"class"`` (pixel values are class indices) or
    ``"instance"`` (each object its own id); ``attributes["classes"]``
    lists the class names, comma-separated.
    """
    masks = [var for var in table.domain.metas if is_mask_column(var)]
    return masks[0] if masks else None


def find_image_column(table: Table, name: Optional[str] = None
                      ) -> Optional[Variable]:
    """Return the image column of `table`, or None when there is none.

    Parameters
    ----------
    table : Orange.data.Table
    name : str, optional
        The column's name; without it, the first column marked
        ``type=image`` is taken.

    Returns
    -------
    Orange.data.Variable or None
    """
    if name is not None:
        var = table.domain[name] if name in table.domain else None
        if var is None or not (var.is_string or var.is_discrete):
            return None
        return var
    marked = [var for var in image_columns(table)
              if var.attributes.get("type") == "image"]
    return marked[0] if marked else None


NO_IMAGE_COLUMN = ("The data has no image column (a text column marked as "
                   "images, e.g. from Import Images).")
NO_MASK_COLUMN = ("The data has no mask column (masks paired with the "
                  "images, e.g. from Segmentation Data or Segment Images).")


def require_image_column(table: Table, name: Optional[str] = None
                         ) -> Variable:
    """The column `name` if the table has it, else its first image column.

    Raises
    ------
    ValueError
        When the table has no image column.
    """
    column = (find_image_column(table, name) if name is not None else None) \
        or find_image_column(table)
    if column is None:
        raise InvalidInput(NO_IMAGE_COLUMN)
    return column


def require_mask_column(table: Table) -> Variable:
    """The table's first mask column.

    Raises
    ------
    ValueError
        When the table has no mask column.
    """
    column = find_mask_column(table)
    if column is None:
        raise InvalidInput(NO_MASK_COLUMN)
    return column


def paths_of(table_or_paths) -> List[Optional[str]]:
    """Image paths of a table's image column, or a sequence of paths."""
    if isinstance(table_or_paths, Table):
        return image_paths(table_or_paths,
                           require_image_column(table_or_paths))
    return list(table_or_paths)


def _is_url(text: str) -> bool:
    return urlparse(text).scheme in URL_SCHEMES


def resolve_path(value: str, origin: str) -> str:
    """Join a column value with the column's origin (a folder or a URL)."""
    if _is_url(value) or not origin:
        return value
    if _is_url(origin):
        return urljoin(origin if origin.endswith("/") else origin + "/",
                       value)
    return os.path.join(origin, value)


def image_paths(table: Table, column: Variable) -> List[Optional[str]]:
    """Return the full path or URL of each row's image (None when empty).

    Parameters
    ----------
    table : Orange.data.Table
    column : Orange.data.Variable
        The image column (see :func:`find_image_column`).

    Returns
    -------
    list of str or None
        One entry per row, in row order.
    """
    return [image_path(column, value) for value in table.get_column(column)]


def image_path(column: Variable, value) -> Optional[str]:
    """Return the full path or URL of one value of an image column.

    :func:`image_paths` resolves a whole column with it; views that show
    a few rows of a large table at a time resolve only those.

    Parameters
    ----------
    column : Orange.data.Variable
        The image column; its ``origin`` is where relative values start.
    value
        The row's value as the table holds it: a string, or a float index
        of a discrete column's values.

    Returns
    -------
    str or None
        None when the value is missing or empty.
    """
    if column.is_discrete:
        value = None if np.isnan(value) else column.values[int(value)]
    if value is None or value == "" or (
            isinstance(value, float) and np.isnan(value)):
        return None
    return resolve_path(str(value), column.attributes.get("origin", ""))


# --- reading and decoding ------------------------------------------------

def read_image_bytes(path: Optional[str]) -> LoadedImage:
    """Read the bytes of a local file or a URL.

    Raises
    ------
    ImageSkipped
        When there is no path, the file is missing or empty, or the URL
        cannot be fetched.
    """
    if not path:
        raise ImageSkipped("no image path in this row")
    if _is_url(path):
        data = _download(path)
    else:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            raise ImageSkipped(f"file not found: {path}") from None
        except IsADirectoryError:
            raise ImageSkipped(f"a folder, not an image: {path}") from None
        except OSError as error:
            raise ImageSkipped(
                f"cannot read {path}: {error.strerror or error}") from None
    if not data:
        raise ImageSkipped(f"empty file: {path}")
    return LoadedImage(data, hashlib.sha1(data).hexdigest())


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise ImageSkipped(
            f"cannot download {url}: HTTP {error.code} {error.reason}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ImageSkipped(f"cannot download {url}: {reason}") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ImageSkipped(f"download larger than "
                           f"{MAX_DOWNLOAD_BYTES // 2**20} MB: {url}")
    return data


def _is_svg(data: bytes) -> bool:
    return data.lstrip()[:5].lower() in (b"<?xml", b"<svg ", b"<svg>") \
        or b"<svg" in data[:1024].lower()


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        # Only now: a PNG's metadata may mention "<svg" too.
        if _is_svg(data):
            raise ImageSkipped("SVG drawings are not supported; "
                               "convert them to PNG") from None
        raise ImageSkipped("not an image file (unknown format)") from None
    except Image.DecompressionBombError as error:
        raise ImageSkipped(f"decompression bomb refused: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageSkipped(f"cannot decode image: {error}") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageSkipped(
            f"decompression bomb refused: {width}×{height} pixels is more "
            f"than the limit of {MAX_IMAGE_PIXELS:,}")
    if width < 1 or height < 1:
        raise ImageSkipped("image has no pixels")
    return image


def _set_up_decoding(image: Image.Image,
                     size: Optional[Tuple[int, int]]) -> None:
    """The first frame and, for a JPEG to be made small, draft mode."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if size is not None and image.format == "JPEG":
        # Draft mode decodes a JPEG at 1/2, 1/4 or 1/8 of its size when that
        # is still at least as large as needed: a several-fold speed-up.
        orientation = image.getexif().get(0x0112, 1)
        draft_size = size[::-1] if orientation in (5, 6, 7, 8) else size
        image.draft(image.mode if image.mode in ("RGB", "L") else None,
                    draft_size)


def _load_pixels(image: Image.Image, data: bytes,
                 size: Optional[Tuple[int, int]]) -> Image.Image:
    """Decode `image` (opened from `data`); a truncated JPEG or PNG keeps
    the part that is there and is filled up as PIL's LOAD_TRUNCATED_IMAGES
    would, without setting that process-wide flag."""
    try:
        image.load()
        return image
    except OSError as error:
        if "truncated" not in str(error).lower():
            raise ImageSkipped(f"cannot decode image: {error}") from None
        reason = str(error)
    except (ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageSkipped(f"cannot decode image: {error}") from None
    # A truncated file still holds the top of the picture: keep it.
    completed = _complete_truncated(data, image.format)
    if completed is None:
        raise ImageSkipped(f"truncated image could not be decoded: {reason}")
    try:
        image = Image.open(io.BytesIO(completed))
        _set_up_decoding(image, size)
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageSkipped(
            f"truncated image could not be decoded: {error}") from None
    return image


def _complete_truncated(data: bytes, image_format: Optional[str]
                        ) -> Optional[bytes]:
    """A complete file with what truncated `data` holds, or None."""
    if image_format == "JPEG":
        # What PIL does with LOAD_TRUNCATED_IMAGES: end the data with an
        # end-of-image marker; the decoder fills the missing rows grey.
        return data + b"\xff\xd9"
    if image_format == "PNG":
        return _complete_png(data)
    return None


#: Channels of each PNG colour type.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _complete_png(data: bytes) -> Optional[bytes]:
    """A complete PNG from a truncated one (None when it is interlaced or
    its header is cut): the missing rows become black, as with PIL's
    LOAD_TRUNCATED_IMAGES."""
    signature = b"\x89PNG\r\n\x1a\n"
    position, header, idat = len(signature), [], bytearray()
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunk = data[position + 8:position + 8 + length]
        if kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND" or idat:
            break  # chunks after the image data are not needed
        else:
            if len(chunk) < length:
                return None
            header.append(data[position:position + 12 + length])
        position += 12 + length
    if not header or header[0][4:8] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(
        ">IIBBBBB", header[0][8:21])
    if interlace or colour not in _PNG_CHANNELS:
        return None
    row = 1 + (width * depth * _PNG_CHANNELS[colour] + 7) // 8
    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(bytes(idat), row * height)
    except zlib.error:
        return None
    # Whole rows only; the rest are rows of zeros with filter type 0.
    raw = raw[:len(raw) // row * row].ljust(row * height, b"\0")

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body \
            + struct.pack(">I", zlib.crc32(kind + body))
    return (signature + b"".join(header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency goes onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 \
            else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def decode_image(data: bytes, size: Optional[Tuple[int, int]] = None
                 ) -> Image.Image:
    """Decode image bytes into an upright RGB image of the given size.

    Parameters
    ----------
    data : bytes
        The content of an image file.
    size : (int, int), optional
        Target (width, height); the image is resized to exactly this size
        as Keras and orange3-imageanalytics do (no cropping).

    Returns
    -------
    PIL.Image.Image
        An RGB image.

    Raises
    ------
    ImageSkipped
        When the bytes are not a usable image.
    """
    image = _open(data)
    _set_up_decoding(image, size)
    image = _load_pixels(image, data, size)
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        pass  # a broken EXIF block: keep the pixels as stored
    try:
        image = _to_rgb(image)
    except (OSError, ValueError) as error:
        raise ImageSkipped(f"cannot convert image to RGB: {error}") from None
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BILINEAR,
                             reducing_gap=3.0)
    return image


def load_image(path: Optional[str], size: Optional[Tuple[int, int]] = None
               ) -> Image.Image:
    """Read and decode one image file or URL (see :func:`decode_image`)."""
    return decode_image(read_image_bytes(path).data, size)


def load_image_array(path: Optional[str], size: Tuple[int, int]
                     ) -> np.ndarray:
    """Return one image as a ``(height, width, 3)`` uint8 array."""
    return np.asarray(load_image(path, size), dtype=np.uint8)


# --- streaming -----------------------------------------------------------

@dataclass
class ImageBatch:
    """A batch of decoded images and the rows they came from.

    Attributes
    ----------
    indices : list of int
        Positions (in the input sequence) of the images in `pixels`.
    pixels : numpy.ndarray
        ``(len(indices), height, width, 3)`` uint8 array.
    keys : list of str
        Content keys of the images in `pixels`.
    skipped : list of (int, str)
        Positions of inputs in this batch that were skipped, with reasons.
    """
    indices: List[int]
    pixels: np.ndarray
    keys: List[str]
    skipped: List[Tuple[int, str]]


def _prepare(path, size, want_key, skip_key):
    """Read, key and decode one image in a worker thread."""
    try:
        loaded = read_image_bytes(path)
    except ImageSkipped as error:
        return None, None, str(error)
    except Exception as error:  # pylint: disable=broad-except
        # As below: one odd path must not stop the run or shift rows.
        return None, None, f"cannot read image: {error!r}"
    # The cache lookup is outside the decoding's try: a fault of the cache
    # is not a broken image (the cache bypasses its own faults).
    if want_key is not None and want_key(loaded.content_key):
        return None, loaded.content_key, None
    try:
        image = decode_image(loaded.data, size)
        return np.asarray(image, dtype=np.uint8), loaded.content_key, None
    except ImageSkipped as error:
        return None, None, str(error)
    except Exception as error:  # pylint: disable=broad-except
        # Any other decoder failure must not stop the run or shift rows.
        return None, None, f"cannot decode image: {error!r}"


def iter_image_batches(paths: Sequence[Optional[str]],
                       size: Tuple[int, int],
                       batch_size: int = 32,
                       workers: int = 2,
                       is_cached=None,
                       ) -> Iterator[Tuple[ImageBatch, List[Tuple[int, str]]]]:
    """Decode images in worker threads and yield them batch by batch.

    At most ``batch_size * 3`` images are in flight at once, so memory does
    not grow with the number of images, while the next batches decode as the
    caller works on the current one.

    Parameters
    ----------
    paths : sequence of str or None
        Paths or URLs; None entries are skipped.
    size : (int, int)
        Target (width, height).
    batch_size : int
    workers : int
        Decoding threads (PIL releases the GIL while decoding).
    is_cached : callable, optional
        ``is_cached(content_key) -> bool``; images for which it returns True
        are not decoded and are reported in the second item of each yield.

    Yields
    ------
    (ImageBatch, list of (int, str))
        A batch of decoded images, and the (position, content key) pairs of
        images in that stretch of input that `is_cached` accepted.
    """
    width, height = size
    max_in_flight = batch_size * 3
    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="deepimage-decode") as pool:
        pending = deque()
        position = 0
        indices, arrays, keys, skipped, cached = [], [], [], [], []

        def flush():
            pixels = np.stack(arrays) if arrays else \
                np.zeros((0, height, width, 3), np.uint8)
            batch = ImageBatch(list(indices), pixels, list(keys),
                               list(skipped))
            result = (batch, list(cached))
            for part in (indices, arrays, keys, skipped, cached):
                part.clear()
            return result

        try:
            while position < len(paths) or pending:
                while position < len(paths) and len(pending) < max_in_flight:
                    pending.append((position, pool.submit(
                        _prepare, paths[position], size, is_cached, None)))
                    position += 1
                index, future = pending.popleft()
                array, key, reason = future.result()
                if reason is not None:
                    skipped.append((index, reason))
                elif array is None:
                    cached.append((index, key))
                else:
                    indices.append(index)
                    arrays.append(array)
                    keys.append(key)
                if len(arrays) == batch_size or not (position < len(paths)
                                                     or pending):
                    yield flush()
                elif len(cached) + len(skipped) >= batch_size:
                    yield flush()
        finally:
            # When the caller stops early (a cancelled run), do not wait
            # for queued images to be read: each could be a slow URL.
            for _, future in pending:
                future.cancel()
