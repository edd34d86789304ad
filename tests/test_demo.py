import os

import numpy as np
import pytest

from orangecontrib.deepimage.__main__ import main
from orangecontrib.deepimage.demo import PHOTOS_DIR, run_demo, tutorial_paths
from orangecontrib.deepimage.report import (
    PhotoEntry, drop_empty_sections, nearest_neighbours, photo_section,
    shift_headings, shorten_long_lists)

from reportcheck import longest_list, outline


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
    out = capsys.readouterr().out
    assert f"Report written to {report}" in out
    # progress on the terminal
    assert "Embedding 13 photos with SqueezeNet" in out
    assert "13 of 13 embedded in" in out
    text = report.read_text()
    headings, empty, _ = outline(text)
    assert [level for level, _ in headings] == [1, 2, 2, 2]
    assert headings[1] == (2, "Summary") and not empty
    assert "13 of 13 photos embedded" in text[:text.index("Contents")]
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
    assert {"classify-digits.ows", "edit-images.ows",
            "annotate-nuclei.ows"} <= names


def test_report_fragments_fit_the_page():
    assert shift_headings("<h1>a</h1><H2 class='x'>b</H2>") == \
        "<h2>a</h2><h3 class='x'>b</h3>"
    names = ", ".join(f"n{i}" for i in range(1000))
    short = shorten_long_lists(f"<b>Features:</b> {names}</br>")
    assert short == "<b>Features:</b> n0, n1, n2, n3, n4, …, n999 " \
                    "(1000 in all)</br>"
    assert longest_list(short) < 10
    page = ("<h2>A</h2><p>x</p><h2>B</h2> <div></div><h2>C</h2><h3>D</h3>"
            "<img src='x.png'><h3>E</h3><table></table><h2>F</h2>")
    kept = drop_empty_sections(page)
    headings, empty, _ = outline(kept)
    assert [text for _, text in headings] == ["A", "C", "D"]
    assert not empty
    assert outline(page)[1] == ["B", "E", "F"]


def test_demo_report_shows_clusters_as_thumbnails(tmp_path):
    from Orange.data import DiscreteVariable, Domain, StringVariable, Table
    from orangecontrib.deepimage.demo import TutorialRun, demo_report
    from orangecontrib.deepimage.workflow import NodeReport, WorkflowResult
    image = StringVariable("image")
    image.attributes.update({"type": "image", "origin": PHOTOS_DIR})
    cluster = DiscreteVariable("Cluster", values=("Cluster 1: cats",
                                                  "Cluster 2: coffee",
                                                  "Cluster 3: empty"))
    table = Table.from_numpy(
        Domain([], metas=[image, cluster]), np.empty((3, 0)),
        metas=np.array([["cat-chelsea.jpg", 0], ["coffee.jpg", 1],
                        ["grass.jpg", 0]], dtype=object))
    result = WorkflowResult(
        "photos.ows", [NodeReport("Image Clusters", "Image Clusters",
                                  results=["Data: 3 rows, 2 clusters"],
                                  key_results=["Data: 3 rows, 2 clusters"])],
        4.2, {("Image Clusters", "Data"): table,
              ("Image Viewer", "Data"): table}, "<html><body><h1>x</h1>"
        "<section><h2>Image Clusters</h2><p>3 images</p></section>"
        "</body></html>")
    path = demo_report(str(tmp_path / "report.html"), str(tmp_path), None,
                       [TutorialRun("organise-photos", result, seconds=4.2)],
                       4.2)
    page = open(path, encoding="utf-8").read()
    headings, empty, images = outline(page)
    assert not empty
    assert (3, "Image Clusters: the clusters (Data)") in headings
    # the viewer passes the same clusters on: shown once
    assert (3, "Image Viewer: the clusters (Data)") not in headings
    assert (3, "Image Clusters") in headings  # the widget, below h2
    shown = [entry["alt"] for entry in images]
    assert shown == ["cat-chelsea.jpg", "grass.jpg", "coffee.jpg"]
    for entry in images:
        assert (tmp_path / entry["src"]).is_file()
    assert "Cluster 3" not in page  # no empty group
    assert "Data: 3 rows, 2 clusters" in \
        page[page.index("Summary"):page.index("Contents")]
