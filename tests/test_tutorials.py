"""Every tutorial opens with all its widgets found and runs headless."""
import os
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
    "find-defects": {("Image Anomalies", "Scored Data"): 12,
                     ("Image Anomalies", "Anomalies"): 5,
                     ("Image Anomalies", "Normal"): 5},
}


def test_all_tutorials_are_there():
    assert set(TUTORIALS) == set(EXPECTED_OUTPUTS)
    folder = os.path.dirname(next(iter(TUTORIALS.values())))
    for name in ("photos", "digits", "nuclei", "edit", "defects"):
        assert os.path.exists(os.path.join(folder, name, "README.md"))


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
