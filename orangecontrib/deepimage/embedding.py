"""ImageEmbedder: images to vectors with a pretrained network, locally.

The scripting interface follows orange3-imageanalytics' ``ImageEmbedder``::

    >>> from orangecontrib.deepimage import ImageEmbedder
    >>> embedder = ImageEmbedder(model="squeezenet")
    >>> vectors = embedder(["cat.jpg", "missing.jpg"])   # [array, None]
    >>> embedded, skipped, n_skipped = embedder(table, col="image")

Images are decoded in worker threads while the network runs on the previous
batch; the network runs as one traced ``tf.function`` over batches (on the
GPU, with mixed precision, when there is one). Embeddings are cached on disk
by image content, so embedding the same images again is instant; a cache that
cannot be used is bypassed with a warning (:attr:`ImageEmbedder.cache_error`).

As in orange3-imageanalytics, an embedder is a context manager that lets go
of its network and cache when the block ends, and has ``clear_cache()``::

    >>> with ImageEmbedder(model="squeezenet") as embedder:
    ...     vectors = embedder(["cat.jpg"])
"""
import gc
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from Orange.data import (
    ContinuousVariable, Domain, StringVariable, Table, Variable)
from Orange.data.util import get_unique_names

from orangecontrib.deepimage.backbones import (
    Backbone, decode_imagenet_top, get_backbone)
from orangecontrib.deepimage.cache import EmbeddingCache
from orangecontrib.deepimage.device import preferred_dtype_policy
from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, image_paths, iter_image_batches,
    load_image_array)

__all__ = ["ImageEmbedder", "EmbeddingResult", "shared_embedder",
           "release_shared_embedders", "SHARED_EMBEDDERS"]

#: Bump when decoding or resizing changes, so old cache entries are ignored.
PIPELINE_VERSION = "1"

Progress = Callable[[float], None]


@dataclass
class EmbeddingResult:
    """Embeddings of a sequence of images, in input order.

    Attributes
    ----------
    vectors : list of numpy.ndarray or None
        One vector per input; None where the image was skipped.
    skipped : dict
        Input position -> the reason the image was skipped.
    probabilities : list of numpy.ndarray or None, optional
        ImageNet class probabilities, when they were asked for.
    n_cached : int
        How many vectors came from the cache.
    cache_error : str, optional
        Why the cache was off in this run (None when it was used or not
        asked for).
    """
    vectors: List[Optional[np.ndarray]]
    skipped: Dict[int, str] = field(default_factory=dict)
    probabilities: Optional[List[Optional[np.ndarray]]] = None
    n_cached: int = 0
    cache_error: Optional[str] = None


