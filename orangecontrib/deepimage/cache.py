"""A persistent on-disk cache of embeddings, keyed by image content.

The key of an embedding is the model's identity (backbone, layer, weights,
preprocessing version) and the SHA-1 of the image file's bytes, so a renamed
or moved file is still found and an edited one is embedded anew. Entries
live in one SQLite file per user, written batch by batch: an interrupted run
keeps what it had finished.

The file has a size limit (:data:`DEFAULT_CACHE_SIZE`,
``$DEEPIMAGE_CACHE_SIZE`` or an argument): when it is reached, the embeddings used least recently go
first. A cache that cannot be used (a corrupt file, a database locked by
another program, a read-only file or folder, a full disk) is switched off
with one :class:`CacheUnavailable` warning; embedding goes on without it,
with the same vectors. :attr:`EmbeddingCache.error` says why it is off.
"""
import logging
import os
import re
import sqlite3
import threading
import warnings
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

__all__ = ["EmbeddingCache", "CacheUnavailable", "default_cache_dir",
           "default_cache_size", "cache_file", "clear_cache", "CACHE_ENV",
           "CACHE_SIZE_ENV", "DEFAULT_CACHE_SIZE"]

CACHE_ENV = "DEEPIMAGE_CACHE_DIR"
CACHE_SIZE_ENV = "DEEPIMAGE_CACHE_SIZE"
#: The size limit of the cache file, in bytes, unless set otherwise.
DEFAULT_CACHE_SIZE = 2 ** 30
#: Seconds to wait for a database that another program has locked.
LOCK_TIMEOUT = 1.0
#: Eviction frees this share of the limit beyond what is needed, so that it
#: does not run on every batch.
EVICTION_SLACK = 0.1
FILE_NAME = "embeddings.sqlite"

log = logging.getLogger(__name__)


class CacheUnavailable(RuntimeWarning):
    """The embedding cache cannot be used; embedding goes on without it."""


def default_cache_dir() -> str:
    """Return the cache folder: ``$DEEPIMAGE_CACHE_DIR`` or Orange's one."""
    folder = os.environ.get(CACHE_ENV)
    if folder:
        return folder
    try:
        from Orange.misc.environ import cache_dir
        return os.path.join(cache_dir(), "deepimage")
    except ImportError:  # pragma: no cover - Orange is a dependency
        return os.path.join(os.path.expanduser("~"), ".cache", "deepimage")


