import os
import tempfile
import unittest
from unittest import mock

import numpy as np
from PIL import Image, ImageEnhance
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics import silhouette_samples as sk_silhouette_samples

from Orange.data import ContinuousVariable, Domain, StringVariable, Table

from orangecontrib.deepimage import clustering
from orangecontrib.deepimage.backbones import imagenet_labels
from orangecontrib.deepimage.clustering import (
    METHODS, ClusteringCache, ClusteringPieces, add_cluster_columns,
    cluster_embeddings, cluster_job, cluster_names, cluster_table,
    duplicates_table, embedding_columns, embedding_matrix,
    imagenet_probabilities, map_embeddings, name_clusters, near_duplicates,
    normalize_rows, recorded_model, silhouette_samples, typical_rows,
    unnamed_rows)
from orangecontrib.deepimage.errors import Cancelled

#: ImageNet classes 281-285 are the domestic cats.
CAT_CLASSES = set(imagenet_labels()[281:286])


def blobs(sizes=(12, 9, 6), dim=40, noise=0.05, seed=0):
    """Tight groups around orthogonal directions, at random lengths.

    Rows are scaled by random factors: after L2 normalisation the groups
    are the same, which is what clustering by angle should see.
    """
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, len(sizes))))[0].T
    X = np.vstack([centre + noise * rng.normal(size=(size, dim))
                   for centre, size in zip(centres, sizes)])
    X *= rng.uniform(0.5, 20, size=(len(X), 1))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return X, truth


def image_table(folder, names, X=None):
    column = StringVariable("image")
    column.attributes.update({"type": "image", "origin": folder})
    X = np.empty((len(names), 0)) if X is None else X
    attributes = [ContinuousVariable(f"n{i}") for i in range(X.shape[1])]
    for var in attributes:
        var.attributes["hidden"] = True
    return Table.from_numpy(Domain(attributes, metas=[column]), X,
                            metas=np.array(names, dtype=object)[:, None])


def augmented_photos(folder, per_group=8, size=(160, 120), seed=0):
    """Random crops, flips and colour jitter of three different photos."""
    from skimage import data
    rng = np.random.default_rng(seed)
    names, truth = [], []
    for group, photo in enumerate((data.chelsea(), data.coffee(),
                                   data.rocket())):
        image = Image.fromarray(photo)
        width, height = image.size
        for i in range(per_group):
            scale = rng.uniform(0.6, 0.95)
            w, h = int(width * scale), int(height * scale)
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            crop = image.crop((left, top, left + w, top + h))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.6, 1.4))
            crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
            names.append(f"group{group}_{i}.jpg")
            crop.resize(size).save(os.path.join(folder, names[-1]))
            truth.append(group)
    return names, np.array(truth)


