"""deepimage embed / predict: shards, resuming after SIGKILL, bad inputs,
the Parquet reader, the embedding cache and a local Dask cluster."""
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from Orange.data.io import FileFormat
from Orange.widgets.data.owfile import OWFile
from Orange.widgets.tests.base import WidgetTest

from orangecontrib.deepimage import batch
from orangecontrib.deepimage.__main__ import main
from orangecontrib.deepimage.embedding import ImageEmbedder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PER_CLASS = 11


def make_images(folder, n_per_class=N_PER_CLASS, size=24, seed=0):
    """Two class folders of small JPEG/PNG images, and one broken file."""
    rng = np.random.default_rng(seed)
    for label in ("cats", "dogs"):
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            ext = "jpg" if i % 2 else "png"
            Image.fromarray(pixels).save(
                os.path.join(folder, label, f"{label}{i:02d}.{ext}"))
    with open(os.path.join(folder, "dogs", "broken.jpg"), "w") as file:
        file.write("this is not a picture")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp("images")))


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """An uninterrupted one-process run: {path: vector}."""
    out = str(tmp_path_factory.mktemp("reference"))
    job = batch.embed_job("squeezenet", use_cache=False)
    result = batch.run_job(job, batch.list_images(images), out,
                           shard_size=4, progress=False)
    return result, out, vectors_of(out)


def shard_rows(out):
    """Every row of every shard: (path, sha256, vector or None, reason)."""
    import pyarrow.parquet as pq
    rows = []
    folder = os.path.join(out, batch.SHARDS)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".parquet"):
            table = pq.read_table(os.path.join(folder, name)).to_pylist()
            rows += [(r["path"], r["sha256"], r["embedding"],
                      r["skip_reason"]) for r in table]
    return rows


def vectors_of(out):
    return {path: np.asarray(vector, np.float32)
            for path, _, vector, _ in shard_rows(out) if vector is not None}


def assert_same_vectors(got, expected):
    assert sorted(got) == sorted(expected)
    for path, vector in expected.items():
        np.testing.assert_allclose(got[path], vector, rtol=1e-5, atol=1e-5)


def assert_every_image_once(out, images):
    paths = [row[0] for row in shard_rows(out)]
    assert sorted(paths) == sorted(batch.list_images(images).paths)
    assert len(paths) == len(set(paths))


# --- listing -----------------------------------------------------------------

def test_folder_is_listed_recursively_sorted_with_sub_folder_classes(images):
    listed = batch.list_images(images)
    assert len(listed) == 2 * N_PER_CLASS + 1
    assert listed.paths == sorted(listed.paths)
    assert all(os.path.isabs(p) for p in listed.paths)
    assert listed.labels[0] == "cats" and listed.labels[-1] == "dogs"
    assert listed.class_values() == ["cats", "dogs"]


def test_text_file_and_table_file_sources(tmp_path, images):
    names = ["cats/cats01.jpg", "", "# a comment",
             os.path.join(images, "dogs", "dogs02.png"),
             "https://example.com/a.jpg"]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(names))
    os.symlink(os.path.join(images, "cats"), tmp_path / "cats")
    listed = batch.list_images(str(listing))
    assert listed.paths == [str(tmp_path / "cats" / "cats01.jpg"), names[3],
                            names[4]]
    assert listed.labels is None

    from orangecontrib.deepimage.images import image_paths
    from imagedata import image_table
    table = image_table(os.path.join(images, "cats"),
                        ["cats00.png", "cats01.jpg"], [0, 1], ["a", "b"])
    table.save(str(tmp_path / "table.tab"))
    listed = batch.list_images(str(tmp_path / "table.tab"))
    assert listed.paths == image_paths(table, table.domain["image"])
    assert listed.labels == ["a", "b"]


# --- a run -------------------------------------------------------------------

