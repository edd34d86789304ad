"""A short check of the device TensorFlow computes on, and how fast.

Reported, in a few minutes on a CPU or a GPU:

* ``device``: TensorFlow's version, its GPUs with their compute capability,
  and what the widgets' Device box says;
* ``embedding``: SqueezeNet images/s end to end from generated JPEG photos
  (640×480, cache off, after a warm-up);
* ``classifier``: one fine-tuning epoch of ``ImageClassifierLearner`` (top
  backbone layers unfrozen, images streamed from disk);
* ``unet``: one epoch of ``SegmentationLearner``'s U-Net on the nuclei
  tutorial's tiles;
* ``gpu_vs_cpu``: the largest difference between the embeddings of the same
  images computed on ``/GPU:0`` (in each precision) and on ``/CPU:0`` (in
  float32, as a machine without a GPU computes them).

Each speed is measured with and without mixed precision where it applies: on
a GPU of compute capability 7.0 or newer (tensor cores). Elsewhere the
mixed-precision rows say "not applicable" and why. The dtypes each network
really computed in are read back from it and reported beside its figures; a
row whose network did not compute in the requested precision is reported as
not measured, never under the wrong label. The learners' first epoch also
traces and compiles, so each row gives the first and the second epoch.

Each learner runs in its own process, so that one's shared networks, memory
and threads do not distort another's timings. ``--quick`` uses a handful
of tiny inputs: it checks that the script works, and measures nothing.

Usage: python bench/gpu_check.py [--images 256] [--quick] [--out bench/results]
"""
import argparse
import contextlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from unittest import mock

import numpy as np

from results_io import write_results  # bench/ is on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

MIXED, FLOAT32 = "mixed_float16", "float32"
PHOTO_CLASSES = ("chelsea", "coffee", "astronaut", "rocket")

#: Sizes of a full check and of a quick one (a check that the script works,
#: with a handful of tiny inputs and a small U-Net; its figures mean nothing).
SIZES = {
    "full": dict(images=256, embed_batch=32, epochs=2, batch_size=32,
                 unfreeze=4, tile=128, tiles_per_image=8, unet_batch=8,
                 unet_images=16, depth=4, base_filters=16),
    "quick": dict(images=8, embed_batch=4, epochs=2, batch_size=4,
                  unfreeze=2, tile=32, tiles_per_image=1, unet_batch=2,
                  unet_images=4, depth=2, base_filters=4),
}


# --- the device --------------------------------------------------------------

def describe_device() -> dict:
    """TensorFlow's version and GPUs, and what the widgets show."""
    import tensorflow as tf
    from orangecontrib.deepimage.device import device_description
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        gpus.append({"name": details.get("device_name", gpu.name),
                     "compute_capability": list(capability)
                     if capability else None})
    return {"tensorflow": tf.__version__,
            "built_with_cuda": tf.test.is_built_with_cuda(),
            "gpus": gpus,
            "device_box": device_description()}


def mixed_precision_applies(device: dict):
    """(True, "") or (False, why not) for mixed precision on this device."""
    if not device["gpus"]:
        return False, "no GPU: mixed precision applies on GPUs only"
    capability = device["gpus"][0]["compute_capability"]
    if capability is None or tuple(capability) < (7, 0):
        return False, (f"the GPU's compute capability is {capability}; "
                       f"mixed precision needs 7.0 or newer")
    return True, ""


# --- choosing and checking the precision ----------------------------------------

def precision_arguments(cls, policy: str) -> dict:
    """Keyword arguments asking `cls` for `policy`, if it takes one."""
    if "mixed_precision" in inspect.signature(cls).parameters:
        return {"mixed_precision": policy == MIXED}
    return {}


@contextlib.contextmanager
def precision(cls, policy: str):
    """Build `cls`'s networks under `policy`; yields its keyword arguments.

    A learner (or the embedder) that takes ``mixed_precision`` is asked
    through it. Otherwise the add-on chooses by itself with
    ``device.preferred_dtype_policy()``; that choice is replaced, in each of
    the add-on's modules that makes it, for the duration. Either way
    :func:`compute_dtypes` of the built network says what it really does.
    """
    kwargs = precision_arguments(cls, policy)
    if kwargs:
        yield kwargs
        return
    with contextlib.ExitStack() as stack:
        for name, module in list(sys.modules.items()):
            if name.startswith("orangecontrib.deepimage") and \
                    callable(getattr(module, "preferred_dtype_policy", None)):
                stack.enter_context(mock.patch.object(
                    module, "preferred_dtype_policy", lambda: policy))
        yield kwargs


def compute_dtypes(network) -> list:
    """The compute dtypes of the layers with weights in `network` (nested
    models included), most used first."""
    counts = {}

    def visit(layer):
        for inner in getattr(layer, "layers", ()):
            visit(inner)
        if not getattr(layer, "layers", None) and layer.weights:
            dtype = str(layer.compute_dtype)
            counts[dtype] = counts.get(dtype, 0) + 1
    visit(network)
    return sorted(counts, key=counts.get, reverse=True)


