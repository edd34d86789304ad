"""ImageNet weights from a file, the Keras cache, a mirror or a download.

Nothing here goes to the internet: weight files are made with random weights
(``weights=None``) and "downloaded" from a server on 127.0.0.1.
"""
import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import socket
import threading
from dataclasses import replace

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from PIL import Image
import skimage.data

from orangecontrib.deepimage.backbones import BACKBONES, get_backbone
from orangecontrib.deepimage.embedding import ImageEmbedder
from orangecontrib.deepimage.images import decode_image
from orangecontrib.deepimage.squeezenet import squeezenet
from orangecontrib.deepimage.weights import (
    MIRROR_ENV, WeightsUnavailable, keras_cache_dir, resolve_weights)

MOBILENET = "mobilenet-v2"
MOBILENET_FILE = BACKBONES[MOBILENET].weights.filename

# Loading a file that does not fit a model makes Keras warn before it fails.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def save_legacy_h5(model, path):
    """Save weights as keras.applications publishes them (Keras 2 .h5)."""
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)


def md5_of(path):
    with open(path, "rb") as file:
        return hashlib.md5(file.read()).hexdigest()


def assert_weights_equal(model, expected):
    actual = model.get_weights()
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def dead_url():
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _TruncatingHandler(_QuietHandler):
    """Announces the whole file, sends half of it and hangs up."""

    def do_GET(self):
        with open(self.translate_path(self.path), "rb") as file:
            data = file.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.close_connection = True


class Server:
    """An HTTP server on 127.0.0.1 serving `folder`, in a thread."""

    def __init__(self, folder, handler=_QuietHandler):
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@contextlib.contextmanager
def serving(folder, handler=_QuietHandler):
    server = Server(str(folder), handler)
    try:
        yield server
    finally:
        server.stop()


# --- weight files made here ------------------------------------------------

@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """A mirror folder with random MobileNet v2 weights in the Keras format,
    under the name keras.applications downloads; and those weights."""
    folder = tmp_path_factory.mktemp("mirror")
    model = keras.applications.MobileNetV2(weights=None)
    path = str(folder / MOBILENET_FILE)
    save_legacy_h5(model, path)
    return {"folder": str(folder), "path": path, "md5": md5_of(path),
            "size": os.path.getsize(path), "weights": model.get_weights(),
            "model": model}


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception.weights.h5"
    keras.applications.InceptionV3(weights=None).save_weights(str(path))
    yield str(path)
    os.remove(path)  # 96 MB


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg16") / "vgg16.weights.h5"
    keras.applications.VGG16(weights=None).save_weights(str(path))
    yield str(path)
    os.remove(path)  # 550 MB


@pytest.fixture(autouse=True)
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache and no mirror, whatever the user has set."""
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return home


@pytest.fixture
def mobilenet(monkeypatch, mobilenet_file):
    """Point the registry's MobileNet v2 weights at `origin` with `md5`."""
    def patch(origin, md5=mobilenet_file["md5"]):
        backbone = BACKBONES[MOBILENET]
        weights = replace(backbone.weights, origin=origin + MOBILENET_FILE,
                          md5=md5)
        monkeypatch.setitem(BACKBONES, MOBILENET,
                            replace(backbone, weights=weights))
        return BACKBONES[MOBILENET]
    return patch


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).resize((90, 60)).save(path)
    return str(path)


# --- weights from a file ---------------------------------------------------

@pytest.mark.parametrize("key, factory, module, layer, size, weights", [
    ("inception-v3", "InceptionV3", "inception_v3", "avg_pool", 2048,
     "inception_file"),
    ("vgg16", "VGG16", "vgg16", "fc2", 4096, "vgg16_file"),
])
def test_embedding_from_weights_file(request, tmp_path, image_path, key,
                                     factory, module, layer, size, weights):
    path = request.getfixturevalue(weights)
    embedder = ImageEmbedder(key, weights=path, cache_dir=str(tmp_path))
    vector, = embedder([image_path])
    assert vector.shape == (size,)
    assert not get_backbone(key).weights.is_cached()  # nothing downloaded

    reference = getattr(keras.applications, factory)(weights=None)
    features = keras.Model(reference.input, reference.get_layer(layer).output)
    with open(image_path, "rb") as file:
        pixels = np.asarray(decode_image(
            file.read(), get_backbone(key).input_size[::-1]))
    x = getattr(keras.applications, module).preprocess_input(
        pixels[None].astype(np.float32))
    random_vector = features.predict(x, verbose=0)[0]
    reference.load_weights(path)
    expected = features.predict(x, verbose=0)[0]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(vector, expected, rtol=1e-4,
                               atol=1e-5 * scale)
    assert not np.allclose(vector, random_vector, rtol=1e-2,
                           atol=1e-3 * scale)

    again = embedder.embed_paths([image_path])
    assert again.n_cached == 1
    np.testing.assert_array_equal(again.vectors[0], vector)


def test_legacy_keras_h5_file(tmp_path, mobilenet_file):
    # the file keras.applications downloads, renamed by the user
    path = str(tmp_path / "my_mobilenet.h5")
    shutil.copy(mobilenet_file["path"], path)
    model = get_backbone(MOBILENET).build(weights_path=path)
    assert_weights_equal(model, mobilenet_file["weights"])


def test_keras3_weights_file(tmp_path, mobilenet_file):
    path = str(tmp_path / "mobilenet.weights.h5")
    mobilenet_file["model"].save_weights(path)
    model = get_backbone(MOBILENET).build(weights_path=path)
    assert_weights_equal(model, mobilenet_file["weights"])


