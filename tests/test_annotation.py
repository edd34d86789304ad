"""The annotation store, the drawing tools and the suggestions."""
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from orangecontrib.deepimage.annotation import (
    AnnotationStore, ForeignFileError, UNCERTAINTY_AFTER, image_uncertainty,
    mask_from_box, scribble_segmenter, suggest_next, superpixel_at,
    superpixels)
from orangecontrib.deepimage.images import find_mask_column
from orangecontrib.deepimage.segdata import load_mask, pair_folders

from imagedata import image_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha1(path):
    with open(path, "rb") as file:
        return hashlib.sha1(file.read()).hexdigest()


@pytest.fixture
def images(tmp_path):
    """Three small photos and their table."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i, ext in enumerate(("png", "jpg", "png")):
        name = f"photo{i}.{ext}"
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), np.uint8)).save(
            folder / name)
        names.append(name)
    return folder, names, image_table(folder, names)


def disc(height=12, width=16, cy=6, cx=8, radius=4):
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


# --- the store ------------------------------------------------------------

def test_masks_and_labels_round_trip(tmp_path, images):
    folder, names, _ = images
    store = AnnotationStore(tmp_path / "store", ["background", "cell", "dust"])
    mask = disc().astype(np.uint8)
    mask[0, :3] = 2
    path = store.set_mask(str(folder / names[0]), mask)
    assert path == os.path.join(store.masks_dir, "photo0.png")
    assert store.mask(str(folder / names[1])) is None
    store.set_label(str(folder / names[1]), "blurred")
    store.set_label(str(folder / names[2]), "sharp")
    store.set_label(str(folder / names[2]), None)

    reopened = AnnotationStore(tmp_path / "store")
    np.testing.assert_array_equal(reopened.mask(str(folder / names[0])), mask)
    assert reopened.classes == ["background", "cell", "dust"]
    assert reopened.label(str(folder / names[1])) == "blurred"
    assert reopened.label(str(folder / names[2])) is None
    assert reopened.annotated() == ["photo0"]
    # a mask file is a label image, read alike by segdata
    np.testing.assert_array_equal(load_mask(path), mask)


def test_bad_masks_are_refused(tmp_path, images):
    folder, names, _ = images
    store = AnnotationStore(tmp_path / "store")
    image = str(folder / names[0])
    with pytest.raises(ValueError, match="class indices 0–1"):
        store.set_mask(image, np.full((12, 16), 2, np.uint8))
    with pytest.raises(ValueError, match="16×12"):
        store.set_mask(image, np.zeros((16, 12), np.uint8))
    with pytest.raises(ValueError, match="integers"):
        store.set_mask(image, np.zeros((12, 16), float))
    other = tmp_path / "elsewhere"
    other.mkdir()
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(other / "photo0.png")
    store.set_mask(image, disc())
    # same stem, another image: would share the mask file
    with pytest.raises(ValueError, match="stem"):
        store.set_mask(str(other / "photo0.png"), disc())
    assert os.listdir(other) == ["photo0.png"]


def test_classes_add_and_rename_keep_masks(tmp_path, images):
    folder, names, _ = images
    store = AnnotationStore(tmp_path / "store", ["background", "cell"])
    store.set_mask(str(folder / names[0]), disc())
    store.set_label(str(folder / names[0]), "cell")
    assert store.add_class("dust") == 2
    store.rename_class("cell", "nucleus")
    with pytest.raises(ValueError, match="repeat"):
        store.rename_class("dust", "nucleus")
    with pytest.raises(ValueError, match="comma"):
        store.add_class("a,b")
    reopened = AnnotationStore(tmp_path / "store")
    assert reopened.classes == ["background", "nucleus", "dust"]
    np.testing.assert_array_equal(reopened.mask(str(folder / names[0])),
                                  disc().astype(int))
    assert reopened.label(str(folder / names[0])) == "nucleus"
    # a store's classes only grow from the given ones
    with pytest.raises(ValueError, match="start with"):
        AnnotationStore(tmp_path / "store", ["background", "other"])
    assert AnnotationStore(tmp_path / "store", reopened.classes + ["x"]) \
        .classes[-1] == "x"


def test_pair_folders_reads_the_store_unchanged(tmp_path, images):
    folder, names, table = images
    store = AnnotationStore(tmp_path / "store", ["background", "cell", "dust"])
    store.set_mask(str(folder / names[0]), disc())
    store.set_mask(str(folder / names[2]), disc(radius=2) * 2)
    paired, report = pair_folders(str(folder), store.masks_dir)
    assert report.n_pairs == 2 and report.classes == store.classes
    assert report.kind == "class" and report.unpaired_images == [names[1]]
    assert len(report.problems()) == 1
    masks = store.masks_table(table)
    assert len(masks) == 2
    for column in ("image name", "image", "mask", "width", "height"):
        assert list(masks.get_column(column)) == \
            list(paired.get_column(column))
    mask_var = find_mask_column(masks)
    assert mask_var.attributes == paired.domain["mask"].attributes
    assert masks.domain["image"].attributes["origin"] == str(folder)


def test_labels_table(tmp_path, images):
    folder, names, _ = images
    table = image_table(folder, names, [0, 1, 0], ["a", "b"], "old")
    store = AnnotationStore(tmp_path / "store")
    assert store.labels_table(table) is None
    store.set_label(str(folder / names[2]), "sharp")
    store.set_label(str(folder / names[0]), "blurred")
    labelled = store.labels_table(table)
    assert len(labelled) == 2  # the unlabelled row is left out
    assert labelled.domain.class_var.name == "label"
    assert labelled.domain.class_var.values == ("sharp", "blurred")
    assert [labelled.domain.class_var.values[int(v)] for v in labelled.Y] \
        == ["blurred", "sharp"]
    assert list(labelled.ids) == [table.ids[0], table.ids[2]]
    assert list(labelled.get_column("image")) == [names[0], names[2]]
    # the old class moved to the metas, its values kept
    assert list(labelled.get_column("old")) == [0, 0]


def test_users_images_are_untouched(tmp_path, images):
    folder, names, table = images
    before = {name: sha1(folder / name) for name in names}
    times = {name: os.stat(folder / name).st_mtime_ns for name in names}
    store = AnnotationStore(tmp_path / "store")
    for round_ in range(3):
        for name in names:
            store.set_mask(str(folder / name), disc(radius=round_ + 1))
            store.set_label(str(folder / name), f"label {round_}")
        store.add_class(f"class {round_}")
    store.masks_table(table)
    assert sorted(os.listdir(folder)) == sorted(names)
    assert {name: sha1(folder / name) for name in names} == before
    assert {name: os.stat(folder / name).st_mtime_ns
            for name in names} == times
    # and everything the store made is inside its folder
    assert all(str(path).startswith(str(tmp_path / "store"))
               for path in (store.masks_dir, store.folder))


def test_foreign_files_are_never_replaced(tmp_path, images):
    folder, names, _ = images
    masks = tmp_path / "project" / "masks"
    masks.mkdir(parents=True)
    theirs = np.zeros((12, 16), np.uint8)
    theirs[2:5, 2:5] = 255  # a 0/255 mask
    Image.fromarray(theirs).save(masks / "photo0_mask.png")
    (masks / "classes.txt").write_text("background\ncell\n")
    digests = {name: sha1(masks / name) for name in os.listdir(masks)}

    store = AnnotationStore(tmp_path / "project")
    assert store.classes == ["background", "cell"]
    np.testing.assert_array_equal(store.mask(str(folder / names[0])),
                                  theirs > 0)
    with pytest.raises(ForeignFileError):
        store.set_mask(str(folder / names[0]), disc())
    with pytest.raises(ForeignFileError):
        store.add_class("dust")
    assert {name: sha1(masks / name) for name in digests} == digests

    # correcting them: a store of its own, the originals only read
    fixed = AnnotationStore.from_masks(str(masks), tmp_path / "fixed")
    assert fixed.classes == ["background", "cell"]
    np.testing.assert_array_equal(fixed.mask(str(folder / names[0])),
                                  theirs > 0)
    fixed.set_mask(str(folder / names[0]), disc())
    fixed.add_class("dust")
    np.testing.assert_array_equal(fixed.mask(str(folder / names[0])), disc())
    assert {name: sha1(masks / name) for name in os.listdir(masks)} == digests


def test_a_file_changed_by_someone_else_is_left_alone(tmp_path, images):
    folder, names, _ = images
    store = AnnotationStore(tmp_path / "store")
    path = store.set_mask(str(folder / names[0]), disc())
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(path)  # edited
    digest = sha1(path)
    with pytest.raises(ForeignFileError):
        store.set_mask(str(folder / names[0]), disc(radius=2))
    assert sha1(path) == digest


def test_failed_write_keeps_the_earlier_file(tmp_path, images, monkeypatch):
    folder, names, _ = images
    store = AnnotationStore(tmp_path / "store")
    path = store.set_mask(str(folder / names[0]), disc())
    digest = sha1(path)

    def broken(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        store.set_mask(str(folder / names[0]), disc(radius=2))
    monkeypatch.undo()
    assert sha1(path) == digest
    assert not [name for name in os.listdir(store.masks_dir)
                if name.endswith(".part")]
    # the store still knows the file as its own
    AnnotationStore(tmp_path / "store").set_mask(str(folder / names[0]),
                                                 disc(radius=3))


SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from orangecontrib.deepimage.annotation import AnnotationStore
    store = AnnotationStore({store!r}, [str(i) for i in range(200)])
    for i in range(4):
        store.set_mask(f"/nowhere/done{{i}}.png", np.full((300, 400), i))
    print("saved", flush=True)
    k = 0
    while True:
        k = (k + 1) % 200
        store.set_mask("/nowhere/busy.png", np.full((300, 400), k))
        store.set_label("/nowhere/busy.png", str(k))
""")


