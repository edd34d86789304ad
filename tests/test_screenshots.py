"""tools/screenshots.py saves a picture of a widget at its default size."""
import os
import sys

from PIL import Image

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

import screenshots  # noqa: E402  pylint: disable=wrong-import-position


def test_all_widgets_have_a_feed_and_a_help_page():
    names = screenshots.widget_names()
    assert "segmentationdata" in names
    assert set(names) == set(screenshots.FEEDS)
    doc = os.path.join(screenshots.ROOT, "doc", "widgets")
    for name in names:
        with open(os.path.join(doc, f"{name}.md"), encoding="utf-8") as page:
            assert f"(images/{name}.png)" in page.read(), name


def test_shoot_saves_the_widget_at_its_size(tmp_path):
    for name in ("segmentationdata", "segmentationpreview"):
        path, size = screenshots.shoot(name, out_dir=str(tmp_path))
        assert path == os.path.join(str(tmp_path), f"{name}.png")
        assert os.path.getsize(path) > 1000
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == size
            # Not a blank grab: the controls and the data are drawn.
            assert len(image.convert("RGB").getcolors(1 << 16) or ()) > 20
        assert size[0] >= 300 and size[1] >= 200


def test_annotate_images_help_shows_each_tool():
    doc = os.path.join(screenshots.ROOT, "doc", "widgets")
    with open(os.path.join(doc, "annotateimages.md"), encoding="utf-8") \
            as page:
        text = page.read()
    for tool in screenshots.TOOL_PICTURES:
        name = f"images/annotateimages-{tool}.png"
        assert f"({name})" in text, tool
        assert os.path.isfile(os.path.join(doc, name)), tool


def test_each_tool_of_annotate_images_is_used_and_shown(tmp_path):
    import numpy as np
    results = screenshots.shoot_tools(out_dir=str(tmp_path))
    assert list(results) == list(screenshots.TOOL_PICTURES)
    for tool, (path, _, _, _) in results.items():
        with Image.open(path) as image:
            assert image.format == "PNG"
            # one tile at the zoom (two side by side for some tools)
            side = 128 * screenshots.TOOL_ZOOM
            assert abs(image.height - side) <= 2, (tool, image.size)
            assert len(image.convert("RGB").getcolors(1 << 16) or ()) > 20
    # what each tool left in the view, on the tile it was used on
    free = screenshots.FREE_TILE
    nucleus = screenshots.nucleus_at
    for tool, (x, y) in (("polygon", (96, 79)), ("fill", (19, 64)),
                         ("box", (58, 57)), ("superpixel", (96, 79))):
        mask = results[tool][1] == 1
        truth = nucleus(free, x, y)
        assert (mask & truth).sum() > 0.5 * mask.sum() > 0, tool
    assert 0 < (results["brush"][1] == 1).sum() < 400
    from orangecontrib.deepimage.annotation import AnnotationStore
    stored = AnnotationStore(os.path.join(
        screenshots.TUTORIALS, "annotate", "store")).mask(
            screenshots.MASKED_TILE + ".png")
    erased = results["eraser"][1]
    assert ((stored == 1) & (erased == 0)).sum() > 50
    assert not ((stored == 0) & (erased == 1)).any()
    _, _, scribbles, preview = results["scribble"]
    assert set(np.unique(scribbles)) == {0, 1, 2}
    assert preview is not None and 0 < (preview == 1).mean() < 0.6
