"""Batch jobs over many images: ``deepimage embed`` and ``deepimage predict``.

A job turns a list of images (a folder, a text file of paths or URLs, or an
Orange table file) into Parquet files in an output folder::

    DIR/job.json              what the job is (model, images, shard size)
    DIR/shards/part-00000.parquet   one file per fixed chunk of the list
    DIR/manifest.json         the shards that are done, with their counts
    DIR/embeddings.parquet    (predict: predictions.parquet) all embedded
                              rows, for Orange's File widget
    DIR/skipped.csv           the images that could not be used, and why

The list is sorted (a folder) or kept in its order (a list or a table) and
cut into shards of ``shard_size`` images; shard *i* always holds the same
images. Each shard is written whole into a hidden temporary file and only
then given its name, so a job killed at any moment leaves complete shards
and, at most, a hidden ``.deepimage-*.part`` file. Started again with the
same command, it does only the shards that are missing: every image ends up
in exactly one shard.

With a Dask ``Client`` (``--scheduler tcp://HOST:8786``), each missing shard
is one task: workers build the network once per process and reuse it
(:func:`_worker_for`), write their shards themselves (the output folder
must be one that all workers see), and the scheduler gives the shards of a
worker that died to another. Nothing of Dask is imported without a client.

Embedding fills the add-on's embedding cache on the machine that embeds
(``use_cache``), so that Deep Embedding on the same images is instant.
"""
import argparse
import hashlib
import io
import json
import math
import os
import pickle
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from orangecontrib.deepimage.errors import (
    DeepImageError, InvalidInput, UnwritableFolder)
from orangecontrib.deepimage.files import (
    check_output_folder, unwritable, write_new_file)

__all__ = ["ImageList", "list_images", "embed_job", "predict_job",
           "run_job", "JobResult", "add_commands", "SHARD_SIZE",
           "IMAGE_EXTENSIONS"]

#: Images per shard (a shard is the unit of work, of resuming and of
#: distribution).
SHARD_SIZE = 1000

#: File name endings of images in a source folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif",
                    ".tif", ".tiff", ".webp")

#: Version of the output layout, recorded in job.json.
LAYOUT_VERSION = 1

SHARDS = "shards"
METADATA_KEY = b"deepimage"


# --- the list of images ----------------------------------------------------

@dataclass
class ImageList:
    """The images of a job, in job order.

    Attributes
    ----------
    paths : list of str
        Absolute paths or URLs.
    labels : list of str or None
        The class of each image (a folder's sub-folder, a table's class), or
        None when the source has none.
    source : str
        What the list was made from.
    """
    paths: List[str]
    labels: Optional[List[Optional[str]]] = None
    source: str = ""

    def digest(self) -> str:
        """A fingerprint of the list (and its labels), to recognise a job."""
        sha = hashlib.sha256()
        for i, path in enumerate(self.paths):
            sha.update(path.encode("utf-8", "surrogateescape") + b"\0")
            if self.labels is not None:
                sha.update((self.labels[i] or "").encode() + b"\0")
        return sha.hexdigest()

    def class_values(self) -> List[str]:
        """The distinct labels, sorted (empty without labels)."""
        if self.labels is None:
            return []
        return sorted({label for label in self.labels if label})

    def __len__(self):
        return len(self.paths)


def _folder_images(folder: str) -> ImageList:
    """All images under `folder`, sorted; class = the sub-folder (as
    Import Images names it: the path of the image's folder below `folder`)."""
    folder = os.path.abspath(folder)
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") \
                    and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name),
                                             folder))
    found.sort()
    labels = [os.path.dirname(rel).replace(os.sep, "/") or None
              for rel in found]
    return ImageList([os.path.join(folder, rel) for rel in found],
                     labels if any(labels) else None, folder)


def _text_images(path: str) -> ImageList:
    """One path or URL a line; relative paths start at the file's folder;
    empty lines and lines starting with ``#`` are ignored."""
    from orangecontrib.deepimage.images import resolve_path
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is neither a folder, a text file of "
                           f"image paths nor a data table.") from None
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # URLs stay as they are; paths start at the list's folder.
        paths.append(resolve_path(os.path.expanduser(line), base))
    return ImageList(paths, None, os.path.abspath(path))