class TestClusterEmbeddings(unittest.TestCase):
    def test_blobs_automatic_number_for_each_method(self):
        X, truth = blobs()
        for method in METHODS:
            with self.subTest(method=method):
                result = cluster_embeddings(X, method=method)
                self.assertEqual(result.n_clusters, 3)
                self.assertEqual(adjusted_rand_score(truth, result.labels),
                                 1.0)
                self.assertEqual(sorted(result.scores), list(range(2, 11)))
                self.assertEqual(max(result.scores, key=result.scores.get), 3)
                # cluster 0 is the largest
                np.testing.assert_array_equal(result.sizes(), [12, 9, 6])
                self.assertEqual(result.silhouette.shape, (len(X),))
                self.assertGreater(result.silhouette.min(), 0.5)
                self.assertEqual(result.method, method)

    def test_fixed_number_of_clusters(self):
        X, _ = blobs()
        for method in METHODS:
            with self.subTest(method=method):
                result = cluster_embeddings(X, n_clusters=5, method=method)
                self.assertEqual(result.n_clusters, 5)
                self.assertEqual(set(result.labels), set(range(5)))
                self.assertEqual(list(result.scores), [5])
                self.assertAlmostEqual(result.scores[5],
                                       result.silhouette.mean())

    def test_is_seeded(self):
        X, _ = blobs(noise=0.6)
        first = cluster_embeddings(X, random_state=3)
        second = cluster_embeddings(X, random_state=3)
        np.testing.assert_array_equal(first.labels, second.labels)
        self.assertEqual(first.scores, second.scores)

    def test_fewer_than_three_images_form_one_cluster(self):
        for n in (0, 1, 2):
            with self.subTest(n=n):
                result = cluster_embeddings(np.ones((n, 4)) * np.arange(4))
                self.assertEqual(result.n_clusters, min(n, 1))
                np.testing.assert_array_equal(result.labels, np.zeros(n))
                np.testing.assert_array_equal(result.silhouette, np.zeros(n))
                self.assertEqual(result.scores, {})
        # two images, even when asked for two clusters
        self.assertEqual(cluster_embeddings(np.eye(2), n_clusters=2)
                         .n_clusters, 1)

    def test_constant_and_zero_vectors(self):
        for X in (np.ones((10, 5)), np.zeros((10, 5)),
                  np.full((6, 3), np.nan)):
            for method in METHODS:
                with self.subTest(X=X[0, 0], method=method):
                    result = cluster_embeddings(X, method=method)
                    self.assertEqual(result.n_clusters, 1)
                    np.testing.assert_array_equal(result.silhouette, 0)
                    result = cluster_embeddings(X, 4, method=method)
                    self.assertEqual(result.n_clusters, 1)

    def test_two_distinct_vectors_give_two_clusters(self):
        # fewer distinct points than clusters asked for must not crash
        X = np.repeat(np.eye(2), [5, 3], axis=0)
        for method in METHODS:
            with self.subTest(method=method):
                self.assertEqual(cluster_embeddings(X, method=method)
                                 .n_clusters, 2)
                result = cluster_embeddings(X, n_clusters=6, method=method)
                self.assertEqual(result.n_clusters, 2)
                np.testing.assert_array_equal(result.sizes(), [5, 3])

    def test_large_sets_cluster_a_sample_and_assign_the_rest(self):
        X, truth = blobs(sizes=(40, 30, 20), noise=0.1)
        with mock.patch.object(clustering, "SAMPLE_SIZE", 30):
            for method in METHODS:
                for k in (None, 3):
                    with self.subTest(method=method, k=k):
                        result = cluster_embeddings(X, k, method=method)
                        self.assertEqual(result.n_clusters, 3)
                        self.assertEqual(
                            adjusted_rand_score(truth, result.labels), 1.0)

    def test_errors_name_the_value(self):
        with self.assertRaisesRegex(ValueError, "method='dbscan'"):
            cluster_embeddings(np.eye(4), method="dbscan")
        with self.assertRaisesRegex(ValueError, "n_clusters=0"):
            cluster_embeddings(np.eye(4), n_clusters=0)

    def test_progress_callback_can_stop(self):
        def stop(_):
            raise Cancelled()
        with self.assertRaises(Cancelled):
            cluster_embeddings(blobs()[0], callback=stop)


