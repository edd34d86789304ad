"""Image Clusters with 10,000 images: is the GUI ever blocked?

Writes 10,000 small JPEGs (96×72 crops of scikit-image photos, recoloured)
and a table of random 1000-d embeddings around a few random centres, opens
the Image Clusters widget offscreen and sends the table. A QTimer that fires
every 10 ms records how late it fires: the longest gap is the longest time
the event loop (the canvas) was blocked. Measured, from sending the data:

* ``clusters_shown_s``: clusters appear in the gallery;
* ``visible_thumbnails_s``: every thumbnail in view is painted;
* ``outputs_sent_s``: clustering, near-duplicates and names are done and
  the outputs are sent (names: SqueezeNet on the most typical images, as
  with default settings on a table that does not record its model);
* ``max_event_loop_block_ms`` (and the 99th percentile of timer gaps) over
  all of that, with ``longest_handler_ms``, the slowest call of each of the
  widget's GUI-thread handlers, and ``idle_baseline``, the same timer with
  nothing running, which shows how much a busy machine adds; then the same
  while the gallery is scrolled from top to bottom a page at a time, with
  the slowest repaint of a page and the time a screenful of thumbnails takes
  to load after a jump; and, with ``--map``, while the t-SNE map is computed.

Usage: QT_QPA_PLATFORM=offscreen python bench/bench_gallery.py
       [--images 10000] [--dim 1000] [--naming cold|warm|off] [--map]
       [--out bench/results]
Results go to gallery.json (cold naming) or gallery-warm.json, -off.json.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageEnhance

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def make_images(folder, count, seed=0, size=(96, 72)):
    """Write `count` JPEG thumbnails-to-be of varied crops and colours."""
    from skimage import data
    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(photo).resize((320, 240))
               for photo in (data.chelsea(), data.coffee(), data.rocket(),
                             data.astronaut())]
    names = []
    for i in range(count):
        image = sources[i % len(sources)]
        scale = rng.uniform(0.4, 1.0)
        w, h = int(320 * scale), int(240 * scale)
        left = int(rng.integers(0, 320 - w + 1))
        top = int(rng.integers(0, 240 - h + 1))
        crop = image.crop((left, top, left + w, top + h)).resize(size)
        crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.2, 1.8))
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.6, 1.4))
        names.append(f"image{i:05d}.jpg")
        crop.save(os.path.join(folder, names[-1]), quality=85)
    return names


def make_table(folder, names, dim, groups=8, seed=0):
    """Random non-negative embeddings around `groups` random centres."""
    from Orange.data import ContinuousVariable, Domain, StringVariable, Table
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 1.0, size=(groups, dim))
    membership = rng.integers(0, groups, len(names))
    X = np.maximum(0, centres[membership]
                   + rng.normal(0, 0.6, size=(len(names), dim)))
    attributes = [ContinuousVariable(f"n{i}") for i in range(dim)]
    for var in attributes:
        var.attributes["hidden"] = True
    column = StringVariable("image")
    column.attributes.update({"type": "image", "origin": folder})
    return Table.from_numpy(Domain(attributes, metas=[column]),
                            X.astype(np.float32),
                            metas=np.array(names, dtype=object)[:, None])


class LoopMonitor:
    """Record how late a 10 ms timer fires: the event loop's blocked time."""

    def __init__(self, interval_ms=10):
        from AnyQt.QtCore import QTimer
        self.interval = interval_ms / 1000
        self.gaps = []
        self.last = None
        self.timer = QTimer(interval=interval_ms)
        self.timer.timeout.connect(self._tick)
        self.listeners = []

    def start(self):
        self.gaps.clear()
        self.last = time.perf_counter()
        self.timer.start()

    def stop(self):
        self.timer.stop()

    def _tick(self):
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now
        for listener in self.listeners:
            listener(now)

    def summary(self):
        gaps = np.array(self.gaps) if self.gaps else np.zeros(1)
        return {"max_event_loop_block_ms":
                round(max(0.0, gaps.max() - self.interval) * 1000, 1),
                "p99_timer_gap_ms": round(float(np.percentile(gaps, 99))
                                          * 1000, 1),
                "timer_ticks": len(self.gaps)}


def wait(app, condition, timeout, raise_timeout=True):
    start = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - start > timeout:
            if not raise_timeout:
                return
            raise TimeoutError("the widget did not finish in time")


