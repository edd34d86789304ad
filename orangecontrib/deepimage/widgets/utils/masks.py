"""Showing masks: class colours, overlays, and a side-by-side image view.

The overlay functions are plain numpy (workers call them off the GUI
thread); :class:`MaskView` only paints the finished pictures.
"""
import base64
import html
import io
from typing import List, Optional, Sequence, Tuple

import numpy as np
from AnyQt.QtCore import QRectF, QSize, Qt
from AnyQt.QtGui import QColor, QImage, QPainter
from AnyQt.QtWidgets import QSizePolicy, QWidget
from PIL import Image
from skimage.segmentation import find_boundaries

from Orange.widgets.utils.colorpalettes import DefaultRGBColors

__all__ = ["class_colours", "overlay_mask", "shrink", "to_qimage",
           "legend_html", "report_image_html", "MaskView"]


def class_colours(n_classes: int) -> np.ndarray:
    """RGB colours (uint8) for class indices 0…n-1; 0 (background) is
    never drawn and gets black; the others cycle through Orange's palette."""
    palette = np.asarray(DefaultRGBColors.palette, dtype=np.uint8)
    colours = np.zeros((max(n_classes, 1), 3), np.uint8)
    for index in range(1, n_classes):
        colours[index] = palette[(index - 1) % len(palette)]
    return colours


def overlay_mask(image: np.ndarray, labels: Optional[np.ndarray],
                 colours: np.ndarray, opacity: float = 0.5,
                 outline: bool = False) -> np.ndarray:
    """Draw a label image over an RGB image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width, 3)`` uint8.
    labels : numpy.ndarray or None
        ``(height, width)`` class indices (or object ids) of the same size;
        0 is not drawn. Labels beyond the colours cycle through the
        foreground colours (so neighbouring object ids differ).
    colours : numpy.ndarray
        ``(n, 3)`` uint8, from :func:`class_colours`.
    opacity : float
        0 shows only the image, 1 only the mask's colours.
    outline : bool
        Colour only the pixels on the border of each region.

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` uint8.
    """
    image = np.asarray(image, dtype=np.uint8)
    if labels is None:
        return image.copy()
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"the mask is {labels.shape[1]}×{labels.shape[0]} "
                         f"but the image is {image.shape[1]}×"
                         f"{image.shape[0]}")
    drawn = labels > 0
    if outline:
        drawn &= find_boundaries(labels, connectivity=1, mode="inner")
    n_colours = len(colours)
    index = labels.astype(np.int64)
    if n_colours > 1:
        beyond = index >= n_colours
        index[beyond] = (index[beyond] - 1) % (n_colours - 1) + 1
    else:
        index[:] = 0
    result = image.astype(np.float32)
    alpha = float(np.clip(opacity, 0, 1))
    result[drawn] = (1 - alpha) * result[drawn] \
        + alpha * colours[index[drawn]].astype(np.float32)
    return np.clip(result + 0.5, 0, 255).astype(np.uint8)


def shrink(array: np.ndarray, max_side: int, labels: bool = False
           ) -> np.ndarray:
    """Reduce an image (bilinear) or a label image (nearest) to fit
    ``max_side``; smaller arrays are returned as they are."""
    height, width = array.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if labels:
        rows = np.minimum((np.arange(size[1]) + 0.5) / scale,
                          height - 1).astype(int)
        cols = np.minimum((np.arange(size[0]) + 0.5) / scale,
                          width - 1).astype(int)
        return array[rows][:, cols]
    return np.asarray(Image.fromarray(np.ascontiguousarray(array))
                      .resize(size, Image.Resampling.BILINEAR))