_SIZE_UNITS = {"": 2 ** 20, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30,
               "t": 2 ** 40}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"500"`` (megabytes), ``"500MB"``, ``"2G"``.

    Raises
    ------
    ValueError
        For text that is not a size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*",
                         text.lower())
    if match is None:
        raise ValueError(f"Not a size. Received: {text!r}; expected e.g. "
                         f"'500MB' or '2GB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def default_cache_size() -> int:
    """The size limit in bytes: ``$DEEPIMAGE_CACHE_SIZE`` (a number of
    megabytes, or with a unit: ``2GB``) or :data:`DEFAULT_CACHE_SIZE`."""
    text = os.environ.get(CACHE_SIZE_ENV)
    if text:
        try:
            return parse_size(text)
        except ValueError as error:
            warnings.warn(f"${CACHE_SIZE_ENV} is ignored: {error}",
                          RuntimeWarning)
    return DEFAULT_CACHE_SIZE


def cache_file(folder: Optional[str] = None) -> str:
    """The path of the cache file in `folder` (default: the cache folder)."""
    return os.path.join(folder or default_cache_dir(), FILE_NAME)


def clear_cache(folder: Optional[str] = None) -> None:
    """Remove every model's embeddings from the cache in `folder`.

    A damaged cache file is deleted (a new one is made when next used).

    Raises
    ------
    sqlite3.Error, OSError
        When the cache cannot be changed (e.g. locked by another program,
        or read-only).
    """
    path = cache_file(folder)
    if not os.path.exists(path):
        return
    cache = EmbeddingCache("", folder)
    try:
        cache.clear(all_models=True, quiet=False)
    except sqlite3.DatabaseError as error:
        if not _is_damaged(error):
            raise
        cache.close()
        for name in (path, path + "-journal"):
            if os.path.exists(name):
                os.remove(name)
    finally:
        cache.close()


def _is_damaged(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if _is_damaged(error):
        return f"the cache file is damaged ({text}); clear the cache"
    if "locked" in text:
        return f"the cache file is in use by another program ({text})"
    if "readonly" in text or "read-only" in text \
            or isinstance(error, PermissionError):
        return f"the cache file or its folder is read-only ({text})"
    if "unable to open" in text:
        return f"the cache file cannot be made or opened; is its folder " \
               f"read-only? ({text})"
    return text


class EmbeddingCache:
    """Embeddings of one model, stored in a SQLite file shared by all.

    Parameters
    ----------
    model_id : str
        Identifies the model, its weights and its layer.
    folder : str, optional
        Where the cache file lives (default: :func:`default_cache_dir`).
    max_bytes : int, optional
        The size limit of the file (default: :func:`default_cache_size`);
        the embeddings used least recently are removed to stay under it.
    """

    def __init__(self, model_id: str, folder: Optional[str] = None,
                 max_bytes: Optional[int] = None):
        self.model_id = model_id
        self.path = cache_file(folder)
        self.max_bytes = default_cache_size() if max_bytes is None \
            else max_bytes
        self._lock = threading.RLock()
        self._connection: Optional[sqlite3.Connection] = None
        #: Why the cache is off (None while it works).
        self.error: Optional[str] = None

    # --- the connection ------------------------------------------------

    def _connect(self) -> Optional[sqlite3.Connection]:
        if self.error is not None:
            return None
        if self._connection is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT,
                                         check_same_thread=False)
            try:
                self._prepare(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    @staticmethod
    def _prepare(connection: sqlite3.Connection):
        if connection.execute("PRAGMA page_count").fetchone()[0] == 0:
            # A new file: let freed pages go back to the disk.
            connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
        # Fewer waits for the disk on each batch; what a power cut could
        # damage is only a cache (bypassed, and replaced by Clear cache).
        connection.execute("PRAGMA synchronous = NORMAL")
        with connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                "model TEXT, content TEXT, vector BLOB, "
                "last_used INTEGER NOT NULL DEFAULT 0, "
                "PRIMARY KEY (model, content))")
            columns = {row[1] for row in connection.execute(
                "PRAGMA table_info(embeddings)")}
            if "last_used" not in columns:  # a file from before the limit
                connection.execute(
                    "ALTER TABLE embeddings ADD COLUMN "
                    "last_used INTEGER NOT NULL DEFAULT 0")
            connection.execute(
                "CREATE INDEX IF NOT EXISTS embeddings_last_used "
                "ON embeddings (last_used)")

    def _switch_off(self, error: BaseException) -> None:
        """Stop using the cache for good, with one warning."""
        self.error = _describe(error)
        if self._connection is not None:
            try:
                self._connection.close()
            except sqlite3.Error:
                pass
            self._connection = None
        message = f"The embedding cache is off: {self.error}"
        log.warning("%s (%s)", message, self.path)
        warnings.warn(message, CacheUnavailable, stacklevel=4)

    def retry(self) -> None:
        """Try the cache again after it was switched off (e.g. the other
        program that had locked it is done)."""
        with self._lock:
            self.error = None

    def _run(self, work, default):
        """``work(connection)``, or `default` when the cache is off or
        fails (then it is switched off)."""
        with self._lock:
            try:
                connection = self._connect()
                if connection is None:
                    return default
                return work(connection)
            except (sqlite3.Error, OSError) as error:
                self._switch_off(error)
                return default

    # --- reading and writing -------------------------------------------

    def get_many(self, content_keys: Iterable[str], touch: bool = True
                 ) -> Dict[str, np.ndarray]:
        """Return the cached embeddings among `content_keys`.

        With `touch`, they count as just used (the last to be evicted).
        """
        keys = list(dict.fromkeys(content_keys))

        def work(connection):
            found = {}
            for start in range(0, len(keys), 500):
                part = keys[start:start + 500]
                rows = connection.execute(
                    f"SELECT content, vector FROM embeddings WHERE model = ? "
                    f"AND content IN ({','.join('?' * len(part))})",
                    [self.model_id, *part]).fetchall()
                for content, blob in rows:
                    found[content] = np.frombuffer(blob, dtype=np.float32)
            if touch and found:
                with connection:
                    stamp = self._next_stamp(connection)
                    connection.executemany(
                        "UPDATE embeddings SET last_used = ? "
                        "WHERE model = ? AND content = ?",
                        [(stamp, self.model_id, key) for key in found])
            return found

        return self._run(work, {}) if keys else {}

    def contains(self, content_key: str) -> bool:
        """Return True when `content_key` has a cached embedding."""
        return bool(self.get_many([content_key], touch=False))

    def put_many(self, items: Iterable[Tuple[str, np.ndarray]]) -> None:
        """Store (content key, embedding) pairs, all in one transaction,
        then keep the file under its size limit."""
        rows = [(self.model_id, key,
                 np.asarray(vector, dtype=np.float32).tobytes())
                for key, vector in items]

        def work(connection):
            with connection:
                stamp = self._next_stamp(connection)
                connection.executemany(
                    "INSERT OR REPLACE INTO embeddings "
                    "(model, content, vector, last_used) VALUES (?, ?, ?, ?)",
                    [row + (stamp,) for row in rows])
            self._evict(connection)

        if rows:
            self._run(work, None)

    @staticmethod
    def _next_stamp(connection) -> int:
        # A logical clock shared by every process that uses the file.
        return connection.execute(
            "SELECT COALESCE(MAX(last_used), 0) + 1 FROM embeddings"
        ).fetchone()[0]

    @staticmethod
    def _used_bytes(connection) -> int:
        page_count, free, page_size = (
            connection.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size"))
        return (page_count - free) * page_size

    def _evict(self, connection) -> None:
        """Remove the least recently used embeddings (of any model) until
        the file is under its limit."""
        used = self._used_bytes(connection)
        if used <= self.max_bytes:
            return
        target = self.max_bytes * (1 - EVICTION_SLACK)
        while used > target:
            count = connection.execute(
                "SELECT COUNT(*) FROM embeddings").fetchone()[0]
            if count == 0:
                break
            per_row = max(1.0, used / count)
            n = min(count, max(1, int((used - target) / per_row) + 1))
            with connection:
                connection.execute(
                    "DELETE FROM embeddings WHERE rowid IN (SELECT rowid "
                    "FROM embeddings ORDER BY last_used LIMIT ?)", (n,))
            used = self._used_bytes(connection)
        self._give_back_space(connection)

    @staticmethod
    def _give_back_space(connection) -> None:
        if connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            # It frees a page per step; execute() would take one step.
            connection.executescript("PRAGMA incremental_vacuum;")

    def size_bytes(self) -> int:
        """Bytes the cache's embeddings take in the file (0 when it is off)."""
        return self._run(self._used_bytes, 0)

    def clear(self, all_models: bool = False, quiet: bool = True) -> None:
        """Remove this model's embeddings (or every model's).

        A cache that cannot be changed is switched off (with `quiet`) or
        raises ``sqlite3.Error``/``OSError``.
        """
        def work(connection):
            with connection:
                if all_models:
                    connection.execute("DELETE FROM embeddings")
                else:
                    connection.execute(
                        "DELETE FROM embeddings WHERE model = ?",
                        (self.model_id,))
            if connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                self._give_back_space(connection)
            elif all_models:
                # A file from before the limit: shrink it, and let it give
                # back the space from now on.
                connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
                connection.execute("VACUUM")

        if quiet:
            self._run(work, None)
        else:
            with self._lock:
                self.error = None
                work(self._connect())

    def __len__(self) -> int:
        return self._run(lambda connection: connection.execute(
            "SELECT COUNT(*) FROM embeddings WHERE model = ?",
            (self.model_id,)).fetchone()[0], 0)

    def close(self) -> None:
        """Close the database connection (it opens again when used)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            self._connection = None
