"""A campaign and its contacts set up through the CLI, as a user does before ``retentiond run``:
migrate, ``campaign apply`` a file, ``contacts import`` a CSV into the campaign."""

from __future__ import annotations

import csv
from pathlib import Path

from ops.harness.daemon import cli

ONE_STEP = """\
slug: one-step
name: One step
trigger: manual
steps:
  - channel: sms
    delay: 0s
    body: "Hi {{ contact.name }}"
"""


def write_contacts(path: Path, count: int) -> Path:
    """A CSV of ``count`` contacts with an email, a phone, a name and a timezone."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["external_id", "email", "phone", "name", "timezone"])
        for i in range(count):
            writer.writerow([f"c{i}", f"person{i}@example.com", f"+1201555{i:04d}", f"Person {i}", "Europe/Paris"])
    return path


def prepare(env: dict[str, str], tmp_path: Path, campaign: str, contacts: int, slug: str) -> None:
    """Migrate, apply the ``campaign`` file and import ``contacts`` contacts into campaign ``slug``."""
    assert cli("migrate", env=env).returncode == 0
    (tmp_path / "campaign.yaml").write_text(campaign)
    applied = cli("campaign", "apply", str(tmp_path / "campaign.yaml"), env=env)
    assert applied.returncode == 0, applied.stderr
    imported = cli("contacts", "import", str(write_contacts(tmp_path / "contacts.csv", contacts)),
                   "--campaign", slug, "--no-progress", env=env, timeout_s=300)
    assert imported.returncode == 0, imported.stderr
