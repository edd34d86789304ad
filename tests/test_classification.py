import os
import pickle
import random
import shutil
from unittest import mock

import numpy as np
import pytest

from Orange.classification import LogisticRegressionLearner
from Orange.data import ContinuousVariable, Domain, Table
from Orange.evaluation import CA, CrossValidation

from orangecontrib.deepimage import ImageClassifierLearner
from orangecontrib.deepimage.classification import ImageClassifierModel
from orangecontrib.deepimage.embedding import ImageEmbedder
from orangecontrib.deepimage.images import image_paths
from orangecontrib.deepimage.training import (
    StreamingDataset, TrainingError, TrainingHooks)

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


@pytest.mark.parametrize("augment", [False, True])
def test_progress_follows_the_work_done(shapes, augment):
    """The bar never runs ahead of (or lags) the work by more than 10 %.

    Work is counted in passes of the images through the network: embedding
    them is one; with augmentation each epoch streams them once more. On
    cached features (no augmentation) the head's epochs together take as
    long as the embedding.
    """
    epochs = 3
    events = []  # ("progress", fraction) and ("epoch", epochs completed)
    hooks = TrainingHooks(on_epoch_end=lambda epoch, _: events.append(
        ("epoch", epoch + 1)))
    learner = ImageClassifierLearner(
        augment=augment, epochs=epochs, batch_size=8, early_stopping=False,
        validation=0, hooks=hooks)
    learner(shapes, progress_callback=lambda p, *_: events.append(
        ("progress", p)))

    if augment:
        def work(completed):  # passes done, of 1 + epochs
            return (1 + completed) / (1 + epochs)
    else:
        def work(completed):
            return 0.5 + 0.5 * completed / epochs
    fractions = [value for kind, value in events if kind == "progress"]
    assert fractions[-1] == pytest.approx(1)
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:]))
    completed = 0
    training = False
    for kind, value in events:
        if kind == "epoch":
            completed = value
            continue
        if not training and value > work(0) + 1e-9:
            training = True  # the first batch has been trained
        if not training:  # embedding: at most one pass is done
            assert value <= work(0) + 0.1
        else:  # between the epochs completed and the one running
            assert work(completed) - 0.1 <= value <= work(completed + 1) + 0.1
    assert completed == epochs


def test_augmentations_by_name(shapes):
    from orangecontrib.deepimage.classification import with_augmentation
    import keras
    network = keras.Sequential([keras.Input((8, 8, 3)),
                                keras.layers.Flatten()])
    augmented = with_augmentation(network, 0, ("rotation", "zoom"))
    names = [type(layer).__name__ for layer in
             augmented.get_layer("augmentation").layers]
    assert names == ["RandomRotation", "RandomZoom"]
    learner = ImageClassifierLearner(augmentations=("zoom", "flip"))
    assert learner.augmentations == ("flip", "zoom")
    with pytest.raises(ValueError, match="mirror"):
        ImageClassifierLearner(augmentations=("mirror",))


def test_diagnosis_of_training_curves():
    from orangecontrib.deepimage.classification import training_diagnosis
    good = {"val_loss": [0.9, 0.3, 0.4], "accuracy": [0.5, 0.9, 0.95],
            "val_accuracy": [0.5, 0.88, 0.86]}
    assert training_diagnosis(good, 100, ("a", 0.5)) == {}
    # Judged at the best epoch (lowest validation loss), not the last one.
    late_overfit = dict(good, accuracy=[0.5, 0.9, 1.0],
                        val_accuracy=[0.5, 0.88, 0.6])
    assert training_diagnosis(late_overfit, 100, ("a", 0.5)) == {}
    overfit = dict(good, accuracy=[0.5, 1.0, 1.0])
    overfit["val_accuracy"] = [0.5, 0.7, 0.7]
    assert set(training_diagnosis(overfit, 100, ("a", 0.5))) == \
        {"overfitting"}
    chance = dict(good, accuracy=[0.5, 0.55, 0.6],
                  val_accuracy=[0.5, 0.52, 0.5])
    assert set(training_diagnosis(chance, 100, ("a", 0.5))) == {"at_chance"}
    assert set(training_diagnosis(good, 10, ("a", 0.5))) == \
        {"small_validation"}
    assert "±0.31" in training_diagnosis(good, 10)["small_validation"]


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


