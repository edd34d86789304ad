"""Segment Anything (orangecontrib.deepimage.sam), offline.

A tiny SAMImageSegmenter with random weights (a two-layer ViTDet on 64×64
inputs) is saved as a local preset (``save_to_preset``) and loaded from its
folder, from a web server on 127.0.0.1 and from a weights mirror; nothing
is downloaded. Random weights say nothing about the masks' quality, so the
tests check what does not depend on it: the coordinate conventions both
ways, the full-resolution boolean masks, that the prompts reach the network
as KerasHub's own ``predict`` takes them, and the messages without weights.
keras-hub is an optional dependency: without it these tests are skipped.
"""
import os
import shutil
import tempfile
import unittest
from unittest import mock

import numpy as np
import pytest
from PIL import Image

keras_hub = pytest.importorskip("keras_hub")

from Orange.data import Domain, StringVariable, Table  # noqa: E402

from orangecontrib.deepimage.detection import (  # noqa: E402
    Detection, detections_to_masks)
from orangecontrib.deepimage.errors import (  # noqa: E402
    Cancelled, InvalidInput, WeightsUnavailable)
from orangecontrib.deepimage.sam import (  # noqa: E402
    SAM_PRESETS, SegmentAnything, logits_to_mask, resized_size,
    to_input_coords)
from orangecontrib.deepimage.weights import MIRROR_ENV  # noqa: E402

from test_detection_kerashub import Server  # noqa: E402

SIDE = 64
#: A 300×200 image in a 64×64 input: 64×43 of it is the image.
WIDTH, HEIGHT = 300, 200
FX, FY = 64 / 300, 43 / 200


def tiny_sam():
    """A SAMImageSegmenter on 64×64 inputs: 8×8 patches give an 8×8
    embedding and 32×32 mask logits; about 13,000 parameters."""
    from keras_hub.layers import (
        SAMImageConverter, SAMMaskDecoder, SAMPromptEncoder)
    from keras_hub.models import (
        SAMBackbone, SAMImageSegmenter, SAMImageSegmenterPreprocessor,
        ViTDetBackbone)
    encoder = ViTDetBackbone(
        hidden_size=16, num_layers=2, intermediate_dim=32, num_heads=2,
        global_attention_layer_indices=[1], patch_size=8,
        num_output_channels=8, window_size=2, image_shape=(SIDE, SIDE, 3))
    prompt_encoder = SAMPromptEncoder(
        hidden_size=8, image_embedding_size=(8, 8),
        input_image_size=(SIDE, SIDE), mask_in_channels=16)
    mask_decoder = SAMMaskDecoder(
        num_layers=2, hidden_size=8, intermediate_dim=16, num_heads=2,
        embedding_dim=8, num_multimask_outputs=3, iou_head_depth=2,
        iou_head_hidden_dim=8)
    backbone = SAMBackbone(image_encoder=encoder,
                           prompt_encoder=prompt_encoder,
                           mask_decoder=mask_decoder)
    # As KerasHub's own SAM presets: the converter scales to 0..1 and the
    # encoder subtracts ImageNet's mean.
    preprocessor = SAMImageSegmenterPreprocessor(
        image_converter=SAMImageConverter(image_size=(SIDE, SIDE),
                                          scale=1 / 255))
    return SAMImageSegmenter(backbone=backbone, preprocessor=preprocessor)


def photo(width=WIDTH, height=HEIGHT, seed=0):
    import cv2
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 10, width // 10, 3), np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


ROOT = FOLDER = LOADED = None


def setUpModule():
    global ROOT, FOLDER, LOADED
    ROOT = tempfile.mkdtemp()
    FOLDER = os.path.join(ROOT, "tiny-sam")
    tiny_sam().save_to_preset(FOLDER)
    LOADED = SegmentAnything(preset_path=FOLDER)
    LOADED.load()


def tearDownModule():
    shutil.rmtree(ROOT, ignore_errors=True)