def policy_problem(policy: str, dtypes: list) -> str:
    """Why a network computing in `dtypes` does not run `policy` ("" if it
    does)."""
    if policy == MIXED and "float16" not in dtypes:
        return f"asked for mixed precision, but the network computes in " \
               f"{dtypes}"
    if policy == FLOAT32 and dtypes != ["float32"]:
        return f"asked for float32, but the network computes in {dtypes}"
    return ""


# --- the jobs ----------------------------------------------------------------

def time_call(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def embed(paths, policy, batch_size, device):
    """Embed `paths` under `policy` on `device` ("/CPU:0", "/GPU:0");
    return the vectors, the images/s after a warm-up, the dtypes."""
    import tensorflow as tf
    from orangecontrib.deepimage import ImageEmbedder
    # The network's weights and its traced function are placed on `device`.
    with tf.device(device), precision(ImageEmbedder, policy) as kwargs:
        embedder = ImageEmbedder("squeezenet", batch_size=batch_size,
                                 use_cache=False, **kwargs)
        embedder(paths[:batch_size])  # builds and traces the network
        vectors, seconds = time_call(embedder, paths)
    if any(v is None for v in vectors):
        raise RuntimeError("an image of the check could not be embedded")
    return (np.vstack(vectors), round(len(paths) / seconds, 1),
            compute_dtypes(embedder.backbone_network))


def embedding_job(spec):
    """Images/s for each precision, and the GPU's embeddings against the
    CPU's."""
    paths, batch = spec["paths"], spec["sizes"]["embed_batch"]
    device = "/GPU:0" if spec["has_gpu"] else "/CPU:0"
    rates, gpu_vectors = {}, {}
    for policy in spec["policies"]:
        vectors, rate, dtypes = embed(paths, policy, batch, device)
        problem = policy_problem(policy, dtypes)
        rates[policy] = {"device": device,
                         "images_per_s": None if problem else rate,
                         "compute_dtypes": dtypes}
        if problem:
            rates[policy]["not_measured"] = problem
        else:
            gpu_vectors[policy] = vectors
    comparison = "no GPU to compare with: all of this ran on the CPU"
    if spec["has_gpu"]:
        reference, cpu_rate, cpu_dtypes = embed(paths, FLOAT32, batch,
                                                "/CPU:0")
        comparison = {"cpu": {"device": "/CPU:0", "policy": FLOAT32,
                              "compute_dtypes": cpu_dtypes,
                              "images_per_s": cpu_rate}}
        scale = float(np.abs(reference).max())
        for policy, vectors in gpu_vectors.items():
            difference = float(np.abs(vectors - reference).max())
            comparison[f"gpu_{policy}"] = {
                "device": "/GPU:0",
                "max_abs_difference": difference,
                "max_difference_relative_to_largest_value":
                    difference / scale if scale else None}
    return {"embedding": {"images": len(paths), "photo_size": "640x480 JPEG",
                          "by_policy": rates},
            "gpu_vs_cpu": comparison}


class EpochClock:
    """Training hooks that note when training starts and each epoch ends."""

    def __init__(self):
        self.times = []

    def hooks(self):
        from orangecontrib.deepimage.training import TrainingHooks
        return TrainingHooks(
            on_epoch_end=lambda epoch, logs: self.times.append(
                time.perf_counter()))

    def timed(self, learner, data):
        """Train `learner` on `data`; return the model and the seconds."""
        self.times = [time.perf_counter()]
        model = learner(data)
        return model, time.perf_counter() - self.times[0]

    def epoch_seconds(self, first, last):
        """Seconds of the epochs numbered first..last (0-based, in the
        order they ended; the first epoch counts from the start)."""
        return [round(self.times[i + 1] - self.times[i], 2)
                for i in range(first, last + 1)]


def learner_figures(model, clock, epochs, first_epoch, n_items, unit,
                    policy, seconds):
    dtypes = compute_dtypes(model.network)
    figures = {"compute_dtypes": dtypes, "total_seconds": round(seconds, 1)}
    problem = policy_problem(policy, dtypes)
    if problem:
        figures["not_measured"] = problem
        return figures
    times = clock.epoch_seconds(first_epoch, first_epoch + epochs - 1)
    # The first also builds, traces and compiles the training step.
    figures["first_epoch_seconds"] = times[0]
    figures["epoch_seconds"] = times[-1]
    figures[f"{unit}_per_s"] = round(n_items / times[-1], 1)
    return figures


def classifier_job(spec):
    """One fine-tuning epoch of ImageClassifierLearner under spec's policy."""
    from imagedata import image_table
    from orangecontrib.deepimage import ImageClassifierLearner
    sizes, policy = spec["sizes"], spec["policy"]
    names = [os.path.basename(p) for p in spec["paths"]]
    labels = [i % len(PHOTO_CLASSES) for i in range(len(names))]
    table = image_table(os.path.dirname(spec["paths"][0]), names, labels,
                        PHOTO_CLASSES, "photo")
    clock = EpochClock()
    epochs = sizes["epochs"]
    with precision(ImageClassifierLearner, policy) as kwargs:
        learner = ImageClassifierLearner(
            unfreeze=sizes["unfreeze"], epochs=epochs,
            batch_size=sizes["batch_size"], validation=0,
            early_stopping=False, hooks=clock.hooks(), **kwargs)
        model, seconds = clock.timed(learner, table)
    # The head trains `epochs` epochs on cached embeddings first; the
    # fine-tuning epochs follow.
    figures = learner_figures(model, clock, epochs, epochs, len(table),
                              "images", policy, seconds)
    return {"images": len(table), "unfrozen_layers": sizes["unfreeze"],
            "batch_size": sizes["batch_size"], **figures}


def unet_job(spec):
    """One epoch of SegmentationLearner's U-Net under spec's policy."""
    from orangecontrib.deepimage import SegmentationLearner
    from orangecontrib.deepimage.demo import TUTORIALS_DIR
    from orangecontrib.deepimage.segdata import pair_folders
    sizes, policy = spec["sizes"], spec["policy"]
    folder = os.path.join(TUTORIALS_DIR, "nuclei")
    table, _ = pair_folders(os.path.join(folder, "images"),
                            os.path.join(folder, "masks"))
    table = table[:sizes["unet_images"]]
    clock = EpochClock()
    epochs = sizes["epochs"]
    with precision(SegmentationLearner, policy) as kwargs:
        learner = SegmentationLearner(
            epochs=epochs, batch_size=sizes["unet_batch"],
            tile_size=sizes["tile"], tiles_per_image=sizes["tiles_per_image"],
            depth=sizes["depth"], base_filters=sizes["base_filters"],
            validation=0, early_stopping=False, hooks=clock.hooks(),
            **kwargs)
        model, seconds = clock.timed(learner, table)
    n_tiles = len(table) * sizes["tiles_per_image"]
    figures = learner_figures(model, clock, epochs, 0, n_tiles, "tiles",
                              policy, seconds)
    return {"tiles_per_epoch": n_tiles,
            "tile": f"{sizes['tile']}x{sizes['tile']}",
            "depth": sizes["depth"], "base_filters": sizes["base_filters"],
            "batch_size": sizes["unet_batch"], **figures}


JOBS = {"embedding": embedding_job, "classifier": classifier_job,
        "unet": unet_job}


def run_job(name, spec, folder):
    """Run job `name` in a fresh process; return what it reports."""
    # The learners' embedding cache goes into `folder`, not the user's.
    env = {"DEEPIMAGE_CACHE_DIR": os.path.join(folder, "cache")}
    label = f"{name}-{spec.get('policy', 'all')}"
    print(f"== {label}", file=sys.stderr, flush=True)
    path = os.path.join(folder, f"{label}.json")
    with open(path, "w") as file:
        json.dump(spec, file)
    done = subprocess.run([sys.executable, os.path.abspath(__file__),
                           "--job", name, path], env={**os.environ, **env},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode:
        # One failing job (say, out of GPU memory) must not cost the others.
        print(done.stderr, file=sys.stderr)
        lines = done.stderr.strip().splitlines() or ["(no message)"]
        return {"failed": f"exit status {done.returncode}: {lines[-1]}"}
    with open(path + ".out") as file:
        return json.load(file)


def by_policy(job, spec, policies, folder, why_not):
    """Run `job` for each policy; a row for mixed precision either way."""
    rows = {policy: run_job(job, {**spec, "policy": policy}, folder)
            for policy in policies}
    if MIXED not in rows:
        rows[MIXED] = {"not_applicable": why_not}
    return rows


def main(argv=None):
    from bench_embedding import make_photos
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int,
                        help="generated photos to embed and fine-tune on "
                             "(default: 256, or 8 when quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a handful of tiny inputs: checks that the "
                             "script works, measures nothing")
    parser.add_argument("--out", default=os.path.join("bench", "results"))
    parser.add_argument("--job", nargs=2, metavar=("NAME", "SPEC"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        name, path = args.job
        with open(path) as file:
            result = JOBS[name](json.load(file))
        with open(path + ".out", "w") as file:
            json.dump(result, file)
        return 0

    start = time.perf_counter()
    device = describe_device()
    applies, why_not = mixed_precision_applies(device)
    policies = [FLOAT32, MIXED] if applies else [FLOAT32]
    sizes = SIZES["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory() as tmp:
        photos = os.path.join(tmp, "photos")
        os.makedirs(photos)
        paths = make_photos(photos, args.images or sizes["images"])
        spec = {"paths": paths, "sizes": sizes, "policies": policies,
                "has_gpu": bool(device["gpus"])}
        results = {"device": device, "quick": args.quick,
                   "mixed_precision": "applies" if applies else
                   f"not applicable: {why_not}"}
        embedding = run_job("embedding", spec, tmp)
        if "failed" in embedding:
            embedding = {"embedding": embedding, "gpu_vs_cpu": embedding}
        results.update(embedding)
        results["classifier"] = by_policy("classifier", spec, policies, tmp,
                                          why_not)
        results["unet"] = by_policy("unet", spec, policies, tmp, why_not)
    results["check_seconds"] = round(time.perf_counter() - start, 1)
    write_results(results, args.out,
                  "gpu_check-quick" if args.quick else "gpu_check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