class TestClusterJob(unittest.TestCase):
    """The whole job that Image Clusters runs, without Qt."""

    def setUp(self):
        X, self.truth = blobs()
        # row 27 is a copy of row 0, scaled: a near-duplicate pair
        self.X = np.vstack([X, 3 * X[:1]])
        self.truth = np.append(self.truth, self.truth[0])

    def test_clusters_duplicates_and_numbered_names(self):
        fractions, stages, tags = [], [], []
        job = cluster_job(self.X, progress=fractions.append,
                          status=stages.append,
                          partial=lambda tag, _: tags.append(tag))
        self.assertEqual(job.result.n_clusters, 3)
        self.assertIs(job.result, job.auto)
        self.assertEqual(adjusted_rand_score(self.truth, job.result.labels),
                         1)
        self.assertEqual(sorted(job.result.scores), list(range(2, 11)))
        # the copy is the closest pair
        self.assertEqual(job.duplicates[0][:2], (0, 27))
        self.assertAlmostEqual(job.duplicates[0][2], 0, places=5)
        self.assertEqual(job.duplicates, near_duplicates(self.X))
        self.assertEqual(job.threshold, clustering.DUPLICATE_THRESHOLD)
        self.assertEqual(job.names(), ["Cluster 1", "Cluster 2", "Cluster 3"])
        self.assertIsNone(job.map)
        self.assertEqual(tags, ["clusters", "ready"])
        self.assertEqual(stages, ["Clustering…", "Finding near-duplicates…"])
        self.assertTrue(all(0 <= f <= 1 for f in fractions))
        self.assertEqual(fractions, sorted(fractions))
        self.assertFalse(job.lacks(clustering.DUPLICATE_THRESHOLD))
        self.assertTrue(job.lacks(0.2))
        self.assertTrue(job.lacks(clustering.DUPLICATE_THRESHOLD,
                                  want_map=True))

    def test_fixed_number_and_map(self):
        maps = []
        job = cluster_job(
            self.X, "ward", 2, want_map=True,
            partial=lambda tag, pieces: maps.append(pieces.map)
            if tag == "map" else None)
        self.assertEqual(job.result.n_clusters, 2)
        self.assertEqual(job.result.method, "ward")
        self.assertEqual(job.auto.n_clusters, 3)
        self.assertEqual(list(job.result.scores), [2])
        self.assertEqual(job.map.shape, (len(self.X), 2))
        self.assertTrue(maps)
        self.assertEqual(maps[-1].shape, (len(self.X), 2))

    def test_known_pieces_are_reused_not_changed(self):
        first = cluster_job(self.X)
        with mock.patch.object(clustering, "cluster_embeddings") as run, \
                mock.patch.object(clustering, "near_duplicates") as pairs:
            again = cluster_job(self.X, known=first)
        run.assert_not_called()
        pairs.assert_not_called()
        self.assertIs(again.result, first.result)
        self.assertIsNot(again, first)
        # another threshold: only the near-duplicates are computed again
        with mock.patch.object(clustering, "cluster_embeddings") as run:
            wider = cluster_job(self.X, duplicate_threshold=0.5, known=first)
        run.assert_not_called()
        self.assertGreater(len(wider.duplicates), len(first.duplicates))
        self.assertEqual(first.threshold, clustering.DUPLICATE_THRESHOLD)

    def test_progress_can_cancel(self):
        def stop(_):
            raise Cancelled()
        with self.assertRaises(Cancelled):
            cluster_job(self.X, progress=stop)

    def test_names_from_probabilities_of_typical_rows(self):
        table = image_table("", [f"{i}.png" for i in range(len(self.X))])
        asked = []

        def fake(table, embedder=None, callback=None, rows=None):
            asked.append(list(rows))
            matrix = np.zeros((len(rows), 1000), dtype=np.float32)
            # rows of each true group "show" class 10 * group
            matrix[np.arange(len(rows)), 10 * self.truth[rows]] = 1
            return matrix

        # one typical image per cluster: four clusters need at least one
        # image that three did not
        with mock.patch.object(clustering, "NAMING_SAMPLE", 1), \
                mock.patch.object(clustering, "shared_embedder") as shared, \
                mock.patch.object(clustering, "imagenet_probabilities",
                                  side_effect=fake):
            job = cluster_job(self.X, names_table=table)
            shared.assert_called_once_with(clustering.NAMING_MODEL, None,
                                           "penultimate", None)
            self.assertEqual(asked, [typical_rows(job.result).tolist()])
            self.assertEqual(unnamed_rows(job.result, job.probabilities), [])
            labels = imagenet_labels()
            group = self.truth[np.flatnonzero(job.result.labels == 0)[0]]
            self.assertIn(labels[10 * group], job.names()[0])
            self.assertEqual(job.names(),
                             cluster_names(job.result, job.probabilities))
            # another number of clusters asks only for new typical rows
            cache = ClusteringCache()
            cache.store(job)
            more = cluster_job(self.X, n_clusters=4, names_table=table,
                               known=cache.known("kmeans", 4))
        self.assertEqual(len(asked), 2)
        self.assertFalse(set(asked[0]) & set(asked[1]))
        self.assertEqual(len(more.names()), 4)

    def test_naming_failure_is_kept_cancel_is_not(self):
        table = image_table("", [f"{i}.png" for i in range(len(self.X))])
        with mock.patch.object(clustering, "shared_embedder"), \
                mock.patch.object(clustering, "imagenet_probabilities",
                                  side_effect=RuntimeError("no weights")):
            job = cluster_job(self.X, names_table=table)
        self.assertEqual(job.naming_error, "no weights")
        self.assertEqual(job.names(), ["Cluster 1", "Cluster 2", "Cluster 3"])
        with mock.patch.object(clustering, "shared_embedder"), \
                mock.patch.object(clustering, "imagenet_probabilities",
                                  side_effect=Cancelled()), \
                self.assertRaises(Cancelled):
            cluster_job(self.X, names_table=table)

    def test_cache_keeps_pieces_by_method_and_number(self):
        cache = ClusteringCache()
        self.assertEqual(cache.known("kmeans"), ClusteringPieces())
        auto = cluster_job(self.X)
        cache.store(auto)
        fixed = cluster_job(self.X, n_clusters=2, known=cache.known("kmeans",
                                                                    2))
        cache.store(fixed, 2)
        self.assertIs(cache.known("kmeans").result, auto.result)
        self.assertIs(cache.known("kmeans", 2).result, fixed.result)
        self.assertIs(cache.known("kmeans", 2).auto, auto.result)
        self.assertIsNone(cache.known("kmeans", 4).result)
        self.assertIsNone(cache.known("ward").auto)
        self.assertEqual(cache.known("ward").duplicates, auto.duplicates)


