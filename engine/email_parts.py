"""An HTML email's two parts: the HTML with its CSS inlined, and the text part made from it.

Mail clients (Gmail, Outlook) drop or ignore ``<style>`` blocks, so a layout's CSS is moved into
each element's ``style`` attribute by css-inline (a maintained Rust inliner built on Mozilla's
HTML and CSS parsers: what a browser would match, not a regular expression). Remote stylesheets
are never fetched: rendering must not reach the network, and a layout is a local file.

The text part, when a step gives none, is html2text's reading of the inlined HTML: headings,
paragraphs and lists as text, each link as ``[text](url)`` so the tracked URLs stay in it, no
line wrapping (a client wraps; a wrapped URL breaks).
"""

from __future__ import annotations

from html.parser import HTMLParser

import css_inline
import html2text

# One inliner for every message (it holds no per-message state); no remote stylesheets.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False)


MAX_DEPTH = 256  # elements nested deeper than this are refused before any parser recurses on them
# Elements that never hold others (HTML's void elements): they open no level
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
                   "track", "wbr"})


class _Depth(HTMLParser):
    """How deep the elements of a document nest, read by the standard library's tolerant,
    non-recursive tokenizer: css-inline's tree builder and html2text both recurse per level, and
    a loop of unclosed ``<div>`` (a few characters each) crashes the process (a segfault at
    ~15,000 levels, measured) or makes megabytes of text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.depth = self.deepest = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in _VOID:
            self.depth += 1
            self.deepest = max(self.deepest, self.depth)

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID:
            self.depth = max(0, self.depth - 1)


def nesting_depth(html: str) -> int:
    """The deepest nesting of elements in ``html`` (unclosed ones count as open to the end)."""
    parser = _Depth()
    parser.feed(html)
    parser.close()
    return parser.deepest


class EmailPartError(ValueError):
    """The HTML could not be inlined; the message names the problem, never the message's text."""


def inline_css(html: str) -> str:
    """``html`` with its ``<style>`` rules moved into ``style`` attributes; EmailPartError for a
    document nested deeper than MAX_DEPTH."""
    if nesting_depth(html) > MAX_DEPTH:
        raise EmailPartError(f"elements nested deeper than {MAX_DEPTH} levels (an unclosed tag in a loop?)")
    try:
        return str(_INLINER.inline(html))
    except (css_inline.InlineError, ValueError) as exc:
        raise EmailPartError(f"the CSS could not be inlined ({type(exc).__name__})") from None


def text_from_html(html: str) -> str:
    """The plain-text reading of ``html`` (see the module's doc)."""
    converter = html2text.HTML2Text()
    converter.body_width = 0  # no wrapping
    converter.ignore_images = True
    converter.unicode_snob = True  # keep accents as they are, not ASCII look-alikes
    return str(converter.handle(html)).strip() + "\n"