def _table_images(path: str) -> ImageList:
    from Orange.data import Table
    from orangecontrib.deepimage.images import image_paths, \
        require_image_column
    try:
        table = Table(path)
        column = require_image_column(table)
    except (ValueError, OSError) as error:
        raise InvalidInput(f"Cannot read images from {path}: {error}") \
            from None
    paths = [p for p in image_paths(table, column)]
    labels = None
    class_var = table.domain.class_var
    if class_var is not None and class_var.is_discrete:
        labels = [None if np.isnan(v) else class_var.values[int(v)]
                  for v in table.get_column(class_var)]
    # Rows without an image value are kept out of the job: they have no
    # path to report them by.
    keep = [i for i, p in enumerate(paths) if p]
    return ImageList([paths[i] for i in keep],
                     None if labels is None else [labels[i] for i in keep],
                     os.path.abspath(path))


def _is_table_file(path: str) -> bool:
    from Orange.data.io import FileFormat
    name = os.path.basename(path).lower()
    if name.endswith((".txt", ".lst", ".list")):
        return False
    return any(name.endswith(ext) for ext in FileFormat.readers)


def list_images(source: str) -> ImageList:
    """The images of `source`: a folder (recursively), a text file of paths
    or URLs, or an Orange table file with an image column.

    Raises
    ------
    InvalidInput
        When `source` does not exist or holds no images.
    """
    if not os.path.exists(source):
        raise InvalidInput(f"No such folder or file: {source}")
    if os.path.isdir(source):
        images = _folder_images(source)
    elif _is_table_file(source):
        images = _table_images(source)
    else:
        images = _text_images(source)
    if not images.paths:
        raise InvalidInput(f"No images found in {source} (image files "
                           f"end with {', '.join(IMAGE_EXTENSIONS)}).")
    return images


# --- what a job does ---------------------------------------------------------

def embed_job(model: str = "squeezenet", layer: str = "penultimate",
              weights: Optional[str] = None, batch_size: int = 32,
              use_cache: bool = True, cache_dir: Optional[str] = None,
              workers: int = 2) -> dict:
    """The description of an embedding job (sent to workers as it is)."""
    from orangecontrib.deepimage.backbones import get_backbone
    try:
        get_backbone(model).embedding_size_of(layer)
    except (KeyError, ValueError) as error:
        raise InvalidInput(str(error).strip("'\"")) from None
    return {"kind": "embed", "model": model, "layer": layer,
            "weights": os.path.abspath(weights) if weights else None,
            "batch_size": int(batch_size), "use_cache": bool(use_cache),
            "cache_dir": cache_dir, "workers": int(workers)}


