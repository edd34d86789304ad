"""Clusters of images from their embeddings, cluster names, near-duplicates.

Everything here works on embeddings (one row per image) and has no Qt::

    >>> from orangecontrib.deepimage.clustering import cluster_table
    >>> clustered, duplicates = cluster_table(embedded)  # from ImageEmbedder

or, with the names, the near-duplicates and a t-SNE map that Image Clusters
shows, and progress::

    >>> from orangecontrib.deepimage.clustering import (
    ...     cluster_job, embedding_matrix)
    >>> job = cluster_job(embedding_matrix(embedded), names_table=embedded,
    ...                   want_map=True, progress=print)
    >>> job.names(), job.duplicates, job.map.shape

Embeddings are L2-normalised before anything else. A CNN embedding's length
grows with how much of the features an image excites (contrast, size of the
object, clutter), while what the image shows is in the embedding's direction;
images are therefore compared by angle (cosine), and on unit vectors
Euclidean distance, k-means and Ward's criterion all follow the angle.

Large sets stay quick: the number of clusters is chosen, and hierarchical
trees are built, on a seeded sample of :data:`SAMPLE_SIZE` images; k-means
then fits all images and the hierarchical methods add each remaining image
to the cluster its linkage criterion prefers. Per-image silhouettes and
near-duplicates are exact and computed in chunks of matrix products, so
memory stays bounded.
"""
import logging
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
# Imported here, not when clustering starts: an import in the worker thread
# would hold the GIL and stall the GUI.
from openTSNE import TSNE
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning

from Orange.data import (
    ContinuousVariable, DiscreteVariable, Domain, StringVariable, Table,
    Variable)
from Orange.data.util import get_unique_names

from orangecontrib.deepimage.embedding import shared_embedder
from orangecontrib.deepimage.errors import Cancelled
from orangecontrib.deepimage.images import (
    ImageSkipped, find_image_column, image_paths, load_image, paths_of)

__all__ = [
    "METHODS", "ClusteringResult", "ClusteringPieces", "ClusteringCache",
    "normalize_rows",
    "cluster_range", "cluster_embeddings", "silhouette_samples",
    "name_clusters", "typical_rows", "near_duplicates", "photo_features",
    "same_photo", "PhotoFeatures", "embedding_columns",
    "embedding_matrix", "recorded_model", "imagenet_probabilities",
    "add_cluster_columns", "duplicates_table", "cluster_table",
    "map_embeddings", "cluster_names", "unnamed_rows", "cluster_job",
]

log = logging.getLogger(__name__)

#: Clustering methods: key -> name shown to the user.
METHODS: Dict[str, str] = {
    "kmeans": "k-Means",
    "ward": "Hierarchical (Ward)",
    "cosine": "Hierarchical (cosine, average linkage)",
}
#: The automatic choice tries 2 .. min(MAX_CLUSTERS, n - 1) clusters: more
#: than ten groups are hard to look through, and silhouettes of many tiny
#: clusters are not a sound guide.
MIN_CLUSTERS, MAX_CLUSTERS = 2, 10
#: Images used to choose the number of clusters and to build hierarchical
#: trees; sets at most this large are clustered exactly.
SAMPLE_SIZE = 2000
#: Clusters are named from at most this many of their most typical images
#: (highest silhouette): naming 10,000 images runs the network on at most
#: ``NAMING_SAMPLE * n_clusters`` of them.
NAMING_SAMPLE = 25
#: k-means restarts; fixed so that results do not depend on sklearn defaults.
KMEANS_N_INIT = 3
#: Default cosine distance below which two images may be near-duplicates.
#: Measured on the tutorial photos (SqueezeNet) with copies of each made by
#: JPEG quality 60, resizing to 50 %, cropping to 90 % (centred and at a
#: corner) and brightness ±10 %: copies of one photo are at most 0.047
#: apart, but different photos of similar things (grass and gravel) come
#: as close as 0.035, so the embedding alone cannot tell them apart. Pairs
#: below this threshold are therefore confirmed on the images' pixels
#: (:data:`DUPLICATE_MIN_MATCHES`) when the images are at hand.
DUPLICATE_THRESHOLD = 0.1
#: Two images are one photo when at least this many of their ORB features
#: match under one geometric transform (a rotation, scale and shift found
#: with RANSAC) on images scaled to :data:`DUPLICATE_SIDE` pixels. Copies
#: above gave 17 or more such matches, pairs of different photos at most 8.
DUPLICATE_MIN_MATCHES = 12
DUPLICATE_SIDE = 320
DUPLICATE_FEATURES = 500
#: Memory for one chunk of a similarity matrix, in bytes.
CHUNK_BYTES = 64 * 2 ** 20
#: t-SNE maps of more images run on this many principal components.
MAP_PCA_ABOVE, MAP_PCA_COMPONENTS = 2000, 50
#: The backbone that names clusters when the data does not say which made
#: the embedding: it ships with the add-on and runs offline.
NAMING_MODEL = "squeezenet"

Progress = Callable[[float], None]


@dataclass
class ClusteringResult:
    """Clusters of a set of embeddings.

    Attributes
    ----------
    labels : numpy.ndarray
        Cluster of each image, ``0 .. n_clusters - 1``; cluster 0 is the
        largest.
    n_clusters : int
        Number of clusters (chosen, or as asked when possible).
    silhouette : numpy.ndarray
        Silhouette of each image (-1 .. 1; 0 for images alone in a cluster).
    scores : dict of int -> float
        Mean silhouette for each number of clusters that was tried.
    method : str
        A key of :data:`METHODS`.
    """
    labels: np.ndarray
    n_clusters: int
    silhouette: np.ndarray
    scores: Dict[int, float] = field(default_factory=dict)
    method: str = "kmeans"

    def sizes(self) -> np.ndarray:
        """Number of images in each cluster."""
        return np.bincount(self.labels, minlength=self.n_clusters)


# --- vectors -----------------------------------------------------------------

