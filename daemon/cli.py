"""``retentiond`` — the command line. Every command loads the settings first; a bad one exits 2."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError
from daemon.exit_codes import RET_CONFIG, RET_CONNECT, RET_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retentiond",
        description="Outreach and retention campaigns: webhooks in, rate-limited sends out.",
        epilog="Settings come from RETENTIOND_* environment variables (see README), "
               "optionally from a TOML file given with --config; the environment wins.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the daemon: side server, scheduler and workers")
    run.add_argument("--processes", type=_positive_int, help="worker processes (RETENTIOND_PROCESSES, default 2)")
    run.add_argument("--threads", type=_positive_int, help="threads per worker process (RETENTIOND_THREADS, default 8)")
    run.set_defaults(handler=cmd_run)

    migrate = commands.add_parser("migrate", help="apply pending database migrations (idempotent)")
    migrate.set_defaults(handler=cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(config_file=args.config,
                                 processes=getattr(args, "processes", None),
                                 threads=getattr(args, "threads", None))
    except ConfigError as exc:
        print(f"retentiond: error: {exc}", file=sys.stderr)
        return RET_CONFIG
    handler: Callable[[Settings], int] = args.handler
    try:
        return handler(settings)
    except ConfigError as exc:
        print(f"retentiond: error: {exc}", file=sys.stderr)
        return RET_CONFIG


def _connect(settings: Settings) -> int | None:
    """Initialise the database; on failure print one line and return the exit code."""
    import peewee

    from db.database import db_session, init_database

    init_database(settings.database_url, pool_size=settings.db_pool_size, timeout_s=settings.db_timeout_s)
    try:
        with db_session():
            pass
    except peewee.PeeweeException as exc:
        print(f"retentiond: error: RETENTIOND_DATABASE_URL: cannot connect ({type(exc).__name__}: "
              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})", file=sys.stderr)
        return RET_CONNECT
    return None


def cmd_migrate(settings: Settings) -> int:
    from daemon.logging_setup import setup_logging
    from db.migrate import migrate

    setup_logging(settings.log_level, "text")
    failed = _connect(settings)
    if failed is not None:
        return failed
    applied = migrate()
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ' (up to date)'}")
    return RET_OK


def cmd_run(settings: Settings) -> int:
    # prometheus_client picks its storage when first imported: multiprocess mode needs the
    # directory set before any module that defines metrics is imported.
    metrics_dir = tempfile.mkdtemp(prefix="retentiond-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        import asyncio

        from daemon.logging_setup import setup_logging
        from daemon.supervisor import Daemon
        from db.migrate import pending_migrations

        setup_logging(settings.log_level, settings.log_format)
        failed = _connect(settings)
        if failed is not None:
            return failed
        pending = pending_migrations()
        if pending:
            print(f"retentiond: error: the database needs migrating ({', '.join(pending)} pending): "
                  "run `retentiond migrate`", file=sys.stderr)
            return RET_CONFIG
        return asyncio.run(Daemon(settings).run())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
