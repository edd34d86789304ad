"""Tests of orangecontrib.deepimage.edit on tiny hand-made images."""
import contextlib
import hashlib
import os
import stat
import tempfile
import unittest
from unittest import mock

import numpy as np
from PIL import Image, ImageCms
from scipy import ndimage
from skimage.morphology import disk

from Orange.data import Domain, StringVariable, Table

from orangecontrib.deepimage import edit
from orangecontrib.deepimage.edit import (
    edit_array, edit_images, grow_mask, object_mask, preview_edit)
from orangecontrib.deepimage.errors import Cancelled

HEIGHT, WIDTH = 48, 64
OBJECT = (255, 0, 255)


def gradient():
    """A smooth background: red grows to the right, green downwards."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return np.dstack([40 + xx * 3, 30 + yy * 4,
                      np.full_like(xx, 120)]).astype(np.uint8)


def square_and_disc():
    """Class 1: a square on the left; class 2: a disc on the right."""
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[14:30, 8:22] = 1
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    labels[(yy - 26) ** 2 + (xx - 44) ** 2 <= 8 ** 2] = 2
    return labels


def photo_with_objects(labels):
    pixels = gradient()
    pixels[labels > 0] = OBJECT
    return pixels


def reference_dilation(mask, radius):
    """Binary dilation with a disk, computed independently of edit.py."""
    return ndimage.binary_dilation(mask, structure=disk(radius))


def sha1(path):
    with open(path, "rb") as file:
        return hashlib.sha1(file.read()).hexdigest()


def table(folder, rows, classes="background, square, disc", kind="class",
          image_folder=None):
    """A table with an image and a mask column; rows: (image, mask)."""
    image = StringVariable("image")
    image.attributes.update({"type": "image",
                             "origin": image_folder or folder})
    mask = StringVariable("mask")
    mask.attributes.update({"type": "image", "origin": folder,
                            "mask": kind, "classes": classes})
    metas = np.array([[i if i is not None else "", m if m is not None else ""]
                      for i, m in rows], dtype=object)
    return Table.from_numpy(Domain([], metas=[image, mask]),
                            np.empty((len(rows), 0)), metas=metas)


class EditTestCase(unittest.TestCase):
    def setUp(self):
        self._tempdir = tempfile.TemporaryDirectory()
        self.folder = self._tempdir.name
        self.out = os.path.join(self.folder, "out")
        os.mkdir(self.out)
        self.labels = square_and_disc()
        self.pixels = photo_with_objects(self.labels)
        Image.fromarray(self.pixels).save(self.path("photo.png"))
        Image.fromarray(self.labels).save(self.path("photo-mask.png"))
        self.data = table(self.folder, [("photo.png", "photo-mask.png")])

    def tearDown(self):
        for root, dirs, _ in os.walk(self.folder):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        self._tempdir.cleanup()

    def path(self, name):
        return os.path.join(self.folder, name)

    def edited(self, result, row=0, mode=None):
        image = Image.open(result.files[row])
        return np.asarray(image.convert(mode) if mode else image)


class TestOperations(EditTestCase):
    def test_remove_fills_from_the_background(self):
        for method in ("fast", "quality"):
            with self.subTest(method=method):
                result = edit_images(self.data, "remove", dilate=2,
                                     out_dir=self.out, method=method)
                out = self.edited(result).astype(int)
                grown = reference_dilation(self.labels > 0, 2)
                # Lossless PNG: nothing outside the grown mask changed.
                np.testing.assert_array_equal(out[~grown],
                                              self.pixels[~grown])
                inside = self.labels > 0
                to_background = np.abs(out[inside] - gradient()[inside]).mean()
                to_object = np.abs(out[inside] - np.array(OBJECT)).mean()
                self.assertLess(to_background, 15, method)
                self.assertLess(to_background, to_object / 5, method)

    def test_quality_remove_of_a_large_region_at_reduced_scale(self):
        # Force the reduced-scale solve on a tiny image.
        with mock.patch.object(edit, "MAX_BIHARMONIC_PIXELS", 60):
            out = edit_array(self.pixels, self.labels > 0, "remove",
                             method="quality").astype(int)
        inside = self.labels > 0
        np.testing.assert_array_equal(out[~inside], self.pixels[~inside])
        self.assertLess(np.abs(out[inside] - gradient()[inside]).mean(), 20)

    def test_blur_pixelate_fill_change_only_masked_pixels(self):
        grown = reference_dilation(self.labels > 0, 3)
        for operation in ("blur", "pixelate", "fill"):
            with self.subTest(operation=operation):
                result = edit_images(self.data, operation, dilate=3,
                                     out_dir=self.out, pixel_size=4,
                                     blur_radius=3, colour="#102030")
                out = self.edited(result)
                np.testing.assert_array_equal(out[~grown],
                                              self.pixels[~grown])
                changed = (out != self.pixels).any(axis=2)
                self.assertGreater(changed[grown].mean(), 0.5)
                self.assertEqual(result.table.X[0, 0], grown.sum())
        np.testing.assert_array_equal(out[grown],
                                      np.broadcast_to((16, 32, 48),
                                                      out[grown].shape))

    def test_pixelate_makes_blocks_on_the_image_grid(self):
        mask = np.zeros((HEIGHT, WIDTH), bool)
        mask[8:24, 16:32] = True  # exactly 2×2 blocks of 8
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        out = edit_array(pixels, mask, "pixelate", pixel_size=8)
        for y in (8, 16):
            for x in (16, 24):
                block = out[y:y + 8, x:x + 8].reshape(-1, 3)
                self.assertTrue((block == block[0]).all())
                mean = pixels[y:y + 8, x:x + 8].reshape(-1, 3).mean(axis=0)
                np.testing.assert_allclose(block[0], mean, atol=0.51)

    def test_cut_out_alpha_is_the_grown_mask(self):
        result = edit_images(self.data, "cut-out", dilate=3,
                             out_dir=self.out)
        self.assertTrue(result.files[0].endswith("photo-cut-out.png"))
        out = self.edited(result)
        self.assertEqual(out.shape, (HEIGHT, WIDTH, 4))
        grown = reference_dilation(self.labels > 0, 3)
        np.testing.assert_array_equal(out[..., 3], grown * 255)
        np.testing.assert_array_equal(out[grown][:, :3], self.pixels[grown])

    def test_classes_by_name_or_index(self):
        disc = reference_dilation(self.labels == 2, 1)
        for classes in (["disc"], [2]):
            with self.subTest(classes=classes):
                result = edit_images(self.data, "fill", classes=classes,
                                     dilate=1, out_dir=self.out,
                                     colour=(0, 255, 0))
                out = self.edited(result)
                # The square (class 1) is untouched.
                np.testing.assert_array_equal(out[~disc], self.pixels[~disc])
                self.assertTrue((out[disc] == (0, 255, 0)).all())

    def test_background_can_be_chosen(self):
        mask = object_mask(self.labels, ["background"],
                           ["background", "square", "disc"])
        np.testing.assert_array_equal(mask, self.labels == 0)

    def test_unknown_class_or_operation_is_refused(self):
        with self.assertRaisesRegex(ValueError, "crane"):
            edit_images(self.data, "fill", classes=["crane"],
                        out_dir=self.out)
        with self.assertRaisesRegex(ValueError, "smudge"):
            edit_images(self.data, "smudge", out_dir=self.out)
        with self.assertRaisesRegex(ValueError, "method"):
            edit_images(self.data, "remove", method="best",
                        out_dir=self.out)
        self.assertEqual(os.listdir(self.out), [])

    def test_bad_parameters_are_refused_before_anything_is_written(self):
        for operation, parameters, name in (
                ("blur", {"blur_radius": 0}, "blur_radius"),
                ("pixelate", {"pixel_size": 0}, "pixel_size"),
                ("fill", {"colour": "no colour"}, "colour")):
            with self.subTest(operation=operation), \
                    self.assertRaisesRegex(ValueError, name):
                edit_images(self.data, operation, out_dir=self.out,
                            **parameters)
        self.assertEqual(os.listdir(self.out), [])

    def test_removing_the_whole_image_is_skipped(self):
        Image.fromarray(np.ones((HEIGHT, WIDTH), np.uint8)).save(
            self.path("all-mask.png"))
        data = table(self.folder, [("photo.png", "all-mask.png")])
        result = edit_images(data, "remove", out_dir=self.out)
        self.assertIsNone(result.table)
        self.assertIn("whole image", result.skipped[0][1])
        # Other operations can act on every pixel.
        result = edit_images(data, "blur", out_dir=self.out)
        self.assertEqual(result.table.X[0, 0], HEIGHT * WIDTH)

    def test_instance_masks_edit_every_object(self):
        mask = object_mask(self.labels, ["square"], [], kind="instance")
        np.testing.assert_array_equal(mask, self.labels > 0)

    def test_grow_mask_is_a_disk_dilation(self):
        mask = np.zeros((21, 21), bool)
        mask[10, 10] = True
        mask[0, 0] = True  # at the edge: no wrap-around
        for radius in (0, 1, 3, 6):
            np.testing.assert_array_equal(
                grow_mask(mask, radius), reference_dilation(mask, radius)
                if radius else mask)

    def test_boxes_hold_whole_regions(self):
        mask = np.zeros((40, 40), bool)
        mask[2:5, 2:5] = True
        mask[8:10, 8:10] = True     # near the first: one box
        mask[30:35, 30:35] = True   # far: its own box
        boxes = edit._region_boxes(mask, pad=3)
        self.assertEqual(len(boxes), 2)
        self.assertEqual(sum(mask[box].sum() for box in boxes), mask.sum())

    def test_rgba_input_keeps_its_alpha(self):
        rgba = np.dstack([self.pixels, np.full((HEIGHT, WIDTH), 128,
                                               np.uint8)])
        Image.fromarray(rgba, "RGBA").save(self.path("glass.png"))
        data = table(self.folder, [("glass.png", "photo-mask.png")])
        out = self.edited(edit_images(data, "fill", out_dir=self.out))
        self.assertEqual(out.shape[2], 4)
        self.assertTrue((out[..., 3] == 128).all())
        cut = self.edited(edit_images(data, "cut-out", dilate=0,
                                      out_dir=self.out))
        np.testing.assert_array_equal(cut[..., 3], (self.labels > 0) * 128)


class TestFiles(EditTestCase):
    def test_originals_unchanged_and_second_run_writes_beside(self):
        before = {name: sha1(self.path(name))
                  for name in ("photo.png", "photo-mask.png")}
        first = edit_images(self.data, "remove", out_dir=self.out)
        first_hash = sha1(first.files[0])
        second = edit_images(self.data, "remove", out_dir=self.out)
        self.assertEqual(os.path.basename(first.files[0]),
                         "photo-remove.png")
        self.assertEqual(os.path.basename(second.files[0]),
                         "photo-remove-1.png")
        self.assertEqual(sorted(os.listdir(self.out)),
                         ["photo-remove-1.png", "photo-remove.png"])
        self.assertEqual(sha1(first.files[0]), first_hash)
        self.assertEqual(before, {name: sha1(self.path(name))
                                  for name in before})

    def test_written_files_have_ordinary_permissions(self):
        result = edit_images(self.data, "fill", out_dir=self.out)
        self.assertTrue(os.stat(result.files[0]).st_mode & stat.S_IRGRP
                        or os.name == "nt")

    def test_output_beside_the_originals_never_overwrites(self):
        Image.new("RGB", (3, 3)).save(self.path("photo-blur.png"))
        stamp = sha1(self.path("photo-blur.png"))
        result = edit_images(self.data, "blur", out_dir=self.folder)
        self.assertTrue(result.files[0].endswith("photo-blur-1.png"))
        self.assertEqual(sha1(self.path("photo-blur.png")), stamp)

    def test_missing_output_folder(self):
        missing = os.path.join(self.folder, "no such folder")
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            edit_images(self.data, "remove", out_dir=missing)
        self.assertFalse(os.path.exists(missing))

    def test_read_only_output_folder(self):
        os.chmod(self.out, stat.S_IRUSR | stat.S_IXUSR)
        if os.access(self.out, os.W_OK):
            # Root writes anyway: let os.access report what a user would
            # see, to test that the error comes before anything is written.
            os.chmod(self.out, 0o755)
            patch = mock.patch("os.access", return_value=False)
        else:
            patch = contextlib.nullcontext()
        with patch, self.assertRaisesRegex(PermissionError, "read-only"):
            edit_images(self.data, "remove", out_dir=self.out)
        os.chmod(self.out, 0o755)
        self.assertEqual(os.listdir(self.out), [])

    def test_failure_while_writing_leaves_no_partial_file(self):
        second = table(self.folder, [("photo.png", "photo-mask.png"),
                                     ("photo.png", "photo-mask.png")])
        original_save = Image.Image.save
        calls = []

        def save_then_fail(image, fp, *args, **kwargs):
            calls.append(fp)
            if len(calls) == 2:
                fp.write(b"\x89PNG half an image")
                raise OSError("disk full")
            return original_save(image, fp, *args, **kwargs)

        with mock.patch.object(Image.Image, "save", save_then_fail), \
                self.assertRaisesRegex(OSError, "disk full"):
            edit_images(second, "blur", out_dir=self.out)
        # The first image is complete; of the second, nothing is left.
        self.assertEqual(os.listdir(self.out), ["photo-blur.png"])
        Image.open(os.path.join(self.out, "photo-blur.png")).load()

    def test_cancel_keeps_complete_files_only(self):
        data = table(self.folder, [("photo.png", "photo-mask.png")] * 3)

        def progress(fraction):
            if fraction > 0.5:
                raise Cancelled()

        with self.assertRaises(Cancelled):
            edit_images(data, "fill", out_dir=self.out, progress=progress)
        self.assertEqual(sorted(os.listdir(self.out)),
                         ["photo-fill-1.png", "photo-fill.png"])

    def test_jpeg_stays_jpeg_with_exif_and_profile(self):
        exif = Image.Exif()
        exif[0x010F] = "Orange Camera Works"  # Make
        exif[0x0112] = 6  # Orientation: stored rotated, shown upright
        icc = ImageCms.ImageCmsProfile(
            ImageCms.createProfile("sRGB")).tobytes()
        # Stored sideways: the upright photo is HEIGHT×WIDTH (as the mask).
        stored = Image.fromarray(self.pixels).transpose(
            Image.Transpose.ROTATE_90)
        stored.save(self.path("car.jpg"), quality=95, exif=exif.tobytes(),
                    icc_profile=icc)
        data = table(self.folder, [("car.jpg", "photo-mask.png")])
        result = edit_images(data, "fill", out_dir=self.out,
                             colour=(0, 0, 0))
        self.assertTrue(result.files[0].endswith("car-fill.jpg"))
        with Image.open(result.files[0]) as image:
            self.assertEqual(image.format, "JPEG")
            self.assertEqual(image.size, (WIDTH, HEIGHT))
            saved = image.getexif()
            self.assertEqual(saved[0x010F], "Orange Camera Works")
            self.assertEqual(saved.get(0x0112, 1), 1)
            self.assertEqual(image.info.get("icc_profile"), icc)
            out = np.asarray(image.convert("RGB")).astype(int)
        # The square is black where the (upright) mask says so.
        self.assertLess(out[18:26, 11:19].max(), 30)
        self.assertGreater(out[2:6, 2:6].mean(), 40)

    def test_cut_out_of_a_jpeg_is_a_png(self):
        Image.fromarray(self.pixels).save(self.path("car.jpg"))
        data = table(self.folder, [("car.jpg", "photo-mask.png")])
        result = edit_images(data, "cut-out", out_dir=self.out)
        self.assertTrue(result.files[0].endswith("car-cut-out.png"))
        self.assertEqual(Image.open(result.files[0]).mode, "RGBA")

    def test_gif_becomes_png(self):
        Image.fromarray(self.pixels).convert("P").save(self.path("anim.gif"))
        data = table(self.folder, [("anim.gif", "photo-mask.png")])
        result = edit_images(data, "fill", out_dir=self.out)
        self.assertTrue(result.files[0].endswith("anim-fill.png"))

    def test_default_output_folder_is_created(self):
        with tempfile.TemporaryDirectory() as home, \
                mock.patch.object(edit, "default_output_folder",
                                  return_value=os.path.join(home, "a", "b")):
            result = edit_images(self.data, "fill")
            self.assertEqual(result.out_dir, os.path.join(home, "a", "b"))
            self.assertTrue(os.path.exists(result.files[0]))


class TestTableAndSkipping(EditTestCase):
    def test_result_table_follows_the_image_column_convention(self):
        result = edit_images(self.data, "blur", out_dir=self.out)
        out = result.table
        column = out.domain["edited image"]
        self.assertEqual(column.attributes["type"], "image")
        self.assertEqual(column.attributes["origin"], self.out)
        self.assertEqual(out.get_column("edited image")[0],
                         "photo-blur.png")
        self.assertEqual(out.get_column("source image")[0],
                         self.path("photo.png"))
        self.assertEqual(out.get_column("pixels edited")[0],
                         reference_dilation(self.labels > 0, 3).sum())
        np.testing.assert_array_equal(out.ids, self.data.ids)

    def test_unreadable_rows_are_skipped_with_reasons(self):
        with open(self.path("text.png"), "w") as file:
            file.write("not a picture")
        Image.new("L", (5, 5)).save(self.path("small-mask.png"))
        data = table(self.folder, [
            ("photo.png", "photo-mask.png"),
            ("missing.png", "photo-mask.png"),
            ("text.png", "photo-mask.png"),
            ("photo.png", "missing-mask.png"),
            ("photo.png", "small-mask.png"),
            ("photo.png", None),
            ("photo.png", "text.png"),
            ("photo.png", "photo-mask.png"),
        ])
        result = edit_images(data, "fill", out_dir=self.out)
        self.assertEqual(len(result.table), 2)
        np.testing.assert_array_equal(result.table.ids, data.ids[[0, 7]])
        reasons = dict(result.skipped)
        self.assertEqual(sorted(reasons), [1, 2, 3, 4, 5, 6])
        self.assertIn("not found", reasons[1])
        self.assertIn("not an image", reasons[2])
        self.assertIn("mask", reasons[3])
        self.assertIn("not found", reasons[3])
        self.assertIn("5×5", reasons[4])
        self.assertIn("no mask", reasons[5])
        self.assertIn("mask", reasons[6])
        self.assertEqual(len(os.listdir(self.out)), 2)

    def test_all_skipped_gives_no_table(self):
        data = table(self.folder, [("missing.png", "photo-mask.png")])
        result = edit_images(data, "fill", out_dir=self.out)
        self.assertIsNone(result.table)
        self.assertEqual(len(result.skipped), 1)

    def test_needs_image_and_mask_columns(self):
        image = StringVariable("image")
        image.attributes.update({"type": "image", "origin": self.folder})
        only_images = Table.from_numpy(
            Domain([], metas=[image]), np.empty((1, 0)),
            metas=np.array([["photo.png"]], dtype=object))
        with self.assertRaisesRegex(ValueError, "mask column"):
            edit_images(only_images, "blur", out_dir=self.out)

    def test_an_image_without_chosen_objects_is_written_unchanged(self):
        empty = np.zeros((HEIGHT, WIDTH), np.uint8)
        Image.fromarray(empty).save(self.path("empty-mask.png"))
        data = table(self.folder, [("photo.png", "empty-mask.png")])
        result = edit_images(data, "remove", out_dir=self.out)
        self.assertEqual(result.table.X[0, 0], 0)
        np.testing.assert_array_equal(self.edited(result), self.pixels)


class TestMasksAndPreview(EditTestCase):
    def test_black_and_white_palette_and_colour_masks(self):
        # Masks are read by segdata.load_mask: 0/255 is objects on
        # background, a palette's indices are classes, colours are refused.
        labels = square_and_disc()
        Image.fromarray((labels > 0).astype(np.uint8) * 255).save(
            self.path("binary.png"))
        palette = Image.frombytes("P", (WIDTH, HEIGHT), labels.tobytes())
        palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
        palette.save(self.path("palette.png"))
        colour = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        colour[labels == 1] = (255, 0, 0)
        Image.fromarray(colour).save(self.path("colour.png"))
        data = table(self.folder, [("photo.png", "binary.png"),
                                   ("photo.png", "palette.png"),
                                   ("photo.png", "colour.png")],
                     classes="background, object")
        result = edit_images(data, "fill", dilate=0, out_dir=self.out)
        np.testing.assert_array_equal(result.table.X[:, 0],
                                      [(labels > 0).sum(), (labels > 0).sum()])
        self.assertEqual([row for row, _ in result.skipped], [2])
        self.assertIn("mask", result.skipped[0][1])

    def test_preview_is_reduced_and_writes_nothing(self):
        before, after = preview_edit(
            self.path("photo.png"), self.path("photo-mask.png"), "fill",
            classes=["square"], class_names=["background", "square", "disc"],
            dilate=0, max_size=32)
        self.assertEqual(before.shape, (24, 32, 3))
        self.assertEqual(after.shape, (24, 32, 3))
        self.assertTrue((after[9:13, 6:9] == 0).all())
        self.assertEqual(os.listdir(self.out), [])
        full_before, _ = preview_edit(
            self.path("photo.png"), self.path("photo-mask.png"), "blur",
            max_size=None)
        np.testing.assert_array_equal(full_before, self.pixels)


class TestTutorialData(unittest.TestCase):
    def test_shipped_photos_are_edited_by_their_masks(self):
        from orangecontrib.deepimage.segdata import pair_folders
        folder = os.path.join(os.path.dirname(edit.__file__), "tutorials",
                              "edit")
        data, report = pair_folders(os.path.join(folder, "images"),
                                    os.path.join(folder, "masks"))
        self.assertEqual(report.classes, ["background", "rocket", "tower",
                                          "flag", "shuttle", "helmet"])
        self.assertEqual(len(data), 2)
        with tempfile.TemporaryDirectory() as out:
            for operation, cls in (("remove", "tower"), ("blur", "flag")):
                result = edit_images(data, operation, classes=[cls],
                                     out_dir=out)
                self.assertEqual(result.skipped, [])
                edited = dict(zip(result.table.get_column("source image"),
                                  result.table.X[:, 0]))
                edited = {os.path.basename(name): count
                          for name, count in edited.items()}
                has = "rocket.jpg" if cls == "tower" else "astronaut.jpg"
                self.assertGreater(edited.pop(has), 1000)
                self.assertEqual(list(edited.values()), [0])
            for name in os.listdir(out):
                with Image.open(os.path.join(out, name)) as image:
                    self.assertEqual(image.format, "JPEG")
                    self.assertLessEqual(max(image.size), 640)


if __name__ == "__main__":
    unittest.main()