def test_kill_during_save_loses_nothing(tmp_path):
    store_dir = str(tmp_path / "store")
    script = SAVER.format(root=ROOT, store=store_dir)
    for delay in (0.05, 0.13, 0.21):
        process = subprocess.Popen([sys.executable, "-c", script],
                                   stdout=subprocess.PIPE)
        try:
            assert process.stdout.readline().strip() == b"saved"
            time.sleep(delay)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        store = AnnotationStore(store_dir)
        for i in range(4):
            np.testing.assert_array_equal(
                store.mask(f"/x/done{i}.png"), np.full((300, 400), i))
        busy = store.mask("/x/busy.png")
        assert busy is not None and (busy == busy[0, 0]).all()
        visible = [name for name in os.listdir(store.masks_dir)
                   if not name.startswith(".")]
        assert sorted(visible) == ["busy.png", "classes.txt"] + \
            [f"done{i}.png" for i in range(4)]
        assert store.label("/nowhere/busy.png") is None or \
            store.label("/nowhere/busy.png").isdigit()
        # the store can go on writing every file it had written
        store.set_mask("/nowhere/busy.png", np.zeros((300, 400), int))
        store.set_label("/nowhere/busy.png", "0")


# --- tools ----------------------------------------------------------------

def two_discs(seed=0, size=48):
    """A grey image: two bright discs, noise, and a dim background."""
    rng = np.random.default_rng(seed)
    truth = disc(size, size, 14, 14, 8) | disc(size, size, 32, 34, 9)
    image = np.where(truth, 160, 40) + rng.normal(0, 12, truth.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_scribbles_segment_their_image_and_others():
    image, truth = two_discs(0)
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[14, 10:18] = 2            # a stroke inside a disc: class 1
    scribbles[3, 3:40] = 1              # one in the background: class 0
    scribbles[44, 5:44] = 1
    segmenter = scribble_segmenter([image], [scribbles], n_estimators=10,
                                   sigma_max=4)
    for test_image, test_truth in (two_discs(0), two_discs(1)):
        mask = segmenter.predict(test_image)
        assert mask.shape == truth.shape and mask.dtype == np.uint8
        iou = (mask.astype(bool) & test_truth).sum() / \
            (mask.astype(bool) | test_truth).sum()
        assert iou > 0.8
    # an RGB image with equal channels is read as grey
    rgb = np.repeat(image[..., None], 3, axis=-1)
    np.testing.assert_array_equal(segmenter.predict(rgb),
                                  segmenter.predict(image))
    probabilities = segmenter.predict_proba(image)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="two classes"):
        scribble_segmenter([image], [(scribbles == 1).astype(np.uint8)])
    with pytest.raises(ValueError, match="size"):
        scribble_segmenter([image], [scribbles[:10]])