class ImageEmbedder:
    """Embed images with a pretrained network from the backbone registry.

    Parameters
    ----------
    model : str
        A key of :data:`~orangecontrib.deepimage.backbones.BACKBONES`.
    weights : str, optional
        A weights file to use instead of the standard ImageNet weights
        (None: the bundled or downloaded ImageNet weights).
    layer : str
        ``"penultimate"`` (as in orange3-imageanalytics) or another layer
        the backbone offers (e.g. ``"fire9"`` for SqueezeNet).
    batch_size : int
        Images per step of the network.
    use_cache : bool
        Read and write the on-disk embedding cache.
    mirror : str, optional
        Base URL or folder to download weights from.
    workers : int
        Threads decoding images while the network runs.
    cache_dir : str, optional
        Folder of the embedding cache (default: Orange's cache folder or
        ``$DEEPIMAGE_CACHE_DIR``).
    download_progress : callable, optional
        ``download_progress(bytes_done, bytes_total)`` while weights download.
    cache_size : int, optional
        Size limit of the cache file in bytes (default:
        ``$DEEPIMAGE_CACHE_SIZE`` or 1 GB); the embeddings used least
        recently are removed to stay under it.
    """

    def __init__(self, model: str = "squeezenet", weights: Optional[str] = None,
                 layer: str = "penultimate", batch_size: int = 32,
                 use_cache: bool = True, mirror: Optional[str] = None,
                 workers: int = 2, cache_dir: Optional[str] = None,
                 download_progress=None, cache_size: Optional[int] = None):
        self.backbone: Backbone = get_backbone(model)
        self.backbone.embedding_size_of(layer)  # validates the layer name
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be positive. "
                               f"Received: batch_size={batch_size}")
        self.model = model
        self.weights = weights
        self.layer = layer
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.mirror = mirror
        self.workers = workers
        self.download_progress = download_progress
        self._cache_dir = cache_dir
        self._cache_size = cache_size
        self._cache = None
        self._network = None
        self._predict = None
        self._build_lock = threading.Lock()
        #: The backbone as built (with its ImageNet head), once loaded.
        self.backbone_network = None

    # --- the network ---------------------------------------------------

    @property
    def embedding_size(self) -> int:
        """Length of the vectors this embedder returns."""
        return self.backbone.embedding_size_of(self.layer)

    def model_id(self) -> str:
        """Identify model, weights, layer and image pipeline for the cache."""
        if self.weights:
            stat = os.stat(self.weights)
            source = f"{os.path.abspath(self.weights)}:{stat.st_size}:" \
                     f"{stat.st_mtime_ns}"
        else:
            source = "imagenet"
        text = f"{self.model}|{self.layer}|{source}|{PIPELINE_VERSION}"
        return hashlib.sha1(text.encode()).hexdigest()

    def load_network(self, download_progress=None):
        """Build the network (downloading weights if needed); idempotent.

        Parameters
        ----------
        download_progress : callable, optional
            ``download_progress(bytes_done, bytes_total)`` for this call's
            download, instead of the embedder's own (shared embedders must
            not keep a caller's callback).
        """
        self._network_function(download_progress)

    def _network_function(self, download_progress=None):
        """The traced network, built first when needed."""
        with self._build_lock:
            if self._predict is None:
                self._build_network(download_progress
                                    or self.download_progress)
            return self._predict

    def _build_network(self, download_progress):
        import keras
        import tensorflow as tf
        from orangecontrib.deepimage.preprocessing import ImagePreprocessing

        backbone = self.backbone
        policy = preferred_dtype_policy()
        network = backbone.build(self.weights, mirror=self.mirror,
                                 progress=download_progress, dtype=policy)
        height, width = backbone.input_size
        pixels = keras.Input((height, width, 3), name="pixels")
        preprocessed = ImagePreprocessing(backbone.preprocessing,
                                          name="preprocessing",
                                          dtype=policy)(pixels)
        embedding, probabilities = backbone.feature_outputs(
            network, self.layer, dtype=policy)
        features = keras.Model(network.input, [embedding, probabilities])
        outputs = features(preprocessed)
        model = keras.Model(pixels, outputs, name=f"{self.model}_features")

        @tf.function(input_signature=[
            tf.TensorSpec((None, height, width, 3), tf.uint8)])
        def predict(batch):
            embedding, probabilities = model(batch, training=False)
            return (tf.cast(embedding, tf.float32),
                    tf.cast(probabilities, tf.float32))

        self.backbone_network = network
        self._network = model
        self._predict = predict

    @property
    def cache(self) -> EmbeddingCache:
        """The on-disk cache of this embedder's model."""
        if self._cache is None:
            self._cache = EmbeddingCache(self.model_id(), self._cache_dir,
                                         self._cache_size)
        return self._cache

    @property
    def cache_size(self) -> int:
        """Size limit of the cache file in bytes."""
        return self.cache.max_bytes

    @cache_size.setter
    def cache_size(self, size: int):
        self._cache_size = size
        if self._cache is not None:
            self._cache.max_bytes = size

    @property
    def cache_error(self) -> Optional[str]:
        """Why the cache was off in the last run, or None when it works.

        A cache that cannot be used (damaged, locked by another program,
        read-only) is bypassed with one
        :class:`~orangecontrib.deepimage.cache.CacheUnavailable` warning;
        the vectors are the same. Each run tries the cache again.
        """
        return None if self._cache is None else self._cache.error

    def clear_cache(self) -> None:
        """Remove the cached embeddings of this embedder's model."""
        self.cache.clear()

    def close(self) -> None:
        """Let go of the network and the cache's connection.

        The embedder still works afterwards: it builds its network again
        when next used. A run in progress in another thread keeps the
        network it started with.
        """
        with self._build_lock:
            self._predict = None
            self._network = None
            self.backbone_network = None
        self.close_cache()

    def close_cache(self) -> None:
        """Close the cache's connection (it opens again when used)."""
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> "ImageEmbedder":
        return self

    def __exit__(self, *exc_info) -> bool:
        self.close()
        return False

    # --- embedding -----------------------------------------------------

    def embed_paths(self, paths: Sequence[Optional[str]],
                    callback: Optional[Progress] = None,
                    with_probabilities: bool = False) -> EmbeddingResult:
        """Embed the images at `paths` (files or URLs).

        Parameters
        ----------
        paths : sequence of str or None
        callback : callable, optional
            Called with the fraction done (0..1) after each batch; it may
            raise an exception to stop (embeddings done so far stay cached).
        with_probabilities : bool
            Also return ImageNet class probabilities; this bypasses the
            cache, which stores embeddings only.

        Returns
        -------
        EmbeddingResult
        """
        n = len(paths)
        result = EmbeddingResult([None] * n)
        if with_probabilities:
            result.probabilities = [None] * n
        use_cache = self.use_cache and not with_probabilities
        if n == 0:
            return result
        predict = self._network_function()
        cache = self.cache if use_cache else None
        if cache is not None:
            cache.retry()
        is_cached = cache.contains if cache is not None else None
        size = self.backbone.input_size[::-1]

        done = 0
        batches = iter_image_batches(paths, size, self.batch_size,
                                     self.workers, is_cached)
        try:
            for batch, cached in batches:
                if cached:
                    missing = self._fill_from_cache(cache, cached, result)
                    # Gone from the cache since it was looked up (evicted,
                    # or the cache was switched off): embed them here.
                    if missing:
                        self._embed_now(missing, paths, size, predict,
                                        cache, result)
                for index, reason in batch.skipped:
                    result.skipped[index] = reason
                if len(batch.indices):
                    embeddings, probabilities = self._run_network(
                        batch.pixels, predict)
                    for row, index in enumerate(batch.indices):
                        result.vectors[index] = embeddings[row]
                        if with_probabilities:
                            result.probabilities[index] = probabilities[row]
                    if cache is not None:
                        cache.put_many(zip(batch.keys, embeddings))
                done += len(batch.indices) + len(cached) + len(batch.skipped)
                if callback is not None:
                    callback(done / n)
        finally:
            batches.close()
        if cache is not None:
            result.cache_error = cache.error
        return result

    def _fill_from_cache(self, cache: EmbeddingCache, cached, result
                         ) -> List[Tuple[int, str]]:
        """Put the cached vectors into `result`; return the (position, key)
        pairs that are no longer in the cache."""
        vectors = cache.get_many(key for _, key in cached)
        missing = []
        for index, key in cached:
            vector = vectors.get(key)
            if vector is None or vector.shape != (self.embedding_size,):
                missing.append((index, key))
            else:
                result.vectors[index] = vector
                result.n_cached += 1
        return missing

    def _embed_now(self, missing, paths, size, predict, cache, result):
        arrays, indices, keys = [], [], []
        for index, key in missing:
            try:
                arrays.append(load_image_array(paths[index], size))
            except ImageSkipped as error:
                result.skipped[index] = str(error)
            else:
                indices.append(index)
                keys.append(key)
        if arrays:
            embeddings, _ = self._run_network(np.stack(arrays), predict)
            for row, index in enumerate(indices):
                result.vectors[index] = embeddings[row]
            cache.put_many(zip(keys, embeddings))

    @staticmethod
    def _run_network(pixels: np.ndarray, predict
                     ) -> Tuple[np.ndarray, np.ndarray]:
        embeddings, probabilities = predict(pixels)
        return embeddings.numpy(), probabilities.numpy()

    def top_labels(self, paths: Sequence[Optional[str]], k: int = 3,
                   callback: Optional[Progress] = None
                   ) -> List[Optional[List[Tuple[str, float]]]]:
        """Return the top-`k` ImageNet (label, probability) pairs per image.

        Skipped images get None.
        """
        result = self.embed_paths(paths, callback, with_probabilities=True)
        return [None if probs is None else decode_imagenet_top(probs, k)[0]
                for probs in result.probabilities]

    def __call__(self, data: Union[Table, Sequence[str]],
                 col: Optional[Union[str, Variable]] = None,
                 callback: Optional[Progress] = None):
        """Embed a list of paths, or the image column of a table.

        Parameters
        ----------
        data : Orange.data.Table or sequence of str
        col : str or Orange.data.Variable, optional
            The image column; default: the first column marked as images.
        callback : callable, optional
            Progress callback, see :meth:`embed_paths`.

        Returns
        -------
        list of numpy.ndarray or None
            For a sequence of paths: one vector per path, None if skipped.
        (Table or None, Table or None, int)
            For a table: the embedded rows with the embedding appended as
            hidden features, the skipped rows with the reason, their count.
        """
        if not isinstance(data, Table):
            return self.embed_paths(list(data), callback).vectors
        return self.embed_table(data, col, callback)

    def embed_table(self, table: Table, col=None,
                    callback: Optional[Progress] = None):
        """Embed the images of `table`; see :meth:`__call__`."""
        column = table.domain[col] if col is not None \
            else find_image_column(table)
        if column is None:
            raise InvalidInput("The data has no image column (a text meta "
                               "column marked as images).")
        result = self.embed_paths(image_paths(table, column), callback)
        return embedding_tables(table, result, self.embedding_size,
                                self.model, self.weights)


