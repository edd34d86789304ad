"""Masks and pairing: every mask format, and every problem reported.

Each mask is a tiny hand-made array written with PIL or tifffile; the edge
case it stands for is named in a comment.
"""
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from orangecontrib.deepimage.images import (
    find_image_column, find_mask_column, image_paths, is_mask_column,
    mask_class_names)
from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.segdata import (
    MaskError, MaskInfo, RGBMaskError, image_size, load_mask, mask_info,
    pair_folders, read_class_names)

# A 4×3 class-index image with background, class 1 and class 2.
LABELS = np.array([[0, 0, 1, 1],
                   [0, 2, 2, 1],
                   [0, 0, 0, 0]], np.uint8)


def save(array, path, mode=None):
    Image.fromarray(array, mode).save(path)
    return str(path)


def write_image(folder, name, size=(4, 3), colour=(200, 100, 50)):
    Image.new("RGB", size, colour).save(os.path.join(folder, name))


# --- load_mask -----------------------------------------------------------

def test_class_index_png(tmp_path):
    # 8-bit grey PNG: the value is the class
    path = save(LABELS, tmp_path / "m.png")
    mask = load_mask(path)
    np.testing.assert_array_equal(mask, LABELS)
    assert mask.shape == (3, 4) and mask.dtype == np.int32


def test_binary_0_255_becomes_0_1(tmp_path):
    # black-and-white mask saved by an image editor: 255 means foreground
    path = save((LABELS > 0).astype(np.uint8) * 255, tmp_path / "bw.png")
    np.testing.assert_array_equal(load_mask(path), LABELS > 0)
    # an instance mask keeps its id 255
    assert load_mask(path, "instance").max() == 255


def test_one_bit_png(tmp_path):
    # mode "1" (bilevel) PNG
    image = Image.fromarray((LABELS > 0).astype(np.uint8) * 255).convert("1")
    image.save(tmp_path / "bit.png")
    np.testing.assert_array_equal(load_mask(str(tmp_path / "bit.png")),
                                  LABELS > 0)


def test_palette_index_is_the_class(tmp_path):
    # palette PNG (VOC style): colours are arbitrary, the INDEX is the class
    image = Image.fromarray(LABELS, "L").convert("P")
    image.putpalette([0, 0, 0, 250, 10, 10, 10, 250, 10] + [0] * 759)
    image.putdata(LABELS.ravel().tolist())
    image.save(tmp_path / "voc.png")
    assert Image.open(tmp_path / "voc.png").mode == "P"
    np.testing.assert_array_equal(load_mask(str(tmp_path / "voc.png")),
                                  LABELS)


def test_palette_0_255_is_not_folded(tmp_path):
    # palette index 255 (VOC's "void") stays 255: only grey masks fold
    array = np.array([[0, 255], [255, 0]], np.uint8)
    image = Image.fromarray(array, "L").convert("P")
    image.putpalette(list(range(256)) * 3)
    image.putdata(array.ravel().tolist())
    image.save(tmp_path / "void.png")
    assert load_mask(str(tmp_path / "void.png")).max() == 255


def test_16_bit_instance_png(tmp_path):
    # 16-bit PNG instance labels with ids above 255
    ids = np.array([[0, 300, 300], [0, 0, 1000], [7, 0, 1000]], np.uint16)
    Image.fromarray(ids).save(tmp_path / "inst.png")
    np.testing.assert_array_equal(
        load_mask(str(tmp_path / "inst.png"), "instance"), ids)


def test_32_bit_instance_tiff(tmp_path):
    # 32-bit TIFF ids beyond 16 bits (many objects in a large image)
    ids = np.array([[0, 70000], [123456, 70000]], np.uint32)
    tifffile.imwrite(tmp_path / "inst.tif", ids)
    mask = load_mask(str(tmp_path / "inst.tif"), "instance")
    np.testing.assert_array_equal(mask, ids)
    assert mask.ndim == 2


def test_16_bit_tiff_with_singleton_axes(tmp_path):
    # a (1, H, W) stack from ImageJ is still one 2-D mask
    tifffile.imwrite(tmp_path / "s.tif", LABELS[None].astype(np.uint16))
    np.testing.assert_array_equal(load_mask(str(tmp_path / "s.tif")), LABELS)


def test_grey_rgb_is_read_as_grey(tmp_path):
    # an RGB file whose pixels are all grey (R == G == B)
    path = save(np.dstack([LABELS] * 3), tmp_path / "grey.png")
    np.testing.assert_array_equal(load_mask(path), LABELS)