def test_run_equals_in_process_embedder_and_reports_skipped(images, reference):
    result, out, vectors = reference
    assert (result.n_images, result.n_done, result.n_skipped) == \
        (2 * N_PER_CLASS + 1, 2 * N_PER_CLASS, 1)
    assert result.n_shards == 6 == result.n_shards_run
    listed = batch.list_images(images)
    with ImageEmbedder("squeezenet", use_cache=False) as embedder:
        direct = embedder.embed_paths(listed.paths)
    expected = {p: v for p, v in zip(listed.paths, direct.vectors)
                if v is not None}
    assert_same_vectors(vectors, expected)
    rows = shard_rows(out)
    import hashlib
    for path, digest, vector, _ in rows:
        if vector is not None:
            with open(path, "rb") as file:
                assert digest == hashlib.sha256(file.read()).hexdigest()
    with open(result.skipped_file, encoding="utf-8") as file:
        lines = file.read().splitlines()
    assert lines[0] == "path,reason"
    assert len(lines) == 2 and "broken.jpg" in lines[1] \
        and "not an image" in lines[1]


def test_file_widget_reader_opens_the_output(images, reference):
    result, out, vectors = reference
    reader = FileFormat.get_reader(result.output)
    assert type(reader).__name__ == "ParquetImageReader"
    table = reader.read()
    assert len(table) == 2 * N_PER_CLASS
    assert len(table.domain.attributes) == 1000
    assert table.domain.attributes[0].attributes["hidden"]
    assert table.domain.class_var.values == ("cats", "dogs")
    image_var = table.domain.metas[0]
    assert image_var.attributes["type"] == "image"
    paths = list(table.get_column(image_var))
    np.testing.assert_allclose(
        table.X, np.vstack([vectors[p] for p in paths]), atol=1e-6)
    labels = [table.domain.class_var.values[int(v)] for v in table.Y]
    assert labels == [os.path.basename(os.path.dirname(p)) for p in paths]


class TestFileWidget(WidgetTest):
    @pytest.fixture(autouse=True)
    def _output(self, reference):
        self.output = reference[0].output

    def test_file_widget_opens_the_parquet_output(self):
        self.widget = self.create_widget(OWFile)
        self.widget.add_path(self.output)
        self.widget.source = self.widget.LOCAL_FILE
        self.widget.load_data()
        data = self.get_output(self.widget.Outputs.data)
        self.assertIsNotNone(data)
        self.assertEqual(len(data), 2 * N_PER_CLASS)
        self.assertEqual(len(data.domain.attributes), 1000)
        self.assertEqual(data.domain.class_var.name, "category")
        self.assertFalse(self.widget.Error.active)


def test_filled_cache_makes_deep_embedding_instant(tmp_path, images):
    cache = str(tmp_path / "cache")
    job = batch.embed_job("squeezenet", cache_dir=cache)
    listed = batch.list_images(images)
    batch.run_job(job, listed, str(tmp_path / "out"), shard_size=8,
                  progress=False)
    with ImageEmbedder("squeezenet", cache_dir=cache) as embedder:
        result = embedder.embed_paths(listed.paths)
    assert result.n_cached == 2 * N_PER_CLASS
    assert len(result.skipped) == 1


def test_rerun_of_a_finished_job_does_nothing(images, reference):
    result, out, vectors = reference
    shard = batch.shard_path(out, 0)
    before = os.stat(shard).st_mtime_ns
    job = batch.embed_job("squeezenet", use_cache=False)
    again = batch.run_job(job, batch.list_images(images), out, shard_size=4,
                          progress=False)
    assert again.n_shards_run == 0 and again.n_done == result.n_done
    assert os.stat(shard).st_mtime_ns == before


# --- killed and resumed ------------------------------------------------------

def command(images, out, *extra):
    return [sys.executable, "-m", "orangecontrib.deepimage", "embed",
            images, "--out", out, "--shard-size", "1", "--no-cache",
            *extra]


def environment():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def n_shards_in(folder):
    if not os.path.isdir(folder):
        return 0
    return len([n for n in os.listdir(folder) if n.endswith(".parquet")])


