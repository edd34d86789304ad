"""Every tutorial opens with all its widgets found and runs headless."""
import ast
import base64
import os
import pickle
import xml.etree.ElementTree as ElementTree

import pytest

from orangecontrib.deepimage.__main__ import main
from orangecontrib.deepimage.demo import tutorial_paths
from orangecontrib.deepimage.workflow import (
    _application, _registry, format_result, run_workflow)

TUTORIALS = {os.path.splitext(os.path.basename(path))[0]: path
             for path in tutorial_paths()}

# What each tutorial must produce: (widget title, output) -> minimum rows.
EXPECTED_OUTPUTS = {
    "organise-photos": {("Image Clusters", "Data"): 13},
    "classify-digits": {("Test and Score", "Evaluation Results"): 200,
                        ("Explain Images", "Data"): 1},
    "segment-nuclei": {("Segment Images", "Counts"): 16,
                       ("Segment Images", "Objects"): 100},
    "edit-images": {("Remove Towers", "Edited Images"): 2,
                    ("Blur Flag", "Edited Images"): 2},
}


FOLDER = os.path.dirname(next(iter(TUTORIALS.values())))

# The classes each tutorial's folders must import with, and how many images.
IMPORTED_CLASSES = {
    "classify-digits": ([str(digit) for digit in range(10)], 200),
    "organise-photos": (None, 13),  # one folder: no class variable
}
PAIRED_CLASSES = {
    "segment-nuclei": (["background", "nucleus"], 16),
    "edit-images": (["background", "rocket", "tower", "flag", "shuttle",
                     "helmet"], 2),
}


def test_all_tutorials_are_there():
    assert set(TUTORIALS) == set(EXPECTED_OUTPUTS)
    # Import Images reads every file in its folder: the credits of its
    # folders lie beside them. Segmentation Data reads sub-folders only.
    for name in ("photos", "digits"):
        assert os.path.exists(os.path.join(FOLDER, f"README-{name}.md"))
    for name in ("nuclei", "edit"):
        assert os.path.exists(os.path.join(FOLDER, name, "README.md"))


def node_settings(name, widget):
    """The saved settings of the node of class `widget` in a tutorial."""
    root = ElementTree.parse(TUTORIALS[name]).getroot()
    node_id = next(node.get("id") for node in root.iter("node")
                   if node.get("qualified_name").endswith("." + widget))
    properties = next(prop for prop in root.iter("properties")
                      if prop.get("node_id") == node_id)
    if properties.get("format") == "pickle":
        return pickle.loads(base64.b64decode(properties.text))
    return ast.literal_eval(properties.text)


@pytest.mark.parametrize("name", sorted(IMPORTED_CLASSES))
def test_import_images_finds_exactly_the_classes(name):
    # As the workflow does: Import Images' own import of its saved folder.
    from orangecontrib.imageanalytics.import_images import ImportImages
    _application()  # Import Images reads headers with Qt's image reader
    path = node_settings(name, "OWImportImages")["recent_paths"][0]
    assert path.prefix == "basedir"
    table, n_skipped = ImportImages()(os.path.join(FOLDER, path.relpath))
    classes, n_images = IMPORTED_CLASSES[name]
    assert n_skipped == 0
    assert len(table) == n_images
    if classes is None:
        assert table.domain.class_var is None
    else:
        assert list(table.domain.class_var.values) == classes
        # Every value has images: no phantom class.
        assert set(table.Y.astype(int)) == set(range(len(classes)))


@pytest.mark.parametrize("name", sorted(PAIRED_CLASSES))
def test_segmentation_data_pairs_every_file(name):
    import numpy as np
    from orangecontrib.deepimage.segdata import load_mask, pair_folders
    settings = node_settings(name, "OWSegmentationData")
    masks_dir = os.path.join(FOLDER, settings["masks_relative"])
    table, report = pair_folders(
        os.path.join(FOLDER, settings["images_relative"]), masks_dir)
    classes, n_pairs = PAIRED_CLASSES[name]
    assert report.n_left_out == 0 and not report.unpaired_images
    assert report.n_pairs == n_pairs and report.classes == classes
    values = set()
    for mask in table.get_column("mask"):
        values |= set(np.unique(load_mask(os.path.join(masks_dir, mask))))
    assert values == set(range(len(classes)))


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUTS))
def test_tutorial_widgets_are_installed(name):
    _application()
    registry = _registry()
    nodes = ElementTree.parse(TUTORIALS[name]).getroot().iter("node")
    for node in nodes:
        assert registry.has_widget(node.get("qualified_name")), \
            node.get("qualified_name")


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUTS))
def test_tutorial_runs_headless(name, tmp_path):
    report = tmp_path / "report.html"
    result = run_workflow(TUTORIALS[name], report=str(report))
    assert not result.failed, format_result(result)
    assert report.stat().st_size > 1000
    for (title, output), minimum in EXPECTED_OUTPUTS[name].items():
        value = result.outputs.get((title, output))
        assert value is not None, (title, output)
        rows = len(value.actual) if hasattr(value, "actual") else len(value)
        assert rows >= minimum, (title, output, rows)


def test_command_line_runs_a_tutorial(tmp_path, capsys):
    output = tmp_path / "edited.tab"
    code = main(["run", TUTORIALS["edit-images"], "--output",
                 f"Blur Flag:Edited Images={output}"])
    assert code == 0
    assert "0 with errors" in capsys.readouterr().out
    assert output.exists()
