"""The streaming dataset that classifier and segmentation train on.

Tiny files made in each test; the edge case each stands for is named in a
comment.
"""
import numpy as np
import pytest
from PIL import Image

from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.segdata import MaskInfo
from orangecontrib.deepimage.training import (
    StreamingDataset, fit, read_image_and_mask)


def write_images(folder, n, size=(6, 4)):
    """`n` PNG images, image i all of grey level 20 * (i + 1)."""
    paths = []
    for i in range(n):
        path = folder / f"image{i}.png"
        Image.new("RGB", size, (20 * (i + 1),) * 3).save(path)
        paths.append(str(path))
    return paths


def test_an_unreadable_image_is_skipped_with_its_reason(tmp_path):
    paths = write_images(tmp_path, 5)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")  # an image extension, text inside
    paths.insert(2, str(broken))
    labels = [0, 1, 2, 0, 1, 2]
    stream = StreamingDataset(paths, labels=labels, size=(6, 4),
                              batch_size=4)
    examples = list(stream)
    # the others only, each with its own label, none made up for the
    # broken one (no grey stand-in)
    assert len(examples) == 5
    levels = [int(pixels[0, 0, 0]) for pixels, _ in examples]
    assert levels == [20, 40, 60, 80, 100]
    assert [int(label) for _, label in examples] == [0, 1, 0, 1, 2]
    assert all(pixels.shape == (4, 6, 3) and pixels.dtype == np.float32
               for pixels, _ in examples)
    assert stream.skipped == {2: "not an image file (unknown format)"}
    assert stream.used == {0, 1, 3, 4, 5}


def test_missing_file_and_empty_path_are_skipped(tmp_path):
    paths = write_images(tmp_path, 2) + [str(tmp_path / "gone.png"), None]
    stream = StreamingDataset(paths, labels=[0, 1, 0, 1], size=(6, 4))
    assert len(list(stream)) == 2
    assert "file not found" in stream.skipped[2]
    assert "no image path" in stream.skipped[3]


def test_shuffling_is_seeded_and_new_each_epoch(tmp_path):
    paths = write_images(tmp_path, 12)

    def order(seed, epoch):
        stream = StreamingDataset(paths, labels=range(12), size=(6, 4),
                                  shuffle=True, seed=seed, batch_size=2)
        stream.epoch = epoch
        return [int(label) for _, label in stream]

    first = order(1, 0)
    assert sorted(first) == list(range(12)) and first != list(range(12))
    assert order(1, 0) == first  # the same seed and epoch: the same order
    assert order(1, 1) != first  # the next epoch: another order
    assert order(2, 0) != first


def test_masks_give_class_indices_and_bad_pairs_are_skipped(tmp_path):
    images = write_images(tmp_path, 4, size=(3, 2))
    labels = np.array([[0, 1, 1], [0, 2, 0]], np.uint8)
    masks = []
    for i, mask in enumerate([labels, labels * 0,
                              np.zeros((3, 3), np.uint8),  # wrong size
                              labels * 3]):  # values beyond the classes
        path = tmp_path / f"mask{i}.png"
        Image.fromarray(mask).save(path)
        masks.append(str(path))
    masks.append(str(tmp_path / "no-mask.png"))  # the mask is missing
    images.append(images[0])
    stream = StreamingDataset(images, masks=masks, mask=MaskInfo("class"),
                              n_classes=3)
    examples = list(stream)
    assert len(examples) == 2
    np.testing.assert_array_equal(examples[0][1], labels)
    assert examples[0][1].dtype == np.int32
    assert sorted(stream.skipped) == [2, 3, 4]
    assert "does not match image 3×2" in stream.skipped[2]
    assert "only 3 classes" in stream.skipped[3]
    assert "not found" in stream.skipped[4]


def test_instance_masks_are_learned_as_foreground(tmp_path):
    image, = write_images(tmp_path, 1, size=(3, 2))
    ids = np.array([[0, 5, 5], [0, 9, 0]], np.uint16)  # object ids
    Image.fromarray(ids).save(tmp_path / "ids.png")
    pixels, labels = read_image_and_mask(
        image, str(tmp_path / "ids.png"), MaskInfo("instance"), 2)
    assert pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(labels, [[0, 1, 1], [0, 1, 0]])


def test_examples_per_image_and_validation_repeats(tmp_path):
    paths = write_images(tmp_path, 3)

    def two_crops(pixels, label, rng):
        return [(pixels[:2, :2], label, rng.random()) for _ in range(2)]

    shapes = [((2, 2, 3), "float32"), ((), "int32"), ((), "float64")]
    stream = StreamingDataset(paths, labels=[0, 1, 2], examples=two_crops,
                              example_shapes=shapes, examples_per_image=2,
                              same_each_epoch=True, batch_size=4)
    first = [draw for *_, draw in stream]
    stream.epoch = 5
    assert [draw for *_, draw in stream] == first  # validation: the same
    assert len(first) == 6 and stream.expected_batches == 2
    batches = list(stream.tf_dataset())
    assert [len(batch[0]) for batch in batches] == [4, 2]


def test_fit_on_a_stream_without_a_readable_image_says_so(tmp_path):
    import keras
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    stream = StreamingDataset([str(broken)] * 3, labels=[0, 1, 0],
                              size=(6, 4))
    network = keras.Sequential([keras.Input((4, 6, 3)),
                                keras.layers.Flatten(),
                                keras.layers.Dense(2, activation="softmax")])
    network.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(InvalidInput, match="None of the 3 images"):
        fit(network, stream, epochs=1)


def test_fit_trains_on_a_stream_and_reports_progress(tmp_path):
    import keras
    paths = write_images(tmp_path, 6)
    paths[3] = str(tmp_path / "gone.png")
    stream = StreamingDataset(paths, labels=[0, 1] * 3, size=(6, 4),
                              shuffle=True, batch_size=2)
    network = keras.Sequential([keras.Input((4, 6, 3)),
                                keras.layers.Flatten(),
                                keras.layers.Dense(2, activation="softmax")])
    network.compile("adam", "sparse_categorical_crossentropy")
    seen = []
    from orangecontrib.deepimage.training import TrainingHooks
    history = fit(network, stream, epochs=3, early_stopping=False,
                  hooks=TrainingHooks(progress=seen.append))
    assert len(history["loss"]) == 3
    assert stream.epoch == 2 and list(stream.skipped) == [3]
    assert seen[-1] == pytest.approx(1)
    assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))
