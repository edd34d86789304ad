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


def test_every_tutorial_file_is_installed(monkeypatch):
    # setuptools' own selection of what a wheel holds (build_py), from
    # setup.py's packages and package data: every file in the tutorials'
    # folders, hidden ones (an annotation store's manifest) included.
    import importlib.util
    import os
    from setuptools import find_namespace_packages
    from setuptools.dist import Distribution
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(root)
    spec = importlib.util.spec_from_file_location(
        "deepimage_setup", os.path.join(root, "setup.py"))
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)  # (setup() runs under __main__)
    dist = Distribution({
        "name": "Orange3-DeepImage", "script_name": "setup.py",
        "packages": find_namespace_packages(include=["orangecontrib*"]),
        "package_data": setup_module.PACKAGE_DATA})
    build = dist.get_command_obj("build_py")
    build.ensure_finalized()
    installed = {os.path.normpath(os.path.join(folder, name))
                 for _, folder, _, names in build.data_files
                 for name in names}
    installed |= {os.path.normpath(path)
                  for _, _, path in build.find_all_modules()}
    tutorials = os.path.join("orangecontrib", "deepimage", "tutorials")
    shipped = set()
    for folder, subfolders, names in os.walk(tutorials):
        subfolders[:] = [name for name in subfolders
                         if name != "__pycache__"]
        shipped |= {os.path.normpath(os.path.join(folder, name))
                    for name in names}
    manifest = os.path.join(tutorials, "annotate", "store",
                            ".annotation-store.json")
    assert manifest in shipped
    assert shipped - installed == set()
