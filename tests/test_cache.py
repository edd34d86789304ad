"""The embedding cache: its size limit, clearing, and faults it survives;
the shared embedders and the embedder as a context manager."""
import os
import sqlite3
import time
import warnings
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from orangecontrib.deepimage import cache as cache_module
from orangecontrib.deepimage import embedding
from orangecontrib.deepimage.cache import (
    CacheUnavailable, EmbeddingCache, cache_file, clear_cache,
    default_cache_size, parse_size)
from orangecontrib.deepimage.images import iter_image_batches

SIZE = 512  # floats per vector: 2 KB, a page holds one or two


def vector(i):
    return np.full(SIZE, i, dtype=np.float32)


def caught_warnings():
    """Record the warnings (call ``simplefilter("always")`` inside)."""
    return warnings.catch_warnings(record=True)


def cache_warnings(records):
    return [w for w in records if issubclass(w.category, CacheUnavailable)]


# --- storing, the limit, clearing ------------------------------------------

def test_round_trip_and_models_apart(tmp_path):
    first = EmbeddingCache("model-a", str(tmp_path))
    second = EmbeddingCache("model-b", str(tmp_path))
    first.put_many([("k1", vector(1)), ("k2", vector(2))])
    second.put_many([("k1", vector(7))])
    found = first.get_many(["k1", "k2", "k3"])
    assert sorted(found) == ["k1", "k2"]
    np.testing.assert_array_equal(found["k2"], vector(2))
    np.testing.assert_array_equal(second.get_many(["k1"])["k1"], vector(7))
    assert first.contains("k1") and not first.contains("k3")
    assert len(first) == 2 and len(second) == 1
    assert first.error is None


def test_eviction_keeps_the_file_under_its_limit(tmp_path):
    limit = 96 * 1024
    cache = EmbeddingCache("m", str(tmp_path), max_bytes=limit)
    for batch in range(30):
        cache.put_many((f"k{batch}-{i}", vector(i)) for i in range(8))
        assert cache.size_bytes() <= limit
    assert 0 < len(cache) < 30 * 8
    # The newest batch is all there; the first ones are gone.
    assert len(cache.get_many(f"k29-{i}" for i in range(8))) == 8
    assert not cache.get_many(f"k0-{i}" for i in range(8))
    # The file gives the space back, too.
    assert os.path.getsize(cache.path) <= limit + 16 * 1024


def test_least_recently_used_go_first(tmp_path):
    cache = EmbeddingCache("m", str(tmp_path), max_bytes=10 ** 9)
    for i in range(20):
        cache.put_many([(f"k{i}", vector(i))])
    cache.get_many(["k0"])       # used again: now the most recent
    cache.contains("k1")         # a look-up alone is not a use
    cache.max_bytes = cache.size_bytes() - 1
    cache.put_many([("new", vector(99))])
    kept = cache.get_many([f"k{i}" for i in range(20)] + ["new"],
                          touch=False)
    assert "new" in kept and "k0" in kept
    assert "k1" not in kept
    evicted = [i for i in range(1, 20) if f"k{i}" not in kept]
    # The oldest went, in order of their last use.
    assert evicted == list(range(1, len(evicted) + 1))


def test_clear(tmp_path):
    first = EmbeddingCache("model-a", str(tmp_path))
    second = EmbeddingCache("model-b", str(tmp_path))
    first.put_many((f"k{i}", vector(i)) for i in range(200))
    second.put_many([("k", vector(1))])
    full = os.path.getsize(first.path)
    first.clear()
    assert len(first) == 0 and len(second) == 1
    assert os.path.getsize(first.path) < full / 4
    clear_cache(str(tmp_path))
    assert len(second) == 0
    assert not first.get_many(["k1"]) and first.error is None


def test_a_cache_from_before_the_limit_is_upgraded(tmp_path):
    path = cache_file(str(tmp_path))
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE embeddings (model TEXT, content TEXT, "
                    "vector BLOB, PRIMARY KEY (model, content))")
        old.execute("INSERT INTO embeddings VALUES (?, ?, ?)",
                    ("m", "old", vector(3).tobytes()))
    old.close()
    cache = EmbeddingCache("m", str(tmp_path), max_bytes=10 ** 9)
    np.testing.assert_array_equal(cache.get_many(["old"])["old"], vector(3))
    cache.put_many([("new", vector(4))])
    assert len(cache) == 2 and cache.error is None
    clear_cache(str(tmp_path))
    assert len(cache) == 0


def test_size_setting(monkeypatch):
    assert parse_size("500") == 500 * 2 ** 20
    assert parse_size("2GB") == 2 * 2 ** 30
    assert parse_size("1.5 g") == int(1.5 * 2 ** 30)
    assert parse_size("64MiB") == 64 * 2 ** 20
    with pytest.raises(ValueError, match="Not a size"):
        parse_size("lots")
    monkeypatch.delenv(cache_module.CACHE_SIZE_ENV, raising=False)
    assert default_cache_size() == 2 ** 30
    monkeypatch.setenv(cache_module.CACHE_SIZE_ENV, "100MB")
    assert default_cache_size() == 100 * 2 ** 20
    assert EmbeddingCache("m").max_bytes == 100 * 2 ** 20
    monkeypatch.setenv(cache_module.CACHE_SIZE_ENV, "lots")
    with pytest.warns(RuntimeWarning, match="ignored"):
        assert default_cache_size() == 2 ** 30


