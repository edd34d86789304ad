"""Test set-up: headless Qt, quiet TensorFlow, and private folders.

No test may touch the user's embedding cache, Keras cache or Orange's data
and cache folders (where widgets write edited images, masks and heatmaps by
default), or download anything: the home folder and every variable that
Orange, Keras and the add-on read their folders from (on Linux, macOS and
Windows alike) point into a fresh temporary folder for the session, also
for the processes that tests start.

The run ends as pytest ends it, with pytest's own exit status.
"""
import os
import shutil
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Report tests start QtWebEngine; its Chromium ends the whole process when
# it runs as root (as in CI containers) with its sandbox on.
if hasattr(os, "geteuid") and os.geteuid() == 0:
    os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")

SESSION_DIR = tempfile.mkdtemp(prefix="deepimage-tests-")
_HOME = os.path.join(SESSION_DIR, "home")
os.makedirs(_HOME)
os.environ.update({
    "DEEPIMAGE_CACHE_DIR": os.path.join(SESSION_DIR, "cache"),
    "KERAS_HOME": os.path.join(SESSION_DIR, "keras"),
    # Orange's data and cache folders: ~/Library/... on macOS, %APPDATA% on
    # Windows, $XDG_DATA_HOME / $XDG_CACHE_HOME elsewhere.
    "HOME": _HOME,
    "USERPROFILE": _HOME,
    "APPDATA": os.path.join(_HOME, "AppData", "Roaming"),
    "LOCALAPPDATA": os.path.join(_HOME, "AppData", "Local"),
    "XDG_DATA_HOME": os.path.join(SESSION_DIR, "data"),
    "XDG_CACHE_HOME": os.path.join(SESSION_DIR, "cache-home"),
    "XDG_CONFIG_HOME": os.path.join(SESSION_DIR, "config"),
})
os.environ.pop("DEEPIMAGE_WEIGHTS_MIRROR", None)

# As the canvas does at start: the add-on is imported before anything loads
# TensorFlow, so that TensorFlow and QtWebEngine can share the process.
import orangecontrib.deepimage  # noqa: E402,F401  pylint: disable=wrong-import-position


def pytest_unconfigure(config):  # pylint: disable=unused-argument
    shutil.rmtree(SESSION_DIR, ignore_errors=True)
