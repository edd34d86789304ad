import subprocess
import sys
from importlib.metadata import entry_points

import orangecontrib.deepimage as deepimage


def test_public_names_resolve():
    for name in deepimage.__all__:
        assert getattr(deepimage, name) is not None, name


def test_importing_the_package_does_not_load_tensorflow():
    # The canvas imports add-ons at start-up; TensorFlow takes seconds.
    code = ("import sys, orangecontrib.deepimage, "
            "orangecontrib.deepimage.widgets; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_entry_points_register_category_tutorials_and_help():
    groups = {group: {ep.value for ep in entry_points(group=group)}
              for group in ("orange.widgets", "orange.widgets.tutorials",
                            "orange.canvas.help", "orange3.addon")}
    assert "orangecontrib.deepimage.widgets" in groups["orange.widgets"]
    assert "orangecontrib.deepimage.tutorials" in \
        groups["orange.widgets.tutorials"]
    assert any(value.startswith("orangecontrib.deepimage.widgets")
               for value in groups["orange.canvas.help"])
    assert "orangecontrib.deepimage" in groups["orange3.addon"]


def test_category_metadata():
    from orangecontrib.deepimage import widgets
    assert widgets.NAME == "Deep Image"
    assert widgets.ICON.endswith(".svg") and widgets.BACKGROUND
