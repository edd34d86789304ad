import os

import numpy as np
import pytest

from orangecontrib.deepimage import ImageClassifierLearner
from orangecontrib.deepimage.export import load_export_metadata
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
