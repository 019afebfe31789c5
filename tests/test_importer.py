"""CSV import: invalid rows reported by line without stopping, attributes and consent columns,
batches enrolled as they commit, an unknown column refused before anything is written."""

from __future__ import annotations

import codecs
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.exit_codes import RET_OK, RET_REJECTED
from db.models import Campaign, CampaignStep, Contact, Enrolment
from engine.campaigns import enrol
from engine.importer import CsvFormatError, import_csv
from ops.harness.daemon import base_env, cli

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
    assert result.returncode == RET_REJECTED, result.stderr  # the good rows are in; say some were not
    assert "8 row(s): 3 created, 0 updated, 5 invalid" in result.stdout
    assert "line 5: email:" in result.stderr and "line 9: consent.sms:" in result.stderr


# -- files as spreadsheets save them (issue 10, defect 20) --------------------------------------------

def names_by_id() -> dict[str, str]:
    return {c.external_id: c.name for c in Contact.select()}


def test_a_file_saved_by_excel_on_windows_is_read_as_cp1252(migrated_db: str, tmp_path: Path) -> None:
    # Given "CSV (Comma delimited)" from Excel on Windows: cp1252, CRLF, accented names
    path = tmp_path / "excel.csv"
    path.write_bytes("external_id,email,name\r\nu1,jose@example.com,José\r\nu2,zoe@example.com,Zoë Müller\r\n"
                     .encode("cp1252"))
    report = import_csv(path, default_region="US", progress=False)
    assert report.invalid == [] and report.created == 2
    assert names_by_id() == {"u1": "José", "u2": "Zoë Müller"}
    assert report.encoding == "cp1252"


def test_a_semicolon_separated_file_with_a_bom_is_read(migrated_db: str, tmp_path: Path) -> None:
    # Given "CSV UTF-8" from Excel in a locale whose list separator is ';' (most of Europe)
    path = tmp_path / "eu.csv"
    path.write_bytes(codecs.BOM_UTF8 + "external_id;email;phone;name\r\nu1;ana@example.com;+33612345678;Ana Ibáñez\r\n"
                     'u2;ben@example.com;;"Ben; the second"\r\n'.encode())
    report = import_csv(path, default_region="US", progress=False)
    assert report.invalid == [] and report.created == 2
    assert names_by_id() == {"u1": "Ana Ibáñez", "u2": "Ben; the second"}
    assert (report.encoding, report.delimiter) == ("utf-8-sig", ";")


def test_a_tab_separated_utf16_file_is_read(migrated_db: str, tmp_path: Path) -> None:
    # Given Excel's "Unicode Text": UTF-16 with a BOM, tab-separated
    path = tmp_path / "unicode.txt"
    path.write_bytes("external_id\temail\tname\r\nu1\tli@example.com\t李雷\r\n".encode("utf-16"))
    report = import_csv(path, default_region="US", progress=False)
    assert report.invalid == [] and names_by_id() == {"u1": "李雷"}
    assert report.delimiter == "\t"


def test_an_oversized_field_is_a_row_error_and_the_rest_goes_on(migrated_db: str, tmp_path: Path) -> None:
    # Given a 200 KB field between two good rows (a pasted blob)
    path = tmp_path / "big.csv"
    path.write_text("external_id,email,name\nu1,a@example.com,Ada\nu2,b@example.com," + "x" * 200_000
                    + "\nu3,c@example.com,Cy\n")
    report = import_csv(path, default_region="US", progress=False)
    assert [(line, field) for line, field, _ in report.invalid] == [(3, "row")]
    assert "a field is longer than 65536 characters" in report.invalid[0][2]
    assert names_by_id() == {"u1": "Ada", "u3": "Cy"}


def test_bytes_the_named_encoding_cannot_read_reject_their_row_only(migrated_db: str, tmp_path: Path) -> None:
    # Given a file read as cp1252 (named by the operator) with a byte cp1252 leaves undefined (0x81) in row 2
    path = tmp_path / "mixed.csv"
    path.write_bytes("external_id,name\nu1,José\n".encode("cp1252") + b"u2,Bad\x81Byte\n"
                     + "u3,Renée\n".encode("cp1252"))
    report = import_csv(path, default_region="US", progress=False, encoding="cp1252")
    assert [(line, field) for line, field, _ in report.invalid] == [(3, "name")]
    assert names_by_id() == {"u1": "José", "u3": "Renée"}


_SEPARATORS = [",", ";", "\t", "|"]
_counter = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
                      .filter(lambda n: n.strip() == n and n.strip()), min_size=1, max_size=8),
       delimiter=st.sampled_from(_SEPARATORS), bom=st.booleans())
