"""What the CLI prints for an operator: a campaign's funnel as a table, a rendered message."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from engine.analytics import CampaignReport, Funnel
from engine.preview import Preview


def _console() -> Console:
    """The terminal's width; piped or redirected, wide enough that no figure is cut (rich's 80
    columns would abbreviate them)."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _bar(part: int, whole: int, width: int = 12) -> str:
    filled = round(width * part / whole) if whole else 0
    return "█" * filled + "·" * (width - filled)


def _row(label: str, channel: str, f: Funnel, top: int) -> list[str]:
    return [label, channel, str(f.planned), f"{f.sent} {_bar(f.sent, top)}", str(f.delivered), str(f.failed),
            str(f.skipped), str(f.in_flight), str(f.unique_clicks), _rate(f.click_through_rate), str(f.converted),
            _rate(f.conversion_rate), f"{f.revenue:,.2f}"]


def print_funnel(report: CampaignReport, console: Console | None = None) -> None:
    """The funnel per step and overall, the enrolments, and why sends were skipped."""
    console = console or _console()
    campaign = report.campaign
    table = Table(title=f"{campaign.slug}: {campaign.name}", title_justify="left")
    for heading in ("step", "channel", "planned", "sent", "delivered", "failed", "skipped", "in flight", "clicked",
                    "CTR", "converted", "conv.", "revenue"):
        table.add_column(heading, justify="left" if heading in ("step", "channel", "sent") else "right")
    top = max([report.overall.planned, 1])
    for step in report.steps:
        label = "(deleted)" if step.position is None else str(step.position)
        table.add_row(*_row(label, step.channel or "-", step.funnel, top))
    table.add_section()
    table.add_row(*_row("all", "", report.overall, top))
    console.print(table)
    enrolled = ", ".join(f"{status} {n}" for status, n in sorted(report.enrolled.items())) or "none"
    console.print(f"enrolled: {enrolled}")
    if report.overall.skipped_by_reason:
        console.print("skipped: " + ", ".join(f"{why} {n}" for why, n in sorted(report.overall.skipped_by_reason.items())))
    console.print(f"clicks {report.overall.clicks}, conversions {report.overall.conversions}; "
                  f"CTR = unique clickers / sent, conversion = converting contacts / sent")


def print_message(message: Preview, console: Console | None = None) -> None:
    console = console or _console()
    console.print(f"channel: {message.channel}    to: {message.recipient or '-'}", markup=False)
    if message.subject is not None:
        console.print(f"subject: {message.subject}", markup=False)
    console.print("", markup=False)
    console.print(message.body, markup=False)
    if message.html is not None:
        console.rule("html part")
        console.print(message.html, markup=False)
    for url, tracked in message.links:
        console.print(f"link: {tracked} -> {url}", markup=False)