def test_rgb_colour_mask_is_refused_with_help(tmp_path):
    # a colour-coded mask: colours are not class indices
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[LABELS == 1] = (255, 0, 0)
    rgb[LABELS == 2] = (0, 255, 0)
    path = save(rgb, tmp_path / "colour.png")
    with pytest.raises(RGBMaskError) as info:
        load_mask(path)
    message = str(info.value)
    assert "colour.png" in message and "RGB" in message
    assert "class index" in message and "palette" in message


def test_jpeg_mask_is_refused(tmp_path):
    # lossy JPEG changes label values at edges
    Image.fromarray(LABELS * 100).save(tmp_path / "m.jpg")
    with pytest.raises(MaskError, match="JPEG"):
        load_mask(str(tmp_path / "m.jpg"))


def test_fractional_tiff_is_refused(tmp_path):
    # a probability map saved as float is not a mask
    tifffile.imwrite(tmp_path / "p.tif", np.array([[0.2, 0.9]], np.float32))
    with pytest.raises(MaskError, match="fractional"):
        load_mask(str(tmp_path / "p.tif"))
    # whole-number floats are fine
    tifffile.imwrite(tmp_path / "w.tif", np.array([[0, 2.0]], np.float32))
    np.testing.assert_array_equal(load_mask(str(tmp_path / "w.tif")),
                                  [[0, 2]])


def test_missing_and_text_files(tmp_path):
    with pytest.raises(MaskError, match="not found"):
        load_mask(str(tmp_path / "nothing.png"))
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(MaskError, match="not an image"):
        load_mask(str(tmp_path / "text.png"))
    with pytest.raises(ValueError, match="kind"):
        load_mask(str(tmp_path / "text.png"), "semantic")


def test_image_size_from_header_respects_exif(tmp_path):
    # a phone photo stored 4×3 with "rotate 90°" in EXIF is decoded 3×4
    image = Image.new("RGB", (4, 3))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert image_size(str(tmp_path / "rotated.jpg")) == (3, 4)
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((5, 7), np.uint16))
    assert image_size(str(tmp_path / "t.tif")) == (7, 5)


# --- pairing -------------------------------------------------------------

@pytest.fixture
def folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    return str(images), str(masks)


def test_pairs_by_stem_and_mask_suffixes(folders):
    images, masks = folders
    for name in ("cell01.jpg", "cell02.png", "cell03.tif", "lonely.png"):
        write_image(images, name)
    save(LABELS, os.path.join(masks, "cell01.png"))        # same stem
    save(LABELS, os.path.join(masks, "cell02_mask.png"))   # _mask suffix
    tifffile.imwrite(os.path.join(masks, "cell03-mask.tif"), LABELS)
    save(LABELS, os.path.join(masks, "orphan.png"))
    table, report = pair_folders(images, masks)

    assert report.n_pairs == 3 and len(table) == 3
    assert report.unpaired_images == ["lonely.png"]
    assert report.unpaired_masks == ["orphan.png"]
    assert list(table.get_column("image name")) == \
        ["cell01", "cell02", "cell03"]
    assert list(table.get_column("mask")) == \
        ["cell01.png", "cell02_mask.png", "cell03-mask.tif"]
    assert list(table.get_column("width")) == [4, 4, 4]

    # the columns follow the image and mask conventions of images.py
    image_var, mask_var = find_image_column(table), find_mask_column(table)
    assert image_var.name == "image" and mask_var.name == "mask"
    assert is_mask_column(mask_var) and not is_mask_column(image_var)
    assert mask_var.attributes["origin"] == masks
    assert mask_var.attributes["mask"] == "class"
    assert mask_class_names(mask_var) == ["background", "class 1", "class 2"]
    assert image_paths(table, image_var)[0] == os.path.join(images,
                                                            "cell01.jpg")
    assert image_paths(table, mask_var)[1] == os.path.join(
        masks, "cell02_mask.png")


def test_masks_beside_images_in_one_folder(folders):
    # one folder: cell.png is the image, cell_mask.png its mask
    images, _ = folders
    write_image(images, "cell.png")
    save(LABELS, os.path.join(images, "cell_mask.png"))
    table, report = pair_folders(images, images)
    assert list(table.get_column("image")) == ["cell.png"]
    assert list(table.get_column("mask")) == ["cell_mask.png"]
    assert not report.problems()


