import os
import pickle
import random
import resource
import shutil
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from Orange.data import Domain, StringVariable, Table

from orangecontrib.deepimage import SegmentationLearner
from orangecontrib.deepimage import segmentation
from orangecontrib.deepimage.images import load_image, paths_of
from orangecontrib.deepimage.segmentation import (
    build_encoder_unet, build_unet, iou_and_dice, predict_tiled,
    segmentation_loss)
from orangecontrib.deepimage.training import TrainingHooks


def blobs(rng, size=64, n_blobs=4):
    """Bright discs on a dark, noisy background, and their class mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(n_blobs):
        cy, cx = rng.integers(8, size - 8, 2)
        radius = rng.integers(4, 9)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = 1
    image = rng.normal(40, 12, (size, size))
    image[mask == 1] = rng.normal(200, 15, (mask == 1).sum())
    image = np.clip(image, 0, 255).astype(np.uint8)
    return np.stack([image] * 3, axis=-1), mask


def pairs_table(folder, n=12, size=64, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "images", exist_ok=True)
    os.makedirs(folder / "masks", exist_ok=True)
    names = []
    for i in range(n):
        image, mask = blobs(rng, size)
        Image.fromarray(image).save(folder / "images" / f"cell{i:02d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"cell{i:02d}.png")
        names.append(f"cell{i:02d}.png")
    image_var = StringVariable("image")
    image_var.attributes.update(type="image", origin=str(folder / "images"))
    mask_var = StringVariable("mask")
    mask_var.attributes.update(type="image", origin=str(folder / "masks"),
                               mask="class", classes="background,cell")
    metas = np.array([[name, name] for name in names], dtype=object)
    return Table.from_numpy(Domain([], metas=[image_var, mask_var]),
                            np.empty((n, 0)), metas=metas)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return pairs_table(tmp_path_factory.mktemp("cells"))


@pytest.fixture(scope="module")
def cell_model(cells):
    learner = SegmentationLearner(depth=2, base_filters=8, tile_size=32,
                                  epochs=15, batch_size=8, validation=0.25,
                                  tiles_per_image=4, learning_rate=3e-3)
    return learner(cells)


def test_unet_learns_clearly_visible_objects(cell_model):
    metrics = cell_model.validation_metrics
    assert metrics["mean_iou"] > 0.85
    assert metrics["iou"].shape == (2,) and metrics["dice"].shape == (2,)
    assert metrics["dice"][1] >= metrics["iou"][1]
    assert "val_iou" in cell_model.history


def test_segment_returns_label_images_and_none(tmp_path, cells, cell_model):
    folder = cells.domain["image"].attributes["origin"]
    broken = tmp_path / "broken.png"
    broken.write_text("no image here")
    paths = [os.path.join(folder, "cell00.png"), str(broken)]
    labels = cell_model.segment(paths)
    assert labels[0].shape == (64, 64) and labels[1] is None
    assert set(np.unique(labels[0])) <= {0, 1}


def test_predict_masks_writes_new_files_only(tmp_path, cells, cell_model):
    out = tmp_path / "predicted"
    out.mkdir()
    (out / "cell00-mask.png").write_bytes(b"the user's file")
    table = cells[:2]
    result = cell_model.predict_masks(table, str(out))
    assert (out / "cell00-mask.png").read_bytes() == b"the user's file"
    masks = result.get_column(result.domain.metas[-1])
    assert masks[0] == "cell00-mask-1.png"
    variable = result.domain.metas[-1]
    assert variable.attributes["mask"] == "class"
    assert variable.attributes["classes"] == "background,cell"
    assert np.asarray(Image.open(out / masks[1])).shape == (64, 64)
    with pytest.raises(OSError, match="does not exist"):
        cell_model.predict_masks(table, str(tmp_path / "missing"))


def test_pickled_model_segments_identically(cells, cell_model):
    restored = pickle.loads(pickle.dumps(cell_model))
    folder = cells.domain["image"].attributes["origin"]
    path = os.path.join(folder, "cell03.png")
    np.testing.assert_array_equal(restored.segment([path])[0],
                                  cell_model.segment([path])[0])


def test_tiled_prediction_equals_whole_image_away_from_borders():
    network = build_unet(2, depth=2, base_filters=4)
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (192, 256, 3)).astype(np.float32)
    whole = np.argmax(network.predict(image[None], verbose=0)[0], axis=-1)
    probabilities = network(image[None], training=False).numpy()[0]
    # This U-Net sees about 20 pixels around each pixel; a 24-pixel margin
    # (overlap 48) gives every kept pixel its full context.
    tiled = predict_tiled(lambda b: network(b, training=False).numpy(),
                          image, tile=64, overlap=48, n_classes=2)
    margin = 24
    np.testing.assert_array_equal(tiled[margin:-margin, margin:-margin],
                                  whole[margin:-margin, margin:-margin])
    assert np.mean(tiled == whole) > 0.99
    assert probabilities.shape == (192, 256, 2)


def test_tiled_prediction_of_a_large_photo_has_bounded_memory():
    network = build_unet(2, depth=2, base_filters=4)
    image = np.zeros((3000, 4000, 3), np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    labels = predict_tiled(lambda b: network(b, training=False).numpy(),
                           image, tile=512, overlap=64, n_classes=2,
                           batch_size=2)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                - before) / 1024
    assert labels.shape == (3000, 4000) and labels.dtype == np.uint8
    # Whole-image probabilities alone would take 96 MB, and the U-Net's
    # activations for the whole image several GB.
    assert grown_mb < 600


def test_small_image_is_padded_to_a_tile():
    labels = predict_tiled(lambda b: np.stack(
        [np.zeros(b.shape[:3]), np.ones(b.shape[:3])], axis=-1),
        np.zeros((10, 7, 3)), tile=32, overlap=8, n_classes=2)
    assert labels.shape == (10, 7) and (labels == 1).all()


def test_losses_rank_a_good_prediction_better():
    truth = np.zeros((1, 8, 8), np.int32)
    truth[0, 2:6, 2:6] = 1
    good = np.stack([1.0 - truth, truth], axis=-1).astype(np.float32) \
        * 0.9 + 0.05
    bad = good[..., ::-1].copy()
    for name in ("crossentropy", "dice", "focal", "dice+crossentropy"):
        loss = segmentation_loss(name, 2)
        assert float(loss(truth, good)) < float(loss(truth, bad)), name
    with pytest.raises(ValueError, match="loss="):
        segmentation_loss("hinge", 2)


def test_iou_and_dice_by_hand():
    truth = np.array([[0, 0, 1, 1]])
    predicted = np.array([[0, 1, 1, 1]])
    scores = iou_and_dice(truth, predicted, 3)
    np.testing.assert_allclose(scores["iou"][:2], [1 / 2, 2 / 3])
    np.testing.assert_allclose(scores["dice"][:2], [2 / 3, 4 / 5])
    assert np.isnan(scores["iou"][2])  # class 2 appears nowhere


def test_resunet_and_squeezenet_encoder_train(cells):
    epochs = []
    hooks = TrainingHooks(on_epoch_end=lambda e, logs: epochs.append(logs))
    model = SegmentationLearner(architecture="resunet", depth=2,
                                base_filters=4, tile_size=32, epochs=2,
                                tiles_per_image=1, hooks=hooks)(cells)
    assert len(epochs) == 2 and "iou" in epochs[0]
    assert model.architecture == "resunet"

    network = build_encoder_unet(2, "squeezenet")
    assert network.output_shape == (None, 227, 227, 2)
    assert not network.get_layer("encoder").trainable


def test_same_seed_same_model_and_no_global_random_state(cells):
    numpy_state, python_state = np.random.get_state(), random.getstate()

    def fit(seed):
        return SegmentationLearner(depth=2, base_filters=4, tile_size=32,
                                   epochs=2, batch_size=4, tiles_per_image=1,
                                   random_state=seed)(cells)
    first, second, other = fit(3), fit(3), fit(4)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert np.random.get_state()[2] == numpy_state[2]
    assert random.getstate() == python_state
    image = np.asarray(load_image(paths_of(cells)[0]), dtype=np.uint8)
    np.testing.assert_allclose(first.predict_network(image[None]),
                               second.predict_network(image[None]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first.history["loss"],
                               second.history["loss"], rtol=1e-5)
    assert not np.allclose(first.predict_network(image[None]),
                           other.predict_network(image[None]))


def test_learner_messages(cells):
    with pytest.raises(ValueError, match="architecture="):
        SegmentationLearner(architecture="segnet")
    with pytest.raises(ValueError, match="multiple of"):
        SegmentationLearner(tile_size=100, depth=4)
    images_only = cells.transform(Domain([], metas=cells.domain.metas[:1]))
    with pytest.raises(ValueError, match="mask column"):
        SegmentationLearner()(images_only)


def test_export_takes_raw_pixels_and_matches(tmp_path, cells, cell_model):
    import keras
    import tensorflow as tf
    from orangecontrib.deepimage.export import load_export_metadata
    folder = cells.domain["image"].attributes["origin"]
    tile = np.asarray(Image.open(os.path.join(folder, "cell01.png"))
                      .convert("RGB"), np.float32)[None, :32, :32]
    expected = cell_model.network(tile, training=False).numpy()

    path = cell_model.export(str(tmp_path / "cells"), "keras")
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(tile).numpy(), expected, atol=1e-4)
    metadata = load_export_metadata(path, "keras")
    assert metadata["class_names"] == ["background", "cell"]
    assert "per-pixel" in metadata["output"]

    saved = cell_model.export(str(tmp_path / "cells_saved"), "savedmodel")
    serve = tf.saved_model.load(saved).signatures["serving_default"]
    np.testing.assert_allclose(
        serve(pixels=tf.constant(tile))["probabilities"].numpy(), expected,
        atol=1e-4)


def test_unreadable_pairs_are_skipped_with_their_reasons(tmp_path):
    table = pairs_table(tmp_path, n=4, size=32)
    images, masks = tmp_path / "images", tmp_path / "masks"
    (images / "broken.png").write_text("not an image")  # the image is text
    shutil.copy(masks / "cell00.png", masks / "broken.png")
    rows = [[name, name] for name in table.get_column("image")] + [
        ["broken.png", "broken.png"],
        ["cell01.png", "missing.png"],  # the mask file is gone
        ["cell02.png", ""]]  # no mask in this row
    table = Table.from_numpy(table.domain, np.empty((len(rows), 0)),
                             metas=np.array(rows, dtype=object))
    learner = SegmentationLearner(depth=2, base_filters=4, tile_size=32,
                                  epochs=2, tiles_per_image=1, validation=0,
                                  early_stopping=False)
    with mock.patch.object(segmentation, "_random_tile",
                           wraps=segmentation._random_tile) as tiles:
        model = learner(table)
    # trained on the four good pairs only, in each of the two epochs, and
    # one pass over them for the batch normalisation statistics
    assert tiles.call_count == 4 * 2 + 4
    assert sorted(model.skipped) == [4, 5, 6]
    assert "not an image file" in model.skipped[4]
    assert "not found" in model.skipped[5]
    assert model.skipped[6] == "no mask in this row"

    pairs = [(str(images / "cell00.png"), str(masks / "cell00.png")),
             (str(images / "broken.png"), str(masks / "broken.png"))]
    scores = model.evaluate(pairs)
    assert list(scores["skipped"]) == [1]
    assert scores["iou"].shape == (2,)


def test_batch_norm_statistics_are_recalibrated_after_training():
    import keras
    pixels = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(2, 1, name="conv")(pixels)
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    out = frozen(keras.layers.BatchNormalization(momentum=0.9,
                                                 name="bn")(conv))
    network = keras.Model(pixels, out)
    rng = np.random.default_rng(0)
    examples = [(rng.uniform(0, 255, (8, 8, 3)).astype("float32"),
                 np.zeros((8, 8), np.int32)) for _ in range(12)]
    frozen_before = np.array(network.get_layer("frozen").moving_mean)

    assert segmentation.recalibrate_batch_norm(network, examples, 4) == 3

    features = np.array(network.get_layer("conv")(
        np.stack([image for image, _ in examples])))
    bn = network.get_layer("bn")
    # The mean over all the tiles (equal batches), not a momentum's
    # mixture with the statistics from before.
    np.testing.assert_allclose(bn.moving_mean, features.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-4)
    variances = [features[i:i + 4].var(axis=(0, 1, 2))
                 for i in range(0, 12, 4)]
    np.testing.assert_allclose(bn.moving_variance, np.mean(variances, 0),
                               rtol=1e-3)
    assert bn.momentum == 0.9
    np.testing.assert_array_equal(network.get_layer("frozen").moving_mean,
                                  frozen_before)


def test_learner_recalibrates_on_unaugmented_training_tiles(cells):
    seen = []

    def recording(network, examples, batch_size):
        seen.extend(examples)
        return 0

    learner = SegmentationLearner(depth=2, base_filters=4, tile_size=32,
                                  epochs=1, batch_size=4, validation=0.25,
                                  tiles_per_image=2, augment=True)
    with mock.patch.object(segmentation, "recalibrate_batch_norm",
                           recording):
        learner(cells)
    # 9 of the 12 images train, 2 tiles each.
    assert len(seen) == 18
    # Not augmented: no brightness or contrast change, so the pixels are
    # still whole numbers (augmented ones are not).
    for pixels, _ in seen:
        assert pixels.shape == (32, 32, 3)
        assert np.array_equal(pixels, np.round(pixels))
