"""Writing files: never over another file, never seen half-written.

Every feature that writes files (heatmaps, masks, edited photos, exported
models) writes through this module:

* :func:`write_new_file` writes into a hidden temporary file in the target
  folder and, only once it is complete, links it under a name that did not
  exist (``os.link`` fails rather than replace a file; ``-1``, ``-2``… are
  added before the suffix when the name is taken). A full disk, a crash or
  a kill leave at most the hidden ``.deepimage-*.part`` file, never a
  partial file under the final name, and no other file is touched.
* :func:`check_output_folder` raises :class:`~orangecontrib.deepimage.errors.
  UnwritableFolder` with a clear message for a missing, read-only or full
  folder, so that a run can refuse before it does any work.
* :class:`NewFiles` and :class:`OwnFolder` are the two places a widget
  writes to: a folder the user chose, where every run adds new files, and
  the widget's own folder, which holds the files of its last run only.
"""
import errno
import hashlib
import os
import secrets
import threading
from typing import BinaryIO, Callable, Dict, Optional, Set, Union

from orangecontrib.deepimage.errors import UnwritableFolder

__all__ = ["write_new_file", "create_new_file", "check_output_folder",
           "place_new_file", "unwritable", "FolderMissing", "FolderReadOnly",
           "FolderFull",
           "NewFiles", "OwnFolder", "TEMP_PREFIX"]

#: Temporary files start with this (and end with ``.part``).
TEMP_PREFIX = ".deepimage-"

Content = Union[bytes, Callable[[BinaryIO], None]]


class FolderMissing(UnwritableFolder, FileNotFoundError):
    """The output folder is not there (never chosen, moved or deleted)."""


class FolderReadOnly(UnwritableFolder, PermissionError):
    """Files cannot be made in the output folder."""


class FolderFull(UnwritableFolder):
    """The disk (or the user's quota) has no room for the file."""


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def unwritable(error: OSError, folder: str) -> Optional[UnwritableFolder]:
    """The :class:`UnwritableFolder` that `error` means for `folder`, or
    None when it is some other fault."""
    reason = error.strerror or str(error)
    if error.errno in _FULL:
        return FolderFull(f"No space left in {folder} ({reason}): free some "
                          f"space or choose another folder.")
    if error.errno in _READ_ONLY:
        return FolderReadOnly(f"The output folder is read-only: {folder} "
                              f"({reason})")
    if error.errno == errno.ENOENT:
        return FolderMissing(f"The output folder does not exist: {folder}")
    return None