def test_problems_are_listed_and_left_out(folders):
    images, masks = folders
    for name in ("ok", "big", "colour", "broken", "strange", "twin"):
        write_image(images, name + ".png")
    write_image(images, "twin.jpg")  # two images with one stem
    save(LABELS, os.path.join(masks, "ok.png"))
    save(np.zeros((6, 8), np.uint8), os.path.join(masks, "big.png"))
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    save(rgb, os.path.join(masks, "colour.png"))
    with open(os.path.join(masks, "broken.png"), "w") as file:
        file.write("text")
    save(LABELS * 3, os.path.join(masks, "strange.png"))  # values 3 and 6
    save(LABELS, os.path.join(masks, "twin.png"))
    table, report = pair_folders(images, masks, classes="bg, a, b")

    assert list(table.get_column("image name")) == ["ok"]
    assert [name for name, _ in report.size_mismatches] == ["big.png"]
    assert "4×3" in report.size_mismatches[0][1] and \
        "8×6" in report.size_mismatches[0][1]
    assert [name for name, _ in report.rgb_masks] == ["colour.png"]
    assert [name for name, _ in report.unreadable_masks] == ["broken.png"]
    assert [name for name, _ in report.unknown_values] == ["strange.png"]
    assert "3, 6" in report.unknown_values[0][1]
    assert sorted(name for name, _ in report.ambiguous) == \
        ["twin.jpg", "twin.png"]
    assert report.n_left_out == 6
    assert "6 pair(s) left out" in report.summary()


def test_classes_txt_and_given_classes(folders):
    images, masks = folders
    write_image(images, "a.png")
    save(LABELS, os.path.join(masks, "a.png"))
    with open(os.path.join(masks, "classes.txt"), "w") as file:
        file.write("# comment\nbackground\nnucleus\n\nmembrane\n")
    table, report = pair_folders(images, masks)
    assert report.classes == ["background", "nucleus", "membrane"]
    assert report.classes_source == "classes.txt"
    assert report.unpaired_masks == []  # classes.txt is not a mask
    assert mask_class_names(find_mask_column(table)) == report.classes

    # names given by the user override classes.txt
    table, report = pair_folders(images, masks, classes=["bg", "x", "y"])
    assert report.classes == ["bg", "x", "y"]
    assert report.classes_source == "given"
    # too few names for the values in the mask: reported, not guessed
    table, report = pair_folders(images, masks, classes="bg, x")
    assert table is None and report.n_pairs == 0
    assert report.unknown_values[0][0] == "a.png"


def test_bad_class_names(folders, tmp_path):
    images, masks = folders
    with pytest.raises(ValueError, match="at least two"):
        pair_folders(images, masks, classes="background")
    path = tmp_path / "classes.txt"
    path.write_text("background\nnucleus\nnucleus\n")
    with pytest.raises(ValueError, match="repeat"):
        read_class_names(str(path))


def test_auto_kind_binary_masks_are_two_classes(folders):
    # 0/255 masks: class masks with background and one class
    images, masks = folders
    write_image(images, "a.png")
    save((LABELS > 0).astype(np.uint8) * 255, os.path.join(masks, "a.png"))
    table, report = pair_folders(images, masks)
    assert report.kind == "class" and report.kind_detected
    assert report.classes == ["background", "class 1"]
    assert not report.unknown_values


def test_auto_kind_16_bit_ids_are_instances(folders):
    # 16-bit masks with many ids: instance masks
    images, masks = folders
    write_image(images, "a.png")
    ids = np.array([[0, 1, 1, 0], [2, 0, 3, 3], [0, 4, 0, 500]], np.uint16)
    Image.fromarray(ids).save(os.path.join(masks, "a.png"))
    table, report = pair_folders(images, masks)
    assert report.kind == "instance" and report.kind_detected
    mask_var = find_mask_column(table)
    assert mask_var.attributes["mask"] == "instance"
    assert mask_class_names(mask_var) == ["background", "object"]
    # the user can still say they are class masks
    _, report = pair_folders(images, masks, kind="class")
    assert report.kind == "class" and not report.kind_detected
    assert len(report.classes) == 501
    # ids beyond the named classes: instances of the class at index 1
    with open(os.path.join(masks, "classes.txt"), "w") as file:
        file.write("background\nnucleus\n")
    table, report = pair_folders(images, masks)
    assert report.kind == "instance"
    assert mask_class_names(find_mask_column(table)) == \
        ["background", "nucleus"]


def test_auto_kind_16_bit_class_indices_within_names(folders):
    # a 16-bit mask whose values are all named classes stays a class mask
    images, masks = folders
    write_image(images, "a.png")
    Image.fromarray(LABELS.astype(np.uint16)).save(
        os.path.join(masks, "a.png"))
    _, report = pair_folders(images, masks, classes="bg, x, y")
    assert report.kind == "class" and not report.unknown_values
    # without names, three values in 16 bits look like instance ids
    _, report = pair_folders(images, masks)
    assert report.kind == "instance"


