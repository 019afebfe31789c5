"""Running PostgreSQL's client tools (``pg_dump``, ``pg_restore``) without leaking the password.

A command line is world-readable (``ps``, ``/proc/<pid>/cmdline``), so the password goes to the
tool through libpq's ``PGPASSWORD`` in the child's environment (readable only by the same user and
root), and the tool gets the URL without it. A tool's stderr can quote the connection string or
the server's words; what we print of it is one line, with anything secret masked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ground.errors import RetentiondError

MAX_SUMMARY_CHARS = 300
# user:password@ in any URL a tool might print, including ones that are not ours
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


class ToolError(RetentiondError):
    """A client tool is missing or failed; the message is one line without secrets."""


def libpq_connection(url: str) -> tuple[str, dict[str, str]]:
    """Split a ``postgresql://`` URL into one without the password and the environment that carries it."""
    parts = urlsplit(url)
    env: dict[str, str] = {}
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
    query = parse_qsl(parts.query, keep_blank_values=True)
    for key, value in query:
        if key == "password":  # libpq also takes it as a URL parameter
            env["PGPASSWORD"] = value
    host_port = parts.netloc.rpartition("@")[2]
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    netloc = f"{user}@{host_port}" if user else host_port
    clean_query = urlencode([(k, v) for k, v in query if k != "password"])
    return parts._replace(netloc=netloc, query=clean_query).geturl(), env


def secrets_of(url: str) -> list[str]:
    """Every spelling of the URL's password that could show up in a tool's output."""
    _, env = libpq_connection(url)
    password = env.get("PGPASSWORD")
    if not password:
        return []
    raw = urlsplit(url).password or ""
    return sorted({password, raw, quote(password, safe="")} - {""}, key=len, reverse=True)


def summarise(stderr: str, secrets: Sequence[str], returncode: int) -> str:
    """One line out of a tool's stderr: its first error line (the later ones are detail), masked."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return f"exit status {returncode}"
    line = next((line for line in lines if "error" in line.lower()), lines[-1])
    for secret in secrets:
        line = line.replace(secret, "***")
    line = _URL_PASSWORD.sub(r"\1***@", line)
    return line if len(line) <= MAX_SUMMARY_CHARS else line[:MAX_SUMMARY_CHARS] + "..."


def run_tool(tool: str, args: Sequence[str], url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tool args`` (with ``--dbname=<url without password>`` when ``url`` is given); raise
    ToolError with one clean line when it fails."""
    if shutil.which(tool) is None:
        raise ToolError(f"{tool} is not installed (PostgreSQL client tools)")
    env = dict(os.environ)
    command = [tool, *args]
    secrets: list[str] = []
    if url is not None:
        dbname, extra = libpq_connection(url)
        env.update(extra)  # without a password in the URL, the operator's PGPASSWORD or ~/.pgpass apply
        command.append(f"--dbname={dbname}")
        secrets = secrets_of(url)
    result = subprocess.run(command, env=env, capture_output=True, text=True, errors="replace", check=False)
    if result.returncode != 0:
        raise ToolError(f"{tool} failed: {summarise(result.stderr, secrets, result.returncode)}")
    return result
