"""Markdown as a viewer sees it: rendered with markdown-it-py's "gfm-like" preset (CommonMark,
tables, strikethrough, linkify of bare URLs, ``www.`` names, e-mail addresses and bare domains,
and raw HTML passed through, as Prefect's UI passes it to its sanitizer), then parsed back into
elements and text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser

from markdown_it import MarkdownIt

__all__ = ["Rendered", "as_shown", "cell_text", "render"]

_MARKDOWN = MarkdownIt("gfm-like")


@dataclass
class Rendered:
    """The HTML of some markdown, its elements (tag and attributes, in order) and its text."""

    html: str
    elements: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    text: str = ""

    def tags(self, *names: str) -> list[dict[str, str | None]]:
        """The attributes of every element named one of ``names``."""
        return [attrs for tag, attrs in self.elements if tag in names]

    def texts(self, tag: str) -> list[str]:
        """The text inside each ``tag`` element (headings, cells)."""
        pattern = rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>"
        return [unescape(re.sub(r"<[^>]+>", "", inner)) for inner in re.findall(pattern, self.html, re.S)]


class _Parser(HTMLParser):
    def __init__(self, rendered: Rendered) -> None:
        super().__init__(convert_charrefs=True)
        self.rendered = rendered

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.rendered.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.rendered.text += data


def render(markdown: str) -> Rendered:
    """``markdown`` rendered, its elements and text."""
    rendered = Rendered(_MARKDOWN.render(markdown))
    parser = _Parser(rendered)
    parser.feed(rendered.html)
    parser.close()
    return rendered


def cell_text(markdown: str) -> str:
    """The text a string cell of a table artifact shows (the UI renders each cell as markdown):
    the cell must render as one paragraph of plain text, no element in it (or as nothing)."""
    html = _MARKDOWN.render(markdown)
    if not html:
        return ""
    match = re.fullmatch(r"<p>(.*)</p>\n", html, re.S)
    assert match is not None and "<" not in match.group(1), f"{markdown!r} renders as {html!r}"
    return unescape(match.group(1))


def as_shown(value: str) -> str:
    """What a viewer reads of a user's string once escaped: the same characters on one line
    (each line break a space), no whitespace at either end, U+0000 as U+FFFD (CommonMark's)."""
    for line_break in ("\r\n", "\r", "\n", "\x0c", "\u2028", "\u2029"):
        value = value.replace(line_break, " ")
    return value.replace("\x00", "\ufffd").strip()
