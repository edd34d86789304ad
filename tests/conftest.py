"""Test set-up: headless Qt, quiet TensorFlow, and private folders.

No test may touch the user's embedding cache, Keras cache or Orange's data
and cache folders (where widgets write edited images, masks and heatmaps by
default), or download anything: all of them point at a fresh temporary
folder for the session.
"""
import os
import shutil
import sys
import tempfile

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Report tests start QtWebEngine; its Chromium ends the whole process when
# it runs as root (as in CI containers) with its sandbox on.
os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")

_SESSION_DIR = tempfile.mkdtemp(prefix="deepimage-tests-")
os.environ["DEEPIMAGE_CACHE_DIR"] = os.path.join(_SESSION_DIR, "cache")
os.environ["KERAS_HOME"] = os.path.join(_SESSION_DIR, "keras")
os.environ["XDG_DATA_HOME"] = os.path.join(_SESSION_DIR, "data")
os.environ["XDG_CACHE_HOME"] = os.path.join(_SESSION_DIR, "cache-home")
os.environ.pop("DEEPIMAGE_WEIGHTS_MIRROR", None)


_EXIT_STATUS = [0]


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS[0] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
    # Every result has been reported by now. What is left is the
    # interpreter's teardown of Qt, QtWebEngine and TensorFlow, whose order
    # can abort the process ("free(): invalid pointer") after a fully passed
    # run; end the process with pytest's own exit status instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[0])