def test_boundaries_snap_to_the_edges_nearby():
    from orangecontrib.deepimage.annotation import _snap_to_edges
    image = np.zeros((40, 40), np.float32)
    image[10:30, 12:28] = 1                 # a bright rectangle
    truth = image > 0
    labels = np.zeros((40, 40), np.int64)
    labels[8:32, 10:30] = 1                 # two pixels too large
    labels[36, 2:38] = 2                    # a one-pixel line: no seed
    snapped = _snap_to_edges(image, labels, 2, 1.0)
    np.testing.assert_array_equal(snapped == 1, truth)
    np.testing.assert_array_equal(snapped == 2, labels == 2)
    # an edge farther than the band: the boundary moves only so far
    far = np.zeros_like(labels)
    far[4:36, 6:34] = 1                     # six pixels too large
    moved = _snap_to_edges(image, far, 2, 1.0)
    assert (moved[far == 0] == 0).all()
    assert (moved[8:32, 10:30] == 1).all()
    # colour: the gradient of all channels
    rgb = np.zeros((40, 40, 3), np.float32)
    rgb[10:30, 12:28, 2] = 1
    np.testing.assert_array_equal(
        _snap_to_edges(rgb, labels, 2, 1.0) == 1, truth)


def test_scribble_segmenter_without_snapping_is_the_forests_argmax():
    image, truth = two_discs(0)
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[14, 10:18] = 2
    scribbles[3, 3:40] = 1
    scribbles[44, 5:44] = 1
    plain = scribble_segmenter([image], [scribbles], n_estimators=10,
                               sigma_max=4, snap=0)
    np.testing.assert_array_equal(
        plain.predict(image), plain.predict_proba(image).argmax(axis=-1))


