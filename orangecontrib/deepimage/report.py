"""A self-contained HTML report of embedded photos (Qt-free).

For each photo: its thumbnail, its top ImageNet labels and its nearest
neighbours by cosine similarity of the embeddings. Other parts of the demo
add their own sections. :func:`write_report` puts a page together: one
``h1``, a summary first, a table of contents, then the sections; the
helpers below fit widgets' report fragments into it (headings one level
down, no empty sections, no lists of a thousand names).
"""
import html
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from orangecontrib.deepimage.images import ImageSkipped, load_image

__all__ = ["nearest_neighbours", "PhotoEntry", "photo_section",
           "write_report", "THUMBNAIL_SIZE", "shift_headings",
           "shorten_long_lists", "drop_empty_sections", "gallery_section"]

THUMBNAIL_SIZE = 160


def nearest_neighbours(vectors: np.ndarray, k: int = 3
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of each row's `k` nearest rows.

    A row is never its own neighbour.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Both ``(n, min(k, n - 1))``: neighbour indices, most similar first,
        and their cosine similarities.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    k = min(k, len(vectors) - 1)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


@dataclass
class PhotoEntry:
    """One photo in the report."""
    path: str
    labels: Sequence[Tuple[str, float]]
    neighbours: Sequence[Tuple[int, float]]
    thumbnail: Optional[str] = None


def write_thumbnail(path: str, folder: str, index: int) -> Optional[str]:
    """Save a JPEG thumbnail of `path` in `folder`; return its file name."""
    try:
        image = load_image(path)
    except ImageSkipped:
        return None
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    name = f"{index:04d}.jpg"
    image.save(os.path.join(folder, name), quality=85)
    return name


def photo_section(entries: List[PhotoEntry], thumbnails_url: str) -> str:
    """HTML of the photo table: thumbnail, labels, neighbours."""
    def thumb(entry, size):
        if entry.thumbnail is None:
            return "(no thumbnail)"
        return (f'<img src="{html.escape(thumbnails_url)}/'
                f'{html.escape(entry.thumbnail)}" style="max-width:{size}px;'
                f'max-height:{size}px" alt="{html.escape(os.path.basename(entry.path))}">')

    rows = []
    for entry in entries:
        labels = "<br>".join(f"{html.escape(label)} ({100 * p:.0f}%)"
                             for label, p in entry.labels)
        neighbours = " ".join(
            f'<figure style="display:inline-block;margin:2px">'
            f'{thumb(entries[j], 64)}<figcaption>{similarity:.2f}'
            f'</figcaption></figure>' for j, similarity in entry.neighbours)
        rows.append(
            f"<tr><td>{thumb(entry, THUMBNAIL_SIZE)}<br>"
            f"{html.escape(os.path.basename(entry.path))}</td>"
            f"<td>{labels}</td><td>{neighbours}</td></tr>")
    return ("<table><tr><th>Photo</th><th>Top ImageNet labels</th>"
            "<th>Nearest neighbours (cosine similarity)</th></tr>"
            + "".join(rows) + "</table>")


def gallery_section(groups: Sequence[Tuple[str, Sequence[Tuple[str, str]]]],
                    thumbnails_url: str) -> str:
    """HTML of thumbnails in groups: (caption, [(thumbnail file, name)])."""
    parts = []
    for caption, images in groups:
        figures = "".join(
            f'<figure style="display:inline-block;margin:2px">'
            f'<img src="{html.escape(thumbnails_url)}/{html.escape(thumb)}" '
            f'style="max-width:96px;max-height:96px" '
            f'alt="{html.escape(name)}">'
            f'<figcaption>{html.escape(name)}</figcaption></figure>'
            for thumb, name in images)
        parts.append(f"<p><b>{html.escape(caption)}</b> "
                     f"({len(images)} images)</p><div>{figures}</div>")
    return "".join(parts)


_HEADING = re.compile(r"<(/?)h([1-6])\b", re.I)


def shift_headings(fragment: str, by: int = 1) -> str:
    """Move every heading of an HTML fragment `by` levels down (at most
    ``h6``)."""
    return _HEADING.sub(
        lambda m: f"<{m.group(1)}h{min(6, int(m.group(2)) + by)}", fragment)


_LONG_LIST = re.compile(r"[^<>,]{1,80}(?:, [^<>,]{1,80}){20,}")


def shorten_long_lists(fragment: str, keep: int = 5) -> str:
    """Shorten text lists of more than 20 comma-separated names (e.g. the
    1,000 features of an embedding) to their first `keep` names, "…", the
    last one and the number of names."""
    def shorten(match):
        names = match.group(0).split(", ")
        return ", ".join(names[:keep]) + f", …, {names[-1]} " \
            f"({len(names)} in all)"
    return _LONG_LIST.sub(shorten, fragment)


_SECTION_PART = re.compile(r"(<h([1-6])\b[^>]*>.*?</h\2\s*>)", re.I | re.S)
_CONTENT = re.compile(r"<(img|svg|canvas|iframe)\b", re.I)


def _has_content(fragment: str) -> bool:
    if _CONTENT.search(fragment):
        return True
    text = html.unescape(re.sub(r"<[^>]*>", "", fragment))
    return bool(text.strip())


def drop_empty_sections(page: str) -> str:
    """Remove headings under which nothing is shown (no text, no image)
    before the next heading of the same or a higher level."""
    parts = _SECTION_PART.split(page)
    # parts: text, heading, level, text, heading, level, text, ...
    headings = [(i, int(parts[i + 1])) for i in range(1, len(parts), 3)]
    keep = {}
    for k in range(len(headings) - 1, -1, -1):
        index, level = headings[k]
        content = _has_content(parts[index + 2])
        for later_index, later_level in headings[k + 1:]:
            if later_level <= level:
                break
            if keep[later_index]:
                content = True
                break
        keep[index] = content
    for index, _ in headings:
        parts[index + 1] = ""
        if not keep[index]:
            parts[index] = ""
    return "".join(parts)


def write_report(path: str, title: str,
                 sections: Sequence[Tuple[str, str]],
                 summary: Optional[str] = None) -> str:
    """Write an HTML page of (heading, HTML fragment) sections.

    The page has one ``h1`` (`title`), then the `summary` (HTML), a table
    of contents and the sections, each under an ``h2``; headings of the
    fragments should start at ``h3`` (:func:`shift_headings`). Sections and
    headings with nothing under them are left out.
    """
    style = ("body{font-family:sans-serif;max-width:70em;margin:auto;"
             "padding:1em}table{border-collapse:collapse}"
             "td,th{border-bottom:1px solid #ddd;padding:4px 8px;"
             "vertical-align:top;text-align:left}"
             ".error{color:#b00}.warning{color:#a60}.ok{color:#070}"
             "figcaption{font-size:small;text-align:center}")
    sections = [(heading, shorten_long_lists(fragment))
                for heading, fragment in sections
                if _has_content(fragment)]
    anchors = [f"section-{i + 1}" for i in range(len(sections))]
    contents = "".join(
        f'<li><a href="#{anchor}">{html.escape(heading)}</a></li>'
        for anchor, (heading, _) in zip(anchors, sections))
    body = (f"<section id='summary'><h2>Summary</h2>{summary}</section>"
            if summary else "")
    if sections:
        body += f"<nav><h2>Contents</h2><ol>{contents}</ol></nav>"
    body += "".join(f"<section id='{anchor}'><h2>{html.escape(heading)}"
                    f"</h2>{fragment}</section>"
                    for anchor, (heading, fragment) in zip(anchors, sections))
    with open(path, "w", encoding="utf-8") as file:
        file.write(f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
                   f"<title>{html.escape(title)}</title><style>{style}"
                   f"</style></head><body><h1>{html.escape(title)}</h1>"
                   f"{drop_empty_sections(body)}</body></html>")
    return path
