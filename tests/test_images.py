"""Image loading: the image column, messy-but-valid images, broken inputs,
streaming in bounded batches, and the embedder keeping every row in place.

Every image is made here, tiny, with PIL or numpy; URLs point at a small
HTTP server on 127.0.0.1 (nothing leaves the machine).
"""
import functools
import hashlib
import http.server
import io
import os
import random
import socket
import struct
import threading
import time
import weakref
import zlib
from concurrent.futures import Future

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from Orange.data import (ContinuousVariable, DiscreteVariable, Domain,
                         StringVariable, Table)

from orangecontrib.deepimage import images
from orangecontrib.deepimage.images import (
    ImageSkipped, decode_image, find_image_column, find_mask_column,
    image_columns, image_paths, iter_image_batches, load_image,
    mask_class_names, read_image_bytes, resolve_path)

# Distinct solid colours (no two closer than ~40 in some channel).
COLOURS = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (128, 0, 0), (0, 0, 128),
]
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), \
    (255, 255, 255)
# far enough from 0 and 255 that added noise is not clipped
DULL_RED, DULL_BLUE = (210, 40, 40), (40, 40, 210)


# --- helpers ---------------------------------------------------------------

def encode(image, fmt, **kwargs):
    """Return the bytes of `image` saved in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def write(path, data):
    with open(path, "wb") as file:
        file.write(data)
    return str(path)


def assert_colour(pixel, expected, tol=12):
    """Assert an RGB pixel (or mean colour) is within `tol` per channel."""
    pixel = np.asarray(pixel, dtype=float)
    assert pixel.shape == (3,), pixel
    assert np.all(np.abs(pixel - expected) <= tol), \
        f"{tuple(pixel.round())} is not close to {expected}"


def mean_colour(image):
    return np.asarray(image, dtype=float).reshape(-1, 3).mean(axis=0)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)


def png_by_hand(width, height, bit_depth, colour_type, raw):
    """A PNG written chunk by chunk (for what PIL will not write)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type,
                         0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def free_port():
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def skip_reason(data, size=(16, 16)):
    with pytest.raises(ImageSkipped) as info:
        decode_image(data, size)
    return str(info.value)


def load_reason(path, size=(16, 16)):
    with pytest.raises(ImageSkipped) as info:
        load_image(path, size)
    return str(info.value)


SVG = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
       b'width="10" height="10"><rect width="10" height="10" '
       b'fill="red"/></svg>\n')


# --- a small HTTP server ---------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serve a folder on 127.0.0.1; yields (base URL, folder)."""
    folder = tmp_path_factory.mktemp("served")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- the image column ------------------------------------------------------

def _table(*metas, rows):
    domain = Domain([ContinuousVariable("x")], metas=list(metas))
    return Table.from_numpy(
        domain, np.arange(len(rows), dtype=float)[:, None], None,
        np.array(rows, dtype=object).reshape(len(rows), len(metas)))


def image_var(name="image", origin=None):
    var = StringVariable(name)
    var.attributes["type"] = "image"
    if origin is not None:
        var.attributes["origin"] = origin
    return var


def test_image_column_marked_type_image_is_preferred():
    plain = StringVariable("name")
    marked = image_var("picture", origin="/data")
    table = _table(plain, marked, rows=[["a", "a.png"], ["b", "b.png"]])
    assert find_image_column(table) is marked
    # type=image first, then the other string metas
    assert image_columns(table) == [marked, plain]
    assert find_image_column(table, "name") is plain
    assert find_image_column(table, "no such column") is None
    # a numeric column cannot hold images
    assert find_image_column(table, "x") is None


def test_no_image_column():
    table = _table(StringVariable("name"), rows=[["a.png"]])
    assert find_image_column(table) is None
    no_metas = Table.from_numpy(Domain([ContinuousVariable("x")]),
                                np.zeros((2, 1)))
    assert find_image_column(no_metas) is None
    assert image_columns(no_metas) == []


def test_image_paths_join_origin(tmp_path):
    origin = str(tmp_path)
    absolute = os.path.join(str(tmp_path), "elsewhere", "abs.png")
    var = image_var(origin=origin)
    table = _table(var, rows=[["a.png"], ["sub/b.jpg"], [absolute],
                              ["http://example.com/c.jpg"], [""],
                              ["https://example.com/d.png"]])
    assert image_paths(table, var) == [
        os.path.join(origin, "a.png"),
        os.path.join(origin, "sub/b.jpg"),
        absolute,                          # absolute path left alone
        "http://example.com/c.jpg",        # URL left alone
        None,                              # empty value
        "https://example.com/d.png",
    ]