class TestSilhouette(unittest.TestCase):
    def test_matches_sklearn(self):
        X, truth = blobs(noise=0.8)
        Xn = normalize_rows(X)
        for metric in ("euclidean", "cosine"):
            with self.subTest(metric=metric):
                np.testing.assert_allclose(
                    silhouette_samples(Xn, truth, metric),
                    sk_silhouette_samples(Xn.astype(float), truth,
                                          metric=metric), atol=1e-4)

    def test_chunks_give_the_same_values(self):
        X, truth = blobs(noise=0.8)
        Xn = normalize_rows(X)
        whole = silhouette_samples(Xn, truth)
        with mock.patch.object(clustering, "CHUNK_BYTES", 400):
            np.testing.assert_allclose(silhouette_samples(Xn, truth), whole,
                                       atol=1e-6)

    def test_singletons_and_one_cluster_are_zero(self):
        X = np.array([[1, 0], [0.9, 0.1], [0, 1]])
        np.testing.assert_array_equal(silhouette_samples(X, [0, 0, 0]), 0)
        self.assertEqual(silhouette_samples(normalize_rows(X),
                                            [0, 0, 1])[2], 0)


class TestNames(unittest.TestCase):
    def test_names_from_most_frequent_top_labels(self):
        labels = imagenet_labels()
        probabilities = np.full((5, 1000), 1e-4)
        probabilities[[0, 1, 2], 281] = 0.6    # tabby
        probabilities[2, 285] = 0.7            # Egyptian Mau beats tabby
        probabilities[[3, 4], 967] = 0.9       # espresso
        names = name_clusters([0, 0, 0, 1, 1], probabilities)
        self.assertEqual(names, [f"Cluster 1: {labels[281]}, {labels[285]}",
                                 f"Cluster 2: {labels[967]}, {labels[0]}"])
        self.assertEqual(name_clusters([0, 0, 0, 1, 1], probabilities, k=1),
                         [f"Cluster 1: {labels[281]}",
                          f"Cluster 2: {labels[967]}"])

    def test_typical_rows_have_the_best_silhouettes(self):
        result = clustering.ClusteringResult(
            labels=np.array([0, 1, 0, 0, 1, 0]), n_clusters=2,
            silhouette=np.array([0.1, 0.5, 0.9, 0.3, 0.2, 0.3]))
        np.testing.assert_array_equal(typical_rows(result, 2), [1, 2, 3, 4])
        np.testing.assert_array_equal(typical_rows(result, 1), [1, 2])
        np.testing.assert_array_equal(typical_rows(result), range(6))

    def test_numbers_without_probabilities(self):
        self.assertEqual(name_clusters([1, 0, 1]), ["Cluster 1", "Cluster 2"])
        row = np.zeros(1000)
        row[967] = 1
        # a list with unknown rows, as ImageEmbedder returns it
        names = name_clusters([0, 1, 1], [None, row, None])
        self.assertEqual(names, ["Cluster 1",
                                 f"Cluster 2: {imagenet_labels()[967]}, "
                                 f"{imagenet_labels()[0]}"])
        self.assertEqual(name_clusters([], None), [])