def check_output_folder(folder: str) -> None:
    """Raise :class:`UnwritableFolder` unless files can be made in `folder`.

    Raises
    ------
    FolderMissing
        When no folder is given or it does not exist.
    FolderReadOnly
        When files cannot be created there.
    FolderFull
        When there is no room for even an empty file.
    """
    if not folder:
        raise FolderMissing("No output folder was chosen.")
    if not os.path.isdir(folder):
        raise FolderMissing(f"The output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FolderReadOnly(f"The output folder is read-only: {folder}")
    # os.access can say yes where writing fails (network shares, root on a
    # read-only mount): try it.
    try:
        handle, probe = _open_temp(folder)
    except OSError as error:
        raise (unwritable(error, folder) or FolderReadOnly(
            f"The output folder is read-only: {folder} "
            f"({error.strerror or error})")) from error
    os.close(handle)
    os.remove(probe)


def _numbered(path: str, number: int) -> str:
    if not number:
        return path
    stem, suffix = os.path.splitext(path)
    return f"{stem}-{number}{suffix}"


def _remove(path: Optional[str]) -> None:
    if path is not None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def place_new_file(temp: str, path: str, numbered: bool = True) -> str:
    """Give the complete file `temp` a name that did not exist; return it.

    `temp` must be on the same file system as `path` (e.g. in the same
    folder); it is gone afterwards. See :func:`write_new_file` for
    `numbered`.
    """
    number = 0
    while True:
        candidate = _numbered(path, number)
        try:
            os.link(temp, candidate)
        except FileExistsError:
            if not numbered:
                raise FileExistsError(
                    errno.EEXIST, "Will not overwrite", candidate) from None
            number += 1
            continue
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV,
                                   errno.ENOSYS, errno.EMLINK,
                                   getattr(errno, "EOPNOTSUPP",
                                           errno.ENOTSUP)):
                raise
            # No hard links here (FAT, some shares): claim the name
            # exclusively, then move the complete file over the claim.
            try:
                handle = os.open(candidate,
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not numbered:
                    raise FileExistsError(
                        errno.EEXIST, "Will not overwrite", candidate) \
                        from None
                number += 1
                continue
            os.close(handle)
            os.replace(temp, candidate)
            return candidate
        os.remove(temp)
        return candidate


def write_new_file(path: str, content: Content, numbered: bool = True
                   ) -> str:
    """Write a new file at `path`, all or nothing, never over another file.

    Parameters
    ----------
    path : str
        The wished-for path.
    content : bytes or callable
        The bytes, or ``content(file)`` that writes them to a binary file.
    numbered : bool
        When `path` exists, write ``stem-1.ext``, ``stem-2.ext``… instead
        (otherwise raise :class:`FileExistsError`).

    Returns
    -------
    str
        The path written.

    Raises
    ------
    UnwritableFolder
        When the folder is missing, read-only or full; nothing is left.
    FileExistsError
        When `path` exists and `numbered` is False.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temp = None
    try:
        handle, temp = _open_temp(folder)
        with os.fdopen(handle, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content)
            file.flush()
            os.fsync(file.fileno())
        return place_new_file(temp, path, numbered)
    except OSError as error:
        _remove(temp)
        mapped = None if isinstance(error, (UnwritableFolder,
                                            FileExistsError)) \
            else unwritable(error, folder)
        if mapped is not None:
            raise mapped from error
        raise
    except BaseException:
        _remove(temp)
        raise


def _open_temp(folder: str):
    """A new hidden file in `folder`: (descriptor, path).

    Unlike :func:`tempfile.mkstemp` (mode 0600), the file gets the mode
    that new files get, as it keeps it under its final name.
    """
    while True:
        temp = os.path.join(folder,
                            f"{TEMP_PREFIX}{secrets.token_hex(8)}.part")
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                           | getattr(os, "O_BINARY", 0), 0o644), temp
        except FileExistsError:
            continue


def create_new_file(path: str):
    """Open a file that did not exist before, for binary writing.

    Prefer :func:`write_new_file`: a file opened here is visible under its
    name while it is written.

    Returns
    -------
    (file, str)
        The open file and the path it has (``stem-1.ext``… when `path` was
        taken).
    """
    number = 0
    while True:
        candidate = _numbered(path, number)
        try:
            handle = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o644)
            return os.fdopen(handle, "wb"), candidate
        except FileExistsError:
            number += 1


class NewFiles:
    """A folder the user chose: every file written is new, none replaced.

    Use as a context manager, as :class:`OwnFolder`.
    """

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        check_output_folder(self.path)
        return self

    def __exit__(self, *exc_info):
        return False

    def write(self, name: str, content: bytes) -> str:
        """Write `content` as a new file named like `name`; return its path."""
        return write_new_file(os.path.join(self.path, name), content)


_folder_locks: Dict[str, threading.Lock] = {}
_folder_locks_guard = threading.Lock()


def _folder_lock(path: str) -> threading.Lock:
    key = os.path.normcase(os.path.realpath(path))
    with _folder_locks_guard:
        return _folder_locks.setdefault(key, threading.Lock())


class OwnFolder(NewFiles):
    """A folder whose files only one widget uses: it holds one run's files.

    A file's name ends with a digest of its content, so a run that writes
    what a file already holds reuses that file, and when the ``with`` block
    ends without an error the files this run neither wrote nor reused are
    removed. Re-running on the same input thus writes nothing and leaves
    the same files; a run on new input replaces them. A cancelled or failed
    run removes nothing. Runs into one folder take turns (a run being
    cancelled cannot remove the files of the run that follows it).
    """

    def __init__(self, path: str):
        super().__init__(path)
        self._lock = _folder_lock(path)
        self._used: Set[str] = set()

    def __enter__(self):
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise (unwritable(error, self.path) or error) from error
        check_output_folder(self.path)
        self._lock.acquire()
        self._used = set()
        return self

    def __exit__(self, exc_type, exc, traceback):
        try:
            if exc_type is None:
                self._remove_unused()
        finally:
            self._lock.release()
        return False

    def write(self, name: str, content: bytes) -> str:
        stem, suffix = os.path.splitext(name)
        digest = hashlib.sha1(content).hexdigest()[:12]
        target = os.path.join(self.path, f"{stem}-{digest}{suffix}")
        if not (os.path.isfile(target)
                and os.path.getsize(target) == len(content)):
            target = write_new_file(target, content)
        self._used.add(os.path.basename(target))
        return target

    def _remove_unused(self):
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name not in self._used and entry.is_file(
                        follow_symlinks=False):
                    _remove(entry.path)