def test_mask_from_box_colour_and_grey():
    truth = disc(64, 64, 30, 34, 14)
    rng = np.random.default_rng(0)
    colour = np.where(truth[..., None], (200, 60, 40), (60, 120, 200))
    colour = np.clip(colour + rng.normal(0, 10, colour.shape), 0, 255) \
        .astype(np.uint8)
    # dim grey fluorescence: object at 30, background at 8 of 255
    grey = np.clip(np.where(truth, 30, 8) + rng.normal(0, 3, truth.shape),
                   0, 255).astype(np.uint8)
    box = (14, 10, 54, 50)
    for image in (colour, grey):
        mask = mask_from_box(image, box)
        assert mask.dtype == bool and mask.shape == truth.shape
        assert not mask[:, :14].any() and not mask[:10].any()
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.85
    with pytest.raises(ValueError, match="2×2"):
        mask_from_box(grey, (5, 5, 5, 9))


def test_mask_from_box_on_a_photo():
    # a real photo's patch (the cat's fur) pasted with a soft edge on
    # another real photo (the coffee cup); the pasted shape is the truth
    from skimage import data
    from skimage.filters import gaussian
    background = data.coffee()[:200, 300:]
    fur = data.chelsea()[60:160, 120:240].astype(float)
    yy, xx = np.mgrid[:200, :300]
    truth = ((yy - 110) / 45.0) ** 2 + ((xx - 140) / 55.0) ** 2 <= 1
    alpha = gaussian(truth.astype(float), 1.0)[..., None]
    layer = np.zeros((200, 300, 3))
    layer[60:160, 80:200] = fur
    photo = np.clip(alpha * layer + (1 - alpha) * background, 0, 255) \
        .astype(np.uint8)
    mask = mask_from_box(photo, (80, 60, 200, 160))
    assert (mask & truth).sum() / (mask | truth).sum() > 0.85
    assert not mask[:, :80].any() and not mask[:60].any()
    # a box over the whole photo: no background for GrabCut to learn
    whole = mask_from_box(photo, (0, 0, 300, 200))
    assert whole.shape == truth.shape and 0 < whole.mean() < 1


