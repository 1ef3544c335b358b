"""Output encoding (prefect_gpt_image.calls.encoding): text that users or the gateway control
renders as that text wherever markdown is rendered (a paragraph, a table cell, a heading, a
quote, a link's text; on one line, line breaks read as spaces, no whitespace at the ends); no
link, image, HTML, heading or table break can come from it; the plugin's own links keep their
URL; CSV cells that would start a spreadsheet formula are neutralised. Rendered with
markdown-it-py's gfm-like preset (linkify and raw HTML on)."""

from __future__ import annotations

import csv
import io
from urllib.parse import unquote

import pytest

from prefect_gpt_image.calls.encoding import Markdown, csv_row, md_image, md_link, md_table, md_text
from tests.support.markdown import as_shown, cell_text, render

NASTY = [
    "![pixel](http://127.0.0.1:9/p.png)",
    "![a][ref]\n\n[ref]: http://127.0.0.1:9/r.png",
    "[click](javascript:alert(1))",
    "[x]: http://127.0.0.1:9/def",
    "<http://127.0.0.1:9/auto> <me@example.com>",
    "http://127.0.0.1:9/bare https://x.test/y ftp://h/z //host/path",
    "www.example.com and example.com and readme.md and 127.0.0.1",
    "mail me@example.com or mailto:me@example.com",
    "<img src=x onerror=alert(1)>",
    '<a href="http://127.0.0.1:9/">here</a>',
    "<script>alert(1)</script>",
    "<!-- comment --> <![CDATA[x]]> <?php ?> <!DOCTYPE html>",
    "<details open ontoggle=alert(1)>",
    "# heading",
    "###### six",
    "Title\n=====",
    "Sub\n---",
    "> quote",
    "- item\n* item\n+ item\n1. one\n2) two",
    "    indented code",
    "```\nfenced\n```",
    "~~~python\nx\n~~~",
    "a | b | c\n|---|---|\n| 1 | 2 |",
    "| cell |",
    "*em* **strong** _u_ __uu__ ~~strike~~ ~sub~ `code` ``co`de``",
    "&amp; &lt;b&gt; &#65; &#x41; &copy; &",
    "back\\slash \\* \\\\ \\| trailing\\",
    "line one\nline two\r\nthree\rfour\n\nafter a blank line\n",
    "  two leading spaces and trailing  ",
    "\ttab\tinside\t",
    "\u00a0no-break spaces\u00a0",
    "[^note] footnote\n\n[^note]: text",
    "- [ ] task",
    "***\n---\n___",
    "\u2028separator\u2029paragraph",
    "form\x0cfeed and vertical\x0btab",
    "ünïcödé 漢字 😀 \uff57\uff57\uff57\uff0e\uff45\uff58\uff0e\uff43\uff4f\uff4d",  # fullwidth www.ex.com
    "(c) (tm) -- --- ... \"quotes\" 'single' +-",
    "a,b, c",
    "javascript:alert(1)",
    "{{ template }} {% raw %} $math$ \\(x\\)",
    "=SUM(A1:A2)",
    "",
    "   ",
    "NUL\x00char",
]


@pytest.mark.parametrize("value", NASTY)
def test_text_renders_as_itself_in_a_paragraph(value: str) -> None:
    encoded = md_text(value)
    assert isinstance(encoded, Markdown) and "\n" not in encoded and "\r" not in encoded
    assert "&#" not in encoded  # Prefect's UI shows a numeric character reference as it is
    assert cell_text(encoded) == as_shown(value)


@pytest.mark.parametrize("value", NASTY)
def test_text_stays_in_its_table_cell(value: str) -> None:
    """In a GFM table (the call card), the text is one cell of one row: nothing breaks the row."""
    rendered = render(f"| a | b |\n|---|---|\n| {md_text(value)} | after |\n| second | row |\n")
    assert {tag for tag, _ in rendered.elements} <= {"table", "thead", "tbody", "tr", "th", "td"}
    assert rendered.texts("td") == [as_shown(value), "after", "second", "row"]


@pytest.mark.parametrize("value", NASTY)
def test_text_stays_text_in_our_headings_and_quotes(value: str) -> None:
    rendered = render(f"### 1. {md_text(value)}\n\n> {md_text(value)}\n")
    text = as_shown(value)
    assert [tag for tag, _ in rendered.elements] == ["h3", "blockquote"] + (["p"] if text else [])
    assert rendered.texts("h3") == [f"1. {text}".strip()]
    assert rendered.texts("p") == ([text] if text else [])


