"""Anomaly detection learned from normal images only, with a heatmap.

Two standard methods on the patch features of a pretrained network:

* **PatchCore** (Roth et al., CVPR 2022): every position of two
  feature maps (named in the backbone registry) is a patch feature; a
  greedy (k-center) coreset of the normal images' patches is the memory
  bank, and a patch's anomaly is its distance
  to the nearest patch in the bank (scikit-learn's ``NearestNeighbors``);
* **PaDiM** (Defard et al., 2020): a Gaussian per patch position, fitted on
  a random subset of the feature channels; a patch's anomaly is its
  Mahalanobis distance to the Gaussian of its position.

Each method reads the feature maps the registry names for it
(:meth:`~orangecontrib.deepimage.backbones.Backbone.anomaly_features`),
and a model keeps the names of those it was fitted on.

An image's anomaly map is its patch anomalies upsampled to the image's own
size and smoothed; its score is the mean of the map's highest 1 %
(:data:`SCORE_TOP_FRACTION`). The threshold is a high
quantile of the scores of normal images that were held out of the model, or,
with a few labelled anomalies, the one that separates them best::

    >>> from orangecontrib.deepimage import AnomalyLearner
    >>> model = AnomalyLearner(method="patchcore")(normal_table)
    >>> model.score(["part1.png", "part2.png"])        # one number each
    >>> model.anomaly_map(["part1.png"])[0].shape      # the image's size
    >>> scored = model(table)   # + "Anomaly score" and "Anomalous" columns

Images are streamed in batches (decoded in worker threads), so memory does
not grow with the number of images, and the memory bank never holds more
than ``memory_size`` patches however many normal images there are.
"""
import io
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from Orange.data import ContinuousVariable, DiscreteVariable, Domain, Table
from Orange.data.util import get_unique_names

from orangecontrib.deepimage.backbones import Backbone, get_backbone
from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.images import (
    ImageSkipped, image_paths, iter_image_batches, read_image_bytes,
    require_image_column)

__all__ = ["AnomalyLearner", "AnomalyModel", "AnomalyResult",
           "greedy_coreset", "METHODS"]

#: The methods, with a name and a sentence for the user.
METHODS = {
    "patchcore": ("PatchCore", "distance of each patch to the nearest "
                               "normal patch in a memory bank"),
    "padim": ("PaDiM", "Mahalanobis distance of each patch to a Gaussian "
                       "of the normal patches at its position"),
}

Progress = Callable[[float], None]
PathsOrTable = Union[Table, Sequence[Optional[str]]]

#: Smoothing of the anomaly map, in pixels of the network's input (as in
#: PatchCore, sigma 4 at 224 pixels).
SMOOTHING_SIGMA = 4.0
#: An image's score is the mean of this fraction of its smoothed map's
#: highest values (at the network's input size): steadier than the single
#: maximum on textures whose normal variety makes isolated peaks.
SCORE_TOP_FRACTION = 0.01
#: Channels of the random projection used to choose the coreset.
CORESET_PROJECTION = 128
#: PaDiM's ridge: added to its covariances, times their mean variance.
PADIM_RIDGE = 0.01


@dataclass
class AnomalyResult:
    """Scores (and maps) of a sequence of images, in input order.

    Attributes
    ----------
    scores : numpy.ndarray
        One score per input, higher is more anomalous; NaN where skipped.
    maps : list of numpy.ndarray or None
        When asked for: one ``(height, width)`` float32 map per input at
        the image's own size, None where skipped.
    skipped : dict
        Input position -> why the image was skipped.
    """
    scores: np.ndarray
    maps: Optional[List[Optional[np.ndarray]]] = None
    skipped: Dict[int, str] = field(default_factory=dict)


# --- the coreset --------------------------------------------------------