def test_superpixel_at():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = (250, 250, 0)
    mask = superpixel_at(image, 30, 10, n_segments=8)
    assert mask.dtype == bool and mask[10, 30]
    assert not mask[:, :20].any()  # does not cross the colour edge
    segments = superpixels(image[..., 0], n_segments=8)
    assert segments.min() == 1
    np.testing.assert_array_equal(
        superpixel_at(None, 5, 5, segments=segments),
        segments == segments[5, 5])
    with pytest.raises(ValueError, match="inside"):
        superpixel_at(None, 40, 0, segments=segments)


# --- suggestions ----------------------------------------------------------

def blobs(n_per=30, seed=0):
    from sklearn.datasets import make_blobs
    # more than 32 dimensions: clustered in principal components
    return make_blobs(n_samples=[n_per] * 5, n_features=40,
                      random_state=seed)


def test_suggest_next_cold_start_covers_the_clusters():
    embeddings, clusters = blobs()
    picks = suggest_next(embeddings=embeddings, n=5)
    assert len(picks) == 5 and len(set(picks)) == 5
    assert sorted(clusters[picks]) == [0, 1, 2, 3, 4]  # one per cluster
    np.testing.assert_array_equal(picks,
                                  suggest_next(embeddings=embeddings, n=5))
    labelled = np.zeros(len(embeddings), bool)
    labelled[picks] = True
    more = suggest_next(embeddings=embeddings, labelled=labelled, n=10)
    assert len(more) == 10 and not labelled[more].any()
    assert len(set(more)) == 10


def test_suggest_next_by_uncertainty():
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.5, 0.5],
                              [0.7, 0.3], [0.52, 0.48]])
    labelled = np.array([False, False, True, False, False])
    picks = suggest_next(probabilities, labelled=labelled, n=2)
    np.testing.assert_array_equal(picks, [4, 1])
    assert len(suggest_next(probabilities, labelled=labelled, n=10)) == 4
    # with embeddings, few labels: typicality; many: uncertainty
    embeddings, _ = blobs(n_per=20)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], len(embeddings))
    labelled = np.zeros(len(embeddings), bool)
    labelled[:2 * UNCERTAINTY_AFTER] = True
    by_margin = suggest_next(probs, labelled=labelled, n=3)
    np.testing.assert_array_equal(
        suggest_next(probs, embeddings, labelled, n=3), by_margin)
    labelled[:] = False
    assert not np.array_equal(suggest_next(probs, embeddings, labelled, n=3),
                              suggest_next(probs, labelled=labelled, n=3))


def test_image_uncertainty_is_mean_pixel_entropy():
    sure = np.zeros((4, 4, 3))
    sure[..., 0] = 1
    unsure = np.full((4, 4, 3), 1 / 3)
    half = sure.copy()
    half[:2] = 1 / 3
    np.testing.assert_allclose(
        image_uncertainty(np.stack([sure, unsure, half])),
        [0, np.log(3), np.log(3) / 2], atol=1e-9)
    picks = suggest_next(np.stack([sure, unsure, half]), n=2)
    np.testing.assert_array_equal(picks, [1, 2])


