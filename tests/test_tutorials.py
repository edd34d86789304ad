"""Every tutorial opens with all its widgets found and runs headless."""
import ast
import base64
import csv
import os
import pickle
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from Orange.data import Table

from orangecontrib.deepimage.demo import tutorial_paths
from orangecontrib.deepimage.workflow import (
    _application, _registry, format_result, run_workflow)

from reportcheck import longest_list, outline

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
    "hide-faces": {("Find Objects", "Counts"): 13,
                   ("Find Objects", "Objects"): 1,
                   ("Pixelate Faces", "Edited Images"): 13},
    "find-defects": {("Image Anomalies", "Scored Data"): 12,
                     ("Image Anomalies", "Anomalies"): 5,
                     ("Image Anomalies", "Normal"): 5},
    "annotate-nuclei": {("Annotate Images", "Images with Masks"): 6,
                        ("Annotate Images", "Suggested"): 3,
                        ("Segment Images", "Counts"): 16,
                        ("Segment Images", "Objects"): 100},
}


FOLDER = os.path.dirname(next(iter(TUTORIALS.values())))

# The classes each tutorial's folders must import with, and how many images.
IMPORTED_CLASSES = {
    "classify-digits": ([str(digit) for digit in range(10)], 200),
    "organise-photos": (None, 13),  # one folder: no class variable
    "annotate-nuclei": (None, 16),
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
    for name in ("nuclei", "edit", "defects", "annotate"):
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


# organise-photos runs from the command line, in its own process.
IN_PROCESS = sorted(set(EXPECTED_OUTPUTS) - {"organise-photos"})
_RUNS = {}

# Annotation folders that ship with a tutorial; running it must leave them
# as they are (Annotate Images writes only what the user edits).
SHIPPED_STORES = {"annotate-nuclei": os.path.join(FOLDER, "annotate",
                                                  "store")}
_STORES_BEFORE = {}


def files_state(folder):
    """Every file under `folder`: its content and modification time."""
    state = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                state[os.path.relpath(path, folder)] = (
                    file.read(), os.stat(path).st_mtime_ns)
    return state


def tutorial_run(name, folder):
    """Run a tutorial once per test session (its report in `folder`)."""
    if name not in _RUNS:
        if name in SHIPPED_STORES:
            _STORES_BEFORE[name] = files_state(SHIPPED_STORES[name])
        _RUNS[name] = run_workflow(TUTORIALS[name],
                                   report=str(folder / f"{name}.html"))
    return _RUNS[name]


def check_outputs(name, values):
    for (title, output), minimum in EXPECTED_OUTPUTS[name].items():
        value = values.get((title, output))
        assert value is not None, (title, output)
        rows = len(value.actual) if hasattr(value, "actual") else len(value)
        assert rows >= minimum, (title, output, rows)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return tmp_path_factory.mktemp("reports")


@pytest.mark.parametrize("name", IN_PROCESS)
def test_tutorial_runs_headless(name, reports):
    result = tutorial_run(name, reports)
    assert not result.failed, format_result(result)
    report = (reports / f"{name}.html").read_text()
    headings, empty, _ = outline(report)
    assert [level for level, _ in headings].count(1) == 1, headings
    assert not empty, empty
    assert longest_list(report) <= 30
    check_outputs(name, result.outputs)


# Key figures that `deepimage run` prints for each tutorial.
KEY_FIGURES = {
    "classify-digits": [r"Image Classifier: accuracy 0\.\d{3} on 200 rows "
                        r"\(5-fold cross-validation\)",
                        r"Data: 200 rows, 10 classes",
                        r"\d+ files written \(.*\) to "],
    "segment-nuclei": [r"validation IoU per class: background 0\.\d{3}, "
                       r"nucleus 0\.\d{3}", r"Counts: 16 rows",
                       r"16 files written \(.*\) to "],
    "edit-images": [r"2 files written \(.*\) to "],
    # the store's six masks train the U-Net, which segments all 16 tiles
    "annotate-nuclei": [r"Annotate Images \(Annotate Images\)\n"
                        r"\s+Images with Masks: 6 rows\n"
                        r"\s+Suggested: 3 rows",
                        # the store's masks are only read, not written
                        r"6 files \(mask\) in .*store.masks, none written "
                        r"by this run",
                        r"validation IoU per class: background 0\.\d{3}, "
                        r"nucleus 0\.\d{3}", r"Counts: 16 rows",
                        r"16 files written \(predicted mask\) to "],
}


@pytest.mark.parametrize("name", sorted(KEY_FIGURES))
def test_key_figures_of_each_tutorial(name, reports):
    result = tutorial_run(name, reports)
    summary = format_result(result)
    for pattern in KEY_FIGURES[name]:
        assert re.search(pattern, summary), (pattern, summary)


@pytest.mark.parametrize("name", sorted(SHIPPED_STORES))
def test_headless_run_leaves_the_shipped_store_alone(name, reports):
    result = tutorial_run(name, reports)
    assert not result.failed, format_result(result)
    after = files_state(SHIPPED_STORES[name])
    assert after.keys() == _STORES_BEFORE[name].keys()
    for path, (content, mtime) in _STORES_BEFORE[name].items():
        assert after[path] == (content, mtime), path


def _load_make_store():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_store", os.path.join(FOLDER, "annotate", "make_store.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_annotation_store_is_made_again_byte_for_byte(tmp_path):
    make_store = _load_make_store()
    folder = tmp_path / "store"
    rows = make_store.make_store(str(folder))
    made = {path: content for path, (content, _)
            in files_state(str(folder)).items()}
    shipped = {path: content for path, (content, _)
               in files_state(SHIPPED_STORES["annotate-nuclei"]).items()}
    assert made.keys() == shipped.keys()
    for path, content in shipped.items():
        assert made[path] == content, path
    # the correction brings every mask closer to the ground truth, and
    # some objects really were corrected
    assert len(rows) == 6
    assert all(row["IoU after"] >= row["IoU before"] for row in rows)
    assert all(row["IoU after"] > 0.8 for row in rows)
    assert sum(row["erased"] + row["redrawn"] + row["added"]
               for row in rows) > 0


def test_annotation_store_opens_as_the_widget_and_trainer_read_it(tmp_path):
    import shutil
    import numpy as np
    from orangecontrib.deepimage.annotation import AnnotationStore
    from orangecontrib.deepimage.segdata import load_mask, pair_folders
    settings = node_settings("annotate-nuclei", "OWAnnotateImages")
    assert settings["store_relative"] == "annotate/store"
    images = os.path.join(FOLDER, "nuclei", "images")
    store_dir = os.path.join(FOLDER, settings["store_relative"])
    # Segmentation Data pairs the masks with the tutorial's images
    table, report = pair_folders(images, os.path.join(store_dir, "masks"))
    assert report.n_pairs == 6 and report.classes == ["background",
                                                      "nucleus"]
    # scribbles of both classes on three tiles, outside masks/
    store = AnnotationStore(store_dir)
    scribbled = [name for name in sorted(os.listdir(images))
                 if store.scribbles(os.path.join(images, name)) is not None]
    assert len(scribbled) == 3
    for name in scribbled:
        marks = store.scribbles(os.path.join(images, name))
        assert set(np.unique(marks)) == {0, 1, 2}
    # no image path is recorded: a copy of the tutorial elsewhere edits
    # its masks as its own
    copy = tmp_path / "tutorials"
    shutil.copytree(os.path.join(FOLDER, "nuclei", "images"),
                    copy / "nuclei" / "images")
    shutil.copytree(store_dir, copy / "annotate" / "store")
    moved = AnnotationStore(str(copy / "annotate" / "store"))
    image = str(copy / "nuclei" / "images" / "nuclei_r0_c0.png")
    mask = moved.mask(image)
    mask[:8, :8] = 1
    moved.set_mask(image, mask)
    np.testing.assert_array_equal(load_mask(
        str(copy / "annotate" / "store" / "masks" / "nuclei_r0_c0.png")),
        mask)


def test_model_trained_on_the_store_segments_the_unannotated_tiles(
        reports):
    # a sensible model: on the ten tiles without a mask in the store,
    # the nuclei it finds match the ground truth (Otsu's threshold gives
    # a foreground IoU of about 0.73 on these tiles)
    import numpy as np
    from orangecontrib.deepimage.images import image_paths
    from orangecontrib.deepimage.segdata import load_mask
    result = tutorial_run("annotate-nuclei", reports)
    table = result.outputs[("Segment Images", "Images with Masks")]
    annotated = set(result.outputs[("Annotate Images", "Images with Masks")]
                    .get_column("image name"))
    predicted = image_paths(table, table.domain["predicted mask"])
    images = image_paths(table, table.domain["image"])
    ious = []
    for image, mask in zip(images, predicted):
        stem = os.path.splitext(os.path.basename(image))[0]
        if stem in annotated:
            continue
        truth = load_mask(os.path.join(FOLDER, "nuclei", "masks",
                                       stem + ".png")) > 0
        found = load_mask(mask) > 0
        ious.append((found & truth).sum() / (found | truth).sum())
    assert len(ious) == 10
    assert np.mean(ious) >= 0.75, ious


def test_demo_report_of_the_tutorials(reports, tmp_path):
    from orangecontrib.deepimage.demo import TutorialRun, demo_report
    runs = [TutorialRun(name, tutorial_run(name, reports), seconds=1.5)
            for name in IN_PROCESS]
    path = demo_report(str(tmp_path / "report.html"), str(tmp_path), None,
                       runs, 12.0)
    page = open(path, encoding="utf-8").read()
    headings, empty, _ = outline(page)
    levels = [level for level, _ in headings]
    assert levels.count(1) == 1 and levels[0] == 1
    assert headings[1] == (2, "Summary") and headings[2] == (2, "Contents")
    assert not empty, empty
    # no level skipped on the way down
    assert all(b <= a + 1 for a, b in zip(levels, levels[1:])), headings
    assert longest_list(page) <= 30
    summary = page[page.index("Summary"):page.index("Contents")]
    assert re.search(r"accuracy 0\.\d{3}", summary)
    assert re.search(r"nucleus 0\.\d{3}", summary)
    contents = page[page.index("Contents"):]
    for name in IN_PROCESS:
        assert f"Tutorial: {name}</a>" in contents


def test_command_line_prints_key_figures_and_no_tensorflow_noise(tmp_path):
    # As a user starts it: TensorFlow's log level not set (make demo sets
    # it to 2, which hides the same).
    env = {key: value for key, value in os.environ.items()
           if key != "TF_CPP_MIN_LOG_LEVEL"}
    clusters, plain = tmp_path / "clusters.tab", tmp_path / "clusters.csv"
    report = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "orangecontrib.deepimage", "run",
         TUTORIALS["organise-photos"], "--report", str(report),
         "--output", f"Image Clusters:Data={clusters}",
         "--output", f"Image Clusters:Data={plain}", "--plain-csv"],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tensorflow" not in done.stderr.lower(), done.stderr
    for noise in ("I0000", "W0000", "cuInit", "absl::InitializeLog",
                  "cpu_feature_guard", "To enable the following"):
        assert noise not in done.stderr, done.stderr
    out = done.stdout
    assert re.search(r"Data: 13 rows, \d+ clusters", out), out
    assert "Embeddings: 13 rows" in out
    assert f"Wrote Image Clusters: Data to {plain}" in out
    assert f"Report written to {report}" in out
    check_outputs("organise-photos",
                  {("Image Clusters", "Data"): Table(str(clusters))})
    with open(plain, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0][:2] == ["image name", "image"] and "Cluster" in rows[0]
    assert len(rows) == 14
    headings, empty, _ = outline(report.read_text())
    assert not empty and [level for level, _ in headings].count(1) == 1


def test_errors_still_reach_the_terminal():
    env = {key: value for key, value in os.environ.items()
           if key != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("import sys; sys.argv = ['deepimage', 'run', 'x.ows']\n"
            "from orangecontrib.deepimage import __main__ as cli\n"
            "def broken(args):\n"
            "    print('Deep Embedding: error: no images', file=sys.stderr)\n"
            "    sys.stderr.flush()\n"
            "    import os\n"
            "    os.write(2, b'I0000 00:00:1796412461.7 1 port.cc:153] "
            "oneDNN custom operations are on.\\n')\n"
            "    os.write(2, b'E0000 00:00:1796412461.7 1 op_kernel.cc:1] "
            "OP_REQUIRES failed: out of memory\\n')\n"
            "    raise RuntimeError('a real error')\n"
            "cli._run = broken\n"
            "sys.exit(cli.main())\n")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 1
    # what Python and TensorFlow's own errors write passes the filter
    assert "Deep Embedding: error: no images" in done.stderr
    assert "OP_REQUIRES failed: out of memory" in done.stderr
    assert "RuntimeError: a real error" in done.stderr
    assert "Traceback" in done.stderr
    assert "oneDNN" not in done.stderr