def greedy_coreset(features: np.ndarray, n: int, random_state=0,
                   callback: Optional[Callable[[], None]] = None
                   ) -> np.ndarray:
    """Choose `n` rows of `features` by greedy k-center selection.

    Starting from a random row, each step adds the row farthest from those
    chosen so far (PatchCore's coreset). Distances are measured after a
    Gaussian random projection to :data:`CORESET_PROJECTION` dimensions, as
    in PatchCore, when the features have more.

    Parameters
    ----------
    features : numpy.ndarray
        ``(n_rows, n_features)``.
    n : int
        How many rows to choose.
    random_state : int
        Seeds the first row and the projection.
    callback : callable, optional
        Called every few hundred steps; it may raise to stop.

    Returns
    -------
    numpy.ndarray
        Indices of the chosen rows, in the order they were chosen.
    """
    n_rows = len(features)
    if n >= n_rows:
        return np.arange(n_rows)
    if n < 1:
        raise ValueError(f"n must be positive. Received: n={n}")
    rng = np.random.default_rng(random_state)
    points = np.asarray(features, dtype=np.float32)
    if points.shape[1] > CORESET_PROJECTION:
        from sklearn.random_projection import GaussianRandomProjection
        projection = GaussianRandomProjection(
            CORESET_PROJECTION, random_state=int(rng.integers(2 ** 31)))
        points = projection.fit_transform(points).astype(np.float32)
    squares = np.einsum("ij,ij->i", points, points)
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = rng.integers(n_rows)
    nearest = np.full(n_rows, np.inf, dtype=np.float32)
    for step in range(n):
        if step:
            chosen[step] = int(np.argmax(nearest))
        center = points[chosen[step]]
        distance = squares - 2 * (points @ center) + squares[chosen[step]]
        np.minimum(nearest, distance, out=nearest)
        if callback is not None and step % 256 == 255:
            callback()
    return chosen


# --- the network --------------------------------------------------------

class _PatchNetwork:
    """A backbone cut at two feature maps: pixels -> patch features.

    Each map is averaged over 3×3 neighbourhoods (PatchCore's local
    aggregation), brought to `grid` (by area averaging, i.e. adaptive
    average pooling, when it is larger, bilinearly when smaller; () for
    the first map's size) and the two are concatenated:
    ``(batch, height, width, channels)`` float32. `layers` and `grid`
    default to the backbone's ``anomaly_layers`` and ``anomaly_grid``.
    """

    def __init__(self, backbone: Backbone, weights: Optional[str] = None,
                 layers: Optional[Sequence[str]] = None,
                 grid: Optional[Sequence[int]] = None):
        layers = tuple(backbone.anomaly_layers if layers is None
                       else layers)
        if len(layers) != 2:
            raise InvalidInput(
                f"{backbone.name} has no feature maps for anomaly "
                f"detection; use another backbone")
        self.backbone = backbone
        self.weights = weights
        self.layers = layers
        self.grid_size = tuple(backbone.anomaly_grid if grid is None
                               else grid)
        self._predict = None
        self._lock = threading.Lock()
        self.grid: Optional[Tuple[int, int]] = None
        self.n_channels = 0

    def load(self):
        with self._lock:
            if self._predict is None:
                self._build()

    def _build(self):
        import keras
        import tensorflow as tf
        from orangecontrib.deepimage.device import preferred_dtype_policy
        from orangecontrib.deepimage.preprocessing import ImagePreprocessing

        backbone = self.backbone
        height, width = backbone.input_size
        # The policy goes to each layer built, never to Keras' global one.
        policy = preferred_dtype_policy()
        network = backbone.build(self.weights, dtype=policy)
        maps = [network.get_layer(name).output for name in self.layers]
        trunk = keras.Model(network.input, maps)
        pixels = keras.Input((height, width, 3), name="pixels")
        preprocessed = ImagePreprocessing(backbone.preprocessing,
                                          name="preprocessing",
                                          dtype=policy)(pixels)
        model = keras.Model(pixels, trunk(preprocessed),
                            name=f"{backbone.key}_patches")
        first = model.outputs[0]
        grid = self.grid_size or (int(first.shape[1]), int(first.shape[2]))
        self.grid = grid
        self.n_channels = sum(int(m.shape[-1]) for m in model.outputs)
        sizes = [(int(m.shape[1]), int(m.shape[2])) for m in model.outputs]

        def to_grid(feature_map, size):
            if size == grid:
                return feature_map
            method = "area" if size[0] >= grid[0] and size[1] >= grid[1] \
                else "bilinear"
            return tf.image.resize(feature_map, grid, method=method)

        @tf.function(input_signature=[
            tf.TensorSpec((None, height, width, 3), tf.uint8)])
        def predict(batch):
            maps = model(batch, training=False)
            maps = [to_grid(tf.nn.avg_pool2d(tf.cast(m, tf.float32), 3, 1,
                                             "SAME"), size)
                    for m, size in zip(maps, sizes)]
            return tf.concat(maps, axis=-1)

        self._predict = predict

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.load()
        return self._predict(pixels).numpy()


