import os

import numpy as np
import pytest
from PIL import Image

from orangecontrib.deepimage import ImageClassifierLearner
from orangecontrib.deepimage.explain import (
    explain_images, grad_cam, overlay_heatmap, write_heatmaps)

from imagedata import shapes_table

OBJECT = 100  # side of the pasted object, on a 227×227 canvas


@pytest.fixture(scope="module")
def pasted_cats(tmp_path_factory):
    """A cat's face pasted at random places on a plain grey background."""
    from skimage import data
    folder = tmp_path_factory.mktemp("pasted")
    face = Image.fromarray(data.chelsea()).crop((50, 0, 350, 300)) \
        .resize((OBJECT, OBJECT))
    rng = np.random.default_rng(7)
    placed = []
    for i in range(10):
        canvas = Image.new("RGB", (227, 227), (128, 128, 128))
        left, top = (int(v) for v in rng.integers(0, 227 - OBJECT, 2))
        canvas.paste(face, (left, top))
        path = str(folder / f"cat{i}.png")
        canvas.save(path)
        placed.append((path, left, top))
    return placed


def test_heatmap_peak_falls_on_the_object(pasted_cats):
    heatmaps = grad_cam("squeezenet", [path for path, _, _ in pasted_cats])
    inside = 0
    for (_, left, top), heatmap in zip(pasted_cats, heatmaps):
        assert heatmap.shape == (227, 227)
        assert 0 <= heatmap.min() and heatmap.max() == pytest.approx(1)
        row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        inside += left <= col < left + OBJECT and top <= row < top + OBJECT
    assert inside >= 8


def test_imagenet_explanation_names_classes(pasted_cats):
    explanation = explain_images("squeezenet", [pasted_cats[0][0], None])
    assert "cat" in explanation.class_names[explanation.classes[0]].lower() \
        or "mau" in explanation.class_names[explanation.classes[0]].lower()
    assert explanation.heatmaps[1] is None and 1 in explanation.skipped
    assert explanation.classes[1] == -1


def test_classifier_model_and_given_target(tmp_path):
    data = shapes_table(tmp_path, per_class=6)
    model = ImageClassifierLearner(epochs=5)(data)
    explanation = explain_images(model, data)
    assert len(explanation.heatmaps) == len(data)
    assert all(h.shape == model.input_size for h in explanation.heatmaps)
    np.testing.assert_array_equal(explanation.classes, explanation.predicted)
    given = explain_images(model, data, target="square")
    assert set(given.classes) == {1}
    assert np.all(given.probabilities <= 1)
    with pytest.raises(ValueError, match="target"):
        explain_images(model, data, target="circle")


def test_overlay_and_written_files_never_overwrite(tmp_path, pasted_cats):
    path = pasted_cats[0][0]
    image = Image.open(path)
    heatmap = np.zeros((227, 227))
    heatmap[:50, :50] = 1
    blended = np.asarray(overlay_heatmap(image, heatmap, opacity=1.0))
    original = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(blended[100:, 100:], original[100:, 100:])
    assert blended[10, 10, 0] > original[10, 10, 0]  # hot is red

    explanation = explain_images("squeezenet", [path])
    first = write_heatmaps(explanation, [path], str(tmp_path))
    second = write_heatmaps(explanation, [path], str(tmp_path))
    assert first[0] != second[0]
    assert all(os.path.exists(p) for p in first + second)
    assert os.path.basename(second[0]) == "cat0-gradcam-1.png"


def test_evaluated_predictions_are_found_by_the_columns_orange_adds():
    from Orange.data import DiscreteVariable, Domain, StringVariable, Table
    from orangecontrib.deepimage.explain import evaluated_predictions
    shape = DiscreteVariable("shape", ("disc", "square"))
    image = StringVariable("image")

    def table(*metas):
        domain = Domain([], shape, [image] + [var for var, _ in metas])
        values = np.array([["a.png", "b.png", "c.png"]]
                          + [column for _, column in metas], dtype=object).T
        return Table.from_numpy(domain, np.empty((3, 0)),
                                np.array([0, 1, 1]), values)

    # Confusion Matrix's selected data: "<class>(<learner>)"; a NaN stays
    # unknown.
    predicted = DiscreteVariable("shape(Image Classifier)", shape.values)
    found = evaluated_predictions(
        table((predicted, [1, 0, np.nan])), ("disc", "square"),
        "Image Classifier")
    assert found.column == "shape(Image Classifier)"
    assert list(found.classes) == [1, 0, -1]
    assert not found.cross_validated
    # Test & Score's predictions: the learner's name and a fold; the
    # model's classes may be in another order.
    learner = DiscreteVariable("Image Classifier", shape.values)
    fold = DiscreteVariable("Fold", ("1", "2"))
    found = evaluated_predictions(
        table((learner, [0, 0, 1]), (fold, [0, 1, 0])), ("square", "disc"),
        "Image Classifier")
    assert list(found.classes) == [1, 1, 0]
    assert found.cross_validated
    # A column of the user's with the same values is not a prediction.
    other = DiscreteVariable("guess", shape.values)
    assert evaluated_predictions(table((other, [0, 0, 1])),
                                 ("disc", "square"), "Image Classifier") \
        is None


def test_minus_one_explains_the_predicted_class(tmp_path):
    data = shapes_table(tmp_path, per_class=2)
    model = ImageClassifierLearner(epochs=2)(data)
    predicted = explain_images(model, data)
    mixed = explain_images(model, data, [-1, 2, -1, 2, -1, 2])
    np.testing.assert_array_equal(mixed.classes[::2], predicted.classes[::2])
    assert (mixed.classes[1::2] == 2).all()