# --- faults: bypassed with one warning ------------------------------------

def corrupt(folder):
    path = cache_file(str(folder))
    os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as file:
        file.write(b"this is not a database " * 500)
    return path


def check_off_with_one_warning(cache, reason):
    with caught_warnings() as records:
        warnings.simplefilter("always")
        assert cache.get_many(["k"]) == {}
        assert not cache.contains("k")
        cache.put_many([("k", vector(1))])
        assert cache.get_many(["k"]) == {}
        assert len(cache) == 0
    found = cache_warnings(records)
    assert len(found) == 1, [str(w.message) for w in records]
    assert str(found[0].message).startswith("The embedding cache is off")
    assert reason in cache.error


def test_corrupt_file_is_bypassed(tmp_path):
    path = corrupt(tmp_path)
    check_off_with_one_warning(EmbeddingCache("m", str(tmp_path)), "damaged")
    # The file is left alone until the user clears the cache; that
    # deletes a damaged file, and the cache works again.
    assert os.path.getsize(path) > 0
    clear_cache(str(tmp_path))
    cache = EmbeddingCache("m", str(tmp_path))
    cache.put_many([("k", vector(1))])
    assert cache.contains("k") and cache.error is None


def test_locked_file_is_bypassed_quickly(tmp_path):
    EmbeddingCache("m", str(tmp_path)).put_many([("k", vector(1))])
    other = sqlite3.connect(cache_file(str(tmp_path)), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        cache = EmbeddingCache("m", str(tmp_path))
        start = time.monotonic()
        check_off_with_one_warning(cache, "in use by another program")
        assert time.monotonic() - start < 5
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Once the other program is done, the cache works again when retried.
    cache.retry()
    assert cache.contains("k")


def test_read_only_file_is_bypassed(tmp_path):
    EmbeddingCache("m", str(tmp_path)).put_many([("k", vector(1))])
    connect = sqlite3.connect

    def read_only(path, **kwargs):
        # What a read-only file gives a user (root writes anyway).
        return connect(f"file:{path}?mode=ro", uri=True, **kwargs)

    cache = EmbeddingCache("m", str(tmp_path))
    with mock.patch.object(cache_module.sqlite3, "connect", read_only), \
            caught_warnings() as records:
        warnings.simplefilter("always")
        cache.get_many(["k"])   # using an entry writes when it was used
        cache.put_many([("k2", vector(2))])
    assert len(cache_warnings(records)) == 1
    assert "read-only" in cache.error


def test_read_only_folder_is_bypassed(tmp_path):
    denied = PermissionError(13, "Permission denied")
    cache = EmbeddingCache("m", str(tmp_path / "new"))
    with mock.patch("os.makedirs", side_effect=denied):
        check_off_with_one_warning(cache, "read-only")
    assert not os.path.exists(tmp_path / "new")


def test_a_cache_fault_is_not_a_broken_image(tmp_path):
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "a.png")

    def broken_cache(key):
        raise RuntimeError("a bug in the cache")

    batches = iter_image_batches([str(tmp_path / "a.png")], (4, 4),
                                 is_cached=broken_cache)
    with pytest.raises(RuntimeError, match="a bug in the cache"):
        list(batches)


# --- through the embedder --------------------------------------------------

COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 0),
           (0, 128, 255)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (16, 12), colour)
        image.putpixel((i, i), (255, 255, 255))
        paths.append(str(folder / f"{i}.png"))
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def reference(images):
    """The vectors without any cache, and an embedder whose network is
    built (others reuse its traced network)."""
    pytest.importorskip("tensorflow")
    embedder = embedding.ImageEmbedder("squeezenet", use_cache=False,
                                       batch_size=2)
    return embedder, np.vstack(embedder(images))


def embedder_in(folder, reference_embedder):
    embedder = embedding.ImageEmbedder("squeezenet", cache_dir=str(folder),
                                       batch_size=2)
    embedder._predict = reference_embedder._predict  # no second build
    return embedder