def test_image_paths_without_origin_keeps_values():
    var = image_var()
    table = _table(var, rows=[["a.png"], [""]])
    assert image_paths(table, var) == ["a.png", None]


@pytest.mark.parametrize("origin", ["http://example.com/images",
                                    "http://example.com/images/"])
def test_image_paths_url_origin_uses_urljoin(origin):
    var = image_var(origin=origin)
    table = _table(var, rows=[["a/b.jpg"], ["c d.png"],
                              ["https://other.org/e.jpg"], [""]])
    assert image_paths(table, var) == [
        "http://example.com/images/a/b.jpg",
        "http://example.com/images/c d.png",
        "https://other.org/e.jpg",
        None,
    ]
    assert resolve_path("x.png", origin) == "http://example.com/images/x.png"


def test_discrete_image_column(tmp_path):
    var = DiscreteVariable("image", values=("a.png", "b.png"))
    var.attributes.update(type="image", origin=str(tmp_path))
    domain = Domain([], metas=[var])
    table = Table.from_numpy(domain, np.zeros((3, 0)), None,
                             np.array([[1], [np.nan], [0]], dtype=object))
    assert find_image_column(table) is var
    assert image_paths(table, var) == [
        os.path.join(str(tmp_path), "b.png"), None,
        os.path.join(str(tmp_path), "a.png")]


# --- odd but valid images --------------------------------------------------

def test_exif_orientation_is_applied():
    # Stored landscape 64x32 with a red top-left corner; orientation 6 means
    # "rotate 90° clockwise to display": upright it is 32x64, red top-right.
    stored = Image.new("RGB", (64, 32), BLUE)
    stored.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif)

    upright = decode_image(data)
    assert upright.mode == "RGB"
    assert upright.size == (32, 64)
    assert_colour(upright.getpixel((28, 3)), RED, tol=30)
    assert_colour(upright.getpixel((3, 3)), BLUE, tol=30)
    assert_colour(upright.getpixel((28, 60)), BLUE, tol=30)

    # With a target size (the draft-mode path), still upright
    resized = decode_image(data, (16, 32))
    assert resized.size == (16, 32)
    assert_colour(resized.getpixel((14, 1)), RED, tol=40)
    assert_colour(resized.getpixel((1, 1)), BLUE, tol=40)


