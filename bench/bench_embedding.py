"""Embedding speed and memory, measured side by side in one run.

Rates (images per second) on the same real JPEG photos (640×480):

* ``imageanalytics``: orange3-imageanalytics' local SqueezeNet (ndf, numpy,
  one image at a time), its cache cleared first;
* ``ours``: ImageEmbedder("squeezenet") end to end from the files, cache off;
* ``ceiling``: our compiled network on already decoded, resized tensors;
* ``decode``: reading, decoding and resizing only (no network).

Memory: peak resident memory of embedding N and 10·N images, each in a fresh
process, to show that it does not grow with the number of images.

Usage: python bench/bench_embedding.py [--images 200] [--out bench/results]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from PIL import Image
from Orange.misc.utils.embedder_utils import EmbedderCache

from results_io import write_results  # bench/ is on sys.path


def make_photos(folder, count, seed=0):
    """Write `count` 640×480 JPEG photos: random crops of real photos."""
    from skimage import data
    sources = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        image = Image.fromarray(sources[i % len(sources)])
        width, height = image.size
        scale = rng.uniform(0.6, 1.0)
        crop_w, crop_h = int(width * scale), int(height * scale)
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        photo = image.crop((left, top, left + crop_w, top + crop_h)) \
            .resize((640, 480), Image.Resampling.BICUBIC)
        path = os.path.join(folder, f"photo{i:05d}.jpg")
        photo.save(path, quality=90)
        paths.append(path)
    return paths


def rate(count, seconds):
    return round(count / seconds, 1)


def bench_imageanalytics(paths):
    from orangecontrib.imageanalytics.image_embedder import ImageEmbedder
    embedder = ImageEmbedder(model="squeezenet")
    # Each call builds its local embedder with an in-memory cache of
    # Orange's cache file; an empty one makes every image really computed.
    # Keep the user's cache file untouched as well.
    original = EmbedderCache._init_cache, EmbedderCache.persist_cache
    EmbedderCache._init_cache = lambda self: {}
    EmbedderCache.persist_cache = lambda self: None
    try:
        start = time.perf_counter()
        vectors = embedder(paths)
    finally:
        EmbedderCache._init_cache, EmbedderCache.persist_cache = original
    seconds = time.perf_counter() - start
    assert all(v is not None for v in vectors)
    return rate(len(paths), seconds)


def bench_ours(paths, cache_dir):
    from orangecontrib.deepimage import ImageEmbedder
    embedder = ImageEmbedder("squeezenet", use_cache=False,
                             cache_dir=cache_dir)
    embedder(paths[:40])  # builds and traces the network
    start = time.perf_counter()
    vectors = embedder(paths)
    seconds = time.perf_counter() - start
    assert all(v is not None for v in vectors)
    return rate(len(paths), seconds), embedder


def bench_ceiling(embedder, paths, count, batch_size=32):
    """The network alone, on one batch of decoded images fed repeatedly."""
    from orangecontrib.deepimage.images import load_image_array
    pixels = np.stack([load_image_array(p, (227, 227))
                       for p in paths[:batch_size]])
    embedder._run_network(pixels)  # warm-up  # pylint: disable=protected-access
    steps = max(1, count // batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        embedder._run_network(pixels)  # pylint: disable=protected-access
    return rate(steps * batch_size, time.perf_counter() - start)


def bench_decode(paths, batch_size=32, workers=2):
    from orangecontrib.deepimage.images import iter_image_batches
    start = time.perf_counter()
    n = sum(len(batch.indices) for batch, _ in
            iter_image_batches(paths, (227, 227), batch_size, workers))
    return rate(n, time.perf_counter() - start)


def peak_memory_mb(folder, count, cache_dir):
    """Peak RSS (MB) of a fresh process embedding `count` photos."""
    code = (
        "import glob, resource, sys\n"
        "from orangecontrib.deepimage import ImageEmbedder\n"
        f"paths = sorted(glob.glob({folder!r} + '/*.jpg'))[:{count}]\n"
        f"e = ImageEmbedder('squeezenet', use_cache=False, "
        f"cache_dir={cache_dir!r})\n"
        "v = e(paths)\n"
        "assert sum(x is not None for x in v) == len(paths)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    return round(int(out.strip().splitlines()[-1]) / 1024, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--imageanalytics-images", type=int, default=100)
    parser.add_argument("--memory-images", type=int, default=200)
    parser.add_argument("--out", default=os.path.join("bench", "results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        photos = os.path.join(tmp, "photos")
        os.makedirs(photos)
        n_memory = args.memory_images * 10
        paths = make_photos(photos, max(args.images, n_memory))
        cache_dir = os.path.join(tmp, "cache")
        bench_paths = paths[:args.images]

        results = {"images": args.images, "photo_size": "640x480 JPEG"}
        results["decode_resize"] = bench_decode(bench_paths)
        ours, embedder = bench_ours(bench_paths, cache_dir)
        results["ours_end_to_end"] = ours
        results["compute_ceiling"] = bench_ceiling(embedder, bench_paths,
                                                  args.images)
        results["imageanalytics"] = bench_imageanalytics(
            paths[:args.imageanalytics_images])
        results["imageanalytics_images"] = args.imageanalytics_images
        results["speedup_vs_imageanalytics"] = round(
            ours / results["imageanalytics"], 1)
        results["fraction_of_ceiling"] = round(
            ours / results["compute_ceiling"], 2)
        results[f"peak_rss_mb_{args.memory_images}"] = peak_memory_mb(
            photos, args.memory_images, cache_dir)
        results[f"peak_rss_mb_{n_memory}"] = peak_memory_mb(
            photos, n_memory, cache_dir)
    write_results(results, args.out, "embedding")

if __name__ == "__main__":
    main()