class TestNearDuplicates(unittest.TestCase):
    def test_finds_copies_and_small_changes_only(self):
        X, _ = blobs(noise=0.5, seed=1)
        rng = np.random.default_rng(0)
        tweaked = X[4] * 3 + 0.001 * rng.normal(size=X.shape[1])
        data = np.vstack([X, X[2], tweaked])
        pairs = near_duplicates(data)
        found = {(i, j) for i, j, _ in pairs}
        self.assertEqual(found, {(2, len(X)), (4, len(X) + 1)})
        self.assertEqual(pairs[0][:2], (2, len(X)))   # the exact copy first
        self.assertAlmostEqual(pairs[0][2], 0, places=5)
        self.assertLess(pairs[1][2], 0.05)
        self.assertEqual(near_duplicates(X), [])

    def test_chunks_and_threshold(self):
        X, _ = blobs(noise=0.3)
        Xn = normalize_rows(X).astype(float)
        distance = 1 - Xn @ Xn.T
        i, j = np.nonzero(np.triu(distance < 0.2, k=1))
        with mock.patch.object(clustering, "CHUNK_BYTES", 300):
            pairs = near_duplicates(X, threshold=0.2, max_pairs=None)
        self.assertEqual({(a, b) for a, b, _ in pairs}, set(zip(i, j)))
        distances = [d for _, _, d in pairs]
        self.assertEqual(distances, sorted(distances))
        limited = near_duplicates(X, threshold=0.2, max_pairs=5)
        self.assertEqual(limited, pairs[:5])

    def test_zero_vectors_are_nobodys_duplicates(self):
        self.assertEqual(near_duplicates(np.zeros((3, 4))), [])
        self.assertEqual(near_duplicates(np.zeros((0, 4))), [])


