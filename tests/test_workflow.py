"""The headless runner on small workflows made in the test."""
import csv
import os

import pytest

from Orange.data import Table

from orangecontrib.deepimage.workflow import (
    WorkflowError, describe_output, format_result, parse_output_spec,
    run_workflow, write_plain_csv)

from reportcheck import outline


@pytest.fixture(scope="module")
def registry():
    from orangecontrib.deepimage.workflow import _application, _registry
    _application()
    return _registry()


def save_workflow(path, registry, nodes, links, setup=None):
    """Write an .ows with `nodes` {title: qualified name} and `links`."""
    from orangecanvas.scheme import SchemeLink, SchemeNode, readwrite
    from orangewidget.workflow.widgetsscheme import WidgetsScheme
    scheme = WidgetsScheme(env={"basedir": os.path.dirname(path)})
    made = {}
    for title, name in nodes.items():
        made[title] = SchemeNode(registry.widget(name), title=title)
        scheme.add_node(made[title])
    for source, output, sink, input_ in links:
        scheme.add_link(SchemeLink(made[source], output, made[sink], input_))
    if setup is not None:
        setup({title: scheme.widget_for_node(node)
               for title, node in made.items()})
    scheme.sync_node_properties()
    with open(path, "wb") as stream:
        readwrite.scheme_to_ows_stream(scheme, stream, pickle_fallback=True)
    scheme.clear()


FILE = "Orange.widgets.data.owfile.OWFile"


def iris(widgets):
    """File opens Orange's iris: named, since a File widget's default is
    the file that the last File widget (e.g. another test's) opened."""
    from Orange.data.table import get_sample_datasets_dir
    widgets["File"].add_path(
        os.path.join(get_sample_datasets_dir(), "iris.tab"))
TABLE = "Orange.widgets.data.owtable.OWTable"
EMBEDDING = "orangecontrib.deepimage.widgets.owdeepembedding.OWDeepEmbedding"


def test_runs_a_workflow_writes_report_and_output(tmp_path, registry):
    path = str(tmp_path / "iris.ows")
    save_workflow(path, registry, {"File": FILE, "Data Table": TABLE},
                  [("File", "Data", "Data Table", "Data")], iris)
    report, output = tmp_path / "report.html", tmp_path / "iris.tab"
    plain = tmp_path / "iris.csv"
    result = run_workflow(path, report=str(report),
                          outputs=[f"File:Data={output}",
                                   f"File:Data={plain}"], plain_csv=True)
    assert not result.failed
    assert [node.title for node in result.nodes] == ["File", "Data Table"]
    assert len(Table(str(output))) == 150
    text = report.read_text()
    assert "<h2>File</h2>" in text and "<h2>Data Table</h2>" in text
    headings, empty, _ = outline(text)
    assert [level for level, _ in headings].count(1) == 1
    assert headings[0][0] == 1 and not empty
    summary = format_result(result)
    assert "0 with errors" in summary
    # key results: what each widget sent
    assert "Data: 150 rows, 3 classes (Iris-setosa, Iris-versicolor, " \
           "Iris-virginica)" in summary
    assert f"Wrote File: Data to {plain}" in summary
    # one header row of names, labels for values: a spreadsheet reads it
    with open(plain, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["iris", "sepal length", "sepal width",
                       "petal length", "petal width"]
    assert rows[1] == ["Iris-setosa", "5.1", "3.5", "1.4", "0.2"]
    assert len(rows) == 151


def test_plain_csv_writes_every_kind_of_value(tmp_path):
    from Orange.data import (ContinuousVariable, DiscreteVariable, Domain,
                             StringVariable)
    import numpy as np
    domain = Domain([ContinuousVariable("x"),
                     ContinuousVariable("n", number_of_decimals=0)],
                    DiscreteVariable("y", values=("a", "b")),
                    [StringVariable("image")])
    table = Table.from_numpy(
        domain, np.array([[0.125, 3], [np.nan, 4]]), np.array([1, np.nan]),
        np.array([["dir/x, 1.png"], [""]], dtype=object))
    write_plain_csv(table, str(tmp_path / "t.csv"))
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as file:
        assert list(csv.reader(file)) == [
            ["image", "y", "x", "n"], ["dir/x, 1.png", "b", "0.125", "3"],
            ["", "", "", "4"]]


def test_describe_output_of_results_and_models():
    import numpy as np
    from types import SimpleNamespace
    from Orange.evaluation import Results
    results = Results(nmethods=1, nrows=4)
    results.actual = np.array([0., 1, 1, 0])
    results.predicted = np.array([[0., 1, 0, 0]])
    results.learner_names = ["Image Classifier"]
    results.folds = [np.arange(2), np.arange(2, 4)]
    assert describe_output("Evaluation Results", results) == [
        "Image Classifier: accuracy 0.750 on 4 rows "
        "(2-fold cross-validation)"]
    segmenter = SimpleNamespace(validation_metrics={"iou": [0.971, 0.862]},
                                class_names=("background", "nucleus"))
    assert describe_output("Model", segmenter) == [
        "Model: validation IoU per class: background 0.971, nucleus 0.862"]
    classifier = SimpleNamespace(history={"accuracy": [0.5, 0.98],
                                          "val_accuracy": [0.4, 0.9]})
    assert describe_output("Model", classifier) == [
        "Model: training accuracy 0.980, validation accuracy 0.900 "
        "(epoch 2)"]
    assert describe_output("Learner", object()) == []


def test_a_failing_widget_is_named_with_its_error(tmp_path, registry,
                                                   capsys):
    # Deep Embedding on data without images shows an error.
    path = str(tmp_path / "no-images.ows")
    save_workflow(path, registry, {"File": FILE, "Embed": EMBEDDING},
                  [("File", "Data", "Embed", "Images")], iris)
    result = run_workflow(path)
    assert [node.title for node in result.failed] == ["Embed"]
    assert "image column" in result.failed[0].errors[0]
    assert "error    Embed (Deep Embedding)" in format_result(result)

    from orangecontrib.deepimage.__main__ import main
    assert main(["run", path]) == 1
    assert "image column" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "missing.ows")]) == 2