_shared_networks: Dict[Tuple, _PatchNetwork] = {}
_shared_lock = threading.Lock()


def shared_patch_network(backbone: Backbone, weights: Optional[str] = None,
                         layers: Optional[Sequence[str]] = None,
                         grid: Optional[Sequence[int]] = None
                         ) -> _PatchNetwork:
    """The patch network of `backbone` at `layers` pooled to `grid`
    (default: its ``anomaly_layers`` and ``anomaly_grid``), built once and
    then reused.

    The network is never trained, so learners and models share it (as
    embedders are, see
    :func:`~orangecontrib.deepimage.embedding.shared_embedder`).
    """
    layers = tuple(backbone.anomaly_layers if layers is None else layers)
    grid = tuple(backbone.anomaly_grid if grid is None else grid)
    key = (backbone.key, layers, grid, weights or None)
    with _shared_lock:
        if key not in _shared_networks:
            _shared_networks[key] = _PatchNetwork(
                backbone, weights or None, layers, grid)
        return _shared_networks[key]


def _image_size(path: str) -> Tuple[int, int]:
    """(height, width) of an upright image, from its header."""
    from PIL import Image
    image = Image.open(io.BytesIO(read_image_bytes(path).data))
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        orientation = 1
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _iter_features(network: _PatchNetwork, paths, batch_size, workers,
                   progress: Optional[Progress] = None, total=None,
                   done=0):
    """Yield (indices, patch features, skipped) per batch of `paths`."""
    size = network.backbone.input_size[::-1]
    total = total or len(paths)
    batches = iter_image_batches(paths, size, batch_size, workers)
    try:
        for batch, _ in batches:
            features = network(batch.pixels) if len(batch.indices) \
                else None
            yield batch.indices, features, batch.skipped
            done += len(batch.indices) + len(batch.skipped)
            if progress is not None:
                progress(done / max(total, 1))
    finally:
        batches.close()


# --- the learner --------------------------------------------------------