def time_handlers(widget):
    """Record how long the widget's GUI-thread handlers of the run take.

    Gaps of the event loop also count time when a busy machine did not
    schedule the process at all; these durations are the widget's own.
    """
    durations = {}
    for name in ("set_data", "on_partial_result", "on_done"):
        method = getattr(widget, name)

        def timed(*args, _method=method, _name=name, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return _method(*args, **kwargs)
            finally:
                durations.setdefault(_name, []).append(
                    (time.perf_counter() - start, time.thread_time() - cpu))
        setattr(widget, name, timed)
    return durations


def handler_summary(durations):
    """Slowest call of each handler: wall time, and the GUI thread's CPU
    time in it (the rest is waiting for the GIL or for a busy CPU)."""
    return {name: {"wall_ms": round(max(t[0] for t in times) * 1000, 1),
                   "cpu_ms": round(max(t[1] for t in times) * 1000, 1)}
            for name, times in durations.items() if times}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--map", action="store_true",
                        help="also compute the t-SNE map")
    parser.add_argument("--naming", choices=("cold", "warm", "off"),
                        default="cold",
                        help="cold: TensorFlow is imported and SqueezeNet "
                             "built during the run (a fresh canvas); warm: "
                             "they are ready, as after Deep Embedding ran in "
                             "the same canvas; off: clusters are not named")
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    from AnyQt.QtWidgets import QApplication
    app = QApplication.instance() or QApplication([])
    from orangecontrib.deepimage.widgets.owimageclusters import \
        OWImageClusters

    tempdir = tempfile.TemporaryDirectory(prefix="deepimage-gallery-bench-")
    folder = tempdir.name
    start = time.perf_counter()
    names = make_images(folder, args.images)
    table = make_table(folder, names, args.dim)
    print(f"{args.images} images written in "
          f"{time.perf_counter() - start:.1f} s")

    if args.naming == "warm":
        from orangecontrib.deepimage.widgets.owdeepembedding import \
            shared_embedder
        from orangecontrib.deepimage.widgets.owimageclusters import \
            NAMING_MODEL
        embedder = shared_embedder(NAMING_MODEL, None, "penultimate", None)
        embedder.embed_paths([os.path.join(folder, names[0])],
                             with_probabilities=True)
    widget = OWImageClusters()
    widget.label_clusters = args.naming != "off"
    widget.resize(1200, 800)
    widget.show()
    app.processEvents()
    handlers = time_handlers(widget)

    monitor = LoopMonitor()
    # the machine's own noise: the timer's gaps with nothing to do
    monitor.start()
    wait(app, lambda: False, 3, raise_timeout=False)
    monitor.stop()
    idle = monitor.summary()
    marks = {}

    def watch(now):
        elapsed = now - sent
        if "clusters_shown_s" not in marks and widget.gallery.groups:
            marks["clusters_shown_s"] = elapsed
        if "visible_thumbnails_s" not in marks and widget.gallery.groups:
            rows = widget.gallery.visible_rows()
            if rows and all(widget.loader.is_loaded(r) for r in rows):
                marks["visible_thumbnails_s"] = elapsed
        if "outputs_sent_s" not in marks and widget.task is None \
                and widget.result is not None:
            marks["outputs_sent_s"] = elapsed

    monitor.listeners.append(watch)
    monitor.start()
    sent = time.perf_counter()
    widget.set_data(table)
    widget.handleNewSignals()
    wait(app, lambda: len(marks) == 3, timeout=1200)
    monitor.stop()
    loading = dict(marks, **monitor.summary())
    loading["longest_handler_ms"] = handler_summary(handlers)
    handlers.clear()
    loading.update(n_clusters=widget.result.n_clusters,
                   cluster_names=widget.names,
                   visible_thumbnails=len(widget.gallery.visible_rows()))
    for key in ("clusters_shown_s", "visible_thumbnails_s", "outputs_sent_s"):
        loading[key] = round(loading[key], 2)

    # scroll from top to bottom a page at a time
    bar = widget.gallery.verticalScrollBar()
    monitor.listeners.clear()
    monitor.start()
    paints = []
    pages = 0
    scroll_start = time.perf_counter()
    while bar.value() < bar.maximum():
        bar.setValue(bar.value() + bar.pageStep())
        before = time.perf_counter()
        widget.gallery.viewport().repaint()
        paints.append(time.perf_counter() - before)
        pages += 1
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)
    # jump back to the top, whose thumbnails have left the cache by now
    jumped = time.perf_counter()
    bar.setValue(0)
    rows = widget.gallery.visible_rows()
    wait(app, lambda: all(widget.loader.is_loaded(r) for r in rows), 60)
    jump = time.perf_counter() - jumped
    monitor.stop()
    scrolling = dict(monitor.summary(), pages=pages,
                     max_page_repaint_ms=round(max(paints) * 1000, 1),
                     mean_page_repaint_ms=round(np.mean(paints) * 1000, 2),
                     seconds=round(time.perf_counter() - scroll_start, 1),
                     thumbnails_after_jump_ms=round(jump * 1000, 1))

    results = {
        "images": args.images, "embedding_dim": args.dim,
        "naming": args.naming,
        "idle_baseline": idle,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{platform.system()} {platform.release()}",
        "loading": loading, "scrolling": scrolling}

    if args.map:
        monitor.start()
        sent = time.perf_counter()
        widget.tabs.setCurrentIndex(widget.MAP_TAB)
        wait(app, lambda: widget.task is None, timeout=1800)
        results["map"] = dict(monitor.summary(), seconds=round(
            time.perf_counter() - sent, 1),
            longest_handler_ms=handler_summary(handlers))
        monitor.stop()

    widget.onDeleteWidget()
    tempdir.cleanup()
    os.makedirs(args.out, exist_ok=True)
    suffix = "" if args.naming == "cold" else f"-{args.naming}"
    path = os.path.join(args.out, f"gallery{suffix}.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
    print(json.dumps(results, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
