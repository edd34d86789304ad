"""The KerasHub path of orangecontrib.deepimage.detection, offline.

A tiny RetinaNet with random weights is saved as a local preset
(``save_to_preset``) and loaded from its folder and from a web server on
127.0.0.1 that the tests start and stop; nothing is downloaded. keras-hub
is an optional dependency: without it these tests are skipped.
"""
import functools
import http.server
import os
import shutil
import tempfile
import threading
import unittest

import cv2
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from orangecontrib.deepimage.detection import (  # noqa: E402
    DETECTORS, DetectorSpec, ObjectDetector, boxes_to_labels, preset_folder)
from orangecontrib.deepimage.errors import WeightsUnavailable  # noqa: E402

CLASSES = ("ant", "bee", "cat")
INPUT = 64

SPEC = DetectorSpec(
    key="tiny-retinanet", name="Tiny RetinaNet", description="A test.",
    classes=CLASSES, kind="keras-hub", input="colour, 64×64",
    max_side=10_000, weights="download", source="tiny_retinanet_test",
    size_mb=1.5, licence="none", options={"task": "RetinaNetObjectDetector"})


def tiny_retinanet():
    """A RetinaNet on a three-stage ResNet, random weights, 64×64 input.

    With a prior of 0.5 the random classification head gives scores near
    0.5, so there are detections to look at.
    """
    from keras_hub.layers import RetinaNetImageConverter
    from keras_hub.models import (
        ResNetBackbone, RetinaNetBackbone, RetinaNetObjectDetector,
        RetinaNetObjectDetectorPreprocessor)
    encoder = ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 16, 16], stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    backbone = RetinaNetBackbone(image_encoder=encoder, min_level=3,
                                 max_level=4, use_p5=False,
                                 image_shape=(None, None, 3))
    preprocessor = RetinaNetObjectDetectorPreprocessor(
        image_converter=RetinaNetImageConverter(image_size=(INPUT, INPUT),
                                                scale=1 / 255))
    return RetinaNetObjectDetector(
        backbone=backbone, num_classes=len(CLASSES),
        preprocessor=preprocessor, pre_logits_num_conv_layers=1,
        classification_head_prior_probability=0.5)


SEGMENTER_SPEC = DetectorSpec(
    key="tiny-deeplab", name="Tiny DeepLabV3+", description="A test.",
    classes=CLASSES, kind="keras-hub", input="colour, 64×64",
    max_side=10_000, weights="download", source="tiny_deeplab_test",
    size_mb=1.0, licence="none",
    options={"task": "DeepLabV3ImageSegmenter", "segmenter": True})


def tiny_deeplab():
    """A DeepLabV3+ on the same small ResNet: background and 3 classes."""
    from keras_hub.layers import DeepLabV3ImageConverter
    from keras_hub.models import (
        DeepLabV3Backbone, DeepLabV3ImageSegmenter,
        DeepLabV3ImageSegmenterPreprocessor, ResNetBackbone)
    encoder = ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 16, 16], stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    backbone = DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P4",
        upsampling_size=4, dilation_rates=[2, 4], low_level_feature_key="P2",
        projection_filters=8, image_shape=(None, None, 3))
    preprocessor = DeepLabV3ImageSegmenterPreprocessor(
        image_converter=DeepLabV3ImageConverter(image_size=(INPUT, INPUT),
                                                scale=1 / 255))
    return DeepLabV3ImageSegmenter(backbone=backbone,
                                   num_classes=len(CLASSES) + 1,
                                   preprocessor=preprocessor)


def photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


