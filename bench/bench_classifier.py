"""5-fold cross-validation of the image classifier: fast path vs plain Keras.

On the same 200 labelled images (sklearn's digits as 32×32 PNGs), in one
run:

* ``fast_path``: Orange's ``CrossValidation`` with ``ImageClassifierLearner()``
  defaults, the embedding cache empty at the start (so it includes
  embedding every image once);
* ``plain_keras``: what a script without the cache does — for each fold,
  SqueezeNet (frozen) + the same head trained with ``model.fit`` on images
  streamed through ``tf.data``, for the same number of epochs as the fast
  path's early-stopped folds used on average.

Usage: python bench/bench_classifier.py [--images 200] [--out bench/results]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

from results_io import write_results  # bench/ is on sys.path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def fast_path(table, cache_dir):
    from Orange.evaluation import CA, CrossValidation
    from orangecontrib.deepimage import ImageClassifierLearner
    from orangecontrib.deepimage import embedding
    os.environ["DEEPIMAGE_CACHE_DIR"] = cache_dir
    embedding._shared_embedders.clear()  # pylint: disable=protected-access
    learner = ImageClassifierLearner()
    start = time.perf_counter()
    results = CrossValidation(k=5, random_state=0, store_models=True)(
        table, [learner])
    seconds = time.perf_counter() - start
    epochs = [len(model.history["loss"]) for model in results.models[:, 0]]
    return seconds, float(CA(results)[0]), epochs


def plain_keras(table, epochs):
    import keras
    from sklearn.model_selection import StratifiedKFold
    from orangecontrib.deepimage.backbones import get_backbone
    from orangecontrib.deepimage.classification import (
        assemble_network, build_head)
    from orangecontrib.deepimage.images import find_image_column, image_paths
    from orangecontrib.deepimage.training import StreamingDataset
    backbone = get_backbone("squeezenet")
    size = backbone.input_size[::-1]
    paths = np.array(image_paths(table, find_image_column(table)))
    y = table.Y.astype(int)
    correct = 0
    start = time.perf_counter()
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0) \
            .split(paths, y):
        network, _ = assemble_network(
            backbone, backbone.build(),
            build_head(512, 10, seed=0))
        network.compile(optimizer=keras.optimizers.Adam(1e-3),
                        loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"])
        network.fit(StreamingDataset(
            list(paths[train]), labels=y[train], size=size, batch_size=32,
            shuffle=True, seed=0).tf_dataset(), epochs=epochs, verbose=0)
        # (every digit image is readable: no row is left out)
        probs = network.predict(StreamingDataset(
            list(paths[test]), labels=y[test], size=size,
            batch_size=32).tf_dataset(), verbose=0)
        correct += int((probs.argmax(axis=1) == y[test]).sum())
    return time.perf_counter() - start, correct / len(y)


def main():
    from imagedata import digits_table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--out", default=os.path.join("bench", "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = digits_table(tmp, n=args.images)
        fast_seconds, fast_ca, epochs = fast_path(
            table, os.path.join(tmp, "cache"))
        mean_epochs = int(round(np.mean(epochs)))
        keras_seconds, keras_ca = plain_keras(table, mean_epochs)
    results = {
        "images": args.images, "folds": 5,
        "fast_path_seconds": round(fast_seconds, 1),
        "fast_path_accuracy": round(fast_ca, 3),
        "fast_path_epochs_per_fold": epochs,
        "plain_keras_epochs": mean_epochs,
        "plain_keras_seconds": round(keras_seconds, 1),
        "plain_keras_accuracy": round(keras_ca, 3),
        "speedup": round(keras_seconds / fast_seconds, 1),
    }
    write_results(results, args.out, "classifier")


if __name__ == "__main__":
    main()
