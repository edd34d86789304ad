"""The backbone registry: what each network needs, checked against Keras.

Only MobileNet v2 and EfficientNet-B0 are built here (with random weights,
so nothing is downloaded); the large networks are built in test_weights.py.
"""
import inspect

import keras
import numpy as np
import pytest
from keras.src.applications import (
    densenet, efficientnet, inception_v3, mobilenet_v2, resnet, vgg16, vgg19)

from orangecontrib.deepimage.backbones import (
    BACKBONES, decode_imagenet_top, get_backbone, imagenet_labels)
from orangecontrib.deepimage.preprocessing import (
    PREPROCESSING_MODES, ImagePreprocessing)

#: key -> (input size, preprocessing, embedding size)
EXPECTED = {
    "squeezenet": ((227, 227), "caffe-ndf", 1000),
    "inception-v3": ((299, 299), "tf", 2048),
    "vgg16": ((224, 224), "caffe", 4096),
    "vgg19": ((224, 224), "caffe", 4096),
    "resnet50": ((224, 224), "caffe", 2048),
    "mobilenet-v2": ((224, 224), "tf", 1280),
    "efficientnet-b0": ((224, 224), "raw", 1280),
    "densenet121": ((224, 224), "torch", 1024),
}

#: key -> the keras.applications module that downloads the same weights
KERAS_MODULES = {
    "inception-v3": inception_v3, "vgg16": vgg16, "vgg19": vgg19,
    "resnet50": resnet, "mobilenet-v2": mobilenet_v2,
    "efficientnet-b0": efficientnet, "densenet121": densenet,
}


def keras_origin(key, filename):
    """The URL the keras.applications module downloads `filename` from."""
    module = KERAS_MODULES[key]
    for name in ("WEIGHTS_PATH", "DENSENET121_WEIGHT_PATH"):
        if hasattr(module, name):
            return getattr(module, name)
    base = getattr(module, "BASE_WEIGHTS_PATH", None) \
        or module.BASE_WEIGHT_PATH
    return base + filename


def test_registry_entries():
    assert set(BACKBONES) == set(EXPECTED)
    for key, (size, preprocessing, embedding_size) in EXPECTED.items():
        backbone = get_backbone(key)
        assert backbone.key == key
        assert (backbone.input_size, backbone.preprocessing,
                backbone.embedding_size) == (size, preprocessing,
                                             embedding_size)
        assert backbone.preprocessing in PREPROCESSING_MODES
        assert backbone.embedding_size_of() == embedding_size
        assert backbone.name and backbone.description
        assert backbone.layer_names()[0] == "penultimate"
    orders = [b.order for b in BACKBONES.values()]
    assert len(set(orders)) == len(orders)


def test_only_squeezenet_is_bundled():
    assert [k for k, b in BACKBONES.items() if b.is_bundled] == ["squeezenet"]


@pytest.mark.parametrize("key", sorted(KERAS_MODULES))
def test_weights_are_the_files_keras_downloads(key):
    weights = get_backbone(key).weights
    assert weights.origin == keras_origin(key, weights.filename)
    assert weights.origin.endswith("/" + weights.filename)
    assert weights.filename.endswith(".h5")
    assert not weights.filename.endswith(".weights.h5")
    if weights.md5:  # Keras checks no digest for MobileNet v2
        assert f'"{weights.md5}"' in inspect.getsource(KERAS_MODULES[key])
    assert weights.approx_mb > 1


@pytest.mark.parametrize("key", sorted(KERAS_MODULES))
def test_preprocessing_matches_keras(key):
    pixels = np.random.default_rng(3).uniform(0, 255, (2, 8, 8, 3)) \
        .astype(np.float32)
    expected = KERAS_MODULES[key].preprocess_input(pixels.copy())
    mode = get_backbone(key).preprocessing
    actual = np.asarray(ImagePreprocessing(mode)(pixels))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_preprocessing_layer_serializes():
    layer = ImagePreprocessing("torch", name="prep")
    clone = ImagePreprocessing.from_config(layer.get_config())
    assert clone.mode == "torch" and clone.name == "prep"
    with pytest.raises(ValueError, match="mode='bgr'"):
        ImagePreprocessing("bgr")


def test_unknown_backbone():
    with pytest.raises(ValueError) as error:
        get_backbone("nope")
    message = str(error.value)
    assert "'nope'" in message
    for key in EXPECTED:
        assert key in message


def test_unknown_layer():
    with pytest.raises(ValueError, match="fire9"):
        get_backbone("squeezenet").embedding_size_of("fire8")
    assert get_backbone("squeezenet").embedding_size_of("fire9") == 512
    assert get_backbone("vgg16").embedding_size_of("block5_pool") == 512


@pytest.mark.parametrize("key", ["mobilenet-v2", "efficientnet-b0"])
def test_feature_outputs_of_random_network(key):
    backbone = get_backbone(key)
    network = backbone.builder(None)  # random weights: nothing downloads
    assert network.input.shape[1:3] == backbone.input_size
    embedding, probabilities = backbone.feature_outputs(network)
    assert embedding.shape == (None, backbone.embedding_size)
    assert probabilities.shape == (None, 1000)
    model = keras.Model(network.input, [embedding, probabilities])
    pixels = np.random.default_rng(0).uniform(
        0, 255, (2, *backbone.input_size, 3)).astype(np.float32)
    vectors, probs = model.predict(
        ImagePreprocessing(backbone.preprocessing)(pixels), verbose=0)
    assert vectors.shape == (2, backbone.embedding_size)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-4)


def test_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert all(isinstance(label, str) and label for label in labels)
    # a class column needs distinct values; ImageNet has two pairs of
    # classes that share a name (missile, sunglasses)
    assert len(set(labels)) == 1000
    assert labels[285] == "Egyptian Mau"
    assert labels[967] == "espresso"
    assert "crane" in labels[134] and "crane" in labels[517]
    assert labels[134] != labels[517]  # the bird and the machine


def test_decode_imagenet_top_orders_by_probability():
    labels = imagenet_labels()
    probabilities = np.zeros((2, 1000))
    probabilities[0, [7, 3, 500]] = [0.2, 0.5, 0.3]
    probabilities[1, [1, 999]] = [0.9, 0.1]
    first, second = decode_imagenet_top(probabilities, k=3)
    assert first == [(labels[3], 0.5), (labels[500], 0.3), (labels[7], 0.2)]
    assert second[:2] == [(labels[1], 0.9), (labels[999], 0.1)]
    assert len(second) == 3
    # a single vector is one row
    assert decode_imagenet_top(probabilities[1], k=1) == [[(labels[1], 0.9)]]