class AnomalyLearner:
    """Learn what normal images look like; see the module's docstring.

    Parameters
    ----------
    backbone : str
        A key of the backbone registry whose entry names two feature maps
        (``anomaly_layers``; PaDiM's may differ, ``padim_layers``);
        SqueezeNet works offline.
    method : str
        ``"patchcore"`` or ``"padim"``.
    coreset : float
        PatchCore: the fraction of the normal patches kept in the memory
        bank (0 < coreset <= 1), at most `memory_size` patches.
    memory_size : int
        PatchCore: the most patches the memory bank holds, however many
        normal images there are.
    n_features : int
        PaDiM: how many randomly chosen feature channels the Gaussians use.
    ridge : float
        PaDiM: added to each covariance's diagonal, times its mean
        variance, so that few images still give a usable Gaussian.
    normal_value : str, optional
        When the table has a class: the value of the normal images. The
        other rows are used only to choose the threshold. Without it, a
        table with a class uses its rows whose value is "normal", "good" or
        "ok" when there is such a value, else all rows are normal.
    quantile : float
        Without labelled anomalies the threshold is this quantile of the
        scores of the held-out normal images.
    calibration : float
        The fraction of normal images held out of the model to set the
        threshold (only when there are at least five).
    random_state : int
        Seeds the coreset, the channels and the held-out images.
    weights : str, optional
        A weights file for the backbone instead of ImageNet's.
    image_column : str, optional
        The image column's name (default: the first one).
    batch_size, workers : int
        Images per step of the network, and decoding threads.
    """
    name = "Image anomalies"

    def __init__(self, backbone: str = "squeezenet",
                 method: str = "patchcore", coreset: float = 0.1,
                 memory_size: int = 20000, n_features: int = 100,
                 ridge: float = PADIM_RIDGE,
                 normal_value: Optional[str] = None, quantile: float = 0.99,
                 calibration: float = 0.2, random_state: int = 0,
                 weights: Optional[str] = None,
                 image_column: Optional[str] = None, batch_size: int = 16,
                 workers: int = 2):
        if method not in METHODS:
            raise InvalidInput(f"Unknown method. Received: method={method!r};"
                               f" expected one of {sorted(METHODS)}")
        if not 0 < coreset <= 1:
            raise InvalidInput(f"coreset must be in (0, 1]. Received: "
                               f"coreset={coreset}")
        if memory_size < 1 or n_features < 1 or batch_size < 1:
            raise InvalidInput("memory_size, n_features and batch_size must "
                               "be positive")
        if not 0 < quantile <= 1 or not 0 <= calibration < 1:
            raise InvalidInput("quantile must be in (0, 1] and calibration "
                               "in [0, 1)")
        self.backbone = get_backbone(backbone)
        self.feature_layers, self.feature_grid = \
            self.backbone.anomaly_features(method)
        if len(self.feature_layers) != 2:
            raise InvalidInput(f"{self.backbone.name} has no feature maps "
                               f"for anomaly detection; use another backbone")
        self.method = method
        self.coreset = coreset
        self.memory_size = memory_size
        self.n_features = n_features
        self.ridge = ridge
        self.normal_value = normal_value
        self.quantile = quantile
        self.calibration = calibration
        self.random_state = random_state
        self.weights = weights
        self.image_column = image_column
        self.batch_size = batch_size
        self.workers = workers

    def __call__(self, data: PathsOrTable,
                 progress_callback: Optional[Progress] = None
                 ) -> "AnomalyModel":
        return self.fit(data, progress_callback)

    # --- which rows are normal -----------------------------------------

    def split(self, data: PathsOrTable
              ) -> Tuple[List[Optional[str]], np.ndarray, Optional[str]]:
        """Return (paths, is_normal, image column name) of `data`.

        Raises
        ------
        InvalidInput
            When the normal value is not a value of the class, or there is
            no image column or no normal image.
        """
        if not isinstance(data, Table):
            paths = list(data)
            return paths, np.ones(len(paths), bool), None
        try:
            column = require_image_column(data, self.image_column)
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        paths = image_paths(data, column)
        class_var = data.domain.class_var
        is_normal = np.ones(len(paths), bool)
        if class_var is not None and class_var.is_discrete:
            normal = self.normal_value
            if normal is None:
                normal = next((value for value in class_var.values
                               if value.lower() in ("normal", "good", "ok")),
                              None)
            elif normal not in class_var.values:
                raise InvalidInput(
                    f"'{normal}' is not a value of {class_var.name}; "
                    f"choose one of {', '.join(class_var.values)}")
            if normal is not None:
                y = data.get_column(class_var)
                is_normal = y == class_var.values.index(normal)
        if not is_normal.any():
            raise InvalidInput("There are no normal images to learn from.")
        return paths, is_normal, column.name

    # --- fitting --------------------------------------------------------

    def fit(self, data: PathsOrTable,
            progress_callback: Optional[Progress] = None) -> "AnomalyModel":
        """Fit on the normal images of `data` (a table or paths).

        Parameters
        ----------
        data : Orange.data.Table or sequence of str
        progress_callback : callable, optional
            ``callback(fraction)``; it may raise (e.g.
            :class:`~orangecontrib.deepimage.errors.Cancelled`) to stop.

        Raises
        ------
        InvalidInput
            When no normal image can be read.
        """
        paths, is_normal, column_name = self.split(data)
        rng = np.random.default_rng(self.random_state)
        normal = np.flatnonzero(is_normal)
        n_held = int(round(self.calibration * len(normal))) \
            if len(normal) >= 5 else 0
        held = np.sort(rng.choice(normal, n_held, replace=False)) \
            if n_held else np.zeros(0, int)
        train = np.setdiff1d(normal, held)
        anomalous = np.flatnonzero(~is_normal)
        progress = progress_callback or (lambda fraction: None)

        network = shared_patch_network(self.backbone, self.weights,
                                       self.feature_layers, self.feature_grid)
        model = AnomalyModel(self.backbone.key, self.method, self.weights,
                             column_name, self.batch_size, self.workers,
                             layers=self.feature_layers,
                             layer_grid=self.feature_grid)
        model._network = network
        n_total = len(train) + len(held) + len(anomalous) \
            + (len(train) if not n_held else 0)
        fit_share = len(train) / n_total

        def fit_progress(fraction):
            progress(fit_share * fraction)

        skipped = {}
        if self.method == "patchcore":
            self._fit_patchcore(model, network, [paths[i] for i in train],
                                train, skipped, fit_progress, rng)
        else:
            self._fit_padim(model, network, [paths[i] for i in train],
                            train, skipped, fit_progress, rng)
        if len(skipped) == len(train):
            raise InvalidInput("None of the normal images could be read: "
                               + next(iter(skipped.values()), ""))

        # The threshold, from images the model has not seen when there are
        # enough normal ones, else from the training images themselves.
        normal_for_threshold = held if n_held else train
        rows = np.concatenate([normal_for_threshold, anomalous]).astype(int)

        def score_progress(fraction):
            progress(fit_share + (1 - fit_share) * fraction)

        result = model.evaluate([paths[i] for i in rows],
                                callback=score_progress)
        for position, reason in result.skipped.items():
            skipped.setdefault(int(rows[position]), reason)
        n_norm = len(normal_for_threshold)
        normal_scores = result.scores[:n_norm]
        anomaly_scores = result.scores[n_norm:]
        normal_scores = normal_scores[np.isfinite(normal_scores)]
        anomaly_scores = anomaly_scores[np.isfinite(anomaly_scores)]
        model.threshold = choose_threshold(normal_scores, anomaly_scores,
                                           self.quantile)
        model.normal_scores = normal_scores
        model.anomaly_scores = anomaly_scores
        model.skipped = dict(sorted(skipped.items()))
        model.n_train = int(np.sum([i not in skipped for i in train]))
        return model

    def _fit_patchcore(self, model, network, paths, rows, skipped,
                       progress, rng):
        bank, target = None, None
        n_images = 0

        def reduce(pool, size):
            chosen = greedy_coreset(pool, size, int(rng.integers(2 ** 31)),
                                    callback=lambda: progress(
                                        n_done[0] / max(len(paths), 1)))
            return pool[chosen]

        n_done = [0]
        pending = []
        n_pending = 0
        for indices, features, batch_skipped in _iter_features(
                network, paths, self.batch_size, self.workers):
            for position, reason in batch_skipped:
                skipped[int(rows[position])] = reason
            n_done[0] += len(indices) + len(batch_skipped)
            if features is not None:
                n_images += len(indices)
                patches = features.reshape(-1, features.shape[-1])
                if target is None:
                    per_image = features.shape[1] * features.shape[2]
                    target = self._bank_size(len(paths) * per_image)
                pending.append(patches)
                n_pending += len(patches)
                # Merge and reduce: the pool never exceeds twice the bank.
                pool_size = n_pending + (0 if bank is None else len(bank))
                if pool_size > 2 * target:
                    pool = np.concatenate(
                        pending if bank is None else [bank, *pending])
                    pending, n_pending = [], 0
                    bank = reduce(pool, target)
            progress(n_done[0] / max(len(paths), 1))
        if target is None:
            return
        per_image = network.grid[0] * network.grid[1]
        target = self._bank_size(n_images * per_image)
        pool = np.concatenate(pending if bank is None else [bank, *pending]) \
            if pending else bank
        bank = reduce(pool, target)
        model.set_memory_bank(bank, network.grid)

    def _bank_size(self, n_patches):
        return max(1, min(self.memory_size,
                          int(math.ceil(self.coreset * n_patches))))

    def _fit_padim(self, model, network, paths, rows, skipped, progress,
                   rng):
        channels = None
        total = total_outer = None
        n = 0
        for indices, features, batch_skipped in _iter_features(
                network, paths, self.batch_size, self.workers, progress):
            for position, reason in batch_skipped:
                skipped[int(rows[position])] = reason
            if features is None:
                continue
            if channels is None:
                n_channels = features.shape[-1]
                model.n_channels = int(n_channels)
                channels = np.sort(rng.choice(
                    n_channels, min(self.n_features, n_channels),
                    replace=False))
                positions = features.shape[1] * features.shape[2]
                total = np.zeros((positions, len(channels)))
                total_outer = np.zeros((positions, len(channels),
                                        len(channels)))
            x = features[..., channels].reshape(
                len(indices), -1, len(channels)).astype(np.float64)
            total += x.sum(axis=0)
            total_outer += np.einsum("bpi,bpj->pij", x, x)
            n += len(indices)
        if n == 0:
            return
        mean = total / n
        covariance = (total_outer - n * np.einsum("pi,pj->pij", mean, mean)) \
            / max(n - 1, 1)
        # PaDiM's ridge, relative to the features' scale (SqueezeNet's
        # activations are hundreds, ResNet's about one).
        scale = np.trace(covariance, axis1=1, axis2=2) / len(channels)
        covariance += (self.ridge * np.maximum(scale, 1e-12))[:, None, None] \
            * np.eye(len(channels))
        model.set_gaussians(mean, np.linalg.inv(covariance), channels,
                            network.grid)


