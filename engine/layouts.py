"""Email layouts: the shared HTML frame (header, footer, unsubscribe link) that a campaign step's
``html`` is put into, one file ``<name>.html`` under ``RETENTIOND_LAYOUTS_DIR``.

A layout is read when a campaign is applied and stored with its steps: every host renders the
same frame, and editing a layout changes nothing until the campaigns using it are applied again
(as for a campaign's own text: the files live in git, the database holds what runs). A layout is
a template like a step's html, plus ``{{ content }}`` (the step's HTML) — it must use both
``content`` and ``unsubscribe_url``: a marketing email's frame without an unsubscribe link is
refused at apply, not discovered in a complaint.
"""

from __future__ import annotations

import os
import re

from engine.templates import TemplateError, compile_check

LAYOUT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_LAYOUT_CHARS = 256 * 1024


class LayoutError(ValueError):
    """A layout that cannot be used; the message names the layout and the problem."""


def read_layout(directory: str, name: object) -> str:
    """The source of layout ``name`` under ``directory``, checked; raise LayoutError."""
    if not isinstance(name, str) or not LAYOUT_NAME.fullmatch(name):
        # a name, never a path: "../../etc/passwd" cannot be one
        raise LayoutError("expected a layout name: lowercase letters, digits, '-' and '_'")
    path = os.path.join(directory, f"{name}.html")
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read(MAX_LAYOUT_CHARS + 1)
    except FileNotFoundError:
        raise LayoutError(f"no layout {name!r} ({name}.html) in {directory}") from None
    except OSError as exc:
        raise LayoutError(f"layout {name!r}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise LayoutError(f"layout {name!r}: not UTF-8 text") from None
    if len(source) > MAX_LAYOUT_CHARS:
        raise LayoutError(f"layout {name!r}: larger than {MAX_LAYOUT_CHARS} characters")
    if "\x00" in source:
        raise LayoutError(f"layout {name!r}: holds a NUL character")
    try:
        used = compile_check(source, f"layout {name}", html=True, layout=True)
    except TemplateError as exc:
        raise LayoutError(f"layout {name!r}: {exc.problem}") from None
    missing = [n for n in ("content", "unsubscribe_url") if n not in used]
    if missing:
        raise LayoutError(f"layout {name!r}: must use {' and '.join('{{ ' + n + ' }}' for n in missing)}")
    return source