def to_qimage(pixels: np.ndarray) -> QImage:
    """A QImage that owns a copy of RGB(A) uint8 pixels."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width, channels = pixels.shape
    fmt = QImage.Format.Format_RGBA8888 if channels == 4 \
        else QImage.Format.Format_RGB888
    return QImage(pixels.data, width, height, channels * width, fmt).copy()


def legend_html(class_names: Sequence[str], colours: np.ndarray,
                instance: bool = False) -> str:
    """Rich text with a colour swatch and the name of each class but the
    background (instance masks: one line, objects have many colours)."""
    if instance:
        swatches = "".join(_swatch(colour) for colour in colours[1:4])
        return f"{swatches} objects (each its own colour)"
    items = [f"{_swatch(colours[index])} {html.escape(str(name))}"
             for index, name in enumerate(class_names)
             if index > 0 and index < len(colours)]
    return "&nbsp;&nbsp; ".join(items)


def _swatch(colour) -> str:
    red, green, blue = (int(value) for value in colour)
    return (f'<span style="background-color: #{red:02x}{green:02x}'
            f'{blue:02x}">&nbsp;&nbsp;&nbsp;&nbsp;</span>')


def report_image_html(images: Sequence[np.ndarray], height: int = 240,
                      alt: str = "images") -> str:
    """An HTML ``<img>`` (inline PNG) of RGB images side by side, for
    reports."""
    pictures = [Image.fromarray(np.ascontiguousarray(pixels, np.uint8))
                for pixels in images]
    sizes = []
    for picture in pictures:
        scale = height / picture.height
        sizes.append((max(1, round(picture.width * scale)), height))
    canvas = Image.new("RGB", (sum(width for width, _ in sizes)
                               + 8 * (len(sizes) - 1), height),
                       (255, 255, 255))
    left = 0
    for picture, size in zip(pictures, sizes):
        canvas.paste(picture.resize(size, Image.Resampling.NEAREST),
                     (left, 0))
        left += size[0] + 8
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" ' \
           f'alt="{html.escape(alt)}"/>'


class MaskView(QWidget):
    """Images side by side, each scaled to fit, with a caption above it.

    In a view taller than wide the images are stacked instead, so that
    each gets the whole width (and its caption room).
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.images: List[Tuple[QImage, str]] = []
        self.message = ""
        self.setMinimumSize(200, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding,
                           QSizePolicy.Policy.Expanding)

    def sizeHint(self):
        return QSize(480, 360)

    def set_images(self, images: Sequence[Tuple[QImage, str]],
                   message: str = ""):
        """Show (image, caption) pairs; with none, show `message`."""
        self.images = list(images)
        self.message = message
        self.update()

    def clear(self, message: str = ""):
        self.set_images([], message)

    _GAP = 8

    def _cells(self) -> List[QRectF]:
        """Each image's share of the view: a caption line and the image."""
        n, gap = len(self.images), self._GAP
        if not n:
            return []
        if self.height() > self.width() and n > 1:  # stacked
            height = (self.height() - gap * (n + 1)) / n
            return [QRectF(gap, gap + i * (height + gap),
                           self.width() - 2 * gap, height) for i in range(n)]
        width = (self.width() - gap * (n + 1)) / n
        return [QRectF(gap + i * (width + gap), gap, width,
                       self.height() - 2 * gap) for i in range(n)]

    def image_rects(self) -> List[QRectF]:
        """Where each image is drawn (for tests and clicks)."""
        caption = self.fontMetrics().height() + 4
        rects = []
        for cell, (image, _) in zip(self._cells(), self.images):
            cell_height = cell.height() - caption
            scale = max(1e-3, min(cell.width() / max(1, image.width()),
                                  cell_height / max(1, image.height())))
            width, height = image.width() * scale, image.height() * scale
            left = cell.left() + (cell.width() - width) / 2
            top = cell.top() + caption + (cell_height - height) / 2
            rects.append(QRectF(left, top, width, height))
        return rects

    def caption_rects(self) -> List[QRectF]:
        """Where each caption is drawn: above its image, as wide as the
        image's share of the view (never beyond the view's edges)."""
        height = self.fontMetrics().height()
        return [QRectF(cell.left(), rect.top() - height - 4,
                       max(1.0, cell.width()), height)
                for cell, rect in zip(self._cells(), self.image_rects())]

    def paintEvent(self, _event):
        painter = QPainter(self)
        painter.setPen(self.palette().color(self.foregroundRole()))
        if not self.images:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter
                             | Qt.TextFlag.TextWordWrap,
                             self.message or "No image")
            return
        # Masks are label images: show their pixels, do not smooth them.
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform,
                              False)
        for rect, text_rect, (image, caption) in zip(
                self.image_rects(), self.caption_rects(), self.images):
            painter.drawImage(rect, image)
            painter.setPen(QColor(128, 128, 128))
            painter.drawRect(rect.adjusted(-0.5, -0.5, 0.5, 0.5))
            painter.setPen(self.palette().color(self.foregroundRole()))
            painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter
                             | Qt.AlignmentFlag.AlignBottom,
                             painter.fontMetrics().elidedText(
                                 caption, Qt.TextElideMode.ElideRight,
                                 int(text_rect.width())))
