"""``retentiond`` — the command line. Every command loads the settings first; a bad one exits 2.

A command that cannot go on raises :class:`CliError`; :func:`main` alone prints it (one line on stderr)
and returns its exit code. Commands that use the database call :func:`need_database` first.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from daemon.exit_codes import RET_CONFIG, RET_CONNECT, RET_ERROR, RET_NOT_FOUND, RET_OK, RET_REJECTED
from ground.errors import ConfigError, RetentiondError
from ground.settings import Settings, load_settings

if TYPE_CHECKING:
    from db.models import Campaign


class CliError(RetentiondError):
    """A command cannot go on: ``main`` prints ``retentiond: error: <message>`` and exits ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that suggests the closest command for a mistyped one."""

    # Python 3.14's ArgumentParser(suggest_on_error=True) does this in the same method, with the same
    # wording; until 3.14 is the floor, this override does it for 3.11+. Subparsers inherit the class.
    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError:
            close = difflib.get_close_matches(value, list(action.choices or ()), n=1) if isinstance(value, str) else []
            if not close:
                raise
            choices = ", ".join(map(repr, action.choices or ()))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}, maybe you meant {close[0]!r}? (choose from {choices})") from None


def _command(group: argparse._SubParsersAction[_Parser], name: str, summary: str) -> _Parser:
    """A subcommand whose summary shows both in its group's list and at the top of its own --help."""
    return group.add_parser(name, help=summary, description=summary)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="retentiond",
        description="Outreach and retention campaigns: webhooks in, rate-limited sends out.",
        epilog="Settings come from RETENTIOND_* environment variables (see README), "
               "optionally from a TOML file given with --config; the environment wins.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="read settings from this TOML file too (RETENTIOND_* environment variables win)")
    parser.add_argument("--version", action="version", version=f"retentiond {_version()}",
                        help="print the installed version and exit")
    # Not required: a command left out prints the help of its level (see main), not an error.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(help_parser=parser)

    run = _command(commands, "run", "run the daemon: side server, scheduler and workers")
    run.add_argument("--processes", type=_positive_int, metavar="N", help="worker processes (RETENTIOND_PROCESSES, default 2; one on memory://)")
    run.add_argument("--threads", type=_positive_int, metavar="N", help="threads per worker process (RETENTIOND_THREADS, default 8)")
    run.set_defaults(handler=cmd_run)

    migrate = _command(commands, "migrate", "apply pending database migrations (idempotent)")
    migrate.set_defaults(handler=cmd_migrate)

    campaign = _command(commands, "campaign", "campaigns: apply YAML files, enrol contacts")
    campaign.set_defaults(help_parser=campaign)
    campaign_commands = campaign.add_subparsers(dest="campaign_command", metavar="ACTION")
    apply = _command(campaign_commands, "apply", "create or update campaigns from YAML files")
    apply.add_argument("files", nargs="+", metavar="FILE",
                       help="campaign YAML files (see README); every file is checked before any is applied")
    apply.set_defaults(handler=cmd_campaign_apply)
    enrol = _command(campaign_commands, "enrol", "enrol contacts in a campaign by hand")
    enrol.add_argument("slug", metavar="SLUG", help="the campaign's slug")
    enrol.add_argument("--external-id", action="append", default=[], metavar="ID",
                       help="a contact's external id (repeat for several contacts)")
    enrol.add_argument("--email", action="append", default=[], metavar="EMAIL",
                       help="a contact's email address (repeat for several contacts)")
    enrol.add_argument("--phone", action="append", default=[], metavar="PHONE",
                       help="a contact's phone number (repeat for several contacts)")
    enrol.set_defaults(handler=cmd_campaign_enrol)

    contacts = _command(commands, "contacts", "contacts: bulk import")
    contacts.set_defaults(help_parser=contacts)
    contacts_commands = contacts.add_subparsers(dest="contacts_command", metavar="ACTION")
    imp = _command(contacts_commands, "import", "bulk upsert contacts from a CSV file")
    imp.add_argument("file", metavar="FILE.csv",
                     help="a CSV file with a header line; columns named like the contact.upsert fields")
    imp.add_argument("--campaign", metavar="SLUG", help="enrol every imported contact in this campaign")
    imp.add_argument("--batch-size", type=_positive_int, default=1000, metavar="N",
                     help="rows upserted per transaction (default 1000)")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.add_argument("--encoding", metavar="NAME",
                     help="the file's text encoding, e.g. cp1251 (default: detected; UTF-8 when it is valid UTF-8)")
    imp.set_defaults(handler=cmd_contacts_import)

    stats = _command(commands, "stats", "sends, enrolments and events by status; a contact's history")
    stats.add_argument("--external-id", metavar="ID", help="show the history of the contact with this external id")
    stats.add_argument("--email", metavar="EMAIL", help="show the history of the contact with this email address")
    stats.add_argument("--phone", metavar="PHONE", help="show the history of the contact with this phone number")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=cmd_stats)

    report = _command(commands, "report", "how campaigns perform")
    report.set_defaults(help_parser=report)
    report_commands = report.add_subparsers(dest="report_command", metavar="WHAT")
    report_campaign = _command(report_commands, "campaign",
                               "a campaign's funnel per step: planned, sent, delivered, clicked, converted, revenue")
    report_campaign.add_argument("slug", metavar="SLUG", help="the campaign's slug")
    report_campaign.add_argument("--json", action="store_true",
                                 help="print the JSON of GET /api/v1/campaigns/SLUG/analytics (by channel and day too)")
    report_campaign.set_defaults(handler=cmd_report_campaign)

    preview = _command(commands, "preview", "render a campaign step for a contact (or the sample contact), send nothing")
    _step_arguments(preview)
    preview.add_argument("--json", action="store_true", help="print JSON")
    preview.set_defaults(handler=cmd_preview)

    test_send = _command(commands, "test-send",
                         "send a campaign step to an address through the channel's real provider, marked as a test")
    _step_arguments(test_send)
    test_send.add_argument("--to", required=True, metavar="ADDRESS",
                           help="the address on the step's channel (an email, a phone number...)")
    test_send.set_defaults(handler=cmd_test_send)

    cleanup = _command(commands, "cleanup", "delete rows past their retention, table by table")
    cleanup.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")
    cleanup.set_defaults(handler=cmd_cleanup)

    backup = _command(commands, "backup", "back the database up (SQLite online backup + gzip; pg_dump)")
    backup.add_argument("--keep", type=_positive_int, default=7, metavar="N", help="backups to keep (default 7)")
    backup.set_defaults(handler=cmd_backup)

    restore = _command(commands, "restore", "restore a backup made by `retentiond backup` (stop the daemon first)")
    restore.add_argument("file", metavar="FILE", help="a file written by `retentiond backup`")
    restore.set_defaults(handler=cmd_restore)

    simulate = _command(commands, "simulate-providers",
                                   "serve the provider APIs (Twilio, Postmark, webhook, push) for tests and try-outs")
    simulate.add_argument("--host", default="127.0.0.1", metavar="HOST", help="address to listen on (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=8025, metavar="P", help="port to listen on (default 8025)")
    simulate.add_argument("--latency-ms", type=float, default=0.0, metavar="L",
                          help="milliseconds to wait before answering each call (default 0)")
    simulate.add_argument("--error-rate", type=_fraction, default=0.0, metavar="R", help="share of calls answered 503")
    simulate.add_argument("--rate-429", type=_fraction, default=0.0, metavar="R", help="share of calls answered 429")
    simulate.add_argument("--postmark-webhook-url", metavar="URL",
                          help="post Postmark's Delivery/Bounce/SpamComplaint webhooks there (user:password@ = basic auth)")
    simulate.add_argument("--postmark-webhook-header", action="append", default=[], metavar="NAME:VALUE",
                          help="a custom header sent with those webhooks, such as a token source's token (repeatable)")
    simulate.add_argument("--callback-delay-ms", type=float, default=0.0, metavar="D",
                          help="milliseconds between answering a call and sending its receipts (default 0)")
    simulate.set_defaults(handler=cmd_simulate_providers)
    return parser


def _step_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slug", metavar="SLUG", help="the campaign's slug")
    parser.add_argument("step", type=int, metavar="STEP", help="the step's position, from 0")
    parser.add_argument("--external-id", metavar="ID", help="render for the contact with this external id")
    parser.add_argument("--email", metavar="EMAIL", help="render for the contact with this email address")
    parser.add_argument("--phone", metavar="PHONE", help="render for the contact with this phone number")


def _version() -> str:
    try:
        return importlib.metadata.version("retentiond")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        # `retentiond` or `retentiond campaign` alone: show what can follow; still a bad command line.
        args.help_parser.print_help()
        return RET_CONFIG
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    try:
        settings = load_settings(config_file=args.config,
                                 processes=getattr(args, "processes", None),
                                 threads=getattr(args, "threads", None))
        if handler is not cmd_run:  # run sets its logging up itself, with Sentry
            from daemon.logging_setup import setup_logging

            # Every command logs as LOG_FORMAT says (auto: text on a terminal, JSON lines otherwise):
            # a `migrate` from a deployment script lands in the same log pipeline as the daemon.
            setup_logging(settings.log_level, settings.log_format)
        code = handler(settings, args)
        sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at interpreter exit
        return code
    except CliError as exc:
        return _report(str(exc), exc.exit_code)
    except ConfigError as exc:  # a setting, from loading them or from a command (e.g. run's listener)
        return _report(str(exc), RET_CONFIG)
    except BrokenPipeError:
        if handler in (cmd_run, cmd_simulate_providers):
            raise  # long-running commands print little to stdout: a broken pipe there is a real fault
        # The reader went away (`retentiond stats --json | head`): what it did not want is no error.
        # Point stdout at /dev/null so the flush at exit does not fail again (Python's documented recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return RET_OK


def _report(message: str, exit_code: int) -> int:
    print(f"retentiond: error: {message}", file=sys.stderr)
    return exit_code


def need_database(settings: Settings, *, check_schema: bool = True) -> None:
    """Open the database and, unless told not to (``migrate`` itself), refuse one whose schema is behind.
    Raises :class:`CliError`: exit 3 when it cannot be reached, 2 when it needs migrating."""
    import peewee

    from db.database import db_session, init_database
    from db.migrate import pending_migrations

    init_database(settings.database_url, pool_size=settings.db_pool_size, timeout_s=settings.db_timeout_s)
    from engine import events_out
    events_out.configure(settings.destinations)  # the changes this process makes tell them
    try:
        with db_session():
            pass
    except peewee.PeeweeException as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CliError(f"RETENTIOND_DATABASE_URL: cannot connect ({type(exc).__name__}: {detail})",
                       RET_CONNECT) from exc
    if not check_schema:
        return
    pending = pending_migrations()
    if pending:
        raise CliError(f"the database needs migrating ({', '.join(pending)} pending): run `retentiond migrate`",
                       RET_CONFIG)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from db.migrate import migrate

    need_database(settings, check_schema=False)
    applied = migrate()
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ' (up to date)'}")
    return RET_OK


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    # prometheus_client picks its storage when first imported: multiprocess mode needs the
    # directory set before any module that defines metrics is imported.
    metrics_dir = tempfile.mkdtemp(prefix="retentiond-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        import asyncio

        from daemon.logging_setup import setup_logging, setup_sentry
        from daemon.supervisor import Daemon

        setup_logging(settings.log_level, settings.log_format)
        setup_sentry(settings.sentry_dsn)
        need_database(settings)
        return asyncio.run(Daemon(settings).run())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def cmd_campaign_apply(settings: Settings, args: argparse.Namespace) -> int:
    from engine.campaigns import CampaignFileError, apply_campaigns, load_campaign_file, template_warnings

    try:  # before the database: a file can be checked where no database is reachable
        specs = [load_campaign_file(path, settings.layouts_dir) for path in args.files]
    except CampaignFileError as exc:
        raise CliError(str(exc), RET_CONFIG) from exc
    need_database(settings)
    for warning in template_warnings(specs):
        print(f"retentiond: warning: {warning}", file=sys.stderr)
    for result in apply_campaigns(specs):
        print(f"{result.slug}: {result.action} (version {result.version})")
    return RET_OK


def _campaign(slug: str) -> Campaign:
    """The campaign with this slug; CliError (exit 5) when there is none."""
    from db.models import Campaign

    campaign = Campaign.get_or_none(Campaign.slug == slug)
    if campaign is None:
        raise CliError(f"no campaign {slug!r}", RET_NOT_FOUND)
    return campaign


def cmd_campaign_enrol(settings: Settings, args: argparse.Namespace) -> int:
    from engine.campaigns import enrol
    from engine.contacts import InvalidContact, find_contact

    need_database(settings)
    campaign = _campaign(args.slug)
    keys = ([{"external_id": v} for v in args.external_id] + [{"email": v} for v in args.email]
            + [{"phone": v} for v in args.phone])
    if not keys:
        raise CliError("name contacts with --external-id, --email or --phone", RET_CONFIG)
    ids, missing = [], []
    for key in keys:
        try:
            contact = find_contact(key, settings.default_region)
        except InvalidContact:
            contact = None
        if contact is None:
            missing.append(next(iter(key.values())))
        else:
            ids.append(contact.id)
    enrolled = enrol(ids, campaign) if ids else 0
    print(f"{args.slug}: {enrolled} newly enrolled, {len(ids) - enrolled} already enrolled")
    for key in missing:  # the enrolment went ahead: a partial result, listed, not one error line
        print(f"no such contact: {key}", file=sys.stderr)
    return RET_OK if not missing else RET_NOT_FOUND


def cmd_contacts_import(settings: Settings, args: argparse.Namespace) -> int:
    from engine.campaigns import enrol
    from engine.importer import CsvFormatError, import_csv

    need_database(settings)
    on_batch = None
    if args.campaign:
        campaign = _campaign(args.campaign)

        def on_batch(contact_ids: list[int]) -> None:
            enrol(contact_ids, campaign)
    if args.encoding:
        import codecs

        try:
            codecs.lookup(args.encoding)
        except LookupError as exc:
            raise CliError(f"--encoding: unknown encoding {args.encoding!r}", RET_CONFIG) from exc
    try:
        report = import_csv(args.file, default_region=settings.default_region, batch_size=args.batch_size,
                            progress=not args.no_progress, on_batch=on_batch, encoding=args.encoding)
    except (OSError, CsvFormatError) as exc:
        raise CliError(str(exc), RET_CONFIG) from exc
    if report.encoding not in ("utf-8", "utf-8-sig") and not args.encoding:
        # A guess: say it, so a wrong one is seen before 10,000 names are stored garbled.
        print(f"read as {report.encoding} (the file is not UTF-8; name another with --encoding)", file=sys.stderr)
    print(report.summary())
    for line, field, message in report.invalid[:100]:
        print(f"line {line}: {field}: {message}", file=sys.stderr)
    if len(report.invalid) > 100:
        print(f"... and {len(report.invalid) - 100} more invalid rows", file=sys.stderr)
    return RET_REJECTED if report.invalid else RET_OK


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from engine.history import contact_history
    from engine.stats import overview

    need_database(settings)
    contact = _named_contact(settings, args)
    if contact is not None:
        data = contact_history(contact)
        if args.json:
            print(json.dumps(data, indent=2))
            return RET_OK
        print(f"contact {data['contact']['id']}: {len(data['sends'])} send(s)")
        for d in reversed(data["decisions"]):
            until = f" until {d['until']}" if d["until"] else ""
            print(f"{d['at']}  {d['channel'] or '-':8} {d['campaign'] or '-':16} {d['outcome']:10}"
                  f"{until}  {d['reason'] or ''}")
        return RET_OK
    data = overview()
    if args.json:
        print(json.dumps(data, indent=2))
        return RET_OK
    print("sends:")
    for channel, statuses in sorted(data["sends"].items()):
        print(f"  {channel:8} " + ", ".join(f"{s} {n}" for s, n in sorted(statuses.items())))
    print("enrolments: " + ", ".join(f"{s} {n}" for s, n in sorted(data["enrolments"].items())))
    print("inbound events: " + ", ".join(f"{s} {n}" for s, n in sorted(data["inbound_events"].items())))
    print("jobs:")
    for job, last in sorted(data["jobs"].items()):
        print(f"  {job:18} last {last['last_started']} on {last['instance']}: {last['outcome']}, {last['items']} item(s)"
              + (f" ({last['error']})" if last["error"] else ""))
    return RET_OK


def cmd_report_campaign(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.reports import print_funnel
    from daemon.web.api.analytics import analytics_out
    from engine.analytics import campaign_report

    need_database(settings)
    report = campaign_report(_campaign(args.slug))
    if args.json:
        print(analytics_out(report).model_dump_json(indent=2))
    else:
        print_funnel(report)
    return RET_OK


def _step_for(settings: Settings, args: argparse.Namespace) -> tuple[Campaign, Any, Any]:
    """The campaign, its step and the contact the command names (None: the sample contact)."""
    from engine.preview import NoSuchStep, step_of

    need_database(settings)
    campaign = _campaign(args.slug)
    try:
        step = step_of(campaign, args.step)
    except NoSuchStep as exc:
        raise CliError(str(exc), RET_NOT_FOUND) from exc
    return campaign, step, _named_contact(settings, args)


def _named_contact(settings: Settings, args: argparse.Namespace) -> Any:
    """The contact named by --external-id, --email or --phone (None when none is given); exit 5
    when there is no such contact, 2 for a key that is none."""
    from engine.contacts import InvalidContact, find_contact

    key = {k: v for k, v in (("external_id", args.external_id), ("email", args.email), ("phone", args.phone)) if v}
    if not key:
        return None
    try:
        contact = find_contact(key, settings.default_region)
    except InvalidContact as exc:
        raise CliError(str(exc), RET_CONFIG) from exc
    if contact is None:
        raise CliError("no such contact", RET_NOT_FOUND)
    return contact


def cmd_preview(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from daemon.reports import print_message
    from engine.preview import preview
    from engine.templates import TemplateError

    _, step, contact = _step_for(settings, args)
    try:
        shown = preview(step, contact, settings.public_url)
    except TemplateError as exc:
        raise CliError(f"step {args.step} does not render: {exc}", RET_REJECTED) from exc
    if args.json:
        print(json.dumps({"channel": shown.channel, "recipient": shown.recipient, "subject": shown.subject,
                          "body": shown.body, "html": shown.html, "links": [{"url": u, "tracked": t} for u, t in shown.links]}, indent=2))
    else:
        print_message(shown)
    return RET_OK


def cmd_test_send(settings: Settings, args: argparse.Namespace) -> int:
    from actors.test_send import send_test
    from daemon.reports import print_message
    from engine.contacts import InvalidContact
    from engine.templates import TemplateError

    campaign, step, contact = _step_for(settings, args)
    try:
        sent = send_test(settings, campaign, step, args.to, contact)
    except TemplateError as exc:
        raise CliError(f"step {args.step} does not render: {exc}; nothing was sent", RET_REJECTED) from exc
    except InvalidContact as exc:
        raise CliError(f"--to: {exc}", RET_CONFIG) from exc
    print_message(sent.preview)
    if sent.error:
        print(f"test send {sent.send_id} failed at {sent.provider}: {sent.error}", file=sys.stderr)
        return RET_ERROR
    print(f"test send {sent.send_id} sent by {sent.provider} ({sent.provider_message_id or 'no message id'})")
    return RET_OK


def cmd_cleanup(settings: Settings, args: argparse.Namespace) -> int:
    from db.models import utcnow
    from engine.retention import cleanup

    need_database(settings)
    report = cleanup(settings, utcnow(), dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for table, count in report:
        print(f"{table:16} {verb} {count}")
    return RET_OK


# backup and restore work on the database's file or through pg_dump/pg_restore, not through a
# connection of ours: they do not call need_database, and their failures exit 1 (RET_ERROR).

def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    from db.backup import BackupError, backup

    try:
        path = backup(settings.database_url, settings.backup_dir, keep=args.keep)
    except BackupError as exc:
        raise CliError(str(exc), RET_ERROR) from exc
    except OSError as exc:  # disk full, permissions: one line, not a traceback
        raise CliError(f"backup failed: {exc}", RET_ERROR) from exc
    print(f"backup written: {path} ({path.stat().st_size} bytes)")
    return RET_OK


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    from db.backup import BackupError, restore

    try:
        done = restore(settings.database_url, args.file, backup_dir=settings.backup_dir,
                       scheduler_interval_s=settings.scheduler_interval_s)
    except BackupError as exc:  # a refusal: nothing was changed
        raise CliError(str(exc), RET_ERROR) from exc
    except OSError as exc:  # disk full, permissions: the live database is replaced last, so still in place
        raise CliError(f"restore failed: {exc}", RET_ERROR) from exc
    print(f"restored {args.file}" + (f"; the previous database is kept at {done.previous}" if done.previous else ""))
    if done.pending:
        print(f"the backup predates {len(done.pending)} migration(s): run `retentiond migrate` before `retentiond run`")
    return RET_OK


def cmd_simulate_providers(settings: Settings, args: argparse.Namespace) -> int:
    from ops.simulator import run_simulator

    return run_simulator(args.host, args.port, args.latency_ms, args.error_rate, args.rate_429,
                         postmark_webhook_url=args.postmark_webhook_url,
                         postmark_webhook_headers=args.postmark_webhook_header,
                         callback_delay_ms=args.callback_delay_ms)


if __name__ == "__main__":
    raise SystemExit(main())
