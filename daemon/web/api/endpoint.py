"""Endpoints declared by their types, and the OpenAPI 3.1 document generated from those types.

A handler is a plain function, run in a worker thread inside a database session::

    @api.get("/contacts/{contact_id}", tag="contacts", errors=(404,))
    def get_contact(path: ContactPath) -> ContactOut:
        ...

Its parameters are recognised by name: ``path``, ``query`` and ``body`` are pydantic models
validated from the request (an invalid one is a 400 problem naming each field); ``text`` is the raw
body (a campaign file, JSON or YAML); ``settings`` is the daemon's settings. The return annotation is
the response's model (``None``: 204). pydantic writes every schema, in JSON Schema 2020-12, which is
OpenAPI 3.1's dialect; this module only assembles the paths around them. Chosen over
aiohttp-pydantic (class-based views, its own error format, OpenAPI 3.0) and apispec (marshmallow
schemas, a second way to declare types).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, get_type_hints

import peewee
import pydantic
from aiohttp import web
from pydantic.json_schema import models_json_schema

from daemon.web.api.problems import API_PREFIX, PROBLEM_JSON, Problem
from daemon.web.api.types import ProblemOut
from daemon.web.keys import SETTINGS
from db.database import db_session

# Every operation may answer these (a bad request, no token, a failure, the database away).
COMMON_ERRORS = (400, 401, 500, 503)
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # under API_PREFIX, with aiohttp's {name} placeholders (OpenAPI's too)
    func: Callable[..., Any]
    tag: str
    summary: str
    status: int
    errors: tuple[int, ...]
    path_model: type[pydantic.BaseModel] | None
    query_model: type[pydantic.BaseModel] | None
    body_model: type[pydantic.BaseModel] | None
    takes_text: bool
    takes_settings: bool
    response_model: type[pydantic.BaseModel] | None
    public: bool  # no bearer token needed (the OpenAPI document)
    session: bool  # run in a database session (False: the handler opens its own, around a slow call)

    @property
    def operation_id(self) -> str:
        return self.func.__name__


class Api:
    """The endpoints of one API, their aiohttp routes and their OpenAPI document."""

    def __init__(self, title: str, version: str) -> None:
        self.title = title
        self.version = version
        self.endpoints: list[Endpoint] = []

    def route(self, method: str, path: str, *, tag: str, status: int = 200, errors: tuple[int, ...] = (),
              public: bool = False, session: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            hints = get_type_hints(func)
            names = set(inspect.signature(func).parameters)
            unknown = names - {"path", "query", "body", "text", "settings"}
            assert not unknown, f"{func.__name__}: parameters {unknown} are not path/query/body/text/settings"
            response = hints.get("return")
            self.endpoints.append(Endpoint(
                method=method, path=path, func=func, tag=tag,
                summary=(inspect.getdoc(func) or func.__name__).split("\n\n")[0].replace("\n", " "),
                status=status if response is not type(None) else 204, errors=errors,
                path_model=hints.get("path"), query_model=hints.get("query"), body_model=hints.get("body"),
                takes_text="text" in names, takes_settings="settings" in names,
                response_model=None if response is type(None) else response, public=public, session=session))
            return func
        return register

    def get(self, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route("PUT", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route("DELETE", path, **options)

    def public_paths(self) -> frozenset[str]:
        return frozenset(API_PREFIX + e.path for e in self.endpoints if e.public)

    def routes(self) -> list[web.RouteDef]:
        return [web.route(e.method, API_PREFIX + _matching(e), _handler(e)) for e in self.endpoints]

    def openapi(self) -> dict[str, Any]:
        return _openapi(self)


# -- serving a request ---------------------------------------------------------------------------


def _handler(endpoint: Endpoint) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if endpoint.path_model is not None:
            kwargs["path"] = _validate(endpoint.path_model, dict(request.match_info), "path")
        if endpoint.query_model is not None:
            kwargs["query"] = _validate(endpoint.query_model, {k: v for k, v in request.query.items()}, "query")
        if endpoint.body_model is not None:
            text = await _text(request)
            kwargs["body"] = _validate(endpoint.body_model, _json(text), "body", json_text=text)
        if endpoint.takes_text:
            kwargs["text"] = await _text(request)
        if endpoint.takes_settings:
            kwargs["settings"] = request.app[SETTINGS]
        result = await asyncio.to_thread(_call, endpoint.func, kwargs, endpoint.session)
        if endpoint.response_model is None:
            return web.Response(status=204)
        return web.Response(status=endpoint.status, text=result.model_dump_json(), content_type="application/json")
    handle.__name__ = endpoint.operation_id
    return handle


def _matching(endpoint: Endpoint) -> str:
    """The route's path for aiohttp: an integer placeholder matches digits only, so that
    ``/contacts/history`` is not also ``/contacts/{contact_id}`` (a 405 would then advertise the
    other route's methods) and ``/contacts/abc`` is an unknown resource (404)."""
    path = endpoint.path
    if endpoint.path_model is not None:
        for name, info in endpoint.path_model.model_fields.items():
            if info.annotation is int:
                path = path.replace("{" + name + "}", "{" + name + r":\d+}")
    return path


def _call(func: Callable[..., Any], kwargs: Mapping[str, Any], session: bool) -> Any:
    try:
        if not session:
            return func(**kwargs)
        with db_session():
            return func(**kwargs)
    except (peewee.OperationalError, peewee.InterfaceError) as exc:
        # The database is away (or refused the connection): try again shortly, nothing was changed
        raise Problem(503, f"the database is unavailable ({type(exc).__name__})",
                      headers={"Retry-After": str(RETRY_AFTER_S)}) from None


async def _text(request: web.Request) -> str:
    raw = await request.read()
    if not raw:
        raise Problem(400, "a request body is required")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "the request body is not UTF-8") from None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Problem(400, f"the request body is not JSON: {exc}") from None
    except RecursionError:  # ~1,000 nested arrays: no request of this API is that deep
        raise Problem(400, "the request body is nested too deeply") from None


