"""Object measurements: exactly scikit-image's regionprops, split touching
objects, per-image summaries and whole tables of images and masks.
"""

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.measure import label, regionprops

from Orange.data import Domain, StringVariable, Table

from orangecontrib.deepimage.measure import (
    CONNECTIVITY, label_objects, measure_objects, measure_table,
    summarize_objects)
from orangecontrib.deepimage.segdata import pair_folders


def disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def class_mask():
    """Two classes; class 1 has a blob, an L shape and a diagonal pair."""
    mask = np.zeros((12, 14), np.uint8)
    mask[1:4, 1:5] = 1            # a rectangle
    mask[6:11, 2] = 1             # an L shape …
    mask[10, 2:6] = 1
    mask[2, 8] = mask[3, 9] = 1   # touching only at a corner: 1 object
    mask[6:9, 9:13] = 2           # class 2
    mask[11, 13] = 2              # a one-pixel object
    return mask


def column(table, name):
    return table.get_column(name)


def test_class_mask_matches_regionprops_exactly():
    mask = class_mask()
    table = measure_objects(mask)
    expected = []
    for class_index in (1, 2):
        # the reference: skimage's labelling of each class, 8-connectivity
        regions = regionprops(label(mask == class_index, connectivity=2))
        expected += [(class_index, region) for region in regions]
    assert CONNECTIVITY == 2
    assert len(table) == len(expected) == 5
    np.testing.assert_array_equal(column(table, "area"),
                                  [r.area for _, r in expected])
    np.testing.assert_array_equal(column(table, "centroid row"),
                                  [r.centroid[0] for _, r in expected])
    np.testing.assert_array_equal(column(table, "centroid col"),
                                  [r.centroid[1] for _, r in expected])
    np.testing.assert_array_equal(
        np.column_stack([column(table, name) for name in
                         ("min row", "min col", "max row", "max col")]),
        [r.bbox for _, r in expected])
    np.testing.assert_allclose(column(table, "equivalent diameter"),
                               [r.equivalent_diameter_area
                                for _, r in expected])
    np.testing.assert_allclose(column(table, "eccentricity"),
                               [r.eccentricity for _, r in expected])
    assert [table.domain.class_var.values[int(v)] for v in table.Y] == \
        ["class 1"] * 3 + ["class 2"] * 2
    np.testing.assert_array_equal(column(table, "object"), [1, 2, 3, 4, 5])


def test_hand_checked_bounding_box_and_area():
    # the 3×4 rectangle at rows 1–3, columns 1–4: bbox max is exclusive
    row = measure_objects(class_mask())[0]
    assert row["area"] == 12
    assert (row["min row"], row["min col"], row["max row"],
            row["max col"]) == (1, 1, 4, 5)
    assert (row["centroid row"], row["centroid col"]) == (2, 2.5)


def test_instance_mask_matches_regionprops_exactly():
    # ids need not be consecutive; id 9 is in two pieces and stays one object
    ids = np.zeros((10, 10), np.uint32)
    ids[1:4, 1:4] = 5
    ids[1:4, 4:7] = 70000         # touching id 5: still apart
    ids[8, 0] = ids[8, 9] = 9     # one id, two pieces
    table = measure_objects(ids, instance=True)
    regions = regionprops(ids.astype(np.int64))
    assert len(table) == 3
    np.testing.assert_array_equal(column(table, "object"), [5, 9, 70000])
    np.testing.assert_array_equal(column(table, "area"),
                                  [r.area for r in regions])
    np.testing.assert_array_equal(column(table, "centroid row"),
                                  [r.centroid[0] for r in regions])
    np.testing.assert_array_equal(column(table, "centroid col"),
                                  [r.centroid[1] for r in regions])
    assert table.domain.class_var.values == ("object",)


def test_mean_intensity_grey_and_rgb():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :2] = 1
    mask[3, 3] = 1
    grey = np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000  # 16-bit
    table = measure_objects(mask, grey)
    np.testing.assert_array_equal(column(table, "mean intensity"),
                                  [500, 15000])
    # colour images are weighted like PIL's "L" (0.299, 0.587, 0.114)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 100
    table = measure_objects(mask, rgb)
    np.testing.assert_allclose(column(table, "mean intensity"), [29.9, 29.9])
    reference = regionprops(label(mask, connectivity=2),
                            intensity_image=grey.astype(float))
    np.testing.assert_array_equal(
        measure_objects(mask, grey).get_column("mean intensity"),
        [r.intensity_mean for r in reference])
    with pytest.raises(ValueError, match="mask is 4×4"):
        measure_objects(mask, np.zeros((5, 4)))


