"""Reading database and broker URLs: libpq's reading of a PostgreSQL URL, and a URL safe to show."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import psycopg2.extensions

SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")


def postgres_params(url: str) -> dict[str, str]:
    """libpq's own reading of a ``postgresql://`` URL (``PQconninfoParse``): user, password, dbname,
    ``host`` and ``port`` as libpq's comma-separated lists when the URL names several hosts
    (``postgresql://u:p@db1:5432,db2:5433/app``), and every query parameter.

    With several hosts and no ``target_session_attrs``, ``read-write`` is added: libpq then skips a
    standby (or any server that says ``transaction_read_only = on``) and a failed-over primary
    that came back as a standby, instead of connecting to the first host that answers.
    Raises ValueError with a message that never quotes the URL (it may carry a password).
    """
    try:
        params: dict[str, str] = dict(psycopg2.extensions.parse_dsn(url))
    except psycopg2.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0].removeprefix("invalid dsn: ") if str(exc).strip() else ""
        password = urlsplit(url).password if "@" in url else None
        if not reason or "://" in reason or (password and password in reason):
            reason = "libpq cannot read it"
        raise ValueError(reason) from None
    if not params.get("dbname"):
        raise ValueError("a postgresql URL needs a database name")
    hosts = params.get("host", "").split(",")
    ports = params["port"].split(",") if "port" in params else []
    if len(ports) > 1 and len(ports) != len(hosts):
        raise ValueError(f"{len(ports)} port(s) for {len(hosts)} host(s): give one port for each host, or one for all")
    for port in ports:
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("a port is not a number between 1 and 65535")
    attrs = params.get("target_session_attrs")
    if attrs is not None and attrs not in SESSION_ATTRS:
        raise ValueError(f"target_session_attrs must be one of {', '.join(SESSION_ATTRS)}")
    if attrs is None and len(hosts) > 1:
        params["target_session_attrs"] = "read-write"
    return params


def redact_url(url: str) -> str:
    """The URL with every password replaced, safe for logs and health bodies.

    Handles several URLs separated by ';' (dramatiq's RabbitmqBroker takes that list),
    libpq's multi-host form (``user:pass@h1:5432,h2:5432``) and its ``?password=`` parameter.
    """
    return ";".join(_redact_one(part) for part in url.split(";"))


# user:password@ up to the LAST '@': a password may hold an unencoded '@', '/', '?' or '#', which end
# urlsplit's netloc early and would leave the rest of the password in the "path". Over-masking an
# '@' that was in a query string is the safe way to be wrong.
_USERINFO_RE = re.compile(r"(?P<user>[^:@/?#]*):.*@(?P<tail>[^@]*)", re.S)
_QUERY_PASSWORD_RE = re.compile(r"(?i)([?&](?:password|passwd|pass)=)[^&#]*")


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo = _USERINFO_RE.fullmatch(rest)
    if userinfo:
        rest = f"{userinfo['user']}:***@{userinfo['tail']}"
    return f"{scheme}://" + _QUERY_PASSWORD_RE.sub(r"\1***", rest)