def predict_job(model_file: str, batch_size: int = 32) -> dict:
    """The description of a prediction job with a pickled model."""
    if not os.path.isfile(model_file):
        raise InvalidInput(f"No such model file: {model_file}")
    with open(model_file, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    return {"kind": "predict", "model_file": os.path.abspath(model_file),
            "model_sha256": digest, "batch_size": int(batch_size)}


#: Keys of a job description that decide its results (not how fast).
_RESULT_KEYS = ("kind", "model", "layer", "weights", "model_file",
                "model_sha256")


# --- one shard, on whichever process does it ---------------------------------

_workers: Dict[str, object] = {}
_workers_lock = threading.Lock()


def _worker_for(job: dict):
    """The embedder or model of `job`, built once per process."""
    key = json.dumps(job, sort_keys=True)
    with _workers_lock:
        worker = _workers.get(key)
        if worker is None:
            worker = _workers[key] = (_Embedder if job["kind"] == "embed"
                                      else _Predictor)(job)
        return worker


def _sha256(path: str) -> Optional[str]:
    from orangecontrib.deepimage.images import ImageSkipped, read_image_bytes
    try:
        return hashlib.sha256(read_image_bytes(path).data).hexdigest()
    except ImageSkipped:
        return None


class _Embedder:
    def __init__(self, job):
        from orangecontrib.deepimage.embedding import ImageEmbedder
        self.embedder = ImageEmbedder(
            model=job["model"], weights=job["weights"], layer=job["layer"],
            batch_size=job["batch_size"], use_cache=job["use_cache"],
            cache_dir=job["cache_dir"], workers=job["workers"])
        self.embedder.load_network()
        self.size = self.embedder.embedding_size

    def schema_metadata(self, job):
        return {"kind": "embed", "model": job["model"],
                "layer": job["layer"], "weights": job["weights"],
                "vector": "embedding",
                "vector_names": [f"n{i}" for i in range(self.size)]}

    def process(self, paths, callback, out):
        import pyarrow as pa
        result = self.embedder.embed_paths(paths, callback)
        vectors = np.zeros((len(paths), self.size), np.float32)
        valid = np.zeros(len(paths), bool)
        for i, vector in enumerate(result.vectors):
            if vector is not None:
                vectors[i] = vector
                valid[i] = True
        hashes = [_sha256(p) if valid[i] else None
                  for i, p in enumerate(paths)]
        reasons = [None if valid[i] else result.skipped.get(i, "not embedded")
                   for i in range(len(paths))]
        flat = pa.array(vectors.ravel(), pa.float32())
        column = _masked(pa.FixedSizeListArray.from_arrays(flat, self.size),
                         valid)
        return {"sha256": pa.array(hashes, pa.string()),
                "embedding": column,
                "skip_reason": pa.array(reasons, pa.string())}


def _masked(column, valid):
    """A fixed-size-list column with nulls where `valid` is False."""
    import pyarrow as pa
    return pa.FixedSizeListArray.from_arrays(
        column.values, column.type.list_size,
        mask=pa.array(~np.asarray(valid)))


class _Predictor:
    def __init__(self, job):
        from orangecontrib.deepimage.classification import \
            ImageClassifierModel
        from orangecontrib.deepimage.segmentation import SegmentationModel
        with open(job["model_file"], "rb") as file:
            model = pickle.load(file)
        if isinstance(model, ImageClassifierModel):
            self.kind = "classify"
        elif isinstance(model, SegmentationModel):
            self.kind = "segment"
        else:
            raise InvalidInput(
                f"{job['model_file']} holds a {type(model).__name__}; "
                f"deepimage predict applies image classifiers and "
                f"segmentation models.")
        if self.kind == "classify":
            model.batch_size = job["batch_size"]
        self.model = model
        self.class_names = list(model.class_names)

    def schema_metadata(self, job):
        meta = {"kind": self.kind, "model_file": job["model_file"],
                "class_names": self.class_names}
        if self.kind == "classify":
            meta.update(vector="probabilities",
                        vector_names=self.class_names)
        return meta

    def process(self, paths, callback, out):
        import pyarrow as pa
        if self.kind == "classify":
            probs, skipped = self.model.predict_paths(paths, callback)
            valid = ~np.isnan(probs).any(axis=1)
            probs = np.nan_to_num(probs).astype(np.float32)
            column = pa.FixedSizeListArray.from_arrays(
                pa.array(probs.ravel(), pa.float32()), len(self.class_names))
            predicted = [self.class_names[int(np.argmax(row))] if ok
                         else None for row, ok in zip(probs, valid)]
            reasons = [None if ok else skipped.get(i, "not predicted")
                       for i, ok in enumerate(valid)]
            hashes = [_sha256(p) if ok else None
                      for p, ok in zip(paths, valid)]
            return {"sha256": pa.array(hashes, pa.string()),
                    "predicted": pa.array(predicted, pa.string()),
                    "probabilities": _masked(column, valid),
                    "skip_reason": pa.array(reasons, pa.string())}
        return self._segment(paths, callback, out)

    def _segment(self, paths, callback, out):
        import pyarrow as pa
        from PIL import Image
        masks_dir = os.path.join(out, "masks")
        os.makedirs(masks_dir, exist_ok=True)
        labels = self.model.segment(paths, callback)
        hashes, masks, reasons = [], [], []
        for path, label in zip(paths, labels):
            digest = _sha256(path) if label is not None else None
            if label is None or digest is None:
                hashes.append(None)
                masks.append(None)
                reasons.append(_skip_reason(path))
                continue
            stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
            name = f"{stem}-{digest[:16]}-mask.png"
            buffer = io.BytesIO()
            Image.fromarray(label.astype(np.uint8)
                            if label.max(initial=0) < 256 else
                            label.astype(np.int32)).save(buffer, "PNG")
            try:
                write_new_file(os.path.join(masks_dir, name),
                               buffer.getvalue(), numbered=False)
            except FileExistsError:
                pass  # written by an earlier try of this shard: the same
            hashes.append(digest)
            masks.append(name)
            reasons.append(None)
        return {"sha256": pa.array(hashes, pa.string()),
                "mask": pa.array(masks, pa.string()),
                "skip_reason": pa.array(reasons, pa.string())}


def _skip_reason(path) -> str:
    from orangecontrib.deepimage.images import ImageSkipped, load_image
    try:
        load_image(path)
    except ImageSkipped as error:
        return str(error)
    return "not predicted"


def shard_path(out: str, index: int) -> str:
    return os.path.join(out, SHARDS, f"part-{index:05d}.parquet")


def run_shard(job: dict, out: str, index: int, paths: Sequence[str],
              labels: Optional[Sequence[Optional[str]]],
              callback=None) -> Tuple[int, int, int]:
    """Do shard `index` unless it is done; return (index, rows, skipped).

    Runs in the local process or on a Dask worker. The shard appears
    complete or not at all; when two tries of the same shard race, the
    first to finish names the file and the other's result (the same) is
    dropped.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = shard_path(out, index)
    if os.path.exists(path):
        return _shard_counts(index, path)
    worker = _worker_for(job)
    columns = {"path": pa.array(list(paths), pa.string())}
    if labels is not None:
        columns["class"] = pa.array(list(labels), pa.string())
    columns.update(worker.process(list(paths), callback, out))
    table = pa.table(columns)
    meta = dict(worker.schema_metadata(job), shard=index)
    table = table.replace_schema_metadata(
        {METADATA_KEY: json.dumps(meta).encode()})
    try:
        write_new_file(path, lambda file: pq.write_table(table, file),
                       numbered=False)
    except FileExistsError:
        pass
    n_skipped = sum(r is not None for r in columns["skip_reason"].to_pylist())
    return index, len(paths), n_skipped


def _shard_counts(index, path):
    import pyarrow.parquet as pq
    reasons = pq.read_table(path, columns=["skip_reason"])["skip_reason"]
    return index, len(reasons), len(reasons) - reasons.null_count


# --- the job -----------------------------------------------------------------

@dataclass
class JobResult:
    """What a job did.

    Attributes
    ----------
    n_images, n_done, n_skipped : int
        Images in the job; of them embedded (or predicted); skipped.
    n_shards, n_shards_run : int
        Shards in the job; shards done by this run (the rest were there).
    output : str or None
        The merged Parquet file (None when not merged).
    skipped_file : str
    seconds : float
    """
    n_images: int
    n_done: int
    n_skipped: int
    n_shards: int
    n_shards_run: int
    output: Optional[str]
    skipped_file: str
    seconds: float
    shards: Dict[int, Tuple[int, int]] = field(default_factory=dict)


class TerminalProgress:
    """``12,000/50,000 images  310.2 images/s  0:02:03 left`` on stderr;
    rewritten in place on a terminal, a line every 10 s elsewhere."""

    def __init__(self, total: int, done: int = 0, stream=None,
                 enabled: bool = True):
        self.total = total
        self.start_done = done
        self.done = done
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self.clock_started = False
        self.shown = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.clock_started and done > self.done:
            # The first images of a run wait for the network to be built:
            # the rate is measured from then on.
            self.started, self.start_done = now, done
            self.clock_started = True
        self.done = done
        if not self.enabled:
            return
        if not force and now - self.shown < (0.5 if self.tty else 10):
            return
        self.shown = now
        self.stream.write(("\r" if self.tty else "") + self.line(now)
                          + ("" if self.tty else "\n"))
        self.stream.flush()

    def line(self, now=None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 else "--:--:--"
        return (f"{self.done:,}/{self.total:,} images  {rate:,.1f} "
                f"images/s  {eta} left")

    def close(self) -> None:
        if self.enabled:
            self.update(self.done, force=True)
            if self.tty:
                self.stream.write("\n")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _replace_file(path: str, write) -> None:
    """Write one of the job's own summary files (replaced as a whole)."""
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")  # hidden
    try:
        with open(temp, "wb") as file:
            write(file)
        os.replace(temp, path)
    except OSError as error:
        if os.path.exists(temp):
            os.remove(temp)
        mapped = unwritable(error, os.path.dirname(path))
        if mapped is not None:
            raise mapped from error
        raise


def _prepare_output(out: str, job: dict, images: ImageList,
                    shard_size: int) -> None:
    try:
        os.makedirs(os.path.join(out, SHARDS), exist_ok=True)
    except OSError as error:
        raise (unwritable(error, out) or UnwritableFolder(
            f"Cannot make the output folder {out}: "
            f"{error.strerror or error}")) from error
    check_output_folder(os.path.join(out, SHARDS))
    description = {"layout": LAYOUT_VERSION,
                   "job": {k: job.get(k) for k in _RESULT_KEYS},
                   "source": images.source, "n_images": len(images),
                   "images_sha256": images.digest(),
                   "shard_size": shard_size}
    path = os.path.join(out, "job.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            earlier = json.load(file)
        if earlier != description:
            changed = sorted(k for k in description
                             if earlier.get(k) != description[k])
            raise InvalidInput(
                f"{out} holds another job (it differs in: "
                f"{', '.join(changed)}); choose another output folder, or "
                f"run the same command as before to finish that job.")
        return
    try:
        write_new_file(path, json.dumps(description, indent=1).encode(),
                       numbered=False)
    except FileExistsError:
        pass  # another process started the same job a moment ago


def run_job(job: dict, images: ImageList, out: str,
            shard_size: int = SHARD_SIZE, client=None, merge: bool = True,
            progress: bool = True, stream=None) -> JobResult:
    """Run `job` over `images` into the folder `out`, resuming if it holds
    the same job started before.

    Parameters
    ----------
    job : dict
        From :func:`embed_job` or :func:`predict_job`.
    images : ImageList
    out : str
        Output folder (made when missing). With a client, it must be a
        folder that every worker sees under the same path.
    shard_size : int
    client : dask.distributed.Client, optional
        Run the shards on its cluster.
    merge : bool
        Write all rows into one Parquet file at the end.
    progress : bool
        Show progress on `stream` (default stderr).

    Raises
    ------
    InvalidInput
        When `out` holds a different job.
    UnwritableFolder
        When `out` cannot be written.
    """
    if shard_size < 1:
        raise InvalidInput(f"The shard size must be positive, not "
                           f"{shard_size}.")
    out = os.path.abspath(out)
    started = time.monotonic()
    _prepare_output(out, job, images, shard_size)
    n = len(images)
    n_shards = math.ceil(n / shard_size)
    bounds = [(i * shard_size, min(n, (i + 1) * shard_size))
              for i in range(n_shards)]
    done: Dict[int, Tuple[int, int]] = {}
    for i in range(n_shards):
        if os.path.exists(shard_path(out, i)):
            _, rows, skipped = _shard_counts(i, shard_path(out, i))
            done[i] = (rows, skipped)
    pending = [i for i in range(n_shards) if i not in done]
    bar = TerminalProgress(n, sum(r for r, _ in done.values()), stream,
                           progress)

    def part(i):
        lo, hi = bounds[i]
        labels = None if images.labels is None else images.labels[lo:hi]
        return images.paths[lo:hi], labels

    def finished(i, rows, skipped):
        done[i] = (rows, skipped)
        _write_manifest(out, n_shards, done)
        bar.update(sum(r for r, _ in done.values()))

    if client is None:
        for i in pending:
            base = sum(r for r, _ in done.values())
            size = bounds[i][1] - bounds[i][0]
            paths, labels = part(i)
            _, rows, skipped = run_shard(
                job, out, i, paths, labels,
                lambda fraction, b=base, s=size: bar.update(
                    b + int(fraction * s)))
            finished(i, rows, skipped)
    else:
        _run_on_cluster(client, job, out, pending, part, finished)
    bar.close()
    _write_manifest(out, n_shards, done, complete=True)
    skipped_file = _write_skipped(out, n_shards)
    output = _merge(out, n_shards, job, images) if merge else None
    return JobResult(n, sum(r - s for r, s in done.values()),
                     sum(s for _, s in done.values()), n_shards,
                     len(pending), output, skipped_file,
                     time.monotonic() - started, done)


def _run_on_cluster(client, job, out, pending, part, finished):
    from dask.distributed import as_completed
    token = hashlib.sha256(f"{out}|{json.dumps(job, sort_keys=True)}"
                           .encode()).hexdigest()[:12]
    futures = []
    for i in pending:
        paths, labels = part(i)
        futures.append(client.submit(
            run_shard, job, out, i, paths, labels,
            key=f"deepimage-shard-{token}-{i}", retries=2))
    try:
        for future in as_completed(futures):
            index, rows, skipped = future.result()
            finished(index, rows, skipped)
    finally:
        for future in futures:
            future.release()


def _write_manifest(out, n_shards, done, complete=False):
    manifest = {"n_shards": n_shards, "complete": complete,
                "done": {str(i): {"rows": r, "skipped": s}
                         for i, (r, s) in sorted(done.items())}}
    _replace_file(os.path.join(out, "manifest.json"),
                  lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def _write_skipped(out, n_shards) -> str:
    import csv
    import pyarrow.parquet as pq
    path = os.path.join(out, "skipped.csv")

    def write(file):
        text = io.TextIOWrapper(file, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(["path", "reason"])
        for i in range(n_shards):
            table = pq.read_table(shard_path(out, i),
                                  columns=["path", "skip_reason"])
            for p, reason in zip(table["path"].to_pylist(),
                                 table["skip_reason"].to_pylist()):
                if reason is not None:
                    writer.writerow([p, reason])
        text.flush()
        text.detach()

    _replace_file(path, write)
    return path


def _merge(out, n_shards, job, images) -> str:
    """All rows that were embedded or predicted, in one file; a shard at a
    time, so memory does not grow with the job."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    name = "embeddings.parquet" if job["kind"] == "embed" \
        else "predictions.parquet"
    path = os.path.join(out, name)
    first = pq.read_schema(shard_path(out, 0))
    meta = json.loads(first.metadata[METADATA_KEY])
    meta.pop("shard", None)
    meta["class_values"] = images.class_values()
    if meta.get("kind") == "segment":
        meta["masks"] = os.path.join(out, "masks")
    schema = first.remove(first.get_field_index("skip_reason")) \
        .with_metadata({METADATA_KEY: json.dumps(meta).encode()})

    def write(file):
        with pq.ParquetWriter(file, schema) as writer:
            for i in range(n_shards):
                table = pq.read_table(shard_path(out, i))
                table = table.filter(pc.is_null(table["skip_reason"]))
                writer.write_table(table.drop_columns(["skip_reason"])
                                   .replace_schema_metadata(schema.metadata))

    _replace_file(path, write)
    return path


# --- the command line --------------------------------------------------------

def _connect(scheduler: str, timeout: float):
    try:
        from dask.distributed import Client
    except ImportError:
        raise InvalidInput("--scheduler needs Dask: pip install "
                           "'Orange3-DeepImage[cluster]'") from None
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as error:
        raise DeepImageError(f"The scheduler at {scheduler} does not answer "
                             f"({error}).") from None


def _run_command(args, job: dict) -> int:
    images = list_images(args.source)
    client = _connect(args.scheduler, args.connect_timeout) \
        if args.scheduler else None
    try:
        result = run_job(job, images, args.out, args.shard_size, client,
                         merge=not args.no_merge,
                         progress=not args.quiet)
    finally:
        if client is not None:
            client.close()
    what = "embedded" if job["kind"] == "embed" else "predicted"
    print(f"{result.n_done:,} of {result.n_images:,} images {what}, "
          f"{result.n_skipped:,} skipped (reasons in "
          f"{result.skipped_file}); {result.n_shards_run} of "
          f"{result.n_shards} shards done in this run, "
          f"{result.seconds:.1f} s.")
    if result.output:
        print(f"Results: {result.output}")
    return 0


def _embed(args) -> int:
    try:
        job = embed_job(args.model, args.layer, args.weights,
                        args.batch_size, not args.no_cache, args.cache_dir,
                        args.decoders)
        return _run_command(args, job)
    except (DeepImageError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _predict(args) -> int:
    try:
        job = predict_job(args.model_file, args.batch_size)
        return _run_command(args, job)
    except (DeepImageError, FileNotFoundError,
            pickle.UnpicklingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _common_arguments(command) -> None:
    command.add_argument("source", help="a folder of images (searched "
                         "recursively; sub-folders are classes), a text file "
                         "of paths or URLs, or an Orange table file")
    command.add_argument("--out", required=True, metavar="DIR",
                         help="output folder; run the same command again to "
                              "finish a job that was stopped")
    command.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                         help=f"images per shard (default {SHARD_SIZE})")
    command.add_argument("--batch-size", type=int, default=32,
                         help="images per step of the network")
    command.add_argument("--scheduler", metavar="tcp://HOST:8786",
                         help="run the shards on this Dask cluster (the "
                              "output folder must be shared by the workers)")
    command.add_argument("--connect-timeout", type=float, default=10,
                         help="seconds to wait for the scheduler")
    command.add_argument("--no-merge", action="store_true",
                         help="keep only the shards (no single Parquet file)")
    command.add_argument("--quiet", action="store_true",
                         help="no progress line")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``embed`` and ``predict`` to the ``deepimage`` command line."""
    embed = commands.add_parser(
        "embed", help="embed many images into Parquet files, resumably",
        description="Embed every image of SOURCE into Parquet shards in "
                    "DIR (path, sha256 of the file, vector); skipped images "
                    "and their reasons go to DIR/skipped.csv. Stopped at any "
                    "point, the same command continues the job.")
    _common_arguments(embed)
    embed.add_argument("--model", default="squeezenet",
                       help="backbone (default squeezenet)")
    embed.add_argument("--layer", default="penultimate",
                       help="layer to embed with (default penultimate)")
    embed.add_argument("--weights", help="weights file instead of ImageNet's")
    cache = embed.add_mutually_exclusive_group()
    cache.add_argument("--fill-cache", action="store_true",
                       help="fill the embedding cache, so that Deep "
                            "Embedding on these images is instant (the "
                            "default)")
    cache.add_argument("--no-cache", action="store_true",
                       help="neither read nor fill the embedding cache")
    embed.add_argument("--cache-dir", help="embedding cache folder")
    embed.add_argument("--decoders", type=int, default=2,
                       help="threads decoding images (default 2)")
    embed.set_defaults(handler=_embed)

    predict = commands.add_parser(
        "predict", help="apply a saved model to many images, resumably",
        description="Apply a saved image classifier (probabilities and the "
                    "predicted class) or segmentation model (masks into "
                    "DIR/masks) to every image of SOURCE.")
    predict.add_argument("model_file", metavar="MODEL.pkl",
                         help="a model saved with Save Model")
    _common_arguments(predict)
    predict.set_defaults(handler=_predict)