#: How many shared embedders (networks) are kept; the one used least
#: recently goes first. A VGG network takes about 550 MB.
SHARED_EMBEDDERS = 2

_shared_embedders: "OrderedDict[Tuple, ImageEmbedder]" = OrderedDict()
_shared_lock = threading.Lock()


def shared_embedder(model: str = "squeezenet", weights: Optional[str] = None,
                    layer: str = "penultimate", mirror: Optional[str] = None
                    ) -> ImageEmbedder:
    """Return an embedder for these settings, reusing one built before.

    Building a network costs seconds; widgets and cross-validation folds
    that embed with the same settings share one embedder (its network is
    never trained, so sharing is safe). Only the :data:`SHARED_EMBEDDERS`
    used most recently are kept; the others are forgotten, and their
    networks freed as soon as no run uses them any more.
    :func:`release_shared_embedders` forgets them all.
    """
    key = (model, weights or None, layer, mirror or None)
    with _shared_lock:
        embedder = _shared_embedders.get(key)
        if embedder is None:
            embedder = ImageEmbedder(
                model=model, weights=weights or None, layer=layer,
                mirror=mirror or None)
        if SHARED_EMBEDDERS > 0:
            _shared_embedders[key] = embedder
            _shared_embedders.move_to_end(key)
        while len(_shared_embedders) > max(0, SHARED_EMBEDDERS):
            _shared_embedders.popitem(last=False)
    return embedder