def test_any_name_survives_any_separator(migrated_db: str, tmp_path: Path, names: list[str], delimiter: str,
                                         bom: bool) -> None:
    import csv

    # Given names with separators, quotes and any script, written as a spreadsheet would quote them
    run = next(_counter)
    path = tmp_path / f"p{run}.csv"
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["external_id", "name"])
        writer.writerows([f"p{run}-{i}", name] for i, name in enumerate(names))
    report = import_csv(path, default_region="US", progress=False)
    assert report.invalid == []
    stored = {c.external_id: c.name for c in Contact.select().where(Contact.external_id.startswith(f"p{run}-"))}
    assert stored == {f"p{run}-{i}": name for i, name in enumerate(names)}


def test_cli_import_exits_0_when_every_row_was_taken(sqlite_url: str, tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    path = tmp_path / "ok.csv"
    path.write_bytes("external_id;name\r\nu1;José\r\n".encode("cp1252"))
    result = cli("contacts", "import", "--no-progress", str(path), env=env)
    assert result.returncode == RET_OK, result.stderr
    assert "1 row(s): 1 created" in result.stdout
    assert "cp1252" in result.stderr  # says how it read a file that was not UTF-8
    assert "Traceback" not in result.stderr


def test_a_huge_line_is_never_held_in_memory_whole(migrated_db: str, tmp_path: Path) -> None:
    import tracemalloc

    # Given a 30 MB line (no newline in it) between two good rows
    path = tmp_path / "huge.csv"
    with path.open("w") as fh:
        fh.write("external_id,name\nu1,Ada\nu2,")
        for _ in range(30):
            fh.write("y" * 1_000_000)
        fh.write("\nu3,Cy\n")
    tracemalloc.start()
    try:
        report = import_csv(path, default_region="US", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then the line is one row error, the others are in, and memory stayed far below the line's size
    assert [(line, field) for line, field, _ in report.invalid] == [(3, "row")]
    assert names_by_id() == {"u1": "Ada", "u3": "Cy"}
    assert peak < 10_000_000, f"peak {peak} bytes"


# -- a NUL character: PostgreSQL text cannot hold one (issue 10, follow-up defect 6) -------------

NUL_CSV = ("email,name,attributes.plan\n"
           "before@example.com,Before,free\n"
           "nul@example.com,a\x00b,free\n"  # line 3: NUL in the name
           "attr@example.com,Attr,pro\x00\n"  # line 4: NUL in an attribute
           "after@example.com,After,free\n")


def test_a_nul_character_rejects_its_row_and_the_rest_is_imported(migrated_db: str, tmp_path: Path) -> None:
    # Given a CSV whose rows hold a NUL character (on both engines: SQLite took it, PostgreSQL crashed)
    path = tmp_path / "nul.csv"
    path.write_text(NUL_CSV)
    # When it is imported
    report = import_csv(path, default_region="US", progress=False)
    # Then those rows are reported, and the others are in
    assert [(line, field) for line, field, _ in report.invalid] == [(3, "name"), (4, "attributes")]
    assert sorted(c.email for c in Contact.select()) == ["after@example.com", "before@example.com"]


@pytest.mark.postgres
def test_cli_import_of_a_nul_row_on_postgresql_exits_6(pg_url: str, tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=pg_url)
    assert cli("migrate", env=env).returncode == 0
    path = tmp_path / "nul.csv"
    path.write_text(NUL_CSV)
    result = cli("contacts", "import", "--no-progress", str(path), env=env)
    assert result.returncode == RET_REJECTED, result.stderr
    assert "Traceback" not in result.stderr
    assert "4 row(s): 2 created, 0 updated, 2 invalid" in result.stdout
    assert "line 3: name:" in result.stderr and "line 4: attributes:" in result.stderr


# -- a duplicated column (issue 10, follow-up defect 11) ----------------------------------------

@pytest.mark.parametrize(("header", "column"), [("email,email", "email"), ("external_id,name,attributes.plan,"
                                                                          "attributes.plan", "attributes.plan"),
                                                ("email, email ", "email")])
def test_a_duplicated_column_is_refused_before_anything_is_written(migrated_db: str, tmp_path: Path,
                                                                   header: str, column: str) -> None:
    # Given a header naming a column twice (which value would win was never said)
    path = tmp_path / "dup.csv"
    width = header.count(",") + 1
    path.write_text(f"{header}\n" + ",".join(["a@example.com"] * width) + "\n")
    # Then the file is refused, naming the column, and nothing is imported
    with pytest.raises(CsvFormatError, match=f"column {column!r} appears twice"):
        import_csv(path, default_region="US", progress=False)
    assert Contact.select().count() == 0


def test_cli_refuses_a_duplicated_column_in_one_line(sqlite_url: str, tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=sqlite_url)
    assert cli("migrate", env=env).returncode == 0
    path = tmp_path / "dup.csv"
    path.write_text("email,name,email\na@example.com,A,b@example.com\n")
    result = cli("contacts", "import", "--no-progress", str(path), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["retentiond: error: dup.csv: column 'email' appears twice "
                                                  "(columns 1 and 3)"]
