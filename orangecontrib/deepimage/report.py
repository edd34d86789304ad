"""A self-contained HTML report of embedded photos (Qt-free).

For each photo: its thumbnail, its top ImageNet labels and its nearest
neighbours by cosine similarity of the embeddings. Other parts of the demo
add their own sections.
"""
import html
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from orangecontrib.deepimage.images import ImageSkipped, load_image

__all__ = ["nearest_neighbours", "PhotoEntry", "photo_section",
           "write_report", "THUMBNAIL_SIZE"]

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


def write_report(path: str, title: str,
                 sections: Sequence[Tuple[str, str]]) -> str:
    """Write an HTML page of (heading, HTML fragment) sections."""
    style = ("body{font-family:sans-serif;max-width:70em;margin:auto;"
             "padding:1em}table{border-collapse:collapse}"
             "td,th{border-bottom:1px solid #ddd;padding:4px 8px;"
             "vertical-align:top;text-align:left}"
             ".error{color:#b00}.warning{color:#a60}.ok{color:#070}"
             "figcaption{font-size:small;text-align:center}")
    body = "".join(f"<section><h2>{html.escape(heading)}</h2>{fragment}"
                   f"</section>" for heading, fragment in sections)
    with open(path, "w", encoding="utf-8") as file:
        file.write(f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
                   f"<title>{html.escape(title)}</title><style>{style}"
                   f"</style></head><body><h1>{html.escape(title)}</h1>"
                   f"{body}</body></html>")
    return path