class TestCoordinates(unittest.TestCase):
    """The two mappings, with values worked out by hand."""

    def test_resized_size_rounds_as_segment_anything(self):
        self.assertEqual(resized_size(300, 200, 64), (64, 43))  # 42.67
        self.assertEqual(resized_size(200, 300, 64), (43, 64))
        self.assertEqual(resized_size(4000, 3000, 1024), (1024, 768))
        self.assertEqual(resized_size(64, 64, 64), (64, 64))

    def test_image_coordinates_to_input_coordinates(self):
        np.testing.assert_allclose(
            to_input_coords([[150, 100], [300, 200], [0, 0]], 300, 200, 64),
            [[32, 21.5], [64, 43], [0, 0]])
        # x by the ratio of widths, y by that of heights (43 / 200).
        np.testing.assert_allclose(
            to_input_coords([[[30, 20], [270, 180]]], 300, 200, 64),
            [[[6.4, 4.3], [57.6, 38.7]]])

    def test_logits_map_back_to_the_image_and_drop_the_padding(self):
        # Logits over the whole 64×64 input: the object is input x < 32,
        # y < 20; rows 43 and below are padding (positive here on purpose).
        logits = -np.ones((64, 64), np.float32)
        logits[:20, :32] = 1
        logits[43:, :] = 1
        mask = logits_to_mask(logits, 300, 200, 64)
        self.assertEqual(mask.shape, (200, 300))
        self.assertEqual(mask.dtype, bool)
        # Input x 32 is image x 150; input y 20 is image y 20 / 43 * 200.
        self.assertTrue(mask[:90, :145].all())
        self.assertFalse(mask[97:].any())  # the padding never shows
        self.assertFalse(mask[:, 155:].any())
        # Low-resolution logits (a quarter of the input) land alike.
        logits[43:] = -1
        small = logits[1::2, 1::2]
        self.assertGreater((logits_to_mask(small, 300, 200, 64) == mask)
                           .mean(), 0.98)