def _validate(model: type[pydantic.BaseModel], data: Any, where: str, json_text: str | None = None) -> pydantic.BaseModel:
    """``data`` checked and validated; a body is validated from its JSON text (JSON mode: an enum's
    value is its text, even for a strict model)."""
    _refuse_unstorable(data, where)
    try:
        return model.model_validate_json(json_text) if json_text is not None else model.model_validate(data)
    except pydantic.ValidationError as exc:
        # The message and the field, never the input (it may be personal data or a secret)
        errors = [{"field": ".".join([where, *map(str, e["loc"])]), "message": e["msg"]} for e in exc.errors()]
        first = errors[0]
        raise Problem(400, f"{first['field']}: {first['message']}", errors=errors) from None


def _refuse_unstorable(value: Any, where: str) -> None:
    """A NUL (PostgreSQL cannot store one) or a lone surrogate (not UTF-8) anywhere in the input is a
    400 here, not a driver error and a 500 later."""
    if isinstance(value, str):
        if "\x00" in value:
            raise Problem(400, f"{where}: contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Problem(400, f"{where}: is not valid Unicode text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_unstorable(key, where)
            _refuse_unstorable(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_unstorable(item, f"{where}.{index}")


# -- the OpenAPI document ------------------------------------------------------------------------

_REF = "#/components/schemas/{model}"


def _openapi(api: Api) -> dict[str, Any]:
    wanted: list[tuple[type[pydantic.BaseModel], Any]] = [(ProblemOut, "serialization")]
    for e in api.endpoints:
        wanted += [(m, "validation") for m in (e.path_model, e.query_model, e.body_model) if m is not None]
        if e.response_model is not None:
            wanted.append((e.response_model, "serialization"))
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)
    schemas = top.get("$defs", {})

    def full(model: type[pydantic.BaseModel]) -> dict[str, Any]:
        return schemas[refs[(model, "validation")]["$ref"].rsplit("/", 1)[1]]

    paths: dict[str, dict[str, Any]] = {}
    for e in api.endpoints:
        operation: dict[str, Any] = {"operationId": e.operation_id, "summary": e.summary, "tags": [e.tag],
                                     "parameters": [], "responses": {}}
        for model, place in ((e.path_model, "path"), (e.query_model, "query")):
            if model is not None:
                operation["parameters"] += _parameters(full(model), place)
        if e.body_model is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[(e.body_model, "validation")]}}}
        if e.takes_text:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}}}}
        if e.response_model is None:
            operation["responses"]["204"] = {"description": "done"}
        else:
            operation["responses"][str(e.status)] = {"description": HTTPStatus(e.status).phrase, "content": {
                "application/json": {"schema": refs[(e.response_model, "serialization")]}}}
        errors = set(e.errors) | ({400, 500} if e.public else set(COMMON_ERRORS))
        if e.body_model is not None or e.takes_text:
            errors.add(413)
        if e.path_model is not None:
            errors.add(404)
        for status in sorted(errors):
            operation["responses"][str(status)] = {"description": HTTPStatus(status).phrase, "content": {
                PROBLEM_JSON: {"schema": refs[(ProblemOut, "serialization")]}}}
        if e.public:
            operation["security"] = []
        paths.setdefault(API_PREFIX + e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": api.title, "version": api.version},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _parameters(schema: dict[str, Any], place: str) -> list[dict[str, Any]]:
    """The properties of a path or query model as OpenAPI parameters. An optional parameter is one
    that may be left out, so its JSON Schema ``null`` branch is dropped (a query string has no null)."""
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:
            prop.update(branches[0])
        elif branches:
            prop["anyOf"] = branches
        if prop.get("default", ...) is None:
            del prop["default"]
        description = prop.pop("description", None)
        prop.pop("title", None)
        parameter = {"name": name, "in": place, "required": place == "path" or name in required, "schema": prop}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters
