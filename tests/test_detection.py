"""Tests of orangecontrib.deepimage.detection on real photos, offline.

The photos are scikit-image's sample images (``skimage.data``), which ship
with the package: the astronaut (Eileen Collins) has one frontal face; the
coffee cup, Chelsea the cat, the rocket, the brick wall and the grass have
none.
"""
import os
import tempfile
import unittest
from unittest import mock

import cv2
import numpy as np
import skimage.data
from PIL import Image

from Orange.data import Domain, StringVariable, Table

from orangecontrib.deepimage import detection
from orangecontrib.deepimage.detection import (
    DETECTORS, Detection, ObjectDetector, boxes_to_labels,
    detections_to_masks, non_max_suppression, select_detections)
from orangecontrib.deepimage.errors import (
    Cancelled, InvalidInput, WeightsUnavailable)

#: The astronaut's face, as the cascade finds it in the 512×512 photo;
#: read off the photo, it spans about x 175-270, y 65-160.
FACE_REGION = (165, 55, 280, 170)


def rgb(array):
    array = np.asarray(array)
    return np.dstack([array] * 3) if array.ndim == 2 else array[..., :3]


FACE_FREE = {"coffee": skimage.data.coffee, "chelsea": skimage.data.chelsea,
             "rocket": skimage.data.rocket, "brick": skimage.data.brick,
             "grass": skimage.data.grass}


def inside(box, region, tolerance=0):
    x0, y0, x1, y1 = box
    rx0, ry0, rx1, ry1 = region
    return x0 >= rx0 - tolerance and y0 >= ry0 - tolerance \
        and x1 <= rx1 + tolerance and y1 <= ry1 + tolerance


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) \
        - inter
    return inter / union


def image_table(folder, names):
    var = StringVariable("image")
    var.attributes.update({"type": "image", "origin": folder})
    domain = Domain([], metas=[var])
    return Table.from_numpy(domain, np.empty((len(names), 0)),
                            metas=np.array(names, dtype=object)[:, None])


class TestPin(unittest.TestCase):
    def test_opencv_ships_the_cascades_the_registry_uses(self):
        # OpenCV 5 dropped the cascades; setup.py pins 4.x for them.
        self.assertEqual(cv2.__version__.split(".")[0], "4")
        folder = cv2.data.haarcascades
        for name in ("haarcascade_frontalface_default.xml",
                     "haarcascade_fullbody.xml",
                     "haarcascade_russian_plate_number.xml"):
            self.assertTrue(os.path.isfile(os.path.join(folder, name)), name)
        for spec in DETECTORS.values():
            if spec.kind == "cascade":
                self.assertTrue(os.path.isfile(
                    detection.cascade_file(spec.source)))
        self.assertGreater(
            len(cv2.HOGDescriptor_getDefaultPeopleDetector()), 1000)

    def test_missing_cascade_names_the_fix(self):
        with self.assertRaises(WeightsUnavailable) as ctx:
            detection.cascade_file("no_such_cascade.xml")
        self.assertIn("opencv-python-headless>=4.5,<5", str(ctx.exception))


class TestRegistry(unittest.TestCase):
    def test_entries_are_complete(self):
        self.assertLessEqual({"faces", "people", "number-plates"},
                             set(DETECTORS))
        for key, spec in DETECTORS.items():
            self.assertEqual(spec.key, key)
            self.assertTrue(spec.classes and spec.licence and spec.input)
            self.assertIn(spec.weights, ("bundled", "download"))
            self.assertGreater(spec.size_mb, 0)
        self.assertTrue(DETECTORS["faces"].offline)
        self.assertEqual(DETECTORS["faces"].availability(), "works offline")

    def test_an_optional_package_that_is_missing(self):
        spec = DETECTORS["faces-mtcnn"]
        with mock.patch.dict("sys.modules", {"mtcnn": None}), \
                mock.patch("importlib.util.find_spec", return_value=None):
            self.assertFalse(spec.installed)
            self.assertEqual(spec.availability(), "needs pip install mtcnn")
            with self.assertRaisesRegex(WeightsUnavailable,
                                        "pip install mtcnn"):
                ObjectDetector("faces-mtcnn").load()
        self.assertTrue(DETECTORS["faces"].installed)  # no package needed

    def test_bad_arguments_name_the_value(self):
        with self.assertRaisesRegex(InvalidInput, "model='cars'"):
            ObjectDetector("cars")
        with self.assertRaisesRegex(InvalidInput, "classes="):
            ObjectDetector("faces", classes=["person"])
        with self.assertRaisesRegex(InvalidInput, "min_score=1.5"):
            ObjectDetector("faces", min_score=1.5)
        with self.assertRaisesRegex(InvalidInput, "overlap=-0.1"):
            ObjectDetector("faces", overlap=-0.1)


