"""Where pretrained weights come from: the Keras cache, a file, a mirror.

keras.applications downloads ImageNet weights on first use into the Keras
cache (``$KERAS_HOME/models``, by default ``~/.keras/models``). We use the
same files and the same cache, but download them ourselves so the user sees
the size and the progress, and so that an offline classroom can use a file
on disk or a mirror: a base URL (or folder) set with the ``mirror`` argument
or the ``DEEPIMAGE_WEIGHTS_MIRROR`` environment variable, holding the files
under their Keras names.
"""
import hashlib
import http.client
import os
import pathlib
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from typing import Callable, List, Optional

from orangecontrib.deepimage.errors import WeightsUnavailable

__all__ = ["WeightsFile", "WeightsUnavailable", "keras_cache_dir",
           "mirror_from_environment", "resolve_weights", "check_weights_path",
           "MIRROR_ENV"]

MIRROR_ENV = "DEEPIMAGE_WEIGHTS_MIRROR"
DOWNLOAD_TIMEOUT = 30
_CHUNK = 1 << 20

#: progress(bytes_done, bytes_total or None)
DownloadProgress = Callable[[int, Optional[int]], None]


@dataclass(frozen=True)
class WeightsFile:
    """A weights file that keras.applications downloads.

    Attributes
    ----------
    filename : str
        The file's name in the Keras cache and on a mirror.
    origin : str
        The URL keras.applications downloads it from.
    md5 : str
        Its MD5 digest, as keras.applications checks it.
    approx_mb : int
        Its size as Keras publishes it, for telling the user beforehand.
    """
    filename: str
    origin: str
    md5: str
    approx_mb: int

    def cached_path(self) -> str:
        """Where the file lies in the Keras cache (it may not exist)."""
        return os.path.join(keras_cache_dir(), self.filename)

    def is_cached(self) -> bool:
        """Return True when the file is already in the Keras cache."""
        return os.path.isfile(self.cached_path())


def keras_cache_dir() -> str:
    """Return the folder where Keras keeps downloaded model weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def mirror_from_environment() -> Optional[str]:
    """Return the mirror base URL or folder from the environment, if set."""
    return os.environ.get(MIRROR_ENV) or None


def mirror_url(mirror: str, filename: str) -> str:
    """Return the URL of `filename` on a mirror (a URL or a local folder)."""
    if "://" not in mirror:
        # as_uri quotes '#', '%' and spaces, and handles Windows drives
        return pathlib.Path(os.path.abspath(mirror), filename).as_uri()
    return mirror.rstrip("/") + "/" + filename


def resolve_weights(weights_file: WeightsFile, *, path: Optional[str] = None,
                    mirror: Optional[str] = None,
                    progress: Optional[DownloadProgress] = None,
                    model_name: str = "this model") -> str:
    """Return a local path to the weights, downloading them if needed.

    The order is: an explicit `path`; the file in the Keras cache; the
    mirror (`mirror`, else ``$DEEPIMAGE_WEIGHTS_MIRROR``); the Keras origin.
    A download lands in the Keras cache only after its digest checks out.

    Parameters
    ----------
    weights_file : WeightsFile
    path : str, optional
        A weights file chosen by the user.
    mirror : str, optional
        A base URL or folder holding the file under its Keras name.
    progress : callable, optional
        ``progress(bytes_done, bytes_total)`` during a download.
    model_name : str
        The model's name, for messages.

    Raises
    ------
    WeightsUnavailable
        With a message that says which file is missing and how to get it.
    """
    if path:
        return check_weights_path(path, model_name)
    cached = weights_file.cached_path()
    if os.path.isfile(cached):
        return cached
    mirror = mirror or mirror_from_environment()
    sources = ([mirror_url(mirror, weights_file.filename)] if mirror else []) \
        + [weights_file.origin]
    failures = []
    for url in sources:
        # URLError is an OSError; a dropped connection may raise either
        try:
            _download(url, cached, weights_file.md5, progress)
            return cached
        except (OSError, ValueError, http.client.HTTPException) as error:
            failures.append(f"{url}: {getattr(error, 'reason', error)}")
    raise WeightsUnavailable(_missing_message(weights_file, model_name,
                                              failures))


def check_weights_path(path: str, model_name: str = "this model") -> str:
    """Return `path`, a weights file chosen by the user, if it exists.

    Raises
    ------
    WeightsUnavailable
        When there is no file at `path`.
    """
    if not os.path.isfile(path):
        raise WeightsUnavailable(
            f"The weights file for {model_name} does not exist: {path}")
    return path


def _missing_message(weights_file: WeightsFile, model_name: str,
                     failures: List[str]) -> str:
    tried = "; ".join(failures)
    return (
        f"The ImageNet weights for {model_name} "
        f"({weights_file.filename}, about {weights_file.approx_mb} MB) are "
        f"not in the Keras cache ({keras_cache_dir()}) and could not be "
        f"downloaded ({tried}). Connect to the internet and try again; or "
        f"download {weights_file.origin} on another computer and choose it "
        f"as the weights file (a .weights.h5 saved by Keras works too); or "
        f"set {MIRROR_ENV} (or the mirror setting) to a URL or folder that "
        f"holds {weights_file.filename}.")


def _download(url: str, target: str, md5: Optional[str],
              progress: Optional[DownloadProgress]) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        handle, partial = tempfile.mkstemp(
            prefix=os.path.basename(target) + ".", suffix=".part",
            dir=os.path.dirname(target))
        try:
            with os.fdopen(handle, "wb") as out:
                done = 0
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            if total is not None and done != total:
                raise ValueError(f"the download stopped after {done} of "
                                 f"{total} bytes")
            if md5 and digest.hexdigest() != md5:
                raise ValueError(f"the downloaded file is damaged (MD5 "
                                 f"{digest.hexdigest()}, expected {md5})")
            shutil.move(partial, target)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