def test_split_touching_discs():
    # two discs of radius 8 whose edges overlap: one blob until split
    mask = (disc((24, 40), (12, 11), 8) | disc((24, 40), (12, 26), 8)) \
        .astype(np.uint8)
    assert len(measure_objects(mask)) == 1
    split = measure_objects(mask, split_touching=True, min_distance=5)
    assert len(split) == 2
    assert column(split, "area").sum() == mask.sum()
    np.testing.assert_allclose(sorted(column(split, "centroid col")),
                               [11, 26], atol=1)
    # instance masks are never split
    assert len(measure_objects(mask, instance=True,
                               split_touching=True)) == 1


def test_split_keeps_small_objects_whole():
    # a one-pixel object and a thin line have no peak of their own to lose
    mask = np.zeros((6, 8), np.uint8)
    mask[0, 0] = 1
    mask[3, 1:7] = 1
    labels, classes = label_objects(mask, split_touching=True,
                                    min_distance=5)
    assert labels.max() == 2 and list(classes) == [1, 1]
    assert (labels > 0).sum() == mask.sum()


def test_empty_mask_and_class_names():
    table = measure_objects(np.zeros((3, 3), np.uint8),
                            classes=["background", "nucleus"])
    assert len(table) == 0
    assert table.domain.class_var.values == ("nucleus",)
    with pytest.raises(ValueError, match="only 2 classes"):
        measure_objects(np.full((2, 2), 2), classes=["bg", "a"])


def test_summaries_count_and_area_fraction():
    mask = class_mask()
    empty = np.zeros_like(mask)
    summary = summarize_objects([mask, empty], names=["a", "b"])
    assert [var.name for var in summary.domain.attributes] == \
        ["class 1 count", "class 1 area fraction",
         "class 2 count", "class 2 area fraction"]
    total = mask.size
    np.testing.assert_array_equal(
        summary.X, [[3, (mask == 1).sum() / total,
                     2, (mask == 2).sum() / total],
                    [0, 0, 0, 0]])
    assert list(summary.get_column("image name")) == ["a", "b"]
    # instance masks: one object per id
    ids = np.array([[0, 1], [2, 3]])
    summary = summarize_objects(ids, instance=True)
    np.testing.assert_array_equal(summary.X, [[3, 0.75]])


def test_measure_table_over_paired_folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    one = np.zeros((6, 8), np.uint8)
    one[1:3, 1:3] = 1
    one[4, 5:8] = 1
    grey = np.full((6, 8), 50, np.uint8)
    grey[1:3, 1:3] = 200
    Image.fromarray(grey).save(images / "one.png")
    Image.fromarray(one * 255).save(masks / "one.png")  # 0/255 mask
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(images / "two.png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(masks / "two.png")
    (masks / "classes.txt").write_text("background\nnucleus\n")
    table, _ = pair_folders(str(images), str(masks))

    objects, summary = measure_table(table)
    assert list(objects.get_column("image name")) == ["one", "one"]
    np.testing.assert_array_equal(objects.get_column("area"), [4, 3])
    np.testing.assert_array_equal(objects.get_column("mean intensity"),
                                  [200, 50])
    assert objects.domain.class_var.values == ("nucleus",)
    assert list(summary.get_column("image name")) == ["one", "two"]
    np.testing.assert_array_equal(summary.get_column("nucleus count"), [2, 0])
    np.testing.assert_allclose(summary.get_column("nucleus area fraction"),
                               [7 / 48, 0])
    assert "problem" not in summary.domain


def test_measure_table_reports_bad_rows(tmp_path):
    # a missing mask and an image of the wrong size: listed, not fatal
    tifffile.imwrite(tmp_path / "m1.tif", np.array([[0, 1], [1, 1]],
                                                   np.uint8))
    Image.new("L", (3, 3)).save(tmp_path / "i1.png")
    image = StringVariable("image")
    image.attributes.update({"type": "image", "origin": str(tmp_path)})
    mask = StringVariable("mask")
    mask.attributes.update({"type": "image", "origin": str(tmp_path),
                            "mask": "class", "classes": "bg,fg"})
    table = Table.from_numpy(
        Domain([], metas=[image, mask]), np.empty((2, 0)),
        metas=np.array([["i1.png", "m1.tif"], ["i2.png", "gone.png"]],
                       dtype=object))
    objects, summary = measure_table(table)
    assert len(objects) == 1 and np.isnan(objects[0]["mean intensity"])
    problems = list(summary.get_column("problem"))
    assert "mask is 2×2" in problems[0]
    assert "not found" in problems[1]
    assert np.isnan(summary.X[1]).all()
    with pytest.raises(ValueError, match="no mask column"):
        measure_table(Table.from_numpy(Domain([], metas=[image]),
                                       np.empty((1, 0)),
                                       metas=np.array([["x"]], dtype=object)))
