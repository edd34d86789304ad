"""Anomaly detection (anomaly.py) on tiny synthetic textures."""
import dataclasses
import math
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from orangecontrib.deepimage.anomaly import (
    AnomalyLearner, choose_threshold, greedy_coreset, top_mean)
from orangecontrib.deepimage.backbones import BACKBONES
from orangecontrib.deepimage.errors import Cancelled, InvalidInput

from imagedata import image_table

GRID = 27 * 27  # patches per image for SqueezeNet at 227×227
PADIM_GRID = 13 * 13  # PaDiM's, on fire3 + fire7


def texture(rng, height=72, width=96):
    """A grating with noise: the same kind of surface in every image."""
    yy, xx = np.mgrid[:height, :width]
    phase = rng.uniform(0, 2 * np.pi)
    grating = 128 + 60 * np.sin(2 * np.pi * xx / 8 + phase)
    pixels = grating + rng.normal(0, 8, (height, width))
    return np.clip(np.repeat(pixels[..., None], 3, axis=2), 0, 255
                   ).astype(np.uint8)


def with_defect(rng, pixels):
    """A dark red blotch at a random place; returns (pixels, mask).

    The blotch keeps clear of the border, where PaDiM's Gaussians of the
    edge positions make its maps peak on the blotch's rim.
    """
    height, width = pixels.shape[:2]
    radius, margin = 8, 16
    cy = rng.integers(radius + margin, height - radius - margin)
    cx = rng.integers(radius + margin, width - radius - margin)
    yy, xx = np.mgrid[:height, :width]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    pixels = pixels.copy()
    pixels[mask] = (150, 20, 20)
    return pixels, mask


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anomaly")
    rng = np.random.default_rng(0)
    normal, defective, masks = [], [], []
    for i in range(14):
        name = f"normal{i:02d}.png"
        Image.fromarray(texture(rng)).save(folder / name)
        normal.append(name)
    for i in range(5):
        pixels, mask = with_defect(rng, texture(rng))
        name = f"defect{i:02d}.png"
        Image.fromarray(pixels).save(folder / name)
        defective.append(name)
        masks.append(mask)
    (folder / "broken.png").write_text("not an image")
    return folder, normal, defective, masks


def paths(folder, names):
    return [os.path.join(folder, name) for name in names]


@pytest.fixture(scope="module")
def patchcore(images):
    folder, normal, _, _ = images
    return AnomalyLearner(method="patchcore", coreset=0.1)(
        paths(folder, normal[:10]))


