"""TensorFlow and Orange's report window share the canvas process safely.

Each order runs in a fresh interpreter, since a crash at exit is part of
what is tested: the process must end with status 0.
"""
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "webengine_check.py")


@pytest.mark.parametrize("order", ["report-first", "deep-first"])
def test_report_window_and_deep_widgets_in_one_process(order):
    result = subprocess.run(
        [sys.executable, SCRIPT, order], capture_output=True, text=True,
        timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"order={order}" in result.stdout
    assert "tensorflow=True" in result.stdout
    assert "OK" in result.stderr


LOADING_CHECK = """
import ctypes, sys
import orangecontrib.deepimage
from orangecontrib.deepimage import tfloading
import tensorflow as tf
assert float(tf.reduce_sum(tf.ones((2, 2)))) == 4.0
state = tfloading.status()
print("preloaded", len(state["preloaded"]))
print("blocked", state["global_flags_blocked"])
# With RTLD_LOCAL, TensorFlow's symbols stay out of the process' global
# scope, where a later Mesa LLVM would bind to them.
process = ctypes.CDLL(None)
print("global", hasattr(process, "TF_Version"))
print("hook", tfloading._finder in sys.meta_path)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the loader acts on Linux (glibc) only")
def test_tensorflow_loads_deep_bound_and_local():
    result = subprocess.run([sys.executable, "-c", LOADING_CHECK],
                            capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines == {"preloaded": "2", "blocked": "True", "global": "False",
                     "hook": "False"}


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the loader acts on Linux (glibc) only")
def test_loader_is_late_when_tensorflow_came_first():
    code = ("import tensorflow, orangecontrib.deepimage\n"
            "from orangecontrib.deepimage import tfloading\n"
            "print(tfloading.status()['too_late'], tfloading.install())")
    result = subprocess.run([sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "False"]
