"""The MTCNN face detector (the optional ``mtcnn`` package, which bundles
its weights) on scikit-image's sample photos, offline; skipped without the
package."""
import unittest

import cv2
import numpy as np
import pytest
import skimage.data

pytest.importorskip("mtcnn")

from orangecontrib.deepimage.detection import ObjectDetector  # noqa: E402

from test_detection import FACE_FREE, FACE_REGION, inside, iou, rgb  # noqa

#: The cameraman's face, in profile behind his camera (read off the photo).
CAMERAMAN_FACE = (175, 75, 260, 205)


class TestMTCNN(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.detector = ObjectDetector("faces-mtcnn")

    def test_finds_the_astronauts_face(self):
        found = self.detector.detect_array(skimage.data.astronaut())
        self.assertEqual(len(found), 1)
        self.assertGreater(found[0].score, 0.9)
        # MTCNN's boxes reach down to the chin, a little lower than the
        # cascade's.
        self.assertTrue(inside(found[0].box, FACE_REGION, tolerance=5),
                        found[0].box)

    def test_finds_a_face_in_profile(self):
        # The OpenCV cascade misses this one.
        found = self.detector.detect_array(rgb(skimage.data.camera()))
        self.assertEqual(len(found), 1)
        self.assertTrue(inside(found[0].box, CAMERAMAN_FACE), found[0].box)

    def test_at_most_one_false_face_over_face_free_photos(self):
        false = {name: len(self.detector.detect_array(rgb(load())))
                 for name, load in FACE_FREE.items()}
        self.assertLessEqual(sum(false.values()), 1, false)

    def test_boxes_of_a_large_image_are_in_full_resolution(self):
        small = skimage.data.astronaut()
        expected = self.detector.detect_array(small)[0].box
        scale, offset = 3000 / 512, 700
        canvas = np.full((3000, 4000, 3), 128, np.uint8)
        canvas[:, offset:offset + 3000] = cv2.resize(
            small, (3000, 3000), interpolation=cv2.INTER_CUBIC)
        found = self.detector.detect_array(canvas)
        self.assertEqual(len(found), 1)
        target = (expected[0] * scale + offset, expected[1] * scale,
                  expected[2] * scale + offset, expected[3] * scale)
        self.assertGreater(iou(found[0].box, target), 0.7)


if __name__ == "__main__":
    unittest.main()
