"""Run every benchmark in turn (``make bench``); figures go to bench/results.

Each benchmark runs in its own process so that one's memory and threads do
not distort another's timings.
"""
import os
import subprocess
import sys

BENCHMARKS = ("bench_embedding.py", "bench_classifier.py",
              "bench_segmentation.py", "bench_edit.py", "bench_gallery.py",
              "bench_detection.py", "bench_batch.py", "bench_anomaly.py",
              "annotation.py", "bench_annotation_view.py")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, os.path.join(here, name)])
        if code:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
