"""Writes that never overwrite and are never left half-done."""
import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from unittest import mock

import pytest

from orangecontrib.deepimage import files
from orangecontrib.deepimage.errors import DeepImageError, UnwritableFolder
from orangecontrib.deepimage.files import (
    FolderFull, FolderMissing, FolderReadOnly, NewFiles, OwnFolder,
    check_output_folder, write_new_file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digest(path):
    with open(path, "rb") as file:
        return hashlib.sha1(file.read()).hexdigest()


def earlier_files(folder):
    """Two files written before the fault, and their digests."""
    paths = [write_new_file(os.path.join(folder, "a.png"), b"first"),
             write_new_file(os.path.join(folder, "b.png"), b"second" * 100)]
    return {path: digest(path) for path in paths}


def assert_intact(before):
    for path, stamp in before.items():
        assert digest(path) == stamp, path


def test_new_names_for_taken_ones(tmp_path):
    first = write_new_file(str(tmp_path / "x.png"), b"one")
    second = write_new_file(str(tmp_path / "x.png"), b"two")
    assert os.path.basename(first) == "x.png"
    assert os.path.basename(second) == "x-1.png"
    assert (tmp_path / "x.png").read_bytes() == b"one"
    assert (tmp_path / "x-1.png").read_bytes() == b"two"
    with pytest.raises(FileExistsError):
        write_new_file(str(tmp_path / "x.png"), b"three", numbered=False)
    assert sorted(os.listdir(tmp_path)) == ["x-1.png", "x.png"]


def test_a_file_made_meanwhile_is_kept(tmp_path):
    target = tmp_path / "x.png"

    def write(file):
        file.write(b"ours")
        target.write_bytes(b"someone else's")  # appears while we write

    written = write_new_file(str(target), write)
    assert target.read_bytes() == b"someone else's"
    assert os.path.basename(written) == "x-1.png"
    assert (tmp_path / "x-1.png").read_bytes() == b"ours"

    def write_again(file):
        file.write(b"ours")
        (tmp_path / "y.png").write_bytes(b"theirs")

    with pytest.raises(FileExistsError):
        write_new_file(str(tmp_path / "y.png"), write_again, numbered=False)
    assert (tmp_path / "y.png").read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["x-1.png", "x.png", "y.png"]


def test_without_hard_links_a_claimed_name_is_used(tmp_path):
    (tmp_path / "x.png").write_bytes(b"the user's")
    unsupported = OSError(errno.EPERM, "Operation not permitted")
    with mock.patch("os.link", side_effect=unsupported):
        written = write_new_file(str(tmp_path / "x.png"), b"ours")
    assert os.path.basename(written) == "x-1.png"
    assert (tmp_path / "x.png").read_bytes() == b"the user's"
    assert (tmp_path / "x-1.png").read_bytes() == b"ours"
    assert sorted(os.listdir(tmp_path)) == ["x-1.png", "x.png"]


def test_new_files_get_the_usual_mode(tmp_path):
    if os.name == "nt":
        pytest.skip("no POSIX modes")
    path = write_new_file(str(tmp_path / "x.png"), b"data")
    assert os.stat(path).st_mode & 0o777 == 0o644 & ~current_umask()


def current_umask():
    probe = subprocess.run(
        [sys.executable, "-c", "import os; print(os.umask(0))"],
        capture_output=True, text=True, check=True)
    return int(probe.stdout)


def test_missing_folder(tmp_path):
    missing = str(tmp_path / "gone")
    for call in (lambda: check_output_folder(missing),
                 lambda: check_output_folder(""),
                 lambda: write_new_file(os.path.join(missing, "x.png"),
                                        b"data")):
        with pytest.raises(FolderMissing) as caught:
            call()
        assert isinstance(caught.value, UnwritableFolder)
        assert isinstance(caught.value, FileNotFoundError)
        assert "does not exist" in str(caught.value) \
            or "No output folder" in str(caught.value)
    assert not os.path.exists(missing)


def test_folder_that_vanishes_before_the_name_is_given(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()

    def write_then_vanish(file):
        file.write(b"data")
        vanish = OSError(errno.ENOENT, "No such file or directory")
        raise vanish

    with pytest.raises(FolderMissing, match="does not exist"):
        write_new_file(str(folder / "x.png"), write_then_vanish)
    assert os.listdir(folder) == []


def test_read_only_folder(tmp_path):
    with mock.patch("os.access", return_value=False), \
            pytest.raises(FolderReadOnly, match="read-only"):
        check_output_folder(str(tmp_path))
    # Where os.access says yes but no file can be made (a read-only mount).
    denied = OSError(errno.EROFS, "Read-only file system")
    with mock.patch("os.open", side_effect=denied), \
            pytest.raises(FolderReadOnly, match="read-only") as caught:
        check_output_folder(str(tmp_path))
    assert isinstance(caught.value, PermissionError)
    assert isinstance(caught.value, DeepImageError)
    assert os.listdir(tmp_path) == []


def test_full_disk_leaves_no_partial_file(tmp_path):
    before = earlier_files(str(tmp_path))

    def half_then_full(file):
        file.write(b"\x89PNG half an image")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(FolderFull, match="No space left") as caught:
        write_new_file(str(tmp_path / "c.png"), half_then_full)
    assert isinstance(caught.value, UnwritableFolder)
    assert str(tmp_path) in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png"]
    assert_intact(before)

    # The same when the data reaches the disk only at the end.
    full = OSError(errno.ENOSPC, "No space left on device")
    with mock.patch("os.fsync", side_effect=full), \
            pytest.raises(FolderFull):
        write_new_file(str(tmp_path / "c.png"), b"x" * 10000)
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png"]
    assert_intact(before)


def test_other_faults_are_not_disguised(tmp_path):
    def fail(file):
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire") as caught:
        write_new_file(str(tmp_path / "x.png"), fail)
    assert not isinstance(caught.value, UnwritableFolder)
    assert os.listdir(tmp_path) == []


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from orangecontrib.deepimage.files import write_new_file

    def write(file):
        for _ in range(1000):
            file.write(b"x" * 2 ** 20)
            file.flush()
            print("writing", flush=True)
            time.sleep(0.01)

    write_new_file(sys.argv[1], write)
""")


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_kill_during_a_write_leaves_no_partial_file(tmp_path):
    before = earlier_files(str(tmp_path))
    target = tmp_path / "large.png"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    with subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)],
                          stdout=subprocess.PIPE, env=env) as writer:
        # Wait until a few megabytes are written, then kill it.
        for _ in range(3):
            assert writer.stdout.readline() == b"writing\n"
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    assert writer.returncode == -signal.SIGKILL
    assert not target.exists()
    left = os.listdir(tmp_path)
    assert sorted(name for name in left if not name.startswith(".")) == \
        ["a.png", "b.png"]
    # Besides them, at most the hidden temporary file remains.
    assert all(name.startswith(files.TEMP_PREFIX) and name.endswith(".part")
               for name in left if name.startswith("."))
    assert_intact(before)


def test_new_files_never_replace(tmp_path):
    with NewFiles(str(tmp_path)) as folder:
        first = folder.write("m.png", b"mask")
    with NewFiles(str(tmp_path)) as folder:
        second = folder.write("m.png", b"mask")
    assert first != second
    assert sorted(os.listdir(tmp_path)) == ["m-1.png", "m.png"]
    with pytest.raises(FolderMissing):
        with NewFiles(str(tmp_path / "missing")):
            pass


def test_own_folder_holds_one_runs_files(tmp_path):
    own = str(tmp_path / "own")

    def run(contents):
        with OwnFolder(own) as folder:
            return [folder.write(f"image{i}.png", data)
                    for i, data in enumerate(contents)]

    first = run([b"one", b"two", b"three"])
    stats = {path: os.stat(path).st_mtime_ns for path in first}
    for _ in range(10):
        again = run([b"one", b"two", b"three"])
    assert again == first
    assert sorted(os.listdir(own)) == sorted(map(os.path.basename, first))
    # Same content: reused, not written again.
    assert {path: os.stat(path).st_mtime_ns for path in again} == stats

    changed = run([b"one", b"TWO"])
    assert changed[0] == first[0]
    assert sorted(os.listdir(own)) == sorted(map(os.path.basename, changed))
    assert open(changed[1], "rb").read() == b"TWO"


def test_own_folder_keeps_files_when_a_run_fails(tmp_path):
    own = str(tmp_path / "own")
    with OwnFolder(own) as folder:
        kept = folder.write("a.png", b"a")
    with pytest.raises(KeyboardInterrupt):
        with OwnFolder(own) as folder:
            folder.write("b.png", b"b")
            raise KeyboardInterrupt  # e.g. cancelled
    assert os.path.basename(kept) in os.listdir(own)
    # The next run can use the folder (the lock was released).
    with OwnFolder(own) as folder:
        folder.write("b.png", b"b")
    assert len(os.listdir(own)) == 1


def test_own_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_bytes(b"not a folder")
    with pytest.raises(OSError):
        with OwnFolder(str(tmp_path / "file" / "own")):
            pass
    assert (tmp_path / "file").read_bytes() == b"not a folder"


def test_temp_files_are_hidden_and_unique(tmp_path):
    handle1, path1 = files._open_temp(str(tmp_path))
    handle2, path2 = files._open_temp(str(tmp_path))
    os.close(handle1)
    os.close(handle2)
    assert path1 != path2
    assert os.path.basename(path1).startswith(".")