def test_masks_table_trains_a_segmentation_model(tmp_path):
    # straight from the store to the learner, no step in between
    from orangecontrib.deepimage.segmentation import SegmentationLearner
    folder = tmp_path / "cells"
    folder.mkdir()
    store = AnnotationStore(tmp_path / "store", ["background", "cell"])
    names = []
    for i in range(4):
        image, truth = two_discs(i, size=32)
        name = f"cell{i}.png"
        Image.fromarray(image).save(folder / name)
        store.set_mask(str(folder / name), truth)
        names.append(name)
    Image.fromarray(image).save(folder / "unannotated.png")
    masks = store.masks_table(image_table(folder, names + ["unannotated.png"]))
    assert len(masks) == 4
    model = SegmentationLearner(depth=2, base_filters=4, tile_size=32,
                                epochs=1, batch_size=4, validation=0.25,
                                tiles_per_image=1)(masks)
    assert tuple(model.class_names) == ("background", "cell")
    labels = model.segment([str(folder / "unannotated.png")])
    assert labels[0].shape == (32, 32)


def test_rename_label_keeps_the_mask_classes(tmp_path, images):
    folder, names, table = images
    store = AnnotationStore(tmp_path / "store", ["background", "cell"])
    store.set_label(str(folder / names[0]), "blurred")
    store.set_label(str(folder / names[1]), "blurred")
    store.set_label(str(folder / names[2]), "sharp")
    assert store.rename_label("blurred", "soft") == 2
    assert store.labels == ["soft", "sharp"]
    assert store.classes == ["background", "cell"]
    with pytest.raises(ValueError, match="already labelled"):
        store.rename_label("soft", "sharp")
    with pytest.raises(ValueError, match="empty"):
        store.rename_label("soft", " ")
    assert store.rename_label("unused", "other") == 0
    reopened = AnnotationStore(tmp_path / "store")
    assert reopened.label(str(folder / names[1])) == "soft"
    assert list(reopened.labels_table(table).domain.class_var.values) == \
        ["soft", "sharp"]


def test_embeddings_for_matches_rows_by_image_path(tmp_path, images):
    from Orange.data import ContinuousVariable, Domain, Table
    from orangecontrib.deepimage.annotation import embeddings_for
    folder, names, table = images
    # embeddings of the last two images only, in the other order
    domain = Domain([ContinuousVariable("n0"), ContinuousVariable("n1")],
                    metas=table.domain.metas)
    embedded = Table.from_numpy(domain, np.array([[1., 2.], [3., 4.]]),
                                metas=table.metas[[2, 1]])
    paths = [str(folder / name) for name in names] + [None]
    result = embeddings_for(paths, embedded)
    assert result.shape == (4, 2)
    assert np.isnan(result[[0, 3]]).all()
    np.testing.assert_array_equal(result[1], [3, 4])
    np.testing.assert_array_equal(result[2], [1, 2])
    with pytest.raises(ValueError):
        embeddings_for(paths, table)  # no embedding columns


def test_scribbles_are_kept_beside_the_masks(tmp_path, images):
    folder, names, table = images
    store = AnnotationStore(tmp_path / "store", ["background", "cell"])
    marks = np.zeros((12, 16), np.uint8)
    marks[0, :5] = 1   # background
    marks[6, 6:9] = 2  # cell
    path = store.set_scribbles(str(folder / names[0]), marks)
    assert path == os.path.join(store.folder, "scribbles", "photo0.png")
    np.testing.assert_array_equal(
        AnnotationStore(tmp_path / "store").scribbles(str(folder / names[0])),
        marks)
    assert store.scribbles(str(folder / names[1])) is None
    with pytest.raises(ValueError, match="class index"):
        store.set_scribbles(str(folder / names[1]), marks + 2)
    # scribbles are not masks: the masks table and pairing do not see them
    assert store.masks_table(table) is None
    # and a file the store did not write is not replaced
    Image.fromarray(marks).save(os.path.join(store.scribbles_dir,
                                             "photo2.png"))
    with pytest.raises(ForeignFileError):
        store.set_scribbles(str(folder / names[2]), marks)
