import os
import pickle
from unittest import mock

import numpy as np
import pytest

from Orange.classification import LogisticRegressionLearner
from Orange.data import ContinuousVariable, Domain, Table
from Orange.evaluation import CA, CrossValidation

from orangecontrib.deepimage import ImageClassifierLearner
from orangecontrib.deepimage.classification import ImageClassifierModel
from orangecontrib.deepimage.embedding import ImageEmbedder
from orangecontrib.deepimage.training import TrainingError, TrainingHooks

from imagedata import digits_table, image_table, shapes_table


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_table(tmp_path_factory.mktemp("digits"), n=300)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return shapes_table(tmp_path_factory.mktemp("shapes"), per_class=8)


@pytest.fixture(scope="module")
def shapes_model(shapes):
    return ImageClassifierLearner(epochs=20, batch_size=8)(shapes)


def test_cross_validation_close_to_logistic_regression(digits):
    results = CrossValidation(k=5, random_state=0)(
        digits, [ImageClassifierLearner()])
    ours = CA(results)[0]

    # Logistic regression on the same features the head is trained on.
    embedder = ImageEmbedder("squeezenet", layer="fire9")
    embedded, _, _ = embedder(digits)
    features = embedded.transform(Domain(
        embedded.domain.attributes[-512:], digits.domain.class_var))
    logistic = CA(CrossValidation(k=5, random_state=0)(
        features, [LogisticRegressionLearner()]))[0]
    assert ours > 0.9
    assert ours > logistic - 0.05


def test_model_predicts_every_row_and_unknown_for_unreadable(shapes,
                                                              shapes_model):
    folder = shapes.domain["image"].attributes["origin"]
    with open(os.path.join(folder, "broken.png"), "w") as file:
        file.write("not an image")
    names = list(shapes.get_column("image")[:3]) + ["broken.png", "missing.png"] \
        + list(shapes.get_column("image")[-3:])
    labels = list(shapes.Y[:3]) + [0, 0] + list(shapes.Y[-3:])
    table = image_table(folder, names, labels, shapes.domain.class_var.values,
                        "shape")
    values, probs = shapes_model(table, ImageClassifierModel.ValueProbs)
    assert np.isnan(values[3:5]).all()
    assert np.isnan(probs[3:5]).all()
    known = np.r_[0:3, 5:8]
    np.testing.assert_array_equal(values[known], table.Y[known])
    np.testing.assert_allclose(probs[known].sum(axis=1), 1, atol=1e-5)


def test_model_uses_its_own_image_column_and_folder(tmp_path, shapes,
                                                    shapes_model):
    # The same pictures in another folder, listed under another column name.
    folder = shapes.domain["image"].attributes["origin"]
    names = list(shapes.get_column("image"))
    for name in names:
        os.link(os.path.join(folder, name), tmp_path / name)
    moved = image_table(tmp_path, names)
    expected = shapes_model(shapes)
    np.testing.assert_array_equal(shapes_model(moved), expected)


def test_pickled_model_gives_identical_probabilities(shapes, shapes_model):
    restored = pickle.loads(pickle.dumps(shapes_model))
    paths = [os.path.join(shapes.domain["image"].attributes["origin"], name)
             for name in shapes.get_column("image")]
    restored.cached_features = shapes_model.cached_features = None
    original, _ = shapes_model.predict_paths(paths)
    reloaded, _ = restored.predict_paths(paths)
    np.testing.assert_array_equal(original, reloaded)
    # Orange renormalises the probabilities of a model whose class variable
    # is another object after unpickling: equal up to float rounding.
    np.testing.assert_allclose(restored(shapes, restored.Probs),
                               shapes_model(shapes, shapes_model.Probs),
                               atol=1e-6)


def test_fine_tuning_lowers_loss_and_reports_validation(digits):
    epochs = []
    hooks = TrainingHooks(on_epoch_end=lambda e, logs: epochs.append(logs))
    learner = ImageClassifierLearner(unfreeze=2, epochs=5, batch_size=16,
                                     early_stopping=False, hooks=hooks)
    data = digits[:100]
    model = learner(data)
    assert model.cached_features is None  # the backbone was trained
    assert len(epochs) == 10  # head on cached features, then unfrozen layers
    unfrozen = epochs[5:]
    assert all("val_accuracy" in logs for logs in unfrozen)
    assert unfrozen[-1]["loss"] < unfrozen[0]["loss"]
    assert len(model.history["val_accuracy"]) == 10
    assert np.mean(model(data) == data.Y) > 0.8


def test_augmentation_trains_by_streaming(shapes):
    model = ImageClassifierLearner(augment=True, epochs=2, batch_size=8,
                                   early_stopping=False)(shapes)
    assert len(model.history["loss"]) == 2
    probs = model(shapes, model.Probs)
    assert probs.shape == (len(shapes), 3)


