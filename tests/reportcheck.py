"""Reading the structure of an HTML report with the standard html.parser."""
from html.parser import HTMLParser
from typing import List, Tuple

CONTENT_TAGS = {"img", "svg", "canvas"}


class _Outline(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        # [level, heading text, shows something]
        self.headings: List[list] = []
        self.in_heading = None
        self.images = []
        self.text_chunks = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script", "title"):
            self._skip += 1
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.in_heading = int(tag[1])
            self.headings.append([self.in_heading, "", False])
        elif tag in CONTENT_TAGS:
            self.images.append(dict(attrs))
            self._shown()

    def handle_endtag(self, tag):
        if tag in ("style", "script", "title"):
            self._skip -= 1
        if self.in_heading is not None and tag == f"h{self.in_heading}":
            self.in_heading = None

    def handle_data(self, data):
        if self._skip:
            return
        if self.in_heading is not None:
            self.headings[-1][1] += data
        elif data.strip():
            self.text_chunks.append(data)
            self._shown()

    def _shown(self):
        if self.headings and self.in_heading is None:
            self.headings[-1][2] = True


def outline(page: str) -> Tuple[List[Tuple[int, str]], List[str], list]:
    """Headings as (level, text), those with nothing under them, images.

    A heading is empty when no text or image follows it before the next
    heading of the same or a higher level.
    """
    parser = _Outline()
    parser.feed(page)
    parser.close()
    headings = parser.headings
    empty = []
    for k, (level, text, shown) in enumerate(headings):
        for later_level, _, later_shown in headings[k + 1:]:
            if later_level <= level:
                break
            shown = shown or later_shown
        if not shown:
            empty.append(text.strip())
    return ([(level, text.strip()) for level, text, _ in headings], empty,
            parser.images)


def longest_list(page: str) -> int:
    """The most comma-separated items in one piece of the page's text."""
    parser = _Outline()
    parser.feed(page)
    return max((chunk.count(",") + 1 for chunk in parser.text_chunks),
               default=0)