@pytest.mark.parametrize("fault", ["corrupt", "locked"])
def test_broken_cache_gives_the_same_vectors(tmp_path, images, reference,
                                             fault):
    built, expected = reference
    other = None
    if fault == "corrupt":
        corrupt(tmp_path)
    else:
        EmbeddingCache("x", str(tmp_path)).put_many([("k", vector(1))])
        other = sqlite3.connect(cache_file(str(tmp_path)),
                                isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
    try:
        embedder = embedder_in(tmp_path, built)
        with caught_warnings() as records:
            warnings.simplefilter("always")
            result = embedder.embed_paths(images)
    finally:
        if other is not None:
            other.execute("ROLLBACK")
            other.close()
    np.testing.assert_allclose(np.vstack(result.vectors), expected,
                               rtol=1e-5, atol=1e-6)
    assert not result.skipped
    assert len(cache_warnings(records)) == 1
    assert result.cache_error and embedder.cache_error == result.cache_error


def test_cached_vectors_are_the_same(tmp_path, images, reference):
    built, expected = reference
    embedder = embedder_in(tmp_path, built)
    first = embedder.embed_paths(images)
    second = embedder.embed_paths(images)
    assert first.n_cached == 0 and second.n_cached == len(images)
    np.testing.assert_allclose(np.vstack(second.vectors), expected,
                               rtol=1e-5, atol=1e-6)
    assert second.cache_error is None and embedder.cache_error is None


def test_vectors_gone_from_the_cache_meanwhile_are_embedded(
        tmp_path, images, reference):
    built, expected = reference
    embedder = embedder_in(tmp_path, built)
    embedder.embed_paths(images)
    # The look-up says "cached", but the vectors are gone when fetched
    # (evicted by another process), or one is damaged.
    with mock.patch.object(EmbeddingCache, "get_many",
                           return_value={}):
        result = embedder.embed_paths(images)
    np.testing.assert_allclose(np.vstack(result.vectors), expected,
                               rtol=1e-5, atol=1e-6)
    assert result.n_cached == 0 and not result.skipped
    with mock.patch.object(EmbeddingCache, "get_many",
                           side_effect=lambda keys, touch=True: {
                               key: np.zeros(3, np.float32)
                               for key in keys}):
        result = embedder.embed_paths(images)
    assert result.n_cached == 0
    np.testing.assert_allclose(np.vstack(result.vectors), expected,
                               rtol=1e-5, atol=1e-6)


def test_context_manager_and_clear_cache(tmp_path, images, reference):
    built, expected = reference
    with embedder_in(tmp_path, built) as embedder:
        vectors = embedder(images)
        assert len(embedder.cache) == len(images)
        embedder.clear_cache()
        assert len(embedder.cache) == 0
    assert embedder._predict is None and embedder._network is None
    assert embedder.cache._connection is None
    np.testing.assert_allclose(np.vstack(vectors), expected,
                               rtol=1e-5, atol=1e-6)


def test_embedder_works_again_after_close(tmp_path, images, reference):
    built, expected = reference
    embedder = embedder_in(tmp_path, built)
    embedder.close()
    with mock.patch.object(embedding.ImageEmbedder, "_build_network",
                           lambda self, progress: setattr(
                               self, "_predict", built._predict)) as _:
        vectors = embedder(images[:2])
    np.testing.assert_allclose(np.vstack(vectors), expected[:2],
                               rtol=1e-5, atol=1e-6)


# --- shared embedders ------------------------------------------------------

def test_embedder_cache_size(tmp_path, monkeypatch):
    monkeypatch.setenv(cache_module.CACHE_SIZE_ENV, "300MB")
    assert embedding.ImageEmbedder(cache_dir=str(tmp_path)).cache_size == \
        300 * 2 ** 20
    embedder = embedding.ImageEmbedder(cache_dir=str(tmp_path),
                                       cache_size=12345)
    assert embedder.cache.max_bytes == 12345
    embedder.cache_size = 777
    assert embedder.cache.max_bytes == 777 and embedder.cache_size == 777


def test_shared_embedders_are_bounded(monkeypatch):
    monkeypatch.setattr(embedding, "_shared_embedders",
                        embedding.OrderedDict())
    assert embedding.SHARED_EMBEDDERS == 2
    first = embedding.shared_embedder("squeezenet")
    assert embedding.shared_embedder("squeezenet") is first
    second = embedding.shared_embedder("squeezenet", layer="fire9")
    assert embedding.shared_embedder("squeezenet") is first  # most recent
    embedding.shared_embedder("mobilenet-v2")                # a third one
    assert len(embedding._shared_embedders) == 2
    # The least recently used (fire9) was forgotten, the others kept.
    assert embedding.shared_embedder("squeezenet") is first
    assert embedding.shared_embedder("squeezenet", layer="fire9") \
        is not second


def test_release_shared_embedders(monkeypatch, tmp_path):
    import weakref
    monkeypatch.setattr(embedding, "_shared_embedders",
                        embedding.OrderedDict())
    embedder = embedding.shared_embedder("squeezenet")
    embedder._network = network = type("Network", (), {})()
    gone = weakref.ref(network)
    del network
    embedder._cache = EmbeddingCache("m", str(tmp_path))
    embedder._cache.put_many([("k", vector(1))])
    assert embedder._cache._connection is not None
    assert embedding.release_shared_embedders() == 1
    assert embedder._cache._connection is None
    assert embedding._shared_embedders == {}
    assert embedding.shared_embedder("squeezenet") is not embedder
    del embedder
    assert gone() is None  # nothing else kept the network
    assert embedding.release_shared_embedders() == 1
    assert embedding.release_shared_embedders() == 0