def test_progress_reaches_one_and_can_cancel(shapes):
    seen = []
    ImageClassifierLearner(epochs=3)(shapes, progress_callback=lambda p, *_:
                                     seen.append(p))
    assert seen[-1] == 1
    assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))

    class Cancelled(Exception):
        pass

    def cancel(progress, *_):
        if progress > 0.6:
            raise Cancelled
    with pytest.raises(Cancelled):
        ImageClassifierLearner(epochs=50, early_stopping=False)(
            shapes, progress_callback=cancel)


def test_stop_request_keeps_a_model(shapes):
    calls = []
    hooks = TrainingHooks(should_stop=lambda: bool(calls.append(1)) or
                          len(calls) > 3)
    model = ImageClassifierLearner(epochs=100, early_stopping=False,
                                   hooks=hooks)(shapes)
    assert len(model.history["loss"]) < 100
    assert model(shapes).shape == (len(shapes),)


def test_clear_errors(tmp_path, shapes):
    learner = ImageClassifierLearner(epochs=1)
    no_images = Table.from_numpy(
        Domain([ContinuousVariable("x")], shapes.domain.class_var),
        np.zeros((4, 1)), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="image column"):
        learner(no_images)

    one_class = shapes[shapes.Y == 0]
    with pytest.raises(ValueError, match="at least two classes"):
        learner(one_class)

    numeric = Table.from_numpy(
        Domain([], ContinuousVariable("y"), shapes.domain.metas),
        np.empty((len(shapes), 0)), shapes.Y, shapes.metas)
    with pytest.raises(ValueError, match="categorical"):
        learner(numeric)


def test_class_with_one_image_is_noted(shapes):
    rows = np.r_[np.flatnonzero(shapes.Y == 0), np.flatnonzero(shapes.Y == 1),
                 np.flatnonzero(shapes.Y == 2)[:1]]
    model = ImageClassifierLearner(epochs=2)(shapes[rows])
    assert any("single image" in note and "stripes" in note
               for note in model.notes)


def test_nan_loss_is_a_clear_error(shapes):
    original = ImageEmbedder.embed_paths

    def embed_nan(self, paths, *args, **kwargs):
        result = original(self, paths, *args, **kwargs)
        result.vectors = [v * np.nan for v in result.vectors]
        return result

    with mock.patch.object(ImageEmbedder, "embed_paths", embed_nan):
        # A linear head: a ReLU would turn the NaNs into zeros.
        with pytest.raises(TrainingError, match="NaN"):
            ImageClassifierLearner(epochs=3, hidden_units=0)(shapes)


def test_out_of_memory_is_a_clear_error(shapes):
    import tensorflow as tf

    def exhausted(*_, **__):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM")

    with mock.patch("keras.Model.fit", exhausted):
        with pytest.raises(TrainingError, match="Out of memory"):
            ImageClassifierLearner(epochs=1)(shapes)


def test_class_weights_and_seed_are_reproducible(shapes):
    first = ImageClassifierLearner(epochs=3, class_weights=True,
                                   random_state=3)(shapes)
    second = ImageClassifierLearner(epochs=3, class_weights=True,
                                    random_state=3)(shapes)
    np.testing.assert_allclose(first.history["loss"], second.history["loss"],
                               rtol=1e-5)


def test_invalid_parameters():
    with pytest.raises(ValueError, match="model="):
        ImageClassifierLearner(backbone="alexnet")
    with pytest.raises(ValueError, match="validation"):
        ImageClassifierLearner(validation=1.5)


def test_a_class_value_without_images_is_never_predicted(shapes):
    # "triangle" is a value of the class variable that no image has.
    phantom = image_table(shapes.domain.metas[0].attributes["origin"],
                          list(shapes.metas[:, 0]), shapes.Y,
                          ["disc", "square", "stripes", "triangle"], "shape")
    model = ImageClassifierLearner(epochs=2, batch_size=8)(phantom)
    assert model.class_names[-1] == "triangle"  # the domain is kept
    values, probs = model(phantom, ret=model.ValueProbs)
    assert not np.any(values == 3)
    assert np.all(probs[:, 3] == 0)
    assert np.allclose(probs.sum(axis=1), 1)
    # The whole network (no cached embeddings) says the same.
    by_network, _ = model.predict_paths(
        [os.path.join(phantom.domain.metas[0].attributes["origin"], name)
         for name in phantom.metas[:, 0]])
    assert np.all(by_network[:, 3] == 0)
    assert np.allclose(by_network[:, :3], probs[:, :3], atol=1e-4)