def test_missing_weights_file(tmp_path):
    path = str(tmp_path / "nowhere" / "mobilenet.h5")
    with pytest.raises(WeightsUnavailable, match="does not exist") as error:
        get_backbone(MOBILENET).build(weights_path=path)
    assert path in str(error.value)


def test_file_with_other_weights(tmp_path):
    network = squeezenet(weights=None)
    keras3 = str(tmp_path / "squeezenet.weights.h5")
    network.save_weights(keras3)
    legacy = str(tmp_path / "squeezenet.h5")
    save_legacy_h5(network, legacy)
    garbage = str(tmp_path / "garbage.h5")
    with open(garbage, "w") as file:
        file.write("not weights")
    for path in (keras3, legacy, garbage):
        with pytest.raises(ValueError) as error:
            get_backbone(MOBILENET).build(weights_path=path)
        assert f"{path} does not hold weights for MobileNet v2" \
            in str(error.value)


# --- downloads -------------------------------------------------------------

def test_download_from_origin(mobilenet, mobilenet_file, keras_home):
    progress = []
    with serving(mobilenet_file["folder"]) as server:
        backbone = mobilenet(server.url)
        assert backbone.availability() == "downloads 14 MB"
        assert not backbone.is_ready_offline()
        model = backbone.build(
            progress=lambda done, total: progress.append((done, total)))
    cached = keras_home / "models" / MOBILENET_FILE
    assert str(cached) == backbone.weights.cached_path()
    assert md5_of(cached) == mobilenet_file["md5"]
    assert os.listdir(keras_home / "models") == [MOBILENET_FILE]
    assert_weights_equal(model, mobilenet_file["weights"])

    size = mobilenet_file["size"]
    done = [d for d, _ in progress]
    assert len(progress) > 1
    assert done == sorted(done) and len(set(done)) == len(done)
    assert done[-1] == size
    assert {total for _, total in progress} == {size}

    assert backbone.availability() == "downloaded"
    assert backbone.is_ready_offline()
    # the server is gone: the second build reads the Keras cache
    again = backbone.build(progress=lambda *_: pytest.fail("downloaded"))
    assert_weights_equal(again, mobilenet_file["weights"])


@pytest.mark.parametrize("how", ["argument", "environment", "folder"])
def test_download_from_mirror(how, mobilenet, mobilenet_file, monkeypatch,
                              tmp_path):
    backbone = mobilenet(dead_url())
    with serving(mobilenet_file["folder"]) as server:
        mirror = None
        if how == "argument":
            mirror = server.url
        elif how == "environment":
            monkeypatch.setenv(MIRROR_ENV, server.url.rstrip("/"))
        else:  # a folder whose name would break a naive file:// URL
            mirror = tmp_path / "USB stick #1 (100%)"
            mirror.mkdir()
            shutil.copy(mobilenet_file["path"], mirror)
        model = backbone.build(mirror=mirror and str(mirror))
    assert backbone.weights.is_cached()
    assert_weights_equal(model, mobilenet_file["weights"])


def test_mirror_without_the_file_falls_back_to_origin(
        mobilenet, mobilenet_file, tmp_path):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    with serving(mobilenet_file["folder"]) as server:
        backbone = mobilenet(server.url)
        path = resolve_weights(backbone.weights, mirror=str(empty))
    assert path == backbone.weights.cached_path()


def test_embedder_downloads_with_progress(mobilenet, mobilenet_file,
                                          image_path, tmp_path):
    progress = []
    with serving(mobilenet_file["folder"]) as server:
        mobilenet(dead_url())
        embedder = ImageEmbedder(
            MOBILENET, mirror=server.url, cache_dir=str(tmp_path),
            download_progress=lambda *args: progress.append(args))
        vector, = embedder([image_path])
    assert vector.shape == (1280,)
    assert progress[-1] == (mobilenet_file["size"],) * 2


def test_damaged_download_leaves_nothing(mobilenet, mobilenet_file,
                                         keras_home):
    with serving(mobilenet_file["folder"]) as server:
        backbone = mobilenet(server.url, md5="0" * 32)
        with pytest.raises(WeightsUnavailable, match="damaged"):
            backbone.build()
    assert os.listdir(keras_home / "models") == []
    assert backbone.availability() == "downloads 14 MB"


def test_interrupted_download_leaves_nothing(mobilenet, mobilenet_file,
                                             keras_home):
    with serving(mobilenet_file["folder"], _TruncatingHandler) as server:
        # Keras publishes no digest for this file: only the length tells
        backbone = mobilenet(server.url, md5="")
        with pytest.raises(WeightsUnavailable):
            backbone.build()
    assert os.listdir(keras_home / "models") == []


def test_offline_without_weights_says_what_to_do(mobilenet):
    backbone = mobilenet(dead_url())
    with pytest.raises(WeightsUnavailable) as error:
        backbone.build()
    message = str(error.value)
    assert MOBILENET_FILE in message
    assert "about 14 MB" in message
    assert keras_cache_dir() in message
    assert MIRROR_ENV in message
    assert "weights file" in message
    assert backbone.weights.origin in message


def test_availability(mobilenet_file, keras_home):
    assert get_backbone("squeezenet").availability() == "works offline"
    assert get_backbone("squeezenet").is_ready_offline()
    backbone = get_backbone(MOBILENET)
    assert backbone.availability() == "downloads 14 MB"
    assert get_backbone("vgg16").availability() == "downloads 528 MB"
    assert backbone.availability(mobilenet_file["path"]) == \
        "weights from file"
    os.makedirs(keras_home / "models")
    shutil.copy(mobilenet_file["path"], keras_home / "models")
    assert backbone.availability() == "downloaded"
    assert backbone.is_ready_offline()
