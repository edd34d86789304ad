import errno
import os
from unittest import mock

import numpy as np
import pytest

from orangecontrib.deepimage import ImageClassifierLearner
from orangecontrib.deepimage.errors import UnwritableFolder
from orangecontrib.deepimage.export import export_model, load_export_metadata
from orangecontrib.deepimage.images import load_image_array

from imagedata import shapes_table


@pytest.fixture(scope="module")
def model_and_pixels(tmp_path_factory):
    data = shapes_table(tmp_path_factory.mktemp("shapes"), per_class=6)
    model = ImageClassifierLearner(epochs=10, batch_size=8)(data)
    folder = data.domain["image"].attributes["origin"]
    paths = [os.path.join(folder, name) for name in data.get_column("image")]
    pixels = np.stack([load_image_array(path, model.input_size[::-1])
                       for path in paths]).astype(np.float32)
    expected, _ = model.predict_paths(paths)
    return model, pixels, expected


def check_metadata(metadata, model):
    assert metadata["class_names"] == list(model.class_names)
    assert (metadata["input"]["height"], metadata["input"]["width"]) == \
        model.input_size
    assert metadata["input"]["range"] == [0, 255]


def test_keras_export_matches(tmp_path, model_and_pixels):
    import keras
    model, pixels, expected = model_and_pixels
    path = model.export(str(tmp_path / "shapes"), "keras")
    assert path.endswith(".keras")
    loaded = keras.saving.load_model(path, compile=False)
    probs = np.asarray(loaded.predict(pixels, verbose=0))
    np.testing.assert_allclose(probs, expected, atol=1e-3)
    np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1))
    check_metadata(load_export_metadata(path, "keras"), model)


def test_savedmodel_export_matches(tmp_path, model_and_pixels):
    import tensorflow as tf
    model, pixels, expected = model_and_pixels
    path = model.export(str(tmp_path / "shapes_savedmodel"), "savedmodel")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    probs = serve(pixels=tf.constant(pixels))["probabilities"].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-3)
    check_metadata(load_export_metadata(path, "savedmodel"), model)


def test_tflite_export_matches(tmp_path, model_and_pixels):
    import tensorflow as tf
    model, pixels, expected = model_and_pixels
    path = model.export(str(tmp_path / "shapes"), "tflite")
    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    probs = []
    for image in pixels:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        probs.append(interpreter.get_tensor(target["index"])[0])
    np.testing.assert_allclose(np.array(probs), expected, atol=1e-3)
    check_metadata(load_export_metadata(path, "tflite"), model)


def test_export_never_overwrites(tmp_path, model_and_pixels):
    model = model_and_pixels[0]
    existing = tmp_path / "model.keras"
    existing.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError):
        model.export(str(existing), "keras")
    assert existing.read_bytes() == b"the user's file"
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]


def test_export_rejects_unknown_format_and_missing_folder(tmp_path,
                                                          model_and_pixels):
    model = model_and_pixels[0]
    with pytest.raises(ValueError, match="format"):
        model.export(str(tmp_path / "x"), "onnx")
    with pytest.raises(FileNotFoundError):
        model.export(str(tmp_path / "missing" / "x"), "keras")


# --- faults, with a stand-in model (no network needed) -----------------------

class StandInModel:
    """What export_model reads of a model; its "network" writes bytes."""
    network = None
    input_size = (8, 8)
    class_names = ("a", "b")
    backbone = "none"
    export_output_description = "probabilities"


def stand_in_writer(write):
    """Patch the Keras writer with `write(network, path)`."""
    from orangecontrib.deepimage import export
    return mock.patch.dict(export._WRITERS, {"keras": write})


def test_file_made_during_export_is_kept(tmp_path):
    target = tmp_path / "model.keras"

    def write(network, path):
        with open(path, "wb") as file:
            file.write(b"the export")
        target.write_bytes(b"made meanwhile")

    with stand_in_writer(write), pytest.raises(FileExistsError):
        export_model(StandInModel(), str(target))
    assert target.read_bytes() == b"made meanwhile"
    # Neither the metadata nor any scratch folder is left behind.
    assert os.listdir(tmp_path) == ["model.keras"]


def test_export_into_unwritable_folders_does_nothing(tmp_path):
    write = mock.Mock()
    with stand_in_writer(write):
        with pytest.raises(UnwritableFolder, match="does not exist"):
            export_model(StandInModel(), str(tmp_path / "gone" / "m"))
        with mock.patch("os.access", return_value=False), \
                pytest.raises(UnwritableFolder, match="read-only"):
            export_model(StandInModel(), str(tmp_path / "m"))
    write.assert_not_called()
    assert os.listdir(tmp_path) == []


def test_full_disk_during_export_leaves_nothing(tmp_path):
    (tmp_path / "earlier.keras").write_bytes(b"an earlier export")

    def write(network, path):
        with open(path, "wb") as file:
            file.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    with stand_in_writer(write), \
            pytest.raises(UnwritableFolder, match="No space left"):
        export_model(StandInModel(), str(tmp_path / "model.keras"))
    assert os.listdir(tmp_path) == ["earlier.keras"]
    assert (tmp_path / "earlier.keras").read_bytes() == b"an earlier export"


def test_stand_in_export_writes_model_and_metadata(tmp_path):
    def write(network, path):
        with open(path, "wb") as file:
            file.write(b"the export")

    with stand_in_writer(write):
        path = export_model(StandInModel(), str(tmp_path / "model"))
    assert path == str(tmp_path / "model.keras")
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.keras"]
    assert load_export_metadata(path, "keras")["class_names"] == ["a", "b"]