def test_missing_folder(folders):
    images, _ = folders
    with pytest.raises(FileNotFoundError, match="masks folder"):
        pair_folders(images, os.path.join(images, "nope"))


def test_callback_can_stop(folders):
    images, masks = folders
    for i in range(3):
        write_image(images, f"{i}.png")
        save(LABELS, os.path.join(masks, f"{i}.png"))
    seen = []

    class Stop(Exception):
        pass

    def callback(fraction):
        seen.append(fraction)
        raise Stop

    with pytest.raises(Stop):
        pair_folders(images, masks, callback=callback)
    assert seen == [pytest.approx(1 / 3)]


def test_shipped_nuclei_tutorial_data():
    # the redistributable tutorial set: 16 tiles, class and instance masks
    import orangecontrib.deepimage.tutorials as tutorials
    root = os.path.join(os.path.dirname(tutorials.__file__), "nuclei")
    images = os.path.join(root, "images")
    table, report = pair_folders(images, os.path.join(root, "masks"))
    assert len(table) == 16 and not report.problems()
    assert (report.kind, report.classes) == ("class", ["background",
                                                       "nucleus"])
    table, report = pair_folders(images, os.path.join(root, "instances"))
    assert len(table) == 16 and report.kind == "instance"
    assert report.classes == ["background", "nucleus"]


# --- mask_info: what a mask column says -----------------------------------

def mask_column(**attributes):
    from Orange.data import StringVariable
    var = StringVariable("mask")
    var.attributes.update(type="image", origin="", **attributes)
    return var


def test_mask_info_of_binary_masks(folders):
    # 0/255 masks paired from folders: class masks, background and one class
    images, masks = folders
    write_image(images, "a.png")
    save((LABELS > 0).astype(np.uint8) * 255, os.path.join(masks, "a.png"))
    table, _ = pair_folders(images, masks, classes="background,cell")
    info = mask_info(table)
    assert info == MaskInfo("class", ("background", "cell"), 0)
    assert info.binary and not info.instance
    assert info.model_classes == ["background", "cell"]
    # the folded 0/1 labels are what is learned, unchanged
    labels = load_mask(os.path.join(masks, "a.png"), info.kind)
    np.testing.assert_array_equal(info.training_labels(labels), LABELS > 0)


def test_mask_info_of_class_index_masks_with_classes():
    info = mask_info(mask_column(mask="class", classes="sky, plane ,bird"))
    assert info.kind == "class" and info.classes == ("sky", "plane", "bird")
    assert not info.binary and not info.instance
    assert info.model_classes == ["sky", "plane", "bird"]
    np.testing.assert_array_equal(info.training_labels(LABELS), LABELS)


def test_mask_info_of_class_masks_without_names():
    # fewer than two names: the names come from the values elsewhere
    for attributes in ({"mask": "class"}, {"mask": "class", "classes": ""},
                       {"mask": "class", "classes": "cells"}):
        info = mask_info(mask_column(**attributes))
        assert info.kind == "class" and info.classes == ()
        assert info.model_classes == ["background", "object"]
    # an unknown kind is read as class masks, as load_mask reads them
    assert mask_info(mask_column(mask="binary")).kind == "class"


def test_mask_info_of_instance_labels():
    ids = np.array([[0, 1, 1], [0, 7, 0]], np.int32)
    for attributes in ({"mask": "instance"}, {"mask": "Instance "}):
        info = mask_info(mask_column(**attributes))
        assert info.instance and info.binary
        assert info.classes == ("background", "object")
    info = mask_info(mask_column(mask="instance",
                                 classes="background,nucleus"))
    assert info.model_classes == ["background", "nucleus"]
    # every object is foreground for a network; ids are not classes
    np.testing.assert_array_equal(info.training_labels(ids),
                                  [[0, 1, 1], [0, 1, 0]])


def test_mask_info_background():
    info = mask_info(mask_column(mask="class", classes="sea,ship"))
    assert info.background == 0 and info.background_name == "sea"
    assert mask_info(mask_column(mask="class")).background_name == \
        "background"


def test_mask_info_needs_a_mask_column(folders):
    images, masks = folders
    write_image(images, "a.png")
    save(LABELS, os.path.join(masks, "a.png"))
    table, _ = pair_folders(images, masks)
    assert mask_info(find_mask_column(table)) == mask_info(table)
    with pytest.raises(InvalidInput, match="no mask column"):
        mask_info(find_image_column(table))
    images_only = table.transform(
        type(table.domain)([], metas=[find_image_column(table)]))
    with pytest.raises(ValueError, match="no mask column"):
        mask_info(images_only)