@pytest.mark.parametrize("augment", [False, True])
def test_same_seed_same_model_and_no_global_random_state(shapes, augment):
    # The seed reaches the split, initialisation, dropout, shuffling and
    # augmentation explicitly: nothing global is seeded or drawn from.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    models = [ImageClassifierLearner(epochs=2, batch_size=8, augment=augment,
                                     random_state=7)(shapes)
              for _ in range(2)]
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert np.random.get_state()[2] == numpy_state[2]
    assert random.getstate() == python_state
    np.testing.assert_allclose(models[0].history["loss"],
                               models[1].history["loss"], rtol=1e-5)
    first, second = (model.predict_paths(
        image_paths(shapes, shapes.domain["image"]))[0] for model in models)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)
    other = ImageClassifierLearner(epochs=2, batch_size=8, augment=augment,
                                   random_state=8)(shapes)
    assert not np.allclose(other.history["loss"], models[0].history["loss"])


def test_invalid_parameters():
    with pytest.raises(ValueError, match="model="):
        ImageClassifierLearner(backbone="alexnet")
    with pytest.raises(ValueError, match="validation"):
        ImageClassifierLearner(validation=1.5)


def copy_shapes(shapes, folder):
    """The shapes' files copied into `folder` (copies: tests change them)."""
    origin = shapes.domain["image"].attributes["origin"]
    names = list(shapes.get_column("image"))
    for name in names:
        shutil.copy(os.path.join(origin, name), folder / name)
    return names


def test_unreadable_image_is_left_out_with_its_reason(tmp_path, shapes):
    names = copy_shapes(shapes, tmp_path)
    (tmp_path / "broken.png").write_text("not an image")
    table = image_table(tmp_path, names + ["broken.png"],
                        list(shapes.Y) + [0],
                        shapes.domain.class_var.values, "shape")
    model = ImageClassifierLearner(epochs=1)(table)
    assert list(model.skipped) == [len(names)]
    assert "not an image file" in model.skipped[len(names)]
    assert any(f"row {len(names) + 1}: not an image file" in note
               for note in model.notes)


def test_streaming_skips_an_image_unreadable_after_embedding(tmp_path,
                                                             shapes):
    # The first file is replaced by text after it was embedded: the stream
    # must leave it out instead of training on a stand-in with its label.
    names = copy_shapes(shapes, tmp_path)
    (tmp_path / "broken.png").write_text("not an image")
    table = image_table(tmp_path, names + ["broken.png"],
                        list(shapes.Y) + [0],
                        shapes.domain.class_var.values, "shape")
    embed_paths = ImageEmbedder.embed_paths

    def embed_then_break(self, paths, *args, **kwargs):
        result = embed_paths(self, paths, *args, **kwargs)
        (tmp_path / names[0]).write_text("changed since")
        return result

    seen = []
    one_example = StreamingDataset._one_example

    def record(pixels, label, rng):
        seen.append((pixels.copy(), int(label)))
        return one_example(pixels, label, rng)

    with mock.patch.object(ImageEmbedder, "embed_paths", embed_then_break), \
            mock.patch.object(StreamingDataset, "_one_example",
                              side_effect=record):
        model = ImageClassifierLearner(augment=True, epochs=1, batch_size=8,
                                       validation=0, early_stopping=False
                                       )(table)
    # one epoch on the readable images, each once, none grey
    assert len(seen) == len(names) - 1
    assert sorted(label for _, label in seen) == sorted(shapes.Y[1:])
    assert not any(np.all(pixels == pixels.flat[0]) for pixels, _ in seen)
    # both left-out images reported, with their reasons
    assert sorted(model.skipped) == [0, len(names)]
    assert "not an image file" in model.skipped[0]
    assert any(note.startswith("2 image(s) could not be read")
               for note in model.notes)


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
