"""The OpenAPI 3.1 document, built from the same msgspec types that validate requests.

Complete enough to generate a typed client and to drive schemathesis's stateful tests: an
``operationId`` per route, typed path and query parameters, each route's problem codes by
status, the ``Idempotent-Replayed`` and ``Retry-After`` headers, typed batch operations and
results, and links (an account's id feeds its money, hold and key routes; a hold's id its
capture and release). ``ROUTES`` is the table; ``tests/unit/test_openapi_document.py`` holds it
to the app's route table and to ``statuses.STATUS_BY_CODE``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import msgspec

from balance import __version__
from balance.api import schemas as s
from balance.api import shapes
from balance.api.statuses import STATUS_BY_CODE
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.currencies import ISO_4217

_REQUESTS = {
    "NewAccount": s.NewAccount, "AccountPatch": s.AccountPatch, "CreditBody": s.CreditBody,
    "DebitBody": s.DebitBody, "TransferBody": s.TransferBody, "HoldBody": s.HoldBody,
    "CaptureBody": s.CaptureBody, "ReleaseBody": s.ReleaseBody, "NewKey": s.NewKey, "MoveBody": s.MoveBody,
}  # fmt: skip
_RESPONSES = {
    "Account": shapes.AccountView, "Hold": shapes.HoldView, "Txn": shapes.TxnView, "Problem": shapes.Problem,
    "AccountReply": shapes.AccountReply, "TransferReply": shapes.TransferReply, "HoldReply": shapes.HoldReply,
    "MoveReply": shapes.MoveReply, "PlacementView": shapes.PlacementView,
    "KeyReply": shapes.KeyReply, "KeyInfo": shapes.KeyInfo,
}  # fmt: skip
_OPTIONAL_BODIES = ("CaptureBody", "ReleaseBody", "NewKey", "AccountPatch")  # an empty body is {}

# Codes any authenticated route may answer, besides its own (``Route.codes``).
_EVERY_ROUTE = (e.UNAUTHORIZED, e.RATE_LIMITED, e.UNAVAILABLE, e.VALIDATION_ERROR, e.ACCOUNT_MOVING, e.ACCOUNT_MOVED)
# Codes of the HTTP layer (``api/app.py``, the built-in server ``api/http1.py``, docs/limits.md):
# not business outcomes, so not in ``statuses.STATUS_BY_CODE``.
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
PAYLOAD_TOO_LARGE = "payload_too_large"
HTTP_CODES = {
    "bad_request": 400, "not_found": 404, "method_not_allowed": 405, "request_timeout": 408,
    PAYLOAD_TOO_LARGE: 413, UNSUPPORTED_MEDIA_TYPE: 415, "internal_error": 500,
}  # fmt: skip
_WITH_BODY = (UNSUPPORTED_MEDIA_TYPE, PAYLOAD_TOO_LARGE)

_AMOUNT_NOTE = (
    " A JSON integer; a whole number written with a fraction or an exponent (2500.0, 2.5e3) is read"
    " exactly as that integer."
)
_METADATA_NOTE = (
    f"Free JSON object, stored as canonical JSON: at most {limits.METADATA_BYTES_MAX} bytes encoded and"
    " the body (in a batch: the operation) at most 32 levels deep."
)


@dataclass(frozen=True)
class Route:
    """One operation of the document: what ``app.route_table`` serves, described."""

    method: str
    path: str
    operation_id: str
    summary: str
    request: str | None  # a component name (None: no body)
    status: str  # the success status
    response: dict[str, Any]
    codes: tuple[str, ...] = ()  # its own problem codes, besides _EVERY_ROUTE
    query: tuple[str, ...] = ()
    replayable: bool = False  # answers may carry Idempotent-Replayed: true
    links: dict[str, dict[str, Any]] = field(default_factory=dict)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _link(
    operation_id: str, description: str, body: dict[str, str | None] | None = None, **parameters: str
) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id, "description": description}
    if parameters:
        link["parameters"] = parameters
    if body is not None:
        link["requestBody"] = body
    return link


_FROM_ACCOUNT = "$response.body#/id"
_FROM_REPLY = "$response.body#/account/id"


def _account_links(account_id: str, *names: str) -> dict[str, dict[str, Any]]:
    """Where an account's id leads (those of ``names``): its reads, its money routes, its keys.

    Few per answer, so that schemathesis's stateful runs follow the money (create, credit,
    hold, capture) rather than spread over every read. Never from a POST to a target below its
    path that can answer 404 for another id of its body (a hold's destination, a parent):
    schemathesis reads such a 404 as the created resource missing (ST302)."""
    every = {
        "GetAccount": _link("getAccount", "the account", id=account_id),
        "PatchAccount": _link("patchAccount", "freeze, close or rename it", id=account_id),
        "Credit": _link("credit", "money in", id=account_id),
        "Debit": _link("debit", "money out", id=account_id),
        "PlaceHold": _link("placeHold", "hold money", id=account_id),
        "ListTransactions": _link("listTransactions", "its history", id=account_id),
        "ListChildren": _link("listChildren", "its children", id=account_id),
        "CreateKey": _link("createKey", "a key for it", id=account_id),
        "ListKeys": _link("listKeys", "its keys", id=account_id),
    }
    return {name: every[name] for name in names}


_ACCOUNT_LINKS = _account_links(
    _FROM_ACCOUNT, "GetAccount", "PatchAccount", "Credit", "Debit", "ListTransactions", "CreateKey"
)
_READ_ACCOUNT_LINKS = {
    **_account_links(_FROM_ACCOUNT, "Credit", "PlaceHold", "ListChildren", "ListKeys"),
    "CreateChild": _link("createAccount", "a child of it", body={"parent_id": _FROM_ACCOUNT}),
}
_MONEY_LINKS = {
    **_account_links(_FROM_REPLY, "GetAccount", "Credit"),
    # The amount just credited: a hold or a debit of it finds the money there (a random amount rarely does).
    "PlaceHold": _link(
        "placeHold",
        "hold what came in, to no destination",
        body={"amount": "$response.body#/transaction/amount", "destination_account_id": None},
        id=_FROM_REPLY,
    ),
    "Debit": _link(
        "debit", "take out what came in", body={"amount": "$response.body#/transaction/amount"}, id=_FROM_REPLY
    ),
    "GetTransaction": _link(
        "getTransaction", "the history row", id=_FROM_REPLY, txn_id="$response.body#/transaction/id"
    ),
}
_HOLD_LINKS = {
    "GetHold": _link("getHold", "the hold", id="$response.body#/hold/account_id", hold_id="$response.body#/hold/id"),
    "CaptureHold": _link(
        "captureHold", "capture it", id="$response.body#/hold/account_id", hold_id="$response.body#/hold/id"
    ),
    "ReleaseHold": _link(
        "releaseHold", "release it", id="$response.body#/hold/account_id", hold_id="$response.body#/hold/id"
    ),
    **_account_links(_FROM_REPLY, "GetAccount"),
}
_CHILDREN_LINKS = {
    "GetChild": _link("getAccount", "the first child", id="$response.body#/data/0/id"),
    "TransferToChild": _link(
        "transfer",
        "money from the parent to its first child",
        body={
            "from_account_id": "$response.body#/data/0/parent_id",
            "to_account_id": "$response.body#/data/0/id",
            "currency": "$response.body#/data/0/currency",
        },
    ),
}
_KEY_LINKS = {
    "RevokeKey": _link("revokeKey", "revoke it", id="$response.body#/account_id", key_id="$response.body#/key_id"),
    "ListKeys": _link("listKeys", "the account's keys", id="$response.body#/account_id"),
}

_NOT_FOUND, _INACTIVE, _CONFLICT = e.ACCOUNT_NOT_FOUND, e.ACCOUNT_INACTIVE, e.IDEMPOTENCY_CONFLICT
_READ = (e.FORBIDDEN, _NOT_FOUND)
_MOVE = (e.FORBIDDEN, _NOT_FOUND, _INACTIVE, _CONFLICT, e.LIMIT_EXCEEDED)

ROUTES = (
    Route("POST", "/v1/accounts", "createAccount", "Open an account (top level: admin; a child: a key above it)",
          "NewAccount", "201", _ref("Account"), (*_MOVE,), replayable=True, links=_ACCOUNT_LINKS),
    Route("GET", "/v1/accounts/{id}", "getAccount", "Read an account", None, "200", _ref("Account"), _READ,
          links=_READ_ACCOUNT_LINKS),
    Route("PATCH", "/v1/accounts/{id}", "patchAccount", "Change status, name, metadata or credit limit",
          "AccountPatch", "200", _ref("Account"), (*_READ, _INACTIVE, e.ACCOUNT_NOT_EMPTY, e.LIMIT_EXCEEDED)),
    Route("GET", "/v1/accounts/{id}/children", "listChildren", "List direct children, a page at a time",
          None, "200", _ref("AccountPage"), _READ, query=("limit_children", "cursor_children"),
          links=_CHILDREN_LINKS),
    Route("POST", "/v1/accounts/{id}/keys", "createKey", "Create an API key (the secret is shown once)",
          "NewKey", "201", _ref("KeyReply"), (*_READ, _INACTIVE, _CONFLICT), replayable=True, links=_KEY_LINKS),
    Route("GET", "/v1/accounts/{id}/keys", "listKeys", "List the account's keys (never a secret)",
          None, "200", _ref("KeyList"), _READ),
    Route("DELETE", "/v1/accounts/{id}/keys/{key_id}", "revokeKey", "Revoke a key at once",
          None, "200", _ref("KeyInfo"), (*_READ, e.KEY_NOT_FOUND)),
    Route("POST", "/v1/accounts/{id}/credits", "credit", "Money in from outside the platform (funds scope)",
          "CreditBody", "201", _ref("AccountReply"), _MOVE, replayable=True, links=_MONEY_LINKS),
    Route("POST", "/v1/accounts/{id}/debits", "debit", "Money out of the platform (funds scope)",
          "DebitBody", "201", _ref("AccountReply"), (*_MOVE, e.INSUFFICIENT_FUNDS), replayable=True,
          links=_MONEY_LINKS),
    Route("POST", "/v1/accounts/{id}/holds", "placeHold", "Hold money until it is captured, released or expires",
          "HoldBody", "201", _ref("HoldReply"), (*_MOVE, e.INSUFFICIENT_FUNDS, e.CURRENCY_MISMATCH),
          replayable=True, links=_HOLD_LINKS),
    Route("GET", "/v1/accounts/{id}/holds/{hold_id}", "getHold", "Read a hold", None, "200", _ref("Hold"),
          (*_READ, e.HOLD_NOT_FOUND)),
    Route("POST", "/v1/accounts/{id}/holds/{hold_id}/capture", "captureHold",
          "Capture a hold, in full or in part (the rest is released)", "CaptureBody", "200", _ref("HoldReply"),
          (*_READ, _INACTIVE, e.LIMIT_EXCEEDED, e.HOLD_NOT_FOUND, e.HOLD_NOT_PENDING, e.AMOUNT_EXCEEDS_HOLD),
          replayable=True,
          links=_HOLD_LINKS),
    Route("POST", "/v1/accounts/{id}/holds/{hold_id}/release", "releaseHold", "Release a hold", "ReleaseBody",
          "200", _ref("HoldReply"), (*_READ, e.HOLD_NOT_FOUND, e.HOLD_NOT_PENDING), replayable=True,
          links=_HOLD_LINKS),
    Route("GET", "/v1/accounts/{id}/transactions", "listTransactions", "History, newest first, a page at a time",
          None, "200", _ref("TxnPage"), _READ, query=("limit_history", "cursor_history", "since", "until")),
    Route("GET", "/v1/accounts/{id}/transactions/{txn_id}", "getTransaction", "Read one history row by its id",
          None, "200", _ref("Txn"), (*_READ, e.TRANSACTION_NOT_FOUND)),
    Route("POST", "/v1/partners/{id}/move", "movePartner",
          "Move a top-level partner with its subtree to another shard (admin key; answers when done): docs/moves.md",
          "MoveBody", "200", _ref("MoveReply"), (*_READ, e.MOVE_REFUSED)),
    Route("GET", "/v1/partners/{id}/placement", "getPlacement", "Which shard an account lives on (admin key)",
          None, "200", _ref("PlacementView"), _READ),
    Route("GET", "/v1/events", "listEvents",
          "Events after a cursor, oldest first, scoped to the key's subtree (long-poll with wait_s): docs/events.md",
          None, "200", _ref("EventPage"), (e.FORBIDDEN, e.CURSOR_EXPIRED), query=("after_events", "limit_events", "wait_s")),
    Route("POST", "/v1/transfers", "transfer", "Move money between two accounts of one currency",
          "TransferBody", "201", _ref("TransferReply"), (*_MOVE, e.INSUFFICIENT_FUNDS, e.CURRENCY_MISMATCH),
          replayable=True),
    Route("POST", "/v1/batch", "batch", f"Up to {limits.BATCH_OPERATIONS_MAX} money operations, each answered",
          "BatchRequest", "200", _ref("BatchReply")),
)  # fmt: skip

# A seq; for a moved account one position per shard (``routes_history._merged``), or its earlier form.
_N = "[0-9]{1,18}"
_HISTORY_CURSOR = rf"^({_N}|p{_N}\.{_N}(-{_N}\.{_N})*|m{_N}-{_N}-{_N})(?![\s\S])"

_QUERY = {
    "limit_children": ("limit", {"type": "integer", "minimum": 1, "maximum": limits.CHILDREN_LIMIT_MAX,
                                 "default": limits.HISTORY_LIMIT_DEFAULT}, "page size"),
    "cursor_children": ("cursor", {"type": "string", "pattern": s.ID_PATTERN},
                        "the previous page's next_cursor (a child's id)"),
    "limit_history": ("limit", {"type": "integer", "minimum": 1, "maximum": limits.HISTORY_LIMIT_MAX,
                                "default": limits.HISTORY_LIMIT_DEFAULT}, "page size"),
    "cursor_history": ("cursor", {"type": "string", "pattern": _HISTORY_CURSOR},
                       "the previous page's next_cursor (a moved account's: one position per shard it lived on)"),
    "after_events": ("after", {"type": "string", "pattern": r"^[0-9]{1,18}(\.[0-9]{1,18})*(?![\s\S])"},
                     "the previous page's next_cursor (one position per shard, dot-separated); none: from the start"),
    "limit_events": ("limit", {"type": "integer", "minimum": 1, "maximum": limits.EVENTS_LIMIT_MAX,
                               "default": limits.EVENTS_LIMIT_DEFAULT}, "page size"),
    "wait_s": ("wait_s", {"type": "integer", "minimum": 0, "maximum": limits.EVENTS_WAIT_S_MAX, "default": 0},
               "long-poll: wait up to this many seconds for the next event when there is none"),
    "since": ("since", {"type": "string", "format": "date-time"}, "rows created at or after (RFC 3339)"),
    "until": ("until", {"type": "string", "format": "date-time"}, "rows created before (RFC 3339)"),
}  # fmt: skip
_PATH_PARAMETERS = {
    "id": "the account's id (<REGION>-<shard>-<16 hex>)",
    "hold_id": "the hold's id (the client's id of the hold)",
    "key_id": "the key's id (key_<16 hex>)",
    "txn_id": "the history row's id (<REGION>-<shard>-t<seq>)",
}


def _headers(route: Route, status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if route.replayable and status != 503:
        headers["Idempotent-Replayed"] = {"$ref": "#/components/headers/IdempotentReplayed"}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWWAuthenticate"}
    return headers


def _codes_by_status(route: Route) -> dict[int, list[str]]:
    codes = [*_EVERY_ROUTE, *route.codes]
    if route.request is not None:
        codes += _WITH_BODY
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(STATUS_BY_CODE.get(code) or HTTP_CODES[code], []).append(code)
    return by_status


def _problem_response(route: Route, status: int, codes: list[str]) -> dict[str, Any]:
    schema = {"allOf": [_ref("Problem"), {"properties": {"code": {"enum": codes}}}]}
    response: dict[str, Any] = {
        "description": ", ".join(codes),
        "content": {"application/problem+json": {"schema": schema}},
    }
    headers = _headers(route, status)
    if headers:
        response["headers"] = headers
    return response


def _operation(route: Route) -> dict[str, Any]:
    names = [part[1:-1] for part in route.path.split("/") if part.startswith("{")]
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "description": _PATH_PARAMETERS[name],
         "schema": {"type": "string", "pattern": s.ID_PATTERN}}
        for name in names
    ]  # fmt: skip
    for query in route.query:
        name, schema, description = _QUERY[query]
        parameters.append({"name": name, "in": "query", "required": False, "description": description,
                           "schema": schema})  # fmt: skip
    success: dict[str, Any] = {
        "description": "done",
        "content": {"application/json": {"schema": route.response}},
    }
    headers = _headers(route, int(route.status))
    if headers:
        success["headers"] = headers
    if route.links:
        success["links"] = route.links
    responses: dict[str, Any] = {route.status: success}
    for status, codes in sorted(_codes_by_status(route).items()):
        responses[str(status)] = _problem_response(route, status, codes)
    responses["default"] = {
        "description": "a refusal of the HTTP layer (400, 404, 405 with Allow, 408, 431, 500): see docs/limits.md",
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "security": [{"bearer": []}],
        "parameters": parameters,
        "responses": responses,
    }
    if route.request is not None:
        operation["requestBody"] = {
            "required": route.request not in _OPTIONAL_BODIES,
            "content": {"application/json": {"schema": _ref(route.request)}},
        }
    return operation


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


_CURRENCY_ENUM = {"type": "string", "enum": sorted(ISO_4217), "description": "ISO 4217 code"}


def _requests_as_accepted(components: dict[str, Any]) -> None:
    """What the validators check beyond msgspec's types, said in the schemas: a currency is one of
    ISO 4217; a top-level account names its region and currency; amounts and metadata notes."""
    for name, schema in components.items():
        properties = schema.get("properties", {})
        for key, value in properties.items():
            if key == "currency":
                properties[key] = (
                    {"anyOf": [_CURRENCY_ENUM, {"type": "null"}], "default": None}
                    if "anyOf" in value
                    else dict(_CURRENCY_ENUM)
                )
            elif key in ("amount", "credit_limit", "expires_in_s") and name in {*_REQUESTS, *_BATCH_OPS}:
                target = value["anyOf"][0] if "anyOf" in value else value
                target["description"] = (target.get("description", "") + "." + _AMOUNT_NOTE).lstrip(".").strip()
            elif key == "metadata":
                value["description"] = _METADATA_NOTE
    new = components.pop("NewAccount")
    top, child = copy.deepcopy(new), copy.deepcopy(new)
    top["title"], child["title"] = "NewTopLevelAccount", "NewChildAccount"
    top["description"] = "A top-level account (admin key only): region and currency are required."
    top["properties"]["parent_id"] = {"type": "null", "default": None}
    top["properties"]["region"] = top["properties"]["region"]["anyOf"][0]
    top["properties"]["currency"] = dict(_CURRENCY_ENUM)
    top["required"] = ["kind", "region", "currency"]
    child["description"] = "A child account: region and currency default to the parent's."
    child["properties"]["parent_id"] = child["properties"]["parent_id"]["anyOf"][0]
    child["required"] = ["kind", "parent_id"]
    components["NewTopLevelAccount"], components["NewChildAccount"] = top, child
    components["NewAccount"] = {"anyOf": [_ref("NewTopLevelAccount"), _ref("NewChildAccount")]}


_BATCH_OPS = {t.__name__: t.__struct_config__.tag for t in s.BatchOp.__args__}


def _batch_components() -> dict[str, Any]:
    """The batch body (its operations: one per kind, told apart by ``op``) and its answer (one
    result per operation, in order: the single route's status and body)."""
    one_of = [_ref(name) for name in _BATCH_OPS]
    mapping = {tag: _ref(name)["$ref"] for name, tag in _BATCH_OPS.items()}
    success = {
        "type": "object",
        "required": ["status", "replayed", "body"],
        "properties": {
            "status": {"type": "integer", "enum": [200, 201]},
            "replayed": {"type": "boolean", "description": "the operation's first answer, sent again"},
            "body": {"oneOf": [_ref("AccountReply"), _ref("TransferReply"), _ref("HoldReply")]},
        },
    }
    refused = {
        "type": "object",
        "required": ["status", "replayed", "body"],
        "properties": {
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "replayed": {"type": "boolean", "description": "a recorded refusal, sent again"},
            "body": _ref("Problem"),
        },
    }
    return {
        "BatchOperation": {"oneOf": one_of, "discriminator": {"propertyName": "op", "mapping": mapping}},
        "BatchRequest": {
            "type": "object",
            "required": ["operations"],
            "additionalProperties": False,
            "properties": {
                "operations": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits.BATCH_OPERATIONS_MAX,
                    "items": _ref("BatchOperation"),
                }
            },
        },
        "BatchSuccess": success,
        "BatchRefusal": refused,
        "BatchResult": {"oneOf": [_ref("BatchSuccess"), _ref("BatchRefusal")]},
        "BatchReply": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "items": _ref("BatchResult")}},
        },
    }


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"], "description": "null on the last page"},
        },
    }