def choose_threshold(normal: np.ndarray, anomalous: np.ndarray,
                     quantile: float = 0.99) -> float:
    """The threshold between normal and anomalous scores.

    Without anomalies: the `quantile` of the normal scores. With them: the
    midpoint between neighbouring scores that maximises balanced accuracy
    (Youden's J), the larger midpoint on ties.
    """
    normal = np.asarray(normal, float)
    anomalous = np.asarray(anomalous, float)
    if len(normal) == 0 and len(anomalous) == 0:
        return float("nan")
    if len(anomalous) == 0:
        return float(np.quantile(normal, quantile))
    if len(normal) == 0:
        return float(np.min(anomalous))
    values = np.unique(np.concatenate([normal, anomalous]))
    candidates = np.concatenate(
        [[values[0] - 1], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    tpr = (anomalous[None, :] > candidates[:, None]).mean(axis=1)
    tnr = (normal[None, :] <= candidates[:, None]).mean(axis=1)
    j = tpr + tnr
    best = np.flatnonzero(j == j.max())[-1]
    return float(candidates[best])


# --- the model ----------------------------------------------------------

class AnomalyModel:
    """What normal images look like; see :class:`AnomalyLearner`.

    Attributes
    ----------
    threshold : float
        Images scoring above it are anomalous.
    memory_bank : numpy.ndarray or None
        PatchCore: ``(n_patches, n_channels)`` normal patch features.
    feature_layers, feature_grid : tuple
        The backbone's feature maps the model was fitted on and the grid
        they are pooled to (() for the first map's size); by default the
        registry's for `method`.
    n_channels : int or None
        The channels of those patch features (None when unknown).
    normal_scores, anomaly_scores : numpy.ndarray
        The scores the threshold was chosen from.
    skipped : dict
        Row of the training data -> why its image was not used.
    """

    def __init__(self, backbone: str, method: str,
                 weights: Optional[str] = None,
                 image_column: Optional[str] = None,
                 batch_size: int = 16, workers: int = 2,
                 layers: Optional[Sequence[str]] = None,
                 layer_grid: Optional[Sequence[int]] = None):
        self.backbone_key = backbone
        self.method = method
        default_layers, default_grid = \
            get_backbone(backbone).anomaly_features(method)
        self.feature_layers = tuple(default_layers if layers is None
                                    else layers)
        self.feature_grid = tuple(default_grid if layer_grid is None
                                  else layer_grid)
        self.weights = weights
        self.image_column = image_column
        self.batch_size = batch_size
        self.workers = workers
        self.threshold = float("nan")
        self.grid: Optional[Tuple[int, int]] = None
        self.memory_bank: Optional[np.ndarray] = None
        self._neighbours = None
        self.mean = self.precision = self.channels = None
        self.normal_scores = np.zeros(0)
        self.anomaly_scores = np.zeros(0)
        self.skipped: Dict[int, str] = {}
        self.n_train = 0
        self.n_channels: Optional[int] = None
        self._network: Optional[_PatchNetwork] = None

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.backbone_key)

    @property
    def name(self) -> str:
        return METHODS[self.method][0]

    def set_memory_bank(self, bank: np.ndarray, grid):
        from sklearn.neighbors import NearestNeighbors
        self.memory_bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.n_channels = int(self.memory_bank.shape[1])
        self.grid = tuple(grid)
        self._neighbours = NearestNeighbors(n_neighbors=1).fit(
            self.memory_bank)

    def set_gaussians(self, mean, precision, channels, grid):
        self.mean = mean.astype(np.float32)
        self.precision = precision.astype(np.float32)
        self.channels = np.asarray(channels)
        self.grid = tuple(grid)

    # --- pickling: the network is rebuilt from the registry -------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_network"] = None
        return state

    def __setstate__(self, state):
        if "feature_layers" not in state:
            # Pickled before each method had its own feature maps: both
            # were fitted on the registry's shared anomaly_layers.
            backbone = get_backbone(state["backbone_key"])
            bank = state.get("memory_bank")
            state = {**state,
                     "feature_layers": tuple(backbone.anomaly_layers),
                     "feature_grid": tuple(backbone.anomaly_grid),
                     "n_channels": None if bank is None
                     else int(bank.shape[1])}
        self.__dict__.update(state)

    @property
    def network(self) -> _PatchNetwork:
        if self._network is None:
            self._network = shared_patch_network(
                self.backbone, self.weights, self.feature_layers,
                self.feature_grid)
        return self._network

    # --- scoring --------------------------------------------------------

    def patch_scores(self, features: np.ndarray) -> np.ndarray:
        """``(batch, h, w)`` anomaly of each patch of `features`.

        Raises
        ------
        InvalidInput
            When `features` are not of the shape the model was fitted on.
        """
        batch, height, width, channels = features.shape
        if self.method == "patchcore":
            fitted = self.memory_bank.shape[1] == channels
        else:
            fitted = self.mean.shape[0] == height * width \
                and self.n_channels in (None, channels) \
                and int(self.channels.max()) < channels
        if not fitted:
            raise InvalidInput(
                f"The model was fitted on other features of "
                f"{self.backbone.name} than {', '.join(self.feature_layers)} "
                f"give; fit it again")
        if self.method == "patchcore":
            distances, _ = self._neighbours.kneighbors(
                features.reshape(-1, channels))
            return distances.reshape(batch, height, width)
        x = features[..., self.channels].reshape(batch, height * width, -1)
        diff = x - self.mean[None]
        squared = np.einsum("bpi,pij,bpj->bp", diff, self.precision, diff)
        return np.sqrt(np.maximum(squared, 0)).reshape(batch, height, width)

    def _smoothed(self, grid_scores: np.ndarray) -> np.ndarray:
        """Patch scores upsampled to the network's input and smoothed."""
        from scipy.ndimage import gaussian_filter
        from skimage.transform import resize
        size = self.backbone.input_size
        upsampled = resize(grid_scores.astype(np.float64), size, order=1,
                           mode="edge", anti_aliasing=False)
        return gaussian_filter(upsampled, SMOOTHING_SIGMA, mode="nearest")

    def evaluate(self, data: PathsOrTable, maps: bool = False,
                 callback: Optional[Progress] = None,
                 max_side: Optional[int] = None) -> AnomalyResult:
        """Score the images of `data`, and their anomaly maps if asked.

        Parameters
        ----------
        data : Orange.data.Table or sequence of str
        maps : bool
            Also return each image's anomaly map at its own size.
        callback : callable, optional
            ``callback(fraction)`` after each batch; it may raise to stop.
        max_side : int, optional
            Shrink the maps to fit this many pixels (keeping the image's
            aspect ratio), e.g. for thumbnails of many large images.
        """
        from skimage.transform import resize
        paths = self.image_paths_of(data)
        scores = np.full(len(paths), np.nan)
        result = AnomalyResult(scores, [None] * len(paths) if maps else None)
        for indices, features, skipped in _iter_features(
                self.network, paths, self.batch_size, self.workers,
                callback):
            result.skipped.update(skipped)
            if features is None:
                continue
            for index, grid in zip(indices, self.patch_scores(features)):
                smooth = self._smoothed(grid)
                scores[index] = top_mean(smooth)
                if maps:
                    try:
                        size = _image_size(paths[index])
                    except ImageSkipped as error:
                        result.skipped[index] = str(error)
                        scores[index] = np.nan
                        continue
                    if max_side is not None and max(size) > max_side:
                        scale = max_side / max(size)
                        size = tuple(max(1, round(side * scale))
                                     for side in size)
                    result.maps[index] = resize(
                        smooth, size, order=1, mode="edge",
                        anti_aliasing=False).astype(np.float32)
        result.skipped = dict(sorted(result.skipped.items()))
        return result

    def score(self, data: PathsOrTable,
              callback: Optional[Progress] = None) -> np.ndarray:
        """One score per image (higher is more anomalous; NaN if skipped)."""
        return self.evaluate(data, callback=callback).scores

    def anomaly_map(self, data: PathsOrTable,
                    callback: Optional[Progress] = None
                    ) -> List[Optional[np.ndarray]]:
        """One ``(height, width)`` map per image at its size (None if
        skipped); its highest values give the image's score."""
        return self.evaluate(data, maps=True, callback=callback).maps

    def is_anomalous(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is above the threshold."""
        with np.errstate(invalid="ignore"):
            return np.asarray(scores) > self.threshold

    def image_paths_of(self, data: PathsOrTable) -> List[Optional[str]]:
        if not isinstance(data, Table):
            return list(data)
        try:
            column = require_image_column(data, self.image_column)
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        return image_paths(data, column)

    # --- Orange ---------------------------------------------------------

    def __call__(self, data: Table, callback: Optional[Progress] = None,
                 result: Optional[AnomalyResult] = None) -> Table:
        """`data` with an anomaly score and an "Anomalous" (No/Yes) column.

        Like Orange's Outliers widget, the two columns are new metas of a
        new domain; the input is not changed. Rows whose image was skipped
        have unknown values. `result` (from :meth:`evaluate` on `data`)
        saves scoring again.
        """
        if not isinstance(data, Table):
            raise InvalidInput("An anomaly model adds columns to a table; "
                               "use score() for a list of paths.")
        if result is None:
            result = self.evaluate(data, callback=callback)
        return scored_table(data, result.scores, self.threshold)

    def __repr__(self):
        return (f"AnomalyModel({self.name}, backbone={self.backbone_key!r}, "
                f"threshold={self.threshold:.4g})")


def top_mean(anomaly_map: np.ndarray,
             fraction: float = SCORE_TOP_FRACTION) -> float:
    """The mean of the `fraction` of `anomaly_map`'s highest values."""
    values = np.ravel(anomaly_map)
    k = max(1, int(round(fraction * values.size)))
    return float(np.partition(values, values.size - k)[-k:].mean())


def scored_table(data: Table, scores: np.ndarray, threshold: float) -> Table:
    """`data` with "Anomaly score" and "Anomalous" metas (a new domain)."""
    names = [var.name for var in data.domain.variables + data.domain.metas]
    score_name, flag_name = get_unique_names(names, ["Anomaly score",
                                                     "Anomalous"])
    score_var = ContinuousVariable(score_name)
    flag_var = DiscreteVariable(flag_name, values=("No", "Yes"))
    domain = Domain(data.domain.attributes, data.domain.class_vars,
                    data.domain.metas + (score_var, flag_var))
    table = data.transform(domain)
    scores = np.asarray(scores, float)
    with np.errstate(invalid="ignore"):
        flags = np.where(np.isnan(scores), np.nan,
                         (scores > threshold).astype(float))
    with table.unlocked(table.metas):
        table.metas[:, -2] = scores
        table.metas[:, -1] = flags
    return table
