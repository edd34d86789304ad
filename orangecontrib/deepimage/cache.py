"""A persistent on-disk cache of embeddings, keyed by image content.

The key of an embedding is the model's identity (backbone, layer, weights,
preprocessing version) and the SHA-1 of the image file's bytes, so a renamed
or moved file is still found and an edited one is embedded anew. Entries
live in one SQLite file per user, written batch by batch: an interrupted run
keeps what it had finished.
"""
import os
import sqlite3
import threading
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

__all__ = ["EmbeddingCache", "default_cache_dir", "CACHE_ENV"]

CACHE_ENV = "DEEPIMAGE_CACHE_DIR"


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


class EmbeddingCache:
    """Embeddings of one model, stored in a SQLite file.

    Parameters
    ----------
    model_id : str
        Identifies the model, its weights and its layer.
    folder : str, optional
        Where the cache file lives (default: :func:`default_cache_dir`).
    """

    def __init__(self, model_id: str, folder: Optional[str] = None):
        self.model_id = model_id
        self.path = os.path.join(folder or default_cache_dir(),
                                 "embeddings.sqlite")
        self._lock = threading.Lock()
        self._connection = None

    def _connect(self) -> Optional[sqlite3.Connection]:
        if self._connection is None:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                connection = sqlite3.connect(self.path, timeout=30,
                                             check_same_thread=False)
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings ("
                    "model TEXT, content TEXT, vector BLOB, "
                    "PRIMARY KEY (model, content))")
                self._connection = connection
            except (OSError, sqlite3.Error):
                # An unwritable cache folder must not stop embedding.
                self._connection = False
        return self._connection or None

    def get_many(self, content_keys: Iterable[str]
                 ) -> Dict[str, np.ndarray]:
        """Return the cached embeddings among `content_keys`."""
        keys = list(dict.fromkeys(content_keys))
        found = {}
        with self._lock:
            connection = self._connect()
            if connection is None:
                return found
            for start in range(0, len(keys), 500):
                part = keys[start:start + 500]
                rows = connection.execute(
                    f"SELECT content, vector FROM embeddings WHERE model = ? "
                    f"AND content IN ({','.join('?' * len(part))})",
                    [self.model_id, *part]).fetchall()
                for content, blob in rows:
                    found[content] = np.frombuffer(blob, dtype=np.float32)
        return found

    def contains(self, content_key: str) -> bool:
        """Return True when `content_key` has a cached embedding."""
        return bool(self.get_many([content_key]))

    def put_many(self, items: Iterable[Tuple[str, np.ndarray]]) -> None:
        """Store (content key, embedding) pairs, all in one transaction."""
        rows = [(self.model_id, key,
                 np.asarray(vector, dtype=np.float32).tobytes())
                for key, vector in items]
        with self._lock:
            connection = self._connect()
            if connection is None or not rows:
                return
            try:
                with connection:
                    connection.executemany(
                        "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                        rows)
            except sqlite3.Error:
                pass  # a full disk must not stop embedding

    def clear(self) -> None:
        """Remove this model's embeddings."""
        with self._lock:
            connection = self._connect()
            if connection is not None:
                with connection:
                    connection.execute(
                        "DELETE FROM embeddings WHERE model = ?",
                        (self.model_id,))

    def __len__(self) -> int:
        with self._lock:
            connection = self._connect()
            if connection is None:
                return 0
            return connection.execute(
                "SELECT COUNT(*) FROM embeddings WHERE model = ?",
                (self.model_id,)).fetchone()[0]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            if self._connection:
                self._connection.close()
            self._connection = None
