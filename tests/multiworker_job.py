"""One worker of a training across processes, for test_multiworker.py.

    python multiworker_job.py JOB_FOLDER KIND...

TF_CONFIG names the workers and this one. For each KIND (``classifier``,
``segmentation``), JOB_FOLDER/KIND holds ``train.pkl`` and ``test.pkl``
(Orange tables) and ``learner.json`` (the learner's arguments); the worker
trains with ``strategy="multi-worker"`` and writes what it measured to
``result-<task index>.json`` there; the chief alone saves the model
(``model.pkl``).
"""
import json
import os
import pickle
import sys
import time

STARTED = time.perf_counter()


def train(kind, folder, task):
    from orangecontrib.deepimage import (
        ImageClassifierLearner, SegmentationLearner)
    from orangecontrib.deepimage.device import is_chief, training_strategy
    with open(os.path.join(folder, "train.pkl"), "rb") as file:
        data = pickle.load(file)
    with open(os.path.join(folder, "test.pkl"), "rb") as file:
        test = pickle.load(file)
    with open(os.path.join(folder, "learner.json")) as file:
        arguments = json.load(file)
    learner = ImageClassifierLearner if kind == "classifier" \
        else SegmentationLearner
    start = time.perf_counter()
    model = learner(strategy="multi-worker", **arguments)(data)
    result = {"task": task, "seconds": time.perf_counter() - start,
              "replicas": training_strategy(
                  "multi-worker").num_replicas_in_sync,
              "chief": is_chief(training_strategy("multi-worker")),
              "history": {key: [float(v) for v in values]
                          for key, values in model.history.items()}}
    if kind == "classifier":
        result["accuracy"] = float((model(test) == test.Y).mean())
    else:
        result["iou"] = score_segmentation(model, test)
    if result["chief"]:
        with open(os.path.join(folder, "model.pkl"), "wb") as file:
            pickle.dump(model, file)
    with open(os.path.join(folder, f"result-{task}.json"), "w") as file:
        json.dump(result, file)


def score_segmentation(model, table):
    """The mean foreground IoU of `model` on the pairs of `table`."""
    from orangecontrib.deepimage.images import image_paths
    from orangecontrib.deepimage.segdata import mask_info
    pairs = list(zip(image_paths(table, table.domain["image"]),
                     image_paths(table, table.domain["mask"])))
    return model.evaluate(pairs, mask_info(table.domain["mask"]))["mean_iou"]


def main(folder, *kinds):
    # Before anything else uses TensorFlow.
    from orangecontrib.deepimage.device import multi_worker_strategy
    multi_worker_strategy()
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    with open(os.path.join(folder, f"started-{task}.json"), "w") as file:
        json.dump({"seconds": time.perf_counter() - STARTED}, file)
    for kind in kinds:
        train(kind, os.path.join(folder, kind), task)


if __name__ == "__main__":
    main(*sys.argv[1:])