def normalize_rows(X) -> np.ndarray:
    """Return the rows of `X` scaled to unit length, as float32.

    Missing values become 0; rows of zeros stay zeros.
    """
    if sp.issparse(X):
        X = X.toarray()
    X = np.array(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"Embeddings must be a 2-D array. Received: "
                         f"shape={X.shape}")
    if not np.isfinite(X).all():
        np.nan_to_num(X, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    np.divide(X, norms, out=X, where=norms > 0)
    return X


def _rows_per_chunk(n_columns: int, itemsize: int = 4) -> int:
    return int(max(1, CHUNK_BYTES // max(1, n_columns * itemsize)))


def _distances(A: np.ndarray, B: np.ndarray, metric: str,
               sq_a: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """Distances between rows of A and B (both normalised)."""
    dots = A @ B.T
    if metric == "cosine":
        # 1 - cos; for unit vectors this is half the squared distance, which
        # also stays finite for rows of zeros.
        dist = 0.5 * (sq_a[:, None] + sq_b[None, :]) - dots
        np.maximum(dist, 0, out=dist)
        return dist
    dist = sq_a[:, None] + sq_b[None, :] - 2 * dots
    np.maximum(dist, 0, out=dist)
    return np.sqrt(dist, out=dist)


def _silhouette_rows(dist: np.ndarray, own: np.ndarray, onehot: np.ndarray,
                     counts: np.ndarray) -> np.ndarray:
    """Silhouettes of rows whose distances to all points are in `dist`."""
    sums = dist @ onehot
    rows = np.arange(len(own))
    own_count = counts[own]
    a = sums[rows, own] / np.maximum(own_count - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = sums / counts[None, :]
    means[rows, own] = np.inf
    b = means.min(axis=1)
    top = np.maximum(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        sil = np.where(top > 0, (b - a) / top, 0.0)
    sil[(own_count <= 1) | ~np.isfinite(b)] = 0.0
    return sil


def silhouette_samples(X: np.ndarray, labels: np.ndarray,
                       metric: str = "euclidean",
                       callback: Optional[Progress] = None) -> np.ndarray:
    """Return the silhouette of each row of normalised embeddings.

    Computed exactly, a chunk of rows at a time (no full distance matrix).

    Parameters
    ----------
    X : numpy.ndarray
        Normalised embeddings (see :func:`normalize_rows`).
    labels : numpy.ndarray
        Cluster of each row, ``0 .. k - 1``.
    metric : str
        ``"euclidean"`` or ``"cosine"`` (``1 - cos``).
    callback : callable, optional
        Called with the fraction done.

    Returns
    -------
    numpy.ndarray
        One value per row; 0 for rows alone in their cluster, and for all
        rows when there is a single cluster.
    """
    X = np.asarray(X, dtype=np.float32)
    labels = np.asarray(labels, dtype=int)
    n = len(labels)
    k = int(labels.max()) + 1 if n else 0
    if k < 2:
        return np.zeros(n)
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), labels] = 1
    counts = onehot.sum(axis=0)
    sq = np.einsum("ij,ij->i", X, X)
    result = np.empty(n)
    step = _rows_per_chunk(n)
    for start in range(0, n, step):
        end = min(n, start + step)
        dist = _distances(X[start:end], X, metric, sq[start:end], sq)
        dist[np.arange(end - start), np.arange(start, end)] = 0
        result[start:end] = _silhouette_rows(dist, labels[start:end],
                                             onehot, counts)
        if callback is not None:
            callback(end / n)
    return result


def _mean_silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    k = int(labels.max()) + 1
    if k < 2:
        return 0.0
    onehot = np.zeros((len(labels), k), dtype=np.float32)
    onehot[np.arange(len(labels)), labels] = 1
    return float(_silhouette_rows(dist, labels, onehot,
                                  onehot.sum(axis=0)).mean())


def _n_distinct(X: np.ndarray, limit: int) -> int:
    """Number of distinct rows, counted up to `limit`."""
    seen = set()
    for row in X:
        seen.add(row.tobytes())
        if len(seen) >= limit:
            break
    return len(seen)


def cluster_range(n: int) -> range:
    """Numbers of clusters the automatic choice tries for `n` images."""
    return range(MIN_CLUSTERS, max(MIN_CLUSTERS, min(MAX_CLUSTERS, n - 1)) + 1)


# --- clustering --------------------------------------------------------------

def _relabel_by_size(labels: np.ndarray) -> Tuple[np.ndarray, int]:
    """Renumber clusters 0.. from the largest; ties by first appearance."""
    _, first, inverse, counts = np.unique(
        labels, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty(len(order), dtype=int)
    rank[order] = np.arange(len(order))
    return rank[inverse.ravel()], len(order)


def _kmeans(X: np.ndarray, k: int, random_state: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=KMEANS_N_INIT,
                      random_state=random_state).fit_predict(X)


def _linkage(X: np.ndarray, method: str) -> np.ndarray:
    X = X.astype(np.float64)
    if method == "ward":
        return linkage(X, method="ward", metric="euclidean")
    # 1 - cos as half the squared distance of unit vectors (see _distances)
    return linkage(0.5 * pdist(X, "sqeuclidean"), method="average")


def _cut(tree: np.ndarray, k: int) -> np.ndarray:
    return fcluster(tree, k, criterion="maxclust") - 1


def _assign_rest(X: np.ndarray, sample: np.ndarray, sample_labels: np.ndarray,
                 method: str) -> np.ndarray:
    """Add the images outside the sample to the sample's clusters.

    Each image goes where its linkage criterion prefers: Ward, the cluster
    whose within-cluster variance grows least; average cosine linkage, the
    cluster with the smallest mean cosine distance to it, which for unit
    vectors is the one whose mean vector has the largest dot product.
    """
    labels = np.empty(len(X), dtype=int)
    labels[sample] = sample_labels
    rest = np.setdiff1d(np.arange(len(X)), sample)
    k = int(sample_labels.max()) + 1
    onehot = np.zeros((len(sample), k), dtype=np.float32)
    onehot[np.arange(len(sample)), sample_labels] = 1
    counts = onehot.sum(axis=0)
    means = (onehot.T @ X[sample]) / counts[:, None]
    sq_means = np.einsum("ij,ij->i", means, means)
    step = _rows_per_chunk(X.shape[1] + k)
    for start in range(0, len(rest), step):
        rows = rest[start:start + step]
        dots = X[rows] @ means.T
        if method == "ward":
            sq = np.einsum("ij,ij->i", X[rows], X[rows])[:, None] \
                - 2 * dots + sq_means[None, :]
            labels[rows] = np.argmin(counts / (counts + 1) * sq, axis=1)
        else:
            labels[rows] = np.argmax(dots, axis=1)
    return labels


def _metric(method: str) -> str:
    return "cosine" if method == "cosine" else "euclidean"


def cluster_embeddings(X, n_clusters: Optional[int] = None,
                       method: str = "kmeans", random_state: int = 0,
                       callback: Optional[Progress] = None
                       ) -> ClusteringResult:
    """Cluster images by their embeddings.

    Parameters
    ----------
    X : array-like of shape (n_images, n_features)
        Embeddings; they are L2-normalised first (see the module's notes).
    n_clusters : int, optional
        Number of clusters. None chooses it by the largest mean silhouette
        among :func:`cluster_range` (2 .. min(10, n - 1)).
    method : str
        ``"kmeans"`` (k-means, seeded, fixed restarts), ``"ward"``
        (agglomerative, Ward's criterion, Euclidean distance of the
        normalised vectors) or ``"cosine"`` (agglomerative, average linkage
        of cosine distances).
    random_state : int
        Seed of k-means and of the sample for large sets.
    callback : callable, optional
        Called with the fraction done; it may raise (e.g.
        :class:`~orangecontrib.deepimage.errors.Cancelled`) to stop.

    Returns
    -------
    ClusteringResult
        Fewer than three images, or images with identical embeddings, form
        one cluster with silhouettes 0. Silhouettes use Euclidean distances
        of normalised vectors, or cosine distances for ``"cosine"``.

    Raises
    ------
    ValueError
        For an unknown method or a number of clusters below 1.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown clustering method. Received: "
                         f"method={method!r}; expected one of "
                         f"{', '.join(METHODS)}")
    if n_clusters is not None and int(n_clusters) < 1:
        raise ValueError(f"The number of clusters must be at least 1. "
                         f"Received: n_clusters={n_clusters}")
    progress = callback or (lambda _: None)
    X = normalize_rows(X)
    n = len(X)
    metric = _metric(method)

    def single():
        return ClusteringResult(np.zeros(n, dtype=int), 1 if n else 0,
                                np.zeros(n), {}, method)

    if n < 3 or n_clusters == 1:
        return single()
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.choice(n, SAMPLE_SIZE, replace=False)) \
        if n > SAMPLE_SIZE else np.arange(n)
    Xs = X[sample]
    distinct = _n_distinct(Xs, MAX_CLUSTERS + 1 if n_clusters is None
                           else int(n_clusters))
    if distinct < 2:
        return single()
    tree = _linkage(Xs, method) if method != "kmeans" else None

    def fit_sample(k):
        return _kmeans(Xs, k, random_state) if tree is None else _cut(tree, k)

    scores: Dict[int, float] = {}
    sample_labels = None
    if n_clusters is None:
        ks = [k for k in cluster_range(n) if k <= distinct]
        sq = np.einsum("ij,ij->i", Xs, Xs)
        dist = _distances(Xs, Xs, metric, sq, sq)
        np.fill_diagonal(dist, 0)
        candidates = {}
        for step, k in enumerate(ks):
            candidates[k] = fit_sample(k)
            labels, _ = _relabel_by_size(candidates[k])
            scores[k] = _mean_silhouette(dist, labels)
            progress(0.6 * (step + 1) / len(ks))
        k = max(ks, key=lambda key: (scores[key], -key))
        sample_labels = candidates[k]
    else:
        k = min(int(n_clusters), distinct, n)
        if tree is not None or len(sample) == n:
            sample_labels = fit_sample(k)
        progress(0.3)

    if len(sample) == n:
        labels = sample_labels
    elif method == "kmeans":
        labels = _kmeans(X, k, random_state)
    else:
        labels = _assign_rest(X, sample, sample_labels, method)
    progress(0.7)
    labels, k = _relabel_by_size(labels)
    silhouette = silhouette_samples(
        X, labels, metric, lambda f: progress(0.7 + 0.3 * f))
    if n_clusters is not None:
        scores = {k: float(silhouette.mean())}
    return ClusteringResult(labels, k, silhouette, scores, method)


# --- names -------------------------------------------------------------------

def _probability_matrix(probabilities, n: int) -> Optional[np.ndarray]:
    """Rows of class probabilities as an (n, classes) array, NaN if unknown."""
    if probabilities is None:
        return None
    if isinstance(probabilities, np.ndarray) and probabilities.ndim == 2:
        return probabilities
    rows = list(probabilities)
    width = next((len(row) for row in rows if row is not None), 0)
    if not width:
        return None
    matrix = np.full((n, width), np.nan)
    for i, row in enumerate(rows):
        if row is not None:
            matrix[i] = row
    return matrix


def name_clusters(labels, probabilities=None, k: int = 2) -> List[str]:
    """Name clusters by the ImageNet labels that their images show most.

    Parameters
    ----------
    labels : array-like of int
        Cluster of each image (``0 .. n_clusters - 1``).
    probabilities : array-like or sequence, optional
        ImageNet class probabilities of each image: an ``(n, 1000)`` array
        or a list with None (or NaN rows) for images without them, as in
        ``ImageEmbedder.embed_paths(paths,
        with_probabilities=True).probabilities``.
    k : int
        How many labels a name has.

    Returns
    -------
    list of str
        ``"Cluster 2: tabby cat, Egyptian Mau"`` (clusters numbered from 1)
        ordered by the number of images whose top class is the label, then
        by their summed probability; just ``"Cluster 2"`` without
        probabilities.
    """
    from orangecontrib.deepimage.backbones import imagenet_labels

    labels = np.asarray(labels, dtype=int)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    matrix = _probability_matrix(probabilities, len(labels))
    names = []
    class_names = imagenet_labels()
    for cluster in range(n_clusters):
        name = f"Cluster {cluster + 1}"
        rows = None if matrix is None else matrix[labels == cluster]
        if rows is not None:
            rows = rows[~np.isnan(rows).any(axis=1)]
        if rows is not None and len(rows) and rows.shape[1] == \
                len(class_names):
            votes = np.bincount(rows.argmax(axis=1),
                                minlength=rows.shape[1])
            mass = rows.sum(axis=0)
            order = np.lexsort((-mass, -votes))[:max(k, 0)]
            name += ": " + ", ".join(class_names[i] for i in order)
        names.append(name)
    return names


def typical_rows(result: ClusteringResult,
                 per_cluster: Optional[int] = None) -> np.ndarray:
    """Rows of the most typical images of each cluster, for naming it.

    Parameters
    ----------
    result : ClusteringResult
    per_cluster : int, optional
        At most this many rows per cluster (default :data:`NAMING_SAMPLE`):
        those with the highest silhouette (ties by row).

    Returns
    -------
    numpy.ndarray
        Sorted row indices.
    """
    if per_cluster is None:
        per_cluster = NAMING_SAMPLE
    order = np.lexsort((np.arange(len(result.labels)), -result.silhouette,
                        result.labels))
    labels = result.labels[order]
    starts = np.searchsorted(labels, labels)  # first position of each label
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < per_cluster])


# --- near-duplicates ---------------------------------------------------------

def near_duplicates(X, threshold: float = DUPLICATE_THRESHOLD,
                    max_pairs: Optional[int] = 100_000,
                    callback: Optional[Progress] = None,
                    images=None) -> List[Tuple[int, int, float]]:
    """Return pairs of images that are copies of one photo.

    Copies, re-encodings, resizes, crops and small edits of a photo are
    found; different photos of similar things (two lawns) are not, when
    `images` are given: pairs whose embeddings are close are kept only when
    their local features match (see :data:`DUPLICATE_MIN_MATCHES`).

    Parameters
    ----------
    X : array-like of shape (n_images, n_features)
        Embeddings.
    threshold : float
        Pairs with cosine distance (``1 - cos``) below this are candidates.
        The default, :data:`DUPLICATE_THRESHOLD` = 0.1, keeps every copy
        measured with ImageNet backbones.
    max_pairs : int, optional
        Keep at most this many closest candidate pairs (None: all); it
        bounds memory and time when many images are alike.
    callback : callable, optional
        Called with the fraction done; it may raise to stop.
    images : Orange.data.Table or sequence of str, optional
        The images of the rows of `X` (a table with an image column, or
        paths and URLs, None where there is none). Without them, the
        embedding alone decides, and close photos of similar things pair
        too. A pair with an image that cannot be read is judged by the
        embedding alone.

    Returns
    -------
    list of (int, int, float)
        ``(i, j, distance)`` with ``i < j``, closest first. Rows of zeros
        are nobody's duplicates.

    Notes
    -----
    Similarities are computed a block of rows at a time against the rows
    after them (float32 products of at most :data:`CHUNK_BYTES`), so
    10,000 images need no 10,000 × 10,000 matrix. Only the images of
    candidate pairs are read, each once.
    """
    if images is None:
        return _close_embeddings(X, threshold, max_pairs, callback)
    paths = paths_of(images)
    if len(paths) != len(X):
        raise ValueError(f"near_duplicates needs an image for each row of "
                         f"X. Received: {len(paths)} images for {len(X)} "
                         f"rows")
    share = 0.2

    def report(fraction):
        if callback is not None:
            callback(fraction)
    candidates = _close_embeddings(X, threshold, max_pairs,
                                   lambda f: report(share * f))
    same = _SamePhoto(paths)
    pairs = []
    for done, pair in enumerate(candidates, 1):
        if same(pair[0], pair[1]) is not False:
            pairs.append(pair)
        report(share + (1 - share) * done / len(candidates))
    report(1.0)
    return pairs


def _close_embeddings(X, threshold, max_pairs, callback):
    """Pairs of rows closer than `threshold` (cosine), closest first."""
    X = normalize_rows(X)
    n = len(X)
    found_i, found_j, found_d = [], [], []
    kept = 0
    step = _rows_per_chunk(n)
    total_work = n * (n + 1) / 2 or 1
    done = 0
    for start in range(0, n, step):
        end = min(n, start + step)
        similarity = X[start:end] @ X[start:].T
        rows, cols = np.nonzero(similarity > 1 - threshold)
        upper = cols > rows  # j > i, each pair once, no self-pairs
        rows, cols = rows[upper], cols[upper]
        if len(rows):
            dist = np.clip(1 - similarity[rows, cols], 0, None)
            found_i.append(rows + start)
            found_j.append(cols + start)
            found_d.append(dist.astype(float))
            kept += len(rows)
            if max_pairs is not None and kept > 2 * max_pairs:
                found_i, found_j, found_d = _closest(
                    found_i, found_j, found_d, max_pairs)
                kept = len(found_i[0])
        done += (end - start) * (n - start)
        if callback is not None:
            callback(min(1.0, done / total_work))
    if not found_i:
        return []
    [i], [j], [d] = _closest(found_i, found_j, found_d, max_pairs)
    return [(int(a), int(b), float(c)) for a, b, c in zip(i, j, d)]


@dataclass
class PhotoFeatures:
    """What :func:`same_photo` compares of an image."""
    points: np.ndarray       # (n, 2) float32 key point positions
    descriptors: Optional[np.ndarray]
    digest: bytes            # of the scaled grey pixels: identical images


def photo_features(path: Optional[str]) -> Optional[PhotoFeatures]:
    """ORB features of an image scaled to :data:`DUPLICATE_SIDE` pixels
    (its longer side); None when it cannot be read."""
    import hashlib
    import cv2
    try:
        image = load_image(path)
    except ImageSkipped:
        return None
    grey = np.asarray(image.convert("L"))
    scale = DUPLICATE_SIDE / max(grey.shape)
    grey = cv2.resize(grey, None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_AREA if scale < 1
                      else cv2.INTER_LINEAR)
    orb = cv2.ORB_create(nfeatures=DUPLICATE_FEATURES)
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    digest = hashlib.blake2b(grey.tobytes() + bytes(str(grey.shape),
                                                    "ascii")).digest()
    return PhotoFeatures(points, descriptors, digest)


def same_photo(a: PhotoFeatures, b: PhotoFeatures) -> bool:
    """Whether two images' features (:func:`photo_features`) show one photo:
    identical pixels, or at least :data:`DUPLICATE_MIN_MATCHES` matching
    features under one rotation, scale (1/3 to 3) and shift."""
    import cv2
    if a.digest == b.digest:
        return True
    if a.descriptors is None or b.descriptors is None \
            or min(len(a.points), len(b.points)) < DUPLICATE_MIN_MATCHES:
        return False
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [pair[0] for pair in matcher.knnMatch(a.descriptors,
                                                 b.descriptors, k=2)
            if len(pair) == 2 and pair[0].distance < 0.8 * pair[1].distance]
    if len(good) < DUPLICATE_MIN_MATCHES:
        return False
    source = a.points[[match.queryIdx for match in good]]
    target = b.points[[match.trainIdx for match in good]]
    transform, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if transform is None:
        return False
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    return 1 / 3 < scale < 3 and int(inliers.sum()) >= DUPLICATE_MIN_MATCHES


class _SamePhoto:
    """:func:`same_photo` of rows, each image read once; None: unreadable."""

    def __init__(self, paths: Sequence[Optional[str]]):
        self.paths = paths
        self.features: Dict[int, Optional[PhotoFeatures]] = {}

    def _of(self, row: int) -> Optional[PhotoFeatures]:
        if row not in self.features:
            path = self.paths[row]
            self.features[row] = None if path is None \
                else photo_features(path)
        return self.features[row]

    def __call__(self, i: int, j: int) -> Optional[bool]:
        a, b = self._of(i), self._of(j)
        if a is None or b is None:
            return None
        return same_photo(a, b)


def _closest(found_i, found_j, found_d, max_pairs):
    i, j, d = (np.concatenate(found) for found in (found_i, found_j, found_d))
    order = np.lexsort((j, i, d))
    if max_pairs is not None:
        order = order[:max_pairs]
    return [i[order]], [j[order]], [d[order]]


# --- tables ------------------------------------------------------------------

def embedding_columns(table: Table) -> List[Variable]:
    """Return the columns that hold the embedding.

    Embedders (ours and orange3-imageanalytics') mark their columns
    ``hidden``; those are taken when there are any, otherwise all
    continuous features.
    """
    continuous = [var for var in table.domain.attributes
                  if var.is_continuous]
    hidden = [var for var in continuous if var.attributes.get("hidden")]
    return hidden or continuous


def embedding_matrix(table: Table) -> np.ndarray:
    """Return the embedding of each row as a float32 array (NaN -> 0).

    Raises
    ------
    ValueError
        When the table has no continuous features.
    """
    columns = embedding_columns(table)
    if not columns:
        raise ValueError("The data has no embedding (no numeric features).")
    indices = [table.domain.index(var) for var in columns]
    if indices == list(range(indices[0], indices[0] + len(indices))):
        X = table.X[:, indices[0]:indices[0] + len(indices)]
    else:
        X = table.X[:, indices]
    if sp.issparse(X):
        X = X.toarray()
    X = np.array(X, dtype=np.float32)
    if not np.isfinite(X).all():
        np.nan_to_num(X, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return X


def recorded_model(table: Table) -> Optional[str]:
    """Return the backbone that made the table's embedding, if it says so.

    The embedder records the backbone's key in each embedding column's
    ``attributes["deepimage-model"]`` (and, for weights other than
    ImageNet's, ``attributes["deepimage-weights"]``). Returns None when the
    columns do not say, disagree, or name a network with other weights,
    whose head is not ImageNet's.
    """
    from orangecontrib.deepimage.backbones import BACKBONES
    columns = embedding_columns(table)
    keys = {var.attributes.get("deepimage-model") for var in columns}
    weights = {var.attributes.get("deepimage-weights", "imagenet")
               for var in columns}
    if len(keys) != 1 or weights - {"imagenet", None, ""}:
        return None
    key = keys.pop()
    return key if key in BACKBONES else None


def imagenet_probabilities(table: Table, model: Optional[str] = None,
                           embedder=None, callback: Optional[Progress] = None,
                           rows: Optional[Sequence[int]] = None
                           ) -> Optional[np.ndarray]:
    """Return ImageNet class probabilities of the images of `table`.

    Parameters
    ----------
    table : Orange.data.Table
        A table with an image column.
    model : str, optional
        Backbone to run; default: :func:`recorded_model`.
    embedder : ImageEmbedder, optional
        An embedder to reuse (its network stays built); overrides `model`.
    callback : callable, optional
        Progress callback of
        :meth:`~orangecontrib.deepimage.embedding.ImageEmbedder.embed_paths`.
    rows : sequence of int, optional
        Only these rows (e.g. :func:`typical_rows`); default: all.

    Returns
    -------
    numpy.ndarray or None
        ``(len(rows), 1000)`` float32, NaN rows for images that could not be
        read; None when the table has no image column or no backbone is
        known.
    """
    column = find_image_column(table)
    if column is None:
        return None
    if embedder is None:
        model = model or recorded_model(table)
        if model is None:
            return None
        from orangecontrib.deepimage.embedding import ImageEmbedder
        embedder = ImageEmbedder(model=model)
    paths = image_paths(table, column)
    if rows is not None:
        paths = [paths[row] for row in rows]
    result = embedder.embed_paths(paths, callback, with_probabilities=True)
    matrix = _probability_matrix(result.probabilities, len(paths))
    if matrix is None:
        return np.full((len(paths), 1000), np.nan, dtype=np.float32)
    return matrix.astype(np.float32)


def add_cluster_columns(table: Table, result: ClusteringResult,
                        names: Optional[Sequence[str]] = None) -> Table:
    """Return `table` with ``Cluster`` and ``Silhouette`` meta columns.

    The input is not changed; names that clash get a suffix.
    """
    names = list(names) if names is not None else \
        name_clusters(result.labels, None)
    cluster_name, silhouette_name = get_unique_names(
        table.domain, ["Cluster", "Silhouette"])
    cluster_var = DiscreteVariable(cluster_name, values=tuple(names))
    silhouette_var = ContinuousVariable(silhouette_name)
    domain = Domain(table.domain.attributes, table.domain.class_vars,
                    table.domain.metas + (cluster_var, silhouette_var))
    # The features stay as they are: build the table from its arrays rather
    # than through a domain conversion, which is slow for wide embeddings.
    added = np.column_stack([result.labels, result.silhouette])
    metas = np.hstack([table.metas, added.astype(table.metas.dtype)]) \
        if table.metas.dtype == object else np.hstack([table.metas, added])
    clustered = Table.from_numpy(
        domain, table.X, table.Y, metas, table.W,
        attributes=table.attributes, ids=table.ids)
    clustered.name = table.name
    return clustered


def duplicates_table(table: Table, pairs: Sequence[Tuple[int, int, float]]
                     ) -> Table:
    """Return near-duplicate pairs as a table.

    Columns: ``Distance`` (feature); ``Image 1``, ``Image 2`` (image metas
    with the image column's origin, so image viewers show them) and
    ``Row 1``, ``Row 2`` (1-based rows of `table`).
    """
    column = find_image_column(table)
    images = [StringVariable(name) for name in ("Image 1", "Image 2")]
    for var in images:
        var.attributes["type"] = "image"
        if column is not None and "origin" in column.attributes:
            var.attributes["origin"] = column.attributes["origin"]
    rows_vars = [ContinuousVariable(name, number_of_decimals=0)
                 for name in ("Row 1", "Row 2")]
    domain = Domain([ContinuousVariable("Distance", number_of_decimals=4)],
                    metas=images + rows_vars)
    pairs = list(pairs)
    values = _column_strings(table, column)
    X = np.array([[d] for _, _, d in pairs], dtype=float).reshape(-1, 1)
    metas = np.array([[values[i], values[j], i + 1, j + 1]
                      for i, j, _ in pairs], dtype=object).reshape(-1, 4)
    duplicates = Table.from_numpy(domain, X, metas=metas)
    duplicates.name = "Near-duplicates"
    return duplicates


def _column_strings(table: Table, column: Optional[Variable]) -> List[str]:
    if column is None:
        return [""] * len(table)
    values = table.get_column(column)
    if column.is_discrete:
        return ["" if np.isnan(v) else column.values[int(v)] for v in values]
    return ["" if v is None or (isinstance(v, float) and np.isnan(v))
            else str(v) for v in values]


def cluster_table(table: Table, n_clusters: Optional[int] = None,
                  method: str = "kmeans", *, probabilities=None,
                  model: Optional[str] = None,
                  duplicate_threshold: float = DUPLICATE_THRESHOLD,
                  random_state: int = 0) -> Tuple[Table, Table]:
    """Cluster an embedded table and find its near-duplicate images.

    Parameters
    ----------
    table : Orange.data.Table
        Embedded images: the embedding in (hidden) continuous features, the
        image column in the metas.
    n_clusters, method, random_state
        As in :func:`cluster_embeddings`.
    probabilities : array-like, optional
        ImageNet class probabilities of the rows, for cluster names.
    model : str, optional
        Backbone to compute the probabilities with when they are not given,
        for the :func:`typical_rows` of each cluster only; default: the one
        the table records (:func:`recorded_model`). With neither, clusters
        are only numbered.
    duplicate_threshold : float
        See :func:`near_duplicates` (confirmed on the table's images when
        it has an image column).

    Returns
    -------
    (Orange.data.Table, Orange.data.Table)
        The input with ``Cluster`` (values are the cluster names) and
        ``Silhouette`` metas; the near-duplicate pairs
        (:func:`duplicates_table`).
    """
    X = embedding_matrix(table)
    result = cluster_embeddings(X, n_clusters, method, random_state)
    if probabilities is None and (model or recorded_model(table)):
        # every cluster has typical rows, so their labels cover all clusters
        rows = typical_rows(result)
        names = name_clusters(result.labels[rows],
                              imagenet_probabilities(table, model, rows=rows))
    else:
        names = name_clusters(result.labels, probabilities)
    pairs = near_duplicates(
        X, duplicate_threshold,
        images=table if find_image_column(table) is not None else None)
    return add_cluster_columns(table, result, names), \
        duplicates_table(table, pairs)


# --- map ---------------------------------------------------------------------

def map_embeddings(X, random_state: int = 0,
                   callback: Optional[Callable[[float, np.ndarray], None]]
                   = None, n_jobs: int = 1) -> np.ndarray:
    """Place images on a 2-D map with t-SNE (openTSNE).

    Normalised embeddings; above :data:`MAP_PCA_ABOVE` images, t-SNE runs
    on their first :data:`MAP_PCA_COMPONENTS` principal components.

    Parameters
    ----------
    X : array-like of shape (n_images, n_features)
    random_state : int
    callback : callable, optional
        ``callback(fraction, coordinates)`` every 50 iterations with the
        map so far; it may raise to stop.
    n_jobs : int
        Threads of openTSNE.

    Returns
    -------
    numpy.ndarray
        ``(n_images, 2)`` coordinates.
    """
    X = normalize_rows(X)
    n = len(X)
    if n < 5 or _n_distinct(X, 2) < 2:
        # too few (or identical) images for t-SNE: a PCA projection or a dot
        if n < 2 or _n_distinct(X, 2) < 2:
            return np.zeros((n, 2))
        coordinates = np.zeros((n, 2))
        projected = _pca(X, 2, random_state)
        coordinates[:, :projected.shape[1]] = projected
        return coordinates
    if n > MAP_PCA_ABOVE and X.shape[1] > MAP_PCA_COMPONENTS:
        X = _pca(X, MAP_PCA_COMPONENTS, random_state)
    exaggeration_iter, n_iter = 250, 500
    steps = {"done": 0}

    def report(iteration, error, embedding):  # pylint: disable=unused-argument
        steps["done"] += 50
        if callback is not None:
            callback(min(1.0, steps["done"] / (exaggeration_iter + n_iter)),
                     np.array(embedding))
        return False

    tsne = TSNE(perplexity=min(30.0, (n - 1) / 3), n_jobs=n_jobs,
                random_state=random_state, callbacks=report,
                callbacks_every_iters=50, n_iter=n_iter,
                early_exaggeration_iter=exaggeration_iter,
                negative_gradient_method="fft" if n > 1000 else "bh")
    return np.asarray(tsne.fit(X.astype(np.float64)))


def _pca(X: np.ndarray, components: int, random_state: int) -> np.ndarray:
    components = min(components, X.shape[0], X.shape[1])
    return PCA(components, random_state=random_state,
               svd_solver="randomized" if components < min(X.shape) // 2
               else "full").fit_transform(X)


# --- the whole job -----------------------------------------------------------

@dataclass
class ClusteringPieces:
    """What :func:`cluster_job` computes; pieces already known are passed
    in and kept.

    Attributes
    ----------
    auto : ClusteringResult or None
        The automatic choice for the method (its scores are those of every
        number of clusters tried).
    result : ClusteringResult or None
        The clustering asked for (``auto`` when automatic).
    duplicates : list of (int, int, float) or None
        Near-duplicate pairs (:func:`near_duplicates`).
    threshold : float or None
        The threshold `duplicates` were found with.
    probabilities : dict of int -> numpy.ndarray or None
        ImageNet class probabilities of the images that name clusters
        (:func:`typical_rows`); None for images that could not be read.
    naming_error : str or None
        Why probabilities could not be computed.
    map : numpy.ndarray or None
        t-SNE coordinates (:func:`map_embeddings`).
    """
    auto: Optional[ClusteringResult] = None
    result: Optional[ClusteringResult] = None
    duplicates: Optional[list] = None
    threshold: Optional[float] = None
    probabilities: Dict[int, Optional[np.ndarray]] = field(
        default_factory=dict)
    naming_error: Optional[str] = None
    map: Optional[np.ndarray] = None

    def names(self) -> List[str]:
        """Names of the clusters of `result` (see :func:`cluster_names`)."""
        return cluster_names(self.result, self.probabilities)

    def lacks(self, duplicate_threshold: float, names: bool = False,
              want_map: bool = False) -> bool:
        """Whether :func:`cluster_job` with these arguments (`names`: with
        a `names_table`) and these pieces as `known` would compute
        anything."""
        return self.auto is None or self.result is None \
            or self.duplicates is None \
            or self.threshold != duplicate_threshold \
            or (names and bool(unnamed_rows(self.result,
                                            self.probabilities))) \
            or (want_map and self.map is None)


class ClusteringCache:
    """The pieces of :func:`cluster_job` runs on one set of embeddings, for
    any method and number of clusters.

    :meth:`known` gives the pieces to pass to the next run as `known`;
    :meth:`store` keeps what a run returned (or sent as partial results).
    Near-duplicates, names' probabilities and the map do not depend on the
    clustering, and are kept once.
    """

    def __init__(self):
        self.auto: Dict[str, ClusteringResult] = {}
        self.fixed: Dict[Tuple[str, int], ClusteringResult] = {}
        self.duplicates: Optional[list] = None
        self.threshold: Optional[float] = None
        self.probabilities: Dict[int, Optional[np.ndarray]] = {}
        self.naming_error: Optional[str] = None
        self.map: Optional[np.ndarray] = None

    def known(self, method: str, n_clusters: Optional[int] = None
              ) -> ClusteringPieces:
        """What is known for `method` and `n_clusters` (None: automatic)."""
        auto = self.auto.get(method)
        result = auto if n_clusters is None \
            else self.fixed.get((method, n_clusters))
        return ClusteringPieces(auto, result, self.duplicates,
                                self.threshold, self.probabilities,
                                self.naming_error, self.map)

    def store(self, pieces: ClusteringPieces,
              n_clusters: Optional[int] = None):
        """Keep `pieces` of a run for `n_clusters` (None: automatic)."""
        if pieces.auto is not None:
            self.auto[pieces.auto.method] = pieces.auto
        result = pieces.result
        if result is not None and n_clusters is not None \
                and result is not pieces.auto:
            self.fixed[(result.method, n_clusters)] = result
        if pieces.duplicates is not None:
            self.duplicates = pieces.duplicates
            self.threshold = pieces.threshold
        if pieces.map is not None:
            self.map = pieces.map
        self.probabilities = pieces.probabilities
        self.naming_error = pieces.naming_error


def cluster_names(result: ClusteringResult,
                  probabilities: Optional[Dict[int, Optional[np.ndarray]]]
                  = None) -> List[str]:
    """Name the clusters of `result` from their typical images.

    Parameters
    ----------
    result : ClusteringResult
    probabilities : dict of int -> numpy.ndarray or None, optional
        ImageNet class probabilities by row, for (at least) the
        :func:`typical_rows` of `result`, as in
        :attr:`ClusteringPieces.probabilities`. Without them clusters are
        only numbered.

    Returns
    -------
    list of str
        See :func:`name_clusters`.
    """
    if not probabilities:
        return name_clusters(result.labels)
    # every cluster has typical rows, so their labels cover all clusters
    rows = typical_rows(result)
    return name_clusters(result.labels[rows],
                         [probabilities.get(row) for row in rows])


def cluster_summary(result: ClusteringResult, names: Sequence[str]
                    ) -> List[Tuple[str, str]]:
    """``(name, "n images, mean silhouette s")`` of each cluster."""
    labels, silhouette = result.labels, result.silhouette
    return [(name, f"{size} images, mean silhouette "
                   f"{silhouette[labels == i].mean():.2f}")
            for i, (name, size) in enumerate(zip(names, result.sizes()))]


def unnamed_rows(result: ClusteringResult,
                 probabilities: Dict[int, Optional[np.ndarray]]
                 ) -> List[int]:
    """Typical rows of `result`'s clusters whose probabilities are not in
    `probabilities` (tried and failed rows are there, as None)."""
    return [int(row) for row in typical_rows(result)
            if row not in probabilities]


def cluster_job(X, method: str = "kmeans", n_clusters: Optional[int] = None,
                *, duplicate_threshold: float = DUPLICATE_THRESHOLD,
                want_map: bool = False, names_table: Optional[Table] = None,
                names_model: Optional[str] = None,
                known: Optional[ClusteringPieces] = None,
                duplicate_images=None,
                progress: Optional[Progress] = None,
                status: Optional[Callable[[str], None]] = None,
                partial: Optional[Callable[[str, ClusteringPieces], None]]
                = None) -> ClusteringPieces:
    """Cluster embeddings, find near-duplicates, name the clusters and,
    if asked, map the images: all that Image Clusters shows.

    Only what `known` lacks is computed, so a caller that keeps the pieces
    of earlier calls (other numbers of clusters, other methods) gets the
    rest quickly.

    Parameters
    ----------
    X : array-like of shape (n_images, n_features)
        Embeddings (e.g. :func:`embedding_matrix` of a table).
    method : str
        A key of :data:`METHODS`.
    n_clusters : int, optional
        None chooses the number (see :func:`cluster_embeddings`).
    duplicate_threshold : float
        Cosine distance for near-duplicates (see :func:`near_duplicates`).
    want_map : bool
        Also compute the t-SNE map (:func:`map_embeddings`), last.
    names_table : Orange.data.Table, optional
        The images (an image column), to name the clusters with ImageNet
        labels of their typical images; without it, clusters are numbered.
        A failure to name (e.g. no weights) is not an error: its reason is
        in ``naming_error``.
    names_model : str, optional
        The backbone that gives the labels; default: the one the table
        records (:func:`recorded_model`), else :data:`NAMING_MODEL`.
    duplicate_images : Orange.data.Table or sequence of str, optional
        The images of the rows, to confirm near-duplicates on their pixels
        (see :func:`near_duplicates`); without them the embedding decides.
    known : ClusteringPieces, optional
        Pieces computed before for the same `X`, with `auto` and `result`
        for this `method` and `n_clusters` (or None), as
        :meth:`ClusteringCache.known` gives them; it is not changed.
    progress : callable, optional
        Called with the fraction done (0 to 1; it restarts from 0 for the
        map); it may raise (e.g.
        :class:`~orangecontrib.deepimage.errors.Cancelled`) to stop.
    status : callable, optional
        Called with the stage in words ("Clustering…").
    partial : callable, optional
        ``partial(tag, pieces)`` with a copy of the pieces so far:
        ``"clusters"`` when the clustering is known, ``"ready"`` when
        everything but the map is, ``"map"`` with the map so far (in
        ``pieces.map``).

    Returns
    -------
    ClusteringPieces
    """
    pieces = replace(known) if known is not None else ClusteringPieces()
    notify = partial or (lambda tag, pieces: None)
    stage = [0.0, 1.0]

    def report(fraction: float):
        if progress is not None:
            progress(stage[0] + stage[1] * fraction)

    def begin(start: float, length: float, text: str):
        stage[:] = [start, length]
        if status is not None:
            status(text)
        report(0)

    heavy_names = names_table is not None and (
        pieces.result is None
        or bool(unnamed_rows(pieces.result, pieces.probabilities)))
    clustering_share = 0.3 if heavy_names else 0.8
    if pieces.auto is None:
        begin(0, clustering_share * (0.5 if n_clusters else 1),
              "Clustering…")
        pieces.auto = cluster_embeddings(X, None, method, callback=report)
    if n_clusters is None:
        pieces.result = pieces.auto
    elif pieces.result is None:
        begin(clustering_share / 2, clustering_share / 2, "Clustering…")
        pieces.result = cluster_embeddings(X, n_clusters, method,
                                           callback=report)
    notify("clusters", replace(pieces))

    if pieces.duplicates is None or pieces.threshold != duplicate_threshold:
        begin(clustering_share, 0.1, "Finding near-duplicates…")
        pieces.duplicates = near_duplicates(X, duplicate_threshold,
                                            callback=report,
                                            images=duplicate_images)
        pieces.threshold = duplicate_threshold

    missing = unnamed_rows(pieces.result, pieces.probabilities) \
        if names_table is not None else []
    if missing:
        begin(clustering_share + 0.1, 0.9 - clustering_share,
              "Naming clusters…")
        _add_probabilities(pieces, names_table, names_model, missing, report)
    notify("ready", replace(pieces))

    if want_map and pieces.map is None:
        begin(0, 1, "Computing the map…")

        def map_progress(fraction, coordinates):
            report(fraction)
            notify("map", replace(pieces, map=coordinates))

        pieces.map = map_embeddings(X, callback=map_progress)
    return pieces


def _add_probabilities(pieces: ClusteringPieces, table: Table,
                       model: Optional[str], rows: List[int],
                       report: Progress):
    """Add the probabilities of `rows` to `pieces`, or the reason why not."""
    model = model or recorded_model(table) or NAMING_MODEL
    try:
        embedder = shared_embedder(model, None, "penultimate", None)
        matrix = imagenet_probabilities(table, embedder=embedder,
                                        callback=report, rows=rows)
    except Cancelled:
        raise
    except Exception as error:  # pylint: disable=broad-except
        # Names are a nicety: clusters still go out without them, with the
        # reason shown (and the traceback logged).
        log.warning("Clusters could not be named", exc_info=True)
        pieces.naming_error = str(error) or type(error).__name__
        return
    if matrix is None:  # no image column: nothing to name with
        matrix = np.full((len(rows), 1), np.nan)
    pieces.probabilities = dict(pieces.probabilities)
    pieces.probabilities.update(
        (row, None if np.isnan(vector).any() else vector)
        for row, vector in zip(rows, matrix))
