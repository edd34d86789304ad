"""Annotation canvas: how long a brush stroke's segment takes on a photo of
4000×3000 pixels.

The canvas (:class:`AnnotationView`, 1200×800 offscreen) shows a photo
(scikit-image's coffee, enlarged to 4000×3000) with a mask that already
holds a few classes. Strokes are drawn through the real event path: a mouse
press on the viewport, mouse moves 4 viewport pixels apart along a wavy
line (what a mouse sends in a quick stroke; also 60 pixels apart, a
flick), and a release. For each move
two times are taken: the handler alone (the event sent until it returns:
the segment drawn into the full-resolution mask and its rectangle of the
overlay recoloured) and that plus the repaint it causes (the viewport's
paint event, timed inside it: Qt 6 paints on its next update tick, a few
milliseconds later, and that wait is not work; the repaint is awaited
before the next move). Medians and 95th percentiles in
milliseconds (wall clock, and CPU time of the GUI thread, which leaves
out the waits of a busy shared machine), at fit-to-window zoom and at
1:1, for brushes of 20 and 100 image pixels; also the press and the release (the release records the
undo command: it copies the stroke's bounding rectangle before and after,
so it grows with the stroke), and for comparison what recolouring the whole overlay once
would cost, as a canvas that does not track the changed rectangle would do
for every segment.

Usage: QT_QPA_PLATFORM=offscreen python bench/bench_annotation_view.py
       [--moves 300] [--out bench/results]
Results: annotation-view.json in the output folder.
"""
import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from results_io import write_results  # noqa: E402

WIDTH, HEIGHT = 4000, 3000
VIEW_SIZE = (1200, 800)
STEP = 4   # viewport pixels between mouse moves


def photo_and_mask():
    """The enlarged photo, and a mask with three classes in bands."""
    from PIL import Image
    from skimage import data
    image = np.asarray(Image.fromarray(data.coffee()).resize(
        (WIDTH, HEIGHT), Image.Resampling.BILINEAR))
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[:, 1000:2000] = 1
    mask[1000:1800, 2500:3600] = 2
    return image, mask


def ms_summary(seconds):
    values = np.asarray(seconds) * 1000
    return {"median_ms": round(float(np.median(values)), 3),
            "p95_ms": round(float(np.percentile(values, 95)), 3),
            "max_ms": round(float(values.max()), 3),
            "n": len(values)}


def stroke_path(view, moves, step):
    """Viewport points `step` apart, left and right through the middle of
    what the viewport shows of the image, on a wave."""
    from AnyQt.QtCore import QPoint
    rect = view.mapFromScene(view.sceneRect()).boundingRect().intersected(
        view.viewport().rect()).adjusted(20, 20, -20, -20)
    amplitude = min(rect.height() / 3, 150)
    span = rect.width()
    points = []
    for i in range(moves + 1):
        x = (i * step) % (2 * span)
        x = x if x < span else 2 * span - x    # back at the right edge
        points.append(QPoint(rect.left() + int(x),
                             int(rect.center().y()
                                 + amplitude * np.sin(i * step / 60))))
    return points


def timed_view_class():
    from orangecontrib.deepimage.widgets.utils.annotationview import \
        AnnotationView

    class TimedView(AnnotationView):
        """Records how long each paint of the viewport takes and how much
        of it was repainted."""
        paints = []

        def paintEvent(self, event):
            start, cpu = time.perf_counter(), time.thread_time()
            super().paintEvent(event)
            rect = event.region().boundingRect()
            self.paints.append((time.perf_counter() - start,
                                time.thread_time() - cpu,
                                rect.width() * rect.height()))

    return TimedView


def repaint(app, view, timeout=0.5):
    """Process events until the viewport paints; its paint's seconds and
    CPU seconds (0 if nothing was to repaint) and its area in viewport
    pixels (of the bounding rectangle of what was repainted)."""
    count, start = len(view.paints), time.perf_counter()
    while len(view.paints) == count and time.perf_counter() - start < timeout:
        app.processEvents()
    return view.paints[-1] if len(view.paints) > count else (0.0, 0.0, 0)


def one_stroke(app, view, points):
    from AnyQt.QtCore import Qt
    from AnyQt.QtTest import QTest
    viewport = view.viewport()
    handler, painted, cpu, areas = [], [], [], []
    repaint(app, view, 0.05)
    start = time.perf_counter()
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, pos=points[0])
    press = time.perf_counter() - start + repaint(app, view)[0]
    for point in points[1:]:
        start, start_cpu = time.perf_counter(), time.thread_time()
        QTest.mouseMove(viewport, point)
        handled = time.perf_counter() - start
        handled_cpu = time.thread_time() - start_cpu
        seconds, paint_cpu, area = repaint(app, view)
        handler.append(handled)
        painted.append(handled + seconds)
        cpu.append(handled_cpu + paint_cpu)
        areas.append(area)
    start, start_cpu = time.perf_counter(), time.thread_time()
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=points[-1])
    release = (time.perf_counter() - start, time.thread_time() - start_cpu)
    return handler, painted, cpu, areas, press, release


def bench_zoom(app, view, zoom, brush, moves, step=STEP, repeats=3):
    image, mask = photo_and_mask()
    view.set_image(image, mask)
    app.processEvents()
    if zoom == "fit":
        view.fit_in_view()
    else:
        view.set_zoom(zoom)
    view.set_brush_size(brush)
    app.processEvents()
    handler, painted, cpu, areas, presses, releases = [], [], [], [], [], []
    for repeat in range(repeats):   # each stroke its class: each changes
        view.set_current_class(3 + repeat)
        h, p, c, a, press, release = one_stroke(
            app, view, stroke_path(view, moves, step))
        handler += h
        painted += p
        cpu += c
        areas += a
        presses.append(press)
        releases.append(release)
    changed = int((view.mask() != mask).sum())
    if not changed or view.undo_stack().count() != repeats:
        raise RuntimeError("the strokes did not paint")
    return {"zoom": round(view.zoom(), 4), "brush_px": brush,
            "viewport_px_between_moves": step,
            "segment_image_px": round(step / view.zoom(), 1),
            "move_handler": ms_summary(handler),
            "move_with_repaint": ms_summary(painted),
            "move_with_repaint_cpu": ms_summary(cpu),
            "repainted_viewport_px_median": int(np.median(areas)),
            "press_ms": round(float(np.median(presses)) * 1000, 2),
            "release_ms": round(float(np.median(
                [wall for wall, _ in releases])) * 1000, 2),
            "release_cpu_ms": round(float(np.median(
                [cpu for _, cpu in releases])) * 1000, 2),
            "pixels_changed": changed}


def full_recolour_ms(repeats=5):
    """Recolouring the whole 4000×3000 overlay once (what every segment
    would cost without the changed rectangle)."""
    _, mask = photo_and_mask()
    table = np.arange(256, dtype=np.uint32) | np.uint32(0xFF000000)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        table[mask]
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=300)
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    from AnyQt.QtTest import QTest
    from AnyQt.QtWidgets import QApplication
    app = QApplication.instance() or QApplication([])
    view = timed_view_class()()
    view.resize(*VIEW_SIZE)
    view.show()
    QTest.qWaitForWindowExposed(view)
    load = os.getloadavg()[0]
    runs = [bench_zoom(app, view, zoom, brush, args.moves)
            for zoom in ("fit", 1.0) for brush in (20, 100)]
    # a quick flick at fit-to-window: long segments, often diagonal
    runs.append(bench_zoom(app, view, "fit", 50, args.moves // 3, step=60))
    results = {
        "image": f"{WIDTH}×{HEIGHT} (scikit-image coffee, enlarged)",
        "viewport": f"{VIEW_SIZE[0]}×{VIEW_SIZE[1]}",
        "moves_per_stroke": args.moves, "strokes_per_run": 3,
        "qt_platform": os.environ.get("QT_QPA_PLATFORM"),
        "load_average_before_after": [load, os.getloadavg()[0]],
        "runs": runs,
        "full_overlay_recolour_ms": full_recolour_ms(),
        "under_16_ms_a_segment (p95 with repaint)": all(
            run["move_with_repaint"]["p95_ms"] < 16 for run in runs)}
    view.close()
    write_results(results, args.out, "annotation-view")


if __name__ == "__main__":
    main()