def _operational_paths() -> dict[str, Any]:
    def get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"operationId": operation_id, "summary": summary, "security": [], "responses": responses}}

    def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    shards = {"type": "object", "additionalProperties": {"type": "object"}, "description": "per shard: its state"}
    not_ready = {
        "description": "a shard is not ready (problem with ready and shards)",
        "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
        "content": {"application/problem+json": {"schema": {"allOf": [_ref("Problem"), {
            "properties": {"ready": {"type": "boolean"}, "shards": shards}}]}}},
    }  # fmt: skip
    return {
        "/healthz": get("healthz", "Liveness: 200 while the process lives", {"200": json_body(
            {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}, "alive")}),
        "/readyz": get("readyz", "Readiness: every shard recovered and serving", {
            "200": json_body({"type": "object", "required": ["ready", "shards"],
                              "properties": {"ready": {"const": True}, "shards": shards}}, "ready"),
            "503": not_ready}),
        "/metrics": get("metrics", "Prometheus metrics", {"200": {
            "description": "Prometheus text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}),
        "/openapi.json": get("openapi", "This document", {"200": json_body({"type": "object"}, "OpenAPI 3.1")}),
    }  # fmt: skip


def openapi_document() -> dict[str, Any]:
    types = [*_REQUESTS.values(), *_RESPONSES.values(), s.BatchOp]
    (_, *_), components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    # The paths name responses by their public names (Account, not AccountView): rename to match.
    renames = {t.__name__: name for name, t in _RESPONSES.items() if t.__name__ != name}
    components = _renamed({renames.get(key, key): value for key, value in components.items()}, renames)
    _requests_as_accepted(components)
    components.update(_batch_components())
    components["AccountPage"], components["TxnPage"] = _page("Account"), _page("Txn")
    components["EventPage"] = _event_page()
    components["KeyList"] = {"type": "object", "required": ["data"],
                             "properties": {"data": {"type": "array", "items": _ref("KeyInfo")}}}  # fmt: skip
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    paths.update(_operational_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Balance service",
            "version": __version__,
            "description": "Balances, holds and money movements for payment gateways. Reference: docs/API.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": {
                "IdempotentReplayed": {
                    "description": "true: this is the first answer to this operation id, sent again",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true"]},
                },
                "RetryAfter": {
                    "description": "seconds to wait before retrying (with the same operation id)",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "WWWAuthenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}},
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
