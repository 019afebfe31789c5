"""CSV import: invalid rows reported by line without stopping, attributes and consent columns,
batches enrolled as they commit, an unknown column refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.models import Campaign, CampaignStep, Contact, Enrolment
from engine.campaigns import enrol
from engine.importer import CsvFormatError, import_csv
from tests.support.daemon import base_env, cli

CSV = (
    "external_id,email,phone,name,timezone,attributes.plan,consent.sms\n"
    "u1,ada@example.com,(201) 555-0101,Ada,America/New_York,pro,true\n"
    'u2,grace@example.com,,"Grace\nHopper",Europe/London,free,no\n'  # a quoted name over two lines
    "u3,not-an-email,,Broken,,free,\n"  # line 5: bad email
    "u4,linus@example.com,12,Linus,,free,\n"  # line 6: bad phone
    "u5,ken@example.com,,Ken,Mars/Base,free,\n"  # line 7: bad timezone
    ",,,Nobody,,,\n"  # line 8: no key
    "u9,dennis@example.com,,Dennis,,free,maybe\n"  # line 9: bad consent value
    "u10,bjarne@example.com,,Bjarne,,,\n"
)


def test_invalid_rows_are_reported_by_line_and_the_rest_imported(migrated_db: str, tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    batches: list[list[int]] = []
    report = import_csv(path, default_region="US", batch_size=2, progress=False, on_batch=batches.append)
    assert [(line, field) for line, field, _ in report.invalid] == [
        (5, "email"), (6, "phone"), (7, "timezone"), (8, "external_id"), (9, "consent.sms")]
    assert (report.rows, report.created, report.updated) == (8, 3, 0)
    ada = Contact.get(Contact.external_id == "u1")
    assert (ada.phone, ada.attributes, ada.consent) == ("+12015550101", {"plan": "pro"}, {"sms": True})
    grace = Contact.get(Contact.external_id == "u2")
    assert grace.name == "Grace\nHopper" and grace.consent == {"sms": False}
    assert sorted(i for b in batches for i in b) == sorted(c.id for c in Contact.select())
    assert len(batches) == 2  # batches of 2: u1+u2, then u10
    again = import_csv(path, default_region="US", progress=False)
    assert (again.created, again.updated) == (0, 3)


def test_an_unknown_column_writes_nothing(migrated_db: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("external_id,emial\nu1,a@example.com\n")
    with pytest.raises(CsvFormatError, match="unknown column 'emial'"):
        import_csv(path, default_region="US", progress=False)
    assert Contact.select().count() == 0


def test_import_with_enrolment_in_the_same_transaction(migrated_db: str, tmp_path: Path) -> None:
    campaign = Campaign.create(slug="welcome", name="W")
    CampaignStep.create(campaign=campaign.id, position=0, channel="sms", body="hi")
    path = tmp_path / "c.csv"
    path.write_text("external_id,phone\n" + "".join(f"x{i},+1201555{i:04d}\n" for i in range(25)))
    import_csv(path, default_region="US", batch_size=10, progress=False, on_batch=lambda ids: enrol(ids, campaign))
    assert Enrolment.select().count() == 25


def test_cli_import_prints_a_summary_and_the_bad_lines(sqlite_url: str, tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    result = cli("contacts", "import", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "8 row(s): 3 created, 0 updated, 5 invalid" in result.stdout
    assert "line 5: email:" in result.stderr and "line 9: consent.sms:" in result.stderr