def release_shared_embedders() -> int:
    """Forget every shared embedder, so that their networks are freed.

    A run that is using one keeps it until the run ends (its network is
    not taken away from under it); the next :func:`shared_embedder` builds
    a new one.

    Returns
    -------
    int
        How many embedders were released.
    """
    with _shared_lock:
        released = list(_shared_embedders.values())
        _shared_embedders.clear()
    count = len(released)
    while released:
        released.pop().close_cache()
    # Keras models hold reference cycles: free them now, not sometime.
    gc.collect()
    return count


def embedding_tables(table: Table, result: EmbeddingResult, size: int,
                     model: Optional[str] = None,
                     weights: Optional[str] = None):
    """Split `table` into embedded rows (with the vectors) and skipped rows.

    The input table is not changed; both outputs keep the rows' ids. Each
    embedding column records the backbone (``attributes["deepimage-model"]``)
    and any weights file other than ImageNet's (``"deepimage-weights"``), so
    later widgets know whether the ImageNet head applies.
    """
    embedded_mask = np.array([v is not None for v in result.vectors],
                             dtype=bool)
    embedded = skipped = None
    if embedded_mask.any():
        names = get_unique_names(table.domain, [f"n{i}" for i in range(size)])
        features = [ContinuousVariable(name) for name in names]
        for var in features:
            var.attributes["hidden"] = True
            if model is not None:
                var.attributes["deepimage-model"] = model
            if weights:
                var.attributes["deepimage-weights"] = weights
        domain = Domain(table.domain.attributes + tuple(features),
                        table.domain.class_vars, table.domain.metas)
        embedded = table[embedded_mask].transform(domain)
        vectors = np.vstack([v for v in result.vectors if v is not None])
        with embedded.unlocked(embedded.X):
            embedded.X[:, len(table.domain.attributes):] = vectors
        embedded.name = "Embedded images"
    n_skipped = int((~embedded_mask).sum())
    if n_skipped:
        reason_var = StringVariable(
            get_unique_names(table.domain, "Skip reason"))
        domain = Domain(table.domain.attributes, table.domain.class_vars,
                        table.domain.metas + (reason_var,))
        skipped = table[~embedded_mask].transform(domain)
        reasons = [result.skipped.get(i, "not embedded")
                   for i in np.flatnonzero(~embedded_mask)]
        with skipped.unlocked(skipped.metas):
            skipped.metas[:, -1] = reasons
        skipped.name = "Skipped images"
    return embedded, skipped, n_skipped