def test_missing_widget_or_file_is_an_error(tmp_path, registry):
    path = str(tmp_path / "iris.ows")
    save_workflow(path, registry, {"File": FILE}, [])
    broken = tmp_path / "broken.ows"
    broken.write_text(open(path).read().replace(
        "Orange.widgets.data.owfile.OWFile", "nowhere.OWNothing"))
    with pytest.raises(WorkflowError, match="not installed"):
        run_workflow(str(broken))
    with pytest.raises(WorkflowError, match="No such workflow"):
        run_workflow(str(tmp_path / "missing.ows"))
    with pytest.raises(WorkflowError, match="No widget named"):
        run_workflow(path, outputs=["Nope:Data=x.tab"])


def test_output_spec():
    assert parse_output_spec("Image Clusters:Data=out/clusters.tab") == \
        ("Image Clusters", "Data", "out/clusters.tab")
    with pytest.raises(ValueError, match="Widget name:Output name=file"):
        parse_output_spec("clusters.tab")


def test_startup_noise_filter_keeps_errors():
    from orangecontrib.deepimage.__main__ import StartupNoiseFilter
    noise = StartupNoiseFilter()
    lines = [
        b"WARNING: All log messages before absl::InitializeLog() is called "
        b"are written to STDERR",
        b"I0000 00:00:1796412446.765294    5251 port.cc:153] oneDNN custom "
        b"operations are on.",
        b"I0000 00:00:1796412448.056203    5251 cpu_feature_guard.cc:227] "
        b"This TensorFlow binary is optimized to use available CPU "
        b"instructions in performance-critical operations.",
        b"To enable the following instructions: AVX2 FMA, in other "
        b"operations, rebuild TensorFlow with the appropriate compiler flags.",
        b"E0000 00:00:1796412461.751613    5251 cuda_platform.cc:52] failed "
        b"call to cuInit: INTERNAL: CUDA error",
    ]
    assert not any(noise.keep(line) for line in lines)
    kept = [
        b"E0000 00:00:1796412461.751613    5251 op_kernel.cc:1830] "
        b"OP_REQUIRES failed: Out of memory",
        b"F0000 00:00:1796412461.751613    5251 check.cc:1] Check failed",
        b"Traceback (most recent call last):",
        b"To enable the following instructions: (not after a notice)",
        b"ValueError: bad value",
    ]
    assert all(noise.keep(line) for line in kept)


def test_busy_widgets_and_their_progress():
    from types import SimpleNamespace
    from orangecontrib.deepimage.workflow import _busy_widgets

    class Widget:
        def __init__(self, busy, progress):
            self.busy, self.progressBarValue = busy, progress

        def isInvalidated(self):
            return self.busy
    widgets = {"Embed": Widget(True, 40.0), "Table": Widget(False, 0),
               "Train": Widget(True, -1)}
    nodes = [SimpleNamespace(title=title) for title in widgets]
    scheme = SimpleNamespace(
        nodes=nodes, widget_for_node=lambda node: widgets[node.title])
    assert _busy_widgets(scheme) == [("Embed", 40.0), ("Train", None)]
