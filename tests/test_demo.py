import os

import numpy as np
import pytest

from orangecontrib.deepimage.__main__ import main
from orangecontrib.deepimage.demo import PHOTOS_DIR, run_demo, tutorial_paths
from orangecontrib.deepimage.report import (
    PhotoEntry, nearest_neighbours, photo_section)


def test_nearest_neighbours_by_hand():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]])
    order, similarity = nearest_neighbours(vectors, k=2)
    assert order[0, 0] == 1 and order[2, 0] == 3
    assert all(i not in row for i, row in enumerate(order))  # never itself
    assert similarity[0, 0] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    assert np.all(np.diff(similarity, axis=1) <= 0)  # most similar first
    assert nearest_neighbours(vectors[:2], k=5)[0].shape == (2, 1)


def test_report_escapes_file_names():
    entry = PhotoEntry("/x/<b>&cat.jpg", [("tabby <cat>", 0.5)], [],
                       thumbnail="0000.jpg")
    html = photo_section([entry], "thumbnails")
    assert "&lt;b&gt;&amp;cat.jpg" in html and "<b>" not in html
    assert "tabby &lt;cat&gt; (50%)" in html


def test_demo_embeds_the_bundled_photos(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--photos-only"]) == 0
    report = tmp_path / "report.html"
    assert f"Report written to {report}" in capsys.readouterr().out
    text = report.read_text()
    photos = sorted(os.listdir(PHOTOS_DIR))
    photos = [p for p in photos if p.endswith(".jpg")]
    assert len(photos) >= 10
    for photo in photos:
        assert photo in text
    assert len(os.listdir(tmp_path / "thumbnails")) == len(photos)
    row = text[text.index("cat-chelsea.jpg</td>"):]
    labels = row[:row.index("</td>", len("cat-chelsea.jpg</td>") + 1)]
    assert "cat" in labels.lower()
    row = text[text.index("coffee.jpg</td>"):]
    assert row[len("coffee.jpg</td>"):].lstrip("<td>").startswith("espresso")


def test_every_tutorial_is_found():
    names = {os.path.basename(path) for path in tutorial_paths()}
    assert {"classify-digits.ows", "edit-images.ows"} <= names
