"""The channel table (ground/channels.py) is the one list of channels every layer reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from db.models import Contact
from engine.campaign_file import CampaignFileError, parse_campaign_text
from ground.channels import CHANNELS, channel_of_actor
from ground.settings import load_settings


@pytest.mark.parametrize("value", [["sms"], {"sms": 1}, None, 3, "SMS", "sms "])
def test_anything_but_a_channel_name_is_not_a_channel_even_unhashable(value: object) -> None:
    # Given a value from a payload or a YAML file, when it is looked up, then the answer is no, never a TypeError
    assert value not in CHANNELS
    assert CHANNELS.get(value) is None


@pytest.mark.parametrize("bad", ["[sms]", "{sms: 1}"])
def test_a_step_whose_channel_is_a_list_or_a_mapping_is_a_file_error_naming_the_field(bad: str) -> None:
    text = f"slug: s\nname: S\ntrigger: manual\nsteps:\n  - channel: {bad}\n    delay: 0s\n    body: hi\n"
    with pytest.raises(CampaignFileError) as caught:
        parse_campaign_text(text, "s.yaml")
    assert "steps[0].channel" in str(caught.value)


def test_settings_actors_and_checks_read_the_same_table() -> None:
    settings = load_settings(environ={})
    assert set(settings.rates) == set(settings.concurrency) == set(settings.channel_providers) == set(CHANNELS)
    for channel in CHANNELS.values():
        assert channel_of_actor(channel.actor_name) == channel.name
        assert channel.queue_name == f"retentiond.{channel.name}"
    assert channel_of_actor("process_events") is None


# -- channel names are written out in ground/channels.py only -------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("daemon", "actors", "engine", "db", "ground")
CONTACT_FIELDS = {f.name for f in Contact._meta.sorted_fields}  # "email" is a channel and a field

# What the rules below cannot tell apart, each checked by hand: (file, the line, stripped).
ALLOWED = {
    # the contact's email address as a field of the contact, not the channel
    ("engine/contacts.py", 'raise InvalidContact("email", f"not a valid email address ({exc})") from None'),
    ("engine/contacts.py", 'email = _text(data, "email", 320)'),
    ("engine/events.py", 'key[name] = (normalise_email(text) if name == "email"'),
    ("engine/contacts.py", 'return "email", normalise_email(str(key["email"]))'),
}
ALLOWED_IN_FILE: set[tuple[str, str]] = set()  # (file, name) allowed anywhere in that file


def _is_field_name(node: ast.Constant, parent: ast.AST, grandparent: ast.AST | None) -> bool:
    """``node`` (a contact field's name) used as a field name: a mapping key, a subscript, the key of
    ``.get``/``getattr``, one of a list of contact fields, or a (field, value) pair among such pairs."""
    if node.value not in CONTACT_FIELDS:
        return False
    if isinstance(parent, ast.Dict):
        return any(key is node for key in parent.keys)
    if isinstance(parent, ast.Subscript):
        return parent.slice is node
    if isinstance(parent, ast.Call):
        func = parent.func
        return ((isinstance(func, ast.Attribute) and func.attr == "get" and parent.args[:1] == [node])
                or (isinstance(func, ast.Name) and func.id == "getattr" and parent.args[1:2] == [node]))
    if isinstance(parent, (ast.Tuple, ast.List, ast.Set)):
        if any(_other_field(e, node) for e in parent.elts):
            return True
        # ("email", args.email) among ("external_id", ...), ("phone", ...) pairs
        return (parent.elts[:1] == [node] and isinstance(grandparent, (ast.Tuple, ast.List))
                and any(isinstance(pair, ast.Tuple) and pair.elts and _other_field(pair.elts[0], node)
                        for pair in grandparent.elts))
    return False


def _other_field(element: ast.AST, node: ast.Constant) -> bool:
    return (element is not node and isinstance(element, ast.Constant) and element.value in CONTACT_FIELDS
            and element.value not in CHANNELS)


def _provider_names(tree: ast.Module) -> set[int]:
    """The ids of the constants that define ProviderName's members (a provider "webhook" or "push")."""
    return {id(statement.value) for cls in tree.body if isinstance(cls, ast.ClassDef) and cls.name == "ProviderName"
            for statement in cls.body if isinstance(statement, ast.Assign)}


def channel_names_written_out() -> list[str]:
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "ground/channels.py" or relative.startswith("db/migrations/"):
                continue
            source = path.read_text()
            tree = ast.parse(source)
            lines = source.splitlines()
            parents = {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
            providers = _provider_names(tree) if relative == "ground/vocabulary.py" else set()
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in CHANNELS):
                    continue
                parent = parents[id(node)]
                if id(node) in providers or _is_field_name(node, parent, parents.get(id(parent))):
                    continue
                line = lines[node.lineno - 1].strip()
                if (relative, line) not in ALLOWED and (relative, node.value) not in ALLOWED_IN_FILE:
                    found.append(f"{relative}:{node.lineno}: {node.value!r} in {line}")
    return found


def test_channel_names_are_written_out_in_the_channel_table_only() -> None:
    # Given the layers' code (migrations freeze their own copies), when it means one channel in
    # particular, then it names it with ChannelName or reads a flag of the table, never "sms"
    assert channel_names_written_out() == []


def test_the_scan_finds_a_channel_name_written_out() -> None:
    # Given a comparison with a channel name, then the scan would report it (the rules above are
    # not so broad that they pass everything)
    tree = ast.parse('if channel == "email" and key["email"]: pass')
    constants = [n for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    parents = {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    compared, keyed = constants
    assert not _is_field_name(compared, parents[id(compared)], None)
    assert _is_field_name(keyed, parents[id(keyed)], None)
