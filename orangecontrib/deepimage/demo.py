"""The offline demo: photos embedded on SqueezeNet, and every tutorial.

``deepimage demo --out build/demo`` embeds the photos that ship with the
add-on, lists each one's top ImageNet labels and nearest neighbours, runs
every tutorial workflow headless and writes one HTML report with all of it.
Nothing needs a network.
"""
import glob
import html
import os
import re
import time
from typing import List, Optional, Tuple

from orangecontrib.deepimage.backbones import decode_imagenet_top, get_backbone
from orangecontrib.deepimage.device import device_description
from orangecontrib.deepimage.report import (
    PhotoEntry, nearest_neighbours, photo_section, write_report,
    write_thumbnail)

__all__ = ["run_demo", "TUTORIALS_DIR", "PHOTOS_DIR", "tutorial_paths"]

TUTORIALS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "tutorials")
PHOTOS_DIR = os.path.join(TUTORIALS_DIR, "photos")
PHOTO_PATTERNS = ("*.jpg", "*.jpeg", "*.png")


def tutorial_paths() -> List[str]:
    """The tutorial workflows that ship with the add-on."""
    return sorted(glob.glob(os.path.join(TUTORIALS_DIR, "*.ows")))


def embed_photos(out_dir: str, photos_dir: str = PHOTOS_DIR,
                 model: str = "squeezenet") -> Tuple[str, dict]:
    """Embed the photos; return the report section and figures."""
    from orangecontrib.deepimage.embedding import ImageEmbedder
    paths = sorted(p for pattern in PHOTO_PATTERNS
                   for p in glob.glob(os.path.join(photos_dir, pattern)))
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
               "seconds": seconds, "load_seconds": loaded - start}
    header = (
        f"<p>Model: {html.escape(get_backbone(model).name)} on "
        f"{html.escape(device_description())}. {len(good)} of {len(paths)} "
        f"photos embedded in {seconds:.2f} s (network loaded in "
        f"{loaded - start:.1f} s).</p>"
        + (f"<p class='warning'>Skipped:</p><ul>{skipped}</ul>"
           if skipped else ""))
    return header + photo_section(entries, "thumbnails"), figures


def _body(report_html: str) -> str:
    match = re.search(r"<body>(.*)</body>", report_html, re.S)
    body = match.group(1) if match else report_html
    # The workflow's own title becomes the section heading.
    return re.sub(r"<h1>.*?</h1>", "", body, count=1, flags=re.S)


def run_tutorials(paths: List[str], timeout: float = 1800
                  ) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Run each workflow headless; return report sections and failures."""
    from orangecontrib.deepimage.workflow import (
        WorkflowError, format_result, run_workflow)
    sections, failures = [], []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            result = run_workflow(path, timeout=timeout,
                                  report=os.devnull)
        except WorkflowError as error:
            failures.append(f"{name}: {error}")
            sections.append((f"Tutorial: {name}",
                             f"<p class='error'>{html.escape(str(error))}</p>"))
            continue
        if result.failed:
            failures.append(f"{name}: " + "; ".join(
                f"{node.title}: {' '.join(node.errors)}"
                for node in result.failed))
        status = "error" if result.failed else "ok"
        summary = html.escape(format_result(result)).replace("\n", "<br>")
        sections.append((
            f"Tutorial: {name}",
            f"<p class='{status}'><tt>{summary}</tt></p>"
            + _body(result.report_html or "")))
    return sections, failures


def run_demo(out_dir: str, photos_dir: Optional[str] = None,
             model: str = "squeezenet", tutorials: bool = True) -> str:
    """Write the demo report into `out_dir`; return the report's path.

    Raises
    ------
    RuntimeError
        When a tutorial fails (after the report has been written).
    """
    os.makedirs(out_dir, exist_ok=True)
    photos, _ = embed_photos(out_dir, photos_dir or PHOTOS_DIR, model)
    sections = [("Photos: labels and nearest neighbours", photos)]
    failures = []
    if tutorials:
        tutorial_sections, failures = run_tutorials(tutorial_paths())
        sections += tutorial_sections
    path = write_report(os.path.join(out_dir, "report.html"),
                        "Orange3-DeepImage demo", sections)
    if failures:
        raise RuntimeError("Some tutorials failed (see the report "
                           f"{path}): " + " | ".join(failures))
    return path