class TestTables(unittest.TestCase):
    def setUp(self):
        self.X, self.truth = blobs(noise=0.12)
        self.names = [f"im{i}.png" for i in range(len(self.X))]
        self.table = image_table("/images", self.names, self.X)

    def test_embedding_columns(self):
        visible = ContinuousVariable("age")
        domain = Domain([visible] + list(self.table.domain.attributes),
                        metas=self.table.domain.metas)
        table = self.table.transform(domain)
        self.assertNotIn(visible, embedding_columns(table))
        np.testing.assert_array_equal(embedding_matrix(table),
                                      self.X.astype(np.float32))
        plain = Table.from_numpy(Domain([ContinuousVariable("a")]),
                                 np.array([[1.0], [np.nan]]))
        np.testing.assert_array_equal(embedding_matrix(plain), [[1], [0]])
        with self.assertRaisesRegex(ValueError, "no embedding"):
            embedding_matrix(image_table("/images", ["a.png"]))

    def test_add_cluster_columns_keeps_input(self):
        result = cluster_embeddings(self.X)
        metas_before = self.table.metas.copy()
        clustered = add_cluster_columns(self.table, result,
                                        ["cats", "dogs", "cups"])
        np.testing.assert_array_equal(self.table.metas, metas_before)
        self.assertEqual(len(self.table.domain.metas), 1)
        cluster = clustered.domain["Cluster"]
        self.assertEqual(cluster.values, ("cats", "dogs", "cups"))
        np.testing.assert_array_equal(clustered.get_column(cluster),
                                      result.labels)
        np.testing.assert_allclose(clustered.get_column("Silhouette"),
                                   result.silhouette)
        np.testing.assert_array_equal(clustered.ids, self.table.ids)
        # names that are taken get a suffix
        again = add_cluster_columns(clustered, result)
        self.assertEqual([var.name for var in again.domain.metas[-2:]],
                         ["Cluster (1)", "Silhouette (1)"])
        self.assertEqual(again.domain.metas[-2].values,
                         ("Cluster 1", "Cluster 2", "Cluster 3"))

    def test_duplicates_table(self):
        duplicates = duplicates_table(self.table, [(0, 5, 0.01), (2, 3, 0.02)])
        self.assertEqual(len(duplicates), 2)
        np.testing.assert_array_equal(duplicates.get_column("Distance"),
                                      [0.01, 0.02])
        self.assertEqual(list(duplicates.get_column("Image 1")),
                         ["im0.png", "im2.png"])
        self.assertEqual(list(duplicates.get_column("Image 2")),
                         ["im5.png", "im3.png"])
        np.testing.assert_array_equal(duplicates.get_column("Row 2"), [6, 4])
        image = duplicates.domain["Image 1"]
        self.assertEqual(image.attributes,
                         {"type": "image", "origin": "/images"})
        self.assertEqual(len(duplicates_table(self.table, [])), 0)

    def test_cluster_table(self):
        data = Table.from_numpy(
            self.table.domain, np.vstack([self.X, self.X[:1]]),
            metas=np.array(self.names + ["copy.png"], dtype=object)[:, None])
        clustered, duplicates = cluster_table(data)
        self.assertEqual(len(clustered.domain["Cluster"].values), 3)
        self.assertEqual(adjusted_rand_score(
            np.append(self.truth, 0), clustered.get_column("Cluster")), 1.0)
        self.assertEqual(list(duplicates.get_column("Image 2")),
                         ["copy.png"])

    def test_recorded_model(self):
        self.assertIsNone(recorded_model(self.table))
        self.assertIsNone(imagenet_probabilities(self.table))
        for var in self.table.domain.attributes:
            var.attributes["deepimage-model"] = "squeezenet"
        self.assertEqual(recorded_model(self.table), "squeezenet")
        self.table.domain.attributes[0].attributes["deepimage-weights"] = \
            "/my/weights.h5"
        self.assertIsNone(recorded_model(self.table))
        for var in self.table.domain.attributes:
            var.attributes["deepimage-model"] = "no-such-net"
        self.assertIsNone(recorded_model(self.table))


class TestMap(unittest.TestCase):
    def test_map_of_blobs(self):
        X, truth = blobs(sizes=(15, 15, 15), noise=0.1)
        calls = []
        coordinates = map_embeddings(
            X, callback=lambda fraction, xy: calls.append((fraction,
                                                           xy.shape)))
        self.assertEqual(coordinates.shape, (45, 2))
        self.assertTrue(np.isfinite(coordinates).all())
        self.assertEqual(calls[-1], (1.0, (45, 2)))
        centres = np.array([coordinates[truth == g].mean(axis=0)
                            for g in range(3)])
        spread = max(np.linalg.norm(coordinates[truth == g] - centres[g],
                                    axis=1).max() for g in range(3))
        gaps = [np.linalg.norm(centres[a] - centres[b])
                for a in range(3) for b in range(a + 1, 3)]
        self.assertGreater(min(gaps), spread)

    def test_tiny_and_constant_sets(self):
        self.assertEqual(map_embeddings(np.zeros((0, 3))).shape, (0, 2))
        np.testing.assert_array_equal(map_embeddings(np.ones((6, 3))), 0)
        self.assertEqual(map_embeddings(np.eye(3)).shape, (3, 2))