def kill_at_random_point(images, out, target, rng):
    """Start the command and SIGKILL it once `target` shards are there, a
    random few milliseconds later (between shards or in one); return the
    shards there were (name -> inode, mtime)."""
    process = subprocess.Popen(command(images, out), env=environment(),
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    folder = os.path.join(out, batch.SHARDS)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None \
            and n_shards_in(folder) < target:
        time.sleep(0.002)
    assert process.poll() is None, "the run ended before it was killed"
    time.sleep(rng.uniform(0, 0.03))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return {name: (os.stat(os.path.join(folder, name)).st_ino,
                   os.stat(os.path.join(folder, name)).st_mtime_ns)
            for name in os.listdir(folder) if name.endswith(".parquet")}


def test_killed_twice_then_finished_has_every_image_once(
        tmp_path, images, reference):
    out = str(tmp_path / "out")
    rng = random.Random(1)
    n_images = reference[0].n_images  # one image a shard
    first_target = rng.randint(1, n_images // 3)
    second_target = rng.randint(first_target + 1, 2 * n_images // 3)
    first = kill_at_random_point(images, out, first_target, rng)
    second = kill_at_random_point(images, out, second_target, rng)
    assert first_target <= len(first) < n_images
    assert max(len(first), second_target) <= len(second) < n_images
    # The last run also shows that a run without --scheduler needs no Dask.
    script = ("import sys; from orangecontrib.deepimage.__main__ import main;"
              f"rc = main({command(images, out)[3:]!r});"
              "print('dask loaded:', any(m == 'dask' or m.startswith("
              "('dask.', 'distributed')) for m in sys.modules)); "
              "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", script], env=environment(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "dask loaded: False" in done.stdout
    assert "22 of 23 images embedded, 1 skipped" in done.stdout
    assert_every_image_once(out, images)
    assert_same_vectors(vectors_of(out), reference[2])
    folder = os.path.join(out, batch.SHARDS)
    for name, (inode, mtime) in second.items():  # nothing written was lost
        stat = os.stat(os.path.join(folder, name))
        assert (stat.st_ino, stat.st_mtime_ns) == (inode, mtime)
    assert set(first) <= set(second)


# --- bad inputs --------------------------------------------------------------

def test_missing_source_is_a_clear_error(tmp_path, capsys):
    assert main(["embed", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "No such folder or file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_folder_without_images_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "No images found" in capsys.readouterr().err


def test_unwritable_output_is_a_clear_error(tmp_path, images, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    assert main(["embed", images, "--out", str(blocker / "out")]) == 2
    assert "Cannot make the output folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert main(["embed", images, "--out", str(locked)]) == 2
            assert "read-only" in capsys.readouterr().err
        finally:
            locked.chmod(0o700)


def test_another_job_in_the_same_folder_is_refused(images, reference,
                                                   capsys):
    out = reference[1]
    before = sorted(os.listdir(os.path.join(out, batch.SHARDS)))
    assert main(["embed", images, "--out", out, "--shard-size", "5"]) == 2
    message = capsys.readouterr().err
    assert "holds another job" in message and "shard_size" in message
    assert sorted(os.listdir(os.path.join(out, batch.SHARDS))) == before


def test_unknown_model_and_silent_scheduler(tmp_path, images, capsys):
    assert main(["embed", images, "--out", str(tmp_path / "a"),
                 "--model", "no-such-net"]) == 2
    assert "no-such-net" in capsys.readouterr().err
    assert main(["embed", images, "--out", str(tmp_path / "b"),
                 "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout",
                 "2"]) == 2
    assert "does not answer" in capsys.readouterr().err


def test_predict_refuses_what_is_not_a_model(tmp_path, images, capsys):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"not": "a model"}))
    assert main(["predict", str(path), images, "--out",
                 str(tmp_path / "out")]) == 2
    assert "holds a dict" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.pkl"), images, "--out",
                 str(tmp_path / "out")]) == 2
    assert "No such model file" in capsys.readouterr().err


# --- a local Dask cluster ----------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    local = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True,
        host="127.0.0.1", dashboard_address=None,
        worker_dashboard_address=None)
    client = distributed.Client(local)
    try:
        yield client
    finally:
        client.close()
        local.close()


def test_cluster_run_equals_one_process(tmp_path, images, reference,
                                        cluster):
    out = str(tmp_path / "out")
    job = batch.embed_job("squeezenet", use_cache=False)
    result = batch.run_job(job, batch.list_images(images), out,
                           shard_size=3, client=cluster, progress=False)
    assert (result.n_done, result.n_skipped) == (2 * N_PER_CLASS, 1)
    assert_every_image_once(out, images)
    assert_same_vectors(vectors_of(out), reference[2])
    # Both workers did shards, each with the network it built once.
    import pyarrow.parquet as pq
    assert len(pq.read_table(result.output)) == 2 * N_PER_CLASS
    built = cluster.run(lambda: len(batch._workers))
    assert sorted(built.values()) == [1, 1]


def test_cluster_with_a_worker_killed_still_has_every_image_once(
        tmp_path, images, reference, cluster):
    out = str(tmp_path / "out")
    job = batch.embed_job("squeezenet", use_cache=False)
    outcome = {}

    def run():
        try:
            outcome["result"] = batch.run_job(
                job, batch.list_images(images), out, shard_size=1,
                client=cluster, progress=False)
        except BaseException as error:  # reported by the test below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    folder = os.path.join(out, batch.SHARDS)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive():
        if os.path.isdir(folder) and any(
                n.endswith(".parquet") for n in os.listdir(folder)):
            break
        time.sleep(0.02)
    pids = cluster.run(os.getpid)
    n_before = len([n for n in os.listdir(folder) if n.endswith(".parquet")])
    os.kill(sorted(pids.values())[0], signal.SIGKILL)
    thread.join(600)
    assert "error" not in outcome, outcome.get("error")
    assert n_before < 2 * N_PER_CLASS + 1  # killed mid-run
    assert outcome["result"].n_done == 2 * N_PER_CLASS
    assert_every_image_once(out, images)
    assert_same_vectors(vectors_of(out), reference[2])


# --- predict -----------------------------------------------------------------

def test_predict_with_a_saved_classifier(tmp_path):
    from imagedata import shapes_table
    from orangecontrib.deepimage.classification import ImageClassifierLearner
    folder = tmp_path / "shapes"
    folder.mkdir()
    table = shapes_table(str(folder), per_class=6)
    model = ImageClassifierLearner(epochs=3, batch_size=8)(table)
    model_file = tmp_path / "model.pkl"
    model_file.write_bytes(pickle.dumps(model))
    out = str(tmp_path / "out")
    (folder / "broken.png").write_text("no picture")
    assert main(["predict", str(model_file), str(folder), "--out", out,
                 "--shard-size", "5", "--quiet"]) == 0
    listed = batch.list_images(str(folder))
    expected, _ = model.predict_paths(listed.paths)
    reader = FileFormat.get_reader(os.path.join(out, "predictions.parquet"))
    result = reader.read()
    assert len(result) == 18
    assert [v.name for v in result.domain.attributes] == \
        ["disc", "square", "stripes"]
    paths = list(result.get_column(result.domain.metas[0]))
    rows = [listed.paths.index(p) for p in paths]
    np.testing.assert_allclose(result.X, expected[rows], atol=1e-5)
    predicted = result.domain["predicted"]
    assert [predicted.values[int(v)] for v in result.get_column(predicted)] \
        == [model.class_names[i] for i in np.argmax(expected[rows], axis=1)]
    with open(os.path.join(out, "skipped.csv"), encoding="utf-8") as file:
        assert "broken.png" in file.read()


def test_predict_with_a_saved_segmentation_model(tmp_path):
    from orangecontrib.deepimage.segmentation import SegmentationModel, \
        build_unet
    rng = np.random.default_rng(0)
    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) \
            .save(folder / f"cell{i}.png")
    network = build_unet(2, depth=2, base_filters=4)
    model = SegmentationModel(network, ["background", "cell"], tile_size=32)
    model_file = tmp_path / "unet.pkl"
    model_file.write_bytes(pickle.dumps(model))
    out = tmp_path / "out"
    assert main(["predict", str(model_file), str(folder), "--out", str(out),
                 "--shard-size", "2", "--quiet"]) == 0
    table = FileFormat.get_reader(str(out / "predictions.parquet")).read()
    assert len(table) == 5
    mask_var = table.domain["mask"]
    assert mask_var.attributes["mask"] == "class"
    image_var = table.domain["image"]
    for path, name in zip(table.get_column(image_var),
                          table.get_column(mask_var)):
        written = np.asarray(Image.open(
            os.path.join(mask_var.attributes["origin"], name)))
        expected = model.segment([path])[0]
        np.testing.assert_array_equal(written, expected)


def test_progress_line_shows_rate_and_time_left():
    import io
    stream = io.StringIO()
    progress = batch.TerminalProgress(1000, 100, stream)
    progress.update(200, force=True)  # the first images: the clock starts
    progress.started -= 10  # as if 10 s had passed since
    progress.update(400, force=True)
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("400/1,000 images")
    rate = float(line.split()[2])
    assert 19 < rate < 21  # 200 images in 10 s
    assert "0:00:30 left" in line or "0:00:31 left" in line
