"""Training across machines: worker processes on 127.0.0.1 with TF_CONFIG.

Two workers of a ``MultiWorkerMirroredStrategy`` (CPU only, on free ports)
are started once for the module; they train an image classifier and a
small U-Net with ``strategy="multi-worker"`` (multiworker_job.py), and each
test compares their model with the one this process trains alone from the
same data and arguments. The workers are killed if they do not finish in
time.
"""
import json
import os
import pickle
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from orangecontrib.deepimage import (
    ImageClassifierLearner, SegmentationLearner, device)
from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.training import StreamingDataset

from imagedata import digits_table
from multiworker_job import score_segmentation
from test_segmentation import pairs_table
from test_training import write_images

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "multiworker_job.py")
#: Seconds the workers may take for all their jobs, start-up included.
TIMEOUT = 240

# A linear head without dropout: a step of two workers (each with half of
# the batch) computes the gradient of one process' step, so the two should
# train alike. (Batch normalisation would normalise each half on its own.)
CLASSIFIER = dict(epochs=12, batch_size=32, hidden_units=0, dropout=0,
                  learning_rate=1e-2, random_state=0)
UNET = dict(depth=2, base_filters=8, tile_size=32, epochs=8, batch_size=8,
            validation=0.25, tiles_per_image=4, learning_rate=3e-3)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_workers(folder, kinds, n=2):
    """Run `n` workers of multiworker_job.py on `kinds`; return their exit
    codes (None for one killed: it ran out of time, or another failed) and
    logs."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(n)]
    path = os.pathsep.join(
        [os.path.dirname(HERE), HERE] + [p for p in os.environ.get(
            "PYTHONPATH", "").split(os.pathsep) if p])
    processes, logs, killed = [], [], set()
    try:
        for index in range(n):
            env = dict(os.environ, PYTHONPATH=path, CUDA_VISIBLE_DEVICES="",
                       TF_CONFIG=json.dumps({
                           "cluster": {"worker": workers},
                           "task": {"type": "worker", "index": index}}))
            logs.append(open(os.path.join(folder, f"log-{index}.txt"), "wb"))
            processes.append(subprocess.Popen(
                [sys.executable, JOB, str(folder), *kinds], env=env,
                stdout=logs[-1], stderr=subprocess.STDOUT))
        # A worker that fails leaves the others waiting for it: stop them.
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in processes) \
                and not any(p.poll() for p in processes) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
                killed.add(process)
        for log in logs:
            log.close()
    texts = []
    for index in range(n):
        with open(os.path.join(folder, f"log-{index}.txt"),
                  errors="replace") as log:
            texts.append(log.read())
    return [None if process in killed else process.returncode
            for process in processes], texts


def save_job(folder, train, test, arguments):
    os.makedirs(folder)
    for name, table in (("train", train), ("test", test)):
        with open(os.path.join(folder, f"{name}.pkl"), "wb") as file:
            pickle.dump(table, file)
    with open(os.path.join(folder, "learner.json"), "w") as file:
        json.dump(arguments, file)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """The data of each job, and the workers' results."""
    folder = tmp_path_factory.mktemp("multiworker")
    digits = digits_table(tmp_path_factory.mktemp("digits"), n=500)
    order = np.random.default_rng(0).permutation(len(digits))
    classifier = (digits[np.sort(order[:300])], digits[np.sort(order[300:])])
    cells = pairs_table(tmp_path_factory.mktemp("cells"), n=16)
    unet = (cells[:12], cells[12:])
    save_job(folder / "classifier", *classifier, CLASSIFIER)
    save_job(folder / "segmentation", *unet, UNET)
    # Embed once here, so that the workers find the embeddings in the cache.
    ImageClassifierLearner(epochs=1)(classifier[0])
    codes, logs = run_workers(folder, ["classifier", "segmentation"])
    assert codes == [0, 0], "\n\n".join(log[-4000:] for log in logs)
    results = {}
    for kind in ("classifier", "segmentation"):
        results[kind] = []
        for index in range(2):
            with open(folder / kind / f"result-{index}.json") as file:
                results[kind].append(json.load(file))
    return {"folder": folder, "classifier": classifier, "segmentation": unet,
            "results": results}