class TestRealImages(unittest.TestCase):
    """Three kinds of object, photographed (cropped, flipped, recoloured)."""

    @classmethod
    def setUpClass(cls):
        from orangecontrib.deepimage.embedding import ImageEmbedder
        cls.tempdir = tempfile.TemporaryDirectory()
        folder = cls.tempdir.name
        cls.names, cls.truth = augmented_photos(folder)
        cls.embedder = ImageEmbedder("squeezenet", cache_dir=folder)
        result = cls.embedder.embed_paths(
            [os.path.join(folder, name) for name in cls.names],
            with_probabilities=True)
        cls.X = np.vstack(result.vectors)
        cls.probabilities = result.probabilities
        cls.table = image_table(folder, cls.names, cls.X)

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()

    def test_finds_the_three_kinds_and_names_them(self):
        for method in METHODS:
            with self.subTest(method=method):
                result = cluster_embeddings(self.X, method=method)
                self.assertEqual(result.n_clusters, 3)
                self.assertGreater(
                    adjusted_rand_score(self.truth, result.labels), 0.9)
                names = name_clusters(result.labels, self.probabilities)
                cat_cluster = np.bincount(
                    result.labels[self.truth == 0]).argmax()
                cat_labels = names[cat_cluster].split(": ")[1].split(", ")
                self.assertTrue(CAT_CLASSES & set(cat_labels),
                                names[cat_cluster])
                self.assertTrue(all(": " in name for name in names))

    def test_cluster_table_names_with_a_model(self):
        probabilities = imagenet_probabilities(self.table,
                                               embedder=self.embedder)
        self.assertEqual(probabilities.shape, (len(self.names), 1000))
        np.testing.assert_allclose(probabilities,
                                   np.vstack(self.probabilities), atol=1e-4)
        with mock.patch("orangecontrib.deepimage.embedding.ImageEmbedder",
                        return_value=self.embedder) as make:
            clustered, duplicates = cluster_table(self.table,
                                                  model="squeezenet")
        make.assert_called_once_with(model="squeezenet")
        cluster = clustered.domain["Cluster"]
        self.assertEqual(len(cluster.values), 3)
        self.assertTrue(any(CAT_CLASSES & set(value.split(": ")[1]
                                              .split(", "))
                            for value in cluster.values))
        # crops of one photo are near-duplicates; different photos are not
        rows = duplicates.get_column("Row 1").astype(int) - 1, \
            duplicates.get_column("Row 2").astype(int) - 1
        np.testing.assert_array_equal(self.truth[rows[0]],
                                      self.truth[rows[1]])


    def test_cluster_job_names_the_kinds(self):
        with mock.patch.object(clustering, "shared_embedder",
                               return_value=self.embedder):
            job = cluster_job(self.X, names_table=self.table)
        self.assertIsNone(job.naming_error)
        self.assertGreater(adjusted_rand_score(self.truth, job.result.labels),
                           0.9)
        cat_cluster = np.bincount(job.result.labels[self.truth == 0]).argmax()
        cat_labels = job.names()[cat_cluster].split(": ")[1].split(", ")
        self.assertTrue(CAT_CLASSES & set(cat_labels), job.names())


