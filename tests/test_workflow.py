"""The headless runner on small workflows made in the test."""
import os

import pytest

from Orange.data import Table

from orangecontrib.deepimage.workflow import (
    WorkflowError, format_result, parse_output_spec, run_workflow)


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
TABLE = "Orange.widgets.data.owtable.OWTable"
EMBEDDING = "orangecontrib.deepimage.widgets.owdeepembedding.OWDeepEmbedding"


def test_runs_a_workflow_writes_report_and_output(tmp_path, registry):
    path = str(tmp_path / "iris.ows")
    save_workflow(path, registry, {"File": FILE, "Data Table": TABLE},
                  [("File", "Data", "Data Table", "Data")])
    report, output = tmp_path / "report.html", tmp_path / "iris.tab"
    result = run_workflow(path, report=str(report),
                          outputs=[f"File:Data={output}"])
    assert not result.failed
    assert [node.title for node in result.nodes] == ["File", "Data Table"]
    assert len(Table(str(output))) == 150
    text = report.read_text()
    assert "<h2>File</h2>" in text and "<h2>Data Table</h2>" in text
    assert "0 with errors" in format_result(result)


def test_a_failing_widget_is_named_with_its_error(tmp_path, registry,
                                                   capsys):
    # Deep Embedding on data without images shows an error.
    path = str(tmp_path / "no-images.ows")
    save_workflow(path, registry, {"File": FILE, "Embed": EMBEDDING},
                  [("File", "Data", "Embed", "Images")])
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