def chief_model(jobs, kind):
    with open(jobs["folder"] / kind / "model.pkl", "rb") as file:
        return pickle.load(file)


def test_two_workers_train_the_classifier_as_one_process(jobs):
    train, test = jobs["classifier"]
    results = jobs["results"]["classifier"]
    alone = ImageClassifierLearner(**CLASSIFIER)(train)
    accuracy_alone = float((alone(test) == test.Y).mean())

    print(f"accuracy alone {accuracy_alone:.3f}, two workers "
          f"{[r['accuracy'] for r in results]}")
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["chief"] for r in results] == [True, False]
    # Every worker ends with the same network...
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert results[0]["history"] == results[1]["history"]
    # ... trained as the one trained alone, and as accurate.
    assert accuracy_alone > 0.8
    assert abs(results[0]["accuracy"] - accuracy_alone) <= 0.02
    assert set(results[0]["history"]) == set(alone.history)
    # The first epoch sees the same batches in the same order (later ones
    # are shuffled in other orders), so its loss is the same.
    assert results[0]["history"]["loss"][0] \
        == pytest.approx(alone.history["loss"][0], rel=1e-3)
    # The chief alone saved the model, which predicts as measured there.
    assert not os.path.exists(jobs["folder"] / "model-1.pkl")
    model = chief_model(jobs, "classifier")
    assert float((model(test) == test.Y).mean()) == results[0]["accuracy"]


def test_two_workers_train_a_unet_as_one_process(jobs):
    train, test = jobs["segmentation"]
    results = jobs["results"]["segmentation"]
    alone = score_segmentation(SegmentationLearner(**UNET)(train), test)

    print(f"mean IoU alone {alone:.3f}, two workers "
          f"{[r['iou'] for r in results]}")
    assert results[0]["iou"] == results[1]["iou"]
    assert alone > 0.8
    assert abs(results[0]["iou"] - alone) <= 0.05
    assert score_segmentation(chief_model(jobs, "segmentation"), test) \
        == results[0]["iou"]


def test_strategy_argument_and_tf_config_errors(monkeypatch, tmp_path):
    import tensorflow as tf
    default = tf.distribute.get_strategy()
    assert device.training_strategy(None) is device.distribution_strategy()
    assert device.training_strategy(default) is default
    assert not device.is_multi_worker(default)
    assert device.is_chief() and device.is_chief(default)
    with pytest.raises(InvalidInput, match="Received: strategy='mirrored'"):
        device.training_strategy("mirrored")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(InvalidInput, match="needs TF_CONFIG"):
        device.training_strategy("multi-worker")
    # no list of workers: refused before TensorFlow is asked
    monkeypatch.setenv("TF_CONFIG", '{"task": {"index": 0}}')
    with pytest.raises(InvalidInput, match="cluster.worker"):
        device.training_strategy("multi-worker")
    # TensorFlow runs in this process already: too late for collectives
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
        "task": {"type": "worker", "index": 0}}))
    with pytest.raises(InvalidInput, match="before anything else uses"):
        ImageClassifierLearner(strategy="multi-worker")(
            digits_table(tmp_path, n=20))


def test_shards_of_a_stream_are_the_epoch_each_image_once(tmp_path):
    paths = write_images(tmp_path, 7)  # 7 images: shares of 4 and 3

    def labels(index, epoch):
        stream = StreamingDataset(paths, labels=range(7), size=(6, 4),
                                  shuffle=True, seed=3)
        stream.epoch = epoch
        stream.shard(index, 2)
        return [int(label) for _, label in stream]

    for epoch in (0, 1):
        first, second = labels(0, epoch), labels(1, epoch)
        assert (len(first), len(second)) == (4, 3)
        assert sorted(first + second) == list(range(7))
    assert labels(0, 0) != labels(0, 1)  # a new share each epoch
    with pytest.raises(ValueError, match="index=2, count=2"):
        StreamingDataset(paths).shard(2, 2)