def test_greyscale_l_and_1():
    grey = decode_image(encode(Image.new("L", (8, 8), 100), "PNG"), (4, 4))
    assert grey.mode == "RGB" and grey.size == (4, 4)
    assert grey.getpixel((2, 2)) == (100, 100, 100)

    bilevel = Image.new("1", (8, 8), 0)
    bilevel.paste(1, (4, 0, 8, 8))  # right half white
    image = decode_image(encode(bilevel, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == (0, 0, 0)
    assert image.getpixel((6, 1)) == WHITE


def _palette_image():
    image = Image.new("P", (8, 8), 0)
    image.putpalette(list(RED) + list(BLUE) + [0] * (256 * 3 - 6))
    image.paste(1, (4, 0, 8, 8))  # left half index 0 (red), right 1 (blue)
    return image


def test_palette_without_transparency():
    image = decode_image(encode(_palette_image(), "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == RED
    assert image.getpixel((6, 1)) == BLUE


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt):
    data = encode(_palette_image(), fmt, transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    image = decode_image(data)
    assert image.getpixel((1, 1)) == RED
    assert image.getpixel((6, 1)) == WHITE   # transparent blue -> white


def test_rgba_alpha_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.paste((0, 255, 0, 0), (4, 0, 8, 4))      # fully transparent green
    rgba.paste((0, 0, 0, 128), (4, 4, 8, 8))      # half-transparent black
    image = decode_image(encode(rgba, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == RED           # opaque keeps its colour
    assert image.getpixel((6, 1)) == WHITE         # alpha 0 -> white
    assert_colour(image.getpixel((6, 6)), (127, 127, 127), tol=2)

    grey_alpha = Image.new("LA", (4, 4), (0, 0))
    assert decode_image(encode(grey_alpha, "PNG")).getpixel((0, 0)) == WHITE


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red in CMYK
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = decode_image(data, (16, 16))
    assert image.mode == "RGB" and image.size == (16, 16)
    assert_colour(mean_colour(image), RED, tol=30)


GREY16 = np.array([[65535, 32768], [0, 65535]], dtype=np.uint16)


def _check_grey16(image):
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE          # 65535 -> 255
    assert_colour(image.getpixel((1, 0)), (128, 128, 128), tol=1)
    assert image.getpixel((0, 1)) == (0, 0, 0)


def test_16_bit_png():
    data = encode(Image.fromarray(GREY16), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    _check_grey16(decode_image(data))


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_16_bit_tiff(byteorder):
    tifffile = pytest.importorskip("tifffile")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, GREY16.astype(byteorder + "u2"),
                     byteorder=byteorder)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    _check_grey16(decode_image(data))


def test_16_bit_rgb_png_and_tiff():
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0], rgb[..., 1] = 65535, 32768
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    image = decode_image(png_by_hand(4, 4, 16, 2, raw))
    assert_colour(image.getpixel((2, 2)), (255, 128, 0), tol=1)

    tifffile = pytest.importorskip("tifffile")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rgb, photometric="rgb")
    image = decode_image(buffer.getvalue())
    assert_colour(image.getpixel((2, 2)), (255, 128, 0), tol=1)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), colour)
              for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True,
                  append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = decode_image(data, (8, 8))
    assert image.size == (8, 8)
    assert_colour(mean_colour(image), RED, tol=1)


@pytest.mark.parametrize("shape", [(1, 1), (3, 500), (500, 3)])
def test_tiny_images_resized_to_target(shape):
    colour = (0, 128, 255)
    data = encode(Image.new("RGB", shape, colour), "PNG")
    image = decode_image(data, (227, 227))
    assert image.size == (227, 227)
    pixels = np.asarray(image)
    assert pixels.shape == (227, 227, 3)
    assert np.all(pixels == colour)


def test_target_size_is_width_height():
    image = decode_image(encode(Image.new("RGB", (10, 10)), "PNG"), (40, 20))
    assert image.size == (40, 20)
    assert np.asarray(image).shape == (20, 40, 3)


def noisy_halves_jpeg(size=64):
    """A JPEG, top half red and bottom half blue, with noise so that most of
    its bytes are scan data (a download cut short loses the bottom)."""
    pixels = np.zeros((size, size, 3), np.int16)
    pixels[:size // 2], pixels[size // 2:] = DULL_RED, DULL_BLUE
    noise = np.random.RandomState(0).randint(-20, 21, pixels.shape)
    pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def test_truncated_jpeg_still_decodes():
    data = noisy_halves_jpeg()
    truncated = data[:len(data) // 2]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(truncated)).load()   # PIL alone refuses it

    full = decode_image(truncated)
    assert full.size == (64, 64)
    assert_colour(mean_colour(full.crop((0, 0, 64, 8))), DULL_RED)
    small = decode_image(truncated, (32, 32))
    assert small.size == (32, 32)
    assert_colour(mean_colour(small.crop((0, 0, 32, 4))), DULL_RED)


def test_truncated_png_still_decodes():
    noise = np.random.RandomState(0).randint(0, 256, (64, 64, 3), np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    image = decode_image(data[:len(data) // 2], (32, 32))
    assert image.size == (32, 32)


def test_truncated_png_keeps_its_top_rows():
    noise = np.random.RandomState(1).randint(0, 256, (64, 48, 3), np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    pixels = np.asarray(decode_image(data[:len(data) // 2]))
    assert pixels.shape == (64, 48, 3)
    assert np.array_equal(pixels[:8], noise[:8])   # rows that were there
    assert not pixels[-8:].any()                   # missing rows are black


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("flag", [False, True])
def test_truncated_images_leave_pils_global_flag_alone(monkeypatch, fmt,
                                                       flag):
    # Whatever another part of the process set the flag to, it stays so,
    # also while decoding (another thread would read it).
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", flag)
    seen = []
    original = ImageFile.ImageFile.load

    def spy(self):
        seen.append(ImageFile.LOAD_TRUNCATED_IMAGES)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    data = noisy_halves_jpeg() if fmt == "JPEG" else encode(
        Image.fromarray(np.random.RandomState(0).randint(
            0, 256, (64, 64, 3), np.uint8)), "PNG")
    image = decode_image(data[:len(data) // 2], (32, 32))
    assert image.size == (32, 32)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is flag
    assert seen and set(seen) == {flag}


def test_jpeg_draft_mode(monkeypatch):
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    big = Image.new("RGB", (1600, 1200), COLOURS[3])
    big.paste(RED, (0, 0, 800, 600))           # top-left quarter red
    image = decode_image(encode(big, "JPEG", quality=90), (100, 75))
    assert image.size == (100, 75)
    # draft mode decoded at a fraction of the size, still not below target
    assert drafts and drafts[-1][0] < 1600 and drafts[-1][0] >= 100
    assert_colour(image.getpixel((10, 10)), RED, tol=20)
    assert_colour(image.getpixel((90, 65)), COLOURS[3], tol=20)

    # A rotated photo: draft mode must not shrink it below the target once
    # it is upright (stored 1600x800, upright 800x1600, target 200x100).
    drafts.clear()
    data = encode(big.resize((1600, 800)), "JPEG",
                  exif=_exif_orientation(6))
    image = decode_image(data, (200, 100))
    assert image.size == (200, 100)
    stored_width, stored_height = drafts[-1]
    assert stored_width < 1600                      # draft mode was used
    assert stored_height >= 200 and stored_width >= 100


# --- broken inputs ---------------------------------------------------------

def test_missing_file(tmp_path):
    path = str(tmp_path / "missing.jpg")
    reason = load_reason(path)
    assert "not found" in reason and "missing.jpg" in reason


def test_no_path():
    assert "no image path" in load_reason(None)
    assert "no image path" in load_reason("")


def test_folder_instead_of_file(tmp_path):
    folder = tmp_path / "photo.jpg"
    folder.mkdir()
    assert "folder" in load_reason(str(folder))


def test_zero_byte_file(tmp_path):
    path = write(tmp_path / "empty.jpg", b"")
    assert "empty" in load_reason(path)


def test_text_with_image_extension(tmp_path):
    path = write(tmp_path / "notes.jpg", b"These are my holiday notes.\n")
    assert "not an image" in load_reason(path)


def test_garbage_after_jpeg_magic():
    reason = skip_reason(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    assert "decode" in reason or "not an image" in reason


@pytest.mark.parametrize("name", ["drawing.svg", "drawing.png"])
def test_svg(tmp_path, name):
    path = write(tmp_path / name, SVG)
    assert "SVG" in load_reason(path)
    # an <svg> root without the XML declaration, too
    assert "SVG" in skip_reason(b'<svg xmlns="http://www.w3.org/2000/svg"/>')


def test_image_whose_metadata_mentions_svg_is_not_refused():
    # A PNG exported from a drawing tool may carry "<svg" in a text chunk
    # near the start of the file; it is still a valid PNG.
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text("Source", '<svg xmlns="http://www.w3.org/2000/svg"/>')
    data = encode(Image.new("RGB", (8, 8), COLOURS[1]), "PNG", pnginfo=info)
    assert b"<svg" in data[:1024]
    assert_colour(mean_colour(decode_image(data)), COLOURS[1], tol=0)


def test_decompression_bomb_limit(monkeypatch):
    data = encode(Image.new("RGB", (32, 32)), "PNG")
    assert decode_image(data).size == (32, 32)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    reason = skip_reason(data)
    assert "decompression bomb" in reason and "32×32" in reason


def test_decompression_bomb_png_header():
    # A 200-byte PNG whose header claims 100000 x 100000 pixels.
    data = png_by_hand(100_000, 100_000, 8, 2, b"")
    assert len(data) < 200
    assert "decompression bomb" in skip_reason(data)


def test_unreachable_url():
    url = f"http://127.0.0.1:{free_port()}/x.jpg"
    reason = load_reason(url)
    assert "cannot download" in reason and url in reason


def test_url_404(server):
    base, _ = server
    reason = load_reason(f"{base}/nothing-here.jpg")
    assert "cannot download" in reason and "404" in reason


def test_url_with_real_image(server):
    base, folder = server
    write(folder / "served.png",
          encode(Image.new("RGB", (8, 8), COLOURS[5]), "PNG"))
    image = load_image(f"{base}/served.png", (4, 4))
    assert image.size == (4, 4)
    assert_colour(mean_colour(image), COLOURS[5], tol=0)
    # and through a table whose origin is the server
    var = image_var(origin=base)
    table = _table(var, rows=[["served.png"]])
    [url] = image_paths(table, var)
    assert url == f"{base}/served.png"
    assert read_image_bytes(url).data == (folder / "served.png").read_bytes()


# --- a folder mixing good and broken images ---------------------------------

def _good_images():
    """(name, bytes, colour) of solid-colour images in assorted encodings."""
    encoders = [
        ("png", lambda im: encode(im, "PNG")),
        ("jpg", lambda im: encode(im, "JPEG", quality=95)),
        ("bmp", lambda im: encode(im, "BMP")),
        ("gif", lambda im: encode(im, "GIF")),
        ("webp", lambda im: encode(im, "WEBP", lossless=True)),
        ("tif", lambda im: encode(im, "TIFF")),
        ("png", lambda im: encode(im.convert("RGBA"), "PNG")),
        ("png", lambda im: encode(im.quantize(4), "PNG")),  # palette
        ("jpg", lambda im: encode(im, "JPEG", quality=95,
                                  exif=_exif_orientation(8))),
    ]
    result = []
    for i, colour in enumerate(COLOURS):
        ext, enc = encoders[i % len(encoders)]
        size = (1, 1) if i == 4 else (3, 40) if i == 5 else (32, 32)
        result.append((f"good{i:02}.{ext}",
                       enc(Image.new("RGB", size, colour)), colour))
    return result


def _exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def _odd_images():
    """(name, bytes) of valid images whose colour is not a solid one."""
    jpeg = noisy_halves_jpeg()
    frames = [Image.new("RGB", (16, 16), c) for c in (GREEN, BLUE)]
    return [
        ("odd-truncated.jpg", jpeg[:len(jpeg) // 2]),
        ("odd-16bit.png", encode(Image.fromarray(GREY16), "PNG")),
        ("odd-animated.gif", encode(frames[0], "GIF", save_all=True,
                                    append_images=frames[1:])),
        ("odd-cmyk.jpg", encode(Image.new("CMYK", (8, 8), (200, 0, 0, 0)),
                                "JPEG")),
    ]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, server):
    """A shuffled mix of good and broken inputs.

    Returns a list of dicts: ``value`` (as written in a table: a name
    relative to ``folder``, a URL, or ""), ``path`` (resolved), ``kind``
    ("good", "odd" or "broken"), ``colour`` (good ones) and ``words``
    (broken ones: words the skip reason must contain).
    """
    folder = tmp_path_factory.mktemp("mixed")
    base, served = server
    entries = []
    for name, data, colour in _good_images():
        write(folder / name, data)
        entries.append(dict(value=name, kind="good", colour=colour))
    write(served / "remote.png",
          encode(Image.new("RGB", (8, 8), (90, 90, 200)), "PNG"))
    entries.append(dict(value=f"{base}/remote.png", kind="good",
                        colour=(90, 90, 200)))
    for name, data in _odd_images():
        write(folder / name, data)
        entries.append(dict(value=name, kind="odd"))

    (folder / "a-folder.jpg").mkdir()
    broken = [
        ("missing.jpg", None, ["not found", "missing.jpg"]),
        ("empty.jpg", b"", ["empty"]),
        ("notes.jpg", b"holiday notes\n" * 10, ["not an image"]),
        ("drawing.svg", SVG, ["SVG"]),
        ("svg-named.png", SVG, ["SVG"]),
        ("bomb.png", png_by_hand(100_000, 100_000, 8, 2, b""),
         ["decompression bomb"]),
        ("a-folder.jpg", None, ["folder"]),
        ("", None, ["no image path"]),
        (f"http://127.0.0.1:{free_port()}/x.jpg", None, ["cannot download"]),
        (f"{base}/gone.jpg", None, ["cannot download", "404"]),
    ]
    for name, data, words in broken:
        if data is not None:
            write(folder / name, data)
        entries.append(dict(value=name, kind="broken", words=words))

    random.Random(42).shuffle(entries)
    for entry in entries:
        entry["path"] = resolve_path(entry["value"], str(folder)) \
            if entry["value"] else None
    return str(folder), entries


def test_iter_image_batches_keeps_every_image_in_its_place(mixed):
    _, entries = mixed
    paths = [entry["path"] for entry in entries]
    batch_size = 4
    seen, skipped = {}, {}
    for batch, cached in iter_image_batches(paths, (16, 16), batch_size):
        assert cached == []
        assert len(batch.indices) <= batch_size
        assert batch.pixels.shape == (len(batch.indices), 16, 16, 3)
        assert batch.pixels.dtype == np.uint8
        assert len(batch.keys) == len(batch.indices)
        for index, pixels in zip(batch.indices, batch.pixels):
            assert index not in seen and index not in skipped
            seen[index] = pixels
        for index, reason in batch.skipped:
            assert index not in seen and index not in skipped
            skipped[index] = reason

    assert sorted(list(seen) + list(skipped)) == list(range(len(entries)))
    for index, entry in enumerate(entries):
        if entry["kind"] == "broken":
            assert index in skipped, entry["value"]
            for word in entry["words"]:
                assert word in skipped[index], (entry["value"], word)
        else:
            assert index in seen, (entry["value"], skipped.get(index))
        if entry["kind"] == "good":
            assert_colour(seen[index].reshape(-1, 3).mean(axis=0),
                          entry["colour"])


def test_iter_image_batches_is_cached(mixed, monkeypatch):
    _, entries = mixed
    paths = [entry["path"] for entry in entries]
    good = [i for i, entry in enumerate(entries) if entry["kind"] == "good"]
    cached_rows = good[::3]
    cached_keys = {read_image_bytes(paths[i]).content_key: i
                   for i in cached_rows}
    decoded = []
    original = images.decode_image

    def counting_decode(data, size=None):
        decoded.append(hashlib.sha1(data).hexdigest())
        return original(data, size)

    monkeypatch.setattr(images, "decode_image", counting_decode)
    got_cached, got_decoded = [], []
    for batch, cached in iter_image_batches(
            paths, (8, 8), batch_size=4, is_cached=cached_keys.__contains__):
        got_cached += cached
        got_decoded += batch.indices
    assert sorted(got_cached) == sorted(
        (i, key) for key, i in cached_keys.items())
    assert not set(got_decoded) & set(cached_rows)
    valid = {i for i, entry in enumerate(entries) if entry["kind"] != "broken"}
    assert set(got_decoded) == valid - set(cached_rows)
    assert not set(decoded) & set(cached_keys)


def test_iter_image_batches_empty_and_all_broken(tmp_path):
    assert list(iter_image_batches([], (8, 8), 4)) == []
    paths = [None, str(tmp_path / "a.png"), None]
    batches = list(iter_image_batches(paths, (8, 8), 4))
    assert sum(len(b.indices) for b, _ in batches) == 0
    assert sorted(i for b, _ in batches for i, _ in b.skipped) == [0, 1, 2]


# --- streaming: bounded memory, decoding ahead of the consumer -------------

class _InlineExecutor:
    """Run each task at once in the submitting thread: exact, repeatable
    counts of how far decoding runs ahead of the consumer."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    @staticmethod
    def submit(fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future


def _many_images(folder, n):
    data = encode(Image.new("RGB", (4, 4), COLOURS[0]), "PNG")
    paths = []
    for i in range(n):
        paths.append(write(os.path.join(folder, f"{i}.png"), data))
    return paths


def _peak_in_flight(paths, batch_size, monkeypatch):
    """Stream `paths`; return (peak decoded arrays alive at once,
    peak of decodes started but not yet handed to the consumer)."""
    state = dict(alive=0, peak_alive=0, started=0)
    original = images._prepare

    def gone():
        state["alive"] -= 1

    def counting_prepare(*args):
        state["started"] += 1
        result = original(*args)
        if result[0] is not None:
            state["alive"] += 1
            state["peak_alive"] = max(state["peak_alive"], state["alive"])
            weakref.finalize(result[0], gone)
        return result

    monkeypatch.setattr(images, "_prepare", counting_prepare)
    handed_out, peak_ahead, n_batches = 0, 0, 0
    for batch, _ in iter_image_batches(paths, (4, 4), batch_size):
        n_batches += 1
        handed_out += len(batch.indices) + len(batch.skipped)
        peak_ahead = max(peak_ahead, state["started"] - handed_out)
        del batch
    assert handed_out == len(paths) and n_batches >= len(paths) // batch_size
    return state["peak_alive"], peak_ahead


def test_streaming_memory_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "ThreadPoolExecutor", _InlineExecutor)
    batch_size = 4
    paths = _many_images(str(tmp_path), 150)
    peak_alive, peak_ahead = _peak_in_flight(paths[:40], batch_size,
                                             monkeypatch)
    # no more than 3 batches decode ahead of the one being handed out...
    assert 0 < peak_ahead <= 3 * batch_size
    # ...plus the batch being assembled
    assert 0 < peak_alive <= 4 * batch_size
    # memory stays flat: 150 images need no more than 40 did
    assert _peak_in_flight(paths, batch_size, monkeypatch) == \
        (peak_alive, peak_ahead)


def test_decoding_runs_ahead_while_consumer_works(tmp_path, monkeypatch):
    # Real threads: while the consumer holds a batch (the network running),
    # the workers decode the next ones, but never more than 3 batches ahead.
    batch_size = 4
    paths = _many_images(str(tmp_path), 48)
    started = []
    original = images._prepare

    def counting_prepare(*args):
        started.append(args[0])
        return original(*args)

    monkeypatch.setattr(images, "_prepare", counting_prepare)
    handed_out, ran_ahead = 0, False
    for batch, _ in iter_image_batches(paths, (4, 4), batch_size, workers=2):
        handed_out += len(batch.indices) + len(batch.skipped)
        if handed_out < len(paths):
            deadline = time.monotonic() + 5
            while len(started) <= handed_out and time.monotonic() < deadline:
                time.sleep(0.005)
            ran_ahead |= len(started) > handed_out
            time.sleep(0.02)  # a slow consumer lets the workers run ahead
        assert len(started) - handed_out <= 3 * batch_size
    assert ran_ahead
    assert handed_out == len(paths)


def test_closing_the_stream_cancels_queued_decodes(tmp_path, monkeypatch):
    # The consumer stops after the first batch (a cancelled run): images
    # queued for decoding are dropped, not read (each could be a slow URL).
    batch_size = 4
    paths = _many_images(str(tmp_path), 40)
    release = threading.Event()
    started = []
    original = images._prepare

    def slow_prepare(path, *args):
        started.append(path)
        if paths.index(path) >= batch_size:
            release.wait(10)
        return original(path, *args)

    monkeypatch.setattr(images, "_prepare", slow_prepare)
    batches = iter_image_batches(paths, (4, 4), batch_size, workers=1)
    first, _ = next(batches)
    assert first.indices == [0, 1, 2, 3]
    closer = threading.Thread(target=batches.close)
    closer.start()
    time.sleep(0.1)
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    # the four of the first batch, and at most the one being decoded
    assert len(started) <= batch_size + 1


# --- through the embedder --------------------------------------------------

@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from orangecontrib.deepimage.embedding import ImageEmbedder
    return ImageEmbedder(model="squeezenet",
                         cache_dir=str(tmp_path_factory.mktemp("cache")),
                         batch_size=4)


def _mixed_table(folder, entries):
    image = image_var("image", origin=folder)
    label = StringVariable("label")
    domain = Domain([ContinuousVariable("row")],
                    DiscreteVariable("kind", values=("broken", "good", "odd")),
                    [label, image])
    kinds = {"broken": 0, "good": 1, "odd": 2}
    n = len(entries)
    return Table.from_numpy(
        domain, np.arange(n, dtype=float)[:, None],
        np.array([kinds[e["kind"]] for e in entries], dtype=float),
        np.array([[f"row{i}", e["value"]] for i, e in enumerate(entries)],
                 dtype=object))


def test_embedder_keeps_rows_in_place(embedder, mixed):
    folder, entries = mixed
    table = _mixed_table(folder, entries)
    before = (table.domain, table.X.copy(), table.Y.copy(),
              table.metas.copy(), table.ids.copy())
    good_rows = [i for i, e in enumerate(entries) if e["kind"] != "broken"]
    broken_rows = [i for i, e in enumerate(entries) if e["kind"] == "broken"]

    embedded, skipped, n_skipped = embedder(table)

    # the input is untouched
    assert table.domain is before[0]
    np.testing.assert_array_equal(table.X, before[1])
    np.testing.assert_array_equal(table.Y, before[2])
    assert table.metas.tolist() == before[3].tolist()
    np.testing.assert_array_equal(table.ids, before[4])

    # embedded: exactly the good rows, in order, with their ids and metas
    size = embedder.embedding_size
    assert len(embedded) == len(good_rows)
    np.testing.assert_array_equal(embedded.ids, table.ids[good_rows])
    np.testing.assert_array_equal(embedded.X[:, 0], good_rows)
    assert list(embedded.metas[:, 1]) == [entries[i]["value"]
                                          for i in good_rows]
    new = embedded.domain.attributes[1:]
    assert len(new) == size and all(v.attributes.get("hidden") for v in new)
    vectors = embedded.X[:, 1:]
    assert np.isfinite(vectors).all()

    # each row's vector is the vector of its own image embedded alone
    alone = np.vstack([
        embedder.embed_paths([entries[i]["path"]],
                             with_probabilities=True).vectors[0]
        for i in good_rows])
    scale = np.abs(alone).max()
    np.testing.assert_allclose(vectors, alone, rtol=1e-3, atol=1e-3 * scale)
    # and it is nearer its own image's vector than any other's
    distances = np.linalg.norm(vectors[:, None] - alone[None], axis=2)
    np.testing.assert_array_equal(distances.argmin(axis=1),
                                  np.arange(len(good_rows)))

    # skipped: every broken row, with its id and a reason naming the problem
    assert n_skipped == len(broken_rows) == len(skipped)
    np.testing.assert_array_equal(skipped.ids, table.ids[broken_rows])
    np.testing.assert_array_equal(skipped.X[:, 0], broken_rows)
    reason_var = skipped.domain.metas[-1]
    assert reason_var.name == "Skip reason"
    for row, i in zip(skipped, broken_rows):
        reason = str(row[reason_var])
        for word in entries[i]["words"]:
            assert word in reason, (entries[i]["value"], reason)

    # a list of paths: None exactly where the image is broken
    result = embedder([e["path"] for e in entries])
    assert [i for i, v in enumerate(result) if v is None] == broken_rows
    np.testing.assert_allclose(np.vstack([result[i] for i in good_rows]),
                               vectors, rtol=1e-5, atol=1e-6 * scale)


def test_embedder_by_column_name(embedder, tmp_path):
    colour = COLOURS[2]
    write(tmp_path / "a.png", encode(Image.new("RGB", (8, 8), colour), "PNG"))
    other = StringVariable("other")
    var = StringVariable("file")      # not marked type=image
    var.attributes["origin"] = str(tmp_path)
    table = _table(other, var, rows=[["x", "a.png"], ["y", "nope.png"]])
    with pytest.raises(ValueError):
        embedder(table)
    embedded, skipped, n_skipped = embedder(table, col="file")
    assert len(embedded) == 1 and n_skipped == 1
    assert embedded.metas[0, 0] == "x" and skipped.metas[0, 0] == "y"


def test_embedding_columns_record_the_model(tmp_path):
    from orangecontrib.deepimage.clustering import recorded_model
    from orangecontrib.deepimage.embedding import ImageEmbedder
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "red.png")
    image = StringVariable("image")
    image.attributes.update(type="image", origin=str(tmp_path))
    table = Table.from_numpy(Domain([], metas=[image]), np.empty((1, 0)),
                             metas=np.array([["red.png"]], dtype=object))
    embedded, _, _ = ImageEmbedder("squeezenet", cache_dir=tmp_path)(table)
    assert embedded.domain.attributes[0].attributes["deepimage-model"] == \
        "squeezenet"
    assert recorded_model(embedded) == "squeezenet"


def test_mask_columns_are_not_image_columns():
    image = StringVariable("image")
    image.attributes.update(type="image", origin="/photos")
    mask = StringVariable("mask")
    mask.attributes.update(type="image", origin="/masks", mask="class",
                           classes="background, crane")
    table = Table.from_numpy(Domain([], metas=[mask, image]),
                             np.empty((1, 0)),
                             metas=np.array([["m.png", "p.jpg"]], dtype=object))
    assert find_image_column(table) is image
    assert find_mask_column(table) is mask
    assert image_columns(table) == [image]
    assert mask_class_names(mask) == ["background", "crane"]


def test_require_columns_and_paths_of():
    from orangecontrib.deepimage.images import (
        paths_of, require_image_column, require_mask_column)
    photo = StringVariable("photo")
    photo.attributes.update(type="image", origin="/photos")
    other = StringVariable("other")
    table = Table.from_numpy(Domain([], metas=[photo, other]),
                             np.empty((1, 0)),
                             metas=np.array([["a.jpg", "b.jpg"]], dtype=object))
    assert require_image_column(table) is photo
    assert require_image_column(table, "other") is other
    assert require_image_column(table, "missing") is photo
    assert paths_of(table) == [os.path.join("/photos", "a.jpg")]
    assert paths_of(["x.png", None]) == ["x.png", None]
    with pytest.raises(ValueError, match="no mask column"):
        require_mask_column(table)
    no_images = Table.from_numpy(Domain([ContinuousVariable("x")]),
                                 np.zeros((1, 1)))
    with pytest.raises(ValueError, match="no image column"):
        require_image_column(no_images)
