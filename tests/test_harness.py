"""The test run tells the truth: failures and broken hooks exit non-zero,
and tests never write into the user's folders."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from Orange.misc.environ import cache_dir, data_dir

import conftest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_pytest(folder, test_source, plugin_source=None):
    """Run pytest with this suite's conftest on one test file."""
    folder = str(folder)
    shutil.copy(os.path.join(HERE, "conftest.py"), folder)
    with open(os.path.join(folder, "test_it.py"), "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(test_source))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               folder]
    if plugin_source is not None:
        with open(os.path.join(folder, "brokenplugin.py"), "w",
                  encoding="utf-8") as f:
            f.write(textwrap.dedent(plugin_source))
        command[3:3] = ["-p", "brokenplugin"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [folder] + sys.path))
    return subprocess.run(command, cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_passing_run_exits_zero(tmp_path):
    result = run_pytest(tmp_path, "def test_ok():\n    assert 1 + 1 == 2\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_failing_test_exits_non_zero(tmp_path):
    result = run_pytest(tmp_path, "def test_bad():\n    assert 1 + 1 == 3\n")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, \
        result.stdout + result.stderr


def test_raising_hook_exits_non_zero(tmp_path):
    result = run_pytest(
        tmp_path, "def test_ok():\n    assert True\n",
        plugin_source="""
            def pytest_sessionfinish(session, exitstatus):
                raise RuntimeError("a broken plugin")
            """)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "a broken plugin" in result.stdout + result.stderr


def test_no_hard_exit_in_the_harness():
    with open(os.path.join(HERE, "conftest.py"), encoding="utf-8") as f:
        assert "_exit" not in f.read()


def test_orange_folders_are_private_to_the_run():
    session = os.path.realpath(conftest.SESSION_DIR)
    for folder in (data_dir(), data_dir(versioned=False), cache_dir(),
                   os.path.expanduser("~")):
        assert os.path.realpath(folder).startswith(session), folder
