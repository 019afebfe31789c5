"""The admin API's shared types: times, pages and their cursors, the problem document."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, Generic, TypeVar

import peewee
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from daemon.web.api.problems import Problem


def _utc_text(value: dt.datetime) -> str:
    # The database holds naive UTC datetimes; the API always writes them with their zone: ...Z
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


UtcTime = Annotated[dt.datetime, PlainSerializer(_utc_text, return_type=str),
                    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization")]


class Out(BaseModel):
    """A response body: built from the database's own rows, never from the caller."""

    model_config = ConfigDict(from_attributes=True)


class BodyIn(BaseModel):
    """A JSON request body: unknown fields are refused (a typo is not ignored), and types are
    strict (``false`` is not an id, ``"5"`` is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class PathIn(BaseModel):
    """A path's parameters: text, read as the types the model gives them."""

    model_config = ConfigDict(extra="forbid")


class QueryIn(BaseModel):
    """A query string: unknown parameters are ignored (caches and proxies add their own)."""

    model_config = ConfigDict(extra="ignore")


class ProblemOut(BaseModel):
    """RFC 9457 problem details; ``errors`` lists each invalid field of a 400."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None


class PageQuery(QueryIn):
    limit: int = Field(50, ge=1, le=500, description="items per page")
    cursor: str | None = Field(None, max_length=64, description="`next_cursor` of the previous page")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list; ``next_cursor`` is null on the last page."""

    items: list[T]
    next_cursor: str | None


_CURSOR_PREFIX = "c1."


def _encode_cursor(after_id: int) -> str:
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(str(after_id).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    if cursor.startswith(_CURSOR_PREFIX):
        encoded = cursor[len(_CURSOR_PREFIX):]
        try:
            text = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            text = ""
        if text.isdigit() and len(text) < 19:
            return int(text)
    raise Problem(400, "cursor: not a cursor this API gave (use next_cursor from the previous page)",
                  errors=[{"field": "query.cursor", "message": "unknown cursor"}])


M = TypeVar("M", bound=peewee.Model)


def page_of(select: peewee.ModelSelect[M], key: peewee.Field, query: PageQuery, *,
            newest_first: bool = False) -> tuple[list[M], str | None]:
    """Keyset pagination on ``key`` (a unique, indexed column): one query per page, however deep."""
    if query.cursor is not None:
        after = _decode_cursor(query.cursor)
        select = select.where(key < after if newest_first else key > after)
    rows = list(select.order_by(key.desc() if newest_first else key.asc()).limit(query.limit + 1))
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    return rows, (_encode_cursor(getattr(rows[-1], key.name)) if more and rows else None)
