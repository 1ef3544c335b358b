"""Output encoding: text that users or the gateway control, written where people read it.

Prefect's UI renders markdown artifacts, every artifact's description and every string cell of
a table artifact as GitHub-flavoured markdown (links and bare URLs linkified, raw HTML passed
through a sanitizer that keeps ``<img src>``). A prompt, an id, a column value, an error, a file
name or a request id placed there as it is could show an image from any host in every viewer's
browser, a link, HTML, a heading, or break a table. Everything of that kind goes through
:func:`md_text` (or :func:`md_table` for a table's rows); the links and images the plugin
means to show (a stored image's link, the CSV report) are built by :func:`md_link` and
:func:`md_image` alone. :func:`csv_row` neutralises spreadsheet formulas in the CSV report.

No Prefect import: the engine and the flows both use it.
"""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["Markdown", "csv_row", "data_uri", "md_image", "md_inline_png", "md_link", "md_table", "md_text"]


class Markdown(str):
    """Markdown that is safe to show as it is: built by this module from escaped text."""

    __slots__ = ()


def _escapes() -> dict[int, str]:
    table = {ord(c): "\\" + c for c in string.punctuation}
    # A comma starts nothing in CommonMark, GFM or a linkifier; unescaped, a list of ids joined
    # by ", " stays readable as it is.
    del table[ord(",")]
    table.update({ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"})
    # Line breaks (every kind a renderer may know) become spaces: the text stays on one source
    # line (no block can start inside it, a table row stays one row). Not character references:
    # Prefect's UI shows a numeric reference such as &#10; as it is.
    for char in "\n\r\x0c\u2028\u2029":
        table[ord(char)] = " "
    table[0] = "\ufffd"  # what CommonMark makes of U+0000 anyway
    return table


_ESCAPES = _escapes()


def md_text(value: str) -> Markdown:
    """``value`` as markdown that renders as that text, on one line: line breaks read as spaces
    and whitespace at either end is dropped (a renderer drops it too, and four leading spaces
    would make a code block); every other character reads as itself.

    Every ASCII punctuation character but the comma is backslash-escaped (no emphasis, code,
    link, image, heading, list, quote, table cell break or strikethrough can start, and no
    ``http:``, ``www.``, ``user@host`` or bare domain stays whole for a linkifier to find);
    ``&``, ``<`` and ``>`` become ``&amp;``, ``&lt;`` and ``&gt;`` (no HTML, no character
    reference).
    """
    return Markdown(value.replace("\r\n", "\n").translate(_ESCAPES).strip())


_LINK_SCHEMES = ("http", "https", "file")
# Kept as they are in a link destination: RFC 3986's unreserved and reserved characters and
# '%' (the URL's own escapes), less the parentheses (they end or nest a destination); '|' (a
# table cell break), '<', '>', '\\', '`', '"', spaces, controls and non-ASCII are encoded.
_URL_SAFE = "-._~:/?#[]@!$&*+,;=%" + "'"
_REFERENCE = re.compile(r"&(?=#?[0-9A-Za-z]+;)")


def _destination(url: str) -> str | None:
    """``url`` as a markdown link destination, or None when it is not a link the plugin makes
    (http, https or file)."""
    if urlsplit(url).scheme.lower() not in _LINK_SCHEMES:
        return None
    # An '&' that would start a character reference (decoded in a destination) is escaped; the
    # '&'s of a query string stay as they are.
    return _REFERENCE.sub(r"\\&", quote(url, safe=_URL_SAFE))


def md_link(text: str, url: str | None) -> Markdown:
    """A link to ``url`` (one of the plugin's own: a stored image, a report) reading ``text``;
    just the text when there is no such URL."""
    destination = None if url is None else _destination(url)
    if destination is None:
        return md_text(text)
    return Markdown(f"[{md_text(text)}]({destination})")


_DATA_IMAGE = re.compile(r"data:image/(?:jpeg|png|webp);base64,[A-Za-z0-9+/]*={0,2}")


def md_image(alt: str, url: str | None) -> Markdown:
    """The image at ``url`` (the plugin's own stored image, or a base64 ``data:image/...`` URI
    the plugin built from a thumbnail) with ``alt`` text; just the text when there is no such
    URL."""
    if url is not None and _DATA_IMAGE.fullmatch(url):
        return Markdown(f"![{md_text(alt)}]({url})")
    link = md_link(alt, url)
    return Markdown("!" + link) if link.startswith("[") else link


def md_inline_png(alt: str, png: bytes) -> Markdown:
    """The PNG ``png`` (the plugin's own, e.g. a chart it drew) shown inline as a ``data:`` URI,
    with ``alt`` text: it loads wherever the markdown is shown, with no link to a store (a local
    store's ``file://`` link does not load in a browser). Base64 has no character a destination
    must escape. Keep it small: the whole image is in the markdown."""
    return Markdown(f"![{md_text(alt)}]({data_uri(png, 'png')})")


def data_uri(data: bytes, fmt: str) -> str:
    """``data`` (image bytes of format ``fmt``: png, jpeg or webp) as a base64 ``data:image/...``
    URI, the only kind :func:`md_image` takes besides the plugin's own links."""
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode()}"


def md_table(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a table artifact whose string cells render as the text they hold (the UI renders
    each string cell as markdown); :class:`Markdown` cells (links built here) and numbers stay as
    they are."""
    return [
        {
            name: md_text(value) if isinstance(value, str) and not isinstance(value, Markdown) else value
            for name, value in row.items()
        }
        for row in rows
    ]


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row for a CSV file that a spreadsheet may open: a string cell that would start a formula
    (its first character ``=``, ``+``, ``-``, ``@``, a tab or a carriage return: OWASP's rule)
    gets a leading ``'``, so the spreadsheet shows it as text; numbers stay numbers."""
    return {
        name: "'" + value if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value
        for name, value in row.items()
    }