class TestSegmentAnything(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sam = LOADED

    def test_loads_the_preset_folder(self):
        self.assertEqual(self.sam.input_size, SIDE)
        self.assertIsInstance(self.sam.model,
                              keras_hub.models.SAMImageSegmenter)
        self.assertEqual(self.sam.availability(), "loaded")

    def test_masks_are_boolean_at_full_resolution(self):
        for width, height in ((WIDTH, HEIGHT), (HEIGHT, WIDTH)):
            image = photo(width, height)
            masks = [self.sam.mask_from_box(image, (30, 20, 150, 120)),
                     self.sam.mask_from_points(image, [(60, 50), (10, 10)],
                                               [1, 0]),
                     *self.sam.masks_for_boxes(
                         image, [(30, 20, 150, 120), (0, 0, width, height)])]
            for mask in masks:
                self.assertEqual(mask.shape, (height, width))
                self.assertEqual(mask.dtype, bool)
        # A grey image is segmented as its RGB copy.
        grey = photo()[..., 0]
        np.testing.assert_equal(
            self.sam.mask_from_box(grey, (30, 20, 150, 120)),
            self.sam.mask_from_box(np.stack([grey] * 3, -1),
                                   (30, 20, 150, 120)))

    def test_model_input_is_resized_and_padded_with_the_mean(self):
        image = photo()
        canvas = self.sam.model_input(image)
        self.assertEqual(canvas.shape, (SIDE, SIDE, 3))
        # Below the image's 43 rows, the colour the encoder turns into 0.
        np.testing.assert_allclose(canvas[43:], np.broadcast_to(
            [123.675, 116.28, 103.53], (21, 64, 3)), rtol=1e-6)
        import cv2
        np.testing.assert_equal(canvas[:43], cv2.resize(
            image, (64, 43), interpolation=cv2.INTER_AREA))

    def test_prompts_reach_the_network_in_input_coordinates(self):
        image = photo()
        with mock.patch.object(self.sam, "_decode",
                               wraps=self.sam._decode) as decode:
            self.sam.mask_from_points(image, [(150, 100)], [1])
            self.sam.mask_from_box(image, (30, 20, 270, 180))
            self.sam.masks_for_boxes(image, [(30, 20, 270, 180),
                                             (0, 0, 300, 200)])
        (_, points, labels, boxes), _ = decode.call_args_list[0]
        # Without a box, a padding point labelled -1 follows the points.
        np.testing.assert_allclose(points, [[[32, 21.5], [0, 0]]])
        np.testing.assert_equal(labels, [[1, -1]])
        self.assertEqual(boxes.shape, (1, 0, 2, 2))
        (_, points, labels, boxes), _ = decode.call_args_list[1]
        self.assertEqual(points.shape, (1, 0, 2))
        self.assertEqual(labels.shape, (1, 0))
        np.testing.assert_allclose(boxes, [[[[6.4, 4.3], [57.6, 38.7]]]])
        (_, points, labels, boxes), _ = decode.call_args_list[2]
        np.testing.assert_allclose(boxes, [[[[6.4, 4.3], [57.6, 38.7]]],
                                           [[[0, 0], [64, 43]]]])

    def test_the_prompt_decoder_gives_what_keras_hub_predict_gives(self):
        # The image is encoded once and prompts go through the decoder
        # alone: the same logits as the whole model's predict.
        image = photo(seed=4)
        canvas = self.sam.model_input(image)[None]
        embedding = self.sam.image_embedding(image)
        points = np.array([[[32, 21.5], [10, 5]]], np.float32)
        labels = np.array([[1, 0]], np.float32)
        boxes = np.array([[[[6.4, 4.3], [57.6, 38.7]]]], np.float32)
        expected = self.sam.model.predict(
            {"images": canvas, "points": points, "labels": labels,
             "boxes": boxes}, verbose=0)
        logits, scores = self.sam._decode(embedding, points, labels, boxes)
        np.testing.assert_allclose(logits, expected["masks"], atol=1e-4)
        np.testing.assert_allclose(scores, expected["iou_pred"], atol=1e-4)
        self.assertEqual(logits.shape, (1, 4, 32, 32))

    def test_the_chosen_mask_maps_back(self):
        # Four candidate masks over the input; the box takes the single-mask
        # output (0), one point the best-scoring of the other three (2).
        logits = -np.ones((1, 4, 64, 64), np.float32)
        logits[0, 0, :20, :32] = 1      # image x < 150, y < 93
        logits[0, 2, 20:43, 32:] = 1    # image x >= 150, y >= 93
        scores = np.array([[0.9, 0.1, 0.8, 0.3]], np.float32)
        image = photo()
        with mock.patch.object(self.sam, "_decode",
                               return_value=(logits, scores)):
            by_box = self.sam.mask_from_box(image, (0, 0, 150, 93))
            by_point, score = self.sam.segment(image, [(200, 150)])
        self.assertTrue(by_box[:90, :145].all())
        self.assertFalse(by_box[97:].any() or by_box[:, 155:].any())
        self.assertTrue(by_point[97:, 155:].all())
        self.assertFalse(by_point[:90].any() or by_point[:, :145].any())
        self.assertAlmostEqual(score, 0.8, places=6)

    def test_an_image_is_encoded_once(self):
        image = photo(seed=7)
        first = self.sam.image_embedding(image)
        self.assertIs(self.sam.image_embedding(image.copy()), first)
        other = self.sam.image_embedding(photo(seed=8))
        self.assertFalse(np.array_equal(other, first))

    def test_bad_prompts(self):
        image = photo()
        with self.assertRaises(InvalidInput):
            self.sam.mask_from_points(image, [])
        with self.assertRaises(InvalidInput):
            self.sam.mask_from_points(image, [(1, 2)], [1, 0])
        with self.assertRaises(InvalidInput):
            self.sam.mask_from_points(image, [(1, 2)], [2])
        with self.assertRaisesRegex(InvalidInput, "empty"):
            self.sam.mask_from_box(image, (400, 10, 500, 20))
        with self.assertRaises(InvalidInput):
            self.sam.segment(image)

    def test_cancel_before_encoding(self):
        state = mock.Mock()
        state.is_interruption_requested.return_value = True
        with self.assertRaises(Cancelled):
            self.sam.mask_from_box(photo(seed=9), (0, 0, 10, 10),
                                   state=state)

    def test_detections_to_masks_by_segment_anything(self):
        folder, out = tempfile.mkdtemp(), tempfile.mkdtemp()
        image = photo(seed=2)
        Image.fromarray(image).save(os.path.join(folder, "a.png"))
        var = StringVariable("image")
        var.attributes.update({"type": "image", "origin": folder})
        table = Table.from_list(Domain([], metas=[var]), [["a.png"]])
        box = (30.0, 20.0, 200.0, 150.0)
        own = np.zeros((HEIGHT, WIDTH), bool)
        own[180:, 250:] = True
        results = [[Detection("cat", 0.9, box),
                    Detection("dog", 0.8, (250, 180, 300, 200), own)]]
        masked = detections_to_masks(table, results, [(WIDTH, HEIGHT)],
                                     ["cat", "dog"], out, sam=self.sam)
        labels = np.asarray(Image.open(os.path.join(
            out, masked.metas[0, -1])))
        expected = np.zeros((HEIGHT, WIDTH), bool)
        expected[20:150, 30:200] = \
            self.sam.mask_from_box(image, box)[20:150, 30:200]
        # Random weights still give a shape, not the whole box or nothing.
        self.assertTrue(0 < expected[20:150, 30:200].mean() < 1)
        np.testing.assert_equal(labels == 1, expected)
        np.testing.assert_equal(labels == 2, own)  # its own mask is kept
        shutil.rmtree(folder)
        shutil.rmtree(out)

    def test_detections_to_masks_without_weights_writes_nothing(self):
        out = tempfile.mkdtemp()
        var = StringVariable("image")
        var.attributes.update({"type": "image", "origin": out})
        table = Table.from_list(Domain([], metas=[var]), [["a.png"]])
        missing = SegmentAnything(preset_path=os.path.join(ROOT, "none"))
        with self.assertRaisesRegex(WeightsUnavailable, "sam_base_sa1b"):
            detections_to_masks(table, [[Detection("cat", 1, (0, 0, 2, 2))]],
                                [(4, 4)], ["cat"], out, sam=missing)
        self.assertEqual(os.listdir(out), [])
        shutil.rmtree(out)


class TestLoading(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.local = LOADED

    def from_preset(self):
        """KerasHub's loader, recording the folder and giving the model
        already loaded (where the test is about finding the preset)."""
        return mock.patch.object(keras_hub.models.SAMImageSegmenter,
                                 "from_preset",
                                 return_value=self.local.model)

    def test_from_a_web_server_with_progress(self):
        server = Server(ROOT)
        seen = []
        try:
            sam = SegmentAnything(preset_path=f"{server.url}/tiny-sam")
            sam.load(progress=lambda done, total: seen.append((done, total)))
        finally:
            server.close()
        self.assertIsNot(sam.model, self.local.model)
        self.assertEqual(sam.input_size, SIDE)
        for ours, theirs in zip(sam.model.get_weights(),
                                self.local.model.get_weights()):
            np.testing.assert_equal(ours, theirs)
        size = sum(os.path.getsize(os.path.join(FOLDER, name))
                   for name in os.listdir(FOLDER))
        self.assertEqual(seen[-1], (size, size))
        self.assertEqual([d for d, _ in seen], sorted(d for d, _ in seen))

    def test_a_cancelled_download_leaves_nothing_half_done(self):
        served = tempfile.mkdtemp()
        shutil.copytree(FOLDER, os.path.join(served, "cancelled"))
        server = Server(served)
        presets = os.path.join(os.environ["KERAS_HOME"], "deepimage-presets")
        try:
            url = f"{server.url}/cancelled"

            def cancel(done, total):
                raise Cancelled()
            with self.assertRaises(Cancelled):
                SegmentAnything(preset_path=url).load(progress=cancel)
            self.assertFalse([name for name in os.listdir(presets)
                              if name.startswith(".preset-")])
            with self.from_preset() as load:
                SegmentAnything(preset_path=url).load()  # fetched afresh
        finally:
            server.close()
            shutil.rmtree(served)
        folder = load.call_args.args[0]
        self.assertEqual(os.path.dirname(folder), presets)
        self.assertEqual(sorted(os.listdir(folder)),
                         sorted(os.listdir(FOLDER) + [".complete"]))

    def test_from_the_mirror_folder_and_server(self):
        mirror = tempfile.mkdtemp()
        shutil.copytree(FOLDER, os.path.join(mirror, "sam_base_sa1b"))
        try:
            with mock.patch.dict(os.environ, {MIRROR_ENV: mirror}), \
                    self.from_preset() as load:
                SegmentAnything().load()
            load.assert_called_once_with(os.path.join(mirror,
                                                      "sam_base_sa1b"))
            server = Server(mirror)
            try:
                with self.from_preset() as load:
                    SegmentAnything(mirror=server.url).load()
            finally:
                server.close()
            folder = load.call_args.args[0]
            self.assertTrue(os.path.isfile(os.path.join(folder,
                                                        "model.weights.h5")))
            self.assertTrue(os.path.basename(folder).startswith(
                "sam_base_sa1b-"))
        finally:
            shutil.rmtree(mirror)

    def test_without_weights_the_message_names_preset_size_and_ways(self):
        spec = SAM_PRESETS["sam_base_sa1b"]
        sam = SegmentAnything(preset_path=os.path.join(ROOT, "none"))
        self.assertEqual(sam.size_mb, spec.size_mb)
        with self.assertRaises(WeightsUnavailable) as ctx:
            sam.load()
        text = str(ctx.exception)
        for part in ("sam_base_sa1b", "about 375 MB", "save_to_preset",
                     "SAMImageSegmenter", MIRROR_ENV, "pip install keras-hub"):
            self.assertIn(part, text)

    def test_a_mirror_without_it_and_no_network(self):
        # The mirror lacks the preset, KerasHub's download fails: both
        # reasons are said; nothing stands in for the model.
        mirror = tempfile.mkdtemp()
        try:
            with mock.patch.object(keras_hub.models.SAMImageSegmenter,
                                   "from_preset",
                                   side_effect=OSError("no network")):
                with self.assertRaises(WeightsUnavailable) as ctx:
                    SegmentAnything("sam_large_sa1b", mirror=mirror).load()
        finally:
            shutil.rmtree(mirror)
        text = str(ctx.exception)
        self.assertIn("not on the mirror", text)
        self.assertIn("no network", text)
        self.assertIn("sam_large_sa1b (about 1249 MB)", text)

    def test_unknown_preset(self):
        with self.assertRaisesRegex(InvalidInput, "sam_base_sa1b"):
            SegmentAnything("sam_tiny")


if __name__ == "__main__":
    unittest.main()