def test_greedy_coreset_covers_every_cluster():
    # Three tight clusters far apart: three greedy centres, one in each.
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [100, 0], [0, 100]], float)
    points = np.vstack([c + rng.normal(0, 1, (50, 2)) for c in centres])
    chosen = greedy_coreset(points, 3, random_state=0)
    assert len(set(chosen.tolist())) == 3
    assert sorted(chosen // 50) == [0, 1, 2]
    assert len(greedy_coreset(points, 500)) == len(points)


def test_memory_bank_within_coreset_bound(images):
    folder, normal, _, _ = images
    for n_images in (2, 6):
        model = AnomalyLearner(coreset=0.1, calibration=0)(
            paths(folder, normal[:n_images]))
        assert len(model.memory_bank) == math.ceil(0.1 * n_images * GRID)
    # The absolute bound holds however many images there are.
    for n_images in (2, 6):
        model = AnomalyLearner(coreset=0.5, memory_size=300,
                               calibration=0)(paths(folder, normal[:n_images]))
        assert len(model.memory_bank) == 300


def test_pickled_model_gives_identical_scores(images, patchcore):
    folder, normal, defective, _ = images
    test = paths(folder, normal[10:] + defective)
    scores = patchcore.score(test)
    restored = pickle.loads(pickle.dumps(patchcore))
    assert restored._network is None
    np.testing.assert_array_equal(restored.score(test), scores)


def test_defects_score_higher_and_heatmap_peaks_inside(images, patchcore):
    folder, normal, defective, masks = images
    normal_scores = patchcore.score(paths(folder, normal[10:]))
    maps = patchcore.anomaly_map(paths(folder, defective))
    defect_scores = np.array([m.max() for m in maps])
    assert defect_scores.min() > normal_scores.max()
    inside = 0
    for heatmap, mask in zip(maps, masks):
        assert heatmap.shape == mask.shape  # the image's own size
        inside += mask[np.unravel_index(heatmap.argmax(), heatmap.shape)]
    assert inside >= 4


def test_padim_separates_defects(images):
    folder, normal, defective, masks = images
    model = AnomalyLearner(method="padim", n_features=50)(
        paths(folder, normal[:10]))
    assert model.mean.shape == (PADIM_GRID, 50)
    normal_scores = model.score(paths(folder, normal[10:]))
    maps = model.anomaly_map(paths(folder, defective))
    assert min(m.max() for m in maps) > normal_scores.max()
    assert sum(mask[np.unravel_index(m.argmax(), m.shape)]
               for m, mask in zip(maps, masks)) >= 4


def test_bad_images_skipped_with_reason(images, patchcore):
    folder, normal, _, _ = images
    test = [os.path.join(folder, "missing.png"), paths(folder, normal)[0],
            os.path.join(folder, "broken.png"), None]
    result = patchcore.evaluate(test, maps=True)
    assert np.isnan(result.scores[[0, 2, 3]]).all()
    assert np.isfinite(result.scores[1])
    assert set(result.skipped) == {0, 2, 3}
    assert "not found" in result.skipped[0]
    assert "not an image" in result.skipped[2]
    assert result.maps[0] is None and result.maps[1] is not None
    # A broken normal image is left out of fitting, with its reason.
    model = AnomalyLearner(calibration=0)(
        paths(folder, normal[:3]) + [os.path.join(folder, "broken.png")])
    assert list(model.skipped) == [3]
    assert model.n_train == 3
    with pytest.raises(InvalidInput):
        AnomalyLearner()([os.path.join(folder, "broken.png")])


def test_model_on_table_adds_columns(images, patchcore):
    folder, normal, defective, _ = images
    names = normal[10:] + defective + ["missing.png"]
    table = image_table(folder, names)
    domain = table.domain
    scored = patchcore(table)
    assert table.domain is domain and len(domain.metas) == 1
    assert scored.domain is not domain
    score_var, flag_var = scored.domain.metas[-2:]
    assert score_var.name == "Anomaly score" and score_var.is_continuous
    assert flag_var.name == "Anomalous" and flag_var.values == ("No", "Yes")
    scores, flags = scored.get_column(score_var), scored.get_column(flag_var)
    np.testing.assert_array_equal(flags[:-1],
                                  scores[:-1] > patchcore.threshold)
    assert (flags[4:9] == 1).all()  # every defect
    assert np.isnan(flags[-1]) and np.isnan(scored.get_column(score_var)[-1])
    np.testing.assert_array_equal(scored.ids, table.ids)


def test_normal_value_and_labelled_threshold(images):
    folder, normal, defective, _ = images
    names = normal + defective
    labels = [0] * len(normal) + [1] * len(defective)
    table = image_table(folder, names, labels, ["good", "broken"], "state")
    model = AnomalyLearner(normal_value="good")(table)
    assert len(model.anomaly_scores) == 5
    # The threshold separates the held-out normals from the anomalies.
    assert model.normal_scores.max() < model.threshold \
        < model.anomaly_scores.min()
    with pytest.raises(InvalidInput, match="not a value"):
        AnomalyLearner(normal_value="fine")(table)


def test_patch_features_pooled_to_the_registry_grid(patchcore):
    # fire2 and fire3 (56×56, 128 channels each) averaged down to 27×27.
    assert patchcore.grid == (27, 27)
    assert patchcore.memory_bank.shape[1] == 256


def test_score_is_mean_of_highest_values():
    heatmap = np.zeros((10, 20))
    heatmap[0, :2] = (5, 3)  # 1 % of 200 values: the top two
    assert top_mean(heatmap) == 4
    assert top_mean(heatmap, fraction=0.001) == 5  # at least one value


def test_choose_threshold():
    assert choose_threshold(np.arange(101.), [], 0.99) == 99
    # Best balanced accuracy: between 3 and 5, not above the outlier 10.
    assert choose_threshold([1, 2, 3, 10], [5, 6, 7]) == 4


def test_cancel_through_callback(images):
    folder, normal, _, _ = images

    def cancel(fraction):
        raise Cancelled()
    with pytest.raises(Cancelled):
        AnomalyLearner()(paths(folder, normal[:4]), progress_callback=cancel)


def test_bad_arguments():
    with pytest.raises(InvalidInput):
        AnomalyLearner(method="knn")
    with pytest.raises(InvalidInput):
        AnomalyLearner(coreset=0)


def test_maps_shrunk_for_thumbnails(images, patchcore):
    folder, normal, defective, _ = images
    full = patchcore.evaluate(paths(folder, defective[:1]), maps=True)
    small = patchcore.evaluate(paths(folder, defective[:1]), maps=True,
                               max_side=32)
    assert full.maps[0].shape == (72, 96)
    assert small.maps[0].shape == (24, 32)  # the aspect ratio is kept
    assert small.scores[0] == full.scores[0]


def test_padim_falls_back_to_the_shared_feature_maps():
    squeezenet = BACKBONES["squeezenet"]
    shared = dataclasses.replace(squeezenet, padim_layers=(), padim_grid=())
    assert shared.anomaly_features("padim") == (
        squeezenet.anomaly_layers, squeezenet.anomaly_grid)
    assert squeezenet.anomaly_features("patchcore") == (
        squeezenet.anomaly_layers, squeezenet.anomaly_grid)
    with pytest.raises(InvalidInput, match="knn"):
        squeezenet.anomaly_features("knn")


def test_model_pickled_before_per_method_maps_scores_the_same(
        images, monkeypatch):
    folder, normal, defective, _ = images
    test = paths(folder, normal[10:] + defective)
    squeezenet = BACKBONES["squeezenet"]
    # Fitted as PaDiM was before it had its own maps: on anomaly_layers.
    monkeypatch.setitem(BACKBONES, "squeezenet", dataclasses.replace(
        squeezenet, padim_layers=(), padim_grid=()))
    model = AnomalyLearner(method="padim", n_features=50)(
        paths(folder, normal[:10]))
    monkeypatch.undo()
    assert model.feature_layers == squeezenet.anomaly_layers
    scores = model.score(test)
    # Such a model's pickle has none of the new attributes.
    del model.feature_layers, model.feature_grid, model.n_channels
    old = pickle.dumps(model)
    restored = pickle.loads(old)
    assert restored.feature_layers == squeezenet.anomaly_layers
    assert restored.feature_grid == squeezenet.anomaly_grid
    np.testing.assert_array_equal(restored.score(test), scores)


def test_padim_reads_its_own_feature_maps(images, patchcore):
    folder, normal, defective, _ = images
    squeezenet = BACKBONES["squeezenet"]
    model = AnomalyLearner(method="padim", n_features=50)(
        paths(folder, normal[:10]))
    # fire3 (128 channels, 56×56 pooled to 13×13) and fire7 (384, 13×13).
    assert model.feature_layers == ("fire3_concat", "fire7_concat") \
        == squeezenet.padim_layers != patchcore.feature_layers
    assert model.network.layers == model.feature_layers
    assert model.n_channels == model.network.n_channels == 512
    assert model.grid == (13, 13) and patchcore.grid == (27, 27)
    restored = pickle.loads(pickle.dumps(model))
    test = paths(folder, normal[10:] + defective)
    np.testing.assert_array_equal(restored.score(test), model.score(test))
    # Scored on other maps (as if the registry had changed under it), the
    # model refuses rather than giving wrong scores.
    restored.feature_layers = squeezenet.anomaly_layers
    restored.feature_grid = squeezenet.anomaly_grid
    restored._network = None
    with pytest.raises(InvalidInput, match="fit it again"):
        restored.score(test[:1])