class TestFaces(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.detector = ObjectDetector("faces")

    def test_finds_the_astronauts_face(self):
        found = self.detector.detect_array(skimage.data.astronaut())
        self.assertEqual(len(found), 1)
        face = found[0]
        self.assertEqual(face.label, "face")
        self.assertGreaterEqual(face.score, 0.5)
        self.assertTrue(inside(face.box, FACE_REGION), face.box)
        self.assertGreater(face.area, 60 * 60)

    def test_at_most_one_false_face_over_face_free_photos(self):
        false = {name: len(self.detector.detect_array(rgb(load())))
                 for name, load in FACE_FREE.items()}
        self.assertLessEqual(sum(false.values()), 1, false)

    def test_boxes_of_a_large_image_are_in_full_resolution(self):
        # The astronaut enlarged to 3000×3000 and placed at x=700 on a
        # 4000×3000 grey canvas: the face must come back where it is there.
        small = skimage.data.astronaut()
        expected = self.detector.detect_array(small)[0].box
        scale, offset = 3000 / 512, 700
        canvas = np.full((3000, 4000, 3), 128, np.uint8)
        canvas[:, offset:offset + 3000] = cv2.resize(
            small, (3000, 3000), interpolation=cv2.INTER_CUBIC)
        found = self.detector.detect_array(canvas)
        self.assertTrue(found)
        best = found[0]
        target = (expected[0] * scale + offset, expected[1] * scale,
                  expected[2] * scale + offset, expected[3] * scale)
        self.assertGreater(iou(best.box, target), 0.6, (best.box, target))
        self.assertGreater(best.box[2] - best.box[0], 400)

    def test_tiny_and_blank_images_have_no_faces(self):
        self.assertEqual(self.detector.detect_array(
            np.zeros((10, 10, 3), np.uint8)), [])
        self.assertEqual(self.detector.detect_array(
            np.full((200, 300, 3), 200, np.uint8)), [])

    def test_min_score_one_drops_everything(self):
        strict = ObjectDetector("faces", min_score=1.0)
        self.assertEqual(strict.detect_array(skimage.data.astronaut()), [])


class TestNonMaxSuppression(unittest.TestCase):
    def test_keeps_the_best_of_overlapping_boxes_per_class(self):
        found = [Detection("face", 0.9, (0, 0, 10, 10)),
                 Detection("face", 0.8, (1, 1, 11, 11)),    # overlaps the 1st
                 Detection("face", 0.7, (50, 50, 60, 60)),  # apart
                 Detection("person", 0.6, (0, 0, 10, 10)),  # other class
                 Detection("face", 0.3, (80, 80, 90, 90))]  # below min_score
        self.assertEqual(non_max_suppression(found, 0.5, 0.5), [0, 2, 3])
        # With overlap 1, no box suppresses another.
        self.assertEqual(non_max_suppression(found, 0.5, 1.0), [0, 1, 2, 3])
        self.assertEqual(select_detections(found, 0.5, 0.5, ["person"]),
                         [found[3]])

    def test_threshold_after_suppression_is_the_same(self):
        # Random overlapping boxes: suppress at 0 then threshold, or
        # suppress at the threshold: the same boxes.
        rng = np.random.default_rng(0)
        found = []
        for _ in range(60):
            x, y = rng.uniform(0, 100, 2)
            w, h = rng.uniform(5, 30, 2)
            found.append(Detection("face", float(rng.uniform()),
                                   (x, y, x + w, y + h)))
        everything = select_detections(found, 0.0, 0.4)
        for threshold in (0.2, 0.5, 0.8):
            self.assertEqual(
                [det for det in everything if det.score >= threshold],
                select_detections(found, threshold, 0.4))


class TestTables(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp()
        Image.fromarray(skimage.data.astronaut()).save(
            os.path.join(cls.folder, "astronaut.png"))
        Image.fromarray(skimage.data.coffee()).save(
            os.path.join(cls.folder, "coffee.png"))
        with open(os.path.join(cls.folder, "notes.png"), "w") as file:
            file.write("not an image")
        cls.table = image_table(cls.folder, ["astronaut.png", "coffee.png",
                                             "notes.png", "missing.jpg"])

    def test_paths_give_a_list_or_none_per_path(self):
        paths = [os.path.join(self.folder, name) for name in
                 ("astronaut.png", "notes.png", "coffee.png")]
        found = ObjectDetector("faces")(paths)
        self.assertEqual(len(found), 3)
        self.assertEqual(len(found[0]), 1)
        self.assertIsNone(found[1])
        self.assertEqual(found[2], [])

    def test_objects_counts_and_skipped(self):
        fractions = []
        objects, counts, skipped = ObjectDetector("faces")(
            self.table, progress=fractions.append)
        self.assertEqual(fractions[-1], 1)
        self.assertEqual(len(fractions), 4)

        self.assertEqual(len(objects), 1)
        self.assertEqual(objects.get_column("class")[0], 0)
        x0, y0, x1, y1 = (objects.get_column(name)[0]
                          for name in ("x0", "y0", "x1", "y1"))
        self.assertTrue(inside((x0, y0, x1, y1), FACE_REGION))
        self.assertAlmostEqual(objects.get_column("area")[0],
                               (x1 - x0) * (y1 - y0))
        image_var = objects.domain["image"]
        self.assertEqual(image_var.attributes["type"], "image")
        self.assertEqual(image_var.attributes["origin"], self.folder)
        self.assertEqual(objects.get_column("image")[0], "astronaut.png")

        # An image with no face is a row with a zero count, not missing.
        self.assertEqual(list(counts.get_column("image")),
                         ["astronaut.png", "coffee.png"])
        self.assertEqual(list(counts.get_column("face count")), [1, 0])
        np.testing.assert_equal(counts.ids, self.table.ids[:2])

        self.assertEqual(list(skipped.get_column("image")),
                         ["notes.png", "missing.jpg"])
        reasons = list(skipped.get_column("reason skipped"))
        self.assertIn("not an image", reasons[0])
        self.assertIn("file not found", reasons[1])

    def test_no_objects_gives_counts_of_zero(self):
        table = image_table(self.folder, ["coffee.png"])
        objects, counts, skipped = ObjectDetector("faces")(table)
        self.assertIsNone(objects)
        self.assertIsNone(skipped)
        self.assertEqual(list(counts.get_column("face count")), [0])

    def test_no_classes_kept_gives_counts_without_count_columns(self):
        found = [[Detection("face", 0.9, (0, 0, 5, 5))], [], None, None]
        objects, counts, _ = detection.detection_tables(
            self.table, found, [(2, "bad"), (3, "gone")], [])
        self.assertIsNone(objects)
        self.assertEqual(len(counts), 2)
        self.assertEqual(len(counts.domain.attributes), 0)

    def test_cancel_through_the_progress_callback(self):
        def cancel(_):
            raise Cancelled()
        with self.assertRaises(Cancelled):
            ObjectDetector("faces")(self.table, progress=cancel)


class TestMasks(unittest.TestCase):
    def test_boxes_are_rounded_outwards_and_best_wins(self):
        found = [Detection("a", 0.9, (1.5, 1.2, 3.1, 2.9)),
                 Detection("b", 0.5, (0, 0, 2, 2))]
        labels = boxes_to_labels(found, 5, 4, ["a", "b"])
        expected = np.array([[2, 2, 0, 0, 0],
                             [2, 1, 1, 1, 0],
                             [0, 1, 1, 1, 0],
                             [0, 0, 0, 0, 0]])
        np.testing.assert_equal(labels, expected)

    def test_hidden_faces_round_trip_with_edit_images(self):
        from orangecontrib.deepimage.edit import edit_images
        folder = tempfile.mkdtemp()
        out = tempfile.mkdtemp()
        edited_dir = tempfile.mkdtemp()
        photo = skimage.data.astronaut()
        path = os.path.join(folder, "astronaut.png")
        Image.fromarray(photo).save(path)
        before = open(path, "rb").read()
        table = image_table(folder, ["astronaut.png", "gone.png"])

        detector = ObjectDetector("faces")
        paths = [os.path.join(folder, "astronaut.png"), None]
        results, skipped, sizes = detector.detect_paths(paths)
        self.assertEqual([row for row, _ in skipped], [1])
        masked = detections_to_masks(table, results, sizes,
                                     detector.class_names, out)
        self.assertEqual(len(masked), 1)
        mask_var = masked.domain["objects mask"]
        self.assertEqual(mask_var.attributes["mask"], "class")
        self.assertEqual(mask_var.attributes["classes"], "background,face")

        result = edit_images(masked, "pixelate", dilate=0,
                             out_dir=edited_dir, pixel_size=12)
        self.assertEqual(result.skipped, [])
        edited = np.asarray(Image.open(result.files[0]))
        changed = (edited != photo).any(axis=2)
        inside_box = np.zeros(changed.shape, bool)
        for det in results[0]:
            x0, y0, x1, y1 = (int(round(v)) for v in det.box)
            inside_box[y0:y1, x0:x1] = True
            box_changed = changed[y0:y1, x0:x1]
            # Pixelation changes nearly every pixel of a face.
            self.assertGreater(box_changed.mean(), 0.8)
        self.assertFalse(changed[~inside_box].any())
        self.assertEqual(open(path, "rb").read(), before)

    def test_unwritable_folder(self):
        from orangecontrib.deepimage.errors import UnwritableFolder
        table = image_table("/", ["x.png"])
        with self.assertRaises(UnwritableFolder):
            detections_to_masks(table, [[]], [(4, 4)], ["face"],
                                "/no/such/folder")


if __name__ == "__main__":
    unittest.main()
