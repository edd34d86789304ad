"""The offline demo: photos embedded on SqueezeNet, and every tutorial.

``deepimage demo --out build/demo`` embeds the photos that ship with the
add-on, lists each one's top ImageNet labels and nearest neighbours, runs
every tutorial workflow headless and writes one HTML report with all of it:
a summary first (what each tutorial found, how long each part took), a table
of contents, then a section per part, with thumbnails of the clusters that a
workflow found. Progress goes to `log` (the terminal, from the command
line). Nothing needs a network.
"""
import glob
import html
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from orangecontrib.deepimage.backbones import decode_imagenet_top, get_backbone
from orangecontrib.deepimage.device import device_description
from orangecontrib.deepimage.report import (
    PhotoEntry, gallery_section, nearest_neighbours, photo_section,
    shift_headings, write_report, write_thumbnail)

__all__ = ["run_demo", "TUTORIALS_DIR", "PHOTOS_DIR", "tutorial_paths",
           "embed_photos", "run_tutorials", "TutorialRun", "demo_report"]

TUTORIALS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "tutorials")
PHOTOS_DIR = os.path.join(TUTORIALS_DIR, "photos")
PHOTO_PATTERNS = ("*.jpg", "*.jpeg", "*.png")
#: Seconds between progress lines while a tutorial runs.
PROGRESS_EVERY = 10.0

Log = Callable[[str], None]


def _quiet(text: str) -> None:  # pylint: disable=unused-argument
    pass


def tutorial_paths() -> List[str]:
    """The tutorial workflows that ship with the add-on."""
    return sorted(glob.glob(os.path.join(TUTORIALS_DIR, "*.ows")))


def embed_photos(out_dir: str, photos_dir: str = PHOTOS_DIR,
                 model: str = "squeezenet", log: Log = _quiet
                 ) -> Tuple[str, dict]:
    """Embed the photos; return the report section and figures."""
    from orangecontrib.deepimage.embedding import ImageEmbedder
    paths = sorted(p for pattern in PHOTO_PATTERNS
                   for p in glob.glob(os.path.join(photos_dir, pattern)))
    name = get_backbone(model).name
    log(f"Embedding {len(paths)} photos with {name}…")
    embedder = ImageEmbedder(model=model)
    start = time.perf_counter()
    embedder.load_network()
    loaded = time.perf_counter()
    result = embedder.embed_paths(paths, with_probabilities=True)
    seconds = time.perf_counter() - loaded
    good = [i for i, v in enumerate(result.vectors) if v is not None]
    neighbours, similarity = nearest_neighbours(
        [result.vectors[i] for i in good], k=3)
    thumbnails = os.path.join(out_dir, "thumbnails")
    os.makedirs(thumbnails, exist_ok=True)
    entries = []
    for row, index in enumerate(good):
        labels = decode_imagenet_top(result.probabilities[index], 3)[0]
        entries.append(PhotoEntry(
            paths[index], labels,
            list(zip(neighbours[row], similarity[row])),
            write_thumbnail(paths[index], thumbnails, index)))
    skipped = "".join(
        f"<li>{html.escape(os.path.basename(paths[i]))}: "
        f"{html.escape(reason)}</li>" for i, reason in result.skipped.items())
    figures = {"images": len(paths), "embedded": len(good),
               "seconds": seconds, "load_seconds": loaded - start,
               "model": name, "device": device_description()}
    log(f"  {len(good)} of {len(paths)} embedded in {seconds:.1f} s "
        f"(network loaded in {loaded - start:.1f} s)")
    header = (
        f"<p>Model: {html.escape(name)} on "
        f"{html.escape(figures['device'])}. {len(good)} of {len(paths)} "
        f"photos embedded in {seconds:.2f} s (network loaded in "
        f"{loaded - start:.1f} s).</p>"
        + (f"<p class='warning'>Skipped:</p><ul>{skipped}</ul>"
           if skipped else ""))
    return header + photo_section(entries, "thumbnails"), figures


@dataclass
class TutorialRun:
    """One tutorial run by :func:`run_tutorials`."""
    name: str
    result: Optional[object] = None  # a workflow.WorkflowResult
    error: Optional[str] = None
    seconds: float = 0.0
    failures: List[str] = field(default_factory=list)


def _body(report_html: str) -> str:
    """A workflow report's body, its title left out, headings from h3."""
    match = re.search(r"<body>(.*)</body>", report_html, re.S)
    body = match.group(1) if match else report_html
    # The workflow's own title becomes the section heading.
    body = re.sub(r"<h1>.*?</h1>", "", body, count=1, flags=re.S)
    return shift_headings(body, 1)


def _progress_printer(name: str, log: Log):
    last = [time.monotonic()]

    def show(busy):
        now = time.monotonic()
        if busy and now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            log(f"  {name}: " + ", ".join(
                f"{title} {percent:.0f} %" if percent is not None else title
                for title, percent in busy))
    return show


def run_tutorials(paths: List[str], timeout: float = 1800,
                  log: Log = _quiet) -> List[TutorialRun]:
    """Run each workflow headless, reporting progress to `log`."""
    from orangecontrib.deepimage.workflow import WorkflowError, run_workflow
    runs = []
    for number, path in enumerate(paths, 1):
        name = os.path.splitext(os.path.basename(path))[0]
        log(f"Tutorial {number} of {len(paths)}: {name}…")
        start = time.perf_counter()
        try:
            result = run_workflow(path, timeout=timeout, report=os.devnull,
                                  progress=_progress_printer(name, log))
        except WorkflowError as error:
            runs.append(TutorialRun(name, None, str(error),
                                    time.perf_counter() - start,
                                    [f"{name}: {error}"]))
            log(f"  failed: {error}")
            continue
        run = TutorialRun(name, result, None, result.seconds, [
            f"{name}: {node.title}: {' '.join(node.errors)}"
            for node in result.failed])
        runs.append(run)
        log(f"  {'failed' if run.failures else 'ok'} in "
            f"{result.seconds:.1f} s")
        for node in result.nodes:
            for line in node.errors:
                log(f"    {node.title}: error: {line}")
            for line in node.key_results:
                log(f"    {node.title}: {line}")
    return runs


