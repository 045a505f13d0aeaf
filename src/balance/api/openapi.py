"""The OpenAPI 3.1 document, built from the same msgspec types that validate requests."""

from __future__ import annotations

from typing import Any

import msgspec

from balance import __version__
from balance.api import schemas as s
from balance.api import shapes

_REQUESTS = {
    "NewAccount": s.NewAccount, "AccountPatch": s.AccountPatch, "CreditBody": s.CreditBody,
    "DebitBody": s.DebitBody, "TransferBody": s.TransferBody, "HoldBody": s.HoldBody,
    "CaptureBody": s.CaptureBody, "ReleaseBody": s.ReleaseBody, "NewKey": s.NewKey,
}  # fmt: skip
_RESPONSES = {
    "Account": shapes.AccountView, "Hold": shapes.HoldView, "Txn": shapes.TxnView, "Problem": shapes.Problem,
    "AccountReply": shapes.AccountReply, "TransferReply": shapes.TransferReply, "HoldReply": shapes.HoldReply,
    "KeyReply": shapes.KeyReply, "KeyInfo": shapes.KeyInfo,
}  # fmt: skip


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, request: str | None, status: str, response: dict[str, Any], params: tuple[str, ...] = (),
        query: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
        + [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in query],
        "responses": {
            status: {"description": "success", **_json(response)},
            "default": {
                "description": "problem (RFC 9457)",
                "content": {"application/problem+json": {"schema": _ref("Problem")}},
            },
        },
    }
    if request is not None:
        optional = ("CaptureBody", "ReleaseBody", "NewKey")
        operation["requestBody"] = {"required": request not in optional, **_json(_ref(request))}
    return operation


def _list(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": _ref(item)}}}


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {"data": {"type": "array", "items": _ref(item)}, "next_cursor": {"type": ["string", "null"]}},
    }


def _event_page() -> dict[str, Any]:
    envelope = {
        "type": "object",
        "required": ["id", "type", "occurred_at", "region", "shard", "seq", "account_id", "version", "data"],
        "properties": {
            "id": {"type": "string"}, "type": {"type": "string"}, "occurred_at": {"type": "string"},
            "region": {"type": "string"}, "shard": {"type": "integer"}, "seq": {"type": "integer"},
            "account_id": {"type": "string"}, "version": {"type": "integer"}, "data": {"type": "object"},
        },
    }  # fmt: skip
    return {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {"data": {"type": "array", "items": envelope}, "next_cursor": {"type": "string"}},
    }


def _renamed(value: Any, renames: dict[str, str]) -> Any:
    """``value`` with every ``$ref`` to a renamed component pointing at its new name."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.rpartition("/")[2] in renames:
            value = {**value, "$ref": _ref(renames[ref.rpartition("/")[2]])["$ref"]}
        return {key: _renamed(item, renames) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item, renames) for item in value]
    return value


def openapi_document() -> dict[str, Any]:
    types = [*_REQUESTS.values(), *_RESPONSES.values(), s.BatchOp]
    (_, *_), components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    # The paths name responses by their public names (Account, not AccountView): rename to match.
    renames = {t.__name__: name for name, t in _RESPONSES.items() if t.__name__ != name}
    components = _renamed({renames.get(key, key): value for key, value in components.items()}, renames)
    batch_request = {
        "type": "object",
        "required": ["operations"],
        "properties": {"operations": {"type": "array", "minItems": 1, "maxItems": 8190,
                                      "items": {"anyOf": [_ref(t.__name__) for t in s.BatchOp.__args__]}}},
    }  # fmt: skip
    batch_reply = {
        "type": "object",
        "properties": {"results": {"type": "array", "items": {"type": "object", "properties": {
            "status": {"type": "integer"}, "replayed": {"type": "boolean"}, "body": {"type": "object"}}}}},
    }  # fmt: skip
    acct, hold = ("id",), ("id", "hold_id")
    paths = {
        "/v1/accounts": {"post": _op("Create an account", "NewAccount", "201", _ref("Account"))},
        "/v1/accounts/{id}": {
            "get": _op("Read an account", None, "200", _ref("Account"), acct),
            "patch": _op("Change status, name, metadata or credit limit", "AccountPatch", "200", _ref("Account"), acct),
        },
        "/v1/accounts/{id}/children": {
            "get": _op("List direct children", None, "200", _page("Account"), acct, ("limit", "cursor"))
        },
        "/v1/accounts/{id}/keys": {
            "post": _op("Create an API key (shown once) with scopes", "NewKey", "201", _ref("KeyReply"), acct),
            "get": _op("List the account's keys (never the key)", None, "200", _list("KeyInfo"), acct),
        },
        "/v1/accounts/{id}/keys/{key_id}": {
            "delete": _op("Revoke a key at once", None, "200", _ref("KeyInfo"), ("id", "key_id")),
        },
        "/v1/accounts/{id}/credits": {"post": _op("Money in", "CreditBody", "201", _ref("AccountReply"), acct)},
        "/v1/accounts/{id}/debits": {"post": _op("Money out", "DebitBody", "201", _ref("AccountReply"), acct)},
        "/v1/accounts/{id}/holds": {"post": _op("Place a hold", "HoldBody", "201", _ref("HoldReply"), acct)},
        "/v1/accounts/{id}/holds/{hold_id}": {"get": _op("Read a hold", None, "200", _ref("Hold"), hold)},
        "/v1/accounts/{id}/holds/{hold_id}/capture": {
            "post": _op("Capture a hold, in full or in part", "CaptureBody", "200", _ref("HoldReply"), hold)
        },
        "/v1/accounts/{id}/holds/{hold_id}/release": {
            "post": _op("Release a hold", "ReleaseBody", "200", _ref("HoldReply"), hold)
        },
        "/v1/accounts/{id}/transactions": {
            "get": _op("History, newest first", None, "200", _page("Txn"), acct, ("limit", "cursor", "since", "until"))
        },
        "/v1/accounts/{id}/transactions/{txn_id}": {
            "get": _op("Read one history row by its id", None, "200", _ref("Txn"), ("id", "txn_id"))
        },
        "/v1/events": {
            "get": _op("Events after a cursor, oldest first (long-poll with wait_s); see docs/events.md", None, "200",
                       _event_page(), (), ("after", "limit", "wait_s"))
        },
        "/v1/transfers": {"post": _op("Move money between two accounts", "TransferBody", "201", _ref("TransferReply"))},
        "/v1/batch": {"post": {**_op("Up to 8190 operations, answered one by one", None, "200", batch_reply),
                               "requestBody": {"required": True, **_json(batch_request)}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness (every shard recovered)",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "recovering"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "Balance service", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
