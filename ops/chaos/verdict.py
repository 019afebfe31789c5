"""What one scenario measured and its verdict, as a benchmark ``Section`` (same JSON and markdown
shape as ``make bench``): delivered/expected, duplicates, the time to recover from the fault's end,
and PASS/FAIL against the scenario's targets. Every target here is a correctness check (nothing
lost, nothing sent twice beyond the bound, recovered within the window): a failed one makes
``make chaos`` exit 1."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ops.bench.common import Section

TABLE_HEAD = ["| scenario | fault | delivered / expected | duplicates | ready after fault | all delivered after fault "
              "| verdict |", "|---|---|---|---|---|---|---|"]


def seconds(value: float | None, missing: str = "not within the window") -> str:
    return missing if value is None else f"{value:.1f} s"


@dataclass
class Outcome:
    name: str
    fault: str  # what was done, in a few words
    expected: int
    delivered: int
    duplicates: int
    duplicate_bound: int = 0  # duplicates allowed (kill -9: the calls on the wire)
    ready_after_s: float | None = None  # fault's end -> /health/ready 200
    recovered_after_s: float | None = None  # fault's end -> all delivered (0: all went out before it ended)
    window_s: float = 0.0  # how long after the fault's end "all delivered" was waited for
    checks: dict[str, bool] = field(default_factory=dict)  # scenario-specific ones, added to the common ones
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def section(self) -> Section:
        checks = {
            f"nothing lost: {self.expected} delivered within {self.window_s:.0f} s of the fault's end":
                self.delivered >= self.expected and self.recovered_after_s is not None,
            f"duplicates <= {self.duplicate_bound}": self.duplicates <= self.duplicate_bound,
            **self.checks,
        }
        section = Section(name=self.name, title=f"{self.name}: {self.fault}", table=[], checks=checks,
                          figures={"fault": self.fault, "expected": self.expected, "delivered": self.delivered,
                                   "duplicates": self.duplicates, "duplicate_bound": self.duplicate_bound,
                                   "ready_after_s": self.ready_after_s, "recovered_after_s": self.recovered_after_s,
                                   "window_s": self.window_s, **self.figures},
                          notes=list(self.notes))
        section.table = [*TABLE_HEAD, self.row(section.ok)]
        return section

    def row(self, ok: bool) -> str:
        bound = f" (bound {self.duplicate_bound})" if self.duplicate_bound else ""
        return (f"| {self.name} | {self.fault} | {self.delivered} / {self.expected} | {self.duplicates}{bound} | "
                f"{seconds(self.ready_after_s, '-')} | {seconds(self.recovered_after_s)} | "
                f"{'PASS' if ok else 'FAIL'} |")


def summary_row(section: Section) -> str:
    """The scenario's row for the suite's summary table (its own table's last line)."""
    if len(section.table) > len(TABLE_HEAD):
        return section.table[-1]
    return f"| {section.name} | could not run | - | - | - | - | FAIL |"
