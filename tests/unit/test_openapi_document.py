"""The served OpenAPI document, read as a client generator reads it: every route the app serves
is there with a unique operationId, typed parameters, its problem codes by status and the
headers of its answers; every outcome code has a place; links lead to real operations."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema_rs
import pytest

from balance.api import schemas as s
from balance.api.app import route_table
from balance.api.openapi import HTTP_CODES, openapi_document
from balance.api.statuses import STATUS_BY_CODE

DOCUMENT = openapi_document()
OPERATIONS = [
    (path, method, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
]  # fmt: skip
API_OPERATIONS = [(p, m, o) for p, m, o in OPERATIONS if p.startswith("/v1/")]


def served_routes() -> set[tuple[str, str]]:
    return {(pattern, method.lower()) for method, pattern, _ in route_table()}


def resolve(ref: str) -> Any:
    node: Any = DOCUMENT
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_route_the_app_serves_is_documented_and_nothing_else() -> None:
    documented = {(path, method) for path, method, _ in API_OPERATIONS}
    assert documented == served_routes()
    assert {"/healthz", "/readyz", "/metrics", "/openapi.json"} <= set(DOCUMENT["paths"])


def test_every_operation_has_a_unique_operation_id() -> None:
    ids = [operation["operationId"] for _, _, operation in OPERATIONS]
    assert len(ids) == len(set(ids)) == len(OPERATIONS)
    assert all(re.fullmatch(r"[a-z][A-Za-z]+", i) for i in ids), ids


def test_every_path_parameter_is_declared_typed_and_required() -> None:
    for path, _, operation in API_OPERATIONS:
        names = re.findall(r"{(\w+)}", path)
        declared = {p["name"]: p for p in operation["parameters"] if p["in"] == "path"}
        assert set(declared) == set(names), path
        assert all(p["required"] and p["schema"]["pattern"] == s.ID_PATTERN for p in declared.values()), path


def test_query_parameters_are_typed() -> None:
    queries = {
        (path, p["name"]): p["schema"]
        for path, _, operation in API_OPERATIONS
        for p in operation["parameters"]
        if p["in"] == "query"
    }
    assert queries[("/v1/accounts/{id}/transactions", "limit")]["type"] == "integer"
    assert queries[("/v1/accounts/{id}/transactions", "since")]["format"] == "date-time"
    assert queries[("/v1/accounts/{id}/children", "limit")]["maximum"] == 1000
    assert all("type" in schema for schema in queries.values())


def problem_codes(operation: dict[str, Any]) -> dict[int, list[str]]:
    found = {}
    for status, response in operation["responses"].items():
        content = response.get("content", {}).get("application/problem+json")
        if status != "default" and content is not None:
            found[int(status)] = content["schema"]["allOf"][1]["properties"]["code"]["enum"]
    return found


def test_every_outcome_code_has_a_place_with_its_status() -> None:
    placed: dict[str, set[int]] = {}
    for _, _, operation in API_OPERATIONS:
        for status, codes in problem_codes(operation).items():
            for code in codes:
                placed.setdefault(code, set()).add(status)
    for code, status in {**STATUS_BY_CODE, **HTTP_CODES}.items():
        if code in ("bad_request", "not_found", "method_not_allowed", "request_timeout", "internal_error"):
            continue  # the HTTP layer's own answers: the "default" response of every operation
        assert placed.get(code) == {status}, (code, placed.get(code))


def test_every_api_operation_answers_401_422_503_and_bodies_415() -> None:
    for path, method, operation in API_OPERATIONS:
        codes = problem_codes(operation)
        assert codes[401] == ["unauthorized"] and "validation_error" in codes[422], (path, method)
        # account_moving / account_moved: a partner move (docs/moves.md), after the service's wait
        assert set(codes[503]) == {"unavailable", "account_moving", "account_moved"}, (path, method)
        assert "default" in operation["responses"]
        assert operation["security"] == [{"bearer": []}]
        if "requestBody" in operation:
            assert codes[415] == ["unsupported_media_type"] and codes[413] == ["payload_too_large"], path


def test_retry_after_on_503_and_429_and_idempotent_replayed_on_money_answers() -> None:
    for path, method, operation in API_OPERATIONS:
        for status in ("503", "429"):
            assert "Retry-After" in operation["responses"][status]["headers"], (path, method, status)
    replayable = {"createAccount", "createKey", "credit", "debit", "placeHold", "captureHold", "releaseHold",
                  "transfer"}  # fmt: skip
    for path, _, operation in API_OPERATIONS:
        success = next(r for status, r in operation["responses"].items() if status.startswith("2"))
        assert ("Idempotent-Replayed" in success.get("headers", {})) == (operation["operationId"] in replayable), path
    assert DOCUMENT["components"]["headers"]["RetryAfter"]["required"] is True


def test_batch_operations_and_results_are_typed_one_of_per_kind() -> None:
    batch = resolve(DOCUMENT["components"]["schemas"]["BatchOperation"]["oneOf"][0]["$ref"])
    assert batch["additionalProperties"] is False
    kinds = {op.__struct_config__.tag for op in s.BatchOp.__args__}
    mapping = DOCUMENT["components"]["schemas"]["BatchOperation"]["discriminator"]["mapping"]
    assert set(mapping) == kinds == {"credit", "debit", "transfer", "hold", "capture", "release"}
    for tag, ref in mapping.items():
        assert resolve(ref)["properties"]["op"]["enum"] == [tag]
    result = DOCUMENT["components"]["schemas"]["BatchResult"]["oneOf"]
    assert [r["$ref"].rpartition("/")[2] for r in result] == ["BatchSuccess", "BatchRefusal"]


def test_links_lead_to_operations_and_their_parameters() -> None:
    by_id = {operation["operationId"]: (path, operation) for path, _, operation in OPERATIONS}
    count = 0
    for _, _, operation in OPERATIONS:
        for response in operation["responses"].values():
            for name, link in response.get("links", {}).items():
                target_path, target = by_id[link["operationId"]]
                parameters = {p["name"] for p in target.get("parameters", [])}
                assert set(link.get("parameters", {})) <= parameters, name
                assert set(re.findall(r"{(\w+)}", target_path)) <= set(link.get("parameters", {})), name
                if "requestBody" in link:
                    body = resolve(target["requestBody"]["content"]["application/json"]["schema"]["$ref"])
                    fields = set().union(*(resolve(b["$ref"])["properties"] for b in body["anyOf"])) if "anyOf" in body \
                        else set(body["properties"])  # fmt: skip
                    assert set(link["requestBody"]) <= fields, name
                count += 1
    links_of = {o["operationId"]: set(r.get("links", {})) for _, _, o in OPERATIONS for r in o["responses"].values()
                if r.get("links")}  # fmt: skip
    assert {"CaptureHold", "ReleaseHold", "GetHold"} <= links_of["placeHold"]
    assert {"Credit", "Debit", "GetAccount"} <= links_of["createAccount"]
    assert {"PlaceHold", "GetTransaction"} <= links_of["credit"]
    assert count > 30


@pytest.mark.parametrize("name", sorted(DOCUMENT["components"]["schemas"]))
def test_every_component_is_a_valid_json_schema(name: str) -> None:
    text = json.dumps(DOCUMENT["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/")
    jsonschema_rs.Draft202012Validator({"$defs": json.loads(text), "$ref": f"#/$defs/{name}"})


def test_a_top_level_account_needs_region_and_currency_in_the_document_too() -> None:
    text = json.dumps(DOCUMENT["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/")
    validator = jsonschema_rs.Draft202012Validator({"$defs": json.loads(text), "$ref": "#/$defs/NewAccount"})
    assert not validator.is_valid({"kind": "user"})
    assert not validator.is_valid({"kind": "user", "region": "EU", "currency": "XXX"})
    assert validator.is_valid({"kind": "user", "region": "EU", "currency": "EUR"})
    assert validator.is_valid({"kind": "user", "parent_id": "EU-0-ab"})
    assert not validator.is_valid({"kind": "user", "parent_id": "EU-0-ab\n"})
    assert not validator.is_valid({"kind": "user", "parent_id": ".."})
