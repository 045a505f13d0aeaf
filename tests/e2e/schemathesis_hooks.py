"""Checks schemathesis runs besides its own (``--checks all`` includes these), for two answers of
this API that its built-in checks read wrongly; ``schemathesis.toml`` widens the built-in
checks by exactly these answers, and the checks here hold them to their reason:

- A schema-valid request answered 422. The contract (docs/API.md) answers business refusals that
  depend on state with 422: ``insufficient_funds``, ``currency_mismatch``, ``amount_exceeds_hold``,
  ``limit_exceeded``. And a few rules relate two fields, or the body's encoded size, which JSON
  Schema cannot state (``UNSTATABLE``). Any other 422 to a schema-valid request, above all a
  ``validation_error`` for a rule the document could state, fails here.
- A batch with a schema-violating operation answered 200. Each operation of a batch is answered
  on its own (one bad operation does not fail the others; issue 14 item 8): the violating ones
  must be refused in their results with 422 ``validation_error``, which is checked here.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import schemathesis

BUSINESS_422 = frozenset({"insufficient_funds", "currency_mismatch", "amount_exceeds_hold", "limit_exceeded"})
UNSTATABLE = (
    "metadata is larger than",  # bytes of canonical JSON
    "JSON nested deeper than",  # a depth over the whole body
    "from_account_id and to_account_id are the same",
    "destination_account_id is the holding account",
    "credit_limit is below what the account already uses",  # state
    "after is not a cursor this service gave out",  # one position per shard: a count the schema cannot know
)


def _problem(response: Any) -> dict[str, Any]:
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@schemathesis.check
def schema_valid_requests_are_refused_only_for_state(ctx: Any, response: Any, case: Any) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return
    problem = _problem(response)
    code, detail = problem.get("code"), str(problem.get("detail", ""))
    if case.operation.path == "/v1/batch" and code == "validation_error" and _batch_shape_problem(case):
        return
    if code in BUSINESS_422 or (code == "validation_error" and detail.startswith(UNSTATABLE)):
        return
    raise AssertionError(f"a schema-valid request was refused with 422 {code}: {detail}")


_VALIDATORS: dict[int, Any] = {}


def _operation_validator(case: Any) -> Any:
    """A validator of one batch operation, from the served document's own components."""
    raw = case.operation.schema.raw_schema
    validator = _VALIDATORS.get(id(raw))
    if validator is None:
        text = json.dumps(raw["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/")
        schema = {"$defs": json.loads(text), "$ref": "#/$defs/BatchOperation"}
        validator = _VALIDATORS[id(raw)] = jsonschema_rs.Draft202012Validator(schema)
    return validator


def _batch_shape_problem(case: Any) -> bool:
    """The batch body itself (not one operation) breaks the schema: refused as a whole."""
    body = case.body
    return not (isinstance(body, dict) and isinstance(body.get("operations"), list))


@schemathesis.check
def a_batch_refuses_each_bad_operation_alone(ctx: Any, response: Any, case: Any) -> None:
    if case.operation.path != "/v1/batch" or response.status_code != 200:
        return
    body, answer = case.body, json.loads(response.content)
    operations, results = body["operations"], answer["results"]
    if len(operations) != len(results):
        raise AssertionError(f"{len(operations)} operations, {len(results)} results")
    validator = _operation_validator(case)
    for index, (operation, result) in enumerate(zip(operations, results, strict=True)):
        if validator.is_valid(operation):
            if result["status"] == 422 and result["body"].get("code") == "validation_error":
                detail = str(result["body"].get("detail", ""))
                if not detail.startswith(UNSTATABLE):
                    raise AssertionError(f"operation {index} fits the schema but was refused: {detail}")
        elif result["status"] != 422 or result["body"].get("code") != "validation_error":
            raise AssertionError(f"operation {index} breaks the schema but was answered {result['status']}")


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """A generated ``wait_s`` (0-30, as the document says) is cut to at most 1 second: each
    event-feed request with nothing new waits that long, and a run of hundreds of them would
    spend the five-minute cap in long-polls. Values the schema refuses pass unchanged."""
    if query and isinstance(query.get("wait_s"), int) and 1 < query["wait_s"] <= 30:
        return {**query, "wait_s": 1}
    return query
