"""``deepimage embed`` over many generated JPEGs: rate and peak memory.

* ``embedder``: the in-process ``ImageEmbedder("squeezenet")`` over all
  images at once (cache off);
* ``batch``: ``deepimage embed FOLDER --out DIR --no-cache`` over the same
  images (listing, shards, hashes, Parquet, the merged file);
* ``batch_quarter``: the same command over a quarter of the images, to show
  that peak memory does not grow with the number of images.

Each run is a fresh process whose network is built before the clock starts
(building it takes a few seconds, once per process); peak memory is the
process' maximum resident size.

Usage: python bench/bench_batch.py [--images 20000] [--out bench/results]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from results_io import write_results  # bench/ is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_jpegs(folder, count, size=96, seed=0):
    """`count` small JPEGs of smooth random colour fields, 1000 a folder."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (count // 50 + 1, 6, 6, 3), dtype=np.uint8)
    for i in range(count):
        sub = os.path.join(folder, f"part{i // 1000:03d}")
        os.makedirs(sub, exist_ok=True)
        small = np.roll(base[i // 50], i % 6, axis=1)
        noise = rng.integers(0, 40, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small + noise).resize(
            (size, size), Image.Resampling.BICUBIC).save(
            os.path.join(sub, f"img{i:06d}.jpg"), quality=85)


def child_embedder(folder):
    """In a fresh process: ImageEmbedder over every image of `folder`."""
    from orangecontrib.deepimage.batch import list_images
    from orangecontrib.deepimage.embedding import ImageEmbedder
    paths = list_images(folder).paths
    embedder = ImageEmbedder("squeezenet", use_cache=False)
    embedder.load_network()
    start = time.perf_counter()
    result = embedder.embed_paths(paths)
    seconds = time.perf_counter() - start
    assert not result.skipped
    return len(paths), seconds


def child_batch(folder, out):
    """In a fresh process: the command line's job."""
    from orangecontrib.deepimage.__main__ import main
    from orangecontrib.deepimage.batch import _worker_for, embed_job
    # As in child_embedder, the network is built before the clock starts
    # (the command's job finds it built: the same job description).
    _worker_for(embed_job(use_cache=False))
    start = time.perf_counter()
    code = main(["embed", folder, "--out", out, "--no-cache", "--quiet"])
    seconds = time.perf_counter() - start
    assert code == 0
    import pyarrow.parquet as pq
    n = pq.read_metadata(os.path.join(out, "embeddings.parquet")).num_rows
    return n, seconds


def run_child(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep
               + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *args],
        env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench",
                                                      "results"))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        n, seconds = child_embedder(*rest) if kind == "embedder" \
            else child_batch(*rest)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"images": n, "seconds": round(seconds, 1),
                          "images_per_s": round(n / seconds, 1),
                          "peak_mb": round(peak)}))
        return 0

    work = tempfile.mkdtemp(prefix="deepimage-bench-batch-")
    try:
        full = os.path.join(work, "all")
        quarter = os.path.join(work, "quarter")
        start = time.perf_counter()
        make_jpegs(full, args.images)
        make_jpegs(quarter, args.images // 4)
        generated = time.perf_counter() - start
        results = {
            "images": args.images,
            "image_size": "96x96 JPEG",
            "seconds_to_generate": round(generated, 1),
            "embedder": run_child("embedder", full),
            "batch_quarter": run_child("batch", quarter,
                                       os.path.join(work, "out-quarter")),
            "batch": run_child("batch", full, os.path.join(work, "out")),
        }
        results["batch_rate_vs_embedder"] = round(
            results["batch"]["images_per_s"]
            / results["embedder"]["images_per_s"], 3)
        results["peak_memory_ratio_full_vs_quarter"] = round(
            results["batch"]["peak_mb"]
            / results["batch_quarter"]["peak_mb"], 3)
        name = "batch" if args.images == 20000 else f"batch-{args.images}"
        write_results(results, args.out, name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