class Server:
    """A web server for `folder` on 127.0.0.1, in a thread."""

    def __init__(self, folder):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                    directory=folder)
        handler.log_message = lambda *args: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class TestKerasHub(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        cls.folder = os.path.join(cls.root, "tiny")
        tiny_retinanet().save_to_preset(cls.folder)
        cls.detector = ObjectDetector(SPEC, min_score=0.0, overlap=1.0,
                                      preset=cls.folder)
        cls.detector.load()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_loads_from_a_folder_with_its_classes_and_boxes(self):
        found = self.detector.detect_array(photo(INPUT, INPUT))
        self.assertTrue(found)
        for det in found:
            self.assertIn(det.label, CLASSES)
            self.assertTrue(0 <= det.score <= 1)
            x0, y0, x1, y1 = det.box
            self.assertTrue(0 <= x0 <= x1 <= INPUT and 0 <= y0 <= y1 <= INPUT)

    def test_boxes_map_back_to_full_resolution(self):
        # A 64×48 photo and the same photo three times larger become the
        # same padded 64×64 input, so the boxes must be three times larger.
        small = photo(INPUT, 48)
        large = cv2.resize(small, (3 * INPUT, 3 * 48),
                           interpolation=cv2.INTER_NEAREST)
        found_small = self.detector.detect_array(small)
        found_large = self.detector.detect_array(large)
        self.assertTrue(found_small)
        self.assertEqual(len(found_small), len(found_large))
        for a, b in zip(found_small, found_large):
            self.assertEqual(a.label, b.label)
            self.assertAlmostEqual(a.score, b.score, places=4)
            np.testing.assert_allclose(np.array(b.box), 3 * np.array(a.box),
                                       atol=0.05)
        # Boxes are clipped to the photo, not to the padding below it.
        self.assertTrue(all(det.box[3] <= 48 for det in found_small))

    def test_loads_from_a_web_server(self):
        server = Server(self.root)
        try:
            detector = ObjectDetector(SPEC, min_score=0.0, overlap=1.0,
                                      preset=f"{server.url}/tiny")
            detector.load()
        finally:
            server.close()
        image = photo(INPUT, INPUT, seed=3)
        self.assertEqual(detector.detect_array(image),
                         self.detector.detect_array(image))
        # Fetched once: the cached copy works with the server gone.
        again = ObjectDetector(SPEC, preset=f"{server.url}/tiny")
        again.load()

    def test_a_server_without_the_preset(self):
        server = Server(self.root)
        try:
            with self.assertRaises(WeightsUnavailable) as ctx:
                preset_folder(SPEC, f"{server.url}/missing")
        finally:
            server.close()
        self.assertIn("HTTP 404", str(ctx.exception))

    def test_without_weights_the_message_says_how_to_provide_them(self):
        spec = DETECTORS["coco-retinanet"]
        with self.assertRaises(WeightsUnavailable) as ctx:
            ObjectDetector("coco-retinanet",
                           preset=os.path.join(self.root, "none")).load()
        text = str(ctx.exception)
        self.assertIn(spec.source, text)
        self.assertIn(f"about {spec.size_mb:.0f} MB", text)
        self.assertIn("save_to_preset", text)
        self.assertIn("pip install keras-hub", text)


class TestKerasHubSegmenter(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        cls.folder = os.path.join(cls.root, "deeplab")
        tiny_deeplab().save_to_preset(cls.folder)
        cls.detector = ObjectDetector(SEGMENTER_SPEC, min_score=0.0,
                                      overlap=1.0, preset=cls.folder)
        cls.detector.load()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_regions_have_masks_inside_their_boxes(self):
        image = photo(INPUT, 48, seed=5)
        found = self.detector.detect_array(image)
        self.assertTrue(found)
        covered = np.zeros((48, INPUT), bool)
        for det in found:
            self.assertIn(det.label, CLASSES)
            self.assertEqual(det.mask.shape, (48, INPUT))
            self.assertEqual(det.mask.dtype, bool)
            ys, xs = np.nonzero(det.mask)
            x0, y0, x1, y1 = det.box
            self.assertEqual((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1),
                             (x0, y0, x1, y1))
            self.assertFalse((covered & det.mask).any())  # regions apart
            covered |= det.mask
        # The label image of the masks is the masks, not their boxes.
        labels = boxes_to_labels(found, INPUT, 48, list(CLASSES))
        np.testing.assert_equal(labels > 0, covered)

    def test_masks_and_boxes_map_back_to_full_resolution(self):
        small = photo(INPUT, 48, seed=6)
        large = cv2.resize(small, (3 * INPUT, 3 * 48),
                           interpolation=cv2.INTER_NEAREST)
        found_small = self.detector.detect_array(small)
        found_large = self.detector.detect_array(large)
        self.assertTrue(found_small)
        self.assertEqual(len(found_small), len(found_large))
        key = lambda det: (det.label, det.box)  # noqa: E731
        for a, b in zip(sorted(found_small, key=key),
                        sorted(found_large, key=key)):
            self.assertEqual(a.label, b.label)
            np.testing.assert_allclose(np.array(b.box), 3 * np.array(a.box),
                                       atol=0.05)
            self.assertEqual(b.mask.shape, (3 * 48, 3 * INPUT))
            np.testing.assert_equal(
                b.mask, np.kron(a.mask, np.ones((3, 3), bool)))

    def test_masks_of_a_reduced_image_are_kept_small(self):
        small = photo(INPUT, 48, seed=7)
        large = cv2.resize(small, (3 * INPUT, 3 * 48),
                           interpolation=cv2.INTER_NEAREST)
        reducing = ObjectDetector(SEGMENTER_SPEC, min_score=0.0, overlap=1.0,
                                  max_side=INPUT, preset=self.folder)
        found = reducing.detect_array(large)
        expected = self.detector.detect_array(small)
        self.assertEqual(len(found), len(expected))
        self.assertTrue(found)
        key = lambda det: (det.label, det.box)  # noqa: E731
        for a, b in zip(sorted(expected, key=key), sorted(found, key=key)):
            self.assertEqual(b.mask.shape, (48, INPUT))
            np.testing.assert_equal(
                b.full_mask(3 * INPUT, 3 * 48),
                np.kron(a.mask, np.ones((3, 3), bool)))
            np.testing.assert_allclose(np.array(b.box), 3 * np.array(a.box),
                                       atol=0.05)


if __name__ == "__main__":
    unittest.main()
