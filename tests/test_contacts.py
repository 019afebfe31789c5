"""Contacts: normalisation, validation naming the field, merge rules, constant queries per batch,
concurrent upserts, suppressions. Both engines."""

from __future__ import annotations

import multiprocessing

import pytest

from db.database import close_database, init_database
from db.models import Contact, Suppression
from engine.contacts import (
    InvalidContact,
    find_contact,
    normalise_email,
    normalise_phone,
    parse_contact,
    suppress,
    unsuppress,
    upsert_contacts,
)


def parse(**data: object):  # type: ignore[no-untyped-def]
    return parse_contact(data, "US")


@pytest.mark.parametrize(("raw", "expected"), [
    ("Ada@Example.COM", "ada@example.com"), ("  grace@example.org ", "grace@example.org"),
])
def test_emails_are_normalised(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(("raw", "region", "expected"), [
    ("(201) 555-0123", "US", "+12015550123"), ("+44 7911 123456", "US", "+447911123456"),
    ("07911 123456", "GB", "+447911123456"), ("06 12 34 56 78", "FR", "+33612345678"),
])
def test_phones_become_e164(raw: str, region: str, expected: str) -> None:
    assert normalise_phone(raw, region) == expected


@pytest.mark.parametrize(("data", "field"), [
    ({"email": "not-an-email"}, "email"), ({"phone": "12"}, "phone"), ({"phone": "+1 555 0000"}, "phone"),
    ({"email": "a@example.com", "timezone": "Mars/Olympus"}, "timezone"), ({"name": "no key"}, "external_id"),
    ({"external_id": "x", "consent": {"fax": True}}, "consent"), ({"external_id": "x", "consent": {"sms": "yes"}}, "consent"),
    ({"external_id": "x", "attributes": [1]}, "attributes"), ({"external_id": "x", "favourite": "blue"}, "favourite"),
])
def test_invalid_fields_are_named(data: dict, field: str) -> None:
    with pytest.raises(InvalidContact) as caught:
        parse(**data)
    assert caught.value.field == field and str(caught.value).startswith(f"{field}: ")


def test_create_then_update_by_each_key(migrated_db: str) -> None:
    (created,) = upsert_contacts([parse(external_id="u1", email="ada@example.com", name="Ada",
                                        attributes={"plan": "free"}, consent={"sms": True})])
    assert created.created
    by_email, = upsert_contacts([parse(email="ADA@example.com", phone="201-555-0100", attributes={"seats": "3"})])
    by_phone, = upsert_contacts([parse(phone="+12015550100", name="Ada L.", consent={"email": False})])
    assert by_email.contact_id == by_phone.contact_id == created.contact_id
    assert not by_email.created and not by_phone.created
    ada = Contact.get_by_id(created.contact_id)
    assert (ada.external_id, ada.email, ada.phone, ada.name) == ("u1", "ada@example.com", "+12015550100", "Ada L.")
    assert ada.attributes == {"plan": "free", "seats": "3"}
    assert ada.consent == {"sms": True, "email": False}


def test_a_key_owned_by_another_contact_is_not_moved(migrated_db: str) -> None:
    ada, bob = upsert_contacts([parse(external_id="ada", email="ada@example.com"),
                                parse(external_id="bob", phone="+12015550199")])
    (result,) = upsert_contacts([parse(external_id="ada", phone="+12015550199")])
    assert result.contact_id == ada.contact_id and result.conflicts == ("phone",)
    assert Contact.get_by_id(bob.contact_id).phone == "+12015550199"
    assert Contact.get_by_id(ada.contact_id).phone is None


def test_duplicates_within_a_batch_merge_even_through_a_chain(migrated_db: str) -> None:
    results = upsert_contacts([parse(email="a@example.com", name="first"),
                               parse(email="a@example.com", phone="+12015550111"),
                               parse(phone="+12015550111", external_id="ext-a", name="last"),
                               parse(external_id="other")])
    assert len({r.contact_id for r in results[:3]}) == 1 and results[3].contact_id != results[0].contact_id
    merged = Contact.get_by_id(results[0].contact_id)
    assert (merged.email, merged.phone, merged.external_id, merged.name) == (
        "a@example.com", "+12015550111", "ext-a", "last")
    assert Contact.select().count() == 2


def test_a_batch_costs_the_same_statements_for_10_or_1000_contacts(migrated_db: str, statements) -> None:  # type: ignore[no-untyped-def]
    def batch(n: int, offset: int) -> list:
        # half already known (updated), half new
        return [parse(external_id=f"e{offset + i}", email=f"p{offset + i}@example.com", name=f"n{i}")
                for i in range(n)]
    upsert_contacts(batch(5, 0))
    upsert_contacts(batch(500, 10_000))
    statements.count = 0
    upsert_contacts(batch(10, 0))
    small = statements.count
    statements.count = 0
    upsert_contacts(batch(1000, 10_000 - 500 + 500))
    large = statements.count
    assert small == large <= 6, (small, large)


def _upsert_in_child(url: str, results) -> None:  # type: ignore[no-untyped-def]
    init_database(url)
    ids = [upsert_contacts([parse(email="race@example.com", external_id="race")])[0].contact_id
           for _ in range(20)]
    results.put(set(ids))
    close_database()


def test_two_processes_upserting_the_same_new_contact_make_one(migrated_db: str) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    children = [context.Process(target=_upsert_in_child, args=(migrated_db, results)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    ids = results.get(timeout=5) | results.get(timeout=5)
    assert len(ids) == 1
    assert Contact.select().where(Contact.email == "race@example.com").count() == 1


def test_find_contact_normalises_the_key(migrated_db: str) -> None:
    (ada,) = upsert_contacts([parse(email="ada@example.com", phone="+12015550100")])
    assert find_contact({"email": "ADA@example.com"}, "US").id == ada.contact_id
    assert find_contact({"phone": "(201) 555-0100"}, "US").id == ada.contact_id
    assert find_contact({"external_id": "nobody"}, "US") is None


def test_suppress_and_unsuppress_are_idempotent(migrated_db: str) -> None:
    (ada,) = upsert_contacts([parse(email="ada@example.com")])
    suppress([ada.contact_id], "STOP", channel="sms")
    suppress([ada.contact_id], "STOP", channel="sms")
    assert Suppression.select().count() == 1
    unsuppress([ada.contact_id], channel="sms")
    unsuppress([ada.contact_id], channel="sms")
    assert Suppression.select().count() == 0
