"""The outbox row of a fact no journal row holds: the account after it (and before, for an update)."""

from __future__ import annotations

from balance import views
from balance.domain.model import Event
from balance.views import encoder


def outbox_row(seq: int, event: Event) -> tuple:  # type: ignore[type-arg]
    """``schema.OUTBOX_COLUMNS``. Only account creations, updates, the exhausted flag and
    payment results in conflict come here (rare next to money operations), so the JSON is encoded in the commit's batch."""
    data: dict[str, object] = {}
    if event.state is not None:
        data["account"] = views.account_view(event.state)
    if event.previous is not None:
        data["previous"] = views.account_view(event.previous)
    if event.hold is not None:
        data["hold"] = views.hold_view(event.hold)
    if event.result is not None:
        data["result"] = dict(event.result)
    return (seq, event.kind, event.account_id, event.version, event.created_at, encoder.encode(data) if data else None)
