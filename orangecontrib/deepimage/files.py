"""Writing new files without ever overwriting the user's.

Every feature that writes images (heatmaps, masks, edited photos) writes
through :func:`create_new_file`, which claims a name atomically (``O_EXCL``)
and adds ``-1``, ``-2``… before the suffix when the name is taken.
"""
import os
from typing import BinaryIO, Tuple

from orangecontrib.deepimage.errors import UnwritableFolder

__all__ = ["create_new_file", "check_output_folder", "FolderMissing",
           "FolderReadOnly", "as_unwritable"]


class FolderMissing(UnwritableFolder, FileNotFoundError):
    """The output folder was not chosen or does not exist."""


class FolderReadOnly(UnwritableFolder, PermissionError):
    """Files cannot be made in the output folder."""


def create_new_file(path: str) -> Tuple[BinaryIO, str]:
    """Open a file that did not exist before, for binary writing.

    Parameters
    ----------
    path : str
        The wished-for path; if it exists, ``stem-1.ext``, ``stem-2.ext``…
        is used instead.

    Returns
    -------
    (file, str)
        The open file and the path it has.
    """
    stem, suffix = os.path.splitext(path)
    candidate, number = path, 0
    while True:
        try:
            handle = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o644)
            return os.fdopen(handle, "wb"), candidate
        except FileExistsError:
            number += 1
            candidate = f"{stem}-{number}{suffix}"


def check_output_folder(folder: str) -> None:
    """Raise :class:`FolderMissing` or :class:`FolderReadOnly` (both
    :class:`~orangecontrib.deepimage.errors.UnwritableFolder`) with a clear
    message unless `folder` is writable."""
    if not folder:
        raise FolderMissing("No output folder was chosen.")
    if not os.path.isdir(folder):
        raise FolderMissing(f"The output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FolderReadOnly(f"The output folder is read-only: {folder}")


def as_unwritable(error: OSError) -> UnwritableFolder:
    """`error`, raised while writing results into a folder (read-only,
    full, gone), as an :class:`UnwritableFolder` with the same text."""
    if isinstance(error, UnwritableFolder):
        return error
    if error.errno is None:
        return UnwritableFolder(str(error))
    return UnwritableFolder(error.errno, error.strerror, error.filename)
