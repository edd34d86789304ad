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
