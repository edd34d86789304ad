"""Writing new files without ever overwriting the user's.

Every feature that writes images (heatmaps, masks, edited photos) writes
through :func:`create_new_file`, which claims a name atomically (``O_EXCL``)
and adds ``-1``, ``-2``… before the suffix when the name is taken.
"""
import os
from typing import BinaryIO, Tuple

__all__ = ["create_new_file", "check_output_folder"]


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
    """Raise an OSError with a clear message unless `folder` is writable."""
    if not folder:
        raise FileNotFoundError("No output folder was chosen.")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"The output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"The output folder is read-only: {folder}")
