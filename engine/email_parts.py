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

import css_inline
import html2text

# One inliner for every message (it holds no per-message state); no remote stylesheets.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False)


class EmailPartError(ValueError):
    """The HTML could not be inlined; the message names the problem, never the message's text."""


def inline_css(html: str) -> str:
    """``html`` with its ``<style>`` rules moved into ``style`` attributes."""
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