def near_copies(photo, folder):
    """Copies of one photo: re-encoded, resized, cropped and retouched."""
    import io
    image = Image.open(photo).convert("RGB")
    width, height = image.size
    stem = os.path.splitext(os.path.basename(photo))[0]
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=60)
    dx, dy = width // 20, height // 20
    copies = {
        "q60": Image.open(io.BytesIO(encoded.getvalue())),
        "half": image.resize((width // 2, height // 2),
                             Image.Resampling.LANCZOS),
        "crop90": image.crop((dx, dy, width - dx, height - dy)),
        "crop90corner": image.crop((0, 0, width - 2 * dx, height - 2 * dy)),
        "brighter": ImageEnhance.Brightness(image).enhance(1.1),
        "darker": ImageEnhance.Brightness(image).enhance(0.9),
    }
    paths = []
    for name, copy in copies.items():
        paths.append(os.path.join(folder, f"{stem}-{name}.png"))
        copy.save(paths[-1])
    return paths


class TestNearCopies(unittest.TestCase):
    """The tutorial photos and copies of some of them."""

    @classmethod
    def setUpClass(cls):
        from orangecontrib.deepimage.demo import PHOTOS_DIR
        from orangecontrib.deepimage.embedding import ImageEmbedder
        cls.tempdir = tempfile.TemporaryDirectory()
        photos = sorted(os.path.join(PHOTOS_DIR, name)
                        for name in os.listdir(PHOTOS_DIR)
                        if name.endswith(".jpg"))
        # Grass and gravel are different photos at a cosine distance of
        # 0.035-0.04; bricks, Hubble's field and the retina are textures
        # and smooth images with few distinct features.
        copied = [p for p in photos if os.path.basename(p)[:-4] in
                  ("grass", "gravel", "bricks", "hubble-deep-field",
                   "retina", "coffee")]
        cls.paths, cls.photo = list(photos), list(range(len(photos)))
        for photo in copied:
            copies = near_copies(photo, cls.tempdir.name)
            cls.paths += copies
            cls.photo += [photos.index(photo)] * len(copies)
        embedder = ImageEmbedder("squeezenet", cache_dir=cls.tempdir.name)
        cls.X = np.vstack(embedder.embed_paths(cls.paths).vectors)

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()

    def test_every_copy_pair_and_no_different_photos(self):
        copies = {(i, j) for i in range(len(self.paths))
                  for j in range(i + 1, len(self.paths))
                  if self.photo[i] == self.photo[j]}
        self.assertEqual(len(copies), 6 * 21)
        progress = []
        pairs = near_duplicates(self.X, images=self.paths,
                                callback=progress.append)
        self.assertEqual({(i, j) for i, j, _ in pairs}, copies)
        self.assertEqual(progress[-1], 1)
        self.assertEqual(progress, sorted(progress))
        # The embedding alone pairs grass with gravel.
        alone = {(i, j) for i, j, _ in near_duplicates(self.X)}
        self.assertTrue(alone - copies)
        named = {frozenset(os.path.basename(self.paths[k])[:5]
                           for k in pair) for pair in alone - copies}
        self.assertIn(frozenset({"grass", "grave"}), named)

    def test_a_table_or_unreadable_images(self):
        column = StringVariable("image")
        column.attributes["type"] = "image"
        table = Table.from_numpy(
            Domain([], metas=[column]), np.empty((len(self.paths), 0)),
            metas=np.array(self.paths, dtype=object)[:, None])
        by_table = near_duplicates(self.X, images=table)
        self.assertEqual(by_table, near_duplicates(self.X, images=self.paths))
        # A pair with an image that cannot be read is judged by the
        # embedding alone: gravel's original pairs with grass again.
        gravel = next(k for k, p in enumerate(self.paths)
                      if os.path.basename(p) == "gravel.jpg")
        missing = list(self.paths)
        missing[gravel] = None
        pairs = near_duplicates(self.X, images=missing)
        alone, confirmed = set(near_duplicates(self.X)), set(by_table)
        self.assertTrue(set(pairs) <= alone)
        self.assertTrue(all(gravel in pair[:2] for pair in
                            set(pairs) - confirmed))
        self.assertTrue(set(pairs) - confirmed)
        with self.assertRaisesRegex(ValueError, "an image for each row"):
            near_duplicates(self.X, images=self.paths[:3])


if __name__ == "__main__":
    unittest.main()
