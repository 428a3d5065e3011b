"""The admin API's OpenAPI 3.1 document, served at ``GET /admin/openapi.json``.

Written by hand as data, route by route, next to the handlers rather than generated from them: the document is
a promise to operators' tools, and a test holds it to the routes actually registered (every route is in it and
nothing else is), while schemathesis holds the answers to its schemas. The small functions below only spare
repeating the same shapes; what each operation takes and answers is spelled out in `PATHS`.
"""

from __future__ import annotations

from typing import Any

from tollway.api.admin.inputs import MAX_LIMIT, NOTE_LENGTH
from tollway.store.records import LEDGER_KINDS, NAME_LENGTH, PERIODS

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _null(schema: Schema) -> Schema:
    """``schema`` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], required: tuple[str, ...] | None = None, *,
            closed: bool = True) -> Schema:
    """An object with these properties, all of them present unless ``required`` says which."""
    schema: Schema = {"type": "object", "properties": properties,
                      "required": list(properties if required is None else required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
TIME: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC (`...Z`)"}
USD_OUT: Schema = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{9}$",
                   "description": "Exact dollars, nine decimals"}
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": NAME_LENGTH}
LIMIT_IN: Schema = _null({"type": "integer", "minimum": 0, "maximum": MAX_LIMIT,
                          "description": "0 or null: no limit"})
PERIOD: Schema = _null({"type": "string", "enum": list(PERIODS)})
MODELS_IN: Schema = _null({"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                           "description": "Glob patterns of the models the key may use; null: every model"})


def _usd_in(*, negative: bool) -> Schema:
    """Dollars as a decimal string or a whole number; a JSON fraction is refused (it is a binary float)."""
    sign = "-?" if negative else ""
    return {"anyOf": [
        {"type": "string", "pattern": rf"^{sign}[0-9]{{1,10}}(\.[0-9]{{1,9}})?$", "examples": ["20", "0.15"]},
        {"type": "integer", "minimum": -9_999_999_999 if negative else 0, "maximum": 9_999_999_999},
    ]}


def _money(name: str, *, nullable: bool) -> dict[str, Schema]:
    usd, nano = USD_OUT, INTEGER
    if nullable:
        usd, nano = _null(usd), _null(nano)
    return {f"{name}_usd": usd, f"{name}_nanousd": nano}


def _limits() -> Schema:
    return _object({n: _null({"type": "integer", "minimum": 1}) for n in ("rpm", "itpm", "otpm", "max_concurrency")})


_KEY = _object({
    "type": {"const": "key"}, "id": STRING, "name": STRING, "hint": STRING,
    "models": _null({"type": "array", "items": STRING}),
    "state": {"enum": ["active", "revoked"]}, "created_at": TIME, "revoked_at": _null(TIME),
    "limits": _limits(),
    "account": _null(_object({"id": STRING, "name": _null(STRING)})),
    "budget": _ref("Budget"), "balance": _ref("Balance"), "log_bodies": {"type": "boolean"},
})
_LOG_BODIES: Schema = {"type": "boolean", "description": "The request log carries this key's requests and answers"}
_USAGE_COUNTS = ("requests", "errors", "input_tokens", "output_tokens", "cache_write_5m_tokens",
                 "cache_write_1h_tokens", "cache_read_tokens")
_TOTALS = _object({**{n: {"type": "integer", "minimum": 0} for n in _USAGE_COUNTS}, "cost_usd": _null(USD_OUT)})
_USAGE_GROUPS: dict[str, Schema] = {"key": STRING, "key_id": _null(STRING), "model": _null(STRING),
                                    "upstream": _null(STRING), "day": _null(STRING)}
_TABLE: Schema = {"type": "object"}
_TABLES: Schema = {"type": "array", "items": {"type": "object"}}

SCHEMAS: dict[str, Schema] = {
    "Error": _object({
        "type": {"const": "error"},
        "error": _object({"type": STRING, "message": STRING}),
        "request_id": STRING,
    }),
    "Budget": _object({"prepaid": {"type": "boolean"}, **_money("cap", nullable=True), "period": PERIOD}),
    "Balance": {**_object({
        "source": {"enum": ["live", "store"],
                   "description": "live: what the running gateway holds; store: the ledger's sum, for an owner "
                                  "it has not loaded yet"},
        **_money("balance", nullable=False), **_money("held", nullable=True), **_money("spent", nullable=True),
        "period": _null(STRING)}),
        "description": "spent is counted in the current period, for owners with a money limit"},
    "Key": _KEY,
    "NewKey": {**_KEY, "properties": {**_KEY["properties"], "secret": {
        "type": "string", "pattern": "^tw-", "description": "Shown in this answer only: the store keeps its hash"}},
        "required": [*_KEY["required"], "secret"]},
    "Account": _object({
        "type": {"const": "account"}, "id": STRING, "name": STRING, "created_at": TIME,
        "keys": _object({"active": {"type": "integer", "minimum": 0}, "revoked": {"type": "integer", "minimum": 0}}),
        "budget": _ref("Budget"), "balance": _ref("Balance"),
    }),
    "LedgerEntry": _object({
        "id": INTEGER, "created_at": TIME, "owner": STRING, "kind": {"enum": list(LEDGER_KINDS)},
        **_money("amount", nullable=False), "request_id": _null(STRING), "note": _null(STRING),
    }),
    "UsageRecord": _object({**_USAGE_GROUPS, **{n: {"type": "integer", "minimum": 0} for n in _USAGE_COUNTS},
                            "cost_usd": _null(USD_OUT)},
                           required=(*_USAGE_COUNTS, "cost_usd")),
    "Upstream": _object({
        "upstream": STRING, "state": {"enum": ["ok", "resting"]}, "resting_s": {"type": "number", "minimum": 0},
        "failures": INTEGER, "last_error": _null(STRING), "successes": INTEGER, "errors": INTEGER,
        "rests": {**INTEGER, "description": "Rests (cooldowns) this process gave it since it started"},
        "in_flight": INTEGER,
        "keys": {"type": "array", "items": _object({
            "key": {"type": "integer", "minimum": 0, "description": "The key's place in the upstream's api_keys"},
            "resting_s": {"type": "number", "minimum": 0}, "failures": INTEGER, "rate_limited": {"type": "boolean"},
            "last_error": _null(STRING), "successes": INTEGER, "errors": INTEGER, "rests": INTEGER})},
    }),
    "Config": {**_object({"source": STRING, "server": _TABLE, "storage": _TABLE, "upstreams": _TABLES,
                          "models": _TABLES, "key_limits": _TABLES, "admin": _TABLE, "limits": _TABLE}, closed=False),
               "description": "The config in force, secrets masked as ********: upstream api_keys, the admin "
                              "token, and passwords in URLs"},
}

# -- requests ---------------------------------------------------------------------------------------------------------

_LIMITS_IN = {n: LIMIT_IN for n in ("rpm", "itpm", "otpm", "max_concurrency")}
_NEW_MONEY = {"budget_usd": _null(_usd_in(negative=False)), "cap_usd": _null(_usd_in(negative=False)),
              "period": PERIOD}
_CHANGE_MONEY = {"cap_usd": _null(_usd_in(negative=False)), "period": PERIOD,
                 "prepaid": _null({"type": "boolean", "description": "false: stop paying from the balance"})}


def _body(properties: dict[str, Schema], required: tuple[str, ...] = (), *, optional: bool = False) -> Schema:
    return {"required": not optional,
            "content": {"application/json": {"schema": _object(properties, required)}}}


# -- responses --------------------------------------------------------------------------------------------------------

_REQUEST_ID = {"request-id": {"required": True, "schema": {"type": "string"}}}
_RETRY_AFTER = {"retry-after": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def _answer(description: str, schema: Schema, links: Schema | None = None) -> Schema:
    answer = {"description": description, "headers": _REQUEST_ID,
              "content": {"application/json": {"schema": schema}}}
    if links:
        answer["links"] = links
    return answer


def _links(parameter: str, *operation_ids: str) -> Schema:
    """What can be done next with the record just made: its id goes into ``parameter`` of each operation."""
    return {op[0].upper() + op[1:]: {"operationId": op, "parameters": {parameter: "$response.body#/id"}}
            for op in operation_ids}


def _error(description: str, *, retry: bool = False) -> Schema:
    return {"description": description, "headers": {**_REQUEST_ID, **(_RETRY_AFTER if retry else {})},
            "content": {"application/json": {"schema": _ref("Error")}}}


RESPONSES: dict[str, Schema] = {
    "Invalid": _error("invalid_request_error: a field or parameter that is wrong, named in the message; "
                      "nothing was written"),
    "Unauthorized": _error("authentication_error: no admin token, or a wrong one"),
    "NotFound": _error("not_found_error: no such key or account"),
    "TooLarge": _error("request_too_large: a body over the server's max_body_bytes"),
    "TooManyFailures": _error("rate_limit_error: too many failed token attempts from this address", retry=True),
    "Overloaded": _error("overloaded_error: the database cannot be reached now", retry=True),
}


def _errors(*names: str) -> dict[str, Schema]:
    codes = {"Invalid": "400", "Unauthorized": "401", "NotFound": "404", "TooLarge": "413",
             "TooManyFailures": "429", "Overloaded": "529"}
    chosen = ("Unauthorized", "TooManyFailures", *names)
    return {codes[n]: {"$ref": f"#/components/responses/{n}"} for n in sorted(chosen, key=codes.__getitem__)}


def _op(operation_id: str, summary: str, answers: dict[str, Schema], *, parameters: list[Schema] | None = None,
        body: Schema | None = None, tag: str) -> Schema:
    op: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag], "responses": answers}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    return op


_KEY_ID = {"name": "id", "in": "path", "required": True, "schema": STRING, "description": "The key's id (key_...)"}
_ACCOUNT_REF = {"name": "ref", "in": "path", "required": True, "schema": STRING,
                "description": "The account's id (acct_...) or name"}
_WRITE = ("Invalid", "TooLarge", "Overloaded")
_TOPUP = _body({"usd": _usd_in(negative=True),
                "note": _null({"type": "string", "minLength": 1, "maxLength": NOTE_LENGTH})}, ("usd",))


def _topup(operation_id: str, owner: str, parameter: Schema, tag: str) -> Schema:
    return _op(operation_id, f"Add to the {owner}'s balance (negative: take back, at most the balance)",
               {"200": _answer(f"The {owner}, with its new balance", _ref(tag)), **_errors("NotFound", *_WRITE)},
               parameters=[parameter], body=_TOPUP, tag=tag)


PATHS: dict[str, Schema] = {
    "/admin/keys": {
        "get": _op("listKeys", "Every key, oldest first",
                   {"200": _answer("The keys", _object({"data": {"type": "array", "items": _ref("Key")}})),
                    **_errors("Overloaded")}, tag="Key"),
        "post": _op("createKey", "Make a key; its secret is in this answer only",
                    {"201": _answer("The new key, with its secret", _ref("NewKey"),
                                    _links("id", "getKey", "updateKey", "revokeKey", "topupKey")),
                     **_errors("NotFound", *_WRITE)},
                    body=_body({"name": NAME, "models": MODELS_IN,
                                "account": _null({**NAME, "description": "An account's name or id; default: a "
                                                                         "new account named after the key"}),
                                **_LIMITS_IN, **_NEW_MONEY, "log_bodies": _LOG_BODIES}, ("name",)), tag="Key"),
    },
    "/admin/keys/{id}": {
        "get": _op("getKey", "One key", {"200": _answer("The key", _ref("Key")), **_errors("NotFound", "Overloaded")},
                   parameters=[_KEY_ID], tag="Key"),
        "patch": _op("updateKey", "Change a key's models, rate limits or money limits; fields not sent stay",
                     {"200": _answer("The key as changed", _ref("Key")), **_errors("NotFound", *_WRITE)},
                     parameters=[_KEY_ID], body=_body({"models": MODELS_IN, **_LIMITS_IN, **_CHANGE_MONEY,
                                                       "log_bodies": _LOG_BODIES}),
                     tag="Key"),
    },
    "/admin/keys/{id}/revoke": {
        "post": _op("revokeKey", "Revoke a key, from the very next request on",
                    {"200": _answer("The key, revoked", _ref("Key")), **_errors("NotFound", *_WRITE)},
                    parameters=[_KEY_ID], body=_body({}, optional=True), tag="Key"),
    },
    "/admin/keys/{id}/topup": {"post": _topup("topupKey", "key", _KEY_ID, "Key")},
    "/admin/accounts": {
        "get": _op("listAccounts", "Every account, oldest first",
                   {"200": _answer("The accounts", _object({"data": {"type": "array", "items": _ref("Account")}})),
                    **_errors("Overloaded")}, tag="Account"),
        "post": _op("createAccount", "Make an account: one bill for the keys made in it",
                    {"201": _answer("The new account", _ref("Account"),
                                    _links("ref", "getAccount", "updateAccount", "topupAccount")),
                     **_errors(*_WRITE)},
                    body=_body({"name": {**NAME, "not": {"pattern": "^acct_"}}, **_NEW_MONEY}, ("name",)),
                    tag="Account"),
    },
    "/admin/accounts/{ref}": {
        "get": _op("getAccount", "One account",
                   {"200": _answer("The account", _ref("Account")), **_errors("NotFound", "Overloaded")},
                   parameters=[_ACCOUNT_REF], tag="Account"),
        "patch": _op("updateAccount", "Change an account's money limits; fields not sent stay",
                     {"200": _answer("The account as changed", _ref("Account")), **_errors("NotFound", *_WRITE)},
                     parameters=[_ACCOUNT_REF], body=_body(_CHANGE_MONEY), tag="Account"),
    },
    "/admin/accounts/{ref}/topup": {"post": _topup("topupAccount", "account", _ACCOUNT_REF, "Account")},
    "/admin/ledger": {
        "get": _op("listLedger", "Ledger entries, newest first",
                   {"200": _answer("The entries", _object({"data": {"type": "array", "items": _ref("LedgerEntry")},
                                                           "has_more": {"type": "boolean"}})),
                    **_errors("Invalid", "NotFound", "Overloaded")},
                   parameters=[
                       {"name": "owner", "in": "query", "schema": STRING,
                        "description": "A key's id, or an account's id or name; default: every owner"},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                                                   "default": 100}},
                   ], tag="Money"),
    },
    "/admin/usage": {
        "get": _op("usage", "Requests, errors, tokens and cost, grouped as asked, with totals",
                   {"200": {"description": "One record per group (as `tollway usage --format json`); in CSV, the "
                                           "same records without totals",
                            "headers": _REQUEST_ID,
                            "content": {"application/json": {"schema": _object({
                                "data": {"type": "array", "items": _ref("UsageRecord")},
                                "totals": _TOTALS})},
                                "text/csv": {"schema": STRING}}},
                    **_errors("Invalid", "Overloaded")},
                   parameters=[
                       {"name": "key", "in": "query", "schema": STRING, "description": "A key's id or name"},
                       {"name": "since", "in": "query", "schema": STRING,
                        "description": "A duration back from now (`30m`, `24h`, `7d`) or an ISO date or time",
                        "examples": {"day": {"value": "24h"}, "date": {"value": "2026-01-01"}}},
                       {"name": "by", "in": "query", "schema": STRING,
                        "description": "Groups, comma-separated, among key, model, upstream, day (default key,model)",
                        "examples": {"all": {"value": "key,model,upstream,day"}}},
                       {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"], "default": "json"}},
                   ], tag="Usage"),
    },
    "/admin/upstreams": {
        "get": _op("upstreams", "Each upstream's health, rests and requests in flight, and each of its keys' (as "
                                "/healthz shows them)",
                   {"200": _answer("The upstreams", _object({"data": {"type": "array", "items": _ref("Upstream")}})),
                    **_errors()}, tag="Gateway"),
    },
    "/admin/config": {
        "get": _op("config", "The config in force, with every secret masked",
                   {"200": _answer("The config", _ref("Config")), **_errors()}, tag="Gateway"),
    },
    "/admin/openapi.json": {
        "get": _op("openapi", "This document",
                   {"200": _answer("OpenAPI 3.1", {"type": "object", "required": ["openapi", "paths"]}),
                    **_errors()}, tag="Gateway"),
    },
}

DOCUMENT: Schema = {
    "openapi": "3.1.0",
    "info": {
        "title": "Tollway admin API",
        "version": "1",
        "description": "Keys, accounts, money, usage and the gateway's state, for operators. Every request needs "
                       "the admin token (`Authorization: Bearer TOKEN` or `x-admin-token: TOKEN`); this document "
                       "too. Errors are Anthropic-shaped, with the `request-id` header in every answer. Amounts "
                       "go out as exact decimal strings of dollars and integers of nano-dollars.",
    },
    "security": [{"bearer": []}, {"adminToken": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "adminToken": {"type": "apiKey", "in": "header", "name": "x-admin-token"},
        },
        "schemas": SCHEMAS,
        "responses": RESPONSES,
    },
}