def _cluster_galleries(result, out_dir: str, first_index: int
                       ) -> Tuple[str, int]:
    """Thumbnails of each cluster in the tables a workflow sent."""
    from Orange.data import Table
    from orangecontrib.deepimage.images import find_image_column, image_paths
    parts = []
    index = first_index
    thumbnails = os.path.join(out_dir, "thumbnails")
    os.makedirs(thumbnails, exist_ok=True)
    done = set()
    for (title, output), table in result.outputs.items():
        if not isinstance(table, Table) or title in done \
                or "Cluster" not in table.domain \
                or not table.domain["Cluster"].is_discrete:
            continue
        column = find_image_column(table)
        if column is None:
            continue
        done.add(title)
        cluster = table.domain["Cluster"]
        labels = table.get_column(cluster)
        paths = image_paths(table, column)
        # widgets downstream pass the same clusters on: show them once
        shown = (tuple(cluster.values), tuple(paths), labels.tobytes())
        if shown in done:
            continue
        done.add(shown)
        groups = []
        for value, caption in enumerate(cluster.values):
            images = []
            for path, label in zip(paths, labels):
                if label != value or path is None:
                    continue
                thumb = write_thumbnail(path, thumbnails, index)
                index += 1
                if thumb is not None:
                    images.append((thumb, os.path.basename(path)))
            if images:
                groups.append((caption, images))
        if groups:
            parts.append(f"<h3>{html.escape(title)}: the clusters "
                         f"({html.escape(output)})</h3>"
                         + gallery_section(groups, "thumbnails"))
    return "".join(parts), index


def _summary(photos: Optional[dict], runs: List[TutorialRun],
             seconds: float) -> str:
    rows = []
    if photos is not None:
        rows.append(
            f"<tr><td>Photos</td><td class='ok'>ok</td>"
            f"<td>{photos['seconds'] + photos['load_seconds']:.1f} s</td>"
            f"<td>{photos['embedded']} of {photos['images']} photos "
            f"embedded with {html.escape(photos['model'])} on "
            f"{html.escape(photos['device'])}</td></tr>")
    for run in runs:
        status = "failed" if run.failures else "ok"
        if run.result is None:
            figures = [run.error or ""]
        else:
            figures = [f"{node.title}: {line}" for node in run.result.nodes
                       for line in node.errors + node.key_results]
        rows.append(
            f"<tr><td>{html.escape(run.name)}</td>"
            f"<td class='{'error' if run.failures else 'ok'}'>{status}</td>"
            f"<td>{run.seconds:.1f} s</td><td>"
            + "<br>".join(html.escape(line) for line in figures)
            + "</td></tr>")
    return (f"<p>Everything ran in {seconds:.0f} s on "
            f"{html.escape(device_description())}.</p>"
            "<table><tr><th>Part</th><th>State</th><th>Time</th>"
            "<th>Key results</th></tr>" + "".join(rows) + "</table>")


def demo_report(path: str, out_dir: str, photos: Optional[Tuple[str, dict]],
                runs: List[TutorialRun], seconds: float) -> str:
    """Write the demo's report from the photos' section and figures (or
    None) and the tutorial runs; return its path."""
    from orangecontrib.deepimage.workflow import format_result
    sections = []
    if photos is not None:
        sections.append(("Photos: labels and nearest neighbours", photos[0]))
    index = 10_000  # thumbnails of clusters after the photos'
    for run in runs:
        if run.result is None:
            body = f"<p class='error'>{html.escape(run.error or '')}</p>"
        else:
            summary = html.escape(format_result(run.result)) \
                .replace("\n", "<br>")
            galleries, index = _cluster_galleries(run.result, out_dir, index)
            status = "error" if run.failures else "ok"
            body = (f"<p class='{status}'><tt>{summary}</tt></p>"
                    + galleries + _body(run.result.report_html or ""))
        sections.append((f"Tutorial: {run.name}", body))
    return write_report(path, "Orange3-DeepImage demo", sections,
                        summary=_summary(photos[1] if photos else None,
                                         runs, seconds))


def run_demo(out_dir: str, photos_dir: Optional[str] = None,
             model: str = "squeezenet", tutorials: bool = True,
             log: Log = _quiet) -> str:
    """Write the demo report into `out_dir`; return the report's path.

    Parameters
    ----------
    log : callable
        Called with a line of text at each step (progress).

    Raises
    ------
    RuntimeError
        When a tutorial fails (after the report has been written).
    """
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    photos = embed_photos(out_dir, photos_dir or PHOTOS_DIR, model, log)
    runs = run_tutorials(tutorial_paths(), log=log) if tutorials else []
    path = demo_report(os.path.join(out_dir, "report.html"), out_dir,
                       photos, runs, time.perf_counter() - start)
    failures = [failure for run in runs for failure in run.failures]
    if failures:
        raise RuntimeError("Some tutorials failed (see the report "
                           f"{path}): " + " | ".join(failures))
    return path
