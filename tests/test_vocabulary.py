"""The project's basic words are defined once, in ground/vocabulary.py, and read from there: no
event type or inbound-event status is written out by hand in the daemon's code; every webhook
scheme has an interpreter and nothing else does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.events import INTERPRETERS
from ground.vocabulary import EVENT_TYPES, WEBHOOK_SCHEMES, EventType, InboundStatus

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("daemon", "actors", "engine", "db", "ground")
VOCABULARY = REPO / "ground" / "vocabulary.py"

# "failed" is also a send status, an outcome and a delivery status (ground/send_states.py,
# DELIVERY_STATUSES): the text alone cannot say which, so it is not scanned for.
INBOUND_WORDS = {str(status) for status in InboundStatus} - {"failed"}


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring constants of a module, its classes and functions: prose, not words."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def written_out(words: set[str]) -> list[str]:
    """``file:line: 'word'`` for each string constant equal to one of ``words`` in the scanned
    packages (migrations keep their own frozen copies; ground/vocabulary.py is where they live)."""
    hits: list[str] = []
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == VOCABULARY or "migrations" in path.relative_to(REPO).parts:
                continue
            tree = ast.parse(path.read_text(), str(path))
            prose = _docstrings(tree)
            lines = sorted((node.lineno, node.value) for node in ast.walk(tree)
                           if isinstance(node, ast.Constant) and node.value in words and id(node) not in prose)
            hits.extend(f"{path.relative_to(REPO)}:{line}: {word!r}" for line, word in lines)
    return hits


def test_event_types_are_written_only_in_the_vocabulary() -> None:
    # Given the event types (the public five and the internal contact.resubscribe)
    # When the daemon's code is scanned for them as string constants
    # Then none is found outside ground/vocabulary.py: they are read as EventType members
    assert written_out({str(kind) for kind in EventType}) == []


def test_inbound_statuses_are_written_only_in_the_vocabulary() -> None:
    assert written_out(INBOUND_WORDS) == []


def test_the_scan_finds_a_word_written_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The scan itself: a bare event type in code is found, the same text in a docstring is not.
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "bad.py").write_text('"""About a click."""\n\ndef f(kind):\n'
                                                '    """click"""\n    return kind == "click"\n')
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    monkeypatch.setattr(f"{__name__}.SCANNED", ("engine",))
    assert written_out({"click"}) == ["engine/bad.py:5: 'click'"]


def test_campaign_files_and_senders_take_only_the_public_event_types() -> None:
    # contact.resubscribe is what an SMS START means inside the daemon, not a word of the contract
    assert set(EVENT_TYPES) == set(EventType) - {EventType.CONTACT_RESUBSCRIBE}
    assert "contact.resubscribe" not in EVENT_TYPES


def test_every_webhook_scheme_has_its_interpreter_and_only_those() -> None:
    assert set(map(str, INTERPRETERS)) == set(map(str, WEBHOOK_SCHEMES))