PRESIGNED = (
    "http://127.0.0.1:8333/bucket/flows/images/ab12.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=k%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=604800"
    "&X-Amz-SignedHeaders=host&X-Amz-Signature=0f9e"
)


@pytest.mark.parametrize("text", NASTY)
def test_a_link_of_the_plugin_keeps_its_url_and_shows_its_text(text: str) -> None:
    assert md_link(text, PRESIGNED).endswith(f"]({PRESIGNED})")  # a plain URL is written as it is
    rendered = render(f"| link |\n|---|\n| {md_link(text, PRESIGNED)} |\n")
    assert rendered.tags("a") == [{"href": PRESIGNED}]
    assert not rendered.tags("img")
    assert rendered.texts("td") == [as_shown(text)]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8333/my images/(draft) <1>|2 [x] `y` \\z.png",
        "https://host.test/a b/c(d)e<f>g|h\\i?x=1&amp;y=2&lt;#frag",
        "https://host.test/ünï/漢字.png",
        "https://host.test/one)paren/and(another.png",
    ],
)
def test_a_link_with_markdown_syntax_in_its_url_is_still_one_link_to_it(url: str) -> None:
    link = md_link("open", url)
    rendered = render(f"| a | b |\n|---|---|\n| {link} | after |\n")
    (anchor,) = rendered.tags("a")
    assert unquote(anchor["href"] or "") == unquote(url)
    assert rendered.texts("td") == ["open", "after"]
    image = render(md_image("alt", url))
    (img,) = image.tags("img")
    assert unquote(img["src"] or "") == unquote(url) and img["alt"] == "alt"


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "data:text/html,<b>x</b>", "s3://bucket/key.png", None]
)
def test_only_http_https_and_file_urls_become_links(url: str | None) -> None:
    for built in (md_link("a [label]", url), md_image("a [label]", url)):
        rendered = render(built)
        assert not rendered.tags("a", "img") and cell_text(built) == "a [label]"


def test_a_thumbnail_data_uri_is_an_image() -> None:
    thumb = "data:image/jpeg;base64,/9j/4AAQSkZJRg+/=="
    rendered = render(f"| a |\n|---|\n| {md_image('<b>row 1</b> | x', thumb)} |\n")
    assert rendered.tags("img") == [{"src": thumb, "alt": "<b>row 1</b> | x"}]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/svg+xml;base64,PHN2Zz4=",
        "data:text/html;base64,PGI+eDwvYj4=",
        "data:image/jpeg;base64,AAAA)![x](http://127.0.0.1:9/x.png",
        "data:image/jpeg,<svg onload=alert(1)>",
    ],
)
def test_only_base64_png_jpeg_and_webp_data_uris_become_images(url: str) -> None:
    built = md_image("a [label]", url)
    assert not render(built).tags("a", "img") and cell_text(built) == "a [label]"


def test_an_image_of_the_plugin_shows_its_alt_text_literally() -> None:
    rendered = render(md_image("<img src=x>](http://127.0.0.1:9/x.png)", PRESIGNED))
    assert rendered.tags("img") == [{"src": PRESIGNED, "alt": "<img src=x>](http://127.0.0.1:9/x.png)"}]


def test_table_rows_escape_strings_and_keep_numbers_and_built_links() -> None:
    link = md_link("s3://bucket/k.png", PRESIGNED)
    (row,) = md_table([{"row": 3, "cost": 0.0377, "cached": True, "id": "<img src=x>", "image": link}])
    assert row["row"] == 3 and row["cost"] == 0.0377 and row["cached"] is True
    assert cell_text(row["id"]) == "<img src=x>"
    assert row["image"] == link and render(row["image"]).tags("a") == [{"href": PRESIGNED}]


@pytest.mark.parametrize(
    "value,written",
    [
        ('=HYPERLINK("http://127.0.0.1:9","x")', '\'=HYPERLINK("http://127.0.0.1:9","x")'),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("a = b", "a = b"),
        (" =1", " =1"),
        ("", ""),
        ("'quoted", "'quoted"),
    ],
)
def test_csv_cells_that_would_start_a_formula_are_neutralised(value: str, written: str) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["text", "cost", "row"])
    writer.writerow(csv_row({"text": value, "cost": -0.5, "row": 7}))
    (read,) = csv.reader(io.StringIO(out.getvalue()))
    assert read == [written, "-0.5", "7"]
